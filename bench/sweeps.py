"""Benchmark: seed 004's vmap(solve) vs a Python loop vs ``pipeline.solvers.solve("rte1d")``.

Measured side by side in one run, in cases per second, at several case counts;
checks that ours matches the seed (max relative error over E and T, in the
dtype of the run) and prints a Markdown table of ratios for BENCHMARKS.md.

The seed's cases ``c = 1, 2, ..., n`` (``T0 = (1 + 0.1 sin(2 pi x + sin c)) (1 + sin c)``,
``sigma = (1 + 0.1 sin(2 pi x + sin(c + 1))) (1 + sin c)``), nx=400, 8 angles,
t_end=1 (499 steps, 50 saves).

Usage:
    python bench/sweeps.py                      # 4, 64, 1024 cases on CPU, float32
    python bench/sweeps.py --threads 1          # one thread (a shared machine: stable numbers)
    python bench/sweeps.py --device cuda --full # adds 8192 cases (default on a GPU)
                                                # (on a 2-core CPU the seed's vmap needs ~14 min there)
    python bench/sweeps.py --cases 4,64 --dtype float64
    python bench/sweeps.py --sensitivities --threads 1   # plain solve vs solve + 3 sensitivities, 64 and 1024 cases
                                                # (and 8192 on a GPU)
    python bench/sweeps.py --quick [--sensitivities]     # smoke test: 4 and 16 cases, one run each

Each approach is timed on its own: one that fails or runs out of memory is a
cell saying so, never a crash; the per-count summary lines (``# n cases: ...``)
are printed as each count finishes, so a run that is killed keeps them.

Sensitivities section (``--sensitivities``): the sweep job's per-case
``d(mean final T)/dp`` for p = T0_mean, sigma_mean, T0_phase, timed as a plain
solve plus three ``torch.func.jvp`` through ``solve`` on the out-of-place step
(the path before the hand-written tangents; ``--no-old`` skips it), the same
through the hand-written tangents (``_ForwardSensitivities``), and one
``rte1d_jvp`` pass with the three directions at once (which also returns the outputs).

Hook for the store: ``time_ours(..., write=fn)`` times ``fn(outputs)`` separately
(e.g. a region write to Zarr); the table shows its share of the time in the
``write frac`` column (``-`` while no writer is given).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reference_rte1d import reference_solve, reference_solve_batch, seed_cases, seed_grid  # noqa: E402
from timing import best_time, synchronize  # noqa: E402  (bench/timing.py)

import pipeline.solvers.rte1d as rte1d  # noqa: E402
from pipeline.engine.chunking import is_out_of_memory  # noqa: E402
from pipeline.solvers import solve  # noqa: E402


@dataclass
class Timing:
    """Best wall time of one approach on ``n_cases`` cases (seconds), and the optional write time."""

    seconds: float
    n_cases: int
    write_seconds: float | None = None

    @property
    def cases_per_second(self) -> float:
        return self.n_cases / self.seconds

    @property
    def write_fraction(self) -> float | None:
        if self.write_seconds is None:
            return None
        return self.write_seconds / (self.seconds + self.write_seconds)


def seed_inputs(n_cases: int, dtype: torch.dtype, device: torch.device):
    x = seed_grid(400, dtype=dtype)
    T0, sigma = seed_cases(x, cases=tuple(range(1, n_cases + 1)))
    return T0.to(device), sigma.to(device)


def time_seed_vmap(T0, sigma, repeats: int) -> tuple[Timing, tuple]:
    seconds, result = best_time(lambda: reference_solve_batch(T0, sigma), T0.device, repeats)
    return Timing(seconds, T0.shape[0]), result


def time_seed_loop(T0, sigma, repeats: int) -> Timing:
    def run():
        return [reference_solve(T0[i], sigma[i]) for i in range(T0.shape[0])]

    seconds, _ = best_time(run, T0.device, repeats)
    return Timing(seconds, T0.shape[0])


def time_ours(
    T0, sigma, repeats: int, *, write: Callable[[dict[str, torch.Tensor]], None] | None = None, **options
) -> tuple[Timing, dict[str, torch.Tensor]]:
    """Time ``solve("rte1d")``; with ``write``, also time ``write(outputs)`` after each solve."""
    seconds, outputs = best_time(lambda: solve("rte1d", {"T0": T0, "sigma": sigma}, **options), T0.device, repeats)
    write_seconds = None
    if write is not None:
        write_seconds, _ = best_time(lambda: write(outputs), T0.device, repeats)
    return Timing(seconds, T0.shape[0], write_seconds), outputs


def store_writer(outputs: dict[str, torch.Tensor], folder: str) -> Callable[[dict[str, torch.Tensor]], None]:
    """A ``write`` hook for ``time_ours``: the outputs into a sweep store as a task writes them.

    Creates a store with the sweep layout (chunks of 64 cases, lz4) once; each
    call copies the outputs to host memory and writes their region.
    """
    from pipeline.plan import plan_sweep_job
    from pipeline.store import create_store, write_region

    n = next(iter(outputs.values())).shape[0]
    layout = {k: (("time", "x"), tuple(v.shape[1:])) for k, v in outputs.items()}
    plan = plan_sweep_job(n, layout, {}, (), (), 64, 64 * max(1, -(-n // 64)), str(outputs["T"].dtype).split(".")[-1])
    path = f"{folder}/bench.zarr"
    create_store(path, plan, {"spec_hash": "bench"}, overwrite=True)

    def write(values: dict[str, torch.Tensor]) -> None:
        write_region(path, {k: v.detach().cpu().numpy() for k, v in values.items()}, 0, n)

    return write


def max_relative_error(ours: dict[str, torch.Tensor], seed: tuple[torch.Tensor, torch.Tensor]) -> float:
    E, T = seed
    return max(float(((ours["E"] - E).abs() / E.abs()).max()), float(((ours["T"] - T).abs() / T.abs()).max()))


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    what = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        what += f", {os.cpu_count()} cores"
    return f"{what}; torch {torch.__version__}; {torch.get_num_threads()} torch thread(s)"


SENSITIVITY_PARAMETERS = ("T0_mean", "sigma_mean", "T0_phase")


def seed_scalar_params(n_cases: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The seed's cases ``c = 1..n`` as rte1d's scalar parameters (what a sweep job differentiates)."""
    c = torch.arange(1, n_cases + 1, dtype=dtype, device=device)
    return {"T0_mean": 1 + c.sin(), "T0_phase": c.sin(), "sigma_mean": 1 + c.sin(), "sigma_phase": (c + 1).sin()}


def final_mean_T(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return outputs["T"][:, -1].mean(-1)


def solve_and_jvps(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sweep job's way (``kinds/sweep.py``): a plain solve, then one ``torch.func.jvp`` per parameter."""
    solve("rte1d", params)
    tangents = []
    for p in SENSITIVITY_PARAMETERS:

        def along(value, p=p):
            return final_mean_T(solve("rte1d", {**params, p: value}))

        tangents.append(torch.func.jvp(along, (params[p],), (torch.ones_like(params[p]),))[1])
    return torch.stack(tangents)


def solve_out_of_place_jvps(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``solve_and_jvps`` with the hand-written tangents switched off: the out-of-place step under jvp."""
    fast = rte1d._forward_mode_only
    rte1d._forward_mode_only = lambda *tensors: False
    try:
        return solve_and_jvps(params)
    finally:
        rte1d._forward_mode_only = fast


def multi_direction_jvp(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """One ``rte1d_jvp`` pass: outputs and the three directions at once."""
    n = next(iter(params.values())).shape[0]
    eye = torch.eye(len(SENSITIVITY_PARAMETERS), dtype=params["T0_mean"].dtype, device=params["T0_mean"].device)
    tangents = {p: eye[:, j, None].expand(-1, n) for j, p in enumerate(SENSITIVITY_PARAMETERS)}
    outputs, d = rte1d.rte1d_jvp(params, tangents, tangent_outputs=("T",))
    final_mean_T(outputs)
    return d["T"][:, :, -1].mean(-1)


def attempt(what: str, run: Callable[[], object], device: torch.device):
    """``(run(), None)``, or ``(None, why)`` when it fails or runs out of memory (printed at once)."""
    try:
        return run(), None
    except Exception as error:  # one approach failing is a cell of the table, not a crash
        why = (
            "out of memory"
            if is_out_of_memory(error)
            else (f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:60]}")
        )
        print(f"# {what}: {why}", flush=True)
        return None, why
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def sensitivities_benchmark(
    counts: list[int], dtype: torch.dtype, device: torch.device, repeats: int, old: bool
) -> None:
    print(f"# rte1d sensitivities benchmark, {datetime.date.today()}, {device} {str(dtype).replace('torch.', '')}")
    print(f"# machine: {machine_description(device)}")
    print("# seed 004 problem (nx=400, 8 angles, t_end=1), cases c = 1..n as scalar parameters;")
    print(f"# d(mean final T)/dp for p in {', '.join(SENSITIVITY_PARAMETERS)} (tangent 1 in every case)", flush=True)
    warm = seed_scalar_params(2, dtype, device)  # first calls of torch.func / functorch set up lazily
    began = time.perf_counter()
    attempt("warm-up", lambda: (solve_and_jvps(warm), multi_direction_jvp(warm), synchronize(device)), device)
    print(f"# warm-up (2 cases, torch.compile of the step on a GPU): {time.perf_counter() - began:.1f} s", flush=True)
    rows = []
    for n in counts:
        params = seed_scalar_params(n, dtype, device)
        cells = {}
        for name, run, times in (
            ("plain", lambda params=params: solve("rte1d", params), repeats),
            ("via_solve", lambda params=params: solve_and_jvps(params), repeats),
            ("multi", lambda params=params: multi_direction_jvp(params), repeats),
            ("old", lambda params=params: solve_out_of_place_jvps(params), 1),
        ):
            if name == "old" and not old:
                cells[name] = (None, None, "-")
                continue
            timed, why = attempt(
                f"{n} cases, {name}", lambda run=run, times=times: best_time(run, device, times), device
            )
            cells[name] = (None, None, why) if timed is None else (timed[0], timed[1], None)
        new = cells["via_solve"][1]
        scale = None if new is None else float(new.abs().max())

        def diff(name, cells=cells, new=new, scale=scale):
            other = cells[name][1]
            return None if other is None or scale is None else float((other - new).abs().max()) / scale

        rows.append((n, cells, diff("old"), diff("multi")))

        def seconds(name, cells=cells):
            value, _, why = cells[name]
            return why if value is None else f"{value:.3f} s"

        print(
            f"# {n} cases: plain {seconds('plain')}, solve + 3 jvp out-of-place {seconds('old')}, "
            f"solve + 3 jvp (tangents) {seconds('via_solve')}, rte1d_jvp k=3 {seconds('multi')}",
            flush=True,
        )
        for name in cells:
            cells[name] = cells[name][0], None, cells[name][2]  # drop the results: memory for the next count

    def cell(name: str, cells: dict, n: int) -> str:
        value, _, why = cells[name]
        plain = cells["plain"][0]
        if value is None:
            return why or "-"
        return f"{n / value:.1f}" + ("" if plain is None else f" ({value / plain:.1f}x)")

    def plain_rate(cells: dict, n: int) -> str:
        value, _, why = cells["plain"]
        return why or "-" if value is None else f"{n / value:.1f}"

    print()
    print("cases/s, and in brackets the time as a multiple of the plain solve's")
    print()
    print(
        "| cases | plain solve | solve + 3 jvp, out-of-place (before) | solve + 3 jvp, tangents | "
        "rte1d_jvp, 3 directions | speedup vs before | max rel diff (before / rte1d_jvp vs jvp) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, cells, diff_old, diff_multi in rows:
        out_of_place, via_solve, multi = cells["old"][0], cells["via_solve"][0], cells["multi"][0]
        speedup = (
            "-"
            if None in (out_of_place, via_solve, multi)
            else (f"{out_of_place / via_solve:.0f}x / {out_of_place / multi:.0f}x")
        )
        diffs = (
            ("-" if diff_old is None else f"{diff_old:.1e}")
            + " / "
            + ("-" if diff_multi is None else f"{diff_multi:.1e}")
        )
        print(
            f"| {n} | {plain_rate(cells, n)} | {cell('old', cells, n)} | {cell('via_solve', cells, n)} | "
            f"{cell('multi', cells, n)} | {speedup} | {diffs} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cases", default=None, help="comma-separated case counts (default 4,64,1024; +8192 with --full or on GPU)"
    )
    parser.add_argument("--full", action="store_true", help="add 8192 cases")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 and 16 cases, one run each, 2 loop cases")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="the seed ran in float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="best of this many runs (default 3, 1 quick; 1 run above 1024 cases)"
    )
    parser.add_argument(
        "--loop-cases", type=int, default=None, help="the Python loop runs at most this many cases (default 8, 2 quick)"
    )
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"], help="rte1d's compile option")
    parser.add_argument(
        "--sensitivities",
        action="store_true",
        help="time plain solve vs solve + 3 parameter sensitivities instead (default 64,1024 cases; +8192 on GPU)",
    )
    parser.add_argument(
        "--no-old",
        action="store_true",
        help="with --sensitivities: skip the out-of-place jvp path (minutes at 1024 cases)",
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    loop_cases = args.loop_cases if args.loop_cases is not None else (2 if args.quick else 8)
    if args.cases:
        counts = [int(c) for c in args.cases.split(",")]
    elif args.quick:
        counts = [4, 16]
    elif args.sensitivities:
        counts = [64, 1024] + ([8192] if device.type == "cuda" else [])
    else:
        counts = [4, 64, 1024] + ([8192] if args.full or device.type == "cuda" else [])
    if args.sensitivities:
        sensitivities_benchmark(counts, dtype, device, repeats, old=not args.no_old)
        return
    compile_option = {"auto": "auto", "true": True, "false": False}[args.compile]

    print(f"# rte1d sweep benchmark, {datetime.date.today()}, {device} {args.dtype}")
    print(f"# machine: {machine_description(device)}")
    print("# seed 004 problem: nx=400, 8 angles, t_end=1 (499 steps, 50 saves)", flush=True)
    rows = []
    for n in counts:
        count_repeats = repeats if n <= 1024 else 1
        T0, sigma = seed_inputs(n, dtype, device)
        began = time.perf_counter()

        def warm_up(T0=T0, sigma=sigma):
            if device.type == "cuda" or compile_option is True:  # compile and warm up before timing
                solve("rte1d", {"T0": T0, "sigma": sigma}, compile=compile_option)
            result = solve("rte1d", {"T0": T0, "sigma": sigma}, compile=compile_option)
            synchronize(device)
            return result

        outputs, ours_why = attempt(f"{n} cases, ours (warm-up)", warm_up, device)
        warm_seconds = time.perf_counter() - began
        ours = None
        if outputs is not None:
            with tempfile.TemporaryDirectory() as folder:
                writer = store_writer(outputs, folder)
                timed, ours_why = attempt(
                    f"{n} cases, ours",
                    lambda T0=T0, sigma=sigma, count_repeats=count_repeats, writer=writer: time_ours(
                        T0, sigma, count_repeats, write=writer, compile=compile_option
                    ),
                    device,
                )
            ours, outputs = (None, None) if timed is None else timed
        seed, vmap_why = attempt(
            f"{n} cases, seed vmap",
            lambda T0=T0, sigma=sigma, count_repeats=count_repeats: time_seed_vmap(T0, sigma, count_repeats),
            device,
        )
        vmap, seed_result = (None, None) if seed is None else seed
        error = None if outputs is None or seed_result is None else max_relative_error(outputs, seed_result)
        outputs = seed_result = seed = None
        k = min(n, loop_cases)
        loop, loop_why = attempt(
            f"{n} cases, loop", lambda T0=T0, sigma=sigma, k=k: time_seed_loop(T0[:k], sigma[:k], 1), device
        )
        rows.append((n, vmap or vmap_why, loop or loop_why, ours or ours_why, error, k))

        def seconds(timing, why):
            return why if timing is None else f"{timing.seconds:.3f} s"

        print(
            f"# {n} cases: ours {seconds(ours, ours_why)} (warm-up {warm_seconds:.1f} s), seed vmap "
            f"{seconds(vmap, vmap_why)}, loop {seconds(loop, loop_why)} for {k} cases",
            flush=True,
        )

    def rate(timing) -> str:
        return timing if isinstance(timing, str) else f"{timing.cases_per_second:.1f}"

    def ratio(a, b) -> str:
        return "-" if isinstance(a, str) or isinstance(b, str) else f"{a.cases_per_second / b.cases_per_second:.1f}x"

    print()
    print(
        "| cases | seed vmap (cases/s) | Python loop (cases/s) | ours (cases/s) | ours / vmap | ours / loop | max rel err | write frac |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, vmap, loop, ours, error, k in rows:
        frac = "-" if isinstance(ours, str) or ours.write_fraction is None else f"{ours.write_fraction:.2f}"
        loop_note = "" if k == n or isinstance(loop, str) else f" ({k} cases)"
        print(
            f"| {n} | {rate(vmap)} | {rate(loop)}{loop_note} | {rate(ours)} | {ratio(ours, vmap)} | {ratio(ours, loop)} | "
            f"{'-' if error is None else f'{error:.1e}'} | {frac} |"
        )


if __name__ == "__main__":
    main()
