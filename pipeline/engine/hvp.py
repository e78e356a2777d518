"""Hessian-vector products that share one linearization across all vectors (seed 001).

Two ways, chosen by cost:

* ``"reverse"`` (seed 001): the gradient by reverse mode, differentiated
  forward along every vector - ``vmap`` over the vectors of
  ``jvp(jacrev(fn))``, in which only the tangents carry the vector axis, so
  the forward pass and the reverse pass that build the gradient run once per
  sample for all vectors, and all outputs go at once. (A double backward
  through an autograd gradient graph, the earlier way, measured 2.2x slower
  for a scalar function with 64 inputs and 32 vectors, and needed a backward
  pass per output per vector: 40x slower, 50 s against 1.2 s, for 150 outputs.)
* ``"taylor"``: for small inputs the whole Hessian costs ``C(d + 2, 2)``
  forward passes in Taylor mode, after which every vector is one contraction.

For vectors that arrive one at a time (conjugate gradient), see
``hvp_operator.HessianOperator``. ``torch.func.linearize`` returns zeros for
some functions in torch 2.13, so it is not used.

Shapes: ``x [N, *in]``, ``vectors [N, k, *in]`` (per sample) or ``[k, *in]``
(shared by all samples); the result is ``[N, k, *out, *in]``: for each sample,
vector and output element, ``H_out @ v``.

Example:
    >>> hv = hvp(lambda x: (x ** 3).sum(), torch.ones(2, 3), torch.eye(3))
    >>> hv.shape, float(hv[0, 1, 1])
    (torch.Size([2, 3, 3]), 6.0)
"""

from __future__ import annotations

import math

import torch
from torch.func import jacrev, jvp, vmap

from .api import check_x, compute_derivatives, sample_output_size
from .strategies import exact_layer_norm
from .trace import trace_function

HVP_METHODS = ("auto", "reverse", "taylor")


def _broadcast_vectors(x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    in_shape = tuple(x.shape[1:])
    if vectors.ndim == x.ndim and tuple(vectors.shape[1:]) == in_shape:
        return vectors.unsqueeze(0).expand((x.shape[0],) + tuple(vectors.shape))
    if vectors.ndim == x.ndim + 1 and vectors.shape[0] == x.shape[0] and tuple(vectors.shape[2:]) == in_shape:
        return vectors
    raise ValueError(
        f"vectors must be [N, k, *in] = [{x.shape[0]}, k, {', '.join(map(str, in_shape))}] or shared "
        f"[k, {', '.join(map(str, in_shape))}], got {tuple(vectors.shape)}"
    )


def _choose(fn, x: torch.Tensor, k: int) -> str:
    in_size = math.prod(x.shape[1:])
    out_size = sample_output_size(fn, x)
    traced = trace_function(fn, tuple(x.shape[1:]), x.dtype, x.device)
    if not traced.covered:
        return "reverse"
    taylor = 1.5 * math.comb(in_size + 2, 2)
    # the gradient (a forward pass and a batched backward, ~1 + out/2 passes as in choose.py),
    # its primal once and a tangent per vector on top (about twice the primal each)
    reused = (1 + 0.5 * out_size) * (1 + 2 * k)
    return "taylor" if taylor <= reused else "reverse"


def _reverse_chunk(fn, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``[B, k, *out, *in]``: the gradient by reverse mode, differentiated forward along every vector.

    ``vmap`` over the samples of ``vmap`` over the vectors of ``jvp(jacrev(fn))``:
    under the inner ``vmap`` only the tangents carry the vector axis, so the
    forward pass and the reverse pass that build the gradient run once per
    sample for all ``k`` vectors (seed 001's reuse), and every output is
    handled at once. Measured faster than double backward through an autograd
    gradient graph in every case tried (2.2x for 64 inputs, 32 vectors, a scalar
    output; 40x for 150 outputs, where that graph needed a backward pass
    per output per vector).
    """
    in_ndim = x.ndim - 1

    def per_sample(xi, vs):
        return vmap(lambda v: jvp(jacrev(fn), (xi,), (v,))[1])(vs)  # [k, *out, *in]

    with exact_layer_norm(), torch.no_grad():  # no graph for the parameters (see strategies.torch_func_chunk)
        products = vmap(per_sample)(x, vectors)
    return products.reshape(products.shape[:2] + tuple(products.shape[2 : products.ndim - in_ndim]) + x.shape[1:])


HVP_MAX_CHUNK = 65536  # samples per chunk at most with chunk_size="auto"


def _measured_chunk(fn, one_chunk, x, vectors, pieces: list, method: str) -> tuple[int, int]:
    """``(chunk, start)`` for ``chunk_size="auto"``: sized from one sample's measured peak memory.

    The sample is measured (under the profiler, about 10x slower) once per
    function, input shape, dtype, method and vector count
    (``chunking.FOOTPRINTS``; its result is kept in ``pieces``); a fixed chunk
    of 1,024 samples exhausted 24 GB for a 1,000-output, 784-input MLP, and
    one vmapped call over all samples is the fastest where it fits.
    """
    from . import chunking

    n = x.shape[0]
    if n == 0:
        return HVP_MAX_CHUNK, 0
    key = (tuple(x.shape[1:]), x.dtype, "hvp-" + method, vectors.shape[1])
    per_sample, measured = chunking.remembered_footprint(fn, key, lambda xc: {"hvp": one_chunk(xc, vectors[:1])}, x[:1])
    start = 0 if measured is None else 1
    if measured is not None:
        pieces.append(measured["hvp"])
    free = chunking.available_bytes(x.device)
    return max(1, min(HVP_MAX_CHUNK, n, int(free // (2 * per_sample)))), start


def hvp(fn, x, vectors, *, method="auto", chunk_size="auto"):
    """Hessian-vector products ``H(x_n) v`` for every sample and vector.

    Args:
        fn: maps ONE sample ``[*in]`` to ``[*out]``.
        x: samples ``[N, *in]``.
        vectors: ``[N, k, *in]`` (per sample) or ``[k, *in]`` (the same k vectors for all samples).
        method: ``"auto"``, ``"reverse"`` (``jvp(jacrev)`` mapped over the vectors: the gradient
            once per sample, a tangent per vector) or ``"taylor"`` (the Hessian by Taylor mode,
            then k contractions).
        chunk_size: samples per chunk, or ``"auto"``: sized from one sample's measured
            memory (measured once per function and shape).

    Returns:
        ``[N, k, *out, *in]``: entry ``[n, j, o..., i...]`` is ``sum_m H[n, o, i, m] v[n, j, m]``.

    Example:
        >>> x = torch.randn(4, 2)
        >>> hvp(lambda x: x.sin(), x, torch.randn(3, 2)).shape
        torch.Size([4, 3, 2, 2])
    """
    if method not in HVP_METHODS:
        raise ValueError(f"unknown hvp method {method!r}; choose from {', '.join(HVP_METHODS)}")
    auto_size = chunk_size == "auto"
    if not auto_size and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}")
    check_x(x)
    vectors = _broadcast_vectors(x, vectors).to(dtype=x.dtype, device=x.device)
    n, k = x.shape[0], vectors.shape[1]
    in_shape = tuple(x.shape[1:])
    in_size = math.prod(in_shape)
    if method == "auto":
        method = _choose(fn, x, k) if n else "reverse"
    elif n:
        sample_output_size(fn, x)  # one tensor out, or a ValueError that says so

    def one_chunk(xc, vc):
        if method == "reverse":
            return _reverse_chunk(fn, xc, vc)
        hessian = compute_derivatives(
            fn, xc, ("hessian",), method="taylor", chunk_size="auto" if auto_size else len(xc)
        )
        h = hessian.outputs["hessian"]
        out_shape = tuple(h.shape[1 : h.ndim - 2 * len(in_shape)])
        flat_h = h.reshape((xc.shape[0], -1, in_size, in_size))
        flat_v = vc.reshape(xc.shape[0], k, in_size)
        product = torch.einsum("noim,nkm->knoi", flat_h, flat_v).permute(1, 0, 2, 3)
        return product.reshape((xc.shape[0], k) + out_shape + in_shape)

    pieces, first = [], 0
    if auto_size:
        chunk_size, first = _measured_chunk(fn, one_chunk, x, vectors, pieces, method)
    for start in range(first, n, chunk_size):
        pieces.append(one_chunk(x[start : start + chunk_size], vectors[start : start + chunk_size]))
    if not pieces:
        raise ValueError("hvp needs at least one sample")
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]
