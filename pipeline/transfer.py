"""Device-to-host copies that overlap the next block's compute.

``to_host(tensors)`` returns a ``HostArrays``: a read-only mapping of numpy
arrays whose copies may still be in flight. On a CUDA device each tensor is
copied into a pinned host buffer (torch's caching host allocator reuses them)
on a side stream, after the compute stream's work so far, and an event marks
the end; the first access to any array waits on that event. The worker's main
thread hands the mapping to ``writer.BlockWriter`` and launches the next
block's kernels at once: the writer thread is the one that waits, so the copy
of block ``i`` runs while block ``i + 1`` computes. On the CPU the tensors
are the arrays (no copy) and waiting does nothing: the same code path, so the
CPU tests exercise it.

Example:
    >>> arrays = to_host({"value": torch.ones(2, 3)}, extra={"inputs": np.zeros((2, 1))})
    >>> sorted(arrays), arrays["value"].shape, arrays.ready
    (['inputs', 'value'], (2, 3), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_STREAMS: dict[Any, Any] = {}


def side_stream(device: torch.device):
    """One copy stream per CUDA device, per process."""
    key = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(device=key)
    return _STREAMS[key]


class HostArrays(Mapping):
    """numpy arrays of a block, available once their device-to-host copies are done."""

    def __init__(self, buffers: dict[str, Any], event=None, extra: dict[str, np.ndarray] | None = None):
        self._buffers = buffers
        self._event = event
        self._extra = dict(extra or {})
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def wait(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if self._event is not None:
                self._event.synchronize()
            self._arrays = {**{k: v.numpy() for k, v in self._buffers.items()}, **self._extra}
            self._buffers = {}
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self.wait()[name]

    def __iter__(self):
        return iter(self.wait())

    def __len__(self) -> int:
        return len(self.wait())


def to_host(tensors: dict[str, torch.Tensor], extra: dict[str, np.ndarray] | None = None) -> HostArrays:
    """Start copying ``tensors`` to the host (CUDA: pinned buffers, side stream); return them as a mapping."""
    devices = {t.device for t in tensors.values()}
    if not tensors or devices == {torch.device("cpu")} or not torch.cuda.is_available():
        return HostArrays({k: t.detach().cpu() for k, t in tensors.items()}, None, extra)
    device = next(iter(devices))
    stream = side_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # the copy starts after the compute that made them
    buffers = {}
    with torch.cuda.stream(stream):
        for name, tensor in tensors.items():
            tensor = tensor.detach()
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            buffer.copy_(tensor, non_blocking=True)
            tensor.record_stream(stream)  # its memory is not reused by the next block before the copy is done
            buffers[name] = buffer
        event = torch.cuda.Event()
        event.record(stream)
    return HostArrays(buffers, event, extra)
