# syntax=docker/dockerfile:1
# facegen generator: diffusers text-to-image (port 50052). Build from the repository root:
#   CPU (tiny demo models baked in):
#     docker build -f deploy/docker/generator.Dockerfile -t facegen-generator:dev .
#   CUDA (real checkpoints come from a volume, see docs/deploy.md):
#     docker build -f deploy/docker/generator.Dockerfile --build-arg VARIANT=cuda \
#         -t facegen-generator:dev-cuda .
# VARIANT=cpu installs PyTorch's CPU-only wheel; VARIANT=cuda installs PyPI's default
# Linux wheel, which bundles the CUDA runtime libraries (the nvidia-* wheels), so the
# base image stays python:slim and the host needs only the NVIDIA driver and the
# NVIDIA container toolkit (Kubernetes: the NVIDIA device plugin).
# Pin the base by digest in production (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /tmp/deps
COPY pyproject.toml constraints.txt ./
# torch first, from the index that matches the variant, at the version constraints.txt pins
# (2.13.0+cpu satisfies ==2.13.0); then every runtime dependency of pyproject.toml, pinned
# by constraints.txt. The sources are copied later, so a code change reuses this layer.
RUN set -eu; \
    torch_pin="$(grep -E '^torch==' constraints.txt)"; \
    case "$VARIANT" in \
        cpu) pip install --no-deps --index-url "$TORCH_CPU_INDEX_URL" "$torch_pin" ;; \
        cuda) pip install -c constraints.txt "$torch_pin" ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt; \
    pip install -c constraints.txt -r requirements.txt

FROM deps AS models
# 1: build the tiny randomly initialised pipelines (seconds, a few MB) so the image
# works with no weights at all; 0: an empty /opt/facegen/models for a mounted volume.
ARG TINY_MODELS=1
COPY protos/ /app/protos/
COPY services/__init__.py /app/services/__init__.py
COPY services/common/ /app/services/common/
COPY services/generator/ /app/services/generator/
# safetensors writes its files 0600: make them readable by the unprivileged runtime user.
RUN mkdir -p /opt/facegen/models \
    && if [ "$TINY_MODELS" = "1" ]; then \
        cd /app && HF_HUB_OFFLINE=1 PYTHONPATH=/app:/app/protos \
            python -m services.generator.tiny_models /opt/facegen/models; \
    fi \
    && chmod -R a+rX /opt/facegen/models

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
RUN groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
COPY --from=deps /opt/venv /opt/venv
COPY --from=models /opt/facegen/models /opt/facegen/models
# The sources run in place from /app, laid out as in the repository (like the
# editable install that the tests exercise, package data such as catalog.toml included):
# the contracts, services/common and the generator only.
COPY protos/ /app/protos/
COPY services/__init__.py /app/services/__init__.py
COPY services/common/ /app/services/common/
COPY services/generator/ /app/services/generator/
COPY deploy/docker/grpc_health_check.py /opt/facegen/grpc_health_check.py
# Bytecode compiled now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app /opt/facegen/grpc_health_check.py \
    && mkdir -p /opt/facegen/hf
# HOME=/tmp: torch, triton and the HF libraries write caches under $HOME; /tmp is the
# only writable path when the root filesystem is read-only (Kubernetes mounts an emptyDir).
# Weights are never downloaded at run time (HF_HUB_OFFLINE=1); HF_HOME is the
# Hugging Face cache that catalog entries with hf_id are read from (mount a volume there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/protos \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/opt/facegen/hf \
    FACEGEN_IMAGE_VARIANT=${VARIANT} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GENERATOR_LISTEN=0.0.0.0:50052 \
    GENERATOR_DEVICE=auto \
    GENERATOR_MODELS_DIR=/opt/facegen/models \
    GENERATOR_CATALOG=/app/services/generator/catalog.toml
USER 10001:10001
WORKDIR /app
EXPOSE 50052
STOPSIGNAL SIGTERM
# Loading and warming a real checkpoint can take minutes: a long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/facegen/grpc_health_check.py", "127.0.0.1:50052"]
ENTRYPOINT ["python", "-m", "services.generator"]
