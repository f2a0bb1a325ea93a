# Dialtone: Twilio Media Streams <-> OpenAI Realtime bridge.
#
#   docker build -t dialtone .
#   docker run --rm -p 8080:8080 --env-file .env \
#       -v "$PWD/agents.toml:/etc/dialtone/agents.toml:ro" --stop-timeout 330 dialtone
#
# Two stages: "build" installs the project and its dependencies into a virtualenv (/opt/venv); the
# runtime stage copies only that virtualenv onto a fresh slim image (no pip cache, no sources, no build
# tools) and runs it as an unprivileged user. See infra/README.md for compose and Kubernetes.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: an edit under service/ does not download them again.
# (pyproject.toml names README.md and LICENSE, so the metadata build needs them; the stub package is
# replaced by the real one below.)
COPY pyproject.toml README.md LICENSE ./
RUN mkdir service && touch service/__init__.py \
    && pip install --no-cache-dir . \
    && rm -rf service build dialtone.egg-info
COPY service ./service
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import service.serve"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dialtone" \
      org.opencontainers.image.description="Put an OpenAI Realtime voice agent on a Twilio phone number" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it without resolving a name.
RUN groupadd --system --gid 10001 dialtone \
    && useradd --system --uid 10001 --gid dialtone --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin dialtone \
    && mkdir -p /etc/dialtone /var/lib/dialtone \
    && chown dialtone:dialtone /var/lib/dialtone
COPY --from=build /opt/venv /opt/venv
# The example agents, for reference only: mount the real file at $AGENTS_FILE (nothing is answered
# with the example by accident: without a mounted file the service refuses to start and says why).
COPY agents.example.toml /etc/dialtone/agents.example.toml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    WORKERS=1 \
    AGENTS_FILE=/etc/dialtone/agents.toml \
    DATABASE_URL=sqlite:////var/lib/dialtone/dialtone.db
# /app is read-only for the service (owned by root) and holds no .env: settings come from the
# environment (docker --env-file, compose env_file, a Kubernetes Secret/ConfigMap).
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness only (/healthz): /readyz answers 503 at capacity or while draining, which is no reason to
# restart the container.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]
# SIGTERM starts the drain (DRAIN_TIMEOUT_S): give `docker stop` / compose more than that (--stop-timeout,
# stop_grace_period), or the calls still running are killed instead of ended politely.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service.serve"]
