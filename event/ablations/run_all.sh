#!/usr/bin/env bash
# Every CIFAR10-DVS ablation config (paper Table 4, event rows: 8 configs) as one sweep of utils.tools.sweep.
#   bash event/ablations/run_all.sh --seeds 0 1 2                        # this machine, one run after another
#   bash event/ablations/run_all.sh --seeds 0 1 2 --parallel 4 --gpus-per-run 1     # a 4-GPU box
#   bash event/ablations/run_all.sh --seeds 0 1 2 --launcher slurm --partition gpu --gpus-per-run 1
#   bash event/ablations/run_all.sh --seeds 0 --dry-run -- --epochs 10   # after --: train.py overrides
#   OUTPUT=runs/c10dvs bash event/ablations/run_all.sh ...                 # sweep folder (default below)
# Running it again skips finished runs and continues the others. Then:
#   python -m utils.tools.sweep --status output/c10dvs_ablations
#   python -m utils.analysis.tables runs --runs output/c10dvs_ablations --table 4
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUTPUT="${OUTPUT:-output/c10dvs_ablations}"
cd "$ROOT"
exec "$PYTHON" -m utils.tools.sweep "$HERE"/*.yaml --output "$OUTPUT" "$@"
