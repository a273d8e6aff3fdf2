/*
 * zmlx CUDA prelude: the portable kernel dialect (docs/DIALECT.md) spelled
 * in CUDA C++. Prepended to every kernel compiled by NVRTC.
 *
 * NVRTC compiles this with no include path, so nothing here may #include:
 * the vector types (uint3, make_uint3), the intrinsics (__shfl_xor_sync,
 * atomicAdd, __int_as_float) and the float overloads of the math functions
 * are built into NVRTC.
 */
#ifndef ZMLX_CUDA_PRELUDE
#define ZMLX_CUDA_PRELUDE

/* ------------------------------------------------------------------ types */

typedef unsigned int uint;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef long long zmlx_i64;
typedef unsigned long long zmlx_u64;
/* 16-bit floats are storage only: arithmetic happens in float after a load. */
typedef unsigned short zmlx_half;
typedef unsigned short zmlx_bf16;

/* Geometry passed by value; same layout as the host's zmlx_kshape /
 * zmlx_kstrides (runtime/backend.h). */
typedef struct zmlx_kshape { int v[8]; } zmlx_kshape;
typedef struct zmlx_kstrides { long long v[8]; } zmlx_kstrides;

/* __grid_constant__ lets the prologue point into the parameter space
 * without the compiler copying the struct to local memory first. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
#define ZMLX_GRID_CONST __grid_constant__
#else
#define ZMLX_GRID_CONST
#endif

/* ------------------------------------------------------------- qualifiers */

#define threadgroup __shared__
#define device
/* [[maybe_unused]]: a kernel uses few of the prelude's (and a shared
 * header's) helpers, and NVRTC would list every other one in the log. */
#define ZMLX_UNUSED [[maybe_unused]]
#define ZMLX_FN ZMLX_UNUSED static __device__ __forceinline__

#define zmlx_barrier() __syncthreads()

/* One dynamic shared-memory block per kernel: its size is the launch's
 * dynamic_shared_bytes. 16-byte alignment covers every dtype and float4. */
extern __shared__ __align__(16) unsigned char zmlx_dyn_shared[];
#define zmlx_dynamic_shared(T) (reinterpret_cast<T *>(zmlx_dyn_shared))
/* A pointer to threadgroup memory. CUDA pointers are generic, and `__shared__`
 * on a pointer would qualify the variable, not what it points to. */
#define zmlx_threadgroup_ptr(T) T *

/* -------------------------------------------------------------- constants */

#define ZMLX_INF __int_as_float(0x7f800000)
#define ZMLX_NAN __int_as_float(0x7fc00000)
#define ZMLX_FLT_MAX 3.402823466e+38f

/* -------------------------------------------------- 16-bit float storage */

ZMLX_FN float zmlx_half_to_float(zmlx_half h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

ZMLX_FN zmlx_half zmlx_float_to_half(float f) {
  zmlx_half h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

ZMLX_FN float zmlx_bf16_to_float(zmlx_bf16 b) {
  return __uint_as_float(((unsigned int)b) << 16);
}

ZMLX_FN zmlx_bf16 zmlx_float_to_bf16(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  zmlx_bf16 b;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
  return b;
#else
  /* Round to nearest even on the bits; a NaN stays a (quiet) NaN instead
   * of rounding up into infinity. */
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (zmlx_bf16)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (zmlx_bf16)(u >> 16);
#endif
}

/* ------------------------------------------------------- loads and stores */
/* Macros, not functions, so they work on global and shared pointers alike.
 * Loads return the compute type: float for every float dtype. */

#define zmlx_load_f32(p, i) ((float)(p)[i])
#define zmlx_load_f16(p, i) zmlx_half_to_float((p)[i])
#define zmlx_load_bf16(p, i) zmlx_bf16_to_float((p)[i])
#define zmlx_load_f64(p, i) ((double)(p)[i])
#define zmlx_load_i32(p, i) ((int)(p)[i])
#define zmlx_load_u32(p, i) ((uint)(p)[i])
#define zmlx_load_i64(p, i) ((zmlx_i64)(p)[i])
#define zmlx_load_u8(p, i) ((uchar)(p)[i])
#define zmlx_load_i8(p, i) ((signed char)(p)[i])
#define zmlx_load_bool(p, i) ((uchar)((p)[i] != 0))

#define zmlx_store_f32(p, i, v) ((p)[i] = (float)(v))
#define zmlx_store_f16(p, i, v) ((p)[i] = zmlx_float_to_half((float)(v)))
#define zmlx_store_bf16(p, i, v) ((p)[i] = zmlx_float_to_bf16((float)(v)))
#define zmlx_store_f64(p, i, v) ((p)[i] = (double)(v))
#define zmlx_store_i32(p, i, v) ((p)[i] = (int)(v))
#define zmlx_store_u32(p, i, v) ((p)[i] = (uint)(v))
#define zmlx_store_i64(p, i, v) ((p)[i] = (zmlx_i64)(v))
#define zmlx_store_u8(p, i, v) ((p)[i] = (uchar)(v))
#define zmlx_store_i8(p, i, v) ((p)[i] = (signed char)(v))
#define zmlx_store_bool(p, i, v) ((p)[i] = (uchar)((v) != 0))

/* ---------------------------------------------------------------- atomics */

#define zmlx_atomic_add_f32(p, i, v) ((void)atomicAdd(&(p)[i], (float)(v)))
#define zmlx_atomic_add_i32(p, i, v) ((void)atomicAdd(&(p)[i], (int)(v)))
#define zmlx_atomic_add_u32(p, i, v) ((void)atomicAdd(&(p)[i], (unsigned int)(v)))
#define zmlx_atomic_max_i32(p, i, v) ((void)atomicMax(&(p)[i], (int)(v)))
#define zmlx_atomic_min_i32(p, i, v) ((void)atomicMin(&(p)[i], (int)(v)))

/* ------------------------------------------------------------------- SIMD */
/* A warp is 32 consecutive linear thread ids. The last warp of a
 * threadgroup whose size is not a multiple of 32 is partial: its missing
 * lanes must not appear in the shuffle mask, so it reduces down a tree to
 * lane 0 (skipping absent partners) and broadcasts. Full warps take the
 * butterfly. The branch is uniform across a warp. */

ZMLX_FN uint zmlx_linear_tid_(void) {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

ZMLX_FN uint zmlx_lanes_in_warp_(void) {
  const uint n = blockDim.x * blockDim.y * blockDim.z;
  const uint rest = n - (zmlx_linear_tid_() & ~31u);
  return rest < 32u ? rest : 32u;
}

ZMLX_FN float zmlx_op_sum_(float a, float b) { return a + b; }
ZMLX_FN float zmlx_op_max_(float a, float b) { return fmaxf(a, b); }
ZMLX_FN float zmlx_op_min_(float a, float b) { return fminf(a, b); }

#define ZMLX_SIMD_REDUCE_(NAME, OP)                                      \
  ZMLX_FN float NAME(float v) {                                          \
    const uint n = zmlx_lanes_in_warp_();                                \
    if (n == 32u) {                                                      \
      for (int o = 16; o > 0; o >>= 1)                                   \
        v = OP(v, __shfl_xor_sync(0xffffffffu, v, o));                   \
      return v;                                                          \
    }                                                                    \
    const uint mask = (1u << n) - 1u;                                    \
    const uint lane = zmlx_linear_tid_() & 31u;                          \
    for (int o = 16; o > 0; o >>= 1) {                                   \
      const float w = __shfl_down_sync(mask, v, o);                      \
      if (lane + (uint)o < n) v = OP(v, w);                              \
    }                                                                    \
    return __shfl_sync(mask, v, 0);                                      \
  }

ZMLX_SIMD_REDUCE_(zmlx_simd_sum, zmlx_op_sum_)
ZMLX_SIMD_REDUCE_(zmlx_simd_max, zmlx_op_max_)
ZMLX_SIMD_REDUCE_(zmlx_simd_min, zmlx_op_min_)

/* Lane exchange of 32-bit unsigned values within a SIMD group (a warp):
 * the value of lane (lane ^ mask), and the value of lane `lane`. Every lane
 * of the group must call them. */
#define zmlx_simd_shuffle_xor(v, mask) __shfl_xor_sync(0xffffffffu, (uint)(v), (int)(mask))
#define zmlx_simd_broadcast(v, lane) __shfl_sync(0xffffffffu, (uint)(v), (int)(lane))

/* ------------------------------------------------------- matrix units */
/* Warp-wide 16x8x16 products on the tensor cores (sm_80 on), f32
 * accumulate, in PTX's m16n8k16 fragment layout; docs/DIALECT.md gives the
 * layout. Only for kernels built with a NATIVE_MMA template that the op sets
 * from the device's has_mma: other backends do not define these names. */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800 /* (nvcc's host pass sees them too) */
#define ZMLX_HAS_MMA 1
ZMLX_FN uint zmlx_shared_addr_(const void *p) {
  return (uint)__cvta_generic_to_shared(p);
}
/* Four 8x8 16-bit matrices from threadgroup memory: lane l gives the address
 * of row l % 8 of matrix l / 8 (16-byte aligned); r[i] is matrix i's row
 * lane / 4, columns 2 (lane % 4) and + 1. _trans: the transpose's. */
ZMLX_FN void zmlx_ldsm_x4(uint *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(zmlx_shared_addr_(p)));
}
ZMLX_FN void zmlx_ldsm_x4_trans(uint *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(zmlx_shared_addr_(p)));
}
/* c (16x8 f32) += a (16x16) b (16x8), 16-bit inputs packed two a uint. */
#define ZMLX_MMA_16X8X16_(NAME, TY)                                                  \
  ZMLX_FN void NAME(float *c, const uint *a, const uint *b) {                        \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 "          \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"   \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                    \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1])); \
  }
ZMLX_MMA_16X8X16_(zmlx_mma_16x8x16_f16, "f16")
ZMLX_MMA_16X8X16_(zmlx_mma_16x8x16_bf16, "bf16")
/* 16 bytes global -> threadgroup memory without passing through registers
 * (cp.async, sm_80 on), or 16 zero bytes when `valid` is 0 (src is then not
 * read); both pointers 16-byte aligned. Copies issued since the last commit
 * form a group; wait_all waits for every group, wait_but_one for all but the
 * newest, wait_but_two for all but the newest two (a three-stage pipeline),
 * wait_pending(N) for all but the newest N:
 * the issuing thread's copies only, so a barrier must follow before other
 * threads read them. */
ZMLX_FN void zmlx_copy_async16(void *dst, const void *src, int valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
               :: "r"(zmlx_shared_addr_(dst)), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
#define zmlx_copy_async_commit() asm volatile("cp.async.commit_group;" ::: "memory")
#define zmlx_copy_async_wait_all() asm volatile("cp.async.wait_group 0;" ::: "memory")
#define zmlx_copy_async_wait_but_one() asm volatile("cp.async.wait_group 1;" ::: "memory")
#define zmlx_copy_async_wait_but_two() asm volatile("cp.async.wait_group 2;" ::: "memory")
/* all but the newest N groups (N a constant expression: a pipeline's
 * stages - 1) */
#define zmlx_copy_async_wait_pending(N) asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory")
#else
#define ZMLX_HAS_MMA 0
#endif

/* ------------------------------------------- warpgroup matrix units (sm_90a) */
/* Hopper's asynchronous warpgroup products (wgmma), for kernels built with a
 * NATIVE_WGMMA template that the op sets from the device's has_wgmma. The 4
 * warps of a warpgroup (128 consecutive threads) issue each product together;
 * d (64 x N f32) is in the accumulator layout of docs/DIALECT.md: warp w's
 * lane holds rows 16 w + lane / 4 and + 8, columns 2 (lane % 4) and + 1 of
 * every 8 (d[4 j + e] is row 16 w + lane / 4 + 8 (e / 2), column 8 j + 2
 * (lane % 4) + e % 2), the m16n8 layout stacked over the 4 warps.
 * Operands in threadgroup memory are 128-byte-swizzled tiles named by a
 * descriptor (zmlx_wgmma_desc): rows of 64 16-bit elements (128 bytes),
 * 16-byte chunk c of row r stored at chunk c ^ (r % 8), tiles 1024-byte
 * aligned (zmlx_wgmma_align). _ss: A (64 x 16) and B (N x 16) both K-major
 * (each row a reduction slice: Q and K of Q K^T); _rs_t: A from registers (the
 * m16n8k16 A fragment of each warp's 16 rows, the layout of P built from an
 * accumulator) and B (16 x N) N-major (rows of V). A product reads its
 * registers and memory until zmlx_wgmma_wait: zmlx_wgmma_fence before the
 * first product after those registers were written, zmlx_wgmma_commit after a
 * batch, zmlx_wgmma_wait (or _wait_but_one: all but the newest batch), then
 * zmlx_wgmma_hold on the accumulators (and A
 * registers) so that no read or reuse moves above the wait. Threadgroup
 * memory written by ordinary stores or zmlx_copy_async16 needs
 * zmlx_fence_async_shared (then a barrier) before a product reads it. */
#if !defined(__CUDA_ARCH__) || (__CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define ZMLX_HAS_WGMMA 1
typedef unsigned long long zmlx_wgmma_desc_t;
/* A descriptor of the swizzled tile at p: lead / stride = bytes between
 * 64-element column blocks / between groups of 8 rows (the reduction's
 * blocks for N-major B; unused for K-major, whose reduction stays in a
 * row). */
ZMLX_FN zmlx_wgmma_desc_t zmlx_wgmma_desc(const void *p, uint lead, uint stride) {
  return (zmlx_wgmma_desc_t)((zmlx_shared_addr_(p) & 0x3FFFFu) >> 4) |
         ((zmlx_wgmma_desc_t)((lead >> 4) & 0x3FFFu) << 16) |
         ((zmlx_wgmma_desc_t)((stride >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}
/* The first 1024-byte-aligned address at or after p (threadgroup memory). */
#define zmlx_wgmma_align(TY, p)                                                    \
  ((TY *)((char *)(p) + ((1024u - (zmlx_shared_addr_(p) & 1023u)) & 1023u)))
#define zmlx_wgmma_fence() asm volatile("wgmma.fence.sync.aligned;" ::: "memory")
#define zmlx_wgmma_commit() asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory")
#define zmlx_wgmma_wait() asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory")
#define zmlx_wgmma_wait_but_one() asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory")
#define zmlx_fence_async_shared() asm volatile("fence.proxy.async.shared::cta;" ::: "memory")
ZMLX_FN void zmlx_wgmma_hold(float &x) { asm volatile("" : "+f"(x)::"memory"); }
ZMLX_FN void zmlx_wgmma_hold_u(uint &x) { asm volatile("" : "+r"(x)::"memory"); }
#define ZW_F8_(d, i)                                                              \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]),    \
      "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define ZW_F32_(d, i) ZW_F8_(d, i), ZW_F8_(d, i + 8), ZW_F8_(d, i + 16), ZW_F8_(d, i + 24)
#define ZW_OPS32_(d) ZW_F32_(d, 0)
#define ZW_OPS64_(d) ZW_F32_(d, 0), ZW_F32_(d, 32)
#define ZW_REGS32_                                                                 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, " \
  "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define ZW_REGS64_                                                                 \
  ZW_REGS32_ ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "  \
             "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, " \
             "%59, %60, %61, %62, %63"
/* d (64 x N) = (acc ? d : 0) + A B^T, A and B K-major descriptors. */
#define ZMLX_WGMMA_SS_(NAME, N, TY, REGS, OPS, IA, IB, IS)                         \
  ZMLX_FN void NAME(float *d, zmlx_wgmma_desc_t a, zmlx_wgmma_desc_t b, int acc) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IS ", 0;\n"                 \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" REGS \
                 "}, %" #IA ", %" #IB ", p, 1, 1, 0, 0;\n}\n"                     \
                 : OPS(d) : "l"(a), "l"(b), "r"(acc));                             \
  }
/* d (64 x N) += A B, A four registers a lane, B an N-major descriptor. */
#define ZMLX_WGMMA_RS_(NAME, N, TY, REGS, OPS, I0, I1, I2, I3, IB)                \
  ZMLX_FN void NAME(float *d, const uint *a, zmlx_wgmma_desc_t b) {                \
    asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" REGS \
                 "}, {%" #I0 ", %" #I1 ", %" #I2 ", %" #I3 "}, %" #IB ", 1, 1, 1, 1;\n" \
                 : OPS(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));   \
  }
ZMLX_WGMMA_SS_(zmlx_wgmma_m64n64k16_bf16_ss, 64, "bf16", ZW_REGS32_, ZW_OPS32_, 32, 33, 34)
ZMLX_WGMMA_SS_(zmlx_wgmma_m64n64k16_f16_ss, 64, "f16", ZW_REGS32_, ZW_OPS32_, 32, 33, 34)
ZMLX_WGMMA_SS_(zmlx_wgmma_m64n128k16_bf16_ss, 128, "bf16", ZW_REGS64_, ZW_OPS64_, 64, 65, 66)
ZMLX_WGMMA_SS_(zmlx_wgmma_m64n128k16_f16_ss, 128, "f16", ZW_REGS64_, ZW_OPS64_, 64, 65, 66)
ZMLX_WGMMA_RS_(zmlx_wgmma_m64n64k16_bf16_rs_t, 64, "bf16", ZW_REGS32_, ZW_OPS32_, 32, 33, 34, 35, 36)
ZMLX_WGMMA_RS_(zmlx_wgmma_m64n64k16_f16_rs_t, 64, "f16", ZW_REGS32_, ZW_OPS32_, 32, 33, 34, 35, 36)
ZMLX_WGMMA_RS_(zmlx_wgmma_m64n128k16_bf16_rs_t, 128, "bf16", ZW_REGS64_, ZW_OPS64_, 64, 65, 66, 67, 68)
ZMLX_WGMMA_RS_(zmlx_wgmma_m64n128k16_f16_rs_t, 128, "f16", ZW_REGS64_, ZW_OPS64_, 64, 65, 66, 67, 68)
#else
#define ZMLX_HAS_WGMMA 0
#endif

/* Bit casts, count trailing zeros (32 for 0), and an unroll hint. */
ZMLX_FN float zmlx_as_float(uint u) { return __uint_as_float(u); }
ZMLX_FN uint zmlx_as_uint(float f) { return __float_as_uint(f); }
ZMLX_FN int zmlx_ctz(uint m) { return m ? __ffs((int)m) - 1 : 32; }
#define ZMLX_UNROLL _Pragma("unroll")

/* ------------------------------------------------------------------- math */
/* CUDA C++ already has float overloads of exp, log, tanh, rsqrt, erf, pow,
 * fmin, ... (checked: none of them goes through double), so the dialect's
 * math names need no definitions here. */

/* e^x through the SFU (MUFU.EX2): 2 + 1.16|x| ulp; for row kernels that
 * compute one per element and would otherwise be bound by expf. */
ZMLX_FN float zmlx_fast_exp(float x) { return __expf(x); }
ZMLX_FN float zmlx_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
ZMLX_FN float zmlx_silu(float x) { return x / (1.0f + expf(-x)); }
ZMLX_FN float zmlx_relu(float x) { return x < 0.0f ? 0.0f : x; } /* keeps NaN */

ZMLX_FN float zmlx_gelu_tanh(float x) {
  const float k = 0.7978845608028654f; /* sqrt(2/pi) */
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

ZMLX_FN float zmlx_gelu_erf(float x) {
  return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

/* log(1 + e^x) without overflow for large x or lost digits for small. */
ZMLX_FN float zmlx_softplus(float x) {
  return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

#endif /* ZMLX_CUDA_PRELUDE */
