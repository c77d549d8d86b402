/* safetensors.h - read-only, mmap-backed access to safetensors checkpoints.
 *
 * A checkpoint is one file (model.safetensors) or several shards listed by
 * model.safetensors.index.json; each file is mapped once. The header is
 * untrusted: its length is bounded, its JSON validated, every dtype known,
 * product(shape) * dtype size == end - begin, every range inside the file and
 * no two ranges overlapping. Any violation is an error naming the file and the
 * tensor, never an out-of-bounds read.
 *
 * Aliases: a checkpoint may store one tensor under one name and say in
 * __metadata__ that another name is the same tensor (tinystories-656k stores
 * lm_head.weight and maps model.embed_tokens.weight to it). st_find() resolves
 * such aliases. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/dtype.h"
#include "base/error.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER_BYTES (100u << 20)  /* 100 MiB, as the reference implementation */
#define ST_MAX_TENSORS 1000000

struct st_tensor {
    const char *name;        /* owned by the st_model */
    enum ifd_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t n_elements;
    uint64_t nbytes;
    const void *data;        /* points into the read-only mapping */
    int file_index;          /* which shard holds it */
    uint64_t file_offset;    /* absolute byte offset of data in that file */
};

typedef struct st_model st_model;

/* Opens a checkpoint. `path` is a directory (holding model.safetensors or
 * model.safetensors.index.json), an index file, or a single .safetensors file.
 * On success *ret owns the mappings; free with st_close(). */
int st_open(const char *path, st_model **ret, ifd_error *err);

/* Opens a safetensors image already in memory (for example a subset received
 * from the master). The buffer must outlive the st_model; it is not copied.
 * `origin` names it in error messages. */
int st_open_memory(const void *data, size_t len, const char *origin, st_model **ret, ifd_error *err);

/* Opens a safetensors image the caller built in an anonymous mapping (mmap,
 * MAP_PRIVATE | MAP_ANONYMOUS, at data, at least len bytes): the st_model
 * takes the mapping over, whether or not the call succeeds, and unmaps it on
 * st_close(). Unlike st_open_memory()'s buffer, its pages can be given back
 * (st_release_pages()), as a file's can: a worker's received weights. */
int st_open_image(void *data, size_t len, const char *origin, st_model **ret, ifd_error *err);

void st_close(st_model *m); /* accepts NULL */

size_t st_count(const st_model *m);
const struct st_tensor *st_at(const st_model *m, size_t i);
/* Finds a tensor by name, following __metadata__ aliases; NULL if absent. */
const struct st_tensor *st_find(const st_model *m, const char *name);

/* Value of a __metadata__ key, from the first file that has it, or NULL. */
const char *st_metadata(const st_model *m, const char *key);
/* True when [p, p + len) lies in one of m's mappings, a file's (st_open())
 * or an image's (st_open_image()), not in a caller's buffer
 * (st_open_memory()): its pages can be given back. */
bool st_in_mapping(const st_model *m, const void *p, size_t len);

/* Gives back the pages of [p, p + len), which must lie in one of m's
 * mappings (st_in_mapping(); whole pages inside the range only): a copy of
 * the bytes now serves instead (model_weight_for_cpu()). A file's pages stay
 * readable: a later read maps them again from the file. An image's have no
 * file to come back from: they are made inaccessible, so that a read of
 * what was given back faults instead of reading zeros. Errors are ignored
 * (the memory is then only not given back). */
void st_release_pages(const st_model *m, const void *p, size_t len);

/* Number of files and the path of one (for error messages and hashing). */
int st_file_count(const st_model *m);
const char *st_file_path(const st_model *m, int file_index);

/* The writers hand data to the sink in pieces of at most this many bytes, so a
 * sink (a socket, a compressor) never needs a buffer sized by a tensor. */
#define ST_WRITE_CHUNK_BYTES (1u << 20)

/* A byte sink for the streaming writers: returns 0 or a negative errno. */
typedef int (*st_write_fn)(void *ctx, const void *buf, size_t len);

/* Writes a minimal valid safetensors image holding just the named tensors
 * (stored under their canonical names, aliases resolved), streaming: memory is
 * bounded by the header, never by the checkpoint; data is copied from the
 * mapping straight to `write`. Unknown names are an error naming the tensor.
 * A name asked for through an alias is also recorded in the subset's
 * __metadata__ (alias -> canonical), so st_find() on the receiver resolves the
 * name it asked for; a tensor asked for twice is written once. Tensors are
 * written widest dtype first (then in the order asked), so each is aligned
 * to its element size.
 * If ret_size is non-NULL it receives the total bytes written. */
int st_write_subset(const st_model *m, const char *const *names, size_t n_names,
                    st_write_fn write, void *ctx, uint64_t *ret_size, ifd_error *err);

/* A writer for new checkpoints (generator, quantizer): declare every tensor
 * first, then stream their data in declaration order. Tensors are packed
 * without gaps (the reference reader rejects gaps) after a header padded to
 * 8 bytes: declare wider dtypes first to keep every tensor aligned. */
typedef struct st_writer st_writer;
int st_writer_create(st_write_fn write, void *ctx, st_writer **ret);
/* Adds a __metadata__ string entry. */
int st_writer_add_metadata(st_writer *w, const char *key, const char *value);
int st_writer_declare(st_writer *w, const char *name, enum ifd_dtype dtype,
                      int n_dims, const int64_t *shape, ifd_error *err);
/* Writes the header; after it, st_writer_write_data() in declaration order. */
int st_writer_begin_data(st_writer *w, ifd_error *err);
int st_writer_write_data(st_writer *w, const void *data, size_t len, ifd_error *err);
/* Checks every declared byte was written. */
int st_writer_finish(st_writer *w, ifd_error *err);
void st_writer_destroy(st_writer *w); /* accepts NULL */

/* st_write_fn over a FILE* (ctx is the FILE*). */
int st_write_to_file(void *ctx, const void *buf, size_t len);
