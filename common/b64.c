/* b64.c - base64 decoding (b64.h). Strict: the standard alphabet, length a multiple of 4, '='
 * only as the last one or two characters, nothing else (no whitespace). */
#include <string.h>

#include "b64.h"

static int digit(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

long b64_decode(const char *s, uint8_t *out, size_t cap)
{
	size_t n = strlen(s), o = 0;
	if (n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char c = s[i + k];
			int d = digit(c);
			if (c == '=' && i + 4 == n && k >= 2) {
				pad++;
				d = 0;
			} else if (d < 0 || pad) {
				return -1;
			}
			v = v << 6 | (uint32_t)d;
		}
		for (int k = 0; k < 3 - pad; k++, o++) {
			if (!out)
				continue;
			if (o >= cap)
				return -1;
			out[o] = (uint8_t)(v >> (16 - 8 * k));
		}
	}
	return (long)o;
}
