"""Second-order operators side by side in one run: Laplacian peers, estimates, HVP operator + CG.

Tables (Markdown, printed as they finish):

1. Laplacian of a tanh MLP D -> 768 -> 768 -> 512 -> 512 -> 1 (the workload of
   "Collapsing Taylor Mode AD", NeurIPS 2025), float32, for D in --dims:
   torch.func ``vmap(trace(hessian))``, JAX jit ``vmap(trace(hessian))``,
   ours (``auto`` = collapsed; ``taylor`` = the standard 1 + 2D Taylor mode),
   folx ``forward_laplacian`` under JAX jit; seconds and x one eager forward.
   jet-for-pytorch needs Python >= 3.12 and its own torch: the table says
   whether it was run.
2. Hutchinson estimate at D = --estimate-dim with 64 directions (per-sample and
   shared directions) vs the exact
   collapsed Laplacian (target: cost <= (64 + 2) / (D + 2) of it + a constant).
3. The bi-Laplacian at D = 3, 10, 50 (tanh MLP D -> 64 -> 64 -> 1): ours
   (the biharmonic index set) vs the full fourth order contracted, and the
   Laplacian of the Laplacian by torch.func and JAX jit.
4. Seed 001's HVP operator: conjugate gradient for H p = -g on its own problem
   (two 10,000-element tensors) and on per-sample Hessians, with the gradient
   graph built once vs recomputed for every product.

Every time is the best of --repeats runs after a warm-up. Usage:
  .venv/bin/python bench/operators.py                 # D = 10, 50, 200, N = 512
  .venv/bin/python bench/operators.py --quick         # D = 10, 50, N = 128
"""

from __future__ import annotations

import argparse
import glob
import itertools
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from timing import no_gc_pause  # bench/timing.py

from pipeline.engine import compute_derivatives
from pipeline.engine.hvp_operator import HessianOperator, conjugate_gradient, per_sample_operator
from pipeline.engine.operators import OperatorOptions


def best(fn, repeats: int) -> float:
    fn()  # warm-up (traces, jit compiles)
    times = []
    for _ in range(repeats):
        with no_gc_pause():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def make_net(d: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    widths = [d, 768, 768, 512, 512, 1]
    layers = []
    for a, b in itertools.pairwise(widths):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def jax_mlp(net):
    """The tanh MLP ``net`` (Linear/Tanh layers) as a JAX function of one sample with a scalar output."""
    import jax.numpy as jnp

    params = [
        (jnp.asarray(m.weight.detach().numpy().T), jnp.asarray(m.bias.detach().numpy()))
        for m in net
        if isinstance(m, torch.nn.Linear)
    ]

    def f(z):
        for i, (w, b) in enumerate(params):
            z = z @ w + b
            if i < len(params) - 1:
                z = jnp.tanh(z)
        return z[0]

    return f


def jax_functions(net):
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None, None
    f = jax_mlp(net)
    hessian_trace = jax.jit(jax.vmap(lambda z: jnp.trace(jax.hessian(f)(z))))
    try:
        from folx import forward_laplacian

        folx_lap = jax.jit(jax.vmap(lambda z: forward_laplacian(f)(z).laplacian))
    except ImportError:
        folx_lap = None
    return hessian_trace, folx_lap


def laplacian_table(dims, n, repeats):
    print(f"\n### Laplacian, tanh MLP D -> 768 -> 768 -> 512 -> 512 -> 1, N = {n}, float32\n")
    print("| D | method | seconds | x forward | vs folx | max abs diff vs ours |")
    print("|---:|---|---:|---:|---:|---:|")
    for d in dims:
        laplacian_rows(d, n, repeats)
    print("\n`vs folx` > 1: faster than folx. jet-for-pytorch: " + jet_status())


def laplacian_rows(d, n, repeats):
    """The rows of ``laplacian_table`` for one input size ``d``, printed."""
    net = make_net(d)
    x = torch.randn(n, d)
    with torch.no_grad():
        forward = best(lambda: net(x), max(repeats, 5))
    ours = compute_derivatives(net, x, ("laplacian",)).outputs["laplacian"][:, 0].numpy()
    rows = []

    def add(name, fn, result=None):
        seconds = best(fn, repeats)
        diff = "" if result is None else f"{np.abs(np.asarray(result()) - ours).max():.1e}"
        rows.append((name, seconds, diff))
        sys.stderr.write(f"  D={d} {name}: {seconds:.3f} s\n")

    hessian_trace = torch.vmap(lambda z: torch.func.hessian(lambda u: net(u)[0])(z).trace())
    add("torch.func vmap(trace(hessian))", lambda: hessian_trace(x), lambda: hessian_trace(x).detach().numpy())
    jax_trace, folx_lap = jax_functions(net)
    xj = None
    if jax_trace is not None:
        import jax.numpy as jnp

        xj = jnp.asarray(x.numpy())
        add("JAX jit vmap(trace(hessian))", lambda: jax_trace(xj).block_until_ready(), lambda: jax_trace(xj))
    add("ours auto (collapsed, D + 2 rows)", lambda: compute_derivatives(net, x, ("laplacian",)).outputs)
    add(
        "ours taylor (standard, 1 + 2D rows)",
        lambda: compute_derivatives(net, x, ("laplacian",), method="taylor").outputs,
        lambda: compute_derivatives(net, x, ("laplacian",), method="taylor").outputs["laplacian"][:, 0].numpy(),
    )
    if folx_lap is not None:
        add("folx forward_laplacian, JAX jit", lambda: folx_lap(xj).block_until_ready(), lambda: folx_lap(xj))
    for name, seconds, result in jet_rows(net, x, repeats):
        diff = "" if result is None else f"{np.abs(result - ours).max():.1e}"
        rows.append((name, seconds, diff))
    folx_s = next((s for name, s, _ in rows if name.startswith("folx")), None)
    for name, seconds, diff in rows:
        versus = "" if folx_s is None else f"{folx_s / seconds:.2f}x"
        print(f"| {d} | {name} | {seconds:.3f} | {seconds / forward:.0f} | {versus} | {diff} |")


JET_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
from jet import laplacian
torch.set_num_threads(int(sys.argv[3]))
data = np.load(sys.argv[1])
x = torch.from_numpy(data["x"])
layers = []
k = 0
while f"w{k}" in data:
    lin = torch.nn.Linear(data[f"w{k}"].shape[1], data[f"w{k}"].shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(data[f"w{k}"]))
        lin.bias.copy_(torch.from_numpy(data[f"b{k}"]))
    layers += [lin, torch.nn.Tanh()]
    k += 1
net = torch.nn.Sequential(*layers[:-1])
out = {}
for collapsed in (False, True):
    lap = torch.vmap(laplacian(net, (torch.zeros(x.shape[1]),), collapsed=collapsed))
    with torch.no_grad():
        result = lap(x)
        times = []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter(); lap(x); times.append(time.perf_counter() - t)
    out["collapsed" if collapsed else "standard"] = [min(times), result.reshape(-1).tolist()]
print(json.dumps(out))
"""


def jet_python() -> str | None:
    """A Python >= 3.12 with jet-for-pytorch: $JET_PYTHON, or the venv this benchmark makes with python3.12."""
    if os.environ.get("JET_PYTHON"):
        return os.environ["JET_PYTHON"]
    venv = os.path.join(os.environ.get("TMPDIR", "/tmp"), "pipeline_bench_jet_venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        return python
    # a pyenv version's own binary first: pyenv's python3.12 shim exists but fails when 3.12 is not selected
    base = next((p for p in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python")))), None)
    base = base or shutil.which("python3.12")
    if base is None:
        return None
    sys.stderr.write(f"  making {venv} with {base} and pip install jet-for-pytorch (once)\n")
    try:
        subprocess.run([base, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "jet-for-pytorch"], check=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as error:
        sys.stderr.write(f"  jet-for-pytorch venv failed: {error}\n")
        return None
    return python


def jet_rows(net, x, repeats):
    python = jet_python()
    if python is None:
        return []
    import json
    import tempfile

    arrays = {"x": x.numpy()}
    for k, m in enumerate([m for m in net if isinstance(m, torch.nn.Linear)]):
        arrays[f"w{k}"], arrays[f"b{k}"] = m.weight.detach().numpy(), m.bias.detach().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.npz")
        np.savez(path, **arrays)
        script = os.path.join(tmp, "jet_bench.py")
        with open(script, "w") as handle:
            handle.write(JET_SCRIPT)
        done = subprocess.run(
            [python, script, path, str(repeats), str(torch.get_num_threads())], capture_output=True, text=True
        )
    if done.returncode != 0:
        sys.stderr.write(f"  jet-for-pytorch failed: {done.stderr[-500:]}\n")
        return []
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        (f"jet-for-pytorch {kind} Taylor mode, vmap (py3.12, own torch)", out[kind][0], np.asarray(out[kind][1]))
        for kind in ("standard", "collapsed")
    ]


def jet_status() -> str:
    if jet_python() is not None:
        return f"run with {jet_python()} (its own torch build; one process per D)."
    candidates = [os.path.expanduser(p) for p in ("~/.pyenv/versions/3.12.1/bin/python",)]
    found = next((c for c in candidates if os.path.exists(c)), shutil.which("python3.12"))
    if found is None:
        return "not run (no python3.12 on this machine)."
    return (
        f"not run: {found} exists, but a venv with jet-for-pytorch and its own torch was not set up "
        "by this benchmark in this run."
    )


def estimate_table(d, n, samples, repeats):
    print(f"\n### Hutchinson Laplacian estimate vs the exact collapsed Laplacian, D = {d}, N = {n}, float32\n")
    net = make_net(d)
    x = torch.randn(n, d)
    exact = best(lambda: compute_derivatives(net, x, ("laplacian",)).outputs, repeats)
    target = (samples + 2) / (d + 2)
    print("| quantity | directions | seconds | / exact | target (S + 2)/(D + 2) | (est - exact)/stderr: mean, std |")
    print("|---|---|---:|---:|---:|---|")
    print(f"| laplacian (exact, collapsed) | identity | {exact:.3f} | 1 | | |")
    for mode in ("per_sample", "shared"):
        options = OperatorOptions(samples=samples, seed=0, directions=mode)
        est = best(
            lambda options=options: compute_derivatives(net, x, ("laplacian_estimate",), options=options).outputs,
            repeats,
        )
        out = compute_derivatives(net, x, ("laplacian", "laplacian_estimate"), options=options).outputs
        z = ((out["laplacian_estimate"] - out["laplacian"]) / out["laplacian_estimate_stderr"]).flatten()
        print(
            f"| laplacian_estimate, {samples} Rademacher, 8 groups | {mode} | {est:.3f} | {est / exact:.3f} | "
            f"{target:.3f} | {z.mean():.2f}, {z.std():.2f} |"
        )
    print(
        "\n(est - exact)/stderr over the samples: about 0 and 1 when unbiased and the standard error is right;"
        " with shared directions the samples' errors are correlated, so their mean scatters more."
    )


def bilaplacian_table(dims, repeats):
    """The bi-Laplacian of a tanh MLP D -> 64 -> 64 -> 1: ours (the biharmonic index set) against the full
    fourth order contracted, torch.func's and JAX's Laplacian of the Laplacian (float32)."""
    print("\n### Bi-Laplacian, tanh MLP D -> 64 -> 64 -> 1, float32\n")
    print("| D | N | method | seconds | x ours | max rel diff vs ours |")
    print("|---:|---:|---|---:|---:|---:|")
    for d in dims:
        bilaplacian_rows(d, repeats)


def bilaplacian_rows(d, repeats):
    """The rows of ``bilaplacian_table`` for one input size ``d``, printed."""
    n = {3: 4096, 10: 1024}.get(d, 64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)
    )
    x = torch.randn(n, d)
    ours = compute_derivatives(net, x, ("bilaplacian",)).outputs["bilaplacian"][:, 0].numpy()
    scale = np.abs(ours).max()
    rows = []

    def add(name, fn, result):
        seconds = best(fn, repeats)
        rows.append((name, seconds, np.abs(np.asarray(result()).reshape(-1) - ours).max() / scale))
        sys.stderr.write(f"  D={d} {name}: {seconds:.3f} s\n")

    def ours_fn():
        return compute_derivatives(net, x, ("bilaplacian",)).outputs["bilaplacian"]

    add("ours auto (taylor, biharmonic set: 1 + 4D + 2D(D-1) coefficients)", ours_fn, ours_fn)

    def full_d4():
        d4 = compute_derivatives(net, x, ("d4",), method="taylor").outputs["d4"][:, 0]
        return d4.diagonal(dim1=1, dim2=2).diagonal(dim1=1, dim2=2).sum((1, 2))

    if math.comb(d + 4, 4) <= 20_000:
        add("ours taylor, full d4 (C(D+4, 4) coefficients), contracted", full_d4, full_d4)

    def lap(fn):
        return lambda z: torch.func.hessian(fn)(z).diagonal(dim1=-2, dim2=-1).sum(-1)

    nested = torch.vmap(lap(lap(lambda z: net(z)[0])))
    add("torch.func vmap(lap(lap)), lap = trace(hessian)", lambda: nested(x), lambda: nested(x).detach().numpy())
    try:
        import jax
        import jax.numpy as jnp

        f = jax_mlp(net)

        def jlap(g):
            return lambda z: jnp.trace(jax.hessian(g)(z))

        jnested = jax.jit(jax.vmap(jlap(jlap(f))))
        xj = jnp.asarray(x.numpy())
        add(
            "JAX jit vmap(lap(lap)), lap = trace(hessian)", lambda: jnested(xj).block_until_ready(), lambda: jnested(xj)
        )
    except ImportError:
        sys.stderr.write("  JAX not installed: its row is left out\n")
    mine = rows[0][1]
    for name, seconds, diff in rows:
        print(f"| {d} | {n} | {name} | {seconds:.3f} | {seconds / mine:.2f} | {diff:.1e} |", flush=True)


def seed001(w, x):
    return (torch.add(w, x) * torch.add(w, 1)).mean()


def convex(z):
    a = torch.arange(1.0, z.numel() + 1, dtype=z.dtype) / z.numel()
    return torch.nn.functional.softplus(torch.tanh(z) * a * 4).sum() + 0.5 * (z * z).sum()


def cg_table(repeats, batch, dim):
    print("\n### Seed 001: conjugate gradient for H p = -g, float64\n")
    print("| problem | variant | seconds | forward calls | products | max abs diff vs dense |")
    print("|---|---|---:|---:|---:|---:|")
    torch.manual_seed(0)
    w, x = torch.randn(10_000, dtype=torch.float64), torch.randn(10_000, dtype=torch.float64)
    n = w.numel()
    blocks = torch.tensor([[2.0, 1.0], [1.0, 0.0]], dtype=torch.float64).expand(n, 2, 2) / n

    def kept():
        op = HessianOperator(seed001, w, x)
        g = torch.cat(op.gradient)

        def matvec(v):
            return torch.cat(op(v[:n], v[n:]))

        p, it = conjugate_gradient(matvec, -g, tol=1e-12)
        return p, it, g

    def recomputed():
        ww, xx = w.detach().requires_grad_(True), x.detach().requires_grad_(True)
        grads = torch.autograd.grad(seed001(ww, xx), (ww, xx))
        g = torch.cat(grads)

        def matvec(v):  # the first-order pass again for every product
            _, (hw, hx) = torch.autograd.functional.hvp(seed001, (w, x), (v[:n], v[n:]))
            return torch.cat([hw, hx])

        p, it = conjugate_gradient(matvec, -g, tol=1e-12)
        return p, it, g

    for name, fn, calls in (
        ("operator: graph built once", kept, "1"),
        ("recompute first order per product", recomputed, "1 + products"),
    ):
        seconds = best(fn, repeats)
        p, it, g = fn()
        dense = torch.linalg.solve(blocks, -torch.stack([g[:n], g[n:]], 1)).T.reshape(-1)
        print(f"| seed 001, 2 x 10,000 | {name} | {seconds:.4f} | {calls} | {it} | {(p - dense).abs().max():.1e} |")

    xs = torch.randn(batch, dim, dtype=torch.float64)

    def kept_batch():
        op = per_sample_operator(convex, xs)
        return conjugate_gradient(op, -op.gradient, tol=1e-10, max_iter=4 * dim)

    def recomputed_batch():
        g = torch.vmap(torch.func.grad(convex))(xs)

        def matvec(v):
            return torch.autograd.functional.hvp(lambda z: torch.vmap(convex)(z).sum(), xs, v)[1]

        return conjugate_gradient(matvec, -g, tol=1e-10, max_iter=4 * dim)

    h = torch.vmap(torch.func.hessian(convex))(xs)
    dense = torch.linalg.solve(h, -torch.vmap(torch.func.grad(convex))(xs))
    for name, fn, calls in (
        ("operator: graph built once", kept_batch, "1"),
        ("recompute first order per product", recomputed_batch, "1 + products"),
    ):
        seconds = best(fn, repeats)
        p, it = fn()
        print(
            f"| {batch} per-sample Hessians, d = {dim} | {name} | {seconds:.4f} | {calls} | {it} | "
            f"{(p - dense).abs().max():.1e} |"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="D = 10, 50 at N = 128, one repeat")
    parser.add_argument("--dims", default=None, help="comma-separated input sizes (default 10,50,200)")
    parser.add_argument("--n", type=int, default=None, help="samples (default 512; 128 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row, best kept (default 3)")
    parser.add_argument("--estimate-dim", type=int, default=1000, help="input size of the estimate table")
    parser.add_argument("--tables", default="laplacian,estimate,bilaplacian,cg", help="which tables")
    args = parser.parse_args(argv)
    dims = [int(v) for v in (args.dims or ("10,50" if args.quick else "10,50,200")).split(",")]
    n = args.n or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    tables = args.tables.split(",")
    if "laplacian" in tables:
        laplacian_table(dims, n, repeats)
    if "estimate" in tables:
        estimate_table(args.estimate_dim, 128 if args.quick else n // 4, 64, repeats)
    if "bilaplacian" in tables:
        bilaplacian_table([3, 10] if args.quick else [3, 10, 50], repeats)
    if "cg" in tables:
        cg_table(repeats, 256, 50)


if __name__ == "__main__":
    main()
