/* Host reference of the counter-based RNG in kernels/random.zk. */
#include <math.h>

#include "runtime/internal.h"

static uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t *hi) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

void zmlxi_philox4x32(uint32_t c[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t k0 = key[0], k1 = key[1];
  uint32_t x[4] = {c[0], c[1], c[2], c[3]};
  for (int r = 0; r < 10; r++) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo32(0xD2511F53u, x[0], &hi0);
    uint32_t lo1 = mulhilo32(0xCD9E8D57u, x[2], &hi1);
    uint32_t n0 = hi1 ^ x[1] ^ k0, n2 = hi0 ^ x[3] ^ k1;
    x[0] = n0;
    x[1] = lo1;
    x[2] = n2;
    x[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int i = 0; i < 4; i++) out[i] = x[i];
}

static void words(uint64_t seed, uint64_t index, uint32_t out[4]) {
  uint32_t c[4] = {(uint32_t)index, (uint32_t)(index >> 32), 0, 0};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  zmlxi_philox4x32(c, key, out);
}

float zmlxi_random_uniform_ref(uint64_t seed, uint64_t index) {
  uint32_t w[4];
  words(seed, index, w);
  return (float)(w[0] >> 8) * 5.9604644775390625e-08f;
}

float zmlxi_random_normal_ref(uint64_t seed, uint64_t index) {
  uint32_t w[4];
  words(seed, index, w);
  float u0 = (float)(w[0] >> 8) * 5.9604644775390625e-08f;
  float u1 = (float)(w[1] >> 8) * 5.9604644775390625e-08f;
  float r = sqrtf(-2.0f * logf(u0 + 5.9604644775390625e-08f));
  return r * cosf(6.2831853071795865f * u1);
}
