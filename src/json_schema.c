/* json_schema.c: JSON Schema -> GBNF (spud_json_schema_* in json_schema.h).
 *
 * In dependency order: a string buffer; the rule table (deduplicated by body,
 * unique names); primitives (ws, strings, numbers, any value); integer and
 * decimal ranges as digit grammars; ECMAScript patterns -> grammars over JSON
 * string characters; schema checks, $ref resolution and allOf merging; the
 * generator for each type; the public entry points.
 *
 * Every schema location is generated with its JSON pointer in `path`, so
 * errors name where they are. Subschemas are generated at most once per
 * identical body (rules are shared), and $ref targets become named rules, so
 * recursion is a rule that refers to itself.
 */
#include "json_schema.h"

#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64          /* nesting of schemas during generation and merging */
#define MAX_DIGITS 15         /* integer digits of unbounded numbers (exact in a double) */
#define MAX_FRAC 15           /* fraction digits of unbounded numbers */
#define MAX_ALTS 256          /* anyOf x anyOf cross products */
#define MAX_PATTERN_REPEAT 2048

/* ---------------------------------------------------------------- buffer */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (!s) b->oom = true; /* a string that could not be made */
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = spud_realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, s ? strlen(s) : 0); }

/* Append another buffer's text (if_empty when it has none); its failure is ours. */
static void sb_cat(sbuf *b, const sbuf *sub, const char *if_empty) {
    if (sub->oom) b->oom = true;
    else sb_puts(b, sub->p ? sub->p : if_empty);
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        sb_putn(b, tmp, (size_t)n);
        return;
    }
    char *big = spud_malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_putn(b, big, (size_t)n);
    spud_free(big);
}

/* The buffer's string (an empty string if nothing was written); NULL if out of memory. */
static char *sb_take(sbuf *b) {
    if (!b->oom && !b->p) sb_putn(b, "", 0);
    if (b->oom) {
        spud_free(b->p);
        b->p = NULL;
        return NULL;
    }
    char *p = b->p;
    b->p = NULL;
    b->n = b->cap = 0;
    return p;
}

/* A GBNF literal for bytes s[0..n): quotes, \\ \" and \xHH for control bytes;
 * other bytes (UTF-8 included) as they are. */
static void sb_lit(sbuf *b, const char *s, size_t n) {
    sb_putn(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_putn(b, e, 2);
        } else if (c < 0x20 || c == 0x7F) {
            sb_printf(b, "\\x%02X", c);
        } else {
            sb_putn(b, (const char *)&c, 1);
        }
    }
    sb_putn(b, "\"", 1);
}

spud_status spud_gbnf_append_literal(char **buf, const char *s, size_t n) {
    sbuf b = {0};
    if (*buf) sb_puts(&b, *buf);
    sb_lit(&b, s, n);
    char *r = sb_take(&b);
    if (!r) return spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
    spud_free(*buf);
    *buf = r;
    return SPUD_OK;
}

/* ---------------------------------------------------------------- builder */

typedef struct {
    char *name;
    char *body; /* NULL while reserved (a $ref target being generated) */
} grule;

typedef struct {
    char *ptr;  /* JSON pointer (after '#') */
    char *rule; /* its rule name */
    json_object *doc;
    bool busy; /* being generated (recursion) */
} gref;

struct spud_gbnf_builder {
    bool strict;
    grule *rules;
    size_t n_rules, cap_rules;
    gref *refs;
    size_t n_refs, cap_refs;
    json_object *doc; /* document of the schema being compiled ($ref root) */
    int depth;
    const char *last_ref; /* the last $ref inlined (merged with other keywords) */
    char path[512];
    size_t path_len;
    bool failed;
    spud_status st;
};

/* s with control characters as \n, \t or \xHH (messages stay on one line). */
static void escape_controls(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 5 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != 0x7F) {
            out[o++] = (char)c;
        } else if (c == '\n' || c == '\t') {
            out[o++] = '\\';
            out[o++] = c == '\n' ? 'n' : 't';
        } else {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02X", c);
        }
    }
    out[o] = 0;
}

__attribute__((format(printf, 3, 4))) static bool serr(spud_gbnf_builder *b, spud_status st, const char *fmt,
                                                       ...) {
    if (b->failed) return false;
    char msg[400], emsg[1200], epath[2100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    escape_controls(emsg, sizeof emsg, msg);
    escape_controls(epath, sizeof epath, b->path_len ? b->path : "/");
    b->failed = true;
    b->st = spud_errorf(st, "json schema: %s: %s", epath, emsg);
    return false;
}

static bool soom(spud_gbnf_builder *b) {
    if (!b->failed) {
        b->failed = true;
        b->st = spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
    }
    return false;
}

/* Push a JSON pointer segment (escaped ~0 ~1); returns the old length. */
static size_t path_push(spud_gbnf_builder *b, const char *seg) {
    size_t old = b->path_len;
    if (b->path_len + 2 >= sizeof b->path) return old;
    b->path[b->path_len++] = '/';
    for (const char *c = seg; *c && b->path_len + 3 < sizeof b->path; c++) {
        if (*c == '~' || *c == '/') {
            b->path[b->path_len++] = '~';
            b->path[b->path_len++] = *c == '~' ? '0' : '1';
        } else {
            b->path[b->path_len++] = *c;
        }
    }
    b->path[b->path_len] = 0;
    return old;
}

static size_t path_push_idx(spud_gbnf_builder *b, const char *key, size_t i) {
    char tmp[32];
    size_t old = path_push(b, key);
    snprintf(tmp, sizeof tmp, "%zu", i);
    path_push(b, tmp);
    return old;
}

static void path_pop(spud_gbnf_builder *b, size_t old) {
    b->path_len = old;
    b->path[old] = 0;
}

static void sanitize(char *out, size_t cap, const char *hint) {
    size_t o = 0;
    for (const char *c = hint; *c && o + 1 < cap; c++) {
        char x = *c;
        bool ok = (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || (x >= '0' && x <= '9');
        char y = ok ? x : '-';
        if (y == '-' && (o == 0 || out[o - 1] == '-')) continue;
        out[o++] = y;
    }
    while (o > 0 && out[o - 1] == '-') o--;
    if (o == 0) out[o++] = 'r';
    out[o] = 0;
}

static grule *find_rule(spud_gbnf_builder *b, const char *name) {
    for (size_t i = 0; i < b->n_rules; i++)
        if (!strcmp(b->rules[i].name, name)) return &b->rules[i];
    return NULL;
}

/* A new rule name from a hint (unique), with body (copied; NULL: reserved). */
static const char *new_rule(spud_gbnf_builder *b, const char *hint, const char *body) {
    char base[80], name[100];
    sanitize(base, sizeof base, hint);
    snprintf(name, sizeof name, "%s", base);
    for (int k = 2; find_rule(b, name); k++) snprintf(name, sizeof name, "%s-%d", base, k);
    if (b->n_rules + 1 > b->cap_rules) {
        size_t cap = b->cap_rules ? b->cap_rules * 2 : 32;
        grule *r = spud_realloc(b->rules, cap * sizeof *r);
        if (!r) return soom(b), NULL;
        b->rules = r;
        b->cap_rules = cap;
    }
    grule *r = &b->rules[b->n_rules];
    r->name = spud_strndup(name, strlen(name));
    r->body = body ? spud_strndup(body, strlen(body)) : NULL;
    if (!r->name || (body && !r->body)) {
        spud_free(r->name);
        spud_free(r->body);
        return soom(b), NULL;
    }
    b->n_rules++;
    return r->name;
}

/* A rule with this body: an existing one with the same body, else a new one. */
static const char *add_rule(spud_gbnf_builder *b, const char *hint, const char *body) {
    if (!body) return soom(b), NULL;
    for (size_t i = 0; i < b->n_rules; i++)
        if (b->rules[i].body && !strcmp(b->rules[i].body, body)) return b->rules[i].name;
    return new_rule(b, hint, body);
}

/* A primitive rule with a fixed name (defined once). */
static const char *prim(spud_gbnf_builder *b, const char *name);

static const struct {
    const char *name, *body;
} prims[] = {
    {"ws", "| \" \" | \"\\n\" [ \\t]{0,20}"},
    {"jchar", "[^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" jhex4 )"},
    /* a \u escape that is not a surrogate */
    {"jhex4", "[0-9a-cA-CeEfF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}"},
    {"jstring", "\"\\\"\" jchar* \"\\\"\""},
    {"jinteger", "\"-\"? ( \"0\" | [1-9] [0-9]{0,14} )"},
    {"jnumber", "\"-\"? ( \"0\" | [1-9] [0-9]{0,14} ) ( \".\" [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,2} )?"},
    {"jboolean", "\"true\" | \"false\""},
    {"jnull", "\"null\""},
    {"jvalue", "jobject | jarray | jstring | jnumber | jboolean | jnull"},
    {"jobject", "\"{\" ws ( jstring ws \":\" ws jvalue ( ws \",\" ws jstring ws \":\" ws jvalue )* )? ws \"}\""},
    {"jarray", "\"[\" ws ( jvalue ( ws \",\" ws jvalue )* )? ws \"]\""},
    /* every valid day except February 29 */
    {"jdate", "[0-9]{4} \"-\" ( ( \"0\" [13578] | \"1\" [02] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] ) | "
              "( \"0\" [469] | \"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"30\" ) | "
              "\"02-\" ( \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8] ) )"},
    {"jtime", "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,6} )? "
              "( \"Z\" | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )"},
    {"juuid", "[0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{12}"},
    {"jemail", "[a-z0-9]{1,20} ( \".\" [a-z0-9]{1,20} ){0,2} \"@\" jlabel ( \".\" jlabel ){1,3}"},
    {"jlabel", "[a-z0-9]{1,20} ( \"-\" [a-z0-9]{1,20} ){0,2}"},
};

/* Rules a primitive refers to. */
static const char *prim_deps(const char *name) {
    if (!strcmp(name, "jchar")) return "jhex4";
    if (!strcmp(name, "jstring")) return "jchar";
    if (!strcmp(name, "jvalue")) return "jobject jarray jstring jnumber jboolean jnull";
    if (!strcmp(name, "jobject")) return "ws jstring jvalue";
    if (!strcmp(name, "jarray")) return "ws jvalue";
    if (!strcmp(name, "jemail")) return "jlabel";
    return "";
}

static const char *prim(spud_gbnf_builder *b, const char *name) {
    grule *r = find_rule(b, name);
    if (r) return r->name;
    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++) {
        if (strcmp(prims[i].name, name)) continue;
        const char *n = new_rule(b, name, prims[i].body);
        if (!n) return NULL;
        char deps[128];
        snprintf(deps, sizeof deps, "%s", prim_deps(name));
        for (char *save = NULL, *d = strtok_r(deps, " ", &save); d; d = strtok_r(NULL, " ", &save))
            if (!prim(b, d)) return NULL;
        return find_rule(b, name)->name;
    }
    return soom(b), NULL; /* unreachable: every name used is in the table */
}

/* ---------------------------------------------------------------- digits */

/* Strings of n digits >= s (le: <= s), s of n digits. */
static void digits_cmp(sbuf *o, const char *s, size_t n, bool le) {
    if (n == 0) {
        sb_puts(o, "\"\"");
        return;
    }
    bool trivial = true;
    for (size_t i = 0; i < n; i++) trivial &= s[i] == (le ? '9' : '0');
    if (trivial) {
        sb_printf(o, "[0-9]{%zu}", n);
        return;
    }
    sb_puts(o, "( ");
    sb_printf(o, "\"%c\" ", s[0]);
    digits_cmp(o, s + 1, n - 1, le);
    if (le ? s[0] > '0' : s[0] < '9') {
        if (le)
            sb_printf(o, " | [0-%c]", s[0] - 1);
        else
            sb_printf(o, " | [%c-9]", s[0] + 1);
        if (n > 1) sb_printf(o, " [0-9]{%zu}", n - 1);
    }
    sb_puts(o, " )");
}

/* Digit strings of length n in [lo, hi] (both n digits, leading zeros kept). */
static void digits_range(sbuf *o, const char *lo, const char *hi, size_t n) {
    if (n == 0) {
        sb_puts(o, "\"\"");
        return;
    }
    if (!memcmp(lo, hi, n)) {
        sb_lit(o, lo, n);
        return;
    }
    if (lo[0] == hi[0]) {
        sb_printf(o, "\"%c\" ", lo[0]);
        digits_range(o, lo + 1, hi + 1, n - 1);
        return;
    }
    bool rest_full = true; /* lo = a00..0, hi = b99..9: one class per digit */
    for (size_t i = 1; i < n; i++) rest_full &= lo[i] == '0' && hi[i] == '9';
    if (rest_full) {
        sb_printf(o, "[%c-%c]", lo[0], hi[0]);
        if (n > 1) sb_printf(o, " [0-9]{%zu}", n - 1);
        return;
    }
    sb_puts(o, "( ");
    sb_printf(o, "\"%c\" ", lo[0]);
    digits_cmp(o, lo + 1, n - 1, false);
    if (lo[0] + 1 <= hi[0] - 1) {
        sb_printf(o, " | [%c-%c]", lo[0] + 1, hi[0] - 1);
        if (n > 1) sb_printf(o, " [0-9]{%zu}", n - 1);
    }
    sb_printf(o, " | \"%c\" ", hi[0]);
    digits_cmp(o, hi + 1, n - 1, true);
    sb_puts(o, " )");
}

static const uint64_t MAX_UINT_GEN = 999999999999999ull; /* 15 digits */

/* Decimal integers (no leading zeros) in [a, b], b <= MAX_UINT_GEN. */
static void uint_range(sbuf *o, uint64_t a, uint64_t b) {
    char sa[24], sb_[24];
    int la = snprintf(sa, sizeof sa, "%llu", (unsigned long long)a);
    int lb = snprintf(sb_, sizeof sb_, "%llu", (unsigned long long)b);
    bool many = la != lb;
    if (many) sb_puts(o, "( ");
    for (int d = la; d <= lb; d++) {
        uint64_t p = 1;
        for (int i = 1; i < d; i++) p *= 10;
        uint64_t lo = d == la ? a : p, hi = d == lb ? b : p * 10 - 1;
        char slo[24], shi[24];
        snprintf(slo, sizeof slo, "%llu", (unsigned long long)lo);
        snprintf(shi, sizeof shi, "%llu", (unsigned long long)hi);
        if (d > la) sb_puts(o, " | ");
        digits_range(o, slo, shi, (size_t)d);
    }
    if (many) sb_puts(o, " )");
}

/* ---- decimals: a non-negative decimal as integer digits and fraction digits ---- */

typedef struct {
    uint64_t ip;    /* integer part */
    char fp[40];    /* fraction digits, no trailing zeros */
    int sig;        /* significant digits of the shortest representation */
} decnum;

/* The shortest decimal that reads back as |x| (x finite, |x| < 1e15). */
static bool to_decnum(double x, decnum *d) {
    char buf[64];
    x = fabs(x);
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, x);
        if (strtod(buf, NULL) == x) {
            d->sig = p;
            break;
        }
    }
    /* buf: D.DDDDe[+-]XX -> digits and exponent */
    char dig[24];
    int nd = 0, e;
    const char *c = buf;
    for (; *c && *c != 'e'; c++)
        if (*c >= '0' && *c <= '9') dig[nd++] = *c;
    e = atoi(c + 1);
    /* value = 0.dig * 10^(e+1) */
    int point = e + 1; /* digits before the point */
    d->ip = 0;
    memset(d->fp, 0, sizeof d->fp);
    int fo = 0;
    for (int i = 0; i < nd; i++) {
        if (i < point) {
            d->ip = d->ip * 10 + (uint64_t)(dig[i] - '0');
        } else {
            int pos = i - point; /* fraction position */
            if (pos >= (int)sizeof d->fp - 1) return false;
            while (fo < pos) d->fp[fo++] = '0';
            d->fp[fo++] = dig[i];
        }
    }
    for (int i = nd; i < point; i++) d->ip *= 10;
    while (fo > 0 && d->fp[fo - 1] == '0') d->fp[--fo] = 0;
    return true;
}

/* Fraction constraint states. */
enum { FC_NONE, FC_GE, FC_GT, FC_LE, FC_LT };

/* Digit strings S, |S| in [nonempty, rem], with 0.S compared to 0.L (lower:
 * FC_NONE/GE/GT) and 0.H (upper: FC_NONE/LE/LT). Returns false if the set
 * is empty (nothing written). */
static bool frac_digits(sbuf *o, const char *L, int lk, const char *H, int hk, int rem, bool nonempty) {
    if (lk == FC_GE && !*L) lk = FC_NONE; /* 0.S >= 0 always */
    bool empty_ok = !nonempty;
    if (empty_ok) { /* S = "": value 0 */
        if (lk == FC_GE) {
            for (const char *c = L; *c; c++) empty_ok &= *c == '0';
        } else if (lk == FC_GT) {
            empty_ok = false;
        }
        if (hk == FC_LT) {
            bool nz = false;
            for (const char *c = H; *c; c++) nz |= *c != '0';
            empty_ok &= nz;
        }
    }
    if (lk == FC_NONE && hk == FC_NONE) {
        if (rem <= 0) {
            if (!empty_ok) return false;
            sb_puts(o, "\"\"");
            return true;
        }
        sb_printf(o, "[0-9]{%d,%d}", empty_ok ? 0 : 1, rem);
        return true;
    }
    /* Group first digits by the outcome of both constraints. */
    sbuf alts = {0};
    int n_alts = 0;
    if (rem > 0) {
        int d = 0;
        while (d <= 9) {
            char l0 = *L ? *L : '0', h0 = *H ? *H : '0';
            int lo_out, hi_out; /* new constraint kinds; -1: invalid */
            char dc = (char)('0' + d);
            lo_out = lk == FC_NONE ? FC_NONE : dc > l0 ? FC_NONE : dc == l0 ? lk : -1;
            hi_out = hk == FC_NONE ? FC_NONE : dc < h0 ? FC_NONE : dc == h0 ? hk : -1;
            int e = d;
            while (e + 1 <= 9) { /* extend while the outcome is the same and not "equal" */
                char nc = (char)('0' + e + 1);
                int l2 = lk == FC_NONE ? FC_NONE : nc > l0 ? FC_NONE : nc == l0 ? lk : -1;
                int h2 = hk == FC_NONE ? FC_NONE : nc < h0 ? FC_NONE : nc == h0 ? hk : -1;
                if (l2 != lo_out || h2 != hi_out || (lo_out != FC_NONE && lo_out != -1) ||
                    (hi_out != FC_NONE && hi_out != -1))
                    break;
                e++;
            }
            if (lo_out != -1 && hi_out != -1) {
                sbuf sub = {0};
                const char *L2 = lo_out == FC_NONE ? "" : (*L ? L + 1 : L);
                const char *H2 = hi_out == FC_NONE ? "" : (*H ? H + 1 : H);
                if (frac_digits(&sub, L2, lo_out, H2, hi_out, rem - 1, false)) {
                    if (n_alts++) sb_puts(&alts, " | ");
                    if (d == e)
                        sb_printf(&alts, "\"%d\" ", d);
                    else
                        sb_printf(&alts, "[%d-%d] ", d, e);
                    sb_cat(&alts, &sub, "\"\"");
                }
                spud_free(sub.p);
            }
            d = e + 1;
        }
    }
    if (!n_alts && !empty_ok) {
        spud_free(alts.p);
        return false;
    }
    sb_puts(o, "( ");
    if (empty_ok) sb_puts(o, n_alts ? "\"\" | " : "\"\"");
    if (n_alts) sb_cat(o, &alts, "");
    sb_puts(o, " )");
    if (alts.oom) o->oom = true;
    spud_free(alts.p);
    return true;
}

/* The optional fraction part (".ddd" or nothing) of a number whose integer
 * part is fixed, with 0.F compared to lower L (kind lk) and upper H (hk). */
static bool frac_part(sbuf *o, const char *L, int lk, const char *H, int hk, int fmax) {
    sbuf ne = {0};
    bool any = frac_digits(&ne, L, lk, H, hk, fmax, true);
    /* Nothing after the integer part: value .0 */
    sbuf dummy = {0};
    bool none_ok = frac_digits(&dummy, L, lk, H, hk, 0, false);
    spud_free(dummy.p);
    if (!any && !none_ok) {
        spud_free(ne.p);
        return false;
    }
    if (any && none_ok) {
        sb_puts(o, "( \".\" ");
        sb_cat(o, &ne, "");
        sb_puts(o, " )?");
    } else if (any) {
        sb_puts(o, "\".\" ");
        sb_cat(o, &ne, "");
    } else {
        sb_puts(o, "\"\"");
    }
    if (ne.oom) o->oom = true;
    spud_free(ne.p);
    return true;
}

/* Non-negative decimals in [lo, hi] (has_hi false: unbounded; excl flags),
 * at most fmax fraction digits. false: empty. */
static bool dec_range(sbuf *o, const decnum *lo, bool lo_excl, const decnum *hi, bool hi_excl, int fmax) {
    int n_alts = 0;
    sbuf a = {0};
    if (hi && lo->ip == hi->ip) {
        sbuf f = {0};
        if (frac_part(&f, lo->fp, lo_excl ? FC_GT : FC_GE, hi->fp, hi_excl ? FC_LT : FC_LE, fmax)) {
            sb_printf(&a, "\"%llu\" ", (unsigned long long)lo->ip);
            sb_cat(&a, &f, "");
            n_alts++;
        }
        spud_free(f.p);
    } else {
        sbuf f = {0};
        if (frac_part(&f, lo->fp, lo_excl ? FC_GT : FC_GE, "", FC_NONE, fmax)) {
            sb_printf(&a, "\"%llu\" ", (unsigned long long)lo->ip);
            sb_cat(&a, &f, "");
            n_alts++;
        }
        spud_free(f.p);
        uint64_t from = lo->ip + 1, to = hi ? hi->ip - 1 : MAX_UINT_GEN;
        if (from <= to && from <= MAX_UINT_GEN) {
            if (n_alts++) sb_puts(&a, " | ");
            uint_range(&a, from, to);
            sb_printf(&a, " ( \".\" [0-9]{1,%d} )?", fmax);
        }
        if (hi) {
            sbuf g = {0};
            if (frac_part(&g, "", FC_NONE, hi->fp, hi_excl ? FC_LT : FC_LE, fmax)) {
                if (n_alts++) sb_puts(&a, " | ");
                sb_printf(&a, "\"%llu\" ", (unsigned long long)hi->ip);
                sb_cat(&a, &g, "");
            }
            spud_free(g.p);
        }
    }
    if (n_alts) {
        sb_puts(o, "( ");
        sb_cat(o, &a, "");
        sb_puts(o, " )");
    }
    if (a.oom) o->oom = true;
    spud_free(a.p);
    return n_alts > 0;
}

/* ---------------------------------------------------------------- patterns */

/* Code point sets as sorted, merged ranges. */
typedef struct {
    uint32_t lo, hi;
} cpr;

typedef struct {
    cpr *r;
    size_t n, cap;
    bool oom;
} cpset;

static void cs_add(cpset *s, uint32_t lo, uint32_t hi) {
    if (s->n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        cpr *r = spud_realloc(s->r, cap * sizeof *r);
        if (!r) {
            s->oom = true;
            return;
        }
        s->r = r;
        s->cap = cap;
    }
    s->r[s->n++] = (cpr){lo, hi};
}

static int cmp_cpr(const void *a, const void *b) {
    const cpr *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static void cs_norm(cpset *s) {
    if (!s->n) return;
    qsort(s->r, s->n, sizeof *s->r, cmp_cpr);
    size_t m = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (m && s->r[i].lo <= s->r[m - 1].hi + 1) {
            if (s->r[i].hi > s->r[m - 1].hi) s->r[m - 1].hi = s->r[i].hi;
        } else {
            s->r[m++] = s->r[i];
        }
    }
    s->n = m;
}

static void cs_negate(cpset *s) {
    cs_norm(s);
    cpset t = {0};
    uint32_t next = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->r[i].lo > next) cs_add(&t, next, s->r[i].lo - 1);
        next = s->r[i].hi + 1;
    }
    if (next <= 0x10FFFF) cs_add(&t, next, 0x10FFFF);
    spud_free(s->r);
    t.oom |= s->oom;
    *s = t;
}

static void cs_class(cpset *s, char k) { /* \d \w \s and negations */
    cpset t = {0};
    switch (k | 0x20) {
    case 'd': cs_add(&t, '0', '9'); break;
    case 'w':
        cs_add(&t, '0', '9'), cs_add(&t, 'A', 'Z'), cs_add(&t, 'a', 'z'), cs_add(&t, '_', '_');
        break;
    default: /* s: ECMAScript WhiteSpace and LineTerminator */
        cs_add(&t, 0x09, 0x0D), cs_add(&t, 0x20, 0x20), cs_add(&t, 0xA0, 0xA0), cs_add(&t, 0x1680, 0x1680);
        cs_add(&t, 0x2000, 0x200A), cs_add(&t, 0x2028, 0x2029), cs_add(&t, 0x202F, 0x202F);
        cs_add(&t, 0x205F, 0x205F), cs_add(&t, 0x3000, 0x3000), cs_add(&t, 0xFEFF, 0xFEFF);
        break;
    }
    if (k >= 'A' && k <= 'Z') cs_negate(&t);
    for (size_t i = 0; i < t.n; i++) cs_add(s, t.r[i].lo, t.r[i].hi);
    s->oom |= t.oom;
    spud_free(t.r);
}

/* A code point in a GBNF class or literal. */
static void sb_cp(sbuf *o, uint32_t c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        sb_printf(o, "%c", (char)c);
    else if (c < 0x100)
        sb_printf(o, "\\x%02X", c);
    else if (c < 0x10000)
        sb_printf(o, "\\u%04X", c);
    else
        sb_printf(o, "\\U%08X", c);
}

/* The JSON string characters of a code point set: raw characters where
 * JSON allows them, escapes for '"', '\' and control characters. */
static void sb_jset(sbuf *o, cpset *s) {
    cs_norm(s);
    int n_alts = 0;
    sbuf cls = {0};
    bool any_raw = false;
    for (size_t i = 0; i < s->n; i++) {
        uint32_t lo = s->r[i].lo, hi = s->r[i].hi;
        /* Pieces of [lo, hi] outside 00-1F, 22, 5C, D800-DFFF. */
        static const cpr holes[] = {{0, 0x1F}, {0x22, 0x22}, {0x5C, 0x5C}, {0xD800, 0xDFFF}};
        uint32_t cur = lo;
        for (size_t h = 0; h < 4 && cur <= hi; h++) {
            if (holes[h].hi < cur) continue;
            if (holes[h].lo > hi) break;
            if (holes[h].lo > cur) {
                sb_cp(&cls, cur);
                if (holes[h].lo - 1 > cur) sb_puts(&cls, "-"), sb_cp(&cls, holes[h].lo - 1);
                any_raw = true;
            }
            cur = holes[h].hi + 1;
        }
        if (cur <= hi) {
            sb_cp(&cls, cur);
            if (hi > cur) sb_puts(&cls, "-"), sb_cp(&cls, hi);
            any_raw = true;
        }
    }
    sb_puts(o, "( ");
    if (any_raw) {
        sb_puts(o, "[");
        sb_cat(o, &cls, "");
        sb_puts(o, "]");
        n_alts++;
    }
    if (cls.oom) o->oom = true;
    spud_free(cls.p);
    static const char *short_esc[0x20] = {[0x08] = "b", [0x09] = "t", [0x0A] = "n", [0x0C] = "f", [0x0D] = "r"};
    for (size_t i = 0; i < s->n; i++) {
        for (uint32_t c = s->r[i].lo; c <= s->r[i].hi && c < 0x60; c++) {
            if (c >= 0x20 && c != 0x22 && c != 0x5C) continue;
            if (n_alts++) sb_puts(o, " | ");
            if (c == 0x22)
                sb_puts(o, "\"\\\\\\\"\"");
            else if (c == 0x5C)
                sb_puts(o, "\"\\\\\\\\\"");
            else if (short_esc[c])
                sb_printf(o, "\"\\\\%s\"", short_esc[c]);
            else
                sb_printf(o, "\"\\\\u00%02x\"", c);
        }
    }
    sb_puts(o, " )");
}

typedef struct {
    spud_gbnf_builder *b;
    const char *s;
    size_t n, pos;
    int depth;
    uint64_t floor, cap; /* every repetition {m,n} becomes {min(n', max(m, floor)), n'}, n' = min(n, max(m, cap)) */
} rxp;

typedef struct {
    uint64_t lo, hi; /* length range in code points; hi UINT64_MAX: unbounded */
} rxlen;

#define RX_INF UINT64_MAX

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > RX_INF - b ? RX_INF : a + b; }
static uint64_t sat_mul(uint64_t a, uint64_t b) {
    if (a == 0 || b == 0) return 0;
    return a > RX_INF / b ? RX_INF : a * b;
}

__attribute__((format(printf, 3, 0))) static bool vrxfail(rxp *p, spud_status code, const char *fmt, va_list ap) {
    char msg[200];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return serr(p->b, code, "pattern at offset %zu: %s", p->pos, msg);
}

/* A pattern feature we cannot enforce (SPUD_ERR_UNSUPPORTED)... */
__attribute__((format(printf, 2, 3))) static bool rxerr(rxp *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const bool r = vrxfail(p, SPUD_ERR_UNSUPPORTED, fmt, ap);
    va_end(ap);
    return r;
}

/* ...and a pattern that is not a regular expression (SPUD_ERR_FORMAT). */
__attribute__((format(printf, 2, 3))) static bool rxbad(rxp *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const bool r = vrxfail(p, SPUD_ERR_FORMAT, fmt, ap);
    va_end(ap);
    return r;
}

static bool rx_cp(rxp *p, uint32_t *cp) { /* next code point of the pattern */
    if (p->pos >= p->n) return rxbad(p, "unexpected end");
    unsigned char c = (unsigned char)p->s[p->pos];
    int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (p->pos + (size_t)len > p->n) return rxbad(p, "invalid UTF-8");
    uint32_t v = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    for (int i = 1; i < len; i++) v = (v << 6) | ((unsigned char)p->s[p->pos + (size_t)i] & 0x3F);
    p->pos += (size_t)len;
    *cp = v;
    return true;
}

static int rx_hex(rxp *p, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p->pos >= p->n) return -1;
        char c = p->s[p->pos];
        int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (h < 0) return -1;
        v = v * 16 + h;
        p->pos++;
    }
    return v;
}

/* An escape after '\': adds its characters to s. in_class: \b is backspace. */
static bool rx_escape(rxp *p, cpset *s, bool in_class) {
    if (p->pos >= p->n) return rxbad(p, "pattern ends with '\\'");
    char c = p->s[p->pos++];
    switch (c) {
    case 'd': case 'D': case 'w': case 'W': case 's': case 'S': cs_class(s, c); return true;
    case 'n': cs_add(s, '\n', '\n'); return true;
    case 'r': cs_add(s, '\r', '\r'); return true;
    case 't': cs_add(s, '\t', '\t'); return true;
    case 'f': cs_add(s, '\f', '\f'); return true;
    case 'v': cs_add(s, '\v', '\v'); return true;
    case '0':
        if (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') return rxerr(p, "octal escapes are not supported");
        cs_add(s, 0, 0);
        return true;
    case 'b':
        if (in_class) {
            cs_add(s, 8, 8);
            return true;
        }
        return rxerr(p, "word boundaries (\\b) are not supported");
    case 'B': return rxerr(p, "word boundaries (\\B) are not supported");
    case 'x': {
        int v = rx_hex(p, 2);
        if (v < 0) return rxbad(p, "expecting two hex digits after \\x");
        cs_add(s, (uint32_t)v, (uint32_t)v);
        return true;
    }
    case 'u': {
        int v;
        if (p->pos < p->n && p->s[p->pos] == '{') {
            p->pos++;
            size_t start = p->pos;
            v = 0;
            while (p->pos < p->n && p->s[p->pos] != '}' && p->pos - start < 7) {
                int h = rx_hex(p, 1);
                if (h < 0) return rxbad(p, "bad \\u{...} escape");
                v = v * 16 + h;
            }
            if (p->pos >= p->n || p->s[p->pos] != '}' || p->pos == start || v > 0x10FFFF)
                return rxbad(p, "bad \\u{...} escape");
            p->pos++;
        } else {
            v = rx_hex(p, 4);
            if (v < 0) return rxbad(p, "expecting four hex digits after \\u");
            if (v >= 0xD800 && v <= 0xDFFF) return rxerr(p, "surrogate escapes are not supported");
        }
        cs_add(s, (uint32_t)v, (uint32_t)v);
        return true;
    }
    case 'c': {
        char l = p->pos < p->n ? p->s[p->pos] : 0;
        if (!((l >= 'a' && l <= 'z') || (l >= 'A' && l <= 'Z'))) return rxbad(p, "bad \\c escape");
        p->pos++;
        cs_add(s, (uint32_t)(l % 32), (uint32_t)(l % 32));
        return true;
    }
    case 'p': case 'P': return rxerr(p, "Unicode property escapes (\\p) are not supported");
    case 'k': return rxerr(p, "named backreferences are not supported");
    default:
        if (c >= '1' && c <= '9') return rxerr(p, "backreferences are not supported");
        if (strchr("^$\\.*+?()[]{}|/-", c)) {
            cs_add(s, (uint8_t)c, (uint8_t)c);
            return true;
        }
        return rxbad(p, "unknown escape '\\%c'", c);
    }
}

static bool rx_class(rxp *p, cpset *s) {
    bool neg = false;
    if (p->pos < p->n && p->s[p->pos] == '^') {
        neg = true;
        p->pos++;
    }
    cpset t = {0};
    for (;;) {
        if (p->pos >= p->n) {
            spud_free(t.r);
            return rxbad(p, "unterminated character class");
        }
        if (p->s[p->pos] == ']') {
            p->pos++;
            break;
        }
        cpset one = {0};
        bool ok;
        uint32_t lo = 0;
        bool single = true;
        if (p->s[p->pos] == '\\') {
            p->pos++;
            char e = p->pos < p->n ? p->s[p->pos] : 0;
            single = !strchr("dDwWsS", e);
            ok = rx_escape(p, &one, true);
            if (ok && one.oom) ok = soom(p->b);
            if (ok && single) lo = one.r[0].lo;
        } else {
            ok = rx_cp(p, &lo);
            if (ok) cs_add(&one, lo, lo);
            if (ok && one.oom) ok = soom(p->b);
        }
        if (!ok) {
            spud_free(one.r);
            spud_free(t.r);
            return false;
        }
        if (single && p->pos + 1 < p->n && p->s[p->pos] == '-' && p->s[p->pos + 1] != ']') {
            p->pos++;
            uint32_t hi;
            cpset two = {0};
            if (p->s[p->pos] == '\\') {
                p->pos++;
                char e = p->pos < p->n ? p->s[p->pos] : 0;
                if (strchr("dDwWsS", e)) {
                    spud_free(one.r);
                    spud_free(t.r);
                    return rxbad(p, "a class escape cannot end a range");
                }
                ok = rx_escape(p, &two, true);
                if (ok && two.oom) ok = soom(p->b);
                hi = ok ? two.r[0].lo : 0;
            } else {
                ok = rx_cp(p, &hi);
            }
            spud_free(two.r);
            if (!ok || hi < lo) {
                spud_free(one.r);
                spud_free(t.r);
                return ok ? rxbad(p, "character range out of order") : false;
            }
            cs_add(&t, lo, hi);
        } else {
            for (size_t i = 0; i < one.n; i++) cs_add(&t, one.r[i].lo, one.r[i].hi);
        }
        spud_free(one.r);
    }
    if (neg) cs_negate(&t);
    for (size_t i = 0; i < t.n; i++) cs_add(s, t.r[i].lo, t.r[i].hi);
    s->oom |= t.oom;
    spud_free(t.r);
    return true;
}

static bool rx_alt(rxp *p, sbuf *o, rxlen *len, bool top);

/* One atom (with its quantifier) of a sequence. */
static bool rx_atom(rxp *p, sbuf *o, rxlen *len) {
    sbuf a = {0};
    rxlen al = {1, 1};
    char c = p->s[p->pos];
    bool ok = true;
    if (c == '(') {
        p->pos++;
        if (p->pos < p->n && p->s[p->pos] == '?') {
            if (p->pos + 1 < p->n && p->s[p->pos + 1] == ':') {
                p->pos += 2;
            } else if (p->pos + 1 < p->n && p->s[p->pos + 1] == '<' && p->pos + 2 < p->n &&
                       p->s[p->pos + 2] != '=' && p->s[p->pos + 2] != '!') {
                const char *gt = memchr(p->s + p->pos, '>', p->n - p->pos);
                if (!gt) return rxbad(p, "unterminated group name");
                p->pos = (size_t)(gt - p->s) + 1;
            } else {
                return rxerr(p, "lookaround and other (?...) groups are not supported");
            }
        }
        if (++p->depth > 50) return rxerr(p, "groups nested too deeply");
        ok = rx_alt(p, &a, &al, false);
        p->depth--;
        if (ok && (p->pos >= p->n || p->s[p->pos] != ')')) ok = rxbad(p, "expecting ')'");
        if (ok) p->pos++;
    } else if (c == '[') {
        cpset s = {0};
        p->pos++;
        ok = rx_class(p, &s);
        if (ok && s.oom) ok = soom(p->b);
        if (ok && s.n == 0) ok = rxbad(p, "character class matches nothing");
        if (ok) sb_jset(&a, &s);
        if (s.oom) a.oom = true;
        spud_free(s.r);
    } else if (c == '.') {
        cpset s = {0};
        p->pos++;
        cs_add(&s, '\n', '\n'), cs_add(&s, '\r', '\r'), cs_add(&s, 0x2028, 0x2029);
        cs_negate(&s);
        if (s.oom) ok = soom(p->b);
        else sb_jset(&a, &s);
        if (s.oom) a.oom = true;
        spud_free(s.r);
    } else if (c == '\\') {
        cpset s = {0};
        p->pos++;
        ok = rx_escape(p, &s, false);
        if (ok && s.oom) ok = soom(p->b);
        if (ok) sb_jset(&a, &s);
        if (s.oom) a.oom = true;
        spud_free(s.r);
    } else if (c == '*' || c == '+' || c == '?' || c == '{') {
        if (c != '{') return rxbad(p, "'%c' with nothing to repeat", c);
        cpset s = {0}; /* a '{' that starts no quantifier is a literal (Annex B) */
        p->pos++;
        cs_add(&s, '{', '{');
        sb_jset(&a, &s);
        spud_free(s.r);
    } else if (c == ')' || c == '|') {
        return rxbad(p, "unexpected '%c'", c);
    } else if (c == '^' || c == '$') {
        return rxerr(p, "anchors are supported only at the start and end of the pattern");
    } else {
        uint32_t cp;
        cpset s = {0};
        ok = rx_cp(p, &cp);
        if (ok) {
            cs_add(&s, cp, cp);
            sb_jset(&a, &s);
        }
        spud_free(s.r);
    }
    if (!ok) {
        spud_free(a.p);
        return false;
    }
    /* Quantifier. */
    uint64_t mn = 1, mx = 1;
    bool quant = false;
    if (p->pos < p->n) {
        char q = p->s[p->pos];
        if (q == '*' || q == '+' || q == '?') {
            p->pos++;
            quant = true;
            mn = q == '+' ? 1 : 0;
            mx = q == '?' ? 1 : RX_INF;
        } else if (q == '{') {
            size_t save = p->pos++;
            uint64_t v1 = 0, v2;
            size_t d0 = p->pos;
            while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9' && v1 < 1000000)
                v1 = v1 * 10 + (uint64_t)(p->s[p->pos++] - '0');
            bool ok2 = p->pos > d0;
            v2 = v1;
            if (ok2 && p->pos < p->n && p->s[p->pos] == ',') {
                p->pos++;
                size_t d1 = p->pos;
                v2 = 0;
                while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9' && v2 < 1000000)
                    v2 = v2 * 10 + (uint64_t)(p->s[p->pos++] - '0');
                if (p->pos == d1) v2 = RX_INF;
            }
            if (ok2 && p->pos < p->n && p->s[p->pos] == '}') {
                p->pos++;
                quant = true;
                mn = v1;
                mx = v2;
                if (mx < mn) {
                    spud_free(a.p);
                    return rxbad(p, "quantifier {%llu,%llu} out of order", (unsigned long long)mn,
                                 (unsigned long long)mx);
                }
                if (mn > MAX_PATTERN_REPEAT || (mx != RX_INF && mx > MAX_PATTERN_REPEAT)) {
                    spud_free(a.p);
                    return rxerr(p, "quantifier count above %d", MAX_PATTERN_REPEAT);
                }
            } else {
                p->pos = save; /* not a quantifier: '{' is literal, seen next */
            }
        }
        if (quant && p->pos < p->n && p->s[p->pos] == '?') p->pos++; /* lazy: same language */
        if (quant && p->pos < p->n && strchr("*+?", p->s[p->pos]))
            return spud_free(a.p), rxbad(p, "nothing to repeat");
    }
    if (quant) { /* bounded for minLength / maxLength: a subset of the pattern's strings */
        if (mx > p->cap) mx = mn > p->cap ? mn : p->cap;
        if (mn < p->floor) mn = mx < p->floor ? mx : p->floor;
    }
    sb_cat(o, &a, "\"\"");
    if (quant) {
        if (mx == RX_INF)
            sb_printf(o, "{%llu,}", (unsigned long long)mn);
        else
            sb_printf(o, "{%llu,%llu}", (unsigned long long)mn, (unsigned long long)mx);
    }
    if (a.oom) o->oom = true;
    spud_free(a.p);
    len->lo = sat_mul(al.lo, mn);
    len->hi = mx == RX_INF ? (al.hi == 0 ? 0 : RX_INF) : sat_mul(al.hi, mx);
    return true;
}

/* A sequence, up to '|', ')' or the end. At top level, a leading '^' and a
 * trailing '$' anchor the branch. */
static bool rx_seq(rxp *p, sbuf *o, rxlen *len, bool top, bool *bol, bool *eol) {
    len->lo = len->hi = 0;
    *bol = *eol = false;
    if (top && p->pos < p->n && p->s[p->pos] == '^') {
        *bol = true;
        p->pos++;
    }
    sb_puts(o, "( \"\"");
    while (p->pos < p->n && p->s[p->pos] != '|' && p->s[p->pos] != ')') {
        if (top && p->s[p->pos] == '$' && (p->pos + 1 == p->n || p->s[p->pos + 1] == '|')) {
            *eol = true;
            p->pos++;
            break;
        }
        rxlen al = {0, 0};
        sb_puts(o, " ");
        if (!rx_atom(p, o, &al)) return false;
        len->lo = sat_add(len->lo, al.lo);
        len->hi = sat_add(len->hi, al.hi);
    }
    sb_puts(o, " )");
    return true;
}

static bool rx_alt(rxp *p, sbuf *o, rxlen *len, bool top) {
    len->lo = RX_INF;
    len->hi = 0;
    int n = 0;
    sb_puts(o, "( ");
    for (;;) {
        rxlen sl;
        bool bol, eol;
        sbuf seq = {0};
        if (n++) sb_puts(o, " | ");
        if (!rx_seq(p, &seq, &sl, top, &bol, &eol)) {
            spud_free(seq.p);
            return false;
        }
        if (top) {
            /* An unanchored side matches inside any string: any characters around it. */
            if (!prim(p->b, "jchar")) {
                spud_free(seq.p);
                return false;
            }
            uint64_t amx = p->cap, amn = p->floor < amx ? p->floor : amx; /* jchar* under the floor/cap */
            char any[64];
            if (amx == RX_INF)
                snprintf(any, sizeof any, "jchar{%llu,}", (unsigned long long)amn);
            else
                snprintf(any, sizeof any, "jchar{%llu,%llu}", (unsigned long long)amn, (unsigned long long)amx);
            sb_puts(o, "( ");
            for (int side = 0; side < 2; side++) {
                if (!(side == 0 ? bol : eol)) {
                    sb_printf(o, side ? " %s" : "%s ", any);
                    sl.lo = sat_add(sl.lo, amn);
                    sl.hi = sat_add(sl.hi, amx);
                }
                if (side == 0) sb_cat(o, &seq, "\"\"");
            }
            sb_puts(o, " )");
        } else {
            sb_cat(o, &seq, "\"\"");
        }
        if (seq.oom) o->oom = true;
        spud_free(seq.p);
        if (sl.lo < len->lo) len->lo = sl.lo;
        if (sl.hi > len->hi) len->hi = sl.hi;
        if (p->pos < p->n && p->s[p->pos] == '|') {
            p->pos++;
            continue;
        }
        break;
    }
    sb_puts(o, " )");
    return true;
}

/* The grammar (inside the quotes) of strings the pattern matches somewhere
 * (JSON Schema patterns are not anchored), with repetitions bounded by
 * floor and cap (see rxp). */
static bool pattern_expr(spud_gbnf_builder *b, const char *pat, uint64_t floor, uint64_t cap, sbuf *o, rxlen *len) {
    rxp p = {.b = b, .s = pat, .n = strlen(pat), .floor = floor, .cap = cap};
    if (!rx_alt(&p, o, len, true)) return false;
    if (p.pos < p.n) return rxbad(&p, "unexpected ')'");
    return true;
}

/* The pattern's length range with a given floor and cap (no output kept). */
static bool pattern_len(spud_gbnf_builder *b, const char *pat, uint64_t floor, uint64_t cap, rxlen *len) {
    sbuf o = {0};
    bool ok = pattern_expr(b, pat, floor, cap, &o, len);
    spud_free(o.p);
    return ok;
}

/* Floor and cap for the pattern's repetitions so that every string it then
 * matches has a length in [mn, mx]: the largest cap, then the smallest
 * floor. false (no error set) if there are none. */
static bool pattern_bounds(spud_gbnf_builder *b, const char *pat, uint64_t mn, uint64_t mx, uint64_t *floor,
                           uint64_t *cap) {
    rxlen len;
    *floor = 0;
    *cap = RX_INF;
    if (!pattern_len(b, pat, 0, RX_INF, &len)) return false;
    if (len.hi > mx) {
        uint64_t lo = 0, hi = mx; /* hi(cap) grows with cap: the largest cap with hi(cap) <= mx */
        if (!pattern_len(b, pat, 0, 0, &len)) return false;
        if (len.hi > mx) return false;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo + 1) / 2;
            if (!pattern_len(b, pat, 0, mid, &len)) return false;
            if (len.hi <= mx)
                lo = mid;
            else
                hi = mid - 1;
        }
        *cap = lo;
    }
    if (!pattern_len(b, pat, 0, *cap, &len)) return false;
    if (len.lo < mn) {
        uint64_t lo = 1, hi = mn; /* lo(floor) grows with floor: the smallest floor with lo(floor) >= mn */
        if (!pattern_len(b, pat, mn, *cap, &len)) return false;
        if (len.lo < mn) return false;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (!pattern_len(b, pat, mid, *cap, &len)) return false;
            if (len.lo >= mn)
                hi = mid;
            else
                lo = mid + 1;
        }
        *floor = lo;
    }
    return true;
}

/* ---------------------------------------------------------------- schemas */

enum {
    T_NULL = 1,
    T_BOOL = 2,
    T_OBJ = 4,
    T_ARR = 8,
    T_STR = 16,
    T_INT = 32,
    T_NUM = 64 | 32, /* number includes integer */
    T_ALL = 127,
};

static const struct {
    const char *name;
    int bits;
} type_names[] = {{"null", T_NULL},  {"boolean", T_BOOL}, {"object", T_OBJ}, {"array", T_ARR},
                  {"string", T_STR}, {"integer", T_INT},  {"number", T_NUM}};

static const char *const annotations[] = {"title",   "description", "default",  "examples",  "$schema",
                                          "$id",     "$comment",    "deprecated", "readOnly", "writeOnly",
                                          "$defs",   "definitions", "contentMediaType", "contentEncoding",
                                          "strict", NULL};
static const char *const supported[] = {"type",      "properties", "required",  "additionalProperties",
                                        "items",     "prefixItems", "minItems", "maxItems",
                                        "enum",      "const",      "anyOf",     "oneOf",
                                        "allOf",     "$ref",       "minLength", "maxLength",
                                        "pattern",   "format",     "minimum",   "maximum",
                                        "exclusiveMinimum", "exclusiveMaximum", "uniqueItems", NULL};

static bool in_list(const char *const *list, const char *k) {
    for (; *list; list++)
        if (!strcmp(*list, k)) return true;
    return false;
}

static json_object *jget(json_object *o, const char *k) {
    json_object *v = NULL;
    return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, k, &v) ? v : NULL;
}

static bool is_num(json_object *v) {
    return json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

/* Keyword check of one schema object: unknown keywords (strict: error), and
 * the shape of every supported keyword's value (always). */
static bool check_schema(spud_gbnf_builder *b, json_object *s) {
    json_object_object_foreach(s, k, v) {
        if (in_list(annotations, k)) continue;
        if (!in_list(supported, k)) {
            if (b->strict)
                return serr(b, SPUD_ERR_UNSUPPORTED, "unsupported keyword '%s' (strict mode cannot enforce it)", k);
            continue;
        }
        if (!strcmp(k, "type")) {
            bool ok = json_object_is_type(v, json_type_string) ||
                      (json_object_is_type(v, json_type_array) && json_object_array_length(v) > 0);
            size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 1;
            for (size_t i = 0; ok && i < n; i++) {
                json_object *t = json_object_is_type(v, json_type_array) ? json_object_array_get_idx(v, i) : v;
                ok = json_object_is_type(t, json_type_string);
                bool known = false;
                for (size_t j = 0; ok && j < sizeof type_names / sizeof type_names[0]; j++)
                    known |= !strcmp(json_object_get_string(t), type_names[j].name);
                if (ok && !known)
                    return serr(b, SPUD_ERR_FORMAT, "unknown type '%s'", json_object_get_string(t));
            }
            if (!ok) return serr(b, SPUD_ERR_FORMAT, "'type' must be a type name or a non-empty list of them");
        } else if (!strcmp(k, "properties")) {
            if (!json_object_is_type(v, json_type_object)) return serr(b, SPUD_ERR_FORMAT, "'properties' must be an object");
        } else if (!strcmp(k, "required")) {
            bool ok = json_object_is_type(v, json_type_array);
            for (size_t i = 0; ok && i < json_object_array_length(v); i++)
                ok = json_object_is_type(json_object_array_get_idx(v, i), json_type_string);
            if (!ok) return serr(b, SPUD_ERR_FORMAT, "'required' must be an array of strings");
        } else if (!strcmp(k, "additionalProperties") || !strcmp(k, "items")) {
            if (json_object_is_type(v, json_type_array) && !strcmp(k, "items"))
                return serr(b, SPUD_ERR_FORMAT, "'items' as an array is draft-07 tuple syntax; use 'prefixItems'");
            if (!json_object_is_type(v, json_type_object) && !json_object_is_type(v, json_type_boolean))
                return serr(b, SPUD_ERR_FORMAT, "'%s' must be a schema (object or boolean)", k);
        } else if (!strcmp(k, "prefixItems") || !strcmp(k, "enum") || !strcmp(k, "anyOf") ||
                   !strcmp(k, "oneOf") || !strcmp(k, "allOf")) {
            if (!json_object_is_type(v, json_type_array) ||
                (strcmp(k, "prefixItems") && json_object_array_length(v) == 0))
                return serr(b, SPUD_ERR_FORMAT, "'%s' must be a%s array", k,
                            strcmp(k, "prefixItems") ? " non-empty" : "n");
        } else if (!strcmp(k, "minItems") || !strcmp(k, "maxItems") || !strcmp(k, "minLength") ||
                   !strcmp(k, "maxLength")) {
            bool ok = json_object_is_type(v, json_type_int) ||
                      (json_object_is_type(v, json_type_double) && json_object_get_double(v) == floor(json_object_get_double(v)));
            if (!ok || json_object_get_double(v) < 0 || json_object_get_double(v) > 1e15)
                return serr(b, SPUD_ERR_FORMAT, "'%s' must be a non-negative integer", k);
        } else if (!strcmp(k, "minimum") || !strcmp(k, "maximum") || !strcmp(k, "exclusiveMinimum") ||
                   !strcmp(k, "exclusiveMaximum")) {
            if (!is_num(v) || !isfinite(json_object_get_double(v)))
                return serr(b, SPUD_ERR_FORMAT, "'%s' must be a number", k);
        } else if (!strcmp(k, "pattern") || !strcmp(k, "format") || !strcmp(k, "$ref")) {
            if (!json_object_is_type(v, json_type_string)) return serr(b, SPUD_ERR_FORMAT, "'%s' must be a string", k);
        } else if (!strcmp(k, "uniqueItems")) {
            if (!json_object_is_type(v, json_type_boolean))
                return serr(b, SPUD_ERR_FORMAT, "'uniqueItems' must be a boolean");
            if (json_object_get_boolean(v) && b->strict)
                return serr(b, SPUD_ERR_UNSUPPORTED, "'uniqueItems': true cannot be enforced in strict mode");
        }
    }
    return true;
}

static int types_of(json_object *s) {
    json_object *t = jget(s, "type");
    if (!t) return T_ALL;
    int bits = 0;
    size_t n = json_object_is_type(t, json_type_array) ? json_object_array_length(t) : 1;
    for (size_t i = 0; i < n; i++) {
        json_object *x = json_object_is_type(t, json_type_array) ? json_object_array_get_idx(t, i) : t;
        for (size_t j = 0; j < sizeof type_names / sizeof type_names[0]; j++)
            if (!strcmp(json_object_get_string(x), type_names[j].name)) bits |= type_names[j].bits;
    }
    return bits;
}

static json_object *types_json(int bits) {
    json_object *a = json_object_new_array();
    if (!a) return NULL;
    if ((bits & T_NUM) == T_NUM) {
        json_object_array_add(a, json_object_new_string("number"));
    } else if (bits & T_INT) {
        json_object_array_add(a, json_object_new_string("integer"));
    }
    for (size_t j = 0; j < 5; j++)
        if (bits & type_names[j].bits) json_object_array_add(a, json_object_new_string(type_names[j].name));
    return a;
}

/* The JSON type bits of a value. */
static int value_type(json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_null: return T_NULL;
    case json_type_boolean: return T_BOOL;
    case json_type_object: return T_OBJ;
    case json_type_array: return T_ARR;
    case json_type_string: return T_STR;
    case json_type_int: return T_INT;
    case json_type_double: {
        double d = json_object_get_double(v);
        return d == floor(d) && isfinite(d) ? T_INT : (T_NUM & ~T_INT);
    }
    }
    return 0;
}

/* Resolve a "#..." reference against the document. */
static json_object *resolve_ref(spud_gbnf_builder *b, const char *ref) {
    if (ref[0] != '#') return serr(b, SPUD_ERR_UNSUPPORTED, "$ref '%s': only references inside the document (#...) are supported", ref), NULL;
    json_object *cur = b->doc;
    const char *p = ref + 1;
    if (*p && *p != '/') return serr(b, SPUD_ERR_UNSUPPORTED, "$ref '%s': anchors are not supported", ref), NULL;
    while (*p == '/') {
        p++;
        char seg[256];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof seg) {
            char c = *p++;
            if (c == '~' && (*p == '0' || *p == '1')) {
                c = *p++ == '0' ? '~' : '/';
            } else if (c == '%' && p[0] && p[1]) {
                int h1 = p[0], h2 = p[1];
                int v1 = h1 >= '0' && h1 <= '9' ? h1 - '0' : (h1 | 32) >= 'a' && (h1 | 32) <= 'f' ? (h1 | 32) - 'a' + 10 : -1;
                int v2 = h2 >= '0' && h2 <= '9' ? h2 - '0' : (h2 | 32) >= 'a' && (h2 | 32) <= 'f' ? (h2 | 32) - 'a' + 10 : -1;
                if (v1 >= 0 && v2 >= 0) {
                    c = (char)(v1 * 16 + v2);
                    p += 2;
                }
            }
            seg[n++] = c;
        }
        seg[n] = 0;
        json_object *next = NULL;
        if (json_object_is_type(cur, json_type_object)) {
            json_object_object_get_ex(cur, seg, &next);
        } else if (json_object_is_type(cur, json_type_array)) {
            char *end;
            long i = strtol(seg, &end, 10);
            if (*seg && !*end && i >= 0 && (size_t)i < json_object_array_length(cur))
                next = json_object_array_get_idx(cur, (size_t)i);
        }
        if (!next) return serr(b, SPUD_ERR_FORMAT, "$ref '%s' points to nothing", ref), NULL;
        cur = next;
    }
    return cur;
}

static gref *find_ref(spud_gbnf_builder *b, const char *ref) {
    for (size_t i = 0; i < b->n_refs; i++)
        if (b->refs[i].doc == b->doc && !strcmp(b->refs[i].ptr, ref)) return &b->refs[i];
    return NULL;
}

/* Constraint keywords of s other than `except` (annotations do not count). */
static bool has_constraints(json_object *s, const char *except, const char *except2) {
    json_object_object_foreach(s, k, v) {
        (void)v;
        if (in_list(annotations, k) || (except && !strcmp(k, except)) || (except2 && !strcmp(k, except2))) continue;
        return true;
    }
    return false;
}

/* A shallow copy of s without keys `drop` and `drop2`. */
static json_object *copy_without(json_object *s, const char *drop, const char *drop2) {
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    json_object_object_foreach(s, k, v) {
        if ((drop && !strcmp(k, drop)) || (drop2 && !strcmp(k, drop2))) continue;
        json_object_object_add(o, k, json_object_get(v));
    }
    return o;
}

static json_object *merge(spud_gbnf_builder *b, json_object *x, json_object *y);

/* Too deep: most likely a recursive $ref merged with other keywords, which
 * cannot be inlined (it would never end). */
static bool depth_error(spud_gbnf_builder *b) {
    if (b->path_len > 120) { /* the path repeats: keep its start */
        memcpy(b->path + 117, "...", 4);
        b->path_len = 120;
    }
    if (b->last_ref)
        return serr(b, SPUD_ERR_UNSUPPORTED, "$ref '%s' merged with other keywords (allOf or siblings) recurses without end; "
                    "strict mode cannot enforce it", b->last_ref);
    return serr(b, SPUD_ERR_RANGE, "schema nested too deeply (more than %d levels)", MAX_DEPTH);
}

/* s with $ref and allOf folded in (a new reference); NULL on error. */
static json_object *normalize(spud_gbnf_builder *b, json_object *s) {
    if (json_object_is_type(s, json_type_boolean)) {
        if (!json_object_get_boolean(s)) return serr(b, SPUD_ERR_FORMAT, "the schema false matches nothing"), NULL;
        json_object *o = json_object_new_object();
        if (!o) soom(b);
        return o;
    }
    if (!json_object_is_type(s, json_type_object)) return serr(b, SPUD_ERR_FORMAT, "a schema must be an object or a boolean"), NULL;
    if (!check_schema(b, s)) return NULL;
    if (++b->depth > MAX_DEPTH) {
        b->depth--;
        return depth_error(b), NULL;
    }
    json_object *cur = json_object_get(s), *ref = jget(s, "$ref"), *all = jget(s, "allOf");
    if (ref) {
        const char *r = json_object_get_string(ref);
        gref *g = find_ref(b, r);
        if (g && g->busy) {
            json_object_put(cur);
            b->depth--;
            return serr(b, SPUD_ERR_UNSUPPORTED, "cannot combine keywords with the recursive $ref '%s'", r), NULL;
        }
        b->last_ref = r;
        json_object *target = resolve_ref(b, r), *rest = copy_without(s, "$ref", NULL);
        json_object *m = target && rest ? merge(b, rest, target) : NULL;
        if (!rest) soom(b);
        json_object_put(rest);
        json_object_put(cur);
        cur = m;
    }
    if (cur && all) {
        json_object *m = copy_without(cur, "allOf", NULL);
        if (!m) soom(b);
        for (size_t i = 0; m && i < json_object_array_length(all); i++) {
            size_t old = path_push_idx(b, "allOf", i);
            json_object *n = merge(b, m, json_object_array_get_idx(all, i));
            path_pop(b, old);
            json_object_put(m);
            m = n;
        }
        json_object_put(cur);
        cur = m;
    }
    b->depth--;
    return cur;
}

/* {"allOf": [x, y]} (for sub-schemas merged lazily). true/absent sides drop out. */
static json_object *all_of(json_object *x, json_object *y) {
    if (!x || (json_object_is_type(x, json_type_boolean) && json_object_get_boolean(x))) return json_object_get(y);
    if (!y || (json_object_is_type(y, json_type_boolean) && json_object_get_boolean(y))) return json_object_get(x);
    if (json_object_is_type(x, json_type_boolean)) return json_object_get(x); /* false */
    if (json_object_is_type(y, json_type_boolean)) return json_object_get(y);
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    if (!o || !a) {
        json_object_put(o);
        json_object_put(a);
        return NULL;
    }
    json_object_array_add(a, json_object_get(x));
    json_object_array_add(a, json_object_get(y));
    json_object_object_add(o, "allOf", a);
    return o;
}

static bool is_false(json_object *s) { return s && json_object_is_type(s, json_type_boolean) && !json_object_get_boolean(s); }

static bool json_in(json_object *arr, json_object *v) {
    for (size_t i = 0; i < json_object_array_length(arr); i++)
        if (json_object_equal(json_object_array_get_idx(arr, i), v)) return true;
    return false;
}

/* The value list of enum/const (a new array), or NULL if neither. */
static json_object *enum_values(json_object *s) {
    json_object *e = jget(s, "enum"), *c = NULL;
    if (json_object_is_type(s, json_type_object) && json_object_object_get_ex(s, "const", &c)) {
        json_object *a = json_object_new_array();
        if (!a) return NULL;
        if (!e || json_in(e, c)) json_object_array_add(a, json_object_get(c));
        return a;
    }
    if (!e) return NULL;
    json_object *a = json_object_new_array();
    if (!a) return NULL;
    for (size_t i = 0; i < json_object_array_length(e); i++)
        json_object_array_add(a, json_object_get(json_object_array_get_idx(e, i)));
    return a;
}

static bool has_key(json_object *s, const char *k) {
    json_object *v;
    return json_object_is_type(s, json_type_object) && json_object_object_get_ex(s, k, &v);
}

static bool cross_product(spud_gbnf_builder *b, json_object *o, const char *key, json_object *la, json_object *lb) {
    size_t na = json_object_array_length(la), nb = json_object_array_length(lb);
    if (na * nb > MAX_ALTS) return serr(b, SPUD_ERR_RANGE, "allOf of '%s' lists: %zu x %zu alternatives is too many", key, na, nb);
    json_object *arr = json_object_new_array();
    if (!arr) return soom(b);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++) {
            json_object *c = all_of(json_object_array_get_idx(la, i), json_object_array_get_idx(lb, j));
            if (!c) {
                json_object_put(arr);
                return soom(b);
            }
            json_object_array_add(arr, c);
        }
    json_object_object_add(o, key, arr);
    return true;
}

/* x AND y as one schema (a new reference); NULL on error. */
static json_object *merge(spud_gbnf_builder *b, json_object *x0, json_object *y0) {
    json_object *x = normalize(b, x0), *y = x ? normalize(b, y0) : NULL, *o = NULL;
    if (!x || !y) goto fail;
    if (!(o = json_object_new_object())) goto oom;
    int t = types_of(x) & types_of(y);
    if (t == 0) {
        serr(b, SPUD_ERR_FORMAT, "allOf: the types do not intersect (no value can match)");
        goto fail;
    }
    if (t != T_ALL) json_object_object_add(o, "type", types_json(t));
    /* enum / const: intersection */
    {
        json_object *ex = enum_values(x), *ey = enum_values(y), *r = NULL;
        if (ex && ey) {
            r = json_object_new_array();
            for (size_t i = 0; r && i < json_object_array_length(ex); i++)
                if (json_in(ey, json_object_array_get_idx(ex, i)))
                    json_object_array_add(r, json_object_get(json_object_array_get_idx(ex, i)));
        } else {
            r = json_object_get(ex ? ex : ey);
        }
        json_object_put(ex);
        json_object_put(ey);
        if (r && json_object_array_length(r) == 0) {
            json_object_put(r);
            serr(b, SPUD_ERR_FORMAT, "allOf: no value is in every enum/const");
            goto fail;
        }
        if (r) json_object_object_add(o, "enum", r);
    }
    /* bounds: the tighter one */
    static const struct {
        const char *k;
        int max; /* 1: keep the larger value */
    } bounds[] = {{"minimum", 1},   {"exclusiveMinimum", 1}, {"maximum", 0}, {"exclusiveMaximum", 0},
                  {"minLength", 1}, {"maxLength", 0},        {"minItems", 1}, {"maxItems", 0}};
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        json_object *a = jget(x, bounds[i].k), *c = jget(y, bounds[i].k);
        json_object *r = !a ? c : !c ? a : ((json_object_get_double(a) > json_object_get_double(c)) == bounds[i].max ? a : c);
        if (r) json_object_object_add(o, bounds[i].k, json_object_get(r));
    }
    static const char *const same[] = {"pattern", "format"};
    for (size_t i = 0; i < 2; i++) {
        json_object *a = jget(x, same[i]), *c = jget(y, same[i]);
        if (a && c && strcmp(json_object_get_string(a), json_object_get_string(c))) {
            serr(b, SPUD_ERR_UNSUPPORTED, "allOf: two different '%s' values cannot be combined", same[i]);
            goto fail;
        }
        if (a || c) json_object_object_add(o, same[i], json_object_get(a ? a : c));
    }
    /* objects */
    {
        json_object *px = jget(x, "properties"), *py = jget(y, "properties");
        json_object *ax = jget(x, "additionalProperties"), *ay = jget(y, "additionalProperties");
        json_object *rx = jget(x, "required"), *ry = jget(y, "required");
        if (px || py || ax || ay) {
            json_object *props = json_object_new_object();
            if (!props) goto oom;
            json_object_object_add(o, "properties", props);
            for (int side = 0; side < 2; side++) {
                json_object *pp = side ? py : px;
                if (!pp) continue;
                json_object_object_foreach(pp, k, v) {
                    (void)v;
                    if (has_key(props, k)) continue;
                    json_object *sx = jget(px, k), *sy = jget(py, k);
                    if (!sx && has_key(x, "additionalProperties")) sx = ax;
                    if (!sy && has_key(y, "additionalProperties")) sy = ay;
                    json_object *m = all_of(sx, sy);
                    if (!m) goto oom;
                    json_object_object_add(props, k, m);
                }
            }
            if (ax || ay) {
                json_object *m = all_of(ax, ay);
                if (!m) goto oom;
                json_object_object_add(o, "additionalProperties", m);
            }
        }
        if (rx || ry) {
            json_object *req = json_object_new_array();
            if (!req) goto oom;
            for (int side = 0; side < 2; side++) {
                json_object *rr = side ? ry : rx;
                for (size_t i = 0; rr && i < json_object_array_length(rr); i++) {
                    json_object *n = json_object_array_get_idx(rr, i);
                    if (!json_in(req, n)) json_object_array_add(req, json_object_get(n));
                }
            }
            json_object_object_add(o, "required", req);
        }
    }
    /* arrays */
    {
        json_object *ix = jget(x, "items"), *iy = jget(y, "items");
        json_object *fx = jget(x, "prefixItems"), *fy = jget(y, "prefixItems");
        if (fx || fy) {
            size_t nx = fx ? json_object_array_length(fx) : 0, ny = fy ? json_object_array_length(fy) : 0;
            size_t n = nx > ny ? nx : ny;
            json_object *arr = json_object_new_array();
            if (!arr) goto oom;
            json_object_object_add(o, "prefixItems", arr);
            for (size_t i = 0; i < n; i++) {
                json_object *m = all_of(i < nx ? json_object_array_get_idx(fx, i) : ix,
                                        i < ny ? json_object_array_get_idx(fy, i) : iy);
                if (!m) m = json_object_new_boolean(1);
                json_object_array_add(arr, m);
            }
        }
        if (ix || iy) {
            json_object *m = all_of(ix, iy);
            if (!m) goto oom;
            json_object_object_add(o, "items", m);
        }
    }
    /* anyOf / oneOf lists: kept, or crossed when both sides have one */
    static const char *const lists[] = {"anyOf", "oneOf"};
    for (size_t i = 0; i < 2; i++) {
        json_object *la = jget(x, lists[i]), *lb = jget(y, lists[i]);
        if (la && lb) {
            if (!cross_product(b, o, lists[i], la, lb)) goto fail;
        } else if (la || lb) {
            json_object_object_add(o, lists[i], json_object_get(la ? la : lb));
        }
    }
    json_object_put(x);
    json_object_put(y);
    return o;
oom:
    soom(b);
fail:
    json_object_put(x);
    json_object_put(y);
    json_object_put(o);
    return NULL;
}

/* ---- value checks (for enum/const values against the other keywords) ---- */

static size_t utf8_count(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

/* 1: v satisfies s; 0: it does not; -1: cannot tell (pattern, format). */
static int value_ok(spud_gbnf_builder *b, json_object *s, json_object *v, int depth) {
    if (depth > MAX_DEPTH) return -1;
    if (json_object_is_type(s, json_type_boolean)) return json_object_get_boolean(s);
    if (!json_object_is_type(s, json_type_object)) return -1;
    int result = 1;
    json_object *r = jget(s, "$ref");
    if (r) {
        gref *g = find_ref(b, json_object_get_string(r));
        json_object *t = g && g->busy ? NULL : resolve_ref(b, json_object_get_string(r));
        int k = t ? value_ok(b, t, v, depth + 1) : -1;
        if (k <= 0) return k;
    }
    int vt = value_type(v);
    if (!(types_of(s) & vt)) return 0;
    json_object *e = enum_values(s);
    if (e) {
        bool in = json_in(e, v);
        json_object_put(e);
        if (!in) return 0;
    }
    if (jget(s, "pattern") || jget(s, "format")) result = -1;
    if (vt == T_STR) {
        size_t n = utf8_count(json_object_get_string(v), (size_t)json_object_get_string_len(v));
        json_object *mn = jget(s, "minLength"), *mx = jget(s, "maxLength");
        if ((mn && (double)n < json_object_get_double(mn)) || (mx && (double)n > json_object_get_double(mx))) return 0;
    }
    if (vt & T_NUM) {
        double d = json_object_get_double(v);
        json_object *k;
        if ((k = jget(s, "minimum")) && d < json_object_get_double(k)) return 0;
        if ((k = jget(s, "maximum")) && d > json_object_get_double(k)) return 0;
        if ((k = jget(s, "exclusiveMinimum")) && d <= json_object_get_double(k)) return 0;
        if ((k = jget(s, "exclusiveMaximum")) && d >= json_object_get_double(k)) return 0;
    }
    if (vt == T_ARR) {
        size_t n = json_object_array_length(v);
        json_object *mn = jget(s, "minItems"), *mx = jget(s, "maxItems"), *pf = jget(s, "prefixItems"),
                    *it = jget(s, "items");
        if ((mn && (double)n < json_object_get_double(mn)) || (mx && (double)n > json_object_get_double(mx))) return 0;
        size_t np = pf ? json_object_array_length(pf) : 0;
        for (size_t i = 0; i < n; i++) {
            json_object *sub = i < np ? json_object_array_get_idx(pf, i) : it;
            if (!sub) continue;
            int k = value_ok(b, sub, json_object_array_get_idx(v, i), depth + 1);
            if (k == 0) return 0;
            if (k < 0) result = -1;
        }
    }
    if (vt == T_OBJ) {
        json_object *props = jget(s, "properties"), *ap = jget(s, "additionalProperties"), *req = jget(s, "required");
        for (size_t i = 0; req && i < json_object_array_length(req); i++)
            if (!has_key(v, json_object_get_string(json_object_array_get_idx(req, i)))) return 0;
        json_object_object_foreach(v, k, x) {
            json_object *sub = jget(props, k);
            if (!sub) sub = ap;
            if (!sub) continue;
            int q = value_ok(b, sub, x, depth + 1);
            if (q == 0) return 0;
            if (q < 0) result = -1;
        }
    }
    static const char *const lists[] = {"anyOf", "oneOf", "allOf"};
    for (size_t li = 0; li < 3; li++) {
        json_object *l = jget(s, lists[li]);
        if (!l) continue;
        int n_ok = 0, n_unknown = 0;
        for (size_t i = 0; i < json_object_array_length(l); i++) {
            int q = value_ok(b, json_object_array_get_idx(l, i), v, depth + 1);
            n_ok += q == 1;
            n_unknown += q < 0;
        }
        size_t n = json_object_array_length(l);
        if (li == 0 && n_ok == 0) {
            if (!n_unknown) return 0;
            result = -1;
        }
        if (li == 1) {
            if (n_ok > 1 || (n_ok == 0 && !n_unknown)) return 0;
            if (n_unknown) result = -1;
        }
        if (li == 2 && (size_t)n_ok != n) {
            if ((size_t)(n_ok + n_unknown) != n) return 0;
            result = -1;
        }
    }
    return result;
}

/* ---- oneOf: can two (normalized) branches both match one value? ---- */

static int gen_types(json_object *s);

static bool disjoint(spud_gbnf_builder *b, json_object *x, json_object *y, int depth) {
    if (depth > 8) return false;
    if (is_false(x) || is_false(y)) return true;
    if (!json_object_is_type(x, json_type_object) || !json_object_is_type(y, json_type_object)) return false;
    json_object *ex = enum_values(x), *ey = enum_values(y);
    bool result = false;
    int tx = types_of(x), ty = types_of(y);
    if (ex && ey) { /* both value lists: disjoint lists */
        result = true;
        for (size_t i = 0; result && i < json_object_array_length(ex); i++)
            result = !json_in(ey, json_object_array_get_idx(ex, i));
    } else if (ex || ey) { /* values of one side all refused by the other */
        json_object *e = ex ? ex : ey, *other = ex ? y : x;
        result = true;
        for (size_t i = 0; result && i < json_object_array_length(e); i++)
            result = value_ok(b, other, json_object_array_get_idx(e, i), 0) == 0;
    }
    if (!result && (tx & ty) == 0) result = true;
    if (!result && (tx & ty) == T_OBJ) { /* objects told apart by a required property */
        json_object *rx = jget(x, "required"), *ry = jget(y, "required");
        for (int side = 0; side < 2 && !result; side++) {
            json_object *a = side ? y : x, *c = side ? x : y, *ra = side ? ry : rx, *rc = side ? rx : ry;
            for (size_t i = 0; ra && i < json_object_array_length(ra) && !result; i++) {
                const char *k = json_object_get_string(json_object_array_get_idx(ra, i));
                json_object *sa = jget(jget(a, "properties"), k), *sc = jget(jget(c, "properties"), k);
                if (!sc && is_false(jget(c, "additionalProperties"))) result = true;
                if (!result && sa && sc && rc && json_in(rc, json_object_array_get_idx(ra, i))) {
                    json_object *na = normalize(b, sa), *nc = na ? normalize(b, sc) : NULL;
                    if (na && nc) result = disjoint(b, na, nc, depth + 1);
                    json_object_put(na);
                    json_object_put(nc);
                    if (b->failed) break;
                }
            }
        }
    }
    json_object_put(ex);
    json_object_put(ey);
    return result;
}

/* ---------------------------------------------------------------- generator */

static char *gen(spud_gbnf_builder *b, json_object *s, const char *hint);

/* Types to generate: the declared ones, or those whose keywords appear. */
static int gen_types(json_object *s) {
    int t = types_of(s);
    if (t != T_ALL) return t;
    int inferred = 0;
    static const struct {
        const char *k;
        int t;
    } kw[] = {{"properties", T_OBJ}, {"required", T_OBJ}, {"additionalProperties", T_OBJ}, {"items", T_ARR},
              {"prefixItems", T_ARR}, {"minItems", T_ARR},  {"maxItems", T_ARR},   {"minLength", T_STR},
              {"maxLength", T_STR},  {"pattern", T_STR},   {"format", T_STR},     {"minimum", T_NUM},
              {"maximum", T_NUM},    {"exclusiveMinimum", T_NUM}, {"exclusiveMaximum", T_NUM}};
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
        if (has_key(s, kw[i].k)) inferred |= kw[i].t;
    return inferred ? inferred : T_ALL;
}

static char *dupstr(spud_gbnf_builder *b, const char *s) {
    char *r = s ? spud_strndup(s, strlen(s)) : NULL;
    if (!r) soom(b);
    return r;
}

static char *hint_join(const char *hint, const char *what) {
    size_t n = strlen(hint) + strlen(what) + 2;
    char *r = spud_malloc(n);
    if (r) snprintf(r, n, "%s-%s", hint, what);
    return r;
}

/* A rule for an expression (returns the rule name, heap copy); frees expr. */
static char *as_rule(spud_gbnf_builder *b, const char *hint, char *expr) {
    if (!expr) return NULL;
    const char *n = add_rule(b, hint, expr);
    spud_free(expr);
    return n ? dupstr(b, n) : NULL;
}

static double num_or(json_object *s, const char *k, double dflt) {
    json_object *v = jget(s, k);
    return v ? json_object_get_double(v) : dflt;
}

static char *gen_string(spud_gbnf_builder *b, json_object *s) {
    json_object *fmt = jget(s, "format"), *pat = jget(s, "pattern");
    bool has_min = has_key(s, "minLength"), has_max = has_key(s, "maxLength");
    double mn = num_or(s, "minLength", 0), mx = num_or(s, "maxLength", INFINITY);
    sbuf o = {0};
    if (mn > mx) return serr(b, SPUD_ERR_FORMAT, "minLength %g is above maxLength %g", mn, mx), NULL;
    if (fmt) {
        static const struct {
            const char *name, *rule;
            int lo, hi;
        } fmts[] = {{"date", "jdate", 10, 10},
                    {"time", "jtime", 9, 21},
                    {"date-time", NULL, 20, 32},
                    {"uuid", "juuid", 36, 36},
                    {"email", "jemail", 5, 20 * 3 + 2 + 1 + 62 * 4 + 3}};
        const char *f = json_object_get_string(fmt);
        size_t i = 0;
        while (i < sizeof fmts / sizeof fmts[0] && strcmp(fmts[i].name, f)) i++;
        if (i == sizeof fmts / sizeof fmts[0]) {
            if (b->strict) return serr(b, SPUD_ERR_UNSUPPORTED, "format '%s' is not supported in strict mode (supported: date, time, date-time, uuid, email)", f), NULL;
        } else {
            if (pat && b->strict) return serr(b, SPUD_ERR_UNSUPPORTED, "'format' together with 'pattern' cannot be enforced in strict mode"), NULL;
            if ((has_min || has_max) && (fmts[i].lo < mn || fmts[i].hi > mx) && b->strict)
                return serr(b, SPUD_ERR_UNSUPPORTED, "format '%s' (%d to %d characters) with minLength/maxLength cannot be enforced in strict mode", f, fmts[i].lo, fmts[i].hi), NULL;
            if (fmts[i].rule ? !prim(b, fmts[i].rule) : !prim(b, "jdate") || !prim(b, "jtime")) return NULL;
            sb_puts(&o, "\"\\\"\" ");
            sb_puts(&o, fmts[i].rule ? fmts[i].rule : "jdate \"T\" jtime");
            sb_puts(&o, " \"\\\"\"");
            return sb_take(&o);
        }
    }
    if (pat) {
        rxlen len;
        sbuf e = {0};
        uint64_t floor = 0, cap = RX_INF;
        const char *ps = json_object_get_string(pat);
        if ((has_min || has_max) &&
            !pattern_bounds(b, ps, (uint64_t)mn, mx == INFINITY ? RX_INF : (uint64_t)mx, &floor, &cap)) {
            if (b->failed) return NULL;
            if (b->strict)
                return serr(b, SPUD_ERR_UNSUPPORTED, "'pattern' cannot match any string within minLength/maxLength by bounding its repetitions, so strict mode cannot enforce both"), NULL;
            floor = 0, cap = RX_INF;
        }
        if (!pattern_expr(b, ps, floor, cap, &e, &len)) {
            spud_free(e.p);
            return NULL;
        }
        sb_puts(&o, "\"\\\"\" ");
        sb_cat(&o, &e, "");
        sb_puts(&o, " \"\\\"\"");
        if (e.oom) o.oom = true;
        spud_free(e.p);
        return sb_take(&o);
    }
    if (!prim(b, "jchar")) return NULL;
    if (mn > SPUD_JSON_SCHEMA_MAX_REPEAT)
        return serr(b, SPUD_ERR_RANGE, "minLength %g is above the supported %d", mn, SPUD_JSON_SCHEMA_MAX_REPEAT), NULL;
    if (mx > SPUD_JSON_SCHEMA_MAX_REPEAT) mx = SPUD_JSON_SCHEMA_MAX_REPEAT;
    if (!has_min && !has_max) {
        if (!prim(b, "jstring")) return NULL;
        return dupstr(b, "jstring");
    }
    sb_printf(&o, "\"\\\"\" jchar{%d,%d} \"\\\"\"", (int)mn, (int)mx);
    return sb_take(&o);
}

/* Numbers (integer: only integers) within the schema's bounds. */
static char *gen_number(spud_gbnf_builder *b, json_object *s, bool integer) {
    json_object *vmin = jget(s, "minimum"), *vmax = jget(s, "maximum"), *xmin = jget(s, "exclusiveMinimum"),
                *xmax = jget(s, "exclusiveMaximum");
    bool has_lo = vmin || xmin, has_hi = vmax || xmax;
    if (!has_lo && !has_hi) {
        const char *r = prim(b, integer ? "jinteger" : "jnumber");
        return r ? dupstr(b, r) : NULL;
    }
    double lo = -INFINITY, hi = INFINITY;
    bool lo_x = false, hi_x = false;
    if (vmin) lo = json_object_get_double(vmin);
    if (xmin && json_object_get_double(xmin) >= lo) lo = json_object_get_double(xmin), lo_x = true;
    if (vmax) hi = json_object_get_double(vmax);
    if (xmax && json_object_get_double(xmax) <= hi) hi = json_object_get_double(xmax), hi_x = true;
    if (lo > hi || (lo == hi && (lo_x || hi_x)))
        return serr(b, SPUD_ERR_FORMAT, "the bounds leave no number (minimum above maximum)"), NULL;
    if ((has_lo && fabs(lo) >= 1e15) || (has_hi && fabs(hi) >= 1e15))
        return serr(b, SPUD_ERR_UNSUPPORTED, "bounds of magnitude 1e15 or more cannot be enforced exactly"), NULL;
    sbuf o = {0};
    int n_alts = 0;
    if (integer) {
        double l = has_lo ? (lo_x ? floor(lo) + 1 : ceil(lo)) : -(double)MAX_UINT_GEN;
        double h = has_hi ? (hi_x ? ceil(hi) - 1 : floor(hi)) : (double)MAX_UINT_GEN;
        if (l > h) return serr(b, SPUD_ERR_FORMAT, "no integer lies within the bounds"), NULL;
        sb_puts(&o, "( ");
        if (l < 0) { /* negatives -1 .. l: magnitudes */
            double mh = -l, ml = h < 0 ? -h : 1;
            sb_puts(&o, "\"-\" ");
            uint_range(&o, (uint64_t)ml, (uint64_t)mh);
            n_alts++;
        }
        if (h >= 0) {
            if (n_alts++) sb_puts(&o, " | ");
            uint_range(&o, (uint64_t)(l > 0 ? l : 0), (uint64_t)h);
        }
        sb_puts(&o, " )");
        return sb_take(&o);
    }
    decnum dlo = {0}, dhi = {0};
    if ((has_lo && !to_decnum(lo, &dlo)) || (has_hi && !to_decnum(hi, &dhi)))
        return serr(b, SPUD_ERR_UNSUPPORTED, "a bound has too many fraction digits to enforce exactly"), NULL;
    /* Fraction digits: enough for the bounds plus 3, within 15 significant digits. */
    int fd = (int)strlen(dlo.fp) > (int)strlen(dhi.fp) ? (int)strlen(dlo.fp) : (int)strlen(dhi.fp);
    uint64_t big = dlo.ip > dhi.ip ? dlo.ip : dhi.ip;
    int id = 1;
    for (uint64_t v = big; v >= 10; v /= 10) id++;
    int fmax = fd + 3 < 15 - id ? fd + 3 : 15 - id;
    if (fmax < 1) fmax = 1;
    if (fmax < fd || dlo.sig > 15 || dhi.sig > 15)
        return serr(b, SPUD_ERR_UNSUPPORTED, "a bound has too many significant digits to enforce exactly"), NULL;
    sb_puts(&o, "( ");
    /* Negative values: magnitudes in (max(-hi, 0) .. -lo]. */
    if (lo < 0) {
        sbuf neg = {0};
        decnum zero = {0};
        bool ok;
        if (has_hi && hi < 0)
            ok = dec_range(&neg, &dhi, hi_x, has_lo ? &dlo : NULL, lo_x, fmax);
        else
            ok = dec_range(&neg, &zero, true, has_lo ? &dlo : NULL, lo_x, fmax);
        if (ok) {
            sb_puts(&o, "\"-\" ");
            sb_cat(&o, &neg, "");
            n_alts++;
        }
        if (neg.oom) o.oom = true;
        spud_free(neg.p);
    }
    if (!has_hi || hi >= 0) {
        sbuf pos = {0};
        decnum zero = {0};
        bool ok;
        if (has_lo && lo >= 0)
            ok = dec_range(&pos, &dlo, lo_x, has_hi ? &dhi : NULL, hi_x, fmax);
        else
            ok = dec_range(&pos, &zero, false, has_hi ? &dhi : NULL, hi_x, fmax);
        if (ok) {
            if (n_alts++) sb_puts(&o, " | ");
            sb_cat(&o, &pos, "");
        }
        if (pos.oom) o.oom = true;
        spud_free(pos.p);
    }
    sb_puts(&o, " )");
    if (!n_alts) {
        spud_free(o.p);
        return serr(b, SPUD_ERR_FORMAT, "no number lies within the bounds"), NULL;
    }
    return sb_take(&o);
}

/* ---- additional-property keys: [A-Za-z0-9_]+ other than declared names ---- */

static bool key_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Keys (without quotes) starting with prefix[0..plen) that extend it to no
 * name in `names`, as an expression. */
static char *keys_except(spud_gbnf_builder *b, json_object *names, const char *prefix, size_t plen,
                         const char *hint, int depth) {
    char kids[64];
    size_t nk = 0;
    bool is_name = false;
    json_object_object_foreach(names, k, v) {
        (void)v;
        size_t n = strlen(k);
        bool simple = true;
        for (size_t i = 0; i < n; i++) simple &= key_char(k[i]);
        if (!simple || n < plen || memcmp(k, prefix, plen)) continue;
        if (n == plen) {
            is_name = true;
        } else if (!memchr(kids, k[plen], nk)) {
            kids[nk++] = k[plen];
        }
    }
    sbuf o = {0};
    int alts = 0;
    if (plen > 0 && !is_name) {
        sb_puts(&o, "\"\"");
        alts++;
    }
    /* Characters that leave every name: then anything. */
    sb_puts(&o, alts++ ? " | [" : "[");
    static const char *const all = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    int n_rest = 0;
    for (const char *c = all; *c; c++)
        if (!memchr(kids, *c, nk)) {
            sb_putn(&o, c, 1);
            n_rest++;
        }
    sb_puts(&o, "] [A-Za-z0-9_]{0,30}");
    if (n_rest == 0) { /* (not reachable: names are finite) */
        spud_free(o.p);
        return serr(b, SPUD_ERR_FORMAT, "no key is left for additional properties"), NULL;
    }
    for (size_t i = 0; i < nk && depth < 40; i++) {
        char *np = spud_malloc(plen + 2);
        if (!np) {
            spud_free(o.p);
            return soom(b), NULL;
        }
        memcpy(np, prefix, plen);
        np[plen] = kids[i];
        np[plen + 1] = 0;
        char *sub = keys_except(b, names, np, plen + 1, hint, depth + 1);
        spud_free(np);
        if (!sub) {
            spud_free(o.p);
            return NULL;
        }
        char *r = as_rule(b, hint, sub);
        if (!r) {
            spud_free(o.p);
            return NULL;
        }
        sb_printf(&o, " | \"%c\" %s", kids[i], r);
        spud_free(r);
    }
    return sb_take(&o);
}

/* Chain of object members from element i on; first: nothing written yet. */
typedef struct {
    char **kv;    /* member expressions */
    bool *req;
    size_t n;
    char *extra;  /* additional member expression, or NULL */
    char **memo;  /* [2 * (n + 1)] rule names */
    const char *hint;
} members;

static char *member_chain(spud_gbnf_builder *b, members *m, size_t i, bool first) {
    char **slot = &m->memo[2 * i + first];
    if (*slot) return dupstr(b, *slot);
    sbuf o = {0};
    const char *sep = first ? "" : "ws \",\" ws ";
    if (i == m->n) {
        if (!m->extra)
            sb_puts(&o, "\"\"");
        else if (first)
            sb_printf(&o, "( %s ( ws \",\" ws %s )* )?", m->extra, m->extra);
        else
            sb_printf(&o, "( ws \",\" ws %s )*", m->extra);
    } else {
        char *rest = member_chain(b, m, i + 1, false);
        if (!rest) return NULL;
        sb_printf(&o, "%s%s %s", sep, m->kv[i], rest);
        spud_free(rest);
        if (!m->req[i]) {
            char *skip = member_chain(b, m, i + 1, first);
            if (!skip) {
                spud_free(o.p);
                return NULL;
            }
            sbuf w = {0};
            sb_printf(&w, "( %s ) | %s", o.p, skip);
            spud_free(skip);
            spud_free(o.p);
            o = w;
        }
    }
    char *r = as_rule(b, m->hint, sb_take(&o));
    if (!r) return NULL;
    *slot = dupstr(b, r);
    return r;
}

static char *gen_object(spud_gbnf_builder *b, json_object *s, const char *hint) {
    json_object *props = jget(s, "properties"), *req = jget(s, "required"), *ap = jget(s, "additionalProperties");
    members m = {.hint = hint};
    char *result = NULL;
    json_object *names = json_object_new_object(); /* every declared name */
    if (!names) return soom(b), NULL;
    size_t cap = (props ? (size_t)json_object_object_length(props) : 0) + (req ? json_object_array_length(req) : 0) + 1;
    m.kv = spud_calloc(cap, sizeof *m.kv);
    m.req = spud_calloc(cap, sizeof *m.req);
    m.memo = spud_calloc(2 * cap + 2, sizeof *m.memo);
    if (!m.kv || !m.req || !m.memo) {
        soom(b);
        goto done;
    }
    /* Declared properties in order, then required names not declared (any value). */
    for (int pass = 0; pass < 2; pass++) {
        size_t count = pass == 0 ? (props ? (size_t)json_object_object_length(props) : 0) : (req ? json_object_array_length(req) : 0);
        struct json_object_iterator it = props ? json_object_iter_begin(props) : json_object_iter_init_default();
        for (size_t i = 0; i < count; i++) {
            const char *k;
            json_object *ps;
            if (pass == 0) {
                k = json_object_iter_peek_name(&it);
                ps = json_object_iter_peek_value(&it);
                json_object_iter_next(&it);
            } else {
                k = json_object_get_string(json_object_array_get_idx(req, i));
                if (has_key(names, k)) continue;
                ps = NULL;
            }
            json_object_object_add(names, k, NULL);
            bool required = false;
            for (size_t r = 0; req && r < json_object_array_length(req); r++)
                required |= !strcmp(json_object_get_string(json_object_array_get_idx(req, r)), k);
            if (pass == 0 && is_false(ps)) {
                if (required) {
                    serr(b, SPUD_ERR_FORMAT, "required property '%s' is forbidden (schema false)", k);
                    goto done;
                }
                continue;
            }
            if (!ps && is_false(ap)) {
                serr(b, SPUD_ERR_FORMAT, "required property '%s' is forbidden by additionalProperties false", k);
                goto done;
            }
            size_t old = pass == 0 ? path_push(b, "properties") : path_push(b, "required");
            if (pass == 0) path_push(b, k);
            char *h = hint_join(hint, k);
            char *val = h ? gen(b, ps ? ps : (ap && !json_object_is_type(ap, json_type_boolean) ? ap : NULL), h) : NULL;
            if (!h) soom(b);
            spud_free(h);
            path_pop(b, old);
            if (!val) goto done;
            sbuf kv = {0};
            json_object *ks = json_object_new_string(k);
            const char *kj = ks ? json_object_to_json_string_ext(ks, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
            if (!kj) {
                json_object_put(ks);
                spud_free(val);
                soom(b);
                goto done;
            }
            sb_lit(&kv, kj, strlen(kj));
            json_object_put(ks);
            sb_printf(&kv, " ws \":\" ws %s", val);
            spud_free(val);
            m.req[m.n] = required;
            if (!(m.kv[m.n] = sb_take(&kv))) {
                soom(b);
                goto done;
            }
            m.n++;
        }
    }
    if (!prim(b, "ws")) goto done;
    if (m.n == 0 && !is_false(ap) && (!ap || json_object_is_type(ap, json_type_boolean))) {
        const char *r = prim(b, "jobject");
        result = r ? dupstr(b, r) : NULL;
        goto done;
    }
    if (ap && json_object_is_type(ap, json_type_object)) {
        size_t old = path_push(b, "additionalProperties");
        char *h = hint_join(hint, "additional");
        char *val = h ? gen(b, ap, h) : NULL;
        char *keys = val ? keys_except(b, names, "", 0, h, 0) : NULL;
        char *krule = keys ? as_rule(b, h ? h : hint, keys) : NULL;
        spud_free(h);
        path_pop(b, old);
        if (!krule) {
            spud_free(val);
            goto done;
        }
        sbuf e = {0};
        sb_printf(&e, "\"\\\"\" %s \"\\\"\" ws \":\" ws %s", krule, val);
        spud_free(krule);
        spud_free(val);
        char *h2 = hint_join(hint, "additional-kv");
        m.extra = h2 ? as_rule(b, h2, sb_take(&e)) : NULL;
        if (!h2) spud_free(e.p), soom(b);
        spud_free(h2);
        if (!m.extra) goto done;
    }
    char *h = hint_join(hint, "members");
    char *chain = h ? (m.hint = h, member_chain(b, &m, 0, true)) : NULL;
    if (!h) soom(b);
    if (chain) {
        sbuf o = {0};
        sb_printf(&o, "\"{\" ws %s ws \"}\"", chain);
        result = sb_take(&o);
        if (!result) soom(b);
    }
    spud_free(chain);
    spud_free(h);
done:
    for (size_t i = 0; m.kv && i < m.n; i++) spud_free(m.kv[i]);
    for (size_t i = 0; m.memo && i < 2 * cap + 2; i++) spud_free(m.memo[i]);
    spud_free(m.kv);
    spud_free(m.req);
    spud_free(m.memo);
    spud_free(m.extra);
    json_object_put(names);
    return result;
}

static char *gen_array(spud_gbnf_builder *b, json_object *s, const char *hint) {
    json_object *pf = jget(s, "prefixItems"), *it = jget(s, "items");
    double mn = num_or(s, "minItems", 0), mx = num_or(s, "maxItems", INFINITY);
    size_t np = pf ? json_object_array_length(pf) : 0;
    if (mn > mx) return serr(b, SPUD_ERR_FORMAT, "minItems %g is above maxItems %g", mn, mx), NULL;
    size_t k = (double)np < mx ? np : (size_t)mx;
    double xmin = mn > (double)k ? mn - (double)k : 0, xmax = mx - (double)k;
    if (is_false(it)) xmax = 0;
    if (xmin > xmax) return serr(b, SPUD_ERR_FORMAT, "minItems %g needs items beyond prefixItems, but items is false", mn), NULL;
    if (xmin > SPUD_JSON_SCHEMA_MAX_REPEAT)
        return serr(b, SPUD_ERR_RANGE, "minItems %g is above the supported %d", mn, SPUD_JSON_SCHEMA_MAX_REPEAT), NULL;
    if (xmax > SPUD_JSON_SCHEMA_MAX_REPEAT) xmax = SPUD_JSON_SCHEMA_MAX_REPEAT;
    if (!prim(b, "ws")) return NULL;
    sbuf o = {0};
    sb_puts(&o, "\"[\" ws ");
    for (size_t i = 0; i < k; i++) {
        size_t old = path_push_idx(b, "prefixItems", i);
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%zu", i);
        char *h = hint_join(hint, tmp);
        char *e = h ? gen(b, json_object_array_get_idx(pf, i), h) : NULL;
        if (!h) soom(b);
        spud_free(h);
        path_pop(b, old);
        if (!e) {
            spud_free(o.p);
            return NULL;
        }
        sb_printf(&o, "%s%s ", i ? "ws \",\" ws " : "", e);
        spud_free(e);
    }
    if (xmax >= 1) {
        size_t old = path_push(b, "items");
        char *h = hint_join(hint, "item");
        char *e = h ? gen(b, it, h) : NULL;
        if (!h) soom(b);
        spud_free(h);
        path_pop(b, old);
        if (!e) {
            spud_free(o.p);
            return NULL;
        }
        int lo = (int)xmin, hi = (int)xmax;
        if (k > 0) {
            sb_printf(&o, "( ws \",\" ws %s ){%d,%d} ", e, lo, hi);
        } else if (lo >= 1) {
            sb_printf(&o, "%s ( ws \",\" ws %s ){%d,%d} ", e, e, lo - 1, hi - 1);
        } else {
            sb_printf(&o, "( %s ( ws \",\" ws %s ){0,%d} )? ", e, e, hi - 1);
        }
        spud_free(e);
    }
    sb_puts(&o, "ws \"]\"");
    return sb_take(&o);
}

/* s with bare $refs followed (for inspection only; a new reference). */
static json_object *peek(spud_gbnf_builder *b, json_object *s) {
    for (int i = 0; i < 16; i++) {
        json_object *ref = jget(s, "$ref");
        if (!ref || has_constraints(s, "$ref", NULL)) break;
        s = resolve_ref(b, json_object_get_string(ref));
        if (!s) return NULL;
    }
    if (json_object_is_type(s, json_type_object) && (jget(s, "allOf") || jget(s, "$ref"))) return normalize(b, s);
    return json_object_get(s);
}

/* A $ref: a rule of its own (made once; recursion refers to it). */
static char *gen_ref(spud_gbnf_builder *b, const char *r) {
    gref *g = find_ref(b, r);
    if (g) return dupstr(b, g->rule);
    json_object *target = resolve_ref(b, r);
    if (!target) return NULL;
    char h[80], name[120];
    const char *last = strrchr(r, '/');
    snprintf(h, sizeof h, "%s", last && last[1] ? last + 1 : "root");
    const char *n = new_rule(b, h, NULL);
    if (!n) return NULL;
    snprintf(name, sizeof name, "%s", n);
    if (b->n_refs + 1 > b->cap_refs) {
        size_t cap = b->cap_refs ? b->cap_refs * 2 : 8;
        gref *q = spud_realloc(b->refs, cap * sizeof *q);
        if (!q) return soom(b), NULL;
        b->refs = q;
        b->cap_refs = cap;
    }
    size_t idx = b->n_refs;
    b->refs[idx] = (gref){.ptr = spud_strndup(r, strlen(r)), .rule = spud_strndup(name, strlen(name)), .doc = b->doc,
                          .busy = true};
    if (!b->refs[idx].ptr || !b->refs[idx].rule) {
        spud_free(b->refs[idx].ptr);
        spud_free(b->refs[idx].rule);
        return soom(b), NULL;
    }
    b->n_refs++;
    char saved[sizeof b->path];
    size_t saved_len = b->path_len;
    memcpy(saved, b->path, sizeof saved);
    snprintf(b->path, sizeof b->path, "%s", r + 1);
    b->path_len = strlen(b->path);
    char *body = gen(b, target, name);
    memcpy(b->path, saved, sizeof saved);
    b->path_len = saved_len;
    b->refs[idx].busy = false;
    if (!body) return NULL;
    grule *rule = find_rule(b, name);
    rule->body = body;
    return dupstr(b, name);
}

static char *gen_alternatives(spud_gbnf_builder *b, json_object *s, const char *hint) {
    json_object *any = jget(s, "anyOf");
    const char *key = any ? "anyOf" : "oneOf";
    json_object *list = any ? any : jget(s, "oneOf");
    json_object *rest = copy_without(s, key, NULL);
    size_t n = json_object_array_length(list);
    json_object **br = spud_calloc(n, sizeof *br), **pk = spud_calloc(n, sizeof *pk);
    char *result = NULL;
    sbuf o = {0};
    if (!rest || !br || !pk) {
        soom(b);
        goto done;
    }
    bool has_rest = has_constraints(rest, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        size_t old = path_push_idx(b, key, i);
        json_object *x = json_object_array_get_idx(list, i);
        br[i] = has_rest ? merge(b, rest, x) : json_object_get(x);
        path_pop(b, old);
        if (!br[i]) goto done;
    }
    if (!any) { /* oneOf: the branches must exclude each other */
        for (size_t i = 0; i < n; i++)
            if (!(pk[i] = peek(b, br[i]))) goto done;
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++) {
                if (disjoint(b, pk[i], pk[j], 0)) continue;
                if (b->failed) goto done;
                if (b->strict) {
                    serr(b, SPUD_ERR_UNSUPPORTED,
                         "oneOf: branches %zu and %zu can match the same value, which strict mode cannot rule out "
                         "(use anyOf, or tell the branches apart with distinct types or const values)", i, j);
                    goto done;
                }
            }
    }
    sb_puts(&o, "( ");
    for (size_t i = 0; i < n; i++) {
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%zu", i);
        char *h = hint_join(hint, tmp);
        size_t old = path_push_idx(b, key, i);
        char *e = h ? gen(b, br[i], h) : NULL;
        if (!h) soom(b);
        path_pop(b, old);
        spud_free(h);
        if (!e) goto done;
        sb_printf(&o, "%s%s", i ? " | " : "", e);
        spud_free(e);
    }
    sb_puts(&o, " )");
    result = as_rule(b, hint, sb_take(&o));
    o.p = NULL;
done:
    spud_free(o.p);
    for (size_t i = 0; i < n; i++) {
        if (br) json_object_put(br[i]);
        if (pk) json_object_put(pk[i]);
    }
    spud_free(br);
    spud_free(pk);
    json_object_put(rest);
    return result;
}

static char *gen_enum(spud_gbnf_builder *b, json_object *s, json_object *vals, const char *hint) {
    json_object *rest = copy_without(s, "enum", "const");
    sbuf o = {0};
    int n = 0;
    if (!rest) return soom(b), NULL;
    sb_puts(&o, "( ");
    for (size_t i = 0; i < json_object_array_length(vals); i++) {
        json_object *v = json_object_array_get_idx(vals, i);
        int k = value_ok(b, rest, v, 0);
        if (b->failed) break;
        if (k == 0) continue;
        if (k < 0 && b->strict) {
            serr(b, SPUD_ERR_UNSUPPORTED, "enum/const together with 'pattern' or 'format' cannot be checked in strict mode");
            break;
        }
        const char *text = v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : "null";
        if (!text) {
            soom(b);
            break;
        }
        if (n++) sb_puts(&o, " | ");
        sb_lit(&o, text, strlen(text));
    }
    sb_puts(&o, " )");
    json_object_put(rest);
    if (b->failed) {
        spud_free(o.p);
        return NULL;
    }
    if (n == 0) {
        spud_free(o.p);
        return serr(b, SPUD_ERR_FORMAT, "no enum/const value satisfies the schema's other keywords"), NULL;
    }
    return n > 1 ? as_rule(b, hint, sb_take(&o)) : sb_take(&o);
}

/* The expression of a schema (a heap string; NULL on error). s NULL: any value. */
static char *gen(spud_gbnf_builder *b, json_object *s, const char *hint) {
    if (b->failed) return NULL;
    if (!s || (json_object_is_type(s, json_type_boolean) && json_object_get_boolean(s))) {
        const char *r = prim(b, "jvalue");
        return r ? dupstr(b, r) : NULL;
    }
    if (json_object_is_type(s, json_type_boolean)) return serr(b, SPUD_ERR_FORMAT, "the schema false matches nothing"), NULL;
    if (!json_object_is_type(s, json_type_object)) return serr(b, SPUD_ERR_FORMAT, "a schema must be an object or a boolean"), NULL;
    if (!check_schema(b, s)) return NULL;
    if (b->depth >= MAX_DEPTH) return depth_error(b), NULL;
    b->depth++;
    char *result = NULL;
    json_object *ref = jget(s, "$ref"), *vals = NULL;
    if (jget(s, "allOf") || (ref && has_constraints(s, "$ref", NULL))) {
        json_object *m = normalize(b, s);
        result = m ? gen(b, m, hint) : NULL;
        json_object_put(m);
    } else if (ref) {
        result = gen_ref(b, json_object_get_string(ref));
    } else if (jget(s, "anyOf") || jget(s, "oneOf")) {
        result = gen_alternatives(b, s, hint);
    } else if ((vals = enum_values(s)) != NULL) {
        result = gen_enum(b, s, vals, hint);
        json_object_put(vals);
    } else {
        int t = gen_types(s);
        sbuf o = {0};
        int n = 0;
        bool ok = true;
        if (t == T_ALL) {
            const char *r = prim(b, "jvalue");
            result = r ? dupstr(b, r) : NULL;
            goto done;
        }
        if (t & T_NULL) sb_printf(&o, "%s\"null\"", n++ ? " | " : "");
        if (t & T_BOOL) {
            ok = prim(b, "jboolean") != NULL;
            sb_printf(&o, "%sjboolean", n++ ? " | " : "");
        }
        for (int k = 0; k < 4 && ok; k++) {
            char *e = NULL;
            if (k == 0 && (t & T_INT)) e = gen_number(b, s, (t & T_NUM) != T_NUM);
            else if (k == 1 && (t & T_STR)) e = gen_string(b, s);
            else if (k == 2 && (t & T_ARR)) e = gen_array(b, s, hint);
            else if (k == 3 && (t & T_OBJ)) e = gen_object(b, s, hint);
            else continue;
            if (!e) {
                ok = false;
                break;
            }
            sb_printf(&o, "%s%s", n++ ? " | " : "", e);
            spud_free(e);
        }
        if (!ok) {
            spud_free(o.p);
            goto done;
        }
        char *e = sb_take(&o);
        if (!e) {
            soom(b);
            goto done;
        }
        if (n > 1) {
            sbuf w = {0};
            sb_printf(&w, "( %s )", e);
            spud_free(e);
            e = sb_take(&w);
        }
        result = (t & (T_OBJ | T_ARR)) || n > 1 ? as_rule(b, hint, e) : e;
    }
done:
    b->depth--;
    return result;
}

/* ---------------------------------------------------------------- API */

spud_gbnf_builder *spud_gbnf_builder_new(bool strict) {
    spud_gbnf_builder *b = spud_calloc(1, sizeof *b);
    if (!b) return NULL;
    b->strict = strict;
    if (!new_rule(b, "root", NULL)) { /* placeholder: the name "root" is the finish's */
        spud_gbnf_builder_free(b);
        return NULL;
    }
    return b;
}

void spud_gbnf_builder_free(spud_gbnf_builder *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n_rules; i++) {
        spud_free(b->rules[i].name);
        spud_free(b->rules[i].body);
    }
    for (size_t i = 0; i < b->n_refs; i++) {
        spud_free(b->refs[i].ptr);
        spud_free(b->refs[i].rule);
    }
    spud_free(b->rules);
    spud_free(b->refs);
    spud_free(b);
}

static bool valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        if (!len || i + len > n) return false;
        for (size_t k = 1; k < len; k++)
            if ((u[i + k] & 0xC0) != 0x80) return false;
        if ((c == 0xE0 && u[i + 1] < 0xA0) || (c == 0xED && u[i + 1] > 0x9F) || (c == 0xF0 && u[i + 1] < 0x90) ||
            (c == 0xF4 && u[i + 1] > 0x8F))
            return false; /* overlong, surrogate, beyond U+10FFFF */
        i += len;
    }
    return true;
}

/* Every key and string of the document is UTF-8 (output always is, so a
 * name or value that is not could never be produced). */
static bool check_strings(spud_gbnf_builder *b, json_object *o, int depth) {
    if (depth > 4 * MAX_DEPTH) return serr(b, SPUD_ERR_RANGE, "the document is nested too deeply");
    if (json_object_is_type(o, json_type_string)) {
        if (!valid_utf8(json_object_get_string(o), (size_t)json_object_get_string_len(o)))
            return serr(b, SPUD_ERR_FORMAT, "a string is not valid UTF-8");
    } else if (json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o); i++) {
            char idx[32];
            snprintf(idx, sizeof idx, "%zu", i);
            size_t old = path_push(b, idx);
            bool ok = check_strings(b, json_object_array_get_idx(o, i), depth + 1);
            path_pop(b, old);
            if (!ok) return false;
        }
    } else if (json_object_is_type(o, json_type_object)) {
        json_object_object_foreach(o, k, v) {
            if (!valid_utf8(k, strlen(k))) return serr(b, SPUD_ERR_FORMAT, "a key is not valid UTF-8");
            size_t old = path_push(b, k);
            bool ok = check_strings(b, v, depth + 1);
            path_pop(b, old);
            if (!ok) return false;
        }
    }
    return true;
}

/* The expression of a whole schema document. */
static char *gen_doc(spud_gbnf_builder *b, json_object *schema, const char *hint) {
    b->doc = schema;
    b->failed = false;
    b->depth = 0;
    b->last_ref = NULL;
    b->path[0] = 0;
    b->path_len = 0;
    if (!check_strings(b, schema, 0)) return NULL;
    return gen(b, schema, hint);
}

spud_status spud_gbnf_builder_add_schema(spud_gbnf_builder *b, json_object *schema, const char *name_hint,
                                         const char **rule) {
    char *e = gen_doc(b, schema, name_hint);
    if (!e) return b->st;
    const char *n = new_rule(b, name_hint, e);
    spud_free(e);
    if (!n) return b->st;
    *rule = n;
    return SPUD_OK;
}

spud_status spud_gbnf_builder_add_rule(spud_gbnf_builder *b, const char *name_hint, const char *body,
                                       const char **rule) {
    b->failed = false;
    const char *n = new_rule(b, name_hint, body);
    if (!n) return b->st;
    *rule = n;
    return SPUD_OK;
}

spud_status spud_gbnf_builder_finish(spud_gbnf_builder *b, const char *root_body, char **gbnf) {
    sbuf o = {0};
    *gbnf = NULL;
    b->failed = false;
    if (!prim(b, "ws")) return b->st; /* tool-call wrappers use it */
    sb_printf(&o, "root ::= %s\n", root_body);
    for (size_t i = 1; i < b->n_rules; i++)
        if (b->rules[i].body) sb_printf(&o, "%s ::= %s\n", b->rules[i].name, b->rules[i].body);
    *gbnf = sb_take(&o);
    return *gbnf ? SPUD_OK : spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
}

spud_status spud_json_schema_obj_to_gbnf(json_object *schema, bool strict, char **gbnf) {
    *gbnf = NULL;
    spud_gbnf_builder *b = spud_gbnf_builder_new(strict);
    if (!b) return spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
    spud_status st;
    char *e = gen_doc(b, schema, "root");
    if (!e) {
        st = b->st;
    } else {
        st = spud_gbnf_builder_finish(b, e, gbnf);
        spud_free(e);
    }
    spud_gbnf_builder_free(b);
    return st;
}

spud_status spud_json_schema_to_gbnf(const char *json, size_t len, bool strict, char **gbnf) {
    *gbnf = NULL;
    if (len > INT32_MAX) return spud_errorf(SPUD_ERR_RANGE, "json schema: %zu bytes is too large", len);
    struct json_tokener *tok = json_tokener_new_ex(MAX_DEPTH * 4);
    if (!tok) return spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
    json_object *o = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error je = json_tokener_get_error(tok);
    size_t off = tok->char_offset;
    if (je == json_tokener_continue) { /* a bare literal or number at the very end: a space ends it */
        o = json_tokener_parse_ex(tok, " ", 1);
        je = json_tokener_get_error(tok);
        off = je == json_tokener_success ? len : len + (je == json_tokener_continue ? 0 : 1);
        if (je == json_tokener_continue) je = json_tokener_error_parse_eof;
    }
    json_tokener_free(tok);
    if (je != json_tokener_success || !o || off != len) {
        /* Trailing whitespace is fine; anything else is not. */
        bool trailing_ws = je == json_tokener_success && o;
        for (size_t i = off; trailing_ws && i < len; i++)
            trailing_ws = json[i] == ' ' || json[i] == '\n' || json[i] == '\r' || json[i] == '\t';
        if (!trailing_ws) {
            json_object_put(o);
            return spud_errorf(SPUD_ERR_FORMAT, "json schema: not valid JSON (%s at byte %zu)",
                               je != json_tokener_success ? json_tokener_error_desc(je) : "trailing text", off);
        }
    }
    spud_status st = spud_json_schema_obj_to_gbnf(o, strict, gbnf);
    json_object_put(o);
    return st;
}

spud_status spud_json_schema_any_object_gbnf(char **gbnf) {
    *gbnf = NULL;
    spud_gbnf_builder *b = spud_gbnf_builder_new(true);
    if (!b) return spud_errorf(SPUD_ERR_NOMEM, "json schema: out of memory");
    spud_status st = prim(b, "jobject") ? spud_gbnf_builder_finish(b, "jobject", gbnf) : b->st;
    spud_gbnf_builder_free(b);
    return st;
}
