/* mirror_stats.c - shmb-mirror's figures: counters and the lag histogram.
 *
 * Lag is the time from an event's publish (its ts_ms, wall clock) to Redis acknowledging the
 * write that holds it, in ms. It goes to a histogram of fixed buckets, one per second, and the
 * last MS_LAG_WINDOW_S seconds' histograms summed give the p50 and p99 the status reports (a
 * bucket's upper bound: the figure is never below the truth). Memory is fixed. */
#include <string.h>

#include "mirror.h"

static const int64_t bounds[MS_LAG_BUCKETS - 1] = {
	0,  1,  2,   3,   4,   5,   6,   8,   10,   12,   15,   20,   25,   30,    40,    50,
	60, 80, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000,
};

void ms_stats_tick(struct ms_stats *st, int64_t mono_ms)
{
	int64_t s = mono_ms / 1000;
	if (st->slice_s == 0)
		st->slice_s = s;
	while (st->slice_s < s) {
		st->slice_s++;
		st->slice = (st->slice + 1) % MS_LAG_WINDOW_S;
		memset(st->lag[st->slice], 0, sizeof st->lag[st->slice]);
		st->events_window[st->slice] = 0;
		if (s - st->slice_s > MS_LAG_WINDOW_S) /* a long pause: everything is old */
			st->slice_s = s - MS_LAG_WINDOW_S;
	}
}

void ms_stats_lag(struct ms_stats *st, int64_t lag_ms)
{
	if (lag_ms < 0)
		lag_ms = 0; /* clocks of publisher and mirror are the same wall clock: rounding */
	int b = 0;
	while (b < MS_LAG_BUCKETS - 1 && lag_ms > bounds[b])
		b++;
	st->lag[st->slice][b]++;
}

int64_t ms_stats_quantile(const struct ms_stats *st, double q)
{
	uint64_t sum[MS_LAG_BUCKETS] = { 0 }, n = 0;
	for (int s = 0; s < MS_LAG_WINDOW_S; s++)
		for (int b = 0; b < MS_LAG_BUCKETS; b++) {
			sum[b] += st->lag[s][b];
			n += st->lag[s][b];
		}
	if (n == 0)
		return -1;
	uint64_t want = (uint64_t)(q * (double)n), acc = 0;
	if (want >= n)
		want = n - 1;
	for (int b = 0; b < MS_LAG_BUCKETS; b++) {
		acc += sum[b];
		if (acc > want)
			return b < MS_LAG_BUCKETS - 1 ? bounds[b] : 60000;
	}
	return 60000;
}

double ms_stats_rate(const struct ms_stats *st)
{
	uint64_t n = 0;
	for (int s = 0; s < MS_LAG_WINDOW_S; s++)
		if ((uint32_t)s != st->slice) /* the current second is not over */
			n += st->events_window[s];
	return (double)n / (MS_LAG_WINDOW_S - 1);
}
