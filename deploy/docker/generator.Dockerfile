# syntax=docker/dockerfile:1
# facegen generator: diffusers text-to-image (port 50052). Build from the repository root:
#   CPU (tiny demo models baked in):
#     docker build -f deploy/docker/generator.Dockerfile -t facegen-generator:dev .
#   CUDA (real checkpoints come from a volume, see docs/deploy.md):
#     docker build -f deploy/docker/generator.Dockerfile --build-arg VARIANT=cuda \
#         --build-arg TINY_MODELS=0 -t facegen-generator:dev-cuda .
# VARIANT=cpu installs PyTorch's CPU-only wheel; VARIANT=cuda installs PyPI's default
# Linux wheel, which bundles the CUDA runtime libraries (the nvidia-* wheels), so the
# base image stays python:slim and the host needs only the NVIDIA driver and the
# NVIDIA container toolkit (Kubernetes: the NVIDIA device plugin).
# Pin the base by digest in production (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# 1: build the tiny randomly initialised pipelines into /opt/facegen/models (seconds, a few MB).
ARG TINY_MODELS=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# torch first, from the index that matches the variant, at the version constraints.txt pins
# (2.13.0+cpu satisfies ==2.13.0). Then every runtime dependency of pyproject.toml, pinned by
# constraints.txt, before the sources are copied so that a code change reuses this layer.
RUN set -eu; \
    torch_pin="$(grep -E '^torch==' constraints.txt)"; \
    case "$VARIANT" in \
        cpu) pip install --no-deps --index-url "$TORCH_CPU_INDEX_URL" "$torch_pin" ;; \
        cuda) pip install -c constraints.txt "$torch_pin" ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt; \
    pip install -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY protos/ protos/
COPY services/ services/
RUN pip install --no-deps .
# safetensors writes its files 0600: make them readable by the unprivileged runtime user.
RUN mkdir -p /opt/facegen/models \
    && if [ "$TINY_MODELS" = "1" ]; then \
        HF_HUB_OFFLINE=1 python -m services.generator.tiny_models /opt/facegen/models; \
    fi \
    && chmod -R a+rX /opt/facegen/models

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
RUN groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/facegen/models /opt/facegen/models
COPY deploy/docker/grpc_health_check.py /opt/facegen/grpc_health_check.py
# HOME=/tmp: torch, triton and the HF libraries write caches under $HOME; /tmp is the
# only writable path when the root filesystem is read-only (Kubernetes mounts an emptyDir).
# Weights are never downloaded at run time (HF_HUB_OFFLINE=1).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/opt/facegen/hf \
    FACEGEN_IMAGE_VARIANT=${VARIANT} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GENERATOR_LISTEN=0.0.0.0:50052 \
    GENERATOR_DEVICE=auto \
    GENERATOR_MODELS_DIR=/opt/facegen/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 50052
STOPSIGNAL SIGTERM
# Loading and warming a real checkpoint can take minutes: a long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/facegen/grpc_health_check.py", "127.0.0.1:50052"]
ENTRYPOINT ["python", "-m", "services.generator"]
