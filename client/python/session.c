/* session.c - shmb.Session (one shmb_session handle: publish, cursors, subscribe, stat) and the
 * C base of shmb.Attrs (session.attrs, the attributes as a mutable mapping).
 *
 * Every call here is lock-free in libshmb and keeps the GIL (shmbpy.h), so one Session is used
 * by one thread at a time as shmb.h asks. A Session holds its Client; it is on the client's list
 * so Client.close() can close it first. Closing a Session closes its cursors (a thread waiting on
 * one gets shmb.Closed at its next slice, and closes the C cursor itself). publish() is the hot
 * path: METH_FASTCALL, arguments parsed by hand. */
#include "shmbpy.h"

#include <structmember.h>

PyObject *shmbpy_session_wrap(shmbpy_client *cl, shmb_session *s, PyObject *sid, PyObject *tenant,
			      PyObject *principal);
PyObject *shmbpy_cursor_wrap(shmbpy_session *sess, shmb_cursor *cur);

PyObject *shmbpy_session_wrap(shmbpy_client *cl, shmb_session *s, PyObject *sid, PyObject *tenant,
			      PyObject *principal)
{
	shmbpy_state *st = shmbpy_state_of((PyObject *)cl);
	shmbpy_session *self = (shmbpy_session *)st->session_type->tp_alloc(st->session_type, 0);
	if (!self) {
		shmb_session_close(s);
		return NULL;
	}
	self->client = (shmbpy_client *)Py_NewRef(cl);
	self->s = s;
	self->sid = Py_NewRef(sid);
	self->tenant = Py_NewRef(tenant);
	self->principal = Py_NewRef(principal);
	self->next = cl->sessions;
	if (cl->sessions)
		cl->sessions->prev = self;
	cl->sessions = self;
	return (PyObject *)self;
}

void shmbpy_session_close_handle(shmbpy_session *self)
{
	if (!self->s)
		return;
	while (self->cursors)
		shmbpy_cursor_close_handle(self->cursors);
	shmbpy_followers_fail(self->client, self, NULL);
	shmb_session *s = self->s;
	self->s = NULL;
	shmb_session_close(s);
	if (self->prev)
		self->prev->next = self->next;
	else
		self->client->sessions = self->next;
	if (self->next)
		self->next->prev = self->prev;
	self->prev = self->next = NULL;
}

static int session_traverse(shmbpy_session *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->client);
	return 0;
}

static void session_dealloc(shmbpy_session *self)
{
	PyTypeObject *t = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	shmbpy_session_close_handle(self);
	Py_CLEAR(self->client);
	Py_CLEAR(self->sid);
	Py_CLEAR(self->tenant);
	Py_CLEAR(self->principal);
	t->tp_free(self);
	Py_DECREF(t);
}

/* The handle, or NULL with shmb.Closed. */
static shmb_session *usable(shmbpy_session *self)
{
	if (self->s && !self->client->closing)
		return self->s;
	shmbpy_closed(shmbpy_state_of((PyObject *)self), self->s ? "Client" : "Session");
	return NULL;
}

static int uint_arg(PyObject *o, unsigned long max, unsigned long *out, const char *what)
{
	long long v;
	if (shmbpy_int_arg(o, 0, (long long)max, &v, what) < 0)
		return -1;
	*out = (unsigned long)v;
	return 0;
}

static PyObject *session_publish(shmbpy_session *self, PyObject *const *args, Py_ssize_t nargs,
				 PyObject *kwnames)
{
	PyObject *a[3] = { NULL, NULL, NULL };
	static const char *const names[3] = { "data", "stream", "kind" };
	if (nargs > 3)
		return PyErr_Format(PyExc_TypeError,
				    "publish() takes at most 3 arguments (%zd given)", nargs);
	for (Py_ssize_t i = 0; i < nargs; i++)
		a[i] = args[i];
	if (kwnames) {
		for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); k++) {
			PyObject *kn = PyTuple_GET_ITEM(kwnames, k);
			int i = 0;
			while (i < 3 && PyUnicode_CompareWithASCIIString(kn, names[i]) != 0)
				i++;
			if (i == 3)
				return PyErr_Format(
					PyExc_TypeError,
					"publish() got an unexpected keyword argument %R", kn);
			if (a[i])
				return PyErr_Format(
					PyExc_TypeError,
					"publish() got multiple values for argument '%s'",
					names[i]);
			a[i] = args[nargs + k];
		}
	}
	if (!a[0])
		return PyErr_Format(PyExc_TypeError, "publish() missing required argument 'data'");
	unsigned long stream = 0, kind = 1;
	if ((a[1] && uint_arg(a[1], UINT32_MAX, &stream, "stream") < 0) ||
	    (a[2] && uint_arg(a[2], UINT16_MAX, &kind, "kind") < 0))
		return NULL;
	shmbpy_data d;
	if (shmbpy_data_get(a[0], &d, "data") < 0)
		return NULL;
	shmb_session *s = usable(self);
	if (!s) {
		shmbpy_data_release(&d);
		return NULL;
	}
	int64_t id = shmb_publish(s, (uint32_t)stream, (uint16_t)kind, d.p, (size_t)d.len);
	shmbpy_data_release(&d);
	if (id < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), (int)id, "publish", 0);
	return PyLong_FromLongLong(id);
}

static PyObject *session_cursor(shmbpy_session *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "after", "stream", NULL };
	PyObject *after = NULL, *stream = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO:cursor", kwlist, &after, &stream))
		return NULL;
	unsigned long long aft = 0;
	if (after && after != Py_None) {
		if (!PyLong_Check(after))
			return PyErr_Format(PyExc_TypeError, "after must be an int (an event id)");
		int overflow;
		long long v = PyLong_AsLongLongAndOverflow(after, &overflow);
		if (v == -1 && PyErr_Occurred())
			return NULL;
		if (overflow || v < 0)
			return PyErr_Format(PyExc_ValueError, "after must be an event id >= 0");
		aft = (unsigned long long)v;
	}
	unsigned long strm = 0;
	if (stream != Py_None && uint_arg(stream, UINT32_MAX, &strm, "stream") < 0)
		return NULL;
	shmb_session *s = usable(self);
	if (!s)
		return NULL;
	shmb_cursor *cur;
	int rc = stream == Py_None ? shmb_cursor_open(s, aft, &cur)
				   : shmb_cursor_open_stream(s, aft, (uint32_t)strm, &cur);
	if (rc < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "cursor", 0);
	return shmbpy_cursor_wrap(self, cur);
}

static PyObject *session_subscribe(shmbpy_session *self, PyObject *unused)
{
	(void)unused;
	shmb_session *s = usable(self);
	if (!s)
		return NULL;
	if (!self->subscribed) {
		int rc = shmb_subscribe(s);
		if (rc < 0)
			return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "subscribe", 0);
		self->subscribed = 1;
	}
	Py_RETURN_NONE;
}

static PyObject *session_unsubscribe(shmbpy_session *self, PyObject *unused)
{
	(void)unused;
	shmb_session *s = usable(self);
	if (!s)
		return NULL;
	if (self->subscribed) {
		int rc = shmb_unsubscribe(s);
		if (rc < 0)
			return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "unsubscribe",
					    0);
		self->subscribed = 0;
	}
	Py_RETURN_NONE;
}

static PyObject *session_stat(shmbpy_session *self, PyObject *unused)
{
	(void)unused;
	shmb_session *s = usable(self);
	if (!s)
		return NULL;
	shmb_session_info in;
	int rc = shmb_session_stat(s, &in);
	shmbpy_state *st = shmbpy_state_of((PyObject *)self);
	if (rc < 0)
		return shmbpy_raise(st, rc, "stat", 0);
	PyObject *r = PyStructSequence_New(st->info_type);
	if (!r)
		return NULL;
	PyObject *v[] = {
		PyUnicode_FromString(in.sid),
		PyUnicode_FromString(in.tenant),
		in.has_principal ? PyUnicode_FromString(in.principal) : Py_NewRef(Py_None),
		PyLong_FromLongLong(in.created_at_ms),
		PyLong_FromLongLong(in.last_accessed_at_ms),
		PyLong_FromUnsignedLongLong(in.inactivity_ttl_ms),
		PyLong_FromUnsignedLongLong(in.absolute_ttl_ms),
		PyLong_FromUnsignedLongLong(in.last_event_id),
		PyLong_FromUnsignedLongLong(in.oldest_event_id),
		PyLong_FromUnsignedLong(in.subscribers),
	};
	int bad = 0;
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		if (!v[i])
			bad = 1;
		PyStructSequence_SetItem(r, (Py_ssize_t)i, v[i] ? v[i] : Py_NewRef(Py_None));
	}
	if (bad)
		Py_CLEAR(r);
	return r;
}

static PyObject *session_close(shmbpy_session *self, PyObject *unused)
{
	(void)unused;
	shmbpy_session_close_handle(self);
	Py_RETURN_NONE;
}

static PyObject *session_enter(shmbpy_session *self, PyObject *unused)
{
	(void)unused;
	if (!usable(self))
		return NULL;
	return Py_NewRef(self);
}

static PyObject *session_exit(shmbpy_session *self, PyObject *args)
{
	(void)args;
	shmbpy_session_close_handle(self);
	Py_RETURN_FALSE;
}

static PyObject *session_get_attrs(shmbpy_session *self, void *unused)
{
	(void)unused;
	shmbpy_state *st = shmbpy_state_of((PyObject *)self);
	return PyObject_CallOneArg(st->attrs_type, (PyObject *)self);
}

static PyObject *session_get_closed(shmbpy_session *self, void *unused)
{
	(void)unused;
	return PyBool_FromLong(!self->s || self->client->closing);
}

static PyObject *session_repr(shmbpy_session *self)
{
	return PyUnicode_FromFormat("<shmb.Session %U tenant=%R%s>", self->sid, self->tenant,
				    self->s ? "" : " closed");
}

static PyMethodDef session_methods[] = {
	{ "publish", (PyCFunction)(void (*)(void))session_publish, METH_FASTCALL | METH_KEYWORDS,
	  "publish(data, stream=0, kind=1) -> int\n"
	  "Publish data (bytes, or str as UTF-8) as the session's next event; returns its id. "
	  "Lock-free. Raises TooBig (above the broker's max_event_bytes), NotFound (session gone)." },
	{ "cursor", (PyCFunction)(void (*)(void))session_cursor, METH_VARARGS | METH_KEYWORDS,
	  "cursor(after=0, stream=None) -> Cursor\n"
	  "A cursor over the events after id `after` (0: from the oldest kept; a Last-Event-ID), of "
	  "one stream or (None) all. An `after` past the last id raises InvalidArgument." },
	{ "subscribe", (PyCFunction)session_subscribe, METH_NOARGS,
	  "subscribe(): make Client.fileno() readable on this session's news (follow() does it). "
	  "Keeps the session from expiring by inactivity while it lasts." },
	{ "unsubscribe", (PyCFunction)session_unsubscribe, METH_NOARGS,
	  "unsubscribe(): undo subscribe()." },
	{ "stat", (PyCFunction)session_stat, METH_NOARGS,
	  "stat() -> SessionInfo: timestamps, TTLs, last and oldest event id, subscribers." },
	{ "close", (PyCFunction)session_close, METH_NOARGS,
	  "close(): release the handle (the session lives on) and its cursors. Idempotent." },
	{ "__enter__", (PyCFunction)session_enter, METH_NOARGS, NULL },
	{ "__exit__", (PyCFunction)session_exit, METH_VARARGS, NULL },
	{ NULL },
};

static PyMemberDef session_members[] = {
	{ "sid", T_OBJECT, offsetof(shmbpy_session, sid), READONLY, "The session id." },
	{ "tenant", T_OBJECT, offsetof(shmbpy_session, tenant), READONLY,
	  "Tenant it was opened with." },
	{ "principal", T_OBJECT, offsetof(shmbpy_session, principal), READONLY,
	  "Principal it was opened with (or None)." },
	{ "__weaklistoffset__", T_PYSSIZET, offsetof(shmbpy_session, weakreflist), READONLY, NULL },
	{ NULL },
};

static PyGetSetDef session_getset[] = {
	{ "attrs", (getter)session_get_attrs, NULL,
	  "The session's attributes: a MutableMapping of str -> bytes (shmb.Attrs).", NULL },
	{ "closed", (getter)session_get_closed, NULL, "True once closed (or its Client is).",
	  NULL },
	{ NULL },
};

static PyType_Slot session_slots[] = {
	{ Py_tp_doc, "An open session (Client.open): publish, cursor, attrs, subscribe, stat. A "
		     "context manager; holds its Client." },
	{ Py_tp_dealloc, session_dealloc },
	{ Py_tp_traverse, session_traverse },
	{ Py_tp_repr, session_repr },
	{ Py_tp_methods, session_methods },
	{ Py_tp_members, session_members },
	{ Py_tp_getset, session_getset },
	{ 0, NULL },
};

PyType_Spec shmbpy_session_spec = {
	.name = "shmb.Session",
	.basicsize = sizeof(shmbpy_session),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
		 Py_TPFLAGS_DISALLOW_INSTANTIATION,
	.slots = session_slots,
};

static PyStructSequence_Field info_fields[] = {
	{ "sid", "session id" },
	{ "tenant", "tenant" },
	{ "principal", "principal, or None" },
	{ "created_at_ms", "wall clock at creation, ms" },
	{ "last_accessed_at_ms", "wall clock of the last open or publish, ms" },
	{ "inactivity_ttl_ms", "inactivity TTL (0: none)" },
	{ "absolute_ttl_ms", "absolute TTL (0: none)" },
	{ "last_event_id", "last event id (0: none published)" },
	{ "oldest_event_id", "oldest event id kept (0: none)" },
	{ "subscribers", "processes subscribed" },
	{ NULL, NULL },
};

PyStructSequence_Desc shmbpy_info_desc = {
	"shmb.SessionInfo",
	"Session.stat(): a snapshot of a session.",
	info_fields,
	10,
};

/* ---------------------------------------------------------------- Attrs (the C base) */

typedef struct {
	PyObject_HEAD shmbpy_session *session;
} attrs_object;

static PyObject *attrs_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	PyObject *sess;
	if (kw && PyDict_GET_SIZE(kw))
		return PyErr_Format(PyExc_TypeError, "Attrs() takes no keyword arguments");
	if (!PyArg_ParseTuple(args, "O:Attrs", &sess))
		return NULL;
	PyObject *m = PyType_GetModuleByDef(type, &shmbpy_module);
	if (!m)
		return NULL;
	shmbpy_state *ms = PyModule_GetState(m);
	if (!PyObject_TypeCheck(sess, ms->session_type))
		return PyErr_Format(PyExc_TypeError, "Attrs() needs a shmb.Session");
	attrs_object *self = (attrs_object *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	self->session = (shmbpy_session *)Py_NewRef(sess);
	return (PyObject *)self;
}

static int attrs_traverse(attrs_object *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->session);
	return 0;
}

static void attrs_dealloc(attrs_object *self)
{
	PyTypeObject *t = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	Py_CLEAR(self->session);
	t->tp_free(self);
	Py_DECREF(t);
}

static const char *attr_key(PyObject *key)
{
	if (!PyUnicode_Check(key)) {
		PyErr_Format(PyExc_TypeError, "attribute keys are str, not %.80s",
			     Py_TYPE(key)->tp_name);
		return NULL;
	}
	const char *k;
	return shmbpy_opt_text(key, &k, "attribute key") < 0 ? NULL : k;
}

/* attrs[key] and get_with_version: the value, and its version into *ver. */
static PyObject *attr_get(attrs_object *self, PyObject *key, uint64_t *ver)
{
	const char *k = attr_key(key);
	if (!k)
		return NULL;
	shmb_session *s = usable(self->session);
	if (!s)
		return NULL;
	char buf[SHMB_ATTR_MAX];
	int n = shmb_attr_get(s, k, buf, sizeof buf, ver);
	if (n < 0)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), n, "attrs", 0);
	return PyBytes_FromStringAndSize(buf, n);
}

static PyObject *attrs_getitem(attrs_object *self, PyObject *key)
{
	return attr_get(self, key, NULL);
}

static int attr_set(attrs_object *self, PyObject *key, PyObject *val, int has_version,
		    uint64_t version)
{
	const char *k = attr_key(key);
	if (!k)
		return -1;
	shmb_session *s = usable(self->session);
	if (!s)
		return -1;
	int rc;
	if (!val) {
		rc = shmb_attr_delete(s, k);
	} else {
		shmbpy_data d;
		if (shmbpy_data_get(val, &d, "attribute value") < 0)
			return -1;
		if (d.len > SHMB_ATTR_MAX) {
			shmbpy_data_release(&d);
			shmbpy_raise(shmbpy_state_of((PyObject *)self), SHMB_ETOOBIG,
				     "attrs: value above ATTR_MAX bytes", 0);
			return -1;
		}
		rc = has_version ? shmb_attr_set_if(s, k, d.p, (size_t)d.len, version)
				 : shmb_attr_set(s, k, d.p, (size_t)d.len);
		shmbpy_data_release(&d);
	}
	if (rc < 0) {
		shmbpy_raise(shmbpy_state_of((PyObject *)self), rc,
			     !val          ? "attrs delete"
			     : has_version ? "attrs set_if"
					   : "attrs set",
			     0);
		return -1;
	}
	return 0;
}

static int attrs_setitem(attrs_object *self, PyObject *key, PyObject *val)
{
	return attr_set(self, key, val, 0, 0);
}

static PyObject *attrs_set_if(attrs_object *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "key", "value", "version", NULL };
	PyObject *key, *val, *ver;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO:set_if", kwlist, &key, &val, &ver))
		return NULL;
	if (!PyLong_Check(ver))
		return PyErr_Format(PyExc_TypeError, "version must be an int");
	unsigned long long v = PyLong_AsUnsignedLongLong(ver);
	if (v == (unsigned long long)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		return PyErr_Format(PyExc_ValueError, "version must be in 0..2**64-1");
	}
	if (attr_set(self, key, val, 1, v) < 0)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *attrs_get_with_version(attrs_object *self, PyObject *key)
{
	uint64_t ver = 0;
	PyObject *v = attr_get(self, key, &ver);
	if (!v)
		return NULL;
	PyObject *r = Py_BuildValue("(NK)", v, (unsigned long long)ver);
	return r;
}

static int collect_key(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	(void)val;
	(void)len;
	(void)version;
	PyObject *k = PyUnicode_FromString(key);
	if (!k || PyList_Append(arg, k) < 0) {
		Py_XDECREF(k);
		return 1;
	}
	Py_DECREF(k);
	return 0;
}

static PyObject *attrs_keys_list(attrs_object *self)
{
	shmb_session *s = usable(self->session);
	if (!s)
		return NULL;
	PyObject *l = PyList_New(0);
	if (!l)
		return NULL;
	int rc = shmb_attr_list(s, collect_key, l);
	if (PyErr_Occurred()) {
		Py_DECREF(l);
		return NULL;
	}
	if (rc < 0) {
		Py_DECREF(l);
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "attrs", 0);
	}
	return l;
}

static PyObject *attrs_iter(attrs_object *self)
{
	PyObject *l = attrs_keys_list(self);
	if (!l)
		return NULL;
	PyObject *it = PyObject_GetIter(l);
	Py_DECREF(l);
	return it;
}

static Py_ssize_t attrs_len(attrs_object *self)
{
	PyObject *l = attrs_keys_list(self);
	if (!l)
		return -1;
	Py_ssize_t n = PyList_GET_SIZE(l);
	Py_DECREF(l);
	return n;
}

static int attrs_contains(attrs_object *self, PyObject *key)
{
	PyObject *v = attr_get(self, key, NULL);
	if (v) {
		Py_DECREF(v);
		return 1;
	}
	shmbpy_state *st = shmbpy_state_of((PyObject *)self);
	if (PyErr_ExceptionMatches(st->by_code[-SHMB_ENOENT]) && self->session->s) {
		PyErr_Clear();
		return 0;
	}
	return -1;
}

static PyMethodDef attrs_methods[] = {
	{ "set_if", (PyCFunction)(void (*)(void))attrs_set_if, METH_VARARGS | METH_KEYWORDS,
	  "set_if(key, value, version)\n"
	  "Compare-and-set: store value only if the attribute's version is `version` (0: the key "
	  "must be unset). Raises Conflict otherwise (nothing changed)." },
	{ "get_with_version", (PyCFunction)attrs_get_with_version, METH_O,
	  "get_with_version(key) -> (bytes, int): the value and its version (for set_if)." },
	{ NULL },
};

static PyType_Slot attrs_slots[] = {
	{ Py_tp_doc, "C base of shmb.Attrs." },
	{ Py_tp_new, attrs_new },
	{ Py_tp_dealloc, attrs_dealloc },
	{ Py_tp_traverse, attrs_traverse },
	{ Py_tp_iter, attrs_iter },
	{ Py_tp_methods, attrs_methods },
	{ Py_mp_subscript, attrs_getitem },
	{ Py_mp_ass_subscript, attrs_setitem },
	{ Py_mp_length, attrs_len },
	{ Py_sq_contains, attrs_contains },
	{ 0, NULL },
};

PyType_Spec shmbpy_attrs_spec = {
	.name = "shmb._AttrsBase",
	.basicsize = sizeof(attrs_object),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
	.slots = attrs_slots,
};
