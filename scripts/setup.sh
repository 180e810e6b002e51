#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: install dependencies, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build
echo "--- spud run (the default model has RANDOM weights: expect gibberish) ---"
build/spud run -p "Once upon a time" -n 48 --seed 7
