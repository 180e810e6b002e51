/* cmd_bench_tokenize.c: `spud bench-tokenize` (encode/decode throughput of a
 * vocabulary on one thread) and `spud tokenize --jsonl` (many texts per
 * process, for differential tests against reference tokenizers). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "tokenizer.h"

static const char *usage_bench =
    "usage: spud bench-tokenize -m VOCAB -f FILE [--min-time SECONDS] [--parse-special] [--json]\n"
    "Encode the whole file, then decode the ids, on one thread, repeating each for at\n"
    "least --min-time seconds (default 2); print MB/s (of the file's bytes) and tokens/s\n"
    "of the fastest run of each. VOCAB may be a vocab-only GGUF file. --json prints one\n"
    "JSON object instead.\n";

static const char *usage_jsonl =
    "usage: spud tokenize -m VOCAB --jsonl [-f FILE] [--no-bos] [--parse-special] [--decode | --pieces]\n"
    "Read one JSON value per line (from FILE or stdin): a string, {\"text\": STRING} or\n"
    "{\"hex\": \"e282ac\"} for arbitrary bytes. Print one line per input: the ids as a JSON\n"
    "array, or with --decode {\"ids\": [...], \"text\": DECODED} (spud_tok_decode, special\n"
    "tokens rendered; bytes that are not UTF-8 become U+FFFD). --pieces prints the words\n"
    "the model step sees instead (spud_tok_pre_tokenize), as a JSON array of strings.\n";

typedef struct {
    spud_gguf *g;
    spud_tokenizer *t;
} vocab_handle;

static bool open_vocab(const char *cmd, const char *path, vocab_handle *v) {
    memset(v, 0, sizeof *v);
    if (spud_gguf_open(path, &v->g) || spud_tok_load(v->g, &v->t)) {
        cli_error(cmd, "%s: %s", path, spud_last_error());
        if (v->g) spud_gguf_close(v->g);
        return false;
    }
    return true;
}

static void close_vocab(vocab_handle *v) {
    spud_tok_free(v->t);
    spud_gguf_close(v->g);
}

int cmd_bench_tokenize(int argc, char **argv) {
    const char *cmd = "bench-tokenize", *model = NULL, *file = NULL;
    float min_time = 2.0f;
    bool parse_special = false, json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_bench, stdout);
            return 0;
        } else if (!strcmp(a, "-m") && val) {
            model = val, i++;
        } else if (!strcmp(a, "-f") && val) {
            file = val, i++;
        } else if (!strcmp(a, "--min-time")) {
            if (!cli_parse_f32(cmd, a, val, &min_time)) return 2;
            i++;
        } else if (!strcmp(a, "--parse-special")) {
            parse_special = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            cli_error(cmd, "unknown option or missing value '%s' (see spud %s --help)", a, cmd);
            return 2;
        }
    }
    if (!model || !file) {
        cli_error(cmd, "give a vocabulary with -m VOCAB and a text with -f FILE");
        return 2;
    }
    vocab_handle v;
    char *text = NULL;
    size_t len;
    if (spud_read_file(file, &text, &len)) {
        cli_error(cmd, "%s", spud_last_error());
        return 1;
    }
    if (!open_vocab(cmd, model, &v)) {
        spud_free(text);
        return 1;
    }
    int rc = 1;
    int32_t *ids = NULL;
    size_t n = 0, dec_len = 0;
    double best_enc = 1e30, best_dec = 1e30, spent = 0;
    int runs_enc = 0, runs_dec = 0;
    while (spent < min_time || runs_enc < 2) {
        spud_free(ids);
        ids = NULL;
        double t0 = spud_time_s();
        if (spud_tok_encode(v.t, text, len, false, parse_special, &ids, &n)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        double dt = spud_time_s() - t0;
        spent += dt, runs_enc++;
        if (dt < best_enc) best_enc = dt;
    }
    spent = 0;
    while (spent < min_time || runs_dec < 2) {
        char *out;
        double t0 = spud_time_s();
        if (spud_tok_decode(v.t, ids, n, true, &out, &dec_len)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        double dt = spud_time_s() - t0;
        spud_free(out);
        spent += dt, runs_dec++;
        if (dt < best_dec) best_dec = dt;
    }
    double mb = (double)len / 1e6;
    if (json) {
        printf("{\"vocab\":\"%s\",\"bytes\":%zu,\"tokens\":%zu,\"encode_mb_s\":%.3f,\"encode_tok_s\":%.0f,"
               "\"decode_mb_s\":%.3f,\"decode_tok_s\":%.0f,\"runs\":[%d,%d]}\n",
               model, len, n, mb / best_enc, (double)n / best_enc, mb / best_dec, (double)n / best_dec, runs_enc,
               runs_dec);
    } else {
        printf("vocabulary   %s (%s, pre-tokenizer %s, %d tokens)\n", model, spud_tok_model(v.t), spud_tok_pre(v.t),
               spud_tok_n_vocab(v.t));
        printf("text         %s: %zu bytes -> %zu tokens (%.2f bytes/token)\n", file, len, n,
               n ? (double)len / (double)n : 0.0);
        printf("encode       %8.2f MB/s  %12.0f tokens/s  (best of %d)\n", mb / best_enc, (double)n / best_enc,
               runs_enc);
        printf("decode       %8.2f MB/s  %12.0f tokens/s  (best of %d)\n", mb / best_dec, (double)n / best_dec,
               runs_dec);
    }
    rc = 0;
done:
    spud_free(ids);
    spud_free(text);
    close_vocab(&v);
    return rc;
}

/* ---- spud tokenize --jsonl ---- */

static int hex_digit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Write bytes as a JSON string; invalid UTF-8 becomes U+FFFD. */
static void put_json_string(FILE *f, const uint8_t *p, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        uint8_t b = p[i];
        if (b < 0x80) {
            if (b == '"' || b == '\\') fprintf(f, "\\%c", b);
            else if (b < 0x20 || b == 0x7F) fprintf(f, "\\u%04x", b);
            else fputc(b, f);
            i++;
            continue;
        }
        size_t k = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
        bool ok = b >= 0xC2 && b <= 0xF4 && i + k <= n;
        for (size_t j = 1; ok && j < k; j++) ok = (p[i + j] & 0xC0) == 0x80;
        if (ok && k == 3) {
            uint32_t c = (uint32_t)(b & 0x0F) << 12 | (uint32_t)(p[i + 1] & 0x3F) << 6;
            ok = c >= 0x800 && (c < 0xD800 || c > 0xDFFF);
        }
        if (ok && k == 4) {
            uint32_t c = (uint32_t)(b & 0x07) << 18 | (uint32_t)(p[i + 1] & 0x3F) << 12;
            ok = c >= 0x10000 && c <= 0x10FFFF;
        }
        if (ok) {
            fwrite(p + i, 1, k, f);
            i += k;
        } else {
            fputs("\\ufffd", f);
            i++;
        }
    }
    fputc('"', f);
}

typedef struct {
    size_t n;
} piece_list;

static void print_piece(void *ud, const char *p, size_t n) {
    piece_list *pl = ud;
    fputs(pl->n++ ? "," : "[", stdout);
    put_json_string(stdout, (const uint8_t *)p, n);
}

int cmd_tokenize_jsonl(int argc, char **argv) {
    const char *cmd = "tokenize", *model = NULL, *file = NULL;
    bool no_bos = false, parse_special = false, decode = false, pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_jsonl, stdout);
            return 0;
        } else if (!strcmp(a, "-m") && val) {
            model = val, i++;
        } else if (!strcmp(a, "-f") && val) {
            file = val, i++;
        } else if (!strcmp(a, "--jsonl")) {
        } else if (!strcmp(a, "--no-bos")) {
            no_bos = true;
        } else if (!strcmp(a, "--parse-special")) {
            parse_special = true;
        } else if (!strcmp(a, "--decode")) {
            decode = true;
        } else if (!strcmp(a, "--pieces")) {
            pieces = true;
        } else {
            cli_error(cmd, "unknown option or missing value '%s' (see spud tokenize --jsonl --help)", a);
            return 2;
        }
    }
    if (!model) {
        cli_error(cmd, "give a vocabulary with -m VOCAB");
        return 2;
    }
    FILE *in = file ? fopen(file, "rb") : stdin;
    if (!in) {
        cli_error(cmd, "cannot open %s", file);
        return 1;
    }
    vocab_handle v;
    if (!open_vocab(cmd, model, &v)) {
        if (file) fclose(in);
        return 1;
    }
    int rc = 1;
    char *line = NULL, *bytes = NULL;
    size_t line_cap = 0, bytes_cap = 0;
    long line_no = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, in)) >= 0) {
        line_no++;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) got--;
        if (got == 0) continue;
        json_tokener *tk = json_tokener_new();
        json_object *j = tk ? json_tokener_parse_ex(tk, line, (int)got) : NULL;
        bool parsed = tk && json_tokener_get_error(tk) == json_tokener_success;
        json_tokener_free(tk);
        const char *text = NULL;
        size_t len = 0;
        json_object *s = NULL;
        if (parsed && json_object_is_type(j, json_type_string)) {
            s = j;
        } else if (parsed && json_object_is_type(j, json_type_object) && json_object_object_get_ex(j, "text", &s) &&
                   json_object_is_type(s, json_type_string)) {
        } else if (parsed && json_object_is_type(j, json_type_object) && json_object_object_get_ex(j, "hex", &s) &&
                   json_object_is_type(s, json_type_string)) {
            const char *h = json_object_get_string(s);
            size_t hl = (size_t)json_object_get_string_len(s);
            if (hl / 2 + 1 > bytes_cap) {
                char *nb = realloc(bytes, hl / 2 + 1);
                if (!nb) {
                    json_object_put(j);
                    cli_error(cmd, "out of memory");
                    goto done;
                }
                bytes = nb, bytes_cap = hl / 2 + 1;
            }
            bool ok = hl % 2 == 0;
            for (size_t k = 0; ok && k < hl; k += 2) {
                int hi = hex_digit(h[k]), lo = hex_digit(h[k + 1]);
                ok = hi >= 0 && lo >= 0;
                bytes[k / 2] = (char)(hi << 4 | lo);
            }
            if (!ok) parsed = false;
            text = bytes, len = hl / 2;
            s = NULL;
        } else {
            parsed = false;
        }
        if (!parsed) {
            json_object_put(j);
            cli_error(cmd, "line %ld: expected a JSON string, {\"text\": ...} or {\"hex\": ...}", line_no);
            goto done;
        }
        if (s) text = json_object_get_string(s), len = (size_t)json_object_get_string_len(s);
        if (pieces) {
            piece_list pl = {0};
            spud_status st = spud_tok_pre_tokenize(v.t, text, len, print_piece, &pl);
            json_object_put(j);
            if (st) {
                cli_error(cmd, "line %ld: %s", line_no, spud_last_error());
                goto done;
            }
            fputs(pl.n ? "]\n" : "[]\n", stdout);
            continue;
        }
        int32_t *ids;
        size_t n;
        if (spud_tok_encode(v.t, text, len, !no_bos, parse_special, &ids, &n)) {
            json_object_put(j);
            cli_error(cmd, "line %ld: %s", line_no, spud_last_error());
            goto done;
        }
        json_object_put(j);
        fputs(decode ? "{\"ids\":[" : "[", stdout);
        for (size_t k = 0; k < n; k++) printf("%s%d", k ? "," : "", ids[k]);
        fputc(']', stdout);
        if (decode) {
            char *out;
            size_t out_len;
            if (spud_tok_decode(v.t, ids, n, true, &out, &out_len)) {
                spud_free(ids);
                cli_error(cmd, "line %ld: %s", line_no, spud_last_error());
                goto done;
            }
            fputs(",\"text\":", stdout);
            put_json_string(stdout, (const uint8_t *)out, out_len);
            fputc('}', stdout);
            spud_free(out);
        }
        fputc('\n', stdout);
        spud_free(ids);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(line);
    free(bytes);
    if (file) fclose(in);
    close_vocab(&v);
    return rc;
}
