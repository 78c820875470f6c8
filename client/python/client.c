/* client.c - shmb.Client: one attached libshmb client (shmb_attach) of this process.
 *
 * Attach, create, delete and restore talk to the broker and run with the GIL released; open is
 * lock-free and keeps it. Client.wait() is the process-wide wait of shmb_wait() (the fd is
 * fileno()); only one thread may use it at a time (shmb.h: two threads arming one client can
 * lose a wakeup), and not while Cursor.follow() uses the fd on an asyncio loop. close() follows
 * the rule of shmbpy.h: closing flag, wait for the GIL-released calls to leave, then close every
 * session and cursor and detach.
 *
 * restore (multi-host, docs/multi-host.md) builds a shmb_session_image from Python objects: the
 * events are first copied into a tuple of our own and every object the image points into (data
 * buffers, the attributes' items) is held until the call returns, so another thread changing a
 * list while the GIL is released cannot free memory under it. */
#include "shmbpy.h"

#include <unistd.h>

static PyObject *client_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "name", NULL };
	PyObject *name = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:Client", kwlist, &name))
		return NULL;
	const char *n;
	if (shmbpy_opt_text(name, &n, "name") < 0)
		return NULL;
	shmbpy_state *st = PyType_GetModuleState(type);
	shmbpy_client *self = (shmbpy_client *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	pthread_mutex_init(&self->mu, NULL);
	pthread_cond_init(&self->drained, NULL);
	self->pid = getpid();
	int rc;
	shmb_client *c = NULL;
	PyThreadState *ts = PyEval_SaveThread();
	rc = shmb_attach(n, &c);
	PyEval_RestoreThread(ts);
	if (rc < 0) {
		Py_DECREF(self);
		return shmbpy_raise(st, rc, n ? "attach" : "attach (default instance)", 0);
	}
	self->c = c;
	if (name != Py_None)
		self->name = Py_NewRef(name);
	else {
		const char *env = getenv("SHMB_NAME");
		self->name = PyUnicode_FromString(env && *env ? env : "default");
	}
	self->waiting = PyDict_New();
	if (!self->name || !self->waiting) {
		Py_DECREF(self);
		return NULL;
	}
	return (PyObject *)self;
}

/* The whole close: see the top of the file. wait: 0 in the finalizer and in a child after
 * fork() (no thread of ours can be inside). */
static void client_close_all(shmbpy_client *self, int wait)
{
	if (!self->c)
		return;
	self->closing = 1;
	if (wait && self->pid == getpid()) {
		/* This thread's own waits (a signal handler's close interrupting them) are not
		 * inside libshmb now: wait for the others only. */
		unsigned long me = PyThread_get_thread_ident();
		int mine = 0; /* (Client.wait counts itself during each slice only) */
		for (shmbpy_session *s = self->sessions; s; s = s->next)
			for (shmbpy_cursor *k = s->cursors; k; k = k->next)
				mine += k->busy && k->busy_thread == me;
		PyThreadState *ts = PyEval_SaveThread();
		pthread_mutex_lock(&self->mu);
		while (self->inflight > mine)
			pthread_cond_wait(&self->drained, &self->mu);
		pthread_mutex_unlock(&self->mu);
		PyEval_RestoreThread(ts);
	}
	if (!self->c) /* another thread closed it meanwhile */
		return;
	shmbpy_followers_fail(self, NULL, NULL);
	while (self->sessions)
		shmbpy_session_close_handle(self->sessions);
	shmb_client *c = self->c;
	self->c = NULL;
	shmb_detach(c);
}

static PyObject *client_close(shmbpy_client *self, PyObject *unused)
{
	(void)unused;
	client_close_all(self, 1);
	Py_RETURN_NONE;
}

static int client_traverse(shmbpy_client *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->loop);
	Py_VISIT(self->waiting);
	return 0;
}

static int client_clear(shmbpy_client *self)
{
	Py_CLEAR(self->loop);
	Py_CLEAR(self->waiting);
	return 0;
}

static void client_dealloc(shmbpy_client *self)
{
	PyTypeObject *t = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	if (self->c) {
		/* No session is left (each holds a reference), so nothing waits on c: detach. The
		 * loop registration, if any, holds a reference too, so there is none either. */
		shmb_client *c = self->c;
		self->c = NULL;
		shmb_detach(c);
	}
	client_clear(self);
	Py_CLEAR(self->name);
	pthread_cond_destroy(&self->drained);
	pthread_mutex_destroy(&self->mu);
	t->tp_free(self);
	Py_DECREF(t);
}

/* NULL with shmb.Closed when the client is closed (or closing). */
static shmb_client *usable(shmbpy_client *self)
{
	if (self->c && !self->closing)
		return self->c;
	shmbpy_closed(shmbpy_state_of((PyObject *)self), "Client");
	return NULL;
}

/* A GIL-released call on c that may not outlive close(): counts itself in inflight. */
#define CLIENT_CALL(self, rc, call)                       \
	do {                                              \
		shmbpy_inflight_enter(self);              \
		PyThreadState *ts_ = PyEval_SaveThread(); \
		rc = (call);                              \
		PyEval_RestoreThread(ts_);                \
		shmbpy_inflight_leave(self);              \
	} while (0)

static int ttl_arg(PyObject *o, int64_t *out, const char *what)
{
	*out = 0;
	if (!o || o == Py_None)
		return 0;
	if (!PyLong_Check(o)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int (ms) or None", what);
		return -1;
	}
	int overflow;
	long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	if (overflow || v <= 0) {
		PyErr_Format(PyExc_ValueError, "%s must be a positive number of ms", what);
		return -1;
	}
	*out = v;
	return 0;
}

static PyObject *client_create(shmbpy_client *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "tenant", "principal", "inactivity_ttl_ms", "absolute_ttl_ms",
				  NULL };
	PyObject *tenant, *principal = Py_None, *ittl = Py_None, *attl = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$OO:create", kwlist, &tenant, &principal,
					 &ittl, &attl))
		return NULL;
	const char *t, *p;
	shmb_session_opts opts;
	if (shmbpy_opt_text(tenant, &t, "tenant") < 0 ||
	    shmbpy_opt_text(principal, &p, "principal") < 0 ||
	    ttl_arg(ittl, &opts.inactivity_ttl_ms, "inactivity_ttl_ms") < 0 ||
	    ttl_arg(attl, &opts.absolute_ttl_ms, "absolute_ttl_ms") < 0)
		return NULL;
	if (!t)
		return PyErr_Format(PyExc_TypeError, "tenant must be str, not None");
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	char sid[SHMB_SID_LEN + 1];
	int rc;
	CLIENT_CALL(self, rc, shmb_session_create_opts(c, t, p, &opts, sid));
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "create", 0);
	return PyUnicode_FromStringAndSize(sid, SHMB_SID_LEN);
}

/* Parses (sid, tenant, principal=None). */
static int sid_args(PyObject *args, PyObject *kw, const char *fmt, PyObject **objs,
		    const char **sid, const char **t, const char **p)
{
	static char *kwlist[] = { "sid", "tenant", "principal", NULL };
	objs[2] = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, fmt, kwlist, &objs[0], &objs[1], &objs[2]))
		return -1;
	if (shmbpy_opt_text(objs[0], sid, "sid") < 0 || shmbpy_opt_text(objs[1], t, "tenant") < 0 ||
	    shmbpy_opt_text(objs[2], p, "principal") < 0)
		return -1;
	if (!*sid || !*t) {
		PyErr_SetString(PyExc_TypeError, "sid and tenant must be str, not None");
		return -1;
	}
	return 0;
}

PyObject *shmbpy_session_wrap(shmbpy_client *cl, shmb_session *s, PyObject *sid, PyObject *tenant,
			      PyObject *principal);

static PyObject *client_open(shmbpy_client *self, PyObject *args, PyObject *kw)
{
	PyObject *o[3];
	const char *sid, *t, *p;
	if (sid_args(args, kw, "OO|O:open", o, &sid, &t, &p) < 0)
		return NULL;
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	shmb_session *s;
	int rc = shmb_session_open(c, sid, t, p, &s);
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "open", 0);
	return shmbpy_session_wrap(self, s, o[0], o[1], o[2]);
}

static PyObject *client_delete(shmbpy_client *self, PyObject *args, PyObject *kw)
{
	PyObject *o[3];
	const char *sid, *t, *p;
	if (sid_args(args, kw, "OO|O:delete", o, &sid, &t, &p) < 0)
		return NULL;
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	int rc;
	CLIENT_CALL(self, rc, shmb_session_delete(c, sid, t, p));
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "delete", 0);
	Py_RETURN_NONE;
}

static PyObject *client_fileno(shmbpy_client *self, PyObject *unused)
{
	(void)unused;
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	int fd = shmb_fd(c);
	if (fd < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), fd, "fileno", 0);
	return PyLong_FromLong(fd);
}

static PyObject *client_wait(shmbpy_client *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "timeout", NULL };
	PyObject *timeout = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &timeout))
		return NULL;
	int ok;
	int64_t deadline = shmbpy_deadline(timeout, &ok);
	if (!ok)
		return NULL;
	if (self->pid != getpid() && self->c && !self->closing) /* before the copied in_wait */
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), SHMB_EFORK, "wait", 0);
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	if (self->in_wait || shmbpy_loop_release(self) < 0)
		return PyErr_Format(PyExc_RuntimeError,
				    "Client.wait: %s already waits on this client's fd (one waiter "
				    "per client: shmb.h, shmb_wait)",
				    self->loop ? "an asyncio loop (Cursor.follow)"
					       : "another thread");
	self->in_wait = 1;
	int rc = 0;
	/* The flags are looked at before every slice: a signal handler may have closed c. */
	while (!self->closing) {
		int64_t left = deadline < 0 ? SHMBPY_SLICE_MS : deadline - shmbpy_now_ms();
		int ms = left < 0 ? 0 : left > SHMBPY_SLICE_MS ? SHMBPY_SLICE_MS : (int)left;
		CLIENT_CALL(self, rc, shmb_wait(c, ms));
		if (rc != 0 || (deadline >= 0 && shmbpy_now_ms() >= deadline))
			break;
		if (PyErr_CheckSignals() < 0) {
			self->in_wait = 0;
			return NULL;
		}
	}
	self->in_wait = 0;
	if (self->closing)
		return shmbpy_closed(shmbpy_state_of((PyObject *)self), "Client");
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "wait", 0);
	return PyBool_FromLong(rc > 0);
}

static PyObject *client_enter(shmbpy_client *self, PyObject *unused)
{
	(void)unused;
	if (!usable(self))
		return NULL;
	return Py_NewRef(self);
}

static PyObject *client_exit(shmbpy_client *self, PyObject *args)
{
	(void)args;
	client_close_all(self, 1);
	Py_RETURN_FALSE;
}

static PyObject *client_repr(shmbpy_client *self)
{
	return PyUnicode_FromFormat("<shmb.Client name=%R%s>", self->name,
				    self->c ? "" : " closed");
}

static PyObject *client_get_closed(shmbpy_client *self, void *unused)
{
	(void)unused;
	return PyBool_FromLong(!self->c || self->closing);
}

static PyObject *client_get_name(shmbpy_client *self, void *unused)
{
	(void)unused;
	return Py_NewRef(self->name);
}

static PyObject *client_get_node_id(shmbpy_client *self, void *unused)
{
	(void)unused;
	shmb_client *c = usable(self);
	if (!c)
		return NULL;
	int rc = shmb_node_id(c);
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "node_id", 0);
	return PyLong_FromLong(rc);
}

/* ---- restore: a session image from Python objects (shmb_session_restore) */

/* The largest integer of an image (the protocol's JSON numbers carry 2^53 exactly). */
#define IMG_INT_MAX (1LL << 53)

/* What one restore holds until the call returns: the images' arrays, the data views, and the
 * objects their pointers point into (new references). */
typedef struct restore_hold {
	shmb_image_event *ev;
	shmb_image_attr *at;
	shmbpy_data *views;
	size_t n_views;
	PyObject **refs;
	size_t n_refs;
} restore_hold;

static void restore_release(restore_hold *h)
{
	for (size_t i = 0; i < h->n_views; i++)
		shmbpy_data_release(&h->views[i]);
	for (size_t i = 0; i < h->n_refs; i++)
		Py_XDECREF(h->refs[i]);
	PyMem_Free(h->ev);
	PyMem_Free(h->at);
	PyMem_Free(h->views);
	PyMem_Free(h->refs);
}

/* Field i of an event: item i of a tuple (id, stream, kind, ts_ms, data[, gap]), else the
 * attribute of that name (a shmb.Event, or any object with them); a new reference kept in h.
 * NULL for an absent optional field (gap), with no exception. */
static PyObject *event_field(PyObject *e, Py_ssize_t i, const char *name, int optional,
			     restore_hold *h, Py_ssize_t idx)
{
	PyObject *v;
	if (PyTuple_Check(e)) {
		if (i >= PyTuple_GET_SIZE(e)) {
			if (!optional)
				PyErr_Format(PyExc_TypeError,
					     "events[%zd]: a tuple (id, stream, kind, "
					     "ts_ms, data[, gap]) is too short",
					     idx);
			return NULL;
		}
		v = Py_NewRef(PyTuple_GET_ITEM(e, i));
	} else {
		v = PyObject_GetAttrString(e, name);
		if (!v) {
			if (!PyErr_ExceptionMatches(PyExc_AttributeError))
				return NULL;
			PyErr_Clear();
			if (!optional)
				PyErr_Format(
					PyExc_TypeError,
					"events[%zd] (%.80s) has no %s: give a "
					"shmb.Event or a tuple (id, stream, kind, ts_ms, data[, gap])",
					idx, Py_TYPE(e)->tp_name, name);
			return NULL;
		}
	}
	h->refs[h->n_refs++] = v;
	return v;
}

static int restore_events(PyObject *events, restore_hold *h, shmb_session_image *img)
{
	Py_ssize_t n = PyTuple_GET_SIZE(events);
	if (n == 0)
		return 0;
	h->ev = PyMem_Calloc((size_t)n, sizeof *h->ev);
	h->views = PyMem_Calloc((size_t)n, sizeof *h->views);
	h->refs = PyMem_Calloc((size_t)n * 6 + 1, sizeof *h->refs);
	if (!h->ev || !h->views || !h->refs) {
		PyErr_NoMemory();
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *e = PyTuple_GET_ITEM(events, i);
		if (PyTuple_Check(e) && (PyTuple_GET_SIZE(e) < 5 || PyTuple_GET_SIZE(e) > 6)) {
			PyErr_Format(PyExc_TypeError,
				     "events[%zd]: a tuple must be (id, stream, kind, "
				     "ts_ms, data[, gap])",
				     i);
			return -1;
		}
		shmb_image_event *ev = &h->ev[i];
		long long id, stream, kind, ts;
		char what[64];
		PyObject *f;
		snprintf(what, sizeof what, "events[%zd].id", i);
		if (!(f = event_field(e, 0, "id", 0, h, i)) ||
		    shmbpy_int_arg(f, 1, IMG_INT_MAX, &id, what))
			return -1;
		snprintf(what, sizeof what, "events[%zd].stream", i);
		if (!(f = event_field(e, 1, "stream", 0, h, i)) ||
		    shmbpy_int_arg(f, 0, UINT32_MAX, &stream, what))
			return -1;
		snprintf(what, sizeof what, "events[%zd].kind", i);
		if (!(f = event_field(e, 2, "kind", 0, h, i)) ||
		    shmbpy_int_arg(f, 0, UINT16_MAX, &kind, what))
			return -1;
		snprintf(what, sizeof what, "events[%zd].ts_ms", i);
		if (!(f = event_field(e, 3, "ts_ms", 0, h, i)) ||
		    shmbpy_int_arg(f, 0, IMG_INT_MAX, &ts, what))
			return -1;
		PyObject *gap = event_field(e, 5, "gap", 1, h, i);
		if (!gap && PyErr_Occurred())
			return -1;
		int is_gap = gap ? PyObject_IsTrue(gap) : 0;
		if (is_gap < 0)
			return -1;
		ev->id = (uint64_t)id;
		ev->stream = (uint32_t)stream;
		ev->kind = (uint16_t)kind;
		ev->ts_ms = ts;
		ev->flags = is_gap ? SHMB_EV_GAP : 0;
		if (!(f = event_field(e, 4, "data", 0, h, i)))
			return -1;
		if (is_gap && f == Py_None)
			continue;
		snprintf(what, sizeof what, "events[%zd].data", i);
		if (shmbpy_data_get(f, &h->views[h->n_views], what) < 0)
			return -1;
		ev->data = h->views[h->n_views].p;
		ev->len = (size_t)h->views[h->n_views].len;
		h->n_views++;
	}
	img->events = h->ev;
	img->n_events = (size_t)n;
	return 0;
}

/* attrs: a mapping str -> bytes (or str, or a buffer); its items() list is kept in h. */
static int restore_attrs(PyObject *attrs, restore_hold *h, shmb_session_image *img,
			 size_t n_views_cap)
{
	if (attrs == Py_None)
		return 0;
	if (!PyMapping_Check(attrs) || PyUnicode_Check(attrs) || PyBytes_Check(attrs)) {
		PyErr_Format(PyExc_TypeError, "attrs must be a mapping of str -> bytes, not %.80s",
			     Py_TYPE(attrs)->tp_name);
		return -1;
	}
	PyObject *items = PyMapping_Items(attrs);
	if (!items) {
		if (PyErr_ExceptionMatches(PyExc_AttributeError)) { /* a sequence, not a mapping */
			PyErr_Clear();
			PyErr_Format(PyExc_TypeError,
				     "attrs must be a mapping of str -> bytes, not %.80s",
				     Py_TYPE(attrs)->tp_name);
		}
		return -1;
	}
	h->refs[h->n_refs++] = items;
	Py_ssize_t n = PyList_GET_SIZE(items);
	if (n == 0)
		return 0;
	h->at = PyMem_Calloc((size_t)n, sizeof *h->at);
	shmbpy_data *v = PyMem_Realloc(h->views, (n_views_cap + (size_t)n) * sizeof *v);
	if (!h->at || !v) {
		PyErr_NoMemory();
		return -1;
	}
	h->views = v;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *kv = PyList_GET_ITEM(items, i);
		if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
			PyErr_SetString(PyExc_TypeError,
					"attrs.items() must give (key, value) pairs");
			return -1;
		}
		PyObject *k = PyTuple_GET_ITEM(kv, 0);
		if (!PyUnicode_Check(k)) {
			PyErr_Format(PyExc_TypeError, "attrs keys must be str, not %.80s",
				     Py_TYPE(k)->tp_name);
			return -1;
		}
		if (shmbpy_opt_text(k, &h->at[i].key, "attrs key") < 0 ||
		    shmbpy_data_get(PyTuple_GET_ITEM(kv, 1), &h->views[h->n_views], "attrs value") <
			    0)
			return -1;
		h->at[i].val = h->views[h->n_views].p;
		h->at[i].len = (size_t)h->views[h->n_views].len;
		h->n_views++;
	}
	img->attrs = h->at;
	img->n_attrs = (size_t)n;
	return 0;
}

static PyObject *client_restore(shmbpy_client *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "sid",
				  "tenant",
				  "principal",
				  "created_at_ms",
				  "last_accessed_at_ms",
				  "inactivity_ttl_ms",
				  "absolute_ttl_ms",
				  "last_event_id",
				  "events",
				  "attrs",
				  NULL };
	PyObject *sid, *tenant, *principal = Py_None, *created = NULL, *accessed = NULL;
	PyObject *ittl = NULL, *attl = NULL, *last = NULL, *events = NULL, *attrs = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$OOOOOOO:restore", kwlist, &sid, &tenant,
					 &principal, &created, &accessed, &ittl, &attl, &last,
					 &events, &attrs))
		return NULL;
	if (!created || !accessed || !last)
		return PyErr_Format(PyExc_TypeError,
				    "restore() needs the keyword arguments "
				    "created_at_ms, last_accessed_at_ms and last_event_id");
	shmb_session_image img = { 0 };
	long long v[5] = { 0 };
	if (shmbpy_opt_text(sid, &img.sid, "sid") < 0 ||
	    shmbpy_opt_text(tenant, &img.tenant, "tenant") < 0 ||
	    shmbpy_opt_text(principal, &img.principal, "principal") < 0)
		return NULL;
	if (!img.sid || !img.tenant)
		return PyErr_Format(PyExc_TypeError, "sid and tenant must be str, not None");
	if (shmbpy_int_arg(created, 1, IMG_INT_MAX, &v[0], "created_at_ms") < 0 ||
	    shmbpy_int_arg(accessed, 0, IMG_INT_MAX, &v[1], "last_accessed_at_ms") < 0 ||
	    (ittl && shmbpy_int_arg(ittl, 0, IMG_INT_MAX, &v[2], "inactivity_ttl_ms") < 0) ||
	    (attl && shmbpy_int_arg(attl, 0, IMG_INT_MAX, &v[3], "absolute_ttl_ms") < 0) ||
	    shmbpy_int_arg(last, 0, IMG_INT_MAX, &v[4], "last_event_id") < 0)
		return NULL;
	img.created_at_ms = v[0];
	img.last_accessed_at_ms = v[1];
	img.inactivity_ttl_ms = (uint64_t)v[2];
	img.absolute_ttl_ms = (uint64_t)v[3];
	img.last_event_id = (uint64_t)v[4];
	/* A tuple of our own: a list another thread changes while the GIL is released cannot
	 * free an event under the call. */
	PyObject *evs = events ? PySequence_Tuple(events) : PyTuple_New(0);
	if (!evs) {
		if (PyErr_ExceptionMatches(PyExc_TypeError)) {
			PyErr_Clear();
			PyErr_Format(PyExc_TypeError, "events must be a sequence, not %.80s",
				     Py_TYPE(events)->tp_name);
		}
		return NULL;
	}
	restore_hold h = { 0 };
	int bad = restore_events(evs, &h, &img) < 0;
	if (!bad && !h.refs && !(h.refs = PyMem_Calloc(1, sizeof *h.refs))) {
		PyErr_NoMemory();
		bad = 1;
	}
	bad = bad || restore_attrs(attrs, &h, &img, h.n_views) < 0;
	shmb_client *c = bad ? NULL : usable(self);
	int rc = 0;
	if (c)
		CLIENT_CALL(self, rc, shmb_session_restore(c, &img));
	restore_release(&h);
	Py_DECREF(evs);
	if (!c)
		return NULL;
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "restore", 0);
	return PyLong_FromLong(rc);
}

PyObject *shmbpy_client_dispatch(shmbpy_client *self, PyObject *unused);
PyObject *shmbpy_client_fail_future(PyObject *self, PyObject *args);

static PyMethodDef client_methods[] = {
	{ "create", (PyCFunction)(void (*)(void))client_create, METH_VARARGS | METH_KEYWORDS,
	  "create(tenant, principal=None, *, inactivity_ttl_ms=None, absolute_ttl_ms=None) -> str\n"
	  "Create a session through the broker (GIL released); returns its id (32 hex characters).\n"
	  "TTLs of None take the broker's defaults. Raises Full, BrokerUnavailable, "
	  "InvalidArgument." },
	{ "open", (PyCFunction)(void (*)(void))client_open, METH_VARARGS | METH_KEYWORDS,
	  "open(sid, tenant, principal=None) -> Session\n"
	  "Look a session up (lock-free) and check its tenant and principal. Raises NotFound, "
	  "PermissionDenied (wrong tenant or principal), InvalidArgument (malformed sid)." },
	{ "delete", (PyCFunction)(void (*)(void))client_delete, METH_VARARGS | METH_KEYWORDS,
	  "delete(sid, tenant, principal=None)\n"
	  "Delete a session through the broker (GIL released) after the same check as open; its "
	  "followers end." },
	{ "restore", (PyCFunction)(void (*)(void))client_restore, METH_VARARGS | METH_KEYWORDS,
	  "restore(sid, tenant, principal=None, *, created_at_ms, last_accessed_at_ms,\n"
	  "        inactivity_ttl_ms=0, absolute_ttl_ms=0, last_event_id, events=(), attrs=None) "
	  "-> int\n"
	  "Bring a session another node had into this broker with the same id (GIL released; "
	  "docs/multi-host.md). events: shmb.Event objects or tuples (id, stream, kind, ts_ms, "
	  "data[, gap]), ids ascending; attrs: a mapping str -> bytes. Returns the number of "
	  "events left out (older than the ring's window). Raises Conflict when a session with "
	  "this id exists (open it then), InvalidArgument, TooBig, Full, BrokerUnavailable." },
	{ "fileno", (PyCFunction)client_fileno, METH_NOARGS,
	  "fileno() -> int: the fd that becomes readable when a subscribed session has news "
	  "(for a selector or event loop; do not read or close it, call wait(0))." },
	{ "wait", (PyCFunction)(void (*)(void))client_wait, METH_VARARGS | METH_KEYWORDS,
	  "wait(timeout=None) -> bool\n"
	  "Wait up to timeout seconds (None: forever) for news on a subscribed session and clear "
	  "fileno(); True if there is news. GIL released. One thread per client; not while a "
	  "Cursor.follow() of this client runs on an asyncio loop." },
	{ "close", (PyCFunction)client_close, METH_NOARGS,
	  "close(): close every Session and Cursor of this client and detach. Threads waiting on "
	  "its cursors get shmb.Closed within a quarter second; close() waits for them. Idempotent." },
	{ "__enter__", (PyCFunction)client_enter, METH_NOARGS, NULL },
	{ "__exit__", (PyCFunction)client_exit, METH_VARARGS, NULL },
	{ "_dispatch", (PyCFunction)shmbpy_client_dispatch, METH_NOARGS,
	  "Internal: the asyncio reader callback of follow()." },
	{ "_fail_future", (PyCFunction)shmbpy_client_fail_future, METH_VARARGS,
	  "Internal: a follower's future failed on its loop's thread (close from another)." },
	{ NULL },
};

static PyGetSetDef client_getset[] = {
	{ "closed", (getter)client_get_closed, NULL, "True once close() was called.", NULL },
	{ "name", (getter)client_get_name, NULL, "The broker instance name.", NULL },
	{ "node_id", (getter)client_get_node_id, NULL,
	  "The broker's node_id (1..65535; 0: none), from the segment (no broker call).", NULL },
	{ NULL },
};

static PyMemberDef client_members[] = {
	{ "__weaklistoffset__", T_PYSSIZET, offsetof(shmbpy_client, weakreflist), READONLY, NULL },
	{ NULL },
};

static PyType_Slot client_slots[] = {
	{ Py_tp_doc,
	  "Client(name=None)\n"
	  "Attach to the broker instance `name` (None: $SHMB_NAME, else 'default'). Belongs to the "
	  "process that made it: in a prefork server make it in each worker after fork() (gunicorn "
	  "post_fork, uWSGI postfork); used in a child it raises ForkError. A context manager; "
	  "close() frees it." },
	{ Py_tp_new, client_new },
	{ Py_tp_dealloc, client_dealloc },
	{ Py_tp_traverse, client_traverse },
	{ Py_tp_clear, client_clear },
	{ Py_tp_repr, client_repr },
	{ Py_tp_methods, client_methods },
	{ Py_tp_getset, client_getset },
	{ Py_tp_members, client_members },
	{ 0, NULL },
};

PyType_Spec shmbpy_client_spec = {
	.name = "shmb.Client",
	.basicsize = sizeof(shmbpy_client),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
	.slots = client_slots,
};
