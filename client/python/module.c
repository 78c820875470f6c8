/* module.c - the module `shmb` itself: multi-phase init (PEP 489) with its state (PEP 630), the
 * exception tree built from shmb.h's error table, the Event type, the shared argument helpers,
 * and shmb._noop (the benchmark's baseline: a C call through this module that does nothing).
 *
 * Exceptions: one class per libshmb code, all under shmb.Error, with .code (the negative
 * SHMB_E* value), .name ("SHMB_ENOENT") and the library's message (shmb_strerror). A code this
 * module does not know raises shmb.Error itself. NotFound is also a KeyError (attrs["x"] of an
 * unset key, the mapping's natural error) and InvalidArgument, TooBig and Closed are also
 * ValueErrors; Overrun carries .lost, the events the cursor skipped. */
#include "shmbpy.h"

#include <limits.h>
#include <structmember.h>
#include <time.h>

/* ---------------------------------------------------------------- exceptions */

struct exc_def {
	int code; /* 0: not a library code (shmb.Closed) */
	const char *name, *base, *doc;
	int value_error, key_error;
};

/* base: the parent class inside the module ("Error", "Full", "InvalidArgument"). */
static const struct exc_def exc_defs[] = {
	{ SHMB_EINVAL, "InvalidArgument", "Error", "An argument libshmb refused (SHMB_EINVAL).", 1,
	  0 },
	{ SHMB_ENOENT, "NotFound", "Error",
	  "No such session (unknown, expired or deleted), or no such attribute (SHMB_ENOENT).", 0,
	  1 },
	{ SHMB_EPERM, "PermissionDenied", "Error",
	  "The tenant or principal does not match the session's (SHMB_EPERM).", 0, 0 },
	{ SHMB_EFULL, "Full", "Error",
	  "No free session record (SHMB_EFULL); the parent of the other out-of-slots errors.", 0,
	  0 },
	{ SHMB_ETOOBIG, "TooBig", "Error",
	  "The data is larger than the broker allows (SHMB_ETOOBIG).", 1, 0 },
	{ SHMB_EOVERRUN, "Overrun", "Error",
	  "The cursor fell behind the ring: .lost events were evicted (SHMB_EOVERRUN). Raised once; "
	  "the cursor continues at the oldest event kept.",
	  0, 0 },
	{ SHMB_EBROKER, "BrokerUnavailable", "Error",
	  "No broker answers (SHMB_EBROKER): create, delete and attach need it.", 0, 0 },
	{ SHMB_EVERSION, "VersionMismatch", "Error",
	  "The segment has another layout version (SHMB_EVERSION).", 0, 0 },
	{ SHMB_ENOMEM, "OutOfMemory", "Error", "Out of memory in libshmb (SHMB_ENOMEM).", 0, 0 },
	{ SHMB_EIO, "SystemCallFailed", "Error", "A system call failed (SHMB_EIO).", 0, 0 },
	{ SHMB_ECORRUPT, "Corrupt", "Error",
	  "The shared-memory segment is damaged (SHMB_ECORRUPT).", 0, 0 },
	{ SHMB_EACCES, "AccessDenied", "Error",
	  "The broker did not admit this process, or it refused the broker (SHMB_EACCES).", 0, 0 },
	{ SHMB_ENOTSUP, "NotSupported", "Error", "Not supported (SHMB_ENOTSUP).", 0, 0 },
	{ SHMB_ESTALE, "Stale", "Error",
	  "The segment was replaced (SHMB_ESTALE): close this Client and make a new one.", 0, 0 },
	{ SHMB_ECONFLICT, "Conflict", "Error",
	  "attrs.set_if: the attribute's version was not the one given; Client.restore: a session "
	  "with this id exists, open it (SHMB_ECONFLICT).",
	  0, 0 },
	{ SHMB_ENOWORKER, "NoWorkerSlot", "Full",
	  "No free worker slot: max_workers processes are attached (SHMB_ENOWORKER).", 0, 0 },
	{ SHMB_ENOREADER, "NoReaderSlot", "Full",
	  "No reader slot left for this thread: readers_per_worker threads of this process use the "
	  "library (SHMB_ENOREADER).",
	  0, 0 },
	{ SHMB_EQUOTA, "QuotaExceeded", "Full",
	  "The session's attribute space or keys are used up (SHMB_EQUOTA).", 0, 0 },
	{ SHMB_EFORK, "ForkError", "Error",
	  "This Client was made before fork(): make a new one in this process, e.g. in gunicorn's "
	  "post_fork (SHMB_EFORK).",
	  0, 0 },
	{ 0, "Closed", "InvalidArgument",
	  "The Client, Session or Cursor was closed (or its Client or Session was).", 1, 0 },
};

shmbpy_state *shmbpy_state_of(PyObject *self)
{
	PyObject *m = PyType_GetModuleByDef(Py_TYPE(self), &shmbpy_module);
	return m ? PyModule_GetState(m) : NULL;
}

static PyObject *raise_with(PyObject *cls, int code, const char *msg, uint64_t lost, int has_lost)
{
	PyObject *exc = PyObject_CallFunction(cls, "s", msg);
	if (!exc)
		return NULL;
	PyObject *v = PyLong_FromLong(code);
	int bad = !v || PyObject_SetAttrString(exc, "code", v) < 0;
	Py_XDECREF(v);
	if (!bad) {
		v = PyUnicode_FromString(code ? shmb_err_name(code) : "SHMB_EINVAL");
		bad = !v || PyObject_SetAttrString(exc, "name", v) < 0;
		Py_XDECREF(v);
	}
	if (!bad && has_lost) {
		v = PyLong_FromUnsignedLongLong(lost);
		bad = !v || PyObject_SetAttrString(exc, "lost", v) < 0;
		Py_XDECREF(v);
	}
	if (!bad)
		PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

PyObject *shmbpy_raise(shmbpy_state *st, int code, const char *what, uint64_t lost)
{
	char msg[256];
	if (code == SHMB_EOVERRUN)
		snprintf(msg, sizeof msg, "%s: %s: %llu events lost", what, shmb_strerror(code),
			 (unsigned long long)lost);
	else
		snprintf(msg, sizeof msg, "%s: %s", what, shmb_strerror(code));
	PyObject *cls = st->error;
	if (code < 0 && -code <= SHMBPY_MAX_CODE && st->by_code[-code])
		cls = st->by_code[-code];
	return raise_with(cls, code, msg, lost, code == SHMB_EOVERRUN);
}

PyObject *shmbpy_closed(shmbpy_state *st, const char *what)
{
	char msg[160];
	snprintf(msg, sizeof msg, "%s is closed", what);
	return raise_with(st->closed, SHMB_EINVAL, msg, 0, 0);
}

/* Makes the class of d, with `code` and `name` class attributes too (introspection). */
static PyObject *make_exc(PyObject *mod, shmbpy_state *st, const struct exc_def *d)
{
	PyObject *base = PyObject_GetAttrString(mod, d->base);
	if (!base)
		return NULL;
	PyObject *bases = d->key_error     ? PyTuple_Pack(2, base, PyExc_KeyError)
			  : d->value_error ? PyTuple_Pack(2, base, PyExc_ValueError)
					   : PyTuple_Pack(1, base);
	Py_DECREF(base);
	if (!bases)
		return NULL;
	/* A base that is already a ValueError needs no second one (InvalidArgument -> Closed). */
	if (PyTuple_GET_SIZE(bases) == 2 &&
	    PyObject_IsSubclass(PyTuple_GET_ITEM(bases, 0), PyTuple_GET_ITEM(bases, 1)) == 1) {
		PyObject *one = PyTuple_Pack(1, PyTuple_GET_ITEM(bases, 0));
		Py_DECREF(bases);
		if (!(bases = one))
			return NULL;
	}
	char qual[64];
	snprintf(qual, sizeof qual, "shmb.%s", d->name);
	PyObject *cls = PyErr_NewExceptionWithDoc(qual, d->doc, bases, NULL);
	Py_DECREF(bases);
	if (!cls)
		return NULL;
	/* KeyError's str() is the repr of its argument; ours is a sentence. */
	if (d->key_error) {
		PyObject *s = PyObject_GetAttrString(PyExc_Exception, "__str__");
		int bad = !s || PyObject_SetAttrString(cls, "__str__", s) < 0;
		Py_XDECREF(s);
		if (bad)
			goto fail;
	}
	if (PyModule_AddObjectRef(mod, d->name, cls) < 0)
		goto fail;
	if (d->code)
		st->by_code[-d->code] = Py_NewRef(cls);
	else
		st->closed = Py_NewRef(cls);
	return cls;
fail:
	Py_DECREF(cls);
	return NULL;
}

static int add_exceptions(PyObject *mod, shmbpy_state *st)
{
	st->error = PyErr_NewExceptionWithDoc(
		"shmb.Error",
		"Base of every shmb exception: .code is the libshmb code (negative SHMB_E* value), "
		".name its name, str() the library's message.",
		NULL, NULL);
	if (!st->error || PyModule_AddObjectRef(mod, "Error", st->error) < 0)
		return -1;
	if (PyObject_SetAttrString(st->error, "code", Py_None) < 0 ||
	    PyObject_SetAttrString(st->error, "name", Py_None) < 0)
		return -1;
	for (size_t i = 0; i < sizeof exc_defs / sizeof exc_defs[0]; i++) {
		PyObject *cls = make_exc(mod, st, &exc_defs[i]);
		if (!cls)
			return -1;
		Py_DECREF(cls);
	}
	PyObject *zero = PyLong_FromLong(0);
	int bad = !zero || PyObject_SetAttrString(st->by_code[-SHMB_EOVERRUN], "lost", zero) < 0;
	Py_XDECREF(zero);
	return bad ? -1 : 0;
}

/* ---------------------------------------------------------------- Event */

typedef struct {
	PyObject_HEAD unsigned long long id;
	unsigned int stream;
	unsigned short kind;
	char gap;
	long long ts_ms;
	PyObject *data;
} event_object;

PyObject *shmbpy_event_new(PyTypeObject *t, const shmb_event *ev)
{
	event_object *e = PyObject_New(event_object, t);
	if (!e)
		return NULL;
	e->id = ev->id;
	e->stream = ev->stream;
	e->kind = ev->kind;
	e->gap = (ev->flags & SHMB_EV_GAP) != 0;
	e->ts_ms = ev->ts_ms;
	e->data = PyBytes_FromStringAndSize(ev->data && !e->gap ? ev->data : "",
					    e->gap ? 0 : (Py_ssize_t)ev->len);
	if (!e->data) {
		Py_DECREF(e);
		return NULL;
	}
	return (PyObject *)e;
}

static void event_dealloc(event_object *e)
{
	PyTypeObject *t = Py_TYPE(e);
	Py_XDECREF(e->data);
	PyObject_Free(e);
	Py_DECREF(t);
}

static PyObject *event_repr(event_object *e)
{
	return PyUnicode_FromFormat("<shmb.Event id=%llu stream=%u kind=%u%s len=%zd>", e->id,
				    e->stream, (unsigned)e->kind, e->gap ? " gap" : "",
				    PyBytes_GET_SIZE(e->data));
}

static PyObject *event_get_gap(event_object *e, void *unused)
{
	(void)unused;
	return PyBool_FromLong(e->gap);
}

static PyMemberDef event_members[] = {
	{ "id", T_ULONGLONG, offsetof(event_object, id), READONLY,
	  "Event id: per session, from 1, unique across its streams (an SSE id)." },
	{ "stream", T_UINT, offsetof(event_object, stream), READONLY, "Stream number." },
	{ "kind", T_USHORT, offsetof(event_object, kind), READONLY, "Application-defined kind." },
	{ "ts_ms", T_LONGLONG, offsetof(event_object, ts_ms), READONLY,
	  "Wall clock at publish, ms since the epoch." },
	{ "data", T_OBJECT_EX, offsetof(event_object, data), READONLY,
	  "The payload (bytes; b'' for a gap)." },
	{ NULL },
};

static PyGetSetDef event_getset[] = {
	{ "gap", (getter)event_get_gap, NULL,
	  "True for a gap: its publisher died before committing; no payload, skip it.", NULL },
	{ NULL },
};

static PyType_Slot event_slots[] = {
	{ Py_tp_doc, "One event read by a Cursor: id, stream, kind, gap, ts_ms, data." },
	{ Py_tp_dealloc, event_dealloc },
	{ Py_tp_repr, event_repr },
	{ Py_tp_members, event_members },
	{ Py_tp_getset, event_getset },
	{ 0, NULL },
};

PyType_Spec shmbpy_event_spec = {
	.name = "shmb.Event",
	.basicsize = sizeof(event_object),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
	.slots = event_slots,
};

/* ---------------------------------------------------------------- helpers */

int shmbpy_data_get(PyObject *o, shmbpy_data *d, const char *what)
{
	d->has_view = 0;
	if (PyBytes_CheckExact(o)) {
		d->p = PyBytes_AS_STRING(o);
		d->len = PyBytes_GET_SIZE(o);
		return 0;
	}
	if (PyUnicode_Check(o)) {
		d->p = PyUnicode_AsUTF8AndSize(o, &d->len);
		return d->p ? 0 : -1;
	}
	if (PyObject_CheckBuffer(o)) {
		if (PyObject_GetBuffer(o, &d->view, PyBUF_SIMPLE) < 0)
			return -1;
		d->has_view = 1;
		d->p = d->view.buf;
		d->len = d->view.len;
		return 0;
	}
	PyErr_Format(PyExc_TypeError, "%s must be bytes or str, not %.80s", what,
		     Py_TYPE(o)->tp_name);
	return -1;
}

void shmbpy_data_release(shmbpy_data *d)
{
	if (d->has_view)
		PyBuffer_Release(&d->view);
	d->has_view = 0;
}

int shmbpy_int_arg(PyObject *o, long long lo, long long hi, long long *out, const char *what)
{
	if (!PyLong_Check(o)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int, not %.80s", what,
			     Py_TYPE(o)->tp_name);
		return -1;
	}
	int overflow;
	long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	if (overflow || v < lo || v > hi) {
		PyErr_Format(PyExc_ValueError, "%s must be in %lld..%lld", what, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

int shmbpy_opt_text(PyObject *o, const char **out, const char *what)
{
	*out = NULL;
	if (!o || o == Py_None)
		return 0;
	if (!PyUnicode_Check(o)) {
		PyErr_Format(PyExc_TypeError, "%s must be str or None, not %.80s", what,
			     Py_TYPE(o)->tp_name);
		return -1;
	}
	Py_ssize_t n;
	const char *s = PyUnicode_AsUTF8AndSize(o, &n);
	if (!s)
		return -1;
	if ((Py_ssize_t)strlen(s) != n) {
		PyErr_Format(PyExc_ValueError, "%s must not contain NUL characters", what);
		return -1;
	}
	*out = s;
	return 0;
}

int64_t shmbpy_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t shmbpy_deadline(PyObject *timeout, int *ok)
{
	*ok = 1;
	if (!timeout || timeout == Py_None)
		return -1;
	double t = PyFloat_AsDouble(timeout);
	if (t == -1.0 && PyErr_Occurred()) {
		*ok = 0;
		return -1;
	}
	if (!(t >= 0)) { /* negative or NaN */
		PyErr_SetString(PyExc_ValueError,
				"timeout must be None or a number >= 0 (seconds)");
		*ok = 0;
		return -1;
	}
	if (t > 1e12) /* ~31,000 years: forever */
		return -1;
	return shmbpy_now_ms() + (int64_t)(t * 1000.0 + 0.999);
}

void shmbpy_inflight_enter(shmbpy_client *cl)
{
	pthread_mutex_lock(&cl->mu);
	cl->inflight++;
	pthread_mutex_unlock(&cl->mu);
}

void shmbpy_inflight_leave(shmbpy_client *cl)
{
	pthread_mutex_lock(&cl->mu);
	if (--cl->inflight == 0)
		pthread_cond_broadcast(&cl->drained);
	pthread_mutex_unlock(&cl->mu);
}

/* ---------------------------------------------------------------- module */

static PyObject *mod_noop(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
	(void)m;
	(void)args;
	(void)nargs;
	Py_RETURN_NONE;
}

/* shmb._bench_c(session_or_cursor, data, n) -> ns per call of libshmb alone: n calls of
 * shmb_publish (a Session) or shmb_cursor_next (a Cursor; n events must be there) in a C loop. The
 * benchmark's floor (tools/bench_python.py): Python's figure minus this is the binding's cost. */
static PyObject *mod_bench_c(PyObject *m, PyObject *args)
{
	PyObject *obj, *data;
	Py_ssize_t n;
	if (!PyArg_ParseTuple(args, "OOn:_bench_c", &obj, &data, &n))
		return NULL;
	shmbpy_state *st = PyModule_GetState(m);
	shmbpy_data d;
	if (n <= 0 || shmbpy_data_get(data, &d, "data") < 0)
		return n <= 0 ? PyErr_Format(PyExc_ValueError, "n must be > 0") : NULL;
	int is_session = PyObject_TypeCheck(obj, st->session_type);
	if (!is_session && !PyObject_TypeCheck(obj, st->cursor_type)) {
		shmbpy_data_release(&d);
		return PyErr_Format(PyExc_TypeError, "_bench_c needs a Session or a Cursor");
	}
	shmb_session *s = is_session ? ((shmbpy_session *)obj)->s : NULL;
	shmb_cursor *cur = is_session ? NULL : ((shmbpy_cursor *)obj)->cur;
	if (!s && !cur) {
		shmbpy_data_release(&d);
		return shmbpy_closed(st, is_session ? "Session" : "Cursor");
	}
	char buf[4096];
	shmb_event ev;
	struct timespec a, b;
	int64_t rc = 0;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (Py_ssize_t i = 0; i < n && rc >= 0; i++)
		rc = s ? shmb_publish(s, 0, 1, d.p, (size_t)d.len)
		       : shmb_cursor_next(cur, &ev, buf, sizeof buf);
	clock_gettime(CLOCK_MONOTONIC, &b);
	shmbpy_data_release(&d);
	if (rc < 0)
		return shmbpy_raise(st, (int)rc, "_bench_c", 0);
	double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
	return PyFloat_FromDouble(ns / (double)n);
}

static PyObject *mod_strerror(PyObject *m, PyObject *arg)
{
	(void)m;
	long code = PyLong_AsLong(arg);
	if (code == -1 && PyErr_Occurred())
		return NULL;
	return PyUnicode_FromString(
		shmb_strerror(code < INT_MIN || code > INT_MAX ? INT_MIN : (int)code));
}

/* shmb.sid_node(sid) -> int: the node tag of a session id (shmb_sid_node; no broker). */
static PyObject *mod_sid_node(PyObject *m, PyObject *arg)
{
	const char *sid;
	if (arg == Py_None)
		return PyErr_Format(PyExc_TypeError, "sid must be str, not None");
	if (shmbpy_opt_text(arg, &sid, "sid") < 0)
		return NULL;
	int rc = shmb_sid_node(sid);
	if (rc < 0)
		return shmbpy_raise(PyModule_GetState(m), rc, "sid_node", 0);
	return PyLong_FromLong(rc);
}

static PyMethodDef mod_methods[] = {
	{ "_noop", (PyCFunction)(void (*)(void))mod_noop, METH_FASTCALL,
	  "Does nothing: the cost of a call into this module (the benchmark's baseline)." },
	{ "_bench_c", mod_bench_c, METH_VARARGS,
	  "_bench_c(session_or_cursor, data, n) -> float: ns per shmb_publish / shmb_cursor_next "
	  "in a C loop (the benchmark's floor)." },
	{ "sid_node", mod_sid_node, METH_O,
	  "sid_node(sid) -> int: the node tag of a session id, its first 4 hex characters "
	  "(0..65535; meaningful where every broker has a node_id). Raises InvalidArgument (a "
	  "ValueError) for a string that is not a session id." },
	{ "strerror", mod_strerror, METH_O,
	  "strerror(code) -> str: libshmb's text for an error code." },
	{ NULL },
};

static int add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, PyTypeObject **out)
{
	PyObject *t = PyType_FromModuleAndSpec(mod, spec, base);
	if (!t)
		return -1;
	*out = (PyTypeObject *)t;
	const char *dot = strrchr(spec->name, '.');
	return PyModule_AddObjectRef(mod, dot ? dot + 1 : spec->name, t);
}

/* Attrs = type("Attrs", (_AttrsBase, MutableMapping), {}): the mapping's mixin methods (get, keys,
 * items, pop, update, ...) over the C base's __getitem__, __setitem__, __delitem__, __iter__ and
 * __len__. */
static int add_attrs(PyObject *mod, shmbpy_state *st)
{
	PyObject *abc = PyImport_ImportModule("collections.abc");
	if (!abc)
		return -1;
	PyObject *mm = PyObject_GetAttrString(abc, "MutableMapping");
	Py_DECREF(abc);
	if (!mm)
		return -1;
	PyObject *meta = PyObject_Type(mm);
	PyObject *ns = Py_BuildValue(
		"{s:s,s:s,s:()}", "__module__", "shmb", "__doc__",
		"session.attrs: the session's attributes as a mutable mapping of str -> bytes "
		"(values may be given as str, stored as UTF-8). attrs[k] of an unset key raises "
		"shmb.NotFound (a KeyError); set_if(k, v, version) is a compare-and-set and "
		"get_with_version(k) returns (value, version).",
		"__slots__");
	PyObject *bases = PyTuple_Pack(2, (PyObject *)st->attrs_base_type, mm);
	PyObject *t =
		meta && ns && bases ? PyObject_CallFunction(meta, "sOO", "Attrs", bases, ns) : NULL;
	Py_XDECREF(meta);
	Py_XDECREF(ns);
	Py_XDECREF(bases);
	Py_DECREF(mm);
	if (!t)
		return -1;
	st->attrs_type = t;
	return PyModule_AddObjectRef(mod, "Attrs", t);
}

static int mod_exec(PyObject *mod)
{
	shmbpy_state *st = PyModule_GetState(mod);
	if (add_type(mod, &shmbpy_event_spec, NULL, &st->event_type) < 0 ||
	    add_type(mod, &shmbpy_client_spec, NULL, &st->client_type) < 0 ||
	    add_type(mod, &shmbpy_session_spec, NULL, &st->session_type) < 0 ||
	    add_type(mod, &shmbpy_cursor_spec, NULL, &st->cursor_type) < 0 ||
	    add_type(mod, &shmbpy_follow_spec, NULL, &st->follow_type) < 0 ||
	    add_type(mod, &shmbpy_ready_spec, NULL, &st->ready_type) < 0 ||
	    add_type(mod, &shmbpy_attrs_spec, NULL, &st->attrs_base_type) < 0)
		return -1;
	st->info_type = PyStructSequence_NewType(&shmbpy_info_desc);
	if (!st->info_type ||
	    PyModule_AddObjectRef(mod, "SessionInfo", (PyObject *)st->info_type) < 0)
		return -1;
	if (add_attrs(mod, st) < 0 || add_exceptions(mod, st) < 0)
		return -1;
	if (PyModule_AddStringConstant(mod, "__version__", shmb_version()) < 0 ||
	    PyModule_AddIntConstant(mod, "SID_LEN", SHMB_SID_LEN) < 0 ||
	    PyModule_AddIntConstant(mod, "ATTR_MAX", SHMB_ATTR_MAX) < 0 ||
	    PyModule_AddIntConstant(mod, "ATTR_KEY_MAX", SHMB_ATTR_KEY_MAX) < 0 ||
	    PyModule_AddIntConstant(mod, "NODE_ID_MAX", SHMB_NODE_ID_MAX) < 0)
		return -1;
	return 0;
}

static int mod_traverse(PyObject *mod, visitproc visit, void *arg)
{
	shmbpy_state *st = PyModule_GetState(mod);
	Py_VISIT(st->client_type);
	Py_VISIT(st->session_type);
	Py_VISIT(st->cursor_type);
	Py_VISIT(st->event_type);
	Py_VISIT(st->follow_type);
	Py_VISIT(st->ready_type);
	Py_VISIT(st->attrs_base_type);
	Py_VISIT(st->info_type);
	Py_VISIT(st->attrs_type);
	Py_VISIT(st->error);
	Py_VISIT(st->closed);
	for (int i = 0; i <= SHMBPY_MAX_CODE; i++)
		Py_VISIT(st->by_code[i]);
	Py_VISIT(st->get_running_loop);
	return 0;
}

static int mod_clear(PyObject *mod)
{
	shmbpy_state *st = PyModule_GetState(mod);
	Py_CLEAR(st->client_type);
	Py_CLEAR(st->session_type);
	Py_CLEAR(st->cursor_type);
	Py_CLEAR(st->event_type);
	Py_CLEAR(st->follow_type);
	Py_CLEAR(st->ready_type);
	Py_CLEAR(st->attrs_base_type);
	Py_CLEAR(st->info_type);
	Py_CLEAR(st->attrs_type);
	Py_CLEAR(st->error);
	Py_CLEAR(st->closed);
	for (int i = 0; i <= SHMBPY_MAX_CODE; i++)
		Py_CLEAR(st->by_code[i]);
	Py_CLEAR(st->get_running_loop);
	return 0;
}

static void mod_free(void *mod)
{
	mod_clear(mod);
}

static PyModuleDef_Slot mod_slots[] = {
	{ Py_mod_exec, mod_exec },
	{ 0, NULL },
};

PyModuleDef shmbpy_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "shmb",
	.m_doc = "shmbroker client: sessions and event streams shared by the worker processes of a "
		 "prefork server (gunicorn, uWSGI, uvicorn), over libshmb. Make a Client in each "
		 "worker after fork(); see client/python/README.md.",
	.m_size = sizeof(shmbpy_state),
	.m_methods = mod_methods,
	.m_slots = mod_slots,
	.m_traverse = mod_traverse,
	.m_clear = mod_clear,
	.m_free = mod_free,
};

PyMODINIT_FUNC PyInit_shmb(void);
PyMODINIT_FUNC PyInit_shmb(void)
{
	return PyModuleDef_Init(&shmbpy_module);
}
