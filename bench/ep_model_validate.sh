#!/usr/bin/env bash
# Validates moe-epmodel (tools/moe-epmodel, docs/ep_model.md) against moe-bench --ep on this
# machine: runs moe-bench --ep under mpirun with 2 and 4 ranks, calibrates the model's link
# (bandwidth and per-message latency) from the bare MPI_Alltoallv that moe-bench times beside
# the layer, predicts the layer's exchanges with it, and prints predictions beside the
# measurements (markdown on stdout, everything in OUT/validation.json).
#
#   bench/ep_model_validate.sh MOE_BENCH [options] [-- extra moe-bench flags]
#
# options:
#   --out DIR          where the raw moe-bench JSON and the results go (default: a new
#                      directory under /tmp)
#   --reps R           runs of each configuration (default 3); every time reported is the
#                      smallest over the runs (the least disturbed)
#   --ranks "2 4"      rank counts (default "2 4")
#   --dtypes "f32 bf16" (default "f32 bf16")
#   --shapes "decode mixtral-small fine-grained" (default: all three)
#   --iters N          moe-bench --iters (default 5)
#   --model FILE       moe_epmodel.py to use (default: the source tree's)
#
# The plain layer (one row per copy, contiguous placement) always runs: it calibrates the
# link and is predicted. Flags after -- (e.g. -- --ep-dedup, --ep-redundant 4, --ep-skew 2)
# make a second set of runs with them, predicted by the model with the matching options:
# --ep-dedup and --ep-redundant R: dedup (a replicated placement always sends each token
# once per rank); --ep-redundant R: EPLB with ceil((E + R) / ranks) slots per rank;
# --ep-skew S: the model's trace is --synthetic router:S (a random router of the same kind,
# not moe-bench's very weights). Environment: MPIRUN (default mpirun), PYTHON (default
# /usr/bin/python3). The ranks run with OMP_NUM_THREADS=1; as root, Open MPI needs
# OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), set here.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then usage; [[ $# -ge 1 ]] && exit 0; exit 2; fi
bench=$1
shift
[[ -x $bench ]] || { echo "ep_model_validate: $bench is not an executable moe-bench" >&2; exit 2; }

out="" reps=3 ranks="2 4" dtypes="f32 bf16" shapes="decode mixtral-small fine-grained" iters=5
model="$here/../tools/moe-epmodel/moe_epmodel.py"
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --dtypes) dtypes=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "ep_model_validate: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -z $out ]] && out=$(mktemp -d /tmp/ep-model-validate.XXXXXX)
mkdir -p "$out"
mpirun=${MPIRUN:-mpirun}
python=${PYTHON:-/usr/bin/python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc: $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
  lscpu | head -n 14
  "$mpirun" --version 2>&1 | head -n 1
  echo "moe-bench: $bench ${extra[*]+"${extra[*]}"}"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"

# LD_LIBRARY_PATH travels to the ranks when set (a moe-bench copied with its libmoe).
env_flags=(-x OMP_NUM_THREADS)
[[ -n ${LD_LIBRARY_PATH:-} ]] && env_flags+=(-x LD_LIBRARY_PATH)
shape_flags=()
for s in $shapes; do shape_flags+=(--shape "$s"); done
run_bench() {  # prefix, ranks, dtype, rep, flags...
  local prefix=$1 n=$2 dtype=$3 rep=$4
  shift 4
  local file="$out/$prefix-n$n-$dtype-rep$rep.json"
  echo "ep_model_validate: $prefix, $n ranks, $dtype, run $rep of $reps (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  "$mpirun" --oversubscribe -n "$n" "${env_flags[@]}" \
    "$bench" --ep --json --iters "$iters" --dtype "$dtype" "${shape_flags[@]}" "$@" \
    > "$file" 2> "$file.err" || { echo "ep_model_validate: moe-bench failed, see $file.err" >&2; exit 1; }
  echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >> "$file.err"
}
for rep in $(seq 1 "$reps"); do
  for n in $ranks; do
    for dtype in $dtypes; do
      run_bench ep "$n" "$dtype" "$rep"
      if [[ ${#extra[@]} -gt 0 ]]; then run_bench var "$n" "$dtype" "$rep" "${extra[@]}"; fi
    done
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

"$python" "$here/ep_model_validate.py" --dir "$out" --model "$model" \
  --extra="${extra[*]+"${extra[*]}"}"
