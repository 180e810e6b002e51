/* cmd_template.c: `spud template`: print a conversation rendered with a chat template. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "chat.h"
#include "cli.h"
#include "core.h"
#include "gguf.h"

static void template_usage(FILE *f) {
    fprintf(f,
            "usage: spud template (-m MODEL | --template FILE.jinja [--bos-token S] [--eos-token S])\n"
            "                     --messages FILE.json [--tools FILE.json] [--no-generation-prompt]\n"
            "Print the prompt a chat template renders for a conversation, exactly (no newline added).\n"
            "  -m MODEL              take tokenizer.chat_template and the BOS/EOS text from a GGUF file\n"
            "                        (ChatML when it has no template)\n"
            "  --template FILE       a Jinja template file instead\n"
            "  --bos-token S, --eos-token S   bos_token / eos_token for --template (default \"\")\n"
            "  --messages FILE       OpenAI-style message list (JSON array), or an object with\n"
            "                        \"messages\" (and optionally \"tools\")\n"
            "  --tools FILE          OpenAI tools list (JSON array); `tools` is undefined without it\n"
            "  --no-generation-prompt   add_generation_prompt = false (default true)\n"
            "  --time N              also render N more times and print the time per render to stderr\n"
            "  --untrusted           print JSON instead: {\"prompt\": TEXT, \"untrusted\": [[START, END], ...]},\n"
            "                        the byte ranges that came from messages / tools (special tokens\n"
            "                        are never parsed there, see docs/DESIGN.md)\n"
            "strftime_now() uses SOURCE_DATE_EPOCH (UTC) when set. A template error, raise_exception()\n"
            "included, exits 1 with the message and the template line.\n");
}

/* Parse a JSON file (Python's json.loads nests without a small depth limit). */
static json_object *read_json(const char *cmd, const char *path) {
    char *text;
    size_t len;
    if (spud_read_file(path, &text, &len)) {
        cli_error(cmd, "%s", spud_last_error());
        return NULL;
    }
    json_tokener *tk = json_tokener_new_ex(1000);
    json_object *j = NULL;
    if (tk) {
        j = json_tokener_parse_ex(tk, text, (int)len);
        enum json_tokener_error e = json_tokener_get_error(tk);
        if (e != json_tokener_success || (size_t)json_tokener_get_parse_end(tk) != len) {
            size_t end = json_tokener_get_parse_end(tk);
            while (e == json_tokener_success && end < len && strchr(" \t\r\n", text[end])) end++;
            if (e != json_tokener_success || end != len) {
                cli_error(cmd, "%s: not valid JSON (%s)", path,
                          e != json_tokener_success ? json_tokener_error_desc(e) : "trailing data");
                json_object_put(j);
                j = NULL;
            }
        }
        json_tokener_free(tk);
    } else {
        cli_error(cmd, "out of memory");
    }
    spud_free(text);
    return j;
}

int cmd_template(int argc, char **argv) {
    const char *cmd = "template", *model_path = NULL, *tpl_path = NULL, *msg_path = NULL,
               *tools_path = NULL, *bos = NULL, *eos = NULL;
    bool add_gen = true, untrusted = false;
    int64_t n_time = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            template_usage(stdout);
            return 0;
        }
        const char **dst = !strcmp(a, "-m") ? &model_path
                           : !strcmp(a, "--template") ? &tpl_path
                           : !strcmp(a, "--messages") ? &msg_path
                           : !strcmp(a, "--tools") ? &tools_path
                           : !strcmp(a, "--bos-token") ? &bos
                           : !strcmp(a, "--eos-token") ? &eos
                           : NULL;
        if (dst) {
            if (!val) {
                cli_error(cmd, "%s needs a value", a);
                return 2;
            }
            *dst = val;
            i++;
        } else if (!strcmp(a, "--no-generation-prompt")) {
            add_gen = false;
        } else if (!strcmp(a, "--untrusted")) {
            untrusted = true;
        } else if (!strcmp(a, "--time")) {
            if (!cli_parse_i64(cmd, a, val, 1, 100000000, &n_time)) return 2;
            i++;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud template --help)", a);
            return 2;
        }
    }
    if (!!model_path == !!tpl_path || !msg_path) {
        cli_error(cmd, "give -m MODEL or --template FILE, and --messages FILE (see spud template --help)");
        return 2;
    }
    if (model_path && (bos || eos)) {
        cli_error(cmd, "--bos-token / --eos-token go with --template (a model has its own)");
        return 2;
    }

    int rc = 1;
    spud_chat_template *ct = NULL;
    json_object *msgs = NULL, *tools = NULL;
    char *out = NULL, *src = NULL;
    uint8_t *taint = NULL;
    size_t out_len = 0, src_len = 0;
    spud_status st;
    double t_parse = spud_time_s();
    if (model_path) {
        spud_gguf *g;
        if (spud_gguf_open(model_path, &g)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        st = spud_chat_template_from_gguf(g, &ct);
        spud_gguf_close(g);
    } else {
        if (spud_read_file(tpl_path, &src, &src_len)) {
            cli_error(cmd, "%s", spud_last_error());
            goto done;
        }
        st = spud_chat_template_new(src, src_len, bos, eos, &ct);
    }
    if (st) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    t_parse = spud_time_s() - t_parse;
    if (!(msgs = read_json(cmd, msg_path))) goto done;
    if (json_object_get_type(msgs) == json_type_object) {
        json_object *m, *t;
        if (!json_object_object_get_ex(msgs, "messages", &m)) {
            cli_error(cmd, "%s: an object needs a \"messages\" list", msg_path);
            goto done;
        }
        if (!tools_path && json_object_object_get_ex(msgs, "tools", &t)) tools = json_object_get(t);
        json_object *whole = msgs;
        msgs = json_object_get(m);
        json_object_put(whole);
    }
    if (json_object_get_type(msgs) != json_type_array) {
        cli_error(cmd, "%s: messages must be a JSON array", msg_path);
        goto done;
    }
    if (tools_path && !(tools = read_json(cmd, tools_path))) goto done;
    if (spud_chat_render_taint(ct, msgs, tools, add_gen, NULL, &out, &out_len, untrusted ? &taint : NULL)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    if (n_time > 0) {
        double t0 = spud_time_s();
        for (int64_t k = 0; k < n_time; k++) {
            char *again;
            if (spud_chat_render_ex(ct, msgs, tools, add_gen, NULL, &again, NULL)) {
                cli_error(cmd, "%s", spud_last_error());
                goto done;
            }
            spud_free(again);
        }
        double dt = spud_time_s() - t0;
        fprintf(stderr, "spud template: %zu bytes; parse %.1f us (with loading); render %.2f us per conversation (%lld renders)\n",
                out_len, t_parse * 1e6, dt / (double)n_time * 1e6, (long long)n_time);
    }
    if (untrusted) {
        json_object *j = json_object_new_object(), *spans = json_object_new_array();
        json_object_object_add(j, "prompt", json_object_new_string_len(out, (int)out_len));
        for (size_t i = 0; i < out_len;) {
            if (!taint[i]) {
                i++;
                continue;
            }
            size_t e = i;
            while (e < out_len && taint[e]) e++;
            json_object *span = json_object_new_array();
            json_object_array_add(span, json_object_new_int64((int64_t)i));
            json_object_array_add(span, json_object_new_int64((int64_t)e));
            json_object_array_add(spans, span);
            i = e;
        }
        json_object_object_add(j, "untrusted", spans);
        printf("%s\n", json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(j);
        if (fflush(stdout)) {
            cli_error(cmd, "write error");
            goto done;
        }
    } else if (fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout)) {
        cli_error(cmd, "write error");
        goto done;
    }
    rc = 0;
done:
    spud_free(out);
    spud_free(taint);
    spud_free(src);
    json_object_put(msgs);
    json_object_put(tools);
    spud_chat_template_free(ct);
    return rc;
}
