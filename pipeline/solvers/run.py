"""``solve``: run any solver over a batch of cases, in chunks, on a device.

Example:
    >>> import torch
    >>> from pipeline.solvers import solve
    >>> out = solve("rte1d", {"T0_mean": torch.tensor([1.0, 2.0])}, nx=32, t_end=0.5, save_every=5)
    >>> out["E"].shape
    torch.Size([2, 4, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .interface import ParamInfo, Solver, tracks_derivatives
from .registry import get_solver


def solve(
    solver: str | Solver | Callable,
    params: Mapping[str, Any],
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Run ``solver`` on every case in ``params``; return ``{output: Tensor[cases, ...]}``.

    Args:
        solver: a built-in name (``"rte1d"``, ``"heat1d"``), an import path
            ``"package.module:attr"``, a ``Solver`` or a per-case callable.
        params: parameter name -> value with a leading case axis (``[cases]`` for
            scalars, ``[cases, nx]`` for profiles). A value without the case axis
            (a Python number, a 0-d tensor, or one ``[nx]`` profile of a declared
            profile parameter) is broadcast to every case. Numpy arrays and lists
            are accepted.
        chunk_size: solve at most this many cases at once (memory); ``None`` = all
            (the solver may still block internally, e.g. rte1d for the CPU cache).
        device: where to compute (default: the accelerator the given tensors are on, else CPU).
            Outputs stay on that device.
        dtype: floating dtype to compute in (default: the promoted floating dtype
            of the inputs, else ``torch.get_default_dtype()``).
        **options: solver options (see ``get_solver(name).default_options``).

    Example:
        >>> import torch
        >>> x = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
        >>> T0 = (1 + 0.1 * torch.sin(2 * torch.pi * x)).expand(3, 400)
        >>> out = solve("rte1d", {"T0": T0, "sigma": torch.ones(400)}, t_end=0.1)
        >>> out["T"].shape, out["T"].dtype
        (torch.Size([3, 5, 400]), torch.float64)
    """
    spec = get_solver(solver)
    resolved = spec.validate_options(options)
    infos = spec.parameters_fn(resolved) if spec.parameters_fn is not None else {}
    batch, n_cases = prepare_params(spec.name, params, infos, device=device, dtype=dtype)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")

    if spec.batched:

        def run(part: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
            return spec.fn(part, **resolved)

    else:
        per_case = spec.fn

        def run(part: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
            return torch.func.vmap(lambda case: per_case(case, **resolved))(part)

    chunk = n_cases if chunk_size is None else min(chunk_size, n_cases)
    if chunk == n_cases:
        return _check_result(spec.name, run(batch), n_cases)
    if tracks_derivatives(*batch.values()):
        # out-of-place assembly keeps autograd / torch.func derivatives flowing
        pieces = [
            _check_result(spec.name, run({k: v[a : a + chunk] for k, v in batch.items()}), min(chunk, n_cases - a))
            for a in range(0, n_cases, chunk)
        ]
        return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
    outputs: dict[str, torch.Tensor] = {}
    for start in range(0, n_cases, chunk):
        stop = min(start + chunk, n_cases)
        result = _check_result(spec.name, run({k: v[start:stop] for k, v in batch.items()}), stop - start)
        for k, v in result.items():
            if k not in outputs:  # preallocate once: no second copy of all outputs
                outputs[k] = v.new_empty((n_cases, *v.shape[1:]))
            outputs[k][start:stop] = v
    return outputs


def check_cases(
    solver: str | Solver | Callable,
    params: Mapping[str, Any],
    *,
    first_case: int = 0,
    dtype: torch.dtype = torch.float64,
    **options: Any,
) -> None:
    """Raise ``ValueError`` if the solver declares that it cannot solve some of these cases.

    Runs the solver's ``check_cases`` (e.g. rte1d's stability limit) without
    solving; ``first_case`` numbers the cases in the message. A solver without
    one accepts every case.

    Example:
        >>> import torch
        >>> check_cases("rte1d", {"sigma_mean": torch.tensor([1.0, 1e4])}, first_case=10)
        Traceback (most recent call last):
        ...
        pipeline.solvers.interface.UnsolvableCase: rte1d: 1 of 2 cases are too stiff ... case 11, has ...
    """
    spec = get_solver(solver)
    if spec.check_cases is None:
        return
    resolved = spec.validate_options(options)
    infos = spec.parameters_fn(resolved) if spec.parameters_fn is not None else {}
    batch, _ = prepare_params(spec.name, params, infos, device="cpu", dtype=dtype)
    spec.check_cases(batch, resolved, first_case)


def prepare_params(
    solver_name: str,
    params: Mapping[str, Any],
    infos: Mapping[str, ParamInfo],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Check names and shapes, convert to tensors, broadcast unbatched values; return ``(batch, n_cases)``.

    With declared parameters (``infos`` non-empty) unknown names are rejected,
    every value is cast to the floating ``dtype``, and parameters not given get
    their declared default (unless a given parameter ``excludes`` them); for undeclared (plain-function)
    solvers integer tensors keep their dtype and every value of ndim >= 1 is
    taken as batched.

    Example:
        >>> import torch
        >>> batch, n = prepare_params("demo", {"a": torch.zeros(3), "b": 2.0}, {})
        >>> n, batch["b"].shape
        (3, torch.Size([3]))
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"{solver_name}: params must be a dict of name -> tensor, got {type(params).__name__}")
    if infos:
        unknown = sorted(set(params) - set(infos))
        if unknown:
            raise ValueError(
                f"{solver_name}: unknown parameter {unknown[0]!r}; it accepts: {', '.join(infos)}. "
                "Check the spelling (options such as nx go as keyword arguments, not in params)"
            )
        for name in params:
            clash = [other for other in infos[name].excludes if other in params]
            if clash:
                raise ValueError(
                    f"{solver_name}: parameter {name!r} cannot be given together with {clash}: they are "
                    f"alternative ways to set the same thing; drop {name!r} or drop {clash}"
                )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        try:
            tensors[name] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{solver_name}: parameter {name!r} is not numeric ({err}); give numbers or tensors"
            ) from None

    if device is None:
        accelerators = {t.device for t in tensors.values() if t.device.type != "cpu"}
        if len(accelerators) > 1:
            raise ValueError(
                f"{solver_name}: parameters are on different devices {sorted(map(str, accelerators))}; "
                "move them to one device or pass device="
            )
        device = accelerators.pop() if accelerators else torch.device("cpu")
    if dtype is None:
        floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for d in floating[1:]:
            dtype = torch.promote_types(dtype, d)
    if not dtype.is_floating_point:
        raise ValueError(f"{solver_name}: dtype must be a floating dtype, got {dtype}")

    batched: dict[str, bool] = {}
    lengths: dict[str, int] = {}
    for name, t in tensors.items():
        if infos:
            shape = infos[name].shape
            if tuple(t.shape) == shape:
                batched[name] = False
            elif tuple(t.shape[1:]) == shape and t.ndim == len(shape) + 1:
                batched[name] = True
            else:
                batch_shape = "(cases" + "".join(f", {d}" for d in shape) + ")"
                raise ValueError(
                    f"{solver_name}: parameter {name!r} ({infos[name].kind}) has shape {tuple(t.shape)}; "
                    f"expected {shape} for one case or {batch_shape} for a batch. Check nx and the case axis"
                )
        else:
            batched[name] = t.ndim >= 1
        if batched[name]:
            lengths[name] = t.shape[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{solver_name}: parameters have different numbers of cases: "
            + ", ".join(f"{k}: {v}" for k, v in lengths.items())
            + "; give every batched parameter the same leading length"
        )
    n_cases = next(iter(lengths.values())) if lengths else 1
    if n_cases == 0:
        raise ValueError(f"{solver_name}: no cases to solve (the case axis has length 0)")

    batch: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        cast = dtype if (infos or t.is_floating_point()) else t.dtype
        t = t.to(device=device, dtype=cast)
        batch[name] = t if batched[name] else t.expand(n_cases, *t.shape)
    excluded = {other for name in params for other in infos[name].excludes} if infos else set()
    for name, info in infos.items():
        if name not in batch and name not in excluded and info.default is not None:
            value = torch.tensor(info.default, dtype=dtype, device=device)
            batch[name] = value.expand(n_cases, *info.shape)
    return batch, n_cases


def _check_result(solver_name: str, result: Any, n_cases: int) -> dict[str, torch.Tensor]:
    if not isinstance(result, Mapping) or not all(isinstance(v, torch.Tensor) for v in result.values()):
        raise ValueError(
            f"{solver_name}: a solver must return a dict of output name -> tensor, got {type(result).__name__}"
        )
    for k, v in result.items():
        if v.ndim == 0 or v.shape[0] != n_cases:
            raise ValueError(
                f"{solver_name}: output {k!r} has shape {tuple(v.shape)} for {n_cases} cases; "
                "a batched solver must return tensors with the case axis first"
            )
    return dict(result)
