/* tool_grammar.c: tool-call grammars (spud_tool_grammar_* in tool_grammar.h). */
#include "tool_grammar.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "json_schema.h"

spud_status spud_tool_format_parse(const char *name, spud_tool_format *out) {
    if (!strcmp(name, "hermes") || !strcmp(name, "qwen")) {
        *out = SPUD_TOOL_FORMAT_HERMES;
    } else if (!strcmp(name, "llama3")) {
        *out = SPUD_TOOL_FORMAT_LLAMA3;
    } else if (!strcmp(name, "mistral")) {
        *out = SPUD_TOOL_FORMAT_MISTRAL;
    } else if (!strcmp(name, "deepseek")) {
        *out = SPUD_TOOL_FORMAT_DEEPSEEK;
    } else if (!strcmp(name, "harmony")) {
        *out = SPUD_TOOL_FORMAT_HARMONY;
    } else if (!strcmp(name, "generic")) {
        *out = SPUD_TOOL_FORMAT_GENERIC;
    } else {
        return spud_errorf(SPUD_ERR_INVALID,
                           "unknown tool call format '%s' (hermes, qwen, llama3, mistral, deepseek, harmony, generic)",
                           name);
    }
    return SPUD_OK;
}

spud_tool_format spud_tool_format_for_syntax(spud_call_syntax s) {
    switch (s) {
    case SPUD_CALLS_HERMES:
        return SPUD_TOOL_FORMAT_HERMES;
    case SPUD_CALLS_LLAMA3:
        return SPUD_TOOL_FORMAT_LLAMA3;
    case SPUD_CALLS_MISTRAL:
        return SPUD_TOOL_FORMAT_MISTRAL;
    case SPUD_CALLS_DEEPSEEK:
        return SPUD_TOOL_FORMAT_DEEPSEEK;
    case SPUD_CALLS_HARMONY:
        return SPUD_TOOL_FORMAT_HARMONY;
    case SPUD_CALLS_GENERIC:
        break;
    }
    return SPUD_TOOL_FORMAT_GENERIC;
}

#define DS_CALLS_BEGIN "<\xEF\xBD\x9Ctool\xE2\x96\x81" "calls\xE2\x96\x81" "begin\xEF\xBD\x9C>"
#define DS_CALLS_END "<\xEF\xBD\x9Ctool\xE2\x96\x81" "calls\xE2\x96\x81" "end\xEF\xBD\x9C>"
#define DS_CALL_BEGIN "<\xEF\xBD\x9Ctool\xE2\x96\x81" "call\xE2\x96\x81" "begin\xEF\xBD\x9C>"
#define DS_CALL_END "<\xEF\xBD\x9Ctool\xE2\x96\x81" "call\xE2\x96\x81" "end\xEF\xBD\x9C>"
#define DS_SEP "<\xEF\xBD\x9Ctool\xE2\x96\x81" "sep\xEF\xBD\x9C>"

spud_status spud_tool_choice_parse(const char *name, spud_tool_choice *out) {
    if (!strcmp(name, "auto")) {
        *out = SPUD_TOOL_CHOICE_AUTO;
    } else if (!strcmp(name, "required")) {
        *out = SPUD_TOOL_CHOICE_REQUIRED;
    } else if (!strcmp(name, "none")) {
        *out = SPUD_TOOL_CHOICE_NONE;
    } else {
        *out = SPUD_TOOL_CHOICE_FUNCTION;
    }
    return SPUD_OK;
}

void spud_tool_grammar_free(spud_tool_grammar *t) {
    spud_free(t->gbnf);
    spud_free(t->trigger);
    t->gbnf = t->trigger = NULL;
}

/* Append s to *buf (heap string). */
static bool cat(char **buf, const char *s) {
    size_t a = *buf ? strlen(*buf) : 0, n = strlen(s);
    char *q = spud_realloc(*buf, a + n + 1);
    if (!q) return false;
    memcpy(q + a, s, n + 1);
    *buf = q;
    return true;
}

/* A marker as a token reference if tok spells it as one token, else a literal. */
static bool marker(char **buf, const spud_tokenizer *tok, const char *text) {
    if (tok) {
        size_t n = strlen(text);
        for (int32_t id = 0; id < spud_tok_n_vocab(tok); id++) {
            size_t len;
            const char *t = spud_tok_text(tok, id, &len);
            if (t && len == n && !memcmp(t, text, n)) {
                char ref[32];
                snprintf(ref, sizeof ref, "<[%d]>", id);
                return cat(buf, ref);
            }
        }
    }
    return spud_gbnf_append_literal(buf, text, strlen(text)) == SPUD_OK;
}

static bool valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

spud_status spud_tool_grammar_build(json_object *tools, spud_tool_format fmt, spud_tool_choice choice,
                                    const char *function, bool parallel, const spud_tokenizer *tok, bool strict,
                                    spud_tool_grammar *out) {
    out->gbnf = out->trigger = NULL;
    if (choice == SPUD_TOOL_CHOICE_NONE) return SPUD_OK;
    if (!json_object_is_type(tools, json_type_array) || json_object_array_length(tools) == 0)
        return spud_errorf(SPUD_ERR_INVALID, "tools: expecting a non-empty array of tools");
    spud_gbnf_builder *b = spud_gbnf_builder_new(strict);
    char *alts = NULL, *nalts = NULL, *body = NULL, *root = NULL;
    spud_status st = SPUD_OK;
    size_t n_tools = json_object_array_length(tools), n_alts = 0;
    const char *args_key = fmt == SPUD_TOOL_FORMAT_LLAMA3 ? "parameters" : "arguments";
    if (!b) goto oom;
    for (size_t i = 0; i < n_tools; i++) {
        json_object *t = json_object_array_get_idx(tools, i), *fn = NULL, *name = NULL, *params = NULL, *type = NULL;
        if (json_object_object_get_ex(t, "type", &type) &&
            (!json_object_is_type(type, json_type_string) || strcmp(json_object_get_string(type), "function"))) {
            st = spud_errorf(SPUD_ERR_INVALID, "tools[%zu]: only tools of type \"function\" are supported", i);
            goto done;
        }
        if (!json_object_object_get_ex(t, "function", &fn)) fn = t;
        if (!json_object_is_type(fn, json_type_object) || !json_object_object_get_ex(fn, "name", &name) ||
            !json_object_is_type(name, json_type_string) || !valid_name(json_object_get_string(name))) {
            st = spud_errorf(SPUD_ERR_INVALID, "tools[%zu]: expecting function.name matching [A-Za-z0-9_-]{1,64}", i);
            goto done;
        }
        const char *fname = json_object_get_string(name);
        for (size_t j = 0; j < i; j++) {
            json_object *o = json_object_array_get_idx(tools, j), *f2 = NULL, *n2 = NULL;
            if (!json_object_object_get_ex(o, "function", &f2)) f2 = o;
            if (json_object_object_get_ex(f2, "name", &n2) && !strcmp(json_object_get_string(n2), fname)) {
                st = spud_errorf(SPUD_ERR_INVALID, "tools[%zu]: function name '%s' is declared twice", i, fname);
                goto done;
            }
        }
        if (choice == SPUD_TOOL_CHOICE_FUNCTION && strcmp(fname, function)) continue;
        json_object_object_get_ex(fn, "parameters", &params);
        json_object *empty = NULL;
        if (!params) {
            empty = json_tokener_parse("{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}");
            if (!empty) goto oom;
            params = empty;
        }
        char hint[96];
        snprintf(hint, sizeof hint, "%s-args", fname);
        const char *args_rule;
        st = spud_gbnf_builder_add_schema(b, params, hint, &args_rule);
        json_object_put(empty);
        if (st) {
            st = spud_error_wrap(st, "tools[%zu] (%s)", i, fname);
            goto done;
        }
        /* "\"f\"" ws "," ws "\"arguments\"" ws ":" ws f-args */
        char *alt = NULL;
        char quoted[80];
        snprintf(quoted, sizeof quoted, "\"%s\"", fname);
        char key[24];
        snprintf(key, sizeof key, "\"%s\"", args_key);
        if (spud_gbnf_append_literal(&alt, quoted, strlen(quoted)) || !cat(&alt, " ws \",\" ws ") ||
            spud_gbnf_append_literal(&alt, key, strlen(key)) || !cat(&alt, " ws \":\" ws ") ||
            !cat(&alt, args_rule) || (n_alts && !cat(&alts, " | ")) || !cat(&alts, alt)) {
            spud_free(alt);
            goto oom;
        }
        spud_free(alt);
        /* DEEPSEEK, HARMONY: the name is bare text, the arguments follow it */
        alt = NULL;
        bool ok = spud_gbnf_append_literal(&alt, fname, strlen(fname)) == SPUD_OK;
        if (fmt == SPUD_TOOL_FORMAT_DEEPSEEK) {
            ok = ok && cat(&alt, " \"\\n```json\\n\" ") && cat(&alt, args_rule) && cat(&alt, " \"\\n```\"");
        } else if (fmt == SPUD_TOOL_FORMAT_HARMONY) {
            ok = ok && cat(&alt, " \" \" ") && marker(&alt, tok, "<|constrain|>") && cat(&alt, " \"json\" ") &&
                 marker(&alt, tok, "<|message|>") && cat(&alt, " ") && cat(&alt, args_rule);
        }
        ok = ok && (!n_alts || cat(&nalts, " | ")) && cat(&nalts, alt);
        spud_free(alt);
        if (!ok) goto oom;
        n_alts++;
    }
    if (n_alts == 0) {
        st = spud_errorf(SPUD_ERR_INVALID, "tool_choice names function '%s', which is not among the tools",
                         function ? function : "");
        goto done;
    }
    /* call-body: the JSON object of one call. */
    if (!cat(&body, "\"{\" ws \"\\\"name\\\"\" ws \":\" ws ( ") || !cat(&body, alts) || !cat(&body, " ) ws \"}\""))
        goto oom;
    const char *obj_rule, *call_rule;
    if ((st = spud_gbnf_builder_add_rule(b, "call-object", body, &obj_rule))) goto done;
    bool lazy = choice == SPUD_TOOL_CHOICE_AUTO;
    /* root: [prefix] first-call-rest (sep next-call)* [suffix] */
    switch (fmt) {
    case SPUD_TOOL_FORMAT_HERMES: {
        char *call = NULL, *after = NULL;
        /* after the opening marker: ws object ws </tool_call> */
        bool ok = cat(&after, "ws ") && cat(&after, obj_rule) && cat(&after, " ws ") && marker(&after, tok, "</tool_call>");
        ok = ok && marker(&call, tok, "<tool_call>") && cat(&call, " ") && cat(&call, after);
        const char *after_rule = NULL;
        if (ok && (st = spud_gbnf_builder_add_rule(b, "call-rest", after, &after_rule)) == SPUD_OK &&
            (st = spud_gbnf_builder_add_rule(b, "call", call, &call_rule)) == SPUD_OK) {
            ok = cat(&root, lazy ? after_rule : call_rule);
            if (ok && parallel) ok = cat(&root, " ( ws ") && cat(&root, call_rule) && cat(&root, " )*");
        }
        spud_free(call);
        spud_free(after);
        if (st) goto done;
        if (!ok) goto oom;
        if (lazy && !(out->trigger = spud_strndup("<tool_call>", 11))) goto oom;
        break;
    }
    case SPUD_TOOL_FORMAT_LLAMA3: {
        if (lazy) {
            /* after the trigger {"name": the rest of the object */
            char *rest = NULL;
            bool ok = cat(&rest, "ws \":\" ws ( ") && cat(&rest, alts) && cat(&rest, " ) ws \"}\"");
            if (!ok || !cat(&root, rest)) {
                spud_free(rest);
                goto oom;
            }
            spud_free(rest);
            if (!(out->trigger = spud_strndup("{\"name\"", 7))) goto oom;
        } else if (!cat(&root, obj_rule)) {
            goto oom;
        }
        break;
    }
    case SPUD_TOOL_FORMAT_MISTRAL: {
        char *list = NULL;
        bool ok = cat(&list, "\"[\" ws ") && cat(&list, obj_rule) &&
                  (!parallel || (cat(&list, " ( ws \",\" ws ") && cat(&list, obj_rule) && cat(&list, " )*"))) &&
                  cat(&list, " ws \"]\"");
        if (ok && !lazy) ok = marker(&root, tok, "[TOOL_CALLS]") && cat(&root, " ");
        ok = ok && cat(&root, list);
        spud_free(list);
        if (!ok) goto oom;
        if (lazy && !(out->trigger = spud_strndup("[TOOL_CALLS]", 12))) goto oom;
        break;
    }
    case SPUD_TOOL_FORMAT_DEEPSEEK: {
        /* call: <｜tool▁call▁begin｜>function<｜tool▁sep｜>( named ) <｜tool▁call▁end｜> */
        char *call = NULL;
        const char *call_rule2;
        bool ok = marker(&call, tok, DS_CALL_BEGIN) && cat(&call, " \"function\" ") && marker(&call, tok, DS_SEP) &&
                  cat(&call, " ( ") && cat(&call, nalts) && cat(&call, " ) ") && marker(&call, tok, DS_CALL_END);
        if (!ok) {
            spud_free(call);
            goto oom;
        }
        st = spud_gbnf_builder_add_rule(b, "call", call, &call_rule2);
        spud_free(call);
        if (st) goto done;
        ok = (lazy || (marker(&root, tok, DS_CALLS_BEGIN) && cat(&root, " "))) && cat(&root, call_rule2) &&
             (!parallel || (cat(&root, " ( \"\\n\" ") && cat(&root, call_rule2) && cat(&root, " )*"))) &&
             cat(&root, " ") && marker(&root, tok, DS_CALLS_END);
        if (!ok) goto oom;
        if (lazy && !(out->trigger = spud_strndup(DS_CALLS_BEGIN, strlen(DS_CALLS_BEGIN)))) goto oom;
        break;
    }
    case SPUD_TOOL_FORMAT_HARMONY: {
        /* [<|channel|>commentary ]to=functions.( named )<|call|>; more calls as new messages */
        char *rest = NULL, *call = NULL, *more = NULL;
        const char *rest_rule, *call_rule2;
        bool ok = cat(&rest, "( ") && cat(&rest, nalts) && cat(&rest, " ) ") && marker(&rest, tok, "<|call|>");
        if (!ok) {
            spud_free(rest);
            goto oom;
        }
        st = spud_gbnf_builder_add_rule(b, "call-rest", rest, &rest_rule);
        spud_free(rest);
        if (st) goto done;
        if (!cat(&call, "\"to=functions.\" ") || !cat(&call, rest_rule)) {
            spud_free(call);
            goto oom;
        }
        st = spud_gbnf_builder_add_rule(b, "call", call, &call_rule2);
        spud_free(call);
        if (st) goto done;
        ok = lazy ? cat(&root, rest_rule)
                  : marker(&root, tok, "<|channel|>") && cat(&root, " \"commentary \" ") && cat(&root, call_rule2);
        if (ok && parallel) {
            ok = marker(&more, tok, "<|start|>") && cat(&more, " \"assistant\" ") && marker(&more, tok, "<|channel|>") &&
                 cat(&more, " \"commentary \" ") && cat(&more, call_rule2) && cat(&root, " ( ") && cat(&root, more) &&
                 cat(&root, " )*");
            spud_free(more);
        }
        if (!ok) goto oom;
        if (lazy && !(out->trigger = spud_strndup("to=functions.", 13))) goto oom;
        break;
    }
    case SPUD_TOOL_FORMAT_GENERIC: {
        if (lazy) {
            /* as LLAMA3: after the trigger {"name" the rest of the object */
            bool ok = cat(&root, "ws \":\" ws ( ") && cat(&root, alts) && cat(&root, " ) ws \"}\"");
            if (!ok) goto oom;
            if (!(out->trigger = spud_strndup("{\"name\"", 7))) goto oom;
        } else if (parallel) {
            bool ok = cat(&root, "\"{\" ws \"\\\"tool_calls\\\"\" ws \":\" ws \"[\" ws ") && cat(&root, obj_rule) &&
                      cat(&root, " ( ws \",\" ws ") && cat(&root, obj_rule) && cat(&root, " )* ws \"]\" ws \"}\"");
            if (!ok) goto oom;
        } else if (!cat(&root, obj_rule)) {
            goto oom;
        }
        break;
    }
    }
    if ((st = spud_gbnf_builder_finish(b, root, &out->gbnf))) goto done;
    goto done;
oom:
    st = spud_errorf(SPUD_ERR_NOMEM, "tools: out of memory");
done:
    if (st) spud_tool_grammar_free(out);
    spud_free(alts);
    spud_free(nalts);
    spud_free(body);
    spud_free(root);
    spud_gbnf_builder_free(b);
    return st;
}
