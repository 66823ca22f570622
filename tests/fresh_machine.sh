#!/usr/bin/env bash
# Run the tests as on a fresh machine, on a machine that is not fresh (docs/testing.md):
#   * SLURM's client tools are hidden: /dev/null is bind-mounted over each one found on PATH;
#   * files outside the repository are hidden: an empty /tmp (tmpfs), HOME, XDG_CACHE_HOME, TORCH_HOME,
#     HF_HOME, MPLCONFIGDIR and TRITON_CACHE_DIR in it;
#   * the repository is a copy of what a clone has plus your uncommitted work (git ls-files: no ignored
#     files such as data/, output/, caches or .pytest_cache);
#   * no network (a private network namespace with loopback only).
# Everything happens in a private mount namespace (unshare -m): nothing changes outside this command.
#
#   tests/fresh_machine.sh                          # the whole suite: pytest -q tests
#   tests/fresh_machine.sh -q tests/test_sweep.py   # arguments go to pytest
#   PYTHON=/path/to/python tests/fresh_machine.sh   # interpreter with requirements.txt (default .venv/bin/python)
#   FRESH_HIDE="gcc g++ cc git" tests/fresh_machine.sh   # hide more tools
#   FRESH_NETWORK=1 tests/fresh_machine.sh          # keep the network
#
# Needs util-linux's unshare and root, or unprivileged user namespaces (you then appear as root inside).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SLURM_TOOLS="srun sbatch squeue sinfo scontrol scancel salloc sacct sattach sstat"

inside() {  # in the private namespaces (a function: bash reads it whole, so editing this file mid-run is safe)
    hidden=()
    fresh=""
    for tool in $SLURM_TOOLS ${FRESH_HIDE:-}; do
        while IFS= read -r path; do
            mount --bind /dev/null "$path"
            hidden+=("$path")
        done < <(type -ap "$tool" | xargs -r realpath | sort -u)
    done

    # an empty /tmp (unless the repository is in it), then the repository copied into it as a clone would have
    # it: tracked and untracked-but-not-ignored files
    case "$REPO/" in /tmp/*) echo "fresh_machine.sh: the repository is under /tmp; /tmp stays visible" >&2 ;;
                     *) mount -t tmpfs -o mode=1777 tmpfs /tmp ;; esac
    copy=$(mktemp -d /tmp/fresh_repo.XXXXXX)
    trap 'rm -rf "$copy" "$fresh"' EXIT  # a no-op on the private /tmp, which vanishes with this command
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$copy"
    fresh=$(mktemp -d /tmp/fresh_home.XXXXXX)
    export HOME=$fresh XDG_CACHE_HOME=$fresh/.cache XDG_CONFIG_HOME=$fresh/.config XDG_DATA_HOME=$fresh/.local/share
    export TORCH_HOME=$fresh/.cache/torch HF_HOME=$fresh/.cache/huggingface MPLCONFIGDIR=$fresh/.config/matplotlib
    export TRITON_CACHE_DIR=$fresh/.triton TMPDIR=/tmp
    unset FRESH_MACHINE_INSIDE

    if [ "${FRESH_NETWORK:-0}" != 1 ]; then  # loopback up (torch.distributed's tests talk over 127.0.0.1)
        export GLOO_SOCKET_IFNAME=lo  # gloo binds to the host name's address, which may be on a hidden interface
        "$PYTHON" - <<'EOF'
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifreq = "16sH22x"  # struct ifreq: the name, then ifr_flags
flags = struct.unpack(ifreq, fcntl.ioctl(s, 0x8913, struct.pack(ifreq, b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack(ifreq, b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
EOF
    fi

    echo "fresh_machine.sh: hidden: ${hidden[*]:-(none of: $SLURM_TOOLS ${FRESH_HIDE:-} on PATH)}"
    echo "fresh_machine.sh: repository copy $copy, HOME=$HOME, empty /tmp, network: $([ "${FRESH_NETWORK:-0}" = 1 ] \
        && echo kept || echo loopback only)"
    cd "$copy"
    [ $# -gt 0 ] || set -- -q tests
    "$PYTHON" -m pytest -p no:cacheprovider "$@"
}

if [ -z "${FRESH_MACHINE_INSIDE:-}" ]; then
    command -v unshare >/dev/null || { echo "fresh_machine.sh: unshare not found (util-linux)" >&2; exit 2; }
    PYTHON=${PYTHON:-.venv/bin/python}
    case "$PYTHON" in */*) PYTHON=$(cd "$REPO" && realpath -s "$PYTHON") ;; *) PYTHON=$(command -v "$PYTHON") ;; esac
    [ -x "$PYTHON" ] || { echo "fresh_machine.sh: no interpreter at $PYTHON: run make install, or set PYTHON" >&2
                          exit 2; }
    ns=(--mount --propagation private)
    [ "${FRESH_NETWORK:-0}" = 1 ] || ns+=(--net)
    [ "$(id -u)" = 0 ] || ns+=(--map-root-user)
    export PYTHON FRESH_MACHINE_INSIDE=1
    exec unshare "${ns[@]}" bash "$0" "$@"
fi
inside "$@"; exit $?  # one line: bash has read all of it before running it

