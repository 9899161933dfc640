# Two commands (see README.md):
#   make run    set up .venv if needed, then run the pipeline on the default config
#   make test   set up .venv if needed, then run the test suite
#   make share CONFIG=config/paper.yaml     record a run's results with DVC, push, commit
#   make restore CONFIG=config/paper.yaml   fetch them on another clone, up to date for Snakemake
# `make setup` alone builds the environment. Setup is skipped when .venv holds a
# stamp for the current pyproject.toml + constraints.txt, so both commands are
# quick once set up; edit either file and the next command reinstalls.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

VENV    := .venv
BIN     := $(VENV)/bin
# torch is installed on its own first and pinned here: a plain `torch`
# requirement could pull a multi-GB CUDA build; with the CPU wheel already in
# place, the project install keeps it.
TORCH   := torch==2.13.0
HASH    := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP   := $(VENV)/.tarpo-setup-$(HASH)
CORES   ?= 2

.PHONY: setup run test share restore clean-venv

setup: $(STAMP)

$(STAMP):
	@py=$$(command -v python3.11 || command -v python3 || true); \
	if [ -z "$$py" ] || ! "$$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
	  echo "error: Python 3.11 is required (python3.11 or python3 on PATH)" >&2; exit 1; fi; \
	if [ ! -x $(BIN)/python ] || ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
	  echo "creating $(VENV) with $$py"; rm -rf $(VENV); "$$py" -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@rm -f $(VENV)/.tarpo-setup-*
	@echo "pyproject.toml + constraints.txt sha256: $(HASH)" > $(STAMP)
	@echo "environment ready: $(VENV)"

# The rules call the `tarpo` console script, so the venv's bin goes on PATH.
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) all

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

# Results with DVC (README, "Share results with DVC"): CONFIG is the config that was run.
CONFIG  ?= config/config.yaml

share: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/results.py share --configfile $(CONFIG)

restore: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/results.py restore --configfile $(CONFIG)

clean-venv:
	rm -rf $(VENV)
