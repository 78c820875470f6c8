/* bench_shmb_tp.c - shmbroker under sustained load: throughput of one session with 1 or 2
 * publisher processes and 1 or 4 reader processes, and the syscalls a published event costs
 * when a subscriber in an epoll loop keeps up.
 *
 * Flow control (bench.h) is the same as for the raw rings it is compared with: readers post the
 * last id they consumed, publishers stay at most BENCH_LEAD ids ahead of the slowest reader, so
 * no reader is lapped (overruns are counted and reported anyway). Waiting is spin-then-yield on
 * both sides, as in the raw rings. Syscalls are counted per process by a perf tracepoint counter
 * (raw_syscalls:sys_enter) opened on itself; where that is unavailable, /proc/self/io's syscr +
 * syscw (read- and write-family calls only; epoll_wait is then counted by the loop itself). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bench.h"

#define TENANT "acme"
#define PRINCIPAL "alice"
#define EV_BYTES 256
#define DEADLINE_NS (20ull * 1000000000ull)

static uint8_t payload[EV_BYTES];
static const char *bname;
static struct bench_tp_shared *tp;

struct sys_shared {
	uint64_t sub_sys, sub_epoll, sub_wakeups, sub_news;
	int exact;
};
static struct sys_shared *ss;

struct tp_arg {
	int producers, readers, me;
	uint64_t total;
	uint64_t pace_ns; /* syscall scenario: 0 flat out, else one event per pace_ns */
	int spin_only;    /* flow control never yields (syscalls are being counted) */
	char sid[SHMB_SID_LEN + 1];
};

static int child_fail(const char *what, int rc)
{
	fprintf(stderr, "shmbench: %s: %s\n", what, rc < 0 ? shmb_strerror(rc) : "failed");
	__atomic_store_n(&tp->failed, 1, __ATOMIC_RELAXED);
	return 1;
}

static int setup(const struct tp_arg *a, shmb_client **c, shmb_session **s)
{
	*s = NULL;
	int rc = SHMB_EBROKER;
	for (int i = 0; i < 50 && rc == SHMB_EBROKER; i++) {
		rc = shmb_attach(bname, c);
		if (rc == SHMB_EBROKER)
			usleep(10000);
	}
	if (rc < 0)
		return rc;
	return shmb_session_open(*c, a->sid, TENANT, PRINCIPAL, s);
}

static int wait_go(void)
{
	__atomic_add_fetch(&tp->ready, 1, __ATOMIC_ACQ_REL);
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (!__atomic_load_n(&tp->go, __ATOMIC_ACQUIRE)) {
		if (bench_ns() > end || __atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
			return -1;
		bench_relax(&spins);
	}
	return 0;
}

/* Publishes total / producers events, flow-controlled (or paced). Returns 0 or -1. */
static int publish_loop(const struct tp_arg *a, shmb_session *s)
{
	uint64_t n = a->total / (uint64_t)a->producers, cached = 0;
	uint64_t end = bench_ns() + DEADLINE_NS, next = bench_ns();
	for (uint64_t i = 0; i < n; i++) {
		if (a->pace_ns) {
			next += a->pace_ns;
			while (bench_ns() < next)
				__builtin_ia32_pause();
		}
		int64_t id = shmb_publish(s, 0, 1, payload, EV_BYTES);
		if (id == SHMB_EOVERRUN)
			continue; /* lapped before it was written (readers count it as lost) */
		if (id < 0)
			return child_fail("publish", (int)id), -1;
		unsigned spins = 0;
		while ((uint64_t)id > cached + BENCH_LEAD) {
			cached = bench_min_pos(tp, a->readers);
			if ((uint64_t)id <= cached + BENCH_LEAD)
				break;
			if (bench_ns() > end || __atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
				return child_fail("publisher waited too long", 0), -1;
			/* The syscall scenario spins (no sched_yield to count): publisher and
			 * subscriber have a CPU each. */
			if (a->spin_only)
				__builtin_ia32_pause();
			else
				bench_relax(&spins);
		}
	}
	__atomic_add_fetch(&tp->pubs_done, 1, __ATOMIC_RELEASE);
	return 0;
}

static int tp_publisher(void *arg)
{
	const struct tp_arg *a = arg;
	bench_pin(bench_tp_cpu(0, a->me, a->producers, a->readers));
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	int rc = setup(a, &c, &s);
	if (rc < 0)
		return child_fail("publisher setup", rc);
	if (wait_go() < 0)
		return 1;
	rc = publish_loop(a, s);
	shmb_session_close(s);
	shmb_detach(c);
	return rc < 0;
}

/* Consumes one event (or an overrun) into the shared accounting. */
static void account(const struct tp_arg *a, uint64_t *count, uint64_t pos)
{
	(*count)++;
	if (pos % BENCH_POS_EVERY == 0)
		__atomic_store_n(&tp->reader_pos[a->me][0], pos, __ATOMIC_RELEASE);
	if (a->me == 0) {
		if (*count == 1)
			tp->t_start = bench_ns();
		if (*count % BENCH_WINDOW == 1 && tp->nwin < BENCH_MAX_WINDOWS)
			tp->win_ns[tp->nwin++] = bench_ns();
	}
}

static int tp_reader(void *arg)
{
	const struct tp_arg *a = arg;
	bench_pin(bench_tp_cpu(1, a->me, a->producers, a->readers));
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	shmb_cursor *cur = NULL;
	int rc = setup(a, &c, &s);
	if (rc < 0 || (rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return child_fail("reader setup", rc);
	if (wait_go() < 0)
		return 1;
	static uint8_t buf[4096];
	shmb_event ev;
	uint64_t count = 0, pos = 0, end = bench_ns() + DEADLINE_NS;
	unsigned spins = 0;
	while (pos < a->total) {
		rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		if (rc == 1) {
			pos = ev.id;
			account(a, &count, pos);
			spins = 0;
			continue;
		}
		if (rc == SHMB_EOVERRUN) {
			tp->lost[a->me] += shmb_cursor_lagged(cur);
			pos = shmb_cursor_position(cur);
			continue;
		}
		if (rc < 0)
			return child_fail("cursor_next", rc);
		__atomic_store_n(&tp->reader_pos[a->me][0], pos, __ATOMIC_RELEASE);
		if (bench_ns() > end || __atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
			return child_fail("reader waited too long", 0);
		bench_relax(&spins);
	}
	if (a->me == 0)
		tp->t_end = bench_ns();
	tp->read[a->me] = count;
	__atomic_store_n(&tp->reader_pos[a->me][0], pos, __ATOMIC_RELEASE);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

/* Shared memory of these scenarios, allocated on first use (kept until the driver exits). */
static int tp_init(void)
{
	memset(payload, 'x', sizeof payload);
	bname = shmb_events_name();
	if (!tp)
		tp = bench_shared_alloc(sizeof *tp);
	if (!ss)
		ss = bench_shared_alloc(sizeof *ss);
	return bname && tp && ss && shmb_events_client() ? 0 : -1;
}

void shmb_tp(const char *key, int producers, int readers, uint64_t total)
{
	struct bench_row *row = bench_row(key);
	shmb_client *c = shmb_events_client();
	if (row->status != BS_NONE || tp_init() < 0)
		return;
	memset(tp, 0, sizeof *tp);
	struct tp_arg a = { .producers = producers, .readers = readers, .total = total };
	if (shmb_session_create(c, TENANT, PRINCIPAL, a.sid) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	pid_t pids[8];
	int np = 0;
	for (int r = 0; r < readers; r++) {
		a.me = r;
		pids[np++] = bench_fork(tp_reader, &a);
	}
	for (int p = 0; p < producers; p++) {
		a.me = p;
		pids[np++] = bench_fork(tp_publisher, &a);
	}
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (__atomic_load_n(&tp->ready, __ATOMIC_ACQUIRE) < (uint32_t)np && bench_ns() < end &&
	       !__atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
		bench_relax(&spins);
	__atomic_store_n(&tp->go, 1, __ATOMIC_RELEASE);
	int bad = 0;
	for (int i = 0; i < np; i++)
		bad |= bench_wait(pids[i], 40000) != 0;
	if (bad || tp->failed)
		bench_fail(row, "a publisher or reader failed or timed out");
	else
		bench_tp_add(row, tp, total);
	shmb_session_delete(c, a.sid, TENANT, PRINCIPAL);
}

/* ---- syscalls per event ---- */

/* The subscriber: an epoll loop that drains its cursor and sleeps only when it ran dry. */
static int sys_subscriber(void *arg)
{
	const struct tp_arg *a = arg;
	bench_pin(1);
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	shmb_cursor *cur = NULL;
	int rc = setup(a, &c, &s);
	if (rc < 0 || (rc = shmb_subscribe(s)) < 0 || (rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return child_fail("subscriber setup", rc);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, shmb_fd(c), &ev) < 0)
		return child_fail("epoll", -1);
	struct bench_sysctr sc;
	bench_sysctr_open(&sc);
	if (wait_go() < 0)
		return 1;
	bench_sysctr_start(&sc);
	static uint8_t buf[4096];
	shmb_event e;
	uint64_t pos = 0, count = 0, epolls = 0, wakeups = 0, news = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (pos < a->total) {
		while ((rc = shmb_cursor_next(cur, &e, buf, sizeof buf)) == 1) {
			pos = e.id;
			account(a, &count, pos);
		}
		if (rc == SHMB_EOVERRUN) {
			tp->lost[0] += shmb_cursor_lagged(cur);
			pos = shmb_cursor_position(cur);
			continue;
		}
		if (rc < 0)
			return child_fail("subscriber read", rc);
		__atomic_store_n(&tp->reader_pos[0][0], pos, __ATOMIC_RELEASE);
		if (pos >= a->total)
			break;
		if (bench_ns() > end || __atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
			return child_fail("subscriber waited too long", 0);
		rc = shmb_prepare_wait(c);
		if (rc < 0)
			return child_fail("prepare_wait", rc);
		if (rc > 0) {
			news++;
			continue; /* news already: no sleep */
		}
		epolls++;
		if (epoll_wait(ep, &ev, 1, 1000) > 0) {
			wakeups++;
			shmb_wait(c, 0);
		}
	}
	uint64_t sys = bench_sysctr_stop(&sc);
	tp->t_end = bench_ns();
	ss->sub_sys = sc.exact ? sys : sys + epolls; /* syscr/syscw do not see epoll_wait */
	ss->sub_epoll = epolls;
	ss->sub_wakeups = wakeups;
	ss->sub_news = news;
	ss->exact = sc.exact;
	bench_sysctr_close(&sc);
	close(ep);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

void shmb_syscalls(const char *key, uint64_t total, uint64_t pace_ns)
{
	struct bench_row *row = bench_row(key);
	shmb_client *c = shmb_events_client();
	if (row->status != BS_NONE || tp_init() < 0)
		return;
	memset(tp, 0, sizeof *tp);
	memset(ss, 0, sizeof *ss);
	struct tp_arg a = {
		.producers = 1, .readers = 1, .total = total, .pace_ns = pace_ns, .spin_only = 1
	};
	if (shmb_session_create(c, TENANT, PRINCIPAL, a.sid) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	shmb_session *s = NULL;
	if (shmb_session_open(c, a.sid, TENANT, PRINCIPAL, &s) < 0) {
		bench_fail(row, "open failed");
		return;
	}
	pid_t pid = bench_fork(sys_subscriber, &a);
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (__atomic_load_n(&tp->ready, __ATOMIC_ACQUIRE) < 1 && bench_ns() < end &&
	       !__atomic_load_n(&tp->failed, __ATOMIC_RELAXED))
		bench_relax(&spins);
	struct bench_sysctr sc;
	bench_sysctr_open(&sc);
	bench_sysctr_start(&sc);
	__atomic_store_n(&tp->go, 1, __ATOMIC_RELEASE);
	int rc = publish_loop(&a, s);
	uint64_t pub_sys = bench_sysctr_stop(&sc);
	bench_sysctr_close(&sc);
	if (bench_wait(pid, 40000) != 0 || rc < 0 || tp->failed) {
		bench_fail(row, "publisher or subscriber failed");
	} else {
		bench_set_value(row, (double)(pub_sys + ss->sub_sys) / (double)total);
		double secs = (double)(tp->t_end - tp->t_start) / 1e9;
		bench_note(row,
			   "%llu events (%.2f M/s): publisher %llu syscalls, subscriber %llu "
			   "(%llu epoll_wait, %llu wakeups; prepare_wait found news %llu times), "
			   "%llu lost; %s",
			   (unsigned long long)total, secs > 0 ? (double)total / secs / 1e6 : 0,
			   (unsigned long long)pub_sys, (unsigned long long)ss->sub_sys,
			   (unsigned long long)ss->sub_epoll, (unsigned long long)ss->sub_wakeups,
			   (unsigned long long)ss->sub_news, (unsigned long long)tp->lost[0],
			   ss->exact
				   ? "perf tracepoint raw_syscalls:sys_enter"
				   : "approximate: /proc/<pid>/io syscr+syscw + epoll_wait calls");
	}
	shmb_session_close(s);
	shmb_session_delete(c, a.sid, TENANT, PRINCIPAL);
}
