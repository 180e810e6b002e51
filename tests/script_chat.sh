#!/bin/bash
# script_chat.sh: `spud chat` driven through stdin, on random-weight models
# from `spud gen-model` (which carry a ChatML template). Checks, from the
# per-turn --log: multi-line input, /system, /reset; that every prompt is
# exactly what `spud template` renders for the same messages; that turns after
# the first reuse the KV cache (only the new tokens are decoded); that a greedy
# answer decoded on top of the reused cache equals `spud run` on the whole
# prompt from scratch; and that SIGINT stops an answer, not the program.
#
# Env (set by CTest): SPUD (binary), PYTHON (/usr/bin/python3).
set -u
: "${SPUD:?set SPUD to the spud binary}"
PYTHON=${PYTHON:-/usr/bin/python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" - "$SPUD" "$TMP" <<'PY'
import json, os, signal, subprocess, sys, time

SPUD, TMP = sys.argv[1], sys.argv[2]
FAILS, PASSED = [], []

def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    (PASSED if cond else FAILS).append(what)
    return cond

def run(args, **kw):
    return subprocess.run([SPUD] + args, capture_output=True, timeout=600, **kw)

small = os.path.join(TMP, "small.gguf")
p = run(["gen-model", "--arch", "llama", "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
         "--ffn", "128", "--type", "f32", "--seed", "1", "-o", small])
if not check(p.returncode == 0, "gen-model small"):
    print(p.stderr.decode()); sys.exit(1)

# ---- a scripted conversation
log = os.path.join(TMP, "chat.log")
script = "hello there\nline one\\\nline two\n\n/system Be terse.\nhi again\n/reset\nbye\n"
p = run(["chat", "-m", small, "--temp", "0", "-n", "12", "--log", log], input=script.encode())
check(p.returncode == 0, "chat exits 0 at end of input (stderr: %s)" % p.stderr.decode().strip()[:200])
turns = [json.loads(l) for l in open(log, encoding="utf-8")]
check(len(turns) == 4, "4 turns logged (got %d)" % len(turns))
if len(turns) == 4:
    roles = lambda t: [(m["role"], m["content"]) for m in t["messages"]]
    check(roles(turns[0])[:1] == [("user", "hello there")], "turn 1: the user message")
    check(roles(turns[1])[2] == ("user", "line one\nline two"), "turn 2: a backslash continues the message")
    check(len(turns[1]["messages"]) == 4 and turns[1]["messages"][1]["role"] == "assistant",
          "turn 2: the conversation so far, with the first answer")
    check(roles(turns[2])[:2] == [("system", "Be terse."), ("user", "hi again")] and len(turns[2]["messages"]) == 3,
          "/system sets the system message and starts over")
    check(roles(turns[3])[:2] == [("system", "Be terse."), ("user", "bye")] and len(turns[3]["messages"]) == 3,
          "/reset forgets the conversation, keeps the system message")
    check(turns[0]["n_cached"] == 0, "turn 1 decodes everything")
    check(turns[1]["n_cached"] > 0, "turn 2 reuses %d cached tokens of %d" % (turns[1]["n_cached"], turns[1]["n_prompt"]))
    check(all(t["n_decoded"] == t["n_prompt"] - t["n_cached"] for t in turns), "only tokens after the cached prefix are decoded")
    check(p.stdout.decode("utf-8", "replace").count("\n") >= 4, "answers are streamed to stdout")
    for i, t in enumerate(turns):
        conv = os.path.join(TMP, "conv%d.json" % i)
        with open(conv, "w", encoding="utf-8") as f:
            json.dump(t["messages"][:-1], f, ensure_ascii=False)  # without the answer
        q = run(["template", "-m", small, "--messages", conv])
        check(q.returncode == 0 and q.stdout == t["prompt"].encode("utf-8"),
              "turn %d prompt is what spud template renders" % (i + 1))
        # the answer decoded on the reused cache equals a fresh greedy run on the whole prompt
        pf = os.path.join(TMP, "prompt%d.txt" % i)
        with open(pf, "wb") as f:
            f.write(t["prompt"].encode("utf-8"))
        args = ["run", "-m", small, "-f", pf, "--temp", "0", "-n", "12", "--parse-special"]
        if not t["add_bos"]:
            args.append("--no-bos")
        q = run(args)
        check(q.returncode == 0 and q.stdout.decode("utf-8", "replace")[:-1] == t["reply"],
              "turn %d answer (cached prefix %d) equals spud run from scratch" % (i + 1, t["n_cached"]))

# ---- a template error drops the message and keeps the chat going (the model's template is fine;
# an over-long message is refused instead)
p = run(["chat", "-m", small, "-c", "32", "--temp", "0", "-n", "4"], input=("word " * 200 + "\nhi\n").encode())
check(p.returncode == 0 and b"more than the context" in p.stderr, "a message over the context is refused, chat goes on")

# ---- Ctrl-C stops the answer, not the program
big = os.path.join(TMP, "big.gguf")
p = run(["gen-model", "--arch", "llama", "--dim", "256", "--layers", "4", "--heads", "8", "--kv-heads", "4",
         "--ffn", "768", "--type", "f32", "--seed", "3", "-o", big])
check(p.returncode == 0, "gen-model big")
long_prompt = None
for cand in ["xyz", "the", "1 2 3", "once upon a time", "abc def", "zzz"]:
    clog = os.path.join(TMP, "cal.log")
    if os.path.exists(clog):
        os.remove(clog)
    run(["chat", "-m", big, "--temp", "0", "-n", "400", "--log", clog], input=(cand + "\n").encode())
    t = json.loads(open(clog).readline())
    if t["stop"] == "length":
        long_prompt = cand
        break
if check(long_prompt is not None, "found a prompt whose greedy answer is long (%r)" % long_prompt):
    ilog = os.path.join(TMP, "int.log")
    proc = subprocess.Popen([SPUD, "chat", "-m", big, "--temp", "0", "-n", "-1", "-c", "4096", "--log", ilog],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write((long_prompt + "\n").encode())
    proc.stdin.flush()
    os.set_blocking(proc.stdout.fileno(), False)
    got, t0 = b"", time.time()
    while len(got) < 8 and time.time() - t0 < 60:
        try:
            got += proc.stdout.read() or b""
        except BlockingIOError:
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    alive = proc.poll() is None
    os.set_blocking(proc.stdout.fileno(), True)
    out, err = proc.communicate(input=b"second question\n", timeout=300)
    check(alive, "the program survives SIGINT during an answer")
    check(proc.returncode == 0, "and exits 0 at end of input (rc %s)" % proc.returncode)
    turns = [json.loads(l) for l in open(ilog)]
    check(len(turns) == 2 and turns[0]["stop"] == "interrupted" and turns[0]["n_generated"] < 4000,
          "SIGINT stopped the first answer (%s)" % ([(t["stop"], t["n_generated"]) for t in turns]))
    check(len(turns) == 2 and turns[1]["messages"][-2]["content"] == "second question",
          "the next message is answered")

print("%d passed, %d failed" % (len(PASSED), len(FAILS)))
sys.exit(1 if FAILS else 0)
PY
