/* mirror_redis.c - connection, key names, the two Lua scripts and the failover read of the
 * Redis schema (mirror_redis.h has the API and the schema; docs/multi-host.md the story).
 *
 * Why scripts. Ownership must fence every write: a node that comes back after another node took
 * its sessions over must not overwrite them. A check in the client followed by writes would race
 * with a claim in between; a Lua script runs atomically inside Redis, so the owner test and the
 * writes it guards are one step. The same holds for the claim (owner = me and epoch + 1 together)
 * and for mirrored_id, written in the script that adds the entries it names: a reply lost to a
 * timeout leaves Redis either before or after the whole batch, and a replay skips ids at or below
 * mirrored_id (XADD with an explicit id below the top would fail anyway), so nothing is ever
 * added twice.
 *
 * Scripts are loaded with SCRIPT LOAD on every connect and run with EVALSHA; a NOSCRIPT reply (a
 * SCRIPT FLUSH without a reconnect) reloads them. Numbers cross the script boundary as decimal
 * strings: Lua numbers are doubles, exact to 2^53, far above any event id or timestamp here. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mirror_redis.h"

static const char *const script_src[MR_SCRIPT_COUNT] = {
	/* MR_SCRIPT_WRITE: KEYS s, e, a; ARGV as MR_W_* (1-based here). */
	/* Few calls per run (one HMGET, the XADDs, one HSET, the expiries asked for): the cost of
	 * a script is mostly its calls, and the mirror runs one per session per pass. */
	"local me = ARGV[1]\n"
	"local h = redis.call('HMGET', KEYS[1], 'owner', 'mirrored_id', 'claimed', 'lost')\n"
	"local owner = h[1]\n"
	"if owner then\n"
	"  if owner ~= me then return {-1, owner, '0'} end\n"
	"elseif ARGV[2] == '0' then\n"
	"  return {-2, '', '0'}\n"
	"else\n"
	"  redis.call('HSETNX', KEYS[1], 'epoch', '0')\n"
	"end\n"
	/* "2": the session here has another history than Redis (restored under the same id with
	 * fewer ids than Redis holds): Redis's copy is replaced, not merged. */
	"if ARGV[2] == '2' then\n"
	"  redis.call('DEL', KEYS[2], KEYS[3])\n"
	"  redis.call('HDEL', KEYS[1], 'lost')\n"
	"  h[2] = nil; h[3] = nil; h[4] = nil\n"
	"end\n"
	"local hs = {'owner', me}\n"
	"local nf, ne = tonumber(ARGV[8]), tonumber(ARGV[9])\n"
	"local ns, nd = tonumber(ARGV[10]), tonumber(ARGV[11])\n"
	"local i = 15\n"
	"for j = 1, nf do\n"
	"  hs[#hs + 1] = ARGV[i]; hs[#hs + 1] = ARGV[i + 1]; i = i + 2\n"
	"end\n"
	/* A field that is no number (written by someone else) counts as 0 and is rewritten:
	 * ids Redis holds are skipped by the XADD itself ('equal or smaller'). */
	"local top = tonumber(h[2] or '0') or 0\n"
	"local top0 = top\n"
	"for j = 1, ne do\n"
	"  local id = tonumber(ARGV[i])\n"
	"  if id > top then\n"
	"    local r\n"
	"    if ARGV[i + 4] == '1' then\n"
	"      r = redis.pcall('XADD', KEYS[2], ARGV[i] .. '-0',\n"
	"        's', ARGV[i + 1], 'k', ARGV[i + 2], 't', ARGV[i + 3], 'g', '1')\n"
	"    else\n"
	"      r = redis.pcall('XADD', KEYS[2], ARGV[i] .. '-0',\n"
	"        's', ARGV[i + 1], 'k', ARGV[i + 2], 't', ARGV[i + 3], 'd', ARGV[i + 5])\n"
	"    end\n"
	/* "equal or smaller than the target stream top item": the stream holds this id or a later
	 * one already, so the id is in Redis and is never added twice. Any other error (a key of
	 * another type, out of memory) stops here, before mirrored_id moves: sent again later. */
	"    if type(r) == 'table' and r.err and not string.find(r.err, 'equal or smaller') then\n"
	"      return redis.error_reply('XADD ' .. ARGV[i] .. ': ' .. r.err)\n"
	"    end\n"
	"    top = id\n"
	"  end\n"
	"  i = i + 6\n"
	"end\n"
	/* A trim each time mirrored_id crosses a quarter of the ring rather than MAXLEN on every
	 * XADD: the stream keeps about ring_events entries, at most a quarter more ('~' lets Redis
	 * cut whole nodes only). */
	"local q = math.max(1, math.floor(tonumber(ARGV[4]) / 4))\n"
	"if ne > 0 and math.floor(top / q) ~= math.floor(top0 / q) then\n"
	"  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[4])\n"
	"end\n"
	/* Ids declared lost (evicted before the mirror copied them) are behind mirrored_id too. */
	"for b in string.gmatch(ARGV[6], '%-(%d+)') do\n"
	"  if tonumber(b) > top then top = tonumber(b) end\n"
	"end\n"
	"local cl = tonumber(h[3] or '0') or 0\n"
	"local c2 = tonumber(ARGV[5])\n"
	"if c2 > cl then cl = c2 end\n"
	"if top > cl then cl = top end\n"
	"hs[#hs + 1] = 'mirrored_id'; hs[#hs + 1] = string.format('%d', top)\n"
	"hs[#hs + 1] = 'claimed'; hs[#hs + 1] = string.format('%d', cl)\n"
	"if ARGV[6] ~= '' then\n"
	"  local l = h[4]\n"
	"  if l and l ~= '' then l = l .. ',' .. ARGV[6] else l = ARGV[6] end\n"
	"  hs[#hs + 1] = 'lost'; hs[#hs + 1] = l\n"
	"end\n"
	"if ARGV[7] ~= '' then hs[#hs + 1] = 'state'; hs[#hs + 1] = ARGV[7] end\n"
	"redis.call('HSET', KEYS[1], unpack(hs))\n"
	"if ARGV[12] == '1' then redis.call('DEL', KEYS[3]) end\n"
	"for j = 1, ns do\n"
	"  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2\n"
	"end\n"
	"for j = 1, nd do\n"
	"  redis.call('HDEL', KEYS[3], ARGV[i]); i = i + 1\n"
	"end\n"
	/* The expiry: on every key when asked (MR_W_EXPIRE_ALL, with each touch), else on the keys
	 * this run may have created (XADD and HSET keep a key's expiry; a new key has none): the
	 * stream when it got its first entries, the attributes when written. */
	"local ex = {ARGV[14] == '1', ARGV[14] == '1' or (ne > 0 and top0 == 0),\n"
	"  ARGV[14] == '1' or ns > 0 or nd > 0 or ARGV[12] == '1'}\n"
	"for k = 1, 3 do\n"
	"  if ex[k] then\n"
	"    if ARGV[3] == '-1' then redis.call('PEXPIRE', KEYS[k], ARGV[13])\n"
	"    elseif ARGV[3] == '0' then redis.call('PERSIST', KEYS[k])\n"
	"    else redis.call('PEXPIREAT', KEYS[k], ARGV[3]) end\n"
	"  end\n"
	"end\n"
	"return {1, me, string.format('%d', top)}\n",

	/* MR_SCRIPT_CLAIM: KEYS s; ARGV me. {0} no record, {-1, state} not live, else
	 * {1, previous owner or '', HGETALL after the claim}. */
	"if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end\n"
	"local st = redis.call('HGET', KEYS[1], 'state')\n"
	"if st and st ~= 'live' then return {-1, st} end\n"
	"local prev = redis.call('HGET', KEYS[1], 'owner') or ''\n"
	"redis.call('HSET', KEYS[1], 'owner', ARGV[1])\n"
	"redis.call('HINCRBY', KEYS[1], 'epoch', 1)\n"
	"return {1, prev, redis.call('HGETALL', KEYS[1])}\n",
};

int64_t mr_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mr_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *mr_strerror(int code)
{
	switch (code) {
	case MR_EINVAL:
		return "invalid argument";
	case MR_EDOWN:
		return "Redis unreachable";
	case MR_ENOREC:
		return "no record of the session in Redis";
	case MR_ENOTLIVE:
		return "the session was deleted or expired";
	case MR_EPROTO:
		return "unexpected reply from Redis";
	case MR_ENOMEM:
		return "out of memory";
	case MR_ENOSCRIPT:
		return "script not loaded (reloaded: resend)";
	case MR_ENOTOWNER:
		return "another node owns the session";
	case MR_EAUTH:
		return "Redis refused the credentials";
	default:
		return code >= 0 ? "success" : "unknown error";
	}
}

int mr_conn_init(struct mr_conn *m, const char *hostport, const char *prefix,
		 int connect_timeout_ms, int command_timeout_ms)
{
	*m = (struct mr_conn){ 0 };
	m->connect_timeout_ms = connect_timeout_ms > 0 ? connect_timeout_ms : MR_CONNECT_TIMEOUT_MS;
	m->command_timeout_ms = command_timeout_ms > 0 ? command_timeout_ms : MR_COMMAND_TIMEOUT_MS;
	m->backoff_ms = MR_BACKOFF_MIN_MS;
	if (!prefix)
		prefix = "shmb:";
	if (strlen(prefix) > MR_PREFIX_MAX) {
		snprintf(m->err, sizeof m->err, "prefix longer than %d bytes", MR_PREFIX_MAX);
		return MR_EINVAL;
	}
	strcpy(m->prefix, prefix);
	if (!hostport)
		hostport = "127.0.0.1:6379";
	const char *colon = strrchr(hostport, ':');
	const char *h = hostport;
	size_t hl = colon ? (size_t)(colon - hostport) : 0;
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	char *end;
	long port = colon ? strtol(colon + 1, &end, 10) : 0;
	if (!colon || hl == 0 || hl >= sizeof m->host || colon[1] == '\0' || *end != '\0' ||
	    port < 1 || port > 65535) {
		snprintf(m->err, sizeof m->err, "Redis address must be HOST:PORT, not '%s'",
			 hostport);
		return MR_EINVAL;
	}
	memcpy(m->host, h, hl);
	m->host[hl] = '\0';
	m->port = (int)port;
	return 0;
}

static struct timeval tv_of(int ms)
{
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

/* An error reply that is about who we are (no or wrong credentials, a command the ACL user may
 * not run): retrying will not help until the operator fixes it, so it is told apart. */
static int auth_error(const char *e)
{
	return strncmp(e, "NOAUTH", 6) == 0 || strncmp(e, "WRONGPASS", 9) == 0 ||
	       strncmp(e, "NOPERM", 6) == 0 || strncmp(e, "ERR invalid password", 20) == 0 ||
	       strncmp(e, "ERR AUTH", 8) == 0 || strncmp(e, "ERR Client sent AUTH", 20) == 0;
}

/* The password, from the file (first line) or the environment variable: 0, or MR_EINVAL with
 * m->err. pw has room for 512 bytes. */
static int read_password(struct mr_conn *m, char *pw, size_t cap)
{
	size_t n;
	if (m->pw_file[0]) {
		/* Non-blocking open and a regular file only: a FIFO or a device named by mistake
		 * must not hang the caller (this runs on every connect). */
		struct stat sb;
		int fd = open(m->pw_file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
		FILE *f = NULL;
		if (fd >= 0 && (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))) {
			close(fd);
			snprintf(m->err, sizeof m->err,
				 "Redis password file %s: not a regular file", m->pw_file);
			return MR_EINVAL;
		}
		if (fd < 0 || !(f = fdopen(fd, "r"))) {
			snprintf(m->err, sizeof m->err, "Redis password file %s: %s", m->pw_file,
				 strerror(errno));
			if (fd >= 0)
				close(fd);
			return MR_EINVAL;
		}
		n = fread(pw, 1, cap, f);
		int bad = ferror(f);
		fclose(f);
		if (bad) {
			snprintf(m->err, sizeof m->err, "Redis password file %s: read error",
				 m->pw_file);
			return MR_EINVAL;
		}
		char *nl = memchr(pw, '\n', n);
		if (nl)
			n = (size_t)(nl - pw);
		else if (n == cap) {
			snprintf(m->err, sizeof m->err,
				 "Redis password file %s: password over %zu bytes", m->pw_file,
				 cap - 1);
			return MR_EINVAL;
		}
		if (n && pw[n - 1] == '\r')
			n--;
	} else {
		const char *v = getenv(m->pw_env);
		if (!v) {
			snprintf(m->err, sizeof m->err,
				 "Redis password variable %s is not set in the environment",
				 m->pw_env);
			return MR_EINVAL;
		}
		n = strlen(v);
		if (n >= cap) {
			snprintf(m->err, sizeof m->err,
				 "Redis password variable %s: password over %zu bytes", m->pw_env,
				 cap - 1);
			return MR_EINVAL;
		}
		memcpy(pw, v, n);
	}
	pw[n] = '\0';
	if (n == 0) {
		snprintf(m->err, sizeof m->err, "Redis password %s %s is empty",
			 m->pw_file[0] ? "file" : "variable",
			 m->pw_file[0] ? m->pw_file : m->pw_env);
		return MR_EINVAL;
	}
	return 0;
}

int mr_conn_auth(struct mr_conn *m, const char *user, const char *password_file,
		 const char *password_env)
{
	m->user[0] = m->pw_file[0] = m->pw_env[0] = '\0';
	if (!password_file == !password_env) {
		snprintf(m->err, sizeof m->err,
			 "a Redis password comes from a file or an environment variable: one of "
			 "them");
		return MR_EINVAL;
	}
	const char *src = password_file ? password_file : password_env;
	char *dst = password_file ? m->pw_file : m->pw_env;
	size_t cap = password_file ? sizeof m->pw_file : sizeof m->pw_env;
	if (!*src || strlen(src) >= cap || (user && (!*user || strlen(user) >= sizeof m->user))) {
		snprintf(m->err, sizeof m->err, "bad Redis %s",
			 !*src || strlen(src) >= cap ? "password source" : "user name");
		return MR_EINVAL;
	}
	strcpy(dst, src);
	if (user)
		strcpy(m->user, user);
	char pw[512];
	int rc = read_password(m, pw, sizeof pw);
	explicit_bzero(pw, sizeof pw);
	if (rc < 0)
		m->user[0] = m->pw_file[0] = m->pw_env[0] = '\0';
	return rc;
}

/* AUTH on the new connection, when credentials were given. */
static int authenticate(struct mr_conn *m)
{
	if (!m->pw_file[0] && !m->pw_env[0])
		return 0;
	char pw[512];
	int rc = read_password(m, pw, sizeof pw);
	if (rc < 0) {
		explicit_bzero(pw, sizeof pw);
		return MR_EAUTH;
	}
	const char *av[3] = { "AUTH", m->user, pw };
	size_t al[3] = { 4, strlen(m->user), strlen(pw) };
	int off = m->user[0] ? 0 : 1;
	if (off) {
		av[1] = "AUTH";
		al[1] = 4;
	}
	redisReply *r = redisCommandArgv(m->ctx, 3 - off, av + off, al + off);
	explicit_bzero(pw, sizeof pw);
	if (!r) {
		snprintf(m->err, sizeof m->err, "AUTH: %s", m->ctx->errstr);
		return MR_EDOWN;
	}
	rc = 0;
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(m->err, sizeof m->err, "Redis %s:%d refused AUTH%s%s: %s", m->host,
			 m->port, m->user[0] ? " as user " : "", m->user, r->str);
		rc = MR_EAUTH;
	}
	freeReplyObject(r);
	return rc;
}

/* SCRIPT LOAD of both scripts on the current connection. */
static int load_scripts(struct mr_conn *m)
{
	for (int s = 0; s < MR_SCRIPT_COUNT; s++) {
		redisReply *r = redisCommand(m->ctx, "SCRIPT LOAD %s", script_src[s]);
		if (!r) {
			snprintf(m->err, sizeof m->err, "SCRIPT LOAD: %s", m->ctx->errstr);
			return MR_EDOWN;
		}
		int ok = r->type == REDIS_REPLY_STRING && r->len == 40;
		int auth = r->type == REDIS_REPLY_ERROR && auth_error(r->str);
		if (ok)
			memcpy(m->sha[s], r->str, 41);
		else if (auth)
			snprintf(m->err, sizeof m->err, "Redis %s:%d refused SCRIPT LOAD: %s%s",
				 m->host, m->port, r->str,
				 strncmp(r->str, "NOAUTH", 6) == 0 && !m->pw_file[0] &&
						 !m->pw_env[0]
					 ? " (no password configured)"
					 : "");
		else
			snprintf(m->err, sizeof m->err, "SCRIPT LOAD: %s",
				 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		freeReplyObject(r);
		if (!ok)
			return auth ? MR_EAUTH : MR_EPROTO;
	}
	m->scripts_stale = 0;
	return 0;
}

static void watch(struct mr_conn *m, int fd)
{
	if (m->watch_fd)
		*m->watch_fd = fd;
}

void mr_conn_drop(struct mr_conn *m)
{
	watch(m, -1);
	if (m->ctx) {
		redisFree(m->ctx);
		m->ctx = NULL;
		m->drops++;
	}
}

void mr_conn_close(struct mr_conn *m)
{
	watch(m, -1);
	if (m->ctx)
		redisFree(m->ctx);
	m->ctx = NULL;
}

int mr_conn_ready(struct mr_conn *m)
{
	if (m->ctx && !m->ctx->err) {
		if (!m->scripts_stale)
			return 0;
		/* A pipelined reply said NOSCRIPT (SCRIPT FLUSH): reload, the pipeline drained. */
		if (load_scripts(m) == 0)
			return 0;
		m->errors++;
	}
	mr_conn_drop(m);
	int64_t now = mr_mono_ms();
	if (now < m->next_try_ms)
		return m->auth_refused ? MR_EAUTH : MR_EDOWN;
	m->ctx = redisConnectWithTimeout(m->host, m->port, tv_of(m->connect_timeout_ms));
	int rc = 0;
	if (!m->ctx) {
		snprintf(m->err, sizeof m->err, "cannot connect to %s:%d: out of memory", m->host,
			 m->port);
		rc = MR_EDOWN;
	} else if (m->ctx->err) {
		snprintf(m->err, sizeof m->err, "cannot connect to %s:%d: %s", m->host, m->port,
			 m->ctx->errstr);
		rc = MR_EDOWN;
	} else if (watch(m, m->ctx->fd),
		   redisSetTimeout(m->ctx, tv_of(m->command_timeout_ms)) != REDIS_OK) {
		snprintf(m->err, sizeof m->err, "cannot set the command timeout: %s",
			 m->ctx->errstr);
		rc = MR_EDOWN;
	} else if ((rc = authenticate(m)) == 0) {
		rc = load_scripts(m);
	}
	if (rc < 0) {
		watch(m, -1);
		if (m->ctx)
			redisFree(m->ctx);
		m->ctx = NULL;
		m->errors++;
		m->auth_failures += rc == MR_EAUTH;
		m->auth_refused = rc == MR_EAUTH;
		m->next_try_ms = now + m->backoff_ms;
		m->backoff_ms = m->backoff_ms * 2 > MR_BACKOFF_MAX_MS ? MR_BACKOFF_MAX_MS
								      : m->backoff_ms * 2;
		return rc == MR_EAUTH ? MR_EAUTH : MR_EDOWN;
	}
	m->backoff_ms = MR_BACKOFF_MIN_MS;
	m->next_try_ms = 0;
	m->scripts_stale = 0;
	m->auth_refused = 0;
	m->connects++;
	return 0;
}

int mr_key(const struct mr_conn *m, char kind, const char *sid, char *buf, size_t len)
{
	if ((kind != 's' && kind != 'e' && kind != 'a') || !sid)
		return MR_EINVAL;
	int n = snprintf(buf, len, "%s%c:{%s}", m->prefix, kind, sid);
	return n < 0 || (size_t)n >= len ? MR_EINVAL : 0;
}

int mr_node_key(const struct mr_conn *m, int node, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%sn:%d", m->prefix, node);
	return n < 0 || (size_t)n >= len ? MR_EINVAL : 0;
}

/* The EVALSHA argument vector: "EVALSHA", sha, nkeys, then argv. */
static int eval_argv(struct mr_conn *m, int script, int nkeys, int argc, const char **argv,
		     const size_t *lens, const char ***av, size_t **al)
{
	static __thread char nk[16];
	*av = malloc((size_t)(argc + 3) * sizeof **av);
	*al = malloc((size_t)(argc + 3) * sizeof **al);
	if (!*av || !*al) {
		free(*av);
		free(*al);
		snprintf(m->err, sizeof m->err, "out of memory");
		return MR_ENOMEM;
	}
	snprintf(nk, sizeof nk, "%d", nkeys);
	(*av)[0] = "EVALSHA";
	(*al)[0] = 7;
	(*av)[1] = m->sha[script];
	(*al)[1] = 40;
	(*av)[2] = nk;
	(*al)[2] = strlen(nk);
	for (int i = 0; i < argc; i++) {
		(*av)[i + 3] = argv[i];
		(*al)[i + 3] = lens ? lens[i] : strlen(argv[i]);
	}
	return 0;
}

int mr_append_eval(struct mr_conn *m, int script, int nkeys, int argc, const char **argv,
		   const size_t *lens)
{
	if (script < 0 || script >= MR_SCRIPT_COUNT || nkeys < 0 || nkeys > argc)
		return MR_EINVAL;
	if (!m->ctx)
		return MR_EDOWN;
	const char **av;
	size_t *al;
	int rc = eval_argv(m, script, nkeys, argc, argv, lens, &av, &al);
	if (rc < 0)
		return rc;
	rc = redisAppendCommandArgv(m->ctx, argc + 3, av, al) == REDIS_OK ? 0 : MR_ENOMEM;
	free(av);
	free(al);
	if (rc < 0)
		snprintf(m->err, sizeof m->err, "cannot queue a command: %s", m->ctx->errstr);
	return rc;
}

static int is_noscript(const redisReply *r)
{
	return r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

int mr_get_reply(struct mr_conn *m, redisReply **out)
{
	*out = NULL;
	if (!m->ctx)
		return MR_EDOWN;
	void *p = NULL;
	if (redisGetReply(m->ctx, &p) != REDIS_OK || !p) {
		snprintf(m->err, sizeof m->err, "Redis %s:%d: %s", m->host, m->port,
			 m->ctx->errstr[0] ? m->ctx->errstr : "no reply");
		m->errors++;
		mr_conn_drop(m);
		return MR_EDOWN;
	}
	redisReply *r = p;
	if (is_noscript(r)) {
		freeReplyObject(r);
		/* Not loaded here: replies still queued on this connection come first. The
		 * caller drains the pipeline; the next mr_conn_ready() reloads. */
		m->scripts_stale = 1;
		return MR_ENOSCRIPT;
	}
	*out = r;
	return 0;
}

redisReply *mr_eval(struct mr_conn *m, int script, int nkeys, int argc, const char **argv,
		    const size_t *lens)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (mr_conn_ready(m) < 0)
			return NULL;
		if (mr_append_eval(m, script, nkeys, argc, argv, lens) < 0)
			return NULL;
		redisReply *r;
		int rc = mr_get_reply(m, &r);
		if (rc == MR_ENOSCRIPT)
			continue;
		if (rc < 0)
			return NULL;
		return r;
	}
	snprintf(m->err, sizeof m->err, "NOSCRIPT after reloading the scripts");
	return NULL;
}

int mr_owner(struct mr_conn *m, const char *sid, int *owner, int *live)
{
	char key[MR_KEY_MAX];
	*owner = 0;
	*live = 0;
	if (mr_key(m, 's', sid, key, sizeof key) < 0)
		return MR_EINVAL;
	int rc = mr_conn_ready(m);
	if (rc < 0)
		return rc;
	redisReply *r = redisCommand(m->ctx, "HMGET %s owner state", key);
	if (!r) {
		snprintf(m->err, sizeof m->err, "HMGET: %s", m->ctx->errstr);
		m->errors++;
		mr_conn_drop(m);
		return MR_EDOWN;
	}
	rc = MR_EPROTO;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
		redisReply *o = r->element[0], *s = r->element[1];
		if (o->type == REDIS_REPLY_NIL && s->type == REDIS_REPLY_NIL) {
			rc = 0;
		} else {
			*owner = o->type == REDIS_REPLY_STRING ? atoi(o->str) : 0;
			*live = s->type == REDIS_REPLY_STRING && strcmp(s->str, "live") == 0;
			rc = 1;
		}
	} else {
		snprintf(m->err, sizeof m->err, "HMGET: unexpected reply");
	}
	freeReplyObject(r);
	return rc;
}

/* ---- failover ---- */

/* Strict decimal of a reply string: 0 and *v, or -1. */
static int parse_u64(const char *s, size_t n, uint64_t *v)
{
	if (n == 0 || n > 20)
		return -1;
	uint64_t x = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || x > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
			return -1;
		x = x * 10 + (uint64_t)(s[i] - '0');
	}
	*v = x;
	return 0;
}

/* The value of field name in a flat [field, value, ...] array, or NULL. */
static const redisReply *field(const redisReply *arr, const char *name)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i + 1 < arr->elements; i += 2) {
		const redisReply *k = arr->element[i];
		if (k->type == REDIS_REPLY_STRING && k->len == nl && memcmp(k->str, name, nl) == 0)
			return arr->element[i + 1]->type == REDIS_REPLY_STRING ? arr->element[i + 1]
									       : NULL;
	}
	return NULL;
}

static int field_u64(const redisReply *arr, const char *name, uint64_t *v, int required)
{
	const redisReply *f = field(arr, name);
	*v = 0;
	if (!f)
		return required ? -1 : 0;
	return parse_u64(f->str, f->len, v);
}

/* A NUL-terminated copy of a reply string in the string area (cursor *p). */
static const char *put_str(char **p, const char *s, size_t n)
{
	char *d = *p;
	memcpy(d, s, n);
	d[n] = '\0';
	*p += n + 1;
	return d;
}

static int fail(struct mr_failover *f, int rc)
{
	mr_failover_free(f);
	return rc;
}

/* Stream entries, newest first from XREVRANGE, into f->ev in ascending order. */
static int fill_events(struct mr_conn *m, struct mr_failover *f)
{
	const redisReply *ev = f->events;
	f->ev = calloc(ev->elements ? ev->elements : 1, sizeof *f->ev);
	if (!f->ev)
		return MR_ENOMEM;
	size_t n = 0;
	for (size_t i = ev->elements; i-- > 0;) {
		const redisReply *e = ev->element[i];
		if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
		    e->element[0]->type != REDIS_REPLY_STRING ||
		    e->element[1]->type != REDIS_REPLY_ARRAY)
			goto bad;
		const redisReply *idr = e->element[0], *kv = e->element[1];
		const char *dash = memchr(idr->str, '-', idr->len);
		uint64_t id, s, k;
		int64_t t;
		uint64_t tu;
		if (!dash || parse_u64(idr->str, (size_t)(dash - idr->str), &id) < 0 || id == 0 ||
		    field_u64(kv, "s", &s, 1) < 0 || field_u64(kv, "k", &k, 1) < 0 ||
		    field_u64(kv, "t", &tu, 1) < 0 || s > UINT32_MAX || k > UINT16_MAX)
			goto bad;
		t = (int64_t)tu;
		if (n && id <= f->ev[n - 1].id)
			goto bad;
		shmb_image_event *x = &f->ev[n++];
		x->id = id;
		x->stream = (uint32_t)s;
		x->kind = (uint16_t)k;
		x->ts_ms = t;
		const redisReply *g = field(kv, "g"), *d = field(kv, "d");
		if (g && g->len == 1 && g->str[0] == '1') {
			x->flags = SHMB_EV_GAP;
		} else if (d) {
			x->data = d->str;
			x->len = d->len;
		} else {
			goto bad;
		}
	}
	f->img.events = f->ev;
	f->img.n_events = n;
	return 0;
bad:
	snprintf(m->err, sizeof m->err, "malformed stream entry");
	return MR_EPROTO;
}

int mr_failover(struct mr_conn *m, const char *sid, int me, uint32_t ring_events,
		uint64_t client_last_id, uint64_t margin, struct mr_failover *out)
{
	*out = (struct mr_failover){ 0 };
	char ks[MR_KEY_MAX], ke[MR_KEY_MAX], ka[MR_KEY_MAX], mes[16];
	if (!sid || strlen(sid) != SHMB_SID_LEN || me < 1 || me > SHMB_NODE_ID_MAX ||
	    ring_events == 0 || mr_key(m, 's', sid, ks, sizeof ks) < 0 ||
	    mr_key(m, 'e', sid, ke, sizeof ke) < 0 || mr_key(m, 'a', sid, ka, sizeof ka) < 0) {
		snprintf(m->err, sizeof m->err, "bad session id, node id or ring size");
		return MR_EINVAL;
	}
	if (margin == 0)
		margin = MR_ID_MARGIN;
	snprintf(mes, sizeof mes, "%d", me);
	const char *argv[] = { ks, mes };
	redisReply *r = mr_eval(m, MR_SCRIPT_CLAIM, 1, 2, argv, NULL);
	if (!r)
		return m->auth_refused ? MR_EAUTH : MR_EDOWN;
	struct mr_failover *f = out;
	f->rec = r;
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
	    r->element[0]->type != REDIS_REPLY_INTEGER) {
		snprintf(m->err, sizeof m->err, "claim: %s",
			 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		return fail(f, MR_EPROTO);
	}
	long long st = r->element[0]->integer;
	if (st == 0)
		return fail(f, MR_ENOREC);
	if (st == -1)
		return fail(f, MR_ENOTLIVE);
	if (st != 1 || r->elements != 3 || r->element[1]->type != REDIS_REPLY_STRING ||
	    r->element[2]->type != REDIS_REPLY_ARRAY) {
		snprintf(m->err, sizeof m->err, "claim: unexpected reply");
		return fail(f, MR_EPROTO);
	}
	f->prev_owner = atoi(r->element[1]->str);
	const redisReply *rec = r->element[2];
	const redisReply *tenant = field(rec, "tenant"), *principal = field(rec, "principal");
	const redisReply *lost = field(rec, "lost");
	uint64_t created, accessed, inact, abs_ttl;
	/* Lengths are checked by shmb_session_restore against the segment's own limits. */
	if (!tenant || tenant->len == 0 || memchr(tenant->str, 0, tenant->len) ||
	    (principal && memchr(principal->str, 0, principal->len)) ||
	    field_u64(rec, "created_at_ms", &created, 1) < 0 || created == 0 ||
	    field_u64(rec, "last_accessed_at_ms", &accessed, 1) < 0 ||
	    field_u64(rec, "inactivity_ttl_ms", &inact, 0) < 0 ||
	    field_u64(rec, "absolute_ttl_ms", &abs_ttl, 0) < 0 ||
	    field_u64(rec, "mirrored_id", &f->mirrored_id, 0) < 0 ||
	    field_u64(rec, "claimed", &f->claimed, 0) < 0 ||
	    field_u64(rec, "epoch", &f->epoch, 0) < 0 || created > INT64_MAX ||
	    accessed > INT64_MAX) {
		snprintf(m->err, sizeof m->err, "malformed session record %s", ks);
		return fail(f, MR_EPROTO);
	}

	/* The stream's newest ring_events entries and the attributes, pipelined. */
	char cnt[24];
	snprintf(cnt, sizeof cnt, "%u", ring_events);
	if (redisAppendCommand(m->ctx, "XREVRANGE %s + - COUNT %s", ke, cnt) != REDIS_OK ||
	    redisAppendCommand(m->ctx, "HGETALL %s", ka) != REDIS_OK)
		return fail(f, MR_ENOMEM);
	int rc = mr_get_reply(m, &f->events);
	if (rc == 0)
		rc = mr_get_reply(m, &f->attrs);
	if (rc < 0)
		return fail(f, rc == MR_ENOSCRIPT ? MR_EPROTO : rc);
	if (f->events->type != REDIS_REPLY_ARRAY || f->attrs->type != REDIS_REPLY_ARRAY) {
		snprintf(m->err, sizeof m->err, "XREVRANGE/HGETALL: %s",
			 f->events->type == REDIS_REPLY_ERROR  ? f->events->str
			 : f->attrs->type == REDIS_REPLY_ERROR ? f->attrs->str
							       : "unexpected reply");
		return fail(f, MR_EPROTO);
	}
	if ((rc = fill_events(m, f)) < 0)
		return fail(f, rc);

	/* Strings that must be NUL-terminated: sid, tenant, principal, attribute keys, lost. */
	size_t need = SHMB_SID_LEN + 1 + tenant->len + 1 + (principal ? principal->len + 1 : 0) +
		      (lost ? lost->len : 0) + 1;
	const redisReply *at = f->attrs;
	for (size_t i = 0; i + 1 < at->elements; i += 2)
		need += at->element[i]->len + 1;
	f->strings = malloc(need);
	f->at = calloc(at->elements / 2 + 1, sizeof *f->at);
	if (!f->strings || !f->at)
		return fail(f, MR_ENOMEM);
	char *p = f->strings;
	f->img.sid = put_str(&p, sid, SHMB_SID_LEN);
	f->img.tenant = put_str(&p, tenant->str, tenant->len);
	f->img.principal = principal ? put_str(&p, principal->str, principal->len) : NULL;
	f->lost = (char *)put_str(&p, lost ? lost->str : "", lost ? lost->len : 0);
	size_t na = 0;
	for (size_t i = 0; i + 1 < at->elements; i += 2) {
		const redisReply *k = at->element[i], *v = at->element[i + 1];
		if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
			continue;
		f->at[na].key = put_str(&p, k->str, k->len);
		f->at[na].val = v->str;
		f->at[na].len = v->len;
		na++;
	}
	f->img.attrs = f->at;
	f->img.n_attrs = na;
	f->img.created_at_ms = (int64_t)created;
	f->img.last_accessed_at_ms = (int64_t)(accessed ? accessed : created);
	f->img.inactivity_ttl_ms = inact;
	f->img.absolute_ttl_ms = abs_ttl;
	uint64_t last = f->mirrored_id;
	if (f->claimed > last)
		last = f->claimed;
	if (client_last_id > last)
		last = client_last_id;
	if (f->img.n_events && f->ev[f->img.n_events - 1].id > last)
		last = f->ev[f->img.n_events - 1].id;
	f->img.last_event_id = last + margin;
	f->lost_from = f->mirrored_id + 1;
	f->lost_to = f->img.last_event_id;
	return 0;
}

void mr_failover_free(struct mr_failover *f)
{
	if (f->rec)
		freeReplyObject(f->rec);
	if (f->events)
		freeReplyObject(f->events);
	if (f->attrs)
		freeReplyObject(f->attrs);
	free(f->ev);
	free(f->at);
	free(f->strings);
	*f = (struct mr_failover){ 0 };
}

/* Ids of [a, b] above after. */
static uint64_t above(uint64_t a, uint64_t b, uint64_t after)
{
	if (b < a || b <= after)
		return 0;
	return b - (a > after ? a : after + 1) + 1;
}

uint64_t mr_lost_after(const struct mr_failover *f, uint64_t after_id)
{
	uint64_t n = above(f->lost_from, f->lost_to, after_id);
	for (const char *s = f->lost; s && *s;) {
		char *end;
		unsigned long long a = strtoull(s, &end, 10), b = a;
		if (*end == '-')
			b = strtoull(end + 1, &end, 10);
		n += above(a, b, after_id);
		s = *end == ',' ? end + 1 : end + strlen(end);
	}
	return n;
}
