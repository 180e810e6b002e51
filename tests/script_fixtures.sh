#!/bin/bash
# CTest: spud against the shared conformance fixtures (tokens, logits, greedy). See tests/README.md.
# Environment from CTest: SPUD, SHARED, SRC, BUILD, PYTHON.
set -eu
exec "${PYTHON:-/usr/bin/python3}" "${SRC:-$(dirname "$0")/..}/tests/check_fixtures.py" "$@"
