/* shmbpy.h - what the files of the CPython extension module `shmb` share: the objects, the
 * module state and the helpers that map a libshmb code to an exception.
 *
 * The module is thin over shmb.h (STYLE.md 14): every object owns one C handle and frees it in
 * its finalizer or close(). Lifetimes follow the references: a Cursor holds its Session, a
 * Session its Client, so a handle is never freed under a child of it; Client.close() closes
 * every Session and Cursor of the client first (libshmb wants them closed before shmb_detach),
 * and a handle whose C side is gone raises shmb.Closed, never touches freed memory.
 *
 * The GIL. Everything that can sleep runs with the GIL released: attach, create, delete and
 * restore (broker round trips), Client.wait, Cursor.wait. Everything else (publish, cursor next,
 * open, attributes) is lock-free in the library and costs well under a microsecond, so it keeps
 * the GIL: releasing and taking it again would cost more than the call and, with other threads
 * running, wait for a switch interval. shmb_session and shmb_cursor are used by one thread at a
 * time (shmb.h): with the GIL held that is automatic, and a Cursor being waited on with the GIL
 * released is marked busy, so another thread's use of it raises instead of racing.
 *
 * Close while others wait. A thread in a GIL-released call counts itself in its client's
 * `inflight` (under `mu`) and waits in slices of SHMBPY_SLICE_MS, looking at the closing flags
 * between slices (and for signals: Ctrl-C reaches a main thread waiting forever). close() sets
 * `closing`, waits (GIL released) until inflight is 0, then frees: so it returns within one
 * slice, and no thread is inside libshmb with a handle close() frees. A signal handler runs
 * between two slices of the wait it interrupted (PyErr_CheckSignals), on the waiting thread: a
 * close() there does not wait for that thread's own wait (it is not inside libshmb), closes its
 * cursor at once, and the wait, resumed, looks at the flags before it calls libshmb again. After fork() nothing of
 * the parent's threads runs in the child: close() there does not wait, and the library makes
 * every call on the inherited client fail with SHMB_EFORK (shmb.ForkError). */
#ifndef SHMBPY_H
#define SHMBPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h>

#include <pthread.h>
#include <sys/types.h>

#include "shmb.h"

/* Longest sleep inside one GIL-released wait before the flags and signals are looked at. */
#define SHMBPY_SLICE_MS 250

/* Highest code of the error table (-SHMB_EFORK is 19 today): exceptions are indexed by -code. */
#define SHMBPY_MAX_CODE 32

typedef struct shmbpy_state {
	PyTypeObject *client_type, *session_type, *cursor_type, *event_type, *follow_type;
	PyTypeObject *ready_type, *attrs_base_type, *info_type;
	PyObject *attrs_type; /* Attrs: the C base plus collections.abc.MutableMapping */
	PyObject *error;      /* shmb.Error */
	PyObject *closed;     /* shmb.Closed: a handle used after close() */
	PyObject *by_code[SHMBPY_MAX_CODE + 1];
	PyObject *get_running_loop; /* asyncio.get_running_loop, imported at the first follow */
} shmbpy_state;

struct shmbpy_session;
struct shmbpy_cursor;

typedef struct shmbpy_client {
	PyObject_HEAD shmb_client *c; /* NULL once closed */
	pid_t pid;                    /* the process that attached */
	int closing;  /* set (GIL held) by close(): GIL-released loops stop at their next slice */
	int inflight; /* threads inside a GIL-released call on c or its handles (mu) */
	int in_wait;  /* a thread is in Client.wait() (GIL) */
	pthread_mutex_t mu;
	pthread_cond_t drained;
	PyObject *name;
	struct shmbpy_session *sessions; /* open sessions, linked (borrowed references) */
	/* asyncio (cursor.c): the loop our fd is registered with (add_reader), the followers
	 * waiting for news, by session handle: {int(address): [Follow, ...]}, and whether a
	 * dispatch is already scheduled with call_soon. */
	PyObject *loop;
	PyObject *waiting;
	int dispatch_scheduled;
	PyObject *weakreflist;
} shmbpy_client;

typedef struct shmbpy_session {
	PyObject_HEAD shmbpy_client *client; /* strong */
	shmb_session *s;                     /* NULL once closed */
	PyObject *sid, *tenant, *principal;
	int subscribed;
	struct shmbpy_session *prev, *next; /* in client->sessions */
	struct shmbpy_cursor *cursors;      /* open cursors, linked (borrowed) */
	PyObject *weakreflist;
} shmbpy_session;

typedef struct shmbpy_cursor {
	PyObject_HEAD shmbpy_session *session; /* strong */
	shmb_cursor *cur;                      /* NULL once closed */
	PyTypeObject *event_type;
	int busy;                  /* a thread waits on it with the GIL released */
	unsigned long busy_thread; /* that thread (PyThread_get_thread_ident) */
	int closing;               /* close() came while busy: the waiting thread closes it */
	char *buf;                 /* events are copied here, then into a bytes object */
	size_t cap;
	struct shmbpy_cursor *prev, *next; /* in session->cursors */
	PyObject *weakreflist;
} shmbpy_cursor;

extern PyModuleDef shmbpy_module;

/* The module state of an object's type (walks the MRO: works for subclasses too). */
shmbpy_state *shmbpy_state_of(PyObject *self);

/* Raises the exception of code (with .code, .name and the library's message, prefixed by
 * `what`); returns NULL. For SHMB_EOVERRUN, lost is the count (attribute .lost). */
PyObject *shmbpy_raise(shmbpy_state *st, int code, const char *what, uint64_t lost);
/* Raises shmb.Closed: "<what> is closed". Returns NULL. */
PyObject *shmbpy_closed(shmbpy_state *st, const char *what);

/* Data to publish or store: bytes, str (UTF-8) or any contiguous buffer. On success view is
 * filled (release it with shmbpy_data_release); -1 with TypeError otherwise. */
typedef struct shmbpy_data {
	const char *p;
	Py_ssize_t len;
	Py_buffer view;
	int has_view;
} shmbpy_data;
int shmbpy_data_get(PyObject *o, shmbpy_data *d, const char *what);
void shmbpy_data_release(shmbpy_data *d);

/* An int in lo..hi to *out: TypeError when o is not an int, ValueError out of range; -1 then. */
int shmbpy_int_arg(PyObject *o, long long lo, long long hi, long long *out, const char *what);

/* Optional text argument: NULL/None gives NULL; str gives its UTF-8 (valid while o lives);
 * anything else -1 with TypeError. A NUL inside is refused (ValueError). */
int shmbpy_opt_text(PyObject *o, const char **out, const char *what);

/* Timeout in seconds (None: forever) to an absolute deadline in ms of CLOCK_MONOTONIC, -1 for
 * forever. -1 on error (ValueError/TypeError set) with *ok = 0. */
int64_t shmbpy_deadline(PyObject *timeout, int *ok);
int64_t shmbpy_now_ms(void);

/* Counting threads inside GIL-released calls on a client (the rule at the top). */
void shmbpy_inflight_enter(shmbpy_client *cl);
void shmbpy_inflight_leave(shmbpy_client *cl);

/* Types (specs in their files), added to the module by module.c. */
extern PyType_Spec shmbpy_client_spec, shmbpy_session_spec, shmbpy_attrs_spec;
extern PyType_Spec shmbpy_cursor_spec, shmbpy_event_spec, shmbpy_follow_spec, shmbpy_ready_spec;
extern PyStructSequence_Desc shmbpy_info_desc;

/* Session / cursor close (C side), used by the client's close. */
void shmbpy_session_close_handle(shmbpy_session *s);
void shmbpy_cursor_close_handle(shmbpy_cursor *c);
/* Fails every follower waiting on a handle of session s (or on any, s NULL) with exc and
 * forgets them; drops the loop registration when s is NULL. */
void shmbpy_followers_fail(shmbpy_client *cl, shmbpy_session *s, PyObject *exc);
/* Lets go of the loop follow() registered the client's fd with, if no follower waits on it
 * (or it is closed): 0, else -1 (nothing changed). A new loop (asyncio.run again) or Client.wait
 * may then take the fd. */
int shmbpy_loop_release(shmbpy_client *cl);
/* The event of the last shmb_cursor_next (1) as an Event object. */
PyObject *shmbpy_event_new(PyTypeObject *t, const shmb_event *ev);
/* One step of a cursor: an Event, Py_None for nothing yet (new reference), or NULL with the
 * exception set; *code gets the library's return (1, 0 or a negative code). */
PyObject *shmbpy_cursor_step(shmbpy_cursor *self, int *code);

#endif /* SHMBPY_H */
