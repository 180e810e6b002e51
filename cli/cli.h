/* cli.h: the spud subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand name) and returns the process exit status.
 * Only the CLI may exit(); errors are printed as one line: "spud CMD: message". */
#ifndef SPUD_CLI_H
#define SPUD_CLI_H

int cmd_run(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_gen_model(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_convert_vocab(int argc, char **argv);
int cmd_bench_tokenize(int argc, char **argv);
int cmd_tokenize_jsonl(int argc, char **argv); /* spud tokenize --jsonl */
int cmd_bench(int argc, char **argv);
int cmd_template(int argc, char **argv);
int cmd_chat(int argc, char **argv);

/* Helpers shared by the subcommands (cli/args.c). */
/* Parse a whole decimal integer / float; print "spud CMD: bad value for FLAG: TEXT" and return false on error. */
#include <stdbool.h>
#include <stdint.h>
bool cli_parse_i64(const char *cmd, const char *flag, const char *text, int64_t min, int64_t max, int64_t *out);
bool cli_parse_f32(const char *cmd, const char *flag, const char *text, float *out);
/* Print "spud CMD: <formatted>" to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* spud schema2gbnf, spud grammar, and the grammar options of spud run (cli/cmd_grammar.c). */
int cmd_schema2gbnf(int argc, char **argv);
int cmd_grammar(int argc, char **argv);
struct spud_model;
typedef struct {
    const char *grammar_file, *schema_file, *tools_file, *tool_choice, *tool_format;
    bool json_object, no_strict, parallel;
} cli_grammar_opts;
typedef struct cli_grammar cli_grammar;
/* If argv[i] is a grammar option, store it in o: the number of arguments used, 0 if it is not one, -1 on error (printed). */
int cli_grammar_option(cli_grammar_opts *o, int argc, char **argv, int i);
/* Compile the grammar o asks for (*out NULL if none) for the model's vocabulary; false on error (printed). */
bool cli_grammar_start(const cli_grammar_opts *o, const struct spud_model *m, cli_grammar **out);
/* The logits to sample from: a masked copy, or logits itself when g is NULL; NULL on error (printed). */
const float *cli_grammar_constrain(cli_grammar *g, const float *logits, int32_t n_vocab);
bool cli_grammar_accept(cli_grammar *g, int32_t token); /* false on error (printed) */
void cli_grammar_free(cli_grammar *g);
const char *cli_grammar_usage(void); /* option lines for spud run --help */

#endif
