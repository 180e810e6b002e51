#!/bin/bash
# CTest: spud against tools/ref_forward.py (float64 numpy reference) on generated models. See tests/README.md.
# Environment from CTest: SPUD, SHARED, SRC, BUILD, PYTHON.
set -eu
exec "${PYTHON:-/usr/bin/python3}" "${SRC:-$(dirname "$0")/..}/tests/check_reference.py" "$@"
