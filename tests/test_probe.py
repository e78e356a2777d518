"""The function probe runs on the first input samples, not on zeros: a function defined only on its inputs is valid."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from pipeline import open_results
from pipeline.cli import main


def spd_matrices(n: int) -> np.ndarray:
    """``n`` symmetric positive-definite 2x2 matrices (eigenvalues >= 1); the zero matrix is not one of them."""
    a = np.random.default_rng(0).normal(size=(n, 2, 2))
    return a @ a.transpose(0, 2, 1) + np.eye(2)


def test_cholesky_of_spd_inputs_validates_and_submits(tmp_path):
    mats = spd_matrices(6)
    np.save(tmp_path / "mats.npy", mats)
    store = tmp_path / "chol.zarr"
    job = tmp_path / "chol.yaml"
    job.write_text(
        "schema_version: 1\nname: chol\n"
        "function: {kind: import, target: 'torch.linalg:cholesky'}\n"
        f"inputs: {{kind: npy, path: '{tmp_path / 'mats.npy'}'}}\n"
        "quantities: [value, jacobian]\nderivatives: {dtype: float64}\n"
        f"store: {{path: '{store}', chunk_size: 2}}\nexecution: {{shard_size: 4}}\n"
    )
    validated = CliRunner().invoke(main, ["validate", str(job)], catch_exceptions=False)
    assert validated.exit_code == 0, validated.output
    assert "6 samples of shape [2, 2] -> output [2, 2]" in validated.output
    submitted = CliRunner().invoke(main, ["submit", str(job), "--executor", "inline", "-q"], catch_exceptions=False)
    assert submitted.exit_code == 0, submitted.output

    ds = open_results(store, require_complete=True)
    x = torch.as_tensor(mats, dtype=torch.float64)
    value = torch.stack([torch.linalg.cholesky(m) for m in x])  # a plain loop, no vmap, no engine
    jacobian = torch.stack([torch.autograd.functional.jacobian(torch.linalg.cholesky, m) for m in x])
    np.testing.assert_allclose(np.asarray(ds.value).reshape(6, 2, 2), value.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ds.jacobian).reshape(6, 2, 2, 2, 2), jacobian.numpy(), rtol=1e-10, atol=1e-12)
