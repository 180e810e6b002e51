/* server_oai.c: POST /v1/chat/completions, /v1/completions and
 * /apply-template: validate the request, render and tokenize the prompt,
 * and shape the engine's output as OpenAI's JSON (whole or chunked). */
#include <stdio.h>
#include <string.h>

#include "server_int.h"

/* ---- messages and templates ---- */

static bool part_text(json_object *part, const char *param, size_t i, const char **text, size_t *len,
                      srv_error *e) {
    char p[160];
    snprintf(p, sizeof p, "%s.content[%zu]", param, i);
    if (!json_object_is_type(part, json_type_object))
        return srv_fail(e, 400, p, "'%s' must be an object with a 'type'", p);
    json_object *type = NULL, *t = NULL;
    json_object_object_get_ex(part, "type", &type);
    const char *ty = type && json_object_is_type(type, json_type_string) ? json_object_get_string(type) : "";
    if (strcmp(ty, "text") && strcmp(ty, "input_text") && strcmp(ty, "output_text") && strcmp(ty, "refusal"))
        return srv_fail(e, 400, p, "'%s': content parts of type '%s' are not supported by this model", p, ty);
    const char *key = strcmp(ty, "refusal") ? "text" : "refusal";
    if (!json_object_object_get_ex(part, key, &t) || !json_object_is_type(t, json_type_string))
        return srv_fail(e, 400, p, "'%s.%s' must be a string", p, key);
    *text = json_object_get_string(t);
    *len = (size_t)json_object_get_string_len(t);
    return true;
}

bool srv_check_messages(json_object *messages, const char *param, srv_error *e) {
    static const char *roles[] = {"system", "developer", "user", "assistant", "tool", "function"};
    if (!messages || !json_object_is_type(messages, json_type_array))
        return srv_fail(e, 400, param, "'%s' must be an array of messages", param);
    size_t n = json_object_array_length(messages);
    if (n == 0) return srv_fail(e, 400, param, "'%s' must hold at least one message", param);
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(messages, i), *role = NULL, *content = NULL;
        char p[128];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_object_is_type(m, json_type_object))
            return srv_fail(e, 400, p, "'%s' must be an object", p);
        if (!json_object_object_get_ex(m, "role", &role) || !json_object_is_type(role, json_type_string))
            return srv_fail(e, 400, p, "'%s.role' must be a string", p);
        bool known = false;
        for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++)
            known |= !strcmp(json_object_get_string(role), roles[r]);
        if (!known) {
            char pr[160];
            snprintf(pr, sizeof pr, "%s.role", p);
            return srv_fail(e, 400, pr, "'%s' must be one of system, developer, user, assistant, tool (got '%s')",
                            pr, json_object_get_string(role));
        }
        json_object_object_get_ex(m, "content", &content);
        if (content && json_object_is_type(content, json_type_array)) {
            for (size_t k = 0; k < json_object_array_length(content); k++) {
                const char *t;
                size_t l;
                if (!part_text(json_object_array_get_idx(content, k), p, k, &t, &l, e)) return false;
            }
        } else if (content && !json_object_is_type(content, json_type_string)) {
            char pc[160];
            snprintf(pc, sizeof pc, "%s.content", p);
            return srv_fail(e, 400, pc, "'%s' must be a string, an array of content parts or null", pc);
        }
        json_object *tc = NULL;
        if (json_object_object_get_ex(m, "tool_calls", &tc) && tc && !json_object_is_type(tc, json_type_array)) {
            char pt[160];
            snprintf(pt, sizeof pt, "%s.tool_calls", p);
            return srv_fail(e, 400, pt, "'%s' must be an array", pt);
        }
    }
    return true;
}

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
    uint8_t *taint; /* render_chatml: 1 per byte the conversation wrote (allocated by tb_user) */
} tbuf;

static void tb_add(tbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *t = spud_realloc(b->p, cap);
        if (!t) {
            b->oom = true;
            return;
        }
        b->p = t;
        b->cap = cap;
        if (b->taint) {
            uint8_t *m = spud_realloc(b->taint, cap);
            if (!m) {
                b->oom = true;
                return;
            }
            b->taint = m;
        }
    }
    memcpy(b->p + b->n, s, n);
    if (b->taint) memset(b->taint + b->n, 0, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void tb_str(tbuf *b, const char *s) { tb_add(b, s, strlen(s)); }

/* Text from the conversation: tokenized without special tokens. */
static void tb_user(tbuf *b, const char *s, size_t n) {
    size_t at = b->n;
    tb_add(b, s, n);
    if (b->oom || !n) return;
    if (!b->taint && !(b->taint = spud_calloc(b->cap, 1))) {
        b->oom = true;
        return;
    }
    memset(b->taint + at, 1, n);
}

/* ChatML, for models without a template of their own:
 *   <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
 * developer becomes system; assistant tool calls are written as Hermes-style
 * <tool_call> JSON; tool definitions go into a leading system block. */
static bool render_chatml(json_object *messages, json_object *tools, bool add_generation_prompt, tbuf *b,
                          srv_error *e) {
    size_t n = json_object_array_length(messages);
    if (tools && json_object_array_length(tools)) {
        tb_str(b, "<|im_start|>system\n# Tools\n\nYou may call one or more functions. The available tools, as "
                  "JSON:\n<tools>\n");
        for (size_t i = 0; i < json_object_array_length(tools); i++) {
            size_t l;
            const char *t = srv_json_text(json_object_array_get_idx(tools, i), &l);
            tb_user(b, t, l);
            tb_str(b, "\n");
        }
        tb_str(b, "</tools>\nTo call a function, answer with <tool_call>{\"name\": NAME, \"arguments\": "
                  "ARGS}</tool_call>.<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(messages, i), *role, *content = NULL, *tc = NULL;
        json_object_object_get_ex(m, "role", &role);
        const char *r = json_object_get_string(role);
        if (!strcmp(r, "developer")) r = "system";
        if (!strcmp(r, "function")) r = "tool";
        tb_str(b, "<|im_start|>");
        tb_user(b, r, strlen(r));
        tb_str(b, "\n");
        json_object_object_get_ex(m, "content", &content);
        if (content && json_object_is_type(content, json_type_string)) {
            tb_user(b, json_object_get_string(content), (size_t)json_object_get_string_len(content));
        } else if (content) {
            for (size_t k = 0; k < json_object_array_length(content); k++) {
                const char *t;
                size_t l;
                if (!part_text(json_object_array_get_idx(content, k), "messages", k, &t, &l, e)) return false;
                tb_user(b, t, l);
            }
        }
        if (json_object_object_get_ex(m, "tool_calls", &tc) && tc)
            for (size_t k = 0; k < json_object_array_length(tc); k++) {
                json_object *call = json_object_array_get_idx(tc, k), *fn = NULL, *name = NULL, *args = NULL;
                json_object_object_get_ex(call, "function", &fn);
                if (fn) {
                    json_object_object_get_ex(fn, "name", &name);
                    json_object_object_get_ex(fn, "arguments", &args);
                }
                tb_str(b, "\n<tool_call>\n{\"name\": ");
                size_t l;
                const char *t = srv_json_text(name, &l);
                tb_user(b, t, l);
                tb_str(b, ", \"arguments\": ");
                if (args && json_object_is_type(args, json_type_string))
                    tb_user(b, json_object_get_string(args), strlen(json_object_get_string(args)));
                else {
                    t = srv_json_text(args, &l);
                    tb_user(b, t, l);
                }
                tb_str(b, "}\n</tool_call>");
            }
        tb_str(b, "<|im_end|>\n");
    }
    if (add_generation_prompt) tb_str(b, "<|im_start|>assistant\n");
    return true;
}

/* Messages as chat templates expect them (what Hugging Face and llama.cpp
 * pass): content a string (text parts joined; null -> ""), "developer" ->
 * "system", tool call arguments parsed from their JSON string to an object. */
static json_object *normalize_messages(json_object *messages) {
    json_object *out = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(messages); i++) {
        json_object *m = json_object_array_get_idx(messages, i), *n = json_object_new_object();
        json_object_object_foreach(m, key, val) {
            if (!strcmp(key, "role")) {
                const char *r = json_object_get_string(val);
                json_object_object_add(n, key, json_object_new_string(!strcmp(r, "developer") ? "system" : r));
            } else if (!strcmp(key, "content")) {
                if (val && json_object_is_type(val, json_type_array)) {
                    tbuf b = {0};
                    for (size_t k = 0; k < json_object_array_length(val); k++) {
                        json_object *part = json_object_array_get_idx(val, k), *t = NULL;
                        if (!json_object_object_get_ex(part, "text", &t)) json_object_object_get_ex(part, "refusal", &t);
                        if (t) tb_add(&b, json_object_get_string(t), (size_t)json_object_get_string_len(t));
                    }
                    json_object_object_add(n, key, json_object_new_string_len(b.p ? b.p : "", (int)b.n));
                    spud_free(b.p);
                } else {
                    json_object_object_add(n, key, val ? json_object_get(val) : json_object_new_string(""));
                }
            } else if (!strcmp(key, "tool_calls") && val && json_object_is_type(val, json_type_array)) {
                json_object *calls = json_object_new_array();
                for (size_t k = 0; k < json_object_array_length(val); k++) {
                    json_object *call = json_object_array_get_idx(val, k), *fn = NULL, *args = NULL;
                    json_object *copy = NULL;
                    if (json_object_deep_copy(call, &copy, NULL) != 0) continue;
                    if (json_object_object_get_ex(copy, "function", &fn) && fn &&
                        json_object_object_get_ex(fn, "arguments", &args) && args &&
                        json_object_is_type(args, json_type_string)) {
                        json_object *parsed = json_tokener_parse(json_object_get_string(args));
                        if (parsed && json_object_is_type(parsed, json_type_object))
                            json_object_object_add(fn, "arguments", parsed);
                        else if (parsed)
                            json_object_put(parsed);
                    }
                    json_object_array_add(calls, copy);
                }
                json_object_object_add(n, key, calls);
            } else {
                json_object_object_add(n, key, json_object_get(val));
            }
        }
        if (!json_object_object_get_ex(n, "content", NULL)) json_object_object_add(n, "content", json_object_new_string(""));
        json_object_array_add(out, n);
    }
    return out;
}

/* The one place that turns messages into prompt text: the model's chat
 * template (spud_chat_render), or ChatML for a model without one. *taint
 * (when taint is not NULL): 1 per byte that the conversation wrote. */
static bool render_chat(spud_server *s, json_object *messages, json_object *tools, bool add_generation_prompt,
                        char **out, size_t *out_len, uint8_t **taint, srv_error *e) {
    if (s->tmpl) {
        json_object *norm = normalize_messages(messages);
        spud_status st = spud_chat_render_taint(s->tmpl, norm, tools, add_generation_prompt, NULL, out, out_len, taint);
        json_object_put(norm);
        if (st == SPUD_ERR_NOMEM) return srv_fail(e, 500, "", "out of memory");
        if (st) return srv_fail(e, 400, "messages", "the model's chat template refused the messages: %s", spud_last_error());
        return true;
    }
    tbuf b = {0};
    if (!render_chatml(messages, tools, add_generation_prompt, &b, e)) {
        spud_free(b.p);
        spud_free(b.taint);
        return false;
    }
    if (!b.p) tb_add(&b, "", 0);
    if (taint && !b.taint && !b.oom && !(b.taint = spud_calloc(b.n + 1, 1))) b.oom = true;
    if (b.oom) {
        spud_free(b.p);
        spud_free(b.taint);
        return srv_fail(e, 500, "", "out of memory");
    }
    *out = b.p;
    *out_len = b.n;
    if (taint) *taint = b.taint;
    else spud_free(b.taint);
    return true;
}

bool srv_render_chat(spud_server *s, json_object *messages, json_object *tools, bool add_generation_prompt,
                     char **out, size_t *out_len, srv_error *e) {
    return render_chat(s, messages, tools, add_generation_prompt, out, out_len, NULL, e);
}

static bool tokenize_prompt(spud_server *s, const char *text, size_t len, bool add_special, const uint8_t *taint,
                            const char *param, int32_t **ids, size_t *n_ids, srv_error *e);

bool srv_chat_tokens(spud_server *s, json_object *messages, json_object *tools, const char *param, char **text_out,
                     size_t *len_out, int32_t **ids, size_t *n_ids, srv_error *e) {
    char *text;
    size_t len;
    uint8_t *taint;
    if (!render_chat(s, messages, tools, true, &text, &len, &taint, e)) return false;
    bool ok = tokenize_prompt(s, text, len, false, taint, param, ids, n_ids, e);
    spud_free(taint);
    if (ok && text_out) {
        *text_out = text;
        *len_out = len;
    } else {
        spud_free(text);
    }
    return ok;
}

bool srv_tokenize_prompt(spud_server *s, const char *text, size_t len, bool add_special, const char *param,
                         int32_t **ids, size_t *n_ids, srv_error *e) {
    return tokenize_prompt(s, text, len, add_special, NULL, param, ids, n_ids, e);
}

static bool tokenize_prompt(spud_server *s, const char *text, size_t len, bool add_special, const uint8_t *taint,
                            const char *param, int32_t **ids, size_t *n_ids, srv_error *e) {
    const uint8_t *structural = NULL; /* markers the template writes: text in content (spud_chat_tokenize) */
    if (taint && s->tmpl && spud_chat_template_structural(s->tmpl, s->model->tok, &structural))
        return srv_fail(e, 500, "", "out of memory");
    if (spud_tok_encode_masked(s->model->tok, text, len, add_special, taint, structural, ids, n_ids))
        return srv_fail(e, 400, param, "cannot tokenize '%s': %s", param, spud_last_error());
    int32_t bos = spud_token_bos(s->model);
    if (*n_ids >= 2 && bos >= 0 && (*ids)[0] == bos && (*ids)[1] == bos) { /* the template wrote BOS too */
        memmove(*ids, *ids + 1, (*n_ids - 1) * sizeof **ids);
        (*n_ids)--;
    }
    if (*n_ids == 0) {
        spud_free(*ids);
        *ids = NULL;
        return srv_fail(e, 400, param, "'%s' is empty (no tokens)", param);
    }
    if (*n_ids > s->n_ctx) {
        size_t n = *n_ids;
        spud_free(*ids);
        *ids = NULL;
        srv_fail(e, 400, param,
                 "this model's context is %u tokens per sequence, but the prompt ('%s') is %zu tokens; "
                 "shorten it or start the server with a larger --ctx-size",
                 s->n_ctx, param, n);
        e->code = "context_length_exceeded";
        return false;
    }
    return true;
}

/* ---- output ---- */

static json_object *token_json(const spud_model *m, int32_t id, bool with_bytes, json_object **bytes_out) {
    char buf[256];
    size_t n = spud_token_to_piece(m, id, true, buf, sizeof buf);
    if (n > sizeof buf) n = sizeof buf;
    if (with_bytes) {
        json_object *b = json_object_new_array();
        for (size_t i = 0; i < n; i++) json_object_array_add(b, json_object_new_int((unsigned char)buf[i]));
        *bytes_out = b;
    }
    return srv_json_string_lossy(buf, n);
}

void srv_logprobs_append(srv_gen *g, json_object *dst, const spud_logprob *lp, size_t n, size_t text_offset) {
    const spud_model *m = g->s->model;
    if (g->api == API_CHAT || g->api == API_RESPONSES) { /* dst: array of entries */
        for (size_t i = 0; i < n; i++) {
            json_object *o = json_object_new_object(), *bytes, *top = json_object_new_array();
            json_object_object_add(o, "token", token_json(m, lp[i].token, true, &bytes));
            json_object_object_add(o, "logprob", json_object_new_double(lp[i].logprob));
            json_object_object_add(o, "bytes", bytes);
            for (int32_t k = 0; k < lp[i].n_top && k < g->top_logprobs; k++) {
                json_object *t = json_object_new_object(), *tb;
                json_object_object_add(t, "token", token_json(m, lp[i].top[k].token, true, &tb));
                json_object_object_add(t, "logprob", json_object_new_double(lp[i].top[k].logprob));
                json_object_object_add(t, "bytes", tb);
                json_object_array_add(top, t);
            }
            json_object_object_add(o, "top_logprobs", top);
            json_object_array_add(dst, o);
        }
        return;
    }
    /* completions: parallel arrays */
    static const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    json_object *arr[4];
    for (int k = 0; k < 4; k++)
        if (!json_object_object_get_ex(dst, keys[k], &arr[k])) {
            arr[k] = json_object_new_array();
            json_object_object_add(dst, keys[k], arr[k]);
        }
    size_t off = text_offset;
    for (size_t i = 0; i < n; i++) {
        char buf[256];
        size_t pl = spud_token_to_piece(m, lp[i].token, false, buf, sizeof buf);
        json_object_array_add(arr[0], token_json(m, lp[i].token, false, NULL));
        json_object_array_add(arr[1], json_object_new_double(lp[i].logprob));
        json_object *top = json_object_new_object();
        for (int32_t k = 0; k < lp[i].n_top && k < g->top_logprobs; k++) {
            json_object *name = token_json(m, lp[i].top[k].token, false, NULL);
            json_object_object_add(top, json_object_get_string(name), json_object_new_double(lp[i].top[k].logprob));
            json_object_put(name);
        }
        json_object_array_add(arr[2], top);
        json_object_array_add(arr[3], json_object_new_int64((int64_t)off));
        off += pl;
    }
}

json_object *srv_usage_json(const srv_gen *g, bool responses) {
    int64_t gen = 0, reasoning = 0;
    for (int32_t c = 0; c < g->n_choices; c++) {
        gen += g->ch[c].n_gen;
        reasoning += g->ch[c].n_reasoning;
    }
    json_object *u = json_object_new_object(), *pd = json_object_new_object(), *cd = json_object_new_object();
    json_object_object_add(u, responses ? "input_tokens" : "prompt_tokens", json_object_new_int64(g->n_prompt));
    json_object_object_add(pd, "cached_tokens", json_object_new_int64(g->n_cached));
    if (responses) json_object_object_add(u, "input_tokens_details", pd);
    json_object_object_add(u, responses ? "output_tokens" : "completion_tokens", json_object_new_int64(gen));
    json_object_object_add(cd, "reasoning_tokens", json_object_new_int64(reasoning));
    if (responses) json_object_object_add(u, "output_tokens_details", cd);
    json_object_object_add(u, "total_tokens", json_object_new_int64((int64_t)g->n_prompt + gen));
    if (!responses) {
        json_object_object_add(u, "prompt_tokens_details", pd);
        json_object_object_add(u, "completion_tokens_details", cd);
    }
    return u;
}

static json_object *envelope(srv_gen *g, const char *object) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(g->id));
    json_object_object_add(o, "object", json_object_new_string(object));
    json_object_object_add(o, "created", json_object_new_int64(g->created));
    json_object_object_add(o, "model", json_object_new_string(g->s->model_id));
    json_object_object_add(o, "system_fingerprint", json_object_new_string("spud"));
    return o;
}

/* One streamed chunk for choice c. delta_text may be NULL (no text field). */
static void stream_chunk(srv_gen *g, int32_t c, const char *text, size_t len, bool role, json_object *lp,
                         const char *finish) {
    bool chat = g->api == API_CHAT;
    json_object *o = envelope(g, chat ? "chat.completion.chunk" : "text_completion");
    json_object *choices = json_object_new_array(), *ch = json_object_new_object();
    json_object_object_add(ch, "index", json_object_new_int(c));
    if (chat) {
        json_object *delta = json_object_new_object();
        if (role) json_object_object_add(delta, "role", json_object_new_string("assistant"));
        if (text) json_object_object_add(delta, "content", json_object_new_string_len(text, (int)len));
        json_object_object_add(ch, "delta", delta);
        if (lp) {
            json_object *l = json_object_new_object();
            json_object_object_add(l, "content", lp);
            json_object_object_add(l, "refusal", NULL);
            lp = l;
        }
    } else {
        json_object_object_add(ch, "text", json_object_new_string_len(text ? text : "", text ? (int)len : 0));
    }
    json_object_object_add(ch, "logprobs", lp);
    json_object_object_add(ch, "finish_reason", finish ? json_object_new_string(finish) : NULL);
    json_object_array_add(choices, ch);
    json_object_object_add(o, "choices", choices);
    if (g->include_usage) json_object_object_add(o, "usage", NULL);
    srv_out_event(g, NULL, o);
}

/* One chat chunk for choice c with the given delta object (consumed). */
static void chat_chunk(srv_gen *g, int32_t c, json_object *delta) {
    json_object *o = envelope(g, "chat.completion.chunk");
    json_object *choices = json_object_new_array(), *ch = json_object_new_object();
    json_object_object_add(ch, "index", json_object_new_int(c));
    json_object_object_add(ch, "delta", delta);
    json_object_object_add(ch, "logprobs", NULL);
    json_object_object_add(ch, "finish_reason", NULL);
    json_object_array_add(choices, ch);
    json_object_object_add(o, "choices", choices);
    if (g->include_usage) json_object_object_add(o, "usage", NULL);
    srv_out_event(g, NULL, o);
}

static json_object *call_delta(int32_t index, const srv_call *k, bool head, const char *args, size_t n) {
    json_object *delta = json_object_new_object(), *calls = json_object_new_array(), *tc = json_object_new_object(),
                *fn = json_object_new_object();
    json_object_object_add(tc, "index", json_object_new_int(index));
    if (head) {
        json_object_object_add(tc, "id", json_object_new_string(k->id));
        json_object_object_add(tc, "type", json_object_new_string("function"));
        json_object_object_add(fn, "name", json_object_new_string(k->name));
        json_object_object_add(fn, "arguments", json_object_new_string(""));
    } else {
        json_object_object_add(fn, "arguments", srv_json_string_lossy(args, n));
    }
    json_object_object_add(tc, "function", fn);
    json_object_array_add(calls, tc);
    json_object_object_add(delta, "tool_calls", calls);
    return delta;
}

void srv_oai_stream_piece(srv_gen *g, int32_t c, int kind, const char *text, size_t len, const srv_call *call) {
    json_object *delta;
    switch (kind) {
    case SPUD_OUT_CONTENT:
        stream_chunk(g, c, text, len, false, NULL, NULL);
        break;
    case SPUD_OUT_REASONING:
        delta = json_object_new_object();
        json_object_object_add(delta, "reasoning_content", json_object_new_string_len(text, (int)len));
        chat_chunk(g, c, delta);
        break;
    case SPUD_OUT_CALL_BEGIN:
        chat_chunk(g, c, call_delta((int32_t)(call - g->ch[c].calls), call, true, NULL, 0));
        break;
    case SPUD_OUT_CALL_ARGS:
        chat_chunk(g, c, call_delta((int32_t)(call - g->ch[c].calls), call, false, text, len));
        break;
    case SPUD_OUT_CALL_END: /* unless streamed live: the complete call, its head then its arguments */
        if (!g->live_calls) {
            int32_t index = (int32_t)(call - g->ch[c].calls);
            chat_chunk(g, c, call_delta(index, call, true, NULL, 0));
            chat_chunk(g, c, call_delta(index, call, false, call->args.p ? call->args.p : "", call->args.n));
        }
        break;
    default:
        break;
    }
}

void srv_oai_stream_delta(srv_gen *g, int32_t c, const spud_engine_delta *d) {
    srv_choice *ch = &g->ch[c];
    bool chat = g->api == API_CHAT;
    if (!ch->role_sent && (d->n_gen > 0 || d->finish)) { /* with the first token, as OpenAI does */
        ch->role_sent = true;
        if (chat)
            stream_chunk(g, c, "", 0, true, NULL, NULL);
        else if (g->echo[c / g->per_req])
            stream_chunk(g, c, g->echo[c / g->per_req], strlen(g->echo[c / g->per_req]), false, NULL, NULL);
    }
    if (chat && g->parse) { /* content, reasoning and calls come from the parser; logprobs on their own */
        if (d->len || d->finish) srv_parse_feed(g, c, d->text, d->len, d->finish != SPUD_FINISH_NONE);
        if (g->logprobs && d->n_lp) {
            json_object *lp = json_object_new_array();
            srv_logprobs_append(g, lp, d->lp, d->n_lp, ch->len - d->len);
            stream_chunk(g, c, NULL, 0, false, lp, NULL);
        }
    } else if (d->len || d->n_lp) {
        json_object *lp = NULL;
        if (g->logprobs && d->n_lp) {
            lp = chat ? json_object_new_array() : json_object_new_object();
            srv_logprobs_append(g, lp, d->lp, d->n_lp, ch->len - d->len);
        }
        stream_chunk(g, c, d->text, d->len, false, lp, NULL);
    }
    if ((d->finish == SPUD_FINISH_STOP || d->finish == SPUD_FINISH_LENGTH) && !ch->end_sent) {
        ch->end_sent = true;
        const char *f = d->finish == SPUD_FINISH_STOP && ch->n_calls > 0 ? "tool_calls" : srv_finish_name(d->finish);
        stream_chunk(g, c, chat ? NULL : "", 0, false, NULL, f);
    }
}

void srv_oai_stream_end(srv_gen *g) {
    if (!g->include_usage) return;
    json_object *o = envelope(g, g->api == API_CHAT ? "chat.completion.chunk" : "text_completion");
    json_object_object_add(o, "choices", json_object_new_array());
    json_object_object_add(o, "usage", srv_usage_json(g, false));
    srv_out_event(g, NULL, o);
}

json_object *srv_oai_final(srv_gen *g) {
    bool chat = g->api == API_CHAT;
    json_object *o = envelope(g, chat ? "chat.completion" : "text_completion");
    json_object *choices = json_object_new_array();
    for (int32_t c = 0; c < g->n_choices; c++) {
        srv_choice *ch = &g->ch[c];
        json_object *x = json_object_new_object();
        json_object_object_add(x, "index", json_object_new_int(c));
        if (chat) {
            json_object *msg = json_object_new_object();
            json_object_object_add(msg, "role", json_object_new_string("assistant"));
            if (!g->parse)
                json_object_object_add(msg, "content", json_object_new_string_len(ch->text ? ch->text : "", (int)ch->len));
            else if (ch->content.n || ch->n_calls == 0)
                json_object_object_add(msg, "content", srv_json_string_lossy(ch->content.p ? ch->content.p : "", ch->content.n));
            else
                json_object_object_add(msg, "content", NULL); /* only calls */
            json_object_object_add(msg, "refusal", NULL);
            if (ch->reasoning.n)
                json_object_object_add(msg, "reasoning_content", srv_json_string_lossy(ch->reasoning.p, ch->reasoning.n));
            if (ch->n_calls)
                json_object_object_add(msg, "tool_calls", srv_choice_calls_json(ch));
            json_object_object_add(x, "message", msg);
            json_object *lp = NULL;
            if (g->logprobs) {
                lp = json_object_new_object();
                json_object_object_add(lp, "content", ch->lp ? json_object_get(ch->lp) : json_object_new_array());
                json_object_object_add(lp, "refusal", NULL);
            }
            json_object_object_add(x, "logprobs", lp);
        } else {
            tbuf b = {0};
            if (g->echo[c / g->per_req]) tb_str(&b, g->echo[c / g->per_req]);
            tb_add(&b, ch->text ? ch->text : "", ch->len);
            json_object_object_add(x, "text", json_object_new_string_len(b.p ? b.p : "", (int)b.n));
            spud_free(b.p);
            json_object_object_add(x, "logprobs", g->logprobs && ch->lp ? json_object_get(ch->lp) : NULL);
        }
        json_object_object_add(x, "finish_reason", json_object_new_string(chat ? srv_choice_finish(ch) : srv_finish_name(ch->finish)));
        json_object_array_add(choices, x);
    }
    json_object_object_add(o, "choices", choices);
    json_object_object_add(o, "usage", srv_usage_json(g, false));
    return o;
}

/* ---- requests ---- */

/* Fields common to chat and completions; fills p (except the prompt) and g's flags. */
static bool parse_common(spud_server *s, json_object *body, bool chat, srv_gen *g, spud_engine_req_params *p,
                         const char **stop, srv_error *e) {
    bool bad;
    if (!srv_opt_bool(body, "stream", &g->stream, e)) return false;
    json_object *so = srv_opt_typed(body, "stream_options", json_type_object, "an object", e, &bad);
    if (bad) return false;
    if (so && !srv_opt_bool(so, "include_usage", &g->include_usage, e)) {
        snprintf(e->param, sizeof e->param, "stream_options.include_usage");
        return false;
    }
    int64_t max_tokens = chat ? 0 : 16;
    if (!srv_opt_int(body, "max_tokens", 1, INT32_MAX, &max_tokens, e)) return false;
    if (chat && !srv_opt_int(body, "max_completion_tokens", 1, INT32_MAX, &max_tokens, e)) return false;
    p->max_tokens = (int32_t)max_tokens;
    if (!srv_parse_sampling(body, &p->sampling, e)) return false;
    if (!srv_parse_stop(body, "stop", stop, &p->n_stop, e)) return false;
    p->stop = stop;
    if (chat) {
        bool lp = false;
        int64_t top = 0;
        if (!srv_opt_bool(body, "logprobs", &lp, e) ||
            !srv_opt_int(body, "top_logprobs", 0, SPUD_ENGINE_MAX_TOP_LOGPROBS, &top, e))
            return false;
        if (top > 0 && !lp) return srv_fail(e, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        g->logprobs = lp;
        g->top_logprobs = (int32_t)top;
    } else {
        int64_t lp = -1;
        if (!srv_opt_int(body, "logprobs", 0, 5, &lp, e)) return false;
        g->logprobs = lp >= 0;
        g->top_logprobs = lp > 0 ? (int32_t)lp : 0;
    }
    p->logprobs = g->logprobs;
    p->top_logprobs = g->top_logprobs;
    p->n_choices = g->per_req; /* per prompt */
    (void)s;
    return true;
}

static bool parse_n(spud_server *s, json_object *body, int32_t *n, srv_error *e) {
    int64_t v = 1;
    if (!srv_opt_int(body, "n", 1, INT32_MAX, &v, e)) return false;
    if (v > s->n_parallel)
        return srv_fail(e, 400, "n", "'n' is %lld, but this server runs at most %d sequences at once (--parallel)",
                        (long long)v, (int)s->n_parallel);
    *n = (int32_t)v;
    return true;
}

/* Logit bias, the grammar (last: the engine owns it from submit on), submit. */
static bool finish_prepare(spud_server *s, json_object *body, srv_gen *g, spud_engine_req_params *p,
                           srv_constraint *con, srv_error *e) {
    spud_logit_bias *bias = NULL;
    size_t n_bias = 0;
    if (!srv_parse_logit_bias(body, spud_model_n_vocab(s->model), &bias, &n_bias, e)) return false;
    p->bias = bias;
    p->n_bias = n_bias;
    bool ok = !con || srv_constraint_compile(con, p, e);
    if (ok) {
        ok = srv_gen_submit(g, p, e);
        if (!ok && con && p->grammar && !e->param[0] && e->status == 400 && strstr(e->message, "grammar"))
            snprintf(e->param, sizeof e->param, "%s", con->param);
    }
    spud_free(bias);
    return ok;
}

static bool check_model_field(json_object *body, srv_error *e) {
    const char *model = NULL;
    return srv_opt_string(body, "model", &model, e);
}

bool srv_chat_prepare(spud_server *s, json_object *body, srv_gen **out, srv_error *e) {
    json_object *messages = NULL, *tools;
    bool bad;
    int32_t n;
    *out = NULL;
    if (!check_model_field(body, e)) return false;
    if (!json_object_object_get_ex(body, "messages", &messages) || !messages)
        return srv_fail(e, 400, "messages", "'messages' is required");
    if (!srv_check_messages(messages, "messages", e)) return false;
    tools = srv_opt_typed(body, "tools", json_type_array, "an array", e, &bad);
    if (bad || !parse_n(s, body, &n, e)) return false;
    bool parallel = true;
    if (!srv_opt_bool(body, "parallel_tool_calls", &parallel, e)) return false;
    srv_constraint con = {0};
    json_object *rf = NULL, *tc = NULL;
    json_object_object_get_ex(body, "response_format", &rf);
    json_object_object_get_ex(body, "tool_choice", &tc);
    if (!srv_parse_format(rf, "response_format", false, &con, e) || !srv_parse_grammar(body, &con, e) ||
        !srv_parse_tools(s, tools, tc, parallel, false, &con, e) ||
        !srv_parse_effort(body, "reasoning_effort", "reasoning_effort", &con, e)) {
        srv_constraint_free(&con);
        return false;
    }
    srv_gen *g = *out = srv_gen_new(s, API_CHAT, ROUTE_CHAT, n);
    if (!g) {
        srv_constraint_free(&con);
        return srv_fail(e, 500, "", "out of memory");
    }
    spud_engine_req_params p = {0};
    const char *stop[SPUD_ENGINE_MAX_STOP];
    char *text = NULL;
    size_t len = 0, n_ids = 0;
    int32_t *ids = NULL;
    bool ok = parse_common(s, body, true, g, &p, stop, e) &&
              srv_chat_tokens(s, messages, tools, "messages", &text, &len, &ids, &n_ids, e);
    if (ok) srv_gen_set_parse(g, &con, text, len);
    spud_free(text);
    if (ok) {
        p.prompt = ids;
        p.n_prompt = n_ids;
        ok = finish_prepare(s, body, g, &p, &con, e);
    }
    srv_constraint_free(&con);
    spud_free(ids);
    return ok;
}

static bool completion_prompt(spud_server *s, json_object *body, json_object *prompt, bool echo, srv_gen *g,
                              spud_engine_req_params *pp, srv_constraint *con, srv_error *e);

/* True for an array holding only token ids (one prompt). */
static bool is_id_array(json_object *a) {
    if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) == 0) return false;
    for (size_t i = 0; i < json_object_array_length(a); i++)
        if (!json_object_is_type(json_object_array_get_idx(a, i), json_type_int)) return false;
    return true;
}

/* How many prompts 'prompt' holds: a string or an array of token ids is one;
 * an array of strings and token-id arrays is one each. */
static bool count_prompts(json_object *prompt, int32_t *n, srv_error *e) {
    *n = 1;
    if (!json_object_is_type(prompt, json_type_array) || is_id_array(prompt)) return true;
    size_t k = json_object_array_length(prompt);
    if (k == 0) return srv_fail(e, 400, "prompt", "'prompt' is empty");
    if (k > SRV_MAX_PROMPTS)
        return srv_fail(e, 400, "prompt", "'prompt' holds %zu prompts; at most %d per request", k, SRV_MAX_PROMPTS);
    for (size_t i = 0; i < k; i++) {
        json_object *x = json_object_array_get_idx(prompt, i);
        if (!json_object_is_type(x, json_type_string) && !is_id_array(x))
            return srv_fail(e, 400, "prompt",
                            "'prompt[%zu]' must be a string or a non-empty array of token ids (a 'prompt' array "
                            "holds token ids, or prompts: strings and token-id arrays)",
                            i);
    }
    *n = (int32_t)k;
    return true;
}

bool srv_completion_prepare(spud_server *s, json_object *body, srv_gen **out, srv_error *e) {
    json_object *prompt = NULL;
    int32_t n;
    *out = NULL;
    if (!check_model_field(body, e)) return false;
    if (!json_object_object_get_ex(body, "prompt", &prompt) || !prompt)
        return srv_fail(e, 400, "prompt", "'prompt' is required");
    if (!parse_n(s, body, &n, e)) return false;
    int32_t n_prompts = 1;
    if (!count_prompts(prompt, &n_prompts, e)) return false;
    srv_constraint con = {0}; /* response_format and grammar apply to completions too (as in llama-server) */
    json_object *rf = NULL;
    json_object_object_get_ex(body, "response_format", &rf);
    if (!srv_parse_format(rf, "response_format", false, &con, e) || !srv_parse_grammar(body, &con, e)) {
        srv_constraint_free(&con);
        return false;
    }
    srv_gen *g = *out = srv_gen_new(s, API_COMPLETION, ROUTE_COMPLETIONS, n * n_prompts);
    if (g) g->per_req = n;
    spud_engine_req_params p = {0};
    const char *stop[SPUD_ENGINE_MAX_STOP];
    bool echo = false;
    bool ok = g != NULL;
    if (!ok) srv_fail(e, 500, "", "out of memory");
    ok = ok && parse_common(s, body, false, g, &p, stop, e) && srv_opt_bool(body, "echo", &echo, e);
    ok = ok && completion_prompt(s, body, prompt, echo, g, &p, &con, e);
    srv_constraint_free(&con);
    return ok;
}

static bool completion_ids(spud_server *s, json_object *prompt, const char *param, bool echo, int32_t **ids_out,
                           size_t *n_out, char **echo_out, srv_error *e);

/* The prompts of a completion (count_prompts has checked their shapes), all
 * tokenized first (a bad one is a 400 before any runs); then each is its own
 * engine request with the request's n choices, submitted in order. */
static bool completion_prompt(spud_server *s, json_object *body, json_object *prompt, bool echo, srv_gen *g,
                              spud_engine_req_params *pp, srv_constraint *con, srv_error *e) {
    bool single = !json_object_is_type(prompt, json_type_array) || is_id_array(prompt);
    int32_t k = g->n_choices / g->per_req;
    int32_t *ids[SRV_MAX_PROMPTS] = {0};
    size_t n_ids[SRV_MAX_PROMPTS] = {0};
    bool ok = true;
    for (int32_t i = 0; i < k && ok; i++) {
        char param[32];
        snprintf(param, sizeof param, single || k == 1 ? "prompt" : "prompt[%d]", (int)i);
        ok = completion_ids(s, single ? prompt : json_object_array_get_idx(prompt, (size_t)i), param, echo, &ids[i],
                            &n_ids[i], &g->echo[i], e);
    }
    for (int32_t i = 0; i < k && ok; i++) {
        spud_engine_req_params p = *pp;
        p.prompt = ids[i];
        p.n_prompt = n_ids[i];
        ok = finish_prepare(s, body, g, &p, con, e);
    }
    for (int32_t i = 0; i < k; i++) spud_free(ids[i]);
    return ok;
}

/* One prompt (a string or token ids) -> its token ids and, with echo, its text. */
static bool completion_ids(spud_server *s, json_object *prompt, const char *param, bool echo, int32_t **ids_out,
                           size_t *n_out, char **echo_out, srv_error *e) {
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (json_object_is_type(prompt, json_type_string)) {
        if (!srv_tokenize_prompt(s, json_object_get_string(prompt), (size_t)json_object_get_string_len(prompt),
                                 true, param, &ids, &n_ids, e))
            return false;
        if (echo) *echo_out = spud_strndup(json_object_get_string(prompt), (size_t)json_object_get_string_len(prompt));
    } else if (json_object_is_type(prompt, json_type_array)) {
        n_ids = json_object_array_length(prompt);
        if (n_ids > s->n_ctx) {
            srv_fail(e, 400, param,
                     "this model's context is %u tokens per sequence, but the prompt is %zu tokens", s->n_ctx,
                     n_ids);
            e->code = "context_length_exceeded";
            return false;
        }
        ids = spud_malloc(n_ids * sizeof *ids);
        if (!ids) return srv_fail(e, 500, "", "out of memory");
        tbuf b = {0};
        for (size_t i = 0; i < n_ids; i++) {
            int64_t v = json_object_get_int64(json_object_array_get_idx(prompt, i));
            if (v < 0 || v >= spud_model_n_vocab(s->model)) {
                spud_free(ids);
                spud_free(b.p);
                return srv_fail(e, 400, param, "token id %lld in '%s' is out of range (vocabulary: %d)",
                                (long long)v, param, (int)spud_model_n_vocab(s->model));
            }
            ids[i] = (int32_t)v;
            if (echo) {
                char buf[256];
                size_t l = spud_token_to_piece(s->model, ids[i], false, buf, sizeof buf);
                tb_add(&b, buf, l < sizeof buf ? l : sizeof buf);
            }
        }
        if (echo) {
            json_object *clean = srv_json_string_lossy(b.p ? b.p : "", b.n);
            *echo_out = spud_strndup(json_object_get_string(clean), (size_t)json_object_get_string_len(clean));
            json_object_put(clean);
        }
        spud_free(b.p);
    } else {
        return srv_fail(e, 400, "prompt", "'prompt' must be a string or an array of token ids");
    }
    *ids_out = ids;
    *n_out = n_ids;
    return true;
}

bool srv_apply_template(spud_server *s, json_object *body, json_object **out, srv_error *e) {
    json_object *messages = NULL, *tools;
    bool bad, add_gen = true;
    if (!json_object_object_get_ex(body, "messages", &messages) || !messages)
        return srv_fail(e, 400, "messages", "'messages' is required");
    if (!srv_check_messages(messages, "messages", e)) return false;
    tools = srv_opt_typed(body, "tools", json_type_array, "an array", e, &bad);
    if (bad || !srv_opt_bool(body, "add_generation_prompt", &add_gen, e)) return false;
    char *text;
    size_t len;
    if (!srv_render_chat(s, messages, tools, add_gen, &text, &len, e)) return false;
    *out = json_object_new_object();
    json_object_object_add(*out, "prompt", json_object_new_string_len(text, (int)len));
    spud_free(text);
    return true;
}

bool srv_tokenize_route(spud_server *s, json_object *body, json_object **out, srv_error *e) {
    const char *content = NULL;
    bool add_special = false, parse_special = true;
    if (!srv_opt_string(body, "content", &content, e) || !srv_opt_bool(body, "add_special", &add_special, e) ||
        !srv_opt_bool(body, "parse_special", &parse_special, e))
        return false;
    if (!content) return srv_fail(e, 400, "content", "'content' is required");
    json_object *c = NULL;
    json_object_object_get_ex(body, "content", &c);
    int32_t *ids;
    size_t n;
    if (spud_tokenize(s->model, content, (size_t)json_object_get_string_len(c), add_special, parse_special, &ids, &n))
        return srv_fail(e, 400, "content", "cannot tokenize 'content': %s", spud_last_error());
    json_object *arr = json_object_new_array_ext((int)n);
    for (size_t i = 0; i < n; i++) json_object_array_add(arr, json_object_new_int(ids[i]));
    spud_free(ids);
    *out = json_object_new_object();
    json_object_object_add(*out, "tokens", arr);
    return true;
}

bool srv_detokenize_route(spud_server *s, json_object *body, json_object **out, srv_error *e) {
    bool bad;
    json_object *toks = srv_opt_typed(body, "tokens", json_type_array, "an array of token ids", e, &bad);
    if (bad) return false;
    if (!toks) return srv_fail(e, 400, "tokens", "'tokens' is required");
    tbuf b = {0};
    for (size_t i = 0; i < json_object_array_length(toks); i++) {
        json_object *t = json_object_array_get_idx(toks, i);
        int64_t id = json_object_is_type(t, json_type_int) ? json_object_get_int64(t) : -1;
        if (id < 0 || id >= spud_model_n_vocab(s->model)) {
            spud_free(b.p);
            return srv_fail(e, 400, "tokens", "'tokens[%zu]' is not a token id of this model", i);
        }
        char buf[256];
        size_t l = spud_token_to_piece(s->model, (int32_t)id, false, buf, sizeof buf);
        tb_add(&b, buf, l < sizeof buf ? l : sizeof buf);
    }
    if (b.oom) {
        spud_free(b.p);
        return srv_fail(e, 500, "", "out of memory");
    }
    *out = json_object_new_object();
    json_object_object_add(*out, "content", srv_json_string_lossy(b.p ? b.p : "", b.n));
    spud_free(b.p);
    return true;
}
