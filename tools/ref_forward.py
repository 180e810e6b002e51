#!/usr/bin/python3
"""ref_forward.py: an independent float64 reference forward pass for GGUF models.

Independent of spud's C code: its own GGUF reader, its own dequantizers (written from
GGML's block layouts), its own llama / qwen2 / qwen3 forward pass. Uses only the
standard library and numpy (run it with /usr/bin/python3, Debian's python3-numpy).

    ref_forward.py MODEL.gguf --tokens 1,2,3 [--greedy N] [--emulate-llamacpp]

prints one JSON object:
    {"logits": [...],        full vocabulary, last prompt position
     "greedy": [...],        N argmax tokens (the first is argmax of "logits"), decoded with a KV cache
     "greedy_gaps": [...]}   top1 - top2 logit at each greedy step

By default every computation is float64 on the dequantized weights. With --emulate-llamacpp
the input of every weight matmul is rounded as llama.cpp's CPU backend does (Q8_0 for
Q4_0/Q8_0 weights, Q8_K for K-quant weights, bf16 for BF16, fp16 for F16).

Can also be imported: Model(path).prompt(tokens) / .greedy(tokens, n).
"""
import argparse
import json
import math
import mmap
import struct
import sys

import numpy as np

# ---------------------------------------------------------------------------------------------
# GGUF reader
# ---------------------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"

# metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)

_SCALAR_FMT = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
    T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}
_SCALAR_NP = {
    T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2", T_UINT32: "<u4", T_INT32: "<i4",
    T_FLOAT32: "<f4", T_BOOL: "<u1", T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8",
}

# GGML tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}


class GGUFError(Exception):
    pass


class TensorInfo:
    __slots__ = ("name", "ne", "type", "offset", "nbytes")

    def __init__(self, name, ne, ttype, offset):
        self.name, self.ne, self.type, self.offset = name, ne, ttype, offset
        if ttype not in GGML_TYPES:
            raise GGUFError("tensor %s: unknown ggml type %d" % (name, ttype))
        _, bs, bb = GGML_TYPES[ttype]
        n = 1
        for d in ne:
            n *= d
        if ne[0] % bs:
            raise GGUFError("tensor %s: ne[0]=%d not a multiple of block size %d" % (name, ne[0], bs))
        self.nbytes = n // bs * bb

    @property
    def type_name(self):
        return GGML_TYPES[self.type][0]

    @property
    def nelements(self):
        n = 1
        for d in self.ne:
            n *= d
        return n


class GGUFFile:
    """Parses a GGUF v1/v2/v3 file. kv: metadata dict; tensors: name -> TensorInfo (absolute offsets)."""

    def __init__(self, path):
        self.path = path
        f = open(path, "rb")
        try:
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        finally:
            f.close()
        self.pos = 0
        self._parse()

    # primitive readers
    def _take(self, n):
        if self.pos + n > len(self.buf):
            raise GGUFError("truncated file at offset %d (need %d bytes)" % (self.pos, n))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _scalar(self, t):
        fmt = _SCALAR_FMT[t]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _u32(self):
        return self._scalar(T_UINT32)

    def _u64(self):
        return self._scalar(T_UINT64)

    def _count(self):
        return self._u32() if self.version == 1 else self._u64()

    def _string(self):
        n = self._count()
        return self._take(n).decode("utf-8", errors="surrogateescape")

    def _value(self, t):
        if t in _SCALAR_FMT:
            return self._scalar(t)
        if t == T_STRING:
            return self._string()
        if t == T_ARRAY:
            et = self._u32()
            n = self._count()
            if et in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[et])
                arr = np.frombuffer(self._take(n * dt.itemsize), dtype=dt)
                if et == T_BOOL:
                    arr = arr.astype(bool)
                return arr
            return [self._value(et) for _ in range(n)]
        raise GGUFError("unknown metadata value type %d at offset %d" % (t, self.pos))

    def _parse(self):
        if self._take(4) != GGUF_MAGIC:
            raise GGUFError("%s: not a GGUF file (bad magic)" % self.path)
        self.version = self._u32()
        if self.version not in (1, 2, 3):
            raise GGUFError("unsupported GGUF version %d" % self.version)
        n_tensors = self._count()
        n_kv = self._count()
        self.kv = {}
        self.kv_raw = {}  # key -> the entry's bytes as stored (key, type, value), for copying into other files
        for _ in range(n_kv):
            start = self.pos
            key = self._string()
            t = self._u32()
            self.kv[key] = self._value(t)
            self.kv_raw[key] = bytes(self.buf[start:self.pos])
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            nd = self._u32()
            ne = [self._count() for _ in range(nd)]
            t = self._u32()
            off = self._u64()
            infos.append((name, ne, t, off))
        align = int(self.kv.get("general.alignment", 32))
        if align <= 0 or align & (align - 1):
            raise GGUFError("bad general.alignment %d" % align)
        self.alignment = align
        self.data_offset = (self.pos + align - 1) // align * align
        self.tensors = {}
        for name, ne, t, off in infos:
            ti = TensorInfo(name, ne, t, self.data_offset + off)
            if ti.offset + ti.nbytes > len(self.buf):
                raise GGUFError("tensor %s extends past end of file" % name)
            if name in self.tensors:
                raise GGUFError("duplicate tensor %s" % name)
            self.tensors[name] = ti

    def raw(self, name):
        ti = self.tensors[name]
        return np.frombuffer(self.buf, dtype=np.uint8, count=ti.nbytes, offset=ti.offset)

    def tensor(self, name):
        """Dequantized tensor as float32 numpy array, shape = reversed(ne) (ne[0] is the last axis)."""
        ti = self.tensors[name]
        flat = dequantize(self.raw(name), ti.type, ti.nelements)
        return flat.reshape(tuple(reversed(ti.ne)))


# ---------------------------------------------------------------------------------------------
# Dequantizers (GGML block layouts), vectorised over all blocks; output float32
# ---------------------------------------------------------------------------------------------

def _f16(b):
    """(..., 2) uint8 little-endian fp16 -> float32 (...)."""
    return np.ascontiguousarray(b).view("<f2")[..., 0].astype(np.float32)


def _blocks(raw, bb):
    if raw.size % bb:
        raise GGUFError("tensor data size %d not a multiple of block size %d" % (raw.size, bb))
    return raw.reshape(-1, bb)


def deq_q8_0(raw):
    # struct { fp16 d; int8 qs[32]; }   x = d * q
    b = _blocks(raw, 34)
    d = _f16(b[:, 0:2])
    q = b[:, 2:34].view(np.int8).astype(np.float32)
    return (d[:, None] * q).reshape(-1)


def deq_q4_0(raw):
    # struct { fp16 d; uint8 qs[16]; }  x[j] = (qs[j] & 15) - 8, x[j+16] = (qs[j] >> 4) - 8, times d
    b = _blocks(raw, 18)
    d = _f16(b[:, 0:2])
    qs = b[:, 2:18]
    q = np.concatenate([(qs & 0x0F), (qs >> 4)], axis=1).astype(np.int16) - 8
    return (d[:, None] * q.astype(np.float32)).reshape(-1)


def deq_q4_1(raw):
    # struct { fp16 d; fp16 m; uint8 qs[16]; }  x = q * d + m
    b = _blocks(raw, 20)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    qs = b[:, 4:20]
    q = np.concatenate([(qs & 0x0F), (qs >> 4)], axis=1).astype(np.float32)
    return (q * d[:, None] + m[:, None]).reshape(-1)


def _q5_high(qh_bytes):
    """uint8 (nb, 4) little-endian uint32 qh -> (nb, 32) high bits (bit j of qh for element j)."""
    qh = np.ascontiguousarray(qh_bytes).view("<u4")[:, 0]
    return ((qh[:, None] >> np.arange(32, dtype=np.uint32)[None, :]) & 1).astype(np.uint8)


def deq_q5_0(raw):
    # struct { fp16 d; uint8 qh[4]; uint8 qs[16]; }  x = ((lo | hi << 4) - 16) * d
    b = _blocks(raw, 22)
    d = _f16(b[:, 0:2])
    hb = _q5_high(b[:, 2:6])
    qs = b[:, 6:22]
    lo = np.concatenate([(qs & 0x0F), (qs >> 4)], axis=1)
    q = (lo | (hb << 4)).astype(np.int16) - 16
    return (q.astype(np.float32) * d[:, None]).reshape(-1)


def deq_q5_1(raw):
    # struct { fp16 d; fp16 m; uint8 qh[4]; uint8 qs[16]; }  x = (lo | hi << 4) * d + m
    b = _blocks(raw, 24)
    d = _f16(b[:, 0:2])
    m = _f16(b[:, 2:4])
    hb = _q5_high(b[:, 4:8])
    qs = b[:, 8:24]
    lo = np.concatenate([(qs & 0x0F), (qs >> 4)], axis=1)
    q = (lo | (hb << 4)).astype(np.float32)
    return (q * d[:, None] + m[:, None]).reshape(-1)


def _k4_scales_mins(sc):
    """Q4_K/Q5_K 12-byte packed 6-bit scales and mins -> (nb, 8) scale, (nb, 8) min (get_scale_min_k4)."""
    sc = sc.astype(np.uint8)
    s = np.empty((sc.shape[0], 8), dtype=np.uint8)
    m = np.empty((sc.shape[0], 8), dtype=np.uint8)
    s[:, 0:4] = sc[:, 0:4] & 63
    m[:, 0:4] = sc[:, 4:8] & 63
    s[:, 4:8] = (sc[:, 8:12] & 0x0F) | ((sc[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return s.astype(np.float32), m.astype(np.float32)


def deq_q4_k(raw):
    # struct { fp16 d; fp16 dmin; uint8 scales[12]; uint8 qs[128]; }
    # 8 sub-blocks of 32; for 64-element chunk c: sub 2c = qs[32c..] & 15, sub 2c+1 = qs[32c..] >> 4
    # x = (d*sc) * q - (dmin*m)
    b = _blocks(raw, 144)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    s, m = _k4_scales_mins(b[:, 4:16])
    qs = b[:, 16:144].reshape(nb, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32).astype(np.float32)
    d1 = (d[:, None] * s)[:, :, None]
    m1 = (dmin[:, None] * m)[:, :, None]
    return (d1 * q - m1).reshape(-1)


def deq_q5_k(raw):
    # struct { fp16 d; fp16 dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }
    b = _blocks(raw, 176)
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    dmin = _f16(b[:, 2:4])
    s, m = _k4_scales_mins(b[:, 4:16])
    qh = b[:, 16:48]                         # (nb, 32)
    qs = b[:, 48:176].reshape(nb, 4, 32)
    lo = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32)
    # sub-block j uses bit j of qh[l]
    hi = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = (lo | (hi << 4)).astype(np.float32)
    d1 = (d[:, None] * s)[:, :, None]
    m1 = (dmin[:, None] * m)[:, :, None]
    return (d1 * q - m1).reshape(-1)


def deq_q6_k(raw):
    # struct { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; fp16 d; }
    # per 128-element half h (ql += 64, qh += 32): for l < 32
    #   y[l]    = (ql[l] & 15    | ((qh[l] >> 0) & 3) << 4) - 32
    #   y[l+32] = (ql[l+32] & 15 | ((qh[l] >> 2) & 3) << 4) - 32
    #   y[l+64] = (ql[l] >> 4    | ((qh[l] >> 4) & 3) << 4) - 32
    #   y[l+96] = (ql[l+32] >> 4 | ((qh[l] >> 6) & 3) << 4) - 32
    # element k of the block uses scales[k / 16]; x = d * scale * q
    b = _blocks(raw, 210)
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 64)
    qh = b[:, 128:192].reshape(nb, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    q = np.concatenate([
        (ql[:, :, 0:32] & 0x0F) | ((qh & 3) << 4),
        (ql[:, :, 32:64] & 0x0F) | (((qh >> 2) & 3) << 4),
        (ql[:, :, 0:32] >> 4) | (((qh >> 4) & 3) << 4),
        (ql[:, :, 32:64] >> 4) | (((qh >> 6) & 3) << 4),
    ], axis=2).reshape(nb, 16, 16).astype(np.int16) - 32
    ds = (d[:, None] * sc)[:, :, None]
    return (ds * q.astype(np.float32)).reshape(-1)


def deq_q8_k(raw):
    # struct { float d; int8 qs[256]; int16 bsums[16]; }
    b = _blocks(raw, 292)
    d = np.ascontiguousarray(b[:, 0:4]).view("<f4")[:, 0]
    q = b[:, 4:260].view(np.int8).astype(np.float32)
    return (d[:, None] * q).reshape(-1)


def dequantize(raw, ttype, n):
    name = GGML_TYPES[ttype][0]
    if name == "F32":
        out = raw.view("<f4").astype(np.float32)
    elif name == "F16":
        out = raw.view("<f2").astype(np.float32)
    elif name == "BF16":
        out = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    elif name == "F64":
        out = raw.view("<f8").astype(np.float64)
    elif name in ("I8", "I16", "I32", "I64"):
        out = raw.view({"I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}[name]).astype(np.float64)
    else:
        fn = {"Q8_0": deq_q8_0, "Q4_0": deq_q4_0, "Q4_1": deq_q4_1, "Q5_0": deq_q5_0, "Q5_1": deq_q5_1,
              "Q4_K": deq_q4_k, "Q5_K": deq_q5_k, "Q6_K": deq_q6_k, "Q8_K": deq_q8_k}.get(name)
        if fn is None:
            raise GGUFError("dequantization of %s is not implemented" % name)
        out = fn(raw)
    if out.size != n:
        raise GGUFError("dequantized %d elements, expected %d" % (out.size, n))
    return out


# ---------------------------------------------------------------------------------------------
# llama.cpp activation rounding (optional, --emulate-llamacpp)
# ---------------------------------------------------------------------------------------------

def _to_bf16(x32):
    u = x32.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)  # round to nearest even
    nan = np.isnan(x32)
    out = (r << 16).astype(np.uint32).view(np.float32)
    if nan.any():
        out = np.where(nan, x32, out)
    return out


def _act_q8_0(x32):
    # quantize_row_q8_0 (AVX2 build): d = amax/127 stored as fp16; q = round(x * (127/amax))
    shp = x32.shape
    b = x32.reshape(-1, 32)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.round((b * idv[:, None]).astype(np.float32))  # round half to even (_mm256_round_ps nearest)
    dh = d.astype(np.float16).astype(np.float32)
    return (q * dh[:, None]).reshape(shp)


def _act_q8_k(x32):
    # quantize_row_q8_K_ref: max = signed value of largest magnitude; iscale = -127/max;
    # q = min(127, nearest_int(iscale*x)) (half to even); d = 1/iscale
    shp = x32.shape
    b = x32.reshape(-1, 256)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(b.shape[0]), idx]
    zero = mx == 0
    with np.errstate(divide="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / np.where(zero, np.float32(1), mx))
    iscale = iscale.astype(np.float32)
    q = np.minimum(np.round((b * iscale[:, None]).astype(np.float32)), 127)
    d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, np.float32(1), iscale)).astype(np.float32)
    return (q * d[:, None]).reshape(shp)


def round_activation(x, wtype_name):
    x32 = np.asarray(x, dtype=np.float32)
    if wtype_name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        y = _act_q8_0(x32)          # (Q4_1/Q5_1 use Q8_1 in llama.cpp: same values, d computed alike)
    elif wtype_name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        y = _act_q8_k(x32)
    elif wtype_name == "BF16":
        y = _to_bf16(x32)
    elif wtype_name == "F16":
        y = x32.astype(np.float16).astype(np.float32)
    else:
        y = x32
    return y.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")


class Weight:
    __slots__ = ("w", "type_name")

    def __init__(self, w, type_name):
        self.w, self.type_name = w, type_name


class Model:
    def __init__(self, path, emulate_llamacpp=False, dtype=np.float64):
        self.g = g = GGUFFile(path)
        self.emulate = emulate_llamacpp
        self.dtype = dtype
        kv = g.kv
        arch = kv.get("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise GGUFError("unsupported architecture %r" % (arch,))
        self.arch = arch

        def key(k, default=None, required=False):
            full = "%s.%s" % (arch, k)
            if full in kv:
                return kv[full]
            if required:
                raise GGUFError("missing metadata key %s" % full)
            return default

        self.n_embd = int(key("embedding_length", required=True))
        self.n_layer = int(key("block_count", required=True))
        self.n_ff = int(key("feed_forward_length", 0))
        self.n_head = int(key("attention.head_count", required=True))
        hkv = key("attention.head_count_kv", self.n_head)
        self.n_head_kv = int(hkv)
        self.n_ctx_train = int(key("context_length", 0))
        self.head_dim_k = int(key("attention.key_length", self.n_embd // self.n_head))
        self.head_dim_v = int(key("attention.value_length", self.head_dim_k))
        self.n_rot = int(key("rope.dimension_count", self.head_dim_k))
        self.rope_base = float(key("rope.freq_base", 10000.0))
        self.eps = float(key("attention.layer_norm_rms_epsilon", 1e-5))
        scaling_type = key("rope.scaling.type", "none")
        factor = float(key("rope.scaling.factor", 0.0) or 0.0)
        if scaling_type == "linear" and factor > 0:
            self.freq_scale = 1.0 / factor
        elif scaling_type in ("none", "linear") or factor == 0:
            self.freq_scale = 1.0
        else:
            raise GGUFError("rope scaling type %r not supported by the reference" % scaling_type)
        if self.n_head % self.n_head_kv:
            raise GGUFError("n_head %d not a multiple of n_head_kv %d" % (self.n_head, self.n_head_kv))
        self.neox = arch in ("qwen2", "qwen3")

        self.tok_embd = self._weight("token_embd.weight")
        self.n_vocab = self.tok_embd.w.shape[0]
        self.output_norm = self._vec("output_norm.weight")
        if "output.weight" in g.tensors:
            self.output = self._weight("output.weight")
        else:
            self.output = self.tok_embd
        rf = self._vec("rope_freqs.weight") if "rope_freqs.weight" in g.tensors else None

        # rope inverse frequencies for i = 0 .. n_rot/2 - 1
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        inv = self.rope_base ** (-2.0 * i / self.n_rot) * self.freq_scale
        if rf is not None:
            if rf.size < self.n_rot // 2:
                raise GGUFError("rope_freqs.weight has %d entries, need %d" % (rf.size, self.n_rot // 2))
            inv = inv / rf[: self.n_rot // 2]
        self.inv_freq = inv

        self.layers = []
        for l in range(self.n_layer):
            p = "blk.%d." % l
            L = {
                "attn_norm": self._vec(p + "attn_norm.weight"),
                "wq": self._weight(p + "attn_q.weight"),
                "wk": self._weight(p + "attn_k.weight"),
                "wv": self._weight(p + "attn_v.weight"),
                "wo": self._weight(p + "attn_output.weight"),
                "ffn_norm": self._vec(p + "ffn_norm.weight"),
                "wg": self._weight(p + "ffn_gate.weight"),
                "wu": self._weight(p + "ffn_up.weight"),
                "wd": self._weight(p + "ffn_down.weight"),
            }
            for nm, t in (("bq", "attn_q.bias"), ("bk", "attn_k.bias"), ("bv", "attn_v.bias"),
                          ("bo", "attn_output.bias"), ("q_norm", "attn_q_norm.weight"),
                          ("k_norm", "attn_k_norm.weight")):
                L[nm] = self._vec(p + t) if (p + t) in g.tensors else None
            if arch == "qwen3" and (L["q_norm"] is None or L["k_norm"] is None):
                raise GGUFError("qwen3 layer %d lacks attn_q_norm / attn_k_norm" % l)
            self._check(L, l)
            self.layers.append(L)

    def _weight(self, name):
        if name not in self.g.tensors:
            raise GGUFError("missing tensor %s" % name)
        ti = self.g.tensors[name]
        if len(ti.ne) != 2:
            raise GGUFError("tensor %s: expected 2 dims, got %d" % (name, len(ti.ne)))
        return Weight(self.g.tensor(name).astype(self.dtype), ti.type_name)

    def _vec(self, name):
        if name not in self.g.tensors:
            raise GGUFError("missing tensor %s" % name)
        return self.g.tensor(name).astype(self.dtype).reshape(-1)

    def _check(self, L, l):
        D, hk, hv = self.n_embd, self.head_dim_k, self.head_dim_v
        exp = {"wq": (self.n_head * hk, D), "wk": (self.n_head_kv * hk, D), "wv": (self.n_head_kv * hv, D),
               "wo": (D, self.n_head * hv)}
        for k, s in exp.items():
            if L[k].w.shape != s:
                raise GGUFError("layer %d %s: shape %s, expected %s" % (l, k, L[k].w.shape, s))
        ff = L["wg"].w.shape[0]
        if L["wg"].w.shape != (ff, D) or L["wu"].w.shape != (ff, D) or L["wd"].w.shape != (D, ff):
            raise GGUFError("layer %d: bad FFN shapes" % l)

    # --- building blocks ---
    def mm(self, x, W):
        """x (T, in) @ W^T -> (T, out)."""
        if self.emulate:
            x = round_activation(x, W.type_name)
        return x @ W.w.T

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        """x (T, H, d), pos (T,) -> rotated copy. Only the first n_rot dims are rotated."""
        n = self.n_rot
        ang = pos.astype(np.float64)[:, None] * self.inv_freq[None, :]  # (T, n/2)
        c = np.cos(ang)[:, None, :]
        s = np.sin(ang)[:, None, :]
        y = x.copy()
        if self.neox:
            a = x[:, :, 0:n // 2]
            b = x[:, :, n // 2:n]
            y[:, :, 0:n // 2] = a * c - b * s
            y[:, :, n // 2:n] = a * s + b * c
        else:
            a = x[:, :, 0:n:2]
            b = x[:, :, 1:n:2]
            y[:, :, 0:n:2] = a * c - b * s
            y[:, :, 1:n:2] = a * s + b * c
        return y

    # --- forward ---
    def new_cache(self):
        return {"pos": 0, "k": [None] * self.n_layer, "v": [None] * self.n_layer}

    def forward(self, tokens, cache):
        """Process tokens at positions cache['pos'].. with causal attention; returns logits (T, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size == 0:
            raise ValueError("no tokens")
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise ValueError("token id out of range [0, %d)" % self.n_vocab)
        T = tokens.size
        p0 = cache["pos"]
        pos = np.arange(p0, p0 + T)
        H, HKV, hk, hv = self.n_head, self.n_head_kv, self.head_dim_k, self.head_dim_v
        grp = H // HKV
        x = self.tok_embd.w[tokens].astype(self.dtype)
        scale = 1.0 / math.sqrt(hk)
        S = p0 + T
        # mask[t, j]: key j visible to query t
        mask = np.arange(S)[None, :] <= pos[:, None]
        for li, L in enumerate(self.layers):
            h = self.rmsnorm(x, L["attn_norm"])
            q = self.mm(h, L["wq"])
            k = self.mm(h, L["wk"])
            v = self.mm(h, L["wv"])
            if L["bq"] is not None:
                q = q + L["bq"]
            if L["bk"] is not None:
                k = k + L["bk"]
            if L["bv"] is not None:
                v = v + L["bv"]
            q = q.reshape(T, H, hk)
            k = k.reshape(T, HKV, hk)
            v = v.reshape(T, HKV, hv)
            if L["q_norm"] is not None:
                q = self.rmsnorm(q, L["q_norm"])
            if L["k_norm"] is not None:
                k = self.rmsnorm(k, L["k_norm"])
            q = self.rope(q, pos)
            k = self.rope(k, pos)
            if cache["k"][li] is None:
                K, V = k, v
            else:
                K = np.concatenate([cache["k"][li], k], axis=0)
                V = np.concatenate([cache["v"][li], v], axis=0)
            cache["k"][li], cache["v"][li] = K, V
            # scores (H, T, S): query head j uses kv head j // grp
            Kh = np.repeat(K.transpose(1, 0, 2), grp, axis=0)   # (H, S, hk)
            Vh = np.repeat(V.transpose(1, 0, 2), grp, axis=0)   # (H, S, hv)
            sc = np.matmul(q.transpose(1, 0, 2), Kh.transpose(0, 2, 1)) * scale
            sc = np.where(mask[None, :, :], sc, -np.inf)
            sc = sc - sc.max(axis=-1, keepdims=True)
            e = np.exp(sc)
            pr = e / e.sum(axis=-1, keepdims=True)
            att = np.matmul(pr, Vh).transpose(1, 0, 2).reshape(T, H * hv)
            o = self.mm(att, L["wo"])
            if L["bo"] is not None:
                o = o + L["bo"]
            x = x + o
            h = self.rmsnorm(x, L["ffn_norm"])
            gte = self.mm(h, L["wg"])
            up = self.mm(h, L["wu"])
            act = gte / (1.0 + np.exp(-gte)) * up
            x = x + self.mm(act, L["wd"])
        cache["pos"] = S
        h = self.rmsnorm(x, self.output_norm)
        return self.mm(h, self.output)

    def prompt_logits(self, tokens, cache=None):
        if cache is None:
            cache = self.new_cache()
        return self.forward(tokens, cache)[-1], cache

    def run(self, tokens, n_greedy=0):
        """Returns (last-position logits, greedy tokens, greedy gaps)."""
        logits, cache = self.prompt_logits(tokens)
        first = logits
        greedy, gaps = [], []
        cur = logits
        for step in range(n_greedy):
            top = np.argsort(-cur, kind="stable")[:2]
            tok = int(top[0])
            greedy.append(tok)
            gaps.append(float(cur[top[0]] - cur[top[1]]) if cur.size > 1 else float("inf"))
            if step + 1 < n_greedy:
                cur = self.forward([tok], cache)[-1]
        return first, greedy, gaps


def main(argv=None):
    ap = argparse.ArgumentParser(description="float64 numpy reference forward pass for GGUF llama/qwen2/qwen3")
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--greedy", type=int, default=0, metavar="N", help="N greedy argmax steps")
    ap.add_argument("--emulate-llamacpp", action="store_true",
                    help="round matmul inputs as llama.cpp's CPU backend does")
    a = ap.parse_args(argv)
    try:
        toks = [int(t) for t in a.tokens.replace(" ", "").split(",") if t != ""]
    except ValueError:
        ap.error("--tokens: expected comma-separated integers")
    if not toks:
        ap.error("--tokens: empty")
    try:
        m = Model(a.model, emulate_llamacpp=a.emulate_llamacpp)
        logits, greedy, gaps = m.run(toks, a.greedy)
    except (GGUFError, ValueError, OSError) as e:
        print("ref_forward: %s" % e, file=sys.stderr)
        return 1
    json.dump({"logits": [float(v) for v in logits], "greedy": greedy, "greedy_gaps": gaps}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
