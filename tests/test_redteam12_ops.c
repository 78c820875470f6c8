/* test_redteam12_ops.c - red team 12 on the operations work of issue 15 (dump and restore,
 * metrics --listen): each test is a defect found by attacking it, and fails without its fix.
 *
 * - A tenant or principal that a dump could not write exactly came back from a restore as
 *   another tenant: control characters and invalid UTF-8 were written as '?', so a session of
 *   tenant "a\tb" came back bound to tenant "a?b" (its own client refused, SHMB_EPERM, and a
 *   client of tenant "a?b" admitted to it).
 * - `shmctl metrics --listen` answered one client at a time with blocking sends: a client that
 *   sent its request and never read the answer wedged the endpoint for every scraper, forever. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

TestSuite(redteam12_ops, .init = h_setup, .fini = h_teardown, .timeout = 90);

static void expect_open(shmb_client *c, const char *sid, const char *tenant, const char *principal,
			int want, const char *what)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, principal, &s);
	cr_expect_eq(rc, want, "%s: open gave %s, want %s", what, shmb_err_name(rc),
		     shmb_err_name(want));
	if (s)
		shmb_session_close(s);
}

H_TEST(redteam12_ops, dump_restore_keeps_tenant_and_principal_bytes_exactly)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char tab[SHMB_SID_LEN + 1], bin[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "a\tb", "p\nq", tab));
	H_OK(shmb_session_create(c,
				 "a\xff"
				 "b",
				 "\xc3(", bin)); /* not UTF-8 */
	h_detach(c);

	char path[300];
	snprintf(path, sizeof path, "%s/dump.json", h_runtime_dir());
	struct h_result r;
	h_shmctl(&r, b->name, "dump", path, NULL);
	cr_assert_eq(r.status, 0, "dump: %s", r.err);
	h_result_free(&r);
	h_broker_stop(b);
	cr_assert_eq(unlink(b->shm_path), 0, "%s: %s", b->shm_path, strerror(errno));
	h_broker_restart(b);
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_assert_eq(r.status, 0, "restore: %s%s", r.out, r.err);
	h_result_free(&r);

	c = h_attach(b->name);
	expect_open(c, tab, "a\tb", "p\nq", 0, "tenant a\\tb, its own client");
	expect_open(c, tab, "a?b", "p?q", SHMB_EPERM, "tenant a?b, another tenant");
	expect_open(c, bin,
		    "a\xff"
		    "b",
		    "\xc3(", 0, "tenant a\\xffb, its own client");
	expect_open(c, bin, "a?b", "?(", SHMB_EPERM, "tenant a?b, another tenant");
	h_detach(c);
	h_broker_stop(b);
}

H_TEST(redteam12_ops, restore_refuses_a_bad_tenant_base64)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	char path[300];
	snprintf(path, sizeof path, "%s/bad.json", h_runtime_dir());
	FILE *f = fopen(path, "w");
	cr_assert(f);
	/* "YQBi" is "a\0b": a NUL no tenant can hold. */
	fprintf(f,
		"{\"format_version\":1,\"sessions\":[{\"id\":\"%032x\",\"tenant\":\"a?b\","
		"\"tenant_base64\":\"YQBi\",\"principal\":null,\"created_at_ms\":1,"
		"\"last_accessed_at_ms\":1,\"inactivity_ttl_ms\":60000,"
		"\"absolute_ttl_ms\":60000,\"last_event_id\":0,\"events\":[]}]}\n",
		7);
	fclose(f);
	struct h_result r;
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_expect_eq(r.status, 2, "restore: exit %d: %s%s", r.status, r.out, r.err);
	cr_expect(h_contains(r.err, "tenant_base64"), "stderr: %s", r.err);
	h_result_free(&r);
	cJSON *j = h_shmctl_json(b->name, "sessions", NULL);
	cr_expect_eq(cJSON_GetArraySize(h_json_sessions(j)), 0, "a session was restored");
	cJSON_Delete(j);
	h_broker_stop(b);
}
