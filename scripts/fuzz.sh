#!/usr/bin/env bash
# The fuzz targets, each built with clang (libFuzzer, ASan + UBSan) and run for a bounded
# time (default 30 s each). Exits non-zero on a finding.
#   fuzz_counts_log: the moe-stats parsers (text logs, torch.save archives, safetensors)
#                    and the reports built on them, from the sample logs;
#   fuzz_c_abi:      programs of C ABI calls with hostile arguments, checking the ABI's
#                    promises after every call (tests/fuzz/fuzz_c_abi.cpp).
# Usage: scripts/fuzz.sh [SECONDS_EACH]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
jobs=$(nproc)
out=build-fuzz
mkdir -p "$out/corpus" "$out/corpus_c_abi"
cp tests/moe_stats/* "$out/corpus/"

run() {  # run NAME BINARY CORPUS [libFuzzer options...]
  local name=$1 binary=$2 corpus=$3
  shift 3
  echo "-- fuzz: $name for $seconds s" >&2
  "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "$@" "$corpus" \
    > "$out/$name.log" 2>&1 || { tail -60 "$out/$name.log"; return 1; }
  tail -12 "$out/$name.log"
}

# Every moe-stats source but its main (the list tools/CMakeLists.txt builds).
stats_sources=$(ls tools/moe-stats/*.cpp | grep -v -e /main.cpp -e /fuzz_counts_log.cpp)
# shellcheck disable=SC2086
clang++-14 -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I. -Iinclude tools/moe-stats/fuzz_counts_log.cpp $stats_sources \
  core/telemetry/metrics.cpp core/telemetry/step_stats.cpp \
  core/telemetry/verdicts.cpp -o "$out/fuzz_counts_log"
run counts_log "$out/fuzz_counts_log" "$out/corpus" -max_len=4096

# The whole library, instrumented; only the cpu_ref backend (the others' kernels are
# third-party code or need a GPU).
cmake -S . -B "$out/c_abi" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 \
  -DCMAKE_CXX_COMPILER=clang++-14 -DMOE_FUZZ=ON -DMOE_WITH_ONEDNN=OFF -DMOE_WITH_CUDA=OFF \
  -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$out/c_abi" --target fuzz_c_abi -j"$jobs" >&2
# Leaks are checked too: every handle the programs make, they destroy. (libstdc++ is
# loaded before the shared ASan runtime; that order is harmless here.)
ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0 run c_abi "$out/c_abi/fuzz_c_abi" "$out/corpus_c_abi" -max_len=512
