/* shmctl.h - internals shared by the files of shmctl, the admin tool (docs/shmctl.md).
 *
 * shmctl.c parses the command line and dispatches; shmctl_util.c holds output helpers (tables,
 * ages, JSON) and the read-only segment access every inspection command shares; one file per
 * group of commands does the rest. Nothing here is a library: everything prints and returns an
 * exit status. */
#ifndef SHMCTL_H
#define SHMCTL_H

#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "layout.h"
#include "seg.h"

/* Exit statuses (docs/shmctl.md). */
enum {
	SHMCTL_OK = 0,
	SHMCTL_NOTFOUND = 1, /* no such session */
	SHMCTL_USAGE = 2,    /* bad command line */
	SHMCTL_UNAVAIL = 3,  /* no segment, unusable segment, broker down, or a failure */
	SHMCTL_DAMAGED = 4,  /* verify found damage */
};

#define SHMCTL_SCHEMA_VERSION 1
#define SHMCTL_MAX_ARGS 4

/* The parsed command line. */
struct shmctl_opts {
	const char *name;    /* instance name */
	const char *command; /* verb */
	int json;
	const char *args[SHMCTL_MAX_ARGS]; /* positional arguments after the verb */
	int nargs;
	const char *tenant; /* sessions --tenant */
	uint64_t after;     /* events --after */
	int has_after;
	int follow;      /* events --follow */
	uint32_t stream; /* events --stream */
	int has_stream;
	long iterations;    /* top --iterations (0: until SIGINT or q) */
	long interval_ms;   /* top --interval-ms */
	const char *listen; /* metrics --listen ADDR:PORT */
};

/* Prints "shmctl: VERB: <reason>" on stderr. */
void shmctl_fail(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "shmctl: <reason>" and a hint on stderr; returns SHMCTL_USAGE. */
int shmctl_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Opens the segment of o->name read-only. Returns SHMCTL_OK, or prints why (as verb) and returns
 * SHMCTL_UNAVAIL. When raw_rc is not NULL it receives seg_open_name()'s code and, if why is not
 * NULL, the reason, and nothing is printed for SHMB_ECORRUPT / SHMB_EVERSION / SHMB_EBROKER
 * (verify reports those itself). */
int shmctl_open(const struct shmctl_opts *o, const char *verb, struct shmb_seg *seg, int *raw_rc,
		char *why, size_t whylen);

/* A consistent copy of record idx: state and generation are read before and after copying and
 * must agree (retried a few times). Returns 0, or -1 when the record kept changing. */
int shmctl_rec_snapshot(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *out);

/* Text of a tenant or principal of a record copy, clamped to its capacity: valid UTF-8 is kept,
 * control characters and invalid bytes become '?', so it is safe for a terminal and for JSON. */
void shmctl_text(char *out, size_t outlen, const char *in, uint32_t len, uint32_t cap);
/* Length of the valid UTF-8 sequence at s (n > 0 bytes available), 0 if s[0] starts none. */
size_t shmctl_utf8_seq(const uint8_t *s, size_t n);
/* idx_rec_expired() for a record (copy), guarded against absurd timestamps that would overflow
 * its arithmetic (such a record counts as not expired; verify reports it). */
int shmctl_rec_expired(const struct shmb_session_rec *r, int64_t now);

/* Expiry time of a LIVE record copy: the earlier of its TTL deadlines (inactivity counting only
 * without subscribers), or 0 when it never expires. */
int64_t shmctl_expires_at(const struct shmb_session_rec *r);
/* Number of bits set in r->subscribers. */
uint32_t shmctl_subscriber_count(const struct shmb_session_rec *r);

/* "3s ago", "5m12s ago", "in 2h" for a wall-clock ms timestamp; "never" for 0. */
void shmctl_age(char *out, size_t len, int64_t ts_ms, int64_t now);
/* A duration in ms as "1.5s", "30m", "4h", "2d3h", or "none" for 0. */
void shmctl_duration(char *out, size_t len, uint64_t ms);
/* Local time with its zone, "2024-05-01 12:00:00 CEST", of a wall-clock ms timestamp; "-" for 0. */
void shmctl_localtime(char *out, size_t len, int64_t ts_ms);
/* The same with milliseconds, "2024-05-01 12:00:00.123 CEST". */
void shmctl_localtime_ms(char *out, size_t len, int64_t ts_ms);
/* "144.3 MiB" */
void shmctl_bytes(char *out, size_t len, uint64_t bytes);

/* JSON helpers: integers are emitted as exact decimal text (cJSON numbers are doubles). */
void shmctl_json_u64(cJSON *obj, const char *key, uint64_t v);
void shmctl_json_i64(cJSON *obj, const char *key, int64_t v);
cJSON *shmctl_json_u64_item(uint64_t v);
/* Prints doc (one document, formatted) on stdout and deletes it. Returns SHMCTL_OK, or
 * SHMCTL_UNAVAIL when out of memory. */
int shmctl_json_print(cJSON *doc, const char *verb);

/* Aligned "key: value" lines with the keys right-aligned (as systemctl status does). */
struct shmctl_kv {
	int width;
};
void shmctl_kv(const struct shmctl_kv *kv, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A table of text cells printed with aligned columns and a header row. */
struct shmctl_table {
	int ncols;
	const char *const *head;
	const char *align; /* one 'l' or 'r' per column */
	char **cells;      /* nrows * ncols, heap */
	size_t nrows, cap;
};
void shmctl_table_init(struct shmctl_table *t, int ncols, const char *const *head,
		       const char *align);
/* Adds a row of ncols strings (copied). Returns 0 or -1 when out of memory. */
int shmctl_table_add(struct shmctl_table *t, const char *const *row);
void shmctl_table_print(const struct shmctl_table *t, FILE *f);
void shmctl_table_fini(struct shmctl_table *t);

/* The commands. Each returns the exit status. */
/* Where the segment is and which pages back it (shmctl_pages.c). */
struct shmctl_pages {
	char path[300];     /* seg_locate's path, "?" when the path file is refused */
	uint64_t page_size; /* 2097152 when (part of) the mapping is PMD-mapped, else 4096;
				     * hugetlbfs: its page size */
	uint64_t
		huge_mapped_bytes; /* of this process's mapping, after touching the index's pages */
	char setting[64];          /* "tmpfs huge=always", "hugetlbfs", ... */
};
void shmctl_pages(const struct shmctl_opts *o, const struct shmb_seg *seg, struct shmctl_pages *p);

int shmctl_cmd_status(const struct shmctl_opts *o);
int shmctl_cmd_sessions(const struct shmctl_opts *o);
int shmctl_cmd_show(const struct shmctl_opts *o);
int shmctl_cmd_workers(const struct shmctl_opts *o);
int shmctl_cmd_delete(const struct shmctl_opts *o);
int shmctl_cmd_ping(const struct shmctl_opts *o);
int shmctl_cmd_stop(const struct shmctl_opts *o);
int shmctl_cmd_events(const struct shmctl_opts *o);
int shmctl_cmd_verify(const struct shmctl_opts *o);
int shmctl_cmd_top(const struct shmctl_opts *o);
int shmctl_cmd_metrics(const struct shmctl_opts *o); /* shmctl_metrics.c */
int shmctl_cmd_reload(const struct shmctl_opts *o);  /* shmctl_ctl.c */
int shmctl_cmd_dump(const struct shmctl_opts *o);    /* shmctl_dump.c */
int shmctl_cmd_restore(const struct shmctl_opts *o); /* shmctl_dump.c */
/* shmctl_ctl.c: sends req to the broker of o->name. Returns 0 with *reply set, the reply's error
 * code with *reply set (a refusal), or -SHMCTL_UNAVAIL after printing why no broker answered. */
int shmctl_broker_call(const struct shmctl_opts *o, const char *verb, const cJSON *req,
		       cJSON **reply);

/* Snapshot of the figures status and top show, gathered in one pass. */
struct shmctl_summary {
	uint32_t sessions_live;    /* LIVE and not expired */
	uint32_t sessions_expired; /* LIVE but past a TTL, awaiting the sweeper */
	uint32_t sessions_linking, sessions_unlinking, sessions_retired, sessions_free;
	uint32_t workers_live, workers_dead;
	uint64_t events_published; /* workers' counts + SHMB_CTR_EVENTS_PUBLISHED_RETIRED */
	uint64_t rcu_gp;
	int broker_alive;
};
void shmctl_summarize(const struct shmb_seg *seg, int64_t now, struct shmctl_summary *s);
/* "running", "dead" or "stopped" and whether the broker process is alive. */
const char *shmctl_broker_state(const struct shmb_seg *seg, int *alive);
/* Counter value by index (0 when out of range). */
uint64_t shmctl_counter(const struct shmb_seg *seg, uint32_t i);

/* Payloads and attribute values (shmctl_events.c): the value as one line of JSON text when the
 * whole of it is one strict JSON value, else NULL (free with free()); printed for a person (JSON
 * as is, else a quoted string with C escapes); 1 when it is UTF-8 text without NUL; base64 (free
 * with free(); NULL when out of memory). */
char *shmctl_payload_json(const uint8_t *s, size_t n);
void shmctl_print_payload(FILE *f, const uint8_t *s, size_t n);
int shmctl_payload_text(const uint8_t *s, size_t n);
char *shmctl_base64(const uint8_t *s, size_t n);

/* The attributes of record idx of generation gen (shmctl_attrs.c), for `show`: printed under
 * the other fields (human), or as an "attributes" array added to j. */
void shmctl_attrs_human(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, int width);
void shmctl_attrs_json(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, cJSON *j);
/* For `dump`: an "attributes" array of {key, version, value_base64} added to j. Returns 0, or -1
 * when the record was recycled while read (j's array is then empty). */
int shmctl_attrs_dump(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, cJSON *j);

#endif
