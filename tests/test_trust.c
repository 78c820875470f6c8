/* test_trust.c - who may talk to whom (docs/security.md): a client checks who its broker is
 * before it says a word (the red team's squatted /tmp/shmb-<uid>, a peer of the wrong uid, a
 * segment fd of the wrong owner or mode); the socket admits exactly allowed_gids and the segment's
 * name only the broker's uid (and shmctl as that uid or root still inspects a dead broker);
 * world-writable modes are refused; and a truncated segment is named as such, by the broker that
 * dies of it (SIGBUS) and by the one that rebuilds it.
 *
 * Brokers, clients and shmctl run as other uids in forked children (setresuid), so most tests
 * skip unless run as root. The uids and gids are unused numbers derived from the test's pid (no
 * account is created); /tmp/shmb-<uid> of such a uid is removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"

TestSuite(trust, .init = h_setup, .fini = h_teardown, .timeout = 120);

/* ---- identities: unused uids and gids, unique per test process ---- */

struct ident {
	uid_t uid;
	gid_t gid;
	gid_t extra; /* a supplementary group, 0: none */
};

static uid_t id_base(void)
{
	return (uid_t)(3000000 + (getpid() % 100000) * 8);
}

#define ATTACKER (id_base())   /* uid A: the squatter, or a trusted other uid */
#define VICTIM (id_base() + 1) /* uid B: the worker */
#define STRANGER (id_base() + 2)
#define GROUP2 (id_base() + 4) /* extra gids for allowed_gids */
#define GROUP3 (id_base() + 5)

static struct ident as_uid(uid_t uid)
{
	return (struct ident){ .uid = uid, .gid = (gid_t)uid };
}

/* In a child: become id, keeping PR_SET_PDEATHSIG (a credential change clears it). */
static int become(const struct ident *id)
{
	gid_t extra = id->extra;
	if (setgroups(extra ? 1 : 0, &extra) < 0 || setresgid(id->gid, id->gid, id->gid) < 0 ||
	    setresuid(id->uid, id->uid, id->uid) < 0)
		return -1;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	return geteuid() == id->uid ? 0 : -1;
}

/* The environment a child runs with: no XDG_RUNTIME_DIR (the red team's victim had none). */
struct envspec {
	const char *runtime_dir; /* SHMB_RUNTIME_DIR; NULL: unset (the default path) */
	const char *trusted;     /* SHMB_TRUSTED_UIDS; NULL: unset */
};

static void apply_env(const struct envspec *e)
{
	unsetenv("XDG_RUNTIME_DIR");
	if (e->runtime_dir)
		setenv("SHMB_RUNTIME_DIR", e->runtime_dir, 1);
	else
		unsetenv("SHMB_RUNTIME_DIR");
	if (e->trusted)
		setenv("SHMB_TRUSTED_UIDS", e->trusted, 1);
	else
		unsetenv("SHMB_TRUSTED_UIDS");
}

static void need_root(void)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run children as other uids");
	/* The harness's runtime dir is 0700: let other uids reach the sockets in it. */
	cr_assert_eq(chmod(h_runtime_dir(), 0755), 0, "chmod %s: %s", h_runtime_dir(),
		     strerror(errno));
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return strdup("");
	char *buf = calloc(1, 65537);
	size_t n = fread(buf, 1, 65536, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* A file in the harness's runtime dir for a child's stderr or stdout. */
static void out_path(char *buf, size_t len, const char *what)
{
	static int n;
	snprintf(buf, len, "%s/%s%d.out", h_runtime_dir(), what, ++n);
}

static void redirect(const char *path, int fd)
{
	int o = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (o >= 0) {
		dup2(o, fd);
		close(o);
	}
}

/* ---- a broker running as another uid ---- */

struct xbroker {
	char name[64];
	char log[256];
	char shm[96]; /* "/shmb.<name>" */
	struct h_child ch;
	int running;
};

struct xbroker_arg {
	struct ident id;
	struct envspec env;
	const char *name, *config, *log;
};

static int run_xbroker(void *p, int wfd)
{
	const struct xbroker_arg *a = p;
	redirect(a->log, STDERR_FILENO);
	if (become(&a->id) < 0)
		return 11;
	apply_env(&a->env);
	char fd[16];
	snprintf(fd, sizeof fd, "%d", wfd);
	fcntl(wfd, F_SETFD, 0); /* --ready-fd survives the exec */
	const char *argv[32] = { SHMBROKERD_PATH, "--name", a->name,       "--foreground",
				 "--ready-fd",    fd,       H_DEFAULT_ARGS };
	int n = 0;
	while (argv[n])
		n++;
	if (a->config) {
		argv[n++] = "--config";
		argv[n++] = a->config;
	}
	argv[n] = NULL;
	execv(SHMBROKERD_PATH, (char *const *)argv);
	return 12;
}

/* Starts a broker as id with env and (may be NULL) a config file holding json; waits until it
 * serves. */
static void xbroker_start(struct xbroker *x, struct ident id, struct envspec env, const char *json)
{
	memset(x, 0, sizeof *x);
	h_unique_name(x->name, sizeof x->name);
	snprintf(x->shm, sizeof x->shm, "/shmb.%s", x->name);
	out_path(x->log, sizeof x->log, "broker");
	char config[256] = "";
	if (json) {
		snprintf(config, sizeof config, "%s/%s.json", h_runtime_dir(), x->name);
		FILE *f = fopen(config, "we");
		cr_assert_not_null(f);
		fputs(json, f);
		fclose(f);
		chmod(config, 0644);
	}
	struct xbroker_arg a = {
		.id = id, .env = env, .name = x->name, .config = json ? config : NULL, .log = x->log
	};
	h_child_start(&x->ch, run_xbroker, &a);
	char ready[6];
	ssize_t n = h_child_read(&x->ch, ready, sizeof ready, H_READY_TIMEOUT_MS);
	if (n != (ssize_t)sizeof ready) {
		char *log = slurp(x->log);
		h_child_kill(&x->ch);
		cr_fatal("broker %s as uid %u did not start; log:\n%s", x->name, (unsigned)id.uid,
			 log);
	}
	x->running = 1;
}

static void xbroker_stop(struct xbroker *x)
{
	if (x->running) {
		kill(x->ch.pid, SIGTERM);
		int st = h_child_wait(&x->ch, H_EXIT_TIMEOUT_MS);
		cr_expect_eq(st, 0, "broker %s exited with %d", x->name, st);
		x->running = 0;
	}
	shm_unlink(x->shm);
}

/* ---- a client running as another uid ---- */

struct xclient_arg {
	struct ident id;
	struct envspec env;
	const char *name, *err;
};

struct xclient_report {
	int attach; /* shmb_attach */
	int create; /* shmb_session_create after a successful attach, else 1 */
};

static int run_xclient(void *p, int wfd)
{
	const struct xclient_arg *a = p;
	redirect(a->err, STDERR_FILENO);
	if (become(&a->id) < 0)
		return 11;
	apply_env(&a->env);
	struct xclient_report r = { .create = 1 };
	shmb_client *c = NULL;
	r.attach = shmb_attach(a->name, &c);
	if (r.attach == 0) {
		char sid[SHMB_SID_LEN + 1];
		r.create = shmb_session_create(c, "acme", NULL, sid);
		shmb_detach(c);
	}
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 12;
}

/* Runs shmb_attach(name) (and a create) as id with env; *err (malloc'd) gets its stderr. */
static struct xclient_report xclient(const char *name, struct ident id, struct envspec env,
				     char **err)
{
	char path[256];
	out_path(path, sizeof path, "client");
	struct xclient_arg a = { .id = id, .env = env, .name = name, .err = path };
	struct h_child ch;
	h_child_start(&ch, run_xclient, &a);
	struct xclient_report r;
	ssize_t n = h_child_read(&ch, &r, sizeof r, 30000);
	int st = h_child_wait(&ch, 30000);
	cr_assert_eq(st, 0, "the client as uid %u failed to set up (exit %d)", (unsigned)id.uid,
		     st);
	cr_assert_eq(n, (ssize_t)sizeof r, "the client as uid %u did not report", (unsigned)id.uid);
	*err = slurp(path);
	return r;
}

/* ---- a listener that only records what reaches it ---- */

struct listener_arg {
	struct ident id;
	const char *path;
	int done_fd; /* readable when the test is done with the client */
};

struct listener_report {
	int accepted; /* connections that reached it */
	int bytes;    /* bytes they sent */
};

static int run_listener(void *p, int wfd)
{
	const struct listener_arg *a = p;
	/* Bound as root (so it can sit in any dir the test picks), owned by id, and listening as
	 * id: SO_PEERCRED reports whoever called listen(). */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", a->path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    chown(a->path, a->id.uid, a->id.gid) < 0 || chmod(a->path, 0666) < 0)
		return 12;
	if (become(&a->id) < 0 || listen(fd, 16) < 0)
		return 11;
	if (h_write_all(wfd, "L", 1) < 0)
		return 13;
	struct pollfd pf = { .fd = a->done_fd, .events = POLLIN };
	if (poll(&pf, 1, 60000) != 1)
		return 14;
	/* Everything a client did is queued by now: connections in the backlog, their data. */
	struct listener_report r = { 0 };
	for (;;) {
		int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c < 0)
			break;
		r.accepted++;
		char buf[4096];
		ssize_t n;
		while ((n = recv(c, buf, sizeof buf, MSG_DONTWAIT)) > 0)
			r.bytes += (int)n;
		close(c);
	}
	unlink(a->path);
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 15;
}

struct listener {
	struct h_child ch;
	int done[2];
};

static void listener_start(struct listener *l, struct ident id, const char *path)
{
	cr_assert_eq(pipe2(l->done, O_CLOEXEC), 0);
	struct listener_arg a = { .id = id, .path = path, .done_fd = l->done[0] };
	h_child_start(&l->ch, run_listener, &a);
	close(l->done[0]);
	char c;
	cr_assert_eq(h_child_read(&l->ch, &c, 1, 10000), 1, "the listener did not start");
}

static struct listener_report listener_finish(struct listener *l)
{
	cr_assert_eq(write(l->done[1], "x", 1), 1);
	close(l->done[1]);
	struct listener_report r;
	cr_assert_eq(h_child_read(&l->ch, &r, sizeof r, 10000), (ssize_t)sizeof r,
		     "the listener did not report");
	cr_assert_eq(h_child_wait(&l->ch, 10000), 0);
	return r;
}

/* ---- shmctl as another uid ---- */

struct xrun_arg {
	struct ident id;
	const char *const *argv;
	const char *out;
};

static int run_xrun(void *p, int wfd)
{
	(void)wfd;
	const struct xrun_arg *a = p;
	redirect(a->out, STDOUT_FILENO);
	redirect(a->out, STDERR_FILENO);
	if (become(&a->id) < 0)
		return 111;
	execv(a->argv[0], (char *const *)a->argv);
	return 112;
}

/* Runs shmctl --name name verb as id; returns its exit status, *out its output. */
static int xshmctl(struct ident id, const char *name, const char *verb, char **out)
{
	char path[256];
	out_path(path, sizeof path, "shmctl");
	const char *argv[] = { SHMCTL_PATH, "--name", name, verb, NULL };
	struct xrun_arg a = { .id = id, .argv = argv, .out = path };
	struct h_child ch;
	h_child_start(&ch, run_xrun, &a);
	int st = h_child_wait(&ch, H_RUN_TIMEOUT_MS);
	*out = slurp(path);
	return st;
}

/* ================================================================ item 3: who is the broker */

/* The red team's attack: uid A creates the runtime dir of uid B, runs a broker there that
 * admits B's gid with a socket anyone may connect to; B's worker, with no XDG_RUNTIME_DIR, finds
 * it at the default path (or is pointed at A's dir). B must refuse with SHMB_EACCES, naming the
 * path and its owner, without ever sending its hello. */
static void squatted(const char *dir, struct envspec victim_env)
{
	h_rm_dir(dir);
	char json[96];
	snprintf(json, sizeof json, "{\"allowed_gids\": [%u]}", (unsigned)VICTIM);
	struct xbroker x;
	xbroker_start(&x, as_uid(ATTACKER), (struct envspec){ .runtime_dir = dir }, json);
	char sock[256];
	snprintf(sock, sizeof sock, "%s/%s.sock", dir, x.name);
	struct stat st;
	cr_assert_eq(stat(dir, &st), 0);
	cr_assert_eq(st.st_uid, ATTACKER, "%s was made by uid %u", dir, (unsigned)st.st_uid);
	cr_assert_eq(chmod(sock, 0666), 0); /* as the red team had it (the broker refuses 0666) */

	char *err = NULL;
	struct xclient_report r = xclient(x.name, as_uid(VICTIM), victim_env, &err);
	cr_expect_eq(r.attach, SHMB_EACCES, "the victim attached to the squatter's broker: %s",
		     shmb_err_name(r.attach));
	cr_expect(h_contains(err, dir) && h_contains(err, "libshmb:"),
		  "the diagnostic does not name %s:\n%s", dir, err);
	char owner[32];
	snprintf(owner, sizeof owner, "uid %u", (unsigned)ATTACKER);
	cr_expect(h_contains(err, owner), "the diagnostic does not name the owner (%s):\n%s", owner,
		  err);
	free(err);
	/* Nothing reached the squatter: no worker admitted, no request (not even a refused one). */
	cr_expect_eq(h_counter(x.name, SHMB_CTR_WORKERS_ADMITTED), 0, "the victim was admitted");
	cr_expect_eq(h_counter(x.name, SHMB_CTR_SESSIONS_CREATED), 0,
		     "the victim created a session");
	cr_expect_eq(h_counter(x.name, SHMB_CTR_CTL_ERRORS), 0, "the victim sent a request");
	xbroker_stop(&x);

	/* The same dir with a listener that records every byte: nothing, not even a connection. */
	struct listener l;
	listener_start(&l, as_uid(ATTACKER), sock);
	err = NULL;
	r = xclient(x.name, as_uid(VICTIM), victim_env, &err);
	free(err);
	cr_expect_eq(r.attach, SHMB_EACCES, "attach to the listener: %s", shmb_err_name(r.attach));
	struct listener_report lr = listener_finish(&l);
	cr_expect_eq(lr.accepted, 0, "the victim connected to the squatter (%d connections)",
		     lr.accepted);
	cr_expect_eq(lr.bytes, 0, "the victim sent the squatter %d bytes", lr.bytes);
	h_rm_dir(dir);
}

H_TEST(trust, squatted_default_runtime_dir_refused)
{
	need_root();
	char dir[64];
	snprintf(dir, sizeof dir, "/tmp/shmb-%u", (unsigned)VICTIM);
	squatted(dir, (struct envspec){ 0 }); /* the victim uses the default path */
}

H_TEST(trust, squatted_runtime_dir_refused)
{
	need_root();
	char dir[64];
	snprintf(dir, sizeof dir, "/tmp/shmbtrust.%d", (int)getpid());
	squatted(dir, (struct envspec){ .runtime_dir = dir });
}

/* The dir and the socket file look right (root's dir, the socket chown'ed to the victim), but
 * the process that listens is another uid's: SO_PEERCRED refuses it after connect, before the
 * hello. */
H_TEST(trust, peer_of_another_uid_refused_before_hello)
{
	need_root();
	char name[64], sock[256];
	h_unique_name(name, sizeof name);
	snprintf(sock, sizeof sock, "%s/%s.sock", h_runtime_dir(), name);
	struct listener l;
	listener_start(&l, as_uid(ATTACKER), sock);
	cr_assert_eq(chown(sock, VICTIM, VICTIM), 0, "chown %s: %s", sock, strerror(errno));
	char *err = NULL;
	struct xclient_report r = xclient(name, as_uid(VICTIM),
					  (struct envspec){ .runtime_dir = h_runtime_dir() }, &err);
	cr_expect_eq(r.attach, SHMB_EACCES, "attach to another uid's listener: %s",
		     shmb_err_name(r.attach));
	char owner[32];
	snprintf(owner, sizeof owner, "uid %u", (unsigned)ATTACKER);
	cr_expect(h_contains(err, owner) && h_contains(err, sock),
		  "the diagnostic names neither the socket nor the peer's uid:\n%s", err);
	free(err);
	struct listener_report lr = listener_finish(&l);
	cr_expect_eq(lr.accepted, 1, "the client did not connect (%d)", lr.accepted);
	cr_expect_eq(lr.bytes, 0, "the client sent %d bytes to a peer it does not trust", lr.bytes);
}

/* A writable-by-others runtime dir is refused even when ours, unless root-owned and sticky. */
H_TEST(trust, runtime_dir_writable_by_others_refused)
{
	need_root();
	struct h_broker *b = h_broker_start(H_NOARGS);
	cr_assert_eq(chmod(h_runtime_dir(), 0777), 0);
	char *err = NULL;
	struct xclient_report r =
		xclient(b->name, as_uid(VICTIM),
			(struct envspec){ .runtime_dir = h_runtime_dir(), .trusted = "0" }, &err);
	cr_expect_eq(r.attach, SHMB_EACCES, "a 0777 runtime dir: %s", shmb_err_name(r.attach));
	cr_expect(h_contains(err, "writable by every user"), "no reason given:\n%s", err);
	free(err);
	/* Root-owned and sticky, like /tmp: accepted (the socket's owner and the peer decide). */
	cr_assert_eq(chmod(h_runtime_dir(), 01777), 0);
	shmb_client *c = NULL;
	H_OK(shmb_attach(b->name, &c));
	shmb_detach(c);
	cr_assert_eq(chmod(h_runtime_dir(), 0700), 0);
}

/* The segment fd a trusted broker passes is checked too: world-writable, or owned by another
 * uid, and the client refuses it. */
H_TEST(trust, segment_fd_of_wrong_owner_or_mode_refused)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	cr_assert_eq(chmod(b->shm_path, 0666), 0);
	shmb_client *c = NULL;
	H_EXPECT_RC(shmb_attach(b->name, &c), SHMB_EACCES);
	cr_assert_eq(chmod(b->shm_path, 0600), 0);
	if (geteuid() == 0) {
		cr_assert_eq(chown(b->shm_path, STRANGER, STRANGER), 0);
		H_EXPECT_RC(shmb_attach(b->name, &c), SHMB_EACCES);
		cr_assert_eq(chown(b->shm_path, 0, 0), 0);
	}
	H_OK(shmb_attach(b->name, &c));
	shmb_detach(c);
}

/* The legitimate cases: same uid at the default path; a root broker and a worker of an allowed
 * gid; a broker of another uid the worker trusts (SHMB_TRUSTED_UIDS), and not without it. */
H_TEST(trust, legitimate_brokers_accepted)
{
	need_root();
	/* Same uid, the default /tmp/shmb-<uid>, made by its own broker. */
	char dir[64];
	snprintf(dir, sizeof dir, "/tmp/shmb-%u", (unsigned)VICTIM);
	h_rm_dir(dir);
	struct xbroker x;
	xbroker_start(&x, as_uid(VICTIM), (struct envspec){ 0 }, NULL);
	char *err = NULL;
	struct xclient_report r = xclient(x.name, as_uid(VICTIM), (struct envspec){ 0 }, &err);
	cr_expect_eq(r.attach, 0, "same uid, default path: %s\n%s", shmb_err_name(r.attach), err);
	cr_expect_eq(r.create, 0, "same uid, default path: create %s", shmb_err_name(r.create));
	free(err);
	xbroker_stop(&x);
	h_rm_dir(dir);

	/* A root broker admitting the worker's gid, with the default socket_mode. */
	char json[96];
	snprintf(json, sizeof json, "{\"allowed_gids\": [%u]}", (unsigned)VICTIM);
	char path[256];
	snprintf(path, sizeof path, "%s/legit.json", h_runtime_dir());
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(json, f);
	fclose(f);
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	struct envspec env = { .runtime_dir = h_runtime_dir() };
	r = xclient(b->name, as_uid(VICTIM), env, &err);
	cr_expect_eq(r.attach, 0, "root broker, allowed gid: %s\n%s", shmb_err_name(r.attach), err);
	cr_expect_eq(r.create, 0, "root broker, allowed gid: create %s", shmb_err_name(r.create));
	free(err);

	/* A broker of uid A in A's own dir, admitting B's gid: B attaches only if it trusts A. */
	snprintf(dir, sizeof dir, "/tmp/shmbtrust.%d", (int)getpid());
	h_rm_dir(dir);
	xbroker_start(&x, as_uid(ATTACKER), (struct envspec){ .runtime_dir = dir }, json);
	char trusted[32];
	snprintf(trusted, sizeof trusted, "1,%u", (unsigned)ATTACKER);
	r = xclient(x.name, as_uid(VICTIM),
		    (struct envspec){ .runtime_dir = dir, .trusted = trusted }, &err);
	cr_expect_eq(r.attach, 0, "trusted uid: %s\n%s", shmb_err_name(r.attach), err);
	cr_expect_eq(r.create, 0, "trusted uid: create %s", shmb_err_name(r.create));
	free(err);
	snprintf(trusted, sizeof trusted, "%ux", (unsigned)ATTACKER); /* not a uid: trusts none */
	r = xclient(x.name, as_uid(VICTIM),
		    (struct envspec){ .runtime_dir = dir, .trusted = trusted }, &err);
	cr_expect_eq(r.attach, SHMB_EACCES, "untrusted uid: %s", shmb_err_name(r.attach));
	free(err);
	xbroker_stop(&x);
	h_rm_dir(dir);
}

/* ================================================================ item 7: access control */

/* allowed_gids works with the default socket_mode, for one gid (the socket's group) and for
 * several (an ACL); a gid not listed is stopped by the socket itself. */
H_TEST(trust, allowed_gids_connect_with_the_default_mode)
{
	need_root();
	char path[256], json[128];
	snprintf(path, sizeof path, "%s/gids.json", h_runtime_dir());
	snprintf(json, sizeof json, "{\"allowed_gids\": [%u, %u]}", (unsigned)GROUP2,
		 (unsigned)GROUP3);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(json, f);
	fclose(f);
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	struct envspec env = { .runtime_dir = h_runtime_dir() };
	char *err = NULL;
	struct ident in2 = { .uid = VICTIM, .gid = GROUP2 };
	struct ident in3 = { .uid = STRANGER, .gid = (gid_t)STRANGER, .extra = GROUP3 };
	struct xclient_report r = xclient(b->name, in2, env, &err);
	cr_expect_eq(r.attach, 0, "primary gid %u allowed: %s\n%s", (unsigned)GROUP2,
		     shmb_err_name(r.attach), err);
	free(err);
	r = xclient(b->name, in3, env, &err);
	cr_expect_eq(r.attach, 0, "supplementary gid %u allowed: %s\n%s", (unsigned)GROUP3,
		     shmb_err_name(r.attach), err);
	free(err);
	r = xclient(b->name, as_uid(STRANGER), env, &err);
	cr_expect_eq(r.attach, SHMB_EACCES, "gid not allowed: %s", shmb_err_name(r.attach));
	cr_expect(h_contains(err, "permission denied connecting"),
		  "the socket's mode did not stop it:\n%s", err);
	free(err);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_REFUSED), 0,
		     "the kernel's check let a peer through to the broker's refusal");

	/* One gid: the socket's group. */
	snprintf(json, sizeof json, "{\"allowed_gids\": [%u]}", (unsigned)GROUP2);
	snprintf(path, sizeof path, "%s/gid.json", h_runtime_dir());
	f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(json, f);
	fclose(f);
	b = h_broker_start(H_ARGS("--config", path));
	struct stat st;
	cr_assert_eq(stat(b->sock_path, &st), 0);
	cr_expect_eq(st.st_gid, GROUP2, "socket group %u", (unsigned)st.st_gid);
	cr_expect_eq(st.st_mode & 0777, 0660, "socket mode %04o", st.st_mode & 0777);
	r = xclient(b->name, in2, env, &err);
	cr_expect_eq(r.attach, 0, "one allowed gid: %s\n%s", shmb_err_name(r.attach), err);
	free(err);
}

struct shm_probe {
	const char *shm;
	struct ident id;
};

static int run_shm_probe(void *p, int wfd)
{
	const struct shm_probe *a = p;
	if (become(&a->id) < 0)
		return 11;
	int rw = shm_open(a->shm, O_RDWR, 0);
	int e[2] = { rw < 0 ? errno : 0, 0 };
	if (rw >= 0)
		close(rw);
	int ro = shm_open(a->shm, O_RDONLY, 0);
	e[1] = ro < 0 ? errno : 0;
	if (ro >= 0)
		close(ro);
	return h_write_all(wfd, e, sizeof e) == 0 ? 0 : 12;
}

/* A uid in the broker's group, not admitted, cannot map (nor truncate) the segment by name. */
H_TEST(trust, broker_group_member_cannot_open_the_segment)
{
	need_root();
	struct h_broker *b = h_broker_start(H_NOARGS);
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	struct shm_probe a = { .shm = shm, .id = { .uid = STRANGER, .gid = getegid() } };
	struct h_child ch;
	h_child_start(&ch, run_shm_probe, &a);
	int e[2];
	cr_assert_eq(h_child_read(&ch, e, sizeof e, 10000), (ssize_t)sizeof e);
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	cr_expect_eq(e[0], EACCES,
		     "a member of the broker's group opened the segment read-write "
		     "(%s)",
		     strerror(e[0]));
	cr_expect_eq(e[1], EACCES, "a member of the broker's group opened the segment (%s)",
		     strerror(e[1]));
}

/* World-writable modes are refused at start, naming the field; nothing is created. */
static void expect_mode_refused(const char *json, const char *field)
{
	char path[256];
	static int n;
	snprintf(path, sizeof path, "%s/mode%d.json", h_runtime_dir(), ++n);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(json, f);
	fclose(f);
	struct h_broker *b = h_broker_new(H_ARGS("--config", path));
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	char *log = h_broker_log(b);
	cr_expect_eq(rc, -1, "%s: the broker started", json);
	cr_expect(rc != -1 || (WIFEXITED(st) && WEXITSTATUS(st) == 2),
		  "%s: want exit status 2:\n%s", json, log);
	cr_expect(h_contains(log, field), "%s: the message does not name %s:\n%s", json, field,
		  log);
	free(log);
	cr_expect_neq(access(b->shm_path, F_OK), 0, "%s: a segment was left", json);
	cr_expect_neq(access(b->sock_path, F_OK), 0, "%s: a socket was left", json);
}

H_TEST(trust, world_writable_modes_refused)
{
	expect_mode_refused("{\"socket_mode\": \"0666\"}", "socket_mode");
	expect_mode_refused("{\"socket_mode\": \"0777\"}", "socket_mode");
	expect_mode_refused("{\"socket_mode\": \"0602\"}", "socket_mode");
	expect_mode_refused("{\"segment_mode\": \"0666\"}", "segment_mode");
	expect_mode_refused("{\"segment_mode\": \"0777\"}", "segment_mode");
	expect_mode_refused("{\"segment_mode\": \"0604\"}", "segment_mode");
}

/* /dev/shm is writable by everyone: a segment name another uid created first (wide open, to
 * read what the broker would put in it) is refused, not adopted. */
H_TEST(trust, segment_created_by_another_uid_not_adopted)
{
	need_root();
	struct h_broker *b = h_broker_new(NULL);
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	int fd = shm_open(shm, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0666);
	cr_assert_geq(fd, 0, "shm_open: %s", strerror(errno));
	cr_assert_eq(fchown(fd, STRANGER, STRANGER), 0);
	cr_assert_eq(fchmod(fd, 0666), 0);
	cr_assert_eq(ftruncate(fd, 1 << 20), 0);
	close(fd);
	int st = 0;
	cr_expect_eq(h_broker_spawn(b, &st), -1, "the broker adopted another uid's segment");
	char *log = h_broker_log(b);
	char owner[32];
	snprintf(owner, sizeof owner, "belongs to uid %u", (unsigned)STRANGER);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1 && h_contains(log, owner),
		  "want exit 1 naming the owner:\n%s", log);
	free(log);
	struct stat sst;
	cr_expect_eq(stat(b->shm_path, &sst), 0, "the squatter's segment was removed");
	cr_expect_eq(sst.st_uid, STRANGER);
	shm_unlink(shm);
}

/* The segment's name is 0600, yet shmctl as the broker's uid, or root, inspects a dead broker;
 * a uid in neither is refused. */
H_TEST(trust, shmctl_inspects_a_dead_broker_as_its_uid_or_root)
{
	need_root();
	char dir[64];
	snprintf(dir, sizeof dir, "/tmp/shmbtrust.%d", (int)getpid());
	h_rm_dir(dir);
	struct xbroker x;
	xbroker_start(&x, as_uid(ATTACKER), (struct envspec){ .runtime_dir = dir }, NULL);
	char *err = NULL;
	struct xclient_report r =
		xclient(x.name, as_uid(ATTACKER), (struct envspec){ .runtime_dir = dir }, &err);
	cr_assert_eq(r.create, 0, "create as the broker's uid: %s\n%s", shmb_err_name(r.create),
		     err);
	free(err);
	struct stat st;
	char shm_path[128];
	snprintf(shm_path, sizeof shm_path, "/dev/shm%s", x.shm);
	cr_assert_eq(stat(shm_path, &st), 0);
	cr_expect_eq(st.st_mode & 07777, 0600, "segment mode %04o", st.st_mode & 07777);
	cr_expect_eq(st.st_uid, ATTACKER, "segment owner %u", (unsigned)st.st_uid);
	h_child_kill(&x.ch); /* SIGKILL: the broker is dead, its segment stays */
	x.running = 0;

	char *out = NULL;
	int rc = xshmctl(as_uid(ATTACKER), x.name, "verify", &out);
	cr_expect_eq(rc, 0, "shmctl verify as the broker's uid: exit %d\n%s", rc, out);
	free(out);
	rc = xshmctl(as_uid(ATTACKER), x.name, "status", &out);
	cr_expect(h_contains(out, "broker: dead"), "shmctl status as the broker's uid: %d\n%s", rc,
		  out);
	free(out);
	struct h_result res;
	h_shmctl(&res, x.name, "verify", NULL);
	cr_expect_eq(res.status, 0, "shmctl verify as root: %d\n%s%s", res.status, res.out,
		     res.err);
	h_result_free(&res);
	h_shmctl(&res, x.name, "status", NULL);
	cr_expect(h_contains(res.out, "broker: dead"), "shmctl status as root: %d\n%s", res.status,
		  res.out);
	h_result_free(&res);
	rc = xshmctl(as_uid(STRANGER), x.name, "verify", &out);
	cr_expect(rc == 3 && h_contains(out, "permission denied"),
		  "shmctl verify as a stranger: %d\n%s", rc, out);
	free(out);
	xbroker_stop(&x);
	h_rm_dir(dir);
}

/* ================================================================ item 9: truncation */

static void truncate_segment(const struct h_broker *b, off_t size)
{
	cr_assert_eq(truncate(b->shm_path, size), 0, "truncate %s: %s", b->shm_path,
		     strerror(errno));
}

static void create_sessions(const struct h_broker *b, int n)
{
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	for (int i = 0; i < n; i++)
		H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
}

/* After the restart: a new, working segment. */
static void expect_rebuilt(const struct h_broker *b)
{
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_LIVE), 0);
	create_sessions(b, 1);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_LIVE), 1);
}

H_TEST(trust, truncated_segment_named_on_restart)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	create_sessions(b, 3);
	h_broker_stop(b);
	/* Cut inside the segment, header intact: the log says how much and what was lost. */
	truncate_segment(b, 65536);
	h_broker_restart(b);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "is 65536 bytes but its header says") &&
			  h_contains(log, "it was truncated") &&
			  h_contains(log, "its 3 sessions are lost; building a new one"),
		  "the log does not say what happened:\n%s", log);
	cr_expect(!h_contains(log, "never finished"), "truncation called an unfinished build:\n%s",
		  log);
	free(log);
	expect_rebuilt(b);

	/* truncate -s 0: the header is gone too. */
	h_broker_stop(b);
	truncate_segment(b, 0);
	h_broker_restart(b);
	log = h_broker_log(b);
	cr_expect(h_contains(log, "is 0 bytes, smaller than its header: it was truncated"),
		  "the log does not say the segment was truncated:\n%s", log);
	cr_expect(!h_contains(log, "never finished"), "truncation called an unfinished build:\n%s",
		  log);
	free(log);
	expect_rebuilt(b);
}

H_TEST(trust, unfinished_build_still_named_as_such)
{
	struct h_broker *b = h_broker_new(NULL);
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	/* What a broker killed between creating and sizing the segment leaves. */
	int fd = shm_open(shm, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, S_ISVTX | 0600);
	cr_assert_geq(fd, 0, "shm_open: %s", strerror(errno));
	close(fd);
	cr_assert_eq(h_broker_spawn(b, NULL), 0);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "its build never finished") && !h_contains(log, "truncated"),
		  "%s", log);
	free(log);
	expect_rebuilt(b);
}

H_TEST(trust, broker_says_sigbus_means_truncated)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	create_sessions(b, 1);
	truncate_segment(b, 0); /* under the running broker: its next heartbeat faults */
	int st = h_broker_wait_exit(b, 10000);
	cr_expect(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "the broker ended with %#x", st);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "SIGBUS in segment") && h_contains(log, "truncated under us"),
		  "the broker died without saying why:\n%s", log);
	free(log);
	h_broker_restart(b);
	log = h_broker_log(b);
	cr_expect(h_contains(log, "it was truncated"), "%s", log);
	free(log);
	expect_rebuilt(b);
}
