/* bench_attrs.c - shmbench rows for session attributes (docs/attributes.md): get of a 64 B value,
 * set of one, and set-if under contention of two processes incrementing one counter (a get +
 * set_if retry loop; the final value proves no update was lost), beside a same-run baseline: a
 * plain 64-byte memcpy between a load-acquire and a second load (the floor of an optimistic
 * read), and shmb_session_stat on the same handle (the same pinned section and handle check: what
 * any call through a handle costs before it does its own work). Rows alternate with the
 * baselines in chunks (bench.h). Own broker, defaults. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define VAL 64
#define BATCH 1000
#define CAS_EACH 100000 /* increments per contending process (scaled) */

static struct bench_broker ab;
static char sid[SHMB_SID_LEN + 1];

static shmb_session *open_attr_session(shmb_client **c)
{
	shmb_session *s = NULL;
	*c = NULL;
	for (int i = 0; i < 50 && shmb_attach(ab.name, c) == SHMB_EBROKER; i++)
		usleep(10000);
	if (!*c || shmb_session_open(*c, sid, "bench", NULL, &s) < 0)
		return NULL;
	return s;
}

/* The floor: what an optimistic read of a 64 B value costs in memory alone. */
static void floor_chunk(struct bench_row *row, int n)
{
	static _Alignas(64) uint8_t src[VAL];
	static _Atomic uint64_t word = 1;
	uint8_t dst[VAL];
	for (int k = 0; k < n; k++) {
		uint64_t a = bench_ns(), sum = 0;
		for (int j = 0; j < BATCH; j++) {
			uint64_t w = atomic_load_explicit(&word, memory_order_acquire);
			memcpy(dst, src, VAL);
			atomic_thread_fence(memory_order_acquire);
			sum += w ^ atomic_load_explicit(&word, memory_order_relaxed) ^ dst[j % VAL];
			__asm__ volatile("" : : "r"(sum) : "memory");
		}
		bench_add(row, (double)(bench_ns() - a) / BATCH);
	}
}

static void get_chunk(shmb_session *s, struct bench_row *row, int n)
{
	uint8_t buf[VAL];
	for (int k = 0; k < n && row->status == BS_NONE; k++) {
		uint64_t a = bench_ns(), v;
		for (int j = 0; j < BATCH; j++) {
			int rc = shmb_attr_get(s, "k", buf, sizeof buf, &v);
			if (rc != VAL) {
				bench_fail(row, "get: %s", shmb_strerror(rc));
				return;
			}
		}
		bench_add(row, (double)(bench_ns() - a) / BATCH);
	}
}

/* The library's own floor for a call through a handle: shmb_session_stat enters the same pinned
 * section and checks the handle the same way, then copies the record's fields. */
static void stat_chunk(shmb_session *s, struct bench_row *row, int n)
{
	shmb_session_info info;
	for (int k = 0; k < n && row->status == BS_NONE; k++) {
		uint64_t a = bench_ns();
		for (int j = 0; j < BATCH; j++)
			if (shmb_session_stat(s, &info) < 0) {
				bench_fail(row, "stat failed");
				return;
			}
		bench_add(row, (double)(bench_ns() - a) / BATCH);
	}
}

static void set_chunk(shmb_session *s, struct bench_row *row, int n)
{
	uint8_t val[VAL];
	memset(val, 'v', sizeof val);
	for (int k = 0; k < n && row->status == BS_NONE; k++) {
		uint64_t a = bench_ns();
		for (int j = 0; j < BATCH; j++) {
			val[0] = (uint8_t)j;
			int rc = shmb_attr_set(s, "k", val, sizeof val);
			if (rc != 0) {
				bench_fail(row, "set: %s", shmb_strerror(rc));
				return;
			}
		}
		bench_add(row, (double)(bench_ns() - a) / BATCH);
	}
}

/* ---- set-if under contention ---- */

#define CAS_SAMPLES 4096
struct cas_shared {
	_Atomic uint32_t ready, go, failed;
	uint64_t conflicts[2];
	uint32_t nsamples[2];
	double samples[2][CAS_SAMPLES]; /* ns per successful increment, per batch */
};
static struct cas_shared *cs;
static int cas_each;

static int cas_child(void *arg)
{
	int me = (int)(intptr_t)arg;
	bench_pin(me);
	shmb_client *c;
	shmb_session *s = open_attr_session(&c);
	if (!s) {
		atomic_store(&cs->failed, 1);
		return 1;
	}
	atomic_fetch_add(&cs->ready, 1);
	while (!atomic_load(&cs->go))
		;
	uint64_t a = bench_ns();
	for (int i = 0; i < cas_each;) {
		uint64_t n, v;
		int rc = shmb_attr_get(s, "counter", &n, sizeof n, &v);
		if (rc != (int)sizeof n) {
			atomic_store(&cs->failed, 1);
			return 2;
		}
		n++;
		rc = shmb_attr_set_if(s, "counter", &n, sizeof n, v);
		if (rc == SHMB_ECONFLICT) {
			cs->conflicts[me]++;
			continue;
		}
		if (rc < 0) {
			atomic_store(&cs->failed, 1);
			return 3;
		}
		if (++i % BATCH == 0 && cs->nsamples[me] < CAS_SAMPLES) {
			uint64_t z = bench_ns();
			cs->samples[me][cs->nsamples[me]++] = (double)(z - a) / BATCH;
			a = z;
		}
	}
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

static void cas_row(shmb_session *s, struct bench_row *row)
{
	cs = bench_shared_alloc(sizeof *cs);
	cas_each = bench_n(CAS_EACH, 10000) / BATCH * BATCH;
	uint64_t zero = 0;
	if (!cs || shmb_attr_set(s, "counter", &zero, sizeof zero) < 0) {
		bench_fail(row, "setup failed");
		goto out;
	}
	pid_t p[2];
	for (int i = 0; i < 2; i++)
		p[i] = bench_fork(cas_child, (void *)(intptr_t)i);
	for (uint64_t t = bench_ns(); atomic_load(&cs->ready) < 2 && !atomic_load(&cs->failed) &&
				      bench_ns() - t < 10000000000u;)
		usleep(1000);
	atomic_store(&cs->go, 1);
	int bad = 0;
	for (int i = 0; i < 2; i++)
		bad |= bench_wait(p[i], 120000) != 0;
	uint64_t n = 0, v = 0;
	int rc = shmb_attr_get(s, "counter", &n, sizeof n, &v);
	if (bad || atomic_load(&cs->failed) || rc != (int)sizeof n) {
		bench_fail(row, "a contending process failed");
		goto out;
	}
	if (n != 2 * (uint64_t)cas_each) {
		bench_fail(row, "lost updates: counter %llu after 2 x %d increments",
			   (unsigned long long)n, cas_each);
		goto out;
	}
	for (int i = 0; i < 2; i++)
		for (uint32_t k = 0; k < cs->nsamples[i]; k++)
			bench_add(row, cs->samples[i][k]);
	bench_note(row,
		   "2 processes x %d get+set_if increments of one key, %llu conflicts retried; "
		   "final value %llu (none lost), version %llu; ns per successful increment, "
		   "per process",
		   cas_each, (unsigned long long)(cs->conflicts[0] + cs->conflicts[1]),
		   (unsigned long long)n, (unsigned long long)v);
out:
	if (cs)
		bench_shared_free(cs, sizeof *cs);
	cs = NULL;
}

void shmb_attr_bench(void)
{
	struct bench_row *fl = bench_row("floor_copy64"), *g = bench_row("attr_get"),
			 *st = bench_row("attr_set"), *cas = bench_row("attr_cas"),
			 *sb = bench_row("attr_stat");
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (bench_broker_start(&ab, (const char *const[]){ "--max-sessions", "64", NULL }) < 0) {
		bench_fail(g, "broker did not start");
		return;
	}
	for (int i = 0; i < 50 && shmb_attach(ab.name, &c) == SHMB_EBROKER; i++)
		usleep(10000);
	uint8_t val[VAL] = { 0 };
	if (!c || shmb_session_create(c, "bench", NULL, sid) < 0 ||
	    shmb_session_open(c, sid, "bench", NULL, &s) < 0 ||
	    shmb_attr_set(s, "k", val, sizeof val) < 0) {
		bench_fail(g, "setup failed");
		goto out;
	}
	int n = bench_n(300, 30) / 3;
	for (int k = 0; k < 3; k++) {
		floor_chunk(fl, n);
		stat_chunk(s, sb, n);
		get_chunk(s, g, n);
		stat_chunk(s, sb, n);
		set_chunk(s, st, n);
	}
	bench_note(g, "batches of %d gets of a 64 B value, key \"k\"", BATCH);
	bench_note(st, "batches of %d sets of a 64 B value (version bump, new block, old freed)",
		   BATCH);
	bench_note(fl, "load-acquire, 64 B memcpy, acquire fence, load: batches of %d", BATCH);
	cas_row(s, cas);
out:
	shmb_session_close(s);
	if (c)
		shmb_detach(c);
	bench_broker_stop(&ab);
}
