/* mirror_sync.c - shmb-mirror's pass over the segment: what changed in each session since Redis
 * last acknowledged it, written with the fenced script of mirror_redis.c, pipelined.
 *
 * Reading. The mirror maps the segment read-only and takes no reader slot, no session handle and
 * no subscription: opening a session would touch it (keeping it alive) and a subscriber stops
 * its inactivity expiry. Like shmctl, it guards every read with the record's generation, which
 * the broker bumps before it clears a recycled record's ring and attributes (broker/reclaim.c):
 * a copy made while the generation held belongs to the session seen. Events are read with the
 * validated copies of common/evring.h, attributes with the optimistic read of common/attr.h.
 * Publishers never wait for the mirror: it only loads from shared memory.
 *
 * State per record index (struct ms_sess), advanced only by what Redis acknowledged:
 *   LEARN     first sight (or after a reconnect): HMGET owner, mirrored_id (pipelined for all
 *             such sessions at once) tells where to resume and whether this node may write
 *   SYNCED    each pass writes events after mirrored_id (at most --batch), changed attributes
 *             (entry words changed since written), the touch (at most every --touch-interval-ms)
 *             and the keys' expiry; the first write creates the record and replaces the
 *             attribute hash
 *   NOTOWNER  Redis names another owner: nothing is written; asked again every few seconds
 * A session Redis holds more ids of than this one handed out (the same id restored here from an
 * older image) has another history: its first write replaces Redis's copy.
 * A write refused as "no record" (Redis lost it: restarted without persistence, flushed, or the
 * key expired) sends the session back to LEARN, which re-sends what the ring still holds. Ids
 * the ring evicted before the mirror copied them are written to the record's `lost` field and
 * counted, never skipped silently.
 *
 * The end. A record seen UNLINKING or RETIRED with the generation tracked ends its session for
 * the reason the broker stored (retire_reason): the last events are flushed (the ring is intact
 * until the recycle), then state deleted/expired and a short expiry. A record recycled before
 * the mirror saw it retired (the generation moved on) gets its end written from what the mirror
 * knew, the reason guessed from its TTLs, and its unread ids as lost. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "evring.h"
#include "index.h"
#include "mirror.h"
#include "shmb.h"
#include "sid.h"

enum { S_NONE = 0, S_LEARN, S_SYNCED, S_NOTOWNER };

#define RECHECK_MS 2000         /* NOTOWNER: ask Redis again after */
#define CYCLE_BYTES (16u << 20) /* payload bytes appended per pass, at most */
#define LEARN_MAX 4096          /* sessions learnt per pass, at most */
#define ARENA_MIN (4u << 20)    /* one session's write: payloads and attribute values */
#define NUM_LEN 24              /* a decimal number with its NUL */
#define ATTR_HOT_MS 100         /* entry words compared every pass this long after a change */
#define ATTR_RESCAN_MS 1000     /* and in any case this often */
#define RETRY_MIN_MS 100        /* a refused session waits this, doubling per refusal, */
#define RETRY_MAX_MS 5000       /* up to this: a Redis refusing everything is not hammered */

struct ms_sess {
	uint32_t gen;
	uint8_t st;
	uint8_t first;      /* the next write creates the record, sets it live, replaces attrs */
	uint8_t ending;     /* retired: the next write is the last */
	uint8_t end_reason; /* SHMB_RETIRE_* */
	uint8_t reset;      /* the first write replaces Redis's copy (another history) */
	char sid[SHMB_SID_LEN + 1];
	uint64_t mirrored;       /* Redis holds the events up to this id */
	uint64_t head;           /* next_id when last read */
	uint64_t peek;           /* > mirrored: the ids mirrored+1..peek-1 are continuation slots,
			       * the next event (not there when last looked) is at peek */
	int64_t head_mono;       /* when */
	int64_t touch_sent;      /* last_accessed_at_ms last written */
	int64_t touch_mono;      /* when */
	int64_t recheck_mono;    /* NOTOWNER: learn again at */
	int64_t expires_at;      /* the session's own expiry when last read (0: never) */
	int64_t expire_sent;     /* the keys' expiry last written to all three */
	int64_t retry_mono;      /* refused: nothing sent for this session before */
	uint32_t refusals;       /* consecutive writes (or reads) Redis refused */
	uint64_t *attr_seen;     /* [attr_keys] entry words as written; [attr_keys..2*) pending */
	uint64_t attr_fp;        /* sum of the attribute bitmap words when last looked */
	int64_t attr_scan_until; /* entry words compared every pass until then */
	int64_t attr_scan_next;  /* and at least at this time (the backstop) */
};

/* One write in flight: what to record when its reply says it was applied. */
struct flight {
	uint32_t idx, gen;
	uint64_t upto;      /* last event id sent (0: none) */
	size_t ts_off, nts; /* its events' ts_ms in the pass's ts array */
	int64_t touch;      /* last_accessed_at_ms sent */
	int64_t expire_at;  /* the expiry sent to all keys, or INT64_MIN */
	uint64_t lost;      /* ids declared lost by this write */
	int orphan;         /* an end for a record already recycled: nothing to update */
};

/* A vector of command arguments whose numbers live in a fixed arena (stable addresses until
 * the command is appended: hiredis copies it then). */
struct args {
	const char **v;
	size_t *l;
	size_t n, cap;
	char *num;
	size_t num_used, num_cap;
	uint8_t *data; /* payloads and attribute values */
	size_t data_used, data_cap;
};

static struct {
	struct args a;
	struct ms_sess *orph; /* sessions recycled before their end was seen, to end in Redis */
	size_t norph, orphcap;
	struct flight *fl;
	size_t nfl, flcap;
	int64_t *ts;
	size_t nts, tscap;
} pass;

static int args_grow(struct args *a, size_t more)
{
	if (a->n + more <= a->cap)
		return 0;
	size_t cap = a->cap ? a->cap : 256;
	while (cap < a->n + more)
		cap *= 2;
	const char **v = realloc(a->v, cap * sizeof *v);
	if (!v)
		return -1;
	a->v = v;
	size_t *l = realloc(a->l, cap * sizeof *l);
	if (!l)
		return -1;
	a->l = l;
	a->cap = cap;
	return 0;
}

static void arg(struct args *a, const void *s, size_t len)
{
	a->v[a->n] = s;
	a->l[a->n++] = len;
}

static void arg_str(struct args *a, const char *s)
{
	arg(a, s, strlen(s));
}

/* A decimal number; the caller reserved room (args_grow and the arena's size). */
static void arg_num(struct args *a, int64_t x)
{
	char *p = a->num + a->num_used;
	int n = snprintf(p, NUM_LEN, "%" PRId64, x);
	a->num_used += (size_t)n + 1;
	arg(a, p, (size_t)n);
}

static const char *state_name(uint32_t reason)
{
	return reason == SHMB_RETIRE_EXPIRED ? "expired" : "deleted";
}

int ms_sync_init(struct ms_mirror *mm)
{
	const struct shmb_seg_config *cfg = &mm->seg.cfg;
	mm->sess = calloc(cfg->max_sessions, sizeof *mm->sess);
	free(mm->evbuf);
	mm->evbuf = malloc(cfg->max_event_bytes ? cfg->max_event_bytes : 1);
	struct args *a = &pass.a;
	a->num_cap = ((size_t)mm->batch * 5 + 64 + (size_t)cfg->attr_keys * 2) * NUM_LEN;
	a->data_cap = ARENA_MIN;
	size_t attrs = (size_t)cfg->attr_keys * (SHMB_ATTR_MAX + SHMB_ATTR_KEY_CAP + 1);
	if (a->data_cap < 2 * (size_t)cfg->max_event_bytes + attrs)
		a->data_cap = 2 * (size_t)cfg->max_event_bytes + attrs;
	free(a->num);
	free(a->data);
	a->num = malloc(a->num_cap);
	a->data = malloc(a->data_cap);
	if (!mm->sess || !a->num || !a->data || !mm->evbuf)
		return -1;
	return 0;
}

static void untrack(struct ms_mirror *mm, uint32_t idx)
{
	struct ms_sess *t = &mm->sess[idx];
	free(t->attr_seen);
	*t = (struct ms_sess){ 0 };
	(void)mm;
}

void ms_sync_fini(struct ms_mirror *mm)
{
	if (mm->sess)
		for (uint32_t i = 0; i < mm->seg.cfg.max_sessions; i++)
			untrack(mm, i);
	free(mm->sess);
	mm->sess = NULL;
	free(mm->evbuf);
	mm->evbuf = NULL;
	free(pass.a.v);
	free(pass.a.l);
	free(pass.a.num);
	free(pass.a.data);
	free(pass.fl);
	free(pass.ts);
	free(pass.orph);
	memset(&pass, 0, sizeof pass);
}

void ms_sync_reset(struct ms_mirror *mm)
{
	for (uint32_t i = 0; mm->sess && i < mm->seg.cfg.max_sessions; i++) {
		struct ms_sess *t = &mm->sess[i];
		if (t->st != S_NONE) {
			t->st = S_LEARN;
			t->first = 1;
		}
	}
}

/* The session's own expiry (wall-clock ms; 0: never): the earlier TTL deadline, inactivity
 * counting only while nobody is subscribed (as the broker's sweeper does). */
static int64_t expiry_of(const struct shmb_session_rec *r)
{
	int64_t at = uatomic_read(&r->expires_at_ms);
	if (at == INT64_MAX)
		at = 0;
	uint64_t inact = uatomic_read(&r->inactivity_ttl_ms);
	int subscribed = 0;
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		subscribed |= uatomic_read(&r->subscribers[i]) != 0;
	if (inact && !subscribed && inact < INT64_MAX / 2) {
		int64_t in = uatomic_read(&r->last_accessed_at_ms) + (int64_t)inact;
		if (!at || in < at)
			at = in;
	}
	return at;
}

static uint64_t *attr_pending(const struct ms_mirror *mm, struct ms_sess *t)
{
	return t->attr_seen + mm->seg.cfg.attr_keys;
}

/* First sight of a LIVE record: its id, if the copy is consistent. */
static void track(struct ms_mirror *mm, uint32_t idx, uint32_t gen)
{
	const struct shmb_session_rec *r = seg_rec(&mm->seg, idx);
	struct ms_sess *t = &mm->sess[idx];
	uint8_t sid[SHMB_SID_BYTES];
	/* Pairs with the broker's release store of LIVE: the id was written before it. */
	cmm_smp_rmb();
	memcpy(sid, r->sid, sizeof sid);
	cmm_smp_rmb(); /* the copy before the re-check (seqlock read side) */
	if (uatomic_read(&r->gen) != gen || uatomic_read(&r->state) != SHMB_REC_LIVE)
		return;
	*t = (struct ms_sess){ .gen = gen, .st = S_LEARN, .first = 1 };
	sid_format(sid, t->sid);
	if (mm->seg.cfg.attr_keys) {
		t->attr_seen = calloc(2 * (size_t)mm->seg.cfg.attr_keys, sizeof *t->attr_seen);
		if (!t->attr_seen) {
			ms_log(MS_ERROR, "out of memory tracking session %s", t->sid);
			*t = (struct ms_sess){ 0 };
		}
	}
}

/* Redis answered a session's write or read with an error (OOM, READONLY, WRONGTYPE, a script
 * error on a malformed record, NOPERM): counted, logged (rate limited), and the session waits
 * before it is sent again; what was refused is sent whole then (nothing moved in Redis). */
static void refused(struct ms_mirror *mm, struct ms_sess *t, const char *what, const char *why)
{
	mm->st.redis_errors++;
	mm->st.refused++;
	uint32_t k = t->refusals < 6 ? t->refusals : 6;
	int64_t wait = (int64_t)RETRY_MIN_MS << k;
	t->refusals++;
	t->retry_mono = mr_mono_ms() + (wait < RETRY_MAX_MS ? wait : RETRY_MAX_MS);
	snprintf(mm->last_error, sizeof mm->last_error, "session %s: %s refused: %s", t->sid, what,
		 why);
	ms_log(MS_WARNING, "session %s: %s refused: %s (retrying in %" PRId64 " ms)", t->sid, what,
	       why, t->retry_mono - mr_mono_ms());
}

static int flight_add(const struct flight *f)
{
	if (pass.nfl == pass.flcap) {
		size_t cap = pass.flcap ? pass.flcap * 2 : 256;
		struct flight *n = realloc(pass.fl, cap * sizeof *n);
		if (!n)
			return -1;
		pass.fl = n;
		pass.flcap = cap;
	}
	pass.fl[pass.nfl++] = *f;
	return 0;
}

static int ts_add(int64_t ts)
{
	if (pass.nts == pass.tscap) {
		size_t cap = pass.tscap ? pass.tscap * 2 : 4096;
		int64_t *n = realloc(pass.ts, cap * sizeof *n);
		if (!n)
			return -1;
		pass.ts = n;
		pass.tscap = cap;
	}
	pass.ts[pass.nts++] = ts;
	return 0;
}

/* The fixed part of a write; the counts are patched in by the caller (their slots). */
static void write_head(struct ms_mirror *mm, const char *sid, int create, int64_t expire_at,
		       int expire_all, uint64_t claimed, const char *lost, const char *state,
		       size_t *slots)
{
	struct args *a = &pass.a;
	static char keys[3][MR_KEY_MAX];
	a->n = 0;
	a->num_used = 0;
	a->data_used = 0;
	mr_key(&mm->redis, 's', sid, keys[0], sizeof keys[0]);
	mr_key(&mm->redis, 'e', sid, keys[1], sizeof keys[1]);
	mr_key(&mm->redis, 'a', sid, keys[2], sizeof keys[2]);
	for (int i = 0; i < 3; i++)
		arg_str(a, keys[i]);
	arg_num(a, mm->node);
	arg_str(a, create == 2 ? "2" : create ? "1" : "0");
	arg_num(a, expire_at);
	arg_num(a, mm->seg.cfg.ring_events);
	arg_num(a, (int64_t)claimed);
	arg_str(a, lost);
	arg_str(a, state);
	for (int i = 0; i < 4; i++) { /* nfields, nevents, nset, ndel: patched */
		slots[i] = a->n;
		arg_str(a, "0");
	}
	arg_str(a, "0"); /* attr_replace: patched */
	slots[4] = a->n - 1;
	arg_num(a, MR_GRACE_MS);
	arg_str(a, expire_all ? "1" : "0");
}

static void patch(size_t slot, int64_t x)
{
	struct args *a = &pass.a;
	char *p = a->num + a->num_used;
	int n = snprintf(p, NUM_LEN, "%" PRId64, x);
	a->num_used += (size_t)n + 1;
	a->v[slot] = p;
	a->l[slot] = (size_t)n;
}

/* An end for a record recycled before the mirror saw it retired. */
static void write_orphan_end(struct ms_mirror *mm, struct ms_sess *t)
{
	char lost[48] = "";
	uint64_t nlost = 0;
	if (t->head > t->mirrored) {
		nlost = t->head - t->mirrored;
		snprintf(lost, sizeof lost, "%" PRIu64 "-%" PRIu64, t->mirrored + 1, t->head);
	}
	int64_t now = mr_wall_ms();
	uint32_t reason = t->expires_at && t->expires_at <= now + 1000 ? SHMB_RETIRE_EXPIRED
								       : SHMB_RETIRE_DELETED;
	size_t slots[5];
	if (args_grow(&pass.a, MR_W_FIXED + 4) < 0)
		return;
	write_head(mm, t->sid, 0, -1, 1, t->head, lost, state_name(reason), slots);
	if (mr_append_eval(&mm->redis, MR_SCRIPT_WRITE, 3, (int)pass.a.n, pass.a.v, pass.a.l) < 0)
		return;
	struct flight f = { .orphan = 1, .lost = nlost };
	if (flight_add(&f) < 0)
		ms_log(MS_ERROR, "out of memory");
}

/* Scan: follow every record's life. */
static void scan(struct ms_mirror *mm)
{
	const struct shmb_seg *seg = &mm->seg;
	int64_t mono = mr_mono_ms();
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		const struct shmb_session_rec *r = seg_rec(seg, idx);
		struct ms_sess *t = &mm->sess[idx];
		uint32_t state = uatomic_read(&r->state);
		uint32_t gen = uatomic_read(&r->gen);
		if (t->st != S_NONE && t->gen != gen) {
			/* Recycled before the end was seen: its end is written this pass. */
			if (t->st == S_SYNCED && !t->first &&
			    pass.norph < mm->seg.cfg.max_sessions) {
				if (pass.norph == pass.orphcap) {
					size_t cap = pass.orphcap ? pass.orphcap * 2 : 16;
					struct ms_sess *n = realloc(pass.orph, cap * sizeof *n);
					if (n) {
						pass.orph = n;
						pass.orphcap = cap;
					}
				}
				if (pass.norph < pass.orphcap) {
					pass.orph[pass.norph] = *t;
					pass.orph[pass.norph++].attr_seen = NULL;
				}
			}
			untrack(mm, idx);
		}
		if (state == SHMB_REC_LIVE && t->st == S_NONE) {
			track(mm, idx, gen);
		} else if ((state == SHMB_REC_UNLINKING || state == SHMB_REC_RETIRED) &&
			   t->st != S_NONE && !t->ending) {
			cmm_smp_rmb(); /* the reason is stored before UNLINKING (broker/index.c) */
			t->ending = 1;
			t->end_reason = (uint8_t)uatomic_read(&r->retire_reason);
			if (t->st == S_NOTOWNER)
				untrack(mm, idx);
		} else if (t->st == S_NOTOWNER && mono >= t->recheck_mono) {
			t->st = S_LEARN;
		}
	}
}

/* LEARN: one pipelined HMGET per session. */
static void learn(struct ms_mirror *mm)
{
	uint32_t list[LEARN_MAX], n = 0;
	for (uint32_t idx = 0; idx < mm->seg.cfg.max_sessions && n < LEARN_MAX; idx++) {
		struct ms_sess *t = &mm->sess[idx];
		if (t->st != S_LEARN || (t->refusals && mr_mono_ms() < t->retry_mono))
			continue;
		char key[MR_KEY_MAX];
		mr_key(&mm->redis, 's', t->sid, key, sizeof key);
		if (redisAppendCommand(mm->redis.ctx, "HMGET %s owner mirrored_id", key) !=
		    REDIS_OK)
			break;
		list[n++] = idx;
	}
	for (uint32_t i = 0; i < n; i++) {
		redisReply *r;
		if (mr_get_reply(&mm->redis, &r) < 0)
			return; /* connection dropped: everyone learns again after the reconnect */
		struct ms_sess *t = &mm->sess[list[i]];
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
			refused(mm, t, "HMGET",
				r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
			freeReplyObject(r);
			continue;
		}
		const redisReply *o = r->element[0], *mi = r->element[1];
		int owner = o->type == REDIS_REPLY_STRING ? atoi(o->str) : 0;
		if (owner && owner != mm->node) {
			if (t->ending) {
				untrack(mm, list[i]);
			} else {
				t->st = S_NOTOWNER;
				t->recheck_mono = mr_mono_ms() + RECHECK_MS;
			}
		} else {
			t->st = S_SYNCED;
			t->first = 1;
			t->peek = 0;
			char *end = NULL;
			t->mirrored =
				mi->type == REDIS_REPLY_STRING ? strtoull(mi->str, &end, 10) : 0;
			if (end && (*end || end == mi->str)) {
				/* Not written by a mirror: the write script takes it for 0 and
				 * rewrites it (ids Redis holds are skipped by the XADD itself). */
				mm->st.redis_errors++;
				ms_log(MS_WARNING,
				       "session %s: mirrored_id '%.40s' in Redis is not a number: "
				       "resending what the ring holds, Redis skips what it has",
				       t->sid, mi->str);
				t->mirrored = 0;
			}
			/* Redis ahead of every id this session handed out: another history under the
			 * same id (a restore from an older image). Replaced, so that its ids, below
			 * Redis's, are not taken for ids Redis holds. */
			uint64_t head = uatomic_read(&seg_rec(&mm->seg, list[i])->next_id);
			t->reset = t->mirrored > head;
			if (t->reset) {
				ms_log(MS_WARNING,
				       "session %s: Redis holds ids up to %" PRIu64
				       ", this session "
				       "only %" PRIu64 ": another history, replacing Redis's copy",
				       t->sid, t->mirrored, head);
				t->mirrored = 0;
			}
			if (t->attr_seen)
				memset(t->attr_seen, 0,
				       2 * (size_t)mm->seg.cfg.attr_keys * sizeof *t->attr_seen);
		}
		freeReplyObject(r);
	}
}

/* Attributes whose entry word changed since written, as (key, value) pairs appended to a; their
 * new words go to the pending half of attr_seen. A key deleted since (its entry unset) cannot be
 * named any more (its block, holding the key, is gone), so a delete, like the first write,
 * replaces the whole hash with every value set now (*replace; deletes are rare). Returns 0, or -1
 * when the record was recycled while read. */
static int collect_attrs(struct ms_mirror *mm, uint32_t idx, struct ms_sess *t, size_t *nset,
			 int *replace)
{
	struct attr_area ar;
	struct args *a = &pass.a;
	*nset = 0;
	*replace = 0;
	if (!t->attr_seen || attr_area_of(&mm->seg, idx, &ar) < 0)
		return 0;
	uint64_t *pend = attr_pending(mm, t);
	size_t mark = a->n, data_mark = a->data_used;
	memcpy(pend, t->attr_seen, (size_t)ar.nkeys * sizeof *pend);
	*replace = t->first;
	for (uint32_t i = 0; i < ar.nkeys && !*replace; i++) {
		uint64_t w = uatomic_read(&ar.entries[i].word), old = t->attr_seen[i];
		if (w != old && ATTR_COUNT(old & ATTR_RANGE_MASK) &&
		    !ATTR_COUNT(w & ATTR_RANGE_MASK))
			*replace = 1;
	}
	for (uint32_t i = 0; i < ar.nkeys; i++) {
		const struct shmb_attr_entry *e = &ar.entries[i];
		uint64_t w = uatomic_read(&e->word);
		if ((w == t->attr_seen[i] && !*replace) || !uatomic_read(&e->tag))
			continue;
		uint8_t *kv = a->data + a->data_used;
		int rc = SHMB_ENOMEM; /* no room: as a busy entry */
		struct attr_value v;
		if (a->data_used + SHMB_ATTR_KEY_CAP + 1 + SHMB_ATTR_MAX <= a->data_cap &&
		    args_grow(a, 2) == 0)
			rc = attr_read(&ar, e, NULL, 0, 1, kv + SHMB_ATTR_KEY_CAP + 1,
				       SHMB_ATTR_MAX, &v);
		if (rc == SHMB_ENOENT) {
			pend[i] = w; /* unset: nothing to write */
			continue;
		}
		if (rc < 0) {
			/* A writer in progress, damage or no room: this entry next pass; a
			 * replacement must be whole, so it waits altogether. */
			if (*replace) {
				a->n = mark;
				a->data_used = data_mark;
				*nset = 0;
				*replace = 0;
				memcpy(pend, t->attr_seen, (size_t)ar.nkeys * sizeof *pend);
				break;
			}
			continue;
		}
		memcpy(kv, v.key, v.key_len);
		arg(a, kv, v.key_len);
		arg(a, kv + SHMB_ATTR_KEY_CAP + 1, (size_t)rc);
		a->data_used += SHMB_ATTR_KEY_CAP + 1 + (size_t)rc;
		pend[i] = v.word;
		(*nset)++;
	}
	cmm_smp_rmb(); /* the copies before the generation: bumped before the area is zeroed */
	return uatomic_read(&seg_rec(&mm->seg, idx)->gen) == t->gen ? 0 : -1;
}

/* Events after t->mirrored (at most --batch, within the arena), appended to a. Returns the
 * count, or -1 when the record was recycled while read. *lost gets the ranges of ids evicted
 * before they were copied.
 *
 * The steady state reads only the descriptors (and payloads) of the events it copies and the
 * one after the last: never the record's next_id, which every publish writes (a load of it on
 * each pass would make the publisher's next fetch-and-add fetch the line back). A descriptor
 * that holds a newer lap's id means the mirror fell behind the ring: only then is the window
 * looked up (evr_oldest, which reads next_id). */
static long collect_events(struct ms_mirror *mm, uint32_t idx, struct ms_sess *t, uint64_t *upto,
			   char *lost, size_t lostlen, uint64_t *nlost, size_t *bytes)
{
	const struct shmb_seg *seg = &mm->seg;
	const struct shmb_session_rec *r = seg_rec(seg, idx);
	struct args *a = &pass.a;
	uint64_t id = t->mirrored + 1;
	long n = 0;
	int caught_up = 0;
	*upto = 0;
	*nlost = 0;
	lost[0] = '\0';
	while (n < mm->batch) {
		if (a->data_used + seg->cfg.max_event_bytes > a->data_cap || *bytes > CYCLE_BYTES)
			break;
		struct shmb_event_desc d;
		uint8_t *buf = a->data + a->data_used;
		int rc = evr_read(seg, idx, r, id, &d, buf, seg->cfg.max_event_bytes);
		if (rc == EVR_NOTYET) {
			caught_up = 1;
			break;
		}
		if (rc == EVR_CONT) { /* the rest of an event sent already */
			id++;
			continue;
		}
		if (rc == EVR_EVICTED) {
			/* Evicted before the mirror copied them: declared, never skipped silently. */
			uint64_t oldest = evr_oldest(seg, idx, r);
			if (oldest <= id)
				oldest = id + 1;
			size_t k = strlen(lost);
			if (k + 48 < lostlen)
				snprintf(lost + k, lostlen - k, "%s%" PRIu64 "-%" PRIu64,
					 k ? "," : "", id, oldest - 1);
			*nlost += oldest - id;
			id = oldest;
			continue;
		}
		if (rc != EVR_OK) {
			ms_log(MS_WARNING, "session %s: event %" PRIu64 " unreadable (%d)", t->sid,
			       id, rc);
			break;
		}
		if (args_grow(a, 6) < 0 || ts_add(d.ts_ms) < 0)
			break;
		int gap = (d.flags & SHMB_EV_GAP) != 0;
		arg_num(a, (int64_t)id);
		arg_num(a, d.stream);
		arg_num(a, d.kind);
		arg_num(a, d.ts_ms);
		arg_str(a, gap ? "1" : "0");
		arg(a, buf, gap ? 0 : d.len);
		a->data_used += gap ? 0 : d.len;
		*bytes += d.len;
		*upto = id;
		n++;
		id += d.nslots ? d.nslots : 1;
	}
	cmm_smp_rmb(); /* the ring copies before the generation check */
	if (uatomic_read(&r->gen) != t->gen)
		return -1;
	if (*upto == 0 && *nlost)
		*upto = id - 1; /* only losses: mirrored_id moves past them */
	if (caught_up && n == 0 && *nlost == 0)
		t->peek = id; /* where the next pass looks first (past continuation slots) */
	return n;
}

/* Whether the session may have anything to write besides the touch and expiry: an event at the
 * next id, or an attribute entry whose word moved. No formatting, and few lines read: an idle
 * session must cost a pass next to nothing (4,000 idle sessions used to take most of a core,
 * building writes that were then dropped as empty and reading every attribute entry).
 *
 * Attributes: every set or delete bumps a tag in the area's cell bitmap (allocating the new
 * value's cells before its entry word changes, freeing the old ones after), so the sum of the
 * bitmap words (a line or two) says when to compare the entry words. A set of a new key bumps
 * only before its entry word changes: the words are compared every pass for ATTR_HOT_MS after
 * any bump, until no difference is left, and every ATTR_RESCAN_MS regardless (a writer stalled
 * between the two steps). */
static int may_have_news(struct ms_mirror *mm, uint32_t idx, struct ms_sess *t, int64_t mono)
{
	const struct shmb_seg *seg = &mm->seg;
	uint64_t id = t->peek > t->mirrored ? t->peek : t->mirrored + 1;
	struct shmb_event_desc d;
	if (evr_read(seg, idx, seg_rec(seg, idx), id, &d, mm->evbuf, seg->cfg.max_event_bytes) !=
	    EVR_NOTYET)
		return 1;
	struct attr_area ar;
	if (!t->attr_seen || attr_area_of(seg, idx, &ar) < 0)
		return 0;
	uint64_t fp = 0;
	for (uint32_t w = 0; w < ar.nwords; w++)
		fp += uatomic_read(&ar.bitmap[w]);
	if (fp != t->attr_fp) {
		t->attr_fp = fp;
		t->attr_scan_until = mono + ATTR_HOT_MS;
	} else if (mono >= t->attr_scan_until && mono < t->attr_scan_next) {
		return 0;
	}
	cmm_smp_rmb(); /* the bitmap before the entry words */
	t->attr_scan_next = mono + ATTR_RESCAN_MS;
	for (uint32_t i = 0; i < ar.nkeys; i++)
		if (uatomic_read(&ar.entries[i].word) != t->attr_seen[i]) {
			t->attr_scan_until = mono + ATTR_HOT_MS; /* until it is written */
			return 1;
		}
	return 0;
}

/* SYNCED: one fenced write per session with anything to say. */
static void write_session(struct ms_mirror *mm, uint32_t idx, size_t *bytes)
{
	struct ms_sess *t = &mm->sess[idx];
	const struct shmb_session_rec *r = seg_rec(&mm->seg, idx);
	struct args *a = &pass.a;
	size_t slots[5];
	char lost[256];
	uint64_t upto, nlost;
	int64_t mono = mr_mono_ms();
	size_t ts_mark = pass.nts;
	if (t->refusals && mono < t->retry_mono)
		return;

	int64_t touch = uatomic_read(&r->last_accessed_at_ms);
	int touch_due = touch != t->touch_sent && mono - t->touch_mono >= mm->touch_interval_ms;
	t->expires_at = expiry_of(r);
	int64_t expire_at = t->ending ? -1 : t->expires_at ? t->expires_at + MR_GRACE_MS : 0;
	/* All keys' expiry with the touch (and when it moved for another reason: a subscriber
	 * came or went), else only on the keys written. */
	int expire_all = t->first || t->ending || touch_due ||
			 (expire_at != t->expire_sent && touch == t->touch_sent);

	if (!t->first && !t->ending && !expire_all && !may_have_news(mm, idx, t, mono))
		return;
	/* claimed (ids handed out) costs a load of next_id, a line every publish writes: only on
	 * the first and last writes and with the touch, else the last value read. */
	if (t->first || t->ending || mono - t->head_mono >= mm->touch_interval_ms) {
		t->head = uatomic_read(&r->next_id);
		t->head_mono = mono;
	}
	if (args_grow(a, MR_W_FIXED + 3 + 16) < 0)
		return;
	write_head(mm, t->sid, t->reset ? 2 : t->first, expire_at, expire_all, t->head, "",
		   t->ending  ? state_name(t->end_reason)
		   : t->first ? "live"
			      : "",
		   slots);
	size_t nfields = 0;
	if (t->first || touch_due) {
		arg_str(a, "last_accessed_at_ms");
		arg_num(a, touch);
		nfields++;
	}
	if (t->first) {
		/* The identity, from a consistent copy (the generation re-checked below). */
		char *p = (char *)a->data + a->data_used;
		memcpy(p, r->tenant, SHMB_TENANT_CAP);
		memcpy(p + SHMB_TENANT_CAP, r->principal, SHMB_PRINCIPAL_CAP);
		a->data_used += SHMB_TENANT_CAP + SHMB_PRINCIPAL_CAP;
		uint32_t tl = r->tenant_len, pl = r->principal_len;
		arg_str(a, "tenant");
		arg(a, p, tl > SHMB_TENANT_CAP ? SHMB_TENANT_CAP : tl);
		nfields++;
		if (r->has_principal) {
			arg_str(a, "principal");
			arg(a, p + SHMB_TENANT_CAP,
			    pl > SHMB_PRINCIPAL_CAP ? SHMB_PRINCIPAL_CAP : pl);
			nfields++;
		}
		arg_str(a, "created_at_ms");
		arg_num(a, r->created_at_ms);
		arg_str(a, "inactivity_ttl_ms");
		arg_num(a, (int64_t)r->inactivity_ttl_ms);
		arg_str(a, "absolute_ttl_ms");
		arg_num(a, (int64_t)r->absolute_ttl_ms);
		arg_str(a, "origin");
		arg_num(a, shmb_sid_node(t->sid));
		nfields += 4;
	}
	/* Record fields are pairs; events follow them. */
	long nev = collect_events(mm, idx, t, &upto, lost, sizeof lost, &nlost, bytes);
	if (nev < 0) {
		pass.nts = ts_mark;
		return; /* recycled meanwhile: the next scan writes its end */
	}
	/* The events were appended after the fields, as the script reads them. */
	size_t nset = 0;
	int replace = 0;
	if (collect_attrs(mm, idx, t, &nset, &replace) < 0) {
		pass.nts = ts_mark;
		return;
	}
	if (!expire_all && nev == 0 && !nlost && !nset && !replace)
		return; /* nothing to say */
	patch(slots[0], (int64_t)nfields);
	patch(slots[1], nev);
	patch(slots[2], (int64_t)nset);
	if (replace) {
		a->v[slots[4]] = "1";
		a->l[slots[4]] = 1;
	}
	if (nlost) { /* lost lives until the append below, which copies it */
		a->v[3 + MR_W_LOST] = lost;
		a->l[3 + MR_W_LOST] = strlen(lost);
	}
	if (mr_append_eval(&mm->redis, MR_SCRIPT_WRITE, 3, (int)a->n, a->v, a->l) < 0) {
		pass.nts = ts_mark;
		return;
	}
	struct flight f = { .idx = idx,
			    .gen = t->gen,
			    .upto = upto,
			    .ts_off = ts_mark,
			    .nts = pass.nts - ts_mark,
			    .touch = touch,
			    .expire_at = expire_all ? expire_at : INT64_MIN,
			    .lost = nlost };
	if (flight_add(&f) < 0)
		ms_log(MS_ERROR, "out of memory");
}

/* The replies, in order: apply what Redis acknowledged. */
static void replies(struct ms_mirror *mm)
{
	for (size_t i = 0; i < pass.nfl; i++) {
		const struct flight *f = &pass.fl[i];
		redisReply *r;
		int rc = mr_get_reply(&mm->redis, &r);
		if (rc == MR_ENOSCRIPT)
			continue; /* not applied: sent again next pass, after the reload */
		if (rc < 0)
			return;
		int64_t now = mr_wall_ms();
		long long status = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
						   r->element[0]->type == REDIS_REPLY_INTEGER
					   ? r->element[0]->integer
					   : 0;
		if (status == 0 && r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY")) {
			/* The address leads to a replica now (a Sentinel failover demoted it, and
			 * the connection outlived it): not the session's fault. The connection is
			 * dropped so that the next one, after a backoff of its own, goes wherever the
			 * address (a proxy following the primary) leads now; every session learns
			 * again there. The rest of the pipeline is left unread: nothing of it is
			 * applied, all is sent again. */
			mm->st.redis_errors++;
			mm->st.refused++;
			uint32_t k = mm->readonly_streak < 6 ? mm->readonly_streak : 6;
			int64_t wait = (int64_t)RETRY_MIN_MS << k;
			if (wait > RETRY_MAX_MS)
				wait = RETRY_MAX_MS;
			mm->readonly_streak++;
			snprintf(mm->redis.err, sizeof mm->redis.err, "read-only replica: %s",
				 r->str);
			snprintf(mm->last_error, sizeof mm->last_error, "%s", mm->redis.err);
			ms_log(MS_WARNING,
			       "Redis %s:%d is a read-only replica (%s): reconnecting in %" PRId64
			       " ms, to wherever the address leads then",
			       mm->redis.host, mm->redis.port, r->str, wait);
			freeReplyObject(r);
			mr_conn_drop(&mm->redis);
			mm->redis.next_try_ms = mr_mono_ms() + wait;
			return;
		}
		if (status == 0) {
			/* Nothing moved in Redis past what it acknowledged: sent again after a
			 * backoff (the session's), as a whole. */
			const char *why =
				r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
			struct ms_sess *t = f->orphan ? NULL : &mm->sess[f->idx];
			if (t && t->st == S_SYNCED && t->gen == f->gen) {
				refused(mm, t, "write", why);
			} else {
				mm->st.redis_errors++;
				mm->st.refused++;
				ms_log(MS_WARNING, "session (ended): write refused: %s", why);
			}
			freeReplyObject(r);
			continue;
		}
		if (f->orphan) {
			if (status == 1) {
				mm->st.ended++;
				mm->st.lost += f->lost;
				mm->st.lost_ranges += f->lost != 0;
			}
			freeReplyObject(r);
			continue;
		}
		struct ms_sess *t = &mm->sess[f->idx];
		if (t->st != S_SYNCED || t->gen != f->gen) {
			freeReplyObject(r);
			continue;
		}
		if (status == -1) {
			mm->st.fenced++;
			ms_log(MS_INFO, "session %s: owned by node %s in Redis: not written",
			       t->sid, r->element[1]->str ? r->element[1]->str : "?");
			if (t->ending) {
				untrack(mm, f->idx);
			} else {
				t->st = S_NOTOWNER;
				t->recheck_mono = mr_mono_ms() + RECHECK_MS;
			}
		} else if (status == -2) {
			/* Redis lost the record (restart, flush, expiry): learn and send again. */
			if (t->ending) {
				untrack(mm, f->idx);
			} else {
				ms_log(MS_INFO,
				       "session %s: no record in Redis any more: sending it "
				       "again",
				       t->sid);
				t->st = S_LEARN;
				t->first = 1;
			}
		} else {
			const redisReply *top = r->element[2];
			uint64_t m = top->type == REDIS_REPLY_STRING ? strtoull(top->str, NULL, 10)
								     : f->upto;
			t->mirrored = m > t->mirrored ? m : t->mirrored;
			for (size_t k = 0; k < f->nts; k++)
				ms_stats_lag(&mm->st, now - pass.ts[f->ts_off + k]);
			mm->st.events += f->nts;
			mm->st.events_window[mm->st.slice] += f->nts;
			if (f->lost) {
				mm->st.lost += f->lost;
				mm->st.lost_ranges++;
				ms_log(MS_WARNING,
				       "session %s: %" PRIu64 " events evicted before they were "
				       "mirrored (recorded in its lost field)",
				       t->sid, f->lost);
			}
			if (f->expire_at != INT64_MIN)
				t->expire_sent = f->expire_at;
			if (f->touch != t->touch_sent) {
				t->touch_sent = f->touch;
				t->touch_mono = mr_mono_ms();
			}
			if (t->attr_seen)
				memcpy(t->attr_seen, attr_pending(mm, t),
				       mm->seg.cfg.attr_keys * sizeof *t->attr_seen);
			t->first = 0;
			t->reset = 0;
			t->refusals = 0;
			mm->readonly_streak = 0;
			if (t->ending && t->mirrored >= t->head) {
				mm->st.ended++;
				untrack(mm, f->idx);
			}
		}
		freeReplyObject(r);
	}
}

/* The publish time of the first event after t->mirrored still in the ring (the oldest one
 * there when the ring moved past it), or INT64_MAX when none is readable. */
static int64_t oldest_pending(struct ms_mirror *mm, uint32_t idx, const struct ms_sess *t,
			      uint64_t head)
{
	const struct shmb_session_rec *r = seg_rec(&mm->seg, idx);
	uint64_t id = t->mirrored + 1;
	for (int tries = 0; tries < 8 && id < head; tries++) {
		struct shmb_event_desc d;
		int rc = evr_read(&mm->seg, idx, r, id, &d, mm->evbuf, mm->seg.cfg.max_event_bytes);
		if (rc == EVR_OK || rc == EVR_TOOSMALL)
			return d.ts_ms;
		if (rc == EVR_EVICTED) {
			uint64_t o = evr_oldest(&mm->seg, idx, r);
			id = o > id ? o : id + 1;
		} else if (rc == EVR_CONT) {
			id++;
		} else {
			break; /* not committed yet: younger than anything that matters */
		}
	}
	return INT64_MAX;
}

void ms_sync_cycle(struct ms_mirror *mm, int figures)
{
	pass.nfl = 0;
	pass.nts = 0;
	pass.norph = 0;
	scan(mm);
	if (mm->redis.ctx) {
		learn(mm);
		for (size_t i = 0; mm->redis.ctx && i < pass.norph; i++)
			write_orphan_end(mm, &pass.orph[i]);
		size_t bytes = 0;
		for (uint32_t idx = 0; mm->redis.ctx && idx < mm->seg.cfg.max_sessions; idx++)
			if (mm->sess[idx].st == S_SYNCED)
				write_session(mm, idx, &bytes);
		if (mm->redis.ctx)
			replies(mm);
	}
	/* Redis down: the ends of recycled sessions are not written (their keys expire). */
	if (!figures)
		return;
	/* Figures for the status (once a second: next_id is a line every publish writes). */
	/* Behind: ids handed out that Redis is not known to hold, with the age of the oldest of
	 * them, counted for the sessions not yet learnt too (Redis down since the mirror started:
	 * all of them), so that a mirror getting nothing through never reports 0 behind. */
	uint64_t sessions = 0, not_owner = 0, behind = 0, failing = 0, unsynced = 0;
	int64_t oldest_ts = INT64_MAX;
	for (uint32_t idx = 0; idx < mm->seg.cfg.max_sessions; idx++) {
		const struct ms_sess *t = &mm->sess[idx];
		failing += t->st != S_NONE && t->refusals;
		if (t->st == S_SYNCED || t->st == S_LEARN) {
			sessions += t->st == S_SYNCED;
			unsynced += t->st == S_LEARN;
			const struct shmb_session_rec *r = seg_rec(&mm->seg, idx);
			uint64_t head = uatomic_read(&r->next_id);
			if (uatomic_read(&r->gen) != t->gen || head <= t->mirrored)
				continue;
			behind += head - t->mirrored;
			int64_t ts = oldest_pending(mm, idx, t, head);
			if (ts < oldest_ts)
				oldest_ts = ts;
		} else if (t->st == S_NOTOWNER) {
			not_owner++;
		}
	}
	mm->st.sessions = sessions;
	mm->st.not_owner = not_owner;
	mm->st.events_behind = behind;
	mm->st.failing = failing;
	mm->st.unsynced = unsynced;
	int64_t now = mr_wall_ms();
	mm->st.oldest_unmirrored_ms = oldest_ts == INT64_MAX ? 0
				      : now > oldest_ts      ? now - oldest_ts
							     : 1;
}
