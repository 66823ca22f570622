#!/usr/bin/env bash
# Train on ImageNet-1K with torchrun (published: 8 GPUs x 64 = effective batch 512, lr = blr x 512 / 256).
#   bash imagenet/train.sh                                        # 10_768_t4 on the 8 GPUs of this node
#   CONFIG=10_384_t4 GPUS=4 bash imagenet/train.sh --accum-steps 2   # 4 GPUs x 64 x 2 = 512
#   bash imagenet/train.sh --resume auto                          # extra flags go to train.py
# Many nodes (docs/training.md, "Many nodes"): the same command on every node, torchrun's c10d rendezvous on
# RDZV_HOST (node 0's address as the others reach it). The effective batch grows with the nodes:
# 2 nodes x 8 GPUs x 64 = 1024 (lr follows blr); keep 512 with --batch-size 32.
#   NNODES=2 RDZV_HOST=10.0.0.1 RUN_ID=t4-run1 GPUS=8 bash imagenet/train.sh --batch-size 32
# Optional: RDZV_PORT (29400); LOCAL_ADDR (this node's address on the network the nodes share: pass it where
# host names lead elsewhere, with NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME); NODE_RANK=0 on the node that hosts
# the rendezvous when RDZV_HOST is not its host name or main address; MAX_RESTARTS (3: failed workers restart
# and continue from the last checkpoint). RUN_ID: the same on every node, new for each launch (default: the
# SLURM job id).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-10_768_t4}"
GPUS="${GPUS:-8}"
NNODES="${NNODES:-1}"
cd "$ROOT"
if [ "$NNODES" -le 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" train.py -c "$HERE/$CONFIG.yaml" "$@"
fi
RDZV_HOST="${RDZV_HOST:-${MASTER_ADDR:-}}"
RUN_ID="${RUN_ID:-${SLURM_JOB_ID:-}}"
if [ -z "$RDZV_HOST" ] || [ -z "$RUN_ID" ]; then
  echo "error: NNODES=$NNODES needs RDZV_HOST (node 0's address, the same on every node) and RUN_ID (the same on" \
       "every node, new for each launch, e.g. RUN_ID=t4-run1)" >&2
  exit 2
fi
ARGS=(--nnodes "$NNODES" --nproc_per_node "$GPUS" --rdzv-backend c10d
      --rdzv-endpoint "$RDZV_HOST:${RDZV_PORT:-29400}" --rdzv-id "$RUN_ID" --max-restarts "${MAX_RESTARTS:-3}")
if [ -n "${LOCAL_ADDR:-}" ]; then ARGS+=(--local-addr "$LOCAL_ADDR"); fi
if [ "${NODE_RANK:-}" = 0 ]; then ARGS+=(--rdzv-conf is_host=1); fi
# each attempt (after a restart) gets a fresh store: the shared one can hold the previous attempt's addresses
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
exec "$PYTHON" -m torch.distributed.run "${ARGS[@]}" train.py -c "$HERE/$CONFIG.yaml" "$@"
