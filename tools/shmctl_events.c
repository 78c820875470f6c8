/* shmctl_events.c - `shmctl events SID [--after N] [--stream S] [--follow]`: a session's events
 * read from a read-only mapping, with the validated reads of common/evring.h.
 *
 * shmctl holds no RCU reader slot, so the record could be recycled under it. The session's
 * generation is the guard: it is read when the session is found and re-checked (with state LIVE)
 * after every ring read, and the broker bumps it before it clears the ring for a new session, so
 * an event read while the generation held belonged to this session. Any change ends the read as
 * "session gone". --follow polls every 50 ms (subscribing would mean writing to the segment).
 * Eviction is reported once per jump, as a cursor reports SHMB_EOVERRUN ("lagged"). */
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "clock.h"
#include "evring.h"
#include "index.h"
#include "seg.h"
#include "shmb.h"
#include "shmctl.h"
#include "sid.h"

#define EVENTS_POLL_MS 50

static volatile sig_atomic_t events_stop;

static void on_signal(int sig)
{
	(void)sig;
	events_stop = 1;
}

struct reader {
	const struct shmctl_opts *o;
	const struct shmb_seg *seg;
	uint32_t idx, gen;
	const struct shmb_session_rec *r; /* in the mapping */
	char sid[2 * SHMB_SID_BYTES + 1];
	uint8_t *buf;
	size_t cap;
	uint64_t lagged; /* total ids skipped because they were evicted */
	int idw;         /* width of the id column (human output) */
	cJSON *events;   /* --json without --follow: the array being built */
};

/* 1 while the record still holds the session we found (same generation, LIVE, not expired). */
static int still_ours(const struct reader *rd)
{
	cmm_smp_rmb(); /* the ring reads before are ordered before these loads */
	return uatomic_read(&rd->r->gen) == rd->gen &&
	       uatomic_read(&rd->r->state) == SHMB_REC_LIVE &&
	       !shmctl_rec_expired(rd->r, shmb_now_ms());
}

static int utf8_valid(const uint8_t *s, size_t n)
{
	for (size_t i = 0, k; i < n; i += k)
		if (!(k = shmctl_utf8_seq(s + i, n - i)))
			return 0;
	return 1;
}

static char *base64(const uint8_t *s, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char *out = malloc(4 * ((n + 2) / 3) + 1), *p = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
			     (i + 2 < n ? s[i + 2] : 0);
		*p++ = tab[v >> 18 & 63];
		*p++ = tab[v >> 12 & 63];
		*p++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
		*p++ = i + 2 < n ? tab[v & 63] : '=';
	}
	*p = '\0';
	return out;
}

static int digit_at(const uint8_t *s, size_t n, size_t k)
{
	return k < n && s[k] >= '0' && s[k] <= '9';
}

/* Index just past the digits of s from k on. */
static size_t skip_digits(const uint8_t *s, size_t n, size_t k)
{
	while (digit_at(s, n, k))
		k++;
	return k;
}

/* 1 when s[0..n) is a JSON number token as RFC 8259 spells it. (cJSON hands any run of
 * "0-9+-.eE" to strtod, so it also takes "01", "1." and "-.5".) */
static int json_number_ok(const uint8_t *s, size_t n)
{
	size_t i = 0;
	if (i < n && s[i] == '-')
		i++;
	if (i < n && s[i] == '0')
		i++;
	else if (digit_at(s, n, i))
		i = skip_digits(s, n, i);
	else
		return 0;
	if (i < n && s[i] == '.') {
		if (!digit_at(s, n, ++i))
			return 0;
		i = skip_digits(s, n, i);
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (!digit_at(s, n, i))
			return 0;
		i = skip_digits(s, n, i);
	}
	return i == n;
}

static int json_ws(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* 1 when c (not NUL) is one of set. */
static int in_set(uint8_t c, const char *set)
{
	return c && strchr(set, c);
}

/* The payload as JSON text, or NULL when it is not JSON (or out of memory). A payload is JSON
 * when the whole of it is one JSON value: cJSON parses it with nothing but whitespace after,
 * and it is strict RFC 8259 text (valid UTF-8, no control bytes inside strings, numbers as the
 * grammar spells them, whitespace only space, tab, CR, LF), which cJSON alone does not check.
 * The result is the original bytes minus the whitespace outside strings: one line, numbers and
 * strings exactly as published (never re-printed through doubles). Free with free(). */
static char *payload_json(const uint8_t *s, size_t n)
{
	if (n == 0)
		return NULL;
	const char *end = NULL;
	cJSON *j = cJSON_ParseWithLengthOpts((const char *)s, n, &end, 0);
	cJSON_Delete(j);
	if (!j || !end || end < (const char *)s || end > (const char *)s + n)
		return NULL;
	for (const uint8_t *t = (const uint8_t *)end; t < s + n; t++)
		if (!json_ws(*t))
			return NULL; /* a value followed by something else */
	size_t stop = (size_t)((const uint8_t *)end - s);
	char *out = malloc(stop + 1);
	if (!out)
		return NULL;
	size_t o = 0, i = 0;
	while (i < stop) {
		uint8_t c = s[i];
		if (json_ws(c)) {
			i++;
		} else if (c == '"') {
			out[o++] = (char)s[i++];
			for (;;) {
				if (i >= stop)
					goto bad;
				c = s[i];
				size_t k = c == '\\' ? 2 : shmctl_utf8_seq(s + i, stop - i);
				if (c < 0x20 || k == 0 || i + k > stop)
					goto bad;
				memcpy(out + o, s + i, k);
				o += k;
				i += k;
				if (c == '"')
					break;
			}
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			size_t k = i;
			while (k < stop && in_set(s[k], "0123456789+-.eE"))
				k++;
			if (!json_number_ok(s + i, k - i))
				goto bad;
			memcpy(out + o, s + i, k - i);
			o += k - i;
			i = k;
		} else if (in_set(c, "{}[],:truefalsn")) {
			out[o++] = (char)s[i++]; /* structure and literals: cJSON checked them */
		} else {
			goto bad;
		}
	}
	out[o] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

/* Prints payload s for a person: JSON (payload_json) as it was published, on one line; anything
 * else as a quoted string with C escapes (\n, \t, \", \\, \xNN for control and non-UTF-8
 * bytes). */
static void print_payload(FILE *f, const uint8_t *s, size_t n)
{
	char *text = payload_json(s, n);
	if (text) {
		fputs(text, f);
		free(text);
		return;
	}
	fputc('"', f);
	for (size_t i = 0, k; i < n; i += k) {
		uint8_t c = s[i];
		k = shmctl_utf8_seq(s + i, n - i);
		if (k > 1) {
			fwrite(s + i, 1, k, f);
			continue;
		}
		k = 1;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c == '\r')
			fputs("\\r", f);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\x%02x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static cJSON *event_json(const struct shmb_event_desc *d, uint64_t id, const uint8_t *data)
{
	int gap = (d->flags & SHMB_EV_GAP) != 0;
	cJSON *e = cJSON_CreateObject();
	shmctl_json_u64(e, "id", id);
	shmctl_json_u64(e, "stream", d->stream);
	shmctl_json_u64(e, "kind", d->kind);
	shmctl_json_u64(e, "flags", d->flags);
	cJSON_AddBoolToObject(e, "gap", gap);
	shmctl_json_i64(e, "ts_ms", d->ts_ms);
	shmctl_json_u64(e, "len", gap ? 0 : d->len);
	if (gap)
		return e;
	char *js = payload_json(data, d->len);
	if (js) {
		/* Verbatim: validated as one complete JSON value, so the document stays valid. */
		cJSON_AddItemToObject(e, "data", cJSON_CreateRaw(js));
		free(js);
	} else if (utf8_valid(data, d->len) && !memchr(data, '\0', d->len)) {
		char *t = strndup((const char *)data, d->len);
		cJSON_AddStringToObject(e, "text", t ? t : "");
		free(t);
	} else {
		char *b = base64(data, d->len);
		cJSON_AddStringToObject(e, "base64", b ? b : "");
		free(b);
	}
	return e;
}

static void emit_event(struct reader *rd, const struct shmb_event_desc *d, uint64_t id)
{
	if (rd->o->json) {
		cJSON *e = event_json(d, id, rd->buf);
		if (rd->events) {
			cJSON_AddItemToArray(rd->events, e);
			return;
		}
		char *t = cJSON_PrintUnformatted(e); /* --follow: one JSON object per line */
		cJSON_Delete(e);
		if (t)
			puts(t);
		cJSON_free(t);
		fflush(stdout);
		return;
	}
	char when[64];
	shmctl_localtime_ms(when, sizeof when, d->ts_ms);
	printf("%*" PRIu64 "  %s  stream %u  kind %u  ", rd->idw, id, when, d->stream, d->kind);
	if (d->flags & SHMB_EV_GAP)
		fputs("(gap: the publisher died before committing)", stdout);
	else
		print_payload(stdout, rd->buf, d->len);
	fputc('\n', stdout);
	if (rd->o->follow)
		fflush(stdout);
}

static void emit_lagged(struct reader *rd, uint64_t n, uint64_t resume)
{
	rd->lagged += n;
	if (rd->o->json) {
		if (rd->events)
			return; /* counted in the document's "lagged" */
		printf("{\"lagged\":%" PRIu64 ",\"resume_id\":%" PRIu64 "}\n", n, resume);
		fflush(stdout);
		return;
	}
	printf("(lagged: %" PRIu64 " event id%s evicted before they could be read; continuing at "
	       "%" PRIu64 ")\n",
	       n, n == 1 ? " was" : "s were", resume);
}

static void nap(void)
{
	struct timespec ts = { .tv_nsec = EVENTS_POLL_MS * 1000000L };
	nanosleep(&ts, NULL);
}

/* Reads from after + 1 on. Returns SHMCTL_OK, SHMCTL_NOTFOUND (session gone) or
 * SHMCTL_UNAVAIL (out of memory). */
static int read_events(struct reader *rd)
{
	const struct shmb_seg *seg = rd->seg;
	uint64_t pos = rd->o->after;
	while (!events_stop) {
		if (!still_ours(rd))
			return SHMCTL_NOTFOUND;
		uint64_t id = pos + 1;
		if (id <= pos || id > uatomic_read(&rd->r->next_id)) {
			if (!rd->o->follow)
				return SHMCTL_OK;
			nap();
			continue;
		}
		struct shmb_event_desc d;
		int st = evr_read(seg, rd->idx, rd->r, id, &d, rd->buf, rd->cap);
		if (!still_ours(rd))
			return SHMCTL_NOTFOUND; /* what we read may belong to a recycled record */
		switch (st) {
		case EVR_NOTYET:
			/* Claimed, not committed yet (or a dead publisher's, about to become a
			 * gap). */
			if (!rd->o->follow)
				return SHMCTL_OK;
			nap();
			continue;
		case EVR_EVICTED: {
			uint64_t oldest = evr_oldest(seg, rd->idx, rd->r);
			uint64_t resume = oldest > id ? oldest : id + 1;
			emit_lagged(rd, resume - id, resume);
			pos = resume - 1;
			continue;
		}
		case EVR_CONT:
			pos = id; /* the tail of an event whose head we did not start at */
			continue;
		case EVR_CORRUPT:
			fprintf(stderr,
				"shmctl: events: event %" PRIu64
				": descriptor is damaged (shmctl verify); "
				"skipped\n",
				id);
			pos = id;
			continue;
		case EVR_TOOSMALL: {
			/* evr_read bounds len by the event's slots, so this is at most ring_bytes. */
			uint8_t *nb = realloc(rd->buf, d.len);
			if (!nb) {
				shmctl_fail("events", "out of memory");
				return SHMCTL_UNAVAIL;
			}
			rd->buf = nb;
			rd->cap = d.len;
			continue;
		}
		}
		uint64_t last = id + (d.nslots ? d.nslots : 1) - 1;
		int gap = (d.flags & SHMB_EV_GAP) != 0;
		if (!(rd->o->has_stream && !gap && d.stream != rd->o->stream))
			emit_event(rd, &d, id);
		pos = last < id ? id : last;
	}
	return SHMCTL_OK;
}

int shmctl_cmd_events(const struct shmctl_opts *o)
{
	uint8_t sid[SHMB_SID_BYTES];
	if (sid_parse(o->args[0], sid) < 0)
		return shmctl_usage_error(
			"events: invalid session id '%s' (expected %d hex characters)", o->args[0],
			2 * SHMB_SID_BYTES);
	struct shmb_seg seg;
	int rc = shmctl_open(o, "events", &seg, NULL, NULL, 0);
	if (rc)
		return rc;
	struct reader rd = { .o = o, .seg = &seg };
	sid_format(sid, rd.sid);

	/* Find the session as a client would, and pin its generation. */
	int64_t found = idx_find(&seg, sid);
	struct shmb_session_rec copy;
	if (found < 0 || shmctl_rec_snapshot(&seg, (uint32_t)found, &copy) < 0 ||
	    copy.state != SHMB_REC_LIVE || !sid_equal(copy.sid, sid) ||
	    shmctl_rec_expired(&copy, shmb_now_ms())) {
		if (found == -2)
			shmctl_fail("events", "the bucket chain of %s is damaged (shmctl verify)",
				    rd.sid);
		else
			shmctl_fail("events", "no session %s", rd.sid);
		seg_unmap(&seg);
		return found == -2 ? SHMCTL_UNAVAIL : SHMCTL_NOTFOUND;
	}
	rd.idx = (uint32_t)found;
	rd.gen = copy.gen;
	rd.r = seg_rec(&seg, rd.idx);
	char digits[24];
	rd.idw =
		snprintf(digits, sizeof digits, "%" PRIu64, (uint64_t)uatomic_read(&rd.r->next_id));
	rd.cap = seg.cfg.max_event_bytes;
	rd.buf = malloc(rd.cap);
	if (!rd.buf) {
		seg_unmap(&seg);
		shmctl_fail("events", "out of memory");
		return SHMCTL_UNAVAIL;
	}
	if (o->json && !o->follow)
		rd.events = cJSON_CreateArray();

	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	if (o->follow) {
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
	}
	rc = read_events(&rd);
	if (rc == SHMCTL_NOTFOUND)
		shmctl_fail("events", "session %s was deleted or expired", rd.sid);

	if (rd.events) {
		cJSON *doc = cJSON_CreateObject();
		shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
		cJSON_AddStringToObject(doc, "id", rd.sid);
		shmctl_json_u64(doc, "after", o->after);
		if (o->has_stream)
			shmctl_json_u64(doc, "stream", o->stream);
		shmctl_json_u64(doc, "last_event_id", uatomic_read(&rd.r->next_id));
		shmctl_json_u64(doc, "lagged", rd.lagged);
		cJSON_AddItemToObject(doc, "events", rd.events);
		int prc = shmctl_json_print(doc, "events");
		if (rc == SHMCTL_OK)
			rc = prc;
	}
	free(rd.buf);
	seg_unmap(&seg);
	return rc;
}

/* ---- payload rendering shared with `shmctl show`'s attributes (shmctl_attrs.c) ---- */

char *shmctl_payload_json(const uint8_t *s, size_t n)
{
	return payload_json(s, n);
}

void shmctl_print_payload(FILE *f, const uint8_t *s, size_t n)
{
	print_payload(f, s, n);
}

int shmctl_payload_text(const uint8_t *s, size_t n)
{
	return utf8_valid(s, n) && !memchr(s, '\0', n);
}

char *shmctl_base64(const uint8_t *s, size_t n)
{
	return base64(s, n);
}
