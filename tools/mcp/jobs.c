/* jobs.c - durable jobs: tool calls that take time and survive kill -9 of their worker.
 *
 * The master maps the job table (MAP_SHARED | MAP_ANONYMOUS) before forking; worker index i
 * owns slots [i * MCP_JOBS_PER_WORKER, (i + 1) * MCP_JOBS_PER_WORKER). Only the one live process
 * of index i touches them, and the master forks a replacement only after waitpid() reaped the
 * previous one, so no two processes ever use a slot at once. A slot holds what the job needs to
 * run again (session id, tenant, principal, stream, tool, arguments, JSON-RPC id, progress
 * token) and is marked live (a release store) only once complete.
 *
 * Exactly once: the broker is the record of progress. Step k is done iff an event of kind
 * MCP_EV_STEP|k or MCP_EV_MARK|k is committed on the job's stream; the job is finished iff its
 * MCP_EV_RESULT is. A worker that finds a live slot it did not start (it replaces a dead
 * worker) scans the stream from the priming event up to the session's last claimed id, takes
 * the highest step present, and continues with the next one. A publish that died before its
 * commit became (or will become) a gap record, so the step is not present and is published
 * again: never twice, never lost. The scan waits until every id up to the last claimed one is
 * committed or a gap (the broker settles a dead publisher within ~100 ms), so a committed step
 * behind a slow publisher's claim cannot be missed.
 *
 * The ring holds the session's last 256 events of all streams, so the steps can have been
 * evicted before the scan (a flood of notify between two steps): the scan alone would then
 * find nothing and start again at step 1. So the slot also records `published`, the highest
 * step (n + 1: the result) whose publish returned, stored right after it returns; the takeover
 * continues after the larger of the two. The only window left is a kill between a commit and
 * that store, with the step evicted before the scan: 256 events of the session inside it.
 *
 * Logging steps (test_tool_with_logging, log_levels) check the session's log level
 * (logging/setLevel, a session attribute: session.c) when they are published: a message below it
 * is published as a silent mark instead, so the step still counts as done and is not sent.
 *
 * Quotas and cancellation (quota.c): jobs_start counts the live jobs of the session and of the
 * client in the whole table and claims its slot under the quota lock, so two workers cannot
 * both take the last one. DELETE and notifications/cancelled mark a live job JOB_CANCELLED from
 * whichever worker gets them (LIVE -> CANCELLED under the same lock, which every transition
 * out of FREE or into FREE also holds, so the sid read belongs to the job marked); the owner
 * checks the state before each publish, publishes nothing more, and frees the slot at its next
 * turn. A cancelled job no longer counts against the quotas from the moment it is marked.
 *
 * Server-to-client requests (JOB_ASK: sampling/createMessage, elicitation/create, roots/list):
 * step 1 publishes the request (id "s2c:<sid>:<stream>") on the call's stream (on the standalone
 * stream, with a mark on the call's, when the call is answered in JSON); then the job waits: its
 * worker subscribes its session handle and keeps a cursor on the call's stream, where whichever
 * worker gets the client's response publishes it as MCP_EV_REPLY (rpc.c); the next turn after
 * the wakeup takes it, and the result (made of it) is due at once. Without a reply by the
 * deadline kept in the slot (so a takeover keeps it), the result is a tool error. A takeover finds
 * step 1 published (so the request is not sent again) and waits the same way, from the priming
 * event: a reply that came meanwhile is in the stream. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mcp.h"

enum { JOB_FREE = 0, JOB_LIVE = 1, JOB_LINGER = 2, JOB_CANCELLED = 3 };

struct job_slot {
	uint32_t state; /* JOB_*: written last when starting (release), read with acquire */
	uint32_t tool, n, delay_ms, final_ms, ephemeral, has_principal, stream;
	uint32_t published; /* highest step whose publish returned (n + 1: the result), 0: none */
	uint64_t prime_id;
	uint64_t owner; /* quota_owner() of the caller */
	char sid[SHMB_SID_LEN + 1];
	char tenant[65];
	char principal[129];
	char id[MCP_JSON_FIELD];
	char token[MCP_JSON_FIELD];
	/* JOB_ASK (see "Server-to-client requests" above) */
	uint32_t on_standalone, timeout_ms;
	int64_t ask_deadline; /* mcp_now_ms() (CLOCK_MONOTONIC: the same in every process) */
	char method[32];
	char asker[48];
	char params[MCP_ASK_PARAMS];
};

/* Process-local state of a slot: rebuilt from the slot and the broker after a takeover. */
struct job_local {
	shmb_session *s;
	shmb_cursor *scan;
	uint64_t scan_to;
	int64_t scan_deadline;
	uint32_t done; /* highest step present in the broker */
	int result_seen;
	int ready; /* next_step and due are valid */
	uint32_t next_step;
	int64_t due;
	shmb_cursor *wait; /* JOB_ASK: the call's stream after the priming event, for the reply */
	char *reply;       /* JOB_ASK: the client's response (JSON), once taken */
	int waiting;       /* JOB_ASK: the request is out, no reply yet */
	int orphan;        /* ephemeral: its reader is gone, nobody reads the result */
};

static struct job_local local[MCP_JOBS_PER_WORKER];

size_t jobs_table_bytes(int workers)
{
	return (size_t)workers * MCP_JOBS_PER_WORKER * sizeof(struct job_slot);
}

static struct job_slot *mine(int i)
{
	return &mcp_w.jobs[(size_t)mcp_w.index * MCP_JOBS_PER_WORKER + (size_t)i];
}

/* The call whose job writes to `stream` (its serialized JSON-RPC id; NULL: it ended) as the
 * session attribute MCP_ATTR_CALL<stream>: the record, in the session itself (and so in Redis),
 * that a call is running, for a stream resumed where its job cannot run on (stream.c: the
 * node, or the whole shmb-mcpd, that ran it died). Best effort: without room for it the call
 * works as before. */
static void call_note(shmb_session *s, uint32_t stream, const char *id)
{
	char key[40];
	snprintf(key, sizeof key, MCP_ATTR_CALL "%" PRIu32, stream);
	if (id)
		shmb_attr_set(s, key, id, strlen(id));
	else
		shmb_attr_delete(s, key);
}

static void job_free(int i)
{
	struct job_local *l = &local[i];
	if (l->s && !mine(i)->ephemeral)
		call_note(l->s, mine(i)->stream, NULL);
	shmb_cursor_close(l->scan);
	shmb_cursor_close(l->wait);
	shmb_session_close(l->s); /* ends a JOB_ASK's subscription */
	free(l->reply);
	*l = (struct job_local){ 0 };
	quota_lock();
	__atomic_store_n(&mine(i)->state, JOB_FREE, __ATOMIC_RELEASE);
	quota_unlock();
}

/* Under the quota lock: the live jobs of session sid and of owner, in every worker's slots. A
 * lingering one (a finished stateless call whose private session still has to go) counts for
 * its client too: it holds a slot of the table and a broker session, and finished calls not
 * counted let one client fill the whole table (a stateless countdown n=1 in a loop: 63 slots of
 * 64 under --max-jobs-per-client 3, everyone else 503 for 5 s). */
static void count_live(const char *sid, uint64_t owner, unsigned *per_session, unsigned *per_client)
{
	*per_session = *per_client = 0;
	for (size_t i = 0; i < (size_t)mcp_cfg.workers * MCP_JOBS_PER_WORKER; i++) {
		const struct job_slot *j = &mcp_w.jobs[i];
		uint32_t state = __atomic_load_n(&j->state, __ATOMIC_ACQUIRE);
		if (state != JOB_LIVE && state != JOB_LINGER)
			continue;
		*per_client += j->owner == owner;
		*per_session += state == JOB_LIVE && !j->ephemeral && !strcmp(j->sid, sid);
	}
}

int jobs_start(const struct job_spec *spec, shmb_session *s, const char *sid, const char *tenant,
	       const char *principal, uint32_t stream, uint64_t prime_id, const char **what,
	       unsigned *limit)
{
	if (strlen(tenant) >= sizeof mine(0)->tenant ||
	    (principal && strlen(principal) >= sizeof mine(0)->principal))
		return -1;
	quota_lock();
	unsigned per_session, per_client;
	count_live(sid, spec->owner, &per_session, &per_client);
	*what = NULL;
	if (!spec->ephemeral && mcp_cfg.max_jobs_per_session &&
	    per_session >= mcp_cfg.max_jobs_per_session) {
		*what = "running jobs per session";
		*limit = mcp_cfg.max_jobs_per_session;
	} else if (mcp_cfg.max_jobs_per_client && per_client >= mcp_cfg.max_jobs_per_client) {
		*what = "running jobs per client";
		*limit = mcp_cfg.max_jobs_per_client;
	}
	if (*what) {
		quota_unlock();
		return -2;
	}
	for (int i = 0; i < MCP_JOBS_PER_WORKER; i++) {
		struct job_slot *j = mine(i);
		if (__atomic_load_n(&j->state, __ATOMIC_ACQUIRE) != JOB_FREE || local[i].s)
			continue;
		*j = (struct job_slot){ .tool = spec->tool,
					.n = spec->n,
					.delay_ms = spec->delay_ms,
					.final_ms = spec->final_ms,
					.ephemeral = spec->ephemeral,
					.has_principal = principal != NULL,
					.stream = stream,
					.prime_id = prime_id,
					.owner = spec->owner };
		snprintf(j->sid, sizeof j->sid, "%s", sid);
		snprintf(j->tenant, sizeof j->tenant, "%s", tenant);
		snprintf(j->principal, sizeof j->principal, "%s", principal ? principal : "");
		snprintf(j->id, sizeof j->id, "%s", spec->id);
		snprintf(j->token, sizeof j->token, "%s", spec->token ? spec->token : "");
		if (spec->tool == JOB_ASK) {
			j->on_standalone = (uint32_t)spec->on_standalone;
			j->timeout_ms = spec->timeout_ms;
			j->ask_deadline = mcp_now_ms() + spec->timeout_ms;
			snprintf(j->method, sizeof j->method, "%s", spec->method);
			snprintf(j->asker, sizeof j->asker, "%s", spec->asker);
			snprintf(j->params, sizeof j->params, "%s",
				 spec->params ? spec->params : "");
		}
		int64_t first = mcp_now_ms() + (spec->n ? 0 : spec->final_ms);
		local[i] = (struct job_local){ .s = s, .ready = 1, .next_step = 1, .due = first };
		__atomic_store_n(&j->state, JOB_LIVE, __ATOMIC_RELEASE);
		quota_unlock();
		call_note(s, stream, spec->ephemeral ? NULL : spec->id);
		return i;
	}
	quota_unlock();
	return -1;
}

void jobs_drop(int slot)
{
	quota_lock();
	uint32_t live = JOB_LIVE;
	__atomic_compare_exchange_n(&mine(slot)->state, &live, JOB_CANCELLED, 0, __ATOMIC_ACQ_REL,
				    __ATOMIC_ACQUIRE);
	quota_unlock();
}

void jobs_reader_gone(const char *sid, uint32_t stream)
{
	for (int i = 0; i < MCP_JOBS_PER_WORKER; i++) {
		struct job_slot *j = mine(i);
		uint32_t state = __atomic_load_n(&j->state, __ATOMIC_ACQUIRE);
		if ((state != JOB_LIVE && state != JOB_LINGER) || !j->ephemeral ||
		    j->stream != stream || strcmp(j->sid, sid) != 0)
			continue;
		local[i].orphan = 1;
		if (state == JOB_LINGER)
			local[i].due = mcp_now_ms(); /* nobody needs its session any more */
	}
}

int jobs_running(const char *sid, uint32_t stream)
{
	int found = 0;
	quota_lock();
	for (size_t i = 0; !found && i < (size_t)mcp_cfg.workers * MCP_JOBS_PER_WORKER; i++) {
		const struct job_slot *j = &mcp_w.jobs[i];
		found = __atomic_load_n(&j->state, __ATOMIC_ACQUIRE) == JOB_LIVE &&
			j->stream == stream && !strcmp(j->sid, sid);
	}
	quota_unlock();
	return found;
}

int jobs_asking(const char *sid, uint32_t stream)
{
	int found = 0;
	quota_lock();
	for (size_t i = 0; !found && i < (size_t)mcp_cfg.workers * MCP_JOBS_PER_WORKER; i++) {
		const struct job_slot *j = &mcp_w.jobs[i];
		found = __atomic_load_n(&j->state, __ATOMIC_ACQUIRE) == JOB_LIVE &&
			j->tool == JOB_ASK && j->stream == stream && !strcmp(j->sid, sid);
	}
	quota_unlock();
	return found;
}

int jobs_cancel(const char *sid, const char *id, shmb_session *s)
{
	int n = 0;
	uint32_t streams[MCP_JOBS_PER_WORKER];
	quota_lock();
	for (size_t i = 0; i < (size_t)mcp_cfg.workers * MCP_JOBS_PER_WORKER; i++) {
		struct job_slot *j = &mcp_w.jobs[i];
		uint32_t live = JOB_LIVE;
		if (__atomic_load_n(&j->state, __ATOMIC_ACQUIRE) != JOB_LIVE || j->ephemeral ||
		    strcmp(j->sid, sid) != 0 || (id && strcmp(j->id, id) != 0))
			continue;
		/* The owner may be turning it into LINGER or FREE (unlocked: finished) meanwhile. */
		if (__atomic_compare_exchange_n(&j->state, &live, JOB_CANCELLED, 0,
						__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) &&
		    n < MCP_JOBS_PER_WORKER)
			streams[n++] = j->stream;
	}
	quota_unlock();
	for (int k = 0; s && k < n; k++)
		shmb_publish(s, streams[k], MCP_EV_END, "{}", 2);
	return n;
}

static const char *const log_lines[] = { "Tool execution started", "Tool processing data",
					 "Tool execution completed" };

/* The event of step k of session s: kind and payload. */
static uint16_t step_event(const struct job_slot *j, shmb_session *s, uint32_t k, char *buf,
			   size_t len)
{
	if (j->tool == JOB_LOGGING || j->tool == JOB_LEVELS) {
		int level = j->tool == JOB_LOGGING ? MCP_LEVEL_INFO : (int)(k - 1) % MCP_LEVELS;
		if (!mcp_session_allows(s, level)) {
			snprintf(buf, len, "{\"step\":%" PRIu32 "}", k);
			return (uint16_t)(MCP_EV_MARK | k);
		}
		if (j->tool == JOB_LOGGING)
			snprintf(
				buf, len,
				"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\","
				"\"params\":{\"level\":\"info\",\"logger\":\"%s\",\"data\":\"%s\"}}",
				MCP_SERVER_NAME, log_lines[(k - 1) % 3]);
		else
			snprintf(buf, len,
				 "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\","
				 "\"params\":{\"level\":\"%s\",\"logger\":\"%s\",\"data\":"
				 "\"a message at level %s (pid %d)\"}}",
				 mcp_level_name(level), MCP_SERVER_NAME, mcp_level_name(level),
				 (int)getpid());
		return (uint16_t)(MCP_EV_STEP | k);
	}
	if (!j->token[0]) {
		snprintf(buf, len, "{\"step\":%" PRIu32 "}", k);
		return (uint16_t)(MCP_EV_MARK | k);
	}
	uint32_t progress = k, total = j->n;
	if (j->tool == JOB_PROGRESS) {
		progress = (k - 1) * 50;
		total = 100;
	}
	snprintf(buf, len,
		 "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
		 "{\"progressToken\":%s,\"progress\":%" PRIu32 ",\"total\":%" PRIu32 "}}",
		 j->token, progress, total);
	return (uint16_t)(MCP_EV_STEP | k);
}

static void result_event(const struct job_slot *j, char *buf, size_t len)
{
	char text[96];
	switch (j->tool) {
	case JOB_COUNTDOWN:
		snprintf(text, sizeof text, "countdown done: %" PRIu32 " steps", j->n);
		break;
	case JOB_PROGRESS:
		snprintf(text, sizeof text, "Progress tool completed");
		break;
	case JOB_LOGGING:
		snprintf(text, sizeof text, "Tool with logging executed successfully");
		break;
	case JOB_LEVELS:
		snprintf(text, sizeof text, "log_levels done (pid %d)", (int)getpid());
		break;
	default:
		snprintf(text, sizeof text, "Reconnection test completed");
		break;
	}
	snprintf(buf, len,
		 "{\"jsonrpc\":\"2.0\",\"id\":%s,\"result\":{\"content\":[{\"type\":\"text\","
		 "\"text\":\"%s\"}]}}",
		 j->id, text);
}

/* JOB_ASK, step 1: the request to the client (heap; NULL: out of memory). Its id names the
 * session and the call, so a response arriving on any worker finds the job (rpc.c). */
static char *ask_request(const struct job_slot *j)
{
	char *m = malloc(MCP_ASK_PARAMS + 256);
	if (m)
		snprintf(m, MCP_ASK_PARAMS + 256,
			 "{\"jsonrpc\":\"2.0\",\"id\":\"" MCP_ASK_ID_PREFIX "%s:%" PRIu32
			 "\",\"method\":\"%s\"%s%s}",
			 j->sid, j->stream, j->method, j->params[0] ? ",\"params\":" : "",
			 j->params);
	return m;
}

/* JOB_ASK, the last step: the tool's result made of the client's response (l->reply), or a tool
 * error when the client answered with an error or not in time. Heap; NULL: out of memory. */
static char *ask_result(const struct job_slot *j, const struct job_local *l)
{
	char text[4096];
	int is_error = 1;
	cJSON *r = l->reply ? cJSON_Parse(l->reply) : NULL;
	cJSON *res = cJSON_GetObjectItemCaseSensitive(r, "result");
	cJSON *err = cJSON_GetObjectItemCaseSensitive(r, "error");
	if (!r) {
		snprintf(text, sizeof text, "the client did not answer %s within %" PRIu32 " ms",
			 j->method, j->timeout_ms);
	} else if (!cJSON_IsObject(res)) {
		cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
		cJSON *c = cJSON_GetObjectItemCaseSensitive(err, "code");
		snprintf(text, sizeof text, "the client answered %s with error %d: %.3000s",
			 j->method, cJSON_IsNumber(c) ? c->valueint : 0,
			 cJSON_IsString(m) ? m->valuestring : "(no message)");
	} else {
		is_error = 0;
		char *part = NULL;
		const char *fmt;
		if (!strcmp(j->method, "sampling/createMessage")) {
			cJSON *t = cJSON_GetObjectItemCaseSensitive(
				cJSON_GetObjectItemCaseSensitive(res, "content"), "text");
			part = cJSON_IsString(t) ? strdup(t->valuestring)
						 : cJSON_PrintUnformatted(res);
			fmt = "LLM response: %.3500s";
		} else if (!strcmp(j->method, "roots/list")) {
			part = cJSON_PrintUnformatted(
				cJSON_GetObjectItemCaseSensitive(res, "roots"));
			fmt = "Roots: %.3500s";
		} else {
			cJSON *a = cJSON_GetObjectItemCaseSensitive(res, "action");
			cJSON *c = cJSON_GetObjectItemCaseSensitive(res, "content");
			char *cs = c ? cJSON_PrintUnformatted(c) : NULL;
			size_t n = 64 + (cs ? strlen(cs) : 4);
			part = malloc(n);
			if (part)
				snprintf(part, n, "action=%s, content=%s",
					 cJSON_IsString(a) ? a->valuestring : "?", cs ? cs : "{}");
			cJSON_free(cs);
			fmt = !strcmp(j->asker, "test_elicitation")
				      ? "User response: %.3500s"
				      : "Elicitation completed: %.3500s";
		}
		snprintf(text, sizeof text, fmt, part ? part : "null");
		free(part);
	}
	cJSON_Delete(r);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(j->id));
	cJSON *rs = cJSON_AddObjectToObject(o, "result");
	cJSON *t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", "text");
	cJSON_AddStringToObject(t, "text", text);
	cJSON_AddItemToArray(cJSON_AddArrayToObject(rs, "content"), t);
	if (is_error)
		cJSON_AddTrueToObject(rs, "isError");
	char *out = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return out;
}

/* JOB_ASK: the request is out (or was, before a takeover): wait for the reply on the call's
 * stream, subscribed, so a publish by whichever worker got the response wakes this one. Due at
 * the deadline (then the result says the client did not answer). */
static void ask_wait(int i, int64_t now)
{
	struct job_slot *j = mine(i);
	struct job_local *l = &local[i];
	l->due = j->ask_deadline > now ? j->ask_deadline : now;
	if (l->wait || shmb_cursor_open_stream(l->s, j->prime_id, j->stream, &l->wait) < 0 ||
	    shmb_subscribe(l->s) < 0)
		return; /* no cursor or no wakeup: the deadline still ends it */
	l->waiting = 1;
}

/* JOB_ASK waiting: takes the client's reply when it is there. Returns 1 when the job may go on
 * (its reply came, or its session is gone). */
static int ask_poll(int i)
{
	struct job_local *l = &local[i];
	for (;;) {
		shmb_event ev;
		int rc = shmb_cursor_next(l->wait, &ev, mcp_w.evbuf, mcp_w.evbuf_len);
		if (rc == 0)
			return 0;
		if (rc == SHMB_EOVERRUN)
			continue; /* a reply evicted unread is lost: the deadline ends the job */
		if (rc < 0 || (ev.kind == MCP_EV_REPLY && !(ev.flags & SHMB_EV_GAP))) {
			if (rc > 0)
				l->reply = strndup(ev.data, ev.len);
			l->waiting = 0;
			shmb_cursor_close(l->wait);
			l->wait = NULL;
			return 1;
		}
	}
}

/* Takes over a live slot this process did not start. Returns 1 when ready, 0 to retry later,
 * -1 when the slot was freed. */
static int job_resume(int i, int64_t now)
{
	struct job_slot *j = mine(i);
	struct job_local *l = &local[i];
	if (!l->s) {
		int rc = shmb_session_open(mcp_w.client, j->sid, j->tenant,
					   j->has_principal ? j->principal : NULL, &l->s);
		if (rc == SHMB_ENOENT || rc == SHMB_EPERM || rc == SHMB_EINVAL) {
			l->s = NULL;
			job_free(i);
			return -1;
		}
		if (rc < 0) {
			l->s = NULL;
			l->due = now + 100;
			return 0;
		}
	}
	if (__atomic_load_n(&j->state, __ATOMIC_ACQUIRE) == JOB_LINGER) {
		l->ready = 1;
		l->due = now + 1000;
		return 1;
	}
	if (!l->scan) {
		shmb_session_info info;
		if (shmb_session_stat(l->s, &info) < 0 ||
		    shmb_cursor_open_stream(l->s, j->prime_id, j->stream, &l->scan) < 0) {
			job_free(i);
			return -1;
		}
		l->scan_to = info.last_event_id;
		l->scan_deadline = now + 3000;
	}
	for (;;) {
		shmb_event ev;
		int rc = shmb_cursor_next(l->scan, &ev, mcp_w.evbuf, mcp_w.evbuf_len);
		if (rc == 0)
			break;
		if (rc == SHMB_EOVERRUN)
			continue;
		if (rc < 0) {
			job_free(i);
			return -1;
		}
		if (ev.flags & SHMB_EV_GAP)
			continue;
		if (ev.kind == MCP_EV_RESULT)
			l->result_seen = 1;
		else if ((ev.kind & MCP_EV_STEP) && (ev.kind & MCP_EV_STEP_MASK) > l->done)
			l->done = ev.kind & MCP_EV_STEP_MASK;
	}
	if (shmb_cursor_position(l->scan) < l->scan_to && now < l->scan_deadline) {
		l->due = now + 20; /* an id up to scan_to is not committed yet: look again */
		return 0;
	}
	shmb_cursor_close(l->scan);
	l->scan = NULL;
	/* Only a dead process of our index wrote it, and waitpid() ordered that before our fork. */
	uint32_t published = j->published;
	if (published > l->done)
		l->done = published;
	if (l->result_seen || l->done > j->n) {
		if (!j->ephemeral) {
			job_free(i);
			return -1;
		}
		/* Finished but not yet lingering: its private session still has to go. */
		__atomic_store_n(&j->state, JOB_LINGER, __ATOMIC_RELEASE);
		l->ready = 1;
		l->due = now + 5000;
		return 1;
	}
	l->ready = 1;
	l->next_step = l->done + 1;
	l->due = now;
	if (j->tool == JOB_ASK && l->done >= 1)
		ask_wait(i, now); /* the request is out: its reply may be in the stream already */
	mcp_log("worker %d: took over job %d of session %.8s...: %" PRIu32 " of %" PRIu32
		" steps were published, resuming",
		mcp_w.index, i, j->sid, l->done, j->n);
	return 1;
}

static void job_step(int i, int64_t now)
{
	struct job_slot *j = mine(i);
	struct job_local *l = &local[i];
	char buf[1024];
	uint32_t state = __atomic_load_n(&j->state, __ATOMIC_ACQUIRE);
	if (state == JOB_CANCELLED) {
		job_free(i);
		return;
	}
	if (state == JOB_LINGER) {
		ctl_delete_async(j->sid, j->tenant, j->has_principal ? j->principal : NULL);
		job_free(i);
		return;
	}
	int last = l->next_step > j->n;
	uint16_t kind = MCP_EV_RESULT;
	char *heap = NULL;
	int64_t rc = 0;
	if (j->tool == JOB_ASK && last) {
		heap = ask_result(j, l);
	} else if (j->tool == JOB_ASK) {
		heap = ask_request(j);
		kind = (uint16_t)(MCP_EV_STEP | 1);
		if (heap && j->on_standalone) {
			/* The call is answered in JSON: the request goes to the GET stream, and a
			 * mark on the call's stream records the step. */
			rc = shmb_publish(l->s, MCP_STREAM_STANDALONE, MCP_EV_MESSAGE, heap,
					  strlen(heap));
			snprintf(heap, MCP_ASK_PARAMS, "{\"step\":1}");
			kind = (uint16_t)(MCP_EV_MARK | 1);
		}
	} else if (last) {
		result_event(j, buf, sizeof buf);
	} else {
		kind = step_event(j, l->s, l->next_step, buf, sizeof buf);
	}
	if (j->tool == JOB_ASK && !heap)
		rc = SHMB_ENOMEM;
	if (rc >= 0)
		rc = shmb_publish(l->s, j->stream, kind, heap ? heap : buf,
				  strlen(heap ? heap : buf));
	free(heap);
	if (rc == SHMB_EOVERRUN || rc == SHMB_ENOREADER) {
		l->due = now + 10; /* lost as a gap, or no reader slot: publish it again */
		return;
	}
	if (rc < 0) {
		mcp_log("worker %d: job %d dropped: %s", mcp_w.index, i, shmb_strerror((int)rc));
		job_free(i);
		return;
	}
	j->published = l->next_step; /* see the top: the record that survives eviction */
	if (!last) {
		l->next_step++;
		l->due = now + (l->next_step > j->n ? j->final_ms : j->delay_ms);
		if (j->tool == JOB_ASK)
			ask_wait(i, now);
		return;
	}
	if (j->ephemeral) {
		/* The client's reader still needs the session to read the result (unless it is
		 * gone already: then at once; jobs_reader_gone ends the wait when it goes). */
		__atomic_store_n(&j->state, JOB_LINGER, __ATOMIC_RELEASE);
		l->due = l->orphan ? now : now + 5000;
		return;
	}
	job_free(i);
}

int64_t jobs_tick(int64_t now)
{
	int64_t next = INT64_MAX;
	for (int i = 0; i < MCP_JOBS_PER_WORKER; i++) {
		if (__atomic_load_n(&mine(i)->state, __ATOMIC_ACQUIRE) == JOB_FREE)
			continue;
		struct job_local *l = &local[i];
		if (__atomic_load_n(&mine(i)->state, __ATOMIC_ACQUIRE) == JOB_CANCELLED) {
			job_free(i); /* jobs_cancel: nothing more to publish */
			continue;
		}
		if (!l->ready && (l->due > now || job_resume(i, now) <= 0)) {
			if (local[i].due && local[i].due < next)
				next = local[i].due;
			continue;
		}
		if (l->waiting && ask_poll(i))
			l->due = now; /* the client's reply came: the result is due */
		if (l->due <= now)
			job_step(i, now);
		if (__atomic_load_n(&mine(i)->state, __ATOMIC_ACQUIRE) != JOB_FREE && l->due < next)
			next = l->due;
	}
	return next;
}

void jobs_fini(void)
{
	for (int i = 0; i < MCP_JOBS_PER_WORKER; i++) {
		shmb_cursor_close(local[i].scan);
		shmb_session_close(local[i].s);
		local[i] = (struct job_local){ 0 };
	}
}
