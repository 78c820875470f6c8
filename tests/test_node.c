/* test_node.c - node-tagged session ids (issue 16): a broker's node_id (--node-id, config key
 * node_id) is the first 4 hex characters of every id it makes, shmb_sid_node() reads it back,
 * shmb_node_id() and shmctl status/show print it; bad values are refused at start; a segment
 * keeps its node_id for life (adoption by a broker with another one is refused, a reload does
 * not change it); the index hash still spreads tagged ids over the buckets. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"
#include "sid.h"

TestSuite(node, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define N_IDS 64

static void create_ids(shmb_client *c, char ids[][SHMB_SID_LEN + 1], int n)
{
	for (int i = 0; i < n; i++)
		H_OK(shmb_session_create(c, "acme", NULL, ids[i]));
}

H_TEST(node, tagged_broker_makes_ids_that_carry_its_node_id)
{
	/* 4660 = 0x1234: the tag is big-endian hex, "1234", not "3412" nor decimal. */
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "4660"));
	shmb_client *c = h_attach(b->name);
	H_EXPECT_RC(shmb_node_id(c), 4660);
	static char ids[N_IDS][SHMB_SID_LEN + 1];
	create_ids(c, ids, N_IDS);
	for (int i = 0; i < N_IDS; i++) {
		cr_expect(h_sid_wellformed(ids[i]), "%s is not 32 lowercase hex", ids[i]);
		cr_expect(strncmp(ids[i], "1234", 4) == 0, "%s does not start with 1234", ids[i]);
		H_EXPECT_RC(shmb_sid_node(ids[i]), 4660);
		/* The other 112 bits are random: no two ids share them, and no id's rest is all
		 * zero (a tag written over the random bytes rather than beside them). */
		cr_expect(strcmp(ids[i] + 4, "0000000000000000000000000000") != 0);
		for (int j = 0; j < i; j++)
			cr_expect(strcmp(ids[i] + 4, ids[j] + 4) != 0, "ids %d and %d share %s", i,
				  j, ids[i] + 4);
	}
	/* Every tagged id can be opened (the index finds tagged ids like any other). */
	for (int i = 0; i < N_IDS; i++) {
		shmb_session *s;
		H_OK(shmb_session_open(c, ids[i], "acme", NULL, &s));
		shmb_session_close(s);
	}
	h_detach(c);
}

H_TEST(node, node_one_is_0001)
{
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "1"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cr_expect(strncmp(sid, "0001", 4) == 0, "%s", sid);
	H_EXPECT_RC(shmb_sid_node(sid), 1);
	h_detach(c);
}

H_TEST(node, untagged_broker_keeps_all_bits_random)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	H_EXPECT_RC(shmb_node_id(c), 0);
	static char ids[N_IDS][SHMB_SID_LEN + 1];
	create_ids(c, ids, N_IDS);
	/* 64 random 16-bit prefixes all equal: probability 2^-1008. */
	int differ = 0;
	for (int i = 1; i < N_IDS; i++)
		differ += strncmp(ids[i], ids[0], 4) != 0;
	cr_expect_gt(differ, N_IDS / 2, "untagged ids share their first 4 characters: %s, %s",
		     ids[0], ids[1]);
	h_detach(c);
}

H_TEST(node, sid_node_of_valid_and_invalid_ids)
{
	H_EXPECT_RC(shmb_sid_node("0000ffffffffffffffffffffffffffff"), 0);
	H_EXPECT_RC(shmb_sid_node("ffff0000000000000000000000000000"), 65535);
	H_EXPECT_RC(shmb_sid_node("00020123456789abcdef0123456789ab"), 2);
	H_EXPECT_RC(shmb_sid_node("ABCD0123456789ABCDEF0123456789AB"), 0xabcd); /* as open */
	H_EXPECT_RC(shmb_sid_node(NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_sid_node(""), SHMB_EINVAL);
	H_EXPECT_RC(shmb_sid_node("0001"), SHMB_EINVAL);
	H_EXPECT_RC(shmb_sid_node("00010123456789abcdef0123456789a"), SHMB_EINVAL);   /* 31 */
	H_EXPECT_RC(shmb_sid_node("00010123456789abcdef0123456789abc"), SHMB_EINVAL); /* 33 */
	H_EXPECT_RC(shmb_sid_node("0g010123456789abcdef0123456789ab"), SHMB_EINVAL);
	H_EXPECT_RC(shmb_sid_node(" 0010123456789abcdef0123456789ab"), SHMB_EINVAL);
	H_EXPECT_RC(shmb_node_id(NULL), SHMB_EINVAL);
}

H_TEST(node, shmctl_status_and_show_print_the_node)
{
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "2"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));

	cJSON *j = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(j, "node_id"), 2);
	cr_expect_eq(h_json_num(j, "config.node_id"), 2);
	/* The contract's keys are all still there. */
	cr_expect(h_json_get(j, "name") && h_json_get(j, "layout_version") &&
		  h_json_get(j, "broker.pid") && h_json_get(j, "broker.alive") &&
		  h_json_get(j, "segment_bytes") && h_json_get(j, "sessions.live") &&
		  h_json_get(j, "sessions.max") && h_json_get(j, "workers.attached") &&
		  h_json_get(j, "workers.max") && h_json_get(j, "events_published"));
	cr_expect_str_eq(cJSON_GetObjectItem(j, "layout_version")->valuestring, "2.1");
	cJSON_Delete(j);
	struct h_result r;
	h_shmctl(&r, b->name, "status", NULL);
	cr_expect_eq(r.status, 0, "%s", r.err);
	cr_expect(strstr(r.out, "node_id: 2 (session ids start with 0002)"), "%s", r.out);
	h_result_free(&r);

	j = h_shmctl_json(b->name, "show", sid, NULL);
	cr_expect_eq(h_json_num(j, "node"), 2);
	cr_expect_eq(h_json_num(j, "node_id"), 2);
	cr_expect_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, sid);
	cr_expect(h_json_get(j, "tenant") && h_json_get(j, "principal") &&
		  h_json_get(j, "created_at_ms") && h_json_get(j, "last_accessed_at_ms") &&
		  h_json_get(j, "last_event_id") && h_json_get(j, "oldest_event_id") &&
		  h_json_get(j, "subscribers"));
	cJSON_Delete(j);
	h_shmctl(&r, b->name, "show", sid, NULL);
	cr_expect_eq(r.status, 0, "%s", r.err);
	cr_expect(strstr(r.out, "node: 2 (this broker's node_id: 2)"), "%s", r.out);
	h_result_free(&r);
	h_detach(c);
}

H_TEST(node, shmctl_on_an_untagged_broker)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cJSON *j = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(j, "node_id"), 0);
	cJSON_Delete(j);
	j = h_shmctl_json(b->name, "show", sid, NULL);
	cr_expect_eq(h_json_num(j, "node"), shmb_sid_node(sid));
	cr_expect_eq(h_json_num(j, "node_id"), 0);
	cJSON_Delete(j);
	struct h_result r;
	h_shmctl(&r, b->name, "status", NULL);
	cr_expect(strstr(r.out, "node_id: 0 (none: session ids are untagged)"), "%s", r.out);
	h_result_free(&r);
	h_shmctl(&r, b->name, "show", sid, NULL);
	cr_expect(strstr(r.out, "(this broker has no node_id: its ids are untagged)"), "%s", r.out);
	h_result_free(&r);
	h_detach(c);
}

/* Starts a broker that must refuse its start: exit status want before ready, its message
 * holding every needle. Returns nothing; the broker record stays for the teardown. */
static void expect_exit(const char *const *args, int want, const char *n1, const char *n2,
			const char *what)
{
	struct h_broker *b = h_broker_new(args);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	char *log = h_broker_log(b);
	cr_expect_eq(rc, -1, "%s: the broker started", what);
	if (rc == -1)
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == want, "%s: status %d, want %d\n%s",
			  what, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), want, log);
	cr_expect(h_contains(log, n1), "%s: no '%s' in:\n%s", what, n1, log);
	if (n2)
		cr_expect(h_contains(log, n2), "%s: no '%s' in:\n%s", what, n2, log);
	free(log);
}

static void write_config(char *path, size_t len, const char *json)
{
	static int n;
	snprintf(path, len, "%s/node%d.json", h_runtime_dir(), ++n);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(json, f);
	fclose(f);
}

H_TEST(node, bad_node_ids_are_refused_at_start)
{
	expect_exit(H_ARGS("--node-id", "65536"), 2, "--node-id must be 0..65535, not 65536", NULL,
		    "65536");
	expect_exit(H_ARGS("--node-id", "4294967296"), 2, "--node-id", "4294967295", "2^32");
	expect_exit(H_ARGS("--node-id", "-1"), 2, "--node-id: '-1' is not a non-negative integer",
		    NULL, "-1");
	expect_exit(H_ARGS("--node-id", "abc"), 2, "--node-id: 'abc'", NULL, "abc");
	expect_exit(H_ARGS("--node-id", ""), 2, "--node-id", NULL, "empty");
	expect_exit(H_ARGS("--node-id", "0x10"), 2, "--node-id: '0x10'", NULL, "hex");
	char path[300];
	write_config(path, sizeof path, "{\"node_id\": 70000}");
	expect_exit(H_ARGS("--config", path), 2, "field 'node_id' must be 0..65535, not 70000",
		    NULL, "config 70000");
	write_config(path, sizeof path, "{\"node_id\": \"1\"}");
	expect_exit(H_ARGS("--config", path), 2, "field 'node_id' must be an integer, not a string",
		    NULL, "config string");
	write_config(path, sizeof path, "{\"node_id\": 1.5}");
	expect_exit(H_ARGS("--config", path), 2, "field 'node_id'", NULL, "config 1.5");
	/* The same value from the file works. */
	write_config(path, sizeof path, "{\"node_id\": 65535}");
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	shmb_client *c = h_attach(b->name);
	H_EXPECT_RC(shmb_node_id(c), 65535);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cr_expect(strncmp(sid, "ffff", 4) == 0, "%s", sid);
	h_detach(c);
}

H_TEST(node, adoption_with_another_node_id_is_refused_and_changes_nothing)
{
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "7"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	H_OK(shmb_publish(s, 0, 0, "x", 1));
	shmb_session_close(s);
	h_detach(c);
	h_broker_kill(b); /* the segment stays, with a live session tagged 7 */

	/* The same instance started with node_id 9, then with none: both refused. */
	const char *others[] = { "9", "0" };
	for (int i = 0; i < 2; i++) {
		free(b->args[1]);
		b->args[1] = strdup(others[i]);
		int st = 0;
		int rc = h_broker_spawn(b, &st);
		char *log = h_broker_log(b);
		cr_expect_eq(rc, -1, "a broker with node_id %s adopted a node-7 segment",
			     others[i]);
		if (rc == -1)
			cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d\n%s",
				  WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), log);
		else
			h_broker_kill(b);
		char want[96];
		snprintf(want, sizeof want, "made with node_id 7 and this broker has node_id %s",
			 others[i]);
		cr_expect(h_contains(log, want), "no '%s' in:\n%s", want, log);
		cr_expect(h_contains(log, "--node-id 7"), "the fix is not named:\n%s", log);
		free(log);
	}
	free(b->args[1]);
	b->args[1] = strdup("7");

	/* Nothing changed: the same node adopts it, the session is there with its event. */
	h_broker_restart(b);
	cJSON *j = h_shmctl_json(b->name, "show", sid, NULL);
	cr_expect_eq(h_json_num(j, "node"), 7);
	cr_expect_eq(h_json_num(j, "last_event_id"), 1);
	cJSON_Delete(j);
	c = h_attach(b->name);
	H_EXPECT_RC(shmb_node_id(c), 7);
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(node, reload_does_not_change_the_node_id)
{
	char path[300];
	write_config(path, sizeof path, "{\"node_id\": 3}");
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs("{\"node_id\": 4}", f);
	fclose(f);
	cJSON *j = h_shmctl_json(b->name, "reload", NULL);
	const cJSON *skipped = cJSON_GetObjectItem(j, "not_applied"), *e;
	int named = 0;
	cJSON_ArrayForEach(e, skipped)
	{
		const cJSON *fld = cJSON_GetObjectItem(e, "field");
		named |= cJSON_IsString(fld) && strcmp(fld->valuestring, "node_id") == 0;
	}
	cr_expect(named, "node_id not reported as not applied: %s", cJSON_PrintUnformatted(j));
	cJSON_Delete(j);
	shmb_client *c = h_attach(b->name);
	H_EXPECT_RC(shmb_node_id(c), 3);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	H_EXPECT_RC(shmb_sid_node(sid), 3);
	h_detach(c);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "reload: node_id not applied"), "%s", log);
	free(log);
}

/* The index hash mixes the first 8 bytes; with a constant 2-byte tag 48 random bits remain.
 * Over the bucket masks of small and large segments the counts must look uniform (a chi-square
 * statistic within 6 standard deviations of its mean), as for untagged ids. Tag 0 and a tag
 * with high bits both. */
static double chi_square(uint32_t tag, uint32_t buckets, uint32_t n)
{
	uint32_t *count = calloc(buckets, sizeof *count);
	cr_assert_not_null(count);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t sid[SHMB_SID_BYTES];
		cr_assert_eq(sid_generate(sid), 0);
		sid_tag(sid, tag);
		count[sid_hash(sid) & (buckets - 1)]++;
	}
	double e = (double)n / buckets, x = 0;
	for (uint32_t k = 0; k < buckets; k++)
		x += ((double)count[k] - e) * ((double)count[k] - e) / e;
	free(count);
	return x;
}

H_TEST(node, tagged_ids_spread_over_the_buckets)
{
	const uint32_t tags[] = { 0, 1, 0x1234, 0xffff };
	const uint32_t masks[] = { 64, 1024, 65536 };
	for (size_t t = 0; t < sizeof tags / sizeof tags[0]; t++)
		for (size_t m = 0; m < sizeof masks / sizeof masks[0]; m++) {
			uint32_t nb = masks[m];
			double x = chi_square(tags[t], nb, nb * 8);
			/* sd = sqrt(2 df): compared squared, so no libm. */
			double df = nb - 1, dev = x - df;
			cr_expect(dev * dev < 36 * 2 * df,
				  "tag %u, %u buckets: chi-square %.0f, expected %.0f (df), off by "
				  "more than 6 sd",
				  tags[t], nb, x, df);
		}
}
