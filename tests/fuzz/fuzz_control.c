/* fuzz_control.c - libFuzzer harness for the control-message handler: arbitrary datagrams on an
 * admitted connection, handled by broker/control.c (brk_control_readable: receive, empty and
 * oversized messages) and broker/requests.c (brk_request: JSON parsing, field validation,
 * hello, create, delete, ping) against a broker state and segment built in memory.
 *
 * Input: up to FZ_MAX_MSGS datagrams separated by the byte 0x1e (ASCII record separator).
 * Before a datagram is sent, tokens are replaced: "@S0" and "@S1" by the ids of two live sessions
 * (tenant "acme"; S1 has principal "alice"), "@S2" by the id of a deleted one, "@P" by this
 * process's pid, "@F" by the layout fingerprint, "@N" by the id the last create of this input
 * returned and "@B" by SHMB_CTL_MAX_MSG spaces (a message too big for the broker's buffer,
 * without a 64 KiB seed). A datagram holding the byte 0x1d (group separator) is cut there: what
 * follows is written into a memfd sent with the message (SCM_RIGHTS), a restore's session image
 * (common/image.h, broker/restore.c), and "@L" is replaced by its length. The segment has
 * attribute areas (attr_bytes 256, attr_keys 4) for the images' attributes. So the fuzzer reaches delete's binding check and hello's admission
 * without guessing 128 random bits, and the seeds outlive a layout change. Ids come from a
 * deterministic getrandom (fuzz_common.c), so a run of an input differs from another only where
 * the wall clock decides (TTLs).
 *
 * After each datagram the broker's timer tick runs (workers poll, gaps, reclaimer, TTL sweeper),
 * as its event loop would between messages.
 *
 * Invariants checked on every input:
 *   - every datagram gets exactly one reply while the connection is open: a JSON object with a
 *     boolean "ok", and a negative "code" when it is false;
 *   - after the peer hangs up, a worker slot it was admitted to is released if it said
 *     "detach", else kept but bound to no connection (this process still runs: issue 10, a
 *     slot is released only by death or detach); the harness then settles it as its death
 *     would, and seg_verify() finds nothing wrong with the segment the broker changed, every
 *     worker slot is free again, and
 *     the broker's bookkeeping adds up: free + live + pending records = max_sessions, the live
 *     list holds exactly the LIVE records. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <urcu/uatomic.h>

#include "ctl.h"
#include "fuzz_common.h"
#include "shmb.h"
#include "sid.h"
#include "verify.h"

#define FZ_MAX_MSGS 16
#define FZ_SEP 0x1e
#define FZ_IMG 0x1d

static struct brk B;
static uint8_t *snap; /* the segment right after it was built: no sessions */

static int created(const char *tenant, const char *principal, char text[2 * SHMB_SID_BYTES + 1])
{
	uint8_t sid[SHMB_SID_BYTES];
	uint32_t idx;
	int rc = brk_index_create(&B, tenant, strlen(tenant), principal,
				  principal ? strlen(principal) : 0, principal != NULL, 0, 0, sid,
				  &idx);
	FZ_CHECK(rc == 0, "creating a session: %s", shmb_err_name(rc));
	sid_format(sid, text);
	return (int)idx;
}

/* Copies msg with the @-tokens replaced into out (cap bytes, NUL-terminated); returns the
 * length. */
static size_t substitute(const uint8_t *msg, size_t len, char *out, size_t cap,
			 char sids[3][2 * SHMB_SID_BYTES + 1], const char *pid, const char *fp,
			 const char *img_len)
{
	static char big[SHMB_CTL_MAX_MSG + 1];
	if (!big[0])
		memset(big, ' ', SHMB_CTL_MAX_MSG);
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < cap;) {
		const char *rep = NULL;
		size_t skip = 1;
		if (msg[i] == '@' && i + 2 < len && msg[i + 1] == 'S' && msg[i + 2] >= '0' &&
		    msg[i + 2] <= '2') {
			rep = sids[msg[i + 2] - '0'];
			skip = 3;
		} else if (msg[i] == '@' && i + 1 < len && msg[i + 1] == 'P') {
			rep = pid;
			skip = 2;
		} else if (msg[i] == '@' && i + 1 < len && msg[i + 1] == 'F') {
			rep = fp;
			skip = 2;
		} else if (msg[i] == '@' && i + 1 < len && msg[i + 1] == 'B') {
			rep = big;
			skip = 2;
		} else if (msg[i] == '@' && i + 1 < len && msg[i + 1] == 'N') {
			rep = fz_last_sid;
			skip = 2;
		} else if (msg[i] == '@' && i + 1 < len && msg[i + 1] == 'L') {
			rep = img_len;
			skip = 2;
		}
		if (rep) {
			size_t n = strlen(rep);
			if (o + n + 1 > cap)
				break;
			memcpy(out + o, rep, n);
			o += n;
		} else {
			out[o++] = (char)msg[i];
		}
		i += skip;
	}
	out[o] = '\0';
	return o;
}

/* The timer tick of broker/loop.c (on_tick), minus the heartbeat and the listener. */
static void tick(void)
{
	brk_workers_poll(&B);
	if (B.n_claims)
		brk_gaps_run(&B);
	brk_reclaim_run(&B, 0);
	brk_sweep_run(&B);
}

static void report(void *ctx, const char *problem)
{
	(void)ctx;
	fprintf(stderr, "seg_verify: %s\n", problem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char out[2 * SHMB_CTL_MAX_MSG + 1];
	if (!snap) {
		struct shmb_seg_config cfg;
		fz_config(&cfg);
		cfg.attr_bytes = 256;
		cfg.attr_keys = 4;
		fz_broker_init(&B, &cfg);
		snap = fz_snapshot(&B);
	}
	fz_rng_seed(1);
	fz_broker_reset(&B, snap);
	fz_last_sid[0] = '\0';
	char sids[3][2 * SHMB_SID_BYTES + 1];
	created("acme", NULL, sids[0]);
	created("acme", "alice", sids[1]);
	brk_index_retire(&B, (uint32_t)created("acme", NULL, sids[2]), SHMB_RETIRE_DELETED);
	char pid[16], fp[16];
	snprintf(pid, sizeof pid, "%d", (int)getpid());
	snprintf(fp, sizeof fp, "%u", shmb_layout_fingerprint());

	int peer = fz_conn_open(&B);
	size_t start = 0;
	for (int m = 0; m < FZ_MAX_MSGS && start <= size && B.conns[0].fd >= 0; m++) {
		const uint8_t *sep =
			start < size ? memchr(data + start, FZ_SEP, size - start) : NULL;
		size_t end = sep ? (size_t)(sep - data) : size;
		const uint8_t *img = start < end ? memchr(data + start, FZ_IMG, end - start) : NULL;
		size_t msg_end = img ? (size_t)(img - data) : end;
		size_t img_len = img ? end - msg_end - 1 : 0;
		char len_text[24];
		snprintf(len_text, sizeof len_text, "%zu", img_len);
		size_t n = substitute(data + start, msg_end - start, out, sizeof out, sids, pid, fp,
				      len_text);
		int mfd = img ? memfd_create("fuzz-image", MFD_CLOEXEC) : -1;
		FZ_CHECK(!img || mfd >= 0, "memfd_create: %s", strerror(errno));
		FZ_CHECK(!img_len || write(mfd, img + 1, img_len) == (ssize_t)img_len,
			 "writing the image: %s", strerror(errno));
		/* With the image's fd when there is one (an oversized message goes without: ctl_send
		 * refuses it, and the broker only reads its length anyway). */
		if (mfd >= 0 && n <= SHMB_CTL_MAX_MSG)
			FZ_CHECK(ctl_send(peer, out, n, &mfd, 1) == 0, "send %zu bytes: %s", n,
				 strerror(errno));
		else
			FZ_CHECK(send(peer, out, n, MSG_NOSIGNAL) == (ssize_t)n,
				 "send %zu bytes: %s", n, strerror(errno));
		if (mfd >= 0)
			close(mfd);
		brk_control_readable(&B, 0, EPOLLIN);
		int replies = fz_conn_drain(peer);
		tick();
		if (B.conns[0].fd >= 0)
			FZ_CHECK(replies == 1, "message %d got %d replies", m, replies);
		if (!sep)
			break;
		start = end + 1;
	}
	/* The peer hangs up: the broker reads EOF and settles the worker it admitted, if any. */
	close(peer);
	if (B.conns[0].fd >= 0)
		brk_control_readable(&B, 0, EPOLLIN | EPOLLRDHUP);
	FZ_CHECK(B.conns[0].fd < 0, "the broker kept the connection of a peer that hung up");
	for (uint32_t w = 0; w < B.seg.cfg.max_workers; w++) {
		if (!B.wslots[w].pid)
			continue;
		FZ_CHECK(B.wslots[w].conn < 0, "worker slot %u is bound to a closed connection", w);
		FZ_CHECK(uatomic_read(&seg_worker(&B.seg, w)->state) == SHMB_WORKER_LIVE,
			 "worker slot %u of a running process is not LIVE", w);
		brk_worker_settle(&B, w, 1); /* what its pidfd would do at our exit */
	}

	struct seg_verify_stats st;
	int problems = seg_verify(&B.seg, report, NULL, &st);
	FZ_CHECK(problems == 0, "seg_verify found %d problem(s) after the requests", problems);
	FZ_CHECK(st.workers_live == 0 && st.workers_dead == 0, "a worker slot is still held");
	FZ_CHECK(B.n_free + B.live + B.n_pending == B.seg.cfg.max_sessions,
		 "records: %u free + %u live + %u pending != %u", B.n_free, B.live, B.n_pending,
		 B.seg.cfg.max_sessions);
	FZ_CHECK(st.by_state[SHMB_REC_LIVE] == B.live, "%u LIVE records but %u on the live list",
		 st.by_state[SHMB_REC_LIVE], B.live);
	for (uint32_t i = 0; i < B.live; i++)
		FZ_CHECK(uatomic_read(&seg_rec(&B.seg, B.live_list[i])->state) == SHMB_REC_LIVE,
			 "record %u is on the live list but not LIVE", B.live_list[i]);
	return 0;
}
