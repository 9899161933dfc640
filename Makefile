# Two commands (see README.md):
#   make run    set up .venv if needed, then run the pipeline on the default config (CPU numerics
#               pinned on x86-64, see NUMERICS below)
#   make test   set up .venv if needed, then run the test suite (make test-fast: the quick tier)
#   make share CONFIG=config/paper.yaml     record a run's results with DVC, push, commit
#   make restore CONFIG=config/paper.yaml   fetch them on another clone, up to date for Snakemake
#   make report CONFIG=config/smoke.yaml    Snakemake's HTML report of a run: results/{name}/report.html
# CONFIG (default config/config.yaml) also picks the config `make run` runs; each config writes under its
# own root, results/{name}/ (its `name`), so the results of several configs coexist.
# `make setup` alone builds the environment. Setup is skipped when .venv holds a
# stamp for the current pyproject.toml + constraints.txt, so both commands are
# quick once set up; edit either file and the next command reinstalls.
# Python 3.11, 3.12 or 3.13: `make test PYTHON=python3.12` picks one (the venv is
# rebuilt when its Python differs); otherwise an existing .venv in that range is
# kept, and a new one takes the first of python3.11, python3.12, python3.13,
# python3 that runs and is in range.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV    := .venv
BIN     := $(VENV)/bin
# torch is installed on its own first and pinned here: a plain `torch`
# requirement could pull a multi-GB CUDA build; with the CPU wheel already in
# place, the project install keeps it. (Where no local CPU wheel matches the
# Python, pip takes torch 2.13.0 from PyPI: on Linux x86_64 a CUDA build, which
# also runs on the CPU.)
TORCH   := torch==2.13.0
HASH    := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP   := $(VENV)/.tarpo-setup-$(HASH)
CORES   ?= 2

# Supported Pythons (keep in step with requires-python in pyproject.toml).
PYTHONS    := 3.11 3.12 3.13
PYVER      := import sys; print("%d.%d" % sys.version_info[:2])
# The venv's Python version (empty if there is no working venv); setup runs
# again, stamp or not, when it is out of range or differs from PYTHON's.
VENV_PYVER := $(shell test -x $(BIN)/python && $(BIN)/python -c '$(PYVER)' 2>/dev/null)
ifeq ($(filter $(PYTHONS),$(VENV_PYVER)),)
$(STAMP): FORCE
else ifneq ($(PYTHON),)
ifneq ($(shell "$(PYTHON)" -c '$(PYVER)' 2>/dev/null),$(VENV_PYVER))
$(STAMP): FORCE
endif
endif

.PHONY: setup run test test-fast share restore report clean-venv FORCE

setup: $(STAMP)

$(STAMP):
	@ok=' $(PYTHONS) '; \
	version() { "$$1" -c '$(PYVER)' 2>/dev/null || true; }; \
	if [ -n "$(PYTHON)" ]; then \
	  py=$$(command -v "$(PYTHON)" || true); \
	  if [ -z "$$py" ]; then echo "error: PYTHON=$(PYTHON) not found" >&2; exit 1; fi; \
	  v=$$(version "$$py"); \
	  if [ -z "$$v" ]; then \
	    echo "error: PYTHON=$(PYTHON) ($$py) does not run:" >&2; "$$py" -V >&2 || true; exit 1; fi; \
	  if [[ "$$ok" != *" $$v "* ]]; then \
	    echo "error: PYTHON=$(PYTHON) is Python $$v; 3.11, 3.12 or 3.13 is required" >&2; exit 1; fi; \
	else \
	  py=; v=$$(version $(BIN)/python); \
	  if [[ "$$ok" == *" $$v "* ]]; then py=$(BIN)/python; fi; \
	  for c in python3.11 python3.12 python3.13 python3; do \
	    [ -z "$$py" ] || break; c=$$(command -v $$c || true); [ -n "$$c" ] || continue; \
	    v=$$(version "$$c"); if [[ "$$ok" == *" $$v "* ]]; then py=$$c; fi; done; \
	  if [ -z "$$py" ]; then \
	    echo "error: Python 3.11, 3.12 or 3.13 is required (python3.11, python3.12, python3.13 or python3 on PATH, or set PYTHON=/path/to/python)" >&2; exit 1; fi; \
	fi; \
	if [ "$$(version $(BIN)/python)" != "$$v" ]; then \
	  py=$$("$$py" -c 'import sys; print(sys.executable)'); \
	  echo "creating $(VENV) with $$py (Python $$v)"; rm -rf $(VENV); "$$py" -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@rm -f $(VENV)/.tarpo-setup-*
	@echo "pyproject.toml + constraints.txt sha256: $(HASH)" > $(STAMP)
	@echo "environment ready: $(VENV)"

# Pinned CPU numerics for `make run` on x86-64 (NUMERICS=native turns it off): ATen's vectorised kernels,
# MKL (conditional numerical reproducibility) and oneDNN all at AVX2, so float reductions take the same
# code path on any x86 CPU with AVX2 instead of each CPU's widest one; an emulated older CPU then gives
# the same weights bit for bit (perf/cpu_numerics.py, docs/experiments.md). The tests run natively.
NUMERICS ?= pinned
ifeq ($(NUMERICS)-$(shell uname -m),pinned-x86_64)
PIN_ENV := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT ONEDNN_MAX_CPU_ISA=AVX2
endif

# The config that `run`, `share`, `restore` and `report` act on (README, "Another config").
CONFIG  ?= config/config.yaml

# The rules call the `tarpo` console script, so the venv's bin goes on PATH.
run: setup
	$(PIN_ENV) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) all --configfile $(CONFIG)

# The whole suite (what CI runs), on TEST_WORKERS processes (pytest-xdist; a test file stays on one worker, so
# its module fixtures are built once), then the slowest tests. `make test-fast`: the tests not marked slow,
# workflow, sandbox or compile (pyproject.toml), a few minutes: the loop to run while working.
TEST_WORKERS ?= 2
FAST := not slow and not workflow and not sandbox and not compile

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "$(FAST)"

# Results with DVC (README, "Share results with DVC"): CONFIG is the config that was run.
share: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/results.py share --configfile $(CONFIG)

restore: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/results.py restore --configfile $(CONFIG)

# Snakemake's report of a finished run (figures, tables, runtime), beside the config's results.
report: setup
	root=$$($(BIN)/python -c 'import sys; from tarpo.config import load_config; print(load_config(sys.argv[1]).results_root)' $(CONFIG)); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report $$root/report.html --configfile $(CONFIG); \
	echo "report: $$root/report.html"

clean-venv:
	rm -rf $(VENV)

FORCE:
