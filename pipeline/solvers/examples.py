"""Tiny example user solvers: a plain per-case function and a declared ``Solver``.

A plain function is what most users write; ``solve`` vmaps it over cases and
discovers its outputs by running one case::

    solve("pipeline.solvers.examples:damped_oscillator", {"omega": omegas}, n_times=20)

``DAMPED_OSCILLATOR`` is the same function declared in full (parameters,
outputs, coords), which lets the store size its arrays without running it.

Example:
    >>> import torch
    >>> from pipeline.solvers import solve
    >>> out = solve(damped_oscillator, {"omega": torch.tensor([1.0, 2.0]), "gamma": 0.1})
    >>> out["position"].shape, out["final_energy"].shape
    (torch.Size([2, 20]), torch.Size([2]))
"""

from __future__ import annotations

import numpy as np
import torch

from .interface import Solver
from .params import ParamInfo


def damped_oscillator(
    params: dict[str, torch.Tensor], n_times: int = 20, t_end: float = 1.0
) -> dict[str, torch.Tensor]:
    """Position ``exp(-gamma t) cos(omega t)`` of one damped oscillator, and its final energy."""
    omega = params["omega"]
    gamma = params.get("gamma", torch.zeros_like(omega))
    t = torch.linspace(t_end / n_times, t_end, n_times, dtype=omega.dtype, device=omega.device)
    position = torch.exp(-gamma * t) * torch.cos(omega * t)
    velocity = torch.exp(-gamma * t[-1]) * (-gamma * torch.cos(omega * t[-1]) - omega * torch.sin(omega * t[-1]))
    return {"position": position, "final_energy": 0.5 * (velocity**2 + (omega * position[-1]) ** 2)}


DAMPED_OSCILLATOR = Solver(
    name="damped_oscillator",
    fn=damped_oscillator,
    default_options={"n_times": 20, "t_end": 1.0},
    batched=False,
    parameters_fn=lambda options: {
        "omega": ParamInfo((), (), 1.0, "angular frequency"),
        "gamma": ParamInfo((), (), 0.0, "damping rate"),
    },
    outputs_fn=lambda options: {"position": (("time",), (options["n_times"],)), "final_energy": ((), ())},
    coords_fn=lambda options: {
        "time": np.linspace(options["t_end"] / options["n_times"], options["t_end"], options["n_times"])
    },
    description="exp(-gamma t) cos(omega t): an example of a declared per-case solver",
)
