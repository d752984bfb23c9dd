#!/usr/bin/env bash
# Copies Debian's GoogleTest sources into .deps/googletest, for machines that cannot
# install packages (the lent GPU machine builds GoogleTest from them).
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg -s googletest >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq googletest; }
rm -rf .deps/googletest && mkdir -p .deps && cp -r /usr/src/googletest .deps/googletest
