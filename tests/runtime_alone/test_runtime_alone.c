/* The runtime layer on its own (issue 9): this program is linked from
 * src/runtime and src/backends only — no kernel layer, no ops — so it
 * builds only while the runtime makes no call up into the layers above.
 * It then uses what the runtime alone provides: devices, streams, arrays
 * from host data, views and element reads, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "runtime/internal.h"

static zmlx_device *first_device(void) {
  zmlx_device *dev = NULL;
  if (zmlx_default_device(&dev) != ZMLX_OK) return NULL;
  return dev;
}

static void test_views_and_items(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  float v[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  zmlx_array *a = NULL, *t = NULL, *s = NULL;
  assert_int_equal(zmlx_array_from_host(dev, ZMLX_F32, 2, shape, v, &a), ZMLX_OK);
  int perm[2] = {1, 0};
  assert_int_equal(zmlx_array_transpose(a, perm, &t), ZMLX_OK);
  double x = 0;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++) {
      assert_int_equal(zmlx_array_item(t, i * 2 + j, &x), ZMLX_OK);
      assert_true(x == v[j * 3 + i]);
    }
  int64_t start[2] = {1, 1}, stop[2] = {2, 3}, step[2] = {1, 1};
  assert_int_equal(zmlx_array_slice(a, start, stop, step, &s), ZMLX_OK);
  assert_int_equal(zmlx_array_item(s, 1, &x), ZMLX_OK);
  assert_true(x == 6.0);
  assert_int_equal(zmlx_array_item(s, 2, &x), ZMLX_ERR_INVALID_ARG);
  assert_non_null(strstr(zmlx_last_error(), "outside"));
  zmlx_array_release(s);
  zmlx_array_release(t);
  zmlx_array_release(a);
  assert_int_equal(zmlx_array_live_count(), 0);
}

static void test_devices_and_streams(void **state) {
  (void)state;
  zmlx_device *dev = first_device();
  if (!dev) skip();
  zmlx_device_info info;
  assert_int_equal(zmlx_device_get_info(dev, &info), ZMLX_OK);
  assert_true(info.max_threads_per_threadgroup > 0);
  zmlx_stream *s = NULL;
  assert_int_equal(zmlx_stream_create(dev, &s), ZMLX_OK);
  assert_int_equal(zmlx_stream_synchronize(s), ZMLX_OK);
  assert_int_equal(zmlx_stream_destroy(s), ZMLX_OK);
  assert_int_equal(zmlx_device_get(ZMLX_BACKEND_COUNT, 0, &dev), ZMLX_ERR_INVALID_ARG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_views_and_items),
      cmocka_unit_test(test_devices_and_streams),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  zmlx_device *dev = NULL;
  if (!failed && zmlx_default_device(&dev) != ZMLX_OK) return 77; /* nothing ran */
  return failed ? 1 : 0;
}
