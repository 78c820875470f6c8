/* shmctl_status.c - `shmctl status` and `shmctl workers`: the header, the counters and the worker
 * table, read from a read-only mapping (no broker needed; status then still prints everything,
 * and exits 3 when the broker is not running). Worker slots are copied like records:
 * state and generation before and after, a slot that changed mid-copy is retried, then shown as
 * it was last read (its fields are only displayed, never followed). */
#include <inttypes.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "clock.h"
#include "proc.h"
#include "seg.h"
#include "shmctl.h"

static cJSON *config_json(const struct shmb_seg_config *c)
{
	cJSON *o = cJSON_CreateObject();
#define CFG_JSON(f) shmctl_json_u64(o, #f, c->f);
	CFG_JSON(max_sessions)
	CFG_JSON(n_buckets)
	CFG_JSON(max_workers)
	CFG_JSON(readers_per_worker)
	CFG_JSON(ring_events)
	CFG_JSON(ring_bytes)
	CFG_JSON(max_event_bytes)
	CFG_JSON(max_tenant_len)
	CFG_JSON(max_principal_len)
	CFG_JSON(sweep_interval_ms)
	CFG_JSON(inactivity_ttl_ms)
	CFG_JSON(absolute_ttl_ms)
	CFG_JSON(max_inactivity_ttl_ms)
	CFG_JSON(max_absolute_ttl_ms)
	CFG_JSON(node_id)
#undef CFG_JSON
	return o;
}

/* Label of counter i, or NULL when empty or not NUL-terminated. */
static const char *counter_label(const struct shmb_seg *seg, uint32_t i, char *buf, size_t len)
{
	const struct shmb_counter *c = seg_counter(seg, i);
	if (!c || !memchr(c->label, '\0', sizeof c->label) || !c->label[0])
		return NULL;
	shmctl_text(buf, len, c->label, (uint32_t)strlen(c->label), sizeof c->label);
	return buf;
}

static int status_json(const struct shmctl_opts *o, const struct shmb_seg *seg,
		       const struct shmctl_summary *s, const char *bstate)
{
	const struct shmb_seg_header *h = seg_hdr(seg);
	char buf[96];
	cJSON *doc = cJSON_CreateObject();
	shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
	cJSON_AddStringToObject(doc, "name", o->name);
	seg_shm_name(o->name, buf, sizeof buf);
	cJSON_AddStringToObject(doc, "shm_name", buf);
	snprintf(buf, sizeof buf, "%u.%u", (unsigned)h->layout_major, (unsigned)h->layout_minor);
	cJSON_AddStringToObject(doc, "layout_version", buf);
	shmctl_json_u64(doc, "segment_bytes", seg->size);
	shmctl_json_i64(doc, "created_at_ms", h->created_at_ms);
	shmctl_json_u64(doc, "node_id", seg->cfg.node_id);
	struct shmctl_pages pg;
	shmctl_pages(o, seg, &pg);
	cJSON_AddStringToObject(doc, "segment_path", pg.path);
	shmctl_json_u64(doc, "page_size", pg.page_size);
	shmctl_json_u64(doc, "huge_mapped_bytes", pg.huge_mapped_bytes);
	cJSON_AddStringToObject(doc, "huge_pages", pg.setting);

	cJSON *b = cJSON_AddObjectToObject(doc, "broker");
	shmctl_json_i64(b, "pid", uatomic_read(&h->broker_pid));
	cJSON_AddBoolToObject(b, "alive", s->broker_alive);
	cJSON_AddStringToObject(b, "state", bstate);
	shmctl_json_u64(b, "generation", uatomic_read(&h->broker_generation));
	shmctl_json_i64(b, "started_at_ms", uatomic_read(&h->broker_started_ms));
	shmctl_json_i64(b, "heartbeat_ms", uatomic_read(&h->heartbeat_ms));

	cJSON *ss = cJSON_AddObjectToObject(doc, "sessions");
	shmctl_json_u64(ss, "live", s->sessions_live);
	shmctl_json_u64(ss, "max", seg->cfg.max_sessions);
	shmctl_json_u64(ss, "expired", s->sessions_expired);
	shmctl_json_u64(ss, "retired", s->sessions_retired);
	shmctl_json_u64(ss, "linking", s->sessions_linking);
	shmctl_json_u64(ss, "unlinking", s->sessions_unlinking);
	shmctl_json_u64(ss, "free", s->sessions_free);

	cJSON *w = cJSON_AddObjectToObject(doc, "workers");
	shmctl_json_u64(w, "attached", s->workers_live);
	shmctl_json_u64(w, "max", seg->cfg.max_workers);
	shmctl_json_u64(w, "dead", s->workers_dead);

	shmctl_json_u64(doc, "events_published", s->events_published);
	shmctl_json_u64(doc, "rcu_gp", s->rcu_gp);
	cJSON_AddBoolToObject(doc, "membarrier", (seg->flags & SHMB_SEG_F_MEMBARRIER) != 0);
	cJSON_AddItemToObject(doc, "config", config_json(&seg->cfg));
	cJSON *ctrs = cJSON_AddObjectToObject(doc, "counters");
	for (uint32_t i = 0; i < SHMB_COUNTER_COUNT; i++) {
		char label[64];
		if (counter_label(seg, i, label, sizeof label) &&
		    !cJSON_GetObjectItemCaseSensitive(ctrs, label))
			shmctl_json_u64(ctrs, label, shmctl_counter(seg, i));
	}
	return shmctl_json_print(doc, "status");
}

static void status_human(const struct shmctl_opts *o, const struct shmb_seg *seg,
			 const struct shmctl_summary *s, const char *bstate, int64_t now)
{
	const struct shmb_seg_header *h = seg_hdr(seg);
	const struct shmctl_kv kv = { .width = 16 };
	char shm[96], size[32], t1[40], t2[48];
	seg_shm_name(o->name, shm, sizeof shm);
	shmctl_bytes(size, sizeof size, seg->size);
	shmctl_localtime(t1, sizeof t1, h->created_at_ms);

	shmctl_kv(&kv, "name", "%s", o->name);
	shmctl_kv(&kv, "segment", "%s, %" PRIu64 " bytes (%s), layout %u.%u, created %s", shm,
		  seg->size, size, (unsigned)h->layout_major, (unsigned)h->layout_minor, t1);
	if (seg->cfg.node_id)
		shmctl_kv(&kv, "node_id", "%u (session ids start with %04x)", seg->cfg.node_id,
			  seg->cfg.node_id);
	else
		shmctl_kv(&kv, "node_id", "0 (none: session ids are untagged)");
	struct shmctl_pages pg;
	char hm[32];
	shmctl_pages(o, seg, &pg);
	shmctl_bytes(hm, sizeof hm, pg.huge_mapped_bytes);
	shmctl_kv(&kv, "path", "%s", pg.path);
	shmctl_kv(&kv, "pages", "%" PRIu64 " bytes (%s; %s mapped as huge pages)", pg.page_size,
		  pg.setting, hm);

	int32_t pid = uatomic_read(&h->broker_pid);
	if (s->broker_alive)
		shmctl_kv(&kv, "broker", "running (pid %d)", pid);
	else if (pid > 0)
		shmctl_kv(&kv, "broker", "%s (last pid %d)", bstate, pid);
	else
		shmctl_kv(&kv, "broker", "%s", bstate);
	shmctl_kv(&kv, "alive", "%s", s->broker_alive ? "true" : "false");
	if (!s->broker_alive && !strcmp(bstate, "dead"))
		shmctl_kv(&kv, "note",
			  "the broker died and none is running; workers still look up, publish "
			  "and read, but create, delete and attach fail until one is back: "
			  "restart shmbrokerd --name %s to adopt this segment",
			  o->name);
	else if (!s->broker_alive)
		shmctl_kv(&kv, "note",
			  "no broker is running; start shmbrokerd --name %s to adopt this segment",
			  o->name);
	shmctl_kv(&kv, "generation", "%" PRIu64, (uint64_t)uatomic_read(&h->broker_generation));
	int64_t started = uatomic_read(&h->broker_started_ms);
	shmctl_localtime(t1, sizeof t1, started);
	shmctl_age(t2, sizeof t2, started, now);
	shmctl_kv(&kv, "started", "%s (%s)", t1, t2);
	shmctl_age(t2, sizeof t2, uatomic_read(&h->heartbeat_ms), now);
	shmctl_kv(&kv, "heartbeat", "%s", t2);

	char extra[160] = "";
	size_t n = 0;
	if (s->sessions_expired)
		n += (size_t)snprintf(extra + n, sizeof extra - n,
				      ", %u expired awaiting the sweeper", s->sessions_expired);
	if (s->sessions_retired && n < sizeof extra)
		n += (size_t)snprintf(extra + n, sizeof extra - n,
				      ", %u retired awaiting a grace period", s->sessions_retired);
	if (s->sessions_linking + s->sessions_unlinking && n < sizeof extra)
		snprintf(extra + n, sizeof extra - n, ", %u being linked or unlinked",
			 s->sessions_linking + s->sessions_unlinking);
	shmctl_kv(&kv, "sessions", "%u live of %u%s", s->sessions_live, seg->cfg.max_sessions,
		  extra);
	if (s->workers_dead)
		shmctl_kv(&kv, "workers", "%u attached of %u, %u dead being cleaned up",
			  s->workers_live, seg->cfg.max_workers, s->workers_dead);
	else
		shmctl_kv(&kv, "workers", "%u attached of %u", s->workers_live,
			  seg->cfg.max_workers);
	shmctl_kv(&kv, "events published", "%" PRIu64, s->events_published);
	shmctl_kv(&kv, "rcu gp", "%" PRIu64 "%s", s->rcu_gp,
		  (seg->flags & SHMB_SEG_F_MEMBARRIER) ? " (readers rely on membarrier)" : "");

	const struct shmb_seg_config *c = &seg->cfg;
	const struct shmctl_kv ckv = { .width = 18 };
	char d1[32], d2[32];
	printf("\nconfiguration:\n");
	shmctl_kv(&ckv, "max_sessions", "%u", c->max_sessions);
	shmctl_kv(&ckv, "n_buckets", "%u", c->n_buckets);
	shmctl_kv(&ckv, "max_workers", "%u", c->max_workers);
	shmctl_kv(&ckv, "readers_per_worker", "%u", c->readers_per_worker);
	shmctl_kv(&ckv, "ring_events", "%u", c->ring_events);
	shmctl_bytes(d1, sizeof d1, c->ring_bytes);
	shmctl_kv(&ckv, "ring_bytes", "%u (%s)", c->ring_bytes, d1);
	shmctl_kv(&ckv, "max_event_bytes", "%u", c->max_event_bytes);
	shmctl_kv(&ckv, "max_tenant_len", "%u", c->max_tenant_len);
	shmctl_kv(&ckv, "max_principal_len", "%u", c->max_principal_len);
	shmctl_kv(&ckv, "sweep_interval_ms", "%u", c->sweep_interval_ms);
	shmctl_duration(d1, sizeof d1, c->inactivity_ttl_ms);
	shmctl_kv(&ckv, "inactivity_ttl_ms", "%" PRIu64 " (%s)", c->inactivity_ttl_ms,
		  c->inactivity_ttl_ms ? d1 : "never");
	shmctl_duration(d2, sizeof d2, c->absolute_ttl_ms);
	shmctl_kv(&ckv, "absolute_ttl_ms", "%" PRIu64 " (%s)", c->absolute_ttl_ms,
		  c->absolute_ttl_ms ? d2 : "never");
	shmctl_duration(d1, sizeof d1, c->max_inactivity_ttl_ms);
	shmctl_kv(&ckv, "max_inactivity_ttl_ms", "%" PRIu64 " (%s)", c->max_inactivity_ttl_ms,
		  c->max_inactivity_ttl_ms ? d1 : "no limit");
	shmctl_duration(d2, sizeof d2, c->max_absolute_ttl_ms);
	shmctl_kv(&ckv, "max_absolute_ttl_ms", "%" PRIu64 " (%s)", c->max_absolute_ttl_ms,
		  c->max_absolute_ttl_ms ? d2 : "no limit");
	shmctl_kv(&ckv, "node_id", "%u", c->node_id);

	int width = 0;
	char label[64];
	for (uint32_t i = 0; i < SHMB_COUNTER_COUNT; i++)
		if (counter_label(seg, i, label, sizeof label) && (int)strlen(label) > width)
			width = (int)strlen(label);
	if (width) {
		const struct shmctl_kv nkv = { .width = width };
		printf("\ncounters:\n");
		for (uint32_t i = 0; i < SHMB_COUNTER_COUNT; i++)
			if (counter_label(seg, i, label, sizeof label))
				shmctl_kv(&nkv, label, "%" PRIu64, shmctl_counter(seg, i));
	}
}

int shmctl_cmd_status(const struct shmctl_opts *o)
{
	struct shmb_seg seg;
	int rc = shmctl_open(o, "status", &seg, NULL, NULL, 0);
	if (rc)
		return rc;
	int64_t now = shmb_now_ms();
	struct shmctl_summary s;
	shmctl_summarize(&seg, now, &s);
	int alive;
	const char *bstate = shmctl_broker_state(&seg, &alive);
	if (o->json)
		rc = status_json(o, &seg, &s, bstate);
	else
		status_human(o, &seg, &s, bstate, now);
	int32_t pid = uatomic_read(&seg_hdr(&seg)->broker_pid);
	seg_unmap(&seg);
	/* The segment's figures are printed either way (inspection needs no broker), but a dead
	 * broker is a failure a script or a health check must see: exit 3 (DESIGN.md). */
	if (rc == SHMCTL_OK && !s.broker_alive) {
		shmctl_fail("status", "broker '%s' is not running (%s, last pid %d)", o->name,
			    bstate, (int)pid);
		rc = SHMCTL_UNAVAIL;
	}
	return rc;
}

/* ---- workers ---- */

static const char *worker_state_name(uint32_t state)
{
	switch (state) {
	case SHMB_WORKER_FREE:
		return "free";
	case SHMB_WORKER_LIVE:
		return "live";
	case SHMB_WORKER_DEAD:
		return "dead";
	}
	return "invalid";
}

/* A copy of worker slot w's identity and statistics (see the file comment). */
static void worker_snapshot(const struct shmb_seg *seg, uint32_t w, struct shmb_worker *out)
{
	const struct shmb_worker *wk = seg_worker(seg, w);
	for (int tries = 0; tries < 4; tries++) {
		uint32_t state = uatomic_read(&wk->state), gen = uatomic_read(&wk->gen);
		cmm_smp_rmb();
		memcpy(out, wk, sizeof *out);
		cmm_smp_rmb();
		if (uatomic_read(&wk->state) == state && uatomic_read(&wk->gen) == gen) {
			out->state = state;
			out->gen = gen;
			return;
		}
	}
}

int shmctl_cmd_workers(const struct shmctl_opts *o)
{
	struct shmb_seg seg;
	int rc = shmctl_open(o, "workers", &seg, NULL, NULL, 0);
	if (rc)
		return rc;
	int64_t now = shmb_now_ms();
	static const char *const head[] = {
		"SLOT",     "PID",     "STATE",     "GEN",   "UID",
		"ATTACHED", "READERS", "PUBLISHED", "ALIVE", "STALLED",
	};
	struct shmctl_table t;
	shmctl_table_init(&t, 10, head, "rrlrrlrrll");
	cJSON *arr = o->json ? cJSON_CreateArray() : NULL;

	for (uint32_t w = 0; w < seg.cfg.max_workers; w++) {
		struct shmb_worker wk;
		worker_snapshot(&seg, w, &wk);
		if (wk.state == SHMB_WORKER_FREE)
			continue;
		struct seg_worker_stats st = seg_worker_stats(&seg, w); /* + per-thread counts */
		uint32_t in_use = 0, in_section = 0;
		for (uint32_t k = 0; k < seg.cfg.readers_per_worker; k++) {
			const struct shmb_reader *r = seg_reader(&seg, w, k);
			in_use += uatomic_read(&r->in_use) != 0;
			in_section += uatomic_read(&r->ctr) != 0;
		}
		int alive = wk.pid > 0 && proc_alive(wk.pid, wk.starttime);
		/* The broker's stall line (layout 1.2, reclaim.c): a thread inside one read-side
		 * section for SHMB_STALL_MS or more, since stalled_since_ms. */
		int64_t stalled = wk.state == SHMB_WORKER_LIVE && wk.stalled_since_ms > 0
					  ? wk.stalled_since_ms
					  : 0;
		if (arr) {
			cJSON *j = cJSON_CreateObject();
			shmctl_json_u64(j, "slot", w);
			shmctl_json_i64(j, "pid", wk.pid);
			cJSON_AddStringToObject(j, "state", worker_state_name(wk.state));
			shmctl_json_u64(j, "gen", wk.gen);
			shmctl_json_u64(j, "uid", wk.uid);
			shmctl_json_u64(j, "gid", wk.gid);
			shmctl_json_i64(j, "attached_at_ms", wk.attached_at_ms);
			shmctl_json_u64(j, "readers", in_use);
			shmctl_json_u64(j, "readers_in_section", in_section);
			shmctl_json_u64(j, "events_published", st.events_published);
			shmctl_json_u64(j, "sessions_opened", st.sessions_opened);
			cJSON_AddBoolToObject(j, "alive", alive);
			cJSON_AddBoolToObject(j, "stalled", stalled != 0);
			shmctl_json_i64(j, "stalled_since_ms", stalled);
			shmctl_json_i64(j, "stalled_tid", stalled ? wk.stalled_tid : 0);
			cJSON_AddItemToArray(arr, j);
			continue;
		}
		char slot[16], pid[16], gen[16], uid[16], att[48], rd[32], pub[24], stl[80];
		snprintf(slot, sizeof slot, "%u", w);
		snprintf(pid, sizeof pid, "%d", wk.pid);
		snprintf(gen, sizeof gen, "%u", wk.gen);
		snprintf(uid, sizeof uid, "%u", wk.uid);
		shmctl_age(att, sizeof att, wk.attached_at_ms, now);
		snprintf(rd, sizeof rd, "%u", in_use);
		snprintf(pub, sizeof pub, "%" PRIu64, st.events_published);
		if (stalled) {
			char age[48];
			shmctl_age(age, sizeof age, stalled, now);
			snprintf(stl, sizeof stl, "thread %d, %s", wk.stalled_tid, age);
		} else {
			snprintf(stl, sizeof stl, "-");
		}
		const char *row[] = { slot, pid, worker_state_name(wk.state), gen, uid, att,
				      rd,   pub, alive ? "yes" : "no",        stl };
		if (shmctl_table_add(&t, row) < 0) {
			shmctl_fail("workers", "out of memory");
			rc = SHMCTL_UNAVAIL;
			break;
		}
	}
	seg_unmap(&seg);
	if (arr)
		return shmctl_json_print(arr, "workers");
	if (rc == SHMCTL_OK) {
		if (t.nrows)
			shmctl_table_print(&t, stdout);
		else
			printf("no workers attached\n");
	}
	shmctl_table_fini(&t);
	return rc;
}
