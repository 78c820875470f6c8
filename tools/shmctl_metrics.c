/* shmctl_metrics.c - `shmctl metrics`: every counter and gauge of the segment in the Prometheus
 * text exposition format (version 0.0.4), and `--listen ADDR:PORT`, which serves it at /metrics.
 *
 * Like every inspection command it maps the segment read-only (no broker needed): a scrape is a
 * snapshot of lock-free reads, not a transaction. Names carry units (`_seconds`, `_bytes`) and
 * counters end in `_total`; every sample has the label instance="<name>", and the live sessions
 * are also counted per tenant (one pass over the records, which the session gauges need anyway;
 * at most SHMCTL_METRICS_TENANTS tenants, the rest under tenant="~other"). Label values are
 * escaped as the format requires (backslash, double quote, newline).
 *
 * The server is deliberately small: one blocking accept loop, one request at a time, the request
 * head bounded (SHMCTL_HTTP_MAX bytes, 431 past it) and read within SHMCTL_HTTP_TIMEOUT_MS in all
 * (poll with a deadline, so a client that sends a byte at a time cannot hold it longer), one
 * response sent within SHMCTL_HTTP_SEND_MS (a client that stops reading is cut off), then close. Each scrape maps the segment afresh, so a restarted broker's new segment
 * is seen; no segment is a 503 with the reason. SIGINT or SIGTERM stops it (exit 0). */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "clock.h"
#include "seg.h"
#include "shmctl.h"

#define SHMCTL_METRICS_TENANTS 1000
#define SHMCTL_HTTP_MAX 8192
#define SHMCTL_HTTP_TIMEOUT_MS 2000
#define SHMCTL_HTTP_SEND_MS 3000 /* the whole answer, to a client that reads too slowly */

/* The broker's counters (common/layout.h), as Prometheus counters; sessions_live is a gauge
 * (shmb_sessions{state="live"} counts it from the records). */
static const struct {
	uint32_t idx;
	const char *name, *help;
} counters[] = {
	{ SHMB_CTR_SESSIONS_CREATED, "shmb_sessions_created_total", "Sessions created." },
	{ SHMB_CTR_SESSIONS_DELETED, "shmb_sessions_deleted_total", "Sessions deleted." },
	{ SHMB_CTR_SESSIONS_EXPIRED, "shmb_sessions_expired_total",
	  "Sessions expired by a TTL (retired by the sweeper)." },
	{ SHMB_CTR_SESSIONS_RECLAIMED, "shmb_sessions_reclaimed_total",
	  "Session records recycled after a grace period." },
	{ SHMB_CTR_WORKERS_ADMITTED, "shmb_workers_admitted_total", "Worker attaches admitted." },
	{ SHMB_CTR_WORKERS_DIED, "shmb_workers_died_total", "Workers that died attached." },
	{ SHMB_CTR_WORKERS_REFUSED, "shmb_workers_refused_total", "Worker attaches refused." },
	{ SHMB_CTR_GRACE_PERIODS, "shmb_grace_periods_total", "RCU grace periods completed." },
	{ SHMB_CTR_SWEEPS, "shmb_sweeps_total", "TTL sweeps run." },
	{ SHMB_CTR_CTL_ERRORS, "shmb_control_errors_total",
	  "Control requests answered with an error." },
	{ SHMB_CTR_GAPS_WRITTEN, "shmb_gaps_written_total",
	  "Gap records written for publishers that died mid-publish." },
};

struct tenant_count {
	char name[SHMB_TENANT_CAP * 4 + 1];
	uint32_t sessions;
	uint64_t subscribers;
};

/* A label value, escaped: \\ \" \n. */
static void label_value(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

struct out {
	FILE *f;
	const char *inst;
};

static void family(const struct out *o, const char *name, const char *type, const char *help)
{
	fprintf(o->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample: name{instance="..."[,extra]} value. extra is "" or `key="value"` already escaped. */
static void sample(const struct out *o, const char *name, const char *extra, double v)
{
	fprintf(o->f, "%s{instance=\"", name);
	label_value(o->f, o->inst);
	fprintf(o->f, "\"%s%s} %.3f\n", extra[0] ? "," : "", extra, v);
}

static void sample_u64(const struct out *o, const char *name, const char *extra, uint64_t v)
{
	fprintf(o->f, "%s{instance=\"", name);
	label_value(o->f, o->inst);
	fprintf(o->f, "\"%s%s} %" PRIu64 "\n", extra[0] ? "," : "", extra, v);
}

static void one(const struct out *o, const char *name, const char *type, const char *help,
		uint64_t v)
{
	family(o, name, type, help);
	sample_u64(o, name, "", v);
}

static int cmp_tenant(const void *a, const void *b)
{
	return strcmp(((const struct tenant_count *)a)->name,
		      ((const struct tenant_count *)b)->name);
}

/* Live (not expired) sessions per tenant; returns how many entries t holds. */
static size_t tenants(const struct shmb_seg *seg, int64_t now, struct tenant_count *t, size_t cap,
		      uint32_t *other)
{
	size_t n = 0;
	*other = 0;
	for (uint32_t i = 0; i < seg->cfg.max_sessions; i++) {
		struct shmb_session_rec r;
		if (uatomic_read(&seg_rec(seg, i)->state) != SHMB_REC_LIVE ||
		    shmctl_rec_snapshot(seg, i, &r) < 0 || r.state != SHMB_REC_LIVE ||
		    shmctl_rec_expired(&r, now))
			continue;
		char name[sizeof t[0].name];
		shmctl_text(name, sizeof name, r.tenant, r.tenant_len, SHMB_TENANT_CAP);
		size_t k;
		for (k = 0; k < n && strcmp(t[k].name, name) != 0; k++)
			;
		if (k == n) {
			if (n == cap) {
				(*other)++;
				continue;
			}
			snprintf(t[n].name, sizeof t[n].name, "%s", name);
			t[n].sessions = 0;
			t[n].subscribers = 0;
			n++;
		}
		t[k].sessions++;
		t[k].subscribers += shmctl_subscriber_count(&r);
	}
	qsort(t, n, sizeof t[0], cmp_tenant);
	return n;
}

/* Writes the whole exposition of seg to f. */
static void metrics_write(FILE *f, const char *inst, const struct shmb_seg *seg)
{
	const struct out o = { f, inst };
	const struct shmb_seg_header *h = seg_hdr(seg);
	int64_t now = shmb_now_ms();
	struct shmctl_summary s;
	shmctl_summarize(seg, now, &s);
	const char *bstate = shmctl_broker_state(seg, &s.broker_alive);

	one(&o, "shmb_broker_up", "gauge", "1 when the broker process is alive.",
	    (uint64_t)s.broker_alive);
	family(&o, "shmb_broker_info", "gauge", "The broker's state and the layout (value 1).");
	char extra[256];
	snprintf(extra, sizeof extra, "state=\"%s\",layout=\"%u.%u\"", bstate,
		 (unsigned)h->layout_major, (unsigned)h->layout_minor);
	sample_u64(&o, "shmb_broker_info", extra, 1);
	one(&o, "shmb_broker_generation", "gauge", "Broker (re)starts on this segment.",
	    uatomic_read(&h->broker_generation));
	family(&o, "shmb_broker_start_time_seconds", "gauge",
	       "When the broker started (Unix time).");
	sample(&o, "shmb_broker_start_time_seconds", "",
	       (double)uatomic_read(&h->broker_started_ms) / 1000.0);
	family(&o, "shmb_broker_heartbeat_age_seconds", "gauge",
	       "Seconds since the broker's last heartbeat (alert when it grows).");
	int64_t hb = uatomic_read(&h->heartbeat_ms);
	sample(&o, "shmb_broker_heartbeat_age_seconds", "",
	       hb > 0 && now > hb ? (double)(now - hb) / 1000.0 : 0.0);
	family(&o, "shmb_segment_created_time_seconds", "gauge",
	       "When the segment was built (Unix time).");
	sample(&o, "shmb_segment_created_time_seconds", "", (double)h->created_at_ms / 1000.0);
	one(&o, "shmb_segment_size_bytes", "gauge", "Size of the shared-memory segment.",
	    seg->size);

	family(&o, "shmb_sessions", "gauge", "Session records by state.");
	static const char *const states[] = { "live",      "expired", "linking",
					      "unlinking", "retired", "free" };
	const uint32_t nstate[] = { s.sessions_live,      s.sessions_expired, s.sessions_linking,
				    s.sessions_unlinking, s.sessions_retired, s.sessions_free };
	for (int i = 0; i < 6; i++) {
		snprintf(extra, sizeof extra, "state=\"%s\"", states[i]);
		sample_u64(&o, "shmb_sessions", extra, nstate[i]);
	}
	one(&o, "shmb_sessions_max", "gauge", "Session records (max_sessions).",
	    seg->cfg.max_sessions);
	family(&o, "shmb_workers", "gauge", "Worker slots by state.");
	sample_u64(&o, "shmb_workers", "state=\"attached\"", s.workers_live);
	sample_u64(&o, "shmb_workers", "state=\"dead\"", s.workers_dead);
	one(&o, "shmb_workers_max", "gauge", "Worker slots (max_workers).", seg->cfg.max_workers);
	one(&o, "shmb_events_published_total", "counter",
	    "Events published (attached workers' counts plus those of detached ones).",
	    s.events_published);

	uint64_t sent = shmctl_counter(seg, SHMB_CTR_WAKEUPS_RETIRED), received = 0, opened = 0;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		if (uatomic_read(&wk->state) == SHMB_WORKER_FREE)
			continue;
		sent += uatomic_read(&wk->wakeups_sent);
		received += uatomic_read(&wk->wakeups_received);
		opened += seg_worker_stats(seg, w).sessions_opened;
	}
	one(&o, "shmb_wakeups_sent_total", "counter",
	    "Eventfd writes by publishers (detached workers' counts kept).", sent);
	one(&o, "shmb_attached_wakeups_received", "gauge",
	    "Eventfd reads that found a count, summed over attached workers.", received);
	one(&o, "shmb_attached_sessions_opened", "gauge",
	    "Session opens, summed over attached workers.", opened);
	one(&o, "shmb_rcu_grace_period", "gauge", "The RCU grace-period counter.", s.rcu_gp);
	for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
		one(&o, counters[i].name, "counter", counters[i].help,
		    shmctl_counter(seg, counters[i].idx));

	const struct shmb_seg_config *c = &seg->cfg;
	family(&o, "shmb_config_ttl_seconds", "gauge",
	       "TTLs of the configuration: defaults and the largest a create may ask (0: none).");
	const struct {
		const char *kind;
		uint64_t ms;
	} ttl[] = { { "inactivity_default", uatomic_read(&h->cfg.inactivity_ttl_ms) },
		    { "absolute_default", uatomic_read(&h->cfg.absolute_ttl_ms) },
		    { "inactivity_max", uatomic_read(&h->cfg.max_inactivity_ttl_ms) },
		    { "absolute_max", uatomic_read(&h->cfg.max_absolute_ttl_ms) } };
	for (size_t i = 0; i < sizeof ttl / sizeof ttl[0]; i++) {
		snprintf(extra, sizeof extra, "ttl=\"%s\"", ttl[i].kind);
		sample(&o, "shmb_config_ttl_seconds", extra, (double)ttl[i].ms / 1000.0);
	}
	one(&o, "shmb_config_ring_events", "gauge", "Events kept per session.", c->ring_events);
	one(&o, "shmb_config_ring_bytes", "gauge", "Payload bytes per session ring.",
	    c->ring_bytes);
	one(&o, "shmb_config_max_event_bytes", "gauge", "Largest event payload.",
	    c->max_event_bytes);

	static struct tenant_count t[SHMCTL_METRICS_TENANTS];
	uint32_t other;
	size_t nt = tenants(seg, now, t, SHMCTL_METRICS_TENANTS, &other);
	family(&o, "shmb_tenant_sessions", "gauge", "Live sessions per tenant.");
	for (size_t i = 0; i < nt; i++) {
		fprintf(f, "shmb_tenant_sessions{instance=\"");
		label_value(f, inst);
		fprintf(f, "\",tenant=\"");
		label_value(f, t[i].name);
		fprintf(f, "\"} %u\n", t[i].sessions);
	}
	if (other)
		sample_u64(&o, "shmb_tenant_sessions", "tenant=\"~other\"", other);
	family(&o, "shmb_tenant_subscribers", "gauge",
	       "Worker subscriptions to the live sessions of each tenant.");
	for (size_t i = 0; i < nt; i++) {
		fprintf(f, "shmb_tenant_subscribers{instance=\"");
		label_value(f, inst);
		fprintf(f, "\",tenant=\"");
		label_value(f, t[i].name);
		fprintf(f, "\"} %" PRIu64 "\n", t[i].subscribers);
	}
}

/* ---- the HTTP server ---- */

static volatile sig_atomic_t metrics_stop;

static void on_signal(int sig)
{
	(void)sig;
	metrics_stop = 1;
}

static int64_t mono_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Sends until end_ms (CLOCK_MONOTONIC) at most: never blocks in send (MSG_DONTWAIT, poll for
 * room with the time left), so a client that stops reading -- a zero receive window holds a
 * blocking send forever once the body outgrows the socket buffers -- costs the server
 * SHMCTL_HTTP_SEND_MS, not the endpoint; SIGINT/SIGTERM end it too. Returns 0, or -1 when the
 * answer was cut. */
static int send_all(int fd, const char *p, size_t n, int64_t end_ms)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		int64_t left = end_ms - mono_ms();
		if (metrics_stop || left <= 0)
			return -1;
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		if (poll(&pf, 1, (int)left) < 0 && errno != EINTR)
			return -1;
	}
	return 0;
}

static void respond(int fd, const char *status, const char *type, const char *body, size_t len)
{
	char head[256];
	int n = snprintf(head, sizeof head,
			 "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 status, type, len);
	int64_t end = mono_ms() + SHMCTL_HTTP_SEND_MS;
	if (send_all(fd, head, (size_t)n, end) == 0)
		send_all(fd, body, len, end);
}

static void respond_text(int fd, const char *status, const char *text)
{
	respond(fd, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Reads one request head within the deadline and answers it. */
static void serve_one(const struct shmctl_opts *o, int fd)
{
	char req[SHMCTL_HTTP_MAX + 1];
	size_t len = 0;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		long left = SHMCTL_HTTP_TIMEOUT_MS -
			    ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
		if (left <= 0) {
			respond_text(fd, "408 Request Timeout", "request not received in time\n");
			return;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR) {
			if (metrics_stop)
				return;
			continue;
		}
		if (r <= 0)
			continue; /* the deadline check above answers */
		ssize_t n = recv(fd, req + len, SHMCTL_HTTP_MAX - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the client went away */
		len += (size_t)n;
		req[len] = '\0';
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
		if (len == SHMCTL_HTTP_MAX) {
			respond_text(fd, "431 Request Header Fields Too Large",
				     "request head too large\n");
			return;
		}
	}
	char method[16], path[256], version[16];
	if (sscanf(req, "%15s %255s %15s", method, path, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0) {
		respond_text(fd, "400 Bad Request", "malformed request line\n");
		return;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		respond_text(fd, "405 Method Not Allowed", "only GET /metrics\n");
		return;
	}
	char *q = strchr(path, '?');
	if (q)
		*q = '\0';
	if (strcmp(path, "/metrics") != 0) {
		respond_text(fd, "404 Not Found", "only /metrics is served\n");
		return;
	}
	struct shmb_seg seg;
	char why[256];
	int raw;
	if (shmctl_open(o, "metrics", &seg, &raw, why, sizeof why) != SHMCTL_OK) {
		char body[400];
		snprintf(body, sizeof body, "segment unavailable: %s\n", why);
		respond_text(fd, "503 Service Unavailable", body);
		return;
	}
	char *body = NULL;
	size_t blen = 0;
	FILE *m = open_memstream(&body, &blen);
	if (!m) {
		seg_unmap(&seg);
		respond_text(fd, "500 Internal Server Error", "out of memory\n");
		return;
	}
	metrics_write(m, o->name, &seg);
	fclose(m);
	seg_unmap(&seg);
	respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body,
		strcmp(method, "HEAD") == 0 ? 0 : blen);
	free(body);
}

static int listen_on(const char *spec, int *fd_out)
{
	const char *colon = strrchr(spec, ':');
	if (!colon || colon == spec || !colon[1]) {
		shmctl_fail("metrics", "--listen needs ADDR:PORT, not '%s'", spec);
		return SHMCTL_USAGE;
	}
	char host[256];
	size_t hl = (size_t)(colon - spec);
	if (hl >= sizeof host) {
		shmctl_fail("metrics", "--listen: address too long");
		return SHMCTL_USAGE;
	}
	memcpy(host, spec, hl);
	host[hl] = '\0';
	if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') { /* [::1]:9100 */
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = '\0';
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0) {
		shmctl_fail("metrics", "--listen %s: %s", spec, gai_strerror(rc));
		return SHMCTL_USAGE;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0) {
		shmctl_fail("metrics", "cannot listen on %s: %s", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return SHMCTL_UNAVAIL;
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char h[64] = "?", p[16] = "?";
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		getnameinfo((struct sockaddr *)&ss, sl, h, sizeof h, p, sizeof p,
			    NI_NUMERICHOST | NI_NUMERICSERV);
	/* The port actually bound (":0" picks a free one), for scripts and tests. */
	printf("listening on %s%s%s:%s\n", strchr(h, ':') ? "[" : "", h, strchr(h, ':') ? "]" : "",
	       p);
	fflush(stdout);
	*fd_out = fd;
	return SHMCTL_OK;
}

int shmctl_cmd_metrics(const struct shmctl_opts *o)
{
	if (!o->listen) {
		struct shmb_seg seg;
		int rc = shmctl_open(o, "metrics", &seg, NULL, NULL, 0);
		if (rc != SHMCTL_OK)
			return rc;
		metrics_write(stdout, o->name, &seg);
		seg_unmap(&seg);
		return fflush(stdout) == 0 ? SHMCTL_OK : SHMCTL_UNAVAIL;
	}
	int lfd;
	int rc = listen_on(o->listen, &lfd);
	if (rc != SHMCTL_OK)
		return rc;
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	while (!metrics_stop) {
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				poll(NULL, 0, 100); /* out of fds: do not spin */
				continue;
			}
			shmctl_fail("metrics", "accept: %s", strerror(errno));
			close(lfd);
			return SHMCTL_UNAVAIL;
		}
		serve_one(o, fd);
		close(fd);
	}
	close(lfd);
	return SHMCTL_OK;
}
