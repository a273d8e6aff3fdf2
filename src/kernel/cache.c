/*
 * The compiled-kernel cache (DESIGN 3.4).
 *
 * Two levels in front of the backend compiler:
 *
 *   memory  a chained hash table keyed by (SHA-256 key, device) holding the
 *           loaded functions of this process. A key being compiled or loaded
 *           sits in the table as a *pending* entry, so a second thread that
 *           misses on the same key waits for the first instead of compiling
 *           it again (no duplicate compiles, no duplicate functions).
 *   disk    one file per key, `<dir>/<64 hex>.bin`: a fixed header (magic,
 *           format version, backend, key, payload size, payload SHA-256) and
 *           the backend's compiled binary. Written to a temp file and renamed
 *           into place, so readers never see a half-written entry; anything
 *           that does not verify is deleted and recompiled, never trusted.
 *
 * Disk problems never make a kernel fail: an unreadable directory is a miss
 * and a failed write only costs the next process a compile.
 *
 * Across processes, a compile holds one of LOCK_STRIPES lock files of the
 * directory (`.zmlx-lock-NN`, by the key's first byte; flock), and looks at
 * the disk again once it has it: processes that miss on the same key at
 * once (parallel test runs, several workers starting) compile it once and
 * the rest load the entry. A lock not had within LOCK_WAIT_MS is given up
 * on: the process compiles anyway (a stuck holder costs a duplicate
 * compile, never a hang).
 */
#include "runtime/graph.h"
#include "kernel/cache.h"
#include "kernel/cache_entry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

/* ================================================================ hashing */

/* Folds one string into the digest including its NUL, so that ("ab","c")
 * and ("a","bc") give different keys. */
static int digest_field(EVP_MD_CTX *ctx, const char *s, size_t max_len) {
  if (!s) s = "";
  size_t n = strnlen(s, max_len);
  static const char nul = '\0';
  return EVP_DigestUpdate(ctx, s, n) == 1 && EVP_DigestUpdate(ctx, &nul, 1) == 1;
}

zmlx_status zmlxi_cache_make_key(const zmlx_compile_request *req, zmlx_cache_key *out) {
  ZMLX_REQUIRE_ARG(req);
  ZMLX_REQUIRE_ARG(out);
  ZMLX_REQUIRE_ARG(req->device);
  ZMLX_REQUIRE_ARG(req->source);
  const zmlx_device *dev = req->device;
  if (!dev->ops)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlxi_cache_make_key: device has no backend");

  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory while hashing a kernel");
  unsigned int len = 0;
  int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
           digest_field(ctx, "zmlx-cache-v1", SIZE_MAX) &&
           digest_field(ctx, dev->ops->name, SIZE_MAX) &&
           digest_field(ctx, dev->cache_identity, sizeof dev->cache_identity) &&
           digest_field(ctx, req->entry, SIZE_MAX) &&
           digest_field(ctx, req->options, SIZE_MAX) &&
           digest_field(ctx, req->source, SIZE_MAX) &&
           EVP_DigestFinal_ex(ctx, out->bytes, &len) == 1 && len == sizeof out->bytes;
  EVP_MD_CTX_free(ctx);
  if (!ok) return zmlxi_fail(ZMLX_ERR_INTERNAL, "SHA-256 of a kernel source failed in OpenSSL");
  return ZMLX_OK;
}

void zmlxi_cache_key_hex(const zmlx_cache_key *key, char hex[65]) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    hex[2 * i] = digits[key->bytes[i] >> 4];
    hex[2 * i + 1] = digits[key->bytes[i] & 15];
  }
  hex[64] = '\0';
}

/* ================================================================== stats */

/* Times are kept in integer nanoseconds so they can be atomic counters. */
static struct {
  atomic_uint_least64_t memory_hits, disk_hits, misses, disk_rejects, disk_writes;
  atomic_uint_least64_t compile_ns, disk_load_ns;
} g_stats;

static atomic_uint_least64_t g_generation;

static void stat_add_ms(atomic_uint_least64_t *ns, double ms) {
  if (ms > 0) atomic_fetch_add(ns, (uint_least64_t)(ms * 1e6 + 0.5));
}

uint64_t zmlxi_cache_generation(void) { return atomic_load(&g_generation); }

/* ========================================================= memory table */

typedef struct cache_entry {
  struct cache_entry *next;
  zmlx_cache_key key;
  zmlx_device *device;
  void *function;
  int ready; /* 0 while its owner compiles or loads it; others wait */
} cache_entry;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t settled; /* broadcast whenever a pending entry resolves */
  cache_entry **buckets;
  size_t n_buckets;
  size_t count; /* entries, pending included */
  size_t ready; /* loaded functions */
} g_table = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0};

/* The key is already a uniform hash; mix in the device so that one kernel on
 * two devices lands in different buckets. */
static size_t entry_hash(const zmlx_cache_key *key, const zmlx_device *dev) {
  uint64_t h;
  memcpy(&h, key->bytes, sizeof h);
  h ^= (uint64_t)(uintptr_t)dev * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  return (size_t)h;
}

static cache_entry *table_find(const zmlx_cache_key *key, const zmlx_device *dev) {
  if (!g_table.buckets) return NULL;
  cache_entry *e = g_table.buckets[entry_hash(key, dev) & (g_table.n_buckets - 1)];
  for (; e; e = e->next)
    if (e->device == dev && memcmp(e->key.bytes, key->bytes, sizeof key->bytes) == 0) return e;
  return NULL;
}

/* Rehash into `n` buckets (a power of two). Returns 0 on OOM, leaving the
 * table as it was: chains just get longer. */
static int table_resize(size_t n) {
  cache_entry **nb = calloc(n, sizeof *nb);
  if (!nb) return 0;
  for (size_t i = 0; i < g_table.n_buckets; i++) {
    cache_entry *e = g_table.buckets[i];
    while (e) {
      cache_entry *next = e->next;
      size_t b = entry_hash(&e->key, e->device) & (n - 1);
      e->next = nb[b];
      nb[b] = e;
      e = next;
    }
  }
  free(g_table.buckets);
  g_table.buckets = nb;
  g_table.n_buckets = n;
  return 1;
}

/* Make room for one more entry (load factor <= 3/4). Only the very first
 * allocation can fail the caller. */
static zmlx_status table_reserve_one(void) {
  if (!g_table.buckets) {
    if (!table_resize(64))
      return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory (kernel cache)");
    return ZMLX_OK;
  }
  if ((g_table.count + 1) * 4 > g_table.n_buckets * 3) table_resize(g_table.n_buckets * 2);
  return ZMLX_OK;
}

static void table_insert(cache_entry *e) {
  size_t b = entry_hash(&e->key, e->device) & (g_table.n_buckets - 1);
  e->next = g_table.buckets[b];
  g_table.buckets[b] = e;
  g_table.count++;
}

static void table_remove(cache_entry *e) {
  cache_entry **p = &g_table.buckets[entry_hash(&e->key, e->device) & (g_table.n_buckets - 1)];
  while (*p && *p != e) p = &(*p)->next;
  if (*p) {
    *p = e->next;
    g_table.count--;
  }
}

/* Look `key` up for `dev`. On a hit *function is set and *pending stays
 * NULL. On a miss a pending entry is inserted and returned in *pending: the
 * caller now owns producing the function and must call claim_settle(). */
static zmlx_status claim(zmlx_device *dev, const zmlx_cache_key *key, void **function,
                         cache_entry **pending) {
  *pending = NULL;
  pthread_mutex_lock(&g_table.lock);
  for (;;) {
    cache_entry *e = table_find(key, dev);
    if (!e) break;
    if (e->ready) {
      *function = e->function;
      pthread_mutex_unlock(&g_table.lock);
      atomic_fetch_add(&g_stats.memory_hits, 1);
      return ZMLX_OK;
    }
    /* Another thread is producing this key: wait, then look again (it may
     * have failed, in which case this thread tries itself). */
    pthread_cond_wait(&g_table.settled, &g_table.lock);
  }
  zmlx_status st = table_reserve_one();
  cache_entry *e = st == ZMLX_OK ? calloc(1, sizeof *e) : NULL;
  if (st == ZMLX_OK && !e)
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory (kernel cache)");
  if (e) {
    e->key = *key;
    e->device = dev;
    table_insert(e);
    *pending = e;
  }
  pthread_mutex_unlock(&g_table.lock);
  return st;
}

/* Resolve a pending entry: publish `function`, or drop the entry when
 * producing it failed, and wake the threads waiting on it. */
static void claim_settle(cache_entry *e, void *function) {
  pthread_mutex_lock(&g_table.lock);
  if (function) {
    e->function = function;
    e->ready = 1;
    g_table.ready++;
  } else {
    table_remove(e);
    free(e);
  }
  pthread_cond_broadcast(&g_table.settled);
  pthread_mutex_unlock(&g_table.lock);
}

/* Launches using the cache's functions hold it for reading, a clear takes
 * it for writing before unloading; writers first, so a stream of launches
 * on other threads cannot hold a clear off for ever. */
#ifdef PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP
static pthread_rwlock_t g_use_lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
#else
static pthread_rwlock_t g_use_lock = PTHREAD_RWLOCK_INITIALIZER;
#endif
static _Thread_local int g_use_depth;

void zmlxi_cache_use_begin(void) {
  if (g_use_depth++ == 0) pthread_rwlock_rdlock(&g_use_lock);
}

void zmlxi_cache_use_end(void) {
  if (--g_use_depth == 0) pthread_rwlock_unlock(&g_use_lock);
}

/* Wait until no launch of another thread holds a function, then until the
 * devices whose functions go have run what was queued with them. */
static void wait_for_users(cache_entry *doomed) {
  if (g_use_depth == 0) { /* (a clear from inside a launch would wait on itself) */
    pthread_rwlock_wrlock(&g_use_lock);
    pthread_rwlock_unlock(&g_use_lock);
  }
  for (cache_entry *e = doomed; e; e = e->next) {
    int seen = 0;
    for (cache_entry *f = doomed; f != e && !seen; f = f->next) seen = f->device == e->device;
    if (!seen) zmlx_device_synchronize(e->device);
  }
  zmlx_clear_error(); /* a sync that fails here is the next call's to report */
}

static void unload_entries(cache_entry *list) {
  while (list) {
    cache_entry *next = list->next;
    const zmlx_backend_ops *ops = list->device->ops;
    if (ops && ops->unload && list->function) zmlxi_unload_function(list->device, list->function);
    free(list);
    list = next;
  }
}

/* Pending entries stay: their owners still hold them and will publish. */
zmlx_status zmlx_cache_clear_memory(void) {
  cache_entry *doomed = NULL;
  pthread_mutex_lock(&g_table.lock);
  for (size_t i = 0; i < g_table.n_buckets; i++) {
    cache_entry **p = &g_table.buckets[i];
    while (*p) {
      cache_entry *e = *p;
      if (!e->ready) {
        p = &e->next;
        continue;
      }
      *p = e->next;
      e->next = doomed;
      doomed = e;
      g_table.count--;
      g_table.ready--;
    }
  }
  /* Bumped before unloading so a holder that checks the generation after
   * this point never reuses a function about to go away. */
  atomic_fetch_add(&g_generation, 1);
  pthread_mutex_unlock(&g_table.lock);
  /* Backend calls happen outside the lock: unload may be slow. */
  wait_for_users(doomed);
  unload_entries(doomed);
  return ZMLX_OK;
}

void zmlxi_cache_shutdown(void) {
  zmlx_cache_clear_memory();
  pthread_mutex_lock(&g_table.lock);
  if (g_table.count == 0) {
    free(g_table.buckets);
    g_table.buckets = NULL;
    g_table.n_buckets = 0;
  }
  pthread_mutex_unlock(&g_table.lock);
}

/* The kernel layer's functions go before the backends that loaded them. */
void zmlx_shutdown(void) {
  zmlxi_cache_shutdown();
  zmlxi_runtime_shutdown();
}

/* ====================================================== disk: location */

static char g_dir[PATH_MAX];
static pthread_once_t g_dir_once = PTHREAD_ONCE_INIT;
static atomic_int g_disk_enabled = -1; /* -1: not decided yet (read $ZMLX_CACHE) */

static const char *env_nonempty(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* g_dir = base + suffix without doubled or trailing slashes; left empty
 * if it does not fit (disk caching then does nothing). */
static void set_dir(const char *base, const char *suffix) {
  size_t n = strlen(base);
  while (n > 1 && base[n - 1] == '/') n--;
  int len = snprintf(g_dir, sizeof g_dir, "%.*s%s", (int)n, base, suffix);
  if (len < 0 || (size_t)len >= sizeof g_dir) g_dir[0] = '\0';
}

static const char *home_dir(char *buf, size_t cap) {
  const char *h = env_nonempty("HOME");
  if (h) return h;
  struct passwd pw, *res = NULL;
  if (getpwuid_r(getuid(), &pw, buf, cap, &res) == 0 && res && res->pw_dir && *res->pw_dir)
    return res->pw_dir;
  return NULL;
}

static void resolve_dir(void) {
  const char *d = env_nonempty("ZMLX_CACHE_DIR");
  if (d) {
    set_dir(d, "");
    return;
  }
  /* The XDG spec says relative values are invalid and must be ignored. */
  const char *xdg = env_nonempty("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') {
    set_dir(xdg, "/zmlx");
    return;
  }
  char pwbuf[4096];
  const char *home = home_dir(pwbuf, sizeof pwbuf);
  if (home) set_dir(home, "/.cache/zmlx");
}

const char *zmlx_cache_dir(void) {
  pthread_once(&g_dir_once, resolve_dir);
  return g_dir;
}

static int env_disables_cache(void) {
  const char *v = getenv("ZMLX_CACHE");
  if (!v) return 0;
  return strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
         strcasecmp(v, "no") == 0;
}

static int disk_wanted(void) {
  int v = atomic_load(&g_disk_enabled);
  if (v < 0) {
    int expected = -1;
    /* A concurrent zmlx_cache_set_disk_enabled() wins over the environment. */
    atomic_compare_exchange_strong(&g_disk_enabled, &expected, env_disables_cache() ? 0 : 1);
    v = atomic_load(&g_disk_enabled);
  }
  return v;
}

/* Off when not wanted, and when the directory cannot be used: the cache
 * then says so (zmlx_cache_disk_problem) instead of failing every write. */
int zmlx_cache_disk_enabled(void) { return disk_wanted() && !zmlx_cache_disk_problem(); }

zmlx_status zmlx_cache_set_disk_enabled(int enabled) {
  atomic_store(&g_disk_enabled, enabled ? 1 : 0);
  return ZMLX_OK;
}

/* Entry files are exactly 64 lowercase hex digits + ".bin"; nothing else in
 * the directory is ever touched. */
#define ENTRY_SUFFIX ".bin"
#define TEMP_PREFIX ".zmlx-tmp-"

static int is_entry_name(const char *name) {
  for (int i = 0; i < 64; i++)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return 0;
  return strcmp(name + 64, ENTRY_SUFFIX) == 0;
}

static int is_temp_name(const char *name) {
  return strncmp(name, TEMP_PREFIX, strlen(TEMP_PREFIX)) == 0;
}

static int entry_path(const zmlx_cache_key *key, char *path, size_t cap) {
  const char *dir = zmlx_cache_dir();
  if (!*dir) return 0;
  char hex[65];
  zmlxi_cache_key_hex(key, hex);
  int n = snprintf(path, cap, "%s/%s" ENTRY_SUFFIX, dir, hex);
  return n > 0 && (size_t)n < cap;
}

/* mkdir -p with mode 0700 for every directory it creates: the cache holds
 * code that gets loaded onto the device, so it is private to the user. */
static int make_dirs(const char *dir) {
  char buf[PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof buf) return 0;
  memcpy(buf, dir, n + 1);
  for (size_t i = 1; i < n; i++) {
    if (buf[i] != '/') continue;
    buf[i] = '\0';
    if (mkdir(buf, 0700) != 0 && errno != EEXIST) return 0;
    buf[i] = '/';
  }
  if (mkdir(buf, 0700) != 0 && errno != EEXIST) return 0;
  struct stat st;
  return stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Once per process: can the directory be created and written? A problem
 * turns the disk cache off for the process, with the reason kept. */
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;
static char g_disk_problem[PATH_MAX + 128];

/* Binaries from the cache are loaded and run: a directory another user may
 * write into (group or world write bits, or owned by someone else) could
 * plant one, so it is refused and the process keeps its kernels in memory. */
static void check_dir_trust(const char *dir) {
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    snprintf(g_disk_problem, sizeof g_disk_problem, "the cache directory %s is not a directory",
             dir);
  else if (st.st_uid != geteuid())
    snprintf(g_disk_problem, sizeof g_disk_problem, "the cache directory %s belongs to uid %u, "
             "not to this user: not trusted", dir, (unsigned)st.st_uid);
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    snprintf(g_disk_problem, sizeof g_disk_problem, "the cache directory %s is writable by %s "
             "(mode %03o): not trusted", dir, st.st_mode & S_IWOTH ? "others" : "its group",
             (unsigned)(st.st_mode & 0777));
}

static void probe_disk(void) {
  const char *dir = zmlx_cache_dir();
  errno = 0;
  if (!*dir)
    snprintf(g_disk_problem, sizeof g_disk_problem,
             "no cache directory: set ZMLX_CACHE_DIR, XDG_CACHE_HOME or HOME");
  else if (!make_dirs(dir))
    snprintf(g_disk_problem, sizeof g_disk_problem, "cannot create the cache directory %s: %s",
             dir, strerror(errno ? errno : ENOTDIR));
  else if (access(dir, W_OK | X_OK) != 0)
    snprintf(g_disk_problem, sizeof g_disk_problem, "cannot write the cache directory %s: %s",
             dir, strerror(errno));
  else
    check_dir_trust(dir);
}

const char *zmlx_cache_disk_problem(void) {
  if (!disk_wanted()) return NULL;
  pthread_once(&g_probe_once, probe_disk);
  return g_disk_problem[0] ? g_disk_problem : NULL;
}

/* ======================================================= disk: format */

/* The entry format (header, checksum, write, verified read) is cache_entry.c's. */

/* Read one entry. ABSENT covers "no file" and "cannot read it" (a plain
 * miss); BAD means the bytes are there but are not a valid entry for this
 * key, and *id names the file so the caller can delete it. */
static zmlxi_entry_state read_entry(const char *path, uint32_t backend, const zmlx_cache_key *key,
                                    void **payload, size_t *size, struct stat *id) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return ZMLXI_ENTRY_ABSENT;
  zmlxi_entry_state state = ZMLXI_ENTRY_ABSENT;
  if (fstat(fd, id) == 0 && S_ISREG(id->st_mode))
    state = zmlxi_entry_read(fd, (uint64_t)id->st_size, backend, key, payload, size);
  close(fd);
  return state;
}

/* Delete a rejected entry, unless another process has already renamed a
 * fresh one over it (then the name points at a different inode). */
static void reject_entry(const char *path, const struct stat *id) {
  atomic_fetch_add(&g_stats.disk_rejects, 1);
  struct stat now;
  if (lstat(path, &now) == 0 && now.st_dev == id->st_dev && now.st_ino == id->st_ino) unlink(path);
}

/* Try the disk level. Returns 1 with *function loaded, else 0 (a miss, a
 * rejected entry, or a binary the backend refused: all recompile). */
static int disk_load(const zmlx_compile_request *req, const zmlx_cache_key *key, void **function) {
  char path[PATH_MAX];
  if (!entry_path(key, path, sizeof path)) return 0;
  const zmlx_device *dev = req->device;
  double t0 = zmlxi_now_ms();
  void *payload = NULL;
  size_t size = 0;
  struct stat id;
  zmlxi_entry_state state = read_entry(path, (uint32_t)dev->ops->kind, key, &payload, &size, &id);
  if (state != ZMLXI_ENTRY_OK) {
    if (state == ZMLXI_ENTRY_BAD) reject_entry(path, &id);
    return 0;
  }
  zmlx_status st = dev->ops->load(dev->index, payload, size, req->entry, function);
  free(payload);
  if (st != ZMLX_OK) {
    /* A checksum-valid binary the driver refuses (driver upgrade without an
     * identity change, say): never trust it again. */
    *function = NULL;
    reject_entry(path, &id);
    return 0;
  }
  stat_add_ms(&g_stats.disk_load_ns, zmlxi_now_ms() - t0);
  atomic_fetch_add(&g_stats.disk_hits, 1);
  return 1;
}

/* ====================================================== disk: write */

static int open_temp(const char *dir, char *tmp, size_t cap) {
  int n = snprintf(tmp, cap, "%s/" TEMP_PREFIX "XXXXXX", dir);
  if (n < 0 || (size_t)n >= cap) return -1;
  /* mkstemp-family files are created with mode 0600. */
  return mkostemp(tmp, O_CLOEXEC);
}

/* Write an entry atomically: temp file in the same directory, then rename.
 * Failures are silent: the function is already loaded and works. */
static void disk_store(uint32_t backend, const zmlx_cache_key *key, const void *bin, size_t size) {
  char path[PATH_MAX], tmp[PATH_MAX];
  if (!entry_path(key, path, sizeof path)) return;
  const char *dir = zmlx_cache_dir();
  int fd = open_temp(dir, tmp, sizeof tmp);
  if (fd < 0 && errno == ENOENT && make_dirs(dir)) fd = open_temp(dir, tmp, sizeof tmp);
  if (fd < 0) return;
  int ok = zmlxi_entry_write(fd, backend, key, bin, size);
  ok = close(fd) == 0 && ok;
  if (ok && rename(tmp, path) == 0) {
    atomic_fetch_add(&g_stats.disk_writes, 1);
    return;
  }
  unlink(tmp);
}

/* ========================================================= disk: scan */

typedef struct scan_result {
  int64_t entries;
  int64_t bytes;
} scan_result;

/* Visit our files in the cache directory: count (and with `remove`, delete)
 * the entries; with `remove`, also delete our temp files, left by crashed
 * writers (a live writer in another process then merely loses its write).
 * A missing directory is an empty cache. */
static zmlx_status scan_dir(int remove, scan_result *res) {
  memset(res, 0, sizeof *res);
  const char *dir = zmlx_cache_dir();
  if (!*dir)
    return zmlxi_fail(ZMLX_ERR_IO, "no cache directory: set ZMLX_CACHE_DIR, XDG_CACHE_HOME or HOME");
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) return ZMLX_OK;
    return zmlxi_fail(ZMLX_ERR_IO, "cannot open the cache directory %s: %s", dir, strerror(errno));
  }
  int dfd = dirfd(d);
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    struct stat st;
    if (remove && is_temp_name(de->d_name)) {
      unlinkat(dfd, de->d_name, 0);
      continue;
    }
    if (!is_entry_name(de->d_name)) continue;
    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
    if (remove && unlinkat(dfd, de->d_name, 0) != 0) continue;
    res->entries++;
    res->bytes += (int64_t)st.st_size;
  }
  closedir(d);
  return ZMLX_OK;
}

zmlx_status zmlx_cache_clear_disk(int64_t *removed) {
  scan_result res;
  zmlx_status st = scan_dir(1, &res);
  if (removed) *removed = res.entries;
  return st;
}

zmlx_status zmlx_cache_disk_usage(int64_t *entries, int64_t *bytes) {
  scan_result res;
  zmlx_status st = scan_dir(0, &res);
  if (entries) *entries = res.entries;
  if (bytes) *bytes = res.bytes;
  return st;
}

/* ===================================================== get_function */

static zmlx_status check_request(const zmlx_compile_request *req) {
  if (!req->device || !req->source || !req->entry)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG,
                     "zmlxi_cache_get_function: the request needs a device, a source and an entry");
  const zmlx_backend_ops *ops = req->device->ops;
  if (!ops || !ops->compile || !ops->load)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s: the %s backend cannot compile kernels",
                     req->what ? req->what : req->entry, ops ? ops->name : "device's");
  return ZMLX_OK;
}


/* ====================================================== disk: locks */

#define LOCK_PREFIX ".zmlx-lock-"
#define LOCK_STRIPES 64
#define LOCK_WAIT_MS 120000

/* The key's lock file, held (flock LOCK_EX): its fd, or -1 when the disk
 * cache is off or the lock cannot be had (then compile unlocked). */
static int lock_key(const zmlx_cache_key *key) {
  const char *dir = zmlx_cache_dir();
  char path[PATH_MAX];
  if (!*dir) return -1;
  int n = snprintf(path, sizeof path, "%s/" LOCK_PREFIX "%02d", dir, key->bytes[0] % LOCK_STRIPES);
  if (n < 0 || (size_t)n >= sizeof path) return -1;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 && errno == ENOENT && make_dirs(dir))
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -1;
  const struct timespec pause = {0, 5 * 1000 * 1000};
  for (double t0 = zmlxi_now_ms(); zmlxi_now_ms() - t0 < LOCK_WAIT_MS;) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno != EWOULDBLOCK && errno != EINTR) break;
    nanosleep(&pause, NULL);
  }
  close(fd);
  return -1;
}

static void unlock_key(int fd) {
  if (fd < 0) return;
  flock(fd, LOCK_UN);
  close(fd);
}

/* The slow path: compile, load, then save the binary for the next process
 * (only once the backend has accepted it, so a bad binary is never saved). */
static zmlx_status compile_and_store(const zmlx_compile_request *req, const zmlx_cache_key *key,
                                     void **function) {
  zmlx_device *dev = req->device;
  const zmlx_backend_ops *ops = dev->ops;
  void *bin = NULL;
  size_t size = 0;
  char *log = NULL;
  double t0 = zmlxi_now_ms();
  zmlx_status st = ops->compile(dev->index, req->source, req->entry, &bin, &size, &log);
  stat_add_ms(&g_stats.compile_ns, zmlxi_now_ms() - t0);
  atomic_fetch_add(&g_stats.misses, 1);
  if (st != ZMLX_OK) {
    st = zmlxi_compile_failure(req, st, log);
    free(bin);
    free(log);
    return st;
  }
  free(log); /* warnings of a successful compile are not shown */
  st = ops->load(dev->index, bin, size, req->entry, function);
  if (st == ZMLX_OK && zmlx_cache_disk_enabled()) disk_store((uint32_t)ops->kind, key, bin, size);
  free(bin);
  if (st != ZMLX_OK)
    return zmlxi_fail_context(st, "%s: loading the compiled kernel",
                             req->what ? req->what : req->entry);
  return ZMLX_OK;
}

zmlx_status zmlxi_cache_get_function(const zmlx_compile_request *req, const zmlx_cache_key *key,
                                    void **function) {
  ZMLX_REQUIRE_ARG(req);
  ZMLX_REQUIRE_ARG(key);
  ZMLX_REQUIRE_ARG(function);
  *function = NULL;
  ZMLX_CHECK(check_request(req));

  cache_entry *pending = NULL;
  ZMLX_CHECK(claim(req->device, key, function, &pending));
  if (!pending) return ZMLX_OK; /* memory hit */

  void *fn = NULL;
  zmlx_status st = ZMLX_OK;
  const int disk = zmlx_cache_disk_enabled();
  if (!(disk && disk_load(req, key, &fn))) {
    /* another process may be compiling it: wait for it, then look again */
    int lock = disk ? lock_key(key) : -1;
    if (!(lock >= 0 && disk_load(req, key, &fn))) st = compile_and_store(req, key, &fn);
    unlock_key(lock);
  }
  claim_settle(pending, st == ZMLX_OK ? fn : NULL);
  if (st == ZMLX_OK) *function = fn;
  return st;
}

/* ================================================================ stats */

zmlx_status zmlx_cache_get_stats(zmlx_cache_stats *out) {
  ZMLX_REQUIRE_ARG(out);
  out->memory_hits = atomic_load(&g_stats.memory_hits);
  out->disk_hits = atomic_load(&g_stats.disk_hits);
  out->misses = atomic_load(&g_stats.misses);
  out->disk_rejects = atomic_load(&g_stats.disk_rejects);
  out->disk_writes = atomic_load(&g_stats.disk_writes);
  out->compile_ms = (double)atomic_load(&g_stats.compile_ns) / 1e6;
  out->disk_load_ms = (double)atomic_load(&g_stats.disk_load_ns) / 1e6;
  pthread_mutex_lock(&g_table.lock);
  out->entries = g_table.ready;
  pthread_mutex_unlock(&g_table.lock);
  return ZMLX_OK;
}

/* Counters only: `entries` describes the table, not history. */
zmlx_status zmlx_cache_reset_stats(void) {
  atomic_store(&g_stats.memory_hits, 0);
  atomic_store(&g_stats.disk_hits, 0);
  atomic_store(&g_stats.misses, 0);
  atomic_store(&g_stats.disk_rejects, 0);
  atomic_store(&g_stats.disk_writes, 0);
  atomic_store(&g_stats.compile_ns, 0);
  atomic_store(&g_stats.disk_load_ns, 0);
  return ZMLX_OK;
}
