/* seg.h - mapping the segment and reaching into it safely.
 *
 * Every process that maps the segment goes through shmb_seg: seg_map() validates the header
 * (magic, version, fingerprint, size, region table) once and copies the configuration into
 * process-local memory, and the accessors below check every index against that private copy.
 * So a header scribbled on after mapping can never steer an accessor out of the mapping: the
 * worst a damaged segment can do is yield wrong-but-in-bounds data, which verify reports. */
#ifndef SHMB_SEG_H
#define SHMB_SEG_H

#include <stddef.h>
#include <stdint.h>

#include <urcu/uatomic.h>

#include "layout.h"

struct shmb_seg {
	uint8_t *base;
	uint64_t size;
	int writable;
	int fd;                     /* -1 when not kept */
	struct shmb_seg_config cfg; /* private copy, validated at map time */
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint32_t flags;       /* header flags at map time */
	uint64_t hash_key[2]; /* the header's hash_key (2.0), copied at map time */
};

/* Name rules for instances: 1..64 characters of [A-Za-z0-9_.-], not starting with '.'.
 * Returns 0 or SHMB_EINVAL. */
int seg_name_valid(const char *name);
/* "/shmb.<name>" into buf. Returns 0 or SHMB_EINVAL. */
int seg_shm_name(const char *name, char *buf, size_t len);

/* Checks a configuration and computes the region table and total size from it.
 * On error returns SHMB_EINVAL and names the offending field in why. */
int seg_layout(const struct shmb_seg_config *cfg, struct shmb_region regions[SHMB_REGION_COUNT],
	       uint64_t *total, char *why, size_t whylen);

/* Validates the header of a mapping of `size` bytes: magic (0 means "not ready"), layout major,
 * fingerprint, sizes, configuration and region table. Returns 0, SHMB_EVERSION,
 * SHMB_ECORRUPT (why says what), or SHMB_EBROKER when the magic is still 0 (not ready). */
int seg_check_header(const void *base, uint64_t size, char *why, size_t whylen);

/* Maps fd (read-only unless writable) and validates it; fills seg. Returns 0 or as
 * seg_check_header, SHMB_EIO for a failed fstat/mmap. seg keeps no reference to fd. */
int seg_map(int fd, int writable, struct shmb_seg *seg, char *why, size_t whylen);
/* Where instance name's segment is: the path its broker wrote into <runtime dir>/<name>.segment
 * (the "path file", written when the broker has a segment_dir: broker/segment.c), or
 * /dev/shm/shmb.<name> when there is no path file. Returns 1 (a file in a segment_dir), 0
 * (/dev/shm, reached with shm_open), SHMB_EACCES (the path file or a directory on the way fails
 * the trust checks of trust.h) or SHMB_ECORRUPT (the path file does not hold one absolute path
 * ending in /shmb.<name>); why says which file and what is wrong. */
int seg_locate(const char *name, char *path, size_t len, char *why, size_t whylen);
/* Opens the segment seg_locate finds read-only (or read-write) and maps it. Returns as seg_map,
 * as seg_locate, or SHMB_ENOENT when no such segment exists, SHMB_EACCES when not permitted
 * (a segment_dir file must be a regular tmpfs file of a trusted uid). */
int seg_open_name(const char *name, int writable, struct shmb_seg *seg, char *why, size_t whylen);
void seg_unmap(struct shmb_seg *seg);
/* Maps the pages of the session index (buckets and records) into this process's page tables
 * now (MADV_POPULATE_WRITE), instead of a page fault on the first lookup of each 4 KiB page
 * (1.7-7.9 us each, measured). Costs about 0.1-0.3 s per GiB at attach and nothing when the
 * kernel lacks it (then the faults happen as before). Best effort, no error. */
void seg_prefault_index(const struct shmb_seg *seg);

static inline struct shmb_seg_header *seg_hdr(const struct shmb_seg *seg)
{
	return (struct shmb_seg_header *)seg->base;
}

static inline struct shmb_counter *seg_counter(const struct shmb_seg *seg, uint32_t i)
{
	if (i >= SHMB_COUNTER_COUNT)
		return NULL;
	return (struct shmb_counter *)(seg->base + seg->regions[SHMB_REGION_COUNTERS].off) + i;
}

static inline struct shmb_worker *seg_worker(const struct shmb_seg *seg, uint32_t w)
{
	if (w >= seg->cfg.max_workers)
		return NULL;
	return (struct shmb_worker *)(seg->base + seg->regions[SHMB_REGION_WORKERS].off) + w;
}

static inline struct shmb_reader *seg_reader(const struct shmb_seg *seg, uint32_t w, uint32_t k)
{
	if (w >= seg->cfg.max_workers || k >= seg->cfg.readers_per_worker)
		return NULL;
	return (struct shmb_reader *)(seg->base + seg->regions[SHMB_REGION_READERS].off) +
	       (uint64_t)w * seg->cfg.readers_per_worker + k;
}

/* Statistics of worker w: its slot's line 2 plus the per-thread counters of its reader slots
 * (layout 1.1). Lock-free reads of counters others write: a snapshot, not a transaction. */
struct seg_worker_stats {
	uint64_t events_published;
	uint64_t sessions_opened;
};

static inline struct seg_worker_stats seg_worker_stats(const struct shmb_seg *seg, uint32_t w)
{
	struct seg_worker_stats st = { 0, 0 };
	const struct shmb_worker *wk = seg_worker(seg, w);
	if (!wk)
		return st;
	st.events_published = uatomic_read(&wk->events_published);
	st.sessions_opened = uatomic_read(&wk->sessions_opened);
	for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
		const struct shmb_reader *r = seg_reader(seg, w, k);
		st.events_published += uatomic_read(&r->events_published);
		st.sessions_opened += uatomic_read(&r->sessions_opened);
	}
	return st;
}

/* Zeroes what seg_worker_stats sums (the broker, when it retires or admits worker w: no thread
 * of w runs then). */
static inline void seg_worker_stats_clear(const struct shmb_seg *seg, uint32_t w)
{
	struct shmb_worker *wk = seg_worker(seg, w);
	if (!wk)
		return;
	uatomic_set(&wk->events_published, 0);
	uatomic_set(&wk->sessions_opened, 0);
	for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
		struct shmb_reader *r = seg_reader(seg, w, k);
		uatomic_set(&r->events_published, 0);
		uatomic_set(&r->sessions_opened, 0);
	}
}

static inline uint32_t *seg_bucket(const struct shmb_seg *seg, uint32_t b)
{
	if (b >= seg->cfg.n_buckets)
		return NULL;
	return (uint32_t *)(seg->base + seg->regions[SHMB_REGION_BUCKETS].off) + b;
}

static inline struct shmb_session_rec *seg_rec(const struct shmb_seg *seg, uint32_t idx)
{
	if (idx >= seg->cfg.max_sessions)
		return NULL;
	return (struct shmb_session_rec *)(seg->base + seg->regions[SHMB_REGION_SESSIONS].off) +
	       idx;
}

/* Record of a chain link (index + 1); NULL for SHMB_NIL or an out-of-range link. */
static inline struct shmb_session_rec *seg_link(const struct shmb_seg *seg, uint32_t link)
{
	if (link == SHMB_NIL)
		return NULL;
	return seg_rec(seg, link - 1);
}

static inline uint32_t seg_rec_index(const struct shmb_seg *seg, const struct shmb_session_rec *r)
{
	return (uint32_t)(r - (struct shmb_session_rec *)(seg->base +
							  seg->regions[SHMB_REGION_SESSIONS].off));
}

static inline struct shmb_event_desc *seg_desc(const struct shmb_seg *seg, uint32_t idx,
					       uint64_t id)
{
	if (idx >= seg->cfg.max_sessions)
		return NULL;
	return (struct shmb_event_desc *)(seg->base + seg->regions[SHMB_REGION_EVENTS].off) +
	       (uint64_t)idx * seg->cfg.ring_events + (id & (seg->cfg.ring_events - 1));
}

/* Start of session idx's payload ring (ring_bytes long). */
static inline uint8_t *seg_data(const struct shmb_seg *seg, uint32_t idx)
{
	if (idx >= seg->cfg.max_sessions)
		return NULL;
	return seg->base + seg->regions[SHMB_REGION_DATA].off + (uint64_t)idx * seg->cfg.ring_bytes;
}

/* Worker w's ready bitmaps (2.0, layout.h): l0 words first, then l1, then l2, each level's
 * count from shmb_ready_l*_words(max_sessions); shmb_ready_stride bytes in all. NULL when w is
 * out of range. */
static inline uint64_t *seg_ready(const struct shmb_seg *seg, uint32_t w)
{
	if (w >= seg->cfg.max_workers)
		return NULL;
	return (uint64_t *)(seg->base + seg->regions[SHMB_REGION_READY].off +
			    (uint64_t)w * shmb_ready_stride(seg->cfg.max_sessions));
}

static inline uint32_t seg_bucket_of(const struct shmb_seg *seg, uint32_t hash)
{
	return hash & (seg->cfg.n_buckets - 1);
}

/* Default configuration (the broker's built-in defaults). */
void seg_config_defaults(struct shmb_seg_config *cfg);
/* Fills derived fields: n_buckets (when 0) = the power of two >= max_sessions. */
void seg_config_derive(struct shmb_seg_config *cfg);

#endif
