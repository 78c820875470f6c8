/* test_crash.c - the crash model of DESIGN.md.
 *
 * - A worker SIGKILLed inside a read-side section: while it holds the section, a record deleted
 *   after it entered is not reclaimed (the limit stays reached); once it is killed the broker
 *   notices, clears its reader slot and frees its worker slot, and reclamation proceeds.
 * - A live reader leaving its section lets reclamation proceed (the normal grace period).
 * - The broker SIGKILLed: lookups keep working on the mapping, calls that need the broker fail
 *   fast with SHMB_EBROKER, and after a restart on the same name the same client works again
 *   and no session was lost.
 *   A live worker keeps its worker slot across the restart (re-admitted into the same one).
 * - With fault injection: the broker killed at its fault points in the middle of index changes
 *   (each state adoption settles, listed below): the segment verifies clean with the broker
 *   dead; the restarted broker adopts it, reports what it finished or undid, verifies clean, lost
 *   no session, counted the interrupted change exactly once, re-admits our client into its
 *   slot, and keeps serving. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault.h"
#include "harness.h"
#include "internal.h"
#include "layout.h"

TestSuite(crash, .init = h_setup, .fini = h_teardown, .timeout = 120);

/* A reader child: attaches, enters a read-side section, reports, then obeys commands from the
 * parent on cmd_fd: 'U' leave the section (reports 'u'), 'X' detach and exit. */
struct reader_arg {
	int cmd_fd;
};

struct reader_hello {
	int rc;
	pid_t pid;
};

static int reader_child(void *p, int wfd)
{
	struct reader_arg *a = p;
	struct reader_hello h = { .pid = getpid() };
	shmb_client *c = NULL;
	h.rc = shmb_attach(NULL, &c);
	if (h.rc == 0)
		h.rc = shmbi_read_lock(c);
	if (h_write_all(wfd, &h, sizeof h) < 0 || h.rc < 0)
		return 1;
	char cmd;
	while (read(a->cmd_fd, &cmd, 1) == 1) {
		if (cmd == 'U') {
			shmbi_read_unlock(c);
			if (h_write_all(wfd, "u", 1) < 0)
				return 1;
		} else if (cmd == 'X') {
			break;
		}
	}
	shmb_detach(c);
	return 0;
}

static int create_rc(shmb_client *c, char *sid)
{
	return shmb_session_create(c, "acme", NULL, sid);
}

static int worker_listed(const char *name, pid_t pid)
{
	cJSON *w = h_shmctl_json(name, "workers", NULL);
	int listed = h_json_has_number(w, "pid", (double)pid);
	cJSON_Delete(w);
	return listed;
}

/* The worker slots (any state but FREE) that hold pid, as our mapping of the segment shows
 * them; the first one's number in *slot. */
static int slots_held(const shmb_client *c, pid_t pid, uint32_t *slot)
{
	int n = 0;
	for (uint32_t w = 0; w < c->seg.cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(&c->seg, w);
		if (__atomic_load_n(&wk->state, __ATOMIC_ACQUIRE) != SHMB_WORKER_FREE &&
		    __atomic_load_n(&wk->pid, __ATOMIC_RELAXED) == pid && n++ == 0 && slot)
			*slot = w;
	}
	return n;
}

/* A live worker is re-admitted after a broker restart into the worker slot it held before (its
 * reader slots live there): pid holds that one slot, LIVE; our own client's generation too. */
static void expect_same_slot(const shmb_client *c, pid_t pid, uint32_t slot0, const char *when)
{
	uint32_t slot = UINT32_MAX;
	int n = slots_held(c, pid, &slot);
	cr_expect_eq(n, 1, "%s: pid %ld holds %d worker slots, want 1", when, (long)pid, n);
	cr_expect_eq(slot, slot0, "%s: pid %ld was re-admitted into worker slot %u, not its %u",
		     when, (long)pid, slot, slot0);
	if (n < 1)
		return;
	const struct shmb_worker *wk = seg_worker(&c->seg, slot);
	cr_expect_eq(__atomic_load_n(&wk->state, __ATOMIC_ACQUIRE), SHMB_WORKER_LIVE,
		     "%s: the worker slot of pid %ld is not LIVE", when, (long)pid);
	if (pid == getpid()) {
		cr_expect_eq(c->slot, slot0, "%s: our client moved to slot %u from %u", when,
			     c->slot, slot0);
		cr_expect_eq(__atomic_load_n(&wk->gen, __ATOMIC_ACQUIRE), c->gen,
			     "%s: our slot's generation differs from our client's", when);
	}
}

/* Starts a reader child holding a read-side section; returns the write end of its command pipe. */
static int start_reader(struct h_child *ch, struct reader_arg *a, struct reader_hello *h)
{
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	a->cmd_fd = p[0];
	h_child_start(ch, reader_child, a);
	close(p[0]);
	cr_assert_eq(h_child_read(ch, h, sizeof *h, 10000), (ssize_t)sizeof *h,
		     "reader child did not report");
	cr_assert_eq(h->rc, 0, "reader child: attach/read_lock: %s (%s)", shmb_err_name(h->rc),
		     shmb_strerror(h->rc));
	return p[1];
}

/* Holds for ms and checks that create keeps failing with SHMB_EFULL: the retired record must
 * not be reused while a reader that may hold it is in its section. */
static void expect_full_for(shmb_client *c, int ms)
{
	char sid[SHMB_SID_LEN + 1];
	int64_t end = h_now_ms() + ms;
	while (h_now_ms() < end) {
		int rc = create_rc(c, sid);
		cr_assert_eq(rc, SHMB_EFULL,
			     "create succeeded (%s) while a reader held the deleted record: "
			     "reclaimed before its grace period",
			     shmb_err_name(rc));
		h_sleep_ms(20);
	}
}

H_TEST(crash, reader_killed_inside_section)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "2", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	H_OK(create_rc(c, s1));
	H_OK(create_rc(c, s2));

	struct h_child ch;
	struct reader_arg a;
	struct reader_hello hello;
	int cmd = start_reader(&ch, &a, &hello);
	cr_assert(worker_listed(b->name, hello.pid), "shmctl workers does not list the reader %ld",
		  (long)hello.pid);

	uint64_t reclaimed0 = h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED);
	H_OK(shmb_session_delete(c, s1, "acme", NULL));
	expect_full_for(c, 400);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), reclaimed0,
		     "a record was reclaimed while a reader was inside its section");

	/* Kill the reader inside its section. */
	int64_t t0 = h_now_ms();
	h_child_kill(&ch);
	close(cmd);
	int rc = SHMB_EFULL;
	int ok = H_POLL_UNTIL((rc = create_rc(c, s3)) != SHMB_EFULL, 5000);
	int64_t took = h_now_ms() - t0;
	cr_assert(ok && rc == 0,
		  "after the reader died the deleted record was never reclaimed: create gives %s "
		  "(%s)",
		  shmb_err_name(rc), shmb_strerror(rc));
	cr_log_info("reclaimed %ld ms after the reader's SIGKILL", (long)took);
	cr_expect_lt(took, 1000, "reclamation took %ld ms after the death (target < 100 ms)",
		     (long)took);
	cr_expect_gt(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), reclaimed0);

	/* Its worker slot is freed. */
	cr_assert(H_POLL_UNTIL(!worker_listed(b->name, hello.pid), 3000),
		  "shmctl workers still lists the dead worker %ld", (long)hello.pid);
	cr_expect_geq(h_counter(b->name, SHMB_CTR_WORKERS_DIED), 1u);
	/* The sessions are intact. */
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, s2, "acme", NULL, &s));
	shmb_session_close(s);
	H_OK(shmb_session_open(c, s3, "acme", NULL, &s));
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(crash, reader_leaving_section_releases)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "2", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	H_OK(create_rc(c, s1));
	H_OK(create_rc(c, s2));
	struct h_child ch;
	struct reader_arg a;
	struct reader_hello hello;
	int cmd = start_reader(&ch, &a, &hello);

	H_OK(shmb_session_delete(c, s1, "acme", NULL));
	expect_full_for(c, 200);

	cr_assert_eq(write(cmd, "U", 1), 1);
	char u;
	cr_assert_eq(h_child_read(&ch, &u, 1, 5000), 1);
	int rc = SHMB_EFULL;
	cr_assert(H_POLL_UNTIL((rc = create_rc(c, s3)) != SHMB_EFULL, 5000) && rc == 0,
		  "reader left its section but the record was not reclaimed: %s (%s)",
		  shmb_err_name(rc), shmb_strerror(rc));
	/* The reader detaches normally: its slot goes away. */
	cr_assert_eq(write(cmd, "X", 1), 1);
	close(cmd);
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	cr_assert(H_POLL_UNTIL(!worker_listed(b->name, hello.pid), 3000),
		  "shmctl workers still lists the detached worker %ld", (long)hello.pid);
	h_detach(c);
}

H_TEST(crash, reader_killed_in_section_under_churn)
{
	/* Several readers die in their sections while sessions are deleted: every record comes
	 * back. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "8", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char sids[8][SHMB_SID_LEN + 1];
	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < 8; i++) {
			int rc = SHMB_EFULL;
			H_POLL_UNTIL((rc = create_rc(c, sids[i])) != SHMB_EFULL, 5000);
			cr_assert_eq(rc, 0, "round %d create %d: %s (%s)", round, i,
				     shmb_err_name(rc), shmb_strerror(rc));
		}
		struct h_child ch[2];
		struct reader_arg a[2];
		struct reader_hello hello[2];
		int cmd[2];
		for (int k = 0; k < 2; k++)
			cmd[k] = start_reader(&ch[k], &a[k], &hello[k]);
		for (int i = 0; i < 8; i++)
			H_OK(shmb_session_delete(c, sids[i], "acme", NULL));
		for (int k = 0; k < 2; k++) {
			h_child_kill(&ch[k]);
			close(cmd[k]);
		}
	}
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED) >= 40, 5000),
		  "reclaimed %lu of 40 deleted records",
		  (unsigned long)h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED));
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.live"), 0);
	cJSON_Delete(st);
	cr_assert(H_POLL_UNTIL(({
				       cJSON *s2 = h_shmctl_json(b->name, "status", NULL);
				       double w = h_json_num(s2, "workers.attached");
				       cJSON_Delete(s2);
				       w == 1;
			       }),
			       3000),
		  "dead workers are still counted as attached");
	h_detach(c);
}

/* Child: exits with -(the rc of shmb_attach(name)). */
static int attach_rc_child(void *p, int wfd)
{
	(void)wfd;
	shmb_client *c = NULL;
	int rc = shmb_attach(p, &c);
	shmb_detach(c);
	return -rc;
}

H_TEST(crash, broker_sigkill_and_restart)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char s[3][SHMB_SID_LEN + 1];
	const char *tenants[3] = { "acme", "globex", "initech" };
	for (int i = 0; i < 3; i++) {
		int rc = shmb_session_create(c, tenants[i], i == 1 ? "bob" : NULL, s[i]);
		cr_assert_eq(rc, 0, "create: %s", shmb_strerror(rc));
	}
	shmb_session *h0 = NULL;
	H_OK(shmb_session_open(c, s[0], "acme", NULL, &h0));
	uint32_t slot0 = c->slot;

	h_broker_kill(b);

	/* Lookups need no broker. */
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, s[1], "globex", "bob", &h));
	shmb_session_info info;
	H_OK(shmb_session_stat(h, &info));
	cr_expect_str_eq(info.tenant, "globex");
	shmb_session_close(h);
	H_OK(shmb_session_stat(h0, &info));
	H_EXPECT_RC(shmb_session_open(c, s[2], "acme", NULL, &h), SHMB_EPERM);
	char unknown[SHMB_SID_LEN + 1];
	h_random_sid(unknown);
	H_EXPECT_RC(shmb_session_open(c, unknown, "acme", NULL, &h), SHMB_ENOENT);

	/* What needs the broker fails fast. */
	char sid[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	H_EXPECT_RC(shmb_session_create(c, "acme", NULL, sid), SHMB_EBROKER);
	H_EXPECT_RC(shmb_session_delete(c, s[2], "initech", NULL), SHMB_EBROKER);
	int64_t took = h_now_ms() - t0;
	cr_expect_lt(took, 1000, "calls needing the dead broker took %ld ms to fail", (long)took);
	/* A new process cannot attach (this one would get its own client back: one per
	 * process). */
	struct h_child ch;
	h_child_start(&ch, attach_rc_child, (void *)b->name);
	int arc = -h_child_wait(&ch, 10000);
	cr_expect_eq(arc, SHMB_EBROKER, "attach with the broker dead: %s", shmb_err_name(arc));

	/* shmctl still inspects the segment. */
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	const cJSON *alive = h_json_get(st, "broker.alive");
	cr_expect(cJSON_IsFalse(alive), "status says the SIGKILLed broker is alive");
	cr_expect_eq(h_json_num(st, "sessions.live"), 3);
	cJSON_Delete(st);

	/* Restart on the same name: it adopts the segment. */
	h_broker_restart(b);
	int rc = shmb_session_create(c, "acme", NULL, sid);
	cr_assert_eq(rc, 0, "create with the same client after the restart: %s (%s)",
		     shmb_err_name(rc), shmb_strerror(rc));
	for (int i = 0; i < 3; i++) {
		rc = shmb_session_open(c, s[i], tenants[i], i == 1 ? "bob" : NULL, &h);
		cr_expect_eq(rc, 0, "session %d lost across the restart: %s", i, shmb_strerror(rc));
		if (rc == 0)
			shmb_session_close(h);
	}
	H_OK(shmb_session_stat(h0, &info));
	shmb_session_close(h0);
	H_OK(shmb_session_delete(c, s[2], "initech", NULL));
	st = h_shmctl_json(b->name, "status", NULL);
	cr_expect(cJSON_IsTrue(h_json_get(st, "broker.alive")));
	cr_expect_eq(h_json_num(st, "broker.pid"), b->pid);
	cr_expect_eq(h_json_num(st, "sessions.live"), 3);
	cJSON_Delete(st);
	cr_expect(worker_listed(b->name, getpid()), "the client was not re-admitted");
	expect_same_slot(c, getpid(), slot0, "after the broker's SIGKILL and restart");
	/* New clients attach too. */
	shmb_client *c3 = h_attach(b->name);
	H_OK(shmb_session_open(c3, sid, "acme", NULL, &h));
	shmb_session_close(h);
	h_detach(c3);
	h_detach(c);
}

/* A child that attaches, detaches and exits at once. */
static int attach_detach_exit(void *p, int wfd)
{
	(void)wfd;
	shmb_client *c = NULL;
	if (shmb_attach(p, &c) != 0)
		return 1;
	shmb_detach(c);
	return 0;
}

static uint64_t workers_attached_or_dead(const char *name)
{
	cJSON *st = h_shmctl_json(name, "status", NULL);
	uint64_t n =
		(uint64_t)(h_json_num(st, "workers.attached") + h_json_num(st, "workers.dead"));
	cJSON_Delete(st);
	return n;
}

H_TEST(crash, detach_then_exit_is_a_release_not_a_death)
{
	/* The broker may see such a process exit (pidfd, or PF_EXITING at EOF) before it reads
	 * the EOF: the "detach" the client sends first makes every order a release. Without it
	 * some of these were logged and counted as deaths. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	uint64_t admitted0 = h_counter(b->name, SHMB_CTR_WORKERS_ADMITTED);
	for (int i = 0; i < 20; i++) {
		struct h_child ch;
		h_child_start(&ch, attach_detach_exit, (void *)b->name);
		cr_assert_eq(h_child_wait(&ch, 10000), 0, "child %d could not attach", i);
	}
	cr_assert(H_POLL_UNTIL(workers_attached_or_dead(b->name) == 0, 5000),
		  "worker slots still held after every child detached and exited");
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_ADMITTED) - admitted0, 20);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_DIED), 0,
		     "%llu clean detaches counted as deaths",
		     (unsigned long long)h_counter(b->name, SHMB_CTR_WORKERS_DIED));
}

H_TEST(crash, broker_restart_twice_generation_bumps)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	struct shmb_seg seg;
	char why[256];
	cr_assert_eq(seg_open_name(b->name, 0, &seg, why, sizeof why), 0, "%s", why);
	uint64_t g0 = __atomic_load_n(&seg_hdr(&seg)->broker_generation, __ATOMIC_ACQUIRE);
	h_broker_stop(b); /* clean stop */
	h_broker_restart(b);
	uint64_t g1 = __atomic_load_n(&seg_hdr(&seg)->broker_generation, __ATOMIC_ACQUIRE);
	h_broker_kill(b); /* crash */
	h_broker_restart(b);
	uint64_t g2 = __atomic_load_n(&seg_hdr(&seg)->broker_generation, __ATOMIC_ACQUIRE);
	cr_expect_gt(g1, g0);
	cr_expect_gt(g2, g1);
	cr_expect_eq(__atomic_load_n(&seg_hdr(&seg)->broker_pid, __ATOMIC_ACQUIRE), b->pid);
	seg_unmap(&seg);
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &h));
	shmb_session_close(h);
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
}

H_TEST(crash, reader_survives_broker_restart)
{
	/* A live worker inside a read-side section while the broker is SIGKILLed and restarted:
	 * the adopting broker re-admits it and still honours its section. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "2", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	H_OK(create_rc(c, s1));
	H_OK(create_rc(c, s2));
	struct h_child ch;
	struct reader_arg a;
	struct reader_hello hello;
	int cmd = start_reader(&ch, &a, &hello);
	uint32_t rslot0 = UINT32_MAX;
	cr_assert_eq(slots_held(c, hello.pid, &rslot0), 1);

	h_broker_kill(b);
	h_broker_restart(b);
	cr_expect(worker_listed(b->name, hello.pid), "the live reader was not kept on adoption");
	expect_same_slot(c, hello.pid, rslot0, "the reader, after the broker's restart");
	H_OK(shmb_session_delete(c, s1, "acme", NULL));
	expect_full_for(c, 300);

	cr_assert_eq(write(cmd, "U", 1), 1);
	char u;
	cr_assert_eq(h_child_read(&ch, &u, 1, 5000), 1);
	int rc = SHMB_EFULL;
	cr_assert(H_POLL_UNTIL((rc = create_rc(c, s3)) != SHMB_EFULL, 5000) && rc == 0,
		  "the reader left its section but the record was not reclaimed: %s",
		  shmb_err_name(rc));
	cr_assert_eq(write(cmd, "X", 1), 1);
	close(cmd);
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	h_detach(c);
}

H_TEST(crash, worker_dies_while_broker_down)
{
	/* The reader dies while no broker runs: the next broker must find out at adoption (its
	 * pid is gone) and clear its slots, or reclamation would wait forever. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "2", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	H_OK(create_rc(c, s1));
	H_OK(create_rc(c, s2));
	struct h_child ch;
	struct reader_arg a;
	struct reader_hello hello;
	int cmd = start_reader(&ch, &a, &hello);
	h_broker_kill(b);
	h_child_kill(&ch);
	close(cmd);
	h_broker_restart(b);

	H_OK(shmb_session_delete(c, s1, "acme", NULL));
	int rc = SHMB_EFULL;
	cr_assert(H_POLL_UNTIL((rc = create_rc(c, s3)) != SHMB_EFULL, 5000) && rc == 0,
		  "a reader that died while the broker was down still blocks reclamation: %s",
		  shmb_err_name(rc));
	cr_assert(H_POLL_UNTIL(!worker_listed(b->name, hello.pid), 3000),
		  "the worker that died while the broker was down is still listed");
	h_detach(c);
}

/* ---- fault injection: the broker dies in the middle of an index change ----
 * The broker's fault points (common/fault.h, SHMB_FAULT=<point> kills it with SIGKILL there),
 * each leaving the state named here for adoption (broker/segment.c) to settle:
 *   broker.link           create: record filled, LINKING, in no chain -> undone
 *   broker.link.linked    create: in its chain (head stored), still LINKING -> completed: LIVE
 *                         and counted as created once
 *   broker.create.reply   create: LIVE and counted, reply not sent -> kept
 *   broker.unlink.marked  delete: UNLINKING, still in its chain -> unlinked and retired
 *   broker.unlink         delete: UNLINKING, out of its chain, not retired -> retired
 *   broker.reclaim        recycling a deleted record (RETIRED, generation bumped) -> recycled
 *   broker.adopt          adoption itself -> adopted again */

#if SHMB_FAULT_ENABLED
enum fault_op { OP_CREATE, OP_DELETE, OP_RECLAIM, OP_ADOPT };

struct crash_case {
	const char *point;
	enum fault_op op;
	int created;          /* OP_CREATE: the interrupted create's session exists afterwards */
	const char *adoption; /* what the restarted broker's adoption line must report, or NULL */
};

static void expect_sigkilled(struct h_broker *b, const char *point)
{
	int st = h_broker_wait_exit(b, 10000);
	char *log = h_broker_log(b);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		  "fault point %s: the broker did not die of SIGKILL there (%s %d); log:\n%s",
		  point, WIFEXITED(st) ? "exit" : "signal",
		  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log);
	free(log);
}

static void expect_verify_clean(const char *name, const char *point, const char *when)
{
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify %s after a crash at %s: exit %d\n%s%s", when, point,
		     r.status, r.out, r.err);
	h_result_free(&r);
}

/* The session ids shmctl sessions lists (the first max of them in ids); returns how many. */
static int listed_ids(const char *name, char ids[][SHMB_SID_LEN + 1], int max)
{
	cJSON *doc = h_shmctl_json(name, "sessions", NULL);
	const cJSON *it;
	int n = 0;
	cJSON_ArrayForEach(it, h_json_sessions(doc))
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
		cr_assert(cJSON_IsString(id), "shmctl sessions: an entry without an id");
		if (n < max)
			snprintf(ids[n], SHMB_SID_LEN + 1, "%s", id->valuestring);
		n++;
	}
	cJSON_Delete(doc);
	return n;
}

static void crash_at(const struct crash_case *k)
{
	const char *point = k->point;
	/* Few records, so the recycled one is reused by the creates at the end. */
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "4"));
	shmb_client *c = h_attach(b->name);
	char keep[SHMB_SID_LEN + 1], victim[SHMB_SID_LEN + 1], sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, keep));
	H_OK(shmb_session_create(c, "acme", "v", victim));
	uint32_t slot0 = c->slot;
	cr_assert_eq(slots_held(c, getpid(), NULL), 1);
	uint64_t created0 = h_counter(b->name, SHMB_CTR_SESSIONS_CREATED);

	/* Restart the broker armed with the fault point. */
	h_broker_stop(b);
	setenv("SHMB_FAULT", point, 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	if (k->op == OP_ADOPT) {
		cr_assert_eq(rc, -1, "fault point %s did not fire: the broker adopted", point);
		cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
			  "fault point %s: the broker did not die of SIGKILL", point);
	} else {
		cr_assert_eq(rc, 0, "the broker armed with %s did not start", point);
		if (k->op == OP_CREATE) {
			rc = shmb_session_create(c, "acme", NULL, sid);
			cr_assert_eq(rc, SHMB_EBROKER, "fault point %s did not fire (create: %s)",
				     point, shmb_err_name(rc));
		} else {
			rc = shmb_session_delete(c, victim, "acme", "v");
			if (k->op == OP_DELETE)
				cr_assert_eq(rc, SHMB_EBROKER,
					     "fault point %s did not fire (delete: %s)", point,
					     shmb_err_name(rc));
			else
				cr_assert_eq(rc, 0, "delete before the reclaim: %s",
					     shmb_err_name(rc));
		}
		expect_sigkilled(b, point);
	}
	/* With no broker running, the segment the crash left verifies clean, and an interrupted
	 * delete is already invisible to lookups (UNLINKING is stored first). */
	expect_verify_clean(b->name, point, "with the broker dead");
	shmb_session *h = NULL;
	if (k->op == OP_DELETE)
		H_EXPECT_RC(shmb_session_open(c, victim, "acme", "v", &h), SHMB_ENOENT);
	h_broker_restart(b);
	if (k->adoption) {
		char *log = h_broker_log(b);
		cr_expect(strstr(log, k->adoption),
			  "after the crash at %s adoption did not report \"%s\"; log:\n%s", point,
			  k->adoption, log);
		free(log);
	}
	expect_verify_clean(b->name, point, "after the restart");

	/* The interrupted change was finished or undone, never half-done, and nothing else was
	 * lost: the listing holds keep, the victim unless it was deleted, and the interrupted
	 * create's session only where the create got as far as its chain. */
	int want_victim = k->op != OP_DELETE && k->op != OP_RECLAIM;
	int want_new = k->op == OP_CREATE && k->created;
	char ids[5][SHMB_SID_LEN + 1];
	int listed = listed_ids(b->name, ids, 5);
	int n_keep = 0, n_victim = 0, n_new = 0;
	const char *new_sid = NULL;
	for (int i = 0; i < listed && i < 5; i++) {
		if (!strcmp(ids[i], keep)) {
			n_keep++;
		} else if (!strcmp(ids[i], victim)) {
			n_victim++;
		} else {
			n_new++;
			new_sid = ids[i];
		}
	}
	cr_expect_eq(n_keep, 1, "after the crash at %s the untouched session is listed %d times",
		     point, n_keep);
	cr_expect_eq(n_victim, want_victim, "after the crash at %s the victim is listed %d times",
		     point, n_victim);
	cr_assert_eq(n_new, want_new,
		     "after the crash at %s %d sessions besides the two made before it are "
		     "listed, want %d",
		     point, n_new, want_new);
	H_OK(shmb_session_open(c, keep, "acme", NULL, &h));
	shmb_session_close(h);
	rc = shmb_session_open(c, victim, "acme", "v", &h);
	cr_expect_eq(rc, want_victim ? 0 : SHMB_ENOENT, "victim after the crash at %s: %s", point,
		     shmb_err_name(rc));
	if (rc == 0)
		shmb_session_close(h);
	if (new_sid) {
		/* Fully there: it opens with the create's tenant and principal, is counted. */
		rc = shmb_session_open(c, new_sid, "acme", NULL, &h);
		cr_expect_eq(rc, 0, "the completed create's session %s does not open: %s", new_sid,
			     shmb_err_name(rc));
		if (rc == 0)
			shmb_session_close(h);
	}
	/* Each change counted once: created, deleted and live agree with the listing. */
	cJSON *stj = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(stj, "sessions.live"), listed,
		     "live count and listing disagree after the crash at %s", point);
	cJSON_Delete(stj);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), created0 + (uint64_t)want_new,
		     "sessions_created after the crash at %s", point);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_DELETED), (uint64_t)!want_victim,
		     "sessions_deleted after the crash at %s", point);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_LIVE), (uint64_t)listed,
		     "sessions_live after the crash at %s", point);
	/* Every record is usable again: fill the segment to its limit, then empty it. */
	char fill[4][SHMB_SID_LEN + 1];
	int n = 0;
	for (; n < 4 - listed; n++) {
		rc = SHMB_EFULL;
		H_POLL_UNTIL((rc = shmb_session_create(c, "fill", NULL, fill[n])) != SHMB_EFULL,
			     5000);
		cr_assert_eq(rc, 0, "after the crash at %s, record %d of 4 never came back: %s",
			     point, listed + n + 1, shmb_err_name(rc));
	}
	H_EXPECT_RC(shmb_session_create(c, "fill", NULL, sid), SHMB_EFULL);
	/* Those calls went through the restarted broker: it re-admitted us into our slot. */
	expect_same_slot(c, getpid(), slot0, point);
	for (int i = 0; i < n; i++)
		H_OK(shmb_session_delete(c, fill[i], "fill", NULL));
	h_detach(c);
}

H_TEST(crash, fault_broker_link)
{
	crash_at(&(struct crash_case){ "broker.link", OP_CREATE, 0,
				       "1 interrupted creates undone" });
}

H_TEST(crash, fault_broker_link_linked)
{
	crash_at(&(struct crash_case){ "broker.link.linked", OP_CREATE, 1,
				       "1 interrupted creates completed" });
}

H_TEST(crash, fault_broker_create_reply)
{
	crash_at(&(struct crash_case){ "broker.create.reply", OP_CREATE, 1, NULL });
}

H_TEST(crash, fault_broker_unlink_marked)
{
	crash_at(&(struct crash_case){ "broker.unlink.marked", OP_DELETE, 0,
				       "1 interrupted deletes finished" });
}

H_TEST(crash, fault_broker_unlink)
{
	crash_at(&(struct crash_case){ "broker.unlink", OP_DELETE, 0,
				       "1 interrupted deletes finished" });
}

H_TEST(crash, fault_broker_reclaim)
{
	crash_at(&(struct crash_case){ "broker.reclaim", OP_RECLAIM, 0,
				       "1 records await reclamation" });
}

H_TEST(crash, fault_broker_adopt)
{
	crash_at(&(struct crash_case){ "broker.adopt", OP_ADOPT, 0, NULL });
}
#endif
