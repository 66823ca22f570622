#!/usr/bin/env bash
# Every CIFAR-100 ablation config (paper Tables 4 and 7: 29 configs) as one sweep of utils.tools.sweep.
#   bash cifar10-100/ablations/run_all.sh --seeds 0 1 2                        # this machine, one run after another
#   bash cifar10-100/ablations/run_all.sh --seeds 0 1 2 --parallel 4 --gpus-per-run 1   # a 4-GPU box
#   bash cifar10-100/ablations/run_all.sh --seeds 0 1 2 --launcher slurm --partition gpu --gpus-per-run 1
#   bash cifar10-100/ablations/run_all.sh --seeds 0 --dry-run -- --epochs 10   # after --: train.py overrides
#   OUTPUT=runs/c100 bash cifar10-100/ablations/run_all.sh ...                 # sweep folder (default below)
# Running it again skips finished runs and continues the others. Then:
#   python -m utils.tools.sweep --status output/c100_ablations
#   python -m utils.analysis.tables runs --runs output/c100_ablations --table 4   (or --table 7)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
OUTPUT="${OUTPUT:-output/c100_ablations}"
cd "$ROOT"
exec "$PYTHON" -m utils.tools.sweep "$HERE"/*.yaml --output "$OUTPUT" "$@"
