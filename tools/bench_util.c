/* bench_util.c - shmbench's plumbing: statistics, waiting, child processes, the broker under
 * test, resident memory and the syscall counter (see bench.h). */
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void bench_sort(double *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
}

/* Nearest-rank percentile of sorted values. */
double bench_pct(const double *sorted, int n, double pct)
{
	if (n <= 0)
		return 0;
	int k = (int)(pct / 100.0 * n + 0.999999) - 1;
	if (k < 0)
		k = 0;
	if (k >= n)
		k = n - 1;
	return sorted[k];
}

void bench_add(struct bench_row *r, double ns)
{
	if (r->nacc == r->capacc) {
		int cap = r->capacc ? 2 * r->capacc : 1024;
		double *a = realloc(r->acc, sizeof(double) * (size_t)cap);
		if (!a)
			return;
		r->acc = a;
		r->capacc = cap;
	}
	r->acc[r->nacc++] = ns;
}

void bench_set_value(struct bench_row *r, double v)
{
	r->median = r->p99 = v;
	r->samples = 1;
	r->status = BS_OK;
}

void bench_finish(struct bench_row *r)
{
	if (r->status == BS_NONE && r->nacc > 0) {
		bench_sort(r->acc, r->nacc);
		r->median = bench_pct(r->acc, r->nacc, 50);
		r->p99 = bench_pct(r->acc, r->nacc, 99);
		r->samples = r->nacc;
		r->status = BS_OK;
		if (r->ops) {
			r->extra = (double)r->sys / (double)r->ops;
			size_t l = strlen(r->note);
			snprintf(r->note + l, sizeof r->note - l, "; %.3g syscalls per operation",
				 r->extra);
		}
		if (r->kind == BK_RATE) {
			/* The median window's rate, and the rate of the slow (p99) window. */
			r->median = 1e9 / r->median;
			r->p99 = 1e9 / r->p99;
			double secs = (double)r->ns_total / 1e9;
			bench_note(r,
				   "%llu events in %.2f s (mean %.2f M/s), %llu lost to overruns",
				   (unsigned long long)r->events, secs,
				   secs > 0 ? (double)r->events / secs / 1e6 : 0,
				   (unsigned long long)r->lost);
		}
	}
	free(r->acc);
	r->acc = NULL;
	r->nacc = r->capacc = 0;
}

static void vnote(struct bench_row *r, const char *fmt, va_list ap)
{
	vsnprintf(r->note, sizeof r->note, fmt, ap);
}

void bench_skip(struct bench_row *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vnote(r, fmt, ap);
	va_end(ap);
	r->status = BS_SKIPPED;
}

void bench_fail(struct bench_row *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vnote(r, fmt, ap);
	va_end(ap);
	r->status = BS_FAILED;
	fprintf(stderr, "shmbench: %s: %s\n", r->key, r->note);
}

void bench_note(struct bench_row *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vnote(r, fmt, ap);
	va_end(ap);
}

int bench_n(int base, int min)
{
	int n = (int)(base * bench_opt.scale);
	return n < min ? min : n;
}

void bench_tp_add(struct bench_row *r, struct bench_tp_shared *sh, uint64_t total)
{
	uint32_t nw = sh->nwin;
	if (nw < 2) {
		bench_fail(r, "too few windows (%u)", nw);
		return;
	}
	for (uint32_t i = 1; i < nw; i++)
		bench_add(r, (double)(sh->win_ns[i] - sh->win_ns[i - 1]) / BENCH_WINDOW);
	r->events += total;
	r->ns_total += sh->t_end - sh->t_start;
	for (int i = 0; i < BENCH_MAX_READERS; i++)
		r->lost += sh->lost[i];
}

/* ---- waiting ---- */

void bench_spin_ns(uint64_t ns)
{
	uint64_t end = bench_ns() + ns;
	while (bench_ns() < end)
		__builtin_ia32_pause();
}

void bench_relax(unsigned *spins)
{
	if (++*spins < 200)
		__builtin_ia32_pause();
	else
		sched_yield();
}

/* ---- placement ---- */

void bench_pin(int cpu)
{
	static cpu_set_t all;
	static int have_all;
	if (!have_all) {
		CPU_ZERO(&all);
		if (sched_getaffinity(0, sizeof all, &all) < 0)
			return;
		have_all = 1;
	}
	if (bench_opt.no_pin)
		return;
	if (cpu < 0) {
		sched_setaffinity(0, sizeof all, &all);
		return;
	}
	int n = CPU_COUNT(&all), k = cpu % (n ? n : 1);
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &all) && k-- == 0) {
			cpu_set_t one;
			CPU_ZERO(&one);
			CPU_SET(i, &one);
			sched_setaffinity(0, sizeof one, &one);
			return;
		}
}

/* ---- shared memory and children ---- */

void *bench_shared_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

void bench_shared_free(void *p, size_t len)
{
	if (p)
		munmap(p, len);
}

pid_t bench_fork(int (*fn)(void *arg), void *arg)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(fn(arg));
	}
	return pid;
}

int bench_wait(pid_t pid, int timeout_ms)
{
	if (pid <= 0)
		return -1;
	/* Sleep in poll() on a pidfd: a polling loop would wake up and steal a CPU from the
	 * processes being measured. */
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
	uint64_t end = bench_ns() + (uint64_t)timeout_ms * 1000000u;
	int st;
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			if (pfd >= 0)
				close(pfd);
			return -1;
		}
		uint64_t now = bench_ns();
		if (now > end) {
			fprintf(stderr, "shmbench: child %d did not finish in %d ms: killed\n",
				(int)pid, timeout_ms);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			if (pfd >= 0)
				close(pfd);
			return -1;
		}
		if (pfd >= 0) {
			struct pollfd p = { .fd = pfd, .events = POLLIN };
			poll(&p, 1, (int)((end - now) / 1000000u) + 1);
		} else {
			usleep(20000);
		}
	}
	if (pfd >= 0)
		close(pfd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- the broker ---- */

static int broker_seq;

/* Brokers running now, for bench_cleanup_all() (also from a signal handler). */
#define MAX_LIVE 8
static struct bench_broker *live[MAX_LIVE];

static void live_set(struct bench_broker *b, int on)
{
	for (int i = 0; i < MAX_LIVE; i++)
		if (on ? live[i] == NULL : live[i] == b) {
			live[i] = on ? b : NULL;
			return;
		}
}

void bench_cleanup_all(void)
{
	for (int i = 0; i < MAX_LIVE; i++)
		if (live[i])
			bench_broker_stop(live[i]);
}

int bench_broker_start(struct bench_broker *b, const char *const *args)
{
	memset(b, 0, sizeof *b);
	snprintf(b->name, sizeof b->name, "bench%d_%d", (int)getpid(), broker_seq++);
	const char *rt = getenv("SHMB_RUNTIME_DIR");
	snprintf(b->log, sizeof b->log, "%s/%s.log", rt ? rt : "/tmp", b->name);
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	char fdtxt[16];
	const char *argv[64];
	int n = 0;
	argv[n++] = bench_opt.brokerd;
	argv[n++] = "--name";
	argv[n++] = b->name;
	argv[n++] = "--foreground";
	argv[n++] = "--unlink-on-exit";
	argv[n++] = "--ready-fd";
	argv[n++] = fdtxt;
	for (int i = 0; args && args[i] && n < 62; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		bench_pin(-1);       /* not the driver's CPU */
		int wfd = dup(p[1]); /* without O_CLOEXEC */
		snprintf(fdtxt, sizeof fdtxt, "%d", wfd);
		int log = open(b->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (log >= 0) {
			dup2(log, STDERR_FILENO);
			dup2(log, STDOUT_FILENO);
		}
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	b->pid = pid;
	live_set(b, 1);
	char buf[8] = { 0 };
	ssize_t got = 0;
	for (;;) {
		got = read(p[0], buf, sizeof buf - 1);
		if (got >= 0 || errno != EINTR)
			break;
	}
	close(p[0]);
	if (got <= 0 || strncmp(buf, "ready", 5) != 0) {
		fprintf(stderr, "shmbench: shmbrokerd did not start (log %s):\n", b->log);
		FILE *f = fopen(b->log, "r");
		if (f) {
			char line[512];
			while (fgets(line, sizeof line, f))
				fprintf(stderr, "  %s", line);
			fclose(f);
		}
		bench_broker_stop(b);
		return -1;
	}
	return 0;
}

void bench_broker_stop(struct bench_broker *b)
{
	live_set(b, 0);
	if (b->pid > 0) {
		kill(b->pid, SIGTERM);
		if (bench_wait(b->pid, 10000) != 0)
			fprintf(stderr, "shmbench: broker %s did not stop cleanly\n", b->name);
		b->pid = 0;
	}
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	shm_unlink(shm); /* --unlink-on-exit removed it already, unless the broker was killed */
	unlink(b->log);
}

long long bench_rss_bytes(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long long kb = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/* ---- syscall counter ---- */

static long tracepoint_id(void)
{
	static const char *const paths[] = {
		"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
		"/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
	};
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		FILE *f = fopen(paths[i], "r");
		if (!f)
			continue;
		long id = -1;
		if (fscanf(f, "%ld", &id) != 1)
			id = -1;
		fclose(f);
		if (id >= 0)
			return id;
	}
	return -1;
}

static uint64_t proc_io_syscalls(void)
{
	FILE *f = fopen("/proc/self/io", "r");
	if (!f)
		return 0;
	char line[128];
	unsigned long long v, sum = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "syscr: %llu", &v) == 1 || sscanf(line, "syscw: %llu", &v) == 1)
			sum += v;
	fclose(f);
	return sum;
}

void bench_sysctr_open(struct bench_sysctr *s)
{
	*s = (struct bench_sysctr){ .fd = -1 };
	/* The fallback's own cost: reading /proc/self/io is an open, a read of the text and a
	 * read that finds EOF (stdio), and the reads count in syscr. Measured, not assumed. */
	uint64_t first = proc_io_syscalls(), second = proc_io_syscalls();
	s->self = second > first ? second - first : 0;
	long id = tracepoint_id();
	if (id < 0)
		return;
	struct perf_event_attr a = {
		.type = PERF_TYPE_TRACEPOINT,
		.size = sizeof a,
		.config = (uint64_t)id,
		.disabled = 1,
	};
	s->fd = (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
	s->exact = s->fd >= 0;
}

void bench_sysctr_start(struct bench_sysctr *s)
{
	if (s->fd >= 0) {
		ioctl(s->fd, PERF_EVENT_IOC_RESET, 0);
		ioctl(s->fd, PERF_EVENT_IOC_ENABLE, 0);
	} else {
		s->start = proc_io_syscalls();
	}
}

uint64_t bench_sysctr_stop(struct bench_sysctr *s)
{
	if (s->fd >= 0) {
		ioctl(s->fd, PERF_EVENT_IOC_DISABLE, 0);
		uint64_t v = 0;
		if (read(s->fd, &v, sizeof v) != (ssize_t)sizeof v)
			return 0;
		return v > 0 ? v - 1 : 0; /* the DISABLE ioctl itself */
	}
	/* Minus what one reading of /proc/self/io counts itself (bench_sysctr_open). */
	uint64_t now = proc_io_syscalls();
	return now > s->start + s->self ? now - s->start - s->self : 0;
}

void bench_sysctr_close(struct bench_sysctr *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}
