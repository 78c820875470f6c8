/* control.c - the control socket: listening, admitting peers by credentials, receiving
 * datagrams and sending replies without ever blocking the loop.
 *
 * Unix SOCK_SEQPACKET at <runtime dir>/<name>.sock, whose group, ACL and mode admit the same
 * peers as the credential check (access.c). At accept the peer's SO_PEERCRED (and SO_PEERGROUPS)
 * decide: the broker's uid, root, or a gid in allowed_gids is served; anyone else gets one
 * SHMB_EACCES reply and is closed once it sends its request or hangs up (or after
 * BRK_CLOSING_MS), so the reply is never lost to an EPIPE on the peer's first send.
 * Connections are nonblocking and capped (BRK_MAX_CONNS, lowered to fit RLIMIT_NOFILE; one over
 * the cap is refused the same way with SHMB_ENOWORKER); a reply that cannot be sent at once (the
 * peer does not read) drops the connection; neither that nor an EOF releases the worker slot
 * of a process that still runs (workers.c, brk_worker_conn_closed). A connection without a
 * worker slot that stays silent for BRK_IDLE_MS is closed, so idle connections cannot hold
 * every entry and lock attaches out. Each wake reads at most BRK_MSGS_PER_WAKE messages per
 * connection, so one chatty peer cannot starve the others (epoll is level-triggered). A
 * zero-length datagram and EOF both read as 0 bytes; a poll for POLLRDHUP tells them apart. */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker.h"
#include "clock.h"
#include "ctl.h"
#include "shmb.h"

#define PEER_GROUPS_MAX 1024

static int send_error_fd(int fd, int code, const char *message)
{
	cJSON *r = cJSON_CreateObject();
	if (!r)
		return SHMB_ENOMEM;
	cJSON_AddFalseToObject(r, "ok");
	cJSON_AddNumberToObject(r, "code", code);
	cJSON_AddStringToObject(r, "error", shmb_err_name(code));
	cJSON_AddStringToObject(r, "message", message);
	int rc = ctl_send_json(fd, r, NULL, 0);
	cJSON_Delete(r);
	return rc;
}

static uint32_t conn_limit(const struct brk *b)
{
	struct rlimit rl;
	uint64_t limit = BRK_MAX_CONNS;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		/* eventfds, pidfds, the segment, epoll, signal, timer, lock, stdio, and slack. */
		uint64_t reserved = 2 * (uint64_t)b->seg.cfg.max_workers + 32 + BRK_CLOSING_SLOTS;
		limit = rl.rlim_cur > reserved + 16 ? rl.rlim_cur - reserved : 16;
		if (limit > BRK_MAX_CONNS)
			limit = BRK_MAX_CONNS;
	}
	return (uint32_t)limit;
}

int brk_control_listen(struct brk *b)
{
	if (ctl_socket_path(b->cfg.name, b->sock_path, sizeof b->sock_path) < 0) {
		brk_fatal("socket path for name '%s' is too long for a Unix socket (set "
			  "SHMB_RUNTIME_DIR to a shorter directory)",
			  b->cfg.name);
		return 1;
	}
	b->max_conns = conn_limit(b);
	b->conns = calloc(b->max_conns + BRK_CLOSING_SLOTS, sizeof *b->conns);
	b->rxbuf = malloc(SHMB_CTL_MAX_MSG + 1);
	if (!b->conns || !b->rxbuf) {
		brk_fatal("out of memory for connections");
		return 1;
	}
	for (uint32_t i = 0; i < b->max_conns + BRK_CLOSING_SLOTS; i++)
		b->conns[i] = (struct brk_conn){ .fd = -1, .worker = -1 };

	/* We hold the instance lock, so a socket file here is a dead broker's: replace it. */
	struct stat st;
	if (lstat(b->sock_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			brk_fatal("%s exists and is not a socket; refusing to replace it",
				  b->sock_path);
			return 1;
		}
		if (unlink(b->sock_path) < 0) {
			brk_fatal("cannot remove stale socket %s: %s", b->sock_path,
				  strerror(errno));
			return 1;
		}
	}
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		brk_fatal("socket: %s", strerror(errno));
		return 1;
	}
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	memcpy(sa.sun_path, b->sock_path, strlen(b->sock_path) + 1);
	/* Owner-only from the start (no window at the umask's mode), then the configured access
	 * (access.c) before anyone can connect: listen() comes last. */
	mode_t umask_was = umask(0177);
	int bound = bind(fd, (struct sockaddr *)&sa, sizeof sa);
	int bind_errno = errno;
	umask(umask_was);
	if (bound < 0) {
		brk_fatal("cannot bind %s: %s", b->sock_path, strerror(bind_errno));
		close(fd);
		return 1;
	}
	if (brk_access_socket(b)) {
		close(fd);
		unlink(b->sock_path);
		return 1;
	}
	if (listen(fd, 128) < 0 || brk_epoll_add(b, fd, BRK_EV_LISTEN, 0, EPOLLIN) < 0) {
		brk_fatal("cannot listen on %s: %s", b->sock_path, strerror(errno));
		close(fd);
		unlink(b->sock_path);
		return 1;
	}
	b->listen_fd = fd;
	return 0;
}

static int gid_allowed(const struct brk *b, gid_t gid)
{
	for (uint32_t i = 0; i < b->cfg.n_gids; i++)
		if (b->cfg.allowed_gids[i] == (uint32_t)gid)
			return 1;
	return 0;
}

static int peer_allowed(const struct brk *b, int fd, const struct ucred *cr)
{
	if (cr->uid == b->euid || cr->uid == 0 || gid_allowed(b, cr->gid))
		return 1;
	if (b->cfg.n_gids == 0)
		return 0;
	static gid_t groups[PEER_GROUPS_MAX];
	socklen_t len = sizeof groups;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return 0;
	for (socklen_t i = 0; i < len / sizeof groups[0]; i++)
		if (gid_allowed(b, groups[i]))
			return 1;
	return 0;
}

/* A free entry of b->conns, or b->max_conns + BRK_CLOSING_SLOTS when there is none. */
static uint32_t free_conn(const struct brk *b)
{
	for (uint32_t k = 0; k < b->max_conns + BRK_CLOSING_SLOTS; k++)
		if (b->conns[k].fd < 0)
			return k;
	return b->max_conns + BRK_CLOSING_SLOTS;
}

/* Refuses a peer with one error reply. The connection is kept (unserved) until the peer sends
 * its request or closes, at most BRK_CLOSING_MS: closing at once would make the peer's send of
 * its first request fail with EPIPE before it could read why it was refused. */
static void refuse(struct brk *b, int fd, const struct ucred *cr, int code, const char *msg)
{
	send_error_fd(fd, code, msg);
	/* At most BRK_CLOSING_SLOTS held: with served ones capped at max_conns, a served peer
	 * always finds a free entry. Past that, close at once (best effort). */
	uint32_t slot =
		b->n_closing < BRK_CLOSING_SLOTS ? free_conn(b) : b->max_conns + BRK_CLOSING_SLOTS;
	if (slot == b->max_conns + BRK_CLOSING_SLOTS ||
	    brk_epoll_add(b, fd, BRK_EV_CONN, slot, EPOLLIN | EPOLLRDHUP) < 0) {
		close(fd);
		return;
	}
	b->conns[slot] = (struct brk_conn){ .fd = fd,
					    .pid = cr->pid,
					    .uid = cr->uid,
					    .gid = cr->gid,
					    .worker = -1,
					    .closing_at = shmb_mono_ms() + BRK_CLOSING_MS };
	b->n_closing++;
}

void brk_control_accept(struct brk *b)
{
	for (int i = 0; i < 64; i++) {
		int fd = accept4(b->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
			    errno == ENOBUFS) {
				/* The listener stays readable: stop watching it until the next tick
				 * (loop.c) rather than spin on it. */
				brk_warn("accept: %s; pausing accepts", strerror(errno));
				struct epoll_event ev = { .events = 0,
							  .data.u64 = (uint64_t)BRK_EV_LISTEN
								      << 32 };
				epoll_ctl(b->epfd, EPOLL_CTL_MOD, b->listen_fd, &ev);
				b->accept_paused = 1;
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				brk_warn("accept: %s", strerror(errno));
			}
			return;
		}
		struct ucred cr;
		socklen_t len = sizeof cr;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
			brk_warn("SO_PEERCRED: %s", strerror(errno));
			close(fd);
			continue;
		}
		if (!peer_allowed(b, fd, &cr)) {
			brk_ctr_add(b, SHMB_CTR_WORKERS_REFUSED, 1);
			brk_log("refused connection from pid %d (uid %u, gid %u): not our uid, root or "
				"an allowed gid",
				(int)cr.pid, (unsigned)cr.uid, (unsigned)cr.gid);
			refuse(b, fd, &cr, SHMB_EACCES,
			       "not allowed: the broker serves its own uid, root and the configured "
			       "allowed_gids");
			continue;
		}
		if (b->n_conns >= b->max_conns) {
			char msg[96];
			snprintf(msg, sizeof msg, "too many connections (%u)", b->max_conns);
			refuse(b, fd, &cr, SHMB_ENOWORKER, msg);
			continue;
		}
		uint32_t slot = free_conn(b);
		if (slot == b->max_conns + BRK_CLOSING_SLOTS ||
		    brk_epoll_add(b, fd, BRK_EV_CONN, slot, EPOLLIN | EPOLLRDHUP) < 0) {
			close(fd); /* unreachable: n_conns < max_conns leaves a slot */
			continue;
		}
		b->conns[slot] = (struct brk_conn){ .fd = fd,
						    .pid = cr.pid,
						    .uid = cr.uid,
						    .gid = cr.gid,
						    .worker = -1,
						    .last_msg_ms = shmb_mono_ms() };
		b->n_conns++;
	}
}

void brk_control_expire(struct brk *b)
{
	if (!b->n_closing && !b->n_conns)
		return;
	int64_t now = shmb_mono_ms();
	for (uint32_t k = 0; k < b->max_conns + BRK_CLOSING_SLOTS; k++) {
		const struct brk_conn *c = &b->conns[k];
		if (c->fd < 0)
			continue;
		if (c->closing_at && now >= c->closing_at) {
			brk_control_drop(b, k, 0);
		} else if (!c->closing_at && c->worker < 0 && now - c->last_msg_ms >= BRK_IDLE_MS) {
			/* No worker slot (never said hello, or its slot went to a newer connection)
			 * and silent: an idle connection must not hold an entry forever. */
			brk_log("closing the connection of pid %d: no request for %d ms",
				(int)c->pid, BRK_IDLE_MS);
			brk_control_drop(b, k, 0);
		}
	}
}

void brk_control_resume_accept(struct brk *b)
{
	if (!b->accept_paused || b->listen_fd < 0)
		return;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)BRK_EV_LISTEN << 32 };
	if (epoll_ctl(b->epfd, EPOLL_CTL_MOD, b->listen_fd, &ev) == 0)
		b->accept_paused = 0;
}

void brk_control_drop(struct brk *b, uint32_t conn, int settle)
{
	if (conn >= b->max_conns + BRK_CLOSING_SLOTS || b->conns[conn].fd < 0)
		return;
	struct brk_conn *c = &b->conns[conn];
	int32_t w = c->worker;
	int detaching = c->detaching;
	brk_epoll_del(b, c->fd);
	close(c->fd);
	c->fd = -1;
	c->worker = -1;
	c->detaching = 0;
	if (c->closing_at)
		b->n_closing--;
	else
		b->n_conns--;
	c->closing_at = 0;
	if (w >= 0) {
		if (settle) {
			brk_worker_conn_closed(b, (uint32_t)w, (int)conn, detaching);
		} else if (b->wslots[w].conn == (int32_t)conn) {
			/* Still watched by its pidfd; it may reconnect and resume. */
			b->wslots[w].conn = -1;
		}
	}
}

int brk_control_reply(struct brk *b, uint32_t conn, const cJSON *msg, const int *fds, int nfds)
{
	struct brk_conn *c = &b->conns[conn];
	if (c->fd < 0)
		return -1;
	int rc = ctl_send_json(c->fd, msg, fds, nfds);
	if (rc == 0)
		return 0;
	int e = errno;
	if (rc == SHMB_EIO && (e == EAGAIN || e == EWOULDBLOCK)) {
		brk_log("dropping the connection of pid %d: it does not read its replies%s",
			(int)c->pid,
			c->worker >= 0 ? " (its worker slot stays until it exits)" : "");
		brk_control_drop(b, conn, 0);
	} else {
		brk_control_drop(b, conn, 1); /* the peer is gone */
	}
	return -1;
}

int brk_control_error(struct brk *b, uint32_t conn, int code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	brk_ctr_add(b, SHMB_CTR_CTL_ERRORS, 1);
	cJSON *r = cJSON_CreateObject();
	if (!r) {
		brk_control_drop(b, conn, 0);
		return -1;
	}
	cJSON_AddFalseToObject(r, "ok");
	cJSON_AddNumberToObject(r, "code", code);
	cJSON_AddStringToObject(r, "error", shmb_err_name(code));
	cJSON_AddStringToObject(r, "message", msg);
	int rc = brk_control_reply(b, conn, r, NULL, 0);
	cJSON_Delete(r);
	return rc;
}

static int peer_closed(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

void brk_control_readable(struct brk *b, uint32_t conn, uint32_t events)
{
	(void)events;
	if (conn >= b->max_conns + BRK_CLOSING_SLOTS)
		return;
	struct brk_conn *c = &b->conns[conn];
	if (c->fd >= 0 && c->closing_at) {
		/* A refused peer spoke or left: it has its answer. Read what it sent first: closing
		 * a Unix socket with unread data resets the peer (ECONNRESET), and its recv would
		 * report that before the refusal still queued for it. */
		for (int i = 0; i < BRK_MSGS_PER_WAKE; i++)
			if (ctl_recv(c->fd, b->rxbuf, SHMB_CTL_MAX_MSG + 1, NULL, 0, NULL) <= 0 &&
			    errno != EINTR)
				break;
		brk_control_drop(b, conn, 0);
		return;
	}
	for (int i = 0; i < BRK_MSGS_PER_WAKE && c->fd >= 0; i++) {
		int nfds = 0, fd = -1;
		/* One fd at most (a restore's image, restore.c); ctl_recv closes any more. The
		 * request may read it while it runs (b->req_fd); it is closed right after, whatever
		 * the request was, so a peer cannot make the broker hold fds. */
		ssize_t n = ctl_recv(c->fd, b->rxbuf, SHMB_CTL_MAX_MSG + 1, &fd, 1, &nfds);
		if (nfds == 0)
			fd = -1;
		if (n <= 0 && fd >= 0) {
			int e = errno;
			close(fd);
			fd = -1;
			errno = e;
		}
		if (n == SHMB_ETOOBIG) {
			brk_control_error(b, conn, SHMB_ETOOBIG, "message larger than %d bytes",
					  SHMB_CTL_MAX_MSG);
			continue;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			brk_control_drop(b, conn, 1);
			return;
		}
		c->last_msg_ms = shmb_mono_ms();
		if (n == 0) {
			if (peer_closed(c->fd)) {
				brk_control_drop(b, conn, 1);
				return;
			}
			brk_control_error(b, conn, SHMB_EINVAL, "empty message");
			continue;
		}
		b->req_fd = fd;
		brk_request(b, conn, b->rxbuf, (size_t)n);
		b->req_fd = -1;
		if (fd >= 0)
			close(fd);
	}
}

void brk_control_close(struct brk *b)
{
	if (b->listen_fd >= 0) {
		close(b->listen_fd);
		b->listen_fd = -1;
		unlink(b->sock_path);
	}
	for (uint32_t i = 0; b->conns && i < b->max_conns + BRK_CLOSING_SLOTS; i++)
		if (b->conns[i].fd >= 0) {
			close(b->conns[i].fd);
			b->conns[i].fd = -1;
		}
	free(b->conns);
	free(b->rxbuf);
	b->conns = NULL;
	b->rxbuf = NULL;
}
