#!/usr/bin/env bash
# The whole test suite: a -Werror gcc build, then a clang ASan+UBSan build, each running every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

echo "=== gcc, -Werror ==="
CC=gcc cmake -B build-test -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPUD_WERROR=ON >/dev/null
cmake --build build-test
ctest --test-dir build-test --output-on-failure -j "$jobs"

echo "=== clang, -Werror, AddressSanitizer + UndefinedBehaviorSanitizer ==="
CC=clang cmake -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPUD_WERROR=ON -DSPUD_SANITIZE=ON >/dev/null
cmake --build build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs"
echo "all tests passed"
