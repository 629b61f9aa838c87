/* Little-endian field access for the shim wire formats (shuttle_abi.c, shuttle_invoke_abi.c):
 * every integer moves byte by byte, so the layout never depends on the compiler or the host's
 * byte order. Internal to driver-shim/abi; plain C99. */
#ifndef SHUTTLE_DRIVER_SHIM_ABI_LE_H_
#define SHUTTLE_DRIVER_SHIM_ABI_LE_H_

#include <stdint.h>

static inline uint16_t Get16(const unsigned char* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint32_t Get32(const unsigned char* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void Put16(unsigned char* p, uint16_t v) {
  p[0] = (unsigned char)(v & 0xff);
  p[1] = (unsigned char)(v >> 8);
}

static inline void Put32(unsigned char* p, uint32_t v) {
  p[0] = (unsigned char)(v & 0xff);
  p[1] = (unsigned char)((v >> 8) & 0xff);
  p[2] = (unsigned char)((v >> 16) & 0xff);
  p[3] = (unsigned char)(v >> 24);
}

#endif /* SHUTTLE_DRIVER_SHIM_ABI_LE_H_ */
