#!/usr/bin/env bash
# Installs what is missing (Debian packages), then configures and builds moe-runtime
# into build/. Safe to run again: it installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake make gcc g++ pkg-config binutils    # the build; readelf and nm check the install
  libdnnl-dev                               # the onednn backend (oneDNN 2.x)
  ocl-icd-opencl-dev opencl-c-headers       # dnnl-config.cmake requires OpenCL, which
                                            # libdnnl-dev only recommends
  libopenmpi-dev openmpi-bin                # communicators over MPI (expert parallelism)
  libcli11-dev nlohmann-json3-dev           # the tools (moe-train, moe-stats, moe-bench)
  clang-14 libclang-rt-14-dev               # the fuzz targets (libFuzzer)
  libomp-14-dev                             # OpenMP for the library built with clang-14
  libgtest-dev libbenchmark-dev             # tests and benchmarks
  python3 python3-numpy python3-torch python3-pytest  # binding tests, PyTorch parity
  python3-venv python3-pip python3-setuptools python3-wheel  # pip install ./bindings/python
  python3-threadpoolctl                     # the benchmarks record which BLAS ran
  libopenblas0-openmp                       # PyTorch's BLAS (else the slow reference BLAS)
  prometheus                                # promtool checks the Prometheus export
  python3-matplotlib                        # moe-train draws its dashboard
  chromium                                  # opens moe-stats' HTML report in the tests
  fortunes-min fortunes fortunes-de fortunes-es fortunes-it  # examples/torch_lm's text
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The cuda backend is built wherever the CUDA toolkit is (its tests skip, saying so,
# on machines without a GPU).
cuda_args=(-DMOE_WITH_CUDA=OFF)
nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc" ]; then
  cuda_args=(-DMOE_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc")
  echo "setup: building the cuda backend with $nvcc" >&2
fi

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${cuda_args[@]}" "$@" >/dev/null
cmake --build build -j"$jobs" >&2
