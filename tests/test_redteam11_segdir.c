/* test_redteam11_segdir.c - red-team findings on segment_dir (issue 11): a segment_dir the broker
 * accepts must give a path file that shmctl accepts. A directory named with a ".." component
 * ("/dev/shm/x/../y") or through a symlink was written verbatim into <runtime>/<name>.segment,
 * which shmctl then refused as "damaged" (it refuses "/../" in the path), so status, sessions and
 * verify could not find a healthy segment by name. The broker now names the directory by its
 * canonical path (the one trust_check_dir checked). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

TestSuite(redteam11_segdir, .init = h_setup, .fini = h_teardown, .timeout = 60);

static char base[128], real_dir[160];

static void make_dirs(void)
{
	snprintf(base, sizeof base, "/dev/shm/shmb-rt11.XXXXXX");
	cr_assert_not_null(mkdtemp(base), "mkdtemp: %s", strerror(errno));
	snprintf(real_dir, sizeof real_dir, "%s/seg", base);
	cr_assert_eq(mkdir(real_dir, 0700), 0, "mkdir %s: %s", real_dir, strerror(errno));
	char other[200];
	snprintf(other, sizeof other, "%s/other", base);
	cr_assert_eq(mkdir(other, 0700), 0, "mkdir %s: %s", other, strerror(errno));
}

/* Removes what make_dirs made (h_rm_dir removes files and its directory, not subdirectories),
 * and checks that nothing is left in /dev/shm. */
static void rm_dirs(void)
{
	char other[200];
	snprintf(other, sizeof other, "%s/other", base);
	h_rm_dir(real_dir);
	h_rm_dir(other);
	h_rm_dir(base);
	cr_expect(access(base, F_OK) < 0, "%s is left behind", base);
}

static void expect_shmctl_finds(const struct h_broker *b)
{
	char want[256];
	snprintf(want, sizeof want, "%s/shmb.%s", real_dir, b->name);
	struct h_result r;
	h_shmctl(&r, b->name, "status", "--json", NULL);
	cr_expect_eq(r.status, 0, "status: exit %d\n%s%s", r.status, r.out, r.err);
	cJSON *j = cJSON_Parse(r.out);
	const cJSON *p = j ? cJSON_GetObjectItemCaseSensitive(j, "segment_path") : NULL;
	cr_expect(cJSON_IsString(p) && !strcmp(p->valuestring, want), "segment_path %s, want %s",
		  cJSON_IsString(p) ? p->valuestring : "(none)", want);
	cJSON_Delete(j);
	h_result_free(&r);
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
}

static void run(const char *given)
{
	struct h_broker *b = h_broker_start(H_ARGS("--segment-dir", given));
	expect_shmctl_finds(b);
	/* And after a restart (adoption through the same canonical path). */
	h_broker_stop(b);
	h_broker_restart(b);
	expect_shmctl_finds(b);
	h_broker_stop(b);
	char seg[256];
	snprintf(seg, sizeof seg, "%s/shmb.%s", real_dir, b->name);
	unlink(seg);
}

H_TEST(redteam11_segdir, dotdot_component)
{
	make_dirs();
	char given[256];
	snprintf(given, sizeof given, "%s/other/../seg", base);
	run(given);
	rm_dirs();
}

H_TEST(redteam11_segdir, symlinked_directory)
{
	make_dirs();
	char link[256];
	snprintf(link, sizeof link, "%s/link", base);
	cr_assert_eq(symlink(real_dir, link), 0, "symlink: %s", strerror(errno));
	run(link);
	rm_dirs();
}

/* ---------------------------------------------------------------- a changed segment_dir */

/* A broker restarted with another segment_dir builds a new segment there; the old one is no
 * longer served. Workers still mapping the old one must be told (SHMB_ESTALE, the documented
 * "replaced segment" contract), not go on publishing where nobody reads. */
/* Runs a broker with segment_dir `from` ("": /dev/shm), a worker with a session in it, then
 * restarts it with segment_dir `to`: the worker's segment must be retired. */
static void moved(const char *from, const char *to)
{
	struct h_broker *b = h_broker_start(from[0] ? H_ARGS("--segment-dir", from) : H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	cr_assert_gt(shmb_publish(s, 0, 0, "{}", 2), 0);
	h_broker_stop(b);
	for (int i = 0; i < b->nargs; i++)
		free(b->args[i]);
	b->nargs = 0;
	if (to[0]) {
		b->args[b->nargs++] = strdup("--segment-dir");
		b->args[b->nargs++] = strdup(to);
	}
	h_broker_restart(b);
	char *log = h_broker_log(b);
	char old_seg[256];
	snprintf(old_seg, sizeof old_seg, "%s/shmb.%s", from[0] ? from : "/dev/shm", b->name);
	cr_expect(h_contains(log, "marked retired"), "the new broker does not retire %s:\n%s",
		  old_seg, log);
	free(log);
	/* The old segment is marked retired: every data-path call on it fails. */
	int64_t id = shmb_publish(s, 0, 0, "{}", 2);
	cr_expect_eq(id, SHMB_ESTALE, "publish into the old segment: %lld, want SHMB_ESTALE",
		     (long long)id);
	shmb_session *s2 = NULL;
	int rc = shmb_session_open(c, sid, "acme", NULL, &s2);
	cr_expect_eq(rc, SHMB_ESTALE, "open in the old segment: %s, want SHMB_ESTALE",
		     shmb_err_name(rc));
	if (s2)
		shmb_session_close(s2);
	shmb_session_close(s);
	h_detach(c);
	/* A worker attaching now gets the new segment, and works. */
	c = h_attach(b->name);
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
	h_broker_stop(b);
	unlink(old_seg);
	snprintf(old_seg, sizeof old_seg, "%s/shmb.%s", to[0] ? to : "/dev/shm", b->name);
	unlink(old_seg);
}

H_TEST(redteam11_segdir, changed_segment_dir_retires_the_old_segment)
{
	make_dirs();
	char other[200];
	snprintf(other, sizeof other, "%s/other", base);
	moved(real_dir, other);
	rm_dirs();
}

H_TEST(redteam11_segdir, dev_shm_to_segment_dir_retires_the_old_segment)
{
	make_dirs();
	moved("", real_dir);
	rm_dirs();
}

H_TEST(redteam11_segdir, segment_dir_to_dev_shm_retires_the_old_segment)
{
	make_dirs();
	moved(real_dir, "");
	rm_dirs();
}
