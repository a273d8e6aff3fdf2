/* dtype table and host conversions between f32 and the 16-bit floats. */
#include "runtime/internal.h"

#include <string.h>

typedef struct dtype_entry {
  const char *name;
  const char *alias;
  size_t size;
} dtype_entry;

static const dtype_entry dtypes[ZMLX_DTYPE_COUNT] = {
    [ZMLX_BOOL] = {"bool", "bool", 1},  [ZMLX_U8] = {"u8", "uint8", 1},
    [ZMLX_I8] = {"i8", "int8", 1},      [ZMLX_I32] = {"i32", "int32", 4},
    [ZMLX_U32] = {"u32", "uint32", 4},  [ZMLX_I64] = {"i64", "int64", 8},
    [ZMLX_F16] = {"f16", "float16", 2}, [ZMLX_BF16] = {"bf16", "bfloat16", 2},
    [ZMLX_F32] = {"f32", "float32", 4}, [ZMLX_F64] = {"f64", "float64", 8},
};

static int dtype_valid(zmlx_dtype dt) { return (unsigned)dt < ZMLX_DTYPE_COUNT; }

size_t zmlx_dtype_size(zmlx_dtype dt) { return dtype_valid(dt) ? dtypes[dt].size : 0; }

const char *zmlx_dtype_name(zmlx_dtype dt) { return dtype_valid(dt) ? dtypes[dt].name : "?"; }

zmlx_status zmlx_dtype_from_name(const char *name, zmlx_dtype *out) {
  ZMLX_REQUIRE_ARG(name);
  ZMLX_REQUIRE_ARG(out);
  for (int i = 0; i < ZMLX_DTYPE_COUNT; i++) {
    if (!strcmp(name, dtypes[i].name) || !strcmp(name, dtypes[i].alias)) {
      *out = (zmlx_dtype)i;
      return ZMLX_OK;
    }
  }
  if (!strcmp(name, "float") || !strcmp(name, "half") || !strcmp(name, "bfloat")) {
    *out = name[0] == 'f' ? ZMLX_F32 : name[0] == 'h' ? ZMLX_F16 : ZMLX_BF16;
    return ZMLX_OK;
  }
  return zmlxi_fail(ZMLX_ERR_DTYPE, "unknown dtype '%s' (expected bool, u8, i8, i32, u32, i64, "
                                   "f16, bf16, f32 or f64)", name);
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t zmlx_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
  return (uint16_t)(u >> 16);
}

float zmlx_bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

/* IEEE binary16 <-> binary32, round to nearest even, subnormals included. */
uint16_t zmlx_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) /* inf or NaN */
    return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0));
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
  if (abs < 0x38800000u) { /* result is subnormal or zero */
    if (abs < 0x33000000u) return (uint16_t)sign; /* below half the smallest subnormal */
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)(abs >> 23); /* 14..24: value / 2^-24 = mant * 2^-shift */
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13); /* rebias exponent 127 -> 15 */
  uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

float zmlx_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_f32(sign);
    float v = (float)mant * (1.0f / 16777216.0f); /* mant * 2^-24 */
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}
