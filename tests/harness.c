/* harness.c - see harness.h.
 *
 * State is per test process (Criterion runs each test in its own process): the brokers, clients
 * and children the test made, the runtime dir and the fds open at setup. Children forked by the
 * harness inherit this state but never act on it (they _exit()). */
#include "harness.h"

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
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"
#include "seg.h"

#define H_MAX_CLIENTS 32
#define H_MAX_CHILDREN 64
#define H_MAX_FDS 1024

static struct {
	int ready;
	pid_t owner; /* the test process */
	char runtime_dir[128];
	unsigned counter;
	struct h_broker *brokers[H_MAX_BROKERS];
	int nbrokers;
	shmb_client *clients[H_MAX_CLIENTS];
	struct h_child kids[H_MAX_CHILDREN]; /* the harness's own records of the children */
	int nchildren;
	unsigned char fds_at_setup[H_MAX_FDS];
} H;

/* ---------------------------------------------------------------- small helpers */

int64_t h_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t h_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int h_contains(const char *s, const char *needle)
{
	return s && needle && strcasestr(s, needle) != NULL;
}

int h_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void h_random_sid(char sid[SHMB_SID_LEN + 1])
{
	unsigned char b[SHMB_SID_LEN / 2];
	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
		abort();
	for (size_t i = 0; i < sizeof b; i++)
		sprintf(sid + 2 * i, "%02x", b[i]);
	sid[SHMB_SID_LEN] = '\0';
}

int h_sid_wellformed(const char *s)
{
	if (!s || strlen(s) != SHMB_SID_LEN)
		return 0;
	for (const char *p = s; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return 0;
	return 1;
}

static int pidfd_open_(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int)syscall(SYS_pidfd_open, pid, 0);
#else
	(void)pid;
	errno = ENOSYS;
	return -1;
#endif
}

/* Waits for pid (optionally through its pidfd) up to timeout_ms. Returns 1 reaped (*st set),
 * 0 still running. */
static int wait_pid(pid_t pid, int pidfd, int timeout_ms, int *st)
{
	int64_t deadline = h_now_ms() + timeout_ms;
	for (;;) {
		pid_t r = waitpid(pid, st, WNOHANG);
		if (r == pid)
			return 1;
		if (r < 0 && errno != EINTR) {
			*st = 0;
			return 1; /* not our child any more: treat as gone */
		}
		int64_t left = deadline - h_now_ms();
		if (left <= 0)
			return 0;
		if (pidfd >= 0) {
			struct pollfd p = { .fd = pidfd, .events = POLLIN };
			poll(&p, 1, (int)left);
		} else {
			h_sleep_ms(2); /* no pidfd: poll the condition with a deadline */
		}
	}
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return strdup("");
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	size_t n;
	while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 2) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
	}
	buf[len] = '\0';
	fclose(f);
	return buf;
}

static void snapshot_fds(unsigned char set[H_MAX_FDS])
{
	memset(set, 0, H_MAX_FDS);
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	int self = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd != self && fd >= 0 && fd < H_MAX_FDS)
			set[fd] = 1;
	}
	closedir(d);
}

static void describe_fd(int fd, char *buf, size_t len)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, buf, len - 1);
	buf[n < 0 ? 0 : n] = '\0';
}

/* ---------------------------------------------------------------- setup and teardown */

const char *h_runtime_dir(void)
{
	return H.runtime_dir;
}

void h_unique_name(char *buf, size_t len)
{
	snprintf(buf, len, "t%ld_%u", (long)getpid(), ++H.counter);
}

/* Removes what test processes that died without their teardown (a crash, a Criterion timeout)
 * left: segments /dev/shm/shmb.t<pid>_<n> and runtime dirs /tmp/shmbt.<pid>.* of pids that no
 * longer exist. Their brokers died with them (PR_SET_PDEATHSIG). */
static int stale_pid(const char *s, char end)
{
	char *e;
	long pid = strtol(s, &e, 10);
	return e != s && *e == end && pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static void remove_stale(void)
{
	DIR *d = opendir("/dev/shm");
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (!strncmp(e->d_name, "shmb.t", 6) && stale_pid(e->d_name + 6, '_')) {
			char shm[300];
			snprintf(shm, sizeof shm, "/%s", e->d_name);
			shm_unlink(shm);
		}
	if (d)
		closedir(d);
	d = opendir("/tmp");
	while (d && (e = readdir(d)))
		if (!strncmp(e->d_name, "shmbt.", 6) && stale_pid(e->d_name + 6, '.')) {
			char p[300];
			snprintf(p, sizeof p, "/tmp/%s", e->d_name);
			h_rm_dir(p);
		}
	if (d)
		closedir(d);
}

void h_setup(void)
{
	memset(&H, 0, sizeof H);
	H.owner = getpid();
	remove_stale();
	snprintf(H.runtime_dir, sizeof H.runtime_dir, "/tmp/shmbt.%ld.XXXXXX", (long)H.owner);
	if (!mkdtemp(H.runtime_dir)) {
		perror("h_setup: mkdtemp");
		abort(); /* Criterion: no assertions in .init */
	}
	setenv("SHMB_RUNTIME_DIR", H.runtime_dir, 1);
	unsetenv("SHMB_NAME");
	unsetenv("SHMB_FAULT");
	signal(SIGPIPE, SIG_IGN); /* a dead broker must give EPIPE, not kill the test */
	snapshot_fds(H.fds_at_setup);
	H.ready = 1;
}

static void appendf(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t len, const char *fmt, ...)
{
	size_t n = strlen(buf);
	if (n + 1 >= len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, len - n, fmt, ap);
	va_end(ap);
}

int h_ctl_conn(const struct h_broker *b)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, b->sock_path, strlen(b->sock_path) + 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect: %s",
		     strerror(errno));
	return fd;
}

void h_rm_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char p[512];
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

/* Tears everything down; returns the problems found ("" when none) in static storage. */
static const char *finish(void)
{
	if (!H.ready || getpid() != H.owner)
		return "";
	static char problems[8192];
	problems[0] = '\0';

	/* 1. Clients the test did not detach (fine: it may have failed half-way). */
	for (int i = 0; i < H_MAX_CLIENTS; i++)
		if (H.clients[i]) {
			shmb_detach(H.clients[i]);
			H.clients[i] = NULL;
		}

	/* 2. Children still running are a test bug (or a hang): kill and report. */
	for (int i = 0; i < H.nchildren; i++) {
		struct h_child *ch = &H.kids[i];
		if (ch->done)
			continue;
		int st;
		if (!wait_pid(ch->pid, ch->pidfd, 0, &st)) {
			kill(ch->pid, SIGKILL);
			wait_pid(ch->pid, ch->pidfd, H_EXIT_TIMEOUT_MS, &st);
			appendf(problems, sizeof problems, "child %ld was still running; ",
				(long)ch->pid);
		}
		ch->done = 1;
		close_fd(&ch->pidfd);
		close_fd(&ch->rfd);
	}
	H.nchildren = 0;

	/* 3. Brokers: a clean stop exits 0. */
	for (int i = 0; i < H.nbrokers; i++) {
		struct h_broker *b = H.brokers[i];
		if (b->pid > 0) {
			kill(b->pid, SIGTERM);
			int st = 0;
			if (!wait_pid(b->pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st)) {
				kill(b->pid, SIGKILL);
				wait_pid(b->pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st);
				appendf(problems, sizeof problems,
					"broker %s did not stop within %d ms of SIGTERM; ", b->name,
					H_EXIT_TIMEOUT_MS);
			} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
				char *log = h_broker_log(b);
				appendf(problems, sizeof problems,
					"broker %s stop: %s %d (want exit 0); log:\n%.1500s\n",
					b->name, WIFEXITED(st) ? "exit" : "signal",
					WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log);
				free(log);
			}
			b->pid = 0;
			close_fd(&b->pidfd);
		}
	}

	/* 4. Segments: unlink and prove they are gone. */
	for (int i = 0; i < H.nbrokers; i++) {
		struct h_broker *b = H.brokers[i];
		char shm[96];
		snprintf(shm, sizeof shm, "/shmb.%s", b->name);
		shm_unlink(shm);
		if (access(b->shm_path, F_OK) == 0 || errno != ENOENT)
			appendf(problems, sizeof problems, "segment %s still exists; ",
				b->shm_path);
	}

	/* 5. Nothing unreaped, nothing running. */
	int st;
	pid_t left;
	while ((left = waitpid(-1, &st, WNOHANG)) > 0)
		appendf(problems, sizeof problems, "child process %ld was left unreaped; ",
			(long)left);
	if (left == 0)
		appendf(problems, sizeof problems, "a child process is still running; ");

	/* 6. No fd leaked. */
	unsigned char now[H_MAX_FDS];
	snapshot_fds(now);
	for (int fd = 0; fd < H_MAX_FDS; fd++)
		if (now[fd] && !H.fds_at_setup[fd]) {
			char what[256];
			describe_fd(fd, what, sizeof what);
			appendf(problems, sizeof problems, "fd %d leaked (%s); ", fd, what);
		}

	/* 7. Runtime dir (sockets, lock files, logs). */
	h_rm_dir(H.runtime_dir);
	for (int i = 0; i < H.nbrokers; i++) {
		for (int k = 0; k < H.brokers[i]->nargs; k++)
			free(H.brokers[i]->args[k]);
		free(H.brokers[i]);
	}
	H.nbrokers = 0;
	H.ready = 0;
	return problems;
}

void h_finish(void)
{
	const char *problems = finish();
	cr_assert(problems[0] == '\0', "teardown: %s", problems);
}

void h_teardown(void)
{
	/* Criterion ignores assertions made in .fini for a test's verdict, so the checks that
	 * count run in h_finish() at the end of every H_TEST body; here a test that failed (or
	 * did not use H_TEST) is cleaned up and its leftovers are logged. */
	const char *problems = finish();
	if (problems[0])
		cr_log_error("teardown: %s", problems);
}

/* ---------------------------------------------------------------- brokers */

struct h_broker *h_broker_new(const char *const *extra)
{
	cr_assert(H.ready, "h_setup() was not run (use .init = h_setup)");
	cr_assert_lt(H.nbrokers, H_MAX_BROKERS, "too many brokers in one test");
	struct h_broker *b = calloc(1, sizeof *b);
	cr_assert_not_null(b);
	h_unique_name(b->name, sizeof b->name);
	b->pidfd = -1;
	for (int i = 0; extra && extra[i]; i++) {
		cr_assert_lt(b->nargs, H_MAX_ARGS, "too many broker arguments");
		b->args[b->nargs++] = strdup(extra[i]);
	}
	snprintf(b->log_path, sizeof b->log_path, "%s/%s.log", H.runtime_dir, b->name);
	snprintf(b->shm_path, sizeof b->shm_path, "/dev/shm/shmb.%s", b->name);
	snprintf(b->sock_path, sizeof b->sock_path, "%s/%s.sock", H.runtime_dir, b->name);
	H.brokers[H.nbrokers++] = b;
	return b;
}

static int has_arg(const struct h_broker *b, const char *flag)
{
	for (int i = 0; i < b->nargs; i++)
		if (!strcmp(b->args[i], flag))
			return 1;
	return 0;
}

int h_broker_spawn(struct h_broker *b, int *wstatus)
{
	cr_assert_eq(b->pid, 0, "broker %s is already running", b->name);
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe: %s", strerror(errno));

	/* argv: binary, --name, --foreground, --ready-fd, defaults not overridden, extras. */
	static const char *const defaults[] = { H_DEFAULT_ARGS, NULL };
	const char *argv[8 + 2 * H_MAX_ARGS];
	int n = 0;
	char fdbuf[16];
	argv[n++] = SHMBROKERD_PATH;
	argv[n++] = "--name";
	argv[n++] = b->name;
	argv[n++] = "--foreground";
	argv[n++] = "--ready-fd";
	argv[n++] = fdbuf;
	if (!b->no_defaults)
		for (int i = 0; defaults[i]; i += 2)
			if (!has_arg(b, defaults[i])) {
				argv[n++] = defaults[i];
				argv[n++] = defaults[i + 1];
			}
	for (int i = 0; i < b->nargs; i++)
		argv[n++] = b->args[i];
	argv[n] = NULL;

	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int wfd = fcntl(p[1], F_DUPFD, 10); /* without O_CLOEXEC: the broker inherits it */
		snprintf(fdbuf, sizeof fdbuf, "%d", wfd);
		int log = open(b->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (log < 0 || devnull < 0 || wfd < 0)
			_exit(127);
		dup2(devnull, 0);
		dup2(log, 1);
		dup2(log, 2);
		signal(SIGPIPE, SIG_DFL);
		execv(SHMBROKERD_PATH, (char *const *)argv);
		_exit(127);
	}
	close(p[1]);
	b->pid = pid;
	b->pidfd = pidfd_open_(pid);

	/* Await "ready\n" (or EOF: it exited before listening). */
	char buf[16];
	size_t got = 0;
	int64_t deadline = h_now_ms() + H_READY_TIMEOUT_MS;
	int ready = 0;
	for (;;) {
		int64_t left = deadline - h_now_ms();
		if (left <= 0)
			break;
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		int r = poll(&pf, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		ssize_t k = read(p[0], buf + got, sizeof buf - 1 - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
		buf[got] = '\0';
		if (strchr(buf, '\n')) {
			ready = strcmp(buf, "ready\n") == 0;
			break;
		}
		if (got >= sizeof buf - 1)
			break;
	}
	close(p[0]);
	if (ready)
		return 0;

	/* Not ready: did it exit? */
	int st = 0;
	if (wait_pid(pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st)) {
		b->pid = 0;
		close_fd(&b->pidfd);
		if (wstatus)
			*wstatus = st;
		return -1;
	}
	char *log = h_broker_log(b);
	kill(pid, SIGKILL);
	wait_pid(pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st);
	b->pid = 0;
	close_fd(&b->pidfd);
	cr_assert_fail(
		"broker %s neither became ready nor exited within %d ms (ready-fd said \"%.*s\"); "
		"log:\n%s",
		b->name, H_READY_TIMEOUT_MS, (int)got, buf, log);
	return -1;
}

static void assert_ready(struct h_broker *b)
{
	int st = 0;
	if (h_broker_spawn(b, &st) == 0)
		return;
	char *log = h_broker_log(b);
	cr_assert_fail("broker %s did not start: %s %d; log:\n%s", b->name,
		       WIFEXITED(st) ? "exit status" : "signal",
		       WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log);
}

struct h_broker *h_broker_start(const char *const *extra)
{
	struct h_broker *b = h_broker_new(extra);
	assert_ready(b);
	if (!getenv("SHMB_NAME"))
		setenv("SHMB_NAME", b->name, 1);
	return b;
}

void h_broker_restart(struct h_broker *b)
{
	assert_ready(b);
}

void h_broker_stop(struct h_broker *b)
{
	cr_assert_gt(b->pid, 0, "broker %s is not running", b->name);
	kill(b->pid, SIGTERM);
	int st = 0;
	int gone = wait_pid(b->pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st);
	if (!gone) {
		kill(b->pid, SIGKILL);
		wait_pid(b->pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st);
	}
	b->pid = 0;
	close_fd(&b->pidfd);
	char *log = NULL;
	if (!gone || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		log = h_broker_log(b);
	cr_assert(gone, "broker %s did not stop within %d ms of SIGTERM; log:\n%s", b->name,
		  H_EXIT_TIMEOUT_MS, log);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "broker %s stop: %s %d, want exit status 0; log:\n%s", b->name,
		  WIFEXITED(st) ? "exit status" : "signal",
		  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log);
	free(log);
}

void h_broker_kill(struct h_broker *b)
{
	cr_assert_gt(b->pid, 0, "broker %s is not running", b->name);
	kill(b->pid, SIGKILL);
	int st;
	cr_assert(wait_pid(b->pid, b->pidfd, H_EXIT_TIMEOUT_MS, &st),
		  "SIGKILLed broker not reaped");
	b->pid = 0;
	close_fd(&b->pidfd);
}

int h_broker_wait_exit(struct h_broker *b, int timeout_ms)
{
	cr_assert_gt(b->pid, 0, "broker %s is not running", b->name);
	int st = 0;
	int gone = wait_pid(b->pid, b->pidfd, timeout_ms, &st);
	cr_assert(gone, "broker %s did not exit within %d ms", b->name, timeout_ms);
	b->pid = 0;
	close_fd(&b->pidfd);
	return st;
}

char *h_broker_log(const struct h_broker *b)
{
	return read_file(b->log_path);
}

/* ---------------------------------------------------------------- clients */

shmb_client *h_attach(const char *name)
{
	shmb_client *c = NULL;
	int rc = shmb_attach(name, &c);
	cr_assert_eq(rc, 0, "shmb_attach(%s): %d %s (%s)", name ? name : "NULL", rc,
		     shmb_err_name(rc), shmb_strerror(rc));
	cr_assert_not_null(c);
	for (int i = 0; i < H_MAX_CLIENTS; i++)
		if (!H.clients[i]) {
			H.clients[i] = c;
			return c;
		}
	cr_assert_fail("too many clients in one test");
	return NULL;
}

void h_detach(shmb_client *c)
{
	for (int i = 0; i < H_MAX_CLIENTS; i++)
		if (H.clients[i] == c)
			H.clients[i] = NULL;
	shmb_detach(c);
}

/* ---------------------------------------------------------------- programs */

static void drain(int fd, char **buf, size_t *len, size_t *cap, int *open_)
{
	if (*cap - *len < 4097) {
		*cap = *cap * 2 + 8192;
		*buf = realloc(*buf, *cap);
	}
	ssize_t n = read(fd, *buf + *len, *cap - *len - 1);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		*open_ = 0;
		return;
	}
	*len += (size_t)n;
}

void h_run(struct h_result *r, const char *const *argv)
{
	memset(r, 0, sizeof *r);
	int po[2], pe[2];
	cr_assert_eq(pipe2(po, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(pe, O_CLOEXEC), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
		dup2(devnull, 0);
		dup2(po[1], 1);
		dup2(pe[1], 2);
		signal(SIGPIPE, SIG_DFL);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	int pidfd = pidfd_open_(pid);
	size_t olen = 0, ocap = 0, elen = 0, ecap = 0;
	char *out = NULL, *err = NULL;
	int oopen = 1, eopen = 1;
	int64_t deadline = h_now_ms() + H_RUN_TIMEOUT_MS;
	int timed_out = 0;
	drain(-1, &out, &olen, &ocap, &(int){ 0 }); /* allocate */
	drain(-1, &err, &elen, &ecap, &(int){ 0 });
	while (oopen || eopen) {
		int64_t left = deadline - h_now_ms();
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		struct pollfd pf[2] = { { .fd = oopen ? po[0] : -1, .events = POLLIN },
					{ .fd = eopen ? pe[0] : -1, .events = POLLIN } };
		int k = poll(pf, 2, (int)left);
		if (k < 0 && errno == EINTR)
			continue;
		if (pf[0].revents)
			drain(po[0], &out, &olen, &ocap, &oopen);
		if (pf[1].revents)
			drain(pe[0], &err, &elen, &ecap, &eopen);
	}
	close(po[0]);
	close(pe[0]);
	out[olen] = '\0';
	err[elen] = '\0';
	int st = 0;
	if (timed_out ||
	    !wait_pid(pid, pidfd, (int)(deadline - h_now_ms() > 0 ? deadline - h_now_ms() : 1),
		      &st)) {
		kill(pid, SIGKILL);
		wait_pid(pid, pidfd, H_EXIT_TIMEOUT_MS, &st);
		if (pidfd >= 0)
			close(pidfd);
		cr_assert_fail("%s %s hung (no exit within %d ms); stdout:\n%s\nstderr:\n%s",
			       argv[0], argv[1] ? argv[1] : "", H_RUN_TIMEOUT_MS, out, err);
	}
	if (pidfd >= 0)
		close(pidfd);
	r->out = out;
	r->err = err;
	if (WIFEXITED(st)) {
		r->status = WEXITSTATUS(st);
	} else {
		r->signaled = 1;
		r->status = 128 + WTERMSIG(st);
	}
}

static void shmctl_argv(const char *name, va_list ap, const char **argv, int max, int json)
{
	int n = 0;
	argv[n++] = SHMCTL_PATH;
	if (name) {
		argv[n++] = "--name";
		argv[n++] = name;
	}
	const char *a;
	while ((a = va_arg(ap, const char *)) && n < max - 2)
		argv[n++] = a;
	if (json)
		argv[n++] = "--json";
	argv[n] = NULL;
}

void h_shmctl(struct h_result *r, const char *name, ...)
{
	const char *argv[H_MAX_ARGS];
	va_list ap;
	va_start(ap, name);
	shmctl_argv(name, ap, argv, H_MAX_ARGS, 0);
	va_end(ap);
	h_run(r, argv);
	cr_assert(!r->signaled, "shmctl %s crashed (signal %d); stderr:\n%s", argv[name ? 3 : 1],
		  r->status - 128, r->err);
}

cJSON *h_shmctl_json(const char *name, ...)
{
	const char *argv[H_MAX_ARGS];
	va_list ap;
	va_start(ap, name);
	shmctl_argv(name, ap, argv, H_MAX_ARGS, 1);
	va_end(ap);
	struct h_result r;
	h_run(&r, argv);
	const char *verb = argv[name ? 3 : 1];
	cr_assert(!r.signaled, "shmctl %s --json crashed (signal %d); stderr:\n%s", verb,
		  r.status - 128, r.err);
	/* status prints its document with the broker dead too, and then exits 3. */
	int is_status = strcmp(verb, "status") == 0;
	cr_assert(r.status == 0 || (is_status && r.status == 3),
		  "shmctl %s --json: exit %d; stdout:\n%s\nstderr:\n%s", verb, r.status, r.out,
		  r.err);
	cJSON *j = cJSON_Parse(r.out);
	cr_assert_not_null(j, "shmctl %s --json printed no valid JSON:\n%s", verb, r.out);
	if (is_status) {
		const cJSON *alive = h_json_get(j, "broker.alive");
		cr_assert(cJSON_IsBool(alive) && cJSON_IsTrue(alive) == (r.status == 0),
			  "shmctl status --json: exit %d with broker.alive %s", r.status,
			  cJSON_IsTrue(alive) ? "true" : "false");
	}
	h_result_free(&r);
	return j;
}

void h_result_free(struct h_result *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

/* ---------------------------------------------------------------- children */

static struct h_child *kid_of(const struct h_child *ch)
{
	cr_assert(ch->slot >= 0 && ch->slot < H.nchildren && H.kids[ch->slot].pid == ch->pid,
		  "not a child of h_child_start()");
	return &H.kids[ch->slot];
}

void h_child_start(struct h_child *ch, h_child_fn fn, void *arg)
{
	memset(ch, 0, sizeof *ch);
	cr_assert_lt(H.nchildren, H_MAX_CHILDREN, "too many children in one test");
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != H.owner)
			_exit(99);
		close(p[0]);
		int rc = fn(arg, p[1]);
		close(p[1]);
		_exit(rc);
	}
	close(p[1]);
	struct h_child *k = &H.kids[H.nchildren];
	*k = (struct h_child){
		.pid = pid, .rfd = p[0], .pidfd = pidfd_open_(pid), .slot = H.nchildren
	};
	H.nchildren++;
	*ch = *k;
}

ssize_t h_child_read(struct h_child *ch, void *buf, size_t len, int timeout_ms)
{
	struct h_child *k = kid_of(ch);
	char *p = buf;
	size_t got = 0;
	int64_t deadline = h_now_ms() + timeout_ms;
	while (got < len) {
		if (k->rfd < 0)
			return 0;
		int64_t left = deadline - h_now_ms();
		if (left <= 0)
			return -1;
		struct pollfd pf = { .fd = k->rfd, .events = POLLIN };
		int r = poll(&pf, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			return -1;
		ssize_t n = read(k->rfd, p + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		got += (size_t)n;
	}
	return (ssize_t)len;
}

int h_child_wait(struct h_child *ch, int timeout_ms)
{
	struct h_child *k = kid_of(ch);
	if (!k->done) {
		int st = 0;
		if (!wait_pid(k->pid, k->pidfd, timeout_ms, &st)) {
			kill(k->pid, SIGKILL);
			wait_pid(k->pid, k->pidfd, H_EXIT_TIMEOUT_MS, &st);
			k->done = 1;
			k->status = st;
			close_fd(&k->pidfd);
			close_fd(&k->rfd);
			*ch = *k;
			cr_assert_fail("child %ld did not finish within %d ms", (long)k->pid,
				       timeout_ms);
		}
		k->done = 1;
		k->status = st;
		close_fd(&k->pidfd);
		close_fd(&k->rfd);
		*ch = *k;
	}
	cr_assert(WIFEXITED(k->status), "child %ld died of signal %d", (long)k->pid,
		  WIFSIGNALED(k->status) ? WTERMSIG(k->status) : -1);
	return WEXITSTATUS(k->status);
}

void h_child_kill(struct h_child *ch)
{
	struct h_child *k = kid_of(ch);
	if (!k->done) {
		kill(k->pid, SIGKILL);
		int st = 0;
		wait_pid(k->pid, k->pidfd, H_EXIT_TIMEOUT_MS, &st);
		k->done = 1;
		k->status = st;
		close_fd(&k->pidfd);
		close_fd(&k->rfd);
	}
	*ch = *k;
}

/* ---------------------------------------------------------------- segment and JSON */

uint64_t h_counter(const char *name, uint32_t i)
{
	struct shmb_seg seg;
	char why[256] = "";
	int rc = seg_open_name(name, 0, &seg, why, sizeof why);
	cr_assert_eq(rc, 0, "mapping segment %s: %s (%s)", name, shmb_strerror(rc), why);
	struct shmb_counter *ctr = seg_counter(&seg, i);
	cr_assert_not_null(ctr);
	uint64_t v = __atomic_load_n(&ctr->value, __ATOMIC_ACQUIRE);
	seg_unmap(&seg);
	return v;
}

const cJSON *h_json_get(const cJSON *obj, const char *path)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", path);
	const cJSON *cur = obj;
	for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur;
	     tok = strtok_r(NULL, ".", &save))
		cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
	return cur;
}

double h_json_num(const cJSON *obj, const char *path)
{
	const cJSON *j = h_json_get(obj, path);
	char *s = cJSON_PrintUnformatted(obj);
	cr_assert(cJSON_IsNumber(j), "JSON has no number at \"%s\": %.2000s", path, s);
	free(s);
	return j->valuedouble;
}

int h_json_has_number(const cJSON *j, const char *key, double value)
{
	if (!j)
		return 0;
	if (j->string && !strcmp(j->string, key) && cJSON_IsNumber(j) && j->valuedouble == value)
		return 1;
	for (const cJSON *c = j->child; c; c = c->next)
		if (h_json_has_number(c, key, value))
			return 1;
	return 0;
}

const cJSON *h_json_sessions(const cJSON *doc)
{
	if (cJSON_IsArray(doc))
		return doc;
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(doc, "sessions");
	char *txt = cJSON_PrintUnformatted(doc);
	cr_assert(cJSON_IsArray(s), "shmctl sessions --json: no session array in %.2000s", txt);
	free(txt);
	return s;
}

pid_t h_metrics_listen(const char *name, int *port)
{
	int p[2];
	cr_assert_eq(pipe(p), 0);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(p[1], STDOUT_FILENO);
		close(p[0]);
		close(p[1]);
		execl(SHMCTL_PATH, SHMCTL_PATH, "--name", name, "metrics", "--listen",
		      "127.0.0.1:0", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	char line[128] = "";
	size_t len = 0;
	while (!memchr(line, '\n', len) && len < sizeof line - 1) {
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		cr_assert_eq(poll(&pf, 1, 10000), 1, "shmctl metrics --listen printed nothing");
		ssize_t n = read(p[0], line + len, sizeof line - 1 - len);
		cr_assert_gt(n, 0, "shmctl metrics --listen exited");
		len += (size_t)n;
		line[len] = '\0';
	}
	close(p[0]);
	cr_assert_eq(sscanf(line, "listening on 127.0.0.1:%d", port), 1, "%s", line);
	return pid;
}
