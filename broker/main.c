/* main.c - shmbrokerd: start-up order, daemonizing, one broker per name, clean stop.
 *
 * Order: parse the configuration (exit 2 on a bad one); unless --foreground, fork at once and
 * let the parent wait on a pipe until the child reports readiness (exit 0) or its failure (its
 * exit status), so `shmbrokerd && client` never races the socket; the child setsid()s and keeps
 * stderr for its log. The child then creates the runtime dir (which, and every directory above
 * it, must be ours or root's and writable by nobody else: the rule our clients apply, trust.c),
 * takes an exclusive flock on
 * <name>.lock (a second broker for the same name refuses to start: the lock, not a pid file,
 * proves the old owner dead), builds or adopts the segment, listens, writes "ready\n" to
 * --ready-fd (and READY=1 to systemd's NOTIFY_SOCKET, notify.c) and serves until SIGTERM/SIGINT
 * or `shmctl stop`. A SIGBUS in the segment (truncated under us) is
 * logged as such before it kills us. Stop: the socket is closed and unlinked, the
 * header says STOPPED, the segment stays unless --unlink-on-exit, and the lock is released by
 * exit. The lock file itself is never unlinked (unlinking it would let two brokers lock two
 * different files). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "ctl.h"
#include "fault.h"
#include "shmb.h"
#include "trust.h"
#include "wake.h"

/* mkdir -p; the result, and every directory above it, must pass trust_check_dir for us. */
static int runtime_dir(struct brk *b, char *dir, size_t len)
{
	if (ctl_runtime_dir(dir, len) < 0) {
		brk_fatal("runtime directory path is too long");
		return 1;
	}
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
			brk_fatal("cannot create %s: %s", dir, strerror(errno));
			return 1;
		}
		*p = '/';
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		brk_fatal("cannot create runtime directory %s: %s", dir, strerror(errno));
		return 1;
	}
	struct stat st;
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		brk_fatal("runtime directory %s is not a directory", dir);
		return 1;
	}
	/* The rules our clients apply (common/trust.c): ours or root's, and nobody else may
	 * write to it or to a directory above it (a root-owned sticky one excepted). */
	char why[512];
	(void)b;
	if (trust_check_dir(dir, 0, why, sizeof why) < 0) {
		brk_fatal("%s; refusing to put the socket there", why);
		return 1;
	}
	return 0;
}

/* ---- SIGBUS: the segment truncated under us ---- */

/* Prepared at start-up, so the handler only compares, formats digits and write()s (all
 * async-signal-safe: gmtime_r is not, hence the civil-date arithmetic). */
static struct {
	uintptr_t lo, hi;
	char msg[512];
	size_t len;
} sigbus;

/* "2026-12-05T00:56:51.123Z " (25 bytes) for the wall clock now, without gmtime_r. */
static void sigbus_stamp(char out[25])
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t days = ts.tv_sec / 86400, secs = ts.tv_sec % 86400;
	/* Days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted). */
	int64_t z = days + 719468, era = z / 146097, doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
	int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
	int64_t y = yoe + era * 400 + (m <= 2);
	int64_t v[] = { y, m, d, secs / 3600, secs / 60 % 60, secs % 60, ts.tv_nsec / 1000000 };
	static const char sep[] = "--T::.Z";
	static const int width[] = { 4, 2, 2, 2, 2, 2, 3 };
	int p = 0;
	for (int i = 0; i < 7; i++) {
		for (int k = width[i] - 1; k >= 0; k--, v[i] /= 10)
			out[p + k] = (char)('0' + v[i] % 10);
		p += width[i];
		out[p++] = sep[i];
	}
	out[p] = ' ';
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	uintptr_t a = (uintptr_t)si->si_addr;
	if (a >= sigbus.lo && a < sigbus.hi) {
		sigbus_stamp(sigbus.msg);
		ssize_t w = write(STDERR_FILENO, sigbus.msg, sigbus.len);
		(void)w;
	}
	/* SA_RESETHAND: returning re-runs the faulting access, which now kills us as before. */
}

/* A mapped page of a truncated file raises SIGBUS: say so in the log before dying of it. */
static void catch_sigbus(const struct brk *b)
{
	sigbus.lo = (uintptr_t)b->seg.base;
	sigbus.hi = sigbus.lo + b->seg.size;
	/* The first 25 bytes are the timestamp, written by the handler. */
	int n = snprintf(
		sigbus.msg, sizeof sigbus.msg,
		"%25serror shmbrokerd[%d] %s: fatal: SIGBUS in segment /dev/shm%s: the segment was "
		"truncated under us (by a process with write access to it); its sessions "
		"are lost; a restarted broker builds a new one\n",
		"", (int)getpid(), b->cfg.name, b->shm_name);
	sigbus.len = n < 0 ? 0 : (size_t)n < sizeof sigbus.msg ? (size_t)n : sizeof sigbus.msg - 1;
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_RESETHAND };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL) < 0)
		brk_warn("cannot catch SIGBUS: %s", strerror(errno));
}

static int take_lock(struct brk *b)
{
	if (ctl_lock_path(b->cfg.name, b->lock_path, sizeof b->lock_path) < 0) {
		brk_fatal("lock file path is too long");
		return 1;
	}
	int fd = open(b->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		brk_fatal("cannot open lock file %s: %s", b->lock_path, strerror(errno));
		return 1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		if (e == EWOULDBLOCK) {
			char buf[32] = { 0 };
			ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
			long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
			if (pid > 0)
				brk_fatal(
					"another broker is already running for name '%s' (pid %ld)",
					b->cfg.name, pid);
			else
				brk_fatal("another broker is already running for name '%s'",
					  b->cfg.name);
		} else {
			brk_fatal("cannot lock %s: %s", b->lock_path, strerror(e));
		}
		close(fd);
		return 1;
	}
	char buf[32];
	int n = snprintf(buf, sizeof buf, "%d\n", (int)b->pid);
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n)
		brk_warn("cannot write our pid to %s: %s", b->lock_path, strerror(errno));
	b->lock_fd = fd;
	return 0;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void write_all(int fd, const char *s, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

/* Fork; the parent exits with the status the child reports through the pipe. Returns the
 * pipe's write end in the child. */
static int daemonize(void)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		brk_fatal("pipe: %s", strerror(errno));
		exit(1);
	}
	pid_t pid = fork();
	if (pid < 0) {
		brk_fatal("fork: %s", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		close(p[1]);
		unsigned char status;
		ssize_t n;
		do
			n = read(p[0], &status, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1) {
			brk_fatal("the broker exited during start-up");
			_exit(1);
		}
		_exit(status);
	}
	close(p[0]);
	setsid();
	return p[1];
}

static void report(int *notify_fd, unsigned char status)
{
	if (*notify_fd >= 0) {
		write_all(*notify_fd, (const char *)&status, 1);
		close(*notify_fd);
		*notify_fd = -1;
	}
}

static int start(struct brk *b)
{
	char dir[256];
	if (runtime_dir(b, dir, sizeof dir) || take_lock(b) || brk_loop_init(b) ||
	    brk_segment_open(b) || brk_control_listen(b))
		return 1;
	brk_timer_update(b);
	catch_sigbus(b);
	brk_log("serving %s on %s (pid %d, broker generation %llu)", b->seg_path, b->sock_path,
		(int)b->pid, (unsigned long long)seg_hdr(&b->seg)->broker_generation);
	return 0;
}

static void stop(struct brk *b)
{
	brk_control_close(b);
	brk_workers_close(b);
	brk_segment_close(b);
	free(b->free_stack);
	free(b->pending);
	free(b->live_list);
	free(b->live_pos);
	free(b->scoped);
	free(b->stall);
	free(b->ownerless_seq);
	free(b->ownerless_claims);
	if (b->timer_fd >= 0)
		close(b->timer_fd);
	if (b->sig_fd >= 0)
		close(b->sig_fd);
	if (b->epfd >= 0)
		close(b->epfd);
	if (b->lock_fd >= 0)
		close(b->lock_fd); /* releases the flock; the file stays (see the top comment) */
}

int main(int argc, char **argv)
{
	static struct brk b = {
		.lock_fd = -1,
		.seg_fd = -1,
		.epfd = -1,
		.listen_fd = -1,
		.req_fd = -1,
		.sig_fd = -1,
		.timer_fd = -1,
	};
	int rc = brk_config_parse(argc, argv, &b.cfg, 0);
	b.argc = argc;
	b.argv = argv;
	if (rc < 0)
		return 0;
	if (rc > 0)
		return 2;
	brk_log_init(b.cfg.name);
	brk_log_configure(b.cfg.log_target, b.cfg.log_level, b.cfg.log_rate_limit,
			  b.cfg.log_rate_interval_ms);
	int notify_fd = b.cfg.foreground ? -1 : daemonize();
	b.pid = getpid();
	b.euid = geteuid();
	raise_nofile();

	if (start(&b)) {
		b.cfg.unlink_on_exit =
			b.created; /* a segment this failed start built holds nothing */
		stop(&b);
		report(&notify_fd, 1);
		return 1;
	}
	/* Serving (the socket listens, eventfd sets can be fetched): a wakeup a publisher sent
	 * through a stale set while no broker served is made good now. */
	if (!b.created) {
		/* The marks before the eventfd writes, as every waker orders them. */
		wake_mark_all_subscribed(&b.seg);
		brk_workers_wake_all(&b);
		/* And every thread asleep in shmb_cursor_wait: a commit of the broker that died
		 * (a gap) may not have woken them (common/wake.h, wake_all_waiters). */
		wake_all_waiters(&b.seg);
	}
	brk_notify_init();
	brk_notify("READY=1\nSTATUS=serving %s on %s", b.seg_path, b.sock_path);
	if (b.cfg.ready_fd >= 0) {
		write_all(b.cfg.ready_fd, "ready\n", 6);
		close(b.cfg.ready_fd);
		b.cfg.ready_fd = -1;
	}
	if (!b.cfg.foreground) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, STDIN_FILENO);
			dup2(null, STDOUT_FILENO);
			close(null);
		}
		if (b.sock_path[0] == '/' && b.lock_path[0] == '/' && chdir("/") < 0)
			brk_warn("chdir /: %s", strerror(errno));
	}
	report(&notify_fd, 0);

	rc = brk_loop_run(&b);
	brk_notify("STOPPING=1\nSTATUS=stopping");
	SHMB_FAULT("broker.stop.begin"); /* test: shmctl stop waits for the exit, not the reply */
	stop(&b);
	brk_notify_close();
	brk_log("stopped");
	return rc;
}
