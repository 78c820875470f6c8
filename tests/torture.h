/* torture.h - the state shared by the torture test's processes (tests/torture.c runs them,
 * tests/torture_worker.c is what each worker process does).
 *
 * Everything here lives in one anonymous MAP_SHARED mapping made by the parent before it forks,
 * so it survives any worker's SIGKILL: a worker never holds a lock on it (there are none), and
 * every record another process reads is published with a release store of its last word.
 *
 *  - the session registry: sessions the workers created, by entry. An entry's word packs its
 *    generation (bumped on every reuse) and state; workers pick LIVE entries at random to publish
 *    into, watch, or delete. For each entry, one record per event id: what the publish that
 *    returned that id wrote (payload hash, slots, stream) and when it returned. The record's gen
 *    is stored last; a reader trusts a record only when its gen is the entry's generation it
 *    snapshotted, so a reused entry's stale records are ignored, never misjudged.
 *  - per-worker statistics, written by the worker as it goes (a killed worker's figures stay).
 *  - per entry, the deletes attempted on its generation and a lower bound of its last access:
 *    what decides whether an SHMB_ENOENT is a lost session.
 *  - broker state (up or down, when it last became ready) and, per worker pid, when the parent
 *    sent it SIGKILL or last SIGCONT: what a reader needs to decide whether a stalled stream is the system's
 *    fault (docs/reliability.md, "Stalls").
 *  - the violation log: every process appends messages; the parent prints them. */
#ifndef SHMB_TORTURE_H
#define SHMB_TORTURE_H

#include <stdint.h>
#include <sys/types.h>

#include "shmb.h"

#define T_MAX_WORKERS 12
#define T_ENTRIES 32      /* session registry entries */
#define T_CAP 4096        /* event ids tracked per session; publishers delete it near there */
#define T_MAX_VIOL 48     /* violation messages kept (all are counted) */
#define T_PID_TABLE 65536 /* pid -> kill time, open addressing */
#define T_TENANT "torture"
#define T_MAGIC 0x546f7274u  /* "Tort" */
#define T_TTL_MS 3000        /* the torture broker's inactivity TTL */
#define T_CTL_TIMEOUT_MS 500 /* the workers' control timeout (SHMB_CTL_TIMEOUT_MS) */
#define T_TTL_MARGIN_MS 500  /* clock and tick slack when judging whether a session can expire */

/* Registry entry states (low byte of the entry word; generation above). */
enum { E_FREE = 0, E_CLAIMED = 1, E_LIVE = 2, E_GONE = 3 };

/* What the publish that returned id wrote. gen is stored last (release). */
struct t_rec {
	uint32_t gen;
	uint32_t hash; /* t_hash of the payload */
	uint16_t nslots;
	uint16_t stream;
	uint32_t pad;
	int64_t returned_ns; /* CLOCK_MONOTONIC when shmb_publish returned */
};

struct t_entry {
	uint64_t word; /* gen << 8 | state, changed by CAS */
	int32_t owner; /* pid filling the entry while CLAIMED */
	uint32_t pad;
	int64_t gone_ns; /* when it turned GONE: reused only a while later */
	/* gen << 32 | deletes attempted on that generation, counted before each delete request
	 * is sent: a worker killed mid-delete leaves it counted (maybe deleted). */
	uint64_t dels;
	/* gen << 32 | ms since the start, taken before the latest open (or the create) that
	 * succeeded: a lower bound of the session's last access, so an SHMB_ENOENT sooner than
	 * the TTL after it, with no delete attempted, is a lost session. Only grows. */
	uint64_t touch;
	char sid[SHMB_SID_LEN + 1];
	struct t_rec rec[T_CAP + 1];
};

/* A payload: this header, then bytes derived from (worker, seq). */
struct t_payload {
	uint32_t magic;
	uint32_t entry; /* registry entry and its generation: a foreign payload shows */
	uint32_t egen;
	uint32_t worker;
	uint64_t seq;
	uint32_t len;
	uint32_t pad;
	uint64_t sum; /* FNV-1a of the whole payload with sum = 0 */
};

/* Per worker slot (the parent's numbering, not the broker's). Counters only grow. */
struct t_wstats {
	int32_t pid;
	uint32_t incarnations;
	uint64_t published, publish_bytes, creates, deletes, opens;
	uint64_t orphans, create_full; /* created but not registered; creates refused EFULL */
	uint64_t publish_overruns;     /* shmb_publish said SHMB_EOVERRUN (lapped mid-write) */
	uint64_t delivered;            /* events and gaps read and checked (ids, checksums) */
	uint64_t verified; /* returned publishes checked delivered at the end of a watch */
	uint64_t gaps, overruns, exempt; /* exempt: returned publishes skipped by an overrun */
	uint64_t watches, waits, woken, timeouts; /* shmb_wait calls, returned 1, returned 0 */
	uint64_t stalls_excused; /* blocked > stall budget, held by a live publisher or broker down
				  */
	uint64_t max_stall_ms;   /* longest unexcused blocking seen */
	uint64_t unverified_tails; /* watches that ended with a live publisher still mid-publish */
	/* SHMB_ENOENT on a registered session: after a delete was attempted on it, or idle long
	 * enough to have expired (anything else is a lost session: a violation). */
	uint64_t ends_deleted, ends_idle;
	/* Wakeups timed: commit (publish returned) to shmb_wait returning, for the id the
	 * subscribed reader was waiting for; excused: its own process was stopped meanwhile;
	 * broker_down: over the budget from the news, within it from the broker's readiness
	 * (the news came while no broker served), or the broker still down. */
	uint64_t wakes_timed, wakes_excused, max_wake_ms, wakes_broker_down;
};

struct t_pid {
	int32_t pid;
	int32_t pad;
	int64_t killed_ns;    /* when the parent sent SIGKILL, 0 if never */
	int64_t continued_ns; /* when the parent last sent SIGCONT after a stop, 0 if never */
};

struct t_shared {
	/* set by the parent */
	uint32_t stop;      /* workers finish their current step and exit */
	uint32_t broker_up; /* 1 while a broker is running and ready */
	int64_t broker_ready_ns;
	int64_t start_ns;
	uint32_t stall_ms; /* the stall budget */
	uint32_t n_workers;
	char name[64]; /* broker instance */
	uint64_t seed;

	struct t_entry entries[T_ENTRIES];
	struct t_wstats w[T_MAX_WORKERS];
	struct t_pid pids[T_PID_TABLE];

	uint32_t n_viol;
	char viol[T_MAX_VIOL][320];
};

extern struct t_shared *T;

/* Monotonic nanoseconds. */
int64_t t_now_ns(void);
/* Appends a violation (any process). */
void t_violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Kill time the parent recorded for pid, 0 if none. */
int64_t t_killed_ns(pid_t pid);
/* When the parent last continued pid after a stop, 0 if never. */
int64_t t_continued_ns(pid_t pid);
/* Runs worker number `slot`; `fault` is a SHMB_FAULT point to arm around one call, or NULL.
 * Returns the process's exit status. */
int t_worker_main(uint32_t slot, const char *fault, uint64_t seed);

#endif
