# mirror in a container: `mirror serve` by default, `mirror run` with another command.
# docker-compose.yml runs both plus nginx; see README.md, "Deployment".
FROM python:3.11-slim

# The uid/gid the processes run as and that owns /data. docker-compose.yml passes MIRROR_UID and
# MIRROR_GID here and as `user:`, so the cache volume (initialised from /data/cache on first use)
# and the posts the job rewrites belong to the same user.
ARG MIRROR_UID=10001
ARG MIRROR_GID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mirror/ mirror/
RUN pip install --no-cache-dir . \
    && rm -rf /src

# An existing group or user with that id (MIRROR_GID=100, say) is reused rather than an error.
RUN (getent group "${MIRROR_GID}" >/dev/null || groupadd --gid "${MIRROR_GID}" mirror) \
    && (getent passwd "${MIRROR_UID}" >/dev/null || useradd --uid "${MIRROR_UID}" \
        --gid "${MIRROR_GID}" --home-dir /data --no-create-home --shell /usr/sbin/nologin mirror) \
    && mkdir -p /data/cache \
    && chown -R "${MIRROR_UID}:${MIRROR_GID}" /data

USER ${MIRROR_UID}:${MIRROR_GID}
WORKDIR /data

EXPOSE 8080

# No curl in the slim image: python's urllib. ProxyHandler({}) ignores any HTTP_PROXY set for
# mirror's own fetches; a 503 from /readyz raises, so the check fails. Only meaningful for
# `serve` on the default port: docker-compose.yml disables it for the job.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/readyz', timeout=4)"]

ENTRYPOINT ["mirror"]
CMD ["serve", "--host", "0.0.0.0", "--store", "/data/cache"]
