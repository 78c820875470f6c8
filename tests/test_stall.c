/* test_stall.c - a wedged descriptor and a stopped publisher (issue 10, items 4 and 5).
 *
 * ownerless_busy_descriptor_is_settled: one 8-byte write sets a committed descriptor of a live
 * session to "busy" with no owner (the red team's repro; the test maps the segment read-write,
 * as its owner may). With the broker stopped, `shmctl verify` reports it (exit 4), a cursor stops
 * before it, and the publisher whose id maps to that slot gives up after the wait bound with
 * SHMB_EOVERRUN instead of spinning forever. Once the broker runs again it writes the wedged id
 * and the abandoned one as gap records: the cursor moves on, publishing and creating work, and
 * verify is clean. ownerless_busy_descriptor_is_settled_by_a_restarted_broker: the same with the
 * broker killed: verify reports it, and the next broker settles it after adopting the segment.
 *
 * stopped_publisher_costs_no_core_and_blocks_no_creates: a publisher stopped (SIGSTOP, fault
 * point publish.write:stop) while it owns the slots of a large event, mid-publish. Another
 * publisher of the same session wraps onto those slots: it must sleep, not spin (its CPU time
 * stays under 20% of the wall time) and return within the bound. Meanwhile sessions of another
 * tenant are created and deleted, many more times than there are records: every create must
 * succeed (the stopped section holds up only its own record). `shmctl workers --json` shows the
 * stopped worker as stalled. After SIGCONT everything settles: its event commits, the abandoned
 * ids become gaps, a cursor reads through, verify is clean.
 *
 * stopped_publisher_keeps_its_own_record: the safety side of that: the stopped publisher's own
 * session, deleted meanwhile, stays RETIRED with its generation while other records are
 * recycled around it, and is reclaimed once the publisher has left (seen failing with a
 * reclaimer that ignores pins).
 *
 * Waits are events (a child's pipe, waitpid for the stop) where one exists, H_POLL_UNTIL where
 * none does (the broker's scans, a cursor as a non-subscriber). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <urcu/uatomic.h>

#include "evhelp.h"
#include "evring.h"
#include "fault.h"
#include "layout.h"
#include "seg.h"
#include "sid.h"

TestSuite(stall, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define STALL_SLACK_MS 2500 /* a loaded 2-core CI machine: scheduling, not the algorithm */

/* The ring every test here uses: 16 slots of 256 bytes. */
#define STALL_BROKER_ARGS                                                           \
	"--ring-events", "16", "--ring-bytes", "4096", "--max-event-bytes", "2048", \
		"--max-sessions", "16"

/* The LIVE record holding sid, in a read-write mapping of the segment. */
static uint32_t find_record(const struct shmb_seg *seg, const char *sid)
{
	uint8_t want[SHMB_SID_BYTES];
	cr_assert_eq(sid_parse(sid, want), 0);
	for (uint32_t i = 0; i < seg->cfg.max_sessions; i++) {
		const struct shmb_session_rec *r = seg_rec(seg, i);
		if (uatomic_read(&r->state) == SHMB_REC_LIVE && sid_equal(r->sid, want))
			return i;
	}
	cr_fatal("session %s not found in the segment", sid);
	return 0;
}

static int64_t publish_small(shmb_session *s, uint64_t tag)
{
	unsigned char buf[64];
	evh_fill(buf, sizeof buf, 1, tag, 0);
	return shmb_publish(s, 0, 0, buf, sizeof buf);
}

/* Reads the next event within timeout_ms (polling: nothing wakes a non-subscriber). Returns
 * what shmb_cursor_next returned last. */
static int next_within(shmb_cursor *cur, shmb_event *ev, void *buf, size_t len, int timeout_ms)
{
	int rc = 0;
	H_POLL_UNTIL((rc = shmb_cursor_next(cur, ev, buf, len)) != 0, timeout_ms);
	return rc;
}

static void expect_verify(const struct h_broker *b, int want, const char *word)
{
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, want, "shmctl verify: exit %d, want %d\nstdout:\n%s\nstderr:\n%s",
		     r.status, want, r.out, r.err);
	if (word)
		cr_expect(strstr(r.out, word) || strstr(r.err, word),
			  "shmctl verify does not say '%s':\nstdout:\n%s\nstderr:\n%s", word, r.out,
			  r.err);
	h_result_free(&r);
}

H_TEST(stall, ownerless_busy_descriptor_is_settled)
{
	struct h_broker *b = h_broker_start(H_ARGS(STALL_BROKER_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (uint64_t i = 1; i <= 3; i++)
		cr_assert_eq(publish_small(s, i), (int64_t)i);
	shmb_cursor *cur;
	cr_assert_eq(shmb_cursor_open(s, 0, &cur), 0);

	struct shmb_seg seg;
	char why[256] = "";
	cr_assert_eq(seg_open_name(b->name, 1, &seg, why, sizeof why), 0, "%s", why);
	uint32_t idx = find_record(&seg, sid);

	/* The broker stopped, so nothing settles the damage while verify looks at it. */
	cr_assert_eq(kill(b->pid, SIGSTOP), 0);
	cr_assert(H_POLL_UNTIL(evh_proc_stopped(b->pid), 5000), "broker did not stop");

	/* The red team's write: committed id 3, now "busy" with no owner. */
	uatomic_set(&seg_desc(&seg, idx, 3)->seq, 3 | SHMB_DESC_BUSY);
	expect_verify(b, 4, "ownerless busy descriptor");

	/* Readers stop before it; ids 4..18 publish normally. */
	shmb_event ev;
	unsigned char rbuf[4096];
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 1);
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 1);
	cr_assert_eq(ev.id, 2);
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 0);
	for (uint64_t i = 4; i <= 18; i++)
		cr_assert_eq(publish_small(s, i), (int64_t)i);

	/* Id 19 maps to the wedged slot: the publisher gives up after the bound, no hang. */
	int64_t t0 = h_now_ms();
	int64_t rc = publish_small(s, 19);
	int64_t took = h_now_ms() - t0;
	cr_assert_eq(rc, SHMB_EOVERRUN, "publish onto the wedged slot returned %lld (%s)",
		     (long long)rc, rc < 0 ? shmb_strerror((int)rc) : "an id");
	cr_assert_geq(took, EVR_WAIT_MS - 50, "gave up after %lld ms only", (long long)took);
	cr_assert_leq(took, EVR_WAIT_MS + STALL_SLACK_MS, "gave up only after %lld ms",
		      (long long)took);

	/* The broker runs again: it writes the wedged id 3 and the abandoned id 19 as gaps. */
	cr_assert_eq(kill(b->pid, SIGCONT), 0);
	cr_assert_eq(next_within(cur, &ev, rbuf, sizeof rbuf, 5000), 1,
		     "the cursor never passed the wedged id 3");
	cr_assert_eq(ev.id, 3);
	cr_assert(ev.flags & SHMB_EV_GAP, "id 3 is not a gap record");
	for (uint64_t i = 4; i <= 18; i++) {
		cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 1);
		cr_assert_eq(ev.id, i);
		struct evh_payload p;
		const char *bad = evh_check(ev.data, ev.len, &p);
		cr_assert(!bad, "event %llu: %s", (unsigned long long)i, bad);
	}
	cr_assert_eq(next_within(cur, &ev, rbuf, sizeof rbuf, 5000), 1,
		     "the cursor never passed the abandoned id 19");
	cr_assert_eq(ev.id, 19);
	cr_assert(ev.flags & SHMB_EV_GAP, "id 19 is not a gap record");
	cr_assert_eq(publish_small(s, 20), 20);
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 1);
	cr_assert_eq(ev.id, 20);
	cr_assert_geq(h_counter(b->name, SHMB_CTR_GAPS_WRITTEN), 2);

	/* Creates and deletes work; the segment is consistent again. */
	char other[SHMB_SID_LEN + 1];
	int crc = shmb_session_create(c, "globex", NULL, other);
	cr_assert_eq(crc, 0, "create: %s", shmb_strerror(crc));
	cr_assert_eq(shmb_session_delete(c, other, "globex", NULL), 0);
	expect_verify(b, 0, NULL);

	seg_unmap(&seg);
	shmb_cursor_close(cur);
	shmb_session_close(s);
}

/* ---------------------------------------------------------------- a stopped publisher */

struct pub_arg {
	const char *name, *sid;
	const char *fault; /* SHMB_FAULT value during the publish, or NULL */
	uint32_t count;    /* events to publish */
	uint32_t len;      /* bytes each */
};

/* Opens the session, says "ready", publishes count events (with the fault armed, if any) and
 * reports: n[0] first id, n[1] events published, n[2] SHMB_EOVERRUN returns, t[0] the longest
 * publish (ns), t[1] wall time of the loop (ns), t[2] CPU time of the process during it (ns). */
static int publisher(void *p, int wfd)
{
	struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 1;
	struct evh_report r = { 0 };
	unsigned char buf[2048];
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	int64_t start = evh_mono_ns();
	if (a->fault)
		setenv("SHMB_FAULT", a->fault, 1);
	for (uint32_t i = 0; i < a->count; i++) {
		evh_fill(buf, a->len, 2, i, 0);
		int64_t t = evh_mono_ns();
		int64_t id = shmb_publish(s, 0, 0, buf, a->len);
		t = evh_mono_ns() - t;
		if (t > r.t[0])
			r.t[0] = t;
		if (id == SHMB_EOVERRUN) {
			r.n[2]++;
		} else if (id < 0) {
			return evh_fail(wfd, (int)id, "publisher: publish %u", i);
		} else {
			if (!r.n[0])
				r.n[0] = (uint64_t)id;
			r.n[1]++;
		}
	}
	unsetenv("SHMB_FAULT");
	r.t[1] = evh_mono_ns() - start;
	getrusage(RUSAGE_SELF, &ru1);
	r.t[2] = ((int64_t)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
		  (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)) *
			 1000000000 +
		 ((int64_t)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
		  (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) *
			 1000;
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* The worker entry of pid in `shmctl workers --json`, its "stalled" value: 1, 0, or -1 when
 * the pid has no entry. */
static int worker_stalled(const char *name, pid_t pid)
{
	cJSON *arr = h_shmctl_json(name, "workers", NULL);
	int st = -1;
	const cJSON *w;
	cJSON_ArrayForEach(w, arr)
	{
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(w, "pid");
		const cJSON *s = cJSON_GetObjectItemCaseSensitive(w, "stalled");
		if (cJSON_IsNumber(p) && (pid_t)p->valuedouble == pid)
			st = cJSON_IsTrue(s) ? 1 : 0;
	}
	cJSON_Delete(arr);
	return st;
}

H_TEST(stall, stopped_publisher_costs_no_core_and_blocks_no_creates)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test(
			"built without SHMB_FAULT_INJECTION (cmake -DSHMB_FAULT_INJECTION=ON)");
	struct h_broker *b = h_broker_start(H_ARGS(STALL_BROKER_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	cr_assert_eq(publish_small(s, 1), 1);

	/* The victim stops owning ids 2..5 (1000 bytes: 4 slots of 256), written, uncommitted. */
	struct pub_arg va = {
		.name = b->name, .sid = sid, .fault = "publish.write:stop", .count = 1, .len = 1000
	};
	static struct h_child v;
	h_child_start(&v, publisher, &va);
	char one;
	cr_assert_eq(h_child_read(&v, &one, 1, 30000), 1, "victim did not open the session");
	int st;
	pid_t wr;
	while ((wr = waitpid(v.pid, &st, WUNTRACED)) < 0 && errno == EINTR)
		;
	cr_assert_eq(wr, v.pid);
	cr_assert(WIFSTOPPED(st), "victim did not stop at publish.write (status %#x)", st);

	/* Another publisher: ids 6..19; 18 and 19 map to the victim's slots 2 and 3. */
	struct pub_arg pa = { .name = b->name, .sid = sid, .count = 14, .len = 64 };
	static struct h_child p2;
	h_child_start(&p2, publisher, &pa);
	cr_assert_eq(h_child_read(&p2, &one, 1, 30000), 1, "publisher did not open the session");

	/* Meanwhile another tenant creates and deletes far more sessions than there are records:
	 * the stopped section pins the victim's record only. */
	for (int i = 0; i < 48; i++) {
		char other[SHMB_SID_LEN + 1];
		int rc = shmb_session_create(c, "globex", NULL, other);
		cr_assert_eq(rc, 0, "create %d while a publisher is stopped: %s", i,
			     shmb_strerror(rc));
		rc = shmb_session_delete(c, other, "globex", NULL);
		cr_assert_eq(rc, 0, "delete %d: %s", i, shmb_strerror(rc));
	}
	cr_assert(H_POLL_UNTIL(worker_stalled(b->name, v.pid) == 1, 10000),
		  "shmctl workers never showed the stopped publisher as stalled");
	struct h_result hr;
	h_shmctl(&hr, b->name, "workers", NULL);
	cr_expect_eq(hr.status, 0);
	cr_expect(strstr(hr.out, "STALLED") && strstr(hr.out, "thread "),
		  "shmctl workers does not show the stall:\n%s", hr.out);
	h_result_free(&hr);

	struct evh_report r;
	evh_collect(&p2, "publisher", &r, 60000);
	cr_log_info(
		"second publisher: %llu published, %llu gave up, longest %lld ms, CPU %lld ms of "
		"%lld ms",
		(unsigned long long)r.n[1], (unsigned long long)r.n[2],
		(long long)(r.t[0] / 1000000), (long long)(r.t[2] / 1000000),
		(long long)(r.t[1] / 1000000));
	cr_assert_eq(r.n[0], 6);
	cr_assert_eq(r.n[2], 2, "%llu publishes gave up, want 2 (ids 18 and 19)",
		     (unsigned long long)r.n[2]);
	cr_assert_leq(r.t[0] / 1000000, EVR_WAIT_MS + STALL_SLACK_MS,
		      "a publish took %lld ms (bound %d ms)", (long long)(r.t[0] / 1000000),
		      EVR_WAIT_MS);
	cr_assert_lt(r.t[2] * 5, r.t[1],
		     "the waiting publisher burnt %lld ms of CPU in %lld ms (>= 20%%)",
		     (long long)(r.t[2] / 1000000), (long long)(r.t[1] / 1000000));

	/* SIGCONT: the victim commits id 2, the broker writes gaps for 18 and 19. */
	cr_assert_eq(kill(v.pid, SIGCONT), 0);
	evh_collect(&v, "victim", &r, 30000);
	cr_assert_eq(r.n[0], 2);
	/* Ids 1..5 have left the ring's window (the last 16 ids, up to 19): read from 6 on. */
	shmb_cursor *cur;
	cr_assert_eq(shmb_cursor_open(s, 5, &cur), 0);
	shmb_event ev;
	unsigned char rbuf[4096];
	uint64_t want[] = { 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19 };
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		int rc = next_within(cur, &ev, rbuf, sizeof rbuf, 5000);
		cr_assert_eq(rc, 1, "cursor at %llu: %d (%s)",
			     (unsigned long long)shmb_cursor_position(cur), rc,
			     rc < 0 ? shmb_strerror(rc) : "nothing within 5 s");
		cr_assert_eq(ev.id, want[i]);
		int gap = (ev.flags & SHMB_EV_GAP) != 0;
		cr_assert_eq(gap, want[i] >= 18, "event %llu: gap %d", (unsigned long long)ev.id,
			     gap);
		if (!gap) {
			struct evh_payload p;
			const char *bad = evh_check(ev.data, ev.len, &p);
			cr_assert(!bad, "event %llu: %s", (unsigned long long)ev.id, bad);
		}
	}
	cr_assert_eq(publish_small(s, 20), 20);
	cr_assert_eq(next_within(cur, &ev, rbuf, sizeof rbuf, 5000), 1);
	cr_assert_eq(ev.id, 20);
	shmb_cursor_close(cur);
	cr_assert(H_POLL_UNTIL(worker_stalled(b->name, v.pid) != 1, 10000),
		  "the victim still shows as stalled");
	expect_verify(b, 0, NULL);
	shmb_session_close(s);
}

/* The same write with the broker dead: verify reports it (the inspection works without a
 * broker), and the next broker, adopting the segment, settles it. */
H_TEST(stall, ownerless_busy_descriptor_is_settled_by_a_restarted_broker)
{
	struct h_broker *b = h_broker_start(H_ARGS(STALL_BROKER_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (uint64_t i = 1; i <= 3; i++)
		cr_assert_eq(publish_small(s, i), (int64_t)i);
	struct shmb_seg seg;
	char why[256] = "";
	cr_assert_eq(seg_open_name(b->name, 1, &seg, why, sizeof why), 0, "%s", why);
	uint32_t idx = find_record(&seg, sid);

	h_broker_kill(b);
	uatomic_set(&seg_desc(&seg, idx, 2)->seq, 2 | SHMB_DESC_BUSY);
	expect_verify(b, 4, "ownerless busy descriptor");

	shmb_cursor *cur;
	cr_assert_eq(shmb_cursor_open(s, 1, &cur), 0);
	shmb_event ev;
	unsigned char rbuf[4096];
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 0, "read past the wedged id");

	h_broker_restart(b);
	cr_assert_eq(next_within(cur, &ev, rbuf, sizeof rbuf, 5000), 1,
		     "the restarted broker never settled the wedged id 2");
	cr_assert_eq(ev.id, 2);
	cr_assert(ev.flags & SHMB_EV_GAP, "id 2 is not a gap record");
	cr_assert_eq(shmb_cursor_next(cur, &ev, rbuf, sizeof rbuf), 1);
	cr_assert_eq(ev.id, 3);
	expect_verify(b, 0, NULL);
	seg_unmap(&seg);
	shmb_cursor_close(cur);
	shmb_session_close(s);
}

/* The other side of scoping: the stopped publisher's own record is deleted meanwhile. It must
 * stay RETIRED, with its generation, while the publisher is stopped inside its section (its
 * publish goes on writing into it after SIGCONT), while sessions of another tenant keep being
 * created and deleted; and be reclaimed once the publisher has left. */
H_TEST(stall, stopped_publisher_keeps_its_own_record)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test(
			"built without SHMB_FAULT_INJECTION (cmake -DSHMB_FAULT_INJECTION=ON)");
	struct h_broker *b = h_broker_start(H_ARGS(STALL_BROKER_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	cr_assert_eq(publish_small(s, 1), 1);
	struct shmb_seg seg;
	char why[256] = "";
	cr_assert_eq(seg_open_name(b->name, 0, &seg, why, sizeof why), 0, "%s", why);
	uint32_t idx = find_record(&seg, sid);
	const struct shmb_session_rec *rec = seg_rec(&seg, idx);
	uint32_t gen = uatomic_read(&rec->gen);

	struct pub_arg va = {
		.name = b->name, .sid = sid, .fault = "publish.write:stop", .count = 1, .len = 1000
	};
	static struct h_child v;
	h_child_start(&v, publisher, &va);
	char one;
	cr_assert_eq(h_child_read(&v, &one, 1, 30000), 1, "victim did not open the session");
	int st;
	pid_t wr;
	while ((wr = waitpid(v.pid, &st, WUNTRACED)) < 0 && errno == EINTR)
		;
	cr_assert_eq(wr, v.pid);
	cr_assert(WIFSTOPPED(st), "victim did not stop at publish.write (status %#x)", st);

	cr_assert_eq(shmb_session_delete(c, sid, EVH_TENANT, NULL), 0);
	for (int i = 0; i < 40; i++) {
		char other[SHMB_SID_LEN + 1];
		int rc = shmb_session_create(c, "globex", NULL, other);
		cr_assert_eq(rc, 0, "create %d: %s", i, shmb_strerror(rc));
		cr_assert_eq(shmb_session_delete(c, other, "globex", NULL), 0);
	}
	cr_assert_eq(uatomic_read(&rec->state), SHMB_REC_RETIRED,
		     "the stopped publisher's record was recycled under it (state %u)",
		     uatomic_read(&rec->state));
	cr_assert_eq(uatomic_read(&rec->gen), gen, "the stopped publisher's record was recycled");

	cr_assert_eq(kill(v.pid, SIGCONT), 0);
	struct evh_report r;
	evh_collect(&v, "victim", &r, 30000);
	cr_assert_eq(r.n[0], 2, "the victim's publish did not complete into its record");
	cr_assert(H_POLL_UNTIL(uatomic_read(&rec->gen) != gen, 5000),
		  "the record was not reclaimed after the publisher left its section");
	seg_unmap(&seg);
	shmb_session_close(s);
}
