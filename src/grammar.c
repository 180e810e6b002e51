/* grammar.c: GBNF -> byte-level pushdown automaton; token trie; matcher with a
 * lazily built DFA over stack sets (spud_grammar_* in grammar.h).
 *
 * In dependency order:
 *   1. parser: GBNF text -> rules of small ASTs (code points)
 *   2. compiler: ASTs -> one automaton over bytes (Thompson construction;
 *      character classes become UTF-8 byte-range sequences), then checks
 *      (undefined rules, left recursion, rules that never finish)
 *   3. vocabulary: token pieces -> trie in preorder with subtree-skip links
 *   4. matcher: interned stack frames, DFA states = sorted frame sets, masks
 *
 * Automaton: node n has edges BYTE [lo,hi] -> t, TOK ref -> t (one token),
 * EPS -> t, and CALL rule -> t (push t, go to the rule's start). Each rule has
 * one start and one FINAL node; reaching FINAL pops the caller's return node.
 * A stack is a chain of interned frames (node, parent frame); frame 0 is the
 * empty stack. A matcher state is the set of frames (stacks) whose top node
 * has BYTE or TOK edges, plus a flag "root may end here". Calls whose return
 * node can only finish its rule (tail calls) push nothing, so right-recursive
 * lists keep a flat stack.
 */
#include "grammar.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_IDX UINT32_MAX
#define MAX_AST_DEPTH 400
#define MAX_REPEAT 100000u
#define MAX_STATE_FRAMES 20000u /* frames in one matcher state: more is a grammar too ambiguous */

/* Grow *p (of *cap elements of elem bytes) to hold need elements. */
static bool grow_(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 4 / elem) return false;
        nc *= 2;
    }
    void *q = spud_realloc(*p, nc * elem);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}
#define GROW(arr, cap, need) grow_((void **)&(arr), &(cap), (need), sizeof *(arr))

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* ======================================================================
 * 1. Parser
 * ====================================================================== */

enum { A_SEQ, A_ALT, A_REP, A_LIT, A_CLASS, A_REF, A_TOK };

typedef struct {
    uint8_t kind;
    uint16_t depth; /* 1 + deepest child */
    uint32_t a, b;  /* SEQ/ALT: kids[a..a+b); LIT: lit[a..a+b); CLASS: rg[a..a+b); REF: rule a at src b; TOK: ref a; REP: child a */
    uint32_t min, max; /* REP; max NO_IDX: unbounded */
} anode;

typedef struct {
    uint32_t lo, hi;
} crange;

typedef struct {
    uint32_t name_off, name_len; /* in the source */
    uint32_t body;               /* AST node; NO_IDX until defined */
    uint32_t def_pos, ref_pos;   /* first definition / first reference (for messages) */
} prule;

typedef struct {
    int64_t id; /* <[id]>; -1 for <text> */
    uint32_t text_off, text_len;
} ptok;

typedef struct {
    const char *src;
    size_t len, pos;
    anode *an;
    size_t n_an, cap_an;
    uint32_t *kids;
    size_t n_kids, cap_kids;
    uint8_t *lit;
    size_t n_lit, cap_lit;
    crange *rg;
    size_t n_rg, cap_rg;
    prule *rules;
    size_t n_rules, cap_rules;
    ptok *toks;
    size_t n_toks, cap_toks;
    uint32_t *rhash; /* rule index + 1; 0: empty */
    size_t rhash_cap;
    int nest;
    bool failed;
    spud_status st;
} gparser;

static void line_col(const char *src, size_t len, size_t at, unsigned *line, unsigned *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && i < len; i++) {
        if (src[i] == '\n') {
            ++*line;
            *col = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            ++*col; /* columns count code points */
        }
    }
}

__attribute__((format(printf, 3, 4))) static uint32_t perr(gparser *p, size_t at, const char *fmt, ...) {
    if (p->failed) return NO_IDX;
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++) /* one line: no control characters from the text */
        if ((unsigned char)*c < 0x20 || *c == 0x7F) *c = '?';
    unsigned line, col;
    line_col(p->src, p->len, at, &line, &col);
    p->failed = true;
    p->st = spud_errorf(SPUD_ERR_FORMAT, "grammar: line %u, column %u: %s", line, col, msg);
    return NO_IDX;
}

static uint32_t poom(gparser *p) {
    if (!p->failed) {
        p->failed = true;
        p->st = spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
    }
    return NO_IDX;
}

static uint32_t new_anode(gparser *p, anode n) {
    if (!GROW(p->an, p->cap_an, p->n_an + 1)) return poom(p);
    if (n.depth > MAX_AST_DEPTH)
        return perr(p, p->pos, "expression nested too deeply (more than %d levels)", MAX_AST_DEPTH);
    p->an[p->n_an] = n;
    return (uint32_t)p->n_an++;
}

/* A SEQ or ALT of the given children (one child: the child itself). */
static uint32_t new_list(gparser *p, uint8_t kind, const uint32_t *items, size_t n) {
    if (n == 1) return items[0];
    if (!GROW(p->kids, p->cap_kids, p->n_kids + n)) return poom(p);
    uint16_t depth = 0;
    for (size_t i = 0; i < n; i++) {
        p->kids[p->n_kids + i] = items[i];
        if (p->an[items[i]].depth > depth) depth = p->an[items[i]].depth;
    }
    anode a = {.kind = kind, .depth = (uint16_t)(depth + 1), .a = (uint32_t)p->n_kids, .b = (uint32_t)n};
    p->n_kids += n;
    return new_anode(p, a);
}

static bool is_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static void skip_space(gparser *p, bool newline_ok) {
    while (p->pos < p->len) {
        char c = p->src[p->pos];
        if (c == ' ' || c == '\t') {
            p->pos++;
        } else if (c == '#') {
            while (p->pos < p->len && p->src[p->pos] != '\n' && p->src[p->pos] != '\r') p->pos++;
        } else if ((c == '\n' || c == '\r') && newline_ok) {
            p->pos++;
        } else {
            break;
        }
    }
}

static uint32_t name_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* The index of the rule named src[off..off+n), added (undefined) if new. */
static uint32_t rule_index(gparser *p, size_t off, size_t n, size_t ref_pos) {
    if (p->n_rules * 2 + 2 > p->rhash_cap) {
        size_t cap = p->rhash_cap ? p->rhash_cap * 2 : 64;
        uint32_t *h = spud_calloc(cap, sizeof *h);
        if (!h) return poom(p);
        for (size_t i = 0; i < p->n_rules; i++) {
            size_t j = name_hash(p->src + p->rules[i].name_off, p->rules[i].name_len) & (cap - 1);
            while (h[j]) j = (j + 1) & (cap - 1);
            h[j] = (uint32_t)i + 1;
        }
        spud_free(p->rhash);
        p->rhash = h;
        p->rhash_cap = cap;
    }
    size_t j = name_hash(p->src + off, n) & (p->rhash_cap - 1);
    while (p->rhash[j]) {
        prule *r = &p->rules[p->rhash[j] - 1];
        if (r->name_len == n && !memcmp(p->src + r->name_off, p->src + off, n)) return p->rhash[j] - 1;
        j = (j + 1) & (p->rhash_cap - 1);
    }
    if (!GROW(p->rules, p->cap_rules, p->n_rules + 1)) return poom(p);
    p->rules[p->n_rules] = (prule){.name_off = (uint32_t)off, .name_len = (uint32_t)n, .body = NO_IDX,
                                   .def_pos = NO_IDX, .ref_pos = (uint32_t)ref_pos};
    p->rhash[j] = (uint32_t)p->n_rules + 1;
    return (uint32_t)p->n_rules++;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one UTF-8 code point at s[0..n); returns its length, 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

static size_t utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* One character of a literal or class (escapes decoded). false on error. */
static bool parse_char(gparser *p, uint32_t *cp) {
    size_t at = p->pos;
    if (p->pos >= p->len) return perr(p, at, "unexpected end of grammar"), false;
    if (p->src[p->pos] == '\\') {
        p->pos++;
        if (p->pos >= p->len) return perr(p, at, "unexpected end of grammar after '\\'"), false;
        char e = p->src[p->pos++];
        int digits = 0;
        switch (e) {
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        case 't': *cp = '\t'; return true;
        case 'r': *cp = '\r'; return true;
        case 'n': *cp = '\n'; return true;
        case '\\': case '"': case '[': case ']': case '-': case '^': case '/': case '\'':
            *cp = (uint8_t)e;
            return true;
        default:
            return perr(p, at, "unknown escape '\\%c'", e), false;
        }
        uint32_t v = 0;
        for (int i = 0; i < digits; i++) {
            int h = p->pos < p->len ? hexval(p->src[p->pos]) : -1;
            if (h < 0) return perr(p, at, "expecting %d hex digits after '\\%c'", digits, e), false;
            v = (v << 4) | (uint32_t)h;
            p->pos++;
        }
        if (v > 0x10FFFF) return perr(p, at, "code point U+%X is beyond U+10FFFF", v), false;
        *cp = v;
        return true;
    }
    size_t n = utf8_decode((const unsigned char *)p->src + p->pos, p->len - p->pos, cp);
    if (!n) return perr(p, at, "invalid UTF-8 in the grammar"), false;
    p->pos += n;
    return true;
}

static uint32_t parse_literal(gparser *p) {
    size_t at = p->pos++; /* the opening quote */
    uint32_t off = (uint32_t)p->n_lit;
    for (;;) {
        if (p->pos >= p->len) return perr(p, at, "unterminated string literal");
        if (p->src[p->pos] == '"') break;
        uint32_t cp;
        if (!parse_char(p, &cp)) return NO_IDX;
        if (cp >= 0xD800 && cp <= 0xDFFF)
            return perr(p, at, "surrogate code point U+%X in a literal", cp);
        if (!GROW(p->lit, p->cap_lit, p->n_lit + 4)) return poom(p);
        p->n_lit += utf8_encode(cp, p->lit + p->n_lit);
    }
    p->pos++;
    return new_anode(p, (anode){.kind = A_LIT, .depth = 1, .a = off, .b = (uint32_t)(p->n_lit - off)});
}

static int cmp_range(const void *a, const void *b) {
    const crange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : 0;
}

/* Sort and merge rg[off..n_rg), complement it over the scalar values if
 * negate, drop surrogates. Returns the new count (0 on error: p->failed). */
static size_t normalize_class(gparser *p, size_t off, bool negate) {
    size_t n = p->n_rg - off, m = 0, k = 0;
    crange *r = n ? p->rg + off : NULL;
    if (n) qsort(r, n, sizeof *r, cmp_range);
    for (size_t i = 0; i < n; i++) {
        if (m && r[i].lo <= r[m - 1].hi + 1) {
            if (r[i].hi > r[m - 1].hi) r[m - 1].hi = r[i].hi;
        } else {
            r[m++] = r[i];
        }
    }
    crange *t = spud_malloc((m + 2) * sizeof *t), *out = spud_malloc((m + 3) * sizeof *out);
    if (!t || !out) {
        spud_free(t);
        spud_free(out);
        poom(p);
        return 0;
    }
    size_t nt = 0;
    if (negate) {
        uint32_t next = 0;
        for (size_t i = 0; i < m; i++) {
            if (r[i].lo > next) t[nt++] = (crange){next, r[i].lo - 1};
            next = r[i].hi + 1;
        }
        if (next <= 0x10FFFF) t[nt++] = (crange){next, 0x10FFFF};
    } else {
        if (m) memcpy(t, r, m * sizeof *t);
        nt = m;
    }
    for (size_t i = 0; i < nt; i++) { /* split around D800-DFFF */
        crange x = t[i];
        if (x.hi > 0x10FFFF) x.hi = 0x10FFFF;
        if (x.lo > x.hi) continue;
        if (x.hi < 0xD800 || x.lo > 0xDFFF) {
            out[k++] = x;
            continue;
        }
        if (x.lo < 0xD800) out[k++] = (crange){x.lo, 0xD7FF};
        if (x.hi > 0xDFFF) out[k++] = (crange){0xE000, x.hi};
    }
    spud_free(t);
    p->n_rg = off;
    if (!GROW(p->rg, p->cap_rg, off + k + 1)) {
        spud_free(out);
        poom(p);
        return 0;
    }
    memcpy(p->rg + off, out, k * sizeof *out);
    spud_free(out);
    p->n_rg = off + k;
    return k;
}

static uint32_t parse_class(gparser *p) {
    size_t at = p->pos++; /* '[' */
    bool negate = false;
    if (p->pos < p->len && p->src[p->pos] == '^') {
        negate = true;
        p->pos++;
    }
    size_t off = p->n_rg;
    for (;;) {
        if (p->pos >= p->len) return perr(p, at, "unterminated character class");
        if (p->src[p->pos] == ']') break;
        uint32_t lo, hi;
        if (!parse_char(p, &lo)) return NO_IDX;
        hi = lo;
        if (p->pos + 1 < p->len && p->src[p->pos] == '-' && p->src[p->pos + 1] != ']') {
            p->pos++;
            size_t at2 = p->pos;
            if (!parse_char(p, &hi)) return NO_IDX;
            if (hi < lo) return perr(p, at2, "character range is backwards (U+%X-U+%X)", lo, hi);
        }
        if (!GROW(p->rg, p->cap_rg, p->n_rg + 1)) return poom(p);
        p->rg[p->n_rg++] = (crange){lo, hi};
    }
    p->pos++;
    size_t n = normalize_class(p, off, negate);
    if (p->failed) return NO_IDX;
    if (n == 0) return perr(p, at, "character class matches no character");
    return new_anode(p, (anode){.kind = A_CLASS, .depth = 1, .a = (uint32_t)off, .b = (uint32_t)n});
}

static uint32_t parse_any(gparser *p) {
    if (!GROW(p->rg, p->cap_rg, p->n_rg + 2)) return poom(p);
    uint32_t off = (uint32_t)p->n_rg;
    p->rg[p->n_rg++] = (crange){0, 0xD7FF};
    p->rg[p->n_rg++] = (crange){0xE000, 0x10FFFF};
    p->pos++;
    return new_anode(p, (anode){.kind = A_CLASS, .depth = 1, .a = off, .b = 2});
}

static uint32_t parse_token_ref(gparser *p) {
    size_t at = p->pos++; /* '<' */
    ptok t = {.id = -1};
    if (p->pos < p->len && p->src[p->pos] == '[') {
        p->pos++;
        int64_t v = 0;
        size_t d0 = p->pos;
        while (p->pos < p->len && p->src[p->pos] >= '0' && p->src[p->pos] <= '9') {
            v = v * 10 + (p->src[p->pos++] - '0');
            if (v > INT32_MAX) return perr(p, at, "token id too large");
        }
        if (p->pos == d0 || p->pos + 1 >= p->len || p->src[p->pos] != ']' || p->src[p->pos + 1] != '>')
            return perr(p, at, "expecting a token id as <[123]>");
        p->pos += 2;
        t.id = v;
    } else {
        size_t s = p->pos;
        while (p->pos < p->len && p->src[p->pos] != '>' && p->src[p->pos] != '\n') p->pos++;
        if (p->pos >= p->len || p->src[p->pos] != '>' || p->pos == s)
            return perr(p, at, "expecting a token as <TEXT> or <[ID]>");
        p->pos++;
        t.text_off = (uint32_t)at; /* the token's text includes the brackets, as in llama.cpp: <think> */
        t.text_len = (uint32_t)(p->pos - at);
    }
    if (!GROW(p->toks, p->cap_toks, p->n_toks + 1)) return poom(p);
    p->toks[p->n_toks] = t;
    return new_anode(p, (anode){.kind = A_TOK, .depth = 1, .a = (uint32_t)p->n_toks++});
}

static bool parse_uint(gparser *p, uint32_t *out) {
    size_t at = p->pos;
    uint64_t v = 0;
    if (p->pos >= p->len || p->src[p->pos] < '0' || p->src[p->pos] > '9') return false;
    while (p->pos < p->len && p->src[p->pos] >= '0' && p->src[p->pos] <= '9') {
        v = v * 10 + (uint64_t)(p->src[p->pos++] - '0');
        if (v > MAX_REPEAT) return perr(p, at, "repetition count above %u", MAX_REPEAT), false;
    }
    *out = (uint32_t)v;
    return true;
}

static uint32_t parse_alternates(gparser *p, bool nested);

static uint32_t wrap_rep(gparser *p, uint32_t child, uint32_t min, uint32_t max) {
    return new_anode(p, (anode){.kind = A_REP, .depth = (uint16_t)(p->an[child].depth + 1), .a = child,
                                .min = min, .max = max});
}

static uint32_t parse_sequence(gparser *p, bool nested) {
    uint32_t *items = NULL;
    size_t n = 0, cap = 0;
    uint32_t r = NO_IDX;
    while (p->pos < p->len && !p->failed) {
        char c = p->src[p->pos];
        size_t at = p->pos;
        uint32_t it = NO_IDX;
        if (c == '"') {
            it = parse_literal(p);
        } else if (c == '[') {
            it = parse_class(p);
        } else if (c == '.') {
            it = parse_any(p);
        } else if (c == '<') {
            it = parse_token_ref(p);
        } else if (is_word(c)) {
            size_t s = p->pos;
            while (p->pos < p->len && is_word(p->src[p->pos])) p->pos++;
            uint32_t ri = rule_index(p, s, p->pos - s, s);
            if (ri != NO_IDX) it = new_anode(p, (anode){.kind = A_REF, .depth = 1, .a = ri, .b = (uint32_t)s});
        } else if (c == '(') {
            if (++p->nest > 100) {
                perr(p, at, "parentheses nested too deeply");
                goto done;
            }
            p->pos++;
            skip_space(p, true);
            it = parse_alternates(p, true);
            p->nest--;
            if (it == NO_IDX) goto done;
            skip_space(p, true);
            if (p->pos >= p->len || p->src[p->pos] != ')') {
                perr(p, at, "expecting ')' to close this '('");
                goto done;
            }
            p->pos++;
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (n == 0) {
                perr(p, at, "'%c' with nothing before it to repeat", c);
                goto done;
            }
            uint32_t min = 0, max = NO_IDX;
            p->pos++;
            if (c == '+') {
                min = 1;
            } else if (c == '?') {
                max = 1;
            } else if (c == '{') {
                skip_space(p, false);
                bool has_min = parse_uint(p, &min);
                if (p->failed) goto done;
                skip_space(p, false);
                if (p->pos < p->len && p->src[p->pos] == ',') {
                    p->pos++;
                    skip_space(p, false);
                    if (!parse_uint(p, &max)) {
                        if (p->failed) goto done;
                        max = NO_IDX;
                    }
                    if (!has_min) min = 0;
                    if (!has_min && max == NO_IDX) {
                        perr(p, at, "expecting a count in {m}, {m,}, {m,n} or {,n}");
                        goto done;
                    }
                } else if (has_min) {
                    max = min;
                } else {
                    perr(p, at, "expecting a count in {m}, {m,}, {m,n} or {,n}");
                    goto done;
                }
                skip_space(p, false);
                if (p->pos >= p->len || p->src[p->pos] != '}') {
                    perr(p, at, "expecting '}' to close this '{'");
                    goto done;
                }
                p->pos++;
                if (max != NO_IDX && max < min) {
                    perr(p, at, "repetition {%u,%u} has max below min", min, max);
                    goto done;
                }
            }
            uint32_t w = wrap_rep(p, items[n - 1], min, max);
            if (w == NO_IDX) goto done;
            items[n - 1] = w;
            skip_space(p, nested);
            continue;
        } else {
            break;
        }
        if (it == NO_IDX) goto done;
        if (!GROW(items, cap, n + 1)) {
            poom(p);
            goto done;
        }
        items[n++] = it;
        skip_space(p, nested);
    }
    if (p->failed) goto done;
    if (n == 0) {
        r = new_anode(p, (anode){.kind = A_SEQ, .depth = 1, .a = 0, .b = 0});
    } else {
        r = new_list(p, A_SEQ, items, n);
    }
done:
    spud_free(items);
    return p->failed ? NO_IDX : r;
}

static uint32_t parse_alternates(gparser *p, bool nested) {
    uint32_t *alts = NULL;
    size_t n = 0, cap = 0;
    uint32_t r = NO_IDX;
    for (;;) {
        uint32_t s = parse_sequence(p, nested);
        if (s == NO_IDX) goto done;
        if (!GROW(alts, cap, n + 1)) {
            poom(p);
            goto done;
        }
        alts[n++] = s;
        if (p->pos < p->len && p->src[p->pos] == '|') {
            p->pos++;
            skip_space(p, true);
            continue;
        }
        break;
    }
    r = new_list(p, A_ALT, alts, n);
done:
    spud_free(alts);
    return p->failed ? NO_IDX : r;
}

static bool parse_rules(gparser *p) {
    skip_space(p, true);
    while (p->pos < p->len && !p->failed) {
        size_t at = p->pos;
        while (p->pos < p->len && is_word(p->src[p->pos])) p->pos++;
        if (p->pos == at) return perr(p, at, "expecting a rule name"), false;
        size_t name_len = p->pos - at;
        skip_space(p, false);
        if (p->pos + 3 > p->len || memcmp(p->src + p->pos, "::=", 3) != 0)
            return perr(p, p->pos, "expecting '::=' after rule name '%.*s'", (int)name_len, p->src + at), false;
        p->pos += 3;
        skip_space(p, true);
        uint32_t ri = rule_index(p, at, name_len, at);
        if (ri == NO_IDX) return false;
        uint32_t body = parse_alternates(p, false);
        if (body == NO_IDX) return false;
        if (p->rules[ri].body != NO_IDX)
            return perr(p, at, "rule '%.*s' is defined twice", (int)name_len, p->src + at), false;
        p->rules[ri].body = body;
        p->rules[ri].def_pos = (uint32_t)at;
        skip_space(p, false);
        if (p->pos < p->len) {
            if (p->src[p->pos] == '\r') p->pos++;
            if (p->pos < p->len && p->src[p->pos] == '\n') {
                p->pos++;
            } else if (p->pos < p->len) {
                return perr(p, p->pos, "unexpected '%c' (expecting the end of the rule)", p->src[p->pos]), false;
            }
        }
        skip_space(p, true);
    }
    return !p->failed;
}

static void parser_free(gparser *p) {
    spud_free(p->an);
    spud_free(p->kids);
    spud_free(p->lit);
    spud_free(p->rg);
    spud_free(p->rules);
    spud_free(p->toks);
    spud_free(p->rhash);
}

/* ======================================================================
 * 2. Compiler
 * ====================================================================== */

enum { E_BYTE = 0, E_TOK = 1, E_EPS = 2, E_CALL = 3 };
enum { N_FINAL = 1, N_TERM = 2, N_TAIL = 4 };

typedef struct {
    uint8_t kind, lo, hi;
    uint32_t target;
    uint32_t arg; /* CALL: rule; TOK: token reference */
} gedge;

typedef struct {
    uint32_t src;
    gedge e;
} bedge;

typedef struct {
    int64_t id;   /* -1: by text */
    char *text;   /* NUL-terminated; NULL for ids */
    size_t len;
} gtokref;

struct spud_grammar {
    uint32_t n_nodes, n_rules, n_refs, root;
    uint32_t *node_first; /* edges of node n: edges[node_first[n] .. node_first[n+1]) */
    uint8_t *node_flags;
    gedge *edges;
    uint32_t *rule_start;
    gtokref *refs;
    uint32_t n_cls;
    uint8_t cls[256];     /* byte -> class (bytes no edge tells apart share one) */
    uint8_t cls_rep[256]; /* class -> one of its bytes */
};

typedef struct {
    gparser *p;
    uint32_t n_nodes;
    bedge *e;
    size_t n_e, cap_e;
    spud_status st;
    bool failed;
} gbuild;

static bool bfail_range(gbuild *b) {
    if (!b->failed)
        b->st = spud_errorf(SPUD_ERR_RANGE, "grammar: the automaton would exceed %u nodes (repetition counts too large?)",
                            SPUD_GRAMMAR_MAX_NODES);
    b->failed = true;
    return false;
}

static bool bfail_oom(gbuild *b) {
    if (!b->failed) b->st = spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
    b->failed = true;
    return false;
}

static bool new_node(gbuild *b, uint32_t *out) {
    if (b->n_nodes >= SPUD_GRAMMAR_MAX_NODES) return bfail_range(b);
    *out = b->n_nodes++;
    return true;
}

static bool add_edge(gbuild *b, uint32_t src, uint8_t kind, uint8_t lo, uint8_t hi, uint32_t target, uint32_t arg) {
    if (b->n_e >= (size_t)SPUD_GRAMMAR_MAX_NODES * 4) return bfail_range(b);
    if (!GROW(b->e, b->cap_e, b->n_e + 1)) return bfail_oom(b);
    b->e[b->n_e++] = (bedge){src, {kind, lo, hi, target, arg}};
    return true;
}

/* UTF-8 byte-range sequences of a class, with shared suffix nodes. */
typedef struct {
    uint8_t n, lo[3], hi[3];
    uint32_t node;
} sfx_entry;

typedef struct {
    sfx_entry *v;
    size_t n, cap;
} sfx_cache;

/* The node from which byte ranges lo[k..n), hi[k..n) lead to e. */
static bool suffix_node(gbuild *b, sfx_cache *c, const uint8_t *lo, const uint8_t *hi, int k, int n, uint32_t e,
                        uint32_t *out) {
    if (k == n) {
        *out = e;
        return true;
    }
    uint8_t m = (uint8_t)(n - k);
    for (size_t i = 0; i < c->n; i++) {
        sfx_entry *x = &c->v[i];
        if (x->n == m && !memcmp(x->lo, lo + k, m) && !memcmp(x->hi, hi + k, m)) {
            *out = x->node;
            return true;
        }
    }
    uint32_t y, next;
    if (!new_node(b, &y) || !suffix_node(b, c, lo, hi, k + 1, n, e, &next)) return false;
    if (!add_edge(b, y, E_BYTE, lo[k], hi[k], next, 0)) return false;
    if (!GROW(c->v, c->cap, c->n + 1)) return bfail_oom(b);
    sfx_entry x = {.n = m, .node = y};
    memcpy(x.lo, lo + k, m);
    memcpy(x.hi, hi + k, m);
    c->v[c->n++] = x;
    *out = y;
    return true;
}

static int cp_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

/* Code points lo..hi (same encoded length, no surrogates) as byte-range
 * sequences from s to e (the split of RE2 / Rust's utf8-ranges). */
static bool utf8_split(gbuild *b, sfx_cache *c, uint32_t lo, uint32_t hi, uint32_t s, uint32_t e) {
    int n = cp_len(lo);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) return utf8_split(b, c, lo, lo | m, s, e) && utf8_split(b, c, (lo | m) + 1, hi, s, e);
            if ((hi & m) != m) return utf8_split(b, c, lo, (hi & ~m) - 1, s, e) && utf8_split(b, c, hi & ~m, hi, s, e);
        }
    }
    uint8_t l[4], h[4];
    utf8_encode(lo, l);
    utf8_encode(hi, h);
    uint32_t next;
    if (!suffix_node(b, c, l, h, 1, n, e, &next)) return false;
    return add_edge(b, s, E_BYTE, l[0], h[0], next, 0);
}

static bool compile_class(gbuild *b, const crange *r, uint32_t n, uint32_t s, uint32_t e) {
    static const uint32_t bounds[4] = {0x7F, 0x7FF, 0xFFFF, 0x10FFFF};
    sfx_cache c = {0};
    bool ok = true;
    for (uint32_t i = 0; i < n && ok; i++) {
        uint32_t lo = r[i].lo, hi = r[i].hi;
        for (int k = 0; k < 4 && ok && lo <= hi; k++) {
            if (lo > bounds[k]) continue;
            uint32_t top = hi < bounds[k] ? hi : bounds[k];
            ok = utf8_split(b, &c, lo, top, s, e);
            lo = top + 1;
        }
    }
    spud_free(c.v);
    return ok;
}

/* Connect s to e through the fragment of AST node x. A fragment adds edges
 * out of s and into e only (never into s or out of e), so fragments may share
 * their end points. */
static bool compile_node(gbuild *b, uint32_t x, uint32_t s, uint32_t e) {
    const gparser *p = b->p;
    const anode *a = &p->an[x];
    switch (a->kind) {
    case A_SEQ: {
        if (a->b == 0) return add_edge(b, s, E_EPS, 0, 0, e, 0);
        uint32_t cur = s;
        for (uint32_t i = 0; i < a->b; i++) {
            uint32_t nxt = e;
            if (i + 1 < a->b && !new_node(b, &nxt)) return false;
            if (!compile_node(b, p->kids[a->a + i], cur, nxt)) return false;
            cur = nxt;
        }
        return true;
    }
    case A_ALT:
        for (uint32_t i = 0; i < a->b; i++)
            if (!compile_node(b, p->kids[a->a + i], s, e)) return false;
        return true;
    case A_LIT: {
        if (a->b == 0) return add_edge(b, s, E_EPS, 0, 0, e, 0);
        uint32_t cur = s;
        for (uint32_t i = 0; i < a->b; i++) {
            uint32_t nxt = e;
            if (i + 1 < a->b && !new_node(b, &nxt)) return false;
            uint8_t c = p->lit[a->a + i];
            if (!add_edge(b, cur, E_BYTE, c, c, nxt, 0)) return false;
            cur = nxt;
        }
        return true;
    }
    case A_CLASS:
        return compile_class(b, p->rg + a->a, a->b, s, e);
    case A_REF:
        return add_edge(b, s, E_CALL, 0, 0, e, a->a);
    case A_TOK:
        return add_edge(b, s, E_TOK, 0, 0, e, a->a);
    case A_REP: {
        uint32_t cur = s;
        for (uint32_t i = 0; i < a->min; i++) {
            uint32_t nxt = e;
            if ((i + 1 < a->min || a->max != a->min) && !new_node(b, &nxt)) return false;
            if (!compile_node(b, a->a, cur, nxt)) return false;
            cur = nxt;
        }
        if (a->max == NO_IDX) {
            uint32_t loop;
            if (!new_node(b, &loop)) return false;
            return add_edge(b, cur, E_EPS, 0, 0, loop, 0) && compile_node(b, a->a, loop, loop) &&
                   add_edge(b, loop, E_EPS, 0, 0, e, 0);
        }
        if (a->max == a->min) return a->min > 0 || add_edge(b, s, E_EPS, 0, 0, e, 0);
        for (uint32_t i = a->min; i < a->max; i++) {
            uint32_t nxt = e;
            if (i + 1 < a->max && !new_node(b, &nxt)) return false;
            if (!add_edge(b, cur, E_EPS, 0, 0, e, 0) || !compile_node(b, a->a, cur, nxt)) return false;
            cur = nxt;
        }
        return true;
    }
    }
    return true;
}

static int cmp_bedge(const void *x, const void *y) {
    const bedge *a = x, *b = y;
    if (a->src != b->src) return a->src < b->src ? -1 : 1;
    if (a->e.kind != b->e.kind) return a->e.kind < b->e.kind ? -1 : 1;
    if (a->e.lo != b->e.lo) return a->e.lo < b->e.lo ? -1 : 1;
    return 0;
}

#define EDGES(g, n) ((g)->edges + (g)->node_first[n]), ((g)->node_first[(n) + 1] - (g)->node_first[n])

static const char *rule_name(const gparser *p, uint32_t r, int *len) {
    *len = (int)p->rules[r].name_len;
    return p->src + p->rules[r].name_off;
}

/* Per-rule reachability over the automaton, for the rule checks. From rule
 * r's start, follow EPS edges, CALL edges whose callee is in `through` (on to
 * their return node) and, if consume, BYTE and TOK edges. Returns whether r's
 * final node is reached. Every callee of a CALL edge seen is added (once) to
 * w->callees. */
typedef struct {
    uint32_t *stamp, epoch;
    uint32_t *stack;
    uint8_t *seen;     /* per rule, for callees */
    uint32_t *callees; /* rules called, this walk */
    size_t n_callees;
} walker;

static bool walk_rule(const spud_grammar *g, walker *w, uint32_t r, const uint8_t *through, bool consume) {
    uint32_t start = g->rule_start[r];
    size_t sp = 0;
    for (size_t i = 0; i < w->n_callees; i++) w->seen[w->callees[i]] = 0;
    w->n_callees = 0;
    w->epoch++;
    w->stack[sp++] = start;
    w->stamp[start] = w->epoch;
    bool reached = false;
    while (sp) {
        uint32_t n = w->stack[--sp];
        if (g->node_flags[n] & N_FINAL) reached = true;
        for (uint32_t k = g->node_first[n]; k < g->node_first[n + 1]; k++) {
            const gedge *ed = &g->edges[k];
            bool go;
            if (ed->kind == E_EPS) {
                go = true;
            } else if (ed->kind == E_CALL) {
                if (!w->seen[ed->arg]) {
                    w->seen[ed->arg] = 1;
                    w->callees[w->n_callees++] = ed->arg;
                }
                go = through[ed->arg] != 0;
            } else {
                go = consume;
            }
            if (go && w->stamp[ed->target] != w->epoch) {
                w->stamp[ed->target] = w->epoch;
                w->stack[sp++] = ed->target;
            }
        }
    }
    return reached;
}

/* Rule checks: every rule reachable from root must be able to finish, and
 * none may call itself (through others) before consuming input. */
static bool check_rules(spud_grammar *g, gparser *p) {
    uint32_t R = g->n_rules;
    walker w = {0};
    uint8_t *nullable = spud_calloc(R + 1, 1), *productive = spud_calloc(R + 1, 1), *reach = spud_calloc(R + 1, 1);
    uint8_t *all = spud_malloc(R + 1), *color = spud_calloc(R + 1, 1);
    uint32_t *order = spud_malloc((R + 1) * sizeof *order);
    uint32_t *lc_first = spud_calloc(R + 2, sizeof *lc_first), *lc = NULL;
    size_t n_lc = 0, cap_lc = 0;
    uint32_t *path = spud_malloc((R + 1) * sizeof *path), *iter = spud_malloc((R + 1) * sizeof *iter);
    w.stamp = spud_calloc((size_t)g->n_nodes + 1, sizeof *w.stamp);
    w.stack = spud_malloc(((size_t)g->n_nodes + 1) * sizeof *w.stack);
    w.seen = spud_calloc(R + 1, 1);
    w.callees = spud_malloc((R + 1) * sizeof *w.callees);
    bool ok = false;
    if (!nullable || !productive || !reach || !all || !color || !order || !lc_first || !path || !iter ||
        !w.stamp || !w.stack || !w.seen || !w.callees) {
        p->st = spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
        goto done;
    }
    memset(all, 1, R + 1);
    { /* reachable from root over CALL edges */
        size_t sp = 0;
        reach[g->root] = 1;
        order[sp++] = g->root;
        while (sp) {
            uint32_t r = order[--sp];
            walk_rule(g, &w, r, all, true);
            for (size_t i = 0; i < w.n_callees; i++)
                if (!reach[w.callees[i]]) {
                    reach[w.callees[i]] = 1;
                    order[sp++] = w.callees[i];
                }
        }
    }
    for (bool changed = true; changed;) { /* nullable, productive: least fixpoints */
        changed = false;
        for (uint32_t r = 0; r < R; r++) {
            if (!nullable[r] && walk_rule(g, &w, r, nullable, false)) nullable[r] = changed = true;
            if (!productive[r] && walk_rule(g, &w, r, productive, true)) productive[r] = changed = true;
        }
    }
    { /* name the rules that never finish; point at one that calls itself */
        uint32_t blame = NO_IDX, n_bad = 0;
        bool blame_self = false;
        char names[160];
        size_t nl = 0;
        names[0] = 0;
        for (uint32_t r = 0; r < R; r++) {
            if (!reach[r] || productive[r]) continue;
            int n;
            const char *s = rule_name(p, r, &n);
            if (nl < sizeof names - 40)
                nl += (size_t)snprintf(names + nl, sizeof names - nl, "%s'%.*s'", n_bad ? ", " : "", n > 30 ? 30 : n, s);
            n_bad++;
            walk_rule(g, &w, r, all, true);
            bool self = false;
            for (size_t i = 0; i < w.n_callees; i++) self |= w.callees[i] == r;
            if (blame == NO_IDX || (self && !blame_self)) {
                blame = r;
                blame_self = self;
            }
        }
        if (n_bad) {
            int n;
            const char *s = rule_name(p, blame, &n);
            perr(p, p->rules[blame].def_pos, "rule '%.*s' can never finish (every alternative recurses forever)%s%s", n, s,
                 n_bad > 1 ? "; rules that cannot finish: " : "", n_bad > 1 ? names : "");
            goto done;
        }
    }
    /* Left calls r -> q: r may call q before consuming input. */
    for (uint32_t r = 0; r < R; r++) {
        lc_first[r] = (uint32_t)n_lc;
        if (!reach[r]) continue;
        walk_rule(g, &w, r, nullable, false);
        if (!GROW(lc, cap_lc, n_lc + w.n_callees + 1)) {
            p->st = spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
            goto done;
        }
        memcpy(lc + n_lc, w.callees, w.n_callees * sizeof *lc);
        n_lc += w.n_callees;
    }
    lc_first[R] = (uint32_t)n_lc;
    /* A cycle of left calls is left recursion: iterative DFS with colours. */
    for (uint32_t r0 = 0; r0 < R; r0++) {
        if (!reach[r0] || color[r0]) continue;
        size_t depth = 0;
        path[depth] = r0;
        iter[depth++] = lc_first[r0];
        color[r0] = 1;
        while (depth) {
            uint32_t r = path[depth - 1];
            if (iter[depth - 1] >= lc_first[r + 1]) {
                color[r] = 2;
                depth--;
                continue;
            }
            uint32_t q = lc[iter[depth - 1]++];
            if (color[q] == 1) {
                char chain[200];
                size_t cl = 0, from = 0;
                while (path[from] != q) from++;
                for (size_t i = from; i < depth && cl < sizeof chain - 40; i++) {
                    int n;
                    const char *s = rule_name(p, path[i], &n);
                    cl += (size_t)snprintf(chain + cl, sizeof chain - cl, "%.*s -> ", n > 30 ? 30 : n, s);
                }
                int n;
                const char *s = rule_name(p, q, &n);
                snprintf(chain + cl, sizeof chain - cl, "%.*s", n > 30 ? 30 : n, s);
                perr(p, p->rules[q].def_pos, "left recursion: %s (a rule reaches itself without consuming input)",
                     chain);
                goto done;
            }
            if (color[q] == 0) {
                color[q] = 1;
                path[depth] = q;
                iter[depth++] = lc_first[q];
            }
        }
    }
    ok = true;
done:
    spud_free(nullable);
    spud_free(productive);
    spud_free(reach);
    spud_free(all);
    spud_free(color);
    spud_free(order);
    spud_free(lc_first);
    spud_free(lc);
    spud_free(path);
    spud_free(iter);
    spud_free(w.stamp);
    spud_free(w.stack);
    spud_free(w.seen);
    spud_free(w.callees);
    return ok;
}

void spud_grammar_free(spud_grammar *g) {
    if (!g) return;
    spud_free(g->node_first);
    spud_free(g->node_flags);
    spud_free(g->edges);
    spud_free(g->rule_start);
    for (uint32_t i = 0; i < g->n_refs; i++) spud_free(g->refs[i].text);
    spud_free(g->refs);
    spud_free(g);
}

uint32_t spud_grammar_n_rules(const spud_grammar *g) { return g->n_rules; }
uint32_t spud_grammar_n_nodes(const spud_grammar *g) { return g->n_nodes; }

static spud_status build_grammar(gparser *p, uint32_t root, spud_grammar **out) {
    gbuild b = {.p = p};
    spud_grammar *g = spud_calloc(1, sizeof *g);
    uint32_t *rule_final = NULL;
    if (!g) return spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
    g->root = root;
    g->n_rules = (uint32_t)p->n_rules;
    g->rule_start = spud_malloc((p->n_rules + 1) * sizeof *g->rule_start);
    rule_final = spud_malloc((p->n_rules + 1) * sizeof *rule_final);
    if (!g->rule_start || !rule_final) {
        bfail_oom(&b);
        goto fail;
    }
    for (size_t r = 0; r < p->n_rules; r++) {
        if (!new_node(&b, &g->rule_start[r]) || !new_node(&b, &rule_final[r])) goto fail;
    }
    for (size_t r = 0; r < p->n_rules; r++)
        if (!compile_node(&b, p->rules[r].body, g->rule_start[r], rule_final[r])) goto fail;

    /* CSR edges, sorted by (source, kind, lo). */
    g->n_nodes = b.n_nodes;
    if (b.n_e > 1) qsort(b.e, b.n_e, sizeof *b.e, cmp_bedge);
    g->node_first = spud_calloc((size_t)g->n_nodes + 1, sizeof *g->node_first);
    g->node_flags = spud_calloc((size_t)g->n_nodes + 1, 1);
    g->edges = spud_malloc((b.n_e + 1) * sizeof *g->edges);
    if (!g->node_first || !g->node_flags || !g->edges) {
        bfail_oom(&b);
        goto fail;
    }
    for (size_t i = 0; i < b.n_e; i++) {
        g->edges[i] = b.e[i].e;
        g->node_first[b.e[i].src + 1]++;
        if (b.e[i].e.kind == E_BYTE || b.e[i].e.kind == E_TOK) g->node_flags[b.e[i].src] |= N_TERM;
    }
    for (uint32_t n = 0; n < g->n_nodes; n++) g->node_first[n + 1] += g->node_first[n];
    for (size_t r = 0; r < p->n_rules; r++) g->node_flags[rule_final[r]] |= N_FINAL;
    /* Tail nodes: nothing but EPS edges to tail nodes, or FINAL with no edges. */
    for (uint32_t n = 0; n < g->n_nodes; n++)
        if ((g->node_flags[n] & N_FINAL) && g->node_first[n + 1] == g->node_first[n]) g->node_flags[n] |= N_TAIL;
    for (int pass = 0, changed = 1; changed && pass < 64; pass++) {
        changed = 0;
        for (uint32_t n = g->n_nodes; n-- > 0;) {
            if (g->node_flags[n] & (N_TAIL | N_FINAL)) continue;
            uint32_t k0 = g->node_first[n], k1 = g->node_first[n + 1];
            if (k0 == k1) continue;
            bool tail = true;
            for (uint32_t k = k0; k < k1 && tail; k++)
                tail = g->edges[k].kind == E_EPS && (g->node_flags[g->edges[k].target] & N_TAIL);
            if (tail) {
                g->node_flags[n] |= N_TAIL;
                changed = 1;
            }
        }
    }
    /* Byte classes: boundaries at every edge's lo and hi + 1. */
    {
        uint8_t cut[257] = {0};
        for (size_t i = 0; i < b.n_e; i++)
            if (b.e[i].e.kind == E_BYTE) {
                cut[b.e[i].e.lo] = 1;
                cut[b.e[i].e.hi + 1] = 1;
            }
        uint32_t c = 0;
        for (int x = 0; x < 256; x++) {
            if (x > 0 && cut[x]) c++;
            g->cls[x] = (uint8_t)c;
            if (x == 0 || cut[x]) g->cls_rep[c] = (uint8_t)x;
        }
        g->n_cls = c + 1;
    }
    /* Token references. */
    g->n_refs = (uint32_t)p->n_toks;
    g->refs = spud_calloc(p->n_toks + 1, sizeof *g->refs);
    if (!g->refs) {
        bfail_oom(&b);
        goto fail;
    }
    for (size_t i = 0; i < p->n_toks; i++) {
        g->refs[i].id = p->toks[i].id;
        if (p->toks[i].id < 0) {
            g->refs[i].text = spud_strndup(p->src + p->toks[i].text_off, p->toks[i].text_len);
            g->refs[i].len = p->toks[i].text_len;
            if (!g->refs[i].text) {
                bfail_oom(&b);
                goto fail;
            }
        }
    }
    if (!check_rules(g, p)) {
        b.st = p->st;
        b.failed = true;
        goto fail;
    }
    spud_free(b.e);
    spud_free(rule_final);
    *out = g;
    return SPUD_OK;
fail:
    spud_free(b.e);
    spud_free(rule_final);
    spud_grammar_free(g);
    return b.failed ? b.st : SPUD_ERR_NOMEM;
}

spud_status spud_grammar_parse(const char *text, size_t len, spud_grammar **out) {
    *out = NULL;
    if (!text && len) return spud_errorf(SPUD_ERR_INVALID, "grammar: NULL text");
    if (len > SPUD_GRAMMAR_MAX_TEXT)
        return spud_errorf(SPUD_ERR_RANGE, "grammar: %zu bytes of text (at most %u)", len, SPUD_GRAMMAR_MAX_TEXT);
    gparser p = {.src = text ? text : "", .len = len};
    spud_status st = SPUD_OK;
    if (!parse_rules(&p)) {
        st = p.st;
        goto done;
    }
    /* Every referenced rule defined; root present. */
    uint32_t root = NO_IDX;
    for (size_t r = 0; r < p.n_rules; r++) {
        if (p.rules[r].body == NO_IDX) {
            perr(&p, p.rules[r].ref_pos, "undefined rule '%.*s'", (int)p.rules[r].name_len,
                 p.src + p.rules[r].name_off);
            st = p.st;
            goto done;
        }
        if (p.rules[r].name_len == 4 && !memcmp(p.src + p.rules[r].name_off, "root", 4)) root = (uint32_t)r;
    }
    if (root == NO_IDX) {
        st = spud_errorf(SPUD_ERR_FORMAT, "grammar: no 'root' rule");
        goto done;
    }
    spud_grammar *g = NULL;
    st = build_grammar(&p, root, &g);
    if (st == SPUD_OK) *out = g;
done:
    parser_free(&p);
    return st;
}

/* ======================================================================
 * 3. Vocabulary: token trie
 * ====================================================================== */

/* One trie node, in preorder: a node's subtree is [i, next). Tokens whose
 * bytes end at node i are toks[tok .. (node i+1).tok). */
typedef struct {
    uint32_t next;
    uint32_t tok;
    uint16_t depth; /* 1 for the children of the (implicit) root */
    uint8_t byte;
    uint8_t pad;
} tnode;

struct spud_grammar_vocab {
    int32_t n_vocab;
    uint32_t *piece_off; /* piece of id i: pieces[piece_off[i] .. piece_off[i+1]) */
    char *pieces;
    uint8_t *flags;
    uint32_t n_nodes, max_depth;
    tnode *trie; /* n_nodes + 1 (a sentinel whose tok is the token count) */
    int32_t *toks;
    size_t max_piece;
};

typedef struct {
    const char *p;
    uint32_t len;
    int32_t id;
} vent;

static int cmp_vent(const void *x, const void *y) {
    const vent *a = x, *b = y;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->p, b->p, n) : 0;
    if (c) return c;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

void spud_grammar_vocab_free(spud_grammar_vocab *v) {
    if (!v) return;
    spud_free(v->piece_off);
    spud_free(v->pieces);
    spud_free(v->flags);
    spud_free(v->trie);
    spud_free(v->toks);
    spud_free(v);
}

int32_t spud_grammar_vocab_n(const spud_grammar_vocab *v) { return v->n_vocab; }
uint32_t spud_grammar_vocab_n_nodes(const spud_grammar_vocab *v) { return v->n_nodes; }

static bool in_trie(const spud_grammar_vocab *v, int32_t id) {
    return !(v->flags[id] & (SPUD_GRAMMAR_TOK_EOG | SPUD_GRAMMAR_TOK_CONTROL)) &&
           v->piece_off[id + 1] > v->piece_off[id];
}

/* Build the trie once pieces, offsets and flags are in place. */
static spud_status vocab_build_trie(spud_grammar_vocab *v) {
    size_t n_ent = 0, total = 0;
    for (int32_t i = 0; i < v->n_vocab; i++) {
        if (!in_trie(v, i)) continue;
        uint32_t len = v->piece_off[i + 1] - v->piece_off[i];
        if (len > UINT16_MAX)
            return spud_errorf(SPUD_ERR_UNSUPPORTED, "grammar: token %d is %u bytes long (at most %u)", i, len,
                               (unsigned)UINT16_MAX);
        n_ent++;
        total += len;
    }
    if (total >= UINT32_MAX) return spud_errorf(SPUD_ERR_RANGE, "grammar: vocabulary too large");
    vent *e = spud_malloc((n_ent + 1) * sizeof *e);
    uint32_t *path = spud_malloc((v->max_piece + 2) * sizeof *path);
    v->trie = spud_malloc((total + 1) * sizeof *v->trie);
    v->toks = spud_malloc((n_ent + 1) * sizeof *v->toks); /* + a sentinel the walk may read */
    if (!e || !path || !v->trie || !v->toks) {
        spud_free(e);
        spud_free(path);
        return spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory for the token trie");
    }
    size_t k = 0;
    for (int32_t i = 0; i < v->n_vocab; i++)
        if (in_trie(v, i))
            e[k++] = (vent){v->pieces + v->piece_off[i], v->piece_off[i + 1] - v->piece_off[i], i};
    qsort(e, n_ent, sizeof *e, cmp_vent);
    uint32_t nn = 0, nt = 0, prev_len = 0, max_depth = 0;
    const char *prev = NULL;
    for (size_t j = 0; j < n_ent; j++) {
        uint32_t lcp = 0;
        while (prev && lcp < prev_len && lcp < e[j].len && prev[lcp] == e[j].p[lcp]) lcp++;
        for (uint32_t d = lcp; d < e[j].len; d++) {
            v->trie[nn] = (tnode){.next = 0, .tok = nt, .depth = (uint16_t)(d + 1), .byte = (uint8_t)e[j].p[d]};
            path[d] = nn++;
        }
        v->toks[nt++] = e[j].id;
        if (e[j].len > max_depth) max_depth = e[j].len;
        prev = e[j].p;
        prev_len = e[j].len;
    }
    v->trie[nn] = (tnode){.next = nn, .tok = nt};
    v->toks[nt] = 0;
    /* Subtree ends: the next node at the same or a shallower depth. */
    uint32_t *open = path; /* reuse: a stack of node indices by depth */
    uint32_t sp = 0;
    for (uint32_t i = 0; i < nn; i++) {
        while (sp && v->trie[open[sp - 1]].depth >= v->trie[i].depth) v->trie[open[--sp]].next = i;
        open[sp++] = i;
    }
    while (sp) v->trie[open[--sp]].next = nn;
    v->n_nodes = nn;
    v->max_depth = max_depth;
    spud_free(e);
    spud_free(path);
    return SPUD_OK;
}

spud_status spud_grammar_vocab_new(int32_t n_vocab, const char *const *pieces, const size_t *lens,
                                   const uint8_t *flags, spud_grammar_vocab **out) {
    *out = NULL;
    if (n_vocab <= 0 || !pieces || !lens) return spud_errorf(SPUD_ERR_INVALID, "grammar: empty vocabulary");
    spud_grammar_vocab *v = spud_calloc(1, sizeof *v);
    size_t total = 0;
    if (!v) return spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
    v->n_vocab = n_vocab;
    for (int32_t i = 0; i < n_vocab; i++) {
        total += lens[i];
        if (lens[i] > v->max_piece) v->max_piece = lens[i];
        if (total >= UINT32_MAX) {
            spud_grammar_vocab_free(v);
            return spud_errorf(SPUD_ERR_RANGE, "grammar: vocabulary pieces too large");
        }
    }
    v->piece_off = spud_malloc(((size_t)n_vocab + 1) * sizeof *v->piece_off);
    v->pieces = spud_malloc(total + 1);
    v->flags = spud_calloc((size_t)n_vocab + 1, 1);
    if (!v->piece_off || !v->pieces || !v->flags) {
        spud_grammar_vocab_free(v);
        return spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
    }
    size_t o = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        v->piece_off[i] = (uint32_t)o;
        if (lens[i]) memcpy(v->pieces + o, pieces[i], lens[i]);
        o += lens[i];
        if (flags) v->flags[i] = flags[i];
    }
    v->piece_off[n_vocab] = (uint32_t)o;
    spud_status st = vocab_build_trie(v);
    if (st) {
        spud_grammar_vocab_free(v);
        return st;
    }
    *out = v;
    return SPUD_OK;
}

spud_status spud_grammar_vocab_from_tokenizer(const spud_tokenizer *t, spud_grammar_vocab **out) {
    *out = NULL;
    int32_t n = spud_tok_n_vocab(t);
    if (n <= 0) return spud_errorf(SPUD_ERR_INVALID, "grammar: empty vocabulary");
    const char **pieces = spud_calloc((size_t)n, sizeof *pieces);
    size_t *lens = spud_calloc((size_t)n, sizeof *lens);
    uint8_t *flags = spud_calloc((size_t)n, 1);
    char *buf = NULL;
    size_t total = 0, o = 0;
    spud_status st = SPUD_OK;
    if (!pieces || !lens || !flags) goto oom;
    for (int32_t i = 0; i < n; i++) {
        flags[i] = (uint8_t)((spud_tok_is_eog(t, i) ? SPUD_GRAMMAR_TOK_EOG : 0) |
                             (spud_tok_is_control(t, i) ? SPUD_GRAMMAR_TOK_CONTROL : 0));
        lens[i] = spud_tok_piece(t, i, (flags[i] & SPUD_GRAMMAR_TOK_CONTROL) != 0, NULL, 0);
        total += lens[i];
    }
    buf = spud_malloc(total + 1);
    if (!buf) goto oom;
    for (int32_t i = 0; i < n; i++) {
        pieces[i] = buf + o;
        o += spud_tok_piece(t, i, (flags[i] & SPUD_GRAMMAR_TOK_CONTROL) != 0, buf + o, lens[i]);
    }
    st = spud_grammar_vocab_new(n, pieces, lens, flags, out);
    goto done;
oom:
    st = spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory");
done:
    spud_free(pieces);
    spud_free(lens);
    spud_free(flags);
    spud_free(buf);
    return st;
}

/* ======================================================================
 * 4. Matcher
 * ====================================================================== */

#define ST_DEAD 0u
#define TR_UNKNOWN UINT32_MAX

typedef struct {
    uint32_t node, parent, mark;
} gframe;

typedef struct {
    uint32_t off, n; /* frames: sf[off .. off + n), sorted */
    int32_t slot;    /* mask cache slot; -1: none */
    uint32_t hash;
    uint8_t complete, has_tok;
} dstate;

struct spud_grammar_state {
    const spud_grammar *g;
    const spud_grammar_vocab *v;
    int32_t *ref_tok;
    gframe *fr;
    size_t nf, capf;
    uint32_t *fh; /* frame ids; 0: empty */
    size_t fhcap;
    dstate *st;
    size_t nst, capst;
    uint32_t *sf;
    size_t nsf, capsf;
    uint32_t *tr; /* transitions: row q (at q << shift) holds, per byte class, the target's row or TR_UNKNOWN */
    size_t ntr, captr;
    uint32_t shift; /* rows of 1 << shift entries: a power of two >= n_cls, so a state's row is id << shift */
    uint32_t *sh; /* state ids; 0: empty */
    size_t shcap;
    uint32_t epoch;
    uint32_t *work, *res;
    size_t capwork, nres, capres;
    uint32_t *dt; /* mask walk: transition row by trie depth */
    uint32_t init, cur;
    bool finished;
    size_t words;
    uint32_t *masks;
    size_t capmasks;
    uint32_t *slot_owner;
    uint32_t n_slots, next_slot, used_slots;
    /* lazy */
    size_t n_trig, max_trig;
    char **trig;
    size_t *trig_len;
    bool active;
    char *win;
    size_t n_win;
    char *scratch;
    size_t capscratch;
    int32_t *cand;
    size_t n_cand;
    size_t budget;
    spud_status err; /* status of the last failure inside the matcher (its message is set) */
};

static spud_status soom(void) { return spud_errorf(SPUD_ERR_NOMEM, "grammar: out of memory"); }

/* The status of a failure deeper in the matcher: SPUD_ERR_RANGE (too
 * ambiguous) if that was it, else out of memory. */
static spud_status state_err(spud_grammar_state *s) {
    spud_status st = s->err ? s->err : SPUD_ERR_NOMEM;
    s->err = SPUD_OK;
    return st;
}

static uint32_t frame_hash(uint32_t node, uint32_t parent) {
    return (uint32_t)hash_u64(((uint64_t)node << 32) | parent);
}

/* The interned frame (node, parent); NO_IDX on allocation failure. */
static uint32_t intern_frame(spud_grammar_state *s, uint32_t node, uint32_t parent) {
    if (s->nf * 2 + 2 > s->fhcap) {
        size_t cap = s->fhcap ? s->fhcap * 2 : 1024;
        uint32_t *h = spud_calloc(cap, sizeof *h);
        if (!h) return NO_IDX;
        for (size_t i = 1; i < s->nf; i++) {
            size_t j = frame_hash(s->fr[i].node, s->fr[i].parent) & (cap - 1);
            while (h[j]) j = (j + 1) & (cap - 1);
            h[j] = (uint32_t)i;
        }
        spud_free(s->fh);
        s->fh = h;
        s->fhcap = cap;
    }
    size_t j = frame_hash(node, parent) & (s->fhcap - 1);
    while (s->fh[j]) {
        const gframe *f = &s->fr[s->fh[j]];
        if (f->node == node && f->parent == parent) return s->fh[j];
        j = (j + 1) & (s->fhcap - 1);
    }
    if (s->nf >= NO_IDX - 1 || !GROW(s->fr, s->capf, s->nf + 1)) return NO_IDX;
    s->fr[s->nf] = (gframe){node, parent, 0};
    s->fh[j] = (uint32_t)s->nf;
    return (uint32_t)s->nf++;
}

static uint32_t set_hash(const uint32_t *f, uint32_t n, uint8_t complete) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ complete;
    for (uint32_t i = 0; i < n; i++) h = hash_u64(h ^ f[i]) + i;
    return (uint32_t)h;
}

/* The state for frame set f[0..n) (sorted) and flag; NO_IDX on failure (error set). */
static uint32_t intern_state(spud_grammar_state *s, const uint32_t *f, uint32_t n, bool complete) {
    if (n == 0 && !complete) return ST_DEAD;
    if (n > MAX_STATE_FRAMES) {
        s->err = SPUD_ERR_RANGE;
        spud_errorf(SPUD_ERR_RANGE, "grammar: more than %u parses alive at once (grammar too ambiguous)",
                    MAX_STATE_FRAMES);
        return NO_IDX;
    }
    uint32_t h = set_hash(f, n, complete);
    if (s->nst * 2 + 2 > s->shcap) {
        size_t cap = s->shcap ? s->shcap * 2 : 1024;
        uint32_t *t = spud_calloc(cap, sizeof *t);
        if (!t) return soom(), NO_IDX;
        for (size_t i = 1; i < s->nst; i++) {
            size_t j = s->st[i].hash & (cap - 1);
            while (t[j]) j = (j + 1) & (cap - 1);
            t[j] = (uint32_t)i;
        }
        spud_free(s->sh);
        s->sh = t;
        s->shcap = cap;
    }
    size_t j = h & (s->shcap - 1);
    while (s->sh[j]) {
        const dstate *d = &s->st[s->sh[j]];
        if (d->hash == h && d->n == n && d->complete == complete && (n == 0 || !memcmp(s->sf + d->off, f, n * sizeof *f)))
            return s->sh[j];
        j = (j + 1) & (s->shcap - 1);
    }
    uint32_t ncls = s->g->n_cls, stride = 1u << s->shift;
    if ((s->nst + 1) << s->shift >= TR_UNKNOWN) {
        s->err = SPUD_ERR_RANGE;
        spud_errorf(SPUD_ERR_RANGE, "grammar: too many matcher states");
        return NO_IDX;
    }
    if (!GROW(s->st, s->capst, s->nst + 1) || !GROW(s->sf, s->capsf, s->nsf + n + 1) ||
        !GROW(s->tr, s->captr, s->ntr + stride))
        return soom(), NO_IDX;
    dstate d = {.off = (uint32_t)s->nsf, .n = n, .slot = -1, .hash = h, .complete = complete};
    if (n) memcpy(s->sf + s->nsf, f, n * sizeof *f);
    s->nsf += n;
    for (uint32_t c = 0; c < stride; c++) s->tr[s->ntr + c] = n && c < ncls ? TR_UNKNOWN : ST_DEAD;
    s->ntr += stride;
    for (uint32_t i = 0; i < n && !d.has_tok; i++) {
        uint32_t node = s->fr[f[i]].node;
        for (uint32_t k = s->g->node_first[node]; k < s->g->node_first[node + 1]; k++)
            if (s->g->edges[k].kind == E_TOK) d.has_tok = 1;
    }
    s->st[s->nst] = d;
    s->sh[j] = (uint32_t)s->nst;
    return (uint32_t)s->nst++;
}

static void next_epoch(spud_grammar_state *s) {
    if (++s->epoch == UINT32_MAX) {
        for (size_t i = 0; i < s->nf; i++) s->fr[i].mark = 0;
        s->epoch = 1;
    }
    s->nres = 0;
}

/* Add to s->res every frame with BYTE/TOK edges reachable from frame f0
 * without input (EPS, calls, returns); *complete if the stack can empty. */
static bool closure(spud_grammar_state *s, uint32_t f0, bool *complete) {
    const spud_grammar *g = s->g;
    size_t sp = 0;
    if (f0 == NO_IDX) return false;
    if (!GROW(s->work, s->capwork, 1)) return false;
    s->work[sp++] = f0;
    while (sp) {
        uint32_t f = s->work[--sp];
        if (s->fr[f].mark == s->epoch) continue;
        s->fr[f].mark = s->epoch;
        uint32_t node = s->fr[f].node, parent = s->fr[f].parent;
        uint8_t fl = g->node_flags[node];
        if (fl & N_TERM) {
            if (!GROW(s->res, s->capres, s->nres + 1)) return false;
            s->res[s->nres++] = f;
        }
        if (fl & N_FINAL) {
            if (parent == 0) {
                *complete = true;
            } else {
                if (!GROW(s->work, s->capwork, sp + 1)) return false;
                s->work[sp++] = parent;
            }
        }
        for (uint32_t k = g->node_first[node]; k < g->node_first[node + 1]; k++) {
            const gedge *e = &g->edges[k];
            uint32_t nf;
            if (e->kind == E_EPS) {
                nf = intern_frame(s, e->target, parent);
            } else if (e->kind == E_CALL) {
                uint32_t p2 = (g->node_flags[e->target] & N_TAIL) ? parent : intern_frame(s, e->target, parent);
                nf = p2 == NO_IDX ? NO_IDX : intern_frame(s, g->rule_start[e->arg], p2);
            } else {
                continue;
            }
            if (nf == NO_IDX) return false;
            if (s->fr[nf].mark == s->epoch) continue;
            if (!GROW(s->work, s->capwork, sp + 1)) return false;
            s->work[sp++] = nf;
        }
    }
    return true;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Intern s->res (any order) as a state; NO_IDX on failure (error set). */
static uint32_t finish_state(spud_grammar_state *s, bool complete) {
    if (s->nres > 1) qsort(s->res, s->nres, sizeof *s->res, cmp_u32);
    return intern_state(s, s->res, (uint32_t)s->nres, complete);
}

/* The state after byte class c from state q (computed and cached). */
static bool compute_trans(spud_grammar_state *s, uint32_t q, uint32_t c, uint32_t *out) {
    const spud_grammar *g = s->g;
    uint8_t b = g->cls_rep[c];
    bool complete = false;
    next_epoch(s);
    uint32_t off = s->st[q].off, n = s->st[q].n;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = s->sf[off + i];
        uint32_t node = s->fr[f].node, parent = s->fr[f].parent;
        for (uint32_t k = g->node_first[node]; k < g->node_first[node + 1]; k++) {
            const gedge *e = &g->edges[k];
            if (e->kind != E_BYTE || e->lo > b) break; /* BYTE edges come first, by lo */
            if (b <= e->hi && !closure(s, intern_frame(s, e->target, parent), &complete)) return soom(), false;
        }
    }
    uint32_t t = finish_state(s, complete);
    if (t == NO_IDX) return false;
    s->tr[(q << s->shift) + c] = t << s->shift;
    *out = t;
    return true;
}

static inline bool step(spud_grammar_state *s, uint32_t q, uint8_t byte, uint32_t *out) {
    uint32_t c = s->g->cls[byte];
    uint32_t t = s->tr[(q << s->shift) + c];
    if (t != TR_UNKNOWN) {
        *out = t >> s->shift;
        return true;
    }
    return compute_trans(s, q, c, out);
}

/* The state after bytes b[0..n) from q (ST_DEAD if refused). */
static bool walk(spud_grammar_state *s, uint32_t q, const char *b, size_t n, uint32_t *out) {
    for (size_t i = 0; i < n && q != ST_DEAD; i++)
        if (!step(s, q, (uint8_t)b[i], &q)) return false;
    *out = q;
    return true;
}

/* The state after token `tok` through TOK edges from q (not cached: rare). */
static bool tok_trans(spud_grammar_state *s, uint32_t q, int32_t tok, uint32_t *out) {
    const spud_grammar *g = s->g;
    bool complete = false;
    *out = ST_DEAD;
    if (!s->st[q].has_tok) return true;
    next_epoch(s);
    uint32_t off = s->st[q].off, n = s->st[q].n;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = s->sf[off + i];
        uint32_t node = s->fr[f].node, parent = s->fr[f].parent;
        for (uint32_t k = g->node_first[node]; k < g->node_first[node + 1]; k++) {
            const gedge *e = &g->edges[k];
            if (e->kind != E_TOK || s->ref_tok[e->arg] != tok) continue;
            if (!closure(s, intern_frame(s, e->target, parent), &complete)) return soom(), false;
        }
    }
    uint32_t t = finish_state(s, complete);
    if (t == NO_IDX) return false;
    *out = t;
    return true;
}

/* The union of two states. */
static bool union_state(spud_grammar_state *s, uint32_t a, uint32_t b, uint32_t *out) {
    if (a == ST_DEAD || a == b) {
        *out = b;
        return true;
    }
    if (b == ST_DEAD) {
        *out = a;
        return true;
    }
    next_epoch(s);
    size_t need = (size_t)s->st[a].n + s->st[b].n;
    if (!GROW(s->res, s->capres, need + 1)) return soom(), false;
    const uint32_t *x = s->sf + s->st[a].off, *y = s->sf + s->st[b].off;
    uint32_t i = 0, j = 0, na = s->st[a].n, nb = s->st[b].n;
    while (i < na || j < nb) {
        uint32_t v;
        if (j >= nb || (i < na && x[i] < y[j])) {
            v = x[i++];
        } else if (i >= na || y[j] < x[i]) {
            v = y[j++];
        } else {
            v = x[i++];
            j++;
        }
        s->res[s->nres++] = v;
    }
    uint32_t t = intern_state(s, s->res, (uint32_t)s->nres, s->st[a].complete || s->st[b].complete);
    if (t == NO_IDX) return false;
    *out = t;
    return true;
}

static bool make_initial(spud_grammar_state *s) {
    bool complete = false;
    next_epoch(s);
    if (!closure(s, intern_frame(s, s->g->rule_start[s->g->root], 0), &complete)) return soom(), false;
    uint32_t t = finish_state(s, complete);
    if (t == NO_IDX) return false;
    s->init = t;
    return true;
}

/* Empty the DFA and frame tables (they outgrew the budget), keeping only the
 * current state and the initial one. */
static spud_status flush_tables(spud_grammar_state *s) {
    uint32_t *chain = NULL, *tops = NULL;
    size_t n_chain = 0, cap_chain = 0;
    const dstate cur = s->st[s->cur];
    spud_status st = SPUD_OK;
    /* Stacks of the current state, each as nodes bottom-up, ended by NO_IDX. */
    for (uint32_t i = 0; i < cur.n; i++) {
        size_t mark = n_chain;
        for (uint32_t f = s->sf[cur.off + i]; f != 0; f = s->fr[f].parent) {
            if (!GROW(chain, cap_chain, n_chain + 2)) goto oom;
            chain[n_chain++] = s->fr[f].node;
        }
        for (size_t a = mark, b = n_chain - 1; a < b; a++, b--) { /* reverse to bottom-up */
            uint32_t t = chain[a];
            chain[a] = chain[b];
            chain[b] = t;
        }
        chain[n_chain++] = NO_IDX;
    }
    s->nf = 1;
    if (s->fh) memset(s->fh, 0, s->fhcap * sizeof *s->fh);
    s->nst = 1;
    s->nsf = 0;
    s->ntr = (size_t)1 << s->shift;
    if (s->sh) memset(s->sh, 0, s->shcap * sizeof *s->sh);
    for (uint32_t i = 0; i < s->used_slots; i++) s->slot_owner[i] = NO_IDX;
    s->next_slot = 0;
    tops = spud_malloc(((size_t)cur.n + 1) * sizeof *tops);
    if (!tops) goto oom;
    {
        uint32_t k = 0, parent = 0;
        for (size_t i = 0; i < n_chain; i++) {
            if (chain[i] == NO_IDX) {
                tops[k++] = parent;
                parent = 0;
                continue;
            }
            parent = intern_frame(s, chain[i], parent);
            if (parent == NO_IDX) goto oom;
        }
        if (k > 1) qsort(tops, k, sizeof *tops, cmp_u32);
        uint32_t t = intern_state(s, tops, k, cur.complete);
        if (t == NO_IDX) {
            st = state_err(s);
            goto done;
        }
        s->cur = t;
    }
    if (!make_initial(s)) st = state_err(s);
    goto done;
oom:
    st = soom();
done:
    spud_free(chain);
    spud_free(tops);
    return st;
}

static spud_status check_budget(spud_grammar_state *s) {
    size_t bytes = s->nf * sizeof(gframe) + s->fhcap * 4 + s->nst * sizeof(dstate) + s->nsf * 4 + s->ntr * 4 +
                   s->shcap * 4;
    if (bytes <= s->budget) return SPUD_OK;
    spud_log(SPUD_LOG_DEBUG, "grammar: DFA cache at %zu bytes, rebuilding", bytes);
    return flush_tables(s);
}

void spud_grammar_state_free(spud_grammar_state *s) {
    if (!s) return;
    spud_free(s->ref_tok);
    spud_free(s->fr);
    spud_free(s->fh);
    spud_free(s->st);
    spud_free(s->sf);
    spud_free(s->tr);
    spud_free(s->sh);
    spud_free(s->work);
    spud_free(s->res);
    spud_free(s->dt);
    spud_free(s->masks);
    spud_free(s->slot_owner);
    for (size_t i = 0; i < s->n_trig; i++) spud_free(s->trig[i]);
    spud_free(s->trig);
    spud_free(s->trig_len);
    spud_free(s->win);
    spud_free(s->scratch);
    spud_free(s->cand);
    spud_free(s);
}

static const char *piece_of(const spud_grammar_vocab *v, int32_t id, size_t *len) {
    *len = v->piece_off[id + 1] - v->piece_off[id];
    return v->pieces + v->piece_off[id];
}

spud_status spud_grammar_state_new(const spud_grammar *g, const spud_grammar_vocab *v,
                                   const char *const *triggers, size_t n_triggers,
                                   spud_grammar_state **out) {
    *out = NULL;
    spud_grammar_state *s = spud_calloc(1, sizeof *s);
    spud_status st = SPUD_OK;
    if (!s) return soom();
    s->g = g;
    s->v = v;
    s->epoch = 1;
    s->budget = SPUD_GRAMMAR_STATE_BUDGET;
    s->words = ((size_t)v->n_vocab + 31) / 32;
    size_t mask_bytes = s->words * 4;
    size_t slots = ((size_t)32 << 20) / (mask_bytes ? mask_bytes : 1);
    s->n_slots = (uint32_t)(slots < 8 ? 8 : slots > 4096 ? 4096 : slots);
    s->ref_tok = spud_malloc(((size_t)g->n_refs + 1) * sizeof *s->ref_tok);
    s->dt = spud_malloc(((size_t)v->max_depth + 2) * sizeof *s->dt);
    s->slot_owner = spud_malloc((size_t)s->n_slots * sizeof *s->slot_owner);
    if (!s->ref_tok || !s->dt || !s->slot_owner) goto oom;
    for (uint32_t i = 0; i < g->n_refs; i++) {
        const gtokref *r = &g->refs[i];
        s->ref_tok[i] = -1;
        if (r->id >= 0) {
            if (r->id >= v->n_vocab) {
                st = spud_errorf(SPUD_ERR_NOT_FOUND, "grammar: token <[%lld]> is beyond the vocabulary (%d tokens)",
                                 (long long)r->id, v->n_vocab);
                goto fail;
            }
            s->ref_tok[i] = (int32_t)r->id;
            continue;
        }
        for (int32_t id = 0; id < v->n_vocab; id++) {
            size_t len;
            const char *p = piece_of(v, id, &len);
            if (len == r->len && !memcmp(p, r->text, len)) {
                s->ref_tok[i] = id;
                break;
            }
        }
        if (s->ref_tok[i] < 0) {
            st = spud_errorf(SPUD_ERR_NOT_FOUND, "grammar: token <%s> is not a single token of the vocabulary",
                             r->text);
            goto fail;
        }
    }
    /* Frame 0: the empty stack. State 0: dead (no frames, not complete). */
    while ((1u << s->shift) < g->n_cls) s->shift++;
    if (!GROW(s->fr, s->capf, 1) || !GROW(s->st, s->capst, 1) || !GROW(s->tr, s->captr, (size_t)1 << s->shift)) goto oom;
    s->fr[0] = (gframe){NO_IDX, NO_IDX, 0};
    s->nf = 1;
    s->st[0] = (dstate){.slot = -1};
    for (uint32_t c = 0; c < (1u << s->shift); c++) s->tr[c] = ST_DEAD;
    s->ntr = (size_t)1 << s->shift;
    s->nst = 1;
    if (!make_initial(s)) {
        st = state_err(s);
        goto fail;
    }
    s->cur = s->init;
    if (n_triggers) {
        s->trig = spud_calloc(n_triggers, sizeof *s->trig);
        s->trig_len = spud_calloc(n_triggers, sizeof *s->trig_len);
        if (!s->trig || !s->trig_len) goto oom;
        s->n_trig = n_triggers;
        bool last[256] = {false};
        for (size_t i = 0; i < n_triggers; i++) {
            size_t len = triggers[i] ? strlen(triggers[i]) : 0;
            if (!len) {
                st = spud_errorf(SPUD_ERR_INVALID, "grammar: empty trigger word");
                goto fail;
            }
            if (!(s->trig[i] = spud_strndup(triggers[i], len))) goto oom;
            s->trig_len[i] = len;
            if (len > s->max_trig) s->max_trig = len;
            last[(uint8_t)triggers[i][len - 1]] = true;
        }
        s->capscratch = s->max_trig + v->max_piece + 1;
        s->win = spud_malloc(s->max_trig + 1);
        s->scratch = spud_malloc(s->capscratch);
        if (!s->win || !s->scratch) goto oom;
        size_t cap = 0;
        for (int32_t id = 0; id < v->n_vocab; id++) {
            size_t len;
            const char *p = piece_of(v, id, &len);
            bool hit = false;
            for (size_t k = 0; k < len && !hit; k++) hit = last[(uint8_t)p[k]];
            if (hit && !GROW(s->cand, cap, s->n_cand + 1)) goto oom;
            if (hit) s->cand[s->n_cand++] = id;
        }
    }
    s->active = n_triggers == 0;
    *out = s;
    return SPUD_OK;
oom:
    st = soom();
fail:
    spud_grammar_state_free(s);
    return st;
}

void spud_grammar_state_reset(spud_grammar_state *s) {
    s->cur = s->init;
    s->finished = false;
    s->active = s->n_trig == 0;
    s->n_win = 0;
}

void spud_grammar_state_set_budget(spud_grammar_state *s, size_t bytes) { s->budget = bytes; }

bool spud_grammar_is_active(const spud_grammar_state *s) { return s->active; }

bool spud_grammar_is_complete(const spud_grammar_state *s) {
    return !s->finished && (!s->active || s->st[s->cur].complete);
}

bool spud_grammar_is_finished(const spud_grammar_state *s) {
    return s->active && !s->finished && s->st[s->cur].complete && s->st[s->cur].n == 0;
}

/* ---- lazy grammars: waiting for a trigger ---- */

static const char *find_bytes(const char *h, size_t n, const char *needle, size_t m) {
    if (m == 0 || m > n) return NULL;
    for (const char *p = h, *end = h + (n - m); p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) + 1);
        if (!p) return NULL;
        if (!memcmp(p, needle, m)) return p;
    }
    return NULL;
}

/* Where the first trigger in buf[0..n) ends (0: none). */
static size_t find_trigger(const spud_grammar_state *s, const char *buf, size_t n) {
    size_t best_start = SIZE_MAX, best_end = 0;
    for (size_t i = 0; i < s->n_trig; i++) {
        const char *hit = find_bytes(buf, n, s->trig[i], s->trig_len[i]);
        if (hit && (size_t)(hit - buf) < best_start) {
            best_start = (size_t)(hit - buf);
            best_end = best_start + s->trig_len[i];
        }
    }
    return best_end;
}

/* Feed output bytes to a waiting lazy grammar: look for a trigger in the
 * last bytes plus these; on one, match what follows it. *state_out: the state
 * to become active with (NO_IDX: no trigger; ST_DEAD: the grammar refuses). */
static bool lazy_scan(spud_grammar_state *s, const char *b, size_t n, char **buf, size_t *cap, uint32_t *state_out,
                      size_t *keep_from) {
    size_t need = s->n_win + n;
    if (need > *cap) {
        char *q = spud_realloc(*buf, need);
        if (!q) return soom(), false;
        *buf = q;
        *cap = need;
    }
    if (s->n_win) memcpy(*buf, s->win, s->n_win);
    if (n) memcpy(*buf + s->n_win, b, n);
    size_t end = find_trigger(s, *buf, need);
    *keep_from = need > s->max_trig - 1 ? need - (s->max_trig - 1) : 0;
    if (!end) {
        *state_out = NO_IDX;
        return true;
    }
    return walk(s, s->init, *buf + end, need - end, state_out);
}

static spud_status lazy_feed(spud_grammar_state *s, const char *b, size_t n) {
    uint32_t t;
    size_t keep;
    if (!lazy_scan(s, b, n, &s->scratch, &s->capscratch, &t, &keep)) return state_err(s);
    if (t == ST_DEAD)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: the text after the trigger does not match the grammar");
    if (t != NO_IDX) {
        s->active = true;
        s->cur = t;
        return SPUD_OK;
    }
    size_t total = s->n_win + n;
    memmove(s->win, s->scratch + keep, total - keep);
    s->n_win = total - keep;
    return SPUD_OK;
}

/* Whether a token would trigger the grammar with a continuation it refuses. */
static bool lazy_refuses(spud_grammar_state *s, int32_t id) {
    size_t len, keep;
    uint32_t t;
    const char *p = piece_of(s->v, id, &len);
    if (!lazy_scan(s, p, len, &s->scratch, &s->capscratch, &t, &keep)) return true;
    return t == ST_DEAD;
}

/* ---- masks ---- */

/* The mask of state q (into m, of s->words + 1 words: the last is scratch):
 * a preorder walk of the token trie. row[d] is the transition row of the
 * state after the first d bytes of the current path; a dead transition skips
 * the node's whole subtree. Each node's lookup depends on its parent's, so
 * the walk is bound by that chain (load row[d - 1], load the transition,
 * store row[d]): the table holds target rows, not ids, to keep a multiply
 * out of it. The write for a token ending at the node is branch-free (to the
 * scratch word when none does: that is not predictable). */
static spud_status mask_walk(spud_grammar_state *s, uint32_t q, uint32_t *m, size_t *count) {
    const spud_grammar_vocab *v = s->v;
    const uint8_t *cls = s->g->cls;
    const tnode *tn = v->trie;
    const int32_t *toks = v->toks;
    const uint32_t shift = s->shift, scratch = (uint32_t)s->words;
    uint32_t *row = s->dt;
    const uint32_t *tr = s->tr;
    size_t cnt = 0;
    row[0] = q << shift;
    for (uint32_t i = 0, n = v->n_nodes; i < n;) {
        uint32_t d = tn[i].depth, c = cls[tn[i].byte];
        uint32_t base = row[d - 1];
        uint32_t t = tr[base + c];
        if (t == TR_UNKNOWN) {
            uint32_t id;
            if (!compute_trans(s, base >> shift, c, &id)) return state_err(s);
            tr = s->tr;
            t = id << shift;
        }
        if (t == ST_DEAD) {
            i = tn[i].next;
            continue;
        }
        row[d] = t;
        uint32_t k = tn[i].tok, e = tn[i + 1].tok, id = (uint32_t)toks[k], has = k < e;
        m[has ? id >> 5 : scratch] |= 1u << (id & 31);
        cnt += has;
        if (__builtin_expect(e - k > 1, 0)) /* several tokens spell these bytes */
            for (k++; k < e; k++) {
                id = (uint32_t)toks[k];
                m[id >> 5] |= 1u << (id & 31);
                cnt++;
            }
        i++;
    }
    /* Token references and end of generation. */
    const dstate *st = &s->st[q];
    if (st->has_tok) {
        const spud_grammar *g = s->g;
        for (uint32_t i = 0; i < st->n; i++) {
            uint32_t node = s->fr[s->sf[st->off + i]].node;
            for (uint32_t k = g->node_first[node]; k < g->node_first[node + 1]; k++) {
                if (g->edges[k].kind != E_TOK) continue;
                uint32_t id = (uint32_t)s->ref_tok[g->edges[k].arg];
                if (!(m[id >> 5] & (1u << (id & 31)))) cnt++;
                m[id >> 5] |= 1u << (id & 31);
            }
        }
    }
    if (st->complete) {
        for (int32_t id = 0; id < v->n_vocab; id++)
            if (v->flags[id] & SPUD_GRAMMAR_TOK_EOG) {
                if (!(m[id >> 5] & (1u << (id & 31)))) cnt++;
                m[(uint32_t)id >> 5] |= 1u << (id & 31);
            }
    }
    *count = cnt;
    return SPUD_OK;
}

/* The mask of the current state (cached per state). *out points into the cache. */
static spud_status current_mask(spud_grammar_state *s, const uint32_t **out) {
    spud_status st;
    if (s->finished)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: the output already ended (end of generation accepted)");
    if ((st = check_budget(s))) return st;
    dstate *d = &s->st[s->cur];
    if (d->slot >= 0) {
        *out = s->masks + (size_t)d->slot * (s->words + 1);
        return SPUD_OK;
    }
    uint32_t slot = s->next_slot;
    s->next_slot = (s->next_slot + 1) % s->n_slots;
    if (slot >= s->used_slots) {
        if (!GROW(s->masks, s->capmasks, ((size_t)slot + 1) * (s->words + 1))) return soom();
        s->slot_owner[slot] = NO_IDX;
        s->used_slots = slot + 1;
    }
    if (s->slot_owner[slot] != NO_IDX) s->st[s->slot_owner[slot]].slot = -1;
    s->slot_owner[slot] = NO_IDX;
    uint32_t *m = s->masks + (size_t)slot * (s->words + 1);
    memset(m, 0, (s->words + 1) * 4);
    size_t count;
    if ((st = mask_walk(s, s->cur, m, &count))) return st;
    if (count == 0)
        return spud_errorf(SPUD_ERR_RANGE, "grammar: no token of the vocabulary can continue the output");
    s->slot_owner[slot] = s->cur;
    s->st[s->cur].slot = (int32_t)slot;
    *out = m;
    return SPUD_OK;
}

static void lazy_mask(spud_grammar_state *s, uint32_t *bits) {
    int32_t n = s->v->n_vocab;
    memset(bits, 0xFF, s->words * 4);
    if (n % 32) bits[s->words - 1] = (1u << (n % 32)) - 1;
    for (size_t i = 0; i < s->n_cand; i++) {
        uint32_t id = (uint32_t)s->cand[i];
        if (lazy_refuses(s, s->cand[i])) bits[id >> 5] &= ~(1u << (id & 31));
    }
}

spud_status spud_grammar_mask(spud_grammar_state *s, uint32_t *bits) {
    if (!s->active && !s->finished) {
        lazy_mask(s, bits);
        return SPUD_OK;
    }
    const uint32_t *m;
    spud_status st = current_mask(s, &m);
    if (st) return st;
    memcpy(bits, m, s->words * 4);
    return SPUD_OK;
}

spud_status spud_grammar_apply(spud_grammar_state *s, float *logits, int32_t n_vocab) {
    if (n_vocab != s->v->n_vocab)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: %d logits for a vocabulary of %d tokens", n_vocab,
                           s->v->n_vocab);
    if (!s->active && !s->finished) {
        for (size_t i = 0; i < s->n_cand; i++)
            if (lazy_refuses(s, s->cand[i])) logits[s->cand[i]] = -INFINITY;
        return SPUD_OK;
    }
    const uint32_t *m;
    spud_status st = current_mask(s, &m);
    if (st) return st;
    for (size_t w = 0; w < s->words; w++) {
        uint32_t x = m[w];
        if (x == UINT32_MAX) continue;
        int32_t base = (int32_t)(w * 32), end = base + 32 < n_vocab ? base + 32 : n_vocab;
        for (int32_t id = base; id < end; id++)
            if (!(x & (1u << (id - base)))) logits[id] = -INFINITY;
    }
    return SPUD_OK;
}

/* The state after token id from the current one (ST_DEAD: refused). */
static bool token_next(spud_grammar_state *s, int32_t id, uint32_t *out) {
    uint32_t a = ST_DEAD, b = ST_DEAD;
    if (in_trie(s->v, id)) {
        size_t len;
        const char *p = piece_of(s->v, id, &len);
        if (!walk(s, s->cur, p, len, &a)) return false;
    }
    if (s->st[s->cur].has_tok && !tok_trans(s, s->cur, id, &b)) return false;
    return union_state(s, a, b, out);
}

bool spud_grammar_allows(spud_grammar_state *s, int32_t token) {
    if (token < 0 || token >= s->v->n_vocab || s->finished) return false;
    if (!s->active) return !lazy_refuses(s, token);
    if (check_budget(s)) return false;
    const dstate *d = &s->st[s->cur];
    if (d->slot >= 0) return (s->masks[(size_t)d->slot * (s->words + 1) + ((uint32_t)token >> 5)] >> (token & 31)) & 1;
    if ((s->v->flags[token] & SPUD_GRAMMAR_TOK_EOG) && d->complete) return true;
    uint32_t t;
    return token_next(s, token, &t) && t != ST_DEAD;
}

spud_status spud_grammar_accept(spud_grammar_state *s, int32_t token) {
    spud_status st;
    if (token < 0 || token >= s->v->n_vocab)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: token %d is outside the vocabulary", token);
    if (s->finished)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: the output already ended (end of generation accepted)");
    bool eog = (s->v->flags[token] & SPUD_GRAMMAR_TOK_EOG) != 0;
    if (!s->active) {
        if (eog) {
            s->finished = true;
            return SPUD_OK;
        }
        size_t len;
        const char *p = piece_of(s->v, token, &len);
        return lazy_feed(s, p, len);
    }
    if ((st = check_budget(s))) return st;
    uint32_t t;
    if (!token_next(s, token, &t)) return state_err(s);
    if (t == ST_DEAD) {
        if (eog && s->st[s->cur].complete) {
            s->finished = true;
            return SPUD_OK;
        }
        size_t len;
        const char *p = piece_of(s->v, token, &len);
        return spud_errorf(SPUD_ERR_INVALID, "grammar: token %d ('%.*s') is not allowed here", token,
                           len > 40 ? 40 : (int)len, p);
    }
    s->cur = t;
    return SPUD_OK;
}

spud_status spud_grammar_accept_bytes(spud_grammar_state *s, const char *bytes, size_t n) {
    spud_status st;
    if (s->finished)
        return spud_errorf(SPUD_ERR_INVALID, "grammar: the output already ended (end of generation accepted)");
    if (!s->active) return lazy_feed(s, bytes, n);
    if ((st = check_budget(s))) return st;
    uint32_t t;
    if (!walk(s, s->cur, bytes, n, &t)) return state_err(s);
    if (t == ST_DEAD) return spud_errorf(SPUD_ERR_INVALID, "grammar: the text does not match the grammar");
    s->cur = t;
    return SPUD_OK;
}
