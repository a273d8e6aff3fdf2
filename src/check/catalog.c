/* The catalog's table of tables. Each op family defines its check table in
 * its own file. The references are strong so that a static link pulls every
 * family in; the benchmark tables are weak (a family may not have one yet). */
#include "check/catalog.h"

#include <pthread.h>
#include <stddef.h>

#define ZMLX_FAMILY(sym) extern const zmlx_catalog_op sym[];
ZMLX_FAMILY(zck_catalog_softmax_ops)
ZMLX_FAMILY(zck_catalog_cross_entropy_ops)
ZMLX_FAMILY(zck_catalog_norm_ops)
ZMLX_FAMILY(zck_catalog_rope_ops)
ZMLX_FAMILY(zck_catalog_glu_ops)
ZMLX_FAMILY(zck_catalog_dropout_ops)
ZMLX_FAMILY(zck_catalog_activation_ops)
ZMLX_FAMILY(zck_catalog_quant_ops)
ZMLX_FAMILY(zck_catalog_attention_ops)
ZMLX_FAMILY(zck_catalog_matmul_ops)
ZMLX_FAMILY(zck_catalog_kv_cache_ops)
ZMLX_FAMILY(zck_catalog_reduce_ops)
ZMLX_FAMILY(zck_catalog_adamw_ops)
ZMLX_FAMILY(zck_catalog_moe_route_ops)
ZMLX_FAMILY(zck_catalog_moe_ops)
ZMLX_FAMILY(zck_catalog_embedding_ops)
#undef ZMLX_FAMILY
#define ZMLX_BENCHES(sym) extern const zmlx_catalog_bench sym[] __attribute__((weak));
ZMLX_BENCHES(zck_catalog_softmax_bench)
ZMLX_BENCHES(zck_catalog_cross_entropy_bench)
ZMLX_BENCHES(zck_catalog_norm_bench)
ZMLX_BENCHES(zck_catalog_rope_bench)
ZMLX_BENCHES(zck_catalog_glu_bench)
ZMLX_BENCHES(zck_catalog_activation_bench)
ZMLX_BENCHES(zck_catalog_reduce_bench)
ZMLX_BENCHES(zck_catalog_quant_bench)
ZMLX_BENCHES(zck_catalog_attention_bench)
ZMLX_BENCHES(zck_catalog_matmul_bench)
ZMLX_BENCHES(zck_catalog_kv_cache_bench)
ZMLX_BENCHES(zck_catalog_adamw_bench)
ZMLX_BENCHES(zck_catalog_moe_bench)
#undef ZMLX_BENCHES

#define MAX_OPS 128

static const zmlx_catalog_op *all_ops[MAX_OPS + 1];
static const zmlx_catalog_bench *all_benches[MAX_OPS + 1];

static void add_family(const zmlx_catalog_op *family, int *n) {
  for (int i = 0; family && family[i].name && *n < MAX_OPS; i++) all_ops[(*n)++] = &family[i];
}

static void add_benches(const zmlx_catalog_bench *family, int *n) {
  for (int i = 0; family && family[i].name && *n < MAX_OPS; i++) all_benches[(*n)++] = &family[i];
}

static void build_table(void) {
  int n = 0;
  add_family(zck_catalog_softmax_ops, &n);
  add_family(zck_catalog_cross_entropy_ops, &n);
  add_family(zck_catalog_norm_ops, &n);
  add_family(zck_catalog_rope_ops, &n);
  add_family(zck_catalog_glu_ops, &n);
  add_family(zck_catalog_dropout_ops, &n);
  add_family(zck_catalog_activation_ops, &n);
  add_family(zck_catalog_reduce_ops, &n);
  add_family(zck_catalog_quant_ops, &n);
  add_family(zck_catalog_attention_ops, &n);
  add_family(zck_catalog_matmul_ops, &n);
  add_family(zck_catalog_kv_cache_ops, &n);
  add_family(zck_catalog_adamw_ops, &n);
  add_family(zck_catalog_moe_route_ops, &n);
  add_family(zck_catalog_moe_ops, &n);
  add_family(zck_catalog_embedding_ops, &n);
  all_ops[n] = NULL;
  n = 0;
  add_benches(zck_catalog_softmax_bench, &n);
  add_benches(zck_catalog_cross_entropy_bench, &n);
  add_benches(zck_catalog_norm_bench, &n);
  add_benches(zck_catalog_rope_bench, &n);
  add_benches(zck_catalog_glu_bench, &n);
  add_benches(zck_catalog_activation_bench, &n);
  add_benches(zck_catalog_reduce_bench, &n);
  add_benches(zck_catalog_quant_bench, &n);
  add_benches(zck_catalog_attention_bench, &n);
  add_benches(zck_catalog_matmul_bench, &n);
  add_benches(zck_catalog_kv_cache_bench, &n);
  add_benches(zck_catalog_adamw_bench, &n);
  add_benches(zck_catalog_moe_bench, &n);
  all_benches[n] = NULL;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

const zmlx_catalog_op *const *zck_catalog_ops(void) {
  pthread_once(&once, build_table);
  return all_ops;
}

const zmlx_catalog_bench *const *zck_catalog_benches(void) {
  pthread_once(&once, build_table);
  return all_benches;
}
