# The warden worker image: `docker build -t warden .`, then `docker run ... warden` runs `warden run`.
# Only the runtime dependencies of pyproject.toml are installed (no test extra, no build tools in
# the final stage), and the process runs as an unprivileged numeric user.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY schemas ./schemas
RUN python -m venv /opt/warden && /opt/warden/bin/pip install .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="warden" \
      org.opencontainers.image.description="A resource server for RabbitMQ job queues" \
      org.opencontainers.image.licenses="Apache-2.0"
# A numeric uid, so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 warden \
 && useradd --system --uid 10001 --gid warden --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin warden
COPY --from=build /opt/warden /opt/warden
ENV PATH=/opt/warden/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WARDEN_HTTP_PORT=9100
USER 10001:10001
EXPOSE 9100
# /healthz answers 200 while the process lives; slim images have no curl, so Python asks
# (directly: an HTTP_PROXY in the environment must not turn the probe away).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % os.environ.get('WARDEN_HTTP_PORT', '9100'), timeout=2).close()"]
# Exec form: `warden` is PID 1 and receives SIGTERM itself, stops consuming and lets in-flight
# actions finish within WARDEN_SHUTDOWN_GRACE_SECONDS.
STOPSIGNAL SIGTERM
CMD ["warden", "run"]
