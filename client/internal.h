/* internal.h - libshmb's private structures, shared by the files of client/ and by white-box
 * tests (which link the static library). Not installed. */
#ifndef SHMB_CLIENT_INTERNAL_H
#define SHMB_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <urcu/uatomic.h>

#include "clock.h"
#include "seg.h"
#include "shmb.h"

struct shmbi_reader_tls;

/* What an owed reply on the control connection is for. */
enum {
	SHMBI_OWED_DROP = 0,     /* a call that timed out: dropped when it comes */
	SHMBI_OWED_EVENTFDS = 1, /* an "eventfds" the data path sent: installed when it comes */
	SHMBI_OWED_HELLO = 2,    /* a resume the data path sent: completed when it comes */
};
#define SHMBI_OWED_MAX 32          /* more owed than this: the connection is dropped and resumed */
#define SHMBI_SYNC_INTERVAL_MS 100 /* data path: at most 10 refresh sends a second */

/* One session this process subscribed to (process-local; the shared side is its bit in the
 * record's subscriber set). Guarded by shmb_client.lock. */
struct shmbi_sub {
	uint32_t idx, gen; /* the record and its generation when subscribed */
	uint32_t refs;     /* handles of this process that subscribed it */
	uint32_t gone;     /* the session ended: reported once, then ignored */
	uint64_t seen;     /* news up to this id has been reported by shmb_wait */
};

struct shmb_client {
	uint64_t fork_gen; /* shmbi_fork_gen at attach: a child sees a different value */
	uint64_t uid;      /* unique per client of this process: tags the per-thread cache */
	char name[72];
	char sock_path[108];      /* the control socket at attach: with name, what attaches share */
	pthread_mutex_t lock;     /* reader slot allocation */
	pthread_mutex_t ctl_lock; /* the control connection: calls, reconnects */
	pthread_mutex_t sub_lock; /* subscriptions (subs) and arming; taken outside sections */
	int ctl_fd;               /* -1 while disconnected from the broker */
	dev_t seg_dev;            /* our segment's identity (fstat at first attach): a resume */
	ino_t seg_ino;            /* handing us another one means ours was replaced (ESTALE) */
	/* Replies still owed on ctl_fd, oldest first (they come in order): for requests that
	 * timed out, and for what the data path sent without waiting (ctl_lock). */
	uint8_t owed[SHMBI_OWED_MAX]; /* SHMBI_OWED_* */
	uint32_t owed_head, owed_n;
	int64_t sync_next_ms;   /* earliest next non-blocking refresh send (atomic accesses) */
	int64_t sync_look_ms;   /* earliest next look for its reply (atomic accesses) */
	uint32_t woke_stale;    /* 1: may have woken through a stale eventfd set (atomic) */
	uint64_t connects;      /* ctl_connect calls made (white-box tests; atomic accesses) */
	uint32_t refusal_told;  /* 1 once an untrusted broker was named on stderr (atomic) */
	uint64_t req_next;      /* request ids: a random 48-bit start, then +1 (ctl_lock) */
	uint64_t unresolved_id; /* the create/delete that ended in SHMB_EBROKER, and its */
	char *unresolved_args;  /* arguments: the same call again reuses its id (ctl_lock) */
	uint32_t refs;          /* shmb_attach calls of this process returning it (registry_lock) */
	uint64_t evfd_gen;      /* generation of our eventfd set (header evfd_gen) */
	struct shmb_client *reg_next; /* registry of this process's clients (fork handling) */
	struct shmb_seg seg;          /* read-write mapping */
	uint32_t slot;                /* our worker slot */
	uint32_t gen;                 /* its admission generation */
	int fenced; /* 1: read side uses full fences (no membarrier registration) */
	int *evfds; /* eventfd per worker slot, from the broker */
	int n_evfds;
	pthread_key_t tls_key;            /* -> struct shmbi_reader_tls of this thread */
	struct shmbi_reader_tls *readers; /* readers_per_worker entries */
	struct shmbi_sub *subs;           /* subscriptions, n_subs used of cap_subs (sub_lock) */
	uint32_t n_subs, cap_subs;
	/* shmb_ready (client/waits.c), all under sub_lock: the subscribed handles of each record
	 * (max_sessions list heads, allocated at the first subscribe; calloc, so untouched pages
	 * cost no memory), the handles found ready and not reported yet (FIFO, each at most once:
	 * bounded by the subscribed handles), and whether shmb_ready was ever called (then a wait
	 * also reports news while the ready bitmaps or that list hold some). */
	struct shmb_session **ready_heads;
	struct shmb_session *pend_head, *pend_tail;
	uint32_t ready_used;
	uint32_t spin_ns; /* shmb_set_wait_spin (atomic accesses) */
};

/* Per-thread reader slot of one client. */
/* A one-entry memo of the last binding this thread hashed in shmb_session_open (per client, so
 * per segment and hash key): a worker serving one tenant and principal, the common case, pays a
 * compare of the strings instead of a SipHash per open (docs/performance.md). */
struct shmbi_binding_memo {
	uint64_t hash;
	uint16_t tlen, plen;
	uint8_t valid, has_principal;
	char tenant[SHMB_TENANT_CAP];
	char principal[SHMB_PRINCIPAL_CAP];
};

struct shmbi_reader_tls {
	shmb_client *c;
	struct shmb_reader *slot;       /* NULL while not allocated */
	uint32_t k;                     /* slot number within our worker */
	uint32_t depth;                 /* nesting of read-side sections */
	struct shmbi_binding_memo memo; /* this thread's, reset with the struct */
};

struct shmb_session {
	shmb_client *c;
	uint32_t idx;                /* record index */
	uint32_t gen;                /* record generation at open */
	uint8_t sid[SHMB_SID_BYTES]; /* binary: shmb_session_stat formats it */
	uint32_t subscribed;         /* this handle holds one reference on c->subs */
	/* shmb_ready (c->sub_lock): next subscribed handle of the same record in c->ready_heads;
	 * the pending list's links, and pend = 1 while on it. */
	struct shmb_session *ready_next;
	struct shmb_session *pend_prev, *pend_next;
	uint32_t pend;
};

struct shmb_cursor {
	shmb_client *c;
	uint32_t idx, gen;
	uint64_t pos;    /* last id delivered (or skipped); the next read is pos + 1 */
	uint64_t lagged; /* events skipped by the last SHMB_EOVERRUN */
	uint32_t stream; /* filter, when filtered */
	int filtered;
};

/* Incremented in every child after fork(): clients compare it with their fork_gen. */
extern uint64_t shmbi_fork_gen;

/* 1 when c may be used by this process. */
static inline int shmbi_client_ok(const shmb_client *c)
{
	return c && c->fork_gen == shmbi_fork_gen && c->seg.base;
}

/* The code for a call whose argument checks (shmbi_client_ok among them) failed: SHMB_EFORK when
 * c is a client this process inherited across fork() (the parent's; a child attaches its own),
 * which wins over any other bad argument, else SHMB_EINVAL. Off the hot path: callers test
 * shmbi_client_ok first, so a valid call pays nothing for the distinction. */
static inline int shmbi_client_err(const shmb_client *c)
{
	return c && c->fork_gen != shmbi_fork_gen ? SHMB_EFORK : SHMB_EINVAL;
}

/* Enter / leave a read-side section on this thread's reader slot (allocated on first use,
 * released at thread exit or detach). Nestable. Enter returns 0, SHMB_ENOREADER (no reader slot
 * left for this thread), SHMB_EFORK, SHMB_ESTALE or SHMB_EINVAL. */
int shmbi_read_lock(shmb_client *c);
void shmbi_read_unlock(shmb_client *c);
/* Same as shmbi_read_lock, returning this thread's reader (NULL with *rc set on error). */
struct shmbi_reader_tls *shmbi_read_lock_tls(shmb_client *c, int *rc);
/* A section scoped to one record (pin = record index + 1, common/rcu.h): the caller touches no
 * other record inside it (it works through a handle: publish, cursor_next, session_stat), so
 * a thread stopped inside it holds up the reclamation of that record only. Nested inside a
 * section of another scope, the section becomes unscoped. */
struct shmbi_reader_tls *shmbi_read_lock_pinned(shmb_client *c, uint32_t pin, int *rc);

/* This thread's crash-ledger entry (docs/events.md): the one in its reader slot. */
static inline struct shmb_ledger_entry *shmbi_ledger(struct shmbi_reader_tls *t)
{
	return &t->slot->ledger;
}

/* Record of an open handle if it is still the same LIVE, unexpired session; call inside a
 * read-side section. NULL otherwise. */
struct shmb_session_rec *shmbi_session_rec(shmb_session *s, int64_t now);

/* Adds one to a statistics counter of this thread's reader slot: a plain load and store, no
 * locked instruction (the thread is its only writer, layout.h). */
static inline void shmbi_count(uint64_t *ctr)
{
	uatomic_set(ctr, uatomic_read(ctr) + 1);
}

/* Touch (open, publish): store the precise wall clock into last_accessed_at_ms when it is
 * older than coarse_now (shmb_now_coarse_ms), i.e. at most about once per clock tick, so a hot
 * session's line is not bounced between cores by every lookup and the precise clock is read
 * only when a store follows. Inside a read-side section. */
static inline void shmbi_touch(struct shmb_session_rec *r, int64_t coarse_now)
{
	if (uatomic_read(&r->last_accessed_at_ms) < coarse_now)
		uatomic_set(&r->last_accessed_at_ms, shmb_now_ms());
}

/* shmb_ready's handle table (waits.c); caller holds c->sub_lock. shmbi_ready_add files a
 * handle that just subscribed (SHMB_ENOMEM when the table cannot be allocated: nothing changed);
 * shmbi_ready_del takes one that unsubscribes out of the table and the pending list.
 * shmbi_ready_news: 1 when shmb_ready has something to report (the pending list, or a set l2
 * word of this worker's bitmaps), once shmb_ready has been called; call after wake_arm's fence
 * (the l2 loads pair with a waker's marks, common/wake.h). */
int shmbi_ready_add(shmb_client *c, shmb_session *s);
void shmbi_ready_del(shmb_client *c, shmb_session *s);
int shmbi_ready_news(shmb_client *c);

/* After a commit on r: wake every subscribed worker that is armed (wakeup.c). */
void shmbi_wake_subscribers(shmb_client *c, struct shmb_session_rec *r);

/* Refreshes the eventfd set if the broker's changed (a broker restart), for the data path
 * (publish, wait): never blocks and never waits for ctl_lock (trylock). It collects replies that
 * have arrived and, at most every SHMBI_SYNC_INTERVAL_MS, sends what is missing without waiting
 * (a resume hello on a fresh nonblocking connection, or "eventfds"); the reply is installed by a
 * later call. Meanwhile the old set is used (docs/events.md says what that costs). A no-op (one
 * load) when nothing changed. */
void shmbi_sync_eventfds(shmb_client *c);

/* shmbi_call for a mutating request (create, delete): adds a request id and a deadline. When the
 * previous such call of this client ended in SHMB_EBROKER and req has the same arguments, its id
 * is reused, so the broker answers with the first outcome if it had applied it. */
int shmbi_call_req(shmb_client *c, const cJSON *req, cJSON **reply);

/* One control call. If the connection to the broker is gone (the broker restarted), reconnects
 * and re-attaches into the same worker slot ("resume") once, then retries the call. On success
 * *reply owns the parsed reply (cJSON_Delete it); on error *reply may be set too.
 * Returns 0 or a negative SHMB_E* (SHMB_EBROKER when the broker cannot be reached). */
int shmbi_call(shmb_client *c, const cJSON *req, cJSON **reply);
/* shmbi_call with fd passed along (SCM_RIGHTS; the caller keeps and closes it): a restore's
 * image (multihost.c). */
int shmbi_call_fd(shmb_client *c, const cJSON *req, int fd, cJSON **reply);

/* Length of s if it is 1..max bytes, else -1. */
static inline long shmbi_bounded_len(const char *s, uint32_t max)
{
	if (!s)
		return -1;
	for (uint32_t i = 0; i <= max; i++)
		if (s[i] == '\0')
			return i ? (long)i : -1;
	return -1;
}

#endif
