#!/usr/bin/env bash
# The compiled hot path (rpv/speedups.py) built with AddressSanitizer and UBSan in a copy of
# the tree, then the protocol and LV inline tests and a fuzz run on it (make fuzz runs this
# first).
#
#   bash .ci/sanitize.sh [fuzz inputs, default 100000]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
INPUTS="${1:-100000}"
TREE="$(mktemp -d /tmp/glvm-sanitize.XXXXXX)"
trap 'rm -rf "$TREE"' EXIT

"$PY" -m pip install -q "Cython>=3.0"
cp -r "$ROOT/rpv" "$ROOT/lvm" "$ROOT/tests" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$TREE/"
find "$TREE" -name '*.so' -delete
(cd "$TREE" && CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -O1" \
    LDFLAGS="-fsanitize=address,undefined" "$PY" setup.py -q build_ext --inplace >/dev/null)

export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0  # the interpreter's own allocations are not ours
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH="$TREE"
cd "$TREE"
"$PY" -c 'import rpv.nbd._wire, rpv.protocol._hotpath, lvm._inline, sys
mods = (rpv.nbd._wire, rpv.protocol._hotpath, lvm._inline)
sys.exit(not all(m.__file__.startswith(sys.argv[1]) for m in mods))' "$TREE"
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_speedups.py tests/test_nbd_protocol.py \
    tests/test_protocol.py tests/test_protocol_connection.py tests/test_protocol_fuzz.py \
    tests/test_lvm_inline.py tests/test_lvm_inline_twins.py
"$PY" -m tests.fuzz --inputs "$INPUTS"
echo "sanitize: the compiled hot path passed the protocol and LV inline tests and $INPUTS fuzz inputs per parser under ASan+UBSan"
