/* test_engine.c: the continuous-batching engine against the single-sequence
 * API: the same greedy text whether a request runs alone or among others,
 * prefix reuse, n choices, stop strings, logprobs, cancellation, limits. */
#include <criterion/criterion.h>
#include <math.h>
#include <regex.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "model.h"

#define FIX(name) SPUD_SHARED_DIR "/fixtures/" name

static spud_model *load(const char *path) {
    spud_model *m = NULL;
    spud_model_params p = spud_model_default_params();
    p.n_threads = 2;
    cr_assert_eq(spud_model_load(path, &p, &m), SPUD_OK, "%s", spud_last_error());
    return m;
}

static void prompt_ids(const spud_model *m, int which, int32_t **ids, size_t *n) {
    static const char *texts[] = {
        "The quick brown fox jumps over the lazy dog.",
        "Order #4521 (v2.7): 3 items @ $19.99 = $59.97; ship by 2025-03-14!",
        "When we speak of free software, we are referring to freedom, not price.",
        "The quick brown fox jumps over the lazy cat, twice.",
    };
    cr_assert_eq(spud_tokenize(m, texts[which], strlen(texts[which]), true, false, ids, n), SPUD_OK);
}

/* Greedy text of n_gen tokens from the single-sequence API (the reference). */
static char *reference(const spud_model *m, const int32_t *ids, size_t n, int n_gen) {
    spud_ctx *c;
    const float *lg;
    cr_assert_eq(spud_ctx_new(m, 256, &c), SPUD_OK);
    cr_assert_eq(spud_decode_tokens(c, ids, n, &lg), SPUD_OK);
    spud_sampler *s = spud_sampler_new(&(spud_sampler_params){.temp = 0}, spud_model_n_vocab(m));
    char *out = calloc(1, 65536);
    size_t len = 0;
    spud_detok dt;
    spud_detok_init(&dt);
    for (int i = 0; i < n_gen; i++) {
        int32_t t = spud_sampler_sample(s, lg, spud_model_n_vocab(m));
        if (spud_token_is_eog(m, t)) break;
        len += spud_detok_push(&dt, m->tok, t, out + len, 65536 - len);
        cr_assert_eq(spud_decode_tokens(c, &t, 1, &lg), SPUD_OK);
    }
    len += spud_detok_flush(&dt, out + len, 65536 - len);
    out[len] = 0;
    spud_sampler_free(s);
    spud_ctx_free(c);
    return out;
}

typedef struct {
    char *text[4];
    size_t len[4];
    spud_finish finish[4];
    int32_t n_gen[4], n_reasoning[4];
    size_t n_lp[4];
    int32_t tok[4][512]; /* the tokens, when logprobs */
} collected;

/* Read a request to its end. */
static void collect(spud_engine_req *r, int n_choices, collected *out) {
    memset(out, 0, sizeof *out);
    for (int c = 0; c < n_choices; c++) out->text[c] = calloc(1, 65536);
    spud_engine_delta d = {0};
    for (;;) {
        bool all = true;
        for (int c = 0; c < n_choices; c++) {
            spud_engine_req_take(r, c, &d);
            memcpy(out->text[c] + out->len[c], d.text, d.len);
            out->len[c] += d.len;
            for (size_t i = 0; i < d.n_lp && out->n_lp[c] + i < 512; i++) out->tok[c][out->n_lp[c] + i] = d.lp[i].token;
            out->n_lp[c] += d.n_lp;
            out->finish[c] = d.finish;
            out->n_gen[c] = d.n_gen;
            out->n_reasoning[c] = d.n_reasoning;
            if (!d.finish) all = false;
        }
        if (all) break;
        spud_engine_req_wait(r, 1000);
    }
    spud_engine_delta_free(&d);
}

static void collected_free(collected *c) {
    for (int i = 0; i < 4; i++) free(c->text[i]);
}

static spud_engine_req_params greedy(const int32_t *ids, size_t n, int max_tokens) {
    return (spud_engine_req_params){.prompt = ids, .n_prompt = n, .n_choices = 1,
                                    .max_tokens = max_tokens, .sampling = {.temp = 0}};
}

/* Four prompts at once give what each gives alone; a repeated prompt reuses its KV. */
Test(engine, concurrent_requests_match_reference) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 256, .n_parallel = 4, .prefill_chunk = 5}, &e),
                 SPUD_OK, "%s", spud_last_error());
    int32_t *ids[4];
    size_t n[4];
    char *ref[4];
    for (int i = 0; i < 4; i++) {
        prompt_ids(m, i, &ids[i], &n[i]);
        ref[i] = reference(m, ids[i], n[i], 24);
    }
    for (int round = 0; round < 2; round++) {
        spud_engine_req *r[4];
        for (int i = 0; i < 4; i++) {
            spud_engine_req_params p = greedy(ids[i], n[i], 24);
            cr_assert_eq(spud_engine_submit(e, &p, &r[i]), SPUD_OK, "%s", spud_last_error());
        }
        for (int i = 0; i < 4; i++) {
            collected c;
            collect(r[i], 1, &c);
            cr_expect_str_eq(c.text[0], ref[i], "round %d prompt %d", round, i);
            cr_expect_eq(c.finish[0], SPUD_FINISH_LENGTH);
            cr_expect_eq(c.n_gen[0], 24);
            spud_engine_req_info info;
            spud_engine_req_get_info(r[i], &info);
            cr_expect_eq(info.n_prompt, n[i]);
            if (round == 1) /* everything but the last prompt token was cached */
                cr_expect_eq(info.n_cached, n[i] - 1, "prompt %d: cached %u of %zu", i, info.n_cached, n[i]);
            cr_expect_gt(info.t_first, 0);
            cr_expect_geq(info.t_done, info.t_first);
            collected_free(&c);
            spud_engine_req_release(r[i]);
        }
    }
    spud_engine_stats st;
    for (int i = 0; i < 100; i++) { /* stats are published after the step that ended the requests */
        spud_engine_get_stats(e, &st);
        if (st.n_active == 0) break;
        usleep(10000);
    }
    cr_expect_eq(st.n_active, 0);
    cr_expect_eq(st.generated_tokens, 8u * 24u);
    for (int i = 0; i < 4; i++) {
        spud_free(ids[i]);
        free(ref[i]);
    }
    spud_engine_free(e);
    spud_model_free(m);
}

/* n choices share one prefill; the same seed gives the same text; different seeds differ. */
Test(engine, choices_and_seeds) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 128, .n_parallel = 3}, &e), SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 2, &ids, &n);
    spud_engine_req_params p = {.prompt = ids, .n_prompt = n, .n_choices = 3, .max_tokens = 20,
                                .sampling = {.temp = 1.0f, .top_p = 1, .seed = 42}};
    spud_engine_req *r;
    collected a, b;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 3, &a);
    spud_engine_req_release(r);
    p.n_choices = 1;
    p.sampling.seed = 43; /* = choice 1 of the first request */
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &b);
    spud_engine_req_release(r);
    cr_expect_str_eq(b.text[0], a.text[1]);
    cr_expect_str_neq(a.text[0], a.text[1]);
    cr_expect_str_neq(a.text[1], a.text[2]);
    for (int c = 0; c < 3; c++) cr_expect_eq(a.n_gen[c], 20);
    collected_free(&a);
    collected_free(&b);
    /* more choices than slots */
    p.n_choices = 4;
    cr_expect_eq(spud_engine_submit(e, &p, &r), SPUD_ERR_INVALID);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}

/* Stop strings end the text before them, even when split across tokens; logprobs come per token. */
Test(engine, stop_strings_and_logprobs) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 256, .n_parallel = 2}, &e), SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 0, &ids, &n);
    char *ref = reference(m, ids, n, 40);
    size_t rl = strlen(ref);
    cr_assert_gt(rl, 20u, "reference: '%s'", ref);
    /* a stop string spanning the middle of the text; its first occurrence decides */
    char stop[8];
    memcpy(stop, ref + rl / 2, 5);
    stop[5] = 0;
    size_t at = (size_t)(strstr(ref, stop) - ref);
    const char *stops[2] = {"\x01never", stop};
    spud_engine_req_params p = greedy(ids, n, 40);
    p.stop = stops;
    p.n_stop = 2;
    p.logprobs = true;
    p.top_logprobs = 3;
    spud_engine_req *r;
    collected c;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &c);
    spud_engine_req_release(r);
    cr_expect_eq(c.finish[0], SPUD_FINISH_STOP);
    cr_expect_eq(c.len[0], at, "stop '%s': got '%s' of '%s'", stop, c.text[0], ref);
    cr_expect_eq(strncmp(c.text[0], ref, at), 0);
    cr_expect_leq(c.n_lp[0], (size_t)c.n_gen[0]);
    collected_free(&c);

    /* logprobs: the greedy token is the top alternative and the values are log-probabilities */
    p.stop = NULL;
    p.n_stop = 0;
    p.max_tokens = 5;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    spud_engine_delta d = {0};
    size_t got = 0;
    while (!d.finish || d.len) {
        spud_engine_req_wait(r, 1000);
        spud_engine_req_take(r, 0, &d);
        for (size_t i = 0; i < d.n_lp; i++, got++) {
            const spud_logprob *lp = &d.lp[i];
            cr_expect_eq(lp->n_top, 3);
            cr_expect_eq(lp->top[0].token, lp->token);
            cr_expect_leq(lp->logprob, 0.0f);
            cr_expect_geq(lp->top[0].logprob, lp->top[1].logprob);
            cr_expect_geq(lp->top[1].logprob, lp->top[2].logprob);
        }
        if (d.finish && !d.len) break;
    }
    cr_expect_eq(got, 5u);
    spud_engine_delta_free(&d);
    spud_engine_req_release(r);
    free(ref);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}

/* A logit bias of +100 forces a token. */
Test(engine, logit_bias) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 128, .n_parallel = 1}, &e), SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 1, &ids, &n);
    int32_t want = -1;
    for (int32_t t = 0; t < spud_model_n_vocab(m) && want < 0; t++) {
        char buf[16];
        if (spud_token_to_piece(m, t, false, buf, sizeof buf) == 1 && buf[0] == 'Q') want = t;
    }
    cr_assert_geq(want, 0);
    spud_logit_bias bias = {want, 100};
    spud_engine_req_params p = greedy(ids, n, 4);
    p.bias = &bias;
    p.n_bias = 1;
    spud_engine_req *r;
    collected c;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &c);
    cr_expect_str_eq(c.text[0], "QQQQ");
    collected_free(&c);
    spud_engine_req_release(r);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}

/* Cancelling frees the slot; a full queue refuses; a stopped engine ends what waits. */
Test(engine, cancel_queue_and_stop) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 4096, .n_parallel = 1, .max_queue = 1}, &e),
                 SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 0, &ids, &n);
    spud_engine_req_params p = greedy(ids, n, 0); /* until the context is full */
    spud_engine_req *a, *b, *c;
    cr_assert_eq(spud_engine_submit(e, &p, &a), SPUD_OK);
    spud_engine_delta d = {0};
    while (d.n_gen < 3) {
        spud_engine_req_wait(a, 1000);
        spud_engine_req_take(a, 0, &d);
    }
    cr_assert_eq(spud_engine_submit(e, &p, &b), SPUD_OK); /* waits: one slot */
    cr_expect_eq(spud_engine_submit(e, &p, &c), SPUD_ERR_RANGE);
    spud_engine_stats st;
    spud_engine_get_stats(e, &st);
    cr_expect_eq(st.queue_depth, 1);
    spud_engine_req_cancel(a);
    while (!spud_engine_req_done(a)) spud_engine_req_wait(a, 1000);
    spud_engine_req_take(a, 0, &d);
    cr_expect_eq(d.finish, SPUD_FINISH_CANCELLED);
    cr_expect_lt(d.n_gen, 4000);
    spud_engine_req_release(a);
    /* b now runs; stopping the engine ends it */
    spud_engine_req_take(b, 0, &d);
    while (d.n_gen < 1) {
        spud_engine_req_wait(b, 1000);
        spud_engine_req_take(b, 0, &d);
    }
    spud_engine_stop(e);
    cr_expect(spud_engine_req_done(b));
    spud_engine_req_take(b, 0, &d);
    cr_expect_eq(d.finish, SPUD_FINISH_CANCELLED);
    cr_expect_neq(spud_engine_submit(e, &p, &c), SPUD_OK);
    spud_engine_req_release(b);
    spud_engine_delta_free(&d);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}

/* A prompt that fills the context gives one token and "length". */
Test(engine, context_limits) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 16, .n_parallel = 2}, &e), SPUD_OK);
    int32_t ids[17];
    for (int i = 0; i < 17; i++) ids[i] = 100 + i;
    spud_engine_req_params p = greedy(ids, 17, 10);
    spud_engine_req *r;
    cr_expect_eq(spud_engine_submit(e, &p, &r), SPUD_ERR_INVALID);
    p.n_prompt = 16;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collected c;
    collect(r, 1, &c);
    cr_expect_eq(c.finish[0], SPUD_FINISH_LENGTH);
    cr_expect_eq(c.n_gen[0], 1);
    collected_free(&c);
    spud_engine_req_release(r);
    p.n_prompt = 10;
    p.max_tokens = 0;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &c);
    cr_expect_eq(c.finish[0], SPUD_FINISH_LENGTH);
    cr_expect_eq(c.n_gen[0], 7); /* 10 prompt + 6 fed back = 16 positions, the 7th token has no room */
    collected_free(&c);
    spud_engine_req_release(r);
    spud_engine_free(e);
    spud_model_free(m);
}

/* A prompt that extends the prompt of a running request gets its KV copied
 * from that request's slot, and still the reference text. */
Test(engine, prefix_copied_from_a_busy_slot) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 4096, .n_parallel = 2}, &e), SPUD_OK);
    int32_t *a;
    size_t na;
    prompt_ids(m, 2, &a, &na);
    int32_t b[128];
    memcpy(b, a, na * sizeof *b);
    size_t nb = na;
    b[nb++] = 300;
    b[nb++] = 301;
    char *ref = reference(m, b, nb, 12);
    spud_engine_req_params pa = greedy(a, na, 0); /* runs until cancelled (or 4096 positions) */
    spud_engine_req *ra, *rb;
    cr_assert_eq(spud_engine_submit(e, &pa, &ra), SPUD_OK);
    spud_engine_delta d = {0};
    while (d.n_gen < 2) {
        spud_engine_req_wait(ra, 1000);
        spud_engine_req_take(ra, 0, &d);
    }
    spud_engine_req_params pb = greedy(b, nb, 12);
    cr_assert_eq(spud_engine_submit(e, &pb, &rb), SPUD_OK);
    collected c;
    collect(rb, 1, &c);
    spud_engine_req_info info;
    spud_engine_req_get_info(rb, &info);
    cr_expect_eq(info.n_cached, na, "cached %u of a's %zu prompt tokens", info.n_cached, na);
    cr_expect_str_eq(c.text[0], ref);
    cr_expect(!spud_engine_req_done(ra), "a was still running, so b's prefix came from a busy slot");
    collected_free(&c);
    spud_engine_req_release(rb);
    spud_engine_req_release(ra);
    spud_engine_delta_free(&d);
    free(ref);
    spud_free(a);
    spud_engine_free(e);
    spud_model_free(m);
}

/* A grammar constrains every choice (each with its own matcher), logit_bias
 * cannot push a refused token through, a finished grammar ends with stop,
 * max_tokens cuts with length, and an unresolvable token reference is refused. */
Test(engine, grammar) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 256, .n_parallel = 3}, &e), SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 0, &ids, &n);
    static const char gbnf[] = "root ::= \"[\" w (\",\" w){2} \"]\"\nw ::= [a-z]{2,4}\n";
    regex_t re;
    cr_assert_eq(regcomp(&re, "^\\[[a-z]{2,4}(,[a-z]{2,4}){2}\\]$", REG_EXTENDED | REG_NOSUB), 0);
    int32_t q = -1;
    for (int32_t t = 0; t < spud_model_n_vocab(m) && q < 0; t++) {
        char buf[16];
        if (spud_token_to_piece(m, t, false, buf, sizeof buf) == 1 && buf[0] == 'Q') q = t;
    }
    cr_assert_geq(q, 0);
    spud_logit_bias bias = {q, 100};
    for (int seed = 0; seed < 4; seed++) {
        spud_engine_req_params p = greedy(ids, n, 64);
        p.n_choices = 3;
        p.sampling = (spud_sampler_params){.temp = 1.5f, .seed = (uint64_t)seed * 7};
        p.bias = &bias;
        p.n_bias = 1;
        cr_assert_eq(spud_grammar_parse(gbnf, strlen(gbnf), &p.grammar), SPUD_OK, "%s", spud_last_error());
        spud_engine_req *r;
        collected c;
        cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK, "%s", spud_last_error());
        collect(r, 3, &c);
        for (int k = 0; k < 3; k++) {
            cr_expect_eq(regexec(&re, c.text[k], 0, NULL, 0), 0, "seed %d choice %d: '%s'", seed, k, c.text[k]);
            cr_expect_eq(c.finish[k], SPUD_FINISH_STOP, "seed %d choice %d", seed, k);
        }
        collected_free(&c);
        spud_engine_req_release(r);
    }
    regfree(&re);

    spud_engine_req_params p = greedy(ids, n, 2);
    cr_assert_eq(spud_grammar_parse(gbnf, strlen(gbnf), &p.grammar), SPUD_OK);
    spud_engine_req *r;
    collected c;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &c);
    cr_expect_eq(c.finish[0], SPUD_FINISH_LENGTH);
    cr_expect_eq(c.n_gen[0], 2);
    cr_expect_eq(c.text[0][0], '[');
    collected_free(&c);
    spud_engine_req_release(r);

    /* lazy (tool_choice auto): free text until the trigger, then the grammar; finished ends it */
    static const char lazy[] = "root ::= \"[\" [0-9]{1,4} \"]\"\n";
    const char *trig[1] = {"e"};
    regex_t lre;
    cr_assert_eq(regcomp(&lre, "^[^e]*e\\[[0-9]{1,4}\\]$", REG_EXTENDED | REG_NOSUB), 0);
    for (int seed = 0; seed < 4; seed++) {
        p = greedy(ids, n, 200);
        p.sampling = (spud_sampler_params){.temp = 1.0f, .seed = (uint64_t)seed};
        p.triggers = trig;
        p.n_triggers = 1;
        cr_assert_eq(spud_grammar_parse(lazy, strlen(lazy), &p.grammar), SPUD_OK);
        cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK, "%s", spud_last_error());
        collect(r, 1, &c);
        cr_expect_eq(regexec(&lre, c.text[0], 0, NULL, 0), 0, "seed %d: '%s'", seed, c.text[0]);
        cr_expect_eq(c.finish[0], SPUD_FINISH_STOP, "seed %d", seed);
        collected_free(&c);
        spud_engine_req_release(r);
    }
    regfree(&lre);

    static const char bad[] = "root ::= <no-such-token> \"x\"\n";
    p = greedy(ids, n, 2);
    cr_assert_eq(spud_grammar_parse(bad, strlen(bad), &p.grammar), SPUD_OK);
    cr_expect_eq(spud_engine_submit(e, &p, &r), SPUD_ERR_INVALID);
    cr_expect_null(r);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}

/* Reasoning tokens: those whose text starts inside a think block, replayed
 * here over the tokens' pieces; end_choice stops a choice as finished. */
Test(engine, think_count_and_end_choice) {
    spud_model *m = load(FIX("llama-f32.gguf"));
    spud_engine *e;
    cr_assert_eq(spud_engine_new(m, &(spud_engine_params){.n_ctx = 256, .n_parallel = 2}, &e), SPUD_OK);
    int32_t *ids;
    size_t n;
    prompt_ids(m, 0, &ids, &n);
    static const char gbnf[] = "root ::= [a-z ]{2,9} \"</think>\" [a-z]{1,6} \"<think>\" [a-z ]{3,12} \"</think>\" [a-z]{1,4}\n";
    for (int seed = 0; seed < 6; seed++) {
        spud_engine_req_params p = greedy(ids, n, 200);
        p.n_choices = 2;
        p.sampling = (spud_sampler_params){.temp = 1.0f, .seed = (uint64_t)seed};
        p.logprobs = true;
        p.think_open[0] = "<think>";
        p.think_close[0] = "</think>";
        p.in_reasoning = seed % 2 == 0;
        cr_assert_eq(spud_grammar_parse(gbnf, strlen(gbnf), &p.grammar), SPUD_OK);
        spud_engine_req *r;
        collected c;
        cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK, "%s", spud_last_error());
        collect(r, 2, &c);
        for (int k = 0; k < 2; k++) {
            cr_assert_eq(c.finish[k], SPUD_FINISH_STOP);
            cr_assert_eq((int32_t)c.n_lp[k], c.n_gen[k]);
            /* replay: the text before each token decides */
            char text[4096] = "";
            size_t len = 0, pos = 0;
            bool in = p.in_reasoning;
            int32_t want = 0;
            for (size_t i = 0; i < c.n_lp[k]; i++) {
                want += in;
                len += spud_token_to_piece(m, c.tok[k][i], false, text + len, sizeof text - len - 1);
                text[len] = 0;
                const char *mk;
                while ((mk = strstr(text + pos, in ? "</think>" : "<think>")) != NULL) {
                    pos = (size_t)(mk - text) + strlen(in ? "</think>" : "<think>");
                    in = !in;
                }
            }
            cr_expect_eq(c.n_reasoning[k], want, "seed %d choice %d: %d, want %d: '%s'", seed, k,
                         c.n_reasoning[k], want, text);
            cr_expect_gt(want, 0);
        }
        collected_free(&c);
        spud_engine_req_release(r);
    }
    /* without markers nothing counts */
    spud_engine_req_params p = greedy(ids, n, 5);
    p.in_reasoning = true;
    spud_engine_req *r;
    collected c;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    collect(r, 1, &c);
    cr_expect_eq(c.n_reasoning[0], 0);
    collected_free(&c);
    spud_engine_req_release(r);
    /* unpaired markers are refused */
    p.think_open[0] = "<think>";
    cr_expect_eq(spud_engine_submit(e, &p, &r), SPUD_ERR_INVALID);

    /* end_choice: choice 1 ends (as finished) once asked, choice 0 runs to max_tokens */
    p = greedy(ids, n, 150);
    p.n_choices = 2;
    cr_assert_eq(spud_engine_submit(e, &p, &r), SPUD_OK);
    spud_engine_delta d = {0};
    while (d.n_gen < 3) {
        spud_engine_req_wait(r, 1000);
        spud_engine_req_take(r, 1, &d);
    }
    spud_engine_req_end_choice(r, 1);
    spud_engine_req_end_choice(r, 7); /* out of range: ignored */
    collect(r, 2, &c);
    cr_expect_eq(c.finish[1], SPUD_FINISH_STOP);
    cr_expect_lt(c.n_gen[1], 150);
    cr_expect_eq(c.n_gen[0], 150);
    cr_expect_eq(c.finish[0], SPUD_FINISH_LENGTH);
    collected_free(&c);
    spud_engine_delta_free(&d);
    spud_engine_req_release(r);
    spud_free(ids);
    spud_engine_free(e);
    spud_model_free(m);
}
