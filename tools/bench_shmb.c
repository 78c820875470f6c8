/* bench_shmb.c - shmbroker's scenarios, against a real shmbrokerd and libshmb.
 *
 *   - session open+touch (shmb_session_open + shmb_session_close) with 1,000 / 100,000 /
 *     1,000,000 live sessions, each size in its own broker (--max-sessions N, tiny rings so a
 *     million sessions fit), sessions chosen uniformly at random;
 *   - publish of a 256-byte event: without subscribers, with a subscriber that is not asleep,
 *     and with one asleep in epoll in another process;
 *   - the wake round trip between two processes sleeping in epoll;
 *   - replay of 256 retained 256-byte events through a cursor;
 *   - throughput of one session with 1 or 2 publisher processes and 1 or 4 reader processes;
 *   - syscalls per published event with a subscriber in an epoll loop that keeps up;
 *   - the broker's resident memory when idle, on built-in defaults.
 * The event scenarios share one broker with the default ring (256 events of up to 512 bytes). */
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
#define KIND_DATA 1
#define KIND_STOP 2
#define DEADLINE_NS (20ull * 1000000000ull)

static uint8_t payload[EV_BYTES];
static const char *bname; /* the events broker */
static shmb_client *ev_c; /* the driver's client on it */

static shmb_client *attach(const char *name)
{
	shmb_client *c = NULL;
	for (int i = 0; i < 50; i++) {
		int rc = shmb_attach(name, &c);
		if (rc == 0)
			return c;
		if (rc != SHMB_EBROKER) {
			fprintf(stderr, "shmbench: attach %s: %s\n", name, shmb_strerror(rc));
			return NULL;
		}
		usleep(10000);
	}
	return NULL;
}

static shmb_session *open_sess(shmb_client *c, const char *sid)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, TENANT, PRINCIPAL, &s);
	if (rc < 0)
		fprintf(stderr, "shmbench: open %s: %s\n", sid, shmb_strerror(rc));
	return s;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* ---- epoll loop helper: what a worker's event loop does ---- */

struct waiter {
	shmb_client *c;
	int ep;
};

static int waiter_init(struct waiter *w, shmb_client *c)
{
	w->c = c;
	w->ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = shmb_fd(c) };
	return w->ep >= 0 && epoll_ctl(w->ep, EPOLL_CTL_ADD, shmb_fd(c), &ev) == 0 ? 0 : -1;
}

/* shmb_prepare_wait, then (armed) epoll_wait and shmb_wait(c, 0). armed_seq, if given, is
 * bumped right before sleeping. Returns 1 news or woken, 0 timeout, < 0 error. */
static int waiter_sleep(struct waiter *w, _Atomic uint32_t *armed_seq, int timeout_ms)
{
	int r = shmb_prepare_wait(w->c);
	if (r != 0)
		return r;
	if (armed_seq)
		atomic_fetch_add(armed_seq, 1);
	struct epoll_event ev;
	int n = epoll_wait(w->ep, &ev, 1, timeout_ms);
	if (n > 0)
		shmb_wait(w->c, 0);
	return n > 0;
}

/* ---- open+touch ---- */

typedef char sid_t[SHMB_SID_LEN + 1];

struct creator {
	const char *broker;
	sid_t *sids;
	uint32_t from, to;
};

static int creator(void *arg)
{
	struct creator *k = arg;
	bench_pin(-1);
	shmb_client *c = attach(k->broker);
	if (!c)
		return 1;
	for (uint32_t i = k->from; i < k->to; i++) {
		int rc = shmb_session_create(c, TENANT, PRINCIPAL, k->sids[i]);
		if (rc < 0) {
			fprintf(stderr, "shmbench: create #%u: %s\n", i, shmb_strerror(rc));
			return 1;
		}
	}
	shmb_detach(c);
	return 0;
}

/* Creates n sessions through the broker from a few processes at once (a create is a control
 * round trip; the broker serves several connections back to back). */
static int create_sessions(const char *broker, sid_t *sids, uint32_t n)
{
	enum { K = 4 };
	pid_t pids[K];
	for (int i = 0; i < K; i++) {
		struct creator k = { broker, sids, (uint32_t)((uint64_t)n * i / K),
				     (uint32_t)((uint64_t)n * (i + 1) / K) };
		pids[i] = bench_fork(creator, &k);
	}
	int bad = 0;
	for (int i = 0; i < K; i++)
		bad |= bench_wait(pids[i], 170000) != 0;
	return bad ? -1 : 0;
}

/* One index size: its broker, client and sessions. */
struct ot {
	struct bench_row *row;
	uint32_t nsess;
	struct bench_broker b;
	int started;
	shmb_client *c;
	sid_t *sids;
	size_t sids_len;
	int n; /* samples taken */
	uint64_t seed;
	double create_s, first_ns;
};

static int ot_setup(struct ot *o)
{
	char maxs[16];
	snprintf(maxs, sizeof maxs, "%u", o->nsess);
	/* Tiny rings (2 events of 32 bytes) and no attribute areas (layout 2.0: the default 4 KiB
	 * per session would be 4 GiB at a million): a million sessions then fit in ~0.7 GiB. */
	const char *args[16] = { "--max-sessions", maxs, "--ring-events",     "2",
				 "--ring-bytes",   "64", "--max-event-bytes", "32",
				 "--attr-bytes",   "0",  "--attr-keys",       "0" };
	if (bench_opt.segment_dir) {
		args[12] = "--segment-dir";
		args[13] = bench_opt.segment_dir;
	}
	if (bench_broker_start(&o->b, args) < 0) {
		bench_fail(o->row, "broker did not start");
		return -1;
	}
	o->started = 1;
	o->c = attach(o->b.name);
	o->sids_len = (size_t)o->nsess * sizeof(sid_t);
	o->sids = bench_shared_alloc(o->sids_len);
	if (!o->c || !o->sids) {
		bench_fail(o->row, "attach or allocation failed");
		return -1;
	}
	uint64_t t0 = bench_ns();
	if (create_sessions(o->b.name, o->sids, o->nsess) < 0) {
		bench_fail(o->row, "creating %u sessions failed", o->nsess);
		return -1;
	}
	o->create_s = (double)(bench_ns() - t0) / 1e9;
	if (bench_opt.verbose)
		fprintf(stderr, "  created %u sessions in %.1f s\n", o->nsess, o->create_s);
	/* Steady state: a worker that runs for hours has every page of the index and the records
	 * mapped already. Open every session once first (this process's page faults on its
	 * mapping of the segment happen here) and report that pass separately. */
	uint64_t w0 = bench_ns();
	for (uint32_t i = 0; i < o->nsess; i++) {
		shmb_session *h;
		if (shmb_session_open(o->c, o->sids[i], TENANT, PRINCIPAL, &h) < 0) {
			bench_fail(o->row, "open #%u failed", i);
			return -1;
		}
		shmb_session_close(h);
	}
	o->first_ns = (double)(bench_ns() - w0) / o->nsess;
	o->seed = 0x9e3779b97f4a7c15ull ^ o->nsess;
	return 0;
}

enum { OT_BATCH = 1000 };

/* One batch of OT_BATCH open+close of random sessions; returns ns per op, or -1. */
static double ot_batch(struct ot *o, struct bench_sysctr *sc)
{
	static char batch[OT_BATCH][SHMB_SID_LEN + 1];
	/* The sids a request would carry, laid out contiguously (the request buffer). */
	for (int j = 0; j < OT_BATCH; j++)
		memcpy(batch[j], o->sids[xorshift(&o->seed) % o->nsess], SHMB_SID_LEN + 1);
	bench_sysctr_start(sc);
	uint64_t a = bench_ns();
	for (int j = 0; j < OT_BATCH; j++) {
		shmb_session *h;
		int rc = shmb_session_open(o->c, batch[j], TENANT, PRINCIPAL, &h);
		if (rc < 0) {
			bench_fail(o->row, "open: %s", shmb_strerror(rc));
			return -1;
		}
		shmb_session_close(h);
	}
	uint64_t z = bench_ns();
	o->row->sys += bench_sysctr_stop(sc);
	o->row->ops += OT_BATCH;
	return (double)(z - a) / OT_BATCH;
}

static void ot_finish(struct ot *o)
{
	if (o->row->status == BS_NONE)
		bench_note(o->row,
			   "open+close of uniformly random sessions, batches of %d; first open of "
			   "each (page faults) %.0f ns; %u created in %.1f s; segment in %s",
			   OT_BATCH, o->first_ns, o->nsess, o->create_s,
			   bench_opt.segment_dir ? bench_opt.segment_dir : "/dev/shm");
	bench_shared_free(o->sids, o->sids_len);
	if (o->c)
		shmb_detach(o->c);
	if (o->started)
		bench_broker_stop(&o->b);
}

/* The three index sizes are measured in interleaved rounds (one warm-up batch, then ten
 * measured ones, for each size in turn), so that drift of the machine hits all three alike and
 * their ratios hold; between() measures a chunk of the baseline before each round. */
void shmb_open_touch(void (*between)(int round, int rounds))
{
	static const struct {
		const char *key;
		uint32_t n;
	} sizes[] = { { "open_touch_1k", 1000 },
		      { "open_touch_100k", 100000 },
		      { "open_touch_1m", 1000000 } };
	enum { K = sizeof sizes / sizeof sizes[0], PER_ROUND = 10 };
	struct ot o[K];
	int want = bench_n(300, 50), live = 0;
	int rounds = (want + PER_ROUND - 1) / PER_ROUND;
	memset(o, 0, sizeof o);
	for (int i = 0; i < K; i++) {
		o[i].row = bench_row(sizes[i].key);
		o[i].nsess = sizes[i].n;
		if (sizes[i].n == 1000000 && bench_opt.skip_million) {
			bench_skip(o[i].row, "--no-million");
			continue;
		}
		if (ot_setup(&o[i]) == 0)
			live |= 1 << i;
		else if (o[i].row->status == BS_NONE)
			bench_fail(o[i].row, "setup failed");
	}
	struct bench_sysctr sc;
	bench_sysctr_open(&sc);
	for (int round = 0; live && round < rounds; round++) {
		if (between)
			between(round, rounds);
		for (int i = 0; i < K; i++) {
			if (!(live & (1 << i)))
				continue;
			if (ot_batch(&o[i], &sc) < 0) { /* warm-up: the other sizes evicted it */
				live &= ~(1 << i);
				continue;
			}
			for (int j = 0; j < PER_ROUND && o[i].n < want; j++) {
				double v = ot_batch(&o[i], &sc);
				if (v < 0) {
					live &= ~(1 << i);
					break;
				}
				bench_add(o[i].row, v);
				o[i].n++;
			}
		}
	}
	bench_sysctr_close(&sc);
	for (int i = 0; i < K; i++)
		ot_finish(&o[i]);
}

/* ---- shared state of the event scenarios ---- */

struct ev_shared {
	_Alignas(64) _Atomic uint32_t ready;
	_Atomic uint32_t stop;
	_Atomic uint32_t failed;
	_Alignas(64) _Atomic uint32_t armed_seq;
	char sid_x[SHMB_SID_LEN + 1];
	char sid_y[SHMB_SID_LEN + 1];
};

static struct ev_shared *sh;

static int fail_child(const char *what, int rc)
{
	fprintf(stderr, "shmbench: child: %s: %s\n", what, rc < 0 ? shmb_strerror(rc) : "failed");
	atomic_store(&sh->failed, 1);
	return 1;
}

static int wait_flag(_Atomic uint32_t *f, uint32_t want)
{
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (atomic_load(f) < want) {
		if (bench_ns() > end || atomic_load(&sh->failed))
			return -1;
		bench_relax(&spins);
	}
	return 0;
}

/* A subscriber that is subscribed to X but never arms (busy elsewhere). */
static int awake_subscriber(void *arg)
{
	(void)arg;
	bench_pin(1);
	shmb_client *c = attach(bname);
	shmb_session *s = c ? open_sess(c, sh->sid_x) : NULL;
	if (!s || shmb_subscribe(s) < 0)
		return fail_child("subscriber setup", -1);
	atomic_fetch_add(&sh->ready, 1);
	uint64_t end = bench_ns() + 5 * DEADLINE_NS;
	while (!atomic_load(&sh->stop) && bench_ns() < end)
		usleep(2000);
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

/* A subscriber asleep in epoll whenever it has nothing to read. */
static int sleeping_subscriber(void *arg)
{
	(void)arg;
	bench_pin(1);
	shmb_client *c = attach(bname);
	shmb_session *s = c ? open_sess(c, sh->sid_x) : NULL;
	shmb_cursor *cur = NULL;
	struct waiter w;
	if (!s || shmb_subscribe(s) < 0 || shmb_cursor_open(s, 0, &cur) < 0 || waiter_init(&w, c))
		return fail_child("subscriber setup", -1);
	atomic_fetch_add(&sh->ready, 1);
	static uint8_t buf[4096];
	shmb_event ev;
	uint64_t end = bench_ns() + 5 * DEADLINE_NS;
	while (!atomic_load(&sh->stop) && bench_ns() < end) {
		while (shmb_cursor_next(cur, &ev, buf, sizeof buf) != 0) {
		}
		if (waiter_sleep(&w, &sh->armed_seq, 1000) < 0)
			return fail_child("wait", -1);
	}
	close(w.ep);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

void shmb_publish_chunk(int with_sub, int n)
{
	struct bench_row *row = bench_row(with_sub ? "publish_awake" : "publish_nosub");
	shmb_client *c = ev_c;
	if (!c || row->status != BS_NONE)
		return;
	memset(sh, 0, sizeof *sh);
	if (shmb_session_create(c, TENANT, PRINCIPAL, sh->sid_x) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	pid_t pid = with_sub ? bench_fork(awake_subscriber, NULL) : 0;
	shmb_session *s = open_sess(c, sh->sid_x);
	if (!s || (with_sub && wait_flag(&sh->ready, 1) < 0)) {
		bench_fail(row, "setup failed");
		goto out;
	}
	enum { BATCH = 1000 };
	int warm = 5;
	struct bench_sysctr sc;
	bench_sysctr_open(&sc);
	for (int k = 0; k < warm + n; k++) {
		bench_sysctr_start(&sc);
		uint64_t a = bench_ns();
		for (int j = 0; j < BATCH; j++) {
			int64_t id = shmb_publish(s, 0, KIND_DATA, payload, EV_BYTES);
			if (id < 0) {
				bench_fail(row, "publish: %s", shmb_strerror((int)id));
				break;
			}
		}
		uint64_t z = bench_ns();
		row->sys += bench_sysctr_stop(&sc);
		row->ops += BATCH;
		if (row->status != BS_NONE)
			break;
		if (k >= warm)
			bench_add(row, (double)(z - a) / BATCH);
	}
	bench_note(row, "batches of %d publishes; syscalls counted by %s", BATCH,
		   sc.exact ? "a perf tracepoint" : "/proc/self/io");
	bench_sysctr_close(&sc);
out:
	atomic_store(&sh->stop, 1);
	if (with_sub && bench_wait(pid, 10000) != 0)
		bench_fail(row, "subscriber failed");
	shmb_session_close(s);
	shmb_session_delete(c, sh->sid_x, TENANT, PRINCIPAL);
}

void shmb_asleep_chunk(int n)
{
	struct bench_row *row = bench_row("publish_asleep");
	shmb_client *c = ev_c;
	if (!c || row->status != BS_NONE)
		return;
	memset(sh, 0, sizeof *sh);
	if (shmb_session_create(c, TENANT, PRINCIPAL, sh->sid_x) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	pid_t pid = bench_fork(sleeping_subscriber, NULL);
	shmb_session *s = open_sess(c, sh->sid_x);
	int warm = 50;
	if (!s || wait_flag(&sh->ready, 1) < 0) {
		bench_fail(row, "setup failed");
		goto out;
	}
	for (int i = 0; i < warm + n; i++) {
		if (wait_flag(&sh->armed_seq, (uint32_t)i + 1) < 0) {
			bench_fail(row, "subscriber did not go to sleep");
			goto out;
		}
		bench_spin_ns(30000); /* let it reach epoll_wait and sleep */
		uint64_t t0 = bench_ns();
		int64_t id = shmb_publish(s, 0, KIND_DATA, payload, EV_BYTES);
		uint64_t t1 = bench_ns();
		if (id < 0) {
			bench_fail(row, "publish: %s", shmb_strerror((int)id));
			goto out;
		}
		if (i >= warm)
			bench_add(row, (double)(t1 - t0));
	}
	bench_note(row, "one publish per sample, the subscriber asleep in epoll_wait");
out:
	atomic_store(&sh->stop, 1);
	if (s)
		shmb_publish(s, 0, KIND_STOP, payload, 1); /* wake it to see stop */
	if (bench_wait(pid, 10000) != 0 && row->status == BS_NONE)
		bench_fail(row, "subscriber failed");
	shmb_session_close(s);
	shmb_session_delete(c, sh->sid_x, TENANT, PRINCIPAL);
}

/* ---- wake round trip ---- */

/* B: woken by X, reads, publishes on Y. */
static int echo_child(void *arg)
{
	(void)arg;
	bench_pin(1);
	shmb_client *c = attach(bname);
	shmb_session *x = c ? open_sess(c, sh->sid_x) : NULL;
	shmb_session *y = c ? open_sess(c, sh->sid_y) : NULL;
	shmb_cursor *cur = NULL;
	struct waiter w;
	if (!x || !y || shmb_subscribe(x) < 0 || shmb_cursor_open(x, 0, &cur) < 0 ||
	    waiter_init(&w, c))
		return fail_child("echo setup", -1);
	atomic_fetch_add(&sh->ready, 1);
	static uint8_t buf[4096];
	shmb_event ev;
	uint64_t end = bench_ns() + 5 * DEADLINE_NS;
	for (int done = 0; !done && bench_ns() < end && !atomic_load(&sh->failed);) {
		int rc;
		while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 1) {
			if (ev.kind == KIND_STOP) {
				done = 1;
				break;
			}
			int64_t id = shmb_publish(y, 0, KIND_DATA, buf, ev.len);
			if (id < 0)
				return fail_child("echo publish", (int)id);
		}
		if (rc < 0)
			return fail_child("echo read", rc);
		if (!done && waiter_sleep(&w, NULL, 1000) < 0)
			return fail_child("echo wait", -1);
	}
	close(w.ep);
	shmb_cursor_close(cur);
	shmb_session_close(x);
	shmb_session_close(y);
	shmb_detach(c);
	return 0;
}

void shmb_wake_chunk(int n)
{
	struct bench_row *row = bench_row("wake_rt");
	shmb_client *c = ev_c;
	if (!c || row->status != BS_NONE)
		return;
	memset(sh, 0, sizeof *sh);
	if (shmb_session_create(c, TENANT, PRINCIPAL, sh->sid_x) < 0 ||
	    shmb_session_create(c, TENANT, PRINCIPAL, sh->sid_y) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	shmb_session *x = open_sess(c, sh->sid_x), *y = open_sess(c, sh->sid_y);
	shmb_cursor *cur = NULL;
	struct waiter w = { .ep = -1 };
	int warm = 50;
	pid_t pid = 0;
	if (!x || !y || shmb_subscribe(y) < 0 || shmb_cursor_open(y, 0, &cur) < 0 ||
	    waiter_init(&w, c)) {
		bench_fail(row, "setup failed");
		goto out;
	}
	pid = bench_fork(echo_child, NULL);
	static uint8_t buf[4096];
	shmb_event ev;
	if (wait_flag(&sh->ready, 1) < 0) {
		bench_fail(row, "echo process did not start");
		goto out;
	}
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns(), end = t0 + DEADLINE_NS / 4;
		if (shmb_publish(x, 0, KIND_DATA, payload, EV_BYTES) < 0) {
			bench_fail(row, "publish failed");
			goto out;
		}
		for (;;) {
			int rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
			if (rc == 1)
				break;
			if (rc < 0 || bench_ns() > end || atomic_load(&sh->failed)) {
				bench_fail(row, "no echo (%s)",
					   rc < 0 ? shmb_strerror(rc) : "timeout");
				goto out;
			}
			if (waiter_sleep(&w, NULL, 1000) < 0) {
				bench_fail(row, "wait failed");
				goto out;
			}
		}
		if (i >= warm)
			bench_add(row, (double)(bench_ns() - t0));
	}
	bench_note(row, "A publishes on X, B (asleep in epoll) wakes, reads, publishes on Y, A "
			"(asleep in epoll) wakes and reads");
out:
	if (x && pid > 0)
		shmb_publish(x, 0, KIND_STOP, payload, 1);
	if (pid > 0 && bench_wait(pid, 10000) != 0 && row->status == BS_NONE)
		bench_fail(row, "echo process failed");
	if (w.ep >= 0)
		close(w.ep);
	shmb_cursor_close(cur);
	shmb_session_close(x);
	shmb_session_close(y);
	shmb_session_delete(c, sh->sid_x, TENANT, PRINCIPAL);
	shmb_session_delete(c, sh->sid_y, TENANT, PRINCIPAL);
}

/* ---- replay ---- */

void shmb_replay_chunk(int n)
{
	struct bench_row *row = bench_row("replay");
	shmb_client *c = ev_c;
	if (!c || row->status != BS_NONE)
		return;
	char sid[SHMB_SID_LEN + 1];
	if (shmb_session_create(c, TENANT, PRINCIPAL, sid) < 0) {
		bench_fail(row, "create failed");
		return;
	}
	shmb_session *s = open_sess(c, sid);
	if (!s) {
		bench_fail(row, "open failed");
		goto out;
	}
	for (int i = 0; i < 256; i++)
		if (shmb_publish(s, 0, KIND_DATA, payload, EV_BYTES) < 0) {
			bench_fail(row, "publish failed");
			goto out;
		}
	int warm = 20;
	static uint8_t buf[EV_BYTES];
	for (int k = 0; k < warm + n; k++) {
		uint64_t t0 = bench_ns();
		shmb_cursor *cur;
		shmb_event ev;
		int got = 0, rc;
		if (shmb_cursor_open(s, 0, &cur) < 0) {
			bench_fail(row, "cursor_open failed");
			goto out;
		}
		while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 1)
			got++;
		shmb_cursor_close(cur);
		uint64_t t1 = bench_ns();
		if (got != 256 || rc != 0) {
			bench_fail(row, "replayed %d events (rc %d)", got, rc);
			goto out;
		}
		if (k >= warm)
			bench_add(row, (double)(t1 - t0));
	}
	bench_note(row, "cursor open at 0, 256 cursor_next of 256 bytes, close");
out:
	shmb_session_close(s);
	shmb_session_delete(c, sid, TENANT, PRINCIPAL);
}

void shmb_broker_rss(void)
{
	struct bench_row *row = bench_row("broker_rss_idle");
	struct bench_broker b;
	if (bench_broker_start(&b, NULL) < 0) {
		bench_fail(row, "broker did not start on its defaults");
		return;
	}
	usleep(1200 * 1000); /* past its first sweep */
	long long rss = bench_rss_bytes(b.pid);
	if (rss < 0) {
		bench_fail(row, "no VmRSS for pid %d", (int)b.pid);
	} else {
		bench_set_value(row, (double)rss);
		bench_note(row,
			   "VmRSS of shmbrokerd on built-in defaults (1024 sessions, 256 x 512 "
			   "B rings), 1.2 s after ready");
	}
	bench_broker_stop(&b);
}

static struct bench_broker ev_b;

int shmb_events_start(void)
{
	memset(payload, 'x', sizeof payload);
	payload[0] = '{';
	payload[EV_BYTES - 1] = '}';
	sh = bench_shared_alloc(sizeof *sh);
	const char *const args[] = { "--max-sessions", "64", NULL };
	if (!sh || bench_broker_start(&ev_b, args) < 0) {
		fprintf(stderr, "shmbench: no events broker: the event rows fail\n");
		return -1;
	}
	bname = ev_b.name;
	ev_c = attach(ev_b.name);
	return ev_c ? 0 : -1;
}

void shmb_events_stop(void)
{
	if (ev_c)
		shmb_detach(ev_c);
	ev_c = NULL;
	if (ev_b.pid > 0)
		bench_broker_stop(&ev_b);
	bench_shared_free(sh, sizeof *sh);
	sh = NULL;
}

const char *shmb_events_name(void)
{
	return bname;
}

shmb_client *shmb_events_client(void)
{
	return ev_c;
}
