#!/usr/bin/env bash
# Every public header compiles on its own, first in its translation unit: the C headers
# as plain C99 (-std=c99 -pedantic, no extensions), moe.hpp as C++17, all -Wall -Wextra
# -Werror. A header whose third-party dependency (MPI, the CUDA toolkit, NCCL) is not on
# this machine is reported as not checked, by name.
# Usage: scripts/check_headers.sh INCLUDE_DIR   (the folder that holds moe/)
set -euo pipefail
include_dir=$(cd "$1" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The CUDA runtime headers: where CMake found them (MOE_CUDA_INCLUDE_DIRS, set by the
# ctest that runs this), else beside the nvcc on PATH, else in the usual prefix. Each
# candidate must hold cuda_runtime_api.h: the nvcc on PATH may be a wrapper script whose
# ../include is not the toolkit's (CI's /usr/local/bin/nvcc is one).
cuda_include=""
candidates=()
IFS=: read -r -a candidates <<< "${MOE_CUDA_INCLUDE_DIRS:-}"
nvcc_on_path=$(command -v nvcc || true)
[ -n "$nvcc_on_path" ] && candidates+=("$(dirname "$(readlink -f "$nvcc_on_path")")/../include")
candidates+=(/usr/local/cuda/include)
for candidate in "${candidates[@]}"; do
  if [ -n "$candidate" ] && [ -f "$candidate/cuda_runtime_api.h" ]; then
    cuda_include=$(cd "$candidate" && pwd)
    break
  fi
done
# Third-party headers as system headers: their own pedantic warnings are not ours.
mpi_flags=$(mpicc --showme:compile 2>/dev/null | sed 's/-I/-isystem /g' || true)

checked=() unchecked=()
compile() {  # compile HEADER LANGUAGE [FLAGS...]
  local header=$1 language=$2
  shift 2
  printf '#include <moe/%s>\nint moe_header_check_%s;\n' "$header" "${header//[.]/_}" > "$scratch/tu"
  local compiler=(cc -x c -std=c99 -pedantic)
  [ "$language" = c++ ] && compiler=(c++ -x c++ -std=c++17 -pedantic)
  if ! "${compiler[@]}" -Wall -Wextra -Werror -I"$include_dir" "$@" -c "$scratch/tu" \
      -o "$scratch/tu.o"; then
    echo "check_headers: moe/$header does not compile on its own as $language" >&2
    exit 1
  fi
  checked+=("$header")
}

for path in "$include_dir"/moe/*.h "$include_dir"/moe/*.hpp; do
  header=$(basename "$path")
  case "$header" in
    *.hpp) compile "$header" c++ ;;
    moe_mpi.h)
      if [ -n "$mpi_flags" ]; then compile "$header" c $mpi_flags; else unchecked+=("$header (no mpicc)"); fi ;;
    moe_cuda.h)
      if [ -n "$cuda_include" ]; then compile "$header" c -isystem "$cuda_include"; else unchecked+=("$header (no CUDA toolkit)"); fi ;;
    moe_nccl.h)
      if [ -n "$cuda_include" ] && [ -f "$cuda_include/nccl.h" ]; then
        compile "$header" c -isystem "$cuda_include"
      else
        unchecked+=("$header (no NCCL in the CUDA toolkit)")
      fi ;;
    *) compile "$header" c ;;
  esac
done
echo "check_headers: ${#checked[@]} headers compile on their own: ${checked[*]}"
if [ ${#unchecked[@]} -gt 0 ]; then
  echo "check_headers: not checked here: ${unchecked[*]}"
fi
