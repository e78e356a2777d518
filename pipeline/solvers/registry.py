"""Finding solvers: built-ins by name, user solvers by ``package.module:attr``.

Example:
    >>> from pipeline.solvers import available_solvers, get_solver
    >>> "rte1d" in available_solvers()
    True
    >>> get_solver("rte1d").name
    'rte1d'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from ..imports import ImportPathError, describe_import_error, import_object
from .interface import Solver

# name -> (module, attribute); imported on first use so the registry stays cheap.
_BUILTIN = {
    "heat1d": ("pipeline.solvers.heat1d", "SOLVER"),
    "rte1d": ("pipeline.solvers.rte1d", "SOLVER"),
}
_REGISTERED: dict[str, Solver] = {}


def available_solvers() -> tuple[str, ...]:
    """Names ``get_solver`` resolves without an import path (built-ins and registered).

    Example:
        >>> available_solvers()[:2]
        ('heat1d', 'rte1d')
    """
    return tuple(sorted(_BUILTIN)) + tuple(sorted(set(_REGISTERED) - set(_BUILTIN)))


def register_solver(solver: Solver, *, replace: bool = False) -> Solver:
    """Make ``solver`` available by its name (for the rest of this process).

    Example:
        >>> from pipeline.solvers.examples import DAMPED_OSCILLATOR
        >>> register_solver(DAMPED_OSCILLATOR, replace=True).name
        'damped_oscillator'
    """
    if not isinstance(solver, Solver):
        raise ValueError(
            f"register_solver needs a Solver, got {type(solver).__name__}; wrap a function "
            "with Solver.from_function(fn, name=...)"
        )
    if ":" in solver.name:
        raise ValueError(f"solver name {solver.name!r} contains ':' which marks import paths; choose another name")
    if not replace and (solver.name in _BUILTIN or solver.name in _REGISTERED):
        raise ValueError(f"a solver named {solver.name!r} exists already; pass replace=True or choose another name")
    _REGISTERED[solver.name] = solver
    return solver


def get_solver(solver: str | Solver | Callable, python_path: Iterable[str] = ()) -> Solver:
    """Resolve a name, an import path ``package.module:attr``, a ``Solver`` or a callable.

    An import path may point at a ``Solver`` (fully declared) or at a plain
    per-case function ``f(params, **options)`` (wrapped by ``Solver.from_function``,
    vmapped over cases, outputs discovered by running one case). ``python_path``:
    directories searched first for an import path (``solver.python_path``).

    Example:
        >>> get_solver("pipeline.solvers.examples:damped_oscillator").batched
        False
    """
    if isinstance(solver, Solver):
        return solver
    if isinstance(solver, str):
        name = solver.strip()
        if name in _REGISTERED:
            return _REGISTERED[name]
        if name in _BUILTIN:
            module, attr = _BUILTIN[name]
            return getattr(importlib.import_module(module), attr)
        if ":" in name:
            return _import_solver(name, python_path)
        raise ValueError(
            f"unknown solver {solver!r}; use one of {', '.join(available_solvers())}, "
            "or an import path 'package.module:function' for your own solver"
        )
    if callable(solver):
        return Solver.from_function(solver)
    raise ValueError(
        f"solver must be a name, an import path 'package.module:function', a Solver or a callable; "
        f"got {type(solver).__name__} {solver!r}"
    )


def _import_solver(path: str, python_path: Iterable[str] = ()) -> Solver:
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"solver import path {path!r} must look like 'package.module:function'")
    try:
        obj = import_object(path, python_path)
    except ImportPathError as err:
        if err.reason == "import":
            raise ValueError(
                f"solver {path!r}: cannot import module {module_name!r} ({err.cause}); "
                "check the spelling and that its directory is on the Python path"
            ) from None
        if err.reason == "broken":
            raise ValueError(
                f"solver {path!r}: importing module {module_name!r} failed: "
                f"{describe_import_error(err.cause or err)}; fix the module"
            ) from None
        owner, public = err.owner, err.public_names()
        raise ValueError(
            f"solver {path!r}: {type(owner).__name__} {getattr(owner, '__name__', owner)!r} has no attribute "
            f"{err.missing!r}; it has: {', '.join(public[:20])}{' ...' if len(public) > 20 else ''}"
        ) from None
    if isinstance(obj, Solver):
        return obj
    if callable(obj):
        return Solver.from_function(obj, name=path)
    raise ValueError(f"solver {path!r} is a {type(obj).__name__}, not a function or Solver")
