"""The examples in docstrings run and give what they say."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "pipeline.quantities",
    "pipeline.plan",
    "pipeline.spec",
    "pipeline.sources",
    "pipeline.models",
    "pipeline.sweeps",
    "pipeline.solvers.interface",
    "pipeline.solvers.rte1d",
    "pipeline.solvers.heat1d",
    "pipeline.solvers.registry",
    "pipeline.solvers.run",
    "pipeline.solvers.params",
    "pipeline.solvers.checks",
    "pipeline.solvers.sensitivity",
    "pipeline.sobol",
    "pipeline.parquet",
    "pipeline.store",
    "pipeline.lock",
    "pipeline.fingerprints",
    "pipeline.labels",
    "pipeline.provenance",
    "pipeline.encoding",
]
MODULES += [
    "pipeline.live",
    "pipeline.spec.base",
    "pipeline.spec.derivative",
    "pipeline.spec.sweep",
    "pipeline.spec.loading",
    "pipeline.kinds",
    "pipeline.store_probe",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples refer to jobs/ by relative path
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
