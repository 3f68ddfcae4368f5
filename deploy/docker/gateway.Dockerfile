# syntax=docker/dockerfile:1
# facegen gateway: the public gRPC API (port 50051). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t facegen-gateway:dev .
# Pin the base by digest in production (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
# Only the distributions the gateway imports (tests/unit/deploy checks this list
# against its imports), each pinned by constraints.txt: no torch, no diffusers.
RUN pip install -c constraints.txt \
        grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf pillow
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY services/ services/
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_health_check.py /opt/facegen/grpc_health_check.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GATEWAY_LISTEN=0.0.0.0:50051
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/facegen/grpc_health_check.py", "127.0.0.1:50051"]
ENTRYPOINT ["python", "-m", "services.gateway"]
