/* cursor.c - shmb.Cursor (one shmb_cursor: next, iteration, a per-thread wait) and the asyncio
 * side: Cursor.follow(), an async iterator woken through the client's fd.
 *
 * Cursor.wait() releases the GIL and sleeps in shmb_cursor_wait() (a futex in the session's
 * record, per thread): any number of threads wait at once, each on its own cursor. The cursor is
 * marked busy meanwhile; another thread's next() or wait() on it raises RuntimeError (shmb.h:
 * one thread at a time per cursor) instead of racing. The wait runs in slices (shmbpy.h) so a
 * close() of the cursor, its session or client ends it with shmb.Closed, never a use after free.
 *
 * follow(): no thread per stream. The first follower that finds nothing registers the client's
 * fd once with its loop (loop.add_reader(client.fileno(), client._dispatch)); every follower of
 * every stream then waits on a future filed under its session handle in client->waiting. The
 * reader callback is shmb.h's event-loop pattern: shmb_wait(c, 0), shmb_ready() drained, and
 * for each handle with news its followers try their cursors; it ends with a shmb_prepare_wait()
 * that returned 0 (re-armed). No wakeup is lost: a follower's session is subscribed when follow()
 * is called, before its cursor is first read; a follower reads its cursor before it files its
 * future and arms (shmb_prepare_wait) right after, and all of this runs on the loop's thread, so
 * news committed after the read is reported by a later shmb_ready() to the filed future. A close
 * of the client, session or cursor fails their filed followers with shmb.Closed; from another
 * thread than the loop's, through loop.call_soon_threadsafe (Client._fail_future). */
#include "shmbpy.h"

#include <structmember.h>
#include <unistd.h>

PyObject *shmbpy_cursor_wrap(shmbpy_session *sess, shmb_cursor *cur);

PyObject *shmbpy_cursor_wrap(shmbpy_session *sess, shmb_cursor *cur)
{
	shmbpy_state *st = shmbpy_state_of((PyObject *)sess);
	shmbpy_cursor *self = (shmbpy_cursor *)st->cursor_type->tp_alloc(st->cursor_type, 0);
	if (!self) {
		shmb_cursor_close(cur);
		return NULL;
	}
	self->session = (shmbpy_session *)Py_NewRef(sess);
	self->cur = cur;
	self->event_type = (PyTypeObject *)Py_NewRef(st->event_type);
	self->next = sess->cursors;
	if (sess->cursors)
		sess->cursors->prev = self;
	sess->cursors = self;
	return (PyObject *)self;
}

static void followers_of_cursor_fail(shmbpy_cursor *self);

void shmbpy_cursor_close_handle(shmbpy_cursor *self)
{
	if (!self->cur || self->closing)
		return;
	followers_of_cursor_fail(self);
	if (self->prev)
		self->prev->next = self->next;
	else if (self->session->cursors == self)
		self->session->cursors = self->next;
	if (self->next)
		self->next->prev = self->prev;
	self->prev = self->next = NULL;
	if (self->busy) { /* the waiting thread raises Closed at its next slice */
		self->closing = 1;
		if (self->busy_thread != PyThread_get_thread_ident())
			return; /* it is inside libshmb: it closes the cursor itself */
		/* this thread's own wait, interrupted by a signal handler: not inside libshmb */
	}
	shmb_cursor *cur = self->cur;
	self->cur = NULL;
	shmb_cursor_close(cur);
}

static int cursor_traverse(shmbpy_cursor *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->session);
	return 0;
}

static void cursor_dealloc(shmbpy_cursor *self)
{
	PyTypeObject *t = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	if (self->weakreflist)
		PyObject_ClearWeakRefs((PyObject *)self);
	shmbpy_cursor_close_handle(self); /* never busy here: a waiter holds a reference */
	Py_CLEAR(self->session);
	Py_CLEAR(self->event_type);
	free(self->buf);
	t->tp_free(self);
	Py_DECREF(t);
}

/* The handle, or NULL with shmb.Closed or RuntimeError (busy). */
static shmb_cursor *usable(shmbpy_cursor *self)
{
	if (self->cur && !self->closing && !self->session->client->closing) {
		if (!self->busy)
			return self->cur;
		PyErr_SetString(
			PyExc_RuntimeError,
			"Cursor: another thread waits on this cursor (one thread at a time)");
		return NULL;
	}
	shmbpy_closed(shmbpy_state_of((PyObject *)self), self->session->client->closing ? "Client"
							 : self->session->s             ? "Cursor"
									    : "Session");
	return NULL;
}

/* Largest event buffer a cursor grows to: far above any broker's max_event_bytes. */
#define CURSOR_BUF_MAX (64u << 20)

PyObject *shmbpy_cursor_step(shmbpy_cursor *self, int *code)
{
	*code = SHMB_EINVAL;
	shmb_cursor *cur = usable(self);
	if (!cur)
		return NULL;
	if (!self->buf) {
		self->cap = 4096;
		if (!(self->buf = malloc(self->cap)))
			return PyErr_NoMemory();
	}
	shmb_event ev;
	int rc;
	while ((rc = shmb_cursor_next(cur, &ev, self->buf, self->cap)) == SHMB_ETOOBIG &&
	       ev.len > self->cap && ev.len <= CURSOR_BUF_MAX) {
		char *nb = malloc(ev.len);
		if (!nb)
			return PyErr_NoMemory();
		free(self->buf);
		self->buf = nb;
		self->cap = ev.len;
	}
	*code = rc;
	if (rc == 1)
		return shmbpy_event_new(self->event_type, &ev);
	if (rc == 0)
		Py_RETURN_NONE;
	return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "cursor",
			    rc == SHMB_EOVERRUN ? shmb_cursor_lagged(cur) : 0);
}

static PyObject *cursor_next(shmbpy_cursor *self, PyObject *unused)
{
	(void)unused;
	int code;
	return shmbpy_cursor_step(self, &code);
}

static PyObject *cursor_iternext(shmbpy_cursor *self)
{
	int code;
	PyObject *ev = shmbpy_cursor_step(self, &code);
	if (ev == Py_None) {
		Py_DECREF(ev);
		return NULL; /* StopIteration: nothing more now */
	}
	return ev;
}

static PyObject *cursor_wait(shmbpy_cursor *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = { "timeout", NULL };
	PyObject *timeout = Py_None;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:wait", kwlist, &timeout))
		return NULL;
	int ok;
	int64_t deadline = shmbpy_deadline(timeout, &ok);
	if (!ok)
		return NULL;
	shmbpy_client *cl = self->session->client;
	/* First: in a child, the parent's waiters (busy, inflight) are copies of threads that do
	 * not exist here. */
	if (cl->pid != getpid() && self->cur && !cl->closing)
		return shmbpy_raise(shmbpy_state_of((PyObject *)self), SHMB_EFORK, "wait", 0);
	shmb_cursor *cur = usable(self);
	if (!cur)
		return NULL;
	Py_INCREF(self); /* a close() meanwhile must not free us */
	self->busy = 1;
	self->busy_thread = PyThread_get_thread_ident();
	shmbpy_inflight_enter(cl);
	int rc = 0, sig = 0;
	/* The flags are looked at before every slice: a signal handler may have closed things. */
	while (!self->closing && !cl->closing) {
		int64_t left = deadline < 0 ? SHMBPY_SLICE_MS : deadline - shmbpy_now_ms();
		int ms = left < 0 ? 0 : left > SHMBPY_SLICE_MS ? SHMBPY_SLICE_MS : (int)left;
		PyThreadState *ts = PyEval_SaveThread();
		rc = shmb_cursor_wait(cur, ms);
		PyEval_RestoreThread(ts);
		if (rc != 0 || (deadline >= 0 && shmbpy_now_ms() >= deadline))
			break;
		if ((sig = PyErr_CheckSignals()) < 0)
			break;
	}
	self->busy = 0;
	shmbpy_inflight_leave(cl);
	PyObject *r = NULL;
	if (sig < 0) {
		/* the exception of the signal handler */
	} else if (self->closing) {
		self->closing = 0;
		if (self->cur) { /* closed by another thread while we were inside libshmb */
			self->cur = NULL;
			shmb_cursor_close(cur);
		}
		shmbpy_closed(shmbpy_state_of((PyObject *)self), "Cursor");
	} else if (cl->closing) {
		shmbpy_closed(shmbpy_state_of((PyObject *)self), "Client");
	} else {
		r = rc < 0 ? shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "wait", 0)
			   : PyBool_FromLong(rc > 0);
	}
	Py_DECREF(self);
	return r;
}

static PyObject *cursor_follow(shmbpy_cursor *self, PyObject *unused);

static PyObject *cursor_close(shmbpy_cursor *self, PyObject *unused)
{
	(void)unused;
	shmbpy_cursor_close_handle(self);
	Py_RETURN_NONE;
}

static PyObject *cursor_enter(shmbpy_cursor *self, PyObject *unused)
{
	(void)unused;
	if (!self->cur)
		return shmbpy_closed(shmbpy_state_of((PyObject *)self), "Cursor");
	return Py_NewRef(self);
}

static PyObject *cursor_exit(shmbpy_cursor *self, PyObject *args)
{
	(void)args;
	shmbpy_cursor_close_handle(self);
	Py_RETURN_FALSE;
}

static PyObject *cursor_get_position(shmbpy_cursor *self, void *unused)
{
	(void)unused;
	shmb_cursor *cur = usable(self);
	return cur ? PyLong_FromUnsignedLongLong(shmb_cursor_position(cur)) : NULL;
}

static PyObject *cursor_get_lagged(shmbpy_cursor *self, void *unused)
{
	(void)unused;
	shmb_cursor *cur = usable(self);
	return cur ? PyLong_FromUnsignedLongLong(shmb_cursor_lagged(cur)) : NULL;
}

static PyObject *cursor_get_closed(shmbpy_cursor *self, void *unused)
{
	(void)unused;
	return PyBool_FromLong(!self->cur || self->closing || self->session->client->closing);
}

static PyMethodDef cursor_methods[] = {
	{ "next", (PyCFunction)cursor_next, METH_NOARGS,
	  "next() -> Event | None\n"
	  "The next event, or None when there is nothing new yet (never blocks). Raises Overrun "
	  "once when events were evicted before it read them (.lost of them; it then continues at "
	  "the oldest kept), NotFound once the session is gone." },
	{ "wait", (PyCFunction)(void (*)(void))cursor_wait, METH_VARARGS | METH_KEYWORDS,
	  "wait(timeout=None) -> bool\n"
	  "Block this thread (GIL released) until next() has something to return, up to timeout "
	  "seconds (None: forever); False on timeout. Any number of threads may wait, each on its "
	  "own cursor." },
	{ "follow", (PyCFunction)cursor_follow, METH_NOARGS,
	  "follow() -> AsyncIterator[Event]\n"
	  "`async for ev in cursor.follow()`: events as they come, on the running asyncio loop, "
	  "through the client's fd (one reader per client, no thread). Subscribes the session. "
	  "Ends when the session is deleted or expires; raises Overrun like next() (iterate again "
	  "to continue)." },
	{ "close", (PyCFunction)cursor_close, METH_NOARGS,
	  "close(): release the cursor. Idempotent." },
	{ "__enter__", (PyCFunction)cursor_enter, METH_NOARGS, NULL },
	{ "__exit__", (PyCFunction)cursor_exit, METH_VARARGS, NULL },
	{ NULL },
};

static PyGetSetDef cursor_getset[] = {
	{ "position", (getter)cursor_get_position, NULL,
	  "The last id delivered or skipped (what a client would send as Last-Event-ID).", NULL },
	{ "lagged", (getter)cursor_get_lagged, NULL, "Events skipped by the last Overrun.", NULL },
	{ "closed", (getter)cursor_get_closed, NULL, "True once closed.", NULL },
	{ NULL },
};

static PyMemberDef cursor_members[] = {
	{ "session", T_OBJECT, offsetof(shmbpy_cursor, session), READONLY, "Its Session." },
	{ "__weaklistoffset__", T_PYSSIZET, offsetof(shmbpy_cursor, weakreflist), READONLY, NULL },
	{ NULL },
};

static PyType_Slot cursor_slots[] = {
	{ Py_tp_doc, "A reader's position in a session's events (Session.cursor). Iterating yields "
		     "the events there now; next(), wait(), follow(). Holds its Session." },
	{ Py_tp_dealloc, cursor_dealloc },
	{ Py_tp_traverse, cursor_traverse },
	{ Py_tp_iter, PyObject_SelfIter },
	{ Py_tp_iternext, cursor_iternext },
	{ Py_tp_methods, cursor_methods },
	{ Py_tp_getset, cursor_getset },
	{ Py_tp_members, cursor_members },
	{ 0, NULL },
};

PyType_Spec shmbpy_cursor_spec = {
	.name = "shmb.Cursor",
	.basicsize = sizeof(shmbpy_cursor),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
		 Py_TPFLAGS_DISALLOW_INSTANTIATION,
	.slots = cursor_slots,
};

/* ---------------------------------------------------------------- _Ready: an awaitable done */

typedef struct {
	PyObject_HEAD PyObject *value; /* NULL once returned */
} ready_object;

static PyObject *ready_new(shmbpy_state *st, PyObject *value)
{
	ready_object *r = PyObject_New(ready_object, st->ready_type);
	if (!r) {
		Py_DECREF(value);
		return NULL;
	}
	r->value = value; /* stolen */
	return (PyObject *)r;
}

static void ready_dealloc(ready_object *r)
{
	PyTypeObject *t = Py_TYPE(r);
	Py_XDECREF(r->value);
	PyObject_Free(r);
	Py_DECREF(t);
}

static PyObject *ready_iternext(ready_object *r)
{
	PyObject *v = r->value;
	r->value = NULL;
	if (!v)
		return NULL;
	PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, v);
	Py_DECREF(v);
	if (stop) {
		PyErr_SetObject(PyExc_StopIteration, stop);
		Py_DECREF(stop);
	}
	return NULL;
}

static PyType_Slot ready_slots[] = {
	{ Py_tp_dealloc, ready_dealloc },
	{ Py_am_await, PyObject_SelfIter },
	{ Py_tp_iter, PyObject_SelfIter },
	{ Py_tp_iternext, ready_iternext },
	{ 0, NULL },
};

PyType_Spec shmbpy_ready_spec = {
	.name = "shmb._Ready",
	.basicsize = sizeof(ready_object),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
	.slots = ready_slots,
};

/* ---------------------------------------------------------------- follow() */

typedef struct {
	PyObject_HEAD shmbpy_cursor *cursor;
	PyObject *fut;     /* the pending future, or NULL */
	PyObject *key;     /* int(session handle address) while filed in client->waiting */
	PyObject *on_done; /* bound _on_done, made once */
} follow_object;

static PyObject *cursor_follow(shmbpy_cursor *self, PyObject *unused)
{
	(void)unused;
	if (!usable(self))
		return NULL;
	shmbpy_session *sess = self->session;
	if (!sess->subscribed) {
		int rc = shmb_subscribe(sess->s);
		if (rc < 0)
			return shmbpy_raise(shmbpy_state_of((PyObject *)self), rc, "follow", 0);
		sess->subscribed = 1;
	}
	shmbpy_state *st = shmbpy_state_of((PyObject *)self);
	follow_object *f = PyObject_GC_New(follow_object, st->follow_type);
	if (!f)
		return NULL;
	f->cursor = (shmbpy_cursor *)Py_NewRef(self);
	f->fut = f->key = f->on_done = NULL;
	PyObject_GC_Track(f);
	return (PyObject *)f;
}

/* Takes f out of client->waiting (its key's list). */
static void follow_unfile(follow_object *f)
{
	if (!f->key)
		return;
	PyObject *key = f->key;
	f->key = NULL;
	shmbpy_client *cl = f->cursor->session->client;
	PyObject *l = cl->waiting ? PyDict_GetItemWithError(cl->waiting, key) : NULL;
	if (l) {
		Py_ssize_t n = PyList_GET_SIZE(l);
		for (Py_ssize_t i = 0; i < n; i++)
			if (PyList_GET_ITEM(l, i) == (PyObject *)f) {
				PyList_SetSlice(l, i, i + 1, NULL);
				break;
			}
		if (PyList_GET_SIZE(l) == 0)
			PyDict_DelItem(cl->waiting, key);
	}
	PyErr_Clear();
	Py_DECREF(key);
}

static int follow_traverse(follow_object *f, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(f));
	Py_VISIT(f->cursor);
	Py_VISIT(f->fut);
	Py_VISIT(f->on_done);
	return 0;
}

static int follow_clear(follow_object *f)
{
	Py_CLEAR(f->fut);
	Py_CLEAR(f->on_done);
	return 0;
}

static void follow_dealloc(follow_object *f)
{
	PyTypeObject *t = Py_TYPE(f);
	PyObject_GC_UnTrack(f);
	Py_CLEAR(f->key); /* filed followers are referenced by the list: not here */
	follow_clear(f);
	Py_CLEAR(f->cursor);
	PyObject_GC_Del(f);
	Py_DECREF(t);
}

static int fut_done(PyObject *fut)
{
	PyObject *r = PyObject_CallMethod(fut, "done", NULL);
	int d = r ? PyObject_IsTrue(r) : -1;
	Py_XDECREF(r);
	return d;
}

/* asyncio._get_running_loop(): this thread's running loop or None (new reference), NULL with
 * an exception. */
static PyObject *running_loop(shmbpy_state *st)
{
	if (!st->get_running_loop) {
		PyObject *aio = PyImport_ImportModule("asyncio");
		st->get_running_loop =
			aio ? PyObject_GetAttrString(aio, "_get_running_loop") : NULL;
		Py_XDECREF(aio);
		if (!st->get_running_loop)
			return NULL;
	}
	return PyObject_CallNoArgs(st->get_running_loop);
}

/* Resolves f's future with exc (a new reference, stolen) unless it is done; unfiles f. Off the
 * loop's thread (a close() from another thread, a signal handler on the main thread while the
 * loop runs in another) the future is resolved by the loop itself, through
 * call_soon_threadsafe: an asyncio future resolved from another thread wakes nothing, and its
 * task would wait forever. */
static void follow_fail(follow_object *f, PyObject *exc)
{
	PyObject *fut = f->fut;
	f->fut = NULL;
	shmbpy_client *cl = f->cursor->session->client;
	follow_unfile(f);
	if (fut && fut_done(fut) == 0) {
		PyObject *r = NULL,
			 *here = cl->loop ? running_loop(shmbpy_state_of((PyObject *)f)) : NULL;
		if (here && here != cl->loop) {
			PyObject *cb = PyObject_GetAttrString((PyObject *)cl, "_fail_future");
			r = cb ? PyObject_CallMethod(cl->loop, "call_soon_threadsafe", "OOO", cb,
						     fut, exc)
			       : NULL;
			Py_XDECREF(cb);
		}
		Py_XDECREF(here);
		if (!r) { /* on the loop's thread, or the loop is closed: at once */
			PyErr_Clear();
			r = PyObject_CallMethod(fut, "set_exception", "O", exc);
		}
		Py_XDECREF(r);
	}
	PyErr_Clear();
	Py_XDECREF(fut);
	Py_DECREF(exc);
}

/* Client._fail_future(fut, exc): follow_fail's resolution on the loop's thread. */
PyObject *shmbpy_client_fail_future(PyObject *self, PyObject *args);
PyObject *shmbpy_client_fail_future(PyObject *self, PyObject *args)
{
	(void)self;
	PyObject *fut, *exc;
	if (!PyArg_ParseTuple(args, "OO:_fail_future", &fut, &exc))
		return NULL;
	int d = fut_done(fut);
	if (d < 0)
		return NULL;
	return d ? Py_NewRef(Py_None) : PyObject_CallMethod(fut, "set_exception", "O", exc);
}

/* Takes the pending exception as an instance (new reference). */
static PyObject *take_exc(void)
{
	PyObject *t, *v, *tb;
	PyErr_Fetch(&t, &v, &tb);
	PyErr_NormalizeException(&t, &v, &tb);
	if (tb)
		PyException_SetTraceback(v, tb);
	Py_XDECREF(t);
	Py_XDECREF(tb);
	return v;
}

/* One try of a filed follower (dispatch): 1 resolved (unfiled), 0 still waiting. */
static int follow_try(follow_object *f)
{
	if (!f->fut || fut_done(f->fut) != 0) {
		PyErr_Clear();
		Py_CLEAR(f->fut);
		return 1;
	}
	int code;
	PyObject *ev = shmbpy_cursor_step(f->cursor, &code);
	if (ev == Py_None) {
		Py_DECREF(ev);
		return 0;
	}
	PyObject *fut = f->fut;
	f->fut = NULL;
	PyObject *r;
	if (ev) {
		r = PyObject_CallMethod(fut, "set_result", "O", ev);
		Py_DECREF(ev);
	} else {
		PyObject *exc = take_exc();
		if (code == SHMB_ENOENT) { /* the session ended: so does the iteration */
			Py_XDECREF(exc);
			exc = PyObject_CallNoArgs(PyExc_StopAsyncIteration);
		}
		r = exc ? PyObject_CallMethod(fut, "set_exception", "O", exc) : NULL;
		Py_XDECREF(exc);
	}
	Py_XDECREF(r);
	PyErr_Clear();
	Py_DECREF(fut);
	return 1;
}

void shmbpy_followers_fail(shmbpy_client *cl, shmbpy_session *s, PyObject *exc)
{
	if (!cl->waiting || (s && (!s->s || PyDict_GET_SIZE(cl->waiting) == 0)))
		goto loop;
	PyObject *saved_t, *saved_v, *saved_tb;
	PyErr_Fetch(&saved_t, &saved_v, &saved_tb);
	PyObject *lists = NULL;
	if (s) {
		PyObject *key = PyLong_FromVoidPtr(s->s);
		PyObject *l = key ? PyDict_GetItemWithError(cl->waiting, key) : NULL;
		lists = l ? Py_BuildValue("[O]", l) : NULL;
		Py_XDECREF(key);
	} else {
		lists = PyDict_Values(cl->waiting);
	}
	for (Py_ssize_t i = 0; lists && i < PyList_GET_SIZE(lists); i++) {
		PyObject *l = PyList_GetSlice(PyList_GET_ITEM(lists, i), 0, PY_SSIZE_T_MAX);
		for (Py_ssize_t k = 0; l && k < PyList_GET_SIZE(l); k++) {
			PyObject *e = exc ? Py_NewRef(exc) : NULL;
			if (!e) {
				shmbpy_closed(shmbpy_state_of((PyObject *)cl),
					      s ? "Session" : "Client");
				e = take_exc();
			}
			if (e)
				follow_fail((follow_object *)PyList_GET_ITEM(l, k), e);
		}
		Py_XDECREF(l);
	}
	Py_XDECREF(lists);
	PyErr_Clear();
	PyErr_Restore(saved_t, saved_v, saved_tb);
loop:
	if (!s && cl->loop) {
		PyObject *loop = cl->loop;
		cl->loop = NULL;
		PyObject *saved_t2, *saved_v2, *saved_tb2;
		PyErr_Fetch(&saved_t2, &saved_v2, &saved_tb2);
		if (cl->c && cl->pid == getpid()) {
			PyObject *r =
				PyObject_CallMethod(loop, "remove_reader", "i", shmb_fd(cl->c));
			Py_XDECREF(r);
		}
		PyErr_Clear();
		PyErr_Restore(saved_t2, saved_v2, saved_tb2);
		Py_DECREF(loop);
	}
}

int shmbpy_loop_release(shmbpy_client *cl)
{
	if (!cl->loop)
		return 0;
	PyObject *r = PyObject_CallMethod(cl->loop, "is_closed", NULL);
	int closed = r ? PyObject_IsTrue(r) : 1;
	Py_XDECREF(r);
	PyErr_Clear();
	if (!closed && cl->waiting && PyDict_GET_SIZE(cl->waiting) > 0)
		return -1;
	shmbpy_followers_fail(cl, NULL, NULL); /* any left belong to a closed loop */
	return 0;
}

/* Its followers get shmb.Closed: they wait under the session's key, for news of the session,
 * and would otherwise notice the closed cursor only at the session's next event. */
static void followers_of_cursor_fail(shmbpy_cursor *self)
{
	shmbpy_client *cl = self->session->client;
	if (!cl->waiting || !self->session->s || PyDict_GET_SIZE(cl->waiting) == 0)
		return;
	PyObject *saved_t, *saved_v, *saved_tb;
	PyErr_Fetch(&saved_t, &saved_v, &saved_tb);
	PyObject *key = PyLong_FromVoidPtr(self->session->s);
	PyObject *l = key ? PyDict_GetItemWithError(cl->waiting, key) : NULL;
	l = l ? PyList_GetSlice(l, 0, PY_SSIZE_T_MAX) : NULL; /* failing unfiles */
	for (Py_ssize_t k = 0; l && k < PyList_GET_SIZE(l); k++) {
		follow_object *f = (follow_object *)PyList_GET_ITEM(l, k);
		if (f->cursor != self)
			continue;
		shmbpy_closed(shmbpy_state_of((PyObject *)cl), "Cursor");
		PyObject *e = take_exc();
		if (e)
			follow_fail(f, e);
	}
	Py_XDECREF(l);
	Py_XDECREF(key);
	PyErr_Clear();
	PyErr_Restore(saved_t, saved_v, saved_tb);
}

static PyObject *follow_on_done(follow_object *f, PyObject *fut)
{
	/* A cancelled wait (the task was cancelled: an SSE client went away) unfiles at once. */
	if (f->fut == fut) {
		Py_CLEAR(f->fut);
		follow_unfile(f);
	}
	Py_RETURN_NONE;
}

/* Schedules a dispatch on the loop unless one is. */
static int schedule_dispatch(shmbpy_client *cl)
{
	if (cl->dispatch_scheduled)
		return 0;
	PyObject *cb = PyObject_GetAttrString((PyObject *)cl, "_dispatch");
	PyObject *r = cb ? PyObject_CallMethod(cl->loop, "call_soon", "O", cb) : NULL;
	Py_XDECREF(cb);
	if (!r)
		return -1;
	Py_DECREF(r);
	cl->dispatch_scheduled = 1;
	return 0;
}

static PyObject *follow_anext(follow_object *f)
{
	shmbpy_state *st = shmbpy_state_of((PyObject *)f);
	if (f->fut) {
		int d = fut_done(f->fut);
		if (d < 0)
			return NULL;
		if (!d && f->cursor->session->client->pid != getpid())
			return shmbpy_raise(st, SHMB_EFORK, "follow", 0);
		if (!d)
			return PyErr_Format(PyExc_RuntimeError,
					    "follow(): anext() called while another is pending");
		Py_CLEAR(f->fut);
	}
	int code;
	PyObject *ev = shmbpy_cursor_step(f->cursor, &code);
	if (!ev) {
		if (code == SHMB_ENOENT) {
			PyErr_Clear();
			PyErr_SetNone(PyExc_StopAsyncIteration);
		}
		return NULL;
	}
	if (ev != Py_None)
		return ready_new(st, ev);
	Py_DECREF(ev);

	/* Nothing now: file a future and make sure the loop watches the fd. */
	shmbpy_client *cl = f->cursor->session->client;
	if (!cl->waiting) /* cleared by the garbage collector: the client is going away */
		return shmbpy_closed(st, "Client");
	PyObject *loop = running_loop(st);
	if (!loop)
		return NULL;
	if (loop == Py_None) {
		Py_DECREF(loop);
		return PyErr_Format(PyExc_RuntimeError, "follow(): no running event loop");
	}
	if (cl->loop && cl->loop != loop && shmbpy_loop_release(cl) < 0) {
		Py_DECREF(loop);
		return PyErr_Format(
			PyExc_RuntimeError,
			"follow(): followers of this Client wait on another running event "
			"loop (one loop at a time per Client)");
	}
	if (!cl->loop) {
		if (cl->in_wait) {
			Py_DECREF(loop);
			return PyErr_Format(
				PyExc_RuntimeError,
				"follow(): a thread is in Client.wait() on this client");
		}
		PyObject *cb = PyObject_GetAttrString((PyObject *)cl, "_dispatch");
		PyObject *r = cb ? PyObject_CallMethod(loop, "add_reader", "iO", shmb_fd(cl->c), cb)
				 : NULL;
		Py_XDECREF(cb);
		if (!r) {
			Py_DECREF(loop);
			return NULL;
		}
		Py_DECREF(r);
		cl->loop = Py_NewRef(loop);
		cl->dispatch_scheduled = 0;
	}
	PyObject *fut = PyObject_CallMethod(loop, "create_future", NULL);
	Py_DECREF(loop);
	if (!fut)
		return NULL;
	if (!f->on_done && !(f->on_done = PyObject_GetAttrString((PyObject *)f, "_on_done")))
		goto fail;
	PyObject *r = PyObject_CallMethod(fut, "add_done_callback", "O", f->on_done);
	if (!r)
		goto fail;
	Py_DECREF(r);
	PyObject *key = PyLong_FromVoidPtr(f->cursor->session->s);
	if (!key)
		goto fail;
	PyObject *l = PyDict_GetItemWithError(cl->waiting, key);
	if (!l && !PyErr_Occurred()) {
		l = PyList_New(0);
		if (l && PyDict_SetItem(cl->waiting, key, l) < 0)
			Py_CLEAR(l);
		Py_XDECREF(l); /* the dict holds it */
	}
	if (!l || PyList_Append(l, (PyObject *)f) < 0) {
		Py_DECREF(key);
		goto fail;
	}
	f->key = key;
	f->fut = Py_NewRef(fut);
	int rc = shmb_prepare_wait(cl->c);
	if (rc < 0) {
		follow_unfile(f);
		Py_CLEAR(f->fut);
		Py_DECREF(fut);
		return shmbpy_raise(st, rc, "follow", 0);
	}
	if (rc == 1 && schedule_dispatch(cl) < 0) {
		follow_unfile(f);
		Py_CLEAR(f->fut);
		goto fail;
	}
	return fut;
fail:
	Py_DECREF(fut);
	return NULL;
}

#define READY_BATCH 64

PyObject *shmbpy_client_dispatch(shmbpy_client *cl, PyObject *unused);
PyObject *shmbpy_client_dispatch(shmbpy_client *cl, PyObject *unused)
{
	(void)unused;
	cl->dispatch_scheduled = 0;
	if (!cl->c || cl->closing || !cl->loop)
		Py_RETURN_NONE;
	shmb_session *out[READY_BATCH];
	int rc = shmb_wait(cl->c, 0);
	while (rc >= 0) {
		int n;
		while ((n = rc = shmb_ready(cl->c, out, READY_BATCH)) > 0) {
			for (int i = 0; i < n; i++) {
				PyObject *key = PyLong_FromVoidPtr(out[i]);
				PyObject *l =
					key ? PyDict_GetItemWithError(cl->waiting, key) : NULL;
				if (!l) {
					Py_XDECREF(key);
					if (PyErr_Occurred())
						return NULL;
					continue;
				}
				/* A copy: a resolved follower unfiles itself from the list. */
				PyObject *copy = PyList_GetSlice(l, 0, PY_SSIZE_T_MAX);
				Py_DECREF(key);
				if (!copy)
					return NULL;
				for (Py_ssize_t k = 0; k < PyList_GET_SIZE(copy); k++) {
					follow_object *f =
						(follow_object *)PyList_GET_ITEM(copy, k);
					if (f->key && follow_try(f))
						follow_unfile(f);
				}
				Py_DECREF(copy);
				if (!cl->c ||
				    cl->closing) /* defensive: nothing above runs user code */
					Py_RETURN_NONE;
			}
			if (n < READY_BATCH)
				break;
		}
		if (rc < 0)
			break;
		if ((rc = shmb_prepare_wait(cl->c)) <= 0)
			break;
	}
	if (rc < 0) { /* e.g. ForkError in a child: every follower gets it */
		shmbpy_raise(shmbpy_state_of((PyObject *)cl), rc, "follow", 0);
		PyObject *exc = take_exc();
		shmbpy_followers_fail(cl, NULL, exc);
		Py_XDECREF(exc);
	}
	Py_RETURN_NONE;
}

static PyObject *follow_aclose(follow_object *f, PyObject *unused)
{
	(void)unused;
	follow_unfile(f);
	if (f->fut) {
		PyObject *r = PyObject_CallMethod(f->fut, "cancel", NULL);
		Py_XDECREF(r);
		Py_CLEAR(f->fut);
	}
	/* a coroutine: the caller awaits it */
	PyObject *none = Py_NewRef(Py_None);
	return ready_new(shmbpy_state_of((PyObject *)f), none);
}

static PyMethodDef follow_methods[] = {
	{ "_on_done", (PyCFunction)follow_on_done, METH_O, NULL },
	{ "aclose", (PyCFunction)follow_aclose, METH_NOARGS,
	  "aclose(): stop following (awaitable). The cursor stays open." },
	{ NULL },
};

static PyType_Slot follow_slots[] = {
	{ Py_tp_doc, "Cursor.follow(): an async iterator of the cursor's events (asyncio)." },
	{ Py_tp_dealloc, follow_dealloc },
	{ Py_tp_traverse, follow_traverse },
	{ Py_tp_clear, follow_clear },
	{ Py_am_aiter, PyObject_SelfIter },
	{ Py_am_anext, follow_anext },
	{ Py_tp_methods, follow_methods },
	{ 0, NULL },
};

PyType_Spec shmbpy_follow_spec = {
	.name = "shmb.Follow",
	.basicsize = sizeof(follow_object),
	.flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
		 Py_TPFLAGS_DISALLOW_INSTANTIATION,
	.slots = follow_slots,
};
