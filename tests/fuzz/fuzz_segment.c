/* fuzz_segment.c - libFuzzer harness for every reader of the segment on damaged segments:
 * header validation (seg_check_header, seg_map), seg_verify, idx_find, the event ring's readers
 * (evr_read, evr_oldest, evr_frontier), the client's lookup, stat, cursors, subscribe and
 * wakeup re-check (client/), and shmctl's record helpers (tools/shmctl_util.c).
 *
 * A small valid segment is built once in a memfd by the broker's own code (fuzz_common.c):
 * three live sessions and a deleted one, events that wrapped the ring (one spanning three
 * slots), a dead publisher's claim turned into a gap, a claim still in progress, a live worker
 * inside a read-side section, a subscriber bit. For every input the segment is restored, damaged
 * as the input says, and read. The readers trust nothing in the segment except the private,
 * validated copy of the configuration in struct shmb_seg (seg_map's), so the damage comes in two
 * phases: before the mapping is validated (what seg_check_header/seg_map must catch, or accept
 * when the header still describes this segment) and after it (anything, the header included,
 * as a concurrent scribbler would do it).
 *
 * Two targets are built from this file:
 *   fuzz_segment  input = a list of patches: a byte L (bit 7: after the mapping was validated;
 *                 bits 0-3: length - 1), a 16-bit little-endian offset (modulo the segment
 *                 size), then L bytes to write there;
 *   fuzz_header   (FZ_HEADER) input = bytes that replace the start of the header before the
 *                 mapping is validated (at most the header's 4096 bytes).
 *
 * Then a broker restarted on the damaged segment adopts it as shmbrokerd does (brk_segment_open:
 * half-built check, seg_map, scan_chains, adopt_records, brk_workers_adopt), on the memfd (the
 * link wraps shm_open, fuzz_common.h). Worker slots naming any process but ours are given pid 0
 * (dead) first, so that adoption never opens pidfds of, or takes eventfds from, other processes
 * of the machine.
 *
 * Invariants: no out-of-bounds access (ASan), no undefined behaviour (UBSan), no endless loop
 * (libFuzzer's -timeout), seg_check_header and seg_map agree, seg_verify returns a count (0 on
 * the undamaged segment), idx_find returns -2, -1 or an index in range, evr_read's lengths fit
 * the buffer and slots it reports, a cursor's ids strictly increase and it reaches "nothing new"
 * within a bounded number of calls. Adoption refuses what seg_map refuses and adopts the intact
 * segment; once it adopts, no record is left LINKING, UNLINKING or unknown, every record is in
 * exactly one of the free stack, the live list and the reclamation queue, sessions_live is the
 * number of LIVE records, no worker slot is LIVE but ours, a DEAD one waits on claims; and a
 * second broker adopts the result again, keeping the same sessions (adoption is idempotent). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "clock.h"
#include "evring.h"
#include "fuzz_common.h"
#include "index.h"
#include "internal.h"
#include "shmb.h"
#include "shmctl.h"
#include "sid.h"
#include "verify.h"

static struct brk B;
static uint8_t *snap;

/* The baseline's sessions: id and binding. */
static struct {
	char sid[2 * SHMB_SID_BYTES + 1];
	const char *tenant, *principal;
} S[4];

static uint32_t create(int i, const char *tenant, const char *principal)
{
	uint8_t sid[SHMB_SID_BYTES];
	uint32_t idx;
	int rc = brk_index_create(&B, tenant, strlen(tenant), principal,
				  principal ? strlen(principal) : 0, principal != NULL, 0, 0, sid,
				  &idx);
	FZ_CHECK(rc == 0, "creating a session: %s", shmb_err_name(rc));
	sid_format(sid, S[i].sid);
	S[i].tenant = tenant;
	S[i].principal = principal;
	return idx;
}

static void publish(uint32_t idx, uint32_t n)
{
	static const char text[] = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\","
				   "\"params\":{\"progress\":1}}";
	struct shmb_session_rec *r = seg_rec(&B.seg, idx);
	for (uint32_t k = 0; k < n; k++) {
		uint32_t len = k % 5 == 3 ? 40 : (k * 7) % 17; /* 40 bytes take 3 slots */
		evr_publish(&B.seg, idx, r, k % 2 + 1, (uint16_t)k, text, len, 1700000000000 + k,
			    NULL, NULL, NULL);
	}
}

/* An id claimed and its descriptor taken, never committed (a publisher mid-write). */
static uint64_t claim(uint32_t idx)
{
	struct shmb_session_rec *r = seg_rec(&B.seg, idx);
	uint64_t id = uatomic_add_return(&r->next_id, 1);
	uatomic_set(&seg_desc(&B.seg, idx, id)->seq, id | SHMB_DESC_BUSY);
	return id;
}

static void build(void)
{
	struct shmb_seg_config cfg;
	fz_config(&cfg);
	fz_broker_init(&B, &cfg);
	fz_rng_seed(7);
	uint32_t s0 = create(0, "acme", NULL);
	uint32_t s1 = create(1, "acme", "alice");
	uint32_t s2 = create(2, "beta", NULL);
	uint32_t s3 = create(3, "acme", NULL);
	brk_index_retire(&B, s3, SHMB_RETIRE_DELETED);

	publish(s0, 10);
	uint64_t dead = claim(s0); /* a publisher that died: the broker wrote its gap */
	FZ_CHECK(evr_write_gap(&B.seg, s0, dead, 1700000000100) == 1, "gap not written");
	publish(s0, 2);
	publish(s1, 2);
	uint64_t busy = claim(s1);

	/* Worker 0: live, one thread inside a read-side section holding the claim in progress. */
	struct shmb_worker *wk = seg_worker(&B.seg, 0);
	wk->pid = getpid();
	wk->gen = 1;
	uatomic_set(&wk->state, SHMB_WORKER_LIVE);
	struct shmb_reader *rd = seg_reader(&B.seg, 0, 0);
	rd->ctr = uatomic_read(&seg_hdr(&B.seg)->rcu_gp);
	rd->in_use = 1;
	rd->ledger = (struct shmb_ledger_entry){ .kind = SHMB_LEDGER_CLAIM,
						 .session_idx = s1,
						 .session_gen = seg_rec(&B.seg, s1)->gen,
						 .nslots = 1,
						 .id = busy };
	uatomic_or(&seg_rec(&B.seg, s2)->subscribers[0], 1);
	int problems = seg_verify(&B.seg, NULL, NULL, NULL);
	FZ_CHECK(problems == 0, "the baseline segment has %d problem(s)", problems);
	snap = fz_snapshot(&B);
	/* The seed of fuzz_header: the meaningful start of the intact header (lines 0-6). */
	const char *dump = getenv("SHMB_FUZZ_DUMP_HEADER");
	FILE *f = dump ? fopen(dump, "we") : NULL;
	if (f) {
		fwrite(snap, 1, 7 * SHMB_CACHELINE, f);
		fclose(f);
	}
}

/* A client as shmb_attach() would set it up, on seg (which it owns: shmb_detach unmaps it),
 * in the last worker slot, with fenced reads. */
/* seg_verify's sentences are formatted whatever the input (the formatting is code under test
 * too: every %s and %u there reads from the damaged segment); shown with SHMB_FUZZ_LOG=1. */
static void report(void *ctx, const char *problem)
{
	(void)ctx;
	FZ_CHECK(strlen(problem) < 320, "a problem sentence longer than its buffer");
	if (fz_verbose())
		fprintf(stderr, "seg_verify: %s\n", problem);
}

static shmb_client *fake_client(const struct shmb_seg *seg)
{
	shmb_client *c = calloc(1, sizeof *c);
	FZ_CHECK(c, "out of memory");
	c->fork_gen = shmbi_fork_gen;
	c->ctl_fd = -1;
	snprintf(c->name, sizeof c->name, "fuzz");
	pthread_mutex_init(&c->lock, NULL);
	c->seg = *seg;
	c->slot = seg->cfg.max_workers - 1;
	c->gen = 1;
	c->fenced = 1;
	c->readers = calloc(seg->cfg.readers_per_worker, sizeof *c->readers);
	FZ_CHECK(c->readers && pthread_key_create(&c->tls_key, NULL) == 0, "client set-up");
	return c;
}

/* Every id a ring reader could be asked about around the session's window. */
static void ring_readers(const struct shmb_seg *seg, uint8_t *buf, size_t buflen)
{
	const uint64_t n = seg->cfg.ring_events;
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		const struct shmb_session_rec *r = seg_rec(seg, idx);
		uint64_t head = uatomic_read(&r->next_id);
		uint64_t oldest = evr_oldest(seg, idx, r);
		uint64_t lo = head >= n ? head - n + 1 : 1;
		/* 0 when nothing was published; else in the window, or head + 1 (none retained). */
		FZ_CHECK(head == 0 ? oldest == 0 : oldest >= lo && oldest - 1 <= head,
			 "record %u: oldest %llu is outside the window of head %llu", idx,
			 (unsigned long long)oldest, (unsigned long long)head);
		evr_frontier(seg, idx, r, 0);
		evr_frontier(seg, idx, r, head);
		evr_frontier(seg, idx, r, head > n ? head - n : 0);
		uint64_t from = head > n + 1 ? head - n - 1 : 0;
		for (uint64_t id = from; id <= from + n + 2 && id >= from; id++) {
			struct shmb_event_desc d;
			int rc = evr_read(seg, idx, r, id, &d, buf, buflen);
			FZ_CHECK(rc >= EVR_CONT && rc <= EVR_OK, "evr_read returned %d", rc);
			if (rc == EVR_OK) {
				FZ_CHECK(d.len <= buflen, "event of %u bytes in a %zu-byte buffer",
					 d.len, buflen);
				FZ_CHECK(d.nslots >= 1 && d.nslots <= n, "event spans %u slots",
					 d.nslots);
			}
		}
	}
}

/* Reads a session to its end through a cursor: ids strictly increase, and "nothing new"
 * (or the session's end) comes within a bounded number of calls. */
static void drain_cursor(shmb_session *h, const struct shmb_seg *seg, uint64_t after, int filtered,
			 uint32_t stream)
{
	shmb_cursor *cur = NULL;
	int rc = filtered ? shmb_cursor_open_stream(h, after, stream, &cur)
			  : shmb_cursor_open(h, after, &cur);
	if (rc < 0) {
		/* EINVAL: after is past the session's last id (shmb_cursor_open refuses it). */
		FZ_CHECK(rc == SHMB_ENOENT || rc == SHMB_EINVAL, "cursor_open: %s",
			 shmb_err_name(rc));
		return;
	}
	size_t cap = seg->cfg.max_event_bytes;
	uint8_t *buf = malloc(cap ? cap : 1);
	FZ_CHECK(buf, "out of memory");
	uint64_t last = after;
	const uint32_t limit = 4 * seg->cfg.ring_events + 8;
	uint32_t calls;
	for (calls = 0; calls < limit; calls++) {
		shmb_event ev;
		rc = shmb_cursor_next(cur, &ev, buf, cap);
		if (rc == SHMB_ETOOBIG) {
			/* An event larger than max_event_bytes: only a damaged descriptor says so,
			 * and evr_read still bounds it by its slots. */
			FZ_CHECK(ev.len <= seg->cfg.ring_bytes, "ETOOBIG with len %zu",
				 (size_t)ev.len);
			free(buf);
			cap = ev.len;
			buf = malloc(cap ? cap : 1);
			FZ_CHECK(buf, "out of memory");
			rc = shmb_cursor_next(cur, &ev, buf, cap);
			FZ_CHECK(rc != SHMB_ETOOBIG, "ETOOBIG again with a buffer of ev.len bytes");
		}
		if (rc == 1) {
			FZ_CHECK(ev.id > last, "cursor went from id %llu to %llu",
				 (unsigned long long)last, (unsigned long long)ev.id);
			FZ_CHECK(ev.len <= cap, "event of %zu bytes in a %zu-byte buffer",
				 (size_t)ev.len, cap);
			last = ev.id;
			continue;
		}
		if (rc == SHMB_EOVERRUN)
			continue;
		FZ_CHECK(rc == 0 || rc == SHMB_ENOENT || rc == SHMB_ECORRUPT, "cursor_next: %s",
			 shmb_err_name(rc));
		break;
	}
	FZ_CHECK(calls < limit, "the cursor did not reach the end in %u calls", limit);
	free(buf);
	shmb_cursor_close(cur);
}

static void client_readers(const struct shmb_seg *seg)
{
	shmb_client *c = fake_client(seg);
	for (int i = 0; i < 4; i++) {
		shmb_session *h = NULL;
		int rc = shmb_session_open(c, S[i].sid, S[i].tenant, S[i].principal, &h);
		if (rc < 0) {
			/* ESTALE: the header's retired word is damaged (non-zero): every read-side
			 * section then refuses the segment as replaced. */
			FZ_CHECK(rc == SHMB_ENOENT || rc == SHMB_EPERM || rc == SHMB_ECORRUPT ||
					 rc == SHMB_EINVAL || rc == SHMB_ESTALE,
				 "session_open: %s", shmb_err_name(rc));
			continue;
		}
		shmb_session_info info;
		if (shmb_session_stat(h, &info) == 0)
			FZ_CHECK(memchr(info.tenant, '\0', sizeof info.tenant) &&
					 memchr(info.principal, '\0', sizeof info.principal),
				 "stat: tenant or principal not NUL-terminated");
		rc = shmb_subscribe(h);
		FZ_CHECK(rc == 0 || rc == SHMB_ENOENT, "subscribe: %s", shmb_err_name(rc));
		rc = shmb_prepare_wait(c);
		FZ_CHECK(rc == 0 || rc == 1, "prepare_wait: %s", shmb_err_name(rc));
		drain_cursor(h, seg, 0, 0, 0);
		drain_cursor(h, seg, 5, 1, 2);
		/* A Last-Event-ID comes from the network: any after_id is possible. */
		drain_cursor(h, seg, UINT64_MAX, 0, 0);
		drain_cursor(h, seg, UINT64_MAX - 1, 1, 1);
		shmb_session_close(h); /* ends the subscription */
	}
	shmb_detach(c); /* releases the reader slot, unmaps seg */
}

static void shmctl_readers(const struct shmb_seg *seg)
{
	int64_t now = shmb_now_ms();
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		struct shmb_session_rec r;
		if (shmctl_rec_snapshot(seg, idx, &r) < 0)
			continue;
		char text[4 * SHMB_PRINCIPAL_CAP + 1];
		shmctl_text(text, sizeof text, r.tenant, r.tenant_len, SHMB_TENANT_CAP);
		shmctl_text(text, sizeof text, r.principal, r.principal_len, SHMB_PRINCIPAL_CAP);
		shmctl_rec_expired(&r, now);
		shmctl_expires_at(&r);
		shmctl_subscriber_count(&r);
	}
	struct shmctl_summary sum;
	shmctl_summarize(seg, now, &sum);
}

/* ---------------------------------------------------------------- adoption */

static struct brk A; /* the restarted broker */

/* A broker started on the segment as it is now: brk_segment_open validates and adopts it.
 * Returns 0 when it adopted, 1 when it refused. */
static int adopt(void)
{
	static int epfd = -1;
	if (epfd < 0) {
		epfd = epoll_create1(EPOLL_CLOEXEC);
		FZ_CHECK(epfd >= 0, "epoll_create1: %s", strerror(errno));
	}
	memset(&A, 0, sizeof A);
	snprintf(A.cfg.name, sizeof A.cfg.name, "fuzz");
	fz_config(&A.cfg.seg);
	A.cfg.segment_mode = 0600;
	A.cfg.socket_mode = 0600;
	A.cfg.ready_fd = -1;
	A.pid = getpid();
	A.euid = geteuid();
	A.lock_fd = A.listen_fd = A.sig_fd = A.timer_fd = A.seg_fd = A.req_fd = -1;
	A.epfd = epfd; /* receives the pidfds of kept workers; closing them removes them */
	fz_adopt_fd = B.seg_fd;
	fz_quiet_fatal = 1;
	int rc = brk_segment_open(&A);
	fz_quiet_fatal = 0;
	fz_adopt_fd = -1;
	FZ_CHECK(rc == 0 || rc == 1, "brk_segment_open returned %d", rc);
	return rc;
}

/* Everything a broker's stop releases (broker/main.c), also after a refusal part-way. */
static void adopter_close(void)
{
	brk_workers_close(&A);
	if (A.seg.base)
		brk_segment_close(&A);
	else if (A.seg_fd >= 0)
		close(A.seg_fd);
	free(A.free_stack);
	free(A.pending);
	free(A.live_list);
	free(A.live_pos);
}

/* What an adoption leaves; returns the number of LIVE records. */
static uint32_t check_adopted(void)
{
	const struct shmb_seg *seg = &A.seg;
	const uint32_t n = seg->cfg.max_sessions;
	uint32_t live = 0;
	for (uint32_t idx = 0; idx < n; idx++) {
		uint32_t st = uatomic_read(&seg_rec(seg, idx)->state);
		FZ_CHECK(st == SHMB_REC_FREE || st == SHMB_REC_LIVE || st == SHMB_REC_RETIRED,
			 "record %u is in state %u after adoption", idx, st);
		if (st == SHMB_REC_LIVE) {
			live++;
			FZ_CHECK(A.live_pos[idx] != 0, "LIVE record %u is not in the live list",
				 idx);
		}
	}
	FZ_CHECK(live == A.live, "%u LIVE records, %u in the live list", live, A.live);
	FZ_CHECK(A.live + A.n_free + A.n_pending == n,
		 "%u live + %u free + %u pending records, of %u", A.live, A.n_free, A.n_pending, n);
	uint64_t ctr = uatomic_read(&seg_counter(seg, SHMB_CTR_SESSIONS_LIVE)->value);
	FZ_CHECK(ctr == live, "sessions_live %llu, %u LIVE records", (unsigned long long)ctr, live);
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		uint32_t st = uatomic_read(&wk->state);
		FZ_CHECK(st == SHMB_WORKER_FREE ||
				 (st == SHMB_WORKER_LIVE && uatomic_read(&wk->pid) == getpid()) ||
				 (st == SHMB_WORKER_DEAD && A.wslots[w].claims > 0),
			 "worker slot %u: state %u, pid %d, %u claims after adoption", w, st,
			 (int)uatomic_read(&wk->pid), A.wslots[w].claims);
	}
	return live;
}

/* A broker restarted on the damaged segment (must_refuse: seg_map refused it). */
static void adoption(int must_refuse, int intact)
{
	for (uint32_t w = 0; w < B.seg.cfg.max_workers; w++) {
		struct shmb_worker *wk = seg_worker(&B.seg, w);
		if (uatomic_read(&wk->pid) != getpid())
			uatomic_set(&wk->pid, 0);
	}
	int rc = adopt();
	FZ_CHECK(!must_refuse || rc == 1, "the broker adopted a segment seg_map refuses");
	FZ_CHECK(!intact || rc == 0, "the broker refused the intact segment");
	if (rc == 0) {
		uint32_t live = check_adopted();
		adopter_close();
		/* A broker killed right after adopting: the next one adopts the same. */
		FZ_CHECK(adopt() == 0, "a second broker refused what the first adopted");
		uint32_t again = check_adopted();
		FZ_CHECK(again == live, "the second adoption found %u live sessions, the first %u",
			 again, live);
	}
	adopter_close();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!snap)
		build();
	uint8_t *base = B.seg.base; /* the memfd's bytes: every mapping of it sees the damage */
	const uint64_t segsize = B.seg.size;
	memcpy(base, snap, segsize);

#ifdef FZ_HEADER
	memcpy(base, data, size < SHMB_PAGE ? size : SHMB_PAGE);
	const uint8_t *late = NULL; /* no damage after the mapping */
	size_t nlate = 0;
#else
	/* Phase 1: the patches before the mapping is validated. */
	for (size_t i = 0; i + 3 <= size;) {
		size_t len = (data[i] & 15u) + 1, off = (data[i + 1] | (size_t)data[i + 2] << 8);
		if (i + 3 + len > size)
			break;
		if (!(data[i] & 0x80))
			memcpy(base + off % (segsize - len + 1), data + i + 3, len);
		i += 3 + len;
	}
	const uint8_t *late = data;
	size_t nlate = size;
#endif

	char why[256];
	int hrc = seg_check_header(base, segsize, why, sizeof why);
	struct shmb_seg seg;
	int mrc = seg_map(B.seg_fd, 1, &seg, why, sizeof why);
	if (fz_verbose())
		fprintf(stderr, "seg_map: %s%s%s\n", mrc ? shmb_err_name(mrc) : "ok",
			mrc ? ": " : "", mrc ? why : "");
	FZ_CHECK(hrc == mrc, "seg_check_header says %s, seg_map %s", shmb_err_name(hrc),
		 shmb_err_name(mrc));
	if (mrc < 0) {
		FZ_CHECK(mrc == SHMB_ECORRUPT || mrc == SHMB_EVERSION || mrc == SHMB_EBROKER,
			 "seg_map: %s", shmb_err_name(mrc));
		adoption(1, 0);
		return 0;
	}
	/* Phase 2: the patches after it (the header included: only the private copy counts). */
	for (size_t i = 0; late && i + 3 <= nlate;) {
		size_t len = (late[i] & 15u) + 1, off = (late[i + 1] | (size_t)late[i + 2] << 8);
		if (i + 3 + len > nlate)
			break;
		if (late[i] & 0x80)
			memcpy(base + off % (segsize - len + 1), late + i + 3, len);
		i += 3 + len;
	}

	int problems = seg_verify(&seg, report, NULL, NULL);
	FZ_CHECK(problems >= 0, "seg_verify: %s", shmb_err_name(problems));
	if (size == 0)
		FZ_CHECK(problems == 0, "seg_verify found %d problem(s) in the intact segment",
			 problems);
	for (int i = 0; i < 4; i++) {
		uint8_t sid[SHMB_SID_BYTES];
		sid_parse(S[i].sid, sid);
		int64_t found = idx_find(&seg, sid);
		FZ_CHECK(found == -1 || found == -2 || (found >= 0 && found < seg.cfg.max_sessions),
			 "idx_find returned %lld", (long long)found);
	}
	uint8_t *buf = malloc(seg.cfg.ring_bytes); /* exactly ring_bytes: ASan sees any overrun */
	FZ_CHECK(buf, "out of memory");
	ring_readers(&seg, buf, seg.cfg.ring_bytes);
	free(buf);
	shmctl_readers(&seg);
	client_readers(&seg); /* the client owns seg and unmaps it */
	adoption(0, size == 0);
	return 0;
}
