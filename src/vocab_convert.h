/* vocab_convert.h: vocabulary-only GGUF files from Hugging Face and tiktoken
 * tokenizer files, with the metadata keys other GGUF tools use.
 *
 *     spud_vocab_source src = {.hf_json = "tokenizer.json", .hf_config = "tokenizer_config.json"};
 *     if (spud_vocab_convert_file(&src, "vocab.gguf")) { ... spud_last_error() ... }
 *
 * Hugging Face tokenizer.json (+ tokenizer_config.json):
 *   BPE with a ByteLevel pre-tokenizer  -> tokenizer.ggml.model "gpt2", with
 *       tokenizer.ggml.pre named after the split regexes as llama.cpp names
 *       them ("gpt-2", "llama-bpe", "qwen2", "gpt-4o", "deepseek-v3");
 *   BPE with byte_fallback / U+2581 spaces (Llama 2, Gemma) -> "llama", with
 *       merges and scores (-rank of the merge that makes the token);
 *   WordPiece -> "bert" (word-start tokens get a U+2581 prefix, "##" is
 *       dropped: llama.cpp's spelling).
 *   Added tokens: special -> CONTROL, others -> USER_DEFINED. Ids missing
 *   from both become "[PAD<id>]" (UNUSED). BOS/EOS/UNK/PAD/SEP/CLS/MASK ids,
 *   add_bos/add_eos (from tokenizer_config.json, else the post-processor's
 *   template), add_space_prefix, ignore_merges and the chat template(s)
 *   are written as tokenizer.ggml.* / tokenizer.chat_template.
 * tiktoken rank files (".tiktoken" lines "base64 rank", or the JSON of the
 *   tiktoken npm package: {"pat_str", "special_tokens", "bpe_ranks"}):
 *   "gpt2" with merges derived from the ranks (each token's two parts are
 *   what tiktoken's own merging of its bytes stops at), so that rank-order
 *   merging gives tiktoken's ids; special tokens of the named encoding
 *   (o200k_harmony: gpt-oss's).
 * Anything these cannot express exactly (an unknown split regex, another
 * normalizer, Unigram models) is SPUD_ERR_UNSUPPORTED, never a guess.
 */
#ifndef SPUD_VOCAB_CONVERT_H
#define SPUD_VOCAB_CONVERT_H

#include "core.h"
#include "gguf.h"

typedef struct {
    const char *hf_json;   /* tokenizer.json, or NULL */
    const char *hf_config; /* tokenizer_config.json (optional with hf_json) */
    const char *tiktoken;  /* tiktoken rank file, or NULL (exactly one of hf_json, tiktoken) */
    const char *encoding;  /* tiktoken: r50k_base, p50k_base, cl100k_base, o200k_base, o200k_harmony;
                              NULL: from the file name */
    const char *name;      /* general.name (optional) */
    const char *arch;      /* general.architecture (default "llama") */
} spud_vocab_source;

/* Add the vocabulary's metadata to w. */
spud_status spud_vocab_convert(const spud_vocab_source *src, spud_gguf_writer *w);
/* Write a vocab-only GGUF file (metadata only, no tensors) to path. */
spud_status spud_vocab_convert_file(const spud_vocab_source *src, const char *path);

#endif
