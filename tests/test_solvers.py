"""The solver interface: registry, import paths, user functions, parameters, chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.solvers import Solver, available_solvers, get_solver, prepare_params, register_solver, solve
from pipeline.solvers.examples import DAMPED_OSCILLATOR, damped_oscillator

F64 = torch.float64
EXAMPLE_PATH = "pipeline.solvers.examples:damped_oscillator"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def loop_over_cases(fn, params: dict[str, torch.Tensor], **options) -> dict[str, torch.Tensor]:
    """Brute-force reference: call the per-case function once per case and stack."""
    n = next(iter(params.values())).shape[0]
    results = [fn({k: v[i] for k, v in params.items()}, **options) for i in range(n)]
    return {k: torch.stack([r[k] for r in results]) for k in results[0]}


def test_builtins_are_available():
    names = available_solvers()
    assert "rte1d" in names and "heat1d" in names
    for name in ("rte1d", "heat1d"):
        solver = get_solver(name)
        assert solver.name == name and solver.batched and solver.description


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 100])
@pytest.mark.parametrize("solver", [EXAMPLE_PATH, damped_oscillator, "pipeline.solvers.examples:DAMPED_OSCILLATOR"])
def test_user_solver_is_vmapped_over_cases(solver, chunk_size):
    params = {"omega": torch.linspace(0.5, 3.0, 7, dtype=F64), "gamma": torch.linspace(0.0, 1.0, 7, dtype=F64)}
    out = solve(solver, params, chunk_size=chunk_size, n_times=5)
    expected = loop_over_cases(damped_oscillator, params, n_times=5)
    assert out.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=1e-14, atol=1e-14)
    assert out["position"].shape == (7, 5)


def test_plain_function_outputs_are_discovered_from_one_case():
    solver = get_solver(EXAMPLE_PATH)
    assert not solver.batched
    assert dict(solver.default_options) == {"n_times": 20, "t_end": 1.0}
    assert solver.parameters() == {}
    assert solver.coords() == {}
    outputs = solver.outputs({"n_times": 6}, example={"omega": 2.0})
    assert outputs == {"position": (("position_dim0",), (6,)), "final_energy": ((), ())}
    with pytest.raises(ValueError, match="pass example="):
        solver.outputs({})


def test_declared_user_solver_answers_without_running():
    assert DAMPED_OSCILLATOR.outputs({"n_times": 4}) == {"position": (("time",), (4,)), "final_energy": ((), ())}
    np.testing.assert_allclose(DAMPED_OSCILLATOR.coords({"n_times": 4})["time"], [0.25, 0.5, 0.75, 1.0])
    # declared defaults are filled in: gamma defaults to 0
    out = solve(DAMPED_OSCILLATOR, {"omega": torch.tensor([1.0, 2.0], dtype=F64)}, n_times=4)
    t = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=F64)
    torch.testing.assert_close(out["position"], torch.cos(torch.tensor([[1.0], [2.0]], dtype=F64) * t))


def test_callable_with_options_and_broadcast_scalars():
    def affine(params, slope=1.0):
        return {"y": slope * params["x"] + params["b"]}

    out = solve(affine, {"x": torch.arange(4.0), "b": 10.0}, slope=2.0)
    torch.testing.assert_close(out["y"], torch.tensor([10.0, 12.0, 14.0, 16.0]))
    with pytest.raises(ValueError, match=r"unknown option 'slop'.*known options are: slope"):
        solve(affine, {"x": torch.arange(4.0), "b": 1.0}, slop=2.0)


def test_numpy_and_lists_are_accepted_and_dtype_follows_inputs():
    out = solve("heat1d", {"diffusivity": np.array([0.1, 0.2]), "amplitude": [1.0, 2.0]}, nx=16)
    assert out["u"].dtype == torch.float64  # numpy float64 promotes
    out32 = solve("heat1d", {"diffusivity": torch.tensor([0.1, 0.2])}, nx=16)
    assert out32["u"].dtype == torch.float32
    out_forced = solve("heat1d", {"diffusivity": torch.tensor([0.1, 0.2])}, nx=16, dtype=F64)
    assert out_forced["u"].dtype == F64


@pytest.mark.parametrize("value", [0.1, [0.1, 0.1]])
def test_python_numbers_keep_their_float64_value_in_a_float64_solve(value):
    # they went through torch.as_tensor's float32 first: a float64 solve ran on D = 0.10000000149
    exact = solve("heat1d", {"diffusivity": torch.tensor([0.1, 0.1], dtype=F64)}, nx=16)["u"]
    got = solve("heat1d", {"diffusivity": value, "amplitude": np.ones(2)}, nx=16)["u"]
    assert got.dtype == F64
    torch.testing.assert_close(got, exact, rtol=0, atol=0)
    assert solve("heat1d", {"diffusivity": value}, nx=16)["u"].dtype == torch.float32  # still the default dtype


def test_a_dtype_that_is_not_a_floating_torch_dtype_is_named():
    # dtype="float32" failed inside with "'str' object has no attribute 'is_floating_point'"
    for dtype in ("float32", torch.int64, np.float64):
        with pytest.raises(ValueError, match=r"heat1d: dtype must be a floating dtype such as torch\.float64"):
            solve("heat1d", {"diffusivity": [0.1]}, nx=16, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_a_value_error_naming_device():
    # was torch's AssertionError "Torch not compiled with CUDA enabled" from inside prepare_params
    with pytest.raises(ValueError, match=r"heat1d: device='cuda' but CUDA is not available here; pass device='cpu'"):
        solve("heat1d", {"diffusivity": [0.1]}, nx=16, device="cuda")


def test_no_parameters_means_one_default_case():
    out = solve("heat1d", {}, nx=16)
    assert out["u"].shape == (1, 10, 16)


@pytest.mark.parametrize(
    "solver,words",
    [
        ("nope", ["unknown solver 'nope'", "rte1d", "package.module:function"]),
        ("no_such_module_xyz:f", ["cannot import module 'no_such_module_xyz'"]),
        ("pipeline.solvers.examples:missing", ["has no attribute 'missing'", "damped_oscillator"]),
        ("pipeline.solvers.examples:np", ["not a function or Solver"]),
        (42, ["must be a name"]),
    ],
)
def test_get_solver_errors(solver, words):
    with pytest.raises(ValueError) as err:
        get_solver(solver)
    for word in words:
        assert word in str(err.value)


def test_from_function_signature_errors():
    with pytest.raises(ValueError, match="exactly one positional argument"):
        Solver.from_function(lambda a, b: {})
    with pytest.raises(ValueError, match="option 'k' has no default"):

        def needs_k(params, *, k):
            return {}

        Solver.from_function(needs_k)


def test_solver_results_are_checked():
    with pytest.raises(ValueError, match="must return a dict"):
        solve(Solver("bad", lambda params: [1, 2]), {"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="case axis first"):
        solve(Solver("bad", lambda params: {"y": torch.zeros(3)}), {"a": torch.zeros(2)})


def test_register_solver():
    solver = Solver.from_function(damped_oscillator, name="test_oscillator")
    register_solver(solver, replace=True)
    assert get_solver("test_oscillator") is solver
    assert "test_oscillator" in available_solvers()
    with pytest.raises(ValueError, match="exists already"):
        register_solver(solver)
    with pytest.raises(ValueError, match="reserved by solve"):
        Solver("x", lambda p: {}, default_options={"chunk_size": 1})


def test_prepare_params_broadcasts_and_fills_defaults():
    infos = get_solver("rte1d").parameters({"nx": 8})
    batch, n = prepare_params("rte1d", {"T0": torch.ones(8), "sigma_mean": [1.0, 2.0, 3.0]}, infos)
    assert n == 3
    assert batch["T0"].shape == (3, 8)
    assert "T0_mean" not in batch  # excluded by the T0 profile
    assert batch["sigma_amplitude"].tolist() == pytest.approx([0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        solve("heat1d", {}, chunk_size=0)


@pytest.mark.parametrize("track", [False, True])
def test_an_unsolvable_case_in_a_later_chunk_is_named_by_its_index_in_params(track):
    # with chunk_size, the stiff case 3 was reported as "case 1" (its index in the second chunk of 2)
    from pipeline.solvers import UnsolvableCase

    sigma_mean = torch.tensor([1.0, 1.0, 1.0, 100.0], dtype=torch.float64, requires_grad=track)
    with pytest.raises(UnsolvableCase, match=r"the stiffest, case 3, has stability factor") as caught:
        solve("rte1d", {"sigma_mean": sigma_mean}, chunk_size=2, nx=32, t_end=0.3)
    assert caught.value.case == 3
