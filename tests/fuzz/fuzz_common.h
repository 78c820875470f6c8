/* fuzz_common.h - what the libFuzzer harnesses of tests/fuzz/ share: a small segment built in
 * memory (a memfd, so seg_map() validates it exactly as a worker's mapping is validated) and a
 * broker's private state (struct brk) around it, driven in-process without its event loop.
 *
 * The harnesses link the broker's files except main.c (its own main) and log.c (replaced by
 * quiet brk_log/brk_fatal here, so the fuzzer's output stays readable), the client library and
 * common/, all built with -fsanitize=fuzzer,address,undefined (tests/fuzz/CMakeLists.txt).
 * Anything unexpected aborts (FZ_CHECK), which libFuzzer reports as a crash with the input. */
#ifndef SHMB_FUZZ_COMMON_H
#define SHMB_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "broker.h"

/* libFuzzer's entry points (declared for -Wmissing-prototypes). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with file:line and the condition when cond is false: an invariant the code under test
 * must keep whatever the input. */
#define FZ_CHECK(cond, ...)                                              \
	do {                                                             \
		if (!(cond))                                             \
			fz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); \
	} while (0)
void fz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 4, 5)));

/* 1 when SHMB_FUZZ_LOG=1: the broker's log, replies and verdicts on stderr (for a reproducer). */
int fz_verbose(void);

/* Session ids come from getrandom(); the fuzz targets link with -Wl,--wrap=getrandom so that
 * they come from this deterministic generator instead, reseeded for every input, and a crash
 * reproduces from its input alone. */
void fz_rng_seed(uint64_t seed);
ssize_t __wrap_getrandom(void *buf, size_t len, unsigned int flags);

/* brk_fatal prints whatever fz_verbose() says while this is 0; fuzz_segment sets it while a
 * broker adopts a damaged segment, where a refusal is an expected outcome, not news. */
extern int fz_quiet_fatal;

/* brk_segment_open() opens the segment by name: the harnesses link with -Wl,--wrap=shm_open
 * and --wrap=shm_unlink, so that it opens (a duplicate of) fz_adopt_fd instead, creates nothing
 * (O_CREAT fails with EACCES) and never touches /dev/shm. -1: every shm_open fails (ENOENT). */
extern int fz_adopt_fd;
int __wrap_shm_open(const char *name, int flags, mode_t mode);
int __wrap_shm_unlink(const char *name);

/* The tiny configuration the harnesses use (8 pages of segment). */
void fz_config(struct shmb_seg_config *cfg);

/* Builds a segment for cfg in a fresh memfd as the broker does (header, configuration, region
 * table, counter labels, magic last). Returns the fd; *size gets the segment size. */
int fz_segment_create(const struct shmb_seg_config *cfg, uint64_t *size);

/* A broker around a fresh segment: seg mapped read-write, eventfds, index bookkeeping, one
 * connection entry (served connections are capped at 1), no listener, no timer. Its epoll set
 * only receives the pidfds of admitted workers. */
void fz_broker_init(struct brk *b, const struct shmb_seg_config *cfg);
/* Copies the segment's current bytes (fz_broker_reset restores them). */
uint8_t *fz_snapshot(const struct brk *b);
/* Restores the segment to snap and the bookkeeping to "every record free, nothing pending". */
void fz_broker_reset(struct brk *b, const uint8_t *snap);

/* Opens connection 0 as brk_control_accept() would for this process (a socketpair: the broker
 * keeps one end, nonblocking). Returns the peer's end. */
int fz_conn_open(struct brk *b);
/* Reads every reply waiting on the peer's end, closes the fds that came with them, checks that
 * each is a JSON object with a boolean "ok". Returns the number of replies. The "sid" of the
 * last reply that had one is kept in fz_last_sid ("" before any). */
int fz_conn_drain(int peer);
extern char fz_last_sid[2 * SHMB_SID_BYTES + 1];

#endif
