/* fuzz_gguf.c: libFuzzer target for the GGUF reader.
 *
 * Any input must either be rejected with a one-line message or open into a
 * spud_gguf whose every key, value, array element and tensor byte can be read
 * (ASan catches a read outside the input) and found again by name.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

static volatile uint64_t sink;

static void touch(const void *p, uint64_t n) {
    const uint8_t *b = p;
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += b[i];
    sink += s;
}

/* key as a C string, if it has no NUL and fits */
static bool cstr(spud_str s, char *buf, size_t cap) {
    if (s.len >= cap || memchr(s.ptr, '\0', s.len)) return false;
    memcpy(buf, s.ptr, s.len);
    buf[s.len] = '\0';
    return true;
}

static void check_kv(const spud_gguf *g, uint64_t i) {
    const spud_gguf_kv *kv = spud_gguf_kv_at(g, i);
    char key[256];
    touch(kv->key.ptr, kv->key.len);
    if (kv->type == SPUD_GGUF_STRING) touch(kv->v.str.ptr, kv->v.str.len);
    if (kv->type == SPUD_GGUF_ARRAY) {
        if (kv->arr_type == SPUD_GGUF_STRING) {
            for (uint64_t k = 0; k < kv->arr_n; k++) touch(kv->arr_strs[k].ptr, kv->arr_strs[k].len);
        } else {
            touch(kv->arr_data, kv->arr_n * spud_gguf_type_size(kv->arr_type));
            if (kv->arr_n) sink += (uint64_t)spud_gguf_arr_int(kv, kv->arr_n - 1);
            if (kv->arr_n) sink += spud_gguf_arr_float(kv, 0) != 0;
        }
    }
    if (!cstr(kv->key, key, sizeof key)) return;
    if (spud_gguf_find_kv(g, key) != kv) abort(); /* keys are unique, so lookup is exact */
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool b;
    spud_str s;
    const spud_gguf_kv *arr;
    sink += spud_gguf_get_u32(g, key, &u32) + spud_gguf_get_i32(g, key, &i32) +
            spud_gguf_get_u64(g, key, &u64) + spud_gguf_get_f32(g, key, &f) +
            spud_gguf_get_bool(g, key, &b) + spud_gguf_get_str(g, key, &s) +
            spud_gguf_get_arr(g, key, kv->arr_type, &arr);
}

static void check_tensor(const spud_gguf *g, uint64_t i) {
    const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
    char name[256];
    touch(t->name.ptr, t->name.len);
    if (t->n_dims < 1 || t->n_dims > SPUD_GGUF_MAX_DIMS) abort();
    if (t->offset % spud_gguf_alignment(g) != 0) abort();
    if (t->data) {
        if (spud_gguf_data_offset(g) + t->offset + t->nbytes > spud_gguf_file_size(g)) abort();
        touch(t->data, t->nbytes);
    } else if (t->nbytes != 0) {
        abort();
    }
    if (cstr(t->name, name, sizeof name) && spud_gguf_find_tensor(g, name) != t) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    spud_gguf *g;
    if (spud_gguf_open_memory(data, size, &g) != SPUD_OK) {
        const char *msg = spud_last_error();
        if (!msg[0] || strchr(msg, '\n')) abort();
        return 0;
    }
    uint32_t a = spud_gguf_alignment(g);
    if (a == 0 || (a & (a - 1)) != 0 || spud_gguf_data_offset(g) % a != 0) abort();
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++) check_kv(g, i);
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) check_tensor(g, i);
    spud_gguf_close(g);
    return 0;
}
