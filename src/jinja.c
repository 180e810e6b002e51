/* jinja.c: lexer, parser (to an AST) and evaluator of Jinja templates, with
 * the semantics of Python's jinja2 3.1 as Hugging Face configures it for chat
 * templates (see jinja.h).
 *
 * Layout, in dependency order: arenas; strings and values (Python's data
 * model: None, bool, int, float, str, list/tuple, ordered dict, plus the
 * jinja2 objects: Undefined, namespace, macro, loop, bound methods); Python
 * formatting (str(), repr(), json.dumps); the lexer (jinja2's lexer rules,
 * with trim_blocks and lstrip_blocks); the parser (jinja2's grammar); the
 * evaluator; filters, tests and methods; the public entry points.
 *
 * Memory: the AST lives in the template's arena; everything a render makes
 * lives in the render's arena, freed at once when it ends. Values are
 * immutable once built (the sandbox forbids mutating methods), so they are
 * shared freely; namespaces are the one mutable object.
 */
#define _GNU_SOURCE /* memmem */
#include "jinja.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#define JJ_MAX_SOURCE (8u << 20)     /* template bytes */
#define JJ_MAX_DEPTH 200             /* parser nesting */
#define JJ_MAX_CALL_DEPTH 100        /* macro calls / value nesting while rendering */
#define JJ_MAX_RANGE 100000          /* jinja2 sandbox MAX_RANGE */
#define JJ_DEFAULT_STEPS 50000000ull
#define JJ_DEFAULT_OUTPUT (64u << 20)
#define JJ_DEFAULT_MEMORY (512u << 20)

/* ------------------------------------------------------------------ arena */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    _Alignas(16) char data[];
} arena_chunk;

typedef struct {
    arena_chunk *head;
    size_t total, limit; /* bytes taken from malloc; 0 limit: unbounded */
} arena;

static void *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = c ? c->cap * 2 : 16384;
        if (cap > (1u << 20)) cap = 1u << 20;
        if (cap < n) cap = n;
        if (a->limit && (a->total + cap + sizeof *c > a->limit)) return NULL;
        c = spud_malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->used = 0;
        c->cap = cap;
        /* keep a half-used chunk current when a big block gets its own */
        if (a->head && cap == n && a->head->cap - a->head->used > 1024) {
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
        a->total += sizeof *c + cap;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static void arena_free(arena *a) {
    arena_chunk *c = a->head;
    while (c) {
        arena_chunk *n = c->next;
        spud_free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------------------ values */

/* Taint: which bytes of a string came from the render's untrusted variables
 * (see spud_jinja_render_taint): none, all, or the byte ranges in runs
 * (sorted, disjoint, not touching, non-empty). Runs keep the cost of taint
 * per operation, not per byte, where strings are joined and cut. */
enum { TAINT_NONE, TAINT_ALL, TAINT_RUNS };

typedef struct {
    size_t a, b; /* bytes [a, b) */
} trun;

typedef struct jstr {
    size_t len;
    bool safe;         /* markupsafe.Markup */
    uint8_t taint;     /* TAINT_* */
    uint32_t n_runs;   /* TAINT_RUNS: how many */
    const trun *runs;  /* TAINT_RUNS: the tainted ranges */
    char s[];          /* NUL-terminated */
} jstr;

/* A jstr literal with static storage (the same layout as jstr). */
#define JSTR_LIT(var, lit)                                                                         \
    static const struct {                                                                          \
        size_t len;                                                                                \
        bool safe;                                                                                 \
        uint8_t taint;                                                                             \
        uint32_t n_runs;                                                                           \
        const trun *runs;                                                                          \
        char s[sizeof(lit)];                                                                       \
    } var##_lit_ = {sizeof(lit) - 1, false, TAINT_NONE, 0, NULL, lit};                                                  \
    const jstr *const var = (const jstr *)(const void *)&var##_lit_

typedef enum {
    T_UNDEF,
    T_NONE,
    T_BOOL,
    T_INT,
    T_FLOAT,
    T_STR,
    T_LIST, /* list, or tuple when flag */
    T_DICT,
    T_NS,
    T_MACRO,
    T_FUNC,
    T_LOOP,
} vtype;

/* Undefined kinds (what made it; used for the error message). */
enum { U_NAME, U_ATTR, U_ITEM, U_UNSAFE, U_HINT };

struct jlist;
struct jdict;
struct jns;
struct jmacro;
struct jfunc;
struct jloop;

typedef struct value {
    uint8_t t;
    uint8_t flag; /* T_LIST: tuple; T_UNDEF: U_* kind */
    uint8_t aux;  /* T_UNDEF: type of the object that lacked the attribute */
    union {
        bool b;
        int64_t i;
        double f;
        const jstr *s; /* T_STR; T_UNDEF: the name (may be NULL) */
        struct jlist *l;
        struct jdict *d;
        struct jns *ns;
        struct jmacro *m;
        struct jfunc *fn;
        struct jloop *loop;
        const char *hint;
    } u;
} value;

typedef struct jlist {
    size_t n;
    value *v;
    const char *err; /* a generator whose first iteration raises this (jinja2's lazy filters) */
} jlist;

typedef struct jdict {
    size_t n, cap;
    value *k, *v;
} jdict;

typedef struct jns {
    jdict d;
} jns;

static const value V_UNDEF = {.t = T_UNDEF};
static const value V_NONE = {.t = T_NONE};

static value v_bool(bool b) { return (value){.t = T_BOOL, .u.b = b}; }
static value v_int(int64_t i) { return (value){.t = T_INT, .u.i = i}; }
static value v_float(double f) { return (value){.t = T_FLOAT, .u.f = f}; }
static value v_str(const jstr *s) { return (value){.t = T_STR, .u.s = s}; }

/* ------------------------------------------------------------------ UTF-8 */

/* Decode one code point at s[0..n) (valid UTF-8 assumed: sources and JSON
 * strings are validated on the way in). Returns its length. */
static int u8_dec(const char *s, size_t n, int32_t *cp) {
    const unsigned char *p = (const unsigned char *)s;
    if (p[0] < 0x80 || n < 2) {
        *cp = p[0];
        return 1;
    }
    if (p[0] < 0xE0) {
        *cp = ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    if (p[0] < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = p[0];
            return 1;
        }
        *cp = ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        return 3;
    }
    *cp = ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    return 4;
}

static int u8_enc(int32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Strict UTF-8: no overlongs, surrogates or code points above U+10FFFF. */
static bool u8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int k = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
        if (k == 0 || c > 0xF4 || n - i < (size_t)k) return false;
        for (int j = 1; j < k; j++)
            if ((p[i + j] & 0xC0) != 0x80) return false;
        if (c == 0xE0 && p[i + 1] < 0xA0) return false;
        if (c == 0xED && p[i + 1] >= 0xA0) return false;
        if (c == 0xF0 && p[i + 1] < 0x90) return false;
        if (c == 0xF4 && p[i + 1] >= 0x90) return false;
        i += (size_t)k;
    }
    return true;
}

/* Python's str.isspace() / re's \s for str patterns. */
static bool py_space(int32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Length in bytes of the whitespace code point at s[i], or 0. */
static int space_at(const char *s, size_t n, size_t i) {
    int32_t c;
    int k = u8_dec(s + i, n - i, &c);
    return py_space(c) ? k : 0;
}

/* Start of the whitespace run that ends at s[n] (for rstrip). */
static size_t rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t j = n - 1;
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
        int32_t c;
        u8_dec(s + j, n - j, &c);
        if (!py_space(c)) break;
        n = j;
    }
    return n;
}

static size_t u8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Python's str.splitlines() line breaks: length of the break at s[i], or 0. */
static int linebreak_at(const char *s, size_t n, size_t i) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r') return (i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
    if (c == '\n' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e) return 1;
    if (c >= 0x80) {
        int32_t cp;
        int k = u8_dec(s + i, n - i, &cp);
        if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) return k;
    }
    return 0;
}

/* ------------------------------------------------------------------ AST */

typedef enum {
    /* statements */
    S_BODY,
    S_TEXT,
    S_OUT,
    S_IF,
    S_FOR,
    S_SET,
    S_SETBLOCK,
    S_MACRO,
    S_CALLBLOCK,
    S_FILTERBLOCK,
    S_WITH,
    S_BREAK,
    S_CONTINUE,
    /* expressions */
    E_CONST,
    E_NAME,
    E_GETATTR,
    E_GETITEM,
    E_SLICE,
    E_CALL,
    E_FILTER,
    E_TEST,
    E_NEG,
    E_POS,
    E_NOT,
    E_BIN,
    E_AND,
    E_OR,
    E_CMP,
    E_COND,
    E_LIST,
    E_TUPLE,
    E_DICT,
    E_BLOCKVAL, /* the captured body of a set/filter block, as a filter's operand */
    E_NSREF,    /* `ns.attr` as an assignment target */
    E_CONCAT,
} nkind;

typedef struct node node;
struct node {
    uint8_t kind;
    uint8_t op;    /* E_BIN operator; E_FILTER / E_TEST: id; S_FOR: recursive */
    uint8_t flags; /* S_MACRO: uses caller / varargs / kwargs; E_FILTER/E_TEST: soft (unknown at runtime) */
    int line;
    node *a, *b, *c, *d, *e;
    node **kids;  /* statements, items, positional arguments, compare operands, defaults */
    node **kids2; /* dict values, keyword argument values */
    const jstr **names; /* keyword argument names, macro parameters */
    uint8_t *ops;       /* E_CMP operators */
    uint32_t nk, nk2, nn;
    value v; /* E_CONST value; E_NAME / E_GETATTR / S_MACRO / E_FILTER / E_TEST / E_NSREF: name in v.u.s */
};

enum { MF_CALLER = 1, MF_VARARGS = 2, MF_KWARGS = 4 };

struct spud_jinja_template {
    arena a;
    node *root;
};

/* operators (lexer tokens and E_BIN / E_CMP ops) */
enum {
    OP_NONE,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_TILDE,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOTIN,
    OP_LBRACKET,
    OP_RBRACKET,
    OP_LPAREN,
    OP_RPAREN,
    OP_LBRACE,
    OP_RBRACE,
    OP_ASSIGN,
    OP_DOT,
    OP_COLON,
    OP_PIPE,
    OP_COMMA,
    OP_SEMICOLON,
};

/* ------------------------------------------------------------------ render state */

typedef struct {
    char *p;
    size_t n, cap;
    trun *t; /* tainted ranges of p, as in jstr */
    size_t nt, cap_t;
} buf;

typedef struct frame {
    struct frame *parent;
    uint32_t n, cap;
    const jstr **names;
    value *vals;
} frame;

typedef struct jmacro {
    const node *def;   /* S_MACRO, or S_CALLBLOCK for a `caller` */
    frame *scope;      /* where it was defined */
    value caller;      /* for macros called by a call block */
} jmacro;

typedef struct jfunc {
    int id;
    value self;
} jfunc;

typedef struct jloop {
    const value *items;
    int64_t n, i;
    int depth;
} jloop;

typedef struct {
    const spud_jinja_template *t;
    arena a;
    buf *out;
    uint64_t steps, max_steps;
    size_t max_output;
    int line, depth;
    bool failed;
    spud_status st;
    char msg[600];
    const jdict *vars;
    frame *f;
    value blockval;
    int64_t now;
    bool now_set;
    bool bind_failed; /* the last error was a call's arguments not fitting its signature */
    const char *const *trusted; /* variables whose strings are clean (NULL-terminated) */
} R;

enum { FLOW_OK, FLOW_ERR, FLOW_BREAK, FLOW_CONTINUE };

/* Messages are one line: control characters (from names in the template) become spaces. */
static void one_line(char *m) {
    for (; *m; m++)
        if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = ' ';
}

static bool fail(R *r, spud_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(R *r, spud_status st, const char *fmt, ...) {
    if (r->failed) return false;
    r->failed = true;
    r->st = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    one_line(r->msg);
    return false;
}

#define FAIL(r, ...) fail((r), SPUD_ERR_INVALID, __VA_ARGS__)

static bool step(R *r, uint64_t n) {
    r->steps += n;
    if (r->steps > r->max_steps)
        return fail(r, SPUD_ERR_RANGE, "template exceeded %" PRIu64 " evaluation steps",
                    r->max_steps);
    return true;
}

static void *ralloc(R *r, size_t n) {
    void *p = arena_alloc(&r->a, n);
    if (!p) fail(r, SPUD_ERR_NOMEM, "template render out of memory (limit %zu bytes)", r->a.limit);
    return p;
}

/* Append n clean bytes. */
static bool buf_put(R *r, buf *b, const char *s, size_t n) {
    if (n == 0) return true;
    if (b->n + n > r->max_output)
        return fail(r, SPUD_ERR_RANGE, "template output exceeds %zu bytes", r->max_output);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = spud_realloc(b->p, cap);
        if (!p) return fail(r, SPUD_ERR_NOMEM, "out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

/* Mark bytes [from, to) of b tainted; no byte after `to` is tainted yet, so
 * the runs that reach `from` are the last ones: they merge into one. */
static bool buf_taint_range(R *r, buf *b, size_t from, size_t to) {
    if (from >= to) return true;
    while (b->nt && b->t[b->nt - 1].b >= from) {
        trun last = b->t[--b->nt];
        if (last.a < from) from = last.a;
        if (last.b > to) to = last.b;
    }
    if (b->nt == b->cap_t) {
        size_t cap = b->cap_t ? b->cap_t * 2 : 8;
        trun *t = spud_realloc(b->t, cap * sizeof *t);
        if (!t) return fail(r, SPUD_ERR_NOMEM, "out of memory");
        b->t = t;
        b->cap_t = cap;
    }
    b->t[b->nt++] = (trun){from, to};
    return true;
}

/* Mark bytes [from, b->n) tainted. */
static bool buf_taint(R *r, buf *b, size_t from) { return buf_taint_range(r, b, from, b->n); }

/* The first run of s that ends after byte i (s->n_runs if none). */
static size_t run_after(const jstr *s, size_t i) {
    size_t lo = 0, hi = s->n_runs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->runs[mid].b <= i) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static bool str_byte_tainted(const jstr *s, size_t i) {
    if (s->taint != TAINT_RUNS) return s->taint == TAINT_ALL;
    size_t k = run_after(s, i);
    return k < s->n_runs && s->runs[k].a <= i;
}

/* Append s's bytes [off, off + n) with their taint. */
static bool buf_put_str(R *r, buf *b, const jstr *s, size_t off, size_t n) {
    size_t at = b->n;
    if (!buf_put(r, b, s->s + off, n)) return false;
    if (s->taint == TAINT_ALL) return buf_taint(r, b, at);
    if (s->taint == TAINT_RUNS)
        for (size_t k = run_after(s, off); k < s->n_runs && s->runs[k].a < off + n; k++) {
            size_t x = s->runs[k].a > off ? s->runs[k].a : off, y = s->runs[k].b < off + n ? s->runs[k].b : off + n;
            if (!buf_taint_range(r, b, at + x - off, at + y - off)) return false;
        }
    return true;
}

static bool buf_puts(R *r, buf *b, const char *s) { return buf_put(r, b, s, strlen(s)); }
static bool buf_putc(R *r, buf *b, char c) { return buf_put(r, b, &c, 1); }
static void buf_free(buf *b) {
    spud_free(b->p);
    spud_free(b->t);
    *b = (buf){0};
}

/* A clean string. */
static jstr *str_new(R *r, const char *s, size_t n, bool safe) {
    jstr *j = ralloc(r, sizeof *j + n + 1);
    if (!j) return NULL;
    j->len = n;
    j->safe = safe;
    j->taint = TAINT_NONE;
    j->n_runs = 0;
    j->runs = NULL;
    if (n) memcpy(j->s, s, n);
    j->s[n] = '\0';
    return j;
}

/* Give fresh string j the runs t[0..n) (clipped to nothing, all or runs). */
static bool str_set_runs(R *r, jstr *j, const trun *t, size_t n) {
    j->taint = TAINT_NONE;
    if (n == 0 || j->len == 0) return true;
    if (n == 1 && t[0].a == 0 && t[0].b == j->len) {
        j->taint = TAINT_ALL;
        return true;
    }
    if (n > UINT32_MAX) {
        j->taint = TAINT_ALL; /* more runs than a count holds: conservatively all */
        return true;
    }
    trun *c = ralloc(r, n * sizeof *c);
    if (!c) return false;
    memcpy(c, t, n * sizeof *c);
    j->taint = TAINT_RUNS;
    j->n_runs = (uint32_t)n;
    j->runs = c;
    return true;
}

/* s's bytes [off, off + n) as a string, with their taint. */
static jstr *str_sub(R *r, const jstr *s, size_t off, size_t n, bool safe) {
    jstr *j = str_new(r, s->s + off, n, safe);
    if (!j || !n || s->taint == TAINT_NONE) return j;
    if (s->taint == TAINT_ALL) {
        j->taint = TAINT_ALL;
        return j;
    }
    size_t k0 = run_after(s, off), k1 = k0;
    while (k1 < s->n_runs && s->runs[k1].a < off + n) k1++;
    if (k1 == k0) return j;
    trun *t = ralloc(r, (k1 - k0) * sizeof *t);
    if (!t) return NULL;
    for (size_t k = k0; k < k1; k++) {
        size_t x = s->runs[k].a > off ? s->runs[k].a : off, y = s->runs[k].b < off + n ? s->runs[k].b : off + n;
        t[k - k0] = (trun){x - off, y - off};
    }
    return str_set_runs(r, j, t, k1 - k0) ? j : NULL;
}

/* A string computed from src (a case change, an escape, ...) is tainted
 * wholly when any byte of src is: the conservative rule for operations
 * that do not keep bytes in place. out must be fresh (not a literal). */
static void str_taint_from(jstr *out, const jstr *src) {
    if (src->taint != TAINT_NONE && out->len) out->taint = TAINT_ALL;
}

/* The buffer's bytes (and their taint) as a string; frees the buffer. */
static jstr *buf_finish(R *r, buf *b, bool safe) {
    jstr *s = NULL;
    if (r->failed) goto done;
    s = str_new(r, b->p ? b->p : "", b->n, safe);
    if (s && !str_set_runs(r, s, b->t, b->nt)) s = NULL;
done:
    buf_free(b);
    return s;
}

static bool str_eq(const jstr *a, const jstr *b) {
    return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
}
static bool str_eqc(const jstr *a, const char *c) {
    size_t n = strlen(c);
    return a->len == n && memcmp(a->s, c, n) == 0;
}

static jlist *list_new(R *r, size_t n) {
    jlist *l = ralloc(r, sizeof *l);
    if (!l) return NULL;
    l->err = NULL;
    l->n = n;
    l->v = n ? ralloc(r, n * sizeof(value)) : NULL;
    if (n && !l->v) return NULL;
    return l;
}

static value v_list(jlist *l, int flag) { return (value){.t = T_LIST, .flag = (uint8_t)flag, .u.l = l}; }

/* ------------------------------------------------------------------ Python formatting */

static const char *type_name(const value *v) {
    switch (v->t) {
    case T_UNDEF: return "Undefined";
    case T_NONE: return "NoneType";
    case T_BOOL: return "bool";
    case T_INT: return "int";
    case T_FLOAT: return "float";
    case T_STR: return v->u.s->safe ? "Markup" : "str";
    case T_LIST: return v->flag ? "tuple" : "list";
    case T_DICT: return "dict";
    case T_NS: return "Namespace";
    case T_MACRO: return "Macro";
    case T_FUNC: return "builtin_function_or_method";
    case T_LOOP: return "LoopContext";
    }
    return "object";
}

/* float.__repr__: the shortest digits that round-trip, fixed notation for
 * exponents -4..15, else d.ddde+XX. */
static void fmt_float(char *out, size_t cap, double d) {
    if (isnan(d)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, d);
        if (strtod(tmp, NULL) == d) break;
    }
    char digits[24];
    int nd = 0, exp10 = 0;
    const char *q = tmp;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9' && nd < 20) digits[nd++] = *q;
    if (*q == 'e') exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    char *o = out, *end = out + cap - 1;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (o < end) *o++ = (c);                                                                   \
    } while (0)
    if (neg) PUT('-');
    if (exp10 >= -4 && exp10 < 16) {
        int decpt = exp10 + 1;
        if (decpt <= 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -decpt; i++) PUT('0');
            for (int i = 0; i < nd; i++) PUT(digits[i]);
        } else if (decpt >= nd) {
            for (int i = 0; i < nd; i++) PUT(digits[i]);
            for (int i = nd; i < decpt; i++) PUT('0');
            PUT('.');
            PUT('0');
        } else {
            for (int i = 0; i < nd; i++) {
                if (i == decpt) PUT('.');
                PUT(digits[i]);
            }
        }
        *o = '\0';
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++) PUT(digits[i]);
        }
        *o = '\0';
        size_t used = (size_t)(o - out);
        snprintf(o, cap - used, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
#undef PUT
}

static bool py_printable(int32_t c) {
    if (c < 0x7f) return c >= 0x20;
    if (c < 0xa1) return false; /* 0x7f..0x9f controls, 0xa0 a space separator */
    utf8proc_category_t cat = utf8proc_category(c);
    switch (cat) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
    }
}

static bool repr_str_clean(R *r, buf *b, const jstr *s);

/* repr(s): escaped, so a tainted s taints all of it. */
static bool repr_str(R *r, buf *b, const jstr *s) {
    size_t at = b->n;
    return repr_str_clean(r, b, s) && (s->taint == TAINT_NONE || buf_taint(r, b, at));
}

static bool repr_str_clean(R *r, buf *b, const jstr *s) {
    bool has_sq = memchr(s->s, '\'', s->len) != NULL, has_dq = memchr(s->s, '"', s->len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    if (s->safe && !buf_puts(r, b, "Markup(")) return false;
    if (!buf_putc(r, b, q)) return false;
    for (size_t i = 0; i < s->len;) {
        int32_t c;
        int k = u8_dec(s->s + i, s->len - i, &c);
        char esc[16];
        if (c == q || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            if (!buf_put(r, b, esc, 2)) return false;
        } else if (c == '\t') {
            if (!buf_puts(r, b, "\\t")) return false;
        } else if (c == '\n') {
            if (!buf_puts(r, b, "\\n")) return false;
        } else if (c == '\r') {
            if (!buf_puts(r, b, "\\r")) return false;
        } else if (py_printable(c)) {
            if (!buf_put(r, b, s->s + i, (size_t)k)) return false;
        } else {
            if (c <= 0xff)
                snprintf(esc, sizeof esc, "\\x%02x", (unsigned)c);
            else if (c <= 0xffff)
                snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
            else
                snprintf(esc, sizeof esc, "\\U%08x", (unsigned)c);
            if (!buf_puts(r, b, esc)) return false;
        }
        i += (size_t)k;
    }
    if (!buf_putc(r, b, q)) return false;
    return !s->safe || buf_putc(r, b, ')');
}

static bool repr_value(R *r, buf *b, value v, int depth);

/* str(v) as Python prints it (what {{ v }} writes). */
static bool str_value(R *r, buf *b, value v, int depth) {
    char tmp[64];
    switch (v.t) {
    case T_UNDEF: return true;
    case T_NONE: return buf_puts(r, b, "None");
    case T_BOOL: return buf_puts(r, b, v.u.b ? "True" : "False");
    case T_INT:
        snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i);
        return buf_puts(r, b, tmp);
    case T_FLOAT: fmt_float(tmp, sizeof tmp, v.u.f); return buf_puts(r, b, tmp);
    case T_STR: return buf_put_str(r, b, v.u.s, 0, v.u.s->len);
    default: return repr_value(r, b, v, depth);
    }
}

static bool repr_value(R *r, buf *b, value v, int depth) {
    if (depth > JJ_MAX_CALL_DEPTH * 4) return FAIL(r, "value nested too deeply to print");
    if (!step(r, 1)) return false;
    switch (v.t) {
    case T_UNDEF: return buf_puts(r, b, "Undefined");
    case T_STR: return repr_str(r, b, v.u.s);
    case T_LIST: {
        /* flags: 0 list, 1 tuple, 2 generator, 3-5 dict_items / dict_keys / dict_values */
        static const char *const view[] = {"", "", "", "dict_items(", "dict_keys(", "dict_values("};
        if (v.flag == 2) return buf_puts(r, b, "<generator object>");
        bool tuple = v.flag == 1;
        if (v.flag > 2 && !buf_puts(r, b, view[v.flag])) return false;
        if (!buf_putc(r, b, tuple ? '(' : '[')) return false;
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i && !buf_puts(r, b, ", ")) return false;
            if (!repr_value(r, b, v.u.l->v[i], depth + 1)) return false;
        }
        if (tuple && v.u.l->n == 1 && !buf_putc(r, b, ',')) return false;
        if (!buf_putc(r, b, tuple ? ')' : ']')) return false;
        return v.flag <= 2 || buf_putc(r, b, ')');
    }
    case T_DICT:
    case T_NS: {
        const jdict *d = v.t == T_DICT ? v.u.d : &v.u.ns->d;
        if (v.t == T_NS && !buf_puts(r, b, "<Namespace ")) return false;
        if (!buf_putc(r, b, '{')) return false;
        for (size_t i = 0; i < d->n; i++) {
            if (i && !buf_puts(r, b, ", ")) return false;
            if (!repr_value(r, b, d->k[i], depth + 1) || !buf_puts(r, b, ": ") ||
                !repr_value(r, b, d->v[i], depth + 1))
                return false;
        }
        if (!buf_putc(r, b, '}')) return false;
        return v.t == T_DICT || buf_putc(r, b, '>');
    }
    case T_MACRO:
        if (v.u.m->def->kind == S_MACRO) {
            if (!buf_puts(r, b, "<Macro ")) return false;
            if (!repr_str(r, b, v.u.m->def->v.u.s)) return false;
            return buf_putc(r, b, '>');
        }
        return buf_puts(r, b, "<Macro anonymous>");
    case T_FUNC: return buf_puts(r, b, "<built-in function>");
    case T_LOOP: {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "<LoopContext %" PRId64 "/%" PRId64 ">", v.u.loop->i + 1,
                 v.u.loop->n);
        return buf_puts(r, b, tmp);
    }
    default: return str_value(r, b, v, depth);
    }
}

/* ---- json.dumps(v, ensure_ascii=False, indent=..., separators=..., sort_keys=...) */

typedef struct {
    const jstr *indent; /* NULL: no indent */
    const char *item_sep, *key_sep;
    size_t item_sep_len, key_sep_len;
    bool sort_keys;
    bool ascii; /* ensure_ascii: \uXXXX for everything above 0x7f */
} json_fmt;

static bool json_str(R *r, buf *b, const char *s, size_t n, bool ascii) {
    if (!buf_putc(r, b, '"')) return false;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", c);
                esc = tmp;
            } else if (c >= 0x80 && ascii) {
                int32_t cp;
                int k = u8_dec(s + i, n - i, &cp);
                char u[16];
                if (cp >= 0x10000)
                    snprintf(u, sizeof u, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10),
                             0xDC00 + ((cp - 0x10000) & 0x3FF));
                else
                    snprintf(u, sizeof u, "\\u%04x", (unsigned)cp);
                if (!buf_put(r, b, s + run, i - run) || !buf_puts(r, b, u)) return false;
                i += (size_t)k - 1;
                run = i + 1;
                continue;
            }
        }
        if (esc) {
            if (!buf_put(r, b, s + run, i - run) || !buf_puts(r, b, esc)) return false;
            run = i + 1;
        }
    }
    if (!buf_put(r, b, s + run, n - run)) return false;
    return buf_putc(r, b, '"');
}

static bool json_newline(R *r, buf *b, const json_fmt *jf, int level) {
    if (!buf_putc(r, b, '\n')) return false;
    for (int i = 0; i < level; i++)
        if (!buf_put(r, b, jf->indent->s, jf->indent->len)) return false;
    return true;
}

/* A string as JSON: escaped, so a tainted s taints all of it. */
static bool json_jstr(R *r, buf *b, const jstr *s, bool ascii) {
    size_t at = b->n;
    return json_str(r, b, s->s, s->len, ascii) && (s->taint == TAINT_NONE || buf_taint(r, b, at));
}

static bool json_key(R *r, buf *b, value k, bool ascii) {
    char tmp[64];
    switch (k.t) {
    case T_STR: return json_jstr(r, b, k.u.s, ascii);
    case T_BOOL: return json_str(r, b, k.u.b ? "true" : "false", k.u.b ? 4 : 5, ascii);
    case T_NONE: return json_str(r, b, "null", 4, ascii);
    case T_INT:
        snprintf(tmp, sizeof tmp, "%" PRId64, k.u.i);
        return json_str(r, b, tmp, strlen(tmp), ascii);
    case T_FLOAT:
        if (isnan(k.u.f))
            snprintf(tmp, sizeof tmp, "NaN");
        else if (isinf(k.u.f))
            snprintf(tmp, sizeof tmp, k.u.f < 0 ? "-Infinity" : "Infinity");
        else
            fmt_float(tmp, sizeof tmp, k.u.f);
        return json_str(r, b, tmp, strlen(tmp), ascii);
    default:
        return FAIL(r, "keys must be str, int, float, bool or None, not %s", type_name(&k));
    }
}

static int cmp_str(const jstr *a, const jstr *b) {
    /* UTF-8 byte order is code point order, as Python compares str */
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c) return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

static bool json_value(R *r, buf *b, value v, const json_fmt *jf, int level) {
    char tmp[64];
    if (level > JJ_MAX_CALL_DEPTH * 4) return FAIL(r, "value nested too deeply for tojson");
    if (!step(r, 1)) return false;
    switch (v.t) {
    case T_NONE: return buf_puts(r, b, "null");
    case T_BOOL: return buf_puts(r, b, v.u.b ? "true" : "false");
    case T_INT:
        snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i);
        return buf_puts(r, b, tmp);
    case T_FLOAT:
        if (isnan(v.u.f)) return buf_puts(r, b, "NaN");
        if (isinf(v.u.f)) return buf_puts(r, b, v.u.f < 0 ? "-Infinity" : "Infinity");
        fmt_float(tmp, sizeof tmp, v.u.f);
        return buf_puts(r, b, tmp);
    case T_STR: return json_jstr(r, b, v.u.s, jf->ascii);
    case T_LIST: {
        const jlist *l = v.u.l;
        if (v.flag > 1) /* a generator or a dict view */
            return FAIL(r, "Object of type %s is not JSON serializable",
                        v.flag == 2 ? "generator" : v.flag == 3 ? "dict_items" : v.flag == 4 ? "dict_keys" : "dict_values");
        if (l->n == 0) return buf_puts(r, b, "[]");
        if (!buf_putc(r, b, '[')) return false;
        for (size_t i = 0; i < l->n; i++) {
            if (i && !buf_put(r, b, jf->item_sep, jf->item_sep_len)) return false;
            if (jf->indent && !json_newline(r, b, jf, level + 1)) return false;
            if (!json_value(r, b, l->v[i], jf, level + 1)) return false;
        }
        if (jf->indent && !json_newline(r, b, jf, level)) return false;
        return buf_putc(r, b, ']');
    }
    case T_DICT: {
        const jdict *d = v.u.d;
        if (d->n == 0) return buf_puts(r, b, "{}");
        size_t *order = ralloc(r, d->n * sizeof *order);
        if (!order) return false;
        for (size_t i = 0; i < d->n; i++) order[i] = i;
        if (jf->sort_keys) {
            for (size_t i = 0; i < d->n; i++)
                if (d->k[i].t != T_STR) return FAIL(r, "sort_keys needs string keys");
            if (!step(r, d->n * d->n / 8)) return false;
            for (size_t i = 1; i < d->n; i++) { /* insertion sort: stable, dicts are small */
                size_t x = order[i], j = i;
                while (j > 0 && cmp_str(d->k[order[j - 1]].u.s, d->k[x].u.s) > 0) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
            }
        }
        if (!buf_putc(r, b, '{')) return false;
        for (size_t i = 0; i < d->n; i++) {
            if (i && !buf_put(r, b, jf->item_sep, jf->item_sep_len)) return false;
            if (jf->indent && !json_newline(r, b, jf, level + 1)) return false;
            if (!json_key(r, b, d->k[order[i]], jf->ascii) ||
                !buf_put(r, b, jf->key_sep, jf->key_sep_len) ||
                !json_value(r, b, d->v[order[i]], jf, level + 1))
                return false;
        }
        if (jf->indent && !json_newline(r, b, jf, level)) return false;
        return buf_putc(r, b, '}');
    }
    default: return FAIL(r, "Object of type %s is not JSON serializable", type_name(&v));
    }
}

/* ------------------------------------------------------------------ names of filters and tests */

static const char *const filter_names[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent",
    "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "pprint",
    "random", "reject", "rejectattr", "replace", "reverse", "round", "safe", "select",
    "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
};
enum {
    F_ABS, F_ATTR, F_BATCH, F_CAPITALIZE, F_CENTER, F_COUNT, F_D, F_DEFAULT, F_DICTSORT, F_E,
    F_ESCAPE, F_FILESIZEFORMAT, F_FIRST, F_FLOAT, F_FORCEESCAPE, F_FORMAT, F_GROUPBY, F_INDENT,
    F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP, F_MAX, F_MIN, F_PPRINT,
    F_RANDOM, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND, F_SAFE, F_SELECT,
    F_SELECTATTR, F_SLICE, F_SORT, F_STRING, F_STRIPTAGS, F_SUM, F_TITLE, F_TOJSON, F_TRIM,
    F_TRUNCATE, F_UNIQUE, F_UPPER, F_URLENCODE, F_URLIZE, F_WORDCOUNT, F_WORDWRAP, F_XMLATTR,
    F_COUNT_ALL, F_UNKNOWN = 255
};

static const char *const test_names[] = {
    "odd", "even", "divisibleby", "defined", "undefined", "filter", "test", "none", "boolean",
    "false", "true", "integer", "float", "lower", "upper", "string", "mapping", "number",
    "sequence", "iterable", "callable", "sameas", "escaped", "in", "==", "eq", "equalto", "!=",
    "ne", ">", "gt", "greaterthan", "ge", ">=", "<", "lt", "lessthan", "<=", "le",
};
enum {
    TS_ODD, TS_EVEN, TS_DIVISIBLEBY, TS_DEFINED, TS_UNDEFINED, TS_FILTER, TS_TEST, TS_NONE,
    TS_BOOLEAN, TS_FALSE, TS_TRUE, TS_INTEGER, TS_FLOAT, TS_LOWER, TS_UPPER, TS_STRING,
    TS_MAPPING, TS_NUMBER, TS_SEQUENCE, TS_ITERABLE, TS_CALLABLE, TS_SAMEAS, TS_ESCAPED, TS_IN,
    TS_EQ1, TS_EQ2, TS_EQ3, TS_NE1, TS_NE2, TS_GT1, TS_GT2, TS_GT3, TS_GE1, TS_GE2, TS_LT1,
    TS_LT2, TS_LT3, TS_LE1, TS_LE2, TS_COUNT_ALL
};

static int name_index(const char *const *names, size_t n, const char *s, size_t len) {
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) return (int)i;
    return -1;
}

/* ------------------------------------------------------------------ lexer */

enum { K_EOF, K_DATA, K_VAR_BEGIN, K_VAR_END, K_BLOCK_BEGIN, K_BLOCK_END, K_NAME, K_STRING,
       K_INT, K_FLOAT, K_OP };

typedef struct {
    uint8_t type, op;
    int line;
    const char *s; /* K_NAME: into the normalized source */
    size_t len;
    const jstr *str; /* K_DATA, K_STRING */
    int64_t i;
    double f;
} token;

typedef struct {
    arena *a;
    const char *src;
    size_t n;
    token *toks;
    size_t nt, cap, pos;
    bool failed;
    char msg[512];
    int depth, loop_depth;
} P;

static bool perr(P *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool perr(P *p, int line, const char *fmt, ...) {
    if (p->failed) return false;
    p->failed = true;
    int k = snprintf(p->msg, sizeof p->msg, "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg + k, sizeof p->msg - (size_t)k, fmt, ap);
    va_end(ap);
    one_line(p->msg);
    return false;
}

static void *palloc(P *p, size_t n) {
    void *m = arena_alloc(p->a, n);
    if (!m && !p->failed) {
        p->failed = true;
        snprintf(p->msg, sizeof p->msg, "out of memory parsing the template");
    }
    return m;
}

static jstr *pstr(P *p, const char *s, size_t n) {
    jstr *j = palloc(p, sizeof *j + n + 1);
    if (!j) return NULL;
    j->len = n;
    j->safe = false;
    j->taint = TAINT_NONE;
    if (n) memcpy(j->s, s, n);
    j->s[n] = '\0';
    return j;
}

static token *tok_push(P *p, int type, int line) {
    if (p->nt == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        token *t = spud_realloc(p->toks, cap * sizeof *t);
        if (!t) {
            p->failed = true;
            snprintf(p->msg, sizeof p->msg, "out of memory lexing the template");
            return NULL;
        }
        p->toks = t;
        p->cap = cap;
    }
    token *t = &p->toks[p->nt++];
    memset(t, 0, sizeof *t);
    t->type = (uint8_t)type;
    t->line = line;
    return t;
}

static int count_nl(const char *s, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    return k;
}

static size_t skip_space(const char *s, size_t n, size_t i) {
    int k;
    while (i < n && (k = space_at(s, n, i)) > 0) i += (size_t)k;
    return i;
}

static bool has(const char *s, size_t n, size_t i, const char *lit) {
    size_t k = strlen(lit);
    return i + k <= n && memcmp(s + i, lit, k) == 0;
}

/* Text before a tag, stripped as jinja2 strips it: `-` removes all trailing
 * whitespace; otherwise lstrip_blocks removes the spaces that start the line
 * the block or comment tag stands on. */
static bool emit_text(P *p, const char *s, size_t n, int line, char sign, bool lstrip,
                      bool line_starting) {
    size_t keep = n;
    if (sign == '-') {
        keep = rstrip_len(s, n);
    } else if (sign != '+' && lstrip) {
        size_t l = n;
        while (l > 0 && s[l - 1] != '\n') l--;
        if ((l > 0 || line_starting) && l < n) {
            size_t j = skip_space(s, n, l);
            if (j == n) keep = l;
        }
    }
    if (keep == 0) return true;
    token *t = tok_push(p, K_DATA, line);
    if (!t) return false;
    t->str = pstr(p, s, keep);
    return t->str != NULL;
}

/* Python's unicode-escape decoding of a string literal's body. */
static jstr *unescape(P *p, const char *s, size_t n, int line) {
    char *o = palloc(p, n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char c = s[++i];
        int32_t cp = -1;
        switch (c) {
        case '\n': continue;
        case '\\': o[k++] = '\\'; continue;
        case '\'': o[k++] = '\''; continue;
        case '"': o[k++] = '"'; continue;
        case 'a': o[k++] = '\a'; continue;
        case 'b': o[k++] = '\b'; continue;
        case 'f': o[k++] = '\f'; continue;
        case 'n': o[k++] = '\n'; continue;
        case 'r': o[k++] = '\r'; continue;
        case 't': o[k++] = '\t'; continue;
        case 'v': o[k++] = '\v'; continue;
        case 'x':
        case 'u':
        case 'U': {
            int nd = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            cp = 0;
            for (int j = 0; j < nd; j++) {
                if (i + 1 + (size_t)j >= n) return perr(p, line, "truncated \\%c escape", c), NULL;
                char h = s[i + 1 + (size_t)j];
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                        : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) return perr(p, line, "truncated \\%c escape", c), NULL;
                cp = cp * 16 + d;
            }
            i += (size_t)nd;
            break;
        }
        case 'N': return perr(p, line, "\\N{...} escapes are not supported"), NULL;
        default:
            if (c >= '0' && c <= '7') {
                cp = c - '0';
                for (int j = 0; j < 2 && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '7'; j++)
                    cp = cp * 8 + (s[++i] - '0');
            } else {
                o[k++] = '\\';
                o[k++] = c;
                continue;
            }
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return perr(p, line, "escape gives an invalid code point"), NULL;
        /* an escape encodes to at most 4 bytes, never longer than its source (>= 4) except
           octal \ooo (<= 2 bytes) and \xhh (2 bytes): both fit in what they replace */
        k += (size_t)u8_enc(cp, o + k);
    }
    jstr *j = palloc(p, sizeof *j + k + 1);
    if (!j) return NULL;
    j->len = k;
    j->safe = false;
    j->taint = TAINT_NONE;
    memcpy(j->s, o, k);
    j->s[k] = '\0';
    return j;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_name0(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_name1(char c) { return is_name0(c) || is_digit(c); }

/* digits with single underscores between them: (\d+_)*\d+ ; returns the end or i */
static size_t scan_digits(const char *s, size_t n, size_t i) {
    size_t j = i;
    if (j >= n || !is_digit(s[j])) return i;
    while (j < n && is_digit(s[j])) {
        j++;
        if (j + 1 < n && s[j] == '_' && is_digit(s[j + 1])) j++;
    }
    return j;
}

static bool lex_number(P *p, const char *s, size_t n, size_t *pi, int line) {
    size_t i = *pi, j = scan_digits(s, n, i);
    bool after_dot = i > 0 && s[i - 1] == '.';
    size_t fend = 0;
    if (!after_dot) {
        size_t k = j;
        bool frac = false;
        if (k + 1 < n && s[k] == '.' && is_digit(s[k + 1])) {
            k = scan_digits(s, n, k + 1);
            frac = true;
        }
        if (k < n && (s[k] == 'e' || s[k] == 'E')) {
            size_t m = k + 1;
            if (m < n && (s[m] == '+' || s[m] == '-')) m++;
            size_t e = scan_digits(s, n, m);
            if (e > m) fend = e;
        }
        if (!fend && frac) fend = k;
    }
    char tmp[128];
    size_t tn = 0;
    token *t;
    if (fend) {
        for (size_t q = i; q < fend && tn + 1 < sizeof tmp; q++)
            if (s[q] != '_') tmp[tn++] = s[q];
        tmp[tn] = '\0';
        if (!(t = tok_push(p, K_FLOAT, line))) return false;
        t->f = strtod(tmp, NULL);
        *pi = fend;
        return true;
    }
    int base = 10;
    size_t q = i;
    if (s[i] == '0' && i + 1 < n && strchr("bBoOxX", s[i + 1]) && s[i + 1]) {
        char b = (char)(s[i + 1] | 0x20);
        base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
        q = i + 2;
        size_t e = q;
        while (e < n) {
            char c = (char)(s[e] | 0x20);
            bool ok = base == 2 ? (c == '0' || c == '1') : base == 8 ? (c >= '0' && c <= '7')
                                                                    : (is_digit(s[e]) || (c >= 'a' && c <= 'f'));
            if (ok) {
                e++;
            } else if (s[e] == '_' && e + 1 < n && s[e + 1] != '_' &&
                       (base == 16 ? (is_digit(s[e + 1]) || ((s[e + 1] | 0x20) >= 'a' && (s[e + 1] | 0x20) <= 'f'))
                                   : s[e + 1] >= '0' && s[e + 1] < '0' + base)) {
                e++;
            } else {
                break;
            }
        }
        if (e == q) base = 10; /* just "0" */
        else j = e;
    }
    if (base == 10) {
        q = i;
        if (s[i] == '0') { /* 0(_?0)* */
            j = i + 1;
            while (j < n && (s[j] == '0' || (s[j] == '_' && j + 1 < n && s[j + 1] == '0'))) j++;
        }
    }
    for (size_t x = q; x < j && tn + 1 < sizeof tmp; x++)
        if (s[x] != '_') tmp[tn++] = s[x];
    tmp[tn] = '\0';
    errno = 0;
    char *end;
    unsigned long long v = strtoull(tmp, &end, base);
    if (errno || v > INT64_MAX || j - i > 100)
        return perr(p, line, "integer literal too large (spud integers are 64-bit)");
    if (!(t = tok_push(p, K_INT, line))) return false;
    t->i = (int64_t)v;
    *pi = j;
    return true;
}

static const struct {
    const char *s;
    uint8_t op;
} ops2[] = {{"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE},
            {"<=", OP_LE},       {">=", OP_GE}},
  ops1[] = {{"+", OP_ADD},      {"-", OP_SUB},      {"/", OP_DIV},      {"*", OP_MUL},
            {"%", OP_MOD},      {"~", OP_TILDE},    {"[", OP_LBRACKET}, {"]", OP_RBRACKET},
            {"(", OP_LPAREN},   {")", OP_RPAREN},   {"{", OP_LBRACE},   {"}", OP_RBRACE},
            {"<", OP_LT},       {">", OP_GT},       {"=", OP_ASSIGN},   {".", OP_DOT},
            {":", OP_COLON},    {"|", OP_PIPE},     {",", OP_COMMA},    {";", OP_SEMICOLON}};

/* Tokens of one {{ }} or {% %} tag starting at *pi (after the opener);
 * leaves *pi after the closer and *ends_nl whether the match ended in "\n". */
static bool lex_tag(P *p, const char *s, size_t n, size_t *pi, int *line, bool block,
                    bool *ends_nl) {
    size_t i = *pi;
    char stack[256];
    int sp = 0;
    for (;;) {
        if (i >= n) return perr(p, *line, "unexpected end of template, expected '%s'", block ? "%}" : "}}");
        if (sp == 0) {
            size_t e = 0;
            bool dash = false, plus = false;
            if (block) {
                if (has(s, n, i, "-%}")) e = i + 3, dash = true;
                else if (has(s, n, i, "+%}")) e = i + 3, plus = true;
                else if (has(s, n, i, "%}")) e = i + 2;
            } else {
                if (has(s, n, i, "-}}")) e = i + 3, dash = true;
                else if (has(s, n, i, "}}")) e = i + 2, plus = true; /* no trim after }} */
            }
            if (e) {
                if (!tok_push(p, block ? K_BLOCK_END : K_VAR_END, *line)) return false;
                size_t x = e;
                if (dash) x = skip_space(s, n, e);
                else if (!plus && x < n && s[x] == '\n') x++;
                *ends_nl = x > e && s[x - 1] == '\n';
                *line += count_nl(s + i, x - i);
                *pi = x;
                return true;
            }
        }
        int k = space_at(s, n, i);
        if (k) {
            if (s[i] == '\n') (*line)++;
            i += (size_t)k;
            continue;
        }
        char c = s[i];
        if (is_digit(c)) {
            if (!lex_number(p, s, n, &i, *line)) return false;
            continue;
        }
        if (is_name0(c)) {
            size_t j = i + 1;
            while (j < n && is_name1(s[j])) j++;
            token *t = tok_push(p, K_NAME, *line);
            if (!t) return false;
            t->s = s + i;
            t->len = j - i;
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) j += s[j] == '\\' ? 2 : 1;
            if (j >= n) return perr(p, *line, "unexpected char %c (unterminated string)", c);
            token *t = tok_push(p, K_STRING, *line);
            if (!t) return false;
            t->str = unescape(p, s + i + 1, j - i - 1, *line);
            if (!t->str) return false;
            *line += count_nl(s + i, j - i);
            i = j + 1;
            continue;
        }
        uint8_t op = 0;
        size_t olen = 0;
        for (size_t q = 0; q < sizeof ops2 / sizeof ops2[0] && !op; q++)
            if (has(s, n, i, ops2[q].s)) op = ops2[q].op, olen = 2;
        for (size_t q = 0; q < sizeof ops1 / sizeof ops1[0] && !op; q++)
            if (s[i] == ops1[q].s[0]) op = ops1[q].op, olen = 1;
        if (!op) return perr(p, *line, "unexpected char '%c'", c >= 0x20 && c < 0x7f ? c : '?');
        if (op == OP_LPAREN || op == OP_LBRACKET || op == OP_LBRACE) {
            if (sp == (int)sizeof stack) return perr(p, *line, "brackets nested too deeply");
            stack[sp++] = c;
        } else if (op == OP_RPAREN || op == OP_RBRACKET || op == OP_RBRACE) {
            char want = op == OP_RPAREN ? '(' : op == OP_RBRACKET ? '[' : '{';
            if (sp == 0) return perr(p, *line, "unexpected '%c'", c);
            if (stack[sp - 1] != want) return perr(p, *line, "unexpected '%c'", c);
            sp--;
        }
        token *t = tok_push(p, K_OP, *line);
        if (!t) return false;
        t->op = op;
        i += olen;
    }
}

/* `{%[-+]?\s*raw\s*(-%}\s*|%})` at i: the end of the opener, or 0. */
static size_t raw_begin(const char *s, size_t n, size_t i) {
    size_t j = i + 2;
    if (j < n && (s[j] == '-' || s[j] == '+')) j++;
    j = skip_space(s, n, j);
    if (!has(s, n, j, "raw")) return 0;
    j = skip_space(s, n, j + 3);
    if (has(s, n, j, "-%}")) return skip_space(s, n, j + 3);
    if (has(s, n, j, "%}")) return j + 2;
    return 0;
}

static bool lex(P *p, const char *s, size_t n) {
    size_t pos = 0;
    int line = 1;
    bool line_starting = true;
    while (pos < n) {
        size_t t = pos;
        while (t + 1 < n && !(s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#')))
            t++;
        if (t + 1 >= n) {
            token *d = tok_push(p, K_DATA, line);
            if (!d || !(d->str = pstr(p, s + pos, n - pos))) return false;
            break;
        }
        char kind = s[t + 1];
        char sign = t + 2 < n && (s[t + 2] == '-' || s[t + 2] == '+') ? s[t + 2] : 0;
        size_t rb = kind == '%' ? raw_begin(s, n, t) : 0;
        if (!emit_text(p, s + pos, t - pos, line, sign, kind != '{', line_starting)) return false;
        line += count_nl(s + pos, t - pos);
        if (rb) {
            if (rb >= n) break; /* nothing after {% raw %}: jinja2's lexer stops quietly */
            bool ls = s[rb - 1] == '\n';
            line += count_nl(s + t, rb - t);
            /* find {%[-+]?\s*endraw\s*(+%}|-%}\s*|%}\n?) */
            size_t q = rb, end = 0, cstart = 0;
            char esign = 0;
            while (!end) {
                while (q + 1 < n && !(s[q] == '{' && s[q + 1] == '%')) q++;
                if (q + 1 >= n) return perr(p, line, "Missing end of raw directive");
                size_t j = q + 2;
                char sg = j < n && (s[j] == '-' || s[j] == '+') ? s[j] : 0;
                if (sg) j++;
                j = skip_space(s, n, j);
                if (has(s, n, j, "endraw")) {
                    j = skip_space(s, n, j + 6);
                    if (has(s, n, j, "+%}")) end = j + 3;
                    else if (has(s, n, j, "-%}")) end = skip_space(s, n, j + 3);
                    else if (has(s, n, j, "%}")) end = j + 2 + (j + 2 < n && s[j + 2] == '\n');
                }
                if (end) {
                    cstart = q;
                    esign = sg;
                } else {
                    q++;
                }
            }
            if (!emit_text(p, s + rb, cstart - rb, line, esign, true, ls)) return false;
            line += count_nl(s + rb, end - rb);
            line_starting = s[end - 1] == '\n';
            pos = end;
            continue;
        }
        size_t q = t + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            if (q >= n) break; /* jinja2's lexer stops quietly when nothing follows */
            size_t e = q;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}')) e++;
            if (e + 1 >= n) return perr(p, line, "Missing end of comment tag");
            size_t x = e + 2;
            if (e > q && s[e - 1] == '-') x = skip_space(s, n, x);
            else if (!(e > q && s[e - 1] == '+') && x < n && s[x] == '\n') x++;
            line_starting = s[x - 1] == '\n';
            line += count_nl(s + t, x - t);
            pos = x;
            continue;
        }
        bool block = kind == '%';
        if (!tok_push(p, block ? K_BLOCK_BEGIN : K_VAR_BEGIN, line)) return false;
        pos = q;
        if (!lex_tag(p, s, n, &pos, &line, block, &line_starting)) return false;
    }
    return tok_push(p, K_EOF, line) != NULL;
}

/* ------------------------------------------------------------------ parser */

typedef struct {
    node **v;
    uint32_t n, cap;
} nvec;

static bool nvec_push(P *p, nvec *v, node *x) {
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? v->cap * 2 : 4;
        node **nv = palloc(p, cap * sizeof *nv);
        if (!nv) return false;
        if (v->n) memcpy(nv, v->v, v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return true;
}

static token *cur(P *p) { return &p->toks[p->pos]; }
static token *peek(P *p, size_t k) {
    size_t i = p->pos + k;
    return &p->toks[i < p->nt ? i : p->nt - 1];
}
static void adv(P *p) {
    if (p->pos + 1 < p->nt) p->pos++;
}
static bool is_op(token *t, int op) { return t->type == K_OP && t->op == op; }
static bool is_name(token *t, const char *s) {
    return t->type == K_NAME && t->len == strlen(s) && memcmp(t->s, s, t->len) == 0;
}
static bool skip_name(P *p, const char *s) {
    if (!is_name(cur(p), s)) return false;
    adv(p);
    return true;
}
static bool skip_op(P *p, int op) {
    if (!is_op(cur(p), op)) return false;
    adv(p);
    return true;
}

static const char *tok_desc(token *t) {
    switch (t->type) {
    case K_EOF: return "end of template";
    case K_DATA: return "template data";
    case K_VAR_BEGIN: return "'{{'";
    case K_VAR_END: return "end of print statement";
    case K_BLOCK_BEGIN: return "'{%'";
    case K_BLOCK_END: return "end of statement block";
    case K_NAME: return "name";
    case K_STRING: return "string";
    case K_INT: return "integer";
    case K_FLOAT: return "float";
    default: return "operator";
    }
}

static bool expect_op(P *p, int op, const char *what) {
    if (skip_op(p, op)) return true;
    return perr(p, cur(p)->line, "expected '%s', got %s", what, tok_desc(cur(p)));
}
static bool expect_type(P *p, int type, const char *what) {
    if (cur(p)->type == type) {
        adv(p);
        return true;
    }
    return perr(p, cur(p)->line, "expected %s, got %s", what, tok_desc(cur(p)));
}

static node *mk(P *p, int kind, int line) {
    node *x = palloc(p, sizeof *x);
    if (!x) return NULL;
    memset(x, 0, sizeof *x);
    x->kind = (uint8_t)kind;
    x->line = line;
    return x;
}

static const jstr *tok_name(P *p, token *t) { return pstr(p, t->s, t->len); }

static node *parse_expr(P *p, bool with_cond);
static node *parse_tuple(P *p, bool simplified, bool with_cond, const char *extra_end,
                         bool explicit_parens);
static node *parse_unary(P *p, bool with_filter);
static node *parse_filter(P *p, node *x, bool start_inline);
static bool subparse(P *p, nvec *body, const char *const *end);

static bool enter(P *p) {
    if (++p->depth > JJ_MAX_DEPTH) return perr(p, cur(p)->line, "template nested too deeply");
    return true;
}

/* Call arguments after '(' ... ')': positional into kids, keywords into names/kids2. */
static bool parse_call_args(P *p, node *call) {
    nvec args = {0}, kw = {0};
    const jstr **names = NULL;
    uint32_t ncap = 0;
    if (!expect_op(p, OP_LPAREN, "(")) return false;
    while (!is_op(cur(p), OP_RPAREN)) {
        if (args.n || kw.n) {
            if (!expect_op(p, OP_COMMA, ",")) return false;
            if (is_op(cur(p), OP_RPAREN)) break;
        }
        if (is_op(cur(p), OP_MUL) || is_op(cur(p), OP_POW))
            return perr(p, cur(p)->line, "*args and **kwargs in calls are not supported");
        if (cur(p)->type == K_NAME && is_op(peek(p, 1), OP_ASSIGN)) {
            const jstr *nm = tok_name(p, cur(p));
            adv(p);
            adv(p);
            node *v = parse_expr(p, true);
            if (!nm || !v) return false;
            if (kw.n == ncap) {
                ncap = ncap ? ncap * 2 : 4;
                const jstr **nn = palloc(p, ncap * sizeof *nn);
                if (!nn) return false;
                if (kw.n) memcpy(nn, names, kw.n * sizeof *nn);
                names = nn;
            }
            names[kw.n] = nm;
            if (!nvec_push(p, &kw, v)) return false;
        } else {
            if (kw.n) return perr(p, cur(p)->line, "invalid syntax for function call expression");
            node *v = parse_expr(p, true);
            if (!v || !nvec_push(p, &args, v)) return false;
        }
    }
    adv(p);
    call->kids = args.v;
    call->nk = args.n;
    call->kids2 = kw.v;
    call->nk2 = kw.n;
    call->names = names;
    call->nn = kw.n;
    return true;
}

static node *parse_list(P *p) {
    node *x = mk(p, E_LIST, cur(p)->line);
    nvec items = {0};
    if (!x) return NULL;
    adv(p);
    while (!is_op(cur(p), OP_RBRACKET)) {
        if (items.n) {
            if (!expect_op(p, OP_COMMA, ",")) return NULL;
            if (is_op(cur(p), OP_RBRACKET)) break;
        }
        node *v = parse_expr(p, true);
        if (!v || !nvec_push(p, &items, v)) return NULL;
    }
    adv(p);
    x->kids = items.v;
    x->nk = items.n;
    return x;
}

static node *parse_dict(P *p) {
    node *x = mk(p, E_DICT, cur(p)->line);
    nvec keys = {0}, vals = {0};
    if (!x) return NULL;
    adv(p);
    while (!is_op(cur(p), OP_RBRACE)) {
        if (keys.n) {
            if (!expect_op(p, OP_COMMA, ",")) return NULL;
            if (is_op(cur(p), OP_RBRACE)) break;
        }
        node *k = parse_expr(p, true);
        if (!k || !expect_op(p, OP_COLON, ":")) return NULL;
        node *v = parse_expr(p, true);
        if (!v || !nvec_push(p, &keys, k) || !nvec_push(p, &vals, v)) return NULL;
    }
    adv(p);
    x->kids = keys.v;
    x->nk = keys.n;
    x->kids2 = vals.v;
    x->nk2 = vals.n;
    return x;
}

static node *parse_primary(P *p) {
    token *t = cur(p);
    node *x;
    switch (t->type) {
    case K_NAME:
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            if (!(x = mk(p, E_CONST, t->line))) return NULL;
            x->v = v_bool(t->s[0] == 't' || t->s[0] == 'T');
        } else if (is_name(t, "none") || is_name(t, "None")) {
            if (!(x = mk(p, E_CONST, t->line))) return NULL;
            x->v = V_NONE;
        } else {
            if (!(x = mk(p, E_NAME, t->line))) return NULL;
            x->v.t = T_STR;
            if (!(x->v.u.s = tok_name(p, t))) return NULL;
        }
        adv(p);
        return x;
    case K_STRING: {
        if (!(x = mk(p, E_CONST, t->line))) return NULL;
        const jstr *s = t->str;
        adv(p);
        while (cur(p)->type == K_STRING) { /* adjacent literals concatenate */
            const jstr *s2 = cur(p)->str;
            jstr *c = palloc(p, sizeof *c + s->len + s2->len + 1);
            if (!c) return NULL;
            c->len = s->len + s2->len;
            c->safe = false;
            c->taint = TAINT_NONE;
            memcpy(c->s, s->s, s->len);
            memcpy(c->s + s->len, s2->s, s2->len + 1);
            s = c;
            adv(p);
        }
        x->v = v_str(s);
        return x;
    }
    case K_INT:
    case K_FLOAT:
        if (!(x = mk(p, E_CONST, t->line))) return NULL;
        x->v = t->type == K_INT ? v_int(t->i) : v_float(t->f);
        adv(p);
        return x;
    case K_OP:
        if (t->op == OP_LPAREN) {
            adv(p);
            if (!enter(p)) return NULL;
            x = parse_tuple(p, false, true, NULL, true);
            p->depth--;
            if (!x || !expect_op(p, OP_RPAREN, ")")) return NULL;
            return x;
        }
        if (t->op == OP_LBRACKET || t->op == OP_LBRACE) {
            if (!enter(p)) return NULL;
            x = t->op == OP_LBRACKET ? parse_list(p) : parse_dict(p);
            p->depth--;
            return x;
        }
        break;
    default: break;
    }
    perr(p, t->line, "unexpected %s", tok_desc(t));
    return NULL;
}

/* A literal whose value jinja2's optimizer computes at compile time. */
static bool is_const(const node *x) {
    if (!x) return true;
    if (x->kind == E_CONST) return true;
    if (x->kind == E_NEG || x->kind == E_POS || x->kind == E_NOT) return is_const(x->a);
    if (x->kind == E_BIN || x->kind == E_AND || x->kind == E_OR) return is_const(x->a) && is_const(x->b);
    if (x->kind == E_CONCAT || x->kind == E_CMP) {
        for (uint32_t i = 0; i < x->nk; i++)
            if (!is_const(x->kids[i])) return false;
        return true;
    }
    if (x->kind == E_SLICE) return is_const(x->a) && is_const(x->b) && is_const(x->c) && is_const(x->d);
    if (x->kind == E_LIST || x->kind == E_TUPLE || x->kind == E_DICT) {
        for (uint32_t i = 0; i < x->nk; i++)
            if (!is_const(x->kids[i])) return false;
        for (uint32_t i = 0; i < x->nk2; i++)
            if (!is_const(x->kids2[i])) return false;
        return true;
    }
    return false;
}

/* One subscript element: an expression or a slice a:b:c. */
static node *parse_subscribed(P *p, int line) {
    node *args[3] = {0};
    if (is_op(cur(p), OP_COLON)) {
        adv(p);
    } else {
        node *x = parse_expr(p, true);
        if (!x) return NULL;
        if (!is_op(cur(p), OP_COLON)) return x;
        adv(p);
        args[0] = x;
    }
    if (!is_op(cur(p), OP_COLON) && !is_op(cur(p), OP_RBRACKET) && !is_op(cur(p), OP_COMMA)) {
        if (!(args[1] = parse_expr(p, true))) return NULL;
    }
    if (is_op(cur(p), OP_COLON)) {
        adv(p);
        if (!is_op(cur(p), OP_RBRACKET) && !is_op(cur(p), OP_COMMA))
            if (!(args[2] = parse_expr(p, true))) return NULL;
    }
    node *s = mk(p, E_SLICE, line);
    if (!s) return NULL;
    s->b = args[0];
    s->c = args[1];
    s->d = args[2];
    return s;
}

static node *parse_postfix(P *p, node *x) {
    for (;;) {
        token *t = cur(p);
        if (is_op(t, OP_DOT)) {
            adv(p);
            token *a = cur(p);
            node *g;
            if (a->type == K_NAME) {
                if (!(g = mk(p, E_GETATTR, a->line))) return NULL;
                g->v.t = T_STR;
                if (!(g->v.u.s = tok_name(p, a))) return NULL;
            } else if (a->type == K_INT) {
                node *k = mk(p, E_CONST, a->line);
                if (!k || !(g = mk(p, E_GETITEM, a->line))) return NULL;
                k->v = v_int(a->i);
                g->b = k;
            } else {
                perr(p, a->line, "expected name or number after '.'");
                return NULL;
            }
            adv(p);
            g->a = x;
            x = g;
        } else if (is_op(t, OP_LBRACKET)) {
            adv(p);
            nvec args = {0};
            while (!is_op(cur(p), OP_RBRACKET)) {
                if (args.n && !expect_op(p, OP_COMMA, ",")) return NULL;
                if (cur(p)->type == K_EOF) break;
                node *s = parse_subscribed(p, t->line);
                if (!s || !nvec_push(p, &args, s)) return NULL;
            }
            if (!expect_op(p, OP_RBRACKET, "]")) return NULL;
            node *idx = args.n ? args.v[0] : NULL;
            if (args.n != 1) { /* x[a, b] and x[] index with a tuple */
                if (!(idx = mk(p, E_TUPLE, t->line))) return NULL;
                idx->kids = args.v;
                idx->nk = args.n;
            }
            node *g = mk(p, idx->kind == E_SLICE ? E_SLICE : E_GETITEM, t->line);
            if (!g) return NULL;
            if (idx->kind == E_SLICE) *g = *idx;
            else g->b = idx;
            g->a = x;
            x = g;
        } else if (is_op(t, OP_LPAREN)) {
            node *c = mk(p, E_CALL, t->line);
            if (!c || !parse_call_args(p, c)) return NULL;
            c->a = x;
            x = c;
        } else {
            return x;
        }
    }
}

/* name(.name)* for filters and tests */
static const jstr *dotted_name(P *p) {
    token *t = cur(p);
    if (t->type != K_NAME) {
        perr(p, t->line, "expected a name, got %s", tok_desc(t));
        return NULL;
    }
    const char *start = t->s;
    size_t len = t->len;
    adv(p);
    while (is_op(cur(p), OP_DOT) && peek(p, 1)->type == K_NAME) {
        adv(p);
        len = (size_t)(cur(p)->s + cur(p)->len - start);
        adv(p);
    }
    return pstr(p, start, len);
}

static node *parse_filter(P *p, node *x, bool start_inline) {
    while (is_op(cur(p), OP_PIPE) || start_inline) {
        if (!start_inline) adv(p);
        start_inline = false;
        int line = cur(p)->line;
        const jstr *nm = dotted_name(p);
        node *f = mk(p, E_FILTER, line);
        if (!nm || !f) return NULL;
        int id = name_index(filter_names, F_COUNT_ALL, nm->s, nm->len);
        f->op = (uint8_t)(id < 0 ? F_UNKNOWN : id);
        f->v = v_str(nm);
        if (is_op(cur(p), OP_LPAREN) && !parse_call_args(p, f)) return NULL;
        f->a = x;
        x = f;
    }
    return x;
}

static node *parse_test(P *p, node *x) {
    int line = cur(p)->line;
    adv(p); /* is */
    bool neg = skip_name(p, "not");
    const jstr *nm = dotted_name(p);
    node *t = mk(p, E_TEST, line);
    if (!nm || !t) return NULL;
    int id = name_index(test_names, TS_COUNT_ALL, nm->s, nm->len);
    t->op = (uint8_t)(id < 0 ? 255 : id);
    t->v = v_str(nm);
    t->a = x;
    token *c = cur(p);
    if (is_op(c, OP_LPAREN)) {
        if (!parse_call_args(p, t)) return NULL;
    } else if ((c->type == K_NAME || c->type == K_STRING || c->type == K_INT || c->type == K_FLOAT ||
                is_op(c, OP_LPAREN) || is_op(c, OP_LBRACKET) || is_op(c, OP_LBRACE)) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is")) {
            perr(p, c->line, "You cannot chain multiple tests with is");
            return NULL;
        }
        node *arg = parse_primary(p);
        if (!arg || !(arg = parse_postfix(p, arg))) return NULL;
        node **k = palloc(p, sizeof *k);
        if (!k) return NULL;
        k[0] = arg;
        t->kids = k;
        t->nk = 1;
    }
    if (neg) {
        node *n = mk(p, E_NOT, line);
        if (!n) return NULL;
        n->a = t;
        return n;
    }
    return t;
}

static node *parse_filter_expr(P *p, node *x) {
    for (;;) {
        if (!x) return NULL;
        if (is_op(cur(p), OP_PIPE)) {
            x = parse_filter(p, x, false);
        } else if (is_name(cur(p), "is")) {
            x = parse_test(p, x);
        } else if (is_op(cur(p), OP_LPAREN)) {
            node *c = mk(p, E_CALL, cur(p)->line);
            if (!c || !parse_call_args(p, c)) return NULL;
            c->a = x;
            x = c;
        } else {
            return x;
        }
    }
}

static node *parse_unary(P *p, bool with_filter) {
    token *t = cur(p);
    node *x;
    if (!enter(p)) return NULL;
    if (is_op(t, OP_SUB) || is_op(t, OP_ADD)) {
        adv(p);
        x = mk(p, t->op == OP_SUB ? E_NEG : E_POS, t->line);
        if (!x || !(x->a = parse_unary(p, false))) return NULL;
    } else {
        x = parse_primary(p);
    }
    p->depth--;
    if (!x || !(x = parse_postfix(p, x))) return NULL;
    if (with_filter) x = parse_filter_expr(p, x);
    return x;
}

static node *bin(P *p, int kind, int op, node *a, node *b, int line) {
    if (!a || !b) return NULL;
    node *x = mk(p, kind, line);
    if (!x) return NULL;
    x->op = (uint8_t)op;
    x->a = a;
    x->b = b;
    return x;
}

static node *parse_pow(P *p) {
    node *x = parse_unary(p, true);
    while (x && is_op(cur(p), OP_POW)) {
        int line = cur(p)->line;
        adv(p);
        x = bin(p, E_BIN, OP_POW, x, parse_unary(p, true), line);
    }
    return x;
}

static node *parse_math2(P *p) {
    node *x = parse_pow(p);
    while (x && cur(p)->type == K_OP &&
           (cur(p)->op == OP_MUL || cur(p)->op == OP_DIV || cur(p)->op == OP_FLOORDIV ||
            cur(p)->op == OP_MOD)) {
        int op = cur(p)->op, line = cur(p)->line;
        adv(p);
        x = bin(p, E_BIN, op, x, parse_pow(p), line);
    }
    return x;
}

static node *parse_concat(P *p) {
    node *x = parse_math2(p);
    if (!x || !is_op(cur(p), OP_TILDE)) return x;
    nvec args = {0};
    if (!nvec_push(p, &args, x)) return NULL;
    int line = cur(p)->line;
    while (is_op(cur(p), OP_TILDE)) {
        adv(p);
        node *y = parse_math2(p);
        if (!y || !nvec_push(p, &args, y)) return NULL;
    }
    node *c = mk(p, E_CONCAT, line);
    if (!c) return NULL;
    c->kids = args.v;
    c->nk = args.n;
    return c;
}

static node *parse_math1(P *p) {
    node *x = parse_concat(p);
    while (x && (is_op(cur(p), OP_ADD) || is_op(cur(p), OP_SUB))) {
        int op = cur(p)->op, line = cur(p)->line;
        adv(p);
        x = bin(p, E_BIN, op, x, parse_concat(p), line);
    }
    return x;
}

static node *parse_compare(P *p) {
    int line = cur(p)->line;
    node *x = parse_math1(p);
    if (!x) return NULL;
    nvec operands = {0};
    uint8_t ops[64];
    uint32_t nops = 0;
    for (;;) {
        token *t = cur(p);
        int op = 0;
        if (t->type == K_OP && t->op >= OP_EQ && t->op <= OP_GE) {
            op = t->op;
            adv(p);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            adv(p);
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = OP_NOTIN;
            adv(p);
            adv(p);
        } else {
            break;
        }
        if (nops == sizeof ops) {
            perr(p, t->line, "comparison chain too long");
            return NULL;
        }
        if (!operands.n && !nvec_push(p, &operands, x)) return NULL;
        node *y = parse_math1(p);
        if (!y || !nvec_push(p, &operands, y)) return NULL;
        ops[nops++] = (uint8_t)op;
    }
    if (!nops) return x;
    node *c = mk(p, E_CMP, line);
    if (!c || !(c->ops = palloc(p, nops))) return NULL;
    memcpy(c->ops, ops, nops);
    c->kids = operands.v;
    c->nk = operands.n;
    return c;
}

static node *parse_not(P *p) {
    if (is_name(cur(p), "not")) {
        node *x = mk(p, E_NOT, cur(p)->line);
        adv(p);
        if (!x || !enter(p)) return NULL;
        x->a = parse_not(p);
        p->depth--;
        return x->a ? x : NULL;
    }
    return parse_compare(p);
}

static node *parse_and(P *p) {
    node *x = parse_not(p);
    while (x && is_name(cur(p), "and")) {
        int line = cur(p)->line;
        adv(p);
        x = bin(p, E_AND, 0, x, parse_not(p), line);
    }
    return x;
}

static node *parse_or(P *p) {
    node *x = parse_and(p);
    while (x && is_name(cur(p), "or")) {
        int line = cur(p)->line;
        adv(p);
        x = bin(p, E_OR, 0, x, parse_and(p), line);
    }
    return x;
}

static node *parse_condexpr(P *p) {
    node *x = parse_or(p);
    while (x && is_name(cur(p), "if")) {
        int line = cur(p)->line;
        adv(p);
        node *c = mk(p, E_COND, line);
        if (!c || !(c->a = parse_or(p))) return NULL;
        c->b = x;
        if (skip_name(p, "else")) {
            if (!enter(p)) return NULL;
            c->c = parse_condexpr(p);
            p->depth--;
            if (!c->c) return NULL;
        }
        x = c;
    }
    return x;
}

static node *parse_expr(P *p, bool with_cond) {
    if (!enter(p)) return NULL;
    node *x = with_cond ? parse_condexpr(p) : parse_or(p);
    p->depth--;
    return x;
}

static bool tuple_end(P *p, const char *extra_end) {
    token *t = cur(p);
    if (t->type == K_VAR_END || t->type == K_BLOCK_END || is_op(t, OP_RPAREN)) return true;
    return extra_end && is_name(t, extra_end);
}

static node *parse_tuple(P *p, bool simplified, bool with_cond, const char *extra_end,
                         bool explicit_parens) {
    int line = cur(p)->line;
    nvec items = {0};
    bool is_tuple = false;
    for (;;) {
        if (items.n && !expect_op(p, OP_COMMA, ",")) return NULL;
        if (tuple_end(p, extra_end)) break;
        node *x = simplified ? parse_primary(p) : parse_expr(p, with_cond);
        if (!x || !nvec_push(p, &items, x)) return NULL;
        if (is_op(cur(p), OP_COMMA)) is_tuple = true;
        else break;
    }
    if (!is_tuple) {
        if (items.n) return items.v[0];
        if (!explicit_parens) {
            perr(p, cur(p)->line, "Expected an expression, got %s", tok_desc(cur(p)));
            return NULL;
        }
    }
    node *t = mk(p, E_TUPLE, line);
    if (!t) return NULL;
    t->kids = items.v;
    t->nk = items.n;
    return t;
}

static bool assignable(node *x) {
    if (x->kind == E_NAME) return true;
    if (x->kind == E_NSREF) return true;
    if (x->kind == E_TUPLE) {
        for (uint32_t i = 0; i < x->nk; i++)
            if (!assignable(x->kids[i]) || x->kids[i]->kind == E_NSREF) return false;
        return true;
    }
    return false;
}

static node *parse_assign_target(P *p, bool with_tuple, bool name_only, const char *extra_end,
                                 bool with_ns) {
    token *t = cur(p);
    node *x;
    if (with_ns && t->type == K_NAME && is_op(peek(p, 1), OP_DOT)) {
        if (!(x = mk(p, E_NSREF, t->line))) return NULL;
        node *nm = mk(p, E_NAME, t->line);
        if (!nm) return NULL;
        nm->v.t = T_STR;
        if (!(nm->v.u.s = tok_name(p, t))) return NULL;
        x->a = nm;
        adv(p);
        adv(p);
        if (cur(p)->type != K_NAME) {
            perr(p, cur(p)->line, "expected name after '.'");
            return NULL;
        }
        x->v.t = T_STR;
        if (!(x->v.u.s = tok_name(p, cur(p)))) return NULL;
        adv(p);
    } else if (name_only) {
        if (t->type != K_NAME) {
            perr(p, t->line, "expected name, got %s", tok_desc(t));
            return NULL;
        }
        x = parse_primary(p);
    } else {
        x = with_tuple ? parse_tuple(p, true, true, extra_end, false) : parse_primary(p);
    }
    if (!x) return NULL;
    if (!assignable(x)) {
        perr(p, x->line, "can't assign to this expression");
        return NULL;
    }
    return x;
}

/* Header done: expect '%}', then the body up to one of `end` (left current). */
static node *parse_body(P *p, const char *const *end, bool drop_needle) {
    skip_op(p, OP_COLON);
    if (!expect_type(p, K_BLOCK_END, "end of statement block")) return NULL;
    node *b = mk(p, S_BODY, cur(p)->line);
    nvec body = {0};
    if (!b || !enter(p) || !subparse(p, &body, end)) return NULL;
    p->depth--;
    if (cur(p)->type == K_EOF) {
        perr(p, cur(p)->line, "Unexpected end of template. Jinja was looking for '%s'", end[0]);
        return NULL;
    }
    if (drop_needle) adv(p);
    b->kids = body.v;
    b->nk = body.n;
    return b;
}

static bool parse_signature(P *p, node *x) {
    nvec defaults = {0};
    const jstr **names = NULL;
    uint32_t n = 0, cap = 0;
    bool any_default = false;
    if (!expect_op(p, OP_LPAREN, "(")) return false;
    while (!is_op(cur(p), OP_RPAREN)) {
        if (n && !expect_op(p, OP_COMMA, ",")) return false;
        token *t = cur(p);
        if (t->type != K_NAME) return perr(p, t->line, "expected a parameter name");
        if (is_name(t, "true") || is_name(t, "false") || is_name(t, "none") || is_name(t, "True") ||
            is_name(t, "False") || is_name(t, "None"))
            return perr(p, t->line, "can't assign to this name");
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            const jstr **nn = palloc(p, cap * sizeof *nn);
            if (!nn) return false;
            if (n) memcpy(nn, names, n * sizeof *nn);
            names = nn;
        }
        if (!(names[n] = tok_name(p, t))) return false;
        adv(p);
        node *d = NULL;
        if (skip_op(p, OP_ASSIGN)) {
            if (!(d = parse_expr(p, true))) return false;
            any_default = true;
        } else if (any_default) {
            return perr(p, t->line, "non-default argument follows default argument");
        }
        if (!nvec_push(p, &defaults, d)) return false;
        n++;
    }
    adv(p);
    x->names = names;
    x->nn = n;
    x->kids = defaults.v;
    x->nk = n;
    return true;
}

/* Does the body refer to `name` (for caller / varargs / kwargs)? */
static bool refers(const node *x, const char *name) {
    if (!x) return false;
    if (x->kind == E_NAME && str_eqc(x->v.u.s, name)) return true;
    if (refers(x->a, name) || refers(x->b, name) || refers(x->c, name) || refers(x->d, name) ||
        refers(x->e, name))
        return true;
    for (uint32_t i = 0; i < x->nk; i++)
        if (refers(x->kids[i], name)) return true;
    for (uint32_t i = 0; i < x->nk2; i++)
        if (refers(x->kids2[i], name)) return true;
    return false;
}

static node *parse_statement(P *p) {
    token *t = cur(p);
    int line = t->line;
    node *x = NULL;
    if (t->type != K_NAME) {
        perr(p, line, "tag name expected");
        return NULL;
    }
    if (is_name(t, "if")) {
        adv(p);
        node *top = NULL, *last = NULL;
        for (;;) {
            node *n = mk(p, S_IF, line);
            if (!n || !(n->a = parse_tuple(p, false, false, NULL, false))) return NULL;
            static const char *const end[] = {"elif", "else", "endif", NULL};
            if (!(n->b = parse_body(p, end, false))) return NULL;
            if (last) {
                last->c = n;
            } else {
                top = n;
            }
            last = n;
            token *e = cur(p);
            adv(p);
            if (is_name(e, "elif")) {
                line = e->line;
                continue;
            }
            if (is_name(e, "else")) {
                static const char *const end2[] = {"endif", NULL};
                if (!(n->c = parse_body(p, end2, true))) return NULL;
            }
            return top;
        }
    }
    if (is_name(t, "for")) {
        adv(p);
        if (!(x = mk(p, S_FOR, line))) return NULL;
        if (!(x->a = parse_assign_target(p, true, false, "in", false))) return NULL;
        if (!skip_name(p, "in")) {
            perr(p, cur(p)->line, "expected 'in'");
            return NULL;
        }
        if (!(x->b = parse_tuple(p, false, false, "recursive", false))) return NULL;
        if (skip_name(p, "if") && !(x->c = parse_expr(p, true))) return NULL;
        if (skip_name(p, "recursive")) {
            perr(p, line, "recursive loops are not supported");
            return NULL;
        }
        static const char *const end[] = {"endfor", "else", NULL};
        p->loop_depth++;
        x->d = parse_body(p, end, false);
        p->loop_depth--;
        if (!x->d) return NULL;
        token *e = cur(p);
        adv(p);
        if (is_name(e, "else")) {
            static const char *const end2[] = {"endfor", NULL};
            int ld = p->loop_depth;
            p->loop_depth = 0;
            x->e = parse_body(p, end2, true);
            p->loop_depth = ld;
            if (!x->e) return NULL;
        }
        return x;
    }
    if (is_name(t, "set")) {
        adv(p);
        if (!(x = mk(p, S_SET, line))) return NULL;
        if (!(x->a = parse_assign_target(p, true, false, NULL, true))) return NULL;
        if (skip_op(p, OP_ASSIGN)) {
            if (!(x->b = parse_tuple(p, false, true, NULL, false))) return NULL;
            return x;
        }
        x->kind = S_SETBLOCK;
        node *ph = mk(p, E_BLOCKVAL, line);
        if (!ph || !(x->c = parse_filter(p, ph, false))) return NULL;
        static const char *const end[] = {"endset", NULL};
        if (!(x->b = parse_body(p, end, true))) return NULL;
        return x;
    }
    if (is_name(t, "macro") || is_name(t, "call")) {
        bool is_macro = t->s[0] == 'm';
        adv(p);
        if (!(x = mk(p, is_macro ? S_MACRO : S_CALLBLOCK, line))) return NULL;
        if (is_macro) {
            token *nm = cur(p);
            if (nm->type != K_NAME) {
                perr(p, nm->line, "expected macro name");
                return NULL;
            }
            x->v = v_str(tok_name(p, nm));
            if (!x->v.u.s) return NULL;
            adv(p);
            if (!parse_signature(p, x)) return NULL;
        } else {
            if (is_op(cur(p), OP_LPAREN) && !parse_signature(p, x)) return NULL;
            if (!(x->a = parse_expr(p, true))) return NULL;
            if (x->a->kind != E_CALL) {
                perr(p, line, "expected call");
                return NULL;
            }
        }
        static const char *const mend[] = {"endmacro", NULL}, *const cend[] = {"endcall", NULL};
        int ld = p->loop_depth;
        p->loop_depth = 0;
        x->b = parse_body(p, is_macro ? mend : cend, true);
        p->loop_depth = ld;
        if (!x->b) return NULL;
        x->flags = (uint8_t)((refers(x->b, "caller") ? MF_CALLER : 0) |
                             (refers(x->b, "varargs") ? MF_VARARGS : 0) |
                             (refers(x->b, "kwargs") ? MF_KWARGS : 0));
        return x;
    }
    if (is_name(t, "filter")) {
        adv(p);
        if (!(x = mk(p, S_FILTERBLOCK, line))) return NULL;
        node *ph = mk(p, E_BLOCKVAL, line);
        if (!ph || !(x->a = parse_filter(p, ph, true))) return NULL;
        static const char *const end[] = {"endfilter", NULL};
        if (!(x->b = parse_body(p, end, true))) return NULL;
        return x;
    }
    if (is_name(t, "with")) {
        adv(p);
        if (!(x = mk(p, S_WITH, line))) return NULL;
        nvec targets = {0}, values = {0};
        while (cur(p)->type != K_BLOCK_END) {
            if (targets.n && !expect_op(p, OP_COMMA, ",")) return NULL;
            node *tg = parse_assign_target(p, true, false, NULL, false);
            if (!tg || !expect_op(p, OP_ASSIGN, "=")) return NULL;
            node *v = parse_expr(p, true);
            if (!v || !nvec_push(p, &targets, tg) || !nvec_push(p, &values, v)) return NULL;
        }
        x->kids = targets.v;
        x->nk = targets.n;
        x->kids2 = values.v;
        x->nk2 = values.n;
        static const char *const end[] = {"endwith", NULL};
        if (!(x->b = parse_body(p, end, true))) return NULL;
        return x;
    }
    if (is_name(t, "generation")) { /* transformers' AssistantTracker: renders its body */
        adv(p);
        static const char *const end[] = {"endgeneration", NULL};
        return parse_body(p, end, true);
    }
    if (is_name(t, "print")) { /* {% print a, b %}: each expression in turn */
        adv(p);
        nvec outs = {0};
        while (cur(p)->type != K_BLOCK_END) {
            if (outs.n && !expect_op(p, OP_COMMA, ",")) return NULL;
            node *o = mk(p, S_OUT, cur(p)->line);
            if (!o || !(o->a = parse_expr(p, true)) || !nvec_push(p, &outs, o)) return NULL;
        }
        if (!(x = mk(p, S_BODY, line))) return NULL;
        x->kids = outs.v;
        x->nk = outs.n;
        return x;
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        if (p->loop_depth == 0) {
            perr(p, line, "'%.*s' outside of a loop", (int)t->len, t->s);
            return NULL;
        }
        x = mk(p, t->s[0] == 'b' ? S_BREAK : S_CONTINUE, line);
        adv(p);
        return x;
    }
    if (is_name(t, "block") || is_name(t, "extends") || is_name(t, "include") ||
        is_name(t, "import") || is_name(t, "from") || is_name(t, "autoescape")) {
        perr(p, line, "'%.*s' is not supported in chat templates", (int)t->len, t->s);
        return NULL;
    }
    perr(p, line, "Encountered unknown tag '%.*s'.", (int)t->len, t->s);
    return NULL;
}

static bool subparse(P *p, nvec *body, const char *const *end) {
    for (;;) {
        token *t = cur(p);
        node *x;
        switch (t->type) {
        case K_EOF: return true;
        case K_DATA:
            if (!(x = mk(p, S_TEXT, t->line))) return false;
            x->v = v_str(t->str);
            adv(p);
            break;
        case K_VAR_BEGIN:
            adv(p);
            if (!(x = mk(p, S_OUT, t->line))) return false;
            if (!(x->a = parse_tuple(p, false, true, NULL, false))) return false;
            if (!expect_type(p, K_VAR_END, "end of print statement")) return false;
            break;
        case K_BLOCK_BEGIN:
            adv(p);
            if (end)
                for (int i = 0; end[i]; i++)
                    if (is_name(cur(p), end[i])) return true;
            if (!(x = parse_statement(p))) return false;
            if (!expect_type(p, K_BLOCK_END, "end of statement block")) return false;
            break;
        default: return perr(p, t->line, "unexpected %s", tok_desc(t));
        }
        if (!nvec_push(p, body, x)) return false;
    }
}

/* jinja2 slices with Python's [] at run time, where slicing a non-sequence
 * raises; but its optimizer folds constant expressions at compile time
 * through the sandbox's getitem, where it gives Undefined. A fold sticks when
 * it is printed directly ({{ }}) or when a larger constant expression around
 * the slice turns the Undefined into a plain value. Mark those slices. */
static void mark_all_slices(node *x) {
    if (!x) return;
    if (x->kind == E_SLICE) x->flags = 1;
    mark_all_slices(x->a);
    mark_all_slices(x->b);
    mark_all_slices(x->c);
    mark_all_slices(x->d);
    for (uint32_t i = 0; i < x->nk; i++) mark_all_slices(x->kids[i]);
    for (uint32_t i = 0; i < x->nk2; i++) mark_all_slices(x->kids2[i]);
}

static void mark_folded_slices(node *x, bool printed) {
    if (!x) return;
    if (x->kind >= E_CONST && is_const(x)) {
        if (printed || x->kind != E_SLICE) mark_all_slices(x);
        return;
    }
    bool out = x->kind == S_OUT;
    mark_folded_slices(x->a, out);
    mark_folded_slices(x->b, false);
    mark_folded_slices(x->c, false);
    mark_folded_slices(x->d, false);
    mark_folded_slices(x->e, false);
    for (uint32_t i = 0; i < x->nk; i++) mark_folded_slices(x->kids[i], false);
    for (uint32_t i = 0; i < x->nk2; i++) mark_folded_slices(x->kids2[i], false);
}

/* jinja2 rejects unknown filters and tests at compile time, except where
 * they sit directly in an if statement or a conditional expression (a
 * "soft" frame), where the error waits until they run. */
static bool check_names(P *p, node *x, bool soft) {
    if (!x) return true;
    bool sa = soft, sb = soft, sc = soft, sd = soft, se = soft, sk = soft;
    switch (x->kind) {
    case S_IF:
    case E_COND: sa = sb = sc = true; break;
    case S_FOR: sa = sc = sd = se = false; break;
    case S_MACRO: sb = sk = false; break;
    case S_CALLBLOCK: sb = sk = false; break;
    case S_FILTERBLOCK: sa = sb = false; break;
    case S_SETBLOCK: sb = sc = false; break;
    case S_WITH: sb = false; break;
    case E_FILTER:
    case E_TEST:
        if (x->op == 255) {
            if (!soft)
                return perr(p, x->line, "No %s named '%s'.", x->kind == E_FILTER ? "filter" : "test",
                            x->v.u.s->s);
            x->flags = 1;
        }
        break;
    default: break;
    }
    if (!check_names(p, x->a, sa) || !check_names(p, x->b, sb) || !check_names(p, x->c, sc) ||
        !check_names(p, x->d, sd) || !check_names(p, x->e, se))
        return false;
    for (uint32_t i = 0; i < x->nk; i++)
        if (!check_names(p, x->kids[i], sk)) return false;
    for (uint32_t i = 0; i < x->nk2; i++)
        if (!check_names(p, x->kids2[i], soft)) return false;
    return true;
}

/* ------------------------------------------------------------------ evaluator: basics */

/* T_LIST flags: what Python object the sequence stands for. */
enum { L_LIST, L_TUPLE, L_GEN, L_ITEMS, L_KEYS, L_VALUES };

static const char *vtype_name(int t) {
    static const char *const names[] = {"Undefined", "NoneType", "bool", "int", "float", "str",
                                        "list", "dict", "Namespace", "Macro", "function",
                                        "LoopContext"};
    return t >= 0 && t <= T_LOOP ? names[t] : "object";
}

static const char *list_kind_name(int flag) {
    static const char *const names[] = {"list", "tuple", "generator", "dict_items", "dict_keys",
                                        "dict_values"};
    return flag <= L_VALUES ? names[flag] : "list";
}

static const char *tname(value v) {
    if (v.t == T_LIST) return list_kind_name(v.flag);
    if (v.t == T_STR && v.u.s->safe) return "Markup";
    return vtype_name(v.t);
}

static bool is_seq(value v) { return v.t == T_LIST && v.flag <= L_TUPLE; }

static value undef_name(const jstr *name) {
    return (value){.t = T_UNDEF, .flag = U_NAME, .u.s = name};
}
static value undef_attr(value obj, const jstr *name) {
    return (value){.t = T_UNDEF, .flag = U_ATTR, .aux = obj.t, .u.s = name};
}
static value undef_hint(const char *hint) {
    return (value){.t = T_UNDEF, .flag = U_HINT, .u.hint = hint};
}

static bool undef_error(R *r, value u) {
    switch (u.flag) {
    case U_NAME:
        if (u.u.s) return FAIL(r, "'%s' is undefined", u.u.s->s);
        return FAIL(r, "undefined value");
    case U_ATTR:
        return FAIL(r, "'%s object' has no attribute '%s'", vtype_name(u.aux), u.u.s ? u.u.s->s : "?");
    case U_ITEM: return FAIL(r, "'%s object' has no such element", vtype_name(u.aux));
    case U_UNSAFE:
        return FAIL(r, "access to attribute '%s' of '%s' object is unsafe.", u.u.s ? u.u.s->s : "?",
                    vtype_name(u.aux));
    default: return FAIL(r, "%s", u.u.hint ? u.u.hint : "undefined value");
    }
}

static bool truthy(value v) {
    switch (v.t) {
    case T_UNDEF:
    case T_NONE: return false;
    case T_BOOL: return v.u.b;
    case T_INT: return v.u.i != 0;
    case T_FLOAT: return v.u.f != 0;
    case T_STR: return v.u.s->len > 0;
    case T_LIST: return v.flag == L_GEN || v.u.l->n > 0;
    case T_DICT: return v.u.d->n > 0;
    default: return true;
    }
}

static bool is_num(value v) { return v.t == T_BOOL || v.t == T_INT || v.t == T_FLOAT; }
static int64_t as_int(value v) { return v.t == T_BOOL ? v.u.b : v.u.i; }
static double as_f(value v) { return v.t == T_FLOAT ? v.u.f : (double)as_int(v); }

static bool dict_find(const jdict *d, value k, size_t *at);

/* Python ==. */
static bool v_eq(value a, value b, int depth) {
    if (depth > JJ_MAX_CALL_DEPTH * 4) return false;
    if (is_num(a) && is_num(b)) {
        if (a.t == T_FLOAT || b.t == T_FLOAT) {
            if (a.t != T_FLOAT) return (double)as_int(a) == b.u.f && (int64_t)b.u.f == as_int(a);
            if (b.t != T_FLOAT) return (double)as_int(b) == a.u.f && (int64_t)a.u.f == as_int(b);
            return a.u.f == b.u.f;
        }
        return as_int(a) == as_int(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case T_UNDEF:
    case T_NONE: return true;
    case T_STR: return str_eq(a.u.s, b.u.s);
    case T_LIST:
        if (a.flag != b.flag) return false;
        if (a.flag == L_GEN) return a.u.l == b.u.l;
        if (a.u.l->n != b.u.l->n) return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!v_eq(a.u.l->v[i], b.u.l->v[i], depth + 1)) return false;
        return true;
    case T_DICT: {
        if (a.u.d->n != b.u.d->n) return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            size_t j;
            if (!dict_find(b.u.d, a.u.d->k[i], &j) || !v_eq(a.u.d->v[i], b.u.d->v[j], depth + 1))
                return false;
        }
        return true;
    }
    case T_NS: return a.u.ns == b.u.ns;
    case T_MACRO: return a.u.m == b.u.m;
    case T_FUNC: return a.u.fn == b.u.fn;
    case T_LOOP: return a.u.loop == b.u.loop;
    default: return false;
    }
}

static bool dict_find(const jdict *d, value k, size_t *at) {
    for (size_t i = 0; i < d->n; i++) {
        const value *x = &d->k[i];
        if (k.t == T_STR && x->t == T_STR) {
            if (str_eq(k.u.s, x->u.s)) {
                *at = i;
                return true;
            }
        } else if (v_eq(k, *x, 0)) {
            *at = i;
            return true;
        }
    }
    return false;
}

static bool hashable(R *r, value k) {
    if (k.t == T_LIST && k.flag == L_TUPLE) {
        for (size_t i = 0; i < k.u.l->n; i++)
            if (!hashable(r, k.u.l->v[i])) return false;
        return true;
    }
    if (k.t == T_LIST || k.t == T_DICT) return FAIL(r, "unhashable type: '%s'", tname(k));
    return true;
}

/* Set d[k] = v, keeping the first insertion's position. */
static bool dict_set(R *r, jdict *d, value k, value v) {
    size_t at;
    if (!step(r, 1 + d->n / 16)) return false;
    if (dict_find(d, k, &at)) {
        d->v[at] = v;
        return true;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        value *nk = ralloc(r, cap * sizeof *nk), *nv = ralloc(r, cap * sizeof *nv);
        if (!nk || !nv) return false;
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    return true;
}

static jdict *dict_new(R *r) {
    jdict *d = ralloc(r, sizeof *d);
    if (d) memset(d, 0, sizeof *d);
    return d;
}

/* ---- frames and names */

static frame *frame_new(R *r, frame *parent) {
    frame *f = ralloc(r, sizeof *f);
    if (!f) return NULL;
    memset(f, 0, sizeof *f);
    f->parent = parent;
    return f;
}

static bool frame_set(R *r, frame *f, const jstr *name, value v) {
    for (uint32_t i = 0; i < f->n; i++)
        if (str_eq(f->names[i], name)) {
            f->vals[i] = v;
            return true;
        }
    if (f->n == f->cap) {
        uint32_t cap = f->cap ? f->cap * 2 : 4;
        const jstr **nn = ralloc(r, cap * sizeof *nn);
        value *nv = ralloc(r, cap * sizeof *nv);
        if (!nn || !nv) return false;
        if (f->n) {
            memcpy(nn, f->names, f->n * sizeof *nn);
            memcpy(nv, f->vals, f->n * sizeof *nv);
        }
        f->names = nn;
        f->vals = nv;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n] = v;
    f->n++;
    return true;
}

enum {
    FN_RANGE, FN_DICT, FN_NAMESPACE, FN_RAISE, FN_STRFTIME, FN_LIPSUM, FN_CYCLER, FN_JOINER,
    FN_GLOBAL_COUNT,
    FN_JOINER_CALL = 50, /* a joiner object: self is a namespace holding its state */
};
static const char *const global_names[] = {"range", "dict", "namespace", "raise_exception",
                                           "strftime_now", "lipsum", "cycler", "joiner"};

static bool make_func(R *r, int id, value self, value *out) {
    jfunc *fn = ralloc(r, sizeof *fn);
    if (!fn) return false;
    fn->id = id;
    fn->self = self;
    *out = (value){.t = T_FUNC, .u.fn = fn};
    return true;
}

static bool lookup(R *r, const jstr *name, value *out) {
    for (frame *f = r->f; f; f = f->parent)
        for (uint32_t i = f->n; i-- > 0;)
            if (str_eq(f->names[i], name)) {
                *out = f->vals[i];
                return true;
            }
    if (r->vars)
        for (size_t i = 0; i < r->vars->n; i++)
            if (str_eq(r->vars->k[i].u.s, name)) {
                *out = r->vars->v[i];
                return true;
            }
    int g = name_index(global_names, FN_GLOBAL_COUNT, name->s, name->len);
    if (g >= 0) return make_func(r, g, V_NONE, out);
    *out = undef_name(name);
    return true;
}

/* ---- methods of built-in types (bound on attribute access) */

enum {
    M_NONE = 100,
    /* str */
    M_STARTSWITH, M_ENDSWITH, M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_SWAPCASE, M_CASEFOLD, M_REPLACE, M_FIND, M_RFIND, M_INDEX, M_RINDEX,
    M_COUNT, M_JOIN, M_SPLITLINES, M_ISDIGIT, M_ISALPHA, M_ISALNUM, M_ISSPACE, M_ISUPPER,
    M_ISLOWER, M_REMOVEPREFIX, M_REMOVESUFFIX, M_STR_OTHER,
    /* dict */
    M_GET, M_ITEMS, M_KEYS, M_VALUES, M_DICT_COPY, M_DICT_OTHER,
    /* list */
    M_LCOUNT, M_LINDEX, M_LCOPY,
    /* loop */
    M_CYCLE, M_CHANGED,
};

static const struct {
    const char *name;
    int id;
} str_methods[] = {
    {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH}, {"strip", M_STRIP},
    {"lstrip", M_LSTRIP},         {"rstrip", M_RSTRIP},     {"split", M_SPLIT},
    {"rsplit", M_RSPLIT},         {"upper", M_UPPER},       {"lower", M_LOWER},
    {"title", M_TITLE},           {"capitalize", M_CAPITALIZE}, {"swapcase", M_SWAPCASE},
    {"casefold", M_CASEFOLD},     {"replace", M_REPLACE},   {"find", M_FIND},
    {"rfind", M_RFIND},           {"index", M_INDEX},       {"rindex", M_RINDEX},
    {"count", M_COUNT},           {"join", M_JOIN},         {"splitlines", M_SPLITLINES},
    {"isdigit", M_ISDIGIT},       {"isalpha", M_ISALPHA},   {"isalnum", M_ISALNUM},
    {"isspace", M_ISSPACE},       {"isupper", M_ISUPPER},   {"islower", M_ISLOWER},
    {"removeprefix", M_REMOVEPREFIX}, {"removesuffix", M_REMOVESUFFIX},
    {"center", M_STR_OTHER},      {"encode", M_STR_OTHER},  {"expandtabs", M_STR_OTHER},
    {"format", M_STR_OTHER},      {"format_map", M_STR_OTHER}, {"isascii", M_STR_OTHER},
    {"isdecimal", M_STR_OTHER},   {"isidentifier", M_STR_OTHER}, {"isnumeric", M_STR_OTHER},
    {"isprintable", M_STR_OTHER}, {"istitle", M_STR_OTHER}, {"ljust", M_STR_OTHER},
    {"maketrans", M_STR_OTHER},   {"partition", M_STR_OTHER}, {"rjust", M_STR_OTHER},
    {"rpartition", M_STR_OTHER},  {"translate", M_STR_OTHER}, {"zfill", M_STR_OTHER},
}, dict_methods[] = {
    {"get", M_GET}, {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES},
    {"copy", M_DICT_COPY}, {"fromkeys", M_DICT_OTHER},
    {"clear", -1}, {"pop", -1}, {"popitem", -1}, {"setdefault", -1}, {"update", -1},
}, list_methods[] = {
    {"count", M_LCOUNT}, {"index", M_LINDEX}, {"copy", M_LCOPY},
    {"append", -1}, {"clear", -1}, {"extend", -1}, {"insert", -1}, {"pop", -1},
    {"remove", -1}, {"reverse", -1}, {"sort", -1},
};

#define METHOD_LOOKUP(table, name)                                                                 \
    ({                                                                                             \
        int id_ = 0;                                                                               \
        for (size_t i_ = 0; i_ < sizeof table / sizeof table[0]; i_++)                            \
            if (str_eqc(name, table[i_].name)) {                                                   \
                id_ = table[i_].id;                                                                \
                break;                                                                             \
            }                                                                                      \
        id_;                                                                                       \
    })

/* Method `name` of obj: 0 none, -1 unsafe (mutating), else its id. */
static int method_of(value obj, const jstr *name) {
    switch (obj.t) {
    case T_STR: return METHOD_LOOKUP(str_methods, name);
    case T_DICT: return METHOD_LOOKUP(dict_methods, name);
    case T_LIST:
        if (obj.flag == L_LIST) return METHOD_LOOKUP(list_methods, name);
        if (obj.flag == L_TUPLE) {
            int id = METHOD_LOOKUP(list_methods, name);
            return id == M_LCOUNT || id == M_LINDEX ? id : 0;
        }
        return 0;
    default: return 0;
    }
}

static bool loop_attr(R *r, value obj, const jstr *name, value *out);

/* jinja2's sandboxed getattr: obj.name (attribute first, then item). */
static bool get_attr(R *r, value obj, const jstr *name, value *out) {
    if (obj.t == T_UNDEF) return undef_error(r, obj);
    if (name->len > 0 && name->s[0] == '_') {
        *out = undef_attr(obj, name);
        return true;
    }
    int m = method_of(obj, name);
    if (m < 0) {
        *out = (value){.t = T_UNDEF, .flag = U_UNSAFE, .aux = obj.t, .u.s = name};
        return true;
    }
    if (m > 0) return make_func(r, m, obj, out);
    if (obj.t == T_DICT || obj.t == T_NS) {
        const jdict *d = obj.t == T_DICT ? obj.u.d : &obj.u.ns->d;
        size_t at;
        if (dict_find(d, v_str(name), &at)) {
            *out = d->v[at];
            return true;
        }
    }
    if (obj.t == T_LOOP) return loop_attr(r, obj, name, out);
    *out = undef_attr(obj, name);
    return true;
}

/* Code point index -> byte offset (i in 0..count). */
static size_t cp_offset(const jstr *s, size_t i) {
    size_t off = 0;
    while (i > 0 && off < s->len) {
        off++;
        while (off < s->len && ((unsigned char)s->s[off] & 0xC0) == 0x80) off++;
        i--;
    }
    return off;
}

/* jinja2's sandboxed getitem: obj[key] (item first, then attribute). */
static bool get_item(R *r, value obj, value key, value *out) {
    if (obj.t == T_UNDEF) return undef_error(r, obj);
    if (obj.t == T_DICT) {
        if (!hashable(r, key)) return false;
        size_t at;
        if (!step(r, 1 + obj.u.d->n / 16)) return false;
        if (dict_find(obj.u.d, key, &at)) {
            *out = obj.u.d->v[at];
            return true;
        }
    } else if ((is_seq(obj) || obj.t == T_STR) && (key.t == T_INT || key.t == T_BOOL)) {
        int64_t i = as_int(key);
        int64_t n = obj.t == T_STR ? (int64_t)u8_count(obj.u.s->s, obj.u.s->len) : (int64_t)obj.u.l->n;
        if (obj.t == T_STR && !step(r, obj.u.s->len / 64)) return false;
        if (i < 0) i += n;
        if (i >= 0 && i < n) {
            if (obj.t != T_STR) {
                *out = obj.u.l->v[i];
                return true;
            }
            size_t a = cp_offset(obj.u.s, (size_t)i), b = cp_offset(obj.u.s, (size_t)i + 1);
            jstr *c = str_sub(r, obj.u.s, a, b - a, obj.u.s->safe);
            if (!c) return false;
            *out = v_str(c);
            return true;
        }
    }
    if (key.t == T_STR && obj.t != T_DICT) return get_attr(r, obj, key.u.s, out);
    if (key.t == T_STR) {
        int m = method_of(obj, key.u.s);
        if (m > 0) return make_func(r, m, obj, out);
        if (m < 0) {
            *out = (value){.t = T_UNDEF, .flag = U_UNSAFE, .aux = obj.t, .u.s = key.u.s};
            return true;
        }
        *out = undef_attr(obj, key.u.s);
        return true;
    }
    *out = (value){.t = T_UNDEF, .flag = U_ITEM, .aux = obj.t};
    return true;
}

/* Materialize what `for` iterates over. */
static bool iterate(R *r, value v, const value **items, size_t *n) {
    switch (v.t) {
    case T_UNDEF:
        *items = NULL;
        *n = 0;
        return true;
    case T_LIST:
        if (v.u.l->err) return FAIL(r, "%s", v.u.l->err);
        *items = v.u.l->v;
        *n = v.u.l->n;
        return true;
    case T_DICT:
        *items = v.u.d->k;
        *n = v.u.d->n;
        return true;
    case T_STR: {
        const jstr *s = v.u.s;
        size_t cnt = u8_count(s->s, s->len);
        if (!step(r, cnt / 8)) return false;
        value *out = cnt ? ralloc(r, cnt * sizeof *out) : NULL;
        if (cnt && !out) return false;
        size_t k = 0;
        for (size_t i = 0; i < s->len;) {
            int32_t c;
            int l = u8_dec(s->s + i, s->len - i, &c);
            jstr *ch = str_sub(r, s, i, (size_t)l, false); /* iter(Markup) yields str */
            if (!ch) return false;
            out[k++] = v_str(ch);
            i += (size_t)l;
        }
        *items = out;
        *n = k;
        return true;
    }
    default: return FAIL(r, "'%s' object is not iterable", tname(v));
    }
}

static bool to_str(R *r, value v, const jstr **out) {
    if (v.t == T_STR) {
        *out = v.u.s;
        return true;
    }
    buf b = {0};
    if (!str_value(r, &b, v, 0)) {
        buf_free(&b);
        return false;
    }
    return (*out = buf_finish(r, &b, false)) != NULL;
}

/* HTML escaping as markupsafe.escape does it. */
static bool html_escape(R *r, const jstr *s, const jstr **out) {
    if (s->safe) {
        *out = s;
        return true;
    }
    buf b = {0};
    size_t run = 0;
    for (size_t i = 0; i < s->len; i++) {
        const char *e = NULL;
        switch (s->s[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '\'': e = "&#39;"; break;
        case '"': e = "&#34;"; break;
        default: break;
        }
        if (e) {
            if (!buf_put_str(r, &b, s, run, i - run)) goto fail;
            size_t at = b.n;
            if (!buf_puts(r, &b, e) || (str_byte_tainted(s, i) && !buf_taint(r, &b, at))) goto fail;
            run = i + 1;
        }
    }
    if (!buf_put_str(r, &b, s, run, s->len - run)) goto fail;
    return (*out = buf_finish(r, &b, true)) != NULL;
fail:
    buf_free(&b);
    return false;
}

static bool str_concat(R *r, const jstr *a, const jstr *b, bool safe, value *out) {
    if (!step(r, (a->len + b->len) / 256)) return false;
    if (a->len + b->len > r->max_output)
        return fail(r, SPUD_ERR_RANGE, "string longer than %zu bytes", r->max_output);
    size_t n = a->len + b->len;
    jstr *c = ralloc(r, sizeof *c + n + 1);
    if (!c) return false;
    c->len = n;
    c->safe = safe;
    c->taint = TAINT_NONE;
    c->n_runs = 0;
    c->runs = NULL;
    memcpy(c->s, a->s, a->len);
    memcpy(c->s + a->len, b->s, b->len);
    c->s[c->len] = '\0';
    if (a->taint == TAINT_ALL && b->taint == TAINT_ALL) {
        c->taint = TAINT_ALL;
    } else if (a->taint != TAINT_NONE || b->taint != TAINT_NONE) {
        /* the runs of a, then those of b shifted by a->len, joined where they touch */
        trun one[2];
        const trun *ra = a->taint == TAINT_RUNS ? a->runs : one, *rb = b->taint == TAINT_RUNS ? b->runs : one + 1;
        size_t na = a->taint == TAINT_RUNS ? a->n_runs : a->taint == TAINT_ALL && a->len;
        size_t nb = b->taint == TAINT_RUNS ? b->n_runs : b->taint == TAINT_ALL && b->len;
        one[0] = (trun){0, a->len};
        one[1] = (trun){0, b->len};
        trun *t = ralloc(r, (na + nb) * sizeof *t);
        if (!t) return false;
        memcpy(t, ra, na * sizeof *t);
        size_t k = na;
        for (size_t i = 0; i < nb; i++) {
            trun x = {rb[i].a + a->len, rb[i].b + a->len};
            if (k && t[k - 1].b == x.a) t[k - 1].b = x.b;
            else t[k++] = x;
        }
        if (!str_set_runs(r, c, t, k)) return false;
    }
    *out = v_str(c);
    return true;
}

static bool int_result(R *r, bool overflow, int64_t v, value *out) {
    if (overflow) return FAIL(r, "integer overflow (spud integers are 64-bit)");
    *out = v_int(v);
    return true;
}

static bool percent_format(R *r, const jstr *fmt, value args, value *out);

static bool binop(R *r, int op, value a, value b, value *out) {
    if (a.t == T_UNDEF) return undef_error(r, a);
    if (b.t == T_UNDEF && !(op == OP_MOD && a.t == T_STR)) return undef_error(r, b); /* 'x' % undefined formats */
    bool num = is_num(a) && is_num(b), flt = a.t == T_FLOAT || b.t == T_FLOAT;
    int64_t x, y, z = 0;
    switch (op) {
    case OP_ADD:
        if (num) {
            if (flt) {
                *out = v_float(as_f(a) + as_f(b));
                return true;
            }
            bool ov = __builtin_add_overflow(as_int(a), as_int(b), &z);
            return int_result(r, ov, z, out);
        }
        if (a.t == T_STR && b.t == T_STR) {
            const jstr *sa = a.u.s, *sb = b.u.s;
            bool safe = sa->safe || sb->safe;
            if (safe && (!html_escape(r, sa, &sa) || !html_escape(r, sb, &sb))) return false;
            return str_concat(r, sa, sb, safe, out);
        }
        if (is_seq(a) && is_seq(b) && a.flag == b.flag) {
            jlist *l = list_new(r, a.u.l->n + b.u.l->n);
            if (!l || !step(r, l->n / 16)) return false;
            if (a.u.l->n) memcpy(l->v, a.u.l->v, a.u.l->n * sizeof(value));
            if (b.u.l->n) memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(value));
            *out = v_list(l, a.flag);
            return true;
        }
        break;
    case OP_SUB:
        if (num) {
            if (flt) {
                *out = v_float(as_f(a) - as_f(b));
                return true;
            }
            bool ov = __builtin_sub_overflow(as_int(a), as_int(b), &z);
            return int_result(r, ov, z, out);
        }
        break;
    case OP_MUL:
        if (num) {
            if (flt) {
                *out = v_float(as_f(a) * as_f(b));
                return true;
            }
            bool ov = __builtin_mul_overflow(as_int(a), as_int(b), &z);
            return int_result(r, ov, z, out);
        }
        if ((a.t == T_STR || is_seq(a)) && (b.t == T_INT || b.t == T_BOOL)) {
            int64_t k = as_int(b);
            if (k < 0) k = 0;
            if (a.t == T_STR) {
                const jstr *s = a.u.s;
                if (s->len && (uint64_t)k > r->max_output / s->len)
                    return fail(r, SPUD_ERR_RANGE, "string longer than %zu bytes", r->max_output);
                if (!step(r, (uint64_t)k * s->len / 256 + 1)) return false;
                jstr *c = ralloc(r, sizeof *c + s->len * (size_t)k + 1);
                if (!c) return false;
                c->len = s->len * (size_t)k;
                c->safe = s->safe;
                c->taint = c->len && s->taint ? TAINT_ALL : TAINT_NONE;
                c->n_runs = 0;
                c->runs = NULL;
                for (int64_t i = 0; i < k; i++) memcpy(c->s + (size_t)i * s->len, s->s, s->len);
                c->s[c->len] = '\0';
                *out = v_str(c);
                return true;
            }
            size_t n = a.u.l->n;
            if (n && (uint64_t)k > (r->max_output / 16) / n)
                return fail(r, SPUD_ERR_RANGE, "list too long");
            if (!step(r, (uint64_t)k * n + 1)) return false;
            jlist *l = list_new(r, n * (size_t)k);
            if (!l) return false;
            for (int64_t i = 0; n && i < k; i++) memcpy(l->v + (size_t)i * n, a.u.l->v, n * sizeof(value));
            *out = v_list(l, a.flag);
            return true;
        }
        if ((b.t == T_STR || is_seq(b)) && (a.t == T_INT || a.t == T_BOOL)) return binop(r, op, b, a, out);
        break;
    case OP_DIV:
        if (num) {
            if (as_f(b) == 0 && !(b.t == T_FLOAT && isnan(b.u.f))) return FAIL(r, "division by zero");
            *out = v_float(as_f(a) / as_f(b));
            return true;
        }
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (num) {
            if (flt) {
                double fa = as_f(a), fb = as_f(b);
                if (fb == 0) return FAIL(r, "float division by zero");
                double m = fmod(fa, fb);
                if (m != 0 && ((m < 0) != (fb < 0))) m += fb;
                if (op == OP_MOD) {
                    *out = v_float(m == 0 ? copysign(0.0, fb) : m);
                } else {
                    double q = (fa - m) / fb;
                    double fq = floor(q);
                    if (q - fq > 0.5) fq += 1;
                    *out = v_float(fq);
                }
                return true;
            }
            x = as_int(a);
            y = as_int(b);
            if (y == 0) return FAIL(r, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) {
                if (op == OP_MOD) {
                    *out = v_int(0);
                    return true;
                }
                return FAIL(r, "integer overflow (spud integers are 64-bit)");
            }
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                m += y;
                q -= 1;
            }
            *out = v_int(op == OP_MOD ? m : q);
            return true;
        }
        if (op == OP_MOD && a.t == T_STR) return percent_format(r, a.u.s, b, out);
        break;
    case OP_POW:
        if (num) {
            if (!flt && as_int(b) >= 0) {
                int64_t base = as_int(a), e = as_int(b), acc = 1;
                bool ov = false;
                while (e > 0 && !ov) {
                    if (e & 1) ov |= __builtin_mul_overflow(acc, base, &acc);
                    e >>= 1;
                    if (e) ov |= __builtin_mul_overflow(base, base, &base);
                }
                return int_result(r, ov, acc, out);
            }
            double fa = as_f(a), fb = as_f(b);
            if (fa == 0 && fb < 0) return FAIL(r, "0.0 cannot be raised to a negative power");
            double pw = pow(fa, fb);
            if (isinf(pw) && isfinite(fa) && isfinite(fb)) return FAIL(r, "(34, 'Numerical result out of range')");
            if (isnan(pw) && !isnan(fa) && !isnan(fb)) return FAIL(r, "complex results are not supported");
            *out = v_float(pw);
            return true;
        }
        break;
    default: break;
    }
    static const char *const sym[] = {[OP_ADD] = "+", [OP_SUB] = "-", [OP_MUL] = "*",
                                      [OP_DIV] = "/", [OP_FLOORDIV] = "//", [OP_MOD] = "%",
                                      [OP_POW] = "**"};
    return FAIL(r, "unsupported operand type(s) for %s: '%s' and '%s'",
                op <= OP_POW ? sym[op] : "?", tname(a), tname(b));
}

/* Python ordering for < <= > >=: *res is -1, 0 or 1. */
static bool v_order(R *r, value a, value b, int *res, int depth) {
    if (a.t == T_UNDEF) return undef_error(r, a);
    if (b.t == T_UNDEF) return undef_error(r, b);
    if (is_num(a) && is_num(b)) {
        if (a.t == T_FLOAT || b.t == T_FLOAT) {
            double x = as_f(a), y = as_f(b);
            *res = x < y ? -1 : x > y ? 1 : x == y ? 0 : 2; /* 2: unordered (nan) */
        } else {
            int64_t x = as_int(a), y = as_int(b);
            *res = x < y ? -1 : x > y;
        }
        return true;
    }
    if (a.t == T_STR && b.t == T_STR) {
        int c = cmp_str(a.u.s, b.u.s);
        *res = c < 0 ? -1 : c > 0;
        return true;
    }
    if (is_seq(a) && is_seq(b) && a.flag == b.flag && depth < JJ_MAX_CALL_DEPTH) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (v_eq(a.u.l->v[i], b.u.l->v[i], 0)) continue;
            return v_order(r, a.u.l->v[i], b.u.l->v[i], res, depth + 1);
        }
        *res = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
        return true;
    }
    return FAIL(r, "'<' not supported between instances of '%s' and '%s'", tname(a), tname(b));
}

static bool contains(R *r, value item, value seq, bool *res) {
    switch (seq.t) {
    case T_UNDEF: *res = false; return true;
    case T_STR:
        if (item.t != T_STR)
            return FAIL(r, "'in <string>' requires string as left operand, not %s", tname(item));
        if (!step(r, seq.u.s->len / 64)) return false;
        *res = item.u.s->len == 0 ||
               memmem(seq.u.s->s, seq.u.s->len, item.u.s->s, item.u.s->len) != NULL;
        return true;
    case T_LIST:
        if (seq.flag == L_ITEMS || seq.flag == L_KEYS) {
            /* dict views hash their items */
            if (!hashable(r, item)) return false;
        }
        if (!step(r, seq.u.l->n / 8)) return false;
        for (size_t i = 0; i < seq.u.l->n; i++)
            if (v_eq(item, seq.u.l->v[i], 0)) {
                *res = true;
                return true;
            }
        *res = false;
        return true;
    case T_DICT: {
        size_t at;
        if (!hashable(r, item) || !step(r, seq.u.d->n / 8)) return false;
        *res = dict_find(seq.u.d, item, &at);
        return true;
    }
    default: return FAIL(r, "argument of type '%s' is not iterable", tname(seq));
    }
}

static bool compare(R *r, int op, value a, value b, bool *res) {
    int o;
    switch (op) {
    case OP_EQ: *res = v_eq(a, b, 0); return true;
    case OP_NE: *res = !v_eq(a, b, 0); return true;
    case OP_IN: return contains(r, a, b, res);
    case OP_NOTIN:
        if (!contains(r, a, b, res)) return false;
        *res = !*res;
        return true;
    default:
        if (!v_order(r, a, b, &o, 0)) return false;
        *res = o != 2 && (op == OP_LT ? o < 0 : op == OP_LE ? o <= 0 : op == OP_GT ? o > 0 : o >= 0);
        return true;
    }
}

/* ------------------------------------------------------------------ evaluator: expressions */

static bool eval(R *r, const node *x, value *out);
static int exec(R *r, const node *x);

/* Evaluated call arguments. */
typedef struct {
    value *pos;
    size_t npos;
    const jstr **kwn;
    value *kwv;
    size_t nkw;
} args_t;

static bool eval_args(R *r, const node *x, args_t *a, size_t extra_kw) {
    memset(a, 0, sizeof *a);
    a->npos = x->nk;
    a->nkw = x->nk2;
    if (a->npos && !(a->pos = ralloc(r, a->npos * sizeof(value)))) return false;
    if (a->nkw + extra_kw) {
        if (!(a->kwv = ralloc(r, (a->nkw + extra_kw) * sizeof(value)))) return false;
        if (!(a->kwn = ralloc(r, (a->nkw + extra_kw) * sizeof(jstr *)))) return false;
    }
    for (size_t i = 0; i < a->npos; i++)
        if (!eval(r, x->kids[i], &a->pos[i])) return false;
    for (size_t i = 0; i < a->nkw; i++) {
        a->kwn[i] = x->names[i];
        if (!eval(r, x->kids2[i], &a->kwv[i])) return false;
    }
    return true;
}

#define MISSING 0xFF /* value.t of an argument that was not given */

/* Bind args to named parameters (Python's rules for a plain signature). */
static bool bind(R *r, const char *fname, const char *const *params, size_t np, const args_t *a,
                 size_t first, value *slots) {
    r->bind_failed = true; /* until it succeeds */
    for (size_t i = 0; i < np; i++) slots[i].t = MISSING;
    if (a->npos > first + np)
        return FAIL(r, "%s() takes at most %zu arguments (%zu given)", fname, np, a->npos - first);
    for (size_t i = first; i < a->npos; i++) slots[i - first] = a->pos[i];
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i = 0;
        while (i < np && !str_eqc(a->kwn[k], params[i])) i++;
        if (i == np) return FAIL(r, "%s() got an unexpected keyword argument '%s'", fname, a->kwn[k]->s);
        if (slots[i].t != MISSING) return FAIL(r, "%s() got multiple values for argument '%s'", fname, params[i]);
        slots[i] = a->kwv[k];
    }
    r->bind_failed = false;
    return true;
}

static bool given(value v) { return v.t != MISSING; }

static bool call_value(R *r, value fn, args_t *a, value *out);
static bool apply_filter(R *r, int id, const jstr *name, value v, args_t *a, value *out);
static bool apply_test(R *r, int id, const jstr *name, value v, args_t *a, bool *res);

static bool make_slice(R *r, value obj, value vs, value ve, value vst, value *out) {
    if (obj.t == T_UNDEF) return undef_error(r, obj);
    bool is_str = obj.t == T_STR;
    if (!is_str && !is_seq(obj)) { /* jinja2 slices with Python's [], not the sandbox's getitem */
        if (obj.t == T_DICT) return FAIL(r, "unhashable type: 'slice'");
        return FAIL(r, "'%s' object is not subscriptable", tname(obj));
    }
    for (int i = 0; i < 3; i++) {
        value v = i == 0 ? vs : i == 1 ? ve : vst;
        if (v.t != T_NONE && v.t != T_INT && v.t != T_BOOL)
            return FAIL(r, "slice indices must be integers or None");
    }
    int64_t n = is_str ? (int64_t)u8_count(obj.u.s->s, obj.u.s->len) : (int64_t)obj.u.l->n;
    int64_t stp = vst.t == T_NONE ? 1 : as_int(vst);
    if (stp == 0) return FAIL(r, "slice step cannot be zero");
    if (stp == INT64_MIN) stp = -INT64_MAX;
    int64_t lo, hi;
    /* PySlice_AdjustIndices */
    if (vs.t == T_NONE) {
        lo = stp < 0 ? n - 1 : 0;
    } else {
        lo = as_int(vs);
        if (lo < 0) {
            lo += n;
            if (lo < 0) lo = stp < 0 ? -1 : 0;
        } else if (lo >= n) {
            lo = stp < 0 ? n - 1 : n;
        }
    }
    if (ve.t == T_NONE) {
        hi = stp < 0 ? -1 : n;
    } else {
        hi = as_int(ve);
        if (hi < 0) {
            hi += n;
            if (hi < 0) hi = stp < 0 ? -1 : 0;
        } else if (hi >= n) {
            hi = stp < 0 ? n - 1 : n;
        }
    }
    int64_t cnt = 0;
    if (stp > 0 && lo < hi) cnt = (hi - lo - 1) / stp + 1;
    if (stp < 0 && hi < lo) cnt = (lo - hi - 1) / (-stp) + 1;
    if (!step(r, (uint64_t)cnt / 8 + 1)) return false;
    if (is_str) {
        const jstr *s = obj.u.s;
        size_t *offs = ralloc(r, ((size_t)n + 1) * sizeof *offs);
        if (!offs) return false;
        size_t k = 0;
        for (size_t i = 0; i < s->len; i++)
            if (((unsigned char)s->s[i] & 0xC0) != 0x80) offs[k++] = i;
        offs[k] = s->len;
        buf b = {0};
        for (int64_t j = 0, i = lo; j < cnt; j++, i += stp)
            if (!buf_put_str(r, &b, s, offs[i], offs[i + 1] - offs[i])) {
                buf_free(&b);
                return false;
            }
        jstr *res = buf_finish(r, &b, s->safe);
        if (!res) return false;
        *out = v_str(res);
        return true;
    }
    jlist *l = list_new(r, (size_t)cnt);
    if (!l) return false;
    for (int64_t j = 0, i = lo; j < cnt; j++, i += stp) l->v[j] = obj.u.l->v[i];
    *out = v_list(l, obj.flag);
    return true;
}

static bool eval(R *r, const node *x, value *out) {
    value a, b;
    if (!step(r, 1)) return false;
    r->line = x->line;
    switch (x->kind) {
    case E_CONST: *out = x->v; return true;
    case E_NAME: return lookup(r, x->v.u.s, out);
    case E_BLOCKVAL: *out = r->blockval; return true;
    case E_GETATTR:
        if (!eval(r, x->a, &a)) return false;
        r->line = x->line;
        return get_attr(r, a, x->v.u.s, out);
    case E_GETITEM:
        if (!eval(r, x->a, &a) || !eval(r, x->b, &b)) return false;
        r->line = x->line;
        if (b.t == T_UNDEF) {
            /* an undefined key: jinja2 looks it up (and fails to find it) */
            if (a.t == T_UNDEF) return undef_error(r, a);
            *out = (value){.t = T_UNDEF, .flag = U_ITEM, .aux = a.t};
            return true;
        }
        return get_item(r, a, b, out);
    case E_SLICE: {
        value s = V_NONE, e = V_NONE, st = V_NONE;
        if (!x->a) { /* a slice inside a tuple subscript, x[a:b, c]: no such item */
            *out = undef_hint("slice objects as keys are not supported");
            return true;
        }
        if (!eval(r, x->a, &a)) return false;
        if (x->b && !eval(r, x->b, &s)) return false;
        if (x->c && !eval(r, x->c, &e)) return false;
        if (x->d && !eval(r, x->d, &st)) return false;
        r->line = x->line;
        if (x->flags && a.t != T_STR && !is_seq(a)) {
            *out = (value){.t = T_UNDEF, .flag = U_ITEM, .aux = a.t};
            return true;
        }
        return make_slice(r, a, s, e, st, out);
    }
    case E_CALL: {
        args_t args;
        if (!eval(r, x->a, &a) || !eval_args(r, x, &args, 0)) return false;
        r->line = x->line;
        return call_value(r, a, &args, out);
    }
    case E_FILTER: {
        args_t args;
        if (!eval(r, x->a, &a) || !eval_args(r, x, &args, 0)) return false;
        r->line = x->line;
        if (x->flags) return FAIL(r, "No filter named '%s' found.", x->v.u.s->s);
        return apply_filter(r, x->op, x->v.u.s, a, &args, out);
    }
    case E_TEST: {
        args_t args;
        bool res;
        if (!eval(r, x->a, &a) || !eval_args(r, x, &args, 0)) return false;
        r->line = x->line;
        if (x->flags) return FAIL(r, "No test named '%s' found.", x->v.u.s->s);
        if (!apply_test(r, x->op, x->v.u.s, a, &args, &res)) return false;
        *out = v_bool(res);
        return true;
    }
    case E_NEG:
    case E_POS:
        if (!eval(r, x->a, &a)) return false;
        r->line = x->line;
        if (a.t == T_UNDEF) return undef_error(r, a);
        if (!is_num(a)) return FAIL(r, "bad operand type for unary %c: '%s'", x->kind == E_NEG ? '-' : '+', tname(a));
        if (x->kind == E_POS) {
            *out = a.t == T_BOOL ? v_int(a.u.b) : a;
        } else if (a.t == T_FLOAT) {
            *out = v_float(-a.u.f);
        } else {
            if (as_int(a) == INT64_MIN) return FAIL(r, "integer overflow (spud integers are 64-bit)");
            *out = v_int(-as_int(a));
        }
        return true;
    case E_NOT:
        if (!eval(r, x->a, &a)) return false;
        *out = v_bool(!truthy(a));
        return true;
    case E_AND:
        if (!eval(r, x->a, &a)) return false;
        if (!truthy(a)) {
            *out = a;
            return true;
        }
        return eval(r, x->b, out);
    case E_OR:
        if (!eval(r, x->a, &a)) return false;
        if (truthy(a)) {
            *out = a;
            return true;
        }
        return eval(r, x->b, out);
    case E_BIN:
        if (!eval(r, x->a, &a) || !eval(r, x->b, &b)) return false;
        r->line = x->line;
        return binop(r, x->op, a, b, out);
    case E_CONCAT: {
        buf bb = {0};
        for (uint32_t i = 0; i < x->nk; i++) {
            if (!eval(r, x->kids[i], &a) || !str_value(r, &bb, a, 0)) {
                buf_free(&bb);
                return false;
            }
        }
        jstr *s = buf_finish(r, &bb, false);
        if (!s) return false;
        *out = v_str(s);
        return true;
    }
    case E_CMP: {
        if (!eval(r, x->kids[0], &a)) return false;
        for (uint32_t i = 1; i < x->nk; i++) {
            bool res;
            if (!eval(r, x->kids[i], &b)) return false;
            r->line = x->line;
            if (!compare(r, x->ops[i - 1], a, b, &res)) return false;
            if (!res) {
                *out = v_bool(false);
                return true;
            }
            a = b;
        }
        *out = v_bool(true);
        return true;
    }
    case E_COND:
        if (!eval(r, x->a, &a)) return false;
        if (truthy(a)) return eval(r, x->b, out);
        if (x->c) return eval(r, x->c, out);
        *out = undef_hint("the inline if-expression evaluated to false and no else section was defined.");
        return true;
    case E_LIST:
    case E_TUPLE: {
        jlist *l = list_new(r, x->nk);
        if (!l) return false;
        for (uint32_t i = 0; i < x->nk; i++)
            if (!eval(r, x->kids[i], &l->v[i])) return false;
        *out = v_list(l, x->kind == E_TUPLE);
        return true;
    }
    case E_DICT: {
        jdict *d = dict_new(r);
        if (!d) return false;
        for (uint32_t i = 0; i < x->nk; i++) {
            if (!eval(r, x->kids[i], &a) || !eval(r, x->kids2[i], &b)) return false;
            r->line = x->line;
            if (!hashable(r, a) || !dict_set(r, d, a, b)) return false;
        }
        *out = (value){.t = T_DICT, .u.d = d};
        return true;
    }
    default: return FAIL(r, "internal error: bad expression node %d", x->kind);
    }
}

/* ------------------------------------------------------------------ evaluator: statements */

static bool emit(R *r, const jstr *s) {
    if (!step(r, 1 + s->len / 256)) return false;
    return buf_put_str(r, r->out, s, 0, s->len);
}

static bool assign(R *r, const node *target, value v) {
    if (target->kind == E_NAME) return frame_set(r, r->f, target->v.u.s, v);
    if (target->kind == E_NSREF) {
        value ns;
        if (!lookup(r, target->a->v.u.s, &ns)) return false;
        if (ns.t != T_NS) return FAIL(r, "cannot assign attribute on non-namespace object");
        return dict_set(r, &ns.u.ns->d, v_str(target->v.u.s), v);
    }
    /* tuple unpacking */
    const value *items;
    size_t n;
    if (v.t == T_UNDEF) return FAIL(r, "cannot unpack an undefined value");
    if (!iterate(r, v, &items, &n)) return false;
    if (n != target->nk)
        return FAIL(r, n > target->nk ? "too many values to unpack (expected %u)"
                                      : "not enough values to unpack (expected %u)",
                    target->nk);
    for (uint32_t i = 0; i < target->nk; i++)
        if (!assign(r, target->kids[i], items[i])) return false;
    return true;
}

static bool capture(R *r, const node *body, frame *f, jstr **out) {
    buf b = {0}, *saved = r->out;
    frame *sf = r->f;
    r->out = &b;
    r->f = f;
    int fl = exec(r, body);
    r->out = saved;
    r->f = sf;
    if (fl == FLOW_ERR) {
        buf_free(&b);
        return false;
    }
    return (*out = buf_finish(r, &b, false)) != NULL;
}

static bool loop_attr(R *r, value obj, const jstr *name, value *out) {
    const jloop *l = obj.u.loop;
    const char *n = name->s;
    if (!strcmp(n, "index")) *out = v_int(l->i + 1);
    else if (!strcmp(n, "index0")) *out = v_int(l->i);
    else if (!strcmp(n, "revindex")) *out = v_int(l->n - l->i);
    else if (!strcmp(n, "revindex0")) *out = v_int(l->n - l->i - 1);
    else if (!strcmp(n, "first")) *out = v_bool(l->i == 0);
    else if (!strcmp(n, "last")) *out = v_bool(l->i == l->n - 1);
    else if (!strcmp(n, "length")) *out = v_int(l->n);
    else if (!strcmp(n, "depth")) *out = v_int(l->depth);
    else if (!strcmp(n, "depth0")) *out = v_int(l->depth - 1);
    else if (!strcmp(n, "previtem"))
        *out = l->i > 0 ? l->items[l->i - 1] : undef_hint("there is no previous item");
    else if (!strcmp(n, "nextitem"))
        *out = l->i + 1 < l->n ? l->items[l->i + 1] : undef_hint("there is no next item");
    else if (!strcmp(n, "cycle")) return make_func(r, M_CYCLE, obj, out);
    else if (!strcmp(n, "changed")) return make_func(r, M_CHANGED, obj, out);
    else *out = undef_attr(obj, name);
    return true;
}

JSTR_LIT(loop_name, "loop");

static int exec_for(R *r, const node *x) {
    value it;
    const value *items;
    size_t n;
    if (!eval(r, x->b, &it)) return FLOW_ERR;
    r->line = x->line;
    if (!iterate(r, it, &items, &n)) return FLOW_ERR;
    frame *outer = r->f;
    if (x->c) { /* {% for a in b if cond %}: filter first, so loop.length counts what is left */
        value *kept = n ? ralloc(r, n * sizeof *kept) : NULL;
        if (n && !kept) return FLOW_ERR;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            frame *f = frame_new(r, outer);
            value c;
            if (!f) return FLOW_ERR;
            r->f = f;
            bool ok = assign(r, x->a, items[i]) && eval(r, x->c, &c);
            r->f = outer;
            if (!ok) return FLOW_ERR;
            if (truthy(c)) kept[k++] = items[i];
        }
        items = kept;
        n = k;
    }
    int depth = 1; /* deeper only in recursive loops, which spud does not support */
    jloop *lp = ralloc(r, sizeof *lp);
    if (!lp) return FLOW_ERR;
    lp->items = items;
    lp->n = (int64_t)n;
    lp->depth = depth;
    value lv = {.t = T_LOOP, .u.loop = lp};
    for (size_t i = 0; i < n; i++) {
        lp->i = (int64_t)i;
        frame *f = frame_new(r, outer);
        if (!f) return FLOW_ERR;
        r->f = f;
        if (!frame_set(r, f, loop_name, lv) || !assign(r, x->a, items[i])) {
            r->f = outer;
            return FLOW_ERR;
        }
        int fl = exec(r, x->d);
        r->f = outer;
        if (fl == FLOW_ERR) return FLOW_ERR;
        if (fl == FLOW_BREAK) break;
    }
    if (n == 0 && x->e) {
        frame *f = frame_new(r, outer);
        if (!f) return FLOW_ERR;
        r->f = f;
        int fl = exec(r, x->e);
        r->f = outer;
        return fl;
    }
    return FLOW_OK;
}

static int exec(R *r, const node *x) {
    value v;
    if (!step(r, 1)) return FLOW_ERR;
    r->line = x->line;
    switch (x->kind) {
    case S_BODY:
        for (uint32_t i = 0; i < x->nk; i++) {
            int fl = exec(r, x->kids[i]);
            if (fl != FLOW_OK) return fl;
        }
        return FLOW_OK;
    case S_TEXT: return emit(r, x->v.u.s) ? FLOW_OK : FLOW_ERR;
    case S_OUT: {
        if (!eval(r, x->a, &v)) return FLOW_ERR;
        if (v.t == T_STR) return emit(r, v.u.s) ? FLOW_OK : FLOW_ERR;
        return str_value(r, r->out, v, 0) ? FLOW_OK : FLOW_ERR;
    }
    case S_IF:
        if (!eval(r, x->a, &v)) return FLOW_ERR;
        if (truthy(v)) return exec(r, x->b);
        return x->c ? exec(r, x->c) : FLOW_OK;
    case S_FOR: return exec_for(r, x);
    case S_SET:
        if (!eval(r, x->b, &v)) return FLOW_ERR;
        r->line = x->line;
        return assign(r, x->a, v) ? FLOW_OK : FLOW_ERR;
    case S_SETBLOCK:
    case S_FILTERBLOCK: {
        jstr *s;
        frame *f = frame_new(r, r->f);
        if (!f || !capture(r, x->b, f, &s)) return FLOW_ERR;
        value saved = r->blockval;
        r->blockval = v_str(s);
        bool ok = eval(r, x->kind == S_SETBLOCK ? x->c : x->a, &v);
        r->blockval = saved;
        if (!ok) return FLOW_ERR;
        r->line = x->line;
        if (x->kind == S_SETBLOCK) return assign(r, x->a, v) ? FLOW_OK : FLOW_ERR;
        return str_value(r, r->out, v, 0) ? FLOW_OK : FLOW_ERR;
    }
    case S_MACRO: {
        jmacro *m = ralloc(r, sizeof *m);
        if (!m) return FLOW_ERR;
        m->def = x;
        m->scope = r->f;
        m->caller = V_UNDEF;
        return frame_set(r, r->f, x->v.u.s, (value){.t = T_MACRO, .u.m = m}) ? FLOW_OK : FLOW_ERR;
    }
    case S_CALLBLOCK: {
        jmacro *m = ralloc(r, sizeof *m);
        args_t args;
        value fn;
        if (!m) return FLOW_ERR;
        m->def = x;
        m->scope = r->f;
        m->caller = V_UNDEF;
        const node *call = x->a;
        if (!eval(r, call->a, &fn) || !eval_args(r, call, &args, 1)) return FLOW_ERR;
        JSTR_LIT(caller_name, "caller");
        args.kwn[args.nkw] = caller_name;
        args.kwv[args.nkw] = (value){.t = T_MACRO, .u.m = m};
        args.nkw++;
        r->line = x->line;
        if (!call_value(r, fn, &args, &v)) return FLOW_ERR;
        return str_value(r, r->out, v, 0) ? FLOW_OK : FLOW_ERR;
    }
    case S_WITH: {
        frame *f = frame_new(r, r->f);
        value *vals = x->nk ? ralloc(r, x->nk * sizeof *vals) : NULL;
        if (!f || (x->nk && !vals)) return FLOW_ERR;
        for (uint32_t i = 0; i < x->nk; i++)
            if (!eval(r, x->kids2[i], &vals[i])) return FLOW_ERR;
        frame *outer = r->f;
        r->f = f;
        int fl = FLOW_OK;
        for (uint32_t i = 0; i < x->nk && fl == FLOW_OK; i++)
            if (!assign(r, x->kids[i], vals[i])) fl = FLOW_ERR;
        if (fl == FLOW_OK) fl = exec(r, x->b);
        r->f = outer;
        return fl;
    }
    case S_BREAK: return FLOW_BREAK;
    case S_CONTINUE: return FLOW_CONTINUE;
    default: return FAIL(r, "internal error: bad statement node %d", x->kind) ? FLOW_OK : FLOW_ERR;
    }
}

/* ------------------------------------------------------------------ calls */

static bool call_macro(R *r, jmacro *m, args_t *a, value *out) {
    const node *def = m->def;
    bool is_caller = def->kind == S_CALLBLOCK;
    const char *mname = is_caller ? "caller" : def->v.u.s->s;
    if (r->depth >= JJ_MAX_CALL_DEPTH) return FAIL(r, "macro calls nested too deeply (limit %d)", JJ_MAX_CALL_DEPTH);
    frame *f = frame_new(r, m->scope);
    if (!f) return false;
    size_t np = def->nn;
    bool *bound = np ? ralloc(r, np * sizeof *bound) : NULL;
    if (np && !bound) return false;
    if (np) memset(bound, 0, np * sizeof *bound);
    jlist *varargs = NULL;
    if (a->npos > np) {
        if (!(def->flags & MF_VARARGS))
            return FAIL(r, "macro '%s' takes not more than %zu argument(s)", mname, np);
        if (!(varargs = list_new(r, a->npos - np))) return false;
        for (size_t i = np; i < a->npos; i++) varargs->v[i - np] = a->pos[i];
    }
    for (size_t i = 0; i < a->npos && i < np; i++) {
        if (!frame_set(r, f, def->names[i], a->pos[i])) return false;
        bound[i] = true;
    }
    jdict *kwargs = NULL;
    value caller = V_UNDEF;
    bool have_caller = false;
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i = 0;
        while (i < np && !str_eq(def->names[i], a->kwn[k])) i++;
        if (i < np) {
            if (bound[i]) return FAIL(r, "macro '%s' got multiple values for argument '%s'", mname, a->kwn[k]->s);
            if (!frame_set(r, f, def->names[i], a->kwv[k])) return false;
            bound[i] = true;
        } else if (str_eqc(a->kwn[k], "caller") && (def->flags & MF_CALLER)) {
            caller = a->kwv[k];
            have_caller = true;
        } else if (def->flags & MF_KWARGS) {
            if (!kwargs && !(kwargs = dict_new(r))) return false;
            if (!dict_set(r, kwargs, v_str(a->kwn[k]), a->kwv[k])) return false;
        } else {
            return FAIL(r, "macro '%s' takes no keyword argument '%s'", mname, a->kwn[k]->s);
        }
    }
    frame *saved = r->f;
    r->f = f;
    for (size_t i = 0; i < np; i++) {
        if (bound[i]) continue;
        value d;
        if (def->kids[i]) {
            if (!eval(r, def->kids[i], &d)) {
                r->f = saved;
                return false;
            }
        } else {
            d = undef_name(def->names[i]);
        }
        if (!frame_set(r, f, def->names[i], d)) {
            r->f = saved;
            return false;
        }
    }
    r->f = saved;
    JSTR_LIT(n_varargs, "varargs");
    JSTR_LIT(n_kwargs, "kwargs");
    JSTR_LIT(n_caller, "caller");
    if (def->flags & MF_VARARGS)
        if (!frame_set(r, f, n_varargs, varargs ? v_list(varargs, true) : v_list(list_new(r, 0), true)))
            return false;
    if (def->flags & MF_KWARGS) {
        if (!kwargs && !(kwargs = dict_new(r))) return false;
        if (!frame_set(r, f, n_kwargs, (value){.t = T_DICT, .u.d = kwargs})) return false;
    }
    if ((def->flags & MF_CALLER) && !is_caller)
        if (!frame_set(r, f, n_caller, have_caller ? caller : undef_hint("No caller defined")))
            return false;
    jstr *s;
    r->depth++;
    bool ok = capture(r, def->b, f, &s);
    r->depth--;
    if (!ok) return false;
    *out = v_str(s);
    return true;
}

static bool call_func(R *r, jfunc *fn, args_t *a, value *out);

static bool call_value(R *r, value fn, args_t *a, value *out) {
    switch (fn.t) {
    case T_MACRO: return call_macro(r, fn.u.m, a, out);
    case T_FUNC: return call_func(r, fn.u.fn, a, out);
    case T_UNDEF: return undef_error(r, fn);
    default: return FAIL(r, "'%s' object is not callable", tname(fn));
    }
}

/* ------------------------------------------------------------------ strings (Python str methods) */

static bool soft_str(R *r, value v, const jstr **out) { return to_str(r, v, out); }

static bool mk_str(R *r, const char *s, size_t n, bool safe, value *out) {
    jstr *j = str_new(r, s, n, safe);
    if (!j) return false;
    *out = v_str(j);
    return true;
}

/* s's bytes [off, off + n), with their taint. */
static bool sub_str(R *r, const jstr *s, size_t off, size_t n, bool safe, value *out) {
    jstr *j = str_sub(r, s, off, n, safe);
    if (!j) return false;
    *out = v_str(j);
    return true;
}

static bool is_cased(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_SWAP };

static bool str_case(R *r, const jstr *s, int mode, value *out) {
    buf b = {0};
    bool prev_cased = false, first = true;
    if (!step(r, s->len / 16)) return false;
    for (size_t i = 0; i < s->len;) {
        int32_t c, o;
        int k = u8_dec(s->s + i, s->len - i, &c);
        bool lowering, uppering;
        switch (mode) {
        case CASE_UPPER: lowering = false, uppering = true; break;
        case CASE_LOWER: lowering = true, uppering = false; break;
        case CASE_TITLE: lowering = prev_cased, uppering = !prev_cased; break;
        case CASE_CAPITALIZE: lowering = !first, uppering = first; break;
        default: {
            utf8proc_category_t cat = utf8proc_category(c);
            lowering = cat == UTF8PROC_CATEGORY_LU;
            uppering = cat == UTF8PROC_CATEGORY_LL;
        }
        }
        bool title = mode == CASE_TITLE || mode == CASE_CAPITALIZE;
        o = lowering ? utf8proc_tolower(c) : uppering ? (title ? utf8proc_totitle(c) : utf8proc_toupper(c)) : c;
        /* SpecialCasing.txt: the mappings to several characters that Python applies */
        const char *full = NULL;
        if (uppering) {
            switch (c) {
            case 0xDF: full = title ? "Ss" : "SS"; break;
            case 0xFB00: full = title ? "Ff" : "FF"; break;
            case 0xFB01: full = title ? "Fi" : "FI"; break;
            case 0xFB02: full = title ? "Fl" : "FL"; break;
            case 0xFB03: full = title ? "Ffi" : "FFI"; break;
            case 0xFB04: full = title ? "Ffl" : "FFL"; break;
            case 0xFB05:
            case 0xFB06: full = title ? "St" : "ST"; break;
            case 0x149: full = "\xCA\xBCN"; break;
            default: break;
            }
        } else if (lowering && c == 0x130) {
            full = "i\xCC\x87";
        }
        prev_cased = is_cased(c);
        first = false;
        char enc[4];
        if (!(full ? buf_puts(r, &b, full) : buf_put(r, &b, enc, (size_t)u8_enc(o, enc)))) {
            buf_free(&b);
            return false;
        }
        i += (size_t)k;
    }
    jstr *res = buf_finish(r, &b, s->safe);
    if (!res) return false;
    str_taint_from(res, s);
    *out = v_str(res);
    return true;
}

static bool in_chars(const jstr *chars, int32_t c) {
    for (size_t i = 0; i < chars->len;) {
        int32_t d;
        i += (size_t)u8_dec(chars->s + i, chars->len - i, &d);
        if (d == c) return true;
    }
    return false;
}

/* strip: which 1 left, 2 right, 3 both; chars NULL: whitespace. */
static bool str_strip(R *r, const jstr *s, const jstr *chars, int which, value *out) {
    size_t a = 0, b = s->len;
    if (which & 1)
        while (a < b) {
            int32_t c;
            int k = u8_dec(s->s + a, b - a, &c);
            if (chars ? !in_chars(chars, c) : !py_space(c)) break;
            a += (size_t)k;
        }
    if (which & 2)
        while (b > a) {
            size_t j = b - 1;
            while (j > a && ((unsigned char)s->s[j] & 0xC0) == 0x80) j--;
            int32_t c;
            u8_dec(s->s + j, b - j, &c);
            if (chars ? !in_chars(chars, c) : !py_space(c)) break;
            b = j;
        }
    if (!step(r, s->len / 64)) return false;
    if (a == 0 && b == s->len) {
        *out = v_str(s);
        return true;
    }
    return sub_str(r, s, a, b - a, s->safe, out);
}

static bool list_push(R *r, value **v, size_t *n, size_t *cap, value x) {
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        value *nv = ralloc(r, nc * sizeof *nv);
        if (!nv) return false;
        if (*n) memcpy(nv, *v, *n * sizeof *nv);
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = x;
    return step(r, 1);
}

static value list_value(R *r, value *v, size_t n, int flag) {
    jlist *l = ralloc(r, sizeof *l);
    if (!l) return V_UNDEF;
    l->err = NULL;
    l->n = n;
    l->v = v;
    return v_list(l, flag);
}

static bool str_split(R *r, const jstr *s, const jstr *sep, int64_t maxsplit, bool from_right,
                      value *out) {
    value *items = NULL;
    size_t n = 0, cap = 0;
    value piece;
    if (sep && sep->len == 0) return FAIL(r, "empty separator");
    if (!from_right) {
        size_t i = 0;
        if (!sep) {
            for (;;) {
                while (i < s->len && space_at(s->s, s->len, i)) i += (size_t)space_at(s->s, s->len, i);
                if (i >= s->len) break;
                if (maxsplit >= 0 && (int64_t)n >= maxsplit) {
                    /* Python keeps the remainder's trailing whitespace */
                    if (!sub_str(r, s, i, s->len - i, s->safe, &piece)) return false;
                    if (!list_push(r, &items, &n, &cap, piece)) return false;
                    break;
                }
                size_t j = i;
                while (j < s->len && !space_at(s->s, s->len, j)) {
                    int32_t c;
                    j += (size_t)u8_dec(s->s + j, s->len - j, &c);
                }
                if (!sub_str(r, s, i, j - i, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
                    return false;
                i = j;
            }
        } else {
            for (;;) {
                const char *hit = (maxsplit >= 0 && (int64_t)n >= maxsplit)
                                      ? NULL
                                      : memmem(s->s + i, s->len - i, sep->s, sep->len);
                size_t e = hit ? (size_t)(hit - s->s) : s->len;
                if (!sub_str(r, s, i, e - i, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
                    return false;
                if (!hit) break;
                i = e + sep->len;
            }
        }
        *out = list_value(r, items, n, L_LIST);
        return out->t == T_LIST;
    }
    /* rsplit: collect from the right, then reverse */
    size_t e = s->len;
    if (!sep) {
        for (;;) {
            while (e > 0) {
                size_t j = e - 1;
                while (j > 0 && ((unsigned char)s->s[j] & 0xC0) == 0x80) j--;
                if (!space_at(s->s, s->len, j)) break;
                e = j;
            }
            if (e == 0) break;
            if (maxsplit >= 0 && (int64_t)n >= maxsplit) {
                if (!sub_str(r, s, 0, e, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
                    return false;
                break;
            }
            size_t b = e;
            while (b > 0) {
                size_t j = b - 1;
                while (j > 0 && ((unsigned char)s->s[j] & 0xC0) == 0x80) j--;
                if (space_at(s->s, s->len, j)) break;
                b = j;
            }
            if (!sub_str(r, s, b, e - b, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
                return false;
            e = b;
        }
    } else {
        for (;;) {
            const char *hit = NULL;
            if (!(maxsplit >= 0 && (int64_t)n >= maxsplit) && e >= sep->len)
                for (size_t j = e - sep->len + 1; j-- > 0;)
                    if (memcmp(s->s + j, sep->s, sep->len) == 0) {
                        hit = s->s + j;
                        break;
                    }
            size_t b = hit ? (size_t)(hit - s->s) + sep->len : 0;
            if (!sub_str(r, s, b, e - b, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
                return false;
            if (!hit) break;
            e = (size_t)(hit - s->s);
            if (!step(r, e / 64)) return false;
        }
    }
    for (size_t i = 0; i < n / 2; i++) {
        value t = items[i];
        items[i] = items[n - 1 - i];
        items[n - 1 - i] = t;
    }
    *out = list_value(r, items, n, L_LIST);
    return out->t == T_LIST;
}

static bool str_replace(R *r, const jstr *s, const jstr *old, const jstr *new, int64_t count,
                        bool safe, value *out) {
    buf b = {0};
    int64_t done = 0;
    if (!step(r, s->len / 64 + 1)) return false;
    if (old->len == 0) { /* insert between every character */
        for (size_t i = 0; i <= s->len;) {
            if (count < 0 || done < count) {
                size_t at = b.n;
                if (!buf_put_str(r, &b, new, 0, new->len) || (s->taint && !buf_taint(r, &b, at))) goto fail;
                done++;
            }
            if (i == s->len) break;
            int32_t c;
            int k = u8_dec(s->s + i, s->len - i, &c);
            if (!buf_put_str(r, &b, s, i, (size_t)k)) goto fail;
            i += (size_t)k;
        }
    } else {
        size_t i = 0;
        for (;;) {
            const char *hit = (count >= 0 && done >= count) ? NULL : memmem(s->s + i, s->len - i, old->s, old->len);
            if (!hit) break;
            size_t at = (size_t)(hit - s->s);
            if (!buf_put_str(r, &b, s, i, at - i)) goto fail;
            size_t from = b.n; /* what goes into a tainted string is tainted */
            if (!buf_put_str(r, &b, new, 0, new->len) || (s->taint && !buf_taint(r, &b, from))) goto fail;
            i = at + old->len;
            done++;
        }
        if (!buf_put_str(r, &b, s, i, s->len - i)) goto fail;
    }
    {
        jstr *res = buf_finish(r, &b, safe);
        if (!res) return false;
        str_taint_from(res, old); /* where the cuts fall is the old string's choice */
        *out = v_str(res);
        return true;
    }
fail:
    buf_free(&b);
    return false;
}

static bool str_join(R *r, const jstr *sep, const value *items, size_t n, bool strict, value *out) {
    buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (strict && items[i].t != T_STR) {
            buf_free(&b);
            return FAIL(r, "sequence item %zu: expected str instance, %s found", i, tname(items[i]));
        }
        if ((i && !buf_put_str(r, &b, sep, 0, sep->len)) || !str_value(r, &b, items[i], 0)) {
            buf_free(&b);
            return false;
        }
    }
    jstr *res = buf_finish(r, &b, false);
    if (!res) return false;
    *out = v_str(res);
    return true;
}

/* str.splitlines(keepends) */
static bool str_splitlines(R *r, const jstr *s, bool keepends, value *out) {
    value *items = NULL, piece;
    size_t n = 0, cap = 0, i = 0, start = 0;
    while (i < s->len) {
        int k = linebreak_at(s->s, s->len, i);
        if (k) {
            if (!sub_str(r, s, start, (keepends ? i + (size_t)k : i) - start, s->safe, &piece) ||
                !list_push(r, &items, &n, &cap, piece))
                return false;
            i += (size_t)k;
            start = i;
        } else {
            i++;
        }
    }
    if (start < s->len)
        if (!sub_str(r, s, start, s->len - start, s->safe, &piece) || !list_push(r, &items, &n, &cap, piece))
            return false;
    *out = list_value(r, items, n, L_LIST);
    return out->t == T_LIST;
}

static bool str_is(const jstr *s, int id) {
    bool any = false, cased_any = false;
    if (s->len == 0) return false;
    for (size_t i = 0; i < s->len;) {
        int32_t c;
        i += (size_t)u8_dec(s->s + i, s->len - i, &c);
        utf8proc_category_t k = utf8proc_category(c);
        bool letter = k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
        bool digit = k == UTF8PROC_CATEGORY_ND;
        switch (id) {
        case M_ISDIGIT: if (!digit) return false; break;
        case M_ISALPHA: if (!letter) return false; break;
        case M_ISALNUM: if (!letter && !digit && k != UTF8PROC_CATEGORY_NL && k != UTF8PROC_CATEGORY_NO) return false; break;
        case M_ISSPACE: if (!py_space(c)) return false; break;
        case M_ISUPPER:
            if (k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT) return false;
            cased_any |= k == UTF8PROC_CATEGORY_LU;
            break;
        case M_ISLOWER:
            if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT) return false;
            cased_any |= k == UTF8PROC_CATEGORY_LL;
            break;
        default: break;
        }
        any = true;
    }
    if (id == M_ISUPPER || id == M_ISLOWER) return cased_any;
    return any;
}

/* '%s' % args, and the format filter. */
static bool percent_format(R *r, const jstr *fmt, value args, value *out) {
    buf b = {0};
    const value *items = &args;
    size_t n = 1, used = 0;
    if (is_seq(args) && args.flag == L_TUPLE) {
        items = args.u.l->v;
        n = args.u.l->n;
    }
    for (size_t i = 0; i < fmt->len; i++) {
        char c = fmt->s[i];
        if (c != '%') {
            if (!buf_putc(r, &b, c)) goto fail;
            continue;
        }
        if (++i >= fmt->len) {
            FAIL(r, "incomplete format");
            goto fail;
        }
        value arg;
        if (fmt->s[i] == '%') {
            if (!buf_putc(r, &b, '%')) goto fail;
            continue;
        }
        if (fmt->s[i] == '(') {
            size_t e = i + 1;
            while (e < fmt->len && fmt->s[e] != ')') e++;
            if (e >= fmt->len || args.t != T_DICT) {
                FAIL(r, "format requires a mapping");
                goto fail;
            }
            value key;
            size_t at;
            if (!mk_str(r, fmt->s + i + 1, e - i - 1, false, &key)) goto fail;
            if (!dict_find(args.u.d, key, &at)) {
                FAIL(r, "KeyError: '%s'", key.u.s->s);
                goto fail;
            }
            arg = args.u.d->v[at];
            i = e + 1;
        } else {
            if (used >= n) {
                FAIL(r, "not enough arguments for format string");
                goto fail;
            }
            arg = items[used++];
        }
        char spec[32];
        size_t sl = 0;
        spec[sl++] = '%';
        while (i < fmt->len && strchr("-+ 0#", fmt->s[i]) && sl < 8) spec[sl++] = fmt->s[i++];
        while (i < fmt->len && is_digit(fmt->s[i]) && sl < 16) spec[sl++] = fmt->s[i++];
        if (i < fmt->len && fmt->s[i] == '.') {
            spec[sl++] = fmt->s[i++];
            while (i < fmt->len && is_digit(fmt->s[i]) && sl < 24) spec[sl++] = fmt->s[i++];
        }
        if (i >= fmt->len) {
            FAIL(r, "incomplete format");
            goto fail;
        }
        char conv = fmt->s[i], tmp[512];
        if (conv == 's' || conv == 'r' || conv == 'a') {
            bool ok = conv == 's' ? str_value(r, &b, arg, 0) : repr_value(r, &b, arg, 0);
            if (!ok) goto fail;
        } else if (strchr("diouxXeEfFgG", conv)) {
            if (!is_num(arg)) {
                FAIL(r, "%%%c format: a real number is required, not %s", conv, tname(arg));
                goto fail;
            }
            spec[sl] = '\0';
            if (strchr("diouxX", conv)) {
                char f2[40];
                snprintf(f2, sizeof f2, "%sll%c", spec, conv == 'i' || conv == 'u' ? 'd' : conv);
                int64_t iv = arg.t == T_FLOAT ? (int64_t)arg.u.f : as_int(arg);
                snprintf(tmp, sizeof tmp, f2, (long long)iv);
            } else {
                char f2[40];
                snprintf(f2, sizeof f2, "%s%c", spec, conv);
                snprintf(tmp, sizeof tmp, f2, as_f(arg));
            }
            if (!buf_puts(r, &b, tmp)) goto fail;
        } else {
            FAIL(r, "unsupported format character '%c'", conv);
            goto fail;
        }
    }
    /* Python: leftover arguments are an error unless the argument counts as a mapping
       (anything with __getitem__ but a tuple or a str: dict, list, Undefined) */
    bool mapping = args.t == T_DICT || args.t == T_UNDEF || (args.t == T_LIST && args.flag == L_LIST);
    if (!mapping && used < n) {
        FAIL(r, "not all arguments converted during string formatting");
        goto fail;
    }
    {
        jstr *res = buf_finish(r, &b, false);
        if (!res) return false;
        str_taint_from(res, fmt);
        *out = v_str(res);
        return true;
    }
fail:
    buf_free(&b);
    return false;
}

/* ------------------------------------------------------------------ filters */

static value str_key(R *r, value v, bool case_sensitive) {
    value o = v;
    if (!case_sensitive && v.t == T_STR) str_case(r, v.u.s, CASE_LOWER, &o);
    return o;
}

/* jinja2's make_attrgetter: "a.b.0" looked up item by item. */
static bool attr_path_d(R *r, value item, value attr, const value *def, value *out);
static bool attr_path(R *r, value item, value attr, value *out) { return attr_path_d(r, item, attr, NULL, out); }

/* With a default, it replaces an undefined result after every part, as make_attrgetter does. */
static bool attr_path_d(R *r, value item, value attr, const value *def, value *out) {
    if (attr.t != T_STR) {
        if (!get_item(r, item, attr, out)) return false;
        if (def && out->t == T_UNDEF) *out = *def;
        return true;
    }
    const jstr *s = attr.u.s;
    size_t i = 0;
    value cur_v = item;
    for (;;) {
        size_t e = i;
        while (e < s->len && s->s[e] != '.') e++;
        value part;
        bool digits = e > i;
        for (size_t k = i; k < e; k++) digits &= is_digit(s->s[k]);
        if (digits && e - i < 18) {
            part = v_int(strtoll(s->s + i, NULL, 10));
        } else if (!mk_str(r, s->s + i, e - i, false, &part)) {
            return false;
        }
        if (!get_item(r, cur_v, part, &cur_v)) return false;
        if (def && cur_v.t == T_UNDEF) cur_v = *def;
        if (e >= s->len) break;
        i = e + 1;
    }
    *out = cur_v;
    return true;
}

/* Stable merge sort of values by key (keys precomputed), with Python ordering. */
static bool sort_values(R *r, value *v, value *keys, size_t n, bool reverse) {
    if (n < 2) return true;
    value *tv = ralloc(r, n * sizeof *tv), *tk = ralloc(r, n * sizeof *tk);
    if (!tv || !tk) return false;
    for (size_t w = 1; w < n; w *= 2) {
        if (!step(r, n)) return false;
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int o;
                if (!v_order(r, keys[j], keys[i], &o, 0)) return false;
                bool take_right = reverse ? o > 0 : o < 0;
                if (take_right) {
                    tv[k] = v[j];
                    tk[k++] = keys[j++];
                } else {
                    tv[k] = v[i];
                    tk[k++] = keys[i++];
                }
            }
            while (i < mid) tv[k] = v[i], tk[k++] = keys[i++];
            while (j < hi) tv[k] = v[j], tk[k++] = keys[j++];
        }
        memcpy(v, tv, n * sizeof *v);
        memcpy(keys, tk, n * sizeof *keys);
    }
    return true;
}

static bool seq_copy(R *r, value seq, value **items, size_t *n) {
    const value *src;
    if (!iterate(r, seq, &src, n)) return false;
    *items = *n ? ralloc(r, *n * sizeof(value)) : NULL;
    if (*n && !*items) return false;
    if (*n) memcpy(*items, src, *n * sizeof(value));
    return true;
}

static bool v_len(R *r, value v, int64_t *n) {
    switch (v.t) {
    case T_UNDEF: *n = 0; return true;
    case T_STR: *n = (int64_t)u8_count(v.u.s->s, v.u.s->len); return true;
    case T_LIST:
        if (v.flag == L_GEN) break;
        *n = (int64_t)v.u.l->n;
        return true;
    case T_DICT: *n = (int64_t)v.u.d->n; return true;
    case T_NS: break;
    case T_LOOP: *n = v.u.loop->n; return true;
    default: break;
    }
    return FAIL(r, "object of type '%s' has no len()", tname(v));
}

/* Python int(str): optional sign, digits with single underscores, surrounding whitespace. */
static bool parse_pyint(const jstr *s, int base, int64_t *out) {
    size_t i = skip_space(s->s, s->len, 0), e = rstrip_len(s->s, s->len);
    if (i >= e) return false;
    bool neg = false;
    if (s->s[i] == '+' || s->s[i] == '-') neg = s->s[i++] == '-';
    if (base == 16 && e - i > 2 && s->s[i] == '0' && (s->s[i + 1] | 0x20) == 'x') i += 2;
    else if (base == 8 && e - i > 2 && s->s[i] == '0' && (s->s[i + 1] | 0x20) == 'o') i += 2;
    else if (base == 2 && e - i > 2 && s->s[i] == '0' && (s->s[i + 1] | 0x20) == 'b') i += 2;
    if (i >= e) return false;
    uint64_t v = 0;
    bool last_us = true;
    for (size_t k = i; k < e; k++) {
        char c = s->s[k];
        if (c == '_') {
            if (last_us) return false;
            last_us = true;
            continue;
        }
        int d = is_digit(c) ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'z' ? (c | 0x20) - 'a' + 10 : 99;
        if (d >= base) return false;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return false;
        v = v * (uint64_t)base + (uint64_t)d;
        last_us = false;
    }
    if (last_us) return false;
    if (v > (uint64_t)INT64_MAX + neg) return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static bool parse_pyfloat(const jstr *s, double *out) {
    size_t i = skip_space(s->s, s->len, 0), e = rstrip_len(s->s, s->len);
    if (i >= e || e - i > 300) return false;
    char tmp[320];
    size_t k = 0;
    for (size_t j = i; j < e; j++) {
        char c = s->s[j];
        if (c == '_') {
            if (j == i || j + 1 >= e || !is_digit(s->s[j - 1]) || !is_digit(s->s[j + 1])) return false;
            continue;
        }
        if (!(is_digit(c) || strchr("+-.eEinfatyINFATY", c))) return false;
        tmp[k++] = c;
    }
    tmp[k] = '\0';
    char *end;
    /* Python accepts inf, infinity, nan (any case); strtod also takes hex, which Python does not */
    if (strchr(tmp, 'x') || strchr(tmp, 'X')) return false;
    *out = strtod(tmp, &end);
    return end == tmp + k && k > 0;
}

static bool select_items(R *r, value seq, args_t *a, bool by_attr, bool keep, value *out);
static bool filter_map(R *r, value seq, args_t *a, value *out);

static bool apply_filter_now(R *r, int id, const jstr *name, value v, args_t *a, value *out);

/* jinja2's map, select, reject, selectattr, rejectattr, unique, items and batch
 * are generators: their errors surface only when something iterates them. */
static bool apply_filter(R *r, int id, const jstr *name, value v, args_t *a, value *out) {
    bool lazy = id == F_MAP || id == F_SELECT || id == F_REJECT || id == F_SELECTATTR ||
                id == F_REJECTATTR || id == F_UNIQUE || id == F_ITEMS || id == F_BATCH;
    r->bind_failed = false;
    if (apply_filter_now(r, id, name, v, a, out)) return true;
    /* a generator function still checks its arguments when called */
    if (!lazy || r->st != SPUD_ERR_INVALID || r->bind_failed) return false;
    char *msg = ralloc(r, strlen(r->msg) + 1);
    if (!msg) return false;
    strcpy(msg, r->msg);
    r->failed = false;
    *out = list_value(r, NULL, 0, L_GEN);
    if (out->t != T_LIST) return false;
    out->u.l->err = msg;
    return true;
}

static bool apply_filter_now(R *r, int id, const jstr *name, value v, args_t *a, value *out) {
    value s[6];
    const jstr *str;
#define BIND(fname, ...)                                                                           \
    do {                                                                                           \
        static const char *const params_[] = {__VA_ARGS__};                                        \
        if (!bind(r, fname, params_, sizeof params_ / sizeof params_[0], a, 0, s)) return false;   \
    } while (0)
#define NOARGS(fname)                                                                              \
    do {                                                                                           \
        if (a->npos || a->nkw) return FAIL(r, "%s() takes no arguments", fname);                   \
    } while (0)
    switch (id) {
    case F_ABS:
        NOARGS("abs");
        if (v.t == T_UNDEF) return undef_error(r, v);
        if (v.t == T_FLOAT) *out = v_float(fabs(v.u.f));
        else if (is_num(v)) {
            if (as_int(v) == INT64_MIN) return FAIL(r, "integer overflow");
            *out = v_int(as_int(v) < 0 ? -as_int(v) : as_int(v));
        } else return FAIL(r, "bad operand type for abs(): '%s'", tname(v));
        return true;
    case F_ATTR:
        BIND("attr", "name");
        if (!given(s[0])) return FAIL(r, "attr() missing argument 'name'");
        if (s[0].t != T_STR) return FAIL(r, "attribute name must be string");
        /* Python getattr only: methods, namespace and loop attributes, never dict items */
        if (v.t == T_DICT && method_of(v, s[0].u.s) == 0) {
            *out = undef_attr(v, s[0].u.s);
            return true;
        }
        return get_attr(r, v, s[0].u.s, out);
    case F_TITLE: {
        /* jinja2's do_title, not str.title: words begin after runs of [-\s({[<],
           each piece is piece[0].upper() + piece[1:].lower() */
        NOARGS("title");
        if (!soft_str(r, v, &str)) return false;
        buf b = {0};
        size_t i = 0;
        while (i < str->len) {
            size_t j = i;
            bool sep_run = false;
            for (;;) { /* a run of separators is its own piece */
                if (j >= str->len) break;
                bool sep = strchr("-({[<", str->s[j]) != NULL || space_at(str->s, str->len, j);
                if (j == i) sep_run = sep;
                else if (sep != sep_run) break;
                int32_t c;
                j += (size_t)u8_dec(str->s + j, str->len - j, &c);
            }
            value a, bb;
            jstr *head, *tail;
            int32_t c0;
            size_t k0 = (size_t)u8_dec(str->s + i, str->len - i, &c0);
            if (!(head = str_sub(r, str, i, k0, false)) || !(tail = str_sub(r, str, i + k0, j - i - k0, false)) ||
                !str_case(r, head, CASE_UPPER, &a) || !str_case(r, tail, CASE_LOWER, &bb) ||
                !buf_put_str(r, &b, a.u.s, 0, a.u.s->len) || !buf_put_str(r, &b, bb.u.s, 0, bb.u.s->len))
                goto title_fail;
            i = j;
        }
        {
            jstr *res = buf_finish(r, &b, str->safe);
            if (!res) return false;
            *out = v_str(res);
            return true;
        }
    title_fail:
        buf_free(&b);
        return false;
    }
    case F_CAPITALIZE:
    case F_LOWER:
    case F_UPPER:
        NOARGS(name->s);
        if (!soft_str(r, v, &str)) return false;
        return str_case(r, str, id == F_CAPITALIZE ? CASE_CAPITALIZE : id == F_LOWER ? CASE_LOWER : CASE_UPPER, out);
    case F_COUNT:
    case F_LENGTH: {
        NOARGS(name->s);
        int64_t n = 0;
        if (!v_len(r, v, &n)) return false;
        *out = v_int(n);
        return true;
    }
    case F_D:
    case F_DEFAULT:
        BIND("default", "default_value", "boolean");
        if (v.t == T_UNDEF || (given(s[1]) && truthy(s[1]) && !truthy(v))) {
            if (given(s[0])) *out = s[0];
            else return mk_str(r, "", 0, false, out);
        } else {
            *out = v;
        }
        return true;
    case F_DICTSORT: {
        BIND("dictsort", "case_sensitive", "by", "reverse");
        if (v.t != T_DICT) return FAIL(r, "dictsort needs a dict, not %s", tname(v));
        if (given(s[2]) && s[2].t != T_INT && s[2].t != T_BOOL) /* sorted(reverse=...) */
            return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[2]));
        bool cs = given(s[0]) && truthy(s[0]), rev = given(s[2]) && truthy(s[2]);
        int pos = 0;
        if (given(s[1])) {
            if (s[1].t == T_STR && str_eqc(s[1].u.s, "value")) pos = 1;
            else if (!(s[1].t == T_STR && str_eqc(s[1].u.s, "key")))
                return FAIL(r, "You can only sort by either \"key\" or \"value\"");
        }
        size_t n = v.u.d->n;
        value *items = n ? ralloc(r, n * sizeof *items) : NULL, *keys = n ? ralloc(r, n * sizeof *keys) : NULL;
        if (n && (!items || !keys)) return false;
        for (size_t i = 0; i < n; i++) {
            jlist *t = list_new(r, 2);
            if (!t) return false;
            t->v[0] = v.u.d->k[i];
            t->v[1] = v.u.d->v[i];
            items[i] = v_list(t, L_TUPLE);
            keys[i] = str_key(r, t->v[pos], cs);
        }
        if (!sort_values(r, items, keys, n, rev)) return false;
        *out = list_value(r, items, n, L_LIST);
        return out->t == T_LIST;
    }
    case F_E:
    case F_ESCAPE:
    case F_FORCEESCAPE:
        NOARGS(name->s);
        if (!soft_str(r, v, &str)) return false;
        if (id == F_FORCEESCAPE && str->safe) {
            jstr *c = str_sub(r, str, 0, str->len, false);
            if (!c) return false;
            str = c;
        }
        if (!html_escape(r, str, &str)) return false;
        *out = v_str(str);
        return true;
    case F_FIRST:
    case F_LAST: {
        NOARGS(name->s);
        const value *items;
        size_t n;
        if (v.t == T_LIST && v.flag == L_GEN && id == F_LAST)
            return FAIL(r, "'generator' object is not reversible");
        if (!iterate(r, v, &items, &n)) return false;
        if (n == 0) *out = undef_hint(id == F_FIRST ? "No first item, sequence was empty." : "No last item, sequence was empty.");
        else *out = items[id == F_FIRST ? 0 : n - 1];
        return true;
    }
    case F_FLOAT:
        BIND("float", "default");
        if (v.t == T_UNDEF) return undef_error(r, v);
        if (is_num(v)) *out = v_float(as_f(v));
        else if (v.t == T_STR && parse_pyfloat(v.u.s, &out->u.f)) out->t = T_FLOAT;
        else *out = given(s[0]) ? s[0] : v_float(0.0);
        return true;
    case F_FORMAT: {
        if (!soft_str(r, v, &str)) return false;
        if (a->nkw && a->npos) return FAIL(r, "can't handle positional and keyword arguments at the same time");
        value args;
        if (a->nkw) {
            jdict *d = dict_new(r);
            if (!d) return false;
            for (size_t i = 0; i < a->nkw; i++)
                if (!dict_set(r, d, v_str(a->kwn[i]), a->kwv[i])) return false;
            args = (value){.t = T_DICT, .u.d = d};
        } else {
            args = list_value(r, a->pos, a->npos, L_TUPLE);
            if (args.t != T_LIST) return false;
        }
        return percent_format(r, str, args, out);
    }
    case F_INDENT: {
        BIND("indent", "width", "first", "blank");
        const jstr *ind;
        /* jinja2's do_indent does s += "\n" on the value itself */
        if (v.t == T_UNDEF) return undef_error(r, v);
        if (v.t == T_LIST && v.flag == L_LIST) return FAIL(r, "'list' object has no attribute 'splitlines'");
        if (v.t != T_STR) return FAIL(r, "unsupported operand type(s) for +=: '%s' and 'str'", tname(v));
        str = v.u.s;
        if (!given(s[0])) {
            JSTR_LIT(four, "    ");
            ind = four;
        } else if (s[0].t == T_STR) {
            ind = s[0].u.s;
        } else if (s[0].t == T_INT || s[0].t == T_BOOL) {
            int64_t w = as_int(s[0]);
            if (w < 0) w = 0;
            if ((uint64_t)w > r->max_output) return fail(r, SPUD_ERR_RANGE, "indent too wide");
            jstr *sp = ralloc(r, sizeof *sp + (size_t)w + 1);
            if (!sp) return false;
            sp->len = (size_t)w;
            sp->safe = false;
            sp->taint = TAINT_NONE;
            memset(sp->s, ' ', (size_t)w);
            sp->s[w] = '\0';
            ind = sp;
        } else {
            return FAIL(r, "can't multiply sequence by non-int of type '%s'", tname(s[0]));
        }
        bool first = given(s[1]) && truthy(s[1]), blank = given(s[2]) && truthy(s[2]);
        value lines;
        JSTR_LIT(nl, "\n");
        value withnl;
        if (!str_concat(r, str, nl, str->safe, &withnl)) return false;
        if (!str_splitlines(r, withnl.u.s, false, &lines)) return false;
        buf b = {0};
        bool ok = true;
        if (first) ok = buf_put_str(r, &b, ind, 0, ind->len);
        for (size_t i = 0; ok && i < lines.u.l->n; i++) {
            const jstr *ln = lines.u.l->v[i].u.s;
            if (i > 0) {
                ok = buf_putc(r, &b, '\n');
                if (ok && (blank || ln->len)) ok = buf_put_str(r, &b, ind, 0, ind->len);
            }
            if (ok) ok = buf_put_str(r, &b, ln, 0, ln->len);
        }
        if (!ok) {
            buf_free(&b);
            return false;
        }
        jstr *res = buf_finish(r, &b, str->safe);
        if (!res) return false;
        *out = v_str(res);
        return true;
    }
    case F_INT: {
        BIND("int", "default", "base");
        int64_t base = given(s[1]) ? (s[1].t == T_INT ? s[1].u.i : -1) : 10;
        value def = given(s[0]) ? s[0] : v_int(0);
        if (v.t == T_UNDEF) return undef_error(r, v);
        if (v.t == T_STR) {
            int64_t iv;
            double fv;
            if (base >= 2 && base <= 36 && parse_pyint(v.u.s, (int)base, &iv)) *out = v_int(iv);
            else if (parse_pyfloat(v.u.s, &fv) && isfinite(fv) && fabs(fv) < 9.2e18) *out = v_int((int64_t)fv);
            else *out = def;
        } else if (v.t == T_FLOAT) {
            *out = isfinite(v.u.f) && fabs(v.u.f) < 9.2e18 ? v_int((int64_t)v.u.f) : def;
        } else if (v.t == T_INT || v.t == T_BOOL) {
            *out = v_int(as_int(v));
        } else {
            *out = def;
        }
        return true;
    }
    case F_ITEMS: {
        NOARGS("items");
        if (v.t == T_UNDEF) {
            *out = list_value(r, NULL, 0, L_GEN);
            return out->t == T_LIST;
        }
        if (v.t != T_DICT) return FAIL(r, "Can only get item pairs from a mapping.");
        size_t n = v.u.d->n;
        value *items = n ? ralloc(r, n * sizeof *items) : NULL;
        if (n && !items) return false;
        for (size_t i = 0; i < n; i++) {
            jlist *t = list_new(r, 2);
            if (!t) return false;
            t->v[0] = v.u.d->k[i];
            t->v[1] = v.u.d->v[i];
            items[i] = v_list(t, L_TUPLE);
        }
        *out = list_value(r, items, n, L_GEN);
        return out->t == T_LIST;
    }
    case F_JOIN: {
        BIND("join", "d", "attribute");
        const value *items;
        size_t n;
        if (!iterate(r, v, &items, &n)) return false;
        if (given(s[1]) && s[1].t != T_NONE) {
            value *mapped = n ? ralloc(r, n * sizeof *mapped) : NULL;
            if (n && !mapped) return false;
            for (size_t i = 0; i < n; i++)
                if (!attr_path(r, items[i], s[1], &mapped[i])) return false;
            items = mapped;
        }
        const jstr *sep;
        JSTR_LIT(empty, "");
        if (!given(s[0])) sep = empty;
        else if (!soft_str(r, s[0], &sep)) return false;
        return str_join(r, sep, items, n, false, out);
    }
    case F_LIST: {
        NOARGS("list");
        value *items;
        size_t n;
        if (!seq_copy(r, v, &items, &n)) return false;
        *out = list_value(r, items, n, L_LIST);
        return out->t == T_LIST;
    }
    case F_MAP: return filter_map(r, v, a, out);
    case F_MAX:
    case F_MIN: {
        BIND(name->s, "case_sensitive", "attribute");
        const value *items;
        size_t n;
        if (!iterate(r, v, &items, &n)) return false;
        if (n == 0) {
            *out = undef_hint("No aggregated item, sequence was empty.");
            return true;
        }
        bool cs = given(s[0]) && truthy(s[0]);
        size_t best = 0;
        value bk = V_UNDEF;
        for (size_t i = 0; i < n; i++) {
            value k = items[i];
            if (given(s[1]) && s[1].t != T_NONE && !attr_path(r, items[i], s[1], &k)) return false;
            k = str_key(r, k, cs);
            if (i == 0) {
                bk = k;
                continue;
            }
            int o;
            if (!v_order(r, k, bk, &o, 0)) return false;
            if (id == F_MAX ? o == 1 : o == -1) {
                best = i;
                bk = k;
            }
        }
        *out = items[best];
        return true;
    }
    case F_REJECT:
    case F_SELECT: return select_items(r, v, a, false, id == F_SELECT, out);
    case F_REJECTATTR:
    case F_SELECTATTR: return select_items(r, v, a, true, id == F_SELECTATTR, out);
    case F_REPLACE: {
        BIND("replace", "old", "new", "count");
        const jstr *o, *nw;
        if (!given(s[0]) || !given(s[1])) return FAIL(r, "replace() missing arguments");
        if (!soft_str(r, v, &str) || !soft_str(r, s[0], &o) || !soft_str(r, s[1], &nw)) return false;
        int64_t cnt = -1;
        if (given(s[2]) && s[2].t != T_NONE) {
            if (s[2].t != T_INT && s[2].t != T_BOOL) return FAIL(r, "replace() count must be an integer");
            cnt = as_int(s[2]);
        }
        return str_replace(r, str, o, nw, cnt, false, out);
    }
    case F_REVERSE: {
        NOARGS("reverse");
        if (v.t == T_STR) {
            return make_slice(r, v, V_NONE, V_NONE, v_int(-1), out);
        }
        value *items;
        size_t n;
        if (!seq_copy(r, v, &items, &n)) return false;
        for (size_t i = 0; i < n / 2; i++) {
            value t = items[i];
            items[i] = items[n - 1 - i];
            items[n - 1 - i] = t;
        }
        /* reversed() of a sequence; a generator is made a list first (jinja2 does so too) */
        *out = list_value(r, items, n, v.t == T_LIST && v.flag == L_GEN ? L_LIST : L_GEN);
        return out->t == T_LIST;
    }
    case F_ROUND: {
        BIND("round", "precision", "method");
        if (given(s[0]) && s[0].t != T_INT && s[0].t != T_BOOL)
            return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[0]));
        int64_t prec = given(s[0]) ? as_int(s[0]) : 0;
        const char *method = "common";
        if (given(s[1])) {
            if (s[1].t != T_STR) return FAIL(r, "method must be common, ceil or floor");
            method = s[1].u.s->s;
        }
        if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
            return FAIL(r, "method must be common, ceil or floor");
        if (!is_num(v)) return FAIL(r, "type %s doesn't define __round__ method", tname(v));
        if (prec > 300) prec = 300;
        if (prec < -300) prec = -300;
        double f = as_f(v), m = pow(10.0, (double)prec), x = f * m;
        if (!strcmp(method, "common")) {
            if (v.t != T_FLOAT) { /* round(int, n) stays an int */
                *out = v_int(as_int(v));
                return true;
            }
            x = nearbyint(x);
        } else {
            x = method[0] == 'c' ? ceil(x) : floor(x);
        }
        *out = v_float(isfinite(x) ? x / m : f);
        return true;
    }
    case F_SAFE: {
        NOARGS("safe");
        if (!soft_str(r, v, &str)) return false;
        if (str->safe) {
            *out = v_str(str);
            return true;
        }
        return sub_str(r, str, 0, str->len, true, out);
    }
    case F_SORT: {
        BIND("sort", "reverse", "case_sensitive", "attribute");
        value *items, *keys;
        if (given(s[0]) && s[0].t != T_INT && s[0].t != T_BOOL) /* sorted(reverse=...) */
            return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[0]));
        size_t n;
        if (!seq_copy(r, v, &items, &n)) return false;
        keys = n ? ralloc(r, n * sizeof *keys) : NULL;
        if (n && !keys) return false;
        bool cs = given(s[1]) && truthy(s[1]);
        bool by_attr = given(s[2]) && s[2].t != T_NONE;
        value attrs = V_NONE; /* make_multi_attrgetter: "a,b" sorts by a, then b */
        if (by_attr && s[2].t == T_STR) {
            JSTR_LIT(comma, ",");
            if (!str_split(r, s[2].u.s, comma, -1, false, &attrs)) return false;
        } else if (by_attr) {
            jlist *one = list_new(r, 1);
            if (!one) return false;
            one->v[0] = s[2];
            attrs = v_list(one, L_LIST);
        }
        for (size_t i = 0; i < n; i++) {
            if (!by_attr) {
                keys[i] = str_key(r, items[i], cs);
                continue;
            }
            jlist *kl = list_new(r, attrs.u.l->n);
            if (!kl) return false;
            for (size_t j = 0; j < kl->n; j++) {
                value k;
                if (!attr_path(r, items[i], attrs.u.l->v[j], &k)) return false;
                kl->v[j] = str_key(r, k, cs);
            }
            keys[i] = v_list(kl, L_LIST);
        }
        if (!sort_values(r, items, keys, n, given(s[0]) && truthy(s[0]))) return false;
        *out = list_value(r, items, n, L_LIST);
        return out->t == T_LIST;
    }
    case F_STRING:
        NOARGS("string");
        if (!soft_str(r, v, &str)) return false;
        *out = v_str(str);
        return true;
    case F_SUM: {
        BIND("sum", "attribute", "start");
        const value *items;
        size_t n;
        if (!iterate(r, v, &items, &n)) return false;
        value acc = given(s[1]) ? s[1] : v_int(0);
        for (size_t i = 0; i < n; i++) {
            value x = items[i];
            if (given(s[0]) && s[0].t != T_NONE && !attr_path(r, items[i], s[0], &x)) return false;
            if (!binop(r, OP_ADD, acc, x, &acc)) return false;
        }
        *out = acc;
        return true;
    }
    case F_TOJSON: {
        BIND("tojson", "ensure_ascii", "indent", "separators", "sort_keys");
        json_fmt jf = {0};
        jf.ascii = given(s[0]) && truthy(s[0]);
        jf.sort_keys = given(s[3]) && truthy(s[3]);
        if (given(s[1]) && s[1].t != T_NONE) {
            if (s[1].t == T_STR) {
                jf.indent = s[1].u.s;
            } else if (s[1].t == T_INT || s[1].t == T_BOOL) {
                int64_t w = as_int(s[1]);
                if (w < 0) w = 0;
                if (w > 4096) return fail(r, SPUD_ERR_RANGE, "tojson indent too large");
                jstr *sp = ralloc(r, sizeof *sp + (size_t)w + 1);
                if (!sp) return false;
                sp->len = (size_t)w;
                sp->safe = false;
                sp->taint = TAINT_NONE;
                memset(sp->s, ' ', (size_t)w);
                sp->s[w] = '\0';
                jf.indent = sp;
            } else {
                return FAIL(r, "tojson indent must be an int or a string");
            }
        }
        jf.item_sep = jf.indent ? "," : ", ";
        jf.key_sep = ": ";
        if (given(s[2]) && s[2].t != T_NONE) {
            if (!is_seq(s[2]) || s[2].u.l->n != 2 || s[2].u.l->v[0].t != T_STR || s[2].u.l->v[1].t != T_STR)
                return FAIL(r, "tojson separators must be a pair of strings");
            jf.item_sep = s[2].u.l->v[0].u.s->s;
            jf.key_sep = s[2].u.l->v[1].u.s->s;
            jf.item_sep_len = s[2].u.l->v[0].u.s->len;
            jf.key_sep_len = s[2].u.l->v[1].u.s->len;
        } else {
            jf.item_sep_len = strlen(jf.item_sep);
            jf.key_sep_len = strlen(jf.key_sep);
        }
        buf b = {0};
        if (!json_value(r, &b, v, &jf, 0)) {
            buf_free(&b);
            return false;
        }
        jstr *res = buf_finish(r, &b, false);
        if (!res) return false;
        /* separators and indent strings from the input taint the whole text */
        if (jf.indent) str_taint_from(res, jf.indent);
        if (given(s[2]) && s[2].t != T_NONE) {
            str_taint_from(res, s[2].u.l->v[0].u.s);
            str_taint_from(res, s[2].u.l->v[1].u.s);
        }
        *out = v_str(res);
        return true;
    }
    case F_TRIM: {
        BIND("trim", "chars");
        const jstr *chars = NULL;
        if (!soft_str(r, v, &str)) return false;
        if (given(s[0]) && s[0].t != T_NONE) {
            if (s[0].t != T_STR) return FAIL(r, "strip arg must be None or str");
            chars = s[0].u.s;
        }
        return str_strip(r, str, chars, 3, out);
    }
    case F_UNIQUE: {
        BIND("unique", "case_sensitive", "attribute");
        const value *items;
        size_t n;
        if (!iterate(r, v, &items, &n)) return false;
        bool cs = given(s[0]) && truthy(s[0]);
        value *outv = n ? ralloc(r, n * sizeof *outv) : NULL, *seen = n ? ralloc(r, n * sizeof *seen) : NULL;
        if (n && (!outv || !seen)) return false;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            value key = items[i];
            if (given(s[1]) && s[1].t != T_NONE && !attr_path(r, items[i], s[1], &key)) return false;
            key = str_key(r, key, cs);
            if (!hashable(r, key) || !step(r, k / 8)) return false;
            bool dup = false;
            for (size_t j = 0; j < k && !dup; j++) dup = v_eq(seen[j], key, 0);
            if (!dup) {
                seen[k] = key;
                outv[k++] = items[i];
            }
        }
        *out = list_value(r, outv, k, L_GEN);
        return out->t == T_LIST;
    }
    case F_CENTER: {
        BIND("center", "width");
        if (!soft_str(r, v, &str)) return false;
        v = v_str(str);
        int64_t w = 80;
        if (given(s[0])) {
            if (s[0].t != T_INT && s[0].t != T_BOOL) return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[0]));
            w = as_int(s[0]);
        }
        int64_t len = (int64_t)u8_count(v.u.s->s, v.u.s->len);
        if (w <= len) {
            *out = v;
            return true;
        }
        if ((uint64_t)w > r->max_output) return fail(r, SPUD_ERR_RANGE, "center width too large");
        int64_t marg = w - len, left = marg / 2 + (marg & w & 1);
        buf b = {0};
        bool ok = true;
        for (int64_t i = 0; ok && i < left; i++) ok = buf_putc(r, &b, ' ');
        if (ok) ok = buf_put_str(r, &b, v.u.s, 0, v.u.s->len);
        for (int64_t i = 0; ok && i < marg - left; i++) ok = buf_putc(r, &b, ' ');
        if (!ok) {
            buf_free(&b);
            return false;
        }
        jstr *res = buf_finish(r, &b, v.u.s->safe);
        if (!res) return false;
        *out = v_str(res);
        return true;
    }
    case F_BATCH: {
        BIND("batch", "linecount", "fill_with");
        if (!given(s[0])) {
            FAIL(r, "do_batch() missing 1 required positional argument: 'linecount'");
            r->bind_failed = true;
            return false;
        }
        if (s[0].t != T_INT && s[0].t != T_BOOL) return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[0]));
        int64_t k = as_int(s[0]);
        const value *items;
        size_t n;
        if (!iterate(r, v, &items, &n)) return false;
        if (k <= 0 && n > 0) return FAIL(r, "batch size must be positive");
        size_t nb = n ? (n + (size_t)k - 1) / (size_t)k : 0;
        value *rows = nb ? ralloc(r, nb * sizeof *rows) : NULL;
        if (nb && !rows) return false;
        for (size_t b = 0; b < nb; b++) {
            size_t from = b * (size_t)k, cnt = n - from < (size_t)k ? n - from : (size_t)k;
            bool fill = given(s[1]) && s[1].t != T_NONE && cnt < (size_t)k;
            jlist *row = list_new(r, fill ? (size_t)k : cnt);
            if (!row) return false;
            memcpy(row->v, items + from, cnt * sizeof(value));
            for (size_t j = cnt; fill && j < (size_t)k; j++) row->v[j] = s[1];
            rows[b] = v_list(row, L_LIST);
        }
        *out = list_value(r, rows, nb, L_GEN);
        return out->t == T_LIST;
    }
    case F_WORDCOUNT: {
        NOARGS("wordcount");
        if (!soft_str(r, v, &str)) return false;
        int64_t words = 0;
        bool in_word = false;
        for (size_t i = 0; i < str->len;) {
            int32_t c;
            i += (size_t)u8_dec(str->s + i, str->len - i, &c);
            utf8proc_category_t k = utf8proc_category(c);
            bool w = (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
                     (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO) || c == '_';
            if (w && !in_word) words++;
            in_word = w;
        }
        *out = v_int(words);
        return true;
    }
    default: return FAIL(r, "the '%s' filter is not supported by spud", name->s);
    }
#undef BIND
#undef NOARGS
}

static bool filter_map(R *r, value seq, args_t *a, value *out) {
    const value *items = NULL;
    size_t n = 0;
    if (!truthy(seq)) { /* `if value:` in jinja2: nothing is checked then */
        *out = list_value(r, NULL, 0, L_GEN);
        return out->t == T_LIST;
    }
    if (!iterate(r, seq, &items, &n)) return false;
    value *res = n ? ralloc(r, n * sizeof *res) : NULL;
    if (n && !res) return false;
    value attr = {.t = MISSING}, def = {.t = MISSING};
    for (size_t k = 0; k < a->nkw; k++) {
        if (str_eqc(a->kwn[k], "attribute")) attr = a->kwv[k];
        else if (str_eqc(a->kwn[k], "default")) def = a->kwv[k];
    }
    if (a->npos == 0 && given(attr)) {
        for (size_t k = 0; k < a->nkw; k++)
            if (!str_eqc(a->kwn[k], "attribute") && !str_eqc(a->kwn[k], "default"))
                return FAIL(r, "Unexpected keyword argument '%s'", a->kwn[k]->s);
        for (size_t i = 0; i < n; i++)
            if (!attr_path_d(r, items[i], attr, given(def) && def.t != T_NONE ? &def : NULL, &res[i])) return false;
    } else {
        if (a->npos == 0) return FAIL(r, "map requires a filter argument");
        if (a->pos[0].t != T_STR) return FAIL(r, "map filter name must be a string");
        const jstr *fname = a->pos[0].u.s;
        int id = name_index(filter_names, F_COUNT_ALL, fname->s, fname->len);
        if (id < 0) return FAIL(r, "No filter named '%s'.", fname->s);
        args_t sub = *a;
        sub.pos++;
        sub.npos--;
        for (size_t i = 0; i < n; i++)
            if (!apply_filter(r, id, fname, items[i], &sub, &res[i])) return false;
    }
    *out = list_value(r, res, n, L_GEN);
    return out->t == T_LIST;
}

static bool select_items(R *r, value seq, args_t *a, bool by_attr, bool keep, value *out) {
    const value *items = NULL;
    size_t n = 0;
    if (!truthy(seq)) { /* `if value:` in jinja2: nothing is checked then */
        *out = list_value(r, NULL, 0, L_GEN);
        return out->t == T_LIST;
    }
    if (!iterate(r, seq, &items, &n)) return false;
    if (a->nkw) return FAIL(r, "select/reject filters take no keyword arguments");
    size_t first = 0;
    value attr = V_UNDEF;
    if (by_attr) {
        if (a->npos < 1) return FAIL(r, "Missing parameter for attribute name");
        attr = a->pos[0];
        first = 1;
    }
    int tid = -1;
    const jstr *tname_s = NULL;
    if (a->npos > first) {
        if (a->pos[first].t != T_STR) return FAIL(r, "test name must be a string");
        tname_s = a->pos[first].u.s;
        tid = name_index(test_names, TS_COUNT_ALL, tname_s->s, tname_s->len);
        if (tid < 0) return FAIL(r, "No test named '%s'.", tname_s->s);
    }
    args_t sub = {0};
    if (tid >= 0) {
        sub.pos = a->pos + first + 1;
        sub.npos = a->npos - first - 1;
    }
    value *res = n ? ralloc(r, n * sizeof *res) : NULL;
    if (n && !res) return false;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        value x = items[i];
        bool t;
        if (by_attr && !attr_path(r, items[i], attr, &x)) return false;
        if (tid >= 0) {
            if (!apply_test(r, tid, tname_s, x, &sub, &t)) return false;
        } else {
            t = truthy(x);
        }
        if (t == keep) res[k++] = items[i];
    }
    *out = list_value(r, res, k, L_GEN);
    return out->t == T_LIST;
}

/* ------------------------------------------------------------------ tests */

static bool apply_test(R *r, int id, const jstr *name, value v, args_t *a, bool *res) {
    value arg = a->npos ? a->pos[0] : V_UNDEF;
    bool has_arg = a->npos > 0;
    int o;
    if (a->nkw) return FAIL(r, "test '%s' takes no keyword arguments", name->s);
    size_t want = id == TS_DIVISIBLEBY || id == TS_SAMEAS || id == TS_IN || id >= TS_EQ1 ? 1 : 0;
    if (a->npos != want) return FAIL(r, "test '%s' takes %zu argument(s), %zu given", name->s, want, a->npos);
    switch (id) {
    case TS_ODD:
    case TS_EVEN:
    case TS_DIVISIBLEBY: {
        value m;
        if (id == TS_DIVISIBLEBY && !has_arg) return FAIL(r, "divisibleby() missing argument 'num'");
        if (!binop(r, OP_MOD, v, id == TS_DIVISIBLEBY ? arg : v_int(2), &m)) return false;
        *res = id == TS_ODD ? v_eq(m, v_int(1), 0) : v_eq(m, v_int(0), 0);
        return true;
    }
    case TS_DEFINED: *res = v.t != T_UNDEF; return true;
    case TS_UNDEFINED: *res = v.t == T_UNDEF; return true;
    case TS_FILTER:
        *res = v.t == T_STR && name_index(filter_names, F_COUNT_ALL, v.u.s->s, v.u.s->len) >= 0;
        return true;
    case TS_TEST:
        *res = v.t == T_STR && name_index(test_names, TS_COUNT_ALL, v.u.s->s, v.u.s->len) >= 0;
        return true;
    case TS_NONE: *res = v.t == T_NONE; return true;
    case TS_BOOLEAN: *res = v.t == T_BOOL; return true;
    case TS_FALSE: *res = v.t == T_BOOL && !v.u.b; return true;
    case TS_TRUE: *res = v.t == T_BOOL && v.u.b; return true;
    case TS_INTEGER: *res = v.t == T_INT; return true;
    case TS_FLOAT: *res = v.t == T_FLOAT; return true;
    case TS_LOWER:
    case TS_UPPER: {
        const jstr *s;
        if (!soft_str(r, v, &s)) return false;
        *res = str_is(s, id == TS_LOWER ? M_ISLOWER : M_ISUPPER);
        return true;
    }
    case TS_STRING: *res = v.t == T_STR; return true;
    case TS_MAPPING: *res = v.t == T_DICT; return true;
    case TS_NUMBER: *res = is_num(v); return true;
    case TS_SEQUENCE:
        *res = v.t == T_STR || is_seq(v) || v.t == T_DICT || v.t == T_UNDEF;
        return true;
    case TS_ITERABLE:
        *res = v.t == T_STR || v.t == T_LIST || v.t == T_DICT || v.t == T_UNDEF || v.t == T_LOOP;
        return true;
    case TS_CALLABLE:
        *res = v.t == T_MACRO || v.t == T_FUNC || v.t == T_UNDEF || v.t == T_LOOP;
        return true;
    case TS_SAMEAS:
        if (!has_arg) return FAIL(r, "sameas() missing argument 'other'");
        if (v.t != arg.t) *res = false;
        else if (v.t == T_NONE || v.t == T_UNDEF) *res = v.t == T_NONE;
        else if (v.t == T_BOOL) *res = v.u.b == arg.u.b;
        else if (v.t == T_INT) *res = v.u.i == arg.u.i && v.u.i >= -5 && v.u.i <= 256;
        else *res = v.u.s == arg.u.s; /* identity */
        return true;
    case TS_ESCAPED: *res = v.t == T_STR && v.u.s->safe; return true;
    case TS_IN:
        if (!has_arg) return FAIL(r, "in() missing argument 'seq'");
        return contains(r, v, arg, res);
    case TS_EQ1:
    case TS_EQ2:
    case TS_EQ3: *res = v_eq(v, arg, 0); return true;
    case TS_NE1:
    case TS_NE2: *res = !v_eq(v, arg, 0); return true;
    case TS_GT1:
    case TS_GT2:
    case TS_GT3:
    case TS_GE1:
    case TS_GE2:
    case TS_LT1:
    case TS_LT2:
    case TS_LT3:
    case TS_LE1:
    case TS_LE2:
        if (!has_arg) return FAIL(r, "test '%s' needs an argument", name->s);
        if (!v_order(r, v, arg, &o, 0)) return false;
        if (o == 2) *res = false;
        else if (id <= TS_GT3) *res = o > 0;
        else if (id <= TS_GE2) *res = o >= 0;
        else if (id <= TS_LT3) *res = o < 0;
        else *res = o <= 0;
        return true;
    default: return FAIL(r, "No test named '%s'.", name->s);
    }
}

/* ------------------------------------------------------------------ globals and methods */

static bool mapping_args(R *r, const char *fname, args_t *a, jdict *d) {
    if (a->npos > 1) return FAIL(r, "%s expected at most 1 argument, got %zu", fname, a->npos);
    if (a->npos == 1) {
        value m = a->pos[0];
        if (m.t == T_UNDEF) return undef_error(r, m); /* dict() looks up .keys on it */
        if (m.t == T_DICT) {
            for (size_t i = 0; i < m.u.d->n; i++)
                if (!dict_set(r, d, m.u.d->k[i], m.u.d->v[i])) return false;
        } else {
            const value *items;
            size_t n;
            if (!iterate(r, m, &items, &n)) return false;
            for (size_t i = 0; i < n; i++) {
                const value *kv;
                size_t k;
                if (items[i].t == T_UNDEF || !iterate(r, items[i], &kv, &k)) return false;
                if (k != 2) return FAIL(r, "%s update sequence element #%zu has length %zu; 2 is required", fname, i, k);
                if (!hashable(r, kv[0]) || !dict_set(r, d, kv[0], kv[1])) return false;
            }
        }
    }
    for (size_t i = 0; i < a->nkw; i++)
        if (!dict_set(r, d, v_str(a->kwn[i]), a->kwv[i])) return false;
    return true;
}

static bool call_global(R *r, int id, args_t *a, value *out) {
    switch (id) {
    case FN_RANGE: {
        int64_t p[3] = {0, 0, 1};
        if (a->nkw) return FAIL(r, "range() takes no keyword arguments");
        if (a->npos < 1 || a->npos > 3) return FAIL(r, "range expected 1 to 3 arguments, got %zu", a->npos);
        for (size_t i = 0; i < a->npos; i++) {
            if (a->pos[i].t == T_UNDEF) return undef_error(r, a->pos[i]);
            if (a->pos[i].t != T_INT && a->pos[i].t != T_BOOL)
                return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(a->pos[i]));
        }
        if (a->npos == 1) p[1] = as_int(a->pos[0]);
        else for (size_t i = 0; i < a->npos; i++) p[i] = as_int(a->pos[i]);
        if (p[2] == 0) return FAIL(r, "range() arg 3 must not be zero");
        int64_t cnt = 0;
        if (p[2] > 0 && p[0] < p[1]) cnt = (int64_t)(((uint64_t)p[1] - (uint64_t)p[0] - 1) / (uint64_t)p[2] + 1);
        if (p[2] < 0 && p[0] > p[1]) cnt = (int64_t)(((uint64_t)p[0] - (uint64_t)p[1] - 1) / (uint64_t)(-(p[2] + 1) + 1) + 1);
        if (cnt < 0 || cnt > JJ_MAX_RANGE)
            return FAIL(r, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", JJ_MAX_RANGE);
        jlist *l = list_new(r, (size_t)cnt);
        if (!l || !step(r, (uint64_t)cnt / 8)) return false;
        for (int64_t i = 0; i < cnt; i++) l->v[i] = v_int(p[0] + i * p[2]);
        *out = v_list(l, L_LIST);
        return true;
    }
    case FN_DICT: {
        jdict *d = dict_new(r);
        if (!d || !mapping_args(r, "dict", a, d)) return false;
        *out = (value){.t = T_DICT, .u.d = d};
        return true;
    }
    case FN_NAMESPACE: {
        jns *ns = ralloc(r, sizeof *ns);
        if (!ns) return false;
        memset(ns, 0, sizeof *ns);
        if (!mapping_args(r, "namespace", a, &ns->d)) return false;
        *out = (value){.t = T_NS, .u.ns = ns};
        return true;
    }
    case FN_RAISE: {
        const jstr *msg;
        if (a->npos + a->nkw != 1) return FAIL(r, "raise_exception() takes 1 argument");
        if (!to_str(r, a->npos ? a->pos[0] : a->kwv[0], &msg)) return false;
        return FAIL(r, "%s", msg->s);
    }
    case FN_STRFTIME: {
        if (a->npos != 1 || a->nkw) return FAIL(r, "strftime_now() takes 1 argument");
        if (a->pos[0].t != T_STR) return FAIL(r, "strftime() argument 1 must be str, not %s", tname(a->pos[0]));
        const jstr *fmt = a->pos[0].u.s;
        if (memchr(fmt->s, '\0', fmt->len)) return FAIL(r, "embedded null character");
        if (fmt->len > 1024) return FAIL(r, "strftime format too long");
        time_t t = r->now_set ? (time_t)r->now : time(NULL);
        struct tm tm;
        if (!(r->now_set ? gmtime_r(&t, &tm) : localtime_r(&t, &tm))) return FAIL(r, "strftime_now: bad time");
        size_t cap = fmt->len * 32 + 64;
        char *tmp = ralloc(r, cap);
        if (!tmp) return false;
        size_t n = fmt->len ? strftime(tmp, cap, fmt->s, &tm) : 0;
        jstr *res = str_new(r, tmp, n, false);
        if (!res) return false;
        str_taint_from(res, fmt);
        *out = v_str(res);
        return true;
    }
    case FN_JOINER: {
        static const char *const params[] = {"sep"};
        value s[1];
        if (!bind(r, "joiner", params, 1, a, 0, s)) return false;
        jns *st = ralloc(r, sizeof *st);
        if (!st) return false;
        memset(st, 0, sizeof *st);
        value sep = s[0];
        if (!given(sep) && !mk_str(r, ", ", 2, false, &sep)) return false;
        JSTR_LIT(k_sep, "sep");
        if (!dict_set(r, &st->d, v_str(k_sep), sep)) return false;
        return make_func(r, FN_JOINER_CALL, (value){.t = T_NS, .u.ns = st}, out);
    }
    default: return FAIL(r, "'%s' is not supported by spud", global_names[id]);
    }
}

/* joiner(): '' the first time it is called, then sep */
static bool call_joiner(R *r, value self, args_t *a, value *out) {
    if (a->npos || a->nkw) return FAIL(r, "joiner takes no arguments");
    jdict *d = &self.u.ns->d;
    JSTR_LIT(k_used, "used");
    value used;
    if (get_attr(r, self, k_used, &used) && used.t == T_BOOL) {
        *out = d->v[0];
        return true;
    }
    if (!dict_set(r, d, v_str(k_used), v_bool(true))) return false;
    return mk_str(r, "", 0, false, out);
}

/* Python's optional start/end arguments of str.find & co.: the byte range
 * [*bs, *be) of s they select, and the code point index *cs of *bs. */
static bool str_range(R *r, const jstr *s, value vs, value ve, size_t *bs, size_t *be, int64_t *cs) {
    int64_t n = (int64_t)u8_count(s->s, s->len), lo = 0, hi = n;
    for (int k = 0; k < 2; k++) {
        value v = k ? ve : vs;
        if (!given(v) || v.t == T_NONE) continue;
        if (v.t != T_INT && v.t != T_BOOL) return FAIL(r, "slice indices must be integers or None");
        int64_t x = as_int(v);
        if (x < 0) x = x + n < 0 ? 0 : x + n;
        if (k) hi = x > n ? n : x;
        else lo = x;
    }
    if (lo > n || lo > hi) { /* nothing matches in it, not even "" */
        *bs = *be = s->len;
        *cs = n + 1;
        return true;
    }
    *bs = cp_offset(s, (size_t)lo);
    *be = cp_offset(s, (size_t)hi);
    *cs = lo;
    return true;
}

static bool call_method(R *r, int id, value self, args_t *a, value *out) {
    value s[4];
#define MBIND(fname, ...)                                                                          \
    do {                                                                                           \
        static const char *const params_[] = {__VA_ARGS__};                                        \
        if (a->nkw) return FAIL(r, "%s() takes no keyword arguments", fname);                      \
        if (!bind(r, fname, params_, sizeof params_ / sizeof params_[0], a, 0, s)) return false;   \
    } while (0)
#define MNOARGS(fname)                                                                             \
    do {                                                                                           \
        if (a->npos || a->nkw) return FAIL(r, "%s() takes no arguments", fname);                   \
    } while (0)
    const jstr *str = self.t == T_STR ? self.u.s : NULL;
    switch (id) {
    case M_STARTSWITH:
    case M_ENDSWITH: {
        MBIND(id == M_STARTSWITH ? "startswith" : "endswith", "prefix", "start", "end");
        if (!given(s[0])) return FAIL(r, "startswith() takes at least 1 argument (0 given)");
        size_t bs, be;
        int64_t cs;
        if (!str_range(r, str, s[1], s[2], &bs, &be, &cs)) return false;
        bool empty_range = cs > (int64_t)u8_count(str->s, str->len);
        const value *cands = &s[0];
        size_t n = 1;
        if (is_seq(s[0]) && s[0].flag == L_TUPLE) {
            cands = s[0].u.l->v;
            n = s[0].u.l->n;
        }
        *out = v_bool(false);
        for (size_t i = 0; i < n; i++) {
            if (cands[i].t != T_STR)
                return FAIL(r, "%s first arg must be str or a tuple of str, not %s",
                            id == M_STARTSWITH ? "startswith" : "endswith", tname(cands[i]));
            const jstr *p = cands[i].u.s;
            if (!empty_range && p->len <= be - bs &&
                memcmp(str->s + (id == M_STARTSWITH ? bs : be - p->len), p->s, p->len) == 0)
                *out = v_bool(true);
        }
        return true;
    }
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        MBIND("strip", "chars");
        const jstr *chars = NULL;
        if (given(s[0]) && s[0].t != T_NONE) {
            if (s[0].t != T_STR) return FAIL(r, "strip arg must be None or str");
            chars = s[0].u.s;
            if (str->safe && !html_escape(r, chars, &chars)) return false;
        }
        return str_strip(r, str, chars, id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2, out);
    }
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const params[] = {"sep", "maxsplit"};
        if (!bind(r, "split", params, 2, a, 0, s)) return false;
        const jstr *sep = NULL;
        if (given(s[0]) && s[0].t != T_NONE) {
            if (s[0].t != T_STR) return FAIL(r, "must be str or None, not %s", tname(s[0]));
            sep = s[0].u.s;
        }
        int64_t maxsplit = -1;
        if (given(s[1])) {
            if (s[1].t != T_INT && s[1].t != T_BOOL) return FAIL(r, "maxsplit must be an integer");
            maxsplit = as_int(s[1]);
        }
        return str_split(r, str, sep, maxsplit, id == M_RSPLIT, out);
    }
    case M_UPPER: MNOARGS("upper"); return str_case(r, str, CASE_UPPER, out);
    case M_LOWER:
    case M_CASEFOLD: MNOARGS("lower"); return str_case(r, str, CASE_LOWER, out);
    case M_TITLE: MNOARGS("title"); return str_case(r, str, CASE_TITLE, out);
    case M_CAPITALIZE: MNOARGS("capitalize"); return str_case(r, str, CASE_CAPITALIZE, out);
    case M_SWAPCASE: MNOARGS("swapcase"); return str_case(r, str, CASE_SWAP, out);
    case M_REPLACE: {
        MBIND("replace", "old", "new", "count");
        if (!given(s[0]) || !given(s[1])) return FAIL(r, "replace expected at least 2 arguments");
        if (s[0].t != T_STR || s[1].t != T_STR) return FAIL(r, "replace() arguments must be str");
        const jstr *o = s[0].u.s, *nw = s[1].u.s;
        if (str->safe && (!html_escape(r, o, &o) || !html_escape(r, nw, &nw))) return false;
        int64_t cnt = -1;
        if (given(s[2])) {
            if (s[2].t != T_INT && s[2].t != T_BOOL) return FAIL(r, "replace() count must be an integer");
            cnt = as_int(s[2]);
        }
        return str_replace(r, str, o, nw, cnt, str->safe, out);
    }
    case M_FIND:
    case M_RFIND:
    case M_INDEX:
    case M_RINDEX:
    case M_COUNT: {
        MBIND("find", "sub", "start", "end");
        if (!given(s[0]) || s[0].t != T_STR) return FAIL(r, "must be str, not %s", given(s[0]) ? tname(s[0]) : "nothing");
        if (!step(r, str->len / 64)) return false;
        size_t bs, be;
        int64_t cs;
        if (!str_range(r, str, s[1], s[2], &bs, &be, &cs)) return false;
        bool past_end = cs > (int64_t)u8_count(str->s, str->len);
        const jstr *sub = s[0].u.s;
        const char *base = str->s + bs;
        size_t len = be - bs;
        if (id == M_COUNT) {
            int64_t c = 0;
            if (past_end) c = 0;
            else if (sub->len == 0) c = (int64_t)u8_count(base, len) + 1;
            else
                for (const char *p = base; (p = memmem(p, (size_t)(base + len - p), sub->s, sub->len)); p += sub->len) c++;
            *out = v_int(c);
            return true;
        }
        int64_t at = -1;
        if (!past_end) {
            const char *hit = NULL;
            if (id == M_FIND || id == M_INDEX) {
                hit = sub->len == 0 ? base : memmem(base, len, sub->s, sub->len);
            } else if (sub->len <= len) {
                for (size_t j = len - sub->len + 1; j-- > 0;)
                    if (memcmp(base + j, sub->s, sub->len) == 0) {
                        hit = base + j;
                        break;
                    }
            }
            if (hit) at = cs + (int64_t)u8_count(base, (size_t)(hit - base));
        }
        if (at < 0 && (id == M_INDEX || id == M_RINDEX)) return FAIL(r, "substring not found");
        *out = v_int(at);
        return true;
    }
    case M_JOIN: {
        MBIND("join", "iterable");
        const value *items;
        size_t n;
        if (!given(s[0])) return FAIL(r, "join() takes exactly one argument (0 given)");
        if (!iterate(r, s[0], &items, &n)) return false;
        if (!str_join(r, str, items, n, true, out)) return false;
        return true;
    }
    case M_SPLITLINES:
        MBIND("splitlines", "keepends");
        if (given(s[0]) && s[0].t != T_INT && s[0].t != T_BOOL)
            return FAIL(r, "'%s' object cannot be interpreted as an integer", tname(s[0]));
        return str_splitlines(r, str, given(s[0]) && truthy(s[0]), out);
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISALNUM:
    case M_ISSPACE:
    case M_ISUPPER:
    case M_ISLOWER:
        MNOARGS("is...");
        *out = v_bool(str_is(str, id));
        return true;
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: {
        MBIND("removeprefix", "affix");
        if (!given(s[0]) || s[0].t != T_STR) return FAIL(r, "removeprefix() argument must be str");
        const jstr *p = s[0].u.s;
        if (p->len <= str->len && memcmp(str->s + (id == M_REMOVEPREFIX ? 0 : str->len - p->len), p->s, p->len) == 0)
            return sub_str(r, str, id == M_REMOVEPREFIX ? p->len : 0, str->len - p->len, str->safe, out);
        *out = self;
        return true;
    }
    case M_GET: {
        MBIND("get", "key", "default");
        if (!given(s[0])) return FAIL(r, "get expected at least 1 argument, got 0");
        size_t at;
        if (!hashable(r, s[0])) return false;
        if (dict_find(self.u.d, s[0], &at)) *out = self.u.d->v[at];
        else *out = given(s[1]) ? s[1] : V_NONE;
        return true;
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        MNOARGS("items");
        const jdict *d = self.u.d;
        value *items = d->n ? ralloc(r, d->n * sizeof *items) : NULL;
        if (d->n && !items) return false;
        for (size_t i = 0; i < d->n; i++) {
            if (id == M_ITEMS) {
                jlist *t = list_new(r, 2);
                if (!t) return false;
                t->v[0] = d->k[i];
                t->v[1] = d->v[i];
                items[i] = v_list(t, L_TUPLE);
            } else {
                items[i] = id == M_KEYS ? d->k[i] : d->v[i];
            }
        }
        *out = list_value(r, items, d->n, id == M_ITEMS ? L_ITEMS : id == M_KEYS ? L_KEYS : L_VALUES);
        return out->t == T_LIST;
    }
    case M_DICT_COPY: {
        MNOARGS("copy");
        jdict *d = dict_new(r);
        if (!d) return false;
        for (size_t i = 0; i < self.u.d->n; i++)
            if (!dict_set(r, d, self.u.d->k[i], self.u.d->v[i])) return false;
        *out = (value){.t = T_DICT, .u.d = d};
        return true;
    }
    case M_LCOUNT:
    case M_LINDEX: {
        MBIND("index", "value");
        if (!given(s[0])) return FAIL(r, "index() takes at least 1 argument");
        int64_t c = 0, at = -1;
        if (!step(r, self.u.l->n / 8)) return false;
        for (size_t i = 0; i < self.u.l->n; i++)
            if (v_eq(self.u.l->v[i], s[0], 0)) {
                c++;
                if (at < 0) at = (int64_t)i;
            }
        if (id == M_LINDEX && at < 0) return FAIL(r, "value is not in list");
        *out = v_int(id == M_LCOUNT ? c : at);
        return true;
    }
    case M_LCOPY:
        MNOARGS("copy");
        *out = list_value(r, self.u.l->v, self.u.l->n, L_LIST);
        return out->t == T_LIST;
    case M_CYCLE:
        if (a->nkw) return FAIL(r, "cycle() takes no keyword arguments");
        if (a->npos == 0) return FAIL(r, "no items for cycling given");
        *out = a->pos[self.u.loop->i % (int64_t)a->npos];
        return true;
    default: return FAIL(r, "this method is not supported by spud");
    }
#undef MBIND
#undef MNOARGS
}

static bool call_func(R *r, jfunc *fn, args_t *a, value *out) {
    if (fn->id == FN_JOINER_CALL) return call_joiner(r, fn->self, a, out);
    if (fn->id < M_NONE) return call_global(r, fn->id, a, out);
    return call_method(r, fn->id, fn->self, a, out);
}

/* ------------------------------------------------------------------ JSON in */

static bool trusted_name(const R *r, int depth, const char *key) {
    if (depth > 0 || !r->trusted) return false;
    for (const char *const *t = r->trusted; *t; t++)
        if (!strcmp(*t, key)) return true;
    return false;
}

/* A JSON string as a value: tainted wholly when it comes from an untrusted variable. */
static bool json_in_str(R *r, const char *s, size_t n, bool tainted, value *out) {
    jstr *j = str_new(r, s, n, false);
    if (!j) return false;
    if (tainted && n) j->taint = TAINT_ALL;
    *out = v_str(j);
    return true;
}

static bool from_json(R *r, json_object *j, value *out, bool tainted, int depth) {
    if (depth > 512) return FAIL(r, "JSON input nested too deeply");
    if (!step(r, 1)) return false;
    switch (json_object_get_type(j)) {
    case json_type_null: *out = V_NONE; return true;
    case json_type_boolean: *out = v_bool(json_object_get_boolean(j)); return true;
    case json_type_double: *out = v_float(json_object_get_double(j)); return true;
    case json_type_int: *out = v_int(json_object_get_int64(j)); return true;
    case json_type_string: {
        const char *s = json_object_get_string(j);
        size_t n = (size_t)json_object_get_string_len(j);
        if (!u8_valid(s, n)) return FAIL(r, "JSON input has a string that is not valid UTF-8");
        return json_in_str(r, s, n, tainted, out);
    }
    case json_type_array: {
        size_t n = json_object_array_length(j);
        jlist *l = list_new(r, n);
        if (!l) return false;
        for (size_t i = 0; i < n; i++)
            if (!from_json(r, json_object_array_get_idx(j, i), &l->v[i], tainted, depth + 1)) return false;
        *out = v_list(l, L_LIST);
        return true;
    }
    case json_type_object: {
        jdict *d = dict_new(r);
        if (!d) return false;
        json_object_object_foreach(j, key, val) {
            value k, v;
            if (!u8_valid(key, strlen(key))) return FAIL(r, "JSON input has a key that is not valid UTF-8");
            /* the variables' own names (depth 0) are the template's to know */
            bool t = tainted && !trusted_name(r, depth, key);
            if (!json_in_str(r, key, strlen(key), tainted && depth > 0, &k) || !from_json(r, val, &v, t, depth + 1) ||
                !dict_set(r, d, k, v))
                return false;
        }
        *out = (value){.t = T_DICT, .u.d = d};
        return true;
    }
    }
    return FAIL(r, "unsupported JSON value");
}

/* ------------------------------------------------------------------ public API */

spud_status spud_jinja_parse(const char *src, size_t len, spud_jinja_template **out) {
    *out = NULL;
    if (len > JJ_MAX_SOURCE)
        return spud_errorf(SPUD_ERR_RANGE, "template is %zu bytes, over the limit of %u", len, JJ_MAX_SOURCE);
    if (!u8_valid(src, len)) return spud_errorf(SPUD_ERR_FORMAT, "template is not valid UTF-8");
    spud_jinja_template *t = spud_calloc(1, sizeof *t);
    if (!t) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    P p = {.a = &t->a};
    /* jinja2 normalizes \r\n and \r to \n and drops one trailing newline */
    char *s = palloc(&p, len + 1);
    size_t n = 0;
    if (!s) goto fail;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n > 0 && s[n - 1] == '\n') n--;
    s[n] = '\0';
    p.src = s;
    p.n = n;
    if (!lex(&p, s, n)) goto fail;
    nvec body = {0};
    node *root = mk(&p, S_BODY, 1);
    if (!root || !subparse(&p, &body, NULL)) goto fail;
    if (cur(&p)->type != K_EOF) {
        perr(&p, cur(&p)->line, "unexpected %s", tok_desc(cur(&p)));
        goto fail;
    }
    root->kids = body.v;
    root->nk = body.n;
    if (!check_names(&p, root, false)) goto fail;
    mark_folded_slices(root, false);
    t->root = root;
    spud_free(p.toks);
    *out = t;
    return SPUD_OK;
fail:
    spud_free(p.toks);
    arena_free(&t->a);
    spud_free(t);
    if (p.failed) {
        if (strncmp(p.msg, "out of memory", 13) == 0) return spud_errorf(SPUD_ERR_NOMEM, "%s", p.msg);
        return spud_errorf(SPUD_ERR_FORMAT, "%s", p.msg);
    }
    return spud_errorf(SPUD_ERR_NOMEM, "out of memory parsing the template");
}

void spud_jinja_free(spud_jinja_template *t) {
    if (!t) return;
    arena_free(&t->a);
    spud_free(t);
}

spud_status spud_jinja_render(const spud_jinja_template *t, json_object *vars,
                              const spud_jinja_opts *opts, char **out, size_t *out_len) {
    return spud_jinja_render_taint(t, vars, opts, out, out_len, NULL);
}

spud_status spud_jinja_render_taint(const spud_jinja_template *t, json_object *vars,
                                    const spud_jinja_opts *opts, char **out, size_t *out_len,
                                    uint8_t **taint) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (taint) *taint = NULL;
    spud_jinja_opts o = opts ? *opts : (spud_jinja_opts){0};
    R r = {0};
    buf b = {0};
    r.t = t;
    r.max_steps = o.max_steps ? o.max_steps : JJ_DEFAULT_STEPS;
    r.max_output = o.max_output ? o.max_output : JJ_DEFAULT_OUTPUT;
    r.a.limit = o.max_memory ? o.max_memory : JJ_DEFAULT_MEMORY;
    r.now = o.now;
    r.now_set = o.now_set;
    r.trusted = o.trusted;
    r.out = &b;
    r.line = 1;
    if (vars) {
        value v;
        if (json_object_get_type(vars) != json_type_object) {
            arena_free(&r.a);
            return spud_errorf(SPUD_ERR_INVALID, "template variables must be a JSON object");
        }
        if (!from_json(&r, vars, &v, true, 0)) goto fail;
        r.vars = v.u.d;
    }
    if (!(r.f = frame_new(&r, NULL))) goto fail;
    if (exec(&r, t->root) == FLOW_ERR || r.failed) goto fail;
    arena_free(&r.a);
    if (!b.p) {
        b.p = spud_malloc(1);
        if (!b.p) goto nomem;
        b.p[0] = '\0';
    }
    if (taint) {
        uint8_t *m = spud_calloc(b.n + 1, 1);
        if (!m) goto nomem;
        for (size_t k = 0; k < b.nt; k++) memset(m + b.t[k].a, 1, b.t[k].b - b.t[k].a);
        *taint = m;
    }
    spud_free(b.t);
    *out = b.p;
    if (out_len) *out_len = b.n;
    return SPUD_OK;
nomem:
    buf_free(&b);
    return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
fail:
    buf_free(&b);
    arena_free(&r.a);
    if (!r.failed) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    return spud_errorf(r.st, "line %d: %s", r.line, r.msg);
}
