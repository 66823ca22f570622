#!/usr/bin/env bash
# Train on ImageNet-1K with torchrun (published: 8 GPUs x 64 = effective batch 512, lr = blr x 512 / 256).
#   bash imagenet/train.sh                                        # 10_768_t4 on the 8 GPUs of this node
#   CONFIG=10_384_t4 GPUS=4 bash imagenet/train.sh --accum-steps 2   # 4 GPUs x 64 x 2 = 512
#   bash imagenet/train.sh --resume auto                          # extra flags go to train.py
# Multi-node (run on every node, NODE_RANK 0..NNODES-1, MASTER_ADDR = node 0's address):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 bash imagenet/train.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-10_768_t4}"
GPUS="${GPUS:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
cd "$ROOT"
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train.py -c "$HERE/$CONFIG.yaml" "$@"
