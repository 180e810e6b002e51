#!/bin/bash
# script_gen_model.sh: `spud gen-model` and `spud quantize`, checked by an
# independent GGUF reader (the Python below, written from the GGUF spec and the
# GGML block layouts with numpy, not from spud's code). The reader's
# dequantizers are first checked against the shared fixtures, which llama.cpp's
# tools wrote.
#
# Env (set by CTest): SPUD (binary), SHARED (../shared), PYTHON (/usr/bin/python3).
set -u
: "${SPUD:?set SPUD to the spud binary}"
PYTHON=${PYTHON:-/usr/bin/python3}
SHARED=${SHARED:-}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" - "$SPUD" "$TMP" "$SHARED" <<'PY'
import math, os, re, struct, subprocess, sys
import numpy as np

SPUD, TMP, SHARED = sys.argv[1], sys.argv[2], sys.argv[3]
FAILS = []

def check(cond, what):
    if not cond:
        FAILS.append(what)
        print('FAIL: ' + what, flush=True)
    return cond

# ---------------------------------------------------------------- GGUF reader
GGML = {'F32': 0, 'F16': 1, 'Q4_0': 2, 'Q8_0': 8, 'Q4_K': 12, 'Q6_K': 14, 'BF16': 30}
TNAME = {v: k for k, v in GGML.items()}
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 8: (32, 34), 12: (256, 144), 14: (256, 210)}

class Gguf:
    """Minimal GGUF v3 reader, written from the format spec (not from spud)."""
    def __init__(self, path):
        self.raw = b = open(path, 'rb').read()
        self.pos = 0
        assert b[:4] == b'GGUF', 'bad magic'
        self.pos = 4
        self.version = self.u('I')
        nt, nkv = self.u('Q'), self.u('Q')
        self.kv, self.kvtype = {}, {}
        for _ in range(nkv):
            k = self.s()
            t = self.u('I')
            self.kvtype[k] = t
            self.kv[k] = self.val(t)
        self.tensors = {}
        self.order = []
        for _ in range(nt):
            name = self.s()
            nd = self.u('I')
            ne = [self.u('Q') for _ in range(nd)]
            ty = self.u('I')
            off = self.u('Q')
            self.tensors[name] = (ne, ty, off)
            self.order.append(name)
        al = self.kv.get('general.alignment', 32)
        self.data_start = (self.pos + al - 1) // al * al
        self.alignment = al

    def u(self, fmt):
        v = struct.unpack_from('<' + fmt, self.raw, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def s(self):
        n = self.u('Q')
        v = self.raw[self.pos:self.pos + n].decode('utf-8')
        self.pos += n
        return v

    SC = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: '?', 10: 'Q', 11: 'q', 12: 'd'}

    def val(self, t):
        if t == 8:
            return self.s()
        if t == 9:
            et, n = self.u('I'), self.u('Q')
            if et == 8:
                return [self.s() for _ in range(n)]
            fmt = self.SC[et]
            sz = struct.calcsize(fmt)
            arr = list(struct.unpack_from('<%d%s' % (n, fmt), self.raw, self.pos))
            self.pos += n * sz
            return arr
        return self.u(self.SC[t])

    def nbytes(self, name):
        ne, ty, _ = self.tensors[name]
        bs, ts = BLOCK[ty]
        n = int(np.prod(ne))
        assert ne[0] % bs == 0
        return n // bs * ts

    def bytes_of(self, name):
        ne, ty, off = self.tensors[name]
        a = self.data_start + off
        return self.raw[a:a + self.nbytes(name)]

    def f32(self, name):
        """Dequantize a tensor to float32, shape (rows, ne0)."""
        ne, ty, _ = self.tensors[name]
        raw = np.frombuffer(self.bytes_of(name), np.uint8)
        rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
        return dequant(raw, ty).reshape(rows, ne[0])

def f16(b):
    return b.copy().view(np.float16).astype(np.float32)

def dequant(raw, ty):
    if ty == 0:
        return raw.view(np.float32).copy()
    if ty == 1:
        return raw.view(np.float16).astype(np.float32)
    if ty == 30:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if ty == 8:   # Q8_0: d f16, 32 x int8
        b = raw.reshape(-1, 34)
        return (f16(b[:, 0:2]) * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
    if ty == 2:   # Q4_0: d f16, 16 bytes: low nibble j, high nibble j + 16, offset 8
        b = raw.reshape(-1, 18)
        q = b[:, 2:]
        v = np.concatenate([q & 15, q >> 4], axis=1).astype(np.float32) - 8
        return (f16(b[:, 0:2]) * v).reshape(-1)
    if ty == 12:  # Q4_K: d, dmin f16; 12 bytes of 6-bit scales/mins; 128 bytes of nibbles
        b = raw.reshape(-1, 144)
        d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
        q = b[:, 4:16].astype(np.int32)
        sc = np.zeros((len(b), 8), np.int32)
        mn = np.zeros((len(b), 8), np.int32)
        for j in range(8):
            if j < 4:
                sc[:, j] = q[:, j] & 63
                mn[:, j] = q[:, j + 4] & 63
            else:
                sc[:, j] = (q[:, j + 4] & 15) | ((q[:, j - 4] >> 6) << 4)
                mn[:, j] = (q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4)
        qs = b[:, 16:]
        out = np.zeros((len(b), 256), np.float32)
        for j in range(4):
            c = qs[:, 32 * j:32 * j + 32]
            for h, nib in enumerate((c & 15, c >> 4)):
                s = 2 * j + h
                out[:, 64 * j + 32 * h:64 * j + 32 * h + 32] = \
                    d * sc[:, s:s + 1] * nib.astype(np.float32) - dmin * mn[:, s:s + 1]
        return out.reshape(-1)
    if ty == 14:  # Q6_K: ql[128], qh[64], int8 scales[16], d f16
        b = raw.reshape(-1, 210)
        ql, qh = b[:, 0:128].astype(np.int32), b[:, 128:192].astype(np.int32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = f16(b[:, 208:210])
        out = np.zeros((len(b), 256), np.float32)
        for n in range(2):
            L, H, S = ql[:, 64 * n:64 * n + 64], qh[:, 32 * n:32 * n + 32], sc[:, 8 * n:8 * n + 8]
            for l in range(32):
                i = l // 16
                q1 = ((L[:, l] & 15) | (((H[:, l] >> 0) & 3) << 4)) - 32
                q2 = ((L[:, l + 32] & 15) | (((H[:, l] >> 2) & 3) << 4)) - 32
                q3 = ((L[:, l] >> 4) | (((H[:, l] >> 4) & 3) << 4)) - 32
                q4 = ((L[:, l + 32] >> 4) | (((H[:, l] >> 6) & 3) << 4)) - 32
                base = 128 * n + l
                out[:, base] = d[:, 0] * S[:, i] * q1
                out[:, base + 32] = d[:, 0] * S[:, i + 2] * q2
                out[:, base + 64] = d[:, 0] * S[:, i + 4] * q3
                out[:, base + 96] = d[:, 0] * S[:, i + 6] * q4
        return out.reshape(-1)
    raise ValueError('type %d' % ty)

# ---------------------------------------------------------------- helpers
def run(*args):
    p = subprocess.run([SPUD] + [str(a) for a in args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr

N = [0]
def gen(*args, name=None):
    """Run gen-model with args, return the output path (None and a failure if it failed)."""
    N[0] += 1
    out = os.path.join(TMP, name or 'm%d.gguf' % N[0])
    rc, so, se = run('gen-model', *args, '-o', out)
    if not check(rc == 0 and os.path.exists(out), 'gen-model %s: rc %d: %s' % (' '.join(map(str, args)), rc, se.strip())):
        return None
    return out

def base_args(arch, dim=256, layers=3, heads=4, kv=2, ffn=512, typ='f32', seed=1, extra=()):
    return ['--arch', arch, '--dim', dim, '--layers', layers, '--heads', heads, '--kv-heads', kv,
            '--ffn', ffn, '--type', typ, '--seed', seed] + list(extra)

FTYPE = {'f32': 0, 'f16': 1, 'bf16': 32, 'q8_0': 7, 'q4_0': 2, 'q4_k': 14, 'q6_k': 18, 'q4_k_m': 15}
PURE = {'f32': 0, 'f16': 1, 'bf16': 30, 'q8_0': 8, 'q4_0': 2, 'q4_k': 12, 'q6_k': 14}

def more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

def expected_type(typ, name, ne, n_layers, has_output, fallback=False):
    """llama.cpp's choice (llama_tensor_get_type) for the tensors of these models."""
    if len(ne) == 1 or not name.endswith('weight') or '_norm.weight' in name:
        return 0
    if typ == 'q4_k_m':
        layer = int(name.split('.')[1]) if name.startswith('blk.') else 0
        if name == 'output.weight' or (not has_output and name == 'token_embd.weight'):
            t = 14 if ne[0] % 256 == 0 else 8
        elif 'attn_v.weight' in name:
            t = 14 if more_bits(layer, n_layers) else 12
        elif 'ffn_down' in name:
            t = 14 if more_bits(layer, n_layers) else 12
        else:
            t = 12
    else:
        t = PURE[typ]
    if fallback and ne[0] % BLOCK[t][0] != 0:   # spud's documented fallback
        t = 8 if ne[0] % 32 == 0 else 1
    return t

def bytes_to_unicode():
    """GPT-2's byte -> printable unicode table (from its encoder.py)."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

B2U = bytes_to_unicode()
U2B = {v: k for k, v in B2U.items()}

def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))

def expected_tensors(arch, dim, layers, heads, kv, ffn, vocab, hd=None, tied=False, rope_freqs=False):
    hd = hd or dim // heads
    q, k = heads * hd, kv * hd
    t = {'token_embd.weight': [dim, vocab], 'output_norm.weight': [dim]}
    if not tied:
        t['output.weight'] = [dim, vocab]
    if rope_freqs:
        t['rope_freqs.weight'] = [hd // 2]
    for i in range(layers):
        b = 'blk.%d.' % i
        t.update({b + 'attn_norm.weight': [dim], b + 'attn_q.weight': [dim, q], b + 'attn_k.weight': [dim, k],
                  b + 'attn_v.weight': [dim, k], b + 'attn_output.weight': [q, dim], b + 'ffn_norm.weight': [dim],
                  b + 'ffn_gate.weight': [dim, ffn], b + 'ffn_up.weight': [dim, ffn], b + 'ffn_down.weight': [ffn, dim]})
        if arch == 'qwen2':
            t.update({b + 'attn_q.bias': [q], b + 'attn_k.bias': [k], b + 'attn_v.bias': [k]})
        if arch == 'qwen3':
            t.update({b + 'attn_q_norm.weight': [hd], b + 'attn_k_norm.weight': [hd]})
    return t

def check_layout(g, label):
    """Offsets aligned, in range, not overlapping; file ends after the last tensor."""
    spans = sorted((off, g.nbytes(n), n) for n, (ne, ty, off) in g.tensors.items())
    end = 0
    for off, nb, n in spans:
        check(off % g.alignment == 0, '%s: %s offset %d not aligned' % (label, n, off))
        check(off >= end, '%s: %s overlaps the previous tensor' % (label, n))
        end = off + nb
    check(g.data_start + end <= len(g.raw), '%s: tensor data runs past the end of the file' % label)
    check(len(g.raw) - (g.data_start + end) < g.alignment, '%s: trailing bytes after the last tensor' % label)

PRE_GPT2 = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z\x80-\xff]+| ?[0-9]+| ?[^\sA-Za-z0-9\x80-\xff]+|\s+""")
PRE_QWEN2 = re.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9\x80-\xff]?[A-Za-z\x80-\xff]+|[0-9]| ?[^\sA-Za-z0-9\x80-\xff]+[\r\n]*|\s+""")

def check_vocab(g, label, arch, n_vocab):
    kv = g.kv
    toks, types, merges = kv['tokenizer.ggml.tokens'], kv['tokenizer.ggml.token_type'], kv['tokenizer.ggml.merges']
    check(kv['tokenizer.ggml.model'] == 'gpt2', label + ': tokenizer.ggml.model')
    check(kv['tokenizer.ggml.pre'] == ('gpt-2' if arch == 'llama' else 'qwen2'), label + ': tokenizer.ggml.pre')
    check(len(toks) == n_vocab and len(types) == n_vocab, '%s: %d tokens, want %d' % (label, len(toks), n_vocab))
    check(kv.get('%s.vocab_size' % arch) == n_vocab, label + ': vocab_size')
    check(len(set(toks)) == len(toks), label + ': token texts not unique')
    check(all(toks[b] == B2U[b] for b in range(256)), label + ': ids 0..255 are not the bytes in byte order')
    check(toks[-3:] == ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], label + ': last three tokens')
    check(kv['tokenizer.ggml.bos_token_id'] == n_vocab - 3 and kv['tokenizer.ggml.padding_token_id'] == n_vocab - 3
          and kv['tokenizer.ggml.eos_token_id'] == n_vocab - 1, label + ': bos/pad/eos ids')
    for k in ('tokenizer.ggml.bos_token_id', 'tokenizer.ggml.eos_token_id', 'tokenizer.ggml.padding_token_id'):
        check(g.kvtype[k] == 4, label + ': %s is not uint32' % k)
    check(kv['tokenizer.ggml.add_bos_token'] is (arch == 'llama'), label + ': add_bos_token')
    check(types[-3:] == [3, 3, 3], label + ': specials are not CONTROL')
    tmpl = kv.get('tokenizer.chat_template', '')
    check('<|im_start|>' in tmpl and 'add_generation_prompt' in tmpl and 'endfor' in tmpl, label + ': ChatML template')
    n_learned = 256 + len(merges)
    check(len(merges) <= n_vocab - 259, label + ': too many merges')
    check(all(t == 1 for t in types[:n_learned]), label + ': byte/learned tokens not NORMAL')
    check(all(t == 3 for t in types[n_learned:]), label + ': padding tokens not CONTROL')
    check(all(re.fullmatch(r'<\|reserved_\d+\|>', t) for t in toks[n_learned:n_vocab - 3]), label + ': padding names')
    ids = {t: i for i, t in enumerate(toks)}
    pre = PRE_GPT2 if arch == 'llama' else PRE_QWEN2
    bad = []
    for m_i, m in enumerate(merges):
        parts = m.split(' ')
        if len(parts) != 2 or parts[0] not in ids or parts[1] not in ids or parts[0] + parts[1] not in ids:
            bad.append(m)
            continue
        a, b, ab = ids[parts[0]], ids[parts[1]], ids[parts[0] + parts[1]]
        if not (ab > a and ab > b and ab == 256 + m_i):
            bad.append(m)
            continue
        # a merge never crosses a pre-split boundary: the token is one word (or part of one)
        text = bytes(U2B[c] for c in parts[0] + parts[1]).decode('latin-1')
        if pre.match(text) is None or pre.match(text).end() != len(text):
            bad.append(m)
    check(not bad, '%s: %d inconsistent or word-crossing merges, e.g. %r' % (label, len(bad), bad[:3]))

def check_hparams(g, label, arch, typ, dim, layers, heads, kv, ffn, hd=None, ctx=4096, rope_base=None):
    a = g.kv
    hd = hd or dim // heads
    want = {'general.architecture': arch, 'general.file_type': FTYPE[typ], '%s.context_length' % arch: ctx,
            '%s.embedding_length' % arch: dim, '%s.block_count' % arch: layers,
            '%s.feed_forward_length' % arch: ffn, '%s.attention.head_count' % arch: heads,
            '%s.attention.head_count_kv' % arch: kv, '%s.rope.dimension_count' % arch: hd}
    if arch == 'qwen3' or hd * heads != dim:
        want['%s.attention.key_length' % arch] = hd
        want['%s.attention.value_length' % arch] = hd
    for k, v in want.items():
        check(a.get(k) == v, '%s: %s = %r, want %r' % (label, k, a.get(k), v))
        if isinstance(v, int):
            check(g.kvtype.get(k) == 4, '%s: %s is not uint32' % (label, k))
    check('general.name' in a, label + ': general.name')
    eps = 1e-5 if arch == 'llama' else 1e-6
    base = rope_base or (1e4 if arch == 'llama' else 1e6)
    check(g.kvtype.get('%s.attention.layer_norm_rms_epsilon' % arch) == 6 and
          abs(a['%s.attention.layer_norm_rms_epsilon' % arch] - eps) < eps * 1e-6, label + ': rms epsilon')
    check(g.kvtype.get('%s.rope.freq_base' % arch) == 6 and abs(a['%s.rope.freq_base' % arch] - base) < base * 1e-6,
          label + ': rope.freq_base')
    check(('general.quantization_version' in a) == (typ not in ('f32', 'f16')), label + ': quantization_version')
    check(g.version == 3, label + ': not GGUF v3')

# ---------------------------------------------------------------- 0. the reader itself
FIX = os.path.join(SHARED, 'fixtures') if SHARED else ''
if FIX and os.path.exists(os.path.join(FIX, 'llama-f32.gguf')):
    ref = Gguf(os.path.join(FIX, 'llama-f32.gguf'))
    for typ, bound in (('f16', 1e-3), ('bf16', 5e-3), ('q8_0', 0.01), ('q4_0', 0.15)):
        g = Gguf(os.path.join(FIX, 'llama-%s.gguf' % typ))
        err = max(rel_rms(g.f32(n), ref.f32(n)) for n in ref.order)
        check(err < bound, 'reader: %s fixture dequantizes %.3g away from f32' % (typ, err))
    ref = Gguf(os.path.join(FIX, 'llama-q6_k.gguf'))
    g = Gguf(os.path.join(FIX, 'llama-q4_k.gguf'))
    err = max(rel_rms(g.f32(n), ref.f32(n)) for n in ref.order)
    check(err < 0.12, 'reader: q4_k vs q6_k fixtures differ by %.3g' % err)
    print('reader: dequantizers agree with the fixtures', flush=True)
else:
    print('reader: no fixtures at %r, skipping its self-check' % FIX, flush=True)

# ---------------------------------------------------------------- 1. every arch x type
DIM, LAYERS, HEADS, KV, FFN = 256, 3, 4, 2, 512
f32_models = {}
for arch in ('llama', 'qwen2', 'qwen3'):
    for typ in ('f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_k', 'q6_k', 'q4_k_m'):
        label = '%s-%s' % (arch, typ)
        path = gen(*base_args(arch, typ=typ, seed=11), name=label + '.gguf')
        if not path:
            continue
        g = Gguf(path)
        check_hparams(g, label, arch, typ, DIM, LAYERS, HEADS, KV, FFN)
        check_layout(g, label)
        want = expected_tensors(arch, DIM, LAYERS, HEADS, KV, FFN, 512)
        check(set(g.tensors) == set(want), '%s: tensors %s' % (label, sorted(set(g.tensors) ^ set(want))))
        for n, ne in want.items():
            if n not in g.tensors:
                continue
            check(g.tensors[n][0] == ne, '%s: %s shape %s, want %s' % (label, n, g.tensors[n][0], ne))
            t = expected_type(typ, n, ne, LAYERS, True)
            check(g.tensors[n][1] == t, '%s: %s type %s, want %s' % (label, n, g.tensors[n][1], TNAME[t]))
        if typ == 'f32':
            check_vocab(g, label, arch, 512)
            f32_models[arch] = g
            w = {n: g.f32(n) for n in g.tensors}
            def near(n, mean, std):
                x = w[n]
                ok = abs(x.mean() - mean) < 0.05 * max(std, 0.1) + 3 * std / math.sqrt(x.size) and \
                     abs(x.std() / std - 1) < 0.05
                check(ok, '%s: %s mean %.4f std %.4f, want %.4f, %.4f' % (label, n, x.mean(), x.std(), mean, std))
            near('token_embd.weight', 0, 1)
            near('output.weight', 0, DIM ** -0.5)
            near('blk.0.attn_q.weight', 0, DIM ** -0.5)
            near('blk.1.attn_output.weight', 0, (HEADS * DIM // HEADS) ** -0.5)
            near('blk.2.ffn_down.weight', 0, FFN ** -0.5)
            near('blk.2.ffn_gate.weight', 0, DIM ** -0.5)
            allnorm = np.concatenate([w[n].ravel() for n in w if n.endswith('_norm.weight')])
            check(abs(allnorm.mean() - 1) < 0.01 and abs(allnorm.std() - 0.1) < 0.01,
                  '%s: norms mean %.3f std %.3f' % (label, allnorm.mean(), allnorm.std()))
            if arch == 'qwen2':
                bias = np.concatenate([w[n].ravel() for n in w if n.endswith('.bias')])
                check(abs(bias.std() - 0.5) < 0.03 and abs(bias.mean()) < 0.05, '%s: biases std %.3f' % (label, bias.std()))
            # normality: about 4.55% beyond 2 sigma, 0.27% beyond 3
            x = w['token_embd.weight'].ravel()
            check(abs(np.mean(np.abs(x) > 2) - 0.0455) < 0.004 and abs(np.mean(np.abs(x) > 3) - 0.0027) < 0.001,
                  '%s: token_embd tails do not look normal' % label)
        else:
            # the same seed and shape hold the same float weights in every type
            f = f32_models.get(arch)
            bound = {'f16': 1e-3, 'bf16': 5e-3, 'q8_0': 0.01, 'q4_0': 0.15, 'q4_k': 0.12, 'q6_k': 0.03,
                     'q4_k_m': 0.12}[typ]
            if f is not None:
                err = max(rel_rms(g.f32(n), f.f32(n)) for n in g.tensors)
                check(err < bound, '%s: weights %.3g away from the f32 model of the same seed' % (label, err))
                check(g.kv['tokenizer.ggml.merges'] == f.kv['tokenizer.ggml.merges'], label + ': vocab differs by type')
print('gen-model: 3 archs x 8 types checked', flush=True)

# ---------------------------------------------------------------- 2. options
# tied + q4_k_m: token_embd is the output matrix and gets Q6_K; embeddings smaller
p = gen(*base_args('llama', typ='q4_k_m', extra=['--tied']))
if p:
    g = Gguf(p)
    check('output.weight' not in g.tensors, 'tied: output.weight present')
    check(g.tensors['token_embd.weight'][1] == 14, 'tied q4_k_m: token_embd not q6_K')
    s = g.f32('token_embd.weight').std()
    check(abs(s * math.sqrt(DIM) - 2) < 0.2, 'tied: token_embd std %.4f, want about 2/sqrt(dim)' % s)

# rope_freqs: Llama 3.1 factors
p = gen(*base_args('llama', extra=['--rope-freqs', '--rope-base', '500000']))
if p:
    g = Gguf(p)
    hd = DIM // HEADS
    check(tuple(g.tensors['rope_freqs.weight'][:2]) == ([hd // 2], 0), 'rope_freqs: shape/type')
    want = []
    for i in range(hd // 2):
        freq = 1.0 / 500000.0 ** (2 * i / hd)
        wl = 2 * math.pi / freq
        if wl < 8192 / 4:
            want.append(1.0)
        elif wl > 8192 / 1:
            want.append(8.0)
        else:
            sm = (8192 / wl - 1) / (4 - 1)
            want.append(1 / ((1 - sm) / 8 + sm))
    got = g.f32('rope_freqs.weight').ravel()
    check(np.allclose(got, want, rtol=1e-5), 'rope_freqs: %s, want %s' % (got[:8], want[:8]))
    check(abs(g.kv['llama.rope.freq_base'] - 5e5) < 1, 'rope_freqs: --rope-base')

# --head-dim, --ctx, --vocab, qwen3 key_length
p = gen(*base_args('qwen3', dim=256, heads=8, kv=2, extra=['--head-dim', '64', '--ctx', '1234', '--vocab', '700']))
if p:
    g = Gguf(p)
    check_hparams(g, 'qwen3 head-dim', 'qwen3', 'f32', 256, 3, 8, 2, 512, hd=64, ctx=1234)
    want = expected_tensors('qwen3', 256, 3, 8, 2, 512, 700, hd=64)
    check(all(g.tensors.get(n, [None])[0] == ne for n, ne in want.items()) and set(want) == set(g.tensors),
          'qwen3 --head-dim 64: tensor shapes')
    check_vocab(g, 'qwen3 vocab 700', 'qwen3', 700)
p = gen(*base_args('llama', extra=['--head-dim', '32']))
if p:
    check(Gguf(p).kv.get('llama.attention.key_length') == 32, 'llama --head-dim 32: key_length not written')
# large vocabulary: the text runs out of merges, padding tokens fill the rest
p = gen(*base_args('llama', dim=64, heads=2, kv=1, ffn=128, layers=1, extra=['--vocab', '5000']))
if p:
    g = Gguf(p)
    check_vocab(g, 'vocab 5000', 'llama', 5000)
    check('<|reserved_0|>' in g.kv['tokenizer.ggml.tokens'], 'vocab 5000: no padding tokens')
# --vocab-from: copies the tokenizer keys
src = os.path.join(SHARED, 'vocab', 'ggml-vocab-gpt-2.gguf') if SHARED else ''
if src and os.path.exists(src):
    p = gen(*base_args('llama', dim=64, heads=2, kv=1, ffn=64, layers=1, extra=['--vocab-from', src]))
    if p:
        g, v = Gguf(p), Gguf(src)
        tk = [k for k in v.kv if k.startswith('tokenizer.')]
        check(all(g.kv.get(k) == v.kv[k] for k in tk), '--vocab-from: tokenizer keys differ from the source')
        n = len(v.kv['tokenizer.ggml.tokens'])
        check(g.tensors['token_embd.weight'][0] == [64, n] and g.kv.get('llama.vocab_size') == n,
              '--vocab-from: token_embd / vocab_size do not follow the vocabulary')
    rc, so, se = run('gen-model', *base_args('llama', extra=['--vocab-from', src, '--vocab', '512']), '-o',
                     os.path.join(TMP, 'x.gguf'))
    check(rc != 0 and '--vocab' in se, '--vocab-from with a different --vocab should fail')
print('gen-model: options checked', flush=True)

# ---------------------------------------------------------------- 3. determinism
a = gen(*base_args('qwen2', typ='q8_0', seed=5), name='det-a.gguf')
b = gen(*base_args('qwen2', typ='q8_0', seed=5, extra=['-t', '1']), name='det-b.gguf')
c = gen(*base_args('qwen2', typ='q8_0', seed=6), name='det-c.gguf')
if a and b and c:
    A, B, C = (open(x, 'rb').read() for x in (a, b, c))
    check(A == B, 'same seed (2 threads vs 1) gave different files')
    check(A != C, 'different seeds gave the same file')
    ga, gc = Gguf(a), Gguf(c)
    same = [n for n in ga.tensors if ga.tensors[n][0][0] > 1 and len(ga.tensors[n][0]) > 1 and ga.bytes_of(n) == gc.bytes_of(n)]
    check(not same, 'different seeds: identical tensors %s' % same[:3])
    # tensors are seeded by name: a deeper model shares the first layers' weights
    d = gen(*base_args('qwen2', typ='q8_0', seed=5, layers=4), name='det-d.gguf')
    if d:
        gd = Gguf(d)
        check(gd.bytes_of('blk.1.attn_q.weight') == ga.bytes_of('blk.1.attn_q.weight'), 'per-tensor seeding')
print('gen-model: determinism checked', flush=True)

# ---------------------------------------------------------------- 4. quantize
QL = 8  # layers 0, 3, 6, 7 get more bits in q4_k_m
src = gen(*base_args('llama', layers=QL, ffn=256, seed=3), name='q-src.gguf')
if src:
    S = Gguf(src)
    for typ in ('q8_0', 'q4_0', 'q4_k', 'q6_k', 'q4_k_m', 'f16', 'bf16', 'f32'):
        out = os.path.join(TMP, 'q-%s.gguf' % typ)
        rc, so, se = run('quantize', src, out, typ)
        if not check(rc == 0, 'quantize %s: rc %d: %s' % (typ, rc, se.strip())):
            continue
        g = Gguf(out)
        check_layout(g, 'quantize ' + typ)
        check(g.kv['general.file_type'] == FTYPE[typ] and g.kv.get('general.quantization_version') == 2,
              'quantize %s: file_type / quantization_version' % typ)
        lost = [k for k in S.kv if k not in ('general.file_type', 'general.quantization_version') and g.kv.get(k) != S.kv[k]]
        check(not lost, 'quantize %s: metadata changed: %s' % (typ, lost[:5]))
        check(g.order == S.order, 'quantize %s: tensor order changed' % typ)
        wrong = [(n, TNAME.get(g.tensors[n][1])) for n in S.tensors
                 if g.tensors[n][1] != expected_type(typ, n, S.tensors[n][0], QL, True, fallback=True)]
        check(not wrong, 'quantize %s: types differ from the recipe: %s' % (typ, wrong[:6]))
        if typ == 'q4_k_m':
            q6 = sorted(n for n in g.tensors if g.tensors[n][1] == 14)
            want = ['blk.%d.%s' % (i, t) for i in (0, 3, 6, 7) for t in ('attn_v.weight', 'ffn_down.weight')] + ['output.weight']
            check(q6 == sorted(want), 'quantize q4_k_m: q6_K tensors %s, want %s' % (q6, sorted(want)))
        if typ != 'f32':
            # quantizing the f32 model must give exactly what gen-model writes for that type
            p = gen(*base_args('llama', layers=QL, ffn=256, seed=3, typ=typ), name='q-gen-%s.gguf' % typ)
            if p:
                G = Gguf(p)
                diff = [n for n in G.tensors if G.bytes_of(n) != g.bytes_of(n) or G.tensors[n][1] != g.tensors[n][1]]
                check(not diff, 'quantize %s differs from gen-model --type %s in %s' % (typ, typ, diff[:4]))
        else:
            check(all(g.bytes_of(n) == S.bytes_of(n) for n in S.tensors), 'quantize f32: data changed')
    a, b = os.path.join(TMP, 'q-t1.gguf'), os.path.join(TMP, 'q-t2.gguf')
    r1, r2 = run('quantize', src, a, 'q4_k_m', '-t', '1'), run('quantize', src, b, 'q4_k_m', '-t', '2')
    check(r1[0] == 0 and r2[0] == 0 and open(a, 'rb').read() == open(b, 'rb').read(), 'quantize: -t 1 and -t 2 differ')
    # from f16 and bf16 input
    for t in ('f16', 'bf16'):
        out = os.path.join(TMP, 'q-from-%s.gguf' % t)
        rc, so, se = run('quantize', os.path.join(TMP, 'q-%s.gguf' % t), out, 'q8_0')
        if check(rc == 0, 'quantize from %s: %s' % (t, se.strip())):
            g = Gguf(out)
            err = max(rel_rms(g.f32(n), S.f32(n)) for n in S.tensors)
            check(err < 0.012, 'quantize from %s: %.3g away from f32' % (t, err))
            check(all(g.tensors[n][1] == 0 for n in g.tensors if len(g.tensors[n][0]) == 1),
                  'quantize from %s: 1-D tensors not f32' % t)
    # a quantized input is refused
    rc, so, se = run('quantize', os.path.join(TMP, 'q-q8_0.gguf'), os.path.join(TMP, 'x.gguf'), 'q4_0')
    check(rc != 0 and 'q8_0' in se and len(se.strip().splitlines()) == 1, 'quantize of a q8_0 input: %r' % se)

# K-type rows that do not fit: q8_0 (rows % 32 == 0) then f16
for ffn, want in ((384, 8), (200, 1)):
    p = gen(*base_args('llama', dim=256, ffn=ffn, layers=2), name='fb-%d.gguf' % ffn)
    if p:
        out = os.path.join(TMP, 'fb-%d-q.gguf' % ffn)
        rc, so, se = run('quantize', p, out, 'q4_k_m')
        if check(rc == 0, 'quantize fallback ffn %d: %s' % (ffn, se)):
            g = Gguf(out)
            check(all(g.tensors['blk.%d.ffn_down.weight' % i][1] == want for i in range(2)),
                  'fallback ffn %d: ffn_down types %s' % (ffn, [g.tensors['blk.%d.ffn_down.weight' % i][1] for i in range(2)]))
            check('blk.0.ffn_down.weight' in se, 'fallback ffn %d: no warning naming the tensor' % ffn)

# against another implementation: the fixture's f32 weights quantized by gguf-py
if FIX and os.path.exists(os.path.join(FIX, 'llama-f32.gguf')):
    for typ in ('q8_0', 'q4_0', 'f16', 'bf16'):
        out = os.path.join(TMP, 'fx-%s.gguf' % typ)
        rc, so, se = run('quantize', os.path.join(FIX, 'llama-f32.gguf'), out, typ)
        if check(rc == 0, 'quantize fixture %s: %s' % (typ, se)):
            g, f = Gguf(out), Gguf(os.path.join(FIX, 'llama-%s.gguf' % typ))
            diff = [n for n in f.tensors if g.bytes_of(n) != f.bytes_of(n) or g.tensors[n][1] != f.tensors[n][1]]
            check(not diff, 'quantize of llama-f32 to %s differs from the gguf-py fixture in %s' % (typ, diff[:4]))
print('quantize: checked', flush=True)

# ---------------------------------------------------------------- 5. errors
def bad(args, needle, what):
    out = os.path.join(TMP, 'bad.gguf')
    if os.path.exists(out):
        os.remove(out)
    rc, so, se = run(*args)
    lines = se.strip().splitlines()
    check(rc != 0 and len(lines) == 1 and lines[0].startswith('spud ') and needle in lines[0] and not os.path.exists(out),
          '%s: rc %d, stderr %r (want one line naming %r)' % (what, rc, se, needle))

O = ['-o', os.path.join(TMP, 'bad.gguf')]
bad(['gen-model'] + base_args('llama', dim=128, typ='q4_k') + O, '--dim', 'K-quant with dim 128')
bad(['gen-model'] + base_args('llama', dim=256, ffn=384, typ='q6_k') + O, '--ffn', 'K-quant with ffn 384')
bad(['gen-model'] + base_args('llama', heads=6, kv=4, dim=384) + O, '--kv-heads', 'heads not a multiple of kv-heads')
bad(['gen-model'] + base_args('llama', dim=100, heads=3, kv=1) + O, '--heads', 'dim not a multiple of heads')
bad(['gen-model'] + base_args('llama', typ='q5_0') + O, '--type', 'unknown type')
bad(['gen-model'] + base_args('llama'), '-o', 'missing -o')
bad(['gen-model'] + base_args('llama') + O + ['--bogus'], '--bogus', 'unknown flag')
bad(['gen-model'] + base_args('llama', dim=0) + O, '--dim', 'dim 0')
bad(['gen-model'] + base_args('llama', extra=['--vocab', '100']) + O, '--vocab', 'vocab below 259')
bad(['gen-model'] + base_args('qwen2', extra=['--rope-freqs']) + O, '--rope-freqs', 'rope-freqs for qwen2')
bad(['gen-model'] + base_args('mamba') + O, '--arch', 'unknown arch')
bad(['gen-model'] + base_args('llama') + O + ['--seed'], '--seed', 'flag without a value')
bad(['quantize', os.path.join(TMP, 'nope.gguf'), os.path.join(TMP, 'bad.gguf'), 'q8_0'], 'nope.gguf', 'missing input')
bad(['quantize', src or 'x', os.path.join(TMP, 'bad.gguf'), 'q3_k'], 'q3_k', 'quantize unknown type')
bad(['quantize', src or 'x', os.path.join(TMP, 'bad.gguf')], 'TYPE', 'quantize missing type')
bad(['quantize', '--bogus'], '--bogus', 'quantize unknown flag')
for cmd in ('gen-model', 'quantize'):
    rc, so, se = run(cmd, '--help')
    check(rc == 0 and 'usage' in so, '%s --help: rc %d' % (cmd, rc))
print('errors: checked', flush=True)

if FAILS:
    print('%d check(s) failed' % len(FAILS))
    sys.exit(1)
print('all checks passed')
PY
