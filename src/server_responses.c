/* server_responses.c: POST /v1/responses (and GET /v1/responses/ID).
 *
 * The input (a string, or message / function_call / function_call_output
 * items) becomes chat messages, after the stored conversation of
 * previous_response_id and behind `instructions` (which, as OpenAI does, are
 * not carried over to later turns). With store (the default) the finished
 * conversation is kept in memory, least recently used first out, under a
 * byte bound. Streams send the typed Responses events. */
#include <stdio.h>
#include <string.h>

#include "server_int.h"

#define STORE_MAX_ENTRIES 65536

struct srv_store_entry {
    char id[48];
    json_object *messages; /* the conversation so far, as chat messages */
    json_object *response; /* the response object, for GET */
    size_t bytes;
    srv_store_entry *prev, *next;
};

void srv_store_init(srv_store *st, size_t max_bytes) {
    memset(st, 0, sizeof *st);
    pthread_mutex_init(&st->mu, NULL);
    st->max_bytes = max_bytes;
}

static void entry_free(srv_store_entry *e) {
    json_object_put(e->messages);
    json_object_put(e->response);
    spud_free(e);
}

static void store_unlink(srv_store *st, srv_store_entry *e) {
    if (e->prev) e->prev->next = e->next;
    else st->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else st->tail = e->prev;
    e->prev = e->next = NULL;
    st->bytes -= e->bytes;
    st->n--;
}

static void store_push(srv_store *st, srv_store_entry *e) {
    e->prev = st->tail;
    e->next = NULL;
    if (st->tail) st->tail->next = e;
    else st->head = e;
    st->tail = e;
    st->bytes += e->bytes;
    st->n++;
}

void srv_store_free(srv_store *st) {
    srv_store_entry *e = st->head;
    while (e) {
        srv_store_entry *next = e->next;
        entry_free(e);
        e = next;
    }
    st->head = st->tail = NULL;
    pthread_mutex_destroy(&st->mu);
}

/* Find id (and mark it recently used); call with st->mu held. */
static srv_store_entry *store_find(srv_store *st, const char *id) {
    for (srv_store_entry *e = st->tail; e; e = e->prev)
        if (!strcmp(e->id, id)) {
            store_unlink(st, e);
            store_push(st, e);
            return e;
        }
    return NULL;
}

static json_object *deep_copy(json_object *o) {
    json_object *c = NULL;
    if (json_object_deep_copy(o, &c, NULL) != 0) return NULL;
    return c;
}

json_object *srv_responses_get(spud_server *s, const char *id) {
    pthread_mutex_lock(&s->store.mu);
    srv_store_entry *e = store_find(&s->store, id);
    json_object *o = e ? deep_copy(e->response) : NULL;
    pthread_mutex_unlock(&s->store.mu);
    return o;
}

bool srv_responses_delete(spud_server *s, const char *id) {
    pthread_mutex_lock(&s->store.mu);
    srv_store_entry *e = store_find(&s->store, id);
    if (e) store_unlink(&s->store, e);
    pthread_mutex_unlock(&s->store.mu);
    if (e) entry_free(e);
    return e != NULL;
}

/* ---- input items -> chat messages ---- */

static bool item_text(json_object *content, const char *param, json_object **out, srv_error *e) {
    if (json_object_is_type(content, json_type_string)) {
        *out = json_object_get(content);
        return true;
    }
    if (!json_object_is_type(content, json_type_array))
        return srv_fail(e, 400, param, "'%s' must be a string or an array of content parts", param);
    size_t total = 0, n = json_object_array_length(content);
    for (int pass = 0; pass < 2; pass++) {
        char *buf = pass ? spud_malloc(total + 1) : NULL;
        size_t k = 0;
        if (pass && !buf) return srv_fail(e, 500, "", "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_object *part = json_object_array_get_idx(content, i), *type = NULL, *text = NULL;
            char p[160];
            snprintf(p, sizeof p, "%s[%zu]", param, i);
            if (!json_object_is_type(part, json_type_object) || !json_object_object_get_ex(part, "type", &type) ||
                !json_object_is_type(type, json_type_string)) {
                spud_free(buf);
                return srv_fail(e, 400, p, "'%s' must be an object with a 'type'", p);
            }
            const char *ty = json_object_get_string(type);
            const char *key = !strcmp(ty, "refusal") ? "refusal" : "text";
            if (strcmp(ty, "input_text") && strcmp(ty, "output_text") && strcmp(ty, "text") && strcmp(ty, "refusal")) {
                spud_free(buf);
                return srv_fail(e, 400, p, "'%s': content of type '%s' is not supported by this model", p, ty);
            }
            if (!json_object_object_get_ex(part, key, &text) || !json_object_is_type(text, json_type_string)) {
                spud_free(buf);
                return srv_fail(e, 400, p, "'%s.%s' must be a string", p, key);
            }
            size_t l = (size_t)json_object_get_string_len(text);
            if (pass) memcpy(buf + k, json_object_get_string(text), l);
            k += l;
        }
        if (!pass) {
            total = k;
        } else {
            *out = json_object_new_string_len(buf, (int)k);
            spud_free(buf);
        }
    }
    return true;
}

static json_object *str_field(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) return NULL;
    return v;
}

/* Append the chat messages that `input` stands for to msgs. */
static bool input_messages(json_object *input, json_object *msgs, srv_error *e) {
    if (json_object_is_type(input, json_type_string)) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("user"));
        json_object_object_add(m, "content", json_object_get(input));
        json_object_array_add(msgs, m);
        return true;
    }
    if (!json_object_is_type(input, json_type_array))
        return srv_fail(e, 400, "input", "'input' must be a string or an array of input items");
    for (size_t i = 0; i < json_object_array_length(input); i++) {
        json_object *it = json_object_array_get_idx(input, i), *type, *role;
        char p[64];
        snprintf(p, sizeof p, "input[%zu]", i);
        if (!json_object_is_type(it, json_type_object)) return srv_fail(e, 400, p, "'%s' must be an object", p);
        type = str_field(it, "type");
        role = str_field(it, "role");
        const char *ty = type ? json_object_get_string(type) : role ? "message" : "";
        if (!strcmp(ty, "message")) {
            json_object *content = NULL, *text = NULL;
            char pc[80];
            snprintf(pc, sizeof pc, "%s.content", p);
            if (!role) return srv_fail(e, 400, p, "'%s.role' must be a string", p);
            if (!json_object_object_get_ex(it, "content", &content) || !content)
                return srv_fail(e, 400, pc, "'%s' is required", pc);
            if (!item_text(content, pc, &text, e)) return false;
            json_object *m = json_object_new_object();
            json_object_object_add(m, "role", json_object_get(role));
            json_object_object_add(m, "content", text);
            json_object_array_add(msgs, m);
        } else if (!strcmp(ty, "function_call")) {
            json_object *name = str_field(it, "name"), *args = str_field(it, "arguments"),
                        *call_id = str_field(it, "call_id");
            if (!name || !args || !call_id)
                return srv_fail(e, 400, p, "'%s' (a function_call) needs string 'call_id', 'name' and 'arguments'", p);
            json_object *m = json_object_new_object(), *calls = json_object_new_array(), *c = json_object_new_object(),
                        *fn = json_object_new_object();
            json_object_object_add(fn, "name", json_object_get(name));
            json_object_object_add(fn, "arguments", json_object_get(args));
            json_object_object_add(c, "id", json_object_get(call_id));
            json_object_object_add(c, "type", json_object_new_string("function"));
            json_object_object_add(c, "function", fn);
            json_object_array_add(calls, c);
            json_object_object_add(m, "role", json_object_new_string("assistant"));
            json_object_object_add(m, "content", NULL);
            json_object_object_add(m, "tool_calls", calls);
            json_object_array_add(msgs, m);
        } else if (!strcmp(ty, "function_call_output")) {
            json_object *call_id = str_field(it, "call_id"), *output = str_field(it, "output");
            if (!call_id || !output)
                return srv_fail(e, 400, p, "'%s' (a function_call_output) needs string 'call_id' and 'output'", p);
            json_object *m = json_object_new_object();
            json_object_object_add(m, "role", json_object_new_string("tool"));
            json_object_object_add(m, "tool_call_id", json_object_get(call_id));
            json_object_object_add(m, "content", json_object_get(output));
            json_object_array_add(msgs, m);
        } else if (strcmp(ty, "reasoning")) {
            char pt[80];
            snprintf(pt, sizeof pt, "%s.type", p);
            return srv_fail(e, 400, pt, "'%s': input items of type '%s' are not supported", pt, ty);
        }
    }
    return true;
}

/* Responses-style function tools ({"type": "function", "name", "description",
 * "parameters"}) in the chat shape templates expect ({"type": "function",
 * "function": {...}}); other tools are passed as they are. */
static json_object *chat_tools(json_object *tools) {
    json_object *out = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(tools); i++) {
        json_object *t = json_object_array_get_idx(tools, i), *type = str_field(t, "type"), *fn = NULL;
        if (type && !strcmp(json_object_get_string(type), "function") && !json_object_object_get_ex(t, "function", NULL)) {
            fn = json_object_new_object();
            json_object_object_foreach(t, k, v) {
                if (strcmp(k, "type")) json_object_object_add(fn, k, json_object_get(v));
            }
            json_object *w = json_object_new_object();
            json_object_object_add(w, "type", json_object_new_string("function"));
            json_object_object_add(w, "function", fn);
            json_object_array_add(out, w);
        } else {
            json_object_array_add(out, json_object_get(t));
        }
    }
    return out;
}

/* ---- response objects ---- */

/* The text of the message item: the parsed content, or all the output. */
static const char *msg_text(srv_gen *g, size_t *len) {
    srv_choice *ch = &g->ch[0];
    if (g->parse) {
        *len = ch->content.n;
        return ch->content.p ? ch->content.p : "";
    }
    *len = ch->len;
    return ch->text ? ch->text : "";
}

static json_object *part_json(srv_gen *g, bool with_text) {
    size_t n = 0;
    const char *t = with_text ? msg_text(g, &n) : "";
    json_object *part = json_object_new_object();
    json_object_object_add(part, "type", json_object_new_string("output_text"));
    json_object_object_add(part, "text", json_object_new_string_len(t, (int)n));
    json_object_object_add(part, "annotations", json_object_new_array());
    json_object_object_add(part, "logprobs", json_object_new_array());
    return part;
}

static json_object *output_item(srv_gen *g, const char *status, bool with_content) {
    json_object *item = json_object_new_object(), *content = json_object_new_array();
    json_object_object_add(item, "id", json_object_new_string(g->item_id));
    json_object_object_add(item, "type", json_object_new_string("message"));
    json_object_object_add(item, "status", json_object_new_string(status));
    json_object_object_add(item, "role", json_object_new_string("assistant"));
    if (with_content) json_object_array_add(content, part_json(g, true));
    json_object_object_add(item, "content", content);
    return item;
}

/* The reasoning output item: the text inside the template's think block. */
static json_object *reasoning_item(srv_gen *g, const char *status, bool with_text) {
    srv_choice *ch = &g->ch[0];
    json_object *item = json_object_new_object(), *content = json_object_new_array();
    json_object_object_add(item, "id", json_object_new_string(ch->rs_id));
    json_object_object_add(item, "type", json_object_new_string("reasoning"));
    json_object_object_add(item, "status", json_object_new_string(status));
    json_object_object_add(item, "summary", json_object_new_array());
    if (with_text) {
        json_object *part = json_object_new_object();
        json_object_object_add(part, "type", json_object_new_string("reasoning_text"));
        json_object_object_add(part, "text", srv_json_string_lossy(ch->reasoning.p ? ch->reasoning.p : "", ch->reasoning.n));
        json_object_array_add(content, part);
    }
    json_object_object_add(item, "content", content);
    return item;
}

/* The id of a call's output item: the call id with fc_ for call_. */
static void call_item_id(const srv_call *k, char *id, size_t cap) {
    snprintf(id, cap, "fc_%s", strncmp(k->id, "call_", 5) ? k->id : k->id + 5);
}

/* A function_call output item. */
static json_object *call_item(const srv_call *k, const char *status, bool with_args) {
    char id[48];
    call_item_id(k, id, sizeof id);
    json_object *item = json_object_new_object();
    json_object_object_add(item, "id", json_object_new_string(id));
    json_object_object_add(item, "type", json_object_new_string("function_call"));
    json_object_object_add(item, "status", json_object_new_string(status));
    json_object_object_add(item, "arguments",
                           with_args ? srv_json_string_lossy(k->args.p ? k->args.p : "", k->args.n) : json_object_new_string(""));
    json_object_object_add(item, "call_id", json_object_new_string(k->id));
    json_object_object_add(item, "name", json_object_new_string(k->name));
    return item;
}

/* The output items in order: the message (when it has text, or nothing else
 * was produced) and the function calls. */
static json_object *output_items(srv_gen *g, const char *status) {
    srv_choice *ch = &g->ch[0];
    json_object *out = json_object_new_array();
    if (!g->parse) {
        json_object_array_add(out, output_item(g, status, true));
        return out;
    }
    for (int32_t idx = 0; idx < g->n_items; idx++) {
        if (ch->rs_opened && ch->rs_index == idx) json_object_array_add(out, reasoning_item(g, status, true));
        if (ch->msg_opened && ch->item_index == idx) json_object_array_add(out, output_item(g, status, true));
        for (int32_t k = 0; k < ch->n_calls; k++)
            if (ch->calls[k].item_index == idx) json_object_array_add(out, call_item(&ch->calls[k], "completed", true));
    }
    if (!ch->msg_opened && ch->n_calls == 0) json_object_array_add(out, output_item(g, status, true));
    return out;
}

/* The response object at this point: in progress, or final. */
static json_object *response_now(srv_gen *g, bool final) {
    json_object *r = deep_copy(g->resp);
    if (!r) r = json_object_new_object();
    if (!final) return r;
    spud_finish f = g->ch[0].finish;
    bool incomplete = f == SPUD_FINISH_LENGTH, failed = f == SPUD_FINISH_ERROR || f == SPUD_FINISH_CANCELLED;
    json_object_object_add(r, "status",
                           json_object_new_string(failed ? "failed" : incomplete ? "incomplete" : "completed"));
    if (incomplete) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "reason", json_object_new_string("max_output_tokens"));
        json_object_object_add(r, "incomplete_details", d);
    }
    if (failed) {
        json_object *err = json_object_new_object();
        json_object_object_add(err, "code", json_object_new_string("server_error"));
        json_object_object_add(err, "message",
                               json_object_new_string(f == SPUD_FINISH_ERROR ? srv_gen_error(g)
                                                                             : "the server is shutting down"));
        json_object_object_add(r, "error", err);
    }
    json_object_object_add(r, "output", output_items(g, incomplete ? "incomplete" : "completed"));
    json_object_object_add(r, "usage", srv_usage_json(g, true));
    return r;
}

json_object *srv_responses_final(srv_gen *g) { return response_now(g, true); }

static void event(srv_gen *g, const char *type, json_object *o) {
    json_object_object_add(o, "type", json_object_new_string(type));
    json_object_object_add(o, "sequence_number", json_object_new_int64(g->seq_no++));
    srv_out_event(g, type, o);
}

static int32_t msg_index(srv_gen *g) { return g->parse ? g->ch[0].item_index : 0; }

static json_object *at_item(srv_gen *g, bool content_index) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "item_id", json_object_new_string(g->item_id));
    json_object_object_add(o, "output_index", json_object_new_int(msg_index(g)));
    if (content_index) json_object_object_add(o, "content_index", json_object_new_int(0));
    return o;
}

/* output_item.added and content_part.added of the message item. */
static void msg_open_events(srv_gen *g) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "output_index", json_object_new_int(msg_index(g)));
    json_object_object_add(o, "item", output_item(g, "in_progress", false));
    event(g, "response.output_item.added", o);
    o = at_item(g, true);
    json_object_object_add(o, "part", part_json(g, false));
    event(g, "response.content_part.added", o);
}

static void msg_close_events(srv_gen *g, const char *status) {
    size_t n;
    const char *t = msg_text(g, &n);
    json_object *o = at_item(g, true);
    json_object_object_add(o, "text", json_object_new_string_len(t, (int)n));
    json_object_object_add(o, "logprobs", json_object_new_array());
    event(g, "response.output_text.done", o);
    o = at_item(g, true);
    json_object_object_add(o, "part", part_json(g, true));
    event(g, "response.content_part.done", o);
    o = json_object_new_object();
    json_object_object_add(o, "output_index", json_object_new_int(msg_index(g)));
    json_object_object_add(o, "item", output_item(g, status, true));
    event(g, "response.output_item.done", o);
}

void srv_responses_stream_start(srv_gen *g) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "response", response_now(g, false));
    event(g, "response.created", o);
    o = json_object_new_object();
    json_object_object_add(o, "response", response_now(g, false));
    event(g, "response.in_progress", o);
    if (!g->parse) msg_open_events(g); /* with a parser, items open as their first piece arrives */
}

static void text_delta(srv_gen *g, const char *text, size_t len) {
    json_object *o = at_item(g, true);
    json_object_object_add(o, "delta", json_object_new_string_len(text, (int)len));
    json_object_object_add(o, "logprobs", json_object_new_array());
    event(g, "response.output_text.delta", o);
}

void srv_responses_stream_delta(srv_gen *g, const spud_engine_delta *d) {
    if (g->parse) {
        srv_parse_feed(g, 0, d->text, d->len, d->finish != SPUD_FINISH_NONE);
        return;
    }
    if (d->len) text_delta(g, d->text, d->len);
}

static void call_added(srv_gen *g, const srv_call *k) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "output_index", json_object_new_int(k->item_index));
    json_object_object_add(o, "item", call_item(k, "in_progress", false));
    event(g, "response.output_item.added", o);
}

static void call_args_delta(srv_gen *g, const srv_call *k, const char *text, size_t len) {
    char item_id[48];
    call_item_id(k, item_id, sizeof item_id);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "item_id", json_object_new_string(item_id));
    json_object_object_add(o, "output_index", json_object_new_int(k->item_index));
    json_object_object_add(o, "delta", srv_json_string_lossy(text, len));
    event(g, "response.function_call_arguments.delta", o);
}

static json_object *rs_at(srv_gen *g) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "item_id", json_object_new_string(g->ch[0].rs_id));
    json_object_object_add(o, "output_index", json_object_new_int(g->ch[0].rs_index));
    json_object_object_add(o, "content_index", json_object_new_int(0));
    return o;
}

/* End the reasoning item of a stream (once). */
static void reasoning_close(srv_gen *g, const char *status) {
    srv_choice *ch = &g->ch[0];
    if (!g->stream || !ch->rs_opened || ch->rs_closed) return;
    ch->rs_closed = true;
    json_object *o = rs_at(g);
    json_object_object_add(o, "text", srv_json_string_lossy(ch->reasoning.p ? ch->reasoning.p : "", ch->reasoning.n));
    event(g, "response.reasoning_text.done", o);
    o = json_object_new_object();
    json_object_object_add(o, "output_index", json_object_new_int(ch->rs_index));
    json_object_object_add(o, "item", reasoning_item(g, status, true));
    event(g, "response.output_item.done", o);
}

void srv_responses_stream_piece(srv_gen *g, int kind, const char *text, size_t len, const srv_call *call) {
    srv_choice *ch = &g->ch[0];
    if (kind == SPUD_OUT_REASONING) {
        if (!ch->rs_opened) {
            ch->rs_opened = true;
            ch->rs_index = g->n_items++;
            srv_random_id(ch->rs_id, sizeof ch->rs_id, "rs_");
            if (g->stream) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "output_index", json_object_new_int(ch->rs_index));
                json_object_object_add(o, "item", reasoning_item(g, "in_progress", false));
                event(g, "response.output_item.added", o);
            }
        }
        if (g->stream && !ch->rs_closed) {
            json_object *o = rs_at(g);
            json_object_object_add(o, "delta", srv_json_string_lossy(text, len));
            event(g, "response.reasoning_text.delta", o);
        }
        return;
    }
    reasoning_close(g, "completed"); /* the answer has begun */
    if (kind == SPUD_OUT_CONTENT) {
        if (!ch->msg_opened) {
            ch->msg_opened = true;
            ch->item_index = g->n_items++;
            if (g->stream) msg_open_events(g);
        }
        if (g->stream) text_delta(g, text, len);
    } else if (kind == SPUD_OUT_CALL_BEGIN) { /* live calls only */
        ((srv_call *)call)->item_index = g->n_items++;
        if (g->stream) call_added(g, call);
    } else if (kind == SPUD_OUT_CALL_ARGS) {
        if (g->stream) call_args_delta(g, call, text, len);
    } else if (kind == SPUD_OUT_CALL_END) {
        if (!g->live_calls) {
            ((srv_call *)call)->item_index = g->n_items++;
            if (g->stream) {
                call_added(g, call);
                call_args_delta(g, call, call->args.p ? call->args.p : "", call->args.n);
            }
        }
        if (!g->stream) return;
        char item_id[48];
        call_item_id(call, item_id, sizeof item_id);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "item_id", json_object_new_string(item_id));
        json_object_object_add(o, "output_index", json_object_new_int(call->item_index));
        json_object_object_add(o, "arguments", srv_json_string_lossy(call->args.p ? call->args.p : "", call->args.n));
        event(g, "response.function_call_arguments.done", o);
        o = json_object_new_object();
        json_object_object_add(o, "output_index", json_object_new_int(call->item_index));
        json_object_object_add(o, "item", call_item(call, "completed", true));
        event(g, "response.output_item.done", o);
    }
}

void srv_responses_stream_end(srv_gen *g) {
    srv_choice *ch = &g->ch[0];
    spud_finish f = ch->finish;
    if (f == SPUD_FINISH_STOP || f == SPUD_FINISH_LENGTH) {
        const char *status = f == SPUD_FINISH_LENGTH ? "incomplete" : "completed";
        if (!g->parse) {
            msg_close_events(g, status);
        } else {
            reasoning_close(g, status);
            if (!ch->msg_opened && ch->n_calls == 0) { /* nothing but reasoning (or nothing): an empty message */
                ch->msg_opened = true;
                ch->item_index = g->n_items++;
                msg_open_events(g);
            }
            if (ch->msg_opened && !ch->msg_closed) {
                ch->msg_closed = true;
                msg_close_events(g, status);
            }
        }
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "response", response_now(g, true));
    event(g, f == SPUD_FINISH_STOP ? "response.completed"
             : f == SPUD_FINISH_LENGTH ? "response.incomplete"
                                       : "response.failed",
          o);
}

void srv_responses_store(srv_gen *g) {
    srv_choice *ch = &g->ch[0];
    spud_finish f = ch->finish;
    if (!g->store || !g->conv || (f != SPUD_FINISH_STOP && f != SPUD_FINISH_LENGTH)) return;
    srv_store *st = &g->s->store;
    srv_store_entry *e = spud_calloc(1, sizeof *e);
    if (!e) return;
    snprintf(e->id, sizeof e->id, "%s", g->id);
    size_t n;
    const char *t = msg_text(g, &n);
    json_object *msg = json_object_new_object();
    json_object_object_add(msg, "role", json_object_new_string("assistant"));
    json_object_object_add(msg, "content", srv_json_string_lossy(t, n));
    if (ch->n_calls) /* as a chat message with tool_calls, so that function_call_output items follow it */
        json_object_object_add(msg, "tool_calls", srv_choice_calls_json(ch));
    e->messages = json_object_get(g->conv);
    json_object_array_add(e->messages, msg);
    e->response = response_now(g, true);
    size_t a, b;
    srv_json_text(e->messages, &a);
    srv_json_text(e->response, &b);
    e->bytes = a + b + sizeof *e;
    pthread_mutex_lock(&st->mu);
    if (e->bytes > st->max_bytes) {
        pthread_mutex_unlock(&st->mu);
        entry_free(e);
        return;
    }
    while (st->head && (st->bytes + e->bytes > st->max_bytes || st->n >= STORE_MAX_ENTRIES)) {
        srv_store_entry *old = st->head;
        store_unlink(st, old);
        entry_free(old);
    }
    store_push(st, e);
    pthread_mutex_unlock(&st->mu);
}

/* ---- request ---- */

bool srv_responses_prepare(spud_server *s, json_object *body, srv_gen **out, srv_error *e) {
    json_object *input = NULL, *tools, *prev_conv = NULL;
    const char *instructions = NULL, *prev = NULL, *model = NULL;
    bool bad, store = true, stream = false;
    int64_t max_out = 0;
    *out = NULL;
    if (!srv_opt_string(body, "model", &model, e) || !srv_opt_string(body, "instructions", &instructions, e) ||
        !srv_opt_string(body, "previous_response_id", &prev, e) || !srv_opt_bool(body, "store", &store, e) ||
        !srv_opt_bool(body, "stream", &stream, e) ||
        !srv_opt_int(body, "max_output_tokens", 1, INT32_MAX, &max_out, e))
        return false;
    if (!json_object_object_get_ex(body, "input", &input) || !input)
        return srv_fail(e, 400, "input", "'input' is required");
    tools = srv_opt_typed(body, "tools", json_type_array, "an array", e, &bad);
    if (bad) return false;
    json_object *meta = srv_opt_typed(body, "metadata", json_type_object, "an object", e, &bad);
    if (bad) return false;
    json_object *ropt = srv_opt_typed(body, "reasoning", json_type_object, "an object", e, &bad);
    if (bad) return false;
    bool parallel = true;
    if (!srv_opt_bool(body, "parallel_tool_calls", &parallel, e)) return false;
    json_object *text_opt = srv_opt_typed(body, "text", json_type_object, "an object", e, &bad), *fmt = NULL,
                *tool_choice = NULL;
    if (bad) return false;
    if (text_opt) json_object_object_get_ex(text_opt, "format", &fmt);
    json_object_object_get_ex(body, "tool_choice", &tool_choice);

    if (prev) {
        pthread_mutex_lock(&s->store.mu);
        srv_store_entry *pe = store_find(&s->store, prev);
        if (pe) prev_conv = deep_copy(pe->messages);
        pthread_mutex_unlock(&s->store.mu);
        if (!prev_conv) {
            srv_fail(e, 404, "previous_response_id", "no stored response with id '%s' (it may have expired)", prev);
            e->type = "invalid_request_error";
            e->status = 400;
            return false;
        }
    }
    srv_gen *g = *out = srv_gen_new(s, API_RESPONSES, ROUTE_RESPONSES, 1);
    if (!g) {
        if (prev_conv) json_object_put(prev_conv);
        return srv_fail(e, 500, "", "out of memory");
    }
    srv_constraint con = {0};
    json_object *ctools = tools ? chat_tools(tools) : NULL;
    if (!srv_parse_format(fmt, "text.format", true, &con, e) || !srv_parse_grammar(body, &con, e) ||
        !srv_parse_tools(s, ctools, tool_choice, parallel, true, &con, e) ||
        !srv_parse_effort(ropt, "effort", "reasoning.effort", &con, e)) {
        srv_constraint_free(&con);
        if (ctools) json_object_put(ctools);
        if (prev_conv) json_object_put(prev_conv);
        return false;
    }
    g->stream = stream;
    g->store = store;
    g->conv = prev_conv ? prev_conv : json_object_new_array();
    if (!input_messages(input, g->conv, e)) {
        srv_constraint_free(&con);
        if (ctools) json_object_put(ctools);
        return false;
    }
    json_object *msgs = json_object_new_array();
    if (instructions) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("system"));
        json_object_object_add(m, "content", json_object_new_string(instructions));
        json_object_array_add(msgs, m);
    }
    for (size_t i = 0; i < json_object_array_length(g->conv); i++)
        json_object_array_add(msgs, json_object_get(json_object_array_get_idx(g->conv, i)));
    char *text = NULL;
    size_t len = 0, n_ids = 0;
    int32_t *ids = NULL;
    bool ok = srv_check_messages(msgs, "input", e) &&
              srv_chat_tokens(s, msgs, ctools, "input", &text, &len, &ids, &n_ids, e);
    if (ok) srv_gen_set_parse(g, &con, text, len);
    spud_free(text);
    json_object_put(msgs);
    if (ctools) json_object_put(ctools);
    spud_engine_req_params p = {.prompt = ids, .n_prompt = n_ids, .n_choices = 1, .max_tokens = (int32_t)max_out};
    if (!ok || !srv_parse_sampling(body, &p.sampling, e)) {
        srv_constraint_free(&con);
        spud_free(ids);
        return false;
    }
    /* the response object as the request shaped it */
    json_object *r = g->resp = json_object_new_object();
    json_object_object_add(r, "id", json_object_new_string(g->id));
    json_object_object_add(r, "object", json_object_new_string("response"));
    json_object_object_add(r, "created_at", json_object_new_int64(g->created));
    json_object_object_add(r, "status", json_object_new_string("in_progress"));
    json_object_object_add(r, "error", NULL);
    json_object_object_add(r, "incomplete_details", NULL);
    json_object_object_add(r, "instructions", instructions ? json_object_new_string(instructions) : NULL);
    json_object_object_add(r, "max_output_tokens", max_out ? json_object_new_int64(max_out) : NULL);
    json_object_object_add(r, "model", json_object_new_string(s->model_id));
    json_object_object_add(r, "output", json_object_new_array());
    json_object_object_add(r, "parallel_tool_calls", json_object_new_boolean(parallel));
    json_object_object_add(r, "previous_response_id", prev ? json_object_new_string(prev) : NULL);
    json_object *reasoning = json_object_new_object();
    json_object *effort = NULL; /* as asked (srv_parse_effort checked it) */
    if (ropt) json_object_object_get_ex(ropt, "effort", &effort);
    json_object_object_add(reasoning, "effort", effort ? json_object_get(effort) : NULL);
    json_object_object_add(reasoning, "summary", NULL);
    json_object_object_add(r, "reasoning", reasoning);
    json_object_object_add(r, "store", json_object_new_boolean(store));
    json_object_object_add(r, "temperature", json_object_new_double(p.sampling.temp));
    json_object *tf = json_object_new_object(), *tfmt = fmt && json_object_is_type(fmt, json_type_object) ? deep_copy(fmt) : NULL;
    if (!tfmt) {
        tfmt = json_object_new_object();
        json_object_object_add(tfmt, "type", json_object_new_string("text"));
    }
    json_object_object_add(tf, "format", tfmt);
    json_object_object_add(r, "text", tf);
    json_object_object_add(r, "tool_choice", tool_choice && !json_object_is_type(tool_choice, json_type_null)
                                                 ? deep_copy(tool_choice)
                                                 : json_object_new_string("auto"));
    json_object_object_add(r, "tools", tools ? deep_copy(tools) : json_object_new_array());
    json_object_object_add(r, "top_p", json_object_new_double(p.sampling.top_p));
    json_object_object_add(r, "truncation", json_object_new_string("disabled"));
    json_object_object_add(r, "usage", NULL);
    json_object_object_add(r, "metadata", meta ? deep_copy(meta) : json_object_new_object());

    ok = srv_constraint_compile(&con, &p, e) && srv_gen_submit(g, &p, e);
    srv_constraint_free(&con);
    spud_free(ids);
    return ok;
}
