/* The envelope of the OpenCL backend's cached program binaries (ocl.h). */
#ifdef ZMLX_HAVE_OPENCL

#include <stdlib.h>
#include <string.h>

#include "backends/opencl/ocl.h"

/* Binaries from compile() travel in an envelope that load() verifies
 * before the driver sees a byte, because drivers do not survive damaged
 * binaries: PoCL 3.1 asserts or segfaults in clCreateProgramWithBinary on a
 * truncated or bit-flipped one. Layout (integers little-endian):
 *    0  magic "ZMLXOCL1"
 *    8  u64 payload bytes
 *   16  u64 FNV-1a of the payload
 *   24  u64 identity hash of the device that built it
 *   32  the driver's program binary (CL_PROGRAM_BINARIES) */
#define ENVELOPE_MAGIC "ZMLXOCL1"

static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

unsigned char *zmlxi_ocl_envelope_alloc(size_t payload_size) {
  return malloc(OCL_ENVELOPE_HEADER + payload_size);
}

void zmlxi_ocl_envelope_seal(unsigned char *env, size_t payload_size, uint64_t identity_hash) {
  memcpy(env, ENVELOPE_MAGIC, 8);
  put_u64(env + 8, payload_size);
  put_u64(env + 16, zmlxi_fnv1a64(env + OCL_ENVELOPE_HEADER, payload_size));
  put_u64(env + 24, identity_hash);
}

/* The driver binary inside a verified envelope. */
zmlx_status zmlxi_ocl_envelope_open(uint64_t identity_hash, const void *binary, size_t size,
                              const unsigned char **payload, size_t *payload_size) {
  const unsigned char *b = binary;
  if (size < OCL_ENVELOPE_HEADER || memcmp(b, ENVELOPE_MAGIC, 8) != 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "not a zmlx OpenCL binary (%zu bytes, no header)",
                     size);
  uint64_t n = get_u64(b + 8);
  if (n != size - OCL_ENVELOPE_HEADER || n == 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "corrupt zmlx OpenCL binary: header says %llu bytes, %zu present",
                     (unsigned long long)n, size - OCL_ENVELOPE_HEADER);
  if (get_u64(b + 16) != zmlxi_fnv1a64(b + OCL_ENVELOPE_HEADER, (size_t)n))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "corrupt zmlx OpenCL binary: checksum mismatch");
  if (get_u64(b + 24) != identity_hash)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "OpenCL binary was built for another device, driver or compiler");
  *payload = b + OCL_ENVELOPE_HEADER;
  *payload_size = (size_t)n;
  return ZMLX_OK;
}

#else
typedef int zmlx_opencl_envelope_disabled;
#endif /* ZMLX_HAVE_OPENCL */
