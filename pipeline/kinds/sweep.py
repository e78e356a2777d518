"""Sweep jobs: a PDE solver run over a table of parameter cases.

The driver builds the case table once (``sweeps.make_cases``), writes it to
``cases.parquet`` and as ``[case]`` coordinate arrays; each shard reads its
rows back, solves its cases batched on the worker's device and returns the
outputs ``[case, ...]`` and, when asked, sensitivities ``d<q>_d<p> [case]``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import encoding
from ..memory import Budget
from ..plan import plan_sweep_job
from ..sources import InputError, describe_inputs, read_inputs
from ..spec import SpecError
from ..store import read_cases
from ..transfer import to_host
from . import DTYPES, Prepared, ShardInfo


def _solver(spec):
    from ..solvers import get_solver

    try:
        return get_solver(spec.solver.name, spec.solver.python_path)
    except (ValueError, ImportError, AttributeError) as err:
        raise SpecError([f"solver.name: {err}"]) from None


def case_table(spec) -> dict[str, np.ndarray]:
    """The sweep's cases (fixed parameters included as constant columns)."""
    from ..sweeps import make_cases

    try:
        return make_cases(spec.sweep, dict(spec.fixed) or None)
    except (ValueError, OSError) as err:
        message = str(err)
        own = f"sweep {spec.sweep.kind}"  # make_cases names a key by its sweep's kind: `sweep grid.axes.a`
        if spec.sweep.kind != "product" and message.startswith((own + ".", own + ":")):
            message = "sweep" + message[len(own) :]  # the job file's key: `sweep.axes.a`
        raise SpecError([message]) from None


def sensitivity_names(spec, swept: list[str]) -> tuple[list[str], list[str]]:
    """(scalar outputs, parameters differentiated against) of the job's sensitivities."""
    if spec.sensitivities is None:
        return [], []
    return list(spec.sensitivities.outputs), list(spec.sensitivities.wrt or swept)


def prepare(spec) -> Prepared:
    """Build the case table, check the solver on the first case, and plan the store."""
    from ..solvers import solve
    from ..sweeps import to_arrow_table

    solver = _solver(spec)
    try:
        options = solver.validate_options(spec.solver.options)
    except ValueError as err:
        raise SpecError([f"solver.options: {err}"]) from None
    table = case_table(spec)
    n = len(next(iter(table.values())))
    swept = [name for name in table if name not in spec.fixed]
    known = solver.parameters(options)
    if known:
        given = {
            "sweep": [k for k in table if k not in spec.fixed],
            "fixed": list(spec.fixed),
            "profiles": spec.profiles,
        }
        errors = [
            f"{key}: {unknown} are not parameters of {solver.name}; its parameters are {sorted(known)}"
            for key, names in given.items()
            if (unknown := sorted(set(names) - set(known)))
        ]
        if errors:
            raise SpecError(errors)
    for name, source in spec.profiles.items():
        try:
            info = describe_inputs(source)
        except InputError as err:
            # the message names the keys of a derivative job's inputs: say profiles.<name>.path, not inputs.path
            raise SpecError([str(err).replace("inputs.", f"profiles.{name}.")]) from None
        expected = known[name].shape if name in known else info.shape
        clash = sorted(set(known[name].excludes) & set(table)) if name in known else []
        if clash:
            raise SpecError(
                [
                    f"profiles.{name}: {solver.name} takes the profile {name} or the scalars {clash}, not both "
                    f"(they set the same thing); drop profiles.{name}, or drop {clash} from sweep or fixed"
                ]
            )
        if info.n < n or tuple(info.shape) != tuple(expected):
            raise SpecError(
                [
                    f"profiles.{name}: {source.path} holds {info.n} profiles of shape {list(info.shape)}; "
                    f"the sweep needs {n} of shape {list(expected)}"
                ]
            )
    scalars, wrt = sensitivity_names(spec, swept)
    unknown = sorted(set(wrt) - set(swept))
    if unknown:  # the job's own check cannot see a Parquet table's columns
        raise SpecError([f"sensitivities.wrt: {unknown} are not swept parameters; choose from {sorted(swept)}"])
    _check_every_case(spec, solver, options, table, n, known)
    first = _case_params(spec, {k: v[:1] for k, v in table.items()}, 0, 1, torch.float64, torch.device("cpu"))
    try:
        outputs = solver.outputs(options, example={k: v[0] for k, v in first.items()})
    except Exception as err:  # whatever the user's solver raises
        raise SpecError(
            [f"solver: running {solver.name} on the first case failed: {type(err).__name__}: {err}"]
        ) from None
    for q, reduction in spec.sensitivities.outputs.items() if scalars else []:
        if reduction.output not in outputs:
            raise SpecError(
                [
                    f"sensitivities.outputs.{q}.output: {reduction.output!r} is not an output of {solver.name}; "
                    f"choose from {sorted(outputs)}"
                ]
            )
        dims, shape = outputs[reduction.output]
        if reduction.index is not None and shape and not -shape[0] <= reduction.index < shape[0]:
            raise SpecError(
                [
                    f"sensitivities.outputs.{q}.index: {reduction.index} is out of range for output "
                    f"{reduction.output!r}, whose first axis {dims[0]!r} has {shape[0]} entries; use an index from "
                    f"{-shape[0]} to {shape[0] - 1} (-1: the last) or null to reduce over all of it"
                ]
            )
    try:
        result, _ = _solve_cases(spec, solver, options, first, torch.device("cpu"), torch.float64)
    except Exception as err:  # whatever the user's solver raises
        raise SpecError(
            [f"solver: running {solver.name} on the first case failed: {type(err).__name__}: {err}"]
        ) from None
    for name, (_dims, shape) in outputs.items():
        if tuple(result[name].shape[1:]) != tuple(shape):
            raise SpecError(
                [f"solver: output {name!r} has shape {list(result[name].shape[1:])}, declared {list(shape)}"]
            )
    coords = {dim: np.asarray(values) for dim, values in solver.coords(options).items()}
    derived = [*scalars, *(f"d{q}_d{p}" for q in scalars for p in wrt)]
    plan = plan_sweep_job(
        n_cases=n,
        outputs=outputs,
        coords={dim: len(values) for dim, values in coords.items()},
        case_parameters=tuple(table),
        scalars=tuple(derived),
        chunk_size=spec.store.chunk_size,
        shard_size=spec.shard_size,
        dtype=spec.solver.dtype,
    )
    case_coords = " ".join(table)
    attributes = {
        "solver": solver.name,
        "solver_options": {k: v for k, v in options.items() if _jsonable(v)},
        "parameters": list(table),
        "swept": swept,
        "outputs": list(outputs),
        "sensitivities": derived,
    }
    summary = (
        f"{n} cases of {solver.name}, swept {swept}, fixed {sorted(spec.fixed)}\n"
        f"outputs {', '.join(f'{k} {list(d)}' for k, (d, _) in outputs.items())}"
        + (f"\nsensitivities {derived}" if derived else "")
    )
    prepared = encoding.apply(
        spec,
        Prepared(
            spec,
            plan,
            attributes,
            summary,
            initial_arrays={**{k: np.asarray(v, dtype=np.float64) for k, v in table.items()}, **coords},
            tables={"cases.parquet": to_arrow_table(table)},
            array_attributes={name: {"coordinates": case_coords} for name in (*outputs, *derived)},
        ),
    )
    # the rounding error of a 16-bit stored dtype, measured on the first case (solved in float64 above) and, when
    # one is asked for, on the cases at each swept parameter's extremes (where float16 overflows, if anywhere)
    arrays = {k: v.detach().cpu().numpy() for k, v in result.items()}
    probes = _probe_cases(table, swept, n) if encoding.lossy_arrays(prepared) else [0]
    for case in probes[1:]:
        rows = {k: v[case : case + 1] for k, v in table.items()}
        params = _case_params(spec, rows, case, case + 1, torch.float64, torch.device("cpu"))
        try:
            more = solve(solver, params, device=torch.device("cpu"), dtype=torch.float64, **options)
        except Exception as err:  # whatever the user's solver raises
            raise SpecError(
                [f"solver: running {solver.name} on case {case} failed: {type(err).__name__}: {err}"]
            ) from None
        arrays = {k: np.concatenate([v, more[k].detach().cpu().numpy()]) for k, v in arrays.items()}
    where = (
        "the first case"
        if len(probes) == 1
        else f"{len(probes)} cases: the first, the last and each swept parameter's smallest and largest"
    )
    encoding.measure_errors(spec, prepared, arrays, len(probes), where=where)
    return prepared


def _probe_cases(table, swept, n) -> list[int]:
    """The first case, then the last and each swept parameter's smallest and largest (each case once)."""
    found = [0, n - 1]
    for name in swept:
        values = np.asarray(table[name], dtype=np.float64)
        found += [int(np.argmin(values)), int(np.argmax(values))]
    return list(dict.fromkeys(found))


CHECK_NUMBERS = 1 << 21  # numbers of the widest parameter per block when the driver checks every case


def check_block(parameters: dict) -> int:
    """Cases per block of the driver's check: ``CHECK_NUMBERS`` numbers of the widest of ``parameters``
    (a solver's declared parameters, ``Solver.parameters(options)``).

    rte1d's check builds every case's ``T0`` and ``sigma`` profiles: at 400
    cells, blocks of 65,536 cases made 210 MB temporaries and took 7.3 s for
    262,144 cases on the CI VM; blocks of 5,242 (16 MB) took 1.8-2.1 s. A
    fixed count of cases would also grow without bound with ``nx``. Never
    more than 65,536 cases (the block before session 15): a solver that
    declares no parameters may still take wide profiles from files.

        >>> from pipeline.solvers import get_solver
        >>> rte1d = get_solver("rte1d")
        >>> check_block(rte1d.parameters({"nx": 400})), check_block(rte1d.parameters({"nx": 10**7})), check_block({})
        (5242, 64, 65536)
    """
    width = max((math.prod(info.shape) for info in parameters.values()), default=1)
    return max(64, min(65536, CHECK_NUMBERS // max(1, width)))


def _check_every_case(spec, solver, options, table, n, parameters) -> None:
    """The solver's own check of every case (e.g. rte1d's stability limit), before any store exists."""
    from ..solvers import UnsolvableCase, check_cases

    if solver.check_cases is None:
        return  # nothing to check: do not read every case's profiles for nothing
    block = check_block(parameters)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = {k: v[start:stop] for k, v in table.items()}
        try:
            check_cases(
                solver,
                _case_params(spec, rows, start, stop, torch.float64, torch.device("cpu")),
                first_case=start,
                **options,
            )
        except UnsolvableCase as err:
            values = ", ".join(f"{k}={float(v[err.case]):.4g}" for k, v in table.items() if k not in spec.fixed)
            where = (
                f" (counted in cases {start}-{stop - 1} of {n:,}: the check stops at the first block of "
                f"{block:,} cases that holds one)"
                if n > block
                else ""
            )
            raise SpecError([f"sweep: case {err.case} ({values}) cannot be solved as asked. {err}{where}"]) from None


def _jsonable(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _case_params(spec, table, start, stop, dtype, device) -> dict[str, torch.Tensor]:
    """Parameters of cases ``[start, stop)`` of the job: ``table`` holds exactly those cases' rows."""
    params = {k: torch.tensor(np.asarray(v, dtype=np.float64), dtype=dtype, device=device) for k, v in table.items()}
    for name, source in spec.profiles.items():
        params[name] = torch.as_tensor(read_inputs(source, start, stop), dtype=dtype, device=device)
    return params


def _solve_cases(spec, solver, options, params, device, dtype, chunk_size=None):
    """The solver's outputs of these cases and, when the job asks for them, their sensitivities (else ``{}``)."""
    from ..solvers import sensitivities, solve

    if spec.sensitivities is None:
        return solve(solver, params, chunk_size=chunk_size, device=device, dtype=dtype, **options), {}
    swept = [name for name in params if name not in spec.fixed and name not in spec.profiles]
    _, wrt = sensitivity_names(spec, swept)
    n = next(iter(params.values())).shape[0]
    step = chunk_size or n  # after a memory failure: the cases in chunks, as solve() takes them
    parts = [
        sensitivities(
            solver,
            {k: v[start : start + step] for k, v in params.items()},
            spec.sensitivities.outputs,
            wrt,
            device=device,
            dtype=dtype,
            **options,
        )
        for start in range(0, n, step)
    ]
    if len(parts) == 1:
        return parts[0]
    outputs = {name: torch.cat([part[0][name] for part in parts]) for name in parts[0][0]}
    return outputs, {name: np.concatenate([part[1][name] for part in parts]) for name in parts[0][1]}


def compute(spec, shard, device: torch.device, previous: ShardInfo | None = None, *, budget: Budget):
    """Outputs (and sensitivities) of the shard's (or block's) cases as numpy arrays.

    After a memory failure of the shard (``budget.shrink``) the solver gets
    the block's cases in chunks, halved per failure.
    """
    solver = _solver(spec)
    options = solver.validate_options(spec.solver.options)
    dtype = DTYPES[spec.solver.dtype]
    table = read_cases(spec.store.path, shard.start, shard.stop)
    params = _case_params(spec, table, shard.start, shard.stop, dtype, device)
    chunk = budget.chunk_cap(shard.size)
    outputs, derived = _solve_cases(spec, solver, options, params, device, dtype, chunk)
    return to_host(dict(outputs), extra=derived), ShardInfo(method=solver.name, chunk_size=chunk or shard.size)


# ---------------------------------------------------------------- registry hooks (pipeline.kinds)


def job_files(spec) -> dict[str, str]:
    """The files the job reads: a user solver's module, a Parquet case table, profiles."""
    from ..fingerprints import input_path, module_source

    found: dict[str, str] = {}
    if ":" in spec.solver.name:
        source = module_source(spec.solver.name, spec.solver.python_path)
        if source:
            found["solver.name"] = source
    _sweep_files(found, spec.sweep, "sweep")
    for name, source in spec.profiles.items():
        found[f"profiles.{name}.path"] = input_path(source)
    return found


def _sweep_files(found: dict[str, str], sweep, key: str) -> None:
    if sweep.kind == "parquet":
        found[f"{key}.path"] = sweep.path
    elif sweep.kind == "product":
        for i, part in enumerate(sweep.sweeps):
            _sweep_files(found, part, f"{key}.sweeps[{i}]")


def resolve_paths(spec, job_dir, absolute) -> dict:
    """A Parquet case table and profiles made absolute; a user solver's ``python_path`` defaults to the job's dir."""
    update: dict = {}
    solver = spec.solver
    if ":" in solver.name:
        paths = [absolute(p) for p in solver.python_path] or [str(job_dir)]
        update["solver"] = solver.model_copy(update={"python_path": paths})
    if _case_tables(spec.sweep):
        update["sweep"] = _absolute_tables(spec.sweep, absolute)
    if spec.profiles:
        update["profiles"] = {k: v.model_copy(update={"path": absolute(v.path)}) for k, v in spec.profiles.items()}
    return update


def _case_tables(sweep) -> bool:
    """Whether ``sweep`` reads a Parquet case table, also nested in a product."""
    return sweep.kind == "parquet" or (sweep.kind == "product" and any(_case_tables(p) for p in sweep.sweeps))


def _absolute_tables(sweep, absolute):
    """``sweep`` with every Parquet case table's path made absolute, nested products included."""
    if sweep.kind == "parquet":
        return sweep.model_copy(update={"path": absolute(sweep.path)})
    if sweep.kind == "product":
        return sweep.model_copy(update={"sweeps": [_absolute_tables(part, absolute) for part in sweep.sweeps]})
    return sweep


def check_labels(prepared) -> None:
    """A sweep's axes are named by its solver: nothing in the job file to check."""
