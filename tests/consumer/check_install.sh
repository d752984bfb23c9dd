#!/usr/bin/env bash
# Installs the build into a scratch prefix, then builds a consumer against it twice:
# with find_package(moe CONFIG) and with pkg-config. Also checks that only moe_*
# symbols are exported.
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cmake --install "$build_dir" --prefix "$scratch/prefix" >/dev/null
cmake -S "$source_dir" -B "$scratch/cmake" -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
cmake --build "$scratch/cmake" >/dev/null
LD_LIBRARY_PATH="$scratch/prefix/lib:${LD_LIBRARY_PATH:-}" "$scratch/cmake/consumer"

export PKG_CONFIG_PATH="$scratch/prefix/lib/pkgconfig"
cc -std=c99 -pedantic -Werror "$source_dir/main.c" $(pkg-config --cflags --libs moe) -o "$scratch/pc"
LD_LIBRARY_PATH="$scratch/prefix/lib" "$scratch/pc"

exported=$(nm -D --defined-only "$scratch"/prefix/lib/libmoe.so | awk '$2 ~ /[TDB]/ {print $3}' | sed 's/@.*//')
bad=$(echo "$exported" | grep -v '^moe_' || true)
if [ -n "$bad" ]; then
  echo "symbols exported besides moe_*:"; echo "$bad"; exit 1
fi
echo "install, find_package, pkg-config and symbol checks passed ($(echo "$exported" | wc -l) symbols)"
