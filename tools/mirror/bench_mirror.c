/* bench_mirror.c - what the Redis mirror costs and how far behind it runs (issue 16, item 6;
 * docs/performance.md). Not installed.
 *
 *   bench_mirror [--seconds N] [--sessions N] [--rates R1,R2,...] [--interval-ms N]
 *                [--json FILE]
 *
 * It starts its own redis-server (free loopback port, persistence off), a shmbrokerd with a
 * node_id and an shmb-mirror (the binaries built beside it), then for each rate (default 10,000
 * and 100,000 events/s, spread round-robin over --sessions sessions, default 100; the mirror
 * with --interval-ms, default 5, its own default):
 *   lag    publishes at the rate for --seconds (default 8) with the mirror running, then reads
 *          the mirror's own lag p50/p99 (publish ts_ms to Redis acknowledging it, over its last
 *          10 s: `shmb-mirror status --json`) and how many events it was behind at the end;
 *   cost   publishes at the same rate in 0.5 s chunks that alternate between the mirror running
 *          and the mirror stopped (SIGSTOP), timing every shmb_publish call, and reports the
 *          median ns per call of each and their ratio (same run, same moments: a VM's speed
 *          drifts). The chunks with the mirror running include its catching up after each stop,
 *          its busiest moments.
 * The publisher is one thread that publishes the events due every millisecond and sleeps between. Everything it started
 * is stopped at the end (and dies with it: PR_SET_PDEATHSIG). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "shmb.h"

static char rundir[] = "/tmp/shmb-bench-mirror-XXXXXX";
static pid_t kids[3];

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *msg)
{
	fprintf(stderr, "bench_mirror: %s\n", msg);
	for (int i = 2; i >= 0; i--)
		if (kids[i] > 0) {
			kill(kids[i], SIGCONT);
			kill(kids[i], SIGKILL);
			waitpid(kids[i], NULL, 0);
		}
	exit(1);
}

static pid_t spawn(const char *const *argv, const char *log)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork failed");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		dup2(fd, 1);
		dup2(fd, 2);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return pid;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || getsockname(fd, (void *)&a, &l))
		die("no free port");
	close(fd);
	return ntohs(a.sin_port);
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* The mirror's status document, or NULL. */
static cJSON *mirror_status(const char *name)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "SHMB_RUNTIME_DIR=%s %s --name %s status --json 2>/dev/null",
		 rundir, SHMB_MIRROR_PATH, name);
	FILE *p = popen(cmd, "r");
	if (!p)
		return NULL;
	char buf[8192];
	size_t n = fread(buf, 1, sizeof buf - 1, p);
	buf[n] = '\0';
	pclose(p);
	return cJSON_Parse(buf);
}

static double jnum(const cJSON *d, const char *a, const char *b)
{
	return cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(d, a), b));
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int64_t median(int64_t *v, size_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof *v, cmp_i64);
	return v[n / 2];
}

struct pub {
	shmb_session **s;
	int ns;
	uint64_t next; /* events published */
	char payload[100];
};

/* Publishes at rate events/s for ms milliseconds, in a burst every millisecond (the events due
 * by then) with a sleep between: a publisher that leaves the CPU to others, as a server does.
 * With t (may be NULL), the ns of every call. */
static void publish_for(struct pub *p, double rate, int ms, int64_t *t, size_t *nt, size_t cap)
{
	struct timespec tick;
	clock_gettime(CLOCK_MONOTONIC, &tick);
	int64_t t0 = now_ns();
	uint64_t done = 0;
	for (int k = 1; k <= ms; k++) {
		uint64_t due = (uint64_t)(rate * k / 1000.0);
		for (; done < due; done++) {
			int64_t a = now_ns();
			int64_t id = shmb_publish(p->s[p->next % (uint64_t)p->ns], 0, 1, p->payload,
						  sizeof p->payload);
			int64_t b = now_ns();
			if (id < 0)
				die("publish failed");
			p->next++;
			if (t && *nt < cap)
				t[(*nt)++] = b - a;
		}
		int64_t next = t0 + (int64_t)k * 1000000;
		tick.tv_sec = next / 1000000000;
		tick.tv_nsec = next % 1000000000;
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &tick, NULL);
	}
}

int main(int argc, char **argv)
{
	int seconds = 8, nsess = 100;
	char rates_s[128] = "10000,100000";
	const char *json = NULL, *interval = "5";
	static const struct option lo[] = { { "seconds", required_argument, NULL, 's' },
					    { "interval-ms", required_argument, NULL, 'i' },
					    { "sessions", required_argument, NULL, 'n' },
					    { "rates", required_argument, NULL, 'r' },
					    { "json", required_argument, NULL, 'j' },
					    { 0 } };
	for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
		if (c == 's')
			seconds = atoi(optarg);
		else if (c == 'n')
			nsess = atoi(optarg);
		else if (c == 'r')
			snprintf(rates_s, sizeof rates_s, "%s", optarg);
		else if (c == 'j')
			json = optarg;
		else if (c == 'i')
			interval = optarg;
		else
			return 2;
	}
	if (seconds < 1 || seconds > 600 || nsess < 1 || nsess > 1000) {
		fprintf(stderr, "bench_mirror: --seconds 1..600, --sessions 1..1000\n");
		return 2;
	}
	if (!mkdtemp(rundir))
		die("mkdtemp failed");
	setenv("SHMB_RUNTIME_DIR", rundir, 1);
	char name[32], port[16], redis[32], log[300];
	snprintf(name, sizeof name, "benchmirror%d", (int)getpid());
	snprintf(port, sizeof port, "%d", free_port());
	snprintf(redis, sizeof redis, "127.0.0.1:%s", port);
	snprintf(log, sizeof log, "%s/bench.log", rundir);
	kids[0] =
		spawn((const char *const[]){ "redis-server", "--port", port, "--bind", "127.0.0.1",
					     "--save", "", "--appendonly", "no", NULL },
		      log);
	kids[1] = spawn((const char *const[]){ SHMBROKERD_PATH, "--name", name, "--foreground",
					       "--node-id", "1", "--max-sessions", "1024",
					       "--ring-events", "1024", "--ring-bytes", "262144",
					       "--unlink-on-exit", NULL },
			log);
	shmb_client *c = NULL;
	for (int i = 0; i < 200 && shmb_attach(name, &c) != 0; i++)
		sleep_ms(25);
	if (!c)
		die("the broker did not start");
	struct pub p = { .ns = nsess };
	memset(p.payload, 'x', sizeof p.payload);
	p.s = calloc((size_t)nsess, sizeof *p.s);
	for (int i = 0; i < nsess; i++) {
		char sid[SHMB_SID_LEN + 1];
		if (shmb_session_create(c, "bench", NULL, sid) ||
		    shmb_session_open(c, sid, "bench", NULL, &p.s[i]))
			die("cannot create the sessions");
	}
	cJSON *out = cJSON_CreateArray();
	printf("%-10s %10s %10s %10s %12s %12s %8s\n", "rate/s", "lag p50", "lag p99", "behind",
	       "publish ns", "without", "ratio");
	char *save = NULL;
	for (char *r = strtok_r(rates_s, ",", &save); r; r = strtok_r(NULL, ",", &save)) {
		double rate = atof(r);
		if (rate < 1 || rate > 5e6)
			die("a rate must be 1..5000000");
		kids[2] = spawn((const char *const[]){ SHMB_MIRROR_PATH, "--name", name, "--redis",
						       redis, "--interval-ms", interval, NULL },
				log);
		cJSON *st = NULL;
		for (int i = 0; i < 200; i++) {
			st = mirror_status(name);
			if (st && cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(st, "redis"),
								   "connected")))
				break;
			cJSON_Delete(st);
			st = NULL;
			sleep_ms(50);
		}
		if (!st)
			die("the mirror did not connect to Redis");
		cJSON_Delete(st);
		publish_for(&p, rate, 1000, NULL, NULL, 0); /* warm-up */
		publish_for(&p, rate, seconds * 1000, NULL, NULL, 0);
		sleep_ms(1100); /* the status is rewritten every second */
		st = mirror_status(name);
		double p50 = jnum(st, "lag_ms", "p50"), p99 = jnum(st, "lag_ms", "p99");
		double behind = jnum(st, "events", "behind"), lost = jnum(st, "events", "lost");
		cJSON_Delete(st);

		size_t cap = (size_t)(rate * 0.5) + 16, nw = 0, nwo = 0;
		int64_t *with = malloc(cap * 8 * sizeof *with),
			*without = malloc(cap * 8 * sizeof *without);
		for (int k = 0; k < 8; k++) {
			int stopped = k % 2;
			if (stopped)
				kill(kids[2], SIGSTOP);
			if (stopped)
				publish_for(&p, rate, 500, without, &nwo, cap * 8);
			else
				publish_for(&p, rate, 500, with, &nw, cap * 8);
			if (stopped)
				kill(kids[2], SIGCONT);
		}
		int64_t mw = median(with, nw), mwo = median(without, nwo);
		double ratio = mwo ? (double)mw / (double)mwo : 0;
		printf("%-10.0f %8.0fms %8.0fms %10.0f %12lld %12lld %8.3f%s\n", rate, p50, p99,
		       behind, (long long)mw, (long long)mwo, ratio,
		       lost > 0 ? "  (events lost: ring overrun)" : "");
		fflush(stdout);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "rate", rate);
		cJSON_AddNumberToObject(o, "sessions", nsess);
		cJSON_AddNumberToObject(o, "lag_p50_ms", p50);
		cJSON_AddNumberToObject(o, "lag_p99_ms", p99);
		cJSON_AddNumberToObject(o, "events_behind", behind);
		cJSON_AddNumberToObject(o, "events_lost", lost);
		cJSON_AddNumberToObject(o, "publish_ns_with_mirror", (double)mw);
		cJSON_AddNumberToObject(o, "publish_ns_without_mirror", (double)mwo);
		cJSON_AddNumberToObject(o, "ratio", ratio);
		cJSON_AddItemToArray(out, o);
		free(with);
		free(without);
		kill(kids[2], SIGTERM);
		waitpid(kids[2], NULL, 0);
		kids[2] = 0;
	}
	if (json) {
		char *t = cJSON_Print(out);
		FILE *f = fopen(json, "w");
		if (f && t)
			fprintf(f, "%s\n", t);
		if (f)
			fclose(f);
		free(t);
	}
	cJSON_Delete(out);
	for (int i = 0; i < nsess; i++)
		shmb_session_close(p.s[i]);
	free(p.s);
	shmb_detach(c);
	kill(kids[1], SIGTERM);
	waitpid(kids[1], NULL, 0);
	kill(kids[0], SIGKILL);
	waitpid(kids[0], NULL, 0);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", rundir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_mirror: could not remove %s\n", rundir);
	return 0;
}
