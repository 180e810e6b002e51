/* quantize.h: what `spud quantize` (cmd_quantize.c, which implements all of
 * this) shares with `spud gen-model`: the output types a user can ask for, the
 * per-tensor type recipe (llama.cpp's, for Q4_K_M), a parallel loop over work
 * items on plain pthreads, and a progress bar for terminals.
 */
#ifndef SPUD_CLI_QUANTIZE_H
#define SPUD_CLI_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "tensor.h"

/* An output type as named on the command line. */
typedef struct {
    const char *name; /* "q4_k_m" */
    uint32_t ftype;   /* general.file_type: llama.cpp's LLAMA_FTYPE_* number */
    spud_type type;   /* type of the 2-D weights (the base type of a mix) */
    bool mix_q4_k_m;  /* llama.cpp's Q4_K_M recipe instead of one type for every weight */
} cli_qtype;

/* Look up "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k", "q4_k_m"
 * (case-insensitive); NULL if unknown. */
const cli_qtype *cli_qtype_find(const char *name);
/* The accepted names, comma-separated, for usage and error messages. */
const char *cli_qtype_names(void);

/* What the recipe needs to know about the whole model. */
typedef struct {
    int n_layers;    /* block_count (use_more_bits for ffn_down) */
    int n_attn_v;    /* number of attn_v.weight tensors (use_more_bits for attn_v) */
    bool has_output; /* output.weight exists; if not, token_embd doubles as the output */
} cli_recipe_model;

/* Whether a tensor is quantized at all (llama.cpp's rule: at least 2-D, the
 * name ends in "weight", and it is not a *_norm.weight). Others are F32. */
bool cli_recipe_quantizes(const char *name, uint32_t n_dims);

/* The type the recipe picks for a quantizable tensor with rows of ne0
 * elements, before checking that ne0 fits the type's block size. */
spud_type cli_recipe_type(const cli_qtype *q, const cli_recipe_model *m, const char *name,
                          int64_t ne0);

/* A type whose block size divides ne0: t itself if it does; for a K type
 * whose block of 256 does not fit, Q8_0 (llama.cpp picks Q5_0 for Q4_K and
 * Q8_0 for Q6_K; spud has no Q5_0, and Q8_0 loses less); F16 when not even a
 * block of 32 fits. */
spud_type cli_recipe_fallback(spud_type t, int64_t ne0);

/* Call fn(ctx, item, scratch) for every item in [0, n_items) on n_threads
 * threads (the caller is one of them), each with its own scratch of
 * scratch_floats floats. Items are taken in order from a shared counter, so
 * a result that depends only on the item is the same for any thread count.
 * If progress is not NULL the calling thread calls it with the number of
 * finished items, at most every 0.1 s and once at the end. */
typedef void (*cli_item_fn)(void *ctx, int64_t item, float *scratch);
typedef void (*cli_progress_fn)(void *pctx, int64_t done, int64_t total);
spud_status cli_parallel(int n_threads, int64_t n_items, cli_item_fn fn, void *ctx,
                         size_t scratch_floats, cli_progress_fn progress, void *pctx);

/* Number of online CPUs (at least 1). */
int cli_n_cpus(void);

/* A one-line progress bar on stderr: "\rspud CMD [#####-----]  50% label".
 * Draw only when stderr is a terminal; cli_progress_end clears the line. */
void cli_progress_draw(const char *cmd, int64_t done, int64_t total, const char *label);
void cli_progress_end(void);

/* "1.23 GB", "456 MB", "789 KB", "12 B" into buf. */
const char *cli_fmt_bytes(uint64_t n, char buf[32]);

#endif
