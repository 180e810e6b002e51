#!/usr/bin/env bash
# bench.sh: the speed table of the README, as markdown on stdout.
#
#   scripts/bench.sh [-b SPUD] [-d MODEL_DIR] [-t THREADS] [-r REPS] [-T "q4_0 q8_0 q4_k_m"]
#                    [-D "8192 32768"] [-K "q8_0"] [-p 512] [-n 128]
#
# For each type it makes (once, with `spud gen-model`, into MODEL_DIR) a
# random-weight model of Llama-3.2-1B's shape (dim 2048, 16 layers, 32 heads,
# 8 KV heads, FFN 8192, vocab 128256, separate output matrix), then runs
# `spud bench --json`: pp and tg at depth 0, tg at each depth of -D with the
# default KV cache, and again with each KV type of -K ("" for none). The
# machine's read bandwidth (`spud bench --memory`) heads the table so every
# tg figure can be read as a fraction of it. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

spud=build/spud
dir=${SPUD_BENCH_MODELS:-/tmp/spud-bench}
threads=2
reps=3
types="q4_0 q8_0 q4_k_m"
depths="8192 32768"
kv_types="q8_0"
n_prompt=512
n_gen=128
while getopts "b:d:t:r:T:D:K:p:n:h" opt; do
  case $opt in
    b) spud=$OPTARG ;;
    d) dir=$OPTARG ;;
    t) threads=$OPTARG ;;
    r) reps=$OPTARG ;;
    T) types=$OPTARG ;;
    D) depths=$OPTARG ;;
    K) kv_types=$OPTARG ;;
    p) n_prompt=$OPTARG ;;
    n) n_gen=$OPTARG ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
[ -x "$spud" ] || { echo "bench.sh: no spud binary at $spud (build first, or -b PATH)" >&2; exit 1; }
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for t in $types; do
  m="$dir/l1b-$t.gguf"
  if [ ! -s "$m" ]; then
    echo "bench.sh: making $m" >&2
    "$spud" gen-model --arch llama --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 \
      --vocab 128256 --ctx 131072 --type "$t" --seed 1 -o "$m" >&2
  fi
done

echo "bench.sh: memory bandwidth" >&2
"$spud" bench --memory -t "$threads" -r 5 --json > "$tmp/memory.json"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for t in $types; do
  m="$dir/l1b-$t.gguf"
  echo "bench.sh: $t pp$n_prompt + tg$n_gen at depth 0" >&2
  "$spud" bench -m "$m" -p "$n_prompt" -n "$n_gen" -t "$threads" -r "$reps" --json > "$tmp/$t-0.json"
  for d in $depths; do
    echo "bench.sh: $t tg$n_gen at depth $d" >&2
    "$spud" bench -m "$m" -p 0 -n "$n_gen" -t "$threads" -r "$reps" --ctx-depth "$d" --json > "$tmp/$t-$d.json"
    for kv in $kv_types; do
      echo "bench.sh: $t tg$n_gen at depth $d, $kv KV cache" >&2
      "$spud" bench -m "$m" -p 0 -n "$n_gen" -t "$threads" -r "$reps" --ctx-depth "$d" --kv-type "$kv" --json \
        > "$tmp/$t-$d-$kv.json"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

/usr/bin/python3 - "$tmp" "$types" "$depths" "$threads" "$reps" "$n_prompt" "$n_gen" \
  "$load_before" "$load_after" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" "$kv_types" <<'EOF'
import json, sys
tmp, types, depths, threads, reps, n_prompt, n_gen, load0, load1, cpu, kv_types = sys.argv[1:]
types, depths, kv_types = types.split(), [int(d) for d in depths.split()], kv_types.split()
mem = json.load(open(f"{tmp}/memory.json"))["memory"]
bw = mem.get("limit", mem.get("gbps_max", mem["gbps"]))  # older binaries: f32 dot only
def load(t, d, kv=None):
    return json.load(open(f"{tmp}/{t}-{d}{'-' + kv if kv else ''}.json"))
def tests(t, d, kv=None):
    return {x["test"]: x for x in load(t, d, kv)["tests"]}
q8 = f", q8_0 dot {mem['q8_0_gbps']:.1f} ± {mem['q8_0_gbps_sd']:.1f}" if "q8_0_gbps" in mem else ""
print(f"Machine: {cpu}, {threads} threads, {mem['isa']} kernels. Read bandwidth "
      f"(`spud bench --memory -t {threads}`, best run): **{bw:.1f} GB/s** (f32 dot {mem['gbps']:.1f} ± "
      f"{mem['gbps_sd']:.1f}{q8}). "
      f"Load average before / after: {load0} / {load1}. Mean ± standard deviation of {reps} runs; "
      f"tg at depth with synthetic cache rows.")
print()
head = ["type (KV cache)", f"pp{n_prompt} tok/s", "GFLOP/s", f"tg{n_gen} tok/s", "GB/s (of limit)"]
for d in depths:
    head += [f"tg{n_gen} @ {d // 1024}K tok/s", "of depth 0", "GB/s"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for t in types:
    r0 = tests(t, 0)
    pp, tg = r0[f"pp{n_prompt}"], r0[f"tg{n_gen}"]
    for kv in [None] + kv_types:
        if kv is None:
            name = f"{t} ({load(t, depths[0]).get('kv_type', 'f32') if depths else 'default'})"
            row = [name, f"{pp['tps']:.1f} ± {pp['tps_sd']:.1f}", f"{pp['gflops']:.0f}",
                   f"{tg['tps']:.1f} ± {tg['tps_sd']:.1f}", f"{tg['gbps']:.1f} ({100 * tg['gbps'] / bw:.0f}%)"]
        else:
            row = [f"{t} ({kv})", "", "", "", ""]
        for d in depths:
            x = tests(t, d, kv)[f"tg{n_gen}"]
            row += [f"{x['tps']:.1f} ± {x['tps_sd']:.1f}", f"{100 * x['tps'] / tg['tps']:.0f}%", f"{x['gbps']:.1f}"]
        print("| " + " | ".join(row) + " |")
EOF
