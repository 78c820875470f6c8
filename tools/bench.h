/* bench.h - shmbench, the benchmark driver: what its files share.
 *
 * shmbench measures shmbroker (the real shmbrokerd and libshmb) and, in the same run, the
 * baselines it is judged against: the floor of the hardware and kernel (raw eventfds, a spinning
 * cache line, raw shared-memory rings written here with plain C11 atomics) and what users run
 * today (Redis over loopback, through hiredis). Every figure is a row of one result table; the
 * driver (shmbench.c) prints the rows, their ratios to the baselines and the targets, and
 * writes them as JSON.
 *
 * Files: bench_util.c (clocks, statistics, child processes, the broker and the syscall counter),
 * bench_floor.c (raw baselines), bench_shmb.c and bench_shmb_tp.c (shmbroker scenarios),
 * bench_redis.c (Redis), shmbench.c (options, the order of the run, the table, the JSON).
 *
 * Same run, same moment: a virtual machine's speed drifts by several times within a minute, so
 * each shmbroker row is measured in chunks that alternate with the chunks of its baselines
 * (baseline, shmbroker, baseline, shmbroker, ...), and its ratio compares like with like.
 *
 * Method. Latency rows are sets of samples: a sample is the average time per operation of a
 * batch (batches of 1000 for operations of nanoseconds, one operation per sample where one takes
 * microseconds); a row reports the median and the 99th percentile of its samples. Throughput rows
 * are sampled the same way: a reader timestamps every window of events, a sample is the time per
 * event in a window, and events/s is 1e9 / median. Clocks: clock_gettime(CLOCK_MONOTONIC) (vDSO).
 * Every loop is bounded by a count and by a deadline; a child process that does not finish in
 * time is killed and its row reported as failed. */
#ifndef SHMB_BENCH_H
#define SHMB_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "shmb.h"

/* ---- results ---- */

enum bench_kind {
	BK_TIME = 0, /* ns per operation, lower is better */
	BK_RATE,     /* events per second (median and p99 are derived from ns per event) */
	BK_COUNT,    /* a count per operation (syscalls per event) */
	BK_BYTES,    /* bytes (resident memory) */
};

enum bench_status { BS_NONE = 0, BS_OK, BS_SKIPPED, BS_FAILED };

struct bench_row {
	const char *key;   /* JSON key, stable */
	const char *label; /* what the table prints */
	int kind;          /* enum bench_kind */
	int status;        /* enum bench_status */
	double median;     /* ns, events/s, count or bytes */
	double p99;        /* the slow end: p99 of ns; for rates the rate at the p99 window */
	int samples;
	double extra;   /* row-specific (e.g. syscalls seen during a latency row) */
	char note[240]; /* how it was measured, or why it was skipped */
	/* Accumulated over the chunks of a row (bench_add, bench_finish). */
	double *acc; /* samples: ns per operation (for rates: ns per event of a window) */
	int nacc, capacc;
	uint64_t sys, ops;               /* syscalls seen during ops operations */
	uint64_t events, ns_total, lost; /* rates: events, their time, overruns */
};

/* The row of key (registered by shmbench.c); aborts on an unknown key (a programming error). */
struct bench_row *bench_row(const char *key);
/* Adds one sample (ns per operation) to a row; rows are measured in chunks that alternate with
 * their baselines, so that drift of the machine hits both alike. */
void bench_add(struct bench_row *r, double ns);
/* Turns a row's samples into its median and p99 (rates: events/s) unless it failed or was
 * skipped; status OK when it has samples. */
void bench_finish(struct bench_row *r);
/* Fills a row from one value (memory, syscalls per event); status OK. */
void bench_set_value(struct bench_row *r, double v);
void bench_skip(struct bench_row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bench_fail(struct bench_row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bench_note(struct bench_row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run options (shmbench.c). */
struct bench_opts {
	double scale; /* multiplies sample counts and durations (--quick: 0.2) */
	int verbose;
	int skip_million;        /* --no-million: skip the 1,000,000-session row */
	const char *brokerd;     /* path of shmbrokerd */
	const char *only;        /* run only the steps whose name contains this */
	int no_pin;              /* --no-pin: leave placement to the scheduler */
	const char *segment_dir; /* --segment-dir: the open+touch brokers' segment_dir and where
				  * the lookup floor maps its file (NULL: /dev/shm, anonymous) */
};
extern struct bench_opts bench_opt;

/* Scaled sample count, at least min. */
int bench_n(int base, int min);

/* ---- clocks ---- */
static inline uint64_t bench_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
/* Busy-waits for ns nanoseconds. */
void bench_spin_ns(uint64_t ns);
/* Spin-then-yield step for a waiting loop: call with an increasing counter. */
void bench_relax(unsigned *spins);

/* ---- placement ---- */
/* Pins the calling process to CPU (cpu mod the CPUs it may use); cpu < 0 unpins (all CPUs).
 * Processes that talk to each other are put on different CPUs where there are enough, so a
 * figure does not depend on where the scheduler happened to put them (--no-pin disables it). */
void bench_pin(int cpu);

/* ---- shared memory between the driver and its children ---- */
/* An anonymous MAP_SHARED mapping of len bytes (zeroed), inherited by children. NULL on error. */
void *bench_shared_alloc(size_t len);
void bench_shared_free(void *p, size_t len);

/* ---- child processes ---- */
/* Forks a child running fn(arg) and _exit()ing with its return value; it dies with the driver
 * (PR_SET_PDEATHSIG). Returns the pid or -1. */
pid_t bench_fork(int (*fn)(void *arg), void *arg);
/* Waits up to timeout_ms for pid; kills it after that. Returns its exit code, or -1 when it was
 * killed or crashed. */
int bench_wait(pid_t pid, int timeout_ms);

/* ---- the broker under test ---- */
struct bench_broker {
	pid_t pid;
	char name[64];
	char log[256];
};
/* Starts shmbrokerd --name <unique> --foreground --ready-fd N --unlink-on-exit <args...>
 * (args NULL-terminated, may be NULL) and waits for "ready". Returns 0, or -1 after printing
 * the broker's log. */
int bench_broker_start(struct bench_broker *b, const char *const *args);
/* SIGTERM, wait (SIGKILL after 10 s), remove the segment if it is still there. */
void bench_broker_stop(struct bench_broker *b);
/* Stops every broker still running and removes its segment (exit paths, signal handler). */
void bench_cleanup_all(void);
/* Resident set size of a process in bytes (VmRSS), or -1. */
long long bench_rss_bytes(pid_t pid);

/* ---- syscall counting (perf tracepoint raw_syscalls:sys_enter on this process) ---- */
struct bench_sysctr {
	int fd;    /* perf event fd, -1 when unavailable */
	int exact; /* 1: tracepoint count; 0: /proc/self/io syscr+syscw (reads and writes only) */
	uint64_t start;
	uint64_t self; /* /proc/self/io: reads and writes one reading of it counts (calibrated) */
};
void bench_sysctr_open(struct bench_sysctr *s);
void bench_sysctr_start(struct bench_sysctr *s);
/* Syscalls since start (excluding the counter's own). */
uint64_t bench_sysctr_stop(struct bench_sysctr *s);
void bench_sysctr_close(struct bench_sysctr *s);

/* ---- statistics ---- */
void bench_sort(double *v, int n);
double bench_pct(const double *sorted, int n, double pct);

/* Flow control shared by the throughput scenarios (raw rings and shmbroker alike): each reader
 * publishes the last id it consumed, on its own cache line, every BENCH_POS_EVERY events and
 * whenever it runs dry; a producer keeps at most BENCH_LEAD ids ahead of the slowest reader. */
#define BENCH_POS_EVERY 32
#define BENCH_LEAD 128
#define BENCH_MAX_READERS 4
#define BENCH_MAX_WINDOWS 4096
struct bench_tp_shared {
	_Alignas(64) uint64_t reader_pos[BENCH_MAX_READERS][8]; /* [i][0], one line each */
	_Alignas(64) uint32_t ready;
	uint32_t go;
	uint32_t pubs_done;
	uint32_t failed;
	_Alignas(64) uint64_t read[BENCH_MAX_READERS]; /* events each reader consumed */
	uint64_t lost[BENCH_MAX_READERS];              /* events a reader missed (overruns) */
	uint64_t t_start, t_end;                       /* reader 0: first and last event */
	uint32_t nwin;
	uint64_t win_ns[BENCH_MAX_WINDOWS]; /* reader 0: timestamp per window */
};
#define BENCH_WINDOW 4096 /* events per throughput window */

/* Minimum of the readers' published positions. */
static inline uint64_t bench_min_pos(struct bench_tp_shared *sh, int readers)
{
	uint64_t m = UINT64_MAX;
	for (int i = 0; i < readers; i++) {
		uint64_t p = __atomic_load_n(&sh->reader_pos[i][0], __ATOMIC_ACQUIRE);
		if (p < m)
			m = p;
	}
	return m;
}
/* Placement of throughput processes: readers and producers interleaved (r0 p0 r1 p1 r2 ...),
 * the k-th on CPU k, so a producer and its first reader never share a CPU. */
static inline int bench_tp_cpu(int is_reader, int i, int producers, int readers)
{
	int k = 0;
	for (int j = 0; j < BENCH_MAX_READERS + 2; j++) {
		if (j < readers) {
			if (is_reader && j == i)
				return k;
			k++;
		}
		if (j < producers) {
			if (!is_reader && j == i)
				return k;
			k++;
		}
	}
	return 0;
}
/* Adds reader 0's windows (and the run's totals) to a rate row. */
void bench_tp_add(struct bench_row *r, struct bench_tp_shared *sh, uint64_t total);

/* ---- scenarios: each call measures one chunk of samples and adds them to its row ---- */

/* bench_floor.c */
void floor_eventfd_pingpong(int use_epoll, int n);
void floor_eventfd_wake(int n);
void floor_cacheline(int n);
void floor_ring_publish(int n);
/* The memory accesses of an index lookup over nrec records, alone (row key). */
void floor_lookup(const char *key, uint32_t nrec, int n);
void floor_ring_replay(int n);
void floor_ring_tp(const char *key, int producers, int readers, uint64_t total);

/* bench_redis.c: redis_start() starts redis-server (or marks every Redis row skipped and makes
 * the other calls no-ops) and measures its resident memory; redis_stop() stops it. */
void redis_start(void);
void redis_get_chunk(int n);
void redis_xadd_chunk(int n);
void redis_xread_chunk(int n);
void redis_stop(void);

/* bench_shmb.c */
void shmb_broker_rss(void);
/* open+touch at 1,000 / 100,000 / 1,000,000 sessions in interleaved rounds; between(round,
 * rounds) runs before each round (the driver measures a chunk of the baseline there). */
void shmb_open_touch(void (*between)(int round, int rounds));
/* The broker shared by the event scenarios (defaults, 64 sessions) and a client on it. */
int shmb_events_start(void);
void shmb_events_stop(void);
void shmb_publish_chunk(int with_sub, int n);
void shmb_asleep_chunk(int n);
void shmb_wake_chunk(int n);
void shmb_replay_chunk(int n);

/* bench_shmb_tp.c (on the events broker) */
void shmb_tp(const char *key, int producers, int readers, uint64_t total);
void shmb_syscalls(const char *key, uint64_t total, uint64_t pace_ns);
/* bench_attrs.c: attribute get, set and contended set_if rows (own broker). */
void shmb_attr_bench(void);
/* bench_waits.c: the wake_thread step (shmb_cursor_wait round trip and its futex floor, publish
 * with a cursor open and nobody waiting), on the events broker. */
void bench_waits_step(void);
/* The events broker's name and the driver's client on it (bench_shmb.c). */
const char *shmb_events_name(void);
shmb_client *shmb_events_client(void);

#endif
