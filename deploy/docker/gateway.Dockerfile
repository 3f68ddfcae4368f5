# syntax=docker/dockerfile:1
# facegen gateway: the public gRPC API (port 50051). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t facegen-gateway:dev .
# Pin the base by digest in production (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY constraints.txt /tmp/constraints.txt
# Only the distributions the gateway imports (tests/unit/deploy checks this list
# against its imports), each pinned by constraints.txt: no torch, no diffusers.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /tmp/constraints.txt \
        grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf pillow pydantic-settings \
        redis hiredis \
        prometheus-client opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
COPY --from=deps /opt/venv /opt/venv
# The sources run in place from /app, laid out as in the repository (like the
# editable install that the tests exercise): the contracts, services/common and the gateway only.
COPY protos/ /app/protos/
COPY services/__init__.py /app/services/__init__.py
COPY services/common/ /app/services/common/
COPY services/gateway/ /app/services/gateway/
COPY deploy/docker/grpc_health_check.py /opt/facegen/grpc_health_check.py
# Bytecode compiled now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app /opt/facegen
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/protos \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    GATEWAY_LISTEN=0.0.0.0:50051
USER 10001:10001
WORKDIR /app
EXPOSE 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/facegen/grpc_health_check.py", "127.0.0.1:50051"]
ENTRYPOINT ["python", "-m", "services.gateway"]
