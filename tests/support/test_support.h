/* Shared helpers for the cmocka test programs. */
#ifndef ZMLX_TEST_SUPPORT_H
#define ZMLX_TEST_SUPPORT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "zmlx.h"

/* Whether this is the sanitizer build. A check whose work is done by code
 * outside zmlx (NVRTC compiling a source zmlx emitted) runs in the normal
 * build only: under the sanitizer it would repeat the same work, slower. */
#if defined(__SANITIZE_ADDRESS__)
#define ZT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZT_SANITIZED 1
#endif
#endif
#ifndef ZT_SANITIZED
#define ZT_SANITIZED 0
#endif

/* cmocka's skip() counts the case too, so that a program can report how many
 * of its cases skipped instead of folding them into the passes. */
void zt_note_skip(void);
#undef skip
#define skip() (zt_note_skip(), _skip(__FILE__, __LINE__))

/* The end of every test program's main:
 *   return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
 * Prints "N passed, N failed, N skipped" for the program and returns the
 * exit status: 1 if any case failed, 77 (ctest's SKIP_RETURN_CODE) if every
 * case skipped, else 0. */
int zt_finish(int failed, int total);
#define ZT_COUNT(tests) ((int)(sizeof(tests) / sizeof((tests)[0])))

/* Every device the tests run on: device 0 of each available backend, or
 * only $ZMLX_TEST_BACKEND (cuda|opencl) when set. */
int zt_devices(zmlx_device **devs, int cap);
/* fn on each of them; the test is skipped when there is none. */
void zt_for_each_device(void (*fn)(zmlx_device *));

/* Fail the test with zmlx_last_error() when a call does not return OK. */
#define ZT_OK(expr)                                                                 \
  do {                                                                              \
    zmlx_status zt_st_ = (expr);                                                    \
    if (zt_st_ != ZMLX_OK)                                                          \
      fail_msg("%s -> %s: %s", #expr, zmlx_status_string(zt_st_), zmlx_last_error()); \
  } while (0)

/* Expect a given failure status and a message containing `needle`. */
#define ZT_FAILS(expr, status, needle) zt_expect_failure((expr), (status), (needle), #expr)
void zt_expect_failure(zmlx_status got, zmlx_status want, const char *needle, const char *what);

/* Deterministic per-test random numbers (xorshift), fresh per call site via the seed. */
uint64_t zt_seed(void); /* $ZMLX_TEST_SEED or time-based; printed once */
void zt_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t *state);

/* Host buffers in a dtype from f32 values (rounding like the device). */
void *zt_pack(zmlx_dtype dt, const float *src, size_t n);
/* One stored element of dtype dt -> double (host decoding, independent of
 * the library's own conversions except the f16/bf16 ones). NaN for a bad dtype. */
double zt_decode(zmlx_dtype dt, const void *p);
/* Device array -> f64 host values (any dtype, any strides). Caller frees. */
double *zt_download(zmlx_array *a);
/* Array from f32 values stored as dtype dt. */
zmlx_array *zt_array(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                     const float *values);
/* Array filled with a poison value (NaN for floats, 0x5A5A.. for ints) so an
 * unwritten output element fails the comparison. */
zmlx_array *zt_poisoned(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape);

/* Per-dtype tolerance: relative+absolute for values of order 1. */
double zt_tolerance(zmlx_dtype dt);
/* Compare got vs want (n values) with |got-want| <= atol + rtol*|want|;
 * NaN in got fails unless want is NaN. Fails the test with the first bad index. */
void zt_assert_close(const double *got, const double *want, size_t n, double atol, double rtol,
                     const char *what);

/* Round an f64 value through a storage dtype (what a store would keep). */
double zt_round_to(zmlx_dtype dt, double v);

#endif
