"""Job kinds: the one place that knows which kinds of job exist, and what each does.

``KINDS`` maps a job file's ``kind`` to a ``Kind``: its job model (in
``pipeline.spec``), what one row is called (``unit``: samples / cases), the
store's row axis (``axis``: sample / case), and the module that implements it.
Each implementation module (``kinds/derivative.py``, ``kinds/sweep.py``) has:

- ``prepare(spec) -> Prepared``: resolve sizes, check the job on a tiny
  example (bad input fails here, before any store exists) and plan the store.
- ``compute(spec, block, device, previous, budget=Budget()) -> (arrays, ShardInfo)``: the numbers of
  one block of a shard, keyed by store array name, row axis first; ``budget``
  (``pipeline.memory``) caps its chunks and the engine's memory.
- ``job_files(spec) -> {key: path}``: the files the job reads, by the job-file key that names them.
- ``resolve_paths(spec, job_dir, absolute) -> {field: value}``: the job's file paths made absolute.
- ``check_labels(prepared)``: the job file's axis labels checked against the prepared shapes.

The rest of the package asks this registry (``kind_of(spec)``,
``kind_named(name)``) instead of switching on the kind's name: a new kind is a
model in ``spec/``, a module here and one entry in ``KINDS``. The registry
itself imports no torch (store readers use it); an implementation module is
imported when one of its functions is first called.

Example:
    >>> kind_named("sweep").axis, kind_named("derivatives").unit
    ('case', 'samples')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from ..memory import Budget
from ..plan import Plan
from ..spec.base import Job, SpecError
from ..spec.derivative import DerivativeJob
from ..spec.sweep import SweepJob


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


@dataclass(frozen=True)
class Kind:
    """One kind of job: its model, its names for rows, and the module that prepares and computes it.

    Attributes:
        name: the job file's ``kind``.
        model: the pydantic model of its job files.
        unit: what one row is called in messages and progress (``samples``, ``cases``).
        axis: the store's row dimension (``sample``, ``case``).
        size_key: the job-file key that sets the number of rows (named when the results do not fit).
        probe_rows: rows ``submit --dry-run`` times ``compute`` on (at most one chunk).
        module: the implementation module (see the module docstring).
        code_key: the job-file key that names the user's code module (its edits are what
            ``--accept-changed-code`` lets through).
        labels: ``module:function`` that labels an opened store's dataset (``open_results``).
        report: ``module:function`` giving the kind's sections of ``pipeline report``.
        tables: the Parquet files of its own in a store (``Prepared.tables``), which every shard reads
            (``pipeline verify`` checks them: one gone is damage no shard repairs).
    """

    name: str
    model: type[Job]
    unit: str
    axis: str
    size_key: str
    probe_rows: int
    module: str
    code_key: str
    labels: str
    report: str
    tables: tuple[str, ...] = ()

    def implementation(self) -> ModuleType:
        """The implementation module, imported on first use (it brings torch)."""
        return importlib.import_module(self.module)

    def prepare(self, spec: Any) -> Prepared:
        """Resolve, check on a tiny example and plan (the driver, before any store exists)."""
        prepared: Prepared = self.implementation().prepare(spec)
        return prepared

    def compute(
        self, spec: Any, block: Any, device: Any, previous: ShardInfo | None = None, budget: Budget | None = None
    ) -> tuple[Any, ShardInfo]:
        """The arrays of one block of a shard (a worker), within ``budget`` (default: no caps)."""
        result: tuple[Any, ShardInfo] = self.implementation().compute(
            spec, block, device, previous, budget=budget or Budget()
        )
        return result

    def job_files(self, spec: Any) -> dict[str, str]:
        """The files the job reads, by the job-file key that names them."""
        files: dict[str, str] = self.implementation().job_files(spec)
        return files

    def resolve_paths(self, spec: Any, job_dir: Path, absolute: Callable[[str], str]) -> dict[str, Any]:
        """The fields of ``spec`` whose paths change when made absolute (``absolute``; the job file's dir)."""
        update: dict[str, Any] = self.implementation().resolve_paths(spec, job_dir, absolute)
        return update

    def label_dataset(self, dataset: Any, attributes: dict[str, Any]) -> Any:
        """The opened store's dataset with the kind's index coordinates and labels."""
        from ..imports import import_object

        label = cast(Callable[[Any, dict[str, Any]], Any], import_object(self.labels))
        return label(dataset, attributes)

    def report_sections(self, dataset: Any, progress: Callable[[str], None] | None = None) -> list[Any]:
        """The kind's sections of ``pipeline report`` for an opened store (``progress``: told what is read now)."""
        from ..imports import import_object

        sections = cast(Callable[..., list[Any]], import_object(self.report))
        return sections(dataset) if progress is None else sections(dataset, progress)

    def check_labels(self, prepared: Prepared) -> None:
        """Check the job file's axis labels against the prepared shapes (raise ``ValueError`` naming the key)."""
        self.implementation().check_labels(prepared)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "derivatives",
            DerivativeJob,
            "samples",
            "sample",
            "inputs.n",
            1024,
            f"{__name__}.derivative",
            code_key="function.target",
            labels="pipeline.labels:label_samples",
            report="pipeline.html_report:derivative_sections",
        ),
        Kind(
            "sweep",
            SweepJob,
            "cases",
            "case",
            "sweep",
            8,
            f"{__name__}.sweep",
            code_key="solver.name",
            labels="pipeline.labels:label_cases",
            report="pipeline.html_report:sweep_sections",
            tables=("cases.parquet",),
        ),
    )
}

#: the kind of a job file without a ``kind`` key: the one whose model does not require it
DEFAULT_KIND = next(name for name, kind in KINDS.items() if not kind.model.model_fields["kind"].is_required())


def kind_named(name: str | None) -> Kind:
    """The kind called ``name`` (``None``: the default kind); ``SpecError`` naming the kinds for another name.

    Example:
        >>> kind_named(None).name
        'derivatives'
    """
    name = DEFAULT_KIND if name is None else name
    if not isinstance(name, str) or name not in KINDS:  # a list or mapping is unhashable: say so, no TypeError
        raise SpecError([f"kind: unknown job kind {name!r}; use one of {', '.join(KINDS)}"])
    return KINDS[name]


def kind_of(spec: Any) -> Kind:
    """The kind of a validated job."""
    return kind_named(spec.kind)


def axis_name(kind: str | None) -> str:
    """The row axis of a store whose attributes record ``kind`` (a store of an unknown kind: the default's).

    Example:
        >>> axis_name("sweep"), axis_name(None)
        ('case', 'sample')
    """
    return KINDS.get(kind or DEFAULT_KIND, KINDS[DEFAULT_KIND]).axis


def unit_name(kind: str | None) -> str:
    """What one row of a store whose attributes record ``kind`` is called (``samples``, ``cases``)."""
    return KINDS.get(kind or DEFAULT_KIND, KINDS[DEFAULT_KIND]).unit


def kind_of_store(attributes: dict[str, Any]) -> Kind:
    """The kind of a store from its root attributes (a store of an unknown kind: the default's)."""
    kind = attributes.get("kind")
    return KINDS.get(kind or DEFAULT_KIND, KINDS[DEFAULT_KIND])


#: the job-file keys that name a user's code module, one per kind
CODE_KEYS = tuple(kind.code_key for kind in KINDS.values())


def job_models() -> dict[str, type[Job]]:
    """Job kinds and their models, in registry order."""
    return {name: kind.model for name, kind in KINDS.items()}


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # torch on first use by a kind's module: the registry stays light for store readers
        import torch

        return {"float32": torch.float32, "float64": torch.float64}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
