/* mirror.h - internals shared by the files of shmb-mirror (docs/multi-host.md, "Redis mirror").
 *
 * mirror.c parses the command line, attaches, runs the loop and publishes the status (file,
 * Prometheus text, the node hash in Redis); mirror_sync.c reads the segment read-only and writes
 * each session's changes to Redis; mirror_stats.c keeps the counters and the lag histogram. One
 * thread: nothing here is locked. */
#ifndef SHMB_MIRROR_H
#define SHMB_MIRROR_H

#include <stdint.h>
#include <stdio.h>

#include "mirror_redis.h"
#include "seg.h"

/* Lag histogram: upper bounds in ms of each bucket (the last one is "more"). */
#define MS_LAG_BUCKETS 32
#define MS_LAG_WINDOW_S 10 /* p50/p99 over the last 10 one-second slices */

struct ms_stats {
	uint64_t events;                         /* mirrored (acknowledged by Redis), total */
	uint64_t events_window[MS_LAG_WINDOW_S]; /* per one-second slice */
	uint64_t lag[MS_LAG_WINDOW_S][MS_LAG_BUCKETS];
	int64_t slice_s; /* monotonic second of the current slice */
	uint32_t slice;  /* index of the current slice */
	uint64_t lost;   /* ids lost to a ring overrun (or a session recycled unread) */
	uint64_t lost_ranges;
	uint64_t not_owner; /* sessions refused by the fence, now */
	uint64_t fenced;    /* writes refused by the fence, total */
	uint64_t redis_errors;
	uint64_t reconnects;
	uint64_t sessions;            /* mirrored now (owner = this node) */
	uint64_t events_behind;       /* ids handed out but not yet in Redis, summed */
	uint64_t ended;               /* sessions whose delete or expiry was written */
	uint64_t refused;             /* writes Redis answered with an error, total */
	uint64_t failing;             /* sessions whose last write or read was refused, now */
	uint64_t unsynced;            /* sessions not yet told their resume point by Redis, now */
	int64_t oldest_unmirrored_ms; /* age of the oldest event not in Redis; 0: none behind */
	int64_t lag_max_ms;           /* in the window */
};

void ms_stats_tick(struct ms_stats *st, int64_t mono_ms);
void ms_stats_lag(struct ms_stats *st, int64_t lag_ms);
/* The q-quantile (0..1) of the window's lag, in ms (a bucket's upper bound); -1 when empty. */
int64_t ms_stats_quantile(const struct ms_stats *st, double q);
/* Events per second over the window. */
double ms_stats_rate(const struct ms_stats *st);

/* Per record index: what the mirror knows of the session it holds. */
struct ms_sess;

struct ms_mirror {
	const char *name;
	int node; /* this broker's node_id */
	int interval_ms, batch, touch_interval_ms;
	struct shmb_seg seg; /* read-only mapping */
	int mapped;
	struct ms_sess *sess; /* [seg.cfg.max_sessions] */
	struct mr_conn redis;
	uint64_t seen_connects; /* redis.connects when the sessions were last resynchronised */
	struct ms_stats st;
	uint8_t *evbuf;              /* max_event_bytes */
	int redis_up;                /* 1 connected, -1 an outage was logged, 0 neither yet */
	uint64_t seen_auth_failures; /* redis.auth_failures when last logged */
	int status_failing;          /* the status file could not be written last time */
	uint32_t readonly_streak;    /* connections in a row that met READONLY */
	char last_error[512];        /* the last Redis error or refusal, for the status */
};

/* mirror_sync.c */
int ms_sync_init(struct ms_mirror *mm); /* after mapping: per-record state; 0 or -1 */
void ms_sync_fini(struct ms_mirror *mm);
void ms_sync_reset(struct ms_mirror *mm); /* every session learns its resume point again */
/* One pass: scan the records, learn resume points, write what changed; with figures, also the
 * sessions and events-behind figures of mm->st. */
void ms_sync_cycle(struct ms_mirror *mm, int figures);

/* mirror.c */
void ms_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
enum { MS_ERROR = 0, MS_WARNING, MS_INFO, MS_DEBUG };

#endif
