#!/usr/bin/python3
"""check_reference.py: spud's forward pass against tools/ref_forward.py (float64 numpy reference).

Models:
  * `$SPUD gen-model` for arch llama / qwen2 / qwen3 x type f32 f16 bf16 q8_0 q4_0 q4_k q6_k, plus q4_k_m
    made with `$SPUD quantize F32 OUT q4_k_m`, plus tied-embedding, plain multi-head, --head-dim and
    --rope-freqs variants;
  * a few files written by this script itself (its own GGUF writer, tokenizer copied from a shared fixture)
    for what gen-model may not produce: qwen3 with attention.key_length != dim / heads, llama with a
    Llama-3.1 style rope_freqs.weight tensor and rope base 5e5.
For each model and each of 3 prompts:
  * logits: `$SPUD logits -m X -p PROMPT` vs ref_forward on the same tokens; max abs error <= bound,
    bound = TOL[type] * max(1, rms(reference logits))
    TOL: f32, f16, bf16 1e-4 (spud keeps activations in f32 for float weights, so only summation
    order differs); q8_0/q4_0 0.15; q4_k/q6_k 0.21; q4_k_m 0.22 (the fixtures README's tolerances for
    an engine that quantizes activations like llama.cpp, as spud does for quantized weights); the rms
    factor keeps them relative to the logit scale, which is about 1 in the fixtures.
  * greedy: `$SPUD run -m X -p PROMPT -n 32 --temp 0 --ids` (a JSON array of generated ids) vs the
    reference's greedy from the same prompt tokens. At each step where the reference's top-2 gap is
    > 2 * bound the tokens must agree; where the gap is smaller and they differ it is a legitimate
    near-tie: the sequence stops being compared and counts as a tie. A shorter spud sequence is accepted
    only where it stopped at an end-of-generation token.
Prints a table; exits non-zero on any failure.

Environment: SPUD (binary), SRC (repo root), SHARED (shared dir, for the tokenizer of the hand-written
models), TMPDIR. Option --quick: fewer models (f32 and q8_0 only).
"""
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("SRC", os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(SRC, "tools"))
import ref_forward as R  # noqa: E402

TOL = {"f32": 1e-4, "f16": 1e-4, "bf16": 1e-4, "q8_0": 0.15, "q4_0": 0.15,
       "q4_k": 0.21, "q6_k": 0.21, "q4_k_m": 0.22}

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Order #4521 (v2.7): 3 items @ $19.99 = $59.97; ship by 2025-03-14!",
    "When we speak of free software, we are referring to freedom, not price. Our licenses are designed "
    "to make sure that you have the freedom to distribute copies of it.",
]
N_GREEDY = 32
SPUD_TIMEOUT = 300


def find_spud():
    s = os.environ.get("SPUD")
    if s:
        return s
    for d in (os.environ.get("BUILD"), os.path.join(SRC, "build")):
        if d and os.path.exists(os.path.join(d, "spud")):
            return os.path.join(d, "spud")
    return "spud"


class SpudError(Exception):
    pass


def run(cmd, want_json=True):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=SPUD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SpudError("timed out: %s" % " ".join(cmd))
    except OSError as e:
        raise SpudError("cannot run %s: %s" % (cmd[0], e))
    if p.returncode != 0:
        raise SpudError("exit %d: %s\n    stderr: %s" % (p.returncode, " ".join(cmd),
                                                        p.stderr.decode(errors="replace").strip()[-1500:]))
    if not want_json:
        return None
    import json
    try:
        return json.loads(p.stdout.decode())
    except ValueError as e:
        raise SpudError("not JSON (%s): %s\n    stdout starts: %r" % (e, " ".join(cmd), p.stdout[:200]))


# ---------------------------------------------------------------------------------------------
# A small GGUF v3 writer for the hand-written models (independent of spud's writer)
# ---------------------------------------------------------------------------------------------

def _s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv_u32(k, v):
    return _s(k) + struct.pack("<II", R.T_UINT32, v)


def kv_f32(k, v):
    return _s(k) + struct.pack("<If", R.T_FLOAT32, v)


def kv_str(k, v):
    return _s(k) + struct.pack("<I", R.T_STRING) + _s(v)


def enc_tensor(w, tname):
    """float32 array (numpy shape = reversed ne) -> (ggml type id, bytes)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if tname == "f32":
        return 0, w.tobytes()
    if tname == "f16":
        return 1, w.astype("<f2").tobytes()
    if tname == "q8_0":
        b = w.reshape(-1, 32)
        amax = np.abs(b).max(axis=1)
        d = (amax / 127).astype(np.float32)
        idv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0).astype(np.float32)
        q = np.round(b * idv[:, None]).astype(np.int8)
        blk = np.concatenate([d.astype("<f2").view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
        return 8, blk.tobytes()
    raise ValueError(tname)


def write_gguf(path, kv_entries, tensors):
    """kv_entries: list of raw KV entry bytes; tensors: list of (name, numpy array, type name)."""
    head = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv_entries)))
    for e in kv_entries:
        head += e
    off, blobs = 0, []
    for name, arr, tname in tensors:
        ne = list(reversed(arr.shape))
        t, data = enc_tensor(arr, tname if arr.ndim > 1 else "f32")  # 1-D tensors (norms, biases) stay F32
        head += _s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        head += struct.pack("<IQ", t, off)
        pad = (-len(data)) % 32
        blobs.append(data + b"\0" * pad)
        off += len(data) + pad
    head += b"\0" * ((-len(head)) % 32)
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)


def handwritten(path, tok_src, arch, tname, seed, dim=128, layers=2, heads=4, kv_heads=2, head_dim=None,
                ffn=256, rope_base=10000.0, rope_freqs=False, tied=False, bias=False, qk_norm=False):
    g = R.GGUFFile(tok_src)
    vocab = len(g.kv["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(seed)
    hd = head_dim or dim // heads
    kv = [kv_str("general.architecture", arch), kv_str("general.name", "check_reference " + arch)]
    kv += [e for k, e in g.kv_raw.items() if k.startswith("tokenizer.")]
    kv += [kv_u32(arch + ".embedding_length", dim), kv_u32(arch + ".block_count", layers),
           kv_u32(arch + ".feed_forward_length", ffn), kv_u32(arch + ".attention.head_count", heads),
           kv_u32(arch + ".attention.head_count_kv", kv_heads), kv_u32(arch + ".context_length", 2048),
           kv_f32(arch + ".rope.freq_base", rope_base),
           kv_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-6 if arch != "llama" else 1e-5)]
    if head_dim:
        kv += [kv_u32(arch + ".attention.key_length", hd), kv_u32(arch + ".attention.value_length", hd)]
    if arch == "llama":
        kv += [kv_u32(arch + ".rope.dimension_count", hd)]

    def mat(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def nrm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    T = [("token_embd.weight", (rng.standard_normal((vocab, dim)) * (0.5 if tied else 1.0)).astype(np.float32),
          tname), ("output_norm.weight", nrm(dim), "f32")]
    if not tied:
        T.append(("output.weight", mat(vocab, dim), tname))
    if rope_freqs:
        # Llama 3.1 style factors: 1 for high frequencies, rising to 8 for the lowest
        f = np.ones(hd // 2, dtype=np.float32)
        n = hd // 2
        f[n // 2:] = np.linspace(1.5, 8.0, n - n // 2).astype(np.float32)
        T.append(("rope_freqs.weight", f, "f32"))
    for l in range(layers):
        p = "blk.%d." % l
        T += [(p + "attn_norm.weight", nrm(dim), "f32"),
              (p + "attn_q.weight", mat(heads * hd, dim), tname),
              (p + "attn_k.weight", mat(kv_heads * hd, dim), tname),
              (p + "attn_v.weight", mat(kv_heads * hd, dim), tname),
              (p + "attn_output.weight", mat(dim, heads * hd), tname)]
        if bias:
            T += [(p + "attn_q.bias", (0.5 * rng.standard_normal(heads * hd)).astype(np.float32), "f32"),
                  (p + "attn_k.bias", (0.5 * rng.standard_normal(kv_heads * hd)).astype(np.float32), "f32"),
                  (p + "attn_v.bias", (0.5 * rng.standard_normal(kv_heads * hd)).astype(np.float32), "f32")]
        if qk_norm:
            T += [(p + "attn_q_norm.weight", nrm(hd), "f32"), (p + "attn_k_norm.weight", nrm(hd), "f32")]
        T += [(p + "ffn_norm.weight", nrm(dim), "f32"),
              (p + "ffn_gate.weight", mat(ffn, dim), tname),
              (p + "ffn_up.weight", mat(ffn, dim), tname),
              (p + "ffn_down.weight", mat(dim, ffn), tname)]
    write_gguf(path, kv, T)


# ---------------------------------------------------------------------------------------------

def model_specs(quick):
    """(label, arch, type, how) with how = ('gen', extra gen-model args) | ('q4_k_m', arch) | ('hand', kwargs)."""
    small = ["--dim", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "320", "--vocab", "512"]
    kq = ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512", "--vocab", "512"]
    types = ["f32", "q8_0"] if quick else ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"]
    specs = []
    for arch in ("llama", "qwen2", "qwen3"):
        for t in types:
            specs.append(("%s-%s" % (arch, t), arch, t, ("gen", kq if t in ("q4_k", "q6_k") else small)))
        if not quick:
            specs.append(("%s-q4_k_m" % arch, arch, "q4_k_m", ("q4_k_m", kq)))
    mha = ["--dim", "128", "--layers", "2", "--heads", "4", "--kv-heads", "4", "--ffn", "320", "--vocab", "512"]
    specs += [("llama-f32-tied", "llama", "f32", ("gen", small + ["--tied"])),
              ("qwen2-q8_0-tied", "qwen2", "q8_0", ("gen", small + ["--tied"])),
              ("llama-q8_0-mha", "llama", "q8_0", ("gen", mha)),
              ("qwen3-f16-mha-tied", "qwen3", "f16", ("gen", mha + ["--tied"]))]
    specs += [("qwen3-q8_0-hd64", "qwen3", "q8_0", ("gen", small + ["--head-dim", "64"])),
              ("llama-f32-ropefreqs", "llama", "f32", ("gen", small + ["--rope-freqs", "--rope-base", "500000"]))]
    if not quick:
        specs.append(("llama-q6_k-hd128-rf", "llama", "q6_k",
                      ("gen", kq + ["--head-dim", "128", "--rope-freqs", "--rope-base", "500000"])))
        specs.append(("qwen2-q4_k-mha", "qwen2", "q4_k",
                      ("gen", ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "4", "--ffn", "512",
                               "--vocab", "512"])))
    # hand-written (own GGUF writer; tokenizer copied from a shared fixture)
    specs += [("hand-qwen3-hd64", "qwen3", "f32",
               ("hand", dict(tok="qwen2-f32.gguf", dim=128, heads=4, kv_heads=2, head_dim=64, ffn=256,
                             rope_base=1e6, qk_norm=True))),
              ("hand-llama-ropefreqs", "llama", "f32",
               ("hand", dict(tok="llama-f32.gguf", dim=128, heads=2, kv_heads=2, ffn=256, rope_base=5e5,
                             rope_freqs=True))),
              ("hand-qwen2-q8_0-tied", "qwen2", "q8_0",
               ("hand", dict(tok="qwen2-f32.gguf", dim=128, heads=8, kv_heads=2, ffn=256, rope_base=1e6,
                             bias=True, tied=True)))]
    return specs


def eog_ids(g):
    kv = g.kv
    ids = set()
    for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if k in kv:
            ids.add(int(kv[k]))
    toks = kv.get("tokenizer.ggml.tokens") or []
    for i, t in enumerate(toks):
        if t in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|eom_id|>",
                 "<end_of_turn>", "<|end|>"):
            ids.add(i)
    return ids


def compare_greedy(spud_ids, ref_ids, ref_gaps, bound, eog):
    """Returns (compared, matched, tie, error or None)."""
    compared = matched = 0
    for k in range(len(ref_ids)):
        if k >= len(spud_ids):
            if (spud_ids and spud_ids[-1] in eog) or ref_ids[k] in eog:
                return compared, matched, False, None
            return compared, matched, False, "spud stopped after %d tokens; reference continues with %d" % (
                len(spud_ids), ref_ids[k])
        compared += 1
        if spud_ids[k] == ref_ids[k]:
            matched += 1
            if ref_ids[k] in eog:
                return compared, matched, False, None
            continue
        if ref_gaps[k] <= 2 * bound:
            return compared, matched, True, None
        return compared, matched, False, "step %d: spud %d, reference %d (reference top-2 gap %.4f > 2*bound %.3g)" % (
            k, spud_ids[k], ref_ids[k], ref_gaps[k], bound)
    return compared, matched, False, None


def main():
    quick = "--quick" in sys.argv[1:]
    spud = find_spud()
    shared = os.environ.get("SHARED", "/work/shared")
    tmp = tempfile.mkdtemp(prefix="spud-ref-")
    failures, rows = [], []
    t0 = time.time()
    seed = 100
    for label, arch, tname, how in model_specs(quick):
        seed += 1
        path = os.path.join(tmp, label + ".gguf")
        try:
            if how[0] == "gen":
                run([spud, "gen-model", "--arch", arch] + how[1] +
                    ["--type", tname, "--seed", str(seed), "-o", path], want_json=False)
            elif how[0] == "q4_k_m":
                f32 = os.path.join(tmp, label + "-f32.gguf")
                run([spud, "gen-model", "--arch", arch] + how[1] +
                    ["--type", "f32", "--seed", str(seed), "-o", f32], want_json=False)
                run([spud, "quantize", f32, path, "q4_k_m"], want_json=False)
            else:
                kw = dict(how[1])
                tok = os.path.join(shared, "fixtures", kw.pop("tok"))
                if not os.path.exists(tok):
                    rows.append((label, tname, float("nan"), float("nan"), 0, 0, 0, "skip (no %s)" % tok))
                    continue
                handwritten(path, tok, arch, tname, seed, **kw)
        except SpudError as e:
            failures.append("%s: making the model failed: %s" % (label, e))
            rows.append((label, tname, float("nan"), float("nan"), 0, 0, 0, "FAIL"))
            continue
        try:
            ref = R.Model(path)
        except (R.GGUFError, ValueError) as e:
            failures.append("%s: the reference cannot load the model: %s" % (label, e))
            rows.append((label, tname, float("nan"), float("nan"), 0, 0, 0, "FAIL"))
            continue
        eog = eog_ids(ref.g)
        worst, worst_bound = 0.0, 0.0
        n_cmp = n_ok = n_tie = 0
        status = "ok"
        for pi, prompt in enumerate(PROMPTS):
            where = "%s prompt %d" % (label, pi)
            try:
                out = run([spud, "logits", "-m", path, "-p", prompt])
                toks, lg = out["tokens"], np.asarray(out["logits"], dtype=np.float64)
            except (SpudError, KeyError, TypeError) as e:
                failures.append("%s: spud logits: %s" % (where, e))
                status = "FAIL"
                continue
            if not toks:
                failures.append("%s: spud returned no tokens" % where)
                status = "FAIL"
                continue
            rl, rg, rgaps = ref.run(toks, N_GREEDY)
            bound = TOL[tname] * max(1.0, float(np.sqrt(np.mean(rl * rl))))
            worst_bound = max(worst_bound, bound)
            if lg.shape != rl.shape:
                failures.append("%s: spud gave %d logits, reference %d" % (where, lg.size, rl.size))
                status = "FAIL"
                continue
            err = float(np.abs(lg - rl).max())
            worst = max(worst, err)
            if not err <= bound:
                i = int(np.abs(lg - rl).argmax())
                failures.append("%s: max abs logit error %.3g > bound %.3g (id %d: spud %.6f, reference %.6f; "
                                "%d prompt tokens)" % (where, err, bound, i, lg[i], rl[i], len(toks)))
                status = "FAIL"
            try:
                ids = run([spud, "run", "-m", path, "-p", prompt, "-n", str(N_GREEDY), "--temp", "0", "--ids"])
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                    raise SpudError("--ids output is not a JSON array of integers")
            except SpudError as e:
                failures.append("%s: spud run --ids: %s" % (where, e))
                status = "FAIL"
                continue
            c, m, tie, e = compare_greedy(ids, rg, rgaps, bound, eog)
            n_cmp, n_ok, n_tie = n_cmp + c, n_ok + m, n_tie + int(tie)
            if e:
                failures.append("%s: greedy: %s" % (where, e))
                status = "FAIL"
        rows.append((label, tname, worst, worst_bound, n_cmp, n_ok, n_tie, status))
        try:
            os.remove(path)
        except OSError:
            pass

    print("%-22s %-7s %11s %10s %8s %8s %5s  %s" % ("model", "type", "max err", "bound", "greedy", "matched",
                                                    "ties", "status"))
    for r in rows:
        print("%-22s %-7s %11.3e %10.3g %8d %8d %5d  %s" % r)
    print("(%d models x %d prompts, greedy %d tokens, %.1fs)" % (len(rows), len(PROMPTS), N_GREEDY,
                                                                time.time() - t0))
    try:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)
    except OSError:
        pass
    if failures:
        print("\nFAILURES (%d):" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("spud agrees with the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
