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
	h_rm_dir(base);
}

H_TEST(redteam11_segdir, symlinked_directory)
{
	make_dirs();
	char link[256];
	snprintf(link, sizeof link, "%s/link", base);
	cr_assert_eq(symlink(real_dir, link), 0, "symlink: %s", strerror(errno));
	run(link);
	h_rm_dir(base);
}
