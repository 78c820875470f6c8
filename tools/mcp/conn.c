/* conn.c - a worker's HTTP connections: deadlines for the request head and body, and room for new
 * clients when the connection table fills (slowloris, idle lock-out).
 *
 * libmicrohttpd's only timeout is an idle one (MHD_OPTION_CONNECTION_TIMEOUT) that every byte
 * resets, so a client trickling a byte a second held a connection forever, and 512 of them per
 * worker locked everyone out. Here every connection is tracked (MHD_OPTION_NOTIFY_CONNECTION)
 * through the phases of a request:
 *
 *   HEAD  from the accept, or from the end of the previous request on a kept-alive connection,
 *         until the head is parsed (the first call of the access handler): deadline
 *         --header-timeout-ms after the phase began, whatever arrives meanwhile;
 *   BODY  until the body is complete (the handler's final call): deadline --body-timeout-ms;
 *   REPLY the response, however long: SSE streams and JSON responses waiting for a job live
 *         here, so no deadline of ours applies (the 120 s idle timeout MHD applies to a client
 *         that stops reading is set again for this phase).
 *
 * Between requests MHD's own idle timeout is --keepalive-timeout-ms (whole seconds, MHD's unit), so
 * an idle kept-alive connection goes quickly. A connection past its deadline is shut down
 * (shutdown(2), not close: MHD owns the fd, sees the end of the stream and frees it).
 *
 * When the table is nearly full (all but max/16 slots), each new connection makes room by shutting
 * down the connection that has waited longest for its request head or body, so idle, slowloris and
 * slow-POST connections, from however many addresses, cannot keep a new client out; one address is
 * also capped by MHD_OPTION_PER_IP_CONNECTION_LIMIT (--max-connections-per-ip, per worker).
 * Everything here runs on the worker's loop thread only (MHD callbacks and worker.c). */
#include <stdlib.h>
#include <sys/socket.h>

#include "mcp.h"

enum { PH_HEAD, PH_BODY, PH_REPLY, PH_CUT };

struct conn {
	struct conn *next, *prev;
	struct MHD_Connection *mhd;
	int fd;
	int phase;
	int64_t since;    /* when the phase began */
	int64_t deadline; /* INT64_MAX: none */
};

static struct conn *conns;
static unsigned n_conns;
static int64_t next_check = INT64_MAX;

unsigned conn_count(void)
{
	return n_conns;
}

static void set_phase(struct conn *c, int phase, int64_t now)
{
	c->phase = phase;
	c->since = now;
	c->deadline = phase == PH_HEAD   ? now + mcp_ops.header_timeout_ms
		      : phase == PH_BODY ? now + mcp_ops.body_timeout_ms
					 : INT64_MAX;
	if (c->deadline < next_check)
		next_check = c->deadline;
}

static void cut(struct conn *c)
{
	c->phase = PH_CUT;
	c->deadline = INT64_MAX;
	shutdown(c->fd, SHUT_RDWR);
}

/* The table is nearly full: shut down the connection, other than the new one, that has waited
 * longest for a request head or body (idle, slowloris, slow POST). A new client's own head
 * arrives within milliseconds, so it is the attackers' older connections that go. */
static void make_room(const struct conn *fresh)
{
	unsigned reserve = mcp_ops.max_connections / 16 ? mcp_ops.max_connections / 16 : 1;
	if (n_conns + reserve <= mcp_ops.max_connections)
		return;
	struct conn *oldest = NULL;
	for (struct conn *c = conns; c; c = c->next)
		if (c != fresh && (c->phase == PH_HEAD || c->phase == PH_BODY) &&
		    (!oldest || c->since < oldest->since))
			oldest = c;
	if (oldest) {
		mcp_log("worker %d: connection table nearly full (%u of %u): closed the "
			"connection waiting longest for a request head or body",
			mcp_w.index, n_conns, mcp_ops.max_connections);
		cut(oldest);
	}
}

void conn_notify(void *cls, struct MHD_Connection *mhd, void **ctx,
		 enum MHD_ConnectionNotificationCode code)
{
	(void)cls;
	struct conn *c = *ctx;
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_CONNECTION_FD);
		c = calloc(1, sizeof *c);
		if (!c || !ci) {
			free(c);
			return; /* untracked: MHD's idle timeout still applies */
		}
		c->mhd = mhd;
		c->fd = ci->connect_fd;
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
		n_conns++;
		*ctx = c;
		set_phase(c, PH_HEAD, mcp_now_ms());
		make_room(c);
		return;
	}
	if (!c)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	n_conns--;
	free(c);
	*ctx = NULL;
}

static struct conn *of(struct MHD_Connection *mhd)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

void conn_head_done(struct MHD_Connection *mhd)
{
	struct conn *c = of(mhd);
	if (c && c->phase == PH_HEAD)
		set_phase(c, PH_BODY, mcp_now_ms());
}

void conn_body_done(struct MHD_Connection *mhd)
{
	struct conn *c = of(mhd);
	if (c && c->phase == PH_BODY) {
		set_phase(c, PH_REPLY, mcp_now_ms());
		MHD_set_connection_option(mhd, MHD_CONNECTION_OPTION_TIMEOUT, MCP_REPLY_IDLE_S);
	}
}

void conn_request_done(struct MHD_Connection *mhd)
{
	struct conn *c = of(mhd);
	if (c && c->phase != PH_CUT) {
		set_phase(c, PH_HEAD, mcp_now_ms());
		MHD_set_connection_option(mhd, MHD_CONNECTION_OPTION_TIMEOUT,
					  mcp_ops_keepalive_s());
	}
}

int64_t conn_tick(int64_t now)
{
	if (now < next_check)
		return next_check;
	next_check = INT64_MAX;
	for (struct conn *c = conns; c; c = c->next) {
		if (c->deadline <= now) {
			mcp_log("worker %d: closed a connection: no complete request %s "
				"after %lld ms",
				mcp_w.index, c->phase == PH_HEAD ? "head" : "body",
				(long long)(now - c->since));
			cut(c);
		} else if (c->deadline < next_check) {
			next_check = c->deadline;
		}
	}
	return next_check;
}
