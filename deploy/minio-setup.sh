#!/bin/sh
# docker-compose.cluster.yml's `minio-setup` (minio/mc): make bucket `mirror` readable by anyone
# (objects only: anonymous `download` gives GetObject, no listing) and mirror's own MinIO account,
# read-write on that bucket only (deploy/minio-mirror-policy.json). Idempotent: every step may
# run again on an existing bucket, user or policy.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MIRROR_S3_ACCESS_KEY:?}" "${MIRROR_S3_SECRET_KEY:?}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing local/mirror
mc anonymous set download local/mirror
mc admin policy create local mirror-rw /setup/minio-mirror-policy.json
mc admin user add local "$MIRROR_S3_ACCESS_KEY" "$MIRROR_S3_SECRET_KEY"
# Attaching a policy already attached is an error; the state wanted is there either way.
mc admin policy attach local mirror-rw --user "$MIRROR_S3_ACCESS_KEY" || \
    mc admin user info local "$MIRROR_S3_ACCESS_KEY" | grep -q mirror-rw
