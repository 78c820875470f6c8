/* mirror_harness.c - what the shmb-mirror tests share: a private redis-server, the real
 * shmb-mirror, hiredis helpers and the reaping of both after a failed test (mirror_harness.h
 * says how to use them). One copy, linked into test_mirror and test_redteam16_mirror. */
#include "mirror_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Every redis-server and mirror a test started. */
static pid_t started[16];

void mirror_fini(void)
{
	for (int i = 0; i < 16; i++)
		if (started[i] > 0 && waitpid(started[i], NULL, WNOHANG) == 0) {
			kill(started[i], SIGCONT);
			kill(started[i], SIGKILL);
			waitpid(started[i], NULL, 0);
		}
	h_teardown();
}

void remember(pid_t pid)
{
	for (int i = 0; i < 16; i++)
		if (started[i] <= 0 || waitpid(started[i], NULL, WNOHANG) != 0) {
			started[i] = pid;
			return;
		}
}

int have_redis(void)
{
	const char *path = getenv("PATH");
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path ? path : "/usr/bin:/bin");
	for (char *save, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		char p[4200];
		snprintf(p, sizeof p, "%s/redis-server", d);
		if (access(p, X_OK) == 0)
			return 1;
	}
	return 0;
}

int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof a;
	cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
		  getsockname(fd, (struct sockaddr *)&a, &l) == 0);
	close(fd);
	return ntohs(a.sin_port);
}

redisContext *rconnect(int port, const char *pw)
{
	struct timeval tv = { 2, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	cr_assert(c && !c->err, "cannot connect to Redis :%d", port);
	redisSetTimeout(c, tv);
	if (pw) {
		redisReply *r = redisCommand(c, "AUTH %s", pw);
		cr_assert(r && r->type == REDIS_REPLY_STATUS);
		freeReplyObject(r);
	}
	return c;
}

int redis_answers(int port)
{
	struct timeval tv = { 1, 0 };
	redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
	int ok = 0;
	if (c && !c->err) {
		redisSetTimeout(c, tv);
		redisReply *r = redisCommand(c, "PING");
		ok = r != NULL; /* PONG, or NOAUTH from a server with a password */
		if (r)
			freeReplyObject(r);
	}
	if (c)
		redisFree(c);
	return ok;
}

/* Runs argv (av[0..n-1], then extra split at spaces, at most max - 1 in all) with stdout (when
 * out) and stderr appended to log: the child of redis_start and mirror_spawn. */
static _Noreturn void exec_logged(const char **av, int n, int max, const char *extra,
				  const char *log, int out)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (out)
		dup2(fd, 1);
	dup2(fd, 2);
	char ex[512];
	if (extra) {
		snprintf(ex, sizeof ex, "%s", extra);
		for (char *save, *t = strtok_r(ex, " ", &save); t && n < max - 1;
		     t = strtok_r(NULL, " ", &save))
			av[n++] = t;
	}
	av[n] = NULL;
	execvp(av[0], (char *const *)av);
	_exit(127);
}

pid_t redis_start(int *port, const char *extra)
{
	if (!*port)
		*port = free_port();
	char log[300];
	snprintf(log, sizeof log, "%s/redis.%d.log", h_runtime_dir(), *port);
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		char p[16];
		snprintf(p, sizeof p, "%d", *port);
		const char *av[24] = {
			"redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "no"
		};
		exec_logged(av, 9, 24, extra, log, 1);
	}
	remember(pid);
	cr_assert(H_POLL_UNTIL(redis_answers(*port), 10000), "redis-server did not start (%s)",
		  log);
	return pid;
}

pid_t mirror_spawn(const char *name, int port, const char *log, const char *extra, const char *env)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		if (env)
			putenv((char *)env);
		char redis[32];
		snprintf(redis, sizeof redis, "127.0.0.1:%d", port);
		const char *av[32] = { SHMB_MIRROR_PATH,
				       "--name",
				       name,
				       "--redis",
				       redis,
				       "--interval-ms",
				       "2",
				       "--redis-timeout-ms",
				       "300" };
		exec_logged(av, 9, 32, extra, log, 0);
	}
	remember(pid);
	return pid;
}

void reap(pid_t *pid, int sig)
{
	if (*pid <= 0)
		return;
	kill(*pid, SIGCONT);
	kill(*pid, sig);
	int st = 0;
	waitpid(*pid, &st, 0);
	*pid = 0;
	if (sig == SIGTERM)
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			  "stopped with SIGTERM, it ended with status 0x%x (log in %s)", st,
			  h_runtime_dir());
}

void stop_all(pid_t *mirror, shmb_client *c, redisContext *rc, pid_t *redis)
{
	redisFree(rc);
	reap(mirror, SIGTERM);
	h_detach(c);
	reap(redis, SIGKILL);
}

char *rstr(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	char *s = strdup(r && r->type == REDIS_REPLY_STRING ? r->str : "");
	if (r)
		freeReplyObject(r);
	return s;
}

long long rint_(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1000;
	if (r)
		freeReplyObject(r);
	return v;
}

void rcmd(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	cr_assert(r && r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r ? r->str : c->errstr);
	freeReplyObject(r);
}

long long hnum(redisContext *c, const char *sid, const char *field)
{
	char *s = rstr(c, "HGET shmb:s:{%s} %s", sid, field);
	long long v = *s ? atoll(s) : -1;
	free(s);
	return v;
}

int hfield_is(redisContext *c, const char *sid, const char *field, const char *want)
{
	char *s = rstr(c, "HGET shmb:s:{%s} %s", sid, field);
	int ok = strcmp(s, want) == 0;
	free(s);
	return ok;
}

long long xlen(redisContext *c, const char *sid)
{
	return rint_(c, "XLEN shmb:e:{%s}", sid);
}

cJSON *status_json(const char *name)
{
	struct h_result res;
	h_run(&res,
	      (const char *const[]){ SHMB_MIRROR_PATH, "--name", name, "status", "--json", NULL });
	cJSON *d = res.status == 0 ? cJSON_Parse(res.out) : NULL;
	h_result_free(&res);
	return d;
}

double status_num(const char *name, const char *path)
{
	cJSON *d = status_json(name);
	const cJSON *v = d ? h_json_get(d, path) : NULL;
	double x = cJSON_IsNumber(v) ? v->valuedouble : -1;
	cJSON_Delete(d);
	return x;
}

int status_str_has(const char *name, const char *path, const char *needle)
{
	cJSON *d = status_json(name);
	const cJSON *v = d ? h_json_get(d, path) : NULL;
	int ok = cJSON_IsString(v) && strstr(v->valuestring, needle);
	cJSON_Delete(d);
	return ok;
}

shmb_session *new_session(shmb_client *c, const char *tenant, const char *principal,
			  char sid[SHMB_SID_LEN + 1])
{
	shmb_session *s;
	H_OK(shmb_session_create(c, tenant, principal, sid));
	H_OK(shmb_session_open(c, sid, tenant, principal, &s));
	return s;
}

void publish_n(shmb_session *s, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i <= to; i++) {
		char d[32];
		int n = snprintf(d, sizeof d, "ev-%lu", (unsigned long)i);
		int64_t id = shmb_publish(s, 1, 2, d, (size_t)n);
		cr_assert_eq(id, (int64_t)i, "publish returned %ld", (long)id);
	}
}

char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *s = calloc(1, 1 << 20);
	if (f) {
		size_t n = fread(s, 1, (1 << 20) - 1, f);
		s[n] = '\0';
		fclose(f);
	}
	return s;
}

int log_has(const char *path, const char *needle)
{
	char *s = slurp(path);
	int ok = strstr(s, needle) != NULL;
	free(s);
	return ok;
}
