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

/* Character -> nibble, or SID_BAD for anything that is not a hex digit (NUL included). Parsing
 * looks each character up and tests the bad bit, so no branch depends on "digit or letter"
 * (random ids mispredicted about half of those). */
#define SID_BAD 0x10
#define SID_ROW_BAD                                                                               \
	SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, \
		SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD, SID_BAD
static const uint8_t sid_hex[] = {
	SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD, /* 0x00-0x2f */
	0,           1,           2,           3,           4,           5,           6,
	7,           8,           9,           SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,
	SID_BAD,     SID_BAD,     SID_BAD,     10,          11,          12,          13,
	14,          15, /* A-F */
	SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,
	SID_BAD,     SID_BAD,     SID_ROW_BAD, /* 0x50-0x5f */
	SID_BAD,     10,          11,          12,          13,          14,          15, /* a-f */
	SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,     SID_BAD,
	SID_BAD,     SID_BAD,     SID_ROW_BAD, /* 0x70-0x7f */
	SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD, SID_ROW_BAD,
	SID_ROW_BAD, /* 0x80-0xff */
};
_Static_assert(sizeof sid_hex == 256, "one entry per byte value");

int sid_parse(const char *text, uint8_t out[SHMB_SID_BYTES])
{
	if (!text)
		return SHMB_EINVAL;
	const unsigned char *t = (const unsigned char *)text;
	/* A lookup per character and a test of the bad bit after each, so no byte after the first
	 * bad one (the NUL of a short string) is ever read. For a valid id the test is always false
	 * and predicted perfectly: no branch depends on which hex digit a character is. */
	for (int i = 0; i < SHMB_SID_BYTES; i++) {
		uint8_t hi = sid_hex[t[2 * i]];
		if (hi & SID_BAD)
			return SHMB_EINVAL;
		uint8_t lo = sid_hex[t[2 * i + 1]];
		if (lo & SID_BAD)
			return SHMB_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return t[2 * SHMB_SID_BYTES] == '\0' ? 0 : SHMB_EINVAL;
}
