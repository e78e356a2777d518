"""Names, orders, shapes and dimension names of the per-sample quantities.

Pure (no torch): the spec validates quantity names with it, the planner sizes
the store's arrays with it, and the derivative engine uses the same names.

Quantities of a function ``f: R^in_shape -> R^out_shape`` per sample:

============  =======================  =====
name          shape per sample         order
============  =======================  =====
value         out                      0
jacobian      out + in                 1
hessian       out + in + in            2
laplacian     out                      2   (trace of the Hessian over the inputs)
bilaplacian   out                      4   (sum_ij d4f/dxi2 dxj2, the Laplacian of the Laplacian)
weighted_laplacian  out                2   (sum_ij C_ij d2f/dxi dxj, C = S S^T)
laplacian_estimate  out                2   (Hutchinson; ``_stderr`` beside it)
weighted_laplacian_estimate  out       2   (Hutchinson with directions S z)
d3, d4, ...   out + in * k             k
============  =======================  =====

``d1`` and ``d2`` are accepted as aliases of ``jacobian`` and ``hessian``.

Example:
    >>> quantity_shape("hessian", in_shape=(2,), out_shape=(150,))
    (150, 2, 2)
    >>> quantity_dims("hessian", in_ndim=1, out_ndim=1)
    ('output', 'input', 'input_d2')
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BASIC = ("value", "jacobian", "hessian", "laplacian", "bilaplacian")
# second-order linear operators (``pipeline.engine.operators``): shape ``out``, order 2; an estimate's
# standard error (``<name>_stderr``) is always stored beside it
ESTIMATES = ("laplacian_estimate", "weighted_laplacian_estimate")
OPERATOR_QUANTITIES = ("weighted_laplacian",) + ESTIMATES + tuple(e + "_stderr" for e in ESTIMATES)
SCALAR_PER_OUTPUT = ("value", "laplacian", "bilaplacian") + OPERATOR_QUANTITIES
MAX_ORDER = 8
_DK = re.compile(r"^d([1-9][0-9]*)$")
_ALIASES = {"d1": "jacobian", "d2": "hessian"}


def canonical_quantity(name: str) -> str:
    """Return the canonical name of a quantity, or raise ``ValueError`` with the fix.

    Example:
        >>> canonical_quantity("d2")
        'hessian'
    """
    if not isinstance(name, str):
        raise ValueError(f"quantity must be a string, got {name!r}")
    key = name.strip().lower()
    if key in BASIC or key in OPERATOR_QUANTITIES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    match = _DK.match(key)
    if match:
        order = int(match.group(1))
        if order > MAX_ORDER:
            raise ValueError(
                f"quantity {name!r} asks for order {order}; the highest supported order is "
                f"{MAX_ORDER} (the tensor has in_size**order entries per output)"
            )
        return f"d{order}"
    raise ValueError(
        f"unknown quantity {name!r}; choose from value, jacobian, hessian, laplacian, bilaplacian, "
        f"{', '.join(OPERATOR_QUANTITIES[:3])}, or dK for the K-th derivative tensor (d3, d4, ...)"
    )


def canonical_quantities(names: Iterable[str]) -> tuple[str, ...]:
    """Canonicalise and de-duplicate, keeping the user's order (one name alone is a name, not its letters)."""
    if isinstance(names, str):
        names = (names,)
    seen: list[str] = []
    for name in names:
        canon = canonical_quantity(name)
        if canon not in seen:
            seen.append(canon)
        if canon in ESTIMATES and canon + "_stderr" not in seen:
            seen.append(canon + "_stderr")  # an estimate never comes without its standard error
    if not seen:
        raise ValueError("at least one quantity is needed, e.g. ['value', 'jacobian']")
    return tuple(seen)


def quantity_order(name: str) -> int:
    """Derivative order a quantity needs (0 for the value)."""
    canon = canonical_quantity(name)
    if canon == "value":
        return 0
    if canon == "jacobian":
        return 1
    if canon in ("hessian", "laplacian") or canon in OPERATOR_QUANTITIES:
        return 2
    if canon == "bilaplacian":
        return 4
    return int(canon[1:])


def max_order(names: Iterable[str]) -> int:
    """Highest derivative order among quantities."""
    return max(quantity_order(n) for n in names)


def quantity_shape(name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample's quantity (no sample axis)."""
    canon = canonical_quantity(name)
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if canon in SCALAR_PER_OUTPUT:
        return out_shape
    return out_shape + in_shape * quantity_order(canon)


def _axis_names(base: str, ndim: int, suffix: str = "") -> tuple[str, ...]:
    if ndim == 1:
        return (base + suffix,)
    return tuple(f"{base}_{i}{suffix}" for i in range(ndim))


def input_dims(in_ndim: int) -> tuple[str, ...]:
    """Dimension names of one input sample."""
    return _axis_names("input", in_ndim)


def output_dims(out_ndim: int) -> tuple[str, ...]:
    """Dimension names of one output sample."""
    return _axis_names("output", out_ndim)


def quantity_dims(name: str, in_ndim: int, out_ndim: int) -> tuple[str, ...]:
    """Dimension names of one sample's quantity (no sample axis).

    Each repeated group of input axes gets its own names (``input``,
    ``input_d2``, ``input_d3``...) because xarray needs unique names per array.
    """
    canon = canonical_quantity(name)
    dims = output_dims(out_ndim)
    if canon in SCALAR_PER_OUTPUT:
        return dims
    for group in range(1, quantity_order(canon) + 1):
        dims += _axis_names("input", in_ndim, "" if group == 1 else f"_d{group}")
    return dims
