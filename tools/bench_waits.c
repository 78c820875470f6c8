/* bench_waits.c - per-thread waits (shmb_cursor_wait) against their floor, in the same run.
 *
 * Rows:
 *   floor_futex_rt       two processes ping-ponging through two futex words on shared memory
 *                        (store, FUTEX_WAKE; FUTEX_WAIT until the partner's store): the kernel's
 *                        cost of one thread waking another across processes, twice;
 *   wake_thread_rt       the same round trip through shmbroker: A publishes 256 B on session X
 *                        and waits in shmb_cursor_wait on a cursor of Y; B waits on X's cursor,
 *                        reads, publishes on Y. Target: <= 1.2x floor_futex_rt;
 *   publish_cursor_idle  publish 256 B on a session with a cursor open and nobody waiting: the
 *                        waiter check is one load, so no syscall and about publish_nosub's
 *                        time (shmb_publish_chunk measures that row in the same chunks).
 * Chunks alternate floor and shmbroker (bench.h, "Same run, same moment"); one sample per round
 * trip, batches of 1000 for the publishes. The driver's process is pinned to CPU 0, each partner
 * to CPU 1 (bench_pin). */
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

#define TENANT "acme"
#define EV_BYTES 256
#define KIND_DATA 1
#define KIND_STOP 2
#define DEADLINE_NS (20ull * 1000000000ull)
#define CHUNKS 5

struct wt_shared {
	_Alignas(64) _Atomic uint32_t ping; /* futex word the partner waits on */
	_Alignas(64) _Atomic uint32_t pong; /* futex word the driver waits on */
	_Alignas(64) _Atomic uint32_t ready;
	_Atomic uint32_t failed;
	int rounds;
	char sid_x[SHMB_SID_LEN + 1], sid_y[SHMB_SID_LEN + 1];
};
static struct wt_shared *ws;
static char payload[EV_BYTES];

static void fx_wait(_Atomic uint32_t *w, uint32_t v)
{
	syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, v, NULL, NULL, 0);
}

static void fx_wake(_Atomic uint32_t *w)
{
	syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Waits until *w == want (bounded by a deadline). 0 or -1. */
static int fx_until(_Atomic uint32_t *w, uint32_t want)
{
	uint64_t end = bench_ns() + DEADLINE_NS / 4;
	for (;;) {
		uint32_t v = atomic_load(w);
		if (v == want)
			return 0;
		if (bench_ns() > end)
			return -1;
		fx_wait(w, v);
	}
}

/* ---- the floor: raw futex ping-pong ---- */

static int futex_partner(void *arg)
{
	(void)arg;
	bench_pin(1);
	for (int i = 1; i <= ws->rounds; i++) {
		if (fx_until(&ws->ping, (uint32_t)i) < 0)
			return 1;
		atomic_store(&ws->pong, (uint32_t)i);
		fx_wake(&ws->pong);
	}
	return 0;
}

static void floor_futex_chunk(int n)
{
	struct bench_row *row = bench_row("floor_futex_rt");
	int warm = 100;
	atomic_store(&ws->ping, 0);
	atomic_store(&ws->pong, 0);
	ws->rounds = warm + n;
	double *ns = malloc(sizeof(double) * (size_t)n);
	pid_t pid = bench_fork(futex_partner, NULL);
	for (int i = 1; i <= warm + n; i++) {
		uint64_t t0 = bench_ns();
		atomic_store(&ws->ping, (uint32_t)i);
		fx_wake(&ws->ping);
		if (fx_until(&ws->pong, (uint32_t)i) < 0) {
			bench_fail(row, "no pong");
			break;
		}
		if (i > warm)
			ns[i - warm - 1] = (double)(bench_ns() - t0);
	}
	if (bench_wait(pid, 10000) != 0)
		bench_fail(row, "partner process failed");
	for (int i = 0; i < n && row->status == BS_NONE; i++)
		bench_add(row, ns[i]);
	bench_note(row, "one sample per round trip; FUTEX_WAKE on every store, FUTEX_WAIT until "
			"the partner's");
	free(ns);
}

/* ---- shmbroker: shmb_cursor_wait ping-pong ---- */

static shmb_session *open_sess(shmb_client *c, const char *sid)
{
	shmb_session *s = NULL;
	return shmb_session_open(c, sid, TENANT, NULL, &s) == 0 ? s : NULL;
}

/* B: waits on X's cursor, reads, publishes on Y; ends at a KIND_STOP event. */
static int echo_partner(void *arg)
{
	(void)arg;
	bench_pin(1);
	shmb_client *c = NULL;
	if (shmb_attach(shmb_events_name(), &c) < 0)
		goto fail;
	shmb_session *x = open_sess(c, ws->sid_x), *y = open_sess(c, ws->sid_y);
	shmb_cursor *cur = NULL;
	if (!x || !y || shmb_cursor_open(x, 0, &cur) < 0)
		goto fail;
	atomic_store(&ws->ready, 1);
	static uint8_t buf[4096];
	for (;;) {
		shmb_event ev;
		int rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		if (rc == 0) {
			if (shmb_cursor_wait(cur, 2000) != 1)
				goto fail;
			continue;
		}
		if (rc != 1)
			goto fail;
		if (ev.kind == KIND_STOP)
			break;
		if (shmb_publish(y, 0, KIND_DATA, payload, EV_BYTES) < 0)
			goto fail;
	}
	shmb_cursor_close(cur);
	shmb_session_close(x);
	shmb_session_close(y);
	shmb_detach(c);
	return 0;
fail:
	atomic_store(&ws->failed, 1);
	return 1;
}

static void wake_thread_chunk(int n)
{
	struct bench_row *row = bench_row("wake_thread_rt");
	shmb_client *c = shmb_events_client();
	if (!c || row->status != BS_NONE)
		return;
	atomic_store(&ws->ready, 0);
	atomic_store(&ws->failed, 0);
	if (shmb_session_create(c, TENANT, NULL, ws->sid_x) < 0 ||
	    shmb_session_create(c, TENANT, NULL, ws->sid_y) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	shmb_session *x = open_sess(c, ws->sid_x), *y = open_sess(c, ws->sid_y);
	shmb_cursor *cur = NULL;
	pid_t pid = 0;
	int warm = 100;
	if (!x || !y || shmb_cursor_open(y, 0, &cur) < 0) {
		bench_fail(row, "setup failed");
		goto out;
	}
	pid = bench_fork(echo_partner, NULL);
	uint64_t end = bench_ns() + DEADLINE_NS / 4;
	while (!atomic_load(&ws->ready) && !atomic_load(&ws->failed) && bench_ns() < end)
		usleep(100);
	if (!atomic_load(&ws->ready)) {
		bench_fail(row, "echo process did not start");
		goto out;
	}
	static uint8_t buf[4096];
	double *ns = malloc(sizeof(double) * (size_t)n);
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns();
		if (shmb_publish(x, 0, KIND_DATA, payload, EV_BYTES) < 0) {
			bench_fail(row, "publish failed");
			break;
		}
		shmb_event ev;
		int rc;
		while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 0)
			if (shmb_cursor_wait(cur, 2000) != 1 || atomic_load(&ws->failed))
				break;
		if (rc != 1) {
			bench_fail(row, "no echo");
			break;
		}
		if (i >= warm)
			ns[i - warm] = (double)(bench_ns() - t0);
	}
	for (int i = 0; i < n && row->status == BS_NONE; i++)
		bench_add(row, ns[i]);
	free(ns);
	bench_note(row, "A publishes on X, B (in shmb_cursor_wait) wakes, reads, publishes on Y, A "
			"(in shmb_cursor_wait) wakes and reads");
out:
	if (x && pid > 0)
		shmb_publish(x, 0, KIND_STOP, payload, 1);
	if (pid > 0 && bench_wait(pid, 10000) != 0 && row->status == BS_NONE)
		bench_fail(row, "echo process failed");
	shmb_cursor_close(cur);
	shmb_session_close(x);
	shmb_session_close(y);
	shmb_session_delete(c, ws->sid_x, TENANT, NULL);
	shmb_session_delete(c, ws->sid_y, TENANT, NULL);
}

/* ---- publish with a cursor open and nobody waiting ---- */

static void publish_idle_chunk(int n)
{
	struct bench_row *row = bench_row("publish_cursor_idle");
	shmb_client *c = shmb_events_client();
	if (!c || row->status != BS_NONE)
		return;
	if (shmb_session_create(c, TENANT, NULL, ws->sid_x) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	shmb_session *s = open_sess(c, ws->sid_x);
	shmb_cursor *cur = NULL;
	if (!s || shmb_cursor_open(s, 0, &cur) < 0 || shmb_cursor_wait(cur, 0) != 0) {
		bench_fail(row, "setup failed");
		goto out;
	}
	enum { BATCH = 1000 };
	int warm = 5;
	struct bench_sysctr sc;
	bench_sysctr_open(&sc);
	for (int k = 0; k < warm + n && row->status == BS_NONE; k++) {
		bench_sysctr_start(&sc);
		uint64_t a = bench_ns();
		for (int j = 0; j < BATCH; j++)
			if (shmb_publish(s, 0, KIND_DATA, payload, EV_BYTES) < 0) {
				bench_fail(row, "publish failed");
				break;
			}
		uint64_t z = bench_ns();
		row->sys += bench_sysctr_stop(&sc);
		row->ops += BATCH;
		if (k >= warm)
			bench_add(row, (double)(z - a) / BATCH);
	}
	bench_note(row,
		   "batches of %d publishes, a cursor open (shmb_cursor_wait polled once), "
		   "nobody waiting; syscalls counted by %s",
		   BATCH, sc.exact ? "a perf tracepoint" : "/proc/self/io");
	bench_sysctr_close(&sc);
out:
	shmb_cursor_close(cur);
	shmb_session_close(s);
	shmb_session_delete(c, ws->sid_x, TENANT, NULL);
}

void bench_waits_step(void)
{
	memset(payload, 'x', sizeof payload);
	payload[0] = '{';
	payload[EV_BYTES - 1] = '}';
	ws = bench_shared_alloc(sizeof *ws);
	if (!ws) {
		bench_fail(bench_row("wake_thread_rt"), "no shared memory");
		return;
	}
	int n = bench_n(5000, 500) / CHUNKS;
	int np = bench_n(300, 50) / CHUNKS;
	for (int k = 0; k < CHUNKS; k++) {
		floor_futex_chunk(n);
		wake_thread_chunk(n);
		shmb_publish_chunk(0, np);
		publish_idle_chunk(np);
	}
	bench_shared_free(ws, sizeof *ws);
	ws = NULL;
}
