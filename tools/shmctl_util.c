/* shmctl_util.c - what every shmctl command shares: messages, the read-only segment access,
 * consistent record copies, and text, table and JSON output.
 *
 * Reading without RCU. shmctl maps the segment read-only, so it cannot take a reader slot and
 * the broker may recycle a record while shmctl copies it. Records are therefore copied
 * seqlock-style (shmctl_rec_snapshot): state and generation are read before and after the copy,
 * and a copy during which either changed is retried, then skipped. Every length taken from a
 * copy is clamped to its buffer before use, so garbage can only print as garbage. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "ctl.h"
#include "index.h"
#include "proc.h"
#include "seg.h"
#include "shmb.h"
#include "shmctl.h"

void shmctl_fail(const char *verb, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "shmctl: %s: ", verb);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

int shmctl_usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("shmctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs("\nTry 'shmctl --help' for more information.\n", stderr);
	va_end(ap);
	return SHMCTL_USAGE;
}

int shmctl_open(const struct shmctl_opts *o, const char *verb, struct shmb_seg *seg, int *raw_rc,
		char *why, size_t whylen)
{
	char buf[256] = "";
	int rc;
	/* Magic 0 means the broker is still publishing the header: give it a moment. */
	for (int tries = 0;; tries++) {
		rc = seg_open_name(o->name, 0, seg, buf, sizeof buf);
		if (rc != SHMB_EBROKER || tries >= 20)
			break;
		usleep(25 * 1000);
	}
	if (raw_rc)
		*raw_rc = rc;
	if (why && whylen)
		snprintf(why, whylen, "%s", buf);
	if (rc == 0)
		return SHMCTL_OK;

	char shm[300];
	if (seg_locate(o->name, shm, sizeof shm, NULL, 0) < 0) {
		/* The broker's path file (segment_dir) is refused: say so, not "no segment". */
		shmctl_fail(verb, "%s", buf);
		return SHMCTL_UNAVAIL;
	}
	switch (rc) {
	case SHMB_ENOENT:
		shmctl_fail(verb, "no broker segment for name '%s' (%s): is shmbrokerd running?",
			    o->name, shm);
		break;
	case SHMB_EACCES:
		shmctl_fail(verb,
			    "cannot open %s: permission denied (run as the broker's user or group)",
			    shm);
		break;
	case SHMB_ECORRUPT:
	case SHMB_EVERSION:
		if (!raw_rc)
			shmctl_fail(verb, "segment %s is unusable: %s (shmctl verify reports it)",
				    shm, buf);
		break;
	case SHMB_EBROKER:
		if (!raw_rc)
			shmctl_fail(verb, "segment %s is not ready: %s", shm, buf);
		break;
	default:
		shmctl_fail(verb, "cannot map %s: %s", shm, buf[0] ? buf : shmb_strerror(rc));
		break;
	}
	return SHMCTL_UNAVAIL;
}

int shmctl_rec_snapshot(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *out)
{
	const struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!r)
		return -1;
	for (int tries = 0; tries < 4; tries++) {
		uint32_t state = uatomic_read(&r->state);
		uint32_t gen = uatomic_read(&r->gen);
		/* Pairs with the broker's release store of state (LIVE after the fields). */
		cmm_smp_rmb();
		memcpy(out, r, sizeof *out);
		/* The copy's loads happen before the re-check (seqlock read side). */
		cmm_smp_rmb();
		if (uatomic_read(&r->state) == state && uatomic_read(&r->gen) == gen) {
			out->state = state;
			out->gen = gen;
			return 0;
		}
	}
	return -1;
}

size_t shmctl_utf8_seq(const uint8_t *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if ((c & 0xe0) == 0xc0)
		len = 2, cp = c & 0x1f;
	else if ((c & 0xf0) == 0xe0)
		len = 3, cp = c & 0x0f;
	else if ((c & 0xf8) == 0xf0)
		len = 4, cp = c & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
	    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

void shmctl_text(char *out, size_t outlen, const char *in, uint32_t len, uint32_t cap)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t o = 0;
	if (len > cap)
		len = cap;
	for (uint32_t i = 0; i < len && o + 1 < outlen;) {
		size_t n = shmctl_utf8_seq(s + i, len - i);
		if (n == 0 || (n == 1 && (s[i] < 0x20 || s[i] == 0x7f))) {
			out[o++] = '?';
			i++;
			continue;
		}
		if (o + n >= outlen)
			break;
		memcpy(out + o, s + i, n);
		o += n;
		i += (uint32_t)n;
	}
	out[o] = '\0';
}

uint32_t shmctl_subscriber_count(const struct shmb_session_rec *r)
{
	uint32_t n = 0;
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		n += (uint32_t)__builtin_popcountll(r->subscribers[i]);
	return n;
}

/* a + b, saturating at INT64_MAX (b comes from the segment and may be anything). */
static int64_t add_sat(int64_t a, uint64_t b)
{
	int64_t r;
	if (b > INT64_MAX || __builtin_add_overflow(a, (int64_t)b, &r))
		return INT64_MAX;
	return r;
}

int64_t shmctl_expires_at(const struct shmb_session_rec *r)
{
	/* The broker's own figure (layout 2.0: line 0 of the record, what lookups compare); verify
	 * reports a record whose expires_at_ms disagrees with created_at_ms + absolute_ttl_ms. */
	int64_t at = r->expires_at_ms == INT64_MAX ? 0 : r->expires_at_ms;
	if (r->inactivity_ttl_ms && shmctl_subscriber_count(r) == 0) {
		int64_t t = add_sat(r->last_accessed_at_ms, r->inactivity_ttl_ms);
		if (!at || t < at)
			at = t;
	}
	return at;
}

int shmctl_rec_expired(const struct shmb_session_rec *r, int64_t now)
{
	/* idx_rec_expired() subtracts timestamps; only hand it ones that cannot overflow (a
	 * damaged record with absurd times counts as live here and is reported by verify). */
	const int64_t lim = INT64_C(1) << 61;
	int64_t la = uatomic_read(&r->last_accessed_at_ms);
	if (r->created_at_ms < -lim || r->created_at_ms > lim || la < -lim || la > lim || now < 0 ||
	    now > lim)
		return 0;
	return idx_rec_expired(r, now);
}

void shmctl_duration(char *out, size_t len, uint64_t ms)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {
		{ "d", 86400000 }, { "h", 3600000 }, { "m", 60000 }, { "s", 1000 }, { "ms", 1 }
	};
	if (ms == 0) {
		snprintf(out, len, "0s");
		return;
	}
	size_t o = 0;
	int shown = 0;
	out[0] = '\0';
	for (size_t i = 0; i < sizeof units / sizeof units[0] && shown < 2; i++) {
		uint64_t q = ms / units[i].ms;
		if (q == 0) {
			if (shown)
				break; /* "1h" rather than "1h0m" */
			continue;
		}
		ms -= q * units[i].ms;
		int n = snprintf(out + o, len > o ? len - o : 0, "%" PRIu64 "%s", q, units[i].unit);
		if (n > 0)
			o += (size_t)n;
		if (o >= len)
			break;
		shown++;
	}
}

void shmctl_age(char *out, size_t len, int64_t ts_ms, int64_t now)
{
	if (ts_ms == 0) {
		snprintf(out, len, "never");
		return;
	}
	int64_t d;
	if (__builtin_sub_overflow(now, ts_ms, &d) || d == INT64_MIN) {
		snprintf(out, len, "?");
		return;
	}
	char dur[48];
	uint64_t ad = d < 0 ? (uint64_t)-d : (uint64_t)d;
	ad -= ad % 1000; /* ages in whole seconds */
	shmctl_duration(dur, sizeof dur, ad);
	if (d < 0 && ad > 0)
		snprintf(out, len, "in %s", dur);
	else
		snprintf(out, len, "%s ago", dur);
}

/* "2024-05-01 12:00:00", ".123" when with_ms, then " CEST" (the zone in effect then). */
static void local_time(char *out, size_t len, int64_t ts_ms, int with_ms)
{
	if (ts_ms == 0) {
		snprintf(out, len, "-");
		return;
	}
	time_t t = (time_t)(ts_ms / 1000);
	struct tm tm;
	char day[32], zone[16];
	if (!localtime_r(&t, &tm) || !strftime(day, sizeof day, "%Y-%m-%d %H:%M:%S", &tm) ||
	    !strftime(zone, sizeof zone, "%Z", &tm)) {
		snprintf(out, len, "?");
		return;
	}
	if (with_ms)
		snprintf(out, len, "%s.%03d %s", day, (int)(ts_ms >= 0 ? ts_ms % 1000 : 0), zone);
	else
		snprintf(out, len, "%s %s", day, zone);
}

void shmctl_localtime(char *out, size_t len, int64_t ts_ms)
{
	local_time(out, len, ts_ms, 0);
}

void shmctl_localtime_ms(char *out, size_t len, int64_t ts_ms)
{
	local_time(out, len, ts_ms, 1);
}

void shmctl_bytes(char *out, size_t len, uint64_t bytes)
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB" };
	if (bytes < 1024) {
		snprintf(out, len, "%" PRIu64 " B", bytes);
		return;
	}
	double v = (double)bytes / 1024;
	size_t u = 0;
	while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
		v /= 1024;
		u++;
	}
	snprintf(out, len, "%.1f %s", v, units[u]);
}

cJSON *shmctl_json_u64_item(uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof buf, "%" PRIu64, v);
	return cJSON_CreateRaw(buf);
}

void shmctl_json_u64(cJSON *obj, const char *key, uint64_t v)
{
	char buf[24];
	snprintf(buf, sizeof buf, "%" PRIu64, v);
	cJSON_AddRawToObject(obj, key, buf);
}

void shmctl_json_i64(cJSON *obj, const char *key, int64_t v)
{
	char buf[24];
	snprintf(buf, sizeof buf, "%" PRId64, v);
	cJSON_AddRawToObject(obj, key, buf);
}

int shmctl_json_print(cJSON *doc, const char *verb)
{
	char *text = doc ? cJSON_Print(doc) : NULL;
	cJSON_Delete(doc);
	if (!text) {
		shmctl_fail(verb, "out of memory");
		return SHMCTL_UNAVAIL;
	}
	puts(text);
	cJSON_free(text);
	return SHMCTL_OK;
}

void shmctl_kv(const struct shmctl_kv *kv, const char *key, const char *fmt, ...)
{
	char val[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(val, sizeof val, fmt, ap);
	va_end(ap);
	printf("%*s: %s\n", kv->width, key, val);
}

/* ---- tables ---- */

/* Display width: code points (every byte that is not a UTF-8 continuation byte). */
static size_t text_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

void shmctl_table_init(struct shmctl_table *t, int ncols, const char *const *head,
		       const char *align)
{
	*t = (struct shmctl_table){ .ncols = ncols, .head = head, .align = align };
}

int shmctl_table_add(struct shmctl_table *t, const char *const *row)
{
	if (t->nrows == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 16;
		char **cells = realloc(t->cells, cap * (size_t)t->ncols * sizeof *cells);
		if (!cells)
			return -1;
		t->cells = cells;
		t->cap = cap;
	}
	char **dst = t->cells + t->nrows * (size_t)t->ncols;
	for (int c = 0; c < t->ncols; c++) {
		dst[c] = strdup(row[c] ? row[c] : "");
		if (!dst[c]) {
			while (c-- > 0)
				free(dst[c]);
			return -1;
		}
	}
	t->nrows++;
	return 0;
}

static void put_cell(FILE *f, const char *s, size_t width, char align, int last)
{
	size_t w = text_width(s);
	size_t pad = width > w ? width - w : 0;
	if (align == 'r')
		fprintf(f, "%*s", (int)pad, "");
	fputs(s, f);
	if (align != 'r' && !last)
		fprintf(f, "%*s", (int)pad, "");
	fputs(last ? "\n" : "  ", f);
}

void shmctl_table_print(const struct shmctl_table *t, FILE *f)
{
	size_t width[16] = { 0 };
	int ncols = t->ncols < 16 ? t->ncols : 16;
	for (int c = 0; c < ncols; c++)
		width[c] = text_width(t->head[c]);
	for (size_t r = 0; r < t->nrows; r++)
		for (int c = 0; c < ncols; c++) {
			size_t w = text_width(t->cells[r * (size_t)t->ncols + c]);
			if (w > width[c])
				width[c] = w;
		}
	for (int c = 0; c < ncols; c++)
		put_cell(f, t->head[c], width[c], t->align[c], c == ncols - 1);
	for (size_t r = 0; r < t->nrows; r++)
		for (int c = 0; c < ncols; c++)
			put_cell(f, t->cells[r * (size_t)t->ncols + c], width[c], t->align[c],
				 c == ncols - 1);
}

void shmctl_table_fini(struct shmctl_table *t)
{
	for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = t->cap = 0;
}

/* ---- figures shared by status and top ---- */

uint64_t shmctl_counter(const struct shmb_seg *seg, uint32_t i)
{
	const struct shmb_counter *c = seg_counter(seg, i);
	return c ? uatomic_read(&c->value) : 0;
}

const char *shmctl_broker_state(const struct shmb_seg *seg, int *alive)
{
	const struct shmb_seg_header *h = seg_hdr(seg);
	uint32_t state = uatomic_read(&h->broker_state);
	int32_t pid = uatomic_read(&h->broker_pid);
	uint64_t start = uatomic_read(&h->broker_starttime);
	*alive = state == SHMB_BROKER_RUNNING && pid > 0 && proc_alive(pid, start);
	if (*alive)
		return "running";
	if (state == SHMB_BROKER_RUNNING)
		return "dead";
	if (state == SHMB_BROKER_STOPPED)
		return "stopped";
	return "unknown";
}

void shmctl_summarize(const struct shmb_seg *seg, int64_t now, struct shmctl_summary *s)
{
	*s = (struct shmctl_summary){ 0 };
	for (uint32_t i = 0; i < seg->cfg.max_sessions; i++) {
		const struct shmb_session_rec *r = seg_rec(seg, i);
		switch (uatomic_read(&r->state)) {
		case SHMB_REC_FREE:
			s->sessions_free++;
			break;
		case SHMB_REC_LINKING:
			s->sessions_linking++;
			break;
		case SHMB_REC_LIVE:
			cmm_smp_rmb(); /* pairs with the broker's release store of LIVE */
			if (shmctl_rec_expired(r, now))
				s->sessions_expired++;
			else
				s->sessions_live++;
			break;
		case SHMB_REC_UNLINKING:
			s->sessions_unlinking++;
			break;
		case SHMB_REC_RETIRED:
			s->sessions_retired++;
			break;
		}
	}
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		uint32_t state = uatomic_read(&wk->state);
		if (state == SHMB_WORKER_FREE)
			continue; /* its count moved to SHMB_CTR_EVENTS_PUBLISHED_RETIRED */
		if (state == SHMB_WORKER_LIVE)
			s->workers_live++;
		else if (state == SHMB_WORKER_DEAD)
			s->workers_dead++;
		s->events_published += seg_worker_stats(seg, w).events_published;
	}
	s->events_published += shmctl_counter(seg, SHMB_CTR_EVENTS_PUBLISHED_RETIRED);
	s->rcu_gp = uatomic_read(&seg_hdr(seg)->rcu_gp);
	shmctl_broker_state(seg, &s->broker_alive);
}
