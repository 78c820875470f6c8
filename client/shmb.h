/* shmb.h - public API of libshmb, the shmbroker client library.
 *
 * A prefork web server's workers share MCP sessions and their event streams through one POSIX
 * shared-memory segment owned by the broker daemon shmbrokerd. Lookups, publishing and reading
 * are plain loads and stores on the mapping; only create, delete and attach talk to the broker.
 *
 * Processes and fork(): a shmb_client belongs to the process that called shmb_attach(). A
 * prefork server attaches in each worker after fork(). A client inherited across fork() is
 * refused: every call on it in the child returns SHMB_EFORK (handles and cursors from it
 * likewise), before any other argument check, and never touches the parent's slots;
 * shmb_detach(), shmb_session_close() and shmb_cursor_close() in the child only free the child's
 * memory. The child attaches its own client (shmb_attach works there as in any process).
 *
 * Threads: every function is thread-safe for one shmb_client shared by the threads of a process.
 * A shmb_session, shmb_cursor is used by one thread at a time (guard it yourself if you share it).
 * Waiting, two ways:
 *  - per thread: shmb_cursor_wait() blocks the calling thread on one cursor (a futex in the
 *    session's record). Any number of threads of any processes may wait at once, on the same or
 *    different cursors, without losing a wakeup: a thread-per-stream server (gthread, Puma,
 *    Apache worker) needs no dispatcher thread. Each waiting thread holds a reader slot
 *    (readers_per_worker, default 64, per process);
 *  - per process: shmb_fd() / shmb_wait() / shmb_prepare_wait() for an event loop, with
 *    shmb_ready() saying which subscribed handles have news. The armed flag behind shmb_fd()
 *    belongs to the process's worker slot: let one thread (the loop's) arm and consume it; two
 *    threads calling shmb_prepare_wait()/shmb_wait() on one client can lose a wakeup.
 * The two mix freely (threads in shmb_cursor_wait() while a loop watches shmb_fd()).
 *
 * The event-loop pattern (asyncio, libuv; docs/events.md, "Event loops"):
 *     subscribe the sessions (shmb_subscribe), open their cursors;
 *     asyncio: loop.add_reader(shmb_fd(c), cb); libuv: uv_poll_start(&h, UV_READABLE, cb);
 *     cb: shmb_wait(c, 0);                        clears the fd, disarms
 *         do {
 *             while ((n = shmb_ready(c, out, max)) > 0)
 *                 for each out[i]: shmb_cursor_next() on its cursor until it returns 0
 *                                  (SHMB_ENOENT: the session ended);
 *         } while (shmb_prepare_wait(c) == 1);    re-arms; 1: news came meanwhile
 *     call cb once after subscribing (or call shmb_prepare_wait() once) so the process is armed.
 * Such a loop cannot run code right before it sleeps, and need not: shmb_prepare_wait() arms the
 * process and then re-checks, so every commit after that re-check (on a subscribed session)
 * makes the eventfd readable, and it stays readable (a counter, watched level-triggered by
 * asyncio's selector and by libuv) until the next shmb_wait(c, 0), however long after the arming
 * the loop goes to sleep. The one rule: every callback ends with a shmb_prepare_wait() that
 * returned 0 (a callback that returns after shmb_wait(c, 0) without it leaves the process
 * disarmed: no further wakeups). Calling it in the callback rather than right before the sleep
 * costs at most one needless eventfd write per arming (the loop is busy when the publisher sees
 * it armed), which the next callback consumes. Once the process has called shmb_ready(),
 * shmb_prepare_wait() and shmb_wait() also return 1 while shmb_ready() has handles left to report,
 * so drain it (until it returns less than max) before expecting a 0.
 *
 * Errors: functions that can fail return a negative SHMB_E* code, 0 or a count on success.
 * shmb_strerror() describes a code, shmb_err_name() names it. Values are stable and new ones are
 * only added; a code from a newer broker that this library does not know is passed through as is
 * (shmb_strerror: "unknown error", shmb_err_name: "SHMB_EUNKNOWN"), so treat any unknown negative
 * value as a failure. SHMB_EFULL means only "no free session record"; with layout 1.x it also
 * stood for no worker slot (now SHMB_ENOWORKER) and no reader slot for the calling thread (now
 * SHMB_ENOREADER).
 *
 * A replaced segment: when no broker serves this client's segment any more (a broker stopped
 * with --unlink-on-exit removed it, a broker rebuilt it after a truncation, a broker restarted
 * with another segment_dir built one elsewhere, or it was removed while no broker ran and a new
 * broker built another), every call that uses the segment or the broker (publish, session open,
 * cursors, waits, subscribe, create, delete) returns SHMB_ESTALE and changes nothing; sessions
 * and events of the old segment are gone. The application closes its handles, calls
 * shmb_detach() and shmb_attach() again (a retry without that keeps failing). shmb_attach()
 * never shares a client whose segment is retired: it gives a client of the new segment even
 * while handles of the stale one are still open (streams still ending), which are then
 * closed and detached as they finish.
 */
#ifndef SHMB_H
#define SHMB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMB_VERSION_MAJOR 0
#define SHMB_VERSION_MINOR 1
#define SHMB_VERSION_PATCH 0

#if defined(__GNUC__)
#define SHMB_API __attribute__((visibility("default")))
#else
#define SHMB_API
#endif

/* Session ids are 32 lowercase hex characters (128 random bits from getrandom; a broker with a
 * node_id puts it in the first 4, keeping 112 random bits: shmb_sid_node()). */
#define SHMB_SID_LEN 32

/* The error table: name, value, description. Values are stable. */
#define SHMB_ERRNO_MAP(X)                                                           \
	X(EINVAL, -1, "invalid argument")                                           \
	X(ENOENT, -2, "no such session (unknown, expired or deleted)")              \
	X(EPERM, -3, "tenant or principal does not match the session")              \
	X(EFULL, -4, "no free session record")                                      \
	X(ETOOBIG, -5, "too big")                                                   \
	X(EOVERRUN, -6, "events overrun: evicted, or lost in publish")              \
	X(EBROKER, -7, "broker unavailable")                                        \
	X(EVERSION, -8, "segment layout version mismatch")                          \
	X(ENOMEM, -9, "out of memory")                                              \
	X(EIO, -10, "system call failed")                                           \
	X(ECORRUPT, -11, "shared memory segment is damaged")                        \
	X(EACCES, -12, "permission denied")                                         \
	X(ENOTSUP, -13, "not supported yet")                                        \
	X(ESTALE, -14, "segment replaced: detach and attach again")                 \
	X(ECONFLICT, -15, "conflict: the attribute changed, or the session exists") \
	X(ENOWORKER, -16, "no free worker slot (max_workers attached)")             \
	X(ENOREADER, -17, "no reader slot left for this thread")                    \
	X(EQUOTA, -18, "quota exceeded")                                            \
	X(EFORK, -19, "client inherited across fork(): attach again in this process")

enum {
#define SHMB_ERR_ENUM_(name, val, msg) SHMB_##name = (val),
	SHMB_ERRNO_MAP(SHMB_ERR_ENUM_)
#undef SHMB_ERR_ENUM_
};

/* Session attributes (shmb_attr_*): a key is 1..SHMB_ATTR_KEY_MAX bytes of printable ASCII
 * (0x21..0x7e), a value 0..SHMB_ATTR_MAX bytes of anything. A buffer of SHMB_ATTR_MAX bytes
 * always holds a value. */
#define SHMB_ATTR_KEY_MAX 64
#define SHMB_ATTR_MAX 1976

/* Event flags (shmb_event.flags). */
#define SHMB_EV_GAP \
	0x0001u /* no payload, skip it: its publisher died before committing (or, until a
				    newer event takes the slot, part of one shmb_publish lost) */

typedef struct shmb_client shmb_client;
typedef struct shmb_session shmb_session;
typedef struct shmb_cursor shmb_cursor;

/* A snapshot of a session, filled by shmb_session_stat(). */
typedef struct shmb_session_info {
	char sid[SHMB_SID_LEN + 1];
	char tenant[65];     /* NUL-terminated copy */
	char principal[129]; /* NUL-terminated copy, "" when has_principal is 0 */
	int has_principal;
	int64_t created_at_ms;       /* wall clock */
	int64_t last_accessed_at_ms; /* wall clock, refreshed by every successful open */
	uint64_t inactivity_ttl_ms;  /* 0: none */
	uint64_t absolute_ttl_ms;    /* 0: none */
	uint64_t last_event_id;      /* 0 when nothing was published */
	uint64_t oldest_event_id;    /* oldest retained event id, 0 when none is retained */
	uint32_t subscribers;        /* processes subscribed */
} shmb_session_info;

/* One event, filled by shmb_cursor_next(). */
typedef struct shmb_event {
	uint64_t id;      /* per-session, from 1, unique across the session's streams */
	uint32_t stream;  /* stream number given to shmb_publish() */
	uint16_t kind;    /* application-defined */
	uint16_t flags;   /* SHMB_EV_* */
	int64_t ts_ms;    /* wall clock at publish */
	size_t len;       /* payload length */
	const void *data; /* points into the caller's buffer; NULL for a gap */
} shmb_event;

/* Library version as "major.minor.patch"; static storage. */
SHMB_API const char *shmb_version(void);

/* Describes an error code (static storage, never NULL; unknown codes get a generic text). */
SHMB_API const char *shmb_strerror(int code);
/* Names an error code ("SHMB_ENOENT"); static storage, never NULL. */
SHMB_API const char *shmb_err_name(int code);

/* Attach to the broker instance `name` (NULL: $SHMB_NAME, else "default"): checks who the
 * broker is, connects to its control socket, is admitted (SO_PEERCRED), receives the segment fd
 * and maps it. A trusted uid is our effective uid, root, or one listed in $SHMB_TRUSTED_UIDS
 * ("1001,1002"); docs/security.md has the rules.
 * A process holds at most one worker slot per instance: attaching again to an instance this
 * process is already attached to returns the same client (one more reference; each
 * shmb_attach needs its shmb_detach, and the last one detaches). Two independent copies of
 * libshmb in one process (two static copies, a dlopen with RTLD_DEEPBIND, two language bindings
 * each with its own) do not share that: only the first attaches, the second gets SHMB_ENOWORKER
 * ("pid N already holds worker slot W") as long as the first is attached.
 * On success *out owns (a reference to) the client: release it with shmb_detach().
 * Returns 0, SHMB_EINVAL (bad name or out NULL), SHMB_EBROKER (no broker or it refused),
 * SHMB_EACCES: the broker did not admit us (our uid and gids are not its uid, root or in its
 *   allowed_gids), or the socket's mode refused the connection, or we refused the broker before
 *   sending anything: the runtime dir, or a directory above it, belongs to an untrusted uid or is
 *   writable by its group or everyone without being a root-owned sticky directory (like /tmp);
 *   the socket file belongs to an untrusted uid; the process listening on it (SO_PEERCRED) is
 *   of an untrusted uid; or the segment fd it sent is not a shared-memory file, belongs to
 *   neither the broker's uid nor a trusted one, or has permissions for every user. All but
 *   the broker's own refusal print one line on stderr naming the path or peer and its owner
 *   ("libshmb: not attaching to broker 'N': runtime dir /tmp/shmb-1001 belongs to uid 1000,
 *   not to us ..."); all but the segment's are found before anything is sent;
 * SHMB_EVERSION (segment of another layout version), SHMB_ECORRUPT (damaged segment, or not the
 * size the broker said), SHMB_ENOWORKER (no worker slot left: max_workers processes attached,
 * or the broker's connection table is full; or this process holds one through another copy of
 * libshmb), SHMB_ENOMEM, SHMB_EIO. */
SHMB_API int shmb_attach(const char *name, shmb_client **out);

/* Detach: drops one reference (see shmb_attach); the last releases reader slots and
 * subscriptions, unmaps, closes fds, frees c, and tells the broker to release the worker slot
 * (without waiting: on the client's connection, or on a fresh one when that is gone after a
 * broker restart; if no broker accepts it now, the slot is released when the process exits or
 * attaches again). Every session handle and cursor of c must be closed first. NULL is ignored. */
SHMB_API void shmb_detach(shmb_client *c);

/* The fd that becomes readable when a subscribed session has news (an eventfd the broker
 * created for this process's worker slot). Put it in an epoll set; do not read, close or change
 * the flags of it yourself, use shmb_wait(). It is nonblocking, a flag every attached process
 * shares: the library and the broker set it again if it is cleared (docs/events.md). Returns the
 * fd or SHMB_EINVAL. */
SHMB_API int shmb_fd(const shmb_client *c);

/* Wait up to timeout_ms (-1: forever, 0: poll) for news on a subscribed session, i.e. an event
 * committed after what the previous wait reported, or the session's deletion or expiry; clears
 * the fd. After it returns 1, read every subscribed session's cursor until it returns 0: news is
 * reported once. Returns 1 when there is news, 0 on timeout, SHMB_EINVAL, SHMB_EIO.
 * Equivalent to shmb_prepare_wait(), then poll(shmb_fd()) and clearing the fd; with timeout_ms 0
 * (what an epoll loop calls when the fd is readable) it does not arm: it disarms, clears the fd
 * and reports news, so a publisher never writes the fd twice for one sleep. Never waits for
 * the broker (as shmb_publish). */
SHMB_API int shmb_wait(shmb_client *c, int timeout_ms);

/* For an epoll loop: call before every epoll_wait that includes shmb_fd(c) (or, where the loop
 * cannot run code then, at the end of the fd's callback: the event-loop pattern at the top of
 * this file). Returns 1 when a subscribed session already has news (process it; do not sleep),
 * or, once the process has used shmb_ready(), when shmb_ready() has handles to report; 0 when the
 * process is armed: a publisher will make shmb_fd(c) readable at its next commit on a subscribed
 * session (or its deletion or expiry). When the fd is reported readable, call shmb_wait(c, 0) to
 * clear it. Before arming it re-checks for up to the spin time of shmb_set_wait_spin() (default
 * 3 us). SHMB_EINVAL on a bad client. */
SHMB_API int shmb_prepare_wait(shmb_client *c);

/* Extra (beyond the design contract): how long shmb_prepare_wait() (and so shmb_wait() with a
 * timeout) keeps re-checking the subscribed sessions before it arms, in nanoseconds; 0 disables
 * the spin. Under a sustained stream the next event is usually well under a microsecond away
 * while a sleep and wakeup cost several microseconds and three syscalls, so a short spin lets a
 * reader that keeps up never sleep. It costs up to spin_ns of CPU before each real sleep.
 * Default SHMB_WAIT_SPIN_DEFAULT_NS, at most SHMB_WAIT_SPIN_MAX_NS. Thread-safe; applies to the
 * next wait. Returns 0, SHMB_EINVAL (bad client or spin_ns above the maximum). */
#define SHMB_WAIT_SPIN_DEFAULT_NS 3000u
#define SHMB_WAIT_SPIN_MAX_NS 1000000u
SHMB_API int shmb_set_wait_spin(shmb_client *c, uint32_t spin_ns);

/* Create a session bound to tenant (1..max_tenant_len bytes) and principal (NULL: none, else
 * 1..max_principal_len bytes), through the broker. Writes the new id, NUL-terminated, to sid_out.
 * Returns 0, SHMB_EINVAL (bad argument or length), SHMB_EFULL (no session slot left: each
 * record holds a live session, or a deleted or expired one a reader is still passing; expired
 * sessions are swept at once when they are all that stands in the way), SHMB_EBROKER (broker
 * down, or no reply within the control timeout).
 * After SHMB_EBROKER the create was applied at most once: either the broker never read it before
 * its deadline (nothing was done) or it created the session once. To find out, make the same
 * call again (same tenant and principal) as this client's next create or delete: it carries the
 * same request id, so the broker answers with the first outcome -- the same sid if it had
 * created one -- instead of creating a second session. Retrying with other arguments, or after
 * another create or delete, is a new request (docs/protocol.md, "Request ids"). Note that the
 * client's next create with the same arguments, from any thread, is taken as that retry. */
SHMB_API int shmb_session_create(shmb_client *c, const char *tenant, const char *principal,
				 char sid_out[SHMB_SID_LEN + 1]);

/* Look a session up without the broker (lock-free, under the cross-process RCU read side),
 * check that tenant and principal (NULL: none) match the ones it was created with, and touch
 * last_accessed_at_ms. On success *out is a process-local handle: close it with
 * shmb_session_close(). A handle whose session is later deleted, expired or recycled makes
 * every call on it return SHMB_ENOENT.
 * Returns 0, SHMB_EINVAL (malformed sid or argument), SHMB_ENOENT (unknown, expired or deleted),
 * SHMB_EPERM (tenant or principal differ), SHMB_ENOREADER (no reader slot left for this thread),
 * SHMB_ECORRUPT, SHMB_ENOMEM. */
SHMB_API int shmb_session_open(shmb_client *c, const char *sid, const char *tenant,
			       const char *principal, shmb_session **out);

/* Close a handle (process-local; the session lives on). A subscription made through this
 * handle ends with it (shmb_unsubscribe), also on a thread that has no reader slot (every one of
 * the process's is held by another thread): the unsubscribe never depends on one. NULL is
 * ignored. */
SHMB_API void shmb_session_close(shmb_session *s);

/* Delete a session through the broker after the same binding check as shmb_session_open().
 * Subscribers are woken; handles on it then get SHMB_ENOENT.
 * Returns 0, SHMB_EINVAL, SHMB_ENOENT, SHMB_EPERM, SHMB_EBROKER. After SHMB_EBROKER the delete
 * was applied at most once; the same call again, as this client's next create or delete, returns
 * its first outcome (0 if it deleted the session, not SHMB_ENOENT), as for shmb_session_create. */
SHMB_API int shmb_session_delete(shmb_client *c, const char *sid, const char *tenant,
				 const char *principal);

/* Snapshot of the session behind s. Does not touch it.
 * Returns 0, SHMB_EINVAL, SHMB_ENOENT (deleted, expired or recycled since it was opened). */
SHMB_API int shmb_session_stat(shmb_session *s, shmb_session_info *out);

/* Publish len bytes of data (normally JSON) as the next event of the session, on `stream`,
 * with an application-defined kind. Lock-free, any number of processes and threads at once;
 * counts as activity (touches the session). Never waits for the broker, nor for a lock a broker
 * call holds (after a broker restart it refreshes the eventfd set without waiting, at most a
 * few tries a second: docs/events.md). Ids increase from 1 and are unique across the
 * session's streams; an event larger than one ring slot (ring_bytes / ring_events bytes) also
 * takes the following ids, so the next event's id is higher by more than one.
 * Returns the new event id (>= 1), SHMB_EINVAL, SHMB_ENOENT, SHMB_ETOOBIG (len above the
 * configured maximum; consumes no id), SHMB_ENOREADER (no reader slot left for this thread),
 * SHMB_EOVERRUN (the ring wrapped around during this call: others claimed ring_events ids
 * after this one before it could be written, so a newer event already owns one of its slots.
 * Nothing of it was written and it is lost; it is already behind the ring's window, so a cursor
 * that had not passed it gets SHMB_EOVERRUN for it, as for any evicted event. Its other slots
 * (those no newer event holds yet) are committed as gap records, so no reader waits on them,
 * until newer events take them. Also SHMB_EOVERRUN when an older event still held one of its
 * ring slots after about 1 s: that event's publisher is stopped, or the slot is wedged; the
 * publish slept meanwhile, then gave up. Nothing was written either; its ids become gap records
 * (the broker writes the ones it could not, once the older event is settled). The event may be
 * published again.) Never waits more than about 1 s, and never on the broker. */
SHMB_API int64_t shmb_publish(shmb_session *s, uint32_t stream, uint16_t kind, const void *data,
			      size_t len);

/* Open a cursor that reads the events with ids greater than after_id (0: from the start; a
 * client's Last-Event-ID otherwise). after_id must not be past the last id claimed in the session
 * (shmb_session_info.last_event_id, or any id a publish returned): a cursor there would skip
 * every later id up to it, so such an after_id (a Last-Event-ID from the future or from another
 * session) gives SHMB_EINVAL and no cursor. An id claimed but not committed yet is accepted.
 * Release the cursor with shmb_cursor_close().
 * Returns 0, SHMB_EINVAL (also: after_id past the last id), SHMB_ENOENT, SHMB_ENOMEM,
 * SHMB_ENOREADER (no reader slot left for this thread). */
SHMB_API int shmb_cursor_open(shmb_session *s, uint64_t after_id, shmb_cursor **out);

/* Like shmb_cursor_open (the same after_id rule and returns), but the cursor returns only the
 * events of `stream` (MCP replays only the stream that was cut) and gap records (SHMB_EV_GAP,
 * whose stream is unknown). */
SHMB_API int shmb_cursor_open_stream(shmb_session *s, uint64_t after_id, uint32_t stream,
				     shmb_cursor **out);

/* After SHMB_EOVERRUN: how many event ids were skipped (the seed's `lagged` count). */
SHMB_API uint64_t shmb_cursor_lagged(const shmb_cursor *cur);
/* The last id the cursor delivered or skipped (a reader's Last-Event-ID). */
SHMB_API uint64_t shmb_cursor_position(const shmb_cursor *cur);

/* Next event of the cursor, copied into buf (the ring may be overwritten at any time).
 * Returns 1 (event copied into buf, ev->data points there), 0 (nothing new yet),
 * SHMB_EOVERRUN once when events after the cursor's position were evicted (the cursor then
 * continues at the oldest retained event), SHMB_ETOOBIG with ev->len set when buflen is too
 * small (nothing consumed: call again with a larger buffer), SHMB_ENOENT once the session is
 * gone (and on every call after that), SHMB_ECORRUPT (a descriptor out of range: damaged
 * segment), SHMB_EINVAL. */
SHMB_API int shmb_cursor_next(shmb_cursor *cur, shmb_event *ev, void *buf, size_t buflen);

/* Close a cursor. NULL is ignored. */
SHMB_API void shmb_cursor_close(shmb_cursor *cur);

/* Ask to be woken (shmb_fd readable) when the session has new events, is deleted or expires.
 * A subscription counts as activity while it lasts: a session with a live subscriber does not
 * expire by inactivity (the absolute TTL still holds), and when a process's subscription ends
 * (shmb_unsubscribe or shmb_session_close of its last subscribed handle, or the broker clearing
 * the bit of a process that died or detached) the session is touched, so its inactivity window
 * starts again then: it expires one inactivity TTL later unless touched meanwhile.
 * Returns 0, SHMB_EINVAL, SHMB_ENOENT (subscribe only: the session is gone), SHMB_ENOREADER
 * (subscribe only: no reader slot left for this thread; an unsubscribe works without one, and
 * on a session already gone it only drops the process's interest), SHMB_ENOMEM (subscribe only:
 * shmb_ready's table of this process, one pointer per session record, could not be allocated). */
SHMB_API int shmb_subscribe(shmb_session *s);
SHMB_API int shmb_unsubscribe(shmb_session *s);

/* ---- Session attributes (docs/attributes.md) ----
 * Small named values per session, seen by every worker: the negotiated protocol version of an
 * MCP session, its client's capabilities, a login, a cart. Set, set-if and delete run in the
 * calling process, lock-free, without the broker; a get never sees a torn value or a mix of two
 * writes; a process killed in the middle of a change leaves the old or the new value, and the
 * broker takes back the space it held. A session's attributes share a budget of attr_bytes
 * (broker configuration, default 4096) counted in 64-byte cells, each value taking
 * ceil((8 + key length + value length) / 64) of them, and up to attr_keys (default 32) distinct
 * keys over the session's life (a deleted key keeps its place). Every change bumps the
 * attribute's version (never 0; a delete bumps it too, and a later set continues from there).
 * Deleting or expiring the session frees them all. None of these touches the session. */

/* Set key to val[0..len). Returns 0, SHMB_EINVAL (bad key, len > SHMB_ATTR_MAX, NULL val with
 * len > 0), SHMB_ENOENT (session gone), SHMB_EQUOTA (the session's budget or keys are used up),
 * SHMB_ENOREADER, SHMB_ECORRUPT. */
SHMB_API int shmb_attr_set(shmb_session *s, const char *key, const void *val, size_t len);

/* Compare-and-set: like shmb_attr_set, but only if the attribute's version is `version` (0: the
 * key must be unset). Of processes racing with the same version exactly one wins. Returns 0 or
 * SHMB_ECONFLICT (nothing changed), or the errors of shmb_attr_set. */
SHMB_API int shmb_attr_set_if(shmb_session *s, const char *key, const void *val, size_t len,
			      uint64_t version);

/* Copy the value of key into buf[0..buflen) and its version into *version (may be NULL).
 * Returns the value's length (0..SHMB_ATTR_MAX), SHMB_ENOENT (unset, or the session is gone),
 * SHMB_ETOOBIG (buflen shorter than the value: nothing copied), SHMB_EINVAL, SHMB_ENOREADER,
 * SHMB_ECORRUPT. */
SHMB_API int shmb_attr_get(shmb_session *s, const char *key, void *buf, size_t buflen,
			   uint64_t *version);

/* Remove key. Returns 0, SHMB_ENOENT (unset, or the session is gone), SHMB_EINVAL,
 * SHMB_ENOREADER, SHMB_ECORRUPT. */
SHMB_API int shmb_attr_delete(shmb_session *s, const char *key);

/* Visit the session's attributes (a snapshot, each value consistent on its own), calling fn with
 * each key, value and version until it returns non-zero (key and val are valid during that call;
 * fn may call anything, shmb_attr_list included, and block: it runs outside any read-side
 * section). Returns the number visited or an error of shmb_attr_get. */
typedef int (*shmb_attr_visit_fn)(void *arg, const char *key, const void *val, size_t len,
				  uint64_t version);
SHMB_API int shmb_attr_list(shmb_session *s, shmb_attr_visit_fn fn, void *arg);

/* ---- Per-thread waits and "which session has news" ---- */

/* Block the calling thread until the cursor has something to return (an event of its stream, a
 * gap, an overrun, the session's end) or timeout_ms passes (-1: forever, 0: poll; measured on
 * CLOCK_MONOTONIC, signals do not shorten it). Any number of threads of any processes may wait at
 * once, on the same or different cursors; none loses a wakeup, none spins (they sleep in the
 * kernel on a futex in the session's record). It needs no subscription and does not use
 * shmb_fd(). A stream cursor is not woken for good by the session's other streams: their events
 * are skipped (its position moves past them, as shmb_cursor_next() would) and it sleeps again.
 * A publish costs nothing more while nobody waits on its session (one load; no syscall); with
 * waiters it wakes all of them (each re-checks its own cursor). Consumes nothing: after 1, call
 * shmb_cursor_next() until it returns 0. A session that expires by time is reported when the
 * broker's sweep retires it (within sweep_interval_ms), a deleted one at once. Waiting is not
 * activity: a session on which threads only wait expires by inactivity like an idle one (a
 * subscription, shmb_subscribe(), is activity while it lasts: subscribe a watched stream's
 * handle to keep it alive).
 * Thread-safety: like every cursor call, one thread at a time per cursor; the calling thread
 * uses its reader slot (and its crash-ledger entry while asleep: if the process dies meanwhile,
 * the broker takes its count back). Returns 1, 0 on timeout, SHMB_EINVAL (bad cursor or
 * timeout_ms < -1), SHMB_ENOREADER (no reader slot left for this thread), SHMB_ESTALE, SHMB_EIO
 * (the futex call failed). */
SHMB_API int shmb_cursor_wait(shmb_cursor *cur, int timeout_ms);

/* Which of this process's subscribed handles have news (events, or their session ended) since
 * they were last reported: writes up to max of them to out and returns how many (0: none), in
 * time proportional to the sessions with news, not to the subscriptions. Every subscribed handle
 * of a session with news is reported (a process holding two handles of it gets both), each at
 * most once per call; a handle not reported because max was reached is reported by the next
 * call; a handle unsubscribed or closed meanwhile is not. Call it after shmb_wait() returned 1
 * (or the fd was readable), then read those handles' cursors until they return 0. A handle may
 * be reported with nothing left to read (its events were read before the report, or a stale
 * mark): treat a report as "look", not as "there is an event". The handles stay owned by the
 * caller (close them as usual). Thread-safe (the client's subscription lock; never waits for the
 * broker); once called, shmb_prepare_wait() and shmb_wait() count handles it has still to report
 * as news. Returns the count, SHMB_EINVAL (bad client, max < 0, out NULL with max > 0). */
SHMB_API int shmb_ready(shmb_client *c, shmb_session **out, int max);

/* ---- Per-session TTLs ---- */
typedef struct shmb_session_opts {
	int64_t inactivity_ttl_ms; /* 0: the broker's default; else 1..max_inactivity_ttl_ms */
	int64_t absolute_ttl_ms;   /* 0: the broker's default; else 1..max_absolute_ttl_ms */
} shmb_session_opts;

/* shmb_session_create with TTLs of its own (opts NULL, or a TTL of 0: the broker's default; opts
 * is read during the call only). A TTL must be within the broker's max_inactivity_ttl_ms /
 * max_absolute_ttl_ms (configuration; defaults 24 h and 7 days; 0: no limit): above it, the
 * broker refuses the create and nothing is created. shmb_session_stat and shmctl sessions / show
 * report each session's TTLs. Returns what shmb_session_create returns; SHMB_EINVAL also for a
 * negative TTL or one above 2^53 ms (the largest the JSON request carries exactly; refused by the
 * client, without asking the broker) or one above the maximum. The
 * same request-id retry rule holds, the TTLs being part of the arguments. */
SHMB_API int shmb_session_create_opts(shmb_client *c, const char *tenant, const char *principal,
				      const shmb_session_opts *opts,
				      char sid_out[SHMB_SID_LEN + 1]);

/* ---- Multi-host: node-tagged session ids and restoring a session (docs/multi-host.md) ---- */

/* A broker given a node_id (1..SHMB_NODE_ID_MAX; configuration key "node_id", flag --node-id)
 * makes session ids whose first 4 hex characters are that id (big-endian, "0001" for node 1);
 * the other 112 bits stay random. A broker without one (node_id 0, the default) keeps all 128
 * bits random. A load balancer routes on the first 4 characters without any state. */
#define SHMB_NODE_ID_MAX 65535

/* The node tag of a session id: the value of its first 4 hex characters (0..65535). Meaningful
 * only where every broker has a node_id (in a cluster); an untagged id gives a random value.
 * Returns the tag, or SHMB_EINVAL when sid is not a session id. Needs no client. */
SHMB_API int shmb_sid_node(const char *sid);

/* The node_id of the broker c is attached to (0: none), from the segment's header (fixed for
 * the segment's life; no call to the broker). Returns it, SHMB_EINVAL (c NULL) or SHMB_EFORK (c
 * inherited across fork()). */
SHMB_API int shmb_node_id(const shmb_client *c);

/* One event of a session image (shmb_session_restore). */
typedef struct shmb_image_event {
	uint64_t id;      /* ascending within the image, 1..last_event_id */
	uint32_t stream;  /* as given to shmb_publish() */
	uint16_t kind;    /* as given to shmb_publish() */
	uint16_t flags;   /* SHMB_EV_GAP: the id holds no payload (data and len ignored) */
	int64_t ts_ms;    /* wall clock at the original publish, 0..2^53 */
	const void *data; /* len bytes, at most the segment's max_event_bytes */
	size_t len;
} shmb_image_event;

/* One attribute of a session image. */
typedef struct shmb_image_attr {
	const char *key; /* as for shmb_attr_set() */
	const void *val;
	size_t len;
} shmb_image_attr;

/* A session as another node (or a dump) had it, for shmb_session_restore(). Read during the
 * call only. */
typedef struct shmb_session_image {
	const char *sid;       /* SHMB_SID_LEN hex characters: the id is kept */
	const char *tenant;    /* 1..max_tenant_len bytes */
	const char *principal; /* NULL: none */
	int64_t created_at_ms; /* wall clock, > 0 */
	int64_t last_accessed_at_ms;
	uint64_t inactivity_ttl_ms;     /* 0: none */
	uint64_t absolute_ttl_ms;       /* 0: none */
	uint64_t last_event_id;         /* the next shmb_publish() returns last_event_id + 1 */
	const shmb_image_event *events; /* n_events, ids ascending and <= last_event_id */
	size_t n_events;
	const shmb_image_attr *attrs; /* n_attrs */
	size_t n_attrs;
} shmb_session_image;

/* Brings a session into this broker's segment with the same id, tenant, principal, timestamps,
 * TTLs, attributes and events, through the broker (one request, however large the image: the
 * events and attributes go in a memfd, docs/protocol.md "restore"), so two processes racing to
 * restore the same id produce one session: the first gets its count (>= 0), every other
 * SHMB_ECONFLICT (then shmb_session_open() it). Ids of the image's window that it holds no event
 * for become gap records (skipped by readers); events older than the ring's window
 * (last_event_id - ring_events) are left out: a cursor after them gets SHMB_EOVERRUN, as for
 * evicted events. Everything is checked before anything changes (events older than the window
 * too); the session is reachable only once complete (attributes included, each at version 1).
 * The timestamps are kept as given (an image whose TTL has run out makes a session that is
 * already expired); the broker's TTL maxima do not apply. A sid in uppercase hex is kept in
 * lowercase. The integers of the image are at most 2^53 (the protocol's JSON numbers).
 * May be called by any attached client (the broker allows restore on a connection that attached
 * as a worker). Returns the number of events left out (>= 0), SHMB_ECONFLICT (a session with this
 * id exists; one that has expired, which no lookup finds, does not count: the broker removes it
 * as its sweep would and restores), SHMB_EINVAL (a field out of range or NULL where an array or string is needed, ids
 * not ascending or above last_event_id, unknown event flags, an event that does not fit this
 * segment's ring geometry, a bad or repeated attribute key), SHMB_ETOOBIG (an event above
 * max_event_bytes, a value above SHMB_ATTR_MAX, more attributes than attr_keys or more than fit
 * attr_bytes), SHMB_EFULL (no free session record), SHMB_EBROKER (if the broker died during the
 * call, its successor finishes or undoes the restore: calling again gives a count or
 * SHMB_ECONFLICT), SHMB_ENOMEM, SHMB_EIO, SHMB_ESTALE, SHMB_EFORK. */
SHMB_API int shmb_session_restore(shmb_client *c, const shmb_session_image *img);

#ifdef __cplusplus
}
#endif

#endif /* SHMB_H */
