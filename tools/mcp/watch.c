/* watch.c - the master's watch on the broker it started: is it alive but hung?
 *
 * A dead broker is seen by waitpid(); a stopped or stuck one is not, and every create, delete
 * and attach then waits libshmb's 5 s control timeout (the workers answer 503 meanwhile:
 * ctl.c). The broker refreshes heartbeat_ms in the segment header on every tick of its loop
 * (100 ms, or 10 ms while it reclaims; broker/loop.c), which `shmctl status` shows as its
 * heartbeat. The master maps the segment read-only, as shmctl does (the read-only layout
 * accessors of common/seg.h), and calls the broker hung when that value has not changed for
 * --broker-hang-ms by the master's monotonic clock: a change of the wall clock the value is
 * written in cannot fake a silence, and neither can a stop of the master itself (WATCH_GAP_MS). The mapping is made again when the header names another
 * broker pid than ours (a broker that built a new segment).
 *
 * Workers map it too (watch_heartbeat_age_ms), to answer what needs the broker with 503 at
 * once while its heartbeat is older than --broker-wait-ms, before their own broker thread is
 * found stuck (ctl.c). That is a comparison with the wall clock the heartbeat is written in: a
 * jump of the clock can make it look old for at most one broker tick (its next heartbeat
 * writes the new time), which costs a few 503s, never a kill. */
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "seg.h"

#include "mcp.h"

/* The master looks every 250 ms (main.c); a longer gap between two looks means the master itself
 * did not run (stopped with its process group, as by ^Z, frozen, starved of CPU), so it did not
 * see the broker silent that long: the broker was as likely stopped with it. */
#define WATCH_GAP_MS 1000

static struct shmb_seg seg;
static int mapped;
static int64_t last_beat = -1, beat_seen_ms, last_look_ms;

/* Maps the instance's segment, unmapping first a mapping `stale` says is of another broker or
 * segment. Returns 1 when mapped, 0 when it cannot be (not there yet, not ours to open). */
static int map_segment(int stale)
{
	if (mapped && stale) {
		seg_unmap(&seg);
		mapped = 0;
	}
	if (!mapped) {
		char why[256];
		const char *name = mcp_cfg.name ? mcp_cfg.name : getenv("SHMB_NAME");
		if (seg_open_name(name && *name ? name : "default", 0, &seg, why, sizeof why) != 0)
			return 0;
		mapped = 1;
		last_beat = -1;
	}
	return 1;
}

/* 1 when broker pid has not beaten for --broker-hang-ms; 0 otherwise (also while it cannot be
 * told: no segment mapped yet). */
int watch_broker_hung(int pid, int64_t now)
{
	if (!map_segment(mapped && uatomic_read(&seg_hdr(&seg)->broker_pid) != (int32_t)pid))
		return 0;
	/* A silence counts only while the master was there to see it: after a gap in its own
	 * looks it starts again (else a broker stopped and continued with the master, e.g. ^Z and
	 * fg, was killed at the master's first look after the SIGCONT, before its own next tick). */
	if (last_look_ms && now - last_look_ms > WATCH_GAP_MS)
		beat_seen_ms = now;
	last_look_ms = now;
	/* Written by the broker's loop (brk_heartbeat), unordered: only its changes matter. */
	int64_t beat = uatomic_read(&seg_hdr(&seg)->heartbeat_ms);
	if (beat != last_beat || uatomic_read(&seg_hdr(&seg)->broker_pid) != (int32_t)pid) {
		last_beat = beat;
		beat_seen_ms = now;
		return 0;
	}
	return now - beat_seen_ms > (int64_t)mcp_ops.broker_hang_ms;
}

int64_t watch_heartbeat_age_ms(void)
{
	/* Mapped again once the segment is retired: the worker restarts on the new one anyway. */
	if (!map_segment(mapped && uatomic_read(&seg_hdr(&seg)->retired)))
		return -1;
	/* Written by the broker's loop (brk_heartbeat), unordered. */
	return shmb_now_ms() - uatomic_read(&seg_hdr(&seg)->heartbeat_ms);
}

/* A new broker starts: its first beat starts the clock again. */
void watch_reset(int64_t now)
{
	last_beat = -1;
	beat_seen_ms = now;
	last_look_ms = now;
}

void watch_fini(void)
{
	if (mapped)
		seg_unmap(&seg);
	mapped = 0;
}
