/* segment.c - building a new segment, or validating and adopting an existing one.
 *
 * Build (iceoryx2/Aeron "publish the header last"): shm_open with O_EXCL and mode 01600 (the
 * sticky bit says "being built"), size it, reserve every page with posix_fallocate (a full
 * /dev/shm is a start-up error, not a SIGBUS later), write the header, configuration, region
 * table and counter labels, then release-store the magic and only then fchmod to the final mode
 * (0600, or 0640: access.c). The event and data regions are left as the zero pages fallocate
 * made, so the broker's RSS stays small. broker_generation is written after the magic (at
 * start), so a segment with magic 0 *and* generation 0, or empty with the sticky bit, is provably
 * a build that crashed (we hold the instance lock, so its builder is dead): it is removed and
 * rebuilt. One shorter than its sound header says, or than a header, without the sticky bit, was
 * truncated by someone with write access: its sessions are gone, and the log says so before it
 * is rebuilt (docs/security.md).
 *
 * Where: shm_open("/shmb.<name>") in /dev/shm by default, or with segment_dir the file
 * <segment_dir>/shmb.<name> (open with O_NOFOLLOW; the same flags, modes, sticky-bit protocol,
 * classification and unlink rules), so an operator can give the segment huge pages: a tmpfs
 * mounted huge=always (or huge=advise: every mapping is advised MADV_HUGEPAGE, seg.c). The
 * directory must be a tmpfs that trust_check_dir accepts; hugetlbfs is refused (its files are
 * sized in whole huge pages, and segment_size must equal the file's size). The broker writes
 * the segment's path into <runtime dir>/<name>.segment ("path file", replaced atomically) so
 * that shmctl finds the segment with the broker dead (seg_locate, common/seg.c); without
 * segment_dir it removes a stale path file (and says so). Changing segment_dir between two runs
 * does not move a segment: the new broker builds a new one where it is told (and warns when a
 * /dev/shm one is left behind).
 *
 * Adopt: only a segment owned by our uid (another user may have created the name first); then
 * seg_map() validates the header; any failure refuses the segment (never overwritten).
 * Then one bounded pass over every bucket chain marks which records are reachable (a cycle, an
 * out-of-range link, a record in two chains or in the wrong bucket, or a FREE/RETIRED record in a
 * chain refuses the segment as damaged), and each record's state is settled the way the index
 * writer (index.c) would have finished it: LINKING reachable -> LIVE, unreachable -> FREE;
 * UNLINKING -> unlinked and RETIRED; RETIRED -> queued for reclamation. Every step is idempotent,
 * so a broker killed during adoption adopts again. Worker slots are settled in workers.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "ctl.h"
#include "fault.h"
#include "proc.h"
#include "rcu.h"
#include "sid.h"
#include "shmb.h"
#include "trust.h"
#include "wake.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

/* The segment object: shm_open's name, or the file in segment_dir. */
static int obj_open(struct brk *b, int flags, mode_t mode)
{
	if (!b->cfg.segment_dir[0])
		return shm_open(b->shm_name, flags, mode);
	return open(b->seg_path, flags | O_NOFOLLOW, mode);
}

static int obj_unlink(struct brk *b)
{
	if (!b->cfg.segment_dir[0])
		return shm_unlink(b->shm_name);
	return unlink(b->seg_path);
}

static const char *const counter_labels[SHMB_COUNTER_COUNT] = {
	[SHMB_CTR_SESSIONS_CREATED] = "sessions_created",
	[SHMB_CTR_SESSIONS_DELETED] = "sessions_deleted",
	[SHMB_CTR_SESSIONS_EXPIRED] = "sessions_expired",
	[SHMB_CTR_SESSIONS_RECLAIMED] = "sessions_reclaimed",
	[SHMB_CTR_SESSIONS_LIVE] = "sessions_live",
	[SHMB_CTR_WORKERS_ADMITTED] = "workers_admitted",
	[SHMB_CTR_WORKERS_DIED] = "workers_died",
	[SHMB_CTR_WORKERS_REFUSED] = "workers_refused",
	[SHMB_CTR_GRACE_PERIODS] = "grace_periods",
	[SHMB_CTR_SWEEPS] = "sweeps",
	[SHMB_CTR_CTL_ERRORS] = "ctl_errors",
	[SHMB_CTR_EVENTS_PUBLISHED_RETIRED] = "events_published_retired",
	[SHMB_CTR_WAKEUPS_RETIRED] = "wakeups_retired",
	[SHMB_CTR_GAPS_WRITTEN] = "gaps_written",
};

void brk_ctr_add(struct brk *b, uint32_t ctr, uint64_t v)
{
	struct shmb_counter *c = seg_counter(&b->seg, ctr);
	if (c && v)
		uatomic_add(&c->value, v); /* read without locks by shmctl; no ordering needed */
}

void brk_ctr_set(struct brk *b, uint32_t ctr, uint64_t v)
{
	struct shmb_counter *c = seg_counter(&b->seg, ctr);
	if (c)
		uatomic_set(&c->value, v);
}

void brk_heartbeat(struct brk *b)
{
	uatomic_set(&seg_hdr(&b->seg)->heartbeat_ms, shmb_now_ms()); /* read by shmctl, unordered */
}

static void mib(uint64_t bytes, char *buf, size_t len)
{
	snprintf(buf, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
}

/* Returns the fd of a freshly built segment, or -1 after printing why. */
static int build(struct brk *b)
{
	struct shmb_seg_config cfg = b->cfg.seg;
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total;
	char why[200];
	if (seg_layout(&cfg, regions, &total, why, sizeof why) < 0) {
		brk_fatal("config: %s", why);
		return -1;
	}
	struct statvfs vfs;
	const char *dir = b->cfg.segment_dir[0] ? b->cfg.segment_dir : "/dev/shm";
	if (statvfs(dir, &vfs) == 0) {
		uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
		if (avail < total) {
			char need[32], have[32];
			mib(total, need, sizeof need);
			mib(avail, have, sizeof have);
			brk_fatal("segment %s needs %s but %s has only %s free: lower "
				  "--max-sessions, --ring-events or --ring-bytes, or enlarge %s "
				  "(Docker: --shm-size)",
				  b->seg_path, need, dir, have, dir);
			return -1;
		}
	}
	/* The sticky bit marks "being built" until the final mode is set: a segment found with it
	 * was abandoned mid-build, one found without it and short was truncated (classify()). */
	int fd = obj_open(b, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, S_ISVTX | 0600);
	if (fd < 0) {
		brk_fatal("cannot create segment %s: %s", b->seg_path, strerror(errno));
		return -1;
	}
	const char *step = "ftruncate";
	int err = ftruncate(fd, (off_t)total) < 0 ? errno : 0;
	if (!err) {
		step = "posix_fallocate";
		err = posix_fallocate(fd, 0, (off_t)total);
	}
	void *p = MAP_FAILED;
	if (!err) {
		step = "mmap";
		p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			err = errno;
	}
	if (err) {
		char need[32];
		mib(total, need, sizeof need);
		brk_fatal("cannot reserve %s for segment %s (%s: %s)%s", need, b->seg_path, step,
			  strerror(err),
			  err == ENOSPC ? ": its file system is full; lower the sizes or enlarge it"
					: "");
		close(fd);
		obj_unlink(b);
		return -1;
	}

	struct shmb_seg_header *h = p;
	uint32_t flags = 0;
	if (rcu_membarrier_available() && rcu_membarrier_register())
		flags |= SHMB_SEG_F_MEMBARRIER;
	h->layout_major = SHMB_LAYOUT_MAJOR;
	h->layout_minor = SHMB_LAYOUT_MINOR;
	h->fingerprint = shmb_layout_fingerprint();
	h->header_size = sizeof *h;
	h->flags = flags;
	h->segment_size = total;
	h->created_at_ms = shmb_now_ms();
	uint8_t key[SHMB_SID_BYTES];
	if (sid_generate(key) < 0) { /* 16 random bytes */
		brk_err("getrandom failed: %s", strerror(errno));
		munmap(p, total);
		close(fd);
		obj_unlink(b);
		return -1;
	}
	memcpy(h->hash_key, key, sizeof h->hash_key);
	h->cfg = cfg;
	memcpy(h->regions, regions, sizeof h->regions);
	h->rcu_gp = 1;
	h->broker_state = SHMB_BROKER_STOPPED;
	struct shmb_counter *ctrs = (struct shmb_counter *)((uint8_t *)p + regions[0].off);
	for (int i = 0; i < SHMB_COUNTER_COUNT; i++)
		snprintf(ctrs[i].label, sizeof ctrs[i].label, "%s",
			 counter_labels[i] ? counter_labels[i] : "");
	/* Publish: every store above is ordered before the magic. Pairs with the acquire load of
	 * magic in seg_check_header(): a mapper that sees the magic sees a complete header. */
	cmm_smp_mb();
	uatomic_set(&h->magic, SHMB_MAGIC);
	cmm_smp_mb();
	munmap(p, total);
	uint32_t mode = brk_access_segment_mode(b);
	if (fchmod(fd, mode) < 0)
		brk_warn("fchmod %s to %04o: %s", b->seg_path, mode, strerror(errno));
	b->created = 1;
	return fd;
}

enum seg_found {
	SEG_FOUND_OK,         /* complete as far as we can tell: seg_map() validates the rest */
	SEG_FOUND_UNFINISHED, /* a build that crashed: safe to rebuild */
	SEG_FOUND_TRUNCATED,  /* shorter than its header says: its sessions are gone; rebuild */
	SEG_FOUND_DAMAGED,    /* magic 0 on a segment brokers served: refuse */
};

/* What an existing segment is. A build sizes the segment right after creating it with the
 * sticky bit (build()), publishes the magic, then sets the final mode (no sticky bit), so:
 * sticky and empty, or magic and generation 0, is a build that never finished; shorter than its
 * header's segment_size (or than a header) without the sticky bit is a truncation, done by a
 * process with write access to it (docs/security.md); magic 0 with a generation is damage.
 * why gets the log line's explanation. *gen_out gets the header's broker generation. */
static enum seg_found classify(struct brk *b, int fd, uint64_t *gen_out, char *why, size_t len)
{
	struct stat st;
	*gen_out = 0;
	if (fstat(fd, &st) < 0)
		return SEG_FOUND_OK; /* seg_map() reports it */
	uint64_t size = (uint64_t)st.st_size;
	int building = (st.st_mode & S_ISVTX) != 0;
	if (size < sizeof(struct shmb_seg_header)) {
		if (size == 0 && building) {
			snprintf(why, len, "its build never finished (created, never sized)");
			return SEG_FOUND_UNFINISHED;
		}
		snprintf(why, len,
			 "segment %s is %llu bytes, smaller than its header: it was "
			 "truncated (by a process with write access to it); its sessions are lost",
			 b->seg_path, (unsigned long long)size);
		return SEG_FOUND_TRUNCATED;
	}
	/* Read only what the file holds: a page past its end would be a SIGBUS. */
	size_t maplen = sizeof(struct shmb_seg_header);
	const struct shmb_seg_header *h = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
	if (h == MAP_FAILED)
		return SEG_FOUND_OK;
	uint64_t magic = uatomic_read(&h->magic);
	uint64_t gen = uatomic_read(&h->broker_generation);
	uint64_t want = uatomic_read(&h->segment_size);
	uint64_t ctr_off = h->regions[SHMB_REGION_COUNTERS].off;
	/* Only a header that is itself sound (its configuration needs exactly the size it
	 * states) is evidence of a truncation; a scribbled segment_size is damage, refused. */
	struct shmb_seg_config hcfg = h->cfg;
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total = 0;
	int sound = h->layout_major == SHMB_LAYOUT_MAJOR &&
		    h->fingerprint == shmb_layout_fingerprint() &&
		    seg_layout(&hcfg, regions, &total, NULL, 0) == 0 && total == want &&
		    regions[SHMB_REGION_COUNTERS].off == ctr_off;
	munmap((void *)h, maplen);
	*gen_out = gen;
	if (magic == 0) {
		if (gen != 0)
			return SEG_FOUND_DAMAGED;
		snprintf(why, len, "its build never finished (magic 0 and never served)");
		return SEG_FOUND_UNFINISHED;
	}
	if (magic != SHMB_MAGIC || want <= size || !sound)
		return SEG_FOUND_OK; /* seg_map() validates (and refuses) it */
	/* Truncated: say how many sessions went with it, if the counters survived. */
	char lost[64] = "its sessions are lost";
	uint64_t at = ctr_off + SHMB_CTR_SESSIONS_LIVE * sizeof(struct shmb_counter);
	if (at >= ctr_off && at + sizeof(uint64_t) <= size) {
		long pg = sysconf(_SC_PAGESIZE);
		uint64_t base = at & ~(uint64_t)(pg > 0 ? pg - 1 : 4095);
		size_t n = (size_t)(at + sizeof(uint64_t) - base);
		const uint8_t *p = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, (off_t)base);
		if (p != MAP_FAILED) {
			uint64_t live = uatomic_read((const uint64_t *)(p + (at - base)));
			snprintf(lost, sizeof lost, "its %llu session%s lost",
				 (unsigned long long)live, live == 1 ? " is" : "s are");
			munmap((void *)p, n);
		}
	}
	snprintf(why, len,
		 "segment %s is %llu bytes but its header says %llu: it was truncated (by a "
		 "process with write access to it); %s",
		 b->seg_path, (unsigned long long)size, (unsigned long long)want, lost);
	return SEG_FOUND_TRUNCATED;
}

/* Marks the segment behind fd as no longer served (header.retired, layout 1.2), when its header
 * is still there: a worker mapping it then fails with SHMB_ESTALE instead of publishing into a
 * segment nobody else sees. Before the segment's name is removed or given to another. */
static void retire(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < sizeof(struct shmb_seg_header))
		return;
	struct shmb_seg_header *h =
		mmap(NULL, sizeof *h, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h == MAP_FAILED)
		return;
	uatomic_set(&h->retired, SHMB_SEG_RETIRED); /* read by the data path, unordered */
	munmap(h, sizeof *h);
}

static void refuse(struct brk *b, const char *why)
{
	brk_fatal("refusing segment %s: %s (inspect it with 'shmctl --name %s verify'; removing "
		  "%s starts afresh and loses its sessions)",
		  b->seg_path, why, b->cfg.name, b->seg_path);
}

/* The node tag is fixed for a segment's life: its live sessions' ids carry the node_id it was
 * made with, and a load balancer routes them by it, so a broker with another node_id serving
 * them would break routing (and a later failover) for every one. Refused before anything is
 * written; the operator either keeps the old id or removes the segment. Returns 0 or 1. */
static int check_node_id(struct brk *b)
{
	uint32_t have = b->seg.cfg.node_id, want = b->cfg.seg.node_id;
	if (have == want)
		return 0;
	brk_fatal("refusing segment %s: it was made with node_id %u and this broker has node_id "
		  "%u; its sessions' ids carry node %u, so they must be served as that node (start "
		  "with --node-id %u, or remove %s to start afresh, losing its sessions)",
		  b->seg_path, have, want, have, have, b->seg_path);
	return 1;
}

static const char *state_name(uint32_t st)
{
	static const char *const names[] = { "FREE", "LINKING", "LIVE", "UNLINKING", "RETIRED" };
	return st < 5 ? names[st] : "unknown";
}

/* Marks reachable[idx] for every record in a chain. Returns 0 or 1 after refusing. */
static int scan_chains(struct brk *b, uint8_t *reachable)
{
	const struct shmb_seg *seg = &b->seg;
	uint64_t steps = 0;
	char why[200];
	for (uint32_t bkt = 0; bkt < seg->cfg.n_buckets; bkt++) {
		uint32_t link = uatomic_read(seg_bucket(seg, bkt));
		while (link != SHMB_NIL) {
			struct shmb_session_rec *r = seg_link(seg, link);
			if (!r) {
				snprintf(why, sizeof why,
					 "bucket %u links to record %u, beyond max_sessions %u",
					 bkt, link - 1, seg->cfg.max_sessions);
				goto damaged;
			}
			uint32_t idx = link - 1;
			if (++steps > seg->cfg.max_sessions || reachable[idx]) {
				snprintf(
					why, sizeof why,
					"record %u is reached twice from the buckets (a cycle or a "
					"record in two chains; bucket %u)",
					idx, bkt);
				goto damaged;
			}
			reachable[idx] = 1;
			uint32_t st = uatomic_read(&r->state);
			if (st != SHMB_REC_LINKING && st != SHMB_REC_LIVE &&
			    st != SHMB_REC_UNLINKING) {
				snprintf(why, sizeof why,
					 "record %u in the chain of bucket %u is %s (%u)", idx, bkt,
					 state_name(st), st);
				goto damaged;
			}
			if (seg_bucket_of(seg, r->hash) != bkt) {
				snprintf(
					why, sizeof why,
					"record %u is in the chain of bucket %u but hashes to bucket %u",
					idx, bkt, seg_bucket_of(seg, r->hash));
				goto damaged;
			}
			link = uatomic_read(&r->next);
		}
	}
	return 0;
damaged:
	refuse(b, why);
	return 1;
}

struct adopt_stats {
	uint32_t linked, unlinked_half, finished_unlinks, retired_queued, stray;
};

static int adopt_records(struct brk *b, struct adopt_stats *st)
{
	const struct shmb_seg *seg = &b->seg;
	uint8_t *reachable = calloc(seg->cfg.max_sessions, 1);
	if (!reachable) {
		brk_fatal("out of memory adopting %u records", seg->cfg.max_sessions);
		return 1;
	}
	if (scan_chains(b, reachable)) {
		free(reachable);
		return 1;
	}
	uint64_t gp_now = uatomic_read(&seg_hdr(seg)->rcu_gp);
	/* Retired records are queued in grace-period order (reclaim.c scans the whole queue, so
	 * the order is only for tidiness). */
	for (uint32_t idx = 0; idx < seg->cfg.max_sessions; idx++) {
		struct shmb_session_rec *r = seg_rec(seg, idx);
		uint32_t state = uatomic_read(&r->state);
		switch (state) {
		case SHMB_REC_FREE:
			brk_index_push_free(b, idx);
			break;
		case SHMB_REC_LINKING:
			if (reachable[idx]) {
				/* The head store happened, so the record was complete: finish the
				 * create. Pairs with idx_find's acquire load of state. */
				cmm_smp_wmb();
				uatomic_set(&r->state, SHMB_REC_LIVE);
				/* Its broker died before counting it (index.c counts at LIVE). */
				brk_ctr_add(b, SHMB_CTR_SESSIONS_CREATED, 1);
				brk_live_add(b, idx);
				st->linked++;
			} else {
				/* Never visible to anyone: undo. A restore (restore.c) may have
				 * written events into its ring and attributes into its area already:
				 * its descriptors are cleared
				 * as a recycle clears them (reclaim.c), up to next_id. */
				uint64_t used = uatomic_read(&r->next_id);
				uint64_t n = used >= b->seg.cfg.ring_events ? b->seg.cfg.ring_events
									    : used + 1;
				for (uint64_t i = 0; i < n; i++)
					uatomic_set(&seg_desc(&b->seg, idx, i)->seq, 0);
				/* ... and the attributes it may have written, as a recycle does. */
				brk_attr_clear(b, idx);
				uatomic_set(&r->next_id, 0);
				uatomic_set(&r->state, SHMB_REC_FREE);
				brk_index_push_free(b, idx);
				st->unlinked_half++;
			}
			break;
		case SHMB_REC_LIVE:
			if (reachable[idx]) {
				brk_live_add(b, idx);
			} else {
				brk_warn("record %u was LIVE but in no chain: retiring it", idx);
				brk_index_retire(b, idx, SHMB_RETIRE_DELETED);
				st->stray++;
			}
			break;
		case SHMB_REC_UNLINKING:
			/* The unlink was under way: finish it (retire keeps the record's reason). */
			brk_index_retire(b, idx, SHMB_RETIRE_NONE);
			st->finished_unlinks++;
			break;
		case SHMB_REC_RETIRED: {
			uint64_t g = uatomic_read(&r->retire_gp);
			if (g == 0 || g > gp_now) {
				/* Implausible grace period: mark a fresh one (always safe). */
				uatomic_set(&r->retire_gp, rcu_retire_mark(seg));
			}
			brk_reclaim_queue(b, idx);
			st->retired_queued++;
			break;
		}
		default:
			/* Unreachable (scan_chains refused reachable ones) but unknown: recycle it
			 * through a grace period, which is safe whatever it held. */
			brk_warn("record %u has unknown state %u: retiring it", idx, state);
			uatomic_set(&r->retire_gp, rcu_retire_mark(seg));
			cmm_smp_wmb();
			uatomic_set(&r->state, SHMB_REC_RETIRED);
			brk_reclaim_queue(b, idx);
			st->stray++;
			break;
		}
	}
	free(reachable);
	/* Pushed in index order; reverse so the lowest free index is handed out first, as in a
	 * new segment. */
	for (uint32_t i = 0, j = b->n_free; i + 1 < j; i++, j--) {
		uint32_t t = b->free_stack[i];
		b->free_stack[i] = b->free_stack[j - 1];
		b->free_stack[j - 1] = t;
	}
	brk_ctr_set(b, SHMB_CTR_SESSIONS_LIVE, b->live);
	return 0;
}

/* Sizes come from the segment; TTL defaults and the sweep period may be changed on adoption. */
static void reconcile_config(struct brk *b)
{
	struct shmb_seg_config *have = &b->seg.cfg;
	const struct shmb_seg_config *want = &b->cfg.seg;
	static const struct {
		enum brk_field id;
		const char *key;
		size_t off;
	} sizes[] = {
		{ BRK_F_MAX_SESSIONS, "max_sessions",
		  offsetof(struct shmb_seg_config, max_sessions) },
		{ BRK_F_MAX_WORKERS, "max_workers", offsetof(struct shmb_seg_config, max_workers) },
		{ BRK_F_READERS_PER_WORKER, "readers_per_worker",
		  offsetof(struct shmb_seg_config, readers_per_worker) },
		{ BRK_F_RING_EVENTS, "ring_events", offsetof(struct shmb_seg_config, ring_events) },
		{ BRK_F_RING_BYTES, "ring_bytes", offsetof(struct shmb_seg_config, ring_bytes) },
		{ BRK_F_MAX_EVENT_BYTES, "max_event_bytes",
		  offsetof(struct shmb_seg_config, max_event_bytes) },
		{ BRK_F_MAX_TENANT_LEN, "max_tenant_len",
		  offsetof(struct shmb_seg_config, max_tenant_len) },
		{ BRK_F_MAX_PRINCIPAL_LEN, "max_principal_len",
		  offsetof(struct shmb_seg_config, max_principal_len) },
	};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		uint32_t h = *(const uint32_t *)((const char *)have + sizes[i].off);
		uint32_t w = *(const uint32_t *)((const char *)want + sizes[i].off);
		if ((b->cfg.set & (1u << sizes[i].id)) && h != w)
			brk_warn("segment %s keeps %s=%u (asked for %u): sizes are fixed "
				 "for a segment's life; remove it to resize",
				 b->shm_name, sizes[i].key, h, w);
	}
	struct shmb_seg_config *hdr_cfg = &seg_hdr(&b->seg)->cfg;
	/* Policy defaults: written to the header (read by shmctl only; no mapper derives a region
	 * from them) and to our private copy, which the index writer uses. */
	if ((b->cfg.set & (1u << BRK_F_INACTIVITY_TTL_MS)) &&
	    have->inactivity_ttl_ms != want->inactivity_ttl_ms) {
		brk_log("new sessions' inactivity_ttl_ms: %llu (was %llu)",
			(unsigned long long)want->inactivity_ttl_ms,
			(unsigned long long)have->inactivity_ttl_ms);
		have->inactivity_ttl_ms = want->inactivity_ttl_ms;
		uatomic_set(&hdr_cfg->inactivity_ttl_ms, want->inactivity_ttl_ms);
	}
	if ((b->cfg.set & (1u << BRK_F_ABSOLUTE_TTL_MS)) &&
	    have->absolute_ttl_ms != want->absolute_ttl_ms) {
		brk_log("new sessions' absolute_ttl_ms: %llu (was %llu)",
			(unsigned long long)want->absolute_ttl_ms,
			(unsigned long long)have->absolute_ttl_ms);
		have->absolute_ttl_ms = want->absolute_ttl_ms;
		uatomic_set(&hdr_cfg->absolute_ttl_ms, want->absolute_ttl_ms);
	}
	if ((b->cfg.set & (1u << BRK_F_SWEEP_INTERVAL_MS)) &&
	    have->sweep_interval_ms != want->sweep_interval_ms) {
		brk_log("sweep_interval_ms: %u (was %u)", want->sweep_interval_ms,
			have->sweep_interval_ms);
		have->sweep_interval_ms = want->sweep_interval_ms;
		uatomic_set(&hdr_cfg->sweep_interval_ms, want->sweep_interval_ms);
	}
}

static void start_header(struct brk *b)
{
	struct shmb_seg_header *h = seg_hdr(&b->seg);
	uatomic_set(&h->broker_state, SHMB_BROKER_STOPPED);
	cmm_smp_wmb();
	uatomic_set(&h->broker_pid, (int32_t)b->pid);
	uatomic_set(&h->broker_starttime, proc_starttime(b->pid));
	uatomic_set(&h->broker_generation, uatomic_read(&h->broker_generation) + 1);
	uatomic_set(&h->broker_started_ms, shmb_now_ms());
	brk_heartbeat(b);
	/* Identity before RUNNING: pairs with shmctl reading state, then pid (unlocked). */
	cmm_smp_wmb();
	uatomic_set(&h->broker_state, SHMB_BROKER_RUNNING);
}

static void log_sizes(struct brk *b, const char *verb)
{
	const struct shmb_seg_config *c = &b->seg.cfg;
	char size[32];
	mib(b->seg.size, size, sizeof size);
	brk_log("%s segment %s: %llu bytes (%s), max_sessions=%u max_workers=%u "
		"readers_per_worker=%u ring_events=%u ring_bytes=%u max_event_bytes=%u%s",
		verb, b->seg_path, (unsigned long long)b->seg.size, size, c->max_sessions,
		c->max_workers, c->readers_per_worker, c->ring_events, c->ring_bytes,
		c->max_event_bytes, (b->seg.flags & SHMB_SEG_F_MEMBARRIER) ? ", membarrier" : "");
}

/* An existing segment must be ours: /dev/shm is writable by everyone, so another user may have
 * created /shmb.<name> first (mode 0666, say) to read and write what we would put in it.
 * Returns 0 or 1 after printing why. */
static int check_owner(struct brk *b, int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		brk_fatal("cannot check segment %s: %s", b->seg_path, strerror(errno));
		return 1;
	}
	if (st.st_uid == b->euid && S_ISREG(st.st_mode))
		return 0;
	brk_fatal("refusing segment %s: it belongs to uid %u, not to us (uid %u); another "
		  "user created it, and whoever owns it can read and change every session in it "
		  "(remove it, as root or its owner, to start afresh)",
		  b->seg_path, (unsigned)st.st_uid, (unsigned)b->euid);
	return 1;
}

/* segment_dir: a directory as trusted as the runtime dir (trust_check_dir: owned by us or root,
 * not writable by others unless sticky like /tmp), on tmpfs. Sets b->seg_path. Returns 0 or 1
 * after printing why. */
static int check_segment_dir(struct brk *b)
{
	const char *dir = b->cfg.segment_dir;
	char why[300];
	int rc = trust_check_dir(dir, 0, why, sizeof why);
	if (rc < 0) {
		brk_fatal("segment_dir %s: %s", dir, why);
		return 1;
	}
	/* The segment is named through the directory's canonical path, the one trust_check_dir
	 * checked: no "..", "." or symlink left in it, so the path file holds a path shmctl
	 * accepts (seg.c, read_path_file refuses "/../") and later renames of a symlink in the
	 * configured path change nothing for this run. */
	char *real = realpath(dir, NULL);
	if (!real) {
		brk_fatal("segment_dir %s: %s", dir, strerror(errno));
		return 1;
	}
	int n = snprintf(b->seg_path, sizeof b->seg_path, "%s%s", strcmp(real, "/") ? real : "",
			 b->shm_name);
	if (n < 0 || (size_t)n >= sizeof b->seg_path) {
		brk_fatal("segment_dir %s: its canonical path %s is too long", dir, real);
		free(real);
		return 1;
	}
	if (strcmp(real, dir))
		brk_log("segment_dir %s is %s (its canonical path): the segment is %s", dir, real,
			b->seg_path);
	free(real);
	struct statfs sf;
	if (statfs(dir, &sf) < 0) {
		brk_fatal("segment_dir %s: %s", dir, strerror(errno));
		return 1;
	}
	if ((unsigned long)sf.f_type == (unsigned long)HUGETLBFS_MAGIC) {
		brk_fatal("segment_dir %s is a hugetlbfs: its files are sized in whole huge pages, "
			  "which the segment's size is not; mount a tmpfs with huge=always there "
			  "instead (mount -t tmpfs -o huge=always,size=... none %s)",
			  dir, dir);
		return 1;
	}
	if ((unsigned long)sf.f_type != (unsigned long)TMPFS_MAGIC) {
		brk_fatal(
			"segment_dir %s is not a tmpfs (file system 0x%lx): the segment must live "
			"in memory, where workers accept it (docs/security.md)",
			dir, (unsigned long)sf.f_type);
		return 1;
	}
	return 0;
}

/* Replaces <runtime dir>/<name>.segment with the segment's path (segment_dir), or removes it
 * (/dev/shm: shmctl's default). Written to a temporary name and renamed, so a reader sees the
 * old or the new file whole. Best effort: without it shmctl cannot find a segment in
 * segment_dir by name, which the log says. */
static void write_path_file(struct brk *b)
{
	char dir[200];
	if (ctl_runtime_dir(dir, sizeof dir) < 0 ||
	    snprintf(b->path_file, sizeof b->path_file, "%s/%s.segment", dir, b->cfg.name) >=
		    (int)sizeof b->path_file) {
		b->path_file[0] = '\0';
		return;
	}
	if (!b->cfg.segment_dir[0]) {
		if (unlink(b->path_file) == 0)
			brk_log("removed %s (the segment is in /dev/shm now)", b->path_file);
		return;
	}
	char tmp[300];
	snprintf(tmp, sizeof tmp, "%s.tmp", b->path_file);
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	int ok = fd >= 0;
	if (ok) {
		char line[300];
		int n = snprintf(line, sizeof line, "%s\n", b->seg_path);
		ok = n > 0 && write(fd, line, (size_t)n) == n && fchmod(fd, 0644) == 0;
		ok &= close(fd) == 0;
		ok = ok && rename(tmp, b->path_file) == 0;
	}
	if (!ok) {
		brk_warn("cannot write %s: %s (shmctl will not find the segment by name)",
			 b->path_file, strerror(errno));
		unlink(tmp);
	}
}

/* One segment of this name left elsewhere by an earlier run (see retire_previous): marked
 * retired, its sleeping waiters woken, when it is a valid segment file of ours and not `ours`
 * (the one this run serves). */
static void retire_elsewhere(struct brk *b, const char *path, int ours)
{
	if (!strcmp(path, b->seg_path))
		return;
	int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return; /* gone (or not ours to open): nothing serves it, nothing to say */
	struct stat st, mine;
	struct shmb_seg old = { 0 };
	char why[256] = "";
	int ok = fstat(fd, &st) == 0 && fstat(ours, &mine) == 0 && S_ISREG(st.st_mode) &&
		 st.st_uid == b->euid && (st.st_dev != mine.st_dev || st.st_ino != mine.st_ino);
	if (ok && seg_map(fd, 1, &old, why, sizeof why) == 0) {
		struct shmb_seg_header *h = seg_hdr(&old);
		pid_t pid = uatomic_read(&h->broker_pid);
		if (uatomic_read(&h->broker_state) == SHMB_BROKER_RUNNING && pid != getpid() &&
		    proc_alive(pid, uatomic_read(&h->broker_starttime))) {
			/* A live broker serves it (the same name under another runtime dir): not
			 * ours to retire. */
			brk_warn("%s exists too, served by broker pid %d (the same name "
				 "under another runtime dir?): left alone",
				 path, (int)pid);
			seg_unmap(&old);
			close(fd);
			return;
		}
		int was = uatomic_read(&h->retired) != 0;
		uatomic_set(&h->retired, SHMB_SEG_RETIRED); /* data path reads, unordered */
		wake_all_waiters(&old); /* threads asleep in shmb_cursor_wait there */
		seg_unmap(&old);
		if (!was)
			brk_warn(
				"%s, this instance's segment of an earlier run (another "
				"segment_dir), is not adopted: marked retired (workers still mapping "
				"it get SHMB_ESTALE); its sessions stay there until it is removed",
				path);
	} else if (ok) {
		brk_warn("%s exists too (an earlier run with another segment_dir) and is "
			 "not adopted (%s); its sessions stay there until it is removed",
			 path, why);
	}
	close(fd);
}

/* The segment moved (segment_dir changed between two runs): the one an earlier run served, in
 * /dev/shm or where the path file says, is no longer served. Marked retired, like a segment
 * rebuilt after a truncation, so that workers still mapping it fail with SHMB_ESTALE instead of
 * going on opening and publishing where no new worker looks. Before the path file is replaced
 * (it names the earlier one). The instance lock is ours: no other broker serves that segment. */
static void retire_previous(struct brk *b, int ours)
{
	char path[300], why[256];
	if (seg_locate(b->cfg.name, path, sizeof path, why, sizeof why) == 1)
		retire_elsewhere(b, path, ours);
	if (b->cfg.segment_dir[0]) {
		snprintf(path, sizeof path, "/dev/shm%s", b->shm_name);
		retire_elsewhere(b, path, ours);
	}
}

int brk_segment_open(struct brk *b)
{
	if (seg_shm_name(b->cfg.name, b->shm_name, sizeof b->shm_name) < 0) {
		brk_fatal("invalid name '%s'", b->cfg.name);
		return 1;
	}
	if (b->cfg.segment_dir[0]) {
		if (check_segment_dir(b)) /* sets seg_path */
			return 1;
	} else {
		snprintf(b->seg_path, sizeof b->seg_path, "/dev/shm%s", b->shm_name);
	}
	if (b->cfg.segment_mode != brk_access_segment_mode(b))
		brk_log("segment_mode %04o: the segment's name gets %04o (only the group read bit "
			"is honoured: workers write through the fd they receive; docs/security.md)",
			b->cfg.segment_mode, brk_access_segment_mode(b));
	int fd = obj_open(b, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0 && errno != ENOENT) {
		brk_fatal("cannot open segment %s: %s", b->seg_path, strerror(errno));
		return 1;
	}
	if (fd >= 0 && check_owner(b, fd)) {
		close(fd);
		return 1;
	}
	if (fd >= 0) {
		uint64_t gen = 0;
		char why[640];
		enum seg_found found = classify(b, fd, &gen, why, sizeof why);
		if (found == SEG_FOUND_UNFINISHED || found == SEG_FOUND_TRUNCATED) {
			if (found == SEG_FOUND_UNFINISHED)
				brk_log("removing %s: %s", b->seg_path, why);
			else
				brk_log("%s; building a new one", why);
			if (found == SEG_FOUND_TRUNCATED)
				retire(fd); /* workers still mapping its header: SHMB_ESTALE */
			close(fd);
			obj_unlink(b);
			fd = -1;
		} else if (found == SEG_FOUND_DAMAGED) {
			snprintf(
				why, sizeof why,
				"its magic is 0 although brokers served it (generation %llu): damaged",
				(unsigned long long)gen);
			refuse(b, why);
			close(fd);
			return 1;
		}
	}
	if (fd < 0) {
		fd = build(b);
		if (fd < 0)
			return 1;
	}
	b->seg_fd = fd;
	retire_previous(b, fd);
	write_path_file(b);
	char why[256];
	int rc = seg_map(fd, 1, &b->seg, why, sizeof why);
	if (rc < 0) {
		refuse(b, why);
		return 1;
	}
	if (!b->created && check_node_id(b))
		return 1;
	if (brk_index_init(b) < 0) {
		brk_fatal("out of memory for %u session records", b->seg.cfg.max_sessions);
		return 1;
	}
	if (brk_workers_init(b) < 0)
		return 1;

	if (b->created) {
		for (uint32_t i = b->seg.cfg.max_sessions; i-- > 0;)
			brk_index_push_free(b, i);
		start_header(b);
		log_sizes(b, "created");
		return 0;
	}

	log_sizes(b, "adopting");
	reconcile_config(b);
	/* The configured mode holds for an adopted segment too: an operator who tightens
	 * segment_mode and restarts (or a segment built by an older broker, with the group write
	 * bit) must not keep the old, wider one. */
	struct stat fst;
	uint32_t mode = brk_access_segment_mode(b);
	if (fstat(fd, &fst) == 0 && (fst.st_mode & 07777) != mode) {
		if (fchmod(fd, mode) < 0)
			brk_warn("fchmod %s to %04o: %s", b->seg_path, mode, strerror(errno));
		else
			brk_log("segment %s: mode %04o (was %04o)", b->seg_path, mode,
				(unsigned)(fst.st_mode & 07777));
	}
	if ((b->seg.flags & SHMB_SEG_F_MEMBARRIER) && !rcu_membarrier_register())
		brk_warn("cannot register for membarrier; grace periods still use "
			 "MEMBARRIER_CMD_GLOBAL_EXPEDITED (or its fallback)");
	struct adopt_stats st = { 0 };
	if (adopt_records(b, &st))
		return 1;
	SHMB_FAULT("broker.adopt");
	uint32_t kept = 0, settled = 0;
	brk_workers_adopt(b, &kept, &settled);
	start_header(b);
	brk_log("adopted segment %s: %u live session%s, %u worker%s kept", b->seg_path, b->live,
		b->live == 1 ? "" : "s", kept, kept == 1 ? "" : "s");
	char detail[256] = "";
	size_t len = 0;
	const struct {
		uint32_t n;
		const char *what;
	} parts[] = {
		{ st.linked, "interrupted creates completed" },
		{ st.unlinked_half, "interrupted creates undone" },
		{ st.finished_unlinks, "interrupted deletes finished" },
		{ st.stray, "stray records retired" },
		{ b->n_pending, "records await reclamation" },
		{ settled, "dead or detached workers settled" },
	};
	for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
		if (!parts[i].n || len >= sizeof detail)
			continue;
		int n = snprintf(detail + len, sizeof detail - len, "%s%u %s", len ? ", " : "",
				 parts[i].n, parts[i].what);
		if (n > 0)
			len += (size_t)n;
	}
	if (len)
		brk_log("adoption: %s", detail);
	return 0;
}

void brk_segment_close(struct brk *b)
{
	if (!b->seg.base)
		return;
	struct shmb_seg_header *h = seg_hdr(&b->seg);
	brk_heartbeat(b);
	uatomic_set(&h->broker_state, SHMB_BROKER_STOPPED); /* read by shmctl, unordered */
	if (b->cfg.unlink_on_exit) {
		/* Marked once the name is gone, so no broker ever adopts a retired segment: its
		 * workers fail with SHMB_ESTALE rather than publish where nobody reads. */
		if (obj_unlink(b) == 0) {
			uatomic_set(&h->retired, SHMB_SEG_RETIRED); /* data path reads, unordered */
			/* Threads asleep in shmb_cursor_wait: no publish will wake them now. */
			wake_all_waiters(&b->seg);
			brk_log("removed segment %s; attached workers get SHMB_ESTALE (detach and "
				"attach again)",
				b->seg_path);
			if (b->cfg.segment_dir[0] && b->path_file[0])
				unlink(b->path_file);
		} else
			brk_log("cannot remove segment %s: %s", b->seg_path, strerror(errno));
	}
	seg_unmap(&b->seg);
	if (b->seg_fd >= 0)
		close(b->seg_fd);
	b->seg_fd = -1;
}
