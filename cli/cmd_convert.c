/* cmd_convert.c: `spud convert-vocab`: a tokenizer.json or tiktoken file -> vocab-only GGUF. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "core.h"
#include "tokenizer.h"
#include "vocab_convert.h"

static const char *usage_convert =
    "usage: spud convert-vocab -o OUT.gguf SOURCE [--name NAME] [--arch ARCH]\n"
    "SOURCE is one of:\n"
    "  --hf DIR                  DIR/tokenizer.json and DIR/tokenizer_config.json (if there)\n"
    "  --tokenizer-json FILE [--tokenizer-config FILE]\n"
    "  --tiktoken FILE [--encoding NAME]   a .tiktoken rank file or tiktoken's npm JSON\n"
    "                            (NAME: r50k_base, p50k_base, cl100k_base, o200k_base,\n"
    "                            o200k_harmony; default: from the file name)\n"
    "Writes a GGUF file with only tokenizer metadata (no tensors), which spud tokenize,\n"
    "spud bench-tokenize and other GGUF tools read. The result is loaded back once as a check.\n";

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int cmd_convert_vocab(int argc, char **argv) {
    const char *cmd = "convert-vocab", *out = NULL, *hf_dir = NULL;
    spud_vocab_source src = {0};
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_convert, stdout);
            return 0;
        } else if (!strcmp(a, "-o")) {
            slot = &out;
        } else if (!strcmp(a, "--hf")) {
            slot = &hf_dir;
        } else if (!strcmp(a, "--tokenizer-json")) {
            slot = &src.hf_json;
        } else if (!strcmp(a, "--tokenizer-config")) {
            slot = &src.hf_config;
        } else if (!strcmp(a, "--tiktoken")) {
            slot = &src.tiktoken;
        } else if (!strcmp(a, "--encoding")) {
            slot = &src.encoding;
        } else if (!strcmp(a, "--name")) {
            slot = &src.name;
        } else if (!strcmp(a, "--arch")) {
            slot = &src.arch;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud %s --help)", a, cmd);
            return 2;
        }
        if (!val) {
            cli_error(cmd, "%s needs a value", a);
            return 2;
        }
        *slot = val;
    }
    char json_path[4096], cfg_path[4096];
    if (hf_dir) {
        snprintf(json_path, sizeof json_path, "%s/tokenizer.json", hf_dir);
        snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", hf_dir);
        src.hf_json = json_path;
        if (!src.hf_config && file_exists(cfg_path)) src.hf_config = cfg_path;
    }
    if (!out || (!src.hf_json == !src.tiktoken)) {
        cli_error(cmd, "give -o OUT.gguf and one source: --hf DIR, --tokenizer-json FILE or --tiktoken FILE");
        return 2;
    }
    double t0 = spud_time_s();
    if (spud_vocab_convert_file(&src, out)) {
        cli_error(cmd, "%s", spud_last_error());
        return 1;
    }
    /* load it back: a file spud cannot read is not a result */
    spud_gguf *g = NULL;
    spud_tokenizer *t = NULL;
    if (spud_gguf_open(out, &g) || spud_tok_load(g, &t)) {
        cli_error(cmd, "%s: written, but it does not load: %s", out, spud_last_error());
        spud_gguf_close(g);
        return 1;
    }
    fprintf(stderr, "spud convert-vocab: %s: %s (pre-tokenizer %s), %d tokens, bos %d, eos %d, add bos %s (%.1f s)\n",
            out, spud_tok_model(t), spud_tok_pre(t), spud_tok_n_vocab(t), spud_tok_bos(t), spud_tok_eos(t),
            spud_tok_add_bos(t) ? "yes" : "no", spud_time_s() - t0);
    spud_tok_free(t);
    spud_gguf_close(g);
    return 0;
}
