/* tsan_client.c - the client library's thread safety under ThreadSanitizer: a plain program (no
 * Criterion: its runner does not start under TSan on our machines, "Could not initialize
 * inheritable arena"), built and registered with ctest only with -DSHMB_SANITIZE=thread
 * (tests/CMakeLists.txt, label "tsan").
 *
 * It starts its own shmbrokerd (private runtime dir, unique name) and then:
 *   1. shares ONE shmb_client between threads that at the same time publish into one session,
 *      tail it through subscribe + cursors (one thread sleeping in shmb_wait, one polling;
 *      checking that ids strictly increase and every payload's checksum), create, open, stat,
 *      subscribe, publish into, unsubscribe and delete other sessions (control socket,
 *      subscription table, reader slots), and open cursors and stats on the shared session;
 *   2. has threads attach and detach clients of their own at the same time.
 * TSan reports any data race or lock-order problem in the library's process-local state; the
 * checks catch lost or torn events. Exit status 0 when all is well; anything else fails ctest.
 *
 * The lock-free shared-memory paths synchronise through liburcu's uatomic operations and fences,
 * which TSan cannot see; tests/tsan_uatomic.h (force-included in the TSan build) re-expresses
 * them with the orderings the sources ask for, and tests/tsan.supp lists the intended races that
 * remain when the ring wraps (a seqlock's payload copy, validated afterwards). Built with
 * TSAN_NO_WRAP (test tsan_client_nowrap) the ring never wraps and nothing is suppressed. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmb.h"

#ifndef SHMBROKERD_PATH
#error "SHMBROKERD_PATH must be defined by the build (tests/CMakeLists.txt)"
#endif

#define PUBLISHERS 2
#define READERS 2
#define EVENTS_PER_PUB 3000
/* 256-byte slots. A ring of 64 events wraps under the readers all the time (the seqlock's intended
 * races, tests/tsan.supp); built with TSAN_NO_WRAP (test tsan_client_nowrap) every event of the
 * run fits in the ring, no copy is ever overwritten, and the program runs with no suppressions:
 * the payload's hand-off (commit exchange, the reader's load and fence) is checked as it ships. */
#ifdef TSAN_NO_WRAP
#define MAX_SESSIONS "32"
#define RING_EVENTS "8192"
#define RING_BYTES "2097152"
_Static_assert(PUBLISHERS *EVENTS_PER_PUB < 8192, "the ring must not wrap");
#else
#define MAX_SESSIONS "64"
#define RING_EVENTS "64"
#define RING_BYTES "16384"
#endif
#define CHURN_ROUNDS 300
#define ATTACHERS 4
#define ATTACH_ROUNDS 20

static char name[64], rundir[128];
static pid_t broker_pid;
static atomic_int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("tsan_client: FAIL: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	atomic_fetch_add(&failures, 1);
}

#define CHECK_RC(call)                                                                             \
	({                                                                                         \
		int64_t rc_ = (call);                                                              \
		if (rc_ < 0)                                                                       \
			fail("%s:%d: %s: %s", __FILE__, __LINE__, #call, shmb_err_name((int)rc_)); \
		rc_;                                                                               \
	})

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the broker ---- */

static int broker_start(void)
{
	snprintf(rundir, sizeof rundir, "/tmp/shmb-tsan.%d.XXXXXX", (int)getpid());
	if (!mkdtemp(rundir))
		return -1;
	setenv("SHMB_RUNTIME_DIR", rundir, 1);
	snprintf(name, sizeof name, "tsan%d", (int)getpid());
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	broker_pid = fork();
	if (broker_pid < 0)
		return -1;
	if (broker_pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(p[1], 3); /* dup2 clears close-on-exec on the copy */
		execl(SHMBROKERD_PATH, "shmbrokerd", "--name", name, "--foreground", "--ready-fd",
		      "3", "--unlink-on-exit", "--max-sessions", MAX_SESSIONS, "--max-workers",
		      "16", "--readers-per-worker", "16", "--ring-events", RING_EVENTS,
		      "--ring-bytes", RING_BYTES, "--max-event-bytes", "1024", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	struct pollfd pf = { .fd = p[0], .events = POLLIN };
	char buf[16] = "";
	ssize_t n = poll(&pf, 1, 30000) == 1 ? read(p[0], buf, sizeof buf - 1) : -1;
	close(p[0]);
	if (n <= 0 || strncmp(buf, "ready", 5) != 0) {
		fprintf(stderr, "tsan_client: the broker did not become ready\n");
		return -1;
	}
	return 0;
}

static int broker_stop(void)
{
	kill(broker_pid, SIGTERM);
	int st = 0;
	int64_t deadline = mono_ms() + 30000;
	pid_t r;
	while ((r = waitpid(broker_pid, &st, WNOHANG)) == 0 && mono_ms() < deadline)
		usleep(5000);
	if (r != broker_pid) {
		kill(broker_pid, SIGKILL);
		waitpid(broker_pid, &st, 0);
		fprintf(stderr, "tsan_client: the broker did not stop on SIGTERM\n");
		return -1;
	}
	char shm[96], path[256];
	snprintf(shm, sizeof shm, "/shmb.%s", name);
	shm_unlink(shm); /* --unlink-on-exit removed it already; this is a backstop */
	snprintf(path, sizeof path, "%s/%s.lock", rundir, name);
	unlink(path);
	rmdir(rundir);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "tsan_client: the broker exited with status %d\n", st);
		return -1;
	}
	return 0;
}

/* ---- payloads: (publisher, seq) and a checksum over the rest ---- */

struct payload {
	uint32_t pub;
	uint32_t seq;
	uint32_t len;
	uint32_t sum;
	uint8_t body[200];
};

static uint32_t checksum(const struct payload *p)
{
	uint32_t h = 2166136261u ^ p->pub ^ (p->seq << 8);
	for (uint32_t i = 0; i < p->len; i++)
		h = (h ^ p->body[i]) * 16777619u;
	return h;
}

static size_t fill(struct payload *p, uint32_t pub, uint32_t seq)
{
	p->pub = pub;
	p->seq = seq;
	p->len = (pub * 31 + seq * 7) % sizeof p->body;
	for (uint32_t i = 0; i < p->len; i++)
		p->body[i] = (uint8_t)(seq + i * pub);
	p->sum = checksum(p);
	return offsetof(struct payload, body) + p->len;
}

/* ---- phase 1: one client, many threads ---- */

static shmb_client *C;
static char SID[SHMB_SID_LEN + 1];
static atomic_int publishers_done;

static void *publisher(void *arg)
{
	uint32_t pub = (uint32_t)(uintptr_t)arg;
	shmb_session *s = NULL;
	if (CHECK_RC(shmb_session_open(C, SID, "acme", NULL, &s)) < 0)
		return NULL;
	struct payload p;
	for (uint32_t seq = 0; seq < EVENTS_PER_PUB; seq++) {
		size_t len = fill(&p, pub, seq);
		int64_t id = shmb_publish(s, pub, 1, &p, len);
		/* EOVERRUN: the ring wrapped while this one was written; it reads as a gap. */
		if (id < 0 && id != SHMB_EOVERRUN) {
			fail("publisher %u: shmb_publish: %s", pub, shmb_err_name((int)id));
			break;
		}
		if (seq % 64 == 0)
			sched_yield(); /* let the readers keep up now and then */
	}
	shmb_session_close(s);
	atomic_fetch_add(&publishers_done, 1);
	return NULL;
}

/* Readers tail the shared session; only the first sleeps in shmb_wait (waiting is per client:
 * two threads arming one client can lose a wakeup, shmb.h), the other polls. */
static void *reader(void *arg)
{
	int waiter = arg != NULL;
	shmb_session *s = NULL;
	if (CHECK_RC(shmb_session_open(C, SID, "acme", NULL, &s)) < 0)
		return NULL;
	CHECK_RC(shmb_subscribe(s));
	shmb_cursor *cur = NULL;
	if (CHECK_RC(shmb_cursor_open(s, 0, &cur)) < 0) {
		shmb_session_close(s);
		return NULL;
	}
	uint32_t next_seq[PUBLISHERS + 1] = { 0 };
	uint64_t last = 0, got = 0, lagged = 0, gaps = 0;
	int64_t deadline = mono_ms() + 120000;
	struct payload p;
	while (mono_ms() < deadline) {
		shmb_event ev;
		int rc = shmb_cursor_next(cur, &ev, &p, sizeof p);
		if (rc == 1) {
			if (ev.id <= last)
				fail("reader: id %llu after %llu", (unsigned long long)ev.id,
				     (unsigned long long)last);
			last = ev.id;
			if (ev.flags & SHMB_EV_GAP) {
				gaps++;
				continue;
			}
			if (ev.len < offsetof(struct payload, body) || p.pub < 1 ||
			    p.pub > PUBLISHERS ||
			    ev.len != offsetof(struct payload, body) + p.len ||
			    checksum(&p) != p.sum || ev.stream != p.pub) {
				fail("reader: event %llu is torn or corrupt",
				     (unsigned long long)ev.id);
				continue;
			}
			/* Per publisher, sequence numbers increase (gaps only after an overrun). */
			if (p.seq < next_seq[p.pub])
				fail("reader: publisher %u seq %u after %u", p.pub, p.seq,
				     next_seq[p.pub]);
			next_seq[p.pub] = p.seq + 1;
			got++;
			continue;
		}
		if (rc == SHMB_EOVERRUN) {
			lagged += shmb_cursor_lagged(cur);
			continue;
		}
		if (rc < 0) {
			fail("reader: shmb_cursor_next: %s", shmb_err_name(rc));
			break;
		}
		if (atomic_load(&publishers_done) == PUBLISHERS &&
		    last >= (uint64_t)PUBLISHERS * EVENTS_PER_PUB)
			break;
		if (waiter) {
			rc = shmb_wait(C, 50);
			if (rc < 0)
				fail("reader: shmb_wait: %s", shmb_err_name(rc));
		} else {
			nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
		}
	}
	if (got + gaps + lagged < (uint64_t)PUBLISHERS * EVENTS_PER_PUB)
		fail("reader: %llu events read + %llu gaps + %llu lagged < %d published",
		     (unsigned long long)got, (unsigned long long)gaps, (unsigned long long)lagged,
		     PUBLISHERS * EVENTS_PER_PUB);
	shmb_cursor_close(cur);
	CHECK_RC(shmb_unsubscribe(s));
	shmb_session_close(s);
	return NULL;
}

static void *churn(void *arg)
{
	(void)arg;
	for (int i = 0; i < CHURN_ROUNDS; i++) {
		char sid[SHMB_SID_LEN + 1];
		int rc;
		/* EFULL: the deleted records still await their grace period (a reader thread
		 * preempted inside a read-side section holds it up: likely under TSan). */
		const char *principal = i % 2 ? "bob" : NULL;
		for (int tries = 0; tries < 5000; tries++) {
			rc = shmb_session_create(C, "acme", principal, sid);
			if (rc != SHMB_EFULL)
				break;
			nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
		}
		if (CHECK_RC(rc) < 0)
			break;
		shmb_session *s = NULL;
		if (CHECK_RC(shmb_session_open(C, sid, "acme", i % 2 ? "bob" : NULL, &s)) == 0) {
			shmb_session_info info;
			CHECK_RC(shmb_session_stat(s, &info));
			CHECK_RC(shmb_subscribe(s));
			char ev[16] = "x";
			CHECK_RC(shmb_publish(s, 9, 2, ev, sizeof ev));
			if (i % 3 == 0)
				CHECK_RC(shmb_unsubscribe(s));
			shmb_session_close(s);
		}
		CHECK_RC(shmb_session_delete(C, sid, "acme", i % 2 ? "bob" : NULL));
	}
	return NULL;
}

static void *observer(void *arg)
{
	(void)arg;
	while (atomic_load(&publishers_done) < PUBLISHERS) {
		shmb_session *s = NULL;
		if (CHECK_RC(shmb_session_open(C, SID, "acme", NULL, &s)) < 0)
			break;
		shmb_session_info info;
		CHECK_RC(shmb_session_stat(s, &info));
		shmb_cursor *cur = NULL;
		if (CHECK_RC(shmb_cursor_open_stream(s, info.oldest_event_id, 1, &cur)) == 0) {
			struct payload p;
			shmb_event ev;
			for (int k = 0; k < 16; k++)
				if (shmb_cursor_next(cur, &ev, &p, sizeof p) == 0)
					break;
			shmb_cursor_close(cur);
		}
		shmb_session_close(s);
	}
	return NULL;
}

static void phase_shared_client(void)
{
	if (CHECK_RC(shmb_attach(name, &C)) < 0)
		return;
	if (CHECK_RC(shmb_session_create(C, "acme", NULL, SID)) < 0)
		return;
	pthread_t t[PUBLISHERS + READERS + 2];
	int n = 0;
	for (int i = 0; i < READERS; i++)
		pthread_create(&t[n++], NULL, reader, i == 0 ? (void *)1 : NULL);
	pthread_create(&t[n++], NULL, churn, NULL);
	pthread_create(&t[n++], NULL, observer, NULL);
	for (int i = 0; i < PUBLISHERS; i++)
		pthread_create(&t[n++], NULL, publisher, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	CHECK_RC(shmb_session_delete(C, SID, "acme", NULL));
	shmb_detach(C);
}

/* ---- phase 2: clients attached and detached by several threads at once ---- */

static void *attacher(void *arg)
{
	(void)arg;
	for (int i = 0; i < ATTACH_ROUNDS; i++) {
		shmb_client *c = NULL;
		if (CHECK_RC(shmb_attach(name, &c)) < 0)
			break;
		char sid[SHMB_SID_LEN + 1];
		if (CHECK_RC(shmb_session_create(c, "acme", NULL, sid)) == 0) {
			shmb_session *s = NULL;
			if (CHECK_RC(shmb_session_open(c, sid, "acme", NULL, &s)) == 0) {
				CHECK_RC(shmb_subscribe(s));
				CHECK_RC(shmb_publish(s, 1, 1, "hi", 2));
				shmb_session_close(s);
			}
			CHECK_RC(shmb_session_delete(c, sid, "acme", NULL));
		}
		shmb_detach(c);
	}
	return NULL;
}

static void phase_many_clients(void)
{
	pthread_t t[ATTACHERS];
	for (int i = 0; i < ATTACHERS; i++)
		pthread_create(&t[i], NULL, attacher, NULL);
	for (int i = 0; i < ATTACHERS; i++)
		pthread_join(t[i], NULL);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (broker_start() < 0)
		return 2;
	int64_t t0 = mono_ms();
	phase_shared_client();
	int64_t t1 = mono_ms();
	phase_many_clients();
	int64_t t2 = mono_ms();
	if (broker_stop() < 0)
		atomic_fetch_add(&failures, 1);
	int f = atomic_load(&failures);
	printf("tsan_client: shared client %lld ms (%d publishers x %d events, %d readers, %d "
	       "churn rounds), %d threads attaching %lld ms: %s\n",
	       (long long)(t1 - t0), PUBLISHERS, EVENTS_PER_PUB, READERS, CHURN_ROUNDS, ATTACHERS,
	       (long long)(t2 - t1), f ? "FAILED" : "ok");
	return f ? 1 : 0;
}
