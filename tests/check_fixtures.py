#!/usr/bin/python3
"""check_fixtures.py: spud against the shared conformance fixtures ($SHARED/fixtures/*.json).

For every fixture and prompt:
  * `$SPUD logits -m FILE.gguf -p PROMPT` must print {"tokens": [...], "logits": [...]};
    tokens must equal the fixture's tokens exactly;
    max|logits - logits_llamacpp| and max|logits - logits_reference_f64| must both be <= the
    per-type tolerance of $SHARED/fixtures/README.md (rule 2: an engine that rounds activations).
  * greedy: for k = 0.. while every greedy8_top2_gap_llamacpp[0..k] > 2 * tolerance,
    `$SPUD logits -m FILE.gguf --tokens TOKENS+greedy[0..k-1]` must have argmax == greedy8_llamacpp[k].
Prints a table and exits non-zero on any failure (with where it first diverged).

Environment: SPUD (spud binary; default BUILD/spud or ./build/spud), SHARED (default /work/shared).
"""
import glob
import json
import os
import subprocess
import sys
import time

# fixtures README, "Recommended tolerances", rule 2 (engine rounds activations like llama.cpp)
TOL = {"f32": 1e-4, "f16": 0.03, "bf16": 0.03, "q8_0": 0.15, "q4_0": 0.15,
       "q4_k": 0.21, "q6_k": 0.21, "q4_k_m": 0.22}

SPUD_TIMEOUT = 300


def find_spud():
    s = os.environ.get("SPUD")
    if s:
        return s
    for d in (os.environ.get("BUILD"), os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build")):
        if d and os.path.exists(os.path.join(d, "spud")):
            return os.path.join(d, "spud")
    return "spud"


class SpudError(Exception):
    pass


def run_spud(spud, args):
    cmd = [spud] + args
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=SPUD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SpudError("timed out after %ds: %s" % (SPUD_TIMEOUT, " ".join(cmd)))
    except OSError as e:
        raise SpudError("cannot run %s: %s" % (spud, e))
    if p.returncode != 0:
        raise SpudError("exit %d: %s\n  stderr: %s" % (p.returncode, " ".join(cmd),
                                                      p.stderr.decode(errors="replace").strip()[-2000:]))
    try:
        return json.loads(p.stdout.decode())
    except ValueError as e:
        raise SpudError("output is not JSON (%s): %s\n  stdout starts: %r" % (e, " ".join(cmd), p.stdout[:200]))


def spud_logits(spud, model, prompt=None, tokens=None):
    args = ["logits", "-m", model]
    if prompt is not None:
        args += ["-p", prompt]
    else:
        args += ["--tokens", ",".join(str(t) for t in tokens)]
    out = run_spud(spud, args)
    if not isinstance(out, dict) or "logits" not in out:
        raise SpudError("logits output lacks \"logits\": %s" % " ".join(args))
    return out


def maxabs(a, b):
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def argmax(v):
    best = 0
    for i in range(1, len(v)):
        if v[i] > v[best]:
            best = i
    return best


def main():
    shared = os.environ.get("SHARED", "/work/shared")
    spud = find_spud()
    files = sorted(glob.glob(os.path.join(shared, "fixtures", "*.json")))
    if not files:
        print("check_fixtures: no fixtures under %s/fixtures" % shared)
        return 1
    failures = []
    rows = []
    t0 = time.time()
    for js in files:
        with open(js) as f:
            fx = json.load(f)
        name = os.path.basename(js)[:-5]
        model = os.path.join(os.path.dirname(js), fx.get("model", name + ".gguf"))
        ftype = fx["type"]
        tol = TOL.get(ftype)
        if tol is None:
            failures.append("%s: unknown type %s (no tolerance)" % (name, ftype))
            continue
        worst_l, worst_r = 0.0, 0.0
        g_cmp, g_ok = 0, 0
        status = "ok"
        for ci, case in enumerate(fx["cases"]):
            where = "%s case %d (%r)" % (name, ci, case["prompt"][:40])
            try:
                out = spud_logits(spud, model, prompt=case["prompt"])
            except SpudError as e:
                failures.append("%s: spud logits failed: %s" % (where, e))
                status = "FAIL"
                continue
            toks = out.get("tokens")
            if toks != case["tokens"]:
                first = next((i for i, (a, b) in enumerate(zip(toks or [], case["tokens"])) if a != b),
                             min(len(toks or []), len(case["tokens"])))
                failures.append("%s: tokens differ first at index %d: spud %s, expected %s" % (
                    where, first, (toks or [])[first:first + 5], case["tokens"][first:first + 5]))
                status = "FAIL"
                continue
            lg = out["logits"]
            if len(lg) != len(case["logits_llamacpp"]):
                failures.append("%s: %d logits, expected %d" % (where, len(lg), len(case["logits_llamacpp"])))
                status = "FAIL"
                continue
            dl = maxabs(lg, case["logits_llamacpp"])
            dr = maxabs(lg, case["logits_reference_f64"])
            worst_l, worst_r = max(worst_l, dl), max(worst_r, dr)
            # spud keeps activations in f32 for float weights, so against the float64
            # reference it must be as close as the f32 files are, not just within the
            # llama.cpp tolerance (which allows for llama.cpp's f16/bf16 activation rounding).
            tol_r = 1e-4 if ftype in ("f16", "bf16") else tol
            if not (dl <= tol and dr <= tol_r):
                i = max(range(len(lg)), key=lambda j: max(abs(lg[j] - case["logits_llamacpp"][j]),
                                                          abs(lg[j] - case["logits_reference_f64"][j])))
                failures.append("%s: logits off: max diff vs llama.cpp %.3g, vs f64 %.3g > tol %g "
                                "(worst id %d: spud %.6f, llama.cpp %.6f, f64 %.6f)" % (
                                    where, dl, dr, tol, i, lg[i], case["logits_llamacpp"][i],
                                    case["logits_reference_f64"][i]))
                status = "FAIL"
            # greedy, while llama.cpp's top-2 gaps exceed 2 * tol
            g8, gaps = case["greedy8_llamacpp"], case["greedy8_top2_gap_llamacpp"]
            prefix = list(case["tokens"])
            cur = lg
            for k in range(len(g8)):
                if gaps[k] <= 2 * tol:
                    break
                if k > 0:
                    try:
                        cur = spud_logits(spud, model, tokens=prefix)["logits"]
                    except SpudError as e:
                        failures.append("%s greedy step %d: spud logits --tokens failed: %s" % (where, k, e))
                        status = "FAIL"
                        break
                g_cmp += 1
                got = argmax(cur)
                if got != g8[k]:
                    failures.append("%s: greedy diverged at step %d: spud %d, llama.cpp %d (llama.cpp gap %.4f, "
                                    "tol %g)" % (where, k, got, g8[k], gaps[k], tol))
                    status = "FAIL"
                    break
                g_ok += 1
                prefix.append(g8[k])
        rows.append((name, ftype, worst_l, worst_r, tol, g_cmp, g_ok, status))

    print("%-18s %-7s %12s %12s %8s %9s %8s  %s" % ("fixture", "type", "vs llama.cpp", "vs f64", "tol",
                                                   "greedy cmp", "matched", "status"))
    for r in rows:
        print("%-18s %-7s %12.3e %12.3e %8g %9d %8d  %s" % r)
    print("(%d fixtures, %.1fs)" % (len(rows), time.time() - t0))
    if failures:
        print("\nFAILURES (%d):" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("all fixtures pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
