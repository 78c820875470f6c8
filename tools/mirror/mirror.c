/* mirror.c - shmb-mirror: copies one broker's sessions and events to Redis (docs/multi-host.md,
 * "Redis mirror"; docs/man/shmb-mirror.1).
 *
 *     shmb-mirror [--name N] [--redis HOST:PORT] [--redis-prefix P] [--interval-ms N] [--batch N]
 *                 [--touch-interval-ms N] [--redis-timeout-ms N] [--metrics-listen ADDR:PORT]
 *                 [--redis-user U] [--redis-password-file F | --redis-password-env V]
 *     shmb-mirror [--name N] status [--json]
 *
 * It attaches like a worker (libshmb: the broker admits it, and it learns the node_id) and maps
 * the segment read-only for the data: mirror_sync.c reads records, rings and attributes without
 * touching them. One thread runs a loop: every --interval-ms a pass (mirror_sync.c), every second
 * the status file (<runtime dir>/<name>.mirror.json, written to a temporary name and renamed, so
 * a reader sees a whole one) and the node hash in Redis (P n:<node>, PEXPIRE 5 s); the wait
 * between passes is a poll on the --metrics-listen socket, which serves Prometheus text.
 *
 * Failures. Redis unreachable or slow: the connection is dropped and retried with a backoff
 * (mirror_redis.c); meanwhile the mirror keeps scanning and reports its lag; on reconnect every
 * session asks Redis again where to resume (so what Redis lost in a restart is sent again, and
 * nothing is sent twice). The broker restarted: the segment is adopted and the mapping stays
 * good; a segment replaced (its header says retired) is mapped again after re-attaching. The
 * mirror killed: its successor resumes from what Redis holds. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "ctl.h"
#include "mirror.h"
#include "shmb.h"

#define STATUS_STALE_MS 5000 /* a status file older than this: no mirror runs */
#define NODE_TTL_MS 5000

static volatile sig_atomic_t stop;
static volatile sig_atomic_t redis_fd = -1; /* the Redis connection (mr_conn's watch_fd) */
static const char *log_name = "?";
static const char *const level_names[] = { "error", "warning", "info", "debug" };

/* A stop request must not wait for a stalled Redis: hiredis retries a read interrupted by a
 * signal until the command timeout (up to --redis-timeout-ms, per command). Shutting the socket
 * down makes that read end at once; the loop then sees stop. */
static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
	int fd = redis_fd;
	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

/* Rate limit, as the broker's log does (broker/log.c): each call site (its format string) may
 * write LOG_BURST lines per LOG_INTERVAL_MS; the rest are counted and reported in one line when
 * the interval is over. A Redis that refuses every write must not flood the journal. */
#define LOG_KEYS 32
#define LOG_BURST 10
#define LOG_INTERVAL_MS 10000

static struct {
	const char *fmt;
	int64_t start_ms;
	uint32_t written, suppressed;
} log_keys[LOG_KEYS];

static void log_line(int level, const char *fmt, va_list ap)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
	n += snprintf(line + n, sizeof line - (size_t)n,
		      ".%03ldZ %s shmb-mirror[%d] %s: ", ts.tv_nsec / 1000000, level_names[level],
		      (int)getpid(), log_name);
	if (n < (int)sizeof line)
		n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, (size_t)n); /* one write: lines never interleave */
	(void)w;
}

static void log_fmt(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_fmt(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_line(level, fmt, ap);
	va_end(ap);
}

void ms_log(int level, const char *fmt, ...)
{
	int64_t now = mr_mono_ms();
	int k = 0, oldest = 0;
	for (; k < LOG_KEYS && log_keys[k].fmt && log_keys[k].fmt != fmt; k++)
		if (log_keys[k].start_ms < log_keys[oldest].start_ms)
			oldest = k;
	if (k == LOG_KEYS) { /* full: the key whose interval started first makes room */
		k = oldest;
		if (log_keys[k].suppressed)
			log_fmt(MS_WARNING, "suppressed %u lines like \"%s\"",
				log_keys[k].suppressed, log_keys[k].fmt);
		log_keys[k].fmt = NULL;
	}
	if (!log_keys[k].fmt || now - log_keys[k].start_ms >= LOG_INTERVAL_MS) {
		if (log_keys[k].fmt && log_keys[k].suppressed)
			log_fmt(MS_WARNING, "suppressed %u lines like \"%s\"",
				log_keys[k].suppressed, fmt);
		log_keys[k].fmt = fmt;
		log_keys[k].start_ms = now;
		log_keys[k].written = log_keys[k].suppressed = 0;
	}
	if (log_keys[k].written >= LOG_BURST) {
		log_keys[k].suppressed++;
		return;
	}
	log_keys[k].written++;
	va_list ap;
	va_start(ap, fmt);
	log_line(level, fmt, ap);
	va_end(ap);
}

struct opts {
	const char *name, *redis, *prefix, *listen, *user, *pw_file, *pw_env;
	long interval_ms, batch, touch_interval_ms, timeout_ms;
	int status, json;
};

static void usage(FILE *f)
{
	fputs("usage: shmb-mirror [--name N] [--redis HOST:PORT] [--redis-prefix P]\n"
	      "                   [--interval-ms N] [--batch N] [--touch-interval-ms N]\n"
	      "                   [--redis-timeout-ms N] [--metrics-listen ADDR:PORT]\n"
	      "                   [--redis-user U] [--redis-password-file F | --redis-password-env V]\n"
	      "       shmb-mirror [--name N] status [--json]\n"
	      "Copies the sessions and events of broker instance N to Redis (docs/multi-host.md).\n"
	      "  --name N               instance name (default $SHMB_NAME or \"default\")\n"
	      "  --redis HOST:PORT      Redis server (default 127.0.0.1:6379)\n"
	      "  --redis-prefix P       key prefix (default \"shmb:\")\n"
	      "  --interval-ms N        pause between passes, 1..1000 (default 5)\n"
	      "  --batch N              events per session per write, 1..100000 (default 512)\n"
	      "  --touch-interval-ms N  last access written at most this often (default 1000)\n"
	      "  --redis-timeout-ms N   connect and command timeout (default 2000)\n"
	      "  --redis-user U         Redis ACL user to AUTH as (default: requirepass's user)\n"
	      "  --redis-password-file F  AUTH with the first line of F, read on every connect\n"
	      "  --redis-password-env V   AUTH with the value of environment variable V\n"
	      "  --metrics-listen A:P   serve Prometheus text at http://A:P/metrics\n"
	      "  status [--json]        the running mirror's figures; exit 3 when none runs\n",
	      f);
}

static int usage_error(const char *fmt, const char *arg)
{
	fputs("shmb-mirror: ", stderr);
	fprintf(stderr, fmt, arg);
	fputs("\nTry 'shmb-mirror --help' for more information.\n", stderr);
	return 2;
}

static int num(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "redis", required_argument, NULL, 'r' },
		{ "redis-prefix", required_argument, NULL, 'p' },
		{ "interval-ms", required_argument, NULL, 'i' },
		{ "batch", required_argument, NULL, 'b' },
		{ "touch-interval-ms", required_argument, NULL, 't' },
		{ "redis-timeout-ms", required_argument, NULL, 'T' },
		{ "metrics-listen", required_argument, NULL, 'm' },
		{ "redis-user", required_argument, NULL, 'u' },
		{ "redis-password-file", required_argument, NULL, 'P' },
		{ "redis-password-env", required_argument, NULL, 'E' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	*o = (struct opts){ .name = getenv("SHMB_NAME"),
			    .interval_ms = 5,
			    .batch = 512,
			    .touch_interval_ms = 1000,
			    .timeout_ms = MR_COMMAND_TIMEOUT_MS };
	if (!o->name || !*o->name)
		o->name = "default";
	int c;
	while ((c = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
		switch (c) {
		case 'n':
			o->name = optarg;
			break;
		case 'r':
			o->redis = optarg;
			break;
		case 'p':
			o->prefix = optarg;
			break;
		case 'i':
			if (num(optarg, 1, 1000, &o->interval_ms) < 0)
				return usage_error("--interval-ms must be 1..1000, not '%s'",
						   optarg);
			break;
		case 'b':
			if (num(optarg, 1, 100000, &o->batch) < 0)
				return usage_error("--batch must be 1..100000, not '%s'", optarg);
			break;
		case 't':
			if (num(optarg, 0, 3600000, &o->touch_interval_ms) < 0)
				return usage_error(
					"--touch-interval-ms must be 0..3600000, not '%s'", optarg);
			break;
		case 'T':
			if (num(optarg, 10, 600000, &o->timeout_ms) < 0)
				return usage_error(
					"--redis-timeout-ms must be 10..600000, not '%s'", optarg);
			break;
		case 'm':
			o->listen = optarg;
			break;
		case 'u':
			o->user = optarg;
			break;
		case 'P':
			o->pw_file = optarg;
			break;
		case 'E':
			o->pw_env = optarg;
			break;
		case 'j':
			o->json = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("shmb-mirror %s\n", shmb_version());
			exit(0);
		default:
			return usage_error("%s", "bad option");
		}
	}
	if (o->pw_file && o->pw_env)
		return usage_error("%s", "--redis-password-file and --redis-password-env exclude "
					 "each other");
	if (o->user && !o->pw_file && !o->pw_env)
		return usage_error("%s", "--redis-user needs --redis-password-file or "
					 "--redis-password-env");
	if (optind < argc) {
		if (strcmp(argv[optind], "status") != 0)
			return usage_error("unknown command '%s'", argv[optind]);
		o->status = 1;
		optind++;
		while (optind < argc) {
			if (strcmp(argv[optind], "--json") != 0)
				return usage_error("status: unexpected '%s'", argv[optind]);
			o->json = 1;
			optind++;
		}
	}
	return 0;
}

static int status_path(const char *name, char *buf, size_t len)
{
	char dir[256];
	if (ctl_runtime_dir(dir, sizeof dir) < 0)
		return -1;
	int n = snprintf(buf, len, "%s/%s.mirror.json", dir, name);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* ---- status: the file, the node hash, the metrics ---- */

static cJSON *status_doc(const struct ms_mirror *mm)
{
	const struct ms_stats *st = &mm->st;
	cJSON *d = cJSON_CreateObject();
	cJSON_AddNumberToObject(d, "schema_version", 1);
	cJSON_AddStringToObject(d, "name", mm->name);
	cJSON_AddNumberToObject(d, "pid", getpid());
	cJSON_AddNumberToObject(d, "node_id", mm->node);
	cJSON_AddNumberToObject(d, "updated_ms", (double)mr_wall_ms());
	cJSON *r = cJSON_AddObjectToObject(d, "redis");
	char addr[200];
	snprintf(addr, sizeof addr, "%s:%d", mm->redis.host, mm->redis.port);
	cJSON_AddStringToObject(r, "address", addr);
	cJSON_AddStringToObject(r, "prefix", mm->redis.prefix);
	cJSON_AddBoolToObject(r, "connected", mm->redis.ctx != NULL);
	cJSON_AddNumberToObject(r, "connects", (double)mm->redis.connects);
	cJSON_AddNumberToObject(r, "reconnects",
				(double)(mm->redis.connects ? mm->redis.connects - 1 : 0));
	cJSON_AddNumberToObject(r, "errors", (double)(mm->redis.errors + st->redis_errors));
	cJSON_AddNumberToObject(r, "auth_failures", (double)mm->redis.auth_failures);
	cJSON_AddNumberToObject(r, "writes_refused", (double)st->refused);
	cJSON_AddStringToObject(r, "last_error", mm->last_error);
	cJSON *s = cJSON_AddObjectToObject(d, "sessions");
	cJSON_AddNumberToObject(s, "mirrored", (double)st->sessions);
	cJSON_AddNumberToObject(s, "not_owner", (double)st->not_owner);
	cJSON_AddNumberToObject(s, "ended", (double)st->ended);
	cJSON_AddNumberToObject(s, "failing", (double)st->failing);
	cJSON_AddNumberToObject(s, "unsynced", (double)st->unsynced);
	cJSON *e = cJSON_AddObjectToObject(d, "events");
	cJSON_AddNumberToObject(e, "mirrored", (double)st->events);
	cJSON_AddNumberToObject(e, "per_second", ms_stats_rate(st));
	cJSON_AddNumberToObject(e, "behind", (double)st->events_behind);
	cJSON_AddNumberToObject(e, "lost", (double)st->lost);
	cJSON_AddNumberToObject(e, "lost_ranges", (double)st->lost_ranges);
	cJSON_AddNumberToObject(d, "fenced_writes", (double)st->fenced);
	cJSON *l = cJSON_AddObjectToObject(d, "lag_ms");
	cJSON_AddNumberToObject(l, "p50", (double)ms_stats_quantile(st, 0.50));
	cJSON_AddNumberToObject(l, "p99", (double)ms_stats_quantile(st, 0.99));
	cJSON_AddNumberToObject(l, "window_s", MS_LAG_WINDOW_S);
	cJSON_AddNumberToObject(l, "oldest_unmirrored", (double)st->oldest_unmirrored_ms);
	return d;
}

/* A status file that cannot be written (the runtime directory read-only, full, removed) is said
 * once when it starts failing and once when it works again; mirroring goes on regardless, the
 * metrics and the node hash in Redis still tell the figures. */
static void write_status_file(struct ms_mirror *mm, const char *path)
{
	char tmp[640];
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
	cJSON *d = status_doc(mm);
	char *text = cJSON_PrintUnformatted(d);
	cJSON_Delete(d);
	if (!text)
		return;
	int err = 0;
	FILE *f = fopen(tmp, "w");
	if (f) {
		int ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
		if (!ok)
			err = errno ? errno : EIO;
		if (fclose(f) != 0 && !err)
			err = errno ? errno : EIO;
		if (!err && rename(tmp, path) < 0)
			err = errno;
		if (err)
			unlink(tmp);
	} else {
		err = errno;
	}
	free(text);
	if (err && !mm->status_failing)
		ms_log(MS_ERROR,
		       "cannot write the status file %s: %s (mirroring goes on; 'shmb-mirror "
		       "status' will say no mirror runs)",
		       path, strerror(err));
	else if (!err && mm->status_failing)
		ms_log(MS_INFO, "status file %s written again", path);
	mm->status_failing = err != 0;
}

/* One mirror per broker: two would both write every session (twice the Redis load, no harm to
 * the data: the writes are idempotent) and fight over the status file. An flock on
 * <runtime dir>/<name>.mirror.lock, held for the process's life (released by the kernel when it
 * dies, even by SIGKILL). A directory where the lock cannot be created only costs the guard. */
static int take_lock(const char *name, int *out)
{
	char dir[256], path[600];
	*out = -1;
	if (ctl_runtime_dir(dir, sizeof dir) < 0)
		return 0;
	snprintf(path, sizeof path, "%s/%s.mirror.lock", dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		ms_log(MS_WARNING, "cannot open %s: %s (no guard against a second mirror)", path,
		       strerror(errno));
		return 0;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		char pid[24] = "";
		ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		fprintf(stderr,
			"shmb-mirror: another shmb-mirror%s%s already mirrors instance '%s' (%s "
			"is locked)\n",
			pid[0] ? " pid " : "", pid, name, path);
		close(fd);
		return 1;
	}
	char pid[24];
	int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
		ms_log(MS_WARNING, "cannot write the pid into %s", path);
	*out = fd;
	return 0;
}

static void write_node(struct ms_mirror *mm)
{
	char key[MR_KEY_MAX], hb[24], p50[24], p99[24], behind[24], sess[24], pid[24];
	if (!mm->redis.ctx)
		return;
	mr_node_key(&mm->redis, mm->node, key, sizeof key);
	snprintf(hb, sizeof hb, "%" PRId64, mr_wall_ms());
	snprintf(p50, sizeof p50, "%" PRId64, ms_stats_quantile(&mm->st, 0.50));
	snprintf(p99, sizeof p99, "%" PRId64, ms_stats_quantile(&mm->st, 0.99));
	snprintf(behind, sizeof behind, "%" PRIu64, mm->st.events_behind);
	char oldest[24];
	snprintf(oldest, sizeof oldest, "%" PRId64, mm->st.oldest_unmirrored_ms);
	snprintf(sess, sizeof sess, "%" PRIu64, mm->st.sessions);
	snprintf(pid, sizeof pid, "%d", (int)getpid());
	const char *av[] = { "HSET",
			     key,
			     "heartbeat_ms",
			     hb,
			     "lag_ms",
			     p99,
			     "lag_p50_ms",
			     p50,
			     "events_behind",
			     behind,
			     "oldest_unmirrored_ms",
			     oldest,
			     "sessions",
			     sess,
			     "pid",
			     pid,
			     "name",
			     mm->name };
	if (redisAppendCommandArgv(mm->redis.ctx, (int)(sizeof av / sizeof av[0]), av, NULL) !=
		    REDIS_OK ||
	    redisAppendCommand(mm->redis.ctx, "PEXPIRE %s %d", key, NODE_TTL_MS) != REDIS_OK)
		return;
	for (int i = 0; i < 2; i++) {
		redisReply *r;
		if (mr_get_reply(&mm->redis, &r) < 0)
			return;
		freeReplyObject(r);
	}
}

static void metrics_text(FILE *f, const struct ms_mirror *mm)
{
	const struct ms_stats *st = &mm->st;
	struct {
		const char *name, *type, *help;
		double v;
	} m[] = {
		{ "shmb_mirror_events_total", "counter", "Events written to Redis",
		  (double)st->events },
		{ "shmb_mirror_events_per_second", "gauge", "Events written per second (10 s)",
		  ms_stats_rate(st) },
		{ "shmb_mirror_events_behind", "gauge", "Event ids handed out, not yet in Redis",
		  (double)st->events_behind },
		{ "shmb_mirror_oldest_unmirrored_age_ms", "gauge",
		  "Age of the oldest event not yet in Redis (0: none behind)",
		  (double)st->oldest_unmirrored_ms },
		{ "shmb_mirror_sessions_failing", "gauge",
		  "Sessions whose last write Redis refused (retried with a backoff)",
		  (double)st->failing },
		{ "shmb_mirror_sessions_unsynced", "gauge",
		  "Sessions whose resume point Redis has not told yet", (double)st->unsynced },
		{ "shmb_mirror_writes_refused_total", "counter",
		  "Writes Redis answered with an error (OOM, READONLY, WRONGTYPE, ...)",
		  (double)st->refused },
		{ "shmb_mirror_redis_auth_failures_total", "counter",
		  "Connections Redis refused for authentication", (double)mm->redis.auth_failures },
		{ "shmb_mirror_lag_p50_ms", "gauge", "Publish to Redis acknowledgement, p50 (10 s)",
		  (double)ms_stats_quantile(st, 0.50) },
		{ "shmb_mirror_lag_p99_ms", "gauge", "Publish to Redis acknowledgement, p99 (10 s)",
		  (double)ms_stats_quantile(st, 0.99) },
		{ "shmb_mirror_sessions", "gauge", "Sessions mirrored (owned by this node)",
		  (double)st->sessions },
		{ "shmb_mirror_sessions_not_owner", "gauge",
		  "Sessions Redis says another node owns", (double)st->not_owner },
		{ "shmb_mirror_lost_events_total", "counter",
		  "Event ids evicted before the mirror copied them", (double)st->lost },
		{ "shmb_mirror_fenced_writes_total", "counter", "Writes refused: another owner",
		  (double)st->fenced },
		{ "shmb_mirror_redis_errors_total", "counter", "Redis errors and timeouts",
		  (double)(mm->redis.errors + st->redis_errors) },
		{ "shmb_mirror_redis_reconnects_total", "counter",
		  "Redis connections after the first",
		  (double)(mm->redis.connects ? mm->redis.connects - 1 : 0) },
		{ "shmb_mirror_redis_up", "gauge", "1 while connected to Redis",
		  mm->redis.ctx != NULL },
	};
	for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
		fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s{name=\"%s\",node=\"%d\"} %.17g\n",
			m[i].name, m[i].help, m[i].name, m[i].type, m[i].name, mm->name, mm->node,
			m[i].v);
}

/* Metrics connections are served without ever blocking the loop: a client that connects and
 * sends nothing, or sends slowly, holds a slot, not the mirror (which used to wait for its
 * request). METRICS_CONNS slots, each closed after METRICS_TIMEOUT_MS; a new connection when all
 * are taken evicts the oldest. The reply (a few kB) goes out with one non-blocking send into a
 * fresh socket's buffer; a client that does not read it loses it, nobody waits. */
#define METRICS_CONNS 8
#define METRICS_TIMEOUT_MS 2000

static struct mconn {
	int fd; /* -1: free */
	int64_t since_ms;
	size_t got;
	char req[1024];
} mconns[METRICS_CONNS];

static void mconn_close(struct mconn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->got = 0;
}

static void metrics_reply(struct mconn *c, const struct ms_mirror *mm)
{
	char *body = NULL;
	size_t blen = 0;
	FILE *f = open_memstream(&body, &blen);
	if (!f) {
		mconn_close(c);
		return;
	}
	int ok = strncmp(c->req, "GET /metrics ", 13) == 0 || strncmp(c->req, "GET / ", 6) == 0;
	if (ok)
		metrics_text(f, mm);
	fclose(f);
	char head[256];
	int hl = snprintf(head, sizeof head,
			  "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			  "Connection: close\r\n\r\n",
			  ok ? "200 OK" : "404 Not Found",
			  ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain",
			  ok ? blen : 0);
	struct iovec iov[2] = { { head, (size_t)hl }, { body, ok ? blen : 0 } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
	(void)!sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
	free(body);
	mconn_close(c);
}

static void metrics_init(void)
{
	for (int i = 0; i < METRICS_CONNS; i++)
		mconns[i] = (struct mconn){ .fd = -1 };
}

/* Fills p[1..] with the open connections; returns how many. */
static int metrics_pollfds(struct pollfd *p)
{
	int n = 0;
	for (int i = 0; i < METRICS_CONNS; i++)
		if (mconns[i].fd >= 0)
			p[n++] = (struct pollfd){ .fd = mconns[i].fd, .events = POLLIN };
	return n;
}

static void metrics_serve(int lfd, const struct pollfd *p, int np, const struct ms_mirror *mm)
{
	int64_t now = mr_mono_ms();
	for (int k = 0; k < np; k++) {
		if (!p[k].revents)
			continue;
		struct mconn *c = NULL;
		for (int i = 0; i < METRICS_CONNS && !c; i++)
			if (mconns[i].fd == p[k].fd)
				c = &mconns[i];
		if (!c)
			continue;
		ssize_t n = recv(c->fd, c->req + c->got, sizeof c->req - 1 - c->got, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0) {
			mconn_close(c);
			continue;
		}
		c->got += (size_t)n;
		c->req[c->got] = '\0';
		if (strchr(c->req, '\n') || c->got == sizeof c->req - 1)
			metrics_reply(c, mm); /* the request line is all it needs */
	}
	for (int i = 0; i < METRICS_CONNS; i++)
		if (mconns[i].fd >= 0 && now - mconns[i].since_ms >= METRICS_TIMEOUT_MS)
			mconn_close(&mconns[i]);
	for (int accepted = 0; lfd >= 0 && accepted < METRICS_CONNS; accepted++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			break;
		struct mconn *c = &mconns[0]; /* a free slot, else the oldest */
		for (int i = 0; i < METRICS_CONNS; i++) {
			if (mconns[i].fd < 0) {
				c = &mconns[i];
				break;
			}
			if (mconns[i].since_ms < c->since_ms)
				c = &mconns[i];
		}
		mconn_close(c);
		*c = (struct mconn){ .fd = fd, .since_ms = now };
	}
}

static void metrics_fini(void)
{
	for (int i = 0; i < METRICS_CONNS; i++)
		mconn_close(&mconns[i]);
}

static int listen_on(const char *spec, int *out)
{
	const char *colon = strrchr(spec, ':');
	char host[256];
	size_t hl = colon ? (size_t)(colon - spec) : 0;
	if (!colon || hl == 0 || hl >= sizeof host || !colon[1]) {
		fprintf(stderr, "shmb-mirror: --metrics-listen needs ADDR:PORT, not '%s'\n", spec);
		return 2;
	}
	memcpy(host, spec, hl);
	host[hl] = '\0';
	if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = '\0';
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc) {
		fprintf(stderr, "shmb-mirror: --metrics-listen %s: %s\n", spec, gai_strerror(rc));
		return 2;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0) {
		fprintf(stderr, "shmb-mirror: cannot listen on %s: %s\n", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return 1;
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char h[64] = "?", p[16] = "?";
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
			    NI_NUMERICHOST | NI_NUMERICSERV);
	ms_log(MS_INFO, "metrics on http://%s%s%s:%s/metrics", strchr(h, ':') ? "[" : "", h,
	       strchr(h, ':') ? "]" : "", p);
	*out = fd;
	return 0;
}

/* ---- `status` ---- */

static int cmd_status(const struct opts *o)
{
	char path[600];
	if (status_path(o->name, path, sizeof path) < 0) {
		fprintf(stderr, "shmb-mirror: status: runtime directory path too long\n");
		return 3;
	}
	FILE *f = fopen(path, "r");
	char buf[8192];
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	cJSON *d = n ? cJSON_Parse(buf) : NULL;
	const cJSON *pid = cJSON_GetObjectItem(d, "pid"),
		    *up = cJSON_GetObjectItem(d, "updated_ms");
	int alive = cJSON_IsNumber(pid) && cJSON_IsNumber(up) &&
		    (kill((pid_t)pid->valuedouble, 0) == 0 || errno == EPERM) &&
		    mr_wall_ms() - (int64_t)up->valuedouble < STATUS_STALE_MS;
	if (!alive) {
		fprintf(stderr, "shmb-mirror: status: no mirror runs for instance '%s' (%s)\n",
			o->name, d ? "its status is stale" : "no status file");
		cJSON_Delete(d);
		return 3;
	}
	if (o->json) {
		char *t = cJSON_Print(d);
		if (t)
			puts(t);
		free(t);
		cJSON_Delete(d);
		return 0;
	}
	const cJSON *r = cJSON_GetObjectItem(d, "redis"), *s = cJSON_GetObjectItem(d, "sessions");
	const cJSON *e = cJSON_GetObjectItem(d, "events"), *l = cJSON_GetObjectItem(d, "lag_ms");
#define V(obj, k) cJSON_GetNumberValue(cJSON_GetObjectItem(obj, k))
	printf("%14s: %s, pid %.0f, node %.0f\n", "mirror", o->name, V(d, "pid"), V(d, "node_id"));
	printf("%14s: %s (%s), %s, %.0f reconnects, %.0f errors\n", "redis",
	       cJSON_GetStringValue(cJSON_GetObjectItem(r, "address")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(r, "prefix")),
	       cJSON_IsTrue(cJSON_GetObjectItem(r, "connected")) ? "connected" : "DOWN",
	       V(r, "reconnects"), V(r, "errors"));
	printf("%14s: %.0f mirrored, %.0f not owner, %.0f ended, %.0f unsynced, %.0f failing\n",
	       "sessions", V(s, "mirrored"), V(s, "not_owner"), V(s, "ended"), V(s, "unsynced"),
	       V(s, "failing"));
	printf("%14s: %.0f mirrored, %.1f/s, %.0f behind, %.0f lost\n", "events", V(e, "mirrored"),
	       V(e, "per_second"), V(e, "behind"), V(e, "lost"));
	if (V(l, "p50") < 0)
		printf("%14s: - (nothing mirrored in the last %.0f s)\n", "lag", V(l, "window_s"));
	else
		printf("%14s: p50 %.0f ms, p99 %.0f ms (last %.0f s)\n", "lag", V(l, "p50"),
		       V(l, "p99"), V(l, "window_s"));
	/* What the p50/p99 cannot show: events waiting while nothing gets through. */
	if (V(e, "behind") > 0)
		printf("%14s: %.0f ms (oldest event not in Redis yet)\n", "behind",
		       V(l, "oldest_unmirrored"));
	const char *le = cJSON_GetStringValue(cJSON_GetObjectItem(r, "last_error"));
	if (le && *le)
		printf("%14s: %s\n", "last error", le);
#undef V
	cJSON_Delete(d);
	return 0;
}

/* ---- the loop ---- */

static int attach(struct ms_mirror *mm, shmb_client **c)
{
	int logged = 0;
	for (;;) {
		int rc = shmb_attach(mm->name, c);
		if (rc == 0)
			break;
		if (stop)
			return -1;
		if (!logged++)
			ms_log(MS_WARNING, "cannot attach to broker '%s': %s (retrying)", mm->name,
			       shmb_strerror(rc));
		usleep(200 * 1000);
	}
	char why[256] = "";
	int rc = seg_open_name(mm->name, 0, &mm->seg, why, sizeof why);
	if (rc < 0) {
		ms_log(MS_ERROR, "cannot map the segment of '%s': %s", mm->name, why);
		shmb_detach(*c);
		return -1;
	}
	mm->mapped = 1;
	mm->node = shmb_node_id(*c);
	if (mm->node <= 0) {
		ms_log(MS_ERROR,
		       "broker '%s' has no node_id (start it with --node-id N): a mirror "
		       "needs one to own its sessions in Redis",
		       mm->name);
		return -2;
	}
	if (ms_sync_init(mm) < 0) {
		ms_log(MS_ERROR, "out of memory");
		return -2;
	}
	ms_log(MS_INFO, "attached to '%s' (node %d, %u sessions max, %u events per ring)", mm->name,
	       mm->node, mm->seg.cfg.max_sessions, mm->seg.cfg.ring_events);
	return 0;
}

static void detach(struct ms_mirror *mm, shmb_client *c)
{
	ms_sync_fini(mm);
	if (mm->mapped)
		seg_unmap(&mm->seg);
	mm->mapped = 0;
	if (c)
		shmb_detach(c);
}

static int run(const struct opts *o)
{
	struct ms_mirror mm = { .name = o->name,
				.interval_ms = (int)o->interval_ms,
				.batch = (int)o->batch,
				.touch_interval_ms = (int)o->touch_interval_ms };
	log_name = o->name;
	if (mr_conn_init(&mm.redis, o->redis, o->prefix, (int)o->timeout_ms, (int)o->timeout_ms) <
		    0 ||
	    ((o->pw_file || o->pw_env) &&
	     mr_conn_auth(&mm.redis, o->user, o->pw_file, o->pw_env) < 0)) {
		fprintf(stderr, "shmb-mirror: %s\n", mm.redis.err);
		return 2;
	}
	mm.redis.watch_fd = &redis_fd;
	int lockfd;
	if (take_lock(o->name, &lockfd))
		return 1;
	metrics_init();
	int lfd = -1;
	if (o->listen) {
		int rc = listen_on(o->listen, &lfd);
		if (rc) {
			if (lockfd >= 0)
				close(lockfd);
			return rc;
		}
	}
	char path[600];
	if (status_path(o->name, path, sizeof path) < 0) {
		fprintf(stderr, "shmb-mirror: runtime directory path too long\n");
		if (lockfd >= 0)
			close(lockfd);
		if (lfd >= 0)
			close(lfd);
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	shmb_client *c = NULL;
	int rc = attach(&mm, &c);
	if (rc < 0) {
		detach(&mm, rc == -2 ? c : NULL);
		if (lfd >= 0)
			close(lfd);
		if (lockfd >= 0)
			close(lockfd);
		return stop ? 0 : 1;
	}
	int64_t next_second = 0;
	while (!stop) {
		int64_t t0 = mr_mono_ms();
		int rrc = mr_conn_ready(&mm.redis);
		if (rrc == 0) {
			if (mm.redis.connects != mm.seen_connects) {
				ms_log(MS_INFO, "connected to Redis %s:%d", mm.redis.host,
				       mm.redis.port);
				ms_sync_reset(&mm); /* resume from what this Redis holds */
				mm.seen_connects = mm.redis.connects;
			}
			mm.redis_up = 1;
		} else if (rrc == MR_EAUTH) {
			/* Not an outage: nothing gets better until the operator acts. Said at error
			 * level on every refused attempt (the backoff and the rate limit space them). */
			if (mm.redis.auth_failures != mm.seen_auth_failures) {
				ms_log(MS_ERROR,
				       "%s: nothing is mirrored (check --redis-user and "
				       "--redis-password-file / --redis-password-env)",
				       mm.redis.err);
				mm.seen_auth_failures = mm.redis.auth_failures;
				snprintf(mm.last_error, sizeof mm.last_error, "%s", mm.redis.err);
			}
			mm.redis_up = -1;
		} else if (mm.redis_up >= 0) { /* once per outage */
			ms_log(MS_WARNING, "Redis down: %s (retrying with backoff)", mm.redis.err);
			snprintf(mm.last_error, sizeof mm.last_error, "%s", mm.redis.err);
			mm.redis_up = -1;
		}
		ms_stats_tick(&mm.st, t0);
		ms_sync_cycle(&mm, t0 >= next_second);
		if (t0 >= next_second) {
			next_second = t0 + 1000;
			write_status_file(&mm, path);
			write_node(&mm);
			if (uatomic_read(&seg_hdr(&mm.seg)->retired)) {
				ms_log(MS_WARNING, "the segment was replaced: attaching again");
				detach(&mm, c);
				c = NULL;
				if (attach(&mm, &c) < 0)
					break;
			}
		}
		int64_t left = mm.interval_ms - (mr_mono_ms() - t0);
		struct pollfd p[1 + METRICS_CONNS] = { { .fd = lfd, .events = POLLIN } };
		int np = lfd >= 0 ? 1 + metrics_pollfds(p + 1) : 0;
		if (poll(p, (nfds_t)np, left > 0 ? (int)left : 0) > 0)
			metrics_serve(p[0].revents ? lfd : -1, p + 1, np - 1, &mm);
		else if (np > 1)
			metrics_serve(-1, p + 1, 0, &mm); /* the timeouts */
	}
	metrics_fini();
	if (lockfd >= 0)
		close(lockfd);
	unlink(path);
	for (int k = 0; k < LOG_KEYS; k++)
		if (log_keys[k].fmt && log_keys[k].suppressed)
			log_fmt(MS_WARNING, "suppressed %u lines like \"%s\"",
				log_keys[k].suppressed, log_keys[k].fmt);
	ms_log(MS_INFO, "stopping");
	detach(&mm, c);
	mr_conn_close(&mm.redis);
	if (lfd >= 0)
		close(lfd);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	int rc = parse(argc, argv, &o);
	if (rc)
		return rc;
	if (seg_name_valid(o.name) < 0)
		return usage_error("bad instance name '%s'", o.name);
	return o.status ? cmd_status(&o) : run(&o);
}
