/* test_log.c - the broker's log (issue 15, item 3): every line carries an RFC 3339 UTC timestamp
 * with milliseconds, its level, the pid and the instance; --log-level drops lines below it;
 * repeated lines (one call site) are rate limited, then summarized as "suppressed K lines".
 *
 * The broker is real, its stderr is the log the harness captures; its lines are provoked through
 * the control socket (a "ping" logs a debug line per request). The rate-limit test floods one
 * call site with pings and awaits the summary line, which the broker writes on a tick once the
 * interval is over (polled with a deadline: no event announces it). */
#include <errno.h>
#include <poll.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "harness.h"

TestSuite(log, .init = h_setup, .fini = h_teardown, .timeout = 60);

/* n pings on one connection, each answered "ok" before the next. */
static void pings(const struct h_broker *b, int n)
{
	int fd = h_ctl_conn(b);
	static const char msg[] = "{\"op\":\"ping\"}";
	for (int i = 0; i < n; i++) {
		cr_assert_eq(send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL), (ssize_t)sizeof msg - 1);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		cr_assert_eq(poll(&p, 1, 5000), 1, "no reply to ping %d", i);
		static char buf[SHMB_CTL_MAX_MSG + 1];
		int nfds = 0;
		ssize_t len = ctl_recv(fd, buf, sizeof buf, NULL, 0, &nfds);
		cr_assert_gt(len, 0);
		cr_assert(h_contains(buf, "\"ok\":true"), "ping %d: %s", i, buf);
	}
	close(fd);
}

static int count(const char *log, const char *needle)
{
	int n = 0;
	for (const char *q = log; (q = strstr(q, needle)); q += strlen(needle))
		n++;
	return n;
}

static int log_has(const struct h_broker *b, const char *needle)
{
	char *log = h_broker_log(b);
	int has = h_contains(log, needle);
	free(log);
	return has;
}

/* Wall-clock ms of an RFC 3339 UTC timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ". */
static int64_t parse_ts(const char *s)
{
	struct tm tm = { 0 };
	int ms = 0;
	cr_assert_eq(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
		     7, "not a timestamp: %.30s", s);
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm) * 1000 + ms;
}

H_TEST(log, every_line_has_timestamp_level_pid_and_instance)
{
	int64_t before = h_wall_ms();
	struct h_broker *b = h_broker_start(H_ARGS("--log-level", "debug"));
	pings(b, 3);
	h_broker_stop(b);
	int64_t after = h_wall_ms();
	char *log = h_broker_log(b);

	char pat[256];
	regex_t re;
	/* The pid is gone after the stop: match any pid, then compare the instance name. */
	snprintf(pat, sizeof pat,
		 "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
		 "(error|warning|info|debug) shmbrokerd\\[[0-9]+\\] %s: [^ ].*$",
		 b->name);
	cr_assert_eq(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0);
	int lines = 0, debug = 0;
	int64_t last = 0;
	for (char *line = log, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		cr_assert_not_null(nl, "the log ends without a newline: %s", line);
		*nl = '\0';
		cr_expect_eq(regexec(&re, line, 0, NULL, 0), 0, "line not in the format: %s", line);
		int64_t t = parse_ts(line);
		/* The stamp is the wall clock when written, to the millisecond, in order. */
		cr_expect(t >= before - 1 && t <= after + 1, "stamp %lld outside [%lld, %lld]: %s",
			  (long long)t, (long long)before, (long long)after, line);
		cr_expect_geq(t, last, "stamps go backwards: %s", line);
		last = t;
		lines++;
		debug += strstr(line, " debug ") && strstr(line, "request 'ping'");
	}
	regfree(&re);
	cr_expect_geq(lines, 4, "serving, 3 pings, stopping: %d lines", lines);
	cr_expect_eq(debug, 3, "3 pings logged at debug, saw %d", debug);
	free(log);
}

H_TEST(log, level_filter_drops_lines_below_it)
{
	/* Default (info): no debug lines. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	pings(b, 2);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, " info ") && h_contains(log, "serving"), "%s", log);
	cr_expect(!h_contains(log, "request 'ping'"), "debug lines at level info:\n%s", log);
	free(log);
	h_broker_stop(b);

	/* warning: the adoption's info lines are gone, its warning stays (a size that cannot
	 * change: the segment of the first run is adopted with another max_sessions). */
	b->nargs = 0;
	const char *const extra[] = { "--log-level", "warning", "--max-sessions", "32" };
	for (int i = 0; i < 4; i++)
		b->args[b->nargs++] = strdup(extra[i]);
	h_broker_restart(b);
	pings(b, 2);
	h_broker_stop(b);
	log = h_broker_log(b);
	const char *second = strstr(log, "stopped\n");
	cr_assert_not_null(second, "%s", log);
	second += strlen("stopped\n");
	cr_expect(h_contains(second, " warning ") && h_contains(second, "keeps max_sessions=64"),
		  "the warning is missing:\n%s", second);
	cr_expect(!strstr(second, " info ") && !strstr(second, " debug "),
		  "lines below warning were written:\n%s", second);
	free(log);
}

H_TEST(log, repeated_lines_are_rate_limited_then_summarized)
{
	/* 5 lines of one kind per 4 s, then a summary. 40 pings take well under 4 s. */
	struct h_broker *b = h_broker_start(H_ARGS("--log-level", "debug", "--log-rate-limit", "5",
						   "--log-rate-interval-ms", "4000"));
	int64_t t0 = h_now_ms();
	pings(b, 40);
	int64_t took = h_now_ms() - t0;
	cr_assert_lt(took, 4000, "40 pings took %lld ms: the interval is over", (long long)took);
	char *log = h_broker_log(b);
	cr_expect_eq(count(log, "request 'ping'"), 5, "not 5 ping lines in the interval:\n%s", log);
	free(log);
	/* The summary comes on the broker's tick once the interval is over. */
	int ok = H_POLL_UNTIL(log_has(b, "suppressed 35 lines like"), 15000);
	log = h_broker_log(b);
	cr_expect(ok, "no summary of the 35 suppressed lines:\n%s", log);
	cr_expect(h_contains(log, "request '%s' from pid %d"),
		  "the summary does not name the kind of line:\n%s", log);
	free(log);
	/* A new interval: lines are written again. */
	pings(b, 1);
	log = h_broker_log(b);
	cr_expect_eq(count(log, "request 'ping'"), 6, "%s", log);
	free(log);
}

H_TEST(log, config_file_keys_and_bad_values)
{
	char path[256];
	snprintf(path, sizeof path, "%s/log.json", h_runtime_dir());
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs("{\"log\": \"stderr\", \"log_level\": \"debug\", \"log_rate_limit\": 0}", f);
	fclose(f);
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	pings(b, 120); /* rate limit 0: no limit, past the default 100 */
	char *log = h_broker_log(b);
	cr_expect_eq(count(log, "request 'ping'"), 120, "%s", log);
	free(log);

	static const char *const bad[][2] = {
		{ "{\"log_level\": \"loud\"}", "log_level" },
		{ "{\"log\": \"file\"}", "log" },
		{ "{\"log\": 1}", "log" },
		{ "{\"log_rate_interval_ms\": 0}", "log_rate_interval_ms" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		f = fopen(path, "we");
		fputs(bad[i][0], f);
		fclose(f);
		struct h_result r;
		h_run(&r, (const char *const[]){ SHMBROKERD_PATH, "--foreground", "--config", path,
						 NULL });
		cr_expect_eq(r.status, 2, "%s: exit %d\n%s", bad[i][0], r.status, r.err);
		cr_expect(h_contains(r.err, bad[i][1]), "%s: %s", bad[i][0], r.err);
		h_result_free(&r);
	}
	struct h_result r;
	h_run(&r, (const char *const[]){ SHMBROKERD_PATH, "--log-level", "verbose", NULL });
	cr_expect_eq(r.status, 2);
	cr_expect(h_contains(r.err, "--log-level"), "%s", r.err);
	h_result_free(&r);
}
