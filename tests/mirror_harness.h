/* mirror_harness.h - what the shmb-mirror tests share (tests/mirror_test.c, ctest test_mirror,
 * and tests/redteam16_mirror_test.c, test_redteam16_mirror): a private redis-server on a free
 * loopback port with persistence off, the real shmb-mirror binary, hiredis helpers that read
 * what the mirror wrote, and a Criterion .fini that reaps whatever of these a failed test left.
 *
 * Compiled into each of those executables (tests/CMakeLists.txt), which define SHMB_MIRROR_PATH.
 * Use: TestSuite(x, .init = h_setup, .fini = mirror_fini, ...); NEED_REDIS() first in a test;
 * every process started here is remembered, so mirror_fini kills and reaps it after a failed
 * assertion (h_teardown then finds no child of ours left running). Where no event exists (Redis
 * receiving what the mirror copies, the status file rewritten every second), poll with
 * H_POLL_UNTIL. */
#ifndef SHMB_TEST_MIRROR_HARNESS_H
#define SHMB_TEST_MIRROR_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#include "harness.h"

/* Criterion .fini: SIGKILLs and reaps every process remembered and still running, then
 * h_teardown(). */
void mirror_fini(void);
/* Remembers a child for mirror_fini. */
void remember(pid_t pid);

/* 1 when a redis-server is in PATH. */
int have_redis(void);
#define NEED_REDIS()                                                                           \
	do {                                                                                   \
		if (!have_redis())                                                             \
			cr_skip_test("redis-server is not installed (Debian: apt-get install " \
				     "redis-server): the mirror tests need a real one");       \
	} while (0)

/* A free loopback TCP port. */
int free_port(void);
/* redis-server on *port (0: a free one, written back), persistence off, with extra arguments
 * split at spaces ("--requirepass x") or NULL, its output in <runtime dir>/redis.<port>.log;
 * returns once it answers (PONG, or NOAUTH from a server with a password). */
pid_t redis_start(int *port, const char *extra);
/* 1 when something answers a PING on port. */
int redis_answers(int port);
/* A connection with 2 s timeouts (asserted), authenticated with pw when not NULL. */
redisContext *rconnect(int port, const char *pw);

/* shmb-mirror for broker name against Redis on port (interval 2 ms, Redis timeout 300 ms), stderr
 * appended to log, extra arguments split at spaces or NULL; env "VAR=value" or NULL. */
pid_t mirror_spawn(const char *name, int port, const char *log, const char *extra, const char *env);
/* Stops a process of ours (SIGCONT first: it may be stopped) and reaps it; with SIGTERM it must
 * end cleanly (exit 0: under ASan also no leak). */
void reap(pid_t *pid, int sig);

/* The end of a test: frees rc, stops the mirror with SIGTERM (it must end cleanly), detaches c,
 * kills Redis; close the test's sessions first. */
void stop_all(pid_t *mirror, shmb_client *c, redisContext *rc, pid_t *redis);

/* A reply's string, or "" (nil and other types); free() it. */
char *rstr(redisContext *c, const char *fmt, ...);
/* A reply's integer, or -1000 (other types). */
long long rint_(redisContext *c, const char *fmt, ...);
/* A command that must not fail. */
void rcmd(redisContext *c, const char *fmt, ...);
/* A numeric field of the session record of sid (prefix shmb:), -1 when absent. */
long long hnum(redisContext *c, const char *sid, const char *field);
/* 1 when that field equals want ("" when absent). */
int hfield_is(redisContext *c, const char *sid, const char *field, const char *want);
/* The length of sid's event stream. */
long long xlen(redisContext *c, const char *sid);

/* The mirror's status --json, or NULL while it has none; status_num gives one number of it
 * (-1 when absent), status_str_has whether one string of it contains needle. */
cJSON *status_json(const char *name);
double status_num(const char *name, const char *path);
int status_str_has(const char *name, const char *path, const char *needle);

/* Creates a session of tenant and principal (or NULL) through c, its id in sid, and opens it
 * (both asserted). */
shmb_session *new_session(shmb_client *c, const char *tenant, const char *principal,
			  char sid[SHMB_SID_LEN + 1]);
/* Publishes events from..to on s (stream 1, kind 2, data "ev-<id>"), asserting each id. */
void publish_n(shmb_session *s, uint64_t from, uint64_t to);

/* A file's text (at most 1 MiB, "" when unreadable); free() it. */
char *slurp(const char *path);
/* 1 when the file at path contains needle. */
int log_has(const char *path, const char *needle);

#endif
