/* test_evring.c - white-box tests of the event ring protocol (common/evring.c) on a segment
 * built in process memory: claim/commit, validated reads, eviction by descriptors and by bytes,
 * gap records, and concurrent publishers and readers on threads. The multi-process behaviour
 * through libshmb and the broker is covered by test_events.c. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <urcu/uatomic.h>

#include "evring.h"
#include "seg.h"
#include "shmb.h"

static struct shmb_seg seg;

static void build(uint32_t ring_events, uint32_t ring_bytes)
{
	struct shmb_seg_config cfg;
	seg_config_defaults(&cfg);
	cfg.max_sessions = 2;
	cfg.max_workers = 2;
	cfg.ring_events = ring_events;
	cfg.ring_bytes = ring_bytes;
	cfg.max_event_bytes = ring_bytes;
	seg_config_derive(&cfg);
	uint64_t total;
	char why[200];
	cr_assert_eq(seg_layout(&cfg, seg.regions, &total, why, sizeof why), 0, "%s", why);
	seg.base = aligned_alloc(SHMB_PAGE, total);
	cr_assert(seg.base);
	memset(seg.base, 0, total);
	seg.size = total;
	seg.cfg = cfg;
}

static void teardown(void)
{
	free(seg.base);
	seg.base = NULL;
}

/* Payload of event id: len derived from id, bytes derived from id and position. */
static uint32_t payload(uint64_t id, uint32_t tag, uint8_t *buf, uint32_t maxlen)
{
	uint32_t len = (uint32_t)(id * 7 + tag) % maxlen;
	for (uint32_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(id * 31 + i * 7 + tag);
	return len;
}

static int payload_ok(uint64_t id, uint32_t tag, const uint8_t *buf, uint32_t len, uint32_t maxlen)
{
	uint8_t want[4096];
	return payload(id, tag, want, maxlen) == len && memcmp(want, buf, len) == 0;
}

Test(evring, sequential_publish_and_read, .fini = teardown)
{
	build(16, 1024);
	struct shmb_session_rec *r = seg_rec(&seg, 1);
	uint8_t buf[4096], out[4096];
	for (uint64_t id = 1; id <= 10; id++) {
		uint32_t len = payload(id, 0, buf, 64);
		cr_assert_eq(evr_publish(&seg, 1, r, 3, 9, buf, len, 123, NULL, NULL, NULL), id);
	}
	cr_assert_eq(evr_oldest(&seg, 1, r), 1);
	for (uint64_t id = 1; id <= 10; id++) {
		struct shmb_event_desc d;
		cr_assert_eq(evr_read(&seg, 1, r, id, &d, out, sizeof out), EVR_OK, "id %lu", id);
		cr_assert(payload_ok(id, 0, out, d.len, 64));
		cr_assert_eq(d.stream, 3);
		cr_assert_eq(d.kind, 9);
		cr_assert_eq(d.ts_ms, 123);
	}
	struct shmb_event_desc d;
	cr_assert_eq(evr_read(&seg, 1, r, 11, &d, out, sizeof out), EVR_NOTYET);
	/* The other session's ring is untouched. */
	cr_assert_eq(evr_oldest(&seg, 0, seg_rec(&seg, 0)), 0);
}

Test(evring, descriptor_eviction_and_oldest, .fini = teardown)
{
	build(16, 4096);
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint8_t buf[64] = { 0 }, out[64];
	for (uint64_t id = 1; id <= 40; id++)
		evr_publish(&seg, 0, r, 0, 0, buf, 8, 0, NULL, NULL, NULL);
	cr_assert_eq(evr_oldest(&seg, 0, r), 25);
	struct shmb_event_desc d;
	cr_assert_eq(evr_read(&seg, 0, r, 24, &d, out, sizeof out), EVR_EVICTED);
	cr_assert_eq(evr_read(&seg, 0, r, 25, &d, out, sizeof out), EVR_OK);
	cr_assert_eq(evr_read(&seg, 0, r, 40, &d, out, sizeof out), EVR_OK);
}

Test(evring, large_events_take_several_slots, .fini = teardown)
{
	build(16, 256); /* 16-byte slots */
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint8_t buf[100], out[256];
	memset(buf, 0xab, sizeof buf);
	/* 100 bytes take 7 slots: ids 1, 8, 15 (the third wraps around the ring's end). */
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, 100, 0, NULL, NULL, NULL), 1);
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, 100, 0, NULL, NULL, NULL), 8);
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, 100, 0, NULL, NULL, NULL), 15);
	struct shmb_event_desc d;
	cr_assert_eq(evr_read(&seg, 0, r, 1, &d, out, sizeof out), EVR_EVICTED);
	cr_assert_eq(evr_read(&seg, 0, r, 9, &d, out, sizeof out), EVR_CONT);
	cr_assert_eq(evr_read(&seg, 0, r, 8, &d, out, sizeof out), EVR_OK);
	cr_assert_eq(d.nslots, 7);
	cr_assert_eq(evr_read(&seg, 0, r, 15, &d, out, sizeof out), EVR_OK);
	cr_assert_eq(d.len, 100);
	/* A wrapped payload is copied back whole. */
	cr_assert_eq(memcmp(out, buf, 100), 0);
	/* Slots 6 and 7 (ids 6, 7) were the tail of event 1, whose head is gone. */
	cr_assert_eq(evr_oldest(&seg, 0, r), 8);
}

Test(evring, too_small_buffer_consumes_nothing, .fini = teardown)
{
	build(16, 1024);
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint8_t buf[300] = { 1 }, out[300];
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, 300, 0, NULL, NULL, NULL), 1);
	struct shmb_event_desc d;
	cr_assert_eq(evr_read(&seg, 0, r, 1, &d, out, 10), EVR_TOOSMALL);
	cr_assert_eq(d.len, 300);
	cr_assert_eq(evr_read(&seg, 0, r, 1, &d, out, sizeof out), EVR_OK);
}

Test(evring, evicted_large_event_leaves_no_unsettled_slot, .fini = teardown)
{
	build(16, 256); /* 16-byte slots: 40 bytes take 3 (ids 2, 3, 4) */
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint8_t buf[40] = { 7 }, out[64];
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, 8, 0, NULL, NULL, NULL), 1);
	/* A publisher of the next lap (id 19) already took the slot of id 3, not yet those of
	 * ids 2 and 4. */
	uatomic_set(&seg_desc(&seg, 0, 3)->seq, UINT64_C(19) | SHMB_DESC_BUSY);
	int evicted = 0;
	cr_assert_eq(evr_publish(&seg, 0, r, 0, 0, buf, sizeof buf, 0, NULL, NULL, &evicted), 2);
	cr_assert_eq(evicted, 1);
	struct shmb_event_desc d;
	/* Both slots the lost event could still take are gap records: no reader waits on them
	 * (id 4 used to stay unwritten until the next lap). */
	cr_assert_eq(evr_read(&seg, 0, r, 2, &d, out, sizeof out), EVR_OK);
	cr_assert(d.flags & SHMB_EV_GAP);
	cr_assert_eq(evr_read(&seg, 0, r, 4, &d, out, sizeof out), EVR_OK);
	cr_assert(d.flags & SHMB_EV_GAP);
	/* The slot the newer lap holds is left to it. */
	cr_assert_eq(uatomic_read(&seg_desc(&seg, 0, 3)->seq), UINT64_C(19) | SHMB_DESC_BUSY);
}

static void claim_only(void *ctx, uint64_t id)
{
	*(uint64_t *)ctx = id;
}

Test(evring, gap_record_for_uncommitted_claim, .fini = teardown)
{
	build(16, 1024);
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint8_t buf[8] = { 0 }, out[8];
	evr_publish(&seg, 0, r, 0, 0, buf, 8, 0, NULL, NULL, NULL);
	/* A publisher that died right after its claim: next_id moved, nothing written. */
	uatomic_add_return(&r->next_id, 1);
	struct shmb_event_desc d;
	cr_assert_eq(evr_read(&seg, 0, r, 2, &d, out, sizeof out), EVR_NOTYET);
	uint64_t id3 = 0;
	evr_publish(&seg, 0, r, 0, 0, buf, 8, 0, claim_only, &id3, NULL);
	cr_assert_eq(id3, 3);
	cr_assert_eq(evr_frontier(&seg, 0, r, 0), 2);
	cr_assert_eq(evr_write_gap(&seg, 0, 2, 5), 1);
	cr_assert_eq(evr_read(&seg, 0, r, 2, &d, out, sizeof out), EVR_OK);
	cr_assert(d.flags & SHMB_EV_GAP);
	cr_assert_eq(d.len, 0);
	cr_assert_eq(evr_frontier(&seg, 0, r, 0), 4);
	/* Settling twice, or a committed id, changes nothing. */
	cr_assert_eq(evr_write_gap(&seg, 0, 2, 5), 0);
	cr_assert_eq(evr_write_gap(&seg, 0, 3, 5), 0);
}

#define PUBS 2
#define PER_PUB 200000

static unsigned long finished;

struct pubarg {
	uint32_t tag;
	uint32_t ring_maxlen;
};

static void *publisher(void *p)
{
	struct pubarg *a = p;
	uint8_t buf[4096];
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	for (uint64_t n = 1; n <= PER_PUB; n++) {
		/* Payload encodes the publisher and its own sequence number. */
		uint32_t len = 16 + (uint32_t)(n % 48);
		memcpy(buf, &a->tag, 4);
		memcpy(buf + 4, &n, 8);
		memset(buf + 12, (int)(n & 0xff), len - 12);
		evr_publish(&seg, 0, r, a->tag, 0, buf, len, 0, NULL, NULL, NULL);
	}
	uatomic_inc(&finished);
	return NULL;
}

Test(evring, concurrent_publishers_and_validated_reader, .fini = teardown, .timeout = 60)
{
	build(64, 2048); /* 32-byte slots: events of 16..63 bytes take 1 or 2 */
	pthread_t th[PUBS];
	struct pubarg args[PUBS];
	for (uint32_t i = 0; i < PUBS; i++) {
		args[i] = (struct pubarg){ .tag = i };
		pthread_create(&th[i], NULL, publisher, &args[i]);
	}
	struct shmb_session_rec *r = seg_rec(&seg, 0);
	uint64_t last_seq[PUBS] = { 0 };
	uint64_t pos = 0, got = 0, evicted = 0;
	int done = 0;
	uint8_t out[4096];
	while (!done || pos < uatomic_read(&r->next_id)) {
		if (!done && uatomic_read(&finished) == PUBS)
			done = 1;
		uint64_t id = pos + 1;
		if (id > uatomic_read(&r->next_id))
			continue;
		struct shmb_event_desc d;
		int st = evr_read(&seg, 0, r, id, &d, out, sizeof out);
		if (st == EVR_NOTYET)
			continue;
		if (st == EVR_EVICTED) {
			uint64_t o = evr_oldest(&seg, 0, r);
			pos = o > id ? o - 1 : id;
			evicted++;
			continue;
		}
		if (st == EVR_CONT) {
			pos = id;
			continue;
		}
		cr_assert_eq(st, EVR_OK);
		uint32_t tag;
		uint64_t n;
		memcpy(&tag, out, 4);
		memcpy(&n, out + 4, 8);
		cr_assert_lt(tag, PUBS);
		cr_assert_eq(d.stream, tag);
		cr_assert_eq(d.len, 16 + n % 48, "id %lu: torn record", id);
		for (uint32_t i = 12; i < d.len; i++)
			cr_assert_eq(out[i], (uint8_t)(n & 0xff), "id %lu: torn payload", id);
		cr_assert_gt(n, last_seq[tag], "publisher %u went backwards", tag);
		last_seq[tag] = n;
		pos = id + d.nslots - 1;
		got++;
	}
	for (uint32_t i = 0; i < PUBS; i++)
		pthread_join(th[i], NULL);
	cr_log_info("read %lu events, %lu overruns", got, evicted);
	cr_assert_gt(got, 0);
}
