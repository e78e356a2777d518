"""Sobol points for input sets and sweeps: one generator, one set of limits (torch's ``SobolEngine``).

``torch.quasirandom.SobolEngine`` (Joe-Kuo directions, 30 bits, Owen-style
linear matrix scramble plus digital shift when ``scramble``, seeded) is the one
implementation; ``points(start, stop, d)`` are points ``start .. stop - 1`` of
the whole sequence (fast-forwarded), so a shard's points never depend on
where the sequence was cut. ``check`` holds the limits and their message;
the job models call it at validation, ``points`` again for direct callers.
torch is imported only when points are drawn.

Example:
    >>> points(0, 4, 2, scramble=False).tolist()
    [[0.0, 0.0], [0.5, 0.5], [0.75, 0.25], [0.25, 0.75]]
    >>> bool((points(2, 4, 2, seed=3) == points(0, 4, 2, seed=3)[2:]).all())
    True
"""

from __future__ import annotations

import numpy as np

MAX_DIMENSIONS = 1111
MAX_POINTS = 1 << 30  # the engine's 30 bits: past 2**30 points its state overflows


def check(dimensions: int, n: int = 0) -> None:
    """Raise ``ValueError`` when ``n`` Sobol points of ``dimensions`` coordinates are beyond the generator.

    Example:
        >>> check(1112)
        Traceback (most recent call last):
        ...
        ValueError: Sobol points support at most 1111 dimensions, got 1112; use random or Latin-hypercube points for more
    """
    if dimensions > MAX_DIMENSIONS:
        raise ValueError(
            f"Sobol points support at most {MAX_DIMENSIONS} dimensions, got {dimensions}; "
            "use random or Latin-hypercube points for more"
        )
    if n > MAX_POINTS:
        raise ValueError(f"Sobol points support at most 2**30 = {MAX_POINTS:,} points, got {n:,}; split the job")


def points(start: int, stop: int, dimensions: int, seed: int | None = 0, scramble: bool = True) -> np.ndarray:
    """Points ``[start, stop)`` of the ``dimensions``-dimensional Sobol sequence in ``[0, 1)``, float64 ``[stop - start, d]``.

    With ``scramble`` (default) the sequence is randomised by ``seed`` (``None``:
    a fresh random scramble) and keeps its net structure; the unscrambled
    sequence starts 0, 1/2, 3/4, 1/4, ...
    """
    import torch

    check(dimensions, stop)
    engine = torch.quasirandom.SobolEngine(dimensions, scramble=scramble, seed=seed)
    if start:
        engine.fast_forward(start)
    return engine.draw(stop - start, dtype=torch.float64).numpy()
