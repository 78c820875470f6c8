/* shmctl_pages.c - which pages back the segment: `shmctl status` reports the segment's path
 * (seg_locate: /dev/shm, or the broker's segment_dir) and its page size.
 *
 * Two sources, the measured one first. Measured: the index (buckets and records, what a lookup
 * reads) is touched read-only once per 2 MiB (at most SHMCTL_PAGES_TOUCH times; a read fault on
 * tmpfs maps a huge folio with one PMD entry when the file has one) and /proc/self/smaps then says how much of this mapping is
 * PMD-mapped (FilePmdMapped, ShmemPmdMapped) and its KernelPageSize (hugetlbfs). Configured: the
 * file system of the segment's directory (statfs: hugetlbfs, tmpfs), the tmpfs mount's huge=
 * option (/proc/self/mountinfo) and the system-wide override in
 * /sys/kernel/mm/transparent_hugepage/shmem_enabled ("deny" or "force"). page_size is the huge
 * page size when any of the mapping is PMD-mapped or the file system is hugetlbfs, else 4096.
 * Reading the segment changes nothing in it; the touches only fault pages into our mapping. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "seg.h"
#include "shmctl.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

#define SHMCTL_PAGES_TOUCH 65536 /* 128 GiB of 2 MiB steps */
#define HUGE_2M (UINT64_C(2) << 20)

/* The word in brackets of a sysfs choice file ("always [never] deny"), or "" */
static void sysfs_choice(const char *path, char *out, size_t len)
{
	char buf[256];
	out[0] = '\0';
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	if (fgets(buf, sizeof buf, f)) {
		char *a = strchr(buf, '['), *z = a ? strchr(a, ']') : NULL;
		if (a && z)
			snprintf(out, len, "%.*s", (int)(z - a - 1), a + 1);
	}
	fclose(f);
}

/* The huge= option of the mount holding dir (the longest mount point that is a prefix of it at
 * a component boundary), into out; "" when none or not found. */
static void mount_huge(const char *dir, char *out, size_t len)
{
	char line[4096], best_opt[128] = "";
	size_t best = 0;
	out[0] = '\0';
	char *real = realpath(dir, NULL);
	if (!real)
		return;
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f) {
		free(real);
		return;
	}
	while (fgets(line, sizeof line, f)) {
		/* id parent major:minor root mountpoint options ... - fstype source superopts */
		char *save = NULL, *tok = strtok_r(line, " ", &save);
		char *mp = NULL;
		for (int i = 0; tok && i < 4; i++)
			tok = strtok_r(NULL, " ", &save);
		mp = tok;
		char *dash = save ? strstr(save, " - ") : NULL;
		if (!mp || !dash)
			continue;
		size_t ml = strlen(mp);
		int covers = !strncmp(real, mp, ml) &&
			     (real[ml] == '/' || real[ml] == '\0' || (ml == 1 && mp[0] == '/'));
		if (!covers || ml < best)
			continue;
		best = ml;
		best_opt[0] = '\0';
		char *h = strstr(dash, "huge=");
		if (h) {
			size_t n = strcspn(h + 5, ", \n");
			snprintf(best_opt, sizeof best_opt, "%.*s", (int)n, h + 5);
		}
	}
	fclose(f);
	free(real);
	snprintf(out, len, "%s", best_opt);
}

/* kB figures of the smaps entry of the mapping starting at base. */
static void smaps_of(const void *base, uint64_t *pmd_kb, uint64_t *kps_kb)
{
	char line[512];
	*pmd_kb = 0;
	*kps_kb = 0;
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return;
	int in = 0;
	uintptr_t want = (uintptr_t)base;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			if (in)
				break;
			in = lo == want;
			continue;
		}
		if (!in)
			continue;
		uint64_t v;
		if (sscanf(line, "FilePmdMapped: %" SCNu64, &v) == 1 ||
		    sscanf(line, "ShmemPmdMapped: %" SCNu64, &v) == 1)
			*pmd_kb += v;
		else if (sscanf(line, "KernelPageSize: %" SCNu64, &v) == 1)
			*kps_kb = v;
	}
	fclose(f);
}

void shmctl_pages(const struct shmctl_opts *o, const struct shmb_seg *seg, struct shmctl_pages *p)
{
	memset(p, 0, sizeof *p);
	p->page_size = 4096;
	char why[256];
	if (seg_locate(o->name, p->path, sizeof p->path, why, sizeof why) < 0)
		snprintf(p->path, sizeof p->path, "?");
	char dir[sizeof p->path];
	snprintf(dir, sizeof dir, "%s", p->path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir)
		*slash = '\0';

	/* Measured. */
	volatile const uint8_t *b = seg->base;
	uint64_t sum = 0, n = 0;
	uint64_t from = seg->regions[SHMB_REGION_BUCKETS].off,
		 to = seg->regions[SHMB_REGION_SESSIONS].off +
		      seg->regions[SHMB_REGION_SESSIONS].size;
	if (to > seg->size)
		to = seg->size; /* the private, validated table: never, but bounded anyway */
	for (uint64_t off = from; off < to && n < SHMCTL_PAGES_TOUCH; off += HUGE_2M, n++)
		sum += b[off];
	(void)sum;
	uint64_t pmd_kb, kps_kb;
	smaps_of(seg->base, &pmd_kb, &kps_kb);
	p->huge_mapped_bytes = pmd_kb * 1024;

	/* Configured. */
	struct statfs sf;
	char opt[64] = "", sys[32] = "";
	sysfs_choice("/sys/kernel/mm/transparent_hugepage/shmem_enabled", sys, sizeof sys);
	if (statfs(dir, &sf) == 0 && (unsigned long)sf.f_type == (unsigned long)HUGETLBFS_MAGIC) {
		snprintf(p->setting, sizeof p->setting, "hugetlbfs");
		p->page_size = kps_kb ? kps_kb * 1024 : (uint64_t)sf.f_bsize;
		return;
	}
	mount_huge(dir, opt, sizeof opt);
	if (!strcmp(sys, "deny") || !strcmp(sys, "force"))
		snprintf(p->setting, sizeof p->setting, "tmpfs, shmem_enabled=%.16s", sys);
	else
		snprintf(p->setting, sizeof p->setting, "tmpfs huge=%.40s", opt[0] ? opt : "never");
	if (p->huge_mapped_bytes)
		p->page_size = HUGE_2M;
}
