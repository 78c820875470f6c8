/* mirror_redis.h - the Redis side of multi-host shmbroker, shared by shmb-mirror (which writes
 * sessions to Redis) and shmb-mcpd (which claims a dead node's session and restores it). One
 * static library (shmb_mirror_redis, built when hiredis is found), docs/multi-host.md has the
 * schema and the failure behaviour. Not thread-safe: one struct mr_conn per thread, opened in the
 * process that uses it (a prefork server: in each worker, after fork()).
 *
 * The schema, prefix P (default "shmb:"); {SID} is a Redis Cluster hash tag, so one session's
 * keys share a slot; values are binary-safe:
 *   P s:{SID}  hash: tenant, principal (absent: none), created_at_ms, last_accessed_at_ms,
 *              inactivity_ttl_ms, absolute_ttl_ms, origin (node tag of the sid), owner (node id
 *              serving it now), epoch (bumped by every claim), mirrored_id (last event id the
 *              stream holds, written with the XADDs), claimed (the session's next_id when the
 *              mirror last looked), lost ("a-b,c-d": ids the mirror itself lost to a ring
 *              overrun), state ("live" | "deleted" | "expired")
 *   P e:{SID}  stream, entry id "<event id>-0", fields s, k, t, d (or g "1" for a gap, no d)
 *   P a:{SID}  hash, attribute key -> value
 *   P n:<node> hash, heartbeat_ms, lag_ms, ... of a node's mirror (PEXPIRE a few seconds)
 *
 * The API (all return 0 or a positive count on success, a negative MR_E* code on failure;
 * m->err then says why in words):
 *
 *   int  mr_conn_init(struct mr_conn *m, const char *hostport, const char *prefix,
 *                     int connect_timeout_ms, int command_timeout_ms);
 *        Parses "HOST:PORT" ("[v6]:PORT" too; NULL: 127.0.0.1:6379) and the prefix (NULL:
 *        "shmb:"); timeouts <= 0 take MR_CONNECT_TIMEOUT_MS / MR_COMMAND_TIMEOUT_MS. Does not
 *        connect. MR_EINVAL on a bad address or an over-long prefix.
 *   int  mr_conn_auth(struct mr_conn *m, const char *user, const char *password_file,
 *                     const char *password_env);
 *        After mr_conn_init: authenticate every connection (AUTH [user] password, Redis 6 ACL
 *        users or requirepass's default user when user is NULL). The password comes from the
 *        file password_file (its first line; read again on every connect, so a rotated
 *        password is picked up) or, when that is NULL, from the environment variable named
 *        password_env (read on every connect too); never from a command line (ps shows it).
 *        Checked now: MR_EINVAL (m->err says why) when the file cannot be read, the variable
 *        is unset, the password is empty or over 511 bytes, or both or neither are given.
 *   int  mr_conn_ready(struct mr_conn *m);
 *        Connected (0), or connects now, sets the command timeout, authenticates (when
 *        mr_conn_auth was called) and loads both scripts (SCRIPT LOAD); while a failed
 *        attempt's backoff (MR_BACKOFF_MIN_MS doubling to MR_BACKOFF_MAX_MS) runs it returns
 *        MR_EDOWN at once without trying. MR_EAUTH (with the same backoff) when Redis refused
 *        the credentials or wants some: m->err quotes Redis's WRONGPASS / NOAUTH / NOPERM
 *        reply. Call it before every use; a connection that failed (mr_conn_drop) is reopened
 *        here.
 *   void mr_conn_drop(struct mr_conn *m);     closes after an I/O error or timeout; counts it
 *   void mr_conn_close(struct mr_conn *m);    closes, frees; m may be reused with mr_conn_init
 *   int  mr_key(const struct mr_conn *m, char kind, const char *sid, char *buf, size_t len);
 *        kind 's', 'e' or 'a': "P s:{SID}" into buf; MR_EINVAL when it does not fit.
 *   int  mr_node_key(const struct mr_conn *m, int node, char *buf, size_t len);  "P n:<node>"
 *   redisReply *mr_eval(struct mr_conn *m, int script, int nkeys, int argc,
 *                       const char **argv, const size_t *lens);
 *        EVALSHA of MR_SCRIPT_WRITE or MR_SCRIPT_CLAIM (argv: keys then args), reloading the
 *        script and retrying once on NOSCRIPT (a Redis restarted or SCRIPT FLUSHed). Returns
 *        the reply (freeReplyObject it), or NULL (m->err; the connection is dropped on I/O
 *        errors). For pipelining, mr_append_eval + mr_get_reply do the same in two halves (a
 *        NOSCRIPT reply there reloads the scripts and comes back as MR_ENOSCRIPT: resend).
 *   int  mr_owner(struct mr_conn *m, const char *sid, int *owner, int *live);
 *        Who owns SID in Redis: 1 (record found; *owner = node id, 0 when the field is
 *        absent; *live = state is "live"), 0 (no record), MR_EDOWN, MR_EAUTH.
 *   int  mr_failover(struct mr_conn *m, const char *sid, int me, uint32_t ring_events,
 *                    uint64_t client_last_id, uint64_t margin, struct mr_failover *out);
 *        Claims SID for node `me` (one atomic script: only a live record; owner = me, epoch + 1),
 *        then reads the record, the newest ring_events stream entries and the attributes into
 *        out->img, ready for shmb_session_restore(). out->img.last_event_id =
 *        max(mirrored_id, claimed, client_last_id) + margin (margin 0: MR_ID_MARGIN), so ids
 *        the dead node handed out during the mirror's lag are never reused. Ids in
 *        out->lost_from..out->lost_to (empty when from > to) and in the record's own `lost`
 *        ranges have no event: mr_lost_after() tells a client whether it missed any. Returns
 *        0 (claimed; free with mr_failover_free), MR_ENOREC (no record), MR_ENOTLIVE (deleted
 *        or expired: nothing claimed), MR_EDOWN, MR_EAUTH, MR_EPROTO (an unexpected reply, or a
 *        malformed record or stream: the claim may have been made, nothing is restorable),
 *        MR_ENOMEM. On failure *out needs no freeing.
 *   void mr_failover_free(struct mr_failover *f);
 *   uint64_t mr_lost_after(const struct mr_failover *f, uint64_t after_id);
 *        How many ids after after_id (a client's Last-Event-ID) fall in the lost ranges: > 0
 *        means that client must get the explicit overrun ("lagged") notice with this count.
 *   const char *mr_strerror(int code);
 *
 * The write script (MR_SCRIPT_WRITE, used by shmb-mirror; argument layout at MR_W_* below) is
 * fenced: it refuses (returns {-1, owner}) when the record names another owner, and creates
 * the record (owner = me) only when asked to and the key does not exist. XADDs carry the
 * explicit id "<id>-0" and skip ids at or below mirrored_id, so replaying a batch never
 * duplicates an event; mirrored_id is written in the same script. */
#ifndef SHMB_MIRROR_REDIS_H
#define SHMB_MIRROR_REDIS_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "shmb.h"

#define MR_CONNECT_TIMEOUT_MS 1000
#define MR_COMMAND_TIMEOUT_MS 2000
#define MR_BACKOFF_MIN_MS 100
#define MR_BACKOFF_MAX_MS 5000
#define MR_ID_MARGIN 64   /* ids skipped after the last known one on a failover */
#define MR_GRACE_MS 60000 /* session keys outlive the session's own expiry by this much */
#define MR_PREFIX_MAX 64
#define MR_KEY_MAX (MR_PREFIX_MAX + SHMB_SID_LEN + 8)

enum {
	MR_EINVAL = -1,    /* bad argument */
	MR_EDOWN = -2,     /* Redis unreachable, timed out, or in backoff */
	MR_ENOREC = -3,    /* no record for the session */
	MR_ENOTLIVE = -4,  /* the record says deleted or expired */
	MR_EPROTO = -5,    /* an unexpected reply or a malformed record */
	MR_ENOMEM = -6,    /* out of memory */
	MR_ENOSCRIPT = -7, /* a pipelined EVALSHA met NOSCRIPT: the scripts are reloaded, resend */
	MR_ENOTOWNER = -8, /* the write script refused: another node owns the session */
	MR_EAUTH = -9,     /* Redis refused the credentials (WRONGPASS), wants some (NOAUTH) or
			    * denies a command the mirror needs (NOPERM) */
};

enum { MR_SCRIPT_WRITE = 0, MR_SCRIPT_CLAIM = 1, MR_SCRIPT_COUNT };

/* The write script: KEYS s, e, a; then these arguments, then nfields pairs (hash fields),
 * nevents sextets (id, stream, kind, ts_ms, gap "0"/"1", data), nset pairs (attribute key,
 * value), ndel attribute keys. Reply {status, owner, mirrored_id}: status 1 written, -1 another
 * owner (nothing written), -2 no record and create was "0" (nothing written: Redis lost it). */
enum {
	MR_W_ME = 0,       /* this node's id, decimal */
	MR_W_CREATE,       /* "1": create the record (owner = me) when the key does not exist;
			    * "2": the same, and replace the stream, attributes and lost ranges */
	MR_W_EXPIRE_AT,    /* PEXPIREAT for all three keys; "0": PERSIST; "-1": PEXPIRE grace */
	MR_W_MAXLEN,       /* XADD MAXLEN ~ */
	MR_W_CLAIMED,      /* the session's next_id; claimed = max(claimed, this) */
	MR_W_LOST,         /* "a-b" appended to the lost field, "" none */
	MR_W_STATE,        /* "live" / "deleted" / "expired", "" unchanged */
	MR_W_NFIELDS,      /* record fields that follow */
	MR_W_NEVENTS,      /* events that follow */
	MR_W_NSET,         /* attributes set */
	MR_W_NDEL,         /* attributes deleted */
	MR_W_ATTR_REPLACE, /* "1": the attributes hash is replaced by the nset pairs */
	MR_W_GRACE,        /* ms for MR_W_EXPIRE_AT "-1" */
	MR_W_EXPIRE_ALL,   /* "1": the expiry on all three keys; "0": on the keys written */
	MR_W_FIXED         /* number of fixed arguments */
};

struct mr_conn {
	redisContext *ctx; /* NULL while disconnected */
	char host[128];
	int port;
	char prefix[MR_PREFIX_MAX + 1];
	int connect_timeout_ms, command_timeout_ms;
	char sha[MR_SCRIPT_COUNT][41];
	int scripts_stale;   /* a reply said NOSCRIPT: mr_conn_ready reloads them */
	int64_t next_try_ms; /* monotonic: no reconnect before */
	int backoff_ms;
	uint64_t connects, drops, errors; /* successful connects, dropped connections, errors */
	uint64_t auth_failures;           /* connects refused for authentication */
	int auth_refused;                 /* the last connect was: MR_EAUTH until one succeeds */
	/* When set, the connection's fd is stored here while open (-1 otherwise), before any
	 * command is sent on it: a signal handler may shutdown(2) it to cut a blocked command
	 * short (hiredis retries a read interrupted by a signal until the command timeout). */
	volatile sig_atomic_t *watch_fd;
	/* Credentials (mr_conn_auth): the password is read again on every connect, from the file
	 * or the environment variable named, never kept in memory between connects. */
	char user[128];
	char pw_file[256];
	char pw_env[128];
	char err[512];
};

struct mr_failover {
	shmb_session_image img; /* for shmb_session_restore(); points into the storage below */
	uint64_t mirrored_id;   /* last event id the stream holds */
	uint64_t claimed;       /* ids the dead node had handed out when its mirror last looked */
	uint64_t epoch;         /* after this claim */
	int prev_owner;         /* the owner before this claim (0: none) */
	uint64_t lost_from, lost_to; /* ids with no event: mirrored_id + 1 .. img.last_event_id */
	char *lost;                  /* the record's own lost ranges ("a-b,c-d"), "" when none */
	/* storage, freed by mr_failover_free */
	redisReply *rec, *events, *attrs;
	shmb_image_event *ev;
	shmb_image_attr *at;
	char *strings;
};

int mr_conn_init(struct mr_conn *m, const char *hostport, const char *prefix,
		 int connect_timeout_ms, int command_timeout_ms);
int mr_conn_auth(struct mr_conn *m, const char *user, const char *password_file,
		 const char *password_env);
int mr_conn_ready(struct mr_conn *m);
void mr_conn_drop(struct mr_conn *m);
void mr_conn_close(struct mr_conn *m);
int mr_key(const struct mr_conn *m, char kind, const char *sid, char *buf, size_t len);
int mr_node_key(const struct mr_conn *m, int node, char *buf, size_t len);
redisReply *mr_eval(struct mr_conn *m, int script, int nkeys, int argc, const char **argv,
		    const size_t *lens);
int mr_append_eval(struct mr_conn *m, int script, int nkeys, int argc, const char **argv,
		   const size_t *lens);
int mr_get_reply(struct mr_conn *m, redisReply **out);
int mr_owner(struct mr_conn *m, const char *sid, int *owner, int *live);
int mr_failover(struct mr_conn *m, const char *sid, int me, uint32_t ring_events,
		uint64_t client_last_id, uint64_t margin, struct mr_failover *out);
void mr_failover_free(struct mr_failover *f);
uint64_t mr_lost_after(const struct mr_failover *f, uint64_t after_id);
const char *mr_strerror(int code);

/* Monotonic and wall-clock ms (used by both programs). */
int64_t mr_mono_ms(void);
int64_t mr_wall_ms(void);

#endif
