/* sid.c - session id generation, text form and parsing (see sid.h). */
#include "sid.h"

#include <errno.h>
#include <sys/random.h>

#include "shmb.h"

int sid_generate(uint8_t out[SHMB_SID_BYTES])
{
	size_t got = 0;
	while (got < SHMB_SID_BYTES) {
		ssize_t n = getrandom(out + got, SHMB_SID_BYTES - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return SHMB_EIO;
		}
		got += (size_t)n;
	}
	return 0;
}

void sid_format(const uint8_t sid[SHMB_SID_BYTES], char out[2 * SHMB_SID_BYTES + 1])
{
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < SHMB_SID_BYTES; i++) {
		out[2 * i] = hex[sid[i] >> 4];
		out[2 * i + 1] = hex[sid[i] & 15];
	}
	out[2 * SHMB_SID_BYTES] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int sid_parse(const char *text, uint8_t out[SHMB_SID_BYTES])
{
	if (!text)
		return SHMB_EINVAL;
	for (int i = 0; i < SHMB_SID_BYTES; i++) {
		int hi = hexval(text[2 * i]);
		if (hi < 0)
			return SHMB_EINVAL;
		int lo = hexval(text[2 * i + 1]);
		if (lo < 0)
			return SHMB_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return text[2 * SHMB_SID_BYTES] == '\0' ? 0 : SHMB_EINVAL;
}
