/* fuzz_common.c - see fuzz_common.h. */
#include "fuzz_common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "ctl.h"
#include "layout.h"
#include "seg.h"
#include "shmb.h"

void fz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
	fprintf(stderr, "%s:%d: invariant failed: %s: ", file, line, cond);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

/* The broker's log is broker/log.c itself, quiet unless SHMB_FUZZ_LOG=1 (fz_broker_init sets the
 * level below every line's). */
int fz_verbose(void)
{
	static int on = -1;
	if (on < 0) {
		const char *v = getenv("SHMB_FUZZ_LOG");
		on = v && v[0] == '1';
	}
	return on;
}

/* Kept for fuzz_segment.c, which sets it around an adoption expected to fail. */
int fz_quiet_fatal;

int fz_adopt_fd = -1;

int __wrap_shm_open(const char *name, int flags, mode_t mode)
{
	(void)name;
	(void)mode;
	if (flags & O_CREAT) {
		errno = EACCES;
		return -1;
	}
	if (fz_adopt_fd < 0) {
		errno = ENOENT;
		return -1;
	}
	return fcntl(fz_adopt_fd, F_DUPFD_CLOEXEC, 0);
}

int __wrap_shm_unlink(const char *name)
{
	(void)name;
	return 0;
}

static uint64_t rng_state;

void fz_rng_seed(uint64_t seed)
{
	rng_state = seed;
}

ssize_t __wrap_getrandom(void *buf, size_t len, unsigned int flags)
{
	(void)flags;
	uint8_t *p = buf;
	for (size_t i = 0; i < len; i++) {
		/* splitmix64, one byte per step: plenty for a few session ids per input. */
		uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
		z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
		z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
		p[i] = (uint8_t)(z ^ (z >> 31));
	}
	return (ssize_t)len;
}

void fz_config(struct shmb_seg_config *cfg)
{
	*cfg = (struct shmb_seg_config){
		.max_sessions = 4,
		.n_buckets = 4,
		.max_workers = 2,
		.readers_per_worker = 2,
		.ring_events = 8,
		.ring_bytes = 128, /* 16 payload bytes per slot: a 40-byte event takes 3 ids */
		.max_event_bytes = 64,
		.max_tenant_len = 16,
		.max_principal_len = 16,
		.sweep_interval_ms = 1000,
		.inactivity_ttl_ms = 24 * 3600 * 1000, /* nothing expires while a run lasts */
		.absolute_ttl_ms = 0,
	};
}

int fz_segment_create(const struct shmb_seg_config *cfg, uint64_t *size)
{
	struct shmb_region regions[SHMB_REGION_COUNT];
	uint64_t total;
	char why[200];
	FZ_CHECK(seg_layout(cfg, regions, &total, why, sizeof why) == 0, "%s", why);
	int fd = memfd_create("shmb-fuzz", MFD_CLOEXEC);
	FZ_CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
	FZ_CHECK(ftruncate(fd, (off_t)total) == 0, "ftruncate: %s", strerror(errno));
	struct shmb_seg_header *h = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	FZ_CHECK(h != MAP_FAILED, "mmap: %s", strerror(errno));
	/* As broker/segment.c builds one (no membarrier flag: the fuzzer's "readers" are fenced).
	 */
	h->layout_major = SHMB_LAYOUT_MAJOR;
	h->layout_minor = SHMB_LAYOUT_MINOR;
	h->fingerprint = shmb_layout_fingerprint();
	h->header_size = sizeof *h;
	h->segment_size = total;
	h->created_at_ms = 1700000000000;
	h->cfg = *cfg;
	memcpy(h->regions, regions, sizeof h->regions);
	h->rcu_gp = 1;
	h->broker_state = SHMB_BROKER_STOPPED;
	struct shmb_counter *ctrs = (struct shmb_counter *)((uint8_t *)h + regions[0].off);
	for (int i = 0; i < SHMB_COUNTER_COUNT; i++)
		snprintf(ctrs[i].label, sizeof ctrs[i].label, "counter_%d", i);
	cmm_smp_mb();
	uatomic_set(&h->magic, SHMB_MAGIC);
	munmap(h, total);
	*size = total;
	return fd;
}

void fz_broker_init(struct brk *b, const struct shmb_seg_config *cfg)
{
	brk_log_init("fuzz");
	brk_log_configure(BRK_LOG_STDERR, fz_verbose() ? BRK_LOG_DEBUG : -1, 0, 1000);
	memset(b, 0, sizeof *b);
	snprintf(b->cfg.name, sizeof b->cfg.name, "fuzz");
	b->cfg.seg = *cfg;
	b->cfg.segment_mode = 0600;
	b->cfg.socket_mode = 0600;
	b->cfg.ready_fd = -1;
	b->pid = getpid();
	b->euid = geteuid();
	b->lock_fd = b->listen_fd = b->sig_fd = b->timer_fd = b->req_fd = -1;
	uint64_t size;
	b->seg_fd = fz_segment_create(cfg, &size);
	char why[256];
	FZ_CHECK(seg_map(b->seg_fd, 1, &b->seg, why, sizeof why) == 0, "seg_map: %s", why);
	b->created = 1;
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	FZ_CHECK(b->epfd >= 0, "epoll_create1: %s", strerror(errno));
	FZ_CHECK(brk_workers_init(b) == 0, "brk_workers_init");
	FZ_CHECK(brk_index_init(b) == 0, "brk_index_init");
	b->max_conns = 1;
	b->conns = calloc(b->max_conns + BRK_CLOSING_SLOTS, sizeof *b->conns);
	b->rxbuf = malloc(SHMB_CTL_MAX_MSG + 1);
	FZ_CHECK(b->conns && b->rxbuf, "out of memory");
	for (uint32_t i = 0; i < b->max_conns + BRK_CLOSING_SLOTS; i++)
		b->conns[i] = (struct brk_conn){ .fd = -1, .worker = -1 };
	fz_broker_reset(b, NULL);
}

uint8_t *fz_snapshot(const struct brk *b)
{
	uint8_t *snap = malloc(b->seg.size);
	FZ_CHECK(snap, "out of memory");
	memcpy(snap, b->seg.base, b->seg.size);
	return snap;
}

void fz_broker_reset(struct brk *b, const uint8_t *snap)
{
	if (snap)
		memcpy(b->seg.base, snap, b->seg.size);
	const uint32_t n = b->seg.cfg.max_sessions;
	b->n_free = b->n_pending = b->live = b->n_claims = 0;
	b->reclaim_skip = b->reclaim_backoff = 0;
	memset(b->live_pos, 0, (size_t)n * sizeof *b->live_pos);
	for (uint32_t i = n; i-- > 0;)
		brk_index_push_free(b, i); /* lowest index handed out first, as after a build */
	for (uint32_t w = 0; w < b->seg.cfg.max_workers; w++) {
		const struct brk_wslot *ws = &b->wslots[w];
		FZ_CHECK(ws->pidfd < 0 && ws->conn < 0 && ws->pid == 0,
			 "worker slot %u still held after the previous input", w);
	}
	FZ_CHECK(b->n_conns == 0 && b->n_closing == 0, "a connection is still open");
}

int fz_conn_open(struct brk *b)
{
	int sv[2];
	FZ_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
		 strerror(errno));
	FZ_CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0, "fcntl: %s", strerror(errno));
	FZ_CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0, "fcntl: %s", strerror(errno));
	b->conns[0] = (struct brk_conn){
		.fd = sv[0], .pid = getpid(), .uid = geteuid(), .gid = getegid(), .worker = -1
	};
	b->n_conns = 1;
	return sv[1];
}

char fz_last_sid[2 * SHMB_SID_BYTES + 1];

int fz_conn_drain(int peer)
{
	static char buf[SHMB_CTL_MAX_MSG + 1];
	int n = 0;
	for (;;) {
		int fds[SHMB_MAX_WORKERS_LIMIT + 1];
		int nfds = 0;
		ssize_t len =
			ctl_recv(peer, buf, sizeof buf, fds, SHMB_MAX_WORKERS_LIMIT + 1, &nfds);
		for (int i = 0; i < nfds; i++)
			close(fds[i]);
		if (len < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return n;
		if (len == 0)
			return n; /* the broker closed its end (it drops a peer it cannot answer) */
		FZ_CHECK(len > 0, "reading a reply: %zd (%s)", len, strerror(errno));
		if (fz_verbose())
			fprintf(stderr, "reply: %.300s\n", buf);
		cJSON *r = cJSON_ParseWithLength(buf, (size_t)len);
		FZ_CHECK(cJSON_IsObject(r), "the reply is not a JSON object: %.200s", buf);
		const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
		FZ_CHECK(cJSON_IsBool(ok), "the reply has no boolean \"ok\": %.200s", buf);
		if (cJSON_IsFalse(ok)) {
			const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
			FZ_CHECK(cJSON_IsNumber(code) && code->valuedouble < 0,
				 "an error reply without a negative code: %.200s", buf);
		}
		const cJSON *sid = cJSON_GetObjectItemCaseSensitive(r, "sid");
		if (cJSON_IsString(sid) && strlen(sid->valuestring) < sizeof fz_last_sid)
			strcpy(fz_last_sid, sid->valuestring);
		cJSON_Delete(r);
		n++;
	}
}
