#!/bin/sh
# make_gguf_corpus.sh [DIR]: write the seed corpus for fuzz/fuzz_gguf.c
# (default fuzz/corpus/gguf). The files are small, valid GGUF files built by
# the encoder below, which is independent of src/gguf.c.
set -e
DIR=${1:-$(dirname "$0")/../fuzz/corpus/gguf}
mkdir -p "$DIR"
python3 - "$DIR" <<'PY'
import os, struct, sys

out = sys.argv[1]
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: 'B', I8: 'b', U16: 'H', I16: 'h', U32: 'I', I32: 'i', F32: 'f', BOOL: '?',
       U64: 'Q', I64: 'q', F64: 'd'}
# GGML type id: (block size, bytes per block)
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 7: (32, 24), 8: (32, 34), 12: (256, 144),
          14: (256, 210), 30: (1, 2)}

def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack('<Q', len(b)) + b

def value(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        return struct.pack('<IQ', et, len(items)) + b''.join(value(et, x) for x in items)
    return struct.pack('<' + FMT[t], v)

def gguf(kvs, tensors=(), version=3, pad_end=True):
    """kvs: [(key, type, value)]; tensors: [(name, ne, ggml type)], data is a byte pattern."""
    align = next((v for k, t, v in kvs if k == 'general.alignment'), 32)
    b = b'GGUF' + struct.pack('<IQQ', version, len(tensors), len(kvs))
    for k, t, v in kvs:
        b += gstr(k) + struct.pack('<I', t) + value(t, v)
    off, datas = 0, []
    for name, ne, ty in tensors:
        bs, ts = BLOCKS[ty]
        n = 1
        for x in ne:
            n *= x
        size = n // bs * ts
        b += gstr(name) + struct.pack('<I', len(ne)) + struct.pack('<%dQ' % len(ne), *ne)
        b += struct.pack('<IQ', ty, off)
        datas.append(bytes((i * 7 + len(name)) & 255 for i in range(size)))
        off += (size + align - 1) // align * align
    if tensors or pad_end:
        b += b'\0' * (-len(b) % align)
    for d in datas:
        b += d + b'\0' * (-len(d) % align)
    return b

scalars = [('s.u8', U8, 200), ('s.i8', I8, -100), ('s.u16', U16, 60000), ('s.i16', I16, -30000),
           ('s.u32', U32, 4000000000), ('s.i32', I32, -2000000000), ('s.f32', F32, 1.5),
           ('s.bool', BOOL, True), ('s.str', STR, 'h\u00e9llo'), ('s.u64', U64, 2**63 + 5),
           ('s.i64', I64, -2**62), ('s.f64', F64, 3.25)]
arrays = [('a.' + k[2:], ARR, (t, [v] * 3)) for k, t, v in scalars if t != STR]
arrays += [('a.str', ARR, (STR, ['', 'x', 'with\0nul', '\u00fcnicode'])), ('a.empty', ARR, (U32, []))]
tokens = ['<unk>', '<s>', '</s>'] + [chr(97 + i % 26) * (1 + i // 26) for i in range(37)]
llama = [('general.architecture', STR, 'llama'), ('general.name', STR, 'mini'),
         ('llama.context_length', U32, 64), ('llama.embedding_length', U32, 32),
         ('llama.block_count', U32, 1), ('llama.feed_forward_length', U32, 64),
         ('llama.attention.head_count', U32, 2), ('llama.attention.head_count_kv', U32, 1),
         ('llama.rope.freq_base', F32, 10000.0),
         ('llama.attention.layer_norm_rms_epsilon', F32, 1e-5), ('general.file_type', U32, 7),
         ('tokenizer.ggml.model', STR, 'llama'), ('tokenizer.ggml.tokens', ARR, (STR, tokens)),
         ('tokenizer.ggml.scores', ARR, (F32, [-float(i) for i in range(len(tokens))])),
         ('tokenizer.ggml.token_type', ARR, (I32, [2, 3, 3] + [1] * (len(tokens) - 3))),
         ('tokenizer.ggml.merges', ARR, (STR, ['a b', 'aa b'])),
         ('tokenizer.ggml.bos_token_id', U32, 1), ('tokenizer.ggml.eos_token_id', U32, 2),
         ('tokenizer.ggml.add_bos_token', BOOL, True)]
seeds = {
    'empty.gguf': gguf([]),
    'scalars-v2.gguf': gguf(scalars, version=2),
    'arrays.gguf': gguf(arrays),
    'tensors-align64.gguf': gguf([('general.alignment', U32, 64), ('general.name', STR, 't')],
                                 [('f32', [3, 2], 0), ('q8_0', [64], 8), ('q4_K', [256], 12),
                                  ('q6_K', [256], 14), ('q5_1', [32], 7), ('bf16', [4, 1, 1, 2], 30),
                                  ('f16', [5], 1)]),
    'mini-llama.gguf': gguf(llama, [('token_embd.weight', [32, len(tokens)], 0),
                                    ('output_norm.weight', [32], 0),
                                    ('blk.0.attn_q.weight', [32, 32], 8),
                                    ('blk.0.ffn_down.weight', [64, 32], 2)]),
    'vocab-only.gguf': gguf(llama, pad_end=False),
}
for name, data in seeds.items():
    assert len(data) < 20000, name
    with open(os.path.join(out, name), 'wb') as f:
        f.write(data)
    print('%s: %d bytes' % (name, len(data)))
PY
