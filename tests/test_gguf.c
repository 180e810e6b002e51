/* test_gguf.c: GGUF reader and writer.
 *
 * Files under test are built byte by byte here (an encoder independent of
 * the writer), written by the writer, or taken from ../shared: models and
 * vocabularies written by llama.cpp's gguf-py. Corrupt inputs are checked for
 * the status and for a one-line message that names the problem. Buffers handed
 * to spud_gguf_open_memory are exact-size copies so ASan sees any over-read.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "tensor.h"

#include "leak_check.h" /* check_leaks() */

/* ---- scratch directory, one per test ---- */

static char tmpdir[64];
static char pathbuf[4][128];
static int pathnext;

static void setup(void) {
    strcpy(tmpdir, "/tmp/spud-test-gguf-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void) {
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[sizeof tmpdir + sizeof e->d_name + 2];
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

TestSuite(gguf, .init = setup, .fini = teardown);

#define GGUF_TEST(name)                                                                            \
    static void name##_body(void);                                                                 \
    Test(gguf, name) {                                                                             \
        name##_body();                                                                             \
        check_leaks();                                                                             \
    }                                                                                              \
    static void name##_body(void)

static const char *tmp(const char *name) {
    char *p = pathbuf[pathnext++ % 4];
    snprintf(p, sizeof pathbuf[0], "%s/%s", tmpdir, name);
    return p;
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* ---- an independent GGUF encoder ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} bb;

static void bb_put(bb *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void bb_u8(bb *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u32(bb *b, uint32_t v) { bb_put(b, &v, 4); } /* test host is little-endian */
static void bb_u64(bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_strn(bb *b, const char *s, size_t n) {
    bb_u64(b, n);
    bb_put(b, s, n);
}
static void bb_str(bb *b, const char *s) { bb_strn(b, s, strlen(s)); }
static void bb_hdr(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void bb_key(bb *b, const char *key, uint32_t type) {
    bb_str(b, key);
    bb_u32(b, type);
}
static void bb_kv_u32(bb *b, const char *key, uint32_t v) {
    bb_key(b, key, SPUD_GGUF_UINT32);
    bb_u32(b, v);
}
static void bb_kv_str(bb *b, const char *key, const char *v) {
    bb_key(b, key, SPUD_GGUF_STRING);
    bb_str(b, v);
}
static void bb_tinfo(bb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                     uint64_t offset) {
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) bb_u64(b, ne[i]);
    bb_u32(b, type);
    bb_u64(b, offset);
}
static void bb_zeros(bb *b, size_t n) {
    for (size_t i = 0; i < n; i++) bb_u8(b, 0);
}
static void bb_pad(bb *b, size_t align) {
    while (b->n % align) bb_u8(b, 0);
}

/* Open an exact-size copy of b; *copy must be freed after closing. */
static spud_status open_copy(const void *data, size_t n, spud_gguf **g, void **copy) {
    *copy = malloc(n ? n : 1);
    cr_assert_not_null(*copy);
    if (n) memcpy(*copy, data, n);
    return spud_gguf_open_memory(n ? *copy : NULL, n, g);
}

static void check_message(const char *msg) {
    cr_expect(msg[0] != '\0', "empty message");
    cr_expect(strchr(msg, '\n') == NULL, "message has a newline: %s", msg);
}

static void expect_fail(const bb *b, spud_status want, const char *needle) {
    spud_gguf *g = (spud_gguf *)&g;
    void *copy;
    spud_status st = open_copy(b->p, b->n, &g, &copy);
    const char *msg = spud_last_error();
    cr_expect_eq(st, want, "got status %s, want %s (message: %s)", spud_status_name(st),
                 spud_status_name(want), msg);
    cr_expect_null(g);
    cr_expect(strstr(msg, needle) != NULL, "message '%s' lacks '%s'", msg, needle);
    cr_expect(strncmp(msg, "<memory>: ", 10) == 0, "message '%s' lacks the name", msg);
    check_message(msg);
    if (st == SPUD_OK) spud_gguf_close(g);
    free(copy);
}

static spud_gguf *open_ok(const bb *b, void **copy) {
    spud_gguf *g = NULL;
    spud_status st = open_copy(b->p, b->n, &g, copy);
    cr_assert_eq(st, SPUD_OK, "open failed: %s", spud_last_error());
    return g;
}

/* ---- values of every type ---- */

static const uint8_t A_U8[] = {1, 2, 255};
static const int8_t A_I8[] = {-1, -128, 127};
static const uint16_t A_U16[] = {0, 65535, 1234};
static const int16_t A_I16[] = {-32768, 32767, -1};
static const uint32_t A_U32[] = {0, 4294967295u, 7};
static const int32_t A_I32[] = {INT32_MIN, INT32_MAX, -5};
static const float A_F32[] = {0.5f, -2.25f, 1e30f};
static const uint8_t A_BOOL[] = {1, 0, 1};
static const uint64_t A_U64[] = {0, UINT64_MAX, 1ull << 40};
static const int64_t A_I64[] = {INT64_MIN, INT64_MAX, -3};
static const double A_F64[] = {1e-300, -0.0, 2.5};

static const struct {
    const char *key;
    spud_gguf_type type;
    const void *data;
    uint64_t n;
} arrays[] = {
    {"a.u8", SPUD_GGUF_UINT8, A_U8, 3},       {"a.i8", SPUD_GGUF_INT8, A_I8, 3},
    {"a.u16", SPUD_GGUF_UINT16, A_U16, 3},    {"a.i16", SPUD_GGUF_INT16, A_I16, 3},
    {"a.u32", SPUD_GGUF_UINT32, A_U32, 3},    {"a.i32", SPUD_GGUF_INT32, A_I32, 3},
    {"a.f32", SPUD_GGUF_FLOAT32, A_F32, 3},   {"a.bool", SPUD_GGUF_BOOL, A_BOOL, 3},
    {"a.u64", SPUD_GGUF_UINT64, A_U64, 3},    {"a.i64", SPUD_GGUF_INT64, A_I64, 3},
    {"a.f64", SPUD_GGUF_FLOAT64, A_F64, 3},   {"a.empty", SPUD_GGUF_UINT32, A_U32, 0},
};
#define N_ARRAYS (sizeof arrays / sizeof arrays[0])

/* String array elements, one with an embedded NUL. */
static const char *const S_STRS[] = {"", "x", "with\0nul", "\xc3\xbcnicode \xe2\x9c\x93"};
static const uint64_t S_LENS[] = {0, 1, 8, 12};
#define N_STRS 4

static const char S_STR[] = "h\xc3\xa9llo w\xc3\xb6rld";

/* The scalar kvs, in file order, as hand-encoded bytes. */
static void bb_scalars(bb *b) {
    float f = 1.5f;
    double d = 3.141592653589793;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int32_t i32 = -2000000000;
    int64_t i64 = -(1ll << 62) - 7;
    int8_t i8 = -100;
    bb_key(b, "s.u8", SPUD_GGUF_UINT8), bb_u8(b, 200);
    bb_key(b, "s.i8", SPUD_GGUF_INT8), bb_put(b, &i8, 1);
    bb_key(b, "s.u16", SPUD_GGUF_UINT16), bb_put(b, &u16, 2);
    bb_key(b, "s.i16", SPUD_GGUF_INT16), bb_put(b, &i16, 2);
    bb_key(b, "s.u32", SPUD_GGUF_UINT32), bb_u32(b, 4000000000u);
    bb_key(b, "s.i32", SPUD_GGUF_INT32), bb_put(b, &i32, 4);
    bb_key(b, "s.f32", SPUD_GGUF_FLOAT32), bb_put(b, &f, 4);
    bb_key(b, "s.bool", SPUD_GGUF_BOOL), bb_u8(b, 1);
    bb_key(b, "s.str", SPUD_GGUF_STRING), bb_str(b, S_STR);
    bb_key(b, "s.u64", SPUD_GGUF_UINT64), bb_u64(b, (1ull << 63) + 5);
    bb_key(b, "s.i64", SPUD_GGUF_INT64), bb_put(b, &i64, 8);
    bb_key(b, "s.f64", SPUD_GGUF_FLOAT64), bb_put(b, &d, 8);
}
#define N_SCALARS 12

static void bb_arrays(bb *b) {
    for (size_t i = 0; i < N_ARRAYS; i++) {
        bb_key(b, arrays[i].key, SPUD_GGUF_ARRAY);
        bb_u32(b, arrays[i].type);
        bb_u64(b, arrays[i].n);
        bb_put(b, arrays[i].data, arrays[i].n * spud_gguf_type_size(arrays[i].type));
    }
    bb_key(b, "a.str", SPUD_GGUF_ARRAY);
    bb_u32(b, SPUD_GGUF_STRING);
    bb_u64(b, N_STRS);
    for (int i = 0; i < N_STRS; i++) bb_strn(b, S_STRS[i], S_LENS[i]);
    bb_key(b, "a.nostr", SPUD_GGUF_ARRAY);
    bb_u32(b, SPUD_GGUF_STRING);
    bb_u64(b, 0);
}
#define N_ARRAY_KVS (N_ARRAYS + 2)

static bool str_is(spud_str s, const char *p, uint64_t n) {
    return s.len == n && (n == 0 || memcmp(s.ptr, p, n) == 0);
}

static const spud_gguf_kv *must_kv(const spud_gguf *g, const char *key, spud_gguf_type type) {
    const spud_gguf_kv *kv = spud_gguf_find_kv(g, key);
    cr_assert_not_null(kv, "key %s missing", key);
    cr_assert(spud_str_eq(kv->key, key));
    cr_assert_eq(kv->type, type, "key %s: type %s", key, spud_gguf_type_name(kv->type));
    return kv;
}

static void check_scalars(const spud_gguf *g) {
    cr_assert_eq(must_kv(g, "s.u8", SPUD_GGUF_UINT8)->v.u64, 200);
    cr_assert_eq(must_kv(g, "s.i8", SPUD_GGUF_INT8)->v.i64, -100);
    cr_assert_eq(must_kv(g, "s.u16", SPUD_GGUF_UINT16)->v.u64, 60000);
    cr_assert_eq(must_kv(g, "s.i16", SPUD_GGUF_INT16)->v.i64, -30000);
    cr_assert_eq(must_kv(g, "s.u32", SPUD_GGUF_UINT32)->v.u64, 4000000000u);
    cr_assert_eq(must_kv(g, "s.i32", SPUD_GGUF_INT32)->v.i64, -2000000000);
    cr_assert_eq(must_kv(g, "s.f32", SPUD_GGUF_FLOAT32)->v.f64, 1.5);
    cr_assert_eq(must_kv(g, "s.bool", SPUD_GGUF_BOOL)->v.b, true);
    cr_assert(str_is(must_kv(g, "s.str", SPUD_GGUF_STRING)->v.str, S_STR, strlen(S_STR)));
    cr_assert_eq(must_kv(g, "s.u64", SPUD_GGUF_UINT64)->v.u64, (1ull << 63) + 5);
    cr_assert_eq(must_kv(g, "s.i64", SPUD_GGUF_INT64)->v.i64, -(1ll << 62) - 7);
    cr_assert_eq(must_kv(g, "s.f64", SPUD_GGUF_FLOAT64)->v.f64, 3.141592653589793);
}

static void check_arrays(const spud_gguf *g) {
    for (size_t i = 0; i < N_ARRAYS; i++) {
        const spud_gguf_kv *kv = must_kv(g, arrays[i].key, SPUD_GGUF_ARRAY);
        cr_assert_eq(kv->arr_type, arrays[i].type, "%s", arrays[i].key);
        cr_assert_eq(kv->arr_n, arrays[i].n, "%s", arrays[i].key);
        cr_assert_null(kv->arr_strs);
        size_t nb = arrays[i].n * spud_gguf_type_size(arrays[i].type);
        cr_assert(nb == 0 || memcmp(kv->arr_data, arrays[i].data, nb) == 0, "%s bytes",
                  arrays[i].key);
    }
    const spud_gguf_kv *kv = must_kv(g, "a.i16", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_int(kv, 0), -32768);
    cr_assert_eq(spud_gguf_arr_int(kv, 1), 32767);
    cr_assert_eq(spud_gguf_arr_int(kv, 3), 0, "out of range gives 0");
    kv = must_kv(g, "a.u32", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_int(kv, 1), 4294967295);
    kv = must_kv(g, "a.i64", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_int(kv, 0), INT64_MIN);
    kv = must_kv(g, "a.f32", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_float(kv, 1), -2.25);
    cr_assert_eq(spud_gguf_arr_float(kv, 2), (double)1e30f);
    cr_assert_eq(spud_gguf_arr_int(kv, 1), 0, "float elements give 0 as ints");
    kv = must_kv(g, "a.f64", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_float(kv, 0), 1e-300);
    cr_assert(signbit(spud_gguf_arr_float(kv, 1)));
    kv = must_kv(g, "a.bool", SPUD_GGUF_ARRAY);
    cr_assert_eq(spud_gguf_arr_int(kv, 0), 1);
    cr_assert_eq(spud_gguf_arr_int(kv, 1), 0);
    kv = must_kv(g, "a.str", SPUD_GGUF_ARRAY);
    cr_assert_eq(kv->arr_type, SPUD_GGUF_STRING);
    cr_assert_eq(kv->arr_n, N_STRS);
    cr_assert_not_null(kv->arr_strs);
    for (int i = 0; i < N_STRS; i++)
        cr_assert(str_is(kv->arr_strs[i], S_STRS[i], S_LENS[i]), "string %d", i);
    kv = must_kv(g, "a.nostr", SPUD_GGUF_ARRAY);
    cr_assert_eq(kv->arr_type, SPUD_GGUF_STRING);
    cr_assert_eq(kv->arr_n, 0);
}

static void bb_all_types(bb *b, uint32_t version) {
    bb_hdr(b, version, 0, N_SCALARS + N_ARRAY_KVS);
    bb_scalars(b);
    bb_arrays(b);
}

/* Copy every kv and tensor of g into a new file at path. */
static void rewrite(const spud_gguf *g, const char *path) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    cr_assert_not_null(w);
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++)
        cr_assert_eq(spud_gguf_writer_copy_kv(w, spud_gguf_kv_at(g, i)), SPUD_OK, "%s",
                     spud_last_error());
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        char name[256];
        cr_assert(t->name.len < sizeof name);
        memcpy(name, t->name.ptr, t->name.len);
        name[t->name.len] = '\0';
        cr_assert_not_null(t->data, "rewrite needs supported types");
        cr_assert_eq(spud_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data,
                                                 t->nbytes),
                     SPUD_OK, "%s", spud_last_error());
    }
    cr_assert_eq(spud_gguf_writer_write(w, path), SPUD_OK, "%s", spud_last_error());
    spud_gguf_writer_free(w);
}

GGUF_TEST(every_value_type_v3_and_copy_round_trip) {
    bb b = {0};
    void *copy;
    bb_all_types(&b, 3);
    spud_gguf *g = open_ok(&b, &copy);
    cr_assert_eq(spud_gguf_version(g), 3);
    cr_assert_eq(spud_gguf_n_kv(g), N_SCALARS + N_ARRAY_KVS);
    cr_assert_eq(spud_gguf_n_tensors(g), 0);
    cr_assert_eq(spud_gguf_alignment(g), 32);
    cr_assert_eq(spud_gguf_file_size(g), b.n);
    check_scalars(g);
    check_arrays(g);
    cr_assert_null(spud_gguf_find_kv(g, "s.u"));
    cr_assert_null(spud_gguf_find_kv(g, ""));

    /* writer_copy_kv of every type, then read back */
    rewrite(g, tmp("copy.gguf"));
    spud_gguf *g2;
    cr_assert_eq(spud_gguf_open(tmp("copy.gguf"), &g2), SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_gguf_n_kv(g2), spud_gguf_n_kv(g));
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++) /* same order */
        cr_assert(str_is(spud_gguf_kv_at(g2, i)->key, spud_gguf_kv_at(g, i)->key.ptr,
                         spud_gguf_kv_at(g, i)->key.len));
    check_scalars(g2);
    check_arrays(g2);
    /* The writer pads the header; the kv bytes are the same as ours. */
    cr_assert_eq(spud_gguf_file_size(g2), (b.n + 31) / 32 * 32);
    spud_gguf_close(g2);
    spud_gguf_close(g);
    free(copy);
    free(b.p);
}

GGUF_TEST(version_2) {
    bb b = {0};
    void *copy;
    const float data[4] = {1, 2, 3, 4};
    uint64_t ne[1] = {4};
    bb_hdr(&b, 2, 1, 1);
    bb_kv_str(&b, "general.architecture", "llama");
    bb_tinfo(&b, "t", 1, ne, SPUD_TYPE_F32, 0);
    bb_pad(&b, 32);
    size_t data_at = b.n;
    bb_put(&b, data, sizeof data);
    spud_gguf *g = open_ok(&b, &copy);
    cr_assert_eq(spud_gguf_version(g), 2);
    cr_assert_eq(spud_gguf_data_offset(g), data_at);
    const spud_gguf_tensor *t = spud_gguf_find_tensor(g, "t");
    cr_assert_not_null(t);
    cr_assert_eq(t->nbytes, 16);
    cr_assert_eq((const uint8_t *)t->data, (const uint8_t *)copy + data_at);
    cr_assert(memcmp(t->data, data, 16) == 0);
    spud_gguf_close(g);
    free(copy);

    /* and every value type in a v2 file */
    b.n = 0;
    bb_all_types(&b, 2);
    g = open_ok(&b, &copy);
    cr_assert_eq(spud_gguf_version(g), 2);
    check_scalars(g);
    check_arrays(g);
    spud_gguf_close(g);
    free(copy);
    free(b.p);
}

GGUF_TEST(writer_setters_round_trip) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    cr_assert_not_null(w);
    cr_assert_eq(spud_gguf_writer_set_u32(w, "u32", 4000000000u), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_i32(w, "i32", -7), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_u64(w, "u64", UINT64_MAX), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_f32(w, "f32", -0.125f), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_bool(w, "bool", true), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_bool(w, "bool0", false), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_str(w, "str", S_STR), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_str(w, "empty", ""), SPUD_OK);
    for (size_t i = 0; i < N_ARRAYS; i++)
        cr_assert_eq(spud_gguf_writer_set_arr(w, arrays[i].key, arrays[i].type, arrays[i].data,
                                              arrays[i].n),
                     SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_gguf_writer_set_arr_str(w, "a.str", S_STRS, S_LENS, N_STRS), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_arr_str(w, "a.nostr", NULL, NULL, 0), SPUD_OK);
    const char *cstrs[] = {"alpha", "", "gamma"};
    cr_assert_eq(spud_gguf_writer_set_arr_str(w, "a.cstr", cstrs, NULL, 3), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("set.gguf")), SPUD_OK, "%s", spud_last_error());
    spud_gguf_writer_free(w);
    cr_assert_eq(count_files(tmpdir), 1, "temporary file left behind");

    spud_gguf *g;
    cr_assert_eq(spud_gguf_open(tmp("set.gguf"), &g), SPUD_OK, "%s", spud_last_error());
    cr_assert_eq(spud_gguf_n_kv(g), 8 + N_ARRAY_KVS + 1);
    cr_assert_eq(must_kv(g, "u32", SPUD_GGUF_UINT32)->v.u64, 4000000000u);
    cr_assert_eq(must_kv(g, "i32", SPUD_GGUF_INT32)->v.i64, -7);
    cr_assert_eq(must_kv(g, "u64", SPUD_GGUF_UINT64)->v.u64, UINT64_MAX);
    cr_assert_eq(must_kv(g, "f32", SPUD_GGUF_FLOAT32)->v.f64, -0.125);
    cr_assert_eq(must_kv(g, "bool", SPUD_GGUF_BOOL)->v.b, true);
    cr_assert_eq(must_kv(g, "bool0", SPUD_GGUF_BOOL)->v.b, false);
    cr_assert(str_is(must_kv(g, "str", SPUD_GGUF_STRING)->v.str, S_STR, strlen(S_STR)));
    cr_assert_eq(must_kv(g, "empty", SPUD_GGUF_STRING)->v.str.len, 0);
    check_arrays(g);
    const spud_gguf_kv *kv = must_kv(g, "a.cstr", SPUD_GGUF_ARRAY);
    cr_assert_eq(kv->arr_n, 3);
    for (int i = 0; i < 3; i++) cr_assert(spud_str_eq(kv->arr_strs[i], cstrs[i]));
    /* insertion order */
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 0)->key, "u32"));
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 7)->key, "empty"));
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, spud_gguf_n_kv(g) - 1)->key, "a.cstr"));
    cr_assert_null(spud_gguf_kv_at(g, spud_gguf_n_kv(g)));
    spud_gguf_close(g);
}

GGUF_TEST(writer_replace_keeps_position) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    cr_assert_eq(spud_gguf_writer_set_u32(w, "a", 1), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_str(w, "b", "x"), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_bool(w, "c", true), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_str(w, "a", "replaced"), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_set_u32(w, "c", 9), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("r.gguf")), SPUD_OK);
    /* writing twice replaces the file */
    cr_assert_eq(spud_gguf_writer_set_u32(w, "d", 4), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("r.gguf")), SPUD_OK);
    spud_gguf_writer_free(w);
    spud_gguf *g;
    cr_assert_eq(spud_gguf_open(tmp("r.gguf"), &g), SPUD_OK);
    cr_assert_eq(spud_gguf_n_kv(g), 4);
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 0)->key, "a"));
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 0)->v.str, "replaced"));
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 1)->key, "b"));
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 2)->key, "c"));
    cr_assert_eq(spud_gguf_kv_at(g, 2)->type, SPUD_GGUF_UINT32);
    cr_assert_eq(spud_gguf_kv_at(g, 2)->v.u64, 9);
    cr_assert(spud_str_eq(spud_gguf_kv_at(g, 3)->key, "d"));
    spud_gguf_close(g);
    cr_assert_eq(count_files(tmpdir), 1);
}

/* Five tensors of assorted types and shapes; q5_1 is a GGML type spud does not support. */
typedef struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    uint64_t nbytes;
} tspec;

static const tspec tspecs[] = {
    {"f32.a", SPUD_TYPE_F32, 2, {3, 2}, 24},
    {"q8.b", SPUD_TYPE_Q8_0, 1, {64}, 68},
    {"q5_1.c", 7, 2, {32, 2}, 48},
    {"bf16.d", SPUD_TYPE_BF16, 1, {5}, 10},
    {"f16.e", SPUD_TYPE_F16, 4, {1, 2, 3, 4}, 48},
    {"q4k.f", SPUD_TYPE_Q4_K, 2, {256, 2}, 288},
};
#define N_TSPECS (sizeof tspecs / sizeof tspecs[0])

static uint8_t tdata[N_TSPECS][512];

static void write_tensor_file(const char *path, uint32_t alignment) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    cr_assert_not_null(w);
    cr_assert_eq(spud_gguf_writer_set_str(w, "general.architecture", "test"), SPUD_OK);
    if (alignment) cr_assert_eq(spud_gguf_writer_set_u32(w, "general.alignment", alignment), SPUD_OK);
    for (size_t i = 0; i < N_TSPECS; i++) {
        for (size_t j = 0; j < sizeof tdata[i]; j++) tdata[i][j] = (uint8_t)(i * 37 + j * 11 + 1);
        cr_assert_eq(spud_gguf_writer_add_tensor(w, tspecs[i].name, tspecs[i].type,
                                                 tspecs[i].n_dims, tspecs[i].ne, tdata[i],
                                                 tspecs[i].nbytes),
                     SPUD_OK, "%s", spud_last_error());
    }
    cr_assert_eq(spud_gguf_writer_write(w, path), SPUD_OK, "%s", spud_last_error());
    spud_gguf_writer_free(w);
}

static void check_tensor_file(const spud_gguf *g, uint32_t alignment) {
    uint32_t a = alignment ? alignment : 32;
    uint64_t end = 0;
    cr_assert_eq(spud_gguf_alignment(g), a);
    cr_assert_eq(spud_gguf_data_offset(g) % a, 0);
    cr_assert_eq(spud_gguf_n_tensors(g), N_TSPECS);
    for (size_t i = 0; i < N_TSPECS; i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        cr_assert(spud_str_eq(t->name, tspecs[i].name));
        cr_assert_eq(spud_gguf_find_tensor(g, tspecs[i].name), t);
        cr_assert_eq(t->type, tspecs[i].type);
        cr_assert_eq(t->n_dims, tspecs[i].n_dims);
        for (uint32_t d = 0; d < 4; d++)
            cr_assert_eq(t->ne[d], d < t->n_dims ? tspecs[i].ne[d] : 1);
        cr_assert_eq(t->offset % a, 0, "offset %llu", (unsigned long long)t->offset);
        cr_assert(t->offset >= end, "tensors overlap");
        end = t->offset + tspecs[i].nbytes;
        if (spud_type_get(t->type)) {
            cr_assert_eq(t->nbytes, tspecs[i].nbytes);
            cr_assert_not_null(t->data);
            cr_assert(memcmp(t->data, tdata[i], t->nbytes) == 0, "tensor %s data", tspecs[i].name);
        } else {
            cr_assert_eq(t->nbytes, 0);
            cr_assert_null(t->data);
        }
    }
    /* the writer pads after the last tensor too, as gguf-py does */
    cr_assert_eq(spud_gguf_file_size(g), spud_gguf_data_offset(g) + (end + a - 1) / a * a);
    cr_assert_null(spud_gguf_find_tensor(g, "f32"));
    cr_assert_null(spud_gguf_find_tensor(g, "f32.a.x"));
    cr_assert_null(spud_gguf_tensor_at(g, N_TSPECS));
}

GGUF_TEST(tensors_round_trip) {
    cr_assert_null(spud_type_get(7), "q5_1 must stay unsupported for this test");
    write_tensor_file(tmp("t.gguf"), 0);
    spud_gguf *g;
    cr_assert_eq(spud_gguf_open(tmp("t.gguf"), &g), SPUD_OK, "%s", spud_last_error());
    check_tensor_file(g, 0);
    spud_gguf_close(g);
}

GGUF_TEST(alignments) {
    const uint32_t aligns[] = {1, 8, 64, 4096};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "a%u.gguf", aligns[i]);
        write_tensor_file(tmp(name), aligns[i]);
        spud_gguf *g;
        cr_assert_eq(spud_gguf_open(tmp(name), &g), SPUD_OK, "%s", spud_last_error());
        check_tensor_file(g, aligns[i]);
        if (aligns[i] == 1) /* no padding at all: tensors back to back */
            cr_assert_eq(spud_gguf_tensor_at(g, 1)->offset, tspecs[0].nbytes);
        spud_gguf_close(g);
    }

    /* hand-built, alignment 16, second tensor at 16 */
    bb b = {0};
    void *copy;
    uint64_t ne[1] = {3};
    bb_hdr(&b, 3, 2, 1);
    bb_kv_u32(&b, "general.alignment", 16);
    bb_tinfo(&b, "x", 1, ne, SPUD_TYPE_F32, 0);
    bb_tinfo(&b, "y", 1, ne, SPUD_TYPE_F32, 16);
    bb_pad(&b, 16);
    size_t at = b.n;
    bb_zeros(&b, 28);
    spud_gguf *g = open_ok(&b, &copy);
    cr_assert_eq(spud_gguf_alignment(g), 16);
    cr_assert_eq(spud_gguf_data_offset(g), at);
    cr_assert_eq((const uint8_t *)spud_gguf_find_tensor(g, "y")->data, (uint8_t *)copy + at + 16);
    spud_gguf_close(g);
    free(copy);
    free(b.p);
}

GGUF_TEST(unsupported_type_is_recorded) {
    bb b = {0};
    void *copy;
    uint64_t ne[2] = {256, 2};
    cr_assert_null(spud_type_get(13), "q5_K must stay unsupported for this test");
    bb_hdr(&b, 3, 1, 0);
    bb_tinfo(&b, "w", 2, ne, 13 /* q5_K: 176 bytes per 256 */, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 2 * 176);
    spud_gguf *g = open_ok(&b, &copy);
    const spud_gguf_tensor *t = spud_gguf_find_tensor(g, "w");
    cr_assert_not_null(t);
    cr_assert_eq(t->type, 13);
    cr_assert_eq(t->nbytes, 0);
    cr_assert_null(t->data);
    spud_gguf_close(g);
    free(copy);
    /* its size still counts: one byte short is rejected */
    b.n--;
    expect_fail(&b, SPUD_ERR_FORMAT, "tensor 'w' data (offset 0, 352 bytes");
    free(b.p);
}

GGUF_TEST(typed_getters) {
    bb b = {0};
    void *copy;
    bb_all_types(&b, 3);
    spud_gguf *g = open_ok(&b, &copy);
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f;
    bool bo;
    spud_str s;
    const spud_gguf_kv *kv;

    cr_assert_eq(spud_gguf_get_u32(g, "s.u32", &u32), SPUD_OK);
    cr_assert_eq(u32, 4000000000u);
    cr_assert_eq(spud_gguf_get_u32(g, "s.u8", &u32), SPUD_OK);
    cr_assert_eq(u32, 200);
    cr_assert_eq(spud_gguf_get_u32(g, "s.i8", &u32), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "key 's.i8' value -100 does not fit in uint32"), "%s",
              spud_last_error());
    cr_assert_eq(spud_gguf_get_u32(g, "s.u64", &u32), SPUD_ERR_FORMAT);
    cr_assert_eq(spud_gguf_get_u32(g, "s.f32", &u32), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "has type float32, expected uint32"), "%s",
              spud_last_error());
    cr_assert_eq(spud_gguf_get_u32(g, "a.u32", &u32), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "has type array of uint32"), "%s", spud_last_error());

    cr_assert_eq(spud_gguf_get_i32(g, "s.i32", &i32), SPUD_OK);
    cr_assert_eq(i32, -2000000000);
    cr_assert_eq(spud_gguf_get_i32(g, "s.i16", &i32), SPUD_OK);
    cr_assert_eq(i32, -30000);
    cr_assert_eq(spud_gguf_get_i32(g, "s.u16", &i32), SPUD_OK);
    cr_assert_eq(i32, 60000);
    cr_assert_eq(spud_gguf_get_i32(g, "s.u32", &i32), SPUD_ERR_FORMAT);
    cr_assert_eq(spud_gguf_get_i32(g, "s.i64", &i32), SPUD_ERR_FORMAT);

    cr_assert_eq(spud_gguf_get_u64(g, "s.u64", &u64), SPUD_OK);
    cr_assert_eq(u64, (1ull << 63) + 5);
    cr_assert_eq(spud_gguf_get_u64(g, "s.i64", &u64), SPUD_ERR_FORMAT);
    cr_assert_eq(spud_gguf_get_u64(g, "s.u8", &u64), SPUD_OK);
    cr_assert_eq(u64, 200);

    cr_assert_eq(spud_gguf_get_f32(g, "s.f32", &f), SPUD_OK);
    cr_assert_eq(f, 1.5f);
    cr_assert_eq(spud_gguf_get_f32(g, "s.f64", &f), SPUD_OK);
    cr_assert_eq(f, (float)3.141592653589793);
    cr_assert_eq(spud_gguf_get_f32(g, "s.i32", &f), SPUD_OK);
    cr_assert_eq(f, -2000000000.0f);
    cr_assert_eq(spud_gguf_get_f32(g, "s.str", &f), SPUD_ERR_FORMAT);
    cr_assert_eq(spud_gguf_get_f32(g, "s.bool", &f), SPUD_ERR_FORMAT);

    cr_assert_eq(spud_gguf_get_bool(g, "s.bool", &bo), SPUD_OK);
    cr_assert(bo);
    cr_assert_eq(spud_gguf_get_bool(g, "s.u8", &bo), SPUD_ERR_FORMAT);
    cr_assert_eq(spud_gguf_get_str(g, "s.str", &s), SPUD_OK);
    cr_assert(str_is(s, S_STR, strlen(S_STR)));
    cr_assert_eq(spud_gguf_get_str(g, "s.u8", &s), SPUD_ERR_FORMAT);

    cr_assert_eq(spud_gguf_get_arr(g, "a.str", SPUD_GGUF_STRING, &kv), SPUD_OK);
    cr_assert_eq(kv->arr_n, N_STRS);
    cr_assert_eq(spud_gguf_get_arr(g, "a.i32", SPUD_GGUF_INT32, &kv), SPUD_OK);
    cr_assert_eq(spud_gguf_get_arr(g, "a.i32", SPUD_GGUF_UINT32, &kv), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "key 'a.i32' has type array of int32, expected array of uint32"),
              "%s", spud_last_error());
    cr_assert_eq(spud_gguf_get_arr(g, "s.u32", SPUD_GGUF_UINT32, &kv), SPUD_ERR_FORMAT);

    /* absent keys: NOT_FOUND and the message is left alone */
    spud_errorf(SPUD_OK, "sentinel");
    cr_assert_eq(spud_gguf_get_u32(g, "nope", &u32), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_i32(g, "nope", &i32), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_u64(g, "nope", &u64), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_f32(g, "nope", &f), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_bool(g, "nope", &bo), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_str(g, "nope", &s), SPUD_ERR_NOT_FOUND);
    cr_assert_eq(spud_gguf_get_arr(g, "nope", SPUD_GGUF_UINT8, &kv), SPUD_ERR_NOT_FOUND);
    cr_assert_str_eq(spud_last_error(), "sentinel");
    spud_gguf_close(g);
    free(copy);
    free(b.p);

    /* float64 out of float32 range */
    b = (bb){0};
    double big = 1e300;
    bb_hdr(&b, 3, 0, 1);
    bb_key(&b, "big", SPUD_GGUF_FLOAT64);
    bb_put(&b, &big, 8);
    g = open_ok(&b, &copy);
    cr_assert_eq(spud_gguf_get_f32(g, "big", &f), SPUD_ERR_FORMAT);
    spud_gguf_close(g);
    free(copy);
    free(b.p);
}

GGUF_TEST(writer_rejects_bad_input) {
    spud_gguf_writer *w = spud_gguf_writer_new();
    float data[64] = {0};
    uint64_t ne[4] = {4, 1, 1, 1};
    uint64_t ne0[2] = {4, 0};
    uint64_t ne33[1] = {33};
    uint64_t huge[2] = {1ull << 40, 1ull << 40};
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "t", SPUD_TYPE_F32, 1, ne, data, 16), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "t", SPUD_TYPE_F32, 1, ne, data, 16), SPUD_ERR_INVALID);
    cr_assert(strstr(spud_last_error(), "duplicate tensor name 't'"), "%s", spud_last_error());
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 0, ne, data, 16), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 5, ne, data, 16), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 2, ne0, data, 0), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 2, huge, data, 0), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 1, ne, data, 15), SPUD_ERR_INVALID);
    cr_assert(strstr(spud_last_error(), "15 bytes given, shape needs 16"), "%s", spud_last_error());
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_F32, 1, ne, NULL, 16), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", SPUD_TYPE_Q8_0, 1, ne33, data, 34), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", 999, 1, ne, data, 16), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_add_tensor(w, "u", 4, 1, ne, data, 16), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_arr(w, "k", SPUD_GGUF_STRING, data, 1), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_arr(w, "k", SPUD_GGUF_ARRAY, data, 1), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_arr(w, "k", SPUD_GGUF_UINT8, NULL, 1), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_str(w, "k", NULL), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_u32(w, NULL, 1), SPUD_ERR_INVALID);

    /* general.alignment must be a uint32 power of two when written */
    cr_assert_eq(spud_gguf_writer_set_u64(w, "general.alignment", 64), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("x.gguf")), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_u32(w, "general.alignment", 48), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("x.gguf")), SPUD_ERR_INVALID);
    cr_assert_eq(spud_gguf_writer_set_u32(w, "general.alignment", 0), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("x.gguf")), SPUD_ERR_INVALID);
    cr_assert_eq(count_files(tmpdir), 0);

    /* unwritable destination: I/O error, nothing left behind */
    cr_assert_eq(spud_gguf_writer_set_u32(w, "general.alignment", 32), SPUD_OK);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("no/such/dir.gguf")), SPUD_ERR_IO);
    check_message(spud_last_error());
    cr_assert_eq(spud_gguf_writer_write(w, tmpdir), SPUD_ERR_IO, "a directory is not replaced");
    cr_assert_eq(count_files(tmpdir), 0, "temporary file left behind");
    spud_gguf_writer_free(w);
    spud_gguf_writer_free(NULL);
}

GGUF_TEST(open_errors) {
    spud_gguf *g = (spud_gguf *)&g;
    cr_assert_eq(spud_gguf_open(tmp("missing.gguf"), &g), SPUD_ERR_IO);
    cr_assert_null(g);
    cr_assert(strstr(spud_last_error(), "missing.gguf: No such file"), "%s", spud_last_error());
    cr_assert_eq(spud_gguf_open(tmpdir, &g), SPUD_ERR_IO);
    cr_assert(strstr(spud_last_error(), "not a regular file"), "%s", spud_last_error());
    FILE *f = fopen(tmp("empty.gguf"), "wb");
    fclose(f);
    cr_assert_eq(spud_gguf_open(tmp("empty.gguf"), &g), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "empty.gguf: file is empty"), "%s", spud_last_error());
    f = fopen(tmp("bad.gguf"), "wb");
    fwrite("GGUF\x01\0\0\0", 1, 8, f);
    fclose(f);
    cr_assert_eq(spud_gguf_open(tmp("bad.gguf"), &g), SPUD_ERR_FORMAT);
    cr_assert(strstr(spud_last_error(), "bad.gguf: truncated header"), "%s", spud_last_error());
    cr_assert_eq(spud_gguf_open_memory(NULL, 5, &g), SPUD_ERR_INVALID);
    spud_gguf_close(NULL);
}

/* ---- corrupt inputs ---- */

/* A valid file with one f32 tensor of shape ne (n_dims) at offset, then data_bytes of data. */
static void bb_one_tensor(bb *b, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                          uint64_t offset, size_t data_bytes) {
    bb_hdr(b, 3, 1, 1);
    bb_kv_str(b, "general.name", "t");
    bb_tinfo(b, "t", n_dims, ne, type, offset);
    bb_pad(b, 32);
    bb_zeros(b, data_bytes);
}

typedef struct {
    const char *what;
    spud_status want;
    const char *needle;
} corrupt_case;

/* Build corrupt case i into b; returns false past the last case. */
static bool build_corrupt(int i, bb *b, corrupt_case *c) {
    static const uint64_t ne4[1] = {4}, ne0[2] = {4, 0}, ne64[1] = {64}, ne33[1] = {33},
                          ne_ovf[2] = {1ull << 32, 1ull << 32}, ne_big[1] = {1ull << 62},
                          ne5[5] = {1, 1, 1, 1, 1}, ne32[1] = {32};
    b->n = 0;
    switch (i) {
    case 0:
        *c = (corrupt_case){"wrong magic", SPUD_ERR_FORMAT, "not a GGUF file (magic 'GGML')"};
        bb_put(b, "GGML", 4), bb_zeros(b, 20);
        return true;
    case 1:
        *c = (corrupt_case){"tiny", SPUD_ERR_FORMAT, "file too small (2 bytes)"};
        bb_put(b, "GG", 2);
        return true;
    case 2:
        *c = (corrupt_case){"short header", SPUD_ERR_FORMAT, "truncated header (8 bytes"};
        bb_put(b, "GGUF", 4), bb_u32(b, 3);
        return true;
    case 3:
        *c = (corrupt_case){"v1", SPUD_ERR_UNSUPPORTED, "GGUF version 1 is not supported"};
        bb_hdr(b, 1, 0, 0);
        return true;
    case 4:
        *c = (corrupt_case){"v4", SPUD_ERR_UNSUPPORTED, "unsupported GGUF version 4"};
        bb_hdr(b, 4, 0, 0);
        return true;
    case 5:
        *c = (corrupt_case){"big-endian", SPUD_ERR_UNSUPPORTED, "big-endian"};
        bb_hdr(b, 0x03000000u, 0, 0);
        return true;
    case 6:
        *c = (corrupt_case){"huge n_kv", SPUD_ERR_FORMAT, "1152921504606846976 kvs and 0 tensors cannot fit"};
        bb_hdr(b, 3, 0, 1ull << 60), bb_kv_u32(b, "a", 1);
        return true;
    case 7:
        *c = (corrupt_case){"huge n_tensors", SPUD_ERR_FORMAT, "cannot fit in a file of"};
        bb_hdr(b, 3, 1ull << 60, 0), bb_zeros(b, 64);
        return true;
    case 8:
        *c = (corrupt_case){"max n_kv", SPUD_ERR_FORMAT, "cannot fit"};
        bb_hdr(b, 3, UINT64_MAX, UINT64_MAX), bb_zeros(b, 64);
        return true;
    case 9:
        *c = (corrupt_case){"counts fit alone, not together", SPUD_ERR_FORMAT, "cannot fit"};
        bb_hdr(b, 3, 1, 2), bb_zeros(b, 40);
        return true;
    case 10:
        *c = (corrupt_case){"key past EOF", SPUD_ERR_FORMAT, "kv 0: key of length 1000 at offset 32"};
        bb_hdr(b, 3, 0, 1), bb_u64(b, 1000), bb_put(b, "abcdefgh", 8);
        return true;
    case 11:
        *c = (corrupt_case){"string past EOF", SPUD_ERR_FORMAT,
                            "key 'a': string of length 9223372036854775808"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_STRING), bb_u64(b, 1ull << 63), bb_put(b, "xy", 2);
        return true;
    case 12:
        *c = (corrupt_case){"array bytes overflow", SPUD_ERR_FORMAT,
                            "key 'a': array of 2305843009213693952 uint64"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, SPUD_GGUF_UINT64);
        bb_u64(b, 1ull << 61), bb_zeros(b, 16);
        return true;
    case 13:
        *c = (corrupt_case){"array past EOF", SPUD_ERR_FORMAT, "key 'a': array of 3 uint32"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, SPUD_GGUF_UINT32);
        bb_u64(b, 3), bb_zeros(b, 11);
        return true;
    case 14:
        *c = (corrupt_case){"huge string array", SPUD_ERR_FORMAT, "array of 1099511627776 strings"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, SPUD_GGUF_STRING);
        bb_u64(b, 1ull << 40), bb_zeros(b, 64);
        return true;
    case 15:
        *c = (corrupt_case){"string element past EOF", SPUD_ERR_FORMAT,
                            "key 'a': array element 1: string of length 100"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, SPUD_GGUF_STRING);
        bb_u64(b, 2), bb_str(b, "ab"), bb_u64(b, 100), bb_zeros(b, 10);
        return true;
    case 16:
        *c = (corrupt_case){"nested array", SPUD_ERR_FORMAT, "key 'a': nested arrays are not supported"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, SPUD_GGUF_ARRAY);
        bb_u64(b, 1), bb_u32(b, SPUD_GGUF_UINT8), bb_u64(b, 1), bb_u8(b, 0);
        return true;
    case 17:
        *c = (corrupt_case){"unknown value type", SPUD_ERR_FORMAT, "key 'a': unknown value type 13"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", 13), bb_zeros(b, 8);
        return true;
    case 18:
        *c = (corrupt_case){"unknown element type", SPUD_ERR_FORMAT,
                            "key 'a': unknown array element type 99"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_ARRAY), bb_u32(b, 99), bb_u64(b, 1), bb_zeros(b, 8);
        return true;
    case 19:
        *c = (corrupt_case){"value truncated", SPUD_ERR_FORMAT, "key 'a': number at offset 37 (8 bytes)"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "a", SPUD_GGUF_UINT64), bb_u32(b, 0);
        return true;
    case 20:
        *c = (corrupt_case){"n_dims 0", SPUD_ERR_FORMAT, "tensor 't': n_dims 0 is not in 1..4"};
        bb_one_tensor(b, 0, ne4, SPUD_TYPE_F32, 0, 64);
        return true;
    case 21:
        *c = (corrupt_case){"n_dims 5", SPUD_ERR_FORMAT, "tensor 't': n_dims 5 is not in 1..4"};
        bb_one_tensor(b, 5, ne5, SPUD_TYPE_F32, 0, 64);
        return true;
    case 22:
        *c = (corrupt_case){"zero dimension", SPUD_ERR_FORMAT, "tensor 't': dimension 1 is 0"};
        bb_one_tensor(b, 2, ne0, SPUD_TYPE_F32, 0, 64);
        return true;
    case 23:
        *c = (corrupt_case){"element count overflow", SPUD_ERR_FORMAT,
                            "tensor 't': element count overflows"};
        bb_one_tensor(b, 2, ne_ovf, SPUD_TYPE_F32, 0, 64);
        return true;
    case 24:
        *c = (corrupt_case){"byte size overflow", SPUD_ERR_FORMAT, "tensor 't': byte size overflows"};
        bb_one_tensor(b, 1, ne_big, SPUD_TYPE_F32, 0, 64);
        return true;
    case 25:
        *c = (corrupt_case){"row not whole blocks", SPUD_ERR_FORMAT,
                            "tensor 't': row length 33 is not a multiple of the q8_0 block size 32"};
        bb_one_tensor(b, 1, ne33, SPUD_TYPE_Q8_0, 0, 64);
        return true;
    case 26:
        *c = (corrupt_case){"unknown type id", SPUD_ERR_FORMAT, "tensor 't': unknown ggml type id 999"};
        bb_one_tensor(b, 1, ne4, 999, 0, 64);
        return true;
    case 27:
        *c = (corrupt_case){"retired type id", SPUD_ERR_FORMAT, "tensor 't': unknown ggml type id 4"};
        bb_one_tensor(b, 1, ne32, 4, 0, 64);
        return true;
    case 28:
        *c = (corrupt_case){"misaligned offset", SPUD_ERR_FORMAT,
                            "tensor 't': data offset 4 is not a multiple of the alignment 32"};
        bb_one_tensor(b, 1, ne4, SPUD_TYPE_F32, 4, 64);
        return true;
    case 29:
        *c = (corrupt_case){"data past EOF", SPUD_ERR_FORMAT,
                            "tensor 't' data (offset 0, 256 bytes, data section at 96) extends past "
                            "end of file (size 112)"};
        bb_one_tensor(b, 1, ne64, SPUD_TYPE_F32, 0, 16);
        return true;
    case 30:
        *c = (corrupt_case){"offset past EOF", SPUD_ERR_FORMAT, "extends past end of file"};
        bb_one_tensor(b, 1, ne4, SPUD_TYPE_F32, 1ull << 63, 64);
        return true;
    case 31:
        *c = (corrupt_case){"duplicate key", SPUD_ERR_FORMAT, "duplicate key 'a' (kv 0 and 2)"};
        bb_hdr(b, 3, 0, 3), bb_kv_u32(b, "a", 1), bb_kv_u32(b, "b", 1), bb_kv_str(b, "a", "x");
        return true;
    case 32:
        *c = (corrupt_case){"duplicate key, unprintable", SPUD_ERR_FORMAT, "duplicate key 'a\\x0ab\\x00'"};
        bb_hdr(b, 3, 0, 2);
        bb_strn(b, "a\nb", 4), bb_u32(b, SPUD_GGUF_BOOL), bb_u8(b, 1);
        bb_strn(b, "a\nb", 4), bb_u32(b, SPUD_GGUF_BOOL), bb_u8(b, 0);
        return true;
    case 33:
        *c = (corrupt_case){"duplicate tensor", SPUD_ERR_FORMAT,
                            "duplicate tensor name 't' (tensors 0 and 1)"};
        bb_hdr(b, 3, 2, 0), bb_tinfo(b, "t", 1, ne4, SPUD_TYPE_F32, 0);
        bb_tinfo(b, "t", 1, ne4, SPUD_TYPE_F32, 32), bb_pad(b, 32), bb_zeros(b, 64);
        return true;
    case 34:
        *c = (corrupt_case){"alignment 0", SPUD_ERR_FORMAT,
                            "general.alignment = 0 is not a nonzero power of two"};
        bb_hdr(b, 3, 0, 1), bb_kv_u32(b, "general.alignment", 0);
        return true;
    case 35:
        *c = (corrupt_case){"alignment 48", SPUD_ERR_FORMAT, "general.alignment = 48 is not"};
        bb_hdr(b, 3, 0, 1), bb_kv_u32(b, "general.alignment", 48);
        return true;
    case 36:
        *c = (corrupt_case){"alignment type", SPUD_ERR_FORMAT,
                            "general.alignment has type uint64, expected uint32"};
        bb_hdr(b, 3, 0, 1), bb_key(b, "general.alignment", SPUD_GGUF_UINT64), bb_u64(b, 32);
        return true;
    case 37:
        *c = (corrupt_case){"tensor info truncated", SPUD_ERR_FORMAT, "tensor 't': dimension at offset"};
        bb_hdr(b, 3, 1, 0), bb_str(b, "t"), bb_u32(b, 4), bb_u64(b, 4), bb_u64(b, 4);
        bb_zeros(b, 7);
        return true;
    case 38:
        *c = (corrupt_case){"tensor name past EOF", SPUD_ERR_FORMAT, "tensor 0: tensor name of length"};
        bb_hdr(b, 3, 1, 0), bb_u64(b, 1ull << 40), bb_zeros(b, 32);
        return true;
    case 39:
        *c = (corrupt_case){"unsupported type, data past EOF", SPUD_ERR_FORMAT,
                            "tensor 't' data (offset 0, 24 bytes"};
        bb_one_tensor(b, 1, ne32, 7 /* q5_1 */, 0, 23);
        return true;
    default:
        return false;
    }
}

GGUF_TEST(corrupt_inputs_rejected_with_message) {
    bb b = {0};
    corrupt_case c;
    int n = 0;
    for (int i = 0; build_corrupt(i, &b, &c); i++, n++) {
        cr_log_info("case %d: %s", i, c.what);
        expect_fail(&b, c.want, c.needle);
    }
    cr_assert_eq(n, 40);
    b.n = 0;
    expect_fail(&b, SPUD_ERR_FORMAT, "empty buffer");
    free(b.p);
}

/* Every proper prefix of a valid file that cuts into the header or the
 * tensor data is rejected; only the zero padding after the last tensor may go. */
GGUF_TEST(every_truncation_rejected) {
    write_tensor_file(tmp("t.gguf"), 0);
    spud_gguf_writer *w = spud_gguf_writer_new();
    spud_gguf *g;
    /* add kvs of every type in front of the tensors */
    bb b = {0};
    void *copy;
    bb_all_types(&b, 3);
    g = open_ok(&b, &copy);
    for (uint64_t i = 0; i < spud_gguf_n_kv(g); i++)
        cr_assert_eq(spud_gguf_writer_copy_kv(w, spud_gguf_kv_at(g, i)), SPUD_OK);
    spud_gguf_close(g);
    free(copy);
    free(b.p);
    cr_assert_eq(spud_gguf_open(tmp("t.gguf"), &g), SPUD_OK);
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        cr_assert_eq(spud_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, tdata[i],
                                                 tspecs[i].nbytes),
                     SPUD_OK);
    }
    spud_gguf_close(g);
    cr_assert_eq(spud_gguf_writer_write(w, tmp("all.gguf")), SPUD_OK, "%s", spud_last_error());
    spud_gguf_writer_free(w);

    char *file;
    size_t size;
    cr_assert_eq(spud_read_file(tmp("all.gguf"), &file, &size), SPUD_OK);
    cr_assert_eq(spud_gguf_open_memory(file, size, &g), SPUD_OK);
    uint64_t end = 0;
    for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
        const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
        uint64_t e = spud_gguf_data_offset(g) + t->offset + tspecs[i].nbytes;
        end = e > end ? e : end;
    }
    spud_gguf_close(g);
    cr_assert_leq(end, size);
    for (size_t len = 0; len <= size; len++) {
        spud_status st = open_copy(file, len, &g, &copy);
        if (len < end) {
            cr_assert_eq(st, SPUD_ERR_FORMAT, "prefix of %zu bytes: %s", len, spud_last_error());
            cr_assert_null(g);
            check_message(spud_last_error());
        } else {
            cr_assert_eq(st, SPUD_OK, "prefix of %zu bytes: %s", len, spud_last_error());
            spud_gguf_close(g);
        }
        free(copy);
    }
    spud_free(file);
}

/* Every allocation failure is reported as NOMEM, without leaks (ASan builds check). */
GGUF_TEST(allocation_failures) {
    write_tensor_file(tmp("t.gguf"), 0);
    int n;
    for (n = 0; n < 100; n++) {
        spud_gguf *g = (spud_gguf *)&g;
        spud_alloc_fail_after(n);
        spud_status st = spud_gguf_open(tmp("t.gguf"), &g);
        spud_alloc_fail_after(-1);
        if (st == SPUD_OK) {
            check_tensor_file(g, 0);
            spud_gguf_close(g);
            break;
        }
        cr_assert_eq(st, SPUD_ERR_NOMEM, "n=%d: %s", n, spud_last_error());
        cr_assert_null(g);
        check_message(spud_last_error());
    }
    cr_assert(n >= 1 && n < 100, "open needed %d allocations", n);

    /* the writer: every step can fail; finish only when all succeed */
    bb b = {0};
    void *copy;
    bb_all_types(&b, 3);
    spud_gguf *src = open_ok(&b, &copy);
    int failures = 0;
    for (n = 0; n < 1000; n++) {
        spud_status st = SPUD_OK;
        spud_alloc_fail_after(n);
        spud_gguf_writer *w = spud_gguf_writer_new();
        if (!w) st = SPUD_ERR_NOMEM;
        for (uint64_t i = 0; st == SPUD_OK && i < spud_gguf_n_kv(src); i++)
            st = spud_gguf_writer_copy_kv(w, spud_gguf_kv_at(src, i));
        if (st == SPUD_OK) st = spud_gguf_writer_set_str(w, "s.str", "replaced");
        for (size_t i = 0; st == SPUD_OK && i < N_TSPECS; i++)
            st = spud_gguf_writer_add_tensor(w, tspecs[i].name, tspecs[i].type, tspecs[i].n_dims,
                                             tspecs[i].ne, tdata[i], tspecs[i].nbytes);
        if (st == SPUD_OK) st = spud_gguf_writer_write(w, tmp("w.gguf"));
        spud_alloc_fail_after(-1);
        spud_gguf_writer_free(w);
        if (st == SPUD_OK) break;
        cr_assert_eq(st, SPUD_ERR_NOMEM, "n=%d: %s", n, spud_last_error());
        cr_assert_eq(count_files(tmpdir), 1, "n=%d: a file was left behind", n);
        failures++;
    }
    cr_assert(failures > 10 && n < 1000, "writer: %d failures", failures);
    spud_gguf *g;
    cr_assert_eq(spud_gguf_open(tmp("w.gguf"), &g), SPUD_OK);
    check_tensor_file(g, 0);
    cr_assert(spud_str_eq(must_kv(g, "s.str", SPUD_GGUF_STRING)->v.str, "replaced"));
    check_arrays(g);
    spud_gguf_close(g);
    spud_gguf_close(src);
    free(copy);
    free(b.p);
}

/* ---- files written by llama.cpp's gguf-py ---- */

static const struct {
    const char *file, *arch;
    uint64_t n_tensors, size;
    uint32_t dim, vocab;
    struct {
        uint32_t type, count;
    } types[3];
} fixtures[] = {
    {"llama-f32", "llama", 21, 2383200, 128, 768, {{SPUD_TYPE_F32, 21}}},
    {"llama-f16", "llama", 21, 1203552, 128, 768, {{SPUD_TYPE_F16, 16}, {SPUD_TYPE_F32, 5}}},
    {"llama-bf16", "llama", 21, 1203616, 128, 768, {{SPUD_TYPE_BF16, 16}, {SPUD_TYPE_F32, 5}}},
    {"llama-q8_0", "llama", 21, 650656, 128, 768, {{SPUD_TYPE_F32, 5}, {SPUD_TYPE_Q8_0, 16}}},
    {"llama-q4_0", "llama", 21, 355744, 128, 768, {{SPUD_TYPE_F32, 5}, {SPUD_TYPE_Q4_0, 16}}},
    {"llama-q4_k", "llama", 30, 1577376, 256, 768, {{SPUD_TYPE_F32, 7}, {SPUD_TYPE_Q4_K, 23}}},
    {"llama-q6_k", "llama", 30, 2287008, 256, 768, {{SPUD_TYPE_F32, 7}, {SPUD_TYPE_Q6_K, 23}}},
    {"llama-q4_k_m", "llama", 30, 1687200, 256, 768,
     {{SPUD_TYPE_F32, 7}, {SPUD_TYPE_Q4_K, 20}, {SPUD_TYPE_Q6_K, 3}}},
    {"qwen2-f32", "qwen2", 27, 2385504, 128, 768, {{SPUD_TYPE_F32, 27}}},
    {"qwen2-q8_0", "qwen2", 27, 652928, 128, 768, {{SPUD_TYPE_F32, 11}, {SPUD_TYPE_Q8_0, 16}}},
    {"llama-tied-f32", "llama", 20, 1588768, 128, 512, {{SPUD_TYPE_F32, 20}}},
};

/* Rewriting a file with the writer gives the same bytes, apart from padding
 * the writer adds at the end (gguf-py does not pad a file with no tensors). */
static void check_rewrite_identical(const spud_gguf *g, const char *orig_path) {
    char *a, *b;
    size_t na, nb;
    rewrite(g, tmp("rewrite.gguf"));
    cr_assert_eq(spud_read_file(orig_path, &a, &na), SPUD_OK);
    cr_assert_eq(spud_read_file(tmp("rewrite.gguf"), &b, &nb), SPUD_OK);
    cr_assert(nb >= na && nb - na < spud_gguf_alignment(g), "%s: %zu bytes, rewritten %zu",
              orig_path, na, nb);
    cr_assert(memcmp(a, b, na) == 0, "%s: rewrite differs", orig_path);
    for (size_t i = na; i < nb; i++) cr_assert_eq(b[i], 0);
    spud_free(a);
    spud_free(b);
    unlink(tmp("rewrite.gguf"));
}

GGUF_TEST(shared_fixtures) {
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char path[512], key[64];
        snprintf(path, sizeof path, "%s/fixtures/%s.gguf", SPUD_SHARED_DIR, fixtures[f].file);
        spud_gguf *g;
        cr_assert_eq(spud_gguf_open(path, &g), SPUD_OK, "%s", spud_last_error());
        cr_assert_eq(spud_gguf_version(g), 3);
        cr_assert_eq(spud_gguf_alignment(g), 32);
        cr_assert_eq(spud_gguf_file_size(g), fixtures[f].size, "%s size", path);
        cr_assert_eq(spud_gguf_n_tensors(g), fixtures[f].n_tensors, "%s", path);
        spud_str arch;
        cr_assert_eq(spud_gguf_get_str(g, "general.architecture", &arch), SPUD_OK);
        cr_assert(spud_str_eq(arch, fixtures[f].arch));
        uint32_t dim;
        snprintf(key, sizeof key, "%s.embedding_length", fixtures[f].arch);
        cr_assert_eq(spud_gguf_get_u32(g, key, &dim), SPUD_OK, "%s", key);
        cr_assert_eq(dim, fixtures[f].dim);
        const spud_gguf_kv *toks;
        cr_assert_eq(spud_gguf_get_arr(g, "tokenizer.ggml.tokens", SPUD_GGUF_STRING, &toks), SPUD_OK);
        cr_assert_eq(toks->arr_n, fixtures[f].vocab);
        spud_str model;
        cr_assert_eq(spud_gguf_get_str(g, "tokenizer.ggml.model", &model), SPUD_OK);
        cr_assert(spud_str_eq(model, "gpt2"));

        const spud_gguf_tensor *te = spud_gguf_find_tensor(g, "token_embd.weight");
        cr_assert_not_null(te);
        cr_assert_eq(te->n_dims, 2);
        cr_assert_eq(te->ne[0], fixtures[f].dim);
        cr_assert_eq(te->ne[1], fixtures[f].vocab);
        bool tied = strstr(fixtures[f].file, "tied") != NULL;
        cr_assert_eq(spud_gguf_find_tensor(g, "output.weight") == NULL, tied);

        /* per-type counts; every tensor inside the file; gguf-py pads after the last */
        uint32_t counts[SPUD_TYPE_COUNT] = {0};
        uint64_t end = 0;
        for (uint64_t i = 0; i < spud_gguf_n_tensors(g); i++) {
            const spud_gguf_tensor *t = spud_gguf_tensor_at(g, i);
            cr_assert_lt(t->type, SPUD_TYPE_COUNT);
            counts[t->type]++;
            cr_assert_not_null(t->data, "%s: type %u unsupported", path, t->type);
            cr_assert_gt(t->nbytes, 0);
            uint64_t e = spud_gguf_data_offset(g) + t->offset + t->nbytes;
            cr_assert_leq(e, spud_gguf_file_size(g));
            end = e > end ? e : end;
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
            cr_assert_eq(spud_gguf_find_tensor(g, name), t);
        }
        cr_assert_eq((end + 31) / 32 * 32, spud_gguf_file_size(g), "%s: data end %llu", path,
                     (unsigned long long)end);
        uint32_t total = 0;
        for (int k = 0; k < 3 && fixtures[f].types[k].count; k++) {
            cr_assert_eq(counts[fixtures[f].types[k].type], fixtures[f].types[k].count,
                         "%s: type %u", path, fixtures[f].types[k].type);
            total += fixtures[f].types[k].count;
        }
        cr_assert_eq(total, spud_gguf_n_tensors(g));
        check_rewrite_identical(g, path);
        spud_gguf_close(g);
    }
}

GGUF_TEST(shared_vocab_files) {
    static const struct {
        const char *name;
        uint64_t n_tokens;
        const char *model;
    } known[] = {
        {"gpt-2", 50257, "gpt2"},        {"llama-spm", 32000, "llama"},
        {"phi-3", 32064, "llama"},       {"bert-bge", 30522, "bert"},
        {"deepseek-llm", 102400, "gpt2"}, {"falcon", 65024, "gpt2"},
        {"baichuan", 64000, "llama"},    {"starcoder", 49152, "gpt2"},
    };
    glob_t gl;
    char pattern[512];
    size_t n_known = 0;
    snprintf(pattern, sizeof pattern, "%s/vocab/*.gguf", SPUD_SHARED_DIR);
    cr_assert_eq(glob(pattern, 0, NULL, &gl), 0, "no vocab files in %s", pattern);
    cr_assert_geq(gl.gl_pathc, 10);
    for (size_t f = 0; f < gl.gl_pathc; f++) {
        const char *path = gl.gl_pathv[f];
        spud_gguf *g;
        cr_assert_eq(spud_gguf_open(path, &g), SPUD_OK, "%s", spud_last_error());
        cr_assert_eq(spud_gguf_n_tensors(g), 0);
        /* vocab-only files end right after the header, before any padding */
        cr_assert_geq(spud_gguf_data_offset(g), spud_gguf_file_size(g));
        const spud_gguf_kv *toks, *scores, *types;
        cr_assert_eq(spud_gguf_get_arr(g, "tokenizer.ggml.tokens", SPUD_GGUF_STRING, &toks), SPUD_OK,
                     "%s", path);
        cr_assert_gt(toks->arr_n, 1000);
        if (spud_gguf_get_arr(g, "tokenizer.ggml.scores", SPUD_GGUF_FLOAT32, &scores) == SPUD_OK)
            cr_assert_eq(scores->arr_n, toks->arr_n);
        if (spud_gguf_get_arr(g, "tokenizer.ggml.token_type", SPUD_GGUF_INT32, &types) == SPUD_OK)
            cr_assert_eq(types->arr_n, toks->arr_n);
        spud_str model;
        cr_assert_eq(spud_gguf_get_str(g, "tokenizer.ggml.model", &model), SPUD_OK, "%s", path);
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
            char want[128];
            snprintf(want, sizeof want, "/ggml-vocab-%s.gguf", known[k].name);
            const char *tail = path + strlen(path) - strlen(want);
            if (tail >= path && strcmp(tail, want) == 0) {
                cr_assert_eq(toks->arr_n, known[k].n_tokens, "%s", path);
                cr_assert(spud_str_eq(model, known[k].model), "%s", path);
                n_known++;
            }
        }
        if (f < 3) check_rewrite_identical(g, path);
        spud_gguf_close(g);
    }
    cr_assert_eq(n_known, sizeof known / sizeof known[0]);
    globfree(&gl);
}

/* ---- fuzzing finds and seeds, replayed ---- */

static volatile uint8_t sink; /* makes the reads of tensor data happen */

static void replay_dir(const char *dir, bool must_open) {
    glob_t gl;
    char pattern[512];
    snprintf(pattern, sizeof pattern, "%s/*", dir);
    if (glob(pattern, 0, NULL, &gl) != 0) return;
    for (size_t i = 0; i < gl.gl_pathc; i++) {
        char *data;
        size_t size;
        void *copy;
        spud_gguf *g;
        size_t len = strlen(gl.gl_pathv[i]);
        if (len > 3 && strcmp(gl.gl_pathv[i] + len - 3, ".md") == 0) continue;
        cr_assert_eq(spud_read_file(gl.gl_pathv[i], &data, &size), SPUD_OK);
        spud_status st = open_copy(data, size, &g, &copy);
        if (st == SPUD_OK) {
            for (uint64_t k = 0; k < spud_gguf_n_tensors(g); k++) {
                const spud_gguf_tensor *t = spud_gguf_tensor_at(g, k);
                for (uint64_t j = 0; j < t->nbytes; j++) sink += ((const uint8_t *)t->data)[j];
            }
            spud_gguf_close(g);
        } else {
            cr_assert(!must_open, "%s: %s", gl.gl_pathv[i], spud_last_error());
            check_message(spud_last_error());
        }
        free(copy);
        spud_free(data);
    }
    globfree(&gl);
}

GGUF_TEST(regressions_and_seeds) {
    replay_dir(SPUD_SOURCE_DIR "/tests/regress/gguf", false);
    replay_dir(SPUD_SOURCE_DIR "/fuzz/corpus/gguf", true); /* the seeds are valid files */
}
