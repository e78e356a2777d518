# The two commands a newcomer needs:
#   make demo   install, then run the seed-000 job on a local Ray and inspect its store
#   make test   install, lint (pipeline/, bench/, tests/) and type-check pipeline/, then run the test suite (what CI runs, via .ci/run)
#
# Installs into .venv (VENV=.venv313 for another; one made by another Python than PYTHON is refused). TORCH picks the torch version (default: the one this project is tested with),
# TORCH_INDEX where its build comes from (see below); e.g. `make demo TORCH=torch` on a CUDA machine.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# the index torch comes from (empty: pip's own), e.g.
# https://download.pytorch.org/whl/cpu for the CPU build on a Linux machine (PyPI's Linux torch is the CUDA build)
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench clean check-python

install: $(STAMP)

# run on every make (not only when the stamp is out of date): an existing $(VENV) made by another Python
# would otherwise be used as it is, whatever PYTHON says
check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pipeline needs Python 3.11+ (zarr 3 has no release for older ones), this is " + sys.version.split()[0] + ": run make with PYTHON=python3.11 or newer")'
	@if [ -e $(BIN)/python ]; then \
	  want=$$($(PYTHON) -c 'import sys; print(*sys.version_info[:2], sep=".")'); \
	  have=$$($(BIN)/python -c 'import sys; print(*sys.version_info[:2], sep=".")' 2>/dev/null || echo "none (its python does not run)"); \
	  if [ "$$have" != "$$want" ]; then \
	    echo "$(VENV) holds Python $$have, but PYTHON=$(PYTHON) is Python $$want: remove it (rm -rf $(VENV)) to reinstall with $(PYTHON), or keep both with VENV=.venv$$(echo $$want | tr -d .)" >&2; \
	    exit 2; \
	  fi; \
	fi

$(STAMP): pyproject.toml Makefile | check-python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/pipeline submit jobs/seed000.yaml --local
	$(BIN)/pipeline inspect results/seed000.zarr

# ruff (lint and format check) on pipeline/, bench/ and tests/, mypy on pipeline/ (mypy's files are set in pyproject.toml);
# `make test` runs it first, so CI fails on a lint or type error before any test runs.
lint: install
	$(BIN)/ruff check pipeline bench tests
	$(BIN)/ruff format --check pipeline bench tests
	$(BIN)/mypy

# two test processes (pytest-xdist), each taking whole files: the cluster and CLI tests wait on Ray and
# subprocesses much of the time, so two at once finish the suite in ~2/3 of the time on 2 cores
test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/derivatives.py
	$(BIN)/python bench/sweeps.py
	$(BIN)/python bench/store.py

clean:
	rm -rf results .pytest_cache
