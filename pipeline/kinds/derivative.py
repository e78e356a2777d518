"""Derivative jobs: quantities of a torch function over an input set, per sample.

``resolve_paths`` and ``job_files`` run whenever a job file is loaded
(``pipeline validate --no-deep`` too), so this module imports torch, the
engine and the input readers only inside ``prepare`` and ``compute``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..memory import Budget
from ..spec.derivative import DerivativeJob, Function, ImportFunction, MLPFunction, NpyInputs, ParquetInputs, ZarrInputs
from . import Prepared, ShardInfo

if TYPE_CHECKING:
    import torch


def prepare(spec: DerivativeJob) -> Prepared:
    """Resolve sizes, probe the function and run the engine on the first two input samples on the CPU, plan the store."""
    import torch

    from .. import encoding
    from ..engine import compute_derivatives
    from ..models import FunctionError, build_function, probe_output_shape
    from ..plan import plan_derivative_job
    from ..sources import describe_inputs, read_inputs
    from . import DTYPES

    info = describe_inputs(spec.inputs)
    if isinstance(spec.function, MLPFunction) and info.shape != (spec.function.in_features,):
        raise FunctionError(
            f"function.in_features is {spec.function.in_features} but the samples in "
            f"{getattr(spec.inputs, 'path', 'inputs')} have shape {list(info.shape)}; "
            "set function.in_features to match or pick other inputs"
        )
    dtype = DTYPES[spec.derivatives.dtype]
    fn = build_function(spec.function, dtype, "cpu")
    x = torch.as_tensor(read_inputs(spec.inputs, 0, min(2, info.n)), dtype=dtype)  # the two probe samples
    out_shape = probe_output_shape(fn, x)
    try:
        result = compute_derivatives(
            fn,
            x,
            spec.quantities,
            method=spec.derivatives.method,
            chunk_size=2,
            options=spec.derivatives.operator_options(),
        )
    except Exception as err:  # whatever the user's function raises (IndexError, KeyError, ...)
        raise FunctionError(
            f"function: computing {list(spec.quantities)} on two samples failed: {type(err).__name__}: {err}"
        ) from None
    plan = plan_derivative_job(
        n=info.n,
        in_shape=info.shape,
        out_shape=out_shape,
        quantities=spec.quantities,
        chunk_size=spec.store.chunk_size,
        shard_size=spec.shard_size,
        dtype=spec.derivatives.dtype,
    )
    attributes = {
        "quantities": list(spec.quantities),
        "in_shape": list(info.shape),
        "out_shape": list(out_shape),
        "method_preflight": result.method,
        "method_reason": result.fallback_reason or "",
    }
    summary = (
        f"{plan.n} samples of shape {list(info.shape)} -> output {list(out_shape)}\n"
        f"quantities {list(spec.quantities)}, method {result.method}"
        + (f" ({result.fallback_reason})" if result.fallback_reason else "")
    )
    prepared = encoding.apply(spec, Prepared(spec, plan, attributes, summary))
    if any(
        encoding.ATTRIBUTE in a and a[encoding.ATTRIBUTE]["dtype"] in encoding.LOSSY
        for a in prepared.array_attributes.values()
    ):
        samples = min(info.n, ERROR_SAMPLES)  # the rounding error of the stored dtypes, measured here
        x = torch.as_tensor(read_inputs(spec.inputs, 0, samples), dtype=dtype)
        full = compute_derivatives(
            fn,
            x,
            spec.quantities,
            method=result.method,
            chunk_size=samples,
            options=spec.derivatives.operator_options(),
        )
        encoding.measure_errors(spec, prepared, {k: v.detach().numpy() for k, v in full.outputs.items()}, samples)
    return prepared


ERROR_SAMPLES = 256


@lru_cache(maxsize=4)
def _cached_function(function_json: str, dtype: str, device: str, checkpoint_stamp=None):
    # A worker process runs many shards of one job: build (and load) the model once.
    # ``checkpoint_stamp`` (size, mtime) makes a checkpoint replaced at the same path load again.
    from pydantic import TypeAdapter

    from ..models import build_function
    from . import DTYPES

    return build_function(TypeAdapter(Function).validate_json(function_json), DTYPES[dtype], device)


def _stamp(path: str | None):
    try:
        stat = os.stat(path) if path else None
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat else None


def compute(spec: DerivativeJob, shard, device: torch.device, previous: ShardInfo | None = None, *, budget: Budget):
    """Inputs and quantities of a shard (or block) as numpy arrays, and how they were computed.

    ``budget`` caps the engine's chunks (after a memory failure of the shard:
    halved per failure, from the job's chunk size or the block's size) and
    its memory per chunk (``execution.memory_limit``).

    With ``previous`` (how the shard's earlier blocks were computed) and ``derivatives.method:
    auto``, the method the engine chose for the first block is kept, so a
    close call is timed once per shard, not once per block.
    """
    import torch

    from ..engine import compute_derivatives
    from ..engine.api import METHODS
    from ..sources import read_inputs
    from ..transfer import to_host
    from . import DTYPES

    dtype = DTYPES[spec.derivatives.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = spec.derivatives.allow_tf32
        torch.backends.cudnn.allow_tf32 = spec.derivatives.allow_tf32
    fn = _cached_function(
        spec.function.model_dump_json(), spec.derivatives.dtype, str(device), _stamp(spec.function.checkpoint)
    )
    x = torch.as_tensor(read_inputs(spec.inputs, shard.start, shard.stop), dtype=dtype, device=device)
    method = spec.derivatives.method
    if method == "auto" and previous is not None and previous.method in METHODS:
        method = previous.method
    chunk_size = spec.derivatives.chunk_size
    cap = budget.chunk_cap(chunk_size if isinstance(chunk_size, int) else shard.size)
    result = compute_derivatives(
        fn,
        x,
        spec.quantities,
        method=method,
        chunk_size=chunk_size if cap is None else cap,
        memory_limit_bytes=budget.memory_bytes,
        options=spec.derivatives.operator_options(),
        offset=int(shard.start),
    )
    # copied to the host on a side stream (CUDA): the writer thread waits for it, not the next block's compute
    arrays = to_host({"inputs": x, **{name: result.outputs[name] for name in spec.quantities}})
    return arrays, ShardInfo(result.method, int(result.chunk_size), result.peak_memory_bytes)


def job_files(spec: DerivativeJob) -> dict[str, str]:
    """The files the job reads: the function's module and checkpoint, an input file."""
    from ..fingerprints import input_path, module_source

    found: dict[str, str] = {}
    function = spec.function
    if isinstance(function, ImportFunction):
        source = module_source(function.target, function.python_path)
        if source:
            found["function.target"] = source
    if function.checkpoint:
        found["function.checkpoint"] = function.checkpoint
    if getattr(spec.inputs, "path", None):
        found["inputs.path"] = input_path(spec.inputs)
    return found


def resolve_paths(spec: DerivativeJob, job_dir: Path, absolute: Callable[[str], str]) -> dict[str, Any]:
    """Input files and checkpoints made absolute; ``function.python_path`` defaults to the job file's directory."""
    update: dict[str, Any] = {}
    if isinstance(spec.inputs, (ZarrInputs, ParquetInputs, NpyInputs)):
        update["inputs"] = spec.inputs.model_copy(update={"path": absolute(spec.inputs.path)})
    if isinstance(spec.function, ImportFunction):
        paths = [absolute(p) for p in spec.function.python_path] or [str(job_dir)]
        fn_update: dict[str, Any] = {"python_path": paths}
        if spec.function.checkpoint:
            fn_update["checkpoint"] = absolute(spec.function.checkpoint)
        update["function"] = spec.function.model_copy(update=fn_update)
    elif isinstance(spec.function, MLPFunction) and spec.function.checkpoint:
        update["function"] = spec.function.model_copy(update={"checkpoint": absolute(spec.function.checkpoint)})
    return update


def check_labels(prepared: Prepared) -> None:
    """``function.output_names`` / ``input_names`` fit the function's shapes (``labels.check_labels``)."""
    from ..labels import check_labels as check

    spec = prepared.spec
    check(
        spec.function.model_dump(),
        spec.quantities,
        in_shape=tuple(prepared.attributes["in_shape"]),
        out_shape=tuple(prepared.attributes["out_shape"]),
    )
