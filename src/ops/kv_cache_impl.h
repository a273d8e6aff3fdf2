/* The KV block cache's state, shared by its two files: kv_cache.c (the
 * allocator, block tables, writes and reads) and kv_decode.c (PagedAttention
 * decode over it). Internal: zmlx.h keeps zmlx_kv_cache opaque. */
#ifndef ZMLX_OPS_KV_CACHE_IMPL_H
#define ZMLX_OPS_KV_CACHE_IMPL_H

#include "runtime/internal.h"

typedef struct kv_seq {
  int alive;
  int64_t len;      /* tokens */
  int32_t *blocks;  /* its block table */
  int64_t n_blocks, cap;
} kv_seq;

/* An i32 array kept on the device with its host copy (memo_upload). */
typedef struct kv_upload {
  int32_t *host;
  int64_t shape[2];
  zmlx_array *dev;
} kv_upload;

struct zmlx_kv_cache {
  zmlx_kv_cache_desc d;
  zmlx_device *dev;
  zmlx_array *k, *v;  /* [layers * blocks * block_size, kv_heads * head_dim] */
  int32_t *refs;      /* per block: how many sequences hold it */
  int32_t *free_list; /* a stack of free blocks */
  int64_t n_free;
  kv_seq *seqs;
  int64_t n_seqs, seq_cap;
  /* The last decode's block tables and context lengths, and the last
   * step write's slots: every layer of a decode step uses the same ones, so
   * only the first uploads them (an upload waits for the stream). */
  kv_upload tables, lens, step_slots;
};

/* Sequence id of c, alive; else a status naming `call`. */
zmlx_status zmlxi_kv_get_seq(zmlx_kv_cache *c, const char *call, int64_t id, kv_seq **out);

/* *host (i32, shape[0] x shape[1]; malloc'd) on the device as *out, a new
 * reference: m's array when m holds the same values, else uploaded and
 * kept in m, which then owns *host (set to NULL). Not under a capture. */
zmlx_status zmlxi_kv_memo_upload(zmlx_kv_cache *c, kv_upload *m, int32_t **host, int ndim,
                                 const int64_t *shape, zmlx_array **out);

#endif
