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

#endif
