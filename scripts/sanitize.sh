#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# kernel tests under it. Usage: bash scripts/sanitize.sh [pytest args]
# Needs g++ with libasan/libubsan (Debian: part of gcc). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SANITIZE_VENV:-/tmp/ppo_core-sanitize-venv}
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q --upgrade pip
pip install -q numpy pytest hypothesis scikit-build-core pybind11
# A separate build dir, so a sanitized build never mixes with the normal one.
pip install -q --no-build-isolation \
  -Ccmake.define.PPO_CORE_SANITIZE=ON -Ccmake.build-type=Debug \
  -Cbuild-dir=build/sanitize --force-reinstall --no-deps .
# Python itself is not built with ASan: preload the runtime, and skip leak checks
# (the interpreter keeps its allocations until exit, which LeakSanitizer reports).
export LD_PRELOAD="$(g++ -print-file-name=libasan.so):$(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
so=$(python -c "import ppo_core; print(ppo_core._core.__file__)")
# Refuse to report "no error" for a build that is not instrumented.
# (grep -q would close the pipe early and, under pipefail, fail the check.)
syms=$(nm -D "$so")
grep -q __asan_report <<<"$syms" || { echo "not an ASan build: $so"; exit 1; }
grep -q __ubsan_handle <<<"$syms" || { echo "not a UBSan build: $so"; exit 1; }
echo "sanitized build: $so"
python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_spec.py "$@"
echo "sanitizers: no error reported"
