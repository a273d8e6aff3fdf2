/* One disk-cache entry's bytes (cache_entry.c): a fixed header (magic,
 * format version, backend, key, payload size, payload SHA-256) and the
 * backend's compiled binary. Pure file-format code, shared by the cache
 * (cache.c) and its fuzz target (tests/fuzz/fuzz_cache_entry.c). */
#ifndef ZMLX_KERNEL_CACHE_ENTRY_H
#define ZMLX_KERNEL_CACHE_ENTRY_H

#include <stddef.h>
#include <stdint.h>

#include "kernel/cache.h"

enum { ZMLXI_ENTRY_HEADER_BYTES = 88 };

typedef enum { ZMLXI_ENTRY_ABSENT, ZMLXI_ENTRY_BAD, ZMLXI_ENTRY_OK } zmlxi_entry_state;

/* SHA-256 of size bytes; 0 when libcrypto fails. */
int zmlxi_sha256(const void *data, size_t size, uint8_t out[32]);
/* The header of an entry holding payload (size bytes) for key on backend;
 * 0 when the checksum cannot be computed. */
int zmlxi_entry_header(uint8_t hdr[ZMLXI_ENTRY_HEADER_BYTES], uint32_t backend,
                       const zmlx_cache_key *key, const void *payload, size_t size);
/* Write a whole entry (header, then payload) to the open file fd; 0 on a
 * failed or short write (a full disk). */
int zmlxi_entry_write(int fd, uint32_t backend, const zmlx_cache_key *key, const void *payload,
                      size_t size);
/* Read and verify the open entry file fd (file_size bytes) against key and
 * backend: OK with *payload (malloc'd) and *size; BAD when any byte of it
 * is not a valid entry for that key (every header byte and the payload's
 * checksum are checked); ABSENT when our own memory ran out. Entries are
 * only ever replaced by rename, never rewritten in place, so a short read
 * means a damaged file, not a concurrent writer. */
zmlxi_entry_state zmlxi_entry_read(int fd, uint64_t file_size, uint32_t backend,
                                   const zmlx_cache_key *key, void **payload, size_t *size);

#endif
