/* test_multi.c - several broker instances with different names side by side: separate
 * segments, sockets and sessions; one process may attach to both; stopping one leaves the other
 * untouched. */
#include <string.h>
#include <unistd.h>

#include "harness.h"

TestSuite(multi, .init = h_setup, .fini = h_teardown, .timeout = 60);

static int open_rc(shmb_client *c, const char *sid, const char *tenant)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, NULL, &s);
	if (rc == 0)
		shmb_session_close(s);
	return rc;
}

static int listed(const char *name, const char *sid)
{
	cJSON *doc = h_shmctl_json(name, "sessions", NULL);
	const cJSON *arr = h_json_sessions(doc);
	int found = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
		found += cJSON_IsString(id) && !strcmp(id->valuestring, sid);
	}
	cJSON_Delete(doc);
	return found;
}

H_TEST(multi, two_brokers_isolated)
{
	struct h_broker *a = h_broker_start(H_ARGS("--max-sessions", "8"));
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "16"));
	cr_assert_str_neq(a->name, b->name);
	cr_assert_eq(access(a->shm_path, F_OK), 0, "no segment %s", a->shm_path);
	cr_assert_eq(access(b->shm_path, F_OK), 0, "no segment %s", b->shm_path);
	cr_assert_eq(access(a->sock_path, F_OK), 0, "no socket %s", a->sock_path);
	cr_assert_eq(access(b->sock_path, F_OK), 0, "no socket %s", b->sock_path);

	shmb_client *ca = h_attach(a->name);
	shmb_client *cb = h_attach(b->name);
	char sa[SHMB_SID_LEN + 1], sb[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(ca, "acme", NULL, sa));
	H_OK(shmb_session_create(cb, "acme", NULL, sb));

	H_EXPECT_RC(open_rc(ca, sa, "acme"), 0);
	H_EXPECT_RC(open_rc(cb, sb, "acme"), 0);
	H_EXPECT_RC(open_rc(ca, sb, "acme"), SHMB_ENOENT);
	H_EXPECT_RC(open_rc(cb, sa, "acme"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_session_delete(ca, sb, "acme", NULL), SHMB_ENOENT);

	cr_expect_eq(listed(a->name, sa), 1);
	cr_expect_eq(listed(a->name, sb), 0);
	cr_expect_eq(listed(b->name, sb), 1);
	cr_expect_eq(listed(b->name, sa), 0);

	cJSON *st = h_shmctl_json(a->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.max"), 8);
	cr_expect_eq(h_json_num(st, "broker.pid"), a->pid);
	const cJSON *nm = h_json_get(st, "name");
	cr_expect(cJSON_IsString(nm) && !strcmp(nm->valuestring, a->name));
	cJSON_Delete(st);
	st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.max"), 16);
	cr_expect_eq(h_json_num(st, "broker.pid"), b->pid);
	cJSON_Delete(st);

	/* Stopping one leaves the other serving. */
	h_detach(ca);
	h_broker_stop(a);
	char sb2[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(cb, "acme", NULL, sb2));
	H_EXPECT_RC(open_rc(cb, sb, "acme"), 0);
	h_detach(cb);
}

H_TEST(multi, default_name_from_environment)
{
	/* h_broker_start exports SHMB_NAME for the first broker: shmb_attach(NULL) finds it, and
	 * shmctl without --name inspects it. */
	struct h_broker *a = h_broker_start(H_NOARGS);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(NULL);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cr_expect_eq(listed(a->name, sid), 1);
	cr_expect_eq(listed(b->name, sid), 0);
	struct h_result r;
	h_shmctl(&r, NULL, "status", "--json", NULL);
	cr_expect_eq(r.status, 0, "shmctl status without --name: %d\n%s", r.status, r.err);
	cJSON *j = cJSON_Parse(r.out);
	cr_expect(j && cJSON_IsString(h_json_get(j, "name")) &&
			  !strcmp(h_json_get(j, "name")->valuestring, a->name),
		  "shmctl without --name did not use $SHMB_NAME: %s", r.out);
	cJSON_Delete(j);
	h_result_free(&r);
	h_detach(c);
}

H_TEST(multi, four_brokers_many_clients)
{
	struct h_broker *bs[4];
	shmb_client *cs[4];
	char sids[4][3][SHMB_SID_LEN + 1];
	for (int i = 0; i < 4; i++) {
		bs[i] = h_broker_start(H_NOARGS);
		cs[i] = h_attach(bs[i]->name);
	}
	for (int i = 0; i < 4; i++)
		for (int k = 0; k < 3; k++)
			H_OK(shmb_session_create(cs[i], "acme", NULL, sids[i][k]));
	for (int i = 0; i < 4; i++)
		for (int j = 0; j < 4; j++)
			for (int k = 0; k < 3; k++)
				H_EXPECT_RC(open_rc(cs[i], sids[j][k], "acme"),
					    i == j ? 0 : SHMB_ENOENT);
	for (int i = 0; i < 4; i++) {
		cJSON *st = h_shmctl_json(bs[i]->name, "status", NULL);
		cr_expect_eq(h_json_num(st, "sessions.live"), 3);
		cr_expect_eq(h_json_num(st, "workers.attached"), 1);
		cJSON_Delete(st);
		h_detach(cs[i]);
	}
}
