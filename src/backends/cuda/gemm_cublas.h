/* The CUDA backend's library GEMM (gemm_cublas.c): cuBLAS through dlopen.
 * Calls run with the device's context current (cuda.c enters it). */
#ifndef ZMLX_BACKENDS_CUDA_GEMM_CUBLAS_H
#define ZMLX_BACKENDS_CUDA_GEMM_CUBLAS_H

#include "runtime/internal.h"

#define ZMLXI_CUBLAS_MAX_DEVICES 64

zmlx_status zmlxi_cublas_gemm(int dev, void *stream, const zmlx_gemm_args *g);
/* "cuBLAS 13.0 (f32, f16, bf16)", or NULL when libcublas does not load. */
const char *zmlxi_cublas_library(int dev);
/* f32, f16 and bf16 (bits by zmlx_dtype) once libcublas loads, else 0. */
unsigned zmlxi_cublas_dtypes(int dev);
/* 1 when cuBLAS keeps split-K reductions in f32 (the handle's math mode). */
int zmlxi_cublas_rounds_once(int dev);
/* Destroy the handles (zmlx_shutdown). */
void zmlxi_cublas_shutdown(void);

#endif
