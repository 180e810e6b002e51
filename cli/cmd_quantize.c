/* cmd_quantize.c: `spud quantize IN.gguf OUT.gguf TYPE [-t THREADS]`, and the
 * type recipe, parallel loop and progress bar it shares with gen-model
 * (declared in quantize.h).
 *
 * The input is mmapped; every converted tensor is written into one output
 * allocation (the GGUF writer needs all tensor data at write time), tensors
 * that keep their type point straight into the mapping. Rows are converted
 * one at a time (input type -> f32 scratch row -> output type), so nothing is
 * ever held in f32 beyond one row per thread.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "core.h"
#include "gguf.h"
#include "quantize.h"
#include "tensor.h"

#define CMD "quantize"

/* ---- output types ---- */

/* LLAMA_FTYPE_* numbers (llama.h). "q4_k" is every weight in Q4_K, labelled
 * MOSTLY_Q4_K_S, the closest llama.cpp file type (its Q4_K_S adds Q5_K layers
 * that spud does not have). */
static const cli_qtype qtypes[] = {
    {"f32", 0, SPUD_TYPE_F32, false},     {"f16", 1, SPUD_TYPE_F16, false},
    {"bf16", 32, SPUD_TYPE_BF16, false},  {"q8_0", 7, SPUD_TYPE_Q8_0, false},
    {"q4_0", 2, SPUD_TYPE_Q4_0, false},   {"q4_k", 14, SPUD_TYPE_Q4_K, false},
    {"q6_k", 18, SPUD_TYPE_Q6_K, false},  {"q4_k_m", 15, SPUD_TYPE_Q4_K, true},
};

const cli_qtype *cli_qtype_find(const char *name) {
    for (size_t i = 0; i < sizeof qtypes / sizeof qtypes[0]; i++)
        if (strcasecmp(name, qtypes[i].name) == 0) return &qtypes[i];
    return NULL;
}

const char *cli_qtype_names(void) { return "f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, q4_k_m"; }

/* ---- recipe ---- */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

bool cli_recipe_quantizes(const char *name, uint32_t n_dims) {
    return n_dims >= 2 && ends_with(name, "weight") && !strstr(name, "_norm.weight") &&
           !strstr(name, "ffn_gate_inp.weight"); /* MoE router: tiny, kept exact */
}

/* Layer number of "blk.N....", or 0. */
static int layer_of(const char *name) {
    if (strncmp(name, "blk.", 4) != 0) return 0;
    long v = 0;
    for (const char *p = name + 4; *p >= '0' && *p <= '9' && v < 1000000; p++) v = 10 * v + (*p - '0');
    return (int)v;
}

/* llama.cpp: layers that get more bits in Q4_K_M (first and last eighth, every third between). */
static bool use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

spud_type cli_recipe_type(const cli_qtype *q, const cli_recipe_model *m, const char *name,
                          int64_t ne0) {
    if (!q->mix_q4_k_m) return q->type;
    /* llama.cpp llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_Q4_K_M, for the tensors of the
     * llama / qwen families: the output matrix (token_embd when tied) Q6_K, or Q8_0 if its rows
     * do not fit a K block; attn_v and ffn_down Q6_K in use_more_bits layers; the rest Q4_K. */
    if (strcmp(name, "output.weight") == 0 ||
        (!m->has_output && strcmp(name, "token_embd.weight") == 0))
        return ne0 % QK_K == 0 ? SPUD_TYPE_Q6_K : SPUD_TYPE_Q8_0;
    if (strstr(name, "attn_v.weight"))
        return use_more_bits(layer_of(name), m->n_attn_v) ? SPUD_TYPE_Q6_K : SPUD_TYPE_Q4_K;
    if (strstr(name, "ffn_down"))
        return use_more_bits(layer_of(name), m->n_layers) ? SPUD_TYPE_Q6_K : SPUD_TYPE_Q4_K;
    return SPUD_TYPE_Q4_K;
}

spud_type cli_recipe_fallback(spud_type t, int64_t ne0) {
    const spud_type_info *ti = spud_type_get(t);
    if (ti && ne0 % ti->block_size == 0) return t;
    return ne0 % QK8_0 == 0 ? SPUD_TYPE_Q8_0 : SPUD_TYPE_F16;
}

/* ---- parallel loop ---- */

typedef struct {
    atomic_llong next, done;
    int64_t n_items;
    cli_item_fn fn;
    void *ctx;
} par_shared;

typedef struct {
    par_shared *sh;
    float *scratch;
} par_worker;

static void *par_thread(void *arg) {
    par_worker *w = arg;
    par_shared *sh = w->sh;
    for (;;) {
        int64_t i = atomic_fetch_add(&sh->next, 1);
        if (i >= sh->n_items) break;
        sh->fn(sh->ctx, i, w->scratch);
        atomic_fetch_add(&sh->done, 1);
    }
    return NULL;
}

spud_status cli_parallel(int n_threads, int64_t n_items, cli_item_fn fn, void *ctx,
                         size_t scratch_floats, cli_progress_fn progress, void *pctx) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    if (n_items < n_threads) n_threads = n_items > 0 ? (int)n_items : 1;
    size_t per = scratch_floats ? (scratch_floats + 15) & ~(size_t)15 : 16; /* 64-byte steps */
    uint64_t total;
    if (!spud_mul_ok(per * sizeof(float), (uint64_t)n_threads, &total) || total > SIZE_MAX)
        return spud_errorf(SPUD_ERR_NOMEM, "scratch too large");
    float *scratch = spud_aligned_alloc(64, (size_t)total);
    pthread_t *tids = spud_calloc((size_t)n_threads, sizeof *tids);
    par_worker *ws = spud_calloc((size_t)n_threads, sizeof *ws);
    if (!scratch || !tids || !ws) {
        spud_free(scratch);
        spud_free(tids);
        spud_free(ws);
        return spud_errorf(SPUD_ERR_NOMEM, "out of memory for %d threads' scratch", n_threads);
    }
    par_shared sh = {.n_items = n_items, .fn = fn, .ctx = ctx};
    atomic_init(&sh.next, 0);
    atomic_init(&sh.done, 0);
    int started = 1; /* workers 1.. run on new threads, worker 0 is this one */
    for (int t = 0; t < n_threads; t++) {
        ws[t].sh = &sh;
        ws[t].scratch = scratch + (size_t)t * per;
    }
    for (int t = 1; t < n_threads; t++) {
        if (pthread_create(&tids[t], NULL, par_thread, &ws[t]) != 0) break; /* run with fewer */
        started++;
    }
    double last = spud_time_s();
    for (;;) {
        int64_t i = atomic_fetch_add(&sh.next, 1);
        if (i >= n_items) break;
        fn(ctx, i, ws[0].scratch);
        atomic_fetch_add(&sh.done, 1);
        if (progress) {
            double now = spud_time_s();
            if (now - last >= 0.1) {
                last = now;
                progress(pctx, atomic_load(&sh.done), n_items);
            }
        }
    }
    for (int t = 1; t < started; t++) pthread_join(tids[t], NULL);
    if (progress) progress(pctx, n_items, n_items);
    spud_free(scratch);
    spud_free(tids);
    spud_free(ws);
    return SPUD_OK;
}

int cli_n_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/* ---- progress and formatting ---- */

void cli_progress_draw(const char *cmd, int64_t done, int64_t total, const char *label) {
    if (!isatty(STDERR_FILENO)) return;
    enum { WIDTH = 30 };
    int fill = total > 0 ? (int)(WIDTH * done / total) : WIDTH;
    int pct = total > 0 ? (int)(100 * done / total) : 100;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '-';
    bar[WIDTH] = 0;
    fprintf(stderr, "\rspud %s [%s] %3d%% %-36.36s", cmd, bar, pct, label ? label : "");
    fflush(stderr);
}

void cli_progress_end(void) {
    if (!isatty(STDERR_FILENO)) return;
    fprintf(stderr, "\r%-90s\r", "");
    fflush(stderr);
}

const char *cli_fmt_bytes(uint64_t n, char buf[32]) {
    if (n >= (1ull << 30)) snprintf(buf, 32, "%.2f GiB", (double)n / (1ull << 30));
    else if (n >= (1ull << 20)) snprintf(buf, 32, "%.1f MiB", (double)n / (1ull << 20));
    else if (n >= (1ull << 10)) snprintf(buf, 32, "%.1f KiB", (double)n / (1ull << 10));
    else snprintf(buf, 32, "%llu B", (unsigned long long)n);
    return buf;
}

/* ---- spud quantize ---- */

typedef struct {
    const spud_gguf_tensor *in;
    char name[256];
    uint32_t out_type;
    int64_t ne0, nrows;
    size_t in_row, out_row;
    uint64_t out_bytes;
    void *out; /* converted data, or the input data when the type is unchanged */
    bool convert;
} q_tensor;

typedef struct {
    uint32_t tensor;
    int64_t row0, nrows;
} q_item;

typedef struct {
    q_tensor *ts;
    q_item *items;
} q_job;

static void q_convert(void *ctx, int64_t item, float *scratch) {
    const q_job *job = ctx;
    const q_item *it = &job->items[item];
    const q_tensor *t = &job->ts[it->tensor];
    const spud_type_info *ti = spud_type_get(t->in->type);
    const spud_type_info *to = spud_type_get(t->out_type);
    for (int64_t r = it->row0; r < it->row0 + it->nrows; r++) {
        const char *src = (const char *)t->in->data + (size_t)r * t->in_row;
        char *dst = (char *)t->out + (size_t)r * t->out_row;
        ti->to_float(src, scratch, t->ne0);
        to->from_float_ref(scratch, dst, t->ne0);
    }
}

typedef struct {
    const q_job *job;
    int64_t n_items;
} q_progress_ctx;

static void q_progress(void *pctx, int64_t done, int64_t total) {
    const q_progress_ctx *p = pctx;
    const char *label = "";
    if (done < total && done < p->n_items) label = p->job->ts[p->job->items[done].tensor].name;
    cli_progress_draw(CMD, done, total, label);
}

static void q_usage(FILE *f) {
    fprintf(f,
            "usage: spud quantize IN.gguf OUT.gguf TYPE [-t THREADS]\n"
            "\n"
            "Convert the weights of a GGUF model to another type. IN's tensors must be f32,\n"
            "f16 or bf16. All metadata is copied; general.file_type is set.\n"
            "\n"
            "TYPE: %s\n"
            "  f32 ... q6_k   every 2-D weight in that type\n"
            "  q4_k_m         llama.cpp's Q4_K_M mix: q6_K for the output matrix (token_embd\n"
            "                 when tied) and for attn_v / ffn_down in the layers llama.cpp's\n"
            "                 use_more_bits picks, q4_K for the rest\n"
            "1-D tensors (norms, biases, rope factors) and *_norm.weight are always f32.\n"
            "A K-type tensor whose rows are not a multiple of 256 falls back to q8_0\n"
            "(f16 if rows are not a multiple of 32 either).\n"
            "\n"
            "  -t, --threads N   worker threads (default: all cores)\n"
            "  -h, --help        this help\n",
            cli_qtype_names());
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {NULL, NULL, NULL};
    int n_pos = 0;
    int64_t n_threads = cli_n_cpus();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            q_usage(stdout);
            return 0;
        }
        if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            if (i + 1 >= argc) {
                cli_error(CMD, "%s needs a value", a);
                return 1;
            }
            if (!cli_parse_i64(CMD, a, argv[++i], 1, 256, &n_threads)) return 1;
            continue;
        }
        if (a[0] == '-' && a[1] != 0) {
            cli_error(CMD, "unknown option %s (see spud quantize --help)", a);
            return 1;
        }
        if (n_pos == 3) {
            cli_error(CMD, "unexpected argument '%s' (usage: spud quantize IN.gguf OUT.gguf TYPE)", a);
            return 1;
        }
        pos[n_pos++] = a;
    }
    if (n_pos < 3) {
        static const char *const what[] = {"IN.gguf", "OUT.gguf", "TYPE"};
        cli_error(CMD, "missing %s (usage: spud quantize IN.gguf OUT.gguf TYPE [-t THREADS])",
                  what[n_pos]);
        return 1;
    }
    const char *in_path = pos[0], *out_path = pos[1];
    const cli_qtype *qt = cli_qtype_find(pos[2]);
    if (!qt) {
        cli_error(CMD, "unknown type '%s' (one of: %s)", pos[2], cli_qtype_names());
        return 1;
    }
    spud_kernels_init(false);

    int rc = 1;
    double t0 = spud_time_s();
    spud_gguf *g = NULL;
    spud_gguf_writer *w = NULL;
    q_tensor *ts = NULL;
    q_item *items = NULL;
    char *arena = NULL;

    if (spud_gguf_open(in_path, &g) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    uint64_t n_t = spud_gguf_n_tensors(g);
    ts = spud_calloc(n_t ? n_t : 1, sizeof *ts);
    if (!ts) {
        cli_error(CMD, "out of memory");
        goto done;
    }

    /* What the recipe needs: layer count, attn_v count, whether output.weight exists. */
    cli_recipe_model rm = {0};
    for (uint64_t i = 0; i < n_t; i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        if (spud_str_eq(t->name, "output.weight")) rm.has_output = true;
        if (t->name.len >= 13 && memcmp(t->name.ptr + t->name.len - 13, "attn_v.weight", 13) == 0)
            rm.n_attn_v++;
        if (t->name.len > 4 && memcmp(t->name.ptr, "blk.", 4) == 0) {
            char nb[32];
            size_t l = t->name.len < sizeof nb - 1 ? t->name.len : sizeof nb - 1;
            memcpy(nb, t->name.ptr, l);
            nb[l] = 0;
            int layer = layer_of(nb);
            if (layer + 1 > rm.n_layers) rm.n_layers = layer + 1;
        }
    }
    spud_str arch;
    if (spud_gguf_get_str(g, "general.architecture", &arch) == SPUD_OK && arch.len < 64) {
        char key[96];
        uint32_t n_layer;
        snprintf(key, sizeof key, "%.*s.block_count", (int)arch.len, arch.ptr);
        if (spud_gguf_get_u32(g, key, &n_layer) == SPUD_OK && n_layer > 0 && n_layer < 1000000)
            rm.n_layers = (int)n_layer;
    }

    /* Pick every tensor's output type and size. */
    uint64_t arena_bytes = 0, in_bytes = 0, out_bytes = 0, n_items = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        q_tensor *q = &ts[i];
        q->in = t;
        if (t->name.len >= sizeof q->name) {
            cli_error(CMD, "%s: tensor name too long (%llu bytes)", in_path,
                      (unsigned long long)t->name.len);
            goto done;
        }
        memcpy(q->name, t->name.ptr, t->name.len);
        q->name[t->name.len] = 0;
        if (t->type != SPUD_TYPE_F32 && t->type != SPUD_TYPE_F16 && t->type != SPUD_TYPE_BF16) {
            cli_error(CMD, "%s: tensor %s is %s; quantize reads only f32, f16 and bf16 tensors",
                      in_path, q->name, spud_type_name(t->type));
            goto done;
        }
        q->ne0 = (int64_t)t->ne[0];
        q->nrows = (int64_t)(t->ne[1] * t->ne[2] * t->ne[3]); /* the reader checked the product */
        spud_type ot = SPUD_TYPE_F32;
        if (qt->type != SPUD_TYPE_F32 && cli_recipe_quantizes(q->name, t->n_dims)) {
            spud_type want = cli_recipe_type(qt, &rm, q->name, q->ne0);
            ot = cli_recipe_fallback(want, q->ne0);
            if (ot != want)
                fprintf(stderr,
                        "spud %s: %s: rows of %lld do not fit %s blocks of %lld; using %s\n", CMD,
                        q->name, (long long)q->ne0, spud_type_name(want),
                        (long long)spud_type_get(want)->block_size, spud_type_name(ot));
        }
        q->out_type = ot;
        q->in_row = spud_row_size((spud_type)t->type, q->ne0);
        q->out_row = spud_row_size(ot, q->ne0);
        if (!spud_mul_ok(q->out_row, (uint64_t)q->nrows, &q->out_bytes)) {
            cli_error(CMD, "%s: tensor %s is too large", in_path, q->name);
            goto done;
        }
        in_bytes += t->nbytes;
        out_bytes += q->out_bytes;
        q->convert = ot != t->type && q->ne0 > 0 && q->nrows > 0;
        if (q->convert) {
            if (!spud_add_ok(arena_bytes, (q->out_bytes + 63) & ~(uint64_t)63, &arena_bytes)) {
                cli_error(CMD, "%s: output too large", in_path);
                goto done;
            }
            /* rows per item: about 64K elements, so items are even and the bar moves */
            int64_t per = q->ne0 >= 65536 ? 1 : 65536 / q->ne0;
            n_items += (uint64_t)((q->nrows + per - 1) / per);
        }
    }
    if (arena_bytes > SIZE_MAX) {
        cli_error(CMD, "the output needs %llu bytes, more than this machine can address",
                  (unsigned long long)arena_bytes);
        goto done;
    }
    arena = spud_aligned_alloc(64, arena_bytes ? (size_t)arena_bytes : 64);
    items = spud_malloc((n_items ? n_items : 1) * sizeof *items);
    if (!arena || !items) {
        char b[32];
        cli_error(CMD, "out of memory: the converted tensors need %s",
                  cli_fmt_bytes(arena_bytes, b));
        goto done;
    }
    uint64_t off = 0, k = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        q_tensor *q = &ts[i];
        if (!q->convert) {
            q->out = (void *)q->in->data;
            continue;
        }
        q->out = arena + off;
        off += (q->out_bytes + 63) & ~(uint64_t)63;
        int64_t per = q->ne0 >= 65536 ? 1 : 65536 / q->ne0;
        for (int64_t r = 0; r < q->nrows; r += per)
            items[k++] = (q_item){(uint32_t)i, r, r + per <= q->nrows ? per : q->nrows - r};
    }

    int64_t max_ne0 = 1;
    for (uint64_t i = 0; i < n_t; i++)
        if (ts[i].convert && ts[i].ne0 > max_ne0) max_ne0 = ts[i].ne0;
    q_job job = {ts, items};
    q_progress_ctx pc = {&job, (int64_t)n_items};
    if (cli_parallel((int)n_threads, (int64_t)n_items, q_convert, &job, (size_t)max_ne0, q_progress,
                     &pc) != SPUD_OK) {
        cli_progress_end();
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    cli_progress_end();

    /* Metadata: everything from IN, then the file type (replaced in place if present). */
    w = spud_gguf_writer_new();
    if (!w) {
        cli_error(CMD, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++) {
        if (spud_gguf_writer_copy_kv(w, spud_gguf_kv_at(g, i)) != SPUD_OK) {
            cli_error(CMD, "%s", spud_last_error());
            goto done;
        }
    }
    /* like llama-quantize: the quantization version (of the Q formats, 2) always */
    if (spud_gguf_writer_set_u32(w, "general.file_type", qt->ftype) != SPUD_OK ||
        spud_gguf_writer_set_u32(w, "general.quantization_version", 2) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    uint32_t count[SPUD_TYPE_COUNT] = {0};
    for (uint64_t i = 0; i < n_t; i++) {
        const q_tensor *q = &ts[i];
        if (spud_gguf_writer_add_tensor(w, q->name, q->out_type, q->in->n_dims, q->in->ne, q->out,
                                        q->out_bytes) != SPUD_OK) {
            cli_error(CMD, "%s", spud_last_error());
            goto done;
        }
        count[q->out_type]++;
    }
    if (spud_gguf_writer_write(w, out_path) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }

    char counts[256] = "", bi[32], bo[32];
    size_t cl = 0;
    for (int ty = 0; ty < SPUD_TYPE_COUNT; ty++) {
        if (!count[ty] || cl >= sizeof counts) continue;
        cl += (size_t)snprintf(counts + cl, sizeof counts - cl, "%s%s %u", cl ? ", " : "",
                               spud_type_name((uint32_t)ty), count[ty]);
    }
    fprintf(stderr, "spud %s: wrote %s: %s, %llu tensors (%s), %s -> %s in %.1f s (%d threads)\n",
            CMD, out_path, qt->name, (unsigned long long)n_t, counts, cli_fmt_bytes(in_bytes, bi),
            cli_fmt_bytes(out_bytes, bo), spud_time_s() - t0, (int)n_threads);
    rc = 0;
done:
    if (w) spud_gguf_writer_free(w);
    spud_free(arena);
    spud_free(items);
    spud_free(ts);
    if (g) spud_gguf_close(g);
    return rc;
}
