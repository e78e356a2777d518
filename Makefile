# The two commands a newcomer needs:
#   make demo   install, then run the seed-000 job on a local Ray and inspect its store
#   make test   install, lint (pipeline/, bench/, tests/) and type-check pipeline/, then run the test suite (what CI runs, via .ci/run)
#
# Installs into .venv. TORCH picks the torch build: the default is the CPU
# build this project is tested with; on a CUDA machine use e.g. `make demo TORCH=torch`.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
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
