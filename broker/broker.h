/* broker.h - shmbrokerd's process-local state and the functions its files share.
 *
 * The broker is one thread around one epoll loop (loop.c). Its files, one job each:
 *   main.c      start-up order, daemonizing, the one-broker-per-name lock, clean stop
 *   config.c    built-in defaults, the JSON config file and command-line flags
 *   log.c       one line per notable event on stderr or syslog, levels, rate limit
 *   segment.c   building a new segment or validating and adopting an existing one
 *   index.c     the session index writer: free list, link, unlink/retire, subscriber wakeups
 *   reclaim.c   the grace-period reclaimer and the TTL sweeper
 *   workers.c   worker admission, death and settling what a worker held
 *   gaps.c      a dead publisher's uncommitted claims turned into gap records
 *   attrs.c     a dead attribute writer's cells freed; a recycled record's attributes zeroed
 *   control.c   the control socket: accept, peer credentials, receive, reply
 *   access.c    the socket's group, ACL and mode, the segment name's mode (docs/security.md)
 *   requests.c  the control messages of docs/protocol.md (hello, create, delete, ping, reload)
 *   reload.c    SIGHUP and reload: the configuration read again, what can change applied
 *   restore.c   restore: a session (of a dump, or another node's image) brought back with its
 *               ids, events and attributes
 *   loop.c      epoll over the socket, connections, pidfds, a signalfd and a timerfd
 *   notify.c    readiness, stopping and watchdog messages to systemd (NOTIFY_SOCKET)
 *
 * Nothing here lives in shared memory: struct brk is the broker's private bookkeeping (free
 * list, reclamation queue, pidfds, connections). What other processes read is in the segment
 * (common/layout.h), and the broker is its only writer of index links, states and generations. */
#ifndef SHMB_BROKER_H
#define SHMB_BROKER_H

#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#include "seg.h"

struct ledger_claim; /* common/ledger.h */

#define BRK_MAX_GIDS 64
#define BRK_SEGMENT_DIR_MAX 160   /* segment_dir, with its terminating NUL */
#define BRK_MAX_CONNS 1024        /* connections served at once (lowered if RLIMIT_NOFILE is low) */
#define BRK_CLOSING_SLOTS 16      /* extra connection entries for refused peers awaiting close */
#define BRK_CLOSING_MS 1000       /* a refused peer is closed after this at the latest */
#define BRK_TICK_FAST_MS 10       /* timer period while records await reclamation */
#define BRK_TICK_SLOW_MS 100      /* otherwise: heartbeat and sweeper checks */
#define BRK_MSGS_PER_WAKE 16      /* messages read from one connection per loop turn (fairness) */
#define BRK_STALL_SCAN_MS 100     /* reader slots checked for long sections (reclaim.c) */
#define BRK_OWNERLESS_SCAN_MS 100 /* live rings checked for ownerless claims (gaps.c) */
#define BRK_OWNERLESS_BUDGET 16384  /* descriptors read per ownerless scan */
#define BRK_OWNERLESS_RECS 256      /* sessions per ownerless scan at most */
#define BRK_OWNERLESS_CONFIRM_MS 20 /* a suspect is read again this much later */
#define BRK_OWNERLESS_CANDIDATES 64 /* suspects awaiting their second sighting */
#define BRK_IDLE_MS 5000 /* a connection without a worker slot, silent this long, is closed */

/* Configuration fields a flag or the config file may set explicitly (brk_config.set). */
enum brk_field {
	BRK_F_NAME = 0,
	BRK_F_MAX_SESSIONS,
	BRK_F_MAX_WORKERS,
	BRK_F_READERS_PER_WORKER,
	BRK_F_RING_EVENTS,
	BRK_F_RING_BYTES,
	BRK_F_MAX_EVENT_BYTES,
	BRK_F_MAX_TENANT_LEN,
	BRK_F_MAX_PRINCIPAL_LEN,
	BRK_F_SWEEP_INTERVAL_MS,
	BRK_F_INACTIVITY_TTL_MS,
	BRK_F_ABSOLUTE_TTL_MS,
	BRK_F_ALLOWED_GIDS,
	BRK_F_SEGMENT_MODE,
	BRK_F_SOCKET_MODE,
	BRK_F_UNLINK_ON_EXIT,
	BRK_F_ATTR_BYTES,
	BRK_F_ATTR_KEYS,
	BRK_F_MAX_INACTIVITY_TTL_MS,
	BRK_F_MAX_ABSOLUTE_TTL_MS,
	BRK_F_SEGMENT_DIR,
	BRK_F_LOG,
	BRK_F_LOG_LEVEL,
	BRK_F_LOG_RATE_LIMIT,
	BRK_F_LOG_RATE_INTERVAL_MS,
	BRK_F_NODE_ID,
	BRK_F_COUNT
};

struct brk_config {
	char name[72];
	struct shmb_seg_config seg; /* n_buckets derived */
	uint32_t allowed_gids[BRK_MAX_GIDS];
	uint32_t n_gids;
	uint32_t segment_mode; /* the segment name's mode (access.c), default 0600 */
	uint32_t socket_mode;  /* owner and allowed groups' bits (access.c), default 0660 */
	char segment_dir[BRK_SEGMENT_DIR_MAX]; /* "": shm_open in /dev/shm; else an absolute path
						* of a tmpfs directory (huge pages: segment.c) */
	int unlink_on_exit;
	int log_target;                /* BRK_LOG_STDERR or BRK_LOG_SYSLOG */
	int log_level;                 /* BRK_LOG_*: lines above it are dropped */
	uint32_t log_rate_limit;       /* lines per call site per interval, 0: no limit */
	uint32_t log_rate_interval_ms; /* 1..3600000 */
	int foreground;
	int ready_fd;  /* -1: none */
	uint32_t set;  /* bit (1 << brk_field): given by the file or a flag */
	uint32_t flag; /* bit (1 << brk_field): given by a flag */
};

/* One control connection. */
struct brk_conn {
	int fd; /* -1: unused */
	pid_t pid;
	uid_t uid;
	gid_t gid;
	int32_t worker;     /* worker slot admitted on this connection (hello), -1 none */
	int detaching;      /* said "detach": its EOF is a clean release even if it exits at once */
	int64_t closing_at; /* refused: monotonic ms to close it by; 0 for a served connection */
	int64_t last_msg_ms; /* monotonic ms of accept or of its last message (idle timeout) */
};

/* The broker's private view of one worker slot. */
struct brk_wslot {
	int pidfd;         /* -1: not watched (free slot, or pidfds unavailable: polled) */
	int32_t conn;      /* connection that said hello, -1 none (e.g. kept across a restart) */
	int32_t displaced; /* the connection the latest resume took the slot over from, -1 none */
	pid_t pid;         /* private copies: the segment's fields may be scribbled on; 0: free */
	uint64_t starttime;
	uint32_t claims; /* DEAD slot: ledger entries still to settle into gaps (gaps.c) */
};

/* Reclaimer: a reader slot in a section scoped to one record (reclaim.c). */
struct brk_scoped {
	uint64_t ctr;
	uint32_t pin;
};

/* Stall detection: first sighting of a reader slot in an older grace period (reclaim.c). */
struct brk_stall {
	uint64_t ctr; /* 0: not in an older grace period when last seen */
	int64_t since_ms;
};

/* A descriptor seen busy with no owner, or a claimed id seen unwritten with no owner, awaiting
 * its second sighting before the broker writes the gap (gaps.c). */
struct brk_ownerless {
	uint32_t used;
	uint32_t idx, gen, slot;
	uint64_t seq; /* the descriptor's seq when seen */
	uint64_t id;  /* the id to settle: the busy id, or the unwritten one */
	int64_t seen_mono;
};

/* A taken crash-ledger entry of a LIVE or DEAD worker, copied for the ownerless scan. */
struct brk {
	struct brk_config cfg;
	pid_t pid;
	uid_t euid;
	char shm_name[96];
	char seg_path
		[256]; /* the segment's file: /dev/shm/shmb.<name> or <segment_dir>/shmb.<name> */
	char path_file[256]; /* <runtime dir>/<name>.segment: seg_path for shmctl (segment.c) */
	char sock_path[108];
	char lock_path[256];
	int lock_fd;
	int seg_fd; /* O_RDWR, handed to workers */
	struct shmb_seg seg;
	int created; /* 1: this start built the segment; 0: adopted */

	int epfd, listen_fd, sig_fd, timer_fd;
	int timer_period_ms;
	int *evfds; /* [max_workers], eventfd of worker slot w */
	struct brk_wslot *wslots;
	struct brk_conn *conns;
	uint32_t max_conns, n_conns; /* served connections (conns has BRK_CLOSING_SLOTS more) */
	uint32_t n_closing;          /* refused connections awaiting close */
	int accept_paused; /* accept failed for want of fds: listener unwatched until a tick */
	char *rxbuf;       /* SHMB_CTL_MAX_MSG + 1 */
	int req_fd; /* the fd that came with the request being handled (restore.c), -1 none */

	uint32_t *free_stack; /* FREE record indices, popped from the end */
	uint32_t n_free;
	uint32_t *pending; /* RETIRED record indices awaiting a grace period */
	uint32_t n_pending;
	uint32_t reclaim_skip, reclaim_backoff; /* ticks to skip while readers hold records up */
	uint32_t *live_list; /* LIVE record indices, in no order: what the sweeper scans */
	uint32_t *live_pos;  /* [idx]: position in live_list + 1, 0 when not LIVE */
	uint32_t live;       /* entries in live_list */
	uint32_t n_claims; /* DEAD slots' ledger entries not settled yet (sum of wslots[].claims) */

	struct brk_scoped *scoped; /* [max_workers * readers_per_worker], reclaim scans */
	struct brk_stall *stall;   /* [max_workers * readers_per_worker] */
	int64_t next_stall_mono;
	struct brk_ownerless ownerless[BRK_OWNERLESS_CANDIDATES];
	uint32_t n_ownerless;     /* candidates in use */
	uint32_t ownerless_pos;   /* next position in live_list to scan */
	uint64_t ownerless_visit; /* scans so far */
	int64_t next_ownerless_mono;
	uint64_t *ownerless_seq;               /* scratch: descriptor seqs of one scan */
	struct ledger_claim *ownerless_claims; /* scratch: [max_workers * readers_per_worker] */

	int wake_all_pending; /* a refresh asked for brk_workers_wake_all: done after the batch */
	int64_t next_sweep_mono;
	int64_t full_sweep_mono; /* last sweep run by a create that found no free record */
	volatile int stop;
	int argc; /* the command line, parsed again on reload */
	char **argv;
};

/* log.c: `<RFC 3339 UTC ms> <level> shmbrokerd[pid] name: message` on stderr, one write per
 * line, or the message through syslog(3); lines below the level are dropped, repeated lines
 * (same call site) rate limited. The broker is one thread: none of this is thread-safe. */
enum { BRK_LOG_ERROR = 0, BRK_LOG_WARNING, BRK_LOG_INFO, BRK_LOG_DEBUG };
enum { BRK_LOG_STDERR = 0, BRK_LOG_SYSLOG };
void brk_log_init(const char *name);
/* Target, level and rate limit (rate_burst lines per call site per rate_interval_ms; burst 0:
 * no limit). Called at start and on reload. */
void brk_log_configure(int target, int level, uint32_t rate_burst, uint32_t rate_interval_ms);
int brk_log_level(void);
/* "error", "warning", "info", "debug" (also "warn", "err") to BRK_LOG_*, or -1. */
int brk_log_level_parse(const char *s);
const char *brk_log_level_name(int level);
/* "2026-12-05T00:56:51.123Z": the wall clock now, RFC 3339 UTC with milliseconds. */
void brk_log_timestamp(char *buf, size_t len);
/* Writes the "suppressed K lines" summaries whose interval is over (on every tick). */
void brk_log_flush(void);
void brk_logl(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define brk_log(...) brk_logl(BRK_LOG_INFO, __VA_ARGS__)
#define brk_warn(...) brk_logl(BRK_LOG_WARNING, __VA_ARGS__)
#define brk_err(...) brk_logl(BRK_LOG_ERROR, __VA_ARGS__)
#define brk_debug(...) brk_logl(BRK_LOG_DEBUG, __VA_ARGS__)
/* Start-up failures: `shmbrokerd: message` on stderr before brk_log_init, an error line after
 * it (and on stderr too when the log goes to syslog). */
void brk_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The message of the last brk_fatal (a reload's refusal, for its answer); "" if none. */
const char *brk_log_last_fatal(void);

/* notify.c: systemd's readiness protocol (sd_notify(3)) on $NOTIFY_SOCKET, written by hand;
 * nothing happens without it. init reads the environment (and WATCHDOG_USEC); brk_notify sends
 * one message ("READY=1\nSTATUS=..."); brk_notify_watchdog, called on every tick, sends
 * WATCHDOG=1 at half the watchdog interval. */
void brk_notify_init(void);
void brk_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void brk_notify_watchdog(void);
void brk_notify_close(void);

/* config.c. Returns 0 to run, -1 when done (help/version printed: exit 0), or 2 after printing
 * a usage or configuration error (exit 2). reload = 1: the same command line again for a reload
 * (--ready-fd, closed by then, is not checked). */
int brk_config_parse(int argc, char **argv, struct brk_config *cfg, int reload);

/* reload.c: SIGHUP and the "reload" request. Parses the command line kept at start again (flags
 * are kept, the config file is re-read) and applies what can change without a new segment: TTL
 * defaults and maxima, the sweep period, log settings, allowed_gids and socket_mode (the socket
 * file's access is set again; connections already admitted stay), unlink_on_exit. Fields that
 * size or place the segment are named in the log and in the answer (added to `answer` when not
 * NULL: "applied" and "not_applied" arrays). Returns 0, or -1 when the configuration is refused
 * (nothing changed; why holds the reason). */
int brk_reload(struct brk *b, cJSON *answer, char *why, size_t whylen);

/* segment.c. Create or adopt /shmb.<name>; fills b->seg, b->seg_fd, the free list and the
 * reclamation queue, and marks the header RUNNING. Returns 0 or 1 after printing why (exit 1). */
int brk_segment_open(struct brk *b);
/* Refresh the header heartbeat (wall clock). */
void brk_heartbeat(struct brk *b);
/* On stop: broker_state STOPPED; unlink the segment if configured; unmap. */
void brk_segment_close(struct brk *b);
/* Counter helpers (broker-written statistics). */
void brk_ctr_add(struct brk *b, uint32_t ctr, uint64_t v);
void brk_ctr_set(struct brk *b, uint32_t ctr, uint64_t v);

/* index.c: the one writer of bucket heads, record links, states and generations. */
int brk_index_init(struct brk *b); /* allocates the free stack, live list, reclamation queue */
void brk_index_push_free(struct brk *b, uint32_t idx);
/* The live list (process-local): the sweeper and worker settling visit LIVE records only. */
void brk_live_add(struct brk *b, uint32_t idx);
void brk_live_del(struct brk *b, uint32_t idx);
/* Creates a session; on success *idx_out is LIVE. Returns 0, SHMB_EFULL, SHMB_EIO,
 * SHMB_ECORRUPT (its bucket chain is damaged). */
int brk_index_create(struct brk *b, const char *tenant, size_t tenant_len, const char *principal,
		     size_t principal_len, int has_principal, uint64_t inactivity_ttl_ms,
		     uint64_t absolute_ttl_ms, uint8_t sid_out[SHMB_SID_BYTES], uint32_t *idx_out);
/* What a new record holds (brk_index_link). */
struct brk_new_session {
	const char *tenant, *principal;
	size_t tenant_len, principal_len;
	int has_principal;
	int64_t created_at_ms, last_accessed_at_ms;
	uint64_t inactivity_ttl_ms, absolute_ttl_ms;
	uint64_t next_id; /* 0 for a create; a restore's last event id */
};
/* Fills record idx (LINKING, popped from the free list, unreachable) with sid and ns, links it
 * and turns it LIVE. Returns 0 or SHMB_ECORRUPT. */
int brk_index_link(struct brk *b, uint32_t idx, const uint8_t sid[SHMB_SID_BYTES],
		   const struct brk_new_session *ns);
/* restore.c: the "restore" request (docs/protocol.md). */
void brk_restore_request(struct brk *b, uint32_t conn, const cJSON *req);
/* Unlinks a LIVE (or UNLINKING, at adoption) record, marks its grace period, retires it with
 * `reason`, wakes its subscribers and queues it for reclamation. */
void brk_index_retire(struct brk *b, uint32_t idx, uint32_t reason);
/* Removes record idx from its bucket chain if it is there; returns 1 if it was, 0 if not,
 * -1 if the chain is damaged. */
int brk_index_unlink(struct brk *b, uint32_t idx);
/* Writes 1 to the eventfd of every worker whose bit is set in rec's subscribers. */
void brk_wake_subscribers(struct brk *b, struct shmb_session_rec *rec);

/* reclaim.c */
void brk_reclaim_queue(struct brk *b, uint32_t idx); /* idx is RETIRED with retire_gp set */
/* Recycles what every reader has passed (one scan, never waits); now = 1 ignores the back-off. */
void brk_reclaim_run(struct brk *b, int now);
void brk_sweep_run(struct brk *b); /* retire expired LIVE records */
/* Every BRK_STALL_SCAN_MS: publishes in each worker's stall line the oldest of its read-side
 * sections open for SHMB_STALL_MS or more (shmctl workers). */
void brk_stall_run(struct brk *b);

/* workers.c */
int brk_workers_init(struct brk *b); /* eventfds and the private slot table */
/* Adoption: keep slots of live workers (watched by pidfd), settle the others. */
void brk_workers_adopt(struct brk *b, uint32_t *kept, uint32_t *settled);
/* hello: admits the connection's peer. With has_resume, only into resume_slot, which the process
 * must still hold (same pid, start time and resume_gen, LIVE): the new connection takes the slot
 * over from an older one of the same process, which is unbound, not settled. Without it, a new
 * slot -- at most one per process: a process whose slot is bound to another open connection is
 * refused (SHMB_ENOWORKER); one whose slot has no connection left released it (its client is gone,
 * the library attaches once per process and name), and that slot is settled first. Returns the
 * slot (>= 0) or a SHMB_E* code with a message in why. A new slot stays FREE in the segment
 * until brk_worker_admitted(), called once the reply is sent. */
int brk_worker_admit(struct brk *b, int conn, int has_resume, uint32_t resume_slot,
		     uint32_t resume_gen, int *resumed, char *why, size_t whylen);
void brk_worker_admitted(struct brk *b, uint32_t w);
/* A resume's reply could not be sent (its client gave up on it): the slot goes back to the
 * connection that resume took it over from, if that one is still open (the client's newer
 * attempt, read first), instead of staying unbound. */
void brk_worker_resume_failed(struct brk *b, uint32_t w);

/* gaps.c: settles the ledger entries of DEAD slots with wslots[w].claims != 0 into gap records
 * (what it can now; the rest on later ticks); clears each entry once settled, and turns a slot
 * FREE once all its entries are clear. */
void brk_gaps_run(struct brk *b);
/* Every BRK_OWNERLESS_SCAN_MS: scans LIVE sessions' rings (BRK_OWNERLESS_BUDGET descriptors at a
 * time, round robin) for a descriptor busy with an id no live publisher's ledger claims, or a
 * claimed id left unwritten with no claimer (an abandoned publish); seen so again 20 ms later, it becomes
 * a gap record, as a dead publisher's claim does. */
void brk_gaps_ownerless_run(struct brk *b);
/* attrs.c: frees the cells a dead writer's SHMB_LEDGER_ATTR entry (record idx, generation gen,
 * id word) names and nobody else holds; *freed counts them. Returns 1 when settled (the entry may
 * be cleared), 0 when a live writer's ledger names some of them: try again on a later tick. */
int brk_attr_settle(struct brk *b, uint32_t idx, uint32_t gen, uint64_t id, uint32_t *freed);
/* Zeroes record idx's attribute area (recycling, after the grace period). */
void brk_attr_clear(struct brk *b, uint32_t idx);
/* Settles slot w: died = 1 when its process is gone, 0 when it detached. Closes its
 * connection if still open. The slot turns FREE at once, or stays DEAD (not reusable) with its
 * uncommitted claims in its ledger until gaps.c has settled them. */
void brk_worker_settle(struct brk *b, uint32_t w, int died);
void brk_worker_pidfd_event(struct brk *b, uint32_t w);
void brk_workers_poll(struct brk *b); /* slots without a pidfd: proc_alive on every tick */
/* Worker w's connection conn closed or failed. The slot is settled only when the process is
 * dead (or exiting) or said "detach" on it; a running process's slot is merely unbound (kept,
 * watched by its pidfd, resumable): a failed reply or an EOF is never taken as a detach. */
void brk_worker_conn_closed(struct brk *b, uint32_t w, int conn, int detaching);
/* "detach" received on a connection without a worker slot, naming slot w at gen: settles it
 * as released when the connection's process holds it. Returns 1 if it did. */
int brk_worker_detach_by_id(struct brk *b, uint32_t conn, uint32_t w, uint32_t gen);
void brk_workers_close(struct brk *b);
/* Once serving after an adoption: writes every kept worker's eventfd once. While no broker was
 * serving, a publisher could not fetch a newer eventfd set (client/attach.c) and woke a process
 * attached to a broker it never talked to through a stale fd; this makes that wakeup good. */
void brk_workers_wake_all(struct brk *b);

/* control.c */
int brk_control_listen(struct brk *b); /* returns 0 or 1 after printing why */

/* access.c. Gives the bound socket b->sock_path the owner, group/ACL and mode that admit exactly
 * the broker's uid, root and allowed_gids (falling back to "everyone, SO_PEERCRED decides" only
 * where the file system has no ACLs, logged). Returns 0 or 1 after printing why. */
int brk_access_socket(struct brk *b);
/* The mode the segment's name gets: owner read-write, plus group read if segment_mode has it. */
uint32_t brk_access_segment_mode(const struct brk *b);
void brk_control_accept(struct brk *b);
void brk_control_resume_accept(struct brk *b); /* on a tick, after accept was paused */
/* On a tick: close refused peers past due, and connections without a worker slot that have
 * been silent for BRK_IDLE_MS (so idle connections cannot hold every entry and lock attaches
 * out). */
void brk_control_expire(struct brk *b);
void brk_control_readable(struct brk *b, uint32_t conn, uint32_t events);
/* Sends a reply; drops the connection if it cannot be sent without blocking. Returns 0 or -1
 * (connection dropped). */
int brk_control_reply(struct brk *b, uint32_t conn, const cJSON *msg, const int *fds, int nfds);
int brk_control_error(struct brk *b, uint32_t conn, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Closes a connection. `settle` = 1: the peer is gone or failed, and its worker slot (if any)
 * goes to brk_worker_conn_closed, which settles it only when the process is dead or detached;
 * 0: the slot is just unbound (kept, resumable). */
void brk_control_drop(struct brk *b, uint32_t conn, int settle);
void brk_control_close(struct brk *b);

/* requests.c: handles one received message on conn (msg NUL-terminated, len bytes). */
void brk_request(struct brk *b, uint32_t conn, const char *msg, size_t len);

/* loop.c */
int brk_loop_init(struct brk *b);
/* Arms (on = 1) or disarms an interval timer whose SIGALRM interrupts an eventfd write that
 * blocks (loop.c says why): call with 1 before writing or reading eventfds of the worker set
 * and with 0 after, making no other blocking call in between. Returns 0 or -1 (errno). */
int brk_evfd_guard(int on);
/* epoll registration; `kind` is one of BRK_EV_*. */
enum { BRK_EV_LISTEN = 1, BRK_EV_SIGNAL, BRK_EV_TIMER, BRK_EV_CONN, BRK_EV_PIDFD };
int brk_epoll_add(struct brk *b, int fd, uint32_t kind, uint32_t idx, uint32_t events);
void brk_epoll_del(struct brk *b, int fd);
void brk_timer_update(struct brk *b); /* fast while reclamation is pending */
int brk_loop_run(struct brk *b);

#endif
