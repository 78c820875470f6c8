/* log.c - the broker's log: one line per notable event on stderr.
 *
 * Format `shmbrokerd[pid] name: message`. Each line is formatted into a buffer and written with
 * one write(2), so lines from the daemon and its parent never interleave mid-line. Start-up
 * failures before the broker runs use the shorter `shmbrokerd: message` of a command-line tool. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

static char log_name[72] = "?";

void brk_log_init(const char *name)
{
	snprintf(log_name, sizeof log_name, "%s", name);
}

static void emit(const char *prefix, const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof line, "%s", prefix);
	if (n < 0)
		return;
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	int saved = errno;
	const char *p = line;
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

void brk_log(const char *fmt, ...)
{
	char prefix[128];
	snprintf(prefix, sizeof prefix, "shmbrokerd[%d] %s: ", (int)getpid(), log_name);
	va_list ap;
	va_start(ap, fmt);
	emit(prefix, fmt, ap);
	va_end(ap);
}

void brk_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	emit("shmbrokerd: ", fmt, ap);
	va_end(ap);
}
