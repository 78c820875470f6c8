/* verify.h - consistency check of a mapped segment (shmctl verify, tests, fuzzers).
 *
 * seg_verify() walks every structure of the segment with bounded loops and reports each
 * inconsistency it finds as one human sentence naming the structure and its index ("bucket 17:
 * chain has a cycle or exceeds 1024 records", "record 5: state 9 is not a valid state"). It
 * only reads: it works on a read-only mapping and takes no RCU reader slot. It trusts nothing
 * in the segment (any byte may be garbage) except the private, validated copy of the
 * configuration and region table in struct shmb_seg, so it can neither crash nor loop forever on
 * a damaged segment.
 *
 * It reads without synchronising with the broker: when the broker is changing the index while
 * verify runs, a transient state (a record linked between the chain walk and the record scan)
 * may be reported. Callers that see problems while the broker is alive should run it again and
 * trust only what persists (shmctl verify does). Event rings are checked for the structure
 * (slot of each id, ids claimed, spans and lengths of committed events, and that a busy
 * descriptor is claimed by some live or dead worker's crash ledger: an ownerless one would
 * never be committed), not payload contents. Attribute areas (layout 2.0) are checked entry by
 * entry: ranges, allocation, overlaps, block headers and key hashes (docs/attributes.md). */
#ifndef SHMB_VERIFY_H
#define SHMB_VERIFY_H

#include <stdint.h>

#include "seg.h"

/* What seg_verify() looked at. by_state counts records per SHMB_REC_* state. */
struct seg_verify_stats {
	uint32_t records;            /* records scanned (max_sessions) */
	uint32_t by_state[5];        /* FREE, LINKING, LIVE, UNLINKING, RETIRED */
	uint32_t bad_state;          /* records whose state is not a SHMB_REC_* value */
	uint32_t buckets;            /* buckets scanned (n_buckets) */
	uint32_t chains;             /* non-empty buckets */
	uint32_t chained;            /* records reached through bucket chains */
	uint32_t longest_chain;      /* records on the longest chain walked */
	uint32_t workers;            /* worker slots scanned (max_workers) */
	uint32_t workers_live;       /* slots in state LIVE */
	uint32_t workers_dead;       /* slots in state DEAD (being settled by the broker) */
	uint32_t readers;            /* reader slots scanned */
	uint32_t readers_in_use;     /* reader slots with in_use == 1 */
	uint32_t readers_in_section; /* reader slots with ctr != 0 */
	uint32_t ledger_in_use;      /* reader slots whose crash ledger holds something */
	uint32_t counters;           /* counters scanned */
	uint64_t events;             /* committed event descriptors checked (LIVE records) */
	uint64_t rcu_gp;             /* grace-period counter at the end of the walk */
};

/* Checks seg (mapped read-only or read-write) and calls report (may be NULL) once per problem
 * with ctx and a NUL-terminated sentence without a trailing newline, valid only during the call.
 * Fills *stats when stats is not NULL. Returns the number of problems found (0: consistent), or
 * SHMB_ENOMEM when its bookkeeping (4 bytes per record) could not be allocated. Never writes to
 * the segment. Thread-safe; any process that has the segment mapped may call it. */
int seg_verify(const struct shmb_seg *seg, void (*report)(void *ctx, const char *problem),
	       void *ctx, struct seg_verify_stats *stats);

#endif
