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

from .interface import Solver
from .params import prepare_params
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
    return get_solver(solver).run(params, chunk_size=chunk_size, device=device, dtype=dtype, **options)


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
