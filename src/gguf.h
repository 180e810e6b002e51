/* gguf.h: read (mmapped, bounds-checked) and write GGUF v2/v3 files.
 *
 * The reader validates the whole header up front: every count, string
 * length, array size, tensor shape and data offset is checked against the
 * file size before anything is used, so a spud_gguf that opened is safe to
 * walk without further checks. Strings point into the mapping and are NOT
 * NUL-terminated (use spud_str with its length).
 */
#ifndef SPUD_GGUF_H
#define SPUD_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define SPUD_GGUF_MAX_DIMS 4
#define SPUD_GGUF_DEFAULT_ALIGNMENT 32

typedef enum {
    SPUD_GGUF_UINT8 = 0,
    SPUD_GGUF_INT8 = 1,
    SPUD_GGUF_UINT16 = 2,
    SPUD_GGUF_INT16 = 3,
    SPUD_GGUF_UINT32 = 4,
    SPUD_GGUF_INT32 = 5,
    SPUD_GGUF_FLOAT32 = 6,
    SPUD_GGUF_BOOL = 7,
    SPUD_GGUF_STRING = 8,
    SPUD_GGUF_ARRAY = 9,
    SPUD_GGUF_UINT64 = 10,
    SPUD_GGUF_INT64 = 11,
    SPUD_GGUF_FLOAT64 = 12,
    SPUD_GGUF_TYPE_COUNT
} spud_gguf_type;

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} spud_str;

typedef struct {
    spud_str key;
    spud_gguf_type type;
    union {
        uint64_t u64; /* UINT8..UINT64 widened */
        int64_t i64;  /* INT8..INT64 widened */
        double f64;   /* FLOAT32 / FLOAT64 widened */
        bool b;
        spud_str str;
    } v;
    /* type == ARRAY: */
    spud_gguf_type arr_type; /* element type (never ARRAY: nested arrays are rejected) */
    uint64_t arr_n;
    const void *arr_data;    /* raw little-endian elements (non-string arrays) */
    spud_str *arr_strs;      /* arr_n strings (string arrays), owned by the spud_gguf */
} spud_gguf_kv;

typedef struct {
    spud_str name;
    uint32_t n_dims;
    uint64_t ne[SPUD_GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;                   /* GGML type id (see tensor.h); may be unsupported */
    uint64_t offset;                 /* relative to the data section */
    uint64_t nbytes;                 /* 0 when the type is unsupported */
    const void *data;                /* NULL when the type is unsupported */
} spud_gguf_tensor;

typedef struct spud_gguf spud_gguf;

/* Open and validate a file (mmapped read-only). */
spud_status spud_gguf_open(const char *path, spud_gguf **out);
/* Validate a buffer in memory (not copied; must outlive the spud_gguf). */
spud_status spud_gguf_open_memory(const void *data, size_t size, spud_gguf **out);
void spud_gguf_close(spud_gguf *g);

uint32_t spud_gguf_version(const spud_gguf *g);
uint64_t spud_gguf_file_size(const spud_gguf *g);
uint32_t spud_gguf_alignment(const spud_gguf *g);

uint64_t spud_gguf_n_kv(const spud_gguf *g);
const spud_gguf_kv *spud_gguf_kv_at(const spud_gguf *g, uint64_t i);
const spud_gguf_kv *spud_gguf_find_kv(const spud_gguf *g, const char *key); /* NULL if absent */

uint64_t spud_gguf_n_tensors(const spud_gguf *g);
const spud_gguf_tensor *spud_gguf_tensor_at(const spud_gguf *g, uint64_t i);
const spud_gguf_tensor *spud_gguf_find_tensor(const spud_gguf *g, const char *name);

/* Typed getters. Return SPUD_ERR_NOT_FOUND if the key is absent (no message
 * set), SPUD_ERR_FORMAT with a message if it has an incompatible type or the
 * value does not fit. Integer getters accept any integer type in range. */
spud_status spud_gguf_get_u32(const spud_gguf *g, const char *key, uint32_t *out);
spud_status spud_gguf_get_i32(const spud_gguf *g, const char *key, int32_t *out);
spud_status spud_gguf_get_u64(const spud_gguf *g, const char *key, uint64_t *out);
spud_status spud_gguf_get_f32(const spud_gguf *g, const char *key, float *out); /* also from ints */
spud_status spud_gguf_get_bool(const spud_gguf *g, const char *key, bool *out);
spud_status spud_gguf_get_str(const spud_gguf *g, const char *key, spud_str *out);
/* Array of the given element type (STRING allowed: then use kv->arr_strs). */
spud_status spud_gguf_get_arr(const spud_gguf *g, const char *key, spud_gguf_type elem,
                              const spud_gguf_kv **out);

bool spud_str_eq(spud_str s, const char *cstr);
const char *spud_gguf_type_name(spud_gguf_type t);

/* ---- writer ----
 * Collect metadata and tensors, then write one GGUF v3 file. Tensor data is
 * NOT copied: each pointer must stay valid until spud_gguf_writer_write returns.
 * Keys keep insertion order; setting an existing key replaces its value. */
typedef struct spud_gguf_writer spud_gguf_writer;

spud_gguf_writer *spud_gguf_writer_new(void); /* NULL on allocation failure */
void spud_gguf_writer_free(spud_gguf_writer *w);
spud_status spud_gguf_writer_set_u32(spud_gguf_writer *w, const char *key, uint32_t v);
spud_status spud_gguf_writer_set_i32(spud_gguf_writer *w, const char *key, int32_t v);
spud_status spud_gguf_writer_set_u64(spud_gguf_writer *w, const char *key, uint64_t v);
spud_status spud_gguf_writer_set_f32(spud_gguf_writer *w, const char *key, float v);
spud_status spud_gguf_writer_set_bool(spud_gguf_writer *w, const char *key, bool v);
spud_status spud_gguf_writer_set_str(spud_gguf_writer *w, const char *key, const char *v);
/* Array of fixed-size elements (data copied). */
spud_status spud_gguf_writer_set_arr(spud_gguf_writer *w, const char *key, spud_gguf_type elem,
                                     const void *data, uint64_t n);
/* Array of strings (copied); lens may be NULL for NUL-terminated strings. */
spud_status spud_gguf_writer_set_arr_str(spud_gguf_writer *w, const char *key,
                                         const char *const *strs, const uint64_t *lens, uint64_t n);
/* Copy one key/value (any type) from a reader. */
spud_status spud_gguf_writer_copy_kv(spud_gguf_writer *w, const spud_gguf_kv *kv);
spud_status spud_gguf_writer_add_tensor(spud_gguf_writer *w, const char *name, uint32_t type,
                                        uint32_t n_dims, const uint64_t *ne, const void *data,
                                        uint64_t nbytes);
/* Write to path (via a temporary file renamed into place). Uses general.alignment if set. */
spud_status spud_gguf_writer_write(spud_gguf_writer *w, const char *path);

/* ---- more accessors ----
 * Notes on the reader: a tensor type id that GGML does not define (or has
 * retired) is rejected at open, as GGML's reader does; a GGML type spud cannot
 * compute with opens with data NULL and nbytes 0, but its data must still lie
 * inside the file. The writer requires nbytes to match the shape for every
 * GGML type. */
/* File offset of the data section (a multiple of the alignment; may equal or
 * exceed the file size when no tensor has data, as in vocab-only files). */
uint64_t spud_gguf_data_offset(const spud_gguf *g);
/* The name used in messages: the path given to spud_gguf_open, or "<memory>". */
const char *spud_gguf_name(const spud_gguf *g);
/* Bytes of one element of a fixed-size value type; 0 for STRING, ARRAY or unknown. */
size_t spud_gguf_type_size(spud_gguf_type t);
/* Element i of a fixed-size array kv, read safely from the (possibly
 * unaligned) little-endian arr_data. Integers and bools widen (a uint64 above
 * INT64_MAX wraps); spud_gguf_arr_int gives 0 for float elements, and both
 * give 0 when kv is not such an array or i >= arr_n. */
int64_t spud_gguf_arr_int(const spud_gguf_kv *kv, uint64_t i);
double spud_gguf_arr_float(const spud_gguf_kv *kv, uint64_t i);

#endif
