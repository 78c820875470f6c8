/* test_reload.c - reloading the configuration (issue 15, item 7): `shmctl reload` and SIGHUP
 * re-read the config file (flags are kept and still win) and apply what can change without a
 * new segment -- TTL defaults and maxima, the log level, allowed_gids -- while what sizes the
 * segment is named as not applied, in the answer and in the log; a bad file changes nothing.
 *
 * Each effect is checked where it matters: a session created after the reload gets the new
 * default TTL (shmb_session_stat), a create asking for more than the new maximum is refused,
 * the new log level shows in the log, the socket file gets the new group. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

TestSuite(reload, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void write_config(const char *path, const char *json)
{
	char tmp[300];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "we");
	cr_assert_not_null(f, "%s: %s", tmp, strerror(errno));
	fputs(json, f);
	fclose(f);
	cr_assert_eq(rename(tmp, path), 0);
}

static uint64_t ttl_of_new_session(shmb_client *c)
{
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	shmb_session_close(s);
	return info.inactivity_ttl_ms;
}

static int has_string(const cJSON *arr, const char *v)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		if (cJSON_IsString(e) && strcmp(e->valuestring, v) == 0)
			return 1;
		const cJSON *f = cJSON_GetObjectItem(e, "field");
		if (cJSON_IsString(f) && strcmp(f->valuestring, v) == 0)
			return 1;
	}
	return 0;
}

static int log_has(const struct h_broker *b, const char *needle)
{
	char *log = h_broker_log(b);
	int has = h_contains(log, needle);
	free(log);
	return has;
}

H_TEST(reload, shmctl_reload_applies_what_it_can_and_names_the_rest)
{
	char path[300];
	snprintf(path, sizeof path, "%s/broker.json", h_runtime_dir());
	write_config(path, "{\"inactivity_ttl_ms\": 60000, \"max_inactivity_ttl_ms\": 120000}");
	/* --absolute-ttl-ms is a flag: a reload keeps it, whatever the file says. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--config", path, "--absolute-ttl-ms", "3600000"));
	shmb_client *c = h_attach(b->name);
	cr_expect_eq(ttl_of_new_session(c), 60000);

	write_config(path, "{\"inactivity_ttl_ms\": 5000, \"max_inactivity_ttl_ms\": 10000, "
			   "\"absolute_ttl_ms\": 1000, \"log_level\": \"debug\", "
			   "\"attr_keys\": 8}");
	cJSON *j = h_shmctl_json(b->name, "reload", NULL);
	const cJSON *ok = cJSON_GetObjectItem(j, "applied");
	const cJSON *skipped = cJSON_GetObjectItem(j, "not_applied");
	cr_expect(has_string(ok, "inactivity_ttl_ms") && has_string(ok, "max_inactivity_ttl_ms") &&
			  has_string(ok, "log_level"),
		  "applied: %s", cJSON_PrintUnformatted(ok));
	cr_expect(!has_string(ok, "absolute_ttl_ms"), "the flag was overridden by the file");
	cr_expect(has_string(skipped, "attr_keys"), "attr_keys (sizes the segment) not named: %s",
		  cJSON_PrintUnformatted(skipped));
	cJSON_Delete(j);
	cr_expect(log_has(b, "reload: attr_keys not applied"), "the log does not name attr_keys");

	/* The new default reaches new sessions; the new maximum bounds what a create asks. */
	cr_expect_eq(ttl_of_new_session(c), 5000);
	shmb_session_opts so = { .inactivity_ttl_ms = 20000 };
	char sid[SHMB_SID_LEN + 1];
	int rc = shmb_session_create_opts(c, "acme", NULL, &so, sid);
	cr_expect_eq(rc, SHMB_EINVAL, "a TTL above the reloaded maximum: %s", shmb_strerror(rc));
	j = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(j, "config.inactivity_ttl_ms"), 5000);
	cr_expect_eq(h_json_num(j, "config.absolute_ttl_ms"), 3600000);
	cJSON_Delete(j);
	/* The new log level: a request now logs a debug line. */
	struct h_result r;
	h_shmctl(&r, b->name, "reload", NULL);
	cr_expect_eq(r.status, 0, "%s", r.err);
	cr_expect(h_contains(r.out, "not applied: attr_keys"), "%s", r.out);
	h_result_free(&r);
	cr_expect(log_has(b, "debug") && log_has(b, "request 'reload'"),
		  "level debug not in effect");

	/* A bad file: refused, named, nothing changed, still serving. */
	write_config(path, "{\"inactivity_ttl_ms\": \"soon\", \"log_level\": \"info\"}");
	h_shmctl(&r, b->name, "reload", NULL);
	cr_expect_eq(r.status, 3, "a bad config reloaded: %s", r.out);
	cr_expect(h_contains(r.err, "inactivity_ttl_ms"), "%s", r.err);
	h_result_free(&r);
	cr_expect_eq(ttl_of_new_session(c), 5000);
	write_config(path, "{not json");
	h_shmctl(&r, b->name, "reload", NULL);
	cr_expect_eq(r.status, 3);
	cr_expect(h_contains(r.err, "not valid JSON"), "%s", r.err);
	h_result_free(&r);
	cr_expect_eq(ttl_of_new_session(c), 5000);
	h_detach(c);
}

H_TEST(reload, sighup_reloads)
{
	char path[300];
	snprintf(path, sizeof path, "%s/broker.json", h_runtime_dir());
	write_config(path, "{\"inactivity_ttl_ms\": 60000}");
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	write_config(path, "{\"inactivity_ttl_ms\": 7000}");
	cr_assert_eq(kill(b->pid, SIGHUP), 0);
	/* No reply to a signal: poll the header's copy until the broker has applied it. */
	int ok = H_POLL_UNTIL(({
				      cJSON *j = h_shmctl_json(b->name, "status", NULL);
				      double v = h_json_num(j, "config.inactivity_ttl_ms");
				      cJSON_Delete(j);
				      v == 7000;
			      }),
			      10000);
	cr_expect(ok, "SIGHUP did not apply the new TTL");
	shmb_client *c = h_attach(b->name);
	cr_expect_eq(ttl_of_new_session(c), 7000);
	cr_expect(log_has(b, "SIGHUP from pid"), "the log does not say why it reloaded");
	h_detach(c);
}

H_TEST(reload, allowed_gids_change_the_socket_group)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to give the socket another group");
	char path[300];
	snprintf(path, sizeof path, "%s/broker.json", h_runtime_dir());
	write_config(path, "{}");
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	struct stat st;
	cr_assert_eq(stat(b->sock_path, &st), 0);
	cr_expect_eq(st.st_mode & 0070, 0, "no allowed group yet, mode %o", st.st_mode);
	write_config(path, "{\"allowed_gids\": [4242]}");
	cJSON *j = h_shmctl_json(b->name, "reload", NULL);
	cr_expect(has_string(cJSON_GetObjectItem(j, "applied"), "allowed_gids"));
	cJSON_Delete(j);
	cr_assert_eq(stat(b->sock_path, &st), 0);
	cr_expect_eq(st.st_gid, 4242u);
	cr_expect_eq(st.st_mode & 0070, 0060, "mode %o", st.st_mode);
	write_config(path, "{}");
	j = h_shmctl_json(b->name, "reload", NULL);
	cJSON_Delete(j);
	cr_assert_eq(stat(b->sock_path, &st), 0);
	cr_expect_eq(st.st_mode & 0070, 0, "group access stayed after allowed_gids was emptied");
}
