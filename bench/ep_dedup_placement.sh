#!/bin/sh
# Issue 19's measurements on this machine: bytes saved by sending each token once per
# rank (--ep-dedup), and the ranks' load before and after a placement from load with
# replicated experts on a skewed router (--ep-skew, --ep-redundant). Writes JSON per run
# into $1 (default /tmp/ep-bench). Results: bench/results/ep-dedup-placement.md.
set -eu
out=${1:-/tmp/ep-bench}
bench=${MOE_BENCH:-build/tools/moe-bench}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
run() {
  name=$1
  shift
  mpirun --oversubscribe -n "$@" --no-dense --iters 3 --json > "$out/$name.json"
}
for n in 2 4; do
  run "fine-grained-$n" "$n" "$bench" --ep --shape fine-grained
  run "fine-grained-$n-dedup" "$n" "$bench" --ep --shape fine-grained --ep-dedup
done
run "mixtral-small-4-skew" 4 "$bench" --ep --shape mixtral-small --ep-skew 4 --ep-dedup
run "mixtral-small-4-skew-placed" 4 "$bench" --ep --shape mixtral-small --ep-skew 4 --ep-redundant 4
