# facegen — every command a developer or CI needs. Each target installs what it uses.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
WORKER_VENV := .venv-worker
WORKER_DIR := services/faceswap_worker
MODELS_DIR := models
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTO_FILES := $(wildcard protos/facegen/v1/*.proto)
NODE_DIR := clients/node
# apt-get needs root: sudo when make does not run as root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup venv worker-venv models redis-server node-client protos node-protos lint test test-fast demo bench clean

setup: venv worker-venv models redis-server node-client

# The services' dependencies, the local stack's (extra `local`), the tests' and tools' (`dev`) and the
# swapper's identity check's (`identity`: dlib, which the tests exercise).
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,local,identity]'
	touch $@

# The face-swap worker has its own environment: mediapipe 0.10.x needs
# protobuf < 5 and numpy < 2, which the rest of the project has outgrown.
# requirements-quality.txt (dlib, for the quality metric) is for tests and the
# benchmark only: the worker's image installs requirements.txt alone.
worker-venv: $(WORKER_VENV)/.installed
$(WORKER_VENV)/.installed: $(WORKER_DIR)/requirements.txt $(WORKER_DIR)/requirements-quality.txt
	$(PYTHON) -m venv $(WORKER_VENV)
	$(WORKER_VENV)/bin/pip install -q --disable-pip-version-check -r $(WORKER_DIR)/requirements.txt \
		-r $(WORKER_DIR)/requirements-quality.txt
	touch $@

# Tiny randomly initialised pipelines, saved with save_pretrained and loaded
# by the generator through the same from_pretrained path as real checkpoints.
models: $(MODELS_DIR)/.built
$(MODELS_DIR)/.built: $(VENV)/.installed services/generator/tiny_models.py
	HF_HUB_OFFLINE=1 $(PY) -m services.generator.tiny_models $(MODELS_DIR)
	touch $@

# The tests (and the benchmarks) start their own redis-server on a free port with
# a temporary directory; the system service is never started. Debian's package
# (~11 s); `apt-get update` first only when the package lists do not know it yet.
redis-server:
	@if ! command -v redis-server >/dev/null; then \
		echo "installing Debian's redis-server (tests start their own instances)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		$(SUDO) apt-get install -y -q --no-install-recommends redis-server >/dev/null \
			|| { $(SUDO) apt-get update -q >/dev/null && \
			     $(SUDO) apt-get install -y -q --no-install-recommends redis-server >/dev/null; }; \
		if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now redis-server; fi; \
	fi

# The Node/TypeScript client (clients/node): its packages from the lockfile, then
# tsc builds dist/ (the tests, the example and callers import it).
node-client: $(NODE_DIR)/node_modules/.installed
	cd $(NODE_DIR) && npm run --silent build
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --silent --no-audit --no-fund
	touch $@

# The generated code of both clients' contracts is committed; tests fail when it is stale.
protos: $(VENV)/.installed node-protos
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --grpc_python_out=protos \
		--pyi_out=protos $(PROTO_FILES)

node-protos: $(NODE_DIR)/node_modules/.installed
	$(NODE_DIR)/node_modules/.bin/buf generate --template buf.gen.yaml

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# What CI checks besides the tests; .pre-commit-config.yaml runs the same on each commit.
# mypy is strict on services/ (pyproject.toml: every function typed, untyped bodies checked).
lint: $(VENV)/.installed $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services
	$(BUF) lint
	BUF=$(BUF) .ci/buf-breaking

# Lint first, then the main suite (unit, integration, e2e through the real stack; the
# Node client's tests that need gateways run from it), the Node client's unit tests,
# then the worker's own suite in the worker's environment.
test: setup lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	cd $(NODE_DIR) && npm test
	FACEGEN_WORKER_TESTS=1 HF_HUB_OFFLINE=1 $(WORKER_VENV)/bin/python -m pytest tests/worker

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m services.stack demo

bench: setup
	HF_HUB_OFFLINE=1 $(PY) bench/gateway.py
	HF_HUB_OFFLINE=1 $(PY) bench/generator.py
	HF_HUB_OFFLINE=1 $(PY) bench/swapper.py
	HF_HUB_OFFLINE=1 $(PY) bench/scaleout.py
	HF_HUB_OFFLINE=1 $(WORKER_VENV)/bin/python bench/faceswap.py

clean:
	rm -rf $(VENV) $(WORKER_VENV) .tools $(MODELS_DIR) out run $(NODE_DIR)/node_modules $(NODE_DIR)/dist
