"""Truncated multivariate Taylor polynomials ("jets") batched over samples.

A jet of a tensor ``u`` with per-sample shape ``s`` carries, for every sample,
one Taylor coefficient ``u_alpha`` per multi-index ``alpha`` of a fixed
downward-closed :class:`IndexSet` (all ``|alpha| <= K``, or only the axis-aligned
``alpha = j * e_i`` for a Laplacian). The coefficients are stacked on a leading
axis: ``coeffs [M, B, *s]`` with the indices ordered by degree, so a linear op
applies to all of them as one batched op and the coefficients up to degree
``t`` are the prefix ``coeffs[:count(t)]``.

``u_alpha = d^alpha u / alpha!`` (normalised Taylor coefficients), so products
are plain truncated polynomial products and the derivative tensors come back
by multiplying with ``alpha!`` at the very end.

Example:
    >>> index_set = IndexSet.full(2, 2)
    >>> [index_set.indices[i] for i in range(len(index_set))]
    [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch


class IndexSet:
    """A downward-closed set of multi-indices over ``dim`` variables, ordered by degree.

    Downward-closed (every ``beta <= alpha`` of a member is a member) means the
    truncated product never needs a coefficient outside the set, so a smaller
    set (the Laplacian's diagonal) is exact for what it keeps.
    """

    def __init__(self, dim: int, order: int, indices: list[tuple[int, ...]], name: str):
        self.dim = dim
        self.order = order
        self.name = name
        self.indices = sorted(indices, key=lambda a: (sum(a), [-v for v in a]))
        self.position = {alpha: i for i, alpha in enumerate(self.indices)}
        self.degrees = [sum(a) for a in self.indices]
        counts = [0] * (order + 1)
        for deg in self.degrees:
            counts[deg] += 1
        self._count = list(itertools.accumulate(counts))
        self.factorials = [math.prod(math.factorial(v) for v in a) for a in self.indices]
        self._tables: dict = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"IndexSet({self.name}, dim={self.dim}, order={self.order}, size={len(self)})"

    def count(self, degree: int) -> int:
        """Number of indices of degree ``<= degree`` (the prefix length)."""
        if degree < 0:
            return 0
        return self._count[min(degree, self.order)]

    @staticmethod
    @lru_cache(maxsize=64)
    def full(dim: int, order: int) -> IndexSet:
        """All multi-indices with ``|alpha| <= order``: C(dim + order, order) of them."""
        # one multiset of variables per index (not all (order + 1)^dim tuples, 2^50 for d = 50)
        indices = []
        for degree in range(order + 1):
            for combo in itertools.combinations_with_replacement(range(dim), degree):
                alpha = [0] * dim
                for i in combo:
                    alpha[i] += 1
                indices.append(tuple(alpha))
        return IndexSet(dim, order, indices, "full")

    @staticmethod
    @lru_cache(maxsize=64)
    def diagonal(dim: int, order: int) -> IndexSet:
        """Only ``j * e_i`` (no mixed partials): ``1 + dim * order`` indices, enough for a Laplacian."""
        indices = [(0,) * dim]
        for i in range(dim):
            for j in range(1, order + 1):
                indices.append(tuple(j if k == i else 0 for k in range(dim)))
        return IndexSet(dim, order, indices, "diagonal")

    @staticmethod
    @lru_cache(maxsize=64)
    def biharmonic(dim: int) -> IndexSet:
        """What a bi-Laplacian needs: ``j * e_i`` up to 4 and ``a e_i + b e_j`` with ``a, b <= 2`` (downward
        closed): ``1 + 4 dim + 2 dim (dim - 1)`` indices, not ``C(dim + 4, 4)`` (221 vs 1,001 at 10 inputs)."""
        indices = [(0,) * dim]
        for i in range(dim):
            for j in range(1, 5):
                indices.append(tuple(j if k == i else 0 for k in range(dim)))
        for i, j in itertools.combinations(range(dim), 2):
            for a in (1, 2):
                for b in (1, 2):
                    alpha = [0] * dim
                    alpha[i], alpha[j] = a, b
                    indices.append(tuple(alpha))
        return IndexSet(dim, 4, indices, "biharmonic")

    def product_pairs(self, min_a: int, top_a: int, min_b: int, top_b: int, top: int, symmetric: bool):
        """Pairs of the truncated product ``a * b``, grouped by output: ``[(out, [(ia, ib, factor), ...]), ...]``.

        ``a`` holds the degrees ``min_a..top_a`` (stored from offset
        ``count(min_a - 1)``), likewise ``b``; the product keeps degrees
        ``min_a + min_b .. top``, stored from offset ``count(min_a + min_b - 1)``.
        With ``symmetric`` (``a is b``) each unordered pair appears once with
        factor 2 (1 on the diagonal), which halves the work of squaring.
        """
        key = ("pairs", min_a, top_a, min_b, top_b, top, symmetric)
        table = self._tables.get(key)
        if table is not None:
            return table
        off_a, off_b = self.count(min_a - 1), self.count(min_b - 1)
        off_out = self.count(min_a + min_b - 1)
        table = []
        for out_pos in range(off_out, self.count(top)):
            gamma = self.indices[out_pos]
            terms = []
            # every split gamma = alpha + beta; alpha ranges over the sub-indices of gamma
            for alpha in itertools.product(*(range(g + 1) for g in gamma)):
                beta = tuple(g - a for g, a in zip(gamma, alpha))
                deg_a, deg_b = sum(alpha), sum(beta)
                if not (min_a <= deg_a <= top_a and min_b <= deg_b <= top_b):
                    continue
                pa, pb = self.position[alpha], self.position[beta]
                if symmetric and pa > pb:
                    continue
                factor = 2.0 if symmetric and pa != pb else 1.0
                terms.append((pa - off_a, pb - off_b, factor))
            terms.sort(key=lambda t: t[2])  # a factor-1 term first initialises the output
            table.append((out_pos - off_out, terms))
        self._tables[key] = table
        return table

    def product_table(self, min_a: int, top_a: int, min_b: int, top_b: int, top: int, symmetric: bool, device):
        """The pairs of ``product_pairs`` as flat index tensors ``(ia, ib, io, factor)`` for gathers."""
        key = ("flat", min_a, top_a, min_b, top_b, top, symmetric, str(device))
        table = self._tables.get(key)
        if table is None:
            rows = [
                (ia, ib, io, f)
                for io, terms in self.product_pairs(min_a, top_a, min_b, top_b, top, symmetric)
                for ia, ib, f in terms
            ]
            ia, ib, io, factor = (list(col) for col in zip(*rows)) if rows else ([], [], [], [])
            as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
            needs_factor = any(f != 1.0 for f in factor)
            table = (
                as_long(ia),
                as_long(ib),
                as_long(io),
                torch.tensor(factor, device=device) if needs_factor else None,
            )
            self._tables[key] = table
        return table

    def derivative_table(self, order: int, device):
        """For every ordered tuple ``(i1..ik)`` of variables: its position in the set and ``alpha!``."""
        key = ("derivative", order, str(device))
        table = self._tables.get(key)
        if table is None:
            positions, factors = [], []
            for combo in itertools.product(range(self.dim), repeat=order):
                alpha = [0] * self.dim
                for i in combo:
                    alpha[i] += 1
                pos = self.position[tuple(alpha)]
                positions.append(pos)
                factors.append(float(self.factorials[pos]))
            table = (torch.tensor(positions, dtype=torch.long, device=device), torch.tensor(factors, device=device))
            self._tables[key] = table
        return table


class Jet:
    """Taylor coefficients ``coeffs [count(top), B, *shape]`` of one intermediate tensor.

    ``top`` is the highest degree that may be non-zero: the input is linear
    (``top = 1``) and stays so through linear layers, which saves the zeros;
    a ``top = 0`` jet is a batched value with no derivative (a mask, a
    comparison).
    """

    __slots__ = ("coeffs", "index_set", "top")

    def __init__(self, coeffs: torch.Tensor, top: int, index_set: IndexSet):
        self.coeffs = coeffs
        self.top = top
        self.index_set = index_set

    @property
    def shape(self) -> torch.Size:
        return self.coeffs.shape[2:]

    @property
    def ndim(self) -> int:
        return self.coeffs.ndim - 2

    @property
    def value(self) -> torch.Tensor:
        return self.coeffs[0]

    def like(self, coeffs: torch.Tensor, top: int | None = None) -> Jet:
        return Jet(coeffs, self.top if top is None else top, self.index_set)

    def __repr__(self) -> str:
        return f"Jet(top={self.top}, coeffs={tuple(self.coeffs.shape)}, {self.index_set!r})"


def input_jet(x: torch.Tensor, index_set: IndexSet) -> Jet:
    """The jet of the input ``x [B, *in]``: value plus one unit direction per input element."""
    batch, in_shape = x.shape[0], x.shape[1:]
    if index_set.order == 0:
        return Jet(x.unsqueeze(0), 0, index_set)
    # degree-1 coefficients, ordered as in the index set (e_0, e_1, ... by construction)
    eye = torch.zeros(index_set.count(1) - 1, index_set.dim, dtype=x.dtype, device=x.device)
    for i in range(index_set.dim):
        alpha = tuple(1 if k == i else 0 for k in range(index_set.dim))
        eye[index_set.position[alpha] - 1, i] = 1
    units = eye.reshape(-1, 1, *in_shape).expand(-1, batch, *in_shape)
    return Jet(torch.cat([x.unsqueeze(0), units]), 1, index_set)


def align(jet: Jet, ndim: int) -> torch.Tensor:
    """Coefficients viewed as ``[M, B, 1.., *shape]`` with ``ndim`` sample axes, for broadcasting."""
    missing = ndim - jet.ndim
    if missing <= 0:
        return jet.coeffs
    c = jet.coeffs
    return c.reshape(c.shape[:2] + (1,) * missing + c.shape[2:])


def pad(jet: Jet, top: int) -> torch.Tensor:
    """Coefficients up to degree ``top`` (zeros above ``jet.top``)."""
    want = jet.index_set.count(top)
    have = jet.coeffs.shape[0]
    if want <= have:
        return jet.coeffs[:want]
    zeros = jet.coeffs.new_zeros((want - have,) + jet.coeffs.shape[1:])
    return torch.cat([jet.coeffs, zeros])


def add(a: Jet, b: Jet, alpha: float = 1.0) -> Jet:
    """``a + alpha * b`` with broadcasting over the sample shape."""
    ndim = max(a.ndim, b.ndim)
    ca, cb = align(a, ndim), align(b, ndim)
    if a.top == b.top:
        return a.like(ca + cb if alpha == 1 else torch.add(ca, cb, alpha=alpha))
    shape = torch.broadcast_shapes(ca.shape[1:], cb.shape[1:])
    out = ca.new_zeros((max(ca.shape[0], cb.shape[0]),) + shape)
    out[: ca.shape[0]] += ca
    out[: cb.shape[0]].add_(cb, alpha=alpha)
    return Jet(out, max(a.top, b.top), a.index_set)


# Up to this many pairs the product runs as in-place multiply-adds on one coefficient slice at a
# time: the slices stay in cache and nothing big is allocated, which measured ~10x faster on CPU
# than gathering all pairs into one [P, B, ...] temporary. Beyond it the Python loop would dominate.
LOOP_MAX_PAIRS = 4096


def _graded_product(
    a: torch.Tensor,
    min_a: int,
    top_a: int,
    b: torch.Tensor,
    min_b: int,
    top_b: int,
    top: int,
    index_set: IndexSet,
    op=torch.mul,
    symmetric: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Truncated product of graded blocks (see ``IndexSet.product_pairs``).

    With ``out`` the product is *added* into it (same layout as the result).
    """
    pairs = index_set.product_pairs(min_a, top_a, min_b, top_b, top, symmetric)
    n_pairs = sum(len(terms) for _, terms in pairs)
    n_out = index_set.count(top) - index_set.count(min_a + min_b - 1)
    if op is torch.mul and n_pairs <= LOOP_MAX_PAIRS:
        accumulate = out is not None
        if out is None:
            shape = torch.broadcast_shapes(a.shape[1:], b.shape[1:])
            out = torch.empty((n_out,) + shape, dtype=torch.result_type(a, b), device=a.device)
        for position, terms in pairs:
            target = out[position]
            if not terms:
                if not accumulate:
                    target.zero_()
                continue
            start = 0
            if not accumulate:
                ia, ib, factor = terms[0]
                torch.mul(a[ia], b[ib], out=target)
                if factor != 1.0:
                    target.mul_(factor)
                start = 1
            for ia, ib, factor in terms[start:]:
                target.addcmul_(a[ia], b[ib], value=factor)
        return out
    ia, ib, io, factor = index_set.product_table(min_a, top_a, min_b, top_b, top, symmetric, a.device)
    terms = op(a.index_select(0, ia), b.index_select(0, ib))
    if factor is not None:
        terms = terms * factor.to(terms.dtype).reshape((-1,) + (1,) * (terms.ndim - 1))
    if out is None:
        out = terms.new_zeros((n_out,) + terms.shape[1:])
    return out.index_add_(0, io, terms)


def bilinear(a: Jet, b: Jet, op=torch.mul) -> Jet:
    """Truncated product ``op(a, b)`` of two jets for a bilinear ``op`` (mul, matmul, bmm...).

    ``op`` must broadcast over the leading (coefficient) axis.
    """
    index_set = a.index_set
    top = min(index_set.order, a.top + b.top)
    if a.ndim != b.ndim and op is torch.mul:
        ndim = max(a.ndim, b.ndim)
        a, b = a.like(align(a, ndim)), b.like(align(b, ndim))
    if a.top < b.top and op is torch.mul:
        a, b = b, a  # the deeper jet first: its constant-times-all product fills the most rows
    ca, cb = a.coeffs, b.coeffs
    n = index_set.count(top)
    # constant parts times everything: the bulk of the work is two batched ops
    if op is torch.mul:
        first, rest = op(cb[:1], ca), (None if b.top == 0 else (cb[1:], ca[:1]))
    else:
        first, rest = op(ca[:1], cb), (None if a.top == 0 else (ca[1:], cb[:1]))
    if rest is None and first.shape[0] == n:
        return Jet(first, top, index_set)
    out = torch.empty((n,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
    out[: first.shape[0]] = first
    out[first.shape[0] :] = 0
    del first
    if rest is not None:
        left, right = rest
        rows = slice(1, 1 + left.shape[0])
        if op is torch.mul:
            out[rows].addcmul_(left, right)
        else:
            out[rows] += op(left, right)
        if top >= 2 and a.top > 0 and b.top > 0:
            _graded_product(ca[1:], 1, a.top, cb[1:], 1, b.top, top, index_set, op, out=out[index_set.count(1) :])
    return Jet(out, top, index_set)


def square(a: Jet) -> Jet:
    """``a * a`` using the symmetry of the product (half the cross terms)."""
    index_set = a.index_set
    top = min(index_set.order, 2 * a.top)
    c = a.coeffs
    out = torch.empty((index_set.count(top),) + c.shape[1:], dtype=c.dtype, device=c.device)
    torch.mul(c[0], c[0], out=out[0])
    n1 = min(c.shape[0], out.shape[0])
    torch.mul(c[1:n1], 2 * c[0], out=out[1:n1])
    out[n1:] = 0
    if top >= 2 and a.top >= 1:
        _graded_product(
            c[1:], 1, a.top, c[1:], 1, a.top, top, index_set, torch.mul, symmetric=True, out=out[index_set.count(1) :]
        )
    return Jet(out, top, index_set)


def compose(u: Jet, derivatives: list[torch.Tensor]) -> Jet:
    """Jet of ``phi(u)`` from ``derivatives[j] = phi^(j)(u_0)`` (Faa di Bruno).

    ``phi(u) = sum_j phi^(j)(u0) / j! * h^j`` with ``h = u - u0`` the
    non-constant part; ``h^j`` only has degrees ``>= j``, so each power is kept
    as a graded block and the truncated powers cost a few table products.
    """
    index_set = u.index_set
    if u.top == 0:
        return Jet(derivatives[0].unsqueeze(0), 0, index_set)
    top = index_set.order
    c = u.coeffs
    shape = torch.broadcast_shapes(c.shape[1:], derivatives[0].shape)
    out = torch.empty((index_set.count(top),) + shape, dtype=c.dtype, device=c.device)
    out[0] = derivatives[0]
    n_u = c.shape[0]
    torch.mul(c[1:], derivatives[1], out=out[1:n_u])  # the degree-1 power is h itself
    ready = n_u  # rows below this hold a value; rows above are written by the first power reaching them
    h = c[1:]
    powers = {1: h}  # powers[j]: graded block of degrees j..top, stored from offset count(j - 1)
    for j in range(2, min(top, len(derivatives) - 1) + 1):
        half = j // 2
        if j % 2 == 0:
            block = _graded_product(
                powers[half],
                half,
                _ptop(half, u.top, top),
                powers[half],
                half,
                _ptop(half, u.top, top),
                top,
                index_set,
                torch.mul,
                symmetric=True,
            )
        else:
            block = _graded_product(
                powers[j - 1], j - 1, _ptop(j - 1, u.top, top), h, 1, u.top, top, index_set, torch.mul
            )
        powers[j] = block
        start, scale = index_set.count(j - 1), 1.0 / math.factorial(j)
        if ready > start:
            out[start:ready].addcmul_(block[: ready - start], derivatives[j], value=scale)
        if ready < out.shape[0]:
            first_new = max(ready, start)
            torch.mul(block[first_new - start :], derivatives[j], out=out[first_new:]).mul_(scale)
            out[ready:first_new] = 0
            ready = out.shape[0]
    out[ready:] = 0
    return Jet(out, top, index_set)


def _ptop(power: int, u_top: int, top: int) -> int:
    return min(top, power * u_top)


# Up to this many derivative entries per output the tensor is filled one entry at a time,
# straight into its final (strided) place; beyond it, one gather and one copy.
DIRECT_WRITE_ENTRIES = 64


def to_derivative(jet: Jet, order: int, in_shape: tuple[int, ...], out: torch.Tensor | None = None) -> torch.Tensor:
    """The ``order``-th derivative tensor ``[B, *shape, *in * order]`` from the coefficients.

    ``D^k f[i1..ik] = alpha! * f_alpha`` where ``alpha`` counts the indices.
    With ``out`` the tensor is written there.
    """
    c = jet.coeffs
    batch, shape = c.shape[1], tuple(c.shape[2:])
    full_shape = (batch, *shape) + tuple(in_shape) * order
    if out is None:
        out = c.new_empty(full_shape)
    if order == 0:
        return out.copy_(c[0].expand(full_shape))
    if jet.top < order:
        return out.zero_()
    positions, factors = jet.index_set.derivative_table(order, c.device)
    entries = positions.shape[0]
    flat = out.view((batch, *shape, entries))
    if entries <= DIRECT_WRITE_ENTRIES:
        for entry, (position, factor) in enumerate(zip(positions.tolist(), factors.tolist())):
            if factor == 1.0:
                flat[..., entry].copy_(c[position])
            else:
                torch.mul(c[position], factor, out=flat[..., entry])
        return out
    gathered = c.index_select(0, positions)
    gathered.mul_(factors.to(c.dtype).reshape((-1,) + (1,) * (c.ndim - 1)))
    flat.copy_(gathered.movedim(0, -1))
    return out


def to_bilaplacian(jet: Jet) -> torch.Tensor:
    """``sum_i f_iiii + 2 sum_{i<j} f_iijj`` = ``sum_i 24 u_{4 e_i} + 8 sum_{i<j} u_{2 e_i + 2 e_j}`` -> ``[B, *shape]``.

    Needs an index set with those indices (:meth:`IndexSet.biharmonic` or ``full`` at order 4).
    """
    c = jet.coeffs
    if jet.top < 4:
        return c.new_zeros(c.shape[1:])
    index_set = jet.index_set
    dim = index_set.dim

    def unit(*pairs):
        alpha = [0] * dim
        for i, a in pairs:
            alpha[i] = a
        return index_set.position[tuple(alpha)]

    pure = torch.tensor([unit((i, 4)) for i in range(dim)], dtype=torch.long, device=c.device)
    total = 24 * c.index_select(0, pure).sum(0)
    if dim > 1:
        mixed = [unit((i, 2), (j, 2)) for i, j in itertools.combinations(range(dim), 2)]
        total = total + 8 * c.index_select(0, torch.tensor(mixed, dtype=torch.long, device=c.device)).sum(0)
    return total


def to_laplacian(jet: Jet) -> torch.Tensor:
    """Sum of the pure second derivatives ``sum_i 2 * u_{2 e_i}`` -> ``[B, *shape]``."""
    c = jet.coeffs
    if jet.top < 2:
        return c.new_zeros(c.shape[1:])
    index_set = jet.index_set
    positions = [
        index_set.position[tuple(2 if k == i else 0 for k in range(index_set.dim))] for i in range(index_set.dim)
    ]
    index = torch.tensor(positions, dtype=torch.long, device=c.device)
    return 2 * c.index_select(0, index).sum(0)
