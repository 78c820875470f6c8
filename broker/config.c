/* config.c - the broker's configuration: built-in defaults, then the JSON config file, then
 * command-line flags (flags override the file).
 *
 * Every field is checked for type and range where it is read, and the sizes once more as a whole
 * by seg_layout() (the same check every process applies to a segment's header), so a bad value is
 * reported with the field's name and exit status 2 before anything is created. Errors name the
 * field the way the user wrote it: `--ring-events` for a flag, `field 'ring_events'` for the file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "ctl.h"
#include "shmb.h"

#define CONFIG_MAX_BYTES (1024 * 1024)
#define JSON_MAX_INT 9007199254740992.0 /* 2^53: larger doubles are not exact integers */

enum ftype { T_U32, T_U64, T_NAME, T_GIDS, T_MODE, T_BOOL, T_DIR, T_LOGT, T_LEVEL };

struct field {
	const char *key;  /* JSON key */
	const char *flag; /* long option without "--", NULL: file only */
	enum brk_field id;
	enum ftype type;
	size_t off; /* offset in struct brk_config */
};

#define SEGF(f) offsetof(struct brk_config, seg.f)
static const struct field fields[] = {
	{ "name", "name", BRK_F_NAME, T_NAME, offsetof(struct brk_config, name) },
	{ "max_sessions", "max-sessions", BRK_F_MAX_SESSIONS, T_U32, SEGF(max_sessions) },
	{ "max_workers", "max-workers", BRK_F_MAX_WORKERS, T_U32, SEGF(max_workers) },
	{ "readers_per_worker", "readers-per-worker", BRK_F_READERS_PER_WORKER, T_U32,
	  SEGF(readers_per_worker) },
	{ "ring_events", "ring-events", BRK_F_RING_EVENTS, T_U32, SEGF(ring_events) },
	{ "ring_bytes", "ring-bytes", BRK_F_RING_BYTES, T_U32, SEGF(ring_bytes) },
	{ "max_event_bytes", "max-event-bytes", BRK_F_MAX_EVENT_BYTES, T_U32,
	  SEGF(max_event_bytes) },
	{ "max_tenant_len", "max-tenant-len", BRK_F_MAX_TENANT_LEN, T_U32, SEGF(max_tenant_len) },
	{ "max_principal_len", "max-principal-len", BRK_F_MAX_PRINCIPAL_LEN, T_U32,
	  SEGF(max_principal_len) },
	{ "sweep_interval_ms", "sweep-interval-ms", BRK_F_SWEEP_INTERVAL_MS, T_U32,
	  SEGF(sweep_interval_ms) },
	{ "inactivity_ttl_ms", "inactivity-ttl-ms", BRK_F_INACTIVITY_TTL_MS, T_U64,
	  SEGF(inactivity_ttl_ms) },
	{ "absolute_ttl_ms", "absolute-ttl-ms", BRK_F_ABSOLUTE_TTL_MS, T_U64,
	  SEGF(absolute_ttl_ms) },
	{ "attr_bytes", "attr-bytes", BRK_F_ATTR_BYTES, T_U32, SEGF(attr_bytes) },
	{ "attr_keys", "attr-keys", BRK_F_ATTR_KEYS, T_U32, SEGF(attr_keys) },
	{ "max_inactivity_ttl_ms", "max-inactivity-ttl-ms", BRK_F_MAX_INACTIVITY_TTL_MS, T_U64,
	  SEGF(max_inactivity_ttl_ms) },
	{ "max_absolute_ttl_ms", "max-absolute-ttl-ms", BRK_F_MAX_ABSOLUTE_TTL_MS, T_U64,
	  SEGF(max_absolute_ttl_ms) },
	{ "allowed_gids", NULL, BRK_F_ALLOWED_GIDS, T_GIDS, 0 },
	{ "segment_mode", NULL, BRK_F_SEGMENT_MODE, T_MODE,
	  offsetof(struct brk_config, segment_mode) },
	{ "socket_mode", NULL, BRK_F_SOCKET_MODE, T_MODE,
	  offsetof(struct brk_config, socket_mode) },
	{ "unlink_on_exit", "unlink-on-exit", BRK_F_UNLINK_ON_EXIT, T_BOOL,
	  offsetof(struct brk_config, unlink_on_exit) },
	{ "segment_dir", "segment-dir", BRK_F_SEGMENT_DIR, T_DIR,
	  offsetof(struct brk_config, segment_dir) },
	{ "log", "log", BRK_F_LOG, T_LOGT, offsetof(struct brk_config, log_target) },
	{ "log_level", "log-level", BRK_F_LOG_LEVEL, T_LEVEL,
	  offsetof(struct brk_config, log_level) },
	{ "log_rate_limit", "log-rate-limit", BRK_F_LOG_RATE_LIMIT, T_U32,
	  offsetof(struct brk_config, log_rate_limit) },
	{ "log_rate_interval_ms", "log-rate-interval-ms", BRK_F_LOG_RATE_INTERVAL_MS, T_U32,
	  offsetof(struct brk_config, log_rate_interval_ms) },
	{ "node_id", "node-id", BRK_F_NODE_ID, T_U32, SEGF(node_id) },
};

/* "stderr" or "syslog" to BRK_LOG_*, or -1. */
static int log_target_parse(const char *v)
{
	return strcmp(v, "stderr") == 0   ? BRK_LOG_STDERR
	       : strcmp(v, "syslog") == 0 ? BRK_LOG_SYSLOG
					  : -1;
}

/* segment_dir: an absolute path without NUL or newline, short enough for "/shmb.<name>" to
 * follow it. Whether it is a trusted tmpfs directory is checked at start (segment.c). Returns 0
 * or -1 with the reason in why. */
static int dir_valid(const char *v, const char **why)
{
	size_t n = strlen(v);
	*why = NULL;
	if (n == 0)
		return 0; /* the default: /dev/shm through shm_open */
	if (v[0] != '/')
		*why = "must be an absolute path";
	else if (n >= BRK_SEGMENT_DIR_MAX)
		*why = "is too long";
	else if (strchr(v, '\n'))
		*why = "must not contain a newline";
	return *why ? -1 : 0;
}

static void set_dir(struct brk_config *cfg, const char *v)
{
	size_t n = strlen(v);
	while (n > 1 && v[n - 1] == '/')
		n--; /* "/mnt/huge/" names the same directory as "/mnt/huge" */
	snprintf(cfg->segment_dir, sizeof cfg->segment_dir, "%.*s", (int)n, v);
}
#define N_FIELDS (sizeof fields / sizeof fields[0])

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: shmbrokerd [OPTIONS]\n"
		"The shmbroker session broker: owns the shared-memory segment /shmb.<name> and its\n"
		"control socket <runtime dir>/<name>.sock.\n"
		"\n"
		"  --name N                 instance name (default $SHMB_NAME, else \"default\")\n"
		"  --config FILE.json       configuration file (flags override it)\n"
		"  --foreground             do not daemonize\n"
		"  --max-sessions N         session records (default 1024)\n"
		"  --max-workers N          worker slots, 1..%d (default 64)\n"
		"  --readers-per-worker N   RCU reader slots per worker (default 64)\n"
		"  --ring-events N          events kept per session, power of two (default 256)\n"
		"  --ring-bytes N           payload bytes per session, power of two (default 131072)\n"
		"  --max-event-bytes N      largest event payload (default 65536)\n"
		"  --max-tenant-len N       longest tenant, 1..%d (default %d)\n"
		"  --max-principal-len N    longest principal, 1..%d (default %d)\n"
		"  --inactivity-ttl-ms N    default inactivity TTL, 0: none (default 1800000)\n"
		"  --absolute-ttl-ms N      default absolute TTL, 0: none (default 14400000)\n"
		"  --sweep-interval-ms N    TTL sweep period (default 1000)\n"
		"  --attr-bytes N           attribute budget per session, multiple of 64 (default 4096)\n"
		"  --attr-keys N            distinct attribute keys per session (default 32)\n"
		"  --max-inactivity-ttl-ms N  largest inactivity TTL a create may ask, 0: no limit;\n"
		"                           at least --inactivity-ttl-ms (default 86400000)\n"
		"  --max-absolute-ttl-ms N  largest absolute TTL a create may ask, 0: no limit;\n"
		"                           at least --absolute-ttl-ms (default 604800000)\n"
		"  --node-id N              node tag of the session ids made here, 1..%d; 0: none\n"
		"                           (default 0; docs/multi-host.md)\n"
		"  --segment-dir DIR        create the segment as DIR/shmb.<name>, DIR a tmpfs (e.g.\n"
		"                           mounted huge=always for huge pages); default /dev/shm\n"
		"  --unlink-on-exit         remove the segment on a clean stop\n"
		"  --log stderr|syslog      where the log goes (default stderr; syslog reaches journald)\n"
		"  --log-level L            error, warning, info or debug (default info)\n"
		"  --log-rate-limit N       lines per message kind per interval, then one summary;\n"
		"                           0: no limit (default 100)\n"
		"  --log-rate-interval-ms N the rate limit's interval, 1..3600000 (default 10000)\n"
		"  --ready-fd FD            write \"ready\\n\" to FD once serving, then close it\n"
		"  -h, --help               show this help\n"
		"  --version                show the version\n"
		"\n"
		"Config file keys: name, max_sessions, max_workers, readers_per_worker, ring_events,\n"
		"ring_bytes, max_event_bytes, max_tenant_len, max_principal_len, sweep_interval_ms,\n"
		"inactivity_ttl_ms, absolute_ttl_ms, allowed_gids ([gid, ...]: groups that may attach),\n"
		"socket_mode (\"0660\": owner and allowed groups; no write for others),\n"
		"segment_mode (\"0600\", or \"0640\": the group may inspect it by name),\n"
		"unlink_on_exit (true/false), segment_dir (a tmpfs directory), log (\"stderr\" or\n"
		"\"syslog\"), log_level, log_rate_limit, log_rate_interval_ms, node_id.\n"
		"SIGHUP or `shmctl reload` re-reads the file (flags are kept) and applies what does\n"
		"not size the segment. A segment that already exists keeps its sizes; one made\n"
		"with another node_id is refused.\n"
		"Exit status: 0 after a clean stop, 1 on a start-up failure, 2 on a usage or\n"
		"configuration error.\n",
		SHMB_MAX_WORKERS_LIMIT, SHMB_TENANT_CAP, SHMB_TENANT_CAP, SHMB_PRINCIPAL_CAP,
		SHMB_PRINCIPAL_CAP, SHMB_NODE_ID_MAX);
}

static const struct field *field_by_key(const char *key, size_t len)
{
	for (size_t i = 0; i < N_FIELDS; i++)
		if (strlen(fields[i].key) == len && strncmp(fields[i].key, key, len) == 0)
			return &fields[i];
	return NULL;
}

static const struct field *field_by_flag(const char *flag)
{
	for (size_t i = 0; i < N_FIELDS; i++)
		if (fields[i].flag && strcmp(fields[i].flag, flag) == 0)
			return &fields[i];
	return NULL;
}

/* "--max-sessions", "config: field 'max_sessions'" or "config: the built-in max_sessions",
 * for error messages. */
static void field_label(const struct brk_config *cfg, const struct field *f, char *buf, size_t len)
{
	if (f->flag && (cfg->flag & (1u << f->id)))
		snprintf(buf, len, "--%s", f->flag);
	else if (cfg->set & (1u << f->id))
		snprintf(buf, len, "config: field '%s'", f->key);
	else /* a default that conflicts with another field the user set */
		snprintf(buf, len, "config: the built-in %s", f->key);
}

static uint32_t *u32_at(struct brk_config *cfg, const struct field *f)
{
	return (uint32_t *)((char *)cfg + f->off);
}

static uint64_t *u64_at(struct brk_config *cfg, const struct field *f)
{
	return (uint64_t *)((char *)cfg + f->off);
}

/* Strict decimal: digits only, no sign or spaces. Returns 0 or -1. */
static int parse_u64(const char *s, uint64_t *out)
{
	if (!s || !*s)
		return -1;
	uint64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

/* "0660" or "660": octal permission bits up to 0777. */
static int parse_mode(const char *s, uint32_t *out)
{
	size_t n = strlen(s);
	if (n < 3 || n > 4)
		return -1;
	uint32_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '7')
			return -1;
		v = v * 8 + (uint32_t)(s[i] - '0');
	}
	if (v > 0777)
		return -1;
	*out = v;
	return 0;
}

static const char *json_type(const cJSON *v)
{
	if (cJSON_IsString(v))
		return "a string";
	if (cJSON_IsNumber(v))
		return "a number";
	if (cJSON_IsBool(v))
		return "a boolean";
	if (cJSON_IsNull(v))
		return "null";
	if (cJSON_IsArray(v))
		return "an array";
	if (cJSON_IsObject(v))
		return "an object";
	return "invalid";
}

/* A JSON integer in 0..max. Returns 0 or prints why and returns 2. */
static int json_uint(const cJSON *v, const char *label, uint64_t max, uint64_t *out)
{
	if (!cJSON_IsNumber(v)) {
		brk_fatal("%s must be an integer, not %s", label, json_type(v));
		return 2;
	}
	double d = v->valuedouble;
	/* Range first (NaN fails it too): the cast is defined only for values in range. */
	if (!(d >= 0 && d <= JSON_MAX_INT) || d != (double)(int64_t)d) {
		if (d < 0)
			brk_fatal("%s must be a non-negative integer, not %g", label, d);
		else
			brk_fatal("%s must be an integer in 0..%llu, not %g", label,
				  (unsigned long long)max, d);
		return 2;
	}
	if ((uint64_t)d > max) {
		brk_fatal("%s must be at most %llu, not %.0f", label, (unsigned long long)max, d);
		return 2;
	}
	*out = (uint64_t)d;
	return 0;
}

static int apply_json(struct brk_config *cfg, const struct field *f, const cJSON *v)
{
	char label[80];
	snprintf(label, sizeof label, "config: field '%s'", f->key);
	uint64_t u;
	switch (f->type) {
	case T_U32:
		if (json_uint(v, label, UINT32_MAX, &u))
			return 2;
		*u32_at(cfg, f) = (uint32_t)u;
		return 0;
	case T_U64:
		if (json_uint(v, label, (uint64_t)JSON_MAX_INT, &u))
			return 2;
		*u64_at(cfg, f) = u;
		return 0;
	case T_NAME:
		if (!cJSON_IsString(v)) {
			brk_fatal("%s must be a string, not %s", label, json_type(v));
			return 2;
		}
		if (seg_name_valid(v->valuestring) < 0) {
			brk_fatal("%s must be 1..64 characters of A-Z a-z 0-9 _ . - not starting "
				  "with '.', not \"%.80s\"",
				  label, v->valuestring);
			return 2;
		}
		snprintf(cfg->name, sizeof cfg->name, "%s", v->valuestring);
		return 0;
	case T_GIDS: {
		if (!cJSON_IsArray(v)) {
			brk_fatal("%s must be an array of group ids, not %s", label, json_type(v));
			return 2;
		}
		int n = cJSON_GetArraySize(v);
		if (n > BRK_MAX_GIDS) {
			brk_fatal("%s holds %d group ids, at most %d are allowed", label, n,
				  BRK_MAX_GIDS);
			return 2;
		}
		cfg->n_gids = 0;
		const cJSON *e;
		cJSON_ArrayForEach(e, v)
		{
			char elabel[96];
			snprintf(elabel, sizeof elabel, "%s[%u]", label, cfg->n_gids);
			if (json_uint(e, elabel, UINT32_MAX - 1, &u))
				return 2;
			cfg->allowed_gids[cfg->n_gids++] = (uint32_t)u;
		}
		return 0;
	}
	case T_MODE:
		if (!cJSON_IsString(v) || parse_mode(v->valuestring, u32_at(cfg, f)) < 0) {
			if (cJSON_IsString(v))
				brk_fatal("%s must be octal permission bits like \"0660\", not "
					  "\"%.40s\"",
					  label, v->valuestring);
			else
				brk_fatal(
					"%s must be a string of octal digits like \"0660\", not %s",
					label, json_type(v));
			return 2;
		}
		return 0;
	case T_BOOL:
		if (!cJSON_IsBool(v)) {
			brk_fatal("%s must be true or false, not %s", label, json_type(v));
			return 2;
		}
		*(int *)((char *)cfg + f->off) = cJSON_IsTrue(v);
		return 0;
	case T_DIR: {
		const char *why;
		if (!cJSON_IsString(v)) {
			brk_fatal("%s must be a string (a directory), not %s", label, json_type(v));
			return 2;
		}
		if (dir_valid(v->valuestring, &why) < 0) {
			brk_fatal("%s %s, not \"%.80s\"", label, why, v->valuestring);
			return 2;
		}
		set_dir(cfg, v->valuestring);
		return 0;
	}
	case T_LOGT:
	case T_LEVEL: {
		int x = cJSON_IsString(v) ? f->type == T_LOGT ? log_target_parse(v->valuestring)
							      : brk_log_level_parse(v->valuestring)
					  : -1;
		if (x < 0) {
			brk_fatal("%s must be %s, not %s%.40s%s", label,
				  f->type == T_LOGT
					  ? "\"stderr\" or \"syslog\""
					  : "\"error\", \"warning\", \"info\" or \"debug\"",
				  cJSON_IsString(v) ? "\"" : json_type(v),
				  cJSON_IsString(v) ? v->valuestring : "",
				  cJSON_IsString(v) ? "\"" : "");
			return 2;
		}
		*(int *)((char *)cfg + f->off) = x;
		return 0;
	}
	}
	return 2;
}

static int load_file(struct brk_config *cfg, const char *path)
{
	/* O_NONBLOCK and a regular file only: the broker is one thread, and a FIFO (or a device)
	 * put where the file was would block a reload (SIGHUP, `shmctl reload`) forever in open or
	 * read, and with it every create, delete, attach and death notice. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		brk_fatal("config: cannot open %s: %s", path, strerror(errno));
		return 2;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		brk_fatal("config: %s is not a regular file", path);
		close(fd);
		return 2;
	}
	char *text = malloc(CONFIG_MAX_BYTES + 1);
	if (!text) {
		close(fd);
		brk_fatal("config: out of memory");
		return 2;
	}
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, text + len, CONFIG_MAX_BYTES + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			brk_fatal("config: cannot read %s: %s", path, strerror(errno));
			close(fd);
			free(text);
			return 2;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONFIG_MAX_BYTES) {
			brk_fatal("config: %s is larger than %d bytes", path, CONFIG_MAX_BYTES);
			close(fd);
			free(text);
			return 2;
		}
	}
	close(fd);
	text[len] = '\0';
	cJSON *root = cJSON_ParseWithLength(text, len);
	if (!root) {
		const char *at = cJSON_GetErrorPtr();
		int line = 1;
		for (const char *p = text; at && p < at && p < text + len; p++)
			line += *p == '\n';
		brk_fatal("config: %s is not valid JSON (error near line %d)", path, line);
		free(text);
		return 2;
	}
	free(text);
	int rc = 0;
	if (!cJSON_IsObject(root)) {
		brk_fatal("config: %s must hold a JSON object, not %s", path, json_type(root));
		rc = 2;
	}
	uint32_t seen = 0;
	const cJSON *item;
	cJSON_ArrayForEach(item, root)
	{
		if (rc)
			break;
		const char *key = item->string ? item->string : "";
		const struct field *f = field_by_key(key, strlen(key));
		if (!f) {
			brk_fatal("config: unknown field '%.80s' in %s", key, path);
			rc = 2;
		} else if (seen & (1u << f->id)) {
			brk_fatal("config: field '%s' is given twice in %s", f->key, path);
			rc = 2;
		} else {
			seen |= 1u << f->id;
			rc = apply_json(cfg, f, item);
			cfg->set |= 1u << f->id;
		}
	}
	cJSON_Delete(root);
	return rc;
}

static int apply_flag(struct brk_config *cfg, const struct field *f, const char *val)
{
	uint64_t u;
	switch (f->type) {
	case T_U32:
	case T_U64:
		if (parse_u64(val, &u) < 0) {
			brk_fatal("--%s: '%.40s' is not a non-negative integer", f->flag, val);
			return 2;
		}
		if (f->type == T_U32 && u > UINT32_MAX) {
			brk_fatal("--%s must be at most %u, not %s", f->flag, UINT32_MAX, val);
			return 2;
		}
		if (f->type == T_U32)
			*u32_at(cfg, f) = (uint32_t)u;
		else
			*u64_at(cfg, f) = u;
		return 0;
	case T_NAME:
		if (seg_name_valid(val) < 0) {
			brk_fatal(
				"--name must be 1..64 characters of A-Z a-z 0-9 _ . - not starting "
				"with '.', not '%.80s'",
				val);
			return 2;
		}
		snprintf(cfg->name, sizeof cfg->name, "%s", val);
		return 0;
	case T_BOOL:
		*(int *)((char *)cfg + f->off) = 1;
		return 0;
	case T_DIR: {
		const char *why;
		if (dir_valid(val, &why) < 0) {
			brk_fatal("--%s %s, not '%.80s'", f->flag, why, val);
			return 2;
		}
		set_dir(cfg, val);
		return 0;
	}
	case T_LOGT:
	case T_LEVEL: {
		int x = f->type == T_LOGT ? log_target_parse(val) : brk_log_level_parse(val);
		if (x < 0) {
			brk_fatal("--%s must be %s, not '%.40s'", f->flag,
				  f->type == T_LOGT ? "stderr or syslog"
						    : "error, warning, info or debug",
				  val);
			return 2;
		}
		*(int *)((char *)cfg + f->off) = x;
		return 0;
	}
	default:
		return 2;
	}
}

/* Turns seg_layout's "ring_events must be ..." into a message naming where the value came from. */
static void layout_error(const struct brk_config *cfg, const char *why)
{
	const char *sp = strchr(why, ' ');
	const struct field *f = sp ? field_by_key(why, (size_t)(sp - why)) : NULL;
	if (!f) {
		brk_fatal("config: %s", why);
		return;
	}
	char label[80];
	field_label(cfg, f, label, sizeof label);
	brk_fatal("%s%s", label, sp);
}

/* A default TTL above its maximum would give sessions that name no TTL more than a create may
 * ask for: refused, naming both fields. A maximum of 0 is no limit; a default of 0 (no such
 * expiry) is the operator's choice for sessions that name no TTL and is not limited by the
 * maximum, which bounds only what a create asks for. Returns 0 or 2. */
static int check_ttl_max(const struct brk_config *cfg, const char *dkey, uint64_t dflt,
			 const char *mkey, uint64_t max)
{
	if (!max || !dflt || dflt <= max)
		return 0;
	char dl[80], ml[80];
	field_label(cfg, field_by_key(dkey, strlen(dkey)), dl, sizeof dl);
	field_label(cfg, field_by_key(mkey, strlen(mkey)), ml, sizeof ml);
	brk_fatal("%s (%llu) is above %s (%llu): the default TTL must be within the maximum "
		  "(raise %s, or 0 for no limit)",
		  dl, (unsigned long long)dflt, ml, (unsigned long long)max, mkey);
	return 2;
}

/* The modes may not open the broker to every local user (docs/security.md). Returns 0 or 2. */
static int check_modes(const struct brk_config *cfg)
{
	if (cfg->socket_mode & 0002) {
		brk_fatal("config: field 'socket_mode' is \"%04o\": write permission for every "
			  "user would let any local process connect; list the groups that may "
			  "attach in allowed_gids instead (the socket admits them)",
			  cfg->socket_mode);
		return 2;
	}
	if (cfg->segment_mode & 0007) {
		brk_fatal("config: field 'segment_mode' is \"%04o\": it would let every local user "
			  "%s every session; the segment's name is owner-only (\"0600\") or "
			  "group-readable for inspection (\"0640\")",
			  cfg->segment_mode, (cfg->segment_mode & 0002) ? "write" : "read");
		return 2;
	}
	if ((cfg->segment_mode & 0600) != 0600) {
		brk_fatal("config: field 'segment_mode' is \"%04o\": the owner (the broker) needs "
			  "read and write (\"0600\" or \"0640\")",
			  cfg->segment_mode);
		return 2;
	}
	return 0;
}

int brk_config_parse(int argc, char **argv, struct brk_config *cfg, int reload)
{
	*cfg = (struct brk_config){ .segment_mode = 0600,
				    .socket_mode = 0660,
				    .ready_fd = -1,
				    .log_level = BRK_LOG_INFO,
				    .log_rate_limit = 100,
				    .log_rate_interval_ms = 10000 };
	seg_config_defaults(&cfg->seg);

	enum { O_CONFIG = 256, O_FOREGROUND, O_READY_FD, O_VERSION, O_FIELD };
	struct option opts[N_FIELDS + 6];
	size_t n = 0;
	for (size_t i = 0; i < N_FIELDS; i++)
		if (fields[i].flag)
			opts[n++] = (struct option){ fields[i].flag,
						     fields[i].type == T_BOOL ? no_argument
									      : required_argument,
						     NULL, O_FIELD };
	opts[n++] = (struct option){ "config", required_argument, NULL, O_CONFIG };
	opts[n++] = (struct option){ "foreground", no_argument, NULL, O_FOREGROUND };
	opts[n++] = (struct option){ "ready-fd", required_argument, NULL, O_READY_FD };
	opts[n++] = (struct option){ "version", no_argument, NULL, O_VERSION };
	opts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	opts[n] = (struct option){ 0 };

	const char *config_path = NULL, *ready_fd = NULL;
	const char *vals[BRK_F_COUNT] = { 0 };
	opterr = 0;
	optind = 1;
	int c, li = -1;
	while ((c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return -1;
		case O_VERSION:
			printf("shmbrokerd %s (segment layout %d.%d)\n", shmb_version(),
			       SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR);
			return -1;
		case O_CONFIG:
			config_path = optarg;
			break;
		case O_FOREGROUND:
			cfg->foreground = 1;
			break;
		case O_READY_FD:
			ready_fd = optarg;
			break;
		case O_FIELD: {
			const struct field *f = field_by_flag(opts[li].name);
			vals[f->id] = optarg ? optarg : "";
			cfg->flag |= 1u << f->id;
			break;
		}
		case ':':
			brk_fatal("option '%s' needs a value\nTry 'shmbrokerd --help'.",
				  argv[optind - 1]);
			return 2;
		default:
			if (optopt > 0 && optopt < 256)
				brk_fatal("unknown option '-%c'\nTry 'shmbrokerd --help'.", optopt);
			else
				brk_fatal("unknown option '%s'\nTry 'shmbrokerd --help'.",
					  argv[optind - 1]);
			return 2;
		}
		li = -1;
	}
	if (optind < argc) {
		brk_fatal("unexpected argument '%s'\nTry 'shmbrokerd --help'.", argv[optind]);
		return 2;
	}

	if (config_path) {
		int rc = load_file(cfg, config_path);
		if (rc || (rc = check_modes(cfg)))
			return rc;
	}
	for (size_t i = 0; i < N_FIELDS; i++) {
		const struct field *f = &fields[i];
		if (!(cfg->flag & (1u << f->id)))
			continue;
		int rc = apply_flag(cfg, f, vals[f->id]);
		if (rc)
			return rc;
		cfg->set |= 1u << f->id;
	}
	if (!(cfg->set & (1u << BRK_F_NAME))) {
		const char *name = ctl_default_name();
		if (seg_name_valid(name) < 0) {
			brk_fatal("$SHMB_NAME must be 1..64 characters of A-Z a-z 0-9 _ . - not "
				  "starting with '.', not '%.80s'",
				  name);
			return 2;
		}
		snprintf(cfg->name, sizeof cfg->name, "%s", name);
	}

	cfg->seg.n_buckets = 0;
	seg_config_derive(&cfg->seg);
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total;
	char why[200];
	if (seg_layout(&cfg->seg, regions, &total, why, sizeof why) < 0) {
		layout_error(cfg, why);
		return 2;
	}
	if (cfg->log_rate_interval_ms < 1 || cfg->log_rate_interval_ms > 3600000) {
		char label[80];
		field_label(cfg, field_by_key("log_rate_interval_ms", 20), label, sizeof label);
		brk_fatal("%s must be 1..3600000, not %u", label, cfg->log_rate_interval_ms);
		return 2;
	}
	if (check_ttl_max(cfg, "inactivity_ttl_ms", cfg->seg.inactivity_ttl_ms,
			  "max_inactivity_ttl_ms", cfg->seg.max_inactivity_ttl_ms) ||
	    check_ttl_max(cfg, "absolute_ttl_ms", cfg->seg.absolute_ttl_ms, "max_absolute_ttl_ms",
			  cfg->seg.max_absolute_ttl_ms))
		return 2;

	if (ready_fd && !reload) {
		uint64_t fd;
		if (parse_u64(ready_fd, &fd) < 0 || fd > INT_MAX || fcntl((int)fd, F_GETFD) < 0) {
			brk_fatal("--ready-fd: '%.40s' is not an open file descriptor", ready_fd);
			return 2;
		}
		cfg->ready_fd = (int)fd;
		/* Not inherited by anything the broker might run. */
		fcntl(cfg->ready_fd, F_SETFD, FD_CLOEXEC);
	}
	return 0;
}
