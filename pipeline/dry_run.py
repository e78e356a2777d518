"""``pipeline submit --dry-run``: the plan of a job and an estimate of its time, with nothing written.

``dry_run(prepared)`` times the job's own ``compute`` (the engine, or the
solver) on a probe of one chunk (at most the kind's ``probe_rows``: 1024
samples or 8 cases) on this machine's CPU, after a warm-up on two, and
scales it to the whole job. A sweep's probe reads its cases from a
``cases.parquet`` written to a temporary directory that is removed again;
no store, lock or Ray is touched.

Example:
    >>> from pipeline.driver import prepare
    >>> from pipeline.spec import load_spec
    >>> plan = dry_run(prepare(load_spec("jobs/quickstart.yaml", ["inputs.n=4096"])))   # doctest: +SKIP
    >>> plan.shards, plan.result_bytes                                                  # doctest: +SKIP
    (1, 1146880)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DryRun:
    """The plan of a job and its estimated compute time (one CPU worker of this machine)."""

    unit: str
    n: int
    shards: int
    shard_size: int
    chunk_size: int
    result_bytes: int
    probe: int
    probe_seconds: float

    @property
    def per_second(self) -> float:
        return self.probe / self.probe_seconds if self.probe_seconds > 0 else float("inf")

    @property
    def estimated_seconds(self) -> float:
        """Compute seconds of the whole job on one worker like this machine's CPU (writes not counted)."""
        return self.n / self.per_second

    def lines(self) -> list[str]:
        from .report import human_size

        return [
            f"{self.n:,} {self.unit} in {self.shards} shard{'' if self.shards == 1 else 's'} of {self.shard_size} "
            f"(chunks of {self.chunk_size})",
            f"results: {human_size(self.result_bytes)} to write before compression",
            f"probe: {self.probe} {self.unit} in {self.probe_seconds:.3f} s on this CPU "
            f"({self.per_second:,.0f} {self.unit}/s)",
            f"estimated compute: {_duration(self.estimated_seconds)} on one such worker, about "
            f"{_duration(self.estimated_seconds / 8)} on 8 (GPUs are usually much faster)",
            "nothing was written and no Ray was started (drop --dry-run to run it)",
        ]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(prepared) -> DryRun:
    """Plan facts and a timed probe of the job (see the module docstring)."""
    import torch

    from .kinds import kind_of
    from .plan import Shard

    spec, plan = prepared.spec, prepared.plan
    kind = kind_of(spec)
    probe = min(plan.n, plan.chunk_size, kind.probe_rows)
    scratch = Path(tempfile.mkdtemp(prefix="pipeline-dry-run-"))
    try:
        for file_name, table in prepared.tables.items():  # a sweep's cases, where compute reads them
            import pyarrow.parquet as pq

            pq.write_table(table, scratch / file_name)
        probe_spec = spec.model_copy(update={"store": spec.store.model_copy(update={"path": str(scratch)})})
        device = torch.device("cpu")
        kind.compute(probe_spec, Shard(0, 0, min(2, probe)), device, None)  # warm-up: imports, first calls
        began = time.perf_counter()
        kind.compute(probe_spec, Shard(0, 0, probe), device, None)
        seconds = time.perf_counter() - began
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return DryRun(
        kind.unit,
        plan.n,
        len(plan.shards),
        min(plan.shard_size, plan.n),  # what a shard holds: a job smaller than one shard is one shard of n
        plan.chunk_size,
        plan.result_bytes(),
        probe,
        seconds,
    )
