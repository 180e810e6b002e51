"""A tiny, independent GGUF reader/writer for making broken files in tests.

Values are kept as raw bytes so a file can be re-written unchanged except for
the edits a test makes (string values, tensor types, shapes, dropped tensors).
"""
import struct

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Gguf:
    def __init__(self, path):
        b = open(path, 'rb').read()
        assert b[:4] == b'GGUF'
        self.version, n_t, n_kv = struct.unpack_from('<IQQ', b, 4)
        p = 24
        self.kvs = []  # [key, type, raw value bytes]

        def rstr(p):
            n, = struct.unpack_from('<Q', b, p)
            return b[p + 8:p + 8 + n].decode('utf-8', 'replace'), p + 8 + n

        def skip_val(t, p):
            if t == 8:
                n, = struct.unpack_from('<Q', b, p)
                return p + 8 + n
            if t == 9:
                et, n = struct.unpack_from('<IQ', b, p)
                p += 12
                for _ in range(n):
                    p = skip_val(et, p)
                return p
            return p + SIZES[t]

        for _ in range(n_kv):
            k, p = rstr(p)
            t, = struct.unpack_from('<I', b, p)
            p += 4
            e = skip_val(t, p)
            self.kvs.append([k, t, b[p:e]])
            p = e
        self.align = 32
        for k, t, raw in self.kvs:
            if k == 'general.alignment':
                self.align, = struct.unpack('<I', raw)
        infos = []
        for _ in range(n_t):
            name, p = rstr(p)
            nd, = struct.unpack_from('<I', b, p)
            ne = list(struct.unpack_from('<%dQ' % nd, b, p + 4))
            p += 4 + 8 * nd
            ty, off = struct.unpack_from('<IQ', b, p)
            p += 12
            infos.append((name, ne, ty, off))
        data0 = (p + self.align - 1) // self.align * self.align
        offs = sorted(set(i[3] for i in infos)) + [len(b) - data0]
        self.tensors = []  # [name, ne, type, data bytes]
        for name, ne, ty, off in infos:
            end = min(o for o in offs if o > off) if any(o > off for o in offs) else len(b) - data0
            self.tensors.append([name, ne, ty, b[data0 + off:data0 + end]])

    def set_str(self, key, value):
        raw = value.encode()
        raw = struct.pack('<Q', len(raw)) + raw
        for kv in self.kvs:
            if kv[0] == key:
                kv[1], kv[2] = 8, raw
                return
        self.kvs.append([key, 8, raw])

    def set_u32(self, key, value):
        for kv in self.kvs:
            if kv[0] == key:
                kv[1], kv[2] = 4, struct.pack('<I', value)
                return
        self.kvs.append([key, 4, struct.pack('<I', value)])

    def tensor(self, name):
        return next(t for t in self.tensors if t[0] == name)

    def drop_tensor(self, name):
        self.tensors = [t for t in self.tensors if t[0] != name]

    def write(self, path):
        out = bytearray(b'GGUF' + struct.pack('<IQQ', self.version, len(self.tensors), len(self.kvs)))
        for k, t, raw in self.kvs:
            kb = k.encode()
            out += struct.pack('<Q', len(kb)) + kb + struct.pack('<I', t) + raw
        off = 0
        offsets = []
        for name, ne, ty, data in self.tensors:
            offsets.append(off)
            off += (len(data) + self.align - 1) // self.align * self.align
        for (name, ne, ty, data), o in zip(self.tensors, offsets):
            nb = name.encode()
            out += struct.pack('<Q', len(nb)) + nb + struct.pack('<I', len(ne))
            out += struct.pack('<%dQ' % len(ne), *ne) + struct.pack('<IQ', ty, o)
        out += b'\0' * ((-len(out)) % self.align)
        for name, ne, ty, data in self.tensors:
            out += data + b'\0' * ((-len(data)) % self.align)
        open(path, 'wb').write(out)
