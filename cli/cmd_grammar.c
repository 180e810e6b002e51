/* cmd_grammar.c: `spud schema2gbnf`, `spud grammar check|tools|bench`, and the
 * grammar options of `spud run` (--grammar-file, --json-schema, --json-object,
 * --tools with --tool-choice / --tool-format). */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "core.h"
#include "grammar.h"
#include "json_schema.h"
#include "model.h"
#include "tool_grammar.h"

/* Read a file ("-": stdin) into a NUL-terminated buffer. */
static char *slurp(const char *cmd, const char *path, size_t *len) {
    char *data = NULL;
    if (strcmp(path, "-")) {
        if (spud_read_file(path, &data, len)) {
            cli_error(cmd, "%s", spud_last_error());
            return NULL;
        }
        return data;
    }
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *q = realloc(data, cap);
            if (!q) {
                free(data);
                cli_error(cmd, "out of memory");
                return NULL;
            }
            data = q;
        }
        size_t k = fread(data + n, 1, 4096, stdin);
        n += k;
        if (k < 4096) break;
    }
    char *out = spud_malloc(n + 1);
    if (out) {
        memcpy(out, data, n);
        out[n] = 0;
    }
    free(data);
    *len = n;
    if (!out) cli_error(cmd, "out of memory");
    return out;
}

/* ---- grammar sources ---- */

typedef cli_grammar_opts gsource; /* (declared in cli.h for spud run) */

/* The GBNF text (and trigger word, for lazy tool grammars) a source asks for. */
static bool source_gbnf(const char *cmd, const gsource *o, const spud_tokenizer *tok, char **gbnf, char **trigger) {
    size_t len;
    *gbnf = *trigger = NULL;
    int n = (o->grammar_file != NULL) + (o->schema_file != NULL) + (o->tools_file != NULL) + o->json_object;
    if (n > 1) {
        cli_error(cmd, "give only one of --grammar-file, --json-schema, --json-object, --tools");
        return false;
    }
    if (o->grammar_file) {
        *gbnf = slurp(cmd, o->grammar_file, &len);
        return *gbnf != NULL;
    }
    if (o->json_object) {
        if (spud_json_schema_any_object_gbnf(gbnf)) {
            cli_error(cmd, "%s", spud_last_error());
            return false;
        }
        return true;
    }
    if (o->schema_file) {
        char *text = slurp(cmd, o->schema_file, &len);
        if (!text) return false;
        spud_status st = spud_json_schema_to_gbnf(text, len, !o->no_strict, gbnf);
        spud_free(text);
        if (st) cli_error(cmd, "%s: %s", o->schema_file, spud_last_error());
        return st == SPUD_OK;
    }
    if (o->tools_file) {
        spud_tool_format fmt = SPUD_TOOL_FORMAT_HERMES;
        spud_tool_choice choice = SPUD_TOOL_CHOICE_REQUIRED;
        const char *fn = NULL;
        if (o->tool_format && spud_tool_format_parse(o->tool_format, &fmt)) {
            cli_error(cmd, "%s", spud_last_error());
            return false;
        }
        if (o->tool_choice) {
            spud_tool_choice_parse(o->tool_choice, &choice);
            if (choice == SPUD_TOOL_CHOICE_FUNCTION) fn = o->tool_choice;
        }
        char *text = slurp(cmd, o->tools_file, &len);
        if (!text) return false;
        json_object *tools = json_tokener_parse(text);
        spud_free(text);
        if (!tools) {
            cli_error(cmd, "%s: not valid JSON", o->tools_file);
            return false;
        }
        json_object *arr = tools, *inner = NULL;
        if (json_object_is_type(tools, json_type_object) && json_object_object_get_ex(tools, "tools", &inner))
            arr = inner;
        spud_tool_grammar tg;
        spud_status st = spud_tool_grammar_build(arr, fmt, choice, fn, o->parallel, tok, !o->no_strict, &tg);
        json_object_put(tools);
        if (st) {
            cli_error(cmd, "%s: %s", o->tools_file, spud_last_error());
            return false;
        }
        *gbnf = tg.gbnf;
        *trigger = tg.trigger;
        return true;
    }
    return true;
}

/* One grammar option at argv[i] into o: the number of arguments used, 0 if
 * argv[i] is not one, -1 on error (printed). */
static int source_option(const char *cmd, gsource *o, int argc, char **argv, int i) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    const char **slot = !strcmp(a, "--grammar-file") ? &o->grammar_file
                        : !strcmp(a, "--json-schema") ? &o->schema_file
                        : !strcmp(a, "--tools")       ? &o->tools_file
                        : !strcmp(a, "--tool-choice") ? &o->tool_choice
                        : !strcmp(a, "--tool-format") ? &o->tool_format
                                                      : NULL;
    if (slot) {
        if (!v) {
            cli_error(cmd, "%s needs a value", a);
            return -1;
        }
        *slot = v;
        return 2;
    }
    bool *flag = !strcmp(a, "--json-object")   ? &o->json_object
                 : !strcmp(a, "--no-strict")   ? &o->no_strict
                 : !strcmp(a, "--parallel-tools") ? &o->parallel
                                               : NULL;
    if (flag) {
        *flag = true;
        return 1;
    }
    return 0;
}

static const char *source_usage =
    "  --grammar-file F     constrain the output to the GBNF grammar in F\n"
    "  --json-schema F      constrain the output to JSON valid under the JSON Schema in F\n"
    "  --json-object        constrain the output to one JSON object\n"
    "  --tools F            constrain the output to tool calls (F: an OpenAI tools array)\n"
    "  --tool-choice C      required (default), auto, none, or a function name\n"
    "  --tool-format F      hermes (default; also qwen), llama3, mistral, deepseek, harmony, generic\n"
    "  --parallel-tools     allow several calls\n"
    "  --no-strict          ignore schema keywords that cannot be enforced (default: error)\n";

/* ---- spud run hooks ---- */

struct cli_grammar {
    spud_grammar *g;
    spud_grammar_vocab *v;
    spud_grammar_state *s;
    float *work;
    int32_t n_vocab;
};

const char *cli_grammar_usage(void) { return source_usage; }

int cli_grammar_option(cli_grammar_opts *o, int argc, char **argv, int i) {
    return source_option("run", o, argc, argv, i);
}

void cli_grammar_free(cli_grammar *g) {
    if (!g) return;
    spud_grammar_state_free(g->s);
    spud_grammar_vocab_free(g->v);
    spud_grammar_free(g->g);
    spud_free(g->work);
    spud_free(g);
}

bool cli_grammar_start(const cli_grammar_opts *o, const struct spud_model *m, cli_grammar **out) {
    const gsource *src = o;
    *out = NULL;
    char *gbnf = NULL, *trigger = NULL;
    if (!source_gbnf("run", src, m->tok, &gbnf, &trigger)) return false;
    if (!gbnf) return true; /* no grammar asked for (or tool_choice none) */
    cli_grammar *g = spud_calloc(1, sizeof *g);
    const char *trig[1] = {trigger};
    bool ok = false;
    if (!g) {
        cli_error("run", "out of memory");
        goto done;
    }
    g->n_vocab = spud_tok_n_vocab(m->tok);
    g->work = spud_malloc((size_t)g->n_vocab * sizeof *g->work);
    if (!g->work || spud_grammar_parse(gbnf, strlen(gbnf), &g->g) || spud_grammar_vocab_from_tokenizer(m->tok, &g->v) ||
        spud_grammar_state_new(g->g, g->v, trig, trigger ? 1 : 0, &g->s)) {
        cli_error("run", "%s", g->work ? spud_last_error() : "out of memory");
        goto done;
    }
    ok = true;
done:
    spud_free(gbnf);
    spud_free(trigger);
    if (!ok) {
        cli_grammar_free(g);
        return false;
    }
    *out = g;
    return true;
}

const float *cli_grammar_constrain(cli_grammar *g, const float *logits, int32_t n_vocab) {
    if (!g) return logits;
    if (n_vocab != g->n_vocab) {
        cli_error("run", "the model has %d logits for %d tokens", n_vocab, g->n_vocab);
        return NULL;
    }
    memcpy(g->work, logits, (size_t)n_vocab * sizeof *logits);
    if (spud_grammar_apply(g->s, g->work, n_vocab)) {
        cli_error("run", "%s", spud_last_error());
        return NULL;
    }
    return g->work;
}

bool cli_grammar_accept(cli_grammar *g, int32_t token) {
    if (!g) return true;
    if (spud_grammar_accept(g->s, token)) {
        cli_error("run", "%s", spud_last_error());
        return false;
    }
    return true;
}

/* ---- spud schema2gbnf ---- */

int cmd_schema2gbnf(int argc, char **argv) {
    const char *cmd = "schema2gbnf", *file = NULL;
    bool strict = true, json_object_mode = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: spud schema2gbnf FILE.json [--no-strict]   (FILE - : stdin)\n"
                   "       spud schema2gbnf --json-object\n"
                   "Print the GBNF grammar of a JSON Schema (see src/json_schema.h for what is supported).\n"
                   "  --no-strict    ignore keywords that cannot be enforced instead of failing\n"
                   "  --json-object  the grammar of any JSON object\n");
            return 0;
        } else if (!strcmp(argv[i], "--no-strict")) {
            strict = false;
        } else if (!strcmp(argv[i], "--json-object")) {
            json_object_mode = true;
        } else if (!file && (argv[i][0] != '-' || !strcmp(argv[i], "-"))) {
            file = argv[i];
        } else {
            cli_error(cmd, "unexpected argument '%s' (see spud schema2gbnf --help)", argv[i]);
            return 2;
        }
    }
    char *gbnf = NULL;
    if (json_object_mode) {
        if (spud_json_schema_any_object_gbnf(&gbnf)) {
            cli_error(cmd, "%s", spud_last_error());
            return 1;
        }
    } else {
        if (!file) {
            cli_error(cmd, "give a JSON Schema file (see spud schema2gbnf --help)");
            return 2;
        }
        size_t len;
        char *text = slurp(cmd, file, &len);
        if (!text) return 1;
        spud_status st = spud_json_schema_to_gbnf(text, len, strict, &gbnf);
        spud_free(text);
        if (st) {
            cli_error(cmd, "%s: %s", file, spud_last_error());
            return 1;
        }
    }
    fputs(gbnf, stdout);
    spud_free(gbnf);
    return 0;
}

/* ---- spud grammar ---- */

static void grammar_usage(FILE *f) {
    fprintf(f,
            "usage: spud grammar check GRAMMAR.gbnf [--text T | --text-file F]\n"
            "       spud grammar tools TOOLS.json [--tool-choice C] [--tool-format F] [--parallel-tools]\n"
            "       spud grammar bench -m GGUF GRAMMAR-SOURCE [--runs N] [--tokens N] [--seed S]\n"
            "check: parse a grammar (errors give line and column); with a text, exit 0 if the grammar matches\n"
            "       all of it, 1 if not (the message says whether it is a refused byte or an incomplete match).\n"
            "tools: print the grammar of tool calls (and the trigger word for --tool-choice auto).\n"
            "bench: time the per-token mask on one thread: each run starts a fresh matcher and picks\n"
            "       uniformly among the allowed tokens (like a random-weight model) until the grammar\n"
            "       is complete or N tokens (default 256); prints mean, p50, p99 and max of\n"
            "       spud_grammar_apply (mask + logits) and of spud_grammar_accept, in the thread's\n"
            "       CPU time (not inflated by other processes) and in wall time. GGUF: a model or a\n"
            "       vocabulary-only file (spud convert-vocab).\n"
            "grammar sources (tools and bench):\n%s",
            source_usage);
}

/* CPU time of this thread: unlike wall time, not inflated when other processes share the cores. */
static double thread_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t bench_rand(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int grammar_bench(int argc, char **argv) {
    const char *cmd = "grammar bench", *model_path = NULL;
    gsource src = {0};
    int64_t runs = 20, tokens = 256, seed = 1;
    for (int i = 2; i < argc; i++) {
        int k = source_option(cmd, &src, argc, argv, i);
        if (k < 0) return 2;
        if (k > 0) {
            i += k - 1;
            continue;
        }
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            cli_error(cmd, "unexpected argument '%s' (see spud grammar --help)", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) {
            model_path = v;
        } else if (!strcmp(a, "--runs")) {
            if (!cli_parse_i64(cmd, a, v, 1, 100000, &runs)) return 2;
        } else if (!strcmp(a, "--tokens")) {
            if (!cli_parse_i64(cmd, a, v, 1, 1 << 20, &tokens)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_i64(cmd, a, v, 0, INT64_MAX, &seed)) return 2;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud grammar --help)", a);
            return 2;
        }
    }
    if (!model_path) {
        cli_error(cmd, "give a model or vocabulary with -m GGUF");
        return 2;
    }
    int rc = 1;
    spud_gguf *gg = NULL;
    spud_tokenizer *tok = NULL;
    spud_grammar_vocab *v = NULL;
    spud_grammar *g = NULL;
    char *gbnf = NULL, *trigger = NULL;
    double *t_apply = NULL, *t_accept = NULL, *w_apply = NULL;
    float *logits = NULL;
    uint32_t *bits = NULL;
    int32_t *allowed = NULL;
    double t0 = spud_time_s();
    if (spud_gguf_open(model_path, &gg) || spud_tok_load(gg, &tok) || spud_grammar_vocab_from_tokenizer(tok, &v)) {
        cli_error(cmd, "%s: %s", model_path, spud_last_error());
        goto done;
    }
    double t_vocab = spud_time_s() - t0;
    if (!source_gbnf(cmd, &src, tok, &gbnf, &trigger)) goto done;
    if (!gbnf) {
        cli_error(cmd, "give a grammar source (see spud grammar --help)");
        goto done;
    }
    t0 = spud_time_s();
    if (spud_grammar_parse(gbnf, strlen(gbnf), &g)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    double t_parse = spud_time_s() - t0;
    int32_t n = spud_grammar_vocab_n(v);
    size_t cap = (size_t)(runs * tokens);
    t_apply = malloc(cap * sizeof *t_apply);
    w_apply = malloc(cap * sizeof *w_apply);
    t_accept = malloc(cap * sizeof *t_accept);
    logits = malloc((size_t)n * sizeof *logits);
    bits = malloc(((size_t)n + 31) / 32 * 4);
    allowed = malloc((size_t)n * sizeof *allowed);
    if (!t_apply || !w_apply || !t_accept || !logits || !bits || !allowed) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    size_t m = 0, m_acc = 0;
    int64_t complete = 0;
    uint64_t rs = (uint64_t)seed;
    double t_new = 0;
    const char *trig[1] = {trigger};
    for (int64_t r = 0; r < runs; r++) {
        spud_grammar_state *s;
        t0 = spud_time_s();
        if (spud_grammar_state_new(g, v, trig, trigger ? 1 : 0, &s)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        t_new += spud_time_s() - t0;
        for (int64_t k = 0; k < tokens; k++) {
            if (spud_grammar_is_finished(s)) {
                complete++;
                break;
            }
            for (int32_t i = 0; i < n; i++) logits[i] = 0;
            double a = thread_cpu_s(), aw = spud_time_s();
            spud_status st = spud_grammar_apply(s, logits, n);
            w_apply[m] = spud_time_s() - aw;
            t_apply[m++] = thread_cpu_s() - a;
            if (st || spud_grammar_mask(s, bits)) {
                cli_error(cmd, "%s", spud_last_error());
                spud_grammar_state_free(s);
                goto done;
            }
            int32_t na = 0;
            for (int32_t i = 0; i < n; i++)
                if ((bits[i >> 5] >> (i & 31)) & 1) allowed[na++] = i;
            /* Uniform among the allowed non-EOG tokens; EOG only when nothing else is left. */
            int32_t pick = -1;
            for (int tries = 0; tries < 64 && pick < 0; tries++) {
                int32_t c = allowed[bench_rand(&rs) % (uint64_t)na];
                if (!spud_grammar_is_complete(s) || !spud_tok_is_eog(tok, c)) pick = c;
            }
            if (pick < 0) pick = allowed[0];
            if (spud_tok_is_eog(tok, pick)) {
                complete++;
                break;
            }
            a = thread_cpu_s();
            st = spud_grammar_accept(s, pick);
            t_accept[m_acc++] = thread_cpu_s() - a;
            if (st) {
                cli_error(cmd, "%s", spud_last_error());
                spud_grammar_state_free(s);
                goto done;
            }
        }
        spud_grammar_state_free(s);
    }
    double sum = 0, sum_acc = 0, sum_w = 0;
    for (size_t i = 0; i < m; i++) sum += t_apply[i], sum_w += w_apply[i];
    for (size_t i = 0; i < m_acc; i++) sum_acc += t_accept[i];
    qsort(t_apply, m, sizeof *t_apply, cmp_double);
    qsort(w_apply, m, sizeof *w_apply, cmp_double);
    qsort(t_accept, m_acc, sizeof *t_accept, cmp_double);
    printf("vocab: %d tokens, %u trie nodes (built in %.1f ms); grammar: %u rules, %u nodes (parsed in %.2f ms)\n", n,
           spud_grammar_vocab_n_nodes(v), t_vocab * 1e3, spud_grammar_n_rules(g), spud_grammar_n_nodes(g),
           t_parse * 1e3);
    printf("runs: %lld, tokens: %zu, complete: %lld, matcher setup: %.3f ms per run\n", (long long)runs, m,
           (long long)complete, t_new / (double)runs * 1e3);
    if (m) {
        printf("mask+apply per token, thread CPU time: mean %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
               sum / (double)m * 1e3, t_apply[m / 2] * 1e3, t_apply[(size_t)((double)(m - 1) * 0.99)] * 1e3,
               t_apply[m - 1] * 1e3);
        printf("mask+apply per token, wall time:       mean %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
               sum_w / (double)m * 1e3, w_apply[m / 2] * 1e3, w_apply[(size_t)((double)(m - 1) * 0.99)] * 1e3,
               w_apply[m - 1] * 1e3);
    }
    if (m_acc)
        printf("accept per token, thread CPU time: mean %.4f ms, p99 %.4f ms\n", sum_acc / (double)m_acc * 1e3,
               t_accept[(size_t)((double)(m_acc - 1) * 0.99)] * 1e3);
    rc = 0;
done:
    free(t_apply);
    free(w_apply);
    free(t_accept);
    free(logits);
    free(bits);
    free(allowed);
    spud_free(gbnf);
    spud_free(trigger);
    spud_grammar_free(g);
    spud_grammar_vocab_free(v);
    spud_tok_free(tok);
    spud_gguf_close(gg);
    return rc;
}

static int grammar_check(int argc, char **argv) {
    const char *cmd = "grammar check", *file = NULL, *text = NULL, *text_file = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--text") && v) {
            text = v;
            i++;
        } else if (!strcmp(a, "--text-file") && v) {
            text_file = v;
            i++;
        } else if (!file && (a[0] != '-' || !strcmp(a, "-"))) {
            file = a;
        } else {
            cli_error(cmd, "unexpected argument '%s' (see spud grammar --help)", a);
            return 2;
        }
    }
    if (!file) {
        cli_error(cmd, "give a grammar file (see spud grammar --help)");
        return 2;
    }
    size_t len, tlen = 0;
    char *gbnf = slurp(cmd, file, &len), *tbuf = NULL;
    if (!gbnf) return 1;
    spud_grammar *g = NULL;
    spud_grammar_vocab *v = NULL;
    spud_grammar_state *s = NULL;
    int rc = 1;
    if (spud_grammar_parse(gbnf, len, &g)) {
        cli_error(cmd, "%s: %s", file, spud_last_error());
        goto done;
    }
    if (!text && !text_file) {
        printf("ok: %u rules, %u automaton nodes\n", spud_grammar_n_rules(g), spud_grammar_n_nodes(g));
        rc = 0;
        goto done;
    }
    if (text_file) {
        if (!(tbuf = slurp(cmd, text_file, &tlen))) goto done;
        text = tbuf;
    } else {
        tlen = strlen(text);
    }
    /* A one-token vocabulary suffices to run the matcher over bytes. */
    const char *piece = "x";
    size_t plen = 1;
    if (spud_grammar_vocab_new(1, &piece, &plen, NULL, &v) || spud_grammar_state_new(g, v, NULL, 0, &s)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    size_t i = 0;
    for (; i < tlen; i++)
        if (spud_grammar_accept_bytes(s, text + i, 1)) break;
    if (i < tlen) {
        printf("no match: byte %zu (0x%02x) is refused\n", i, (unsigned char)text[i]);
    } else if (!spud_grammar_is_complete(s)) {
        printf("no match: the text is an incomplete prefix\n");
    } else {
        printf("match\n");
        rc = 0;
    }
done:
    spud_grammar_state_free(s);
    spud_grammar_vocab_free(v);
    spud_grammar_free(g);
    spud_free(gbnf);
    spud_free(tbuf);
    return rc;
}

static int grammar_tools(int argc, char **argv) {
    const char *cmd = "grammar tools";
    gsource src = {0};
    for (int i = 2; i < argc; i++) {
        int k = source_option(cmd, &src, argc, argv, i);
        if (k < 0) return 2;
        if (k > 0) {
            i += k - 1;
        } else if (!src.tools_file && argv[i][0] != '-') {
            src.tools_file = argv[i];
        } else {
            cli_error(cmd, "unexpected argument '%s' (see spud grammar --help)", argv[i]);
            return 2;
        }
    }
    if (!src.tools_file) {
        cli_error(cmd, "give a tools file (see spud grammar --help)");
        return 2;
    }
    char *gbnf, *trigger;
    if (!source_gbnf(cmd, &src, NULL, &gbnf, &trigger)) return 1;
    if (trigger) printf("# trigger: %s\n", trigger);
    fputs(gbnf ? gbnf : "# tool_choice none: no grammar\n", stdout);
    spud_free(gbnf);
    spud_free(trigger);
    return 0;
}

int cmd_grammar(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        grammar_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "check")) return grammar_check(argc, argv);
    if (!strcmp(argv[1], "tools")) return grammar_tools(argc, argv);
    if (!strcmp(argv[1], "bench")) return grammar_bench(argc, argv);
    cli_error("grammar", "unknown subcommand '%s' (check, tools, bench)", argv[1]);
    return 2;
}
