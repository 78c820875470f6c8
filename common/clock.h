/* clock.h - time helpers shared by the broker, the client and the tools.
 *
 * Session timestamps are wall-clock milliseconds (as in the seed's SessionState), so they mean
 * the same thing in every process; the broker's timers use the monotonic clock.
 *
 * Two wall clocks: shmb_now_ms() (precise; 26-31 ns through the vDSO on a KVM guest) and
 * shmb_now_coarse_ms() (the kernel's last tick, CLOCK_REALTIME_COARSE: ~7 ns, up to one tick
 * (1-10 ms) behind). The client's hot paths (open, publish, cursor_next, the wakeup re-check)
 * check expiry and stamp events with the coarse clock, every one of them the same clock so they
 * agree with each other, and read the precise clock only when they store a touch. Against TTLs
 * of seconds to hours, one tick of lag only means a session expires for the client at most one
 * tick after it does for the broker's sweeper, which retires it anyway. */
#ifndef SHMB_CLOCK_H
#define SHMB_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Wall clock in ms since the epoch (vDSO, no syscall). */
static inline int64_t shmb_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall clock in ms, as of the kernel's last tick (vDSO, no syscall, no clock read). */
static inline int64_t shmb_now_coarse_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic clock in ms, for timeouts and timers. */
static inline int64_t shmb_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic clock in ns, for short bounded spins. */
static inline int64_t shmb_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#endif
