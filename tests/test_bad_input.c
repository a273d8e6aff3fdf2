/* Bad input to every public function, table-driven (issue 16): each case is
 * one call that must fail with a status (the expected one, or any error
 * where several checks could fire first), leave a message in
 * zmlx_last_error(), leave every output it was given NULL, and neither crash
 * nor leak (the sanitizer build runs this program too). The cases are the
 * X-macro lists below, a family of functions each; the values they pass are
 * the fixture's arrays and objects, valid except for the one thing each case
 * gets wrong. Finer checks of messages (names, shapes) live in each area's
 * own test; this one is about breadth: NULL, wrong dtype, shape mismatch,
 * absurd sizes and values, for the whole header. */
#include "test_support.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ANY = -1 };
#define N ZMLX_ERR_NULL_ARG
#define I ZMLX_ERR_INVALID_ARG
#define S ZMLX_ERR_SHAPE
#define D ZMLX_ERR_DTYPE
#define U ZMLX_ERR_UNSUPPORTED
#define P ZMLX_ERR_PARSE

/* The fixture: valid arrays and objects the cases misuse. */
static struct {
  zmlx_device *dev;
  zmlx_array *f23, *f32x3, *f3, *f4, *f5, *i23, *i3, *u8_23, *b23, *f16_23, *f2x2x3x8, *f2x4x3x8,
      *f1x2x3x8, *f2x2x3x6, *i2x2, *f4x8, *f2x8x8, *f2x8x4, *i8_23, *f0, *f4x2, *i4x2, *f2x4x8, *f3b, *f3c;
  zmlx_kv_cache *kv;
  int64_t seq;
  zmlx_lm *lm;
  zmlx_layer *lin, *attn; /* linear 8 -> 4; attention of dim 16, 2 heads of 8 (the cache's) */
  zmlx_array *f3x16;
  zmlx_adamw *adam;
  zmlx_op *op;
  zmlx_kernel *kern;
} F;

/* Outputs every case may write; checked NULL after the call. */
static zmlx_array *o1, *o2, *o3;
static zmlx_array *olist[64]; /* room for every gradient of the fixture's model */
static zmlx_device *odev;
static zmlx_op *oop;
static zmlx_kernel *okern;
static zmlx_kv_cache *okv;
static zmlx_lm *olm;
static zmlx_layer *olayer;
static zmlx_layer_config olcfg;
static zmlx_adamw *oadam;
static zmlx_custom_function *ocf;
static void *optr;
static char *ostr;
static int oint;
static int64_t oi64, oi64b;
static double odbl;
static zmlx_dtype odt;
static zmlx_backend obk;
static zmlx_lm_config ocfg;
static zmlx_grad_check_report oreport;

static zmlx_status sum_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud, (void)n;
  return zmlx_sum(in[0], NULL, 0, 0, out);
}

static zmlx_status fwd_fn(void *ud, zmlx_array *const *in, int n_in, zmlx_array **out, int n_out) {
  (void)ud, (void)in, (void)n_in, (void)out, (void)n_out;
  return ZMLX_OK;
}

/* shapes the cases pass */
static const int64_t SH23[2] = {2, 3}, SH_NEG[2] = {2, -3}, SH_HUGE[3] = {INT64_MAX / 2, 4, 4},
                     SH9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, SH32[2] = {3, 2}, SH6[1] = {6},
                     SH4[1] = {4}, SH_2M1M1[3] = {-1, -1, 6}, SH_BIG_DIM[1] = {(int64_t)1 << 62};
static const int64_t ST00[2] = {0, 0}, ST23[2] = {2, 3},
                     STEP0[2] = {1, 0};
static const int PERM_DUP[2] = {0, 0}, PERM_OOB[2] = {0, 5}, AX_OOB[1] = {7}, AX_DUP[2] = {1, 1};
static const int ARG_OOB[1] = {3}, ARG_NEG[1] = {-1};
static const float HOST[64];
static const char *NAMES_XY[2] = {"x", "y"}, *NAMES_X[1] = {"x"}, *NAMES_BAD[2] = {"x", "1x"};
static const double PARAMS1[1] = {1.0};
static const int64_t SEQS_BAD[2] = {12345, 0}, SEQS_OK[2] = {0, 0}, SEQS3_BAD[3] = {12345, 0, 1};

/* Option structs with one field wrong. */
static zmlx_attention_opts ATT_OLD = {.struct_size = 4}, ATT_LAYOUT = {.struct_size = sizeof(zmlx_attention_opts), .layout = (zmlx_attention_layout)9};
static zmlx_rope_opts ROPE_ODD = {.rotary_dims = 3}, ROPE_WIDE = {.rotary_dims = 16},
                      ROPE_MODE = {.mode = (zmlx_rope_mode)7}, ROPE_LAYOUT = {.layout = (zmlx_rope_layout)7};
static zmlx_cross_entropy_opts CE_SMOOTH = {.ignore_index = -100, .label_smoothing = 1.5},
                               CE_RED = {.ignore_index = -100, .reduction = (zmlx_ce_reduction)9},
                               CE_NAN = {.ignore_index = -100, .label_smoothing = NAN};
static zmlx_moe_gate_opts GATE_K0 = {.struct_size = sizeof(zmlx_moe_gate_opts), .k = -1},
                          GATE_K9 = {.struct_size = sizeof(zmlx_moe_gate_opts), .k = 9},
                          GATE_SCORING = {.struct_size = sizeof(zmlx_moe_gate_opts), .k = 1, .scoring = (zmlx_moe_scoring)9},
                          GATE_OLD = {.struct_size = 3};
static zmlx_moe_opts MOE_OLD = {.struct_size = 2};
static zmlx_adamw_opts ADAM_BETA = {.struct_size = sizeof(zmlx_adamw_opts), .beta1 = 1.5, .beta2 = 0.9},
                       ADAM_EPS = {.struct_size = sizeof(zmlx_adamw_opts), .beta1 = 0.9, .beta2 = 0.99, .eps = -1},
                       ADAM_OLD = {.struct_size = 1};
static zmlx_kv_cache_desc KV_BLOCK = {.layers = 1, .kv_heads = 1, .head_dim = 8, .block_size = 7, .num_blocks = 4, .dtype = ZMLX_F32},
                          KV_LAYERS = {.layers = 0, .kv_heads = 1, .head_dim = 8, .block_size = 16, .num_blocks = 4, .dtype = ZMLX_F32},
                          KV_DTYPE = {.layers = 1, .kv_heads = 1, .head_dim = 8, .block_size = 16, .num_blocks = 4, .dtype = ZMLX_I32},
                          KV_BLOCKS = {.layers = 1, .kv_heads = 1, .head_dim = 8, .block_size = 16, .num_blocks = 0, .dtype = ZMLX_F32},
                          KV_HEAD = {.layers = 1, .kv_heads = 1, .head_dim = 0, .block_size = 16, .num_blocks = 4, .dtype = ZMLX_F32},
                          KV_OLD = {.struct_size = 5, .layers = 1, .kv_heads = 1, .head_dim = 8, .block_size = 16, .num_blocks = 4};
static zmlx_lm_config LM_HEADS = {.dim = 30, .layers = 1, .heads = 4, .ffn_dim = 16},
                      LM_KV = {.dim = 32, .layers = 1, .heads = 4, .kv_heads = 3, .ffn_dim = 16},
                      LM_LAYERS = {.dim = 32, .layers = 0, .heads = 4, .ffn_dim = 16},
                      LM_TOPK = {.dim = 32, .layers = 1, .heads = 4, .ffn_dim = 16, .experts = 2, .top_k = 3},
                      LM_DTYPE = {.dim = 32, .layers = 1, .heads = 4, .ffn_dim = 16, .dtype = ZMLX_I32},
                      LM_OLD = {.struct_size = 3, .dim = 32, .layers = 1, .heads = 4, .ffn_dim = 16};
static zmlx_layer_config LY_KIND = {.kind = (zmlx_layer_kind)99, .dim = 8},
                         LY_HEADS = {.kind = ZMLX_LAYER_ATTENTION, .dim = 30, .heads = 4},
                         LY_HD = {.kind = ZMLX_LAYER_BLOCK, .dim = 1024, .heads = 2, .ffn_dim = 4},
                         LY_TOPK = {.kind = ZMLX_LAYER_MOE, .dim = 8, .ffn_dim = 4, .experts = 2, .top_k = 3},
                         LY_EXPERTS = {.kind = ZMLX_LAYER_MOE, .dim = 8, .ffn_dim = 4},
                         LY_DTYPE = {.kind = ZMLX_LAYER_RMSNORM, .dim = 8, .dtype = ZMLX_I8},
                         LY_OLD = {.struct_size = 3, .kind = ZMLX_LAYER_RMSNORM, .dim = 8},
                         LY_STD = {.kind = ZMLX_LAYER_LINEAR, .in_features = 4, .out_features = 4, .init_std = NAN},
                         LY_IN = {.kind = ZMLX_LAYER_LINEAR, .in_features = 0, .out_features = 4},
                         LY_VOCAB = {.kind = ZMLX_LAYER_EMBEDDING, .vocab = -1, .dim = 4},
                         LY_EPS = {.kind = ZMLX_LAYER_RMSNORM, .dim = 8, .norm_eps = -1},
                         LY_ROPE = {.kind = ZMLX_LAYER_ATTENTION, .dim = 8, .heads = 2, .rope_base = -5},
                         LY_FFN = {.kind = ZMLX_LAYER_MLP, .dim = 8, .ffn_dim = 0};
static const zmlx_reduce_desc RED_NO_UPDATE = {.init = "0"}, RED_PARSE = {.init = "0", .update = "acc +* x"},
                              RED_NAME = {.init = "0", .update = "acc + zz"};
static const zmlx_map_reduce_desc MR_ZERO = {.n_reduce = 0, .write = "x"},
                                  MR_THREE = {.n_reduce = 3, .write = "x"};
static const zmlx_moe_qweight QW_BITS = {.bits = 5}, QW_NULL = {.bits = 8};
static const zmlx_kernel_desc KD_NONAME = {.source = "x", .n_outputs = 1},
                              KD_BADNAME = {.name = "9k", .source = "out[0] = 1;", .n_outputs = 1, .output_names = (const char *const[]){"out"}},
                              KD_NOSRC = {.name = "k", .n_outputs = 1, .output_names = (const char *const[]){"out"}},
                              KD_NOOUT = {.name = "k", .source = "x", .n_outputs = 0},
                              KD_NEGIN = {.name = "k", .source = "x", .n_inputs = -1, .n_outputs = 1, .output_names = (const char *const[]){"out"}},
                              KD_DUP = {.name = "k", .source = "x", .n_inputs = 1, .input_names = (const char *const[]){"out"}, .n_outputs = 1, .output_names = (const char *const[]){"out"}};

/* ------------------------------------------------------------------ cases */

/* X(expected status or ANY, the call) */
#define CASES_CORE(X)                                                                             \
  X(N, zmlx_dtype_from_name(NULL, &odt))                                                          \
  X(N, zmlx_dtype_from_name("f32", NULL))                                                         \
  X(D, zmlx_dtype_from_name("f33", &odt))                                                         \
  X(D, zmlx_dtype_from_name("", &odt))                                                            \
  X(N, zmlx_backend_from_name(NULL, &obk))                                                        \
  X(N, zmlx_backend_from_name("cuda", NULL))                                                      \
  X(I, zmlx_backend_from_name("vulkan", &obk))                                                    \
  X(N, zmlx_device_count(ZMLX_BACKEND_OPENCL, NULL))                                              \
  X(ANY, zmlx_device_count((zmlx_backend)42, &oint))                                              \
  X(N, zmlx_device_get(ZMLX_BACKEND_OPENCL, 0, NULL))                                             \
  X(ANY, zmlx_device_get(ZMLX_BACKEND_OPENCL, 999, &odev))                                        \
  X(ANY, zmlx_device_get(ZMLX_BACKEND_OPENCL, -1, &odev))                                         \
  X(ANY, zmlx_device_get((zmlx_backend)42, 0, &odev))                                             \
  X(N, zmlx_default_device(NULL))                                                                 \
  X(N, zmlx_device_get_info(F.dev, NULL))                                                         \
  X(N, zmlx_device_gemm_library(F.dev, NULL))                                                     \
  X(N, zmlx_stream_create(F.dev, NULL))                                                           \
  X(N, zmlx_stream_wrap(F.dev, NULL, NULL))                                                       \
  X(N, zmlx_stream_native(NULL, &optr))                                                           \
  X(N, zmlx_current_stream(F.dev, NULL))                                                          \
  X(N, zmlx_cache_get_stats(NULL))                                                                \
  X(N, zmlx_array_retain(NULL))

#define CASES_CREATE(X)                                                                           \
  X(N, zmlx_array_from_host(F.dev, ZMLX_F32, 2, SH23, NULL, &o1))                                 \
  X(N, zmlx_array_from_host(F.dev, ZMLX_F32, 2, NULL, HOST, &o1))                                 \
  X(N, zmlx_array_from_host(F.dev, ZMLX_F32, 2, SH23, HOST, NULL))                                \
  X(ANY, zmlx_array_from_host(F.dev, ZMLX_F32, -1, SH23, HOST, &o1))                              \
  X(ANY, zmlx_array_from_host(F.dev, ZMLX_F32, 9, SH9, HOST, &o1))                                \
  X(ANY, zmlx_array_from_host(F.dev, ZMLX_F32, 2, SH_NEG, HOST, &o1))                             \
  X(ANY, zmlx_array_from_host(F.dev, (zmlx_dtype)77, 2, SH23, HOST, &o1))                         \
  X(ANY, zmlx_array_empty(F.dev, ZMLX_F32, 3, SH_HUGE, &o1))                                      \
  X(ANY, zmlx_array_empty(F.dev, ZMLX_F32, 1, SH_BIG_DIM, &o1))                                   \
  X(ANY, zmlx_array_empty(F.dev, ZMLX_F32, 2, SH_NEG, &o1))                                       \
  X(ANY, zmlx_array_empty(F.dev, (zmlx_dtype)77, 2, SH23, &o1))                                   \
  X(N, zmlx_array_empty(F.dev, ZMLX_F32, 2, NULL, &o1))                                           \
  X(N, zmlx_array_empty(F.dev, ZMLX_F32, 2, SH23, NULL))                                          \
  X(ANY, zmlx_array_empty(F.dev, ZMLX_F32, 9, SH9, &o1))                                          \
  X(ANY, zmlx_array_zeros(F.dev, ZMLX_F32, 3, SH_HUGE, &o1))                                      \
  X(ANY, zmlx_array_zeros(F.dev, ZMLX_F32, 2, SH_NEG, &o1))                                       \
  X(ANY, zmlx_array_zeros(F.dev, (zmlx_dtype)77, 2, SH23, &o1))                                   \
  X(N, zmlx_array_zeros(F.dev, ZMLX_F32, 2, SH23, NULL))                                          \
  X(ANY, zmlx_array_full(F.dev, ZMLX_F32, 3, SH_HUGE, 1.0, &o1))                                  \
  X(ANY, zmlx_array_full(F.dev, ZMLX_F32, 2, SH_NEG, 1.0, &o1))                                   \
  X(N, zmlx_array_full(F.dev, ZMLX_F32, 2, SH23, 1.0, NULL))                                      \
  X(ANY, zmlx_array_full(F.dev, (zmlx_dtype)77, 2, SH23, 1.0, &o1))                               \
  X(ANY, zmlx_array_arange(F.dev, ZMLX_F32, 0, 1, -5, &o1))                                       \
  X(N, zmlx_array_arange(F.dev, ZMLX_F32, 0, 1, 5, NULL))                                         \
  X(ANY, zmlx_array_arange(F.dev, (zmlx_dtype)77, 0, 1, 5, &o1))                                  \
  X(ANY, zmlx_array_arange(F.dev, ZMLX_F32, 0, 1, INT64_MAX, &o1))                                \
  X(ANY, zmlx_array_random_uniform(F.dev, ZMLX_I32, 2, SH23, 1, 0, 1, &o1))                       \
  X(I, zmlx_array_random_uniform(F.dev, ZMLX_F32, 2, SH23, 1, 1, 0, &o1))                         \
  X(I, zmlx_array_random_uniform(F.dev, ZMLX_F32, 2, SH23, 1, 0, INFINITY, &o1))                       \
  X(ANY, zmlx_array_random_uniform(F.dev, ZMLX_F32, 2, SH_NEG, 1, 0, 1, &o1))                     \
  X(N, zmlx_array_random_uniform(F.dev, ZMLX_F32, 2, SH23, 1, 0, 1, NULL))                        \
  X(ANY, zmlx_array_random_normal(F.dev, ZMLX_I32, 2, SH23, 1, 0, 1, &o1))                        \
  X(I, zmlx_array_random_normal(F.dev, ZMLX_F32, 2, SH23, 1, 0, -1, &o1))                         \
  X(I, zmlx_array_random_normal(F.dev, ZMLX_F32, 2, SH23, 1, NAN, 1, &o1))                       \
  X(N, zmlx_array_random_normal(F.dev, ZMLX_F32, 2, SH23, 1, 0, 1, NULL))

#define CASES_VIEWS(X)                                                                            \
  X(N, zmlx_array_to_host(NULL, optr, 24))                                                        \
  X(N, zmlx_array_to_host(F.f23, NULL, 24))                                                       \
  X(I, zmlx_array_to_host(F.f23, &odbl, 8))                                                       \
  X(N, zmlx_array_item(NULL, 0, &odbl))                                                           \
  X(N, zmlx_array_item(F.f23, 0, NULL))                                                           \
  X(I, zmlx_array_item(F.f23, 6, &odbl))                                                          \
  X(I, zmlx_array_item(F.f23, -1, &odbl))                                                         \
  X(N, zmlx_array_reshape(NULL, 2, SH32, &o1))                                                    \
  X(N, zmlx_array_reshape(F.f23, 2, SH32, NULL))                                                  \
  X(ANY, zmlx_array_reshape(F.f23, 1, SH4, &o1))                                                  \
  X(ANY, zmlx_array_reshape(F.f23, 3, SH_2M1M1, &o1))                                             \
  X(ANY, zmlx_array_reshape(F.f23, 2, SH_NEG, &o1))                                               \
  X(ANY, zmlx_array_reshape(F.f23, -1, SH32, &o1))                                                \
  X(N, zmlx_array_transpose(NULL, NULL, &o1))                                                     \
  X(N, zmlx_array_transpose(F.f23, NULL, NULL))                                                   \
  X(I, zmlx_array_transpose(F.f23, PERM_DUP, &o1))                                                \
  X(I, zmlx_array_transpose(F.f23, PERM_OOB, &o1))                                                \
  X(N, zmlx_array_slice(NULL, ST00, ST23, NULL, &o1))                                             \
  X(N, zmlx_array_slice(F.f23, ST00, ST23, NULL, NULL))                                           \
  X(ANY, zmlx_array_slice(F.f23, ST00, ST23, STEP0, &o1))                                         \
  X(N, zmlx_array_contiguous(NULL, &o1))                                                          \
  X(N, zmlx_array_contiguous(F.f23, NULL))                                                        \
  X(N, zmlx_array_astype(NULL, ZMLX_F16, &o1))                                                    \
  X(N, zmlx_array_astype(F.f23, ZMLX_F16, NULL))                                                  \
  X(ANY, zmlx_array_astype(F.f23, (zmlx_dtype)77, &o1))                                           \
  X(N, zmlx_array_to_device(NULL, F.dev, &o1))                                                    \
  X(N, zmlx_array_to_device(F.f23, F.dev, NULL))                                                  \
  X(N, zmlx_array_to_dlpack(NULL, &optr))                                                         \
  X(N, zmlx_array_to_dlpack(F.f23, NULL))                                                         \
  X(N, zmlx_array_to_dlpack_on(NULL, NULL, &optr))                                                \
  X(N, zmlx_array_to_dlpack_on(F.f23, NULL, NULL))                                                \
  X(N, zmlx_array_from_dlpack(NULL, F.dev, &o1))                                                  \
  X(N, zmlx_reshape(NULL, 2, SH32, &o1))                                                          \
  X(ANY, zmlx_reshape(F.f23, 1, SH4, &o1))                                                        \
  X(ANY, zmlx_reshape(F.f23, 3, SH_2M1M1, &o1))                                                   \
  X(N, zmlx_reshape(F.f23, 2, SH32, NULL))                                                        \
  X(N, zmlx_transpose(NULL, NULL, &o1))                                                           \
  X(I, zmlx_transpose(F.f23, PERM_DUP, &o1))                                                      \
  X(I, zmlx_transpose(F.f23, PERM_OOB, &o1))                                                      \
  X(N, zmlx_slice(NULL, ST00, ST23, NULL, &o1))                                                   \
  X(ANY, zmlx_slice(F.f23, ST00, ST23, STEP0, &o1))                                               \
  X(N, zmlx_concat(NULL, 2, 0, &o1))                                                              \
  X(ANY, zmlx_concat((zmlx_array *const[]){F.f23, F.f32x3}, 0, 0, &o1))                           \
  X(S, zmlx_concat((zmlx_array *const[]){F.f23, F.f2x8x4}, 2, 0, &o1))                            \
  X(ANY, zmlx_concat((zmlx_array *const[]){F.f23, F.f23}, 2, 5, &o1))                             \
  X(ANY, zmlx_concat((zmlx_array *const[]){F.f23, F.i23}, 2, 0, &o1))                             \
  X(N, zmlx_concat((zmlx_array *const[]){F.f23, NULL}, 2, 0, &o1))                                \
  X(N, zmlx_broadcast_to(NULL, 2, SH23, &o1))                                                     \
  X(ANY, zmlx_broadcast_to(F.f23, 2, SH32, &o1))                                                  \
  X(ANY, zmlx_broadcast_to(F.f23, 1, SH6, &o1))                                                   \
  X(N, zmlx_astype(NULL, ZMLX_F16, &o1))                                                          \
  X(ANY, zmlx_astype(F.f23, (zmlx_dtype)77, &o1))                                                 \
  X(N, zmlx_stop_gradient(NULL, &o1))                                                             \
  X(N, zmlx_stop_gradient(F.f23, NULL))

#define CASES_ARITH(X)                                                                            \
  X(N, zmlx_add(NULL, F.f23, &o1)) X(N, zmlx_add(F.f23, NULL, &o1)) X(N, zmlx_add(F.f23, F.f23, NULL)) \
  X(S, zmlx_add(F.f23, F.f32x3, &o1)) X(S, zmlx_add(F.f23, F.f4, &o1))                             \
  X(N, zmlx_sub(NULL, F.f23, &o1)) X(N, zmlx_sub(F.f23, NULL, &o1)) X(S, zmlx_sub(F.f23, F.f32x3, &o1)) \
  X(N, zmlx_mul(NULL, F.f23, &o1)) X(N, zmlx_mul(F.f23, NULL, &o1)) X(S, zmlx_mul(F.f23, F.f32x3, &o1)) \
  X(N, zmlx_div(NULL, F.f23, &o1)) X(N, zmlx_div(F.f23, NULL, &o1)) X(S, zmlx_div(F.f23, F.f32x3, &o1)) \
  X(N, zmlx_sum(NULL, NULL, 0, 0, &o1)) X(N, zmlx_sum(F.f23, NULL, 0, 0, NULL))                    \
  X(ANY, zmlx_sum(F.f23, AX_OOB, 1, 0, &o1)) X(ANY, zmlx_sum(F.f23, AX_DUP, 2, 0, &o1))            \
  X(ANY, zmlx_sum(F.f23, AX_OOB, -1, 0, &o1))                                                     \
  X(N, zmlx_mean(NULL, NULL, 0, 0, &o1)) X(ANY, zmlx_mean(F.f23, AX_OOB, 1, 0, &o1))               \
  X(ANY, zmlx_mean(F.f23, AX_DUP, 2, 0, &o1))                                                     \
  X(N, zmlx_matmul(NULL, F.f32x3, &o1)) X(N, zmlx_matmul(F.f23, NULL, &o1))                        \
  X(N, zmlx_matmul(F.f23, F.f32x3, NULL)) X(S, zmlx_matmul(F.f23, F.f23, &o1))                     \
  X(ANY, zmlx_matmul(F.f23, F.i23, &o1)) X(ANY, zmlx_matmul(F.f3, F.f4, &o1))                      \
  X(ANY, zmlx_matmul(F.i23, F.i23, &o1))

#define UNARY3(X, fn) X(N, fn(NULL, &o1)) X(N, fn(F.f23, NULL)) X(ANY, fn(F.i23, &o1))
#define CASES_UNARY(X)                                                                            \
  UNARY3(X, zmlx_exp) UNARY3(X, zmlx_log) UNARY3(X, zmlx_tanh) UNARY3(X, zmlx_sigmoid)             \
  UNARY3(X, zmlx_relu) UNARY3(X, zmlx_silu) UNARY3(X, zmlx_gelu_tanh) UNARY3(X, zmlx_gelu)         \
  UNARY3(X, zmlx_softplus) UNARY3(X, zmlx_mish) UNARY3(X, zmlx_softmax)                            \
  UNARY3(X, zmlx_log_softmax) UNARY3(X, zmlx_logsumexp) UNARY3(X, zmlx_swiglu_split)               \
  X(ANY, zmlx_swiglu_split(F.f23, &o1)) X(ANY, zmlx_geglu_split(F.f23, 0, &o1))                   \
  X(N, zmlx_geglu_split(NULL, 0, &o1)) X(N, zmlx_geglu_split(F.f4, 1, NULL))                      \
  X(ANY, zmlx_geglu_split(F.i23, 0, &o1))                                                         \
  X(N, zmlx_elu(NULL, 1.0, &o1)) X(N, zmlx_elu(F.f23, 1.0, NULL)) X(ANY, zmlx_elu(F.i23, 1.0, &o1)) \
  X(ANY, zmlx_softmax(F.f0, &o1))

#define CASES_GLU(X)                                                                              \
  X(N, zmlx_swiglu(NULL, F.f23, &o1)) X(N, zmlx_swiglu(F.f23, NULL, &o1))                          \
  X(N, zmlx_swiglu(F.f23, F.f23, NULL)) X(S, zmlx_swiglu(F.f23, F.f32x3, &o1))                     \
  X(ANY, zmlx_swiglu(F.i23, F.i23, &o1)) X(ANY, zmlx_swiglu(F.f23, F.f16_23, &o1))                 \
  X(N, zmlx_geglu(NULL, F.f23, 0, &o1)) X(N, zmlx_geglu(F.f23, NULL, 0, &o1))                      \
  X(S, zmlx_geglu(F.f23, F.f32x3, 1, &o1)) X(ANY, zmlx_geglu(F.i23, F.i23, 0, &o1))                \
  X(N, zmlx_bias_gelu(NULL, F.f3, 0, &o1)) X(N, zmlx_bias_gelu(F.f23, NULL, 0, &o1))               \
  X(S, zmlx_bias_gelu(F.f23, F.f4, 0, &o1)) X(ANY, zmlx_bias_gelu(F.i23, F.i3, 0, &o1))            \
  X(N, zmlx_bias_gelu(F.f23, F.f3, 0, NULL))                                                      \
  X(N, zmlx_bias_silu(NULL, F.f3, &o1)) X(N, zmlx_bias_silu(F.f23, NULL, &o1))                     \
  X(S, zmlx_bias_silu(F.f23, F.f4, &o1)) X(ANY, zmlx_bias_silu(F.i23, F.i3, &o1))                  \
  X(N, zmlx_bias_swiglu(NULL, F.f4, &o1)) X(N, zmlx_bias_swiglu(F.f4x8, NULL, &o1))                \
  X(S, zmlx_bias_swiglu(F.f4x8, F.f3, &o1)) X(ANY, zmlx_bias_swiglu(F.f23, F.f3, &o1))             \
  X(N, zmlx_dropout(NULL, 0.5, 1, &o1)) X(N, zmlx_dropout(F.f23, 0.5, 1, NULL))                    \
  X(I, zmlx_dropout(F.f23, -0.1, 1, &o1)) X(I, zmlx_dropout(F.f23, 1.5, 1, &o1))                   \
  X(I, zmlx_dropout(F.f23, NAN, 1, &o1)) X(ANY, zmlx_dropout(F.i23, 0.5, 1, &o1))

#define CASES_NORM(X)                                                                             \
  X(N, zmlx_rmsnorm(NULL, F.f3, 1e-6, &o1)) X(N, zmlx_rmsnorm(F.f23, F.f3, 1e-6, NULL))            \
  X(S, zmlx_rmsnorm(F.f23, F.f4, 1e-6, &o1)) X(ANY, zmlx_rmsnorm(F.i23, NULL, 1e-6, &o1))          \
  X(ANY, zmlx_rmsnorm(F.f23, F.f3, -1.0, &o1)) X(ANY, zmlx_rmsnorm(F.f23, F.f3, NAN, &o1))         \
  X(ANY, zmlx_rmsnorm(F.f23, F.i3, 1e-6, &o1))                                                    \
  X(N, zmlx_layernorm(NULL, NULL, NULL, 1e-5, &o1)) X(N, zmlx_layernorm(F.f23, NULL, NULL, 1e-5, NULL)) \
  X(S, zmlx_layernorm(F.f23, F.f4, NULL, 1e-5, &o1)) X(S, zmlx_layernorm(F.f23, F.f3, F.f4, 1e-5, &o1)) \
  X(ANY, zmlx_layernorm(F.i23, NULL, NULL, 1e-5, &o1)) X(ANY, zmlx_layernorm(F.f23, NULL, NULL, -1, &o1)) \
  X(N, zmlx_add_rmsnorm(NULL, F.f23, NULL, 1e-6, &o1, &o2))                                       \
  X(N, zmlx_add_rmsnorm(F.f23, NULL, NULL, 1e-6, &o1, &o2))                                       \
  X(N, zmlx_add_rmsnorm(F.f23, F.f23, NULL, 1e-6, NULL, &o2))                                     \
  X(S, zmlx_add_rmsnorm(F.f23, F.f32x3, NULL, 1e-6, &o1, &o2))                                    \
  X(S, zmlx_add_rmsnorm(F.f23, F.f23, F.f4, 1e-6, &o1, &o2))                                      \
  X(ANY, zmlx_add_rmsnorm(F.f23, F.f16_23, NULL, 1e-6, &o1, &o2))                                 \
  X(N, zmlx_add_layernorm(NULL, F.f23, NULL, NULL, 1e-5, &o1, &o2))                               \
  X(N, zmlx_add_layernorm(F.f23, NULL, NULL, NULL, 1e-5, &o1, &o2))                               \
  X(S, zmlx_add_layernorm(F.f23, F.f32x3, NULL, NULL, 1e-5, &o1, &o2))                            \
  X(S, zmlx_add_layernorm(F.f23, F.f23, F.f3, F.f4, 1e-5, &o1, &o2))                              \
  X(N, zmlx_add_layernorm(F.f23, F.f23, NULL, NULL, 1e-5, &o1, NULL))                             \
  X(N, zmlx_softmax_masked(NULL, NULL, 1, 0, &o1)) X(N, zmlx_softmax_masked(F.f23, NULL, 1, 0, NULL)) \
  X(S, zmlx_softmax_masked(F.f23, F.f32x3, 1, 0, &o1))                                            \
  X(ANY, zmlx_softmax_masked(F.f23, F.i23, 1, 0, &o1))                                            \
  X(ANY, zmlx_softmax_masked(F.i23, NULL, 1, 0, &o1))                                             \
  X(ANY, zmlx_softmax_masked(F.f23, NULL, NAN, 0, &o1))

#define CASES_LOSS(X)                                                                             \
  X(N, zmlx_cross_entropy(NULL, F.i3, NULL, &o1, NULL)) X(N, zmlx_cross_entropy(F.f32x3, NULL, NULL, &o1, NULL)) \
  X(N, zmlx_cross_entropy(F.f32x3, F.i3, NULL, NULL, NULL))                                       \
  X(ANY, zmlx_cross_entropy(F.f32x3, F.f3, NULL, &o1, NULL))                                      \
  X(S, zmlx_cross_entropy(F.f32x3, F.i2x2, NULL, &o1, NULL))                                      \
  X(S, zmlx_cross_entropy(F.f23, F.i3, NULL, &o1, NULL))                                          \
  X(I, zmlx_cross_entropy(F.f32x3, F.i3, &CE_SMOOTH, &o1, NULL))                                  \
  X(I, zmlx_cross_entropy(F.f32x3, F.i3, &CE_NAN, &o1, NULL))                                     \
  X(I, zmlx_cross_entropy(F.f32x3, F.i3, &CE_RED, &o1, NULL))                                     \
  X(ANY, zmlx_cross_entropy(F.i23, F.i3, NULL, &o1, NULL))                                        \
  X(N, zmlx_embedding(NULL, F.i3, &o1)) X(N, zmlx_embedding(F.f23, NULL, &o1))                     \
  X(N, zmlx_embedding(F.f23, F.i3, NULL)) X(D, zmlx_embedding(F.f23, F.f3, &o1))                   \
  X(S, zmlx_embedding(F.f3, F.i3, &o1)) X(ANY, zmlx_embedding(F.i23, F.i3, &o1))

#define CASES_ATTN(X)                                                                             \
  X(N, zmlx_attention(NULL, F.f2x2x3x8, F.f2x2x3x8, NULL, &o1, NULL))                             \
  X(N, zmlx_attention(F.f2x2x3x8, NULL, F.f2x2x3x8, NULL, &o1, NULL))                             \
  X(N, zmlx_attention(F.f2x2x3x8, F.f2x2x3x8, NULL, NULL, &o1, NULL))                             \
  X(N, zmlx_attention(F.f2x2x3x8, F.f2x2x3x8, F.f2x2x3x8, NULL, NULL, NULL))                      \
  X(S, zmlx_attention(F.f23, F.f23, F.f23, NULL, &o1, NULL))                                      \
  X(S, zmlx_attention(F.f2x2x3x8, F.f2x2x3x6, F.f2x2x3x6, NULL, &o1, NULL))                       \
  X(S, zmlx_attention(F.f2x2x3x8, F.f2x4x3x8, F.f2x4x3x8, NULL, &o1, NULL))                       \
  X(S, zmlx_attention(F.f2x2x3x8, F.f1x2x3x8, F.f1x2x3x8, NULL, &o1, NULL))                       \
  X(S, zmlx_attention(F.f2x2x3x8, F.f2x2x3x8, F.f2x4x3x8, NULL, &o1, NULL))                       \
  X(ANY, zmlx_attention(F.f2x2x3x8, F.f2x2x3x8, F.f2x2x3x8, &ATT_OLD, &o1, NULL))                 \
  X(ANY, zmlx_attention(F.f2x2x3x8, F.f2x2x3x8, F.f2x2x3x8, &ATT_LAYOUT, &o1, NULL))              \
  X(N, zmlx_rope(NULL, NULL, &o1)) X(N, zmlx_rope(F.f2x2x3x8, NULL, NULL))                         \
  X(S, zmlx_rope(F.f23, NULL, &o1)) X(I, zmlx_rope(F.f2x2x3x8, &ROPE_ODD, &o1))                    \
  X(S, zmlx_rope(F.f2x2x3x8, &ROPE_WIDE, &o1)) X(ANY, zmlx_rope(F.f2x2x3x8, &ROPE_MODE, &o1))      \
  X(ANY, zmlx_rope(F.f2x2x3x8, &ROPE_LAYOUT, &o1)) X(ANY, zmlx_rope(F.i23, NULL, &o1))             \
  X(N, zmlx_rope_qk(NULL, F.f2x2x3x8, NULL, &o1, &o2)) X(N, zmlx_rope_qk(F.f2x2x3x8, NULL, NULL, &o1, &o2)) \
  X(N, zmlx_rope_qk(F.f2x2x3x8, F.f2x2x3x8, NULL, NULL, &o2))                                     \
  X(S, zmlx_rope_qk(F.f2x2x3x8, F.f2x2x3x6, NULL, &o1, &o2))

#define CASES_REDUCE(X)                                                                           \
  X(N, zmlx_reduce_last(NULL, ZMLX_REDUCE_SUM, 0, 0, &o1))                                        \
  X(N, zmlx_reduce_last(F.f23, ZMLX_REDUCE_SUM, 0, 0, NULL))                                      \
  X(I, zmlx_reduce_last(F.f23, (zmlx_reduce_kind)42, 0, 0, &o1))                                  \
  X(ANY, zmlx_reduce_last(F.f23, ZMLX_REDUCE_VAR, -1, 0, &o1))                                    \
  X(ANY, zmlx_reduce_last(F.u8_23, ZMLX_REDUCE_SUM, 0, 0, &o1))                                   \
  X(N, zmlx_argmax_last(NULL, 0, &o1)) X(N, zmlx_argmax_last(F.f23, 0, NULL))                      \
  X(N, zmlx_argmin_last(NULL, 0, &o1)) X(N, zmlx_argmin_last(F.f23, 0, NULL))                      \
  X(N, zmlx_topk(NULL, 1, &o1, &o2)) X(I, zmlx_topk(F.f23, 0, &o1, &o2))                           \
  X(S, zmlx_topk(F.f23, 4, &o1, &o2)) X(N, zmlx_topk(F.f23, 1, NULL, NULL))                         \
  X(I, zmlx_topk(F.f23, 65, &o1, &o2)) X(ANY, zmlx_topk(F.b23, 1, &o1, &o2))

#define CASES_QUANT(X)                                                                            \
  X(N, zmlx_quantize_int8_rows(NULL, ZMLX_F32, &o1, &o2))                                         \
  X(N, zmlx_quantize_int8_rows(F.f23, ZMLX_F32, NULL, &o2))                                       \
  X(N, zmlx_quantize_int8_rows(F.f23, ZMLX_F32, &o1, NULL))                                       \
  X(D, zmlx_quantize_int8_rows(F.f23, ZMLX_I32, &o1, &o2))                                        \
  X(D, zmlx_quantize_int8_rows(F.i23, ZMLX_F32, &o1, &o2))                                        \
  X(N, zmlx_dequantize_int8_rows(NULL, F.f23, ZMLX_F32, ZMLX_QUANT_NONE, &o1))                    \
  X(N, zmlx_dequantize_int8_rows(F.i8_23, NULL, ZMLX_F32, ZMLX_QUANT_NONE, &o1))                  \
  X(N, zmlx_dequantize_int8_rows(F.i8_23, F.f3, ZMLX_F32, ZMLX_QUANT_NONE, NULL))                 \
  X(D, zmlx_dequantize_int8_rows(F.f23, F.f3, ZMLX_F32, ZMLX_QUANT_NONE, &o1))                    \
  X(S, zmlx_dequantize_int8_rows(F.i8_23, F.f4, ZMLX_F32, ZMLX_QUANT_NONE, &o1))                  \
  X(ANY, zmlx_dequantize_int8_rows(F.i8_23, F.f3, ZMLX_I32, ZMLX_QUANT_NONE, &o1))                \
  X(ANY, zmlx_dequantize_int8_rows(F.i8_23, F.f3, ZMLX_F32, (zmlx_quant_act)9, &o1))              \
  X(N, zmlx_quantize_int4(NULL, 32, ZMLX_F32, &o1, &o2, &o3))                                     \
  X(ANY, zmlx_quantize_int4(F.f2x8x8, 0, ZMLX_F32, &o1, &o2, &o3))                                \
  X(ANY, zmlx_quantize_int4(F.f2x8x8, 33, ZMLX_F32, &o1, &o2, &o3))                               \
  X(ANY, zmlx_quantize_int4(F.f2x8x8, 32, ZMLX_F32, &o1, &o2, &o3))                               \
  X(ANY, zmlx_quantize_int4(F.f2x8x8, 32, ZMLX_I32, &o1, &o2, &o3))                               \
  X(N, zmlx_quantize_int4(F.f2x8x8, 32, ZMLX_F32, NULL, &o2, &o3))                                \
  X(N, zmlx_dequantize_int4(NULL, F.f23, F.f23, 32, ZMLX_F32, ZMLX_QUANT_NONE, &o1))              \
  X(ANY, zmlx_dequantize_int4(F.f23, F.f23, F.f23, 32, ZMLX_F32, ZMLX_QUANT_NONE, &o1))           \
  X(ANY, zmlx_dequantize_int4(F.u8_23, F.f23, F.f23, 0, ZMLX_F32, ZMLX_QUANT_NONE, &o1))          \
  X(ANY, zmlx_dequantize_int4(F.u8_23, F.f23, NULL, 32, ZMLX_F32, ZMLX_QUANT_NONE, &o1))          \
  X(N, zmlx_dequantize_int4(F.u8_23, F.f23, F.f23, 32, ZMLX_F32, ZMLX_QUANT_NONE, NULL))

#define CASES_MOE(X)                                                                              \
  X(N, zmlx_moe_gate(NULL, NULL, &o1, &o2)) X(N, zmlx_moe_gate(F.f23, NULL, NULL, &o2))            \
  X(N, zmlx_moe_gate(F.f23, NULL, &o1, NULL)) X(I, zmlx_moe_gate(F.f23, &GATE_K0, &o1, &o2))       \
  X(I, zmlx_moe_gate(F.f23, &GATE_K9, &o1, &o2)) X(I, zmlx_moe_gate(F.f23, &GATE_SCORING, &o1, &o2)) \
  X(ANY, zmlx_moe_gate(F.f23, &GATE_OLD, &o1, &o2)) X(ANY, zmlx_moe_gate(F.i23, NULL, &o1, &o2))   \
  X(ANY, zmlx_moe_gate(F.f3, NULL, &o1, &o2))                                                     \
  X(N, zmlx_moe_dispatch(NULL, 4, &o1, &o2, &o3)) X(I, zmlx_moe_dispatch(F.i23, 0, &o1, &o2, &o3)) \
  X(ANY, zmlx_moe_dispatch(F.f23, 4, &o1, &o2, &o3)) X(N, zmlx_moe_dispatch(F.i23, 4, NULL, &o2, &o3)) \
  X(N, zmlx_moe_dispatch(F.i23, 4, &o1, &o2, NULL))                                               \
  X(N, zmlx_moe_permute(NULL, F.i3, F.i3, 1, &o1)) X(N, zmlx_moe_permute(F.f23, NULL, F.i3, 1, &o1)) \
  X(ANY, zmlx_moe_permute(F.f23, F.i3, F.i3, 0, &o1)) X(ANY, zmlx_moe_permute(F.f23, F.f3, F.i3, 1, &o1)) \
  X(N, zmlx_moe_combine(NULL, F.f23, F.i3, F.i3, &o1)) X(N, zmlx_moe_combine(F.f23, NULL, F.i3, F.i3, &o1)) \
  X(ANY, zmlx_moe_combine(F.f23, F.f23, F.f3, F.i3, &o1))                                         \
  X(N, zmlx_moe_experts(NULL, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))                  \
  X(N, zmlx_moe_experts(F.f4x8, NULL, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))                 \
  X(N, zmlx_moe_experts(F.f4x8, F.f4x2, NULL, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))                 \
  X(N, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, NULL, F.f2x4x8, F.f2x8x4, &o1))                   \
  X(N, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, F.f2x4x8, NULL, F.f2x8x4, &o1))                   \
  X(N, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, NULL, &o1))                   \
  X(N, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, NULL))              \
  X(S, zmlx_moe_experts(F.f4x8, F.f23, F.i23, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))                 \
  X(S, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, F.f2x8x4, F.f2x8x4, F.f2x8x4, &o1))               \
  X(S, zmlx_moe_experts(F.f4x8, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x4x8, &o1))               \
  X(S, zmlx_moe_experts(F.f23, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))                \
  X(ANY, zmlx_moe_experts(F.f4x8, F.f4x2, F.f4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))             \
  X(ANY, zmlx_moe_experts(F.i4x2, F.f4x2, F.i4x2, F.f2x4x8, F.f2x4x8, F.f2x8x4, &o1))             \
  X(N, zmlx_moe_experts_quantized(F.f4x8, F.f23, F.i23, NULL, &QW_NULL, &QW_NULL, &o1))           \
  X(ANY, zmlx_moe_experts_quantized(F.f4x8, F.f23, F.i23, &QW_NULL, &QW_NULL, &QW_NULL, &o1))     \
  X(ANY, zmlx_moe_experts_quantized(F.f4x8, F.f23, F.i23, &QW_BITS, &QW_BITS, &QW_BITS, &o1))     \
  X(N, zmlx_moe(NULL, F.f23, F.f2x8x4, F.f2x8x4, F.f2x8x8, NULL, &o1))                            \
  X(N, zmlx_moe(F.f4x8, NULL, F.f2x8x4, F.f2x8x4, F.f2x8x8, NULL, &o1))                           \
  X(ANY, zmlx_moe(F.f4x8, F.f23, F.f2x8x4, F.f2x8x4, F.f2x8x8, &MOE_OLD, &o1))                    \
  X(S, zmlx_moe(F.f4x8, F.f23, F.f2x8x4, F.f2x8x4, F.f2x8x8, NULL, &o1))                          \
  X(N, zmlx_moe(F.f4x8, F.f2x8x4, F.f2x8x4, F.f2x8x4, F.f2x8x8, NULL, NULL))

#define CASES_KERNEL(X)                                                                           \
  X(N, zmlx_kernel_create(NULL, &okern)) X(N, zmlx_kernel_create(&KD_NOSRC, NULL))                 \
  X(ANY, zmlx_kernel_create(&KD_NONAME, &okern)) X(ANY, zmlx_kernel_create(&KD_BADNAME, &okern))   \
  X(ANY, zmlx_kernel_create(&KD_NOSRC, &okern)) X(ANY, zmlx_kernel_create(&KD_NOOUT, &okern))      \
  X(ANY, zmlx_kernel_create(&KD_NEGIN, &okern)) X(ANY, zmlx_kernel_create(&KD_DUP, &okern))        \
  X(N, zmlx_kernel_launch(NULL, NULL)) X(N, zmlx_kernel_launch(F.kern, NULL))                      \
  X(ANY, zmlx_kernel_launch(F.kern, &(zmlx_kernel_call){.n_inputs = 2, .n_outputs = 1}))           \
  X(ANY, zmlx_kernel_launch(F.kern, &(zmlx_kernel_call){.n_inputs = 1, .n_outputs = 1,             \
        .inputs = (zmlx_array *const[]){NULL}, .outputs = olist}))                                \
  X(ANY, zmlx_kernel_launch(F.kern, &(zmlx_kernel_call){.n_inputs = 1, .n_outputs = 1,             \
        .inputs = (zmlx_array *const[]){F.f23}, .outputs = olist}))                               \
  X(N, zmlx_kernel_apply(NULL, (zmlx_array *const[]){F.f23}, NULL, olist))                        \
  X(N, zmlx_kernel_apply(F.kern, NULL, NULL, olist))                                              \
  X(N, zmlx_kernel_source(NULL, ZMLX_BACKEND_OPENCL, NULL, NULL, &ostr))                          \
  X(N, zmlx_kernel_source(F.kern, ZMLX_BACKEND_OPENCL, NULL, NULL, NULL))                         \
  X(N, zmlx_elementwise(NULL, NAMES_X, 1, NULL, 0, &oop))                                         \
  X(P, zmlx_elementwise("x +* 1", NAMES_X, 1, NULL, 0, &oop))                                     \
  X(ANY, zmlx_elementwise("x + zz", NAMES_X, 1, NULL, 0, &oop))                                   \
  X(ANY, zmlx_elementwise("x + y", NAMES_BAD, 2, NULL, 0, &oop))                                  \
  X(ANY, zmlx_elementwise("x", NAMES_X, -1, NULL, 0, &oop))                                       \
  X(N, zmlx_elementwise("x", NAMES_X, 1, NULL, 0, NULL))                                          \
  X(P, zmlx_elementwise("", NAMES_X, 1, NULL, 0, &oop))                                           \
  X(N, zmlx_op_call(NULL, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL, NULL, &o1))               \
  X(ANY, zmlx_op_call(F.op, (zmlx_array *const[]){F.f23}, 1, NULL, NULL, &o1))                    \
  X(S, zmlx_op_call(F.op, (zmlx_array *const[]){F.f23, F.f32x3}, 2, NULL, NULL, &o1))             \
  X(N, zmlx_op_call(F.op, (zmlx_array *const[]){F.f23, NULL}, 2, NULL, NULL, &o1))                \
  X(N, zmlx_op_call(F.op, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL, NULL, NULL))              \
  X(N, zmlx_op_vjp(NULL, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL, F.f23, NULL, olist))       \
  X(S, zmlx_op_vjp(F.op, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL, F.f32x3, NULL, olist))     \
  X(N, zmlx_op_jvp(NULL, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL, NULL, NULL, &o1))          \
  X(ANY, zmlx_op_jvp(F.op, (zmlx_array *const[]){F.f23, F.f23}, 2, NULL,                          \
        (zmlx_array *const[]){F.f32x3, F.f23}, NULL, &o1))                                        \
  X(N, zmlx_op_source(NULL, ZMLX_BACKEND_OPENCL, ZMLX_OP_FORWARD, NULL, &ostr))                   \
  X(N, zmlx_op_source(F.op, ZMLX_BACKEND_OPENCL, ZMLX_OP_FORWARD, NULL, NULL))                    \
  X(ANY, zmlx_op_source(F.op, (zmlx_backend)42, ZMLX_OP_FORWARD, NULL, &ostr))                    \
  X(N, zmlx_reduce(NULL, &oop)) X(ANY, zmlx_reduce(&RED_NO_UPDATE, &oop))                          \
  X(P, zmlx_reduce(&RED_PARSE, &oop)) X(ANY, zmlx_reduce(&RED_NAME, &oop))                         \
  X(N, zmlx_map_reduce(NULL, &oop)) X(ANY, zmlx_map_reduce(&MR_ZERO, &oop))                        \
  X(ANY, zmlx_map_reduce(&MR_THREE, &oop))                                                        \
  X(N, zmlx_apply(NULL, (zmlx_array *const[]){F.f23}, 1, NULL, &o1))                              \
  X(ANY, zmlx_apply(F.op, (zmlx_array *const[]){F.f23, F.f4}, 2, NULL, &o1))                      \
  X(N, zmlx_apply_expr(NULL, NAMES_X, (zmlx_array *const[]){F.f23}, 1, NULL, NULL, 0, &o1))       \
  X(P, zmlx_apply_expr("x *", NAMES_X, (zmlx_array *const[]){F.f23}, 1, NULL, NULL, 0, &o1))      \
  X(S, zmlx_apply_expr("x * y", NAMES_XY, (zmlx_array *const[]){F.f23, F.f32x3}, 2, NULL, NULL, 0, &o1)) \
  X(ANY, zmlx_apply_expr("x * a", NAMES_X, (zmlx_array *const[]){F.f23}, 1, NULL, PARAMS1, 1, &o1))

#define CASES_AUTOGRAD(X)                                                                         \
  X(N, zmlx_value_and_grad(NULL, NULL, (zmlx_array *const[]){F.f23}, 1, NULL, 0, &o1, olist))     \
  X(I, zmlx_value_and_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, ARG_OOB, 1, &o1, olist)) \
  X(I, zmlx_value_and_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, ARG_NEG, 1, &o1, olist)) \
  X(ANY, zmlx_value_and_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 0, NULL, 0, &o1, olist)) \
  X(ANY, zmlx_value_and_grad(sum_fn, NULL, (zmlx_array *const[]){F.i23}, 1, NULL, 0, &o1, olist)) \
  X(N, zmlx_grad(NULL, NULL, (zmlx_array *const[]){F.f23}, 1, NULL, 0, olist))                    \
  X(I, zmlx_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, ARG_OOB, 1, olist))               \
  X(N, zmlx_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, NULL, 0, NULL))                   \
  X(N, zmlx_vjp(NULL, NULL, (zmlx_array *const[]){F.f23}, 1, NULL, 0, F.f3, &o1, olist))          \
  X(S, zmlx_vjp(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, NULL, 0, F.f23, &o1, olist))       \
  X(I, zmlx_vjp(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, ARG_OOB, 1, F.f3, &o1, olist))     \
  X(N, zmlx_jvp(NULL, NULL, (zmlx_array *const[]){F.f23}, (zmlx_array *const[]){F.f23}, 1, &o1, &o2)) \
  X(S, zmlx_jvp(sum_fn, NULL, (zmlx_array *const[]){F.f23}, (zmlx_array *const[]){F.f32x3}, 1, &o1, &o2)) \
  X(N, zmlx_jvp(sum_fn, NULL, NULL, NULL, 1, &o1, &o2))                   \
  X(N, zmlx_check_grad(NULL, NULL, (zmlx_array *const[]){F.f23}, 1, 1e-3, 1e-2, &oreport))        \
  X(N, zmlx_check_grad(sum_fn, NULL, (zmlx_array *const[]){F.f23}, 1, 1e-3, 1e-2, NULL))    \
  X(N, zmlx_custom_function_create(NULL, NULL, NULL, NULL, &ocf))                                 \
  X(N, zmlx_custom_function_create(fwd_fn, NULL, NULL, NULL, NULL))                               \
  X(N, zmlx_custom_function_call(NULL, (zmlx_array *const[]){F.f23}, 1, olist, 1))

#define CASES_KV(X)                                                                               \
  X(N, zmlx_kv_cache_create(NULL, &okv)) X(I, zmlx_kv_cache_create(&KV_BLOCK, &okv))               \
  X(I, zmlx_kv_cache_create(&KV_LAYERS, &okv)) X(ANY, zmlx_kv_cache_create(&KV_DTYPE, &okv))       \
  X(I, zmlx_kv_cache_create(&KV_BLOCKS, &okv)) X(I, zmlx_kv_cache_create(&KV_HEAD, &okv))          \
  X(ANY, zmlx_kv_cache_create(&KV_OLD, &okv))                                                     \
  X(N, zmlx_kv_cache_add_sequence(NULL, &oi64)) X(N, zmlx_kv_cache_add_sequence(F.kv, NULL))       \
  X(I, zmlx_kv_cache_extend(F.kv, 12345, 1)) X(I, zmlx_kv_cache_extend(F.kv, F.seq, -1))           \
  X(ZMLX_ERR_OUT_OF_MEMORY, zmlx_kv_cache_extend(F.kv, F.seq, 1000000))                           \
  X(N, zmlx_kv_cache_extend(NULL, F.seq, 1))                                                      \
  X(I, zmlx_kv_cache_write(F.kv, F.seq, 5, 0, F.f1x2x3x8, F.f1x2x3x8))                            \
  X(I, zmlx_kv_cache_write(F.kv, 12345, 0, 0, F.f1x2x3x8, F.f1x2x3x8))                            \
  X(N, zmlx_kv_cache_write(F.kv, F.seq, 0, 0, NULL, F.f1x2x3x8))                                  \
  X(ANY, zmlx_kv_cache_write(F.kv, F.seq, 0, 0, F.f23, F.f23))                                    \
  X(ANY, zmlx_kv_cache_write(F.kv, F.seq, 0, 100, F.f2x8x8, F.f2x8x8))                            \
  X(I, zmlx_kv_cache_fork(F.kv, 12345, &oi64)) X(N, zmlx_kv_cache_fork(F.kv, F.seq, NULL))         \
  X(I, zmlx_kv_cache_free_sequence(F.kv, 12345)) X(N, zmlx_kv_cache_free_sequence(NULL, 0))        \
  X(I, zmlx_kv_cache_read(F.kv, 12345, 0, &o1, &o2)) X(I, zmlx_kv_cache_read(F.kv, F.seq, 3, &o1, &o2)) \
  X(N, zmlx_kv_cache_read(F.kv, F.seq, 0, NULL, &o2))                                             \
  X(I, zmlx_kv_cache_length(F.kv, 12345, &oi64)) X(N, zmlx_kv_cache_length(F.kv, F.seq, NULL))     \
  X(N, zmlx_kv_cache_write_rope(NULL, F.seq, 0, 0, F.f2x8x8, F.f2x8x8, NULL, NULL, NULL))         \
  X(I, zmlx_kv_cache_write_rope(F.kv, F.seq, 4, 0, F.f1x2x3x8, F.f1x2x3x8, F.f1x2x3x8, NULL, &o1))         \
  X(N, zmlx_kv_cache_write_rope_step(NULL, 0, SEQS_OK, 1, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(N, zmlx_kv_cache_write_rope_step(F.kv, 0, SEQS_OK, 1, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, NULL)) \
  X(I, zmlx_kv_cache_write_rope_step(F.kv, 3, SEQS_OK, 1, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(I, zmlx_kv_cache_write_rope_step(F.kv, 0, SEQS_OK, -1, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(N, zmlx_kv_cache_write_rope_step(F.kv, 0, NULL, 2, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(N, zmlx_kv_cache_write_rope_step(F.kv, 0, SEQS_OK, 2, NULL, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(ANY, zmlx_kv_cache_write_rope_step(F.kv, 0, SEQS_BAD, 2, F.f2x8x8, F.f2x8x8, F.f2x8x8, NULL, &o1)) \
  X(ANY, zmlx_kv_cache_write_rope_step(F.kv, 0, SEQS_OK, 2, F.f23, F.f23, F.f23, NULL, &o1))     \
  X(N, zmlx_kv_cache_attention(NULL, 0, F.f2x8x8, SEQS_OK, 0, &o1))                               \
  X(N, zmlx_kv_cache_attention(F.kv, 0, NULL, SEQS_OK, 0, &o1))                                   \
  X(I, zmlx_kv_cache_attention(F.kv, 7, F.f2x8x8, SEQS_OK, 0, &o1))                               \
  X(ANY, zmlx_kv_cache_attention(F.kv, 0, F.f2x8x8, SEQS_BAD, 0, &o1))                            \
  X(ANY, zmlx_kv_cache_attention(F.kv, 0, F.f23, SEQS_OK, 0, &o1))                                \
  X(ANY, zmlx_kv_cache_attention(F.kv, 0, F.f2x4x3x8, SEQS_OK, 0, &o1))                           \
  X(ANY, zmlx_kv_cache_attention(F.kv, 0, F.f0, SEQS_OK, 0, &o1))                                 \
  X(N, zmlx_kv_cache_attention(F.kv, 0, F.f2x8x8, NULL, 0, &o1))                                  \
  X(N, zmlx_kv_cache_stats(NULL, &oi64, &oi64b))

#define CASES_LM(X)                                                                               \
  X(N, zmlx_lm_create(NULL, &olm)) X(N, zmlx_lm_create(&LM_HEADS, NULL))                           \
  X(I, zmlx_lm_create(&LM_HEADS, &olm)) X(I, zmlx_lm_create(&LM_KV, &olm))                         \
  X(I, zmlx_lm_create(&LM_LAYERS, &olm)) X(I, zmlx_lm_create(&LM_TOPK, &olm))                      \
  X(ANY, zmlx_lm_create(&LM_DTYPE, &olm)) X(ANY, zmlx_lm_create(&LM_OLD, &olm))                    \
  X(N, zmlx_lm_get_config(NULL, &ocfg)) X(N, zmlx_lm_get_config(F.lm, NULL))                       \
  X(N, zmlx_lm_parameters(NULL, &oint, NULL, NULL))                                               \
  X(N, zmlx_lm_logits(F.lm, NULL, NULL, &o1)) X(ANY, zmlx_lm_logits(F.lm, NULL, F.f23, &o1))       \
  X(N, zmlx_lm_logits(F.lm, NULL, F.i23, NULL)) X(N, zmlx_lm_logits(NULL, NULL, F.i23, &o1))       \
  X(ANY, zmlx_lm_loss(F.lm, NULL, F.i23, F.i3, &o1)) X(N, zmlx_lm_loss(F.lm, NULL, F.i23, NULL, &o1)) \
  X(ANY, zmlx_lm_loss(F.lm, NULL, F.i23, F.f23, &o1))                                             \
  X(N, zmlx_lm_value_and_grad(NULL, F.i23, F.i23, &o1, olist))                                    \
  X(ANY, zmlx_lm_value_and_grad(F.lm, F.i23, F.i3, &o1, olist))                                   \
  X(N, zmlx_lm_kv_cache_create(NULL, 4, 16, &okv)) X(I, zmlx_lm_kv_cache_create(F.lm, 4, 7, &okv)) \
  X(I, zmlx_lm_kv_cache_create(F.lm, 0, 16, &okv)) X(N, zmlx_lm_kv_cache_create(F.lm, 4, 16, NULL)) \
  X(N, zmlx_lm_prefill(F.lm, NULL, 0, F.i23, &o1))                                                \
  X(N, zmlx_lm_decode(F.lm, NULL, SEQS_OK, F.i3, &o1))                                            \
  X(N, zmlx_lm_save(NULL, "/tmp/x.safetensors")) X(N, zmlx_lm_save(F.lm, NULL))                    \
  X(ZMLX_ERR_IO, zmlx_lm_save(F.lm, "/nonexistent-dir/zmlx/model.safetensors"))                   \
  X(N, zmlx_lm_load(NULL, NULL, &olm)) X(ZMLX_ERR_IO, zmlx_lm_load("/nonexistent.safetensors", NULL, &olm)) \
  X(N, zmlx_lm_load("/nonexistent.safetensors", NULL, NULL))

#define CASES_LAYER(X)                                                                            \
  X(N, zmlx_layer_create(NULL, &olayer)) X(N, zmlx_layer_create(&LY_HEADS, NULL))                  \
  X(I, zmlx_layer_create(&LY_KIND, &olayer)) X(I, zmlx_layer_create(&LY_HEADS, &olayer))           \
  X(I, zmlx_layer_create(&LY_HD, &olayer)) X(I, zmlx_layer_create(&LY_TOPK, &olayer))              \
  X(I, zmlx_layer_create(&LY_EXPERTS, &olayer)) X(D, zmlx_layer_create(&LY_DTYPE, &olayer))        \
  X(I, zmlx_layer_create(&LY_OLD, &olayer)) X(I, zmlx_layer_create(&LY_STD, &olayer))              \
  X(I, zmlx_layer_create(&LY_IN, &olayer)) X(I, zmlx_layer_create(&LY_VOCAB, &olayer))             \
  X(I, zmlx_layer_create(&LY_EPS, &olayer)) X(I, zmlx_layer_create(&LY_ROPE, &olayer))             \
  X(I, zmlx_layer_create(&LY_FFN, &olayer))                                                       \
  X(N, zmlx_layer_get_config(NULL, &olcfg)) X(N, zmlx_layer_get_config(F.lin, NULL))               \
  X(N, zmlx_layer_parameters(NULL, &oint, NULL, NULL))                                            \
  X(N, zmlx_layer_forward(NULL, NULL, F.f4x8, &o1)) X(N, zmlx_layer_forward(F.lin, NULL, NULL, &o1)) \
  X(N, zmlx_layer_forward(F.lin, NULL, F.f4x8, NULL)) X(S, zmlx_layer_forward(F.lin, NULL, F.f23, &o1)) \
  X(D, zmlx_layer_forward(F.lin, NULL, F.i23, &o1)) X(S, zmlx_layer_forward(F.lin, NULL, F.f0, &o1)) \
  X(S, zmlx_layer_forward(F.lin, (zmlx_array *const[]){F.f4x8}, F.f4x8, &o1))                     \
  X(N, zmlx_layer_forward(F.lin, (zmlx_array *const[]){NULL}, F.f4x8, &o1))                       \
  X(S, zmlx_layer_forward(F.attn, NULL, F.f3x16, &o1))                                            \
  X(ANY, zmlx_layer_forward(F.attn, NULL, F.f2x4x8, &o1))                                         \
  X(I, zmlx_layer_prefill(F.lin, F.kv, 0, F.seq, F.f4x8, &o1))                                    \
  X(N, zmlx_layer_prefill(F.attn, NULL, 0, F.seq, F.f3x16, &o1))                                  \
  X(N, zmlx_layer_prefill(F.attn, F.kv, 0, F.seq, NULL, &o1))                                     \
  X(N, zmlx_layer_prefill(F.attn, F.kv, 0, F.seq, F.f3x16, NULL))                                 \
  X(S, zmlx_layer_prefill(F.attn, F.kv, 0, F.seq, F.f4x8, &o1))                                   \
  X(I, zmlx_layer_prefill(F.attn, F.kv, 3, F.seq, F.f3x16, &o1))                                  \
  X(I, zmlx_layer_prefill(F.attn, F.kv, 0, 12345, F.f3x16, &o1))                                  \
  X(N, zmlx_layer_decode(F.attn, F.kv, 0, NULL, F.f3x16, &o1))                                    \
  X(I, zmlx_layer_decode(F.attn, F.kv, 0, SEQS3_BAD, F.f3x16, &o1))                              \
  X(S, zmlx_layer_decode(F.attn, F.kv, 0, SEQS_OK, F.f2x4x8, &o1))                                \
  X(I, zmlx_layer_decode(F.attn, F.kv, 0, SEQS_OK, F.f3x16, &o1))

#define CASES_ADAMW(X)                                                                            \
  X(N, zmlx_adamw_step(NULL, 1e-3, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL))                     \
  X(I, zmlx_adamw_step(NULL, 1e-3, 1, -1, NULL, NULL, NULL, NULL, NULL, NULL))                    \
  X(I, zmlx_adamw_step(NULL, -1.0, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(I, zmlx_adamw_step(NULL, INFINITY, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(I, zmlx_adamw_step(&ADAM_BETA, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(I, zmlx_adamw_step(&ADAM_EPS, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(I, zmlx_adamw_step(&ADAM_OLD, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(S, zmlx_adamw_step(NULL, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f4}, \
        (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3}, NULL, NULL))                    \
  X(I, zmlx_adamw_step(NULL, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3b}, \
        (zmlx_array *const[]){F.f3c}, (zmlx_array *const[]){F.f3}, NULL, NULL))                  \
  X(I, zmlx_adamw_step(NULL, 1e-3, 1, 1, (zmlx_array *const[]){F.f3}, (zmlx_array *const[]){F.f3b}, \
        (zmlx_array *const[]){F.f3c}, (zmlx_array *const[]){F.f3c}, NULL, NULL))                 \
  X(I, zmlx_adamw_create(NULL, 1, NULL, &oadam))                                                  \
  X(N, zmlx_adamw_create((zmlx_array *const[]){F.f3}, 1, NULL, NULL))                             \
  X(ANY, zmlx_adamw_create((zmlx_array *const[]){F.f3}, -1, NULL, &oadam))                        \
  X(ANY, zmlx_adamw_create((zmlx_array *const[]){F.i3}, 1, NULL, &oadam))                         \
  X(N, zmlx_adamw_update(NULL, (zmlx_array *const[]){F.f3}, 1, 1e-3, NULL))                       \
  X(I, zmlx_adamw_update(F.adam, (zmlx_array *const[]){F.f3, F.f3}, 2, 1e-3, NULL))               \
  X(S, zmlx_adamw_update(F.adam, (zmlx_array *const[]){F.f4}, 1, 1e-3, NULL))                     \
  X(I, zmlx_adamw_update(F.adam, (zmlx_array *const[]){F.f3}, 1, NAN, NULL))                      \
  X(N, zmlx_adamw_update(F.adam, NULL, 1, 1e-3, NULL))                                            \
  X(N, zmlx_adamw_state(NULL, 0, &o1, &o2, &o3, &oi64))                                           \
  X(I, zmlx_adamw_state(F.adam, 1, &o1, &o2, &o3, &oi64))                                         \
  X(I, zmlx_adamw_state(F.adam, -1, &o1, &o2, &o3, &oi64))

#define ALL_CASES(X)                                                                              \
  CASES_CORE(X) CASES_CREATE(X) CASES_VIEWS(X) CASES_ARITH(X) CASES_UNARY(X) CASES_GLU(X)          \
  CASES_NORM(X) CASES_LOSS(X) CASES_ATTN(X) CASES_REDUCE(X) CASES_QUANT(X) CASES_MOE(X)            \
  CASES_KERNEL(X) CASES_AUTOGRAD(X) CASES_KV(X) CASES_LM(X) CASES_LAYER(X)     \
  CASES_ADAMW(X)

#define X_WANT(want, call) want,
#define X_TEXT(want, call) #call,
static const int WANT[] = {ALL_CASES(X_WANT)};
static const char *const TEXT[] = {ALL_CASES(X_TEXT)};
enum { N_CASES = (int)(sizeof WANT / sizeof WANT[0]) };

static zmlx_status run_case(int i) {
  int k = 0;
#define X_RUN(want, call) \
  if (i == k++) return (call);
  ALL_CASES(X_RUN)
#undef X_RUN
  return ZMLX_OK;
}

/* ---------------------------------------------------------------- fixture */

static zmlx_array *arr(zmlx_dtype dt, int ndim, const int64_t *shape) {
  zmlx_array *a = NULL;
  ZT_OK(zmlx_array_zeros(F.dev, dt, ndim, shape, &a));
  return a;
}

static void fixture_up(void) {
  ZT_OK(zmlx_default_device(&F.dev));
  const int64_t s3[1] = {3}, s4[1] = {4}, s5[1] = {5}, s0[1] = {0}, s22[2] = {2, 2},
                s2238[4] = {2, 2, 3, 8}, s2438[4] = {2, 4, 3, 8}, s1238[4] = {1, 2, 3, 8},
                s2236[4] = {2, 2, 3, 6}, s48[2] = {4, 8}, s288[3] = {2, 8, 8}, s284[3] = {2, 8, 4};
  F.f23 = arr(ZMLX_F32, 2, SH23), F.f32x3 = arr(ZMLX_F32, 2, SH32), F.f3 = arr(ZMLX_F32, 1, s3);
  F.f4 = arr(ZMLX_F32, 1, s4), F.f5 = arr(ZMLX_F32, 1, s5), F.i23 = arr(ZMLX_I32, 2, SH23);
  F.i3 = arr(ZMLX_I32, 1, s3), F.u8_23 = arr(ZMLX_U8, 2, SH23), F.b23 = arr(ZMLX_BOOL, 2, SH23);
  F.f16_23 = arr(ZMLX_F16, 2, SH23), F.f2x2x3x8 = arr(ZMLX_F32, 4, s2238);
  F.f2x4x3x8 = arr(ZMLX_F32, 4, s2438), F.f1x2x3x8 = arr(ZMLX_F32, 4, s1238);
  F.f2x2x3x6 = arr(ZMLX_F32, 4, s2236), F.i2x2 = arr(ZMLX_I32, 2, s22), F.f4x8 = arr(ZMLX_F32, 2, s48);
  F.f2x8x8 = arr(ZMLX_F32, 3, s288), F.f2x8x4 = arr(ZMLX_F32, 3, s284), F.i8_23 = arr(ZMLX_I8, 2, SH23);
  F.f0 = arr(ZMLX_F32, 1, s0);
  const int64_t s42[2] = {4, 2}, s248[3] = {2, 4, 8};
  F.f3b = arr(ZMLX_F32, 1, s3), F.f3c = arr(ZMLX_F32, 1, s3);
  F.f4x2 = arr(ZMLX_F32, 2, s42), F.i4x2 = arr(ZMLX_I32, 2, s42), F.f2x4x8 = arr(ZMLX_F32, 3, s248);
  const zmlx_kv_cache_desc kd = {.layers = 1, .kv_heads = 2, .head_dim = 8, .block_size = 16,
                                 .num_blocks = 4, .dtype = ZMLX_F32};
  ZT_OK(zmlx_kv_cache_create(&kd, &F.kv));
  ZT_OK(zmlx_kv_cache_add_sequence(F.kv, &F.seq));
  ZT_OK(zmlx_kv_cache_extend(F.kv, F.seq, 3));
  const zmlx_lm_config lc = {.dim = 32, .layers = 1, .heads = 4, .ffn_dim = 16, .vocab = 16};
  ZT_OK(zmlx_lm_create(&lc, &F.lm));
  const zmlx_layer_config lin = {.kind = ZMLX_LAYER_LINEAR, .in_features = 8, .out_features = 4},
                          attn = {.kind = ZMLX_LAYER_ATTENTION, .dim = 16, .heads = 2};
  ZT_OK(zmlx_layer_create(&lin, &F.lin));
  ZT_OK(zmlx_layer_create(&attn, &F.attn));
  F.f3x16 = arr(ZMLX_F32, 2, (int64_t[]){3, 16});
  ZT_OK(zmlx_adamw_create((zmlx_array *const[]){F.f3}, 1, NULL, &F.adam));
  ZT_OK(zmlx_elementwise("x * y", NAMES_XY, 2, NULL, 0, &F.op));
  const zmlx_kernel_desc kdesc = {.name = "copy_k", .input_names = NAMES_X, .n_inputs = 1,
                                  .output_names = (const char *const[]){"out"}, .n_outputs = 1,
                                  .source = "out[thread_position_in_grid.x] = x[thread_position_in_grid.x];"};
  ZT_OK(zmlx_kernel_create(&kdesc, &F.kern));
}

static void fixture_down(void) {
  zmlx_array **all[] = {&F.f23, &F.f32x3, &F.f3, &F.f4, &F.f5, &F.i23, &F.i3, &F.u8_23, &F.b23,
                        &F.f16_23, &F.f2x2x3x8, &F.f2x4x3x8, &F.f1x2x3x8, &F.f2x2x3x6, &F.i2x2,
                        &F.f4x8, &F.f2x8x8, &F.f2x8x4, &F.i8_23, &F.f0, &F.f4x2, &F.i4x2,
                        &F.f2x4x8, &F.f3b, &F.f3c, &F.f3x16};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    zmlx_array_release(*all[i]);
    *all[i] = NULL;
  }
  zmlx_kv_cache_destroy(F.kv);
  zmlx_lm_destroy(F.lm);
  zmlx_layer_destroy(F.lin), zmlx_layer_destroy(F.attn);
  zmlx_adamw_destroy(F.adam);
  zmlx_op_destroy(F.op);
  zmlx_kernel_destroy(F.kern);
}

/* Whatever a failing call left in the outputs (it should be nothing). */
static int outputs_left(void) {
  int left = 0;
  zmlx_array **arrays[3 + 64] = {&o1, &o2, &o3};
  for (int i = 0; i < 64; i++) arrays[3 + i] = &olist[i];
  for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
    if (*arrays[i]) {
      left++;
      zmlx_array_release(*arrays[i]);
      *arrays[i] = NULL;
    }
  if (okern) left++, zmlx_kernel_destroy(okern), okern = NULL;
  if (oop) left++, zmlx_op_destroy(oop), oop = NULL;
  if (okv) left++, zmlx_kv_cache_destroy(okv), okv = NULL;
  if (olm) left++, zmlx_lm_destroy(olm), olm = NULL;
  if (olayer) left++, zmlx_layer_destroy(olayer), olayer = NULL;
  if (oadam) left++, zmlx_adamw_destroy(oadam), oadam = NULL;
  if (ocf) left++, zmlx_custom_function_destroy(ocf), ocf = NULL;
  if (ostr) left++, zmlx_free(ostr), ostr = NULL;
  return left;
}

/* ------------------------------------------------------------------ tests */

static void test_every_bad_call_is_a_status(void **state) {
  (void)state;
  fixture_up();
  int64_t live0 = zmlx_array_live_count();
  int failures = 0;
  for (int i = 0; i < N_CASES; i++) {
    zmlx_clear_error();
    zmlx_status st = run_case(i);
    const char *msg = zmlx_last_error();
    const char *why = NULL;
    if (st == ZMLX_OK) why = "returned ZMLX_OK";
    else if (WANT[i] != ANY && st != (zmlx_status)WANT[i]) why = "wrong status";
    else if (!msg || !msg[0]) why = "no message";
    if (outputs_left()) why = why ? why : "left an output set";
    if (why) {
      failures++;
      fprintf(stderr, "case %d: %s\n  %s -> %s (want %s): %s\n", i, why, TEXT[i],
              zmlx_status_string(st), WANT[i] == ANY ? "any error" : zmlx_status_string(WANT[i]),
              msg ? msg : "(null)");
    }
  }
  /* the failed calls made no arrays that outlive them */
  int64_t live1 = zmlx_array_live_count();
  fixture_down();
  fprintf(stderr, "%d bad-input cases, %d wrong; live arrays %lld before, %lld after\n", N_CASES,
          failures, (long long)live0, (long long)live1);
  assert_int_equal(failures, 0);
  assert_int_equal(live1, live0);
  assert_true(N_CASES >= 300);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_bad_call_is_a_status),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
