/* `zmlx check` and `zmlx bench` cases of src/ops/kv_cache.c (the KV block
 * cache; its allocator invariants are tests/test_kv_cache.c): PagedAttention
 * decode, one pass and split-K, over a batch of mixed context lengths
 * (0, 1, 15, 16, 17, 300, and 4096 in the full check) against f64
 * attention over what the cache holds, GQA, every dtype, several query
 * tokens a sequence (causal among them); the fused RoPE
 * write against zmlx_rope. The launches also give test_catalog its NVRTC
 * compiles of these kernels. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"

static zmlx_status fill_cache(const zmlx_check_opts *o, zmlx_kv_cache *c, const int64_t *lens,
                              int64_t B, int hkv, int hd, int64_t *seqs, uint64_t *rng) {
  for (int64_t i = 0; i < B; i++) {
    ZMLX_CHECK(zmlx_kv_cache_add_sequence(c, &seqs[i]));
    ZMLX_CHECK(zmlx_kv_cache_extend(c, seqs[i], lens[i]));
    if (!lens[i]) continue;
    int64_t sh[3] = {lens[i], hkv, hd};
    size_t n = (size_t)(lens[i] * hkv * hd);
    double *v = malloc(n * sizeof *v);
    zmlx_array *ak = NULL, *av = NULL;
    zmlx_status st = v ? zck_random(o->device, o->dtype, 3, sh, -1, 1, rng, v, &ak)
                       : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    if (st == ZMLX_OK) st = zck_random(o->device, o->dtype, 3, sh, -1, 1, rng, v, &av);
    if (st == ZMLX_OK) st = zmlx_kv_cache_write(c, seqs[i], 0, 0, ak, av);
    free(v);
    zmlx_array_release(ak);
    zmlx_array_release(av);
    ZMLX_CHECK(st);
  }
  return ZMLX_OK;
}

/* out for q [B, T, hq, hd] against each sequence in f64 (query token t of
 * sequence i sees its first lens[i] - (T - 1 - t) positions: the last T are
 * the step's tokens), and the terms' size per element (sum_p p |v|, times
 * 1 + the score's magnitude). */
static zmlx_status reference(zmlx_kv_cache *c, const int64_t *seqs, const int64_t *lens, int64_t B,
                             int64_t T, int hq, int hkv, int hd, const double *q, double *want,
                             double *terms) {
  const double scale = 1.0 / sqrt((double)hd);
  for (int64_t i = 0; i < B; i++) {
    if (!lens[i]) continue;
    zmlx_array *k = NULL, *v = NULL;
    double *kh = NULL, *vh = NULL;
    ZMLX_CHECK(zmlx_kv_cache_read(c, seqs[i], 0, &k, &v));
    zmlx_status st = zck_download(k, &kh);
    if (st == ZMLX_OK) st = zck_download(v, &vh);
    double *s = malloc(sizeof(double) * (size_t)lens[i]);
    if (st == ZMLX_OK && !s) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int64_t row = i * T; st == ZMLX_OK && row < (i + 1) * T; row++) {
      const int64_t n = lens[i] - (T - 1 - row % T);
      for (int h = 0; n > 0 && h < hq; h++) {
        const int g = h / (hq / hkv);
        const double *qr = q + (row * hq + h) * hd;
        double mx = -INFINITY, l = 0, amax = 0;
        for (int64_t p = 0; p < n; p++) {
          double dot = 0, adot = 0;
          for (int d = 0; d < hd; d++)
            dot += qr[d] * kh[(p * hkv + g) * hd + d], adot += fabs(qr[d] * kh[(p * hkv + g) * hd + d]);
          s[p] = dot * scale;
          mx = fmax(mx, s[p]);
          amax = fmax(amax, adot * scale);
        }
        for (int64_t p = 0; p < n; p++) l += s[p] = exp(s[p] - mx);
        for (int d = 0; d < hd; d++) {
          double o = 0, a = 0;
          for (int64_t p = 0; p < n; p++) {
            o += s[p] / l * vh[(p * hkv + g) * hd + d];
            a += s[p] / l * fabs(vh[(p * hkv + g) * hd + d]);
          }
          want[(row * hq + h) * hd + d] = o;
          terms[(row * hq + h) * hd + d] = a * (1 + 2 * amax);
        }
      }
    }
    free(s);
    free(kh);
    free(vh);
    zmlx_array_release(k);
    zmlx_array_release(v);
    ZMLX_CHECK(st);
  }
  return ZMLX_OK;
}

static void decode_case(const zmlx_check_opts *o, const int64_t *lens, int64_t B, int64_t T,
                        int hq, int hkv, int hd, const char *partition, uint64_t *rng) {
  char name[128];
  const char *stages = getenv("ZMLX_DECODE_STAGES");
  char tokens[24] = "";
  if (T > 1) snprintf(tokens, sizeof tokens, " T%lld", (long long)T);
  snprintf(name, sizeof name, "B%lld%s Hq%d Hkv%d D%d max ctx %lld%s%s%s%s%s", (long long)B, tokens,
           hq, hkv, hd, (long long)lens[B - 1], partition ? " split " : "",
           partition ? partition : "", getenv("ZMLX_DECODE_GROUP") ? " grouped" : "",
           stages ? " stages " : "", stages ? stages : "");
  int64_t blocks = 1;
  for (int64_t i = 0; i < B; i++) blocks += (lens[i] + 15) / 16;
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 1, .kv_heads = hkv,
                             .head_dim = hd, .block_size = 16, .num_blocks = blocks,
                             .dtype = o->dtype, .device = o->device};
  zmlx_kv_cache *c = NULL;
  int64_t seqs[16];
  const int64_t nq = B * T * hq * hd;
  double *q = malloc(sizeof(double) * (size_t)nq), *want = calloc((size_t)nq, sizeof(double));
  double *terms = calloc((size_t)nq, sizeof(double)), *got = NULL;
  zmlx_array *aq = NULL, *y = NULL;
  int64_t qsh4[4] = {B, T, hq, hd}, qsh3[3] = {B, hq, hd};
  zmlx_status st = q && want && terms ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of memory");
  if (st == ZMLX_OK) st = zmlx_kv_cache_create(&desc, &c);
  if (st == ZMLX_OK) st = fill_cache(o, c, lens, B, hkv, hd, seqs, rng);
  if (st == ZMLX_OK)
    st = zck_random(o->device, o->dtype, T > 1 ? 4 : 3, T > 1 ? qsh4 : qsh3, -2, 2, rng, q, &aq);
  if (partition) setenv("ZMLX_DECODE_PARTITION", partition, 1);
  if (st == ZMLX_OK) st = zmlx_kv_cache_attention(c, 0, aq, seqs, 0, &y);
  if (partition) unsetenv("ZMLX_DECODE_PARTITION");
  if (st == ZMLX_OK) st = zck_download(y, &got);
  if (st == ZMLX_OK) st = reference(c, seqs, lens, B, T, hq, hkv, hd, q, want, terms);
  if (st == ZMLX_OK) {
    int64_t maxl = 1;
    for (int64_t i = 0; i < B; i++) maxl = lens[i] > maxl ? lens[i] : maxl;
    double e, t;
    int ok = zck_within_scaled(got, want, terms, nq, zck_bound_sum(ZCK_TOL_ROW, o->dtype, hd + maxl),
                               &e, &t);
    zck_emit(o, "paged_decode", "fwd", o->dtype, name, e, t, ok);
  } else {
    zck_emit_fail(o, "paged_decode", "fwd", o->dtype, name, st);
  }
  free(q);
  free(want);
  free(terms);
  free(got);
  zmlx_array_release(aq);
  zmlx_array_release(y);
  zmlx_kv_cache_destroy(c);
  zmlx_clear_error();
}

static void decode_cases(const zmlx_check_opts *o, uint64_t *rng) {
  static const int64_t mixed[] = {0, 1, 15, 16, 17, 300};
  static const int64_t longer[] = {17, 4096};
  decode_case(o, mixed, 6, 1, 4, 2, 64, NULL, rng);
  decode_case(o, mixed, 6, 1, 4, 2, 64, "7", rng);
  decode_case(o, mixed, 6, 1, 8, 1, 128, NULL, rng);
  /* 3 tokens a sequence (speculative decoding): causal among them; the
   * contexts of 0 and 1 leave rows with nothing to attend (0) */
  decode_case(o, mixed, 6, 3, 8, 2, 128, NULL, rng);
  /* split by the default rule; 4096 tokens take the long-context geometry */
  decode_case(o, longer, 2, 1, 8, 2, 128, NULL, rng);
  if (!o->quick) {
    decode_case(o, longer, 2, 4, 8, 2, 128, NULL, rng);
    decode_case(o, mixed, 6, 1, 2, 2, 256, NULL, rng);
  }
}

/* The grouped kernel's other stage counts (ZMLX_DECODE_STAGES; 3 is the
 * default): unstaged (0), and 2 and 4 in the full check; not when the
 * caller's environment already picks the stages. */
static void staged_cases(const zmlx_check_opts *o, uint64_t *rng) {
  if (getenv("ZMLX_DECODE_STAGES")) return;
  static const char *const counts[] = {"0", "2", "4"};
  for (int i = 0; i < (o->quick ? 1 : 3); i++) {
    setenv("ZMLX_DECODE_STAGES", counts[i], 1);
    decode_cases(o, rng);
  }
  unsetenv("ZMLX_DECODE_STAGES");
}

/* The device's decode kernels; where SIMD is emulated (PoCL) they are the
 * per-row ones, so the grouped kernel is checked there as well, asked for;
 * then the grouped kernel's other stage counts. */
static zmlx_status check_paged_decode(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 7001u;
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  decode_cases(o, &rng);
  const int ask_group = !info.native_simd && !getenv("ZMLX_DECODE_GROUP");
  if (ask_group) {
    setenv("ZMLX_DECODE_GROUP", "1", 1);
    decode_cases(o, &rng);
  }
  staged_cases(o, &rng);
  if (ask_group) unsetenv("ZMLX_DECODE_GROUP");
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_kv_cache_ops[] = {
    {"paged_decode", check_paged_decode},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct decode_bench {
  zmlx_kv_cache *c;
  zmlx_array *q;
  int64_t seqs[64];
} decode_bench;

static zmlx_status decode_bench_run(void *p) {
  decode_bench *b = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_kv_cache_attention(b->c, 0, b->q, b->seqs, 0, &y);
  zmlx_array_release(y);
  return st;
}

/* One decode step of B sequences of ctx tokens (T query tokens each): 32 q
 * heads, 8 kv heads, head_dim 128, block 16, bf16. Bytes: the K and V the
 * step reads (once). */
static zmlx_status bench_decode_shape(const zmlx_bench_opts *o, const char *name, int64_t B,
                                      int64_t T, int64_t ctx) {
  const int64_t H = 32, HKV = 8, D = 128;
  decode_bench b;
  memset(&b, 0, sizeof b);
  zmlx_kv_cache_desc desc = {.struct_size = sizeof desc, .layers = 1, .kv_heads = (int)HKV,
                             .head_dim = (int)D, .block_size = 16,
                             .num_blocks = B * ctx / 16 + 1, .dtype = ZMLX_BF16,
                             .device = o->device};
  zmlx_status st = zmlx_kv_cache_create(&desc, &b.c);
  int64_t ksh[3] = {ctx, HKV, D}, qsh[4] = {B, T, H, D}, qsh3[3] = {B, H, D};
  zmlx_array *k = NULL;
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 3, ksh, 61, &k);
  for (int64_t i = 0; st == ZMLX_OK && i < B; i++) {
    st = zmlx_kv_cache_add_sequence(b.c, &b.seqs[i]);
    if (st == ZMLX_OK) st = zmlx_kv_cache_extend(b.c, b.seqs[i], ctx);
    if (st == ZMLX_OK) st = zmlx_kv_cache_write(b.c, b.seqs[i], 0, 0, k, k);
  }
  if (st == ZMLX_OK)
    st = zck_bench_random(o->device, ZMLX_BF16, T > 1 ? 4 : 3, T > 1 ? qsh : qsh3, 62, &b.q);
  const double kv_bytes = 2.0 * (double)B * ctx * HKV * D * 2;
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, name, ZMLX_BF16, T > 1 ? 4 : 3, T > 1 ? qsh : qsh3, kv_bytes,
                             decode_bench_run, &b);
  zmlx_array_release(k);
  zmlx_array_release(b.q);
  zmlx_kv_cache_destroy(b.c);
  return st;
}

/* The decode shapes: batch 32 at context 4096, batch 1 at 32768
 * (split-K), batch 64 at 512 (batch 2 at 512 alone on a CPU device). */
static zmlx_status bench_paged_decode(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  if (info.is_cpu) return bench_decode_shape(o, "paged_decode", 2, 1, 512);
  ZMLX_CHECK(bench_decode_shape(o, "paged_decode", 32, 1, 4096));
  ZMLX_CHECK(bench_decode_shape(o, "paged_decode_long", 1, 1, 32768));
  ZMLX_CHECK(bench_decode_shape(o, "paged_decode_b64", 64, 1, 512));
  /* 4 query tokens a sequence (speculative decoding's verify step): the
   * bytes counted once, so GB/s shows how much the repeats cost */
  return bench_decode_shape(o, "paged_decode_t4", 32, 4, 4096);
}

/* A model's decode step over the paged cache: zmlx_lm_decode of B
 * sequences prefilled with ctx tokens each (every call appends a token, so
 * the context grows by the timing's calls: ~70 on a GPU). A dense Llama-shaped
 * bf16 model: 8 layers, dim 2048, 32 heads (8 kv heads of 64), MLP 5632,
 * vocab 32000 (a tiny f32 one on a CPU device). Bytes: the weights and the
 * starting context's K and V that a step reads. */
typedef struct step_bench {
  zmlx_lm *lm;
  zmlx_kv_cache *c;
  zmlx_array *tokens;
  int64_t seqs[32];
} step_bench;

static zmlx_status step_bench_run(void *p) {
  step_bench *b = p;
  zmlx_array *logits = NULL;
  zmlx_status st = zmlx_lm_decode(b->lm, b->c, b->seqs, b->tokens, &logits);
  zmlx_array_release(logits);
  return st;
}

static zmlx_status step_bench_setup(const zmlx_lm_config *cfg, int64_t B, int64_t ctx,
                                    step_bench *b, double *bytes) {
  ZMLX_CHECK(zmlx_lm_create(cfg, &b->lm));
  /* room for the timing's calls (about 1100 on a CPU, fewer on a GPU) */
  ZMLX_CHECK(zmlx_lm_kv_cache_create(b->lm, B * ((ctx + 2048) / 16 + 1), 16, &b->c));
  int32_t ids[1024];
  uint64_t rng = 99;
  for (int64_t i = 0; i < ctx && i < 1024; i++) ids[i] = (int32_t)(zck_uniform(&rng, 0, 1) * (cfg->vocab - 1));
  zmlx_array *prompt = NULL;
  ZMLX_CHECK(zmlx_array_from_host(cfg->device, ZMLX_I32, 1, &ctx, ids, &prompt));
  zmlx_status st = ZMLX_OK;
  for (int64_t i = 0; st == ZMLX_OK && i < B; i++) {
    zmlx_array *logits = NULL;
    st = zmlx_kv_cache_add_sequence(b->c, &b->seqs[i]);
    if (st == ZMLX_OK) st = zmlx_lm_prefill(b->lm, b->c, b->seqs[i], prompt, &logits);
    zmlx_array_release(logits);
  }
  zmlx_array_release(prompt);
  if (st == ZMLX_OK) st = zmlx_array_from_host(cfg->device, ZMLX_I32, 1, &B, ids, &b->tokens);
  int n = 0;
  zmlx_array *const *params = NULL;
  if (st == ZMLX_OK) st = zmlx_lm_parameters(b->lm, &n, &params, NULL);
  *bytes = 0;
  for (int i = 0; i < n; i++) *bytes += (double)zmlx_array_nbytes(params[i]);
  const int hd = cfg->dim / cfg->heads;
  *bytes += 2.0 * cfg->layers * (double)B * ctx * cfg->kv_heads * hd * zmlx_dtype_size(cfg->dtype);
  return st;
}

static zmlx_status bench_decode_step(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  zmlx_lm_config cfg = {.struct_size = sizeof cfg, .vocab = 32000, .dim = 2048, .layers = 8,
                        .heads = 32, .kv_heads = 8, .ffn_dim = 5632, .dtype = ZMLX_BF16,
                        .device = o->device};
  int64_t B = 32, ctx = 512;
  if (info.is_cpu) {
    cfg = (zmlx_lm_config){.struct_size = sizeof cfg, .vocab = 256, .dim = 64, .layers = 2,
                           .heads = 4, .kv_heads = 2, .ffn_dim = 128, .dtype = ZMLX_F32,
                           .device = o->device};
    B = 2;
    ctx = 32;
  }
  step_bench b;
  memset(&b, 0, sizeof b);
  double bytes = 0;
  zmlx_status st = step_bench_setup(&cfg, B, ctx, &b, &bytes);
  int64_t shape[2] = {B, ctx};
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, "decode_step", cfg.dtype, 2, shape, bytes, step_bench_run, &b);
  zmlx_array_release(b.tokens);
  zmlx_kv_cache_destroy(b.c);
  zmlx_lm_destroy(b.lm);
  return st;
}

const zmlx_catalog_bench zck_catalog_kv_cache_bench[] = {
    {"paged_decode", bench_paged_decode},
    {"decode_step", bench_decode_step},
    {0},
};
