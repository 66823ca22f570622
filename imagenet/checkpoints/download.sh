#!/usr/bin/env bash
# Download the authors' seven released ImageNet checkpoints (GitHub release "checkpoints" of bic-L/MaxFormer)
# into this folder. Needs internet; not run by the tests.
#   bash imagenet/checkpoints/download.sh              # all seven
#   bash imagenet/checkpoints/download.sh 10-768-T4    # only some
#   BASE_URL=https://mirror.example/maxformer bash imagenet/checkpoints/download.sh   # a mirror of the release
# Offline: fetch BASE_URL/NAME.pth.tar on a machine that has internet and copy it here as NAME.pth.tar.
# A failed download names the URL and the error and leaves no partial file.
# Evaluate one: CKPT=imagenet/checkpoints/10-768-T4.pth.tar bash imagenet/test.sh (config from the file name).
# They carry older parameter names, converted on loading; see docs/checkpoints.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_URL="${BASE_URL:-https://github.com/bic-L/MaxFormer/releases/download/checkpoints}"
ALL="10-384-T4 10-512-T1 10-512-T4 10-768-T1 10-768-T4 ms_qk_10-384_T4 ms_qk_10-768_T1"
NAMES="${*:-$ALL}"
for name in $NAMES; do
  case " $ALL " in *" $name "*) ;; *) echo "error: no released checkpoint '$name'; the names are: $ALL" >&2; exit 2;; esac
done
if command -v curl >/dev/null; then tool=curl
elif command -v wget >/dev/null; then tool=wget
else echo "error: downloading needs curl or wget, and neither is installed" >&2; exit 1
fi
part=""
trap '[ -z "$part" ] || rm -f "$part"' EXIT   # no partial file survives a failure or Ctrl-C
for name in $NAMES; do
  out="$HERE/$name.pth.tar"
  url="$BASE_URL/$name.pth.tar"
  if [ -s "$out" ]; then echo "have $out"; continue; fi
  echo "downloading $url"
  part="$out.part"
  rc=0
  if [ "$tool" = curl ]; then
    curl -fL --progress-bar -o "$part" "$url" || rc=$?
  else
    wget --no-verbose --show-progress -O "$part" "$url" || rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    rm -f "$part"
    echo "error: could not download $url ($tool exit status $rc; its message is above)." >&2
    echo "Offline or behind a firewall? Fetch that URL on a machine with internet and copy the file to $out," >&2
    echo "or point BASE_URL at a mirror of the release. Nothing partial was kept." >&2
    exit 1
  fi
  mv "$part" "$out"
  part=""
done
