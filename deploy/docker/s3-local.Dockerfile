# syntax=docker/dockerfile:1
# A throwaway S3-compatible store for local runs (compose, the k8s "local" overlay):
# moto's server mode, in memory, no auth checks, everything lost on restart.
# Never use it for real data. Build from the repository root:
#   docker build -f deploy/docker/s3-local.Dockerfile -t facegen-s3-local:dev .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY constraints.txt /tmp/constraints.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /tmp/constraints.txt "moto[server]" \
    && rm /tmp/constraints.txt \
    && groupadd --system --gid 10001 facegen \
    && useradd --system --uid 10001 --gid facegen --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin facegen
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/moto-api/', timeout=2)"]
ENTRYPOINT ["python", "-m", "moto.server", "-H", "0.0.0.0", "-p", "9000"]
