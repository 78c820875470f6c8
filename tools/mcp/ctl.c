/* ctl.c - a worker's broker thread: every libshmb call that talks to the broker's socket
 * (attach, session create, session delete) runs here, off the event loop; so does a failover
 * (failover.c: Redis calls and shmb_session_restore, with --redis only), for the same reason.
 *
 * Those calls wait for the broker's reply, up to libshmb's 5 s control timeout when the broker
 * is alive but hung (stopped, or stuck), and they ran inside the loop: one initialize froze
 * every connection of its worker for 5 s (a ping took 4.8 s; 9.8 s with 8 initializes in
 * flight). Now a request that needs the broker queues a call for this thread and suspends its
 * connection; the thread makes the call, puts it on the done list and writes an eventfd the loop
 * watches; the loop (ctl_drain) resumes the connection, libmicrohttpd calls the access handler
 * again, and the handler finds the completed call (ctl_request). Everything else the worker does
 * (lookups, publish, cursors, attributes) never waits for the broker (client/shmb.h), so the
 * loop never does.
 *
 * Unavailable means answered at once: a request gets 503 with Retry-After (MCP_CTL_BUSY) when
 * the worker has no client yet, when the call the thread is making has run longer than
 * --broker-wait-ms (the broker is hung: every call behind it would wait too), when the
 * broker's heartbeat in the segment header is older than that (watch.c), or when
 * MCP_CTL_QUEUE calls wait already. A request whose call has not completed within
 * --broker-wait-ms gets 503 too; its call still runs, its outcome is dropped, and a session it
 * created is deleted again (queued like any call), so a 503 never leaves a session behind. (A
 * delete answered 503 may still be applied: the client's retry then gets 404.)
 *
 * Ownership: a call is shared by the thread (until the loop has taken it off the done list)
 * and the request (until ctl_request returned its outcome, or the request ended); whichever of
 * the two lets go last, on the loop thread, frees it. The queue, the done list and `running_ms`
 * are under `lock`; everything else of a call is the loop's, or the thread's while it runs. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mcp.h"

#define MCP_CTL_QUEUE 64 /* calls waiting for the thread, per worker */

enum ctl_op { CTL_ATTACH, CTL_CREATE, CTL_DELETE, CTL_FAILOVER, CTL_DISOWN };

struct ctl_call {
	struct ctl_call *next; /* queue or done list */
	enum ctl_op op;
	int rc;
	char sid[SHMB_SID_LEN + 1];
	char tenant[65];
	char principal[129];
	int has_principal;
	shmb_client *client; /* CTL_ATTACH's outcome */
	int local;           /* CTL_FAILOVER: the segment has the session (ownership check) */
	uint64_t lei;        /* CTL_FAILOVER: the client's Last-Event-ID */
	/* The loop's. */
	struct MHD_Connection *conn; /* the suspended request, NULL once resumed or none */
	struct ctl_call *wnext, *wprev;
	int64_t deadline;
	int completed; /* the loop took it off the done list */
	int released;  /* no request holds it */
	int timed_out; /* answered 503: the request gave up */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static struct ctl_call *queue_head, *queue_tail, *done_list;
static unsigned queued;
static int64_t running_ms; /* when the thread began its current call, 0: idle */
static int stop;
static int efd = -1;
static pthread_t thread;
static int thread_started;

static struct ctl_call *waiting; /* the loop's: calls whose request is suspended */
static int64_t next_deadline = INT64_MAX;

static void *ctl_thread(void *arg)
{
	(void)arg;
	shmb_client *client = NULL;
	int told = 0;
	pthread_mutex_lock(&lock);
	for (;;) {
		while (!stop && !queue_head && client)
			pthread_cond_wait(&cond, &lock);
		if (stop)
			break;
		struct ctl_call *c = queue_head;
		if (!client) {
			/* Attach first (its own call, retried every 500 ms until it works). */
			running_ms = mcp_now_ms();
			pthread_mutex_unlock(&lock);
			int rc = shmb_attach(mcp_cfg.name, &client);
			if (rc < 0) {
				client = NULL;
				if (!told++)
					mcp_log("worker %d: cannot attach to the broker: %s; retrying",
						mcp_w.index, shmb_strerror(rc));
				usleep(500000);
				pthread_mutex_lock(&lock);
				running_ms = 0;
				continue;
			}
			c = calloc(1, sizeof *c);
			pthread_mutex_lock(&lock);
			running_ms = 0;
			if (!c) {
				/* Cannot hand it over: let it go, try again. */
				pthread_mutex_unlock(&lock);
				shmb_detach(client);
				client = NULL;
				usleep(500000);
				pthread_mutex_lock(&lock);
				continue;
			}
			*c = (struct ctl_call){ .op = CTL_ATTACH, .client = client, .released = 1 };
		} else {
			queue_head = c->next;
			if (!queue_head)
				queue_tail = NULL;
			queued--;
			running_ms = mcp_now_ms();
			pthread_mutex_unlock(&lock);
			const char *p = c->has_principal ? c->principal : NULL;
			if (c->op == CTL_CREATE)
				c->rc = shmb_session_create(client, c->tenant, p, c->sid);
			else if (c->op == CTL_FAILOVER)
				c->rc = failover_run(client, c->sid, c->tenant, p, c->local,
						     c->lei);
			else if (c->op == CTL_DISOWN)
				c->rc = failover_disown(client, c->sid, c->tenant, p);
			else
				c->rc = shmb_session_delete(client, c->sid, c->tenant, p);
			pthread_mutex_lock(&lock);
			running_ms = 0;
		}
		c->next = done_list;
		done_list = c;
		uint64_t one = 1;
		if (write(efd, &one, sizeof one) < 0 && errno != EAGAIN)
			mcp_log("worker %d: broker thread: eventfd: %s", mcp_w.index,
				strerror(errno));
	}
	pthread_mutex_unlock(&lock);
	failover_fini();
	return NULL;
}

int ctl_start(void)
{
	efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (efd < 0)
		return -1;
	int rc = pthread_create(&thread, NULL, ctl_thread, NULL);
	if (rc) {
		errno = rc;
		close(efd);
		return efd = -1;
	}
	thread_started = 1;
	return efd;
}

int ctl_busy(void)
{
	pthread_mutex_lock(&lock);
	int64_t since = running_ms;
	unsigned n = queued;
	pthread_mutex_unlock(&lock);
	return n >= MCP_CTL_QUEUE ||
	       (since && mcp_now_ms() - since > (int64_t)mcp_ops.broker_wait_ms) ||
	       watch_heartbeat_age_ms() > (int64_t)mcp_ops.broker_wait_ms;
}

void ctl_end_all(void)
{
	for (struct ctl_call *c = waiting; c; c = c->wnext)
		c->deadline = 0;
	next_deadline = 0;
	ctl_tick(mcp_now_ms());
}

int ctl_stop(void)
{
	if (!thread_started)
		return 1;
	pthread_mutex_lock(&lock);
	stop = 1;
	int idle = running_ms == 0;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
	/* A thread inside a call to a hung broker is left to the process's exit. */
	if (idle)
		pthread_join(thread, NULL);
	else
		pthread_detach(thread);
	thread_started = 0;
	return idle;
}

static void enqueue(struct ctl_call *c)
{
	pthread_mutex_lock(&lock);
	if (queue_tail)
		queue_tail->next = c;
	else
		queue_head = c;
	queue_tail = c;
	queued++;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
}

static void unwait(struct ctl_call *c)
{
	if (c->wprev)
		c->wprev->wnext = c->wnext;
	else if (waiting == c)
		waiting = c->wnext;
	if (c->wnext)
		c->wnext->wprev = c->wprev;
	c->wnext = c->wprev = NULL;
}

/* The call ended for one of its two holders; the last frees it. A session created for a
 * request that is no longer there (timed out, or gone) is deleted again. */
static void settle(struct ctl_call *c)
{
	if (!c->completed || !c->released)
		return;
	if (c->op == CTL_CREATE && c->rc == 0 && c->timed_out)
		ctl_delete_async(c->sid, c->tenant, c->has_principal ? c->principal : NULL);
	free(c);
}

void ctl_drain(void)
{
	uint64_t v;
	if (read(efd, &v, sizeof v) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&lock);
	struct ctl_call *list = done_list;
	done_list = NULL;
	pthread_mutex_unlock(&lock);
	while (list) {
		struct ctl_call *c = list;
		list = c->next;
		c->completed = 1;
		if (c->op == CTL_ATTACH) {
			worker_attached(c->client);
		} else if (c->conn) {
			unwait(c);
			MHD_resume_connection(c->conn);
			worker_kick();
			c->conn = NULL;
		} else if (c->rc < 0 && c->rc != SHMB_ENOENT && c->released && !c->timed_out) {
			mcp_log("worker %d: background session %s %.8s... failed: %s", mcp_w.index,
				c->op == CTL_CREATE   ? "create"
				: c->op == CTL_DELETE ? "delete"
						      : "failover",
				c->sid, shmb_strerror(c->rc));
		}
		settle(c);
	}
}

int64_t ctl_tick(int64_t now)
{
	if (now < next_deadline)
		return next_deadline;
	next_deadline = INT64_MAX;
	for (struct ctl_call *c = waiting, *n; c; c = n) {
		n = c->wnext;
		if (c->deadline <= now) {
			c->timed_out = 1;
			unwait(c);
			MHD_resume_connection(c->conn);
			worker_kick();
			c->conn = NULL;
		} else if (c->deadline < next_deadline) {
			next_deadline = c->deadline;
		}
	}
	return next_deadline;
}

static struct ctl_call *new_call(enum ctl_op op, const char *sid, const char *tenant,
				 const char *principal)
{
	if (strlen(tenant) >= sizeof((struct ctl_call *)0)->tenant ||
	    (principal && strlen(principal) >= sizeof((struct ctl_call *)0)->principal))
		return NULL;
	struct ctl_call *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->op = op;
	snprintf(c->sid, sizeof c->sid, "%s", sid ? sid : "");
	snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
	snprintf(c->principal, sizeof c->principal, "%s", principal ? principal : "");
	c->has_principal = principal != NULL;
	return c;
}

void ctl_delete_async(const char *sid, const char *tenant, const char *principal)
{
	struct ctl_call *c = new_call(CTL_DELETE, sid, tenant, principal);
	if (!c) {
		mcp_log("worker %d: session %.8s... not deleted (out of memory); it expires by its "
			"TTL",
			mcp_w.index, sid);
		return;
	}
	c->released = 1;
	enqueue(c);
}

void ctl_disown_async(const char *sid, const char *tenant, const char *principal)
{
	if (ctl_busy())
		return; /* checked again at the next look */
	struct ctl_call *c = new_call(CTL_DISOWN, sid, tenant, principal);
	if (!c)
		return;
	c->released = 1;
	enqueue(c);
}

/* A call for the request cx (create: the new id goes to sid; delete and failover: of cx->sid). */
static int request_call(struct mcp_ctx *cx, enum ctl_op op, char *sid, int local, uint64_t lei)
{
	struct ctl_call *c = *cx->call;
	if (c) {
		/* Called again after the resume: the outcome, or the deadline passed. */
		*cx->call = NULL;
		int rc = c->timed_out ? MCP_CTL_BUSY : c->rc;
		if (!c->timed_out && op == CTL_CREATE)
			memcpy(sid, c->sid, sizeof c->sid);
		c->released = 1;
		settle(c);
		return rc;
	}
	if (!mcp_w.client || ctl_busy())
		return MCP_CTL_BUSY;
	c = new_call(op, op == CTL_CREATE ? NULL : cx->sid, cx->tenant, cx->principal);
	if (!c) /* too long to be bound to a session */
		return op == CTL_CREATE ? SHMB_EINVAL : SHMB_ENOENT;
	c->local = local;
	c->lei = lei;
	c->conn = cx->conn;
	c->deadline = mcp_now_ms() + mcp_ops.broker_wait_ms;
	if (c->deadline < next_deadline)
		next_deadline = c->deadline;
	c->wnext = waiting;
	if (waiting)
		waiting->wprev = c;
	waiting = c;
	*cx->call = c;
	MHD_suspend_connection(cx->conn);
	enqueue(c);
	return MCP_CTL_PENDING;
}

int ctl_request(struct mcp_ctx *cx, int create, char *sid)
{
	return request_call(cx, create ? CTL_CREATE : CTL_DELETE, sid, 0, 0);
}

int ctl_failover_pending(const struct mcp_ctx *cx)
{
	return *cx->call && (*cx->call)->op == CTL_FAILOVER;
}

int ctl_failover(struct mcp_ctx *cx, int local, uint64_t lei)
{
	return request_call(cx, CTL_FAILOVER, NULL, local, lei);
}

void ctl_request_gone(struct ctl_call *c)
{
	if (!c)
		return;
	if (c->conn) {
		unwait(c);
		c->conn = NULL;
	}
	c->timed_out = 1; /* nobody takes its outcome */
	c->released = 1;
	settle(c);
}
