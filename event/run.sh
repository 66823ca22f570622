#!/usr/bin/env bash
# Train Max-Former on the event datasets with the published recipes (paper Table 2: 84.2 / 98.6 %).
#   bash event/run.sh                                     # CIFAR10-DVS
#   CONFIG=dvsgesture bash event/run.sh                   # DVS128 Gesture
#   bash event/run.sh --model ms_qkformer_dvs --resume auto   # extra flags go to train.py
#   NPROC=2 bash event/run.sh --batch-size 8              # 2 GPUs x 8 = the published batch 16
# Prepare the frames first: python -m utils.tools.prepare_data --dataset cifar10dvs (see README).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
NPROC="${NPROC:-1}"
CONFIG="${CONFIG:-cifar10dvs}"
cd "$ROOT"
if [ "$NPROC" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py -c "$HERE/$CONFIG.yaml" "$@"
fi
exec "$PYTHON" train.py -c "$HERE/$CONFIG.yaml" "$@"
