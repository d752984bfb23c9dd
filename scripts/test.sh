#!/usr/bin/env bash
# The whole test suite: sets up and builds (scripts/setup.sh), runs every test in the
# release build, fuzzes the moe-stats parser, installs a second build laid out as a
# Debian package would be (lib/x86_64-linux-gnu) into a scratch prefix and uses it as a
# downstream project would (scripts/check_install.sh), then builds again with
# AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite there too. Exits
# non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/setup.sh
echo "== release build: ctest" >&2
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== moe-stats parser: libFuzzer for 30 s" >&2
scripts/fuzz.sh 30

echo "== install stage: Debian's multiarch libdir, used downstream from a scratch prefix" >&2
# (The release build's ctest ran the same check with the plain lib/ layout. This build
# leaves out the tests and the cuda backend, which that check does not need.)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
cmake -S . -B build-install -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=OFF \
  -DMOE_BUILD_TESTS=OFF -DCMAKE_INSTALL_LIBDIR="lib/$multiarch" >/dev/null
cmake --build build-install -j"$jobs" >&2
scripts/check_install.sh build-install

echo "== ASan + UBSan build: ctest" >&2
# (Without the cuda backend: its tests need a GPU, and ASan does not mix with the CUDA
# driver's memory mappings.)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs" >&2
ctest --test-dir build-asan --output-on-failure -j"$jobs"
