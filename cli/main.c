/* main.c: the spud program: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"run", cmd_run, "generate text from a prompt"},
    {"serve", cmd_serve, "serve the model over an OpenAI-compatible HTTP API"},
    {"info", cmd_info, "describe a GGUF model file"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"logits", cmd_logits, "print the last position's logits for a prompt (JSON)"},
    {"gen-model", cmd_gen_model, "write a random-weight model of any shape and type"},
    {"quantize", cmd_quantize, "convert an F32/F16/BF16 model to a quantized type"},
    {"convert-vocab", cmd_convert_vocab, "write a vocab-only GGUF from a tokenizer.json or tiktoken file"},
    {"bench-tokenize", cmd_bench_tokenize, "measure encode and decode speed of a vocabulary"},
    {"bench", cmd_bench, "measure prompt and generation speed, and memory bandwidth"},
    {"template", cmd_template, "print a conversation rendered with a chat template"},
    {"chat", cmd_chat, "chat with a model in the terminal"},
    {"schema2gbnf", cmd_schema2gbnf, "print the GBNF grammar of a JSON Schema"},
    {"grammar", cmd_grammar, "check grammars, print tool-call grammars, time grammar masks"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: spud COMMAND [options]   (spud COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "spud: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
