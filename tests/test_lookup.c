/* test_lookup.c - layout 2.0's one-line lookup (issue 11): shmb_session_open decides on record
 * line 0 alone (the id, state, generation, the keyed binding hash, expires_at_ms, the touch), and
 * shmctl verify reports a record whose line-0 copies (binding, expires_at_ms) disagree with the
 * fields they are computed from (tenant, principal, created_at_ms + absolute_ttl_ms).
 *
 * The line-0 test poisons every other line a lookup used to read (lines 1, 4 and 5: identity,
 * tenant, principal) in a live broker's segment, then opens: the right binding still opens, a
 * wrong one is still SHMB_EPERM, and an expires_at_ms in the past is SHMB_ENOENT although
 * created_at_ms and absolute_ttl_ms say otherwise. The lines are restored before teardown. */
#include <errno.h>
#include <string.h>

#include "harness.h"
#include "index.h"
#include "layout.h"
#include "seg.h"
#include "sid.h"

TestSuite(lookup, .init = h_setup, .fini = h_teardown, .timeout = 60);

static struct shmb_session_rec *rec_of(struct shmb_seg *seg, const char *sid)
{
	uint8_t raw[SHMB_SID_BYTES];
	cr_assert_eq(sid_parse(sid, raw), 0);
	int64_t idx = idx_find(seg, raw);
	cr_assert_geq(idx, 0, "session %s not found in the segment", sid);
	return seg_rec(seg, (uint32_t)idx);
}

static int open_rc(shmb_client *c, const char *sid, const char *tenant, const char *principal)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, principal, &s);
	shmb_session_close(s);
	return rc;
}

H_TEST(lookup, open_reads_record_line_0_only)
{
	struct h_broker *b = h_broker_start(H_ARGS("--absolute-ttl-ms", "3600000"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	struct shmb_seg seg;
	char why[256] = "";
	int rc = seg_open_name(b->name, 1, &seg, why, sizeof why);
	cr_assert_eq(rc, 0, "seg_open_name: %s (%s)", shmb_strerror(rc), why);
	struct shmb_session_rec *r = rec_of(&seg, sid);

	static const size_t lines[] = { 1, 4, 5 };
	uint8_t saved[3][SHMB_CACHELINE];
	for (size_t i = 0; i < 3; i++) {
		uint8_t *l = (uint8_t *)r + lines[i] * SHMB_CACHELINE;
		memcpy(saved[i], l, SHMB_CACHELINE);
		memset(l, 0xa5, SHMB_CACHELINE);
	}
	cr_expect_eq(open_rc(c, sid, "acme", "alice"), 0,
		     "open with the right binding read a poisoned line (1, 4 or 5)");
	cr_expect_eq(open_rc(c, sid, "acme", "bob"), SHMB_EPERM);
	cr_expect_eq(open_rc(c, sid, "acme", NULL), SHMB_EPERM);
	cr_expect_eq(open_rc(c, sid, "acmf", "alice"), SHMB_EPERM);

	int64_t exp = r->expires_at_ms;
	/* Line 0 decides expiry, not created + ttl. A second ago: open reads a coarse clock. */
	r->expires_at_ms = h_wall_ms() - 1000;
	cr_expect_eq(open_rc(c, sid, "acme", "alice"), SHMB_ENOENT);
	r->expires_at_ms = exp;
	for (size_t i = 0; i < 3; i++)
		memcpy((uint8_t *)r + lines[i] * SHMB_CACHELINE, saved[i], SHMB_CACHELINE);
	cr_expect_eq(open_rc(c, sid, "acme", "alice"), 0);
	seg_unmap(&seg);
}

/* A stopped broker's segment with one session; r points at its record in seg (read-write). */
static struct h_broker *stopped_with_session(struct shmb_seg *seg, char sid[SHMB_SID_LEN + 1],
					     struct shmb_session_rec **r)
{
	struct h_broker *b = h_broker_start(H_ARGS("--absolute-ttl-ms", "3600000"));
	shmb_client *c = h_attach(b->name);
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	h_detach(c);
	h_broker_stop(b);
	char why[256] = "";
	int rc = seg_open_name(b->name, 1, seg, why, sizeof why);
	cr_assert_eq(rc, 0, "seg_open_name: %s (%s)", shmb_strerror(rc), why);
	*r = rec_of(seg, sid);
	return b;
}

static void expect_verify(const struct h_broker *b, int want, const char *word)
{
	struct h_result res;
	h_shmctl(&res, b->name, "verify", NULL);
	cr_expect_eq(res.status, want, "shmctl verify: exit %d, want %d\n%s%s", res.status, want,
		     res.out, res.err);
	if (word)
		cr_expect(h_contains(res.out, word) || h_contains(res.err, word),
			  "verify does not name '%s':\n%s%s", word, res.out, res.err);
	h_result_free(&res);
}

H_TEST(lookup, verify_flags_a_wrong_binding_hash)
{
	struct shmb_seg seg;
	struct shmb_session_rec *r;
	char sid[SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_with_session(&seg, sid, &r);
	expect_verify(b, 0, NULL);
	r->binding ^= 1;
	expect_verify(b, 4, "binding hash");
	r->binding ^= 1;
	r->tenant[0] = 'b'; /* the bytes changed, the hash did not */
	expect_verify(b, 4, "binding hash");
	r->tenant[0] = 'a';
	expect_verify(b, 0, NULL);
	seg_unmap(&seg);
}

H_TEST(lookup, verify_flags_a_wrong_expiry)
{
	struct shmb_seg seg;
	struct shmb_session_rec *r;
	char sid[SHMB_SID_LEN + 1];
	struct h_broker *b = stopped_with_session(&seg, sid, &r);
	cr_expect_eq(r->expires_at_ms, r->created_at_ms + 3600000);
	r->expires_at_ms += 1000;
	expect_verify(b, 4, "expires_at_ms");
	r->expires_at_ms = INT64_MAX; /* "never", but absolute_ttl_ms says an hour */
	expect_verify(b, 4, "expires_at_ms");
	r->expires_at_ms = r->created_at_ms + 3600000;
	expect_verify(b, 0, NULL);
	seg_unmap(&seg);
}

/* The thread's one-entry binding memo (client/session.c, binding_of) must never answer for
 * another binding: after a successful open, every near miss on the same thread is still
 * SHMB_EPERM, a session without principal of the same tenant still opens, and the first binding
 * opens again afterwards (each of these switches the memo). */
H_TEST(lookup, binding_memo_never_answers_for_another_binding)
{
	struct h_broker *b = h_broker_start(NULL);
	shmb_client *c = h_attach(b->name);
	char with[SHMB_SID_LEN + 1], without[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", with));
	H_OK(shmb_session_create(c, "acme", NULL, without));
	static const char *const near[][2] = {
		{ "acme", "alic" },  { "acme", "alicf" }, { "acme", "alice " }, { "acm", "alice" },
		{ "acmf", "alice" }, { "acme", "" },      { "", "alice" },      { "acmealice", "" },
	};
	for (int round = 0; round < 2; round++) {
		cr_expect_eq(open_rc(c, with, "acme", "alice"), 0);
		for (size_t i = 0; i < sizeof near / sizeof near[0]; i++) {
			int rc = open_rc(c, with, near[i][0], near[i][1]);
			cr_expect(rc == SHMB_EPERM || rc == SHMB_EINVAL,
				  "(%s, %s) after (acme, alice): %s", near[i][0], near[i][1],
				  shmb_strerror(rc));
			cr_expect_eq(open_rc(c, with, "acme", "alice"), 0);
		}
		cr_expect_eq(open_rc(c, with, "acme", NULL), SHMB_EPERM);
		cr_expect_eq(open_rc(c, without, "acme", NULL), 0);
		cr_expect_eq(open_rc(c, without, "acme", "alice"), SHMB_EPERM);
		cr_expect_eq(open_rc(c, with, "acme", "alice"), 0);
	}
}
