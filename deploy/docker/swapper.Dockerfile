# syntax=docker/dockerfile:1
# facegen swapper: storage, RunPod face swap and fallback (port 50053). Build from the repository root:
#   docker build -f deploy/docker/swapper.Dockerfile -t facegen-swapper:dev .
# With the identity check (FACE_SWAP_VERIFY=identity: dlib, numpy and dlib's models, ~180 MB more):
#   docker build -f deploy/docker/swapper.Dockerfile --build-arg SWAPPER_IDENTITY=true -t facegen-swapper:dev-identity .
# Pin the base by digest in production (python:3.11.13-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ARG SWAPPER_IDENTITY=false
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY constraints.txt /tmp/constraints.txt
# Only the distributions the swapper imports (tests/unit/deploy checks this list
# against its imports), each pinned by constraints.txt: no torch, no diffusers, and
# no sample photos (`python -m services.swapper doctor --reference F --target P`
# swaps photos you give it).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /tmp/constraints.txt \
        grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf pillow pydantic-settings \
        boto3 aiohttp redis hiredis \
        prometheus-client opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc \
        opentelemetry-instrumentation-botocore opentelemetry-instrumentation-aiohttp-client
# The identity extra, only when asked for. Of face-recognition-models' files the check uses the 5-point
# landmarks and the ResNet descriptor: the 68-point model (~95 MB, a non-commercial training set) goes.
RUN case "$SWAPPER_IDENTITY" in \
        true) /opt/venv/bin/pip install -c /tmp/constraints.txt dlib-bin face-recognition-models numpy \
              && rm /opt/venv/lib/python3.*/site-packages/face_recognition_models/models/shape_predictor_68_face_landmarks.dat ;; \
        false) ;; \
        *) echo "SWAPPER_IDENTITY must be true or false, not '$SWAPPER_IDENTITY'" >&2; exit 1 ;; \
    esac

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
COPY --from=deps /opt/venv /opt/venv
# The sources run in place from /app, laid out as in the repository (like the
# editable install that the tests exercise): the contracts, services/common, the swapper and the
# face-identity module (its threshold; its descriptor runs only with the identity extra).
COPY protos/ /app/protos/
COPY services/__init__.py /app/services/__init__.py
COPY services/common/ /app/services/common/
COPY services/identity/ /app/services/identity/
COPY services/swapper/ /app/services/swapper/
COPY deploy/docker/grpc_health_check.py /opt/facegen/grpc_health_check.py
# Bytecode compiled now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app /opt/facegen
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/protos \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    SWAPPER_LISTEN=0.0.0.0:50053
USER 10001:10001
WORKDIR /app
EXPOSE 50053
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/facegen/grpc_health_check.py", "127.0.0.1:50053"]
ENTRYPOINT ["python", "-m", "services.swapper"]
