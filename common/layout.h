/* layout.h - the whole shared-memory ABI of shmbroker, in one place.
 *
 * Every byte another process relies on is declared here and nowhere else; docs/layout.md mirrors
 * it field by field. Rules (STYLE.md): fixed-width integers only, no pointers (offsets and
 * indices, each bounds-checked by common/seg.h before use), explicit padding, cache-line
 * alignment of per-process and per-session hot slots, and a _Static_assert on every size and
 * offset. Any change to a struct here bumps SHMB_LAYOUT_MAJOR (incompatible) or
 * SHMB_LAYOUT_MINOR (compatible addition into reserved space).
 *
 * The segment, in order (each region starts on a 4 KiB boundary, offsets in the header):
 *
 *   header      struct shmb_seg_header                         4096 bytes
 *   counters    struct shmb_counter     [SHMB_COUNTER_COUNT]    broker-written statistics
 *   workers     struct shmb_worker      [cfg.max_workers]       one per attached process
 *   readers     struct shmb_reader      [max_workers * readers_per_worker]  RCU reader slots
 *   buckets     uint32_t                [cfg.n_buckets]         hash index heads (record + 1)
 *   sessions    struct shmb_session_rec [cfg.max_sessions]      fixed array of records
 *   events      struct shmb_event_desc  [max_sessions * ring_events]  per-session descriptor rings
 *   data        uint8_t                 [max_sessions * ring_bytes]   per-session payload rings
 *   attrs       per-session attribute areas [max_sessions * shmb_attr_area_size(cfg)] (2.0)
 *   ready       per-worker news bitmaps [max_workers * shmb_ready_stride(cfg)] (2.0)
 *
 * Who writes what: the broker alone writes the header, counters, worker identity fields, bucket
 * heads, record links/states/generations and recycles records. Workers write their own worker
 * slot's ledger, counters and armed flag, their own reader slots, a record's
 * last_accessed_at_ms (touch), its subscriber bits (their own bit only) and its event rings
 * (claim/commit, issue 3). The broker also touches a record and clears a worker's subscriber bit
 * when it settles a dead or detached worker, and writes gap records for its unsettled claims.
 * docs/architecture.md has the full table.
 */
#ifndef SHMB_LAYOUT_H
#define SHMB_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

/* "SHBROKER" read as a big-endian integer: on a host of the other byte order the bytes show
 * reversed, so a foreign-endian segment fails the magic check rather than misparsing. */
#define SHMB_MAGIC UINT64_C(0x534842524f4b4552)
#define SHMB_LAYOUT_MAJOR 2
#define SHMB_LAYOUT_MINOR \
	1 /* 2.1: issue 16 (cfg.node_id in the former cfg.reserved). 2.0: issue 11 (record line 0
	   * holds a whole lookup; attributes; per-thread waits; ready bitmaps). 1.2: issue-10
	   * hardening fields */

#define SHMB_CACHELINE 64
#define SHMB_PAGE 4096

/* Fixed buffer sizes in the ABI; the configuration may set lower limits, never higher. */
#define SHMB_TENANT_CAP 64
#define SHMB_PRINCIPAL_CAP 128
#define SHMB_SID_BYTES 16
#define SHMB_MAX_WORKERS_LIMIT 250 /* all eventfds plus the segment fit one SCM_RIGHTS message */
#define SHMB_SUB_WORDS 4           /* subscriber bitmap: 256 bits >= SHMB_MAX_WORKERS_LIMIT */
#define SHMB_MAX_READERS_LIMIT 256 /* reader slots per worker */

/* Header flags. */
#define SHMB_SEG_F_MEMBARRIER UINT32_C(1) /* readers rely on the broker's membarrier(), see rcu.h */

/* Indices into shmb_seg_header.regions. */
enum {
	SHMB_REGION_COUNTERS = 0,
	SHMB_REGION_WORKERS,
	SHMB_REGION_READERS,
	SHMB_REGION_BUCKETS,
	SHMB_REGION_SESSIONS,
	SHMB_REGION_EVENTS,
	SHMB_REGION_DATA,
	SHMB_REGION_ATTRS, /* 2.0: session attributes (docs/attributes.md) */
	SHMB_REGION_READY, /* 2.0: per-worker "which session has news" bitmaps (shmb_ready) */
	SHMB_REGION_COUNT
};

struct shmb_region {
	uint64_t off;  /* from the segment base, multiple of SHMB_PAGE */
	uint64_t size; /* bytes */
};
_Static_assert(sizeof(struct shmb_region) == 16, "region size");

/* The configuration the segment was built with. Sizes are fixed for the segment's life;
 * TTLs and limits here are the defaults applied to sessions created from now on. */
struct shmb_seg_config {
	uint32_t max_sessions;       /* session records */
	uint32_t n_buckets;          /* power of two, >= max_sessions */
	uint32_t max_workers;        /* worker slots, <= SHMB_MAX_WORKERS_LIMIT */
	uint32_t readers_per_worker; /* reader slots per worker, <= SHMB_MAX_READERS_LIMIT */
	uint32_t ring_events;        /* event descriptors per session, power of two */
	uint32_t ring_bytes;         /* payload bytes per session, power of two */
	uint32_t max_event_bytes;    /* largest payload accepted, <= ring_bytes */
	uint32_t max_tenant_len;     /* <= SHMB_TENANT_CAP */
	uint32_t max_principal_len;  /* <= SHMB_PRINCIPAL_CAP */
	uint32_t sweep_interval_ms;
	uint64_t inactivity_ttl_ms;
	uint64_t absolute_ttl_ms;
	/* 2.0 */
	uint32_t attr_bytes; /* attribute cell bytes per session, multiple of SHMB_ATTR_CELL,
			      * <= SHMB_ATTR_BYTES_LIMIT; 0: no attributes */
	uint32_t attr_keys;  /* attribute entries per session (distinct keys over its life),
			      * <= SHMB_ATTR_KEYS_LIMIT */
	uint64_t max_inactivity_ttl_ms; /* largest per-session TTL a create may ask (0: no limit) */
	uint64_t max_absolute_ttl_ms;
	/* 2.1 (issue 16): the node tag of the session ids this segment's broker makes, 0..65535
	 * (SHMB_NODE_ID_MAX); 0: untagged. Fixed for the segment's life: its live sessions carry it,
	 * so a broker with another node_id refuses to adopt the segment (broker/segment.c). */
	uint32_t node_id;
	uint32_t reserved32;
};
_Static_assert(sizeof(struct shmb_seg_config) == 88, "config size");

struct shmb_seg_header {
	/* Line 0: identity. magic is stored last, with release, once everything else is written;
	 * a reader that sees 0 treats the segment as "not ready". */
	uint64_t magic;
	uint16_t layout_major;
	uint16_t layout_minor;
	uint32_t fingerprint;  /* shmb_layout_fingerprint(): sizes and alignments of the structs */
	uint32_t header_size;  /* sizeof(struct shmb_seg_header) */
	uint32_t flags;        /* SHMB_SEG_F_* */
	uint64_t segment_size; /* must equal the object's size (fstat) */
	int64_t created_at_ms; /* wall clock, when the segment was first built */
	/* 2.0: key of the keyed 64-bit hash (shmb_hash64, common/hash.h) of binding hashes and
	 * attribute keys; random, written by the broker before magic, never changed. */
	uint64_t hash_key[2];
	uint8_t pad0[8];

	/* Lines 1-4: configuration and region table (broker-written before magic, then read-only). */
	struct shmb_seg_config cfg;
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint8_t pad1[256 - 88 - 16 * SHMB_REGION_COUNT];

	/* Line 5: the broker. Written by the current broker only. */
	_Alignas(SHMB_CACHELINE) int32_t broker_pid;
	uint32_t broker_state;      /* SHMB_BROKER_* */
	uint64_t broker_starttime;  /* /proc/<pid>/stat field 22, to tell a reused pid */
	uint64_t broker_generation; /* bumped on every broker start or adoption */
	int64_t broker_started_ms;  /* wall clock */
	int64_t heartbeat_ms;       /* wall clock, refreshed by the broker's loop */
	uint64_t evfd_gen;          /* bumped whenever the broker's eventfd set changes objects
				      * (a restart): attached processes then fetch it again */
	uint8_t pad2[16];

	/* Line 6: the RCU grace-period counter (rcu.h). Written by the broker, read by readers
	 * entering a read-side section. Starts at 1; 0 in a reader slot means quiescent. */
	_Alignas(SHMB_CACHELINE) uint64_t rcu_gp;
	/* 1.2: nonzero once this segment is replaced and no broker serves it any more (a broker
	 * stopping with --unlink-on-exit, a broker rebuilding a truncated one, or a client whose
	 * resume found the broker serving another segment stores SHMB_SEG_RETIRED). Read by the
	 * data path on entering a read-side section (it reads rcu_gp on this line anyway): every
	 * call then fails with SHMB_ESTALE. Never cleared. */
	uint32_t retired;
	uint8_t pad3[52];

	uint8_t reserved[SHMB_PAGE - 7 * SHMB_CACHELINE];
};

/* shmb_seg_header.retired (1.2). */
#define SHMB_SEG_RETIRED UINT32_C(1)

/* Broker states in the header. */
enum { SHMB_BROKER_STOPPED = 0, SHMB_BROKER_RUNNING = 1 };

/* ---- counters: broker-written statistics (AeronStat style, readable without locks). ---- */
enum {
	SHMB_CTR_SESSIONS_CREATED = 0,
	SHMB_CTR_SESSIONS_DELETED,
	SHMB_CTR_SESSIONS_EXPIRED,
	SHMB_CTR_SESSIONS_RECLAIMED,
	SHMB_CTR_SESSIONS_LIVE,
	SHMB_CTR_WORKERS_ADMITTED,
	SHMB_CTR_WORKERS_DIED,
	SHMB_CTR_WORKERS_REFUSED,
	SHMB_CTR_GRACE_PERIODS,
	SHMB_CTR_SWEEPS,
	SHMB_CTR_CTL_ERRORS,
	SHMB_CTR_EVENTS_PUBLISHED_RETIRED, /* published by workers that have since detached */
	SHMB_CTR_WAKEUPS_RETIRED,
	SHMB_CTR_GAPS_WRITTEN,
	SHMB_COUNTER_COUNT = 32
};

struct shmb_counter {
	uint64_t value;
	char label[56]; /* NUL-terminated */
};
_Static_assert(sizeof(struct shmb_counter) == 64, "counter size");

/* ---- worker table: one slot per attached process (per shmb_client). ---- */
enum {
	SHMB_WORKER_FREE = 0,
	SHMB_WORKER_LIVE = 1, /* admitted, pid watched by the broker */
	SHMB_WORKER_DEAD = 2, /* death noticed, broker settling what it held */
};

/* shmb_worker.req_op: the kind of the last mutating request recorded (layout 1.2). */
enum {
	SHMB_REQ_OP_NONE = 0,
	SHMB_REQ_OP_CREATE = 1,
	SHMB_REQ_OP_DELETE = 2,
};

/* Crash ledger entry (iceoryx UsedChunkList): written by a worker's thread before it takes
 * something, cleared after it is released, so the broker can settle what a dead worker left.
 * One entry per reader slot (each publishing thread owns one). For a claim, id holds a lower
 * bound of the id to come, flagged SHMB_LEDGER_LB, until the fetch-and-add returns the exact id
 * (docs/events.md explains how the broker settles both cases). */
#define SHMB_LEDGER_LB (UINT64_C(1) << 63)
enum {
	SHMB_LEDGER_FREE = 0,
	SHMB_LEDGER_CLAIM = 1, /* publishing into session (idx, gen); id once known */
	SHMB_LEDGER_ATTR =
		2, /* 2.0: changing an attribute of (idx, gen); id: SHMB_LEDGER_ATTR_ID */
	SHMB_LEDGER_WAIT = 3, /* 2.0: counted in the waiters of session (idx, gen) */
};

/* 2.0: the id word of an attribute ledger entry, stored as one 64-bit word so that the broker,
 * reading another thread's entry, sees one consistent value: SHMB_LEDGER_ATTR_ID (bit 62; event
 * ids never reach it) | session index (bits 0-23) | new block's cell range << 24 | old block's
 * cell range << 40. A cell range is start | count << 10 (SHMB_ATTR_RANGE), count 0: none. */
#define SHMB_LEDGER_ATTR_ID (UINT64_C(1) << 62)
#define SHMB_ATTR_RANGE(start, count) ((uint64_t)(start) | ((uint64_t)(count) << 10))

struct shmb_ledger_entry {
	uint32_t kind;        /* SHMB_LEDGER_* ; written last when taking, first when releasing */
	uint32_t session_idx; /* record index */
	uint32_t session_gen; /* record generation at the time */
	uint32_t nslots;      /* ids the claim takes (slots of a large event) */
	uint64_t id; /* first claimed id; a lower bound | SHMB_LEDGER_LB until the claim returned */
};
_Static_assert(sizeof(struct shmb_ledger_entry) == 24, "ledger entry size");

struct shmb_worker {
	/* Line 0: identity, written by the broker at admission and cleanup. */
	uint32_t state; /* SHMB_WORKER_* */
	int32_t pid;
	uint64_t starttime; /* /proc/<pid>/stat field 22 */
	uint32_t gen;       /* bumped on every admission into this slot */
	uint32_t uid;
	uint32_t gid;
	int32_t evfd_num; /* written by the worker: its fd number of its own eventfd, so that a
			   * restarted broker can take the same eventfd back (pidfd_getfd) */
	int64_t attached_at_ms;
	uint8_t pad1[24];

	/* Line 1: wakeups (issue 3). armed != 0 while the process is about to sleep on its
	 * eventfd; a publisher writes the eventfd only when it is set. */
	_Alignas(SHMB_CACHELINE) uint32_t armed;
	uint32_t pad2;
	uint64_t wakeups_received;
	uint8_t pad3[48];

	/* Line 2: statistics written by the worker itself. Since layout 1.1 the client counts
	 * events_published and sessions_opened per thread in its reader slots instead (plain
	 * stores); readers add both (seg_worker_stats). */
	_Alignas(SHMB_CACHELINE) uint64_t events_published;
	uint64_t wakeups_sent;
	uint64_t lookups; /* unused (never counted); kept for the layout */
	uint64_t sessions_opened;
	uint8_t pad4[32];

	/* Line 3 (layout 1.2): this worker's last applied mutating broker request (create,
	 * delete), written by the broker before its reply, so that a retry carrying the same
	 * request id gets the first outcome instead of a second application, even from a broker
	 * restarted in between (docs/protocol.md, "Request ids"). req_op: SHMB_REQ_OP_*, 0 none. */
	_Alignas(SHMB_CACHELINE) uint64_t req_id;
	uint32_t req_op;
	int32_t req_rc;   /* its code: 0 (only applied requests are recorded) */
	uint32_t req_idx; /* create: the record index and generation of the session made */
	uint32_t req_gen;
	/* create: the session id made; delete: the one named (SHMB_SID_BYTES) */
	uint8_t req_sid[16];
	uint32_t req_hash; /* FNV-1a of the request's arguments: a replay needs the same */
	uint8_t req_pad[20];

	/* Line 4 (layout 1.2): a read-side section of this worker that has lasted too long,
	 * written by the broker alone (reclaim.c: brk_stall_run), read by shmctl workers without
	 * locks. stalled_since_ms is 0 while no section of the worker has been seen inside one
	 * grace period for SHMB_STALL_MS or longer; otherwise the wall clock at which the broker
	 * first saw the oldest such section (up to two broker ticks after it began). Stale while
	 * no broker runs. */
	_Alignas(SHMB_CACHELINE) int64_t stalled_since_ms;
	int32_t stalled_tid;   /* thread holding that section (its reader slot's tid) */
	uint32_t stalled_slot; /* reader slot k of that thread within this worker */
	uint32_t stalled_pin;  /* the record that section pins, + 1; 0: unscoped (rcu.h) */
	uint8_t pad5[44];

	/* Lines 5-9: reserved. (The crash ledger lives in the reader slots: one entry per thread.) */
	_Alignas(SHMB_CACHELINE) uint8_t reserved[320];
};

/* A read-side section open this long is reported as stalled (shmctl workers). */
#define SHMB_STALL_MS 1000

/* ---- RCU reader slots: max_workers * readers_per_worker, slot w*rpw + k belongs to worker w. */
struct shmb_reader {
	uint64_t ctr;    /* 0: quiescent; else the rcu_gp value read on entering the section */
	uint32_t in_use; /* 1 while a thread of the owning worker holds this slot */
	int32_t tid;     /* owning thread, for shmctl workers */
	struct shmb_ledger_entry ledger; /* what this thread holds right now (crash ledger) */
	/* Layout 1.1: statistics of the thread holding the slot, written only by that thread,
	 * with a plain load and store (no locked instruction on the hot path; the slot changes
	 * hands under the client's lock). They belong to the worker: they accumulate over the
	 * threads that hold the slot in turn, shmctl adds them to the worker's line 2
	 * (seg_worker_stats), and the broker retires and clears them with it. */
	uint64_t events_published;
	uint64_t sessions_opened;
	/* Layout 1.2: the record the current read-side section is scoped to, + 1; 0 while the
	 * section may reach any record (a lookup walking chains). Written by the thread before
	 * ctr on entry (rcu.h); read by the reclaimer after ctr (docs/rcu.md, "Scoped sections"). */
	uint32_t pin;
	uint8_t pad[4];
};
_Static_assert(sizeof(struct shmb_reader) == 64, "reader slot is one cache line");

/* ---- session records ---- */
enum {
	SHMB_REC_FREE = 0,    /* unused, on the broker's free list */
	SHMB_REC_LINKING = 1, /* being filled and linked by the broker (crash: adoption decides) */
	SHMB_REC_LIVE = 2,    /* linked into its bucket chain, visible to lookups */
	SHMB_REC_UNLINKING = 3, /* being removed from its chain (crash: adoption finishes it) */
	SHMB_REC_RETIRED = 4,   /* unlinked; recycled once every reader passed retire_gp */
};

/* Why a record was retired (shmb_session_rec.retire_reason). */
enum { SHMB_RETIRE_NONE = 0, SHMB_RETIRE_DELETED = 1, SHMB_RETIRE_EXPIRED = 2 };

/* Index chains link records by index + 1 (0 ends a chain): no pointers in shared memory. */
#define SHMB_NIL UINT32_C(0)

struct shmb_session_rec {
	/* Line 0 (2.0): everything a lookup that finds its session reads and writes: the chain,
	 * the id, the binding hash, the expiry inputs and the touch. Written by the broker while
	 * the record is not LIVE, except last_accessed_at_ms (workers touch it at most once per
	 * ms). A lookup touches the bucket and this line only (issue 11). */
	uint32_t state; /* SHMB_REC_*; LIVE stored with release after everything else */
	uint32_t gen;   /* bumped on every recycle: a handle holding an older gen is stale */
	uint32_t next;  /* next record in the bucket chain, index + 1, SHMB_NIL ends it */
	uint32_t hash;  /* shmb_sid_hash(sid), bucket = hash & (n_buckets - 1) */
	uint8_t sid[SHMB_SID_BYTES];
	uint64_t binding;      /* shmb_binding_hash(tenant, principal) with the header's hash_key */
	int64_t expires_at_ms; /* created_at_ms + absolute_ttl_ms; INT64_MAX: no absolute expiry */
	int64_t last_accessed_at_ms;
	uint64_t inactivity_ttl_ms; /* 0: no inactivity expiry */

	/* Line 1: the rest of the identity, read by stat and shmctl. */
	_Alignas(SHMB_CACHELINE) int64_t created_at_ms;
	uint64_t absolute_ttl_ms; /* 0: no absolute expiry */
	uint16_t tenant_len;
	uint16_t principal_len;
	uint32_t has_principal; /* 0: no principal (NULL), 1: principal[0..principal_len) */
	uint8_t pad1[40];

	/* Line 2: event ring cursor: claimed with fetch-and-add by publishers. Per-thread waits
	 * (2.0, shmb_cursor_wait): wake_seq is the futex word, bumped by a publisher (and the
	 * broker when the session ends) when waiters is non-zero; waiters counts the threads
	 * of all processes sleeping on it. */
	_Alignas(SHMB_CACHELINE) uint64_t next_id; /* last claimed id; first event is 1 */
	uint32_t wake_seq;
	uint32_t waiters;
	uint8_t pad2[48];

	/* Line 3: subscribers (issue 3) and broker bookkeeping. */
	_Alignas(SHMB_CACHELINE) uint64_t subscribers[SHMB_SUB_WORDS]; /* bit w: worker slot w */
	uint64_t retire_gp;     /* rcu_gp value the readers must pass before recycling */
	int64_t retired_at_ms;  /* wall clock of the unlink */
	uint32_t retire_reason; /* SHMB_RETIRE_* */
	uint32_t pad3;
	uint8_t pad4[8];

	/* Lines 4-6: binding, written by the broker before the record goes LIVE. */
	_Alignas(SHMB_CACHELINE) char tenant[SHMB_TENANT_CAP];
	char principal[SHMB_PRINCIPAL_CAP];
	uint8_t reserved[64];
};

/* ---- session attributes (2.0; docs/attributes.md) ----
 * Session idx owns bytes [idx * shmb_attr_area_size(cfg), + size) of the attrs region:
 *   entries  struct shmb_attr_entry [attr_keys]           open addressing on the key's hash
 *   bitmap   uint64_t [shmb_attr_words(cfg)]              cell allocation, low 32 bits: cells,
 *                                                          high 32 bits: a tag bumped by every
 *                                                          change (ABA guard for the broker)
 *   (padding to a cache line)
 *   cells    uint8_t [attr_bytes]                          SHMB_ATTR_CELL-byte cells
 * A value lives in a block of consecutive cells inside one bitmap word's 32 cells: a
 * struct shmb_attr_block header, the key, the value. An entry is bound to its key's hash for
 * the record's life (tag, claimed 0 -> hash by CAS); word = version << 16 | range, range =
 * start | count << 10, count 0: the key is unset (deleted or never set). */
#define SHMB_ATTR_CELL 64
#define SHMB_ATTR_CELLS_PER_WORD 32
#define SHMB_ATTR_BYTES_LIMIT 65536 /* 1024 cells: a start fits 10 bits */
#define SHMB_ATTR_KEYS_LIMIT 1024
#define SHMB_ATTR_KEY_CAP 64

struct shmb_attr_entry {
	uint64_t tag;  /* 0: free; else the key's shmb_hash64 (never 0), for the record's life */
	uint64_t word; /* version << 16 | count << 10 | start; 0: never set */
};

struct shmb_attr_block {
	uint16_t key_len; /* 1..SHMB_ATTR_KEY_CAP */
	uint16_t flags;   /* 0 */
	uint32_t val_len; /* followed by key[key_len], then val[val_len] */
};

static inline uint32_t shmb_attr_words(uint32_t attr_bytes)
{
	uint32_t cells = attr_bytes / SHMB_ATTR_CELL;
	return (cells + SHMB_ATTR_CELLS_PER_WORD - 1) / SHMB_ATTR_CELLS_PER_WORD;
}

/* Offset of the cells within an area, and the area's size (a whole number of cache lines). */
static inline uint64_t shmb_attr_cells_off(uint32_t attr_bytes, uint32_t attr_keys)
{
	uint64_t head = (uint64_t)attr_keys * sizeof(struct shmb_attr_entry) +
			(uint64_t)shmb_attr_words(attr_bytes) * sizeof(uint64_t);
	return (head + SHMB_CACHELINE - 1) & ~(uint64_t)(SHMB_CACHELINE - 1);
}

static inline uint64_t shmb_attr_area_size(uint32_t attr_bytes, uint32_t attr_keys)
{
	if (attr_bytes == 0 || attr_keys == 0)
		return 0;
	return shmb_attr_cells_off(attr_bytes, attr_keys) + attr_bytes;
}

/* ---- ready bitmaps (2.0; shmb_ready) ----
 * Worker w owns [w * shmb_ready_stride(max_sessions), + stride) of the ready region: three
 * levels of uint64_t words, l0 (bit i: record i has news for this worker), l1 (bit j: l0 word
 * j may have a bit set), l2 (bit k: l1 word k may have a bit set). Publishers (and the broker
 * when a session ends) set bits l0 then l1 then l2 for every subscribed worker; the worker
 * takes l2, l1, l0 words with exchange. */
static inline uint64_t shmb_ready_l0_words(uint32_t max_sessions)
{
	return ((uint64_t)max_sessions + 63) / 64;
}
static inline uint64_t shmb_ready_l1_words(uint32_t max_sessions)
{
	return (shmb_ready_l0_words(max_sessions) + 63) / 64;
}
static inline uint64_t shmb_ready_l2_words(uint32_t max_sessions)
{
	return (shmb_ready_l1_words(max_sessions) + 63) / 64;
}
static inline uint64_t shmb_ready_stride(uint32_t max_sessions)
{
	uint64_t w = shmb_ready_l0_words(max_sessions) + shmb_ready_l1_words(max_sessions) +
		     shmb_ready_l2_words(max_sessions);
	return (w * 8 + SHMB_CACHELINE - 1) & ~(uint64_t)(SHMB_CACHELINE - 1);
}

/* ---- event storage: descriptor ring and payload slots per session ----
 * Slot i = id & (ring_events - 1) of session idx: descriptor events[idx * ring_events + i] and
 * payload bytes data[idx * ring_bytes + i * slot_bytes ..], slot_bytes = ring_bytes /
 * ring_events. The descriptor owns its slot's bytes: whoever holds the descriptor (seq BUSY with
 * its id) is the only writer of those bytes. An event larger than slot_bytes claims nslots
 * consecutive ids: the first is the event's id and its head descriptor, the others are
 * continuation descriptors (SHMB_DESC_CONT) that readers skip. seq is the commit word
 * (docs/events.md). */
#define SHMB_DESC_BUSY (UINT64_C(1) << 63) /* seq = id | BUSY: claimed, being written */
#define SHMB_DESC_CONT 0x8000u             /* flags: continuation slot of a larger event */

struct shmb_event_desc {
	uint64_t seq;  /* 0 never written; id|BUSY while written; id once committed (release) */
	int64_t ts_ms; /* wall clock at publish */
	uint32_t len;  /* payload bytes (head descriptor); 0 for continuations and gaps */
	uint32_t stream;
	uint16_t kind;
	uint16_t flags;  /* SHMB_EV_* of shmb.h (SHMB_EV_GAP) and SHMB_DESC_CONT */
	uint32_t nslots; /* head descriptor: slots the event spans (>= 1); 1 for the others */
	uint32_t crc;    /* reserved for a payload checksum */
	uint8_t pad[28];
};

/* ---- sizes and offsets other processes rely on ---- */
_Static_assert(sizeof(struct shmb_seg_header) == SHMB_PAGE, "header is one page");
_Static_assert(offsetof(struct shmb_seg_header, magic) == 0, "magic first");
_Static_assert(offsetof(struct shmb_seg_header, cfg) == 64, "config on line 1");
_Static_assert(offsetof(struct shmb_seg_header, broker_pid) == 320, "broker on line 5");
_Static_assert(offsetof(struct shmb_seg_header, rcu_gp) == 384, "rcu_gp on line 6");
_Static_assert(offsetof(struct shmb_seg_header, retired) == 392, "retired on line 6 (1.2)");
_Static_assert(sizeof(struct shmb_worker) == 640, "worker slot size");
_Static_assert(offsetof(struct shmb_worker, armed) == 64, "armed on its own line");
_Static_assert(offsetof(struct shmb_worker, events_published) == 128, "stats line");
_Static_assert(offsetof(struct shmb_worker, req_id) == 192, "request outcome line");
_Static_assert(offsetof(struct shmb_reader, ledger) == 16, "ledger in the reader slot");
_Static_assert(offsetof(struct shmb_reader, events_published) == 40, "per-thread statistics");
_Static_assert(offsetof(struct shmb_reader, sessions_opened) == 48, "per-thread statistics");
_Static_assert(offsetof(struct shmb_reader, pin) == 56, "scoped section pin (1.2)");
_Static_assert(offsetof(struct shmb_worker, stalled_since_ms) == 256, "stall line (1.2)");
_Static_assert(offsetof(struct shmb_worker, reserved) == 320, "reserved lines 5-9");
_Static_assert(sizeof(struct shmb_session_rec) == 512, "session record size");
_Static_assert(offsetof(struct shmb_session_rec, inactivity_ttl_ms) == 56, "lookup line (2.0)");
_Static_assert(offsetof(struct shmb_session_rec, created_at_ms) == 64, "identity line (2.0)");
_Static_assert(offsetof(struct shmb_session_rec, wake_seq) == 136, "futex word (2.0)");
_Static_assert(offsetof(struct shmb_session_rec, wake_seq) % 4 == 0, "futex word alignment");
_Static_assert(sizeof(struct shmb_attr_entry) == 16, "attribute entry size");
_Static_assert(sizeof(struct shmb_attr_block) == 8, "attribute block header size");
_Static_assert(offsetof(struct shmb_seg_header, hash_key) == 40, "hash key on line 0 (2.0)");
_Static_assert(offsetof(struct shmb_session_rec, next_id) == 128, "ring cursor line");
_Static_assert(offsetof(struct shmb_session_rec, subscribers) == 192, "subscriber line");
_Static_assert(offsetof(struct shmb_session_rec, tenant) == 256, "binding lines");
_Static_assert(sizeof(struct shmb_event_desc) == 64, "descriptor is one cache line");
_Static_assert(SHMB_SUB_WORDS * 64 >= SHMB_MAX_WORKERS_LIMIT, "subscriber bitmap too small");

/* Alignment. Every region starts on a page (seg_layout), so an array element sits on cache
 * lines of its own when its struct's size is a whole number of lines and its alignment divides
 * that: the header, worker slots and session records are aligned to the line (their hot lines
 * are _Alignas(SHMB_CACHELINE)); reader slots, descriptors and counters are exactly one line.
 * The 64-bit words used atomically are on 8-byte boundaries (also where uint64_t struct members
 * would get 4, as on i386). */
_Static_assert(SHMB_PAGE % SHMB_CACHELINE == 0, "a page is whole cache lines");
_Static_assert(_Alignof(struct shmb_seg_header) == SHMB_CACHELINE, "header alignment");
_Static_assert(_Alignof(struct shmb_worker) == SHMB_CACHELINE, "worker slot alignment");
_Static_assert(sizeof(struct shmb_worker) % SHMB_CACHELINE == 0, "worker slot: whole lines");
_Static_assert(_Alignof(struct shmb_session_rec) == SHMB_CACHELINE, "session record alignment");
_Static_assert(sizeof(struct shmb_session_rec) % SHMB_CACHELINE == 0, "record: whole lines");
_Static_assert(SHMB_CACHELINE % _Alignof(struct shmb_reader) == 0, "reader slot alignment");
_Static_assert(SHMB_CACHELINE % _Alignof(struct shmb_event_desc) == 0, "descriptor alignment");
_Static_assert(SHMB_CACHELINE % _Alignof(struct shmb_counter) == 0, "counter alignment");
_Static_assert(offsetof(struct shmb_seg_header, rcu_gp) % 8 == 0, "rcu_gp: atomic word");
_Static_assert(offsetof(struct shmb_reader, ctr) % 8 == 0, "reader ctr: atomic word");
_Static_assert(offsetof(struct shmb_reader, ledger.id) % 8 == 0, "ledger id: atomic word");
_Static_assert(offsetof(struct shmb_session_rec, next_id) % 8 == 0, "next_id: atomic word");
_Static_assert(offsetof(struct shmb_session_rec, subscribers) % 8 == 0, "subscribers: atomic");
_Static_assert(offsetof(struct shmb_event_desc, seq) % 8 == 0, "seq: atomic word");

/* A fingerprint of every size and alignment above (LMDB's format word): processes built with a
 * different view of the structs refuse the segment even when the version numbers agree. */
static inline uint32_t shmb_layout_fingerprint(void)
{
	uint32_t v = 2166136261u;
	const uint32_t parts[] = {
		(uint32_t)sizeof(void *),
		(uint32_t)sizeof(struct shmb_seg_header),
		(uint32_t)sizeof(struct shmb_seg_config),
		(uint32_t)sizeof(struct shmb_counter),
		(uint32_t)sizeof(struct shmb_worker),
		(uint32_t)sizeof(struct shmb_reader),
		(uint32_t)sizeof(struct shmb_session_rec),
		(uint32_t)sizeof(struct shmb_event_desc),
		(uint32_t)sizeof(struct shmb_attr_entry),
		(uint32_t)sizeof(struct shmb_attr_block),
		SHMB_ATTR_CELL,
		SHMB_ATTR_CELLS_PER_WORD,
		(uint32_t) _Alignof(struct shmb_worker),
		(uint32_t) _Alignof(struct shmb_session_rec),
		SHMB_TENANT_CAP,
		SHMB_PRINCIPAL_CAP,
		SHMB_SUB_WORDS,
	};
	for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
		v = (v ^ parts[i]) * 16777619u;
	return v;
}

#endif /* SHMB_LAYOUT_H */
