#!/usr/bin/env bash
# Evaluate a checkpoint (ours or the authors' released files) on the ImageNet-1K validation set.
#   bash imagenet/test.sh                                         # 10_768_t4 with checkpoints/10-768-T4.pth.tar
#   CONFIG=10_512_t1 CKPT=imagenet/checkpoints/10-512-T1.pth.tar bash imagenet/test.sh
#   GPUS=8 bash imagenet/test.sh --results-file results.json     # extra flags go to validate.py
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-10_768_t4}"
CKPT="${CKPT:-$HERE/checkpoints/10-768-T4.pth.tar}"
GPUS="${GPUS:-1}"
cd "$ROOT"
if [ "$GPUS" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" validate.py -c "$HERE/$CONFIG.yaml" \
    --checkpoint "$CKPT" "$@"
fi
exec "$PYTHON" validate.py -c "$HERE/$CONFIG.yaml" --checkpoint "$CKPT" "$@"
