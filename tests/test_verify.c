/* test_verify.c - shmctl verify on healthy and deliberately damaged segments.
 *
 * With the broker stopped (the segment stays), the test maps /dev/shm/shmb.<name> read-write
 * and breaks one thing at a time: the header magic, the layout version, a region offset, a bucket
 * head out of range, a chain cycle, a record state out of range. verify must exit 4 and name the problem,
 * and neither verify nor the other inspection commands may ever crash, also on random damage.
 * A broker must refuse to adopt a damaged segment with a clear message. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "index.h"
#include "layout.h"
#include "seg.h"
#include "sid.h"

TestSuite(verify, .init = h_setup, .fini = h_teardown, .timeout = 120);

struct rawmap {
	int fd;
	uint8_t *base;
	size_t size;
	struct shmb_seg seg; /* validated view (taken before the damage) */
};

static void raw_open(struct rawmap *m, const struct h_broker *b)
{
	m->fd = open(b->shm_path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(m->fd, 0, "open %s: %s", b->shm_path, strerror(errno));
	struct stat st;
	cr_assert_eq(fstat(m->fd, &st), 0);
	m->size = (size_t)st.st_size;
	m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	cr_assert_neq(m->base, MAP_FAILED, "mmap: %s", strerror(errno));
	char why[256] = "";
	int rc = seg_map(m->fd, 1, &m->seg, why, sizeof why);
	cr_assert_eq(rc, 0, "seg_map before damage: %s (%s)", shmb_strerror(rc), why);
}

static void raw_close(struct rawmap *m)
{
	seg_unmap(&m->seg);
	munmap(m->base, m->size);
	close(m->fd);
}

/* A broker with a few sessions, stopped cleanly: the segment is left for us. Returns it. */
static struct h_broker *stopped_broker_with_sessions(char sids[][SHMB_SID_LEN + 1], int n)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "16"));
	shmb_client *c = h_attach(b->name);
	for (int i = 0; i < n; i++) {
		int rc = shmb_session_create(c, i % 2 ? "acme" : "globex", NULL, sids[i]);
		cr_assert_eq(rc, 0, "create: %s", shmb_strerror(rc));
	}
	h_detach(c);
	h_broker_stop(b);
	cr_assert_eq(access(b->shm_path, F_OK), 0, "the segment did not outlive the broker");
	return b;
}

/* Runs verify (human and --json); asserts no crash, exit want, and that the output names one of
 * the words (NULL-terminated list). */
static void expect_verify(const struct h_broker *b, int want, const char *const *words)
{
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, want, "shmctl verify: exit %d, want %d\nstdout:\n%s\nstderr:\n%s",
		     r.status, want, r.out, r.err);
	if (words) {
		int named = 0;
		for (int i = 0; words[i]; i++)
			named |= h_contains(r.out, words[i]) || h_contains(r.err, words[i]);
		cr_expect(named, "shmctl verify does not name the problem (%s...):\n%s%s", words[0],
			  r.out, r.err);
	}
	h_result_free(&r);

	h_shmctl(&r, b->name, "verify", "--json", NULL);
	cr_expect_eq(r.status, want, "shmctl verify --json: exit %d, want %d\n%s%s", r.status, want,
		     r.out, r.err);
	cJSON *j = cJSON_Parse(r.out);
	cr_expect_not_null(j, "shmctl verify --json printed no JSON document:\n%s", r.out);
	if (j && words) {
		char *txt = cJSON_PrintUnformatted(j);
		int named = 0;
		for (int i = 0; words[i]; i++)
			named |= h_contains(txt, words[i]);
		cr_expect(named, "verify --json does not name the problem (%s...): %s", words[0],
			  txt);
		free(txt);
	}
	cJSON_Delete(j);
	h_result_free(&r);
}

/* The other inspection commands must not crash on the damage either (any exit status). */
static void inspect_no_crash(const struct h_broker *b, const char *sid)
{
	const char *cmds[][3] = {
		{ "status", NULL }, { "sessions", NULL }, { "workers", NULL }, { "show", sid, NULL }
	};
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
		struct h_result r;
		h_shmctl(&r, b->name, cmds[i][0], cmds[i][1], NULL);
		h_result_free(&r);
		h_shmctl(&r, b->name, cmds[i][0], cmds[i][1] ? cmds[i][1] : "--json",
			 cmds[i][1] ? "--json" : NULL, NULL);
		h_result_free(&r);
	}
}

static struct shmb_session_rec *rec_of(struct rawmap *m, const char *sid)
{
	uint8_t raw[SHMB_SID_BYTES];
	cr_assert_eq(sid_parse(sid, raw), 0);
	int64_t idx = idx_find(&m->seg, raw);
	cr_assert_geq(idx, 0, "session %s not found in the raw segment", sid);
	return seg_rec(&m->seg, (uint32_t)idx);
}

H_TEST(verify, healthy_segment_verifies_clean)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "16"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	for (int i = 0; i < 10; i++) {
		H_OK(shmb_session_create(c, "acme", i % 3 ? "p" : NULL, sid));
		if (i % 2)
			H_OK(shmb_session_delete(c, sid, "acme", i % 3 ? "p" : NULL));
	}
	expect_verify(b, 0, NULL); /* live broker, attached client */
	h_detach(c);
	h_broker_stop(b);
	expect_verify(b, 0, NULL); /* broker stopped: verify maps the segment itself */
}

H_TEST(verify, damaged_magic)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	((struct shmb_seg_header *)m.base)->magic = UINT64_C(0x0123456789abcdef);
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("magic"));
	inspect_no_crash(b, sids[0]);
}

H_TEST(verify, damaged_layout_version)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	((struct shmb_seg_header *)m.base)->layout_major = 99;
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("version"));
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect(strstr(r.out, "99") || strstr(r.err, "99"),
		  "verify does not show the segment's version 99:\n%s%s", r.out, r.err);
	h_result_free(&r);
	inspect_no_crash(b, sids[0]);

	/* A broker refuses to adopt it, naming both versions. */
	int st = 0;
	cr_assert_eq(h_broker_spawn(b, &st), -1, "a broker adopted a segment of layout 99");
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0, "refusal must be a non-zero exit");
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "version") && strstr(log, "99"),
		  "the broker's refusal does not name the versions:\n%s", log);
	free(log);
}

/* A region offset in the header that disagrees with the configuration: misaligned (inside the
 * records) or past the end of the segment. verify exits 4 naming the region and the offset; a
 * broker refuses to adopt it, saying which region is wrong. */
H_TEST(verify, damaged_region_offset)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	struct shmb_region *sessions =
		&((struct shmb_seg_header *)m.base)->regions[SHMB_REGION_SESSIONS];
	const uint64_t good = sessions->off;
	const uint64_t bad[] = { good + 8,
				 ((struct shmb_seg_header *)m.base)->segment_size + SHMB_PAGE };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		sessions->off = bad[i];
		char off[32];
		snprintf(off, sizeof off, "%llu", (unsigned long long)bad[i]);
		expect_verify(b, 4, H_ARGS(off));
		expect_verify(b, 4, H_ARGS("region"));
		inspect_no_crash(b, sids[0]);

		int st = 0;
		cr_assert_eq(h_broker_spawn(b, &st), -1, "a broker adopted sessions at offset %s",
			     off);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0, "refusal must be a non-zero exit");
		char *log = h_broker_log(b);
		cr_expect(h_contains(log, "region") && strstr(log, off),
			  "the broker's refusal does not name the region and its offset %s:\n%s",
			  off, log);
		free(log);
	}
	sessions->off = good;
	raw_close(&m);
	expect_verify(b, 0, NULL); /* repaired: nothing else was touched */
}

H_TEST(verify, bucket_head_out_of_range)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	struct shmb_session_rec *r = rec_of(&m, sids[1]);
	uint32_t *head = seg_bucket(&m.seg, seg_bucket_of(&m.seg, r->hash));
	cr_assert_not_null(head);
	*head = m.seg.cfg.max_sessions + 7; /* link = index + 1: out of range */
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("bucket", "range", "link"));
	inspect_no_crash(b, sids[1]);

	/* A lookup through the damaged bucket fails cleanly instead of reading out of bounds. */
	int st = 0;
	if (h_broker_spawn(b, &st) == 0) {
		shmb_client *c = h_attach(b->name);
		shmb_session *s = NULL;
		int rc = shmb_session_open(c, sids[1], "acme", NULL, &s);
		/* 0 only if the adopting broker rebuilt the index; then it must be the right one. */
		cr_expect(rc == SHMB_ECORRUPT || rc == SHMB_ENOENT || rc == 0,
			  "open through a damaged bucket: %s", shmb_err_name(rc));
		if (rc == 0) {
			shmb_session_info info;
			H_OK(shmb_session_stat(s, &info));
			cr_expect_str_eq(info.sid, sids[1]);
			shmb_session_close(s);
		}
		h_detach(c);
	}
}

H_TEST(verify, chain_cycle)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	struct shmb_session_rec *r0 = rec_of(&m, sids[0]);
	struct shmb_session_rec *r1 = rec_of(&m, sids[1]);
	uint32_t l0 = seg_rec_index(&m.seg, r0) + 1, l1 = seg_rec_index(&m.seg, r1) + 1;
	/* r0 -> r1 -> r0: a cycle reachable from r0's bucket. */
	r0->next = l1;
	r1->next = l0;
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("cycle", "loop", "chain"));
	inspect_no_crash(b, sids[0]);

	/* A lookup walking the cycle terminates (bounded walk). */
	int st = 0;
	if (h_broker_spawn(b, &st) == 0) {
		shmb_client *c = h_attach(b->name);
		char unknown[SHMB_SID_LEN + 1];
		/* Find a sid hashing to r0's bucket so the lookup walks the cycle. */
		struct shmb_seg seg;
		char why[128];
		cr_assert_eq(seg_open_name(b->name, 0, &seg, why, sizeof why), 0, "%s", why);
		uint8_t raw0[SHMB_SID_BYTES];
		sid_parse(sids[0], raw0);
		uint32_t want = seg_bucket_of(&seg, sid_hash(raw0));
		uint8_t raw[SHMB_SID_BYTES];
		do {
			h_random_sid(unknown);
			sid_parse(unknown, raw);
		} while (seg_bucket_of(&seg, sid_hash(raw)) != want);
		seg_unmap(&seg);
		shmb_session *s = NULL;
		int rc = shmb_session_open(c, unknown, "acme", NULL, &s);
		cr_expect(rc == SHMB_ECORRUPT || rc == SHMB_ENOENT,
			  "lookup through a cyclic chain: %s", shmb_err_name(rc));
		h_detach(c);
	}
}

H_TEST(verify, self_cycle)
{
	char sids[2][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 2);
	struct rawmap m;
	raw_open(&m, b);
	struct shmb_session_rec *r = rec_of(&m, sids[0]);
	r->next = seg_rec_index(&m.seg, r) + 1;
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("cycle", "loop", "chain"));
}

H_TEST(verify, record_state_out_of_range)
{
	char sids[4][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 4);
	struct rawmap m;
	raw_open(&m, b);
	rec_of(&m, sids[2])->state = 77;
	raw_close(&m);
	expect_verify(b, 4, H_ARGS("state"));
	inspect_no_crash(b, sids[2]);
}

H_TEST(verify, truncated_segment)
{
	char sids[2][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 2);
	int fd = open(b->shm_path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	struct stat st;
	fstat(fd, &st);
	cr_assert_eq(ftruncate(fd, st.st_size / 2), 0);
	close(fd);
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect(r.status == 3 || r.status == 4, "verify of a truncated segment: exit %d\n%s%s",
		  r.status, r.out, r.err);
	h_result_free(&r);
	inspect_no_crash(b, sids[0]);
}

H_TEST(verify, no_segment)
{
	struct h_broker *b = h_broker_new(NULL); /* never started */
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 3, "verify without a segment: exit %d\n%s%s", r.status, r.out,
		     r.err);
	h_result_free(&r);
}

H_TEST(verify, random_damage_never_crashes, .timeout = 240)
{
	char sids[8][SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_broker_with_sessions(sids, 8);
	struct rawmap m;
	raw_open(&m, b);
	uint8_t *pristine = malloc(m.size);
	cr_assert_not_null(pristine);
	memcpy(pristine, m.base, m.size);
	/* The interesting part: header, counters, workers, readers, buckets, the records. */
	uint64_t hot =
		m.seg.regions[SHMB_REGION_SESSIONS].off + m.seg.regions[SHMB_REGION_SESSIONS].size;
	if (hot > m.size)
		hot = m.size;
	unsigned seed = 12345;
	int damaged = 0;
	for (int iter = 0; iter < 40; iter++) {
		memcpy(m.base, pristine, m.size);
		int flips = 1 + rand_r(&seed) % 8;
		for (int k = 0; k < flips; k++) {
			uint64_t off;
			if (rand_r(&seed) % 3 == 0)
				off = (uint64_t)rand_r(&seed) % SHMB_PAGE; /* the header */
			else
				off = (uint64_t)rand_r(&seed) % hot;
			m.base[off] = (uint8_t)rand_r(&seed);
		}
		struct h_result r;
		h_shmctl(&r, b->name, "verify", NULL);
		cr_assert(r.status == 0 || r.status == 3 || r.status == 4,
			  "iteration %d: verify exit %d\n%s%s", iter, r.status, r.out, r.err);
		damaged += r.status == 4;
		h_result_free(&r);
		inspect_no_crash(b, sids[iter % 8]);
	}
	cr_log_info("random damage: verify reported damage in %d of 40 runs", damaged);
	memcpy(m.base, pristine, m.size);
	free(pristine);
	raw_close(&m);
	expect_verify(b, 0, NULL);
}
