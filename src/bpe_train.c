/* bpe_train.c: greedy byte-level BPE training on a small text (see bpe_train.h). */
#include "bpe_train.h"
#include "rng.h"
#include "tokenizer.h"

#include <stdbool.h>
#include <string.h>

/* ---- pre-split (ASCII classes; bytes >= 0x80 are letters) ---- */

static bool is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
static bool is_letter(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool is_other(unsigned char c) { return !is_space(c) && !is_letter(c) && !is_digit(c); }
static bool is_newline(unsigned char c) { return c == '\n' || c == '\r'; }

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* Length of a contraction ('s 't 're 've 'm 'll 'd) at s, 0 if none. */
static size_t contraction(const unsigned char *s, size_t n, bool any_case) {
    if (n < 2 || s[0] != '\'') return 0;
    unsigned char a = any_case ? lower(s[1]) : s[1];
    unsigned char b = n >= 3 ? (any_case ? lower(s[2]) : s[2]) : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S) then \s+ on a whitespace run starting at s[0]. */
static size_t space_run(const unsigned char *s, size_t n) {
    size_t k = 0;
    while (k < n && is_space(s[k])) k++;
    if (k == n || k == 1) return k; /* to the end, or a lone space before a word */
    return k - 1;                   /* leave the last one to lead the next word */
}

static size_t split_gpt2(const unsigned char *s, size_t n) {
    size_t k = contraction(s, n, false);
    if (k) return k;
    size_t i = (s[0] == ' ' && n > 1) ? 1 : 0; /* optional leading space */
    if (is_letter(s[i])) {
        while (i < n && is_letter(s[i])) i++;
        return i;
    }
    if (is_digit(s[i])) {
        while (i < n && is_digit(s[i])) i++;
        return i;
    }
    if (is_other(s[i])) {
        while (i < n && is_other(s[i])) i++;
        return i;
    }
    return space_run(s, n);
}

static size_t split_qwen2(const unsigned char *s, size_t n) {
    size_t k = contraction(s, n, true);
    if (k) return k;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    size_t i = (!is_newline(s[0]) && !is_letter(s[0]) && !is_digit(s[0]) && n > 1 && is_letter(s[1]))
                   ? 1 : 0;
    if (is_letter(s[i])) {
        while (i < n && is_letter(s[i])) i++;
        return i;
    }
    if (is_digit(s[0])) return 1; /* \p{N}: one digit */
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    i = (s[0] == ' ' && n > 1 && is_other(s[1])) ? 1 : 0;
    if (is_other(s[i])) {
        while (i < n && is_other(s[i])) i++;
        while (i < n && is_newline(s[i])) i++;
        return i;
    }
    /* \s*[\r\n]+ : the longest whitespace prefix that ends in a newline */
    size_t run = 0, last_nl = 0;
    while (run < n && is_space(s[run])) {
        if (is_newline(s[run])) last_nl = run + 1;
        run++;
    }
    if (last_nl) return last_nl;
    return space_run(s, n);
}

size_t spud_bpe_pre_split(const char *text, size_t n, spud_bpe_pre pre) {
    if (n == 0) return 0;
    const unsigned char *s = (const unsigned char *)text;
    return pre == SPUD_BPE_PRE_QWEN2 ? split_qwen2(s, n) : split_gpt2(s, n);
}


/* ---- hashing ---- */

static uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ---- training state ---- */

typedef struct {
    uint32_t off;   /* first symbol in syms */
    uint32_t len;   /* current number of symbols */
    uint64_t count; /* occurrences in the text */
} word;

typedef struct {
    uint64_t key; /* (a << 32 | b) + 1; 0 = empty slot */
    uint64_t count;
} pair_slot;

typedef struct {
    /* words */
    word *words;
    uint32_t n_words;
    int32_t *syms; /* symbols of all distinct words, each word's run shrinking in place */
    /* tokens: raw bytes */
    unsigned char *tok_bytes;
    uint32_t *tok_off, *tok_len;
    uint32_t n_tok, cap_tok;
    size_t tok_bytes_len, tok_bytes_cap;
    int32_t *tok_table; /* open addressing on token bytes -> id; -1 empty */
    size_t tok_table_cap;
    /* merges: pairs of ids, merge i made token 256 + i */
    int32_t *merge_a, *merge_b;
    /* pair counts */
    pair_slot *pairs;
    size_t pairs_cap;
    /* pairs that may not be merged (their text already is a token) */
    uint64_t *banned;
    size_t n_banned, cap_banned;
} trainer;

static void trainer_free(trainer *t) {
    spud_free(t->words);
    spud_free(t->syms);
    spud_free(t->tok_bytes);
    spud_free(t->tok_off);
    spud_free(t->tok_len);
    spud_free(t->tok_table);
    spud_free(t->merge_a);
    spud_free(t->merge_b);
    spud_free(t->pairs);
    spud_free(t->banned);
}

static int32_t tok_find(const trainer *t, const unsigned char *p, size_t n) {
    size_t mask = t->tok_table_cap - 1;
    for (size_t i = hash_bytes(p, n) & mask;; i = (i + 1) & mask) {
        int32_t id = t->tok_table[i];
        if (id < 0) return -1;
        if (t->tok_len[id] == n && memcmp(t->tok_bytes + t->tok_off[id], p, n) == 0) return id;
    }
}

static void tok_insert(trainer *t, int32_t id) {
    size_t mask = t->tok_table_cap - 1;
    size_t i = hash_bytes(t->tok_bytes + t->tok_off[id], t->tok_len[id]) & mask;
    while (t->tok_table[i] >= 0) i = (i + 1) & mask;
    t->tok_table[i] = id;
}

/* Append token a+b (capacity reserved up front); returns its id. */
static int32_t tok_add(trainer *t, int32_t a, int32_t b) {
    int32_t id = (int32_t)t->n_tok++;
    size_t la = t->tok_len[a], lb = t->tok_len[b];
    t->tok_off[id] = (uint32_t)t->tok_bytes_len;
    t->tok_len[id] = (uint32_t)(la + lb);
    memcpy(t->tok_bytes + t->tok_bytes_len, t->tok_bytes + t->tok_off[a], la);
    memcpy(t->tok_bytes + t->tok_bytes_len + la, t->tok_bytes + t->tok_off[b], lb);
    t->tok_bytes_len += la + lb;
    tok_insert(t, id);
    return id;
}

static bool is_banned(const trainer *t, uint64_t key) {
    for (size_t i = 0; i < t->n_banned; i++)
        if (t->banned[i] == key) return true;
    return false;
}

/* Split the text into distinct words with counts; symbols start as bytes. */
static spud_status collect_words(trainer *t, const unsigned char *s, size_t len, spud_bpe_pre pre) {
    size_t table_cap = pow2_at_least(2 * len + 2);
    int32_t *table = spud_malloc(table_cap * sizeof *table);
    t->words = spud_malloc((len + 1) * sizeof *t->words);
    t->syms = spud_malloc((len + 1) * sizeof *t->syms);
    if (!table || !t->words || !t->syms) {
        spud_free(table);
        return spud_errorf(SPUD_ERR_NOMEM, "bpe: out of memory splitting %zu bytes of text", len);
    }
    memset(table, 0xff, table_cap * sizeof *table);
    uint32_t n_syms = 0;
    for (size_t pos = 0; pos < len;) {
        size_t wl = spud_bpe_pre_split((const char *)s + pos, len - pos, pre);
        const unsigned char *w = s + pos;
        size_t mask = table_cap - 1, i = hash_bytes(w, wl) & mask;
        for (;; i = (i + 1) & mask) {
            int32_t id = table[i];
            if (id < 0) {
                word *nw = &t->words[t->n_words];
                nw->off = n_syms;
                nw->len = (uint32_t)wl;
                nw->count = 1;
                for (size_t j = 0; j < wl; j++) t->syms[n_syms++] = w[j];
                table[i] = (int32_t)t->n_words++;
                break;
            }
            const word *ow = &t->words[id];
            if (ow->len == wl) {
                bool same = true;
                for (size_t j = 0; j < wl && same; j++) same = t->syms[ow->off + j] == w[j];
                if (same) {
                    t->words[id].count++;
                    break;
                }
            }
        }
        pos += wl;
    }
    spud_free(table);
    return SPUD_OK;
}

/* Count adjacent pairs over all words and return the best mergeable key (0 if none). */
static uint64_t best_pair(trainer *t) {
    memset(t->pairs, 0, t->pairs_cap * sizeof *t->pairs);
    size_t mask = t->pairs_cap - 1;
    for (uint32_t w = 0; w < t->n_words; w++) {
        const int32_t *sy = t->syms + t->words[w].off;
        for (uint32_t i = 0; i + 1 < t->words[w].len; i++) {
            uint64_t key = (((uint64_t)(uint32_t)sy[i] << 32) | (uint32_t)sy[i + 1]) + 1;
            size_t j = spud_mix64(key) & mask;
            while (t->pairs[j].key != 0 && t->pairs[j].key != key) j = (j + 1) & mask;
            t->pairs[j].key = key;
            t->pairs[j].count += t->words[w].count;
        }
    }
    uint64_t best = 0, best_count = 0;
    for (size_t j = 0; j < t->pairs_cap; j++) {
        const pair_slot *p = &t->pairs[j];
        if (p->key == 0) continue;
        /* higher count wins; ties go to the smaller (a, b) so the order is hash-independent */
        if (p->count > best_count || (p->count == best_count && p->key < best)) {
            if (is_banned(t, p->key)) continue;
            best = p->key;
            best_count = p->count;
        }
    }
    return best;
}

static void apply_merge(trainer *t, int32_t a, int32_t b, int32_t ab) {
    for (uint32_t w = 0; w < t->n_words; w++) {
        int32_t *sy = t->syms + t->words[w].off;
        uint32_t n = t->words[w].len, o = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (i + 1 < n && sy[i] == a && sy[i + 1] == b) {
                sy[o++] = ab;
                i++;
            } else {
                sy[o++] = sy[i];
            }
        }
        t->words[w].len = o;
    }
}

static spud_status build_output(const trainer *t, uint32_t n_merges, spud_bpe_vocab *out) {
    out->tokens = spud_calloc(t->n_tok, sizeof *out->tokens);
    out->merges = spud_calloc(n_merges ? n_merges : 1, sizeof *out->merges);
    if (!out->tokens || !out->merges) goto nomem;
    out->n_tokens = t->n_tok;
    out->n_merges = n_merges;
    for (uint32_t id = 0; id < t->n_tok; id++) {
        char *s = spud_malloc(2 * (size_t)t->tok_len[id] + 1);
        if (!s) goto nomem;
        size_t n = 0;
        for (uint32_t j = 0; j < t->tok_len[id]; j++)
            n += spud_tok_gpt2_byte_utf8(t->tok_bytes[t->tok_off[id] + j], s + n);
        s[n] = 0;
        out->tokens[id] = s;
    }
    for (uint32_t m = 0; m < n_merges; m++) {
        const char *a = out->tokens[t->merge_a[m]], *b = out->tokens[t->merge_b[m]];
        size_t la = strlen(a), lb = strlen(b);
        char *s = spud_malloc(la + lb + 2);
        if (!s) goto nomem;
        memcpy(s, a, la);
        s[la] = ' ';
        memcpy(s + la + 1, b, lb + 1);
        out->merges[m] = s;
    }
    return SPUD_OK;
nomem:
    spud_bpe_vocab_free(out);
    return spud_errorf(SPUD_ERR_NOMEM, "bpe: out of memory building the vocabulary");
}

spud_status spud_bpe_train(const char *text, size_t len, spud_bpe_pre pre, uint32_t max_merges,
                           spud_bpe_vocab *out) {
    memset(out, 0, sizeof *out);
    if (!text && len) return spud_errorf(SPUD_ERR_INVALID, "bpe: no text");
    if (len > UINT32_MAX / 4) return spud_errorf(SPUD_ERR_INVALID, "bpe: text too long (%zu bytes)", len);
    /* No word can take more merges than it has bytes, so merges <= len. */
    if (max_merges > len) max_merges = (uint32_t)len;

    trainer t = {0};
    spud_status st = collect_words(&t, (const unsigned char *)text, len, pre);
    if (st != SPUD_OK) goto done;

    t.cap_tok = 256 + max_merges;
    /* each token is at most as long as the text; total bytes bounded by sum over merges */
    t.tok_bytes_cap = 256 + (size_t)max_merges * 2;
    t.tok_off = spud_malloc(t.cap_tok * sizeof *t.tok_off);
    t.tok_len = spud_malloc(t.cap_tok * sizeof *t.tok_len);
    t.tok_bytes = spud_malloc(t.tok_bytes_cap);
    t.tok_table_cap = pow2_at_least(2 * (size_t)t.cap_tok);
    t.tok_table = spud_malloc(t.tok_table_cap * sizeof *t.tok_table);
    t.merge_a = spud_malloc((max_merges + 1) * sizeof *t.merge_a);
    t.merge_b = spud_malloc((max_merges + 1) * sizeof *t.merge_b);
    t.pairs_cap = pow2_at_least(2 * len + 2);
    t.pairs = spud_malloc(t.pairs_cap * sizeof *t.pairs);
    if (!t.tok_off || !t.tok_len || !t.tok_bytes || !t.tok_table || !t.merge_a || !t.merge_b ||
        !t.pairs) {
        st = spud_errorf(SPUD_ERR_NOMEM, "bpe: out of memory");
        goto done;
    }
    memset(t.tok_table, 0xff, t.tok_table_cap * sizeof *t.tok_table);
    for (uint32_t b = 0; b < 256; b++) {
        t.tok_off[b] = b;
        t.tok_len[b] = 1;
        t.tok_bytes[b] = (unsigned char)b;
        tok_insert(&t, (int32_t)b);
    }
    t.n_tok = 256;
    t.tok_bytes_len = 256;

    uint32_t n_merges = 0;
    while (n_merges < max_merges) {
        uint64_t key = best_pair(&t);
        if (key == 0) break; /* every word is a single token */
        int32_t a = (int32_t)((key - 1) >> 32), b = (int32_t)((key - 1) & 0xffffffffu);
        size_t la = t.tok_len[a], lb = t.tok_len[b];
        /* grow the byte arena when long tokens appear */
        if (t.tok_bytes_len + la + lb > t.tok_bytes_cap) {
            size_t cap = 2 * t.tok_bytes_cap + la + lb;
            unsigned char *p = spud_realloc(t.tok_bytes, cap);
            if (!p) {
                st = spud_errorf(SPUD_ERR_NOMEM, "bpe: out of memory");
                goto done;
            }
            t.tok_bytes = p;
            t.tok_bytes_cap = cap;
        }
        /* the concatenation may already exist (another segmentation made it): never merge
         * this pair, so ids stay unique and every merge's result comes after its parts */
        memcpy(t.tok_bytes + t.tok_bytes_len, t.tok_bytes + t.tok_off[a], la);
        memcpy(t.tok_bytes + t.tok_bytes_len + la, t.tok_bytes + t.tok_off[b], lb);
        if (tok_find(&t, t.tok_bytes + t.tok_bytes_len, la + lb) >= 0) {
            if (t.n_banned == t.cap_banned) {
                size_t cap = t.cap_banned ? 2 * t.cap_banned : 16;
                uint64_t *p = spud_realloc(t.banned, cap * sizeof *p);
                if (!p) {
                    st = spud_errorf(SPUD_ERR_NOMEM, "bpe: out of memory");
                    goto done;
                }
                t.banned = p;
                t.cap_banned = cap;
            }
            t.banned[t.n_banned++] = key;
            continue;
        }
        int32_t ab = tok_add(&t, a, b);
        t.merge_a[n_merges] = a;
        t.merge_b[n_merges] = b;
        n_merges++;
        apply_merge(&t, a, b, ab);
    }
    st = build_output(&t, n_merges, out);
done:
    trainer_free(&t);
    return st;
}

void spud_bpe_vocab_free(spud_bpe_vocab *v) {
    if (!v) return;
    if (v->tokens)
        for (uint32_t i = 0; i < v->n_tokens; i++) spud_free(v->tokens[i]);
    if (v->merges)
        for (uint32_t i = 0; i < v->n_merges; i++) spud_free(v->merges[i]);
    spud_free(v->tokens);
    spud_free(v->merges);
    memset(v, 0, sizeof *v);
}

/* Training text: the author's own prose (public domain dedication) plus Lincoln's
 * Gettysburg Address (1863, public domain). ASCII only; numbers, prices, times,
 * contractions and dialogue so the merges cover more than plain words. */
const char spud_bpe_default_text[] =
    "The river was low that autumn, and the old bridge showed the marks of every flood it "
    "had ever known. People in the town said the water would come back in the spring, as it "
    "always did, and they were right. But for a few months the children could walk across "
    "the gravel bars and look for the stones that the current had rolled smooth over a "
    "hundred years.\n"
    "\n"
    "My grandmother kept a notebook of the weather. Every morning she wrote down the "
    "temperature, the direction of the wind, and one sentence about the sky. \"Clear and "
    "cold.\" \"Fog until noon, then rain.\" \"The first snow, light and dry.\" She did this for "
    "forty-one years, from 1952 to 1993, and when she was done the notebooks filled two "
    "shelves in the kitchen. I still have them. When I read them now, I don't think about "
    "the weather at all; I think about a woman who got up early, looked out of the window, "
    "and decided that the day was worth one true sentence.\n"
    "\n"
    "How to bake a simple loaf of bread: mix 500 grams of flour, 350 grams of warm water, 10 "
    "grams of salt and 5 grams of yeast in a large bowl. Stir until there is no dry flour "
    "left, then cover the bowl and let it rest for an hour. Fold the dough over itself four "
    "times, wait another hour, and fold it again. Shape it into a round loaf, let it rise "
    "until it has doubled, and bake it at 230 degrees for about 40 minutes. The crust should "
    "be dark brown; it's better a little too dark than too pale. Let it cool before you cut "
    "it, even though you won't want to.\n"
    "\n"
    "A computer program is a list of instructions, but it is also a message to the next "
    "person who has to read it. Good programs say what they mean. They name things "
    "carefully, they check their inputs, and they fail with a clear error instead of "
    "carrying on with nonsense. When a program reads a file from the outside world, it "
    "should treat every number in that file as a claim to be checked, not a fact to be "
    "trusted. If the file says a string is 4,000,000 bytes long and the file itself is only "
    "300 bytes, the program must notice.\n"
    "\n"
    "\"Are you coming with us?\" she asked.\n"
    "\"I can't,\" he said. \"I've got work to finish, and they're expecting it by Friday.\"\n"
    "\"You said that last week.\"\n"
    "\"I know. I'll come next time, I promise. We'll go to the lake, all of us.\"\n"
    "She didn't answer, but she smiled, and that was enough for him.\n"
    "\n"
    "Four score and seven years ago our fathers brought forth on this continent, a new "
    "nation, conceived in Liberty, and dedicated to the proposition that all men are created "
    "equal. Now we are engaged in a great civil war, testing whether that nation, or any "
    "nation so conceived and so dedicated, can long endure. We are met on a great "
    "battle-field of that war. We have come to dedicate a portion of that field, as a final "
    "resting place for those who here gave their lives that that nation might live. It is "
    "altogether fitting and proper that we should do this. But, in a larger sense, we can "
    "not dedicate -- we can not consecrate -- we can not hallow -- this ground. The brave "
    "men, living and dead, who struggled here, have consecrated it, far above our poor power "
    "to add or detract. The world will little note, nor long remember what we say here, but "
    "it can never forget what they did here.\n"
    "\n"
    "The market opens at seven in the morning. By eight, the stalls are full: apples and "
    "pears from the hills, cheese from the valley farms, bread, honey, eggs, flowers, and "
    "fish that came off the boats before sunrise. Prices are written on small boards in "
    "chalk. A bag of apples costs $3.50, a dozen eggs $4.25, and a jar of honey $9.00. The "
    "man who sells the honey has kept bees for thirty years. He will tell you, if you ask, "
    "that each jar tastes of a different month: the pale spring honey is mild and sweet, "
    "while the dark honey from late summer is strong, almost bitter, and keeps for years.\n"
    "\n"
    "Some rules for writing clearly. Use short words when they will do. Put the subject and "
    "the verb close together. Say who did what. Cut any sentence that the reader would not "
    "miss. Read your work aloud; your ear will find the mistakes your eye has learned to "
    "skip. And when you have finished, wait a day and read it again, because the second "
    "reading is where most of the real writing happens.\n"
    "\n"
    "The station was quiet at night. A single light burned over the platform, and the clock "
    "above the ticket window ticked loudly in the empty hall. At 11:42 the last train "
    "arrived, five minutes late, and three people stepped down: a student with a heavy bag, "
    "a nurse going home from the hospital, and an old man who walked slowly to the bench and "
    "sat down as if he had nowhere else to be. The train pulled away. The nurse and the "
    "student left together, talking about the rain. The old man stayed where he was, "
    "watching the tracks, until the light went out at midnight.\n"
    "\n"
    "Water boils at 100 degrees Celsius at sea level, but at the top of a high mountain it "
    "boils at a lower temperature, because the air pressure is lower. This is why cooking "
    "takes longer in the mountains: the water is boiling, but it is not as hot. The same "
    "rule explains why a pressure cooker works so well. By keeping the steam inside, it "
    "raises the pressure, and the water can get hotter before it boils, so the food cooks "
    "faster.\n"
    "\n"
    "There are three things that every small library needs: a patient librarian, a warm "
    "room, and more books than anyone could read in a lifetime. Ours had all three. On "
    "Saturday mornings the reading room filled with children, and the librarian would read a "
    "story aloud at ten o'clock. Then she would help each child choose two books to take "
    "home, and she remembered, week after week, what every one of them had liked.\n";
