/* test_events.c - publishing and cursors across real processes against a real broker: exact ids
 * and checksummed payloads from one, two and four publisher processes and from threads sharing
 * one client; replay from every position of a full ring; overruns reported once with the number
 * skipped; large events spanning several ids (and evicting more); SHMB_ETOOBIG on both sides;
 * stream filtering; SHMB_ENOENT on a deleted session.
 *
 * Publishers and readers are forked children with their own clients; they report through their
 * pipe (evhelp.h). Readers tail with shmb_subscribe + shmb_wait, so nothing here sleeps to wait
 * for another process. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "evhelp.h"

TestSuite(events, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define MAX_PUBS 64

/* ---------------------------------------------------------------- helpers */

static int64_t pub_ok(shmb_session *s, uint32_t stream, uint16_t kind, const void *data, size_t len)
{
	int64_t id = shmb_publish(s, stream, kind, data, len);
	cr_assert_gt(id, 0, "shmb_publish(len %zu): %d %s (%s)", len, (int)id,
		     shmb_err_name((int)id), shmb_strerror((int)id));
	return id;
}

/* Publishes a checksummed payload of publisher pub, sequence seq, length len; returns the id. */
static int64_t pub_payload(shmb_session *s, uint32_t pub, uint64_t seq, size_t len)
{
	unsigned char buf[8192];
	cr_assert_leq(len, sizeof buf);
	evh_fill(buf, len, pub, seq, 0);
	return pub_ok(s, pub, (uint16_t)seq, buf, len);
}

/* Reads the next event and checks it is id `id` carrying (pub, seq). */
static void expect_payload(shmb_cursor *cur, uint64_t id, uint32_t pub, uint64_t seq)
{
	static unsigned char buf[8192];
	shmb_event ev;
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert_eq(ev.id, id, "got event %llu, expected %llu", (unsigned long long)ev.id,
		     (unsigned long long)id);
	cr_assert_eq(ev.flags, 0, "event %llu has flags %#x", (unsigned long long)id, ev.flags);
	struct evh_payload h;
	const char *bad = evh_check(ev.data, ev.len, &h);
	cr_assert_null(bad, "event %llu: %s", (unsigned long long)id, bad);
	cr_assert(ev.data == (const void *)buf, "ev.data does not point into the caller's buffer");
	cr_assert(h.pub == pub && h.seq == seq,
		  "event %llu carries (pub %u, seq %llu), expected (%u, %llu)",
		  (unsigned long long)id, h.pub, (unsigned long long)h.seq, pub,
		  (unsigned long long)seq);
	cr_assert_eq(ev.stream, pub);
	cr_assert_eq(ev.kind, (uint16_t)seq);
}

static void stat_ok(shmb_session *s, shmb_session_info *info)
{
	int rc = shmb_session_stat(s, info);
	cr_assert_eq(rc, 0, "shmb_session_stat: %s (%s)", shmb_err_name(rc), shmb_strerror(rc));
}

static shmb_cursor *cursor_ok(shmb_session *s, uint64_t after)
{
	shmb_cursor *cur = NULL;
	int rc = shmb_cursor_open(s, after, &cur);
	cr_assert_eq(rc, 0, "shmb_cursor_open(after %llu): %s (%s)", (unsigned long long)after,
		     shmb_err_name(rc), shmb_strerror(rc));
	cr_assert_not_null(cur);
	return cur;
}

/* ---------------------------------------------------------------- child: publisher */

struct pub_arg {
	const char *name;
	const char *sid;
	struct evh_gate *gate; /* NULL: start at once */
	uint32_t pub;          /* publisher number (also the stream) */
	uint64_t count;
	size_t min_len, max_len;
	int exact_ids; /* 1: the only publisher, ids must be 1..count */
	int lapped_ok; /* 1: a tiny ring may wrap during a publish (SHMB_EOVERRUN: event lost) */
};

/* Publishes count checksummed events (pub, 0..count-1); checks its own ids rise strictly.
 * Report: n[0] first id, n[1] last id. */
static int publisher(void *p, int wfd)
{
	struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher %u: %s", a->pub, what);
	if (a->gate && evh_gate_wait(a->gate) < 0)
		return evh_fail(wfd, 0, "publisher %u: gate", a->pub);
	struct evh_report r = { 0 };
	unsigned char *buf = malloc(a->max_len);
	int64_t prev = 0;
	for (uint64_t i = 0; i < a->count; i++) {
		size_t len = evh_len(a->pub, i, a->min_len, a->max_len);
		evh_fill(buf, len, a->pub, i, 0);
		int64_t id = shmb_publish(s, a->pub, (uint16_t)i, buf, len);
		if (id == SHMB_EOVERRUN && a->lapped_ok) {
			r.n[2]++; /* lost to the wrap: its ids read as gaps */
			continue;
		}
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher %u: shmb_publish #%llu", a->pub,
					(unsigned long long)i);
		if (id <= prev)
			return evh_fail(wfd, 0, "publisher %u: id %lld after %lld", a->pub,
					(long long)id, (long long)prev);
		if (a->exact_ids && (uint64_t)id != i + 1)
			return evh_fail(wfd, 0, "publisher %u: event #%llu got id %lld, want %llu",
					a->pub, (unsigned long long)i, (long long)id,
					(unsigned long long)i + 1);
		if (r.n[0] == 0)
			r.n[0] = (uint64_t)id;
		prev = id;
	}
	r.n[1] = (uint64_t)prev;
	free(buf);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* ---------------------------------------------------------------- child: tailing reader */

struct tail_arg {
	const char *name;
	const char *sid;
	uint32_t npub;    /* publishers 0..npub-1 */
	uint64_t per_pub; /* events expected from each */
	int timeout_ms;   /* for the whole run */
};

/* Subscribes, then reads from id 0 until it has npub * per_pub events: ids dense and strictly
 * increasing, each payload intact, each publisher's events in its own order. No overrun may
 * happen (the tests size the ring to hold everything). Report: n[0] events, n[1] last id,
 * n[2] shmb_wait calls, n[3] of which returned 1. */
static int tail_reader(void *p, int wfd)
{
	struct tail_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "reader: %s", what);
	if ((rc = shmb_subscribe(s)) < 0)
		return evh_fail(wfd, rc, "reader: shmb_subscribe");
	shmb_cursor *cur;
	if ((rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return evh_fail(wfd, rc, "reader: shmb_cursor_open");
	uint64_t next_seq[MAX_PUBS] = { 0 };
	uint64_t total = a->npub * a->per_pub, got = 0, prev = 0, waits = 0, woken = 0;
	int64_t deadline = h_now_ms() + a->timeout_ms;
	static unsigned char buf[65536];
	while (got < total) {
		shmb_event ev;
		rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		if (rc == 0) {
			if (h_now_ms() > deadline)
				return evh_fail(
					wfd, 0,
					"reader: timeout with %llu of %llu events, position %llu",
					(unsigned long long)got, (unsigned long long)total,
					(unsigned long long)shmb_cursor_position(cur));
			/* A short timeout only bounds a hang: a lost wakeup is test_wakeup's
			 * business, this test checks the data. */
			int w = shmb_wait(c, 200);
			if (w < 0)
				return evh_fail(wfd, w, "reader: shmb_wait");
			waits++;
			woken += w == 1;
			continue;
		}
		if (rc < 0)
			return evh_fail(wfd, rc,
					"reader: shmb_cursor_next after id %llu (%llu read)",
					(unsigned long long)prev, (unsigned long long)got);
		if (ev.id != prev + 1)
			return evh_fail(wfd, 0,
					"reader: id %llu after %llu (ids must be dense and rise)",
					(unsigned long long)ev.id, (unsigned long long)prev);
		struct evh_payload h;
		const char *bad = evh_check(ev.data, ev.len, &h);
		if (bad)
			return evh_fail(wfd, 0, "reader: event %llu: %s", (unsigned long long)ev.id,
					bad);
		if (h.pub >= a->npub || ev.stream != h.pub || ev.kind != (uint16_t)h.seq)
			return evh_fail(wfd, 0,
					"reader: event %llu: pub %u stream %u kind %u seq %llu",
					(unsigned long long)ev.id, h.pub, ev.stream, ev.kind,
					(unsigned long long)h.seq);
		if (h.seq != next_seq[h.pub])
			return evh_fail(
				wfd, 0,
				"reader: event %llu is publisher %u's #%llu, expected #%llu "
				"(a publisher's events out of its order)",
				(unsigned long long)ev.id, h.pub, (unsigned long long)h.seq,
				(unsigned long long)next_seq[h.pub]);
		next_seq[h.pub]++;
		prev = ev.id;
		got++;
	}
	shmb_event ev;
	if ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) != 0)
		return evh_fail(wfd, rc < 0 ? rc : 0, "reader: %d after the last event (id %llu)",
				rc, (unsigned long long)(rc == 1 ? ev.id : 0));
	struct evh_report r = { 0 };
	r.n[0] = got;
	r.n[1] = prev;
	r.n[2] = waits;
	r.n[3] = woken;
	shmb_cursor_close(cur);
	shmb_unsubscribe(s);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* Reads everything from id 0 in this process and checks it as tail_reader does. */
static void read_all_check(shmb_session *s, uint32_t npub, uint64_t per_pub)
{
	shmb_cursor *cur = cursor_ok(s, 0);
	uint64_t next_seq[MAX_PUBS] = { 0 };
	static unsigned char buf[65536];
	for (uint64_t id = 1; id <= npub * per_pub; id++) {
		shmb_event ev;
		EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
		cr_assert_eq(ev.id, id, "replay: id %llu, expected %llu", (unsigned long long)ev.id,
			     (unsigned long long)id);
		struct evh_payload h;
		const char *bad = evh_check(ev.data, ev.len, &h);
		cr_assert_null(bad, "replay: event %llu: %s", (unsigned long long)id, bad);
		cr_assert_lt(h.pub, npub);
		cr_assert_eq(h.seq, next_seq[h.pub],
			     "replay: event %llu is #%llu of publisher %u, expected #%llu",
			     (unsigned long long)id, (unsigned long long)h.seq, h.pub,
			     (unsigned long long)next_seq[h.pub]);
		next_seq[h.pub]++;
	}
	shmb_event ev;
	EVH_NEXT(cur, &ev, buf, sizeof buf, 0);
	shmb_cursor_close(cur);
}

/* ---------------------------------------------------------------- tests */

H_TEST(events, publish_tail_across_processes)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "4", "--ring-events", "1024",
				      "--ring-bytes", "1048576", "--max-event-bytes", "4096"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	const uint64_t n = 1000;
	int64_t t0 = h_wall_ms();

	struct evh_gate gate;
	evh_gate_init(&gate);
	struct tail_arg ta = {
		.name = b->name, .sid = sid, .npub = 1, .per_pub = n, .timeout_ms = 30000
	};
	struct pub_arg pa = { .name = b->name,
			      .sid = sid,
			      .gate = &gate,
			      .pub = 0,
			      .count = n,
			      .min_len = sizeof(struct evh_payload),
			      .max_len = 900,
			      .exact_ids = 1 };
	static struct h_child reader, pubr;
	h_child_start(&reader, tail_reader, &ta);
	h_child_start(&pubr, publisher, &pa);
	evh_gate_open(&gate, 1);

	struct evh_report r;
	evh_collect(&pubr, "publisher", &r, 30000);
	cr_assert_eq(r.n[0], 1, "first id %llu, want 1", (unsigned long long)r.n[0]);
	cr_assert_eq(r.n[1], n);
	evh_collect(&reader, "reader", &r, 30000);
	cr_assert_eq(r.n[0], n);
	cr_log_info("tail: %llu events, reader waited %llu times (%llu woken)",
		    (unsigned long long)r.n[0], (unsigned long long)r.n[2],
		    (unsigned long long)r.n[3]);

	/* The whole stream once more from this process; timestamps are wall clock at publish. */
	read_all_check(s, 1, n);
	shmb_cursor *cur = cursor_ok(s, n - 1);
	shmb_event ev;
	static unsigned char buf[4096];
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert(ev.ts_ms >= t0 - 5 && ev.ts_ms <= h_wall_ms() + 5,
		  "ts_ms %lld not within the run", (long long)ev.ts_ms);
	shmb_cursor_close(cur);

	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, n);
	cr_assert_eq(info.oldest_event_id, 1);
	shmb_session_close(s);
	h_detach(c);
}

static void run_publishers(uint32_t k)
{
	const uint64_t per = 1500;
	/* Ring large enough for everything: 8192 slots of 256 bytes, events of <= 200 bytes. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "4", "--ring-events", "8192",
				      "--ring-bytes", "2097152", "--max-event-bytes", "4096"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);

	struct evh_gate gate;
	evh_gate_init(&gate);
	struct tail_arg ta = {
		.name = b->name, .sid = sid, .npub = k, .per_pub = per, .timeout_ms = 60000
	};
	static struct h_child readers[2], pubs[4];
	struct pub_arg pa[4];
	for (int i = 0; i < 2; i++)
		h_child_start(&readers[i], tail_reader, &ta);
	for (uint32_t i = 0; i < k; i++) {
		pa[i] = (struct pub_arg){ .name = b->name,
					  .sid = sid,
					  .gate = &gate,
					  .pub = i,
					  .count = per,
					  .min_len = sizeof(struct evh_payload),
					  .max_len = 200 };
		h_child_start(&pubs[i], publisher, &pa[i]);
	}
	evh_gate_open(&gate, (int)k);

	struct evh_report r;
	for (uint32_t i = 0; i < k; i++) {
		char who[32];
		snprintf(who, sizeof who, "publisher %u", i);
		evh_collect(&pubs[i], who, &r, 60000);
		cr_assert(r.n[0] >= 1 && r.n[1] <= k * per, "publisher %u: ids %llu..%llu", i,
			  (unsigned long long)r.n[0], (unsigned long long)r.n[1]);
	}
	for (int i = 0; i < 2; i++) {
		evh_collect(&readers[i], "reader", &r, 60000);
		cr_assert_eq(r.n[0], k * per);
		cr_assert_eq(r.n[1], k * per);
	}
	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, k * per);
	cr_assert_eq(info.oldest_event_id, 1, "nothing may have been evicted, oldest is %llu",
		     (unsigned long long)info.oldest_event_id);
	read_all_check(s, k, per);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(events, two_publisher_processes)
{
	run_publishers(2);
}

H_TEST(events, four_publisher_processes)
{
	run_publishers(4);
}

/* Replays from every after_id of a full ring, first before it wraps, then after. */
H_TEST(events, replay_from_every_position)
{
	/* Harness defaults: 16 slots of 256 bytes; events of <= 100 bytes take one id each. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	const uint64_t ring = 16, total = 40;
	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 0);
	cr_assert_eq(info.oldest_event_id, 0);

	for (uint64_t i = 0; i < total; i++) {
		cr_assert_eq(pub_payload(s, 0, i, evh_len(0, i, 40, 100)), (int64_t)i + 1);
		if (i + 1 != ring)
			continue;
		/* Full, not wrapped: every position replays exactly what follows it. */
		stat_ok(s, &info);
		cr_assert_eq(info.last_event_id, ring);
		cr_assert_eq(info.oldest_event_id, 1);
		for (uint64_t after = 0; after <= ring; after++) {
			shmb_cursor *cur = cursor_ok(s, after);
			for (uint64_t id = after + 1; id <= ring; id++)
				expect_payload(cur, id, 0, id - 1);
			shmb_event ev;
			EVH_NEXT(cur, &ev, NULL, 0, 0);
			cr_assert_eq(shmb_cursor_position(cur), ring);
			shmb_cursor_close(cur);
		}
	}

	/* Wrapped: ids 25..40 are retained. */
	uint64_t oldest = total - ring + 1;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, total);
	cr_assert_eq(info.oldest_event_id, oldest);
	for (uint64_t after = 0; after <= total; after++) {
		shmb_cursor *cur = cursor_ok(s, after);
		shmb_event ev;
		if (after + 1 < oldest) {
			EVH_NEXT(cur, &ev, NULL, 0, SHMB_EOVERRUN);
			cr_assert_eq(shmb_cursor_lagged(cur), oldest - (after + 1),
				     "after %llu: lagged %llu, want %llu",
				     (unsigned long long)after,
				     (unsigned long long)shmb_cursor_lagged(cur),
				     (unsigned long long)(oldest - (after + 1)));
			cr_assert_eq(shmb_cursor_position(cur), oldest - 1);
		}
		for (uint64_t id = after + 1 > oldest ? after + 1 : oldest; id <= total; id++)
			expect_payload(cur, id, 0, id - 1);
		EVH_NEXT(cur, &ev, NULL, 0, 0);
		cr_assert_eq(shmb_cursor_position(cur), total);
		shmb_cursor_close(cur);
	}
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(events, after_id_beyond_the_last)
{
	/* A Last-Event-ID comes from the network: any value reaches shmb_cursor_open. Ids past
	 * the last one claimed (up to UINT64_MAX, where pos + 1 would wrap to 0) are refused with
	 * SHMB_EINVAL and no cursor (issue 10, item 8: such a cursor skipped every later id up
	 * to it in silence; tests/test_client_edges.c shows the skip); the last id itself means
	 * "nothing new yet", never an overrun back to the oldest event (found by
	 * tests/fuzz/fuzz_segment). */
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (uint64_t i = 0; i < 20; i++)
		pub_payload(s, 0, i, 64);
	shmb_cursor *cur = cursor_ok(s, 20);
	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	cr_assert_eq(shmb_cursor_position(cur), 20);
	cr_assert_eq(shmb_cursor_lagged(cur), 0);
	shmb_cursor_close(cur);
	const uint64_t afters[] = { 21, 1000, UINT64_MAX / 2, UINT64_MAX - 1, UINT64_MAX };
	for (size_t k = 0; k < sizeof afters / sizeof afters[0]; k++) {
		cur = (shmb_cursor *)1;
		H_EXPECT_RC(shmb_cursor_open(s, afters[k], &cur), SHMB_EINVAL);
		cr_assert_null(cur, "after %llu: a cursor was returned",
			       (unsigned long long)afters[k]);
	}
	shmb_session_close(s);
	h_detach(c);
}

struct burst_arg {
	const char *name, *sid;
	uint32_t pub;
	uint64_t first_seq, count;
	size_t len;
};

/* Publishes count events of len bytes as (pub, first_seq..). Report: n[0] first id, n[1] last. */
static int burst(void *p, int wfd)
{
	struct burst_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "burst: %s", what);
	struct evh_report r = { 0 };
	unsigned char buf[4096];
	for (uint64_t i = 0; i < a->count; i++) {
		evh_fill(buf, a->len, a->pub, a->first_seq + i, 0);
		int64_t id = shmb_publish(s, a->pub, (uint16_t)(a->first_seq + i), buf, a->len);
		if (id < 0)
			return evh_fail(wfd, (int)id, "burst: shmb_publish");
		if (i == 0)
			r.n[0] = (uint64_t)id;
		r.n[1] = (uint64_t)id;
	}
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* A lagging cursor is told once, with the count skipped, and resumes at the oldest retained. */
H_TEST(events, overrun_reported_once)
{
	struct h_broker *b = h_broker_start(H_NOARGS); /* 16 slots of 256 bytes */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (uint64_t i = 0; i < 16; i++)
		pub_payload(s, 0, i, 64);
	shmb_cursor *cur = cursor_ok(s, 0);
	shmb_cursor *idle = cursor_ok(s, 0); /* never read before the overrun */
	for (uint64_t id = 1; id <= 3; id++)
		expect_payload(cur, id, 0, id - 1);

	/* Another process publishes 30 more: ids 17..46, ids 31..46 retained. */
	struct burst_arg ba = {
		.name = b->name, .sid = sid, .pub = 0, .first_seq = 16, .count = 30, .len = 64
	};
	static struct h_child ch;
	h_child_start(&ch, burst, &ba);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
	cr_assert_eq(r.n[0], 17);
	cr_assert_eq(r.n[1], 46);

	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 46);
	cr_assert_eq(info.oldest_event_id, 31);

	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(cur), 27, "lagged %llu, want 27 (ids 4..30)",
		     (unsigned long long)shmb_cursor_lagged(cur));
	cr_assert_eq(shmb_cursor_position(cur), 30);
	for (uint64_t id = 31; id <= 46; id++)
		expect_payload(cur, id, 0, id - 1); /* no second overrun */
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	EVH_NEXT(cur, &ev, NULL, 0, 0);

	EVH_NEXT(idle, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(idle), 30, "lagged %llu, want 30 (ids 1..30)",
		     (unsigned long long)shmb_cursor_lagged(idle));
	expect_payload(idle, 31, 0, 30);

	/* The stream goes on without another overrun for a cursor that keeps up. */
	pub_payload(s, 0, 46, 64);
	expect_payload(cur, 47, 0, 46);
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	shmb_cursor_close(idle);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* Each descriptor slot owns ring_bytes / ring_events payload bytes (docs/events.md): a larger
 * event takes consecutive ids, so large events evict more of the oldest. */
H_TEST(events, large_events_span_ids_and_evict_more)
{
	/* 16 slots of 256 bytes. */
	struct h_broker *b = h_broker_start(
		H_ARGS("--ring-events", "16", "--ring-bytes", "4096", "--max-event-bytes", "1024"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *lag = cursor_ok(s, 0);
	/* 600 bytes: 3 ids; 100: 1; 1000: 4; 256: exactly 1; 257: 2. */
	cr_assert_eq(pub_payload(s, 0, 0, 600), 1);
	cr_assert_eq(pub_payload(s, 0, 1, 100), 4);
	cr_assert_eq(pub_payload(s, 0, 2, 1000), 5);
	cr_assert_eq(pub_payload(s, 0, 3, 256), 9);
	cr_assert_eq(pub_payload(s, 0, 4, 257), 10);
	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 11, "last id %llu: a 257-byte event takes ids 10 and 11",
		     (unsigned long long)info.last_event_id);
	cr_assert_eq(info.oldest_event_id, 1);

	static const uint64_t ids[] = { 1, 4, 5, 9, 10 };
	shmb_cursor *cur = cursor_ok(s, 0);
	for (int i = 0; i < 5; i++)
		expect_payload(cur, ids[i], 0, (uint64_t)i);
	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	cr_assert_eq(shmb_cursor_position(cur), 11, "position %llu after the last event's ids",
		     (unsigned long long)shmb_cursor_position(cur));
	shmb_cursor_close(cur);
	/* A Last-Event-ID inside a large event resumes at the next event. */
	cur = cursor_ok(s, 1);
	expect_payload(cur, 4, 0, 1);
	shmb_cursor_close(cur);
	shmb_cursor *mid = cursor_ok(s, 4); /* read up to 4 */

	/* Another process: three events of 1000 bytes, ids 12, 16, 20 (next_id 23). Ids 8..23 are
	 * in the ring, 8 being the tail of event 5: the oldest event retained is 9. */
	struct burst_arg ba = {
		.name = b->name, .sid = sid, .pub = 0, .first_seq = 5, .count = 3, .len = 1000
	};
	static struct h_child ch;
	h_child_start(&ch, burst, &ba);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
	cr_assert(r.n[0] == 12 && r.n[1] == 20, "ids %llu..%llu, want 12..20",
		  (unsigned long long)r.n[0], (unsigned long long)r.n[1]);
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 23);
	cr_assert_eq(info.oldest_event_id, 9, "oldest retained %llu, want 9",
		     (unsigned long long)info.oldest_event_id);

	EVH_NEXT(lag, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(lag), 8, "lagged %llu, want 8 (ids 1..8)",
		     (unsigned long long)shmb_cursor_lagged(lag));
	static const uint64_t left[] = { 9, 10, 12, 16, 20 };
	for (int i = 0; i < 5; i++)
		expect_payload(lag, left[i], 0, (uint64_t)i + 3);
	EVH_NEXT(lag, &ev, NULL, 0, 0);

	EVH_NEXT(mid, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(mid), 4, "lagged %llu, want 4 (ids 5..8)",
		     (unsigned long long)shmb_cursor_lagged(mid));
	expect_payload(mid, 9, 0, 3);
	shmb_cursor_close(mid);
	shmb_cursor_close(lag);
	shmb_session_close(s);
	h_detach(c);
}

struct toobig_arg {
	const char *name, *sid;
};

/* In another process: a too-big publish consumes no id either. */
static int toobig_child(void *p, int wfd)
{
	struct toobig_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "child: %s", what);
	static unsigned char big[8192];
	int64_t id = shmb_publish(s, 0, 0, big, 1025);
	if (id != SHMB_ETOOBIG)
		return evh_fail(wfd, id < 0 ? (int)id : 0, "publish of 1025 bytes gave %lld",
				(long long)id);
	evh_fill(big, 1024, 0, 2, 0);
	id = shmb_publish(s, 0, 2, big, 1024);
	if (id != 3)
		return evh_fail(wfd, id < 0 ? (int)id : 0,
				"publish after ETOOBIG gave id %lld, want 3", (long long)id);
	evh_child_close(c, s);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

/* 16 slots of 1024 bytes: every event up to the maximum takes one id. */
#define ONE_SLOT_ARGS "--ring-events", "16", "--ring-bytes", "16384", "--max-event-bytes", "1024"

H_TEST(events, toobig_publish_consumes_no_id)
{
	struct h_broker *b = h_broker_start(H_ARGS(ONE_SLOT_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	static unsigned char big[8192];

	cr_assert_eq(pub_payload(s, 0, 0, 40), 1);
	H_EXPECT_RC(shmb_publish(s, 0, 0, big, 1025), SHMB_ETOOBIG);
	H_EXPECT_RC(shmb_publish(s, 0, 0, big, 4096), SHMB_ETOOBIG);
	H_EXPECT_RC(shmb_publish(s, 0, 0, big, sizeof big), SHMB_ETOOBIG);
	shmb_session_info info;
	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 1, "a refused publish consumed an id: last id %llu",
		     (unsigned long long)info.last_event_id);
	cr_assert_eq(pub_payload(s, 0, 1, 1024), 2); /* exactly the maximum is accepted */

	struct toobig_arg ta = { b->name, sid };
	static struct h_child ch;
	h_child_start(&ch, toobig_child, &ta);
	struct evh_report r;
	evh_collect(&ch, "child", &r, 30000);

	stat_ok(s, &info);
	cr_assert_eq(info.last_event_id, 3);
	shmb_cursor *cur = cursor_ok(s, 0);
	for (uint64_t id = 1; id <= 3; id++)
		expect_payload(cur, id, 0, id - 1); /* dense: no hole where the refusals were */
	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(events, toobig_buffer_loses_nothing)
{
	struct h_broker *b = h_broker_start(H_ARGS(ONE_SLOT_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	pub_payload(s, 0, 0, 500);
	pub_ok(s, 3, 9, "0123456789", 10);
	pub_ok(s, 4, 5, NULL, 0);

	shmb_cursor *cur = cursor_ok(s, 0);
	unsigned char buf[1024];
	shmb_event ev;
	memset(&ev, 0, sizeof ev);
	EVH_NEXT(cur, &ev, buf, 100, SHMB_ETOOBIG);
	cr_assert_eq(ev.len, 500, "ETOOBIG must say the length needed: ev.len %zu", ev.len);
	cr_assert_eq(ev.id, 1);
	cr_assert_eq(shmb_cursor_position(cur), 0, "ETOOBIG consumed the event");
	memset(&ev, 0, sizeof ev);
	EVH_NEXT(cur, &ev, NULL, 0, SHMB_ETOOBIG);
	cr_assert_eq(ev.len, 500);
	EVH_NEXT(cur, &ev, buf, 499, SHMB_ETOOBIG);
	cr_assert_eq(ev.len, 500);
	cr_assert_eq(shmb_cursor_position(cur), 0);

	memset(&ev, 0, sizeof ev);
	EVH_NEXT(cur, &ev, buf, 500, 1); /* exactly big enough */
	cr_assert_eq(ev.id, 1);
	struct evh_payload h;
	const char *bad = evh_check(ev.data, ev.len, &h);
	cr_assert_null(bad, "event 1 after ETOOBIG: %s", bad);

	EVH_NEXT(cur, &ev, buf, 9, SHMB_ETOOBIG);
	cr_assert_eq(ev.len, 10);
	EVH_NEXT(cur, &ev, buf, 10, 1);
	cr_assert(ev.id == 2 && ev.stream == 3 && ev.kind == 9 && ev.len == 10);
	cr_assert_eq(memcmp(ev.data, "0123456789", 10), 0);

	/* An empty event needs no buffer at all. */
	EVH_NEXT(cur, &ev, NULL, 0, 1);
	cr_assert(ev.id == 3 && ev.stream == 4 && ev.kind == 5 && ev.len == 0 && ev.flags == 0,
		  "empty event: id %llu stream %u kind %u len %zu flags %#x",
		  (unsigned long long)ev.id, ev.stream, ev.kind, ev.len, ev.flags);
	EVH_NEXT(cur, &ev, buf, sizeof buf, 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

static void expect_stream(shmb_cursor *cur, uint64_t id, uint32_t stream)
{
	char buf[64], want[64];
	shmb_event ev;
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert_eq(ev.id, id, "stream %u: got id %llu, expected %llu", stream,
		     (unsigned long long)ev.id, (unsigned long long)id);
	cr_assert_eq(ev.stream, stream, "id %llu: stream %u, expected %u", (unsigned long long)id,
		     ev.stream, stream);
	int n = snprintf(want, sizeof want, "{\"id\":%llu,\"stream\":%u}", (unsigned long long)id,
			 stream);
	cr_assert(ev.len == (size_t)n && memcmp(ev.data, want, (size_t)n) == 0,
		  "id %llu: payload differs", (unsigned long long)id);
}

static void publish_streams(shmb_session *s, uint64_t first_id, uint64_t count)
{
	for (uint64_t id = first_id; id < first_id + count; id++) {
		char p[64];
		uint32_t stream = (uint32_t)((id - 1) % 3);
		int n = snprintf(p, sizeof p, "{\"id\":%llu,\"stream\":%u}", (unsigned long long)id,
				 stream);
		cr_assert_eq(pub_ok(s, stream, 1, p, (size_t)n), (int64_t)id);
	}
}

struct streams_arg {
	const char *name, *sid;
};

static int streams_child(void *p, int wfd)
{
	struct streams_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "child: %s", what);
	for (uint64_t id = 31; id <= 36; id++) {
		char q[64];
		uint32_t stream = (uint32_t)((id - 1) % 3);
		int n = snprintf(q, sizeof q, "{\"id\":%llu,\"stream\":%u}", (unsigned long long)id,
				 stream);
		int64_t got = shmb_publish(s, stream, 1, q, (size_t)n);
		if (got != (int64_t)id)
			return evh_fail(wfd, got < 0 ? (int)got : 0, "publish gave %lld, want %llu",
					(long long)got, (unsigned long long)id);
	}
	evh_child_close(c, s);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

H_TEST(events, stream_filter)
{
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "64", "--ring-bytes", "16384"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	publish_streams(s, 1, 30); /* id i is on stream (i - 1) % 3 */

	shmb_cursor *one = NULL, *zero = NULL, *none = NULL;
	H_OK(shmb_cursor_open_stream(s, 0, 1, &one));
	for (uint64_t id = 2; id <= 29; id += 3)
		expect_stream(one, id, 1);
	shmb_event ev;
	EVH_NEXT(one, &ev, NULL, 0, 0);
	cr_assert_eq(shmb_cursor_position(one), 30, "position %llu: skipped ids count as read",
		     (unsigned long long)shmb_cursor_position(one));

	/* Replay of one stream from a Last-Event-ID in the middle. */
	H_OK(shmb_cursor_open_stream(s, 14, 0, &zero));
	for (uint64_t id = 16; id <= 28; id += 3)
		expect_stream(zero, id, 0);
	EVH_NEXT(zero, &ev, NULL, 0, 0);

	H_OK(shmb_cursor_open_stream(s, 0, 99, &none));
	EVH_NEXT(none, &ev, NULL, 0, 0);

	/* An unfiltered cursor sees all of them, in order. */
	shmb_cursor *all = cursor_ok(s, 0);
	for (uint64_t id = 1; id <= 30; id++)
		expect_stream(all, id, (uint32_t)((id - 1) % 3));

	/* Later events of another process reach the filtered cursors. */
	struct streams_arg sa = { b->name, sid };
	static struct h_child ch;
	h_child_start(&ch, streams_child, &sa);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
	expect_stream(one, 32, 1);
	expect_stream(one, 35, 1);
	EVH_NEXT(one, &ev, NULL, 0, 0);
	expect_stream(zero, 31, 0);
	expect_stream(zero, 34, 0);
	EVH_NEXT(zero, &ev, NULL, 0, 0);
	EVH_NEXT(none, &ev, NULL, 0, 0);
	cr_assert_eq(shmb_cursor_position(none), 36);
	for (uint64_t id = 31; id <= 36; id++)
		expect_stream(all, id, (uint32_t)((id - 1) % 3));

	/* Another stream's event too big for the buffer does not stop a filtered cursor. */
	static unsigned char big[500];
	cr_assert_eq(pub_ok(s, 2, 1, big, sizeof big), 37); /* 2 slots of 256: ids 37, 38 */
	char p[64];
	int n = snprintf(p, sizeof p, "{\"id\":39,\"stream\":1}");
	cr_assert_eq(pub_ok(s, 1, 1, p, (size_t)n), 39);
	expect_stream(one, 39, 1); /* with a 64-byte buffer */
	EVH_NEXT(one, &ev, NULL, 0, 0);
	char small[64];
	EVH_NEXT(all, &ev, small, sizeof small, SHMB_ETOOBIG);
	cr_assert(ev.id == 37 && ev.len == 500);
	shmb_cursor_close(all);
	shmb_cursor_close(none);
	shmb_cursor_close(zero);
	shmb_cursor_close(one);
	shmb_session_close(s);
	h_detach(c);
}

/* Publishing counts as activity: a session that is only published to (never opened) does not
 * expire by inactivity. */
H_TEST(events, publishing_is_activity)
{
	const int ttl = 300;
	struct h_broker *b =
		h_broker_start(H_ARGS("--inactivity-ttl-ms", "300", "--absolute-ttl-ms", "0",
				      "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	int64_t start = h_now_ms(), last = start;
	while (h_now_ms() - start < 3 * ttl) {
		int64_t before = h_now_ms();
		if (before - last > ttl - 50)
			cr_skip_test("machine too slow: %lld ms between publishes",
				     (long long)(before - last));
		int64_t id = shmb_publish(s, 0, 0, "{}", 2);
		cr_assert_gt(id, 0, "publish after %lld ms: %s (%s)", (long long)(before - start),
			     shmb_err_name((int)id), shmb_strerror((int)id));
		last = before;
		h_sleep_ms(100); /* the clock, not another process */
	}
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	/* Idle now: it expires. */
	cr_assert(H_POLL_UNTIL(shmb_session_stat(s, &info) == SHMB_ENOENT, 5 * ttl),
		  "session still alive %d ms after the last publish", 5 * ttl);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "{}", 2), SHMB_ENOENT);
	shmb_session_close(s);
	h_detach(c);
}

struct deleted_arg {
	const char *name, *sid;
	struct evh_gate *gate;
};

/* Opens the session, says so, waits for the parent's delete, then everything is ENOENT. */
static int deleted_child(void *p, int wfd)
{
	struct deleted_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "child: %s", what);
	shmb_cursor *cur;
	if ((rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return evh_fail(wfd, rc, "child: shmb_cursor_open");
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0 || evh_gate_wait(a->gate) < 0)
		return 1;
	int64_t id = shmb_publish(s, 0, 0, "x", 1);
	if (id != SHMB_ENOENT)
		return evh_fail(wfd, id < 0 ? (int)id : 0, "publish on a deleted session gave %lld",
				(long long)id);
	shmb_event ev;
	char buf[64];
	rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
	if (rc != SHMB_ENOENT)
		return evh_fail(wfd, rc < 0 ? rc : 0, "cursor on a deleted session gave %d", rc);
	shmb_cursor *c2;
	rc = shmb_cursor_open(s, 0, &c2);
	if (rc != SHMB_ENOENT)
		return evh_fail(wfd, rc < 0 ? rc : 0, "cursor_open on a deleted session gave %d",
				rc);
	shmb_cursor_close(cur);
	evh_child_close(c, s);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

H_TEST(events, deleted_session_enoent)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	pub_payload(s, 0, 0, 64);
	pub_payload(s, 0, 1, 64);
	shmb_cursor *cur = cursor_ok(s, 0);
	expect_payload(cur, 1, 0, 0); /* one read, one left unread */

	struct evh_gate gate;
	evh_gate_init(&gate);
	struct deleted_arg da = { b->name, sid, &gate };
	static struct h_child ch;
	h_child_start(&ch, deleted_child, &da);
	char ready;
	cr_assert_eq(h_child_read(&ch, &ready, 1, 30000), 1, "child did not open the session");

	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL));
	evh_gate_open(&gate, 1);

	static unsigned char buf[256];
	shmb_event ev;
	H_EXPECT_RC(shmb_publish(s, 0, 0, buf, 10), SHMB_ENOENT);
	EVH_NEXT(cur, &ev, buf, sizeof buf, SHMB_ENOENT);
	EVH_NEXT(cur, &ev, buf, sizeof buf, SHMB_ENOENT); /* and stays so */
	shmb_cursor *c2 = NULL;
	H_EXPECT_RC(shmb_cursor_open(s, 0, &c2), SHMB_ENOENT);
	cr_assert_null(c2);
	H_EXPECT_RC(shmb_cursor_open_stream(s, 0, 1, &c2), SHMB_ENOENT);
	H_EXPECT_RC(shmb_subscribe(s), SHMB_ENOENT);
	shmb_session_info info;
	H_EXPECT_RC(shmb_session_stat(s, &info), SHMB_ENOENT);

	struct evh_report r;
	evh_collect(&ch, "child", &r, 30000);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- readers lapped by the ring */

struct lap_arg {
	const char *name, *sid;
	struct evh_gate *done; /* a byte arrives once every publisher has finished */
	uint32_t npub;
	uint32_t slot_bytes;
};

/* Reads while the ring laps it. Every event returned must be intact (checksum), ids must rise,
 * each publisher's events must come in its order, and the position must account for every id:
 * delivered events (their slots) plus the ids reported by SHMB_EOVERRUN, plus continuation ids
 * passed right after an overrun. Report: n[0] events, n[1] overruns, n[2] ids skipped by
 * overruns, n[3] continuation ids passed after an overrun, n[4] final position. */
static int lapped_reader(void *p, int wfd)
{
	struct lap_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	shmb_cursor *cur;
	int rc = evh_child_subscriber(a->name, a->sid, &c, &s, &cur, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "reader: %s", what);
	int64_t last_seq[MAX_PUBS];
	for (int i = 0; i < MAX_PUBS; i++)
		last_seq[i] = -1;
	struct evh_report r = { 0 };
	int done = 0, after_overrun = 0;
	int64_t deadline = h_now_ms() + 60000;
	static unsigned char buf[65536];
	for (;;) {
		uint64_t before = shmb_cursor_position(cur);
		shmb_event ev;
		rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		uint64_t after = shmb_cursor_position(cur);
		if (rc == 1) {
			struct evh_payload h;
			const char *bad = evh_check(ev.data, ev.len, &h);
			if (bad)
				return evh_fail(wfd, 0, "reader: event %llu: %s (torn read)",
						(unsigned long long)ev.id, bad);
			if (ev.id <= before || h.pub >= a->npub ||
			    (int64_t)h.seq <= last_seq[h.pub])
				return evh_fail(
					wfd, 0,
					"reader: event %llu (pub %u seq %llu) after position %llu, "
					"publisher's last seq %lld",
					(unsigned long long)ev.id, h.pub, (unsigned long long)h.seq,
					(unsigned long long)before, (long long)last_seq[h.pub]);
			last_seq[h.pub] = (int64_t)h.seq;
			uint64_t k = ev.len <= a->slot_bytes
					     ? 1
					     : (ev.len + a->slot_bytes - 1) / a->slot_bytes;
			if (after != ev.id + k - 1)
				return evh_fail(
					wfd, 0,
					"reader: event %llu of %zu bytes left the position at %llu",
					(unsigned long long)ev.id, ev.len,
					(unsigned long long)after);
			/* The only ids a cursor may pass without reporting them are the tail of an
			 * event it cannot start in the middle of: right after an overrun, the
			 * oldest retained id can be a continuation whose head was counted in the
			 * lag (it was still being written when the cursor moved). */
			if (ev.id != before + 1 && !after_overrun)
				return evh_fail(wfd, 0,
						"reader: ids %llu..%llu skipped without an overrun "
						"before event %llu",
						(unsigned long long)before + 1,
						(unsigned long long)ev.id - 1,
						(unsigned long long)ev.id);
			r.n[0]++;
			r.n[3] += ev.id - before - 1;
			after_overrun = 0;
			continue;
		}
		if (rc == SHMB_EOVERRUN) {
			uint64_t lag = shmb_cursor_lagged(cur);
			if (lag == 0 || after != before + lag)
				return evh_fail(
					wfd, 0,
					"reader: overrun at %llu: lagged %llu, position now %llu",
					(unsigned long long)before, (unsigned long long)lag,
					(unsigned long long)after);
			r.n[1]++;
			r.n[2] += lag;
			after_overrun = 1;
			continue;
		}
		if (rc < 0)
			return evh_fail(wfd, rc, "reader: cursor_next at %llu",
					(unsigned long long)before);
		if (!done) {
			struct pollfd pf = { .fd = a->done->fd[0], .events = POLLIN };
			done = poll(&pf, 1, 0) == 1 && evh_gate_wait(a->done) == 0;
		}
		if (done) {
			shmb_session_info info;
			if ((rc = shmb_session_stat(s, &info)) < 0)
				return evh_fail(wfd, rc, "reader: stat");
			if (after == info.last_event_id)
				break;
		}
		if (h_now_ms() > deadline)
			return evh_fail(wfd, 0, "reader: stuck at position %llu",
					(unsigned long long)after);
		if ((rc = shmb_wait(c, 20)) < 0)
			return evh_fail(wfd, rc, "reader: shmb_wait");
	}
	r.n[4] = shmb_cursor_position(cur);
	shmb_cursor_close(cur);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* Two publisher processes lap a 16-slot ring (events of 1 to 3 slots) while two readers read:
 * no torn event, ids rising, every id accounted for. */
H_TEST(events, lapped_readers_see_only_intact_events)
{
	enum { K = 2, PER = 20000, READERS = 2 };
	struct h_broker *b = h_broker_start(
		H_ARGS("--ring-events", "16", "--ring-bytes", "4096", "--max-event-bytes", "1024"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	struct evh_gate gate, done;
	evh_gate_init(&gate);
	evh_gate_init(&done);
	struct lap_arg la = {
		.name = b->name, .sid = sid, .done = &done, .npub = K, .slot_bytes = 256
	};
	static struct h_child readers[READERS], pubs[K];
	struct pub_arg pa[K];
	for (int i = 0; i < READERS; i++)
		h_child_start(&readers[i], lapped_reader, &la);
	for (uint32_t i = 0; i < K; i++) {
		pa[i] = (struct pub_arg){ .name = b->name,
					  .sid = sid,
					  .gate = &gate,
					  .pub = i,
					  .count = PER,
					  .min_len = sizeof(struct evh_payload),
					  .max_len = 600,
					  .lapped_ok = 1 };
		h_child_start(&pubs[i], publisher, &pa[i]);
	}
	evh_gate_open(&gate, K);
	struct evh_report r;
	for (uint32_t i = 0; i < K; i++)
		evh_collect(&pubs[i], "publisher", &r, 60000);
	evh_gate_open(&done, READERS);
	shmb_session_info info;
	stat_ok(s, &info);
	for (int i = 0; i < READERS; i++) {
		evh_collect(&readers[i], "reader", &r, 60000);
		cr_log_info(
			"lapped reader %d: %llu events, %llu overruns skipping %llu ids, then %llu "
			"continuation ids, final position %llu of %llu",
			i, (unsigned long long)r.n[0], (unsigned long long)r.n[1],
			(unsigned long long)r.n[2], (unsigned long long)r.n[3],
			(unsigned long long)r.n[4], (unsigned long long)info.last_event_id);
		cr_assert_gt(r.n[0], 0);
		cr_assert_eq(r.n[4], info.last_event_id);
	}
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- threads */

struct thr_arg {
	shmb_session *s; /* each thread its own handle (a handle is one thread's at a time) */
	uint32_t pub;
	uint64_t count;
	int64_t *ids;
	int rc; /* first failure */
	char msg[160];
};

static void *thr_publish(void *p)
{
	struct thr_arg *a = p;
	unsigned char buf[256];
	for (uint64_t i = 0; i < a->count; i++) {
		size_t len = evh_len(a->pub, i, sizeof(struct evh_payload), sizeof buf);
		evh_fill(buf, len, a->pub, i, 0);
		int64_t id = shmb_publish(a->s, a->pub, (uint16_t)i, buf, len);
		if (id < 0) {
			a->rc = (int)id;
			snprintf(a->msg, sizeof a->msg, "thread %u: publish #%llu: %s", a->pub,
				 (unsigned long long)i, shmb_strerror((int)id));
			return NULL;
		}
		a->ids[i] = id;
	}
	return NULL;
}

H_TEST(events, threads_share_a_client)
{
	enum { T = 4, PER = 2000 };
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "4", "--ring-events", "8192",
						   "--ring-bytes", "2097152", "--max-event-bytes",
						   "4096", "--readers-per-worker", "8"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);

	/* A reader in another process tails while the threads publish. */
	struct tail_arg ta = {
		.name = b->name, .sid = sid, .npub = T, .per_pub = PER, .timeout_ms = 60000
	};
	static struct h_child reader;
	h_child_start(&reader, tail_reader, &ta);

	pthread_t th[T];
	struct thr_arg ta_[T];
	for (uint32_t i = 0; i < T; i++) {
		shmb_session *h = NULL;
		H_OK(shmb_session_open(c, sid, EVH_TENANT, NULL, &h));
		ta_[i] = (struct thr_arg){
			.s = h, .pub = i, .count = PER, .ids = calloc(PER, sizeof(int64_t))
		};
		cr_assert_eq(pthread_create(&th[i], NULL, thr_publish, &ta_[i]), 0);
	}
	for (uint32_t i = 0; i < T; i++)
		pthread_join(th[i], NULL);

	unsigned char *seen = calloc(T * PER + 1, 1);
	for (uint32_t i = 0; i < T; i++) {
		cr_assert_eq(ta_[i].rc, 0, "%s (%s)", ta_[i].msg, shmb_err_name(ta_[i].rc));
		for (uint64_t k = 0; k < PER; k++) {
			int64_t id = ta_[i].ids[k];
			cr_assert(id >= 1 && id <= T * PER, "thread %u got id %lld", i,
				  (long long)id);
			cr_assert(k == 0 || id > ta_[i].ids[k - 1], "thread %u: id %lld after %lld",
				  i, (long long)id, (long long)ta_[i].ids[k - 1]);
			cr_assert_eq(seen[id], 0, "id %lld given twice", (long long)id);
			seen[id] = 1;
		}
		free(ta_[i].ids);
		shmb_session_close(ta_[i].s);
	}
	free(seen);

	struct evh_report r;
	evh_collect(&reader, "reader", &r, 60000);
	cr_assert_eq(r.n[0], T * PER);
	read_all_check(s, T, PER);
	shmb_session_close(s);
	h_detach(c);
}
