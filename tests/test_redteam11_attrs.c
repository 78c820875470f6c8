/* test_redteam11_attrs.c - hostile input against session attributes (issue 11 red team): keys
 * and values at and past their limits, set-if edge cases, a handle used after its session's
 * record was recycled, and what shmctl show and shmb_attr_list hand on from a damaged area
 * (keys forged with terminal escapes or a NUL) and from hostile values. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "attr.h"
#include "fault.h"
#include "harness.h"
#include "internal.h"

TestSuite(redteam11_attrs, .init = h_setup, .fini = h_teardown, .timeout = 120);

static shmb_session *new_session(shmb_client *c, char sid[SHMB_SID_LEN + 1])
{
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	return s;
}

struct seen {
	int n, bad;
};

/* Counts the keys it is handed that break the key rules (1..64 bytes of 0x21..0x7e). */
static int visit(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	struct seen *s = arg;
	(void)val, (void)len, (void)version;
	s->n++;
	if (attr_key_len(key) < 0)
		s->bad++;
	return 0;
}

H_TEST(redteam11_attrs, limits_and_set_if)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	static char val[SHMB_ATTR_MAX + 1];
	memset(val, 'v', sizeof val);
	char k64[SHMB_ATTR_KEY_MAX + 2];
	memset(k64, 'k', sizeof k64);
	k64[SHMB_ATTR_KEY_MAX + 1] = '\0';
	H_EXPECT_RC(shmb_attr_set(s, k64, "x", 1), SHMB_EINVAL); /* 65 bytes */
	k64[SHMB_ATTR_KEY_MAX] = '\0';
	H_EXPECT_RC(shmb_attr_set(s, k64, val, SHMB_ATTR_MAX + 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, k64, val, SHMB_ATTR_MAX), 0);
	char buf[SHMB_ATTR_MAX];
	H_EXPECT_RC(shmb_attr_get(s, k64, buf, sizeof buf, NULL), SHMB_ATTR_MAX);
	H_EXPECT_RC(shmb_attr_get(s, k64, buf, sizeof buf - 1, NULL), SHMB_ETOOBIG);
	H_EXPECT_RC(shmb_attr_get(s, k64, NULL, 0, NULL), SHMB_ETOOBIG);
	H_EXPECT_RC(shmb_attr_get(s, k64, NULL, 5, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "", "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, NULL, "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "a b", "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "a\x7f", "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "\xc3\xa9", "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "k", NULL, 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_get(s, NULL, buf, sizeof buf, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_delete(s, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(NULL, "k", "x", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_list(s, NULL, NULL), SHMB_EINVAL);

	/* set_if: 0 on a never-set key, stale versions, 0 on a deleted key, huge versions. */
	uint64_t v = 0;
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "1", 1, 0), 0);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "2", 1, 0), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_get(s, "n", buf, sizeof buf, &v), 1);
	cr_assert_eq(v, 1);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "2", 1, v + 1), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "2", 1, v + (UINT64_C(1) << 48)), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "2", 1, UINT64_MAX), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "2", 1, v), 0);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "3", 1, v), SHMB_ECONFLICT);
	H_OK(shmb_attr_delete(s, "n"));
	H_EXPECT_RC(shmb_attr_delete(s, "n"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "4", 1, 3), SHMB_ECONFLICT); /* the delete's version */
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "4", 1, 0), 0);
	H_EXPECT_RC(shmb_attr_get(s, "n", buf, sizeof buf, &v), 1);
	cr_assert_eq(v, 4, "version after set, set, delete, set: %llu", (unsigned long long)v);
	shmb_session_close(s);
	h_detach(c);
}

/* A handle kept past its session's deletion, used after the record went to another session:
 * every call refuses, and nothing lands in the new session's area. */
H_TEST(redteam11_attrs, stale_handle_after_recycle)
{
	h_broker_start(H_ARGS("--max-sessions", "1"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *old = new_session(c, sid);
	H_OK(shmb_attr_set(old, "k", "old", 3));
	H_OK(shmb_session_delete(c, sid, "t", NULL));
	/* The only record is free again once the broker reclaimed it. */
	int rc = SHMB_EFULL;
	H_POLL_UNTIL((rc = shmb_session_create(c, "t", NULL, sid2)) != SHMB_EFULL, 10000);
	H_OK(rc);
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid2, "t", NULL, &s));
	cr_assert_eq(s->idx, old->idx, "the record was not reused");
	char buf[16];
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(old, "k", "stale", 5), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set_if(old, "k", "stale", 5, 0), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_delete(old, "k"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_get(old, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	struct seen seen = { 0 };
	H_EXPECT_RC(shmb_attr_list(s, visit, &seen), 0);
	shmb_session_close(old);
	shmb_session_close(s);
	h_detach(c);
}

static int has_byte_below_space(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 && *s != '\n')
			return 1;
	return 0;
}

/* Hostile values: terminal escapes, invalid UTF-8, JSON-looking garbage. shmctl show escapes
 * them (no raw control byte reaches the terminal) and --json stays one valid document. */
H_TEST(redteam11_attrs, show_hostile_values)
{
	h_broker_start(H_NOARGS);
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	static const char *vals[] = {
		"\x1b[2J\x1b]0;pwned\x07",
		"\"\xff\xfe\"",
		"{\"a\":\"\x1b[31m\"}",
		"[1,2",
		"{\"a\":1}{\"b\":2}",
		"\"\\u0000\"",
		"\xc0\x80",
		"\"\xed\xa0\x80\"",
	};
	char key[8];
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
		snprintf(key, sizeof key, "v%zu", i);
		H_OK(shmb_attr_set(s, key, vals[i], strlen(vals[i])));
	}
	struct h_result r;
	h_shmctl(&r, name, "show", sid, NULL);
	cr_assert_eq(r.status, 0, "show: exit %d\n%s%s", r.status, r.out, r.err);
	cr_expect(!has_byte_below_space(r.out), "a raw control byte in show:\n%s", r.out);
	h_result_free(&r);
	cJSON *j = h_shmctl_json(name, "show", sid, NULL);
	cr_assert_eq(cJSON_GetArraySize(h_json_get(j, "attributes")),
		     (int)(sizeof vals / sizeof vals[0]));
	cJSON_Delete(j);
	shmb_session_close(s);
	h_detach(c);
}

/* A damaged (or forged, by any process that maps the segment) block whose key breaks the key
 * rules: an escape sequence, a NUL inside. shmctl show must not print it raw, --json must stay
 * valid, and shmb_attr_list must not hand the application a key no set could have stored. */
H_TEST(redteam11_attrs, forged_keys)
{
	h_broker_start(H_NOARGS);
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "abcd", "v", 1));
	H_OK(shmb_attr_set(s, "good", "w", 1));
	struct attr_area a;
	cr_assert_eq(attr_area_of(&c->seg, s->idx, &a), 0);
	struct shmb_attr_entry *e = attr_find(&a, attr_hash(&c->seg, "abcd", 4), 0);
	cr_assert_not_null(e);
	struct shmb_attr_block *blk =
		(struct shmb_attr_block *)(a.cells + ATTR_START(e->word) * SHMB_ATTR_CELL);
	char *kp = (char *)(blk + 1);
	static const char *forged[] = { "\x1b[2J", "a\0cd", "\xff\xfe\xfd\xfc", "a b\n" };
	for (size_t f = 0; f < sizeof forged / sizeof forged[0]; f++) {
		memcpy(kp, forged[f], 4);
		struct h_result r;
		h_shmctl(&r, name, "show", sid, NULL);
		cr_expect(r.status == 0 || r.status == 4, "show: exit %d\n%s%s", r.status, r.out,
			  r.err);
		cr_expect(!has_byte_below_space(r.out), "forged key %zu printed raw:\n%s", f,
			  r.out);
		for (const char *p = r.out; *p; p++)
			cr_expect((unsigned char)*p < 0x80,
				  "forged key %zu: a raw non-ASCII byte in "
				  "show:\n%s",
				  f, r.out);
		h_result_free(&r);
		cJSON *j = h_shmctl_json(name, "show", sid, NULL);
		cJSON_Delete(j);
		struct seen seen = { 0 };
		int rc = shmb_attr_list(s, visit, &seen);
		cr_expect(rc >= 0 || rc == SHMB_ECORRUPT, "list: %s", shmb_err_name(rc));
		cr_expect_eq(seen.bad, 0, "forged key %zu handed to the visitor", f);
	}
	memcpy(kp, "abcd", 4);
	char buf[4];
	H_EXPECT_RC(shmb_attr_get(s, "abcd", buf, sizeof buf, NULL), 1);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- per-session TTLs */

/* TTLs at the edges of what the protocol carries, against a broker without maxima: each is
 * refused or kept exactly (never silently rounded), and shmctl shows every kept one. */
H_TEST(redteam11_attrs, ttl_edges_without_maxima)
{
	h_broker_start(H_ARGS("--max-inactivity-ttl-ms", "0", "--max-absolute-ttl-ms", "0"));
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	static const int64_t ttls[] = {
		3600000,
		(INT64_C(1) << 53) - 1,
		INT64_C(1) << 53,
		(INT64_C(1) << 53) + 1,
		(INT64_C(1) << 62) + 1,
		INT64_MAX,
	};
	char sid[SHMB_SID_LEN + 1];
	for (size_t i = 0; i < sizeof ttls / sizeof ttls[0]; i++) {
		for (int which = 0; which < 2; which++) {
			shmb_session_opts o = { 0, 0 };
			if (which)
				o.absolute_ttl_ms = ttls[i];
			else
				o.inactivity_ttl_ms = ttls[i];
			int rc = shmb_session_create_opts(c, "t", NULL, &o, sid);
			cr_assert(rc == 0 || rc == SHMB_EINVAL, "ttl %lld: %s", (long long)ttls[i],
				  shmb_err_name(rc));
			if (rc < 0)
				continue;
			shmb_session *s = NULL;
			H_OK(shmb_session_open(c, sid, "t", NULL, &s));
			shmb_session_info st;
			H_OK(shmb_session_stat(s, &st));
			uint64_t got = which ? st.absolute_ttl_ms : st.inactivity_ttl_ms;
			cr_expect_eq(got, (uint64_t)ttls[i], "asked %lld, kept %llu",
				     (long long)ttls[i], (unsigned long long)got);
			struct h_result r;
			h_shmctl(&r, name, "show", sid, NULL);
			cr_expect_eq(r.status, 0, "show: exit %d\n%s%s", r.status, r.out, r.err);
			h_result_free(&r);
			cJSON_Delete(h_shmctl_json(name, "show", sid, NULL));
			shmb_session_close(s);
		}
	}
	struct h_result r;
	h_shmctl(&r, name, "sessions", NULL);
	cr_expect_eq(r.status, 0, "sessions: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	cJSON_Delete(h_shmctl_json(name, "sessions", NULL));
	h_detach(c);
}

/* ---------------------------------------------------------------- recycling under writers */

/* What the parent tells the writers: the current round's session. */
struct board {
	int round; /* bumped (release) after sid is written */
	int stop;
	char sid[SHMB_SID_LEN + 1];
};

struct writer_arg {
	struct board *bd;
	shmb_client *c;
	int id;
};

static void *writer_thread(void *p)
{
	struct writer_arg *w = p;
	char key[16], val[256];
	snprintf(key, sizeof key, "w%d", w->id);
	memset(val, 'a' + w->id, sizeof val);
	int seen = 0;
	uint64_t x = (uint64_t)w->id * 0x9e3779b97f4a7c15u + 1;
	while (!__atomic_load_n(&w->bd->stop, __ATOMIC_ACQUIRE)) {
		int round = __atomic_load_n(&w->bd->round, __ATOMIC_ACQUIRE);
		if (round == seen)
			continue;
		seen = round;
		char sid[SHMB_SID_LEN + 1];
		memcpy(sid, w->bd->sid, sizeof sid);
		shmb_session *s = NULL;
		if (shmb_session_open(w->c, sid, "t", NULL, &s) != 0)
			continue;
		for (int rc = 0; rc != SHMB_ENOENT;) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			size_t len = x % sizeof val;
			uint64_t v = 0;
			switch (x >> 60 & 3) {
			case 0:
				rc = shmb_attr_set(s, key, val, len);
				break;
			case 1:
				rc = shmb_attr_get(s, "shared", NULL, 0, &v);
				rc = rc == SHMB_ETOOBIG || rc >= 0 ? 0 : rc;
				rc = rc == SHMB_ENOENT ? shmb_attr_set_if(s, "shared", val, len, 0)
						       : shmb_attr_set_if(s, "shared", val, len, v);
				break;
			case 2:
				rc = shmb_attr_delete(s, key);
				rc = rc == SHMB_ENOENT ? shmb_attr_get(s, key, NULL, 0, NULL) : rc;
				break;
			default:
				rc = shmb_attr_set(s, "shared", val, len);
			}
			if (rc == SHMB_ENOENT)
				break;
			if (rc != 0 && rc != SHMB_ECONFLICT && rc != SHMB_ETOOBIG &&
			    rc != SHMB_EQUOTA)
				return (void *)(intptr_t)rc;
		}
		shmb_session_close(s);
	}
	return NULL;
}

static int writer_child(void *arg, int wfd)
{
	(void)wfd;
	struct board *bd = arg;
	shmb_client *c = NULL;
	if (shmb_attach(getenv("SHMB_NAME"), &c) != 0)
		return 2;
	pthread_t th[2];
	struct writer_arg wa[2];
	static int next_id;
	for (int i = 0; i < 2; i++) {
		wa[i] = (struct writer_arg){ bd, c, (int)(getpid() % 7) * 2 + i + next_id };
		pthread_create(&th[i], NULL, writer_thread, &wa[i]);
	}
	int bad = 0;
	for (int i = 0; i < 2; i++) {
		void *r;
		pthread_join(th[i], &r);
		bad |= r != NULL;
	}
	shmb_detach(c);
	return bad ? 3 : 0;
}

/* Writers in two processes (two threads each) hammer a session while the parent deletes it and
 * creates the next one in the only record; one writer process is SIGKILLed every few rounds.
 * Each new session must start with no attributes: a write of a stale handle into the recycled
 * record's area (or a dead writer's cells freed in the new session) would show here. */
H_TEST(redteam11_attrs, recycle_under_writers, .timeout = 200)
{
	h_broker_start(H_ARGS("--max-sessions", "1"));
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	struct board *bd =
		mmap(NULL, sizeof *bd, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(bd, MAP_FAILED);
	memset(bd, 0, sizeof *bd);
	struct h_child ch[2];
	for (int i = 0; i < 2; i++)
		h_child_start(&ch[i], writer_child, bd);
	int written = 0;
	for (int round = 1; round <= 120; round++) {
		char sid[SHMB_SID_LEN + 1];
		int rc = SHMB_EFULL;
		cr_assert(H_POLL_UNTIL((rc = shmb_session_create(c, "t", NULL, sid)) != SHMB_EFULL,
				       20000),
			  "round %d: no record", round);
		H_OK(rc);
		shmb_session *s = NULL;
		H_OK(shmb_session_open(c, sid, "t", NULL, &s));
		struct seen seen = { 0 };
		H_EXPECT_RC(shmb_attr_list(s, visit, &seen), 0);
		cr_assert_eq(seen.n, 0, "round %d: the new session has %d attributes", round,
			     seen.n);
		memcpy(bd->sid, sid, sizeof sid);
		__atomic_store_n(&bd->round, round, __ATOMIC_RELEASE);
		/* Let the writers in: until someone wrote "shared" (or 2 s passed). */
		written += H_POLL_UNTIL(shmb_attr_get(s, "shared", NULL, 0, NULL) != SHMB_ENOENT,
					2000);
		if (round % 15 == 0) {
			h_child_kill(&ch[round / 15 % 2]);
			h_child_start(&ch[round / 15 % 2], writer_child, bd);
		}
		H_OK(shmb_session_delete(c, sid, "t", NULL));
		shmb_session_close(s);
	}
	cr_expect_gt(written, 60, "the writers wrote in %d of 120 rounds only", written);
	__atomic_store_n(&bd->stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < 2; i++)
		cr_expect_eq(h_child_wait(&ch[i], 30000), 0, "writer %d", i);
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	h_detach(c);
	munmap(bd, sizeof *bd);
}

/* ---------------------------------------------------------------- error codes */

struct thr {
	shmb_session *s;
	int rc;
	pthread_barrier_t *hold;
};

static void *reader_thread(void *p)
{
	struct thr *t = p;
	t->rc = shmb_attr_get(t->s, "k", NULL, 0, NULL);
	pthread_barrier_wait(t->hold); /* keep the slot: the thread lives until all tried */
	return NULL;
}

/* More threads than reader slots: the extra ones get SHMB_ENOREADER from every attribute call,
 * the others work; nothing else is disturbed. */
H_TEST(redteam11_attrs, enoreader_from_attrs)
{
	h_broker_start(H_ARGS("--readers-per-worker", "2"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid); /* this thread holds one slot */
	H_OK(shmb_attr_set(s, "k", "v", 1));
	enum { N = 4 };
	pthread_barrier_t hold;
	pthread_barrier_init(&hold, NULL, N + 1);
	pthread_t th[N];
	struct thr t[N];
	for (int i = 0; i < N; i++) {
		t[i] = (struct thr){ s, 99, &hold };
		pthread_create(&th[i], NULL, reader_thread, &t[i]);
	}
	/* All N tried once each is in the barrier; count the outcomes there. */
	int ok = 0, noreader = 0;
	H_POLL_UNTIL(({
			     int done = 1;
			     for (int i = 0; i < N; i++)
				     done &= __atomic_load_n(&t[i].rc, __ATOMIC_ACQUIRE) != 99;
			     done;
		     }),
		     10000);
	for (int i = 0; i < N; i++) {
		ok += t[i].rc == SHMB_ETOOBIG;
		noreader += t[i].rc == SHMB_ENOREADER;
	}
	pthread_barrier_wait(&hold);
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	cr_expect_eq(ok + noreader, N, "outcomes: %d ok, %d ENOREADER of %d", ok, noreader, N);
	cr_expect_eq(ok, 1, "one slot was free: %d threads got it", ok);
	char buf[4];
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), 1);
	cr_expect_str_eq(shmb_err_name(SHMB_ENOREADER), "SHMB_ENOREADER");
	shmb_session_close(s);
	h_detach(c);
}

struct forker {
	shmb_session *s;
	int child_rc[5];
};

/* fork() from a second thread: in the child every attribute call and a create say SHMB_EFORK. */
static void *fork_thread(void *p)
{
	struct forker *f = p;
	int fds[2];
	if (pipe(fds) != 0)
		return NULL;
	pid_t pid = fork();
	if (pid == 0) {
		char buf[4], sid[SHMB_SID_LEN + 1];
		int rc[5] = {
			shmb_attr_get(f->s, "k", buf, sizeof buf, NULL),
			shmb_attr_set(f->s, "k", "x", 1),
			shmb_attr_delete(f->s, "k"),
			shmb_attr_set_if(f->s, "k", "x", 1, 1),
			shmb_session_create_opts(f->s ? f->s->c : NULL, "t", NULL, NULL, sid),
		};
		_exit(write(fds[1], rc, sizeof rc) == sizeof rc ? 0 : 1);
	}
	close(fds[1]);
	ssize_t n = read(fds[0], f->child_rc, sizeof f->child_rc);
	(void)n;
	close(fds[0]);
	waitpid(pid, NULL, 0);
	return NULL;
}

H_TEST(redteam11_attrs, efork_from_thread)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "k", "v", 1));
	struct forker f = { .s = s };
	pthread_t th;
	pthread_create(&th, NULL, fork_thread, &f);
	pthread_join(th, NULL);
	for (int i = 0; i < 5; i++)
		cr_expect_eq(f.child_rc[i], SHMB_EFORK, "call %d in the child: %s", i,
			     shmb_err_name(f.child_rc[i]));
	char buf[4];
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), 1);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- garbage against shmctl */

/* Random bytes over a session's whole attribute area: shmctl show (text and --json) and verify
 * end with a status, never a crash or a hang, and show prints no raw control byte. */
H_TEST(redteam11_attrs, garbage_area_shmctl)
{
	h_broker_start(H_NOARGS);
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "k", "value", 5));
	struct attr_area a;
	cr_assert_eq(attr_area_of(&c->seg, s->idx, &a), 0);
	uint8_t *p = (uint8_t *)a.entries;
	size_t len = (size_t)(a.cells - p) + (size_t)a.ncells * SHMB_ATTR_CELL;
	uint64_t x = 0x243f6a8885a308d3u;
	for (int round = 0; round < 12; round++) {
		for (size_t i = 0; i < len; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			p[i] = (uint8_t)(round % 3 == 0 ? x : round % 3 == 1 ? x & 0x0f : x & 0x3f);
		}
		struct h_result r;
		h_shmctl(&r, name, "show", sid, NULL);
		cr_expect(r.status == 0 || r.status == 4, "show: exit %d\n%s%s", r.status, r.out,
			  r.err);
		cr_expect(!has_byte_below_space(r.out), "round %d: raw control byte:\n%s", round,
			  r.out);
		h_result_free(&r);
		h_shmctl(&r, name, "show", sid, "--json", NULL);
		cr_expect(r.status == 0 || r.status == 4, "show --json: exit %d\n%s", r.status,
			  r.err);
		cJSON *j = cJSON_Parse(r.out);
		cr_expect_not_null(j, "show --json: not JSON:\n%s", r.out);
		cJSON_Delete(j);
		h_result_free(&r);
		h_shmctl(&r, name, "verify", NULL);
		cr_expect(r.status == 0 || r.status == 4, "verify: exit %d\n%s%s", r.status, r.out,
			  r.err);
		h_result_free(&r);
	}
	memset(p, 0, len);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- nested list */

struct nest {
	shmb_session *inner;
	int mismatches, n;
};

static int count_visit(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	(void)key, (void)val, (void)len, (void)version;
	(*(int *)arg)++;
	return 0;
}

/* The visitor lists another session (say, to compare or copy), then looks at its own value. */
static int outer_visit(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	struct nest *n = arg;
	(void)version;
	char want[64];
	int wl = snprintf(want, sizeof want, "outer-%s", key);
	int inner = 0;
	shmb_attr_list(n->inner, count_visit, &inner);
	n->n++;
	if ((size_t)wl != len || memcmp(val, want, len) != 0)
		n->mismatches++;
	return 0;
}

H_TEST(redteam11_attrs, nested_list_keeps_value)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid), *s2 = new_session(c, sid2);
	H_OK(shmb_attr_set(s, "a", "outer-a", 7));
	H_OK(shmb_attr_set(s, "b", "outer-b", 7));
	H_OK(shmb_attr_set(s2, "x", "inner-value-that-is-longer", 26));
	struct nest n = { .inner = s2 };
	H_EXPECT_RC(shmb_attr_list(s, outer_visit, &n), 2);
	cr_expect_eq(n.n, 2);
	cr_expect_eq(n.mismatches, 0, "a nested list overwrote the outer visitor's value");
	shmb_session_close(s2);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- stopped writer, recycling */

static int stop_writer(void *arg, int wfd)
{
	const char *sid = arg;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	static char v[1500];
	memset(v, 'w', sizeof v);
	setenv("SHMB_FAULT", getenv("RT_POINT"), 1);
	int rc = shmb_attr_set(s, "k", v, sizeof v);
	unsetenv("SHMB_FAULT");
	return h_write_all(wfd, &rc, sizeof rc) == 0 ? 0 : 3;
}

static void stopped_writer_vs_recycle(const char *point, int kill_it)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	h_broker_start(H_ARGS("--max-sessions", "1"));
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "k", "old", 3));
	setenv("RT_POINT", point, 1);
	struct h_child ch;
	h_child_start(&ch, stop_writer, sid);
	int st;
	cr_assert_eq(waitpid(ch.pid, &st, WUNTRACED), ch.pid);
	cr_assert(WIFSTOPPED(st), "the writer did not stop at %s", point);
	H_OK(shmb_session_delete(c, sid, "t", NULL));
	shmb_session_close(s);
	/* The stopped writer is inside a section on the record: it stays unreclaimed. */
	H_EXPECT_RC(shmb_session_create(c, "t", NULL, sid2), SHMB_EFULL);
	if (kill_it) {
		h_child_kill(&ch);
	} else {
		kill(ch.pid, SIGCONT);
		int rc = 1;
		cr_assert_eq(h_child_read(&ch, &rc, sizeof rc, 10000), sizeof rc);
		cr_expect(rc == 0 || rc == SHMB_ENOENT, "the continued set: %s", shmb_err_name(rc));
		cr_expect_eq(h_child_wait(&ch, 10000), 0);
	}
	int rc = SHMB_EFULL;
	cr_assert(H_POLL_UNTIL((rc = shmb_session_create(c, "t", NULL, sid2)) != SHMB_EFULL, 20000),
		  "the record was never reclaimed");
	H_OK(rc);
	H_OK(shmb_session_open(c, sid2, "t", NULL, &s));
	struct seen seen = { 0 };
	H_EXPECT_RC(shmb_attr_list(s, visit, &seen), 0);
	/* The whole budget is free: a value as large as one attribute fits twice. */
	static char big[SHMB_ATTR_MAX];
	H_OK(shmb_attr_set(s, "a", big, sizeof big - 8));
	H_OK(shmb_attr_set(s, "b", big, sizeof big - 8));
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: exit %d\n%s%s", r.status, r.out, r.err);
	h_result_free(&r);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(redteam11_attrs, stopped_at_write_continued)
{
	stopped_writer_vs_recycle("attr.write:stop", 0);
}

H_TEST(redteam11_attrs, stopped_at_old_continued)
{
	stopped_writer_vs_recycle("attr.old:stop", 0);
}

H_TEST(redteam11_attrs, stopped_at_alloc_killed)
{
	stopped_writer_vs_recycle("attr.alloc:stop", 1);
}

H_TEST(redteam11_attrs, stopped_at_commit_killed)
{
	stopped_writer_vs_recycle("attr.commit:stop", 1);
}
