/* cmd_inspect.c: `spud info`, `spud tokenize`, `spud logits`: look inside a model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "model.h"

/* Options shared by the three commands. */
typedef struct {
    const char *model, *prompt, *file, *tokens;
    bool no_bos, parse_special;
    int64_t n_threads;
} inspect_opts;

static const char *usage_info = "usage: spud info -m MODEL\n"
                                "Describe a GGUF file: architecture, hyperparameters, tokenizer,\n"
                                "tensor count by type, file and parameter size.\n";
static const char *usage_tokenize =
    "usage: spud tokenize -m MODEL [--no-bos] [--parse-special] (-p TEXT | -f FILE)\n"
    "Print the token ids of the text as a JSON array. BOS is added when the model's\n"
    "metadata says so, unless --no-bos. Works on vocab-only GGUF files.\n"
    "spud tokenize --jsonl --help: many texts, one JSON line each.\n";
static const char *usage_logits =
    "usage: spud logits -m MODEL (-p TEXT | -f FILE | --tokens 1,2,3) [--no-bos] [-t THREADS]\n"
    "Print {\"tokens\": [...], \"logits\": [...]}: the prompt's token ids and the\n"
    "full-vocabulary logits at its last position.\n";

/* Returns -1 to go on, else the exit status. */
static int parse_opts(const char *cmd, const char *usage, int argc, char **argv, inspect_opts *o,
                      bool text_ok, bool tokens_ok) {
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "-m")) {
            slot = &o->model;
        } else if (text_ok && !strcmp(a, "-p")) {
            slot = &o->prompt;
        } else if (text_ok && !strcmp(a, "-f")) {
            slot = &o->file;
        } else if (tokens_ok && !strcmp(a, "--tokens")) {
            slot = &o->tokens;
        } else if (text_ok && !strcmp(a, "--no-bos")) {
            o->no_bos = true;
        } else if (text_ok && !strcmp(a, "--parse-special")) {
            o->parse_special = true;
        } else if (tokens_ok && !strcmp(a, "-t")) {
            if (!cli_parse_i64(cmd, a, val, 1, 1024, &o->n_threads)) return 2;
            i++;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud %s --help)", a, cmd);
            return 2;
        }
        if (slot) {
            if (!val) {
                cli_error(cmd, "%s needs a value", a);
                return 2;
            }
            *slot = val;
            i++;
        }
    }
    if (!o->model) {
        cli_error(cmd, "give a model with -m MODEL (see spud %s --help)", cmd);
        return 2;
    }
    if (text_ok && !o->prompt && !o->file && !o->tokens) {
        cli_error(cmd, "give the text with -p TEXT or -f FILE%s", tokens_ok ? " or --tokens IDS" : "");
        return 2;
    }
    return -1;
}

/* The prompt text from -p or -f; *owned is set when it must be freed. */
static bool prompt_text(const char *cmd, const inspect_opts *o, const char **text, size_t *len,
                        char **owned) {
    *owned = NULL;
    if (o->file) {
        if (spud_read_file(o->file, owned, len)) {
            cli_error(cmd, "%s", spud_last_error());
            return false;
        }
        *text = *owned;
    } else {
        *text = o->prompt;
        *len = strlen(o->prompt);
    }
    return true;
}

static void print_ids(const int32_t *ids, size_t n) {
    putchar('[');
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
    putchar(']');
}

int cmd_tokenize(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--jsonl")) return cmd_tokenize_jsonl(argc, argv); /* cmd_bench_tokenize.c */
    inspect_opts o;
    int rc = parse_opts("tokenize", usage_tokenize, argc, argv, &o, true, false);
    if (rc >= 0) return rc;
    spud_gguf *g = NULL;
    spud_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0, len;
    char *owned = NULL;
    const char *text;
    rc = 1;
    if (!prompt_text("tokenize", &o, &text, &len, &owned)) return 1;
    if (spud_gguf_open(o.model, &g) || spud_tok_load(g, &tok)) {
        cli_error("tokenize", "%s: %s", o.model, spud_last_error());
        goto done;
    }
    if (spud_tok_encode(tok, text, len, !o.no_bos, o.parse_special, &ids, &n)) {
        cli_error("tokenize", "%s", spud_last_error());
        goto done;
    }
    print_ids(ids, n);
    putchar('\n');
    rc = 0;
done:
    spud_free(ids);
    spud_free(owned);
    if (tok) spud_tok_free(tok);
    if (g) spud_gguf_close(g);
    return rc;
}

/* Parse "1,2,3" into ids. */
static bool parse_token_list(const char *s, int32_t **ids, size_t *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    *ids = spud_malloc(cap * sizeof **ids);
    *n = 0;
    if (!*ids) return false;
    for (const char *p = s; *p;) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0')) return false;
        (*ids)[(*n)++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    return *n > 0;
}

int cmd_logits(int argc, char **argv) {
    const char *cmd = "logits";
    inspect_opts o;
    int rc = parse_opts(cmd, usage_logits, argc, argv, &o, true, true);
    if (rc >= 0) return rc;
    spud_model *m = NULL;
    spud_ctx *ctx = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    char *owned = NULL;
    rc = 1;
    spud_model_params mp = spud_model_default_params();
    mp.n_threads = (int32_t)o.n_threads;
    if (o.tokens && !parse_token_list(o.tokens, &ids, &n)) {
        cli_error(cmd, "bad value for --tokens: '%s' (expected ids like 1,2,3)", o.tokens);
        goto done;
    }
    if (spud_model_load(o.model, &mp, &m)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    if (!o.tokens) {
        const char *text;
        size_t len;
        if (!prompt_text(cmd, &o, &text, &len, &owned)) goto done;
        if (spud_tokenize(m, text, len, !o.no_bos, o.parse_special, &ids, &n)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        if (n == 0) {
            cli_error(cmd, "the prompt is empty (no tokens)");
            goto done;
        }
    }
    const float *logits;
    if (spud_ctx_new(m, (uint32_t)n, &ctx) || spud_decode_tokens(ctx, ids, n, &logits)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    fputs("{\"tokens\":", stdout);
    print_ids(ids, n);
    fputs(",\"logits\":[", stdout);
    for (int32_t i = 0; i < spud_model_n_vocab(m); i++) printf("%s%.9g", i ? "," : "", logits[i]);
    fputs("]}\n", stdout);
    rc = 0;
done:
    spud_free(ids);
    spud_free(owned);
    spud_ctx_free(ctx);
    spud_model_free(m);
    return rc;
}

static void print_size(const char *label, double bytes) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) bytes /= 1024, u++;
    printf("%-22s %.2f %s\n", label, bytes, unit[u]);
}

int cmd_info(int argc, char **argv) {
    const char *cmd = "info";
    inspect_opts o;
    int rc = parse_opts(cmd, usage_info, argc, argv, &o, false, false);
    if (rc >= 0) return rc;
    spud_gguf *g = NULL;
    spud_model *m = NULL;
    spud_str s;
    rc = 1;
    if (spud_gguf_open(o.model, &g)) {
        cli_error(cmd, "%s", spud_last_error());
        return 1;
    }
    printf("%-22s %s\n", "file", o.model);
    print_size("file size", (double)spud_gguf_file_size(g));
    printf("%-22s %u\n", "gguf version", spud_gguf_version(g));
    printf("%-22s %llu\n", "metadata keys", (unsigned long long)spud_gguf_n_kv(g));
    if (!spud_gguf_get_str(g, "general.architecture", &s))
        printf("%-22s %.*s\n", "architecture", (int)s.len, s.ptr);
    if (!spud_gguf_get_str(g, "general.name", &s)) printf("%-22s %.*s\n", "name", (int)s.len, s.ptr);

    /* Tensors by type, and the parameter count. */
    uint64_t count[256] = {0}, n_params = 0, n_bytes = 0;
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        uint64_t ne = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) ne *= t->ne[d];
        n_params += ne;
        n_bytes += t->nbytes;
        count[t->type < 256 ? t->type : 255]++;
    }
    printf("%-22s %llu:", "tensors", (unsigned long long)spud_gguf_n_tensors(g));
    for (int t = 0; t < 256; t++)
        if (count[t]) printf(" %s %llu", spud_type_name((uint32_t)t), (unsigned long long)count[t]);
    printf("\n%-22s %.3f M\n", "parameters", (double)n_params / 1e6);
    print_size("tensor data", (double)n_bytes);
    if (n_params) printf("%-22s %.3f\n", "bits per weight", 8.0 * (double)n_bytes / (double)n_params);

    if (spud_gguf_n_tensors(g) == 0) {
        /* vocab-only file: describe the tokenizer alone */
        spud_tokenizer *tok = NULL;
        if (spud_tok_load(g, &tok)) {
            cli_error(cmd, "%s: %s", o.model, spud_last_error());
            goto done;
        }
        printf("%-22s %s (pre-tokenizer %s), %d tokens, bos %d, eos %d, add bos %s\n", "tokenizer",
               spud_tok_model(tok), spud_tok_pre(tok), spud_tok_n_vocab(tok), spud_tok_bos(tok),
               spud_tok_eos(tok), spud_tok_add_bos(tok) ? "yes" : "no");
        spud_tok_free(tok);
        rc = 0;
        goto done;
    }
    spud_model_params mp = spud_model_default_params();
    mp.n_threads = 1;
    if (spud_model_load(o.model, &mp, &m)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    const spud_hparams *hp = &m->hp;
    printf("%-22s dim %d, layers %d, heads %d, kv heads %d, head dim %d, ffn %d\n", "hyperparameters",
           hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_ff);
    printf("%-22s %u\n", "training context", hp->n_ctx_train);
    printf("%-22s base %g, %d dims, %s%s\n", "rope", hp->rope_base, hp->n_rot,
           hp->rope_neox ? "neox" : "normal", m->rope_freqs ? ", rope_freqs scaling" : "");
    printf("%-22s %g\n", "rms norm eps", hp->norm_eps);
    printf("%-22s %s\n", "output", m->output.data == m->tok_embd.data ? "tied to token_embd" : "output.weight");
    printf("%-22s %s (pre-tokenizer %s), %d tokens, bos %d, eos %d, add bos %s\n", "tokenizer",
           spud_tok_model(m->tok), spud_tok_pre(m->tok), spud_tok_n_vocab(m->tok),
           spud_tok_bos(m->tok), spud_tok_eos(m->tok), spud_tok_add_bos(m->tok) ? "yes" : "no");
    printf("%-22s %llu bytes (f32)\n", "kv cache per token",
           (unsigned long long)spud_model_kv_bytes_per_token(m));
    rc = 0;
done:
    spud_model_free(m);
    spud_gguf_close(g);
    return rc;
}
