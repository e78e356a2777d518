"""Benchmark the derivative engine against the usual recipes, side by side in one run.

Prints one Markdown table per workload and batch size: seconds, time as a
multiple of one eager forward pass over the same batch, samples/s, and the
max relative error of each row against our engine in float64 (relative to
the max abs of each quantity).

Workloads (from issue 3):
  seed-000  MLP 2 -> 4x128 tanh -> 150; value, jacobian, hessian
  W2        MLP 3 -> 3x64 sin -> 8;     jacobian, hessian, d3, d4
  tiny      MLP 2 -> 2x16 tanh -> 3;    smoke test only (``--workload tiny``, not in ``all``)

Usage:
  .venv/bin/python bench/derivatives.py                 # CPU, N = 2000 and 20000
  .venv/bin/python bench/derivatives.py --quick         # N = 512, short budgets
  .venv/bin/python bench/derivatives.py --device cuda   # N = 1e4, 1e5, 1e6 (budget 20 s per row)
  .venv/bin/python bench/derivatives.py --device cuda --n 1e6 --rows taylor,compile   # torch.compile row
  .venv/bin/python bench/derivatives.py --device cuda --deadline 400   # stop starting rows after 400 s

Rows (``--rows``, comma-separated keys; default all but ``compile``): ``loop``
(the seed's autograd.grad loop), ``vmap-reverse``, ``vmap-forward``, ``jvp``
(nested jvp), ``jax`` (JAX jit on the same device as torch, matmuls at full
float32 precision unless ``--jax-precision default``), ``auto``, ``taylor``,
``compile`` (ours, Taylor through ``torch.compile``, fixed chunks of
``--compile-chunk``; its warm-up, compile included, is shown in the label).

Time boxes: a row is first run on a small slice (64 samples; one lax.map
batch for JAX), then on slices up to 4x larger, never predicted to pass
``--budget`` seconds, until one takes half the budget (so launch overheads of
a GPU, which make small slices slow, do not dominate). Rows that did not reach
the whole batch are scaled linearly from the last slice and marked ``~``. With ``--deadline`` no row starts
after that many seconds (from the start) and each row's budget shrinks to what
is left; rows not run say so. A row that runs out of memory is a row ("out of
memory at N=...", or timed on the largest slice that fitted and marked ``~``),
never a crash. One progress line per finished row goes to stderr at once, so
a run that is killed keeps what it finished.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# JAX shares the GPU with torch here: by default it would take 75% of the GPU memory at its first call
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch
from torch.func import hessian, jacfwd, jacrev, jvp, vmap

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from timing import best_time, synchronize  # bench/timing.py

from pipeline.engine import compute_derivatives
from pipeline.engine.chunking import is_out_of_memory
from pipeline.quantities import quantity_order

JAX_BATCH = 8192


class Sin(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)


@dataclass
class Workload:
    name: str
    sizes: tuple[int, ...]
    activation: str
    quantities: tuple[str, ...]
    smoke: bool = False  # only when asked for by name

    def build(self, seed: int = 0) -> torch.nn.Sequential:
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh() if self.activation == "tanh" else Sin()]
        return torch.nn.Sequential(*layers[:-1])


WORKLOADS = [
    Workload(
        "seed-000: MLP 2 -> 4x128 tanh -> 150", (2, 128, 128, 128, 128, 150), "tanh", ("value", "jacobian", "hessian")
    ),
    Workload("W2: MLP 3 -> 3x64 sin -> 8", (3, 64, 64, 64, 8), "sin", ("jacobian", "hessian", "d3", "d4")),
    Workload("tiny: MLP 2 -> 2x16 tanh -> 3", (2, 16, 16, 3), "tanh", ("value", "jacobian", "hessian"), smoke=True),
]
ROW_KEYS = ("loop", "vmap-reverse", "vmap-forward", "jvp", "jax", "auto", "taylor", "compile")  # table order
DEFAULT_ROWS = ROW_KEYS[:-1]
# run order: ours and JAX first, the slow baselines last, so a --deadline cuts the least important rows
RUN_ORDER = ("auto", "taylor", "compile", "jax", "jvp", "vmap-forward", "vmap-reverse", "loop")


# ----------------------------------------------------------------------------- torch baselines


def seed_loop(net, x, quantities):
    """Seed 000: one autograd.grad per output, then per output and input, ... (create_graph).

    Depth first, as the seed does: one output's first derivatives, their
    derivatives, ..., before the next output, so only one output's derivative
    graphs are alive at a time (the forward graph is kept for all). Each entry
    is differentiated from its own gradient tensor (``dx[:, i]`` in the seed),
    never from a stacked copy, so a backward pass walks one graph.
    """
    order = max(quantity_order(q) for q in quantities)
    n, d = x.shape
    xg = x.detach().clone().requires_grad_(True)
    y = net(xg)
    m = y.shape[1]
    results = {"value": y.detach()}
    for k in range(1, order + 1):
        results[_name(k)] = x.new_empty((n, m) + (d,) * k)

    def expand(entry, k, index):
        g = torch.autograd.grad(entry, xg, torch.ones_like(entry), retain_graph=True, create_graph=k < order)[0]
        results[_name(k)][(slice(None),) + index] = g.detach()
        if k < order:
            for i in range(d):
                expand(g[:, i], k + 1, index + (i,))

    for e in range(m):
        expand(y[:, e], 1, (e,))
    return {q: results[q] for q in quantities}


def _name(order):
    return {0: "value", 1: "jacobian", 2: "hessian"}.get(order, f"d{order}")


def _nest(fn, transform, times):
    for _ in range(times):
        fn = transform(fn)
    return fn


def vmap_reverse(net, x, quantities, chunk=2000):
    """vmap(jacrev) for the Jacobian, vmap(hessian) for the Hessian, jacfwd of that beyond."""
    out = {}
    for q in quantities:
        k = quantity_order(q)
        if k == 0:
            out[q] = net(x)
        elif k == 1:
            out[q] = vmap(jacrev(net), chunk_size=chunk)(x)
        else:
            out[q] = vmap(_nest(hessian(net), jacfwd, k - 2), chunk_size=chunk)(x)
    return out


def vmap_forward(net, x, quantities, chunk=2000):
    """vmap(jacfwd), vmap(jacfwd(jacfwd)), ... one nested transform per quantity."""
    return {
        q: net(x) if quantity_order(q) == 0 else vmap(_nest(net, jacfwd, quantity_order(q)), chunk_size=chunk)(x)
        for q in quantities
    }


def nested_jvp(net, x, quantities):
    """Directional derivatives along input basis vectors, one nested jvp per sorted index tuple."""
    n, d = x.shape
    basis = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, n, d)
    out = {}
    for q in quantities:
        k = quantity_order(q)
        if k == 0:
            out[q] = net(x)
            continue
        m = net(x[:1]).shape[1]
        tensor = x.new_empty((n, m) + (d,) * k)
        for combo in itertools.combinations_with_replacement(range(d), k):

            def directional(z, depth=k, combo=combo):
                if depth == 0:
                    return net(z)
                return jvp(lambda w: directional(w, depth - 1, combo), (z,), (basis[combo[depth - 1]],))[1]

            value = directional(x)
            for perm in set(itertools.permutations(combo)):
                tensor[(slice(None), slice(None)) + perm] = value
        out[q] = tensor
    return out


def ours(method, compile=False, chunk_size="auto"):
    def run(net, x, quantities):
        return compute_derivatives(net, x, quantities, method=method, compile=compile, chunk_size=chunk_size).outputs

    return run


# ----------------------------------------------------------------------------- JAX


def jax_runner(net, quantities, device: torch.device, precision: str = "highest", batch_size=JAX_BATCH):
    """jit(lax.map(per-sample nested jacfwd, batch_size=8192)), weights copied from the torch net.

    Runs on the JAX device of the same kind as ``device`` (its GPU for cuda).
    Matmuls at ``precision`` (``"highest"``: full float32 like torch's default;
    ``"default"``: JAX's own, TF32 on recent NVIDIA GPUs). Returns a runner, or
    a string saying why the row is skipped. The runner returns JAX arrays (no
    copy back in the timed region); ``max_rel_err`` converts them.
    """
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return "skipped: JAX not installed (pip install 'jax[cpu]')"
    platform = "gpu" if device.type == "cuda" else "cpu"
    try:
        target = jax.devices(platform)[0]
        params = [
            (
                jax.device_put(m.weight.detach().cpu().numpy(), target),
                jax.device_put(m.bias.detach().cpu().numpy(), target),
            )
            for m in net
            if isinstance(m, torch.nn.Linear)
        ]
    except Exception as error:  # no such device, or its set-up failed: a row saying so
        return (
            f"skipped: JAX {jax.__version__} on {platform}: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        )
    matmul_precision = jax.lax.Precision.HIGHEST if precision == "highest" else None
    act = jnp.tanh if isinstance(net[1], torch.nn.Tanh) else jnp.sin

    def f(z):
        for i, (w, b) in enumerate(params):
            z = jnp.matmul(w, z, precision=matmul_precision) + b
            if i < len(params) - 1:
                z = act(z)
        return z

    orders = [quantity_order(q) for q in quantities]

    def per_sample(z):
        return tuple(f(z) if k == 0 else _nest(f, jax.jacfwd, k)(z) for k in orders)

    @jax.jit
    def batched(xs):
        return jax.lax.map(per_sample, xs, batch_size=batch_size)

    inputs = {}  # the input batch on the JAX device, copied once per batch (outside the timed runs)

    def run(_net, x, _quantities):
        key = (x.data_ptr(), tuple(x.shape))
        if key not in inputs:
            inputs.clear()
            inputs[key] = jax.device_put(x.detach().cpu().numpy(), target)
        result = batched(inputs[key])
        jax.block_until_ready(result)
        return dict(zip(quantities, result))

    run.description = f"JAX {jax.__version__} on {target.platform} ({target.device_kind}), matmul precision {precision}"
    return run


# ----------------------------------------------------------------------------- timing


def _as_torch(value) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    try:
        return torch.from_dlpack(value)  # a JAX array, without a copy where the devices allow
    except Exception:  # any array type numpy can read
        import numpy as np

        return torch.from_numpy(np.asarray(value))


def max_rel_err(got: dict, ref: dict, chunk: int = 1 << 16) -> float:
    """Max over quantities of max|got - ref| / max|ref|, in float64 on ref's device, a chunk of samples at a time."""
    worst = 0.0
    for q, r in ref.items():
        g = _as_torch(got[q])
        diff, scale = 0.0, 0.0
        for start in range(0, r.shape[0], chunk):
            rc = r[start : start + chunk].detach().to(torch.float64)
            gc_ = g[start : start + chunk].detach().to(rc.device, torch.float64)
            diff = max(diff, float((gc_ - rc).abs().max()))
            scale = max(scale, float(rc.abs().max()))
        worst = max(worst, diff / max(scale, 1e-30))
    return worst


def release_memory(device: torch.device) -> None:
    """Free what a finished (or failed) row left behind, so the next row starts from the same memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom(error: BaseException) -> bool:
    message = str(error).lower()
    return is_out_of_memory(error) or "resource_exhausted" in message or "out of memory" in message


@dataclass
class Row:
    key: str
    label: str
    run: Callable | str  # a runner (net, x, quantities) -> outputs, or why the row is skipped
    kind: str = "torch"  # "torch": probed from 64 samples; "jax": from one lax.map batch; "compiled": never probed


@dataclass
class Timed:
    seconds: float  # for all n samples (scaled when timed on fewer)
    use_n: int
    result: dict
    note: str = ""


class OutOfMemory(Exception):
    def __init__(self, n: int, error: BaseException):
        super().__init__(f"out of memory at N={n} ({type(error).__name__})")


def measure_row(row: Row, net, x, quantities, device, budget: float, quick: bool) -> Timed:
    """Time ``row`` on ``x`` within about ``budget`` seconds (see the module docstring).

    Slices grow 4x (less when a run would pass ``budget``) from 64 samples
    until one takes ``budget / 2`` or the whole batch is done; the last is the
    measurement, scaled to the batch. Run time never grows faster than the
    slice, so no run passes ``budget``; and in a slice that takes half the
    budget the fixed launch overheads, which make small slices on a GPU look
    slow, weigh little.
    """
    n = x.shape[0]

    def timed(k: int, repeats: int = 1):
        try:
            return best_time(lambda: row.run(net, x[:k], quantities), device, repeats)
        except Exception as error:
            if _oom(error):
                raise OutOfMemory(k, error) from None
            raise

    if row.kind == "compiled":  # every new shape compiles: warm up once at the full batch, never probe
        first_s, _ = timed(n)
        seconds, result = timed(n, 2 if quick else 3)
        return Timed(seconds, n, result, f"warm-up incl. compile {first_s:.1f} s")

    size = min(n, JAX_BATCH if row.kind == "jax" else 64)
    timed(size)  # warm up (compile, trace, first-call set-up)
    seconds, result = timed(size)
    spent, oom_at = seconds, None
    while size < n and seconds < budget / 2 and spent < budget:
        bigger = min(n, int(size * min(4.0, budget / max(seconds, 1e-9))))
        if row.kind == "jax":  # one more size only (each compiles): the whole batch, or whole lax.map batches
            bigger = n if seconds * n / size <= budget else bigger // JAX_BATCH * JAX_BATCH
        if bigger <= size:
            break
        result = None
        release_memory(device)
        try:
            if row.kind == "jax":
                timed(bigger)  # jit compiles per shape: outside the timed run
            seconds, result = timed(bigger)
            size = bigger
        except OutOfMemory:
            oom_at = bigger
            release_memory(device)
            seconds, result = timed(size)
            break
        spent += seconds
        if row.kind == "jax":
            break
    if size == n and seconds <= 5 and oom_at is None:  # fast enough to repeat: best of 2 (quick) or 3 runs
        again, result_again = timed(n, 1 if quick else 2)
        if again < seconds:
            seconds, result = again, result_again
    note = "" if oom_at is None else f"out of memory at N={oom_at}"
    return Timed(seconds * n / size, size, result, note)


def forward_time(net, x, device, repeats: int) -> float:
    with torch.no_grad():
        return best_time(lambda: net(x), device, repeats=repeats)[0]


def bench_workload(
    work: Workload,
    n: int,
    device: torch.device,
    budget: float,
    quick: bool,
    rows_wanted=DEFAULT_ROWS,
    deadline: float | None = None,
    jax_precision: str = "highest",
    compile_chunk: int | None = None,
):
    """Time every wanted row on ``n`` samples of ``work``; print (and return) the Markdown table."""

    def left() -> float:
        return math.inf if deadline is None else deadline - time.monotonic()

    title = f"### {work.name} - {', '.join(work.quantities)}; float32, {device.type}, N={n}"
    if left() < 15:
        print(f"{title}\n\nskipped: --deadline reached before this table started\n", flush=True)
        return []
    net = work.build().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    x = torch.randn(n, work.sizes[0], device=device)
    with torch.no_grad():
        net(x[:8])
    forward_s = forward_time(net, x, device, 5 if quick else 20)
    try:
        reference = compute_derivatives(net.double(), x.double(), work.quantities, method="taylor").outputs
    except Exception as error:  # without a reference the rows still get times
        print(
            f"  ... float64 reference failed ({type(error).__name__}: {str(error).splitlines()[0][:80]}); "
            "no error column",
            file=sys.stderr,
            flush=True,
        )
        reference = None
    net.float()
    release_memory(device)
    candidates = {
        "loop": lambda: Row("loop", "seed-000 loop: autograd.grad per output", seed_loop),
        "vmap-reverse": lambda: Row("vmap-reverse", "vmap(jacrev) + vmap(hessian), chunk 2000", vmap_reverse),
        "vmap-forward": lambda: Row("vmap-forward", "vmap(jacfwd) + vmap(jacfwd(jacfwd)), chunk 2000", vmap_forward),
        "jvp": lambda: Row("jvp", "nested jvp over the input basis", nested_jvp),
        "jax": lambda net=net: Row(
            "jax",
            "JAX jit lax.map(jacfwd(jacfwd)), batch 8192",
            jax_runner(net, work.quantities, device, jax_precision),
            kind="jax",
        ),
        "auto": lambda: Row("auto", "ours: auto", ours("auto")),
        "taylor": lambda: Row("taylor", "ours: taylor (forced)", ours("taylor")),
        "compile": lambda: Row(
            "compile",
            f"ours: taylor, compile=True, chunk {compile_chunk}",
            ours("taylor", compile=True, chunk_size=compile_chunk),
            kind="compiled",
        ),
    }
    rows = [candidates[key]() for key in RUN_ORDER if key in rows_wanted]
    # other work on the machine makes single timings noisy: the forward pass is re-timed before
    # every row and the fastest of all is the unit, rows are timed first and divided at the end
    done = {}  # row key -> (label, (seconds, mark) or None, error column)
    for row in rows:
        forward_s = min(forward_s, forward_time(net, x, device, 3))
        label = row.label
        if isinstance(row.run, str):
            done[row.key] = (label, None, row.run)
            continue
        if hasattr(row.run, "description"):
            print(f"  ... {row.run.description}", file=sys.stderr, flush=True)
        row_budget = min(budget, (left() - 5) / 2)  # a row takes up to about twice its budget
        if row_budget < max(1.0, budget / 20):
            done[row.key] = (label, None, "skipped: --deadline reached")
            print(f"  ... {label}: skipped, --deadline reached", file=sys.stderr, flush=True)
            continue
        began = time.perf_counter()
        try:
            timing = measure_row(row, net, x, work.quantities, device, row_budget, quick)
            error = (
                "-"
                if reference is None
                else f"{max_rel_err(timing.result, {q: r[: timing.use_n] for q, r in reference.items()}):.1e}"
            )
            mark = "~" if timing.use_n < n else ""
            extra = "" if timing.use_n == n else f" (timed on {timing.use_n})"
            if timing.note:
                extra += f" ({timing.note})"
            entry = (label + extra, (timing.seconds, mark), error)
            timing = None
        except OutOfMemory as error:
            entry = (label, None, str(error))
        except Exception as error:  # a failing baseline is a row, not a crash
            entry = (label, None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
        release_memory(device)
        done[row.key] = entry
        shown, result, note = entry
        detail = (
            note
            if result is None
            else (
                f"{result[1]}{result[0]:.3f} s, {result[1]}{n / result[0]:,.0f} "
                f"samples/s, {result[1]}{result[0] / forward_s:.1f}x forward "
                f"({forward_s * 1e3:.2f} ms so far), max rel err {note}"
            )
        )
        print(f"  ... {shown}: {detail} [{time.perf_counter() - began:.0f} s]", file=sys.stderr, flush=True)
    measured = [done[key] for key in ROW_KEYS if key in done]
    lines = [
        title,
        "",
        f"one eager forward pass over the batch: {forward_s * 1e3:.2f} ms (fastest of all re-timings)",
        "",
        "| method | seconds | x forward | samples/s | max rel err vs ours (f64) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, timing, note in measured:
        if timing is None:
            lines.append(f"| {label} | - | - | - | {note} |")
            continue
        seconds, mark = timing
        lines.append(
            f"| {label} | {mark}{seconds:.3f} | {mark}{seconds / forward_s:.1f} | {mark}{n / seconds:,.0f} | {note} |"
        )
    print("\n".join(lines) + "\n", flush=True)
    del reference, x, net, candidates  # candidates: its "jax" entry holds net too
    release_memory(device)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=float, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--quick", action="store_true", help="small batches and budgets")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per row before scaling from a subset (default 60 on CPU, 20 on GPU, 5 quick)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds from the start after which no row starts (rows shrink to fit)",
    )
    parser.add_argument("--workload", choices=["seed-000", "W2", "tiny", "all"], default="all")
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated rows to run, from {','.join(ROW_KEYS)} (default: all but compile)",
    )
    parser.add_argument(
        "--compile-chunk", type=int, default=None, help="chunk of the compile row (default 131072 on GPU, 1024 on CPU)"
    )
    parser.add_argument(
        "--jax-precision",
        choices=["highest", "default"],
        default="highest",
        help="JAX matmul precision: full float32 like torch (default), or JAX's default (TF32 on GPUs)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    device = torch.device(args.device)
    rows = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = sorted(set(rows) - set(ROW_KEYS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROW_KEYS)}")
    if args.n:
        sizes = [int(v) for v in args.n]
    elif args.quick:
        sizes = [512]
    else:
        sizes = [10_000, 100_000, 1_000_000] if device.type == "cuda" else [2000, 20000]
    if args.budget is not None:
        budget = args.budget
    else:
        budget = 5.0 if args.quick else (20.0 if device.type == "cuda" else 60.0)
    compile_chunk = args.compile_chunk or (131072 if device.type == "cuda" else 1024)
    deadline = None if args.deadline is None else started + args.deadline
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {what}, device {device}, {time.strftime('%Y-%m-%d %H:%M')}\n", flush=True)
    for work in WORKLOADS:
        if not ((args.workload == "all" and not work.smoke) or work.name.startswith(args.workload + ":")):
            continue
        for n in sizes:
            bench_workload(work, n, device, budget, args.quick, rows, deadline, args.jax_precision, compile_chunk)
    synchronize(device)
    print(f"# total {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
