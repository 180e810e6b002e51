/* fuzz_gguf.c: libFuzzer target for the GGUF reader and writer.
 *
 * Any input must either be rejected with a one-line message or open into a
 * spud_gguf whose every key, value, array element and tensor byte can be read
 * (ASan catches a read outside the input) and found again by name. An input
 * that opens is then copied through the writer and read back: the copy must
 * hold the same keys, values and tensor bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static bool same_str(spud_str a, spud_str b) {
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static bool same_kv(const spud_gguf_kv *a, const spud_gguf_kv *b) {
    if (!same_str(a->key, b->key) || a->type != b->type) return false;
    switch (a->type) {
    case SPUD_GGUF_STRING: return same_str(a->v.str, b->v.str);
    case SPUD_GGUF_BOOL: return a->v.b == b->v.b;
    case SPUD_GGUF_FLOAT32:
    case SPUD_GGUF_FLOAT64: return memcmp(&a->v.f64, &b->v.f64, sizeof a->v.f64) == 0;
    case SPUD_GGUF_ARRAY:
        if (a->arr_type != b->arr_type || a->arr_n != b->arr_n) return false;
        if (a->arr_type == SPUD_GGUF_STRING) {
            for (uint64_t i = 0; i < a->arr_n; i++)
                if (!same_str(a->arr_strs[i], b->arr_strs[i])) return false;
            return true;
        }
        return a->arr_n == 0 ||
               memcmp(a->arr_data, b->arr_data, a->arr_n * spud_gguf_type_size(a->arr_type)) == 0;
    default: return a->v.u64 == b->v.u64;
    }
}

/* A scratch file on tmpfs when there is one, removed at exit. */
static char out_dir[64], out_path[96];

static void remove_out(void) {
    unlink(out_path);
    rmdir(out_dir);
}

static const char *scratch_path(void) {
    if (!out_path[0]) {
        strcpy(out_dir, access("/dev/shm", W_OK) == 0 ? "/dev/shm/fuzz-gguf-XXXXXX"
                                                      : "/tmp/fuzz-gguf-XXXXXX");
        if (!mkdtemp(out_dir)) abort();
        snprintf(out_path, sizeof out_path, "%s/out.gguf", out_dir);
        atexit(remove_out);
    }
    return out_path;
}

/* Copy g through the writer and check the copy reads back the same. Tensors
 * of unsupported types have no data to copy, so files with them are skipped. */
static void round_trip(const spud_gguf *g) {
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        if (!t->data || memchr(t->name.ptr, '\0', t->name.len) || t->name.len >= 256) return;
    }
    spud_gguf_writer *w = spud_gguf_writer_new();
    if (!w) abort();
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++)
        if (spud_gguf_writer_copy_kv(w, spud_gguf_kv_at(g, i)) != SPUD_OK) abort();
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        char name[256];
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = '\0';
        if (spud_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes) !=
            SPUD_OK)
            abort();
    }
    if (spud_gguf_writer_write(w, scratch_path()) != SPUD_OK) abort();
    spud_gguf_writer_free(w);
    spud_gguf *c;
    if (spud_gguf_open(out_path, &c) != SPUD_OK) abort();
    if (spud_gguf_n_kv(c) != spud_gguf_n_kv(g) || spud_gguf_n_tensors(c) != spud_gguf_n_tensors(g) ||
        spud_gguf_alignment(c) != spud_gguf_alignment(g) || spud_gguf_version(c) != 3)
        abort();
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++)
        if (!same_kv(spud_gguf_kv_at(g, i), spud_gguf_kv_at(c, i))) abort();
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *a = spud_gguf_tensor_at(g, i), *b = spud_gguf_tensor_at(c, i);
        if (!same_str(a->name, b->name) || a->type != b->type || a->n_dims != b->n_dims ||
            memcmp(a->ne, b->ne, sizeof a->ne) != 0 || a->nbytes != b->nbytes ||
            memcmp(a->data, b->data, a->nbytes) != 0)
            abort();
    }
    spud_gguf_close(c);
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
    round_trip(g);
    spud_gguf_close(g);
    return 0;
}
