/* test_restore.c - shmb_session_restore (issue 16): a session image (another node's, or a dump's)
 * brought into this broker's segment through the broker, with its id, binding, timestamps, TTLs,
 * attributes and events at their ids; ids of the window the image does not hold are gaps, ids
 * before it are an overrun, the next publish continues after last_event_id; an image larger than
 * one control message goes whole (a memfd); racing restorers make one session; bad images change
 * nothing; an unattached connection of another uid is refused, an attached worker is not; a
 * broker killed mid-restore leaves the session whole or absent after adoption. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "fault.h"
#include "harness.h"
#include "layout.h"

TestSuite(restore, .init = h_setup, .fini = h_teardown, .timeout = 90);

/* Ring of 16 events and 4096 bytes: 256-byte slots (H_DEFAULT_ARGS), max_event_bytes 1024. */
#define SID7 "0007c0ffee0123456789abcdef012345"

static const char pay26[] = "{\"n\":26}", pay28[] = "{\"n\":28}", pay33[] = "x";
static char pay30[300], pay40[1024];
static const char bin_val[] = { 0, 1, (char)0xff, 'z' };

/* The reference image: last_event_id 40, window 25..40 (16 ids); an event at 10 is older than
 * the window (left out); 27 is a gap record; 30 takes two ids (300 bytes in 256-byte slots); 37
 * is max_event_bytes (ids 37..40); ids 25, 29, 32, 34..36 are missing (gaps). Three
 * attributes. */
static void ref_image(shmb_session_image *img, shmb_image_event ev[7], shmb_image_attr at[3],
		      const char *principal, int64_t now)
{
	memset(pay30, 'a', sizeof pay30);
	memset(pay40, 'b', sizeof pay40);
	ev[0] = (shmb_image_event){
		.id = 10, .stream = 1, .kind = 1, .ts_ms = now - 9000, .data = "old", .len = 3
	};
	ev[1] = (shmb_image_event){ .id = 26,
				    .stream = 1,
				    .kind = 7,
				    .ts_ms = now - 5000,
				    .data = pay26,
				    .len = strlen(pay26) };
	ev[2] = (shmb_image_event){
		.id = 27, .stream = 2, .flags = SHMB_EV_GAP, .ts_ms = now - 4900
	};
	ev[3] = (shmb_image_event){ .id = 28,
				    .stream = 2,
				    .kind = 8,
				    .ts_ms = now - 4800,
				    .data = pay28,
				    .len = strlen(pay28) };
	ev[4] = (shmb_image_event){ .id = 30,
				    .stream = 1,
				    .kind = 9,
				    .ts_ms = now - 4700,
				    .data = pay30,
				    .len = sizeof pay30 };
	ev[5] = (shmb_image_event){
		.id = 33, .stream = 3, .kind = 0, .ts_ms = now - 4600, .data = pay33, .len = 1
	};
	ev[6] = (shmb_image_event){ .id = 37,
				    .stream = 1,
				    .kind = 65535,
				    .ts_ms = now - 4500,
				    .data = pay40,
				    .len = sizeof pay40 };
	at[0] = (shmb_image_attr){ .key = "protocolVersion", .val = "2025-06-18", .len = 10 };
	at[1] = (shmb_image_attr){ .key = "empty", .val = NULL, .len = 0 };
	at[2] = (shmb_image_attr){ .key = "blob", .val = bin_val, .len = sizeof bin_val };
	*img = (shmb_session_image){ .sid = SID7,
				     .tenant = "acme",
				     .principal = principal,
				     .created_at_ms = now - 60000,
				     .last_accessed_at_ms = now - 1000,
				     .inactivity_ttl_ms = 600000,
				     .absolute_ttl_ms = 3600000,
				     .last_event_id = 40,
				     .events = ev,
				     .n_events = 7,
				     .attrs = at,
				     .n_attrs = 3 };
}

/* Live sessions shmctl lists. */
static int n_sessions(const char *name)
{
	cJSON *doc = h_shmctl_json(name, "sessions", NULL);
	int n = cJSON_GetArraySize(h_json_sessions(doc));
	cJSON_Delete(doc);
	return n;
}

/* Every event of the image that is in the window, read back through a cursor after `after`:
 * non-gap events with their fields and payloads, every other id of the window a gap. */
static void expect_events(shmb_session *s, const shmb_image_event *ev, size_t n, uint64_t lo,
			  uint64_t last)
{
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(s, lo - 1, &cur));
	static char buf[65536];
	shmb_event e;
	uint64_t want = lo;
	size_t j = 0;
	while (j < n && ev[j].id < lo)
		j++;
	int rc;
	while ((rc = shmb_cursor_next(cur, &e, buf, sizeof buf)) == 1) {
		cr_assert_geq(e.id, want, "event %llu before %llu", (unsigned long long)e.id,
			      (unsigned long long)want);
		if (j < n && e.id == ev[j].id && !(ev[j].flags & SHMB_EV_GAP)) {
			cr_expect(!(e.flags & SHMB_EV_GAP), "event %llu came as a gap",
				  (unsigned long long)e.id);
			cr_expect_eq(e.stream, ev[j].stream, "event %llu stream",
				     (unsigned long long)e.id);
			cr_expect_eq(e.kind, ev[j].kind, "event %llu kind",
				     (unsigned long long)e.id);
			cr_expect_eq(e.ts_ms, ev[j].ts_ms, "event %llu ts_ms",
				     (unsigned long long)e.id);
			cr_expect_eq(e.len, ev[j].len, "event %llu len", (unsigned long long)e.id);
			cr_expect(e.len == ev[j].len && memcmp(e.data, ev[j].data, e.len) == 0,
				  "event %llu payload differs", (unsigned long long)e.id);
			j++;
		} else {
			if (j < n && e.id == ev[j].id)
				j++; /* a gap record of the image */
			cr_expect(e.flags & SHMB_EV_GAP,
				  "id %llu is not in the image but came as "
				  "an event (flags %u, len %zu)",
				  (unsigned long long)e.id, e.flags, e.len);
		}
		want = e.id + 1;
	}
	cr_expect_eq(rc, 0, "cursor: %s", shmb_err_name(rc));
	cr_expect_eq(j, n, "%zu of the image's events were not read back", n - j);
	cr_expect_leq(want, last + 1, "the cursor read past %llu", (unsigned long long)last);
	shmb_cursor_close(cur);
}

static void expect_attr(shmb_session *s, const char *key, const void *val, size_t len)
{
	char buf[SHMB_ATTR_MAX];
	uint64_t version = 0;
	int rc = shmb_attr_get(s, key, buf, sizeof buf, &version);
	cr_expect_eq(rc, (int)len, "attribute %s: %d (%s), want %zu bytes", key, rc,
		     shmb_err_name(rc), len);
	cr_expect(rc == (int)len && (len == 0 || memcmp(buf, val, len) == 0),
		  "attribute %s differs", key);
	cr_expect_eq(version, 1, "attribute %s: version %llu", key, (unsigned long long)version);
}

/* The reference image restored: everything as given. */
static void expect_ref_session(shmb_client *c, const shmb_session_image *img)
{
	shmb_session *s;
	H_EXPECT_RC(shmb_session_open(c, img->sid, "acme", "mallory", &s), SHMB_EPERM);
	H_OK(shmb_session_open(c, img->sid, img->tenant, img->principal, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_str_eq(info.sid, img->sid);
	cr_expect_str_eq(info.tenant, img->tenant);
	cr_expect_eq(info.has_principal, img->principal != NULL);
	if (img->principal)
		cr_expect_str_eq(info.principal, img->principal);
	cr_expect_eq(info.created_at_ms, img->created_at_ms);
	cr_expect_geq(info.last_accessed_at_ms, img->last_accessed_at_ms); /* open touched it */
	cr_expect_eq(info.inactivity_ttl_ms, img->inactivity_ttl_ms);
	cr_expect_eq(info.absolute_ttl_ms, img->absolute_ttl_ms);
	cr_expect_eq(info.last_event_id, img->last_event_id);
	cr_expect_eq(info.oldest_event_id, img->last_event_id - 15, "oldest %llu",
		     (unsigned long long)info.oldest_event_id);
	expect_events(s, img->events, img->n_events, img->last_event_id - 15, img->last_event_id);

	/* A cursor from before the window: the overrun first, then the window. */
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(s, 3, &cur));
	shmb_event e;
	char buf[2048];
	H_EXPECT_RC(shmb_cursor_next(cur, &e, buf, sizeof buf), SHMB_EOVERRUN);
	H_EXPECT_RC(shmb_cursor_next(cur, &e, buf, sizeof buf), 1);
	cr_expect_eq(e.id, img->last_event_id - 15);
	shmb_cursor_close(cur);

	for (size_t i = 0; i < img->n_attrs; i++)
		expect_attr(s, img->attrs[i].key, img->attrs[i].val, img->attrs[i].len);
	/* The next publish continues after last_event_id. */
	H_EXPECT_RC(shmb_publish(s, 1, 0, "next", 4), (int)img->last_event_id + 1);
	shmb_session_close(s);
}

H_TEST(restore, an_image_comes_back_whole)
{
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "2"));
	shmb_client *c = h_attach(b->name);
	shmb_session_image img;
	shmb_image_event ev[7];
	shmb_image_attr at[3];
	ref_image(&img, ev, at, "alice", h_wall_ms());
	H_EXPECT_RC(shmb_session_restore(c, &img), 1); /* the event at id 10: before the window */
	expect_ref_session(c, &img);
	/* shmctl sees it, with the node that made it (7) on node 2. */
	cJSON *j = h_shmctl_json(b->name, "show", SID7, NULL);
	cr_expect_eq(h_json_num(j, "node"), 7);
	cr_expect_eq(h_json_num(j, "node_id"), 2);
	cJSON_Delete(j);
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify after a restore: %s%s", r.out, r.err);
	h_result_free(&r);
	/* Restoring it again: the id exists. */
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_ECONFLICT);
	cr_expect_eq(n_sessions(b->name), 1);
	h_detach(c);
}

H_TEST(restore, no_principal_no_ttls_no_events_no_attributes)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	int64_t now = h_wall_ms();
	shmb_session_image img = { .sid = "00000000000000000000000000000abc",
				   .tenant = "t",
				   .created_at_ms = now - 5,
				   .last_accessed_at_ms = now - 5,
				   .last_event_id = 0 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *s;
	H_EXPECT_RC(shmb_session_open(c, img.sid, "t", "someone", &s), SHMB_EPERM);
	H_OK(shmb_session_open(c, img.sid, "t", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.has_principal, 0);
	cr_expect_eq(info.inactivity_ttl_ms, 0);
	cr_expect_eq(info.absolute_ttl_ms, 0);
	cr_expect_eq(info.last_event_id, 0);
	cr_expect_eq(info.oldest_event_id, 0);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "first", 5), 1);
	char buf[8];
	H_EXPECT_RC(shmb_attr_get(s, "any", buf, sizeof buf, NULL), SHMB_ENOENT);
	shmb_session_close(s);
	/* Uppercase hex is accepted and kept lowercase, as shmb_session_open does. */
	img.sid = "00000000000000000000000000000ABD";
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	H_OK(shmb_session_open(c, "00000000000000000000000000000abd", "t", NULL, &s));
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(restore, ids_only_in_the_window_are_gaps_and_a_short_history_has_no_overrun)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	int64_t now = h_wall_ms();
	/* last 5 < ring_events: ids 1..5, the image holds 2 and 4. */
	shmb_image_event ev[2] = {
		{ .id = 2, .data = "two", .len = 3, .ts_ms = now },
		{ .id = 4, .stream = 9, .data = "four", .len = 4, .ts_ms = now }
	};
	shmb_session_image img = { .sid = "11110000000000000000000000000001",
				   .tenant = "acme",
				   .created_at_ms = now,
				   .last_accessed_at_ms = now,
				   .last_event_id = 5,
				   .events = ev,
				   .n_events = 2 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *s;
	H_OK(shmb_session_open(c, img.sid, "acme", NULL, &s));
	expect_events(s, ev, 2, 1, 5); /* 1, 3, 5 gaps; no overrun from 0 */
	H_EXPECT_RC(shmb_publish(s, 0, 0, "6", 1), 6);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(restore, an_image_larger_than_a_control_message_is_not_cut, .timeout = 120)
{
	/* 256 events of max_event_bytes (1024, one 1 KiB slot each): 256 KiB of payload, four
	 * times SHMB_CTL_MAX_MSG, plus 16 attributes. */
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "256", "--ring-bytes", "262144",
						   "--max-event-bytes", "1024"));
	shmb_client *c = h_attach(b->name);
	int64_t now = h_wall_ms();
	static shmb_image_event ev[256];
	static char data[256][1024];
	for (int i = 0; i < 256; i++) {
		for (int k = 0; k < 1024; k++)
			data[i][k] = (char)(i * 31 + k * 7);
		ev[i] = (shmb_image_event){ .id = 1000 + (uint64_t)i,
					    .stream = (uint32_t)(i % 3),
					    .kind = (uint16_t)i,
					    .ts_ms = now - 256 + i,
					    .data = data[i],
					    .len = 1024 };
	}
	static char keys[16][16], vals[16][100];
	shmb_image_attr at[16];
	for (int i = 0; i < 16; i++) {
		snprintf(keys[i], sizeof keys[i], "k%d", i);
		memset(vals[i], 'A' + i, sizeof vals[i]);
		at[i] = (shmb_image_attr){ .key = keys[i], .val = vals[i], .len = sizeof vals[i] };
	}
	shmb_session_image img = { .sid = "00030000000000000000000000000big",
				   .tenant = "acme",
				   .created_at_ms = now - 1000,
				   .last_accessed_at_ms = now,
				   .last_event_id = 1255,
				   .events = ev,
				   .n_events = 256,
				   .attrs = at,
				   .n_attrs = 16 };
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_EINVAL); /* "big" is not hex */
	img.sid = "00030000000000000000000000000b19";
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *s;
	H_OK(shmb_session_open(c, img.sid, "acme", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.oldest_event_id, 1000);
	cr_expect_eq(info.last_event_id, 1255);
	expect_events(s, ev, 256, 1000, 1255);
	for (int i = 0; i < 16; i++)
		expect_attr(s, keys[i], vals[i], sizeof vals[i]);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "n", 1), 1256);
	shmb_session_close(s);
	h_detach(c);
}

/* ---- racing restorers ---- */

struct racer {
	const char *name;
	int go[2]; /* EOF on go[0] means go */
	int64_t now;
};

static int race(void *p, int wfd)
{
	const struct racer *a = p;
	shmb_client *c = NULL;
	int rc = shmb_attach(a->name, &c);
	if (rc < 0)
		return 10;
	char x;
	close(a->go[1]);
	(void)!read(a->go[0], &x, 1); /* every racer attached; all released at once */
	shmb_session_image img;
	shmb_image_event ev[7];
	shmb_image_attr at[3];
	ref_image(&img, ev, at, "alice", a->now);
	rc = shmb_session_restore(c, &img);
	h_write_all(wfd, &rc, sizeof rc);
	shmb_detach(c);
	return 0;
}

H_TEST(restore, racing_restorers_make_one_session)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	enum { N = 6 };
	struct racer a = { .name = b->name, .now = h_wall_ms() };
	cr_assert_eq(pipe2(a.go, O_CLOEXEC), 0);
	struct h_child ch[N];
	for (int i = 0; i < N; i++)
		h_child_start(&ch[i], race, &a);
	close(a.go[0]);
	/* Attached: the broker admitted them all (no event says so: polled). */
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_WORKERS_ADMITTED) >= N, 15000));
	close(a.go[1]);
	int ok = 0, conflict = 0;
	for (int i = 0; i < N; i++) {
		int rc = 99;
		cr_assert_eq(h_child_read(&ch[i], &rc, sizeof rc, 30000), (ssize_t)sizeof rc);
		cr_expect(rc == 1 || rc == SHMB_ECONFLICT, "racer %d: %d %s", i, rc,
			  shmb_err_name(rc));
		ok += rc == 1;
		conflict += rc == SHMB_ECONFLICT;
		cr_expect_eq(h_child_wait(&ch[i], 30000), 0);
	}
	cr_expect_eq(ok, 1, "%d racers restored it", ok);
	cr_expect_eq(conflict, N - 1);
	cr_expect_eq(n_sessions(b->name), 1);
	shmb_client *c = h_attach(b->name);
	shmb_session_image img;
	shmb_image_event ev[7];
	shmb_image_attr at[3];
	ref_image(&img, ev, at, "alice", a.now);
	expect_ref_session(c, &img);
	h_detach(c);
}

/* ---- bad images ---- */

H_TEST(restore, bad_images_are_refused_and_change_nothing)
{
	struct h_broker *b = h_broker_start(H_ARGS("--attr-keys", "4", "--attr-bytes", "512"));
	shmb_client *c = h_attach(b->name);
	int64_t now = h_wall_ms();
	shmb_session_image good, img;
	shmb_image_event ev[7], e2[7];
	shmb_image_attr at[3], a2[5];
	ref_image(&good, ev, at, "alice", now);
	char big[1025] = { 0 };
	char long_tenant[66], long_principal[130];
	memset(long_tenant, 't', 65);
	long_tenant[65] = '\0';
	memset(long_principal, 'p', 129);
	long_principal[129] = '\0';
	char long_key[66];
	memset(long_key, 'k', 65);
	long_key[65] = '\0';
	static char big_val[SHMB_ATTR_MAX + 1];

#define BAD(want, ...)                                                             \
	do {                                                                       \
		img = good;                                                        \
		memcpy(e2, ev, sizeof ev);                                         \
		memcpy(a2, at, sizeof at);                                         \
		img.events = e2;                                                   \
		img.attrs = a2;                                                    \
		__VA_ARGS__;                                                       \
		int rc_ = shmb_session_restore(c, &img);                           \
		cr_expect_eq(rc_, (want), "%s: %d %s, want %s", #__VA_ARGS__, rc_, \
			     shmb_err_name(rc_), shmb_err_name(want));             \
	} while (0)

	H_EXPECT_RC(shmb_session_restore(c, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_restore(NULL, &good), SHMB_EINVAL);
	BAD(SHMB_EINVAL, img.sid = NULL);
	BAD(SHMB_EINVAL, img.sid = "0007c0ffee");
	BAD(SHMB_EINVAL, img.sid = "0007c0ffee0123456789abcdef01234g");
	BAD(SHMB_EINVAL, img.tenant = NULL);
	BAD(SHMB_EINVAL, img.tenant = "");
	BAD(SHMB_EINVAL, img.tenant = long_tenant);
	BAD(SHMB_EINVAL, img.principal = "");
	BAD(SHMB_EINVAL, img.principal = long_principal);
	BAD(SHMB_EINVAL, img.created_at_ms = 0);
	BAD(SHMB_EINVAL, img.created_at_ms = -5);
	BAD(SHMB_EINVAL, img.last_accessed_at_ms = -1);
	BAD(SHMB_EINVAL, img.inactivity_ttl_ms = UINT64_MAX);
	BAD(SHMB_EINVAL, img.absolute_ttl_ms = (UINT64_C(1) << 53) + 1);
	BAD(SHMB_EINVAL, img.last_event_id = UINT64_MAX);
	BAD(SHMB_EINVAL, img.last_event_id = 39); /* event 40 above it */
	BAD(SHMB_EINVAL, img.events = NULL);
	BAD(SHMB_EINVAL, img.events = NULL; img.n_events = SIZE_MAX);
	BAD(SHMB_EINVAL, img.attrs = NULL);
	BAD(SHMB_EINVAL, e2[3].id = 26);                /* not ascending */
	BAD(SHMB_EINVAL, e2[0].id = 0);                 /* ids start at 1 */
	BAD(SHMB_EINVAL, e2[0].id = 30; e2[1].id = 29); /* unordered in the window */
	BAD(SHMB_EINVAL, e2[2].flags = 4);              /* an unknown flag */
	BAD(SHMB_EINVAL, e2[1].data = NULL);
	BAD(SHMB_EINVAL, e2[1].ts_ms = -1);
	BAD(SHMB_ETOOBIG, e2[6].data = big; e2[6].len = sizeof big); /* > max_event_bytes */
	BAD(SHMB_ETOOBIG, e2[0].data = big; e2[0].len = sizeof big); /* even a left-out one */
	/* The ring's geometry: 300 bytes at 30 take ids 30 and 31 here (256-byte slots). */
	BAD(SHMB_EINVAL, e2[5].id = 31);
	BAD(SHMB_EINVAL, e2[6].id = 38); /* 1024 bytes at 38 take 38..41, past last (40) */
	BAD(SHMB_EINVAL, a2[0].key = NULL);
	BAD(SHMB_EINVAL, a2[0].key = "");
	BAD(SHMB_EINVAL, a2[0].key = "has space");
	BAD(SHMB_EINVAL, a2[0].key = "caf\xc3\xa9");
	BAD(SHMB_EINVAL, a2[0].key = long_key);
	BAD(SHMB_EINVAL, a2[2].val = NULL);
	BAD(SHMB_ETOOBIG, a2[2].val = big_val; a2[2].len = sizeof big_val);
	BAD(SHMB_EINVAL, a2[2].key = "empty"); /* a key given twice (the broker's check) */
	/* Five keys, attr_keys 4. */
	BAD(SHMB_ETOOBIG, a2[3] = a2[4] = a2[2]; a2[3].key = "four"; a2[4].key = "five";
	    img.n_attrs = 5);
	/* Three values of 3 cells each: 9 cells, attr_bytes 512 has 8 (the broker's plan). */
	BAD(SHMB_ETOOBIG,
	    for (int i = 0; i < 3; i++) a2[i] = (shmb_image_attr){
		    .key = (const char *[]){ "a", "b", "c" }[i], .val = big_val, .len = 150 });
	cr_expect_eq(n_sessions(b->name), 0, "a refused restore left a session");
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), 0);

	/* And the good one still restores (nothing was left half-made under its id). */
	H_EXPECT_RC(shmb_session_restore(c, &good), 1);
	cr_expect_eq(n_sessions(b->name), 1);
	h_detach(c);
#undef BAD
}

H_TEST(restore, the_broker_checks_the_image_itself)
{
	/* A client that skips the library's checks: raw requests with crafted memfds. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name); /* attached: the raw connection below is not */
	int fd = h_ctl_conn(b);
	static const char hello_free[] =
		"{\"op\":\"restore\",\"session\":{\"id\":\"" SID7 "\",\"tenant\":\"acme\","
		"\"principal\":null,\"created_at_ms\":1,\"last_accessed_at_ms\":1,"
		"\"inactivity_ttl_ms\":0,\"absolute_ttl_ms\":0,\"last_event_id\":1},"
		"\"image\":{\"bytes\":%d}}";
	struct {
		const char *what;
		const void *bytes;
		size_t len;
		int declared; /* -1: the length */
		int pass_fd;  /* 0: no fd, 1: a memfd, 2: a pipe */
	} cases[] = {
		{ "no fd", "", 0, 16, 0 },
		{ "a pipe instead of a memfd", "", 0, 16, 2 },
		{ "a short image", "SHMBIMG1", 8, -1, 1 },
		{ "a wrong declared size", "SHMBIMG1\0\0\0\0\0\0\0\0", 16, 24, 1 },
		{ "a bad magic", "SHMBIMGX\0\0\0\0\0\0\0\0", 16, -1, 1 },
		{ "more events than it holds", "SHMBIMG1\1\0\0\0\0\0\0\0", 16, -1, 1 },
		{ "a huge event count", "SHMBIMG1\377\377\377\377\0\0\0\0", 16, -1, 1 },
		{ "bytes after the last record", "SHMBIMG1\0\0\0\0\0\0\0\0garbage!", 24, -1, 1 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char req[512];
		int declared = cases[i].declared < 0 ? (int)cases[i].len : cases[i].declared;
		snprintf(req, sizeof req, hello_free, declared);
		int pass = -1, p[2] = { -1, -1 };
		if (cases[i].pass_fd == 1) {
			pass = memfd_create("t", MFD_CLOEXEC);
			cr_assert_eq(write(pass, cases[i].bytes, cases[i].len),
				     (ssize_t)cases[i].len);
		} else if (cases[i].pass_fd == 2) {
			cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
			pass = p[0];
		}
		/* As root (the broker's uid): admitted without attaching. */
		cr_assert_eq(ctl_send(fd, req, strlen(req), &pass, pass >= 0), 0);
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		cr_assert_eq(poll(&pf, 1, 10000), 1, "%s: no reply", cases[i].what);
		char buf[2048];
		ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
		cr_assert_gt(n, 0);
		buf[n] = '\0';
		cr_expect(strstr(buf, "\"ok\":false") &&
				  (strstr(buf, "SHMB_EINVAL") || strstr(buf, "SHMB_ETOOBIG")),
			  "%s: %s", cases[i].what, buf);
		if (pass >= 0)
			close(pass);
		if (p[1] >= 0)
			close(p[1]);
	}
	close(fd);
	cr_expect_eq(n_sessions(b->name), 0);
	/* The broker still serves. */
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
}

/* ---- who may restore ---- */

#define NOBODY 65534
#define EXTRA_GID 4242

struct stranger_report {
	int raw_code; /* an unattached restore: its reply's code, 0 ok, 1 no reply */
	int attach;
	int restore; /* shmb_session_restore after attaching */
};

static int run_stranger(void *p, int wfd)
{
	const struct h_broker *b = p;
	struct stranger_report r = { .raw_code = 1, .restore = 1 };
	gid_t extra = EXTRA_GID;
	if (setgroups(1, &extra) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
		return 2;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof sa.sun_path, "%.107s", b->sock_path);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
		static const char req[] =
			"{\"op\":\"restore\",\"session\":{\"id\":\"" SID7 "\",\"tenant\":\"acme\","
			"\"principal\":null,\"created_at_ms\":1,\"last_accessed_at_ms\":1,"
			"\"inactivity_ttl_ms\":0,\"absolute_ttl_ms\":0,\"last_event_id\":0}}";
		if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof req - 1)) {
			struct pollfd pf = { .fd = fd, .events = POLLIN };
			char buf[1024];
			ssize_t n = poll(&pf, 1, 5000) == 1 ? recv(fd, buf, sizeof buf - 1, 0) : -1;
			if (n > 0) {
				buf[n] = '\0';
				cJSON *j = cJSON_Parse(buf);
				const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
				r.raw_code = cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")) ? 0
					     : cJSON_IsNumber(code) ? (int)code->valuedouble
								    : 1;
				cJSON_Delete(j);
			}
		}
	}
	if (fd >= 0)
		close(fd);
	shmb_client *c = NULL;
	r.attach = shmb_attach(b->name, &c);
	if (r.attach == 0) {
		shmb_session_image img;
		shmb_image_event ev[7];
		shmb_image_attr at[3];
		ref_image(&img, ev, at, "alice", h_wall_ms());
		r.restore = shmb_session_restore(c, &img);
		shmb_detach(c);
	}
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 3;
}

H_TEST(restore, an_attached_worker_of_another_uid_may_an_unattached_connection_may_not)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a child as another uid");
	cr_assert_eq(chmod(h_runtime_dir(), 0755), 0);
	char path[300], json[64];
	snprintf(path, sizeof path, "%s/gids.json", h_runtime_dir());
	snprintf(json, sizeof json, "{\"allowed_gids\": [%d]}", EXTRA_GID);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(json, f);
	fclose(f);
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	struct h_child ch;
	h_child_start(&ch, run_stranger, b);
	struct stranger_report r;
	cr_assert_eq(h_child_read(&ch, &r, sizeof r, 30000), (ssize_t)sizeof r);
	cr_assert_eq(h_child_wait(&ch, 30000), 0);
	cr_expect_eq(r.raw_code, SHMB_EACCES, "an unattached restore as uid nobody got %d (%s)",
		     r.raw_code, shmb_err_name(r.raw_code));
	cr_expect_eq(r.attach, 0, "attach: %s", shmb_err_name(r.attach));
	cr_expect_eq(r.restore, 1, "restore by an attached worker: %d %s", r.restore,
		     shmb_err_name(r.restore));
	cr_expect_eq(n_sessions(b->name), 1);
}

/* ---- the broker killed mid-restore ---- */

#if SHMB_FAULT_ENABLED
static void crash_restore(const char *point, int whole)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	h_broker_stop(b);
	setenv("SHMB_FAULT", point, 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	cr_assert_eq(rc, 0, "the broker armed with %s did not start", point);
	shmb_session_image img;
	shmb_image_event ev[7];
	shmb_image_attr at[3];
	ref_image(&img, ev, at, "alice", h_wall_ms());
	rc = shmb_session_restore(c, &img);
	cr_assert_eq(rc, SHMB_EBROKER, "fault point %s did not fire: %s", point, shmb_err_name(rc));
	st = h_broker_wait_exit(b, 10000);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: not killed there", point);
	/* Nothing is visible while no broker runs: the record is LINKING. */
	shmb_session *s;
	if (!whole)
		H_EXPECT_RC(shmb_session_open(c, img.sid, "acme", "alice", &s), SHMB_ENOENT);
	h_broker_restart(b);
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify after a crash at %s: %s%s", point, r.out, r.err);
	h_result_free(&r);
	if (whole) {
		/* Linked before the crash: adoption completed it, events and attributes. */
		cr_expect_eq(n_sessions(b->name), 1);
		expect_ref_session(c, &img);
		H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_ECONFLICT);
	} else {
		/* Unreachable at the crash: adoption undid it; the restore can be done again. */
		cr_expect_eq(n_sessions(b->name), 0, "after a crash at %s", point);
		H_EXPECT_RC(shmb_session_open(c, img.sid, "acme", "alice", &s), SHMB_ENOENT);
		/* A create takes the record it had (the lowest free one) and finds none of the
		 * attributes or events the interrupted restore wrote there. */
		char sid[SHMB_SID_LEN + 1];
		H_OK(shmb_session_create(c, "acme", NULL, sid));
		H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
		cJSON *j = h_shmctl_json(b->name, "show", sid, NULL);
		cr_expect_eq(h_json_num(j, "index"), 0, "the create did not reuse record 0");
		cJSON_Delete(j);
		char buf[64];
		for (size_t i = 0; i < img.n_attrs; i++)
			H_EXPECT_RC(shmb_attr_get(s, img.attrs[i].key, buf, sizeof buf, NULL),
				    SHMB_ENOENT);
		shmb_session_info info;
		H_OK(shmb_session_stat(s, &info));
		cr_expect_eq(info.last_event_id, 0);
		shmb_session_close(s);
		H_EXPECT_RC(shmb_session_restore(c, &img), 1);
		expect_ref_session(c, &img);
	}
	h_detach(c);
}

H_TEST(restore, killed_after_the_events_before_the_attributes)
{
	crash_restore("broker.restore.events", 0);
}

H_TEST(restore, killed_after_the_attributes_before_linking)
{
	crash_restore("broker.restore.attrs", 0);
}

H_TEST(restore, killed_once_linked_before_live)
{
	crash_restore("broker.link.linked", 1);
}
#endif
