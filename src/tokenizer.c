/* tokenizer.c: byte-level BPE ("gpt2"), SentencePiece-style BPE ("llama")
 * and WordPiece ("bert") tokenizers loaded from GGUF metadata, so that ids
 * match the original tokenizers (Hugging Face tokenizers, tiktoken) token
 * for token.
 *
 * Layout: helpers and hash maps; the pre-tokenizer table and its hand-written
 * matchers; loading (metadata, token attributes, special tokens, merges,
 * piece cache); encoding (special-token split, UTF-8 repair, normalization,
 * pre-tokenization, BPE with a word cache, SentencePiece, WordPiece);
 * decoding (pieces, whole sequences, streaming UTF-8).
 *
 * Semantics, and where they differ from llama.cpp (c392e50), whose GGUF
 * layout and test vectors this follows:
 * - The pre-tokenizers of the common vocabularies (GPT-2, Llama 3 / cl100k,
 *   Qwen2, o200k / GPT-4o, DeepSeek V3, Tekken) are hand-written matchers
 *   that implement their regexes exactly (leftmost-first alternation with
 *   backtracking), over Unicode classes generated from current Unicode data
 *   (tokenizer_unicode.h); \s is Unicode White_Space. The rarer ones run
 *   their regexes on PCRE2.
 * - Special tokens are cut out leftmost-longest, as Hugging Face tokenizers
 *   and tiktoken do (llama.cpp takes the longest token text first).
 *   User-defined tokens (added tokens that are not special) are cut out
 *   everywhere but in untrusted bytes when the caller marks them structural;
 *   control tokens only when the caller asks to parse special tokens (and,
 *   masked, only in trusted bytes).
 * - Invalid UTF-8 becomes U+FFFD, one per maximal invalid subpart (what a
 *   UTF-8 decoder in replacement mode hands the reference tokenizers).
 * - SentencePiece vocabularies that carry merges (converted from a Hugging
 *   Face tokenizer.json) are merged by merge rank, as Hugging Face's BPE
 *   model does; without merges, by token score, as llama.cpp does.
 * - Qwen2-family vocabularies are NFC-normalized first, as their
 *   tokenizer.json asks, on tables of the same Unicode version as the
 *   classes (utf8proc, older, serves only WordPiece's BERT normalizer).
 * - Corrupt metadata (ids out of range, bad merges, duplicate texts) is an
 *   error, not a warning or an assertion.
 */
#include "tokenizer.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include "tokenizer_unicode.h"

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

typedef enum { TOK_BPE, TOK_SPM, TOK_WPM } tok_kind;

#define MAX_SPLIT 6

/* How one pre-tokenizer step finds its pieces. */
typedef enum {
    SPLIT_PCRE,        /* a regex, run by PCRE2 */
    SPLIT_TRAILING_WS, /* \s+$ : the white space that ends the piece */
    SPLIT_GPT2,        /* GPT-2's regex */
    SPLIT_LLAMA3,      /* Llama 3 / cl100k (digits 3) and Qwen2 (digits 1) */
    SPLIT_O200K,       /* o200k / GPT-4o (digits 3, contractions), Tekken (digits 1, none) */
    SPLIT_DIGITS,      /* \p{N}{1,3} */
    SPLIT_CJK_KANA,    /* DeepSeek V3's [\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+ */
    SPLIT_DSV3,        /* DeepSeek V3's main regex */
} split_kind;

typedef struct {
    split_kind kind;
    int max_digits;    /* LLAMA3, O200K: \p{N}{1,max_digits} */
    bool contractions; /* O200K: the optional (?i:'s|'t|...) suffix */
    pcre2_code *rx;    /* PCRE */
} splitter;

/* Open-addressing map from a 64-bit key to an int32 value (keys != UINT64_MAX). */
typedef struct {
    uint64_t key;
    int32_t val;
} u64slot;

typedef struct {
    u64slot *slots; /* key and value side by side: one cache miss per probe */
    uint64_t mask;  /* capacity - 1 */
} u64map;

/* Open-addressing map from a byte string to an id: slot = (hash high bits, id). */
typedef struct {
    uint32_t hash;
    int32_t id; /* -1: empty */
} text_slot;

struct spud_tokenizer {
    tok_kind kind;
    int32_t n_vocab;
    spud_str *text;   /* (n_vocab) token texts, into the GGUF or into names_blob */
    uint16_t *attr;   /* (n_vocab) ATTR_* bits */
    float *score;     /* (n_vocab) SentencePiece scores; NULL otherwise */
    char *names_blob; /* "[EMPTY_i]" texts that replace empty tokens */
    size_t max_token_len;

    text_slot *slots; /* token text -> id */
    uint64_t slot_mask;
    text_slot *raw_slots; /* BPE: decoded bytes of a normal token -> id (whole-word lookups) */
    uint64_t raw_mask;

    /* merges (byte-level BPE; SentencePiece when the file has them) */
    int32_t n_merges;
    int32_t *merge_a, *merge_b, *merge_res; /* (n_merges) parts and result id (-1: not a token) */
    u64map merge_rank;                      /* (a << 32 | b) -> rank */
    int32_t byte_tok[256];   /* BPE: id of the GPT-2 char of byte b; SPM: <0xAB> byte fallback */
    bool all_byte_toks;      /* SPM: every <0xAB> exists (HF byte_fallback emits them all or <unk>) */
    int32_t single_tok[256]; /* BPE: id of the 1-byte text b (llama.cpp's last resort) */
    int32_t ascii_tok[128];  /* SPM: id of the 1-character text c */
    splitter split[MAX_SPLIT];
    int n_split;
    pcre2_general_context *gctx;
    bool ignore_merges;
    bool nfc;

    /* SentencePiece */
    bool add_space_prefix;
    bool spm_merges;       /* merge by rank (HF BPE) rather than by score */
    uint32_t *glue_before; /* sorted code points x such that some token has x right before U+2581 */
    size_t n_glue;

    int32_t bos, eos, eot, eom, unk, cls, sep;
    bool add_bos, add_eos, add_sep;
    char model_name[8];
    char pre_name[48];

    /* special tokens: a byte trie over the texts of CONTROL, USER_DEFINED and
     * UNKNOWN tokens; node_id[node] = token ending there (-1 none). */
    u64map trie;      /* (node << 8 | byte) -> child node */
    int32_t *node_id; /* (n_nodes) */
    int32_t n_nodes;
    bool first_user[256];    /* byte starts a user-defined token's text */
    bool first_special[256]; /* byte starts any special token's text */
    bool has_user_defined;
    uint64_t serial; /* unique per load in this process (spud_tok_serial) */

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

size_t spud_tok_gpt2_byte_utf8(uint8_t b, char out[2]) { return utf8_put(gpt2_byte_cp(b), out); }

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
 * A pre-tokenizer is a list of steps; each step splits every piece the
 * previous one produced into its matches and the text between them
 * (Hugging Face's Split with "Isolated" behaviour, llama.cpp's regex lists).
 * Steps named "@..." below are hand-written matchers, the rest PCRE2 regexes
 * (\s written out as Unicode White_Space; PCRE2's \s would add U+180E). */
#define WSB "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define RS "[" WSB "]"
#define RNS "[^" WSB "]"

#define RX_TRAILING_WS "@trailing-ws" /* \s+$, a linear scan */
#define RX_GPT2_PCRE "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WSB "\\p{L}\\p{N}]+|" RS "+(?!" RNS ")|" RS "+"
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

/* The hand-written steps, by the regex each one implements:
 *   @gpt2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   @llama3    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *              | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   @qwen2     the same with \p{N} for \p{N}{1,3}
 *   @o200k     [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|...)?
 *              |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|...)?
 *              |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   @tekken    the same without the contraction suffixes and with \p{N}
 *   @digits1   \p{N}            @digits3   \p{N}{1,3}
 *   @cjk-kana  [\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+
 *   @dsv3      [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
 *              | ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (?i:'s) also matches "'S" and "'\u017F" (long s), as Unicode case folding
 * does in tiktoken's and Hugging Face's regex engines. */
typedef struct {
    const char *names; /* '|'-separated tokenizer.ggml.pre values */
    const char *rx[MAX_SPLIT];
    bool ignore_merges, add_bos, no_bos, nfc;
} pre_def;

static const pre_def pre_defs[] = {
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", "@gpt2", "\\p{N}+", "[0-9][0-9][0-9]"}, false, false, false, false},
    {"llama3|llama-v3|llama-bpe|falcon3", {"@llama3"}, true, true, false, false},
    {"dbrx|smaug-bpe", {"@llama3"}, false, false, false, false},
    {"deepseek-llm",
     {"[\\r\\n]", RS "?[" RX_DEEPSEEK_LETTERS "]+",
      RS "?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
      RX_TRAILING_WS, RX_CJK, "\\p{N}+"},
     false, false, false, false},
    {"deepseek-v3", {"@digits3", "@cjk-kana", "@dsv3"}, false, false, false, false},
    {"deepseek-coder", {"[\\r\\n]", RS "?\\p{L}+", RS "?\\p{P}+", RX_CJK, "\\p{N}"}, false, false, false, false},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", "@gpt2", "[0-9][0-9][0-9]"}, false, false, false, false},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", {"@digits1", "@gpt2"},
     false, false, false, false},
    {"gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v1-en|jina-v2-es|jina-v2-de|jina-v2-code|"
     "roberta-bpe|mpt|olmo|jais|gpt-neox",
     {"@gpt2"}, false, false, false, false},
    {"qwen2|deepseek-r1-qwen", {"@qwen2"}, false, false, false, true},
    {"stablelm2|megrez", {"@qwen2"}, false, false, false, false},
    {"gpt-4o", {"@o200k"}, true, false, false, false},
    {"poro-chat|poro|bloom|gpt3-finnish", {RX_PORO}, false, false, false, false},
    {"chatglm-bpe", {"@llama3"}, false, false, true, false},
    {"viking", {RX_PORO, "@digits1"}, false, false, false, false},
    {"tekken", {"@tekken"}, true, true, false, false},
    {"chameleon",
     {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "@digits1",
      "[\\p{P}!-/:-@\\[-`{-~]", "@gpt2"},
     false, true, false, false},
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

/* -- the hand-written matchers; their input is valid UTF-8 -- */

/* The code point at s[i] and its length. */
static inline uint32_t cp_at(const uint8_t *s, size_t i, size_t *len) {
    uint8_t b = s[i];
    if (b < 0x80) {
        *len = 1;
        return b;
    }
    if (b < 0xE0) {
        *len = 2;
        return (uint32_t)(b & 0x1F) << 6 | (s[i + 1] & 0x3Fu);
    }
    if (b < 0xF0) {
        *len = 3;
        return (uint32_t)(b & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3Fu);
    }
    *len = 4;
    return (uint32_t)(b & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
           (s[i + 3] & 0x3Fu);
}

static inline uint8_t flags_at(const uint8_t *s, size_t i, size_t *len) {
    if (s[i] < 0x80) {
        *len = 1;
        return toku_flags(s[i]);
    }
    return toku_flags(cp_at(s, i, len));
}

/* End of the run of characters with any of the flags in mask, from i. */
static size_t run_any(const uint8_t *s, size_t n, size_t i, uint8_t mask) {
    while (i < n) {
        size_t l;
        if (!(flags_at(s, i, &l) & mask)) break;
        i += l;
    }
    return i;
}

/* End of the run of characters with none of the flags in mask, from i. */
static size_t run_none(const uint8_t *s, size_t n, size_t i, uint8_t mask) {
    while (i < n) {
        size_t l;
        if (flags_at(s, i, &l) & mask) break;
        i += l;
    }
    return i;
}

static size_t run_newlines(const uint8_t *s, size_t n, size_t i, bool slash) {
    while (i < n && (s[i] == '\r' || s[i] == '\n' || (slash && s[i] == '/'))) i++;
    return i;
}

/* Length of a contraction at s[i]: 's 't 're 've 'm 'll 'd, case-insensitive
 * (ci, with U+017F as an s) or as written; 0 if none. */
static size_t contraction_at(const uint8_t *s, size_t n, size_t i, bool ci) {
    if (i + 1 >= n || s[i] != '\'') return 0;
    uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (ci) {
        if (a == 0xC5 && b == 0xBF) return 3; /* 'ſ */
        if (a >= 'A' && a <= 'Z') a = (uint8_t)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (uint8_t)(b + 32);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at a white-space character (without the first
 * alternative when !newlines). \s* backtracks to the last newline of the
 * run; \s+(?!\S) gives back the last character unless the text ends. */
static size_t ws_tail(const uint8_t *s, size_t n, size_t i, bool newlines) {
    size_t e = i, last = i, nl_end = 0;
    while (e < n) {
        size_t l;
        uint32_t c = cp_at(s, e, &l);
        if (!(toku_flags(c) & TOKU_WS)) break;
        if (c == '\r' || c == '\n') nl_end = e + l;
        last = e;
        e += l;
    }
    if (newlines && nl_end) return nl_end;
    if (e == n || last == i) return e;
    return last;
}

static size_t digits_at(const uint8_t *s, size_t n, size_t i, int max) {
    for (int k = 0; k < max && i < n; k++) {
        size_t l;
        if (!(flags_at(s, i, &l) & TOKU_N)) break;
        i += l;
    }
    return i;
}

static size_t m_gpt2(const uint8_t *s, size_t n, size_t i) {
    size_t l, k = contraction_at(s, n, i, false);
    if (k) return i + k;
    uint8_t f = flags_at(s, i, &l);
    size_t j = i;
    if (s[i] == ' ' && i + 1 < n) { /* " ?" : the class of the next character decides */
        size_t l2;
        uint8_t f2 = flags_at(s, i + 1, &l2);
        if (!(f2 & TOKU_WS)) j = i + 1, f = f2;
    }
    if (f & TOKU_L) return run_any(s, n, j, TOKU_L);
    if (f & TOKU_N) return run_any(s, n, j, TOKU_N);
    if (!(f & TOKU_WS)) return run_none(s, n, j, TOKU_WS | TOKU_L | TOKU_N);
    return ws_tail(s, n, i, false);
}

static size_t m_llama3(const uint8_t *s, size_t n, size_t i, int max_digits) {
    size_t l, k = contraction_at(s, n, i, true);
    if (k) return i + k;
    uint8_t f = flags_at(s, i, &l);
    if (f & TOKU_L) return run_any(s, n, i, TOKU_L);
    if (s[i] != '\r' && s[i] != '\n' && !(f & TOKU_N) && i + l < n) { /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        size_t l2;
        if (flags_at(s, i + l, &l2) & TOKU_L) return run_any(s, n, i + l, TOKU_L);
    }
    if (f & TOKU_N) return digits_at(s, n, i, max_digits);
    size_t j = s[i] == ' ' ? i + 1 : i, e = run_none(s, n, j, TOKU_WS | TOKU_L | TOKU_N);
    if (e > j) return run_newlines(s, n, e, false);
    return ws_tail(s, n, i, true);
}

/* [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+ from j, with
 * the backtracking of U*: the last position k (from the end of the U run
 * back to j) where a W character starts W+. 0 if none. */
static size_t o200k_lower(const uint8_t *s, size_t n, size_t j) {
    size_t u = run_any(s, n, j, TOKU_UP), l;
    if (u < n && (flags_at(s, u, &l) & TOKU_LO)) return run_any(s, n, u, TOKU_LO);
    for (size_t q = u; q > j;) {
        q--;
        while (q > j && (s[q] & 0xC0) == 0x80) q--;
        if (flags_at(s, q, &l) & TOKU_LO) return q + l; /* later characters are U only */
    }
    return 0;
}

static size_t m_o200k(const uint8_t *s, size_t n, size_t i, int max_digits, bool contractions) {
    size_t l, e;
    uint8_t f = flags_at(s, i, &l);
    bool prefix = s[i] != '\r' && s[i] != '\n' && !(f & (TOKU_L | TOKU_N)) && i + l < n;
    /* first alternative, with then without the optional prefix character */
    if ((prefix && (e = o200k_lower(s, n, i + l))) || (e = o200k_lower(s, n, i)))
        return e + (contractions ? contraction_at(s, n, e, true) : 0);
    /* second alternative: U+ W* */
    for (int pass = prefix ? 0 : 1; pass < 2; pass++) {
        size_t j = pass ? i : i + l, u = run_any(s, n, j, TOKU_UP);
        if (u > j) {
            e = run_any(s, n, u, TOKU_LO);
            return e + (contractions ? contraction_at(s, n, e, true) : 0);
        }
    }
    if (f & TOKU_N) return digits_at(s, n, i, max_digits);
    size_t j = s[i] == ' ' ? i + 1 : i;
    e = run_none(s, n, j, TOKU_WS | TOKU_L | TOKU_N);
    if (e > j) return run_newlines(s, n, e, true);
    return ws_tail(s, n, i, true);
}

static bool ascii_alpha(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

/* One DeepSeek V3 match starting exactly at i; i if none. */
static size_t m_dsv3_at(const uint8_t *s, size_t n, size_t i) {
    uint8_t c = s[i];
    if (c > 0x20 && c < 0x7F && !ascii_alpha(c) && !(c >= '0' && c <= '9') && i + 1 < n && ascii_alpha(s[i + 1])) {
        size_t e = i + 1;
        while (e < n && ascii_alpha(s[e])) e++;
        return e;
    }
    size_t l, e;
    uint8_t f = flags_at(s, i, &l);
    if (c != '\r' && c != '\n' && !(f & (TOKU_L | TOKU_P | TOKU_S))) { /* [^\r\n\p{L}\p{P}\p{S}]? */
        e = run_any(s, n, i + l, TOKU_L | TOKU_M);
        if (e > i + l) return e;
    }
    e = run_any(s, n, i, TOKU_L | TOKU_M);
    if (e > i) return e;
    size_t j = c == ' ' ? i + 1 : i;
    e = run_any(s, n, j, TOKU_P | TOKU_S);
    if (e > j) return run_newlines(s, n, e, false);
    if (f & TOKU_WS) return ws_tail(s, n, i, true);
    return i;
}

static bool cjk_kana(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x309F) || (c >= 0x30A0 && c <= 0x30FF);
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
    static const struct {
        const char *name;
        split_kind kind;
        int max_digits;
        bool contractions;
    } custom[] = {
        {"@gpt2", SPLIT_GPT2, 0, false},        {"@llama3", SPLIT_LLAMA3, 3, false},
        {"@qwen2", SPLIT_LLAMA3, 1, false},     {"@o200k", SPLIT_O200K, 3, true},
        {"@tekken", SPLIT_O200K, 1, false},     {"@digits1", SPLIT_DIGITS, 1, false},
        {"@digits3", SPLIT_DIGITS, 3, false},   {"@cjk-kana", SPLIT_CJK_KANA, 0, false},
        {"@dsv3", SPLIT_DSV3, 0, false},        {RX_TRAILING_WS, SPLIT_TRAILING_WS, 0, false},
    };
    pcre2_compile_context *cctx = NULL;
    for (int i = 0; i < MAX_SPLIT && d->rx[i]; i++) {
        splitter *sp = &t->split[i];
        t->n_split = i + 1;
        if (d->rx[i][0] == '@') {
            size_t k = 0;
            while (strcmp(custom[k].name, d->rx[i]) != 0) k++; /* the table above names only these */
            sp->kind = custom[k].kind;
            sp->max_digits = custom[k].max_digits;
            sp->contractions = custom[k].contractions;
            continue;
        }
        if (!t->gctx && !(t->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, NULL))) return nomem();
        if (!cctx && !(cctx = pcre2_compile_context_create(t->gctx))) return nomem();
        int err;
        PCRE2_SIZE off;
        sp->kind = SPLIT_PCRE;
        sp->rx = pcre2_compile((PCRE2_SPTR)d->rx[i], PCRE2_ZERO_TERMINATED,
                               PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &off, cctx);
        if (!sp->rx) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            pcre2_compile_context_free(cctx);
            if (err == PCRE2_ERROR_HEAP_FAILED) return nomem();
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "pre-tokenizer '%s': regex %d does not compile at %zu: %s",
                               t->pre_name, i, (size_t)off, (const char *)msg);
        }
        /* JIT is only a speed-up: without it (no JIT support, no executable
         * memory) the interpreter gives the same matches. */
        (void)pcre2_jit_compile(sp->rx, PCRE2_JIT_COMPLETE);
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

/* The trie of special-token texts used to cut them out of the input. */
static spud_status build_special_trie(spud_tokenizer *t) {
    uint64_t total = 1;
    bool any = false;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) {
            any = true;
            total += t->text[id].len;
            if (t->attr[id] & ATTR_USER_DEFINED) t->has_user_defined = true;
        }
    }
    if (!any) return SPUD_OK;
    if (total > INT32_MAX / 2) return spud_errorf(SPUD_ERR_FORMAT, "special tokens are too long");
    t->node_id = spud_malloc(total * sizeof *t->node_id);
    if (!t->node_id || !u64map_init(&t->trie, total)) return nomem();
    t->n_nodes = 1;
    t->node_id[0] = -1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))) continue;
        spud_str s = t->text[id];
        int32_t node = 0;
        for (uint64_t i = 0; i < s.len; i++) {
            uint64_t key = (uint64_t)node << 8 | (uint8_t)s.ptr[i];
            int32_t next = u64map_put(&t->trie, key, t->n_nodes);
            if (next == t->n_nodes) t->node_id[t->n_nodes++] = -1;
            node = next;
        }
        t->node_id[node] = id; /* texts are unique: one token per node */
        uint8_t b0 = (uint8_t)s.ptr[0];
        t->first_special[b0] = true;
        if (t->attr[id] & ATTR_USER_DEFINED) t->first_user[b0] = true;
    }
    return SPUD_OK;
}

/* Piece of a token with render_special = true, into out (NULL: just measure).
 * As the reference decoders do: SentencePiece turns U+2581 into a space in
 * normal and user-defined tokens; byte-level BPE maps each character back to
 * its byte, and takes a token with a character outside that alphabet as it
 * is written. Control and unknown tokens are their text. */
static size_t make_piece(const spud_tokenizer *t, int32_t id, char *out) {
    spud_str s = t->text[id];
    uint16_t a = t->attr[id];
    const uint8_t *p = (const uint8_t *)s.ptr;
    size_t n = 0;
    bool spaces = t->kind == TOK_SPM ? (a & (ATTR_NORMAL | ATTR_USER_DEFINED)) != 0
                                     : t->kind == TOK_WPM && (a & ATTR_NORMAL);
    if (spaces) {
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
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        if (out) memcpy(out, s.ptr, s.len);
        return s.len;
    }
    if (t->kind != TOK_BPE) {
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
        if (b < 0) { /* outside the byte alphabet: the whole token as written */
            if (out) memcpy(out, s.ptr, s.len);
            return s.len;
        }
        if (out) out[n] = (char)b;
        n++, i += k;
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

/* tokenizer.ggml.merges: required for byte-level BPE, optional for SentencePiece. */
static spud_status load_merges(const spud_gguf *g, spud_tokenizer *t, bool required) {
    const spud_gguf_kv *kv;
    spud_status st = spud_gguf_get_arr(g, "tokenizer.ggml.merges", SPUD_GGUF_STRING, &kv);
    if (st == SPUD_ERR_NOT_FOUND && !required) return SPUD_OK;
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

/* Code points x such that some token has x right before a U+2581 (not at its
 * start): merging can cross a U+2581 in the text only after such an x. */
static spud_status build_glue(spud_tokenizer *t) {
    size_t cap = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) { /* any type: merges may make any token */
        const uint8_t *p = (const uint8_t *)t->text[id].ptr;
        size_t n = (size_t)t->text[id].len;
        for (size_t k = 1; k + 3 <= n; k++) {
            if (memcmp(p + k, SPM_SPACE, 3) != 0) continue;
            size_t q = k - 1;
            while (q > 0 && (p[q] & 0xC0) == 0x80) q--;
            uint32_t cp;
            size_t skip;
            if (!utf8_next(p + q, k - q, &cp, &skip)) cp = p[k - 1]; /* not UTF-8: never matches */
            if (!grow(&t->glue_before, &cap, t->n_glue + 1, sizeof *t->glue_before)) return nomem();
            t->glue_before[t->n_glue++] = cp;
        }
    }
    /* sort and dedupe (insertion sort: the set is tiny in practice) */
    size_t m = 0;
    for (size_t i = 0; i < t->n_glue; i++) {
        uint32_t v = t->glue_before[i];
        size_t j = m;
        while (j > 0 && t->glue_before[j - 1] > v) j--;
        if (j > 0 && t->glue_before[j - 1] == v) continue;
        memmove(t->glue_before + j + 1, t->glue_before + j, (m - j) * sizeof *t->glue_before);
        t->glue_before[j] = v;
        m++;
    }
    t->n_glue = m;
    return SPUD_OK;
}

/* Decoded bytes of every normal BPE token -> id, for whole-word lookups. */
static spud_status build_raw_map(spud_tokenizer *t) {
    uint64_t cap = pow2_at_least((uint64_t)t->n_vocab * 2 + 1);
    t->raw_slots = spud_malloc(cap * sizeof *t->raw_slots);
    if (!t->raw_slots) return nomem();
    for (uint64_t i = 0; i < cap; i++) t->raw_slots[i] = (text_slot){0, -1};
    t->raw_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->attr[id] & ATTR_NORMAL)) continue;
        const char *s = t->piece_blob + t->piece_off[id];
        size_t n = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
        uint64_t h = hash_bytes(s, n);
        uint32_t tag = (uint32_t)(h >> 32);
        uint64_t i = h & t->raw_mask;
        bool dup = false;
        while (t->raw_slots[i].id >= 0) {
            const text_slot *sl = &t->raw_slots[i];
            size_t m = (size_t)(t->piece_off[sl->id + 1] - t->piece_off[sl->id]);
            if (sl->hash == tag && m == n && memcmp(t->piece_blob + t->piece_off[sl->id], s, n) == 0) {
                dup = true; /* two spellings of the same bytes: keep the first */
                break;
            }
            i = (i + 1) & t->raw_mask;
        }
        if (!dup) t->raw_slots[i] = (text_slot){tag, id};
    }
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
    } else if (spud_str_eq(model, "bert")) {
        t->kind = TOK_WPM;
    } else {
        return spud_errorf(SPUD_ERR_UNSUPPORTED,
                           "tokenizer model '%s' is not supported (supported: gpt2, llama, bert)",
                           show(model, b, sizeof b));
    }
    strcpy(t->model_name, t->kind == TOK_BPE ? "gpt2" : t->kind == TOK_SPM ? "llama" : "bert");
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

    /* flags and ids: defaults per model, then the metadata */
    t->unk = t->cls = t->sep = -1;
    if (t->kind == TOK_SPM) {
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_space_prefix = true;
        t->add_bos = true;
        snprintf(t->pre_name, sizeof t->pre_name, "default");
    } else if (t->kind == TOK_WPM) {
        /* BERT: [CLS] text [SEP], [UNK] = 100 (llama.cpp's defaults) */
        t->bos = 101, t->eos = -1, t->unk = 100, t->sep = 102;
        t->add_bos = true, t->add_sep = true;
        show(pre.len ? pre : (spud_str){"default", 7}, t->pre_name, sizeof t->pre_name);
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
        t->nfc = d->nfc;
        t->add_bos = d->add_bos;
        if (d->no_bos) t->bos = -1;
        if ((st = compile_pre(t, d))) return st;
    }
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    if (t->sep >= t->n_vocab) t->sep = -1;
    if ((st = read_id(g, t, "bos_token_id", true, &t->bos))) return st;
    if ((st = read_id(g, t, "eos_token_id", true, &t->eos))) return st;
    if ((st = read_id(g, t, "unknown_token_id", true, &t->unk))) return st;
    if ((st = read_id(g, t, "seperator_token_id", t->kind == TOK_WPM, &t->sep))) return st;
    if ((st = read_id(g, t, "cls_token_id", t->kind == TOK_WPM, &t->cls))) return st;
    int32_t unused = -1;
    static const char *const lax[] = {"padding_token_id", "mask_token_id"};
    for (size_t i = 0; i < 2; i++) {
        if ((st = read_id(g, t, lax[i], false, &unused))) return st;
    }
    if (t->cls < 0) t->cls = t->bos;
    if ((st = read_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.add_sep_token", &t->add_sep))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix))) return st;
    if ((st = read_bool(g, "tokenizer.ggml.ignore_merges", &t->ignore_merges))) return st;

    if ((st = detect_special(g, t))) return st;
    set_strip_attrs(g, t);

    /* byte tables */
    t->all_byte_toks = true;
    for (int c = 0; c < 256; c++) {
        char s[8];
        t->single_tok[c] = text_lookup(t, (char[1]){(char)c}, 1);
        if (c < 128) t->ascii_tok[c] = t->single_tok[c];
        if (t->kind == TOK_BPE) {
            t->byte_tok[c] = text_lookup(t, s, utf8_put(gpt2_byte_cp((uint8_t)c), s));
        } else {
            snprintf(s, sizeof s, "<0x%02X>", c);
            int32_t id = text_lookup_c(t, s);
            if (id < 0) t->all_byte_toks = false;
            if (id < 0) id = t->single_tok[c];
            t->byte_tok[c] = id >= 0 ? id : t->unk;
        }
    }
    if (t->kind == TOK_BPE) {
        if ((st = load_merges(g, t, true))) return st;
    } else if (t->kind == TOK_SPM) {
        if ((st = load_merges(g, t, false))) return st;
        t->spm_merges = t->n_merges > 0;
        if ((st = build_glue(t))) return st;
    }
    if ((st = build_special_trie(t))) return st;
    if ((st = build_pieces(t))) return st;
    if (t->kind == TOK_BPE && (st = build_raw_map(t))) return st;
    return SPUD_OK;
}

spud_status spud_tok_load(const spud_gguf *g, spud_tokenizer **out) {
    *out = NULL;
    if (!g) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_load: no GGUF");
    spud_tokenizer *t = spud_calloc(1, sizeof *t);
    if (!t) return nomem();
    t->bos = t->eos = t->eot = t->eom = t->unk = t->cls = t->sep = -1;
    static atomic_uint_fast64_t next_serial = 1;
    t->serial = (uint64_t)atomic_fetch_add(&next_serial, 1);
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
    for (int i = 0; i < MAX_SPLIT; i++) pcre2_code_free(t->split[i].rx);
    pcre2_general_context_free(t->gctx);
    spud_free(t->text);
    spud_free(t->attr);
    spud_free(t->score);
    spud_free(t->names_blob);
    spud_free(t->slots);
    spud_free(t->raw_slots);
    spud_free(t->glue_before);
    spud_free(t->merge_a);
    spud_free(t->merge_b);
    spud_free(t->merge_res);
    u64map_free(&t->merge_rank);
    u64map_free(&t->trie);
    spud_free(t->node_id);
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

bool spud_tok_is_user_defined(const spud_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & ATTR_USER_DEFINED);
}

uint64_t spud_tok_serial(const spud_tokenizer *t) { return t->serial; }

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
    int32_t id, prev, next; /* prev == SYM_DEAD: merged into its left neighbour */
    uint32_t off;           /* first byte in the word */
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

/* Words (pre-tokenizer pieces, SentencePiece segments) seen before in this
 * call, with their ids: text repeats words, and merging is the costly part.
 * Direct-mapped; the word texts and ids live in two arenas that are emptied
 * (with the table) when full. */
#define WC_SLOTS 8192
#define WC_MAX_WORD 128
#define WC_ARENA (1u << 20)

typedef struct {
    uint64_t hash;
    uint32_t word_off, ids_off;
    uint16_t word_len, n_ids; /* word_len 0: empty slot */
} wc_slot;

typedef struct {
    wc_slot *slots;
    uint8_t *words; /* (WC_ARENA) */
    int32_t *ids;   /* (WC_ARENA) */
    uint32_t n_words, n_ids;
} word_cache;

#define PAIR_CACHE_BITS 9

typedef struct {
    uint64_t key; /* (a << 32 | b); UINT64_MAX: empty */
    int32_t rank;
} pair_cache_slot;

/* Per-call scratch; grows geometrically and is reused across words. */
typedef struct {
    int32_t *ids;
    size_t n_ids, cap_ids;
    uint8_t *clean; /* the fragment with invalid UTF-8 replaced */
    size_t cap_clean;
    uint8_t *norm; /* the fragment normalized (NFC; WordPiece's normalizer) */
    size_t cap_norm;
    int32_t *u32; /* NFC's code point buffer */
    size_t cap_u32;
    uint8_t *seg; /* one SentencePiece segment, spaces escaped; a WordPiece word */
    size_t cap_seg;
    bpe_sym *sym;
    size_t cap_sym;
    int32_t *rank; /* small words: rank of each adjacent pair */
    size_t cap_rank;
    uint64_t *heap; /* BPE: rank << 32 | left, min-heap */
    size_t cap_heap;
    spm_sym *ssym;
    size_t cap_ssym;
    spm_bigram *sheap;
    size_t cap_sheap;
    pcre2_match_data *md;
    word_cache wc;
    bool use_cache;
    pair_cache_slot *pair_cache; /* (1 << PAIR_CACHE_BITS), set up with sym */
    /* spud_tok_pre_tokenize: report words instead of encoding them */
    void (*collect)(void *ud, const char *piece, size_t len);
    void *collect_ud;
} scratch;

static void scratch_free(scratch *s) {
    spud_free(s->ids);
    spud_free(s->clean);
    spud_free(s->norm);
    spud_free(s->u32);
    spud_free(s->seg);
    spud_free(s->sym);
    spud_free(s->rank);
    spud_free(s->heap);
    spud_free(s->ssym);
    spud_free(s->sheap);
    pcre2_match_data_free(s->md);
    spud_free(s->wc.slots);
    spud_free(s->wc.words);
    spud_free(s->wc.ids);
    spud_free(s->pair_cache);
}

static bool push_id(scratch *s, int32_t id) {
    if (s->n_ids == s->cap_ids && !grow(&s->ids, &s->cap_ids, s->n_ids + 1, sizeof *s->ids)) return false;
    s->ids[s->n_ids++] = id;
    return true;
}

static bool push_ids(scratch *s, const int32_t *ids, size_t n) {
    if (!grow(&s->ids, &s->cap_ids, s->n_ids + n, sizeof *s->ids)) return false;
    memcpy(s->ids + s->n_ids, ids, n * sizeof *ids);
    s->n_ids += n;
    return true;
}

/* -- word cache -- */

/* The cache is set up on first use: short texts never pay for it. */
static bool wc_ready(scratch *s) {
    word_cache *c = &s->wc;
    if (c->slots) return true;
    c->slots = spud_calloc(WC_SLOTS, sizeof *c->slots);
    c->words = spud_malloc(WC_ARENA);
    c->ids = spud_malloc(WC_ARENA * sizeof *c->ids);
    if (c->slots && c->words && c->ids) return true;
    spud_free(c->slots), spud_free(c->words), spud_free(c->ids);
    memset(c, 0, sizeof *c);
    return false;
}

/* Appends the cached ids of word w; false if it is not cached. */
static bool wc_get(scratch *s, const uint8_t *w, size_t n, uint64_t h, bool *oom) {
    const wc_slot *sl = &s->wc.slots[h & (WC_SLOTS - 1)];
    if (sl->word_len != n || sl->hash != h || memcmp(s->wc.words + sl->word_off, w, n) != 0) return false;
    if (!push_ids(s, s->wc.ids + sl->ids_off, sl->n_ids)) *oom = true;
    return true;
}

/* Remembers that word w encodes to ids (never fails: a full cache starts over). */
static void wc_put(scratch *s, const uint8_t *w, size_t n, uint64_t h, const int32_t *ids, size_t n_ids) {
    word_cache *c = &s->wc;
    if (n_ids > UINT16_MAX) return;
    if (c->n_words + n > WC_ARENA || c->n_ids + n_ids > WC_ARENA) {
        memset(c->slots, 0, WC_SLOTS * sizeof *c->slots);
        c->n_words = c->n_ids = 0;
    }
    wc_slot *sl = &c->slots[h & (WC_SLOTS - 1)];
    memcpy(c->words + c->n_words, w, n);
    memcpy(c->ids + c->n_ids, ids, n_ids * sizeof *ids);
    *sl = (wc_slot){h, c->n_words, c->n_ids, (uint16_t)n, (uint16_t)n_ids};
    c->n_words += (uint32_t)n;
    c->n_ids += (uint32_t)n_ids;
}

/* -- merging by rank (byte-level BPE; SentencePiece with merges) -- */

/* Rank of merging ids a and b (-1: none), through a small direct-mapped
 * cache of recent pairs: long words (runs of one character, of spaces)
 * repeat a few pairs very often, and the merge map is large. */
static inline int32_t pair_rank(const spud_tokenizer *t, scratch *s, int32_t a, int32_t b) {
    if (a < 0 || b < 0) return -1;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    pair_cache_slot *c = &s->pair_cache[(key * 0x9E3779B97F4A7C15ull) >> (64 - PAIR_CACHE_BITS)];
    if (c->key == key) return c->rank;
    c->key = key;
    c->rank = u64map_get(&t->merge_rank, key);
    return c->rank;
}

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

static bool heap_try_pair(const spud_tokenizer *t, scratch *s, size_t *nh, int32_t left) {
    const bpe_sym *l = &s->sym[left];
    if (l->next < 0) return true;
    int32_t r = pair_rank(t, s, l->id, s->sym[l->next].id);
    if (r < 0) return true;
    if (*nh == s->cap_heap && !grow(&s->heap, &s->cap_heap, *nh + 1, sizeof *s->heap)) return false;
    heap_push(s->heap, nh, (uint64_t)(uint32_t)r << 32 | (uint32_t)left);
    return true;
}

#define SMALL_WORD 48

/* Merge the m symbols of s->sym (ids set, a chain 0..m-1) by rank: always
 * the adjacent pair of lowest rank, the leftmost on ties, as Hugging Face's
 * BPE and tiktoken do. Short words are scanned (tiktoken's way, O(m^2) with
 * a small constant); long ones use a heap of candidate pairs keyed (rank,
 * left), each checked against the current symbols when popped (O(m log m)).
 * Afterwards the live symbols are the chain from sym[0]. */
static bool merge_symbols(const spud_tokenizer *t, scratch *s, size_t m) {
    bpe_sym *sym = s->sym;
    if (m <= SMALL_WORD) {
        int32_t *id = s->rank + SMALL_WORD, *rank = s->rank, idx[SMALL_WORD];
        for (size_t k = 0; k < m; k++) id[k] = sym[k].id, idx[k] = (int32_t)k;
        for (size_t k = 0; k + 1 < m; k++) rank[k] = pair_rank(t, s, id[k], id[k + 1]);
        while (m > 1) {
            int32_t best = INT32_MAX;
            size_t bk = 0;
            for (size_t k = 0; k + 1 < m; k++) {
                if (rank[k] >= 0 && rank[k] < best) best = rank[k], bk = k;
            }
            if (best == INT32_MAX) break;
            id[bk] = t->merge_res[best];
            size_t tail = m - bk - 2; /* symbols after the right one */
            memmove(id + bk + 1, id + bk + 2, tail * sizeof *id);
            memmove(idx + bk + 1, idx + bk + 2, tail * sizeof *idx);
            if (tail) memmove(rank + bk + 1, rank + bk + 2, (tail - 1) * sizeof *rank);
            m--;
            if (bk > 0) rank[bk - 1] = pair_rank(t, s, id[bk - 1], id[bk]);
            if (bk + 1 < m) rank[bk] = pair_rank(t, s, id[bk], id[bk + 1]);
        }
        /* write the survivors back as a chain over the first m slots */
        for (size_t k = 0; k < m; k++) {
            bpe_sym v = {id[k], (int32_t)k - 1, k + 1 < m ? (int32_t)k + 1 : -1, sym[idx[k]].off};
            sym[k] = v;
        }
        return true;
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < m; i++) {
        if (!heap_try_pair(t, s, &nh, (int32_t)i)) return false;
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
        if (l->prev >= 0 && !heap_try_pair(t, s, &nh, l->prev)) return false;
        if (!heap_try_pair(t, s, &nh, left)) return false;
    }
    return true;
}

static bool sym_room(scratch *s, size_t m) {
    if (!s->pair_cache) {
        s->pair_cache = spud_malloc(sizeof *s->pair_cache << PAIR_CACHE_BITS);
        if (!s->pair_cache) return false;
        for (size_t i = 0; i < (size_t)1 << PAIR_CACHE_BITS; i++) s->pair_cache[i] = (pair_cache_slot){UINT64_MAX, -1};
    }
    return grow(&s->sym, &s->cap_sym, m, sizeof *s->sym) &&
           (s->rank || grow(&s->rank, &s->cap_rank, 2 * SMALL_WORD, sizeof *s->rank));
}

/* A byte-level symbol that is not a token: llama.cpp emits the 1-byte tokens
 * of the bytes of its GPT-2 form, skipping bytes that are not tokens. */
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

/* SentencePiece byte fallback: the <0xAB> tokens of the bytes, or one
 * unknown token when some byte has none (Hugging Face's rule). */
static bool spm_emit_fallback(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (!t->all_byte_toks) return t->unk < 0 || push_id(s, t->unk);
    for (size_t i = 0; i < n; i++) {
        if (!push_id(s, t->byte_tok[w[i]])) return false;
    }
    return true;
}

/* Ids of the merged chain; unknown symbols fall back to bytes. */
static bool emit_symbols(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n, bool spm) {
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const bpe_sym *y = &s->sym[i];
        if (y->id >= 0) {
            if (!push_id(s, y->id)) return false;
            continue;
        }
        size_t end = y->next >= 0 ? s->sym[y->next].off : n;
        if (!(spm ? spm_emit_fallback(t, s, w + y->off, end - y->off)
                  : bpe_emit_fallback(t, s, w + y->off, end - y->off)))
            return false;
    }
    return true;
}

/* Byte-level BPE of one pre-tokenized word (raw bytes). */
static bool bpe_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (n == 1 && t->byte_tok[w[0]] >= 0) return push_id(s, t->byte_tok[w[0]]);
    if (t->ignore_merges) { /* a word that is a token is taken whole */
        uint64_t h = hash_bytes(w, n);
        uint32_t tag = (uint32_t)(h >> 32);
        for (uint64_t i = h & t->raw_mask; t->raw_slots[i].id >= 0; i = (i + 1) & t->raw_mask) {
            int32_t id = t->raw_slots[i].id;
            if (t->raw_slots[i].hash == tag && t->piece_off[id + 1] - t->piece_off[id] == n &&
                memcmp(t->piece_blob + t->piece_off[id], w, n) == 0)
                return push_id(s, id);
        }
    }
    if (n > INT32_MAX - 1 || !sym_room(s, n)) return false;
    for (size_t i = 0; i < n; i++) s->sym[i] = (bpe_sym){t->byte_tok[w[i]], (int32_t)i - 1, -1, (uint32_t)i};
    for (size_t i = 0; i + 1 < n; i++) s->sym[i].next = (int32_t)i + 1;
    return merge_symbols(t, s, n) && emit_symbols(t, s, w, n, false);
}

/* SentencePiece by merges: symbols start as characters (unknown ones as -1). */
static bool spm_merge_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (n > INT32_MAX - 1 || !sym_room(s, n)) return false;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_lead_len(w[i]);
        if (k > n - i) k = n - i;
        int32_t id = k == 1 && w[i] < 0x80 ? t->ascii_tok[w[i]] : text_lookup(t, w + i, k);
        s->sym[m] = (bpe_sym){id, (int32_t)m - 1, -1, (uint32_t)i};
        if (m) s->sym[m - 1].next = (int32_t)m;
        m++;
        i += k;
    }
    return merge_symbols(t, s, m) && emit_symbols(t, s, w, n, true);
}

/* -- SentencePiece by score (llama.cpp's algorithm) -- */

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

static bool spm_try_bigram(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t *nh, int32_t left,
                           int32_t right) {
    if (left < 0 || right < 0) return true;
    const spm_sym *l = &s->ssym[left], *r = &s->ssym[right];
    size_t size = (size_t)l->n + r->n;
    int32_t id = text_lookup(t, w + l->off, size);
    if (id < 0) return true;
    if (*nh == s->cap_sheap && !grow(&s->sheap, &s->cap_sheap, *nh + 1, sizeof *s->sheap)) return false;
    sheap_push(s->sheap, nh, (spm_bigram){t->score[id], (uint32_t)left, (uint32_t)size});
    return true;
}

/* Merge the best-scoring adjacent pair that forms a token until none is
 * left, then byte-fall-back whatever is not a token. */
static bool spm_score_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (n > UINT32_MAX / 2 || !grow(&s->ssym, &s->cap_ssym, n, sizeof *s->ssym)) return false;
    spm_sym *sym = s->ssym;
    int32_t n_sym = 0;
    for (size_t off = 0; off < n;) {
        size_t k = utf8_lead_len(w[off]);
        if (k > n - off) k = n - off;
        sym[n_sym] = (spm_sym){(uint32_t)off, (uint32_t)k, n_sym - 1, off + k < n ? n_sym + 1 : -1};
        n_sym++;
        off += k;
    }
    size_t nh = 0;
    for (int32_t i = 1; i < n_sym; i++) {
        if (!spm_try_bigram(t, s, w, &nh, i - 1, i)) return false;
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
        if (!spm_try_bigram(t, s, w, &nh, l->prev, (int32_t)bg.left)) return false;
        if (!spm_try_bigram(t, s, w, &nh, (int32_t)bg.left, l->next)) return false;
    }
    for (int32_t i = 0; i >= 0 && n_sym > 0; i = sym[i].next) {
        int32_t id = text_lookup(t, w + sym[i].off, sym[i].n);
        if (id >= 0) {
            if (!push_id(s, id)) return false;
            continue;
        }
        for (uint32_t j = 0; j < sym[i].n; j++) {
            id = t->byte_tok[w[sym[i].off + j]];
            if (id >= 0 && !push_id(s, id)) return false;
        }
    }
    return true;
}

/* One word for the model: from the cache, or merged and then cached. */
static spud_status model_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n) {
    if (n == 0) return SPUD_OK;
    if (s->collect) {
        s->collect(s->collect_ud, (const char *)w, n);
        return SPUD_OK;
    }
    bool cache = s->use_cache && n <= WC_MAX_WORD && n > 1;
    uint64_t h = 0;
    bool oom = false;
    if (cache) {
        h = hash_bytes(w, n);
        if (wc_get(s, w, n, h, &oom)) return oom ? nomem() : SPUD_OK;
    }
    size_t first = s->n_ids;
    bool ok = t->kind == TOK_BPE ? bpe_word(t, s, w, n)
              : t->spm_merges    ? spm_merge_word(t, s, w, n)
                                 : spm_score_word(t, s, w, n);
    if (!ok) return nomem();
    if (cache) wc_put(s, w, n, h, s->ids + first, s->n_ids - first);
    return SPUD_OK;
}

/* -- pre-tokenization -- */

/* The next piece of step sp in p[pos..n): [*a, *b). */
static spud_status split_next(const splitter *sp, scratch *s, const uint8_t *p, size_t n, size_t pos, size_t *a,
                              size_t *b, bool *found) {
    *found = false;
    size_t l;
    switch (sp->kind) {
    case SPLIT_GPT2:
        *a = pos, *b = m_gpt2(p, n, pos), *found = true;
        return SPUD_OK;
    case SPLIT_LLAMA3:
        *a = pos, *b = m_llama3(p, n, pos, sp->max_digits), *found = true;
        return SPUD_OK;
    case SPLIT_O200K:
        *a = pos, *b = m_o200k(p, n, pos, sp->max_digits, sp->contractions), *found = true;
        return SPUD_OK;
    case SPLIT_DSV3:
        for (size_t i = pos; i < n; i += utf8_lead_len(p[i])) {
            size_t e = m_dsv3_at(p, n, i);
            if (e > i) {
                *a = i, *b = e, *found = true;
                break;
            }
        }
        return SPUD_OK;
    case SPLIT_DIGITS:
        for (size_t i = pos; i < n; i += l) {
            if (flags_at(p, i, &l) & TOKU_N) {
                *a = i, *b = digits_at(p, n, i, sp->max_digits), *found = true;
                break;
            }
        }
        return SPUD_OK;
    case SPLIT_CJK_KANA:
        for (size_t i = pos; i < n; i += l) {
            if (cjk_kana(cp_at(p, i, &l))) {
                size_t e = i + l;
                while (e < n && cjk_kana(cp_at(p, e, &l))) e += l;
                *a = i, *b = e, *found = true;
                break;
            }
        }
        return SPUD_OK;
    case SPLIT_TRAILING_WS: /* handled by the caller */
        return SPUD_OK;
    case SPLIT_PCRE:
        break;
    }
    while (pos < n) {
        int rc = pcre2_match(sp->rx, p, n, pos, PCRE2_NO_UTF_CHECK, s->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(sp->rx, p, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, s->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return SPUD_OK;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return spud_errorf(rc == PCRE2_ERROR_NOMEMORY ? SPUD_ERR_NOMEM : SPUD_ERR_RANGE,
                               "pre-tokenizer regex failed on a piece of %zu bytes: %s", n, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        if (ov[1] > ov[0]) {
            *a = ov[0], *b = ov[1], *found = true;
            return SPUD_OK;
        }
        pos = ov[0] + 1; /* empty match: step over one character */
        while (pos < n && (p[pos] & 0xC0) == 0x80) pos++;
    }
    return SPUD_OK;
}

/* Split p[0..n) by step `level` and every later one, depth first, handing
 * each final piece to the model as soon as it is known. */
static spud_status pre_tokenize(const spud_tokenizer *t, scratch *s, int level, const uint8_t *p, size_t n) {
    spud_status st;
    if (n == 0) return SPUD_OK;
    if (level == t->n_split) return model_word(t, s, p, n);
    const splitter *sp = &t->split[level];
    if (sp->kind == SPLIT_TRAILING_WS) {
        size_t q = n;
        while (q > 0) {
            size_t k = q - 1;
            while (k > 0 && (p[k] & 0xC0) == 0x80) k--;
            size_t l;
            if (!(flags_at(p, k, &l) & TOKU_WS)) break;
            q = k;
        }
        if ((st = pre_tokenize(t, s, level + 1, p, q))) return st;
        return pre_tokenize(t, s, level + 1, p + q, n - q);
    }
    size_t pos = 0, last = 0;
    while (pos < n) {
        size_t a, b;
        bool found;
        if ((st = split_next(sp, s, p, n, pos, &a, &b, &found))) return st;
        if (!found) break;
        if (a > last && (st = pre_tokenize(t, s, level + 1, p + last, a - last))) return st;
        if ((st = pre_tokenize(t, s, level + 1, p + a, b - a))) return st;
        pos = last = b;
    }
    return pre_tokenize(t, s, level + 1, p + last, n - last);
}

/* -- text preparation -- */

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

/* Length of the valid UTF-8 sequence at p[0..n), or 0 with *bad = the
 * length of the maximal invalid subpart there (>= 1). */
static size_t utf8_valid_at(const uint8_t *p, size_t n, size_t *bad) {
    int need;
    uint8_t lo, hi;
    *bad = 1;
    if (p[0] < 0x80) return 1;
    if (!utf8_lead(p[0], &need, &lo, &hi)) return 0;
    size_t j = 1;
    for (; j <= (size_t)need && j < n; j++) {
        uint8_t c = p[j];
        if (j == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
    }
    if (j > (size_t)need) return j;
    *bad = j;
    return 0;
}

/* p[0..n) as valid UTF-8: p itself when it is, else a copy in s->clean with
 * each maximal invalid subpart replaced by U+FFFD. */
static spud_status make_valid(scratch *s, const uint8_t **p, size_t *n) {
    const uint8_t *q = *p;
    size_t len = *n, i = 0, bad;
    while (i < len) {
        if (q[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_valid_at(q + i, len - i, &bad);
        if (!k) break;
        i += k;
    }
    if (i == len) return SPUD_OK;
    uint64_t need;
    if (!spud_mul_ok(len, 3, &need) || need > SIZE_MAX || !grow(&s->clean, &s->cap_clean, (size_t)need, 1))
        return nomem();
    memcpy(s->clean, q, i);
    size_t o = i;
    while (i < len) {
        size_t k = utf8_valid_at(q + i, len - i, &bad);
        if (k) {
            memcpy(s->clean + o, q + i, k);
            o += k, i += k;
        } else {
            memcpy(s->clean + o, "\xEF\xBF\xBD", 3);
            o += 3, i += bad;
        }
    }
    *p = s->clean;
    *n = o;
    return SPUD_OK;
}

/* -- NFC, on the tables of tokenizer_unicode.h (the same Unicode version as
 * the pre-tokenizer classes) -- */

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_NV 21u
#define HANGUL_NT 28u
#define HANGUL_N (HANGUL_NV * HANGUL_NT)
#define HANGUL_COUNT 11172u

/* Append the full canonical decomposition of c to buf (room for 4). */
static size_t nfc_decompose(uint32_t c, uint32_t *buf) {
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_COUNT) {
        uint32_t s = c - HANGUL_S, t = s % HANGUL_NT;
        buf[0] = HANGUL_L + s / HANGUL_N;
        buf[1] = HANGUL_V + (s % HANGUL_N) / HANGUL_NT;
        if (!t) return 2;
        buf[2] = HANGUL_T + t;
        return 3;
    }
    size_t lo = 0, hi = sizeof toku_decomps / sizeof toku_decomps[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (toku_decomps[mid].cp < c) lo = mid + 1;
        else hi = mid;
    }
    if (lo == sizeof toku_decomps / sizeof toku_decomps[0] || toku_decomps[lo].cp != c) {
        buf[0] = c;
        return 1;
    }
    memcpy(buf, toku_decomp_pool + toku_decomps[lo].off, toku_decomps[lo].len * sizeof *buf);
    return toku_decomps[lo].len;
}

/* The primary composite of a + b, or 0. */
static uint32_t nfc_compose(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_NV)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_NV + (b - HANGUL_V)) * HANGUL_NT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_COUNT && (a - HANGUL_S) % HANGUL_NT == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_NT)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = sizeof toku_comps / sizeof toku_comps[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const toku_comp *x = &toku_comps[mid];
        if (x->first < a || (x->first == a && x->second < b)) lo = mid + 1;
        else hi = mid;
    }
    if (lo < sizeof toku_comps / sizeof toku_comps[0] && toku_comps[lo].first == a && toku_comps[lo].second == b)
        return toku_comps[lo].composite;
    return 0;
}

/* NFC of the code points buf[0..n) in place (UAX #15: decompose, order marks
 * by combining class, compose what is not blocked); returns the new length.
 * buf has room for 4 * n. */
static size_t nfc_run(uint32_t *buf, size_t n, uint32_t *tmp) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += nfc_decompose(buf[i], tmp + m);
    /* canonical order: a stable insertion sort of each run of non-starters */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = tmp[i];
        uint8_t cc = toku_nfc(c) & TOKU_NFC_CCC;
        if (!cc) continue;
        size_t j = i;
        while (j > 0) {
            uint8_t pc = toku_nfc(tmp[j - 1]) & TOKU_NFC_CCC;
            if (pc <= cc) break;
            tmp[j] = tmp[j - 1];
            j--;
        }
        tmp[j] = c;
    }
    size_t o = 0, starter = SIZE_MAX;
    uint8_t prev_cc = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = tmp[i];
        uint8_t cc = toku_nfc(c) & TOKU_NFC_CCC;
        if (starter != SIZE_MAX && (o == starter + 1 || prev_cc < cc)) {
            uint32_t p = nfc_compose(buf[starter], c);
            if (p) {
                buf[starter] = p;
                continue;
            }
        }
        if (cc == 0) starter = o;
        prev_cc = cc;
        buf[o++] = c;
    }
    return o;
}

/* NFC of valid UTF-8 p[0..n), into s->norm unless it is unchanged. Up to
 * the first character that is not a starter without decomposition (or below
 * U+0300) the text is NFC already; from the character before it, the text
 * is normalized in runs cut before each character that is a starter, has no
 * decomposition and is the second part of no composition: nothing reaches
 * across those. */
static spud_status make_nfc(scratch *s, const uint8_t **p, size_t *n) {
    const uint8_t *q = *p;
    size_t len = *n, i = 0, prev = 0, k;
    while (i < len) {
        if (q[i] >= 0xCC && toku_nfc(cp_at(q, i, &k))) break;
        prev = i;
        i += utf8_lead_len(q[i]);
    }
    if (i == len) return SPUD_OK;
    i = prev; /* the character before may compose with this one */
    if (!grow(&s->norm, &s->cap_norm, len + 64, 1)) return nomem();
    memcpy(s->norm, q, i);
    size_t o = i;
    while (i < len) {
        size_t end = i, nc = 0;
        do {
            cp_at(q, end, &k);
            end += k, nc++;
        } while (end < len && toku_nfc(cp_at(q, end, &k)));
        if (!grow(&s->u32, &s->cap_u32, 5 * nc, sizeof *s->u32)) return nomem();
        uint32_t *buf = (uint32_t *)s->u32, *tmp = buf + nc;
        size_t j = 0;
        for (size_t x = i; x < end; x += k) buf[j++] = cp_at(q, x, &k);
        size_t m = nfc_run(buf, nc, tmp);
        if (!grow(&s->norm, &s->cap_norm, o + 4 * m + 64, 1)) return nomem();
        for (size_t x = 0; x < m; x++) o += utf8_put(buf[x], (char *)s->norm + o);
        i = end;
    }
    *p = s->norm;
    *n = o;
    return SPUD_OK;
}

/* -- SentencePiece segments -- */

static bool glued(const spud_tokenizer *t, uint32_t cp) {
    size_t lo = 0, hi = t->n_glue;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->glue_before[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < t->n_glue && t->glue_before[lo] == cp;
}

#define SPM_SPACE_LEN 3

/* SentencePiece on one raw fragment: spaces become U+2581 (one is prefixed
 * when asked), and the text is cut into segments before each U+2581 whose
 * preceding character no token glues to a U+2581: no merge can cross there,
 * so the segments merge independently (and hit the word cache). */
static spud_status spm_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n, bool prefix) {
    size_t i = 0;
    bool pending = prefix;
    uint32_t prev = 0;
    bool have_prev = false;
    while (i < n || pending) {
        size_t m = 0;
        if (pending) {
            if (!grow(&s->seg, &s->cap_seg, SPM_SPACE_LEN, 1)) return nomem();
            memcpy(s->seg, SPM_SPACE, SPM_SPACE_LEN);
            m = SPM_SPACE_LEN;
            prev = 0x2581, have_prev = true;
            pending = false;
        }
        while (i < n) {
            size_t k;
            uint32_t c = cp_at(p, i, &k);
            bool space = c == ' ' || c == 0x2581;
            if (space && m > 0 && have_prev && !glued(t, prev)) break;
            if (!grow(&s->seg, &s->cap_seg, m + 4, 1)) return nomem();
            if (c == ' ') {
                memcpy(s->seg + m, SPM_SPACE, SPM_SPACE_LEN);
                m += SPM_SPACE_LEN;
            } else {
                memcpy(s->seg + m, p + i, k);
                m += k;
            }
            prev = space ? 0x2581 : c, have_prev = true;
            i += k;
        }
        spud_status st = model_word(t, s, s->seg, m);
        if (st) return st;
    }
    return SPUD_OK;
}

/* -- WordPiece (BERT) -- */

static bool bert_chinese(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static bool bert_punct(uint32_t c) {
    if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                         (c >= 0x7B && c <= 0x7E);
    return (toku_flags(c) & TOKU_P) != 0;
}

/* Greedy longest-match-first WordPiece of one word: the first piece is looked
 * up as U+2581 + text, the rest as plain text (the GGUF form of "##"); a word
 * of more than 100 characters, or one that cannot be covered, is [UNK]. */
static bool wpm_word(const spud_tokenizer *t, scratch *s, const uint8_t *w, size_t n, size_t n_chars) {
    size_t first = s->n_ids;
    if (n_chars <= 100) {
        if (!grow(&s->seg, &s->cap_seg, n + SPM_SPACE_LEN, 1)) return false;
        memcpy(s->seg, SPM_SPACE, SPM_SPACE_LEN);
        memcpy(s->seg + SPM_SPACE_LEN, w, n);
        size_t start = 0;
        while (start < n) {
            int32_t id = -1;
            size_t end = n;
            while (end > start) {
                const uint8_t *q = start ? w + start : s->seg;
                size_t ql = start ? end - start : end + SPM_SPACE_LEN;
                if (ql <= t->max_token_len && (id = text_lookup(t, q, ql)) >= 0) break;
                do end--;
                while (end > start && (w[end] & 0xC0) == 0x80);
            }
            if (id < 0) break;
            if (!push_id(s, id)) return false;
            start = end;
        }
        if (start == n) return true;
    }
    s->n_ids = first;
    return t->unk < 0 || push_id(s, t->unk);
}

/* BERT's normalizer (drop controls, white space to ' ', spaces around CJK,
 * strip accents by NFD minus Mn, lowercase), then its pre-tokenizer (split
 * on white space, punctuation alone), then WordPiece per word. */
static spud_status wpm_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k;
        uint32_t c = cp_at(p, i, &k);
        i += k;
        utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
        bool ws = c == '\t' || c == '\n' || c == '\r' || (toku_flags(c) & TOKU_WS);
        bool ctl = !(c == '\t' || c == '\n' || c == '\r') &&
                   (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CN ||
                    cat == UTF8PROC_CATEGORY_CO || cat == UTF8PROC_CATEGORY_CS);
        if (c == 0 || c == 0xFFFD || ctl) continue;
        utf8proc_int32_t dec[32];
        utf8proc_ssize_t nd = 1;
        dec[0] = (utf8proc_int32_t)c;
        if (ws) {
            dec[0] = ' ';
        } else if (c >= 0x80) {
            int last = 0;
            nd = utf8proc_decompose_char((utf8proc_int32_t)c, dec, 32, UTF8PROC_DECOMPOSE, &last);
            if (nd < 0 || nd > 32) nd = 1, dec[0] = (utf8proc_int32_t)c;
        }
        if (!grow(&s->norm, &s->cap_norm, o + 4 * (size_t)nd + 2, 1)) return nomem();
        bool cjk = bert_chinese(c);
        if (cjk) s->norm[o++] = ' ';
        for (utf8proc_ssize_t j = 0; j < nd; j++) {
            if (utf8proc_category(dec[j]) == UTF8PROC_CATEGORY_MN) continue;
            o += utf8_put((uint32_t)utf8proc_tolower(dec[j]), (char *)s->norm + o);
        }
        if (cjk) s->norm[o++] = ' ';
    }
    const uint8_t *q = s->norm;
    for (size_t i = 0; i < o;) {
        if (q[i] == ' ') {
            i++;
            continue;
        }
        size_t k, start = i, chars = 0;
        uint32_t c = cp_at(q, i, &k);
        if (bert_punct(c)) {
            i += k, chars = 1;
        } else {
            while (i < o && q[i] != ' ') {
                c = cp_at(q, i, &k);
                if (bert_punct(c)) break;
                i += k, chars++;
            }
        }
        if (s->collect) {
            s->collect(s->collect_ud, (const char *)q + start, i - start);
        } else if (!wpm_word(t, s, q + start, i - start, chars)) {
            return nomem();
        }
    }
    return SPUD_OK;
}

/* -- one raw fragment (no special tokens inside) -- */

#define BLOCK_BYTES (1u << 20)

/* Where a long fragment may be cut without changing any result: just after
 * a '\n' that an ASCII letter follows. Every pre-tokenizer here ends a piece
 * at such a '\n' (none glues a newline to a following letter), NFC cannot
 * reach across an ASCII letter, and WordPiece splits at white space. Cutting
 * there bounds the copies that UTF-8 repair and NFC make. */
static size_t block_end(const uint8_t *p, size_t n) {
    if (n <= BLOCK_BYTES) return n;
    for (size_t i = BLOCK_BYTES; i + 1 < n; i++) {
        if (p[i - 1] == '\n' && ascii_alpha(p[i])) return i;
    }
    return n;
}

static spud_status raw_block(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n, bool prefix);

static spud_status raw_fragment(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n, bool *prev_special) {
    if (n == 0) return SPUD_OK;
    bool prefix = *prev_special && t->add_space_prefix;
    *prev_special = false;
    if (t->kind == TOK_SPM) return raw_block(t, s, p, n, prefix);
    for (size_t done = 0; done < n;) {
        size_t k = block_end(p + done, n - done);
        spud_status st = raw_block(t, s, p + done, k, false);
        if (st) return st;
        done += k;
    }
    return SPUD_OK;
}

static spud_status raw_block(const spud_tokenizer *t, scratch *s, const uint8_t *p, size_t n, bool prefix) {
    spud_status st;
    if ((st = make_valid(s, &p, &n))) return st;
    if (t->kind == TOK_WPM) return wpm_fragment(t, s, p, n);
    if (t->nfc && (st = make_nfc(s, &p, &n))) return st;
    if (n > 4096 && !s->use_cache) s->use_cache = wc_ready(s); /* without it: slower, same ids */
    if (t->kind == TOK_SPM) return spm_fragment(t, s, p, n, prefix);
    if (t->n_split && !s->md) {
        bool pcre = false;
        for (int i = 0; i < t->n_split; i++) pcre |= t->split[i].kind == SPLIT_PCRE;
        if (pcre && !(s->md = pcre2_match_data_create(1, t->gctx))) return nomem();
    }
    return pre_tokenize(t, s, 0, p, n);
}

static bool is_c_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Cut special tokens out of the text leftmost-longest (as Hugging Face's
 * added-token splitter and tiktoken do) and tokenize the raw text between
 * them. A token with lstrip/rstrip also takes the white space beside it.
 * With a taint mask, control and unknown tokens, and user-defined ones that
 * structural marks, match only where none of their bytes is tainted (other
 * user-defined ones match anywhere, as always). */
static spud_status encode_text(const spud_tokenizer *t, scratch *s, const uint8_t *text, size_t len,
                               bool parse_special, const uint8_t *taint, const uint8_t *structural) {
    const uint16_t special = parse_special ? ATTR_CONTROL | ATTR_UNKNOWN : 0;
    bool prev_special = true;
    spud_status st;
    size_t start = 0;
    if (t->n_nodes && (parse_special || t->has_user_defined)) {
        for (size_t i = 0; i < len;) {
            bool clean = !taint || !taint[i];
            const bool *first = parse_special && clean ? t->first_special : t->first_user;
            if (!first[text[i]]) {
                i++;
                continue;
            }
            int32_t node = 0, best = -1;
            size_t best_len = 0;
            for (size_t j = i; j < len; j++) {
                node = u64map_get(&t->trie, (uint64_t)node << 8 | text[j]);
                if (node < 0) break;
                if (taint && taint[j]) clean = false;
                uint16_t active = ATTR_USER_DEFINED | (clean ? special : 0);
                int32_t id = t->node_id[node];
                if (id >= 0 && (t->attr[id] & active) && (clean || !structural || !structural[id]))
                    best = id, best_len = j + 1 - i;
            }
            if (best < 0) {
                i++;
                continue;
            }
            size_t end = i;
            if (t->attr[best] & ATTR_LSTRIP) {
                while (end > start && is_c_space(text[end - 1])) end--;
            }
            if ((st = raw_fragment(t, s, text + start, end - start, &prev_special))) return st;
            if (!s->collect && !push_id(s, best)) return nomem();
            prev_special = true;
            i += best_len;
            if (t->attr[best] & ATTR_RSTRIP) {
                while (i < len && is_c_space(text[i])) i++;
            }
            start = i;
        }
    }
    return raw_fragment(t, s, text + start, len - start, &prev_special);
}

static spud_status encode(const spud_tokenizer *t, const char *text, size_t len, bool add_special,
                          bool parse_special, const uint8_t *taint, const uint8_t *structural, int32_t **ids,
                          size_t *n_ids) {
    scratch s;
    spud_status st = SPUD_OK;
    *ids = NULL;
    *n_ids = 0;
    if (!t || (!text && len)) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_encode: no tokenizer or text");
    if (!text) text = ""; /* no arithmetic on NULL below */
    memset(&s, 0, sizeof s);
    if (!grow(&s.ids, &s.cap_ids, 16 + (len < (1u << 20) ? len / 3 : len / 8), sizeof *s.ids)) goto oom;
    if (add_special && t->add_bos) {
        int32_t first = t->kind == TOK_WPM ? t->cls : t->bos;
        if (first >= 0 && !push_id(&s, first)) goto oom;
    }
    if ((st = encode_text(t, &s, (const uint8_t *)text, len, parse_special, taint, structural))) goto fail;
    if (add_special && t->kind == TOK_WPM && t->add_sep && t->sep >= 0 && !push_id(&s, t->sep)) goto oom;
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

spud_status spud_tok_encode(const spud_tokenizer *t, const char *text, size_t len, bool add_special,
                            bool parse_special, int32_t **ids, size_t *n_ids) {
    return encode(t, text, len, add_special, parse_special, NULL, NULL, ids, n_ids);
}

spud_status spud_tok_encode_masked(const spud_tokenizer *t, const char *text, size_t len, bool add_special,
                                   const uint8_t *taint, const uint8_t *structural, int32_t **ids, size_t *n_ids) {
    return encode(t, text, len, add_special, true, taint, structural, ids, n_ids);
}

spud_status spud_tok_pre_tokenize(const spud_tokenizer *t, const char *text, size_t len,
                                  void (*fn)(void *ud, const char *piece, size_t len), void *ud) {
    scratch s;
    if (!t || !fn || (!text && len)) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_pre_tokenize: bad arguments");
    if (!text) text = "";
    memset(&s, 0, sizeof s);
    s.collect = fn;
    s.collect_ud = ud;
    spud_status st = encode_text(t, &s, (const uint8_t *)text, len, false, NULL, NULL);
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

spud_status spud_tok_decode(const spud_tokenizer *t, const int32_t *ids, size_t n_ids, bool render_special,
                            char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    if (!t || (!ids && n_ids)) return spud_errorf(SPUD_ERR_INVALID, "spud_tok_decode: no tokenizer or ids");
    uint16_t skip = render_special ? 0 : ATTR_CONTROL | ATTR_UNKNOWN;
    uint64_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            return spud_errorf(SPUD_ERR_RANGE, "token id %d is out of range (vocabulary of %d tokens)", id,
                               t->n_vocab);
        if (!(t->attr[id] & skip)) total += t->piece_off[id + 1] - t->piece_off[id];
    }
    if (total >= SIZE_MAX) return nomem();
    char *out = spud_malloc((size_t)total + 1);
    if (!out) return nomem();
    size_t o = 0;
    bool first = true;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (t->attr[id] & skip) continue;
        const char *piece = t->piece_blob + t->piece_off[id];
        size_t k = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
        /* SentencePiece's prefixed space and WordPiece's word-start mark come
         * back as a leading space: drop it from the first piece that has
         * text, as the reference decoders do */
        if (first && k > 0) {
            first = false;
            if ((t->attr[id] & ATTR_NORMAL) && piece[0] == ' ' &&
                ((t->kind == TOK_SPM && t->add_space_prefix) || t->kind == TOK_WPM))
                piece++, k--;
        }
        memcpy(out + o, piece, k);
        o += k;
    }
    out[o] = 0;
    *text = out;
    *len = o;
    return SPUD_OK;
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
