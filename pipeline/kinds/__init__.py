"""Job kinds: what each kind of job does on the driver (``prepare``) and on a worker (``compute``).

Each kind is one module with two functions:

- ``prepare(spec) -> Prepared``: resolve sizes, check the job on a tiny
  example (bad input fails here, before any store exists) and plan the store.
- ``compute(spec, shard, device) -> (arrays, ShardInfo)``: the numbers of one
  shard as numpy arrays keyed by store array name, sample/case axis first.

``tasks.run_shard`` and ``driver`` dispatch on ``spec.kind`` through
``kind_module``; adding a job kind means adding a module here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..plan import Plan

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Prepared:
    """A validated job, resolved and planned, ready for the driver to create its store."""

    spec: Any
    plan: Plan
    attributes: dict[str, Any]
    summary: str
    initial_arrays: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    array_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    """How a shard was computed (goes to its commit marker and the manifest)."""

    method: str
    chunk_size: int = 0
    peak_memory_bytes: int | None = None


KINDS = {"derivatives": "derivative", "sweep": "sweep"}


def kind_module(spec):
    """The module implementing ``spec.kind``."""
    return importlib.import_module(f"{__name__}.{KINDS[spec.kind]}")
