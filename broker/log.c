/* log.c - the broker's log: one line per notable event, on stderr or through syslog(3).
 *
 * On stderr a line is
 *
 *     2026-12-05T00:56:51.123Z warning shmbrokerd[4242] default: message
 *
 * an RFC 3339 UTC timestamp with milliseconds, the level (error, warning, info, debug), the pid
 * and the instance name. Each line is formatted into a buffer and written with one write(2), so
 * lines from the daemon and its parent never interleave mid-line. Through syslog (`--log syslog`,
 * which journald receives from /dev/log) the message is `default: message` with the level as the
 * syslog priority, facility LOG_DAEMON, ident "shmbrokerd" with the pid: the journal adds its own
 * timestamp. Lines below the configured level are dropped before they are formatted.
 *
 * Rate limit: the key of a line is its call site (the format string's address: one key per
 * message kind, whatever its arguments). Each key may write `rate_burst` lines per
 * `rate_interval_ms`; the lines past that in the same interval are counted, not written, and when
 * the interval is over (at the key's next line, or at the next brk_log_flush() on a broker tick)
 * one line says `suppressed K lines like "<format>"`. The table holds BRK_LOG_KEYS keys; a new key
 * takes the slot whose interval started first, writing that slot's summary first, so memory stays
 * bounded and no suppression goes unreported. Errors are rate limited like the rest: a broken
 * peer that triggers one on every request must not flood the journal either.
 *
 * Start-up failures before the log is set up (a bad flag or config file) use the shorter
 * `shmbrokerd: message` of a command-line tool, on stderr. The broker is one thread: no locks. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"

#define BRK_LOG_KEYS 64
#define BRK_LOG_LINE 1024

static const char *const level_names[] = { "error", "warning", "info", "debug" };
static const int level_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

struct rate_key {
	const char *fmt; /* NULL: free */
	int level;
	int64_t start_ms; /* monotonic start of the current interval */
	uint32_t written, suppressed;
};

static struct {
	char name[72];
	int ready; /* brk_log_init done: lines carry the full prefix */
	int target;
	int level;
	uint32_t rate_burst, rate_interval_ms;
	struct rate_key keys[BRK_LOG_KEYS];
} lg = { .name = "?", .level = BRK_LOG_INFO, .rate_burst = 100, .rate_interval_ms = 10000 };

const char *brk_log_level_name(int level)
{
	return level >= 0 && level <= BRK_LOG_DEBUG ? level_names[level] : "?";
}

int brk_log_level_parse(const char *s)
{
	for (int i = 0; i <= BRK_LOG_DEBUG; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return strcmp(s, "warn") == 0  ? BRK_LOG_WARNING
	       : strcmp(s, "err") == 0 ? BRK_LOG_ERROR
				       : -1;
}

void brk_log_init(const char *name)
{
	snprintf(lg.name, sizeof lg.name, "%s", name);
	lg.ready = 1;
}

void brk_log_configure(int target, int level, uint32_t rate_burst, uint32_t rate_interval_ms)
{
	if (target == BRK_LOG_SYSLOG && lg.target != BRK_LOG_SYSLOG)
		openlog("shmbrokerd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	else if (target != BRK_LOG_SYSLOG && lg.target == BRK_LOG_SYSLOG)
		closelog();
	lg.target = target;
	lg.level = level;
	lg.rate_burst = rate_burst;
	lg.rate_interval_ms = rate_interval_ms;
}

int brk_log_level(void)
{
	return lg.level;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(const char *p, size_t len)
{
	int saved = errno;
	while (len > 0) {
		ssize_t w = write(STDERR_FILENO, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		p += w;
		len -= (size_t)w;
	}
	errno = saved;
}

/* "2026-12-05T00:56:51.123Z" into buf (at least 25 bytes). */
void brk_log_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	time_t t = ts.tv_sec;
	if (!gmtime_r(&t, &tm)) {
		snprintf(buf, len, "?");
		return;
	}
	char s[32];
	strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03uZ", s, (unsigned)(ts.tv_nsec / 1000000) % 1000u);
}

/* Writes one line at level: the message is fmt/ap, already past the filter and the limit. */
static void emit(int level, const char *fmt, va_list ap)
{
	char line[BRK_LOG_LINE];
	int n;
	if (lg.target == BRK_LOG_SYSLOG) {
		n = snprintf(line, sizeof line, "%s: ", lg.name);
		if (n < 0 || vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap) < 0)
			return;
		int saved = errno;
		syslog(level_prio[level], "%s", line);
		errno = saved;
		return;
	}
	char ts[40];
	brk_log_timestamp(ts, sizeof ts);
	n = snprintf(line, sizeof line, "%s %s shmbrokerd[%d] %s: ", ts, level_names[level],
		     (int)getpid(), lg.name);
	if (n < 0)
		return;
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	write_all(line, len);
}

static void emit_v(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit_v(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	emit(level, fmt, ap);
	va_end(ap);
}

/* The summary of a key whose interval is over, then the key restarts at now. */
static void summarize(struct rate_key *k, int64_t now)
{
	if (k->suppressed)
		emit_v(k->level, "suppressed %u line%s like \"%.200s\" in %u ms", k->suppressed,
		       k->suppressed == 1 ? "" : "s", k->fmt, lg.rate_interval_ms);
	k->start_ms = now;
	k->written = 0;
	k->suppressed = 0;
}

/* 1: write the line of call site fmt; 0: count it as suppressed. */
static int rate_admit(const char *fmt, int level)
{
	if (!lg.rate_burst)
		return 1; /* 0: no limit */
	int64_t now = mono_ms();
	struct rate_key *k = NULL, *victim = NULL;
	for (int i = 0; i < BRK_LOG_KEYS; i++) {
		struct rate_key *e = &lg.keys[i];
		if (e->fmt == fmt) {
			k = e;
			break;
		}
		/* A free slot first, else the one whose interval started first. */
		if (!victim || (victim->fmt && (!e->fmt || e->start_ms < victim->start_ms)))
			victim = e;
	}
	if (!k) {
		k = victim;
		if (k->fmt)
			summarize(k, now);
		*k = (struct rate_key){ .fmt = fmt, .level = level, .start_ms = now };
	} else if (now - k->start_ms >= (int64_t)lg.rate_interval_ms) {
		summarize(k, now);
	}
	if (k->written < lg.rate_burst) {
		k->written++;
		return 1;
	}
	k->suppressed++;
	return 0;
}

void brk_log_flush(void)
{
	int64_t now = mono_ms();
	for (int i = 0; i < BRK_LOG_KEYS; i++) {
		struct rate_key *k = &lg.keys[i];
		if (k->fmt && k->suppressed && now - k->start_ms >= (int64_t)lg.rate_interval_ms)
			summarize(k, now);
	}
}

void brk_logl(int level, const char *fmt, ...)
{
	if (level > lg.level || !rate_admit(fmt, level))
		return;
	va_list ap;
	va_start(ap, fmt);
	emit(level, fmt, ap);
	va_end(ap);
}

static char last_fatal[BRK_LOG_LINE];

const char *brk_log_last_fatal(void)
{
	return last_fatal;
}

void brk_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	va_list ap3;
	va_copy(ap3, ap);
	vsnprintf(last_fatal, sizeof last_fatal, fmt, ap3);
	va_end(ap3);
	if (lg.ready && lg.level >= BRK_LOG_ERROR) {
		va_list ap2;
		va_copy(ap2, ap);
		emit(BRK_LOG_ERROR, fmt, ap2);
		va_end(ap2);
	}
	if (!lg.ready || lg.target == BRK_LOG_SYSLOG) {
		/* Before the log is set up, or besides syslog: the operator who started us by hand
		 * sees why it failed on the terminal. */
		char line[BRK_LOG_LINE];
		int n = vsnprintf(line, sizeof line - 1, fmt, ap);
		if (n >= 0) {
			char out[BRK_LOG_LINE + 16];
			int m = snprintf(out, sizeof out, "shmbrokerd: %s\n", line);
			if (m > 0)
				write_all(out, (size_t)m < sizeof out ? (size_t)m : sizeof out - 1);
		}
	}
	va_end(ap);
}
