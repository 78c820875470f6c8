/* clock.h - time helpers shared by the broker, the client and the tools.
 *
 * Session timestamps are wall-clock milliseconds (as in the seed's SessionState), so they mean
 * the same thing in every process; the broker's timers use the monotonic clock. */
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
