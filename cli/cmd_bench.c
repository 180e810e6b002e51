/* cmd_bench.c: `spud bench`: prompt-processing and generation speed, and the
 * machine's memory read bandwidth, so that each figure can be read as a
 * fraction of its limit.
 *
 *   pp N   one batch of N tokens decoded at depth D (tokens/s and GFLOP/s)
 *   tg N   N tokens decoded one call each at depth D (tokens/s and GB/s of
 *          weights plus KV cache read per token)
 *   --batch B: tg runs B sequences decoding together, one row each per call
 *          (as `spud serve --parallel B` does), and reports aggregate tokens/s
 *
 * Depth D (--ctx-depth) puts D positions in the cache before each test. By
 * default they are synthetic rows written straight into the cache (what a
 * token costs does not depend on the values it attends to, and prefilling
 * 32K tokens on two cores takes many minutes); --real-depth prefills them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "kernels.h"
#include "model.h"

#define BENCH_MAX_DEPTHS 16

static void bench_usage(FILE *f) {
    fprintf(f,
            "usage: spud bench -m MODEL [-p N] [-n N] [-t THREADS] [-r REPS] [--ctx-depth D[,D...]]\n"
            "                  [--real-depth] [--kv-type f16|f32|q8_0] [--batch B] [--json]\n"
            "       spud bench --memory [-t THREADS] [-r REPS] [--json]\n"
            "Measure prompt processing (pp: one batch of N tokens) and generation (tg: N tokens,\n"
            "one decode call each), as tokens/s mean and standard deviation over REPS runs after\n"
            "one warm-up. pp also shows GFLOP/s (matrix products and attention); tg shows the GB/s\n"
            "of weights and KV cache read per generated token.\n"
            "  -m MODEL        GGUF model\n"
            "  -p N            prompt tokens per pp run (default 512; 0: skip pp)\n"
            "  -n N            tokens per tg run (default 128; 0: skip tg)\n"
            "  -t THREADS      threads (default: all cores)\n"
            "  -r REPS         repetitions (default 3)\n"
            "  --ctx-depth D   positions already in the cache (default 0; a comma list runs each)\n"
            "  --real-depth    fill the depth by decoding tokens (default: synthetic cache rows)\n"
            "  --kv-type T     KV cache element type: f16, f32 or q8_0 (default: the library's choice)\n"
            "  --batch B       tg decodes B sequences together, one row (with logits) each per call,\n"
            "                  and reports their aggregate tokens/s (default 1)\n"
            "  --memory        measure memory read bandwidth instead: a 1 GiB buffer streamed by the\n"
            "                  f32 dot and by the q8_0 dot (as decode reads weights) on the threads;\n"
            "                  the limit is the best run of either\n"
            "  --json          one JSON object on stdout\n");
}

typedef struct {
    double mean, sd, min, max;
} bench_stat;

static bench_stat stat_of(const double *v, int n) {
    bench_stat s = {0, 0, v[0], v[0]};
    for (int i = 0; i < n; i++) {
        s.mean += v[i];
        if (v[i] < s.min) s.min = v[i];
        if (v[i] > s.max) s.max = v[i];
    }
    s.mean /= n;
    for (int i = 0; i < n; i++) s.sd += (v[i] - s.mean) * (v[i] - s.mean);
    s.sd = n > 1 ? sqrt(s.sd / (n - 1)) : 0.0;
    return s;
}

/* ---- memory bandwidth ----
 *
 * A 1 GiB buffer streamed through the pool's threads twice per repetition:
 * by the dispatched f32 dot (plain reads), and as q8_0 blocks by the
 * dispatched q8_0 dot (the way decode reads weights). The limit is the best
 * repetition of either. */

typedef struct {
    const char *buf;
    int64_t bytes;
    bool q8;
    const void *x; /* one chunk of activations (f32 or q8_0), stays in L1 */
    float sink[64];
} bw_job;

#define BW_CHUNK 4096 /* elements per dot call */

static void bw_worker(void *arg, int ith, int nth) {
    bw_job *j = arg;
    const size_t chunk = j->q8 ? spud_row_size(SPUD_TYPE_Q8_0, BW_CHUNK) : BW_CHUNK * sizeof(float);
    const spud_vec_dot_fn dot = spud_type_get(SPUD_TYPE_Q8_0)->vec_dot;
    int64_t s, e;
    spud_pool_split(j->bytes / (int64_t)chunk, ith, nth, &s, &e);
    float acc = 0, r;
    for (int64_t c = s; c < e; c++) {
        if (j->q8) {
            dot(BW_CHUNK, &r, j->buf + (size_t)c * chunk, j->x);
            acc += r;
        } else {
            acc += spud_dot_f32((const float *)(const void *)(j->buf + (size_t)c * chunk), j->x, BW_CHUNK);
        }
    }
    j->sink[ith & 63] += acc;
}

static int bench_memory(int n_threads, int reps, bool json) {
    const int64_t bytes = (int64_t)1 << 30;
    spud_pool *pool = NULL;
    char *buf = spud_aligned_alloc(64, (size_t)bytes);
    float *x = spud_aligned_alloc(64, BW_CHUNK * sizeof(float));
    void *xq = spud_aligned_alloc(64, spud_row_size(SPUD_TYPE_Q8_0, BW_CHUNK));
    double *gbps = calloc(2 * (size_t)reps, sizeof *gbps);
    int rc = 1;
    if (!buf || !x || !xq || !gbps) {
        cli_error("bench", "out of memory for the 1 GiB buffer");
        goto done;
    }
    if (spud_pool_new(n_threads, &pool)) {
        cli_error("bench", "%s", spud_last_error());
        goto done;
    }
    const char *isa = spud_kernels_init(false);
    /* small finite values whether read as floats or as q8_0 blocks (fp16 scale 0x0101) */
    memset(buf, 1, (size_t)bytes);
    for (int i = 0; i < BW_CHUNK; i++) x[i] = 1.0f;
    spud_type_get(SPUD_TYPE_Q8_0)->from_float(x, xq, BW_CHUNK);
    bw_job j[2] = {{.buf = buf, .bytes = bytes, .q8 = false, .x = x}, {.buf = buf, .bytes = bytes, .q8 = true, .x = xq}};
    for (int k = 0; k < 2; k++) spud_pool_run(pool, bw_worker, &j[k]); /* warm-up */
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < 2; k++) {
            double t0 = spud_time_s();
            spud_pool_run(pool, bw_worker, &j[k]);
            gbps[k * reps + r] = (double)bytes / (spud_time_s() - t0) / 1e9;
        }
    bench_stat sf = stat_of(gbps, reps), sq = stat_of(gbps + reps, reps);
    const double limit = sf.max > sq.max ? sf.max : sq.max;
    int nth = spud_pool_n_threads(pool);
    if (json)
        printf("{\"memory\":{\"threads\":%d,\"isa\":\"%s\",\"bytes\":%lld,\"reps\":%d,\"gbps\":%.2f,"
               "\"gbps_sd\":%.2f,\"gbps_min\":%.2f,\"gbps_max\":%.2f,\"q8_0_gbps\":%.2f,\"q8_0_gbps_sd\":%.2f,"
               "\"q8_0_gbps_max\":%.2f,\"limit\":%.2f}}\n",
               nth, isa, (long long)bytes, reps, sf.mean, sf.sd, sf.min, sf.max, sq.mean, sq.sd, sq.max, limit);
    else
        printf("memory read bandwidth (%d threads, %s kernels, 1 GiB, %d reps): f32 dot %.2f ± %.2f GB/s "
               "(max %.2f), q8_0 dot %.2f ± %.2f GB/s (max %.2f); limit %.2f GB/s\n",
               nth, isa, reps, sf.mean, sf.sd, sf.max, sq.mean, sq.sd, sq.max, limit);
    rc = 0;
done:
    spud_pool_free(pool);
    spud_free(buf);
    spud_free(x);
    spud_free(xq);
    free(gbps);
    return rc;
}

/* ---- model ---- */

/* Bytes of every matrix a generated token reads once (all but the embedding
 * table, of which it reads one row). */
static uint64_t weight_bytes_per_token(const spud_model *m) {
    uint64_t b = (uint64_t)m->output.row_bytes * (uint64_t)m->output.n_out;
    for (int i = 0; i < m->hp.n_layer; i++) {
        const spud_layer *l = &m->layers[i];
        const spud_weight *ws[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++)
            b += (uint64_t)ws[k]->row_bytes * (uint64_t)ws[k]->n_out;
    }
    return b;
}

/* Multiply-adds x 2 of the matrix products for one token (logits for
 * n_logits of the rows: pp asks for one). */
static double matmul_flops(const spud_model *m, double n_rows, double n_logits) {
    const spud_hparams *hp = &m->hp;
    double qd = (double)hp->n_head * hp->head_dim, kvd = (double)hp->n_head_kv * hp->head_dim;
    double per_layer = (double)hp->n_embd * (qd + 2 * kvd) + qd * hp->n_embd + 3.0 * hp->n_embd * hp->n_ff;
    return 2.0 * (per_layer * hp->n_layer * n_rows + (double)hp->n_embd * hp->n_vocab * n_logits);
}

/* Attention flops of rows at positions [p0, p1): q.k and p.v, 2 flops each
 * per head dimension, per head, per attended position. */
static double attention_flops(const spud_model *m, double p0, double p1) {
    const spud_hparams *hp = &m->hp;
    double positions = (p1 * (p1 + 1) - p0 * (p0 + 1)) / 2; /* sum of (p + 1) */
    return 4.0 * hp->head_dim * hp->n_head * hp->n_layer * positions;
}

/* The dominant weight types by bytes, e.g. "q4_K 80% + q6_K 20%". */
static void describe_types(const spud_model *m, char *out, size_t cap) {
    uint64_t by_type[SPUD_TYPE_COUNT] = {0}, total = 0;
    by_type[m->output.type] += (uint64_t)m->output.row_bytes * (uint64_t)m->output.n_out;
    for (int i = 0; i < m->hp.n_layer; i++) {
        const spud_layer *l = &m->layers[i];
        const spud_weight *ws[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++)
            by_type[ws[k]->type] += (uint64_t)ws[k]->row_bytes * (uint64_t)ws[k]->n_out;
    }
    for (int t = 0; t < SPUD_TYPE_COUNT; t++) total += by_type[t];
    size_t len = 0;
    out[0] = '\0';
    for (int k = 0; k < SPUD_TYPE_COUNT && len < cap; k++) {
        int best = -1;
        for (int t = 0; t < SPUD_TYPE_COUNT; t++)
            if (by_type[t] && (best < 0 || by_type[t] > by_type[best])) best = t;
        if (best < 0) break;
        len += (size_t)snprintf(out + len, cap - len, "%s%s %.0f%%", len ? " + " : "", spud_type_name((uint32_t)best),
                                100.0 * (double)by_type[best] / (double)total);
        by_type[best] = 0;
    }
}

/* Reproducible pseudo-random token ids (not special ones; speed does not care). */
static void fill_tokens(int32_t *ids, int64_t n, int32_t n_vocab, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        ids[i] = (int32_t)(s % (uint64_t)(n_vocab > 256 ? n_vocab - 256 : n_vocab));
    }
}

/* Cache holds `depth` positions of sequence 0 (the bench fills it once per
 * depth; tests truncate back to it); synthetic depths fill all n_seq
 * sequences. */
static int set_depth(spud_ctx *ctx, uint32_t n_seq, uint32_t depth, bool real, int32_t n_vocab) {
    spud_ctx_reset(ctx);
    if (depth == 0) return 0;
    if (!real) {
        for (uint32_t s = 0; s < n_seq; s++)
            if (spud_decoder_fill_synthetic(ctx, s, depth, 12345 + s)) {
                cli_error("bench", "%s", spud_last_error());
                return 1;
            }
        return 0;
    }
    int32_t *ids = malloc(sizeof *ids * 512);
    if (!ids) return 1;
    for (uint32_t done = 0; done < depth;) {
        uint32_t k = depth - done < 512 ? depth - done : 512;
        fill_tokens(ids, k, n_vocab, 777 + done);
        if (spud_decode_tokens(ctx, ids, k, NULL)) {
            cli_error("bench", "%s", spud_last_error());
            free(ids);
            return 1;
        }
        done += k;
    }
    free(ids);
    return 0;
}

typedef struct {
    char name[32];
    uint32_t depth;
    bench_stat tps;
    double rate; /* GFLOP/s (pp) or GB/s (tg) at the mean tokens/s */
} bench_result;

int cmd_bench(int argc, char **argv) {
    const char *cmd = "bench", *model_path = NULL;
    int64_t n_prompt = 512, n_gen = 128, n_threads = 0, reps = 3, n_batch = 1;
    uint32_t depths[BENCH_MAX_DEPTHS] = {0};
    int n_depths = 1;
    bool json = false, memory = false, real_depth = false;
    spud_kv_type kv_type = SPUD_KV_AUTO;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bench_usage(stdout);
            return 0;
        }
#define NEEDS_VALUE                                                                                \
    if (!val) {                                                                                    \
        cli_error(cmd, "%s needs a value", a);                                                     \
        return 2;                                                                                  \
    }                                                                                              \
    i++
        if (!strcmp(a, "-m")) {
            NEEDS_VALUE;
            model_path = val;
        } else if (!strcmp(a, "-p")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 0, 1 << 20, &n_prompt)) return 2;
        } else if (!strcmp(a, "-n")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 0, 1 << 20, &n_gen)) return 2;
        } else if (!strcmp(a, "-t")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 1, 1024, &n_threads)) return 2;
        } else if (!strcmp(a, "-r")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 1, 1000, &reps)) return 2;
        } else if (!strcmp(a, "--ctx-depth") || !strcmp(a, "-d")) {
            NEEDS_VALUE;
            n_depths = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", val);
            for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                int64_t d;
                if (n_depths == BENCH_MAX_DEPTHS) {
                    cli_error(cmd, "at most %d depths", BENCH_MAX_DEPTHS);
                    return 2;
                }
                if (!cli_parse_i64(cmd, a, tok, 0, 1 << 24, &d)) return 2;
                depths[n_depths++] = (uint32_t)d;
            }
            if (n_depths == 0) {
                cli_error(cmd, "%s needs a value", a);
                return 2;
            }
        } else if (!strcmp(a, "--kv-type")) {
            NEEDS_VALUE;
            if (!strcmp(val, "f16")) {
                kv_type = SPUD_KV_F16;
            } else if (!strcmp(val, "f32")) {
                kv_type = SPUD_KV_F32;
            } else if (!strcmp(val, "q8_0")) {
                kv_type = SPUD_KV_Q8_0;
            } else {
                cli_error(cmd, "bad value for --kv-type: '%s' (f16, f32 or q8_0)", val);
                return 2;
            }
        } else if (!strcmp(a, "--batch")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 1, 256, &n_batch)) return 2;
        } else if (!strcmp(a, "--real-depth")) {
            real_depth = true;
        } else if (!strcmp(a, "--memory")) {
            memory = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud bench --help)", a);
            return 2;
        }
#undef NEEDS_VALUE
    }
    if (memory) return bench_memory((int)n_threads, (int)reps, json);
    if (!model_path) {
        cli_error(cmd, "give a model with -m MODEL, or --memory (see spud bench --help)");
        return 2;
    }
    if (n_batch > 1 && real_depth) {
        cli_error(cmd, "--batch takes synthetic depths only (leave out --real-depth)");
        return 2;
    }
    if (n_prompt == 0 && n_gen == 0) {
        cli_error(cmd, "nothing to measure: -p 0 and -n 0");
        return 2;
    }

    int rc = 1;
    spud_model *model = NULL;
    spud_ctx *ctx = NULL;
    int32_t *ids = NULL;
    spud_input *rows = NULL;
    uint32_t *seqs = NULL;
    bool *want = NULL;
    double *tps = calloc((size_t)reps, sizeof *tps);
    bench_result results[2 * BENCH_MAX_DEPTHS];
    int n_results = 0;
    uint32_t max_depth = 0;
    for (int d = 0; d < n_depths; d++)
        if (depths[d] > max_depth) max_depth = depths[d];

    spud_model_params mp = spud_model_default_params();
    mp.n_threads = (int32_t)n_threads;
    double t_load = spud_time_s();
    if (!tps || spud_model_load(model_path, &mp, &model)) {
        cli_error(cmd, "%s", tps ? spud_last_error() : "out of memory");
        goto done;
    }
    t_load = spud_time_s() - t_load;
    uint64_t n_ctx = (uint64_t)max_depth + (uint64_t)(n_prompt > n_gen ? n_prompt : n_gen) + 1;
    spud_ctx_params cp = spud_ctx_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.kv_type = kv_type;
    cp.n_seq = (uint32_t)n_batch;
    if (n_ctx > UINT32_MAX || spud_ctx_new_params(model, &cp, &ctx)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    int32_t nv = spud_model_n_vocab(model);
    ids = malloc(sizeof *ids * (size_t)(n_prompt > n_gen * n_batch ? n_prompt : n_gen * n_batch));
    rows = calloc((size_t)n_batch, sizeof *rows);
    seqs = calloc((size_t)n_batch, sizeof *seqs);
    want = calloc((size_t)n_batch, sizeof *want);
    if (!ids || !rows || !seqs || !want) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    const uint64_t wbytes = weight_bytes_per_token(model);
    const uint64_t kv_tok = spud_ctx_kv_bytes_per_token(ctx);
    char types[128];
    describe_types(model, types, sizeof types);
    const char *isa = spud_kernels_init(false);
    const int nth = spud_pool_n_threads(ctx->pool);
    if (!json)
        fprintf(stderr, "bench: %s: %s, %.2f B params, weights %.3f GB read per token, KV %.1f KB per position (%s); "
                        "%d threads, %s kernels\n",
                model_path, types, (double)model->n_params / 1e9, (double)wbytes / 1e9, (double)kv_tok / 1e3,
                spud_type_name(ctx->kv_type), nth, isa);

    for (int d = 0; d < n_depths; d++) {
        const uint32_t depth = depths[d];
        if (set_depth(ctx, (uint32_t)n_batch, depth, real_depth, nv)) goto done;
        if (n_prompt > 0) {
            for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
                spud_ctx_seq_truncate(ctx, 0, depth);
                fill_tokens(ids, n_prompt, nv, (uint64_t)r + 2);
                double t0 = spud_time_s();
                if (spud_decode_tokens(ctx, ids, (size_t)n_prompt, NULL)) {
                    cli_error(cmd, "%s", spud_last_error());
                    goto done;
                }
                if (r >= 0) tps[r] = (double)n_prompt / (spud_time_s() - t0);
            }
            bench_result *res = &results[n_results++];
            snprintf(res->name, sizeof res->name, "pp%lld", (long long)n_prompt);
            res->depth = depth;
            res->tps = stat_of(tps, (int)reps);
            double flops = matmul_flops(model, (double)n_prompt, 1) +
                           attention_flops(model, depth, (double)depth + (double)n_prompt);
            res->rate = flops / ((double)n_prompt / res->tps.mean) / 1e9;
            if (!json)
                fprintf(stderr, "  %-8s depth %6u: %8.2f ± %.2f tok/s  %7.1f GFLOP/s\n", res->name, depth,
                        res->tps.mean, res->tps.sd, res->rate);
        }
        if (n_gen > 0) {
            for (int r = -1; r < reps; r++) {
                for (uint32_t s = 0; s < (uint32_t)n_batch; s++) spud_ctx_seq_truncate(ctx, s, depth);
                fill_tokens(ids, n_gen * n_batch, nv, (uint64_t)r + 1000);
                double t0 = spud_time_s();
                for (int64_t k = 0; k < (r < 0 ? 4 : n_gen); k++) {
                    spud_status st;
                    if (n_batch == 1) {
                        st = spud_decode_tokens(ctx, &ids[k], 1, NULL);
                    } else { /* one row per sequence, each with logits, as the server decodes */
                        for (int64_t s = 0; s < n_batch; s++) {
                            rows[s] = (spud_input){.token = ids[k * n_batch + s]};
                            seqs[s] = (uint32_t)s;
                            want[s] = true;
                        }
                        const spud_batch b = {.in = rows, .seq = seqs, .want_logits = want, .n = (size_t)n_batch};
                        const float *lg;
                        st = spud_decode_batch(ctx, &b, &lg);
                    }
                    if (st) {
                        cli_error(cmd, "%s", spud_last_error());
                        goto done;
                    }
                }
                if (r >= 0) tps[r] = (double)(n_gen * n_batch) / (spud_time_s() - t0);
            }
            bench_result *res = &results[n_results++];
            if (n_batch == 1)
                snprintf(res->name, sizeof res->name, "tg%lld", (long long)n_gen);
            else
                snprintf(res->name, sizeof res->name, "tg%lldx%lld", (long long)n_gen, (long long)n_batch);
            res->depth = depth;
            res->tps = stat_of(tps, (int)reps);
            /* mean positions attended per token: depth + 1 .. depth + n_gen */
            double kv = (double)kv_tok * ((double)depth + ((double)n_gen + 1) / 2);
            res->rate = ((double)wbytes / (double)n_batch + kv) * res->tps.mean / 1e9;
            if (!json)
                fprintf(stderr, "  %-8s depth %6u: %8.2f ± %.2f tok/s  %7.2f GB/s\n", res->name, depth,
                        res->tps.mean, res->tps.sd, res->rate);
        }
    }

    if (json) {
        printf("{\"model\":\"");
        for (const char *p = model_path; *p; p++) {
            if (*p == '"' || *p == '\\') putchar('\\');
            if ((unsigned char)*p >= 0x20) putchar(*p);
        }
        printf("\",\"types\":\"%s\",\"n_params\":%llu,\"weight_bytes_per_token\":%llu,"
               "\"kv_bytes_per_position\":%llu,\"kv_type\":\"%s\",\"threads\":%d,\"isa\":\"%s\",\"reps\":%lld,"
               "\"synthetic_depth\":%s,\"load_s\":%.3f,\"tests\":[",
               types, (unsigned long long)model->n_params, (unsigned long long)wbytes,
               (unsigned long long)kv_tok, spud_type_name(ctx->kv_type), nth, isa, (long long)reps, real_depth ? "false" : "true", t_load);
        for (int i = 0; i < n_results; i++) {
            const bench_result *r = &results[i];
            printf("%s{\"test\":\"%s\",\"depth\":%u,\"tps\":%.3f,\"tps_sd\":%.3f,\"tps_min\":%.3f,"
                   "\"tps_max\":%.3f,\"%s\":%.3f}",
                   i ? "," : "", r->name, r->depth, r->tps.mean, r->tps.sd, r->tps.min, r->tps.max,
                   r->name[0] == 'p' ? "gflops" : "gbps", r->rate);
        }
        printf("]}\n");
    }
    rc = 0;
done:
    free(tps);
    free(ids);
    free(rows);
    free(seqs);
    free(want);
    spud_ctx_free(ctx);
    spud_model_free(model);
    return rc;
}
