/* shmctl_dump.c - `shmctl dump [FILE]` and `shmctl restore FILE` (docs/shmctl.md, "dump").
 *
 * dump maps the segment read-only, like every inspection command, and writes one JSON document
 * (format_version 1) with every live session: id, tenant, principal, timestamps, TTLs, last
 * event id, attributes (base64 values) and the retained events (id, stream, kind, ts_ms, gap,
 * data as base64). Each record is copied consistently (shmctl_rec_snapshot) and its events are
 * read with the readers' validated copy (evr_read); a session deleted or recycled while it is
 * read is left out. A file is written beside its final name and renamed into place, mode 0600
 * (a dump holds every session's data).
 *
 * restore goes through the broker: each session is one "restore" request (docs/protocol.md). The
 * file is read whole (at most SHMCTL_DUMP_MAX bytes) and checked first: every session is sent
 * once with "dry_run": true, which the broker checks exactly as it would restore it (fields,
 * sizes, ring geometry, an id that already exists) without changing anything (a dry run's events
 * are cut from the oldest to fit one control message); only if every one passes are they
 * restored, each whole with shmb_session_restore (its events and attributes in a memfd), so the
 * broker places the attributes before it links the session: a session is never back without
 * them, and one whose attributes do not fit is refused, not half restored. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "b64.h"
#include "clock.h"
#include "ctl.h"
#include "evring.h"
#include "shmb.h"
#include "shmctl.h"
#include "sid.h"

#define SHMCTL_DUMP_FORMAT 1
#define SHMCTL_DUMP_MAX (256L * 1024 * 1024)

/* The retained events of record idx (live pointer r, generation gen) into arr. Returns 0, or -1
 * when the record changed under us. */
static int dump_events(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		       uint32_t gen, cJSON *arr, uint64_t *end)
{
	*end = 0;
	size_t cap = seg->cfg.max_event_bytes ? seg->cfg.max_event_bytes : 1;
	uint8_t *buf = malloc(cap);
	if (!buf)
		return -1;
	uint64_t last = uatomic_read(&r->next_id);
	uint64_t id = evr_oldest(seg, idx, r);
	int rc = 0;
	for (uint32_t steps = 0; id && id <= last && steps <= seg->cfg.ring_events; steps++) {
		struct shmb_event_desc d;
		int st = evr_read(seg, idx, r, id, &d, buf, cap);
		if (st == EVR_NOTYET)
			break; /* pending: the dump ends at the frontier */
		if (st == EVR_EVICTED) {
			uint64_t oldest = evr_oldest(seg, idx, r);
			id = oldest > id ? oldest : id + 1;
			continue;
		}
		if (st == EVR_CONT || st == EVR_CORRUPT) {
			id++;
			continue;
		}
		if (st == EVR_TOOSMALL) {
			uint8_t *nb = realloc(buf, d.len);
			if (!nb) {
				rc = -1;
				break;
			}
			buf = nb;
			cap = d.len;
			continue;
		}
		cJSON *e = cJSON_CreateObject();
		shmctl_json_u64(e, "id", id);
		shmctl_json_u64(e, "stream", d.stream);
		shmctl_json_u64(e, "kind", d.kind);
		shmctl_json_i64(e, "ts_ms", d.ts_ms);
		int gap = (d.flags & SHMB_EV_GAP) != 0;
		cJSON_AddBoolToObject(e, "gap", gap);
		if (!gap) {
			char *b = shmctl_base64(buf, d.len);
			cJSON_AddStringToObject(e, "data_base64", b ? b : "");
			free(b);
		}
		cJSON_AddItemToArray(arr, e);
		id += d.nslots ? d.nslots : 1;
		*end = id - 1; /* the last id this event takes */
	}
	free(buf);
	cmm_smp_rmb(); /* the ring reads before the generation check */
	if (uatomic_read(&r->gen) != gen || uatomic_read(&r->state) != SHMB_REC_LIVE)
		rc = -1;
	return rc;
}

/* A tenant or principal, exactly: the binding of a restored session is a hash of these bytes, so
 * a dump that changed one byte would bring the session back bound to another tenant (two tenants
 * "a\tb" and "a\xffb" both shown as "a?b" would even come back as one). Valid UTF-8 is written
 * as it is (cJSON escapes control characters); anything else as "<key>_base64" with the exact
 * bytes, beside "<key>" shown with '?' for people (restore uses the base64). */
static void binding_text(cJSON *s, const char *key, const char *p, uint32_t len, uint32_t cap)
{
	const uint8_t *u = (const uint8_t *)p;
	if (len > cap)
		len = cap;
	int exact = 1;
	for (uint32_t i = 0; i < len && exact;) {
		size_t n = shmctl_utf8_seq(u + i, len - i);
		exact = n > 0 && u[i] != 0;
		i += (uint32_t)n;
	}
	char text[4 * SHMB_PRINCIPAL_CAP + 1];
	if (exact) {
		memcpy(text, p, len);
		text[len] = '\0';
		cJSON_AddStringToObject(s, key, text);
		return;
	}
	shmctl_text(text, sizeof text, p, len, cap);
	cJSON_AddStringToObject(s, key, text);
	char k[32], *b = shmctl_base64(u, len);
	snprintf(k, sizeof k, "%s_base64", key);
	cJSON_AddStringToObject(s, k, b ? b : "");
	free(b);
}

static cJSON *dump_doc(const struct shmctl_opts *o, const struct shmb_seg *seg, uint32_t *count)
{
	cJSON *doc = cJSON_CreateObject();
	shmctl_json_u64(doc, "format_version", SHMCTL_DUMP_FORMAT);
	cJSON_AddStringToObject(doc, "name", o->name);
	char v[32];
	snprintf(v, sizeof v, "%u.%u", (unsigned)seg_hdr(seg)->layout_major,
		 (unsigned)seg_hdr(seg)->layout_minor);
	cJSON_AddStringToObject(doc, "layout_version", v);
	int64_t now = shmb_now_ms();
	shmctl_json_i64(doc, "dumped_at_ms", now);
	cJSON *cfg = cJSON_AddObjectToObject(doc, "ring");
	shmctl_json_u64(cfg, "ring_events", seg->cfg.ring_events);
	shmctl_json_u64(cfg, "ring_bytes", seg->cfg.ring_bytes);
	shmctl_json_u64(cfg, "max_event_bytes", seg->cfg.max_event_bytes);
	cJSON *arr = cJSON_AddArrayToObject(doc, "sessions");
	*count = 0;
	for (uint32_t i = 0; i < seg->cfg.max_sessions; i++) {
		struct shmb_session_rec *live = seg_rec(seg, i);
		struct shmb_session_rec r;
		if (uatomic_read(&live->state) != SHMB_REC_LIVE ||
		    shmctl_rec_snapshot(seg, i, &r) < 0 || r.state != SHMB_REC_LIVE ||
		    shmctl_rec_expired(&r, now))
			continue;
		cJSON *s = cJSON_CreateObject();
		char sid[2 * SHMB_SID_BYTES + 1];
		sid_format(r.sid, sid);
		cJSON_AddStringToObject(s, "id", sid);
		binding_text(s, "tenant", r.tenant, r.tenant_len, SHMB_TENANT_CAP);
		if (r.has_principal) {
			binding_text(s, "principal", r.principal, r.principal_len,
				     SHMB_PRINCIPAL_CAP);
		} else {
			cJSON_AddNullToObject(s, "principal");
		}
		shmctl_json_i64(s, "created_at_ms", r.created_at_ms);
		shmctl_json_i64(s, "last_accessed_at_ms", r.last_accessed_at_ms);
		shmctl_json_u64(s, "inactivity_ttl_ms", r.inactivity_ttl_ms);
		shmctl_json_u64(s, "absolute_ttl_ms", r.absolute_ttl_ms);
		shmctl_json_u64(s, "last_event_id", r.next_id);
		cJSON *ev = cJSON_AddArrayToObject(s, "events");
		uint64_t end;
		if (shmctl_attrs_dump(seg, i, r.gen, s) < 0 ||
		    dump_events(seg, i, live, r.gen, ev, &end) < 0) {
			cJSON_Delete(s); /* deleted or recycled meanwhile */
			continue;
		}
		/* Events published while we read: the last id covers every id the dumped ones take. */
		if (end > r.next_id)
			cJSON_ReplaceItemInObject(s, "last_event_id", shmctl_json_u64_item(end));
		cJSON_AddItemToArray(arr, s);
		(*count)++;
	}
	return doc;
}

int shmctl_cmd_dump(const struct shmctl_opts *o)
{
	struct shmb_seg seg;
	int rc = shmctl_open(o, "dump", &seg, NULL, NULL, 0);
	if (rc != SHMCTL_OK)
		return rc;
	uint32_t n;
	cJSON *doc = dump_doc(o, &seg, &n);
	seg_unmap(&seg);
	char *text = doc ? cJSON_Print(doc) : NULL;
	cJSON_Delete(doc);
	if (!text) {
		shmctl_fail("dump", "out of memory");
		return SHMCTL_UNAVAIL;
	}
	if (o->nargs == 0) {
		int ok = fputs(text, stdout) >= 0 && fputc('\n', stdout) != EOF &&
			 fflush(stdout) == 0;
		free(text);
		return ok ? SHMCTL_OK : SHMCTL_UNAVAIL;
	}
	const char *path = o->args[0];
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF && fflush(f) == 0 &&
		 fsync(fileno(f)) == 0;
	int e = errno;
	if (f)
		ok = fclose(f) == 0 && ok;
	else if (fd >= 0)
		close(fd);
	free(text);
	if (!ok || rename(tmp, path) < 0) {
		if (ok)
			e = errno;
		unlink(tmp);
		shmctl_fail("dump", "cannot write %s: %s", path, strerror(e));
		return SHMCTL_UNAVAIL;
	}
	fprintf(stderr, "shmctl: dump: %u session%s written to %s\n", n, n == 1 ? "" : "s", path);
	return SHMCTL_OK;
}

/* ---- restore ---- */

static char *read_file(const char *path, const char **err)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		*err = strerror(errno);
		return NULL;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	while (buf) {
		if (len + 1 >= cap) {
			if (cap >= (size_t)SHMCTL_DUMP_MAX) {
				*err = "larger than 256 MiB";
				free(buf);
				buf = NULL;
				break;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
		size_t n = fread(buf + len, 1, cap - 1 - len, f);
		len += n;
		if (n == 0)
			break;
	}
	if (buf && ferror(f)) {
		*err = strerror(errno);
		free(buf);
		buf = NULL;
	}
	if (!buf && !*err)
		*err = "out of memory";
	fclose(f);
	if (buf)
		buf[len] = '\0';
	return buf;
}

/* The dry-run request for session s (its events cut from the oldest until it fits one message:
 * the real pass sends them all, in a memfd, through shmb_session_restore). Returns the text
 * (free()), or NULL. */
static char *dry_run_request(const cJSON *s)
{
	cJSON *copy = cJSON_Duplicate(s, 1);
	if (!copy)
		return NULL;
	cJSON_DeleteItemFromObjectCaseSensitive(copy, "attributes");
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "restore");
	cJSON_AddTrueToObject(req, "dry_run");
	cJSON_AddItemToObject(req, "session", copy);
	cJSON *ev = cJSON_GetObjectItemCaseSensitive(copy, "events");
	for (;;) {
		char *text = cJSON_PrintUnformatted(req);
		if (!text || strlen(text) <= SHMB_CTL_MAX_MSG || !cJSON_IsArray(ev) ||
		    cJSON_GetArraySize(ev) == 0) {
			cJSON_Delete(req);
			return text;
		}
		free(text);
		cJSON_DeleteItemFromArray(ev, 0);
	}
}

/* Sends the dry run of every session (checks only, nothing changes) and lowers *free_records to
 * the fewest free session records a dry run reported. Returns SHMCTL_OK or a failure (printed). */
static int dry_run_pass(const struct shmctl_opts *o, const cJSON *sessions, uint32_t *done,
			uint32_t *free_records)
{
	char why[512];
	int fd = ctl_connect(o->name, why, sizeof why);
	if (fd < 0) {
		shmctl_fail("restore", "broker '%s' is not reachable: %s", o->name,
			    fd == SHMB_EACCES ? why : "nothing listens on its socket");
		return SHMCTL_UNAVAIL;
	}
	int i = 0, status = SHMCTL_OK;
	const cJSON *s;
	*done = 0;
	cJSON_ArrayForEach(s, sessions)
	{
		char *text = dry_run_request(s);
		if (!text) {
			shmctl_fail("restore", "out of memory");
			status = SHMCTL_UNAVAIL;
			break;
		}
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
		const char *sid = cJSON_IsString(id) ? id->valuestring : "?";
		cJSON *req = cJSON_Parse(text);
		free(text);
		cJSON *reply = NULL;
		int rc = req ? ctl_call(fd, req, &reply, NULL, 0, NULL) : SHMB_ENOMEM;
		cJSON_Delete(req);
		if (rc != 0) {
			const cJSON *m = reply ? cJSON_GetObjectItem(reply, "message") : NULL;
			shmctl_fail("restore", "sessions[%d] (%.40s): %s (%s)%s", i, sid,
				    cJSON_IsString(m) ? m->valuestring : shmb_strerror(rc),
				    shmb_err_name(rc), "; nothing was restored");
			cJSON_Delete(reply);
			status = rc == SHMB_EBROKER && !reply ? SHMCTL_UNAVAIL : 1;
			break;
		}
		const cJSON *fr = cJSON_GetObjectItem(reply, "free_records");
		if (cJSON_IsNumber(fr) && fr->valuedouble < (double)*free_records)
			*free_records = (uint32_t)fr->valuedouble;
		cJSON_Delete(reply);
		(*done)++;
		i++;
	}
	close(fd);
	return status;
}

/* A number field of a dump's session or event (the dry run checked types and ranges). */
static uint64_t u64_of(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
}

/* base64 text -> a new buffer (free()); -1 when it is not base64. */
static long b64_dup(const char *text, uint8_t **out)
{
	size_t cap = strlen(text) / 4 * 3 + 3;
	*out = malloc(cap);
	long n = *out ? b64_decode(text, *out, cap) : -1;
	if (n < 0) {
		free(*out);
		*out = NULL;
	}
	return n;
}

/* Restores one dumped session with shmb_session_restore: events and attributes travel whole to
 * the broker, which links the session only once everything is in (attributes included).
 * Returns what shmb_session_restore returns (SHMB_EINVAL for a payload that is not base64). */
static int restore_one(shmb_client *c, const cJSON *s)
{
	const cJSON *evs = cJSON_GetObjectItemCaseSensitive(s, "events");
	const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(s, "attributes");
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "principal");
	size_t ne = cJSON_IsArray(evs) ? (size_t)cJSON_GetArraySize(evs) : 0;
	size_t na = cJSON_IsArray(attrs) ? (size_t)cJSON_GetArraySize(attrs) : 0;
	shmb_image_event *ev = calloc(ne ? ne : 1, sizeof *ev);
	shmb_image_attr *at = calloc(na ? na : 1, sizeof *at);
	int rc = ev && at ? 0 : SHMB_ENOMEM;
	size_t i = 0, j = 0;
	const cJSON *e, *elist = ne ? evs : NULL, *alist = na ? attrs : NULL;
	cJSON_ArrayForEach(e, elist)
	{
		if (rc)
			break;
		shmb_image_event *x = &ev[i++];
		x->id = u64_of(e, "id");
		x->stream = (uint32_t)u64_of(e, "stream");
		x->kind = (uint16_t)u64_of(e, "kind");
		x->ts_ms = (int64_t)u64_of(e, "ts_ms");
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "gap"))) {
			x->flags = SHMB_EV_GAP;
			continue;
		}
		const cJSON *d = cJSON_GetObjectItemCaseSensitive(e, "data_base64");
		long len = cJSON_IsString(d) ? b64_dup(d->valuestring, (uint8_t **)&x->data) : -1;
		rc = len < 0 ? SHMB_EINVAL : 0;
		x->len = len < 0 ? 0 : (size_t)len;
	}
	cJSON_ArrayForEach(e, alist)
	{
		if (rc)
			break;
		shmb_image_attr *x = &at[j++];
		const cJSON *k = cJSON_GetObjectItem(e, "key"),
			    *v = cJSON_GetObjectItem(e, "value_base64");
		x->key = k->valuestring; /* checked before the dry run */
		long len = b64_dup(v->valuestring, (uint8_t **)&x->val);
		rc = len < 0 ? SHMB_EINVAL : 0;
		x->len = len < 0 ? 0 : (size_t)len;
	}
	if (rc == 0) {
		shmb_session_image img = {
			.sid = cJSON_GetObjectItemCaseSensitive(s, "id")->valuestring,
			.tenant = cJSON_GetObjectItemCaseSensitive(s, "tenant")->valuestring,
			.principal = cJSON_IsString(p) ? p->valuestring : NULL,
			.created_at_ms = (int64_t)u64_of(s, "created_at_ms"),
			.last_accessed_at_ms = (int64_t)u64_of(s, "last_accessed_at_ms"),
			.inactivity_ttl_ms = u64_of(s, "inactivity_ttl_ms"),
			.absolute_ttl_ms = u64_of(s, "absolute_ttl_ms"),
			.last_event_id = u64_of(s, "last_event_id"),
			.events = ev,
			.n_events = ne,
			.attrs = at,
			.n_attrs = na,
		};
		rc = shmb_session_restore(c, &img);
	}
	for (size_t k = 0; ev && k < i; k++)
		free((void *)ev[k].data);
	for (size_t k = 0; at && k < j; k++)
		free((void *)at[k].val);
	free(ev);
	free(at);
	return rc;
}

/* The real pass: every session (the dry run passed for all of them) restored whole. */
static int restore_all(const struct shmctl_opts *o, const cJSON *sessions, uint32_t *done,
		       uint32_t *nattrs)
{
	shmb_client *c = NULL;
	int rc = shmb_attach(o->name, &c);
	*done = *nattrs = 0;
	if (rc) {
		shmctl_fail("restore", "cannot attach to broker '%s': %s; nothing was restored",
			    o->name, shmb_strerror(rc));
		return rc == SHMB_EBROKER ? SHMCTL_UNAVAIL : 1;
	}
	int i = 0, status = SHMCTL_OK;
	const cJSON *s;
	cJSON_ArrayForEach(s, sessions)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
		rc = restore_one(c, s);
		if (rc < 0) {
			shmctl_fail("restore",
				    "sessions[%d] (%.40s): %s (%s); %u restored before it", i,
				    cJSON_IsString(id) ? id->valuestring : "?", shmb_strerror(rc),
				    shmb_err_name(rc), *done);
			status = rc == SHMB_EBROKER ? SHMCTL_UNAVAIL : 1;
			break;
		}
		if (rc > 0)
			fprintf(stderr,
				"shmctl: restore: session %s: %d older event%s left out (beyond the "
				"ring's window)\n",
				id->valuestring, rc, rc == 1 ? "" : "s");
		const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(s, "attributes");
		*nattrs += cJSON_IsArray(attrs) ? (uint32_t)cJSON_GetArraySize(attrs) : 0;
		(*done)++;
		i++;
	}
	shmb_detach(c);
	return status;
}

/* "<key>_base64" (binding_text), if present, decoded into "<key>": the exact bytes of a tenant or
 * principal that is not valid UTF-8. Returns 0, or -1 when it is not base64 of 1..cap bytes
 * without a NUL. */
static int binding_exact(cJSON *s, const char *key, size_t cap)
{
	char k[32];
	snprintf(k, sizeof k, "%s_base64", key);
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(s, k);
	if (!b)
		return 0;
	uint8_t raw[SHMB_PRINCIPAL_CAP + 1];
	long n = cJSON_IsString(b) && strlen(b->valuestring) <= 4 * (cap / 3 + 1)
			 ? b64_decode(b->valuestring, raw, cap)
			 : -1;
	if (n <= 0 || memchr(raw, 0, (size_t)n))
		return -1;
	raw[n] = '\0';
	cJSON *v = cJSON_CreateString((const char *)raw);
	if (!v)
		return -1;
	if (cJSON_GetObjectItemCaseSensitive(s, key))
		cJSON_ReplaceItemInObjectCaseSensitive(s, key, v);
	else
		cJSON_AddItemToObject(s, key, v);
	cJSON_DeleteItemFromObjectCaseSensitive(s, k);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcasecmp(*(const char *const *)a, *(const char *const *)b); /* hex: any case */
}

/* -1 (and *dup) when two sessions have the same id: each dry run passes alone (nothing is linked
 * yet), and the real pass would stop at the second with SHMB_ECONFLICT, half done. */
static int duplicate_id(const cJSON *sessions, const char **dup)
{
	*dup = NULL;
	size_t n = (size_t)cJSON_GetArraySize(sessions), k = 0;
	const char **ids = malloc((n ? n : 1) * sizeof *ids);
	if (!ids)
		return 0; /* the broker still refuses the second one */
	const cJSON *s;
	cJSON_ArrayForEach(s, sessions)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
		if (cJSON_IsString(id) && id->valuestring)
			ids[k++] = id->valuestring;
	}
	qsort(ids, k, sizeof *ids, cmp_str);
	for (size_t i = 1; i < k && !*dup; i++)
		if (strcasecmp(ids[i - 1], ids[i]) == 0)
			*dup = ids[i];
	free(ids);
	return *dup ? -1 : 0;
}

int shmctl_cmd_restore(const struct shmctl_opts *o)
{
	const char *err = NULL;
	char *text = read_file(o->args[0], &err);
	if (!text) {
		shmctl_fail("restore", "cannot read %s: %s", o->args[0], err);
		return SHMCTL_UNAVAIL;
	}
	cJSON *doc = cJSON_Parse(text);
	free(text);
	const cJSON *fv = doc ? cJSON_GetObjectItemCaseSensitive(doc, "format_version") : NULL;
	const cJSON *sessions = doc ? cJSON_GetObjectItemCaseSensitive(doc, "sessions") : NULL;
	const char *bad = !doc                                    ? "not valid JSON"
			  : !cJSON_IsObject(doc)                  ? "not a JSON object"
			  : !cJSON_IsNumber(fv)                   ? "no format_version"
			  : fv->valuedouble != SHMCTL_DUMP_FORMAT ? "an unknown format_version"
			  : !cJSON_IsArray(sessions)              ? "no sessions array"
								  : NULL;
	if (bad) {
		shmctl_fail("restore", "%s is not a shmctl dump: %s; nothing was restored",
			    o->args[0], bad);
		cJSON_Delete(doc);
		return SHMCTL_USAGE;
	}
	/* Attribute entries are checked here (the broker does not see them). */
	const cJSON *s;
	const char *dup;
	int i = 0;
	cJSON_ArrayForEach(s, sessions)
	{
		const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(s, "attributes");
		const cJSON *a, *list = cJSON_IsArray(attrs) ? attrs : NULL;
		int ok = !attrs || list;
		cJSON_ArrayForEach(a, list)
		{
			const cJSON *k = cJSON_GetObjectItem(a, "key");
			const cJSON *v = cJSON_GetObjectItem(a, "value_base64");
			ok = ok && cJSON_IsString(k) && cJSON_IsString(v) &&
			     strlen(k->valuestring) <= SHMB_ATTR_KEY_CAP &&
			     strlen(v->valuestring) <= 4 * (SHMB_ATTR_MAX / 3 + 1) &&
			     b64_decode(v->valuestring, NULL, 0) >= 0;
		}
		if (!ok) {
			shmctl_fail("restore",
				    "sessions[%d]: 'attributes' must be an array of {key, "
				    "value_base64}; nothing was restored",
				    i);
			cJSON_Delete(doc);
			return SHMCTL_USAGE;
		}
		if (cJSON_IsObject(s) &&
		    (binding_exact((cJSON *)s, "tenant", SHMB_TENANT_CAP) < 0 ||
		     binding_exact((cJSON *)s, "principal", SHMB_PRINCIPAL_CAP) < 0)) {
			shmctl_fail("restore",
				    "sessions[%d]: 'tenant_base64' and 'principal_base64' must be "
				    "base64 of a tenant or principal (no NUL byte); nothing was "
				    "restored",
				    i);
			cJSON_Delete(doc);
			return SHMCTL_USAGE;
		}
		i++;
	}
	if (duplicate_id(sessions, &dup) < 0) {
		shmctl_fail("restore", "%s holds session %.40s twice; nothing was restored",
			    o->args[0], dup ? dup : "?");
		cJSON_Delete(doc);
		return SHMCTL_USAGE;
	}
	uint32_t n = 0, na = 0, room = UINT32_MAX;
	int rc = dry_run_pass(o, sessions, &n, &room);
	if (rc == SHMCTL_OK && n > room) {
		/* Each dry run proved that one more session fits, not all of them: without this the
		 * restore would stop at the first SHMB_EFULL, half done, the sessions before it
		 * without their attributes and the file no longer restorable (they conflict). */
		shmctl_fail(
			"restore",
			"%s holds %u sessions, but the broker has room for %u more (max_sessions "
			"of the segment, shmctl status); nothing was restored",
			o->args[0], n, room);
		rc = 1;
		n = 0;
	}
	if (rc == SHMCTL_OK)
		rc = restore_all(o, sessions, &n, &na);
	if (o->json) {
		cJSON *out = cJSON_CreateObject();
		shmctl_json_u64(out, "schema_version", SHMCTL_SCHEMA_VERSION);
		shmctl_json_u64(out, "restored", n);
		shmctl_json_u64(out, "attributes", na);
		shmctl_json_print(out, "restore");
	} else if (rc == SHMCTL_OK) {
		printf("restored %u session%s (%u attribute%s)\n", n, n == 1 ? "" : "s", na,
		       na == 1 ? "" : "s");
	}
	cJSON_Delete(doc);
	return rc;
}
