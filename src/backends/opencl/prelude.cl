/*
 * zmlx OpenCL prelude: the portable kernel dialect (docs/DIALECT.md) in
 * OpenCL C 1.2. Written for the weakest target, PoCL on a CPU: no
 * cl_khr_fp16 (16-bit floats are storage only), no sub-groups.
 */
#ifndef ZMLX_PRELUDE_CL
#define ZMLX_PRELUDE_CL

#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

/* ------------------------------------------------------------ types */

typedef ushort zmlx_half; /* f16 storage: never used for arithmetic */
typedef ushort zmlx_bf16; /* bf16 storage */
typedef long zmlx_i64;
typedef ulong zmlx_u64;

/* Geometry passed by value; layout matches C's int32_t[8] / int64_t[8]
 * (zmlx_kshape / zmlx_kstrides in runtime/backend.h). */
typedef struct zmlx_kshape { int v[8]; } zmlx_kshape;
typedef struct zmlx_kstrides { long v[8]; } zmlx_kstrides;

/* ------------------------------------------------------------ qualifiers */

#define threadgroup __local
#define device __global
/* `static` keeps helpers internal: a plain C99 `inline` is only an inline
 * definition and leaves an undefined symbol when the compiler declines to
 * inline (e.g. with -cl-opt-disable). OpenCL C 1.2 allows `static`. */
#define ZMLX_FN static inline

#define zmlx_barrier() barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE)
#define zmlx_dynamic_shared(T) ((__local T*)zmlx_dyn_shared)
/* A pointer to threadgroup memory (see the CUDA prelude for why it is a macro). */
#define zmlx_threadgroup_ptr(T) __local T *

/* ------------------------------------------------------------ constants */

#define ZMLX_INF INFINITY
#define ZMLX_NAN NAN
#define ZMLX_FLT_MAX FLT_MAX

/* ------------------------------------------------------------ f16 / bf16 */

/* f16 <-> f32 through vload_half / vstore_half_rte on a private copy, so
 * the helpers work on pointers of any address space (global, threadgroup,
 * private); the compiler turns the private round trip into a register
 * conversion. Round to nearest even. */
ZMLX_FN float zmlx_half_to_float(zmlx_half h) {
  return vload_half(0, (const __private half*)&h);
}
ZMLX_FN zmlx_half zmlx_float_to_half(float f) {
  zmlx_half h;
  vstore_half_rte(f, 0, (__private half*)&h);
  return h;
}

/* bf16 is the top half of an f32: widening is a shift. */
ZMLX_FN float zmlx_bf16_to_float(zmlx_bf16 b) { return as_float(((uint)b) << 16); }

/* Narrowing rounds to nearest even; NaN stays NaN (quietened, sign kept)
 * instead of rounding into infinity. */
ZMLX_FN zmlx_bf16 zmlx_float_to_bf16(float f) {
  uint u = as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (zmlx_bf16)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (zmlx_bf16)(u >> 16);
}

/* ------------------------------------------------------------ loads / stores */

/* Compute type: float for f16/bf16/f32, the storage type otherwise. Macros,
 * so one definition serves every address space. */
#define zmlx_load_f32(p, i) ((float)(p)[i])
#define zmlx_store_f32(p, i, v) ((p)[i] = (float)(v))
#define zmlx_load_f16(p, i) zmlx_half_to_float((p)[i])
#define zmlx_store_f16(p, i, v) ((p)[i] = zmlx_float_to_half((float)(v)))
#define zmlx_load_bf16(p, i) zmlx_bf16_to_float((p)[i])
#define zmlx_store_bf16(p, i, v) ((p)[i] = zmlx_float_to_bf16((float)(v)))
#define zmlx_load_i32(p, i) ((int)(p)[i])
#define zmlx_store_i32(p, i, v) ((p)[i] = (int)(v))
#define zmlx_load_u32(p, i) ((uint)(p)[i])
#define zmlx_store_u32(p, i, v) ((p)[i] = (uint)(v))
#define zmlx_load_i64(p, i) ((zmlx_i64)(p)[i])
#define zmlx_store_i64(p, i, v) ((p)[i] = (zmlx_i64)(v))
#define zmlx_load_u8(p, i) ((uchar)(p)[i])
#define zmlx_store_u8(p, i, v) ((p)[i] = (uchar)(v))
#define zmlx_load_i8(p, i) ((char)(p)[i])
#define zmlx_store_i8(p, i, v) ((p)[i] = (char)(v))
/* bool is one byte holding 0 or 1: any nonzero value stores as 1. */
#define zmlx_load_bool(p, i) ((uchar)(p)[i])
#define zmlx_store_bool(p, i, v) ((p)[i] = (uchar)((v) != 0))

#ifdef cl_khr_fp64
#define zmlx_load_f64(p, i) ((double)(p)[i])
#define zmlx_store_f64(p, i, v) ((p)[i] = (double)(v))
#endif

/* ------------------------------------------------------------ atomics */

/* OpenCL 1.2 has no float atomics: compare-and-swap on the bit pattern.
 * Comparing bits (not floats) terminates even when the value is NaN. */
ZMLX_FN void zmlx_atomic_add_f32_impl(volatile __global float* addr, float v) {
  volatile __global uint* bits = (volatile __global uint*)addr;
  uint old = *bits;
  uint seen;
  do {
    seen = old;
    old = atomic_cmpxchg(bits, seen, as_uint(as_float(seen) + v));
  } while (old != seen);
}

#define zmlx_atomic_add_f32(p, i, v) zmlx_atomic_add_f32_impl((p) + (i), (float)(v))
#define zmlx_atomic_add_i32(p, i, v) ((void)atomic_add((p) + (i), (int)(v)))
#define zmlx_atomic_add_u32(p, i, v) ((void)atomic_add((p) + (i), (uint)(v)))
#define zmlx_atomic_max_i32(p, i, v) ((void)atomic_max((p) + (i), (int)(v)))
#define zmlx_atomic_min_i32(p, i, v) ((void)atomic_min((p) + (i), (int)(v)))

/* ------------------------------------------------------------ SIMD emulation */

/* No sub-groups in OpenCL C 1.2 (cl_khr_subgroups is an OpenCL 2.x
 * extension, and zmlx builds with -cl-std=CL1.2), so a SIMD group is 32
 * consecutive linear local ids and reductions go through __local scratch
 * that the kernel prologue declares (zmlx_simd_scratch, one float per
 * work-item, hence at most ZMLX_SIMD_SCRATCH work-items per group). Every
 * work-item of the group must call the helper: it contains barriers. */
#define ZMLX_SIMD_WIDTH 32u
#define ZMLX_SIMD_SCRATCH 1024

/* Publish each work-item's value, then every lane folds its group's values
 * in the same order, so all lanes get bit-identical results; partial groups
 * (a threadgroup that is not a multiple of 32) fold only their own lanes.
 * The launch guarantees at most ZMLX_SIMD_SCRATCH work-items. The leading
 * barrier keeps this call's writes from a previous call's readers, the
 * trailing one the next call's writes from this call's readers.
 *
 * With clang-based compilers (PoCL and most drivers) the helper is a GNU
 * statement expression expanded in the kernel body itself: PoCL 3.1 gave
 * wrong results, intermittently and only with several worker threads, when
 * the barriers sat inside a called (even inlined) function — reproduced
 * with 4 processes on 2 cores, gone with a single PoCL thread or with the
 * barriers in the kernel body. Other compilers get the function form. */
#define ZMLX_THREADGROUP_THREADS \
  (threads_per_threadgroup.x * threads_per_threadgroup.y * threads_per_threadgroup.z)
#define ZMLX_SIMD_FOLD(acc, scratch, lid, n, combine)                           \
  do {                                                                          \
    uint zmlx_first_ = (lid) & ~(ZMLX_SIMD_WIDTH - 1u);                         \
    uint zmlx_last_ = min(zmlx_first_ + ZMLX_SIMD_WIDTH, (uint)(n)) - 1u;       \
    (acc) = (scratch)[zmlx_first_];                                             \
    for (uint zmlx_j_ = 1u; zmlx_j_ < ZMLX_SIMD_WIDTH; ++zmlx_j_) {             \
      float zmlx_o_ = (scratch)[min(zmlx_first_ + zmlx_j_, zmlx_last_)];        \
      (acc) = zmlx_first_ + zmlx_j_ <= zmlx_last_ ? combine((acc), zmlx_o_) : (acc); \
    }                                                                           \
  } while (0)
#define ZMLX_SIMD_ADD(a, b) ((a) + (b))

#if defined(__clang__)
#define ZMLX_SIMD_REDUCE(v, combine)                                            \
  ({                                                                            \
    float zmlx_v_ = (float)(v), zmlx_acc_;                                      \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    zmlx_simd_scratch[thread_index_in_threadgroup] = zmlx_v_;                   \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    ZMLX_SIMD_FOLD(zmlx_acc_, zmlx_simd_scratch, thread_index_in_threadgroup,   \
                   ZMLX_THREADGROUP_THREADS, combine);                          \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    zmlx_acc_;                                                                  \
  })
#define zmlx_simd_sum(v) ZMLX_SIMD_REDUCE(v, ZMLX_SIMD_ADD)
#define zmlx_simd_max(v) ZMLX_SIMD_REDUCE(v, fmax)
#define zmlx_simd_min(v) ZMLX_SIMD_REDUCE(v, fmin)
#else
#define ZMLX_SIMD_REDUCE_IMPL(name, combine)                                    \
  ZMLX_FN float name(float v, __local float* scratch, uint lid, uint n) {       \
    float acc;                                                                  \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    scratch[lid] = v;                                                           \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    ZMLX_SIMD_FOLD(acc, scratch, lid, n, combine);                              \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    return acc;                                                                 \
  }
ZMLX_SIMD_REDUCE_IMPL(zmlx_simd_sum_impl, ZMLX_SIMD_ADD)
ZMLX_SIMD_REDUCE_IMPL(zmlx_simd_max_impl, fmax)
ZMLX_SIMD_REDUCE_IMPL(zmlx_simd_min_impl, fmin)
#define zmlx_simd_sum(v) \
  zmlx_simd_sum_impl((float)(v), zmlx_simd_scratch, thread_index_in_threadgroup, ZMLX_THREADGROUP_THREADS)
#define zmlx_simd_max(v) \
  zmlx_simd_max_impl((float)(v), zmlx_simd_scratch, thread_index_in_threadgroup, ZMLX_THREADGROUP_THREADS)
#define zmlx_simd_min(v) \
  zmlx_simd_min_impl((float)(v), zmlx_simd_scratch, thread_index_in_threadgroup, ZMLX_THREADGROUP_THREADS)
#endif

/* Lane exchange of 32-bit unsigned values within a SIMD group: the value of
 * lane (lane ^ mask) and of lane `lane`, through the same scratch (as float
 * bits) and barriers as the reductions above; every work-item of the group
 * must call them, and the group must be whole (32 work-items). */
#if defined(__clang__)
#define ZMLX_SIMD_EXCHANGE(v, src)                                              \
  ({                                                                            \
    uint zmlx_x_ = (uint)(v), zmlx_r_;                                          \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    zmlx_simd_scratch[thread_index_in_threadgroup] = as_float(zmlx_x_);         \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    zmlx_r_ = as_uint(zmlx_simd_scratch[(src)]);                                \
    barrier(CLK_LOCAL_MEM_FENCE);                                               \
    zmlx_r_;                                                                    \
  })
#else
ZMLX_FN uint zmlx_simd_exchange_impl(uint v, __local float* scratch, uint lid, uint src) {
  barrier(CLK_LOCAL_MEM_FENCE);
  scratch[lid] = as_float(v);
  barrier(CLK_LOCAL_MEM_FENCE);
  uint r = as_uint(scratch[src]);
  barrier(CLK_LOCAL_MEM_FENCE);
  return r;
}
#define ZMLX_SIMD_EXCHANGE(v, src) \
  zmlx_simd_exchange_impl((uint)(v), zmlx_simd_scratch, thread_index_in_threadgroup, (src))
#endif
#define zmlx_simd_shuffle_xor(v, mask) \
  ZMLX_SIMD_EXCHANGE(v, thread_index_in_threadgroup ^ (uint)(mask))
#define zmlx_simd_broadcast(v, lane) \
  ZMLX_SIMD_EXCHANGE(v, (thread_index_in_threadgroup & ~(ZMLX_SIMD_WIDTH - 1u)) | (uint)(lane))

/* Bit casts, count trailing zeros (32 for 0), and an unroll hint (none:
 * OpenCL C 1.2 has no portable one). */
#define zmlx_as_float(u) as_float((uint)(u))
#define zmlx_as_uint(f) as_uint((float)(f))
ZMLX_FN int zmlx_ctz(uint m) { return m ? 31 - (int)clz(m & (0u - m)) : 32; }
#define ZMLX_UNROLL

/* ------------------------------------------------------------ activations */

/* e^x for row kernels that may trade a few ulp for speed (CUDA: __expf);
 * the CPU path keeps the accurate one. */
ZMLX_FN float zmlx_fast_exp(float x) { return exp(x); }
ZMLX_FN float zmlx_sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
ZMLX_FN float zmlx_silu(float x) { return x / (1.0f + exp(-x)); }
ZMLX_FN float zmlx_relu(float x) { return x < 0.0f ? 0.0f : x; } /* keeps NaN, as CUDA */

/* Both gelus are written without the 1 + tanh / 1 + erf cancellation of
 * the textbook forms, which loses every digit for x below about -5 (and
 * leaves -3e-6 at x = -100 where a driver's tanh is 1 ulp short of -1):
 *   0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)
 * sqrt(2/pi) = 0.7978845608..., 1/sqrt(2) = 0.7071067811... */
ZMLX_FN float zmlx_gelu_tanh(float x) {
  float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + exp(-2.0f * u));
}
ZMLX_FN float zmlx_gelu_erf(float x) { return 0.5f * x * erfc(-0.7071067811865476f * x); }

/* Stable for large |x|: never exponentiates a positive number. */
ZMLX_FN float zmlx_softplus(float x) { return fmax(x, 0.0f) + log1p(exp(-fabs(x))); }

#endif /* ZMLX_PRELUDE_CL */
