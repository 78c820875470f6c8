/* image.h - the session image a "restore" request carries in a memfd (docs/protocol.md,
 * "restore"): what shmb_session_restore (client/multihost.c) writes and the broker
 * (broker/restore.c) reads. One control message is at most SHMB_CTL_MAX_MSG bytes, less than a
 * full ring in base64, so the events and attributes travel in a memfd passed with
 * SCM_RIGHTS, and the session's scalar fields in the request's JSON.
 *
 * Both ends run on one host (the socket is a Unix socket), so the integers are in host byte
 * order. Every record starts 8-byte aligned: the bytes after a header are padded to a multiple
 * of 8 with zeros. The broker trusts nothing in it: each count and length is checked against
 * the bytes left and the segment's limits before it is used, and the whole file against
 * img_bound() before it is read. */
#ifndef SHMB_IMAGE_H
#define SHMB_IMAGE_H

#include <stdint.h>

#include "layout.h"

/* "SHMBIMG1" in memory order on a little-endian host. */
#define SHMB_IMG_MAGIC UINT64_C(0x31474d49424d4853)

struct shmb_img_head {
	uint64_t magic;
	uint32_t n_events; /* struct shmb_img_event records follow, ids ascending */
	uint32_t n_attrs;  /* then struct shmb_img_attr records */
};

struct shmb_img_event {
	uint64_t id;
	int64_t ts_ms;
	uint32_t stream;
	uint16_t kind;
	uint16_t flags; /* SHMB_EV_GAP (then len is 0), nothing else */
	uint32_t len;   /* payload bytes that follow, padded to 8 */
	uint32_t pad;   /* 0 */
};

struct shmb_img_attr {
	uint32_t key_len; /* key bytes, then val_len value bytes, then padding to 8 */
	uint32_t val_len;
};

_Static_assert(sizeof(struct shmb_img_head) == 16, "image header");
_Static_assert(sizeof(struct shmb_img_event) == 32, "image event header");
_Static_assert(sizeof(struct shmb_img_attr) == 8, "image attribute header");

static inline uint64_t img_pad8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

/* The largest image a segment of this configuration can take: at most ring_events events in
 * the ring's window (the library leaves older ones out before sending) whose payloads take
 * whole slots of ring_bytes / ring_events bytes without overlapping, so at most ring_bytes in
 * all; at most attr_keys attributes whose blocks (8-byte header, key, value) fit attr_bytes.
 * Each record may add 7 bytes of padding. */
static inline uint64_t img_bound(const struct shmb_seg_config *cfg)
{
	return sizeof(struct shmb_img_head) +
	       (uint64_t)cfg->ring_events * (sizeof(struct shmb_img_event) + 7) + cfg->ring_bytes +
	       (uint64_t)cfg->attr_keys * (sizeof(struct shmb_img_attr) + 7) + cfg->attr_bytes;
}

#endif
