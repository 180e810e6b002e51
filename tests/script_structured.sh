#!/bin/bash
# script_structured.sh: grammar-constrained decoding checked by an independent validator (ajv, JSON
# Schema 2020-12, from npm): tests/structured/run.mjs says what is checked.
#
# Env (set by CTest): SPUD (binary), SHARED (../shared), SRC (source dir). Needs node and the npm
# packages of package.json (npm ci), as scripts/setup.sh installs them.
set -u
: "${SPUD:?set SPUD to the spud binary}"
SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
if ! command -v node >/dev/null; then
    echo "FAIL: node is needed for the ajv validator"
    exit 1
fi
if [ ! -d "$SRC/node_modules/ajv" ]; then
    echo "FAIL: $SRC/node_modules/ajv is missing (run npm ci in $SRC)"
    exit 1
fi
exec node "$SRC/tests/structured/run.mjs"
