# TideMQ: `make dev` runs it, `make test` runs every test. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck unit bench bench-store clean

$(STAMP): pyproject.toml
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

bench-store: $(STAMP)
	$(VENV)/bin/tidemq bench store $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
