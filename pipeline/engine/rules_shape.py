"""Taylor rules for shape and view ops: the same op on every coefficient, sample dims shifted by two."""

from __future__ import annotations

import torch

from . import jets
from .jet_helpers import JET_LEADING_AXES, as_jets, coefficient_axes, coefficient_axis, is_jet, with_coeffs
from .jets import Jet
from .rule_table import NotCovered, rule

# ---------------------------------------------------------------- shape / view ops (per coefficient)


@rule("view", "_unsafe_view", "reshape")
def _view(x, shape):
    c = x.coeffs
    return with_coeffs(x, c.reshape(c.shape[:JET_LEADING_AXES] + tuple(shape)))


@rule("t")
def _t(x):
    return x if x.ndim < 2 else with_coeffs(x, x.coeffs.transpose(JET_LEADING_AXES, JET_LEADING_AXES + 1))


@rule("transpose")
def _transpose(x, dim0, dim1):
    return with_coeffs(x, x.coeffs.transpose(coefficient_axis(dim0, x.ndim), coefficient_axis(dim1, x.ndim)))


@rule("permute")
def _permute(x, dims):
    return with_coeffs(x, x.coeffs.permute(list(range(JET_LEADING_AXES)) + coefficient_axes(dims, x.ndim)))


@rule("unsqueeze")
def _unsqueeze(x, dim):
    return with_coeffs(x, x.coeffs.unsqueeze(dim % (x.ndim + 1) + JET_LEADING_AXES))


@rule("squeeze")
def _squeeze(x, dim=None):
    if dim is None:
        dims = [d for d in range(JET_LEADING_AXES, JET_LEADING_AXES + x.ndim) if x.coeffs.shape[d] == 1]
    else:
        dims = [d for d in coefficient_axes(dim, x.ndim) if x.coeffs.shape[d] == 1]
    c = x.coeffs
    for d in sorted(dims, reverse=True):
        c = c.squeeze(d)
    return with_coeffs(x, c)


@rule("expand")
def _expand(x, size, implicit=False):
    c = jets.align(x, len(size))
    return with_coeffs(x, c.expand(tuple(c.shape[:JET_LEADING_AXES]) + tuple(size)))


@rule("select")
def _select(x, dim, index):
    return with_coeffs(x, x.coeffs.select(coefficient_axis(dim, x.ndim), index))


@rule("slice")
def _slice(x, dim=0, start=None, end=None, step=1):
    axis = coefficient_axis(dim, x.ndim)
    index = [slice(None)] * axis + [slice(start, end, step)]
    return with_coeffs(x, x.coeffs[tuple(index)])


@rule("flip")
def _flip(x, dims):
    return with_coeffs(x, x.coeffs.flip(coefficient_axes(dims, x.ndim)))


@rule("roll")
def _roll(x, shifts, dims=()):
    if not dims:
        raise NotCovered("roll over the flattened tensor")
    return with_coeffs(x, x.coeffs.roll(shifts, coefficient_axes(dims, x.ndim)))


@rule("narrow")
def _narrow(x, dim, start, length):
    return with_coeffs(x, x.coeffs.narrow(coefficient_axis(dim, x.ndim), start, length))


@rule("index")
def _index(x, indices):
    if not is_jet(x) or any(is_jet(i) for i in indices):
        raise NotCovered("indexing with input-dependent indices")
    used = [k for k, i in enumerate(indices) if i is not None]
    if used and used != list(range(used[0], used[-1] + 1)) and len(used) > 1:
        raise NotCovered("advanced indexing with separated index tensors")
    full = (slice(None),) * JET_LEADING_AXES + tuple(slice(None) if i is None else i for i in indices)
    return with_coeffs(x, x.coeffs[full])


@rule("cat")
def _cat(tensors, dim=0):
    parts = as_jets(tensors)
    ref = next(t for t in tensors if is_jet(t))
    ndim = ref.ndim
    batch = ref.coeffs.shape[1]
    coeffs = [p.coeffs.expand(p.coeffs.shape[:1] + (batch,) + p.coeffs.shape[2:]) for p in parts]
    # torch.cat skips legacy empty 1-d tensors; keep that behaviour
    coeffs = [c for c, t in zip(coeffs, tensors) if not (torch.is_tensor(t) and t.ndim == 1 and t.numel() == 0)]
    return Jet(torch.cat(coeffs, dim=coefficient_axis(dim, ndim)), parts[0].top, ref.index_set)


@rule("stack")
def _stack(tensors, dim=0):
    ndim = next(t for t in tensors if is_jet(t)).ndim
    axis = dim % (ndim + 1)
    parts = [_unsqueeze(t, axis) if is_jet(t) else t.unsqueeze(axis) for t in tensors]
    return _cat(parts, axis)


@rule("clone", "contiguous", "alias", "lift_fresh_copy", "lift_fresh", "positive")
def _identity(x, *args, **kwargs):
    return x


@rule("_to_copy", "to")
def _to_copy(x, *args, dtype=None, **kwargs):
    if dtype is None or dtype == x.coeffs.dtype:
        return x
    if not dtype.is_floating_point:
        return Jet(x.coeffs[:1].to(dtype), 0, x.index_set)
    return with_coeffs(x, x.coeffs.to(dtype))


@rule("detach")
def _detach(x):
    return Jet(x.coeffs[:1], 0, x.index_set)


@rule("select_scatter")
def _select_scatter(base, src, dim, index):
    b, s = as_jets([base, src])
    ref = b
    batch = max(b.coeffs.shape[1], s.coeffs.shape[1])
    cb = b.coeffs.expand((b.coeffs.shape[0], batch) + b.coeffs.shape[2:])
    cs = s.coeffs.expand((s.coeffs.shape[0], batch) + s.coeffs.shape[2:])
    return Jet(torch.select_scatter(cb, cs, coefficient_axis(dim, ref.ndim), index), b.top, ref.index_set)


@rule("slice_scatter")
def _slice_scatter(base, src, dim=0, start=None, end=None, step=1):
    b, s = as_jets([base, src])
    batch = max(b.coeffs.shape[1], s.coeffs.shape[1])
    cb = b.coeffs.expand((b.coeffs.shape[0], batch) + b.coeffs.shape[2:])
    cs = s.coeffs.expand((s.coeffs.shape[0], batch) + s.coeffs.shape[2:])
    return Jet(torch.slice_scatter(cb, cs, coefficient_axis(dim, b.ndim), start, end, step), b.top, b.index_set)


@rule("copy")
def _copy(self, src, non_blocking=False):
    shape = self.shape
    if is_jet(src):
        c = jets.align(src, len(shape))
        return with_coeffs(src, c.expand(c.shape[:JET_LEADING_AXES] + tuple(shape)))
    return src.expand(shape).clone()
