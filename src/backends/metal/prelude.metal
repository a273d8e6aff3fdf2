/*
 * zmlx Metal prelude: the portable kernel dialect (docs/DIALECT.md) spelled
 * in the Metal Shading Language. zmlx only emits this source (for MLX
 * users on Apple silicon); it never compiles or runs it.
 *
 * `threadgroup`, `device`, simd_sum/simd_max/simd_min and the float math
 * functions are native Metal; this file adds the zmlx names on top and
 * the few math functions Metal lacks (erf, erfc, log1p, expm1).
 */
#ifndef ZMLX_METAL_PRELUDE
#define ZMLX_METAL_PRELUDE

#include <metal_stdlib>
using namespace metal;

/* ------------------------------------------------------------------ types */

typedef long zmlx_i64;
typedef ulong zmlx_u64;
/* 16-bit floats are storage only: arithmetic happens in float after a load. */
typedef ushort zmlx_half;
typedef ushort zmlx_bf16;

/* Same layout as the host's zmlx_kshape / zmlx_kstrides. */
struct zmlx_kshape { int v[8]; };
struct zmlx_kstrides { long v[8]; };

/* ------------------------------------------------------------- qualifiers */

#define ZMLX_FN static inline
#define zmlx_barrier() threadgroup_barrier(mem_flags::mem_threadgroup)
/* zmlx_dyn_shared is the kernel's [[threadgroup(0)]] parameter, present
 * when the body uses dynamic shared memory. */
#define zmlx_dynamic_shared(T) ((threadgroup T *)zmlx_dyn_shared)
/* A pointer to threadgroup memory (see the CUDA prelude for why it is a macro). */
#define zmlx_threadgroup_ptr(T) threadgroup T *

/* -------------------------------------------------------------- constants */

#define ZMLX_INF INFINITY
#define ZMLX_NAN NAN
#define ZMLX_FLT_MAX FLT_MAX

/* -------------------------------------------------- 16-bit float storage */

ZMLX_FN float zmlx_half_to_float(zmlx_half h) { return (float)as_type<half>(h); }
/* Metal's float -> half conversion rounds to nearest even. */
ZMLX_FN zmlx_half zmlx_float_to_half(float f) { return as_type<ushort>((half)f); }
ZMLX_FN float zmlx_bf16_to_float(zmlx_bf16 b) { return as_type<float>(((uint)b) << 16); }

/* Round to nearest even on the bits; a NaN stays a (quiet) NaN instead of
 * rounding up into infinity. */
ZMLX_FN zmlx_bf16 zmlx_float_to_bf16(float f) {
  uint u = as_type<uint>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (zmlx_bf16)((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (zmlx_bf16)(u >> 16);
}

/* ------------------------------------------------------- loads and stores */
/* Macros so they work on device, constant and threadgroup pointers alike. */

#define zmlx_load_f32(p, i) ((float)(p)[i])
#define zmlx_load_f16(p, i) zmlx_half_to_float((p)[i])
#define zmlx_load_bf16(p, i) zmlx_bf16_to_float((p)[i])
#define zmlx_load_i32(p, i) ((int)(p)[i])
#define zmlx_load_u32(p, i) ((uint)(p)[i])
#define zmlx_load_i64(p, i) ((zmlx_i64)(p)[i])
#define zmlx_load_u8(p, i) ((uchar)(p)[i])
#define zmlx_load_i8(p, i) ((char)(p)[i])
#define zmlx_load_bool(p, i) ((uchar)((p)[i] != 0))

#define zmlx_store_f32(p, i, v) ((p)[i] = (float)(v))
#define zmlx_store_f16(p, i, v) ((p)[i] = zmlx_float_to_half((float)(v)))
#define zmlx_store_bf16(p, i, v) ((p)[i] = zmlx_float_to_bf16((float)(v)))
#define zmlx_store_i32(p, i, v) ((p)[i] = (int)(v))
#define zmlx_store_u32(p, i, v) ((p)[i] = (uint)(v))
#define zmlx_store_i64(p, i, v) ((p)[i] = (zmlx_i64)(v))
#define zmlx_store_u8(p, i, v) ((p)[i] = (uchar)(v))
#define zmlx_store_i8(p, i, v) ((p)[i] = (char)(v))
#define zmlx_store_bool(p, i, v) ((p)[i] = (uchar)((v) != 0))

/* ---------------------------------------------------------------- atomics */
/* Outputs are plain device arrays; the atomic view is a cast. Relaxed
 * order: the dialect only promises that every update lands. */

#define zmlx_atomic_add_f32(p, i, v) \
  ((void)atomic_fetch_add_explicit((device atomic_float *)&(p)[i], (float)(v), memory_order_relaxed))
#define zmlx_atomic_add_i32(p, i, v) \
  ((void)atomic_fetch_add_explicit((device atomic_int *)&(p)[i], (int)(v), memory_order_relaxed))
#define zmlx_atomic_add_u32(p, i, v) \
  ((void)atomic_fetch_add_explicit((device atomic_uint *)&(p)[i], (uint)(v), memory_order_relaxed))
#define zmlx_atomic_max_i32(p, i, v) \
  ((void)atomic_fetch_max_explicit((device atomic_int *)&(p)[i], (int)(v), memory_order_relaxed))
#define zmlx_atomic_min_i32(p, i, v) \
  ((void)atomic_fetch_min_explicit((device atomic_int *)&(p)[i], (int)(v), memory_order_relaxed))

/* ------------------------------------------------------------------- SIMD */

#define zmlx_simd_sum(v) simd_sum((float)(v))
#define zmlx_simd_max(v) simd_max((float)(v))
#define zmlx_simd_min(v) simd_min((float)(v))

/* Lane exchange of 32-bit unsigned values within a SIMD group, bit casts,
 * count trailing zeros (32 for 0) and an unroll hint (docs/DIALECT.md). */
#define zmlx_simd_shuffle_xor(v, mask) simd_shuffle_xor((uint)(v), (ushort)(mask))
#define zmlx_simd_broadcast(v, lane) simd_broadcast((uint)(v), (ushort)(lane))
#define zmlx_as_float(u) as_type<float>((uint)(u))
#define zmlx_as_uint(f) as_type<uint>((float)(f))
#define zmlx_ctz(m) ((int)ctz((uint)(m)))
#define ZMLX_UNROLL

/* ------------------------------------------------------------------- math */
/* Metal has no erf, erfc, log1p or expm1. They are defined under zmlx_
 * names and mapped with function-like macros, which also stays correct if
 * a later Metal version adds its own. */

/* erf: minimax polynomials, |error| about 1 ulp (the form used by MLX). */
ZMLX_FN float zmlx_erf_(float a) {
  const float t = fabs(a);
  const float s = a * a;
  float r;
  if (t > 0.927734375f) {
    r = fma(-1.72853470e-5f, t, 3.83197126e-4f);
    const float u = fma(-3.88396438e-3f, t, 2.42546219e-2f);
    r = fma(r, s, u);
    r = fma(r, t, -1.06777877e-1f);
    r = fma(r, t, -6.34846687e-1f);
    r = fma(r, t, -1.28717512e-1f);
    r = fma(r, t, -t);
    r = 1.0f - exp(r);
    r = copysign(r, a);
  } else {
    r = -5.96761703e-4f;
    r = fma(r, s, 4.99119423e-3f);
    r = fma(r, s, -2.67681349e-2f);
    r = fma(r, s, 1.12819925e-1f);
    r = fma(r, s, -3.76125336e-1f);
    r = fma(r, s, 1.28379166e-1f);
    r = fma(r, a, a);
  }
  return r;
}

/* erfc: Chebyshev fit (Numerical Recipes' erfcc, relative error < 1.2e-7)
 * so the tail keeps its digits; 1 - erf(x) would round to 0 past x ~ 4. */
ZMLX_FN float zmlx_erfc_(float x) {
  const float z = fabs(x);
  if (z > 10.0f) return x > 0.0f ? 0.0f : 2.0f; /* erfc(10) < the least float */
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float p = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
                  t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
                  t * (-0.82215223f + t * 0.17087277f))))))));
  /* e^(-z^2) with z^2 split into its float value and rounding error (fma)
   * and p kept apart: folded into one argument, their rounding would cost
   * several digits once z^2 is large. */
  const float z2 = z * z;
  const float z2_err = fma(z, z, -z2);
  const float r = t * exp(-z2) * exp(p) * (1.0f - z2_err);
  return x >= 0.0f ? r : 2.0f - r;
}

/* log1p: log(u) * x / (u - 1) cancels the rounding of u = 1 + x. */
ZMLX_FN float zmlx_log1p_(float x) {
  const float u = 1.0f + x;
  if (u == 1.0f) return x;
  if (isinf(u)) return u;
  return log(u) * (x / (u - 1.0f));
}

/* expm1: (u - 1) * x / log(u) cancels the rounding of u = e^x. */
ZMLX_FN float zmlx_expm1_(float x) {
  const float u = exp(x);
  if (u == 1.0f) return x;
  const float um1 = u - 1.0f;
  if (um1 == -1.0f || isinf(u)) return um1;
  return um1 * (x / log(u));
}

#define erf(x) zmlx_erf_(x)
#define erfc(x) zmlx_erfc_(x)
#define log1p(x) zmlx_log1p_(x)
#define expm1(x) zmlx_expm1_(x)

/* e^x for row kernels that may trade a few ulp for speed (CUDA: __expf). */
ZMLX_FN float zmlx_fast_exp(float x) { return fast::exp(x); }
ZMLX_FN float zmlx_sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }
ZMLX_FN float zmlx_silu(float x) { return x / (1.0f + exp(-x)); }
ZMLX_FN float zmlx_relu(float x) { return x < 0.0f ? 0.0f : x; } /* keeps NaN */

ZMLX_FN float zmlx_gelu_tanh(float x) {
  const float k = 0.7978845608028654f; /* sqrt(2/pi) */
  return 0.5f * x * (1.0f + tanh(k * (x + 0.044715f * x * x * x)));
}

ZMLX_FN float zmlx_gelu_erf(float x) { return 0.5f * x * (1.0f + erf(x * 0.7071067811865476f)); }

/* log(1 + e^x) without overflow for large x or lost digits for small. */
ZMLX_FN float zmlx_softplus(float x) { return fmax(x, 0.0f) + log1p(exp(-fabs(x))); }

#endif /* ZMLX_METAL_PRELUDE */
