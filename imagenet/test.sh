#!/usr/bin/env bash
# Evaluate a checkpoint (ours or the authors' released files) on the ImageNet-1K validation set.
#   bash imagenet/test.sh                                          # 10_768_t4 with checkpoints/10-768-T4.pth.tar
#   CKPT=imagenet/checkpoints/10-512-T1.pth.tar bash imagenet/test.sh   # config from a released file's name
#   CONFIG=10_512_t1 CKPT=output/imagenet_10_512_t1/best.pth.tar bash imagenet/test.sh
#   GPUS=8 bash imagenet/test.sh --results-file results.json      # extra flags go to validate.py
# The released files carry older parameter names; they are converted on loading (docs/checkpoints.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
CKPT="${CKPT:-$HERE/checkpoints/10-768-T4.pth.tar}"
if [ -z "${CONFIG:-}" ]; then
  # released names: 10-512-T1 -> 10_512_t1, ms_qk_10-384_T4 -> ms_qkformer_10_384_t4
  base="$(basename "$CKPT")"; base="${base%%.pth*}"
  case "$base" in
    ms_qk_10-*) CONFIG="ms_qkformer_$(echo "${base#ms_qk_}" | tr 'A-Z-' 'a-z_')" ;;
    10-*) CONFIG="$(echo "$base" | tr 'A-Z-' 'a-z_')" ;;
    *) echo "error: cannot tell the config from '$CKPT'; set CONFIG (one of: $(cd "$HERE" && ls *.yaml | sed 's/.yaml//' | tr '\n' ' '))" >&2; exit 2 ;;
  esac
fi
if [ ! -f "$HERE/$CONFIG.yaml" ]; then
  echo "error: no config imagenet/$CONFIG.yaml; set CONFIG to one of: $(cd "$HERE" && ls *.yaml | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
GPUS="${GPUS:-1}"
cd "$ROOT"
if [ "$GPUS" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" validate.py -c "$HERE/$CONFIG.yaml" \
    --checkpoint "$CKPT" "$@"
fi
exec "$PYTHON" validate.py -c "$HERE/$CONFIG.yaml" --checkpoint "$CKPT" "$@"
