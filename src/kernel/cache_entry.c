/* The disk-cache entry format (cache_entry.h). */
#include "kernel/cache_entry.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

int zmlxi_sha256(const void *data, size_t size, uint8_t out[32]) {
  unsigned int len = 0;
  return EVP_Digest(data, size, out, &len, EVP_sha256(), NULL) == 1 && len == 32;
}

#define ENTRY_MAGIC "ZMLXBIN"        /* 8 bytes with its NUL */
#define ENTRY_FORMAT_VERSION 1u

/* Header layout, little-endian, independent of struct padding. */
enum {
  HDR_MAGIC = 0,
  HDR_VERSION = 8,
  HDR_BACKEND = 12,
  HDR_KEY = 16,
  HDR_SIZE = 48,
  HDR_CHECKSUM = 56,
  HDR_BYTES = ZMLXI_ENTRY_HEADER_BYTES
};

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
  return v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

int zmlxi_entry_header(uint8_t hdr[ZMLXI_ENTRY_HEADER_BYTES], uint32_t backend,
                       const zmlx_cache_key *key, const void *payload, size_t size) {
  memset(hdr, 0, HDR_BYTES);
  memcpy(hdr + HDR_MAGIC, ENTRY_MAGIC, 8);
  put_u32(hdr + HDR_VERSION, ENTRY_FORMAT_VERSION);
  put_u32(hdr + HDR_BACKEND, backend);
  memcpy(hdr + HDR_KEY, key->bytes, 32);
  put_u64(hdr + HDR_SIZE, (uint64_t)size);
  return zmlxi_sha256(payload, size, hdr + HDR_CHECKSUM);
}

/* Everything but the checksum, which needs the payload. */
static int header_matches(const uint8_t hdr[HDR_BYTES], uint32_t backend,
                          const zmlx_cache_key *key, uint64_t payload_size) {
  return memcmp(hdr + HDR_MAGIC, ENTRY_MAGIC, 8) == 0 &&
         get_u32(hdr + HDR_VERSION) == ENTRY_FORMAT_VERSION &&
         get_u32(hdr + HDR_BACKEND) == backend &&
         memcmp(hdr + HDR_KEY, key->bytes, 32) == 0 &&
         get_u64(hdr + HDR_SIZE) == payload_size;
}

/* read(2) or write(2) until all n bytes moved; 0 on an error or end of file */
static int move_full(int fd, void *buf, size_t n, int writing) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = writing ? write(fd, p, n) : read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    p += r;
    n -= (size_t)r;
  }
  return 1;
}

static int read_full(int fd, void *buf, size_t n) { return move_full(fd, buf, n, 0); }

int zmlxi_entry_write(int fd, uint32_t backend, const zmlx_cache_key *key, const void *payload,
                      size_t size) {
  uint8_t hdr[HDR_BYTES];
  return zmlxi_entry_header(hdr, backend, key, payload, size) && move_full(fd, hdr, sizeof hdr, 1) &&
         move_full(fd, (void *)payload, size, 1);
}

zmlxi_entry_state zmlxi_entry_read(int fd, uint64_t file_size, uint32_t backend,
                                   const zmlx_cache_key *key, void **payload, size_t *size) {
  uint8_t hdr[HDR_BYTES], sum[32];
  if (file_size < HDR_BYTES || !read_full(fd, hdr, sizeof hdr)) return ZMLXI_ENTRY_BAD;
  uint64_t n = file_size - HDR_BYTES;
  if (n > SIZE_MAX - 1 || !header_matches(hdr, backend, key, n)) return ZMLXI_ENTRY_BAD;
  uint8_t *data = malloc(n ? (size_t)n : 1);
  if (!data) return ZMLXI_ENTRY_ABSENT; /* our memory, not the file's fault */
  if (!read_full(fd, data, (size_t)n) || !zmlxi_sha256(data, (size_t)n, sum) ||
      memcmp(sum, hdr + HDR_CHECKSUM, 32) != 0) {
    free(data);
    return ZMLXI_ENTRY_BAD;
  }
  *payload = data;
  *size = (size_t)n;
  return ZMLXI_ENTRY_OK;
}
