/* gguf.c: GGUF v2/v3 reader (mmapped, validated up front) and streaming writer.
 *
 * File layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 * n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims,
 * u64 ne[n_dims], u32 ggml type, u64 offset), zero padding to the alignment,
 * then the data section. A string is u64 length + bytes (no NUL). An array
 * value is u32 element type + u64 count + elements.
 *
 * The reader makes two passes over the header. Pass 1 checks every length
 * against the bytes that remain and counts what must be allocated, without
 * allocating; pass 2 fills one allocation sized from those counts and checks
 * what needs the whole header (offsets against the data section, duplicates).
 * So no count from the file is trusted before the bytes it claims exist.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensor.h"

#define GGUF_HEADER_SIZE 24
#define GGUF_ALIGNMENT_KEY "general.alignment"
/* Smallest possible encodings, used to reject impossible counts before walking. */
#define MIN_KV_BYTES 13     /* key length 8 + type 4 + a 1-byte value */
#define MIN_TENSOR_BYTES 32 /* name length 8 + n_dims 4 + one ne 8 + type 4 + offset 8 */

static const size_t type_sizes[SPUD_GGUF_TYPE_COUNT] = {
    [SPUD_GGUF_UINT8] = 1,   [SPUD_GGUF_INT8] = 1,    [SPUD_GGUF_UINT16] = 2,
    [SPUD_GGUF_INT16] = 2,   [SPUD_GGUF_UINT32] = 4,  [SPUD_GGUF_INT32] = 4,
    [SPUD_GGUF_FLOAT32] = 4, [SPUD_GGUF_BOOL] = 1,    [SPUD_GGUF_STRING] = 0,
    [SPUD_GGUF_ARRAY] = 0,   [SPUD_GGUF_UINT64] = 8,  [SPUD_GGUF_INT64] = 8,
    [SPUD_GGUF_FLOAT64] = 8,
};

static const char *const type_names[SPUD_GGUF_TYPE_COUNT] = {
    [SPUD_GGUF_UINT8] = "uint8",     [SPUD_GGUF_INT8] = "int8",     [SPUD_GGUF_UINT16] = "uint16",
    [SPUD_GGUF_INT16] = "int16",     [SPUD_GGUF_UINT32] = "uint32", [SPUD_GGUF_INT32] = "int32",
    [SPUD_GGUF_FLOAT32] = "float32", [SPUD_GGUF_BOOL] = "bool",     [SPUD_GGUF_STRING] = "string",
    [SPUD_GGUF_ARRAY] = "array",     [SPUD_GGUF_UINT64] = "uint64", [SPUD_GGUF_INT64] = "int64",
    [SPUD_GGUF_FLOAT64] = "float64",
};

const char *spud_gguf_type_name(spud_gguf_type t) {
    return (unsigned)t < SPUD_GGUF_TYPE_COUNT ? type_names[t] : "unknown";
}

size_t spud_gguf_type_size(spud_gguf_type t) {
    return (unsigned)t < SPUD_GGUF_TYPE_COUNT ? type_sizes[t] : 0;
}

bool spud_str_eq(spud_str s, const char *cstr) {
    size_t n = strlen(cstr);
    return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

static bool is_unsigned_type(spud_gguf_type t) {
    return t == SPUD_GGUF_UINT8 || t == SPUD_GGUF_UINT16 || t == SPUD_GGUF_UINT32 ||
           t == SPUD_GGUF_UINT64;
}

static bool is_signed_type(spud_gguf_type t) {
    return t == SPUD_GGUF_INT8 || t == SPUD_GGUF_INT16 || t == SPUD_GGUF_INT32 ||
           t == SPUD_GGUF_INT64;
}

static uint64_t load_le(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint8_t *store_le(uint8_t *p, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + n;
}

/* Sign-extend the low `bytes` bytes of v. */
static int64_t sign_extend(uint64_t v, size_t bytes) {
    unsigned shift = (unsigned)(64 - 8 * bytes);
    return (int64_t)(v << shift) >> shift;
}

/* Decode one fixed-size scalar at p into kv->v (widened). */
static void decode_scalar(spud_gguf_type t, const uint8_t *p, spud_gguf_kv *kv) {
    size_t n = type_sizes[t];
    uint64_t raw = load_le(p, n);
    if (is_unsigned_type(t)) {
        kv->v.u64 = raw;
    } else if (is_signed_type(t)) {
        kv->v.i64 = sign_extend(raw, n);
    } else if (t == SPUD_GGUF_FLOAT32) {
        uint32_t bits = (uint32_t)raw;
        float f;
        memcpy(&f, &bits, sizeof f);
        kv->v.f64 = f;
    } else if (t == SPUD_GGUF_FLOAT64) {
        memcpy(&kv->v.f64, &raw, sizeof kv->v.f64);
    } else if (t == SPUD_GGUF_BOOL) {
        kv->v.b = raw != 0;
    }
}

/* Untrusted bytes shown in a message: printable, one line, at most ~64 chars.
 * Returned by value so it can be used inline: show(s).s */
typedef struct {
    char s[96];
} shown;

static shown show(spud_str str) {
    static const char hex[] = "0123456789abcdef";
    shown out;
    size_t o = 0;
    for (uint64_t i = 0; i < str.len; i++) {
        unsigned char ch = (unsigned char)str.ptr[i];
        if (o > 64) {
            memcpy(out.s + o, "...", 3);
            o += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'') {
            out.s[o++] = (char)ch;
        } else {
            out.s[o++] = '\\';
            out.s[o++] = 'x';
            out.s[o++] = hex[ch >> 4];
            out.s[o++] = hex[ch & 15];
        }
    }
    out.s[o] = '\0';
    return out;
}

static shown show_c(const char *s) { return show((spud_str){s, strlen(s)}); }

/* ---- name index: open addressing over an array of items holding a spud_str ---- */

static uint64_t hash_bytes(const char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

typedef struct {
    uint64_t *slots; /* item index + 1; 0 = empty */
    uint64_t mask;   /* capacity - 1; capacity is a power of two > 2 * items */
    const void *items;
    size_t stride;   /* bytes per item */
    size_t name_off; /* offset of the spud_str in an item */
} name_index;

static uint64_t index_capacity(uint64_t n) {
    uint64_t cap = 4;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

static const spud_str *index_name(const name_index *ix, uint64_t i) {
    return (const spud_str *)((const char *)ix->items + i * ix->stride + ix->name_off);
}

/* Index of the item named (p, n), or UINT64_MAX. */
static uint64_t index_find(const name_index *ix, const char *p, uint64_t n) {
    for (uint64_t s = hash_bytes(p, n) & ix->mask;; s = (s + 1) & ix->mask) {
        uint64_t v = ix->slots[s];
        if (v == 0) return UINT64_MAX;
        const spud_str *nm = index_name(ix, v - 1);
        if (nm->len == n && (n == 0 || memcmp(nm->ptr, p, n) == 0)) return v - 1;
    }
}

/* Add item i; returns the index of an existing item with the same name, or UINT64_MAX. */
static uint64_t index_add(name_index *ix, uint64_t i) {
    const spud_str *nm = index_name(ix, i);
    uint64_t s = hash_bytes(nm->ptr, nm->len) & ix->mask;
    for (;; s = (s + 1) & ix->mask) {
        uint64_t v = ix->slots[s];
        if (v == 0) break;
        const spud_str *o = index_name(ix, v - 1);
        if (o->len == nm->len && (nm->len == 0 || memcmp(o->ptr, nm->ptr, nm->len) == 0))
            return v - 1;
    }
    ix->slots[s] = i + 1;
    return UINT64_MAX;
}

/* ---- reader ---- */

struct spud_gguf {
    const uint8_t *base;
    uint64_t size;
    void *map; /* mmapped region (spud_gguf_open), or NULL */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv, n_tensors;
    spud_gguf_kv *kvs;
    spud_gguf_tensor *tensors;
    spud_str *strs; /* elements of all string arrays */
    name_index kv_index, tensor_index;
    const char *name; /* for messages */
};

typedef struct {
    const uint8_t *base;
    uint64_t pos, size;
} cursor;

static uint64_t remaining(const cursor *c) { return c->size - c->pos; }

static spud_status need(const cursor *c, uint64_t n, const char *what) {
    if (n > remaining(c))
        return spud_errorf(SPUD_ERR_FORMAT,
                           "%s at offset %" PRIu64 " (%" PRIu64
                           " bytes) extends past end of file (size %" PRIu64 ")",
                           what, c->pos, n, c->size);
    return SPUD_OK;
}

static spud_status read_u32(cursor *c, uint32_t *v, const char *what) {
    spud_status st = need(c, 4, what);
    if (st != SPUD_OK) return st;
    *v = (uint32_t)load_le(c->base + c->pos, 4);
    c->pos += 4;
    return SPUD_OK;
}

static spud_status read_u64(cursor *c, uint64_t *v, const char *what) {
    spud_status st = need(c, 8, what);
    if (st != SPUD_OK) return st;
    *v = load_le(c->base + c->pos, 8);
    c->pos += 8;
    return SPUD_OK;
}

static spud_status read_str(cursor *c, spud_str *s, const char *what) {
    uint64_t len;
    spud_status st = read_u64(c, &len, what);
    if (st != SPUD_OK) return st;
    if (len > remaining(c))
        return spud_errorf(SPUD_ERR_FORMAT,
                           "%s of length %" PRIu64 " at offset %" PRIu64
                           " extends past end of file (size %" PRIu64 ")",
                           what, len, c->pos, c->size);
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return SPUD_OK;
}

/* Read the value of kv (type already set). String-array elements are stored
 * at strs[*n_strs...] when strs is not NULL, and always counted in *n_strs. */
static spud_status read_value(cursor *c, spud_gguf_kv *kv, spud_str *strs, uint64_t *n_strs) {
    spud_status st;
    if (kv->type == SPUD_GGUF_STRING) return read_str(c, &kv->v.str, "string");
    if (kv->type != SPUD_GGUF_ARRAY) {
        st = need(c, type_sizes[kv->type], kv->type == SPUD_GGUF_BOOL ? "bool" : "number");
        if (st != SPUD_OK) return st;
        decode_scalar(kv->type, c->base + c->pos, kv);
        c->pos += type_sizes[kv->type];
        return SPUD_OK;
    }
    uint32_t et;
    uint64_t n, nb;
    st = read_u32(c, &et, "array element type");
    if (st != SPUD_OK) return st;
    if (et == SPUD_GGUF_ARRAY)
        return spud_errorf(SPUD_ERR_FORMAT, "nested arrays are not supported");
    if (et >= SPUD_GGUF_TYPE_COUNT)
        return spud_errorf(SPUD_ERR_FORMAT, "unknown array element type %" PRIu32, et);
    st = read_u64(c, &n, "array length");
    if (st != SPUD_OK) return st;
    kv->arr_type = (spud_gguf_type)et;
    kv->arr_n = n;
    if (et == SPUD_GGUF_STRING) {
        /* Each element takes at least its 8-byte length: reject impossible counts first. */
        if (n > remaining(c) / 8)
            return spud_errorf(SPUD_ERR_FORMAT,
                               "array of %" PRIu64 " strings at offset %" PRIu64
                               " extends past end of file (size %" PRIu64 ")",
                               n, c->pos, c->size);
        kv->arr_strs = strs && n ? strs + *n_strs : NULL;
        for (uint64_t i = 0; i < n; i++) {
            spud_str tmp;
            st = read_str(c, strs ? &strs[*n_strs + i] : &tmp, "string");
            if (st != SPUD_OK) return spud_error_wrap(st, "array element %" PRIu64, i);
        }
        *n_strs += n;
        return SPUD_OK;
    }
    if (!spud_mul_ok(n, type_sizes[et], &nb) || nb > remaining(c))
        return spud_errorf(SPUD_ERR_FORMAT,
                           "array of %" PRIu64 " %s at offset %" PRIu64
                           " extends past end of file (size %" PRIu64 ")",
                           n, type_names[et], c->pos, c->size);
    kv->arr_data = c->base + c->pos;
    c->pos += nb;
    return SPUD_OK;
}

static spud_status read_kv(cursor *c, uint64_t i, spud_gguf_kv *kv, spud_str *strs,
                           uint64_t *n_strs) {
    uint32_t t;
    spud_status st;
    memset(kv, 0, sizeof *kv);
    st = read_str(c, &kv->key, "key");
    if (st != SPUD_OK) return spud_error_wrap(st, "kv %" PRIu64, i);
    st = read_u32(c, &t, "value type");
    if (st != SPUD_OK) return spud_error_wrap(st, "key '%s'", show(kv->key).s);
    if (t >= SPUD_GGUF_TYPE_COUNT)
        return spud_errorf(SPUD_ERR_FORMAT, "key '%s': unknown value type %" PRIu32,
                           show(kv->key).s, t);
    kv->type = (spud_gguf_type)t;
    st = read_value(c, kv, strs, n_strs);
    if (st != SPUD_OK) return spud_error_wrap(st, "key '%s'", show(kv->key).s);
    return SPUD_OK;
}

/* Block layout of every GGML type id, for types spud does not compute with:
 * their tensors are still bounds-checked, and `spud info` lists them. Ids
 * GGML has retired (4, 5, 31-33, 36-38) or that we do not know have no entry
 * and are rejected, as GGML's own reader does. (ggml-common.h) */
static const struct {
    uint16_t bs; /* elements per block; 0: not a GGML type */
    uint16_t ts; /* bytes per block */
} ggml_blocks[] = {
    [0] = {1, 4},      /* f32 */
    [1] = {1, 2},      /* f16 */
    [2] = {32, 18},    /* q4_0 */
    [3] = {32, 20},    /* q4_1 */
    [6] = {32, 22},    /* q5_0 */
    [7] = {32, 24},    /* q5_1 */
    [8] = {32, 34},    /* q8_0 */
    [9] = {32, 36},    /* q8_1 */
    [10] = {256, 84},  /* q2_K */
    [11] = {256, 110}, /* q3_K */
    [12] = {256, 144}, /* q4_K */
    [13] = {256, 176}, /* q5_K */
    [14] = {256, 210}, /* q6_K */
    [15] = {256, 292}, /* q8_K */
    [16] = {256, 66},  /* iq2_xxs */
    [17] = {256, 74},  /* iq2_xs */
    [18] = {256, 98},  /* iq3_xxs */
    [19] = {256, 50},  /* iq1_s */
    [20] = {32, 18},   /* iq4_nl */
    [21] = {256, 110}, /* iq3_s */
    [22] = {256, 82},  /* iq2_s */
    [23] = {256, 136}, /* iq4_xs */
    [24] = {1, 1},     /* i8 */
    [25] = {1, 2},     /* i16 */
    [26] = {1, 4},     /* i32 */
    [27] = {1, 8},     /* i64 */
    [28] = {1, 8},     /* f64 */
    [29] = {256, 56},  /* iq1_m */
    [30] = {1, 2},     /* bf16 */
    [34] = {256, 54},  /* tq1_0 */
    [35] = {256, 66},  /* tq2_0 */
    [39] = {32, 17},   /* mxfp4 */
    [40] = {64, 36},   /* nvfp4 */
};

/* Block size and bytes per block of a GGML type id; false if GGML has no such type. */
static bool type_layout(uint32_t type, uint64_t *bs, uint64_t *ts) {
    const spud_type_info *ti = spud_type_get(type);
    if (ti) {
        *bs = (uint64_t)ti->block_size;
        *ts = ti->type_size;
        return true;
    }
    if (type >= sizeof ggml_blocks / sizeof ggml_blocks[0] || ggml_blocks[type].bs == 0) return false;
    *bs = ggml_blocks[type].bs;
    *ts = ggml_blocks[type].ts;
    return true;
}

/* Read one tensor info. t->nbytes is its byte size, or 0 for a type spud
 * does not support; *span is the byte size either way. */
static spud_status read_tensor_info(cursor *c, uint64_t i, spud_gguf_tensor *t, uint64_t *span) {
    spud_status st;
    uint64_t n_el = 1;
    memset(t, 0, sizeof *t);
    st = read_str(c, &t->name, "tensor name");
    if (st != SPUD_OK) return spud_error_wrap(st, "tensor %" PRIu64, i);
    shown nm = show(t->name);
    st = read_u32(c, &t->n_dims, "n_dims");
    if (st != SPUD_OK) return spud_error_wrap(st, "tensor '%s'", nm.s);
    if (t->n_dims < 1 || t->n_dims > SPUD_GGUF_MAX_DIMS)
        return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s': n_dims %" PRIu32 " is not in 1..%d",
                           nm.s, t->n_dims, SPUD_GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < SPUD_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        st = read_u64(c, &t->ne[d], "dimension");
        if (st != SPUD_OK) return spud_error_wrap(st, "tensor '%s'", nm.s);
        if (t->ne[d] == 0)
            return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s': dimension %" PRIu32 " is 0", nm.s, d);
        if (!spud_mul_ok(n_el, t->ne[d], &n_el) || n_el > INT64_MAX)
            return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s': element count overflows", nm.s);
    }
    st = read_u32(c, &t->type, "tensor type");
    if (st == SPUD_OK) st = read_u64(c, &t->offset, "tensor offset");
    if (st != SPUD_OK) return spud_error_wrap(st, "tensor '%s'", nm.s);
    uint64_t bs, ts, row, nbytes;
    if (!type_layout(t->type, &bs, &ts))
        return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s': unknown ggml type id %" PRIu32, nm.s,
                           t->type);
    if (t->ne[0] % bs != 0)
        return spud_errorf(SPUD_ERR_FORMAT,
                           "tensor '%s': row length %" PRIu64
                           " is not a multiple of the %s block size %" PRIu64,
                           nm.s, t->ne[0], spud_type_name(t->type), bs);
    if (!spud_mul_ok(t->ne[0] / bs, ts, &row) || !spud_mul_ok(row, n_el / t->ne[0], &nbytes))
        return spud_errorf(SPUD_ERR_FORMAT, "tensor '%s': byte size overflows", nm.s);
    /* The header promises nbytes == 0 for unsupported types; their size is
     * still used to check that the data lies inside the file. */
    t->nbytes = spud_type_get(t->type) ? nbytes : 0;
    *span = nbytes;
    return SPUD_OK;
}

/* Pass 1 results: what to allocate and where the data section starts. */
typedef struct {
    uint32_t version, alignment;
    uint64_t n_kv, n_tensors, n_strs;
    uint64_t data_offset;
} header_info;

static spud_status check_alignment_kv(const spud_gguf_kv *kv, uint32_t *alignment) {
    if (kv->type != SPUD_GGUF_UINT32)
        return spud_errorf(SPUD_ERR_FORMAT, "%s has type %s, expected uint32",
                           GGUF_ALIGNMENT_KEY, type_names[kv->type]);
    uint64_t a = kv->v.u64;
    if (a == 0 || (a & (a - 1)) != 0)
        return spud_errorf(SPUD_ERR_FORMAT, "%s = %" PRIu64 " is not a nonzero power of two",
                           GGUF_ALIGNMENT_KEY, a);
    *alignment = (uint32_t)a;
    return SPUD_OK;
}

static spud_status parse_pass1(const uint8_t *base, uint64_t size, header_info *h) {
    cursor c = {base, 0, size};
    spud_status st;
    bool have_alignment = false;
    if (size < 4)
        return spud_errorf(SPUD_ERR_FORMAT, "file too small (%" PRIu64 " bytes) to be GGUF", size);
    if (memcmp(base, "GGUF", 4) != 0)
        return spud_errorf(SPUD_ERR_FORMAT, "not a GGUF file (magic '%s')",
                           show((spud_str){(const char *)base, 4}).s);
    c.pos = 4;
    if (size < GGUF_HEADER_SIZE)
        return spud_errorf(SPUD_ERR_FORMAT, "truncated header (%" PRIu64 " bytes, need %d)",
                           size, GGUF_HEADER_SIZE);
    (void)read_u32(&c, &h->version, "version"); /* the header fits: checked above */
    if (h->version == 1)
        return spud_errorf(SPUD_ERR_UNSUPPORTED,
                           "GGUF version 1 is not supported (re-convert the model with a current tool)");
    if (h->version == 0x02000000u || h->version == 0x03000000u)
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "big-endian GGUF files are not supported");
    if (h->version != 2 && h->version != 3)
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "unsupported GGUF version %" PRIu32,
                           h->version);
    (void)read_u64(&c, &h->n_tensors, "tensor count");
    (void)read_u64(&c, &h->n_kv, "kv count");
    uint64_t rest = remaining(&c), kv_min, t_min, both;
    if (h->n_kv > rest / MIN_KV_BYTES || h->n_tensors > rest / MIN_TENSOR_BYTES ||
        !spud_mul_ok(h->n_kv, MIN_KV_BYTES, &kv_min) ||
        !spud_mul_ok(h->n_tensors, MIN_TENSOR_BYTES, &t_min) ||
        !spud_add_ok(kv_min, t_min, &both) || both > rest)
        return spud_errorf(SPUD_ERR_FORMAT,
                           "%" PRIu64 " kvs and %" PRIu64
                           " tensors cannot fit in a file of %" PRIu64 " bytes",
                           h->n_kv, h->n_tensors, size);
    h->alignment = SPUD_GGUF_DEFAULT_ALIGNMENT;
    h->n_strs = 0;
    for (uint64_t i = 0; i < h->n_kv; i++) {
        spud_gguf_kv kv;
        st = read_kv(&c, i, &kv, NULL, &h->n_strs);
        if (st != SPUD_OK) return st;
        if (!have_alignment && spud_str_eq(kv.key, GGUF_ALIGNMENT_KEY)) {
            st = check_alignment_kv(&kv, &h->alignment);
            if (st != SPUD_OK) return st;
            have_alignment = true;
        }
    }
    for (uint64_t i = 0; i < h->n_tensors; i++) {
        spud_gguf_tensor t;
        uint64_t span;
        st = read_tensor_info(&c, i, &t, &span);
        if (st != SPUD_OK) return st;
    }
    /* The data section may start past EOF when no tensor has data (vocab-only files). */
    h->data_offset = (c.pos + h->alignment - 1) / h->alignment * h->alignment;
    return SPUD_OK;
}

/* Pass 2: fill g's arrays (sized by pass 1) and check what needs the whole header. */
static spud_status parse_pass2(spud_gguf *g) {
    cursor c = {g->base, GGUF_HEADER_SIZE, g->size};
    uint64_t n_strs = 0, dup;
    uint64_t data_size = g->size > g->data_offset ? g->size - g->data_offset : 0;
    spud_status st;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        st = read_kv(&c, i, &g->kvs[i], g->strs, &n_strs);
        if (st != SPUD_OK) return st;
        dup = index_add(&g->kv_index, i);
        if (dup != UINT64_MAX)
            return spud_errorf(SPUD_ERR_FORMAT, "duplicate key '%s' (kv %" PRIu64 " and %" PRIu64 ")",
                               show(g->kvs[i].key).s, dup, i);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        spud_gguf_tensor *t = &g->tensors[i];
        uint64_t span;
        st = read_tensor_info(&c, i, t, &span);
        if (st != SPUD_OK) return st;
        shown nm = show(t->name);
        dup = index_add(&g->tensor_index, i);
        if (dup != UINT64_MAX)
            return spud_errorf(SPUD_ERR_FORMAT,
                               "duplicate tensor name '%s' (tensors %" PRIu64 " and %" PRIu64 ")",
                               nm.s, dup, i);
        if (t->offset % g->alignment != 0)
            return spud_errorf(SPUD_ERR_FORMAT,
                               "tensor '%s': data offset %" PRIu64
                               " is not a multiple of the alignment %" PRIu32,
                               nm.s, t->offset, g->alignment);
        if (t->offset > data_size || span > data_size - t->offset)
            return spud_errorf(SPUD_ERR_FORMAT,
                               "tensor '%s' data (offset %" PRIu64 ", %" PRIu64
                               " bytes, data section at %" PRIu64
                               ") extends past end of file (size %" PRIu64 ")",
                               nm.s, t->offset, span, g->data_offset, g->size);
        if (spud_type_get(t->type)) t->data = g->base + g->data_offset + t->offset;
    }
    return SPUD_OK;
}

static uint64_t round8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* Validate (base, size) and build a spud_gguf in one allocation. */
static spud_status gguf_build(const uint8_t *base, uint64_t size, const char *name,
                              spud_gguf **out) {
    header_info h;
    spud_status st = parse_pass1(base, size, &h);
    if (st != SPUD_OK) return spud_error_wrap(st, "%s", name);

    /* Every count below is bounded by the file size, so these sums cannot
     * overflow; check anyway rather than reason about it at each edit. */
    uint64_t kv_cap = index_capacity(h.n_kv), t_cap = index_capacity(h.n_tensors);
    uint64_t parts[6], total;
    size_t name_len = strlen(name);
    bool ok = spud_mul_ok(h.n_kv, sizeof(spud_gguf_kv), &parts[0]) &&
              spud_mul_ok(h.n_tensors, sizeof(spud_gguf_tensor), &parts[1]) &&
              spud_mul_ok(h.n_strs, sizeof(spud_str), &parts[2]) &&
              spud_mul_ok(kv_cap, sizeof(uint64_t), &parts[3]) &&
              spud_mul_ok(t_cap, sizeof(uint64_t), &parts[4]);
    parts[5] = name_len + 1;
    total = round8(sizeof(spud_gguf));
    for (int i = 0; ok && i < 6; i++)
        ok = parts[i] <= UINT64_MAX / 2 && spud_add_ok(total, round8(parts[i]), &total);
    if (!ok || total > SIZE_MAX)
        return spud_errorf(SPUD_ERR_NOMEM, "%s: header too large for memory", name);
    uint8_t *mem = spud_calloc(1, (size_t)total);
    if (!mem)
        return spud_errorf(SPUD_ERR_NOMEM,
                           "%s: out of memory (%" PRIu64 " kvs, %" PRIu64 " tensors)", name,
                           h.n_kv, h.n_tensors);
    spud_gguf *g = (spud_gguf *)mem;
    size_t off = (size_t)round8(sizeof(spud_gguf));
    g->kvs = (spud_gguf_kv *)(mem + off);
    off += round8(parts[0]);
    g->tensors = (spud_gguf_tensor *)(mem + off);
    off += round8(parts[1]);
    g->strs = (spud_str *)(mem + off);
    off += round8(parts[2]);
    g->kv_index.slots = (uint64_t *)(mem + off);
    off += round8(parts[3]);
    g->tensor_index.slots = (uint64_t *)(mem + off);
    off += round8(parts[4]);
    memcpy(mem + off, name, name_len + 1);
    g->name = (const char *)(mem + off);

    g->base = base;
    g->size = size;
    g->version = h.version;
    g->alignment = h.alignment;
    g->data_offset = h.data_offset;
    g->n_kv = h.n_kv;
    g->n_tensors = h.n_tensors;
    g->kv_index = (name_index){g->kv_index.slots, kv_cap - 1, g->kvs, sizeof(spud_gguf_kv),
                               offsetof(spud_gguf_kv, key)};
    g->tensor_index = (name_index){g->tensor_index.slots, t_cap - 1, g->tensors,
                                   sizeof(spud_gguf_tensor), offsetof(spud_gguf_tensor, name)};
    st = parse_pass2(g);
    if (st != SPUD_OK) {
        spud_free(mem);
        return spud_error_wrap(st, "%s", name);
    }
    *out = g;
    return SPUD_OK;
}

spud_status spud_gguf_open_memory(const void *data, size_t size, spud_gguf **out) {
    if (!out || (!data && size > 0))
        return spud_errorf(SPUD_ERR_INVALID, "spud_gguf_open_memory: NULL argument");
    *out = NULL;
    if (size == 0) return spud_errorf(SPUD_ERR_FORMAT, "<memory>: empty buffer");
    return gguf_build(data, size, "<memory>", out);
}

spud_status spud_gguf_open(const char *path, spud_gguf **out) {
    struct stat sb;
    spud_status st;
    if (!path || !out) return spud_errorf(SPUD_ERR_INVALID, "spud_gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return spud_errorf(SPUD_ERR_IO, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        st = spud_errorf(SPUD_ERR_IO, "%s: %s", path, strerror(errno));
        close(fd);
        return st;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return spud_errorf(SPUD_ERR_IO, "%s: not a regular file", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return spud_errorf(SPUD_ERR_FORMAT, "%s: file is empty", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping stays valid */
    if (map == MAP_FAILED) return spud_errorf(SPUD_ERR_IO, "%s: mmap: %s", path, strerror(map_errno));
    st = gguf_build(map, size, path, out);
    if (st != SPUD_OK) {
        munmap(map, size);
        return st;
    }
    (*out)->map = map;
    return SPUD_OK;
}

void spud_gguf_close(spud_gguf *g) {
    if (!g) return;
    if (g->map) munmap(g->map, (size_t)g->size);
    spud_free(g);
}

uint32_t spud_gguf_version(const spud_gguf *g) { return g->version; }
uint64_t spud_gguf_file_size(const spud_gguf *g) { return g->size; }
uint32_t spud_gguf_alignment(const spud_gguf *g) { return g->alignment; }
uint64_t spud_gguf_data_offset(const spud_gguf *g) { return g->data_offset; }
const char *spud_gguf_name(const spud_gguf *g) { return g->name; }
uint64_t spud_gguf_n_kv(const spud_gguf *g) { return g->n_kv; }
uint64_t spud_gguf_n_tensors(const spud_gguf *g) { return g->n_tensors; }

const spud_gguf_kv *spud_gguf_kv_at(const spud_gguf *g, uint64_t i) {
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const spud_gguf_tensor *spud_gguf_tensor_at(const spud_gguf *g, uint64_t i) {
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const spud_gguf_kv *spud_gguf_find_kv(const spud_gguf *g, const char *key) {
    uint64_t i = index_find(&g->kv_index, key, strlen(key));
    return i == UINT64_MAX ? NULL : &g->kvs[i];
}

const spud_gguf_tensor *spud_gguf_find_tensor(const spud_gguf *g, const char *name) {
    uint64_t i = index_find(&g->tensor_index, name, strlen(name));
    return i == UINT64_MAX ? NULL : &g->tensors[i];
}

/* "uint32" or "array of string": a kv's type for messages. */
static const char *kv_type_desc(const spud_gguf_kv *kv, char *buf, size_t cap) {
    if (kv->type != SPUD_GGUF_ARRAY) return type_names[kv->type];
    snprintf(buf, cap, "array of %s", type_names[kv->arr_type]);
    return buf;
}

static spud_status wrong_type(const spud_gguf *g, const spud_gguf_kv *kv, const char *want) {
    char buf[32];
    return spud_errorf(SPUD_ERR_FORMAT, "%s: key '%s' has type %s, expected %s", g->name,
                       show(kv->key).s, kv_type_desc(kv, buf, sizeof buf), want);
}

/* Any integer kv whose value lies in [lo, hi], as two's-complement bits. */
static spud_status get_int(const spud_gguf *g, const char *key, int64_t lo, uint64_t hi,
                           const char *want, uint64_t *bits) {
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_ERR_NOT_FOUND;
    if (is_unsigned_type(kv->type)) {
        if (kv->v.u64 > hi)
            return spud_errorf(SPUD_ERR_FORMAT, "%s: key '%s' value %" PRIu64 " does not fit in %s",
                               g->name, show_c(key).s, kv->v.u64, want);
        *bits = kv->v.u64;
        return SPUD_OK;
    }
    if (is_signed_type(kv->type)) {
        int64_t v = kv->v.i64;
        if (v < lo || (v > 0 && (uint64_t)v > hi))
            return spud_errorf(SPUD_ERR_FORMAT, "%s: key '%s' value %" PRId64 " does not fit in %s",
                               g->name, show_c(key).s, v, want);
        *bits = (uint64_t)v;
        return SPUD_OK;
    }
    return wrong_type(g, kv, want);
}

spud_status spud_gguf_get_u32(const spud_gguf *g, const char *key, uint32_t *out) {
    uint64_t v;
    spud_status st = get_int(g, key, 0, UINT32_MAX, "uint32", &v);
    if (st == SPUD_OK) *out = (uint32_t)v;
    return st;
}

spud_status spud_gguf_get_i32(const spud_gguf *g, const char *key, int32_t *out) {
    uint64_t v;
    spud_status st = get_int(g, key, INT32_MIN, INT32_MAX, "int32", &v);
    if (st == SPUD_OK) *out = (int32_t)(int64_t)v;
    return st;
}

spud_status spud_gguf_get_u64(const spud_gguf *g, const char *key, uint64_t *out) {
    return get_int(g, key, 0, UINT64_MAX, "uint64", out);
}

spud_status spud_gguf_get_f32(const spud_gguf *g, const char *key, float *out) {
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_ERR_NOT_FOUND;
    if (kv->type == SPUD_GGUF_FLOAT32 || kv->type == SPUD_GGUF_FLOAT64) {
        double d = kv->v.f64;
        if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
            return spud_errorf(SPUD_ERR_FORMAT, "%s: key '%s' value %g does not fit in float32",
                                   g->name, show_c(key).s, d);
        *out = (float)d;
        return SPUD_OK;
    }
    if (is_unsigned_type(kv->type)) {
        *out = (float)kv->v.u64;
        return SPUD_OK;
    }
    if (is_signed_type(kv->type)) {
        *out = (float)kv->v.i64;
        return SPUD_OK;
    }
    return wrong_type(g, kv, "float32");
}

spud_status spud_gguf_get_bool(const spud_gguf *g, const char *key, bool *out) {
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_ERR_NOT_FOUND;
    if (kv->type != SPUD_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = kv->v.b;
    return SPUD_OK;
}

spud_status spud_gguf_get_str(const spud_gguf *g, const char *key, spud_str *out) {
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_ERR_NOT_FOUND;
    if (kv->type != SPUD_GGUF_STRING) return wrong_type(g, kv, "string");
    *out = kv->v.str;
    return SPUD_OK;
}

spud_status spud_gguf_get_arr(const spud_gguf *g, const char *key, spud_gguf_type elem,
                              const spud_gguf_kv **out) {
    char want[32];
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_ERR_NOT_FOUND;
    if (kv->type != SPUD_GGUF_ARRAY || kv->arr_type != elem) {
        snprintf(want, sizeof want, "array of %s", spud_gguf_type_name(elem));
        return wrong_type(g, kv, want);
    }
    *out = kv;
    return SPUD_OK;
}

/* Element i of a fixed-size array, decoded into a scratch kv; false if none. */
static bool arr_elem(const spud_gguf_kv *kv, uint64_t i, spud_gguf_kv *e) {
    if (kv->type != SPUD_GGUF_ARRAY || i >= kv->arr_n || type_sizes[kv->arr_type] == 0)
        return false;
    memset(e, 0, sizeof *e);
    e->type = kv->arr_type;
    decode_scalar(e->type, (const uint8_t *)kv->arr_data + i * type_sizes[e->type], e);
    return true;
}

int64_t spud_gguf_arr_int(const spud_gguf_kv *kv, uint64_t i) {
    spud_gguf_kv e;
    if (!arr_elem(kv, i, &e)) return 0;
    if (is_unsigned_type(e.type)) return (int64_t)e.v.u64;
    if (is_signed_type(e.type)) return e.v.i64;
    if (e.type == SPUD_GGUF_BOOL) return e.v.b;
    return 0;
}

double spud_gguf_arr_float(const spud_gguf_kv *kv, uint64_t i) {
    spud_gguf_kv e;
    if (!arr_elem(kv, i, &e)) return 0;
    if (is_unsigned_type(e.type)) return (double)e.v.u64;
    if (is_signed_type(e.type)) return (double)e.v.i64;
    if (e.type == SPUD_GGUF_BOOL) return e.v.b;
    return e.v.f64;
}

/* ---- writer ---- */

typedef struct {
    spud_str key;         /* owned copy (NUL-terminated) */
    spud_gguf_type type;
    uint8_t *val;         /* encoded value without the type tag, owned */
    uint64_t val_len;
} writer_kv;

typedef struct {
    spud_str name; /* owned copy (NUL-terminated) */
    uint32_t type, n_dims;
    uint64_t ne[SPUD_GGUF_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} writer_tensor;

struct spud_gguf_writer {
    writer_kv *kvs;
    uint64_t n_kv, cap_kv;
    writer_tensor *tensors;
    uint64_t n_tensors, cap_tensors;
    name_index tensor_index; /* over tensors; rebuilt when they grow */
};

spud_gguf_writer *spud_gguf_writer_new(void) {
    return spud_calloc(1, sizeof(spud_gguf_writer));
}

void spud_gguf_writer_free(spud_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        spud_free((void *)w->kvs[i].key.ptr);
        spud_free(w->kvs[i].val);
    }
    for (uint64_t i = 0; i < w->n_tensors; i++) spud_free((void *)w->tensors[i].name.ptr);
    spud_free(w->kvs);
    spud_free(w->tensors);
    spud_free(w->tensor_index.slots);
    spud_free(w);
}

/* Set key (len bytes) to an encoded value; takes ownership of val in every case. */
static spud_status writer_put(spud_gguf_writer *w, const char *key, uint64_t key_len,
                              spud_gguf_type type, uint8_t *val, uint64_t val_len) {
    for (uint64_t i = 0; i < w->n_kv; i++) {
        writer_kv *kv = &w->kvs[i];
        if (kv->key.len == key_len && memcmp(kv->key.ptr, key, key_len) == 0) {
            spud_free(kv->val);
            kv->type = type;
            kv->val = val;
            kv->val_len = val_len;
            return SPUD_OK;
        }
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        writer_kv *kvs = spud_realloc(w->kvs, cap * sizeof *kvs);
        if (!kvs) goto nomem;
        w->kvs = kvs;
        w->cap_kv = cap;
    }
    char *k = spud_strndup(key, key_len);
    if (!k) goto nomem;
    w->kvs[w->n_kv++] = (writer_kv){{k, key_len}, type, val, val_len};
    return SPUD_OK;
nomem:
    spud_free(val);
    return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory setting key '%s'",
                       show((spud_str){key, key_len}).s);
}

static spud_status writer_check(const spud_gguf_writer *w, const void *key) {
    if (!w || !key) return spud_errorf(SPUD_ERR_INVALID, "gguf writer: NULL argument");
    return SPUD_OK;
}

static spud_status put_scalar(spud_gguf_writer *w, const char *key, spud_gguf_type type,
                              uint64_t bits) {
    spud_status st = writer_check(w, key);
    if (st != SPUD_OK) return st;
    uint8_t *val = spud_malloc(type_sizes[type]);
    if (!val) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    store_le(val, bits, type_sizes[type]);
    return writer_put(w, key, strlen(key), type, val, type_sizes[type]);
}

spud_status spud_gguf_writer_set_u32(spud_gguf_writer *w, const char *key, uint32_t v) {
    return put_scalar(w, key, SPUD_GGUF_UINT32, v);
}

spud_status spud_gguf_writer_set_i32(spud_gguf_writer *w, const char *key, int32_t v) {
    return put_scalar(w, key, SPUD_GGUF_INT32, (uint32_t)v);
}

spud_status spud_gguf_writer_set_u64(spud_gguf_writer *w, const char *key, uint64_t v) {
    return put_scalar(w, key, SPUD_GGUF_UINT64, v);
}

spud_status spud_gguf_writer_set_f32(spud_gguf_writer *w, const char *key, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return put_scalar(w, key, SPUD_GGUF_FLOAT32, bits);
}

spud_status spud_gguf_writer_set_bool(spud_gguf_writer *w, const char *key, bool v) {
    return put_scalar(w, key, SPUD_GGUF_BOOL, v ? 1 : 0);
}

static spud_status put_string(spud_gguf_writer *w, const char *key, uint64_t key_len,
                              const char *s, uint64_t len) {
    uint8_t *val = spud_malloc((size_t)len + 8);
    if (!val) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    memcpy(store_le(val, len, 8), s, (size_t)len);
    return writer_put(w, key, key_len, SPUD_GGUF_STRING, val, len + 8);
}

spud_status spud_gguf_writer_set_str(spud_gguf_writer *w, const char *key, const char *v) {
    spud_status st = writer_check(w, key);
    if (st != SPUD_OK) return st;
    if (!v) return spud_errorf(SPUD_ERR_INVALID, "gguf writer: NULL string for key '%s'", show_c(key).s);
    return put_string(w, key, strlen(key), v, strlen(v));
}

static spud_status put_array(spud_gguf_writer *w, const char *key, uint64_t key_len,
                             spud_gguf_type elem, const void *data, uint64_t n) {
    uint64_t nb, total;
    if (!spud_mul_ok(n, type_sizes[elem], &nb) || !spud_add_ok(nb, 12, &total) || total > SIZE_MAX)
        return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: array '%s' too large",
                           show((spud_str){key, key_len}).s);
    uint8_t *val = spud_malloc((size_t)total);
    if (!val) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    uint8_t *p = store_le(store_le(val, elem, 4), n, 8);
    if (nb) memcpy(p, data, (size_t)nb); /* host is little-endian, as GGUF */
    return writer_put(w, key, key_len, SPUD_GGUF_ARRAY, val, total);
}

spud_status spud_gguf_writer_set_arr(spud_gguf_writer *w, const char *key, spud_gguf_type elem,
                                     const void *data, uint64_t n) {
    spud_status st = writer_check(w, key);
    if (st != SPUD_OK) return st;
    if ((unsigned)elem >= SPUD_GGUF_TYPE_COUNT || type_sizes[elem] == 0)
        return spud_errorf(SPUD_ERR_INVALID,
                           "gguf writer: key '%s': arrays of %s need set_arr_str or are not allowed",
                           show_c(key).s, spud_gguf_type_name(elem));
    if (!data && n > 0)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: key '%s': NULL array data", show_c(key).s);
    return put_array(w, key, strlen(key), elem, data, n);
}

/* Encode an array of n strings; str(i) gives element i. */
static spud_status put_str_array(spud_gguf_writer *w, const char *key, uint64_t key_len,
                                 const spud_str *strs, const char *const *cstrs,
                                 const uint64_t *lens, uint64_t n) {
    uint64_t total = 12;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = strs ? strs[i].len : lens ? lens[i] : strlen(cstrs[i]);
        if (!spud_add_ok(total, 8, &total) || !spud_add_ok(total, len, &total))
            return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: array '%s' too large",
                               show((spud_str){key, key_len}).s);
    }
    if (total > SIZE_MAX) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: array too large");
    uint8_t *val = spud_malloc((size_t)total);
    if (!val) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    uint8_t *p = store_le(store_le(val, SPUD_GGUF_STRING, 4), n, 8);
    for (uint64_t i = 0; i < n; i++) {
        const char *s = strs ? strs[i].ptr : cstrs[i];
        uint64_t len = strs ? strs[i].len : lens ? lens[i] : strlen(cstrs[i]);
        p = store_le(p, len, 8);
        if (len) memcpy(p, s, (size_t)len);
        p += len;
    }
    return writer_put(w, key, key_len, SPUD_GGUF_ARRAY, val, total);
}

spud_status spud_gguf_writer_set_arr_str(spud_gguf_writer *w, const char *key,
                                         const char *const *strs, const uint64_t *lens, uint64_t n) {
    spud_status st = writer_check(w, key);
    if (st != SPUD_OK) return st;
    if (n > 0 && !strs)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: key '%s': NULL strings", show_c(key).s);
    for (uint64_t i = 0; i < n; i++)
        if (!strs[i])
            return spud_errorf(SPUD_ERR_INVALID, "gguf writer: key '%s': string %" PRIu64 " is NULL",
                               show_c(key).s, i);
    return put_str_array(w, key, strlen(key), NULL, strs, lens, n);
}

spud_status spud_gguf_writer_copy_kv(spud_gguf_writer *w, const spud_gguf_kv *kv) {
    spud_status st = writer_check(w, kv);
    if (st != SPUD_OK) return st;
    const char *key = kv->key.ptr;
    uint64_t key_len = kv->key.len;
    if ((unsigned)kv->type >= SPUD_GGUF_TYPE_COUNT)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: key '%s': bad type", show(kv->key).s);
    if (kv->type == SPUD_GGUF_STRING) return put_string(w, key, key_len, kv->v.str.ptr, kv->v.str.len);
    if (kv->type == SPUD_GGUF_ARRAY) {
        if (kv->arr_type == SPUD_GGUF_STRING)
            return put_str_array(w, key, key_len, kv->arr_strs, NULL, NULL, kv->arr_n);
        if ((unsigned)kv->arr_type >= SPUD_GGUF_TYPE_COUNT || type_sizes[kv->arr_type] == 0)
            return spud_errorf(SPUD_ERR_INVALID, "gguf writer: key '%s': bad array type",
                               show(kv->key).s);
        return put_array(w, key, key_len, kv->arr_type, kv->arr_data, kv->arr_n);
    }
    uint64_t bits;
    if (kv->type == SPUD_GGUF_FLOAT32) {
        float f = (float)kv->v.f64;
        uint32_t b32;
        memcpy(&b32, &f, sizeof b32);
        bits = b32;
    } else if (kv->type == SPUD_GGUF_FLOAT64) {
        memcpy(&bits, &kv->v.f64, sizeof bits);
    } else if (kv->type == SPUD_GGUF_BOOL) {
        bits = kv->v.b;
    } else {
        bits = is_signed_type(kv->type) ? (uint64_t)kv->v.i64 : kv->v.u64;
    }
    uint8_t *val = spud_malloc(type_sizes[kv->type]);
    if (!val) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    store_le(val, bits, type_sizes[kv->type]);
    return writer_put(w, key, key_len, kv->type, val, type_sizes[kv->type]);
}

static spud_status writer_index_grow(spud_gguf_writer *w, uint64_t n) {
    uint64_t cap = index_capacity(n);
    if (w->tensor_index.slots && cap - 1 == w->tensor_index.mask) return SPUD_OK;
    uint64_t *slots = spud_calloc((size_t)cap, sizeof *slots);
    if (!slots) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    spud_free(w->tensor_index.slots);
    w->tensor_index = (name_index){slots, cap - 1, w->tensors, sizeof(writer_tensor),
                                   offsetof(writer_tensor, name)};
    for (uint64_t i = 0; i < w->n_tensors; i++) index_add(&w->tensor_index, i);
    return SPUD_OK;
}

spud_status spud_gguf_writer_add_tensor(spud_gguf_writer *w, const char *name, uint32_t type,
                                        uint32_t n_dims, const uint64_t *ne, const void *data,
                                        uint64_t nbytes) {
    spud_status st = writer_check(w, name);
    if (st != SPUD_OK) return st;
    shown nm = show_c(name);
    uint64_t n_el = 1;
    if (n_dims < 1 || n_dims > SPUD_GGUF_MAX_DIMS || !ne)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: tensor '%s': n_dims %" PRIu32 " is not in 1..%d",
                           nm.s, n_dims, SPUD_GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] == 0 || !spud_mul_ok(n_el, ne[d], &n_el) || n_el > INT64_MAX)
            return spud_errorf(SPUD_ERR_INVALID, "gguf writer: tensor '%s': bad shape", nm.s);
    uint64_t bs, ts, want;
    if (!type_layout(type, &bs, &ts))
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: tensor '%s': unknown ggml type id %" PRIu32,
                           nm.s, type);
    if (ne[0] % bs != 0)
        return spud_errorf(SPUD_ERR_INVALID,
                           "gguf writer: tensor '%s': row length %" PRIu64
                           " is not a multiple of the %s block size %" PRIu64,
                           nm.s, ne[0], spud_type_name(type), bs);
    if (!spud_mul_ok(ne[0] / bs, ts, &want) || !spud_mul_ok(want, n_el / ne[0], &want))
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: tensor '%s': byte size overflows", nm.s);
    if (nbytes != want)
        return spud_errorf(SPUD_ERR_INVALID,
                           "gguf writer: tensor '%s': %" PRIu64 " bytes given, shape needs %" PRIu64,
                           nm.s, nbytes, want);
    if (!data && nbytes > 0)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: tensor '%s': NULL data", nm.s);
    size_t name_len = strlen(name);
    if (w->tensor_index.slots && index_find(&w->tensor_index, name, name_len) != UINT64_MAX)
        return spud_errorf(SPUD_ERR_INVALID, "gguf writer: duplicate tensor name '%s'", nm.s);
    if (w->n_tensors == w->cap_tensors) {
        uint64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        writer_tensor *grown = spud_realloc(w->tensors, cap * sizeof *grown);
        if (!grown) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
        w->tensors = grown;
        w->cap_tensors = cap;
        w->tensor_index.items = grown; /* the index holds indices, so only the base moves */
    }
    st = writer_index_grow(w, w->n_tensors + 1);
    if (st != SPUD_OK) return st;
    char *copy = spud_strndup(name, name_len);
    if (!copy) return spud_errorf(SPUD_ERR_NOMEM, "gguf writer: out of memory");
    writer_tensor *t = &w->tensors[w->n_tensors];
    *t = (writer_tensor){.name = {copy, name_len}, .type = type, .n_dims = n_dims,
                         .data = data, .nbytes = nbytes};
    for (uint32_t d = 0; d < SPUD_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    index_add(&w->tensor_index, w->n_tensors);
    w->n_tensors++;
    return SPUD_OK;
}

/* Buffered output that remembers the first error and counts bytes. */
typedef struct {
    FILE *f;
    uint64_t pos;
    bool failed;
} out_file;

static void out_bytes(out_file *o, const void *p, uint64_t n) {
    if (o->failed || n == 0) return;
    if (fwrite(p, 1, (size_t)n, o->f) != n) o->failed = true;
    o->pos += n;
}

static void out_le(out_file *o, uint64_t v, size_t n) {
    uint8_t b[8];
    store_le(b, v, n);
    out_bytes(o, b, n);
}

static void out_pad(out_file *o, uint32_t alignment) {
    static const uint8_t zeros[4096];
    uint64_t pad = (alignment - o->pos % alignment) % alignment;
    while (pad > 0) {
        uint64_t n = pad < sizeof zeros ? pad : sizeof zeros;
        out_bytes(o, zeros, n);
        pad -= n;
    }
}

spud_status spud_gguf_writer_write(spud_gguf_writer *w, const char *path) {
    uint32_t alignment = SPUD_GGUF_DEFAULT_ALIGNMENT;
    spud_status st;
    if (!w || !path) return spud_errorf(SPUD_ERR_INVALID, "gguf writer: NULL argument");
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const writer_kv *kv = &w->kvs[i];
        if (spud_str_eq(kv->key, GGUF_ALIGNMENT_KEY)) {
            uint64_t a = kv->type == SPUD_GGUF_UINT32 ? load_le(kv->val, 4) : 0;
            if (a == 0 || (a & (a - 1)) != 0)
                return spud_errorf(SPUD_ERR_INVALID,
                                   "%s: %s must be a uint32 nonzero power of two", path,
                                   GGUF_ALIGNMENT_KEY);
            alignment = (uint32_t)a;
        }
    }
    /* Offsets: each tensor starts aligned; reject totals that overflow. */
    uint64_t data_size = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        uint64_t end;
        if (!spud_add_ok(data_size, w->tensors[i].nbytes, &end) ||
            !spud_add_ok(end, alignment - 1, &end))
            return spud_errorf(SPUD_ERR_INVALID, "%s: tensor data too large", path);
        data_size = end / alignment * alignment;
    }

    size_t plen = strlen(path);
    char *tmp = spud_malloc(plen + sizeof ".tmp.XXXXXX");
    if (!tmp) return spud_errorf(SPUD_ERR_NOMEM, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = spud_errorf(SPUD_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
        spud_free(tmp);
        return st;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; a model file is meant to be shared */
    out_file o = {fdopen(fd, "wb"), 0, false};
    if (!o.f) {
        st = spud_errorf(SPUD_ERR_IO, "%s: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }

    out_bytes(&o, "GGUF", 4);
    out_le(&o, 3, 4);
    out_le(&o, w->n_tensors, 8);
    out_le(&o, w->n_kv, 8);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const writer_kv *kv = &w->kvs[i];
        out_le(&o, kv->key.len, 8);
        out_bytes(&o, kv->key.ptr, kv->key.len);
        out_le(&o, kv->type, 4);
        out_bytes(&o, kv->val, kv->val_len);
    }
    uint64_t offset = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        out_le(&o, t->name.len, 8);
        out_bytes(&o, t->name.ptr, t->name.len);
        out_le(&o, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) out_le(&o, t->ne[d], 8);
        out_le(&o, t->type, 4);
        out_le(&o, offset, 8);
        offset = (offset + t->nbytes + alignment - 1) / alignment * alignment;
    }
    out_pad(&o, alignment);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        out_bytes(&o, w->tensors[i].data, w->tensors[i].nbytes);
        out_pad(&o, alignment);
    }
    if (o.failed || fflush(o.f) != 0 || fsync(fileno(o.f)) != 0) {
        st = spud_errorf(SPUD_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        fclose(o.f);
        goto fail;
    }
    if (fclose(o.f) != 0) {
        st = spud_errorf(SPUD_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        st = spud_errorf(SPUD_ERR_IO, "%s: rename from %s failed: %s", path, tmp, strerror(errno));
        goto fail;
    }
    spud_free(tmp);
    return SPUD_OK;
fail:
    unlink(tmp);
    spud_free(tmp);
    return st;
}
