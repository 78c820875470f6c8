/* workers.c - the worker registry: admission, death through the kernel, and settling what a
 * worker held.
 *
 * A worker slot's identity (state, pid, starttime, gen, uid, gid) is written by the broker only;
 * the worker writes its ledger, stats, armed flag and reader slots. Admission fills the identity
 * and release-stores LIVE. Death is noticed through a pidfd (SO_PEERPIDFD, else pidfd_open of the
 * peer's pid; slots without one are polled with proc_alive on every tick). A slot is released
 * only when its process is dead or when the worker itself asked: shmb_detach() sends "detach" and
 * closes, and that EOF settles the slot as a release. An EOF or a failed reply from a process
 * that is still running and did not say "detach" is not a release (a client whose call timed out
 * on a stalled broker closes its connection and resumes later): the slot is only unbound from the
 * connection, stays LIVE and pidfd-watched, and the process's next hello resumes it -- unless the
 * process no longer maps the segment (it exec()ed, or its detach was lost): then nothing of it
 * can use the slot, and the EOF releases it (maps_segment). A killed process's sockets close
 * inside do_exit(), a moment before its pidfd reports the exit; the task is flagged PF_EXITING by
 * then, so EOF from an exiting (or vanished) process counts as a death.
 * At most one slot per process: a resume takes the slot over from an older connection of the same
 * process; a fresh hello from a process that holds a slot is refused while that slot is bound to
 * an open connection or the process still maps the segment (another client of it, e.g. a second
 * copy of libshmb, uses the slot); only a process that no longer maps it gets a new slot.
 *
 * Settling (the process is gone or detached, so nothing else writes the slot): state DEAD (an
 * interrupted settle is finished by the next broker's adoption), every reader slot cleared (which
 * unblocks the reclaimer), the worker's bit cleared in every record's subscriber set (a LIVE
 * record touched first: its inactivity window restarts when the subscription ends), its
 * publish/wakeup counts folded into the *_RETIRED counters, then state FREE (release) -- unless
 * a crash-ledger entry still holds an uncommitted claim. Then the slot stays DEAD, not reusable,
 * with the entries in place, until gaps.c has turned the claims into gap records (an older lap
 * still being written can delay that); gaps.c clears the entries and frees the slot. The
 * segment, not the broker's memory, holds what is left to settle, so a broker killed meanwhile
 * loses nothing: adoption settles DEAD slots again. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "proc.h"
#include "shmb.h"
#include "wake.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

int brk_workers_init(struct brk *b)
{
	uint32_t n = b->seg.cfg.max_workers;
	b->evfds = malloc((size_t)n * sizeof *b->evfds);
	b->wslots = calloc(n, sizeof *b->wslots);
	if (!b->evfds || !b->wslots) {
		brk_fatal("out of memory for %u worker slots", n);
		return -1;
	}
	for (uint32_t w = 0; w < n; w++) {
		b->wslots[w] = (struct brk_wslot){ .pidfd = -1, .conn = -1, .displaced = -1 };
		b->evfds[w] = -1;
	}
	for (uint32_t w = 0; w < n; w++) {
		b->evfds[w] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (b->evfds[w] < 0) {
			brk_fatal(
				"cannot create eventfd %u of %u: %s (raise the open-files limit or "
				"lower max_workers)",
				w, n, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Empties fd's counter. Never blocks, whatever an attached process did to the description's
 * flags (wake_fd_read; the guard covers its fallback read on kernels without RWF_NOWAIT). One
 * read takes the whole count; the bound stops a process that keeps writing. */
static void drain_eventfd(int fd)
{
	uint64_t v;
	brk_evfd_guard(1);
	for (int i = 0; i < 4 && wake_fd_read(fd, &v) > 0; i++)
		;
	brk_evfd_guard(0);
}

static int pidfd_fired(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

static void unwatch(struct brk *b, uint32_t w)
{
	struct brk_wslot *ws = &b->wslots[w];
	if (ws->pidfd >= 0) {
		brk_epoll_del(b, ws->pidfd);
		close(ws->pidfd);
		ws->pidfd = -1;
	}
}

/* Watches pid (already proven alive at starttime) with pidfd, or a new pidfd_open when -1. */
static void watch(struct brk *b, uint32_t w, int pidfd)
{
	struct brk_wslot *ws = &b->wslots[w];
	if (pidfd < 0)
		pidfd = proc_pidfd_open(ws->pid);
	if (pidfd >= 0 && brk_epoll_add(b, pidfd, BRK_EV_PIDFD, w, EPOLLIN) < 0) {
		close(pidfd);
		pidfd = -1;
	}
	if (pidfd < 0)
		brk_warn("no pidfd for worker %u (pid %d): %s; polling it instead", w, (int)ws->pid,
			 strerror(errno));
	ws->pidfd = pidfd;
}

/* Clears worker w's bit in r's subscriber set; 1 if it was set. A subscription is activity while
 * it lasts (as in shmb_unsubscribe): a LIVE record is touched first, so its inactivity window
 * restarts now instead of the session expiring at once for having been idle while subscribed.
 * The broker's own lists give the record, so it is the current generation; a RETIRED one (the
 * reclamation queue) is not touched. */
static int clear_sub(struct shmb_session_rec *r, uint32_t w, int64_t now)
{
	uint32_t word = w / 64;
	uint64_t bit = UINT64_C(1) << (w % 64);
	if (!r || !(uatomic_read(&r->subscribers[word]) & bit))
		return 0;
	if (uatomic_read(&r->state) == SHMB_REC_LIVE && uatomic_read(&r->last_accessed_at_ms) < now)
		uatomic_set(&r->last_accessed_at_ms, now);
	/* The touch before the bit goes (common/wake.h, the one way a subscription ends). */
	wake_sub_clear(r, w);
	return 1;
}

/* A dead thread's WAIT entry (2.0, client/waits.c): it was counted in the waiters of record
 * (idx, gen) and had not uncounted itself (it clears the entry before the decrement, and wrote
 * it after the increment). Takes that count off if the record still has that generation (a
 * recycle reset it otherwise; the broker is the only recycler, so no recycle runs meanwhile),
 * never below 0, and clears the entry. Returns 1 if a count was taken off. */
static uint32_t settle_wait(const struct shmb_seg *seg, struct shmb_ledger_entry *le)
{
	uint32_t idx = uatomic_read(&le->session_idx), gen = uatomic_read(&le->session_gen);
	/* The entry first: a broker killed between the two leaves the count one too high (the
	 * adoption's settle finds no entry), never taken off twice. */
	uatomic_set(&le->kind, SHMB_LEDGER_FREE);
	cmm_smp_mb();
	struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!r || uatomic_read(&r->gen) != gen || uatomic_read(&r->state) == SHMB_REC_FREE ||
	    uatomic_read(&r->waiters) == 0)
		return 0;
	wake_waiters_dec(r);
	return 1;
}

void brk_worker_settle(struct brk *b, uint32_t w, int died)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_worker *wk = seg_worker(seg, w);
	struct brk_wslot *ws = &b->wslots[w];
	if (!wk)
		return;
	/* DEAD first: a broker killed during the settle finishes it at adoption. A slot already
	 * DEAD is being settled again (adoption): its death was counted then. */
	int again = uatomic_read(&wk->state) == SHMB_WORKER_DEAD;
	uatomic_set(&wk->state, SHMB_WORKER_DEAD);
	cmm_smp_mb();

	uint32_t readers = 0, subs = 0, claims = 0, waits = 0;
	for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
		struct shmb_reader *r = seg_reader(seg, w, k);
		uint32_t kind = uatomic_read(&r->ledger.kind);
		if (kind == SHMB_LEDGER_CLAIM || kind == SHMB_LEDGER_ATTR) {
			claims++; /* left in place for gaps.c, which clears it once settled */
		} else if (kind == SHMB_LEDGER_WAIT) {
			waits += settle_wait(seg, &r->ledger);
		} else if (kind != SHMB_LEDGER_FREE) {
			brk_warn("worker %u reader slot %u: unknown ledger kind %u, cleared", w, k,
				 kind);
			uatomic_set(&r->ledger.kind, SHMB_LEDGER_FREE);
		}
		if (uatomic_read(&r->ctr) || uatomic_read(&r->in_use))
			readers++;
		/* Quiescent: the reclaimer's slot scan (reclaim.c readers_min) may now pass it.
		 * The owner is gone, so no store of its can follow. */
		uatomic_set(&r->ctr, 0);
		uatomic_set(&r->in_use, 0);
		uatomic_set(&r->tid, 0);
	}
	/* Subscriber bits: a worker subscribes LIVE records only, and a retired record's bits
	 * are cleared when it is recycled; so the live list and the reclamation queue cover
	 * every record that can hold our bit. */
	int64_t now = shmb_now_ms(); /* the clock of create's and the client's touch */
	for (uint32_t i = 0; i < b->live + b->n_pending; i++) {
		uint32_t idx = i < b->live ? b->live_list[i] : b->pending[i - b->live];
		if (clear_sub(seg_rec(seg, idx), w, now))
			subs++;
	}
	uint64_t published = seg_worker_stats(seg, w).events_published;
	brk_ctr_add(b, SHMB_CTR_EVENTS_PUBLISHED_RETIRED, published);
	brk_ctr_add(b, SHMB_CTR_WAKEUPS_RETIRED, uatomic_read(&wk->wakeups_sent));
	seg_worker_stats_clear(seg, w);
	uatomic_set(&wk->wakeups_sent, 0);
	uatomic_set(&wk->lookups, 0);
	uatomic_set(&wk->wakeups_received, 0);
	uatomic_set(&wk->armed, 0);
	/* Its subscriber bits are gone: no waker marks for it any more, except one that read a
	 * bit before it was cleared (the next owner's shmb_ready drops such marks; admission
	 * zeroes the bitmaps again). */
	wake_ready_clear(seg, w);
	drain_eventfd(b->evfds[w]);
	if (died && !again)
		brk_ctr_add(b, SHMB_CTR_WORKERS_DIED, 1);

	pid_t pid = ws->pid ? ws->pid : uatomic_read(&wk->pid);
	if (died || readers || subs || claims || waits)
		brk_log("worker %u (pid %d) %s: cleared %u reader slot%s, %u subscription%s, "
			"%u uncommitted claim%s, %u waiting thread%s",
			w, (int)pid, died ? "died" : "detached", readers, readers == 1 ? "" : "s",
			subs, subs == 1 ? "" : "s", claims, claims == 1 ? "" : "s", waits,
			waits == 1 ? "" : "s");
	else
		brk_log("worker %u (pid %d) detached", w, (int)pid);

	if (claims) {
		/* Stays DEAD until gaps.c has settled every claim (brk_gaps_run below, or a
		 * later tick); only then is the slot freed. */
		b->n_claims += claims - ws->claims;
		ws->claims = claims;
		brk_timer_update(b);
	} else {
		/* Everything above before FREE: pairs with admission's reuse of the slot and
		 * with shmctl reading state before the rest. */
		cmm_smp_wmb();
		uatomic_set(&wk->state, SHMB_WORKER_FREE);
	}

	unwatch(b, w);
	int32_t conn = ws->conn;
	ws->conn = -1;
	ws->displaced = -1;
	ws->pid = 0;
	ws->starttime = 0;
	if (conn >= 0) {
		b->conns[conn].worker = -1;
		brk_control_drop(b, (uint32_t)conn, 0);
	}
	if (claims)
		brk_gaps_run(b); /* settles what it can now; the timer runs fast for the rest */
}

/* A kept worker sleeps on the eventfd the previous broker gave it, and every other process
 * wakes it through that same object: take it back (pidfd_getfd, which needs ptrace access to
 * the worker, i.e. the same uid or root) instead of the fresh one, so nothing changes for the
 * worker. Other slots get new eventfds; the bump of evfd_gen in brk_workers_adopt tells attached
 * processes to fetch the set again. */
static void adopt_eventfd(struct brk *b, uint32_t w)
{
	struct shmb_worker *wk = seg_worker(&b->seg, w);
	int num = uatomic_read(&wk->evfd_num);
	int pidfd = b->wslots[w].pidfd;
	if (num < 0 || pidfd < 0) {
		brk_warn("worker %u: no eventfd to take back; it is woken again once it "
			 "reconnects",
			 w);
		return;
	}
	int fd = (int)syscall(SYS_pidfd_getfd, pidfd, num, 0);
	char link[64] = "";
	if (fd >= 0) {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, link, sizeof link - 1);
		link[n > 0 ? n : 0] = '\0';
	}
	if (fd < 0 || strcmp(link, "anon_inode:[eventfd]") != 0) {
		brk_warn("worker %u: cannot take back its eventfd (%s); it is woken again "
			 "once it reconnects",
			 w, fd < 0 ? strerror(errno) : "fd is not an eventfd");
		if (fd >= 0)
			close(fd);
		return;
	}
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	/* The worker's description, whose flags any attached process may have changed: every
	 * write or read checks them again (common/wake.c), this puts them right at once. */
	int nb = wake_fd_nonblock(fd);
	if (nb < 0)
		brk_warn("worker %u: cannot make its eventfd nonblocking: %s", w, strerror(-nb));
	close(b->evfds[w]);
	b->evfds[w] = fd;
}

void brk_workers_adopt(struct brk *b, uint32_t *kept, uint32_t *settled)
{
	const struct shmb_seg *seg = &b->seg;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		struct shmb_worker *wk = seg_worker(seg, w);
		struct brk_wslot *ws = &b->wslots[w];
		uint32_t st = uatomic_read(&wk->state);
		if (st == SHMB_WORKER_FREE) {
			/* Nobody owns these reader slots; a leftover ctr would stall reclamation. */
			for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
				struct shmb_reader *r = seg_reader(seg, w, k);
				if (uatomic_read(&r->ctr) || uatomic_read(&r->in_use)) {
					uatomic_set(&r->ctr, 0);
					uatomic_set(&r->in_use, 0);
				}
			}
			continue;
		}
		ws->pid = uatomic_read(&wk->pid);
		ws->starttime = uatomic_read(&wk->starttime);
		if (st == SHMB_WORKER_LIVE && proc_alive(ws->pid, ws->starttime)) {
			watch(b, w, -1);
			/* The pidfd pins the process: re-check that it is still the same one. */
			if (proc_alive(ws->pid, ws->starttime)) {
				brk_log("worker %u (pid %d) kept: still running on its mapping", w,
					(int)ws->pid);
				adopt_eventfd(b, w);
				(*kept)++;
				continue;
			}
		}
		/* Dead, a reused pid, or a settle (DEAD) that was interrupted: finish it. A DEAD
		 * slot of a live process had detached, so settling it is right either way. */
		brk_worker_settle(b, w, !proc_alive(ws->pid, ws->starttime));
		(*settled)++;
	}
	/* New eventfd objects for the slots not taken back: attached processes must fetch the
	 * set again before they wake anyone (client/attach.c, shmbi_sync_eventfds). */
	struct shmb_seg_header *h = seg_hdr(seg);
	uatomic_set(&h->evfd_gen, uatomic_read(&h->evfd_gen) + 1);
}

/* The slot process (pid, starttime) holds (LIVE, or being admitted), or -1. */
static int64_t slot_of(const struct brk *b, pid_t pid, uint64_t starttime)
{
	for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++)
		if (b->wslots[w].pid == pid && b->wslots[w].starttime == starttime &&
		    uatomic_read(&seg_worker(&b->seg, w)->state) != SHMB_WORKER_DEAD)
			return w;
	return -1;
}

static int maps_segment(const struct brk *b, pid_t pid);

static int peer_pidfd(int sock)
{
	int fd = -1;
	socklen_t len = sizeof fd;
	if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &fd, &len) < 0 || len != sizeof fd)
		return -1;
	return fd;
}

int brk_worker_admit(struct brk *b, int conn, int has_resume, uint32_t resume_slot,
		     uint32_t resume_gen, int *resumed, char *why, size_t whylen)
{
	const struct shmb_seg *seg = &b->seg;
	struct brk_conn *c = &b->conns[conn];
	uint64_t starttime = proc_starttime(c->pid);
	if (starttime == 0 || !proc_alive(c->pid, starttime)) {
		snprintf(why, whylen, "cannot read the start time of pid %d", (int)c->pid);
		return SHMB_EINVAL;
	}
	*resumed = 0;
	int64_t slot = -1;
	int64_t held = slot_of(b, c->pid, starttime);
	if (held >= 0 && b->wslots[held].conn >= 0 && b->wslots[held].conn != conn) {
		/* What the process sent on its older connection comes first: shmb_detach() sends
		 * "detach" and closes, then a new attach may arrive on another connection before we
		 * read that. */
		brk_control_readable(b, (uint32_t)b->wslots[held].conn, 0);
		held = slot_of(b, c->pid, starttime);
	}
	if (has_resume) {
		struct shmb_worker *wk =
			resume_slot < seg->cfg.max_workers ? seg_worker(seg, resume_slot) : NULL;
		if (held < 0 || (uint32_t)held != resume_slot || !wk ||
		    uatomic_read(&wk->state) != SHMB_WORKER_LIVE ||
		    uatomic_read(&wk->gen) != resume_gen) {
			snprintf(why, whylen,
				 "cannot resume worker slot %u at gen %u: pid %d does not hold it "
				 "(its slot was released)",
				 resume_slot, resume_gen, (int)c->pid);
			return SHMB_ENOENT;
		}
		struct brk_wslot *ws = &b->wslots[held];
		ws->displaced = -1;
		if (ws->conn >= 0 && ws->conn != conn) {
			/* A resume is idempotent: this connection of the same process takes the
			 * slot over; the other one (a call that timed out) is unbound only. */
			brk_log("worker %u (pid %d): a resume on another connection takes it over",
				resume_slot, (int)c->pid);
			b->conns[ws->conn].worker = -1;
			ws->displaced = ws->conn;
			ws->conn = -1;
		}
		slot = held;
		*resumed = 1;
	} else if (held >= 0) {
		struct brk_wslot *ws = &b->wslots[held];
		if (ws->conn >= 0) {
			brk_ctr_add(b, SHMB_CTR_WORKERS_REFUSED, 1);
			snprintf(why, whylen,
				 "pid %d already holds worker slot %u on another connection (one "
				 "slot per process: resume it, or detach first)",
				 (int)c->pid, (uint32_t)held);
			return SHMB_ENOWORKER;
		}
		/* Its slot has no connection (a broker restart, a timed-out call). The client that
		 * held it may be gone without a detach reaching us -- then the process no longer
		 * maps the segment (shmb_detach unmaps first) and this hello releases the slot --
		 * or still be running in the process (another, independent copy of libshmb: two
		 * static copies, RTLD_DEEPBIND), which would lose its slot under it: refused. */
		if (maps_segment(b, c->pid) != 0) {
			brk_ctr_add(b, SHMB_CTR_WORKERS_REFUSED, 1);
			snprintf(why, whylen,
				 "pid %d already holds worker slot %u (another client in this "
				 "process still maps the segment: one slot per process, so two "
				 "independent copies of libshmb cannot both attach)",
				 (int)c->pid, (uint32_t)held);
			return SHMB_ENOWORKER;
		}
		brk_log("worker %u (pid %d): its process attaches afresh and no longer maps the "
			"segment; the old slot is released",
			(uint32_t)held, (int)c->pid);
		brk_worker_settle(b, (uint32_t)held, 0);
	}
	for (uint32_t w = 0; slot < 0 && w < seg->cfg.max_workers; w++) {
		struct brk_wslot *ws = &b->wslots[w];
		if (uatomic_read(&seg_worker(seg, w)->state) == SHMB_WORKER_FREE && ws->conn < 0 &&
		    ws->pidfd < 0 && ws->pid == 0)
			slot = w;
	}
	if (slot < 0) {
		brk_ctr_add(b, SHMB_CTR_WORKERS_REFUSED, 1);
		snprintf(why, whylen, "all %u worker slots are in use", seg->cfg.max_workers);
		return SHMB_ENOWORKER;
	}
	uint32_t w = (uint32_t)slot;
	struct shmb_worker *wk = seg_worker(seg, w);
	struct brk_wslot *ws = &b->wslots[w];
	if (!*resumed) {
		drain_eventfd(b->evfds[w]);
		ws->pid = c->pid;
		ws->starttime = starttime;
		uatomic_set(&wk->pid, (int32_t)c->pid);
		uatomic_set(&wk->starttime, starttime);
		uatomic_set(&wk->uid, (uint32_t)c->uid);
		uatomic_set(&wk->gid, (uint32_t)c->gid);
		uatomic_set(&wk->attached_at_ms, shmb_now_ms());
		uatomic_set(&wk->armed, 0);
		wake_ready_clear(seg, w); /* no news of a previous owner (a resume keeps them) */
		seg_worker_stats_clear(seg, w);
		uatomic_set(&wk->wakeups_sent, 0);
		uatomic_set(&wk->lookups, 0);
		uatomic_set(&wk->wakeups_received, 0);
		uatomic_set(&wk->req_id, 0); /* the previous owner's last request is not ours */
	}
	if (ws->pidfd < 0) {
		int pidfd = peer_pidfd(c->fd);
		watch(b, w, pidfd);
	}
	/* A resume keeps its generation: were we killed before our reply, the worker's next
	 * resume must still match. A new admission stays FREE in the segment until its reply is
	 * sent (brk_worker_admitted), so a broker killed before that leaves no phantom LIVE slot
	 * for a process that never learnt it had one; the worker waits for LIVE before using it. */
	if (!*resumed)
		uatomic_set(&wk->gen, uatomic_read(&wk->gen) + 1);
	ws->conn = conn;
	c->worker = (int32_t)w;
	brk_ctr_add(b, SHMB_CTR_WORKERS_ADMITTED, 1);
	brk_log("worker %u (pid %d, uid %u) %s, gen %u", w, (int)c->pid, (unsigned)c->uid,
		*resumed ? "resumed its slot" : "attached", uatomic_read(&wk->gen));
	return (int)w;
}

void brk_worker_admitted(struct brk *b, uint32_t w)
{
	struct shmb_worker *wk = seg_worker(&b->seg, w);
	if (!wk || uatomic_read(&wk->state) == SHMB_WORKER_LIVE)
		return;
	/* Identity before LIVE: pairs with readers (shmctl, the worker awaiting its admission)
	 * that check state first. */
	cmm_smp_wmb();
	uatomic_set(&wk->state, SHMB_WORKER_LIVE);
}

void brk_worker_resume_failed(struct brk *b, uint32_t w)
{
	struct brk_wslot *ws = &b->wslots[w];
	int32_t d = ws->displaced;
	ws->displaced = -1;
	/* The connections of the same process are read in no particular order: a resume its
	 * client abandoned (timed out, closed) may be read after the one it made next. */
	if (d < 0 || ws->conn >= 0 || !ws->pid || b->conns[d].fd < 0 || b->conns[d].closing_at ||
	    b->conns[d].worker >= 0 || b->conns[d].pid != ws->pid)
		return;
	ws->conn = d;
	b->conns[d].worker = (int32_t)w;
	brk_log("worker %u (pid %d): back on its other connection", w, (int)ws->pid);
}

void brk_worker_pidfd_event(struct brk *b, uint32_t w)
{
	if (w >= b->seg.cfg.max_workers)
		return;
	struct brk_wslot *ws = &b->wslots[w];
	/* Guard against a stale event for a pidfd closed earlier in the same epoll batch. */
	if (ws->pidfd < 0 || !pidfd_fired(ws->pidfd))
		return;
	/* The exit may be seen before what the worker sent last: read that first. A "detach"
	 * followed by EOF settles the slot as released (brk_worker_conn_closed). */
	if (ws->conn >= 0) {
		brk_control_readable(b, (uint32_t)ws->conn, 0);
		if (ws->pid == 0)
			return; /* settled by the EOF */
	}
	int detached = ws->conn >= 0 && b->conns[ws->conn].detaching;
	brk_worker_settle(b, w, !detached);
}

/* 1 when process pid maps our segment (a line of /proc/<pid>/maps with its device and inode:
 * whatever its name), 0 when it does not, -1 when that cannot be read (then it is assumed to). */
static int maps_segment(const struct brk *b, pid_t pid)
{
	struct stat st;
	char path[64], line[512];
	if (fstat(b->seg_fd, &st) < 0)
		return -1;
	snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int found = 0, lines = 0;
	while (!found && fgets(line, sizeof line, f)) {
		unsigned maj, min;
		unsigned long long ino;
		lines++;
		if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &ino) == 3 &&
		    ino == (unsigned long long)st.st_ino && makedev(maj, min) == st.st_dev)
			found = 1;
	}
	fclose(f);
	return found ? 1 : lines ? 0 : -1; /* no line at all: not readable (a kernel thread?) */
}

void brk_worker_conn_closed(struct brk *b, uint32_t w, int conn, int detaching)
{
	struct brk_wslot *ws = &b->wslots[w];
	if (ws->conn != conn)
		return;
	ws->conn = -1;
	/* A worker that said "detach" released its slot, even if it has exited by now. */
	int died = !detaching && ((ws->pidfd >= 0 && pidfd_fired(ws->pidfd)) ||
				  !proc_alive(ws->pid, ws->starttime) || proc_exiting(ws->pid));
	if (detaching || died) {
		brk_worker_settle(b, w, died);
		return;
	}
	if (maps_segment(b, ws->pid) == 0) {
		/* Running, but the segment is no longer mapped: it detached without a "detach"
		 * reaching us, or exec()ed. Nothing of it can use the slot any more. */
		brk_log("worker %u (pid %d): connection closed and the process no longer maps the "
			"segment: released",
			w, (int)ws->pid);
		brk_worker_settle(b, w, 0);
		return;
	}
	/* A running process that did not detach: a call of its timed out (a stalled broker) or it
	 * does not read. Its slot stays, watched by its pidfd, for it to resume. */
	brk_log("worker %u (pid %d): connection closed while the process runs; the slot is kept "
		"until it resumes, detaches or exits",
		w, (int)ws->pid);
}

int brk_worker_detach_by_id(struct brk *b, uint32_t conn, uint32_t w, uint32_t gen)
{
	const struct brk_conn *c = &b->conns[conn];
	if (w >= b->seg.cfg.max_workers)
		return 0;
	struct brk_wslot *ws = &b->wslots[w];
	struct shmb_worker *wk = seg_worker(&b->seg, w);
	uint64_t starttime = proc_starttime(c->pid);
	if (!ws->pid || ws->pid != c->pid || ws->starttime != starttime ||
	    uatomic_read(&wk->state) != SHMB_WORKER_LIVE || uatomic_read(&wk->gen) != gen)
		return 0;
	if (ws->conn >= 0 && ws->conn != (int32_t)conn) {
		/* What its older connection still holds first (it may be the detach itself). */
		brk_control_readable(b, (uint32_t)ws->conn, 0);
		if (!ws->pid)
			return 1;
	}
	brk_worker_settle(b, w, 0);
	return 1;
}

void brk_workers_poll(struct brk *b)
{
	for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++) {
		struct brk_wslot *ws = &b->wslots[w];
		if (ws->pid == 0)
			continue;
		/* Backstops: a pidfd event lost to a full epoll batch, or no pidfd at all. */
		if ((ws->pidfd >= 0 && pidfd_fired(ws->pidfd)) ||
		    (ws->pidfd < 0 && !proc_alive(ws->pid, ws->starttime)))
			brk_worker_settle(b, w, 1);
	}
}

void brk_workers_wake_all(struct brk *b)
{
	uint32_t failed = 0, failed_worker = 0;
	int failed_errno = 0;
	brk_evfd_guard(1); /* a write blocked by another process returns EINTR (loop.c) */
	for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++) {
		if (!b->wslots[w].pid || b->evfds[w] < 0 ||
		    uatomic_read(&seg_worker(&b->seg, w)->state) != SHMB_WORKER_LIVE)
			continue;
		/* Never blocks (wake_fd_write): a full counter is already a wakeup. */
		int rc = wake_fd_write(b->evfds[w]);
		if (rc < 0 && failed++ == 0) {
			failed_worker = w;
			failed_errno = -rc;
		}
	}
	brk_evfd_guard(0);
	if (failed) /* logged outside the guard: only eventfd calls inside it */
		brk_warn("waking worker %u: %s (%u eventfd write%s failed)", failed_worker,
			 strerror(failed_errno), failed, failed == 1 ? "" : "s");
}

void brk_workers_close(struct brk *b)
{
	if (b->wslots)
		for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++)
			if (b->wslots[w].pidfd >= 0)
				close(b->wslots[w].pidfd);
	if (b->evfds)
		for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++)
			if (b->evfds[w] >= 0)
				close(b->evfds[w]);
	free(b->wslots);
	free(b->evfds);
	b->wslots = NULL;
	b->evfds = NULL;
}
