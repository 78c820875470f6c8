/* ctl.h - the control protocol's transport: where the socket lives, and one JSON message per
 * SOCK_SEQPACKET datagram with optional SCM_RIGHTS fds. The messages themselves are listed in
 * docs/protocol.md; the broker's handlers are in broker/control.c. */
#ifndef SHMB_CTL_H
#define SHMB_CTL_H

#include <stddef.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#define SHMB_CTL_MAX_MSG 65536         /* larger messages are refused with SHMB_ETOOBIG */
#define SHMB_MAX_WORKERS_LIMIT_FDS 253 /* SCM_MAX_FD */
#define SHMB_CTL_TIMEOUT_MS 5000       /* a call whose reply takes longer fails with EBROKER */

/* The control timeout in effect: SHMB_CTL_TIMEOUT_MS, or $SHMB_CTL_TIMEOUT_MS (10..600000; read
 * once per process) -- tests shorten it so a stalled broker is shown in a fraction of a second. */
int ctl_timeout_ms(void);

/* $SHMB_NAME or "default" (static storage or the environment's). */
const char *ctl_default_name(void);
/* $SHMB_RUNTIME_DIR, else $XDG_RUNTIME_DIR/shmb, else /run/shmb (root) or /tmp/shmb-<uid>
 * (which another user may have created first: ctl_connect checks who owns it). Returns 0 or
 * SHMB_EINVAL (path too long). */
int ctl_runtime_dir(char *buf, size_t len);
/* <runtime dir>/<name>.sock and <runtime dir>/<name>.lock. Return 0 or SHMB_EINVAL. */
int ctl_socket_path(const char *name, char *buf, size_t len);
int ctl_lock_path(const char *name, char *buf, size_t len);

/* Connects to the broker `name`, having checked who it is (common/trust.h, docs/security.md):
 * the runtime dir and the socket file must belong to a trusted uid (ours, root, or one in
 * $SHMB_TRUSTED_UIDS) and the runtime dir and the directories above it must be writable by
 * nobody else (a root-owned sticky directory excepted), and the listening peer's SO_PEERCRED uid
 * must be trusted; nothing is sent. Never blocks: the socket is nonblocking (a broker that does
 * not accept, its backlog full, is SHMB_EBROKER at once), and stays so: sends fail rather than
 * wait (ctl_wait_reply polls). Returns the socket fd (close-on-exec) or SHMB_EBROKER (no broker
 * listening or accepting), SHMB_EINVAL (bad name), SHMB_EACCES (a check failed, or the socket's
 * mode refused us); why (may be NULL) then says which, naming the path or peer and its owner. */
int ctl_connect(const char *name, char *why, size_t whylen);

/* Sends one message with nfds fds attached. Returns 0 or SHMB_EIO / SHMB_EBROKER (peer gone). */
int ctl_send(int fd, const char *msg, size_t len, const int *fds, int nfds);
/* Sends cJSON as one message. */
int ctl_send_json(int fd, const cJSON *msg, const int *fds, int nfds);
/* Receives one message into buf (cap >= SHMB_CTL_MAX_MSG + 1, NUL-terminated) and up to maxfds
 * fds (close-on-exec; extra fds are closed). Returns the length, 0 on EOF, SHMB_ETOOBIG when
 * the message was larger than cap - 1 (it is consumed and its fds closed), SHMB_EIO. */
ssize_t ctl_recv(int fd, char *buf, size_t cap, int *fds, int maxfds, int *nfds);

/* Waits up to timeout_ms for one reply and parses it (as ctl_call). *timed_out is 1 when
 * nothing arrived in time (the connection is still usable: the reply may come later). */
int ctl_wait_reply(int fd, int timeout_ms, cJSON **reply, int *fds, int maxfds, int *nfds,
		   int *timed_out);

/* Client side of one request: sends req, waits up to ctl_timeout_ms() for the reply and parses
 * it. On success *reply owns the parsed object (cJSON_Delete it) and fds received are returned.
 * If the reply says "ok": false, returns its "code" (negative) and still sets *reply.
 * Returns 0, a reply's code, or SHMB_EBROKER (no reply, EOF, garbage). */
int ctl_call(int fd, const cJSON *req, cJSON **reply, int *fds, int maxfds, int *nfds);

#endif
