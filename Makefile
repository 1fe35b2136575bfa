# EditLab: `make demo` sets up and runs the tour; `make test` sets up and runs the tests.
SHELL := /bin/bash
PY ?= $(or $(EDITLAB_VENV),$(CURDIR)/.venv)/bin/python

.PHONY: setup demo test test-unit test-latest lock bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

test-unit: setup
	@PYTHONSAFEPATH=1 $(dir $(PY))pytest tests/unit -q

# The newest versions the requirements allow, in .venv-latest: unit and node tiers, and what changed since the lock.
test-latest:
	@bash scripts/test_latest.sh

# After a green `make test`: record the versions it ran with as the lock (locks/comfyui-VERSION.txt).
lock: setup
	@bash scripts/lock.sh

bench: setup
	@$(PY) -P bench/run_all.py

# out/serve holds ./editlab serve's inputs, outputs and settings: a user's work, kept.
clean:
	rm -rf .host .pytest_cache .venv-latest
	[ ! -d out ] || find out -mindepth 1 -maxdepth 1 ! -name serve -exec rm -rf {} +
