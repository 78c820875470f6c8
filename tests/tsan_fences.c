/* tsan_fences.c - the TSan build sees the orderings that ship: a missing fence is reported.
 *
 * tests/tsan_uatomic.h gives ThreadSanitizer liburcu's contract (uatomic_read/set relaxed, the
 * void read-modify-writes relaxed, uatomic_xchg/cmpxchg/add_return SEQ_CST, cmm_smp_* fences
 * modelled as C11 fences), so that a fence the sources forgot shows up as a data race. This
 * program proves it on the message-passing shapes the sources use: one thread writes plain data
 * and then an atomic flag, another waits for the flag and then reads the data. Each shape is run
 * with its fences (TSan must be silent) and with one fence left out or misplaced (TSan must report
 * the race on the data). Under the previous mapping (every load acquire, every store release)
 * the broken shapes all passed silently.
 *
 * Run with no argument, it runs every case in a child process of its own (this program again,
 * with the case's name) under TSAN_OPTIONS=halt_on_error=1:exitcode=66 and checks the outcome:
 * a clean case must exit 0 without a report, a broken one must exit 66 with a "data race" report.
 * Exit status 0 when every case behaved. Built and registered only with -DSHMB_SANITIZE=thread
 * (tests/CMakeLists.txt, label "tsan"). */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#if defined(__SANITIZE_THREAD__) /* GCC */
#define UNDER_TSAN 1
#elif defined(__has_feature) /* clang */
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#error "tsan_fences.c is built only with -fsanitize=thread (tests/CMakeLists.txt)"
#endif

#define TSAN_EXIT 66

/* What the writer hands over (plain) and the flag that announces it (atomic). */
static int data;
static uint32_t flag;

enum shape {
	WMB_RMB,
	NO_WMB,
	NO_RMB,
	EARLY_WMB,
	XCHG_RMB,
	XCHG_NO_RMB,
	WMB_CMPXCHG,
	NO_WMB_CMPXCHG,
	MB_AND,
	NO_MB_AND,
	RELEASE_SEQUENCE,
};

static const struct {
	const char *name;
	int race; /* 1: TSan must report the race on data */
} shapes[] = {
	/* release fence + store / load + acquire fence (ledger entry, record LIVE, continuation) */
	[WMB_RMB] = { "wmb_rmb", 0 },
	[NO_WMB] = { "no_wmb", 1 },       /* the writer's fence left out */
	[NO_RMB] = { "no_rmb", 1 },       /* the reader's fence left out */
	[EARLY_WMB] = { "early_wmb", 1 }, /* the writer's fence before the data, not after it */
	/* commit by exchange / load + acquire fence (evr_publish, evr_read) */
	[XCHG_RMB] = { "xchg_rmb", 0 },
	[XCHG_NO_RMB] = { "xchg_no_rmb", 1 }, /* the reader's fence left out */
	/* release fence + store / compare-exchange (desc_take of a committed descriptor) */
	[WMB_CMPXCHG] = { "wmb_cmpxchg", 0 },
	[NO_WMB_CMPXCHG] = { "no_wmb_cmpxchg", 1 }, /* the writer's fence left out */
	/* full fence + uatomic_and / load + full fence (the touch before unsubscribe's bit clear) */
	[MB_AND] = { "mb_and", 0 },
	[NO_MB_AND] = { "no_mb_and", 1 }, /* cmm_smp_mb__before_uatomic_and left out */
	/* release fence + store, a third thread's relaxed uatomic_inc, load of its value +
	 * acquire fence: the increment continues the release sequence (C11 5.1.2.4) */
	[RELEASE_SEQUENCE] = { "release_sequence", 0 },
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static enum shape shape;

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *writer(void *arg)
{
	(void)arg;
	switch (shape) {
	case WMB_RMB:
	case NO_RMB:
	case WMB_CMPXCHG:
	case RELEASE_SEQUENCE:
		data = 42;
		cmm_smp_wmb();
		uatomic_set(&flag, 1);
		break;
	case NO_WMB:
	case NO_WMB_CMPXCHG:
		data = 42;
		uatomic_set(&flag, 1);
		break;
	case EARLY_WMB:
		cmm_smp_wmb();
		data = 42;
		uatomic_set(&flag, 1);
		break;
	case XCHG_RMB:
	case XCHG_NO_RMB:
		data = 42;
		uatomic_xchg(&flag, 1);
		break;
	case MB_AND:
		data = 42;
		cmm_smp_mb__before_uatomic_and();
		uatomic_and(&flag, 0);
		break;
	case NO_MB_AND:
		data = 42;
		uatomic_and(&flag, 0);
		break;
	}
	return NULL;
}

/* Waits (bounded) until the flag holds want; 0 when it did. */
static int await_flag(uint32_t want)
{
	int64_t deadline = mono_ms() + 30000;
	while (uatomic_read(&flag) != want)
		if (mono_ms() > deadline)
			return -1;
		else
			sched_yield();
	return 0;
}

static void *reader(void *arg)
{
	int *seen = arg;
	int ok = 0;
	switch (shape) {
	case WMB_RMB:
	case NO_WMB:
	case EARLY_WMB:
	case XCHG_RMB:
		ok = await_flag(1) == 0;
		cmm_smp_rmb();
		break;
	case NO_RMB:
	case XCHG_NO_RMB:
		ok = await_flag(1) == 0;
		break;
	case WMB_CMPXCHG:
	case NO_WMB_CMPXCHG: {
		int64_t deadline = mono_ms() + 30000;
		while (!(ok = uatomic_cmpxchg(&flag, 1, 2) == 1) && mono_ms() < deadline)
			sched_yield();
		break;
	}
	case MB_AND:
	case NO_MB_AND:
		ok = await_flag(0) == 0;
		cmm_smp_mb();
		break;
	case RELEASE_SEQUENCE:
		ok = await_flag(2) == 0;
		cmm_smp_rmb();
		break;
	}
	*seen = ok ? data : -1;
	return NULL;
}

/* RELEASE_SEQUENCE: a third thread bumps the flag from 1 to 2 with a relaxed increment. */
static void *bumper(void *arg)
{
	(void)arg;
	if (await_flag(1) == 0)
		uatomic_inc(&flag);
	return NULL;
}

/* One case, in this process: 0 when the reader saw the data (TSan decides the rest). */
static int run_shape(void)
{
	flag = shape == MB_AND || shape == NO_MB_AND ? 1 : 0;
	int seen = 0;
	pthread_t w, r, m;
	pthread_create(&r, NULL, reader, &seen);
	if (shape == RELEASE_SEQUENCE)
		pthread_create(&m, NULL, bumper, NULL);
	pthread_create(&w, NULL, writer, NULL);
	pthread_join(w, NULL);
	if (shape == RELEASE_SEQUENCE)
		pthread_join(m, NULL);
	pthread_join(r, NULL);
	if (seen != 42) {
		fprintf(stderr, "tsan_fences: %s: the reader saw %d, not 42\n", shapes[shape].name,
			seen);
		return 1;
	}
	return 0;
}

/* Runs case i in a child (this program again) and checks TSan's verdict; 0 when as expected. */
static int check_shape(const char *self, size_t i)
{
	int p[2];
	if (pipe(p) < 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(p[1], 2);
		close(p[0]);
		close(p[1]);
		setenv("TSAN_OPTIONS", "halt_on_error=1:exitcode=66", 1);
		execl(self, self, shapes[i].name, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	static char out[1 << 16];
	size_t n = 0;
	for (;;) {
		ssize_t k = read(p[0], out + n, sizeof out - 1 - n);
		if (k <= 0)
			break;
		n += (size_t)k;
		if (n == sizeof out - 1)
			break;
	}
	out[n] = '\0';
	close(p[0]);
	int st = 0;
	waitpid(pid, &st, 0);
	int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	int reported = strstr(out, "WARNING: ThreadSanitizer: data race") != NULL;
	int ok = shapes[i].race ? code == TSAN_EXIT && reported : code == 0 && !reported;
	printf("tsan_fences: %-17s %s (exit %d, %s)\n", shapes[i].name, ok ? "ok" : "FAILED", code,
	       reported ? "race reported" : "no report");
	if (!ok)
		fprintf(stderr, "tsan_fences: %s: expected %s; its output:\n%s\n", shapes[i].name,
			shapes[i].race ? "a data race report" : "a clean run", out);
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 2) {
		for (size_t i = 0; i < N_SHAPES; i++)
			if (strcmp(argv[1], shapes[i].name) == 0) {
				shape = (enum shape)i;
				return run_shape();
			}
		fprintf(stderr, "tsan_fences: unknown case %s\n", argv[1]);
		return 2;
	}
	int failures = 0;
	for (size_t i = 0; i < N_SHAPES; i++)
		failures += check_shape("/proc/self/exe", i) != 0;
	printf("tsan_fences: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
