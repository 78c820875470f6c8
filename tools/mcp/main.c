/* main.c - shmb-mcpd's master: options, the broker, the listening sockets, the workers.
 *
 * The master parses the command line, makes sure a broker runs under the configured name (it
 * starts `shmbrokerd --foreground --ready-fd --unlink-on-exit` as its own child when
 * shmb_attach says the broker is absent, and waits for "ready"), binds and listens (one
 * SO_REUSEPORT socket per worker), maps the durable job table (MAP_SHARED | MAP_ANONYMOUS, one
 * set of slots per worker index) and forks the workers, which attach to the broker themselves.
 * It then supervises: a worker that dies is forked again under the same index (so it takes over
 * that index's jobs and its socket), a broker it started that dies is started again, and one
 * that is alive but hung (its heartbeat silent: watch.c) is killed and started again; the new
 * broker adopts the segment. SIGTERM/SIGINT stop the workers, then the broker it started (which
 * removes its segment), and exit 0. The master never holds a broker client across fork(). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mcp.h"

struct mcp_config mcp_cfg = {
	.host = "127.0.0.1",
	.port = 8080,
	.tenant = "default",
	.inactivity_ttl_ms = 1800000,
	.absolute_ttl_ms = 14400000,
	.retry_ms = 1000,
	/* quotas (quota.c, docs/mcp-server.md) */
	.max_sessions_per_client = 128,
	.max_jobs_per_session = 16,
	.max_jobs_per_client = 32,
	.max_streams_per_session = 16,
	.max_streams_per_client = 64,
};

/* ---- issue 14: connections, timeouts, the broker ---- */
struct mcp_ops_config mcp_ops = {
	.max_connections = 512,
	.max_per_ip = 64,
	.header_timeout_ms = 10000,
	.body_timeout_ms = 30000,
	.keepalive_ms = 6000,
	.broker_wait_ms = 1000,
	.broker_hang_ms = 3000,
};

unsigned mcp_ops_keepalive_s(void)
{
	return (mcp_ops.keepalive_ms + 999) / 1000;
}

static const char *progname = MCP_SERVER_NAME;

/* Repeated log lines are rate limited (a flood of refused connections or a crash loop must not
 * flood stderr): per format string, LOG_BURST lines per LOG_WINDOW_MS, then one line saying how
 * many were suppressed when the window ends and the format is logged again. The broker thread
 * of a worker logs too, hence the lock. */
#define LOG_BURST 10
#define LOG_WINDOW_MS 10000
#define LOG_KEYS 32

static struct log_key {
	const char *fmt;
	int64_t window;
	unsigned n, suppressed;
} log_keys[LOG_KEYS];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* 1 when a line of fmt may be written now; *suppressed: lines dropped in its last window. */
static int log_admit(const char *fmt, unsigned *suppressed)
{
	int64_t now = mcp_now_ms();
	struct log_key *k = NULL, *oldest = &log_keys[0];
	for (int i = 0; i < LOG_KEYS && !k; i++) {
		if (log_keys[i].fmt == fmt)
			k = &log_keys[i];
		else if (log_keys[i].window < oldest->window)
			oldest = &log_keys[i];
	}
	if (!k) {
		k = oldest;
		*k = (struct log_key){ .fmt = fmt, .window = now };
	}
	*suppressed = 0;
	if (now - k->window >= LOG_WINDOW_MS) {
		*suppressed = k->suppressed;
		k->window = now;
		k->n = k->suppressed = 0;
	}
	if (k->n >= LOG_BURST) {
		k->suppressed++;
		return 0;
	}
	k->n++;
	return 1;
}

void mcp_log(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	unsigned suppressed;
	pthread_mutex_lock(&log_lock);
	int ok = log_admit(fmt, &suppressed);
	pthread_mutex_unlock(&log_lock);
	if (suppressed)
		fprintf(stderr, "%s[%d]: (%u more lines like the next were not logged)\n", progname,
			(int)getpid(), suppressed);
	if (ok)
		fprintf(stderr, "%s[%d]: %s\n", progname, (int)getpid(), line);
}

int64_t mcp_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char usage_text[] =
	"usage: shmb-mcpd [OPTIONS]\n"
	"A prefork MCP (Streamable HTTP) server whose workers share sessions and event streams\n"
	"through shmbroker. Serves /mcp; runs in the foreground; SIGTERM/SIGINT stop it.\n"
	"\n"
	"  --host ADDR               address to bind (default 127.0.0.1)\n"
	"  --port N                  port (default 8080; 0: any free port)\n"
	"  --port-file PATH          write the bound port and a newline to PATH once listening\n"
	"  --workers N               worker processes (default: online CPUs)\n"
	"  --name NAME               shmbroker instance (default $SHMB_NAME, else \"default\")\n"
	"  --broker PATH             shmbrokerd to start when none runs under NAME\n"
	"  --broker-arg ARG          extra argument for a started broker (repeatable)\n"
	"  --tenant T                tenant of the sessions (default \"default\")\n"
	"  --tenant-header NAME      take the tenant from this request header when present\n"
	"  --client-address-header NAME  per-client limits key on the last address in this\n"
	"                            header (a balancer's X-Forwarded-For) when present\n"
	"  --token TOKEN=PRINCIPAL   require Authorization: Bearer TOKEN (repeatable; visible in\n"
	"                            ps until parsed: prefer --token-file or $SHMB_MCPD_TOKENS)\n"
	"  --token-file PATH         tokens, one 'TOKEN PRINCIPAL' per line (mode 0600 or stricter)\n"
	"  --allowed-origin ORIGIN   accept this Origin (repeatable)\n"
	"  --allowed-host HOST       accept this Host (repeatable)\n"
	"  --inactivity-ttl-ms N     session inactivity TTL of a started broker (default 1800000)\n"
	"  --absolute-ttl-ms N       session absolute TTL (default 14400000)\n"
	"  --retry-ms N              SSE retry: value (default 1000)\n"
	"  --max-connections N       HTTP connections per worker (default 512)\n"
	"  --max-connections-per-ip N  per client address and worker (default 64; 0: no cap)\n"
	"  --header-timeout-ms N     a request head must be complete within N ms (default 10000)\n"
	"  --body-timeout-ms N       its body within N ms after the head (default 30000)\n"
	"  --keepalive-timeout-ms N  idle time between requests (default 6000; whole seconds)\n"
	"  --broker-wait-ms N        a request waits at most N ms for a broker call (default 1000)\n"
	"  --broker-hang-ms N        replace a started broker silent for N ms (default 3000; 0: never)\n"
	"  --keep-segment            a started broker keeps its segment when it stops\n"
	"quotas (0: none); a client is a token's principal, else an address; over one: 429\n"
	"  --max-sessions-per-client N   live sessions (default 128)\n"
	"  --max-jobs-per-session N      running job tools (default 16)\n"
	"  --max-jobs-per-client N       running job tools (default 32)\n"
	"  --max-streams-per-session N   open SSE streams and waiting JSON answers (default 16)\n"
	"  --max-streams-per-client N    the same, per client (default 64)\n"
	"multi-host (docs/multi-host.md; needs a build with hiredis)\n"
	"  --redis HOST:PORT         restore sessions of other nodes from this Redis (shmb-mirror's)\n"
	"  --redis-prefix P          its key prefix (default \"shmb:\")\n"
	"  --redis-timeout-ms N      connect and reply timeout of each Redis call (default 300)\n"
	"  --redis-user U            Redis ACL user to AUTH as (default: requirepass's user)\n"
	"  --redis-password-file F   AUTH with the first line of F (read on every connect)\n"
	"  --redis-password-env V    AUTH with the value of environment variable V\n"
	"  --failover-id-margin N    event ids skipped after the last known one (default 64)\n"
	"  -h, --help                show this help\n"
	"  --version                 show the version\n";

static int parse_num(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!s || !*s || *s == '-')
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -1;
	*out = v;
	return 0;
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n(see %s --help)\n", progname);
	return 2;
}

/* Returns -1 to go on, else an exit status. */
static int parse_options(int argc, char **argv)
{
	enum {
		O_HOST = 256,
		O_PORT,
		O_PORT_FILE,
		O_WORKERS,
		O_NAME,
		O_BROKER,
		O_BROKER_ARG,
		O_TENANT,
		O_TENANT_HEADER,
		O_CLIENT_ADDR_HEADER,
		O_TOKEN,
		O_ORIGIN,
		O_ALLOWED_HOST,
		O_ITTL,
		O_ATTL,
		O_RETRY,
		O_VERSION,
		/* issue 14 */
		O_MAX_CONNS = 512,
		O_MAX_PER_IP,
		O_HEADER_TIMEOUT,
		O_BODY_TIMEOUT,
		O_KEEPALIVE,
		O_BROKER_WAIT,
		O_BROKER_HANG,
		O_KEEP_SEGMENT,
		/* quotas */
		O_Q_SESSIONS,
		O_Q_JOBS_SESSION,
		O_Q_JOBS_CLIENT,
		O_Q_STREAMS_SESSION,
		O_Q_STREAMS_CLIENT,
		/* token sources */
		O_TOKEN_FILE,
		/* issue 16 */
		O_REDIS,
		O_REDIS_PREFIX,
		O_REDIS_TIMEOUT,
		O_REDIS_USER,
		O_REDIS_PW_FILE,
		O_REDIS_PW_ENV,
		O_FO_MARGIN,
	};
	static const struct option opts[] = {
		{ "host", required_argument, NULL, O_HOST },
		{ "port", required_argument, NULL, O_PORT },
		{ "port-file", required_argument, NULL, O_PORT_FILE },
		{ "workers", required_argument, NULL, O_WORKERS },
		{ "name", required_argument, NULL, O_NAME },
		{ "broker", required_argument, NULL, O_BROKER },
		{ "broker-arg", required_argument, NULL, O_BROKER_ARG },
		{ "tenant", required_argument, NULL, O_TENANT },
		{ "tenant-header", required_argument, NULL, O_TENANT_HEADER },
		{ "client-address-header", required_argument, NULL, O_CLIENT_ADDR_HEADER },
		{ "token", required_argument, NULL, O_TOKEN },
		{ "allowed-origin", required_argument, NULL, O_ORIGIN },
		{ "allowed-host", required_argument, NULL, O_ALLOWED_HOST },
		{ "inactivity-ttl-ms", required_argument, NULL, O_ITTL },
		{ "absolute-ttl-ms", required_argument, NULL, O_ATTL },
		{ "retry-ms", required_argument, NULL, O_RETRY },
		/* issue 14 */
		{ "max-connections", required_argument, NULL, O_MAX_CONNS },
		{ "max-connections-per-ip", required_argument, NULL, O_MAX_PER_IP },
		{ "header-timeout-ms", required_argument, NULL, O_HEADER_TIMEOUT },
		{ "body-timeout-ms", required_argument, NULL, O_BODY_TIMEOUT },
		{ "keepalive-timeout-ms", required_argument, NULL, O_KEEPALIVE },
		{ "broker-wait-ms", required_argument, NULL, O_BROKER_WAIT },
		{ "broker-hang-ms", required_argument, NULL, O_BROKER_HANG },
		{ "keep-segment", no_argument, NULL, O_KEEP_SEGMENT },
		{ "max-sessions-per-client", required_argument, NULL, O_Q_SESSIONS },
		{ "max-jobs-per-session", required_argument, NULL, O_Q_JOBS_SESSION },
		{ "max-jobs-per-client", required_argument, NULL, O_Q_JOBS_CLIENT },
		{ "max-streams-per-session", required_argument, NULL, O_Q_STREAMS_SESSION },
		{ "max-streams-per-client", required_argument, NULL, O_Q_STREAMS_CLIENT },
		{ "token-file", required_argument, NULL, O_TOKEN_FILE },
		{ "redis", required_argument, NULL, O_REDIS },
		{ "redis-prefix", required_argument, NULL, O_REDIS_PREFIX },
		{ "redis-timeout-ms", required_argument, NULL, O_REDIS_TIMEOUT },
		{ "redis-user", required_argument, NULL, O_REDIS_USER },
		{ "redis-password-file", required_argument, NULL, O_REDIS_PW_FILE },
		{ "redis-password-env", required_argument, NULL, O_REDIS_PW_ENV },
		{ "failover-id-margin", required_argument, NULL, O_FO_MARGIN },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, O_VERSION },
		{ 0 },
	};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	mcp_cfg.workers = cpus > 0 ? (int)(cpus > 64 ? 64 : cpus) : 1;
	int c;
	uint64_t v;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case O_HOST:
			mcp_cfg.host = optarg;
			break;
		case O_PORT:
			if (parse_num(optarg, 65535, &v))
				return usage_error("--port: '%s' is not a port number", optarg);
			mcp_cfg.port = (unsigned)v;
			break;
		case O_PORT_FILE:
			mcp_cfg.port_file = optarg;
			break;
		case O_WORKERS:
			if (parse_num(optarg, 64, &v) || v == 0)
				return usage_error("--workers: '%s' is not in 1..64", optarg);
			mcp_cfg.workers = (int)v;
			break;
		case O_NAME:
			mcp_cfg.name = optarg;
			break;
		case O_BROKER:
			mcp_cfg.broker = optarg;
			break;
		case O_BROKER_ARG:
			if (mcp_cfg.n_broker_args >= MCP_MAX_BROKER_ARGS - 12)
				return usage_error("--broker-arg: too many (%s)", optarg);
			mcp_cfg.broker_args[mcp_cfg.n_broker_args++] = optarg;
			break;
		case O_TENANT:
			if (!*optarg)
				return usage_error("--tenant: empty%s", "");
			mcp_cfg.tenant = optarg;
			break;
		case O_TENANT_HEADER:
			mcp_cfg.tenant_header = optarg;
			break;
		case O_CLIENT_ADDR_HEADER:
			if (!*optarg)
				return usage_error("--client-address-header: empty%s", "");
			mcp_cfg.client_addr_header = optarg;
			break;
		case O_TOKEN: {
			/* The last '=': a token may end in base64 padding ('tok==alice' is the
			 * token 'tok=' of alice), a principal has none. */
			char *eq = strrchr(optarg, '=');
			if (!eq || eq == optarg || !eq[1] || mcp_cfg.n_tokens >= MCP_MAX_LIST)
				return usage_error("--token: %s is not TOKEN=PRINCIPAL (at most "
						   "16; the value, a secret, is not shown)",
						   eq ? "a value" : "a value without '='");
			*eq = '\0';
			mcp_cfg.tokens[mcp_cfg.n_tokens++] =
				(struct mcp_token){ .token = optarg, .principal = eq + 1 };
			break;
		}
		case O_ORIGIN:
			if (mcp_cfg.n_origins >= MCP_MAX_LIST)
				return usage_error("--allowed-origin: at most 16 (%s)", optarg);
			mcp_cfg.origins[mcp_cfg.n_origins++] = optarg;
			break;
		case O_ALLOWED_HOST:
			if (mcp_cfg.n_hosts >= MCP_MAX_LIST)
				return usage_error("--allowed-host: at most 16 (%s)", optarg);
			mcp_cfg.hosts[mcp_cfg.n_hosts++] = optarg;
			break;
		case O_ITTL:
			if (parse_num(optarg, UINT32_MAX * 1000ull, &mcp_cfg.inactivity_ttl_ms))
				return usage_error("--inactivity-ttl-ms: bad value '%s'", optarg);
			break;
		case O_ATTL:
			if (parse_num(optarg, UINT32_MAX * 1000ull, &mcp_cfg.absolute_ttl_ms))
				return usage_error("--absolute-ttl-ms: bad value '%s'", optarg);
			break;
		case O_RETRY:
			if (parse_num(optarg, 3600000, &v))
				return usage_error("--retry-ms: bad value '%s'", optarg);
			mcp_cfg.retry_ms = (unsigned)v;
			break;
		/* issue 14 */
		case O_MAX_CONNS:
			if (parse_num(optarg, 65536, &v) || v < 16)
				return usage_error("--max-connections: '%s' is not in 16..65536",
						   optarg);
			mcp_ops.max_connections = (unsigned)v;
			break;
		case O_MAX_PER_IP:
			if (parse_num(optarg, 65536, &v))
				return usage_error("--max-connections-per-ip: bad value '%s'",
						   optarg);
			mcp_ops.max_per_ip = (unsigned)v;
			break;
		case O_HEADER_TIMEOUT:
		case O_BODY_TIMEOUT:
		case O_KEEPALIVE:
			if (parse_num(optarg, 3600000, &v) || v < 100)
				return usage_error("timeout: '%s' is not in 100..3600000 ms",
						   optarg);
			*(c == O_HEADER_TIMEOUT ? &mcp_ops.header_timeout_ms
			  : c == O_BODY_TIMEOUT ? &mcp_ops.body_timeout_ms
						: &mcp_ops.keepalive_ms) = (unsigned)v;
			break;
		case O_BROKER_WAIT:
			if (parse_num(optarg, 60000, &v) || v < 10)
				return usage_error("--broker-wait-ms: '%s' is not in 10..60000",
						   optarg);
			mcp_ops.broker_wait_ms = (unsigned)v;
			break;
		case O_BROKER_HANG:
			if (parse_num(optarg, 3600000, &v) || (v && v < 500))
				return usage_error(
					"--broker-hang-ms: '%s' is not 0 or 500..3600000", optarg);
			mcp_ops.broker_hang_ms = (unsigned)v;
			break;
		case O_KEEP_SEGMENT:
			mcp_ops.keep_segment = 1;
			break;
		case O_Q_SESSIONS:
		case O_Q_JOBS_SESSION:
		case O_Q_JOBS_CLIENT:
		case O_Q_STREAMS_SESSION:
		case O_Q_STREAMS_CLIENT: {
			unsigned *q[] = { &mcp_cfg.max_sessions_per_client,
					  &mcp_cfg.max_jobs_per_session,
					  &mcp_cfg.max_jobs_per_client,
					  &mcp_cfg.max_streams_per_session,
					  &mcp_cfg.max_streams_per_client };
			if (parse_num(optarg, 1000000, &v))
				return usage_error("quota: bad value '%s' (0..1000000)", optarg);
			*q[c - O_Q_SESSIONS] = (unsigned)v;
			break;
		}
		case O_TOKEN_FILE:
			mcp_cfg.token_file = optarg;
			break;
		case O_REDIS:
			if (!failover_available())
				return usage_error("--redis: this shmb-mcpd was built without "
						   "hiredis (install libhiredis-dev, rebuild)%s",
						   "");
			if (failover_parse_redis(optarg))
				return usage_error("--redis: '%s' is not HOST:PORT", optarg);
			break;
		case O_REDIS_PREFIX:
			if (strlen(optarg) > 64)
				return usage_error("--redis-prefix: longer than 64 bytes (%s)",
						   optarg);
			mcp_fo.prefix = optarg;
			break;
		case O_REDIS_TIMEOUT:
			if (parse_num(optarg, 10000, &v) || v < 10)
				return usage_error("--redis-timeout-ms: '%s' is not in 10..10000",
						   optarg);
			mcp_fo.timeout_ms = (unsigned)v;
			break;
		case O_REDIS_USER:
			mcp_fo.user = optarg;
			break;
		case O_REDIS_PW_FILE:
			mcp_fo.pw_file = optarg;
			break;
		case O_REDIS_PW_ENV:
			mcp_fo.pw_env = optarg;
			break;
		case O_FO_MARGIN:
			if (parse_num(optarg, 1000000, &v) || v == 0)
				return usage_error(
					"--failover-id-margin: '%s' is not in 1..1000000", optarg);
			mcp_fo.margin = (unsigned)v;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case O_VERSION:
			printf("%s %s (libshmb %s, libmicrohttpd %s)\n", MCP_SERVER_NAME,
			       MCP_SERVER_VERSION, shmb_version(), MHD_get_version());
			return 0;
		default:
			fprintf(stderr, "(see %s --help)\n", progname);
			return 2;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (mcp_fo.pw_file && mcp_fo.pw_env)
		return usage_error("%s", "--redis-password-file and --redis-password-env exclude "
					 "each other");
	if (mcp_fo.user && !mcp_fo.pw_file && !mcp_fo.pw_env)
		return usage_error("%s", "--redis-user needs --redis-password-file or "
					 "--redis-password-env");
	if ((mcp_fo.pw_file || mcp_fo.pw_env) && !mcp_fo.redis)
		return usage_error("%s",
				   "--redis-password-file / --redis-password-env need --redis");
	char why[300];
	if (mcp_fo.redis && failover_check_auth(why, sizeof why) < 0)
		return usage_error("--redis credentials: %s", why);
	return -1;
}

/* ---- bearer tokens ------------------------------------------------------------------- */

#define MCP_TOKEN_MAX 512 /* bytes of one token */

static int auth_add(const char *token, size_t tlen, const char *principal, size_t plen,
		    const char *where)
{
	if (tlen == 0 || tlen > MCP_TOKEN_MAX || plen == 0 || plen > 128) {
		mcp_log("%s: a token of 1..%d bytes and a principal of 1..128 are needed", where,
			MCP_TOKEN_MAX);
		return -1;
	}
	struct mcp_token *a = realloc(mcp_cfg.auth, (size_t)(mcp_cfg.n_auth + 1) * sizeof *a);
	char *t = strndup(token, tlen), *p = strndup(principal, plen);
	if (a)
		mcp_cfg.auth = a;
	if (!a || !t || !p) {
		free(t);
		free(p);
		mcp_log("%s: out of memory", where);
		return -1;
	}
	mcp_cfg.auth[mcp_cfg.n_auth++] = (struct mcp_token){ .token = t, .principal = p };
	return 0;
}

/* Lines "TOKEN PRINCIPAL" (blanks around and between; '#' starts a comment line). */
static int auth_lines(const char *text, const char *what)
{
	int line = 0;
	for (const char *s = text; *s;) {
		const char *e = strchr(s, '\n');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		char where[PATH_MAX + 32];
		snprintf(where, sizeof where, "%s line %d", what, ++line);
		size_t i = 0;
		while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
			i++;
		if (i < n && s[i] != '#') {
			size_t t0 = i;
			while (i < n && s[i] != ' ' && s[i] != '\t')
				i++;
			size_t t1 = i;
			while (i < n && (s[i] == ' ' || s[i] == '\t'))
				i++;
			size_t p0 = i;
			while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
				i++;
			size_t p1 = i;
			while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
				i++;
			if (i != n || p0 == p1) {
				mcp_log("%s: not 'TOKEN PRINCIPAL'", where);
				return -1;
			}
			if (auth_add(s + t0, t1 - t0, s + p0, p1 - p0, where) < 0)
				return -1;
		}
		s += n + (e != NULL);
	}
	return 0;
}

static int auth_file(const char *path)
{
	/* O_NONBLOCK: a FIFO (or a device) named by mistake must not block the start. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		mcp_log("--token-file %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 077) || st.st_size > (1 << 20)) {
		mcp_log("--token-file %s: %s (mode %04o): it must be a regular file of at most 1 MiB "
			"that only its owner can read (chmod 600)",
			path, S_ISREG(st.st_mode) ? "readable by others" : "not a regular file",
			(unsigned)(st.st_mode & 07777));
		close(fd);
		return -1;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	ssize_t got = buf ? read(fd, buf, (size_t)st.st_size) : -1;
	close(fd);
	if (got < 0) {
		mcp_log("--token-file %s: %s", path, strerror(errno));
		free(buf);
		return -1;
	}
	buf[got] = '\0';
	int rc = strlen(buf) != (size_t)got ? -1 : auth_lines(buf, path);
	if (strlen(buf) != (size_t)got)
		mcp_log("--token-file %s: a NUL byte", path);
	memset(buf, 0, (size_t)got);
	free(buf);
	return rc;
}

/* Collects the tokens of --token (then overwritten in argv, so ps shows x's from here on),
 * --token-file and $SHMB_MCPD_TOKENS (same lines as the file; then unset, so the broker this
 * process starts does not inherit it). Returns 0 or an exit status. */
static int auth_load(void)
{
	for (int i = 0; i < mcp_cfg.n_tokens; i++) {
		const struct mcp_token *t = &mcp_cfg.tokens[i];
		if (auth_add(t->token, strlen(t->token), t->principal, strlen(t->principal),
			     "--token") < 0)
			return 2;
		memset((char *)t->token, 'x', strlen(t->token));
	}
	if (mcp_cfg.token_file && auth_file(mcp_cfg.token_file) < 0)
		return 2;
	const char *env = getenv("SHMB_MCPD_TOKENS");
	if (env) {
		int rc = auth_lines(env, "$SHMB_MCPD_TOKENS");
		memset((char *)env, 'x', strlen(env)); /* also out of /proc/PID/environ */
		unsetenv("SHMB_MCPD_TOKENS");
		if (rc < 0)
			return 2;
	}
	return 0;
}

/* ---- the broker ---------------------------------------------------------------------- */

static pid_t broker_pid = -1;
static int broker_ours; /* we started it: restart it when it dies, stop it at the end */

static int is_executable(const char *path)
{
	return access(path, X_OK) == 0;
}

static void broker_path(char *out, size_t len)
{
	if (mcp_cfg.broker) {
		snprintf(out, len, "%s", mcp_cfg.broker);
		return;
	}
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash && (size_t)(slash - self) + 12 < len) {
			memcpy(out, self, (size_t)(slash - self) + 1);
			strcpy(out + (slash - self) + 1, "shmbrokerd");
			if (is_executable(out))
				return;
		}
	}
#ifdef SHMBROKERD_BUILD_PATH
	if (is_executable(SHMBROKERD_BUILD_PATH)) {
		snprintf(out, len, "%s", SHMBROKERD_BUILD_PATH);
		return;
	}
#endif
	snprintf(out, len, "shmbrokerd"); /* execvp searches PATH */
}

/* Starts shmbrokerd as our child and waits for its "ready". Returns 0 or -1. */
static int broker_start(void)
{
	char path[PATH_MAX], ittl[32], attl[32], fdarg[16];
	broker_path(path, sizeof path);
	int p[2];
	if (pipe(p) < 0) {
		mcp_log("pipe: %s", strerror(errno));
		return -1;
	}
	snprintf(ittl, sizeof ittl, "%llu", (unsigned long long)mcp_cfg.inactivity_ttl_ms);
	snprintf(attl, sizeof attl, "%llu", (unsigned long long)mcp_cfg.absolute_ttl_ms);
	snprintf(fdarg, sizeof fdarg, "%d", p[1]);
	const char *argv[MCP_MAX_BROKER_ARGS + 16];
	int n = 0;
	argv[n++] = path;
	argv[n++] = "--foreground";
	argv[n++] = "--ready-fd";
	argv[n++] = fdarg;
	if (mcp_cfg.name) {
		argv[n++] = "--name";
		argv[n++] = mcp_cfg.name;
	}
	argv[n++] = "--inactivity-ttl-ms";
	argv[n++] = ittl;
	argv[n++] = "--absolute-ttl-ms";
	argv[n++] = attl;
	/* A broker refuses a default TTL above its maximum (24 h and 7 days unless configured):
	 * longer TTLs asked of shmb-mcpd raise the maximum to them (a --broker-arg still wins). */
	if (mcp_cfg.inactivity_ttl_ms > UINT64_C(24) * 3600 * 1000) {
		argv[n++] = "--max-inactivity-ttl-ms";
		argv[n++] = ittl;
	}
	if (mcp_cfg.absolute_ttl_ms > UINT64_C(7) * 24 * 3600 * 1000) {
		argv[n++] = "--max-absolute-ttl-ms";
		argv[n++] = attl;
	}
	/* Stopped with shmb-mcpd, it takes its segment with it (a crash or a replacement keeps
	 * it: the next broker adopts it). */
	if (!mcp_ops.keep_segment)
		argv[n++] = "--unlink-on-exit";
	for (int i = 0; i < mcp_cfg.n_broker_args; i++)
		argv[n++] = mcp_cfg.broker_args[i];
	argv[n] = NULL;

	pid_t pid = fork();
	if (pid < 0) {
		mcp_log("fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		close(p[0]);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		execvp(path, (char *const *)argv);
		fprintf(stderr, "%s: cannot run %s: %s\n", progname, path, strerror(errno));
		_exit(127);
	}
	close(p[1]);
	char buf[16] = "";
	size_t got = 0;
	int64_t deadline = mcp_now_ms() + 10000;
	while (got < 6) {
		int64_t left = deadline - mcp_now_ms();
		struct pollfd pfd = { .fd = p[0], .events = POLLIN };
		if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
			break;
		ssize_t r = read(p[0], buf + got, sizeof buf - 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(p[0]);
	if (got < 6 || memcmp(buf, "ready\n", 6) != 0) {
		mcp_log("broker %s did not become ready", path);
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
		return -1;
	}
	broker_pid = pid;
	broker_ours = 1;
	watch_reset(mcp_now_ms());
	mcp_log("broker started: %s (pid %d)", path, (int)pid);
	return 0;
}

/* A broker we started that is alive but hung (its heartbeat silent for --broker-hang-ms: stopped,
 * or stuck) is killed and replaced; the new one adopts the segment, so no session is lost, and
 * the workers' clients resume with it on their next call. */
static void broker_watch(int64_t now)
{
	if (!broker_ours || broker_pid <= 0 || !mcp_ops.broker_hang_ms ||
	    !watch_broker_hung(broker_pid, now))
		return;
	mcp_log("broker (pid %d) is hung: no heartbeat for %u ms; replacing it (the new broker "
		"adopts the segment)",
		(int)broker_pid, mcp_ops.broker_hang_ms);
	kill(broker_pid, SIGKILL);
	waitpid(broker_pid, NULL, 0);
	broker_pid = -1;
	if (broker_start() < 0)
		mcp_log("broker restart failed; retrying in a second");
}

/* Makes sure a broker serves the instance. Returns 0 or an exit status. */
static int broker_ensure(void)
{
	shmb_client *c;
	int rc = shmb_attach(mcp_cfg.name, &c);
	if (rc == 0) {
		shmb_detach(c);
		return 0;
	}
	if (rc != SHMB_EBROKER) {
		mcp_log("cannot attach to shmbroker instance '%s': %s",
			mcp_cfg.name ? mcp_cfg.name : "(default)", shmb_strerror(rc));
		return 1;
	}
	if (broker_start() < 0)
		return 1;
	rc = shmb_attach(mcp_cfg.name, &c);
	if (rc < 0) {
		mcp_log("attach after starting the broker: %s", shmb_strerror(rc));
		return 1;
	}
	shmb_detach(c);
	return 0;
}

/* ---- the listening socket ------------------------------------------------------------ */

static int is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return 0;
}

/* One listening socket per worker, all bound to the address and port with SO_REUSEPORT: the
 * kernel spreads new connections over them by a hash of the addresses and ports, where one
 * shared socket let whichever worker woke first accept a burst (80 connections over 4 workers
 * went 60/11/6/3). The first socket picks the port (--port 0), the others join it. The master
 * keeps them all: a dead worker's replacement takes its socket over, and the connections that
 * queued on it meanwhile are served then. Returns 0 and fills fds[0..n-1], or -1. */
static int listen_open(int *fds, int n, unsigned *port_out)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai;
	char port[16];
	snprintf(port, sizeof port, "%u", mcp_cfg.port);
	int rc = getaddrinfo(mcp_cfg.host, port, &hints, &ai);
	if (rc) {
		mcp_log("--host %s: %s", mcp_cfg.host, gai_strerror(rc));
		return -1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	int family = 0, made = 0;
	for (struct addrinfo *a = ai; a && !made; a = a->ai_next) {
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 &&
		    bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
			fds[made++] = fd;
			family = a->ai_family;
			sl = sizeof ss;
			getsockname(fd, (struct sockaddr *)&ss, &sl); /* the port, if it was 0 */
			break;
		}
		mcp_log("bind %s:%s: %s", mcp_cfg.host, port, strerror(errno));
		close(fd);
	}
	freeaddrinfo(ai);
	while (made > 0 && made < n) {
		int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int one = 1;
		if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
		    bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 1024) < 0) {
			mcp_log("listening socket %d of %d (SO_REUSEPORT): %s", made + 1, n,
				strerror(errno));
			if (fd >= 0)
				close(fd);
			while (made > 0)
				close(fds[--made]);
			return -1;
		}
		fds[made++] = fd;
	}
	if (!made)
		return -1;
	mcp_cfg.loopback = is_loopback(&ss);
	*port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						   : ((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

static int write_port_file(unsigned port)
{
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", mcp_cfg.port_file, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 ||
	    rename(tmp, mcp_cfg.port_file) < 0) {
		mcp_log("--port-file %s: %s", mcp_cfg.port_file, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* ---- workers ------------------------------------------------------------------------- */

struct worker_rec {
	pid_t pid;
	int64_t started_ms;
	int64_t restart_at_ms; /* 0: running or not due */
	int64_t backoff_ms;
};

static struct worker_rec workers[64];

static void worker_spawn(int i, const int *lfds, struct job_slot *table)
{
	pid_t pid = fork();
	if (pid < 0) {
		mcp_log("fork worker %d: %s", i, strerror(errno));
		workers[i].restart_at_ms = mcp_now_ms() + 1000;
		return;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() == 1)
			_exit(0);
		for (int j = 0; j < mcp_cfg.workers; j++) /* the others' sockets are theirs */
			if (j != i)
				close(lfds[j]);
		_exit(worker_main(i, lfds[i], table));
	}
	workers[i].pid = pid;
	workers[i].started_ms = mcp_now_ms();
	workers[i].restart_at_ms = 0;
	mcp_log("worker %d started (pid %d)", i, (int)pid);
}

static void reap(int stopping)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		char how[64];
		if (WIFSIGNALED(status))
			snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
		else
			snprintf(how, sizeof how, "exit status %d", WEXITSTATUS(status));
		if (pid == broker_pid) {
			broker_pid = -1;
			mcp_log("broker (pid %d) died: %s", (int)pid, how);
			if (!stopping && broker_start() < 0)
				mcp_log("broker restart failed; retrying in a second");
			continue;
		}
		for (int i = 0; i < mcp_cfg.workers; i++) {
			if (workers[i].pid != pid)
				continue;
			workers[i].pid = 0;
			if (stopping)
				break;
			int64_t now = mcp_now_ms();
			int64_t b = workers[i].backoff_ms;
			b = now - workers[i].started_ms < 1000 ? (b ? b * 2 : 100) : 0;
			workers[i].backoff_ms = b > 5000 ? 5000 : b;
			workers[i].restart_at_ms = now + workers[i].backoff_ms;
			mcp_log("worker %d (pid %d) died: %s; restarting", i, (int)pid, how);
			break;
		}
	}
}

static void stop_all(void)
{
	for (int i = 0; i < mcp_cfg.workers; i++)
		if (workers[i].pid > 0)
			kill(workers[i].pid, SIGTERM);
	int64_t deadline = mcp_now_ms() + 5000;
	for (;;) {
		reap(1);
		int left = 0;
		for (int i = 0; i < mcp_cfg.workers; i++)
			left += workers[i].pid > 0;
		if (!left)
			break;
		if (mcp_now_ms() > deadline) {
			for (int i = 0; i < mcp_cfg.workers; i++)
				if (workers[i].pid > 0)
					kill(workers[i].pid, SIGKILL);
		}
		usleep(10000);
	}
	if (broker_pid > 0) {
		pid_t pid = broker_pid;
		kill(pid, SIGTERM);
		kill(pid, SIGCONT); /* a stopped broker would not act on it */
		deadline = mcp_now_ms() + 5000;
		while (waitpid(pid, NULL, WNOHANG) == 0) {
			if (mcp_now_ms() > deadline) {
				kill(pid, SIGKILL);
				waitpid(pid, NULL, 0);
				break;
			}
			usleep(10000);
		}
		broker_pid = -1;
		mcp_log("broker stopped");
	}
}

int main(int argc, char **argv)
{
	int rc = parse_options(argc, argv);
	if (rc >= 0)
		return rc;
	rc = auth_load();
	if (rc)
		return rc;
	signal(SIGPIPE, SIG_IGN);
	/* Connections are fds: the workers may hold --max-connections each (and a shell's soft
	 * limit is often 1024). */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);

	rc = broker_ensure();
	if (rc)
		return rc;
	unsigned port;
	int lfds[64];
	if (listen_open(lfds, mcp_cfg.workers, &port) < 0) {
		stop_all();
		return 1;
	}
	size_t tbytes = jobs_table_bytes(mcp_cfg.workers);
	struct job_slot *table =
		mmap(NULL, tbytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (table == MAP_FAILED) {
		mcp_log("mmap job table: %s", strerror(errno));
		stop_all();
		return 1;
	}
	if (quota_init(mcp_cfg.workers) < 0) {
		stop_all();
		return 1;
	}
	for (int i = 0; i < mcp_cfg.workers; i++)
		worker_spawn(i, lfds, table);
	mcp_log("listening on http://%s:%u%s (%d workers, broker instance '%s')", mcp_cfg.host,
		port, MCP_PATH, mcp_cfg.workers, mcp_cfg.name ? mcp_cfg.name : "(default)");
	if (mcp_cfg.port_file && write_port_file(port) < 0) {
		stop_all();
		return 1;
	}

	for (;;) {
		int64_t now = mcp_now_ms(), next = now + (broker_ours ? 250 : 1000);
		broker_watch(now);
		for (int i = 0; i < mcp_cfg.workers; i++) {
			if (workers[i].pid == 0 && workers[i].restart_at_ms) {
				if (workers[i].restart_at_ms <= now)
					worker_spawn(i, lfds, table);
				else if (workers[i].restart_at_ms < next)
					next = workers[i].restart_at_ms;
			}
		}
		struct timespec ts = { .tv_sec = (next - now) / 1000,
				       .tv_nsec = ((next - now) % 1000) * 1000000 };
		siginfo_t si;
		int sig = sigtimedwait(&set, &si, &ts);
		if (sig == SIGCHLD) {
			reap(0);
		} else if (sig == SIGTERM || sig == SIGINT) {
			mcp_log("stopping (signal %d)", sig);
			break;
		}
		if (broker_ours && broker_pid < 0 && broker_start() < 0)
			mcp_log("broker restart failed; retrying in a second");
	}
	stop_all();
	for (int i = 0; i < mcp_cfg.workers; i++)
		close(lfds[i]);
	munmap(table, tbytes);
	watch_fini();
	mcp_log("stopped");
	return 0;
}
