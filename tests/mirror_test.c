/* mirror_test.c - shmb-mirror against a real redis-server, a real shmbrokerd and real publishers
 * (docs/multi-host.md, "Redis mirror"). ctest test_mirror, labels multihost and quick.
 *
 * Each test starts its own redis-server on a free loopback port with persistence off (killed and
 * reaped at the end), a broker with a node_id, and the real shmb-mirror binary; it publishes
 * through libshmb (in the test process or a forked child) and reads Redis with hiredis. Without
 * a redis-server in PATH every test is skipped with a message saying so (CI installs it).
 *
 * Where no event exists (Redis receiving what the mirror copies, the mirror's status file being
 * rewritten every second), H_POLL_UNTIL re-checks with a deadline. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "harness.h"
#include "mirror_harness.h"
#include "mirror_redis.h"

TestSuite(mirror, .init = h_setup, .fini = mirror_fini, .timeout = 90);

struct redis {
	pid_t pid;
	int port;
};

struct mirror {
	pid_t pid;
	char log[300];
};

/* The mirror with a 20 ms touch interval and extra arguments (or NULL), stderr in
 * <runtime dir>/mirror.log. */
static void mirror_start(struct mirror *m, const char *name, int port, const char *extra)
{
	char ex[256];
	snprintf(m->log, sizeof m->log, "%s/mirror.log", h_runtime_dir());
	snprintf(ex, sizeof ex, "--touch-interval-ms 20%s%s", extra ? " " : "", extra ? extra : "");
	m->pid = mirror_spawn(name, port, m->log, ex, NULL);
}

/* A test's Redis, a broker with args and its mirror (extra arguments or NULL). */
static struct h_broker *start_all(struct redis *rd, struct mirror *m, const char *const *args,
				  const char *extra)
{
	rd->pid = redis_start(&rd->port, NULL);
	struct h_broker *b = h_broker_start(args);
	mirror_start(m, b->name, rd->port, extra);
	return b;
}

/* Every entry of the stream in order: ids from first to last, each once, with payloads
 * "ev-<id>". Returns the count checked or -1 (message in why). */
static long check_stream(redisContext *c, const char *sid, uint64_t first, uint64_t last)
{
	uint64_t want = first;
	char start[32] = "-";
	for (;;) {
		redisReply *r = redisCommand(c, "XRANGE shmb:e:{%s} %s + COUNT 500", sid, start);
		cr_assert(r && r->type == REDIS_REPLY_ARRAY);
		size_t n = r->elements;
		for (size_t i = 0; i < n; i++) {
			const redisReply *e = r->element[i];
			uint64_t id = strtoull(e->element[0]->str, NULL, 10);
			cr_assert_eq(id, want, "stream entry %zu: id %s, expected %lu-0", i,
				     e->element[0]->str, (unsigned long)want);
			const redisReply *kv = e->element[1];
			char d[32];
			snprintf(d, sizeof d, "ev-%lu", (unsigned long)id);
			cr_assert_eq(kv->elements, 8);
			cr_assert_str_eq(kv->element[6]->str, "d");
			cr_assert_str_eq(kv->element[7]->str, d);
			want++;
		}
		if (n)
			snprintf(start, sizeof start, "(%s", r->element[n - 1]->element[0]->str);
		freeReplyObject(r);
		if (n < 500)
			break;
	}
	cr_assert_eq(want, last + 1, "stream ends at %lu, expected %lu", (unsigned long)want - 1,
		     (unsigned long)last);
	return (long)(last - first + 1);
}

/* Record, events (ids, stream, kind, bytes, a multi-slot one), attributes (set, change, delete),
 * touch, delete and expiry all arrive; a SCRIPT FLUSH is survived; status exits 3 once the
 * mirror is gone. */
H_TEST(mirror, lifecycle)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b = start_all(&rd, &m,
				       H_ARGS("--node-id", "1", "--ring-events", "64",
					      "--ring-bytes", "16384", "--sweep-interval-ms", "50"),
				       NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	static const uint8_t bin[] = { 'a', 0, 'b', 0xff, '\n' };
	H_OK(shmb_attr_set(s, "color", "blue", 4));
	H_OK(shmb_attr_set(s, "blob", bin, sizeof bin));
	uint8_t big[900];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7);
	cr_assert_eq(shmb_publish(s, 3, 9, bin, sizeof bin), 1);
	cr_assert_eq(shmb_publish(s, 4, 10, big, sizeof big), 2); /* 4 slots of 256 bytes */
	int64_t last = shmb_publish(s, 3, 11, "x", 1);
	cr_assert_eq(last, 6);

	redisContext *rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 6, 10000),
		  "mirrored_id never reached 6 (mirror log %s)", m.log);
	cr_assert_eq(xlen(rc, sid), 3);
	redisReply *r = redisCommand(rc, "XRANGE shmb:e:{%s} - +", sid);
	cr_assert_eq(r->elements, 3);
	const char *ids[] = { "1-0", "2-0", "6-0" }, *streams[] = { "3", "4", "3" },
		   *kinds[] = { "9", "10", "11" };
	const void *data[] = { bin, big, "x" };
	size_t lens[] = { sizeof bin, sizeof big, 1 };
	for (int i = 0; i < 3; i++) {
		const redisReply *e = r->element[i], *kv = e->element[1];
		cr_assert_str_eq(e->element[0]->str, ids[i]);
		cr_assert_str_eq(kv->element[1]->str, streams[i]);
		cr_assert_str_eq(kv->element[3]->str, kinds[i]);
		cr_assert_str_eq(kv->element[6]->str, "d");
		cr_assert_eq(kv->element[7]->len, lens[i]);
		cr_assert(memcmp(kv->element[7]->str, data[i], lens[i]) == 0, "event %s bytes",
			  ids[i]);
	}
	freeReplyObject(r);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert(hfield_is(rc, sid, "tenant", "acme") && hfield_is(rc, sid, "principal", "alice"));
	cr_assert(hfield_is(rc, sid, "owner", "1") && hfield_is(rc, sid, "origin", "1"));
	cr_assert(hfield_is(rc, sid, "state", "live"));
	cr_assert_eq(hnum(rc, sid, "created_at_ms"), info.created_at_ms);
	cr_assert_eq(hnum(rc, sid, "inactivity_ttl_ms"), (long long)info.inactivity_ttl_ms);
	cr_assert_geq(hnum(rc, sid, "claimed"), 6);
	/* Expiry: the session's own (last access + inactivity TTL) plus the 60 s grace. */
	long long pttl = rint_(rc, "PTTL shmb:e:{%s}", sid);
	cr_assert(pttl > (long long)info.inactivity_ttl_ms &&
			  pttl <= (long long)info.inactivity_ttl_ms + MR_GRACE_MS,
		  "PTTL %lld", pttl);
	char *v = rstr(rc, "HGET shmb:a:{%s} color", sid);
	cr_assert_str_eq(v, "blue");
	free(v);
	r = redisCommand(rc, "HGET shmb:a:{%s} blob", sid);
	cr_assert(r->len == sizeof bin && memcmp(r->str, bin, sizeof bin) == 0);
	freeReplyObject(r);

	/* A change and a delete. */
	H_OK(shmb_attr_set(s, "color", "green", 5));
	H_OK(shmb_attr_delete(s, "blob"));
	cr_assert(H_POLL_UNTIL(rint_(rc, "HEXISTS shmb:a:{%s} blob", sid) == 0, 10000));
	v = rstr(rc, "HGET shmb:a:{%s} color", sid);
	cr_assert_str_eq(v, "green");
	free(v);

	/* Scripts flushed under the mirror (no reconnect): NOSCRIPT reloads them. */
	freeReplyObject(redisCommand(rc, "SCRIPT FLUSH"));
	cr_assert_eq(shmb_publish(s, 3, 12, "y", 1), 7);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 7, 10000));

	/* The touch: a lookup refreshes last_accessed_at_ms, the mirror writes it (>= 20 ms on). */
	long long before = hnum(rc, sid, "last_accessed_at_ms");
	shmb_session_close(s);
	h_sleep_ms(30); /* a touch is stored at most once per ms: make the new one later */
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	H_OK(shmb_session_stat(s, &info));
	cr_assert_gt(info.last_accessed_at_ms, before);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "last_accessed_at_ms") == info.last_accessed_at_ms,
			       10000));
	shmb_session_close(s);

	/* Delete, then expiry. */
	H_OK(shmb_session_delete(c, sid, "acme", "alice"));
	cr_assert(H_POLL_UNTIL(hfield_is(rc, sid, "state", "deleted"), 10000));
	pttl = rint_(rc, "PTTL shmb:s:{%s}", sid);
	cr_assert(pttl > 0 && pttl <= MR_GRACE_MS, "PTTL after delete %lld", pttl);
	char sid2[SHMB_SID_LEN + 1];
	shmb_session_opts o = { .inactivity_ttl_ms = 300 };
	H_OK(shmb_session_create_opts(c, "acme", NULL, &o, sid2));
	cr_assert(H_POLL_UNTIL(hfield_is(rc, sid2, "state", "live"), 10000));
	cr_assert_eq(rint_(rc, "HEXISTS shmb:s:{%s} principal", sid2), 0);
	cr_assert(H_POLL_UNTIL(hfield_is(rc, sid2, "state", "expired"), 10000));

	cr_assert(H_POLL_UNTIL(status_num(b->name, "sessions.ended") == 2, 10000));
	cr_assert_eq(status_num(b->name, "events.lost"), 0);
	cr_assert_geq(status_num(b->name, "events.mirrored"), 4);
	cr_assert(H_POLL_UNTIL(rint_(rc, "EXISTS shmb:n:1") == 1, 10000));

	redisFree(rc);
	reap(&m.pid, SIGTERM);
	struct h_result res;
	h_run(&res, (const char *const[]){ SHMB_MIRROR_PATH, "--name", b->name, "status", NULL });
	cr_assert_eq(res.status, 3, "status without a mirror: %d (%s)", res.status, res.err);
	h_result_free(&res);
	h_detach(c);
	reap(&rd.pid, SIGKILL);
}

struct pub_arg {
	const char *name, *sid;
	uint64_t n;
	int pace_us;
};

/* A child publishing ids 1..n ("ev-<id>") at a pace, reporting "1" after the first half. */
static int publisher(void *p, int wfd)
{
	const struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	if (shmb_attach(a->name, &c) || shmb_session_open(c, a->sid, "t", NULL, &s))
		return 1;
	for (uint64_t i = 1; i <= a->n; i++) {
		char d[32];
		int n = snprintf(d, sizeof d, "ev-%lu", (unsigned long)i);
		if (shmb_publish(s, 1, 2, d, (size_t)n) != (int64_t)i)
			return 2;
		if (i == a->n / 2 && write(wfd, "1", 1) != 1)
			return 3;
		usleep((useconds_t)a->pace_us);
	}
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

/* kill -9 of the mirror mid-stream and a restart: every event exactly once, none missing. */
H_TEST(mirror, kill9_restart_exactly_once)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b = start_all(&rd, &m,
				       H_ARGS("--node-id", "3", "--ring-events", "8192",
					      "--ring-bytes", "1048576"),
				       "--batch 64");
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "t", NULL, sid));
	redisContext *rc = rconnect(rd.port, NULL);
	struct pub_arg a = { b->name, sid, 6000, 200 };
	struct h_child ch;
	h_child_start(&ch, publisher, &a);
	/* Killed while the stream flows (some events in Redis, the publisher going on). */
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") >= 500, 20000));
	reap(&m.pid, SIGKILL);
	long long at_kill = hnum(rc, sid, "mirrored_id");
	char one;
	cr_assert_eq(h_child_read(&ch, &one, 1, 20000), 1);
	mirror_start(&m, b->name, rd.port, "--batch 64");
	cr_assert_eq(h_child_wait(&ch, 30000), 0);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 6000, 30000),
		  "mirrored_id %lld after the restart", hnum(rc, sid, "mirrored_id"));
	cr_assert_lt(at_kill, 6000);
	check_stream(rc, sid, 1, 6000);
	cr_assert_eq(hfield_is(rc, sid, "lost", ""), 1);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* redis-server restarted empty (no persistence): the mirror reconnects and sends again what
 * the ring still holds; the ids the ring no longer has are declared lost. */
H_TEST(mirror, redis_restart_resends_the_ring)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b =
		start_all(&rd, &m, H_ARGS("--node-id", "2", "--ring-events", "64"), NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	H_OK(shmb_attr_set(s, "k", "v", 1));
	redisContext *rc = rconnect(rd.port, NULL);
	publish_n(s, 1, 50);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 50, 10000));
	publish_n(s, 51, 100); /* the ring keeps 37..100 */
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 100, 10000));
	cr_assert_eq(xlen(rc, sid), 100);
	redisFree(rc);

	reap(&rd.pid, SIGKILL);
	rd.pid = redis_start(&rd.port, NULL); /* same port, empty */
	rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 100, 15000),
		  "the mirror did not send the session again (log %s)", m.log);
	check_stream(rc, sid, 37, 100);
	char *lost = rstr(rc, "HGET shmb:s:{%s} lost", sid);
	cr_assert_str_eq(lost, "1-36");
	free(lost);
	cr_assert(hfield_is(rc, sid, "owner", "2") && hfield_is(rc, sid, "tenant", "t"));
	char *v = rstr(rc, "HGET shmb:a:{%s} k", sid);
	cr_assert_str_eq(v, "v");
	free(v);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "redis.reconnects") >= 1, 10000));
	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* Redis stopped (SIGSTOP) while events are published: publishing does not slow down, the
 * mirror reports events behind, then catches up once Redis runs again. */
H_TEST(mirror, stopped_redis_never_slows_publishers)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b = start_all(&rd, &m,
				       H_ARGS("--node-id", "4", "--ring-events", "4096",
					      "--ring-bytes", "524288"),
				       NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	redisContext *rc = rconnect(rd.port, NULL);
	int64_t t0 = h_now_ms();
	publish_n(s, 1, 1000);
	int64_t running = h_now_ms() - t0;
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 1000, 10000));
	redisFree(rc);

	kill(rd.pid, SIGSTOP);
	t0 = h_now_ms();
	publish_n(s, 1001, 2000);
	int64_t stopped = h_now_ms() - t0;
	/* 1000 publishes take well under a millisecond each either way; a publisher waiting on
	 * the mirror or on Redis would take the mirror's 300 ms timeout at least once. */
	cr_assert_lt(stopped, running + 250,
		     "publishing took %ld ms with Redis stopped, %ld ms "
		     "with it running",
		     (long)stopped, (long)running);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "events.behind") >= 1000, 10000),
		  "the mirror does not report what it is behind");
	kill(rd.pid, SIGCONT);
	rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 2000, 15000));
	check_stream(rc, sid, 1, 2000);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "events.behind") == 0, 10000));
	cr_assert_geq(status_num(b->name, "lag_ms.p99"), 250, "lag not reported");
	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* The ring overran a stopped mirror: the evicted ids are a `lost` range, counted. */
H_TEST(mirror, overrun_records_lost_range)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b = start_all(&rd, &m, H_ARGS("--node-id", "5"), NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	publish_n(s, 1, 5);
	redisContext *rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 5, 10000));
	kill(m.pid, SIGSTOP);
	publish_n(s, 6, 45); /* a 16-event ring keeps 30..45 */
	kill(m.pid, SIGCONT);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 45, 10000));
	char *lost = rstr(rc, "HGET shmb:s:{%s} lost", sid);
	cr_assert_str_eq(lost, "6-29");
	free(lost);
	cr_assert_eq(xlen(rc, sid), 5 + 16);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "events.lost") == 24, 10000));
	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* A session Redis says another node owns is never written; once ownership names this node
 * again, the mirror writes it. */
H_TEST(mirror, fenced_by_another_owner)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	rd.pid = redis_start(&rd.port, NULL);
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "6"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	redisContext *rc = rconnect(rd.port, NULL);
	freeReplyObject(redisCommand(rc, "HSET shmb:s:{%s} owner 7 state live mirrored_id 0", sid));
	struct mirror m = { 0 };
	mirror_start(&m, b->name, rd.port, NULL);
	publish_n(s, 1, 5);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "sessions.not_owner") == 1, 10000));
	cr_assert_eq(xlen(rc, sid), 0);
	cr_assert(hfield_is(rc, sid, "owner", "7"));
	cr_assert_eq(rint_(rc, "HEXISTS shmb:s:{%s} tenant", sid), 0);
	freeReplyObject(redisCommand(rc, "HSET shmb:s:{%s} owner 6", sid));
	cr_assert(H_POLL_UNTIL(xlen(rc, sid) == 5, 10000)); /* re-asked every 2 s */
	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* The failover path end to end: what a mirror wrote for node 1 is claimed by node 2
 * (mr_failover), restored into node 2's broker (shmb_session_restore) with the same events and
 * attributes, ids continuing after a margin; node 1's mirror is fenced from then on, node 2's
 * mirrors the session onward. */
H_TEST(mirror, failover_restores_what_was_mirrored)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	rd.pid = redis_start(&rd.port, NULL);
	struct h_broker *a = h_broker_start(
		H_ARGS("--node-id", "1", "--ring-events", "256", "--ring-bytes", "65536"));
	struct h_broker *bb = h_broker_new(
		H_ARGS("--node-id", "2", "--ring-events", "256", "--ring-bytes", "65536"));
	cr_assert_eq(h_broker_spawn(bb, NULL), 0);
	struct mirror ma = { 0 }, mb = { 0 };
	mirror_start(&ma, a->name, rd.port, NULL);
	shmb_client *ca = h_attach(a->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(ca, "acme", "alice", sid);
	static const uint8_t bin[] = { 0, 1, 2, 0xfe };
	H_OK(shmb_attr_set(s, "k1", "v1", 2));
	H_OK(shmb_attr_set(s, "k2", bin, sizeof bin));
	for (int i = 1; i <= 30; i++) {
		char d[32];
		int n = snprintf(d, sizeof d, "ev-%d", i);
		cr_assert_eq(shmb_publish(s, (uint32_t)(i % 3), (uint16_t)(100 + i), d, (size_t)n),
			     i);
	}
	shmb_session_info ia;
	H_OK(shmb_session_stat(s, &ia));
	redisContext *rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 30 &&
				       rint_(rc, "HLEN shmb:a:{%s}", sid) == 2,
			       10000));

	struct mr_conn m;
	char addr[32];
	snprintf(addr, sizeof addr, "127.0.0.1:%d", rd.port);
	cr_assert_eq(mr_conn_init(&m, addr, NULL, 0, 0), 0);
	struct mr_failover f;
	cr_assert_eq(mr_failover(&m, "0000aaaabbbbccccddddeeeeffff0000", 2, 256, 0, 0, &f),
		     MR_ENOREC);
	int rcf = mr_failover(&m, sid, 2, 256, 0, 0, &f);
	cr_assert_eq(rcf, 0, "mr_failover: %s (%s)", mr_strerror(rcf), m.err);
	cr_assert_eq(f.prev_owner, 1);
	cr_assert_eq(f.epoch, 1);
	cr_assert_eq(f.mirrored_id, 30);
	cr_assert_eq(f.img.n_events, 30);
	cr_assert_eq(f.img.n_attrs, 2);
	cr_assert_eq(f.img.last_event_id, 30 + MR_ID_MARGIN);
	cr_assert(f.lost_from == 31 && f.lost_to == 30 + MR_ID_MARGIN);
	cr_assert_eq(mr_lost_after(&f, 30), MR_ID_MARGIN);
	cr_assert_eq(mr_lost_after(&f, 10), MR_ID_MARGIN);
	cr_assert_eq(mr_lost_after(&f, 30 + MR_ID_MARGIN), 0);
	int owner, live;
	cr_assert_eq(mr_owner(&m, sid, &owner, &live), 1);
	cr_assert(owner == 2 && live);

	shmb_client *cb = h_attach(bb->name);
	H_EXPECT_RC(shmb_session_restore(cb, &f.img), 0);
	mr_failover_free(&f);
	shmb_session *sb;
	H_OK(shmb_session_open(cb, sid, "acme", "alice", &sb));
	shmb_session_info ib;
	H_OK(shmb_session_stat(sb, &ib));
	cr_assert_eq(ib.created_at_ms, ia.created_at_ms);
	cr_assert_eq(ib.inactivity_ttl_ms, ia.inactivity_ttl_ms);
	cr_assert_eq(ib.absolute_ttl_ms, ia.absolute_ttl_ms);
	cr_assert_eq(ib.last_event_id, 30 + MR_ID_MARGIN);
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(sb, 0, &cur));
	int seen = 0;
	for (;;) {
		shmb_event ev;
		char buf[64];
		int r = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		cr_assert_geq(r, 0, "cursor: %s", shmb_strerror(r));
		if (r == 0)
			break;
		if (ev.flags & SHMB_EV_GAP) {
			cr_assert_gt(ev.id, 30);
			continue;
		}
		seen++;
		char want[32];
		int n = snprintf(want, sizeof want, "ev-%d", seen);
		cr_assert_eq(ev.id, (uint64_t)seen);
		cr_assert_eq(ev.stream, (uint32_t)(seen % 3));
		cr_assert_eq(ev.kind, 100 + seen);
		cr_assert(ev.len == (size_t)n && memcmp(ev.data, want, (size_t)n) == 0);
	}
	shmb_cursor_close(cur);
	cr_assert_eq(seen, 30);
	char v[16];
	cr_assert_eq(shmb_attr_get(sb, "k1", v, sizeof v, NULL), 2);
	cr_assert(memcmp(v, "v1", 2) == 0);
	cr_assert_eq(shmb_attr_get(sb, "k2", v, sizeof v, NULL), (int)sizeof bin);
	cr_assert(memcmp(v, bin, sizeof bin) == 0);

	/* Node 1 goes on publishing into its stale copy: fenced, nothing reaches Redis. */
	cr_assert_eq(shmb_publish(s, 0, 1, "stale", 5), 31);
	cr_assert(H_POLL_UNTIL(status_num(a->name, "fenced_writes") >= 1, 10000));
	cr_assert_eq(hnum(rc, sid, "mirrored_id"), 30);
	/* Node 2's mirror takes the session over: the skipped ids as gaps, then the new event. */
	mirror_start(&mb, bb->name, rd.port, NULL);
	cr_assert_eq(shmb_publish(sb, 0, 1, "fresh", 5), 30 + MR_ID_MARGIN + 1);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 30 + MR_ID_MARGIN + 1, 10000));
	redisReply *r = redisCommand(rc, "XREVRANGE shmb:e:{%s} + - COUNT 2", sid);
	cr_assert_eq(r->elements, 2);
	cr_assert_str_eq(r->element[0]->element[1]->element[7]->str, "fresh");
	cr_assert_str_eq(r->element[1]->element[1]->element[6]->str, "g");
	freeReplyObject(r);
	cr_assert(hfield_is(rc, sid, "owner", "2"));

	redisFree(rc);
	mr_conn_close(&m);
	shmb_session_close(s);
	shmb_session_close(sb);
	reap(&ma.pid, SIGTERM);
	reap(&mb.pid, SIGTERM);
	h_detach(ca);
	h_detach(cb);
	reap(&rd.pid, SIGKILL);
}

/* The broker killed and restarted (the segment adopted): the mirror goes on with its mapping.
 * The broker stopped with --unlink-on-exit and started again (a new segment, the old one
 * retired): the mirror attaches again and mirrors the new segment's sessions. Its metrics are
 * served over HTTP all along. */
H_TEST(mirror, broker_restarts_and_metrics)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b = start_all(&rd, &m, H_ARGS("--node-id", "8", "--unlink-on-exit"),
				       "--metrics-listen 127.0.0.1:0");
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	publish_n(s, 1, 3);
	redisContext *rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 3, 10000));

	h_broker_kill(b);
	h_broker_restart(b);
	publish_n(s, 4, 6); /* the client's mapping is the adopted segment's */
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 6, 10000));
	shmb_session_close(s);
	h_detach(c);

	h_broker_stop(b); /* unlinked and retired */
	h_broker_restart(b);
	c = h_attach(b->name);
	s = new_session(c, "t", NULL, sid);
	publish_n(s, 1, 2);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 2, 15000),
		  "no re-attach to the new segment (log %s)", m.log);

	/* The metrics port, from the log line "metrics on http://127.0.0.1:PORT/metrics". */
	FILE *f = fopen(m.log, "r");
	char line[512];
	int port = 0;
	while (f && fgets(line, sizeof line, f))
		if (strstr(line, "metrics on http://127.0.0.1:"))
			port = atoi(strstr(line, "127.0.0.1:") + 10);
	if (f)
		fclose(f);
	cr_assert_gt(port, 0);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	const char *req = "GET /metrics HTTP/1.0\r\n\r\n";
	cr_assert_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	char resp[8192];
	size_t n = 0;
	for (ssize_t k; n < sizeof resp - 1 && (k = read(fd, resp + n, sizeof resp - 1 - n)) > 0;)
		n += (size_t)k;
	resp[n] = '\0';
	close(fd);
	cr_assert(strstr(resp, "200 OK") && strstr(resp, "shmb_mirror_events_total{name=\"") &&
			  strstr(resp, "shmb_mirror_redis_up{"),
		  "metrics: %s", resp);

	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}

/* Bad command lines exit 2 with a message and start nothing; a broker without a node_id is
 * refused (exit 1); status exits 3 when no mirror runs. Needs no Redis. */
H_TEST(mirror, usage_errors_and_refusals)
{
	static const char *const bad[][4] = {
		{ "--redis", "nocolon", NULL },      { "--redis", "h:99999", NULL },
		{ "--interval-ms", "0", NULL },      { "--batch", "x", NULL },
		{ "--redis-timeout-ms", "5", NULL }, { "frobnicate", NULL },
		{ "status", "--bogus", NULL },       { "--name", "../x", NULL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const char *av[8] = { SHMB_MIRROR_PATH };
		for (int k = 0; bad[i][k]; k++)
			av[k + 1] = bad[i][k];
		struct h_result r;
		h_run(&r, av);
		cr_assert_eq(r.status, 2, "%s %s: exit %d (%s)", bad[i][0],
			     bad[i][1] ? bad[i][1] : "", r.status, r.err);
		cr_assert(h_contains(r.err, "shmb-mirror:"), "no message: %s", r.err);
		h_result_free(&r);
	}
	struct h_result r;
	h_run(&r, (const char *const[]){ SHMB_MIRROR_PATH, "--help", NULL });
	cr_assert(r.status == 0 && h_contains(r.out, "usage: shmb-mirror"));
	h_result_free(&r);

	struct h_broker *b = h_broker_start(H_NOARGS); /* node_id 0 */
	h_run(&r, (const char *const[]){ SHMB_MIRROR_PATH, "--name", b->name, "--redis",
					 "127.0.0.1:1", NULL });
	cr_assert_eq(r.status, 1, "a broker without node_id: exit %d (%s)", r.status, r.err);
	cr_assert(h_contains(r.err, "no node_id"), "%s", r.err);
	h_result_free(&r);
	h_run(&r, (const char *const[]){ SHMB_MIRROR_PATH, "--name", b->name, "status", NULL });
	cr_assert_eq(r.status, 3);
	cr_assert(h_contains(r.err, "no mirror runs"), "%s", r.err);
	h_result_free(&r);
}

/* Redis refusing a write (here a key of the wrong type in the way) moves nothing: the error is
 * counted and logged (rate limited), and once the key is fixed the events arrive. */
H_TEST(mirror, refused_write_is_sent_again)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	rd.pid = redis_start(&rd.port, NULL);
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "9"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	publish_n(s, 1, 5);
	redisContext *rc = rconnect(rd.port, NULL);
	freeReplyObject(redisCommand(rc, "SET shmb:e:{%s} in-the-way", sid));
	struct mirror m = { 0 };
	mirror_start(&m, b->name, rd.port, NULL);
	cr_assert(H_POLL_UNTIL(status_num(b->name, "redis.errors") >= 1, 10000));
	cr_assert_lt(hnum(rc, sid, "mirrored_id"), 5);
	freeReplyObject(redisCommand(rc, "DEL shmb:e:{%s}", sid));
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 5, 10000));
	check_stream(rc, sid, 1, 5);
	redisFree(rc);
	shmb_session_close(s);
	reap(&m.pid, SIGTERM);
	char *log = NULL;
	size_t n = 0;
	FILE *f = fopen(m.log, "r");
	cr_assert(f);
	ssize_t k = getdelim(&log, &n, '\0', f);
	fclose(f);
	cr_assert(k > 0 && h_contains(log, "write refused: XADD 1: WRONGTYPE"), "%s", log);
	free(log);
	h_detach(c);
	reap(&rd.pid, SIGKILL);
}

/* mr_failover on records written by hand: ids continue after max(mirrored_id, claimed, the
 * client's last id) + the margin; the mirror's own lost ranges and the lag's range add up in
 * mr_lost_after; deleted and malformed records are refused and claim nothing. */
H_TEST(mirror, failover_margin_and_lost_ranges)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	rd.pid = redis_start(&rd.port, NULL);
	redisContext *rc = rconnect(rd.port, NULL);
	const char *sid = "0003aaaabbbbccccddddeeeeffff0001";
	freeReplyObject(redisCommand(rc,
				     "HSET shmb:s:{%s} tenant t created_at_ms 1000 "
				     "last_accessed_at_ms 2000 owner 3 epoch 4 mirrored_id 30 "
				     "claimed 40 lost 3-5 state live",
				     sid));
	for (int id = 6; id <= 30; id++)
		freeReplyObject(redisCommand(rc, "XADD shmb:e:{%s} %d-0 s 0 k 1 t 5 d x", sid, id));
	struct mr_conn m;
	char addr[32];
	snprintf(addr, sizeof addr, "127.0.0.1:%d", rd.port);
	cr_assert_eq(mr_conn_init(&m, addr, NULL, 0, 0), 0);
	struct mr_failover f;
	cr_assert_eq(mr_failover(&m, sid, 5, 16, 50, 10, &f), 0, "%s", m.err);
	cr_assert_eq(f.prev_owner, 3);
	cr_assert_eq(f.epoch, 5);
	cr_assert_eq(f.claimed, 40);
	cr_assert_eq(f.img.last_event_id, 60); /* the client's 50 + margin 10 */
	cr_assert_eq(f.img.n_events, 16);      /* the newest ring_events entries: 15..30 */
	cr_assert_eq(f.img.events[0].id, 15);
	cr_assert_str_eq(f.lost, "3-5");
	cr_assert(f.lost_from == 31 && f.lost_to == 60);
	cr_assert_eq(mr_lost_after(&f, 0), 3 + 30);
	cr_assert_eq(mr_lost_after(&f, 4), 1 + 30);
	cr_assert_eq(mr_lost_after(&f, 55), 5);
	cr_assert(f.img.principal == NULL && strcmp(f.img.tenant, "t") == 0);
	mr_failover_free(&f);

	freeReplyObject(redisCommand(rc, "HSET shmb:s:{%s} state deleted", sid));
	cr_assert_eq(mr_failover(&m, sid, 6, 16, 0, 0, &f), MR_ENOTLIVE);
	cr_assert(hfield_is(rc, sid, "owner", "5"));
	freeReplyObject(redisCommand(rc, "HSET shmb:s:{%s} state live created_at_ms x", sid));
	cr_assert_eq(mr_failover(&m, sid, 6, 16, 0, 0, &f), MR_EPROTO);
	cr_assert_eq(mr_failover(&m, "nothex", 6, 16, 0, 0, &f), MR_EINVAL);
	cr_assert_eq(mr_failover(&m, sid, 0, 16, 0, 0, &f), MR_EINVAL);
	mr_conn_close(&m);
	redisFree(rc);
	reap(&rd.pid, SIGKILL);
}

/* A new incarnation of a sid (deleted, then restored here from an older image with fewer ids
 * than Redis holds): the mirror replaces Redis's copy instead of taking the new ids for ids
 * Redis already has. */
H_TEST(mirror, new_incarnation_with_fewer_ids_replaces_redis_copy)
{
	NEED_REDIS();
	struct redis rd = { 0 };
	struct mirror m = { 0 };
	struct h_broker *b =
		start_all(&rd, &m, H_ARGS("--node-id", "10", "--ring-events", "64"), NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, "t", NULL, sid);
	H_OK(shmb_attr_set(s, "old", "1", 1));
	publish_n(s, 1, 20);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	shmb_session_close(s);
	redisContext *rc = rconnect(rd.port, NULL);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 20, 10000));
	H_OK(shmb_session_delete(c, sid, "t", NULL));
	cr_assert(H_POLL_UNTIL(hfield_is(rc, sid, "state", "deleted"), 10000));

	shmb_image_event ev[2] = {
		{ .id = 4,
		  .stream = 0,
		  .kind = 1,
		  .ts_ms = info.created_at_ms,
		  .data = "ev-4",
		  .len = 4 },
		{ .id = 5,
		  .stream = 0,
		  .kind = 1,
		  .ts_ms = info.created_at_ms,
		  .data = "ev-5",
		  .len = 4 },
	};
	shmb_image_attr at = { .key = "new", .val = "2", .len = 1 };
	shmb_session_image img = { .sid = sid,
				   .tenant = "t",
				   .created_at_ms = info.created_at_ms,
				   .last_accessed_at_ms = info.last_accessed_at_ms,
				   .inactivity_ttl_ms = info.inactivity_ttl_ms,
				   .absolute_ttl_ms = info.absolute_ttl_ms,
				   .last_event_id = 5,
				   .events = ev,
				   .n_events = 2,
				   .attrs = &at,
				   .n_attrs = 1 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	publish_n(s, 6, 6);
	cr_assert(H_POLL_UNTIL(hnum(rc, sid, "mirrored_id") == 6, 10000),
		  "mirrored_id %lld (log %s)", hnum(rc, sid, "mirrored_id"), m.log);
	cr_assert(hfield_is(rc, sid, "state", "live"));
	cr_assert_eq(xlen(rc, sid), 6); /* 1..3 gaps, 4..6 */
	char *v = rstr(rc, "HGET shmb:a:{%s} new", sid);
	cr_assert_str_eq(v, "2");
	free(v);
	cr_assert_eq(rint_(rc, "HEXISTS shmb:a:{%s} old", sid), 0);
	cr_assert_gt(rint_(rc, "PTTL shmb:s:{%s}", sid), MR_GRACE_MS);
	shmb_session_close(s);
	stop_all(&m.pid, c, rc, &rd.pid);
}
