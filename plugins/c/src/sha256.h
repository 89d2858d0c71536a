/* SHA-256 (FIPS 180-4), for event ids: no dependency a wasm32 C build
 * would have to find. */
#ifndef FRESHET_SHA256_H
#define FRESHET_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Writes the digest of `len` bytes at `data` into `digest`. */
void sha256(const void *data, size_t len, uint8_t digest[32]);

#endif
