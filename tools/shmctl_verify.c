/* shmctl_verify.c - `shmctl verify`: seg_verify() over a read-only mapping (common/verify.h).
 *
 * A header that fails validation at map time (bad magic, version, fingerprint, sizes, region
 * table) is damage too: the segment exists but nobody can use it, so that is exit 4 with the
 * reason as the one problem; only a missing or unreadable segment is exit 3. seg_verify() reads
 * without synchronising with the broker, so while the broker is alive a problem may be a change
 * caught half-way: verify then runs again (up to three runs, 100 ms apart) and reports the last
 * run, so only damage that persists is reported. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "seg.h"
#include "shmb.h"
#include "shmctl.h"
#include "verify.h"

#define VERIFY_MAX_KEPT 100000 /* problems kept for --json; the rest are counted */
#define VERIFY_RUNS 3

struct problems {
	char **v;
	size_t n, cap;
	size_t dropped;
	int oom;
};

static void collect(void *ctx, const char *problem)
{
	struct problems *p = ctx;
	if (p->n >= VERIFY_MAX_KEPT) {
		p->dropped++;
		return;
	}
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 32;
		char **v = realloc(p->v, cap * sizeof *v);
		if (!v) {
			p->oom = 1;
			p->dropped++;
			return;
		}
		p->v = v;
		p->cap = cap;
	}
	char *s = strdup(problem);
	if (!s) {
		p->oom = 1;
		p->dropped++;
		return;
	}
	p->v[p->n++] = s;
}

static void problems_clear(struct problems *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->v[i]);
	free(p->v);
	*p = (struct problems){ 0 };
}

static cJSON *checked_json(const struct seg_verify_stats *st)
{
	cJSON *c = cJSON_CreateObject();
	shmctl_json_u64(c, "records", st->records);
	shmctl_json_u64(c, "free", st->by_state[SHMB_REC_FREE]);
	shmctl_json_u64(c, "linking", st->by_state[SHMB_REC_LINKING]);
	shmctl_json_u64(c, "live", st->by_state[SHMB_REC_LIVE]);
	shmctl_json_u64(c, "unlinking", st->by_state[SHMB_REC_UNLINKING]);
	shmctl_json_u64(c, "retired", st->by_state[SHMB_REC_RETIRED]);
	shmctl_json_u64(c, "bad_state", st->bad_state);
	shmctl_json_u64(c, "buckets", st->buckets);
	shmctl_json_u64(c, "chains", st->chains);
	shmctl_json_u64(c, "chained", st->chained);
	shmctl_json_u64(c, "longest_chain", st->longest_chain);
	shmctl_json_u64(c, "workers", st->workers);
	shmctl_json_u64(c, "workers_live", st->workers_live);
	shmctl_json_u64(c, "workers_dead", st->workers_dead);
	shmctl_json_u64(c, "readers", st->readers);
	shmctl_json_u64(c, "readers_in_use", st->readers_in_use);
	shmctl_json_u64(c, "readers_in_section", st->readers_in_section);
	shmctl_json_u64(c, "ledger_in_use", st->ledger_in_use);
	shmctl_json_u64(c, "counters", st->counters);
	shmctl_json_u64(c, "events", st->events);
	shmctl_json_u64(c, "rcu_gp", st->rcu_gp);
	return c;
}

/* Prints the outcome; returns the exit status. */
static int report(const struct shmctl_opts *o, const struct problems *p, size_t total,
		  const struct seg_verify_stats *st)
{
	if (o->json) {
		cJSON *doc = cJSON_CreateObject();
		shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
		cJSON_AddStringToObject(doc, "name", o->name);
		cJSON_AddBoolToObject(doc, "ok", total == 0);
		cJSON *arr = cJSON_AddArrayToObject(doc, "problems");
		for (size_t i = 0; i < p->n; i++)
			cJSON_AddItemToArray(arr, cJSON_CreateString(p->v[i]));
		shmctl_json_u64(doc, "problem_count", total);
		if (p->dropped)
			shmctl_json_u64(doc, "problems_not_listed", p->dropped);
		cJSON_AddItemToObject(doc, "checked", st ? checked_json(st) : cJSON_CreateObject());
		int rc = shmctl_json_print(doc, "verify");
		return rc ? rc : total ? SHMCTL_DAMAGED : SHMCTL_OK;
	}
	for (size_t i = 0; i < p->n; i++)
		printf("%s\n", p->v[i]);
	if (p->dropped)
		printf("(%zu more problems not listed)\n", p->dropped);
	if (total) {
		printf("verify: %zu problem%s\n", total, total == 1 ? "" : "s");
		return SHMCTL_DAMAGED;
	}
	printf("verify: ok (%u records: %u live, %u retired, %u free; %u buckets, %u chains, "
	       "longest %u; %u worker slots, %u live; %u reader slots, %u in use)\n",
	       st->records, st->by_state[SHMB_REC_LIVE], st->by_state[SHMB_REC_RETIRED],
	       st->by_state[SHMB_REC_FREE], st->buckets, st->chains, st->longest_chain, st->workers,
	       st->workers_live, st->readers, st->readers_in_use);
	return SHMCTL_OK;
}

int shmctl_cmd_verify(const struct shmctl_opts *o)
{
	struct shmb_seg seg;
	int raw;
	char why[256];
	struct problems p = { 0 };
	int rc = shmctl_open(o, "verify", &seg, &raw, why, sizeof why);
	if (rc) {
		if (raw != SHMB_ECORRUPT && raw != SHMB_EVERSION && raw != SHMB_EBROKER)
			return rc; /* no segment, or not readable: message printed */
		/* The segment exists but its header is unusable: that is damage. */
		char line[320];
		if (raw == SHMB_EBROKER)
			snprintf(line, sizeof line,
				 "header: magic is 0: the segment is still being built, or its "
				 "header was wiped");
		else
			snprintf(line, sizeof line, "header: %s", why);
		collect(&p, line);
		rc = report(o, &p, 1, NULL);
		problems_clear(&p);
		return rc;
	}

	struct seg_verify_stats st;
	int n = 0;
	for (int run = 0; run < VERIFY_RUNS; run++) {
		if (run) {
			problems_clear(&p);
			usleep(100 * 1000);
		}
		n = seg_verify(&seg, collect, &p, &st);
		if (n <= 0)
			break;
		int alive;
		shmctl_broker_state(&seg, &alive);
		if (!alive)
			break; /* nobody is changing the segment: what we saw is what is there */
	}
	seg_unmap(&seg);
	if (n < 0) {
		problems_clear(&p);
		shmctl_fail("verify", "%s", shmb_strerror(n));
		return SHMCTL_UNAVAIL;
	}
	if (p.oom)
		fprintf(stderr, "shmctl: verify: out of memory: some problems are not listed\n");
	rc = report(o, &p, (size_t)n, &st);
	problems_clear(&p);
	return rc;
}
