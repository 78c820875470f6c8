/* test_access.c - who may reach a broker's sessions (docs/security.md, DESIGN.md "Trust
 * boundary"): a process of another uid, not in allowed_gids, can neither attach nor create a
 * session nor open the segment by name, whether the socket's mode or the broker's SO_PEERCRED
 * check stops it; a gid in allowed_gids (primary or supplementary) lets it in; the segment and
 * the socket carry the modes docs/security.md derives from the configuration (also after an
 * adoption and under a strict umask); and
 * session ids are unpredictable: 128 random bits each.
 *
 * The tests that change uid run a forked child as nobody (65534) and skip unless run as root.
 * test_config.c (peer_credentials) has the basic SO_PEERCRED refusal and allowed_gids admission;
 * this file adds the segment, the raw protocol, supplementary groups and the modes. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"
#include "seg.h"

TestSuite(access, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define NOBODY 65534
#define EXTRA_GID 4242 /* a supplementary group no system account uses */

static void write_config(char *path, size_t len, const char *json)
{
	static int n;
	snprintf(path, len, "%s/access%d.json", h_runtime_dir(), ++n);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(json, f);
	fclose(f);
}

/* A broker with the given config file (JSON text) and the harness's small sizes. */
static struct h_broker *start_with(const char *json)
{
	char path[256];
	write_config(path, sizeof path, json);
	return h_broker_start(H_ARGS("--config", path));
}

/* ---- another uid ---- */

struct stranger {
	const char *name;
	const char *sock_path;
	int supplementary; /* 1: keep EXTRA_GID as a supplementary group */
};

/* What the child running as nobody saw. */
struct stranger_report {
	int attach;        /* shmb_attach */
	int create;        /* shmb_session_create after a successful attach, else 1 */
	int open;          /* shmb_session_open of what it created, else 1 */
	int connect_errno; /* raw connect to the socket: 0 or errno */
	int raw_code;      /* first reply on a raw connection after sending "create": its code,
			    * 0 for ok, 1 no reply */
	int shm_errno;     /* shm_open("/shmb.<name>", O_RDONLY): 0 or errno */
	int shm_rw_errno;  /* the same with O_RDWR */
	int seg_rc;        /* seg_open_name(name, read-only) */
};

/* A raw control connection: sends a create request and returns the code of the first reply
 * (0 when "ok" is true), 1 when none came; *err gets connect's errno. */
static int raw_create(const char *sock_path, int *err)
{
	*err = 0;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno;
		return 1;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		*err = errno;
		close(fd);
		return 1;
	}
	static const char req[] = "{\"op\":\"create\",\"tenant\":\"acme\"}";
	int code = 1;
	/* A refused peer's answer may already be queued (sent at accept); either way one reply. */
	if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1) ||
	    errno == EPIPE) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char buf[1024];
		ssize_t n = poll(&p, 1, 5000) == 1 ? recv(fd, buf, sizeof buf - 1, 0) : -1;
		if (n > 0) {
			buf[n] = '\0';
			cJSON *j = cJSON_Parse(buf);
			const cJSON *ok = cJSON_GetObjectItemCaseSensitive(j, "ok");
			const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "code");
			if (cJSON_IsTrue(ok))
				code = 0;
			else if (cJSON_IsNumber(c))
				code = (int)c->valuedouble;
			cJSON_Delete(j);
		}
	}
	close(fd);
	return code;
}

static int run_stranger(void *p, int wfd)
{
	const struct stranger *a = p;
	struct stranger_report r = { .create = 1, .open = 1, .raw_code = 1 };
	gid_t extra = EXTRA_GID;
	if (setgroups(a->supplementary ? 1 : 0, &extra) < 0 || setgid(NOBODY) < 0 ||
	    setuid(NOBODY) < 0)
		return 2;
	if (getuid() != NOBODY || geteuid() != NOBODY)
		return 3;

	shmb_client *c = NULL;
	r.attach = shmb_attach(a->name, &c);
	if (r.attach == 0) {
		char sid[SHMB_SID_LEN + 1];
		r.create = shmb_session_create(c, "acme", NULL, sid);
		if (r.create == 0) {
			shmb_session *s = NULL;
			r.open = shmb_session_open(c, sid, "acme", NULL, &s);
			if (r.open == 0)
				shmb_session_close(s);
		}
		shmb_detach(c);
	}
	r.raw_code = raw_create(a->sock_path, &r.connect_errno);

	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", a->name);
	int fd = shm_open(shm, O_RDONLY, 0);
	r.shm_errno = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	fd = shm_open(shm, O_RDWR, 0);
	r.shm_rw_errno = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	struct shmb_seg seg;
	char why[160];
	r.seg_rc = seg_open_name(a->name, 0, &seg, why, sizeof why);
	if (r.seg_rc == 0)
		seg_unmap(&seg);
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 4;
}

static struct stranger_report stranger(const struct h_broker *b, int supplementary)
{
	struct stranger a = { .name = b->name,
			      .sock_path = b->sock_path,
			      .supplementary = supplementary };
	struct h_child ch;
	h_child_start(&ch, run_stranger, &a);
	struct stranger_report r;
	ssize_t n = h_child_read(&ch, &r, sizeof r, 30000);
	int st = h_child_wait(&ch, 30000);
	cr_assert_eq(st, 0, "the child running as uid %d failed to set up (exit %d)", NOBODY, st);
	cr_assert_eq(n, (ssize_t)sizeof r, "the child running as uid %d did not report", NOBODY);
	return r;
}

static void need_root(void)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a child as another uid");
	/* The harness's runtime dir is 0700: open it, so only the socket's own mode and the
	 * broker's credential check stand between the stranger and the broker. */
	cr_assert_eq(chmod(h_runtime_dir(), 0755), 0, "chmod %s: %s", h_runtime_dir(),
		     strerror(errno));
}

/* Nothing the stranger did may have created a session. */
static void expect_nothing_created(const struct h_broker *b, const char *what)
{
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), 0,
		     "%s: a session was created for another uid", what);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_ADMITTED), 0,
		     "%s: a worker of another uid was admitted", what);
}

H_TEST(access, other_uid_stopped_by_the_modes)
{
	need_root();
	/* The defaults: segment and socket owner-only (0600), owned by root. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	struct stranger_report r = stranger(b, 0);
	cr_expect_eq(r.attach, SHMB_EACCES, "attach as uid nobody: %s, want SHMB_EACCES",
		     shmb_err_name(r.attach));
	cr_expect_eq(r.connect_errno, EACCES, "connect to a 0660 socket as nobody: %s",
		     strerror(r.connect_errno));
	cr_expect_eq(r.shm_errno, EACCES, "shm_open read-only as nobody: %s",
		     strerror(r.shm_errno));
	cr_expect_eq(r.shm_rw_errno, EACCES, "shm_open read-write as nobody: %s",
		     strerror(r.shm_rw_errno));
	cr_expect_eq(r.seg_rc, SHMB_EACCES, "seg_open_name as nobody: %s", shmb_err_name(r.seg_rc));
	expect_nothing_created(b, "modes 0660");
	/* The socket refused the connection itself: the broker never saw it. */
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_REFUSED), 0);
}

H_TEST(access, other_uid_stopped_by_peer_credentials)
{
	need_root();
	/* A socket anyone may connect to (chmod'ed behind the broker's back: it refuses such a
	 * socket_mode itself): only the broker's SO_PEERCRED check refuses. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	cr_assert_eq(chmod(b->sock_path, 0666), 0, "chmod %s: %s", b->sock_path, strerror(errno));
	struct stranger_report r = stranger(b, 0);
	cr_expect_eq(r.connect_errno, 0, "connect to a 0666 socket: %s", strerror(r.connect_errno));
	cr_expect_eq(r.attach, SHMB_EACCES, "attach as uid nobody: %s, want SHMB_EACCES",
		     shmb_err_name(r.attach));
	cr_expect_eq(r.raw_code, SHMB_EACCES, "a raw create as uid nobody got %d (%s)", r.raw_code,
		     r.raw_code < 0 ? shmb_err_name(r.raw_code) : "no error");
	cr_expect_eq(r.shm_errno, EACCES, "shm_open as nobody: %s", strerror(r.shm_errno));
	cr_expect_eq(r.seg_rc, SHMB_EACCES, "seg_open_name as nobody: %s", shmb_err_name(r.seg_rc));
	expect_nothing_created(b, "socket 0666");
	/* attach and the raw connection: both refused by the broker. */
	cr_expect_geq(h_counter(b->name, SHMB_CTR_WORKERS_REFUSED), 2);
	/* The broker still serves its own uid. */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
}

H_TEST(access, allowed_gids_admit_a_supplementary_group)
{
	need_root();
	char json[128];
	/* The default socket_mode: the socket's group is the allowed one (docs/security.md). */
	snprintf(json, sizeof json, "{\"allowed_gids\": [%d]}", EXTRA_GID);
	struct h_broker *b = start_with(json);

	/* nobody with EXTRA_GID as a supplementary group (SO_PEERGROUPS) is served... */
	struct stranger_report r = stranger(b, 1);
	cr_expect_eq(r.attach, 0, "attach with an allowed supplementary gid: %s",
		     shmb_err_name(r.attach));
	cr_expect_eq(r.create, 0, "create with an allowed supplementary gid: %s",
		     shmb_err_name(r.create));
	cr_expect_eq(r.open, 0, "open with an allowed supplementary gid: %s",
		     shmb_err_name(r.open));
	cr_expect_eq(r.raw_code, 0, "a raw create with an allowed gid got %d", r.raw_code);
	/* ...but the segment is still not its to open by name (0600). */
	cr_expect_eq(r.shm_errno, EACCES, "shm_open: %s", strerror(r.shm_errno));

	/* nobody without it is not: the socket's mode stops it at connect(). */
	uint64_t created = h_counter(b->name, SHMB_CTR_SESSIONS_CREATED);
	r = stranger(b, 0);
	cr_expect_eq(r.attach, SHMB_EACCES, "attach without the allowed gid: %s",
		     shmb_err_name(r.attach));
	cr_expect_eq(r.connect_errno, EACCES, "connect without the allowed gid: %s",
		     strerror(r.connect_errno));
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), created,
		     "a session was created for a gid not in allowed_gids");
}

/* ---- modes ---- */

static void expect_modes(const struct h_broker *b, unsigned seg_mode, unsigned sock_mode,
			 const char *what)
{
	struct stat st;
	cr_assert_eq(stat(b->shm_path, &st), 0, "%s: stat %s: %s", what, b->shm_path,
		     strerror(errno));
	cr_expect_eq(st.st_mode & 07777, seg_mode, "%s: segment %s has mode %04o, want %04o", what,
		     b->shm_path, st.st_mode & 07777, seg_mode);
	cr_expect_eq(st.st_uid, geteuid(), "%s: segment owned by uid %u", what,
		     (unsigned)st.st_uid);
	cr_assert_eq(lstat(b->sock_path, &st), 0, "%s: stat %s: %s", what, b->sock_path,
		     strerror(errno));
	cr_expect(S_ISSOCK(st.st_mode), "%s: %s is not a socket", what, b->sock_path);
	cr_expect_eq(st.st_mode & 07777, sock_mode, "%s: socket %s has mode %04o, want %04o", what,
		     b->sock_path, st.st_mode & 07777, sock_mode);
}

H_TEST(access, segment_and_socket_modes)
{
	/* The segment's name is owner-only; the socket's group bits go to allowed_gids only
	 * (docs/security.md), so with none the socket is owner-only too. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	expect_modes(b, 0600, 0600, "defaults");

	b = start_with("{\"segment_mode\": \"0600\", \"socket_mode\": \"0600\"}");
	expect_modes(b, 0600, 0600, "0600/0600");

	char json[160];
	snprintf(json, sizeof json,
		 "{\"segment_mode\": \"640\", \"socket_mode\": \"0640\", \"allowed_gids\": [%d]}",
		 EXTRA_GID);
	b = start_with(json);
	expect_modes(b, 0640, 0640, "0640/0640 with an allowed gid");
	struct stat st;
	cr_assert_eq(stat(b->sock_path, &st), 0);
	cr_expect_eq(st.st_gid, (gid_t)EXTRA_GID, "the socket's group is %u, want the allowed %d",
		     (unsigned)st.st_gid, EXTRA_GID);

	/* The modes are set explicitly, not left to the umask; the old default "0660" is
	 * accepted for the segment, without its group write bit. */
	mode_t old = umask(077);
	b = start_with("{\"segment_mode\": \"0660\", \"socket_mode\": \"0660\"}");
	umask(old);
	expect_modes(b, 0640, 0600, "umask 077");
}

H_TEST(access, adopted_segment_takes_the_configured_mode)
{
	/* An operator tightens segment_mode and restarts the broker: the segment it adopts must
	 * not keep the old, wider mode. */
	struct h_broker *b = start_with("{\"segment_mode\": \"0640\"}");
	expect_modes(b, 0640, 0600, "first start");
	h_broker_stop(b);
	char path[256];
	write_config(path, sizeof path, "{\"segment_mode\": \"0600\", \"socket_mode\": \"0600\"}");
	for (int i = 0; i + 1 < b->nargs; i++)
		if (strcmp(b->args[i], "--config") == 0) {
			free(b->args[i + 1]);
			b->args[i + 1] = strdup(path);
		}
	h_broker_restart(b);
	expect_modes(b, 0600, 0600, "after adoption");
}

/* ---- session ids ---- */

#define N_IDS 10000

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, SHMB_SID_LEN);
}

/* The id as a 128-bit number (big-endian hex). */
static unsigned __int128 id_value(const char *sid)
{
	unsigned __int128 v = 0;
	for (int i = 0; i < SHMB_SID_LEN; i++) {
		char ch = sid[i];
		v = v << 4 | (unsigned)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
	}
	return v;
}

H_TEST(access, session_ids_are_unpredictable, .timeout = 300)
{
	/* Room for every id at once (tiny rings), so none is recycled. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "10240", "--ring-events", "2",
				      "--ring-bytes", "64", "--max-event-bytes", "64"));
	shmb_client *c = h_attach(b->name);
	char(*ids)[SHMB_SID_LEN + 1] = calloc(N_IDS, sizeof *ids);
	cr_assert_not_null(ids);
	for (int i = 0; i < N_IDS; i++) {
		H_OK(shmb_session_create(c, "acme", NULL, ids[i]));
		cr_assert(h_sid_wellformed(ids[i]), "id %d is not 32 lowercase hex: %s", i, ids[i]);
	}

	/* Bits: each of the 128 positions is 1 in about half of the ids (binomial, sd 50: the
	 * bounds are 6 sd), and neighbours in creation order differ in about 64 bits (mean over
	 * 9,999 pairs, sd 0.06). No id is its predecessor + 1 (a counter) or repeats. */
	static unsigned ones[128];
	double hamming = 0;
	for (int i = 0; i < N_IDS; i++) {
		unsigned __int128 v = id_value(ids[i]);
		for (int k = 0; k < 128; k++)
			ones[k] += (unsigned)(v >> k) & 1;
		if (i == 0)
			continue;
		unsigned __int128 p = id_value(ids[i - 1]);
		cr_assert(v != p + 1 && v + 1 != p, "id %d is its predecessor's neighbour: %s, %s",
			  i, ids[i - 1], ids[i]);
		unsigned __int128 x = v ^ p;
		hamming += __builtin_popcountll((uint64_t)x) +
			   __builtin_popcountll((uint64_t)(x >> 64));
	}
	for (int k = 0; k < 128; k++)
		cr_expect(ones[k] >= N_IDS / 2 - 300 && ones[k] <= N_IDS / 2 + 300,
			  "bit %d is set in %u of %d ids (want %d +- 300)", k, ones[k], N_IDS,
			  N_IDS / 2);
	hamming /= N_IDS - 1;
	cr_expect(hamming > 63.5 && hamming < 64.5,
		  "neighbouring ids differ in %.2f bits on average (want about 64)", hamming);

	qsort(ids, N_IDS, sizeof *ids, cmp_id);
	for (int i = 1; i < N_IDS; i++)
		cr_assert_neq(strcmp(ids[i - 1], ids[i]), 0, "id %s was handed out twice", ids[i]);
	free(ids);
	h_detach(c);
}
