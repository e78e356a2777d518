"""``method: auto`` across the shape spectrum, side by side with every forced method and torch.func.

For each cell of the grid (inputs D, outputs M, quantity) one tanh MLP
``D -> 64 -> 64 -> M`` and N samples (float32, as many as keep the result
under --max-numbers numbers, at most --n), timed in one run:

* ``auto`` (and the method it chose),
* every forced method: ``taylor``, ``forward``, ``reverse``,
  ``forward-over-reverse`` (and ``collapsed`` for the Laplacian; for ``hvp``
  the operator's own ``reverse`` and ``taylor``),
* the plain torch.func call each torch.func method stands for:
  ``vmap(jacfwd^k)``, ``vmap(jacrev)`` / ``vmap(hessian)`` (``jacfwd`` over
  ``jacrev`` above order 1), ``vmap(jacfwd^(k-1)(jacrev))``; for ``hvp``
  ``vmap(vmap(jvp(jacrev)))`` over samples and vectors.

Targets (issue 12): auto / best forced <= 1.2 in every cell; every forced
torch.func method <= 1.5x its torch.func counterpart. Each row runs on slices
of 4, 16, 64... samples until one takes half of --budget seconds: a row that
does not reach the whole batch is scaled linearly from its last slice (marked
``~``; the per-call constant makes that an overestimate). A pair past its
target is timed again, both sides interleaved, and each keeps its best. Cells whose result
for 4 samples would be more than --max-numbers numbers are skipped and listed.
A single call that runs past --call-cap seconds is stopped (an interval timer
raises between the ops of the traced pass): the row is marked ``>`` with the
lower bound it implies for the whole batch, and its pairs are not counted.

Usage:
  .venv/bin/python bench/shape_grid.py            # the whole grid (about 15-25 min on 2 CPU cores)
  .venv/bin/python bench/shape_grid.py --quick    # D in 1, 3, 50; M in 1, 150; about 2 min
  .venv/bin/python bench/shape_grid.py --dims 50,200 --outs 1 --quantities hessian,laplacian
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import signal
import sys
import time

import torch
from torch.func import jacfwd, jacrev, jvp, vmap

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from timing import no_gc_pause  # bench/timing.py

from pipeline.engine import chunking, compute_derivatives
from pipeline.engine.hvp import hvp

QUANTITY_ORDER = {"jacobian": 1, "hessian": 2, "laplacian": 2, "d3": 3, "hvp": 2}
FORCED = ("taylor", "forward", "reverse", "forward-over-reverse")
TORCH_FUNC = {"forward": "tf forward", "reverse": "tf reverse", "forward-over-reverse": "tf fwd-over-rev"}


class Scalar(torch.nn.Module):
    """``[1] -> []``: a scalar output per sample."""

    def forward(self, y):
        return y.squeeze(-1)


def make_net(d: int, m: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, m)]
    net = torch.nn.Sequential(*layers)
    if m == 1:
        net.append(Scalar())
    return net.requires_grad_(False)


def torch_func_call(net, x, quantity: str, method: str, v=None):
    """The plain torch.func call a forced ``method`` stands for."""
    order = QUANTITY_ORDER[quantity]
    if quantity == "hvp":
        return vmap(lambda xi, vs: vmap(lambda vj: jvp(jacrev(net), (xi,), (vj,))[1])(vs))(x, v)
    if method == "forward":
        f = net
        for _ in range(order):
            f = jacfwd(f)
    else:
        f = jacrev(net)
        for _ in range(order - 1):
            f = jacfwd(f)
    out = vmap(f)(x)
    if quantity == "laplacian":
        return out.diagonal(dim1=-2, dim2=-1).sum(-1)
    return out


def rows_for(quantity: str) -> list[str]:
    if quantity == "hvp":
        return ["auto", "reverse", "taylor", "tf fwd-over-rev"]
    rows = ["auto", *FORCED] + (["collapsed"] if quantity == "laplacian" else [])
    if quantity == "jacobian":  # reverse and forward-over-reverse are both vmap(jacrev) at order 1
        return [r for r in rows if r != "forward-over-reverse"] + ["tf forward", "tf reverse"]
    return rows + list(TORCH_FUNC.values())


def run_row(row: str, net, x, quantity: str, v):
    if row.startswith("tf "):
        method = {label: m for m, label in TORCH_FUNC.items()}[row]
        return torch_func_call(net, x, quantity, method, v), None
    if quantity == "hvp":
        return hvp(net, x, v, method=row), None
    result = compute_derivatives(net, x, (quantity,), method=row)
    return result.outputs[quantity], result.method


class CallCap(BaseException):
    """A timed call ran past ``--call-cap`` (a BaseException: the engine's ``except Exception`` fallbacks let it by)."""


CALL_CAP = 60.0  # seconds; main() sets it from --call-cap


def _stop(signum, frame):
    raise CallCap


def time_row(row, net, x, quantity, v, budget, max_size=None):
    """(seconds for all N, mark, chosen method).

    A warm-up (256 and 64 samples for auto, 4 for the others), then slices of 4, 16, 64... samples until one takes
    half the budget or the whole batch is reached, Python's cyclic GC off while timed (then the best of up to 7 runs
    while they add up to less than half the budget); a row that stops short (or whose batch is predicted past 10x the
    budget) is scaled linearly from its last slice (``~``). ``max_size`` caps the slice (what fits in memory).
    """
    n = x.shape[0]
    largest = n if max_size is None else max(1, min(n, max_size))

    def timed(size):
        with no_gc_pause(collect=False):  # collected once per row, below: a full collection takes ~0.1 s
            previous = signal.signal(signal.SIGALRM, _stop)
            signal.setitimer(signal.ITIMER_REAL, CALL_CAP)
            try:
                start = time.perf_counter()
                _, chosen = run_row(row, net, x[:size], quantity, None if v is None else v[:size])
                return time.perf_counter() - start, chosen
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)

    gc.collect()
    # warm-up: trace and footprint (4 samples), and auto's one-time timing of close candidates, on the
    # 256 samples a batch of that size or more is timed on (a smaller batch is timed on itself)
    size = min(largest, 4)
    try:
        timed(min(largest, 256 if row == "auto" else 4))
    except CallCap:
        gc.collect()
        return CALL_CAP * n / size, ">", None
    if row == "auto" and n > 64:
        timed(64)
    while True:
        try:
            seconds, chosen = timed(size)
        except CallCap:
            gc.collect()
            return CALL_CAP * n / size, ">", None
        if size == n:
            spent, runs = seconds, 1
            while runs < 7 and spent < budget / 2:  # fast rows: the best of up to 7 runs
                again = timed(n)[0]
                seconds, spent, runs = min(seconds, again), spent + again, runs + 1
            return seconds, "", chosen
        predicted = seconds * n / size
        if seconds > budget / 2 or (predicted > 10 * budget and seconds > budget / 20) or size == largest:
            return predicted, "~", chosen
        size = min(largest, size * 4)


def result_numbers(quantity: str, d: int, m: int) -> int:
    if quantity == "laplacian":
        return m
    if quantity == "hvp":
        return m * d
    return m * d ** QUANTITY_ORDER[quantity]


def cell(d, m, quantity, args):
    per_sample = result_numbers(quantity, d, m)
    n = min(args.n, args.max_numbers // per_sample)
    if n < 4:
        return None
    torch.manual_seed(1)
    net, x = make_net(d, m), torch.randn(n, d)
    v = torch.randn(n, 1, d) if quantity == "hvp" else None
    times, marks, chosen = {}, {}, None
    hessian_numbers = m * d * d if quantity == "laplacian" else 0  # what the torch.func rows form per sample
    for row in rows_for(quantity):
        if (row in TORCH_FUNC or row.startswith("tf ")) and 4 * hessian_numbers > args.max_numbers:
            times[row], marks[row] = math.nan, "skipped: Hessian"
            continue
        fits = plain_call_fits(net, row)
        if fits is not None and fits < min(n, 4):
            times[row], marks[row] = math.nan, "skipped: memory"
            continue
        try:
            seconds, mark, method = time_row(row, net, x, quantity, v, args.budget, fits)
        except (RuntimeError, ValueError) as error:  # a method the engine refuses, or out of memory
            times[row], marks[row] = math.nan, f"error: {type(error).__name__}"
            sys.stderr.write(f"  D={d} M={m} {quantity} {row}: {str(error)[:120]}\n")
            continue
        times[row], marks[row] = seconds, mark
        if row == "auto":
            chosen = method or "?"
    recheck(times, marks, net, x, quantity, v, args.budget)
    return n, times, marks, chosen


def plain_call_fits(net, row):
    """Samples a plain torch.func row may take at once: the free memory over what the engine measured for one
    sample of the same method (its rows run first), or None when nothing was measured. A plain vmapped call has
    no chunking: on CPU a call past the free memory is the kernel's kill, not an error."""
    if not row.startswith("tf "):
        return None
    method = {label: m for m, label in TORCH_FUNC.items()}[row]
    measured = [
        b for key, b in chunking.FOOTPRINTS.entries(net).items() if len(key) > 2 and key[2] in (method, "hvp-reverse")
    ]
    if not measured:
        return None
    return int(chunking.available_bytes(torch.device("cpu")) // max(measured))


def recheck(times, marks, net, x, quantity, v, budget):
    """Time both sides of a missed target again, interleaved, and keep each side's best.

    On this VM single timings vary by up to 30% from run to run, and slowly
    (a row timed a minute after another can run 1.2x slower as a whole): a pair
    past its target (auto vs the best forced method, a forced method vs its
    torch.func call) is timed again in alternation, both sides on the whole
    batch, up to 5 rounds while the rounds take less than 4x --budget, so that a
    miss is a measured one. Rows scaled from a slice (``~``) are left as they are.
    """

    def interleaved(a, b):
        rows = [r for r in (a, b) if marks.get(r) == "" and not math.isnan(times[r])]
        if len(rows) < 2:
            return
        spent = 0.0
        for _ in range(5):
            for row in rows:
                gc.collect()
                with no_gc_pause(collect=False):
                    start = time.perf_counter()
                    run_row(row, net, x, quantity, v)
                    seconds = time.perf_counter() - start
                times[row] = min(times[row], seconds)
                spent += seconds
            if spent > 4 * budget:
                break

    forced = [r for r in times if r != "auto" and not r.startswith("tf ") and not math.isnan(times[r])]
    if forced and "auto" in times and not math.isnan(times["auto"]):
        best = min(forced, key=times.get)
        if times["auto"] > 1.2 * times[best]:
            interleaved("auto", best)
    for method, label in TORCH_FUNC.items():
        mine = "reverse" if quantity == "hvp" and label == "tf fwd-over-rev" else method
        if label in times and mine in times and not math.isnan(times[mine]) and times[mine] > 1.5 * times[label]:
            interleaved(mine, label)


def fmt(seconds, mark):
    if mark.startswith(("error", "skipped")):
        return mark
    return f"{mark}{seconds * 1e3:.1f}" if seconds < 100 else f"{mark}{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="D in 1, 3, 50 and M in 1, 150, budget 1 s")
    parser.add_argument("--dims", default="1,2,3,10,50,200,784")
    parser.add_argument("--outs", default="1,8,150,1000")
    parser.add_argument("--quantities", default="jacobian,hessian,laplacian,d3,hvp")
    parser.add_argument("--n", type=int, default=4096, help="samples per cell at most (default 4096)")
    parser.add_argument("--max-numbers", type=int, default=4_000_000, help="result numbers per cell at most")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per row before it is scaled from a slice")
    parser.add_argument("--call-cap", type=float, default=60.0, help="seconds one call may run before it is stopped")
    args = parser.parse_args()
    global CALL_CAP
    CALL_CAP = args.call_cap
    if args.quick:
        args.dims, args.outs, args.budget, args.n = "1,3,50", "1,150", 1.0, 256
    dims = [int(s) for s in args.dims.split(",")]
    outs = [int(s) for s in args.outs.split(",")]
    quantities = args.quantities.split(",")
    print(
        f"# Shape grid: tanh MLP D -> 64 -> 64 -> M, float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; times in ms for N samples\n"
    )
    worst_auto, worst_forced, skipped = [], [], []
    for quantity in quantities:
        rows = rows_for(quantity)
        print(f"\n## {quantity}\n")
        print("| D | M | N | " + " | ".join(rows) + " | auto chose | auto / best forced | forced / torch.func |")
        print("|" + "---:|" * 3 + "---:|" * len(rows) + "---|---:|---|")
        for d in dims:
            for m in outs:
                got = cell(d, m, quantity, args)
                if got is None:
                    skipped.append(f"{quantity} D={d} M={m}")
                    continue
                n, times, marks, chosen = got
                forced = {
                    r: t
                    for r, t in times.items()
                    if r not in ("auto",) and not r.startswith("tf ") and not math.isnan(t)
                }
                best_row = min(forced, key=forced.get)
                ratio = times["auto"] / forced[best_row]
                worst_auto.append((ratio, f"{quantity} D={d} M={m}"))
                pairs = []
                for method, label in TORCH_FUNC.items():
                    mine = "reverse" if quantity == "hvp" and label == "tf fwd-over-rev" else method
                    capped = ">" in (marks.get(label), marks.get(mine))  # a lower bound: no ratio
                    if (
                        label in times
                        and mine in times
                        and not math.isnan(times[mine])
                        and times[label] > 0
                        and not capped
                    ):
                        r = times[mine] / times[label]
                        pairs.append(f"{mine} {r:.2f}")
                        scaled = "~" in (marks[label], marks[mine])  # a side scaled from a slice
                        worst_forced.append((r, f"{quantity} D={d} M={m} {mine}" + (" (~)" if scaled else ""), scaled))
                print(
                    f"| {d} | {m} | {n} | "
                    + " | ".join(fmt(times[r], marks[r]) for r in rows)
                    + f" | {chosen} | {ratio:.2f} ({best_row}) | {', '.join(pairs)} |",
                    flush=True,
                )
    print("\n## Summary\n")
    if worst_auto:
        worst_auto.sort(reverse=True)
        within = sum(r <= 1.2 for r, _ in worst_auto)
        print(
            f"- auto within 1.2x of the best forced method: {within} of {len(worst_auto)} cells; "
            f"worst: " + "; ".join(f"{name} {r:.2f}" for r, name in worst_auto[:5])
        )
    if worst_forced:
        worst_forced.sort(reverse=True)
        within = sum(r <= 1.5 for r, _, _ in worst_forced)
        print(
            f"- forced torch.func methods within 1.5x of their torch.func call: {within} of {len(worst_forced)}; "
            f"worst: " + "; ".join(f"{name} {r:.2f}" for r, name, _ in worst_forced[:5])
        )
        timed = [(r, name) for r, name, scaled in worst_forced if not scaled]
        print(
            f"  - both sides timed on the whole batch: {sum(r <= 1.5 for r, _ in timed)} of {len(timed)}; worst: "
            + "; ".join(f"{name} {r:.2f}" for r, name in timed[:3])
        )
    if skipped:
        print(f"- skipped (result over {args.max_numbers:,} numbers for 4 samples): {', '.join(skipped)}")
    print(
        "- `~`: scaled linearly from the largest slice timed; `skipped: Hessian`: a torch.func Laplacian forms "
        "the full Hessian, over --max-numbers numbers for 4 samples; `>`: one call ran past --call-cap "
        f"({CALL_CAP:.0f} s) and was stopped, the figure is the lower bound it gives for N samples."
    )


if __name__ == "__main__":
    main()
