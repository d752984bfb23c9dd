#!/usr/bin/env bash
# The whole test suite: sets up and builds (scripts/setup.sh), runs every test in the
# release build, then builds again with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs the suite there too. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh
echo "== release build: ctest" >&2
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== moe-stats parser: libFuzzer for 30 s" >&2
scripts/fuzz.sh 30

echo "== ASan + UBSan build: ctest" >&2
# (Without the cuda backend: its tests need a GPU, and ASan does not mix with the CUDA
# driver's memory mappings.)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs" >&2
ctest --test-dir build-asan --output-on-failure -j"$jobs"
