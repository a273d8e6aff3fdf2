/* The compiled-kernel cache: hit/miss accounting, a second process loading
 * from disk without compiling, corrupt entries recompiled, 8 threads, 8
 * processes compiling the same kernels into one directory at once. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernel/cache.h"
#include "test_support.h"

extern char **environ;

static zmlx_device *first_device(void) {
  zmlx_device *devs[2];
  return zt_devices(devs, 2) ? devs[0] : NULL;
}

/* A kernel whose source is unique to `tag`, so its first use must compile. */
static zmlx_kernel *tagged_kernel(const char *tag) {
  static const char *const in[] = {"x"}, *const out[] = {"out"};
  char body[256];
  snprintf(body, sizeof body,
           "/* %s */\nuint i = thread_position_in_grid.x;\nout_store(i, x_load(i) + 1.0f);\n", tag);
  zmlx_kernel_desc d = {.name = "tagged", .input_names = in, .n_inputs = 1, .output_names = out,
                        .n_outputs = 1, .source = body};
  zmlx_kernel *k = NULL;
  ZT_OK(zmlx_kernel_create(&d, &k));
  return k;
}

/* Run the kernel on 0..n-1 and check x + 1. */
static void run_and_check(zmlx_kernel *k, zmlx_device *dev) {
  int64_t n = 64;
  float x[64];
  for (int i = 0; i < 64; i++) x[i] = (float)i;
  zmlx_array *in = zt_array(dev, ZMLX_F32, 1, &n, x), *out = zt_poisoned(dev, ZMLX_F32, 1, &n);
  zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = &out,
                        .grid = {n, 1, 1}, .threadgroup = {32, 1, 1}};
  ZT_OK(zmlx_kernel_launch(k, &c));
  double *got = zt_download(out), want[64];
  for (int i = 0; i < 64; i++) want[i] = i + 1.0;
  zt_assert_close(got, want, 64, 0, 0, "cached kernel result");
  free(got);
  zmlx_array_release(in), zmlx_array_release(out);
}

static zmlx_cache_stats stats(void) {
  zmlx_cache_stats s;
  ZT_OK(zmlx_cache_get_stats(&s));
  return s;
}

static char unique_tag[64];

static void test_hits_and_misses(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  zmlx_cache_stats s0 = stats();
  zmlx_kernel *k = tagged_kernel(unique_tag);
  run_and_check(k, dev);
  zmlx_cache_stats s1 = stats();
  assert_int_equal(s1.misses, s0.misses + 1);
  assert_true(s1.compile_ms > s0.compile_ms);
  run_and_check(k, dev); /* the kernel object's own table: no cache lookup */
  zmlx_kernel *k2 = tagged_kernel(unique_tag); /* same source, new object: memory hit */
  run_and_check(k2, dev);
  zmlx_cache_stats s2 = stats();
  assert_int_equal(s2.misses, s1.misses);
  assert_int_equal(s2.memory_hits, s1.memory_hits + 1);
  zmlx_kernel_destroy(k), zmlx_kernel_destroy(k2);
}

/* The same binary, run again as a child process: it must load the kernel
 * from disk and compile nothing. */
static void test_second_process_loads_from_disk(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  if (!zmlx_cache_disk_enabled()) skip();
  zmlx_kernel *k = tagged_kernel(unique_tag);
  run_and_check(k, dev);
  zmlx_kernel_destroy(k);
  char *argv[] = {"/proc/self/exe", "--child", unique_tag, NULL};
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) != 0)
    fail_msg("child process did not load the kernel from disk (exit %d)", WEXITSTATUS(status));
}

static int child_main(const char *tag) {
  zmlx_device *dev = first_device(); /* the parent's choice of device */
  if (!dev) return 10;
  zmlx_kernel *k = tagged_kernel(tag);
  zmlx_cache_stats before = stats();
  run_and_check(k, dev);
  zmlx_cache_stats after = stats();
  zmlx_kernel_destroy(k);
  fprintf(stderr, "child: disk_hits %llu misses %llu (builtins included)\n",
          (unsigned long long)(after.disk_hits - before.disk_hits),
          (unsigned long long)(after.misses - before.misses));
  /* Builtin kernels (fill, copy) were compiled by the parent too, so every
   * kernel of this process must come from disk. */
  if (after.misses != 0) return 1;
  if (after.disk_hits < 1) return 2;
  return 0;
}

/* Eight processes at once, each using the same RACE_KERNELS new kernels
 * in one cache directory: each gets right results, the kernels are
 * compiled about once in all (the compile lock: the others wait and load
 * the entry), and a ninth process then loads every one from disk (no entry
 * was left half-written or corrupt). */
enum { RACE_PROCS = 8, RACE_KERNELS = 3 };

/* Child: the race kernels of `base`; exit status = how many it compiled
 * (0 .. RACE_KERNELS), or 100 + something on a wrong result or error. Each
 * child has a PoCL cache of its own (PoCL's cache is not the one under
 * test, and PoCL 3.1 asserts when running processes share one). */
static int race_child(const char *base, const char *pocl_cache) {
  setenv("POCL_CACHE_DIR", pocl_cache, 1);
  zmlx_device *dev = first_device();
  if (!dev) return 110;
  zmlx_cache_stats before = stats();
  for (int i = 0; i < RACE_KERNELS; i++) {
    char tag[128];
    snprintf(tag, sizeof tag, "%s-%d", base, i);
    zmlx_kernel *k = tagged_kernel(tag);
    run_and_check(k, dev); /* a wrong result fails (cmocka aborts the child) */
    zmlx_kernel_destroy(k);
  }
  zmlx_cache_stats after = stats();
  return (int)(after.misses - before.misses);
}

static pid_t spawn_self(char *const argv[]) {
  pid_t pid = -1;
  assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ), 0);
  return pid;
}

static void test_eight_processes_one_directory(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  if (!zmlx_cache_disk_enabled()) skip();
  char base[96], pocl_root[] = "/tmp/zmlx-race-XXXXXX";
  snprintf(base, sizeof base, "%s-race", unique_tag);
  assert_non_null(mkdtemp(pocl_root));
  pid_t pids[RACE_PROCS];
  char pocl[RACE_PROCS][64];
  for (int i = 0; i < RACE_PROCS; i++) {
    snprintf(pocl[i], sizeof pocl[i], "%s/%d", pocl_root, i);
    char *argv[] = {"/proc/self/exe", "--race", base, pocl[i], NULL};
    pids[i] = spawn_self(argv);
  }
  int compiled = 0, bad = 0;
  for (int i = 0; i < RACE_PROCS; i++) {
    int status = 0;
    assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) > RACE_KERNELS) {
      fprintf(stderr, "race child %d: %s %d\n", i, WIFEXITED(status) ? "exit" : "signal",
              WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      bad++;
    } else {
      compiled += WEXITSTATUS(status);
    }
  }
  fprintf(stderr, "%d processes, %d kernels: %d compiles in all\n", RACE_PROCS, RACE_KERNELS,
          compiled);
  assert_int_equal(bad, 0);
  assert_true(compiled >= RACE_KERNELS);     /* someone compiled each */
  assert_true(compiled <= 2 * RACE_KERNELS); /* not every process (8x) */
  /* a ninth process loads all of them from disk */
  char ninth[80];
  snprintf(ninth, sizeof ninth, "%s/ninth", pocl_root);
  char *argv[] = {"/proc/self/exe", "--race", base, ninth, NULL};
  pid_t pid = spawn_self(argv);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0); /* compiled none */
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", pocl_root);
  assert_int_equal(system(cmd), 0);
}

static int corrupt_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d) return 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 4 || strcmp(e->d_name + len - 4, ".bin")) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    int fd = open(path, O_RDWR);
    if (fd < 0) continue;
    off_t size = lseek(fd, 0, SEEK_END);
    unsigned char b;
    if (size > 1 && pread(fd, &b, 1, size - 1) == 1) {
      b ^= 0xFF; /* flip the last payload byte: the checksum must catch it */
      if (pwrite(fd, &b, 1, size - 1) == 1) n++;
    }
    close(fd);
  }
  closedir(d);
  return n;
}

static void test_corrupt_entry_is_recompiled(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  if (!zmlx_cache_disk_enabled()) skip();
  char tag[96];
  snprintf(tag, sizeof tag, "%s-corrupt", unique_tag);
  zmlx_kernel *k = tagged_kernel(tag);
  run_and_check(k, dev);
  zmlx_kernel_destroy(k);
  assert_true(corrupt_entries(zmlx_cache_dir()) > 0);
  ZT_OK(zmlx_cache_clear_memory());
  zmlx_cache_stats s0 = stats();
  k = tagged_kernel(tag);
  run_and_check(k, dev); /* correct result despite the corrupt file */
  zmlx_kernel_destroy(k);
  zmlx_cache_stats s1 = stats();
  assert_true(s1.disk_rejects > s0.disk_rejects);
  assert_true(s1.misses > s0.misses);
  /* the entry was rewritten: a fresh load now comes from disk again */
  ZT_OK(zmlx_cache_clear_memory());
  k = tagged_kernel(tag);
  run_and_check(k, dev);
  zmlx_kernel_destroy(k);
  zmlx_cache_stats s2 = stats();
  assert_true(s2.disk_hits > s1.disk_hits);
  assert_int_equal(s2.misses, s1.misses);
}

/* The cache's own checksum, seen by a backend that would load any bytes:
 * a real driver rejects most damaged binaries itself (the OpenCL backend
 * even checks an envelope of its own), which would hide a cache that
 * stopped verifying. Here only the cache stands between a damaged file and
 * the "device". */
static int fake_compiles;
static char fake_loaded[64];

static zmlx_status fake_compile(int dev, const char *source, const char *entry, void **binary,
                                size_t *binary_size, char **log) {
  (void)dev, (void)source, (void)entry;
  static const char bin[] = "fake binary: any bytes load";
  *binary = malloc(sizeof bin);
  if (!*binary) return ZMLX_ERR_OUT_OF_MEMORY;
  memcpy(*binary, bin, sizeof bin);
  *binary_size = sizeof bin;
  *log = NULL;
  fake_compiles++;
  return ZMLX_OK;
}

static zmlx_status fake_load(int dev, const void *binary, size_t size, const char *entry,
                             void **function) {
  (void)dev, (void)entry;
  snprintf(fake_loaded, sizeof fake_loaded, "%.*s", (int)(size < 63 ? size : 63),
           (const char *)binary);
  *function = malloc(1);
  return *function ? ZMLX_OK : ZMLX_ERR_OUT_OF_MEMORY;
}

static void fake_unload(int dev, void *function) {
  (void)dev;
  free(function);
}

static void corrupt_file(const char *path) {
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  off_t size = lseek(fd, 0, SEEK_END);
  unsigned char b = 0;
  assert_int_equal(pread(fd, &b, 1, size - 2), 1);
  b ^= 0x20; /* a letter of the payload changes case: still "loadable" */
  assert_int_equal(pwrite(fd, &b, 1, size - 2), 1);
  close(fd);
}

static void test_checksum_without_driver_help(void **state) {
  (void)state;
  if (!zmlx_cache_disk_enabled()) skip();
  static const zmlx_backend_ops fake_ops = {.kind = ZMLX_BACKEND_OPENCL, .name = "fake",
                                            .compile = fake_compile, .load = fake_load,
                                            .unload = fake_unload};
  static zmlx_device fake = {.ops = &fake_ops};
  snprintf(fake.cache_identity, sizeof fake.cache_identity, "fake device %s", unique_tag);
  zmlx_compile_request req = {.device = &fake, .entry = "zmlx_k_fake", .source = unique_tag,
                              .options = "", .what = "kernel 'fake'"};
  zmlx_cache_key key;
  ZT_OK(zmlxi_cache_make_key(&req, &key));
  void *fn = NULL;
  ZT_OK(zmlxi_cache_get_function(&req, &key, &fn)); /* compiled, written to disk */
  assert_int_equal(fake_compiles, 1);
  ZT_OK(zmlx_cache_clear_memory());
  fake_loaded[0] = '\0';
  ZT_OK(zmlxi_cache_get_function(&req, &key, &fn)); /* from disk */
  assert_int_equal(fake_compiles, 1);
  assert_string_equal(fake_loaded, "fake binary: any bytes load");

  char hex[65], path[4200];
  zmlxi_cache_key_hex(&key, hex);
  snprintf(path, sizeof path, "%s/%s.bin", zmlx_cache_dir(), hex);
  corrupt_file(path);
  ZT_OK(zmlx_cache_clear_memory());
  zmlx_cache_stats s0 = stats();
  fake_loaded[0] = '\0';
  ZT_OK(zmlxi_cache_get_function(&req, &key, &fn));
  zmlx_cache_stats s1 = stats();
  /* the damaged bytes never reached the loader: rejected, compiled again */
  assert_string_equal(fake_loaded, "fake binary: any bytes load");
  assert_int_equal(fake_compiles, 2);
  assert_int_equal(s1.disk_rejects, s0.disk_rejects + 1);
  ZT_OK(zmlx_cache_clear_memory());
}

/* A backend whose binary is its source text, so a load shows which
 * kernel's binary it got. */
static zmlx_status source_compile(int dev, const char *source, const char *entry, void **binary,
                                  size_t *binary_size, char **log) {
  (void)dev, (void)entry;
  *binary = zmlxi_strdup(source);
  if (!*binary) return ZMLX_ERR_OUT_OF_MEMORY;
  *binary_size = strlen(source) + 1;
  *log = NULL;
  fake_compiles++;
  return ZMLX_OK;
}

/* An entry is accepted only for the key it was written for, all 32 bytes of
 * it: a file under kernel B's name that carries kernel A's binary, with a
 * header key that differs from B's in its last 16 bytes only, must be
 * rejected (B compiled again), never loaded as B. */
static void test_entry_of_another_key(void **state) {
  (void)state;
  if (!zmlx_cache_disk_enabled()) skip();
  static const zmlx_backend_ops src_ops = {.kind = ZMLX_BACKEND_OPENCL, .name = "fake-src",
                                           .compile = source_compile, .load = fake_load,
                                           .unload = fake_unload};
  static zmlx_device fake = {.ops = &src_ops};
  snprintf(fake.cache_identity, sizeof fake.cache_identity, "fake-src device %s", unique_tag);
  char src_a[128], src_b[128];
  snprintf(src_a, sizeof src_a, "kernel A %s", unique_tag);
  snprintf(src_b, sizeof src_b, "kernel B %s", unique_tag);
  zmlx_compile_request a = {.device = &fake, .entry = "zmlx_k_a", .source = src_a,
                            .options = "", .what = "kernel 'a'"};
  zmlx_compile_request b = a;
  b.source = src_b;
  zmlx_cache_key ka, kb;
  ZT_OK(zmlxi_cache_make_key(&a, &ka));
  ZT_OK(zmlxi_cache_make_key(&b, &kb));
  void *fn = NULL;
  ZT_OK(zmlxi_cache_get_function(&a, &ka, &fn)); /* A compiled and written */
  char ha[65], hb[65], pa[4200], pb[4200];
  zmlxi_cache_key_hex(&ka, ha);
  zmlxi_cache_key_hex(&kb, hb);
  snprintf(pa, sizeof pa, "%s/%s.bin", zmlx_cache_dir(), ha);
  snprintf(pb, sizeof pb, "%s/%s.bin", zmlx_cache_dir(), hb);
  /* B's file: A's entry with the first half of its header key made B's */
  FILE *f = fopen(pa, "rb");
  assert_non_null(f);
  unsigned char buf[4096];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  unsigned char *at = memmem(buf, n, ka.bytes, 32);
  assert_non_null(at);
  memcpy(at, kb.bytes, 16);
  f = fopen(pb, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(buf, 1, n, f), n);
  fclose(f);
  ZT_OK(zmlx_cache_clear_memory());
  zmlx_cache_stats s0 = stats();
  int compiles = fake_compiles;
  fake_loaded[0] = '\0';
  ZT_OK(zmlxi_cache_get_function(&b, &kb, &fn));
  zmlx_cache_stats s1 = stats();
  assert_string_equal(fake_loaded, src_b);
  assert_int_equal(fake_compiles, compiles + 1);
  assert_int_equal(s1.disk_rejects, s0.disk_rejects + 1);
  ZT_OK(zmlx_cache_clear_memory());
}

static void test_directory_mode(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev || !zmlx_cache_disk_enabled()) skip();
  struct stat st;
  assert_int_equal(stat(zmlx_cache_dir(), &st), 0);
  assert_int_equal(st.st_mode & 0777, 0700);
  int64_t entries = 0, bytes = 0;
  ZT_OK(zmlx_cache_disk_usage(&entries, &bytes));
  assert_true(entries > 0 && bytes > 0);
}

/* ------------------------------------------------------------- threads */

typedef struct thread_arg {
  zmlx_device *dev;
  zmlx_kernel *shared;
  int id;
  int failures;
} thread_arg;

static int run_quiet(zmlx_kernel *k, zmlx_device *dev, float add) {
  int64_t n = 256;
  float x[256];
  for (int i = 0; i < 256; i++) x[i] = (float)i;
  zmlx_array *in = NULL, *out = NULL;
  if (zmlx_array_from_host(dev, ZMLX_F32, 1, &n, x, &in) != ZMLX_OK) return 1;
  zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &in, .outputs = &out,
                        .grid = {n, 1, 1}, .threadgroup = {64, 1, 1}};
  int ndim = 1;
  const int64_t *shapes[1] = {&n};
  zmlx_dtype dt = ZMLX_F32;
  c.output_ndims = &ndim, c.output_shapes = shapes, c.output_dtypes = &dt;
  int bad = zmlx_kernel_launch(k, &c) != ZMLX_OK;
  float got[256];
  if (!bad) bad = zmlx_array_to_host(out, got, sizeof got) != ZMLX_OK;
  for (int i = 0; !bad && i < 256; i++) bad = got[i] != x[i] + add;
  zmlx_array_release(in), zmlx_array_release(out);
  return bad;
}

static void *thread_main(void *p) {
  thread_arg *a = p;
  char tag[96];
  snprintf(tag, sizeof tag, "%s-thread-%d", unique_tag, a->id % 4); /* 4 distinct sources */
  for (int it = 0; it < 20; it++) {
    a->failures += run_quiet(a->shared, a->dev, 1.0f);
    zmlx_kernel *own = tagged_kernel(tag);
    a->failures += run_quiet(own, a->dev, 1.0f);
    zmlx_kernel_destroy(own);
  }
  return NULL;
}

static void test_eight_threads(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  char tag[96];
  snprintf(tag, sizeof tag, "%s-shared", unique_tag);
  zmlx_kernel *shared = tagged_kernel(tag);
  zmlx_cache_stats s0 = stats();
  pthread_t th[8];
  thread_arg args[8];
  for (int i = 0; i < 8; i++) {
    args[i] = (thread_arg){.dev = dev, .shared = shared, .id = i};
    assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 8; i++) assert_int_equal(args[i].failures, 0);
  zmlx_cache_stats s1 = stats();
  /* one compile for the shared kernel and one per distinct tagged source */
  assert_int_equal(s1.misses - s0.misses, 5);
  zmlx_kernel_destroy(shared);
}

static void test_disk_disabled_writes_nothing(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  int64_t e0 = 0, e1 = 0, b = 0;
  ZT_OK(zmlx_cache_disk_usage(&e0, &b));
  ZT_OK(zmlx_cache_set_disk_enabled(0));
  char tag[96];
  snprintf(tag, sizeof tag, "%s-nodisk", unique_tag);
  zmlx_kernel *k = tagged_kernel(tag);
  run_and_check(k, dev);
  zmlx_kernel_destroy(k);
  ZT_OK(zmlx_cache_disk_usage(&e1, &b));
  ZT_OK(zmlx_cache_set_disk_enabled(1));
  assert_int_equal(e1, e0);
}

static void test_clear_disk(void **state) {
  (void)state;
  if (!first_device()) skip();
  int64_t removed = -1, entries = -1, bytes = -1;
  ZT_OK(zmlx_cache_clear_disk(&removed));
  assert_true(removed >= 0);
  ZT_OK(zmlx_cache_disk_usage(&entries, &bytes));
  assert_int_equal(entries, 0);
}

/* ------------------------------------------------------------- faults */

/* Run this test binary as a child with `mode` and the environment given
 * (NAME=VALUE strings, NULL-terminated, added to ours); its exit status. */
static int run_child(const char *mode, const char *const *extra_env) {
  char *env[256];
  int n = 0;
  for (char **e = environ; *e && n < 200; e++) {
    int overridden = 0;
    for (const char *const *x = extra_env; *x; x++) {
      size_t k = strcspn(*x, "=");
      if (!strncmp(*e, *x, k + 1)) overridden = 1;
    }
    if (!overridden) env[n++] = *e;
  }
  for (const char *const *x = extra_env; *x && n < 254; x++) env[n++] = (char *)*x;
  env[n] = NULL;
  char *argv[] = {"/proc/self/exe", (char *)mode, unique_tag, NULL};
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, env), 0);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Files of dir whose name starts with prefix (NULL: any) and ends with suffix. */
static int count_files(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d) return 0;
  for (struct dirent *e; (e = readdir(d));) {
    size_t len = strlen(e->d_name), sl = strlen(suffix);
    if (e->d_name[0] != '.' && len >= sl && !strcmp(e->d_name + len - sl, suffix)) n++;
  }
  closedir(d);
  return n;
}

/* Child mode "--child-untrusted": the cache dir must be refused (a problem
 * saying it is not trusted), and a fresh kernel still compiles and runs. */
static int fault_child(const char *mode, const char *tag) {
  zmlx_device *dev = first_device();
  if (!dev) return 10;
  if (!strcmp(mode, "--child-untrusted")) {
    const char *p = zmlx_cache_disk_problem();
    if (zmlx_cache_disk_enabled() || !p || !strstr(p, "not trusted")) return 11;
  }
  char t[128];
  snprintf(t, sizeof t, "%s%s", tag, mode);
  zmlx_kernel *k = tagged_kernel(t);
  int bad = run_quiet(k, dev, 1.0f);
  zmlx_kernel_destroy(k);
  return bad ? 12 : 0;
}

static void make_private_dir(char *dir, size_t cap, const char *what) {
  snprintf(dir, cap, "/tmp/zmlx_test_cache_%s_%d", what, (int)getpid());
  mkdir(dir, 0700);
}

/* Files of dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d) return 0;
  for (struct dirent *e; (e = readdir(d));) n += !strncmp(e->d_name, prefix, strlen(prefix));
  closedir(d);
  return n;
}

/* Child mode "--child-disk-full": the cache directory is a 4 KiB tmpfs
 * mounted in a mount namespace of this process's own (so nothing outlives
 * it), too small for a kernel's entry. A new kernel must compile and run
 * right, the failed write must count no disk write, and neither an entry
 * nor a temp file may be left. Exit 77 when the namespace or the mount is
 * not allowed here (the parent then skips). */
static int disk_full_child(const char *tag) {
  const char *dir = getenv("ZMLX_CACHE_DIR");
  if (!dir || unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
      mount("zmlx-full", dir, "tmpfs", 0, "size=4k,mode=0700") != 0)
    return 77;
  zmlx_device *dev = first_device();
  if (!dev) return 10;
  if (!zmlx_cache_disk_enabled()) return 11; /* the tiny directory itself is fine */
  char t[128];
  snprintf(t, sizeof t, "%s-disk-full", tag);
  zmlx_kernel *k = tagged_kernel(t);
  zmlx_cache_stats before = stats();
  int bad = run_quiet(k, dev, 1.0f) || run_quiet(k, dev, 1.0f); /* the 2nd from memory */
  zmlx_cache_stats after = stats();
  zmlx_kernel_destroy(k);
  if (bad) return 12;
  if (after.misses - before.misses != 1) return 13;
  if (after.disk_writes != before.disk_writes) return 14; /* the entry fitted: no test */
  if (count_files(dir, ".bin") != 0) return 15;
  if (count_prefixed(dir, ".zmlx-tmp-") != 0) return 16;
  return 0;
}

/* The disk is full mid-write: the process goes on from memory, and the
 * directory holds no partial entry and no temp file (simulated with a tiny
 * tmpfs, which needs a mount namespace: skipped where that is refused). */
static void test_disk_full_leaves_no_partial_entry(void **state) {
  (void)state;
  if (!first_device()) skip();
  char dir[128], env[192];
  make_private_dir(dir, sizeof dir, "full");
  snprintf(env, sizeof env, "ZMLX_CACHE_DIR=%s", dir);
  const char *extra[] = {env, "ZMLX_CACHE=", NULL};
  int rc = run_child("--child-disk-full", extra);
  rmdir(dir);
  if (rc == 77) {
    fprintf(stderr, "no mount namespace / tmpfs here: disk-full case skipped\n");
    skip();
  }
  if (rc) fail_msg("child with a full cache disk: exit %d (see disk_full_child)", rc);
}

/* A cache directory others may write into is refused: the process keeps
 * its kernels in memory, says why, and computes the same results. */
static void test_untrusted_directory_refused(void **state) {
  (void)state;
  if (!first_device()) skip();
  char dir[128], env[192];
  make_private_dir(dir, sizeof dir, "untrusted");
  chmod(dir, 0777);
  snprintf(env, sizeof env, "ZMLX_CACHE_DIR=%s", dir);
  const char *extra[] = {env, "ZMLX_CACHE=", NULL};
  int rc = run_child("--child-untrusted", extra);
  if (rc) fail_msg("child with a world-writable cache dir: exit %d", rc);
  assert_int_equal(count_files(dir, ".bin"), 0); /* nothing written there */
  chmod(dir, 0770);
  rc = run_child("--child-untrusted", extra);
  if (rc) fail_msg("child with a group-writable cache dir: exit %d", rc);
  assert_int_equal(count_files(dir, ".bin"), 0);
  rmdir(dir);
}

/* An entry replaced by a symlink (to a valid entry) is not followed: the
 * kernel is compiled again and the link replaced by a regular file. */
static void test_symlinked_entry_refused(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev || !zmlx_cache_disk_enabled()) skip();
  char tag[128];
  snprintf(tag, sizeof tag, "%s-symlink", unique_tag);
  zmlx_kernel *k = tagged_kernel(tag);
  assert_int_equal(run_quiet(k, dev, 1.0f), 0);
  /* the newest entry is this kernel's */
  const char *dir = zmlx_cache_dir();
  DIR *d = opendir(dir);
  assert_non_null(d);
  char newest[512] = "";
  struct timespec best = {0, 0};
  for (struct dirent *e; (e = readdir(d));) {
    size_t len = strlen(e->d_name);
    if (len < 4 || strcmp(e->d_name + len - 4, ".bin")) continue;
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (lstat(path, &st) == 0 && (st.st_mtim.tv_sec > best.tv_sec ||
        (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec > best.tv_nsec))) {
      best = st.st_mtim;
      snprintf(newest, sizeof newest, "%s", path);
    }
  }
  closedir(d);
  assert_true(newest[0]);
  char real[600];
  snprintf(real, sizeof real, "%s.real", newest);
  assert_int_equal(rename(newest, real), 0);
  assert_int_equal(symlink(real, newest), 0);
  ZT_OK(zmlx_cache_clear_memory());
  zmlx_cache_stats before = stats();
  assert_int_equal(run_quiet(k, dev, 1.0f), 0);
  zmlx_cache_stats after = stats();
  zmlx_kernel_destroy(k);
  if (after.misses != before.misses + 1)
    fail_msg("a symlinked entry was loaded (misses %llu -> %llu)",
             (unsigned long long)before.misses, (unsigned long long)after.misses);
  struct stat st;
  assert_int_equal(lstat(newest, &st), 0);
  assert_true(S_ISREG(st.st_mode)); /* the rewrite replaced the link */
  unlink(real);
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--child")) return child_main(argv[2]);
  if (argc == 4 && !strcmp(argv[1], "--race")) return race_child(argv[2], argv[3]);
  if (argc == 3 && !strcmp(argv[1], "--child-disk-full")) return disk_full_child(argv[2]);
  if (argc == 3 && !strcmp(argv[1], "--child-untrusted")) return fault_child(argv[1], argv[2]);

  snprintf(unique_tag, sizeof unique_tag, "run-%llu-%d", (unsigned long long)zt_seed(), (int)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hits_and_misses),
      cmocka_unit_test(test_second_process_loads_from_disk),
      cmocka_unit_test(test_corrupt_entry_is_recompiled),
      cmocka_unit_test(test_checksum_without_driver_help),
      cmocka_unit_test(test_entry_of_another_key),
      cmocka_unit_test(test_directory_mode),
      cmocka_unit_test(test_eight_threads),
      cmocka_unit_test(test_eight_processes_one_directory),
      cmocka_unit_test(test_disk_disabled_writes_nothing),
      cmocka_unit_test(test_clear_disk),
      cmocka_unit_test(test_untrusted_directory_refused),
      cmocka_unit_test(test_symlinked_entry_refused),
      cmocka_unit_test(test_disk_full_leaves_no_partial_entry),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
