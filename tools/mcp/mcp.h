/* mcp.h - shmb-mcpd's internal interface: the configuration, the worker's state, the event
 * kinds it stores in the broker, and what each file of tools/mcp offers the others.
 *
 * Files: main.c (options, master, worker supervision, broker start), worker.c (a worker's epoll
 * loop), http.c (libmicrohttpd glue, header checks, routing), rpc.c (JSON-RPC dispatch and the
 * lifecycle methods), session.c (the session's MCP state as shmbroker session attributes),
 * stream.c (SSE and JSON-waiting readers: replay and live follow),
 * tools.c (the tools), jobs.c (the durable job table), quota.c (per-session and per-client
 * limits across workers), content.c (resources, prompts, completion, non-text content), conn.c
 * (connection deadlines), ctl.c (the broker thread), watch.c (the master's watch of the broker's
 * heartbeat). docs/mcp-server.md explains the design. */
#ifndef MCP_H
#define MCP_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

#include "shmb.h"

#define MCP_SERVER_NAME "shmb-mcpd"
#define MCP_SERVER_VERSION "0.1.0"
#define MCP_PATH "/mcp"
#define MCP_HEALTH_PATH "/health" /* a load balancer's health check (http.c) */

#define MCP_MAX_BODY (1u << 20) /* a larger POST body gets 413 */
#define MCP_MAX_LIST 16         /* --token, --allowed-origin, --allowed-host, --broker-arg */
#define MCP_MAX_BROKER_ARGS 32
#define MCP_JOBS_PER_WORKER 64   /* durable jobs a worker index runs at once */
#define MCP_MAX_READERS 256      /* SSE streams and waiting JSON responses per worker */
#define MCP_KEEPALIVE_MS 15000   /* an idle SSE stream gets a comment this often */
#define MCP_OWNER_CHECK_MS 10000 /* --redis: an open stream's session owner checked this often */
#define MCP_MAX_COUNTDOWN 10000  /* countdown n, bounded so a step fits the event kind */
#define MCP_MAX_DELAY_MS 60000
#define MCP_JSON_FIELD 256 /* serialized JSON-RPC id or progress token, with NUL */
/* An SSE reader that fell behind the ring gets this notification, params {lagged}: the event ids
 * it lost (stream.c, docs/mcp-server.md). */
#define MCP_OVERRUN_METHOD "notifications/shmb/overrun"

/* Stream numbers (shmb_publish's `stream`). Control: priming events of POST streams; a POST
 * stream's number is the id of its priming event. Standalone: the session's GET stream. */
#define MCP_STREAM_CONTROL 0u
#define MCP_STREAM_STANDALONE UINT32_MAX

/* Event kinds (shmb_event.kind). A job step's kind carries its step number, so the job table
 * can tell from the broker alone which steps were published. */
#define MCP_EV_PRIME 1u     /* a stream's priming event: not sent as data */
#define MCP_EV_MESSAGE 2u   /* a JSON-RPC notification to send */
#define MCP_EV_RESULT 3u    /* the JSON-RPC response of a POST stream: ends that stream */
#define MCP_EV_END 4u       /* a cancelled job's stream ends here, without a result */
#define MCP_EV_REPLY 5u     /* the client's response to a server-to-client request: not sent */
#define MCP_EV_STEP 0x8000u /* | step: a job step's notification, sent */
#define MCP_EV_MARK 0xC000u /* | step: a job step without a notification, not sent */
#define MCP_EV_STEP_MASK 0x3FFFu

enum mcp_proto {
	MCP_PROTO_BAD = -1,
	MCP_PROTO_2024_11_05, /* what SDK 1.10 speaks over Streamable HTTP: served as 2025-03-26 */
	MCP_PROTO_2025_03_26,
	MCP_PROTO_2025_06_18,
	MCP_PROTO_2025_11_25,
	MCP_PROTO_2026_07_28
};

struct mcp_token {
	const char *token;
	const char *principal;
};

struct mcp_config {
	const char *host;
	unsigned port;
	const char *port_file;
	int workers;
	const char *name; /* NULL: $SHMB_NAME or "default" */
	const char *broker;
	const char *broker_args[MCP_MAX_BROKER_ARGS];
	int n_broker_args;
	const char *tenant;
	const char *tenant_header;
	/* --client-address-header: the header a balancer appends the client's address to
	 * (X-Forwarded-For); its last element keys the per-client limits (quota_owner). */
	const char *client_addr_header;
	struct mcp_token tokens[MCP_MAX_LIST];
	int n_tokens;
	const char *origins[MCP_MAX_LIST];
	int n_origins;
	const char *hosts[MCP_MAX_LIST];
	int n_hosts;
	uint64_t inactivity_ttl_ms;
	uint64_t absolute_ttl_ms;
	unsigned retry_ms;
	int loopback; /* bound to a loopback address: Host must be a loopback name */

	/* Quotas (quota.c; 0: no limit). A client is a principal, or an address without tokens. */
	unsigned max_sessions_per_client;
	unsigned max_jobs_per_session, max_jobs_per_client;
	unsigned max_streams_per_session, max_streams_per_client;

	/* Bearer tokens from --token, --token-file and $SHMB_MCPD_TOKENS (main.c: auth_load). */
	struct mcp_token *auth;
	int n_auth;
	const char *token_file;
};
extern struct mcp_config mcp_cfg;

/* ---- Issue 14 (connections, the broker, supervision): options of their own ---------------- */
#define MCP_REPLY_IDLE_S \
	120 /* MHD's idle timeout while a response is sent (a client not reading) */
struct mcp_ops_config {
	unsigned max_connections;   /* --max-connections: per worker (default 512) */
	unsigned max_per_ip;        /* --max-connections-per-ip: per worker, 0: no cap (64) */
	unsigned header_timeout_ms; /* --header-timeout-ms: request head complete by (10000) */
	unsigned body_timeout_ms; /* --body-timeout-ms: body complete by, after the head (30000) */
	unsigned keepalive_ms;    /* --keepalive-timeout-ms: idle between requests (6000) */
	unsigned broker_wait_ms;  /* --broker-wait-ms: a request waits for a broker call (1000) */
	unsigned broker_hang_ms;  /* --broker-hang-ms: heartbeat silence that replaces it (3000) */
	int keep_segment;         /* --keep-segment: no --unlink-on-exit for a started broker */
};
extern struct mcp_ops_config mcp_ops;
unsigned mcp_ops_keepalive_s(void); /* keepalive_ms in MHD's unit, rounded up */

/* conn.c: request head and body deadlines, room for new connections (on the loop thread). */
void conn_notify(void *cls, struct MHD_Connection *mhd, void **ctx,
		 enum MHD_ConnectionNotificationCode code);
void conn_head_done(struct MHD_Connection *mhd);    /* the access handler's first call */
void conn_body_done(struct MHD_Connection *mhd);    /* its final call: the response phase */
void conn_request_done(struct MHD_Connection *mhd); /* request completed: waits for a head */
int64_t conn_tick(int64_t now); /* cuts connections past their deadline; next check due */
unsigned conn_count(void);

/* ctl.c: the worker's broker thread (attach, create, delete off the loop). */
struct ctl_call;
struct mcp_ctx;
#define MCP_CTL_PENDING 1      /* queued: the connection is suspended, the handler runs again */
#define MCP_CTL_BUSY 2         /* the broker is unavailable or hung: answer 503 + Retry-After */
int ctl_start(void);           /* starts the thread (it attaches); returns the eventfd to watch */
void ctl_drain(void);          /* the eventfd is readable: hand over completed calls */
int64_t ctl_tick(int64_t now); /* 503 to requests waiting past --broker-wait-ms */
void ctl_end_all(void);        /* stopping: resume every waiting request (503) */
int ctl_stop(void);            /* 1: the thread ended, 0: it is stuck in a call (left to exit) */
int ctl_busy(void);
/* Session create (sid receives the id) or delete (of cx->sid) for a request: 0 or SHMB_E* once
 * done, MCP_CTL_PENDING or MCP_CTL_BUSY. */
int ctl_request(struct mcp_ctx *cx, int create, char *sid);
void ctl_request_gone(struct ctl_call *c); /* the request ended: drop its call */
void ctl_delete_async(const char *sid, const char *tenant, const char *principal);
void worker_attached(shmb_client *c); /* worker.c: the thread attached */
/* worker.c: a connection was resumed outside MHD_run: run MHD again before sleeping (the resume
 * alone does not wake the loop: libmicrohttpd processes it on its next run). */
void worker_kick(void);

/* watch.c: the master's heartbeat watch on the broker it started. */
int watch_broker_hung(int pid, int64_t now); /* 1: silent for --broker-hang-ms */
void watch_reset(int64_t now);
int64_t watch_heartbeat_age_ms(void); /* a worker: how old the heartbeat is, -1: unknown */
void watch_fini(void);

/* ---- Issue 16 (multi-host): failover from Redis (failover.c, docs/multi-host.md) ---------- */
struct mcp_fo_config {
	const char *redis;   /* --redis HOST:PORT; NULL: failover off, nothing changes */
	const char *prefix;  /* --redis-prefix (default "shmb:") */
	unsigned margin;     /* --failover-id-margin: ids skipped after the last known one (64) */
	unsigned timeout_ms; /* --redis-timeout-ms: connect and each reply (default 300) */
	const char *user;    /* --redis-user: the ACL user to AUTH as (NULL: requirepass's) */
	const char *pw_file; /* --redis-password-file: AUTH with its first line, on every connect */
	const char *pw_env;  /* --redis-password-env: AUTH with this variable's value */
};
extern struct mcp_fo_config mcp_fo;
/* The server's own session attribute: event id ranges lost in failovers, "lo-hi[,lo-hi...]"
 * (ascending, at most MCP_LOST_RANGES): a stream resumed before the end of one gets the
 * overrun notification where the range starts (stream.c). */
#define MCP_ATTR_LOST "mcpd.lost"
#define MCP_LOST_RANGES 8
#define MCP_FO_UNREACHABLE 3 /* failover_run: Redis did not answer (503 + Retry-After) */
int failover_parse_redis(const char *arg); /* main.c's --redis: 0 or -1 */
int failover_available(void);              /* built with hiredis */
/* main.c: the credentials given can be read now (a file, a variable set). 0, or -1 with why. */
int failover_check_auth(char *why, size_t len);
/* The loop: 1 when this worker already checked sid's ownership in Redis (a bounded cache). */
int failover_checked(const char *sid);
void failover_mark(const char *sid);
/* The worker's loop did not turn for gap_ms (stopped, paused): forget every check (worker.c). */
void failover_stalled(int64_t gap_ms);
/* Broker thread: drops the local copy of sid when Redis names another owner (no restore): its
 * open streams end, their clients reconnect through the balancer to the owner. */
int failover_disown(shmb_client *c, const char *sid, const char *tenant, const char *principal);
/* The loop: failover_disown on the broker thread, nobody waiting for its outcome. */
void ctl_disown_async(const char *sid, const char *tenant, const char *principal);
/* The broker thread (ctl.c): make sid servable here. local: the segment has it (check that
 * Redis names no other owner; if it does, drop the local copy and restore). Else claim and
 * restore it from Redis; lei: the client's Last-Event-ID (0: none). Returns 0 (open it now),
 * SHMB_ENOENT (Redis does not know it either), MCP_FO_UNREACHABLE, or another SHMB_E*. */
int failover_run(shmb_client *c, const char *sid, const char *tenant, const char *principal,
		 int local, uint64_t lei);
void failover_fini(void); /* the broker thread ends: drop its Redis connection */
/* The lost ranges of session s: n (0..MCP_LOST_RANGES) pairs in lo[], hi[]. */
int failover_lost(shmb_session *s, uint64_t *lo, uint64_t *hi);
/* ctl.c: failover_run for a request, on the broker thread: its outcome once done, else
 * MCP_CTL_PENDING or MCP_CTL_BUSY (as ctl_request). */
int ctl_failover(struct mcp_ctx *cx, int local, uint64_t lei);
int ctl_failover_pending(const struct mcp_ctx *cx); /* its call is ctl_failover's */

struct job_slot; /* jobs.c: one durable job, in the shared job table */

/* The worker process (worker.c). */
struct mcp_worker {
	int index;           /* 0..workers-1: which job slots are ours */
	shmb_client *client; /* NULL while the broker is unreachable */
	struct MHD_Daemon *daemon;
	struct job_slot *jobs; /* this worker index's MCP_JOBS_PER_WORKER slots (shared) */
	char *evbuf;           /* scratch for shmb_cursor_next */
	size_t evbuf_len;
	int stopping;
};
extern struct mcp_worker mcp_w;

/* worker.c: a libshmb call said SHMB_ESTALE (the broker serves a new segment: the old one's
 * sessions are gone). The worker stops as on SIGTERM (its streams end, clients reconnect) and
 * exits; the master starts a new one, which attaches to the new segment. */
void worker_segment_replaced(void);

/* What a request presented, after http.c's checks. */
struct mcp_ctx {
	struct MHD_Connection *conn;
	enum mcp_proto proto; /* from MCP-Protocol-Version; absent: the session's negotiated
				 version once it is open (rpc_open_session), else 2025-03-26 */
	int proto_given;      /* the request had an MCP-Protocol-Version header */
	const char *sid;      /* Mcp-Session-Id or NULL */
	const char *tenant;
	const char *principal; /* NULL: none */
	int accept_sse, accept_json;
	struct ctl_call **call; /* ctl.c: this request's broker call (issue 14) */
	int *qslot; /* rpc.c: the session quota slot (+1, 0: none) held across that call */
	/* stream.c: a resumed SSE stream's reader tells the client where these ranges (ids
	 * lost in a failover, failover_lost) start, when they lie after its Last-Event-ID. */
	uint64_t lost_lo[MCP_LOST_RANGES], lost_hi[MCP_LOST_RANGES];
	int n_lost;
	/* stream.c: a resumed POST stream whose job no longer runs anywhere here: the call's
	 * serialized id (MCP_ATTR_CALL), answered with an error once the replay is done. */
	char lost_call[MCP_JSON_FIELD];
};

/* main.c */
void mcp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int64_t mcp_now_ms(void); /* monotonic */

/* worker.c */
int worker_main(int index, int listen_fd, struct job_slot *table);

/* http.c */
struct MHD_Daemon *http_start(int listen_fd);
enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
			   const char *body, const char *sid);
enum MHD_Result http_reply_error(struct MHD_Connection *conn, unsigned status, const char *id,
				 int code, const char *message);
void http_add_common(struct MHD_Response *resp);
enum MHD_Result http_reply_shmb(struct MHD_Connection *conn, const char *id, int64_t rc);

/* rpc.c: a POST's body; id is the serialized JSON-RPC id ("null" when unknown). */
enum MHD_Result rpc_post(struct mcp_ctx *cx, const char *body, size_t len);
enum MHD_Result rpc_open_session(struct mcp_ctx *cx, const char *id, shmb_session **out);
const char *proto_name(enum mcp_proto p);
/* v is a number held exactly: an integer of magnitude below 2^53 (JSON-RPC ids). */
int rpc_exact_integer(const cJSON *v);
/* The JSON text of a string or number v in out (ids, progress tokens are echoed as this text,
 * raw: cJSON prints 9007199254740991 as 9.00719925474099e+15). Returns 0, or -1 when v is of
 * another type or its text does not fit in len. */
int rpc_json_text(const cJSON *v, char *out, size_t len);

/* session.c: the session's MCP state in session attributes, which every worker reads. */
#define MCP_ATTR_PROTO "mcp.protocol_version"   /* "2025-11-25" */
#define MCP_ATTR_CAPS "mcp.client_capabilities" /* JSON: initialize's params.capabilities */
#define MCP_ATTR_INFO "mcp.client_info"         /* JSON: initialize's params.clientInfo */
#define MCP_ATTR_LEVEL "mcp.log_level"          /* logging/setLevel's level: "warning" */
#define MCP_LEVELS 8 /* debug, info, notice, warning, error, critical, alert, emergency */
enum { MCP_LEVEL_DEBUG = 0, MCP_LEVEL_INFO = 1 };
const char *mcp_level_name(int level);
int mcp_level_parse(const char *name); /* 0..MCP_LEVELS-1, -1: not a level name */
/* After initialize created session sid: stores the negotiated version and the client's
 * capabilities and info. Returns 0 or the SHMB_E* of the version's store. */
int mcp_session_store_init(const char *sid, const struct mcp_ctx *cx, enum mcp_proto proto,
			   const cJSON *params);
enum mcp_proto mcp_session_proto(shmb_session *s);     /* MCP_PROTO_BAD: none stored */
int mcp_session_level(shmb_session *s);                /* -1: none set */
int mcp_session_set_level(shmb_session *s, int level); /* 0 or SHMB_E* */
/* 1 when a notifications/message of level may be sent to session s (no level set: all). */
int mcp_session_allows(shmb_session *s, int level);
/* 1 when the client declared capability ("sampling", "elicitation", "roots") in initialize. */
int mcp_session_client_has(shmb_session *s, const char *capability);
/* {pid, worker, protocolVersion, clientCapabilities, clientInfo, logLevel} as this worker reads
 * them from the segment (session_info tool). */
cJSON *mcp_session_describe(shmb_session *s);

/* stream.c */
enum MHD_Result stream_get(struct mcp_ctx *cx);
/* Reply to the request with a reader of `stream` after `after` in session s (ownership of s
 * passes to the reader, also on failure). sse: SSE with a priming event of id `after` (no ids at
 * all when ids is 0); else a JSON response made of the stream's result event, or of a JSON-RPC
 * error with id `id` (serialized) when the stream ends without one. */
enum MHD_Result stream_reply(struct mcp_ctx *cx, shmb_session *s, uint32_t stream, uint64_t after,
			     int sse, int ids, int end_on_result, int end_after_priming,
			     const char *id);
int64_t stream_publish_prime(shmb_session *s, uint32_t stream);
void streams_pump(void);           /* drain every reader's cursor, resume connections */
int64_t streams_tick(int64_t now); /* keepalives; returns the next due time */
void streams_end_all(void);        /* stop: end every stream, resume them */
int streams_count(void);

/* quota.c: counts shared by all workers (the table is mapped by the master before fork). */
int quota_init(int workers);
void quota_worker_start(int index); /* a (re)started worker: its predecessor's streams died */
void quota_lock(void);              /* around a count and a claim (jobs.c) */
void quota_unlock(void);
uint64_t quota_hash(const char *s);             /* never 0 */
uint64_t quota_owner(const struct mcp_ctx *cx); /* the client: principal, else address */
/* 429 with Retry-After and a JSON-RPC error for id (serialized, NULL: null). */
enum MHD_Result quota_reply(struct MHD_Connection *conn, const char *id, const char *what,
			    unsigned limit);
int quota_session_reserve(uint64_t owner); /* a slot, or -1: the client has its sessions */
void quota_session_commit(int slot, const char *sid); /* sid NULL: the create failed */
void quota_session_forget(const char *sid);           /* DELETE */
/* A stream slot of this worker, or -1 with *what and *limit set (a quota), or -1 with *what
 * NULL (this worker's slots are taken). */
int quota_stream_claim(uint64_t owner, uint64_t sid, const char **what, unsigned *limit);
void quota_stream_release(int slot);

/* tools.c */
cJSON *tools_list(void);
enum MHD_Result tools_call(struct mcp_ctx *cx, shmb_session *s, const char *id, cJSON *params);

/* content.c: resources, prompts, completion, and the tools returning other content than text */
int content_method(const char *method); /* 1: content_call answers it */
enum MHD_Result content_call(struct mcp_ctx *cx, const char *id, const char *method, cJSON *params,
			     shmb_session *s);
int content_is_tool(const char *name);
/* The content array of tool `name`'s result; *is_error set for a tool error. */
cJSON *content_tool(const char *name, cJSON *args, shmb_session *s, int *is_error);

/* jobs.c */
enum job_tool {
	JOB_COUNTDOWN = 1,
	JOB_PROGRESS,
	JOB_LOGGING,
	JOB_RECONNECT,
	JOB_LEVELS,
	JOB_ASK /* a server-to-client request (sampling, elicitation, roots): see jobs.c */
};
/* Server-to-client requests (JOB_ASK): the request's params (JSON) fit in this, and the client
 * has this long to answer by default (a tool's timeout_ms argument may say otherwise). */
#define MCP_ASK_PARAMS 2048
#define MCP_ASK_TIMEOUT_MS 60000
#define MCP_ASK_MAX_TIMEOUT_MS 600000
/* The id of the request is "s2c:<session id>:<the call's stream>" (a JSON string). */
#define MCP_ASK_ID_PREFIX "s2c:"
struct job_spec {
	enum job_tool tool;
	uint32_t n, delay_ms, final_ms;
	/* JOB_ASK: the method, its params (JSON text), which tool asks (the result's wording), how
	 * long the client has, and whether the request goes out on the standalone GET stream (the
	 * call was answered in JSON: its own stream carries no requests). */
	const char *method, *params, *asker;
	uint32_t timeout_ms;
	int on_standalone;
	const char *token; /* serialized progress token or NULL */
	const char *id;    /* serialized JSON-RPC id */
	int ephemeral;     /* stateless request: delete the session once done */
	uint64_t owner;    /* quota_owner() of the caller */
};
size_t jobs_table_bytes(int workers);
/* Start a job on session sid (open as s) writing to `stream`, after its priming event. Returns
 * its slot (>= 0), -1 (no free slot on this worker), or -2 with *what and *limit set (a quota is
 * reached). jobs_drop(slot) cancels it before it ran (its answer could not be made). */
int jobs_start(const struct job_spec *spec, shmb_session *s, const char *sid, const char *tenant,
	       const char *principal, uint32_t stream, uint64_t prime_id, const char **what,
	       unsigned *limit);
/* Cancel the live jobs of session sid (all of them when id is NULL, else the one whose serialized
 * JSON-RPC id is id), on whichever worker they run: they publish nothing more and leave the
 * quota at once; their slots are freed at the owner's next turn. s (may be NULL: the session
 * was deleted) gets an MCP_EV_END on each cancelled job's stream, which ends its readers.
 * Returns how many were cancelled. */
int jobs_cancel(const char *sid, const char *id, shmb_session *s);
void jobs_drop(int slot);
/* 1 when a live JOB_ASK of session sid writing to `stream` exists (a client's response to its
 * request may be published there, MCP_EV_REPLY, from any worker: the job's owner is subscribed
 * to the session and takes it at its next turn). */
int jobs_asking(const char *sid, uint32_t stream);
/* 1 when a live job of session sid writes to `stream`, on any worker of this shmb-mcpd. */
int jobs_running(const char *sid, uint32_t stream);
/* The session attribute MCP_ATTR_CALL<stream> holds the serialized JSON-RPC id of the call
 * whose job writes to that stream, while it runs (jobs.c); a stream resumed with no job left to
 * finish it answers that id with MCP_LOST_CALL_CODE (stream.c). */
#define MCP_ATTR_CALL "mcpd.call."
#define MCP_LOST_CALL_CODE -32603
/* The reader of a call's stream (stream.c) ended: a stateless call's job no longer lingers for
 * it (its private session is deleted at once after the result). */
void jobs_reader_gone(const char *sid, uint32_t stream);
int64_t jobs_tick(int64_t now); /* run due steps; returns the next due time (INT64_MAX: none) */
void jobs_fini(void);

#endif
