/* worker.c - one shmb-mcpd worker: attach to the broker, run the epoll loop, stop cleanly.
 *
 * The loop's epoll set holds libmicrohttpd's own epoll fd (this worker's listening socket, one of
 * the SO_REUSEPORT group the master opened, and its connections), shmb_fd() of the broker client (a
 * subscribed session has news), a signalfd (SIGTERM/SIGINT) and the broker thread's eventfd. Each
 * turn lets MHD process its sockets, then runs the due job steps (jobs.c) -- a job a request has
 * just started among them, so its first step is not left to a timer -- drains every reader's cursor
 * into its connection (stream.c), and sleeps until the earliest of MHD's timeout, the next job step
 * and the next keepalive; shmb_prepare_wait() before the sleep arms the wakeup, or says there is
 * news already (docs/events.md: no lost wakeups). Nothing on the loop talks to the broker's socket:
 * attach, create and delete run on the worker's broker thread (ctl.c). While the broker is
 * unreachable or hung the worker keeps serving HTTP (503 for what needs the broker, or a session
 * before the first attach) and the thread retries attaching twice a second. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "mcp.h"

/* A gap between two turns of the loop longer than this is a stall (its sleep is at most 1 s). */
#define STALL_MS 1500

struct mcp_worker mcp_w;

#define TAG_MHD 1
#define TAG_SHMB 2
#define TAG_SIG 3
#define TAG_CTL 4

static int epfd = -1;
static int kicked;           /* worker_kick(): MHD has resumed connections to process */
static int segment_replaced; /* worker_segment_replaced() was called: stop and be restarted */

void worker_segment_replaced(void)
{
	if (!segment_replaced)
		mcp_log("worker %d: the broker serves a new segment (sessions of the old one are "
			"gone); restarting this worker",
			mcp_w.index);
	segment_replaced = 1;
}

void worker_kick(void)
{
	kicked = 1;
}

/* The broker thread attached (ctl.c): the loop watches the client's fd from now on. */
void worker_attached(shmb_client *c)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = TAG_SHMB };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, shmb_fd(c), &ev) < 0)
		mcp_log("worker %d: epoll shmb_fd: %s (streams are woken by job steps and "
			"keepalives only)",
			mcp_w.index, strerror(errno));
	mcp_w.client = c;
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

int worker_main(int index, int listen_fd, struct job_slot *table)
{
	mcp_w.index = index;
	mcp_w.jobs = table;
	quota_worker_start(index);
	mcp_w.evbuf_len = (size_t)2 << 20;
	mcp_w.evbuf = malloc(mcp_w.evbuf_len);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_UNBLOCK, &chld, NULL);
	if (!mcp_w.evbuf || epfd < 0 || sfd < 0) {
		mcp_log("worker %d: start-up failed: %s", index, strerror(errno));
		return 1;
	}
	mcp_w.daemon = http_start(listen_fd);
	if (!mcp_w.daemon)
		return 1;
	const union MHD_DaemonInfo *di =
		MHD_get_daemon_info(mcp_w.daemon, MHD_DAEMON_INFO_EPOLL_FD);
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = TAG_MHD };
	if (!di || epoll_ctl(epfd, EPOLL_CTL_ADD, di->epoll_fd, &ev) < 0) {
		mcp_log("worker %d: MHD epoll fd: %s", index, strerror(errno));
		return 1;
	}
	ev = (struct epoll_event){ .events = EPOLLIN, .data.u32 = TAG_SIG };
	epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
	int cfd = ctl_start(); /* the broker thread: it attaches, then makes the control calls */
	ev = (struct epoll_event){ .events = EPOLLIN, .data.u32 = TAG_CTL };
	if (cfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev) < 0) {
		mcp_log("worker %d: broker thread: %s", index, strerror(errno));
		return 1;
	}
	/* Serve once attached, or after --broker-wait-ms without a broker (then with 503s): the
	 * connections that arrive meanwhile wait on this worker's socket, as they did behind the
	 * synchronous attach this replaces (a worker restarted after kill -9 must not answer its
	 * first requests 503 just because its thread had not attached yet). */
	for (int64_t until = mcp_now_ms() + mcp_ops.broker_wait_ms; !mcp_w.client;) {
		int64_t left = until - mcp_now_ms();
		struct pollfd p = { .fd = cfd, .events = POLLIN };
		if (left <= 0)
			break;
		if (poll(&p, 1, (int)left) > 0)
			ctl_drain();
	}

	int64_t stop_deadline = 0, last_turn = mcp_now_ms();
	for (;;) {
		int64_t now;
		/* The loop turns at least once a second (the sleep below): a longer gap means this
		 * process was stopped or starved, long enough for its sessions to move (failover.c). */
		now = mcp_now_ms();
		if (now - last_turn > STALL_MS)
			failover_stalled(now - last_turn);
		last_turn = now;
		/* MHD first: a request it serves may start a job, due at once; run before the
		 * jobs, that job's first step is taken (and counted in the sleep below) this turn
		 * instead of after a timer wait. What the jobs and the pump hand to resumed
		 * connections is written on the next turn: a resume wakes MHD's epoll fd. */
		MHD_run(mcp_w.daemon);
		now = mcp_now_ms();
		int64_t due = INT64_MAX;
		if (mcp_w.client && !mcp_w.stopping)
			due = jobs_tick(now);
		streams_pump();
		due = min64(due, streams_tick(now));
		due = min64(due, conn_tick(now));
		due = min64(due, ctl_tick(now));
		if (mcp_w.stopping && (streams_count() == 0 || now > stop_deadline))
			break;

		now = mcp_now_ms();
		MHD_UNSIGNED_LONG_LONG mt;
		int64_t wake = min64(due, now + 1000);
		if (MHD_get_timeout(mcp_w.daemon, &mt) == MHD_YES)
			wake = min64(wake, now + (int64_t)(mt > 1000 ? 1000 : mt));
		if (mcp_w.stopping)
			wake = min64(wake, now + 10);
		if (kicked)
			wake = now;
		kicked = 0;
		int timeout = wake <= now ? 0 : (int)(wake - now);
		if (mcp_w.client && timeout > 0) {
			int pw = shmb_prepare_wait(mcp_w.client);
			if (pw == 1)
				timeout = 0;
			else if (pw == SHMB_ESTALE)
				worker_segment_replaced();
		}
		if (segment_replaced && !mcp_w.stopping) {
			mcp_w.stopping = 1;
			stop_deadline = mcp_now_ms() + 2000;
			streams_end_all();
			ctl_end_all();
			timeout = 0;
		}
		struct epoll_event evs[8];
		int n = epoll_wait(epfd, evs, 8, timeout);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u32 == TAG_SHMB && mcp_w.client) {
				shmb_wait(mcp_w.client, 0);
			} else if (evs[i].data.u32 == TAG_CTL) {
				ctl_drain();
			} else if (evs[i].data.u32 == TAG_SIG) {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof si) == sizeof si) {
				}
				if (!mcp_w.stopping) {
					mcp_w.stopping = 1;
					stop_deadline = mcp_now_ms() + 2000;
					streams_end_all();
					ctl_end_all();
				}
			}
		}
	}
	streams_end_all();
	ctl_end_all();
	MHD_run(mcp_w.daemon);
	MHD_stop_daemon(mcp_w.daemon);
	jobs_fini();
	/* A thread stuck in a call to a hung broker still uses the client: leave both to the
	 * process's exit (the broker frees the worker slot when it sees the process gone). */
	if (ctl_stop() && mcp_w.client)
		shmb_detach(mcp_w.client);
	free(mcp_w.evbuf);
	close(sfd);
	close(epfd);
	return 0;
}
