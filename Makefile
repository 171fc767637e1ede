# voicegrid — every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP_FLAGS ?= -q

.PHONY: demo test lint bench format clean help

help:
	@echo "make demo   - run a simulated voice call end to end (no API key, no Redis needed)"
	@echo "make test   - run the test suite (fakeredis; integration tests when REDIS_URL is set)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - benchmarks (table + bench/results.json)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) -e '.[demo]'
	@touch $@

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev,demo]'
	@touch $@ $(RUN_STAMP)

demo: $(RUN_STAMP)
	$(VENV)/bin/voicegrid demo $(if $(PROVIDER),--provider $(PROVIDER),) $(ARGS)

test: $(DEV_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(DEV_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(DEV_STAMP)
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
