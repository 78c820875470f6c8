/* reload.c - SIGHUP and the "reload" control request: read the configuration again and apply
 * what can change without a new segment.
 *
 * The sources are those of the start: the command line kept in struct brk is parsed again, so
 * its flags still win, and the config file it names is re-read. A key removed from the file goes
 * back to its built-in default. A configuration that does not parse or check (the same checks
 * as at start) changes nothing: the reason is logged as an error and returned.
 *
 * What changes at once: the TTL defaults and maxima and the sweep period (the broker's private
 * copy, which create and the sweeper use, and the header's copy, which shmctl shows: the same
 * writes as an adoption's reconcile_config in segment.c; no mapper derives anything from them),
 * the log's target, level and rate limit, allowed_gids and socket_mode (the socket file's group,
 * ACL and mode are set again by access.c; a connection already admitted stays), unlink_on_exit.
 * What sizes or places the segment (max_sessions, max_workers, readers_per_worker, ring_events,
 * ring_bytes, max_event_bytes, max_tenant_len, max_principal_len, attr_bytes, attr_keys,
 * segment_dir, segment_mode), the node_id its sessions' ids carry and the name cannot change: each that differs is named, in a
 * warning line and in the answer, with what to do instead. The broker is one thread, so nothing
 * reads the configuration while it changes. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <urcu/uatomic.h>

#include "broker.h"

static void note(cJSON *arr, const char *field, const char *reason)
{
	if (!arr)
		return;
	cJSON *o = cJSON_CreateObject();
	if (!o)
		return;
	cJSON_AddStringToObject(o, "field", field);
	if (reason)
		cJSON_AddStringToObject(o, "reason", reason);
	cJSON_AddItemToArray(arr, o);
}

static void applied(cJSON *arr, const char *field)
{
	cJSON *s = arr ? cJSON_CreateString(field) : NULL;
	if (s)
		cJSON_AddItemToArray(arr, s);
}

/* A u64 policy field of the segment's configuration. A field set neither now nor before keeps
 * the segment's value (an adopted segment's policy stays unless the configuration names one). */
static void policy64(struct brk *b, const struct brk_config *nc, enum brk_field id, cJSON *ok,
		     const char *key, size_t off, uint64_t want)
{
	if (!((nc->set | b->cfg.set) & (1u << id)))
		return;
	uint64_t *have = (uint64_t *)((char *)&b->seg.cfg + off);
	uint64_t *hdr = (uint64_t *)((char *)&seg_hdr(&b->seg)->cfg + off);
	if (*have == want)
		return;
	brk_log("reload: %s: %llu (was %llu)", key, (unsigned long long)want,
		(unsigned long long)*have);
	*have = want;
	uatomic_set(hdr, want);
	applied(ok, key);
}

int brk_reload(struct brk *b, cJSON *answer, char *why, size_t whylen)
{
	static struct brk_config nc; /* one thread; keeps the stack small */
	/* No command line kept (a broker state built by a test harness): the built-in defaults. */
	static char name0[] = "shmbrokerd";
	static char *argv0[] = { name0, NULL };
	int rc = b->argv ? brk_config_parse(b->argc, b->argv, &nc, 1)
			 : brk_config_parse(1, argv0, &nc, 1);
	if (rc != 0) {
		snprintf(why, whylen, "%s",
			 rc < 0 ? "the command line asks for help or the version"
				: brk_log_last_fatal());
		brk_err("reload: configuration refused, nothing changed: %s", why);
		return -1;
	}
	cJSON *ok = answer ? cJSON_AddArrayToObject(answer, "applied") : NULL;
	cJSON *skipped = answer ? cJSON_AddArrayToObject(answer, "not_applied") : NULL;

	/* What cannot change: the segment's sizes and place, and the name. */
	static const struct {
		const char *key;
		size_t off;
		enum brk_field id;
	} sizes[] = {
#define SZ(f, id) { #f, offsetof(struct shmb_seg_config, f), id }
		SZ(max_sessions, BRK_F_MAX_SESSIONS),
		SZ(max_workers, BRK_F_MAX_WORKERS),
		SZ(readers_per_worker, BRK_F_READERS_PER_WORKER),
		SZ(ring_events, BRK_F_RING_EVENTS),
		SZ(ring_bytes, BRK_F_RING_BYTES),
		SZ(max_event_bytes, BRK_F_MAX_EVENT_BYTES),
		SZ(max_tenant_len, BRK_F_MAX_TENANT_LEN),
		SZ(max_principal_len, BRK_F_MAX_PRINCIPAL_LEN),
		SZ(attr_bytes, BRK_F_ATTR_BYTES),
		SZ(attr_keys, BRK_F_ATTR_KEYS),
#undef SZ
	};
	/* As at adoption (segment.c), a size nobody asked for is the segment's own, not a
	 * request to change it. */
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		if (!(nc.set & (1u << sizes[i].id)))
			continue;
		uint32_t have = *(const uint32_t *)((const char *)&b->seg.cfg + sizes[i].off);
		uint32_t want = *(const uint32_t *)((const char *)&nc.seg + sizes[i].off);
		if (have == want)
			continue;
		char reason[160];
		snprintf(reason, sizeof reason,
			 "sizes the segment: keeps %u (asked for %u) until a new segment is built",
			 have, want);
		brk_warn("reload: %s not applied: %s", sizes[i].key, reason);
		note(skipped, sizes[i].key, reason);
	}
	if (strcmp(nc.name, b->cfg.name) != 0) {
		brk_warn("reload: name not applied: an instance keeps its name (asked for '%s')",
			 nc.name);
		note(skipped, "name", "an instance keeps its name; start another broker");
	}
	if (strcmp(nc.segment_dir, b->cfg.segment_dir) != 0) {
		brk_warn("reload: segment_dir not applied: the segment stays at %s", b->seg_path);
		note(skipped, "segment_dir", "places the segment: takes effect at a restart");
	}
	if (nc.seg.node_id != b->seg.cfg.node_id) {
		char reason[160];
		snprintf(
			reason, sizeof reason,
			"the segment's sessions carry node %u: keeps %u (asked for %u) until a new "
			"segment is built",
			b->seg.cfg.node_id, b->seg.cfg.node_id, nc.seg.node_id);
		brk_warn("reload: node_id not applied: %s", reason);
		note(skipped, "node_id", reason);
	}
	if (nc.segment_mode != b->cfg.segment_mode) {
		brk_warn("reload: segment_mode not applied: takes effect at a restart");
		note(skipped, "segment_mode", "takes effect at a restart");
	}

	/* Policy. */
	policy64(b, &nc, BRK_F_INACTIVITY_TTL_MS, ok, "inactivity_ttl_ms",
		 offsetof(struct shmb_seg_config, inactivity_ttl_ms), nc.seg.inactivity_ttl_ms);
	policy64(b, &nc, BRK_F_ABSOLUTE_TTL_MS, ok, "absolute_ttl_ms",
		 offsetof(struct shmb_seg_config, absolute_ttl_ms), nc.seg.absolute_ttl_ms);
	policy64(b, &nc, BRK_F_MAX_INACTIVITY_TTL_MS, ok, "max_inactivity_ttl_ms",
		 offsetof(struct shmb_seg_config, max_inactivity_ttl_ms),
		 nc.seg.max_inactivity_ttl_ms);
	policy64(b, &nc, BRK_F_MAX_ABSOLUTE_TTL_MS, ok, "max_absolute_ttl_ms",
		 offsetof(struct shmb_seg_config, max_absolute_ttl_ms), nc.seg.max_absolute_ttl_ms);
	if (((nc.set | b->cfg.set) & (1u << BRK_F_SWEEP_INTERVAL_MS)) &&
	    b->seg.cfg.sweep_interval_ms != nc.seg.sweep_interval_ms) {
		brk_log("reload: sweep_interval_ms: %u (was %u)", nc.seg.sweep_interval_ms,
			b->seg.cfg.sweep_interval_ms);
		b->seg.cfg.sweep_interval_ms = nc.seg.sweep_interval_ms;
		uatomic_set(&seg_hdr(&b->seg)->cfg.sweep_interval_ms, nc.seg.sweep_interval_ms);
		brk_timer_update(b);
		applied(ok, "sweep_interval_ms");
	}

	/* Log. */
	if (nc.log_target != b->cfg.log_target || nc.log_level != b->cfg.log_level ||
	    nc.log_rate_limit != b->cfg.log_rate_limit ||
	    nc.log_rate_interval_ms != b->cfg.log_rate_interval_ms) {
		brk_log("reload: log %s, level %s, rate limit %u per %u ms",
			nc.log_target == BRK_LOG_SYSLOG ? "syslog" : "stderr",
			brk_log_level_name(nc.log_level), nc.log_rate_limit,
			nc.log_rate_interval_ms);
		if (nc.log_target != b->cfg.log_target)
			applied(ok, "log");
		if (nc.log_level != b->cfg.log_level)
			applied(ok, "log_level");
		if (nc.log_rate_limit != b->cfg.log_rate_limit)
			applied(ok, "log_rate_limit");
		if (nc.log_rate_interval_ms != b->cfg.log_rate_interval_ms)
			applied(ok, "log_rate_interval_ms");
		b->cfg.log_target = nc.log_target;
		b->cfg.log_level = nc.log_level;
		b->cfg.log_rate_limit = nc.log_rate_limit;
		b->cfg.log_rate_interval_ms = nc.log_rate_interval_ms;
		brk_log_configure(nc.log_target, nc.log_level, nc.log_rate_limit,
				  nc.log_rate_interval_ms);
	}

	/* Access: who may connect from now on. */
	int gids_changed =
		nc.n_gids != b->cfg.n_gids || memcmp(nc.allowed_gids, b->cfg.allowed_gids,
						     nc.n_gids * sizeof nc.allowed_gids[0]) != 0;
	if (gids_changed || nc.socket_mode != b->cfg.socket_mode) {
		uint32_t old_gids[BRK_MAX_GIDS], old_n = b->cfg.n_gids,
						 old_mode = b->cfg.socket_mode;
		memcpy(old_gids, b->cfg.allowed_gids, sizeof old_gids);
		memcpy(b->cfg.allowed_gids, nc.allowed_gids, sizeof nc.allowed_gids);
		b->cfg.n_gids = nc.n_gids;
		b->cfg.socket_mode = nc.socket_mode;
		if (brk_access_socket(b) != 0) {
			/* Put the old rule back (on the socket too) and say so. */
			memcpy(b->cfg.allowed_gids, old_gids, sizeof old_gids);
			b->cfg.n_gids = old_n;
			b->cfg.socket_mode = old_mode;
			brk_access_socket(b);
			brk_warn("reload: allowed_gids/socket_mode not applied: %s",
				 brk_log_last_fatal());
			note(skipped, "allowed_gids", brk_log_last_fatal());
		} else {
			brk_log("reload: allowed_gids (%u group%s) and socket_mode %04o applied; "
				"connections already admitted stay",
				nc.n_gids, nc.n_gids == 1 ? "" : "s", nc.socket_mode);
			if (gids_changed)
				applied(ok, "allowed_gids");
			if (nc.socket_mode != old_mode)
				applied(ok, "socket_mode");
		}
	}
	if (nc.unlink_on_exit != b->cfg.unlink_on_exit) {
		b->cfg.unlink_on_exit = nc.unlink_on_exit;
		brk_log("reload: unlink_on_exit: %s", nc.unlink_on_exit ? "true" : "false");
		applied(ok, "unlink_on_exit");
	}
	b->cfg.seg.inactivity_ttl_ms = nc.seg.inactivity_ttl_ms;
	b->cfg.seg.absolute_ttl_ms = nc.seg.absolute_ttl_ms;
	b->cfg.seg.max_inactivity_ttl_ms = nc.seg.max_inactivity_ttl_ms;
	b->cfg.seg.max_absolute_ttl_ms = nc.seg.max_absolute_ttl_ms;
	b->cfg.seg.sweep_interval_ms = nc.seg.sweep_interval_ms;
	b->cfg.set = nc.set;
	b->cfg.flag = nc.flag;
	brk_log("reload: done");
	return 0;
}
