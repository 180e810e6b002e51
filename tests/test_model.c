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

/* Prefill as one batch, in chunks, and one token at a time: same logits. */
Test(model, batching_does_not_change_logits) {
    const char *files[] = {FIX("llama-f32.gguf"), FIX("qwen2-q8_0.gguf"), FIX("llama-q4_k_m.gguf")};
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
        cr_expect_lt(d, 1e-4f, "%s: batch vs chunks differ by %g", files[f], d);
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
