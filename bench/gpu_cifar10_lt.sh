#!/usr/bin/env bash
# The GPU check of the CIFAR-10-LT reproduction, as one script for a lent GPU machine (nothing is installed there:
# its own torch/torchvision/timm run the project from source).
#
# Before, on a machine with the data (the packed ratio-50 subset also serves ratios 100 and 200, ~42 MiB):
#   python bench/pack_cifar_lt.py ../shared/data/cifar10/cifar10.zip .gpu/cifar10_lt50.zip --imb-ratio 50
# Then run this script there with `.gpu` carried; OUT names the folder whose contents come back.
#   STEPS=0 JOBS=6 bash bench/gpu_cifar10_lt.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/gpu}
DATA=${DATA:-.gpu/cifar10_lt50.zip}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python bench/train_speed.py --data-root "$DATA" --steps "${STEPS:-0}" --workers 8 ${COMPILE:+--compile} \
    --full-recipe --out "$OUT/train_speed_cuda.json" 2>&1 | tee "$OUT/train_speed.log"
python bench/reproduce_cifar10_lt.py --data-root "$DATA" --jobs "${JOBS:-6}" ${COMPILE:+--compile} \
    --out-dir /tmp/repro --out "$OUT/reproduce_cifar10_lt.json" 2>&1 | tee "$OUT/reproduce.log"
