/* cmd_run.c: `spud run`: generate text from a prompt, streaming it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "model.h"

#ifndef SPUD_DEFAULT_MODEL_PATH
#define SPUD_DEFAULT_MODEL_PATH "build/default-model.gguf"
#endif

static void run_usage(FILE *f) {
    fprintf(f,
            "usage: spud run [-m MODEL] (-p PROMPT | -f FILE) [options]\n"
            "Generate text from a prompt, streamed to stdout; a one-line speed summary goes to stderr.\n"
            "  -m MODEL             GGUF model (default: the random-weight demo model the build made,\n"
            "                       " SPUD_DEFAULT_MODEL_PATH ")\n"
            "  -p PROMPT            prompt text\n"
            "  -f FILE              read the prompt from FILE\n"
            "  -n N                 tokens to generate (default 128; -1: until end or context full)\n"
            "  -c CTX               context size in tokens (default: min(training context, 4096))\n"
            "  -t THREADS           threads (default: all cores)\n"
            "  --temp T             temperature (default 0.8; 0: greedy)\n"
            "  --top-k K            top-k (default 40; 0: off)\n"
            "  --top-p P            top-p (default 0.95; 1: off)\n"
            "  --min-p P            min-p (default 0.05; 0: off)\n"
            "  --repeat-penalty R   repetition penalty (default 1: off)\n"
            "  --repeat-last-n N    penalty window (default 64; -1: all)\n"
            "  --frequency-penalty F, --presence-penalty P   OpenAI-style penalties (default 0)\n"
            "  --seed S             sampling seed (default 3405691582)\n"
            "  --no-bos             do not add BOS even if the model asks for it\n"
            "  --parse-special      recognise control tokens such as <|im_start|> in the prompt\n"
            "  --ids                print generated token ids as a JSON array instead of text\n");
    fputs(cli_grammar_usage(), f);
}

int cmd_run(int argc, char **argv) {
    const char *cmd = "run", *model_path = SPUD_DEFAULT_MODEL_PATH, *prompt = NULL, *file = NULL;
    int64_t n_predict = 128, n_ctx = 0, n_threads = 0, v;
    bool add_bos = true, parse_special = false, ids_out = false;
    spud_sampler_params sp = spud_sampler_default_params();
    int rc = 1, k;
    cli_grammar_opts gopts = {0};
    cli_grammar *gram = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            run_usage(stdout);
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
            prompt = val;
        } else if (!strcmp(a, "-f")) {
            NEEDS_VALUE;
            file = val;
        } else if (!strcmp(a, "-n")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, -1, INT32_MAX, &n_predict)) return 2;
        } else if (!strcmp(a, "-c")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 1, UINT32_MAX, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 1, 1024, &n_threads)) return 2;
        } else if (!strcmp(a, "--temp")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.temp)) return 2;
        } else if (!strcmp(a, "--top-k")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 0, INT32_MAX, &v)) return 2;
            sp.top_k = (int32_t)v;
        } else if (!strcmp(a, "--top-p")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.top_p)) return 2;
        } else if (!strcmp(a, "--min-p")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.min_p)) return 2;
        } else if (!strcmp(a, "--repeat-penalty")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.repeat_penalty)) return 2;
        } else if (!strcmp(a, "--repeat-last-n")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, -1, INT32_MAX, &v)) return 2;
            sp.repeat_last_n = (int32_t)v;
        } else if (!strcmp(a, "--frequency-penalty")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.freq_penalty)) return 2;
        } else if (!strcmp(a, "--presence-penalty")) {
            NEEDS_VALUE;
            if (!cli_parse_f32(cmd, a, val, &sp.presence_penalty)) return 2;
        } else if (!strcmp(a, "--seed")) {
            NEEDS_VALUE;
            if (!cli_parse_i64(cmd, a, val, 0, INT64_MAX, &v)) return 2;
            sp.seed = (uint64_t)v;
        } else if (!strcmp(a, "--no-bos")) {
            add_bos = false;
        } else if (!strcmp(a, "--parse-special")) {
            parse_special = true;
        } else if (!strcmp(a, "--ids")) {
            ids_out = true;
        } else if ((k = cli_grammar_option(&gopts, argc, argv, i)) != 0) {
            if (k < 0) return 2;
            i += k - 1;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud run --help)", a);
            return 2;
        }
#undef NEEDS_VALUE
    }
    if (!prompt && !file) {
        cli_error(cmd, "give a prompt with -p TEXT or -f FILE (see spud run --help)");
        return 2;
    }
    if (sp.top_p <= 0 || sp.top_p > 1 || sp.min_p < 0 || sp.min_p > 1) {
        cli_error(cmd, "--top-p must be in (0, 1] and --min-p in [0, 1]");
        return 2;
    }

    char *file_text = NULL;
    size_t prompt_len = prompt ? strlen(prompt) : 0;
    spud_model *model = NULL;
    spud_ctx *ctx = NULL;
    spud_sampler *smp = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    spud_detok dt;
    char *piece = NULL;
    size_t piece_cap = 0;

    if (file) {
        if (spud_read_file(file, &file_text, &prompt_len)) {
            cli_error(cmd, "%s", spud_last_error());
            return 1;
        }
        prompt = file_text;
    }
    spud_model_params mp = spud_model_default_params();
    mp.n_threads = (int32_t)n_threads;
    if (spud_model_load(model_path, &mp, &model)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    if (n_ctx == 0) {
        n_ctx = spud_model_n_ctx_train(model);
        if (n_ctx == 0 || n_ctx > 4096) n_ctx = 4096;
    }
    if (spud_tokenize(model, prompt, prompt_len, add_bos, parse_special, &ids, &n_ids)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    if (n_ids == 0) {
        cli_error(cmd, "the prompt is empty (no tokens)");
        goto done;
    }
    if (n_ids > (size_t)n_ctx) {
        cli_error(cmd, "the prompt is %zu tokens, longer than the context of %lld (use -c)", n_ids,
                  (long long)n_ctx);
        goto done;
    }
    if (spud_ctx_new(model, (uint32_t)n_ctx, &ctx)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    smp = spud_sampler_new(&sp, spud_model_n_vocab(model));
    if (!smp) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_ids; i++) spud_sampler_accept(smp, ids[i]);
    if (!cli_grammar_start(&gopts, model, &gram)) goto done;
    piece_cap = SPUD_DETOK_OUT_MAX(spud_tok_max_piece_len(model->tok));
    piece = spud_malloc(piece_cap);
    if (!piece) {
        cli_error(cmd, "out of memory");
        goto done;
    }

    const float *logits;
    double t0 = spud_time_s();
    if (spud_decode_tokens(ctx, ids, n_ids, &logits)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    double t1 = spud_time_s();
    int64_t n_gen = 0, n_dec = 0;
    const char *stop = "length";
    spud_detok_init(&dt);
    if (ids_out) fputc('[', stdout);
    for (;;) {
        if (n_predict >= 0 && n_gen >= n_predict) break;
        const float *lg = cli_grammar_constrain(gram, logits, spud_model_n_vocab(model));
        if (!lg) goto done;
        int32_t tok = spud_sampler_sample(smp, lg, spud_model_n_vocab(model));
        if (spud_token_is_eog(model, tok)) {
            stop = "end of text";
            break;
        }
        if (!cli_grammar_accept(gram, tok)) goto done;
        spud_sampler_accept(smp, tok);
        n_gen++;
        if (ids_out) {
            printf("%s%d", n_gen > 1 ? "," : "", tok);
        } else {
            size_t k = spud_detok_push(&dt, model->tok, tok, piece, piece_cap);
            fwrite(piece, 1, k, stdout);
            fflush(stdout);
        }
        if (spud_ctx_n_past(ctx) >= (uint32_t)n_ctx) {
            stop = "context full";
            break;
        }
        if (spud_decode_tokens(ctx, &tok, 1, &logits)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        n_dec++;
    }
    double t2 = spud_time_s();
    if (ids_out) {
        fputs("]\n", stdout);
    } else {
        size_t k = spud_detok_flush(&dt, piece, piece_cap);
        fwrite(piece, 1, k, stdout);
        fputc('\n', stdout);
    }
    fflush(stdout);
    fprintf(stderr,
            "spud run: prompt %zu tokens, %.2f tok/s; generated %lld tokens, %.2f tok/s; stop: %s\n",
            n_ids, (double)n_ids / (t1 - t0), (long long)n_gen,
            n_dec > 0 ? (double)n_dec / (t2 - t1) : 0.0, stop);
    rc = 0;
done:
    spud_free(ids);
    spud_free(piece);
    spud_free(file_text);
    spud_sampler_free(smp);
    cli_grammar_free(gram);
    spud_ctx_free(ctx);
    spud_model_free(model);
    return rc;
}
