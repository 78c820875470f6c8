/* torture.c - the crash-isolation torture test: real shmbrokerd, real workers, real SIGKILLs.
 *
 *     torture [--seconds N] [--workers N] [--seed N] [--stall-ms N] [--kill-every-ms N]
 *             [--broker-every-ms N] [--no-faults] [--verbose]
 *
 * The parent starts a broker and N worker processes (tests/torture_worker.c: each attaches and
 * runs a mutator thread, creating, deleting, opening and publishing, and a reader thread,
 * watching sessions subscribed or polling), then for N seconds plays the killer: SIGKILL to a
 * random worker every few hundred ms (respawned at once), SIGKILL to the broker every few
 * seconds (restarted after a random pause, so workers run for a while with no broker), and, in a
 * fault-injection build, some workers and brokers started with a SHMB_FAULT point armed, so they
 * die (or stop, and are later continued or killed) exactly there. Some restarted brokers are
 * SIGSTOPped right after they are ready, for longer than the workers' control timeout (shortened
 * to T_CTL_TIMEOUT_MS), then continued: the red team's stalled restart (issue 10), where the
 * workers' resumes time out while the broker holds them queued. Every few seconds the real
 * shmctl verify runs against the live segment.
 *
 * Invariants, checked while it runs (by the readers, torture_worker.c) and at the end (here):
 *  - every reader sees strictly increasing ids, every payload's checksum is valid and belongs to
 *    its session, and every event whose publish returned an id reaches every reader that was
 *    reading the session then (to the end of its watch), unless that reader was told
 *    SHMB_EOVERRUN for it; a returned publish never comes back as a gap record;
 *  - no live worker loses its worker slot: after each broker call a worker checks its slot is
 *    still LIVE with its pid and generation (the broker releases a slot only on death or detach);
 *  - no session is lost: an SHMB_ENOENT is legitimate only after a delete was attempted on the
 *    session or once it may have expired (not opened for the TTL);
 *  - no stream stays blocked behind an uncommitted id for more than the stall budget (200 ms)
 *    once the system alone is to blame (the blocking claim's holder is dead, the broker is up:
 *    docs/reliability.md, "Stalls"), and no subscriber sleeps through a commit or is woken more
 *    than the stall budget after it (lost and late wakeups);
 *  - shmctl verify finds nothing, during the run and at the end;
 *  - once every worker has exited (checked against a broker running unarmed): no worker slot, reader slot, crash-ledger entry or
 *    subscriber bit remains, and sessions_live == created - deleted - expired == LIVE records;
 *  - no process crashes (only our SIGKILLs and the fault points end one), the broker always
 *    adopts its segment, and a SIGTERM stops it with status 0.
 * It prints one summary line (kills, broker restarts, events checked, violations) and exits 0,
 * or 1 when any invariant was violated (the violations are listed), 2 on a usage error, 3 when
 * the run could not be set up. It is bounded in time (a hard deadline kills everything), kills
 * every child it started, and removes its segment and runtime directory in every case. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "fault.h"
#include "layout.h"
#include "seg.h"
#include "torture.h"

#ifndef SHMBROKERD_PATH
#error "SHMBROKERD_PATH must be defined by the build (tests/CMakeLists.txt)"
#endif
#ifndef SHMCTL_PATH
#error "SHMCTL_PATH must be defined by the build (tests/CMakeLists.txt)"
#endif

struct t_shared *T;

#define T_STR_(x) #x
#define T_STR(x) T_STR_(x)

/* The broker's configuration: small, so rings lap often and every path is taken. */
static const char *const broker_args[] = {
	"--max-sessions",
	"64",
	"--max-workers",
	"16",
	"--readers-per-worker",
	"4",
	"--ring-events",
	"128",
	"--ring-bytes",
	"32768",
	"--max-event-bytes",
	"1024",
	"--inactivity-ttl-ms",
	T_STR(T_TTL_MS),
	"--sweep-interval-ms",
	"100",
	NULL,
};

#if SHMB_FAULT_ENABLED
static const char *const worker_faults[] = {
	"client.attach",          "client.read_section",         "client.read_section:stop",
	"client.publish.claimed", "client.publish.claimed:stop", "publish.write",
	"publish.write:stop",
};
static const char *const broker_faults[] = {
	"broker.link",          "broker.link.linked", "broker.create.reply", "broker.unlink",
	"broker.unlink.marked", "broker.reclaim",     "broker.adopt",        "broker.hello",
};
#define N_WORKER_FAULTS (sizeof worker_faults / sizeof worker_faults[0])
#define N_BROKER_FAULTS (sizeof broker_faults / sizeof broker_faults[0])
#endif

static struct {
	/* options */
	double seconds;
	uint32_t workers;
	uint64_t seed;
	uint32_t kill_every_ms, broker_every_ms;
	int faults, verbose;
	/* where */
	char runtime[128], log[256], shm[96];
	/* the broker */
	volatile pid_t broker;
	const char *broker_fault;
	int broker_killed_by_us;
	int64_t broker_restart_at; /* 0: none scheduled */
	int64_t broker_stop_at;    /* a SIGSTOP scheduled right after a restart; 0: none */
	int64_t broker_cont_at;    /* stopped by us: when to continue it; 0: not stopped */
	/* the workers */
	volatile pid_t wpid[T_MAX_WORKERS];
	const char *wfault[T_MAX_WORKERS];
	int wkilled[T_MAX_WORKERS];
	int64_t wresume_at[T_MAX_WORKERS]; /* stopped: when to continue or kill it */
	/* figures */
	uint64_t worker_kills, worker_fault_deaths, worker_stops, worker_spawns;
	uint64_t broker_kills, broker_fault_deaths, broker_restarts, verify_runs, broker_stops;
	uint64_t rng;
} P = { .seconds = 15, .workers = 4, .kill_every_ms = 300, .broker_every_ms = 3000, .faults = 1 };

/* ---------------------------------------------------------------- shared helpers */

int64_t t_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void t_violation(const char *fmt, ...)
{
	uint32_t i = uatomic_add_return(&T->n_viol, 1) - 1;
	if (i >= T_MAX_VIOL)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *m = T->viol[i];
	int n = snprintf(m, sizeof T->viol[i], "[%.2f s] ",
			 (double)(t_now_ns() - T->start_ns) / 1e9);
	vsnprintf(m + n, sizeof T->viol[i] - (size_t)n, fmt, ap);
	va_end(ap);
}

static struct t_pid *pid_slot(pid_t pid, int insert)
{
	for (uint32_t i = 0; i < T_PID_TABLE; i++) {
		struct t_pid *p = &T->pids[((uint32_t)pid * 2654435761u + i) % T_PID_TABLE];
		int32_t have = uatomic_read(&p->pid);
		if (have == pid)
			return p;
		if (have == 0) {
			if (!insert)
				return NULL;
			uatomic_set(&p->killed_ns, 0);
			uatomic_set(&p->continued_ns, 0);
			uatomic_set(&p->pid, pid);
			return p;
		}
	}
	return NULL;
}

int64_t t_killed_ns(pid_t pid)
{
	struct t_pid *p = pid_slot(pid, 0);
	return p ? uatomic_read(&p->killed_ns) : 0;
}

int64_t t_continued_ns(pid_t pid)
{
	struct t_pid *p = pid_slot(pid, 0);
	return p ? uatomic_read(&p->continued_ns) : 0;
}

/* SIGCONT to a stopped worker, its time recorded first (its reader excuses a late wakeup). */
static void worker_continue(uint32_t slot)
{
	struct t_pid *p = pid_slot(P.wpid[slot], 1);
	if (p)
		uatomic_set(&p->continued_ns, t_now_ns());
	kill(P.wpid[slot], SIGCONT);
}

static uint64_t rnd(void)
{
	uint64_t x = P.rng ? P.rng : 0x9e3779b97f4a7c15u;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	P.rng = x;
	return x * 0x2545f4914f6cdd1du;
}

static int64_t ms_ns(int64_t ms)
{
	return ms * 1000000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	if (!P.verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "torture [%6.2f s] ", (double)(t_now_ns() - T->start_ns) / 1e9);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---------------------------------------------------------------- a publisher stopped for long */

/* Issue 10, item 5: every few seconds one worker is started armed with publish.write:stop and,
 * once stopped there (owning its event's ring slots, written, uncommitted), stays stopped for
 * 1.5-2.5 s, longer than a publisher waits for an older lap (EVR_WAIT_MS, 1 s), and is then
 * continued, never killed by the killer: the other publishers of its session give up with
 * SHMB_EOVERRUN (sleeping, not spinning), the broker writes their abandoned ids as gaps once it
 * commits, and sessions deleted meanwhile are reclaimed. Every invariant above still holds (its
 * readers excuse the wait while the holder is alive; afterwards the stall budget applies). */
static struct {
	int slot;        /* the armed or stopped worker's slot, -1 none */
	int64_t next_ns; /* when the next one may be armed */
	uint64_t done;   /* stopped for long and continued */
} L = { .slot = -1 };

/* worker_spawn: the fault of the worker about to start in slot (fault: the random one). */
static const char *long_stop_arm(uint32_t slot, const char *fault)
{
	if (!P.faults || L.slot >= 0 || t_now_ns() < L.next_ns)
		return fault;
	L.slot = (int)slot;
	return "publish.write:stop";
}

/* The long-stopped worker's slot is spared by the killer; 1 when slot is it. */
static int long_stop_is(uint32_t slot)
{
	return (int)slot == L.slot;
}

/* reap: slot stopped (when it is ours, for long), or ended (it is ours no more). */
static void long_stop_event(uint32_t slot, int stopped)
{
	if (!long_stop_is(slot))
		return;
	if (stopped) {
		P.wresume_at[slot] = t_now_ns() + ms_ns(1500 + (int64_t)(rnd() % 1000));
		say("worker %u stopped mid-publish: held for %lld ms", slot,
		    (long long)((P.wresume_at[slot] - t_now_ns()) / 1000000));
		return;
	}
	L.slot = -1;
	L.next_ns = t_now_ns() + ms_ns(2000 + (int64_t)(rnd() % 3000));
}

/* Main loop, slot's resume time come: 1 when it is ours (always continued). */
static int long_stop_resume(uint32_t slot)
{
	if (!long_stop_is(slot))
		return 0;
	L.done++;
	L.slot = -1;
	L.next_ns = t_now_ns() + ms_ns(2000 + (int64_t)(rnd() % 3000));
	return 1;
}

/* ---------------------------------------------------------------- cleanup, in every case */

static void remove_runtime(void)
{
	DIR *d = opendir(P.runtime);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char p[512];
		snprintf(p, sizeof p, "%s/%s", P.runtime, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(P.runtime);
}

/* SIGKILL to every child we started (async-signal-safe: also used by the signal handler). */
static void kill_all(void)
{
	if (P.broker > 0)
		kill(P.broker, SIGKILL);
	for (uint32_t i = 0; i < T_MAX_WORKERS; i++)
		if (P.wpid[i] > 0)
			kill(P.wpid[i], SIGKILL);
}

/* Files the runtime directory can hold, precomputed for the signal handler. */
static char rt_files[4][300];

static void on_fatal_signal(int sig)
{
	kill_all();
	shm_unlink(P.shm);
	for (int i = 0; i < 4; i++)
		unlink(rt_files[i]);
	rmdir(P.runtime);
	static const char msg[] = "torture: interrupted or past its hard deadline: killed every "
				  "child, removed the segment\n";
	ssize_t n = write(2, msg, sizeof msg - 1);
	(void)n;
	signal(sig, SIG_DFL);
	_exit(3);
}

static void reap_all(void)
{
	kill_all();
	int64_t end = t_now_ns() + ms_ns(10000);
	while (t_now_ns() < end && waitpid(-1, NULL, WNOHANG) >= 0) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	P.broker = 0;
	for (uint32_t i = 0; i < T_MAX_WORKERS; i++)
		P.wpid[i] = 0;
}

static void print_log_tail(void)
{
	int fd = open(P.log, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	off_t size = lseek(fd, 0, SEEK_END);
	off_t from = size > 3000 ? size - 3000 : 0;
	char buf[3001];
	ssize_t n = pread(fd, buf, 3000, from);
	close(fd);
	if (n > 0) {
		buf[n] = '\0';
		fprintf(stderr, "torture: last lines of the broker's log:\n%s\n", buf);
	}
}

/* ---------------------------------------------------------------- the broker */

/* Starts the broker (with P.broker_fault armed, if any) and waits for "ready". Returns 0 when
 * ready, 1 when it died before (a fault point during adoption), -1 when it failed otherwise. */
static int broker_start(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	const char *argv[40];
	int n = 0;
	char fdbuf[16];
	argv[n++] = SHMBROKERD_PATH;
	argv[n++] = "--name";
	argv[n++] = T->name;
	argv[n++] = "--foreground";
	argv[n++] = "--ready-fd";
	argv[n++] = fdbuf;
	for (int i = 0; broker_args[i]; i++)
		argv[n++] = broker_args[i];
	argv[n] = NULL;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int wfd = fcntl(p[1], F_DUPFD, 10); /* no O_CLOEXEC: the broker inherits it */
		snprintf(fdbuf, sizeof fdbuf, "%d", wfd);
		int log = open(P.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (log < 0 || null < 0 || wfd < 0)
			_exit(127);
		dup2(null, 0);
		dup2(log, 1);
		dup2(log, 2);
		if (P.broker_fault)
			setenv("SHMB_FAULT", P.broker_fault, 1);
		else
			unsetenv("SHMB_FAULT");
		signal(SIGPIPE, SIG_DFL);
		execv(SHMBROKERD_PATH, (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	P.broker = pid;
	P.broker_killed_by_us = 0;
	char buf[16] = "";
	size_t got = 0;
	int64_t end = t_now_ns() + ms_ns(20000);
	while (got < sizeof buf - 1 && !strchr(buf, '\n')) {
		int64_t left = (end - t_now_ns()) / 1000000;
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
			break;
		ssize_t k = read(p[0], buf + got, sizeof buf - 1 - got);
		if (k <= 0)
			break;
		got += (size_t)k;
		buf[got] = '\0';
	}
	close(p[0]);
	if (!strcmp(buf, "ready\n")) {
		uatomic_set(&T->broker_ready_ns, t_now_ns());
		uatomic_set(&T->broker_up, 1);
		say("broker %d ready%s%s", (int)pid, P.broker_fault ? ", armed with " : "",
		    P.broker_fault ? P.broker_fault : "");
		return 0;
	}
	int st = 0;
	pid_t r = waitpid(pid, &st, 0); /* it exited, or we give up on it */
	P.broker = 0;
	if (r == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && P.broker_fault) {
		P.broker_fault_deaths++;
		say("broker died during start-up at %s", P.broker_fault);
		return 1;
	}
	t_violation("the broker did not start (%s %d): adoption refused the segment?",
		    WIFEXITED(st) ? "exit status" : "signal",
		    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	return -1;
}

/* Starts the broker, retrying after start-up fault deaths. Returns 0 or -1. */
static int broker_up(void)
{
	for (int tries = 0; tries < 5; tries++) {
		int rc = broker_start();
		if (rc == 0)
			return 0;
		if (rc < 0)
			return -1;
		P.broker_fault = NULL; /* died at its point: start again clean */
	}
	return -1;
}

/* Continues a broker we stopped: it serves again from now (T->broker_ready_ns). */
static void broker_continue(void)
{
	if (P.broker <= 0 || !P.broker_cont_at)
		return;
	P.broker_cont_at = 0;
	kill(P.broker, SIGCONT);
	uatomic_set(&T->broker_ready_ns, t_now_ns());
	uatomic_set(&T->broker_up, 1);
	say("SIGCONT broker %d", (int)P.broker);
}

/* The stalled restart: SIGSTOP for longer than the workers' control timeout. */
static void broker_stop(void)
{
	P.broker_stop_at = 0;
	if (P.broker <= 0)
		return;
	uatomic_set(&T->broker_up, 0); /* not serving: wakeups and stalls are excused meanwhile */
	kill(P.broker, SIGSTOP);
	P.broker_cont_at = t_now_ns() + ms_ns(T_CTL_TIMEOUT_MS + 100 + (int64_t)(rnd() % 400));
	P.broker_stops++;
	say("SIGSTOP broker %d", (int)P.broker);
}

static void broker_kill(void)
{
	if (P.broker <= 0)
		return;
	P.broker_stop_at = 0;
	P.broker_cont_at = 0; /* SIGKILL ends a stopped process too */
	uatomic_set(&T->broker_up, 0);
	P.broker_killed_by_us = 1;
	kill(P.broker, SIGKILL);
	P.broker_kills++;
	say("SIGKILL broker %d", (int)P.broker);
}

/* ---------------------------------------------------------------- workers */

static void worker_spawn(uint32_t slot)
{
	const char *fault = NULL;
#if SHMB_FAULT_ENABLED
	if (P.faults && rnd() % 4 == 0)
		fault = worker_faults[rnd() % N_WORKER_FAULTS];
#endif
	fault = long_stop_arm(slot, fault);
	uatomic_inc(&T->w[slot].incarnations);
	uint64_t seed = rnd();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		t_violation("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0)
		_exit(t_worker_main(slot, fault, seed));
	pid_slot(pid, 1);
	P.wpid[slot] = pid;
	P.wfault[slot] = fault;
	P.wkilled[slot] = 0;
	P.wresume_at[slot] = 0;
	uatomic_set(&T->w[slot].pid, pid);
	P.worker_spawns++;
	say("worker %u: pid %d%s%s", slot, (int)pid, fault ? ", armed with " : "",
	    fault ? fault : "");
}

static void worker_kill(uint32_t slot)
{
	pid_t pid = P.wpid[slot];
	if (pid <= 0 || P.wkilled[slot])
		return;
	struct t_pid *p = pid_slot(pid, 1);
	if (p)
		uatomic_set(&p->killed_ns, t_now_ns()); /* before the signal: readers use it */
	P.wkilled[slot] = 1;
	kill(pid, SIGKILL);
	P.worker_kills++;
}

/* A registry entry its dead owner was filling goes back to FREE. */
static void release_claims(pid_t pid)
{
	for (uint32_t k = 0; k < T_ENTRIES; k++) {
		struct t_entry *e = &T->entries[k];
		uint64_t w = __atomic_load_n(&e->word, __ATOMIC_ACQUIRE);
		if ((w & 0xff) == E_CLAIMED && uatomic_read(&e->owner) == pid)
			__atomic_compare_exchange_n(&e->word, &w, (w & ~UINT64_C(0xff)) | E_FREE, 0,
						    __ATOMIC_RELEASE, __ATOMIC_RELAXED);
	}
}

static int slot_of(pid_t pid)
{
	for (uint32_t i = 0; i < T_MAX_WORKERS; i++)
		if (P.wpid[i] == pid)
			return (int)i;
	return -1;
}

/* Reaps whatever ended or stopped. */
static void reap(int stopping)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG | WUNTRACED)) > 0) {
		if (pid == P.broker) {
			if (WIFSTOPPED(st)) {
				if (!P.broker_cont_at) /* a fault point's stop, not ours */
					kill(pid, SIGCONT);
				continue;
			}
			if (WIFCONTINUED(st))
				continue;
			uatomic_set(&T->broker_up, 0);
			P.broker = 0;
			int ours = P.broker_killed_by_us;
			if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && !ours && P.broker_fault) {
				P.broker_fault_deaths++;
				say("broker died at %s", P.broker_fault);
			} else if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && ours)) {
				t_violation("the broker ended by itself: %s %d",
					    WIFEXITED(st) ? "exit status" : "signal",
					    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			}
			P.broker_fault = NULL;
			P.broker_restart_at = t_now_ns() + ms_ns((int64_t)(rnd() % 300));
			continue;
		}
		int slot = slot_of(pid);
		if (slot < 0)
			continue; /* shmctl runs are reaped where they run */
		if (WIFSTOPPED(st)) {
			if (stopping) {
				worker_kill((uint32_t)slot);
				continue;
			}
			P.worker_stops++;
			P.wresume_at[slot] = t_now_ns() + ms_ns(20 + (int64_t)(rnd() % 400));
			long_stop_event((uint32_t)slot, 1);
			say("worker %u stopped at %s", slot, P.wfault[slot] ? P.wfault[slot] : "?");
			continue;
		}
		if (WIFCONTINUED(st))
			continue;
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
			if (!P.wkilled[slot]) {
				if (P.wfault[slot])
					P.worker_fault_deaths++;
				else
					t_violation(
						"worker %u (pid %d) died of a SIGKILL nobody sent",
						slot, (int)pid);
			}
		} else if (WIFSIGNALED(st)) {
			t_violation("worker %u (pid %d) crashed: signal %d", slot, (int)pid,
				    WTERMSIG(st));
		} else if (WEXITSTATUS(st) != 0) {
			t_violation("worker %u (pid %d) failed: exit status %d", slot, (int)pid,
				    WEXITSTATUS(st));
		} else if (!stopping) {
			t_violation("worker %u (pid %d) exited before the end", slot, (int)pid);
		}
		release_claims(pid);
		long_stop_event((uint32_t)slot, 0);
		P.wpid[slot] = 0;
		uatomic_set(&T->w[slot].pid, 0);
		if (!stopping)
			worker_spawn((uint32_t)slot);
	}
}

/* ---------------------------------------------------------------- shmctl */

/* Runs shmctl verify; on failure records a violation with its output. */
static void run_verify(const char *when)
{
	char out[256];
	snprintf(out, sizeof out, "%s/verify.out", P.runtime);
	pid_t pid = fork();
	if (pid < 0)
		return;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0)
			_exit(127);
		dup2(fd, 1);
		dup2(fd, 2);
		execl(SHMCTL_PATH, SHMCTL_PATH, "--name", T->name, "verify", (char *)NULL);
		_exit(127);
	}
	int st = 0;
	int64_t end = t_now_ns() + ms_ns(30000);
	pid_t r;
	while ((r = waitpid(pid, &st, WNOHANG)) == 0 && t_now_ns() < end) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	if (r == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		t_violation("shmctl verify (%s) hung for 30 s", when);
		return;
	}
	P.verify_runs++;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return;
	char text[1200] = "";
	int fd = open(out, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, text, sizeof text - 1);
		text[n > 0 ? n : 0] = '\0';
		close(fd);
	}
	for (char *c = text; *c; c++)
		if (*c == '\n')
			*c = ' ';
	t_violation("shmctl verify (%s): %s %d: %.240s", when,
		    WIFEXITED(st) ? "exit status" : "signal",
		    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), text);
	fprintf(stderr, "torture: shmctl verify (%s) said:\n%s\n", when, text);
}

/* ---------------------------------------------------------------- the end state */

struct leftovers {
	uint32_t workers, readers, ledgers, subs;
	uint64_t created, deleted, expired, live, live_records;
};

static int read_end_state(struct leftovers *l)
{
	struct shmb_seg seg;
	char why[256] = "";
	if (seg_open_name(T->name, 0, &seg, why, sizeof why) < 0) {
		t_violation("cannot map the segment at the end: %s", why);
		return -1;
	}
	*l = (struct leftovers){ 0 };
	for (uint32_t w = 0; w < seg.cfg.max_workers; w++) {
		l->workers += uatomic_read(&seg_worker(&seg, w)->state) != SHMB_WORKER_FREE;
		for (uint32_t k = 0; k < seg.cfg.readers_per_worker; k++) {
			const struct shmb_reader *r = seg_reader(&seg, w, k);
			l->readers += uatomic_read(&r->ctr) != 0 || uatomic_read(&r->in_use) != 0;
			l->ledgers += uatomic_read(&r->ledger.kind) != SHMB_LEDGER_FREE;
		}
	}
	for (uint32_t i = 0; i < seg.cfg.max_sessions; i++) {
		const struct shmb_session_rec *r = seg_rec(&seg, i);
		for (int j = 0; j < SHMB_SUB_WORDS; j++)
			l->subs += (uint32_t)__builtin_popcountll(uatomic_read(&r->subscribers[j]));
		l->live_records += uatomic_read(&r->state) == SHMB_REC_LIVE;
	}
	l->created = uatomic_read(&seg_counter(&seg, SHMB_CTR_SESSIONS_CREATED)->value);
	l->deleted = uatomic_read(&seg_counter(&seg, SHMB_CTR_SESSIONS_DELETED)->value);
	l->expired = uatomic_read(&seg_counter(&seg, SHMB_CTR_SESSIONS_EXPIRED)->value);
	l->live = uatomic_read(&seg_counter(&seg, SHMB_CTR_SESSIONS_LIVE)->value);
	seg_unmap(&seg);
	return 0;
}

/* The end checks need a broker that is running and unarmed: one that died in the reap that
 * collected the last worker would skip them, and one still armed with a fault point could die
 * at it during them (a false violation). Such a broker is killed and started again clean.
 * Returns 0 when one is up. */
static int broker_clean_for_checks(void)
{
	if (P.broker > 0 && P.broker_fault) {
		pid_t b = P.broker;
		broker_kill();
		int st = 0;
		if (waitpid(b, &st, 0) == b && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
			t_violation("the broker ended by itself: %s %d",
				    WIFEXITED(st) ? "exit status" : "signal",
				    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		P.broker = 0;
		say("killed the broker armed with %s before the end checks", P.broker_fault);
	}
	if (P.broker > 0)
		return 0;
	P.broker_fault = NULL;
	if (broker_up() < 0) {
		t_violation("no broker could be started for the end checks");
		return -1;
	}
	P.broker_restarts++;
	return 0;
}

/* Stops the workers, waits for the broker to settle them, checks what is left. */
static void finish(void)
{
	uatomic_set(&T->stop, 1);
	broker_continue();
	for (uint32_t i = 0; i < P.workers; i++)
		if (P.wpid[i] > 0 && P.wresume_at[i]) {
			P.wresume_at[i] = 0;
			worker_continue(i);
		}
	if (P.broker <= 0) {
		P.broker_fault = NULL;
		if (broker_up() < 0)
			return;
		P.broker_restarts++;
	}
	int64_t end = t_now_ns() + ms_ns(20000);
	for (;;) {
		reap(1);
		uint32_t left = 0;
		for (uint32_t i = 0; i < P.workers; i++)
			left += P.wpid[i] > 0;
		if (!left)
			break;
		if (P.broker <= 0 && broker_up() == 0)
			P.broker_restarts++;
		if (t_now_ns() > end) {
			for (uint32_t i = 0; i < P.workers; i++)
				if (P.wpid[i] > 0) {
					t_violation("worker %u (pid %d) did not stop within 20 s",
						    i, (int)P.wpid[i]);
					worker_kill(i);
				}
			end = t_now_ns() + ms_ns(5000);
		}
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	reap(1); /* a broker that died meanwhile is noticed here, not during the checks */
	if (broker_clean_for_checks() < 0)
		return;

	/* Every worker has exited: the broker must settle them all (pidfd, < 100 ms each). */
	struct leftovers l = { 0 };
	int64_t until = t_now_ns() + ms_ns(5000);
	while (read_end_state(&l) == 0 && (l.workers || l.readers || l.ledgers || l.subs) &&
	       t_now_ns() < until) {
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	if (l.workers || l.readers || l.ledgers || l.subs)
		t_violation("after every worker exited: %u worker slots, %u reader slots, %u "
			    "crash-ledger entries and %u subscriber bits remain",
			    l.workers, l.readers, l.ledgers, l.subs);
	if (l.live != l.created - l.deleted - l.expired || l.live != l.live_records)
		t_violation(
			"sessions_live %llu, created %llu - deleted %llu - expired %llu = %lld, "
			"LIVE records %llu",
			(unsigned long long)l.live, (unsigned long long)l.created,
			(unsigned long long)l.deleted, (unsigned long long)l.expired,
			(long long)(l.created - l.deleted - l.expired),
			(unsigned long long)l.live_records);
	run_verify("at the end");
	fprintf(stdout, "torture: sessions %llu created, %llu deleted, %llu expired, %llu live\n",
		(unsigned long long)l.created, (unsigned long long)l.deleted,
		(unsigned long long)l.expired, (unsigned long long)l.live);

	/* A clean stop. */
	pid_t b = P.broker;
	kill(b, SIGTERM);
	int st = 0;
	int64_t stop_end = t_now_ns() + ms_ns(10000);
	pid_t r;
	while ((r = waitpid(b, &st, WNOHANG)) == 0 && t_now_ns() < stop_end) {
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	if (r == b) {
		P.broker = 0;
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			t_violation("the broker's clean stop: %s %d (want exit status 0)",
				    WIFEXITED(st) ? "exit status" : "signal",
				    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	} else {
		t_violation("the broker did not stop within 10 s of SIGTERM");
	}
}

/* ---------------------------------------------------------------- main */

static int usage(FILE *f, int rc)
{
	fprintf(f,
		"usage: torture [--seconds N] [--workers N] [--seed N] [--stall-ms N]\n"
		"               [--kill-every-ms N] [--broker-every-ms N] [--no-faults] "
		"[--verbose]\n"
		"Runs shmbrokerd and N worker processes (default 4, at most %d) for N seconds\n"
		"(default 15) while SIGKILLing random workers (every ~300 ms) and the broker\n"
		"(every ~3000 ms), checking the invariants of docs/reliability.md. Exit status 0:\n"
		"no violation; 1: violations (listed); 2: usage; 3: could not run.\n",
		T_MAX_WORKERS);
	return rc;
}

static int parse(int argc, char **argv, uint32_t *stall_ms)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			exit(usage(stdout, 0));
		if (!strcmp(a, "--no-faults")) {
			P.faults = 0;
			continue;
		}
		if (!strcmp(a, "--verbose")) {
			P.verbose = 1;
			continue;
		}
		if (i + 1 >= argc)
			return usage(stderr, 2);
		const char *v = argv[++i];
		char *end;
		double d = strtod(v, &end);
		if (*end || d < 0)
			return usage(stderr, 2);
		if (!strcmp(a, "--seconds"))
			P.seconds = d;
		else if (!strcmp(a, "--workers") && d >= 1 && d <= T_MAX_WORKERS)
			P.workers = (uint32_t)d;
		else if (!strcmp(a, "--seed"))
			P.seed = (uint64_t)d;
		else if (!strcmp(a, "--stall-ms") && d >= 1)
			*stall_ms = (uint32_t)d;
		else if (!strcmp(a, "--kill-every-ms") && d >= 1)
			P.kill_every_ms = (uint32_t)d;
		else if (!strcmp(a, "--broker-every-ms") && d >= 1)
			P.broker_every_ms = (uint32_t)d;
		else
			return usage(stderr, 2);
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint32_t stall_ms = 200;
	if (parse(argc, argv, &stall_ms))
		return 2;
	T = mmap(NULL, sizeof *T, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (T == MAP_FAILED) {
		perror("torture: mmap");
		return 3;
	}
	if (!P.seed) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		P.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
	}
	P.rng = P.seed;
	T->seed = P.seed;
	T->stall_ms = stall_ms;
	T->n_workers = P.workers;
	T->start_ns = t_now_ns();
	snprintf(T->name, sizeof T->name, "torture%ld", (long)getpid());
	snprintf(P.shm, sizeof P.shm, "/shmb.%s", T->name);
	snprintf(P.runtime, sizeof P.runtime, "/tmp/shmbtort.%ld.XXXXXX", (long)getpid());
	if (!mkdtemp(P.runtime)) {
		perror("torture: mkdtemp");
		return 3;
	}
	snprintf(P.log, sizeof P.log, "%s/broker.log", P.runtime);
	snprintf(rt_files[0], sizeof rt_files[0], "%s", P.log);
	snprintf(rt_files[1], sizeof rt_files[1], "%s/%s.sock", P.runtime, T->name);
	snprintf(rt_files[2], sizeof rt_files[2], "%s/%s.lock", P.runtime, T->name);
	snprintf(rt_files[3], sizeof rt_files[3], "%s/verify.out", P.runtime);
	setenv("SHMB_RUNTIME_DIR", P.runtime, 1);
	unsetenv("SHMB_FAULT");
	/* The workers' control timeout (client/attach.c): short, so a stopped broker outlasts it
	 * within the run. */
	setenv("SHMB_CTL_TIMEOUT_MS", T_STR(T_CTL_TIMEOUT_MS), 1);
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_fatal_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);
	/* The hard deadline: the run, the shutdown's own bounds, and a margin. */
	alarm((unsigned)P.seconds + 90);
	if (!SHMB_FAULT_ENABLED)
		P.faults = 0;
	printf("torture: %.0f s, %u workers, seed %llu, stall budget %u ms, faults %s, instance "
	       "%s\n",
	       P.seconds, P.workers, (unsigned long long)P.seed, stall_ms, P.faults ? "on" : "off",
	       T->name);
	fflush(stdout);

	int rc = 3;
	if (broker_up() < 0) {
		print_log_tail();
		goto out;
	}
	for (uint32_t i = 0; i < P.workers; i++)
		worker_spawn(i);
	int64_t end = T->start_ns + (int64_t)(P.seconds * 1e9);
	int64_t next_kill = t_now_ns() + ms_ns(P.kill_every_ms);
	int64_t next_broker_kill = t_now_ns() + ms_ns(P.broker_every_ms);
	int64_t next_verify = t_now_ns() + ms_ns(2500);
	while (t_now_ns() < end) {
		reap(0);
		int64_t now = t_now_ns();
		for (uint32_t i = 0; i < P.workers; i++)
			if (P.wpid[i] > 0 && P.wresume_at[i] && now >= P.wresume_at[i]) {
				P.wresume_at[i] = 0;
				if (long_stop_resume(i) || rnd() % 10 < 6)
					worker_continue(i);
				else
					worker_kill(i);
			}
		if (now >= next_kill) {
			uint32_t victim = (uint32_t)(rnd() % P.workers);
			if (!long_stop_is(victim))
				worker_kill(victim);
			next_kill = now +
				    ms_ns(P.kill_every_ms / 2 + (int64_t)(rnd() % P.kill_every_ms));
		}
		if (now >= next_broker_kill && P.broker > 0) {
			broker_kill();
			next_broker_kill = now + ms_ns(P.broker_every_ms / 2 +
						       (int64_t)(rnd() % P.broker_every_ms));
		}
		if (P.broker <= 0 && P.broker_restart_at && now >= P.broker_restart_at) {
			P.broker_restart_at = 0;
#if SHMB_FAULT_ENABLED
			if (P.faults && rnd() % 4 == 0)
				P.broker_fault = broker_faults[rnd() % N_BROKER_FAULTS];
#endif
			if (broker_up() < 0) {
				print_log_tail();
				break;
			}
			P.broker_restarts++;
#if SHMB_FAULT_ENABLED
			/* One restart in three is stalled at once (issue 10, item 1). */
			if (P.faults && rnd() % 3 == 0)
				P.broker_stop_at = t_now_ns() + ms_ns((int64_t)(rnd() % 30));
#endif
		}
		if (P.broker_stop_at && now >= P.broker_stop_at)
			broker_stop();
		if (P.broker_cont_at && now >= P.broker_cont_at)
			broker_continue();
		if (now >= next_verify && P.broker > 0 && !P.broker_cont_at) {
			run_verify("while running");
			next_verify = t_now_ns() + ms_ns(2500 + (int64_t)(rnd() % 2000));
		}
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	finish();
	rc = 0;
out:;
	uint32_t nv = uatomic_read(&T->n_viol);
	if (nv)
		print_log_tail();
	reap_all();
	shm_unlink(P.shm);
	remove_runtime();

	struct t_wstats s = { 0 };
	for (uint32_t i = 0; i < T_MAX_WORKERS; i++) {
		const struct t_wstats *w = &T->w[i];
		s.published += w->published;
		s.creates += w->creates;
		s.orphans += w->orphans;
		s.create_full += w->create_full;
		s.publish_overruns += w->publish_overruns;
		s.deletes += w->deletes;
		s.delivered += w->delivered;
		s.verified += w->verified;
		s.gaps += w->gaps;
		s.overruns += w->overruns;
		s.exempt += w->exempt;
		s.watches += w->watches;
		s.waits += w->waits;
		s.woken += w->woken;
		s.timeouts += w->timeouts;
		s.stalls_excused += w->stalls_excused;
		s.unverified_tails += w->unverified_tails;
		s.ends_deleted += w->ends_deleted;
		s.ends_idle += w->ends_idle;
		s.wakes_timed += w->wakes_timed;
		s.wakes_excused += w->wakes_excused;
		s.wakes_broker_down += w->wakes_broker_down;
		if (w->max_stall_ms > s.max_stall_ms)
			s.max_stall_ms = w->max_stall_ms;
		if (w->max_wake_ms > s.max_wake_ms)
			s.max_wake_ms = w->max_wake_ms;
	}
	for (uint32_t i = 0; i < nv && i < T_MAX_VIOL; i++)
		fprintf(stderr, "torture: VIOLATION %s\n", T->viol[i]);
	if (nv > T_MAX_VIOL)
		fprintf(stderr, "torture: ... and %u more violations\n", nv - T_MAX_VIOL);
	printf("torture: %.1f s, %u workers: %llu worker kills + %llu deaths at fault points + "
	       "%llu stops, %llu broker kills + %llu deaths at fault points, %llu broker restarts "
	       "(%llu stopped past the client timeout); "
	       "%llu events published, %llu deliveries checked (%llu gaps, %llu overruns), %llu "
	       "returned publishes verified delivered (%llu skipped by overruns), %llu watches, "
	       "%llu waits (%llu woken, %llu timed out); stalls over %u ms excused %llu (live "
	       "holder or broker down), longest unexcused %llu ms; %llu wakeups timed, longest %llu "
	       "ms (%llu excused: reader stopped; %llu late only while no broker served); sessions seen gone %llu after a delete, %llu "
	       "idle past the TTL; shmctl verify %llu runs; violations %u\n",
	       (double)(t_now_ns() - T->start_ns) / 1e9, P.workers,
	       (unsigned long long)P.worker_kills, (unsigned long long)P.worker_fault_deaths,
	       (unsigned long long)P.worker_stops, (unsigned long long)P.broker_kills,
	       (unsigned long long)P.broker_fault_deaths, (unsigned long long)P.broker_restarts,
	       (unsigned long long)P.broker_stops, (unsigned long long)s.published,
	       (unsigned long long)s.delivered, (unsigned long long)s.gaps,
	       (unsigned long long)s.overruns, (unsigned long long)s.verified,
	       (unsigned long long)s.exempt, (unsigned long long)s.watches,
	       (unsigned long long)s.waits, (unsigned long long)s.woken,
	       (unsigned long long)s.timeouts, stall_ms, (unsigned long long)s.stalls_excused,
	       (unsigned long long)s.max_stall_ms, (unsigned long long)s.wakes_timed,
	       (unsigned long long)s.max_wake_ms, (unsigned long long)s.wakes_excused,
	       (unsigned long long)s.wakes_broker_down, (unsigned long long)s.ends_deleted,
	       (unsigned long long)s.ends_idle, (unsigned long long)P.verify_runs, nv);
	if (P.verbose)
		fprintf(stderr,
			"torture: creates %llu (%llu not registered, %llu refused EFULL), "
			"publishes lapped mid-write %llu\n",
			(unsigned long long)s.creates, (unsigned long long)s.orphans,
			(unsigned long long)s.create_full, (unsigned long long)s.publish_overruns);
	printf("torture: %llu publishers stopped mid-publish for 1.5-2.5 s and continued\n",
	       (unsigned long long)L.done);
	if (rc)
		return rc;
	return nv ? 1 : 0;
}
