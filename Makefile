# EditLab: `make demo` sets up and runs the tour; `make test` sets up and runs the tests.
SHELL := /bin/bash
PY ?= $(or $(EDITLAB_VENV),$(CURDIR)/.venv)/bin/python

.PHONY: setup demo test test-unit bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

test-unit: setup
	@$(PY) -m pytest tests/unit -q

bench: setup
	@$(PY) bench/run_all.py

clean:
	rm -rf .host out .pytest_cache
