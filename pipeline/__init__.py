"""pipeline: batched derivatives and PDE parameter sweeps of PyTorch functions on Ray.

The few names a user needs:

    >>> import pipeline
    >>> out = pipeline.derivatives(fn, x, ("value", "jacobian", "hessian"))   # doctest: +SKIP
    >>> ds = pipeline.open_results("results/quickstart.zarr")               # doctest: +SKIP
    >>> spec = pipeline.load_spec("jobs/quickstart.yaml")                   # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["compute_derivatives", "derivatives", "hvp", "load_spec", "open_results", "solve", "submit", "unstack_grid"]


def __getattr__(name: str):
    # Lazy re-exports: `import pipeline` stays cheap (no torch, no zarr) for the CLI's --help.
    if name in ("derivatives", "compute_derivatives", "hvp"):
        from . import engine

        return getattr(engine, name)
    if name == "open_results":
        from .store import open_results

        return open_results
    if name == "load_spec":
        from .spec import load_spec

        return load_spec
    if name == "submit":
        from .driver import submit

        return submit
    if name == "unstack_grid":
        from .labels import unstack_grid

        return unstack_grid
    if name == "solve":
        from .solvers import solve

        return solve
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too, so that `pipeline.<TAB>` in a notebook and `dir(pipeline)` list them
    return sorted({*globals(), *__all__})
