/* seg.c - layout computation, header validation and mapping of the segment (see seg.h).
 *
 * seg_layout() is the one place that turns a configuration into region offsets: the broker uses
 * it to build a segment, and every mapper re-derives the table from the header's configuration
 * and refuses a segment whose stored table differs. */
#include "seg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "ctl.h"
#include "shmb.h"
#include "trust.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

static int fail(int code, char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(int code, char *why, size_t whylen, const char *fmt, ...)
{
	if (why && whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return code;
}

int seg_name_valid(const char *name)
{
	if (!name || !name[0] || name[0] == '.')
		return SHMB_EINVAL;
	size_t n = 0;
	for (const char *p = name; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return SHMB_EINVAL;
		if (n >= 64)
			return SHMB_EINVAL;
	}
	return 0;
}

int seg_shm_name(const char *name, char *buf, size_t len)
{
	if (seg_name_valid(name) < 0)
		return SHMB_EINVAL;
	int n = snprintf(buf, len, "/shmb.%s", name);
	return (n < 0 || (size_t)n >= len) ? SHMB_EINVAL : 0;
}

void seg_config_defaults(struct shmb_seg_config *cfg)
{
	*cfg = (struct shmb_seg_config){
		.max_sessions = 1024,
		.n_buckets = 0, /* derived by seg_layout when 0 */
		.max_workers = 64,
		.readers_per_worker = 64,
		.ring_events = 256,
		.ring_bytes = 128 * 1024,
		.max_event_bytes = 64 * 1024,
		.max_tenant_len = SHMB_TENANT_CAP,
		.max_principal_len = SHMB_PRINCIPAL_CAP,
		.sweep_interval_ms = 1000,
		.inactivity_ttl_ms = 30 * 60 * 1000,
		.absolute_ttl_ms = 4 * 60 * 60 * 1000,
		.attr_bytes = 4096,
		.attr_keys = 32,
		.max_inactivity_ttl_ms = 24 * 60 * 60 * 1000,
		.max_absolute_ttl_ms = UINT64_C(7) * 24 * 60 * 60 * 1000,
	};
}

void seg_config_derive(struct shmb_seg_config *cfg)
{
	if (cfg->n_buckets == 0) {
		uint32_t b = 1;
		while (b < cfg->max_sessions && b < (UINT32_C(1) << 31))
			b <<= 1;
		cfg->n_buckets = b;
	}
}

static int is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static uint64_t page_up(uint64_t v)
{
	return (v + SHMB_PAGE - 1) & ~(uint64_t)(SHMB_PAGE - 1);
}

#define SEG_MAX_SESSIONS (UINT32_C(1) << 24)
#define SEG_MAX_RING_EVENTS (UINT32_C(1) << 20)
#define SEG_MAX_RING_BYTES (UINT32_C(1) << 30)
#define SEG_MAX_TOTAL (UINT64_C(1) << 40)

/* For messages: the regions of the header, by index (SHMB_REGION_*). */
static const char *const region_names[SHMB_REGION_COUNT] = {
	[SHMB_REGION_COUNTERS] = "counters",        [SHMB_REGION_WORKERS] = "worker slots",
	[SHMB_REGION_READERS] = "reader slots",     [SHMB_REGION_BUCKETS] = "index buckets",
	[SHMB_REGION_SESSIONS] = "session records", [SHMB_REGION_EVENTS] = "event descriptors",
	[SHMB_REGION_DATA] = "event payloads",      [SHMB_REGION_ATTRS] = "session attributes",
	[SHMB_REGION_READY] = "ready bitmaps",
};

int seg_layout(const struct shmb_seg_config *cfg, struct shmb_region regions[SHMB_REGION_COUNT],
	       uint64_t *total, char *why, size_t whylen)
{
	if (cfg->max_sessions < 1 || cfg->max_sessions > SEG_MAX_SESSIONS)
		return fail(SHMB_EINVAL, why, whylen, "max_sessions must be 1..%u, not %u",
			    SEG_MAX_SESSIONS, cfg->max_sessions);
	if (!is_pow2(cfg->n_buckets) || cfg->n_buckets < cfg->max_sessions ||
	    cfg->n_buckets > 2 * SEG_MAX_SESSIONS)
		return fail(SHMB_EINVAL, why, whylen,
			    "n_buckets must be a power of two >= max_sessions, not %u",
			    cfg->n_buckets);
	if (cfg->max_workers < 1 || cfg->max_workers > SHMB_MAX_WORKERS_LIMIT)
		return fail(SHMB_EINVAL, why, whylen, "max_workers must be 1..%d, not %u",
			    SHMB_MAX_WORKERS_LIMIT, cfg->max_workers);
	if (cfg->readers_per_worker < 1 || cfg->readers_per_worker > SHMB_MAX_READERS_LIMIT)
		return fail(SHMB_EINVAL, why, whylen, "readers_per_worker must be 1..%d, not %u",
			    SHMB_MAX_READERS_LIMIT, cfg->readers_per_worker);
	if (!is_pow2(cfg->ring_events) || cfg->ring_events < 2 ||
	    cfg->ring_events > SEG_MAX_RING_EVENTS)
		return fail(SHMB_EINVAL, why, whylen,
			    "ring_events must be a power of two in 2..%u, not %u",
			    SEG_MAX_RING_EVENTS, cfg->ring_events);
	if (!is_pow2(cfg->ring_bytes) || cfg->ring_bytes < 64 ||
	    cfg->ring_bytes > SEG_MAX_RING_BYTES)
		return fail(SHMB_EINVAL, why, whylen,
			    "ring_bytes must be a power of two in 64..%u, not %u",
			    SEG_MAX_RING_BYTES, cfg->ring_bytes);
	if ((uint64_t)cfg->ring_bytes < (uint64_t)cfg->ring_events * 16)
		return fail(
			SHMB_EINVAL, why, whylen,
			"ring_bytes (%u) must be at least 16 * ring_events (%u): each event slot "
			"owns ring_bytes / ring_events payload bytes",
			cfg->ring_bytes, cfg->ring_events);
	if (cfg->max_event_bytes < 1 || cfg->max_event_bytes > cfg->ring_bytes)
		return fail(SHMB_EINVAL, why, whylen,
			    "max_event_bytes must be 1..ring_bytes (%u), not %u", cfg->ring_bytes,
			    cfg->max_event_bytes);
	if (cfg->max_tenant_len < 1 || cfg->max_tenant_len > SHMB_TENANT_CAP)
		return fail(SHMB_EINVAL, why, whylen, "max_tenant_len must be 1..%d, not %u",
			    SHMB_TENANT_CAP, cfg->max_tenant_len);
	if (cfg->max_principal_len < 1 || cfg->max_principal_len > SHMB_PRINCIPAL_CAP)
		return fail(SHMB_EINVAL, why, whylen, "max_principal_len must be 1..%d, not %u",
			    SHMB_PRINCIPAL_CAP, cfg->max_principal_len);
	if (cfg->sweep_interval_ms < 1)
		return fail(SHMB_EINVAL, why, whylen, "sweep_interval_ms must be >= 1");
	if (cfg->attr_bytes > SHMB_ATTR_BYTES_LIMIT || cfg->attr_bytes % SHMB_ATTR_CELL)
		return fail(SHMB_EINVAL, why, whylen,
			    "attr_bytes must be a multiple of %d in 0..%d, not %u", SHMB_ATTR_CELL,
			    SHMB_ATTR_BYTES_LIMIT, cfg->attr_bytes);
	if (cfg->attr_keys > SHMB_ATTR_KEYS_LIMIT)
		return fail(SHMB_EINVAL, why, whylen, "attr_keys must be 0..%d, not %u",
			    SHMB_ATTR_KEYS_LIMIT, cfg->attr_keys);
	if (cfg->node_id > SHMB_NODE_ID_MAX)
		return fail(SHMB_EINVAL, why, whylen, "node_id must be 0..%d, not %u",
			    SHMB_NODE_ID_MAX, cfg->node_id);

	const uint64_t sizes[SHMB_REGION_COUNT] = {
		[SHMB_REGION_COUNTERS] = (uint64_t)SHMB_COUNTER_COUNT * sizeof(struct shmb_counter),
		[SHMB_REGION_WORKERS] = (uint64_t)cfg->max_workers * sizeof(struct shmb_worker),
		[SHMB_REGION_READERS] = (uint64_t)cfg->max_workers * cfg->readers_per_worker *
					sizeof(struct shmb_reader),
		[SHMB_REGION_BUCKETS] = (uint64_t)cfg->n_buckets * sizeof(uint32_t),
		[SHMB_REGION_SESSIONS] =
			(uint64_t)cfg->max_sessions * sizeof(struct shmb_session_rec),
		[SHMB_REGION_EVENTS] = (uint64_t)cfg->max_sessions * cfg->ring_events *
				       sizeof(struct shmb_event_desc),
		[SHMB_REGION_DATA] = (uint64_t)cfg->max_sessions * cfg->ring_bytes,
		[SHMB_REGION_ATTRS] = (uint64_t)cfg->max_sessions *
				      shmb_attr_area_size(cfg->attr_bytes, cfg->attr_keys),
		[SHMB_REGION_READY] =
			(uint64_t)cfg->max_workers * shmb_ready_stride(cfg->max_sessions),
	};
	uint64_t off = SHMB_PAGE; /* the header */
	for (int i = 0; i < SHMB_REGION_COUNT; i++) {
		regions[i].off = off;
		regions[i].size = sizes[i];
		off = page_up(off + sizes[i]);
		if (off > SEG_MAX_TOTAL)
			return fail(
				SHMB_EINVAL, why, whylen,
				"segment would exceed %llu bytes: lower max_sessions, ring_events "
				"or ring_bytes",
				(unsigned long long)SEG_MAX_TOTAL);
	}
	*total = off;
	return 0;
}

int seg_check_header(const void *base, uint64_t size, char *why, size_t whylen)
{
	const struct shmb_seg_header *h = base;
	if (size < sizeof *h)
		return fail(SHMB_ECORRUPT, why, whylen,
			    "segment is %llu bytes, smaller than its header (%zu)",
			    (unsigned long long)size, sizeof *h);
	/* Pairs with the broker's release store of magic after building the segment. */
	uint64_t magic = uatomic_read(&h->magic);
	cmm_smp_rmb();
	if (magic == 0)
		return fail(SHMB_EBROKER, why, whylen, "segment is not ready (still being built)");
	if (magic == __builtin_bswap64(SHMB_MAGIC))
		return fail(SHMB_EVERSION, why, whylen,
			    "segment was built on a host of the other byte order");
	if (magic != SHMB_MAGIC)
		return fail(SHMB_ECORRUPT, why, whylen,
			    "bad magic 0x%016llx (expected 0x%016llx): not a shmbroker segment",
			    (unsigned long long)magic, (unsigned long long)SHMB_MAGIC);
	if (h->layout_major != SHMB_LAYOUT_MAJOR)
		return fail(SHMB_EVERSION, why, whylen,
			    "segment layout version %u.%u, this program speaks %d.%d",
			    h->layout_major, h->layout_minor, SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR);
	if (h->fingerprint != shmb_layout_fingerprint())
		return fail(
			SHMB_EVERSION, why, whylen,
			"segment layout fingerprint 0x%08x, this program's is 0x%08x (built for "
			"another ABI, e.g. 32-bit)",
			h->fingerprint, shmb_layout_fingerprint());
	if (h->header_size != sizeof *h)
		return fail(SHMB_ECORRUPT, why, whylen, "header_size %u, expected %zu",
			    h->header_size, sizeof *h);
	if (h->segment_size != size)
		return fail(SHMB_ECORRUPT, why, whylen,
			    "header says %llu bytes but the segment has %llu",
			    (unsigned long long)h->segment_size, (unsigned long long)size);
	struct shmb_seg_config cfg = h->cfg;
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total;
	char sub[160];
	if (seg_layout(&cfg, regions, &total, sub, sizeof sub) < 0)
		return fail(SHMB_ECORRUPT, why, whylen, "bad configuration in header: %s", sub);
	if (total != size)
		return fail(SHMB_ECORRUPT, why, whylen,
			    "configuration needs %llu bytes but the segment has %llu",
			    (unsigned long long)total, (unsigned long long)size);
	for (int i = 0; i < SHMB_REGION_COUNT; i++)
		if (h->regions[i].off != regions[i].off || h->regions[i].size != regions[i].size)
			return fail(SHMB_ECORRUPT, why, whylen,
				    "region %d (%s) at %llu+%llu, expected %llu+%llu", i,
				    region_names[i], (unsigned long long)h->regions[i].off,
				    (unsigned long long)h->regions[i].size,
				    (unsigned long long)regions[i].off,
				    (unsigned long long)regions[i].size);
	return 0;
}

int seg_map(int fd, int writable, struct shmb_seg *seg, char *why, size_t whylen)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return fail(SHMB_EIO, why, whylen, "fstat: %s", strerror(errno));
	if (st.st_size < (off_t)sizeof(struct shmb_seg_header))
		return fail(SHMB_ECORRUPT, why, whylen, "segment is %lld bytes, too small",
			    (long long)st.st_size);
	uint64_t size = (uint64_t)st.st_size;
	void *p = mmap(NULL, size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return fail(errno == EACCES ? SHMB_EACCES : SHMB_EIO, why, whylen, "mmap: %s",
			    strerror(errno));
	int rc = seg_check_header(p, size, why, whylen);
	if (rc < 0) {
		munmap(p, size);
		return rc;
	}
	const struct shmb_seg_header *h = p;
	*seg = (struct shmb_seg){ .base = p, .size = size, .writable = writable, .fd = -1 };
	seg->cfg = h->cfg;
	memcpy(seg->hash_key, h->hash_key, sizeof seg->hash_key);
	memcpy(seg->regions, h->regions, sizeof seg->regions);
	seg->flags = h->flags;
	/* Re-validate the private copy: the header may have changed since it was checked. */
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total;
	if (seg_layout(&seg->cfg, regions, &total, NULL, 0) < 0 || total != size ||
	    memcmp(regions, seg->regions, sizeof regions) != 0) {
		munmap(p, size);
		return fail(SHMB_ECORRUPT, why, whylen, "header changed while it was validated");
	}
	/* Huge pages where the system allows them for shared memory (shmem_enabled "advise", or a
	 * tmpfs mounted huge=): a lookup in a large index then costs no TLB miss on the records.
	 * Advice only: with shmem_enabled "never" (a common default) it changes nothing, and an
	 * error (old kernel, no THP) is no reason to refuse the segment. */
	if (writable)
		(void)madvise(p, size, MADV_HUGEPAGE);
	return 0;
}

void seg_prefault_index(const struct shmb_seg *seg)
{
#ifdef MADV_POPULATE_WRITE
	/* Page-aligned span from the bucket array to the end of the records (adjacent regions). */
	uint64_t from = seg->regions[SHMB_REGION_BUCKETS].off & ~(uint64_t)(SHMB_PAGE - 1);
	const struct shmb_region *recs = &seg->regions[SHMB_REGION_SESSIONS];
	uint64_t to = recs->off + recs->size;
	if (!seg->writable || to <= from || to > seg->size)
		return;
	(void)madvise(seg->base + from, to - from, MADV_POPULATE_WRITE); /* Linux 5.14+ */
#else
	(void)seg;
#endif
}

/* Reads the path file (see seg.h) into path. Returns 1 when it names a segment, 0 when there
 * is none, or an error. Trust: the runtime dir passes trust_check_dir, the file is no symlink,
 * is owned by a trusted uid and writable by nobody else, and holds one absolute path ending in
 * "/shmb.<name>" whose directory passes trust_check_dir too; anything else is refused. */
static int read_path_file(const char *name, char *path, size_t len, char *why, size_t whylen)
{
	char dir[200], pf[280], buf[300];
	if (ctl_runtime_dir(dir, sizeof dir) < 0)
		return fail(SHMB_EINVAL, why, whylen, "runtime directory path is too long");
	snprintf(pf, sizeof pf, "%s/%s.segment", dir, name);
	int fd = open(pf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT || e == ENOTDIR)
			return 0;
		return fail(SHMB_EACCES, why, whylen, "segment path file %s: %s%s", pf, strerror(e),
			    e == ELOOP ? " (a symlink: refused)" : "");
	}
	struct stat st;
	ssize_t n = -1;
	int rc = 0;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		rc = fail(SHMB_EACCES, why, whylen, "segment path file %s is not a regular file",
			  pf);
	else if (!trust_uid(st.st_uid, 1) || (st.st_mode & 022))
		rc = fail(SHMB_EACCES, why, whylen,
			  "segment path file %s (uid %u, mode %04o) is not owned by a trusted uid, "
			  "or others may write it: refused",
			  pf, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
	else
		n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (rc < 0)
		return rc;
	char why2[240];
	if (trust_check_dir(dir, 1, why2, sizeof why2) < 0)
		return fail(SHMB_EACCES, why, whylen, "segment path file %s: %s", pf, why2);
	char tail[80];
	snprintf(tail, sizeof tail, "/shmb.%s", name);
	size_t tl = strlen(tail);
	if (n <= 0 || (size_t)n >= sizeof buf - 1 || buf[n - 1] != '\n')
		return fail(SHMB_ECORRUPT, why, whylen,
			    "segment path file %s is damaged: not one line of at most %zu bytes",
			    pf, sizeof buf - 2);
	buf[n - 1] = '\0';
	size_t pl = (size_t)n - 1;
	if (memchr(buf, '\0', pl) || memchr(buf, '\n', pl) || buf[0] != '/' || pl <= tl ||
	    strcmp(buf + pl - tl, tail) != 0 || strstr(buf, "/../") || pl >= len)
		return fail(
			SHMB_ECORRUPT, why, whylen,
			"segment path file %s is damaged: it must hold an absolute path ending in "
			"%s",
			pf, tail);
	memcpy(path, buf, pl + 1);
	path[pl - tl] = '\0'; /* its directory, checked like the runtime dir */
	rc = trust_check_dir(path, 1, why2, sizeof why2);
	path[pl - tl] = '/';
	if (rc < 0)
		return fail(SHMB_EACCES, why, whylen, "segment path file %s names %s: %s", pf, path,
			    why2);
	return 1;
}

int seg_locate(const char *name, char *path, size_t len, char *why, size_t whylen)
{
	char shm[96];
	if (seg_shm_name(name, shm, sizeof shm) < 0)
		return fail(SHMB_EINVAL, why, whylen, "invalid instance name");
	int rc = read_path_file(name, path, len, why, whylen);
	if (rc != 0)
		return rc < 0 ? rc : 1;
	if ((size_t)snprintf(path, len, "/dev/shm%s", shm) >= len)
		return fail(SHMB_EINVAL, why, whylen, "path buffer too short");
	return 0;
}

int seg_open_name(const char *name, int writable, struct shmb_seg *seg, char *why, size_t whylen)
{
	char shm[96], path[300];
	if (seg_shm_name(name, shm, sizeof shm) < 0)
		return fail(SHMB_EINVAL, why, whylen, "invalid instance name");
	int where = seg_locate(name, path, sizeof path, why, whylen);
	if (where < 0)
		return where;
	int fd = where ? open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC)
		       : shm_open(shm, writable ? O_RDWR : O_RDONLY, 0);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return fail(SHMB_ENOENT, why, whylen, "no segment %s", where ? path : shm);
		return fail(e == EACCES ? SHMB_EACCES : SHMB_EIO, why, whylen, "%s %s: %s",
			    where ? "open" : "shm_open", where ? path : shm, strerror(e));
	}
	struct statfs sf;
	struct stat st;
	if (where &&
	    (fstat(fd, &st) < 0 || fstatfs(fd, &sf) < 0 || !S_ISREG(st.st_mode) ||
	     (unsigned long)sf.f_type != (unsigned long)TMPFS_MAGIC || !trust_uid(st.st_uid, 1))) {
		close(fd);
		return fail(SHMB_EACCES, why, whylen,
			    "%s is not a shared-memory file of a trusted uid (a regular file on "
			    "tmpfs): refused",
			    path);
	}
	int rc = seg_map(fd, writable, seg, why, whylen);
	close(fd);
	return rc;
}

void seg_unmap(struct shmb_seg *seg)
{
	if (seg->base)
		munmap(seg->base, seg->size);
	seg->base = NULL;
	seg->size = 0;
}
