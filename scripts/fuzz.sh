#!/usr/bin/env bash
# Builds the moe-stats parser's libFuzzer target with clang (ASan + UBSan) and runs it
# for a bounded time (default 30 s) from the sample logs. Exits non-zero on a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
out=build-fuzz
mkdir -p "$out/corpus"
cp tests/moe_stats/* "$out/corpus/"
clang++-14 -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I. -Iinclude tools/moe-stats/fuzz_counts_log.cpp tools/moe-stats/counts_log.cpp \
  tools/moe-stats/report.cpp core/telemetry/metrics.cpp core/telemetry/step_stats.cpp \
  core/telemetry/verdicts.cpp -o "$out/fuzz_counts_log"
"$out/fuzz_counts_log" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 "$out/corpus" 2>&1 | tail -12
