/* engine.c: continuous batching over one multi-sequence context (engine.h).
 *
 * Threads: the engine thread owns the context, the slots and every field of
 * a request marked "engine thread"; readers touch a request only through its
 * mutex-guarded output and its eventfd. Requests are reference counted (the
 * submitter and the engine each hold one).
 *
 * Slot states: FREE (its history is kept for prefix reuse), PREFILL (the one
 * slot whose prompt is being computed), WAIT (choices 1..n-1 of the request
 * being prefilled; they get a copy of the prompt's KV when it is done) and
 * GEN (one row per step).
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "model.h"

#define ENGINE_IDLE_CHUNK 256 /* prompt rows per step when nothing else decodes */

enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_WAIT, SLOT_GEN };

typedef struct {
    char *text;
    size_t len, cap;
    spud_logprob *lp;
    size_t n_lp, cap_lp;
    spud_finish finish;
    int32_t n_gen, n_reasoning;
} choice_out;

struct spud_engine_req {
    atomic_int refs;
    atomic_bool cancel;
    int efd;
    /* immutable after submit */
    int32_t *prompt;
    uint32_t n_prompt;
    int32_t n_choices, max_tokens;
    spud_sampler_params sp;
    spud_logit_bias *bias;
    size_t n_bias;
    char *stop[SPUD_ENGINE_MAX_STOP];
    size_t stop_len[SPUD_ENGINE_MAX_STOP];
    size_t n_stop;
    bool logprobs;
    int32_t top_logprobs;
    spud_grammar *grammar;    /* or NULL */
    spud_grammar_state **gs;  /* (n_choices) one matcher per choice, when grammar */
    char think[2][2][SPUD_ENGINE_MAX_THINK_LEN + 1]; /* [open, close][spelling]; "" for none */
    bool in_reasoning;
    atomic_bool *end;         /* (n_choices) spud_engine_req_end_choice asked */
    /* engine thread */
    spud_engine_req *next; /* queue link */
    int32_t *slot_of;      /* (n_choices) */
    uint32_t n_prefilled;
    int32_t n_live;        /* choices not ended */
    bool dirty;            /* has news to signal after this step */
    /* shared, under mu */
    pthread_mutex_t mu;
    choice_out *out;       /* (n_choices) */
    int32_t n_done;
    uint32_t n_cached;
    double t_submit, t_first, t_done;
    char err[256];
};

typedef struct {
    spud_engine_req *req; /* NULL when free */
    int32_t choice;
    int state;
    int32_t *hist;        /* (n_ctx) the tokens whose KV the slot holds */
    uint32_t n_hist;
    int32_t next;         /* sampled token to feed on the next step */
    spud_sampler *smp;
    spud_grammar_state *gs; /* the choice's grammar matcher (owned by the request), or NULL */
    bool in_think;        /* the output is inside a think block */
    uint8_t think_m[2];   /* bytes matched of each spelling of the marker that would flip in_think */
    int32_t n_think;      /* tokens generated inside a think block */
    spud_detok dt;
    char *held;           /* generated text not yet handed out (stop-string hold-back) */
    size_t n_held, cap_held;
    spud_logprob *lp_held; /* log-probabilities of the tokens behind `held` */
    size_t n_lp_held, cap_lp_held;
    int32_t n_gen;
    uint64_t last_used;
} eng_slot;

struct spud_engine {
    const spud_model *m;
    spud_ctx *ctx;
    uint32_t n_ctx;
    int32_t n_par, max_queue, chunk, nv;
    eng_slot *slots;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu; /* queue, flags, stats */
    pthread_cond_t cv;
    spud_engine_req *q_head, *q_tail;
    int32_t q_len;
    bool stopping, stopped;
    spud_engine_stats stats;
    pthread_mutex_t vmu;           /* builds gvocab once */
    spud_grammar_vocab *gvocab;    /* immutable once built; shared by every grammar matcher */

    /* engine thread */
    spud_engine_req *prefilling;
    int32_t prefill_slot;
    spud_input *in;
    uint32_t *seq;
    bool *want;
    int32_t *row_slot; /* slot of the k-th logits row among the generating slots */
    float *biased;     /* (n_vocab) logits plus logit_bias, grammar mask applied */
    char *piece;
    size_t piece_cap;
    spud_engine_req **dirty;
    int32_t n_dirty;
    uint64_t tick;
    uint64_t add_prompt, add_cached, add_gen, add_steps; /* totals not yet published */
};

/* ---- requests ---- */

static void req_unref(spud_engine_req *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    if (r->efd >= 0) close(r->efd);
    pthread_mutex_destroy(&r->mu);
    if (r->out)
        for (int32_t c = 0; c < r->n_choices; c++) {
            spud_free(r->out[c].text);
            spud_free(r->out[c].lp);
        }
    for (size_t i = 0; i < r->n_stop; i++) spud_free(r->stop[i]);
    spud_free(r->out);
    spud_free(r->end);
    if (r->gs)
        for (int32_t c = 0; c < r->n_choices; c++) spud_grammar_state_free(r->gs[c]);
    spud_free(r->gs);
    spud_grammar_free(r->grammar);
    spud_free(r->slot_of);
    spud_free(r->bias);
    spud_free(r->prompt);
    spud_free(r);
}

static void req_signal(int efd) {
    uint64_t one = 1;
    ssize_t k = write(efd, &one, sizeof one);
    (void)k; /* EAGAIN: the counter is already non-zero, the reader will wake */
}

/* Mark r as having news for its reader (signalled once per step). */
static void engine_mark(spud_engine *e, spud_engine_req *r) {
    if (r->dirty) return;
    r->dirty = true;
    e->dirty[e->n_dirty++] = r;
}

/* Append text (and log-probabilities) to choice c's output. */
static bool req_append(spud_engine_req *r, int32_t c, const char *text, size_t len,
                       const spud_logprob *lp, size_t n_lp) {
    choice_out *o = &r->out[c];
    bool ok = true;
    pthread_mutex_lock(&r->mu);
    if (o->len + len + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 64;
        while (cap < o->len + len + 1) cap *= 2;
        char *t = spud_realloc(o->text, cap);
        if (!t) {
            ok = false;
            goto done;
        }
        o->text = t;
        o->cap = cap;
    }
    if (o->n_lp + n_lp > o->cap_lp) {
        size_t cap = o->cap_lp ? o->cap_lp : 8;
        while (cap < o->n_lp + n_lp) cap *= 2;
        spud_logprob *t = spud_realloc(o->lp, cap * sizeof *t);
        if (!t) {
            ok = false;
            goto done;
        }
        o->lp = t;
        o->cap_lp = cap;
    }
    memcpy(o->text + o->len, text, len);
    o->len += len;
    o->text[o->len] = 0;
    if (n_lp) memcpy(o->lp + o->n_lp, lp, n_lp * sizeof *lp);
    o->n_lp += n_lp;
done:
    pthread_mutex_unlock(&r->mu);
    return ok;
}

/* Record the end of choice c (the request is then marked for its reader). */
static void req_end_choice(spud_engine *e, spud_engine_req *r, int32_t c, spud_finish f, int32_t n_gen) {
    pthread_mutex_lock(&r->mu);
    if (r->out[c].finish == SPUD_FINISH_NONE) {
        r->out[c].finish = f;
        r->out[c].n_gen = n_gen;
        if (++r->n_done == r->n_choices) r->t_done = spud_time_s();
    }
    pthread_mutex_unlock(&r->mu);
    r->n_live--;
    engine_mark(e, r);
}

/* End every choice of a request that holds no slot (still queued). */
static void req_end_unslotted(spud_engine_req *r, spud_finish f) {
    pthread_mutex_lock(&r->mu);
    for (int32_t c = 0; c < r->n_choices; c++)
        if (r->out[c].finish == SPUD_FINISH_NONE) {
            r->out[c].finish = f;
            r->n_done++;
        }
    r->t_done = spud_time_s();
    pthread_mutex_unlock(&r->mu);
    r->n_live = 0;
    req_signal(r->efd);
}

/* ---- slots ---- */

static bool slot_hold(eng_slot *s, const char *text, size_t len) {
    if (s->n_held + len > s->cap_held) {
        size_t cap = s->cap_held * 2 > s->n_held + len ? s->cap_held * 2 : s->n_held + len;
        char *t = spud_realloc(s->held, cap);
        if (!t) return false;
        s->held = t;
        s->cap_held = cap;
    }
    memcpy(s->held + s->n_held, text, len);
    s->n_held += len;
    return true;
}

/* Hand out the held text that cannot be the start of a stop string (all of
 * it when final). Returns 1 if a stop string matched (the text before it was
 * handed out), 0 if not, -1 when out of memory. */
static int slot_emit(spud_engine_req *r, eng_slot *s, bool final) {
    size_t n = s->n_held, cut = SIZE_MAX;
    for (size_t i = 0; i < r->n_stop; i++) {
        const char *p = memmem(s->held, n, r->stop[i], r->stop_len[i]);
        if (p && (size_t)(p - s->held) < cut) cut = (size_t)(p - s->held);
    }
    if (cut != SIZE_MAX) {
        bool ok = req_append(r, s->choice, s->held, cut, s->lp_held, cut > 0 ? s->n_lp_held : 0);
        s->n_held = 0;
        s->n_lp_held = 0;
        return ok ? 1 : -1;
    }
    size_t keep = 0;
    if (!final)
        for (size_t i = 0; i < r->n_stop; i++) {
            size_t l = r->stop_len[i] - 1 < n ? r->stop_len[i] - 1 : n;
            for (; l > keep; l--)
                if (!memcmp(s->held + n - l, r->stop[i], l)) {
                    keep = l;
                    break;
                }
        }
    size_t emit = n - keep;
    bool flush_lp = emit > 0 || keep == 0;
    if (emit > 0 || (flush_lp && s->n_lp_held > 0)) {
        if (!req_append(r, s->choice, s->held, emit, s->lp_held, flush_lp ? s->n_lp_held : 0))
            return -1;
        if (flush_lp) s->n_lp_held = 0;
    }
    memmove(s->held, s->held + emit, keep);
    s->n_held = keep;
    return 0;
}

/* End the slot's choice: optionally flush the detokenizer and held text, free
 * the slot (its history stays for prefix reuse). */
static void slot_end(spud_engine *e, int32_t si, spud_finish f, bool flush) {
    eng_slot *s = &e->slots[si];
    spud_engine_req *r = s->req;
    if (flush) {
        char buf[8];
        size_t k = spud_detok_flush(&s->dt, buf, sizeof buf);
        int rc = slot_hold(s, buf, k) ? slot_emit(r, s, true) : -1;
        if (rc == 1) f = SPUD_FINISH_STOP;
        if (rc < 0) {
            pthread_mutex_lock(&r->mu);
            snprintf(r->err, sizeof r->err, "out of memory");
            pthread_mutex_unlock(&r->mu);
            f = SPUD_FINISH_ERROR;
        }
    }
    req_end_choice(e, r, s->choice, f, s->n_gen);
    spud_sampler_free(s->smp);
    s->smp = NULL;
    s->gs = NULL;
    s->req = NULL;
    s->state = SLOT_FREE;
    s->n_held = 0;
    s->n_lp_held = 0;
    s->last_used = ++e->tick;
    if (e->prefilling == r && r->slot_of[0] == si) e->prefilling = NULL;
}

/* End every choice of r that still holds a slot. */
static void req_end_slots(spud_engine *e, spud_engine_req *r, spud_finish f) {
    for (int32_t c = 0; c < r->n_choices; c++) {
        int32_t si = r->slot_of[c];
        if (si >= 0 && e->slots[si].req == r) slot_end(e, si, f, false);
    }
    if (e->prefilling == r) e->prefilling = NULL;
}

static void req_fail(spud_engine *e, spud_engine_req *r, const char *msg) {
    pthread_mutex_lock(&r->mu);
    snprintf(r->err, sizeof r->err, "%s", msg);
    pthread_mutex_unlock(&r->mu);
    req_end_slots(e, r, SPUD_FINISH_ERROR);
}

/* log-softmax of the logits at `tok`, and the top k alternatives. */
static void compute_logprobs(const float *lg, int32_t nv, int32_t tok, int32_t k, spud_logprob *out) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < nv; i++)
        if (lg[i] > mx) mx = lg[i];
    double sum = 0;
    for (int32_t i = 0; i < nv; i++)
        if (lg[i] > -INFINITY) sum += exp((double)lg[i] - mx);
    double lse = (double)mx + log(sum);
    out->token = tok;
    out->logprob = isfinite(lg[tok]) ? (float)(lg[tok] - lse) : -9999.0f;
    out->n_top = 0;
    /* insertion into a descending list of at most k */
    for (int32_t i = 0; i < nv && k > 0; i++) {
        float v = lg[i];
        if (!(v > -INFINITY)) continue;
        int32_t n = out->n_top;
        if (n == k && v <= out->top[n - 1].logprob) continue;
        int32_t j = n < k ? n++ : n - 1;
        while (j > 0 && out->top[j - 1].logprob < v) {
            out->top[j] = out->top[j - 1];
            j--;
        }
        out->top[j].token = i;
        out->top[j].logprob = v;
        out->n_top = n;
    }
    for (int32_t j = 0; j < out->n_top; j++) out->top[j].logprob = (float)(out->top[j].logprob - lse);
}

/* Bytes of marker mk matched after byte c, given m matched before (the
 * longest suffix of the text that is a prefix of mk). */
static uint8_t marker_step(const char *mk, uint8_t m, char c) {
    for (;;) {
        if (mk[m] == c) return (uint8_t)(m + 1);
        if (m == 0) return 0;
        uint8_t k = (uint8_t)(m - 1); /* fall back to the longest proper border of mk[0..m) */
        while (k > 0 && memcmp(mk, mk + m - k, k)) k--;
        m = k;
    }
}

/* Count a new token's text in the reasoning tally and follow the think
 * markers through it. */
static void slot_think(const spud_engine_req *r, eng_slot *s, const char *text, size_t len) {
    if (!r->think[1][0][0] && !r->think[1][1][0]) return;
    if (s->in_think) s->n_think++;
    for (size_t i = 0; i < len; i++)
        for (int v = 0; v < 2; v++) {
            const char *mk = r->think[s->in_think][v];
            if (!mk[0]) continue;
            s->think_m[v] = marker_step(mk, s->think_m[v], text[i]);
            if (!mk[s->think_m[v]]) {
                s->in_think = !s->in_think;
                s->think_m[0] = s->think_m[1] = 0;
                break;
            }
        }
}

/* Sample the slot's next token from its logits row and hand out its text. */
static void slot_sample(spud_engine *e, int32_t si, const float *lg) {
    eng_slot *s = &e->slots[si];
    spud_engine_req *r = s->req;
    if (r->n_bias || s->gs) {
        memcpy(e->biased, lg, (size_t)e->nv * sizeof(float));
        for (size_t i = 0; i < r->n_bias; i++) e->biased[r->bias[i].token] += r->bias[i].bias;
        lg = e->biased;
    }
    /* A lazy grammar that waits for its trigger masks only the tokens that
     * would complete the trigger with bytes the grammar refuses. */
    if (s->gs) {
        spud_status st = spud_grammar_apply(s->gs, e->biased, e->nv);
        if (st) {
            char msg[256];
            snprintf(msg, sizeof msg, "grammar: %s", spud_last_error());
            req_fail(e, r, msg);
            return;
        }
    }
    int32_t tok = spud_sampler_sample(s->smp, lg, e->nv);
    if (s->n_gen == 0) {
        pthread_mutex_lock(&r->mu);
        if (r->t_first == 0) r->t_first = spud_time_s();
        pthread_mutex_unlock(&r->mu);
    }
    if (spud_token_is_eog(e->m, tok)) {
        slot_end(e, si, SPUD_FINISH_STOP, true);
        return;
    }
    if (s->gs && spud_grammar_accept(s->gs, tok) != SPUD_OK) { /* cannot happen after the mask */
        char msg[256];
        snprintf(msg, sizeof msg, "grammar: %s", spud_last_error());
        req_fail(e, r, msg);
        return;
    }
    spud_sampler_accept(s->smp, tok);
    s->n_gen++;
    e->add_gen++;
    size_t k = spud_detok_push(&s->dt, e->m->tok, tok, e->piece, e->piece_cap);
    slot_think(r, s, e->piece, k);
    pthread_mutex_lock(&r->mu);
    r->out[s->choice].n_gen = s->n_gen;
    r->out[s->choice].n_reasoning = s->n_think;
    pthread_mutex_unlock(&r->mu);
    engine_mark(e, r);
    if (r->logprobs) {
        if (s->n_lp_held == s->cap_lp_held) {
            size_t cap = s->cap_lp_held ? s->cap_lp_held * 2 : 8;
            spud_logprob *t = spud_realloc(s->lp_held, cap * sizeof *t);
            if (!t) {
                req_fail(e, r, "out of memory");
                return;
            }
            s->lp_held = t;
            s->cap_lp_held = cap;
        }
        compute_logprobs(lg, e->nv, tok, r->top_logprobs, &s->lp_held[s->n_lp_held++]);
    }
    int rc = slot_hold(s, e->piece, k) ? slot_emit(r, s, false) : -1;
    if (rc < 0) {
        req_fail(e, r, "out of memory");
    } else if (rc == 1) {
        slot_end(e, si, SPUD_FINISH_STOP, false);
    } else if (s->gs && spud_grammar_is_finished(s->gs)) {
        slot_end(e, si, SPUD_FINISH_STOP, true); /* only end-of-generation could follow */
    } else if ((r->max_tokens > 0 && s->n_gen >= r->max_tokens) || s->n_hist >= e->n_ctx) {
        slot_end(e, si, SPUD_FINISH_LENGTH, true);
    } else {
        s->next = tok;
    }
}

/* ---- scheduling ---- */

static uint32_t common_prefix(const int32_t *a, uint32_t na, const int32_t *b, uint32_t nb) {
    uint32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* Give r its slots: choice 0 the free slot with the longest cached prefix of
 * the prompt (or a copy of a longer prefix from a busy slot), the others the
 * least recently used free slots. */
static void engine_start(spud_engine *e, spud_engine_req *r) {
    uint32_t limit = r->n_prompt - 1; /* the last prompt row is always computed, for its logits */
    int32_t best_free = -1, best_any = -1;
    uint32_t lcp_free = 0, lcp_any = 0;
    for (int32_t i = 0; i < e->n_par; i++) {
        eng_slot *s = &e->slots[i];
        uint32_t l = common_prefix(s->hist, s->n_hist, r->prompt, r->n_prompt);
        if (l > limit) l = limit;
        if (s->state == SLOT_FREE) {
            if (best_free < 0 || l > lcp_free ||
                (l == lcp_free && s->last_used < e->slots[best_free].last_used)) {
                best_free = i;
                lcp_free = l;
            }
        } else if (s->state == SLOT_GEN && l > lcp_any) {
            best_any = i;
            lcp_any = l;
        }
    }
    eng_slot *s0 = &e->slots[best_free];
    uint32_t cached = lcp_free;
    if (best_any >= 0 && lcp_any > lcp_free &&
        spud_ctx_seq_copy(e->ctx, (uint32_t)best_any, (uint32_t)best_free, lcp_any) == SPUD_OK) {
        memcpy(s0->hist, e->slots[best_any].hist, lcp_any * sizeof(int32_t));
        cached = lcp_any;
    }
    spud_ctx_seq_truncate(e->ctx, (uint32_t)best_free, cached);
    s0->n_hist = cached;
    s0->req = r;
    s0->choice = 0;
    s0->state = SLOT_PREFILL;
    r->slot_of[0] = best_free;
    for (int32_t c = 1; c < r->n_choices; c++) {
        int32_t pick = -1;
        for (int32_t i = 0; i < e->n_par; i++)
            if (e->slots[i].state == SLOT_FREE &&
                (pick < 0 || e->slots[i].last_used < e->slots[pick].last_used))
                pick = i;
        eng_slot *s = &e->slots[pick];
        spud_ctx_seq_truncate(e->ctx, (uint32_t)pick, 0);
        s->n_hist = 0;
        s->req = r;
        s->choice = c;
        s->state = SLOT_WAIT;
        r->slot_of[c] = pick;
    }
    r->n_prefilled = cached;
    r->n_live = r->n_choices;
    pthread_mutex_lock(&r->mu);
    r->n_cached = cached;
    pthread_mutex_unlock(&r->mu);
    e->add_prompt += r->n_prompt;
    e->add_cached += cached;
    e->prefilling = r;
    e->prefill_slot = best_free;
    for (int32_t c = 0; c < r->n_choices; c++) {
        eng_slot *s = &e->slots[r->slot_of[c]];
        spud_sampler_params sp = r->sp;
        sp.seed += (uint64_t)c;
        s->smp = spud_sampler_new(&sp, e->nv);
        s->gs = r->gs ? r->gs[c] : NULL;
        spud_detok_init(&s->dt);
        s->n_held = 0;
        s->n_lp_held = 0;
        s->n_gen = 0;
        s->in_think = r->in_reasoning;
        s->think_m[0] = s->think_m[1] = 0;
        s->n_think = 0;
        if (!s->smp) {
            req_fail(e, r, "out of memory");
            return;
        }
    }
}

/* Cancelled requests: free their slots before the next step. */
static void engine_reap(spud_engine *e) {
    for (int32_t i = 0; i < e->n_par; i++) {
        eng_slot *s = &e->slots[i];
        spud_engine_req *r = s->req;
        if (r && atomic_load(&r->cancel))
            req_end_slots(e, r, SPUD_FINISH_CANCELLED);
        else if (r && s->state == SLOT_GEN && atomic_load(&r->end[s->choice]))
            slot_end(e, i, SPUD_FINISH_STOP, false);
    }
}

/* Drop cancelled requests from the queue (wherever they are in it). */
static void engine_drop_cancelled(spud_engine *e) {
    spud_engine_req *dropped = NULL;
    pthread_mutex_lock(&e->mu);
    spud_engine_req **pp = &e->q_head, *last = NULL;
    while (*pp) {
        spud_engine_req *r = *pp;
        if (atomic_load(&r->cancel)) {
            *pp = r->next;
            e->q_len--;
            r->next = dropped;
            dropped = r;
        } else {
            last = r;
            pp = &r->next;
        }
    }
    e->q_tail = last;
    pthread_mutex_unlock(&e->mu);
    while (dropped) {
        spud_engine_req *next = dropped->next;
        dropped->next = NULL;
        req_end_unslotted(dropped, SPUD_FINISH_CANCELLED);
        req_unref(dropped);
        dropped = next;
    }
}

/* Start queued requests while there is no prompt being prefilled and the head fits. */
static void engine_admit(spud_engine *e) {
    engine_drop_cancelled(e);
    while (!e->prefilling) {
        pthread_mutex_lock(&e->mu);
        spud_engine_req *r = e->q_head;
        if (!r) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        int32_t n_free = 0;
        for (int32_t i = 0; i < e->n_par; i++) n_free += e->slots[i].state == SLOT_FREE;
        if (n_free < r->n_choices) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        e->q_head = r->next;
        if (!e->q_head) e->q_tail = NULL;
        e->q_len--;
        pthread_mutex_unlock(&e->mu);
        r->next = NULL;
        engine_start(e, r);
    }
}

/* One forward pass: a row per generating slot plus a chunk of the prompt being prefilled. */
static void engine_step(spud_engine *e) {
    size_t n = 0;
    int32_t n_gen = 0;
    for (int32_t i = 0; i < e->n_par; i++) {
        eng_slot *s = &e->slots[i];
        if (s->state != SLOT_GEN) continue;
        e->in[n] = (spud_input){.token = s->next};
        e->seq[n] = (uint32_t)i;
        e->want[n] = true;
        e->row_slot[n_gen++] = i;
        n++;
    }
    spud_engine_req *pr = e->prefilling;
    uint32_t k = 0;
    bool prefill_done = false;
    if (pr) {
        uint32_t left = pr->n_prompt - pr->n_prefilled;
        uint32_t chunk = n_gen > 0 ? (uint32_t)e->chunk : ENGINE_IDLE_CHUNK;
        k = left < chunk ? left : chunk;
        prefill_done = k == left;
        for (uint32_t j = 0; j < k; j++) {
            e->in[n] = (spud_input){.token = pr->prompt[pr->n_prefilled + j]};
            e->seq[n] = (uint32_t)e->prefill_slot;
            e->want[n] = prefill_done && j == k - 1;
            n++;
        }
    }
    if (n == 0) return;
    const float *logits = NULL;
    spud_batch b = {.in = e->in, .seq = e->seq, .want_logits = e->want, .n = n};
    if (spud_decode_batch(e->ctx, &b, &logits) != SPUD_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "forward pass failed: %s", spud_last_error());
        spud_log(SPUD_LOG_ERROR, "engine: %s", msg);
        for (int32_t j = 0; j < n_gen; j++) {
            eng_slot *s = &e->slots[e->row_slot[j]];
            if (s->req) req_fail(e, s->req, msg);
        }
        if (pr) req_fail(e, pr, msg);
        /* the cache may hold part of the batch: forget these slots' histories */
        for (int32_t i = 0; i < e->n_par; i++) {
            eng_slot *s = &e->slots[i];
            if (s->state == SLOT_FREE && spud_ctx_seq_n_past(e->ctx, (uint32_t)i) != s->n_hist) {
                spud_ctx_seq_truncate(e->ctx, (uint32_t)i, 0);
                s->n_hist = 0;
            }
        }
        return;
    }
    e->add_steps++;
    for (int32_t j = 0; j < n_gen; j++) {
        eng_slot *s = &e->slots[e->row_slot[j]];
        s->hist[s->n_hist++] = s->next;
    }
    if (pr) {
        eng_slot *ps = &e->slots[e->prefill_slot];
        memcpy(ps->hist + ps->n_hist, pr->prompt + pr->n_prefilled, k * sizeof(int32_t));
        ps->n_hist += k;
        pr->n_prefilled += k;
    }
    for (int32_t j = 0; j < n_gen; j++) {
        int32_t si = e->row_slot[j];
        if (e->slots[si].state == SLOT_GEN) slot_sample(e, si, logits + (size_t)j * (size_t)e->nv);
    }
    if (prefill_done && e->prefilling == pr) {
        const float *lg = logits + (size_t)n_gen * (size_t)e->nv;
        int32_t src = pr->slot_of[0];
        e->prefilling = NULL;
        for (int32_t c = 1; c < pr->n_choices; c++) {
            int32_t si = pr->slot_of[c];
            if (spud_ctx_seq_copy(e->ctx, (uint32_t)src, (uint32_t)si, pr->n_prompt) != SPUD_OK) {
                req_fail(e, pr, spud_last_error());
                return;
            }
            memcpy(e->slots[si].hist, e->slots[src].hist, pr->n_prompt * sizeof(int32_t));
            e->slots[si].n_hist = pr->n_prompt;
        }
        for (int32_t c = 0; c < pr->n_choices; c++) e->slots[pr->slot_of[c]].state = SLOT_GEN;
        for (int32_t c = 0; c < pr->n_choices; c++) {
            int32_t si = pr->slot_of[c];
            if (e->slots[si].req == pr) slot_sample(e, si, lg);
        }
    }
}

/* Signal readers, drop the engine's reference to ended requests, update stats. */
static void engine_publish(spud_engine *e) {
    int32_t active = 0;
    uint64_t used = 0, cached = 0;
    for (int32_t i = 0; i < e->n_par; i++) {
        if (e->slots[i].state == SLOT_FREE) {
            cached += e->slots[i].n_hist;
        } else {
            active++;
            used += e->slots[i].n_hist;
        }
    }
    pthread_mutex_lock(&e->mu);
    e->stats.n_active = active;
    e->stats.kv_used = used;
    e->stats.kv_cached = cached;
    e->stats.prompt_tokens += e->add_prompt;
    e->stats.prompt_cached_tokens += e->add_cached;
    e->stats.generated_tokens += e->add_gen;
    e->stats.steps += e->add_steps;
    pthread_mutex_unlock(&e->mu);
    e->add_prompt = e->add_cached = e->add_gen = e->add_steps = 0;
    for (int32_t i = 0; i < e->n_dirty; i++) {
        spud_engine_req *r = e->dirty[i];
        r->dirty = false;
        req_signal(r->efd);
        if (r->n_live == 0) req_unref(r);
    }
    e->n_dirty = 0;
}

static bool engine_busy(const spud_engine *e) {
    for (int32_t i = 0; i < e->n_par; i++)
        if (e->slots[i].state != SLOT_FREE) return true;
    return false;
}

static void *engine_main(void *arg) {
    spud_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && !e->q_head && !engine_busy(e)) pthread_cond_wait(&e->cv, &e->mu);
        bool stop = e->stopping;
        pthread_mutex_unlock(&e->mu);
        if (stop) break;
        engine_reap(e);
        engine_admit(e);
        engine_step(e);
        engine_publish(e);
    }
    /* Shut down: end everything that runs or waits. */
    for (int32_t i = 0; i < e->n_par; i++)
        if (e->slots[i].req) req_end_slots(e, e->slots[i].req, SPUD_FINISH_CANCELLED);
    engine_publish(e);
    pthread_mutex_lock(&e->mu);
    spud_engine_req *q = e->q_head;
    e->q_head = e->q_tail = NULL;
    e->q_len = 0;
    e->stopped = true;
    pthread_mutex_unlock(&e->mu);
    while (q) {
        spud_engine_req *next = q->next;
        req_end_unslotted(q, SPUD_FINISH_CANCELLED);
        req_unref(q);
        q = next;
    }
    return NULL;
}

/* ---- public ---- */

spud_status spud_engine_new(const spud_model *m, const spud_engine_params *p, spud_engine **out) {
    spud_status st;
    spud_engine *e;
    *out = NULL;
    e = spud_calloc(1, sizeof *e);
    if (!e) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    e->m = m;
    e->nv = spud_model_n_vocab(m);
    e->n_par = p && p->n_parallel > 0 ? p->n_parallel : 4;
    e->max_queue = p && p->max_queue > 0 ? p->max_queue : 256;
    e->chunk = p && p->prefill_chunk > 0 ? p->prefill_chunk : 64;
    if (e->chunk > ENGINE_IDLE_CHUNK) e->chunk = ENGINE_IDLE_CHUNK;
    e->n_ctx = p ? p->n_ctx : 0;
    if (e->n_ctx == 0) {
        e->n_ctx = spud_model_n_ctx_train(m);
        if (e->n_ctx == 0 || e->n_ctx > 4096) e->n_ctx = 4096;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->vmu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if ((st = spud_ctx_new_multi(m, e->n_ctx, (uint32_t)e->n_par, &e->ctx))) goto fail;
    size_t rows = (size_t)e->n_par + ENGINE_IDLE_CHUNK;
    e->slots = spud_calloc((size_t)e->n_par, sizeof *e->slots);
    e->in = spud_calloc(rows, sizeof *e->in);
    e->seq = spud_calloc(rows, sizeof *e->seq);
    e->want = spud_calloc(rows, sizeof *e->want);
    e->row_slot = spud_calloc((size_t)e->n_par, sizeof *e->row_slot);
    e->dirty = spud_calloc((size_t)e->n_par + 1, sizeof *e->dirty);
    e->biased = spud_malloc((size_t)e->nv * sizeof(float));
    e->piece_cap = SPUD_DETOK_OUT_MAX(spud_tok_max_piece_len(m->tok));
    e->piece = spud_malloc(e->piece_cap);
    if (!e->slots || !e->in || !e->seq || !e->want || !e->row_slot || !e->dirty || !e->biased ||
        !e->piece)
        goto nomem;
    for (int32_t i = 0; i < e->n_par; i++) {
        eng_slot *s = &e->slots[i];
        s->hist = spud_malloc((size_t)e->n_ctx * sizeof(int32_t));
        s->cap_held = SPUD_ENGINE_MAX_STOP_LEN + e->piece_cap + 8;
        s->held = spud_malloc(s->cap_held);
        if (!s->hist || !s->held) goto nomem;
    }
    e->stats.n_slots = e->n_par;
    e->stats.n_ctx = e->n_ctx;
    e->stats.kv_capacity = (uint64_t)e->n_par * e->n_ctx;
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        st = spud_errorf(SPUD_ERR_NOMEM, "cannot start the engine thread");
        goto fail;
    }
    e->thread_started = true;
    *out = e;
    return SPUD_OK;
nomem:
    st = spud_errorf(SPUD_ERR_NOMEM, "out of memory");
fail:
    spud_engine_free(e);
    return st;
}

void spud_engine_stop(spud_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started) {
        pthread_join(e->thread, NULL);
        e->thread_started = false;
    }
    pthread_mutex_lock(&e->mu);
    e->stopped = true;
    pthread_mutex_unlock(&e->mu);
}

void spud_engine_free(spud_engine *e) {
    if (!e) return;
    spud_engine_stop(e);
    if (e->slots)
        for (int32_t i = 0; i < e->n_par; i++) {
            spud_free(e->slots[i].hist);
            spud_free(e->slots[i].held);
            spud_free(e->slots[i].lp_held);
            spud_sampler_free(e->slots[i].smp);
        }
    spud_free(e->slots);
    spud_free(e->in);
    spud_free(e->seq);
    spud_free(e->want);
    spud_free(e->row_slot);
    spud_free(e->dirty);
    spud_free(e->biased);
    spud_free(e->piece);
    spud_ctx_free(e->ctx);
    spud_grammar_vocab_free(e->gvocab);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->vmu);
    pthread_mutex_destroy(&e->mu);
    spud_free(e);
}

uint32_t spud_engine_n_ctx(const spud_engine *e) { return e->n_ctx; }

const spud_grammar_vocab *spud_engine_grammar_vocab(spud_engine *e) {
    pthread_mutex_lock(&e->vmu);
    if (!e->gvocab && spud_grammar_vocab_from_tokenizer(e->m->tok, &e->gvocab) != SPUD_OK) e->gvocab = NULL;
    spud_grammar_vocab *v = e->gvocab;
    pthread_mutex_unlock(&e->vmu);
    return v;
}
int32_t spud_engine_n_parallel(const spud_engine *e) { return e->n_par; }

void spud_engine_get_stats(spud_engine *e, spud_engine_stats *s) {
    pthread_mutex_lock(&e->mu);
    *s = e->stats;
    s->queue_depth = e->q_len;
    pthread_mutex_unlock(&e->mu);
}

/* Checks that need no request yet; the caller frees p->grammar on failure. */
static spud_status submit_check(spud_engine *e, const spud_engine_req_params *p) {
    if (p->n_prompt == 0 || p->n_prompt > e->n_ctx)
        return spud_errorf(SPUD_ERR_INVALID, "the prompt is %zu tokens; the context holds 1 to %u",
                           p->n_prompt, e->n_ctx);
    if (p->n_choices < 1 || p->n_choices > e->n_par)
        return spud_errorf(SPUD_ERR_INVALID, "%d choices asked; this server runs at most %d at once",
                           (int)p->n_choices, (int)e->n_par);
    if (p->top_logprobs < 0 || p->top_logprobs > SPUD_ENGINE_MAX_TOP_LOGPROBS)
        return spud_errorf(SPUD_ERR_INVALID, "top_logprobs must be 0 to %d", SPUD_ENGINE_MAX_TOP_LOGPROBS);
    if (p->n_stop > SPUD_ENGINE_MAX_STOP)
        return spud_errorf(SPUD_ERR_INVALID, "at most %d stop strings", SPUD_ENGINE_MAX_STOP);
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= e->nv)
            return spud_errorf(SPUD_ERR_INVALID, "token id %d is out of range (vocabulary: %d)",
                               (int)p->prompt[i], (int)e->nv);
    for (size_t i = 0; i < p->n_bias; i++)
        if (p->bias[i].token < 0 || p->bias[i].token >= e->nv || !isfinite(p->bias[i].bias))
            return spud_errorf(SPUD_ERR_INVALID, "logit bias for token %d is invalid",
                               (int)p->bias[i].token);
    for (size_t i = 0; i < p->n_stop; i++) {
        size_t l = strlen(p->stop[i]);
        if (l == 0 || l > SPUD_ENGINE_MAX_STOP_LEN)
            return spud_errorf(SPUD_ERR_INVALID, "stop strings must be 1 to %d bytes",
                               SPUD_ENGINE_MAX_STOP_LEN);
    }
    if (p->n_triggers && !p->grammar) return spud_errorf(SPUD_ERR_INVALID, "trigger words need a grammar");
    bool any_open = false, any_close = false;
    for (int v = 0; v < 2; v++) {
        const char *mk[2] = {p->think_open[v], p->think_close[v]};
        for (int w = 0; w < 2; w++)
            if (mk[w] && (!mk[w][0] || strlen(mk[w]) > SPUD_ENGINE_MAX_THINK_LEN))
                return spud_errorf(SPUD_ERR_INVALID, "think markers must be 1 to %d bytes",
                                   SPUD_ENGINE_MAX_THINK_LEN);
        any_open |= mk[0] != NULL;
        any_close |= mk[1] != NULL;
    }
    if (any_open != any_close) return spud_errorf(SPUD_ERR_INVALID, "think markers need an open and a close one");
    return SPUD_OK;
}

/* One grammar matcher per choice (made here, on the caller's thread). */
static spud_status submit_grammar(spud_engine *e, spud_engine_req *r, const spud_engine_req_params *p) {
    const spud_grammar_vocab *v = spud_engine_grammar_vocab(e);
    if (!v) return spud_errorf(SPUD_ERR_NOMEM, "grammar vocabulary: %s", spud_last_error());
    if (spud_grammar_vocab_n(v) != e->nv)
        return spud_errorf(SPUD_ERR_INVALID, "the grammar vocabulary has %d tokens, the model %d logits",
                           (int)spud_grammar_vocab_n(v), (int)e->nv);
    r->gs = spud_calloc((size_t)p->n_choices, sizeof *r->gs);
    if (!r->gs) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    for (int32_t c = 0; c < p->n_choices; c++) {
        spud_status st = spud_grammar_state_new(p->grammar, v, p->triggers, p->n_triggers, &r->gs[c]);
        if (st == SPUD_ERR_NOMEM) return st;
        if (st) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", spud_last_error());
            return spud_errorf(SPUD_ERR_INVALID, "%s", msg);
        }
    }
    return SPUD_OK;
}

spud_status spud_engine_submit(spud_engine *e, const spud_engine_req_params *p, spud_engine_req **out) {
    *out = NULL;
    spud_status st = submit_check(e, p);
    if (st) {
        spud_grammar_free(p->grammar);
        return st;
    }
    spud_engine_req *r = spud_calloc(1, sizeof *r);
    if (!r) {
        spud_grammar_free(p->grammar);
        return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    }
    r->grammar = p->grammar; /* owned from here on, freed by req_unref */
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancel, false);
    pthread_mutex_init(&r->mu, NULL);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->n_prompt = (uint32_t)p->n_prompt;
    r->n_choices = p->n_choices;
    r->max_tokens = p->max_tokens;
    r->sp = p->sampling;
    r->logprobs = p->logprobs;
    r->top_logprobs = p->logprobs ? p->top_logprobs : 0;
    r->t_submit = spud_time_s();
    r->prompt = spud_malloc(p->n_prompt * sizeof(int32_t));
    r->slot_of = spud_malloc((size_t)p->n_choices * sizeof(int32_t));
    r->out = spud_calloc((size_t)p->n_choices, sizeof *r->out);
    r->end = spud_calloc((size_t)p->n_choices, sizeof *r->end);
    if (p->n_bias) r->bias = spud_malloc(p->n_bias * sizeof *r->bias);
    bool ok = r->efd >= 0 && r->prompt && r->slot_of && r->out && r->end && (!p->n_bias || r->bias);
    for (int32_t c = 0; ok && c < p->n_choices; c++) atomic_init(&r->end[c], false);
    for (int v = 0; v < 2; v++) {
        if (p->think_open[v]) snprintf(r->think[0][v], sizeof r->think[0][v], "%s", p->think_open[v]);
        if (p->think_close[v]) snprintf(r->think[1][v], sizeof r->think[1][v], "%s", p->think_close[v]);
    }
    r->in_reasoning = p->in_reasoning && (p->think_close[0] || p->think_close[1]);
    for (size_t i = 0; ok && i < p->n_stop; i++) {
        r->stop_len[i] = strlen(p->stop[i]);
        r->stop[i] = spud_strndup(p->stop[i], r->stop_len[i]);
        ok = r->stop[i] != NULL;
        r->n_stop = i + 1;
    }
    if (!ok) {
        atomic_store(&r->refs, 1);
        req_unref(r);
        return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    }
    if (p->grammar && (st = submit_grammar(e, r, p)) != SPUD_OK) {
        atomic_store(&r->refs, 1);
        req_unref(r);
        return st;
    }
    memcpy(r->prompt, p->prompt, p->n_prompt * sizeof(int32_t));
    for (int32_t c = 0; c < p->n_choices; c++) r->slot_of[c] = -1;
    if (p->n_bias) memcpy(r->bias, p->bias, p->n_bias * sizeof *r->bias);
    r->n_bias = p->n_bias;

    pthread_mutex_lock(&e->mu);
    if (e->stopping || e->stopped) {
        st = spud_errorf(SPUD_ERR_INVALID, "the engine is shutting down");
    } else if (e->q_len >= e->max_queue) {
        st = spud_errorf(SPUD_ERR_RANGE, "the queue is full (%d requests waiting)", (int)e->q_len);
    } else {
        if (e->q_tail)
            e->q_tail->next = r;
        else
            e->q_head = r;
        e->q_tail = r;
        e->q_len++;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (st) {
        atomic_store(&r->refs, 1);
        req_unref(r);
        return st;
    }
    *out = r;
    return SPUD_OK;
}

int spud_engine_req_fd(const spud_engine_req *r) { return r->efd; }

bool spud_engine_req_wait(spud_engine_req *r, int timeout_ms) {
    struct pollfd pfd = {.fd = r->efd, .events = POLLIN};
    int k;
    do {
        k = poll(&pfd, 1, timeout_ms);
    } while (k < 0 && errno == EINTR);
    if (k <= 0) return false;
    uint64_t v;
    ssize_t n = read(r->efd, &v, sizeof v);
    (void)n;
    return true;
}

void spud_engine_req_take(spud_engine_req *r, int32_t choice, spud_engine_delta *d) {
    d->len = 0;
    d->n_lp = 0;
    if (choice < 0 || choice >= r->n_choices) return;
    choice_out *o = &r->out[choice];
    pthread_mutex_lock(&r->mu);
    bool ok = true;
    if (d->cap < o->len + 1) {
        size_t cap = o->len + 1 > 2 * d->cap ? o->len + 1 : 2 * d->cap;
        char *t = spud_realloc(d->text, cap);
        if (t) {
            d->text = t;
            d->cap = cap;
        } else {
            ok = false;
        }
    }
    if (ok && d->cap_lp < o->n_lp) {
        spud_logprob *t = spud_realloc(d->lp, o->n_lp * sizeof *t);
        if (t) {
            d->lp = t;
            d->cap_lp = o->n_lp;
        } else {
            ok = false;
        }
    }
    if (ok) { /* on failure the output stays for the next take */
        if (o->len) memcpy(d->text, o->text, o->len);
        d->len = o->len;
        d->text[d->len] = 0;
        if (o->n_lp) memcpy(d->lp, o->lp, o->n_lp * sizeof *d->lp);
        d->n_lp = o->n_lp;
        o->len = 0;
        o->n_lp = 0;
        d->finish = o->finish;
    }
    d->n_gen = o->n_gen;
    d->n_reasoning = o->n_reasoning;
    pthread_mutex_unlock(&r->mu);
}

bool spud_engine_req_done(spud_engine_req *r) {
    pthread_mutex_lock(&r->mu);
    bool done = r->n_done == r->n_choices;
    pthread_mutex_unlock(&r->mu);
    return done;
}

void spud_engine_req_get_info(spud_engine_req *r, spud_engine_req_info *info) {
    pthread_mutex_lock(&r->mu);
    info->n_prompt = r->n_prompt;
    info->n_cached = r->n_cached;
    info->t_submit = r->t_submit;
    info->t_first = r->t_first;
    info->t_done = r->t_done;
    pthread_mutex_unlock(&r->mu);
}

const char *spud_engine_req_error(spud_engine_req *r) { return r->err; }

void spud_engine_req_cancel(spud_engine_req *r) { atomic_store(&r->cancel, true); }

void spud_engine_req_end_choice(spud_engine_req *r, int32_t choice) {
    if (choice >= 0 && choice < r->n_choices) atomic_store(&r->end[choice], true);
}

void spud_engine_req_release(spud_engine_req *r) {
    if (!r) return;
    atomic_store(&r->cancel, true);
    req_unref(r);
}

void spud_engine_delta_free(spud_engine_delta *d) {
    spud_free(d->text);
    spud_free(d->lp);
    *d = (spud_engine_delta){0};
}
