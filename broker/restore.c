/* restore.c - the "restore" request: a session brought back into this segment with the same
 * id, binding, timestamps, TTLs, last event id, retained events and attributes
 * (docs/protocol.md), so a client resumes with its Last-Event-ID. Two callers: `shmctl restore`
 * (one session of a dump per request, events as base64 JSON) and shmb_session_restore (a worker
 * failing a session over from another node: the events and attributes in a memfd passed with the
 * request, common/image.h, since a full ring does not fit one control message).
 *
 * Everything is checked before anything changes: the session object's fields (types, ranges,
 * lengths against this segment's limits), every event (ascending ids, each at most the last id,
 * stream, kind, payload within max_event_bytes), that the ids fit this segment's ring geometry
 * (an event of len bytes takes evr_slots_for(len) ids here, and those must not run into the next
 * event's id: a dump from a segment with larger slots may not fit), and that the attributes fit
 * the record's attribute area (valid distinct keys, values within SHMB_ATTR_MAX, blocks placed
 * into attr_bytes and attr_keys: the placement is planned here). Events older than this ring's
 * window would be evicted at once: they are left out (counted in the reply). A session whose id
 * is already linked is refused (SHMB_ECONFLICT): the broker is one thread, so of two restores of
 * one id the second always finds the first linked.
 *
 * A memfd image is read whole into memory before anything is checked, without blocking: it
 * must be a regular file on tmpfs (a memfd; a FIFO, a socket or a file of a FUSE mount could
 * block the broker's one thread), its size the one the request declares and at most
 * img_bound() of this segment's configuration (so a client cannot make the broker allocate
 * without bound); pread copies it, so later writes by the sender change nothing checked.
 *
 * Then a free record is taken and marked LINKING -- unreachable: no chain links it -- and the
 * events are written into its ring with the writers' own code (evr_publish, at the event's id:
 * next_id is set to id - 1 first, so the claim returns exactly that id; their ts_ms kept), gap
 * records for gap events and for every id of the window the image does not hold (so no reader
 * ever waits on an id nobody will write); the attributes are written into the (cleared) area
 * as planned, with plain stores: nobody reads the area of a record that is not LIVE. Finally
 * the identity is filled and the record linked and made LIVE by brk_index_link with next_id =
 * the last id (its release store of LIVE orders every write above before any lookup that finds
 * the session): the next publish continues after it, and the session is never seen without its
 * events or attributes. Nobody else writes the record while it is LINKING, so the plain next_id
 * stores are safe. A broker that dies in between leaves a LINKING record, which adoption finishes
 * (it was linked into its chain: complete) or undoes (descriptors and attribute area cleared)
 * like an interrupted create (segment.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <linux/magic.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "b64.h"
#include "broker.h"
#include "clock.h"
#include "evring.h"
#include "fault.h"
#include "image.h"
#include "index.h"
#include "shmb.h"
#include "sid.h"

#define JSON_MAX_INT 9007199254740992.0 /* 2^53 */

struct rev {
	uint64_t id;
	uint32_t stream;
	uint16_t kind;
	int gap;
	int64_t ts_ms;
	const uint8_t *data;
	uint8_t *own; /* data decoded from base64 (free()), NULL when it points into an image */
	uint32_t len;
};

/* One attribute of an image, with its planned place in the record's area. */
struct rattr {
	const char *key; /* key_len bytes, not NUL-terminated */
	const uint8_t *val;
	uint32_t key_len, val_len;
	uint64_t hash;
	uint32_t entry; /* index of its entry */
	uint64_t range; /* its cells (SHMB_ATTR_RANGE) */
};

/* What is restored, checked before the record is taken. */
struct rimg {
	struct rev *ev;
	size_t n, k; /* events; the first one inside the ring's window */
	struct rattr *at;
	size_t nattrs;
	uint8_t *buf; /* the memfd's bytes (ev and at point into it), NULL for a JSON request */
};

/* An integer field in 0..max (required). Returns 0 or -1 with why. */
static int num(const cJSON *o, const char *key, double max, uint64_t *out, char *why, size_t wl)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= max) ||
	    v->valuedouble != (double)(uint64_t)v->valuedouble) {
		snprintf(why, wl, "field '%s' must be an integer in 0..%.0f", key, max);
		return -1;
	}
	*out = (uint64_t)v->valuedouble;
	return 0;
}

static const char *str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) && v->valuestring ? v->valuestring : NULL;
}

static void revs_free(struct rev *ev, size_t n)
{
	for (size_t i = 0; ev && i < n; i++)
		free(ev[i].own);
	free(ev);
}

static void rimg_free(struct rimg *im)
{
	revs_free(im->ev, im->n);
	free(im->at);
	free(im->buf);
	*im = (struct rimg){ 0 };
}

/* The window and the geometry: *first_kept is the index of the first event whose id is inside
 * this ring's window (older ones would be evicted at once: left out); each kept event's ids here
 * must end before the next event's id. Returns 0 or SHMB_EINVAL with why. */
static int check_window(const struct shmb_seg *seg, const struct rev *ev, size_t n, uint64_t last,
			size_t *first_kept, char *why, size_t wl)
{
	uint64_t lo = last >= seg->cfg.ring_events ? last - seg->cfg.ring_events + 1 : 1;
	size_t k = 0;
	while (k < n && ev[k].id < lo)
		k++;
	for (size_t j = k; j < n; j++) {
		uint64_t end = ev[j].id + (ev[j].gap ? 1 : evr_slots_for(seg, ev[j].len)) - 1;
		uint64_t limit = j + 1 < n ? ev[j + 1].id - 1 : last;
		if (end > limit) {
			snprintf(
				why, wl,
				"event %llu of %u bytes takes ids up to %llu in this segment's ring "
				"(%u-byte slots), past %llu: the image comes from a ring with larger "
				"slots",
				(unsigned long long)ev[j].id, ev[j].len, (unsigned long long)end,
				evr_slot_bytes(seg), (unsigned long long)limit);
			return SHMB_EINVAL;
		}
	}
	*first_kept = k;
	return 0;
}

/* Parses and checks the events; *first_kept is the index of the first event inside this ring's
 * window. Returns 0 or an error code with why. */
static int parse_events(struct brk *b, const cJSON *arr, uint64_t last, struct rev **out,
			size_t *nout, size_t *first_kept, char *why, size_t wl)
{
	const struct shmb_seg *seg = &b->seg;
	*out = NULL;
	*nout = 0;
	*first_kept = 0;
	if (!arr)
		return 0;
	if (!cJSON_IsArray(arr)) {
		snprintf(why, wl, "field 'events' must be an array");
		return SHMB_EINVAL;
	}
	size_t n = (size_t)cJSON_GetArraySize(arr);
	if (n > seg->cfg.ring_events * 4u) {
		snprintf(why, wl, "field 'events' holds %zu events, more than a ring keeps", n);
		return SHMB_EINVAL;
	}
	struct rev *ev = calloc(n ? n : 1, sizeof *ev);
	if (!ev) {
		snprintf(why, wl, "out of memory");
		return SHMB_ENOMEM;
	}
	size_t i = 0;
	const cJSON *e;
	uint64_t prev = 0, u;
	cJSON_ArrayForEach(e, arr)
	{
		struct rev *r = &ev[i];
		char w[160] = "";
		if (!cJSON_IsObject(e))
			snprintf(w, sizeof w, "is not an object");
		else if (num(e, "id", JSON_MAX_INT, &r->id, w, sizeof w) == 0 &&
			 (r->id <= prev || r->id > last))
			snprintf(w, sizeof w,
				 "has id %llu: ids must ascend and be at most last_event_id %llu",
				 (unsigned long long)r->id, (unsigned long long)last);
		else if (!w[0] && num(e, "stream", UINT32_MAX, &u, w, sizeof w) == 0)
			r->stream = (uint32_t)u;
		if (!w[0] && num(e, "kind", UINT16_MAX, &u, w, sizeof w) == 0)
			r->kind = (uint16_t)u;
		if (!w[0] && num(e, "ts_ms", JSON_MAX_INT, &u, w, sizeof w) == 0)
			r->ts_ms = (int64_t)u;
		if (!w[0]) {
			const cJSON *g = cJSON_GetObjectItemCaseSensitive(e, "gap");
			r->gap = cJSON_IsTrue(g);
			const char *d = str(e, "data_base64");
			if (!r->gap && !d)
				snprintf(w, sizeof w, "needs 'data_base64' (a string)");
			else if (!r->gap) {
				size_t cap = seg->cfg.max_event_bytes;
				r->own = malloc(cap ? cap : 1);
				r->data = r->own;
				long len = r->own && strlen(d) / 4 * 3 <= cap + 3
						   ? b64_decode(d, r->own, cap)
						   : -1;
				if (len < 0)
					snprintf(w, sizeof w,
						 "has 'data_base64' that is not base64 of at most "
						 "max_event_bytes (%zu) bytes",
						 cap);
				else
					r->len = (uint32_t)len;
			}
		}
		i++;
		if (w[0]) {
			snprintf(why, wl, "events[%zu] %s", i - 1, w);
			revs_free(ev, i);
			return SHMB_EINVAL;
		}
		prev = r->id;
	}
	int rc = check_window(seg, ev, n, last, first_kept, why, wl);
	if (rc) {
		revs_free(ev, n);
		return rc;
	}
	*out = ev;
	*nout = n;
	return 0;
}

/* Reads the memfd of a request into im->buf: a regular tmpfs file of exactly `declared` bytes,
 * at most img_bound() of this segment. Returns 0 or an error code with why. */
static int read_image(struct brk *b, int fd, uint64_t declared, struct rimg *im, char *why,
		      size_t wl)
{
	uint64_t bound = img_bound(&b->seg.cfg);
	struct stat st;
	struct statfs fs;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || fstatfs(fd, &fs) < 0 ||
	    (fs.f_type != TMPFS_MAGIC && fs.f_type != HUGETLBFS_MAGIC)) {
		snprintf(why, wl, "the image must be a memfd (a regular file on tmpfs)");
		return SHMB_EINVAL;
	}
	if ((uint64_t)st.st_size != declared) {
		snprintf(why, wl, "the image has %llu bytes, the request says %llu",
			 (unsigned long long)st.st_size, (unsigned long long)declared);
		return SHMB_EINVAL;
	}
	if (declared > bound) {
		snprintf(why, wl,
			 "the image has %llu bytes, more than a session of this segment can hold "
			 "(%llu: ring_events, ring_bytes, attr_keys, attr_bytes)",
			 (unsigned long long)declared, (unsigned long long)bound);
		return SHMB_ETOOBIG;
	}
	if (declared < sizeof(struct shmb_img_head)) {
		snprintf(why, wl, "the image has %llu bytes, less than its header",
			 (unsigned long long)declared);
		return SHMB_EINVAL;
	}
	im->buf = malloc(declared);
	if (!im->buf) {
		snprintf(why, wl, "out of memory for a %llu-byte image",
			 (unsigned long long)declared);
		return SHMB_ENOMEM;
	}
	/* tmpfs reads never wait for a device or another process. */
	for (uint64_t got = 0; got < declared;) {
		ssize_t n = pread(fd, im->buf + got, declared - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(why, wl, "cannot read the image: %s",
				 n < 0 ? strerror(errno) : "it was truncated");
			return SHMB_EINVAL;
		}
		got += (uint64_t)n;
	}
	return 0;
}

/* Parses the memfd's events and attributes (common/image.h) into im; every count and length is
 * checked against the bytes left first. Returns 0 or an error code with why. */
static int parse_image(struct brk *b, uint64_t size, uint64_t last, struct rimg *im, char *why,
		       size_t wl)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_img_head h;
	memcpy(&h, im->buf, sizeof h);
	uint64_t off = sizeof h;
	if (h.magic != SHMB_IMG_MAGIC) {
		snprintf(why, wl, "the image does not start with its magic (SHMBIMG1)");
		return SHMB_EINVAL;
	}
	if (h.n_events > seg->cfg.ring_events || h.n_attrs > seg->cfg.attr_keys) {
		snprintf(why, wl,
			 "the image holds %u events and %u attributes; this segment keeps at "
			 "most %u (ring_events) and %u (attr_keys)",
			 h.n_events, h.n_attrs, seg->cfg.ring_events, seg->cfg.attr_keys);
		return SHMB_ETOOBIG;
	}
	im->ev = calloc(h.n_events ? h.n_events : 1, sizeof *im->ev);
	im->at = calloc(h.n_attrs ? h.n_attrs : 1, sizeof *im->at);
	if (!im->ev || !im->at) {
		snprintf(why, wl, "out of memory");
		return SHMB_ENOMEM;
	}
	uint64_t prev = 0;
	for (uint32_t i = 0; i < h.n_events; i++) {
		struct shmb_img_event e;
		if (size - off < sizeof e) {
			snprintf(why, wl, "the image ends inside event %u", i);
			return SHMB_EINVAL;
		}
		memcpy(&e, im->buf + off, sizeof e);
		off += sizeof e;
		int gap = (e.flags & SHMB_EV_GAP) != 0;
		const char *bad = NULL;
		if (e.id <= prev || e.id > last)
			bad = "ids must ascend, each at most last_event_id";
		else if (e.flags & ~SHMB_EV_GAP)
			bad = "its flags have bits other than SHMB_EV_GAP";
		else if (gap && e.len)
			bad = "a gap has no payload";
		else if (e.ts_ms < 0 || (uint64_t)e.ts_ms > (uint64_t)JSON_MAX_INT)
			/* As in a dump's JSON (parse_events): a larger one would make every later
			 * `shmctl dump` of this segment one that `shmctl restore` refuses. */
			bad = "ts_ms is outside 0..2^53";
		else if (e.pad)
			bad = "its padding is not 0";
		if (bad) {
			snprintf(why, wl, "event %u (id %llu): %s", i, (unsigned long long)e.id,
				 bad);
			return SHMB_EINVAL;
		}
		if (e.len > seg->cfg.max_event_bytes) {
			snprintf(why, wl,
				 "event %u (id %llu) has %u bytes, more than max_event_bytes "
				 "(%u)",
				 i, (unsigned long long)e.id, e.len, seg->cfg.max_event_bytes);
			return SHMB_ETOOBIG;
		}
		if (size - off < img_pad8(e.len)) {
			snprintf(why, wl, "the image ends inside event %u's payload", i);
			return SHMB_EINVAL;
		}
		im->ev[i] = (struct rev){ .id = e.id,
					  .stream = e.stream,
					  .kind = e.kind,
					  .gap = gap,
					  .ts_ms = e.ts_ms,
					  .data = im->buf + off,
					  .len = e.len };
		off += img_pad8(e.len);
		im->n = i + 1;
		prev = e.id;
	}
	for (uint32_t i = 0; i < h.n_attrs; i++) {
		struct shmb_img_attr a;
		if (size - off < sizeof a) {
			snprintf(why, wl, "the image ends inside attribute %u", i);
			return SHMB_EINVAL;
		}
		memcpy(&a, im->buf + off, sizeof a);
		off += sizeof a;
		if (a.key_len > SHMB_ATTR_KEY_MAX || a.val_len > SHMB_ATTR_MAX) {
			snprintf(why, wl,
				 "attribute %u: a %u-byte key or a %u-byte value (at most "
				 "%d and %d)",
				 i, a.key_len, a.val_len, SHMB_ATTR_KEY_MAX, SHMB_ATTR_MAX);
			return a.key_len > SHMB_ATTR_KEY_MAX ? SHMB_EINVAL : SHMB_ETOOBIG;
		}
		if (size - off < img_pad8((uint64_t)a.key_len + a.val_len)) {
			snprintf(why, wl, "the image ends inside attribute %u", i);
			return SHMB_EINVAL;
		}
		char key[SHMB_ATTR_KEY_MAX + 1];
		memcpy(key, im->buf + off, a.key_len);
		key[a.key_len] = '\0';
		if (attr_key_len(key) != (long)a.key_len) {
			snprintf(why, wl, "attribute %u: the key must be 1..%d bytes of 0x21..0x7e",
				 i, SHMB_ATTR_KEY_MAX);
			return SHMB_EINVAL;
		}
		im->at[i] = (struct rattr){ .key = (const char *)im->buf + off,
					    .val = im->buf + off + a.key_len,
					    .key_len = a.key_len,
					    .val_len = a.val_len };
		off += img_pad8((uint64_t)a.key_len + a.val_len);
		im->nattrs = i + 1;
	}
	if (off != size) {
		snprintf(why, wl, "the image has %llu bytes after its last record",
			 (unsigned long long)(size - off));
		return SHMB_EINVAL;
	}
	return check_window(seg, im->ev, im->n, last, &im->k, why, wl);
}

static int by_cells_desc(const void *x, const void *y)
{
	const struct rattr *a = *(const struct rattr *const *)x,
			   *b = *(const struct rattr *const *)y;
	uint32_t ca = attr_cells_for(a->key_len, a->val_len),
		 cb = attr_cells_for(b->key_len, b->val_len);
	return ca < cb ? 1 : ca > cb ? -1 : 0;
}

/* The search for a packing (pack_words) gives up after this many placements tried: a set that
 * fits packs at the first try in all but contrived cases (largest first, first fit), and one
 * that needs a search needs little (attr_keys blocks over at most 32 words). The bound keeps a
 * hostile image from holding the broker's one thread: at most about 8 ms (1024 blocks, 32
 * words, none fitting) on the 2-core test machine. */
#define PACK_STEPS 20000

/* Bin packing of the blocks (cells need[0..n), largest first) into words of free[w] cells:
 * word[i] gets each block's word. A depth-first search whose first branch is first fit (so it
 * finds what first fit finds at once), skipping a word whose free count equals one already tried
 * for the same block (the same subtree), and giving up after *steps reaches PACK_STEPS. Returns
 * 1 packed, 0 not (no packing, or the budget ran out). */
static int pack_words(const uint32_t *need, size_t n, size_t i, uint32_t *free_cells,
		      uint32_t nwords, uint32_t *word, uint64_t left, uint32_t *steps)
{
	if (i == n)
		return 1;
	/* Cells of words too full for even the smallest block left are lost: prune when what
	 * is left exceeds the rest. */
	uint64_t room = 0;
	for (uint32_t w = 0; w < nwords; w++)
		room += free_cells[w] >= need[n - 1] ? free_cells[w] : 0;
	if (left > room)
		return 0;
	uint64_t tried = 0; /* free counts (0..SHMB_ATTR_CELLS_PER_WORD) tried for block i */
	for (uint32_t w = 0; w < nwords; w++) {
		if (free_cells[w] < need[i] || (tried >> free_cells[w] & 1))
			continue;
		tried |= UINT64_C(1) << free_cells[w];
		if (++*steps > PACK_STEPS)
			return 0;
		free_cells[w] -= need[i];
		word[i] = w;
		if (pack_words(need, n, i + 1, free_cells, nwords, word, left - need[i], steps))
			return 1;
		free_cells[w] += need[i];
		if (*steps > PACK_STEPS)
			return 0;
	}
	return 0;
}

/* Plans where each attribute goes in an empty area: its entry (the probe sequence attr_find
 * follows, over entries this plan has taken) and its cells (a block lies within one bitmap
 * word: a packing of the blocks into the words, pack_words, then each word's blocks side by
 * side). The session held these attributes in an area of its own, where first-fit allocation in
 * the order they were set may have filled the words exactly; largest-first first fit alone does
 * not always find such a packing (12+10+10 | 11+11+10 cells in two 32-cell words), hence the
 * search. Distinct keys only. Returns 0, SHMB_EINVAL (a key given twice) or SHMB_ETOOBIG (they do
 * not fit attr_keys and attr_bytes), with why. */
static int plan_attrs(struct brk *b, struct rimg *im, char *why, size_t wl)
{
	if (!im->nattrs)
		return 0;
	const struct shmb_seg *seg = &b->seg;
	uint32_t nkeys = seg->cfg.attr_keys, ncells = seg->cfg.attr_bytes / SHMB_ATTR_CELL;
	if (shmb_attr_area_size(seg->cfg.attr_bytes, nkeys) == 0 || im->nattrs > nkeys) {
		snprintf(why, wl, "%zu attributes, this segment keeps %u per session (attr_keys)",
			 im->nattrs, shmb_attr_area_size(seg->cfg.attr_bytes, nkeys) ? nkeys : 0);
		return SHMB_ETOOBIG;
	}
	uint64_t *tags = calloc(nkeys, sizeof *tags);
	uint32_t nwords = shmb_attr_words(seg->cfg.attr_bytes);
	uint32_t *free_cells = calloc(nwords, sizeof *free_cells);
	uint32_t *next_start = calloc(nwords, sizeof *next_start);
	struct rattr **order = malloc(im->nattrs * sizeof *order);
	uint32_t *need = malloc(im->nattrs * sizeof *need);
	uint32_t *word = malloc(im->nattrs * sizeof *word);
	int rc = 0;
	if (!tags || !free_cells || !next_start || !order || !need || !word) {
		snprintf(why, wl, "out of memory");
		rc = SHMB_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < im->nattrs && !rc; i++) {
		struct rattr *a = &im->at[i];
		a->hash = attr_hash(seg, a->key, a->key_len);
		uint32_t e = (uint32_t)(((a->hash >> 32) * (uint64_t)nkeys) >> 32);
		while (tags[e] && tags[e] != a->hash)
			e = e + 1 == nkeys ? 0 : e + 1; /* a free entry exists: nattrs <= nkeys */
		if (tags[e]) {
			/* The same key twice, or two keys of one 64-bit hash: one entry either way. */
			snprintf(why, wl, "attribute key '%.*s' is given twice", (int)a->key_len,
				 a->key);
			rc = SHMB_EINVAL;
		}
		tags[e] = a->hash;
		a->entry = e;
		order[i] = a;
	}
	if (rc)
		goto out;
	qsort(order, im->nattrs, sizeof *order, by_cells_desc);
	uint64_t total = 0;
	for (size_t i = 0; i < im->nattrs; i++) {
		need[i] = attr_cells_for(order[i]->key_len, order[i]->val_len);
		total += need[i];
	}
	for (uint32_t wi = 0; wi < nwords; wi++) {
		uint32_t have = ncells - wi * SHMB_ATTR_CELLS_PER_WORD;
		free_cells[wi] = have > SHMB_ATTR_CELLS_PER_WORD ? SHMB_ATTR_CELLS_PER_WORD : have;
		next_start[wi] = wi * SHMB_ATTR_CELLS_PER_WORD;
	}
	uint32_t steps = 0;
	if (!pack_words(need, im->nattrs, 0, free_cells, nwords, word, total, &steps)) {
		snprintf(why, wl,
			 "the attributes (%llu cells of %u bytes) do not fit this segment's "
			 "attribute area per session (attr_bytes %u, a block within %u cells)%s",
			 (unsigned long long)total, SHMB_ATTR_CELL, seg->cfg.attr_bytes,
			 SHMB_ATTR_CELLS_PER_WORD,
			 steps > PACK_STEPS ? ": no packing found within the search's budget" : "");
		rc = SHMB_ETOOBIG;
		goto out;
	}
	for (size_t i = 0; i < im->nattrs; i++) {
		order[i]->range = SHMB_ATTR_RANGE(next_start[word[i]], need[i]);
		next_start[word[i]] += need[i];
	}
out:
	free(tags);
	free(free_cells);
	free(next_start);
	free(order);
	free(need);
	free(word);
	return rc;
}

/* Writes the planned attributes into record idx's area, which is empty (cleared first: an
 * earlier restore of this record that its broker did not finish may have written some). The
 * record is LINKING: nobody reads the area, and brk_index_link's release of LIVE orders these
 * stores before any reader's; version 1, as a first shmb_attr_set gives. */
static void write_attrs(struct brk *b, uint32_t idx, const struct rimg *im)
{
	struct attr_area a;
	if (!im->nattrs || attr_area_of(&b->seg, idx, &a) < 0)
		return;
	brk_attr_clear(b, idx);
	for (size_t i = 0; i < im->nattrs; i++) {
		const struct rattr *at = &im->at[i];
		uint8_t *p = a.cells + (size_t)ATTR_START(at->range) * SHMB_ATTR_CELL;
		struct shmb_attr_block hdr = { .key_len = (uint16_t)at->key_len,
					       .val_len = at->val_len };
		attr_copy_in(p, &hdr, sizeof hdr);
		attr_copy_in(p + sizeof hdr, at->key, at->key_len);
		if (at->val_len)
			attr_copy_in(p + sizeof hdr + at->key_len, at->val, at->val_len);
		uint64_t *bw = &a.bitmap[ATTR_START(at->range) / SHMB_ATTR_CELLS_PER_WORD];
		uatomic_set(bw,
			    (UINT64_C(1) << 32) | (uatomic_read(bw) | attr_range_mask(at->range)));
		uatomic_set(&a.entries[at->entry].tag, at->hash);
		uatomic_set(&a.entries[at->entry].word, ATTR_WORD(1, at->range));
	}
}

/* Gap records for ids from..to (claimed: next_id is raised to each first). */
static void gaps(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		 uint64_t from, uint64_t to, int64_t ts)
{
	for (uint64_t id = from; id <= to; id++) {
		uatomic_set(&r->next_id, id);
		evr_write_gap(seg, idx, id, ts);
	}
}

/* The events and attributes: from the memfd when the request has "image" {"bytes": N} (and
 * an fd), else from the session object's "events" (shmctl restore; its "attributes" are set
 * afterwards through libshmb). Returns 0 or an error code with why. */
static int load(struct brk *b, const cJSON *req, const cJSON *s, int fd, uint64_t last,
		struct rimg *im, char *why, size_t wl)
{
	const cJSON *image = cJSON_GetObjectItemCaseSensitive(req, "image");
	if (!image) {
		if (fd >= 0) {
			snprintf(why, wl, "a file descriptor came without field 'image'");
			return SHMB_EINVAL;
		}
		return parse_events(b, cJSON_GetObjectItemCaseSensitive(s, "events"), last, &im->ev,
				    &im->n, &im->k, why, wl);
	}
	uint64_t bytes;
	if (!cJSON_IsObject(image) || num(image, "bytes", JSON_MAX_INT, &bytes, why, wl)) {
		snprintf(why, wl, "field 'image' must be {\"bytes\": N}");
		return SHMB_EINVAL;
	}
	if (cJSON_GetObjectItemCaseSensitive(s, "events")) {
		snprintf(why, wl, "an image request carries its events in the image, not 'events'");
		return SHMB_EINVAL;
	}
	if (fd < 0) {
		snprintf(why, wl, "field 'image' needs the image's memfd passed with the request");
		return SHMB_EINVAL;
	}
	int rc = read_image(b, fd, bytes, im, why, wl);
	if (rc == 0)
		rc = parse_image(b, bytes, last, im, why, wl);
	if (rc == 0)
		rc = plan_attrs(b, im, why, wl);
	return rc;
}

static int restore(struct brk *b, const cJSON *req, int fd, int dry_run,
		   uint8_t sid_out[SHMB_SID_BYTES], size_t *dropped, char *why, size_t wl)
{
	const struct shmb_seg *seg = &b->seg;
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(req, "session");
	uint8_t sid[SHMB_SID_BYTES];
	const char *id = str(s, "id"), *tenant = str(s, "tenant");
	const cJSON *pj = cJSON_GetObjectItemCaseSensitive(s, "principal");
	uint64_t created, accessed, ittl, attl, last;
	if (!cJSON_IsObject(s)) {
		snprintf(why, wl, "field 'session' must be an object");
		return SHMB_EINVAL;
	}
	if (!id || sid_parse(id, sid) < 0) {
		snprintf(why, wl, "field 'id' must be a session id (%d hex characters)",
			 2 * SHMB_SID_BYTES);
		return SHMB_EINVAL;
	}
	if (!tenant || !tenant[0] || strlen(tenant) > seg->cfg.max_tenant_len) {
		snprintf(why, wl, "field 'tenant' must be a string of 1..%u bytes",
			 seg->cfg.max_tenant_len);
		return SHMB_EINVAL;
	}
	int has_principal = pj && !cJSON_IsNull(pj);
	if (has_principal && (!cJSON_IsString(pj) || !pj->valuestring ||
			      strlen(pj->valuestring) > seg->cfg.max_principal_len)) {
		snprintf(why, wl, "field 'principal' must be null or a string of at most %u bytes",
			 seg->cfg.max_principal_len);
		return SHMB_EINVAL;
	}
	if (num(s, "created_at_ms", JSON_MAX_INT, &created, why, wl) ||
	    num(s, "last_accessed_at_ms", JSON_MAX_INT, &accessed, why, wl) ||
	    num(s, "inactivity_ttl_ms", JSON_MAX_INT, &ittl, why, wl) ||
	    num(s, "absolute_ttl_ms", JSON_MAX_INT, &attl, why, wl) ||
	    num(s, "last_event_id", JSON_MAX_INT, &last, why, wl))
		return SHMB_EINVAL;
	if (created == 0) {
		snprintf(why, wl, "field 'created_at_ms' must be a wall-clock time (> 0)");
		return SHMB_EINVAL;
	}
	int64_t found = idx_find(seg, sid);
	if (found == -2) {
		snprintf(why, wl, "the index chain of this id is damaged");
		return SHMB_ECORRUPT;
	}
	/* A session that has expired but that the sweeper has not removed yet is gone for every
	 * lookup (SHMB_ENOENT): it does not stand in the way; it is retired as the sweep would,
	 * once the image has passed its checks. */
	const struct shmb_session_rec *fr = found >= 0 ? seg_rec(seg, (uint32_t)found) : NULL;
	int stale = fr && uatomic_read(&fr->state) == SHMB_REC_LIVE &&
		    idx_rec_expired(fr, shmb_now_ms());
	if (found >= 0 && !stale) {
		snprintf(why, wl, "session %s already exists", id);
		return SHMB_ECONFLICT;
	}
	struct rimg im = { 0 };
	int rc = load(b, req, s, fd, last, &im, why, wl);
	if (rc) {
		rimg_free(&im);
		return rc;
	}
	if (stale && !dry_run)
		brk_index_retire(b, (uint32_t)found, SHMB_RETIRE_EXPIRED);
	if (b->n_free == 0)
		brk_reclaim_run(b, 1);
	if (b->n_free == 0) {
		rimg_free(&im);
		snprintf(why, wl, "no free session record");
		return SHMB_EFULL;
	}
	*dropped = im.k;
	memcpy(sid_out, sid, SHMB_SID_BYTES);
	if (dry_run) {
		rimg_free(&im);
		return 0;
	}

	uint32_t idx = b->free_stack[--b->n_free];
	struct shmb_session_rec *r = seg_rec(seg, idx);
	uatomic_set(&r->state, SHMB_REC_LINKING);
	int64_t now = shmb_now_ms();
	uint64_t lo = last >= seg->cfg.ring_events ? last - seg->cfg.ring_events + 1 : 1;
	uint64_t next = lo - 1; /* ids below the window: evicted, as they would be */
	const struct rev *ev = im.ev;
	for (size_t j = im.k; j < im.n; j++) {
		gaps(seg, idx, r, next + 1, ev[j].id - 1, now); /* ids the image does not hold */
		if (ev[j].gap) {
			gaps(seg, idx, r, ev[j].id, ev[j].id, ev[j].ts_ms);
			next = ev[j].id;
			continue;
		}
		uatomic_set(&r->next_id, ev[j].id - 1);
		int evicted = 0;
		uint64_t got = evr_publish(seg, idx, r, ev[j].stream, ev[j].kind, ev[j].data,
					   ev[j].len, ev[j].ts_ms, NULL, NULL, &evicted);
		if (got != ev[j].id || evicted)
			brk_warn("restore %s: event %llu written as %llu (%d)", id,
				 (unsigned long long)ev[j].id, (unsigned long long)got, evicted);
		next = ev[j].id + evr_slots_for(seg, ev[j].len) - 1;
	}
	if (last > 0)
		gaps(seg, idx, r, next + 1, last, now);
	SHMB_FAULT("broker.restore.events"); /* LINKING, events written, no attributes yet */
	write_attrs(b, idx, &im);
	rimg_free(&im);
	SHMB_FAULT("broker.restore.attrs"); /* LINKING, complete, unreachable */
	struct brk_new_session ns = {
		.tenant = tenant,
		.tenant_len = strlen(tenant),
		.principal = has_principal ? pj->valuestring : NULL,
		.principal_len = has_principal ? strlen(pj->valuestring) : 0,
		.has_principal = has_principal,
		.created_at_ms = (int64_t)created,
		.last_accessed_at_ms = (int64_t)accessed,
		.inactivity_ttl_ms = ittl,
		.absolute_ttl_ms = attl,
		.next_id = last,
	};
	return brk_index_link(b, idx, sid, &ns);
}

/* Who may restore: the broker's uid and root (shmctl restore), and a connection that attached
 * as a worker (said hello): a worker is trusted with sessions (DESIGN.md's trust boundary) and
 * fails them over from another node (docs/security.md). Returns 0, or -1 after an error reply. */
static int may_restore(struct brk *b, uint32_t conn)
{
	const struct brk_conn *c = &b->conns[conn];
	if (c->uid == b->euid || c->uid == 0 || c->worker >= 0)
		return 0;
	brk_control_error(b, conn, SHMB_EACCES,
			  "restore is for uid %u (the broker's), root, or an attached worker; this "
			  "connection (uid %u) has not attached",
			  (unsigned)b->euid, (unsigned)c->uid);
	return -1;
}

void brk_restore_request(struct brk *b, uint32_t conn, const cJSON *req)
{
	if (may_restore(b, conn) < 0)
		return;
	char why[400] = "";
	uint8_t sid[SHMB_SID_BYTES];
	size_t dropped = 0;
	int dry_run = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "dry_run"));
	int rc = restore(b, req, b->req_fd, dry_run, sid, &dropped, why, sizeof why);
	if (rc) {
		brk_control_error(b, conn, rc, "restore: %s", why[0] ? why : shmb_strerror(rc));
		return;
	}
	char text[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, text);
	if (!dry_run)
		brk_log("restored session %s (%zu event%s older than the ring's window left out)",
			text, dropped, dropped == 1 ? "" : "s");
	cJSON *r = cJSON_CreateObject();
	if (r) {
		cJSON_AddTrueToObject(r, "ok");
		cJSON_AddStringToObject(r, "id", text);
		cJSON_AddNumberToObject(r, "events_left_out", (double)dropped);
		cJSON_AddBoolToObject(r, "dry_run", dry_run);
		/* Free records right now: shmctl checks that a whole dump fits before restoring
		 * any of it (each dry run alone only proves that one more session fits). */
		if (dry_run)
			cJSON_AddNumberToObject(r, "free_records", b->n_free);
	}
	if (!r) {
		brk_control_error(b, conn, SHMB_ENOMEM, "out of memory building the reply");
		return;
	}
	brk_control_reply(b, conn, r, NULL, 0);
	cJSON_Delete(r);
}
