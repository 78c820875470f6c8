/* shmbench.c - the benchmark driver: runs every scenario and baseline (bench_*.c), prints the
 * table (median, p99, the baseline measured in the same run, the ratio, the target and
 * whether it is met) and writes the results as JSON. bench.h describes the method.
 *
 *   shmbench [--quick] [--scale X] [--json FILE] [--no-million] [--only STEP]
 *            [--no-pin] [--brokerd PATH] [--segment-dir DIR] [-v]
 *
 * Exit status: 0 when every row ran (or was skipped), 1 when a row failed, 2 on a usage error. */
#include <dirent.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench.h"

#ifndef SHMBROKERD_PATH
#define SHMBROKERD_PATH "shmbrokerd"
#endif

struct bench_opts bench_opt = { .scale = 1.0, .brokerd = SHMBROKERD_PATH };

/* ---- targets ---- */

enum tgt { T_NONE = 0, T_MAX, T_RATIO_MAX, T_RATIO_MIN, T_OPEN_1K, T_PUBLISH };

struct spec {
	const char *key, *label, *group;
	int kind;
	const char *base;  /* baseline row (same run) */
	const char *redis; /* the closest Redis figure */
	int tgt;
	double tv;        /* target value */
	const char *text; /* the target as the issue states it */
};

#define MIB (1024.0 * 1024.0)
/* Baseline rows (group floor or redis) have no baseline or target of their own. */
#define BASE(k, l, g, kd)                                    \
	{                                                    \
		.key = k, .label = l, .group = g, .kind = kd \
	}
static const struct spec specs[] = {
	BASE("floor_eventfd_rt", "eventfd ping-pong, blocking read (round trip)", "floor", BK_TIME),
	BASE("floor_eventfd_epoll_rt", "eventfd ping-pong through epoll (round trip)", "floor",
	     BK_TIME),
	BASE("floor_eventfd_wake", "eventfd write() waking a process asleep in epoll", "floor",
	     BK_TIME),
	BASE("floor_cacheline_rt", "spinning shared cache line (round trip)", "floor", BK_TIME),
	BASE("floor_ring_publish", "raw ring: fetch-add + 256 B copy + release store", "floor",
	     BK_TIME),
	BASE("floor_lookup_1k", "memory of a lookup (bucket + record line 0), 1,000 sessions",
	     "floor", BK_TIME),
	BASE("floor_lookup_1m", "memory of a lookup (bucket + record line 0), 1,000,000 sessions",
	     "floor", BK_TIME),
	BASE("floor_ring_replay", "raw ring: validated read of 256 x 256 B", "floor", BK_TIME),
	BASE("floor_ring_1p1r", "raw ring 256 B: 1 producer -> 1 reader", "floor", BK_RATE),
	BASE("floor_ring_2p1r", "raw ring 256 B: 2 producers -> 1 reader", "floor", BK_RATE),
	BASE("floor_ring_1p4r", "raw ring 256 B: 1 producer -> 4 readers", "floor", BK_RATE),
	BASE("floor_ring_2p4r", "raw ring 256 B: 2 producers -> 4 readers", "floor", BK_RATE),
	BASE("floor_copy64", "64 B copy between two loads of a word (optimistic read)", "floor",
	     BK_TIME),
	BASE("floor_futex_rt", "futex ping-pong, two processes (round trip)", "floor", BK_TIME),
	BASE("redis_get_rt", "Redis GET round trip", "redis", BK_TIME),
	BASE("redis_xadd", "Redis XADD 256 B (round trip)", "redis", BK_TIME),
	BASE("redis_xread_rt", "Redis XADD -> XREAD BLOCK wake round trip", "redis", BK_TIME),
	BASE("redis_rss_idle", "redis-server resident memory, idle", "redis", BK_BYTES),

	{ .key = "open_touch_1k",
	  .label = "open+touch, 1,000 sessions",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "redis_get_rt",
	  .redis = "redis_get_rt",
	  .tgt = T_OPEN_1K,
	  .tv = 100,
	  .text = "<= 100 ns, >= 200x faster than GET" },
	{ .key = "open_touch_100k",
	  .label = "open+touch, 100,000 sessions",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "open_touch_1k",
	  .redis = "redis_get_rt" },
	{ .key = "open_touch_1m",
	  .label = "open+touch, 1,000,000 sessions",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "open_touch_1k",
	  .redis = "redis_get_rt",
	  .tgt = T_RATIO_MAX,
	  .tv = 3,
	  .text = "<= 3x the 1,000 figure (huge pages)" },
	{ .key = "publish_nosub",
	  .label = "publish 256 B, no subscriber",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_ring_publish",
	  .redis = "redis_xadd" },
	{ .key = "publish_awake",
	  .label = "publish 256 B, subscriber awake (nobody asleep)",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_ring_publish",
	  .redis = "redis_xadd",
	  .tgt = T_PUBLISH,
	  .tv = 50,
	  .text = "<= 50 ns, 0 syscalls" },
	{ .key = "publish_asleep",
	  .label = "publish 256 B, one subscriber asleep elsewhere",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_eventfd_wake",
	  .redis = "redis_xadd" },
	{ .key = "wake_rt",
	  .label = "wake round trip, two processes in epoll",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_eventfd_epoll_rt",
	  .redis = "redis_xread_rt",
	  .tgt = T_RATIO_MAX,
	  .tv = 1.2,
	  .text = "<= 1.2x eventfd via epoll" },
	{ .key = "wake_thread_rt",
	  .label = "shmb_cursor_wait wake round trip, two processes",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_futex_rt",
	  .tgt = T_RATIO_MAX,
	  .tv = 1.2,
	  .text = "<= 1.2x futex ping-pong" },
	{ .key = "publish_cursor_idle",
	  .label = "publish 256 B, cursor open, nobody waiting",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "publish_nosub",
	  .tgt = T_PUBLISH,
	  .tv = 50,
	  .text = "<= 50 ns, 0 syscalls" },
	{ .key = "replay",
	  .label = "replay 256 x 256 B through a cursor",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_ring_replay",
	  .tgt = T_MAX,
	  .tv = 15000,
	  .text = "<= 15 us" },
	{ .key = "tp_1p1r",
	  .label = "throughput 256 B: 1 publisher -> 1 reader",
	  .group = "shmb",
	  .kind = BK_RATE,
	  .base = "floor_ring_1p1r",
	  .tgt = T_RATIO_MIN,
	  .tv = 0.5,
	  .text = ">= 50% of raw ring" },
	{ .key = "tp_2p1r",
	  .label = "throughput 256 B: 2 publishers -> 1 reader",
	  .group = "shmb",
	  .kind = BK_RATE,
	  .base = "floor_ring_2p1r",
	  .tgt = T_RATIO_MIN,
	  .tv = 0.5,
	  .text = ">= 50% of raw ring" },
	{ .key = "tp_1p4r",
	  .label = "throughput 256 B: 1 publisher -> 4 readers",
	  .group = "shmb",
	  .kind = BK_RATE,
	  .base = "floor_ring_1p4r" },
	{ .key = "tp_2p4r",
	  .label = "throughput 256 B: 2 publishers -> 4 readers",
	  .group = "shmb",
	  .kind = BK_RATE,
	  .base = "floor_ring_2p4r" },
	{ .key = "syscalls_per_event",
	  .label = "syscalls per event, subscriber keeping up",
	  .group = "shmb",
	  .kind = BK_COUNT,
	  .tgt = T_MAX,
	  .tv = 0.05,
	  .text = "<= 0.05" },
	{ .key = "syscalls_per_event_paced",
	  .label = "syscalls per event, publisher paced at 1 / 20 us",
	  .group = "shmb",
	  .kind = BK_COUNT },
	{ .key = "attr_stat",
	  .label = "session stat (section, handle check, copy): attribute baseline",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "floor_copy64" },
	{ .key = "attr_get",
	  .label = "attribute get, 64 B",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "attr_stat",
	  .redis = "redis_get_rt",
	  .tgt = T_MAX,
	  .tv = 100,
	  .text = "<= 100 ns" },
	{ .key = "attr_set",
	  .label = "attribute set, 64 B",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "attr_stat",
	  .tgt = T_MAX,
	  .tv = 300,
	  .text = "<= 300 ns" },
	{ .key = "attr_cas",
	  .label = "attribute set_if, 2 processes on one key (per increment)",
	  .group = "shmb",
	  .kind = BK_TIME,
	  .base = "attr_set",
	  .text = "no update lost" },
	{ .key = "broker_rss_idle",
	  .label = "broker resident memory, idle, defaults",
	  .group = "shmb",
	  .kind = BK_BYTES,
	  .base = "redis_rss_idle",
	  .redis = "redis_rss_idle",
	  .tgt = T_MAX,
	  .tv = 16 * MIB,
	  .text = "<= 16 MiB" },
};
#define NSPECS (sizeof specs / sizeof specs[0])
static struct bench_row results[NSPECS];

struct bench_row *bench_row(const char *key)
{
	for (size_t i = 0; i < NSPECS; i++)
		if (strcmp(specs[i].key, key) == 0)
			return &results[i];
	fprintf(stderr, "shmbench: internal error: no row '%s'\n", key);
	abort();
}

static const struct bench_row *row_ok(const char *key)
{
	if (!key)
		return NULL;
	const struct bench_row *r = bench_row(key);
	return r->status == BS_OK ? r : NULL;
}

static double ratio(const struct bench_row *r, const struct bench_row *b)
{
	return r && b && b->median > 0 ? r->median / b->median : 0;
}

/* 1 met, 0 not met, -1 cannot tell (a row missing), -2 no target. */
static int check(const struct spec *s, const struct bench_row *r)
{
	if (s->tgt == T_NONE)
		return -2;
	if (r->status != BS_OK)
		return -1;
	const struct bench_row *b = row_ok(s->base);
	switch (s->tgt) {
	case T_MAX:
		return r->median <= s->tv;
	case T_RATIO_MAX:
		return b ? ratio(r, b) <= s->tv : -1;
	case T_RATIO_MIN:
		return b ? ratio(r, b) >= s->tv : -1;
	case T_OPEN_1K:
		if (r->median > s->tv)
			return 0;
		return b ? b->median / r->median >= 200 : -1;
	case T_PUBLISH:
		return r->median <= s->tv && r->extra == 0;
	}
	return -2;
}

/* ---- formatting ---- */

static void fmt_value(char *buf, size_t len, int kind, double v)
{
	switch (kind) {
	case BK_TIME:
		if (v < 1000)
			snprintf(buf, len, "%.1f ns", v);
		else if (v < 1e6)
			snprintf(buf, len, "%.2f us", v / 1e3);
		else
			snprintf(buf, len, "%.2f ms", v / 1e6);
		break;
	case BK_RATE:
		snprintf(buf, len, "%.2f M/s", v / 1e6);
		break;
	case BK_COUNT:
		snprintf(buf, len, "%.4f", v);
		break;
	default:
		snprintf(buf, len, "%.1f MiB", v / MIB);
	}
}

static void fmt_ratio(char *buf, size_t len, double x)
{
	if (x <= 0)
		snprintf(buf, len, "-");
	else if (x < 0.1)
		snprintf(buf, len, "1/%.0f", 1 / x);
	else
		snprintf(buf, len, "%.2fx", x);
}

static const char *status_text(int st)
{
	return st == BS_OK        ? "ok"
	       : st == BS_SKIPPED ? "skipped"
	       : st == BS_FAILED  ? "FAILED"
				  : "not run";
}

static void print_table(FILE *out)
{
	char m[32], p[32], rb[32], rr[32];
	fprintf(out, "\n%-54s %11s %11s\n", "BASELINES (same run)", "median", "p99");
	for (size_t i = 0; i < NSPECS; i++) {
		const struct spec *s = &specs[i];
		const struct bench_row *r = &results[i];
		if (strcmp(s->group, "shmb") == 0)
			continue;
		if (r->status != BS_OK) {
			fprintf(out, "  %-52s %s: %s\n", s->label, status_text(r->status), r->note);
			continue;
		}
		fmt_value(m, sizeof m, s->kind, r->median);
		fmt_value(p, sizeof p, s->kind, r->p99);
		fprintf(out, "  %-52s %11s %11s\n", s->label, m, p);
	}
	fprintf(out, "\n%-54s %11s %11s  %-44s %6s %9s  %-38s %s\n", "SHMBROKER", "median", "p99",
		"baseline (same run)", "ratio", "vs Redis", "target", "met");
	for (size_t i = 0; i < NSPECS; i++) {
		const struct spec *s = &specs[i];
		const struct bench_row *r = &results[i];
		if (strcmp(s->group, "shmb") != 0)
			continue;
		if (r->status != BS_OK) {
			fprintf(out, "  %-52s %s: %s\n", s->label, status_text(r->status), r->note);
			continue;
		}
		fmt_value(m, sizeof m, s->kind, r->median);
		fmt_value(p, sizeof p, s->kind, r->p99);
		const struct bench_row *b = row_ok(s->base);
		fmt_ratio(rb, sizeof rb, ratio(r, b));
		fmt_ratio(rr, sizeof rr, ratio(r, row_ok(s->redis)));
		char base[64] = "-";
		if (s->base) {
			char bv[32] = "n/a";
			if (b)
				fmt_value(bv, sizeof bv, s->kind, b->median);
			size_t j = 0;
			while (j < NSPECS && strcmp(specs[j].key, s->base) != 0)
				j++;
			snprintf(base, sizeof base, "%.32s %s",
				 j < NSPECS ? specs[j].label : s->base, bv);
		}
		int c = check(s, r);
		fprintf(out, "  %-52s %11s %11s  %-44s %6s %9s  %-38s %s\n", s->label, m, p, base,
			rb, rr, s->text ? s->text : "-",
			c == 1    ? "yes"
			: c == 0  ? "NO"
			: c == -1 ? "?"
				  : "");
	}
	fprintf(out, "\nratio: shmbroker / baseline (times: lower is better; rates: higher is "
		     "better)\n");
}

/* ---- JSON ---- */

static const char *kind_unit(int k)
{
	return k == BK_TIME    ? "ns"
	       : k == BK_RATE  ? "events/s"
	       : k == BK_COUNT ? "per event"
			       : "bytes";
}

/* The 1-minute load average (other work on the machine makes the figures noisy). */
static double loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static double load_start, load_end;

static int write_json(const char *path, double secs, double clock_ns)
{
	cJSON *doc = cJSON_CreateObject();
	cJSON_AddNumberToObject(doc, "schema_version", 1);
	cJSON_AddStringToObject(doc, "tool", "shmbench");
	cJSON_AddStringToObject(doc, "shmb_version", shmb_version());
	const char *commit = getenv("SHMB_BENCH_COMMIT"); /* set by tools/bench.sh */
	if (commit && *commit)
		cJSON_AddStringToObject(doc, "commit", commit);
	cJSON *mach = cJSON_AddObjectToObject(doc, "machine");
	cJSON_AddNumberToObject(mach, "nproc", (double)sysconf(_SC_NPROCESSORS_ONLN));
	char cpu[256] = "unknown", line[512];
	FILE *f = fopen("/proc/cpuinfo", "r");
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "model name", 10) == 0) {
			char *c = strchr(line, ':');
			if (c) {
				snprintf(cpu, sizeof cpu, "%s", c + 2);
				cpu[strcspn(cpu, "\n")] = 0;
			}
			break;
		}
	if (f)
		fclose(f);
	cJSON_AddStringToObject(mach, "cpu", cpu);
	struct utsname u;
	if (uname(&u) == 0)
		cJSON_AddStringToObject(mach, "kernel", u.release);
	cJSON_AddNumberToObject(mach, "clock_gettime_ns", clock_ns);
	cJSON_AddNumberToObject(mach, "loadavg_start", load_start);
	cJSON_AddNumberToObject(mach, "loadavg_end", load_end);
	time_t now = time(NULL);
	char ts[64];
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	cJSON_AddStringToObject(doc, "finished_at", ts);
	cJSON_AddNumberToObject(doc, "duration_s", secs);
	cJSON_AddNumberToObject(doc, "scale", bench_opt.scale);
	cJSON *rows = cJSON_AddArrayToObject(doc, "rows");
	int met = 0, unmet = 0, unknown = 0;
	for (size_t i = 0; i < NSPECS; i++) {
		const struct spec *s = &specs[i];
		const struct bench_row *r = &results[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "key", s->key);
		cJSON_AddStringToObject(o, "label", s->label);
		cJSON_AddStringToObject(o, "group", s->group);
		cJSON_AddStringToObject(o, "unit", kind_unit(s->kind));
		cJSON_AddStringToObject(o, "status", status_text(r->status));
		if (r->status == BS_OK) {
			cJSON_AddNumberToObject(o, "median", r->median);
			cJSON_AddNumberToObject(o, "p99", r->p99);
			cJSON_AddNumberToObject(o, "samples", r->samples);
		}
		if (s->base) {
			cJSON_AddStringToObject(o, "baseline", s->base);
			const struct bench_row *b = row_ok(s->base);
			if (b && r->status == BS_OK)
				cJSON_AddNumberToObject(o, "ratio", ratio(r, b));
		}
		const struct bench_row *rd = row_ok(s->redis);
		if (rd && r->status == BS_OK)
			cJSON_AddNumberToObject(o, "ratio_to_redis", ratio(r, rd));
		if (s->text) {
			cJSON_AddStringToObject(o, "target", s->text);
			int c = check(s, r);
			if (c >= 0)
				cJSON_AddBoolToObject(o, "met", c);
			else
				cJSON_AddNullToObject(o, "met");
			met += c == 1;
			unmet += c == 0;
			unknown += c == -1;
		}
		if (r->note[0])
			cJSON_AddStringToObject(o, "note", r->note);
		cJSON_AddItemToArray(rows, o);
	}
	cJSON *t = cJSON_AddObjectToObject(doc, "targets");
	cJSON_AddNumberToObject(t, "met", met);
	cJSON_AddNumberToObject(t, "not_met", unmet);
	cJSON_AddNumberToObject(t, "unknown", unknown);
	char *txt = cJSON_Print(doc);
	cJSON_Delete(doc);
	FILE *o = txt ? fopen(path, "w") : NULL;
	int rc = o && fputs(txt, o) >= 0 && fputc('\n', o) != EOF ? 0 : -1;
	if (o && fclose(o) != 0)
		rc = -1;
	free(txt);
	printf("targets: %d met, %d not met%s; results written to %s\n", met, unmet,
	       unknown ? " (some could not be judged)" : "", path);
	return rc;
}

/* ---- run ---- */

static char rtdir[64];

static void remove_rtdir(void)
{
	if (!rtdir[0])
		return;
	DIR *d = opendir(rtdir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char p[512];
		snprintf(p, sizeof p, "%s/%s", rtdir, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(rtdir);
}

static void on_signal(int sig)
{
	bench_cleanup_all();
	remove_rtdir();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: shmbench [OPTIONS]\n"
		"Runs shmbroker's benchmark scenarios and their baselines, prints the table and\n"
		"writes the results as JSON.\n"
		"  --quick          fewer samples (--scale 0.2)\n"
		"  --scale X        multiply sample counts and event counts by X (default 1)\n"
		"  --json FILE      where to write the results (default bench-results.json)\n"
		"  --no-million     skip the 1,000,000-session row (it needs ~0.7 GiB of "
		"/dev/shm)\n"
		"  --only STEP      run only the steps whose name contains STEP: memory,\n"
		"                   open_touch, publish, asleep, wake, cacheline, replay,\n"
		"                   throughput, syscalls, attr, wake_thread\n"
		"  --no-pin         do not pin communicating processes to different CPUs\n"
		"  --brokerd PATH   shmbrokerd to run (default: the one built beside shmbench)\n"
		"  --segment-dir DIR  open+touch brokers create their segments in DIR (e.g. a\n"
		"                   tmpfs mounted huge=always) and the lookup floor maps a file\n"
		"                   there (default: /dev/shm, anonymous memory)\n"
		"  -v, --verbose    progress on stderr\n"
		"  -h, --help       this help\n");
}

static double clock_cost(void)
{
	uint64_t t0 = bench_ns();
	for (int i = 0; i < 10000; i++)
		(void)bench_ns();
	return (double)(bench_ns() - t0) / 10000;
}

/* ---- the run: steps, each alternating its baselines and shmbroker in chunks ---- */

#define CHUNKS 3

/* Samples per chunk for a row of `total` samples in all. */
static int chunk(int total)
{
	int n = bench_n(total, 10 * CHUNKS) / CHUNKS;
	return n < 10 ? 10 : n;
}

static void get_between(int round, int rounds)
{
	(void)round;
	int n = bench_n(5000, 500) / (rounds ? rounds : 1);
	redis_get_chunk(n < 10 ? 10 : n);
}

static void step_memory(void)
{
	shmb_broker_rss();
}

static void step_open(void)
{
	floor_lookup("floor_lookup_1k", 1000, bench_n(300, 50));
	if (bench_opt.skip_million)
		bench_skip(bench_row("floor_lookup_1m"), "--no-million");
	else
		floor_lookup("floor_lookup_1m", 1000000, bench_n(300, 50));
	shmb_open_touch(get_between);
}

static void step_publish(void)
{
	for (int k = 0; k < CHUNKS; k++) {
		floor_ring_publish(chunk(300));
		shmb_publish_chunk(0, chunk(300));
		shmb_publish_chunk(1, chunk(300));
		redis_xadd_chunk(chunk(5000));
	}
}

static void step_asleep(void)
{
	for (int k = 0; k < CHUNKS; k++) {
		floor_eventfd_wake(chunk(2000));
		shmb_asleep_chunk(chunk(2000));
	}
}

static void step_wake(void)
{
	for (int k = 0; k < CHUNKS; k++) {
		floor_eventfd_pingpong(0, chunk(5000));
		floor_eventfd_pingpong(1, chunk(5000));
		shmb_wake_chunk(chunk(5000));
		redis_xread_chunk(chunk(3000));
	}
}

static void step_cacheline(void)
{
	floor_cacheline(bench_n(2000, 200));
}

static void step_replay(void)
{
	for (int k = 0; k < CHUNKS; k++) {
		floor_ring_replay(chunk(2000));
		shmb_replay_chunk(chunk(2000));
	}
}

/* Events of one throughput run: total over the chunks, a whole number of windows. */
static uint64_t tp_events(uint64_t total, int chunks)
{
	uint64_t n = (uint64_t)bench_n((int)total, (int)(total / 10)) / (uint64_t)chunks;
	n = n / BENCH_WINDOW * BENCH_WINDOW;
	return n < 8 * BENCH_WINDOW ? 8 * BENCH_WINDOW : n;
}

static void step_throughput(void)
{
	static const struct {
		const char *raw, *shmb;
		int p, r;
	} cfg[] = { { "floor_ring_1p1r", "tp_1p1r", 1, 1 },
		    { "floor_ring_2p1r", "tp_2p1r", 2, 1 },
		    { "floor_ring_1p4r", "tp_1p4r", 1, 4 },
		    { "floor_ring_2p4r", "tp_2p4r", 2, 4 } };
	for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
		uint64_t n = tp_events(cfg[i].r == 1 ? 2000000 : 500000, 2);
		for (int k = 0; k < 2; k++) {
			floor_ring_tp(cfg[i].raw, cfg[i].p, cfg[i].r, n);
			shmb_tp(cfg[i].shmb, cfg[i].p, cfg[i].r, n);
		}
	}
}

static void step_syscalls(void)
{
	shmb_syscalls("syscalls_per_event", tp_events(2000000, 1), 0);
	shmb_syscalls("syscalls_per_event_paced", (uint64_t)bench_n(10000, 2000), 20000);
}

int main(int argc, char **argv)
{
	const char *json = "bench-results.json";
	static const struct option opts[] = {
		{ "quick", no_argument, NULL, 'q' },
		{ "scale", required_argument, NULL, 's' },
		{ "json", required_argument, NULL, 'j' },
		{ "no-million", no_argument, NULL, 'm' },
		{ "only", required_argument, NULL, 'o' },
		{ "brokerd", required_argument, NULL, 'b' },
		{ "no-pin", no_argument, NULL, 'p' },
		{ "segment-dir", required_argument, NULL, 'd' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	for (int ch; (ch = getopt_long(argc, argv, "vh", opts, NULL)) != -1;) {
		switch (ch) {
		case 'q':
			bench_opt.scale = 0.2;
			break;
		case 's':
			bench_opt.scale = atof(optarg);
			if (bench_opt.scale <= 0 || bench_opt.scale > 100) {
				fprintf(stderr, "shmbench: --scale must be in (0, 100]\n");
				return 2;
			}
			break;
		case 'j':
			json = optarg;
			break;
		case 'm':
			bench_opt.skip_million = 1;
			break;
		case 'o':
			bench_opt.only = optarg;
			break;
		case 'b':
			bench_opt.brokerd = optarg;
			break;
		case 'p':
			bench_opt.no_pin = 1;
			break;
		case 'd':
			bench_opt.segment_dir = optarg;
			break;
		case 'v':
			bench_opt.verbose = 1;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (access(bench_opt.brokerd, X_OK) != 0) {
		fprintf(stderr, "shmbench: cannot run shmbrokerd at %s (use --brokerd)\n",
			bench_opt.brokerd);
		return 2;
	}
	for (size_t i = 0; i < NSPECS; i++) {
		results[i].key = specs[i].key;
		results[i].label = specs[i].label;
		results[i].kind = specs[i].kind;
	}
	snprintf(rtdir, sizeof rtdir, "/tmp/shmbench.XXXXXX");
	if (!mkdtemp(rtdir)) {
		perror("shmbench: mkdtemp");
		return 1;
	}
	setenv("SHMB_RUNTIME_DIR", rtdir, 1);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);

	double clock_ns = clock_cost();
	uint64_t t0 = bench_ns();
	load_start = loadavg();
	printf("shmbench %s: %ld CPUs, clock_gettime %.1f ns, load average %.2f\n", shmb_version(),
	       sysconf(_SC_NPROCESSORS_ONLN), clock_ns, load_start);
	if (load_start > 0.5)
		printf("  note: the machine is busy (load %.2f): expect noisy figures\n",
		       load_start);
	fflush(stdout);
	static const struct {
		const char *name;
		void (*run)(void);
		int events; /* needs the events broker */
	} steps[] = {
		{ "memory", step_memory, 0 },
		{ "open_touch", step_open, 0 },
		{ "publish", step_publish, 1 },
		{ "asleep", step_asleep, 1 },
		{ "wake", step_wake, 1 },
		{ "cacheline", step_cacheline, 0 },
		{ "replay", step_replay, 1 },
		{ "throughput", step_throughput, 1 },
		{ "syscalls", step_syscalls, 1 },
		{ "attr", shmb_attr_bench, 0 },
		{ "wake_thread", bench_waits_step, 1 }, /* bench_waits.c */
	};
	bench_pin(
		0); /* partners pin themselves to CPU 1; brokers and redis-server are not pinned */
	redis_start();
	int events_up = 0;
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		if (bench_opt.only && !strstr(steps[i].name, bench_opt.only))
			continue;
		if (steps[i].events && !events_up)
			events_up = shmb_events_start() == 0 ? 1 : -1;
		uint64_t g0 = bench_ns();
		steps[i].run();
		printf("  %-10s done in %5.1f s\n", steps[i].name, (double)(bench_ns() - g0) / 1e9);
		fflush(stdout);
	}
	if (events_up)
		shmb_events_stop();
	redis_stop();
	bench_pin(-1);
	for (size_t i = 0; i < NSPECS; i++)
		bench_finish(&results[i]);
	double secs = (double)(bench_ns() - t0) / 1e9;
	load_end = loadavg();
	bench_cleanup_all();
	remove_rtdir();
	print_table(stdout);
	int failed = 0;
	for (size_t i = 0; i < NSPECS; i++)
		failed |= results[i].status == BS_FAILED;
	if (write_json(json, secs, clock_ns) < 0) {
		fprintf(stderr, "shmbench: cannot write %s\n", json);
		return 1;
	}
	printf("total %.0f s, load average %.2f at the end\n", secs, load_end);
	return failed ? 1 : 0;
}
