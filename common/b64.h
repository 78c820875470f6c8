/* b64.h - base64 decoding (RFC 4648, padded) for the dump format's payloads and attribute values,
 * shared by the broker's restore (broker/restore.c) and shmctl restore (tools/shmctl_dump.c).
 * Encoding is shmctl's alone (shmctl_base64). */
#ifndef SHMB_B64_H
#define SHMB_B64_H

#include <stddef.h>
#include <stdint.h>

/* Decodes the NUL-terminated s into out (cap bytes; out NULL: only checks s). Returns the
 * decoded length, or -1 when s is not padded base64 or decodes to more than cap bytes. */
long b64_decode(const char *s, uint8_t *out, size_t cap);

#endif
