/* evhelp.h - helpers shared by the event tests (test_events.c, test_wakeup.c,
 * test_wakeup_stress.c, test_gap.c): checksummed payloads, reports from child processes, start
 * gates, time stamps and random pauses. Header-only (static inline), so the test build needs no
 * extra source file.
 *
 * struct h_child records are static in these tests: they date from a harness that read them in
 * its teardown, after the test body had returned (e33219f made the harness keep its own copy).
 *
 * Children forked with h_child_start() never use cr_assert: they attach their own client
 * (a client belongs to the process that attached it), do their part, and send one struct
 * evh_report through their pipe; a failure carries a message the parent turns into the
 * assertion text (with shmb_strerror of the code that failed). */
#ifndef SHMB_TEST_EVHELP_H
#define SHMB_TEST_EVHELP_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* ---------------------------------------------------------------- time and randomness */

/* Monotonic nanoseconds: the same clock in every process of the machine. */
static inline int64_t evh_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift64*: a small deterministic generator (payload bytes, pauses). */
static inline uint64_t evh_rand(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15u;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1du;
}

/* A random short pause: mostly a busy loop of random length (up to ~busy_max iterations),
 * sometimes sched_yield(), sometimes usleep(0..200). Exercises every interleaving of a waiter
 * arming and a publisher committing. */
static inline void evh_pause(uint64_t *rng, unsigned busy_max)
{
	uint64_t r = evh_rand(rng);
	unsigned pick = (unsigned)(r % 100);
	if (pick < 2) {
		usleep((useconds_t)((r >> 8) % 201));
	} else if (pick < 6) {
		sched_yield();
	} else if (busy_max) {
		volatile unsigned sink = 0;
		unsigned n = (unsigned)((r >> 16) % busy_max);
		for (unsigned i = 0; i < n; i++)
			sink += i;
		(void)sink;
	}
}

/* The state letter of pid in /proc/<pid>/stat ('S' asleep, 'T' stopped, ...), or 0 when it is
 * gone or unreadable. */
static inline char evh_proc_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

/* 1 when pid is blocked (state S: interruptible sleep, e.g. in poll or epoll_wait): what a test
 * polls for before it acts on a process that must be asleep. */
static inline int evh_proc_sleeping(pid_t pid)
{
	return evh_proc_state(pid) == 'S';
}

/* 1 when pid is stopped (SIGSTOP, or a fault point's :stop). */
static inline int evh_proc_stopped(pid_t pid)
{
	return evh_proc_state(pid) == 'T';
}

/* ---------------------------------------------------------------- payloads */

#define EVH_MAGIC 0x45564831u /* "EVH1" */

/* Every test payload starts with this header; the rest are bytes derived from (pub, seq). */
struct evh_payload {
	uint32_t magic;
	uint32_t pub;     /* publisher number */
	uint64_t seq;     /* publisher's own sequence, from 0 */
	int64_t stamp_ns; /* evh_mono_ns() just before shmb_publish */
	uint32_t len;     /* whole payload length */
	uint32_t flags;   /* test-specific (EVH_F_*) */
	uint64_t sum;     /* FNV-1a of the whole payload with sum = 0 */
};
#define EVH_F_ACK 1u /* the publisher waits for the subscriber to acknowledge this event */

static inline uint64_t evh_fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3u;
	return h;
}

static inline uint64_t evh_sum(const unsigned char *buf, size_t len)
{
	struct evh_payload h;
	memcpy(&h, buf, sizeof h);
	h.sum = 0;
	uint64_t v = evh_fnv(&h, sizeof h, 0xcbf29ce484222325u);
	return evh_fnv(buf + sizeof h, len - sizeof h, v);
}

/* Fills buf with a payload of len bytes (len >= sizeof(struct evh_payload)). */
static inline void evh_fill(unsigned char *buf, size_t len, uint32_t pub, uint64_t seq,
			    uint32_t flags)
{
	struct evh_payload h = { .magic = EVH_MAGIC,
				 .pub = pub,
				 .seq = seq,
				 .stamp_ns = evh_mono_ns(),
				 .len = (uint32_t)len,
				 .flags = flags };
	memcpy(buf, &h, sizeof h);
	uint64_t rng = ((uint64_t)pub << 40) ^ (seq * 0x9e3779b97f4a7c15u) ^ len;
	for (size_t i = sizeof h; i < len; i++)
		buf[i] = (unsigned char)(evh_rand(&rng) >> 56);
	h.sum = evh_sum(buf, len);
	memcpy(buf, &h, sizeof h);
}

/* Payload length of publisher pub's event seq: varies between min and max (inclusive). */
static inline size_t evh_len(uint32_t pub, uint64_t seq, size_t min, size_t max)
{
	uint64_t r = ((uint64_t)pub + 1) * 0x9e3779b97f4a7c15u + seq * 0xbf58476d1ce4e5b9u;
	return min + (size_t)(evh_rand(&r) % (max - min + 1));
}

/* Checks a received payload; on success copies its header to *out and returns NULL, else a
 * static description of what is wrong. */
static inline const char *evh_check(const void *data, size_t len, struct evh_payload *out)
{
	if (!data)
		return "data is NULL";
	if (len < sizeof *out)
		return "payload shorter than its header";
	memcpy(out, data, sizeof *out);
	if (out->magic != EVH_MAGIC)
		return "bad magic";
	if (out->len != len)
		return "length differs from the length published";
	if (out->sum != evh_sum(data, len))
		return "checksum mismatch (torn or foreign payload)";
	return NULL;
}

/* ---------------------------------------------------------------- child reports */

/* What a child sends back: status 0 and its figures, or status != 0 and a message. */
struct evh_report {
	int status;
	int code; /* the SHMB_E* code that failed, 0 if none */
	char msg[400];
	uint64_t n[8]; /* test-specific figures */
	int64_t t[4];  /* test-specific times (monotonic ns) */
};

/* In a child: sends r. */
static inline int evh_send(int wfd, struct evh_report *r)
{
	return h_write_all(wfd, r, sizeof *r) == 0 ? r->status : 3;
}

/* In a child: sends a failure report; returns the child's exit status (1). */
static inline int evh_fail(int wfd, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline int evh_fail(int wfd, int code, const char *fmt, ...)
{
	struct evh_report r;
	memset(&r, 0, sizeof r);
	r.status = 1;
	r.code = code;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(r.msg, sizeof r.msg, fmt, ap);
	va_end(ap);
	if (code && n >= 0 && (size_t)n < sizeof r.msg)
		snprintf(r.msg + n, sizeof r.msg - (size_t)n, ": %s (%s)", shmb_err_name(code),
			 shmb_strerror(code));
	h_write_all(wfd, &r, sizeof r);
	return 1;
}

/* In the parent: reads a child's report (failing the test when there is none or it says the
 * child failed) and reaps the child, asserting exit status 0. */
static inline void evh_collect(struct h_child *ch, const char *who, struct evh_report *r,
			       int timeout_ms)
{
	memset(r, 0, sizeof *r);
	ssize_t n = h_child_read(ch, r, sizeof *r, timeout_ms);
	if (n != (ssize_t)sizeof *r) {
		h_child_kill(ch);
		cr_fatal("%s (pid %ld): no report within %d ms (%s)", who, (long)ch->pid,
			 timeout_ms, n == 0 ? "pipe closed: it died or exited early" : "timeout");
	}
	cr_assert_eq(r->status, 0, "%s (pid %ld) failed: %s", who, (long)ch->pid, r->msg);
	int st = h_child_wait(ch, H_EXIT_TIMEOUT_MS);
	cr_assert_eq(st, 0, "%s (pid %ld) exited with status %d", who, (long)ch->pid, st);
}

/* ---------------------------------------------------------------- gates */

/* A start gate: children block in evh_gate_wait() until the parent opens it by writing one byte
 * per waiting child. Awaiting a pipe, not a sleep. (Bytes rather than EOF: other children inherit
 * the write end.) */
struct evh_gate {
	int fd[2];
};

static inline void evh_gate_init(struct evh_gate *g)
{
	cr_assert_eq(pipe2(g->fd, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
}

/* In a child: blocks until the gate opens. Returns 0, or -1 on an error or EOF. */
static inline int evh_gate_wait(struct evh_gate *g)
{
	char c;
	ssize_t n;
	while ((n = read(g->fd[0], &c, 1)) < 0 && errno == EINTR)
		;
	return n == 1 ? 0 : -1;
}

/* In the parent: opens the gate for n waiting children (after every child was started) and
 * closes its ends. */
static inline void evh_gate_open(struct evh_gate *g, int n)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(write(g->fd[1], "g", 1), 1, "gate: %s", strerror(errno));
	close(g->fd[0]);
	close(g->fd[1]);
}

/* ---------------------------------------------------------------- sessions */

#define EVH_TENANT "acme"

/* In the parent: creates a session of EVH_TENANT without a principal and opens it. */
static inline shmb_session *evh_session(shmb_client *c, char sid[SHMB_SID_LEN + 1])
{
	int rc = shmb_session_create(c, EVH_TENANT, NULL, sid);
	cr_assert_eq(rc, 0, "shmb_session_create: %s (%s)", shmb_err_name(rc), shmb_strerror(rc));
	shmb_session *s = NULL;
	rc = shmb_session_open(c, sid, EVH_TENANT, NULL, &s);
	cr_assert_eq(rc, 0, "shmb_session_open: %s (%s)", shmb_err_name(rc), shmb_strerror(rc));
	return s;
}

/* In a child: attaches to broker `name` and opens sid. Returns 0 or the failing code (and
 * what failed in *what). */
static inline int evh_child_open(const char *name, const char *sid, shmb_client **c,
				 shmb_session **s, const char **what)
{
	*c = NULL;
	*s = NULL;
	int rc = shmb_attach(name, c);
	if (rc < 0) {
		*what = "shmb_attach";
		return rc;
	}
	rc = shmb_session_open(*c, sid, EVH_TENANT, NULL, s);
	if (rc < 0) {
		*what = "shmb_session_open";
		shmb_detach(*c);
		*c = NULL;
		return rc;
	}
	return 0;
}

/* In a child: evh_child_open, then subscribes and opens a cursor from the start (after id 0):
 * how every subscriber child begins. Returns 0 or the failing code (and what failed). */
static inline int evh_child_subscriber(const char *name, const char *sid, shmb_client **c,
				       shmb_session **s, shmb_cursor **cur, const char **what)
{
	int rc = evh_child_open(name, sid, c, s, what);
	if (rc < 0)
		return rc;
	if ((rc = shmb_subscribe(*s)) < 0) {
		*what = "shmb_subscribe";
		return rc;
	}
	if ((rc = shmb_cursor_open(*s, 0, cur)) < 0) {
		*what = "shmb_cursor_open";
		return rc;
	}
	return 0;
}

static inline void evh_child_close(shmb_client *c, shmb_session *s)
{
	shmb_session_close(s);
	shmb_detach(c);
}

/* A string argument for the broker command line. */
#define EVH_U(buf, v) (snprintf((buf), sizeof(buf), "%llu", (unsigned long long)(v)), (buf))

/* Asserts a cursor call returned want. */
#define EVH_NEXT(cur, ev, buf, len, want)                                                          \
	do {                                                                                       \
		int evh_rc_ = shmb_cursor_next((cur), (ev), (buf), (len));                         \
		int evh_want_ = (want);                                                            \
		cr_assert_eq(evh_rc_, evh_want_,                                                   \
			     "shmb_cursor_next at position %llu returned %d %s (%s), expected %d", \
			     (unsigned long long)shmb_cursor_position(cur), evh_rc_,               \
			     evh_rc_ < 0 ? shmb_err_name(evh_rc_) : "",                            \
			     evh_rc_ < 0 ? shmb_strerror(evh_rc_) : "", evh_want_);                \
	} while (0)

#endif
