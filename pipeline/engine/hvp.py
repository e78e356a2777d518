"""Hessian-vector products that share one linearization across all vectors (seed 001).

Two ways, chosen by cost:

* ``"reverse"`` (seed 001): one forward pass and one ``create_graph=True``
  backward pass build the gradient graph ``x -> J(x)`` once per chunk; every
  vector then costs one backward pass through that graph with
  ``retain_graph=True`` (all outputs at once via ``is_grads_batched``). The
  forward pass and the first backward pass are never repeated - measured
  about 4x faster than recomputing them per vector for a scalar function
  (64 inputs, 32 vectors, 512 samples); with 4 outputs, each vector needs a
  backward pass per output and the two were on par.
* ``"taylor"``: for small inputs the whole Hessian costs ``C(d + 2, 2)``
  forward passes in Taylor mode, after which every vector is one contraction.

(``vmap`` of a ``jvp`` over the vectors shares the primal too but measured
slower than separate recomputations on CPU, and ``torch.func.linearize``
returns zeros for some functions in torch 2.13, so neither is used.)

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
from torch.func import vmap

from .api import compute_derivatives
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
    traced = trace_function(fn, tuple(x.shape[1:]), x.dtype, x.device)
    if not traced.covered:
        return "reverse"
    with torch.no_grad():
        out_size = math.prod(torch.as_tensor(fn(x[0])).shape)
    taylor = 1.5 * math.comb(in_size + 2, 2)
    # the gradient graph: a forward and a backward pass per output; each vector a backward pass
    # through it per output (about twice the graph)
    reused = 3.0 * out_size * (1 + 2 * k)
    return "taylor" if taylor <= reused else "reverse"


def _reverse_chunk(fn, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``[B, k, *out, *in]`` from one gradient graph, reused by every vector (seed 001)."""
    batch, k = x.shape[0], vectors.shape[1]
    in_dims = tuple(range(2, x.ndim + 1))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        value = vmap(fn)(xg)
        out_shape = tuple(value.shape[1:])
        flat = value.reshape(batch, -1)
        n_out = flat.shape[1]
        # one-hot cotangents, one per output element: all outputs in one batched backward pass
        basis = torch.eye(n_out, dtype=x.dtype, device=x.device).unsqueeze(1).expand(n_out, batch, n_out)
        (jacobian,) = torch.autograd.grad(flat, xg, basis, create_graph=True, is_grads_batched=True)
        products = []
        for j in range(k):  # [n_out, B, *in] . [B, *in] -> [n_out, B]
            directional = (jacobian * vectors[:, j]).sum(dim=in_dims)
            if not directional.requires_grad:  # the function is linear: zero Hessian
                products.append(torch.zeros_like(jacobian))
                continue
            eye = torch.eye(n_out, dtype=x.dtype, device=x.device).unsqueeze(-1).expand(n_out, n_out, batch)
            (hv,) = torch.autograd.grad(
                directional, xg, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
            products.append(torch.zeros_like(jacobian) if hv is None else hv)
    stacked = torch.stack(products, dim=0).detach()  # [k, n_out, B, *in]
    stacked = stacked.permute((2, 0, 1) + tuple(range(3, stacked.ndim)))
    return stacked.reshape((batch, k) + out_shape + tuple(x.shape[1:]))


HVP_MAX_CHUNK = 1024  # samples per chunk at most with chunk_size="auto"


def _measured_chunk(one_chunk, x, vectors, pieces: list) -> tuple[int, int]:
    """``(chunk, start)`` for ``chunk_size="auto"``: one sample computed (kept in ``pieces``) and measured.

    The reverse path's batched double backward grows with the square of the
    output count (a 1,000-output, 784-input MLP: a fixed chunk of 1,024 samples
    exhausted 24 GB), so chunks are sized from one sample's measured peak.
    """
    from . import chunking

    if x.shape[0] == 0:
        return HVP_MAX_CHUNK, 0
    measured = chunking.measure(lambda xc: {"hvp": one_chunk(xc, vectors[:1])}, x[:1], None, tracker=False)
    pieces.append(measured.outputs["hvp"])
    if measured.peak_bytes is None:
        return HVP_MAX_CHUNK, 1
    free = chunking.available_bytes(x.device)
    return max(1, min(HVP_MAX_CHUNK, int(free // (2 * max(measured.peak_bytes, 1))))), 1


def hvp(fn, x, vectors, *, method="auto", chunk_size="auto"):
    """Hessian-vector products ``H(x_n) v`` for every sample and vector.

    Args:
        fn: maps ONE sample ``[*in]`` to ``[*out]``.
        x: samples ``[N, *in]``.
        vectors: ``[N, k, *in]`` (per sample) or ``[k, *in]`` (the same k vectors for all samples).
        method: ``"auto"``, ``"reverse"`` (the gradient graph once, one backward pass through it
            per vector) or ``"taylor"`` (the Hessian by Taylor mode, then k contractions).
        chunk_size: samples per chunk, or ``"auto"``: sized from one sample's measured
            memory (at most 1,024).

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
    vectors = _broadcast_vectors(x, vectors).to(dtype=x.dtype, device=x.device)
    n, k = x.shape[0], vectors.shape[1]
    in_shape = tuple(x.shape[1:])
    in_size = math.prod(in_shape)
    if method == "auto":
        method = _choose(fn, x, k) if n else "reverse"

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
        chunk_size, first = _measured_chunk(one_chunk, x, vectors, pieces)
    for start in range(first, n, chunk_size):
        pieces.append(one_chunk(x[start : start + chunk_size], vectors[start : start + chunk_size]))
    if not pieces:
        raise ValueError("hvp needs at least one sample")
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]
