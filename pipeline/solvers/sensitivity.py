"""Sensitivities of scalar reductions of a solver's outputs to its parameters, per case, in forward mode.

A sweep job asks for ``q = reduce(output[:, index])`` per case and ``dq/dp``
for swept parameters ``p``; ``sensitivities`` returns the solver's outputs and
those numbers in one pass.

Example:
    >>> import torch
    >>> from pipeline.solvers import get_solver
    >>> from pipeline.solvers.sensitivity import Reduction
    >>> params = {"diffusivity": torch.tensor([0.1, 0.2], dtype=torch.float64)}
    >>> out, result = sensitivities(get_solver("heat1d"), params, {"u_end": Reduction("u", -1, "max")},
    ...                             ["diffusivity"], device=torch.device("cpu"), dtype=torch.float64, nx=32)
    >>> sorted(result), result["du_end_ddiffusivity"].shape
    (['du_end_ddiffusivity', 'u_end'], (2,))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .interface import Solver
from .params import prepare_params
from .run import solve

REDUCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": torch.mean,
    "sum": torch.sum,
    "max": torch.amax,
    "min": torch.amin,
}


def jvp(fn: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
    """``torch.func.jvp`` without ``has_aux``: (outputs, output tangents), typed as such."""
    primal_out, tangent_out = torch.func.jvp(fn, primals, tangents)[:2]
    return primal_out, tangent_out


class ReductionLike(Protocol):
    """Which scalar of one case's output: ``reduce`` over space of ``output`` at ``index`` (``None``: all)."""

    @property
    def output(self) -> str: ...

    @property
    def index(self) -> int | None: ...

    @property
    def reduce(self) -> str: ...


@dataclass(frozen=True)
class Reduction:
    """A plain ``ReductionLike`` (a sweep job passes its spec's ``sensitivities.outputs`` entries)."""

    output: str
    index: int | None = -1
    reduce: str = "mean"


def reduce_output(outputs: Mapping[str, torch.Tensor], reduction: ReductionLike) -> torch.Tensor:
    """The scalar ``[cases]`` of ``reduction``: ``outputs[output][:, index]`` reduced over the remaining axes.

    Example:
        >>> reduce_output({"u": torch.arange(6.0).reshape(1, 2, 3)}, Reduction("u", -1, "sum")).tolist()
        [12.0]
    """
    value = outputs[reduction.output]
    if reduction.index is not None and value.ndim > 1:
        value = value[:, reduction.index]
    return REDUCTIONS[reduction.reduce](value.reshape(value.shape[0], -1), dim=1)


def sensitivities(
    solver: Solver,
    params: Mapping[str, Any],
    reductions: Mapping[str, ReductionLike],
    wrt: Sequence[str],
    *,
    device: torch.device,
    dtype: torch.dtype,
    **options: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The solver's outputs, and ``q`` and ``dq/dp`` (named ``d<q>_d<p>``) per case for each reduction and ``p`` in ``wrt``.

    Forward mode with one tangent direction per parameter, equal to 1 in every
    case (cases are independent, so each case's output tangent is its own
    derivative): the solver's own ``jvp_fn`` carries all directions in one
    pass when it has one (rte1d), else one ``torch.func.jvp`` through the
    solve per parameter. The reductions' tangents go through ``torch.func.jvp``
    too (right for max/min, whose tangent is the arg-max's).
    """

    def solve_all(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return solve(solver, values, device=device, dtype=dtype, **options)

    missing = [p for p in wrt if p not in params]
    if missing:
        raise ValueError(
            f"{solver.name}: sensitivities with respect to {missing} need those parameters in params, "
            f"with a case axis (given: {', '.join(params) or 'none'})"
        )
    known = set(solver.outputs(solver.validate_options(options))) if solver.outputs_fn is not None else None
    for q, reduction in reductions.items():
        if reduction.reduce not in REDUCTIONS:
            raise ValueError(
                f"reduction {q!r}: unknown reduce {reduction.reduce!r}; use one of {', '.join(REDUCTIONS)}"
            )
        if known is not None and reduction.output not in known:
            raise ValueError(
                f"reduction {q!r}: {solver.name} has no output {reduction.output!r}; it has {', '.join(sorted(known))}"
            )
    scalars = list(reductions)
    # numbers, numpy arrays and values without a case axis, as solve() takes them
    infos = solver.parameters_fn(solver.validate_options(options)) if solver.parameters_fn is not None else {}
    params, n = prepare_params(solver.name, params, infos, device=device, dtype=dtype)
    params = {k: v.contiguous() if k in wrt else v for k, v in params.items()}  # a broadcast value gets its own memory
    if not wrt:
        outputs = solve_all(params)
        return outputs, {q: reduce_output(outputs, reductions[q]).detach().cpu().numpy() for q in scalars}
    directions: dict[str, Mapping[str, torch.Tensor]] = {}
    if solver.jvp_fn is not None:
        eye = torch.eye(len(wrt), dtype=dtype, device=device)
        tangents = {p: eye[:, j, None].expand(-1, n) for j, p in enumerate(wrt)}
        needed = sorted({reductions[q].output for q in scalars})
        outputs, output_tangents = solver.jvp_fn(
            params, tangents, device=device, dtype=dtype, tangent_outputs=needed, **options
        )
        directions = {p: {name: t[j] for name, t in output_tangents.items()} for j, p in enumerate(wrt)}
    else:
        for p in wrt:

            def along_p(value_p: torch.Tensor, p: str = p) -> dict[str, torch.Tensor]:
                return solve_all({**params, p: value_p})

            outputs, directions[p] = jvp(along_p, (params[p],), (torch.ones_like(params[p]),))
    result: dict[str, np.ndarray] = {}
    for q in scalars:
        reduction = reductions[q]

        def reduce(value: torch.Tensor, reduction: ReductionLike = reduction) -> torch.Tensor:
            return reduce_output({reduction.output: value}, reduction)

        result[q] = reduce(outputs[reduction.output]).detach().cpu().numpy()
        for p in wrt:
            _, tangent = jvp(reduce, (outputs[reduction.output],), (directions[p][reduction.output],))
            result[f"d{q}_d{p}"] = tangent.detach().cpu().numpy()
    return outputs, result
