#!/usr/bin/env bash
# The GPU measurements of the open issues, in parts that each fit one call of the device tool.
#
# ---------------------------------------------------------------- ONE call (the default part: one)
#   run(command="bash bench/gpu.sh", carry=[".devbundle"], timeout_s=600)
# ends by itself within 9 minutes (GPU_CALL_LIMIT, default 530 s), most important rows first, every
# row written to $OUT/<part>.txt as it finishes: seed-000 J+H ours vs JAX at 1e5 and 1e6, W2 at 1e6,
# the rte1d sweep ours vs the seed's vmap at 8192 cases, one end-to-end job (1e6 samples on the GPU)
# with one writer thread and again with 8 (execution.cpus_per_task=8),
# then, as time allows: store writes (short and sustained), end-to-end rows, sensitivities, derivatives at 1e4, compile.
# Dry run here (a test of the suite runs it): GPU_CALL_LIMIT=50 bash bench/gpu.sh --device cpu --quick one
#
# ---------------------------------------------------------------- what the GPU session runs (older plan)
# Here, once (needs PyPI; ~40 MB, travels with every call):
#     ../shared/tools/device-bundle.sh        # -> .devbundle/site.tar.xz (Ray, Zarr, pydantic for Python 3.12)
# Then three calls, back to back. The machine stays warm only ~30 s after a call and a cold start
# costs minutes of the 30-minute device budget: send each call as soon as the last one returns,
# read the tables afterwards (each call's files come back with its own reply).
#   1. run(command="bash bench/gpu.sh derivatives", carry=[".devbundle"], timeout_s=600)
#        ~7 min (+ the machine's start on this first call). seed-000 and W2 at N=1e6 (one process,
#        stops starting rows at 270 s), then at N=1e4 and 1e5 (another, 230 s). Rows run ours and
#        JAX first, the slow baselines last, each time-boxed at 20 s (bench/derivatives.py).
#   2. run(command="bash bench/gpu.sh store end-to-end sweeps sensitivities", carry=[".devbundle"], timeout_s=600)
#        ~5-8 min: store writes (~0.5), a job's shards vs compute alone vs writes alone (~1-2,
#        capped at 120 s), sweeps at 4..8192 cases (~1.5-3, mostly torch.compile of the rte1d
#        step), sensitivities at 64/1024/8192 cases (~1.5-2.5).
#   3. run(command="bash bench/gpu.sh e2e compile e2e-shared compile-w2", carry=[".devbundle"], timeout_s=600)
#        ~4-9 min: the seed-000 Ray job at 1e6 samples (~1-2), ours with compile=True on seed-000
#        at 1e6 (compile time on a GPU unknown; capped at what is left), then, only if enough of
#        the call is left, the job with 4 tasks sharing the GPU (150 s) and W2 compiled (240 s).
#        If status() shows less than ~11 min of device time left before this call, prefix the
#        command with GPU_CALL_LIMIT=<budget_left_s - 90> so its steps end before the tool's cut.
# Expected in all: ~18-22 min of device time with the start, ~8 min margin for one cold restart.
# Every call stops its own steps by 560 s (GPU_CALL_LIMIT), so the tool's 600 s kill never hits;
# each step runs under `timeout` (SIGINT, then SIGKILL): one that crashes or is cut off keeps
# what it printed, and the next step still runs.
# What comes back: $OUT/device.txt (GPU, versions, imports) and one $OUT/<part>.txt per part:
# Markdown tables, plus one progress line per finished row. Copy the tables into BENCHMARKS.md
# with the device named. A part can be re-run alone: check, derivatives, derivatives-1e6,
# derivatives-small, store, end-to-end, sweeps, sensitivities, e2e, e2e-shared, compile, compile-w2, or all
# (every part in one call: only with GPU_CALL_LIMIT raised, on a machine without the 10-minute cap).
#
# ---------------------------------------------------------------- dry run (CPU, here)
#     PYTHON=.venv/bin/python bash bench/gpu.sh --device cpu --quick all    # ~2-3 min on 2 cores
# Every step on tiny sizes (the `tiny` MLP, 4 and 16 cases, a 20,000-sample job), output in
# /tmp/gpu-bench unless $OUT is set. (--device cpu without --quick runs full CPU sizes: long.)
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
QUICK=0
PARTS=()
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) PARTS+=("$1"); shift ;;
  esac
done
[ ${#PARTS[@]} -gt 0 ] || PARTS=(one)

PY=${PYTHON:-python3}  # the GPU image's python3 is the one with torch
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
if [ "$QUICK" = 1 ] || [ "$DEVICE" = cpu ]; then CALL_LIMIT=${GPU_CALL_LIMIT:-100000}; else CALL_LIMIT=${GPU_CALL_LIMIT:-530}; fi
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX shares the GPU with torch: no 75% grab at its first use
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0

# The bundle is unpacked once per content into /tmp (the machine keeps /tmp while warm; the carried
# .devbundle is replaced on every call): a second call with the same tarball skips the unpack, and an
# unpack cut short is never used (it is renamed into place only when complete).
if [ -f .devbundle/site.tar.xz ]; then
  site=/tmp/devbundle-$(sha256sum .devbundle/site.tar.xz | cut -c1-16)
  if [ ! -f "$site/.unpacked" ]; then
    rm -rf "$site.partial" && mkdir -p "$site.partial" \
      && tar xJf .devbundle/site.tar.xz -C "$site.partial" && touch "$site.partial/.unpacked" \
      && rm -rf "$site" && mv "$site.partial" "$site" \
      || echo "warning: unpacking .devbundle/site.tar.xz failed" >&2
  fi
  export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

left() { echo $((CALL_LIMIT - SECONDS)); }
cap() {  # cap MAX: MAX seconds, or what is left of the call if less
  local l; l=$(left); echo $(($1 < l ? $1 : l))
}
# step FILE CAP COMMAND...: run COMMAND stopped after CAP seconds (SIGINT, then SIGKILL 15 s later),
# its output appended to $OUT/FILE.txt and shown; whatever it does, the call goes on.
step() {
  local file=$1 limit=$2 began=$SECONDS rc; shift 2
  if [ "$limit" -lt 20 ]; then
    echo "## skipped (the call's ${CALL_LIMIT} s are nearly used up): $*" | tee -a "$OUT/$file.txt"
    return 0
  fi
  echo "## $(date -u +%H:%M:%S) cap ${limit}s: $*" | tee -a "$OUT/$file.txt"
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$file.txt"
  rc=${PIPESTATUS[0]}
  echo "## exit $rc after $((SECONDS - began)) s$([ "$rc" = 124 ] && echo ", stopped at its ${limit} s cap")" \
    | tee -a "$OUT/$file.txt"
  echo | tee -a "$OUT/$file.txt"
}

part_check() {
  {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    "$PY" - <<'EOF'
import importlib, os, sys, warnings
warnings.simplefilter("ignore")
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "jax", "ray", "zarr", "numcodecs", "pydantic", "pyarrow", "xarray", "click", "rich", "yaml", "pipeline"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')} ({os.path.dirname(module.__file__)})")
    except Exception as error:  # noqa: BLE001
        print(f"  MISSING {name}: {type(error).__name__}: {error}")
import torch
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print(f"torch {torch.__version__}: {torch.cuda.get_device_name()}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
else:
    print(f"torch {torch.__version__}: no CUDA device")
try:
    import jax
    print("jax devices:", jax.devices())
except Exception as error:  # noqa: BLE001
    print(f"jax: {type(error).__name__}: {error}")
EOF
  } 2>&1 | tee -a "$OUT/device.txt"
}

if [ "$QUICK" = 1 ]; then
  DERIV=(--quick --workload tiny)
else
  DERIV=()
fi

part_derivatives_1e6() {
  local c; c=$(cap 300)
  if [ "$QUICK" = 1 ]; then
    step derivatives "$c" "$PY" bench/derivatives.py --device "$DEVICE" "${DERIV[@]}" --n 512 --deadline $((c - 30))
  else
    step derivatives "$c" "$PY" bench/derivatives.py --device "$DEVICE" --n 1e6 --deadline $((c - 30))
  fi
}

part_derivatives_small() {
  local c; c=$(cap 260)
  if [ "$QUICK" = 1 ]; then
    step derivatives "$c" "$PY" bench/derivatives.py --device "$DEVICE" "${DERIV[@]}" --n 64 128 --deadline $((c - 30))
  else
    step derivatives "$c" "$PY" bench/derivatives.py --device "$DEVICE" --n 1e4 1e5 --deadline $((c - 30))
  fi
}

part_store() {
  if [ "$QUICK" = 1 ]; then
    step store "$(cap 120)" "$PY" bench/store.py --n 8192 --repeat 1 --sustained-gb 0.05
  else
    step store "$(cap 120)" "$PY" bench/store.py
    # long writes (8 GB, far more than a burst): page cache vs O_DIRECT, with the machine's CPU per GB
    step store "$(cap 120)" "$PY" bench/store.py --no-short --sustained-gb 8 --s3-n 0
  fi
}

part_end_to_end() {  # a job's shards vs their compute alone vs their writes alone (bench/end_to_end.py)
  if [ "$QUICK" = 1 ]; then
    step end-to-end "$(cap 120)" "$PY" bench/end_to_end.py --device "$DEVICE" --n 8192 --cases 64 --repeats 1 --threads 1
  else
    step end-to-end "$(cap 120)" "$PY" bench/end_to_end.py --device "$DEVICE" --n 262144 --cases 2048 --repeats 2 --threads 4
  fi
}

part_sweeps() {
  local extra=(); [ "$QUICK" = 1 ] && extra=(--quick --threads 1)
  step sweeps "$(cap 300)" "$PY" bench/sweeps.py --device "$DEVICE" "${extra[@]}"
}

part_sensitivities() {
  local extra=(); [ "$QUICK" = 1 ] && extra=(--quick --threads 1)
  step sensitivities "$(cap 240)" "$PY" bench/sweeps.py --device "$DEVICE" --sensitivities "${extra[@]}"
}

# One job end to end: local Ray, the shards as tasks, the store; written under /tmp, never under
# $OUT (its thousands of chunk files must not travel back), removed afterwards.
e2e_job() {  # e2e_job LABEL CAP --set ...
  local label=$1 limit=$2 dir=${E2E_DIR:-/tmp/gpu-bench-e2e}; shift 2
  rm -rf "$dir" && mkdir -p "$dir"
  echo "### e2e: $label" | tee -a "$OUT/e2e.txt"
  # shellcheck disable=SC2086  # E2E_RUN is words: --local (default) or --executor inline (quick dry run)
  step e2e "$limit" "$PY" -m pipeline.cli submit jobs/seed000.yaml ${E2E_RUN:---local} --quiet \
    --set store.path="$dir/seed000.zarr" "$@"
  if [ -d "$dir/seed000.zarr" ]; then
    step e2e "$(cap 60)" "$PY" -m pipeline.cli inspect "$dir/seed000.zarr"
    du -sh "$dir/seed000.zarr" 2>&1 | tee -a "$OUT/e2e.txt"
  fi
  rm -rf "$dir"
}

E2E_N=1000000; [ "$QUICK" = 1 ] && E2E_N=20000
part_e2e() {
  if [ "$QUICK" = 1 ] || [ "$DEVICE" = cpu ]; then
    e2e_job "seed000.yaml, $E2E_N samples, CPU tasks" "$(cap 200)" --set inputs.n=$E2E_N --set execution.gpus_per_task=0
    return
  fi
  # gpus_per_task=1 named (not auto): if Ray sees no GPU the job fails at once instead of running on the CPU
  e2e_job "seed000.yaml, $E2E_N samples, one task per GPU" "$(cap 200)" \
    --set inputs.n=$E2E_N --set execution.gpus_per_task=1
}

part_e2e_shared() {  # optional: 4 tasks share the GPU, so one shard's write overlaps the others' compute
  if [ "$QUICK" = 1 ] || [ "$DEVICE" = cpu ]; then
    e2e_job "seed000.yaml, $E2E_N samples, 2 CPUs per task" "$(cap 200)" --set inputs.n=$E2E_N \
      --set execution.gpus_per_task=0 --set execution.cpus_per_task=2
  elif [ "$(left)" -ge 150 ]; then
    e2e_job "seed000.yaml, $E2E_N samples, 4 tasks sharing the GPU" "$(cap 150)" \
      --set inputs.n=$E2E_N --set execution.gpus_per_task=0.25
  else
    echo "## e2e-shared skipped: less than 150 s left in the call" | tee -a "$OUT/e2e.txt"
  fi
}

# ours with compile=True: one compile per chunk shape, its time unknown on a GPU (161 s for W2 on
# the 2-core CPU): capped at what is left of the call; a cut-off run still shows the eager row
part_compile() {
  if [ "$QUICK" = 1 ]; then
    step compile "$(cap 300)" "$PY" bench/derivatives.py --device "$DEVICE" "${DERIV[@]}" --n 256 --rows taylor,compile
    return
  fi
  step compile "$(cap 330)" "$PY" bench/derivatives.py --device "$DEVICE" --workload seed-000 --n 1e6 \
    --rows taylor,compile
}

part_compile_w2() {  # optional, if 240 s are left
  if [ "$QUICK" = 1 ]; then
    echo "## compile-w2 skipped in quick mode (the compile part covers the code)" | tee -a "$OUT/compile.txt"
  elif [ "$(left)" -ge 240 ]; then
    step compile "$(cap 330)" "$PY" bench/derivatives.py --device "$DEVICE" --workload W2 --n 1e6 --rows taylor,compile
  else
    echo "## compile-w2 skipped: less than 240 s left in the call" | tee -a "$OUT/compile.txt"
  fi
}

# one call, most important rows first; each step is capped so that the call ends by CALL_LIMIT
part_one() {
  if [ "$QUICK" = 1 ]; then
    step derivatives "$(cap 25)" "$PY" bench/derivatives.py --device "$DEVICE" --quick --workload tiny --n 64 \
      --rows taylor,jax --budget 1 --deadline 20
    step sweeps "$(cap 25)" "$PY" bench/sweeps.py --device "$DEVICE" --quick --threads 1 --cases 4 --loop-cases 1
    E2E_RUN="--executor inline" e2e_job "seed000.yaml, 2048 samples, CPU tasks" "$(cap 40)" --set inputs.n=2048 \
      --set execution.gpus_per_task=0 --set store.chunk_size=512 --set execution.shard_size=1024
    return
  fi
  step derivatives "$(cap 150)" "$PY" bench/derivatives.py --device "$DEVICE" --workload seed-000 --n 1e5 1e6 \
    --rows auto,jax --deadline 120
  step derivatives "$(cap 100)" "$PY" bench/derivatives.py --device "$DEVICE" --workload W2 --n 1e6 \
    --rows auto,jax --deadline 75
  step sweeps "$(cap 90)" "$PY" bench/sweeps.py --device "$DEVICE" --cases 8192 --repeats 1
  e2e_job "seed000.yaml, 1e6 samples, one task per GPU" "$(cap 120)" --set inputs.n=1000000 \
    --set execution.gpus_per_task=1
  # the same job writing each block's chunks with 8 threads (a task of 8 CPUs): the writes bound it on a GPU
  e2e_job "seed000.yaml, 1e6 samples, one task per GPU, 8 CPUs per task" "$(cap 120)" --set inputs.n=1000000 \
    --set execution.gpus_per_task=1 --set execution.cpus_per_task=8
  # then the rest, as time allows (each step skips itself when less than 20 s are left)
  part_store; part_end_to_end; part_sensitivities
  step derivatives "$(cap 120)" "$PY" bench/derivatives.py --device "$DEVICE" --n 1e4 --deadline 90
  part_compile
}

for part in "${PARTS[@]}"; do
  case $part in
    one|check|derivatives|derivatives-1e6|derivatives-small|store|end-to-end|sweeps|sensitivities|e2e|e2e-shared|compile|compile-w2|all) ;;
    *) echo "unknown part '$part'; see the top of bench/gpu.sh" >&2; exit 2 ;;
  esac
done
echo "## gpu.sh ${PARTS[*]} (device $DEVICE$([ "$QUICK" = 1 ] && echo ', quick'), call limit ${CALL_LIMIT} s, output in $OUT)"
part_check
for part in "${PARTS[@]}"; do
  case $part in
    check) ;;
    one) part_one ;;
    derivatives) part_derivatives_1e6; part_derivatives_small ;;
    derivatives-1e6) part_derivatives_1e6 ;;
    derivatives-small) part_derivatives_small ;;
    store) part_store ;;
    end-to-end) part_end_to_end ;;
    sweeps) part_sweeps ;;
    sensitivities) part_sensitivities ;;
    e2e) part_e2e ;;
    e2e-shared) part_e2e_shared ;;
    compile) part_compile ;;
    compile-w2) part_compile_w2 ;;
    all) part_derivatives_1e6; part_derivatives_small; part_store; part_end_to_end; part_sweeps; part_sensitivities; part_e2e
         part_compile; part_e2e_shared; part_compile_w2 ;;
  esac
done
echo "## done after ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
