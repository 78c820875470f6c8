/* notify.c - the service manager's readiness protocol (systemd's sd_notify(3)), written here.
 *
 * Under `Type=notify` systemd passes NOTIFY_SOCKET, a Unix datagram socket ("/path", or "@name"
 * for the abstract namespace), and reads newline-separated KEY=VALUE assignments from it:
 * READY=1 once the control socket listens, STOPPING=1 when a clean stop begins, STATUS=... for
 * `systemctl status`, and WATCHDOG=1 every half of WATCHDOG_USEC while the loop turns, when
 * WATCHDOG_PID is unset or ours (sd_watchdog_enabled(3)). Why not libsystemd: this is the whole
 * protocol systemd documents as stable (one sendto per message), and writing it keeps the broker's
 * dependencies at liburcu and cJSON on every distribution, with or without systemd. Without
 * NOTIFY_SOCKET every call here does nothing. State is this file's own: the broker is one thread. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker.h"
#include "clock.h"

static struct {
	int fd; /* -1: no service manager listens */
	struct sockaddr_un addr;
	socklen_t addrlen;
	int64_t watchdog_ms; /* interval between WATCHDOG=1, 0: none */
	int64_t watchdog_next;
} nt = { .fd = -1 };

void brk_notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || !path[0])
		return;
	size_t n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof nt.addr.sun_path) {
		brk_log("warning: NOTIFY_SOCKET '%.120s' is not a Unix socket path; not notifying "
			"the service manager",
			path);
		return;
	}
	nt.addr.sun_family = AF_UNIX;
	memcpy(nt.addr.sun_path, path, n);
	if (path[0] == '@')
		nt.addr.sun_path[0] = '\0'; /* abstract namespace: no terminating NUL counted */
	nt.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
	nt.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (nt.fd < 0) {
		brk_log("warning: cannot notify the service manager: socket: %s", strerror(errno));
		return;
	}
	const char *usec = getenv("WATCHDOG_USEC"), *wpid = getenv("WATCHDOG_PID");
	long long us = usec ? strtoll(usec, NULL, 10) : 0;
	if (us > 0 && (!wpid || strtoll(wpid, NULL, 10) == (long long)getpid())) {
		nt.watchdog_ms = us / 2000 > 0 ? us / 2000 : 1;
		nt.watchdog_next = shmb_mono_ms();
	}
}

void brk_notify(const char *fmt, ...)
{
	if (nt.fd < 0)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	ssize_t w;
	do
		w = sendto(nt.fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT,
			   (const struct sockaddr *)&nt.addr, nt.addrlen);
	while (w < 0 && errno == EINTR);
	if (w < 0) {
		static int warned;
		if (!warned++)
			brk_log("warning: cannot notify the service manager on %s: %s",
				getenv("NOTIFY_SOCKET"), strerror(errno));
	}
}

void brk_notify_watchdog(void)
{
	if (nt.fd < 0 || !nt.watchdog_ms)
		return;
	int64_t now = shmb_mono_ms();
	if (now < nt.watchdog_next)
		return;
	nt.watchdog_next = now + nt.watchdog_ms;
	brk_notify("WATCHDOG=1");
}

void brk_notify_close(void)
{
	if (nt.fd >= 0)
		close(nt.fd);
	nt.fd = -1;
}
