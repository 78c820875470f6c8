/* loop.c - the broker's single-threaded event loop.
 *
 * One epoll set holds the listening socket, every connection, every worker's pidfd, a signalfd
 * (SIGTERM, SIGINT: clean stop; SIGHUP: reload, reload.c) and a timerfd. The timer ticks every
 * BRK_TICK_FAST_MS while records await reclamation or a dead publisher's claim awaits its gap
 * records, otherwise every BRK_TICK_SLOW_MS (or the sweep interval if shorter); each tick
 * refreshes the header heartbeat, polls workers without a pidfd, runs the reclaimer and, when
 * due, the sweeper. After each batch of events it writes every worker's eventfd once if a refresh
 * read in the batch asked for it (requests.c, wake_all). Being one thread, the broker needs no
 * locks for its own state; every handler returns quickly (sockets are nonblocking, reclamation
 * never waits). An epoll event carries (kind << 32 | index), and each handler re-checks that
 * its object still exists, since a handler earlier in the same batch may have closed it.
 *
 * The one signal the broker takes with a handler, not the signalfd: SIGALRM, from an interval
 * timer armed only around its eventfd writes and reads (brk_evfd_guard). The eventfds' open file
 * descriptions are shared with every attached process, any of which can clear O_NONBLOCK on
 * one and fill its counter; common/wake.c sets the flag again before each write, but a process
 * racing that check could still make one write block. The handler is installed without
 * SA_RESTART, so a write blocked past one timer period returns EINTR (eventfd_write sleeps
 * interruptibly) and the walk goes on. The timer repeats, so a signal that lands just before the
 * write (and is spent) is followed by another within a period; disarming it after the walk
 * delivers any pending SIGALRM on that syscall's return, to the empty handler. Inside the guard
 * the broker makes only fcntl, eventfd read and write calls, and at most a warning's log line
 * (brk_log retries a write interrupted by EINTR): nothing else there can see an EINTR. A normal
 * walk takes microseconds and never sees the timer fire. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "broker.h"
#include "clock.h"
#include "wake.h"

/* How long one blocked eventfd write can hold the broker up (the timer's period). */
#define BRK_EVFD_GUARD_MS 20

static void on_sigalrm(int sig)
{
	(void)sig; /* only to interrupt a blocked eventfd write (no SA_RESTART) */
}

/* Logs a description found blocking: the first time and at every power of two, so a process
 * clearing the flag in a loop cannot flood the log. */
static void evfd_warn(int fd, uint64_t count)
{
	if ((count & (count - 1)) == 0)
		brk_warn("an eventfd of the worker set (fd %d) was blocking: an attached "
			 "process cleared O_NONBLOCK on it; set nonblocking again (%llu time%s)",
			 fd, (unsigned long long)count, count == 1 ? "" : "s");
}

int brk_evfd_guard(int on)
{
	static int ready;
	if (!ready) {
		struct sigaction sa = { .sa_handler = on_sigalrm, .sa_flags = 0 };
		sigset_t m;
		sigemptyset(&sa.sa_mask);
		sigemptyset(&m);
		sigaddset(&m, SIGALRM);
		/* Unblocked (a parent may have blocked it), handled before any timer is armed. */
		if (sigaction(SIGALRM, &sa, NULL) < 0 || sigprocmask(SIG_UNBLOCK, &m, NULL) < 0)
			return -1;
		wake_fd_set_warn(evfd_warn);
		ready = 1;
	}
	struct itimerval it = { 0 };
	if (on) {
		it.it_value.tv_usec = BRK_EVFD_GUARD_MS * 1000;
		it.it_interval.tv_usec = BRK_EVFD_GUARD_MS * 1000;
	}
	return setitimer(ITIMER_REAL, &it, NULL);
}

#define MAX_EVENTS 64

int brk_epoll_add(struct brk *b, int fd, uint32_t kind, uint32_t idx, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.u64 = ((uint64_t)kind << 32) | idx };
	return epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev);
}

void brk_epoll_del(struct brk *b, int fd)
{
	epoll_ctl(b->epfd, EPOLL_CTL_DEL, fd, NULL);
}

void brk_timer_update(struct brk *b)
{
	if (b->timer_fd < 0)
		return;
	int period = BRK_TICK_SLOW_MS;
	if (b->seg.base && b->seg.cfg.sweep_interval_ms < (uint32_t)period)
		period = (int)b->seg.cfg.sweep_interval_ms;
	if (b->n_pending || b->n_claims || b->n_ownerless)
		period = BRK_TICK_FAST_MS;
	if (period < 1)
		period = 1;
	if (period == b->timer_period_ms)
		return;
	struct itimerspec its = {
		.it_interval = { .tv_sec = period / 1000,
				 .tv_nsec = (long)(period % 1000) * 1000000 },
		.it_value = { .tv_sec = period / 1000, .tv_nsec = (long)(period % 1000) * 1000000 },
	};
	if (timerfd_settime(b->timer_fd, 0, &its, NULL) == 0)
		b->timer_period_ms = period;
}

int brk_loop_init(struct brk *b)
{
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (b->epfd < 0) {
		brk_fatal("epoll_create1: %s", strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	/* SIGALRM's handler and the eventfd warning hook, before any eventfd is touched. */
	if (brk_evfd_guard(0) < 0) {
		brk_fatal("SIGALRM handler: %s", strerror(errno));
		return 1;
	}
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
	    (b->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 ||
	    brk_epoll_add(b, b->sig_fd, BRK_EV_SIGNAL, 0, EPOLLIN) < 0) {
		brk_fatal("signalfd: %s", strerror(errno));
		return 1;
	}
	b->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (b->timer_fd < 0 || brk_epoll_add(b, b->timer_fd, BRK_EV_TIMER, 0, EPOLLIN) < 0) {
		brk_fatal("timerfd: %s", strerror(errno));
		return 1;
	}
	b->timer_period_ms = 0;
	return 0;
}

static void on_signal(struct brk *b)
{
	struct signalfd_siginfo si;
	while (read(b->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGHUP) {
			brk_log("SIGHUP from pid %u: reloading the configuration",
				(unsigned)si.ssi_pid);
			char why[256];
			brk_reload(b, NULL, why, sizeof why);
			continue;
		}
		brk_log("stopping on %s from pid %u", strsignal((int)si.ssi_signo),
			(unsigned)si.ssi_pid);
		b->stop = 1;
	}
}

static void on_tick(struct brk *b)
{
	uint64_t expirations;
	if (read(b->timer_fd, &expirations, sizeof expirations) < 0 && errno == EAGAIN)
		return;
	brk_heartbeat(b);
	brk_notify_watchdog(); /* the loop turns: systemd's WatchdogSec= (notify.c) */
	brk_log_flush();
	brk_control_resume_accept(b);
	brk_control_expire(b);
	brk_workers_poll(b);
	if (b->n_claims)
		brk_gaps_run(b);
	brk_gaps_ownerless_run(b);
	brk_reclaim_run(b, 0);
	brk_stall_run(b);
	int64_t now = shmb_mono_ms();
	if (now >= b->next_sweep_mono) {
		brk_sweep_run(b);
		b->next_sweep_mono = now + b->seg.cfg.sweep_interval_ms;
	}
}

int brk_loop_run(struct brk *b)
{
	struct epoll_event evs[MAX_EVENTS];
	b->next_sweep_mono = shmb_mono_ms() + b->seg.cfg.sweep_interval_ms;
	brk_timer_update(b);
	while (!b->stop) {
		int n = epoll_wait(b->epfd, evs, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			brk_err("epoll_wait: %s", strerror(errno));
			return 1;
		}
		for (int i = 0; i < n && !b->stop; i++) {
			uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32);
			uint32_t idx = (uint32_t)evs[i].data.u64;
			switch (kind) {
			case BRK_EV_LISTEN:
				brk_control_accept(b);
				break;
			case BRK_EV_SIGNAL:
				on_signal(b);
				break;
			case BRK_EV_TIMER:
				on_tick(b);
				break;
			case BRK_EV_CONN:
				brk_control_readable(b, idx, evs[i].events);
				break;
			case BRK_EV_PIDFD:
				brk_worker_pidfd_event(b, idx);
				break;
			}
		}
		if (b->wake_all_pending) {
			/* Asked for by refreshes read in this batch (requests.c): once for all. */
			b->wake_all_pending = 0;
			brk_workers_wake_all(b);
		}
	}
	return 0;
}
