#!/bin/sh
# docker-compose.cluster.yml's `job` (README.md, "Scaling out"): queue the posts' sources for the
# workers, wait until none is queued or running, then rewrite the posts from the shared manifest.
# Runs once; start it again (`docker compose -f docker-compose.cluster.yml run --rm job`) after
# new posts. Exits non-zero when a step fails or the queue has not drained in JOB_WAIT_SECONDS.
set -eu

config=${MIRROR_CONFIG:-/config/config.toml}
posts=${MIRROR_POSTS:-/posts}
poll=${JOB_POLL_SECONDS:-10}
limit=${JOB_WAIT_SECONDS:-21600}
# A poll of 0 would never add up to the limit: the wait must be bounded.
if [ "$poll" -lt 1 ]; then
    echo "mirror-job: JOB_POLL_SECONDS must be a whole number of at least 1" >&2
    exit 2
fi
# Sources still to do in `mirror status --json`; a database without a queue has no totals.
left_code='import json, sys; t = json.load(sys.stdin).get("totals", {}); print(t.get("queued", 0) + t.get("running", 0))'

mirror enqueue --config "$config" "$posts"

waited=0
while :; do
    # set -e: a failing `mirror status` (database gone) ends the job here.
    status=$(mirror status --json --config "$config")
    left=$(printf '%s\n' "$status" | python -c "$left_code")
    if [ "$left" -eq 0 ]; then
        break
    fi
    if [ "$waited" -ge "$limit" ]; then
        echo "mirror-job: $left sources still queued or running after ${limit} s; are the workers up?" >&2
        exit 1
    fi
    echo "mirror-job: $left sources queued or running" >&2
    sleep "$poll"
    waited=$((waited + poll))
done

exec mirror rewrite --config "$config" "$posts"
