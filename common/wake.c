/* wake.c - the waker's walk of the wakeup protocol (wake.h has the pairing; docs/events.md the
 * argument). Used by the client after each commit and by the broker after a gap or a session's
 * end: one walk, one place for the waker's barrier.
 *
 * Also the only place that writes or reads an eventfd of the worker set (wake_fd_write,
 * wake_fd_read): O_NONBLOCK belongs to the open file description, which every attached process
 * and the broker share, so any of them can clear it (fcntl F_SETFL) for all, and a blocking write
 * to a full counter, or a read of an empty one, would then hang the caller. A read asks the
 * kernel not to wait for this one call (preadv2 RWF_NOWAIT, which eventfds honour since Linux
 * 5.12), so it never blocks. A write has no such flag (pwritev2 RWF_NOWAIT is EOPNOTSUPP on an
 * eventfd), so it checks the description's flags first and sets O_NONBLOCK again when someone
 * cleared it; a full counter then gives EAGAIN, which is already a pending wakeup. What remains
 * is a deliberate race (another process clearing the flag between our F_GETFL and our write
 * while also filling the counter): the broker closes it with an interval timer around its
 * writes (broker/loop.c, brk_evfd_guard); a library cannot use signals, so for the client it
 * stays (docs/security.md). */
#include "wake.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

/* Process-wide: descriptions found blocking (atomic), and the hook told about each. */
static uint64_t fd_restores;
static uint32_t fd_told;
static void (*fd_warn)(int fd, uint64_t count);
/* 1 once preadv2(RWF_NOWAIT) was refused (a kernel older than 5.12): fall back to F_GETFL. */
static uint32_t no_nowait_read;

void wake_fd_set_warn(void (*warn)(int fd, uint64_t count))
{
	fd_warn = warn;
}

uint64_t wake_fd_restores(void)
{
	return uatomic_read(&fd_restores);
}

int wake_fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (fl & O_NONBLOCK)
		return 0;
	if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	uint64_t n = uatomic_add_return(&fd_restores, 1);
	if (fd_warn)
		fd_warn(fd, n);
	else if (!uatomic_xchg(&fd_told, 1))
		fprintf(stderr,
			"libshmb: eventfd %d of the worker set was blocking (another attached "
			"process cleared O_NONBLOCK on it); set nonblocking again\n",
			fd);
	return 1;
}

int wake_fd_write(int fd)
{
	/* A failed F_GETFL (EBADF) shows in the write's own errno. */
	(void)wake_fd_nonblock(fd);
	/* Test-only: stops here, where a racing process could clear the flag again (the broker's
	 * guard must then end the write: tests/test_evfd.c). */
	SHMB_FAULT("wake.fd.write");
	uint64_t one = 1;
	if (write(fd, &one, sizeof one) == (ssize_t)sizeof one)
		return 0;
	return errno == EAGAIN ? 1 : -errno;
}

int wake_fd_read(int fd, uint64_t *v)
{
	struct iovec io = { .iov_base = v, .iov_len = sizeof *v };
	if (!uatomic_read(&no_nowait_read)) {
		ssize_t n = preadv2(fd, &io, 1, -1, RWF_NOWAIT);
		if (n == (ssize_t)sizeof *v)
			return 1;
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n >= 0 || (errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS))
			return n < 0 ? -errno : -EIO;
		uatomic_set(&no_nowait_read, 1);
	}
	(void)wake_fd_nonblock(fd);
	ssize_t n = read(fd, v, sizeof *v);
	if (n == (ssize_t)sizeof *v)
		return 1;
	return n < 0 && errno == EAGAIN ? 0 : n < 0 ? -errno : -EIO;
}

int wake_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = (time_t)(timeout_ns / 1000000000);
		ts.tv_nsec = (long)(timeout_ns % 1000000000);
		tsp = &ts;
	}
	/* Shared, not FUTEX_PRIVATE_FLAG: the word is in a mapping other processes wake on. */
	if (syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, NULL, 0) == 0)
		return 0;
	return errno == EAGAIN ? 0 : -errno;
}

void wake_futex_wake(uint32_t *word)
{
	(void)syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void wake_all_waiters(const struct shmb_seg *seg)
{
	cmm_smp_mb(); /* the retired mark before the loads of waiters: see wake.h */
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		struct shmb_session_rec *r = seg_rec(seg, idx);
		if (!r || !uatomic_read(&r->waiters))
			continue;
		uatomic_add(&r->wake_seq, 1);
		wake_futex_wake(&r->wake_seq);
	}
}

void wake_mark_all_subscribed(const struct shmb_seg *seg)
{
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		struct shmb_session_rec *r = seg_rec(seg, idx);
		for (uint32_t word = 0; r && word < SHMB_SUB_WORDS; word++) {
			uint64_t bits = uatomic_read(&r->subscribers[word]);
			while (bits) {
				uint32_t w = word * 64 + (uint32_t)__builtin_ctzll(bits);
				bits &= bits - 1;
				wake_ready_mark(seg, w, idx); /* out-of-range w: nothing */
			}
		}
	}
}

struct wake_stats wake_after_commit(const struct shmb_seg *seg, struct shmb_session_rec *r,
				    const int *evfds, uint32_t n_evfds, uint64_t *sent)
{
	struct wake_stats st = { 0 };
	SHMB_FAULT("wake.walk"); /* committed, nobody woken or marked yet (tests/test_ready.c) */
	/* The caller's commit exchange is the full barrier: the loads below are ordered after it
	 * (pairs with wake_arm's fence, and with the RMW of a per-thread waiter's increment of
	 * waiters, which precedes its re-check: client/waits.c). Without waiters this is one load:
	 * no syscall. With waiters: wake_seq first, so a waiter that read the old value before
	 * counting itself finds it changed and does not sleep (FUTEX_WAIT compares it under the
	 * kernel's lock), then the wake for those already asleep. */
	if (caa_unlikely(uatomic_read(&r->waiters) != 0)) {
		uatomic_add(&r->wake_seq, 1);
		wake_futex_wake(&r->wake_seq);
	}
	for (uint32_t word = 0; word < SHMB_SUB_WORDS; word++) {
		uint64_t bits = uatomic_read(&r->subscribers[word]);
		uint32_t idx = bits ? seg_rec_index(seg, r) : 0;
		while (bits) {
			uint32_t w = word * 64 + (uint32_t)__builtin_ctzll(bits);
			bits &= bits - 1;
			/* The news in w's ready bitmaps before its armed flag: a worker woken
			 * below finds the bit when it calls shmb_ready. The marks' RMWs are full
			 * barriers; the waiter's side is wake_arm's fence before its look at l2
			 * (client/wakeup.c, recheck). */
			wake_ready_mark(seg, w, idx);
			struct shmb_worker *wk = seg_worker(seg, w);
			if (!wk || w >= n_evfds || evfds[w] < 0)
				continue; /* left armed for a waker that knows its eventfd */
			/* A plain load first: no cache-line write while the worker is busy. The
			 * exchange lets one waker per sleep write (no storms). */
			if (!uatomic_read(&wk->armed) || uatomic_xchg(&wk->armed, 0) != 1)
				continue;
			/* Never blocks (wake_fd_write): a full counter is already a wakeup. */
			int rc = wake_fd_write(evfds[w]);
			if (rc == 0) {
				st.written++;
				if (sent)
					uatomic_inc(sent);
			} else if (rc < 0 && st.failed++ == 0) {
				st.failed_worker = w;
				st.failed_errno = -rc;
			}
		}
	}
	return st;
}

struct wake_stats wake_after_store(const struct shmb_seg *seg, struct shmb_session_rec *r,
				   const int *evfds, uint32_t n_evfds, uint64_t *sent)
{
	/* The news was stored plainly: this full fence orders it before the walk's loads of the
	 * subscriber bits and armed (pairs with wake_arm's fence). */
	cmm_smp_mb();
	return wake_after_commit(seg, r, evfds, n_evfds, sent);
}
