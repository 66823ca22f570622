#!/usr/bin/env bash
# Download the authors' seven released ImageNet checkpoints (GitHub release "checkpoints" of bic-L/MaxFormer)
# into this folder. Needs internet; not run by the tests.
#   bash imagenet/checkpoints/download.sh              # all seven
#   bash imagenet/checkpoints/download.sh 10-768-T4    # only some
# Evaluate one: CKPT=imagenet/checkpoints/10-768-T4.pth.tar bash imagenet/test.sh (config from the file name).
# They carry older parameter names, converted on loading; see docs/checkpoints.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_URL="${BASE_URL:-https://github.com/bic-L/MaxFormer/releases/download/checkpoints}"
ALL="10-384-T4 10-512-T1 10-512-T4 10-768-T1 10-768-T4 ms_qk_10-384_T4 ms_qk_10-768_T1"
NAMES="${*:-$ALL}"
for name in $NAMES; do
  out="$HERE/$name.pth.tar"
  if [ -s "$out" ]; then echo "have $out"; continue; fi
  echo "downloading $name"
  if command -v wget >/dev/null; then
    wget -q --show-progress -O "$out.part" "$BASE_URL/$name.pth.tar"
  else
    curl -fL --progress-bar -o "$out.part" "$BASE_URL/$name.pth.tar"
  fi
  mv "$out.part" "$out"
done
