# voicegrid — every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PIP_FLAGS ?= -q
# Every install takes its exact versions from the lock; `make lock` refreshes it (see README).
LOCK   := requirements/constraints.txt

.PHONY: demo test lint bench format clean help lock

help:
	@echo "make demo   - run a simulated voice call end to end (no API key, no Redis needed)"
	@echo "make test   - run the test suite (fakeredis; integration tests when REDIS_URL is set)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - benchmarks (table + bench/results.json)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip

$(RUN_STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) -c $(LOCK) -e '.[demo]'
	@touch $@

$(DEV_STAMP): pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(PY) -m pip install $(PIP_FLAGS) -c $(LOCK) -e '.[dev,demo]'
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

# Resolve pyproject.toml's ranges afresh in a throw-away venv and record the exact versions.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	.lock-venv/bin/python -m pip install $(PIP_FLAGS) '.[dev,demo,fast]'
	( echo "# Exact versions for make test / lint / demo and CI. Refresh: make lock"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^voicegrid' ) > $(LOCK)
	rm -rf .lock-venv build
	@echo "wrote $(LOCK); commit it"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
