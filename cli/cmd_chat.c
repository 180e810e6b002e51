/* cmd_chat.c: `spud chat`: an interactive chat in the terminal, through the
 * model's own chat template.
 *
 * Each turn re-renders the whole conversation with the template, tokenizes it
 * (special tokens in the rendered text are parsed: the template writes them),
 * keeps the longest prefix of tokens already in the KV cache and decodes only
 * the rest, then streams the answer. Ctrl-C stops the answer, not the program.
 *
 * Limitation: user text is tokenized with the rest of the prompt, so control
 * token text typed by the user (say "<|im_end|>") becomes a control token.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

#include "chat.h"
#include "cli.h"
#include "core.h"
#include "model.h"

#ifndef SPUD_DEFAULT_MODEL_PATH
#define SPUD_DEFAULT_MODEL_PATH "build/default-model.gguf"
#endif

#define CMD "chat"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static void chat_usage(FILE *f) {
    fprintf(f,
            "usage: spud chat [-m MODEL] [options]\n"
            "Chat with a model in the terminal, through its chat template (ChatML if it has none).\n"
            "Type a message and press Enter; end a line with \\ to continue the message on the next.\n"
            "Commands: /reset (forget the conversation), /system TEXT (set the system message),\n"
            "/exit. Ctrl-C stops the answer being written; Ctrl-D (end of input) quits.\n"
            "  -m MODEL          GGUF model (default " SPUD_DEFAULT_MODEL_PATH ")\n"
            "  -s, --system TEXT system message to start with\n"
            "  -n N              most tokens per answer (default -1: until the end of turn)\n"
            "  -c CTX            context size (default: min(training context, 4096))\n"
            "  -t THREADS        threads (default: all cores)\n"
            "  --temp T, --top-k K, --top-p P, --min-p P, --repeat-penalty R, --seed S   sampling\n"
            "                    (defaults as spud run: 0.8, 40, 0.95, 0.05, 1, 3405691582)\n"
            "  --log FILE        append one JSON line per turn (messages, prompt, token counts, reply)\n");
}

/* Conversation state. */
typedef struct {
    spud_model *model;
    spud_ctx *ctx;
    spud_sampler *smp;
    spud_chat_template *ct;
    json_object *msgs;  /* OpenAI-style list */
    char *system;       /* NULL: no system message */
    int32_t *cached;    /* the tokens in the KV cache, in order (ctx n_past of them) */
    size_t n_cached, cap_cached;
    int64_t n_predict;
    uint32_t n_ctx;
    FILE *log;
    char *piece;
    size_t piece_cap;
} chat;

static int reset_messages(chat *ch) {
    json_object_put(ch->msgs);
    ch->msgs = json_object_new_array();
    if (!ch->msgs) return -1;
    if (ch->system) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("system"));
        json_object_object_add(m, "content", json_object_new_string(ch->system));
        json_object_array_add(ch->msgs, m);
    }
    return 0;
}

static void add_message(chat *ch, const char *role, const char *text, size_t len) {
    json_object *m = json_object_new_object();
    json_object_object_add(m, "role", json_object_new_string(role));
    json_object_object_add(m, "content", json_object_new_string_len(text, (int)len));
    json_object_array_add(ch->msgs, m);
}

static bool remember(chat *ch, const int32_t *ids, size_t n) {
    if (ch->n_cached + n > ch->cap_cached) {
        size_t cap = (ch->n_cached + n) * 2;
        int32_t *p = spud_realloc(ch->cached, cap * sizeof *p);
        if (!p) return false;
        ch->cached = p;
        ch->cap_cached = cap;
    }
    memcpy(ch->cached + ch->n_cached, ids, n * sizeof *ids);
    ch->n_cached += n;
    return true;
}

/* One turn: render, reuse the cached prefix, decode the rest, stream the answer. */
static int turn(chat *ch) {
    const spud_model *m = ch->model;
    char *prompt = NULL, *reply = NULL;
    size_t reply_len = 0, reply_cap = 0;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = -1;
    spud_detok dt;
    const char *stop = "end of turn";

    /* control tokens only where the template wrote them, never from what the user typed;
       BOS as the tokenizer asks, unless the template already wrote it */
    size_t plen = 0;
    spud_status st = spud_chat_tokenize(ch->ct, m->tok, ch->msgs, NULL, true, true, &prompt, &plen, &ids, &n_ids);
    if (st) {
        cli_error(CMD, "%s", spud_last_error());
        if (st == SPUD_ERR_NOMEM) goto done;
        return 1; /* the template refused this conversation: drop the message */
    }
    const char *bos = spud_chat_template_bos(ch->ct);
    bool add_bos = !(bos[0] && strncmp(prompt, bos, strlen(bos)) == 0); /* for the log */
    if (n_ids + 1 >= ch->n_ctx) {
        cli_error(CMD, "the conversation is %zu tokens, more than the context of %u: use /reset or -c",
                  n_ids, ch->n_ctx);
        rc = 1;
        goto done;
    }
    size_t p = 0;
    while (p < n_ids && p < ch->n_cached && ids[p] == ch->cached[p]) p++;
    if (p == n_ids) p--; /* decode at least one token, for its logits */
    spud_ctx_truncate(ch->ctx, (uint32_t)p);
    ch->n_cached = p;
    const float *logits;
    if (spud_decode_tokens(ch->ctx, ids + p, n_ids - p, &logits) || !remember(ch, ids + p, n_ids - p)) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    spud_sampler_reset(ch->smp);
    for (size_t i = 0; i < n_ids; i++) spud_sampler_accept(ch->smp, ids[i]);

    interrupted = 0;
    spud_detok_init(&dt);
    int64_t n_gen = 0;
    for (;;) {
        if (interrupted) {
            stop = "interrupted";
            break;
        }
        if (ch->n_predict >= 0 && n_gen >= ch->n_predict) {
            stop = "length";
            break;
        }
        int32_t tok = spud_sampler_sample(ch->smp, logits, spud_model_n_vocab(m));
        if (spud_token_is_eog(m, tok)) break;
        spud_sampler_accept(ch->smp, tok);
        n_gen++;
        size_t k = spud_detok_push(&dt, m->tok, tok, ch->piece, ch->piece_cap);
        if (k) {
            fwrite(ch->piece, 1, k, stdout);
            fflush(stdout);
            if (reply_len + k + 1 > reply_cap) {
                reply_cap = (reply_len + k + 1) * 2;
                char *r2 = spud_realloc(reply, reply_cap);
                if (!r2) {
                    cli_error(CMD, "out of memory");
                    goto done;
                }
                reply = r2;
            }
            memcpy(reply + reply_len, ch->piece, k);
            reply_len += k;
        }
        if (spud_ctx_n_past(ch->ctx) + 1 >= ch->n_ctx) {
            stop = "context full";
            break;
        }
        if (spud_decode_tokens(ch->ctx, &tok, 1, &logits) || !remember(ch, &tok, 1)) {
            cli_error(CMD, "%s", spud_last_error());
            goto done;
        }
    }
    size_t k = spud_detok_flush(&dt, ch->piece, ch->piece_cap);
    if (k && reply_len + k + 1 > reply_cap) {
        reply_cap = reply_len + k + 1;
        char *r2 = spud_realloc(reply, reply_cap);
        if (!r2) goto done;
        reply = r2;
    }
    if (k) {
        fwrite(ch->piece, 1, k, stdout);
        memcpy(reply + reply_len, ch->piece, k);
        reply_len += k;
    }
    fputc('\n', stdout);
    fflush(stdout);
    if (strcmp(stop, "end of turn")) fprintf(stderr, "[%s]\n", stop);
    add_message(ch, "assistant", reply ? reply : "", reply_len);
    if (ch->log) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "messages", json_object_get(ch->msgs));
        json_object_object_add(e, "prompt", json_object_new_string_len(prompt, (int)plen));
        json_object_object_add(e, "add_bos", json_object_new_boolean(add_bos));
        json_object_object_add(e, "n_prompt", json_object_new_int64((int64_t)n_ids));
        json_object_object_add(e, "n_cached", json_object_new_int64((int64_t)p));
        json_object_object_add(e, "n_decoded", json_object_new_int64((int64_t)(n_ids - p)));
        json_object_object_add(e, "n_generated", json_object_new_int64(n_gen));
        json_object_object_add(e, "stop", json_object_new_string(stop));
        json_object_object_add(e, "reply", json_object_new_string_len(reply ? reply : "", (int)reply_len));
        fprintf(ch->log, "%s\n", json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN));
        fflush(ch->log);
        json_object_put(e);
    }
    rc = 0;
done:
    spud_free(prompt);
    spud_free(ids);
    spud_free(reply);
    return rc;
}

/* Read one message: lines ending in a backslash continue it. Returns NULL at end of input. */
static char *read_message(bool tty) {
    char *msg = NULL, *line = NULL;
    size_t msg_len = 0, cap = 0;
    for (;;) {
        if (tty) fputs(msg_len ? ". " : "> ", stderr);
        errno = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (errno == EINTR) { /* Ctrl-C at the prompt: start over */
                clearerr(stdin);
                fputs("\n(Ctrl-D or /exit quits)\n", stderr);
                msg_len = 0;
                continue;
            }
            free(line);
            if (msg_len) return msg; /* a last message without a newline */
            free(msg);
            return NULL;
        }
        if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
        if (n > 0 && line[n - 1] == '\r') line[--n] = '\0';
        bool more = n > 0 && line[n - 1] == '\\';
        if (more) line[--n] = '\0';
        char *m2 = realloc(msg, msg_len + (size_t)n + 2);
        if (!m2) {
            free(msg);
            free(line);
            return NULL;
        }
        msg = m2;
        memcpy(msg + msg_len, line, (size_t)n);
        msg_len += (size_t)n;
        if (more) msg[msg_len++] = '\n';
        msg[msg_len] = '\0';
        if (!more) {
            free(line);
            return msg;
        }
    }
}

int cmd_chat(int argc, char **argv) {
    const char *model_path = SPUD_DEFAULT_MODEL_PATH, *system = NULL, *log_path = NULL;
    int64_t n_ctx = 0, n_threads = 0, v;
    chat ch = {.n_predict = -1};
    spud_sampler_params sp = spud_sampler_default_params();
    int rc = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            chat_usage(stdout);
            return 0;
        }
        if (!val) {
            cli_error(CMD, "unknown option '%s' or missing value (see spud chat --help)", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) model_path = val;
        else if (!strcmp(a, "-s") || !strcmp(a, "--system")) system = val;
        else if (!strcmp(a, "--log")) log_path = val;
        else if (!strcmp(a, "-n")) {
            if (!cli_parse_i64(CMD, a, val, -1, INT32_MAX, &ch.n_predict)) return 2;
        } else if (!strcmp(a, "-c")) {
            if (!cli_parse_i64(CMD, a, val, 16, UINT32_MAX, &n_ctx)) return 2;
        } else if (!strcmp(a, "-t")) {
            if (!cli_parse_i64(CMD, a, val, 1, 1024, &n_threads)) return 2;
        } else if (!strcmp(a, "--temp")) {
            if (!cli_parse_f32(CMD, a, val, &sp.temp)) return 2;
        } else if (!strcmp(a, "--top-k")) {
            if (!cli_parse_i64(CMD, a, val, 0, INT32_MAX, &v)) return 2;
            sp.top_k = (int32_t)v;
        } else if (!strcmp(a, "--top-p")) {
            if (!cli_parse_f32(CMD, a, val, &sp.top_p)) return 2;
        } else if (!strcmp(a, "--min-p")) {
            if (!cli_parse_f32(CMD, a, val, &sp.min_p)) return 2;
        } else if (!strcmp(a, "--repeat-penalty")) {
            if (!cli_parse_f32(CMD, a, val, &sp.repeat_penalty)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!cli_parse_i64(CMD, a, val, 0, INT64_MAX, &v)) return 2;
            sp.seed = (uint64_t)v;
        } else {
            cli_error(CMD, "unknown option '%s' (see spud chat --help)", a);
            return 2;
        }
    }
    if (sp.top_p <= 0 || sp.top_p > 1 || sp.min_p < 0 || sp.min_p > 1) {
        cli_error(CMD, "--top-p must be in (0, 1] and --min-p in [0, 1]");
        return 2;
    }
    if (log_path && !(ch.log = fopen(log_path, "a"))) {
        cli_error(CMD, "%s: %s", log_path, strerror(errno));
        return 1;
    }
    spud_model_params mp = spud_model_default_params();
    mp.n_threads = (int32_t)n_threads;
    if (spud_model_load(model_path, &mp, &ch.model)) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    if (n_ctx == 0) {
        n_ctx = spud_model_n_ctx_train(ch.model);
        if (n_ctx == 0 || n_ctx > 4096) n_ctx = 4096;
    }
    ch.n_ctx = (uint32_t)n_ctx;
    if (spud_chat_template_from_gguf(ch.model->gguf, &ch.ct) ||
        spud_ctx_new(ch.model, ch.n_ctx, &ch.ctx)) {
        cli_error(CMD, "%s", spud_last_error());
        goto done;
    }
    ch.smp = spud_sampler_new(&sp, spud_model_n_vocab(ch.model));
    ch.piece_cap = SPUD_DETOK_OUT_MAX(spud_tok_max_piece_len(ch.model->tok));
    ch.piece = spud_malloc(ch.piece_cap);
    if (system && !(ch.system = spud_strndup(system, strlen(system)))) goto oom;
    if (!ch.smp || !ch.piece || reset_messages(&ch)) goto oom;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: a read at the prompt returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    bool tty = isatty(0) && isatty(2);
    if (tty)
        fprintf(stderr, "spud chat: %s%s. End a line with \\ to continue; /reset, /system TEXT, "
                        "/exit; Ctrl-C stops an answer.\n",
                model_path, spud_chat_template_is_default(ch.ct) ? " (no template: ChatML)" : "");
    for (;;) {
        char *msg = read_message(tty);
        if (!msg) break;
        if (!strcmp(msg, "/exit") || !strcmp(msg, "/quit")) {
            free(msg);
            break;
        }
        if (!strcmp(msg, "/reset")) {
            free(msg);
            if (reset_messages(&ch)) goto oom;
            fprintf(stderr, "[conversation reset]\n");
            continue;
        }
        if (!strncmp(msg, "/system", 7) && (msg[7] == ' ' || msg[7] == '\0')) {
            const char *text = msg[7] ? msg + 8 : "";
            bool set = *text != '\0';
            spud_free(ch.system);
            ch.system = set ? spud_strndup(text, strlen(text)) : NULL;
            free(msg);
            if ((set && !ch.system) || reset_messages(&ch)) goto oom;
            fprintf(stderr, set ? "[system message set; conversation reset]\n"
                                : "[system message removed; conversation reset]\n");
            continue;
        }
        if (msg[0] == '\0') {
            free(msg);
            continue;
        }
        add_message(&ch, "user", msg, strlen(msg));
        free(msg);
        int t = turn(&ch);
        if (t < 0) goto done;
        if (t > 0) json_object_array_del_idx(ch.msgs, json_object_array_length(ch.msgs) - 1, 1);
    }
    rc = 0;
    goto done;
oom:
    cli_error(CMD, "out of memory");
done:
    if (ch.log) fclose(ch.log);
    json_object_put(ch.msgs);
    spud_free(ch.system);
    spud_free(ch.cached);
    spud_free(ch.piece);
    spud_sampler_free(ch.smp);
    spud_chat_template_free(ch.ct);
    spud_ctx_free(ch.ctx);
    spud_model_free(ch.model);
    return rc;
}
