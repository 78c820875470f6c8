/* client.c - shmb.Client: one attached libshmb client (shmb_attach) of this process.
 *
 * Attach, create and delete talk to the broker and run with the GIL released; open is
 * lock-free and keeps it. Client.wait() is the process-wide wait of shmb_wait() (the fd is
 * fileno()); only one thread may use it at a time (shmb.h: two threads arming one client can
 * lose a wakeup), and not while Cursor.follow() uses the fd on an asyncio loop. close() follows
 * the rule of shmbpy.h: closing flag, wait for the GIL-released calls to leave, then close every
 * session and cursor and detach. */
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
