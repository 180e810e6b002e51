/* vocab_convert.c: Hugging Face tokenizer.json and tiktoken rank files ->
 * vocab-only GGUF metadata. See vocab_convert.h for what maps to what.
 *
 * Layout: a growing vocabulary (texts, types, scores, merges); reading JSON;
 * the Hugging Face path (model kind, pre-tokenizer name, added tokens,
 * special ids and flags, chat templates); the tiktoken path (rank file
 * parsing, merges recovered from ranks, encodings' special tokens); writing.
 */
#include "vocab_convert.h"
#include "tokenizer.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TYPE_NORMAL = 1, TYPE_UNKNOWN = 2, TYPE_CONTROL = 3, TYPE_USER_DEFINED = 4, TYPE_UNUSED = 5, TYPE_BYTE = 6 };

#define SPACE_MARK "\xE2\x96\x81" /* U+2581 */

/* ---- the vocabulary being built ---- */

typedef struct {
    int32_t n;      /* tokens (ids 0..n-1) */
    char **text;    /* (n) owned; NULL: id not given yet */
    uint64_t *len;  /* (n) */
    int32_t *type;  /* (n) */
    float *score;   /* (n) */
    char **merges;  /* (n_merges) "A B", owned */
    size_t n_merges, cap_merges;
    const char *model, *pre;
    bool add_space_prefix, has_add_space_prefix;
    bool ignore_merges, has_ignore_merges;
    bool add_bos, has_add_bos, add_eos, has_add_eos;
    int32_t bos, eos, unk, pad, sep, cls, mask; /* -1: none */
} vocab;

static spud_status nomem(void) { return spud_errorf(SPUD_ERR_NOMEM, "convert: out of memory"); }

static void vocab_free(vocab *v) {
    for (int32_t i = 0; i < v->n; i++) spud_free(v->text ? v->text[i] : NULL);
    for (size_t i = 0; i < v->n_merges; i++) spud_free(v->merges[i]);
    spud_free(v->text);
    spud_free(v->len);
    spud_free(v->type);
    spud_free(v->score);
    spud_free(v->merges);
}

static spud_status vocab_init(vocab *v, int32_t n) {
    memset(v, 0, sizeof *v);
    v->bos = v->eos = v->unk = v->pad = v->sep = v->cls = v->mask = -1;
    v->n = n;
    v->text = spud_calloc((size_t)n, sizeof *v->text);
    v->len = spud_calloc((size_t)n, sizeof *v->len);
    v->type = spud_calloc((size_t)n, sizeof *v->type);
    v->score = spud_calloc((size_t)n, sizeof *v->score);
    if (!v->text || !v->len || !v->type || !v->score) return nomem();
    return SPUD_OK;
}

/* Set token id's text (copied) and type; an id given twice must agree. */
static spud_status vocab_set(vocab *v, int64_t id, const char *s, size_t n, int32_t type) {
    if (id < 0 || id >= v->n) return spud_errorf(SPUD_ERR_FORMAT, "token id %lld is out of range", (long long)id);
    if (v->text[id]) {
        if (v->len[id] != n || memcmp(v->text[id], s, n) != 0)
            return spud_errorf(SPUD_ERR_FORMAT, "token id %lld is given two different texts", (long long)id);
        v->type[id] = type;
        return SPUD_OK;
    }
    v->text[id] = spud_strndup(s, n);
    if (!v->text[id]) return nomem();
    v->len[id] = n;
    v->type[id] = type;
    return SPUD_OK;
}

/* Ids that no source named become "[PAD<id>]", UNUSED (llama.cpp's filler). */
static spud_status vocab_fill(vocab *v) {
    for (int32_t id = 0; id < v->n; id++) {
        if (v->text[id]) continue;
        char b[32];
        int k = snprintf(b, sizeof b, "[PAD%d]", id);
        spud_status st = vocab_set(v, id, b, (size_t)k, TYPE_UNUSED);
        if (st) return st;
    }
    return SPUD_OK;
}

static spud_status add_merge(vocab *v, const char *a, size_t na, const char *b, size_t nb) {
    if (memchr(a, ' ', na) || memchr(b, ' ', nb))
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "a merge part contains a space: GGUF's \"A B\" form cannot hold it");
    if (v->n_merges == v->cap_merges) {
        size_t c = v->cap_merges ? v->cap_merges * 2 : 1024;
        char **m = spud_realloc(v->merges, c * sizeof *m);
        if (!m) return nomem();
        v->merges = m, v->cap_merges = c;
    }
    char *m = spud_malloc(na + nb + 2);
    if (!m) return nomem();
    memcpy(m, a, na);
    m[na] = ' ';
    memcpy(m + na + 1, b, nb);
    m[na + nb + 1] = 0;
    v->merges[v->n_merges++] = m;
    return SPUD_OK;
}

/* ---- a small map from byte strings to ids ---- */

typedef struct {
    uint64_t *hash;
    int32_t *id; /* -1: empty */
    uint64_t mask;
    const char *const *key; /* key[id], klen[id] */
    const uint64_t *klen;
} str_map;

static uint64_t fnv(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static spud_status map_init(str_map *m, size_t n, const char *const *key, const uint64_t *klen) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n + 1) cap <<= 1;
    m->hash = spud_malloc(cap * sizeof *m->hash);
    m->id = spud_malloc(cap * sizeof *m->id);
    if (!m->hash || !m->id) return nomem();
    for (uint64_t i = 0; i < cap; i++) m->id[i] = -1;
    m->mask = cap - 1;
    m->key = key, m->klen = klen;
    return SPUD_OK;
}

static void map_free(str_map *m) {
    spud_free(m->hash);
    spud_free(m->id);
}

static int32_t map_get(const str_map *m, const void *s, size_t n) {
    uint64_t h = fnv(s, n);
    for (uint64_t i = h & m->mask; m->id[i] >= 0; i = (i + 1) & m->mask) {
        int32_t id = m->id[i];
        if (m->hash[i] == h && m->klen[id] == n && memcmp(m->key[id], s, n) == 0) return id;
    }
    return -1;
}

/* Insert key[id] unless an equal key is there; returns the id now stored. */
static int32_t map_put(str_map *m, int32_t id) {
    uint64_t h = fnv(m->key[id], (size_t)m->klen[id]);
    uint64_t i = h & m->mask;
    for (; m->id[i] >= 0; i = (i + 1) & m->mask) {
        int32_t o = m->id[i];
        if (m->hash[i] == h && m->klen[o] == m->klen[id] && memcmp(m->key[o], m->key[id], (size_t)m->klen[id]) == 0)
            return o;
    }
    m->hash[i] = h, m->id[i] = id;
    return id;
}

/* ---- JSON ---- */

static spud_status read_json(const char *path, json_object **out) {
    char *data;
    size_t n;
    *out = NULL;
    spud_status st = spud_read_file(path, &data, &n);
    if (st) return st;
    json_tokener *tk = json_tokener_new_ex(64);
    if (!tk) {
        spud_free(data);
        return nomem();
    }
    if (n > INT32_MAX) {
        json_tokener_free(tk);
        spud_free(data);
        return spud_errorf(SPUD_ERR_RANGE, "%s: too large", path);
    }
    json_object *j = json_tokener_parse_ex(tk, data, (int)n);
    enum json_tokener_error e = json_tokener_get_error(tk);
    size_t at = json_tokener_get_parse_end(tk);
    json_tokener_free(tk);
    spud_free(data);
    if (!j || e != json_tokener_success) {
        json_object_put(j);
        return spud_errorf(SPUD_ERR_FORMAT, "%s: not JSON (%s at byte %zu)", path, json_tokener_error_desc(e), at);
    }
    *out = j;
    return SPUD_OK;
}

static json_object *jget(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v)) return NULL;
    return v;
}

static const char *jstr(json_object *o, const char *key) {
    json_object *v = jget(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static bool jstr_eq(json_object *o, const char *key, const char *want) {
    const char *s = jstr(o, key);
    return s && strcmp(s, want) == 0;
}

/* A bool key: *present says whether it is there and a bool. */
static bool jbool(json_object *o, const char *key, bool *present) {
    json_object *v = jget(o, key);
    *present = v && json_object_is_type(v, json_type_boolean);
    return *present && json_object_get_boolean(v);
}

/* ---- Hugging Face ---- */

/* Split regexes as tokenizer.json spells them (after JSON unescaping, with
 * the CR/LF characters some files write literally turned into \r \n), and
 * the llama.cpp pre-tokenizer name they make. */
#define HF_LLAMA3                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define HF_QWEN2                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
    "\\s+(?!\\S)|\\s+"
#define HF_O200K                                                                                   \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|" \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define HF_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define HF_DSV3_DIGITS "\\p{N}{1,3}"
#define HF_DSV3_CJK "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+"
#define HF_DSV3_MAIN                                                                               \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static const struct {
    const char *pre;
    const char *rx[3];
    bool nfc;
} hf_pres[] = {
    {"llama-bpe", {HF_LLAMA3}, false},
    {"qwen2", {HF_QWEN2}, true},
    {"gpt-4o", {HF_O200K}, false},
    {"gpt-2", {HF_GPT2}, false},
    {"deepseek-v3", {HF_DSV3_DIGITS, HF_DSV3_CJK, HF_DSV3_MAIN}, false},
};

/* The regex with literal CR, LF and tab written as escapes (owned). */
static char *canon_regex(const char *s) {
    size_t n = strlen(s), o = 0;
    char *out = spud_malloc(2 * n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r' || c == '\n' || c == '\t') {
            out[o++] = '\\';
            out[o++] = c == '\r' ? 'r' : c == '\n' ? 'n' : 't';
        } else {
            out[o++] = c;
        }
    }
    out[o] = 0;
    return out;
}

/* Collect the Split regexes of a pre-tokenizer (in order) into rx[]. */
static spud_status collect_splits(json_object *pt, const char **rx, int *n_rx, bool *byte_level_regex) {
    if (!pt || json_object_is_type(pt, json_type_null)) return SPUD_OK;
    const char *type = jstr(pt, "type");
    if (!type) return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: a pre-tokenizer without a type");
    if (!strcmp(type, "Sequence")) {
        json_object *list = jget(pt, "pretokenizers");
        if (!list || !json_object_is_type(list, json_type_array))
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: a Sequence pre-tokenizer without a list");
        for (size_t i = 0; i < json_object_array_length(list); i++) {
            spud_status st = collect_splits(json_object_array_get_idx(list, i), rx, n_rx, byte_level_regex);
            if (st) return st;
        }
        return SPUD_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        bool present;
        bool use_regex = jbool(pt, "use_regex", &present);
        if (!present) use_regex = true;
        if (jbool(pt, "add_prefix_space", &present))
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "ByteLevel pre-tokenizer with add_prefix_space");
        if (use_regex) *byte_level_regex = true;
        return SPUD_OK;
    }
    if (!strcmp(type, "Split")) {
        const char *r = jstr(jget(pt, "pattern"), "Regex");
        bool present = false;
        if (!r) return spud_errorf(SPUD_ERR_UNSUPPORTED, "Split pre-tokenizer without a regex");
        if (!jstr_eq(pt, "behavior", "Isolated") || jbool(pt, "invert", &present))
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "Split pre-tokenizer with behavior '%s'%s",
                               jstr(pt, "behavior") ? jstr(pt, "behavior") : "?", present ? " (inverted)" : "");
        if (*n_rx == 3) return spud_errorf(SPUD_ERR_UNSUPPORTED, "more than 3 Split pre-tokenizers");
        rx[(*n_rx)++] = r;
        return SPUD_OK;
    }
    return spud_errorf(SPUD_ERR_UNSUPPORTED, "pre-tokenizer type '%s' is not supported", type);
}

/* The llama.cpp pre-tokenizer name of a byte-level BPE tokenizer.json. */
static spud_status hf_pre_name(json_object *root, const char **pre) {
    const char *rx[3] = {0};
    int n_rx = 0;
    bool byte_regex = false;
    spud_status st = collect_splits(jget(root, "pre_tokenizer"), rx, &n_rx, &byte_regex);
    if (st) return st;
    if (byte_regex) {
        if (n_rx) return spud_errorf(SPUD_ERR_UNSUPPORTED, "Split regexes followed by ByteLevel's own regex");
        rx[n_rx++] = HF_GPT2;
    }
    /* normalizer: none, an empty sequence, or NFC */
    json_object *norm = jget(root, "normalizer");
    bool nfc = false;
    if (norm && !json_object_is_type(norm, json_type_null)) {
        const char *type = jstr(norm, "type");
        json_object *list = jget(norm, "normalizers");
        if (type && !strcmp(type, "NFC")) {
            nfc = true;
        } else if (!(type && !strcmp(type, "Sequence") && list && json_object_is_type(list, json_type_array) &&
                     json_object_array_length(list) == 0)) {
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "normalizer '%s' is not supported for byte-level BPE",
                               type ? type : "?");
        }
    }
    for (size_t k = 0; k < sizeof hf_pres / sizeof hf_pres[0]; k++) {
        int m = 0;
        while (m < 3 && hf_pres[k].rx[m]) m++;
        if (m != n_rx || hf_pres[k].nfc != nfc) continue;
        bool same = true;
        for (int i = 0; i < m && same; i++) {
            char *c = canon_regex(rx[i]);
            if (!c) return nomem();
            same = strcmp(c, hf_pres[k].rx[i]) == 0;
            spud_free(c);
        }
        if (same) {
            *pre = hf_pres[k].pre;
            return SPUD_OK;
        }
    }
    return spud_errorf(SPUD_ERR_UNSUPPORTED, "pre-tokenizer (%d split regex%s%s, first '%.80s') is not one spud knows",
                       n_rx, n_rx == 1 ? "" : "es", nfc ? ", NFC" : "", n_rx ? rx[0] : "");
}

/* SentencePiece-style BPE: spaces -> U+2581 (and a prefix?) by the
 * normalizer or a Metaspace pre-tokenizer. */
static spud_status hf_spm_spaces(json_object *root, bool *prefix) {
    json_object *norm = jget(root, "normalizer"), *pt = jget(root, "pre_tokenizer");
    bool replace = false;
    *prefix = false;
    if (norm && !json_object_is_type(norm, json_type_null)) {
        json_object *list = jget(norm, "normalizers");
        size_t n = list && json_object_is_type(list, json_type_array) ? json_object_array_length(list) : 1;
        for (size_t i = 0; i < n; i++) {
            json_object *x = list ? json_object_array_get_idx(list, i) : norm;
            const char *type = jstr(x, "type");
            if (type && !strcmp(type, "Prepend") && jstr_eq(x, "prepend", SPACE_MARK)) {
                *prefix = true;
            } else if (type && !strcmp(type, "Replace") && jstr_eq(jget(x, "pattern"), "String", " ") &&
                       jstr_eq(x, "content", SPACE_MARK)) {
                replace = true;
            } else {
                return spud_errorf(SPUD_ERR_UNSUPPORTED, "normalizer '%s' is not supported for SentencePiece BPE",
                                   type ? type : "?");
            }
        }
    }
    if (pt && !json_object_is_type(pt, json_type_null)) {
        const char *type = jstr(pt, "type");
        bool present;
        if (type && !strcmp(type, "Metaspace")) {
            const char *scheme = jstr(pt, "prepend_scheme");
            replace = true;
            *prefix = scheme ? strcmp(scheme, "never") != 0 : jbool(pt, "add_prefix_space", &present);
            if (scheme && !strcmp(scheme, "first"))
                return spud_errorf(SPUD_ERR_UNSUPPORTED, "Metaspace with prepend_scheme 'first'");
        } else if (type && !strcmp(type, "Split") && jstr_eq(jget(pt, "pattern"), "String", " ") && replace) {
            /* Gemma: splits the normalized text on ' ', which it no longer has */
        } else {
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "pre-tokenizer '%s' is not supported for SentencePiece BPE",
                               type ? type : "?");
        }
    }
    if (!replace) return spud_errorf(SPUD_ERR_UNSUPPORTED, "SentencePiece BPE that does not turn spaces into U+2581");
    return SPUD_OK;
}

/* A token named in tokenizer_config.json: a string or {"content": ...}. */
static const char *config_token(json_object *cfg, const char *key) {
    json_object *v = jget(cfg, key);
    if (!v) return NULL;
    if (json_object_is_type(v, json_type_string)) return json_object_get_string(v);
    return jstr(v, "content");
}

static int32_t find_text(const vocab *v, const str_map *m, const char *s) {
    (void)v;
    return s ? map_get(m, s, strlen(s)) : -1;
}

/* add_bos / add_eos (and the ids) from a TemplateProcessing post-processor. */
static void hf_template(json_object *pp, vocab *v, const str_map *m) {
    if (!pp || json_object_is_type(pp, json_type_null)) return;
    const char *type = jstr(pp, "type");
    if (type && !strcmp(type, "Sequence")) {
        json_object *list = jget(pp, "processors");
        for (size_t i = 0; list && i < json_object_array_length(list); i++)
            hf_template(json_object_array_get_idx(list, i), v, m);
        return;
    }
    if (type && !strcmp(type, "BertProcessing")) {
        json_object *cls = jget(pp, "cls"), *sep = jget(pp, "sep");
        if (cls && json_object_array_length(cls) == 2)
            v->cls = (int32_t)json_object_get_int64(json_object_array_get_idx(cls, 1));
        if (sep && json_object_array_length(sep) == 2)
            v->sep = (int32_t)json_object_get_int64(json_object_array_get_idx(sep, 1));
        return;
    }
    if (!type || strcmp(type, "TemplateProcessing") != 0) return;
    json_object *single = jget(pp, "single");
    size_t n = single && json_object_is_type(single, json_type_array) ? json_object_array_length(single) : 0;
    if (n == 0) return;
    const char *first = jstr(jget(json_object_array_get_idx(single, 0), "SpecialToken"), "id");
    const char *last = jstr(jget(json_object_array_get_idx(single, n - 1), "SpecialToken"), "id");
    if (!v->has_add_bos) {
        v->add_bos = first != NULL, v->has_add_bos = true;
        if (first && find_text(v, m, first) >= 0) v->bos = find_text(v, m, first);
    }
    if (!v->has_add_eos) {
        v->add_eos = last != NULL && n > 1, v->has_add_eos = true;
        if (last && n > 1 && find_text(v, m, last) >= 0) v->eos = find_text(v, m, last);
    }
}

/* "##x" -> "x", "[X]" stays, else U+2581 + text (llama.cpp's BERT spelling). */
static spud_status wordpiece_text(const char *s, size_t n, char **out, size_t *out_n) {
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        *out = spud_strndup(s, n), *out_n = n;
    } else if (n >= 2 && s[0] == '#' && s[1] == '#') {
        *out = spud_strndup(s + 2, n - 2), *out_n = n - 2;
    } else {
        *out = spud_malloc(n + 4);
        if (*out) memcpy(*out, SPACE_MARK, 3), memcpy(*out + 3, s, n), (*out)[n + 3] = 0;
        *out_n = n + 3;
    }
    return *out ? SPUD_OK : nomem();
}

static spud_status hf_convert(const spud_vocab_source *src, json_object *root, json_object *cfg, vocab *v,
                              spud_gguf_writer *w) {
    spud_status st;
    json_object *model = jget(root, "model");
    const char *mtype = jstr(model, "type");
    json_object *jvocab = jget(model, "vocab"), *added = jget(root, "added_tokens");
    bool present;
    if (!model || !jvocab || !json_object_is_type(jvocab, json_type_object))
        return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: no model.vocab object");
    bool wordpiece = mtype && !strcmp(mtype, "WordPiece");
    bool bpe = mtype && !strcmp(mtype, "BPE");
    if (!mtype) bpe = jget(model, "merges") != NULL, wordpiece = !bpe;
    if (!bpe && !wordpiece) return spud_errorf(SPUD_ERR_UNSUPPORTED, "tokenizer model '%s' is not supported", mtype);

    /* size: the largest id named anywhere */
    int64_t max_id = -1;
    json_object_object_foreach(jvocab, key0, val0) {
        (void)key0;
        int64_t id = json_object_get_int64(val0);
        if (id > max_id) max_id = id;
    }
    size_t n_added = added && json_object_is_type(added, json_type_array) ? json_object_array_length(added) : 0;
    for (size_t i = 0; i < n_added; i++) {
        int64_t id = json_object_get_int64(jget(json_object_array_get_idx(added, i), "id"));
        if (id > max_id) max_id = id;
    }
    if (max_id < 0 || max_id >= INT32_MAX - 1) return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: no tokens");
    if ((st = vocab_init(v, (int32_t)max_id + 1))) return st;

    /* kind */
    bool byte_fallback = jbool(model, "byte_fallback", &present);
    json_object *dec = jget(root, "decoder");
    bool spm = bpe && (byte_fallback || (jstr(dec, "type") && !strcmp(jstr(dec, "type"), "Metaspace")));
    if (bpe && !spm) {
        if ((st = hf_pre_name(root, &v->pre))) return st;
        v->model = "gpt2";
        v->ignore_merges = jbool(model, "ignore_merges", &present), v->has_ignore_merges = true;
    } else if (spm) {
        v->model = "llama", v->pre = "default";
        if ((st = hf_spm_spaces(root, &v->add_space_prefix))) return st;
        v->has_add_space_prefix = true;
    } else {
        v->model = "bert", v->pre = "default";
    }
    const char *cont = jstr(model, "continuing_subword_prefix");
    if (bpe && cont && *cont) return spud_errorf(SPUD_ERR_UNSUPPORTED, "BPE with continuing_subword_prefix '%s'", cont);
    if (bpe && jstr(model, "end_of_word_suffix") && *jstr(model, "end_of_word_suffix"))
        return spud_errorf(SPUD_ERR_UNSUPPORTED, "BPE with end_of_word_suffix");

    /* vocabulary */
    const char *unk_text = jstr(model, "unk_token");
    json_object_object_foreach(jvocab, key, val) {
        int64_t id = json_object_get_int64(val);
        size_t n = strlen(key);
        int32_t type = TYPE_NORMAL;
        if (spm && n == 6 && !strncmp(key, "<0x", 3) && key[5] == '>') type = TYPE_BYTE;
        if (unk_text && !strcmp(key, unk_text)) type = TYPE_UNKNOWN;
        if (wordpiece) {
            char *t;
            size_t tn;
            if ((st = wordpiece_text(key, n, &t, &tn))) return st;
            st = vocab_set(v, id, t, tn, type);
            spud_free(t);
        } else {
            st = vocab_set(v, id, key, n, type);
        }
        if (st) return st;
    }
    for (size_t i = 0; i < n_added; i++) {
        json_object *a = json_object_array_get_idx(added, i);
        json_object *c = jget(a, "content");
        if (!c || !json_object_is_type(c, json_type_string))
            return spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: added_tokens[%zu] without content", i);
        int64_t id = json_object_get_int64(jget(a, "id"));
        bool special = jbool(a, "special", &present);
        int32_t type = special ? TYPE_CONTROL : TYPE_USER_DEFINED;
        if (unk_text && !strcmp(json_object_get_string(c), unk_text)) type = TYPE_UNKNOWN;
        /* an added token keeps its text: it is matched as written */
        if (id >= 0 && id < v->n && v->text[id]) spud_free(v->text[id]), v->text[id] = NULL;
        if ((st = vocab_set(v, id, json_object_get_string(c), (size_t)json_object_get_string_len(c), type))) return st;
    }
    if ((st = vocab_fill(v))) return st;

    /* merges: "a b" strings (tokenizers < 0.20) or [a, b] pairs */
    json_object *merges = jget(model, "merges");
    size_t n_merges = merges && json_object_is_type(merges, json_type_array) ? json_object_array_length(merges) : 0;
    str_map m = {0};
    if ((st = map_init(&m, (size_t)v->n, (const char *const *)v->text, v->len))) goto out;
    for (int32_t id = 0; id < v->n; id++) (void)map_put(&m, id);
    for (size_t r = 0; r < n_merges; r++) {
        json_object *x = json_object_array_get_idx(merges, r);
        const char *a, *b;
        size_t na, nb;
        if (json_object_is_type(x, json_type_array) && json_object_array_length(x) == 2) {
            json_object *xa = json_object_array_get_idx(x, 0), *xb = json_object_array_get_idx(x, 1);
            a = json_object_get_string(xa), na = (size_t)json_object_get_string_len(xa);
            b = json_object_get_string(xb), nb = (size_t)json_object_get_string_len(xb);
        } else if (json_object_is_type(x, json_type_string)) {
            a = json_object_get_string(x);
            const char *sp = strchr(a, ' ');
            if (!sp) {
                st = spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: merge %zu '%s' is not two tokens", r, a);
                goto out;
            }
            na = (size_t)(sp - a), b = sp + 1, nb = strlen(b);
        } else {
            st = spud_errorf(SPUD_ERR_FORMAT, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", r);
            goto out;
        }
        if ((st = add_merge(v, a, na, b, nb))) goto out;
        if (spm) { /* score: the earlier the merge that makes a token, the higher */
            char *cat = spud_malloc(na + nb + 1);
            if (!cat) {
                st = nomem();
                goto out;
            }
            memcpy(cat, a, na), memcpy(cat + na, b, nb);
            int32_t id = map_get(&m, cat, na + nb);
            spud_free(cat);
            if (id >= 0 && v->score[id] == 0) v->score[id] = -(float)(r + 1);
        }
    }
    if (spm) { /* tokens no merge makes (characters, specials): below every merged one */
        for (int32_t id = 0; id < v->n; id++)
            if (v->score[id] == 0 && v->type[id] == TYPE_NORMAL) v->score[id] = -(float)(n_merges + 1 + (size_t)id);
    }

    /* special ids and flags */
    v->unk = find_text(v, &m, unk_text);
    if (cfg) {
        static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "pad_token",
                                           "sep_token", "cls_token", "mask_token"};
        int32_t *slots[] = {&v->bos, &v->eos, &v->unk, &v->pad, &v->sep, &v->cls, &v->mask};
        for (size_t k = 0; k < 7; k++) {
            const char *s = config_token(cfg, keys[k]);
            int32_t id = find_text(v, &m, s);
            if (s && id < 0 && wordpiece) { /* BERT specials are "[X]": unchanged */
                id = find_text(v, &m, s);
            }
            if (id >= 0) *slots[k] = id;
        }
        v->add_bos = jbool(cfg, "add_bos_token", &v->has_add_bos);
        v->add_eos = jbool(cfg, "add_eos_token", &v->has_add_eos);
    }
    hf_template(jget(root, "post_processor"), v, &m);
    if (wordpiece) { /* [CLS] text [SEP] */
        v->has_add_bos = v->has_add_eos = false;
        if (v->cls < 0) v->cls = find_text(v, &m, "[CLS]");
        if (v->sep < 0) v->sep = find_text(v, &m, "[SEP]");
        if (v->bos < 0) v->bos = v->cls;
    }

    /* chat templates: a string, or a list of {name, template} */
    json_object *ct = jget(cfg, "chat_template");
    if (ct && json_object_is_type(ct, json_type_string)) {
        if ((st = spud_gguf_writer_set_str(w, "tokenizer.chat_template", json_object_get_string(ct)))) goto out;
    } else if (ct && json_object_is_type(ct, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(ct); i++) {
            json_object *x = json_object_array_get_idx(ct, i);
            const char *name = jstr(x, "name"), *tpl = jstr(x, "template");
            if (!name || !tpl) continue;
            char key[256];
            if (!strcmp(name, "default")) snprintf(key, sizeof key, "tokenizer.chat_template");
            else snprintf(key, sizeof key, "tokenizer.chat_template.%s", name);
            if ((st = spud_gguf_writer_set_str(w, key, tpl))) goto out;
        }
    }
    (void)src;
    st = SPUD_OK;
out:
    map_free(&m);
    return st;
}

/* ---- tiktoken ---- */

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* Decode base64 s[0..n) into out (capacity >= n); returns the length or -1. */
static long b64_decode(const char *s, size_t n, uint8_t *out) {
    uint32_t acc = 0;
    int bits = 0;
    long o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=') break;
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

typedef struct {
    char **bytes; /* (n) token bytes by rank; NULL: no token */
    uint64_t *len;
    int32_t n;
} rank_table;

static void ranks_free(rank_table *r) {
    for (int32_t i = 0; i < r->n; i++) spud_free(r->bytes[i]);
    spud_free(r->bytes);
    spud_free(r->len);
}

static spud_status ranks_set(rank_table *r, int64_t rank, const char *b64, size_t n) {
    if (rank < 0 || rank >= INT32_MAX / 2) return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: rank %lld out of range", (long long)rank);
    if (rank >= r->n) {
        int32_t c = r->n ? r->n : 1024;
        while (c <= rank) c *= 2;
        char **nb = spud_realloc(r->bytes, (size_t)c * sizeof *nb);
        if (!nb) return nomem();
        r->bytes = nb;
        uint64_t *nl = spud_realloc(r->len, (size_t)c * sizeof *nl);
        if (!nl) return nomem();
        r->len = nl;
        for (int32_t i = r->n; i < c; i++) r->bytes[i] = NULL, r->len[i] = 0;
        r->n = c;
    }
    uint8_t *buf = spud_malloc(n + 1);
    if (!buf) return nomem();
    long k = b64_decode(b64, n, buf);
    if (k <= 0) {
        spud_free(buf);
        return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: rank %lld: bad base64 '%.*s'", (long long)rank, (int)n, b64);
    }
    if (r->bytes[rank]) {
        spud_free(buf);
        return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: rank %lld given twice", (long long)rank);
    }
    r->bytes[rank] = (char *)buf;
    r->len[rank] = (uint64_t)k;
    return SPUD_OK;
}

/* The npm package's "! <first rank> <base64> <base64> ..." list, or lines
 * "<base64> <rank>" of a .tiktoken file. */
static spud_status parse_ranks(const char *s, size_t n, bool npm, rank_table *r) {
    spud_status st;
    size_t i = 0;
    int64_t next = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r')) i++;
        size_t a = i;
        while (i < n && s[i] != ' ' && s[i] != '\n' && s[i] != '\r') i++;
        if (i == a) break;
        if (npm) {
            if (i - a == 1 && s[a] == '!') {
                while (i < n && s[i] == ' ') i++;
                char *end;
                next = strtoll(s + i, &end, 10);
                if (end == s + i) return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: '!' without a rank");
                i = (size_t)(end - s);
                continue;
            }
            if ((st = ranks_set(r, next++, s + a, i - a))) return st;
        } else {
            size_t b64_len = i - a;
            while (i < n && s[i] == ' ') i++;
            char *end;
            int64_t rank = strtoll(s + i, &end, 10);
            if (end == s + i) return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: a line without a rank");
            i = (size_t)(end - s);
            if ((st = ranks_set(r, rank, s + a, b64_len))) return st;
        }
    }
    while (r->n > 0 && !r->bytes[r->n - 1]) r->n--;
    return SPUD_OK;
}

static char *gpt2_text(const char *b, size_t n, size_t *out_n) {
    char *t = spud_malloc(2 * n + 1);
    if (!t) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += spud_tok_gpt2_byte_utf8((uint8_t)b[i], t + o);
    t[o] = 0;
    *out_n = o;
    return t;
}

typedef struct {
    const char *name;
    const char *pre;
    const char *specials; /* "id text;id text;..." */
    int32_t n_vocab;      /* 0: from ranks and specials */
    const char *bos, *eos;
} tiktoken_encoding;

static const tiktoken_encoding encodings[] = {
    {"r50k_base", "gpt-2", "50256 <|endoftext|>", 0, "<|endoftext|>", "<|endoftext|>"},
    {"p50k_base", "gpt-2", "50256 <|endoftext|>", 0, "<|endoftext|>", "<|endoftext|>"},
    {"cl100k_base", "dbrx",
     "100257 <|endoftext|>;100258 <|fim_prefix|>;100259 <|fim_middle|>;100260 <|fim_suffix|>;100276 <|endofprompt|>", 0,
     "<|endoftext|>", "<|endoftext|>"},
    {"o200k_base", "gpt-4o", "199999 <|endoftext|>;200018 <|endofprompt|>", 0, "<|endoftext|>", "<|endoftext|>"},
    /* gpt-oss's harmony format: o200k_base ranks + these, the rest of
     * 200000..201087 reserved, as tiktoken's o200k_harmony defines them */
    {"o200k_harmony", "gpt-4o",
     "199998 <|startoftext|>;199999 <|endoftext|>;200002 <|return|>;200003 <|constrain|>;200005 <|channel|>;"
     "200006 <|start|>;200007 <|end|>;200008 <|message|>;200012 <|call|>;200018 <|endofprompt|>",
     201088, "<|startoftext|>", "<|return|>"},
};

/* tiktoken's merging of one token's bytes, stopped before its own rank: the
 * two parts it ends with are the merge that makes it. */
static spud_status recover_merge(const rank_table *r, const str_map *m, int32_t rank, int32_t *left, int32_t *right) {
    size_t n = (size_t)r->len[rank];
    const char *b = r->bytes[rank];
    uint32_t start[256];
    size_t k = n;
    if (n > 255) return spud_errorf(SPUD_ERR_UNSUPPORTED, "tiktoken: token %d is longer than 255 bytes", rank);
    for (size_t i = 0; i <= n; i++) start[i] = (uint32_t)i;
    for (;;) {
        int32_t best = INT32_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < k; i++) {
            int32_t pr = map_get(m, b + start[i], start[i + 2] - start[i]);
            if (pr >= 0 && pr < rank && pr < best) best = pr, bi = i;
        }
        if (best == INT32_MAX) break;
        memmove(start + bi + 1, start + bi + 2, (k - bi - 1) * sizeof *start);
        k--;
    }
    if (k != 2)
        return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: token %d does not come from two tokens (%zu parts)", rank, k);
    *left = map_get(m, b, start[1]);
    *right = map_get(m, b + start[1], start[2] - start[1]);
    if (*left < 0 || *right < 0) return spud_errorf(SPUD_ERR_FORMAT, "tiktoken: token %d: parts are not tokens", rank);
    return SPUD_OK;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static spud_status tiktoken_convert(const spud_vocab_source *src, vocab *v) {
    spud_status st;
    char *data = NULL;
    size_t n;
    json_object *root = NULL;
    rank_table r = {0};
    str_map m = {0};
    const tiktoken_encoding *enc = NULL;
    const char *name = src->encoding;
    if (!name) name = base_name(src->tiktoken);
    for (size_t k = 0; k < sizeof encodings / sizeof encodings[0]; k++) {
        size_t l = strlen(encodings[k].name);
        if (!strncmp(name, encodings[k].name, l) && (src->encoding ? name[l] == 0 : name[l] == '.')) enc = &encodings[k];
    }
    if (!enc)
        return spud_errorf(SPUD_ERR_UNSUPPORTED,
                           "tiktoken encoding '%s' is not known (r50k_base, p50k_base, cl100k_base, o200k_base, "
                           "o200k_harmony; name it with --encoding)",
                           name);
    if ((st = spud_read_file(src->tiktoken, &data, &n))) return st;
    size_t i0 = 0;
    while (i0 < n && (data[i0] == ' ' || data[i0] == '\n')) i0++;
    if (i0 < n && data[i0] == '{') {
        if ((st = read_json(src->tiktoken, &root))) goto out;
        const char *ranks = jstr(root, "bpe_ranks");
        if (!ranks) {
            st = spud_errorf(SPUD_ERR_FORMAT, "%s: no bpe_ranks", src->tiktoken);
            goto out;
        }
        st = parse_ranks(ranks, strlen(ranks), true, &r);
    } else {
        st = parse_ranks(data, n, false, &r);
    }
    if (st) goto out;
    if (r.n < 256) {
        st = spud_errorf(SPUD_ERR_FORMAT, "%s: %d ranks, fewer than the 256 bytes", src->tiktoken, r.n);
        goto out;
    }

    /* vocabulary size: ranks, specials, the encoding's own size */
    int32_t n_vocab = r.n > enc->n_vocab ? r.n : enc->n_vocab;
    for (const char *p = enc->specials; *p;) {
        int32_t id = (int32_t)strtol(p, NULL, 10);
        if (id + 1 > n_vocab) n_vocab = id + 1;
        p = strchr(p, ';') ? strchr(p, ';') + 1 : p + strlen(p);
    }
    if ((st = vocab_init(v, n_vocab))) goto out;
    v->model = "gpt2";
    v->pre = enc->pre;
    v->has_add_bos = true, v->add_bos = false;
    if ((st = map_init(&m, (size_t)r.n, (const char *const *)r.bytes, r.len))) goto out;
    for (int32_t k = 0; k < r.n; k++) {
        if (!r.bytes[k]) continue;
        if (map_put(&m, k) != k) {
            st = spud_errorf(SPUD_ERR_FORMAT, "tiktoken: ranks %d and %d have the same bytes", map_put(&m, k), k);
            goto out;
        }
        size_t tn;
        char *t = gpt2_text(r.bytes[k], (size_t)r.len[k], &tn);
        if (!t) {
            st = nomem();
            goto out;
        }
        st = vocab_set(v, k, t, tn, TYPE_NORMAL);
        spud_free(t);
        if (st) goto out;
    }
    for (int32_t k = 0; k < r.n; k++) { /* merges in rank order of the token they make */
        if (!r.bytes[k] || r.len[k] < 2) continue;
        int32_t a = -1, b = -1;
        if ((st = recover_merge(&r, &m, k, &a, &b))) goto out;
        if ((st = add_merge(v, v->text[a], (size_t)v->len[a], v->text[b], (size_t)v->len[b]))) goto out;
    }
    for (const char *p = enc->specials; *p;) {
        char *end;
        int32_t id = (int32_t)strtol(p, &end, 10);
        const char *text = end + 1, *e = strchr(text, ';');
        size_t tl = e ? (size_t)(e - text) : strlen(text);
        if ((st = vocab_set(v, id, text, tl, TYPE_CONTROL))) goto out;
        if (!strncmp(text, enc->bos, tl) && strlen(enc->bos) == tl) v->bos = id;
        if (!strncmp(text, enc->eos, tl) && strlen(enc->eos) == tl) v->eos = id;
        p = e ? e + 1 : text + tl;
    }
    if (!strcmp(enc->name, "o200k_harmony")) { /* the reserved rest, named as tiktoken names them */
        for (int32_t id = 200000; id < n_vocab; id++) {
            if (v->text[id]) continue;
            char b[32];
            int k = snprintf(b, sizeof b, "<|reserved_%d|>", id);
            if ((st = vocab_set(v, id, b, (size_t)k, TYPE_CONTROL))) goto out;
        }
    }
    st = vocab_fill(v);
out:
    map_free(&m);
    ranks_free(&r);
    json_object_put(root);
    spud_free(data);
    return st;
}

/* ---- writing ---- */

static spud_status write_vocab(const vocab *v, const spud_vocab_source *src, spud_gguf_writer *w) {
    spud_status st;
    const char *name = src->name;
    if ((st = spud_gguf_writer_set_str(w, "general.architecture", src->arch ? src->arch : "llama"))) return st;
    if (name && (st = spud_gguf_writer_set_str(w, "general.name", name))) return st;
    if ((st = spud_gguf_writer_set_str(w, "tokenizer.ggml.model", v->model))) return st;
    if ((st = spud_gguf_writer_set_str(w, "tokenizer.ggml.pre", v->pre))) return st;
    if ((st = spud_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, v->len,
                                           (uint64_t)v->n)))
        return st;
    if ((st = spud_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPUD_GGUF_INT32, v->type, (uint64_t)v->n)))
        return st;
    if (!strcmp(v->model, "llama") &&
        (st = spud_gguf_writer_set_arr(w, "tokenizer.ggml.scores", SPUD_GGUF_FLOAT32, v->score, (uint64_t)v->n)))
        return st;
    if (v->n_merges && (st = spud_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges,
                                                          NULL, (uint64_t)v->n_merges)))
        return st;
    static const char *const id_keys[] = {"tokenizer.ggml.bos_token_id",        "tokenizer.ggml.eos_token_id",
                                          "tokenizer.ggml.unknown_token_id",    "tokenizer.ggml.padding_token_id",
                                          "tokenizer.ggml.seperator_token_id", "tokenizer.ggml.cls_token_id",
                                          "tokenizer.ggml.mask_token_id"};
    const int32_t ids[] = {v->bos, v->eos, v->unk, v->pad, v->sep, v->cls, v->mask};
    for (size_t k = 0; k < 7; k++) {
        if (ids[k] >= 0 && (st = spud_gguf_writer_set_u32(w, id_keys[k], (uint32_t)ids[k]))) return st;
    }
    if (v->has_add_bos && (st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos))) return st;
    if (v->has_add_eos && (st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos))) return st;
    if (v->has_add_space_prefix &&
        (st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix)))
        return st;
    if (v->has_ignore_merges &&
        (st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.ignore_merges", v->ignore_merges)))
        return st;
    return SPUD_OK;
}

spud_status spud_vocab_convert(const spud_vocab_source *src, spud_gguf_writer *w) {
    spud_status st;
    vocab v;
    json_object *root = NULL, *cfg = NULL;
    memset(&v, 0, sizeof v);
    if (!src || !w || (!src->hf_json == !src->tiktoken))
        return spud_errorf(SPUD_ERR_INVALID, "convert: give exactly one of a tokenizer.json and a tiktoken file");
    if (src->tiktoken) {
        if ((st = tiktoken_convert(src, &v))) goto out;
    } else {
        if ((st = read_json(src->hf_json, &root))) goto out;
        if (src->hf_config && (st = read_json(src->hf_config, &cfg))) goto out;
        if ((st = hf_convert(src, root, cfg, &v, w))) goto out;
    }
    st = write_vocab(&v, src, w);
out:
    vocab_free(&v);
    json_object_put(root);
    json_object_put(cfg);
    if (st) return spud_error_wrap(st, "convert %s", src && src->tiktoken ? src->tiktoken : src ? src->hf_json : "");
    return SPUD_OK;
}

spud_status spud_vocab_convert_file(const spud_vocab_source *src, const char *path) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    if (!w) return nomem();
    spud_status st = spud_vocab_convert(src, w);
    if (!st) st = spud_gguf_writer_write(w, path);
    spud_gguf_writer_free(w);
    return st;
}
