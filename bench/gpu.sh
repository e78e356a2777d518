#!/usr/bin/env bash
# Every GPU measurement in one call, for a session that has the lent GPU machine.
#
# Here (once):   ../shared/tools/device-bundle.sh          # builds .devbundle/ (Ray, Zarr, pydantic)
# Then run it with the device tool, carrying .devbundle:
#   run(command="bash bench/gpu.sh", carry=[".devbundle"])
# Output tables go to $OUT/*.txt (and stdout); copy them into BENCHMARKS.md with the device named.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .devbundle/site.tar.xz ]; then
  mkdir -p .devbundle/site && tar xJf .devbundle/site.tar.xz -C .devbundle/site
  export PYTHONPATH=$PWD/.devbundle/site:$PWD:${PYTHONPATH:-}
else
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
python bench/derivatives.py --device cuda 2>&1 | tee "$OUT/derivatives.txt"
python bench/sweeps.py --device cuda 2>&1 | tee "$OUT/sweeps.txt"
python bench/sweeps.py --device cuda --sensitivities 2>&1 | tee "$OUT/sensitivities.txt"
python bench/store.py 2>&1 | tee "$OUT/store.txt"
# End to end on Ray with the GPU: the seed-000 job at 1e6 samples.
python -m pipeline.cli submit jobs/seed000.yaml --local --quiet --set inputs.n=1000000 \
  --set store.path="$OUT/seed000.zarr" 2>&1 | tee "$OUT/submit.txt"
python -m pipeline.cli inspect "$OUT/seed000.zarr" 2>&1 | tee -a "$OUT/submit.txt"
rm -rf "$OUT/seed000.zarr"
