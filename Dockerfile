# syntax=docker/dockerfile:1
#
# spanmetrics-worker image: `docker build -t spanmetrics-worker .`
#
# Two stages: the builder turns the project and every dependency into wheels (every dependency
# ships binary wheels for CPython 3.11 on manylinux; the project's own compiled span-metrics
# ingest, a Cython extension, needs the C compiler installed there) and installs them into a
# virtualenv; the final stage copies only that virtualenv onto a fresh slim Python, so no
# compiler, pip cache, build backend or wheel files end up in the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# The compiler for the compiled span-metrics ingest (builder stage only).
RUN apt-get update \
 && apt-get install --yes --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the rest of the repository out of the context).
COPY pyproject.toml setup.py README.md ./
COPY worker ./worker
COPY state ./state
# devtools: the load generator the compose stack runs from this image (its embedded servers are not installed).
COPY devtools ./devtools

RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels spanmetrics-worker \
 && /opt/venv/bin/pip uninstall --yes pip \
 && /opt/venv/bin/spanmetrics --version \
 && /opt/venv/bin/python -c "from worker.processors import _native"

# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="spanmetrics-worker" \
      org.opencontainers.image.description="OpenTelemetry spans on Kafka to RED and service-graph metrics, state in Redis" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so Kubernetes can check runAsNonRoot without a user name lookup.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" spanmetrics \
 && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin spanmetrics

COPY --from=builder /opt/venv /opt/venv
# A default configuration (the compose stack's); mount your own over it or override single
# options with SPANMETRICS_<SECTION>__<OPTION>, KAFKA_BOOTSTRAP_SERVERS and REDIS_URL.
COPY deploy/worker-config.yaml /etc/spanmetrics/config.yaml

# PYTHONDONTWRITEBYTECODE: the bytecode was compiled at install time, and the root filesystem may
# be read-only (the Helm chart sets readOnlyRootFilesystem).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER ${UID}:${GID}
WORKDIR /tmp

# http.port: /metrics, /healthz, /readyz.
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

# Exec form, no shell in between: SIGTERM from `docker stop` or the kubelet reaches Python, and
# the worker flushes, commits and leaves the group within worker.shutdown_grace.
ENTRYPOINT ["spanmetrics"]
CMD ["run", "--config", "/etc/spanmetrics/config.yaml"]
