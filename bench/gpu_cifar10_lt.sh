#!/usr/bin/env bash
# The GPU check of the CIFAR-10-LT reproduction, as one script for a lent GPU machine (nothing is installed there:
# its own torch/torchvision/timm run the project from source). Sized to end within 6 minutes: each part below has
# its own time limit. Each part writes its results under $OUT as it finishes (that folder comes back, and is
# emptied before each command); run folders live in $WORK, outside it, so a rerun on the same machine skips the
# finished parts, resumes the training runs a limit stopped (from their checkpoints) and starts the rest.
#
# Before, on a machine with the data (the packed ratio-50 subset also serves ratios 100 and 200, ~42 MiB; .gpu/ is
# ignored by git, so carry it):
#   python bench/pack_cifar_lt.py ../shared/data/cifar10/cifar10.zip .gpu/cifar10_lt50.zip --imb-ratio 50
# Then there, as often as the machine is lent (each call continues the last):
#   bash bench/gpu_cifar10_lt.sh
# Settings (environment): DEVICE (cuda), COMPILE=1 (torch.compile, timed against eager), JOBS (runs sharing the
# GPU, 2), RATIOS (100), SEEDS (0), the limits SPEED_LIMIT_S (100), FULL_LIMIT_S (100), REPRO_LIMIT_S (120), and
# SMOKE=1 (tiny runs: the CPU rehearsal in tests/test_gpu_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/gpu}
WORK=${WORK:-/tmp/gcl-zoo-gpu}
DATA=${DATA:-.gpu/cifar10_lt50.zip}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$WORK"
COMMON=(--data-root "$DATA" --device "$DEVICE" ${COMPILE:+--compile} ${SMOKE:+--smoke})

# the timings' results: taken from the last call's copy in $WORK before they run, copied back after
restore() { if [ -f "$WORK/$1" ]; then cp "$WORK/$1" "$OUT/$1"; fi; }
keep() { if [ -f "$OUT/$1" ]; then cp "$OUT/$1" "$WORK/$1"; fi; }
# run a part for at most $1 seconds, its output to the console and to $OUT/$2
limited() { local seconds=$1 log=$2; shift 2; timeout -k 10 "$seconds" "$@" 2>&1 | tee -a "$OUT/$log"; }
FULL_LIMIT_S=${FULL_LIMIT_S:-100}
REPRO_LIMIT_S=${REPRO_LIMIT_S:-120}
STOPPING_S=60  # the training parts stop their runs at their limit themselves; this is the backstop's margin

# 1. the machine (seconds)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c 'import torch, torchvision, timm; print("torch", torch.__version__, "torchvision", torchvision.__version__,
"timm", timm.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'
} > "$OUT/machine.txt" 2>&1

# 2. seconds per epoch: the authors' DataLoader pipeline against the fast path (and compiled against eager); each
#    timing is written as it finishes, so the limit loses at most the one under way
restore train_speed.json
limited "${SPEED_LIMIT_S:-100}" train_speed.log python bench/train_speed.py "${COMMON[@]}" \
    --steps "${SPEED_STEPS:-0}" --warmup "${SPEED_WARMUP:-10}" --workers "${WORKERS:-8}" --out "$OUT/train_speed.json"
keep train_speed.json

# 3. the whole 200 + 30 epoch GCL recipe alone on the GPU (target: 60 s), stopped with a checkpoint at the limit
limited $((FULL_LIMIT_S + STOPPING_S)) reproduce.log python bench/reproduce_cifar10_lt.py "${COMMON[@]}" \
    --methods gcl --ratios 100 --seeds 0 --jobs 1 --time-limit "$FULL_LIMIT_S" --out-dir "$WORK/runs" \
    --out "$OUT/full_recipe.json"

# 4. the table: the CE + mixup baselines beside it (GCL at other ratios and seeds with RATIOS/SEEDS), several runs
#    sharing the GPU; finished runs (the one above) are read back from their folders, not run again
limited $((REPRO_LIMIT_S + STOPPING_S)) reproduce.log python bench/reproduce_cifar10_lt.py "${COMMON[@]}" \
    --ratios ${RATIOS:-100} --seeds ${SEEDS:-0} --jobs "${JOBS:-2}" --time-limit "$REPRO_LIMIT_S" \
    --out-dir "$WORK/runs" --out "$OUT/reproduce_cifar10_lt.json"
