#!/usr/bin/env bash
# Everything that needs a GPU, in one go (for a lent H100/H200 machine): builds the
# cuda backend, runs the CUDA and NCCL tests, compute-sanitizer memcheck over them, the
# layer benchmark and the PyTorch eager baseline at the issue's shape. Logs go to $OUT.
# MOE_BENCH_MODES picks the GEMM modes benchmarked (default: all four).
# GoogleTest comes from .deps/googletest when the machine has no libgtest-dev
# (scripts/fetch_gtest_source.sh copies Debian's sources there).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/moe-gpu-out}
mkdir -p "$OUT"
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/summary.txt"
nvcc --version | tail -2 | tee -a "$OUT/summary.txt"

step "build (sm_90)"
gtest_args=()
[ -d .deps/googletest ] && gtest_args=(-DMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest")
# NCCL: the toolkit's when it has one, else the one PyTorch's wheels bring.
nccl_args=()
if [ ! -f /usr/local/cuda/include/nccl.h ]; then
  nccl_dir=$(python3 -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))" 2>/dev/null ||
    python3 -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])" 2>/dev/null)
  nccl_lib=$(ls "$nccl_dir"/lib/libnccl.so* 2>/dev/null | head -1)
  [ -n "$nccl_lib" ] && nccl_args=(-DMOE_NCCL_INCLUDE="$nccl_dir/include" -DMOE_NCCL_LIBRARY="$nccl_lib")
  echo "NCCL from $nccl_dir: $nccl_lib" | tee -a "$OUT/summary.txt"
fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=ON \
  -DMOE_CUDA_ARCHITECTURES=90 -DMOE_WITH_ONEDNN=OFF "${gtest_args[@]}" "${nccl_args[@]}" >/tmp/configure.log 2>&1 || { tail -30 /tmp/configure.log; exit 1; }
grep -i "nccl" /tmp/configure.log | tee -a "$OUT/summary.txt"
cmake --build build-gpu -j"$(nproc)" >/tmp/build.log 2>&1 || { grep -E "error" /tmp/build.log | head -30; exit 1; }

# The cuda backend is a plugin beside libmoe, which links no CUDA library; the tests
# below create their layers by name, through it.
{ echo "libmoe needs: $(readelf -d build-gpu/libmoe.so.0 | awk '/NEEDED/ {printf "%s ", $NF}')"
  ls -l build-gpu/libmoe_cuda.so.0; } | tee -a "$OUT/summary.txt"

# MOE_GPU_BUILD_ONLY=1 stops here (build-gpu/ is then ready for a command of one's own).
[ "${MOE_GPU_BUILD_ONLY:-0}" = 1 ] && exit 0

step "CUDA and NCCL tests"
(cd build-gpu && ctest -R 'Cuda|Nccl' -j8 --output-on-failure) >"$OUT/cuda_tests.log" 2>&1
tests_rc=$?
grep -E "tests passed|tests failed|Failed|Failure|Expected|Which is|error" "$OUT/cuda_tests.log" | head -60 | tee -a "$OUT/summary.txt"

step "compute-sanitizer memcheck"
compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/tests/test_cuda_backend \
  --gtest_filter='CudaBackend.*:CudaShapes.*:All/CudaParity.MatchesCpuRef/softmax_swiglu*:All/CudaParity.MatchesCpuRef/sigmoid_gelu_capacity*:All/CudaVariants.*' \
  >"$OUT/memcheck.log" 2>&1
echo "memcheck exit $?" | tee -a "$OUT/summary.txt"
grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | tail -5 | tee -a "$OUT/summary.txt"

step "compute-sanitizer memcheck: expert parallelism (2 thread ranks, both transports)"
compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/tests/test_cuda_expert_parallel \
  --gtest_filter='*MatchesTheSingleProcessLayer/2_ranks*:*NeverCalls*/2_ranks*' \
  >"$OUT/memcheck_ep.log" 2>&1
echo "memcheck exit $?" | tee -a "$OUT/summary.txt"
grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck_ep.log" | tail -5 | tee -a "$OUT/summary.txt"

# MOE_GPU_TESTS_ONLY=1 stops here (a re-check after a test-only change).
[ "${MOE_GPU_TESTS_ONLY:-0}" = 1 ] && exit $tests_rc
modes=${MOE_BENCH_MODES:-auto batched grouped loop}
for mode in $modes; do
  step "layer benchmark: MOE_CUDA_GEMM=$mode, telemetry off"
  MOE_CUDA_GEMM=$mode build-gpu/bench/moe-cuda-bench --telemetry 0 --json "$OUT/bench_$mode.json" 2>&1 | tee -a "$OUT/summary.txt"
done
# Telemetry's cost: runs alternating off and on, so that clock drift hits both alike.
for round in 1 2; do
  for telemetry in 1 0; do
    step "layer benchmark: auto, telemetry $telemetry (round $round)"
    build-gpu/bench/moe-cuda-bench --telemetry $telemetry 2>&1 | tee -a "$OUT/summary.txt"
  done
done

step "expert-parallel pipeline on one rank (local and NCCL communicators) vs plain"
build-gpu/bench/moe-cuda-bench --ep 1 2>&1 | tee -a "$OUT/summary.txt"

step "where the time goes (MOE_CUDA_PROFILE=1, one forward and backward)"
MOE_CUDA_PROFILE=1 build-gpu/bench/moe-cuda-bench --iters 1 2>&1 | grep "moe cuda" | tail -2 | tee -a "$OUT/summary.txt"

step "PyTorch eager MoE, same shape and GPU"
python3 bench/torch_moe_eager.py --device cuda --dtype bfloat16 2>&1 | tee "$OUT/torch_eager.json" | tee -a "$OUT/summary.txt"
exit $tests_rc
