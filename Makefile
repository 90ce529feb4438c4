# Two commands: `make up` runs the platform, `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup up test test-fast lint image doctor bench schemas clean

setup:
	@bash scripts/setup.sh

up: setup
	$(PY) -m corral up

test: setup lint
	@bash scripts/setup.sh --test
	$(PY) -m corral image build >/dev/null
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

test-fast: setup
	$(PY) -m pytest -q -m "unit" tests

image: setup
	$(PY) -m corral image build

doctor: setup
	$(PY) -m corral doctor

bench: setup
	$(PY) bench/boot.py

schemas: setup
	$(PY) -m contracts.export

clean:
	rm -rf .corral
