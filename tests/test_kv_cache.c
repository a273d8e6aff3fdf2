/* The KV block cache: random sequences of add / extend + write / overwrite
 * / fork / free over many sequences against a host model, with every live
 * sequence read back equal to what was written after each step (so no
 * block is reachable from two sequences unless forked, and copy-on-write
 * keeps forks apart); block counts conserved; out of blocks changes
 * nothing; bad input is a status. */
#include "test_support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEVS 4
#define MAX_SEQS 64
#define MAX_TOK 400
enum { L = 2, H = 2, D = 3, BS = 8, NB = 40, W = H * D };

typedef struct model_seq {
  int alive;
  int64_t len;
  float k[L][MAX_TOK][W], v[L][MAX_TOK][W];
} model_seq;

static model_seq *model;
static int64_t n_model;

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Write n tokens at `start` of seq in every layer (values recorded in the model). */
static zmlx_status write_tokens(zmlx_device *dev, zmlx_kv_cache *c, int64_t seq, int64_t start,
                                int64_t n, uint64_t *rng) {
  float *k = malloc(sizeof(float) * (size_t)(n * W + 1)), *v = malloc(sizeof(float) * (size_t)(n * W + 1));
  zmlx_status st = ZMLX_OK;
  for (int l = 0; l < L && st == ZMLX_OK; l++) {
    zt_fill_uniform(k, (size_t)(n * W), -1, 1, rng);
    zt_fill_uniform(v, (size_t)(n * W), -1, 1, rng);
    int64_t sh[3] = {n, H, D};
    zmlx_array *ak = zt_array(dev, ZMLX_F32, 3, sh, k), *av = zt_array(dev, ZMLX_F32, 3, sh, v);
    st = zmlx_kv_cache_write(c, seq, l, start, ak, av);
    if (st == ZMLX_OK)
      for (int64_t t = 0; t < n; t++) {
        memcpy(model[seq].k[l][start + t], k + t * W, sizeof(float) * W);
        memcpy(model[seq].v[l][start + t], v + t * W, sizeof(float) * W);
      }
    zmlx_array_release(ak);
    zmlx_array_release(av);
  }
  free(k);
  free(v);
  return st;
}

static void check_all(zmlx_kv_cache *c, const char *after) {
  for (int64_t s = 0; s < n_model; s++) {
    if (!model[s].alive) continue;
    int64_t len = -1;
    ZT_OK(zmlx_kv_cache_length(c, s, &len));
    assert_int_equal(len, model[s].len);
    for (int l = 0; l < L; l++) {
      zmlx_array *k = NULL, *v = NULL;
      ZT_OK(zmlx_kv_cache_read(c, s, l, &k, &v));
      double *gk = zt_download(k), *gv = zt_download(v);
      for (int64_t t = 0; t < len; t++)
        for (int e = 0; e < W; e++)
          if (gk[t * W + e] != model[s].k[l][t][e] || gv[t * W + e] != model[s].v[l][t][e])
            fail_msg("after %s: sequence %lld layer %d token %lld element %d: k %g (want %g), v %g "
                     "(want %g)", after, (long long)s, l, (long long)t, e, gk[t * W + e],
                     model[s].k[l][t][e], gv[t * W + e], model[s].v[l][t][e]);
      free(gk);
      free(gv);
      zmlx_array_release(k);
      zmlx_array_release(v);
    }
  }
}

static void test_random_operations(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  model = calloc(MAX_SEQS, sizeof *model);
  assert_non_null(model);
  for (int d = 0; d < nd; d++) {
    uint64_t rng = zt_seed() * 2654435761u + 77u + (uint64_t)d;
    zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = L, .kv_heads = H, .head_dim = D,
                               .block_size = BS, .num_blocks = NB, .dtype = ZMLX_F32,
                               .device = devs[d]};
    zmlx_kv_cache *c = NULL;
    ZT_OK(zmlx_kv_cache_create(&desc, &c));
    memset(model, 0, MAX_SEQS * sizeof *model);
    n_model = 0;
    int ooms = 0, forks = 0, cows = 0;
    for (int step = 0; step < 250; step++) {
      int64_t live[MAX_SEQS], nl = 0;
      for (int64_t s = 0; s < n_model; s++)
        if (model[s].alive) live[nl++] = s;
      unsigned op = (unsigned)(next(&rng) % 10);
      char what[64];
      if ((nl == 0 || op < 2) && n_model < MAX_SEQS) { /* add */
        int64_t id;
        ZT_OK(zmlx_kv_cache_add_sequence(c, &id));
        assert_int_equal(id, n_model);
        model[n_model++].alive = 1;
        snprintf(what, sizeof what, "add %lld", (long long)id);
      } else if (nl == 0) {
        continue;
      } else if (op < 6) { /* extend + write */
        int64_t s = live[next(&rng) % (uint64_t)nl], n = 1 + (int64_t)(next(&rng) % 20);
        if (model[s].len + n > MAX_TOK) continue;
        int64_t fb0, fb1;
        ZT_OK(zmlx_kv_cache_stats(c, &fb0, NULL));
        zmlx_status st = zmlx_kv_cache_extend(c, s, n);
        if (st == ZMLX_ERR_OUT_OF_MEMORY) { /* nothing changed */
          ooms++;
          ZT_OK(zmlx_kv_cache_stats(c, &fb1, NULL));
          assert_int_equal(fb0, fb1);
          zmlx_clear_error();
        } else {
          ZT_OK(st);
          int64_t start = model[s].len;
          model[s].len += n;
          st = write_tokens(devs[d], c, s, start, n, &rng);
          if (st == ZMLX_ERR_OUT_OF_MEMORY) { /* a shared last block and no block to copy it to */
            ooms++;
            zmlx_clear_error();
            model[s].len = start; /* the model keeps its values; write them back later */
            ZT_OK(zmlx_kv_cache_free_sequence(c, s));
            model[s].alive = 0;
          } else {
            ZT_OK(st);
          }
        }
        snprintf(what, sizeof what, "extend %lld by %lld", (long long)s, (long long)n);
      } else if (op < 7) { /* overwrite old tokens (copy-on-write when shared) */
        int64_t s = live[next(&rng) % (uint64_t)nl];
        if (model[s].len == 0) continue;
        int64_t start = (int64_t)(next(&rng) % (uint64_t)model[s].len);
        int64_t n = 1 + (int64_t)(next(&rng) % (uint64_t)(model[s].len - start));
        zmlx_status st = write_tokens(devs[d], c, s, start, n, &rng);
        if (st == ZMLX_ERR_OUT_OF_MEMORY) {
          ooms++;
          zmlx_clear_error();
        } else {
          ZT_OK(st);
          cows++;
        }
        snprintf(what, sizeof what, "overwrite %lld [%lld, +%lld)", (long long)s, (long long)start,
                 (long long)n);
      } else if (op < 8 && n_model < MAX_SEQS) { /* fork */
        int64_t s = live[next(&rng) % (uint64_t)nl], child;
        ZT_OK(zmlx_kv_cache_fork(c, s, &child));
        assert_int_equal(child, n_model);
        memcpy(&model[child], &model[s], sizeof model[s]);
        n_model++;
        forks++;
        snprintf(what, sizeof what, "fork %lld -> %lld", (long long)s, (long long)child);
      } else { /* free */
        int64_t s = live[next(&rng) % (uint64_t)nl];
        ZT_OK(zmlx_kv_cache_free_sequence(c, s));
        model[s].alive = 0;
        snprintf(what, sizeof what, "free %lld", (long long)s);
      }
      int64_t fb, ub;
      ZT_OK(zmlx_kv_cache_stats(c, &fb, &ub));
      assert_int_equal(fb + ub, NB);
      check_all(c, what);
    }
    /* every block comes back when every sequence is freed */
    for (int64_t s = 0; s < n_model; s++)
      if (model[s].alive) ZT_OK(zmlx_kv_cache_free_sequence(c, s));
    int64_t fb;
    ZT_OK(zmlx_kv_cache_stats(c, &fb, NULL));
    assert_int_equal(fb, NB);
    fprintf(stderr, "kv cache: %d forks, %d overwrites, %d out-of-blocks refusals\n", forks, cows,
            ooms);
    ZT_OK(zmlx_kv_cache_destroy(c));
  }
  free(model);
}

/* A fork shares the parent's partial last block; both then extend into it
 * and overwrite a shared full block: each keeps its own values. */
static void test_fork_copy_on_write(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  model = calloc(MAX_SEQS, sizeof *model);
  assert_non_null(model);
  uint64_t rng = zt_seed() * 2654435761u + 91u;
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = L, .kv_heads = H, .head_dim = D,
                             .block_size = BS, .num_blocks = NB, .dtype = ZMLX_F32,
                             .device = devs[0]};
  zmlx_kv_cache *c = NULL;
  ZT_OK(zmlx_kv_cache_create(&desc, &c));
  int64_t p, ch, fb0, fb1;
  ZT_OK(zmlx_kv_cache_add_sequence(c, &p));
  model[0].alive = 1;
  n_model = 1;
  ZT_OK(zmlx_kv_cache_extend(c, p, BS + 3)); /* one full block, one partial */
  model[0].len = BS + 3;
  ZT_OK(write_tokens(devs[0], c, p, 0, BS + 3, &rng));
  ZT_OK(zmlx_kv_cache_stats(c, &fb0, NULL));
  ZT_OK(zmlx_kv_cache_fork(c, p, &ch));
  memcpy(&model[1], &model[0], sizeof model[0]);
  n_model = 2;
  ZT_OK(zmlx_kv_cache_stats(c, &fb1, NULL));
  assert_int_equal(fb0, fb1); /* a fork takes no block */
  for (int64_t s = 0; s < 2; s++) {
    ZT_OK(zmlx_kv_cache_extend(c, s, 2));
    model[s].len += 2;
    ZT_OK(write_tokens(devs[0], c, s, BS + 3, 2, &rng)); /* into the shared partial block */
  }
  check_all(c, "both extend into the shared block");
  ZT_OK(write_tokens(devs[0], c, 1, 2, 1, &rng)); /* the shared full block */
  check_all(c, "the child overwrites the shared full block");
  ZT_OK(zmlx_kv_cache_destroy(c));
  free(model);
}

/* Decode against naive attention in f64 over what the cache holds: mixed
 * context lengths in one batch (1, 15, 16, 17, 300 and an empty one), GQA,
 * every dtype and the head dims. */
/* f64 attention of q [B, hq, hd] over layer 1 of each sequence (len[i]
 * tokens) into want. */
static void decode_reference(zmlx_kv_cache *c, const int64_t *seqs, const int64_t *len, int64_t B,
                             int hq, int hkv, int hd, const double *qh, double *want) {
  const double scale = 1.0 / sqrt((double)hd);
  for (int64_t i = 0; i < B; i++) {
    if (!len[i]) continue;
    zmlx_array *k = NULL, *v = NULL;
    ZT_OK(zmlx_kv_cache_read(c, seqs[i], 1, &k, &v));
    double *kh = zt_download(k), *vh = zt_download(v);
    for (int h = 0; h < hq; h++) {
      const int g = h / (hq / hkv);
      const double *qr = qh + (i * hq + h) * hd;
      double *s = malloc(sizeof(double) * (size_t)len[i]), mx = -INFINITY, l = 0;
      for (int64_t p = 0; p < len[i]; p++) {
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += qr[d] * kh[(p * hkv + g) * hd + d];
        s[p] = dot * scale;
        mx = fmax(mx, s[p]);
      }
      for (int64_t p = 0; p < len[i]; p++) l += s[p] = exp(s[p] - mx);
      for (int d = 0; d < hd; d++) {
        double o = 0;
        for (int64_t p = 0; p < len[i]; p++) o += s[p] / l * vh[(p * hkv + g) * hd + d];
        want[(i * hq + h) * hd + d] = o;
      }
      free(s);
    }
    free(kh);
    free(vh);
    zmlx_array_release(k);
    zmlx_array_release(v);
  }
}

/* One random token appended to layer 1 of each sequence. */
static void grow_each(zmlx_device *dev, zmlx_kv_cache *c, const int64_t *seqs, int64_t B, int hkv,
                      int hd, int64_t *len, uint64_t *rng) {
  int64_t sh[3] = {1, hkv, hd};
  float *v = malloc(sizeof(float) * (size_t)(hkv * hd));
  for (int64_t i = 0; i < B; i++) {
    ZT_OK(zmlx_kv_cache_extend(c, seqs[i], 1));
    zt_fill_uniform(v, (size_t)(hkv * hd), -1, 1, rng);
    zmlx_array *ak = zt_array(dev, ZMLX_F32, 3, sh, v);
    zt_fill_uniform(v, (size_t)(hkv * hd), -1, 1, rng);
    zmlx_array *av = zt_array(dev, ZMLX_F32, 3, sh, v);
    ZT_OK(zmlx_kv_cache_write(c, seqs[i], 1, len[i], ak, av));
    len[i]++;
    zmlx_array_release(ak);
    zmlx_array_release(av);
  }
  free(v);
}

static void decode_case_lens(zmlx_device *dev, zmlx_dtype dt, int hd, int hq, int hkv,
                             const int64_t *lens, int64_t B, uint64_t *rng) {
  int64_t blocks = 0;
  for (int64_t i = 0; i < B; i++) blocks += (lens[i] + 1 + 15) / 16;
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 2, .kv_heads = hkv,
                             .head_dim = hd, .block_size = 16, .num_blocks = blocks + 1,
                             .dtype = dt, .device = dev};
  zmlx_kv_cache *c = NULL;
  ZT_OK(zmlx_kv_cache_create(&desc, &c));
  int64_t seqs[8];
  for (int64_t i = 0; i < B; i++) {
    ZT_OK(zmlx_kv_cache_add_sequence(c, &seqs[i]));
    ZT_OK(zmlx_kv_cache_extend(c, seqs[i], lens[i]));
    if (!lens[i]) continue;
    int64_t sh[3] = {lens[i], hkv, hd};
    size_t n = (size_t)(lens[i] * hkv * hd);
    float *v = malloc(n * sizeof *v);
    zt_fill_uniform(v, n, -1, 1, rng);
    zmlx_array *ak = zt_array(dev, ZMLX_F32, 3, sh, v);
    zt_fill_uniform(v, n, -1, 1, rng);
    zmlx_array *av = zt_array(dev, ZMLX_F32, 3, sh, v);
    ZT_OK(zmlx_kv_cache_write(c, seqs[i], 1, 0, ak, av));
    zmlx_array_release(ak);
    zmlx_array_release(av);
    free(v);
  }
  int64_t qsh[3] = {B, hq, hd}, len[8];
  memcpy(len, lens, (size_t)B * sizeof *len);
  size_t nq = (size_t)(B * hq * hd);
  float *qv = malloc(nq * sizeof *qv);
  zt_fill_uniform(qv, nq, -2, 2, rng);
  zmlx_array *q = zt_array(dev, dt, 3, qsh, qv);
  double *qh = zt_download(q);
  /* twice: the second time after every sequence grew by a token, so the
   * tables and lengths of the first call must not be reused */
  for (int round = 0; round < 2; round++) {
    if (round) grow_each(dev, c, seqs, B, hkv, hd, len, rng);
    zmlx_array *y = NULL;
    ZT_OK(zmlx_kv_cache_attention(c, 1, q, seqs, 0, &y));
    double *got = zt_download(y), *want = calloc(nq, sizeof *want);
    decode_reference(c, seqs, len, B, hq, hkv, hd, qh, want);
    /* f32 statistics; the output rounded once to the dtype */
    const double u = dt == ZMLX_F32 ? 0x1p-24 : dt == ZMLX_F16 ? 0x1p-11 : 0x1p-8;
    char what[64];
    snprintf(what, sizeof what, "decode %s head_dim %d, call %d", zmlx_dtype_name(dt), hd, round);
    zt_assert_close(got, want, nq, 2e-5 + u, 2e-5 + u, what);
    free(got);
    free(want);
    zmlx_array_release(y);
  }
  free(qh);
  free(qv);
  zmlx_array_release(q);
  ZT_OK(zmlx_kv_cache_destroy(c));
}

static void decode_case(zmlx_device *dev, zmlx_dtype dt, int hd, int hq, int hkv, uint64_t *rng) {
  static const int64_t lens[] = {1, 15, 16, 17, 300, 0};
  decode_case_lens(dev, dt, hd, hq, hkv, lens, 6, rng);
}

/* Decode of `order` (2 sequences) checked against decode_reference. */
static void decode_order(zmlx_device *dev, zmlx_kv_cache *c, const int64_t *order,
                         const int64_t *len, uint64_t *rng, const char *what) {
  enum { HQ = 4, HKV = 2, HD = 16 };
  int64_t qsh[3] = {2, HQ, HD};
  float qv[2 * HQ * HD];
  zt_fill_uniform(qv, 2 * HQ * HD, -2, 2, rng);
  zmlx_array *q = zt_array(dev, ZMLX_F32, 3, qsh, qv), *y = NULL;
  double *qh = zt_download(q), want[2 * HQ * HD];
  ZT_OK(zmlx_kv_cache_attention(c, 1, q, order, 0, &y));
  double *got = zt_download(y);
  decode_reference(c, order, len, 2, HQ, HKV, HD, qh, want);
  zt_assert_close(got, want, 2 * HQ * HD, 1e-5, 1e-5, what);
  free(qh);
  free(got);
  zmlx_array_release(q);
  zmlx_array_release(y);
}

/* The decode keeps the last call's tables on the device: calls whose
 * tables alone differ (the batch's order swapped, lengths equal), then
 * whose lengths alone differ (a token each, no new block), read what the
 * cache holds now. */
static void test_decode_tables_change(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  uint64_t rng = zt_seed() * 2654435761u + 4242u;
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 2, .kv_heads = 2,
                             .head_dim = 16, .block_size = 16, .num_blocks = 8,
                             .dtype = ZMLX_F32, .device = devs[0]};
  zmlx_kv_cache *c = NULL;
  ZT_OK(zmlx_kv_cache_create(&desc, &c));
  int64_t seq[2], len[2] = {0, 0};
  for (int i = 0; i < 2; i++) ZT_OK(zmlx_kv_cache_add_sequence(c, &seq[i]));
  for (int t = 0; t < 20; t++) grow_each(devs[0], c, seq, 2, 2, 16, len, &rng);
  const int64_t swapped[2] = {seq[1], seq[0]}; /* both 20 tokens long */
  decode_order(devs[0], c, seq, len, &rng, "decode, first call");
  decode_order(devs[0], c, swapped, len, &rng, "decode, the batch swapped");
  grow_each(devs[0], c, seq, 2, 2, 16, len, &rng); /* both 21 */
  decode_order(devs[0], c, swapped, len, &rng, "decode after a token each");
  ZT_OK(zmlx_kv_cache_destroy(c));
}

static void test_paged_decode(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  uint64_t rng = zt_seed() * 2654435761u + 123u;
  static const int hds[] = {64, 80, 96, 128, 256};
  static const zmlx_dtype dts[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  for (int d = 0; d < nd; d++) {
    for (int i = 0; i < 3; i++) decode_case(devs[d], dts[i], 64, 4, 2, &rng);
    for (int i = 1; i < 5; i++) decode_case(devs[d], ZMLX_F32, hds[i], 2, 1, &rng);
    decode_case(devs[d], ZMLX_BF16, 128, 8, 8, &rng);
    /* split-K: forced 7-token partitions (empty ones included), then long
     * contexts that the default rule splits */
    setenv("ZMLX_DECODE_PARTITION", "7", 1);
    decode_case(devs[d], ZMLX_F32, 64, 4, 2, &rng);
    decode_case(devs[d], ZMLX_F16, 80, 2, 2, &rng);
    unsetenv("ZMLX_DECODE_PARTITION");
    static const int64_t long_lens[] = {4096, 33000, 1};
    decode_case_lens(devs[d], ZMLX_F32, 64, 4, 2, long_lens, 3, &rng);
  }
}

/* RoPE fused into the write: the cache holds exactly what zmlx_rope of the
 * new keys at their positions gives, V as written, and q_out is zmlx_rope
 * of q; two steps (positions 0.. then 5..), both modes, partial rotary
 * dims, GQA. */
static void test_rope_write(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  uint64_t rng = zt_seed() * 2654435761u + 321u;
  for (int mode = 0; mode < 2; mode++)
    for (int rd = 0; rd <= 4; rd += 4) {
      zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 2, .kv_heads = 2,
                                 .head_dim = 8, .block_size = 8, .num_blocks = 4,
                                 .dtype = ZMLX_F32, .device = devs[0]};
      zmlx_kv_cache *c = NULL;
      ZT_OK(zmlx_kv_cache_create(&desc, &c));
      int64_t s;
      ZT_OK(zmlx_kv_cache_add_sequence(c, &s));
      zmlx_rope_opts ro = {.mode = (zmlx_rope_mode)mode, .rotary_dims = rd, .base = 500, .scale = 0.5};
      int64_t at = 0;
      for (int step = 0; step < 2; step++) {
        const int64_t n = step ? 3 : 5;
        ZT_OK(zmlx_kv_cache_extend(c, s, n));
        int64_t ks[3] = {n, 2, 8}, qs[3] = {n, 4, 8}, k4[4] = {1, n, 2, 8}, q4[4] = {1, n, 4, 8};
        float kv[24 * 5], vv[24 * 5], qv[32 * 5];
        zt_fill_uniform(kv, (size_t)(n * 16), -1, 1, &rng);
        zt_fill_uniform(vv, (size_t)(n * 16), -1, 1, &rng);
        zt_fill_uniform(qv, (size_t)(n * 32), -1, 1, &rng);
        zmlx_array *k = zt_array(devs[0], ZMLX_F32, 3, ks, kv), *v = zt_array(devs[0], ZMLX_F32, 3, ks, vv);
        zmlx_array *q = zt_array(devs[0], ZMLX_F32, 3, qs, qv), *qo = NULL;
        ZT_OK(zmlx_kv_cache_write_rope(c, s, 1, at, k, v, q, &ro, &qo));
        /* the reference: zmlx_rope with offsets = [at] */
        float off = (float)at;
        int64_t one = 1;
        zmlx_array *aoff = NULL, *k4v = NULL, *q4v = NULL, *kr = NULL, *qr = NULL;
        zmlx_array *off_f = zt_array(devs[0], ZMLX_F32, 1, &one, &off);
        ZT_OK(zmlx_array_astype(off_f, ZMLX_I32, &aoff));
        zmlx_array_release(off_f);
        zmlx_rope_opts rr = ro;
        rr.offsets = aoff;
        ZT_OK(zmlx_array_reshape(k, 4, k4, &k4v));
        ZT_OK(zmlx_array_reshape(q, 4, q4, &q4v));
        ZT_OK(zmlx_rope(k4v, &rr, &kr));
        ZT_OK(zmlx_rope(q4v, &rr, &qr));
        zmlx_array *ck = NULL, *cv = NULL;
        ZT_OK(zmlx_kv_cache_read(c, s, 1, &ck, &cv));
        double *gk = zt_download(ck), *gv = zt_download(cv), *wk = zt_download(kr);
        double *gq = zt_download(qo), *wq = zt_download(qr);
        zt_assert_close(gk + at * 16, wk, (size_t)(n * 16), 1e-6, 1e-6, "rotated k in the cache");
        for (int64_t i = 0; i < n * 16; i++) assert_true(gv[at * 16 + i] == (double)vv[i]);
        zt_assert_close(gq, wq, (size_t)(n * 32), 1e-6, 1e-6, "rotated q");
        free(gk); free(gv); free(wk); free(gq); free(wq);
        zmlx_array_release(ck); zmlx_array_release(cv); zmlx_array_release(kr); zmlx_array_release(qr);
        zmlx_array_release(k4v); zmlx_array_release(q4v); zmlx_array_release(aoff);
        zmlx_array_release(k); zmlx_array_release(v); zmlx_array_release(q); zmlx_array_release(qo);
        at += n;
      }
      ZT_OK(zmlx_kv_cache_destroy(c));
    }
}

/* Both caches' sequences s[0..n) of `layer` read back bitwise equal. */
static void assert_caches_equal(zmlx_kv_cache *a, zmlx_kv_cache *b, const int64_t *s, int n,
                                int layer) {
  for (int i = 0; i < n; i++) {
    zmlx_array *ka = NULL, *va = NULL, *kb = NULL, *vb = NULL;
    ZT_OK(zmlx_kv_cache_read(a, s[i], layer, &ka, &va));
    ZT_OK(zmlx_kv_cache_read(b, s[i], layer, &kb, &vb));
    assert_int_equal(zmlx_array_size(ka), zmlx_array_size(kb));
    double *xa = zt_download(ka), *xb = zt_download(kb), *ya = zt_download(va), *yb = zt_download(vb);
    for (int64_t j = 0; j < zmlx_array_size(ka); j++) {
      if (xa[j] != xb[j] || ya[j] != yb[j])
        fail_msg("sequence %lld layer %d element %lld: k %g vs %g, v %g vs %g", (long long)s[i],
                 layer, (long long)j, xa[j], xb[j], ya[j], yb[j]);
    }
    free(xa), free(xb), free(ya), free(yb);
    zmlx_array_release(ka), zmlx_array_release(va), zmlx_array_release(kb), zmlx_array_release(vb);
  }
}

/* A batch's decode-step write (zmlx_kv_cache_write_rope_step) equals
 * zmlx_kv_cache_write_rope of each row at its sequence's last position, in
 * a second cache built the same way: the caches read back bitwise equal,
 * q_out row i equals row i's own rotation. The batch mixes lengths, a token
 * opening a new block, forks before and after the extension (the latter:
 * both write one shared slot: copy-on-write), out of sequence order; both
 * RoPE modes. Bad batches are a status and write nothing. */
static void test_rope_write_step(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  uint64_t rng = zt_seed() * 2654435761u + 977u;
  enum { HK = 2, HQ = 4, HD = 8, NS = 5 };
  for (int mode = 0; mode < 2; mode++) {
    zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 2, .kv_heads = HK,
                               .head_dim = HD, .block_size = 8, .num_blocks = 24,
                               .dtype = ZMLX_F32, .device = devs[0]};
    zmlx_kv_cache *c[2] = {NULL, NULL};
    int64_t seq[NS];
    /* seq 2: a fork of seq 1 before the step's extension; seq 4 one of seq 3
     * after it, so the slot both write is in a block they share */
    static const int64_t lens[NS] = {3, 17, -1, 8, -2};
    for (int w = 0; w < 2; w++) {
      ZT_OK(zmlx_kv_cache_create(&desc, &c[w]));
      for (int i = 0; i < NS; i++) {
        if (lens[i] == -1) ZT_OK(zmlx_kv_cache_fork(c[w], seq[1], &seq[i]));
        if (lens[i] < 0) continue;
        ZT_OK(zmlx_kv_cache_add_sequence(c[w], &seq[i]));
        ZT_OK(zmlx_kv_cache_extend(c[w], seq[i], lens[i]));
      }
    }
    for (int i = 0; i < NS; i++) {
      if (lens[i] < 0) continue;
      int64_t sh[3] = {lens[i], HK, HD};
      float kv[17 * HK * HD], vv[17 * HK * HD];
      zt_fill_uniform(kv, (size_t)(lens[i] * HK * HD), -1, 1, &rng);
      zt_fill_uniform(vv, (size_t)(lens[i] * HK * HD), -1, 1, &rng);
      zmlx_array *k = zt_array(devs[0], ZMLX_F32, 3, sh, kv), *v = zt_array(devs[0], ZMLX_F32, 3, sh, vv);
      for (int w = 0; w < 2; w++) ZT_OK(zmlx_kv_cache_write(c[w], seq[i], 1, 0, k, v));
      zmlx_array_release(k), zmlx_array_release(v);
    }
    /* two steps: the second's slots must not be the first's */
    int64_t order[NS];
    zmlx_array *k = NULL, *v = NULL, *q = NULL, *qo = NULL;
    zmlx_rope_opts ro = {.mode = (zmlx_rope_mode)mode, .base = 300, .scale = 0.75};
    for (int round = 0; round < 2; round++) {
      for (int w = 0; w < 2; w++)
        for (int i = 0; i < NS; i++) {
          if (lens[i] == -2 && !round) ZT_OK(zmlx_kv_cache_fork(c[w], seq[3], &seq[i]));
          else ZT_OK(zmlx_kv_cache_extend(c[w], seq[i], 1));
        }
      for (int i = 0; i < NS; i++) order[i] = seq[(int[]){2, 4, 0, 3, 1}[i]];
      int64_t ks[3] = {NS, HK, HD}, qs[3] = {NS, HQ, HD};
      float kv[NS * HK * HD], vv[NS * HK * HD], qv[NS * HQ * HD];
      zt_fill_uniform(kv, NS * HK * HD, -1, 1, &rng);
      zt_fill_uniform(vv, NS * HK * HD, -1, 1, &rng);
      zt_fill_uniform(qv, NS * HQ * HD, -1, 1, &rng);
      zmlx_array_release(k), zmlx_array_release(v), zmlx_array_release(q);
      k = zt_array(devs[0], ZMLX_F32, 3, ks, kv), v = zt_array(devs[0], ZMLX_F32, 3, ks, vv);
      q = zt_array(devs[0], ZMLX_F32, 3, qs, qv);
      ZT_OK(zmlx_kv_cache_write_rope_step(c[0], 1, order, NS, k, v, q, &ro, &qo));
      double *got_q = zt_download(qo);
      for (int i = 0; i < NS; i++) {
        int64_t len = 0;
        zmlx_array *ki = NULL, *vi = NULL, *qi = NULL, *qoi = NULL;
        ZT_OK(zmlx_kv_cache_length(c[1], order[i], &len));
        const int64_t lo[3] = {i, 0, 0}, hik[3] = {i + 1, HK, HD}, hiq[3] = {i + 1, HQ, HD};
        ZT_OK(zmlx_array_slice(k, lo, hik, NULL, &ki));
        ZT_OK(zmlx_array_slice(v, lo, hik, NULL, &vi));
        ZT_OK(zmlx_array_slice(q, lo, hiq, NULL, &qi));
        ZT_OK(zmlx_kv_cache_write_rope(c[1], order[i], 1, len - 1, ki, vi, qi, &ro, &qoi));
        double *want_q = zt_download(qoi);
        for (int j = 0; j < HQ * HD; j++)
          if (got_q[i * HQ * HD + j] != want_q[j])
            fail_msg("mode %d row %d q_out[%d]: %g vs %g", mode, i, j, got_q[i * HQ * HD + j], want_q[j]);
        free(want_q);
        zmlx_array_release(ki), zmlx_array_release(vi), zmlx_array_release(qi), zmlx_array_release(qoi);
      }
      free(got_q);
      zmlx_array_release(qo);
      assert_caches_equal(c[0], c[1], seq, NS, 1);
      assert_caches_equal(c[0], c[1], seq, NS, 0);
    }
    /* bad batches: a status each, and nothing written */
    const int64_t twice[NS] = {seq[0], seq[1], seq[0], seq[3], seq[4]};
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, twice, NS, k, v, q, &ro, &qo),
             ZMLX_ERR_INVALID_ARG, "in the batch twice");
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 2, order, NS, k, v, q, &ro, &qo),
             ZMLX_ERR_INVALID_ARG, "layer 2 of 2");
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, order, NS - 1, k, v, q, &ro, &qo),
             ZMLX_ERR_SHAPE, "[5, 2, 8]");
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, NULL, NS, k, v, q, &ro, &qo),
             ZMLX_ERR_NULL_ARG, "seqs");
    int64_t q3s[3] = {NS, 3, HD};
    zmlx_array *q3 = NULL;
    ZT_OK(zmlx_array_zeros(devs[0], ZMLX_F32, 3, q3s, &q3));
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, order, NS, k, v, q3, &ro, &qo),
             ZMLX_ERR_SHAPE, "[5, 3, 8]");
    zmlx_array_release(q3);
    int64_t empty, gone;
    ZT_OK(zmlx_kv_cache_add_sequence(c[0], &empty));
    ZT_OK(zmlx_kv_cache_fork(c[0], seq[0], &gone));
    ZT_OK(zmlx_kv_cache_free_sequence(c[0], gone));
    const int64_t with_empty[NS] = {seq[0], seq[1], empty, seq[3], seq[4]};
    const int64_t with_freed[NS] = {seq[0], gone, seq[2], seq[3], seq[4]};
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, with_empty, NS, k, v, q, &ro, &qo),
             ZMLX_ERR_INVALID_ARG, "is empty");
    ZT_FAILS(zmlx_kv_cache_write_rope_step(c[0], 1, with_freed, NS, k, v, q, &ro, &qo),
             ZMLX_ERR_INVALID_ARG, "was freed");
    assert_null(qo);
    assert_caches_equal(c[0], c[1], seq, NS, 1);
    /* an empty batch: an empty q_out */
    int64_t zs[3] = {0, HK, HD}, zq[3] = {0, HQ, HD};
    zmlx_array *k0 = NULL, *q0 = NULL;
    ZT_OK(zmlx_array_zeros(devs[0], ZMLX_F32, 3, zs, &k0));
    ZT_OK(zmlx_array_zeros(devs[0], ZMLX_F32, 3, zq, &q0));
    ZT_OK(zmlx_kv_cache_write_rope_step(c[0], 1, NULL, 0, k0, k0, q0, &ro, &qo));
    assert_int_equal(zmlx_array_size(qo), 0);
    zmlx_array_release(qo), zmlx_array_release(k0), zmlx_array_release(q0);
    zmlx_array_release(k), zmlx_array_release(v), zmlx_array_release(q);
    ZT_OK(zmlx_kv_cache_destroy(c[0]));
    ZT_OK(zmlx_kv_cache_destroy(c[1]));
  }
}

static void test_bad_input(void **state) {
  (void)state;
  zmlx_device *devs[MAX_DEVS];
  int nd = zt_devices(devs, MAX_DEVS);
  if (!nd) skip();
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 1, .kv_heads = 2, .head_dim = 4,
                             .block_size = 16, .num_blocks = 2, .dtype = ZMLX_F16,
                             .device = devs[0]};
  zmlx_kv_cache *c = NULL;
  zmlx_kv_cache_desc bad = desc;
  bad.block_size = 12;
  ZT_FAILS(zmlx_kv_cache_create(&bad, &c), ZMLX_ERR_INVALID_ARG, "block_size 12");
  bad = desc;
  bad.dtype = ZMLX_I32;
  ZT_FAILS(zmlx_kv_cache_create(&bad, &c), ZMLX_ERR_DTYPE, "i32");
  bad = desc;
  bad.struct_size = 4;
  ZT_FAILS(zmlx_kv_cache_create(&bad, &c), ZMLX_ERR_INVALID_ARG, "struct_size");
  ZT_FAILS(zmlx_kv_cache_create(NULL, &c), ZMLX_ERR_NULL_ARG, NULL);
  ZT_OK(zmlx_kv_cache_create(&desc, &c));
  int64_t s, fb;
  ZT_OK(zmlx_kv_cache_add_sequence(c, &s));
  ZT_FAILS(zmlx_kv_cache_extend(c, s, 33), ZMLX_ERR_OUT_OF_MEMORY, "need 3 blocks, 2 are free");
  int64_t len;
  ZT_OK(zmlx_kv_cache_length(c, s, &len));
  assert_int_equal(len, 0);
  ZT_OK(zmlx_kv_cache_extend(c, s, 3));
  int64_t sh[3] = {3, 2, 4}, sh_bad[3] = {3, 3, 4};
  float vals[36] = {0};
  zmlx_array *k = zt_array(devs[0], ZMLX_F32, 3, sh, vals), *kb = zt_array(devs[0], ZMLX_F32, 3, sh_bad, vals);
  ZT_FAILS(zmlx_kv_cache_write(c, s, 0, 1, k, k), ZMLX_ERR_INVALID_ARG, "outside sequence");
  ZT_FAILS(zmlx_kv_cache_write(c, s, 1, 0, k, k), ZMLX_ERR_INVALID_ARG, "layer 1 of 1");
  ZT_FAILS(zmlx_kv_cache_write(c, s, 0, 0, kb, kb), ZMLX_ERR_SHAPE, "[3, 3, 4]");
  ZT_OK(zmlx_kv_cache_write(c, s, 0, 0, k, k));
  ZT_OK(zmlx_kv_cache_free_sequence(c, s));
  ZT_FAILS(zmlx_kv_cache_write(c, s, 0, 0, k, k), ZMLX_ERR_INVALID_ARG, "was freed");
  ZT_FAILS(zmlx_kv_cache_extend(c, s, 1), ZMLX_ERR_INVALID_ARG, "was freed");
  ZT_FAILS(zmlx_kv_cache_fork(c, 99, &s), ZMLX_ERR_INVALID_ARG, "does not exist");
  {
    int64_t s2, qb[3] = {1, 3, 4}, qd[3] = {1, 2, 5};
    float z[16] = {0};
    zmlx_array *q3 = zt_array(devs[0], ZMLX_F16, 3, qb, z), *q5 = zt_array(devs[0], ZMLX_F16, 3, qd, z);
    zmlx_array *y = NULL;
    ZT_OK(zmlx_kv_cache_add_sequence(c, &s2));
    ZT_FAILS(zmlx_kv_cache_attention(c, 0, q3, &s2, 0, &y), ZMLX_ERR_SHAPE, "[1, 3, 4]");
    ZT_FAILS(zmlx_kv_cache_attention(c, 0, q5, &s2, 0, &y), ZMLX_ERR_SHAPE, "head_dim 4");
    ZT_FAILS(zmlx_kv_cache_attention(c, 0, q3, &s, 0, &y), ZMLX_ERR_SHAPE, NULL);
    ZT_FAILS(zmlx_kv_cache_attention(c, 2, q3, &s2, 0, &y), ZMLX_ERR_INVALID_ARG, "layer 2");
    assert_null(y);
    ZT_OK(zmlx_kv_cache_free_sequence(c, s2));
    zmlx_array_release(q3);
    zmlx_array_release(q5);
  }
  ZT_OK(zmlx_kv_cache_stats(c, &fb, NULL));
  assert_int_equal(fb, 2);
  zmlx_array_release(k);
  zmlx_array_release(kb);
  ZT_OK(zmlx_kv_cache_destroy(c));
  ZT_OK(zmlx_kv_cache_destroy(NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_operations),
      cmocka_unit_test(test_fork_copy_on_write),
      cmocka_unit_test(test_paged_decode),
      cmocka_unit_test(test_rope_write),
      cmocka_unit_test(test_rope_write_step),
      cmocka_unit_test(test_decode_tables_change),
      cmocka_unit_test(test_bad_input),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
