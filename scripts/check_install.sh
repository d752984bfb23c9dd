#!/usr/bin/env bash
# Installs a build into a scratch prefix and uses it as a downstream user would, with
# nothing from the source or build tree on any path:
#   - every public header compiles on its own (C99 -pedantic; moe.hpp as C++17);
#   - the examples/ project (a C99 and a C++ program) configures, builds and runs
#     through find_package(moe CONFIG), and again compiled by hand through pkg-config;
#   - the installed moe-train (a short run, dashboard included), moe-stats and moe-bench
#     run without LD_LIBRARY_PATH (RUNPATH relative to the binary);
#   - `pip install --no-build-isolation --no-index ./bindings/python` into a venv at
#     the prefix gives an `import moe` that finds the installed libmoe by itself and
#     defaults to the auto backend;
#   - moved to another folder, the prefix still works (moe.pc, RUNPATH);
#   - libmoe exports only moe_* symbols and links no CUDA library; a build with the
#     cuda backend installs its plugin beside libmoe, exporting only its entry point,
#     and a downstream program that asks for backend "cuda" gets a layer where a GPU
#     is, else a clear refusal (docs/architecture.md, "The cuda plugin").
# Usage: scripts/check_install.sh BUILD_DIR
set -euo pipefail
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
step() { echo "-- check_install: $*" >&2; }
fail() { echo "check_install: FAILED: $*" >&2; exit 1; }
# What a user's shell has: no paths into this checkout, no LD_LIBRARY_PATH, no MOE_*.
unset LD_LIBRARY_PATH MOE_LIBRARY MOE_STATS MOE_TRAIN PYTHONPATH
export PKG_CONFIG_PATH=

# The prefix is a Python venv too (made first, so that cmake --install fills it), the
# way a user installs a C library and its binding into one environment.
prefix=$scratch/prefix
/usr/bin/python3 -m venv --system-site-packages "$prefix"
step "cmake --install into $prefix"
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libmoe.so.0' -print -quit)")
[ -f "$libdir/libmoe.so.0" ] || fail "libmoe.so.0 not installed"
pcdir=$libdir/pkgconfig
[ -f "$pcdir/moe.pc" ] || fail "moe.pc not installed beside libmoe ($pcdir)"

step "public headers compile on their own"
"$source_dir/scripts/check_headers.sh" "$prefix/include"

step "examples/ through find_package(moe CONFIG)"
cmake -S "$source_dir/examples" -B "$scratch/examples" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$scratch/examples" >/dev/null
"$scratch/examples/moe-example-forward-backward" >/dev/null || fail "C99 example (find_package)"
"$scratch/examples/moe-example-train" 40 >/dev/null || fail "C++ example (find_package)"

check_pkg_config() {  # the examples compiled by hand against the prefix's moe.pc
  local pc=$1 out=$2
  export PKG_CONFIG_PATH=$pc
  local libs cflags rpath
  cflags=$(pkg-config --cflags moe)
  libs=$(pkg-config --libs moe)
  rpath=$(pkg-config --variable=libdir moe)
  case "$cflags" in *"$3"*) ;; *) fail "pkg-config --cflags moe = '$cflags', not under $3" ;; esac
  [ -f "$(pkg-config --variable=includedir moe)/moe/moe.h" ] || fail "moe.pc's includedir has no moe/moe.h"
  mkdir -p "$out"
  cc -std=c99 -pedantic -Wall -Wextra -Werror $cflags "$source_dir/examples/forward_backward.c" \
    $libs -lm -Wl,-rpath,"$rpath" -o "$out/forward_backward"
  c++ -std=c++17 -Wall -Wextra -Werror $cflags "$source_dir/examples/train_layer.cpp" $libs \
    -Wl,-rpath,"$rpath" -o "$out/train_layer"
  "$out/forward_backward" >/dev/null || fail "C99 example (pkg-config)"
  "$out/train_layer" 20 >/dev/null || fail "C++ example (pkg-config)"
  export PKG_CONFIG_PATH=
}
step "examples/ through pkg-config"
check_pkg_config "$pcdir" "$scratch/pc" "$prefix/"

step "installed tools run without LD_LIBRARY_PATH"
for tool in moe-train moe-stats moe-bench; do
  [ -x "$prefix/bin/$tool" ] || fail "$tool not installed"
  "$prefix/bin/$tool" --version >/dev/null || fail "$tool --version"
done
readelf -d "$prefix/bin/moe-train" | grep -q 'R.*PATH.*\$ORIGIN' || fail "moe-train has no \$ORIGIN RUNPATH"
(cd "$scratch" && "$prefix/bin/moe-train" --max_iters 12 --log_interval 4 --eval_interval 6 \
  --out "$scratch/train" >/dev/null 2>"$scratch/train.log") || { cat "$scratch/train.log" >&2; fail "moe-train"; }
for f in metrics.jsonl summary.json dashboard.png; do
  [ -s "$scratch/train/$f" ] || fail "moe-train wrote no $f"
done
printf 'step,layer,e0,e1,e2,e3\n1,0,10,12,9,9\n2,0,11,10,10,9\n' > "$scratch/counts.csv"
"$prefix/bin/moe-stats" --json "$scratch/counts.csv" > "$scratch/stats.json" || fail "moe-stats"
/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r[0]["summed"]["expert_counts"]==[21,22,19,18], r' \
  "$scratch/stats.json" || fail "moe-stats' report"
"$prefix/bin/moe-bench" --help >/dev/null || fail "moe-bench --help"
# moe-epmodel (Python) reads the log through the moe-stats installed beside it.
[ -x "$prefix/bin/moe-epmodel" ] || fail "moe-epmodel not installed"
env -u MOE_STATS PATH=/usr/bin:/bin "$prefix/bin/moe-epmodel" --json --top-k 2 --d-model 8 \
  --ranks 2,4 "$scratch/counts.csv" > "$scratch/epmodel.json" || fail "moe-epmodel"
/usr/bin/python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["layer_steps"]==2 and len(r["results"])==8, r' \
  "$scratch/epmodel.json" || fail "moe-epmodel's predictions"

step "pip install --no-build-isolation --no-index ./bindings/python"
# pip builds in a copy, so the checkout stays clean.
cp -r "$source_dir/bindings/python" "$scratch/binding"
"$prefix/bin/python" -m pip install --quiet --no-build-isolation --no-index "$scratch/binding" \
  >"$scratch/pip.log" 2>&1 || { cat "$scratch/pip.log" >&2; fail "pip install"; }
(cd "$scratch" && "$prefix/bin/python" - "$libdir" <<'EOF') || fail "the installed Python package"
import os, sys
import numpy as np
import moe
libdir = sys.argv[1]
assert os.path.realpath(moe.library_path()).startswith(os.path.realpath(libdir)), moe.library_path()
layer = moe.Layer(8, 16, 4, 2)
assert layer.config()["backend"] not in (None, "auto"), layer.config()["backend"]
layer.set_weights(router=np.ones((8, 4)) * 0.1, w1=np.ones((4, 8, 16)) * 0.1,
                  w2=np.ones((4, 16, 8)) * 0.1)
y = layer.forward(np.ones((5, 8)))
assert y.shape == (5, 8) and np.isfinite(y).all()
print("python:", moe.__version__, moe.library_path(), layer.config()["backend"])
EOF

step "the installed package runs examples/torch_lm (moe.torch), briefly"
(cd "$scratch" && "$prefix/bin/python" "$source_dir/examples/torch_lm/train.py" --steps 10 \
  --eval_every 10 --d_model 16 --d_ff 16 --ctx 16 --threads 1 --no-plots \
  --out "$scratch/torch_lm" >"$scratch/torch_lm.log" 2>&1) ||
  { cat "$scratch/torch_lm.log" >&2; fail "examples/torch_lm with the installed package"; }
grep -q "largest relative difference" "$scratch/torch_lm.log" || fail "examples/torch_lm's report"

step "the prefix moved elsewhere still works (moe.pc, RUNPATH)"
moved=$scratch/moved
mv "$prefix" "$moved"
libdir=${libdir/#$prefix/$moved}
check_pkg_config "$libdir/pkgconfig" "$scratch/pc-moved" "$moved/"
"$moved/bin/moe-stats" "$scratch/counts.csv" >/dev/null || fail "moe-stats after the move"

step "only moe_* symbols exported"
exported=$(nm -D --defined-only "$libdir/libmoe.so" | awk '$2 ~ /[TDB]/ {print $3}' | sed 's/@.*//')
bad=$(echo "$exported" | grep -v '^moe_' || true)
[ -z "$bad" ] || fail "symbols exported besides moe_*: $bad"

step "libmoe links no CUDA library; the cuda plugin beside it"
needed=$(readelf -d "$libdir/libmoe.so.0" | awk '/NEEDED/ {print $NF}')
! echo "$needed" | grep -Eq 'cuda|cublas' || fail "libmoe needs a CUDA library: $needed"
plugin=$libdir/libmoe_cuda.so.0
if [ -f "$plugin" ]; then
  plugin_exports=$(nm -D --defined-only "$plugin" | awk '$2 ~ /[TDB]/ {print $3}' | sed 's/@.*//')
  [ "$plugin_exports" = moe_plugin_backend ] || fail "the plugin exports: $plugin_exports"
fi
# What a downstream C program gets from backend "cuda" on this machine.
cat > "$scratch/cuda_layer.c" <<'EOF'
#include <stdio.h>

#include "moe/moe.h"

int main(void) {
  int32_t count = 0;
  const char* first = "";
  if (moe_backend_count(&count) != MOE_STATUS_SUCCESS || count < 1) return 2;
  if (moe_backend_name(0, &first) != MOE_STATUS_SUCCESS) return 2;
  moe_layer_config_t config = MOE_LAYER_CONFIG_INIT;
  config.d_model = 8;
  config.d_ff = 16;
  config.num_experts = 4;
  config.top_k = 2;
  config.backend = "cuda";
  moe_layer_t layer = NULL;
  moe_status_t status = moe_layer_create(&config, &layer);
  printf("%s\n%s\n%s\n", first, moe_status_string(status),
         status == MOE_STATUS_SUCCESS ? "created" : moe_last_error());
  if (layer) moe_layer_destroy(layer);
  return 0;
}
EOF
cc -std=c99 -Wall -Wextra -Werror -I"$moved/include" "$scratch/cuda_layer.c" -L"$libdir" -lmoe \
  -Wl,-rpath,"$libdir" -o "$scratch/cuda_layer"
mapfile -t got < <("$scratch/cuda_layer")
[ "${#got[@]}" = 3 ] || fail "the cuda layer program printed: ${got[*]}"
if [ -f "$plugin" ]; then
  [ "${got[0]}" = cuda ] || fail "the plugin is installed, yet backend 0 is ${got[0]}"
  case "${got[1]}: ${got[2]}" in
    "MOE_STATUS_SUCCESS: created" | *"does not support this machine: no usable CUDA device ("*) ;;
    *) fail "backend cuda from the install: ${got[1]}: ${got[2]}" ;;
  esac
else
  [ "${got[0]}" != cuda ] || fail "cuda listed without its plugin"
  case "${got[2]}" in *"there is none beside libmoe"*) ;; *) fail "backend cuda: ${got[2]}" ;; esac
fi
step "backend cuda downstream: ${got[1]}: ${got[2]}"

echo "check_install: passed ($(basename "$libdir") layout; $(echo "$exported" | wc -l) symbols)"
