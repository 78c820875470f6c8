/* test_shmctl.c - the admin CLI's contract (DESIGN.md "Contract: shmctl"): the JSON keys of
 * status, sessions, show and workers; delete; exit codes 0 ok, 1 not found, 2 usage,
 * 3 broker or segment unavailable; inspection with the broker dead. And docs/shmctl.md: events
 * (--follow as a running process, which payloads count as JSON and how the rest is escaped),
 * show's ring figures, top's figures (wakeups included), schema_version and empty stdout on
 * failure. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

TestSuite(shmctl, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void expect_keys(const cJSON *obj, const char *const *keys, const char *what)
{
	char *txt = cJSON_PrintUnformatted(obj);
	for (int i = 0; keys[i]; i++)
		cr_expect(h_json_get(obj, keys[i]) != NULL, "%s: no \"%s\" in %s", what, keys[i],
			  txt);
	free(txt);
}

static const char *str_of(const cJSON *o, const char *k)
{
	const cJSON *j = h_json_get(o, k);
	return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* The element of arr whose key holds the string str (str non-NULL) or the number num. */
static const cJSON *find_entry(const cJSON *arr, const char *key, const char *str, double num)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		const cJSON *j = h_json_get(e, key);
		if (str ? cJSON_IsString(j) && !strcmp(j->valuestring, str)
			: cJSON_IsNumber(j) && j->valuedouble == num)
			return e;
	}
	return NULL;
}

static const cJSON *find_session(const cJSON *arr, const char *sid)
{
	return find_entry(arr, "id", sid, 0);
}

H_TEST(shmctl, status_json)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "32", "--max-workers", "8"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	H_OK(shmb_session_create(c, "acme", NULL, sid));

	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	expect_keys(st,
		    H_ARGS("name", "layout_version", "broker", "broker.pid", "broker.alive",
			   "segment_bytes", "sessions", "sessions.live", "sessions.max", "workers",
			   "workers.attached", "workers.max", "events_published", "schema_version"),
		    "status --json");
	cr_expect_str_eq(str_of(st, "name"), b->name);
	cr_expect_eq(h_json_num(st, "broker.pid"), b->pid);
	cr_expect(cJSON_IsTrue(h_json_get(st, "broker.alive")));
	cr_expect_eq(h_json_num(st, "sessions.live"), 2);
	cr_expect_eq(h_json_num(st, "sessions.max"), 32);
	cr_expect_eq(h_json_num(st, "workers.attached"), 1);
	cr_expect_eq(h_json_num(st, "workers.max"), 8);
	cr_expect_eq(h_json_num(st, "events_published"), 0);
	struct stat sb;
	cr_assert_eq(stat(b->shm_path, &sb), 0);
	cr_expect_eq(h_json_num(st, "segment_bytes"), (double)sb.st_size);
	const cJSON *lv = h_json_get(st, "layout_version");
	cr_expect(cJSON_IsString(lv) || cJSON_IsNumber(lv) || cJSON_IsObject(lv),
		  "layout_version has an odd type");
	cJSON_Delete(st);

	/* Human output: names the instance, exit 0. */
	struct h_result r;
	h_shmctl(&r, b->name, "status", NULL);
	cr_expect_eq(r.status, 0, "shmctl status: exit %d\n%s", r.status, r.err);
	cr_expect(strstr(r.out, b->name), "human status does not name the instance:\n%s", r.out);
	h_result_free(&r);
	h_detach(c);
}

H_TEST(shmctl, status_with_broker_dead)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
	pid_t old = b->pid;
	h_broker_kill(b);
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect(cJSON_IsFalse(h_json_get(st, "broker.alive")), "alive after SIGKILL");
	cr_expect_eq(h_json_num(st, "broker.pid"), old);
	cr_expect_eq(h_json_num(st, "sessions.live"), 1);
	cJSON_Delete(st);
	/* sessions and show work from the segment alone. */
	cJSON *list = h_shmctl_json(b->name, "sessions", NULL);
	cr_expect_not_null(find_session(h_json_sessions(list), sid));
	cJSON_Delete(list);
	cJSON *show = h_shmctl_json(b->name, "show", sid, NULL);
	cr_expect_str_eq(str_of(show, "id"), sid);
	cJSON_Delete(show);
	/* Changes need the broker: exit 3. */
	struct h_result r;
	h_shmctl(&r, b->name, "delete", sid, NULL);
	cr_expect_eq(r.status, 3, "delete with the broker dead: exit %d\n%s", r.status, r.err);
	cr_expect(strstr(r.err, "shmctl: delete:"), "stderr should say \"shmctl: delete: ...\": %s",
		  r.err);
	h_result_free(&r);

	/* After a clean stop too. */
	h_broker_restart(b);
	h_broker_stop(b);
	st = h_shmctl_json(b->name, "status", NULL);
	cr_expect(cJSON_IsFalse(h_json_get(st, "broker.alive")), "alive after a clean stop");
	cJSON_Delete(st);
}

H_TEST(shmctl, sessions_and_show_json)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	int64_t t0 = h_wall_ms();
	H_OK(shmb_session_create(c, "acme", "alice", s1));
	H_OK(shmb_session_create(c, "acme", NULL, s2));
	H_OK(shmb_session_create(c, "globex", "bob", s3));

	cJSON *doc = h_shmctl_json(b->name, "sessions", NULL);
	const cJSON *arr = h_json_sessions(doc);
	cr_expect_eq(cJSON_GetArraySize(arr), 3);
	const cJSON *e1 = find_session(arr, s1);
	const cJSON *e2 = find_session(arr, s2);
	cr_assert_not_null(e1, "session %s not listed", s1);
	cr_assert_not_null(e2, "session %s not listed", s2);
	expect_keys(e1,
		    H_ARGS("id", "tenant", "principal", "created_at_ms", "last_accessed_at_ms",
			   "last_event_id", "oldest_event_id", "subscribers"),
		    "sessions --json entry");
	cr_expect_str_eq(str_of(e1, "tenant"), "acme");
	cr_expect_str_eq(str_of(e1, "principal"), "alice");
	const cJSON *p2 = h_json_get(e2, "principal");
	cr_expect(cJSON_IsNull(p2) || (cJSON_IsString(p2) && !p2->valuestring[0]),
		  "a session without principal should list null");
	double created = h_json_num(e1, "created_at_ms");
	cr_expect(created >= t0 - 5 && created <= h_wall_ms() + 5, "created_at_ms %f", created);
	cr_expect_geq(h_json_num(e1, "last_accessed_at_ms"), created);
	cr_expect_eq(h_json_num(e1, "last_event_id"), 0);
	cr_expect_eq(h_json_num(e1, "oldest_event_id"), 0);
	cr_expect_eq(h_json_num(e1, "subscribers"), 0);
	cJSON_Delete(doc);

	/* --tenant filters. */
	doc = h_shmctl_json(b->name, "sessions", "--tenant", "globex", NULL);
	arr = h_json_sessions(doc);
	cr_expect_eq(cJSON_GetArraySize(arr), 1);
	cr_expect_not_null(find_session(arr, s3));
	cJSON_Delete(doc);
	doc = h_shmctl_json(b->name, "sessions", "--tenant", "nobody", NULL);
	cr_expect_eq(cJSON_GetArraySize(h_json_sessions(doc)), 0);
	cJSON_Delete(doc);

	/* show SID */
	cJSON *show = h_shmctl_json(b->name, "show", s3, NULL);
	expect_keys(show,
		    H_ARGS("id", "tenant", "principal", "created_at_ms", "last_accessed_at_ms",
			   "last_event_id", "oldest_event_id", "subscribers"),
		    "show --json");
	cr_expect_str_eq(str_of(show, "id"), s3);
	cr_expect_str_eq(str_of(show, "tenant"), "globex");
	cr_expect_str_eq(str_of(show, "principal"), "bob");
	cJSON_Delete(show);

	/* Human output: aligned columns with each sid. */
	struct h_result r;
	h_shmctl(&r, b->name, "sessions", NULL);
	cr_expect_eq(r.status, 0);
	cr_expect(strstr(r.out, s1) && strstr(r.out, s2) && strstr(r.out, s3),
		  "human sessions output misses a sid:\n%s", r.out);
	h_result_free(&r);
	h_shmctl(&r, b->name, "show", s1, NULL);
	cr_expect_eq(r.status, 0);
	cr_expect(strstr(r.out, s1) && strstr(r.out, "acme"), "human show:\n%s", r.out);
	h_result_free(&r);

	/* show of an unknown sid: exit 1; malformed: usage error 2. */
	char unknown[SHMB_SID_LEN + 1];
	h_random_sid(unknown);
	h_shmctl(&r, b->name, "show", unknown, NULL);
	cr_expect_eq(r.status, 1, "show unknown sid: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "show", "not-a-sid", NULL);
	cr_expect_eq(r.status, 2, "show malformed sid: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	h_detach(c);
}

/* Statistics counted per thread (layout 1.1: plain stores into each thread's reader slot) add up:
 * shmctl sums the reader slots of a worker, and the broker retires them when it detaches. */
struct counting_arg {
	shmb_client *c;
	const char *sid;
	int rc;
};

#define COUNT_OPENS 300
#define COUNT_PUBLISHES 500

static void *counting_thread(void *p)
{
	struct counting_arg *a = p;
	shmb_session *s = NULL;
	for (int i = 0; i < COUNT_OPENS && a->rc == 0; i++) {
		a->rc = shmb_session_open(a->c, a->sid, "acme", NULL, &s);
		if (a->rc == 0 && i < COUNT_OPENS - 1)
			shmb_session_close(s);
	}
	for (int i = 0; i < COUNT_PUBLISHES && a->rc == 0; i++) {
		int64_t id = shmb_publish(s, 0, 0, "{}", 2);
		a->rc = id > 0 ? 0 : (int)id;
	}
	shmb_session_close(s);
	return NULL;
}

static int no_worker_attached(const char *name)
{
	cJSON *st = h_shmctl_json(name, "status", NULL);
	int none = h_json_num(st, "workers.attached") == 0;
	cJSON_Delete(st);
	return none;
}

H_TEST(shmctl, per_thread_statistics_add_up)
{
	/* A ring larger than all the events: no publisher is ever lapped (SHMB_EOVERRUN). */
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "4096", "--ring-bytes", "262144"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	struct counting_arg a[3];
	pthread_t th[3];
	for (int i = 0; i < 3; i++) {
		a[i] = (struct counting_arg){ .c = c, .sid = sid };
		cr_assert_eq(pthread_create(&th[i], NULL, counting_thread, &a[i]), 0);
	}
	for (int i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(a[i].rc, 0, "thread %d: %s (%s)", i, shmb_err_name(a[i].rc),
			     shmb_strerror(a[i].rc));
	}
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "events_published"), 3 * COUNT_PUBLISHES);
	cJSON_Delete(st);
	cJSON *w = h_shmctl_json(b->name, "workers", NULL);
	const cJSON *me = find_entry(w, "pid", NULL, (double)getpid());
	cr_assert_not_null(me, "our worker is not listed");
	cr_expect_eq(h_json_num(me, "events_published"), 3 * COUNT_PUBLISHES);
	cr_expect_eq(h_json_num(me, "sessions_opened"), 3 * COUNT_OPENS);
	cJSON_Delete(w);
	h_detach(c);
	/* Detached: the broker moved the counts to events_published_retired. */
	cr_assert(H_POLL_UNTIL(no_worker_attached(b->name), 5000), "still attached after 5 s");
	st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "events_published"), 3 * COUNT_PUBLISHES);
	cJSON_Delete(st);
}

H_TEST(shmctl, workers_json)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	cJSON *w = h_shmctl_json(b->name, "workers", NULL);
	cr_expect(!h_json_has_number(w, "pid", (double)getpid()), "listed before attaching");
	cJSON_Delete(w);
	shmb_client *c = h_attach(b->name);
	w = h_shmctl_json(b->name, "workers", NULL);
	char *txt = cJSON_PrintUnformatted(w);
	cr_expect(h_json_has_number(w, "pid", (double)getpid()), "our pid is not listed: %s", txt);
	free(txt);
	cJSON_Delete(w);
	struct h_result r;
	h_shmctl(&r, b->name, "workers", NULL);
	cr_expect_eq(r.status, 0);
	char pid[16];
	snprintf(pid, sizeof pid, "%ld", (long)getpid());
	cr_expect(strstr(r.out, pid), "human workers output lacks our pid:\n%s", r.out);
	h_result_free(&r);
	h_detach(c);
	/* Detached: gone. */
	cr_expect(H_POLL_UNTIL(({
				       cJSON *w2 = h_shmctl_json(b->name, "workers", NULL);
				       int l = h_json_has_number(w2, "pid", (double)getpid());
				       cJSON_Delete(w2);
				       !l;
			       }),
			       3000),
		  "still listed after detach");
}

H_TEST(shmctl, delete)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	struct h_result r;
	h_shmctl(&r, b->name, "delete", sid, NULL);
	cr_expect_eq(r.status, 0, "shmctl delete: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	shmb_session *s = NULL;
	H_EXPECT_RC(shmb_session_open(c, sid, "acme", "alice", &s), SHMB_ENOENT);
	h_shmctl(&r, b->name, "delete", sid, NULL);
	cr_expect_eq(r.status, 1, "delete twice: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "delete", "zz", NULL);
	cr_expect_eq(r.status, 2, "delete malformed sid: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "delete", NULL);
	cr_expect_eq(r.status, 2, "delete without sid: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cJSON *j = h_shmctl_json(b->name, "delete", sid, NULL);
	cJSON_Delete(j);
	H_EXPECT_RC(shmb_session_open(c, sid, "acme", NULL, &s), SHMB_ENOENT);
	h_detach(c);
}

H_TEST(shmctl, usage_and_exit_codes)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	struct h_result r;
	h_shmctl(&r, b->name, NULL);
	cr_expect_eq(r.status, 2, "no command: exit %d", r.status);
	h_result_free(&r);
	h_shmctl(&r, b->name, "frobnicate", NULL);
	cr_expect_eq(r.status, 2, "unknown command: exit %d", r.status);
	h_result_free(&r);
	h_shmctl(&r, b->name, "status", "--bogus-option", NULL);
	cr_expect_eq(r.status, 2, "unknown option: exit %d", r.status);
	h_result_free(&r);
	h_shmctl(&r, NULL, "--help", NULL);
	cr_expect_eq(r.status, 0, "--help: exit %d", r.status);
	cr_expect(strstr(r.out, "status") && strstr(r.out, "verify"),
		  "--help on stdout lists the commands:\n%s", r.out);
	h_result_free(&r);
	h_shmctl(&r, NULL, "--version", NULL);
	cr_expect_eq(r.status, 0, "--version: exit %d", r.status);
	cr_expect(strstr(r.out, shmb_version()), "--version prints %s:\n%s", shmb_version(), r.out);
	h_result_free(&r);
	h_shmctl(&r, "bad/name", "status", NULL);
	cr_expect_eq(r.status, 2, "invalid instance name: exit %d", r.status);
	h_result_free(&r);

	/* No such instance: exit 3 for inspection and changes alike. */
	char none[64];
	h_unique_name(none, sizeof none);
	const char *verbs[] = { "status", "sessions", "workers", "verify" };
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
		h_shmctl(&r, none, verbs[i], NULL);
		cr_expect_eq(r.status, 3, "%s of a missing instance: exit %d\n%s", verbs[i],
			     r.status, r.err);
		cr_expect(strstr(r.err, "shmctl: "),
			  "%s: no \"shmctl: VERB: reason\" on stderr: %s", verbs[i], r.err);
		h_result_free(&r);
	}
	char sid[SHMB_SID_LEN + 1];
	h_random_sid(sid);
	h_shmctl(&r, none, "delete", sid, NULL);
	cr_expect_eq(r.status, 3, "delete on a missing instance: exit %d", r.status);
	h_result_free(&r);
	h_shmctl(&r, none, "show", sid, NULL);
	cr_expect_eq(r.status, 3, "show on a missing instance: exit %d", r.status);
	h_result_free(&r);

	/* JSON error output is still one document (or nothing) — never a crash. */
	h_shmctl(&r, none, "status", "--json", NULL);
	cr_expect_eq(r.status, 3);
	h_result_free(&r);
}

/* A broker with the test defaults, this process attached, and one open session of "acme". */
struct fixture {
	struct h_broker *b;
	shmb_client *c;
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s;
};

static void fixture_start(struct fixture *f)
{
	f->b = h_broker_start(H_NOARGS);
	f->c = h_attach(f->b->name);
	H_OK(shmb_session_create(f->c, "acme", NULL, f->sid));
	f->s = NULL;
	H_OK(shmb_session_open(f->c, f->sid, "acme", NULL, &f->s));
}

H_TEST(shmctl, events_json)
{
	struct fixture fx;
	fixture_start(&fx);
	static const char json[] = "{\"n\":1,\"msg\":\"hello\"}";
	static const char text[] = "plain text, not json";
	static const unsigned char bin[] = { 0x00, 0xff, 0x01, 0x80 };
	cr_assert_eq(shmb_publish(fx.s, 1, 7, json, sizeof json - 1), 1);
	cr_assert_eq(shmb_publish(fx.s, 2, 8, text, sizeof text - 1), 2);
	cr_assert_eq(shmb_publish(fx.s, 1, 9, bin, sizeof bin), 3);
	shmb_session_close(fx.s);

	cJSON *ev = h_shmctl_json(fx.b->name, "events", fx.sid, NULL);
	const cJSON *arr = h_json_get(ev, "events");
	char *txt = cJSON_PrintUnformatted(ev);
	cr_assert(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 3, "events --json: %s", txt);
	cr_expect_eq(h_json_num(ev, "last_event_id"), 3);
	const cJSON *e0 = cJSON_GetArrayItem(arr, 0), *e1 = cJSON_GetArrayItem(arr, 1),
		    *e2 = cJSON_GetArrayItem(arr, 2);
	cr_expect_eq(h_json_num(e0, "id"), 1);
	cr_expect_eq(h_json_num(e0, "stream"), 1);
	cr_expect_eq(h_json_num(e0, "kind"), 7);
	cr_expect_eq(h_json_num(e0, "data.n"), 1, "JSON payload not parsed: %s", txt);
	cr_expect_str_eq(str_of(e1, "text"), text);
	cr_expect_not_null(str_of(e2, "base64"), "binary payload not base64: %s", txt);
	cr_expect_eq(h_json_num(e2, "len"), sizeof bin);
	free(txt);
	cJSON_Delete(ev);

	ev = h_shmctl_json(fx.b->name, "events", fx.sid, "--after", "2", NULL);
	arr = h_json_get(ev, "events");
	cr_expect(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 1 &&
			  h_json_num(cJSON_GetArrayItem(arr, 0), "id") == 3,
		  "--after 2 should give event 3 only");
	cJSON_Delete(ev);
	ev = h_shmctl_json(fx.b->name, "events", fx.sid, "--stream", "1", NULL);
	arr = h_json_get(ev, "events");
	cr_expect(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 2, "--stream 1: 2 events");
	cJSON_Delete(ev);

	/* Human output shows the JSON payload; an unknown session is exit 1. */
	struct h_result r;
	h_shmctl(&r, fx.b->name, "events", fx.sid, NULL);
	cr_expect_eq(r.status, 0);
	cr_expect(strstr(r.out, "hello"), "events output lacks the payload:\n%s", r.out);
	h_result_free(&r);
	char unknown[SHMB_SID_LEN + 1];
	h_random_sid(unknown);
	h_shmctl(&r, fx.b->name, "events", unknown, NULL);
	cr_expect_eq(r.status, 1, "events of an unknown session: exit %d", r.status);
	h_result_free(&r);

	/* From the segment alone, with the broker dead. */
	h_detach(fx.c);
	h_broker_kill(fx.b);
	ev = h_shmctl_json(fx.b->name, "events", fx.sid, NULL);
	arr = h_json_get(ev, "events");
	cr_expect(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 3,
		  "events with the broker dead");
	cJSON_Delete(ev);
}

/* ---- events --follow, payload rendering, show's ring figures, top ---- */

/* The child's stdout and stderr go to its report pipe; it runs shmctl ARGS (NULL-terminated). */
static int exec_shmctl(void *p, int wfd)
{
	char *const *argv = p;
	if (dup2(wfd, STDOUT_FILENO) < 0 || dup2(wfd, STDERR_FILENO) < 0)
		return 98;
	execv(SHMCTL_PATH, argv);
	return 97;
}

/* Reads one line (without its '\n') from a child's pipe. Returns 0, or -1 on EOF or timeout. */
static int read_line(struct h_child *ch, char *buf, size_t len, int timeout_ms)
{
	int64_t deadline = h_now_ms() + timeout_ms;
	for (size_t n = 0; n + 1 < len;) {
		int left = (int)(deadline - h_now_ms());
		if (left <= 0 || h_child_read(ch, buf + n, 1, left) != 1)
			break;
		if (buf[n] == '\n') {
			buf[n] = '\0';
			return 0;
		}
		n++;
	}
	buf[len - 1] = '\0';
	return -1;
}

#define FOLLOW_WAIT_MS 5000

H_TEST(shmctl, events_follow)
{
	struct fixture fx;
	fixture_start(&fx);
	cr_assert_eq(shmb_publish(fx.s, 1, 1, "{\"n\":1}", 7), 1);

	/* A human follower, started after event 1: it prints 1, then what comes after. */
	char *hargv[] = { "shmctl", "--name", fx.b->name, "events", fx.sid, "--follow", NULL };
	struct h_child hf;
	h_child_start(&hf, exec_shmctl, hargv);
	char line[512];
	cr_assert_eq(read_line(&hf, line, sizeof line, FOLLOW_WAIT_MS), 0, "no first line");
	cr_expect(!strncmp(line, "1  ", 3) && strstr(line, "stream 1  kind 1  {\"n\":1}"),
		  "event 1: %s", line);

	/* Published while it follows. */
	cr_assert_eq(shmb_publish(fx.s, 2, 5, "not json", 8), 2);
	cr_assert_eq(read_line(&hf, line, sizeof line, FOLLOW_WAIT_MS), 0, "event 2 not seen");
	cr_expect(!strncmp(line, "2  ", 3) && strstr(line, "stream 2  kind 5  \"not json\""),
		  "event 2: %s", line);

	/* A JSON follower from id 1 on: JSON Lines, then both see event 3. */
	char *jargv[] = { "shmctl",   "--name",  fx.b->name, "events", fx.sid,
			  "--follow", "--after", "1",        "--json", NULL };
	struct h_child jf;
	h_child_start(&jf, exec_shmctl, jargv);
	cr_assert_eq(read_line(&jf, line, sizeof line, FOLLOW_WAIT_MS), 0, "no JSON line");
	cJSON *e = cJSON_Parse(line);
	cr_assert_not_null(e, "not one JSON object per line: %s", line);
	cr_expect_eq(h_json_num(e, "id"), 2);
	cr_expect_str_eq(str_of(e, "text"), "not json");
	cJSON_Delete(e);
	cr_assert_eq(shmb_publish(fx.s, 1, 6, "[1,2]", 5), 3);
	cr_assert_eq(read_line(&hf, line, sizeof line, FOLLOW_WAIT_MS), 0, "event 3 not seen");
	cr_expect(!strncmp(line, "3  ", 3) && strstr(line, "kind 6  [1,2]"), "event 3: %s", line);
	cr_assert_eq(read_line(&jf, line, sizeof line, FOLLOW_WAIT_MS), 0, "event 3 not seen");
	e = cJSON_Parse(line);
	cr_assert_not_null(e, "not JSON: %s", line);
	cr_expect_eq(h_json_num(e, "id"), 3);
	cr_expect(cJSON_IsArray(h_json_get(e, "data")), "data of event 3: %s", line);
	cJSON_Delete(e);
	shmb_session_close(fx.s);

	/* Deleting the session ends both: a message and exit 1. */
	H_OK(shmb_session_delete(fx.c, fx.sid, "acme", NULL));
	struct h_child *kids[] = { &hf, &jf };
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(read_line(kids[i], line, sizeof line, FOLLOW_WAIT_MS), 0,
			     "follower %d: no message after the delete", i);
		cr_expect(strstr(line, "shmctl: events: session ") &&
				  strstr(line, "was deleted or expired"),
			  "follower %d: %s", i, line);
		cr_expect_eq(h_child_wait(kids[i], FOLLOW_WAIT_MS), 1, "follower %d: exit", i);
	}
	h_detach(fx.c);
}

/* What the human output of an event looks like: " kind K  <payload>" ends its line. */
static void expect_rendered(const char *out, int kind, const char *payload)
{
	char want[256];
	snprintf(want, sizeof want, "kind %d  %s\n", kind, payload);
	cr_expect(strstr(out, want), "event of kind %d should end in %s\n%s", kind, payload, out);
}

H_TEST(shmctl, events_payload_rendering)
{
	struct fixture fx;
	fixture_start(&fx);
	static const char *const payloads[] = {
		"{\"a\":1}garbage",     /* 1: JSON then junk: not JSON */
		"123abc",               /* 2 */
		"12345678901234567891", /* 3: beyond doubles, kept exactly */
		"{ \"b\" : [1, 2.50, 1e2],\n \"c\": \"x\\ty\" }\n", /* 4: insignificant ws dropped */
		"line1\nline2\t\x01\\ \"q\"",                       /* 5: text with controls */
		"\"raw\ttab\"", /* 6: control byte inside a string: not JSON */
		"01",           /* 7: not an RFC 8259 number */
		"\"\xff\"",     /* 8: invalid UTF-8 in a string */
		"[1,2] [3]",    /* 9: two values */
	};
	int n = (int)(sizeof payloads / sizeof payloads[0]);
	for (int i = 0; i < n; i++)
		cr_assert_eq(shmb_publish(fx.s, 0, (uint16_t)(i + 1), payloads[i],
					  strlen(payloads[i])),
			     i + 1);
	shmb_session_close(fx.s);

	struct h_result r;
	h_shmctl(&r, fx.b->name, "events", fx.sid, NULL);
	cr_assert_eq(r.status, 0, "events: exit %d\n%s", r.status, r.err);
	expect_rendered(r.out, 1, "\"{\\\"a\\\":1}garbage\"");
	expect_rendered(r.out, 2, "\"123abc\"");
	expect_rendered(r.out, 3, "12345678901234567891");
	expect_rendered(r.out, 4, "{\"b\":[1,2.50,1e2],\"c\":\"x\\ty\"}");
	expect_rendered(r.out, 5, "\"line1\\nline2\\t\\x01\\\\ \\\"q\\\"\"");
	expect_rendered(r.out, 6, "\"\\\"raw\\ttab\\\"\"");
	expect_rendered(r.out, 7, "\"01\"");
	expect_rendered(r.out, 8, "\"\\\"\\xff\\\"\"");
	expect_rendered(r.out, 9, "\"[1,2] [3]\"");
	h_result_free(&r);

	/* --json: the JSON payloads embedded verbatim (one valid document), the rest as text. */
	h_shmctl(&r, fx.b->name, "events", fx.sid, "--json", NULL);
	cr_assert_eq(r.status, 0);
	cr_expect(strstr(r.out, "12345678901234567891") && !strstr(r.out, "e+19"),
		  "big integer not kept exactly:\n%s", r.out);
	cr_expect(strstr(r.out, "[1,2.50,1e2]"), "numbers re-printed:\n%s", r.out);
	cJSON *doc = cJSON_Parse(r.out);
	cr_assert_not_null(doc, "events --json is not one JSON document:\n%s", r.out);
	const cJSON *arr = h_json_get(doc, "events");
	cr_assert_eq(cJSON_GetArraySize(arr), n);
	cr_expect_str_eq(str_of(cJSON_GetArrayItem(arr, 0), "text"), payloads[0]);
	cr_expect_null(h_json_get(cJSON_GetArrayItem(arr, 0), "data"));
	cr_expect_str_eq(str_of(cJSON_GetArrayItem(arr, 1), "text"), payloads[1]);
	cr_expect(cJSON_IsNumber(h_json_get(cJSON_GetArrayItem(arr, 2), "data")));
	cr_expect_str_eq(str_of(cJSON_GetArrayItem(arr, 3), "data.c"), "x\ty");
	cr_expect_str_eq(str_of(cJSON_GetArrayItem(arr, 5), "text"), payloads[5]);
	cr_expect_str_eq(str_of(cJSON_GetArrayItem(arr, 6), "text"), "01");
	cr_expect_not_null(str_of(cJSON_GetArrayItem(arr, 7), "base64"));
	cJSON_Delete(doc);
	h_result_free(&r);
	h_detach(fx.c);
}

/* The worker slot of this process, from shmctl workers --json. */
static int my_slot(const char *name)
{
	cJSON *w = h_shmctl_json(name, "workers", NULL);
	const cJSON *me = find_entry(w, "pid", NULL, (double)getpid());
	cr_assert_not_null(me, "our worker is not listed");
	int slot = (int)h_json_num(me, "slot");
	cJSON_Delete(w);
	return slot;
}

H_TEST(shmctl, show_ring_figures)
{
	/* 16 descriptors, 4096 bytes: 20 events of 10 bytes leave ids 5..20, 160 bytes. */
	struct fixture fx;
	fixture_start(&fx);
	for (int i = 1; i <= 20; i++)
		cr_assert_eq(shmb_publish(fx.s, 0, 0, "0123456789", 10), i);
	H_OK(shmb_subscribe(fx.s));
	shmb_session_info info;
	H_OK(shmb_session_stat(fx.s, &info));
	cr_assert_eq(info.oldest_event_id, 5, "the ring should keep 16 of 20 events");
	int slot = my_slot(fx.b->name);

	cJSON *show = h_shmctl_json(fx.b->name, "show", fx.sid, NULL);
	char *txt = cJSON_PrintUnformatted(show);
	cr_expect_eq(h_json_num(show, "schema_version"), 1, "%s", txt);
	cr_expect_eq(h_json_num(show, "ring.events"), 16, "%s", txt);
	cr_expect_eq(h_json_num(show, "ring.bytes"), 4096, "%s", txt);
	cr_expect_eq(h_json_num(show, "ring.last_id"), 20, "%s", txt);
	cr_expect_eq(h_json_num(show, "ring.oldest_id"), 5, "%s", txt);
	cr_expect_eq(h_json_num(show, "ring.bytes_used"), 160, "%s", txt);
	cr_expect_eq(h_json_num(show, "last_event_id"), 20, "%s", txt);
	cr_expect_eq(h_json_num(show, "oldest_event_id"), 5, "%s", txt);
	cr_expect_eq(h_json_num(show, "subscribers"), 1, "%s", txt);
	const cJSON *slots = h_json_get(show, "subscriber_slots");
	cr_expect(cJSON_IsArray(slots) && cJSON_GetArraySize(slots) == 1 &&
			  cJSON_GetArrayItem(slots, 0)->valuedouble == slot,
		  "subscriber_slots should be [%d]: %s", slot, txt);
	free(txt);
	cJSON_Delete(show);

	struct h_result r;
	h_shmctl(&r, fx.b->name, "show", fx.sid, NULL);
	cr_assert_eq(r.status, 0);
	char want[64];
	snprintf(want, sizeof want, "subscribers: 1 (worker slots %d)\n", slot);
	cr_expect(strstr(r.out, "  last event id: 20\n") && strstr(r.out, "oldest event id: 5\n") &&
			  strstr(r.out, "ring: 16 events, ") &&
			  strstr(r.out, ", 160 bytes used\n") && strstr(r.out, want),
		  "human show:\n%s", r.out);
	h_result_free(&r);

	/* Unsubscribed: 0. */
	H_OK(shmb_unsubscribe(fx.s));
	show = h_shmctl_json(fx.b->name, "show", fx.sid, NULL);
	cr_expect_eq(h_json_num(show, "subscribers"), 0);
	cr_expect_eq(cJSON_GetArraySize(h_json_get(show, "subscriber_slots")), 0);
	cJSON_Delete(show);
	shmb_session_close(fx.s);
	h_detach(fx.c);
}

/* The whitespace-separated fields of the line of out whose first two are slot and our pid. */
static int worker_row(const char *out, int slot, char fields[][32], int max)
{
	char want_slot[16], want_pid[16];
	snprintf(want_slot, sizeof want_slot, "%d", slot);
	snprintf(want_pid, sizeof want_pid, "%ld", (long)getpid());
	for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		int n = 0;
		const char *p = l;
		while (n < max) {
			while (*p == ' ')
				p++;
			if (!*p || *p == '\n')
				break;
			size_t k = strcspn(p, " \n");
			snprintf(fields[n++], 32, "%.*s", (int)k, p);
			p += k;
		}
		if (n >= 2 && !strcmp(fields[0], want_slot) && !strcmp(fields[1], want_pid))
			return n;
	}
	return 0;
}

H_TEST(shmctl, top)
{
	struct fixture fx;
	fixture_start(&fx);
	H_OK(shmb_subscribe(fx.s));
	/* One wakeup, sent and received by this process: armed, a commit writes our eventfd, and
	 * shmb_wait reads it. */
	H_EXPECT_RC(shmb_prepare_wait(fx.c), 0);
	cr_assert_eq(shmb_publish(fx.s, 0, 0, "{}", 2), 1);
	H_EXPECT_RC(shmb_wait(fx.c, 0), 1);
	int slot = my_slot(fx.b->name);

	struct h_result r;
	h_shmctl(&r, fx.b->name, "top", "--iterations", "2", "--interval-ms", "100", NULL);
	cr_assert_eq(r.status, 0, "top: exit %d\n%s", r.status, r.err);
	/* Two frames, a blank line between them; the second has rates. */
	const char *second = strstr(r.out, "\n\nshmctl top - ");
	cr_assert_not_null(second, "no second frame:\n%s", r.out);
	second += 2;
	cr_expect(!strncmp(r.out, "shmctl top - ", 13) && !strstr(second, "\n\nshmctl top - "),
		  "not exactly two frames:\n%s", r.out);
	cr_expect(strstr(r.out, "wakeups:   1 sent (-), 1 received by attached workers (-)\n"),
		  "first frame: wakeups\n%s", r.out);
	cr_expect(strstr(second, "sessions:  1 live of 64 "), "sessions:\n%s", second);
	cr_expect(strstr(second, "events:    1 published, 0.0/s\n"), "events:\n%s", second);
	cr_expect(strstr(second, "wakeups:   1 sent (0.0/s), 1 received by attached workers "
				 "(0.0/s)\n"),
		  "wakeups:\n%s", second);
	cr_expect(strstr(second, "workers:   1 attached of 16"), "workers:\n%s", second);
	cr_expect(strstr(second, "WAKE SENT") && strstr(second, "WAKE RCVD") &&
			  strstr(second, "RCVD RATE"),
		  "worker table header:\n%s", second);
	char f[16][32];
	int n = worker_row(second, slot, f, 16);
	/* SLOT PID STATE ALIVE READERS IN-SECTION PUBLISHED RATE SENT RCVD RATE */
	cr_assert_eq(n, 11, "our worker row (slot %d):\n%s", slot, second);
	cr_expect_str_eq(f[2], "live");
	cr_expect_str_eq(f[3], "yes");
	cr_expect_str_eq(f[6], "1");
	cr_expect_str_eq(f[8], "1");
	cr_expect_str_eq(f[9], "1");
	cr_expect_str_eq(f[10], "0.0/s");
	h_result_free(&r);

	/* --json does not apply to top: a usage error. */
	h_shmctl(&r, fx.b->name, "top", "--json", NULL);
	cr_expect_eq(r.status, 2);
	h_result_free(&r);
	shmb_session_close(fx.s);
	h_detach(fx.c);
}

H_TEST(shmctl, json_documents_and_failures)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cJSON *d = h_shmctl_json(b->name, "delete", sid, NULL);
	cr_expect_eq(h_json_num(d, "schema_version"), 1);
	cr_expect_str_eq(str_of(d, "deleted"), sid);
	cJSON_Delete(d);
	/* A failing command prints nothing on stdout, even with --json: the reason is on stderr. */
	const char *verbs[] = { "delete", "show", "events" };
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
		struct h_result r;
		h_shmctl(&r, b->name, verbs[i], sid, "--json", NULL);
		cr_expect_eq(r.status, 1, "%s --json of a deleted session: exit %d", verbs[i],
			     r.status);
		cr_expect_str_eq(r.out, "", "%s --json: stdout", verbs[i]);
		char want[64];
		snprintf(want, sizeof want, "shmctl: %s: no session %s", verbs[i], sid);
		cr_expect(strstr(r.err, want), "%s: stderr: %s", verbs[i], r.err);
		h_result_free(&r);
	}
	h_detach(c);
}
