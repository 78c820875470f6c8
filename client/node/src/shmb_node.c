/* shmb_node.c - the Node.js addon: libshmb behind Node-API (C, NAPI_VERSION 8).
 *
 * Thin by design (STYLE.md, "Bindings"): it calls shmb.h only and maps every negative return to
 * one ShmbError whose `code` is the library's name without the prefix ("ENOENT"). The JavaScript
 * classes (lib/shmb.js) hold the surface; this file wraps their instances (napi_wrap) with the C
 * handles and exports one function per C call.
 *
 * Lifetimes. A JS Client, Session or Cursor owns one native struct (nclient, nsession, ncursor);
 * the JS classes keep their parents reachable (a cursor references its session, a session its
 * client), but a garbage collection may finalize a parent and its children in one pass, in any
 * order. So a native struct is freed when its own wrapper is finalized AND nothing points at it
 * (refs), and closing a parent closes its children's C handles first: libshmb needs every cursor
 * closed before its session, every session before shmb_detach. A closed handle's struct lives on
 * (closed = 1) until its wrapper goes, so using it throws ShmbError ECLOSED, never touches freed
 * memory.
 *
 * Nothing waits on the broker on the loop's thread: attach, create and delete run on the libuv
 * thread pool (napi_create_async_work) and return promises; libshmb is thread-safe per client.
 * A client with work in flight is detached only when the last one completes (inflight).
 *
 * Wakeups: ONE uv_poll_t per shmb_client on shmb_fd() (two Client objects attached to one
 * instance share libshmb's client, and libuv refuses two polls on one fd), following shmb.h's
 * event-loop pattern: shmb_wait(c, 0), drain shmb_ready(), re-arm with shmb_prepare_wait(), then
 * call the JS dispatcher once with the Session objects that have news; it wakes their followers.
 * No thread and no timer per stream. The poll handle is unref'd unless some cursor follows, so
 * an idle client does not keep the process alive.
 *
 * Threads: one env (the main thread or one worker_thread) per process should follow cursors:
 * shmb_ready() reports per process, so two loops polling one client would steal each other's
 * reports (README, "Limits").
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <uv.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmb.h"

/* An id crosses into JavaScript as a number: exact below 2^53. */
#define MAX_SAFE_ID 9007199254740991.0

struct inst;

/* One per shmb_client pointer per env: the poll on its fd. */
struct poller {
	struct poller *next;
	struct inst *in;
	shmb_client *c;
	struct pollh *h; /* freed by its close callback */
	int users;       /* nclients using it */
	int following;
};

/* The poll handle, with what its close callback needs after the poller is gone. */
struct pollh {
	uv_poll_t h;
	struct inst *in;
};

struct nclient {
	struct nclient *next; /* inst->clients */
	struct inst *in;
	shmb_client *c;
	struct poller *p;
	struct nsession *sessions;
	int closed;
	int wrapped; /* its JS object still exists */
	int inflight;
	int detach_pending;
};

struct nsession {
	struct nsession *next; /* cl->sessions */
	struct nclient *cl;
	shmb_session *s;
	struct ncursor *cursors;
	napi_ref self; /* weak: the JS Session, for the dispatcher */
	int closed;
	int wrapped;
};

struct ncursor {
	struct ncursor *next; /* ss->cursors */
	struct nsession *ss;
	shmb_cursor *cur;
	char *buf;
	size_t buflen;
	int closed;
	int wrapped;
};

struct inst {
	napi_env env;
	napi_ref err_ctor;
	napi_ref dispatch;
	napi_async_context actx;
	struct poller *pollers;
	struct nclient *clients;
	int dead;    /* the env's instance data was finalized */
	int closing; /* poll handles whose close callback has not run yet */
	napi_async_cleanup_hook_handle cleanup; /* set while the env's teardown waits for us */
};

/* ---- errors ---- */

#define NAPI_OK(call)                                  \
	do {                                           \
		if ((call) != napi_ok)                 \
			return throw_napi(env, #call); \
	} while (0)

static napi_value throw_napi(napi_env env, const char *what)
{
	bool pending = false;
	napi_is_exception_pending(env, &pending);
	if (!pending) {
		const napi_extended_error_info *info = NULL;
		napi_get_last_error_info(env, &info);
		char msg[256];
		snprintf(msg, sizeof msg, "shmb: internal Node-API error in %s: %s", what,
			 info && info->error_message ? info->error_message : "unknown");
		napi_throw_error(env, NULL, msg);
	}
	return NULL;
}

static napi_value type_error(napi_env env, const char *msg)
{
	napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
	return NULL;
}

/* A ShmbError(message, code, errno) value, or a plain Error if setup() was not called. */
static napi_value make_error(napi_env env, const char *op, const char *code, const char *desc,
			     int num)
{
	struct inst *in = NULL;
	napi_get_instance_data(env, (void **)&in);
	char msg[320];
	snprintf(msg, sizeof msg, "%s: %s", op, desc);
	napi_value m, k, n, err = NULL, ctor;
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
	napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &k);
	napi_create_int32(env, num, &n);
	if (in && in->err_ctor && napi_get_reference_value(env, in->err_ctor, &ctor) == napi_ok &&
	    ctor) {
		napi_value argv[3] = { m, k, n };
		if (napi_new_instance(env, ctor, 3, argv, &err) != napi_ok)
			err = NULL;
	}
	if (!err) {
		napi_create_error(env, k, m, &err);
		napi_set_named_property(env, err, "errno", n);
	}
	return err;
}

static napi_value throw_shmb(napi_env env, const char *op, int rc)
{
	const char *name = shmb_err_name(rc);
	if (strncmp(name, "SHMB_", 5) == 0)
		name += 5;
	napi_throw(env, make_error(env, op, name, shmb_strerror(rc), rc));
	return NULL;
}

static napi_value throw_closed(napi_env env, const char *op, const char *what)
{
	char desc[64];
	snprintf(desc, sizeof desc, "%s is closed", what);
	napi_throw(env, make_error(env, op, "ECLOSED", desc, 0));
	return NULL;
}

/* ---- argument helpers (each throws TypeError and returns -1 on a wrong type) ---- */

/* A string of at most cap - 1 bytes without NUL into buf; null/undefined gives *isnull when
 * nullable. Too long or containing NUL: TypeError (the library would reject or truncate it). */
static int get_str(napi_env env, napi_value v, char *buf, size_t cap, int nullable, int *isnull,
		   const char *what)
{
	napi_valuetype t;
	char msg[128];
	if (napi_typeof(env, v, &t) != napi_ok)
		return -1;
	if (nullable && (t == napi_null || t == napi_undefined)) {
		*isnull = 1;
		return 0;
	}
	if (isnull)
		*isnull = 0;
	if (t != napi_string) {
		snprintf(msg, sizeof msg, "%s must be a string%s", what,
			 nullable ? " or null" : "");
		type_error(env, msg);
		return -1;
	}
	size_t len = 0;
	if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
		return -1;
	if (len >= cap) {
		snprintf(msg, sizeof msg, "%s is too long (%zu bytes, at most %zu)", what, len,
			 cap - 1);
		type_error(env, msg);
		return -1;
	}
	napi_get_value_string_utf8(env, v, buf, cap, &len);
	if (strlen(buf) != len) {
		snprintf(msg, sizeof msg, "%s must not contain a NUL character", what);
		type_error(env, msg);
		return -1;
	}
	return 0;
}

/* A non-negative integer number (or bigint) up to max. */
static int get_uint(napi_env env, napi_value v, double max, uint64_t *out, const char *what)
{
	napi_valuetype t;
	char msg[128];
	if (napi_typeof(env, v, &t) != napi_ok)
		return -1;
	if (t == napi_bigint) {
		bool lossless = false;
		uint64_t u = 0;
		napi_get_value_bigint_uint64(env, v, &u, &lossless);
		if (lossless && (double)u <= max) {
			*out = u;
			return 0;
		}
	} else if (t == napi_number) {
		double d = 0;
		napi_get_value_double(env, v, &d);
		if (d >= 0 && d <= max && d == (double)(uint64_t)d) {
			*out = (uint64_t)d;
			return 0;
		}
	}
	snprintf(msg, sizeof msg, "%s must be an integer from 0 to %.0f", what, max);
	type_error(env, msg);
	return -1;
}

/* Bytes of a Buffer/TypedArray/ArrayBuffer (no copy) or of a string (UTF-8, copied to *owned). */
static int get_bytes(napi_env env, napi_value v, const void **data, size_t *len, char **owned,
		     const char *what)
{
	napi_valuetype t;
	bool is = false;
	*owned = NULL;
	if (napi_typeof(env, v, &t) != napi_ok)
		return -1;
	if (t == napi_string) {
		size_t n = 0;
		if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok)
			return -1;
		char *b = malloc(n + 1);
		if (!b) {
			throw_shmb(env, what, SHMB_ENOMEM);
			return -1;
		}
		napi_get_value_string_utf8(env, v, b, n + 1, &n);
		*owned = b;
		*data = b;
		*len = n;
		return 0;
	}
	if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
		napi_typedarray_type tt;
		size_t n = 0, off = 0;
		void *p = NULL;
		napi_value ab;
		napi_get_typedarray_info(env, v, &tt, &n, &p, &ab, &off);
		static const size_t esz[] = {
			[napi_int8_array] = 1,          [napi_uint8_array] = 1,
			[napi_uint8_clamped_array] = 1, [napi_int16_array] = 2,
			[napi_uint16_array] = 2,        [napi_int32_array] = 4,
			[napi_uint32_array] = 4,        [napi_float32_array] = 4,
			[napi_float64_array] = 8,       [napi_bigint64_array] = 8,
			[napi_biguint64_array] = 8
		};
		*data = p;
		*len = n * ((size_t)tt < sizeof esz / sizeof esz[0] ? esz[tt] : 1);
		return 0;
	}
	if (napi_is_dataview(env, v, &is) == napi_ok && is) {
		size_t n = 0, off = 0;
		void *p = NULL;
		napi_value ab;
		napi_get_dataview_info(env, v, &n, &p, &ab, &off);
		*data = p;
		*len = n;
		return 0;
	}
	if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
		void *p = NULL;
		size_t n = 0;
		napi_get_arraybuffer_info(env, v, &p, &n);
		*data = p;
		*len = n;
		return 0;
	}
	char msg[128];
	snprintf(msg, sizeof msg, "%s must be a Buffer, a TypedArray or a string", what);
	type_error(env, msg);
	return -1;
}

/* The native struct napi_wrap'd into this object, of the expected kind (tag). */
static const napi_type_tag TAG_CLIENT = { 0x73686d62636c6e74ull, 0x1ull };
static const napi_type_tag TAG_SESSION = { 0x73686d6273657373ull, 0x2ull };
static const napi_type_tag TAG_CURSOR = { 0x73686d6263757273ull, 0x3ull };

static void *unwrap(napi_env env, napi_value v, const napi_type_tag *tag, const char *what)
{
	napi_valuetype t;
	bool ok = false;
	void *p = NULL;
	if (napi_typeof(env, v, &t) == napi_ok && t == napi_object &&
	    napi_check_object_type_tag(env, v, tag, &ok) == napi_ok && ok &&
	    napi_unwrap(env, v, &p) == napi_ok && p)
		return p;
	char msg[96];
	snprintf(msg, sizeof msg, "expected a %s", what);
	type_error(env, msg);
	return NULL;
}

#define ARGS(n)                                                                \
	size_t argc = (n);                                                     \
	napi_value argv[(n) > 0 ? (n) : 1], this_;                             \
	if (napi_get_cb_info(env, info, &argc, argv, &this_, NULL) != napi_ok) \
		return throw_napi(env, "napi_get_cb_info");                    \
	for (size_t i_ = argc; i_ < (size_t)(n); i_++)                         \
		napi_get_undefined(env, &argv[i_]);                            \
	(void)this_

/* ---- closing, freeing ---- */

static void cursor_close(struct ncursor *k)
{
	if (k->closed)
		return;
	k->closed = 1;
	shmb_cursor_close(k->cur);
	k->cur = NULL;
	free(k->buf);
	k->buf = NULL;
}

static void cursor_maybe_free(struct ncursor *k)
{
	if (!k->closed || k->wrapped)
		return;
	struct ncursor **pp = &k->ss->cursors;
	while (*pp && *pp != k)
		pp = &(*pp)->next;
	if (*pp)
		*pp = k->next;
	free(k);
}

static void session_maybe_free(napi_env env, struct nsession *ss);
static void client_maybe_free(struct nclient *cl);

static void session_close(napi_env env, struct nsession *ss)
{
	if (ss->closed)
		return;
	/* Children first: libshmb needs every cursor closed before its session. The structs
	 * stay while their wrappers live (closed, so using them throws). */
	for (struct ncursor *k = ss->cursors, *n; k; k = n) {
		n = k->next;
		cursor_close(k);
		cursor_maybe_free(k);
	}
	ss->closed = 1;
	shmb_session_close(ss->s);
	ss->s = NULL;
	(void)env;
}

static void session_maybe_free(napi_env env, struct nsession *ss)
{
	if (!ss->closed || ss->wrapped || ss->cursors)
		return;
	if (ss->self)
		napi_delete_reference(env, ss->self);
	struct nsession **pp = &ss->cl->sessions;
	while (*pp && *pp != ss)
		pp = &(*pp)->next;
	if (*pp)
		*pp = ss->next;
	struct nclient *cl = ss->cl;
	free(ss);
	client_maybe_free(cl);
}

static void inst_maybe_free(struct inst *in)
{
	if (in->dead && !in->clients && !in->closing)
		free(in);
}

/* The env's teardown waits (async cleanup hook) until every poll handle's close callback ran:
 * in a worker_thread the addon is unloaded right after, and libuv would call into unmapped
 * code. */
static void poll_close_cb(uv_handle_t *h)
{
	struct pollh *ph = (struct pollh *)h;
	struct inst *in = ph->in;
	free(ph);
	if (--in->closing == 0 && in->cleanup) {
		napi_remove_async_cleanup_hook(in->cleanup);
		in->cleanup = NULL;
	}
	inst_maybe_free(in);
}

static void poller_release(struct poller *p)
{
	if (--p->users > 0)
		return;
	struct poller **pp = &p->in->pollers;
	while (*pp && *pp != p)
		pp = &(*pp)->next;
	if (*pp)
		*pp = p->next;
	/* uv_close takes the fd out of the loop's epoll set now, before shmb_detach closes it. */
	if (p->h) {
		p->in->closing++;
		uv_close((uv_handle_t *)&p->h->h, poll_close_cb);
	}
	free(p);
}

/* Detaches when closed and no async work uses the client any more. */
static void client_detach_if_idle(struct nclient *cl)
{
	if (!cl->detach_pending || cl->inflight > 0)
		return;
	cl->detach_pending = 0;
	if (cl->p) {
		poller_release(cl->p);
		cl->p = NULL;
	}
	shmb_detach(cl->c);
	cl->c = NULL;
}

static void client_close(napi_env env, struct nclient *cl)
{
	if (cl->closed)
		return;
	cl->closed = 1;
	for (struct nsession *ss = cl->sessions, *n; ss; ss = n) {
		n = ss->next;
		session_close(env, ss);
	}
	if (cl->c) {
		cl->detach_pending = 1;
		client_detach_if_idle(cl);
	}
}

static void client_maybe_free(struct nclient *cl)
{
	if (!cl->closed || cl->wrapped || cl->sessions || cl->inflight || cl->c)
		return;
	struct nclient **pp = &cl->in->clients;
	while (*pp && *pp != cl)
		pp = &(*pp)->next;
	if (*pp)
		*pp = cl->next;
	struct inst *in = cl->in;
	free(cl);
	inst_maybe_free(in);
}

static void cursor_finalize(napi_env env, void *data, void *hint)
{
	struct ncursor *k = data;
	struct nsession *ss = k->ss;
	(void)hint;
	cursor_close(k);
	k->wrapped = 0;
	cursor_maybe_free(k);
	session_maybe_free(env, ss);
}

static void session_finalize(napi_env env, void *data, void *hint)
{
	struct nsession *ss = data;
	(void)hint;
	session_close(env, ss);
	ss->wrapped = 0;
	session_maybe_free(env, ss);
}

static void client_finalize(napi_env env, void *data, void *hint)
{
	struct nclient *cl = data;
	(void)hint;
	client_close(env, cl);
	cl->wrapped = 0;
	client_maybe_free(cl);
}

/* ---- the poll: one per shmb_client ---- */

static void dispatch(struct poller *p)
{
	struct inst *in = p->in;
	napi_env env = in->env;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	napi_value arr;
	uint32_t n = 0;
	napi_create_array(env, &arr);
	shmb_wait(p->c, 0);
	do {
		shmb_session *out[64];
		int k;
		while ((k = shmb_ready(p->c, out, 64)) > 0) {
			for (int i = 0; i < k; i++) {
				/* Linear in this env's open sessions of the client; a wake reports
				 * few, and a worker holds hundreds of sessions at most. */
				for (struct nclient *cl = in->clients; cl; cl = cl->next) {
					if (cl->c != p->c)
						continue;
					for (struct nsession *ss = cl->sessions; ss;
					     ss = ss->next) {
						napi_value v = NULL;
						if (ss->closed || ss->s != out[i] || !ss->self)
							continue;
						if (napi_get_reference_value(env, ss->self, &v) ==
							    napi_ok &&
						    v)
							napi_set_element(env, arr, n++, v);
					}
				}
			}
			if (k < 64)
				break;
		}
	} while (shmb_prepare_wait(p->c) == 1);
	napi_value fn, global, res;
	if (n > 0 && in->dispatch && napi_get_reference_value(env, in->dispatch, &fn) == napi_ok &&
	    fn) {
		napi_get_global(env, &global);
		if (napi_make_callback(env, in->actx, global, fn, 1, &arr, &res) != napi_ok) {
			napi_value e;
			if (napi_get_and_clear_last_exception(env, &e) == napi_ok && e)
				napi_fatal_exception(env, e);
		}
	}
	napi_close_handle_scope(env, scope);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	(void)status;
	(void)events;
	dispatch(h->data);
}

static int poller_get(napi_env env, struct nclient *cl)
{
	struct inst *in = cl->in;
	for (struct poller *p = in->pollers; p; p = p->next)
		if (p->c == cl->c) {
			p->users++;
			cl->p = p;
			return 0;
		}
	uv_loop_t *loop = NULL;
	if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop)
		return SHMB_EIO;
	struct poller *p = calloc(1, sizeof *p);
	struct pollh *h = calloc(1, sizeof *h);
	if (!p || !h) {
		free(p);
		free(h);
		return SHMB_ENOMEM;
	}
	if (uv_poll_init(loop, &h->h, shmb_fd(cl->c)) != 0) {
		free(p);
		free(h);
		return SHMB_EIO;
	}
	h->in = in;
	h->h.data = p;
	uv_poll_start(&h->h, UV_READABLE, poll_cb);
	uv_unref((uv_handle_t *)&h->h);
	*p = (struct poller){ .next = in->pollers, .in = in, .c = cl->c, .h = h, .users = 1 };
	in->pollers = p;
	cl->p = p;
	shmb_prepare_wait(cl->c);
	return 0;
}

/* ---- setup, attach, close ---- */

static void inst_cleanup(napi_async_cleanup_hook_handle handle, void *arg)
{
	struct inst *in = arg;
	/* The env is going away (process exit, worker thread end): stop the polls and detach;
	 * the teardown goes on once the polls' close callbacks ran (poll_close_cb). */
	in->cleanup = handle;
	for (struct nclient *cl = in->clients; cl; cl = cl->next)
		client_close(in->env, cl);
	if (in->closing == 0) {
		napi_remove_async_cleanup_hook(handle);
		in->cleanup = NULL;
	}
}

/* Clients may outlive the instance data at env teardown (finalizers run in any order): the last
 * of them frees it (client_maybe_free). */
static void inst_finalize(napi_env env, void *data, void *hint)
{
	struct inst *in = data;
	(void)env;
	(void)hint;
	in->dead = 1;
	inst_maybe_free(in);
}

/* setup(ShmbError, dispatch): the error class to throw and the function the poll calls with
 * the Session objects that have news. */
static napi_value n_setup(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct inst *in = NULL;
	napi_get_instance_data(env, (void **)&in);
	napi_valuetype t0, t1;
	napi_typeof(env, argv[0], &t0);
	napi_typeof(env, argv[1], &t1);
	if (t0 != napi_function || t1 != napi_function)
		return type_error(env, "setup(ShmbError, dispatch) takes two functions");
	if (in->err_ctor)
		napi_delete_reference(env, in->err_ctor);
	if (in->dispatch)
		napi_delete_reference(env, in->dispatch);
	NAPI_OK(napi_create_reference(env, argv[0], 1, &in->err_ctor));
	NAPI_OK(napi_create_reference(env, argv[1], 1, &in->dispatch));
	return NULL;
}

/* Async work shared by attach, create, delete, restore. */
struct work {
	napi_async_work w;
	napi_deferred d;
	napi_ref target; /* attach: the Client object to wrap */
	struct nclient *cl;
	int op; /* 0 attach, 1 create, 2 delete, 3 restore */
	int rc;
	int has_name, has_principal;
	char name[256];
	char tenant[256];
	char principal[256];
	char sid[SHMB_SID_LEN + 1];
	shmb_session_opts opts;
	shmb_client *c;
	shmb_session_image img; /* restore: points into copies owned here (image_free) */
};

static void image_free(struct work *w);

static void work_exec(napi_env env, void *data)
{
	struct work *w = data;
	(void)env;
	if (w->op == 0)
		w->rc = shmb_attach(w->has_name ? w->name : NULL, &w->c);
	else if (w->op == 1)
		w->rc = shmb_session_create_opts(w->cl->c, w->tenant,
						 w->has_principal ? w->principal : NULL, &w->opts,
						 w->sid);
	else if (w->op == 2)
		w->rc = shmb_session_delete(w->cl->c, w->sid, w->tenant,
					    w->has_principal ? w->principal : NULL);
	else
		w->rc = shmb_session_restore(w->cl->c, &w->img);
}

static void work_done(napi_env env, napi_status status, void *data)
{
	struct work *w = data;
	static const char *const ops[] = { "attach", "create", "delete", "restore" };
	napi_value result = NULL, obj = NULL;
	int rc = status == napi_ok ? w->rc : SHMB_EIO;
	if (w->op == 0) {
		struct inst *in = NULL;
		napi_get_instance_data(env, (void **)&in);
		if (rc == 0 && napi_get_reference_value(env, w->target, &obj) == napi_ok && obj) {
			struct nclient *cl = calloc(1, sizeof *cl);
			if (!cl) {
				rc = SHMB_ENOMEM;
			} else {
				*cl = (struct nclient){
					.next = in->clients, .in = in, .c = w->c, .wrapped = 1
				};
				int prc = poller_get(env, cl);
				if (prc < 0 || napi_wrap(env, obj, cl, client_finalize, NULL,
							 NULL) != napi_ok) {
					if (cl->p)
						poller_release(cl->p);
					free(cl);
					rc = prc < 0 ? prc : SHMB_EIO;
				} else {
					napi_type_tag_object(env, obj, &TAG_CLIENT);
					in->clients = cl;
					w->c = NULL;
				}
			}
			if (rc < 0 && w->c)
				shmb_detach(w->c);
		}
		napi_get_undefined(env, &result);
	} else {
		w->cl->inflight--;
		client_detach_if_idle(w->cl);
		client_maybe_free(w->cl);
		if (w->op == 1)
			napi_create_string_utf8(env, w->sid, NAPI_AUTO_LENGTH, &result);
		else if (w->op == 3)
			napi_create_int32(env, rc, &result);
		else
			napi_get_undefined(env, &result);
	}
	if (rc < 0) {
		const char *name = shmb_err_name(rc);
		if (strncmp(name, "SHMB_", 5) == 0)
			name += 5;
		napi_reject_deferred(env, w->d,
				     make_error(env, ops[w->op], name, shmb_strerror(rc), rc));
	} else {
		napi_resolve_deferred(env, w->d, result);
	}
	if (w->target)
		napi_delete_reference(env, w->target);
	napi_delete_async_work(env, w->w);
	image_free(w);
	free(w);
}

static napi_value queue_work(napi_env env, struct work *w)
{
	napi_value promise, rname;
	if (napi_create_promise(env, &w->d, &promise) != napi_ok)
		goto fail;
	napi_create_string_utf8(env, "shmb", NAPI_AUTO_LENGTH, &rname);
	if (napi_create_async_work(env, NULL, rname, work_exec, work_done, w, &w->w) != napi_ok)
		goto fail;
	if (napi_queue_async_work(env, w->w) != napi_ok)
		goto fail;
	if (w->cl)
		w->cl->inflight++;
	return promise;
fail:
	if (w->target)
		napi_delete_reference(env, w->target);
	image_free(w);
	free(w);
	return throw_napi(env, "queue_work");
}

/* attach(clientObject, name?) -> Promise<undefined>: wraps clientObject once attached. */
static napi_value n_attach(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct work *w = calloc(1, sizeof *w);
	if (!w)
		return throw_shmb(env, "attach", SHMB_ENOMEM);
	int isnull = 0;
	napi_valuetype t;
	napi_typeof(env, argv[0], &t);
	if (t != napi_object) {
		free(w);
		return type_error(env, "attach: expected a Client object");
	}
	if (get_str(env, argv[1], w->name, sizeof w->name, 1, &isnull, "name") < 0) {
		free(w);
		return NULL;
	}
	w->has_name = !isnull;
	w->op = 0;
	if (napi_create_reference(env, argv[0], 1, &w->target) != napi_ok) {
		free(w);
		return throw_napi(env, "napi_create_reference");
	}
	return queue_work(env, w);
}

/* The live native struct behind argument v, or NULL with TypeError / ShmbError ECLOSED thrown. */
static struct nclient *live_client(napi_env env, napi_value v, const char *op)
{
	struct nclient *cl = unwrap(env, v, &TAG_CLIENT, "Client");
	if (cl && cl->closed) {
		throw_closed(env, op, "client");
		return NULL;
	}
	return cl;
}

static struct nsession *live_session(napi_env env, napi_value v, const char *op)
{
	struct nsession *ss = unwrap(env, v, &TAG_SESSION, "Session");
	if (ss && ss->closed) {
		throw_closed(env, op, ss->cl->closed ? "client" : "session");
		return NULL;
	}
	return ss;
}

static struct ncursor *live_cursor(napi_env env, napi_value v, const char *op)
{
	struct ncursor *k = unwrap(env, v, &TAG_CURSOR, "Cursor");
	if (k && k->closed) {
		throw_closed(env, op, k->ss->closed ? "session" : "cursor");
		return NULL;
	}
	return k;
}

/* clientClose(client): closes its sessions and cursors, then detaches (once work in flight is
 * done). Closing twice is a no-op. */
static napi_value n_client_close(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct nclient *cl = unwrap(env, argv[0], &TAG_CLIENT, "Client");
	if (cl)
		client_close(env, cl);
	return NULL;
}

/* clientFollow(client, delta): a follower started (+1) or ended (-1); the poll keeps the
 * process alive while any follows. Then runs the poll's callback once: a new follower needs the
 * process armed, and news that came before it arrived reported. */
static napi_value n_client_follow(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct nclient *cl = unwrap(env, argv[0], &TAG_CLIENT, "Client");
	int32_t d = 0;
	if (!cl)
		return NULL;
	if (napi_get_value_int32(env, argv[1], &d) != napi_ok)
		return type_error(env, "delta must be a number");
	if (cl->closed || !cl->p)
		return NULL;
	struct poller *p = cl->p;
	int was = p->following > 0;
	p->following += d;
	if (p->following < 0)
		p->following = 0;
	if (p->h && was != (p->following > 0)) {
		if (p->following > 0)
			uv_ref((uv_handle_t *)&p->h->h);
		else
			uv_unref((uv_handle_t *)&p->h->h);
	}
	if (d > 0 && shmb_prepare_wait(cl->c) == 1)
		dispatch(p);
	return NULL;
}

static int work_strings(napi_env env, struct work *w, napi_value *argv, int with_sid)
{
	int isnull = 0;
	if (with_sid && get_str(env, argv[1], w->sid, sizeof w->sid, 0, NULL, "sid") < 0)
		return -1;
	if (get_str(env, argv[1 + with_sid], w->tenant, sizeof w->tenant, 0, NULL, "tenant") < 0)
		return -1;
	if (get_str(env, argv[2 + with_sid], w->principal, sizeof w->principal, 1, &isnull,
		    "principal") < 0)
		return -1;
	w->has_principal = !isnull;
	return 0;
}

/* create(client, tenant, principal|null, inactivityTtlMs, absoluteTtlMs) -> Promise<sid> */
static napi_value n_create(napi_env env, napi_callback_info info)
{
	ARGS(5);
	struct nclient *cl = live_client(env, argv[0], "create");
	if (!cl)
		return NULL;
	struct work *w = calloc(1, sizeof *w);
	if (!w)
		return throw_shmb(env, "create", SHMB_ENOMEM);
	uint64_t ia = 0, ab = 0;
	if (work_strings(env, w, argv, 0) < 0 ||
	    get_uint(env, argv[3], MAX_SAFE_ID, &ia, "inactivityTtlMs") < 0 ||
	    get_uint(env, argv[4], MAX_SAFE_ID, &ab, "absoluteTtlMs") < 0) {
		free(w);
		return NULL;
	}
	w->opts = (shmb_session_opts){ .inactivity_ttl_ms = (int64_t)ia,
				       .absolute_ttl_ms = (int64_t)ab };
	w->op = 1;
	w->cl = cl;
	return queue_work(env, w);
}

/* delete(client, sid, tenant, principal|null) -> Promise<undefined> */
static napi_value n_delete(napi_env env, napi_callback_info info)
{
	ARGS(4);
	struct nclient *cl = live_client(env, argv[0], "delete");
	if (!cl)
		return NULL;
	struct work *w = calloc(1, sizeof *w);
	if (!w)
		return throw_shmb(env, "delete", SHMB_ENOMEM);
	if (work_strings(env, w, argv, 1) < 0) {
		free(w);
		return NULL;
	}
	w->op = 2;
	w->cl = cl;
	return queue_work(env, w);
}

/* ---- multi-host: sidNode, nodeId, restore (docs/multi-host.md) ---- */

/* sidNode(sid) -> number: the node tag of a session id; ShmbError EINVAL for a non-id. */
static napi_value n_sid_node(napi_env env, napi_callback_info info)
{
	ARGS(1);
	char sid[128];
	if (get_str(env, argv[0], sid, sizeof sid, 0, NULL, "sid") < 0)
		return NULL;
	int rc = shmb_sid_node(sid);
	if (rc < 0)
		return throw_shmb(env, "sidNode", rc);
	napi_value r;
	NAPI_OK(napi_create_int32(env, rc, &r));
	return r;
}

/* nodeId(client) -> number: the broker's node_id (0: none), from the segment. */
static napi_value n_node_id(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct nclient *cl = live_client(env, argv[0], "nodeId");
	if (!cl)
		return NULL;
	int rc = shmb_node_id(cl->c);
	if (rc < 0)
		return throw_shmb(env, "nodeId", rc);
	napi_value r;
	NAPI_OK(napi_create_int32(env, rc, &r));
	return r;
}

/* The copies a restore's image points into, owned by its work (freed in work_done). */
static void image_free(struct work *w)
{
	shmb_session_image *img = &w->img;
	for (size_t i = 0; img->events && i < img->n_events; i++)
		free((void *)img->events[i].data);
	for (size_t i = 0; img->attrs && i < img->n_attrs; i++) {
		free((void *)img->attrs[i].key);
		free((void *)img->attrs[i].val);
	}
	free((void *)img->events);
	free((void *)img->attrs);
	img->events = NULL;
	img->attrs = NULL;
}

/* A copy of len bytes in native memory (never NULL on success, even for 0 bytes). */
static void *copy_bytes(napi_env env, const void *p, size_t len)
{
	void *b = malloc(len ? len : 1);
	if (!b)
		throw_shmb(env, "restore", SHMB_ENOMEM);
	else if (len)
		memcpy(b, p, len);
	return b;
}

/* Property k of object o, or -1 (an exception is pending: a throwing getter). */
static int get_prop(napi_env env, napi_value o, const char *k, napi_value *out)
{
	if (napi_get_named_property(env, o, k, out) != napi_ok) {
		throw_napi(env, k);
		return -1;
	}
	return 0;
}

/* A JS array to its length; TypeError otherwise. */
static int get_array(napi_env env, napi_value v, uint32_t *n, const char *what)
{
	bool is = false;
	char msg[96];
	if (napi_is_array(env, v, &is) == napi_ok && is &&
	    napi_get_array_length(env, v, n) == napi_ok)
		return 0;
	snprintf(msg, sizeof msg, "%s must be an array", what);
	type_error(env, msg);
	return -1;
}

/* Copies the events array ({id, stream, kind, tsMs, data, gap?}) into w->img. */
static int restore_events(napi_env env, napi_value arr, struct work *w)
{
	uint32_t n = 0;
	if (get_array(env, arr, &n, "events") < 0)
		return -1;
	if (n == 0)
		return 0;
	shmb_image_event *evs = calloc(n, sizeof *evs);
	if (!evs) {
		throw_shmb(env, "restore", SHMB_ENOMEM);
		return -1;
	}
	w->img.events = evs;
	for (uint32_t i = 0; i < n; i++) {
		napi_value e, v;
		napi_valuetype t;
		char what[48];
		uint64_t id, stream, kind, ts;
		bool gap = false;
		if (napi_get_element(env, arr, i, &e) != napi_ok) {
			throw_napi(env, "events");
			return -1;
		}
		if (napi_typeof(env, e, &t) != napi_ok || t != napi_object) {
			snprintf(what, sizeof what, "events[%u] must be an object", i);
			type_error(env, what);
			return -1;
		}
#define EV_UINT(name, max, out)                                                     \
	snprintf(what, sizeof what, "events[%u]." name, i);                         \
	if (get_prop(env, e, name, &v) < 0 || get_uint(env, v, max, out, what) < 0) \
		return -1;
		EV_UINT("id", MAX_SAFE_ID, &id);
		EV_UINT("stream", 4294967295.0, &stream);
		EV_UINT("kind", 65535.0, &kind);
		EV_UINT("tsMs", MAX_SAFE_ID, &ts);
#undef EV_UINT
		if (id == 0) {
			snprintf(what, sizeof what, "events[%u].id must be >= 1", i);
			type_error(env, what);
			return -1;
		}
		if (get_prop(env, e, "gap", &v) < 0 || napi_typeof(env, v, &t) != napi_ok)
			return -1;
		if (t != napi_undefined && t != napi_null && t != napi_boolean) {
			snprintf(what, sizeof what, "events[%u].gap must be a boolean", i);
			type_error(env, what);
			return -1;
		}
		if (t == napi_boolean)
			napi_get_value_bool(env, v, &gap);
		if (get_prop(env, e, "data", &v) < 0 || napi_typeof(env, v, &t) != napi_ok)
			return -1;
		const void *p = NULL;
		size_t len = 0;
		char *owned = NULL;
		if (!(gap && (t == napi_null || t == napi_undefined))) {
			snprintf(what, sizeof what, "events[%u].data", i);
			if (get_bytes(env, v, &p, &len, &owned, what) < 0)
				return -1;
		}
		evs[i] = (shmb_image_event){ .id = id,
					     .stream = (uint32_t)stream,
					     .kind = (uint16_t)kind,
					     .flags = gap ? SHMB_EV_GAP : 0,
					     .ts_ms = (int64_t)ts,
					     .data = owned ? owned : copy_bytes(env, p, len),
					     .len = len };
		w->img.n_events = i + 1; /* image_free frees this one's data from now on */
		if (!evs[i].data)
			return -1;
	}
	return 0;
}

/* Copies the attribute pairs ([[key, value], ...], made by lib/shmb.js) into w->img. */
static int restore_attrs(napi_env env, napi_value arr, struct work *w)
{
	uint32_t n = 0;
	if (get_array(env, arr, &n, "attrs") < 0)
		return -1;
	if (n == 0)
		return 0;
	shmb_image_attr *at = calloc(n, sizeof *at);
	if (!at) {
		throw_shmb(env, "restore", SHMB_ENOMEM);
		return -1;
	}
	w->img.attrs = at;
	for (uint32_t i = 0; i < n; i++) {
		napi_value kv, k, v;
		uint32_t two = 0;
		char key[SHMB_ATTR_KEY_MAX + 2], what[48];
		if (napi_get_element(env, arr, i, &kv) != napi_ok) {
			throw_napi(env, "attrs");
			return -1;
		}
		snprintf(what, sizeof what, "attrs[%u]", i);
		if (get_array(env, kv, &two, what) < 0)
			return -1;
		if (two != 2 || napi_get_element(env, kv, 0, &k) != napi_ok ||
		    napi_get_element(env, kv, 1, &v) != napi_ok) {
			type_error(env, "attrs entries must be [key, value] pairs");
			return -1;
		}
		const void *p = NULL;
		size_t len = 0;
		char *owned = NULL;
		if (get_str(env, k, key, sizeof key, 0, NULL, "attribute key") < 0 ||
		    get_bytes(env, v, &p, &len, &owned, "attribute value") < 0)
			return -1;
		at[i].key = strdup(key);
		at[i].val = owned ? owned : copy_bytes(env, p, len);
		at[i].len = len;
		w->img.n_attrs = i + 1;
		if (!at[i].key || !at[i].val) {
			if (!at[i].key)
				throw_shmb(env, "restore", SHMB_ENOMEM);
			return -1;
		}
	}
	return 0;
}

/* restore(client, sid, tenant, principal|null, createdAtMs, lastAccessedAtMs, inactivityTtlMs,
 * absoluteTtlMs, lastEventId, events, attrPairs) -> Promise<left out>: the whole image is
 * copied into native memory here, so the work on the thread pool reads nothing of JavaScript's
 * (and the caller may change its buffers at once). */
static napi_value n_restore(napi_env env, napi_callback_info info)
{
	ARGS(11);
	struct nclient *cl = live_client(env, argv[0], "restore");
	if (!cl)
		return NULL;
	struct work *w = calloc(1, sizeof *w);
	if (!w)
		return throw_shmb(env, "restore", SHMB_ENOMEM);
	uint64_t v[5] = { 0 };
	static const char *const names[] = { "createdAtMs", "lastAccessedAtMs", "inactivityTtlMs",
					     "absoluteTtlMs", "lastEventId" };
	int bad = work_strings(env, w, argv, 1) < 0;
	for (int i = 0; i < 5 && !bad; i++)
		bad = get_uint(env, argv[4 + i], MAX_SAFE_ID, &v[i], names[i]) < 0;
	if (!bad && v[0] == 0) {
		type_error(env, "createdAtMs must be an integer from 1 to 9007199254740991");
		bad = 1;
	}
	bad = bad || restore_events(env, argv[9], w) < 0 || restore_attrs(env, argv[10], w) < 0;
	if (bad) {
		image_free(w);
		free(w);
		return NULL;
	}
	w->img.sid = w->sid;
	w->img.tenant = w->tenant;
	w->img.principal = w->has_principal ? w->principal : NULL;
	w->img.created_at_ms = (int64_t)v[0];
	w->img.last_accessed_at_ms = (int64_t)v[1];
	w->img.inactivity_ttl_ms = v[2];
	w->img.absolute_ttl_ms = v[3];
	w->img.last_event_id = v[4];
	w->op = 3;
	w->cl = cl;
	return queue_work(env, w);
}

/* open(client, sessionObject, sid, tenant, principal|null): lock-free, no broker. */
static napi_value n_open(napi_env env, napi_callback_info info)
{
	ARGS(5);
	struct nclient *cl = live_client(env, argv[0], "open");
	char sid[128], tenant[256], principal[256];
	int isnull = 0;
	napi_valuetype t;
	if (!cl)
		return NULL;
	napi_typeof(env, argv[1], &t);
	if (t != napi_object)
		return type_error(env, "open: expected a Session object");
	if (get_str(env, argv[2], sid, sizeof sid, 0, NULL, "sid") < 0 ||
	    get_str(env, argv[3], tenant, sizeof tenant, 0, NULL, "tenant") < 0 ||
	    get_str(env, argv[4], principal, sizeof principal, 1, &isnull, "principal") < 0)
		return NULL;
	struct nsession *ss = calloc(1, sizeof *ss);
	if (!ss)
		return throw_shmb(env, "open", SHMB_ENOMEM);
	int rc = shmb_session_open(cl->c, sid, tenant, isnull ? NULL : principal, &ss->s);
	if (rc < 0) {
		free(ss);
		return throw_shmb(env, "open", rc);
	}
	ss->cl = cl;
	ss->wrapped = 1;
	if (napi_wrap(env, argv[1], ss, session_finalize, NULL, NULL) != napi_ok) {
		shmb_session_close(ss->s);
		free(ss);
		return throw_napi(env, "napi_wrap");
	}
	napi_type_tag_object(env, argv[1], &TAG_SESSION);
	napi_create_reference(env, argv[1], 0, &ss->self);
	ss->next = cl->sessions;
	cl->sessions = ss;
	return NULL;
}

static napi_value n_session_close(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct nsession *ss = unwrap(env, argv[0], &TAG_SESSION, "Session");
	if (ss)
		session_close(env, ss);
	return NULL;
}

/* publish(session, data, stream, kind) -> id */
static napi_value n_publish(napi_env env, napi_callback_info info)
{
	ARGS(4);
	struct nsession *ss = live_session(env, argv[0], "publish");
	const void *data = NULL;
	size_t len = 0;
	char *owned = NULL;
	uint64_t stream = 0, kind = 0;
	if (!ss || get_uint(env, argv[2], 4294967295.0, &stream, "stream") < 0 ||
	    get_uint(env, argv[3], 65535.0, &kind, "kind") < 0 ||
	    get_bytes(env, argv[1], &data, &len, &owned, "data") < 0)
		return NULL;
	int64_t id = shmb_publish(ss->s, (uint32_t)stream, (uint16_t)kind, data ? data : "", len);
	free(owned);
	if (id < 0)
		return throw_shmb(env, "publish", (int)id);
	napi_value v;
	NAPI_OK(napi_create_double(env, (double)id, &v));
	return v;
}

static void set_num(napi_env env, napi_value o, const char *k, double d)
{
	napi_value v;
	napi_create_double(env, d, &v);
	napi_set_named_property(env, o, k, v);
}

static void set_str(napi_env env, napi_value o, const char *k, const char *s)
{
	napi_value v;
	if (s)
		napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
	else
		napi_get_null(env, &v);
	napi_set_named_property(env, o, k, v);
}

/* stat(session) -> {sid, tenant, principal, createdAtMs, ...} */
static napi_value n_stat(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct nsession *ss = live_session(env, argv[0], "stat");
	shmb_session_info si;
	if (!ss)
		return NULL;
	int rc = shmb_session_stat(ss->s, &si);
	if (rc < 0)
		return throw_shmb(env, "stat", rc);
	napi_value o;
	NAPI_OK(napi_create_object(env, &o));
	set_str(env, o, "sid", si.sid);
	set_str(env, o, "tenant", si.tenant);
	set_str(env, o, "principal", si.has_principal ? si.principal : NULL);
	set_num(env, o, "createdAtMs", (double)si.created_at_ms);
	set_num(env, o, "lastAccessedAtMs", (double)si.last_accessed_at_ms);
	set_num(env, o, "inactivityTtlMs", (double)si.inactivity_ttl_ms);
	set_num(env, o, "absoluteTtlMs", (double)si.absolute_ttl_ms);
	set_num(env, o, "lastEventId", (double)si.last_event_id);
	set_num(env, o, "oldestEventId", (double)si.oldest_event_id);
	set_num(env, o, "subscribers", si.subscribers);
	return o;
}

/* subscribe(session, on): shmb_subscribe / shmb_unsubscribe (both idempotent per handle). */
static napi_value n_subscribe(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct nsession *ss = live_session(env, argv[0], "subscribe");
	bool on = false;
	if (!ss)
		return NULL;
	if (napi_get_value_bool(env, argv[1], &on) != napi_ok)
		return type_error(env, "on must be a boolean");
	int rc = on ? shmb_subscribe(ss->s) : shmb_unsubscribe(ss->s);
	if (rc < 0)
		return throw_shmb(env, on ? "subscribe" : "unsubscribe", rc);
	return NULL;
}

/* After an attribute call returned SHMB_ENOENT: the key is unset (false) or the session is gone
 * (throws ENOENT). */
static int attr_enoent_is_unset(napi_env env, struct nsession *ss, const char *op)
{
	shmb_session_info si;
	int rc = shmb_session_stat(ss->s, &si);
	if (rc < 0) {
		throw_shmb(env, op, rc);
		return 0;
	}
	return 1;
}

/* attrGet(session, key) -> [Buffer, version] | null (unset) */
static napi_value n_attr_get(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct nsession *ss = live_session(env, argv[0], "attrs.get");
	char key[SHMB_ATTR_KEY_MAX + 2], buf[SHMB_ATTR_MAX];
	uint64_t ver = 0;
	if (!ss || get_str(env, argv[1], key, sizeof key, 0, NULL, "key") < 0)
		return NULL;
	int rc = shmb_attr_get(ss->s, key, buf, sizeof buf, &ver);
	napi_value r, b, v;
	if (rc == SHMB_ENOENT) {
		if (!attr_enoent_is_unset(env, ss, "attrs.get"))
			return NULL;
		napi_get_null(env, &r);
		return r;
	}
	if (rc < 0)
		return throw_shmb(env, "attrs.get", rc);
	NAPI_OK(napi_create_buffer_copy(env, (size_t)rc, buf, NULL, &b));
	NAPI_OK(napi_create_double(env, (double)ver, &v));
	NAPI_OK(napi_create_array_with_length(env, 2, &r));
	napi_set_element(env, r, 0, b);
	napi_set_element(env, r, 1, v);
	return r;
}

/* attrSet(session, key, value, version|undefined) -> true, or false on a version conflict */
static napi_value n_attr_set(napi_env env, napi_callback_info info)
{
	ARGS(4);
	struct nsession *ss = live_session(env, argv[0], "attrs.set");
	char key[SHMB_ATTR_KEY_MAX + 2], *owned = NULL;
	const void *data = NULL;
	size_t len = 0;
	uint64_t ver = 0;
	napi_valuetype t;
	if (!ss || get_str(env, argv[1], key, sizeof key, 0, NULL, "key") < 0)
		return NULL;
	napi_typeof(env, argv[3], &t);
	int cas = t != napi_undefined;
	if (cas && get_uint(env, argv[3], MAX_SAFE_ID, &ver, "version") < 0)
		return NULL;
	if (get_bytes(env, argv[2], &data, &len, &owned, "value") < 0)
		return NULL;
	int rc = cas ? shmb_attr_set_if(ss->s, key, data ? data : "", len, ver)
		     : shmb_attr_set(ss->s, key, data ? data : "", len);
	free(owned);
	napi_value r;
	if (rc < 0 && rc != SHMB_ECONFLICT)
		return throw_shmb(env, cas ? "attrs.setIf" : "attrs.set", rc);
	napi_get_boolean(env, rc == 0, &r);
	return r;
}

/* attrDelete(session, key) -> true, or false if it was unset */
static napi_value n_attr_delete(napi_env env, napi_callback_info info)
{
	ARGS(2);
	struct nsession *ss = live_session(env, argv[0], "attrs.delete");
	char key[SHMB_ATTR_KEY_MAX + 2];
	if (!ss || get_str(env, argv[1], key, sizeof key, 0, NULL, "key") < 0)
		return NULL;
	int rc = shmb_attr_delete(ss->s, key);
	if (rc == SHMB_ENOENT && !attr_enoent_is_unset(env, ss, "attrs.delete"))
		return NULL;
	if (rc < 0 && rc != SHMB_ENOENT)
		return throw_shmb(env, "attrs.delete", rc);
	napi_value r;
	napi_get_boolean(env, rc == 0, &r);
	return r;
}

/* cursorOpen(session, cursorObject, after, stream|null) */
static napi_value n_cursor_open(napi_env env, napi_callback_info info)
{
	ARGS(4);
	struct nsession *ss = live_session(env, argv[0], "cursor");
	uint64_t after = 0, stream = 0;
	napi_valuetype t, ts;
	if (!ss)
		return NULL;
	napi_typeof(env, argv[1], &t);
	if (t != napi_object)
		return type_error(env, "cursor: expected a Cursor object");
	if (get_uint(env, argv[2], MAX_SAFE_ID, &after, "after") < 0)
		return NULL;
	napi_typeof(env, argv[3], &ts);
	int all = ts == napi_null || ts == napi_undefined;
	if (!all && get_uint(env, argv[3], 4294967295.0, &stream, "stream") < 0)
		return NULL;
	struct ncursor *k = calloc(1, sizeof *k);
	if (!k)
		return throw_shmb(env, "cursor", SHMB_ENOMEM);
	int rc = all ? shmb_cursor_open(ss->s, after, &k->cur)
		     : shmb_cursor_open_stream(ss->s, after, (uint32_t)stream, &k->cur);
	if (rc < 0) {
		free(k);
		return throw_shmb(env, "cursor", rc);
	}
	k->ss = ss;
	k->wrapped = 1;
	if (napi_wrap(env, argv[1], k, cursor_finalize, NULL, NULL) != napi_ok) {
		shmb_cursor_close(k->cur);
		free(k);
		return throw_napi(env, "napi_wrap");
	}
	napi_type_tag_object(env, argv[1], &TAG_CURSOR);
	k->next = ss->cursors;
	ss->cursors = k;
	return NULL;
}

/* cursorNext(cursor) -> {id, stream, kind, gap, tsMs, data} | null (nothing new). Throws
 * ShmbError EOVERRUN (with .lagged) once after an eviction, ENOENT once the session is gone. */
static napi_value n_cursor_next(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct ncursor *k = live_cursor(env, argv[0], "next");
	if (!k)
		return NULL;
	shmb_event ev;
	int rc;
	for (;;) {
		if (!k->buf) {
			k->buflen = 4096;
			k->buf = malloc(k->buflen);
			if (!k->buf)
				return throw_shmb(env, "next", SHMB_ENOMEM);
		}
		rc = shmb_cursor_next(k->cur, &ev, k->buf, k->buflen);
		if (rc != SHMB_ETOOBIG || ev.len <= k->buflen)
			break;
		char *nb = realloc(k->buf, ev.len);
		if (!nb)
			return throw_shmb(env, "next", SHMB_ENOMEM);
		k->buf = nb;
		k->buflen = ev.len;
	}
	napi_value o, d;
	if (rc == 0) {
		napi_get_null(env, &o);
		return o;
	}
	if (rc == SHMB_EOVERRUN) {
		napi_value e = make_error(env, "next", "EOVERRUN", shmb_strerror(rc), rc);
		set_num(env, e, "lagged", (double)shmb_cursor_lagged(k->cur));
		napi_throw(env, e);
		return NULL;
	}
	if (rc < 0)
		return throw_shmb(env, "next", rc);
	int gap = (ev.flags & SHMB_EV_GAP) != 0;
	NAPI_OK(napi_create_object(env, &o));
	set_num(env, o, "id", (double)ev.id);
	set_num(env, o, "stream", ev.stream);
	set_num(env, o, "kind", ev.kind);
	set_num(env, o, "tsMs", (double)ev.ts_ms);
	napi_get_boolean(env, gap, &d);
	napi_set_named_property(env, o, "gap", d);
	if (gap)
		napi_get_null(env, &d);
	else
		NAPI_OK(napi_create_buffer_copy(env, ev.len, ev.data, NULL, &d));
	napi_set_named_property(env, o, "data", d);
	return o;
}

static napi_value n_cursor_close(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct ncursor *k = unwrap(env, argv[0], &TAG_CURSOR, "Cursor");
	if (k)
		cursor_close(k);
	return NULL;
}

/* cursorPosition(cursor) -> the last id delivered or skipped */
static napi_value n_cursor_position(napi_env env, napi_callback_info info)
{
	ARGS(1);
	struct ncursor *k = live_cursor(env, argv[0], "position");
	napi_value v;
	if (!k)
		return NULL;
	NAPI_OK(napi_create_double(env, (double)shmb_cursor_position(k->cur), &v));
	return v;
}

/* errorName(code) -> "ENOENT": for tests and messages. */
static napi_value n_error_name(napi_env env, napi_callback_info info)
{
	ARGS(1);
	int32_t code = 0;
	napi_value v;
	if (napi_get_value_int32(env, argv[0], &code) != napi_ok)
		return type_error(env, "code must be a number");
	const char *name = shmb_err_name(code);
	NAPI_OK(napi_create_string_utf8(env, strncmp(name, "SHMB_", 5) ? name : name + 5,
					NAPI_AUTO_LENGTH, &v));
	return v;
}

static napi_value init(napi_env env, napi_value exports)
{
	struct inst *in = calloc(1, sizeof *in);
	napi_value rname;
	if (!in)
		return throw_shmb(env, "load", SHMB_ENOMEM);
	in->env = env;
	NAPI_OK(napi_set_instance_data(env, in, inst_finalize, NULL));
	NAPI_OK(napi_create_string_utf8(env, "shmb.poll", NAPI_AUTO_LENGTH, &rname));
	NAPI_OK(napi_async_init(env, NULL, rname, &in->actx));
	NAPI_OK(napi_add_async_cleanup_hook(env, inst_cleanup, in, NULL));
	static const struct {
		const char *name;
		napi_callback fn;
	} fns[] = {
		{ "setup", n_setup },
		{ "attach", n_attach },
		{ "clientClose", n_client_close },
		{ "clientFollow", n_client_follow },
		{ "create", n_create },
		{ "delete", n_delete },
		{ "restore", n_restore },
		{ "sidNode", n_sid_node },
		{ "nodeId", n_node_id },
		{ "open", n_open },
		{ "sessionClose", n_session_close },
		{ "publish", n_publish },
		{ "stat", n_stat },
		{ "subscribe", n_subscribe },
		{ "attrGet", n_attr_get },
		{ "attrSet", n_attr_set },
		{ "attrDelete", n_attr_delete },
		{ "cursorOpen", n_cursor_open },
		{ "cursorNext", n_cursor_next },
		{ "cursorClose", n_cursor_close },
		{ "cursorPosition", n_cursor_position },
		{ "errorName", n_error_name },
	};
	for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
		napi_value f;
		NAPI_OK(napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL,
					     &f));
		NAPI_OK(napi_set_named_property(env, exports, fns[i].name, f));
	}
	napi_value v;
	NAPI_OK(napi_create_string_utf8(env, shmb_version(), NAPI_AUTO_LENGTH, &v));
	NAPI_OK(napi_set_named_property(env, exports, "libraryVersion", v));
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
