#!/usr/bin/env bash
# A 100 MB input (mixed scripts, code, runs, invalid UTF-8) tokenizes, with
# the peak memory bounded by a small multiple of the input: the ids, the text
# and at most a few copies of a fragment. Under AddressSanitizer (whose shadow
# memory makes RSS meaningless) the size is 10 MB and only success is checked.
# Environment (set by CTest): SPUD, SRC, BUILD, PYTHON.
set -euo pipefail
: "${SPUD:?}" "${SRC:?}" "${BUILD:?}"
PY="${PYTHON:-python3}"
OUT="$BUILD/tokenizer-big"
mkdir -p "$OUT"
MB=100
if grep -q __asan_report_load "$SPUD"; then MB=10; fi
vocab="$OUT/vocab.gguf"
[ -f "$vocab" ] || "$SPUD" convert-vocab --tiktoken "$SRC/node_modules/tiktoken/encoders/o200k_base.json" -o "$vocab"
node --input-type=module -e "
import { corpus } from '$SRC/tests/tok_corpus.mjs';
import { writeFileSync } from 'node:fs';
writeFileSync('$OUT/part.txt', corpus(99, 2_000_000).join('\n'));
"
"$PY" - "$OUT/part.txt" "$OUT/big.txt" "$MB" <<'PYEOF'
import random, sys
part = open(sys.argv[1], 'rb').read()
target = int(sys.argv[3]) * 1_000_000
rnd = random.Random(7)
with open(sys.argv[2], 'wb') as f:
    n = 0
    while n < target:
        k = rnd.randrange(len(part) // 2)
        chunk = part[k:k + rnd.randrange(1000, 400_000)]
        extra = bytes(rnd.randrange(256) for _ in range(rnd.randrange(8))) if rnd.random() < 0.3 else b''
        run = (b'a' * rnd.randrange(1, 200_000)) if rnd.random() < 0.02 else b''
        f.write(chunk + extra + run)
        n += len(chunk) + len(extra) + len(run)
PYEOF
size=$(stat -c %s "$OUT/big.txt")
"$PY" - "$SPUD" "$vocab" "$OUT/big.txt" "$size" "$MB" <<'PYEOF'
import resource, subprocess, sys, time
spud, vocab, text, size, mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t0 = time.time()
p = subprocess.run([spud, 'tokenize', '-m', vocab, '--no-bos', '-f', text], stdout=subprocess.PIPE)
dt = time.time() - t0
assert p.returncode == 0, 'spud tokenize failed'
ids = p.stdout.count(b',') + 1
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(f'{size} bytes -> {ids} tokens in {dt:.1f} s; peak RSS {rss / 1e6:.0f} MB ({rss / size:.2f} x the input)')
if mb == 100:
    # the text (1x), the ids (4 bytes per token), the sanitized copy of a
    # fragment with invalid UTF-8 (<= 3x that fragment), the vocabulary
    bound = size + 4 * ids * 2 + 3 * 400_000 + 200_000_000
    assert rss < bound, f'peak RSS {rss} over the bound {bound}'
PYEOF
rm -f "$OUT/big.txt" "$OUT/part.txt"
