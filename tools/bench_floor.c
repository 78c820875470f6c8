/* bench_floor.c - the floor: what the kernel and the hardware allow, measured the same way as
 * shmbroker, in the same run.
 *
 *   - eventfd ping-pong between two processes, blocking read and through epoll (the floor of a
 *     wake round trip);
 *   - write() to an eventfd whose reader sleeps in epoll_wait (the floor of publishing to a
 *     sleeping subscriber: the syscall and the wakeup it triggers);
 *   - a spinning shared cache line ping-pong (what a process that never sleeps could get);
 *   - raw shared-memory rings of 256-byte records with plain C11 atomics: the bare claim, copy
 *     and release store of one record (the floor of publish), a validated read of 256 records
 *     (the floor of a replay), and throughput with 1 or 2 producers (fetch-and-add claim,
 *     Disruptor style, when 2) and 1 or 4 readers, under the same flow control as shmbroker's
 *     throughput scenarios (bench.h);
 *   - the memory accesses of an index lookup alone (the floor of open+touch for a large index):
 *     a random bucket, then line 0 of the 512-byte record it names (layout 2.0: the id, the
 *     binding hash, the expiry inputs and the touch share that line; 1.x read four lines), one
 *     lookup depending on the previous one, in a populated shared mapping shaped like the
 *     segment's buckets and records: of 4 KiB pages, or a file in --segment-dir (huge pages
 *     when that directory provides them). */
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

#define DEADLINE_NS (20ull * 1000000000ull)

/* ---- eventfd ping-pong ---- */

struct pp {
	int e1, e2; /* A -> B, B -> A */
	int epoll;  /* 1: through epoll */
	int rounds; /* warm-up + samples */
};

static void efd_wait(int ep, int fd)
{
	uint64_t v;
	if (ep >= 0) {
		struct epoll_event ev;
		while (epoll_wait(ep, &ev, 1, 1000) == 0) {
		}
	}
	while (read(fd, &v, sizeof v) != (ssize_t)sizeof v) {
	}
}

static void efd_post(int fd)
{
	uint64_t one = 1;
	(void)!write(fd, &one, sizeof one);
}

static int watch(int fd)
{
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	return ep;
}

static int pp_child(void *arg)
{
	struct pp *p = arg;
	bench_pin(1);
	int ep = p->epoll ? watch(p->e1) : -1;
	for (int i = 0; i < p->rounds; i++) {
		efd_wait(ep, p->e1);
		efd_post(p->e2);
	}
	return 0;
}

void floor_eventfd_pingpong(int use_epoll, int n)
{
	struct bench_row *row =
		bench_row(use_epoll ? "floor_eventfd_epoll_rt" : "floor_eventfd_rt");
	int warm = 100;
	/* Blocking (not EFD_NONBLOCK) for the plain variant; the epoll variant reads after a
	 * readiness report, so blocking reads never block there. */
	struct pp p = { .e1 = eventfd(0, EFD_CLOEXEC),
			.e2 = eventfd(0, EFD_CLOEXEC),
			.epoll = use_epoll,
			.rounds = warm + n };
	double *ns = malloc(sizeof(double) * (size_t)n);
	pid_t pid = bench_fork(pp_child, &p);
	int ep = use_epoll ? watch(p.e2) : -1;
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns();
		efd_post(p.e1);
		efd_wait(ep, p.e2);
		if (i >= warm)
			ns[i - warm] = (double)(bench_ns() - t0);
	}
	if (bench_wait(pid, 10000) != 0)
		bench_fail(row, "partner process failed");
	for (int i = 0; i < n; i++)
		bench_add(row, ns[i]);
	bench_note(row, "one sample per round trip");
	free(ns);
	if (ep >= 0)
		close(ep);
	close(p.e1);
	close(p.e2);
}

/* ---- eventfd write to a process asleep in epoll ---- */

struct sleeper {
	_Alignas(64) _Atomic uint32_t armed_seq; /* bumped just before each epoll_wait */
	_Atomic uint32_t stop;
	int efd;
	int rounds;
};

static int sleeper_child(void *arg)
{
	struct sleeper *s = arg;
	bench_pin(1);
	int ep = watch(s->efd);
	uint64_t v;
	for (int i = 0; i < s->rounds && !atomic_load(&s->stop); i++) {
		atomic_fetch_add(&s->armed_seq, 1);
		struct epoll_event ev;
		while (epoll_wait(ep, &ev, 1, 1000) == 0 && !atomic_load(&s->stop)) {
		}
		(void)!read(s->efd, &v, sizeof v);
	}
	close(ep);
	return 0;
}

void floor_eventfd_wake(int n)
{
	struct bench_row *row = bench_row("floor_eventfd_wake");
	int warm = 50;
	struct sleeper *s = bench_shared_alloc(sizeof *s);
	s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->rounds = warm + n;
	pid_t pid = bench_fork(sleeper_child, s);
	for (int i = 0; i < warm + n; i++) {
		uint64_t end = bench_ns() + DEADLINE_NS / 4;
		while (atomic_load(&s->armed_seq) <= (uint32_t)i && bench_ns() < end)
			sched_yield();
		bench_spin_ns(30000); /* let it reach epoll_wait and sleep */
		uint64_t t0 = bench_ns();
		efd_post(s->efd);
		uint64_t t1 = bench_ns();
		if (i >= warm)
			bench_add(row, (double)(t1 - t0));
	}
	atomic_store(&s->stop, 1);
	efd_post(s->efd);
	if (bench_wait(pid, 10000) != 0)
		bench_fail(row, "sleeper process failed");
	bench_note(row, "write() of an eventfd watched by a process asleep in epoll_wait");
	close(s->efd);
	bench_shared_free(s, sizeof *s);
}

/* ---- spinning cache line ---- */

struct line {
	_Alignas(64) _Atomic uint64_t v;
	uint64_t rounds;
};

static int line_child(void *arg)
{
	struct line *l = arg;
	bench_pin(1);
	uint64_t end = bench_ns() + DEADLINE_NS;
	for (uint64_t i = 0; i < l->rounds; i++) {
		uint64_t want = 2 * i + 1;
		while (atomic_load_explicit(&l->v, memory_order_acquire) != want)
			if ((i & 1023) == 0 && bench_ns() > end)
				return 1;
		atomic_store_explicit(&l->v, want + 1, memory_order_release);
	}
	return 0;
}

void floor_cacheline(int n)
{
	struct bench_row *row = bench_row("floor_cacheline_rt");
	int batch = 100, warm = 20;
	struct line *l = bench_shared_alloc(sizeof *l);
	l->rounds = (uint64_t)(warm + n) * batch;
	double *ns = malloc(sizeof(double) * (size_t)n);
	pid_t pid = bench_fork(line_child, l);
	uint64_t k = 0, end = bench_ns() + DEADLINE_NS;
	int ok = 1;
	for (int s = 0; s < warm + n && ok; s++) {
		uint64_t t0 = bench_ns();
		for (int j = 0; j < batch; j++, k++) {
			atomic_store_explicit(&l->v, 2 * k + 1, memory_order_release);
			while (atomic_load_explicit(&l->v, memory_order_acquire) != 2 * k + 2)
				if (bench_ns() > end) {
					ok = 0;
					break;
				}
		}
		if (s >= warm)
			ns[s - warm] = (double)(bench_ns() - t0) / batch;
	}
	if (bench_wait(pid, 10000) != 0 || !ok)
		bench_fail(row, "partner process failed");
	for (int i = 0; i < n; i++)
		bench_add(row, ns[i]);
	bench_note(row,
		   "two processes alternately writing one cache line, %d round trips per "
		   "sample",
		   batch);
	free(ns);
	bench_shared_free(l, sizeof *l);
}

/* ---- raw rings of 256-byte records ---- */

#define RAW_SLOTS 256 /* as shmbroker's default ring_events */
#define RAW_REC 256

struct raw_rec {
	_Alignas(64) _Atomic uint64_t seq; /* id once committed (release) */
	uint32_t len;
	uint8_t data[RAW_REC];
};

struct raw_ring {
	_Alignas(64) _Atomic uint64_t head; /* last claimed id (fetch-and-add by producers) */
	_Alignas(64) struct raw_rec rec[RAW_SLOTS];
};

static uint8_t payload[RAW_REC] = { 'x' }; /* the content does not matter */

static inline void raw_publish(struct raw_ring *g, uint64_t id)
{
	struct raw_rec *r = &g->rec[id & (RAW_SLOTS - 1)];
	memcpy(r->data, payload, RAW_REC);
	r->len = RAW_REC;
	atomic_store_explicit(&r->seq, id, memory_order_release);
}

/* A validated read (as shmbroker's readers do): seq before and after the copy. 1 on success. */
static inline int raw_read(struct raw_ring *g, uint64_t id, uint8_t *buf)
{
	struct raw_rec *r = &g->rec[id & (RAW_SLOTS - 1)];
	if (atomic_load_explicit(&r->seq, memory_order_acquire) != id)
		return 0;
	memcpy(buf, r->data, r->len <= RAW_REC ? r->len : RAW_REC);
	atomic_thread_fence(memory_order_acquire);
	return atomic_load_explicit(&r->seq, memory_order_relaxed) == id;
}

void floor_ring_publish(int n)
{
	struct bench_row *row = bench_row("floor_ring_publish");
	int batch = 1000, warm = 5;
	struct raw_ring *g = bench_shared_alloc(sizeof *g);
	for (int s = 0; s < warm + n; s++) {
		uint64_t t0 = bench_ns();
		for (int j = 0; j < batch; j++) {
			uint64_t id = atomic_fetch_add(&g->head, 1) + 1;
			raw_publish(g, id);
		}
		if (s >= warm)
			bench_add(row, (double)(bench_ns() - t0) / batch);
	}
	bench_note(row,
		   "fetch-and-add + 256-byte copy + release store into a shared ring, "
		   "batches of %d",
		   batch);
	bench_shared_free(g, sizeof *g);
}

void floor_ring_replay(int n)
{
	struct bench_row *row = bench_row("floor_ring_replay");
	int warm = 20;
	struct raw_ring *g = bench_shared_alloc(sizeof *g);
	for (uint64_t id = 1; id <= RAW_SLOTS; id++)
		raw_publish(g, id);
	static uint8_t buf[RAW_REC];
	unsigned sum = 0;
	int ok = 1;
	for (int s = 0; s < warm + n; s++) {
		uint64_t t0 = bench_ns();
		for (uint64_t id = 1; id <= RAW_SLOTS; id++) {
			ok &= raw_read(g, id, buf);
			sum += buf[id & 255];
		}
		if (s >= warm)
			bench_add(row, (double)(bench_ns() - t0));
	}
	if (!ok)
		bench_fail(row, "validation failed (%u)", sum);
	bench_note(row, "validated copies of 256 records of 256 bytes out of a shared ring");
	bench_shared_free(g, sizeof *g);
}

struct raw_tp {
	struct bench_tp_shared *sh;
	struct raw_ring *g;
	int producers, readers, me;
	uint64_t total;
};

static void wait_go(struct bench_tp_shared *sh)
{
	__atomic_add_fetch(&sh->ready, 1, __ATOMIC_ACQ_REL);
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE) && bench_ns() < end)
		bench_relax(&spins);
}

static int raw_producer(void *arg)
{
	struct raw_tp *t = arg;
	struct bench_tp_shared *sh = t->sh;
	bench_pin(bench_tp_cpu(0, t->me, t->producers, t->readers));
	uint64_t n = t->total / (uint64_t)t->producers, local = 0, cached = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	wait_go(sh);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t id = t->producers == 1 ? ++local : atomic_fetch_add(&t->g->head, 1) + 1;
		unsigned spins = 0;
		while (id > cached + BENCH_LEAD) {
			cached = bench_min_pos(sh, t->readers);
			if (id <= cached + BENCH_LEAD)
				break;
			if (__atomic_load_n(&sh->failed, __ATOMIC_RELAXED) || bench_ns() > end) {
				__atomic_store_n(&sh->failed, 1, __ATOMIC_RELAXED);
				return 1;
			}
			bench_relax(&spins);
		}
		raw_publish(t->g, id);
	}
	__atomic_add_fetch(&sh->pubs_done, 1, __ATOMIC_RELEASE);
	return 0;
}

static int raw_reader(void *arg)
{
	struct raw_tp *t = arg;
	struct bench_tp_shared *sh = t->sh;
	bench_pin(bench_tp_cpu(1, t->me, t->producers, t->readers));
	uint8_t buf[RAW_REC];
	unsigned sum = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	wait_go(sh);
	for (uint64_t id = 1; id <= t->total; id++) {
		unsigned spins = 0;
		while (!raw_read(t->g, id, buf)) {
			__atomic_store_n(&sh->reader_pos[t->me][0], id - 1, __ATOMIC_RELEASE);
			if (__atomic_load_n(&sh->failed, __ATOMIC_RELAXED) || bench_ns() > end) {
				__atomic_store_n(&sh->failed, 1, __ATOMIC_RELAXED);
				return 1;
			}
			bench_relax(&spins);
		}
		sum += buf[id & 255];
		if (id % BENCH_POS_EVERY == 0)
			__atomic_store_n(&sh->reader_pos[t->me][0], id, __ATOMIC_RELEASE);
		if (t->me == 0) {
			if (id == 1)
				sh->t_start = bench_ns();
			if (id % BENCH_WINDOW == 1 && sh->nwin < BENCH_MAX_WINDOWS)
				sh->win_ns[sh->nwin++] = bench_ns();
		}
	}
	if (t->me == 0)
		sh->t_end = bench_ns();
	sh->read[t->me] = t->total;
	__atomic_store_n(&sh->reader_pos[t->me][0], t->total, __ATOMIC_RELEASE);
	return sum == 0xFFFFFFFFu; /* keep the copies */
}

void floor_ring_tp(const char *key, int producers, int readers, uint64_t total)
{
	struct bench_row *row = bench_row(key);
	struct bench_tp_shared *sh = bench_shared_alloc(sizeof *sh);
	struct raw_ring *g = bench_shared_alloc(sizeof *g);
	pid_t pids[8];
	int np = 0;
	for (int r = 0; r < readers; r++) {
		struct raw_tp t = { sh, g, producers, readers, r, total };
		pids[np++] = bench_fork(raw_reader, &t);
	}
	for (int p = 0; p < producers; p++) {
		struct raw_tp t = { sh, g, producers, readers, p, total };
		pids[np++] = bench_fork(raw_producer, &t);
	}
	unsigned spins = 0;
	uint64_t end = bench_ns() + DEADLINE_NS;
	while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < (uint32_t)np && bench_ns() < end)
		bench_relax(&spins);
	__atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
	int bad = 0;
	for (int i = 0; i < np; i++)
		bad |= bench_wait(pids[i], 30000) != 0;
	if (bad || sh->failed)
		bench_fail(row, "a producer or reader failed or timed out");
	else
		bench_tp_add(row, sh, total);
	bench_shared_free(g, sizeof *g);
	bench_shared_free(sh, sizeof *sh);
}

/* ---- the memory floor of a lookup ---- */

/* A populated shared mapping of len bytes: anonymous (4 KiB pages, as /dev/shm without THP) or,
 * with --segment-dir, an unlinked file there (huge pages when the directory's file system gives
 * them), advised MADV_HUGEPAGE as the broker and clients advise the segment. */
static void *floor_map(size_t len)
{
	int fl = MAP_SHARED | MAP_POPULATE;
	int fd = -1;
	if (bench_opt.segment_dir) {
		char path[4096];
		snprintf(path, sizeof path, "%s/shmbench-floor.%d", bench_opt.segment_dir,
			 (int)getpid());
		fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			return MAP_FAILED;
		unlink(path);
		if (ftruncate(fd, (off_t)len) < 0) {
			close(fd);
			return MAP_FAILED;
		}
	} else {
		fl |= MAP_ANONYMOUS;
	}
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, fl, fd, 0);
	if (fd >= 0)
		close(fd);
	if (p != MAP_FAILED) {
#ifdef MADV_HUGEPAGE
		madvise(p, len, MADV_HUGEPAGE);
#endif
		memset(p, 0, len); /* MAP_POPULATE may have placed small pages before the advice */
	}
	return p;
}

void floor_lookup(const char *key, uint32_t nrec, int n)
{
	struct bench_row *row = bench_row(key);
	uint32_t nb = 1;
	while (nb < nrec)
		nb <<= 1; /* the broker's n_buckets: a power of two >= max_sessions */
	size_t blen = (size_t)nb * sizeof(uint32_t), rlen = (size_t)nrec * 512;
	uint32_t *b = floor_map(blen);
	uint8_t *r = floor_map(rlen);
	if (b == MAP_FAILED || r == MAP_FAILED) {
		bench_fail(row, "mapping %zu + %zu bytes failed", blen, rlen);
		goto out;
	}
	for (uint32_t i = 0; i < nb; i++)
		b[i] = (uint32_t)(((uint64_t)i * 2654435761u) % nrec); /* a record per bucket */
	uint64_t seed = 0x9e3779b97f4a7c15ull ^ nrec, dep = 0;
	enum { BATCH = 1000, WARM = 3 };
	for (int s = 0; s < WARM + n; s++) {
		uint64_t t0 = bench_ns();
		for (int j = 0; j < BATCH; j++) {
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			/* dep & 1 is always 0 but the compiler cannot know: each lookup waits for
			 * the previous one, as one open+touch after another does. */
			uint32_t rec = b[(seed ^ (dep & 1)) & (nb - 1)];
			const uint8_t *p = r + (size_t)rec * 512;
			dep += (uint64_t)p[0] + p[56] + 2; /* line 0: state ... inactivity_ttl_ms */
		}
		if (s >= WARM)
			bench_add(row, (double)(bench_ns() - t0) / BATCH);
	}
	bench_note(row,
		   "random bucket of %u, then line 0 of a 512-byte record of %u, dependent, %s, "
		   "batches of %d (checksum %llu)",
		   nb, nrec, bench_opt.segment_dir ? "a file in --segment-dir" : "4 KiB pages",
		   BATCH, (unsigned long long)(dep & 0xff));
out:
	if (b != MAP_FAILED)
		munmap(b, blen);
	if (r != MAP_FAILED)
		munmap(r, rlen);
}
