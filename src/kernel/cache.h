/*
 * The compiled-kernel cache (DESIGN 3.4).
 *
 * Key: SHA-256 over everything that changes the binary — backend name, the
 * device's cache identity (arch, compiler and driver versions), the entry
 * name, the fully assembled source and the compile options.
 *
 * Levels: an in-memory hash table of loaded functions per device
 * (thread-safe), then compiled binaries on disk (cubin / OpenCL program
 * binaries) with a header and checksum, written atomically; a corrupt or
 * foreign entry is recompiled, never trusted.
 */
#ifndef ZMLX_KERNEL_CACHE_H
#define ZMLX_KERNEL_CACHE_H

#include "runtime/internal.h"

typedef struct zmlx_cache_key {
  uint8_t bytes[32];
} zmlx_cache_key;

typedef struct zmlx_compile_request {
  zmlx_device *device;
  const char *entry;   /* kernel function name */
  const char *source;  /* fully assembled source */
  const char *options; /* extra compile options folded into the key ("" ok) */
  /* 1-based line of `source` where the user's body starts (0: no user
   * body). A compile error is reported against the body's own line. */
  int body_first_line;
  const char *what;    /* for messages: "kernel 'softmax'" */
} zmlx_compile_request;

zmlx_status zmlxi_cache_make_key(const zmlx_compile_request *req, zmlx_cache_key *out);

/* A loaded function for `req` on req->device: memory table, then disk, then
 * compile (and write to disk). The function stays owned by the cache until
 * zmlx_cache_clear_memory() / zmlx_shutdown(); callers that keep the pointer
 * must compare zmlxi_cache_generation() before reusing it. */
zmlx_status zmlxi_cache_get_function(const zmlx_compile_request *req, const zmlx_cache_key *key,
                                    void **function);

/* Bumped whenever loaded functions are unloaded. */
uint64_t zmlxi_cache_generation(void);

/* A launch holds the cache's functions between use_begin and use_end (from
 * fetching its function to handing the launch to the backend): a
 * zmlx_cache_clear_memory in another thread unloads only once every such
 * launch is out (and the devices have finished their queued work). Nests
 * within a thread. */
void zmlxi_cache_use_begin(void);
void zmlxi_cache_use_end(void);

/* Turn a compiler log into a user message: the log, then the offending
 * source line (mapped into the body when body_first_line > 0) with a caret. */
zmlx_status zmlxi_compile_error(const zmlx_compile_request *req, const char *log);
/* The status of a failed ops->compile that returned `st` and `log`: a
 * compile error with the log, and the backend's own message after it when
 * the log does not hold it; other failures keep their status. */
zmlx_status zmlxi_compile_failure(const zmlx_compile_request *req, zmlx_status st,
                                 const char *log);

/* Hex of a key (65 bytes with NUL). */
void zmlxi_cache_key_hex(const zmlx_cache_key *key, char hex[65]);

/* Called by zmlx_shutdown(). */
void zmlxi_cache_shutdown(void);

#endif /* ZMLX_KERNEL_CACHE_H */
