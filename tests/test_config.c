/* test_config.c - shmbrokerd's configuration: built-in defaults, flags, a JSON config file; a bad
 * value exits with status 2 and a message naming the field; one broker per name; the segment
 * stays after a stop unless --unlink-on-exit. */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"

TestSuite(config, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void write_config(char *path, size_t len, const char *json)
{
	static int n;
	snprintf(path, len, "%s/config%d.json", h_runtime_dir(), ++n);
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(json, f);
	fclose(f);
}

/* Starts a broker that must refuse its configuration: exit status 2 before ready, stderr naming
 * `field`. */
static void expect_refused(const char *const *args, const char *field, const char *what)
{
	struct h_broker *b = h_broker_new(args);
	b->no_defaults = 1; /* the harness's default flags would override the config file */
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	char *log = h_broker_log(b);
	cr_expect_eq(rc, -1, "%s: the broker started", what);
	if (rc == -1) {
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2,
			  "%s: %s %d, want exit status 2\n%s", what,
			  WIFEXITED(st) ? "exit" : "signal",
			  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), log);
		if (field)
			cr_expect(h_contains(log, field), "%s: the message does not name '%s':\n%s",
				  what, field, log);
	}
	free(log);
	/* A refused start leaves no segment behind. */
	cr_expect_neq(access(b->shm_path, F_OK), 0, "%s: a segment was left at %s", what,
		      b->shm_path);
}

H_TEST(config, bad_config_file_fields)
{
	char path[256];
	write_config(path, sizeof path, "{\"max_sessions\": \"lots\"}");
	expect_refused(H_ARGS("--config", path), "max_sessions", "max_sessions a string");
	write_config(path, sizeof path, "{\"max_sessions\": 0}");
	expect_refused(H_ARGS("--config", path), "max_sessions", "max_sessions 0");
	write_config(path, sizeof path, "{\"ring_events\": 100}");
	expect_refused(H_ARGS("--config", path), "ring_events", "ring_events not a power of two");
	write_config(path, sizeof path, "{\"inactivity_ttl_ms\": -1}");
	expect_refused(H_ARGS("--config", path), "inactivity_ttl_ms", "negative TTL");
	write_config(path, sizeof path, "{\"max_workers\": 100000}");
	expect_refused(H_ARGS("--config", path), "max_workers", "max_workers too large");
	write_config(path, sizeof path, "{\"no_such_field\": 1}");
	expect_refused(H_ARGS("--config", path), "no_such_field", "unknown field");
	write_config(path, sizeof path, "{\"max_sessions\": 8,");
	expect_refused(H_ARGS("--config", path), NULL, "truncated JSON");
	write_config(path, sizeof path, "[1, 2]");
	expect_refused(H_ARGS("--config", path), NULL, "not an object");
	char missing[300];
	snprintf(missing, sizeof missing, "%s/does-not-exist.json", h_runtime_dir());
	expect_refused(H_ARGS("--config", missing), "does-not-exist.json", "missing file");
}

H_TEST(config, bad_flags)
{
	expect_refused(H_ARGS("--max-sessions", "abc"), "max-sessions", "--max-sessions abc");
	expect_refused(H_ARGS("--max-sessions", "-3"), "max-sessions", "--max-sessions -3");
	expect_refused(H_ARGS("--ring-events", "3"), "ring", "--ring-events 3");
	expect_refused(H_ARGS("--ring-bytes", "1000"), "ring", "--ring-bytes 1000");
	expect_refused(H_ARGS("--max-event-bytes", "999999"), "max", "--max-event-bytes > ring");
	expect_refused(H_ARGS("--inactivity-ttl-ms", "soon"), "inactivity", "--inactivity-ttl-ms");
	expect_refused(H_ARGS("--no-such-flag"), "no-such-flag", "unknown flag");
	expect_refused(H_ARGS("--max-sessions"), "max-sessions", "flag without value");
}

H_TEST(config, bad_name)
{
	struct h_broker *b = h_broker_new(NULL);
	/* The harness passes --name b->name; a second --name with an invalid value must win or
	 * conflict, either way a refusal. */
	b->args[b->nargs++] = strdup("--name");
	b->args[b->nargs++] = strdup("bad/name");
	int st = 0;
	cr_expect_eq(h_broker_spawn(b, &st), -1, "a broker started with --name bad/name");
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "bad name: want exit 2");
}

H_TEST(config, config_file_applies)
{
	char path[256];
	write_config(path, sizeof path,
		     "{\"max_sessions\": 8, \"max_workers\": 4, \"inactivity_ttl_ms\": 123000, "
		     "\"absolute_ttl_ms\": 456000}");
	/* Without the harness's small default flags: only the file configures this broker. */
	struct h_broker *b2 = h_broker_new(H_ARGS("--config", path));
	b2->no_defaults = 1;
	int st = 0;
	cr_assert_eq(h_broker_spawn(b2, &st), 0, "a broker with a valid config file did not start");
	cJSON *s = h_shmctl_json(b2->name, "status", NULL);
	cr_expect_eq(h_json_num(s, "sessions.max"), 8);
	cr_expect_eq(h_json_num(s, "workers.max"), 4);
	cJSON_Delete(s);
	shmb_client *c = h_attach(b2->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &h));
	shmb_session_info info;
	H_OK(shmb_session_stat(h, &info));
	cr_expect_eq(info.inactivity_ttl_ms, 123000u);
	cr_expect_eq(info.absolute_ttl_ms, 456000u);
	shmb_session_close(h);
	h_detach(c);
}

H_TEST(config, builtin_defaults)
{
	/* The defaults size the segment at about 150 MB (1024 sessions with 128 KiB rings). */
	struct statvfs vfs;
	if (statvfs("/dev/shm", &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < (256u << 20))
		cr_skip_test("/dev/shm has less than 256 MB free for the default segment");
	struct h_broker *b = h_broker_new(NULL);
	b->no_defaults = 1; /* nothing but --name --foreground --ready-fd */
	int st = 0;
	cr_assert_eq(h_broker_spawn(b, &st), 0, "a broker on built-in defaults did not start");
	cJSON *s = h_shmctl_json(b->name, "status", NULL);
	cr_expect_gt(h_json_num(s, "sessions.max"), 0);
	cJSON_Delete(s);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &h));
	shmb_session_info info;
	H_OK(shmb_session_stat(h, &info));
	/* The seed's defaults: 30 min inactivity, 4 h absolute. */
	cr_expect_eq(info.inactivity_ttl_ms, 30u * 60 * 1000);
	cr_expect_eq(info.absolute_ttl_ms, 4u * 60 * 60 * 1000);
	shmb_session_close(h);
	h_detach(c);
}

H_TEST(config, second_broker_same_name_refused)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));

	/* A second broker record with the same name. */
	struct h_broker *b2 = h_broker_new(NULL);
	strcpy(b2->name, b->name);
	strcpy(b2->log_path, b->log_path);
	strcat(b2->log_path, ".second");
	strcpy(b2->shm_path, b->shm_path);
	strcpy(b2->sock_path, b->sock_path);
	int st = 0;
	cr_expect_eq(h_broker_spawn(b2, &st), -1, "a second broker started on the same name");
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0, "the second broker must exit non-zero");
	char *log = h_broker_log(b2);
	cr_expect(h_contains(log, "already") || h_contains(log, "running") ||
			  h_contains(log, "lock") || h_contains(log, "another"),
		  "the refusal has no clear message:\n%s", log);
	free(log);

	/* The first one is untouched and still serves. */
	cr_expect_eq(access(b->sock_path, F_OK), 0, "the refused broker removed the socket");
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &h));
	shmb_session_close(h);
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	shmb_client *c2 = h_attach(b->name);
	h_detach(c2);
	h_detach(c);
}

H_TEST(config, segment_kept_or_unlinked_on_exit)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	h_broker_stop(b);
	cr_expect_eq(access(b->shm_path, F_OK), 0, "the segment did not outlive a clean stop");
	/* Restart adopts it; with --unlink-on-exit the next stop removes it. */
	b->args[b->nargs++] = strdup("--unlink-on-exit");
	h_broker_restart(b);
	h_broker_stop(b);
	cr_expect_neq(access(b->shm_path, F_OK), 0, "--unlink-on-exit left %s", b->shm_path);
}

H_TEST(config, stale_socket_and_segment_adopted)
{
	/* A broker SIGKILLed leaves its socket file and lock; a new one must start anyway. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	h_broker_kill(b);
	cr_expect_eq(access(b->sock_path, F_OK), 0, "socket vanished with the SIGKILL?");
	h_broker_restart(b);
	shmb_client *c = h_attach(b->name);
	h_detach(c);
}

H_TEST(config, sigint_stops_cleanly)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	kill(b->pid, SIGINT);
	int st = 0;
	int64_t deadline = h_now_ms() + H_EXIT_TIMEOUT_MS;
	pid_t r;
	while ((r = waitpid(b->pid, &st, WNOHANG)) == 0 && h_now_ms() < deadline)
		h_sleep_ms(5); /* no pidfd access here: poll the exit with a deadline */
	cr_assert_eq(r, b->pid, "SIGINT did not stop the broker");
	b->pid = 0;
	close(b->pidfd);
	b->pidfd = -1;
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGINT: want exit 0");
}

/* ---- who may attach: SO_PEERCRED ---- */

#define NOBODY 65534

struct as_nobody {
	const char *name;
};

struct nobody_report {
	int attach, create, open;
};

static int attach_as_nobody(void *p, int wfd)
{
	struct as_nobody *a = p;
	struct nobody_report r = { 1, 1, 1 };
	if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
		return 2;
	shmb_client *c = NULL;
	r.attach = shmb_attach(a->name, &c);
	if (r.attach == 0) {
		char sid[SHMB_SID_LEN + 1];
		r.create = shmb_session_create(c, "acme", NULL, sid);
		if (r.create == 0) {
			shmb_session *s = NULL;
			r.open = shmb_session_open(c, sid, "acme", NULL, &s);
			if (r.open == 0)
				shmb_session_close(s);
		}
		shmb_detach(c);
	}
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 3;
}

static struct nobody_report run_as_nobody(const char *name)
{
	struct as_nobody a = { .name = name };
	struct h_child ch;
	h_child_start(&ch, attach_as_nobody, &a);
	struct nobody_report r;
	cr_assert_eq(h_child_read(&ch, &r, sizeof r, 10000), (ssize_t)sizeof r,
		     "the child running as nobody did not report");
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	return r;
}

H_TEST(config, peer_credentials)
{
	if (geteuid() != 0)
		cr_skip_test("needs root to run a child as another uid");
	/* The socket is open to everyone (chmod'ed 0666 behind the broker's back: it refuses
	 * such a socket_mode itself), so only the broker's SO_PEERCRED check stands between uid
	 * nobody and the segment. */
	cr_assert_eq(chmod(h_runtime_dir(), 0755), 0);
	char path[256];
	struct h_broker *b = h_broker_start(H_NOARGS);
	cr_assert_eq(chmod(b->sock_path, 0666), 0);
	uint64_t refused = h_counter(b->name, SHMB_CTR_WORKERS_REFUSED);
	struct nobody_report r = run_as_nobody(b->name);
	cr_expect_eq(r.attach, SHMB_EACCES, "uid nobody attached: %s", shmb_err_name(r.attach));
	cr_expect_gt(h_counter(b->name, SHMB_CTR_WORKERS_REFUSED), refused);

	/* allowed_gids admits the nobody group (the socket's group and mode let it connect). */
	write_config(path, sizeof path, "{\"allowed_gids\": [65534]}");
	struct h_broker *b2 = h_broker_start(H_ARGS("--config", path));
	r = run_as_nobody(b2->name);
	cr_expect_eq(r.attach, 0, "gid nogroup in allowed_gids: attach %s",
		     shmb_err_name(r.attach));
	cr_expect_eq(r.create, 0, "create as an allowed gid: %s", shmb_err_name(r.create));
	cr_expect_eq(r.open, 0, "open as an allowed gid: %s", shmb_err_name(r.open));
}
