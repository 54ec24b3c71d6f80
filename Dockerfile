# sluice worker image.
#
#   docker build -t sluice:0.1.0 .
#   docker run --rm -e SLUICE_BROKERS=kafka:9092 -p 6066:6066 sluice:0.1.0
#
# Stage 1 installs the pinned runtime dependencies (deploy/requirements.lock) into a venv, then
# builds the project's wheel and installs it with --no-deps, so a dependency missing from the lock
# fails `pip check` here instead of being resolved silently at some other version.
# Stage 2 copies only that venv onto a clean python:3.11-slim: no compiler, no sources, no pip cache.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/sluice
# Dependencies first: this layer is rebuilt only when the lock changes, not on every code change.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN /opt/sluice/bin/pip install --require-virtualenv -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY agents ./agents
COPY tables ./tables
RUN /opt/sluice/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/sluice/bin/pip install --require-virtualenv --no-deps /tmp/wheels/sluice-*.whl \
 && /opt/sluice/bin/pip check

FROM python:3.11-slim
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Kafka stream-processing worker with RocksDB state" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SLUICE_DATA_DIR=/var/lib/sluice
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and fsGroup can match it.
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/sluice \
        --shell /usr/sbin/nologin sluice \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sluice
COPY --from=builder /opt/sluice /opt/sluice
USER 10001:10001
WORKDIR /home/sluice
# RocksDB state. Created above and owned by the user, so a fresh named volume inherits that owner.
VOLUME ["/var/lib/sluice"]
# /metrics, /healthz, /readyz (SLUICE_WEB_PORT).
EXPOSE 6066
# Liveness only (/healthz); readiness (/readyz) is for orchestrators. slim has no curl: urllib
# raises on a refused connection or a non-2xx answer, so the exit code is the verdict.
# Assumes SLUICE_WEB_HOST binds loopback too (the default 0.0.0.0 does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SLUICE_WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["sluice"]
CMD ["worker"]
