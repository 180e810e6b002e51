/* server_metrics.c: the server's Prometheus metrics (text format 0.0.4):
 * requests by route and status, token totals, queue depth, active
 * sequences, KV cache use, and histograms of time to first token and of
 * per-request generation speed. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "server_int.h"

static const double ttft_le[SRV_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                 1,     2.5,  5,     10,   30,  60,  1e300};
static const double tps_le[SRV_HIST_BUCKETS] = {1,   2,    5,    10,   20,    50,    100,
                                                200, 500, 1000, 2000, 5000, 10000, 1e300};

static const char *route_names[ROUTE_N] = {
    [ROUTE_HEALTH] = "/health",
    [ROUTE_METRICS] = "/metrics",
    [ROUTE_MODELS] = "/v1/models",
    [ROUTE_CHAT] = "/v1/chat/completions",
    [ROUTE_COMPLETIONS] = "/v1/completions",
    [ROUTE_RESPONSES] = "/v1/responses",
    [ROUTE_APPLY_TEMPLATE] = "/apply-template",
    [ROUTE_TOKENIZE] = "/tokenize",
    [ROUTE_DETOKENIZE] = "/detokenize",
    [ROUTE_OTHER] = "other",
};

const char *srv_route_name(srv_route r) { return r < ROUTE_N ? route_names[r] : "other"; }

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    memcpy(m->ttft.le, ttft_le, sizeof ttft_le);
    memcpy(m->tps.le, tps_le, sizeof tps_le);
}

void srv_metrics_free(srv_metrics *m) { pthread_mutex_destroy(&m->mu); }

void srv_metrics_request(srv_metrics *m, srv_route route, int status) {
    if (route >= ROUTE_N || status < 100 || status >= 600) return;
    pthread_mutex_lock(&m->mu);
    m->requests[route][status]++;
    pthread_mutex_unlock(&m->mu);
}

static void hist_add(srv_hist *h, double v) {
    for (int i = 0; i < SRV_HIST_BUCKETS; i++)
        if (v <= h->le[i]) h->count[i]++;
    h->sum += v;
    h->n++;
}

void srv_metrics_generation(srv_metrics *m, double ttft, double tps, bool client_left) {
    pthread_mutex_lock(&m->mu);
    if (ttft >= 0) hist_add(&m->ttft, ttft);
    if (tps >= 0) hist_add(&m->tps, tps);
    if (client_left) m->cancelled++;
    pthread_mutex_unlock(&m->mu);
}

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->n;
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? room : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if ((size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *t = spud_realloc(b->p, cap);
        if (!t) {
            b->oom = true;
            return;
        }
        b->p = t;
        b->cap = cap;
    }
}

static void hist_render(sbuf *b, const char *name, const char *help, const srv_hist *h) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < SRV_HIST_BUCKETS; i++) {
        if (i == SRV_HIST_BUCKETS - 1)
            sb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count[i]);
        else
            sb_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)h->count[i]);
    }
    sb_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

char *srv_metrics_render(srv_metrics *m, spud_engine *e, size_t *len) {
    sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    sb_printf(&b, "# HELP spud_requests_total HTTP requests answered, by route and status.\n"
                  "# TYPE spud_requests_total counter\n");
    for (int r = 0; r < ROUTE_N; r++)
        for (int st = 100; st < 600; st++)
            if (m->requests[r][st])
                sb_printf(&b, "spud_requests_total{route=\"%s\",status=\"%d\"} %llu\n", route_names[r], st,
                          (unsigned long long)m->requests[r][st]);
    sb_printf(&b, "# HELP spud_requests_cancelled_total Generations stopped because the client went away.\n"
                  "# TYPE spud_requests_cancelled_total counter\nspud_requests_cancelled_total %llu\n",
              (unsigned long long)m->cancelled);
    hist_render(&b, "spud_time_to_first_token_seconds", "Time from a request's arrival to its first token.",
                &m->ttft);
    hist_render(&b, "spud_generation_tokens_per_second", "Generated tokens per second, per request.",
                &m->tps);
    pthread_mutex_unlock(&m->mu);
    if (e) {
        spud_engine_stats st;
        spud_engine_get_stats(e, &st);
        sb_printf(&b,
                  "# HELP spud_prompt_tokens_total Prompt tokens of started requests.\n"
                  "# TYPE spud_prompt_tokens_total counter\nspud_prompt_tokens_total %llu\n"
                  "# HELP spud_prompt_cached_tokens_total Prompt tokens whose KV was reused.\n"
                  "# TYPE spud_prompt_cached_tokens_total counter\nspud_prompt_cached_tokens_total %llu\n"
                  "# HELP spud_generated_tokens_total Tokens generated.\n"
                  "# TYPE spud_generated_tokens_total counter\nspud_generated_tokens_total %llu\n"
                  "# HELP spud_decode_steps_total Batched forward passes.\n"
                  "# TYPE spud_decode_steps_total counter\nspud_decode_steps_total %llu\n"
                  "# HELP spud_queue_depth Requests waiting for a slot.\n"
                  "# TYPE spud_queue_depth gauge\nspud_queue_depth %d\n"
                  "# HELP spud_active_sequences Sequences prefilling or generating.\n"
                  "# TYPE spud_active_sequences gauge\nspud_active_sequences %d\n"
                  "# HELP spud_slots Sequences that can run at once (--parallel).\n"
                  "# TYPE spud_slots gauge\nspud_slots %d\n"
                  "# HELP spud_kv_cache_tokens KV cache positions in use by running sequences.\n"
                  "# TYPE spud_kv_cache_tokens gauge\nspud_kv_cache_tokens %llu\n"
                  "# HELP spud_kv_cache_reusable_tokens KV cache positions kept by idle slots for prefix reuse.\n"
                  "# TYPE spud_kv_cache_reusable_tokens gauge\nspud_kv_cache_reusable_tokens %llu\n"
                  "# HELP spud_kv_cache_capacity_tokens KV cache positions in all slots.\n"
                  "# TYPE spud_kv_cache_capacity_tokens gauge\nspud_kv_cache_capacity_tokens %llu\n"
                  "# HELP spud_kv_cache_usage_ratio Share of the KV cache used by running sequences.\n"
                  "# TYPE spud_kv_cache_usage_ratio gauge\nspud_kv_cache_usage_ratio %.6f\n",
                  (unsigned long long)st.prompt_tokens, (unsigned long long)st.prompt_cached_tokens,
                  (unsigned long long)st.generated_tokens, (unsigned long long)st.steps, (int)st.queue_depth,
                  (int)st.n_active, (int)st.n_slots, (unsigned long long)st.kv_used,
                  (unsigned long long)st.kv_cached, (unsigned long long)st.kv_capacity,
                  st.kv_capacity ? (double)st.kv_used / (double)st.kv_capacity : 0.0);
    }
    if (b.oom || !b.p) {
        spud_free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}
