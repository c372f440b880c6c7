# Two commands for users: `make demo` and `make test`. Both build .venv first when needed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core; each test file stays in one process (its module
# fixtures are built once), handed out in collection order: the slowest files first (tests/conftest.py
# SLOW_FILES_FIRST), so that both processes end together. PYTEST_WORKERS=0 runs everything in this process.
# The 25 slowest setups/tests are listed at the end (where the suite's time goes, on every run).
PYTEST_WORKERS ?= auto

.PHONY: venv demo test bench lock clean

venv: $(STAMP)

# Rebuilt when the lock file or setup.py changes (stale) or when .venv is missing.
# uv (pinned in constraints.txt, installed from PyPI into the venv first) fills the venv from the
# lock file; pip is the fallback when uv cannot be installed. Quiet: errors only, one line a phase.
$(STAMP): constraints.txt setup.py tools/make_venv.sh
	@tools/make_venv.sh $(VENV)
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipeline.demo --home $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# Regenerate the lock from the current environment (see BUILD.md).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable --exclude kdem-tf | sort > constraints.txt

clean:
	rm -rf $(VENV) outputs
