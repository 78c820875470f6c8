/* bench_redis.c - what users run today: Redis over loopback, measured in the same run.
 *
 * shmbench starts its own redis-server (Debian's, found in PATH or $SHMB_REDIS_SERVER) on a free
 * loopback port with persistence off (--save '' --appendonly no), measures with hiredis
 *   - a GET round trip (the lookup people do per request today),
 *   - an XADD round trip of a 256-byte field (publishing an event),
 *   - the XADD -> XREAD BLOCK wake round trip between two processes: A XADDs on stream X; B,
 *     blocked in XREAD BLOCK on X, gets it and XADDs on Y; A, blocked in XREAD BLOCK on Y, gets
 *     it (the same shape as shmbroker's wake round trip),
 *   - redis-server's resident memory when idle,
 * and stops it. Built without hiredis (no libhiredis-dev at configure time), or without a
 * redis-server to run, the Redis rows are reported as skipped. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

static const char *const rows[] = { "redis_get_rt", "redis_xadd", "redis_xread_rt",
				    "redis_rss_idle" };

static void skip_all(const char *why)
{
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
		bench_skip(bench_row(rows[i]), "%s", why);
}

#ifndef SHMB_HAVE_HIREDIS

void redis_start(void)
{
	skip_all("built without hiredis (install libhiredis-dev and reconfigure)");
}
void redis_get_chunk(int n)
{
	(void)n;
}
void redis_xadd_chunk(int n)
{
	(void)n;
}
void redis_xread_chunk(int n)
{
	(void)n;
}
void redis_stop(void)
{
}

#else

#include <hiredis/hiredis.h>

#define EV_BYTES 256
static char payload[EV_BYTES];
static int port;

/* redis-server: $SHMB_REDIS_SERVER, else the first in PATH. */
static int find_server(char *out, size_t len)
{
	const char *env = getenv("SHMB_REDIS_SERVER");
	if (env && *env) {
		snprintf(out, len, "%s", env);
		return access(out, X_OK);
	}
	const char *path = getenv("PATH");
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path ? path : "/usr/bin:/bin");
	for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir;
	     dir = strtok_r(NULL, ":", &save)) {
		snprintf(out, len, "%s/redis-server", dir);
		if (access(out, X_OK) == 0)
			return 0;
	}
	return -1;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof a;
	int p = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &l) == 0)
		p = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return p;
}

static redisContext *connect_redis(int tries)
{
	for (int i = 0; i < tries; i++) {
		redisContext *c = redisConnect("127.0.0.1", port);
		if (c && !c->err) {
			redisReply *r = redisCommand(c, "PING");
			int ok = r && r->type == REDIS_REPLY_STATUS;
			if (r)
				freeReplyObject(r);
			if (ok)
				return c;
		}
		if (c)
			redisFree(c);
		usleep(20000);
	}
	return NULL;
}

/* One command, checked: 0, or -1 on an error reply or a broken connection. */
static int cmd_ok(redisContext *c, redisReply *r)
{
	int ok = r && r->type != REDIS_REPLY_ERROR;
	if (!r && c->err)
		fprintf(stderr, "shmbench: redis: %s\n", c->errstr);
	else if (r && !ok)
		fprintf(stderr, "shmbench: redis: %s\n", r->str);
	if (r)
		freeReplyObject(r);
	return ok ? 0 : -1;
}

static redisContext *rc_main; /* NULL: Redis unavailable, the calls are no-ops */
static pid_t server_pid;
static char log_path[512];

void redis_get_chunk(int n)
{
	struct bench_row *row = bench_row("redis_get_rt");
	redisContext *c = rc_main;
	if (!c || row->status != BS_NONE)
		return;
	if (cmd_ok(c, redisCommand(c, "SET bench:k %b", payload, (size_t)EV_BYTES)) < 0) {
		bench_fail(row, "SET failed");
		return;
	}
	int warm = 20;
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns();
		redisReply *r = redisCommand(c, "GET bench:k");
		uint64_t t1 = bench_ns();
		int ok = r && r->type == REDIS_REPLY_STRING && r->len == EV_BYTES;
		if (r)
			freeReplyObject(r);
		if (!ok) {
			bench_fail(row, "GET failed");
			return;
		}
		if (i >= warm)
			bench_add(row, (double)(t1 - t0));
	}
	bench_note(row, "GET of a 256-byte value over loopback TCP (hiredis)");
}

void redis_xadd_chunk(int n)
{
	struct bench_row *row = bench_row("redis_xadd");
	redisContext *c = rc_main;
	if (!c || row->status != BS_NONE)
		return;
	int warm = 20;
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns();
		redisReply *r = redisCommand(c, "XADD bench:xadd MAXLEN ~ 256 * d %b", payload,
					     (size_t)EV_BYTES);
		uint64_t t1 = bench_ns();
		if (cmd_ok(c, r) < 0) {
			bench_fail(row, "XADD failed");
			return;
		}
		if (i >= warm)
			bench_add(row, (double)(t1 - t0));
	}
	bench_note(row, "XADD MAXLEN ~ 256 of one 256-byte field, round trip");
}

/* XREAD BLOCK on key after *last; copies the last entry's id into last. Returns entries read
 * (0 on timeout), -1 on error; *stop set when an entry's field is "stop". */
static int xread(redisContext *c, const char *key, char *last, size_t lastlen, int *stop)
{
	redisReply *r = redisCommand(c, "XREAD BLOCK 5000 STREAMS %s %s", key, last);
	if (!r || r->type == REDIS_REPLY_ERROR) {
		cmd_ok(c, r);
		return -1;
	}
	int got = 0;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
		redisReply *st = r->element[0];
		redisReply *ents =
			st->type == REDIS_REPLY_ARRAY && st->elements == 2 ? st->element[1] : NULL;
		for (size_t i = 0; ents && ents->type == REDIS_REPLY_ARRAY && i < ents->elements;
		     i++) {
			redisReply *e = ents->element[i];
			if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
			    e->element[0]->type != REDIS_REPLY_STRING)
				continue;
			snprintf(last, lastlen, "%s", e->element[0]->str);
			redisReply *f = e->element[1];
			if (f->type == REDIS_REPLY_ARRAY && f->elements == 2 &&
			    f->element[1]->type == REDIS_REPLY_STRING && f->element[1]->len == 4 &&
			    memcmp(f->element[1]->str, "stop", 4) == 0)
				*stop = 1;
			got++;
		}
	}
	freeReplyObject(r);
	return got;
}

static int echo_child(void *arg)
{
	(void)arg;
	bench_pin(1);
	redisContext *c = connect_redis(50);
	if (!c)
		return 1;
	char last[64] = "0-0";
	int stop = 0;
	for (int idle = 0; !stop && idle < 3;) {
		int got = xread(c, "bench:x", last, sizeof last, &stop);
		if (got < 0)
			return 1;
		idle = got ? 0 : idle + 1;
		for (int i = 0; i < got && !stop; i++)
			if (cmd_ok(c, redisCommand(c, "XADD bench:y MAXLEN ~ 256 * d %b", payload,
						   (size_t)EV_BYTES)) < 0)
				return 1;
	}
	redisFree(c);
	return 0;
}

void redis_xread_chunk(int n)
{
	struct bench_row *row = bench_row("redis_xread_rt");
	redisContext *c = rc_main;
	if (!c || row->status != BS_NONE)
		return;
	int warm = 20;
	/* Fresh streams per chunk: the echo process reads X from the start. */
	cmd_ok(c, redisCommand(c, "DEL bench:x bench:y"));
	pid_t pid = bench_fork(echo_child, NULL);
	char last[64] = "0-0";
	int stop = 0;
	for (int i = 0; i < warm + n; i++) {
		uint64_t t0 = bench_ns();
		if (cmd_ok(c, redisCommand(c, "XADD bench:x MAXLEN ~ 256 * d %b", payload,
					   (size_t)EV_BYTES)) < 0 ||
		    xread(c, "bench:y", last, sizeof last, &stop) != 1) {
			bench_fail(row, "no echo from the second process");
			break;
		}
		if (i >= warm)
			bench_add(row, (double)(bench_ns() - t0));
	}
	bench_note(row, "A: XADD on X; B: XREAD BLOCK on X, XADD on Y; A: XREAD BLOCK on Y");
	cmd_ok(c, redisCommand(c, "XADD bench:x * d stop"));
	if (bench_wait(pid, 15000) != 0 && row->status == BS_NONE)
		bench_fail(row, "echo process failed");
}

void redis_start(void)
{
	char server[512];
	if (find_server(server, sizeof server) < 0) {
		skip_all("redis-server not found (install redis-server)");
		return;
	}
	memset(payload, 'x', sizeof payload);
	port = free_port();
	char porttxt[16];
	snprintf(porttxt, sizeof porttxt, "%d", port);
	const char *rt = getenv("SHMB_RUNTIME_DIR");
	snprintf(log_path, sizeof log_path, "%s/redis.log", rt ? rt : "/tmp");
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		bench_pin(-1);
		execl(server, server, "--port", porttxt, "--bind", "127.0.0.1", "--save", "",
		      "--appendonly", "no", "--daemonize", "no", "--dir", rt ? rt : "/tmp",
		      "--logfile", log_path, (char *)NULL);
		_exit(127);
	}
	server_pid = pid;
	rc_main = pid > 0 ? connect_redis(250) : NULL;
	if (!rc_main) {
		skip_all("redis-server did not start");
		redis_stop();
		return;
	}
	usleep(200000);
	long long rss = bench_rss_bytes(pid);
	struct bench_row *row = bench_row("redis_rss_idle");
	if (rss > 0) {
		bench_set_value(row, (double)rss);
		bench_note(row, "VmRSS of redis-server just started (empty)");
	} else {
		bench_fail(row, "no VmRSS");
	}
}

void redis_stop(void)
{
	if (rc_main)
		redisFree(rc_main);
	rc_main = NULL;
	if (server_pid > 0) {
		kill(server_pid, SIGTERM);
		if (bench_wait(server_pid, 10000) < 0)
			fprintf(stderr, "shmbench: redis-server did not stop cleanly\n");
	}
	server_pid = 0;
	if (log_path[0])
		unlink(log_path);
}

#endif
