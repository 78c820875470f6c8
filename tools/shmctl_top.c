/* shmctl_top.c - `shmctl top`: a live view of one instance, refreshed every second (or
 * --interval-ms) until SIGINT, SIGTERM, 'q', or --iterations frames.
 *
 * On a terminal each frame clears the screen (ANSI) and is written in one go; keys are read
 * without echo and the terminal mode is restored on the way out. When stdout is not a terminal,
 * frames are printed one after the other, separated by a blank line (for logs and tests). The
 * segment is mapped afresh for every frame, so a broker that restarts (even with a new segment)
 * is followed. Rates come from the differences between two frames over the monotonic clock. */
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "clock.h"
#include "proc.h"
#include "seg.h"
#include "shmctl.h"

static volatile sig_atomic_t top_stop;

static void on_signal(int sig)
{
	(void)sig;
	top_stop = 1;
}

/* What the previous frame saw, for rates. */
struct top_prev {
	int have;
	int64_t mono_ms;
	uint64_t events, created, deleted, expired, grace, wake_sent;
	uint64_t broker_gen;
	struct {
		int32_t pid;
		uint32_t gen;
		uint64_t published, wake_sent, wake_received;
	} w[SHMB_MAX_WORKERS_LIMIT];
};

static void rate(char *out, size_t len, const struct top_prev *p, uint64_t now_v, uint64_t prev_v,
		 double secs)
{
	if (!p->have || secs <= 0 || now_v < prev_v)
		snprintf(out, len, "-");
	else
		snprintf(out, len, "%.1f/s", (double)(now_v - prev_v) / secs);
}

/* "12.5/s" for a count that grew by delta over secs, "-" without a previous frame. */
static void rate_of(char *out, size_t len, int have, uint64_t delta, double secs)
{
	if (!have || secs <= 0)
		snprintf(out, len, "-");
	else
		snprintf(out, len, "%.1f/s", (double)delta / secs);
}

/* Wakeups: eventfd writes made by publishers (sent) and eventfd reads that found a count
 * (received), both per worker slot. The broker adds a detaching worker's sent count to
 * SHMB_CTR_WAKEUPS_RETIRED; received counts of detached workers are not kept. */
struct top_wakeups {
	uint64_t sent, received;     /* totals: sent includes the retired count */
	uint64_t d_sent, d_received; /* growth since the previous frame, over the slots
					     * that hold the same worker in both frames */
	uint64_t sent_w[SHMB_MAX_WORKERS_LIMIT], received_w[SHMB_MAX_WORKERS_LIMIT];
};

/* Reads every slot's counters (before the worker table updates p->w). */
static void wakeups(const struct shmb_seg *seg, const struct top_prev *p, struct top_wakeups *wu)
{
	memset(wu, 0, sizeof *wu);
	for (uint32_t w = 0; w < seg->cfg.max_workers && w < SHMB_MAX_WORKERS_LIMIT; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		if (uatomic_read(&wk->state) == SHMB_WORKER_FREE)
			continue;
		uint64_t sent = uatomic_read(&wk->wakeups_sent);
		uint64_t received = uatomic_read(&wk->wakeups_received);
		wu->sent_w[w] = sent;
		wu->received_w[w] = received;
		wu->sent += sent;
		wu->received += received;
		if (p->have && p->w[w].pid == uatomic_read(&wk->pid) &&
		    p->w[w].gen == uatomic_read(&wk->gen)) {
			if (received >= p->w[w].wake_received)
				wu->d_received += received - p->w[w].wake_received;
		}
	}
	wu->sent += shmctl_counter(seg, SHMB_CTR_WAKEUPS_RETIRED);
	/* Sent is a monotonic total (retired counts are kept): its rate is the difference. */
	wu->d_sent = p->have && wu->sent >= p->wake_sent ? wu->sent - p->wake_sent : 0;
}

static void frame(FILE *f, const struct shmctl_opts *o, const struct shmb_seg *seg,
		  struct top_prev *p, int tty)
{
	const struct shmb_seg_header *h = seg_hdr(seg);
	int64_t now = shmb_now_ms(), mono = shmb_mono_ms();
	double secs = p->have ? (double)(mono - p->mono_ms) / 1000.0 : 0;
	struct shmctl_summary s;
	shmctl_summarize(seg, now, &s);
	int alive;
	const char *bstate = shmctl_broker_state(seg, &alive);
	uint64_t bgen = uatomic_read(&h->broker_generation);
	if (p->have && bgen != p->broker_gen)
		p->have = 0; /* a new broker: its counters may have restarted */

	char shm[96], t1[40], t2[48];
	seg_shm_name(o->name, shm, sizeof shm);
	shmctl_localtime(t1, sizeof t1, now);
	fprintf(f, "shmctl top - '%s' (%s)  %s\n", o->name, shm, t1);
	shmctl_age(t2, sizeof t2, uatomic_read(&h->heartbeat_ms), now);
	int32_t pid = uatomic_read(&h->broker_pid);
	if (alive)
		fprintf(f, "broker:    running (pid %d, generation %" PRIu64 "), heartbeat %s\n",
			pid, bgen, t2);
	else
		fprintf(f,
			"broker:    %s (last pid %d, generation %" PRIu64 "), last heartbeat %s\n",
			bstate, pid, bgen, t2);

	uint64_t created = shmctl_counter(seg, SHMB_CTR_SESSIONS_CREATED);
	uint64_t deleted = shmctl_counter(seg, SHMB_CTR_SESSIONS_DELETED);
	uint64_t expired = shmctl_counter(seg, SHMB_CTR_SESSIONS_EXPIRED);
	uint64_t grace = shmctl_counter(seg, SHMB_CTR_GRACE_PERIODS);
	char r1[32], r2[32], r3[32];
	rate(r1, sizeof r1, p, created, p->created, secs);
	rate(r2, sizeof r2, p, deleted, p->deleted, secs);
	rate(r3, sizeof r3, p, expired, p->expired, secs);
	fprintf(f, "sessions:  %u live of %u (%u expired awaiting the sweeper)\n", s.sessions_live,
		seg->cfg.max_sessions, s.sessions_expired);
	fprintf(f, "           created %s, deleted %s, expired %s\n", r1, r2, r3);
	rate(r1, sizeof r1, p, s.events_published, p->events, secs);
	fprintf(f, "events:    %" PRIu64 " published, %s\n", s.events_published, r1);
	struct top_wakeups wu;
	wakeups(seg, p, &wu);
	rate(r1, sizeof r1, p, wu.sent, p->wake_sent, secs);
	rate_of(r2, sizeof r2, p->have, wu.d_received, secs);
	fprintf(f,
		"wakeups:   %" PRIu64 " sent (%s), %" PRIu64 " received by attached workers (%s)\n",
		wu.sent, r1, wu.received, r2);
	rate(r1, sizeof r1, p, grace, p->grace, secs);
	fprintf(f,
		"grace:     rcu_gp %" PRIu64 ", %" PRIu64 " grace periods (%s), %u retired records "
		"awaiting reclamation\n",
		s.rcu_gp, grace, r1, s.sessions_retired);
	fprintf(f, "workers:   %u attached of %u%s\n\n", s.workers_live, seg->cfg.max_workers,
		s.workers_dead ? " (some dead, being cleaned up)" : "");

	static const char *const head[] = {
		"SLOT",      "PID",  "STATE",     "ALIVE",     "READERS",   "IN SECTION",
		"PUBLISHED", "RATE", "WAKE SENT", "WAKE RCVD", "RCVD RATE",
	};
	struct shmctl_table t;
	shmctl_table_init(&t, 11, head, "rrllrrrrrrr");
	for (uint32_t w = 0; w < seg->cfg.max_workers && w < SHMB_MAX_WORKERS_LIMIT; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		uint32_t state = uatomic_read(&wk->state);
		int32_t wpid = uatomic_read(&wk->pid);
		uint32_t gen = uatomic_read(&wk->gen);
		uint64_t published = seg_worker_stats(seg, w).events_published;
		int same = p->have && p->w[w].pid == wpid && p->w[w].gen == gen;
		p->w[w].pid = wpid;
		p->w[w].gen = gen;
		uint64_t before = p->w[w].published, recv_before = p->w[w].wake_received;
		p->w[w].published = published;
		p->w[w].wake_sent = wu.sent_w[w];
		p->w[w].wake_received = wu.received_w[w];
		if (state == SHMB_WORKER_FREE)
			continue;
		uint32_t in_use = 0, in_section = 0;
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			const struct shmb_reader *r = seg_reader(seg, w, k);
			in_use += uatomic_read(&r->in_use) != 0;
			in_section += uatomic_read(&r->ctr) != 0;
		}
		char c0[16], c1[16], c4[16], c5[16], c6[24], c7[32], c8[24], c9[24], c10[32];
		snprintf(c0, sizeof c0, "%u", w);
		snprintf(c1, sizeof c1, "%d", wpid);
		snprintf(c4, sizeof c4, "%u", in_use);
		snprintf(c5, sizeof c5, "%u", in_section);
		snprintf(c6, sizeof c6, "%" PRIu64, published);
		if (same && secs > 0 && published >= before)
			snprintf(c7, sizeof c7, "%.1f/s", (double)(published - before) / secs);
		else
			snprintf(c7, sizeof c7, "-");
		snprintf(c8, sizeof c8, "%" PRIu64, wu.sent_w[w]);
		snprintf(c9, sizeof c9, "%" PRIu64, wu.received_w[w]);
		rate_of(c10, sizeof c10, same && wu.received_w[w] >= recv_before,
			wu.received_w[w] - recv_before, secs);
		const char *row[] = { c0,
				      c1,
				      state == SHMB_WORKER_LIVE   ? "live"
				      : state == SHMB_WORKER_DEAD ? "dead"
								  : "invalid",
				      wpid > 0 && proc_alive(wpid, uatomic_read(&wk->starttime))
					      ? "yes"
					      : "no",
				      c4,
				      c5,
				      c6,
				      c7,
				      c8,
				      c9,
				      c10 };
		shmctl_table_add(&t, row);
	}
	if (t.nrows)
		shmctl_table_print(&t, f);
	else
		fprintf(f, "no workers attached\n");
	shmctl_table_fini(&t);
	if (tty)
		fprintf(f, "\nq or Ctrl-C quits\n");

	p->have = 1;
	p->mono_ms = mono;
	p->broker_gen = bgen;
	p->events = s.events_published;
	p->created = created;
	p->deleted = deleted;
	p->expired = expired;
	p->grace = grace;
	p->wake_sent = wu.sent;
}

/* Waits up to ms for the interval to pass; returns 1 when asked to quit ('q' or a signal). */
static int wait_key(int keys, long ms)
{
	int64_t end = shmb_mono_ms() + ms;
	while (!top_stop) {
		int64_t left = end - shmb_mono_ms();
		if (left <= 0)
			return 0;
		struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
		int n = poll(&pfd, keys ? 1 : 0, (int)left);
		if (n > 0 && (pfd.revents & POLLIN)) {
			char c;
			ssize_t got = read(STDIN_FILENO, &c, 1);
			if (got == 1 && (c == 'q' || c == 'Q'))
				return 1;
			if (got == 0)
				keys = 0; /* stdin closed: stop watching it */
		} else if (n > 0) {
			keys = 0;
		}
	}
	return 1;
}

int shmctl_cmd_top(const struct shmctl_opts *o)
{
	int tty = isatty(STDOUT_FILENO);
	int keys = tty && isatty(STDIN_FILENO);
	struct termios saved;
	if (keys && tcgetattr(STDIN_FILENO, &saved) == 0) {
		struct termios raw = saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	} else {
		keys = 0;
	}
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: poll returns EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	struct top_prev *prev = calloc(1, sizeof *prev);
	int rc = prev ? SHMCTL_OK : SHMCTL_UNAVAIL;
	if (!prev)
		shmctl_fail("top", "out of memory");
	for (long it = 0; prev && !top_stop;) {
		struct shmb_seg seg;
		rc = shmctl_open(o, "top", &seg, NULL, NULL, 0);
		if (rc)
			break;
		char *text = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);
		if (!f) {
			seg_unmap(&seg);
			shmctl_fail("top", "out of memory");
			rc = SHMCTL_UNAVAIL;
			break;
		}
		if (tty)
			fputs("\033[H\033[2J", f);
		else if (it > 0)
			fputc('\n', f);
		frame(f, o, &seg, prev, tty);
		seg_unmap(&seg);
		fclose(f);
		fwrite(text, 1, len, stdout);
		fflush(stdout);
		free(text);
		if (o->iterations && ++it >= o->iterations)
			break;
		if (wait_key(keys, o->interval_ms))
			break;
	}
	free(prev);
	if (keys)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	return rc;
}
