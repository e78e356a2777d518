"""Optional ``torch.compile`` of the Taylor pass (``compute_derivatives(..., compile=True)``).

The interpreter is traced once more with ``make_fx`` on a concrete chunk, which
flattens every jet operation into one aten graph, and inductor compiles that
graph. One compiled graph per chunk shape; a short last chunk is padded to the
full chunk so it reuses the same graph. Measured on the 2-core CPU: W2 took
161 s to compile and ran 6.6x slower than eager, so eager stays the default;
on a GPU, where fusing the many small coefficient ops should pay, it is the
option to try.

Example:
    >>> compute = CompiledTaylor(traced, ("hessian",))  # doctest: +SKIP
    >>> compute(x_chunk)["hessian"]                      # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from .taylor import taylor_chunk
from .trace import TracedFunction


class CompiledTaylor:
    """``compute(chunk, out=None)`` running a compiled Taylor pass, cached on the trace."""

    def __init__(self, traced: TracedFunction, quantities: tuple[str, ...]):
        self.traced = traced
        self.quantities = quantities

    def _graph(self, chunk: torch.Tensor):
        cache = self.traced.compiled
        key = (self.quantities, tuple(chunk.shape), chunk.dtype, str(chunk.device))
        graph = cache.get(key)
        if graph is None:
            with torch.no_grad():
                taylor_chunk(self.traced, chunk, self.quantities)  # build the index tables outside the trace
                flat = make_fx(lambda xc: taylor_chunk(self.traced, xc, self.quantities))(chunk)
            graph = torch.compile(flat, dynamic=False)
            cache[key] = graph
        return graph

    def __call__(self, chunk: torch.Tensor, out: dict | None = None) -> dict:
        n = chunk.shape[0]
        sizes = [
            key[1][0]
            for key in self.traced.compiled
            if key[0] == self.quantities and key[1][1:] == tuple(chunk.shape[1:])
        ]
        padded = chunk
        bigger = [s for s in sizes if s > n]
        if bigger:  # reuse a compiled graph: pad with copies of the last sample, drop them after
            size = min(bigger)
            padded = torch.cat([chunk, chunk[-1:].expand((size - n,) + tuple(chunk.shape[1:]))])
        with torch.no_grad():
            results = self._graph(padded)(padded)
        results = {name: value[:n] for name, value in results.items()}
        if out is None:
            return results
        for name, value in results.items():
            out[name].copy_(value)
        return out
