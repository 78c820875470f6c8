/* test_notify.c - the broker's side of systemd's Type=notify (broker/notify.c): the test listens
 * on a Unix datagram socket passed as NOTIFY_SOCKET (a path, then an abstract name) and receives
 * READY=1 once the control socket accepts (shmctl ping answers), WATCHDOG=1 while the loop turns
 * when WATCHDOG_USEC asks for it, and STOPPING=1 on a clean stop; without NOTIFY_SOCKET nothing is
 * sent and nothing changes. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"

TestSuite(notify, .init = h_setup, .fini = h_teardown, .timeout = 60);

/* A datagram socket bound to path ("@..." abstract); NOTIFY_SOCKET names it. */
static int listen_notify(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	size_t n = strlen(path);
	memcpy(a.sun_path, path, n);
	if (path[0] == '@')
		a.sun_path[0] = '\0';
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, len), 0, "bind %s", path);
	setenv("NOTIFY_SOCKET", path, 1);
	return fd;
}

/* Receives datagrams until one contains want, up to timeout_ms; returns 1 if it came. All text
 * received is appended to seen (for messages). */
static int await_msg(int fd, const char *want, int timeout_ms, char *seen, size_t seenlen)
{
	int64_t deadline = h_now_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - h_now_ms();
		if (left < 0)
			return 0;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		char buf[1024];
		ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
		if (n <= 0)
			continue;
		buf[n] = '\0';
		size_t used = strlen(seen);
		snprintf(seen + used, seenlen - used, "[%s]", buf);
		if (strstr(buf, want))
			return 1;
	}
}

static void ready_then_stopping(const char *path)
{
	int fd = listen_notify(path);
	struct h_broker *b = h_broker_start(H_NOARGS);
	unsetenv("NOTIFY_SOCKET");
	char seen[4096] = "";
	cr_assert(await_msg(fd, "READY=1", H_READY_TIMEOUT_MS, seen, sizeof seen),
		  "no READY=1 on %s; received %s", path, seen);
	cr_expect(strstr(seen, "STATUS=serving"), "no STATUS with READY=1: %s", seen);
	/* Ready means serving: the control socket answers. */
	struct h_result r;
	h_shmctl(&r, b->name, "ping", NULL);
	cr_expect_eq(r.status, 0, "ping after READY=1: exit %d\n%s", r.status, r.err);
	h_result_free(&r);
	h_broker_stop(b);
	cr_expect(await_msg(fd, "STOPPING=1", H_EXIT_TIMEOUT_MS, seen, sizeof seen),
		  "no STOPPING=1 on a clean stop; received %s", seen);
	close(fd);
}

H_TEST(notify, ready_and_stopping_on_a_path)
{
	char path[256];
	snprintf(path, sizeof path, "%s/notify.sock", h_runtime_dir());
	ready_then_stopping(path);
	unlink(path);
}

H_TEST(notify, ready_and_stopping_on_an_abstract_name)
{
	char path[64];
	snprintf(path, sizeof path, "@shmb-test-notify-%d", (int)getpid());
	ready_then_stopping(path);
}

H_TEST(notify, watchdog_while_the_loop_turns)
{
	char path[256];
	snprintf(path, sizeof path, "%s/notify.sock", h_runtime_dir());
	int fd = listen_notify(path);
	setenv("WATCHDOG_USEC", "200000", 1); /* 200 ms: WATCHDOG=1 every 100 ms */
	struct h_broker *b = h_broker_start(H_NOARGS);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	char seen[8192] = "";
	cr_assert(await_msg(fd, "READY=1", H_READY_TIMEOUT_MS, seen, sizeof seen), "%s", seen);
	/* Two of them: the loop keeps sending, not just once at start. */
	cr_expect(await_msg(fd, "WATCHDOG=1", 5000, seen, sizeof seen), "no WATCHDOG=1: %s", seen);
	cr_expect(await_msg(fd, "WATCHDOG=1", 5000, seen, sizeof seen), "one WATCHDOG=1: %s", seen);
	h_broker_stop(b);
	close(fd);
	unlink(path);
}
