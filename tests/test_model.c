/* test_model.c: properties of the forward pass that need no reference:
 * batching, embedding-row inputs, context limits, allocation failures. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "model.h"

#define FIX(name) SPUD_SHARED_DIR "/fixtures/" name

static float max_abs_diff(const float *a, const float *b, int n) {
    float m = 0;
    for (int i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

static spud_model *load(const char *path) {
    spud_model *m = NULL;
    spud_model_params p = spud_model_default_params();
    p.n_threads = 2;
    cr_assert_eq(spud_model_load(path, &p, &m), SPUD_OK, "%s", spud_last_error());
    return m;
}

/* Prefill as one batch, in chunks, and one token at a time: same logits.
 * Float models: to 1e-4. Quantized ones: the matrix products take a kernel
 * by row count (vec_dot, mdot, gemm), whose float summation orders differ;
 * that flips the rounding of an activation now and then, so they agree to
 * the fixtures' tolerance for the type (fixtures/README.md), not closer
 * (measured on llama-q4_k_m: 0.043 between vec_dot and gemm before mdot). */
Test(model, batching_does_not_change_logits) {
    const char *files[] = {FIX("llama-f32.gguf"), FIX("qwen2-q8_0.gguf"), FIX("llama-q4_k_m.gguf")};
    const float tol[] = {1e-4f, 0.15f, 0.22f};
    for (size_t f = 0; f < 3; f++) {
        spud_model *m = load(files[f]);
        int nv = spud_model_n_vocab(m);
        int32_t ids[40];
        for (int i = 0; i < 40; i++) ids[i] = (i * 37 + 11) % nv;
        spud_ctx *a, *b;
        const float *la, *lb;
        cr_assert_eq(spud_ctx_new(m, 64, &a), SPUD_OK);
        cr_assert_eq(spud_ctx_new(m, 64, &b), SPUD_OK);
        cr_assert_eq(spud_decode_tokens(a, ids, 40, &la), SPUD_OK);
        for (int i = 0; i < 40; i += 7) {
            int k = 40 - i < 7 ? 40 - i : 7;
            cr_assert_eq(spud_decode_tokens(b, ids + i, (size_t)k, &lb), SPUD_OK);
        }
        float d = max_abs_diff(la, lb, nv);
        cr_expect_lt(d, tol[f], "%s: batch vs chunks differ by %g", files[f], d);
        spud_ctx_free(a);
        spud_ctx_free(b);
        spud_model_free(m);
    }
}

/* An embedding row equal to a token's embedding gives that token's logits. */
Test(model, embedding_rows_equal_token_rows) {
    spud_model *m = load(FIX("llama-f16.gguf"));
    int nv = spud_model_n_vocab(m), dim = spud_model_n_embd(m);
    int32_t ids[5] = {1, 50, 200, 3, 700};
    float *embd = malloc(sizeof(float) * (size_t)dim);
    spud_type_get(m->tok_embd.type)->to_float((const char *)m->tok_embd.data + 200 * m->tok_embd.row_bytes,
                                              embd, dim);
    spud_input in[5];
    for (int i = 0; i < 5; i++) in[i] = (spud_input){.token = ids[i]};
    in[2] = (spud_input){.token = -1, .embd = embd};
    spud_ctx *a, *b;
    const float *la, *lb;
    cr_assert_eq(spud_ctx_new(m, 16, &a), SPUD_OK);
    cr_assert_eq(spud_ctx_new(m, 16, &b), SPUD_OK);
    cr_assert_eq(spud_decode_tokens(a, ids, 5, &la), SPUD_OK);
    cr_assert_eq(spud_decode(b, in, 5, &lb), SPUD_OK, "%s", spud_last_error());
    cr_expect_eq(max_abs_diff(la, lb, nv), 0.0f);
    free(embd);
    spud_ctx_free(a);
    spud_ctx_free(b);
    spud_model_free(m);
}

Test(model, context_limit_and_bad_tokens) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_ctx *c;
    const float *l;
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    cr_assert_eq(spud_ctx_new(m, 6, &c), SPUD_OK);
    cr_expect_eq(spud_decode_tokens(c, ids, 8, &l), SPUD_ERR_RANGE);
    cr_expect(strstr(spud_last_error(), "context"), "%s", spud_last_error());
    cr_expect_eq(spud_ctx_n_past(c), 0u);
    cr_expect_eq(spud_decode_tokens(c, ids, 6, &l), SPUD_OK);
    cr_expect_eq(spud_decode_tokens(c, ids, 1, &l), SPUD_ERR_RANGE);
    spud_ctx_reset(c);
    int32_t bad[2] = {1, 1 << 30};
    cr_expect_eq(spud_decode_tokens(c, bad, 2, &l), SPUD_ERR_INVALID);
    cr_expect_eq(spud_ctx_n_past(c), 0u);
    spud_ctx_free(c);
    spud_model_free(m);
}

/* Every allocation failure during load and context creation is a clean error. */
Test(model, allocation_failures_are_errors) {
    for (long n = 0;; n++) {
        spud_model *m = NULL;
        spud_ctx *c = NULL;
        spud_model_params p = spud_model_default_params();
        p.n_threads = 1;
        spud_alloc_fail_after(n);
        spud_status st = spud_model_load(FIX("llama-tied-f32.gguf"), &p, &m);
        if (st == SPUD_OK) st = spud_ctx_new(m, 32, &c);
        spud_alloc_fail_after(-1);
        if (st == SPUD_OK) {
            spud_ctx_free(c);
            spud_model_free(m);
            cr_expect_gt(n, 3);
            break;
        }
        cr_expect_eq(st, SPUD_ERR_NOMEM, "n=%ld: %s", n, spud_last_error());
        spud_model_free(m);
        cr_assert_lt(n, 100000);
    }
}

static spud_ctx *ctx_kv(spud_model *m, uint32_t n_ctx, uint32_t n_seq, spud_kv_type kv) {
    spud_ctx *c = NULL;
    spud_ctx_params p = spud_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_seq = n_seq;
    p.kv_type = kv;
    cr_assert_eq(spud_ctx_new_params(m, &p, &c), SPUD_OK, "%s", spud_last_error());
    return c;
}

/* Two sequences decoded together in one batch give the logits each gives
 * alone; copies and truncation of sequences keep them. */
static void multi_sequence(const char *file, spud_kv_type kv) {
    spud_model *m = load(file);
    int nv = spud_model_n_vocab(m);
    int32_t a[12], b[9];
    for (int i = 0; i < 12; i++) a[i] = (i * 31 + 5) % nv;
    for (int i = 0; i < 9; i++) b[i] = (i * 17 + 100) % nv;
    const float *la, *lb, *lab;
    float *ra = malloc(sizeof(float) * (size_t)nv), *rb = malloc(sizeof(float) * (size_t)nv);
    spud_ctx *s = ctx_kv(m, 32, 1, kv);
    cr_assert_eq(spud_decode_tokens(s, a, 12, &la), SPUD_OK);
    memcpy(ra, la, sizeof(float) * (size_t)nv);
    spud_ctx_reset(s);
    cr_assert_eq(spud_decode_tokens(s, b, 9, &lb), SPUD_OK);
    memcpy(rb, lb, sizeof(float) * (size_t)nv);
    spud_ctx_free(s);

    /* interleave: rows of a and b alternate; logits for both last rows */
    spud_ctx *mc = ctx_kv(m, 32, 3, kv);
    spud_input in[21];
    uint32_t seq[21];
    bool want[21] = {0};
    int ia = 0, ib = 0, k = 0;
    while (ia < 12 || ib < 9) {
        if (ia < 12) seq[k] = 2, in[k++] = (spud_input){.token = a[ia++]};
        if (ib < 9) seq[k] = 0, in[k++] = (spud_input){.token = b[ib++]};
    }
    int last_a = -1, last_b = -1;
    for (int i = 0; i < 21; i++) *(seq[i] == 2 ? &last_a : &last_b) = i;
    want[last_a] = want[last_b] = true;
    spud_batch batch = {.in = in, .seq = seq, .want_logits = want, .n = 21};
    cr_assert_eq(spud_decode_batch(mc, &batch, &lab), SPUD_OK, "%s", spud_last_error());
    /* logits come in row order */
    const float *got_a = last_a < last_b ? lab : lab + nv, *got_b = last_a < last_b ? lab + nv : lab;
    cr_expect_lt(max_abs_diff(got_a, ra, nv), 1e-4f);
    cr_expect_lt(max_abs_diff(got_b, rb, nv), 1e-4f);
    cr_expect_eq(spud_ctx_seq_n_past(mc, 2), 12u);
    cr_expect_eq(spud_ctx_seq_n_past(mc, 0), 9u);
    cr_expect_eq(spud_ctx_seq_n_past(mc, 1), 0u);

    /* copy a's first 7 positions into seq 1, then decode a's remaining 5 there */
    cr_assert_eq(spud_ctx_seq_copy(mc, 2, 1, 7), SPUD_OK);
    spud_input rest[5];
    uint32_t seq1[5] = {1, 1, 1, 1, 1};
    for (int i = 0; i < 5; i++) rest[i] = (spud_input){.token = a[7 + i]};
    spud_batch b2 = {.in = rest, .seq = seq1, .n = 5};
    const float *lc;
    cr_assert_eq(spud_decode_batch(mc, &b2, &lc), SPUD_OK);
    cr_expect_lt(max_abs_diff(lc, ra, nv), 1e-4f);

    /* truncate seq 0 to 4 and re-decode b's tail: same logits again */
    spud_ctx_seq_truncate(mc, 0, 4);
    spud_input tail[5];
    uint32_t seq0[5] = {0};
    for (int i = 0; i < 5; i++) tail[i] = (spud_input){.token = b[4 + i]};
    spud_batch b3 = {.in = tail, .seq = seq0, .n = 5};
    cr_assert_eq(spud_decode_batch(mc, &b3, &lc), SPUD_OK);
    cr_expect_lt(max_abs_diff(lc, rb, nv), 1e-4f);

    /* errors change nothing */
    uint32_t bad_seq[1] = {3};
    spud_batch b4 = {.in = tail, .seq = bad_seq, .n = 1};
    cr_expect_eq(spud_decode_batch(mc, &b4, &lc), SPUD_ERR_INVALID);
    cr_expect_eq(spud_ctx_seq_n_past(mc, 0), 9u);
    free(ra);
    free(rb);
    spud_ctx_free(mc);
    spud_model_free(m);
}

Test(model, multi_sequence_batch_equals_single) {
    multi_sequence(FIX("qwen2-f32.gguf"), SPUD_KV_AUTO);   /* f32 cache */
    multi_sequence(FIX("qwen2-q8_0.gguf"), SPUD_KV_AUTO);  /* f16 cache */
    multi_sequence(FIX("llama-q4_k_m.gguf"), SPUD_KV_F32);
    multi_sequence(FIX("llama-q4_0.gguf"), SPUD_KV_Q8_0);
}

/* A batch longer than one forward chunk (256 rows) with logits wanted in
 * several chunks: each row's logits are its own. */
Test(model, logits_across_chunks) {
    spud_model *m = load(FIX("llama-q8_0.gguf"));
    const int nv = spud_model_n_vocab(m);
    enum { NA = 200, NB = 150 };
    int32_t a[NA], b[NB];
    for (int i = 0; i < NA; i++) a[i] = (i * 31 + 5) % nv;
    for (int i = 0; i < NB; i++) b[i] = (i * 17 + 100) % nv;
    float *ra = malloc(sizeof(float) * (size_t)nv), *rb = malloc(sizeof(float) * (size_t)nv);
    const float *l;
    spud_ctx *s = ctx_kv(m, 256, 1, SPUD_KV_AUTO);
    cr_assert_eq(spud_decode_tokens(s, a, NA, &l), SPUD_OK);
    memcpy(ra, l, sizeof(float) * (size_t)nv);
    spud_ctx_reset(s);
    cr_assert_eq(spud_decode_tokens(s, b, NB, &l), SPUD_OK);
    memcpy(rb, l, sizeof(float) * (size_t)nv);
    spud_ctx_free(s);
    /* all of a, then all of b: a's last row is in the first chunk, b's in the second */
    spud_input in[NA + NB];
    uint32_t seq[NA + NB];
    bool want[NA + NB] = {0};
    for (int i = 0; i < NA; i++) in[i] = (spud_input){.token = a[i]}, seq[i] = 0;
    for (int i = 0; i < NB; i++) in[NA + i] = (spud_input){.token = b[i]}, seq[NA + i] = 1;
    want[NA - 1] = want[NA + NB - 1] = true;
    spud_ctx *mc = ctx_kv(m, 256, 2, SPUD_KV_AUTO);
    spud_batch batch = {.in = in, .seq = seq, .want_logits = want, .n = NA + NB};
    cr_assert_eq(spud_decode_batch(mc, &batch, &l), SPUD_OK, "%s", spud_last_error());
    cr_expect_lt(max_abs_diff(l, ra, nv), 1e-4f, "first chunk's logits");
    cr_expect_lt(max_abs_diff(l + nv, rb, nv), 1e-4f, "second chunk's logits");
    free(ra);
    free(rb);
    spud_ctx_free(mc);
    spud_model_free(m);
}

/* The cache type follows the weights unless asked; its size follows the type. */
Test(model, kv_types) {
    spud_model *mf = load(FIX("llama-f16.gguf")), *mq = load(FIX("llama-q4_0.gguf"));
    spud_ctx *a = ctx_kv(mf, 64, 1, SPUD_KV_AUTO), *b = ctx_kv(mq, 64, 1, SPUD_KV_AUTO);
    spud_ctx *c = ctx_kv(mq, 64, 1, SPUD_KV_F32);
    cr_expect_eq(spud_ctx_kv_bytes_per_token(a), 2u * 2 * 2 * 32 * 4, "f16 weights: f32 cache");
    cr_expect_eq(spud_ctx_kv_bytes_per_token(b), 2u * 2 * 2 * 32 * 2, "q4_0 weights: f16 cache");
    cr_expect_eq(spud_ctx_kv_bytes_per_token(c), 2u * 2 * 2 * 32 * 4);
    cr_expect_eq(spud_model_kv_bytes_per_token(mq), spud_ctx_kv_bytes_per_token(b));
    spud_ctx_params p = spud_ctx_default_params();
    p.kv_type = (spud_kv_type)7;
    spud_ctx *bad = NULL;
    cr_expect_eq(spud_ctx_new_params(mq, &p, &bad), SPUD_ERR_INVALID);
    cr_expect_null(bad);
    spud_ctx_free(a);
    spud_ctx_free(b);
    spud_ctx_free(c);
    spud_model_free(mf);
    spud_model_free(mq);
}

/* Across several attention tiles (64 positions): one batch, chunks, and the
 * last rows one at a time agree, with either cache type. */
Test(model, long_context_chunks_agree) {
    const char *files[] = {FIX("llama-q4_k.gguf"), FIX("llama-f32.gguf")};
    for (size_t f = 0; f < 2; f++)
        for (int kv = SPUD_KV_F32; kv <= SPUD_KV_Q8_0; kv++) {
            spud_model *m = load(files[f]);
            const int nv = spud_model_n_vocab(m), n = 203;
            int32_t ids[203];
            for (int i = 0; i < n; i++) ids[i] = (i * 53 + 7) % nv;
            spud_ctx *a = ctx_kv(m, 256, 1, (spud_kv_type)kv), *b = ctx_kv(m, 256, 1, (spud_kv_type)kv);
            const float *la, *lb;
            cr_assert_eq(spud_decode_tokens(a, ids, (size_t)n, &la), SPUD_OK);
            for (int i = 0; i < n; i += 67) {
                const int k = n - i < 67 ? n - i : 67;
                cr_assert_eq(spud_decode_tokens(b, ids + i, (size_t)k, &lb), SPUD_OK);
            }
            float d = max_abs_diff(la, lb, nv);
            cr_expect_lt(d, 1e-4f, "%s kv %d: batch vs chunks differ by %g", files[f], kv, (double)d);
            spud_ctx_free(a);
            spud_ctx_free(b);
            spud_model_free(m);
        }
}
