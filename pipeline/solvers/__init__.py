"""PDE solvers batched over cases, behind one entry point: ``solve``.

A solver is a function of one case's parameters (tensors) and options that
returns named output tensors; ``solve`` runs it over a leading case axis. Each
solver comes with a ``Solver`` description (parameters, outputs, coords,
option validation) so the store can size its arrays without running it.

Example:
    >>> import torch
    >>> from pipeline.solvers import solve, get_solver
    >>> out = solve("heat1d", {"diffusivity": torch.tensor([0.1, 0.2])}, nx=32)
    >>> out["u"].shape == (2, *get_solver("heat1d").outputs({"nx": 32})["u"][1])
    True
"""

from .interface import Solver, UnsolvableCase, tracks_derivatives
from .params import ParamInfo, prepare_params
from .registry import available_solvers, get_solver, register_solver
from .run import check_cases, solve
from .sensitivity import sensitivities

__all__ = [
    "ParamInfo",
    "Solver",
    "UnsolvableCase",
    "available_solvers",
    "check_cases",
    "get_solver",
    "prepare_params",
    "register_solver",
    "sensitivities",
    "solve",
    "tracks_derivatives",
]
