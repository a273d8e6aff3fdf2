/* zmlx layers: a transformer block (causal attention + an MoE feed-forward)
 * learns to imitate another one. The teacher is a block with its own random
 * weights; the student, initialised differently, follows it on random
 * sequences through zmlx_value_and_grad over its parameters and the fused
 * AdamW. Every expert weighs in (top_k = experts), so the student can learn
 * the teacher's routing smoothly; with top-2 it stalls (at about a sixth of
 * the starting error here) where the two routers choose differently. Prints the mean squared error as it falls; exits 1 if it does not
 * fall below a tenth of where it started. Runs on the default backend. */
#include <stdio.h>
#include <stdlib.h>

#include "zmlx.h"

#define STEPS 400
#define LR 1e-2

#define CHECK(call)                                                                        \
  do {                                                                                     \
    zmlx_status st_ = (call);                                                              \
    if (st_ != ZMLX_OK) {                                                                  \
      fprintf(stderr, "%s failed: %s\n%s\n", #call, zmlx_status_string(st_),               \
              zmlx_last_error());                                                          \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

/* What the loss needs: the student, the batch and the teacher's answer. */
typedef struct step_data {
  zmlx_layer *student;
  zmlx_array *x, *target;
} step_data;

/* mean((student(params, x) - target)^2) */
static zmlx_status mse(void *ud, zmlx_array *const *params, int n, zmlx_array **out) {
  (void)n;
  step_data *d = ud;
  zmlx_array *y = NULL, *diff = NULL, *sq = NULL;
  zmlx_status st = zmlx_layer_forward(d->student, params, d->x, &y);
  if (st == ZMLX_OK) st = zmlx_sub(y, d->target, &diff);
  if (st == ZMLX_OK) st = zmlx_mul(diff, diff, &sq);
  if (st == ZMLX_OK) st = zmlx_mean(sq, NULL, 0, 0, out);
  zmlx_array_release(y), zmlx_array_release(diff), zmlx_array_release(sq);
  return st;
}

int main(void) {
  zmlx_device *dev = NULL;
  CHECK(zmlx_default_device(&dev));
  zmlx_layer_config cfg = {.struct_size = sizeof cfg, .kind = ZMLX_LAYER_BLOCK, .dim = 32,
                           .heads = 4, .kv_heads = 2, .ffn_dim = 48, .experts = 4, .top_k = 4,
                           .init_std = 0.1, .device = dev};
  zmlx_layer *teacher = NULL, *student = NULL;
  cfg.seed = 1;
  CHECK(zmlx_layer_create(&cfg, &teacher));
  cfg.seed = 2;
  CHECK(zmlx_layer_create(&cfg, &student));
  int n = 0;
  zmlx_array *const *params = NULL;
  const char *const *names = NULL;
  CHECK(zmlx_layer_parameters(student, &n, &params, &names));
  zmlx_device_info info;
  CHECK(zmlx_device_get_info(dev, &info));
  printf("zmlx %s on %s: a block of %d parameter tensors (%s, %s, ... %s) imitates another\n",
         zmlx_version_string(), info.name, n, names[0], names[1], names[n - 1]);

  zmlx_adamw *opt = NULL;
  zmlx_adamw_opts ao = {.struct_size = sizeof ao, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8};
  CHECK(zmlx_adamw_create(params, n, &ao, &opt));
  zmlx_array **grads = calloc((size_t)n, sizeof *grads);
  const int64_t shape[3] = {4, 16, 32}; /* 4 sequences of 16 tokens */
  double first = 0, last = 0;
  for (int step = 0; step <= STEPS; step++) {
    step_data d = {student, NULL, NULL};
    zmlx_array *loss = NULL;
    CHECK(zmlx_array_random_normal(dev, ZMLX_F32, 3, shape, 1000 + (uint64_t)step, 0, 1, &d.x));
    CHECK(zmlx_layer_forward(teacher, NULL, d.x, &d.target));
    CHECK(zmlx_value_and_grad(mse, &d, params, n, NULL, 0, &loss, grads));
    CHECK(zmlx_adamw_update(opt, grads, n, LR, NULL));
    CHECK(zmlx_array_item(loss, 0, &last));
    if (step == 0) first = last;
    if (step % (STEPS / 8) == 0) printf("step %3d  mse %.5f\n", step, last);
    for (int i = 0; i < n; i++) zmlx_array_release(grads[i]), grads[i] = NULL;
    zmlx_array_release(loss), zmlx_array_release(d.x), zmlx_array_release(d.target);
  }
  free(grads);
  zmlx_adamw_destroy(opt);
  zmlx_layer_destroy(student), zmlx_layer_destroy(teacher);
  printf("mse %.5f -> %.5f: %s\n", first, last, last < first / 10 ? "learned" : "did not learn");
  return last < first / 10 ? 0 : 1;
}
