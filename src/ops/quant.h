/*
 * What src/ops/quant.c shows its verifier (src/check/quant_check.c) beyond
 * the public API.
 */
#ifndef ZMLX_OPS_QUANT_H
#define ZMLX_OPS_QUANT_H

#include "runtime/internal.h"

zmlx_status zmlxi_dequantize_int8_validate(const char *op, zmlx_array *q, zmlx_array *s, zmlx_dtype odt,
                                          zmlx_quant_act act);

zmlx_status zmlxi_dequantize_int4_validate(const char *op, zmlx_array *p, zmlx_array *s, zmlx_array *b,
                                          int group, zmlx_dtype odt, zmlx_quant_act act);

zmlx_status zmlxi_quantize_validate(const char *op, int mode, zmlx_array *x, int group,
                                   zmlx_dtype sdt);

/* out (dense, offset 0, [..., cols]) = act(dequantize). mode 8: b unused. */
zmlx_status zmlxi_dequantize_launch(int mode, zmlx_array *q, zmlx_array *s, zmlx_array *b, int group,
                                   zmlx_quant_act act, zmlx_array *out);

/* Quantize into preallocated dense outputs (b: int4 only). */
zmlx_status zmlxi_quantize_launch(int mode, zmlx_array *x, int group, zmlx_array *q, zmlx_array *s,
                                 zmlx_array *b);

#endif
