/* chat.c: chat templates from GGUF metadata, rendered with jinja.c. */
#include "chat.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The structural set of one tokenizer: one byte per token id. */
typedef struct structural_set {
    struct structural_set *next;
    uint64_t serial; /* spud_tok_serial of the tokenizer it was computed for */
    uint8_t *is;     /* (n_vocab) nonzero: user-defined token the template writes */
} structural_set;

/* Computed on first use per tokenizer, kept until the template is freed, so
 * a pointer handed out stays valid while other threads add sets. */
typedef struct {
    pthread_mutex_t mu;
    structural_set *sets;
} structural_cache;

struct spud_chat_template {
    spud_jinja_template *tpl;
    char *bos, *eos;
    char *src; /* the template's source text, for spud_chat_template_structural */
    size_t src_len;
    bool is_default;
    structural_cache *cache;
};

/* llama.cpp's and Hugging Face's ChatML */
const char spud_chat_template_chatml[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
    "}}{% endif %}";

spud_status spud_chat_template_new(const char *src, size_t len, const char *bos_token,
                                   const char *eos_token, spud_chat_template **out) {
    *out = NULL;
    spud_chat_template *t = spud_calloc(1, sizeof *t);
    if (!t) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    if (!src) {
        src = spud_chat_template_chatml;
        len = strlen(src);
        t->is_default = true;
    }
    t->bos = spud_strndup(bos_token ? bos_token : "", bos_token ? strlen(bos_token) : 0);
    t->eos = spud_strndup(eos_token ? eos_token : "", eos_token ? strlen(eos_token) : 0);
    t->src = spud_strndup(src, len);
    t->src_len = len;
    t->cache = spud_calloc(1, sizeof *t->cache);
    if (t->cache && pthread_mutex_init(&t->cache->mu, NULL) != 0) {
        spud_free(t->cache);
        t->cache = NULL;
    }
    if (!t->bos || !t->eos || !t->src || !t->cache) {
        spud_chat_template_free(t);
        return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    }
    spud_status st = spud_jinja_parse(src, len, &t->tpl);
    if (st) {
        spud_chat_template_free(t);
        return spud_error_wrap(st, "chat template");
    }
    *out = t;
    return SPUD_OK;
}

/* The text of token `key`'s id, or "" if the model has none. */
static char *token_text(const spud_gguf *g, const char *key) {
    uint32_t id;
    const spud_gguf_kv *toks;
    if (spud_gguf_get_u32(g, key, &id) == SPUD_OK &&
        spud_gguf_get_arr(g, "tokenizer.ggml.tokens", SPUD_GGUF_STRING, &toks) == SPUD_OK &&
        id < toks->arr_n)
        return spud_strndup(toks->arr_strs[id].ptr, toks->arr_strs[id].len);
    return spud_strndup("", 0);
}

spud_status spud_chat_template_from_gguf(const spud_gguf *g, spud_chat_template **out) {
    spud_str src = {0};
    bool has = spud_gguf_get_str(g, "tokenizer.chat_template", &src) == SPUD_OK;
    char *bos = token_text(g, "tokenizer.ggml.bos_token_id");
    char *eos = token_text(g, "tokenizer.ggml.eos_token_id");
    spud_status st;
    if (!bos || !eos) {
        st = spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    } else {
        st = spud_chat_template_new(has ? src.ptr : NULL, has ? src.len : 0, bos, eos, out);
    }
    spud_free(bos);
    spud_free(eos);
    return st;
}

void spud_chat_template_free(spud_chat_template *t) {
    if (!t) return;
    spud_jinja_free(t->tpl);
    spud_free(t->bos);
    spud_free(t->eos);
    spud_free(t->src);
    if (t->cache) {
        for (structural_set *e = t->cache->sets, *next; e; e = next) {
            next = e->next;
            spud_free(e->is);
            spud_free(e);
        }
        pthread_mutex_destroy(&t->cache->mu);
        spud_free(t->cache);
    }
    spud_free(t);
}

bool spud_chat_template_is_default(const spud_chat_template *t) { return t->is_default; }
const char *spud_chat_template_bos(const spud_chat_template *t) { return t->bos; }
const char *spud_chat_template_eos(const spud_chat_template *t) { return t->eos; }

/* Whether text is only white space (U+2581 counts: SentencePiece's space).
 * A forged run of spaces forges no turn, and vocabularies with added white-
 * space tokens would otherwise tokenize every indented message differently
 * from the reference tokenizers. */
static bool only_space(const char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        if (p[i] && strchr(" \t\n\v\f\r", p[i])) {
            i++;
        } else if (n - i >= 3 && memcmp(p + i, "\xe2\x96\x81", 3) == 0) {
            i += 3;
        } else {
            return false;
        }
    }
    return true;
}

static bool contains(const char *hay, size_t n, const char *needle, size_t m) {
    if (m == 0 || m > n) return false;
    for (const char *p = hay, *end = hay + n - m + 1; p < end;) {
        const char *q = memchr(p, needle[0], (size_t)(end - p));
        if (!q) return false;
        if (memcmp(q, needle, m) == 0) return true;
        p = q + 1;
    }
    return false;
}

static spud_status structural_compute(const spud_chat_template *t, const spud_tokenizer *tok, uint8_t **out) {
    int32_t n = spud_tok_n_vocab(tok);
    uint8_t *is = spud_calloc(n > 0 ? (size_t)n : 1, 1);
    if (!is) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    for (int32_t id = 0; id < n; id++) {
        if (!spud_tok_is_user_defined(tok, id)) continue;
        size_t len;
        const char *text = spud_tok_text(tok, id, &len);
        if (text && !only_space(text, len) && contains(t->src, t->src_len, text, len)) is[id] = 1;
    }
    *out = is;
    return SPUD_OK;
}

spud_status spud_chat_template_structural(const spud_chat_template *t, const spud_tokenizer *tok,
                                          const uint8_t **out) {
    *out = NULL;
    uint64_t serial = spud_tok_serial(tok);
    structural_cache *c = t->cache;
    spud_status st = SPUD_OK;
    pthread_mutex_lock(&c->mu);
    structural_set *e = c->sets;
    while (e && e->serial != serial) e = e->next;
    if (!e) {
        /* once per tokenizer: a scan of the source per user-defined token */
        uint8_t *is = NULL;
        st = structural_compute(t, tok, &is);
        if (!st && !(e = spud_malloc(sizeof *e))) {
            spud_free(is);
            st = spud_errorf(SPUD_ERR_NOMEM, "out of memory");
        }
        if (!st) {
            *e = (structural_set){.next = c->sets, .serial = serial, .is = is};
            c->sets = e;
        }
    }
    if (e) *out = e->is;
    pthread_mutex_unlock(&c->mu);
    return st;
}

spud_status spud_chat_render_ex(const spud_chat_template *t, json_object *messages,
                                json_object *tools, bool add_generation_prompt,
                                const spud_jinja_opts *opts, char **out, size_t *out_len) {
    return spud_chat_render_taint(t, messages, tools, add_generation_prompt, opts, out, out_len, NULL);
}

/* The variables whose text is the model's own (from the GGUF file), not the conversation's. */
static const char *const trusted_vars[] = {"bos_token", "eos_token", "add_generation_prompt", NULL};

spud_status spud_chat_render_taint(const spud_chat_template *t, json_object *messages,
                                   json_object *tools, bool add_generation_prompt,
                                   const spud_jinja_opts *opts, char **out, size_t *out_len,
                                   uint8_t **taint) {
    *out = NULL;
    if (taint) *taint = NULL;
    if (!messages || json_object_get_type(messages) != json_type_array)
        return spud_errorf(SPUD_ERR_INVALID, "messages must be a JSON array");
    json_object *vars = json_object_new_object();
    if (!vars) return spud_errorf(SPUD_ERR_NOMEM, "out of memory");
    json_object_object_add(vars, "messages", json_object_get(messages));
    if (tools) json_object_object_add(vars, "tools", json_object_get(tools));
    json_object_object_add(vars, "add_generation_prompt", json_object_new_boolean(add_generation_prompt));
    json_object_object_add(vars, "bos_token", json_object_new_string(t->bos));
    json_object_object_add(vars, "eos_token", json_object_new_string(t->eos));
    spud_jinja_opts o = opts ? *opts : (spud_jinja_opts){0};
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde && !o.now_set) {
        char *end;
        errno = 0;
        long long v = strtoll(sde, &end, 10);
        if (errno || *end) {
            json_object_put(vars);
            return spud_errorf(SPUD_ERR_INVALID, "SOURCE_DATE_EPOCH is not an integer: '%s'", sde);
        }
        o.now = v;
        o.now_set = true;
    }
    o.trusted = trusted_vars;
    spud_status st = spud_jinja_render_taint(t->tpl, vars, &o, out, out_len, taint);
    json_object_put(vars);
    return st;
}

spud_status spud_chat_render(const spud_chat_template *t, json_object *messages,
                             json_object *tools, bool add_generation_prompt, char **out) {
    return spud_chat_render_ex(t, messages, tools, add_generation_prompt, NULL, out, NULL);
}

spud_status spud_chat_tokenize(const spud_chat_template *t, const spud_tokenizer *tok, json_object *messages,
                               json_object *tools, bool add_generation_prompt, bool add_bos, char **text_out,
                               size_t *len_out, int32_t **ids, size_t *n_ids) {
    char *text;
    size_t len;
    uint8_t *taint;
    const uint8_t *structural;
    *ids = NULL;
    *n_ids = 0;
    if (text_out) *text_out = NULL;
    spud_status st = spud_chat_template_structural(t, tok, &structural);
    if (st) return st;
    st = spud_chat_render_taint(t, messages, tools, add_generation_prompt, NULL, &text, &len, &taint);
    if (st) return st;
    /* never EOS: the prompt ends where the model's answer starts */
    st = spud_tok_encode_masked(tok, text, len, false, taint, structural, ids, n_ids);
    spud_free(taint);
    int32_t bos = spud_tok_bos(tok);
    if (!st && add_bos && spud_tok_add_bos(tok) && bos >= 0 && (*n_ids == 0 || (*ids)[0] != bos)) {
        int32_t *more = spud_realloc(*ids, (*n_ids + 1) * sizeof **ids);
        if (more) {
            memmove(more + 1, more, *n_ids * sizeof *more);
            more[0] = bos;
            *ids = more;
            (*n_ids)++;
        } else {
            st = spud_errorf(SPUD_ERR_NOMEM, "out of memory");
        }
    }
    if (st) {
        spud_free(*ids);
        *ids = NULL;
        *n_ids = 0;
        spud_free(text);
        return st;
    }
    if (text_out) {
        *text_out = text;
        if (len_out) *len_out = len;
    } else {
        spud_free(text);
    }
    return SPUD_OK;
}
