/* server.c: HTTP plumbing of `spud serve` (server.h): the libmicrohttpd
 * daemon (one thread per connection), routing, API keys, body limits,
 * server-sent events, health, models, metrics, graceful shutdown.
 *
 * A generation is an engine request plus a srv_gen that turns its deltas into
 * JSON. Non-streaming answers wait in the connection's thread; streams are a
 * callback response whose reader waits for the engine. Both wait with poll()
 * on the request's eventfd and on the client's socket (POLLRDHUP), so a
 * client that goes away cancels its request at once, and the engine frees
 * its slot before the next step.
 */
#define _GNU_SOURCE
#include "server_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SRV_DEFAULT_MAX_BODY ((size_t)4 << 20)
#define SRV_DEFAULT_STORE ((size_t)64 << 20)
#define SRV_JSON_DEPTH 64

/* Per HTTP request state (libmicrohttpd's con_cls). */
typedef struct {
    srv_route route;
    char *body;
    size_t n, cap;
    bool too_big;
    double t_arrival;
} srv_conn;

/* ---- responses ---- */

static enum MHD_Result send_bytes(struct MHD_Connection *c, spud_server *s, srv_route route, int status,
                                  const char *ctype, const char *data, size_t len, const char *retry_after) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    srv_metrics_request(&s->metrics, route, status);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, spud_server *s, srv_route route, int status,
                                 json_object *o) {
    size_t len;
    const char *txt = srv_json_text(o, &len);
    enum MHD_Result ret = send_bytes(c, s, route, status, "application/json", txt, len, NULL);
    json_object_put(o);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, spud_server *s, srv_route route,
                                  const srv_error *e) {
    json_object *o = srv_error_json(e);
    size_t len;
    const char *txt = srv_json_text(o, &len);
    enum MHD_Result ret = send_bytes(c, s, route, e->status, "application/json", txt, len,
                                     e->status == 429 ? "1" : NULL);
    json_object_put(o);
    return ret;
}

/* ---- generations ---- */

srv_gen *srv_gen_new(spud_server *s, srv_api api, srv_route route, int32_t n_choices) {
    srv_gen *g = spud_calloc(1, sizeof *g);
    if (!g) return NULL;
    g->ch = spud_calloc((size_t)n_choices, sizeof *g->ch);
    if (!g->ch) {
        spud_free(g);
        return NULL;
    }
    g->s = s;
    g->api = api;
    g->route = route;
    g->n_choices = n_choices;
    g->per_req = n_choices;
    g->created = (int64_t)time(NULL);
    g->sock = -1;
    srv_random_id(g->id, sizeof g->id,
                  api == API_CHAT ? "chatcmpl-" : api == API_COMPLETION ? "cmpl-" : "resp_");
    srv_random_id(g->item_id, sizeof g->item_id, "msg_");
    return g;
}

void srv_gen_free(srv_gen *g) {
    if (!g) return;
    for (int32_t i = 0; i < g->n_reqs; i++) spud_engine_req_release(g->reqs[i]);
    if (g->n_reqs > 0) {
        pthread_mutex_lock(&g->s->mu);
        g->s->in_flight--;
        pthread_cond_broadcast(&g->s->cv);
        pthread_mutex_unlock(&g->s->mu);
    }
    for (int32_t c = 0; c < g->n_choices; c++) {
        srv_choice_free_parse(&g->ch[c]);
        spud_free(g->ch[c].text);
        if (g->ch[c].lp) json_object_put(g->ch[c].lp);
    }
    spud_free(g->ch);
    for (int32_t i = 0; i < SRV_MAX_PROMPTS; i++) spud_free(g->echo[i]);
    if (g->resp) json_object_put(g->resp);
    if (g->conv) json_object_put(g->conv);
    spud_free(g->out);
    spud_engine_delta_free(&g->d);
    spud_free(g);
}

bool srv_gen_submit(srv_gen *g, const spud_engine_req_params *p, srv_error *err) {
    if (g->n_reqs >= SRV_MAX_PROMPTS || (g->n_reqs + 1) * g->per_req > g->n_choices)
        return srv_fail(err, 500, "", "internal error: too many engine requests");
    spud_engine_req_params q = *p;
    if (g->popts_reasoning && g->popts_syntax == SPUD_CALLS_HARMONY) { /* count reasoning tokens */
        q.think_open[0] = "<|channel|>analysis<|message|>";
        q.think_close[0] = "<|end|>";
        q.think_close[1] = "<|return|>";
    } else if (g->popts_reasoning) {
        q.think_open[0] = "<think>";
        q.think_close[0] = "</think>";
        if (g->popts_syntax == SPUD_CALLS_MISTRAL) { /* Magistral's */
            q.think_open[1] = "[THINK]";
            q.think_close[1] = "[/THINK]";
        }
        q.in_reasoning = g->popts_in_reasoning;
    }
    spud_status st = spud_engine_submit(g->s->engine, &q, &g->reqs[g->n_reqs]);
    if (st == SPUD_ERR_RANGE)
        return srv_fail(err, 429, "", "the server is busy (%s); retry later", spud_last_error());
    if (st) return srv_fail(err, atomic_load(&g->s->state) == SRV_READY ? 400 : 503, "", "%s",
                            spud_last_error());
    g->n_prompt += (uint32_t)p->n_prompt;
    if (g->n_reqs++ == 0) {
        pthread_mutex_lock(&g->s->mu);
        g->s->in_flight++;
        pthread_mutex_unlock(&g->s->mu);
    }
    return true;
}

const char *srv_gen_error(const srv_gen *g) {
    for (int32_t i = 0; i < g->n_reqs; i++) {
        const char *m = spud_engine_req_error(g->reqs[i]);
        if (m[0]) return m;
    }
    return "";
}

static void gen_cancel(srv_gen *g) {
    for (int32_t i = 0; i < g->n_reqs; i++) spud_engine_req_cancel(g->reqs[i]);
}

static bool gen_engine_done(srv_gen *g) {
    for (int32_t i = 0; i < g->n_reqs; i++)
        if (!spud_engine_req_done(g->reqs[i])) return false;
    return true;
}

void srv_out(srv_gen *g, const char *s, size_t n) {
    if (g->out_len + n > g->out_cap) {
        size_t cap = g->out_cap ? g->out_cap : 1024;
        while (cap < g->out_len + n) cap *= 2;
        char *t = spud_realloc(g->out, cap);
        if (!t) return; /* dropped; the stream ends with what fits */
        g->out = t;
        g->out_cap = cap;
    }
    memcpy(g->out + g->out_len, s, n);
    g->out_len += n;
}

void srv_out_event(srv_gen *g, const char *event, json_object *data) {
    size_t len;
    const char *txt = srv_json_text(data, &len);
    if (event) {
        srv_out(g, "event: ", 7);
        srv_out(g, event, strlen(event));
        srv_out(g, "\n", 1);
    }
    srv_out(g, "data: ", 6);
    srv_out(g, txt, len);
    srv_out(g, "\n\n", 2);
    json_object_put(data);
}

/* Move the engine's news into the choices (and, for streams, into events).
 * Returns true once every choice has ended. */
static bool gen_pump(srv_gen *g) {
    bool all = true;
    for (int32_t c = 0; c < g->n_choices; c++) {
        srv_choice *ch = &g->ch[c];
        if (ch->finish) continue;
        spud_engine_req_take(g->reqs[c / g->per_req], c % g->per_req, &g->d);
        const spud_engine_delta *d = &g->d;
        if (d->len) {
            if (ch->len + d->len + 1 > ch->cap) {
                size_t cap = ch->cap ? ch->cap * 2 : 256;
                while (cap < ch->len + d->len + 1) cap *= 2;
                char *t = spud_realloc(ch->text, cap);
                if (t) {
                    ch->text = t;
                    ch->cap = cap;
                }
            }
            if (ch->len + d->len + 1 <= ch->cap) {
                memcpy(ch->text + ch->len, d->text, d->len);
                ch->len += d->len;
                ch->text[ch->len] = 0;
            }
        }
        ch->n_gen = d->n_gen;
        ch->n_reasoning = d->n_reasoning;
        if (g->parse && !g->stream) srv_parse_feed(g, c, d->text, d->len, d->finish != SPUD_FINISH_NONE);
        if (g->stream) {
            if (g->api == API_RESPONSES)
                srv_responses_stream_delta(g, d);
            else
                srv_oai_stream_delta(g, c, d);
        } else if (g->logprobs && d->n_lp) {
            if (!ch->lp) ch->lp = g->api == API_CHAT ? json_object_new_array() : json_object_new_object();
            srv_logprobs_append(g, ch->lp, d->lp, d->n_lp, ch->len - d->len);
        }
        if (d->finish)
            ch->finish = d->finish;
        else
            all = false;
    }
    if (all) {
        g->n_cached = 0;
        for (int32_t i = 0; i < g->n_reqs; i++) {
            spud_engine_req_info info;
            spud_engine_req_get_info(g->reqs[i], &info);
            g->n_cached += info.n_cached;
        }
    }
    return all;
}

/* Wait for engine news or the client leaving: 1 news, 0 timeout, -1 the client left. */
static int gen_wait(srv_gen *g) {
    struct pollfd pfd[SRV_MAX_PROMPTS + 1];
    int n = 0, k;
    if (g->sock >= 0 && g->sock_watch) pfd[n++] = (struct pollfd){.fd = g->sock, .events = POLLRDHUP};
    int first = n;
    for (int32_t i = 0; i < g->n_reqs; i++)
        pfd[n++] = (struct pollfd){.fd = spud_engine_req_fd(g->reqs[i]), .events = POLLIN};
    do {
        k = poll(pfd, (nfds_t)n, 1000);
    } while (k < 0 && errno == EINTR);
    if (k <= 0) return 0;
    if (first == 1 && (pfd[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) return -1;
    for (int i = first; i < n; i++)
        if (pfd[i].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(pfd[i].fd, &v, sizeof v);
            (void)r;
        }
    return 1;
}

/* Record the generation's timings once it is over. */
static void gen_close(srv_gen *g) {
    if (g->n_reqs == 0) return;
    spud_engine_req_info info = {0};
    for (int32_t i = 0; i < g->n_reqs; i++) { /* the first token of any prompt, the end of all */
        spud_engine_req_info x;
        spud_engine_req_get_info(g->reqs[i], &x);
        if (x.t_first > 0 && (info.t_first == 0 || x.t_first < info.t_first)) info.t_first = x.t_first;
        if (x.t_done > info.t_done) info.t_done = x.t_done;
    }
    int64_t n_gen = 0;
    for (int32_t c = 0; c < g->n_choices; c++) n_gen += g->ch[c].n_gen;
    double ttft = info.t_first > 0 ? info.t_first - g->t_arrival : -1;
    double tps = -1;
    if (info.t_first > 0 && info.t_done > info.t_first && n_gen > g->n_choices)
        tps = (double)(n_gen - g->n_choices) / (info.t_done - info.t_first);
    srv_metrics_generation(&g->s->metrics, ttft, tps, g->client_left);
}

static spud_finish gen_worst(const srv_gen *g) {
    spud_finish w = SPUD_FINISH_NONE;
    for (int32_t c = 0; c < g->n_choices; c++)
        if (g->ch[c].finish == SPUD_FINISH_ERROR || (g->ch[c].finish == SPUD_FINISH_CANCELLED && w != SPUD_FINISH_ERROR))
            w = g->ch[c].finish;
    return w;
}

static void gen_stream_end(srv_gen *g) {
    spud_finish w = gen_worst(g);
    if (g->api == API_RESPONSES) {
        srv_responses_stream_end(g);
        return;
    }
    if (w) {
        srv_error e;
        if (w == SPUD_FINISH_ERROR)
            srv_fail(&e, 500, "", "generation failed: %s", srv_gen_error(g));
        else
            srv_fail(&e, 503, "", "the server is shutting down");
        srv_out_event(g, NULL, srv_error_json(&e));
    }
    srv_oai_stream_end(g);
    srv_out(g, "data: [DONE]\n\n", 14);
}

static ssize_t gen_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    srv_gen *g = cls;
    (void)pos;
    while (g->out_pos == g->out_len) {
        if (g->done) return MHD_CONTENT_READER_END_OF_STREAM;
        g->out_pos = g->out_len = 0;
        if (!g->started) {
            g->started = true;
            if (g->api == API_RESPONSES) srv_responses_stream_start(g);
            continue;
        }
        if (gen_pump(g)) {
            gen_stream_end(g);
            if (g->api == API_RESPONSES) srv_responses_store(g);
            g->done = true;
            continue;
        }
        if (g->out_len == 0 && gen_wait(g) < 0) {
            g->client_left = true;
            gen_cancel(g);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    size_t n = g->out_len - g->out_pos < max ? g->out_len - g->out_pos : max;
    memcpy(buf, g->out + g->out_pos, n);
    g->out_pos += n;
    return (ssize_t)n;
}

static void gen_reader_free(void *cls) {
    srv_gen *g = cls;
    if (g->n_reqs > 0 && !gen_engine_done(g)) g->client_left = true;
    gen_close(g);
    srv_gen_free(g);
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

/* Answer a submitted generation: a stream, or one JSON object when it is over. */
static enum MHD_Result respond_gen(struct MHD_Connection *c, spud_server *s, srv_gen *g) {
    g->sock = conn_fd(c);
    g->sock_watch = true;
    if (g->stream) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, gen_reader, g, gen_reader_free);
        if (!r) {
            srv_gen_free(g);
            return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r); /* frees g through gen_reader_free when done */
        srv_metrics_request(&s->metrics, g->route, 200);
        return ret;
    }
    while (!gen_pump(g)) {
        if (gen_wait(g) < 0) {
            g->client_left = true;
            gen_cancel(g);
            gen_close(g);
            srv_metrics_request(&s->metrics, g->route, 499);
            srv_gen_free(g);
            return MHD_NO; /* nobody to answer */
        }
    }
    gen_close(g);
    spud_finish w = gen_worst(g);
    enum MHD_Result ret;
    if (w) {
        srv_error e;
        if (w == SPUD_FINISH_ERROR)
            srv_fail(&e, 500, "", "generation failed: %s", srv_gen_error(g));
        else
            srv_fail(&e, 503, "", "the server is shutting down");
        ret = send_error(c, s, g->route, &e);
    } else {
        json_object *o = g->api == API_RESPONSES ? srv_responses_final(g) : srv_oai_final(g);
        if (g->api == API_RESPONSES) srv_responses_store(g);
        ret = send_json(c, s, g->route, 200, o);
    }
    srv_gen_free(g);
    return ret;
}

/* ---- routing ---- */

/* Routes, also without the /v1 prefix (as llama.cpp accepts them). */
static srv_route route_of(const char *url) {
    static const struct {
        const char *path;
        srv_route route;
    } routes[] = {
        {"/health", ROUTE_HEALTH},
        {"/metrics", ROUTE_METRICS},
        {"/v1/models", ROUTE_MODELS},
        {"/v1/chat/completions", ROUTE_CHAT},
        {"/v1/completions", ROUTE_COMPLETIONS},
        {"/v1/responses", ROUTE_RESPONSES},
        {"/apply-template", ROUTE_APPLY_TEMPLATE},
        {"/tokenize", ROUTE_TOKENIZE},
        {"/detokenize", ROUTE_DETOKENIZE},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const char *p = routes[i].path;
        if (!strcmp(url, p) || (!strncmp(p, "/v1/", 4) && !strcmp(url, p + 3))) return routes[i].route;
    }
    if (!strncmp(url, "/v1/", 4)) url += 3;
    if (!strncmp(url, "/responses/", 11) && url[11]) return ROUTE_RESPONSES;
    if (!strncmp(url, "/models/", 8) && url[8]) return ROUTE_MODELS;
    return ROUTE_OTHER;
}

/* The ID of GET .../PREFIX/ID, or NULL. */
static const char *route_id(const char *url, const char *prefix) {
    if (!strncmp(url, "/v1/", 4)) url += 3;
    size_t n = strlen(prefix);
    return !strncmp(url, prefix, n) && url[n] ? url + n : NULL;
}

/* Constant-time check of "Bearer KEY" against every configured key. */
static bool auth_ok(spud_server *s, struct MHD_Connection *c) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    const char *given = h + 7;
    size_t n = strlen(given);
    unsigned ok = 0;
    for (size_t k = 0; k < s->p.n_api_keys; k++) {
        const char *key = s->keys[k];
        size_t kl = s->key_len[k];
        unsigned diff = (unsigned)(kl != n);
        for (size_t i = 0; i < kl; i++)
            diff |= (unsigned)((unsigned char)key[i] ^ (unsigned char)(i < n ? given[i] : 0));
        ok |= (unsigned)(diff == 0);
    }
    return ok != 0;
}

static json_object *parse_body(const srv_conn *sc, srv_error *e) {
    json_tokener *tok = json_tokener_new_ex(SRV_JSON_DEPTH);
    if (!tok) {
        srv_fail(e, 500, "", "out of memory");
        return NULL;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = sc->n ? json_tokener_parse_ex(tok, sc->body, (int)sc->n) : NULL;
    enum json_tokener_error err = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o || err != json_tokener_success) {
        if (o) json_object_put(o);
        srv_fail(e, 400, "", "could not parse the JSON body: %s",
                 sc->n == 0 ? "the body is empty"
                 : err == json_tokener_continue ? "unexpected end of input"
                                                : json_tokener_error_desc(err));
        return NULL;
    }
    for (size_t i = used; i < sc->n; i++)
        if (!strchr(" \t\r\n", sc->body[i])) {
            json_object_put(o);
            srv_fail(e, 400, "", "could not parse the JSON body: text after the JSON value");
            return NULL;
        }
    if (!json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        srv_fail(e, 400, "", "the request body must be a JSON object");
        return NULL;
    }
    return o;
}

static json_object *model_json(spud_server *s) {
    json_object *m = json_object_new_object(), *meta = json_object_new_object();
    json_object_object_add(m, "id", json_object_new_string(s->model_id));
    json_object_object_add(m, "object", json_object_new_string("model"));
    json_object_object_add(m, "created", json_object_new_int64(s->created));
    json_object_object_add(m, "owned_by", json_object_new_string("spud"));
    json_object_object_add(meta, "n_ctx", json_object_new_int64(s->n_ctx));
    json_object_object_add(meta, "n_parallel", json_object_new_int(s->n_parallel));
    json_object_object_add(meta, "n_vocab", json_object_new_int(spud_model_n_vocab(s->model)));
    json_object_object_add(meta, "n_ctx_train", json_object_new_int64(spud_model_n_ctx_train(s->model)));
    json_object_object_add(m, "meta", meta);
    return m;
}

static enum MHD_Result route_models(struct MHD_Connection *c, spud_server *s, const char *url) {
    const char *id = route_id(url, "/models/");
    if (id) {
        if (strcmp(id, s->model_id)) {
            srv_error e;
            srv_fail(&e, 404, "model", "the model '%s' does not exist (this server serves '%s')", id, s->model_id);
            e.code = "model_not_found";
            return send_error(c, s, ROUTE_MODELS, &e);
        }
        return send_json(c, s, ROUTE_MODELS, 200, model_json(s));
    }
    json_object *o = json_object_new_object(), *data = json_object_new_array();
    json_object_array_add(data, model_json(s));
    json_object_object_add(o, "object", json_object_new_string("list"));
    json_object_object_add(o, "data", data);
    return send_json(c, s, ROUTE_MODELS, 200, o);
}

static enum MHD_Result dispatch(struct MHD_Connection *c, spud_server *s, srv_conn *sc, const char *url,
                                const char *method) {
    srv_error e;
    srv_route route = sc->route;
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST"),
         del = !strcmp(method, "DELETE");
    int state = atomic_load(&s->state);

    if (route == ROUTE_HEALTH) {
        if (state == SRV_READY) {
            static const char ok[] = "{\"status\":\"ok\"}";
            return send_bytes(c, s, route, 200, "application/json", ok, sizeof ok - 1, NULL);
        }
        srv_fail(&e, 503, "", state == SRV_LOADING ? "loading the model" : "the server is shutting down");
        e.code = state == SRV_LOADING ? "model_loading" : "shutting_down";
        return send_error(c, s, route, &e);
    }
    if (s->p.n_api_keys && !auth_ok(s, c)) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        srv_fail(&e, 401, "", h ? "incorrect API key provided"
                                : "no API key provided (send it as 'Authorization: Bearer KEY')");
        e.code = "invalid_api_key";
        return send_error(c, s, route, &e);
    }
    if (route == ROUTE_OTHER) {
        srv_fail(&e, 404, "", "no route %s %s", method, url);
        e.code = "not_found";
        return send_error(c, s, route, &e);
    }
    if (route == ROUTE_METRICS && get) {
        size_t len;
        char *txt = srv_metrics_render(&s->metrics, state == SRV_READY ? s->engine : NULL, &len);
        if (!txt) return MHD_NO;
        enum MHD_Result ret = send_bytes(c, s, route, 200, "text/plain; version=0.0.4", txt, len, NULL);
        spud_free(txt);
        return ret;
    }
    if (state != SRV_READY) {
        srv_fail(&e, 503, "", state == SRV_LOADING ? "loading the model" : "the server is shutting down");
        return send_error(c, s, route, &e);
    }
    const char *resp_id = route == ROUTE_RESPONSES ? route_id(url, "/responses/") : NULL;
    bool is_get_route = route == ROUTE_MODELS || resp_id;
    if (resp_id && del) {
        if (!srv_responses_delete(s, resp_id)) {
            srv_fail(&e, 404, "", "no stored response with id '%s'", resp_id);
            return send_error(c, s, route, &e);
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(resp_id));
        json_object_object_add(o, "object", json_object_new_string("response"));
        json_object_object_add(o, "deleted", json_object_new_boolean(true));
        return send_json(c, s, route, 200, o);
    }
    if (is_get_route ? !get : !post) {
        srv_fail(&e, 405, "", "%s does not accept %s", url, method);
        return send_error(c, s, route, &e);
    }
    if (route == ROUTE_MODELS) return route_models(c, s, url);
    if (resp_id) {
        json_object *o = srv_responses_get(s, resp_id);
        if (!o) {
            srv_fail(&e, 404, "", "no stored response with id '%s'", resp_id);
            return send_error(c, s, route, &e);
        }
        return send_json(c, s, route, 200, o);
    }

    json_object *body = parse_body(sc, &e);
    if (!body) return send_error(c, s, route, &e);
    srv_gen *g = NULL;
    bool ok;
    if (route == ROUTE_APPLY_TEMPLATE || route == ROUTE_TOKENIZE || route == ROUTE_DETOKENIZE) {
        json_object *out = NULL;
        ok = route == ROUTE_APPLY_TEMPLATE ? srv_apply_template(s, body, &out, &e)
             : route == ROUTE_TOKENIZE     ? srv_tokenize_route(s, body, &out, &e)
                                           : srv_detokenize_route(s, body, &out, &e);
        json_object_put(body);
        return ok ? send_json(c, s, route, 200, out) : send_error(c, s, route, &e);
    }
    if (route == ROUTE_CHAT)
        ok = srv_chat_prepare(s, body, &g, &e);
    else if (route == ROUTE_COMPLETIONS)
        ok = srv_completion_prepare(s, body, &g, &e);
    else
        ok = srv_responses_prepare(s, body, &g, &e);
    json_object_put(body);
    if (!ok) {
        srv_gen_free(g);
        return send_error(c, s, route, &e);
    }
    g->t_arrival = sc->t_arrival;
    return respond_gen(c, s, g);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size,
                                  void **con_cls) {
    spud_server *s = cls;
    srv_conn *sc = *con_cls;
    (void)version;
    if (!sc) {
        sc = spud_calloc(1, sizeof *sc);
        if (!sc) return MHD_NO;
        sc->route = route_of(url);
        sc->t_arrival = spud_time_s();
        *con_cls = sc;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || *end || v > s->p.max_body) sc->too_big = true;
        }
        if (!sc->too_big) return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (sc->too_big) return MHD_YES;
        if (sc->n + n > s->p.max_body) {
            sc->too_big = true;
            spud_free(sc->body);
            sc->body = NULL;
            sc->n = sc->cap = 0;
            return MHD_YES;
        }
        if (sc->n + n > sc->cap) {
            size_t cap = sc->cap ? sc->cap : 4096;
            while (cap < sc->n + n) cap *= 2;
            char *t = spud_realloc(sc->body, cap);
            if (!t) return MHD_NO;
            sc->body = t;
            sc->cap = cap;
        }
        memcpy(sc->body + sc->n, upload, n);
        sc->n += n;
        return MHD_YES;
    }
    if (sc->too_big) {
        srv_error e;
        srv_fail(&e, 413, "", "the request body is larger than the limit of %zu bytes", s->p.max_body);
        e.code = "request_too_large";
        return send_error(c, s, sc->route, &e);
    }
    return dispatch(c, s, sc, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv_conn *sc = *con_cls;
    (void)cls, (void)c, (void)toe;
    if (!sc) return;
    spud_free(sc->body);
    spud_free(sc);
    *con_cls = NULL;
}

/* ---- lifecycle ---- */

static char *dup_str(const char *s) { return spud_strndup(s, strlen(s)); }

spud_status spud_server_start(const spud_server_params *p, spud_server **out) {
    spud_status st = SPUD_OK;
    *out = NULL;
    spud_server *s = spud_calloc(1, sizeof *s);
    if (!s) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    s->p = *p;
    if (!s->p.max_body) s->p.max_body = SRV_DEFAULT_MAX_BODY;
    if (s->p.max_body > (size_t)1 << 30) s->p.max_body = (size_t)1 << 30; /* json-c takes an int length */
    if (!s->p.store_bytes) s->p.store_bytes = SRV_DEFAULT_STORE;
    if (s->p.max_connections <= 0) s->p.max_connections = 1024;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    srv_metrics_init(&s->metrics);
    srv_store_init(&s->store, s->p.store_bytes);
    atomic_init(&s->state, SRV_LOADING);
    s->created = (int64_t)time(NULL);
    s->host = dup_str(p->host ? p->host : "127.0.0.1");
    s->model_id = dup_str(p->model_id ? p->model_id : "spud");
    if (p->n_api_keys) {
        s->keys = spud_calloc(p->n_api_keys, sizeof *s->keys);
        s->key_len = spud_calloc(p->n_api_keys, sizeof *s->key_len);
        if (!s->keys || !s->key_len) goto nomem;
        for (size_t i = 0; i < p->n_api_keys; i++) {
            s->keys[i] = dup_str(p->api_keys[i]);
            if (!s->keys[i]) goto nomem;
            s->key_len[i] = strlen(s->keys[i]);
        }
    }
    s->p.api_keys = NULL;
    if (!s->host || !s->model_id) goto nomem;

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_PASSIVE},
                    *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)p->port);
    int gai = getaddrinfo(s->host, port, &hints, &ai);
    if (gai) {
        st = spud_errorf(SPUD_ERR_INVALID, "bad host address '%s': %s", s->host, gai_strerror(gai));
        goto fail;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(flags, p->port, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->p.max_connections,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                                 MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        st = spud_errorf(SPUD_ERR_IO, "cannot listen on %s port %u: %s", s->host, (unsigned)p->port,
                         strerror(errno));
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p->port;
    *out = s;
    return SPUD_OK;
nomem:
    st = spud_errorf(SPUD_ERR_NOMEM, "out of memory");
fail:
    spud_server_free(s);
    return st;
}

uint16_t spud_server_port(const spud_server *s) { return s->port; }

/* How the model writes tool calls and thinks, from its chat template's text
 * (no template: our ChatML, Hermes calls, no thinking). */
static void template_syntax(spud_server *s, const spud_model *m) {
    s->call_syntax = SPUD_CALLS_HERMES;
    s->thinks = false;
    spud_str src = {0};
    if (s->tmpl && spud_gguf_get_str(m->gguf, "tokenizer.chat_template", &src) == SPUD_OK) {
        char *t = spud_strndup(src.ptr, src.len);
        if (t) {
            s->call_syntax = spud_call_syntax_detect(t);
            /* <think> blocks, Magistral's [THINK], or harmony's analysis channel */
            s->thinks = strstr(t, "<think>") || strstr(t, "[THINK]") || s->call_syntax == SPUD_CALLS_HARMONY;
            spud_free(t);
        }
    }
    s->tool_format = spud_tool_format_for_syntax(s->call_syntax);
}

spud_status spud_server_set_model(spud_server *s, const spud_model *m, const spud_engine_params *ep) {
    spud_status st = spud_engine_new(m, ep, &s->engine);
    if (st) return st;
    s->model = m;
    s->n_ctx = spud_engine_n_ctx(s->engine);
    s->n_parallel = spud_engine_n_parallel(s->engine);
    /* The model's own template; a model without one, or with one our Jinja
     * interpreter cannot parse, is served with ChatML. */
    if (spud_chat_template_from_gguf(m->gguf, &s->tmpl) != SPUD_OK) {
        spud_log(SPUD_LOG_WARN, "serve: %s; using ChatML", spud_last_error());
        s->tmpl = NULL;
    } else if (spud_chat_template_is_default(s->tmpl)) {
        spud_chat_template_free(s->tmpl);
        s->tmpl = NULL;
    }
    template_syntax(s, m);
    atomic_store(&s->state, SRV_READY);
    return SPUD_OK;
}

/* Wait until no generation is in flight or the deadline passes; returns how many are left. */
static int wait_in_flight(spud_server *s, double deadline) {
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0 && spud_time_s() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    int left = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return left;
}

void spud_server_shutdown(spud_server *s, double timeout_s) {
    if (!s || !s->daemon) return;
    atomic_store(&s->state, SRV_DRAINING);
    MHD_socket lfd = MHD_quiesce_daemon(s->daemon);
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    int left = wait_in_flight(s, spud_time_s() + timeout_s);
    if (left) spud_log(SPUD_LOG_WARN, "serve: %d requests still running after %.1f s; cancelling them", left,
                       timeout_s);
    if (s->engine) spud_engine_stop(s->engine); /* ends what is left; wakes its readers */
    /* the cancelled responses still send their last events (an error, [DONE]) */
    wait_in_flight(s, spud_time_s() + 2.0);
    MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}

void spud_server_free(spud_server *s) {
    if (!s) return;
    if (s->daemon) spud_server_shutdown(s, 0);
    spud_engine_free(s->engine);
    spud_chat_template_free(s->tmpl);
    srv_store_free(&s->store);
    srv_metrics_free(&s->metrics);
    if (s->keys)
        for (size_t i = 0; i < s->p.n_api_keys; i++) spud_free(s->keys[i]);
    spud_free(s->keys);
    spud_free(s->key_len);
    spud_free(s->host);
    spud_free(s->model_id);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    spud_free(s);
}
