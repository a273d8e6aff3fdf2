/*
 * libFuzzer target for the disk cache's entry reader
 * (src/kernel/cache_entry.c), which reads files other processes (or a
 * damaged disk) left in the cache directory. Three oracles:
 *   - any bytes as a file: read as an entry without a crash, a leak or a
 *     sanitizer report, and when one is accepted its payload is the file's
 *     bytes after the header;
 *   - a payload taken from the input, written as a proper entry, reads
 *     back OK with the same bytes;
 *   - that entry with one byte changed (position and value from the input)
 *     or cut short reads as BAD: nothing in a file goes unchecked.
 *
 *   make fuzz   (builds it with clang in build-fuzz and runs it)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernel/cache_entry.h"

static const uint32_t BACKEND = 2;

/* the bytes as the contents of a fresh in-memory file, read as an entry */
static zmlxi_entry_state read_bytes(const uint8_t *bytes, size_t n, const zmlx_cache_key *key,
                                    void **payload, size_t *size) {
  int fd = memfd_create("zmlx-entry", MFD_CLOEXEC);
  if (fd < 0) abort();
  if (n && write(fd, bytes, n) != (ssize_t)n) abort();
  if (lseek(fd, 0, SEEK_SET) != 0) abort();
  zmlxi_entry_state st = zmlxi_entry_read(fd, n, BACKEND, key, payload, size);
  close(fd);
  return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  zmlx_cache_key key;
  memset(&key, 0, sizeof key);
  if (size >= 32) memcpy(key.bytes, data, 32);
  void *payload = NULL;
  size_t n = 0;

  /* 1: the input itself as a file */
  if (read_bytes(data, size, &key, &payload, &n) == ZMLXI_ENTRY_OK) {
    if (n != size - ZMLXI_ENTRY_HEADER_BYTES ||
        memcmp(payload, data + ZMLXI_ENTRY_HEADER_BYTES, n) != 0)
      abort();
    free(payload);
  }

  /* 2: a proper entry around part of the input reads back */
  const size_t body = size > 40 ? size - 40 : 0;
  const uint8_t *bytes = data + (size - body);
  uint8_t *file = malloc(ZMLXI_ENTRY_HEADER_BYTES + body + 1);
  if (!file || !zmlxi_entry_header(file, BACKEND, &key, bytes, body)) abort();
  memcpy(file + ZMLXI_ENTRY_HEADER_BYTES, bytes, body);
  const size_t len = ZMLXI_ENTRY_HEADER_BYTES + body;
  payload = NULL;
  if (read_bytes(file, len, &key, &payload, &n) != ZMLXI_ENTRY_OK || n != body ||
      (body && memcmp(payload, bytes, body) != 0))
    abort();
  free(payload);

  /* 3: one byte changed, or the file cut short, is refused */
  if (size >= 40) {
    size_t at = ((size_t)data[32] << 8 | data[33]) % len;
    uint8_t flip = data[34] ? data[34] : 1;
    file[at] ^= flip;
    payload = NULL;
    if (read_bytes(file, len, &key, &payload, &n) != ZMLXI_ENTRY_BAD) abort();
    file[at] ^= flip;
    size_t cut = ((size_t)data[35] << 8 | data[36]) % len;
    if (read_bytes(file, cut, &key, &payload, &n) != ZMLXI_ENTRY_BAD) abort();
  }
  free(file);
  return 0;
}
