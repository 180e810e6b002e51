#!/usr/bin/env bash
# bundle.sh: spud and test_kernels with the shared libraries they need, in one
# folder, to run on another x86-64 Linux machine that has none of our Debian
# packages (a lent machine with AMX, say: this is how the AMX kernels were
# tested, since the development machine has no AMX).
#
#   scripts/bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build, build-dev)
#
# Then, on the other machine, from the repository root:
#   export LD_LIBRARY_PATH=$PWD/build-dev/lib
#   build-dev/test_kernels                      # every kernel set the CPU runs, AMX included
#   scripts/bench.sh -b build-dev/spud -r 2     # the speed table
# glibc itself is not bundled: the other machine's must be as new as this one's.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-build-dev}
for b in spud test_kernels; do
  [ -x "$build/$b" ] || { echo "bundle.sh: no $build/$b (build first)" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/lib"
cp "$build/spud" "$build/test_kernels" "$out/"
ldd "$build/spud" "$build/test_kernels" | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
echo "bundle.sh: $out ($(du -sh "$out" | cut -f1)); run with LD_LIBRARY_PATH=\$PWD/$out/lib"
