/* torture_worker.c - one worker process of the torture test (tests/torture.c starts, kills and
 * restarts them; docs/reliability.md describes the run).
 *
 * A worker attaches like a prefork server's worker would and runs two threads on its one
 * shmb_client until the parent says stop:
 *  - the mutator creates sessions (registering them in the shared registry), deletes random
 *    ones, opens them, and publishes bursts of checksummed events of random sizes (some span
 *    several ring slots) on random streams, recording for each returned id what it published;
 *  - the reader watches a random session for a while: subscribed (waiting with shmb_wait) or
 *    polling, from the start, from the end or from a random Last-Event-ID, sometimes one stream
 *    only. It checks every event as it arrives (ids strictly increasing, checksum, the payload
 *    belongs to this session), measures how long the stream stays blocked behind an uncommitted
 *    id, and times every wakeup from the commit it waited for (a wait that timed out or woke
 *    long after that publish returned is a lost or late wakeup). At the end of a watch it catches up to the last claimed id and checks that every
 *    event whose publish returned is there, unless an overrun covered it.
 * Every SHMB_ENOENT on a registered session is judged (session_gone: a delete attempted, or
 * idle for the TTL; else the session was lost). Checks failing are violations (torture.h);
 * unexpected return codes too. Nothing here waits
 * without a bound: a stuck call is itself what the parent's deadline catches. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "internal.h" /* the reader inspects crash ledgers through its client's mapping */
#include "layout.h"
#include "proc.h"
#include "torture.h"

#define BUF_BYTES 2048 /* > max_event_bytes of the torture broker */
#define MAX_DEPTH 4    /* older laps followed when looking for who holds an id */

struct wctx {
	shmb_client *c;
	uint32_t slot; /* torture worker number */
	struct t_wstats *st;
	uint64_t seq; /* payloads published by this process */
	pthread_mutex_t seq_lock;
	uint32_t failed; /* a thread hit an unexpected error: exit non-zero */
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9e3779b97f4a7c15u;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545f4914f6cdd1du;
}

static void sleep_us(long us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int stopping(void)
{
	return (int)uatomic_read(&T->stop);
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3u;
	return h;
}

static uint64_t payload_sum(const unsigned char *buf, size_t len)
{
	struct t_payload h;
	memcpy(&h, buf, sizeof h);
	h.sum = 0;
	return fnv(buf + sizeof h, len - sizeof h, fnv(&h, sizeof h, 0xcbf29ce484222325u));
}

static uint32_t sum_hash(uint64_t sum)
{
	return (uint32_t)(sum ^ (sum >> 32));
}

static void fill_payload(unsigned char *buf, size_t len, uint32_t entry, uint32_t egen,
			 uint32_t worker, uint64_t seq)
{
	struct t_payload h = { .magic = T_MAGIC,
			       .entry = entry,
			       .egen = egen,
			       .worker = worker,
			       .seq = seq,
			       .len = (uint32_t)len };
	memcpy(buf, &h, sizeof h);
	uint64_t r = ((uint64_t)worker << 48) ^ (seq * 0x9e3779b97f4a7c15u) ^ len;
	for (size_t i = sizeof h; i < len; i++)
		buf[i] = (unsigned char)(rnd(&r) >> 56);
	h.sum = payload_sum(buf, len);
	memcpy(buf, &h, sizeof h);
}

/* ---------------------------------------------------------------- the session registry */

#define E_STATE(w) ((uint32_t)((w)&0xff))
#define E_GEN(w) ((uint32_t)((w) >> 8))
#define E_WORD(gen, st) (((uint64_t)(gen) << 8) | (st))

struct pick {
	uint32_t e, gen;
	char sid[SHMB_SID_LEN + 1];
};

static uint64_t e_word(const struct t_entry *e)
{
	return __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);
}

/* A random LIVE entry, copied consistently (word unchanged around the copy). */
static int pick_live(uint64_t *rng, struct pick *p)
{
	uint32_t start = (uint32_t)(rnd(rng) % T_ENTRIES);
	for (uint32_t i = 0; i < T_ENTRIES; i++) {
		uint32_t k = (start + i) % T_ENTRIES;
		struct t_entry *e = &T->entries[k];
		uint64_t w1 = e_word(e);
		if (E_STATE(w1) != E_LIVE)
			continue;
		memcpy(p->sid, e->sid, sizeof p->sid);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (e_word(e) != w1)
			continue;
		p->sid[SHMB_SID_LEN] = '\0';
		p->e = k;
		p->gen = E_GEN(w1);
		return 1;
	}
	return 0;
}

static uint32_t count_live(void)
{
	uint32_t n = 0;
	for (uint32_t k = 0; k < T_ENTRIES; k++)
		n += E_STATE(e_word(&T->entries[k])) == E_LIVE;
	return n;
}

static void mark_gone(const struct pick *p)
{
	struct t_entry *e = &T->entries[p->e];
	uint64_t want = E_WORD(p->gen, E_LIVE);
	uatomic_set(&e->gone_ns, t_now_ns());
	__atomic_compare_exchange_n(&e->word, &want, E_WORD(p->gen, E_GONE), 0, __ATOMIC_RELEASE,
				    __ATOMIC_RELAXED);
}

static uint64_t ms_since_start(int64_t ns)
{
	return (uint64_t)((ns - T->start_ns) / 1000000);
}

/* Raises a gen-tagged word (gen << 32 | low) to (gen, low) or, with low 0, counts one more on
 * gen; a word of a later generation is left alone (a stale writer). */
static void gen_word_raise(uint64_t *word, uint32_t gen, uint32_t low)
{
	uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
	for (;;) {
		uint32_t wg = (uint32_t)(w >> 32);
		uint64_t want;
		if (wg > gen)
			return;
		if (low == 0)
			want = ((uint64_t)gen << 32) | (wg == gen ? (uint32_t)w + 1 : 1);
		else if (wg == gen && (uint32_t)w >= low)
			return;
		else
			want = ((uint64_t)gen << 32) | low;
		if (__atomic_compare_exchange_n(word, &w, want, 0, __ATOMIC_SEQ_CST,
						__ATOMIC_ACQUIRE))
			return;
	}
}

/* The low half of a gen-tagged word when it is that generation's, else 0. */
static uint32_t gen_word_get(const uint64_t *word, uint32_t gen)
{
	uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
	return (uint32_t)(w >> 32) == gen ? (uint32_t)w : 0;
}

/* An open of p's session that started at t0 succeeded: it touched the session at or after t0.
 * (+1: 0 means "none" in the word; a lower bound one ms late is still below the TTL margin.) */
static void touched(const struct pick *p, int64_t t0)
{
	gen_word_raise(&T->entries[p->e].touch, p->gen, (uint32_t)ms_since_start(t0) + 1);
}

/* p's session answered SHMB_ENOENT (`what`). Legitimate only when a delete was attempted on it
 * (beyond our own: `own` is 1 when this is our delete's answer; a worker killed mid-delete
 * leaves its attempt counted, "maybe deleted"), or when nobody opened it for the inactivity TTL
 * (less a margin for clocks and ticks). Anything else is a session the system lost, e.g. a
 * broker restart that dropped it. The entry is then GONE. */
static void session_gone(struct wctx *x, const struct pick *p, const char *what, int own)
{
	struct t_entry *e = &T->entries[p->e];
	/* Judged while the entry is still LIVE in that generation: once someone marked it GONE
	 * it has been judged, and it may be reused since. */
	if (e_word(e) == E_WORD(p->gen, E_LIVE)) {
		uint32_t dels = gen_word_get(&e->dels, p->gen);
		uint32_t touch = gen_word_get(&e->touch, p->gen);
		int64_t idle_ms = (int64_t)ms_since_start(t_now_ns()) - ((int64_t)touch - 1);
		if (dels > (uint32_t)own)
			uatomic_inc(&x->st->ends_deleted);
		else if (!touch || idle_ms >= T_TTL_MS - T_TTL_MARGIN_MS)
			uatomic_inc(&x->st->ends_idle);
		else if (e_word(e) == E_WORD(p->gen, E_LIVE))
			t_violation(
				"worker %u: session lost: entry %u (sid %.8s): %s said "
				"SHMB_ENOENT, no delete was attempted and it was opened %lld ms "
				"ago (inactivity TTL %d ms)",
				x->slot, p->e, p->sid, what, (long long)idle_ms, T_TTL_MS);
	}
	mark_gone(p);
}

/* Registers a new session; -1 when every entry is in use (the session is then an orphan that
 * expires by inactivity: the sweeper gets exercised too). */
static int register_sid(const char *sid, int64_t t0)
{
	int64_t now = t_now_ns();
	for (uint32_t k = 0; k < T_ENTRIES; k++) {
		struct t_entry *e = &T->entries[k];
		uint64_t w = e_word(e);
		uint32_t st = E_STATE(w);
		/* A GONE entry is reused after 1 s: late writers of its old generation are done. */
		if (st != E_FREE &&
		    !(st == E_GONE && now - uatomic_read(&e->gone_ns) > 1000000000LL))
			continue;
		uint32_t gen = E_GEN(w) + 1;
		if (!__atomic_compare_exchange_n(&e->word, &w, E_WORD(gen, E_CLAIMED), 0,
						 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
			continue;
		uatomic_set(&e->owner, (int32_t)getpid());
		memcpy(e->sid, sid, sizeof e->sid);
		/* Created after t0: its last access is at or after it. */
		__atomic_store_n(&e->touch,
				 ((uint64_t)gen << 32) | (uint32_t)(ms_since_start(t0) + 1),
				 __ATOMIC_RELEASE);
		__atomic_store_n(&e->word, E_WORD(gen, E_LIVE), __ATOMIC_RELEASE);
		return (int)k;
	}
	return -1;
}

static void record(const struct pick *p, uint64_t id, uint64_t sum, uint32_t nslots,
		   uint32_t stream)
{
	struct t_entry *e = &T->entries[p->e];
	if (id == 0 || id > T_CAP || E_GEN(e_word(e)) != p->gen)
		return;
	struct t_rec *r = &e->rec[id];
	r->hash = sum_hash(sum);
	r->nslots = (uint16_t)nslots;
	r->stream = (uint16_t)stream;
	r->returned_ns = t_now_ns();
	__atomic_store_n(&r->gen, p->gen, __ATOMIC_RELEASE);
}

/* The record of id in p's session, if the publish that returned it was recorded. */
static int lookup(const struct pick *p, uint64_t id, struct t_rec *out)
{
	if (id == 0 || id > T_CAP)
		return 0;
	const struct t_rec *r = &T->entries[p->e].rec[id];
	if (__atomic_load_n(&r->gen, __ATOMIC_ACQUIRE) != p->gen)
		return 0;
	*out = *r;
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	return __atomic_load_n(&r->gen, __ATOMIC_RELAXED) == p->gen;
}

#define FAIL(x, ...)                          \
	do {                                  \
		t_violation(__VA_ARGS__);     \
		uatomic_set(&(x)->failed, 1); \
	} while (0)

/* ---------------------------------------------------------------- the mutator thread */

/* The broker releases a worker's slot only when the worker dies or detaches (issue 10, item 1):
 * after a broker call (which may have timed out on a stopped broker, or resumed on a restarted
 * one) a running worker must find its own slot LIVE with its pid and generation. */
static void check_own_slot(struct wctx *x, const char *after)
{
	const struct shmb_worker *wk = seg_worker(&x->c->seg, x->c->slot);
	uint32_t st = uatomic_read(&wk->state);
	cmm_smp_rmb(); /* state before identity, as the client's own admission check */
	int32_t pid = uatomic_read(&wk->pid);
	uint32_t gen = uatomic_read(&wk->gen);
	if (st != SHMB_WORKER_LIVE || pid != (int32_t)getpid() || gen != x->c->gen)
		FAIL(x,
		     "worker %u: its worker slot %u was released while it runs (after %s: state "
		     "%u, pid %d, gen %u; want pid %d, gen %u)",
		     x->slot, x->c->slot, after, st, (int)pid, gen, (int)getpid(), x->c->gen);
}

static void do_create(struct wctx *x, uint64_t *rng)
{
	char sid[SHMB_SID_LEN + 1];
	int64_t t0 = t_now_ns();
	int rc = shmb_session_create(x->c, T_TENANT, NULL, sid);
	if (rc == 0) {
		uatomic_inc(&x->st->creates);
		/* One in 16 is abandoned at once, as a client that never comes back: it expires
		 * by inactivity (the sweeper's turn). */
		if (rnd(rng) % 16 == 0 || register_sid(sid, t0) < 0)
			uatomic_inc(&x->st->orphans);
	} else if (rc == SHMB_EFULL) {
		uatomic_inc(&x->st->create_full);
	} else if (rc != SHMB_EBROKER) {
		FAIL(x, "worker %u: shmb_session_create: %s", x->slot, shmb_err_name(rc));
	}
	check_own_slot(x, "a create");
}

static void do_delete(struct wctx *x, const struct pick *p)
{
	/* Counted before the request: killed from here on, this delete may have happened. */
	gen_word_raise(&T->entries[p->e].dels, p->gen, 0);
	int rc = shmb_session_delete(x->c, p->sid, T_TENANT, NULL);
	if (rc == 0) {
		uatomic_inc(&x->st->deletes);
		mark_gone(p);
	} else if (rc == SHMB_ENOENT) {
		session_gone(x, p, "shmb_session_delete", 1);
	} else if (rc != SHMB_EBROKER) {
		FAIL(x, "worker %u: shmb_session_delete: %s", x->slot, shmb_err_name(rc));
	}
	check_own_slot(x, "a delete");
}

static shmb_session *open_pick(struct wctx *x, const struct pick *p)
{
	shmb_session *s = NULL;
	int64_t t0 = t_now_ns();
	int rc = shmb_session_open(x->c, p->sid, T_TENANT, NULL, &s);
	if (rc == SHMB_ENOENT) {
		session_gone(x, p, "shmb_session_open", 0);
	} else if (rc < 0) {
		FAIL(x, "worker %u: shmb_session_open: %s", x->slot, shmb_err_name(rc));
	} else {
		touched(p, t0);
		uatomic_inc(&x->st->opens);
	}
	return rc == 0 ? s : NULL;
}

static size_t pick_len(uint64_t *rng)
{
	uint64_t r = rnd(rng) % 100;
	size_t min = sizeof(struct t_payload);
	if (r < 80)
		return min + rnd(rng) % (256 - min + 1); /* one 256-byte slot */
	if (r < 85)
		return 256 + (rnd(rng) % 2) * 256; /* slot boundaries */
	return 257 + rnd(rng) % (1024 - 257 + 1);  /* two to four slots */
}

static void publish_burst(struct wctx *x, uint64_t *rng)
{
	struct pick p;
	if (!pick_live(rng, &p))
		return;
	shmb_session *s = open_pick(x, &p);
	if (!s)
		return;
	unsigned char buf[BUF_BYTES];
	uint32_t n = 1 + (uint32_t)(rnd(rng) % 16);
	for (uint32_t i = 0; i < n && !stopping(); i++) {
		size_t len = pick_len(rng);
		uint32_t stream = (uint32_t)(rnd(rng) % 4);
		pthread_mutex_lock(&x->seq_lock);
		uint64_t seq = x->seq++;
		pthread_mutex_unlock(&x->seq_lock);
		fill_payload(buf, len, p.e, p.gen, x->slot, seq);
		struct t_payload h;
		memcpy(&h, buf, sizeof h);
		int64_t id = shmb_publish(s, stream, 1, buf, len);
		if (id == SHMB_ENOENT) {
			session_gone(x, &p, "shmb_publish", 0);
			break;
		}
		if (id == SHMB_EOVERRUN) {
			/* The ring wrapped during our write: no id was returned, the event is lost
			 * (readers see a gap or an overrun there). */
			uatomic_inc(&x->st->publish_overruns);
			continue;
		}
		if (id < 0) {
			FAIL(x, "worker %u: shmb_publish: %s", x->slot, shmb_err_name((int)id));
			break;
		}
		uatomic_inc(&x->st->published);
		uatomic_add(&x->st->publish_bytes, len);
		uint32_t nslots = (uint32_t)((len + 255) / 256);
		record(&p, (uint64_t)id, h.sum, nslots, stream);
		if ((uint64_t)id + 64 > T_CAP) {
			/* Near the ids the test tracks: retire the session (it has lapped its ring
			 * T_CAP / 64 times by now). */
			do_delete(x, &p);
			break;
		}
		if (rnd(rng) % 4 == 0)
			sleep_us((long)(rnd(rng) % 400));
	}
	shmb_session_close(s);
}

static void mutator(struct wctx *x, uint64_t seed)
{
	uint64_t rng = seed;
	while (!stopping()) {
		uint64_t r = rnd(&rng) % 1000;
		struct pick p;
		if (r < 60) {
			if (count_live() < 8)
				do_create(x, &rng);
		} else if (r < 63) {
			if (count_live() > 3 && pick_live(&rng, &p))
				do_delete(x, &p);
		} else if (r < 115) {
			if (pick_live(&rng, &p)) {
				shmb_session *s = open_pick(x, &p);
				shmb_session_info info;
				int rc = s ? shmb_session_stat(s, &info) : 0;
				if (rc == SHMB_ENOENT)
					session_gone(x, &p, "shmb_session_stat", 0);
				else if (rc < 0)
					FAIL(x, "worker %u: shmb_session_stat: %s", x->slot,
					     shmb_err_name(rc));
				shmb_session_close(s);
			}
		} else {
			publish_burst(x, &rng);
		}
		sleep_us((long)(rnd(&rng) % 3000));
	}
}

/* ---------------------------------------------------------------- the reader thread */

#define BITS (T_CAP + 64)
struct watch {
	struct pick p;
	shmb_session *s;
	shmb_cursor *cur;
	int subscribed, filtered, ended;
	uint32_t stream;
	uint64_t p0, last; /* opened after p0; last id delivered */
	uint64_t got[BITS / 64], gap[BITS / 64], exempt[BITS / 64];
	uint32_t hash[BITS];
	/* blocking */
	uint64_t blocked_pos;
	int64_t blocked_since, holder_seen_live_ns;
	int stall_reported, excused_counted;
	int64_t gap_ts_ms; /* wall-clock time the first gap of the last drain was written */
};

static void bit_set(uint64_t *m, uint64_t i)
{
	if (i < BITS)
		m[i / 64] |= UINT64_C(1) << (i % 64);
}

static int bit_get(const uint64_t *m, uint64_t i)
{
	return i < BITS && (m[i / 64] >> (i % 64)) & 1;
}

/* Who holds id x of the session: the crash-ledger entry claiming it (exact, or a lower bound at
 * or below it), or, when an older lap still holds its descriptor busy, that lap's holder.
 * Returns 1 when some holder is a LIVE worker slot whose process is running (a publisher
 * preempted, stopped or still settling is not the system's fault); sets *dead_pid to a holder
 * that is dead (for its kill time) and *found when anyone holds it. */
static int holder_live(shmb_client *c, uint32_t idx, uint32_t gen, uint64_t x, int depth,
		       pid_t *dead_pid, int *found)
{
	const struct shmb_seg *seg = &c->seg;
	const struct shmb_event_desc *d = seg_desc(seg, idx, x);
	if (!d)
		return 0;
	uint64_t s = uatomic_read(&d->seq);
	uint64_t v = s & ~SHMB_DESC_BUSY;
	if ((s & SHMB_DESC_BUSY) && v < x && depth < MAX_DEPTH &&
	    holder_live(c, idx, gen, v, depth + 1, dead_pid, found))
		return 1;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			const struct shmb_ledger_entry *e = &seg_reader(seg, w, k)->ledger;
			if (uatomic_read(&e->kind) != SHMB_LEDGER_CLAIM)
				continue;
			uint64_t id = uatomic_read(&e->id);
			uint64_t n = uatomic_read(&e->nslots);
			if (uatomic_read(&e->session_idx) != idx ||
			    uatomic_read(&e->session_gen) != gen)
				continue;
			int covers = (id & SHMB_LEDGER_LB) ? (id & ~SHMB_LEDGER_LB) <= x
							   : id <= x && x < id + (n ? n : 1);
			if (!covers)
				continue;
			*found = 1;
			pid_t pid = uatomic_read(&wk->pid);
			if (uatomic_read(&wk->state) == SHMB_WORKER_LIVE && pid > 0 &&
			    !proc_exiting(pid))
				return 1;
			*dead_pid = pid;
		}
	}
	return 0;
}

/* Called after a drain found nothing new: is the stream blocked behind an uncommitted id, and
 * for longer than the stall budget with nobody but the system to blame? */
static void check_blocked(struct wctx *x, struct watch *wa, uint64_t last_claimed)
{
	uint64_t pos = shmb_cursor_position(wa->cur);
	int64_t now = t_now_ns();
	if (pos >= last_claimed) {
		wa->blocked_since = 0;
		return;
	}
	if (!wa->blocked_since || wa->blocked_pos != pos) {
		wa->blocked_since = now;
		wa->blocked_pos = pos;
		wa->holder_seen_live_ns = 0;
		wa->stall_reported = 0;
		wa->excused_counted = 0;
		return;
	}
	int64_t budget = (int64_t)T->stall_ms * 1000000;
	int64_t blocked = now - wa->blocked_since;
	/* Judged from 10 ms on (a publish in flight is not a stall), so that the longest time
	 * charged to the system is measured, not only the violations. */
	if (blocked <= 10000000 || wa->stall_reported)
		return;
	pid_t dead = 0;
	int found = 0;
	if (holder_live(x->c, wa->s->idx, wa->s->gen, pos + 1, 0, &dead, &found)) {
		wa->holder_seen_live_ns = now;
		if (blocked > budget && !wa->excused_counted++)
			uatomic_inc(&x->st->stalls_excused);
		return;
	}
	if (!uatomic_read(&T->broker_up)) {
		if (blocked > budget && !wa->excused_counted++)
			uatomic_inc(&x->st->stalls_excused);
		return;
	}
	/* The broker is responsible from the latest of: the block, the broker's readiness, the
	 * holder's death (SIGKILL sent, or last seen alive). */
	int64_t since = wa->blocked_since;
	int64_t ready = uatomic_read(&T->broker_ready_ns);
	int64_t killed = dead ? t_killed_ns(dead) : 0;
	if (ready > since)
		since = ready;
	if (killed > since)
		since = killed;
	if (wa->holder_seen_live_ns > since)
		since = wa->holder_seen_live_ns;
	uint64_t ms = now > since ? (uint64_t)((now - since) / 1000000) : 0;
	if (ms > uatomic_read(&x->st->max_stall_ms))
		uatomic_set(&x->st->max_stall_ms, ms);
	if (now - since > budget) {
		wa->stall_reported = 1;
		t_violation(
			"worker %u: stream of entry %u (sid %.8s) stalled at id %llu for %llu ms "
			"with the broker up (claimer %s, pid %d); last claimed %llu",
			x->slot, wa->p.e, wa->p.sid, (unsigned long long)(pos + 1),
			(unsigned long long)ms,
			found ? "dead" : "unknown: no crash-ledger entry holds it", (int)dead,
			(unsigned long long)last_claimed);
	}
}

/* The reader slept in shmb_wait from t0 to t1, waiting for id `next` (on an unfiltered cursor),
 * and the drain after it got past that id (`first`: the first id it delivered): was it woken
 * within the stall budget of that news? The news time is when the event's publish returned
 * (after its commit and the wakeups it sent; known even when the reader was lapped and told
 * SHMB_EOVERRUN, as a late wakeup on a busy session is) or when the broker wrote the gap record
 * (wall clock, coarse: one tick of slack).
 * Timed out (timeout_ms > 0): from the news, which was there before t1 (a lost wakeup).
 * Woken: from the news or t0, whichever is later (news before the wait makes it return at
 * once; a reader preempted before the call is not a late wakeup). Excused only when the
 * reader's own process was stopped (a fault point) and continued after the news. */
static void check_wakeup(struct wctx *x, struct watch *wa, uint64_t next, uint64_t first,
			 int64_t t0, int64_t t1, int timeout_ms)
{
	struct timespec wall;
	clock_gettime(CLOCK_REALTIME, &wall);
	int64_t wall_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
	int64_t news_ns;
	const char *what;
	struct t_rec rr;
	if (first == next && bit_get(wa->gap, first)) {
		news_ns = t_now_ns() - (wall_ms - wa->gap_ts_ms - 10) * 1000000;
		what = "gap record";
	} else if (lookup(&wa->p, next, &rr)) {
		news_ns = rr.returned_ns;
		what = "event (publish returned)";
	} else {
		return; /* its publisher has not recorded it (yet), or it lies in a multi-slot one */
	}
	int64_t from = !timeout_ms && t0 > news_ns ? t0 : news_ns;
	int64_t late = t1 - from;
	uatomic_inc(&x->st->wakes_timed);
	if (late <= 0)
		return;
	if (t_continued_ns(getpid()) > news_ns) {
		if (late > (int64_t)T->stall_ms * 1000000)
			uatomic_inc(&x->st->wakes_excused);
		return;
	}
	/* News while no broker served: the publisher could not fetch a newer eventfd set and may
	 * have woken a reader attached to a later broker through a stale fd; the next broker
	 * makes that good once it serves (brk_workers_wake_all, docs/events.md "Broker
	 * restarts"). The broker's readiness after the news is then where the budget starts;
	 * still down, nothing can be asked yet. */
	int64_t ready = uatomic_read(&T->broker_ready_ns);
	if (late > (int64_t)T->stall_ms * 1000000 &&
	    (ready > news_ns || !uatomic_read(&T->broker_up))) {
		if (!uatomic_read(&T->broker_up) || t1 - ready <= (int64_t)T->stall_ms * 1000000) {
			uatomic_inc(&x->st->wakes_broker_down);
			return;
		}
		late = t1 - (ready > from ? ready : from);
	}
	uint64_t ms = (uint64_t)(late / 1000000);
	if (ms > uatomic_read(&x->st->max_wake_ms))
		uatomic_set(&x->st->max_wake_ms, ms);
	if (late <= (int64_t)T->stall_ms * 1000000)
		return;
	if (timeout_ms)
		t_violation("worker %u: lost wakeup: entry %u: %s %llu %lld ms before a %d ms "
			    "shmb_wait timed out (broker ready %lld ms before the wait ended)",
			    x->slot, wa->p.e, what, (unsigned long long)next,
			    (long long)(late / 1000000), timeout_ms,
			    (long long)((t1 - uatomic_read(&T->broker_ready_ns)) / 1000000));
	else
		t_violation("worker %u: late wakeup: entry %u: %s %llu, shmb_wait returned %lld "
			    "ms after it (slept %lld ms; broker ready %lld ms before the wake)",
			    x->slot, wa->p.e, what, (unsigned long long)next,
			    (long long)(late / 1000000), (long long)((t1 - t0) / 1000000),
			    (long long)((t1 - uatomic_read(&T->broker_ready_ns)) / 1000000));
}

/* Reads everything available. Returns the id of the first event or gap delivered (0: none). */
static uint64_t drain(struct wctx *x, struct watch *wa, unsigned char *buf)
{
	uint64_t first = 0;
	while (!wa->ended) {
		shmb_event ev;
		uint64_t before = shmb_cursor_position(wa->cur);
		int rc = shmb_cursor_next(wa->cur, &ev, buf, BUF_BYTES);
		if (rc == 0)
			break;
		if (rc == SHMB_ENOENT) {
			session_gone(x, &wa->p, "shmb_cursor_next", 0);
			wa->ended = 1;
			break;
		}
		if (rc == SHMB_EOVERRUN) {
			uint64_t after = shmb_cursor_position(wa->cur);
			for (uint64_t i = before + 1; i <= after && i < BITS; i++)
				bit_set(wa->exempt, i);
			uatomic_inc(&x->st->overruns);
			continue;
		}
		if (rc < 0) {
			FAIL(x, "worker %u: shmb_cursor_next at %llu: %s", x->slot,
			     (unsigned long long)before, shmb_err_name(rc));
			wa->ended = 1;
			break;
		}
		uatomic_inc(&x->st->delivered);
		if (ev.id <= wa->last)
			t_violation("worker %u: entry %u: cursor delivered id %llu after %llu "
				    "(ids must increase strictly)",
				    x->slot, wa->p.e, (unsigned long long)ev.id,
				    (unsigned long long)wa->last);
		wa->last = ev.id;
		if (!first)
			first = ev.id;
		if (ev.flags & SHMB_EV_GAP) {
			uatomic_inc(&x->st->gaps);
			bit_set(wa->gap, ev.id);
			if (first == ev.id)
				wa->gap_ts_ms = ev.ts_ms;
			continue;
		}
		if (wa->filtered && ev.stream != wa->stream)
			t_violation(
				"worker %u: a cursor of stream %u delivered id %llu of stream %u",
				x->slot, wa->stream, (unsigned long long)ev.id, ev.stream);
		struct t_payload h;
		const char *bad = NULL;
		if (!ev.data || ev.len < sizeof h) {
			bad = "payload shorter than its header";
		} else {
			memcpy(&h, ev.data, sizeof h);
			if (h.magic != T_MAGIC)
				bad = "bad magic";
			else if (h.len != ev.len)
				bad = "length differs from the one published";
			else if (h.sum != payload_sum(ev.data, ev.len))
				bad = "checksum mismatch (torn or overwritten payload)";
			else if (h.entry != wa->p.e || h.egen != wa->p.gen)
				bad = "payload of another session";
		}
		if (bad) {
			t_violation("worker %u: entry %u: event %llu (%zu bytes): %s", x->slot,
				    wa->p.e, (unsigned long long)ev.id, ev.len, bad);
			continue;
		}
		bit_set(wa->got, ev.id);
		if (ev.id < BITS)
			wa->hash[ev.id] = sum_hash(h.sum);
	}
	return first;
}

/* Every returned publish in (p0, pos] was delivered with its payload, unless an overrun
 * covered one of its ids or (filtered) it belongs to another stream. */
static void evaluate(struct wctx *x, struct watch *wa)
{
	uint64_t pos = shmb_cursor_position(wa->cur);
	if (pos > T_CAP)
		pos = T_CAP;
	for (uint64_t id = wa->p0 + 1; id <= pos; id++) {
		struct t_rec r;
		if (!lookup(&wa->p, id, &r))
			continue;
		if (wa->filtered && r.stream != wa->stream)
			continue;
		int exempt = 0;
		for (uint64_t j = id; j < id + r.nslots; j++)
			exempt |= bit_get(wa->exempt, j);
		if (exempt) {
			uatomic_inc(&x->st->exempt);
			continue;
		}
		if (bit_get(wa->got, id)) {
			if (wa->hash[id] != r.hash)
				t_violation(
					"worker %u: entry %u: event %llu delivered with another "
					"payload than its publisher wrote",
					x->slot, wa->p.e, (unsigned long long)id);
			else
				uatomic_inc(&x->st->verified);
		} else {
			t_violation("worker %u: entry %u (sid %.8s): event %llu, whose publish "
				    "returned, %s (cursor from %llu to %llu, %s%s)",
				    x->slot, wa->p.e, wa->p.sid, (unsigned long long)id,
				    bit_get(wa->gap, id) ? "was delivered as a gap record"
							 : "was never delivered",
				    (unsigned long long)wa->p0, (unsigned long long)pos,
				    wa->subscribed ? "subscribed" : "polling",
				    wa->ended ? ", session ended" : "");
		}
	}
}

static void watch(struct wctx *x, struct watch *wa, uint64_t *rng)
{
	memset(wa, 0, sizeof *wa);
	if (!pick_live(rng, &wa->p))
		return;
	wa->s = open_pick(x, &wa->p);
	if (!wa->s)
		return;
	uatomic_inc(&x->st->watches);
	if (rnd(rng) % 10 < 7) {
		int rc = shmb_subscribe(wa->s);
		if (rc == 0)
			wa->subscribed = 1;
		else if (rc == SHMB_ENOENT)
			session_gone(x, &wa->p, "shmb_subscribe", 0);
		else
			FAIL(x, "worker %u: shmb_subscribe: %s", x->slot, shmb_err_name(rc));
	}
	shmb_session_info info;
	int rc = shmb_session_stat(wa->s, &info);
	uint64_t r = rnd(rng) % 10;
	/* From the start, from the end, or from a random Last-Event-ID. */
	if (rc < 0 || r < 4)
		wa->p0 = 0;
	else if (r < 7)
		wa->p0 = info.last_event_id;
	else
		wa->p0 = rnd(rng) % (info.last_event_id + 1);
	wa->last = wa->p0;
	wa->filtered = rnd(rng) % 5 == 0;
	wa->stream = (uint32_t)(rnd(rng) % 4);
	rc = wa->filtered ? shmb_cursor_open_stream(wa->s, wa->p0, wa->stream, &wa->cur)
			  : shmb_cursor_open(wa->s, wa->p0, &wa->cur);
	if (rc < 0) {
		if (rc == SHMB_ENOENT)
			session_gone(x, &wa->p, "shmb_cursor_open", 0);
		else
			FAIL(x, "worker %u: shmb_cursor_open: %s", x->slot, shmb_err_name(rc));
		goto out;
	}
	unsigned char buf[BUF_BYTES];
	int64_t budget = (int64_t)T->stall_ms * 1000000;
	int64_t end = t_now_ns() + (int64_t)(50 + rnd(rng) % 700) * 1000000;
	while (!wa->ended && !stopping() && t_now_ns() < end &&
	       shmb_cursor_position(wa->cur) < T_CAP) {
		drain(x, wa, buf);
		if (wa->ended)
			break;
		rc = shmb_session_stat(wa->s, &info);
		if (rc == SHMB_ENOENT) {
			session_gone(x, &wa->p, "shmb_session_stat", 0);
			break;
		}
		check_blocked(x, wa, info.last_event_id);
		if (!wa->subscribed) {
			sleep_us(200 + (long)(rnd(rng) % 3000));
			continue;
		}
		uint64_t before = shmb_cursor_position(wa->cur);
		int timeout = 20 + (int)(rnd(rng) % 500);
		/* Blocked behind a live holder (a stopped publisher): look again soon. The broker's
		 * budget runs from the last moment the holder was seen live, so that moment must be
		 * known within a wait, not up to half a second stale (a holder that commits after a
		 * long stop leaves the next ids to the broker's ownerless-claim scan). */
		if (wa->blocked_since && wa->holder_seen_live_ns)
			timeout = 20;
		int64_t t0 = t_now_ns();
		int w = shmb_wait(x->c, timeout);
		int64_t t1 = t_now_ns();
		uatomic_inc(&x->st->waits);
		if (w < 0) {
			FAIL(x, "worker %u: shmb_wait: %s", x->slot, shmb_err_name(w));
			break;
		}
		uatomic_inc(w == 1 ? &x->st->woken : &x->st->timeouts);
		uint64_t first = drain(x, wa, buf);
		if (!wa->filtered && shmb_cursor_position(wa->cur) > before)
			check_wakeup(x, wa, before + 1, first, t0, t1, w == 1 ? 0 : timeout);
	}
	/* Catch up to the last id claimed now: every returned publish is at or below it. */
	int64_t deadline = t_now_ns() + (budget * 20 > 3000000000LL ? budget * 20 : 3000000000LL);
	while (!wa->ended) {
		drain(x, wa, buf);
		if (wa->ended)
			break;
		rc = shmb_session_stat(wa->s, &info);
		if (rc == SHMB_ENOENT) {
			session_gone(x, &wa->p, "shmb_session_stat", 0);
			break;
		}
		uint64_t pos = shmb_cursor_position(wa->cur);
		if (pos >= info.last_event_id || pos >= T_CAP)
			break;
		check_blocked(x, wa, info.last_event_id);
		if (t_now_ns() > deadline) {
			pid_t dead = 0;
			int found = 0;
			if (holder_live(x->c, wa->s->idx, wa->s->gen, pos + 1, 0, &dead, &found) ||
			    !uatomic_read(&T->broker_up))
				uatomic_inc(&x->st->unverified_tails);
			else if (!wa->stall_reported)
				t_violation(
					"worker %u: entry %u: the cursor never got past id %llu "
					"(last claimed %llu)",
					x->slot, wa->p.e, (unsigned long long)(pos + 1),
					(unsigned long long)info.last_event_id);
			break;
		}
		sleep_us(1000);
	}
	evaluate(x, wa);
out:
	shmb_cursor_close(wa->cur);
	if (wa->subscribed) {
		rc = shmb_unsubscribe(wa->s);
		if (rc == SHMB_ENOENT)
			session_gone(x, &wa->p, "shmb_unsubscribe", 0);
		else if (rc < 0)
			FAIL(x, "worker %u: shmb_unsubscribe: %s", x->slot, shmb_err_name(rc));
	}
	shmb_session_close(wa->s);
}

struct reader_arg {
	struct wctx *x;
	uint64_t seed;
};

static void *reader(void *p)
{
	struct reader_arg *a = p;
	struct watch *wa = malloc(sizeof *wa);
	if (!wa) {
		FAIL(a->x, "worker %u: out of memory", a->x->slot);
		return NULL;
	}
	uint64_t rng = a->seed;
	while (!stopping()) {
		watch(a->x, wa, &rng);
		sleep_us((long)(rnd(&rng) % 1000));
	}
	free(wa);
	return NULL;
}

/* ---------------------------------------------------------------- the process */

int t_worker_main(uint32_t slot, const char *fault, uint64_t seed)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_IGN);
	/* Set before any thread exists (getenv at the fault points is then race-free). The
	 * point fires at its first occurrence in either thread. */
	if (fault)
		setenv("SHMB_FAULT", fault, 1);
	else
		unsetenv("SHMB_FAULT");
	struct wctx x = { .slot = slot, .st = &T->w[slot] };
	pthread_mutex_init(&x.seq_lock, NULL);
	x.seq = (uint64_t)uatomic_read(&T->w[slot].incarnations) << 40;
	for (;;) {
		if (stopping())
			return 0;
		int rc = shmb_attach(T->name, &x.c);
		if (rc == 0)
			break;
		if (rc != SHMB_EBROKER && rc != SHMB_ENOWORKER) {
			t_violation("worker %u: shmb_attach: %s", slot, shmb_err_name(rc));
			return 2;
		}
		sleep_us(5000 + (long)(seed % 10000));
	}
	struct reader_arg ra = { .x = &x, .seed = seed ^ 0x5555 };
	pthread_t th;
	int have_thread = pthread_create(&th, NULL, reader, &ra) == 0;
	if (!have_thread)
		t_violation("worker %u: pthread_create failed", slot);
	mutator(&x, seed);
	if (have_thread)
		pthread_join(th, NULL);
	shmb_detach(x.c);
	return uatomic_read(&x.failed) ? 1 : 0;
}
