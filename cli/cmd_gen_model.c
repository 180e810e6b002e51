/* cmd_gen_model.c: `spud gen-model`: write a seeded random-weight model GGUF
 * (llama, qwen2, qwen3) with llama.cpp's metadata keys and tensor names, and a
 * small real BPE vocabulary, for tests and benchmarks.
 *
 * Weights (as in ../shared/fixtures/README.md): token_embd ~ N(0, 1) (tied:
 * N(0, 4/dim), so logits have rms about 2), norm weights ~ 1 + 0.1 N(0, 1),
 * projections W[out, in] ~ N(0, 1/in), output ~ N(0, 1/dim), qwen2 biases
 * ~ N(0, 0.5^2), rope_freqs = Llama 3.1's rope-scaling factors.
 *
 * Determinism: every row of every tensor has its own xoshiro256** stream,
 * seeded from (--seed, tensor name, row), and normals come from Marsaglia's
 * polar form of Box-Muller with a logarithm made of + - * / only (no libm
 * call whose last bit could differ between machines; sqrt is exact IEEE) and
 * no FMA contraction. So the same arguments give the same bytes on any
 * machine and for any thread count, and models of one seed and shape hold the
 * same float weights whatever --type they are written in.
 *
 * Memory: each row is generated in f32 scratch and quantized straight into
 * the output tensor (spud_type_get(t)->from_float_ref); only the output-type
 * weights are held, in one allocation, until the GGUF writer has written them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_train.h"
#include "cli.h"
#include "rng.h"
#include "core.h"
#include "gguf.h"
#include "quantize.h"
#include "tensor.h"

#define CMD "gen-model"

/* Keep a*b+c as two rounded operations where the target has FMA: GCC would
 * contract them unless told not to (clang honours the standard pragma). On
 * targets without FMA (x86-64 baseline) there is nothing to contract, and the
 * attribute, which blocks inlining, is left out. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#define GM_EXACT_FP
#elif defined(__GNUC__) && defined(__FP_FAST_FMA)
#define GM_EXACT_FP __attribute__((optimize("fp-contract=off")))
#else
#define GM_EXACT_FP
#endif

/* ---- random numbers: src/rng.h ---- */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* ln(x) for x > 0 normal, from + - * / only: x = m 2^e with m in (sqrt(1/2), sqrt(2)],
 * ln m = 2 atanh(z), z = (m-1)/(m+1), |z| < 0.172, series to z^13 (relative error
 * < 2e-12, far below what the float output keeps). */
GM_EXACT_FP static double det_log(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    double m;
    memcpy(&m, &bits, sizeof m);
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e++;
    }
    double f = m - 1.0, z = f / (2.0 + f), z2 = z * z;
    double p = ((((((1.0 / 13) * z2 + 1.0 / 11) * z2 + 1.0 / 9) * z2 + 1.0 / 7) * z2 + 1.0 / 5) * z2 +
                 1.0 / 3) * z2 + 1.0;
    return (double)e * 0.6931471805599453 + 2.0 * z * p;
}

/* One row of mean + std * N(0, 1), from the row's own stream. The uniforms are
 * drawn first, a batch at a time, so that the logs and square roots of a batch
 * are independent of each other and overlap in the pipeline. */
GM_EXACT_FP static void gen_row(uint64_t tensor_seed, uint64_t row, double mean, double std,
                                float *out, int64_t n) {
    enum { BATCH = 64 };
    double U[BATCH], V[BATCH], S[BATCH];
    spud_rng r;
    spud_rng_seed(&r, spud_mix64(tensor_seed ^ spud_mix64(row + 1)));
    for (int64_t i = 0; i < n;) {
        int m = 0;
        for (; m < BATCH && i + 2 * m < n; m++) {
            double u, v, s;
            do { /* uniform on [-1, 1)^2, exactly representable */
                u = (double)(spud_rng_next(&r) >> 11) * 0x1.0p-52 - 1.0;
                v = (double)(spud_rng_next(&r) >> 11) * 0x1.0p-52 - 1.0;
                s = u * u + v * v;
            } while (s >= 1.0 || s == 0.0);
            U[m] = u;
            V[m] = v;
            S[m] = s;
        }
        for (int j = 0; j < m; j++) S[j] = sqrt(-2.0 * det_log(S[j]) / S[j]);
        for (int j = 0; j < m; j++, i += 2) {
            out[i] = (float)(mean + std * (U[j] * S[j]));
            if (i + 1 < n) out[i + 1] = (float)(mean + std * (V[j] * S[j]));
        }
    }
}

/* Llama 3.1 rope scaling (factor 8, low_freq_factor 1, high_freq_factor 4, original context
 * 8192), as llama.cpp's converter computes rope_freqs: per frequency pair, 1 for short
 * wavelengths, 8 for long ones, and a smooth blend between. */
static void llama3_rope_factors(float *out, int64_t head_dim, double base) {
    const double factor = 8.0, low = 1.0, high = 4.0, old_ctx = 8192.0;
    const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
    for (int64_t i = 0; i < head_dim / 2; i++) {
        double freq = 1.0 / pow(base, (double)(2 * i) / (double)head_dim);
        double wavelen = 2.0 * 3.14159265358979323846 / freq;
        if (wavelen < high_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > low_wavelen) {
            out[i] = (float)factor;
        } else {
            double smooth = (old_ctx / wavelen - low) / (high - low);
            out[i] = (float)(1.0 / ((1.0 - smooth) / factor + smooth));
        }
    }
}

/* ---- options ---- */

typedef enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_COUNT } gm_arch;
static const char *const arch_names[ARCH_COUNT] = {"llama", "qwen2", "qwen3"};

typedef struct {
    gm_arch arch;
    int64_t dim, layers, heads, kv_heads, ffn, head_dim, ctx, vocab, seed, threads;
    float rope_base;
    bool tied, rope_freqs;
    bool has_arch, has_dim, has_layers, has_heads, has_kv_heads, has_ffn, has_head_dim, has_vocab,
        has_rope_base, has_seed;
    const cli_qtype *qt;
    const char *vocab_from, *out;
} gm_opts;

static void gm_usage(FILE *f) {
    fprintf(f,
            "usage: spud gen-model --arch llama|qwen2|qwen3 --dim D --layers L --heads H\n"
            "                      --kv-heads K --ffn F --type TYPE --seed S -o OUT.gguf\n"
            "                      [--head-dim HD] [--ctx C] [--vocab N] [--tied]\n"
            "                      [--rope-base B] [--rope-freqs] [--vocab-from GGUF] [-t N]\n"
            "\n"
            "Write a model with seeded random weights (NOT a trained model) in GGUF v3, with\n"
            "llama.cpp's keys and tensor names for the architecture.\n"
            "\n"
            "  --arch A          llama, qwen2 (q/k/v biases) or qwen3 (q/k norms)\n"
            "  --dim D           embedding length\n"
            "  --layers L        number of blocks\n"
            "  --heads H         query heads; --kv-heads K: key/value heads (H %% K == 0)\n"
            "  --ffn F           feed-forward length\n"
            "  --head-dim HD     head size (default D / H)\n"
            "  --ctx C           context_length (default 4096)\n"
            "  --vocab N         vocabulary size (default 512, at least 259)\n"
            "  --tied            no output.weight: token_embd is the output matrix too\n"
            "  --rope-base B     rope.freq_base (default 10000 llama, 1e6 qwen)\n"
            "  --rope-freqs      add rope_freqs.weight (Llama 3.1 rope scaling; llama only)\n"
            "  --type TYPE       %s\n"
            "                    (2-D weights; norms and biases are f32; K types need rows\n"
            "                    that are multiples of 256, q8_0/q4_0 multiples of 32)\n"
            "  --seed S          random seed (same arguments, same bytes)\n"
            "  --vocab-from F    copy every tokenizer.* key from GGUF file F\n"
            "  -o, --output OUT  output file\n"
            "  -t, --threads N   worker threads (default: all cores)\n"
            "\n"
            "Without --vocab-from the vocabulary is byte-level BPE (tokenizer.ggml.model gpt2,\n"
            "pre gpt-2 for llama, qwen2 for qwen): ids 0..255 the bytes, then merges learned\n"
            "from a built-in English text, then <|reserved_N|> padding tokens if the merges\n"
            "run out (type CONTROL, so text never produces them), then <|endoftext|> (BOS,\n"
            "PAD), <|im_start|>, <|im_end|> (EOS). Chat template: ChatML.\n",
            cli_qtype_names());
}

/* Parse argv into o; prints the error and returns false on bad input. */
static bool gm_parse(int argc, char **argv, gm_opts *o, bool *help) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *help = true;
            return true;
        }
        if (strcmp(a, "--tied") == 0) {
            o->tied = true;
            continue;
        }
        if (strcmp(a, "--rope-freqs") == 0) {
            o->rope_freqs = true;
            continue;
        }
        static const char *const with_value[] = {
            "--arch", "--dim",  "--layers", "--heads",     "--kv-heads",   "--ffn",
            "--head-dim", "--ctx", "--vocab", "--rope-base", "--type", "--seed",
            "--vocab-from", "-o", "--output", "-t", "--threads"};
        bool known = false;
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
            known = known || strcmp(a, with_value[k]) == 0;
        if (!known) {
            if (a[0] == '-') cli_error(CMD, "unknown option %s (see spud gen-model --help)", a);
            else cli_error(CMD, "unexpected argument '%s' (see spud gen-model --help)", a);
            return false;
        }
        if (i + 1 >= argc) {
            cli_error(CMD, "%s needs a value", a);
            return false;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (strcmp(a, "--arch") == 0) {
            o->has_arch = false;
            for (int k = 0; k < ARCH_COUNT; k++)
                if (strcmp(v, arch_names[k]) == 0) {
                    o->arch = (gm_arch)k;
                    o->has_arch = true;
                }
            if (!o->has_arch) {
                cli_error(CMD, "unknown --arch '%s' (llama, qwen2 or qwen3)", v);
                return false;
            }
        } else if (strcmp(a, "--dim") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, 1 << 16, &o->dim);
            o->has_dim = true;
        } else if (strcmp(a, "--layers") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, 4096, &o->layers);
            o->has_layers = true;
        } else if (strcmp(a, "--heads") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, 4096, &o->heads);
            o->has_heads = true;
        } else if (strcmp(a, "--kv-heads") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, 4096, &o->kv_heads);
            o->has_kv_heads = true;
        } else if (strcmp(a, "--ffn") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, 1 << 20, &o->ffn);
            o->has_ffn = true;
        } else if (strcmp(a, "--head-dim") == 0) {
            ok = cli_parse_i64(CMD, a, v, 2, 1 << 14, &o->head_dim);
            o->has_head_dim = true;
        } else if (strcmp(a, "--ctx") == 0) {
            ok = cli_parse_i64(CMD, a, v, 1, INT32_MAX, &o->ctx);
        } else if (strcmp(a, "--vocab") == 0) {
            ok = cli_parse_i64(CMD, a, v, 259, 1 << 22, &o->vocab);
            o->has_vocab = true;
        } else if (strcmp(a, "--rope-base") == 0) {
            ok = cli_parse_f32(CMD, a, v, &o->rope_base);
            if (ok && !(o->rope_base > 0 && isfinite(o->rope_base))) {
                cli_error(CMD, "--rope-base must be a positive number, not %s", v);
                return false;
            }
            o->has_rope_base = true;
        } else if (strcmp(a, "--type") == 0) {
            o->qt = cli_qtype_find(v);
            if (!o->qt) {
                cli_error(CMD, "unknown --type '%s' (one of: %s)", v, cli_qtype_names());
                return false;
            }
        } else if (strcmp(a, "--seed") == 0) {
            ok = cli_parse_i64(CMD, a, v, 0, INT64_MAX, &o->seed);
            o->has_seed = true;
        } else if (strcmp(a, "--vocab-from") == 0) {
            o->vocab_from = v;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            o->out = v;
        } else { /* -t, --threads */
            ok = cli_parse_i64(CMD, a, v, 1, 256, &o->threads);
        }
        if (!ok) return false;
    }
    return true;
}

/* Cross-argument checks; prints the error and returns false. */
static bool gm_check(gm_opts *o) {
    const char *missing = !o->has_arch       ? "--arch"
                          : !o->has_dim      ? "--dim"
                          : !o->has_layers   ? "--layers"
                          : !o->has_heads    ? "--heads"
                          : !o->has_kv_heads ? "--kv-heads"
                          : !o->has_ffn      ? "--ffn"
                          : !o->qt           ? "--type"
                          : !o->has_seed     ? "--seed"
                          : !o->out          ? "-o"
                                             : NULL;
    if (missing) {
        cli_error(CMD, "missing %s (see spud gen-model --help)", missing);
        return false;
    }
    if (o->heads % o->kv_heads != 0) {
        cli_error(CMD, "--heads %lld is not a multiple of --kv-heads %lld", (long long)o->heads,
                  (long long)o->kv_heads);
        return false;
    }
    if (!o->has_head_dim) {
        if (o->dim % o->heads != 0) {
            cli_error(CMD, "--dim %lld is not a multiple of --heads %lld (or give --head-dim)",
                      (long long)o->dim, (long long)o->heads);
            return false;
        }
        o->head_dim = o->dim / o->heads;
    }
    if (o->head_dim % 2 != 0) {
        cli_error(CMD, "head dim %lld must be even (rope rotates pairs; set --dim/--heads or "
                       "--head-dim)", (long long)o->head_dim);
        return false;
    }
    if (o->rope_freqs && o->arch != ARCH_LLAMA) {
        cli_error(CMD, "--rope-freqs is only for --arch llama (llama.cpp's %s has no rope_freqs)",
                  arch_names[o->arch]);
        return false;
    }
    if (!o->has_rope_base) o->rope_base = o->arch == ARCH_LLAMA ? 10000.0f : 1e6f;
    return true;
}

/* ---- vocabulary ---- */

static const char chatml_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

enum { TOKEN_TYPE_NORMAL = 1, TOKEN_TYPE_CONTROL = 3 };

/* Put the built-in BPE vocabulary of n tokens into w. */
static spud_status gm_write_bpe_vocab(spud_gguf_writer *w, gm_arch arch, uint32_t n) {
    spud_bpe_vocab bpe;
    spud_status st = spud_bpe_train(spud_bpe_default_text, strlen(spud_bpe_default_text),
                                    arch == ARCH_LLAMA ? SPUD_BPE_PRE_GPT2 : SPUD_BPE_PRE_QWEN2,
                                    n - 259, &bpe);
    if (st != SPUD_OK) return st;
    const char **toks = spud_calloc(n, sizeof *toks);
    int32_t *types = spud_calloc(n, sizeof *types);
    uint32_t n_reserved = n - 3 - bpe.n_tokens;
    char *names = spud_malloc((size_t)n_reserved * 24 + 1); /* "<|reserved_4194303|>" fits */
    if (!toks || !types || !names) {
        st = spud_errorf(SPUD_ERR_NOMEM, "out of memory for a vocabulary of %u tokens", n);
        goto done;
    }
    uint32_t id = 0;
    for (uint32_t i = 0; i < bpe.n_tokens; i++, id++) {
        toks[id] = bpe.tokens[i];
        types[id] = TOKEN_TYPE_NORMAL;
    }
    /* Padding when the text runs out of merges. CONTROL like Llama 3's reserved special
     * tokens: no merge or byte sequence produces them, and they render as nothing. */
    for (uint32_t i = 0; i < n_reserved; i++, id++) {
        char *s = names + (size_t)i * 24;
        snprintf(s, 24, "<|reserved_%u|>", i);
        toks[id] = s;
        types[id] = TOKEN_TYPE_CONTROL;
    }
    static const char *const specials[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++, id++) {
        toks[id] = specials[i];
        types[id] = TOKEN_TYPE_CONTROL;
    }
    /* first failure wins; later calls are skipped */
    st = spud_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (st == SPUD_OK)
        st = spud_gguf_writer_set_str(w, "tokenizer.ggml.pre", arch == ARCH_LLAMA ? "gpt-2" : "qwen2");
    if (st == SPUD_OK) st = spud_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, n);
    if (st == SPUD_OK)
        st = spud_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPUD_GGUF_INT32, types, n);
    if (st == SPUD_OK)
        st = spud_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)bpe.merges,
                                          NULL, bpe.n_merges);
    if (st == SPUD_OK) st = spud_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", n - 3);
    if (st == SPUD_OK) st = spud_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", n - 1);
    if (st == SPUD_OK) st = spud_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", n - 3);
    if (st == SPUD_OK)
        st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", arch == ARCH_LLAMA);
    if (st == SPUD_OK) st = spud_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false);
    if (st == SPUD_OK) st = spud_gguf_writer_set_str(w, "tokenizer.chat_template", chatml_template);
done:
    spud_free(toks);
    spud_free(types);
    spud_free(names);
    spud_bpe_vocab_free(&bpe);
    return st;
}

/* Copy every tokenizer.* key of the vocabulary file. */
static bool gm_copy_vocab(spud_gguf_writer *w, const spud_gguf *src, const char *path) {
    for (uint64_t i = 0; i < spud_gguf_n_kv(src); i++) {
        const spud_gguf_kv *kv = spud_gguf_kv_at(src, i);
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0) continue;
        if (spud_gguf_writer_copy_kv(w, kv) != SPUD_OK) {
            cli_error(CMD, "--vocab-from %s: %s", path, spud_last_error());
            return false;
        }
    }
    return true;
}

/* ---- tensors ---- */

typedef struct {
    char name[48];
    uint32_t n_dims;
    uint64_t ne[2];     /* ne[0]: row (input) length */
    const char *row_of; /* the option that sets ne[0], for error messages */
    double mean, std;
    bool rope;          /* rope_freqs: computed, not random */
    spud_type type;
    uint64_t seed;
    size_t row_bytes;
    uint64_t nbytes;
    void *data;
} gm_tensor;

typedef struct {
    gm_tensor *t;
    uint32_t n, cap;
} gm_list;

static gm_tensor *gm_add(gm_list *l, const char *name, int64_t ne0, int64_t ne1,
                         const char *row_of, double mean, double std) {
    if (l->n == l->cap) return NULL; /* capacity computed up front */
    gm_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = ne1 > 0 ? 2 : 1;
    t->ne[0] = (uint64_t)ne0;
    t->ne[1] = ne1 > 0 ? (uint64_t)ne1 : 1;
    t->row_of = row_of;
    t->mean = mean;
    t->std = std;
    return t;
}

/* The tensors of the model, in file order. */
static void gm_build_tensors(const gm_opts *o, gm_list *l) {
    const int64_t d = o->dim, hd = o->head_dim, q = o->heads * hd, kv = o->kv_heads * hd;
    const double s_d = 1.0 / sqrt((double)d), s_q = 1.0 / sqrt((double)q),
                 s_f = 1.0 / sqrt((double)o->ffn);
    char n[48];
    /* tied: the embedding is the output matrix too; keep logits O(1) */
    gm_add(l, "token_embd.weight", d, o->vocab, "--dim", 0.0, o->tied ? 2.0 * s_d : 1.0);
    if (o->rope_freqs) gm_add(l, "rope_freqs.weight", hd / 2, 0, "--head-dim", 0, 0)->rope = true;
    for (int64_t i = 0; i < o->layers; i++) {
#define NAME(suffix) (snprintf(n, sizeof n, "blk.%lld.%s", (long long)i, suffix), n)
        gm_add(l, NAME("attn_norm.weight"), d, 0, "--dim", 1.0, 0.1);
        gm_add(l, NAME("attn_q.weight"), d, q, "--dim", 0.0, s_d);
        gm_add(l, NAME("attn_k.weight"), d, kv, "--dim", 0.0, s_d);
        gm_add(l, NAME("attn_v.weight"), d, kv, "--dim", 0.0, s_d);
        if (o->arch == ARCH_QWEN2) {
            gm_add(l, NAME("attn_q.bias"), q, 0, "--heads x head dim", 0.0, 0.5);
            gm_add(l, NAME("attn_k.bias"), kv, 0, "--kv-heads x head dim", 0.0, 0.5);
            gm_add(l, NAME("attn_v.bias"), kv, 0, "--kv-heads x head dim", 0.0, 0.5);
        }
        if (o->arch == ARCH_QWEN3) {
            gm_add(l, NAME("attn_q_norm.weight"), hd, 0, "head dim", 1.0, 0.1);
            gm_add(l, NAME("attn_k_norm.weight"), hd, 0, "head dim", 1.0, 0.1);
        }
        gm_add(l, NAME("attn_output.weight"), q, d, "--heads x head dim", 0.0, s_q);
        gm_add(l, NAME("ffn_norm.weight"), d, 0, "--dim", 1.0, 0.1);
        gm_add(l, NAME("ffn_gate.weight"), d, o->ffn, "--dim", 0.0, s_d);
        gm_add(l, NAME("ffn_up.weight"), d, o->ffn, "--dim", 0.0, s_d);
        gm_add(l, NAME("ffn_down.weight"), o->ffn, d, "--ffn", 0.0, s_f);
#undef NAME
    }
    gm_add(l, "output_norm.weight", d, 0, "--dim", 1.0, 0.1);
    if (!o->tied) gm_add(l, "output.weight", d, o->vocab, "--dim", 0.0, s_d);
}

typedef struct {
    uint32_t tensor;
    uint64_t row0, nrows;
} gm_item;

typedef struct {
    gm_tensor *ts;
    gm_item *items;
    int64_t n_items;
} gm_job;

static void gm_fill(void *ctx, int64_t item, float *scratch) {
    const gm_job *job = ctx;
    const gm_item *it = &job->items[item];
    const gm_tensor *t = &job->ts[it->tensor];
    const spud_type_info *ti = spud_type_get(t->type);
    for (uint64_t r = it->row0; r < it->row0 + it->nrows; r++) {
        char *dst = (char *)t->data + (size_t)r * t->row_bytes;
        if (t->type == SPUD_TYPE_F32) {
            gen_row(t->seed, r, t->mean, t->std, (float *)dst, (int64_t)t->ne[0]);
        } else {
            gen_row(t->seed, r, t->mean, t->std, scratch, (int64_t)t->ne[0]);
            ti->from_float_ref(scratch, dst, (int64_t)t->ne[0]);
        }
    }
}

static void gm_progress(void *pctx, int64_t done, int64_t total) {
    const gm_job *job = pctx;
    const char *label = done < total ? job->ts[job->items[done].tensor].name : "";
    cli_progress_draw(CMD, done, total, label);
}

/* ---- metadata ---- */

static spud_status gm_write_hparams(spud_gguf_writer *w, const gm_opts *o) {
    const char *a = arch_names[o->arch];
    char key[96], desc[160], name[64];
    snprintf(name, sizeof name, "spud-random-%s", a);
    snprintf(desc, sizeof desc, "random weights (seed %lld); NOT a trained model; spud gen-model",
             (long long)o->seed);
    spud_status st = spud_gguf_writer_set_str(w, "general.architecture", a);
    if (st == SPUD_OK) st = spud_gguf_writer_set_str(w, "general.name", name);
    if (st == SPUD_OK) st = spud_gguf_writer_set_str(w, "general.description", desc);
    if (st == SPUD_OK) st = spud_gguf_writer_set_u32(w, "general.file_type", o->qt->ftype);
    /* as gguf-py writes it: every file type but f32 and f16 carries the quantization version */
    if (st == SPUD_OK && o->qt->type != SPUD_TYPE_F32 && o->qt->type != SPUD_TYPE_F16)
        st = spud_gguf_writer_set_u32(w, "general.quantization_version", 2);

    /* key_length / value_length: qwen3 always writes them; the others only need them
     * when the head size is not dim / heads */
    bool kl = o->arch == ARCH_QWEN3 || o->head_dim * o->heads != o->dim;
    const struct {
        const char *suffix;
        int64_t v;
        bool on;
    } u32s[] = {
        {"vocab_size", o->vocab, true},
        {"context_length", o->ctx, true},
        {"embedding_length", o->dim, true},
        {"block_count", o->layers, true},
        {"feed_forward_length", o->ffn, true},
        {"attention.head_count", o->heads, true},
        {"attention.head_count_kv", o->kv_heads, true},
        {"attention.key_length", o->head_dim, kl},
        {"attention.value_length", o->head_dim, kl},
        {"rope.dimension_count", o->head_dim, true},
    };
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0] && st == SPUD_OK; i++) {
        if (!u32s[i].on) continue;
        snprintf(key, sizeof key, "%s.%s", a, u32s[i].suffix);
        st = spud_gguf_writer_set_u32(w, key, (uint32_t)u32s[i].v);
    }
    if (st == SPUD_OK) {
        snprintf(key, sizeof key, "%s.rope.freq_base", a);
        st = spud_gguf_writer_set_f32(w, key, o->rope_base);
    }
    if (st == SPUD_OK) {
        snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
        st = spud_gguf_writer_set_f32(w, key, o->arch == ARCH_LLAMA ? 1e-5f : 1e-6f);
    }
    return st;
}

/* ---- the command ---- */

int cmd_gen_model(int argc, char **argv) {
    gm_opts o = {.ctx = 4096, .vocab = 512, .threads = cli_n_cpus()};
    bool help = false;
    if (!gm_parse(argc, argv, &o, &help)) return 1;
    if (help) {
        gm_usage(stdout);
        return 0;
    }
    if (!gm_check(&o)) return 1;

    int rc = 1;
    double t0 = spud_time_s();
    spud_gguf *vsrc = NULL;
    spud_gguf_writer *w = spud_gguf_writer_new();
    gm_list list = {0};
    gm_item *items = NULL;
    char *arena = NULL;
    if (!w) {
        cli_error(CMD, "out of memory");
        goto done;
    }

    /* A vocabulary file fixes n_vocab before the tensors are shaped. */
    if (o.vocab_from) {
        if (spud_gguf_open(o.vocab_from, &vsrc) != SPUD_OK) {
            cli_error(CMD, "--vocab-from: %s", spud_last_error());
            goto done;
        }
        const spud_gguf_kv *toks;
        if (spud_gguf_get_arr(vsrc, "tokenizer.ggml.tokens", SPUD_GGUF_STRING, &toks) != SPUD_OK) {
            cli_error(CMD, "--vocab-from %s: no tokenizer.ggml.tokens string array", o.vocab_from);
            goto done;
        }
        if (toks->arr_n < 1 || toks->arr_n > (1u << 22)) {
            cli_error(CMD, "--vocab-from %s: %llu tokens (1 to 4194304 supported)", o.vocab_from,
                      (unsigned long long)toks->arr_n);
            goto done;
        }
        if (o.has_vocab && (uint64_t)o.vocab != toks->arr_n) {
            cli_error(CMD, "--vocab %lld does not match the %llu tokens of --vocab-from %s",
                      (long long)o.vocab, (unsigned long long)toks->arr_n, o.vocab_from);
            goto done;
        }
        o.vocab = (int64_t)toks->arr_n;
    }

    /* Tensors: shapes, types, sizes. */
    list.cap = 4 + 12 * (uint32_t)o.layers;
    list.t = spud_calloc(list.cap, sizeof *list.t);
    if (!list.t) {
        cli_error(CMD, "out of memory");
        goto done;
    }
    gm_build_tensors(&o, &list);
    cli_recipe_model rm = {(int)o.layers, (int)o.layers, !o.tied};
    uint64_t seed_mix = spud_mix64((uint64_t)o.seed ^ 0x5350554447454e31ull); /* "SPUDGEN1" */
    uint64_t total = 0, params = 0, n_items = 0;
    int64_t max_row = 1;
    for (uint32_t i = 0; i < list.n; i++) {
        gm_tensor *t = &list.t[i];
        t->seed = spud_mix64(seed_mix ^ fnv1a(t->name));
        t->type = t->n_dims == 1 ? SPUD_TYPE_F32
                                 : cli_recipe_type(o.qt, &rm, t->name, (int64_t)t->ne[0]);
        const spud_type_info *ti = spud_type_get(t->type);
        if (!ti) {
            cli_error(CMD, "type %s is not available in this build", spud_type_name(t->type));
            goto done;
        }
        if (t->ne[0] % (uint64_t)ti->block_size != 0) {
            cli_error(CMD, "--type %s: %s has rows of %llu (%s), not a multiple of %lld as %s needs",
                      o.qt->name, t->name, (unsigned long long)t->ne[0], t->row_of,
                      (long long)ti->block_size, ti->name);
            goto done;
        }
        t->row_bytes = spud_row_size(t->type, (int64_t)t->ne[0]);
        uint64_t elems;
        if (t->row_bytes == 0 || !spud_mul_ok(t->row_bytes, t->ne[1], &t->nbytes) ||
            !spud_mul_ok(t->ne[0], t->ne[1], &elems) || !spud_add_ok(params, elems, &params) ||
            !spud_add_ok(total, (t->nbytes + 63) & ~(uint64_t)63, &total)) {
            cli_error(CMD, "%s: size overflows", t->name);
            goto done;
        }
        if ((int64_t)t->ne[0] > max_row) max_row = (int64_t)t->ne[0];
        if (!t->rope) {
            uint64_t per = t->ne[0] >= 65536 ? 1 : 65536 / t->ne[0];
            n_items += (t->ne[1] + per - 1) / per;
        }
    }
    if (total > SIZE_MAX / 2) {
        cli_error(CMD, "the model needs %llu bytes, more than this machine can address",
                  (unsigned long long)total);
        goto done;
    }
    arena = spud_aligned_alloc(64, total ? (size_t)total : 64);
    items = spud_malloc((size_t)(n_items ? n_items : 1) * sizeof *items);
    if (!arena || !items) {
        char b[32];
        cli_error(CMD, "out of memory: the weights need %s", cli_fmt_bytes(total, b));
        goto done;
    }
    uint64_t off = 0, k = 0;
    for (uint32_t i = 0; i < list.n; i++) {
        gm_tensor *t = &list.t[i];
        t->data = arena + off;
        off += (t->nbytes + 63) & ~(uint64_t)63;
        if (t->rope) {
            llama3_rope_factors(t->data, o.head_dim, o.rope_base);
            continue;
        }
        uint64_t per = t->ne[0] >= 65536 ? 1 : 65536 / t->ne[0];
        for (uint64_t r = 0; r < t->ne[1]; r += per)
            items[k++] = (gm_item){i, r, r + per <= t->ne[1] ? per : t->ne[1] - r};
    }

    gm_job job = {list.t, items, (int64_t)n_items};
    if (cli_parallel((int)o.threads, (int64_t)n_items, gm_fill, &job, (size_t)max_row, gm_progress,
                     &job) != SPUD_OK) {
        cli_progress_end();
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    cli_progress_end();

    /* Metadata, vocabulary, tensors, write. */
    if (gm_write_hparams(w, &o) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    if (vsrc) {
        if (!gm_copy_vocab(w, vsrc, o.vocab_from)) goto done;
    } else if (gm_write_bpe_vocab(w, o.arch, (uint32_t)o.vocab) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    uint32_t count[SPUD_TYPE_COUNT] = {0};
    for (uint32_t i = 0; i < list.n; i++) {
        const gm_tensor *t = &list.t[i];
        if (spud_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes) !=
            SPUD_OK) {
            cli_error(CMD, "%s", spud_last_error());
            goto done;
        }
        count[t->type]++;
    }
    if (spud_gguf_writer_write(w, o.out) != SPUD_OK) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }

    char counts[160] = "", bytes[32];
    size_t cl = 0;
    for (int ty = 0; ty < SPUD_TYPE_COUNT; ty++) {
        if (!count[ty] || cl >= sizeof counts) continue;
        cl += (size_t)snprintf(counts + cl, sizeof counts - cl, "%s%s %u", cl ? ", " : "",
                               spud_type_name((uint32_t)ty), count[ty]);
    }
    char np[32];
    if (params >= 1000000000ull) snprintf(np, sizeof np, "%.2f B", (double)params / 1e9);
    else if (params >= 1000000ull) snprintf(np, sizeof np, "%.2f M", (double)params / 1e6);
    else snprintf(np, sizeof np, "%.1f K", (double)params / 1e3);
    fprintf(stderr, "spud %s: wrote %s: %s, %s params, %s (%s), %s in %.1f s (%d threads)\n", CMD,
            o.out, arch_names[o.arch], np, o.qt->name, counts, cli_fmt_bytes(total, bytes),
            spud_time_s() - t0, (int)o.threads);
    rc = 0;
done:
    if (w) spud_gguf_writer_free(w);
    if (vsrc) spud_gguf_close(vsrc);
    spud_free(arena);
    spud_free(items);
    spud_free(list.t);
    return rc;
}
