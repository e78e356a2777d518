"""Benchmark the derivative engine against the usual recipes, side by side in one run.

Prints one Markdown table per workload and batch size: seconds, time as a
multiple of one eager forward pass over the same batch, samples/s, and the
max relative error of each row against our engine in float64 (relative to
the max abs of each quantity).

Workloads (from issue 3):
  seed-000  MLP 2 -> 4x128 tanh -> 150; value, jacobian, hessian
  W2        MLP 3 -> 3x64 sin -> 8;     jacobian, hessian, d3, d4

Usage:
  .venv/bin/python bench/derivatives.py                 # CPU, N = 2000 and 20000
  .venv/bin/python bench/derivatives.py --quick         # N = 512, short budgets
  .venv/bin/python bench/derivatives.py --device cuda   # N = 1e4, 1e5, 1e6

Rows slower than ``--budget`` seconds (estimated from a small slice) are timed
on fewer samples and scaled linearly; they are marked ``~``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch.func import hessian, jacfwd, jacrev, jvp, vmap

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipeline.engine import compute_derivatives  # noqa: E402
from pipeline.quantities import quantity_order  # noqa: E402
from timing import best_time  # noqa: E402  (bench/timing.py)


class Sin(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)


@dataclass
class Workload:
    name: str
    sizes: tuple[int, ...]
    activation: str
    quantities: tuple[str, ...]

    def build(self, seed: int = 0) -> torch.nn.Sequential:
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh() if self.activation == "tanh" else Sin()]
        return torch.nn.Sequential(*layers[:-1])


WORKLOADS = [
    Workload("seed-000: MLP 2 -> 4x128 tanh -> 150", (2, 128, 128, 128, 128, 150), "tanh",
             ("value", "jacobian", "hessian")),
    Workload("W2: MLP 3 -> 3x64 sin -> 8", (3, 64, 64, 64, 8), "sin", ("jacobian", "hessian", "d3", "d4")),
]


# ----------------------------------------------------------------------------- torch baselines


def seed_loop(net, x, quantities):
    """Seed 000: one autograd.grad per output, then per output and input, ... (create_graph).

    Each entry is differentiated from its own gradient tensor (``dx[:, i]`` in
    the seed), never from a stacked copy, so a backward pass walks one graph.
    """
    order = max(quantity_order(q) for q in quantities)
    n, d = x.shape
    xg = x.detach().clone().requires_grad_(True)
    y = net(xg)
    results = {"value": y.detach()}
    entries = [y[:, e] for e in range(y.shape[1])]
    for k in range(1, order + 1):
        grads = [torch.autograd.grad(t, xg, torch.ones_like(t), retain_graph=True, create_graph=k < order)[0]
                 for t in entries]
        results[_name(k)] = torch.stack([g.detach() for g in grads], 1).reshape((n, y.shape[1]) + (d,) * k)
        entries = [g[:, i] for g in grads for i in range(d)]
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
    return {q: net(x) if quantity_order(q) == 0 else vmap(_nest(net, jacfwd, quantity_order(q)), chunk_size=chunk)(x)
            for q in quantities}


def nested_jvp(net, x, quantities):
    """Directional derivatives along input basis vectors, one nested jvp per sorted index tuple."""
    n, d = x.shape
    basis = torch.eye(d, dtype=x.dtype).unsqueeze(1).expand(d, n, d)
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


def ours(method):
    def run(net, x, quantities):
        return compute_derivatives(net, x, quantities, method=method).outputs
    return run


# ----------------------------------------------------------------------------- JAX


def jax_runner(net, quantities, batch_size=8192):
    """jit(lax.map(per-sample nested jacfwd, batch_size=8192)), weights copied from the torch net."""
    try:
        import jax
        import jax.numpy as jnp
        import numpy as np
    except ImportError:
        return None
    params = [(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
              for m in net if isinstance(m, torch.nn.Linear)]
    act = jnp.tanh if isinstance(net[1], torch.nn.Tanh) else jnp.sin

    def f(z):
        for i, (w, b) in enumerate(params):
            z = w @ z + b
            if i < len(params) - 1:
                z = act(z)
        return z

    orders = [quantity_order(q) for q in quantities]

    def per_sample(z):
        return tuple(f(z) if k == 0 else _nest(f, jax.jacfwd, k)(z) for k in orders)

    @jax.jit
    def batched(xs):
        return jax.lax.map(per_sample, xs, batch_size=batch_size)

    def run(_net, x, _quantities):
        result = batched(jnp.asarray(x.numpy()))
        jax.block_until_ready(result)
        return {q: torch.from_numpy(np.array(r)) for q, r in zip(quantities, result)}

    return run


# ----------------------------------------------------------------------------- timing


def max_rel_err(got: dict, ref: dict) -> float:
    worst = 0.0
    for q, r in ref.items():
        g = got[q].detach().to("cpu", torch.float64)
        r = r.detach().to("cpu", torch.float64)
        worst = max(worst, float((g - r).abs().max() / r.abs().max().clamp_min(1e-30)))
    return worst


def bench_workload(work: Workload, n: int, device: torch.device, budget: float, quick: bool):
    net = work.build().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    x = torch.randn(n, work.sizes[0], device=device)
    with torch.no_grad():
        net(x[:8])
        forward_s, _ = best_time(lambda: net(x), device, repeats=5 if quick else 20)
    reference = compute_derivatives(net.double(), x.double(), work.quantities, method="taylor").outputs
    net.float()
    rows = [
        ("seed-000 loop: autograd.grad per output", lambda n_, x_, q_: seed_loop(n_, x_, q_)),
        ("vmap(jacrev) + vmap(hessian), chunk 2000", vmap_reverse),
        ("vmap(jacfwd) + vmap(jacfwd(jacfwd)), chunk 2000", vmap_forward),
        ("nested jvp over the input basis", nested_jvp),
    ]
    jax_run = jax_runner(net.cpu(), work.quantities) if device.type == "cpu" else None
    net.to(device)
    rows.append(("JAX jit lax.map(jacfwd(jacfwd)), batch 8192",
                 jax_run if jax_run is not None else "skipped: JAX not installed (pip install 'jax[cpu]')"))
    rows += [("ours: auto", ours("auto")), ("ours: taylor (forced)", ours("taylor"))]
    # other work on the machine makes single timings noisy: the forward pass is re-timed before
    # every row and the fastest of all is the unit, rows are timed first and divided at the end
    measured = []
    for label, runner in rows:
        with torch.no_grad():
            forward_s = min(forward_s, best_time(lambda: net(x), device, repeats=3)[0])
        if isinstance(runner, str):
            measured.append((label, None, runner))
            continue
        try:
            # warm up (compile, trace) and estimate on a slice before committing to the full batch
            probe_n = min(n, 64)
            runner(net, x[:probe_n], work.quantities)
            probe_s, _ = best_time(lambda: runner(net, x[:probe_n], work.quantities), device)
            estimate = probe_s * n / probe_n
            use_n, mark = n, ""
            if estimate > budget:
                use_n = max(probe_n, min(n, int(n * budget / estimate)))
                mark = "~" if use_n < n else ""
            if label.startswith("JAX") and use_n < n:
                use_n, mark = n, ""  # jit compiles per shape: time the full batch after one warm-up
                runner(net, x, work.quantities)
            seconds, result = best_time(lambda: runner(net, x[:use_n], work.quantities), device,
                                    repeats=1 if estimate > 5 else (2 if quick else 3))
            seconds *= n / use_n
            error = max_rel_err(result, {q: r[:use_n] for q, r in reference.items()})
            extra = "" if use_n == n else f" (timed on {use_n})"
            measured.append((label + extra, (seconds, mark), f"{error:.1e}"))
        except Exception as error:  # noqa: BLE001 - a failing baseline is a row, not a crash
            measured.append((label, None, f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"))
        print(f"  ... {measured[-1][0]}", file=sys.stderr, flush=True)
    lines = [f"### {work.name} - {', '.join(work.quantities)}; float32, {device.type}, N={n}", "",
             f"one eager forward pass over the batch: {forward_s * 1e3:.2f} ms (fastest of all re-timings)", "",
             "| method | seconds | x forward | samples/s | max rel err vs ours (f64) |",
             "|---|---:|---:|---:|---:|"]
    for label, timing, note in measured:
        if timing is None:
            lines.append(f"| {label} | - | - | - | {note} |")
            continue
        seconds, mark = timing
        lines.append(f"| {label} | {mark}{seconds:.3f} | {mark}{seconds / forward_s:.1f} | "
                     f"{mark}{n / seconds:,.0f} | {note} |")
    print("\n".join(lines) + "\n", flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=float, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--quick", action="store_true", help="small batches and budgets")
    parser.add_argument("--budget", type=float, default=None, help="seconds per row before scaling from a subset")
    parser.add_argument("--workload", choices=["seed-000", "W2", "all"], default="all")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.n:
        sizes = [int(v) for v in args.n]
    elif args.quick:
        sizes = [512]
    else:
        sizes = [10_000, 100_000, 1_000_000] if device.type == "cuda" else [2000, 20000]
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 60.0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n", flush=True)
    for work in WORKLOADS:
        if args.workload != "all" and not work.name.startswith(args.workload):
            continue
        for n in sizes:
            bench_workload(work, n, device, budget, args.quick)


if __name__ == "__main__":
    main()
