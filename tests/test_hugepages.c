/* test_hugepages.c - the broker's segment_dir (issue 11): the segment as a file
 * <segment_dir>/shmb.<name> on a tmpfs, huge pages when that tmpfs is mounted huge=always.
 *
 * Each test makes a fresh directory: a tmpfs mounted with huge=always,size=256m on a directory
 * under /tmp, in a private mount namespace, when this process may (root, or a container that
 * allows it), else a directory
 * under /dev/shm (a tmpfs, 4 KiB pages unless the system says otherwise; the page-size checks
 * are then skipped with a message). Covered: creation where configured (mode, no sticky bit,
 * nothing in /dev/shm), the path file shmctl reads, attach/create/open/publish/read, shmctl
 * status/sessions/verify with the broker alive and dead, status's page size, a restarted broker
 * adopting the file, --unlink-on-exit removing it and the path file, a damaged, symlinked or
 * group-writable path file refused by shmctl with a clear error, and a segment_dir that is no
 * tmpfs or not absolute refused by the broker. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

TestSuite(hugepages, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define TMPFS_MAGIC_ 0x01021994

static char dir[128];
static int mounted;

/* A fresh segment directory (see the file comment). */
static void make_dir(void)
{
	snprintf(dir, sizeof dir, "/tmp/shmb-huge.XXXXXX");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	/* In a mount namespace of this test process (and the brokers and shmctl it starts), with
	 * private propagation: the mount is nobody else's and ends with the process, even if the
	 * test crashes before it unmounts. */
	mounted = unshare(CLONE_NEWNS) == 0 &&
		  mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
		  mount("none", dir, "tmpfs", 0, "huge=always,size=256m,mode=0700") == 0;
	if (!mounted) {
		cr_log_info("cannot mount a huge=always tmpfs (%s): using /dev/shm, page-size "
			    "checks skipped",
			    strerror(errno));
		rmdir(dir);
		snprintf(dir, sizeof dir, "/dev/shm/shmb-huge.XXXXXX");
		cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	}
}

static void remove_dir(void)
{
	h_rm_dir(dir); /* the files, and the directory when it is not a mount point */
	if (mounted) {
		cr_expect_eq(umount2(dir, MNT_DETACH), 0, "umount %s: %s", dir, strerror(errno));
		rmdir(dir);
	}
}

static char *read_file(const char *path)
{
	static char buf[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static void seg_file(const struct h_broker *b, char *out, size_t len)
{
	snprintf(out, len, "%s/shmb.%s", dir, b->name);
}

static void path_file(const struct h_broker *b, char *out, size_t len)
{
	snprintf(out, len, "%s/%s.segment", h_runtime_dir(), b->name);
}

/* shmctl status --json whatever its exit status (3 with the broker dead); parsed. */
static cJSON *status_json(const struct h_broker *b)
{
	struct h_result r;
	h_shmctl(&r, b->name, "status", "--json", NULL);
	cJSON *j = cJSON_Parse(r.out);
	cr_assert_not_null(j, "shmctl status --json: exit %d, no JSON:\n%s%s", r.status, r.out,
			   r.err);
	h_result_free(&r);
	return j;
}

static void expect_status(const struct h_broker *b, int alive)
{
	char want[256];
	seg_file(b, want, sizeof want);
	cJSON *j = status_json(b);
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "segment_path");
	cr_expect(cJSON_IsString(p) && !strcmp(p->valuestring, want), "segment_path %s, want %s",
		  cJSON_IsString(p) ? p->valuestring : "(none)", want);
	const cJSON *bk = cJSON_GetObjectItemCaseSensitive(j, "broker");
	cr_expect_eq(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(bk, "alive")), alive);
	double ps = h_json_num(j, "page_size");
	if (mounted)
		cr_expect_eq(ps, 2097152.0, "page_size %.0f on a huge=always tmpfs", ps);
	else
		cr_expect(ps == 4096.0 || ps == 2097152.0, "page_size %.0f", ps);
	cJSON_Delete(j);

	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "sessions", NULL);
	cr_expect_eq(r.status, 0, "sessions: exit %d\n%s", r.status, r.err);
	cr_expect(h_contains(r.out, "acme"), "sessions does not list the session:\n%s", r.out);
	h_result_free(&r);
}

H_TEST(hugepages, segment_in_segment_dir)
{
	make_dir();
	/* Records over several 2 MiB pages (a smaller mapping cannot be PMD-mapped). */
	struct h_broker *b = h_broker_start(
		H_ARGS("--segment-dir", dir, "--unlink-on-exit", "--max-sessions", "8192",
		       "--ring-events", "2", "--ring-bytes", "64", "--max-event-bytes", "32"));
	char seg[256], pf[256];
	seg_file(b, seg, sizeof seg);
	path_file(b, pf, sizeof pf);
	struct stat st;
	cr_assert_eq(stat(seg, &st), 0, "no segment %s: %s", seg, strerror(errno));
	cr_expect_eq(st.st_mode & 07777, 0600, "mode %04o", (unsigned)(st.st_mode & 07777));
	cr_expect_neq(access(b->shm_path, F_OK), 0, "a segment in /dev/shm too");
	char want[300];
	snprintf(want, sizeof want, "%s\n", seg);
	char *got = read_file(pf);
	cr_expect(got && !strcmp(got, want), "path file %s holds '%s'", pf, got ? got : "(none)");

	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	cr_expect_eq(shmb_publish(s, 0, 1, "hello", 5), 1);
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(s, 0, &cur));
	shmb_event ev;
	char buf[16];
	cr_expect_eq(shmb_cursor_next(cur, &ev, buf, sizeof buf), 1);
	cr_expect(ev.len == 5 && !memcmp(buf, "hello", 5));
	shmb_cursor_close(cur);
	shmb_session_close(s);
	expect_status(b, 1);

	h_broker_kill(b); /* the file stays; shmctl finds it through the path file */
	cr_expect_eq(access(seg, F_OK), 0);
	expect_status(b, 0);
	/* Workers keep their mapping while the broker is dead. */
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	cr_expect_eq(shmb_publish(s, 0, 1, "again", 5), 2);
	shmb_session_close(s);

	h_broker_restart(b);
	char *log = h_broker_log(b);
	char adopted[300];
	snprintf(adopted, sizeof adopted, "adopted segment %s: 1 live session", seg);
	cr_expect(h_contains(log, adopted), "the restarted broker did not adopt %s:\n%s", seg, log);
	free(log);
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	shmb_session_stat(s, &(shmb_session_info){ 0 });
	shmb_session_close(s);
	expect_status(b, 1);
	h_detach(c);
	h_broker_stop(b);
	cr_expect_neq(access(seg, F_OK), 0, "--unlink-on-exit left %s", seg);
	cr_expect_neq(access(pf, F_OK), 0, "--unlink-on-exit left %s", pf);
	remove_dir();
}

static void expect_refused(const struct h_broker *b, const char *word)
{
	struct h_result r;
	h_shmctl(&r, b->name, "status", NULL);
	cr_expect_eq(r.status, 3, "status with a bad path file: exit %d\n%s%s", r.status, r.out,
		     r.err);
	cr_expect(h_contains(r.err, "segment path file") && h_contains(r.err, word),
		  "no clear error naming the path file (%s):\n%s", word, r.err);
	h_result_free(&r);
}

H_TEST(hugepages, damaged_path_file_refused)
{
	make_dir();
	struct h_broker *b = h_broker_start(H_ARGS("--segment-dir", dir));
	h_broker_stop(b); /* the segment and its path file stay */
	char seg[256], pf[256], good[512];
	seg_file(b, seg, sizeof seg);
	path_file(b, pf, sizeof pf);
	snprintf(good, sizeof good, "%s", read_file(pf));

	static const char *const bad[] = { "garbage\n", "/dev/shm/shmb.other\n", "/etc/passwd\n",
					   "/x/../shmb.y" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		FILE *f = fopen(pf, "we");
		fputs(bad[i], f);
		fclose(f);
		expect_refused(b, "damaged");
	}
	unlink(pf);
	cr_assert_eq(symlink("/etc/hostname", pf), 0);
	expect_refused(b, "symlink");
	unlink(pf);
	FILE *f = fopen(pf, "we");
	fputs(good, f);
	fclose(f);
	chmod(pf, 0666);
	expect_refused(b, "refused");
	chmod(pf, 0644);
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "the restored path file: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	unlink(seg);
	remove_dir();
}

H_TEST(hugepages, bad_segment_dir_refused)
{
	struct statfs sf;
	const char *rt = h_runtime_dir();
	if (statfs(rt, &sf) == 0 && sf.f_type != TMPFS_MAGIC_) {
		struct h_broker *b = h_broker_new(H_ARGS("--segment-dir", rt));
		int ws = 0;
		cr_expect_eq(h_broker_spawn(b, &ws), -1, "a broker started on a non-tmpfs dir");
		cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "exit status %d", ws);
		char *log = h_broker_log(b);
		cr_expect(h_contains(log, "is not a tmpfs"), "%s", log);
		free(log);
	} else {
		cr_log_info("the runtime dir %s is a tmpfs: non-tmpfs check skipped", rt);
	}
	struct h_broker *b2 = h_broker_new(H_ARGS("--segment-dir", "relative/dir"));
	int ws = 0;
	cr_expect_eq(h_broker_spawn(b2, &ws), -1);
	cr_expect(WIFEXITED(ws) && WEXITSTATUS(ws) == 2, "exit status %d", ws);
	char *log = h_broker_log(b2);
	cr_expect(h_contains(log, "absolute"), "%s", log);
	free(log);
}
