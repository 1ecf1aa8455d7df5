# TideMQ: `make dev` runs it, `make test` runs every test. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench bench-store clean

$(STAMP): pyproject.toml setup.py backend/tidemq/store/_records.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	@if [ -f frontend/package.json ]; then cd frontend && npm ci && npm run build; fi
	$(VENV)/bin/tidemq dev --config config/dev.toml

lint: $(STAMP)
	$(VENV)/bin/ruff check backend tests benchmarks
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q

# Peers for `make bench`, from Debian's packages (apt-get as root, else through sudo).
BENCH_APT := redis-server rabbitmq-server nats-server fio strace
BENCH_STAMP := $(VENV)/.bench-installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# `make bench` runs the peer suite (benchmarks/suite.py, ~10 min); QUICK=1 about a minute;
# AT=HEAD measures the tidemq package of that commit instead of the working tree.
bench: $(BENCH_STAMP)
	@for tool in redis-server nats-server fio strace /usr/lib/rabbitmq/bin/rabbitmq-server; do \
	  command -v $$tool >/dev/null 2>&1 || { \
	    $(SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(BENCH_APT) && break; }; \
	done
	$(if $(AT),$(PY) benchmarks/snapshot.py --rev $(AT) --) $(PY) benchmarks/suite.py $(if $(QUICK),--quick,)

bench-store: $(STAMP)
	$(VENV)/bin/tidemq bench store $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
