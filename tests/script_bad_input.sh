#!/usr/bin/env bash
# Bad input: every broken model file or argument gets a one-line error naming
# the problem and a non-zero exit, never a crash (signals, sanitizer reports).
set -uo pipefail
: "${SPUD:?}" "${SRC:?}" "${PYTHON:=/usr/bin/python3}"
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fail=0

"$SPUD" gen-model --arch llama --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --vocab 300 \
  --type q8_0 --seed 3 -o "$T/good.gguf" 2>/dev/null || { echo "gen-model failed"; exit 1; }

# expect_error NAME PATTERN CMD...: CMD must exit 1..127 with one stderr line matching PATTERN.
expect_error() {
  local name=$1 pat=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local lines; lines=$(wc -l <"$T/err")
  if [ $rc -eq 0 ] || [ $rc -ge 128 ] || [ "$lines" -ne 1 ] || ! grep -qiE -- "$pat" "$T/err"; then
    echo "FAIL $name: rc=$rc, $lines stderr lines (want 1 matching /$pat/):"; head -c 2000 "$T/err"
    fail=1
  else
    echo "ok   $name: $(cat "$T/err")"
  fi
}

mk() { # mk NAME PYTHON-EDIT: write $T/NAME.gguf from good.gguf with an edit applied to g
  "$PYTHON" - "$T/good.gguf" "$T/$1.gguf" <<PY
import sys; sys.path.insert(0, "$SRC/tests")
from gguf_edit import Gguf
g = Gguf(sys.argv[1])
$2
g.write(sys.argv[2])
PY
}

expect_error "missing file" "no such file" "$SPUD" info -m "$T/nope.gguf"
printf 'GGML\0\0\0\0' >"$T/magic.gguf"; expect_error "wrong magic" "magic" "$SPUD" info -m "$T/magic.gguf"
head -c 100 "$T/good.gguf" >"$T/trunc1.gguf"; expect_error "truncated header" "truncat|end of file|past|cannot fit" "$SPUD" info -m "$T/trunc1.gguf"
sz=$(stat -c %s "$T/good.gguf"); head -c $((sz - 100)) "$T/good.gguf" >"$T/trunc2.gguf"
expect_error "truncated data" "past|end of file|truncat" "$SPUD" run -m "$T/trunc2.gguf" -p hi -n 1
: >"$T/empty.gguf"; expect_error "empty file" "truncat|too small|end of file|empty" "$SPUD" info -m "$T/empty.gguf"
mk arch 'g.set_str("general.architecture", "mamba9")'
expect_error "unknown architecture" "mamba9" "$SPUD" run -m "$T/arch.gguf" -p hi -n 1
mk qtype 'g.tensor("blk.0.attn_q.weight")[2] = 7  # q5_1: a real GGML type spud does not support'
expect_error "unsupported type" "q5_1" "$SPUD" run -m "$T/qtype.gguf" -p hi -n 1
mk badtype 'g.tensor("blk.0.attn_q.weight")[2] = 999'
expect_error "unknown type id" "type" "$SPUD" info -m "$T/badtype.gguf"
mk missing 'g.drop_tensor("blk.1.ffn_up.weight")'
expect_error "missing tensor" "blk.1.ffn_up.weight" "$SPUD" run -m "$T/missing.gguf" -p hi -n 1
mk shape 't = g.tensor("blk.0.attn_k.weight"); t[1] = [t[1][0], t[1][1] // 2]; t[3] = t[3][:len(t[3]) // 2]'
expect_error "misshapen tensor" "attn_k.weight.*shape" "$SPUD" run -m "$T/shape.gguf" -p hi -n 1
mk offset 'g.tensors[0][3] = g.tensors[0][3] + b"\0" * 64; g.tensors[-1][3] = b""'
expect_error "data past end of file" "past|end of file|exceed|beyond" "$SPUD" run -m "$T/offset.gguf" -p hi -n 1
mk nokey 'g.kvs = [kv for kv in g.kvs if kv[0] != "llama.embedding_length"]'
expect_error "missing hyperparameter" "embedding_length" "$SPUD" run -m "$T/nokey.gguf" -p hi -n 1
expect_error "context larger than memory" "memory" "$SPUD" run -m "$T/good.gguf" -p hi -n 1 -c 4000000000
expect_error "bad argument" "-n" "$SPUD" run -m "$T/good.gguf" -p hi -n abc
expect_error "unknown flag" "--frobnicate" "$SPUD" run -m "$T/good.gguf" --frobnicate
expect_error "bad token id" "out of range" "$SPUD" logits -m "$T/good.gguf" --tokens 1,99999
expect_error "prompt longer than context" "longer than the context" "$SPUD" run -m "$T/good.gguf" -p "$(printf 'word %.0s' $(seq 1 200))" -c 16 -n 1

exit $fail
