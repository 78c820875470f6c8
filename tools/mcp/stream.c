/* stream.c - readers: an HTTP response fed from one stream of a broker session.
 *
 * Every SSE stream, and every JSON response that waits for a job's result, is a reader: a
 * stream cursor (shmb_cursor_open_stream) on the session, a subscription (so shmb_fd wakes
 * this worker when anyone, on any worker, publishes), and an output buffer drained by
 * libmicrohttpd's content reader callback. With nothing to send the callback suspends the
 * connection; streams_pump(), run by the worker after every wakeup and job step, drains the
 * cursors and resumes the connections that got data. Replay and live follow are the same code:
 * a GET with Last-Event-ID N opens its cursor after N on the stream event N belongs to.
 *
 * Streams: the standalone GET stream is MCP_STREAM_STANDALONE; a POST stream's number is the id
 * of its priming event, published on MCP_STREAM_CONTROL, so an event id alone says which stream
 * it belongs to (docs/mcp-server.md). Only this worker's event loop touches the reader list.
 * Each reader holds a stream slot of quota.c (per-session and per-client limits across workers);
 * a cancelled job's MCP_EV_END ends its readers. */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

#define OUT_HIGH (256u << 10) /* stop reading the cursor while this much is unsent */
#define HANGUP_CHECK_MS 1000  /* how often suspended connections are polled for a hang-up */

struct reader {
	struct reader *next, *prev;
	struct MHD_Connection *conn;
	shmb_session *sess;
	shmb_cursor *cur;
	uint32_t stream;
	int sse, ids, end_on_result;
	int suspended, ended;
	int answered, gone;      /* JSON reader: the result was sent; the session is gone */
	int cancelled;           /* the job was cancelled (MCP_EV_END): no result will come */
	int quota_slot;          /* quota_stream_claim()'s, released with the reader */
	char id[MCP_JSON_FIELD]; /* JSON reader: the request's id, for an error in its place */
	char *out;
	size_t len, off, cap;
	int64_t last_write_ms;
	int64_t owner_check_ms; /* --redis: when its session's owner was last checked */
	/* Ids lost in a failover after `pos` (the last id this reader passed): each gets the
	 * overrun notification once the reader reaches it (reader_lost). */
	uint64_t pos, lost_lo[MCP_LOST_RANGES], lost_hi[MCP_LOST_RANGES];
	int n_lost;
	int lost_call; /* answer the call `id` with MCP_LOST_CALL_CODE once caught up */
};

static struct reader *readers;
static int n_readers;

int streams_count(void)
{
	return n_readers;
}

static int out_append(struct reader *r, const char *s, size_t n)
{
	if (r->off && r->off == r->len)
		r->off = r->len = 0;
	if (r->off && r->len + n > r->cap) {
		/* A client that keeps up only partly never lets off reach len: move the unsent
		 * part down instead of growing, or the buffer keeps all that was ever sent. */
		memmove(r->out, r->out + r->off, r->len - r->off);
		r->len -= r->off;
		r->off = 0;
	}
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 1024;
		while (cap < r->len + n)
			cap *= 2;
		char *o = realloc(r->out, cap);
		if (!o)
			return -1;
		r->out = o;
		r->cap = cap;
	}
	memcpy(r->out + r->len, s, n);
	r->len += n;
	r->last_write_ms = mcp_now_ms();
	return 0;
}

static void out_event(struct reader *r, uint64_t id, const char *data, size_t len)
{
	char head[48];
	int n = r->ids ? snprintf(head, sizeof head, "id: %" PRIu64 "\n", id) : 0;
	if (out_append(r, head, (size_t)n) || out_append(r, "data: ", 6) ||
	    out_append(r, data, len) || out_append(r, "\n\n", 2))
		r->ended = 1;
}

/* The ring evicted events this reader had not read yet (the client read too slowly, or not at
 * all, while the session published more than the ring holds). Never a silent gap: an SSE client
 * gets a notifications/shmb/overrun notification (no id, so a later Last-Event-ID is still a
 * real event) where the gap is, counting the ids skipped; the stream then goes on with the
 * oldest event the ring still holds. A JSON reader skips everything but the result and is
 * drained on every turn of the loop, so it falls behind only if a whole ring is published within
 * one turn; it just logs. */
static void reader_overrun(struct reader *r, uint64_t lagged)
{
	static int64_t last_log;
	int64_t now = mcp_now_ms();
	if (now - last_log >= 1000) { /* one line a second at most per worker */
		last_log = now;
		mcp_log("worker %d: a reader of stream %u fell behind: %" PRIu64
			" event ids evicted before it read them (told the client)",
			mcp_w.index, r->stream, lagged);
	}
	if (!r->sse)
		return;
	char note[192];
	int n = snprintf(note, sizeof note,
			 "{\"jsonrpc\":\"2.0\",\"method\":\"" MCP_OVERRUN_METHOD
			 "\",\"params\":{\"lagged\":%" PRIu64 "}}",
			 lagged);
	int ids = r->ids;
	r->ids = 0;
	out_event(r, 0, note, (size_t)n);
	r->ids = ids;
}

/* Ids lost in a failover (failover.c: the dead node handed them out, the mirror had not copied
 * them) are gap records here, or not even that (before the ring's window), which the cursor
 * skips without a word: the reader says so itself, with the same overrun notification, where a
 * lost range starts -- once it reaches an id at or after the range's start, or catches up
 * (every lost id precedes what this node publishes). `next`: that id, UINT64_MAX: caught up. */
static void reader_lost(struct reader *r, uint64_t next)
{
	while (r->n_lost && r->lost_lo[0] <= next) {
		uint64_t from = r->pos > r->lost_lo[0] - 1 ? r->pos : r->lost_lo[0] - 1;
		if (r->lost_hi[0] > from)
			reader_overrun(r, r->lost_hi[0] - from);
		if (r->lost_hi[0] > r->pos)
			r->pos = r->lost_hi[0];
		r->n_lost--;
		memmove(r->lost_lo, r->lost_lo + 1, (size_t)r->n_lost * sizeof r->lost_lo[0]);
		memmove(r->lost_hi, r->lost_hi + 1, (size_t)r->n_lost * sizeof r->lost_hi[0]);
	}
}

/* The job of this resumed POST stream's call is gone (its node, or the whole shmb-mcpd that ran
 * it, died) and no result is in the stream: the call is answered with an error, after what
 * the stream replayed, instead of never. The stream stays open (a client whose stream ends
 * without an answer reconnects; this one got its answer). */
static void reader_call_lost(struct reader *r)
{
	char err[MCP_JSON_FIELD + 160];
	int n = snprintf(err, sizeof err,
			 "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":%d,\"message\":\"the "
			 "call's job was lost with the server that ran it: call it again\"}}",
			 r->id, MCP_LOST_CALL_CODE);
	int ids = r->ids;
	r->ids = 0;
	if (n > 0 && (size_t)n < sizeof err)
		out_event(r, 0, err, (size_t)n);
	r->ids = ids;
	r->lost_call = 0;
}

/* Drains the cursor into the output buffer. Payloads are single-line JSON (cJSON output). */
static void reader_pump(struct reader *r)
{
	while (!r->ended && r->len - r->off < OUT_HIGH) {
		shmb_event ev;
		int rc = shmb_cursor_next(r->cur, &ev, mcp_w.evbuf, mcp_w.evbuf_len);
		if (rc == 0) {
			reader_lost(r, UINT64_MAX);
			if (r->lost_call)
				reader_call_lost(r);
			break;
		}
		if (rc == SHMB_EOVERRUN) {
			reader_overrun(r, shmb_cursor_lagged(r->cur));
			continue;
		}
		if (rc < 0) {
			r->ended = 1; /* session gone (ENOENT), or an event too large for us */
			r->gone = rc == SHMB_ENOENT;
			break;
		}
		reader_lost(r, ev.id);
		if (ev.id > r->pos)
			r->pos = ev.id;
		if (ev.flags & SHMB_EV_GAP)
			continue;
		unsigned k = ev.kind;
		if (k == MCP_EV_END && r->stream != MCP_STREAM_STANDALONE) {
			r->ended = r->cancelled = 1; /* jobs_cancel: no result follows */
			break;
		}
		int step = (k & MCP_EV_MARK) == MCP_EV_STEP;
		if (k != MCP_EV_MESSAGE && k != MCP_EV_RESULT && !step)
			continue; /* priming events and silent step marks */
		if (!r->sse) {
			if (k == MCP_EV_RESULT) {
				if (out_append(r, ev.data, ev.len) == 0)
					out_append(r, "\n", 1);
				r->ended = 1;
				r->answered = 1;
			}
			continue;
		}
		out_event(r, ev.id, ev.data, ev.len);
		if (k == MCP_EV_RESULT && r->end_on_result)
			r->ended = 1;
	}
}

static void reader_wake(struct reader *r)
{
	if (r->suspended && (r->len > r->off || r->ended)) {
		r->suspended = 0;
		MHD_resume_connection(r->conn);
	}
}

static ssize_t reader_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct reader *r = cls;
	if (r->len == r->off && !r->ended)
		reader_pump(r);
	if (r->len > r->off) {
		size_t n = r->len - r->off < max ? r->len - r->off : max;
		memcpy(buf, r->out + r->off, n);
		r->off += n;
		return (ssize_t)n;
	}
	if (r->ended && !r->sse && !r->answered) {
		/* The 200 is sent already: the body is the JSON-RPC error instead of nothing (a
		 * session deleted or expired under a waiting call, or the worker stopping). */
		char err[MCP_JSON_FIELD + 128];
		int n = snprintf(err, sizeof err,
				 "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":%d,"
				 "\"message\":\"%s\"}}\n",
				 r->id,
				 r->gone        ? -32001
				 : r->cancelled ? -32800
						: -32603,
				 r->gone        ? "Session not found"
				 : r->cancelled ? "Request cancelled"
						: "the call's stream ended without a result");
		r->answered = 1;
		if (n > 0 && (size_t)n < sizeof err && out_append(r, err, (size_t)n) == 0)
			return reader_read(cls, pos, buf, max);
	}
	if (r->ended)
		return MHD_CONTENT_READER_END_OF_STREAM;
	r->suspended = 1;
	MHD_suspend_connection(r->conn);
	return 0;
}

static void reader_free(void *cls)
{
	struct reader *r = cls;
	if (r->prev)
		r->prev->next = r->next;
	else
		readers = r->next;
	if (r->next)
		r->next->prev = r->prev;
	n_readers--;
	shmb_session_info info;
	if (r->end_on_result && r->sess && shmb_session_stat(r->sess, &info) == 0)
		jobs_reader_gone(info.sid, r->stream);
	shmb_cursor_close(r->cur);
	shmb_session_close(r->sess); /* ends the subscription made through it */
	quota_stream_release(r->quota_slot);
	free(r->out);
	free(r);
}

void streams_pump(void)
{
	for (struct reader *r = readers; r; r = r->next) {
		reader_pump(r);
		reader_wake(r);
	}
}

/* libmicrohttpd does not watch a suspended connection's socket, so a client that went away
 * while its stream had nothing to send held its reader (and a slot of MCP_MAX_READERS) until
 * the next keepalive found the socket dead, and a JSON reader (no keepalives) until its job's
 * result, up to days. Poll them for a hang-up (only: readable data may be a pipelined request)
 * and end those readers; resumed, MHD finds the socket closed and frees them. */
static void reap_hangups(void)
{
	struct pollfd pfd[MCP_MAX_READERS];
	struct reader *who[MCP_MAX_READERS];
	nfds_t n = 0;
	for (struct reader *r = readers; r && n < MCP_MAX_READERS; r = r->next) {
		if (!r->suspended || r->ended)
			continue;
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (!ci)
			continue;
		pfd[n] = (struct pollfd){ .fd = ci->connect_fd, .events = POLLRDHUP };
		who[n++] = r;
	}
	if (n == 0 || poll(pfd, n, 0) <= 0)
		return;
	for (nfds_t i = 0; i < n; i++) {
		if (pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
			who[i]->ended = 1;
			reader_wake(who[i]);
		}
	}
}

int64_t streams_tick(int64_t now)
{
	static int64_t next_hangup_check;
	int64_t next = INT64_MAX;
	if (readers && now >= next_hangup_check) {
		reap_hangups();
		next_hangup_check = now + HANGUP_CHECK_MS;
	}
	if (readers)
		next = next_hangup_check;
	for (struct reader *r = readers; r; r = r->next) {
		if (!r->sse || r->ended)
			continue;
		if (mcp_fo.redis) {
			/* An open stream never meets the check a request makes (rpc.c): without
			 * this, a client whose stream stayed on a node its session moved away from
			 * (the dead node came back and took its sessions) waits on a copy nobody
			 * publishes into any more. Dropping the copy ends the stream; the client
			 * resumes through the balancer on the owner. */
			if (!r->owner_check_ms)
				r->owner_check_ms = now;
			if (now - r->owner_check_ms >= MCP_OWNER_CHECK_MS) {
				shmb_session_info in;
				r->owner_check_ms = now;
				if (shmb_session_stat(r->sess, &in) == 0)
					ctl_disown_async(in.sid, in.tenant,
							 in.has_principal ? in.principal : NULL);
			}
			if (r->owner_check_ms + MCP_OWNER_CHECK_MS < next)
				next = r->owner_check_ms + MCP_OWNER_CHECK_MS;
		}
		int64_t due = r->last_write_ms + MCP_KEEPALIVE_MS;
		if (due <= now && r->len == r->off) {
			out_append(r, ": keepalive\n\n", 13);
			reader_wake(r);
			due = now + MCP_KEEPALIVE_MS;
		}
		if (due < next)
			next = due;
	}
	return next;
}

void streams_end_all(void)
{
	for (struct reader *r = readers; r; r = r->next) {
		r->ended = 1;
		reader_wake(r);
	}
}

int64_t stream_publish_prime(shmb_session *s, uint32_t stream)
{
	return shmb_publish(s, stream, MCP_EV_PRIME, "{}", 2);
}

enum MHD_Result stream_reply(struct mcp_ctx *cx, shmb_session *s, uint32_t stream, uint64_t after,
			     int sse, int ids, int end_on_result, int end_after_priming,
			     const char *id)
{
	const char *what = NULL;
	unsigned limit = 0;
	int slot = n_readers >= MCP_MAX_READERS
			   ? -1
			   : quota_stream_claim(quota_owner(cx), cx->sid ? quota_hash(cx->sid) : 0,
						&what, &limit);
	if (slot < 0) {
		shmb_session_close(s);
		if (what)
			return quota_reply(cx->conn, id, what, limit);
		return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, -32603,
					"too many open streams on this worker");
	}
	struct reader *r = calloc(1, sizeof *r);
	int rc = r ? shmb_cursor_open_stream(s, after, stream, &r->cur) : SHMB_ENOMEM;
	if (rc == 0)
		rc = shmb_subscribe(s);
	if (rc < 0) {
		if (r)
			shmb_cursor_close(r->cur);
		free(r);
		shmb_session_close(s);
		quota_stream_release(slot);
		return http_reply_shmb(cx->conn, NULL, rc);
	}
	*r = (struct reader){ .conn = cx->conn,
			      .sess = s,
			      .cur = r->cur,
			      .stream = stream,
			      .sse = sse,
			      .ids = ids,
			      .end_on_result = end_on_result,
			      .quota_slot = slot,
			      .last_write_ms = mcp_now_ms(),
			      .pos = after };
	for (int i = 0; sse && ids && i < cx->n_lost; i++)
		if (cx->lost_hi[i] > after) { /* ranges wholly before `after` were seen or told */
			r->lost_lo[r->n_lost] = cx->lost_lo[i];
			r->lost_hi[r->n_lost++] = cx->lost_hi[i];
		}
	snprintf(r->id, sizeof r->id, "%s", id ? id : "null");
	if (sse && cx->lost_call[0]) {
		snprintf(r->id, sizeof r->id, "%s", cx->lost_call);
		r->lost_call = 1;
	}
	r->next = readers;
	if (readers)
		readers->prev = r;
	readers = r;
	n_readers++;
	/* Priming events (an id and empty data) came with 2025-11-25: a client of an earlier
	 * revision parses every event's data as JSON (SDK 1.11 to 1.13: "Unexpected end of JSON
	 * input"), so a session that negotiated one gets none, and no early end after it. */
	enum mcp_proto negotiated = ids ? mcp_session_proto(s) : MCP_PROTO_BAD;
	if (negotiated == MCP_PROTO_BAD)
		negotiated = cx->proto;
	if (sse && ids && negotiated < MCP_PROTO_2025_11_25) {
		end_after_priming = 0;
	} else if (sse) {
		char head[96];
		int n = ids ? snprintf(head, sizeof head, "id: %" PRIu64 "\nretry: %u\ndata: \n\n",
				       after, mcp_cfg.retry_ms)
			    : snprintf(head, sizeof head, "retry: %u\n\n", mcp_cfg.retry_ms);
		out_append(r, head, (size_t)n);
		if (end_after_priming)
			r->ended = 1;
	}
	reader_pump(r);
	struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096,
								      reader_read, r, reader_free);
	if (!resp) {
		reader_free(r);
		return MHD_NO;
	}
	http_add_common(resp);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				sse ? "text/event-stream" : "application/json");
	enum MHD_Result ret = MHD_queue_response(cx->conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (!*s || strlen(s) > 19)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

/* Which stream event `id` of s belongs to; also whether it is that stream's result. */
static int stream_of(shmb_session *s, uint64_t id, uint32_t *stream, int *is_result)
{
	shmb_cursor *c;
	if (shmb_cursor_open(s, id - 1, &c) < 0)
		return -1;
	shmb_event ev;
	int rc = shmb_cursor_next(c, &ev, mcp_w.evbuf, mcp_w.evbuf_len);
	shmb_cursor_close(c);
	if (rc != 1 || ev.id != id || (ev.flags & SHMB_EV_GAP))
		return -1;
	*stream = ev.stream == MCP_STREAM_CONTROL ? (uint32_t)id : ev.stream;
	*is_result = ev.kind == MCP_EV_RESULT;
	return 0;
}

/* A POST stream resumed while no job of this shmb-mcpd writes to it, though the session says a
 * call was running there (MCP_ATTR_CALL): its job died with the server that ran it. If the
 * stream holds the call's result after all, the reader ends with it before it catches up. */
static void note_lost_call(struct mcp_ctx *cx, shmb_session *s, uint32_t stream)
{
	char key[40];
	snprintf(key, sizeof key, MCP_ATTR_CALL "%" PRIu32, stream);
	int n = shmb_attr_get(s, key, cx->lost_call, sizeof cx->lost_call - 1, NULL);
	cx->lost_call[n > 0 ? n : 0] = '\0';
	if (n > 0 && jobs_running(cx->sid, stream))
		cx->lost_call[0] = '\0';
}

enum MHD_Result stream_get(struct mcp_ctx *cx)
{
	if (cx->proto == MCP_PROTO_2026_07_28) {
		struct MHD_Response *resp =
			MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
		http_add_common(resp);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "POST");
		enum MHD_Result r = MHD_queue_response(cx->conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
		MHD_destroy_response(resp);
		return r;
	}
	if (!cx->accept_sse)
		return http_reply_error(cx->conn, MHD_HTTP_NOT_ACCEPTABLE, NULL, -32000,
					"Not Acceptable: GET needs Accept: text/event-stream");
	shmb_session *s;
	enum MHD_Result r = rpc_open_session(cx, NULL, &s);
	if (!s)
		return r;
	if (mcp_fo.redis)
		cx->n_lost = failover_lost(s, cx->lost_lo, cx->lost_hi);
	const char *lei = MHD_lookup_connection_value(cx->conn, MHD_HEADER_KIND,
						      MHD_HTTP_HEADER_LAST_EVENT_ID);
	if (lei) {
		uint64_t n = 0;
		uint32_t stream;
		int is_result = 0, bad = parse_u64(lei, &n) < 0 || n == 0, lost = 0;
		for (int i = 0; !bad && i < cx->n_lost; i++)
			lost |= n >= cx->lost_lo[i] && n <= cx->lost_hi[i];
		if (lost) {
			/* n was lost in a failover, so which stream it was on is unknown: the
			 * standalone stream after it, the overrun notification first (a POST
			 * stream's job died with its node: docs/multi-host.md). */
			stream = MCP_STREAM_STANDALONE;
		} else if (bad || stream_of(s, n, &stream, &is_result) < 0) {
			shmb_session_close(s);
			return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, NULL, -32000,
						"Bad Request: Last-Event-ID is not an event this "
						"session still holds");
		}
		int post = stream != MCP_STREAM_STANDALONE;
		if (post && !is_result)
			note_lost_call(cx, s, stream);
		return stream_reply(cx, s, stream, n, 1, 1, post, post && is_result, NULL);
	}
	int64_t p = stream_publish_prime(s, MCP_STREAM_STANDALONE);
	if (p < 0) {
		shmb_session_close(s);
		return http_reply_shmb(cx->conn, NULL, p);
	}
	return stream_reply(cx, s, MCP_STREAM_STANDALONE, (uint64_t)p, 1, 1, 0, 0, NULL);
}
