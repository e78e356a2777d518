"""Device-to-host copies (``pipeline.transfer``): the same code path on the CPU as on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.transfer import HostArrays, to_host
from pipeline.writer import BlockWriter


def test_cpu_arrays_are_the_tensors_without_a_copy():
    x = torch.arange(12.0).reshape(3, 4)
    arrays = to_host({"value": x}, extra={"s": np.ones(3)})
    assert isinstance(arrays, HostArrays) and arrays.ready
    assert set(arrays) == {"value", "s"} and len(arrays) == 2
    assert np.shares_memory(arrays["value"], x.numpy())
    np.testing.assert_array_equal(arrays["value"], x.numpy())


def test_the_writer_waits_for_the_copy_in_its_own_thread(tmp_path):
    import zarr

    from pipeline.store import MARKERS

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", attributes={"n": 8})
    group.create_array("value", shape=(8, 2), chunks=(4, 2), dtype="float32", fill_value=np.nan)
    (tmp_path / "s.zarr" / MARKERS).mkdir()
    x = torch.randn(8, 2)
    with BlockWriter(tmp_path / "s.zarr") as writer:
        writer.submit(0, 4, to_host({"value": x[:4]}))
        writer.submit(4, 8, {"value": x[4:].numpy()})  # plain dicts still work
    np.testing.assert_array_equal(group["value"][...], x.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copies_land_in_pinned_buffers_on_a_side_stream():
    x = torch.randn(1024, 256, device="cuda")
    y = x * 2  # queued on the compute stream; the copy must wait for it
    arrays = to_host({"y": y})
    z = x @ x.T  # the next block's compute, launched before anyone waits  # noqa: F841
    out = arrays["y"]
    assert arrays._event is not None
    np.testing.assert_array_equal(out, (x * 2).cpu().numpy())
