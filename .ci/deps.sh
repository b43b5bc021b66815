#!/usr/bin/env bash
# Install the Debian tools glvm's demo and tests drive, when any is missing: NBD clients
# (nbdinfo, nbdcopy, nbdsh), qemu-io/qemu-img, nbdkit, fio, e2fsprogs, iproute2, python3-venv
# (ensurepip), make, fuse3 (LazyFS power-loss tests, nbdfuse), util-linux (losetup), gcc and
# the Python headers (pip install compiles the Cython hot path, rpv/speedups.py).
#
#   bash .ci/deps.sh
#
# As root (or with sudo) it runs apt-get; otherwise it prints the one apt-get line to run and
# exits 1. `make test`, `make demo` and `.ci/run` all call it, so the list lives here only.
set -euo pipefail

PACKAGES=(libnbd-bin python3-libnbd qemu-utils nbdkit fio e2fsprogs iproute2 python3-venv make
          fuse3 util-linux gcc libc6-dev python3-dev)
TOOLS=(nbdinfo nbdcopy nbdsh qemu-io qemu-img nbdkit fio mke2fs e2fsck ip python3 make
       fusermount3 losetup gcc)

missing=()
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# python3-venv is what gives `python3 -m venv` its pip (ensurepip)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=("python3-ensurepip")
fi
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing+=("Python.h")
fi
((${#missing[@]} == 0)) && exit 0

echo "deps: missing ${missing[*]}; installing: ${PACKAGES[*]}"
SUDO=()
if ((EUID != 0)); then
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
        echo "deps: not root: run  sudo apt-get install -y ${PACKAGES[*]}  first" >&2
        exit 1
    fi
    SUDO=(sudo -n)
fi
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
# fuse3 brings the tool and the library but not the device
[[ -e /dev/fuse ]] || echo "deps: warning: /dev/fuse is missing (no fuse kernel module); the LazyFS tests will fail" >&2
