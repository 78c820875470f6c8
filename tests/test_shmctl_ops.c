/* test_shmctl_ops.c - shmctl's health and control commands (DESIGN.md, contract second edition;
 * docs/shmctl.md): `ping` exits 0 while a broker serves and 3 otherwise; `status` exits 3 when the
 * broker is dead or stopped and still prints its whole JSON document; `stop` stops the broker
 * cleanly (exit status 0, segment and sessions kept) and returns only once the process is gone,
 * and exits 3 when no broker runs. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault.h"
#include "harness.h"

TestSuite(shmctl_ops, .init = h_setup, .fini = h_teardown, .timeout = 60);

/* Runs shmctl with args on name and checks the exit status; returns the result to free. */
static void run_expect(struct h_result *r, const char *name, int want, const char *what,
		       const char *a1, const char *a2)
{
	h_shmctl(r, name, a1, a2, NULL);
	cr_assert(!r->signaled, "shmctl %s crashed", what);
	cr_expect_eq(r->status, want, "shmctl %s: exit %d, expected %d\nstdout:\n%s\nstderr:\n%s",
		     what, r->status, want, r->out, r->err);
}

H_TEST(shmctl_ops, ping_alive_dead_and_never_started)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	struct h_result r;
	run_expect(&r, b->name, 0, "ping", "ping", NULL);
	char pid[32];
	snprintf(pid, sizeof pid, "pid %d", (int)b->pid);
	cr_expect(strstr(r.out, "is alive") && strstr(r.out, pid), "ping output: %s", r.out);
	h_result_free(&r);

	cJSON *j = h_shmctl_json(b->name, "ping", NULL);
	cr_expect(cJSON_IsTrue(h_json_get(j, "alive")));
	cr_expect_eq(h_json_num(j, "pid"), b->pid);
	cr_expect_eq(h_json_num(j, "schema_version"), 1);
	cJSON_Delete(j);

	/* Killed: the segment is there (status reads it), but nothing serves. */
	h_broker_kill(b);
	run_expect(&r, b->name, 3, "ping (broker killed)", "ping", NULL);
	cr_expect_str_empty(r.out, "stdout on failure: %s", r.out);
	cr_expect(strstr(r.err, "shmctl: ping:"), "stderr: %s", r.err);
	h_result_free(&r);
	run_expect(&r, b->name, 3, "ping --json (broker killed)", "ping", "--json");
	cr_expect_str_empty(r.out, "stdout on failure: %s", r.out);
	h_result_free(&r);

	char never[64];
	h_unique_name(never, sizeof never);
	run_expect(&r, never, 3, "ping (no such instance)", "ping", NULL);
	cr_expect(strstr(r.err, "not running"), "stderr: %s", r.err);
	h_result_free(&r);
}

static void expect_status_shape(const cJSON *st)
{
	static const char *const keys[] = {
		"schema_version",   "name",          "layout_version",   "broker.pid",
		"broker.alive",     "segment_bytes", "sessions.live",    "sessions.max",
		"workers.attached", "workers.max",   "events_published", NULL,
	};
	for (int i = 0; keys[i]; i++)
		cr_expect(h_json_get(st, keys[i]) != NULL, "status --json has no \"%s\"", keys[i]);
}

H_TEST(shmctl_ops, status_exits_3_when_the_broker_is_dead)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
	struct h_result r;
	run_expect(&r, b->name, 0, "status (running)", "status", NULL);
	h_result_free(&r);

	pid_t old = b->pid;
	h_broker_kill(b);
	run_expect(&r, b->name, 3, "status (broker killed)", "status", NULL);
	cr_expect(strstr(r.out, "dead"), "human status should say dead:\n%s", r.out);
	cr_expect(strstr(r.err, "shmctl: status:") && strstr(r.err, "not running"), "stderr: %s",
		  r.err);
	h_result_free(&r);
	/* The document is the same as with a live broker, only alive is false. */
	run_expect(&r, b->name, 3, "status --json (broker killed)", "status", "--json");
	cJSON *st = cJSON_Parse(r.out);
	cr_assert_not_null(st, "status --json printed no JSON:\n%s", r.out);
	expect_status_shape(st);
	cr_expect(cJSON_IsFalse(h_json_get(st, "broker.alive")));
	cr_expect_eq(h_json_num(st, "broker.pid"), old);
	cr_expect_eq(h_json_num(st, "sessions.live"), 1);
	cJSON_Delete(st);
	h_result_free(&r);

	/* Stopped cleanly: still not running. */
	h_broker_restart(b);
	h_broker_stop(b);
	run_expect(&r, b->name, 3, "status (broker stopped)", "status", NULL);
	cr_expect(strstr(r.err, "stopped"), "stderr: %s", r.err);
	h_result_free(&r);
}

H_TEST(shmctl_ops, stop_stops_cleanly_and_waits)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", "alice", sid));
	h_detach(c);

	struct h_result r;
	run_expect(&r, b->name, 0, "stop", "stop", NULL);
	cr_expect(strstr(r.out, "stopped"), "stop output: %s", r.out);
	h_result_free(&r);
	/* shmctl returned only after the broker had exited: it is a zombie (or reaped) now, with
	 * exit status 0 (a clean stop). */
	int st = h_broker_wait_exit(b, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broker after stop: wait status 0x%x", st);
	char *log = h_broker_log(b);
	cr_expect(strstr(log, "stopping on request (shmctl stop)"), "broker log:\n%s", log);
	free(log);

	run_expect(&r, b->name, 3, "ping (after stop)", "ping", NULL);
	h_result_free(&r);
	run_expect(&r, b->name, 3, "stop (not running)", "stop", NULL);
	cr_expect(strstr(r.err, "shmctl: stop:") && strstr(r.err, "not running"), "stderr: %s",
		  r.err);
	cr_expect_str_empty(r.out);
	h_result_free(&r);

	/* The segment stayed: a restarted broker adopts it with the session. */
	h_broker_restart(b);
	cJSON *show = h_shmctl_json(b->name, "show", sid, NULL);
	cr_expect_str_eq(cJSON_GetObjectItem(show, "id")->valuestring, sid);
	cJSON_Delete(show);

	cJSON *j = h_shmctl_json(b->name, "stop", NULL);
	cr_expect(h_json_num(j, "stopped_pid") == b->pid, "stop --json: stopped_pid");
	cJSON_Delete(j);
	st = h_broker_wait_exit(b, 0);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broker after stop: wait status 0x%x", st);
}

static int run_stop(void *arg, int wfd)
{
	(void)wfd;
	const char *name = arg;
	int null = open("/dev/null", O_WRONLY);
	if (null >= 0) {
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
	}
	execl(SHMCTL_PATH, "shmctl", "--name", name, "stop", (char *)NULL);
	return 127;
}

/* stop returns when the process has exited, not when the broker has answered: a broker held
 * (SIGSTOP at the fault point broker.stop.begin, after its reply) keeps shmctl waiting. */
H_TEST(shmctl_ops, stop_waits_for_the_process_not_the_reply)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	setenv("SHMB_FAULT", "broker.stop.begin:stop", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	unsetenv("SHMB_FAULT");

	struct h_child ch;
	h_child_start(&ch, run_stop, b->name);
	int st;
	cr_assert_eq(waitpid(b->pid, &st, WUNTRACED), b->pid);
	cr_assert(WIFSTOPPED(st), "the broker should be held at broker.stop.begin (0x%x)", st);
	/* Held: shmctl must still be waiting (a bounded wait for something that must not
	 * happen). */
	cr_assert_geq(ch.pidfd, 0, "no pidfd");
	struct pollfd p = { .fd = ch.pidfd, .events = POLLIN };
	cr_expect_eq(poll(&p, 1, 500), 0, "shmctl stop returned while the broker had not exited");
	kill(b->pid, SIGCONT);
	cr_expect_eq(h_child_wait(&ch, H_EXIT_TIMEOUT_MS), 0, "shmctl stop: exit status");
	st = h_broker_wait_exit(b, H_EXIT_TIMEOUT_MS);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "broker: wait status 0x%x", st);
}
