#!/usr/bin/env bash
# The GPU issue's checks in one go, within about 10 minutes of a lent H100/H200: builds
# (run_on_device.sh's build), runs the CUDA and NCCL suites, compute-sanitizer memcheck
# over the CUDA-graph tests, then at today's fine-grained shapes and Mixtral's the layer
# (dropless, and capacity 1.0 padded with a CUDA-graph replay) beside a torch._grouped_mm
# MoE and dense FFNs of the same FLOPs, bf16. At most 5 files go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/moe-gpu-out}
mkdir -p "$OUT"
export OUT
start=$(date +%s)
MOE_GPU_BUILD_ONLY=1 bash bench/gpu/run_on_device.sh || exit 1
echo "== built in $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"

echo "== CUDA and NCCL tests" | tee -a "$OUT/summary.txt"
(cd build-gpu && ctest -R 'Cuda|Nccl' -j8 --output-on-failure --timeout 120) >"$OUT/cuda_tests.log" 2>&1
tests_rc=$?
grep -E "tests passed|tests failed|\(Failed\)|\(Timeout\)" "$OUT/cuda_tests.log" | head -30 | tee -a "$OUT/summary.txt"

echo "== compute-sanitizer memcheck: CUDA graphs and deferred counts" | tee -a "$OUT/summary.txt"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/tests/test_cuda_graph \
  --gtest_filter='CudaGraph.Capture*:CudaGraph.Deferred*' >"$OUT/memcheck.log" 2>&1
echo "memcheck exit $?" | tee -a "$OUT/summary.txt"
grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | tail -4 | tee -a "$OUT/summary.txt"
echo "== tests done at $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$OUT/fine_grained.txt"
# One JSON line per layer run; null when the run failed or timed out.
record() {
  printf '{"run":"%s","layer":%s}\n' "$1" "$(tr -d '\n' </tmp/fg.json 2>/dev/null || echo null)" \
    >>"$OUT/fine_grained.jsonl"
}
while read -r name T d dff E k; do
  shape=(--tokens "$T" --d "$d" --dff "$dff" --experts "$E" --topk "$k")
  echo "== $name: layer, dropless (MOE_CUDA_GEMM auto)" | tee -a "$OUT/fine_grained.txt"
  rm -f /tmp/fg.json
  timeout 60 build-gpu/bench/moe-cuda-bench "${shape[@]}" --telemetry 0 --iters 10 \
    --json /tmp/fg.json >>"$OUT/fine_grained.txt" 2>&1
  record "$name dropless"
  echo "== $name: layer, capacity 1.0 padded (one strided-batched product per matrix), CUDA graph" |
    tee -a "$OUT/fine_grained.txt"
  rm -f /tmp/fg.json
  timeout 60 build-gpu/bench/moe-cuda-bench "${shape[@]}" --telemetry 0 --iters 10 \
    --capacity 1.0 --pad 1 --graph 1 --json /tmp/fg.json >>"$OUT/fine_grained.txt" 2>&1
  record "$name padded"
  echo "== $name: torch._grouped_mm MoE and dense FFN" | tee -a "$OUT/fine_grained.txt"
  timeout 60 python3 bench/torch_grouped_mm.py "${shape[@]}" --iters 10 2>&1 |
    tee -a "$OUT/fine_grained.txt" | grep '^{' >>"$OUT/fine_grained.jsonl"
  echo "== $name done at $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
done <<'SHAPES'
qwen3-30b-a3b 32768 2048 768 128 8
mixtral-8x7b 8192 4096 14336 8 2
deepseek-v3 16384 7168 2048 256 8
SHAPES
exit $tests_rc
