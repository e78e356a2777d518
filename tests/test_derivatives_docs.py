"""The examples in the derivative engine's docstrings run and give what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "pipeline.engine",
    "pipeline.engine.api",
    "pipeline.engine.strategies",
    "pipeline.engine.jets",
    "pipeline.engine.univariate",
    "pipeline.engine.trace",
    "pipeline.engine.taylor",
    "pipeline.engine.choose",
    "pipeline.engine.chunking",
    "pipeline.engine.hvp",
    "pipeline.engine.collapsed",
    "pipeline.engine.operators",
    "pipeline.engine.hvp_operator",
    "pipeline.engine.rule_table",
    "pipeline.engine.jet_helpers",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
