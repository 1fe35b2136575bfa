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

# out/serve holds ./editlab serve's inputs, outputs and settings: a user's work, kept.
clean:
	rm -rf .host .pytest_cache
	[ ! -d out ] || find out -mindepth 1 -maxdepth 1 ! -name serve -exec rm -rf {} +
