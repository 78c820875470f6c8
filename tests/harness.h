/* harness.h - the multi-process test harness: real shmbrokerd processes, shmctl runs, forked
 * children that report through a pipe, and a teardown that proves nothing was left behind.
 *
 * Every test file uses it the same way:
 *
 *     TestSuite(session, .init = h_setup, .fini = h_teardown, .timeout = 30);
 *     H_TEST(session, basics) {
 *             struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "8"));
 *             shmb_client *c = h_attach(b->name);
 *             ...
 *     }
 *
 * h_setup() (run by Criterion in the test's own process, before the test) makes a private
 * runtime directory (mkdtemp under /tmp), exports it as SHMB_RUNTIME_DIR, and notes which fds
 * are open. h_finish() (the last statement of every H_TEST body) detaches the clients
 * h_attach() made, kills and reaps children the test left running (a failure), stops every
 * broker with SIGTERM and requires exit status 0, unlinks each segment and checks it is gone,
 * checks that no child process is left unreaped and no fd leaked, then removes the runtime
 * directory. It gathers every problem first and fails once at the end, so a failing teardown
 * still cleans up. h_teardown() (Criterion's .fini) does the same cleanup after a test that
 * failed before reaching h_finish() (Criterion does not count assertions made in .fini).
 *
 * Brokers and shmctl run with PR_SET_PDEATHSIG = SIGKILL, so a test process that crashes or
 * times out takes its brokers with it. Children started with h_child_start() must report
 * through their pipe or exit status and end with _exit(); they never use cr_assert.
 *
 * Synchronisation never sleeps: a broker is awaited through --ready-fd, a child through its
 * pipe or its pidfd. Where no event exists (the broker noticing a death, a TTL passing),
 * H_POLL_UNTIL re-checks a condition until a deadline. */
#ifndef SHMB_TEST_HARNESS_H
#define SHMB_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>

#include "shmb.h"

#ifndef SHMBROKERD_PATH
#error "SHMBROKERD_PATH must be defined by the build (tests/CMakeLists.txt)"
#endif
#ifndef SHMCTL_PATH
#error "SHMCTL_PATH must be defined by the build (tests/CMakeLists.txt)"
#endif

/* How long anything may take before the harness calls it hung (sanitizer builds are slow). */
#define H_READY_TIMEOUT_MS 15000
#define H_EXIT_TIMEOUT_MS 15000
#define H_RUN_TIMEOUT_MS 20000

#define H_MAX_ARGS 48
#define H_MAX_BROKERS 16

/* A NULL-terminated list of extra broker arguments: H_ARGS("--max-sessions", "4"). */
#define H_ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define H_NOARGS ((const char *const[]){ NULL })

/* Small broker defaults for tests (a few hundred KiB of segment); a test's own arguments come
 * after them, so they override (the broker takes the last value of a repeated flag). */
#define H_DEFAULT_ARGS                                                         \
	"--max-sessions", "64", "--ring-events", "16", "--ring-bytes", "4096", \
		"--max-event-bytes", "1024", "--max-workers", "16", "--readers-per-worker", "4"

struct h_broker {
	char name[64];
	pid_t pid; /* 0 when not running */
	int pidfd; /* -1 when not running */
	int nargs;
	char *args[H_MAX_ARGS]; /* the extra arguments, copied */
	int no_defaults;        /* 1: do not pass H_DEFAULT_ARGS */
	char log_path[256];     /* the broker's stderr, appended across restarts */
	char shm_path[128];     /* /dev/shm/shmb.<name> */
	char sock_path[256];    /* <runtime dir>/<name>.sock */
};

/* Result of running a program (shmctl). */
struct h_result {
	int status;   /* exit code, or 128 + signal number when killed by a signal */
	int signaled; /* 1 when it died of a signal (a crash: always a test failure) */
	char *out;    /* stdout, NUL-terminated (malloc'd) */
	char *err;    /* stderr, NUL-terminated (malloc'd) */
};

/* A forked child running a function. fn returns the child's exit status. The fields are a copy
 * kept up to date by the h_child_* calls: the harness keeps its own record (slot), so the
 * teardown never reads this struct (it may live in a stack frame that is gone by then). */
struct h_child {
	pid_t pid;
	int pidfd; /* -1 when the kernel has no pidfd_open */
	int rfd;   /* read end of the child's report pipe */
	int done;
	int status; /* raw waitpid status once done */
	int slot;   /* the harness's record */
};
typedef int (*h_child_fn)(void *arg, int wfd);

/* ---- Criterion hooks ---- */
void h_setup(void);
/* Criterion .fini: cleans up whatever is left (also after a failed assertion) and logs it. */
void h_teardown(void);
/* The clean-teardown proof, run at the end of every H_TEST body (where a failed assertion still
 * fails the test; Criterion ignores assertions made in .fini): detaches clients, stops every
 * broker and requires exit status 0, unlinks and checks each segment, and fails on children
 * left running or unreaped and on leaked fds. */
void h_finish(void);

/* Removes a directory and the files in it (not subdirectories). */
void h_rm_dir(const char *dir);

/* A Criterion test whose body ends with h_finish(). Use it instead of Test():
 *     H_TEST(suite, name, .timeout = 60) { ... } */
#define H_TEST(suite, name, ...)                   \
	static void h_body_##suite##_##name(void); \
	Test(suite, name, ##__VA_ARGS__)           \
	{                                          \
		h_body_##suite##_##name();         \
		h_finish();                        \
	}                                          \
	static void h_body_##suite##_##name(void)

/* The private runtime dir made by h_setup(). */
const char *h_runtime_dir(void);
/* A fresh unique instance name "t<pid>_<n>". */
void h_unique_name(char *buf, size_t len);

/* ---- brokers ---- */

/* Allocates a broker record with a unique name and the given extra args (NULL-terminated, may
 * be NULL); does not start it. */
struct h_broker *h_broker_new(const char *const *extra);
/* Starts b and waits for "ready\n" on its --ready-fd. Returns 0 when ready; -1 when it exited
 * first (*wstatus gets its raw wait status; may be NULL). Fails the test on a timeout. */
int h_broker_spawn(struct h_broker *b, int *wstatus);
/* h_broker_new + h_broker_spawn, failing the test (with the broker's log) unless it is ready.
 * Also sets SHMB_NAME to the first broker's name of the test. */
struct h_broker *h_broker_start(const char *const *extra);
/* SIGTERM, wait, and assert it exited with status 0. */
void h_broker_stop(struct h_broker *b);
/* SIGKILL and reap. */
void h_broker_kill(struct h_broker *b);
/* Waits up to timeout_ms for b to exit by itself (a fault point, a refusal); asserts it did and
 * returns its raw wait status. */
int h_broker_wait_exit(struct h_broker *b, int timeout_ms);
/* Starts b again with the same name and arguments; asserts it is ready. */
void h_broker_restart(struct h_broker *b);
/* The broker's stderr so far (malloc'd, NUL-terminated, never NULL). */
char *h_broker_log(const struct h_broker *b);
/* A raw control connection to b's socket (SOCK_SEQPACKET, close-on-exec), asserting success:
 * for tests that speak the protocol themselves (docs/protocol.md). */
int h_ctl_conn(const struct h_broker *b);

/* ---- clients ---- */

/* shmb_attach(name), asserting success; the teardown detaches it if the test did not. */
shmb_client *h_attach(const char *name);
/* Detaches a client from h_attach(). */
void h_detach(shmb_client *c);

/* ---- programs ---- */

/* Runs argv (NULL-terminated; argv[0] a path) with stdout and stderr captured. Fails the test
 * if it does not end within H_RUN_TIMEOUT_MS. Free with h_result_free(). */
void h_run(struct h_result *r, const char *const *argv);
/* Runs shmctl: "shmctl [--name N] ARGS...", NULL-terminated; name NULL: no --name. */
void h_shmctl(struct h_result *r, const char *name, ...) __attribute__((sentinel));
/* Starts `shmctl metrics --listen 127.0.0.1:0` for instance name (killed if the test dies); its
 * port, read from the line it prints, goes to *port. Returns its pid. */
pid_t h_metrics_listen(const char *name, int *port);
/* Runs "shmctl --name N ARGS... --json", asserts exit 0 and no crash, parses stdout. status may
 * exit 3 (broker not running), and its exit status must agree with its broker.alive. */
cJSON *h_shmctl_json(const char *name, ...) __attribute__((sentinel));
void h_result_free(struct h_result *r);

/* ---- children ---- */

/* Forks a child that runs fn(arg, wfd) and _exit()s with its return value. The child gets
 * PR_SET_PDEATHSIG = SIGKILL and a fresh report pipe. */
void h_child_start(struct h_child *ch, h_child_fn fn, void *arg);
/* Reads exactly len bytes the child wrote. Returns len, 0 on EOF first, -1 on timeout. */
ssize_t h_child_read(struct h_child *ch, void *buf, size_t len, int timeout_ms);
/* Waits for the child to end; asserts it exited normally and returns its exit code. */
int h_child_wait(struct h_child *ch, int timeout_ms);
/* SIGKILL and reap (no assertion on the status). */
void h_child_kill(struct h_child *ch);
/* In a child: writes all of buf to fd. Returns 0 or -1. */
int h_write_all(int fd, const void *buf, size_t len);

/* ---- helpers ---- */

/* Monotonic milliseconds. */
int64_t h_now_ms(void);
/* Wall-clock milliseconds. */
int64_t h_wall_ms(void);
/* Sleeps for the clock (TTL tests only; never to wait for another process). */
void h_sleep_ms(int ms);
/* A random well-formed sid that no broker created. */
void h_random_sid(char sid[SHMB_SID_LEN + 1]);
/* 1 when s is 32 lowercase hex characters. */
int h_sid_wellformed(const char *s);
/* Reads statistics counter i (SHMB_CTR_*) of instance name's segment, mapping it read-only.
 * Returns the value; fails the test if the segment cannot be mapped. */
uint64_t h_counter(const char *name, uint32_t i);
/* Number from a JSON object by path "a.b" (asserts it exists and is a number). */
double h_json_num(const cJSON *obj, const char *path);
/* Item by path "a.b", NULL when absent. */
const cJSON *h_json_get(const cJSON *obj, const char *path);
/* 1 when some object inside j (recursively) has key == value (a number). */
int h_json_has_number(const cJSON *j, const char *key, double value);
/* The session array of "shmctl sessions --json" (top-level array, or the "sessions" member). */
const cJSON *h_json_sessions(const cJSON *doc);
/* Case-insensitive substring search in s (NULL-safe). */
int h_contains(const char *s, const char *needle);

/* Fail the test now with a message (Criterion 2.4 has cr_assert_fail, newer ones cr_fatal). */
#ifndef cr_fatal
#define cr_fatal(...) cr_assert_fail(__VA_ARGS__)
#endif

/* Re-checks cond every 2 ms until it holds or timeout_ms passed; evaluates to 1 or 0. */
#define H_POLL_UNTIL(cond, timeout_ms)                           \
	({                                                       \
		int64_t h_deadline_ = h_now_ms() + (timeout_ms); \
		int h_ok_ = 0;                                   \
		for (;;) {                                       \
			if (cond) {                              \
				h_ok_ = 1;                       \
				break;                           \
			}                                        \
			if (h_now_ms() > h_deadline_)            \
				break;                           \
			h_sleep_ms(2);                           \
		}                                                \
		h_ok_;                                           \
	})

/* Assert an API call returned want; the message names both codes. */
#define H_EXPECT_RC(call, want)                                                                    \
	do {                                                                                       \
		int h_rc_ = (int)(call);                                                           \
		int h_want_ = (want);                                                              \
		cr_assert_eq(h_rc_, h_want_, "%s returned %d %s (%s), expected %d %s (%s)", #call, \
			     h_rc_, shmb_err_name(h_rc_), shmb_strerror(h_rc_), h_want_,           \
			     shmb_err_name(h_want_), shmb_strerror(h_want_));                      \
	} while (0)

/* Assert an API call succeeded (>= 0). */
#define H_OK(call)                                                                   \
	do {                                                                         \
		int64_t h_rc_ = (int64_t)(call);                                     \
		cr_assert_geq(h_rc_, 0, "%s failed: %d %s (%s)", #call, (int)h_rc_,  \
			      shmb_err_name((int)h_rc_), shmb_strerror((int)h_rc_)); \
	} while (0)

#endif
