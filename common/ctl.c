/* ctl.c - control-socket transport (see ctl.h). */
#include "ctl.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "layout.h"
#include "seg.h"
#include "shmb.h"
#include "trust.h"

int ctl_timeout_ms(void)
{
	static int cached; /* 0: not read yet; a race only reads the environment twice */
	int t = __atomic_load_n(&cached, __ATOMIC_RELAXED);
	if (t)
		return t;
	t = SHMB_CTL_TIMEOUT_MS;
	const char *e = getenv("SHMB_CTL_TIMEOUT_MS");
	if (e && e[0]) {
		char *end;
		long v = strtol(e, &end, 10);
		if (*end == '\0' && v >= 10 && v <= 600000)
			t = (int)v;
	}
	__atomic_store_n(&cached, t, __ATOMIC_RELAXED);
	return t;
}

const char *ctl_default_name(void)
{
	const char *n = getenv("SHMB_NAME");
	return (n && n[0]) ? n : "default";
}

int ctl_runtime_dir(char *buf, size_t len)
{
	const char *d = getenv("SHMB_RUNTIME_DIR");
	int n;
	if (d && d[0])
		n = snprintf(buf, len, "%s", d);
	else if ((d = getenv("XDG_RUNTIME_DIR")) && d[0])
		n = snprintf(buf, len, "%s/shmb", d);
	else if (geteuid() == 0)
		n = snprintf(buf, len, "/run/shmb");
	else
		n = snprintf(buf, len, "/tmp/shmb-%u", (unsigned)geteuid());
	return (n < 0 || (size_t)n >= len) ? SHMB_EINVAL : 0;
}

static int runtime_file(const char *name, const char *suffix, char *buf, size_t len)
{
	char dir[200];
	if (seg_name_valid(name) < 0 || ctl_runtime_dir(dir, sizeof dir) < 0)
		return SHMB_EINVAL;
	int n = snprintf(buf, len, "%s/%s.%s", dir, name, suffix);
	return (n < 0 || (size_t)n >= len) ? SHMB_EINVAL : 0;
}

int ctl_socket_path(const char *name, char *buf, size_t len)
{
	/* sun_path is 108 bytes: refuse longer paths here rather than truncate them. */
	if (len > sizeof(((struct sockaddr_un *)0)->sun_path))
		len = sizeof(((struct sockaddr_un *)0)->sun_path);
	return runtime_file(name, "sock", buf, len);
}

int ctl_lock_path(const char *name, char *buf, size_t len)
{
	return runtime_file(name, "lock", buf, len);
}

int ctl_connect(const char *name, char *why, size_t whylen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[200];
	if (why && whylen)
		why[0] = '\0';
	if (ctl_socket_path(name, sa.sun_path, sizeof sa.sun_path) < 0 ||
	    ctl_runtime_dir(dir, sizeof dir) < 0)
		return SHMB_EINVAL;
	/* Who owns the path, before we connect: a squatter's listener would learn our pid and
	 * uid from the connection alone (trust.c). */
	int rc = trust_check_socket(dir, sa.sun_path, why, whylen);
	if (rc < 0)
		return rc;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return SHMB_EIO;
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { /* EAGAIN: backlog full */
		int e = errno;
		close(fd);
		if (e == EACCES && why && whylen)
			snprintf(why, whylen,
				 "permission denied connecting to %s (its mode admits the broker's "
				 "uid, root and its allowed_gids)",
				 sa.sun_path);
		return e == EACCES ? SHMB_EACCES : SHMB_EBROKER;
	}
	/* The gate: who called listen() on it, as the kernel recorded it. Nothing is sent yet. */
	uid_t peer;
	rc = trust_check_peer(fd, sa.sun_path, &peer, why, whylen);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	return fd;
}

int ctl_send(int fd, const char *msg, size_t len, const int *fds, int nfds)
{
	if (len > SHMB_CTL_MAX_MSG || nfds < 0 || nfds > SHMB_MAX_WORKERS_LIMIT_FDS)
		return SHMB_EINVAL;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int) * SHMB_MAX_WORKERS_LIMIT_FDS)];
		struct cmsghdr align;
	} u;
	if (nfds > 0) {
		memset(&u, 0, sizeof u);
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	for (;;) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n >= 0)
			return 0;
		if (errno == EINTR)
			continue;
		return (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) ? SHMB_EBROKER
										    : SHMB_EIO;
	}
}

int ctl_send_json(int fd, const cJSON *msg, const int *fds, int nfds)
{
	char *text = cJSON_PrintUnformatted(msg);
	if (!text)
		return SHMB_ENOMEM;
	int rc = ctl_send(fd, text, strlen(text), fds, nfds);
	cJSON_free(text);
	return rc;
}

ssize_t ctl_recv(int fd, char *buf, size_t cap, int *fds, int maxfds, int *nfds)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap - 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int) * SHMB_MAX_WORKERS_LIMIT_FDS)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof u.buf,
	};
	if (nfds)
		*nfds = 0;
	ssize_t n;
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return (errno == ECONNRESET) ? 0 : SHMB_EIO;
	int got = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int tmp[SHMB_MAX_WORKERS_LIMIT_FDS];
		if (k > SHMB_MAX_WORKERS_LIMIT_FDS)
			k = SHMB_MAX_WORKERS_LIMIT_FDS;
		memcpy(tmp, CMSG_DATA(cm), k * sizeof(int));
		for (size_t i = 0; i < k; i++) {
			if (fds && got < maxfds && !(mh.msg_flags & MSG_TRUNC))
				fds[got++] = tmp[i];
			else
				close(tmp[i]);
		}
	}
	if (nfds)
		*nfds = got;
	if (mh.msg_flags & MSG_TRUNC) {
		return SHMB_ETOOBIG;
	}
	buf[n] = '\0';
	return n;
}

int ctl_wait_reply(int fd, int timeout_ms, cJSON **reply, int *fds, int maxfds, int *nfds,
		   int *timed_out)
{
	*reply = NULL;
	*timed_out = 0;
	if (nfds)
		*nfds = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int pr;
	do
		pr = poll(&p, 1, timeout_ms);
	while (pr < 0 && errno == EINTR);
	if (pr == 0)
		*timed_out = 1;
	if (pr <= 0)
		return SHMB_EBROKER;
	char *buf = malloc(SHMB_CTL_MAX_MSG + 1);
	if (!buf)
		return SHMB_ENOMEM;
	ssize_t n = ctl_recv(fd, buf, SHMB_CTL_MAX_MSG + 1, fds, maxfds, nfds);
	if (n <= 0) {
		free(buf);
		return SHMB_EBROKER;
	}
	cJSON *r = cJSON_ParseWithLength(buf, (size_t)n);
	free(buf);
	if (!r || !cJSON_IsObject(r)) {
		cJSON_Delete(r);
		return SHMB_EBROKER;
	}
	*reply = r;
	cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
	if (cJSON_IsTrue(ok))
		return 0;
	cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
	if (cJSON_IsNumber(code) && code->valuedouble < 0 && code->valuedouble > -1000)
		return (int)code->valuedouble;
	return SHMB_EBROKER;
}

int ctl_call(int fd, const cJSON *req, cJSON **reply, int *fds, int maxfds, int *nfds)
{
	*reply = NULL;
	if (nfds)
		*nfds = 0;
	int rc = ctl_send_json(fd, req, NULL, 0);
	if (rc < 0)
		return rc == SHMB_ENOMEM ? rc : SHMB_EBROKER;
	int timed_out;
	return ctl_wait_reply(fd, ctl_timeout_ms(), reply, fds, maxfds, nfds, &timed_out);
}
