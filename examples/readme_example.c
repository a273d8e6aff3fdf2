/* The C example from README.md (kept identical; built so it cannot rot). */
#include <stdio.h>
#include <zmlx.h>

int main(void) {
  const char *in[] = {"x"}, *out[] = {"y"};
  zmlx_kernel_desc desc = {.name = "swish", .input_names = in, .n_inputs = 1,
                           .output_names = out, .n_outputs = 1,
                           .source = "uint i = thread_position_in_grid.x;\n"
                                     "float v = x_load(i);\n"
                                     "y_store(i, v * zmlx_sigmoid(v));\n"};
  zmlx_kernel *k;
  zmlx_array *x, *y = NULL;
  int64_t n = 1 << 20;
  if (zmlx_kernel_create(&desc, &k) || zmlx_array_random_normal(NULL, ZMLX_BF16, 1, &n, 7, 0, 1, &x))
    return puts(zmlx_last_error()), 1;
  int nd = 1; const int64_t *shapes[] = {&n}; zmlx_dtype dt = ZMLX_BF16;
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &x, .outputs = &y,
                           .output_ndims = &nd, .output_shapes = shapes, .output_dtypes = &dt,
                           .grid = {n, 1, 1}, .threadgroup = {256, 1, 1}};
  if (zmlx_kernel_launch(k, &call)) return puts(zmlx_last_error()), 1;
  zmlx_array_release(x); zmlx_array_release(y); zmlx_kernel_destroy(k);
}
