/* tokenizer.c: byte-level BPE ("gpt2") and SentencePiece BPE ("llama")
 * tokenizers loaded from GGUF metadata, following llama.cpp c392e50
 * (src/llama-vocab.cpp, src/unicode.cpp) so that ids match its test vectors.
 *
 * Layout: helpers and hash maps; the pre-tokenizer table; loading (metadata,
 * token attributes, special tokens, merges, piece cache); encoding (special
 * token partition, BPE, SentencePiece); decoding (pieces, streaming UTF-8).
 *
 * Differences from llama.cpp, on purpose:
 * - Pre-tokenizer regexes run on PCRE2 with Unicode properties instead of
 *   llama.cpp's hand-written splitters and category-collapsed std::regex; \s is
 *   spelled as the Unicode White_Space set that llama.cpp (and HF) use.
 * - Corrupt metadata (ids out of range, bad merges, duplicate texts) is an
 *   error, not a warning or an assertion.
 * - Invalid UTF-8 is never an exception; see spud_tok_encode in tokenizer.h.
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ---- token attributes (llama_token_attr bit values) ---- */
enum {
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
    ATTR_LSTRIP = 1 << 7,
    ATTR_RSTRIP = 1 << 8,
    ATTR_EOG = 1 << 15, /* ours: member of the end-of-generation set */
};

typedef enum { TOK_BPE, TOK_SPM } tok_kind;

#define MAX_REGEX 6
#define RX_TRAILING_WS "\\s+$" /* marker: done by a linear scan, not PCRE2 */

/* Open-addressing map from a 64-bit key to an int32 value (keys != UINT64_MAX). */
typedef struct {
    uint64_t key;
    int32_t val;
} u64slot;

typedef struct {
    u64slot *slots; /* key and value side by side: one cache miss per probe */
    uint64_t mask;  /* capacity - 1 */
} u64map;

/* Open-addressing map from token text to id: slot = (hash high bits, id). */
typedef struct {
    uint32_t hash;
    int32_t id; /* -1: empty */
} text_slot;

struct spud_tokenizer {
    tok_kind kind;
    int32_t n_vocab;
    spud_str *text;   /* (n_vocab) token texts, into the GGUF or into names_blob */
    uint16_t *attr;   /* (n_vocab) ATTR_* bits */
    float *score;     /* (n_vocab) SentencePiece scores; NULL for BPE */
    char *names_blob; /* "[EMPTY_i]" texts that replace empty tokens */
    size_t max_token_len;

    text_slot *slots; /* text -> id */
    uint64_t slot_mask;

    /* byte-level BPE */
    int32_t n_merges;
    int32_t *merge_a, *merge_b, *merge_res; /* (n_merges) parts and result id (-1: not a token) */
    u64map merge_rank;                      /* (a << 32 | b) -> rank */
    int32_t byte_tok[256];    /* BPE: id of the GPT-2 char of byte b; SPM: byte fallback */
    int32_t single_tok[256];  /* BPE: id of the 1-byte text b (llama.cpp's last resort) */
    pcre2_code *rx[MAX_REGEX];
    bool rx_trailing_ws[MAX_REGEX];
    int n_rx;
    pcre2_general_context *gctx;
    bool ignore_merges;

    /* SentencePiece */
    bool add_space_prefix;
    bool spm_split; /* no token has a U+2581 inside that follows a non-U+2581 */

    int32_t bos, eos, eot, eom, unk;
    bool add_bos, add_eos;
    char model_name[8];
    char pre_name[48];

    /* special tokens: a byte trie over the texts of CONTROL, USER_DEFINED and
     * UNKNOWN tokens; node_id[node] = token ending there (-1 none), node_prio =
     * its rank in llama.cpp's order (longer first, then lower id). */
    u64map trie;        /* (node << 8 | byte) -> child node */
    int32_t *node_id;   /* (n_nodes) */
    uint32_t *node_prio;
    int32_t n_nodes;
    bool has_user_defined;

    /* pieces with render_special = true, precomputed */
    uint64_t *piece_off; /* (n_vocab + 1) */
    char *piece_blob;
    size_t max_piece_len;
};

/* ---- helpers ---- */

static uint64_t hash_bytes(const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Grow *p (elements of size elem) to hold at least need elements. */
static bool grow(void *pp, size_t *cap, size_t need, size_t elem) {
    void **p = pp;
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2) return false;
        c *= 2;
    }
    uint64_t bytes;
    if (!spud_mul_ok(c, elem, &bytes) || bytes > SIZE_MAX) return false;
    void *q = spud_realloc(*p, (size_t)bytes);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static spud_status nomem(void) { return spud_errorf(SPUD_ERR_NOMEM, "tokenizer: out of memory"); }

/* Copy s into buf as printable text for messages (escapes, truncated). */
static const char *show(spud_str s, char *buf, size_t cap) {
    size_t o = 0;
    uint64_t i = 0;
    for (; i < s.len && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c >= 0x20 && c < 0x7f && c != '\'') {
            buf[o++] = (char)c;
        } else {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        }
    }
    if (i < s.len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

static bool str_eq_n(spud_str s, const char *p, size_t n) {
    return s.len == n && (n == 0 || memcmp(s.ptr, p, n) == 0);
}

static size_t utf8_lead_len(uint8_t b) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[b >> 4];
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* One UTF-8 sequence at p[0..n), n >= 1. Returns its length and sets *cp, or
 * returns 0 with *skip = bytes to replace by one U+FFFD: 1 for a byte that
 * does not start a structurally complete sequence (llama.cpp's rule), the
 * whole sequence when it is complete but overlong, a surrogate or > U+10FFFF. */
static size_t utf8_next(const uint8_t *p, size_t n, uint32_t *cp, size_t *skip) {
    uint8_t b = p[0];
    size_t len;
    uint32_t c, min;
    *skip = 1;
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if ((b & 0x40) == 0) return 0;
    if ((b & 0x20) == 0) {
        len = 2, c = b & 0x1F, min = 0x80;
    } else if ((b & 0x10) == 0) {
        len = 3, c = b & 0x0F, min = 0x800;
    } else if ((b & 0x08) == 0) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (p[i] & 0x3F);
    }
    if (c < min || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) {
        *skip = len;
        return 0;
    }
    *cp = c;
    return len;
}

/* GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes stand for
 * themselves; the other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) map to U+0100.. in
 * byte order. */
static uint32_t gpt2_byte_cp(uint8_t b) {
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return b + 162u;
    if (b == 0xAD) return 323;
    return b;
}

/* The byte a GPT-2 alphabet code point stands for, or -1. */
static int gpt2_cp_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)cp - 256;
    if (cp >= 289 && cp <= 322) return (int)cp - 162;
    if (cp == 323) return 0xAD;
    return -1;
}

/* ---- u64map ---- */

static bool u64map_init(u64map *m, uint64_t n) {
    uint64_t cap = pow2_at_least(n * 2 + 1);
    m->slots = spud_malloc(cap * sizeof *m->slots);
    if (!m->slots) return false;
    for (uint64_t i = 0; i < cap; i++) m->slots[i] = (u64slot){UINT64_MAX, -1};
    m->mask = cap - 1;
    return true;
}

static void u64map_free(u64map *m) {
    spud_free(m->slots);
    memset(m, 0, sizeof *m);
}

/* Insert key -> val unless present; returns the value now stored. The map
 * must have been sized for all keys (never more than half full). */
static int32_t u64map_put(u64map *m, uint64_t key, int32_t val) {
    uint64_t i = mix64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key) return m->slots[i].val;
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (u64slot){key, val};
    return val;
}

static int32_t u64map_get(const u64map *m, uint64_t key) {
    if (!m->slots) return -1;
    uint64_t i = mix64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key) return m->slots[i].val;
        i = (i + 1) & m->mask;
    }
    return -1;
}

/* ---- token text map ---- */

static int32_t text_lookup(const spud_tokenizer *t, const void *s, size_t n) {
    if (n > t->max_token_len) return -1;
    uint64_t h = hash_bytes(s, n);
    uint32_t tag = (uint32_t)(h >> 32);
    uint64_t i = h & t->slot_mask;
    for (;;) {
        const text_slot *sl = &t->slots[i];
        if (sl->id < 0) return -1;
        if (sl->hash == tag && str_eq_n(t->text[sl->id], s, n)) return sl->id;
        i = (i + 1) & t->slot_mask;
    }
}

static int32_t text_lookup_c(const spud_tokenizer *t, const char *s) {
    return text_lookup(t, s, strlen(s));
}

/* Insert every token text; duplicates are an error (llama.cpp asserts). */
static spud_status text_map_build(spud_tokenizer *t) {
    uint64_t cap = pow2_at_least((uint64_t)t->n_vocab * 2 + 1);
    t->slots = spud_malloc(cap * sizeof *t->slots);
    if (!t->slots) return nomem();
    for (uint64_t i = 0; i < cap; i++) t->slots[i] = (text_slot){0, -1};
    t->slot_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        spud_str s = t->text[id];
        uint64_t h = hash_bytes(s.ptr, s.len);
        uint32_t tag = (uint32_t)(h >> 32);
        uint64_t i = h & t->slot_mask;
        while (t->slots[i].id >= 0) {
            const text_slot *sl = &t->slots[i];
            if (sl->hash == tag && str_eq_n(t->text[sl->id], s.ptr, s.len)) {
                char b[96];
                return spud_errorf(SPUD_ERR_FORMAT,
                                   "tokenizer.ggml.tokens: tokens %d and %d have the same text '%s'",
                                   sl->id, id, show(s, b, sizeof b));
            }
            i = (i + 1) & t->slot_mask;
        }
        t->slots[i] = (text_slot){tag, id};
    }
    return SPUD_OK;
}

/* ---- pre-tokenizers ----
 * Regex lists as llama.cpp applies them: each regex splits every piece the
 * previous one produced, and text between matches is kept as a piece too.
 * \s is written out as Unicode White_Space (what HF and llama.cpp use;
 * PCRE2's \s would add U+180E). */
#define WSB "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define RS "[" WSB "]"
#define RNS "[^" WSB "]"

#define RX_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WSB "\\p{L}\\p{N}]+|" RS "+(?!" RNS ")"
#define RX_CONTRACTIONS_CI "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RX_LLAMA3_TAIL                                                                             \
    "| ?[^" WSB "\\p{L}\\p{N}]+[\\r\\n]*|" RS "*[\\r\\n]+|" RS "+(?!" RNS ")|" RS "+"
#define RX_LLAMA3 RX_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" RX_LLAMA3_TAIL
#define RX_QWEN2 RX_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}" RX_LLAMA3_TAIL
#define RX_PORO " ?[^(" WSB "|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{0964}\\x{06D4}\\x{060C})]+"
#define RX_CJK "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
/* deepseek-llm's cased-letter class, from its tokenizer.json */
#define RX_DEEPSEEK_LETTERS                                                                        \
    "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"                  \
    "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"          \
    "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"                   \
    "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"     \
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"                  \
    "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"                  \
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}"          \
    "\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"         \
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}"                  \
    "\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}"          \
    "\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}"          \
    "\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"                    \
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}"                   \
    "\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}"                  \
    "\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}"                  \
    "\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"              \
    "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"          \
    "\\x{1E900}-\\x{1E943}"

typedef struct {
    const char *names; /* '|'-separated tokenizer.ggml.pre values */
    const char *rx[MAX_REGEX];
    bool ignore_merges, add_bos, no_bos;
} pre_def;

static const pre_def pre_defs[] = {
    {"default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RX_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, false, false, false},
    {"llama3|llama-v3|llama-bpe|falcon3", {RX_LLAMA3}, true, true, false},
    {"dbrx|smaug-bpe", {RX_LLAMA3}, false, false, false},
    {"deepseek-llm",
     {"[\\r\\n]", RS "?[" RX_DEEPSEEK_LETTERS "]+",
      RS "?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
      RX_TRAILING_WS, RX_CJK, "\\p{N}+"},
     false, false, false},
    {"deepseek-v3",
     {"\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
      "| ?[\\p{P}\\p{S}]+[\\r\\n]*|" RS "*[\\r\\n]+|" RS "+(?!" RNS ")|" RS "+"},
     false, false, false},
    {"deepseek-coder", {"[\\r\\n]", RS "?\\p{L}+", RS "?\\p{P}+", RX_CJK, "\\p{N}"}, false, false, false},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RX_GPT2, "[0-9][0-9][0-9]"}, false, false, false},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", {"\\p{N}", RX_GPT2},
     false, false, false},
    {"gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v1-en|jina-v2-es|jina-v2-de|jina-v2-code|"
     "roberta-bpe|mpt|olmo|jais|gpt-neox",
     {RX_GPT2}, false, false, false},
    {"qwen2|stablelm2|megrez", {RX_QWEN2}, false, false, false},
    {"poro-chat|poro|bloom|gpt3-finnish", {RX_PORO}, false, false, false},
    {"chatglm-bpe", {RX_LLAMA3}, false, false, true},
    {"viking", {RX_PORO, "\\p{N}"}, false, false, false},
    {"tekken",
     {"[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
      "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*"
      "|\\p{N}| ?[^" WSB "\\p{L}\\p{N}]+[\\r\\n/]*|" RS "*[\\r\\n]+|" RS "+(?!" RNS ")|" RS "+"},
     true, true, false},
    {"chameleon",
     {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
      "[\\p{P}!-/:-@\\[-`{-~]", RX_GPT2},
     false, true, false},
};

static const pre_def *pre_find(spud_str name) {
    for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++) {
        const char *p = pre_defs[i].names;
        while (*p) {
            const char *e = strchr(p, '|');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (str_eq_n(name, p, n)) return &pre_defs[i];
            p += n + (e ? 1 : 0);
        }
    }
    return NULL;
}

static void *pcre_alloc(size_t n, void *data) {
    (void)data;
    return spud_malloc(n);
}

static void pcre_free(void *p, void *data) {
    (void)data;
    spud_free(p);
}

static spud_status compile_pre(spud_tokenizer *t, const pre_def *d) {
    pcre2_compile_context *cctx = NULL;
    t->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, NULL);
    if (!t->gctx) return nomem();
    cctx = pcre2_compile_context_create(t->gctx);
    if (!cctx) return nomem();
    for (int i = 0; i < MAX_REGEX && d->rx[i]; i++) {
        t->n_rx = i + 1;
        if (strcmp(d->rx[i], RX_TRAILING_WS) == 0) {
            t->rx_trailing_ws[i] = true;
            continue;
        }
        int err;
        PCRE2_SIZE off;
        t->rx[i] = pcre2_compile((PCRE2_SPTR)d->rx[i], PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &off, cctx);
        if (!t->rx[i]) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            pcre2_compile_context_free(cctx);
            if (err == PCRE2_ERROR_HEAP_FAILED) return nomem();
            return spud_errorf(SPUD_ERR_UNSUPPORTED,
                               "pre-tokenizer '%s': regex %d does not compile at %zu: %s",
                               t->pre_name, i, (size_t)off, (const char *)msg);
        }
        /* JIT is only a speed-up: without it (no JIT support, no executable
         * memory) the interpreter gives the same matches. */
        (void)pcre2_jit_compile(t->rx[i], PCRE2_JIT_COMPLETE);
    }
    pcre2_compile_context_free(cctx);
    return SPUD_OK;
}

/* ---- loading ---- */

/* Element i of an integer array kv (any integer element type), little-endian. */
static int64_t arr_int(const spud_gguf_kv *kv, uint64_t i) {
    static const uint8_t size[SPUD_GGUF_TYPE_COUNT] = {
        [SPUD_GGUF_UINT8] = 1, [SPUD_GGUF_INT8] = 1,  [SPUD_GGUF_UINT16] = 2, [SPUD_GGUF_INT16] = 2,
        [SPUD_GGUF_UINT32] = 4, [SPUD_GGUF_INT32] = 4, [SPUD_GGUF_UINT64] = 8, [SPUD_GGUF_INT64] = 8,
        [SPUD_GGUF_BOOL] = 1};
    size_t n = size[kv->arr_type];
    const uint8_t *p = (const uint8_t *)kv->arr_data + i * n;
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++) v |= (uint64_t)p[k] << (8 * k);
    switch (kv->arr_type) {
    case SPUD_GGUF_INT8: return (int8_t)v;
    case SPUD_GGUF_INT16: return (int16_t)v;
    case SPUD_GGUF_INT32: return (int32_t)v;
    default: return (int64_t)v;
    }
}

static bool is_int_type(spud_gguf_type ty) {
    return ty == SPUD_GGUF_UINT8 || ty == SPUD_GGUF_INT8 || ty == SPUD_GGUF_UINT16 ||
           ty == SPUD_GGUF_INT16 || ty == SPUD_GGUF_UINT32 || ty == SPUD_GGUF_INT32 ||
           ty == SPUD_GGUF_UINT64 || ty == SPUD_GGUF_INT64;
}

/* Read tokenizer.ggml.<name> as a token id into *id (unchanged if absent; a
 * negative value means "none"). strict: out of range is an error; otherwise
 * it is ignored with a warning, as llama.cpp does. */
static spud_status read_id(const spud_gguf *g, const spud_tokenizer *t, const char *name,
                           bool strict, int32_t *id) {
    char key[96];
    snprintf(key, sizeof key, "tokenizer.ggml.%s", name);
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    if (!kv) return SPUD_OK;
    int64_t v;
    if (kv->type == SPUD_GGUF_UINT8 || kv->type == SPUD_GGUF_UINT16 ||
        kv->type == SPUD_GGUF_UINT32 || kv->type == SPUD_GGUF_UINT64) {
        v = kv->v.u64 > INT64_MAX ? INT64_MAX : (int64_t)kv->v.u64;
    } else if (is_int_type(kv->type)) {
        v = kv->v.i64;
    } else {
        return spud_errorf(SPUD_ERR_FORMAT, "%s has type %s, expected an integer", key,
                           spud_gguf_type_name(kv->type));
    }
    if (v < 0) {
        *id = -1;
    } else if (v >= t->n_vocab) {
        if (strict)
            return spud_errorf(SPUD_ERR_FORMAT, "%s = %lld is out of range (vocabulary of %d tokens)",
                               key, (long long)v, t->n_vocab);
        spud_log(SPUD_LOG_WARN, "tokenizer: ignoring %s = %lld (vocabulary of %d tokens)", key,
                 (long long)v, t->n_vocab);
    } else {
        *id = (int32_t)v;
    }
    return SPUD_OK;
}

static spud_status read_bool(const spud_gguf *g, const char *key, bool *b) {
    spud_status st = spud_gguf_get_bool(g, key, b);
    return st == SPUD_ERR_NOT_FOUND ? SPUD_OK : st;
}

/* First token whose text is in list (NULL-terminated), or -1. */
static int32_t find_any(const spud_tokenizer *t, const char *const *list) {
    for (; *list; list++) {
        int32_t id = text_lookup_c(t, *list);
        if (id >= 0) return id;
    }
    return -1;
}

#define FW_BAR "\xEF\xBD\x9C" /* U+FF5C, DeepSeek's fullwidth '|' */
#define SPM_SPACE "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* EOT/EOM/FIM ids and the end-of-generation set, as llama.cpp's load() does:
 * a missing id is found by its usual text, and tokens found that way are
 * made CONTROL. */
static spud_status detect_special(const spud_gguf *g, spud_tokenizer *t) {
    static const char *const eot_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                            "<|endoftext|>", "<EOT>",
                                            "<" FW_BAR "end" SPM_SPACE "of" SPM_SPACE "sentence" FW_BAR ">",
                                            NULL};
    static const char *const eom_texts[] = {"<|eom_id|>", NULL};
    static const char *const fim_pre[] = {"<|fim_prefix|>", "<fim-prefix>",
                                          "<" FW_BAR "fim" SPM_SPACE "begin" FW_BAR ">", "<PRE>", NULL};
    static const char *const fim_suf[] = {"<|fim_suffix|>", "<fim-suffix>",
                                          "<" FW_BAR "fim" SPM_SPACE "hole" FW_BAR ">", "<SUF>", NULL};
    static const char *const fim_mid[] = {"<|fim_middle|>", "<fim-middle>",
                                          "<" FW_BAR "fim" SPM_SPACE "end" FW_BAR ">", "<MID>", NULL};
    static const char *const fim_pad[] = {"<|fim_pad|>", "<fim-pad>", "<PAD>", NULL};
    static const char *const fim_rep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", NULL};
    static const char *const fim_sep[] = {"<|file_sep|>", NULL};
    static const char *const eog_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                            "<|endoftext|>", "<|eom_id|>", "<EOT>", NULL};
    struct {
        const char *key, *key_old;
        const char *const *texts;
        int32_t id;
    } cls[] = {
        {"eot_token_id", NULL, eot_texts, -1},           {"eom_token_id", NULL, eom_texts, -1},
        {"fim_pre_token_id", "prefix_token_id", fim_pre, -1},
        {"fim_suf_token_id", "suffix_token_id", fim_suf, -1},
        {"fim_mid_token_id", "middle_token_id", fim_mid, -1},
        {"fim_pad_token_id", NULL, fim_pad, -1},     {"fim_rep_token_id", NULL, fim_rep, -1},
        {"fim_sep_token_id", NULL, fim_sep, -1},
    };
    spud_status st;
    for (size_t c = 0; c < sizeof cls / sizeof cls[0]; c++) {
        bool strict = c < 2; /* eot, eom end generation: a bad id there is an error */
        if ((st = read_id(g, t, cls[c].key, strict, &cls[c].id))) return st;
        if (cls[c].key_old && (st = read_id(g, t, cls[c].key_old, false, &cls[c].id))) return st;
        if (cls[c].id < 0) {
            int32_t id = find_any(t, cls[c].texts);
            if (id >= 0) {
                cls[c].id = id;
                t->attr[id] = ATTR_CONTROL;
            }
        }
    }
    t->eot = cls[0].id;
    t->eom = cls[1].id;
    for (size_t c = 5; c < 8; c++) { /* fim pad, repo, file separator */
        if (cls[c].id >= 0) t->attr[cls[c].id] |= ATTR_EOG;
    }
    for (const char *const *p = eog_texts; *p; p++) {
        int32_t id = text_lookup_c(t, *p);
        if (id >= 0) t->attr[id] = ATTR_CONTROL | ATTR_EOG;
    }
    if (t->eos >= 0) t->attr[t->eos] |= ATTR_EOG;
    if (t->eot >= 0) t->attr[t->eot] |= ATTR_EOG;
    if (t->eom >= 0) t->attr[t->eom] |= ATTR_EOG;
    return SPUD_OK;
}

/* Model-specific strip attributes (llama.cpp sets them by name). */
static void set_strip_attrs(const spud_gguf *g, spud_tokenizer *t) {
    spud_str name = {0}, pre = {0};
    (void)spud_gguf_get_str(g, "general.name", &name);
    (void)spud_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    char lname[256];
    size_t n = name.len < sizeof lname - 1 ? (size_t)name.len : sizeof lname - 1;
    for (size_t i = 0; i < n; i++) {
        char c = name.ptr[i];
        lname[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    lname[n] = 0;
    char lpre[64];
    show(pre, lpre, sizeof lpre);
    if (strstr(lpre, "jina-v2-de") || strstr(lpre, "jina-v2-es") || strstr(lpre, "jina-v2-code")) {
        int32_t id = text_lookup_c(t, "<mask>");
        if (id >= 0) t->attr[id] |= ATTR_LSTRIP;
    } else if (strstr(lname, "phi-3") || strstr(lname, "phi3")) {
        for (int32_t id = 0; id < t->n_vocab; id++) {
            if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) t->attr[id] |= ATTR_RSTRIP;
        }
        int32_t id = text_lookup_c(t, "</s>");
        if (id >= 0) t->attr[id] |= ATTR_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (size_t i = 0; i < 3; i++) {
            id = text_lookup_c(t, keep[i]);
            if (id >= 0) t->attr[id] &= (uint16_t)~ATTR_RSTRIP;
        }
    }
}

typedef struct {
    uint64_t len;
    int32_t id;
} special_ref;

/* llama.cpp's order for cutting special tokens: longer text first (ties: lower id). */
static int cmp_special(const void *a, const void *b) {
    const special_ref *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

/* The trie of special-token texts used to cut them out of the input. */
static spud_status build_special_trie(spud_tokenizer *t) {
    int32_t n_special = 0;
    uint64_t total = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) {
            n_special++;
            total += t->text[id].len;
            if (t->attr[id] & ATTR_USER_DEFINED) t->has_user_defined = true;
        }
    }
    if (n_special == 0) return SPUD_OK;
    if (total > INT32_MAX / 2) return spud_errorf(SPUD_ERR_FORMAT, "special tokens are too long");
    special_ref *order = spud_malloc((size_t)n_special * sizeof *order);
    t->node_id = spud_malloc(total * sizeof *t->node_id);
    t->node_prio = spud_malloc(total * sizeof *t->node_prio);
    if (!order || !t->node_id || !t->node_prio || !u64map_init(&t->trie, total)) {
        spud_free(order);
        return nomem();
    }
    int32_t k = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            order[k++] = (special_ref){t->text[id].len, id};
    }
    qsort(order, (size_t)n_special, sizeof *order, cmp_special);
    t->n_nodes = 1;
    t->node_id[0] = -1;
    t->node_prio[0] = 0;
    for (int32_t r = 0; r < n_special; r++) {
        spud_str s = t->text[order[r].id];
        int32_t node = 0;
        for (uint64_t i = 0; i < s.len; i++) {
            uint64_t key = (uint64_t)node << 8 | (uint8_t)s.ptr[i];
            int32_t next = u64map_put(&t->trie, key, t->n_nodes);
            if (next == t->n_nodes) {
                t->node_id[next] = -1;
                t->node_prio[next] = 0;
                t->n_nodes++;
            }
            node = next;
        }
        t->node_id[node] = order[r].id;
        t->node_prio[node] = (uint32_t)r;
    }
    spud_free(order);
    return SPUD_OK;
}

/* Piece of a token with render_special = true, into out (NULL: just measure). */
static size_t make_piece(const spud_tokenizer *t, int32_t id, char *out) {
    spud_str s = t->text[id];
    uint16_t a = t->attr[id];
    const uint8_t *p = (const uint8_t *)s.ptr;
    size_t n = 0;
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        if (out) memcpy(out, s.ptr, s.len);
        return s.len;
    }
    if (t->kind == TOK_SPM) {
        if (a & ATTR_NORMAL) {
            for (uint64_t i = 0; i < s.len;) {
                if (i + 3 <= s.len && memcmp(p + i, SPM_SPACE, 3) == 0) {
                    if (out) out[n] = ' ';
                    n++, i += 3;
                } else {
                    if (out) out[n] = (char)p[i];
                    n++, i++;
                }
            }
            return n;
        }
        if (a & ATTR_BYTE) { /* "<0xAB>", checked at load */
            if (out) out[0] = (char)strtol((char[3]){(char)p[3], (char)p[4], 0}, NULL, 16);
            return 1;
        }
        return 0;
    }
    if (!(a & ATTR_NORMAL)) return 0;
    for (uint64_t i = 0; i < s.len;) {
        uint32_t cp;
        size_t skip;
        size_t k = utf8_next(p + i, (size_t)(s.len - i), &cp, &skip);
        int b = k ? gpt2_cp_byte(cp) : -1;
        if (b >= 0) {
            if (out) out[n] = (char)b;
            n++, i += k;
        } else { /* outside the byte alphabet: copy as is */
            size_t m = k ? k : skip;
            if (out) memcpy(out + n, p + i, m);
            n += m, i += m;
        }
    }
    return n;
}

static spud_status build_pieces(spud_tokenizer *t) {
    t->piece_off = spud_malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->piece_off) return nomem();
    uint64_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece_off[id] = total;
        size_t n = make_piece(t, id, NULL);
        if (n > t->max_piece_len) t->max_piece_len = n;
        total += n;
    }
    t->piece_off[t->n_vocab] = total;
    if (total > SIZE_MAX - 1) return nomem();
    t->piece_blob = spud_malloc((size_t)total + 1);
    if (!t->piece_blob) return nomem();
    for (int32_t id = 0; id < t->n_vocab; id++) make_piece(t, id, t->piece_blob + t->piece_off[id]);
    return SPUD_OK;
}

static spud_status load_merges(const spud_gguf *g, spud_tokenizer *t) {
    const spud_gguf_kv *kv;
    spud_status st = spud_gguf_get_arr(g, "tokenizer.ggml.merges", SPUD_GGUF_STRING, &kv);
    if (st == SPUD_ERR_NOT_FOUND)
        return spud_errorf(SPUD_ERR_FORMAT, "gpt2 tokenizer without tokenizer.ggml.merges");
    if (st) return st;
    if (kv->arr_n > INT32_MAX)
        return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.merges: too many merges");
    int32_t n = (int32_t)kv->arr_n;
    t->n_merges = n;
    t->merge_a = spud_malloc(((size_t)n + 1) * sizeof(int32_t));
    t->merge_b = spud_malloc(((size_t)n + 1) * sizeof(int32_t));
    t->merge_res = spud_malloc(((size_t)n + 1) * sizeof(int32_t));
    if (!t->merge_a || !t->merge_b || !t->merge_res || !u64map_init(&t->merge_rank, (uint64_t)n))
        return nomem();
    char *cat = spud_malloc(t->max_token_len * 2 + 2);
    if (!cat) return nomem();
    for (int32_t r = 0; r < n; r++) {
        spud_str m = kv->arr_strs[r];
        /* "A B": the first space after position 0 splits (llama.cpp's rule) */
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', (size_t)m.len - 1) : NULL;
        char b[96];
        if (!sp) {
            spud_free(cat);
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.merges[%d] = '%s' is not two tokens",
                               r, show(m, b, sizeof b));
        }
        size_t la = (size_t)(sp - m.ptr), lb = (size_t)m.len - la - 1;
        int32_t a = text_lookup(t, m.ptr, la), c = text_lookup(t, sp + 1, lb);
        if (a < 0 || c < 0) {
            spud_free(cat);
            return spud_errorf(SPUD_ERR_FORMAT,
                               "tokenizer.ggml.merges[%d] = '%s' names a token not in the vocabulary",
                               r, show(m, b, sizeof b));
        }
        t->merge_a[r] = a;
        t->merge_b[r] = c;
        t->merge_res[r] = -1;
        if (la + lb <= t->max_token_len) {
            memcpy(cat, m.ptr, la);
            memcpy(cat + la, sp + 1, lb);
            t->merge_res[r] = text_lookup(t, cat, la + lb);
        }
        /* a repeated pair keeps its first (best) rank */
        (void)u64map_put(&t->merge_rank, (uint64_t)(uint32_t)a << 32 | (uint32_t)c, r);
    }
    spud_free(cat);
    return SPUD_OK;
}

static spud_status load_body(const spud_gguf *g, spud_tokenizer *t) {
    spud_status st;
    spud_str model, pre = {"", 0};
    char b[96];

    st = spud_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (st == SPUD_ERR_NOT_FOUND)
        return spud_errorf(SPUD_ERR_FORMAT, "no tokenizer.ggml.model in the file");
    if (st) return st;
    if (spud_str_eq(model, "gpt2")) {
        t->kind = TOK_BPE;
    } else if (spud_str_eq(model, "llama")) {
        t->kind = TOK_SPM;
    } else {
        return spud_errorf(SPUD_ERR_UNSUPPORTED,
                           "tokenizer model '%s' is not supported (supported: gpt2, llama)",
                           show(model, b, sizeof b));
    }
    strcpy(t->model_name, t->kind == TOK_BPE ? "gpt2" : "llama");
    st = spud_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    if (st && st != SPUD_ERR_NOT_FOUND) return st;

    /* tokens, types, scores */
    const spud_gguf_kv *tokens, *types = NULL, *scores = NULL;
    st = spud_gguf_get_arr(g, "tokenizer.ggml.tokens", SPUD_GGUF_STRING, &tokens);
    if (st == SPUD_ERR_NOT_FOUND) return spud_errorf(SPUD_ERR_FORMAT, "no tokenizer.ggml.tokens in the file");
    if (st) return st;
    if (tokens->arr_n == 0 || tokens->arr_n >= INT32_MAX)
        return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.tokens has %llu tokens",
                           (unsigned long long)tokens->arr_n);
    t->n_vocab = (int32_t)tokens->arr_n;
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (kv) {
        if (kv->type != SPUD_GGUF_ARRAY || !is_int_type(kv->arr_type))
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.token_type is not an integer array");
        if (kv->arr_n != tokens->arr_n)
            return spud_errorf(SPUD_ERR_FORMAT,
                               "tokenizer.ggml.token_type has %llu entries for %d tokens",
                               (unsigned long long)kv->arr_n, t->n_vocab);
        types = kv;
    }
    kv = spud_gguf_find_kv(g, "tokenizer.ggml.scores");
    if (kv) {
        if (kv->type != SPUD_GGUF_ARRAY || kv->arr_type != SPUD_GGUF_FLOAT32)
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.scores is not a float32 array");
        if (kv->arr_n != tokens->arr_n)
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.scores has %llu entries for %d tokens",
                               (unsigned long long)kv->arr_n, t->n_vocab);
        scores = kv;
    }

    size_t n = (size_t)t->n_vocab;
    t->text = spud_malloc(n * sizeof *t->text);
    t->attr = spud_malloc(n * sizeof *t->attr);
    if (!t->text || !t->attr) return nomem();
    if (t->kind == TOK_SPM) {
        t->score = spud_calloc(n, sizeof *t->score);
        if (!t->score) return nomem();
        if (scores) memcpy(t->score, scores->arr_data, n * sizeof(float)); /* little-endian host */
    }
    size_t n_empty = 0;
    for (size_t i = 0; i < n; i++) n_empty += tokens->arr_strs[i].len == 0;
    if (n_empty) { /* llama.cpp names empty tokens "[EMPTY_<id>]" */
        t->names_blob = spud_malloc(n_empty * 24);
        if (!t->names_blob) return nomem();
    }
    size_t blob_off = 0;
    static const uint16_t type_attr[7] = {0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL,
                                          ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE};
    for (size_t i = 0; i < n; i++) {
        spud_str s = tokens->arr_strs[i];
        if (s.len == 0) {
            int k = snprintf(t->names_blob + blob_off, 24, "[EMPTY_%zu]", i);
            s = (spud_str){t->names_blob + blob_off, (uint64_t)k};
            blob_off += 24;
        }
        t->text[i] = s;
        if (s.len > t->max_token_len) t->max_token_len = (size_t)s.len;
        t->attr[i] = ATTR_NORMAL;
        if (types) {
            int64_t ty = arr_int(types, i);
            if (ty < 0 || ty > 6)
                return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.ggml.token_type[%zu] = %lld is not a token type",
                                   i, (long long)ty);
            t->attr[i] = type_attr[ty];
        }
        if (t->kind == TOK_SPM && (t->attr[i] & ATTR_BYTE)) {
            const char *p = s.ptr;
            bool ok = s.len == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>' &&
                      strchr("0123456789ABCDEFabcdef", p[3]) && strchr("0123456789ABCDEFabcdef", p[4]) &&
                      p[3] && p[4];
            if (!ok)
                return spud_errorf(SPUD_ERR_FORMAT, "byte token %zu is '%s', not <0xAB>", i,
                                   show(s, b, sizeof b));
        }
    }
    if ((st = text_map_build(t))) return st;
    t->spm_split = t->kind == TOK_SPM;
    for (size_t i = 0; i < n && t->spm_split; i++) {
        const char *p = t->text[i].ptr;
        for (size_t k = 1; k + 3 <= t->text[i].len; k++) {
            if (memcmp(p + k, SPM_SPACE, 3) == 0 && !(k >= 3 && memcmp(p + k - 3, SPM_SPACE, 3) == 0)) {
                t->spm_split = false;
                break;
            }
        }
    }

    /* flags and ids: defaults per model, then the metadata */
    t->unk = -1;
    if (t->kind == TOK_SPM) {
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_space_prefix = true;
        t->add_bos = true;
        snprintf(t->pre_name, sizeof t->pre_name, "default");
    } else {
        t->bos = 11, t->eos = 11;
        if (pre.len == 0) {
            spud_log(SPUD_LOG_WARN, "tokenizer: no tokenizer.ggml.pre; using the 'default' pre-tokenizer");
            pre = (spud_str){"default", 7};
        }
        const pre_def *d = pre_find(pre);
        if (!d)
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "pre-tokenizer '%s' is not supported",
                               show(pre, b, sizeof b));
        show(pre, t->pre_name, sizeof t->pre_name);
        t->ignore_merges = d->ignore_merges;
        t->add_bos = d->add_bos;
        if (d->no_bos) t->bos = -1;
        if ((st = compile_pre(t, d))) return st;
    }
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    if ((st = read_id(g, t, "bos_token_id", true, &t->bos))) return st;
    if ((st = read_id(g, t, "eos_token_id", true, &t->eos))) return st;
    if ((st = read_id(g, t, "unknown_token_id", true, &t->unk))) return st;
    int32_t unused = -1;
    static const char *const lax[] = {"seperator_token_id", "padding_token_id", "mask_token_id"};
    for (size_t i = 0; i < 3; i++) {
        if ((st = read_id(g, t, lax[i], false, &unused))) return st;
    }
    if ((st = read_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix))) return st;

    if ((st = detect_special(g, t))) return st;
    set_strip_attrs(g, t);

    /* byte tables */
    for (int c = 0; c < 256; c++) {
        char s[8];
        t->single_tok[c] = text_lookup(t, (char[1]){(char)c}, 1);
        if (t->kind == TOK_BPE) {
            t->byte_tok[c] = text_lookup(t, s, utf8_put(gpt2_byte_cp((uint8_t)c), s));
        } else {
            snprintf(s, sizeof s, "<0x%02X>", c);
            int32_t id = text_lookup_c(t, s);
            if (id < 0) id = t->single_tok[c];
            t->byte_tok[c] = id >= 0 ? id : t->unk;
        }
    }
    if (t->kind == TOK_BPE && (st = load_merges(g, t))) return st;
    if ((st = build_special_trie(t))) return st;
    return build_pieces(t);
}

spud_status spud_tok_load(const spud_gguf *g, spud_tokenizer **out) {
    *out = NULL;
    if (!g) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_load: no GGUF");
    spud_tokenizer *t = spud_calloc(1, sizeof *t);
    if (!t) return nomem();
    t->bos = t->eos = t->eot = t->eom = t->unk = -1;
    spud_status st = load_body(g, t);
    if (st) {
        spud_tok_free(t);
        return spud_error_wrap(st, "tokenizer");
    }
    *out = t;
    return SPUD_OK;
}

void spud_tok_free(spud_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < MAX_REGEX; i++) pcre2_code_free(t->rx[i]);
    pcre2_general_context_free(t->gctx);
    spud_free(t->text);
    spud_free(t->attr);
    spud_free(t->score);
    spud_free(t->names_blob);
    spud_free(t->slots);
    spud_free(t->merge_a);
    spud_free(t->merge_b);
    spud_free(t->merge_res);
    u64map_free(&t->merge_rank);
    u64map_free(&t->trie);
    spud_free(t->node_id);
    spud_free(t->node_prio);
    spud_free(t->piece_off);
    spud_free(t->piece_blob);
    spud_free(t);
}

int32_t spud_tok_n_vocab(const spud_tokenizer *t) { return t->n_vocab; }
int32_t spud_tok_bos(const spud_tokenizer *t) { return t->bos; }
int32_t spud_tok_eos(const spud_tokenizer *t) { return t->eos; }
bool spud_tok_add_bos(const spud_tokenizer *t) { return t->add_bos; }
bool spud_tok_add_eos(const spud_tokenizer *t) { return t->add_eos; }
const char *spud_tok_model(const spud_tokenizer *t) { return t->model_name; }
const char *spud_tok_pre(const spud_tokenizer *t) { return t->pre_name; }
size_t spud_tok_max_piece_len(const spud_tokenizer *t) { return t->max_piece_len; }

bool spud_tok_is_eog(const spud_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & ATTR_EOG);
}

bool spud_tok_is_control(const spud_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & ATTR_CONTROL);
}

const char *spud_tok_text(const spud_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = (size_t)t->text[id].len;
    return t->text[id].ptr;
}

/* ---- encoding ---- */

typedef struct {
    int32_t prev, next, id; /* prev == SYM_DEAD: merged into its left neighbour */
} bpe_sym;
#define SYM_DEAD (-2)

typedef struct {
    uint32_t off, n;
    int32_t prev, next;
} spm_sym;

typedef struct {
    float score;
    uint32_t left, size;
} spm_bigram;

/* Per-call scratch; grows geometrically and is reused across words. */
typedef struct {
    int32_t *ids;
    size_t n_ids, cap_ids;
    uint8_t *buf; /* sanitized (BPE) or escaped (SPM) fragment */
    size_t cap_buf;
    size_t *chunks, *chunks2; /* (start, length) pairs */
    size_t cap_chunks, cap_chunks2;
    bpe_sym *sym;
    size_t cap_sym;
    spm_sym *ssym;
    size_t cap_ssym;
    uint64_t *heap; /* BPE: rank << 32 | left, min-heap */
    size_t cap_heap;
    spm_bigram *sheap;
    size_t cap_sheap;
    char *enc; /* a word in GPT-2 form, for whole-word lookups */
    size_t cap_enc;
    pcre2_match_data *md;
} scratch;

static void scratch_free(scratch *s) {
    spud_free(s->ids);
    spud_free(s->buf);
    spud_free(s->chunks);
    spud_free(s->chunks2);
    spud_free(s->sym);
    spud_free(s->ssym);
    spud_free(s->heap);
    spud_free(s->sheap);
    spud_free(s->enc);
    pcre2_match_data_free(s->md);
}

static bool push_id(scratch *s, int32_t id) {
    if (s->n_ids == s->cap_ids && !grow(&s->ids, &s->cap_ids, s->n_ids + 1, sizeof *s->ids))
        return false;
    s->ids[s->n_ids++] = id;
    return true;
}

/* -- BPE -- */

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (v <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

static bool bpe_try_pair(const spud_tokenizer *t, scratch *s, size_t *nh, int32_t left) {
    const bpe_sym *l = &s->sym[left];
    if (l->next < 0 || l->id < 0 || s->sym[l->next].id < 0) return true;
    int32_t r = u64map_get(&t->merge_rank, (uint64_t)(uint32_t)l->id << 32 | (uint32_t)s->sym[l->next].id);
    if (r < 0) return true;
    if (*nh == s->cap_heap && !grow(&s->heap, &s->cap_heap, *nh + 1, sizeof *s->heap)) return false;
    heap_push(s->heap, nh, (uint64_t)(uint32_t)r << 32 | (uint32_t)left);
    return true;
}

/* A symbol that is not a token: llama.cpp emits the 1-byte tokens of the bytes
 * of its GPT-2 form, skipping bytes that are not tokens. */
static bool bpe_emit_fallback(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char e[4];
        size_t k = utf8_put(gpt2_byte_cp(w[i]), e);
        for (size_t j = 0; j < k; j++) {
            int32_t id = t->single_tok[(uint8_t)e[j]];
            if (id >= 0 && !push_id(s, id)) return false;
        }
    }
    return true;
}

/* Merge one pre-tokenized word (raw bytes) by rank: a min-heap of candidate
 * pairs keyed (rank, left position), each checked against the current
 * symbols when popped, so a word of n bytes takes O(n log n). */
static bool bpe_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (t->ignore_merges && n <= t->max_token_len) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++) k += utf8_put(gpt2_byte_cp(w[i]), s->enc + k);
        int32_t id = text_lookup(t, s->enc, k);
        if (id >= 0) return push_id(s, id);
    }
    if (n == 1) {
        if (t->byte_tok[w[0]] >= 0) return push_id(s, t->byte_tok[w[0]]);
        return bpe_emit_fallback(t, s, w, 1);
    }
    if (n > INT32_MAX - 1) return false;
    if (!grow(&s->sym, &s->cap_sym, n, sizeof *s->sym)) return false;
    bpe_sym *sym = s->sym;
    for (size_t i = 0; i < n; i++) {
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
        sym[i].id = t->byte_tok[w[i]];
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (!bpe_try_pair(t, s, &nh, (int32_t)i)) return false;
    }
    while (nh) {
        uint64_t top = heap_pop(s->heap, &nh);
        int32_t rank = (int32_t)(top >> 32), left = (int32_t)(uint32_t)top;
        bpe_sym *l = &sym[left];
        /* stale if either side changed since the pair was queued */
        if (l->prev == SYM_DEAD || l->id != t->merge_a[rank] || l->next < 0 ||
            sym[l->next].id != t->merge_b[rank])
            continue;
        bpe_sym *r = &sym[l->next];
        l->id = t->merge_res[rank];
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = left;
        r->prev = SYM_DEAD;
        if (l->prev >= 0 && !bpe_try_pair(t, s, &nh, l->prev)) return false;
        if (!bpe_try_pair(t, s, &nh, left)) return false;
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        if (sym[i].id >= 0) {
            if (!push_id(s, sym[i].id)) return false;
        } else {
            size_t end = sym[i].next >= 0 ? (size_t)sym[i].next : n;
            if (!bpe_emit_fallback(t, s, w + i, end - (size_t)i)) return false;
        }
    }
    return true;
}

static bool is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Split [off, off+n) of s->buf by regex i, appending (start, len) pairs. */
static spud_status split_chunk(const spud_tokenizer *t, scratch *s, int i, size_t off, size_t n,
                               size_t *n_out) {
    const uint8_t *subj = s->buf + off;
#define EMIT(a, b)                                                                                 \
    do {                                                                                           \
        if (!grow(&s->chunks2, &s->cap_chunks2, *n_out + 2, sizeof *s->chunks2)) return nomem();  \
        s->chunks2[(*n_out)++] = off + (a);                                                        \
        s->chunks2[(*n_out)++] = (b) - (a);                                                        \
    } while (0)
    if (t->rx_trailing_ws[i]) {
        /* \s+$: the run of white space that ends the piece */
        size_t p = n;
        while (p > 0) {
            size_t q = p - 1;
            while (q > 0 && (subj[q] & 0xC0) == 0x80) q--;
            uint32_t cp;
            size_t skip;
            if (!utf8_next(subj + q, p - q, &cp, &skip) || !is_white_space(cp)) break;
            p = q;
        }
        if (p > 0) EMIT(0, p);
        if (p < n) EMIT(p, n);
        return SPUD_OK;
    }
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = pcre2_match(t->rx[i], subj, n, pos, PCRE2_NO_UTF_CHECK, s->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(t->rx[i], subj, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, s->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return spud_errorf(rc == PCRE2_ERROR_NOMEMORY ? SPUD_ERR_NOMEM : SPUD_ERR_RANGE,
                               "pre-tokenizer regex failed on a piece of %zu bytes: %s", n,
                               (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t a = ov[0], b = ov[1];
        if (b == a) { /* empty match: step over one character */
            pos = a + 1;
            while (pos < n && (subj[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (a > last) EMIT(last, a);
        EMIT(a, b);
        pos = last = b;
    }
    if (last < n) EMIT(last, n);
#undef EMIT
    return SPUD_OK;
}

/* Byte-level BPE on one fragment of raw text (no special tokens inside). */
static spud_status bpe_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *text, size_t len) {
    /* sanitize: invalid UTF-8 -> U+FFFD, so PCRE2 can skip its UTF check */
    uint64_t need;
    if (!spud_mul_ok(len, 3, &need) || need > SIZE_MAX || !grow(&s->buf, &s->cap_buf, (size_t)need, 1))
        return nomem();
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t skip, k = utf8_next(text + i, len - i, &cp, &skip);
        if (k) {
            memcpy(s->buf + n, text + i, k);
            n += k, i += k;
        } else {
            memcpy(s->buf + n, "\xEF\xBF\xBD", 3);
            n += 3, i += skip;
        }
    }
    if (!s->md) {
        s->md = pcre2_match_data_create(1, t->gctx);
        if (!s->md) return nomem();
    }
    /* chunks := [(0, n)], then each regex splits every chunk */
    size_t n_chunks = 0;
    if (!grow(&s->chunks, &s->cap_chunks, 2, sizeof *s->chunks)) return nomem();
    s->chunks[n_chunks++] = 0;
    s->chunks[n_chunks++] = n;
    for (int i = 0; i < t->n_rx; i++) {
        size_t n_out = 0;
        for (size_t c = 0; c < n_chunks; c += 2) {
            spud_status st = split_chunk(t, s, i, s->chunks[c], s->chunks[c + 1], &n_out);
            if (st) return st;
        }
        size_t *tmp = s->chunks, tcap = s->cap_chunks;
        s->chunks = s->chunks2, s->cap_chunks = s->cap_chunks2;
        s->chunks2 = tmp, s->cap_chunks2 = tcap;
        n_chunks = n_out;
    }
    for (size_t c = 0; c < n_chunks; c += 2) {
        if (s->chunks[c + 1] && !bpe_word(t, s, s->buf + s->chunks[c], s->chunks[c + 1])) return nomem();
    }
    return SPUD_OK;
}

/* -- SentencePiece -- */

static bool spm_before(const spm_bigram *a, const spm_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void sheap_push(spm_bigram *h, size_t *n, spm_bigram v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!spm_before(&v, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static spm_bigram sheap_pop(spm_bigram *h, size_t *n) {
    spm_bigram top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && spm_before(&h[c + 1], &h[c])) c++;
        if (!spm_before(&h[c], &v)) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

static bool spm_try_bigram(const spud_tokenizer *t, scratch *s, size_t *nh, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return true;
    const spm_sym *l = &s->ssym[left], *r = &s->ssym[right];
    size_t size = (size_t)l->n + r->n;
    int32_t id = text_lookup(t, s->buf + l->off, size);
    if (id < 0) return true;
    if (*nh == s->cap_sheap && !grow(&s->sheap, &s->cap_sheap, *nh + 1, sizeof *s->sheap)) return false;
    sheap_push(s->sheap, nh, (spm_bigram){t->score[id], (uint32_t)left, (uint32_t)size});
    return true;
}

/* llama.cpp's SPM: escape spaces, split into UTF-8 characters (by lead byte,
 * unchecked), merge the best-scoring adjacent pair that forms a token until
 * none is left, then byte-fall-back whatever is not a token. */
static spud_status spm_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *text, size_t len,
                                bool prefix) {
    uint64_t need;
    if (!spud_mul_ok(len + 1, 3, &need) || need > UINT32_MAX)
        return spud_errorf(SPUD_ERR_RANGE, "text of %zu bytes is too long to tokenize", len);
    if (!grow(&s->buf, &s->cap_buf, (size_t)need, 1)) return nomem();
    size_t n = 0;
    if (prefix) memcpy(s->buf, SPM_SPACE, 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s->buf + n, SPM_SPACE, 3);
            n += 3;
        } else {
            s->buf[n++] = text[i];
        }
    }
    if (n == 0) return SPUD_OK;
    if (!grow(&s->ssym, &s->cap_ssym, n, sizeof *s->ssym)) return nomem();
    spm_sym *sym = s->ssym;
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t k = utf8_lead_len(s->buf[off]);
        if (k > n - off) k = n - off;
        sym[n_sym] = (spm_sym){(uint32_t)off, (uint32_t)k, n_sym - 1, off + k < n ? n_sym + 1 : -1};
        n_sym++;
        off += k;
    }
    /* Merge segment by segment. A segment starts at a U+2581 symbol that does
     * not follow another U+2581; when no token has such a U+2581 inside
     * (t->spm_split), no merge can cross that point, so merging the segments
     * one by one pops the same pairs in the same order as one queue over the
     * whole text would, with small, cache-friendly queues. */
    for (int32_t seg = 0, end; seg < n_sym; seg = end) {
        end = t->spm_split ? seg + 1 : n_sym;
        while (end < n_sym) {
            const uint8_t *p = s->buf + sym[end].off;
            if (sym[end].n == 3 && memcmp(p, SPM_SPACE, 3) == 0 &&
                !(sym[end].off >= 3 && memcmp(p - 3, SPM_SPACE, 3) == 0))
                break;
            end++;
        }
        sym[seg].prev = -1;
        sym[end - 1].next = -1;
        size_t nh = 0;
        for (int32_t i = seg + 1; i < end; i++) {
            if (!spm_try_bigram(t, s, &nh, i - 1, i)) return nomem();
        }
        while (nh) {
            spm_bigram bg = sheap_pop(s->sheap, &nh);
            spm_sym *l = &sym[bg.left];
            if (l->n == 0 || l->next < 0) continue;
            spm_sym *r = &sym[l->next];
            if ((size_t)l->n + r->n != bg.size) continue; /* a side changed since it was queued */
            l->n += r->n;
            r->n = 0;
            l->next = r->next;
            if (r->next >= 0) sym[r->next].prev = (int32_t)bg.left;
            if (!spm_try_bigram(t, s, &nh, l->prev, (int32_t)bg.left)) return nomem();
            if (!spm_try_bigram(t, s, &nh, (int32_t)bg.left, l->next)) return nomem();
        }
        for (int32_t i = seg; i >= 0; i = sym[i].next) {
            int32_t id = text_lookup(t, s->buf + sym[i].off, sym[i].n);
            if (id >= 0) {
                if (!push_id(s, id)) return nomem();
                continue;
            }
            for (uint32_t j = 0; j < sym[i].n; j++) {
                id = t->byte_tok[s->buf[sym[i].off + j]];
                if (id >= 0 && !push_id(s, id)) return nomem();
            }
        }
    }
    return SPUD_OK;
}

/* -- special-token partition -- */

typedef struct {
    size_t pos;
    uint32_t prio, len;
    int32_t id;
} occurrence;

static int cmp_occ_prio(const void *a, const void *b) {
    const occurrence *x = a, *y = b;
    if (x->prio != y->prio) return x->prio < y->prio ? -1 : 1;
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

static int cmp_occ_pos(const void *a, const void *b) {
    const occurrence *x = a, *y = b;
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

static bool is_c_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static spud_status raw_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n,
                                bool *prev_special) {
    spud_status st = SPUD_OK;
    if (n == 0) return SPUD_OK;
    if (t->kind == TOK_BPE) {
        st = bpe_fragment(t, s, p, n);
    } else {
        st = spm_fragment(t, s, p, n, t->add_space_prefix && *prev_special);
    }
    *prev_special = false;
    return st;
}

/* Cut special tokens out of the text the way llama.cpp's
 * tokenizer_st_partition does: tokens in order (longest text first), each
 * taking its leftmost non-overlapping occurrences in what is still raw text;
 * then tokenize the raw text between them. Occurrences are found in one pass
 * over a trie instead of one search per token. */
static spud_status encode_partitioned(const spud_tokenizer *t, scratch *s, const uint8_t *text, size_t len,
                                      bool parse_special) {
    uint16_t active = parse_special ? (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) : ATTR_USER_DEFINED;
    uint16_t skip = parse_special ? 0 : (ATTR_CONTROL | ATTR_UNKNOWN);
    occurrence *occ = NULL;
    size_t n_occ = 0, cap_occ = 0;
    uint8_t *used = NULL;
    spud_status st = SPUD_OK;
    bool prev_special = true;

    if (t->n_nodes && (parse_special || t->has_user_defined)) {
        for (size_t i = 0; i < len; i++) {
            int32_t node = 0;
            for (size_t j = i; j < len; j++) {
                node = u64map_get(&t->trie, (uint64_t)node << 8 | text[j]);
                if (node < 0) break;
                int32_t id = t->node_id[node];
                if (id < 0 || !(t->attr[id] & active) || (t->attr[id] & skip)) continue;
                if (!grow(&occ, &cap_occ, n_occ + 1, sizeof *occ)) goto oom;
                occ[n_occ++] = (occurrence){i, t->node_prio[node], (uint32_t)(j + 1 - i), id};
            }
        }
    }
    if (n_occ == 0) {
        st = raw_fragment(t, s, text, len, &prev_special);
        goto done;
    }
    used = spud_calloc(len, 1);
    if (!used) goto oom;
    qsort(occ, n_occ, sizeof *occ, cmp_occ_prio);
    size_t n_acc = 0;
    for (size_t k = 0; k < n_occ; k++) {
        occurrence o = occ[k];
        bool free_span = true;
        for (size_t j = o.pos; j < o.pos + o.len; j++) {
            if (used[j]) {
                free_span = false;
                break;
            }
        }
        if (!free_span) continue;
        memset(used + o.pos, 1, o.len);
        if (t->attr[o.id] & ATTR_LSTRIP) {
            for (size_t j = o.pos; j > 0 && !used[j - 1] && is_c_space(text[j - 1]); j--) used[j - 1] = 1;
        }
        if (t->attr[o.id] & ATTR_RSTRIP) {
            for (size_t j = o.pos + o.len; j < len && !used[j] && is_c_space(text[j]); j++) used[j] = 1;
        }
        occ[n_acc++] = o;
    }
    qsort(occ, n_acc, sizeof *occ, cmp_occ_pos);
    size_t cur = 0;
    for (size_t k = 0; k <= n_acc; k++) {
        size_t end = k < n_acc ? occ[k].pos : len;
        /* raw text between tokens, without the whitespace they stripped */
        size_t a = cur, b = end;
        while (a < b && used[a]) a++;
        while (b > a && used[b - 1]) b--;
        if ((st = raw_fragment(t, s, text + a, b - a, &prev_special))) goto done;
        if (k < n_acc) {
            if (!push_id(s, occ[k].id)) goto oom;
            prev_special = true;
            cur = occ[k].pos + occ[k].len;
        }
    }
    goto done;
oom:
    st = nomem();
done:
    spud_free(occ);
    spud_free(used);
    return st;
}

spud_status spud_tok_encode(const spud_tokenizer *t, const char *text, size_t len, bool add_special,
                            bool parse_special, int32_t **ids, size_t *n_ids) {
    scratch s;
    spud_status st = SPUD_OK;
    *ids = NULL;
    *n_ids = 0;
    if (!t || (!text && len)) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_encode: no tokenizer or text");
    memset(&s, 0, sizeof s);
    if (!grow(&s.ids, &s.cap_ids, 16 + len / 4, sizeof *s.ids)) goto oom;
    if (t->ignore_merges && !grow(&s.enc, &s.cap_enc, 2 * t->max_token_len + 8, 1)) goto oom;
    if (add_special && t->add_bos && t->bos >= 0 && !push_id(&s, t->bos)) goto oom;
    if ((st = encode_partitioned(t, &s, (const uint8_t *)text, len, parse_special))) goto fail;
    if (add_special && t->add_eos && t->eos >= 0 && !push_id(&s, t->eos)) goto oom;
    *ids = s.ids;
    *n_ids = s.n_ids;
    s.ids = NULL;
    scratch_free(&s);
    return SPUD_OK;
oom:
    st = nomem();
fail:
    scratch_free(&s);
    return st;
}

/* ---- decoding ---- */

size_t spud_tok_piece(const spud_tokenizer *t, int32_t id, bool render_special, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    if (!render_special && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN))) return 0;
    size_t n = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    if (buf && cap) memcpy(buf, t->piece_blob + t->piece_off[id], n < cap ? n : cap);
    return n;
}

void spud_detok_init(spud_detok *d) { memset(d, 0, sizeof *d); }

typedef struct {
    char *out;
    size_t cap, n;
    bool full;
} sink;

static void sink_put(sink *k, const void *p, size_t n) {
    if (k->full || k->n + n > k->cap) {
        k->full = true; /* drop the rest: never half a character */
        return;
    }
    memcpy(k->out + k->n, p, n);
    k->n += n;
}

/* Valid range of the byte after lead b (the later ones are always 80..BF);
 * need = continuation bytes; false if b cannot start a sequence. */
static bool utf8_lead(uint8_t b, int *need, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) *need = 1;
    else if (b == 0xE0) *need = 2, *lo = 0xA0;
    else if (b == 0xED) *need = 2, *hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF) *need = 2;
    else if (b == 0xF0) *need = 3, *lo = 0x90;
    else if (b == 0xF4) *need = 3, *hi = 0x8F;
    else if (b >= 0xF1 && b <= 0xF3) *need = 3;
    else return false;
    return true;
}

size_t spud_detok_push(spud_detok *d, const spud_tokenizer *t, int32_t id, char *out, size_t cap) {
    static const char fffd[3] = {'\xEF', '\xBF', '\xBD'};
    sink k = {out, cap, 0, false};
    const uint8_t *piece = NULL;
    size_t np = (size_t)d->n_pending, n = 0;
    if (t && id >= 0 && id < t->n_vocab && !(t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN))) {
        piece = (const uint8_t *)t->piece_blob + t->piece_off[id];
        n = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    }
    size_t total = np + n;
#define AT(i) ((i) < np ? (uint8_t)d->pending[i] : piece[(i) - np])
    uint8_t held[4];
    size_t n_held = 0;
    for (size_t i = 0; i < total;) {
        uint8_t b = AT(i);
        if (b < 0x80) {
            sink_put(&k, &b, 1);
            i++;
            continue;
        }
        int need;
        uint8_t lo, hi;
        if (!utf8_lead(b, &need, &lo, &hi)) {
            sink_put(&k, fffd, 3);
            i++;
            continue;
        }
        size_t j = 1;
        for (; j <= (size_t)need && i + j < total; j++) {
            uint8_t c = AT(i + j);
            if (j == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
        }
        if (j > (size_t)need) { /* complete */
            uint8_t ch[4];
            for (size_t q = 0; q < j; q++) ch[q] = AT(i + q);
            sink_put(&k, ch, j);
            i += j;
        } else if (i + j == total) { /* a valid prefix so far: wait for more */
            for (size_t q = 0; q < j; q++) held[n_held++] = AT(i + q);
            i += j;
        } else { /* maximal invalid subpart i..i+j-1 */
            sink_put(&k, fffd, 3);
            i += j;
        }
    }
#undef AT
    memcpy(d->pending, held, n_held);
    d->n_pending = (int)n_held;
    return k.n;
}

size_t spud_detok_flush(spud_detok *d, char *out, size_t cap) {
    size_t n = 0;
    if (d->n_pending > 0 && cap >= 3) {
        memcpy(out, "\xEF\xBF\xBD", 3);
        n = 3;
    }
    d->n_pending = 0;
    return n;
}
