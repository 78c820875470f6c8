/* attach.c - a process joining a broker instance: admission over the control socket, mapping
 * the segment, the eventfd set, reconnecting after a broker restart, and detaching.
 *
 * One client per process and instance: the broker gives a process at most one worker slot, so
 * shmb_attach() of a name this process is already attached to returns the same client again
 * (reference counted; shmb_detach() releases it with the last reference).
 *
 * The client keeps its control connection open for its whole life. The broker releases the
 * worker slot only when the process dies or says "detach" (shmb_detach(), which also unmaps the
 * segment before closing: an EOF from a process that no longer maps it is a release too); a
 * connection that closes or fails otherwise only unbinds the slot, which the process resumes. After a broker
 * restart the connection reads EOF; the next call that needs the broker reconnects and says
 * "hello" with resume {slot, gen}, so the adopting broker gives the same worker slot back (our
 * reader slots live there). A resume that times out (a stalled broker) is simply made again by a
 * later call: the broker lets the newest connection of the process take its slot over. Eventfds
 * received again are dup2()ed onto the old descriptor numbers, so an fd sitting in the
 * application's epoll set stays valid.
 *
 * The data path (publish, wait) never blocks on the broker: shmbi_sync_eventfds only trylocks
 * ctl_lock and sends without waiting, and the replies it is owed are collected later, by it or by
 * the next blocking call (the owed[] queue knows which reply is an eventfd set to install and
 * which a resume to complete); one that woke others through a stale set asks for a wake_all.
 * Create and delete carry a request id and a deadline (shmbi_call_req) so that a retry after a
 * timeout returns the first outcome. A call never sends its request behind a resume whose reply
 * it has not read: a refused resume leaves the connection without our slot, so it waits for the
 * resume's outcome first (call_locked).
 *
 * Another copy of this library in the same process (a second static copy, RTLD_DEEPBIND) has its
 * own registry: the broker refuses its attach (SHMB_ENOWORKER) while we map the segment.
 *
 * A replaced segment: the header's retired word (layout 1.2) says no broker serves our segment
 * any more; read-side sections and broker calls then fail with SHMB_ESTALE. A resume whose
 * reply carries another segment (st_dev/st_ino kept at the first attach) sets it.
 *
 * Admission is complete only when our worker slot reads LIVE with our pid and the generation of
 * the reply: the broker stores LIVE right after sending the reply, so a broker killed in between
 * leaves a slot nobody uses (its successor sees it FREE) and we fail with SHMB_EBROKER instead
 * of using a slot the next broker would hand to someone else. A resume keeps the generation, so
 * a resume interrupted the same way still matches the next time.
 *
 * fork(): a child inherits the client's memory but must never act as the parent's worker. A
 * pthread_atfork child handler bumps shmbi_fork_gen; every entry point compares it with the
 * client's (no getpid() syscall on the hot path). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ctl.h"
#include "fault.h"
#include "internal.h"
#include "rcu.h"
#include "trust.h"
#include "wake.h"

/* Request ids travel as JSON numbers, which cJSON prints with 15 significant digits when that
 * reads back within an epsilon: 48 bits keep every id exact. */
#define REQ_ID_MASK ((UINT64_C(1) << 48) - 1)

uint64_t shmbi_fork_gen = 1;
static uint64_t client_uid_last; /* shmb_client.uid of the latest attach */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Every live client of this process, so that a child after fork() can drop its copies of their
 * control connections: otherwise the parent's later detach would not reach the broker (the
 * child would keep the socket open) and the child could speak for the parent's slot. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static shmb_client *registry;
/* Serialises shmb_attach() in a process, so two threads attaching the same name share one client
 * (the broker would refuse a second slot). Taken before registry_lock. */
static pthread_mutex_t attach_lock = PTHREAD_MUTEX_INITIALIZER;
/* When this process last finished a detach (shmb_mono_ms; see shmb_attach's retry). */
static int64_t last_detach_ms = INT64_MIN / 2;

static void on_fork_prepare(void)
{
	pthread_mutex_lock(&attach_lock);
	pthread_mutex_lock(&registry_lock);
}

static void on_fork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
	pthread_mutex_unlock(&attach_lock);
}

static void on_fork_child(void)
{
	shmbi_fork_gen++;
	for (shmb_client *c = registry; c; c = c->reg_next) {
		if (c->ctl_fd >= 0)
			close(c->ctl_fd);
		c->ctl_fd = -1;
	}
	registry = NULL; /* the child's copies are not its clients */
	pthread_mutex_unlock(&registry_lock);
	pthread_mutex_unlock(&attach_lock);
}

static void register_atfork(void)
{
	pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
}

static void registry_add(shmb_client *c)
{
	pthread_mutex_lock(&registry_lock);
	c->reg_next = registry;
	registry = c;
	pthread_mutex_unlock(&registry_lock);
}

/* Drops one reference; 1 when it was the last (c is then out of the registry). */
static int registry_release(shmb_client *c)
{
	pthread_mutex_lock(&registry_lock);
	int last = c->refs <= 1;
	if (!last)
		c->refs--;
	for (shmb_client **pp = &registry; last && *pp; pp = &(*pp)->reg_next)
		if (*pp == c) {
			*pp = c->reg_next;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
	return last;
}

/* This process's client of the instance at sock_path, with one more reference; NULL if none.
 * A client whose segment is retired is never shared: SHMB_ESTALE tells the application to attach
 * again, which must give a client of the new segment even while handles of the stale one are
 * still open (its header page stays mapped and readable, see shmb_detach). */
static shmb_client *registry_share(const char *name, const char *sock_path)
{
	pthread_mutex_lock(&registry_lock);
	shmb_client *c = registry;
	while (c && !(strcmp(c->name, name) == 0 && strcmp(c->sock_path, sock_path) == 0 &&
		      !uatomic_read(&seg_hdr(&c->seg)->retired)))
		c = c->reg_next;
	if (c)
		c->refs++;
	pthread_mutex_unlock(&registry_lock);
	return c;
}

static void reader_tls_release(void *p);
static void reader_tls_drop_own(shmb_client *c);

static void close_fds(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Waits until the broker has marked worker slot `slot` LIVE for us at admission generation gen.
 * The broker does so right after sending the hello reply; if it dies in between, the slot never
 * turns LIVE, our connection reads EOF, and we fail with SHMB_EBROKER rather than use a slot the
 * next broker does not know is ours (docs/protocol.md). Returns 0 or SHMB_EBROKER. */
static int await_live(const struct shmb_seg *seg, int fd, uint32_t slot, uint32_t gen)
{
	const struct shmb_worker *wk = seg_worker(seg, slot);
	if (!wk)
		return SHMB_EBROKER;
	for (int waited = 0; waited < ctl_timeout_ms(); waited++) {
		uint32_t st = uatomic_read(&wk->state);
		cmm_smp_rmb(); /* state before identity: pairs with brk_worker_admitted's wmb */
		if (st == SHMB_WORKER_LIVE && uatomic_read(&wk->gen) == gen &&
		    uatomic_read(&wk->pid) == (int32_t)getpid())
			return 0;
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
		if (poll(&p, 1, 1) > 0 && (p.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)))
			return SHMB_EBROKER; /* the broker died, or said more than it should */
	}
	return SHMB_EBROKER;
}

/* 1 when fds a (ours) and b (just received) are the same open file description. */
static int same_file(int a, int b)
{
	pid_t me = getpid();
	return syscall(SYS_kcmp, me, me, KCMP_FILE, a, b) == 0;
}

/* Moves a freshly received eventfd set onto our descriptor numbers (other threads keep using
 * the numbers, and the application's epoll set holds ours) and closes the received ones. Our
 * own eventfd is normally the same object (a restarted broker takes it back from us with
 * pidfd_getfd), and is then left alone so its epoll registration stays; only if the broker
 * could not take it back do we switch to the new object: wakeups work again, but an epoll
 * set holding shmb_fd() must add it again (docs/events.md). */
static void install_eventfds(shmb_client *c, int *fds, int n)
{
	int m = n < c->n_evfds ? n : c->n_evfds;
	for (int i = 0; i < m; i++) {
		if (!((uint32_t)i == c->slot && same_file(c->evfds[i], fds[i])))
			dup3(fds[i], c->evfds[i], O_CLOEXEC);
		close(fds[i]);
	}
	for (int i = m; i < n; i++)
		close(fds[i]);
}

/* After a hello or an eventfds reply: the set's generation, and our own eventfd's number in
 * our worker slot (what a restarted broker takes back). */
static void note_eventfds(shmb_client *c, const cJSON *reply)
{
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(reply, "evfd_gen");
	if (cJSON_IsNumber(g))
		uatomic_set(&c->evfd_gen, (uint64_t)g->valuedouble);
	struct shmb_worker *w = seg_worker(&c->seg, c->slot);
	if (w && c->slot < (uint32_t)c->n_evfds)
		uatomic_set(&w->evfd_num, c->evfds[c->slot]);
}

/* ctl_connect, counted (white-box tests check the data path does not connect per call). A
 * broker we refuse to talk to is named on stderr once per client (docs/security.md): which path
 * or peer, owned by whom; the data path's refresh may retry it a few times a second. */
static int client_connect(shmb_client *c)
{
	uatomic_inc(&c->connects);
	char why[512];
	int fd = ctl_connect(c->name, why, sizeof why);
	if (fd == SHMB_EACCES && why[0] && !uatomic_xchg(&c->refusal_told, 1))
		fprintf(stderr, "libshmb: not attaching to broker '%s': %s\n", c->name, why);
	return fd;
}

/* While our eventfd set is stale, a wakeup we wrote to a worker whose eventfd changed (attached
 * after the restart, or not taken back) went nowhere. A refresh request says so ("wake_all"), and
 * the broker then writes every worker's eventfd once after answering, which covers what we
 * published before it read the request; what we publish after that, until the new set is
 * installed, is covered by wake_live() at the install. */
static void ask_wake_all(shmb_client *c, cJSON *req)
{
	if (uatomic_xchg(&c->woke_stale, 0))
		cJSON_AddTrueToObject(req, "wake_all");
}

/* After a new eventfd set is installed: if we published with the stale one since asking for
 * it, write every other LIVE worker's eventfd once (a spurious wakeup costs a check; a lost one
 * a sleep). Unconditional, as brk_workers_wake_all: the stale write had already swapped the
 * sleeper's armed flag to 0. */
static void wake_live(shmb_client *c)
{
	if (!uatomic_xchg(&c->woke_stale, 0))
		return;
	for (uint32_t w = 0; w < c->seg.cfg.max_workers && w < (uint32_t)c->n_evfds; w++)
		if (w != c->slot &&
		    uatomic_read(&seg_worker(&c->seg, w)->state) == SHMB_WORKER_LIVE)
			(void)wake_fd_write(c->evfds[w]); /* never blocks: full is a wakeup */
}

static cJSON *hello_req(shmb_client *c, int first)
{
	cJSON *req = cJSON_CreateObject();
	if (!req)
		return NULL;
	cJSON_AddStringToObject(req, "op", "hello");
	cJSON_AddNumberToObject(req, "pid", (double)getpid());
	cJSON_AddNumberToObject(req, "layout_major", SHMB_LAYOUT_MAJOR);
	cJSON_AddNumberToObject(req, "layout_minor", SHMB_LAYOUT_MINOR);
	cJSON_AddNumberToObject(req, "fingerprint", (double)shmb_layout_fingerprint());
	if (!first) {
		cJSON *r = cJSON_AddObjectToObject(req, "resume");
		if (!r) {
			cJSON_Delete(req);
			return NULL;
		}
		cJSON_AddNumberToObject(r, "slot", c->slot);
		cJSON_AddNumberToObject(r, "gen", c->gen);
		ask_wake_all(c, req);
	}
	return req;
}

/* Completes a resume from its reply (rc as ctl_wait_reply returned it): our own slot given
 * back, LIVE with our pid at our generation (a resumed slot never leaves LIVE, so there is
 * nothing to wait for), in our segment. Installs the eventfd set it carries. Consumes fds.
 * Returns 0, SHMB_ESTALE (the broker serves another segment: ours is marked retired) or
 * SHMB_EBROKER. Caller holds ctl_lock. */
static int resume_done(shmb_client *c, int rc, const cJSON *reply, int *fds, int nfds)
{
	struct stat sst;
	/* Checked on a refused resume too: the broker sends its segment with the refusal. */
	if (nfds >= 1 && fstat(fds[0], &sst) == 0 &&
	    (sst.st_dev != c->seg_dev || sst.st_ino != c->seg_ino)) {
		/* The broker serves another segment (ours was removed and a new one built): no
		 * broker serves ours any more. Say so in it, for this process's data path and for
		 * every other process still mapping it (they fail the same way). */
		uatomic_set(&seg_hdr(&c->seg)->retired, SHMB_SEG_RETIRED);
		close_fds(fds, nfds);
		return SHMB_ESTALE;
	}
	if (rc == 0) {
		const cJSON *js = cJSON_GetObjectItemCaseSensitive(reply, "slot");
		const cJSON *jg = cJSON_GetObjectItemCaseSensitive(reply, "gen");
		const struct shmb_worker *wk = seg_worker(&c->seg, c->slot);
		/* Our reader slots live in our old worker slot: another one would not cover them. */
		if (!cJSON_IsNumber(js) || !cJSON_IsNumber(jg) || nfds < 2 || !wk ||
		    js->valuedouble != (double)c->slot || jg->valuedouble != (double)c->gen) {
			rc = SHMB_EBROKER;
		} else {
			uint32_t st = uatomic_read(&wk->state);
			cmm_smp_rmb(); /* state before identity: pairs with brk_worker_admitted's wmb */
			if (st != SHMB_WORKER_LIVE || uatomic_read(&wk->gen) != c->gen ||
			    uatomic_read(&wk->pid) != (int32_t)getpid())
				rc = SHMB_EBROKER;
		}
	}
	if (rc < 0) {
		close_fds(fds, nfds);
		return SHMB_EBROKER;
	}
	close(fds[0]);
	install_eventfds(c, fds + 1, nfds - 1);
	note_eventfds(c, reply);
	wake_live(c);
	return 0;
}

static void owed_push(shmb_client *c, uint8_t kind)
{
	c->owed[(c->owed_head + c->owed_n) % SHMBI_OWED_MAX] = kind;
	c->owed_n++;
}

static int owed_has(const shmb_client *c, uint8_t kind)
{
	for (uint32_t i = 0; i < c->owed_n; i++)
		if (c->owed[(c->owed_head + i) % SHMBI_OWED_MAX] == kind)
			return 1;
	return 0;
}

/* Closes the control connection (the broker keeps our slot: we resume it later). */
static void drop_conn(shmb_client *c)
{
	if (owed_has(c, SHMBI_OWED_HELLO) || owed_has(c, SHMBI_OWED_EVENTFDS))
		uatomic_set(&c->woke_stale, 1); /* a wake_all asked for may be lost with it */
	if (c->ctl_fd >= 0)
		close(c->ctl_fd);
	c->ctl_fd = -1;
	c->owed_head = 0;
	c->owed_n = 0;
}

/* Takes the oldest owed reply (waiting up to timeout_ms) and acts on it by its kind. Returns 0,
 * or SHMB_EBROKER with *timed_out set (nothing came; still owed) or with the connection dropped
 * (EOF, garbage, a failed resume). Caller holds ctl_lock, c->owed_n > 0. */
static int take_owed(shmb_client *c, int timeout_ms, int *timed_out)
{
	uint8_t kind = c->owed[c->owed_head];
	cJSON *reply = NULL;
	int fds[SHMB_MAX_WORKERS_LIMIT + 1], nfds = 0;
	int rc = ctl_wait_reply(c->ctl_fd, timeout_ms, &reply, fds, SHMB_MAX_WORKERS_LIMIT + 1,
				&nfds, timed_out);
	if (*timed_out)
		return SHMB_EBROKER;
	if (rc == SHMB_EBROKER && !reply) {
		close_fds(fds, nfds);
		drop_conn(c);
		return SHMB_EBROKER;
	}
	c->owed_head = (c->owed_head + 1) % SHMBI_OWED_MAX;
	c->owed_n--;
	if (kind == SHMBI_OWED_HELLO) {
		rc = resume_done(c, rc, reply, fds, nfds);
		cJSON_Delete(reply);
		if (rc < 0) {
			uatomic_set(&c->woke_stale, 1); /* see drop_conn */
			drop_conn(c);
		}
		return rc;
	}
	if (kind == SHMBI_OWED_EVENTFDS && rc == 0) {
		install_eventfds(c, fds, nfds);
		note_eventfds(c, reply);
		wake_live(c);
	} else {
		close_fds(fds, nfds);
	}
	cJSON_Delete(reply);
	return 0;
}

/* Connects and says hello (resume when we already hold a slot), waiting for the reply. On
 * success installs the connection and, on first attach, maps the segment and keeps the
 * eventfds. A resume that times out closes its connection: when the broker reads it later it
 * binds our slot to a connection that is gone, sees that, and keeps the slot unbound; the next
 * call resumes again. Caller holds c->ctl_lock (or is attaching). */
static int hello(shmb_client *c, int first)
{
	int fd = client_connect(c);
	if (fd < 0)
		return fd;
	cJSON *req = hello_req(c, first);
	if (!req) {
		close(fd);
		return SHMB_ENOMEM;
	}
	int asked = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "wake_all"));
	cJSON *reply = NULL;
	int fds[SHMB_MAX_WORKERS_LIMIT + 1];
	int nfds = 0;
	int rc = ctl_call(fd, req, &reply, fds, SHMB_MAX_WORKERS_LIMIT + 1, &nfds);
	cJSON_Delete(req);
	if (rc < 0 && !first && nfds > 0) {
		/* A refused resume carries the broker's segment: SHMB_ESTALE if it is not ours. */
		rc = resume_done(c, rc, reply, fds, nfds);
		nfds = 0; /* consumed */
		goto fail;
	}
	if (rc < 0)
		goto fail;
	cJSON *jslot = cJSON_GetObjectItemCaseSensitive(reply, "slot");
	cJSON *jgen = cJSON_GetObjectItemCaseSensitive(reply, "gen");
	if (!cJSON_IsNumber(jslot) || !cJSON_IsNumber(jgen) || nfds < 2 || jslot->valuedouble < 0 ||
	    jslot->valuedouble >= nfds - 1) {
		rc = SHMB_EBROKER;
		goto fail;
	}
	uint32_t slot = (uint32_t)jslot->valuedouble;
	uint32_t gen = (uint32_t)jgen->valuedouble;
	SHMB_FAULT("client.attach"); /* admitted by the broker, segment not mapped yet */
	if (first) {
		char why[512];
		const cJSON *jbytes = cJSON_GetObjectItemCaseSensitive(reply, "segment_bytes");
		uint64_t bytes = cJSON_IsNumber(jbytes) && jbytes->valuedouble > 0
					 ? (uint64_t)jbytes->valuedouble
					 : 0;
		/* The fd is the broker's shm file, not anyone else's (docs/security.md). */
		rc = trust_check_segment(fds[0], fd, bytes, why, sizeof why);
		if (rc == 0)
			rc = seg_map(fds[0], 1, &c->seg, why, sizeof why);
		if (rc == SHMB_EVERSION || rc == SHMB_ECORRUPT || rc == SHMB_EACCES)
			/* The library's diagnostics: which versions, what damage or whose file
			 * made it refuse the segment, which a code alone cannot say. */
			fprintf(stderr, "libshmb: refusing segment of '%s': %s\n", c->name, why);
		if (rc < 0)
			goto fail;
		struct stat st;
		if (fstat(fds[0], &st) == 0) {
			c->seg_dev = st.st_dev;
			c->seg_ino = st.st_ino;
		}
		if (slot >= c->seg.cfg.max_workers ||
		    (uint32_t)(nfds - 1) != c->seg.cfg.max_workers ||
		    (rc = await_live(&c->seg, fd, slot, gen)) < 0) {
			seg_unmap(&c->seg);
			rc = SHMB_EBROKER;
			goto fail;
		}
		seg_prefault_index(&c->seg);
		close(fds[0]);
		c->n_evfds = nfds - 1;
		c->evfds = malloc(sizeof(int) * (size_t)c->n_evfds);
		if (!c->evfds) {
			seg_unmap(&c->seg);
			c->n_evfds = 0;
			fds[0] = -1;
			rc = SHMB_ENOMEM;
			goto fail;
		}
		memcpy(c->evfds, fds + 1, sizeof(int) * (size_t)c->n_evfds);
	} else {
		/* A restarted broker: same segment (it adopted ours), new eventfds. */
		rc = resume_done(c, 0, reply, fds, nfds);
		nfds = 0; /* consumed */
		if (rc < 0)
			goto fail;
		c->ctl_fd = fd;
		c->owed_head = 0;
		c->owed_n = 0;
		cJSON_Delete(reply);
		return 0;
	}
	c->slot = slot;
	c->gen = gen;
	c->ctl_fd = fd;
	note_eventfds(c, reply);
	cJSON_Delete(reply);
	return 0;
fail:
	if (asked)
		uatomic_set(&c->woke_stale, 1); /* the wake_all may not have been done: ask again */
	if (!first && rc != SHMB_ENOMEM && rc != SHMB_ESTALE)
		rc = SHMB_EBROKER; /* a refused resume is not the caller's create or delete failing */
	if (first && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
		/* Admitted, but we cannot use the slot: release it (our EOF alone would not). */
		static const char bye[] = "{\"op\":\"detach\"}";
		(void)send(fd, bye, sizeof bye - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	close_fds(fds, nfds);
	cJSON_Delete(reply);
	close(fd);
	return rc;
}

int shmb_attach(const char *name, shmb_client **out)
{
	if (!out)
		return SHMB_EINVAL;
	*out = NULL;
	if (!name)
		name = ctl_default_name();
	char sock_path[sizeof((shmb_client *)0)->sock_path];
	if (seg_name_valid(name) < 0 || ctl_socket_path(name, sock_path, sizeof sock_path) < 0)
		return SHMB_EINVAL;
	pthread_once(&atfork_once, register_atfork);
	pthread_mutex_lock(&attach_lock);
	shmb_client *c = registry_share(name, sock_path);
	if (c) {
		/* At most one worker slot per process: share the client we have. */
		pthread_mutex_unlock(&attach_lock);
		*out = c;
		return 0;
	}
	int rc = SHMB_ENOMEM;
	c = calloc(1, sizeof *c);
	if (!c)
		goto out;
	c->fork_gen = shmbi_fork_gen;
	c->uid = uatomic_add_return(&client_uid_last, 1);
	c->ctl_fd = -1;
	c->refs = 1;
	c->spin_ns = SHMB_WAIT_SPIN_DEFAULT_NS;
	strcpy(c->name, name);
	strcpy(c->sock_path, sock_path);
	uint64_t seed = 0;
	if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed)
		seed = (uint64_t)shmb_mono_ms() * 2654435761u ^ (uint64_t)getpid() << 20;
	c->req_next = seed & REQ_ID_MASK;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->ctl_lock, NULL);
	pthread_mutex_init(&c->sub_lock, NULL);
	rc = hello(c, 1);
	/* The broker reads connections in the order they became readable, so it has normally
	 * taken our last detach (sent under attach_lock) before this hello; should it read the
	 * hello first, it refuses it (the pid still holds a slot): try again for a while. */
	for (int tries = 0; rc == SHMB_ENOWORKER && tries < 50 &&
			    shmb_mono_ms() - uatomic_read(&last_detach_ms) < 1000;
	     tries++) {
		poll(NULL, 0, 2);
		rc = hello(c, 1);
	}
	if (rc < 0) {
		pthread_mutex_destroy(&c->lock);
		pthread_mutex_destroy(&c->ctl_lock);
		pthread_mutex_destroy(&c->sub_lock);
		free(c);
		goto out;
	}
	/* Unfenced reads only when the broker uses membarrier and we are registered for it. */
	c->fenced = !((c->seg.flags & SHMB_SEG_F_MEMBARRIER) && rcu_membarrier_register());
	c->readers = calloc(c->seg.cfg.readers_per_worker, sizeof *c->readers);
	if (!c->readers || pthread_key_create(&c->tls_key, reader_tls_release) != 0) {
		free(c->readers);
		c->readers = NULL;
		pthread_mutex_unlock(&attach_lock);
		shmb_detach(c);
		return SHMB_ENOMEM;
	}
	registry_add(c);
	*out = c;
	rc = 0;
out:
	pthread_mutex_unlock(&attach_lock);
	return rc;
}

static int call_locked(shmb_client *c, const cJSON *req, int send_fd, cJSON **reply, int *fds,
		       int maxfds, int *nfds);

int shmbi_call(shmb_client *c, const cJSON *req, cJSON **reply)
{
	pthread_mutex_lock(&c->ctl_lock);
	int rc = call_locked(c, req, -1, reply, NULL, 0, NULL);
	pthread_mutex_unlock(&c->ctl_lock);
	return rc;
}

int shmbi_call_fd(shmb_client *c, const cJSON *req, int fd, cJSON **reply)
{
	pthread_mutex_lock(&c->ctl_lock);
	int rc = call_locked(c, req, fd, reply, NULL, 0, NULL);
	pthread_mutex_unlock(&c->ctl_lock);
	return rc;
}

int shmbi_call_req(shmb_client *c, const cJSON *req, cJSON **reply)
{
	*reply = NULL;
	char *args = cJSON_PrintUnformatted(req);
	cJSON *sent = cJSON_Duplicate(req, 1);
	if (!args || !sent) {
		cJSON_free(args);
		cJSON_Delete(sent);
		return SHMB_ENOMEM;
	}
	pthread_mutex_lock(&c->ctl_lock);
	uint64_t id;
	if (c->unresolved_args && strcmp(c->unresolved_args, args) == 0) {
		id = c->unresolved_id; /* a retry: the broker answers with the first outcome */
	} else {
		c->req_next = (c->req_next + 1) & REQ_ID_MASK;
		if (!c->req_next)
			c->req_next = 1;
		id = c->req_next;
	}
	cJSON_AddNumberToObject(sent, "req", (double)id);
	cJSON_AddNumberToObject(sent, "deadline_mono_ms",
				(double)(shmb_mono_ms() + ctl_timeout_ms()));
	int rc = call_locked(c, sent, -1, reply, NULL, 0, NULL);
	cJSON_free(c->unresolved_args);
	c->unresolved_args = NULL;
	if (rc == SHMB_EBROKER) {
		/* Maybe applied, maybe not (the broker applies it at most once): the same call
		 * again reuses the id. */
		c->unresolved_id = id;
		c->unresolved_args = args;
		args = NULL;
	}
	pthread_mutex_unlock(&c->ctl_lock);
	cJSON_free(args);
	cJSON_Delete(sent);
	return rc;
}

/* Data path: starts a resume on a fresh connection without waiting (take_owed completes it). */
static void resume_start(shmb_client *c)
{
	int fd = client_connect(c);
	if (fd < 0)
		return;
	cJSON *req = hello_req(c, 0);
	if (!req || ctl_send_json(fd, req, NULL, 0) < 0) {
		if (req && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "wake_all")))
			uatomic_set(&c->woke_stale, 1);
		cJSON_Delete(req);
		close(fd);
		return;
	}
	cJSON_Delete(req);
	c->ctl_fd = fd;
	c->owed_head = 0;
	c->owed_n = 0;
	owed_push(c, SHMBI_OWED_HELLO);
}

void shmbi_sync_eventfds(shmb_client *c)
{
	if (uatomic_read(&seg_hdr(&c->seg)->evfd_gen) == uatomic_read(&c->evfd_gen))
		return;
	/* The caller wakes through the stale set now (publish), or may have (wait). */
	if (!uatomic_read(&c->woke_stale))
		uatomic_set(&c->woke_stale, 1);
	/* At most one look a millisecond (a poll for replies costs a syscall), and never wait
	 * for ctl_lock: a create may hold it for the whole control timeout. */
	int64_t now = shmb_mono_ms();
	if (now < uatomic_read(&c->sync_look_ms) || pthread_mutex_trylock(&c->ctl_lock) != 0)
		return;
	uatomic_set(&c->sync_look_ms, now + 1);
	int timed_out = 0;
	/* Replies that have come: an eventfd set or a resume to complete (no waiting). */
	while (c->ctl_fd >= 0 && c->owed_n && take_owed(c, 0, &timed_out) == 0)
		;
	if (uatomic_read(&seg_hdr(&c->seg)->evfd_gen) != uatomic_read(&c->evfd_gen) &&
	    now >= uatomic_read(&c->sync_next_ms)) {
		/* Rate limited: with the broker dead or stopped, a publisher must not connect or
		 * send per call. */
		uatomic_set(&c->sync_next_ms, now + SHMBI_SYNC_INTERVAL_MS);
		if (c->ctl_fd >= 0 && c->owed_n >= SHMBI_OWED_MAX)
			drop_conn(c); /* a broker owing this much is gone or stalled: start over */
		if (c->ctl_fd < 0) {
			resume_start(c);
		} else if (!owed_has(c, SHMBI_OWED_HELLO) && !owed_has(c, SHMBI_OWED_EVENTFDS)) {
			cJSON *ask = cJSON_CreateObject();
			if (ask && cJSON_AddStringToObject(ask, "op", "eventfds")) {
				ask_wake_all(c, ask);
				if (ctl_send_json(c->ctl_fd, ask, NULL, 0) == 0) {
					owed_push(c, SHMBI_OWED_EVENTFDS);
				} else {
					/* The broker is gone (it restarted): resume now. */
					uatomic_set(&c->woke_stale, 1);
					drop_conn(c);
					resume_start(c);
				}
			}
			cJSON_Delete(ask);
		}
	}
	pthread_mutex_unlock(&c->ctl_lock);
}

/* One call on the control connection; caller holds ctl_lock. fds (may be NULL) receives the
 * fds of our reply. Replies come in order: first those owed (to calls that timed out, to what
 * the data path sent), then ours; all within one control timeout. */
/* send_fd >= 0: passed with the request (SCM_RIGHTS), again with a retry on a new connection. */
static int call_locked(shmb_client *c, const cJSON *req, int send_fd, cJSON **reply, int *fds,
		       int maxfds, int *nfds)
{
	*reply = NULL;
	if (nfds)
		*nfds = 0;
	if (uatomic_read(&seg_hdr(&c->seg)->retired))
		return SHMB_ESTALE; /* no broker serves our segment: nothing to ask */
	int rc = SHMB_EBROKER;
	int64_t deadline = shmb_mono_ms() + ctl_timeout_ms();
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->ctl_fd >= 0 && c->owed_n >= SHMBI_OWED_MAX)
			drop_conn(c);
		int timed_out = 0;
		/* A resume the data path sent must succeed before we send anything behind it: a
		 * refused one leaves the connection without our worker slot, and our request would
		 * not be ours (the broker refuses a request id there). So its outcome first. */
		rc = 0;
		while (rc == 0 && c->ctl_fd >= 0 && owed_has(c, SHMBI_OWED_HELLO)) {
			int64_t left = deadline - shmb_mono_ms();
			rc = take_owed(c, left > 0 ? (int)left : 0, &timed_out);
		}
		if (timed_out) {
			rc = SHMB_EBROKER; /* still owed; nothing of ours was sent */
			break;
		}
		if (rc == SHMB_ESTALE)
			break; /* our segment was replaced */
		if (c->ctl_fd < 0) {
			rc = hello(c, 0);
			if (rc < 0)
				break;
		}
		rc = ctl_send_json(c->ctl_fd, req, send_fd >= 0 ? &send_fd : NULL, send_fd >= 0);
		if (rc == SHMB_ENOMEM)
			break;
		if (rc < 0)
			rc = SHMB_EBROKER; /* the broker is gone (or does not read: EAGAIN) */
		while (rc == 0 && c->owed_n) {
			int64_t left = deadline - shmb_mono_ms();
			rc = take_owed(c, left > 0 ? (int)left : 0, &timed_out);
		}
		if (rc == 0) {
			int64_t left = deadline - shmb_mono_ms();
			rc = ctl_wait_reply(c->ctl_fd, left > 0 ? (int)left : 0, reply, fds, maxfds,
					    nfds, &timed_out);
		}
		if (timed_out) {
			/* A slow broker is not a dead one: the connection is kept, and our reply is
			 * dropped when it comes. */
			owed_push(c, SHMBI_OWED_DROP);
			rc = SHMB_EBROKER;
			break;
		}
		if (rc != SHMB_EBROKER || *reply)
			break;
		/* The connection is gone or garbled: the broker died or restarted. Drop it and
		 * try once more with a fresh one (a restarted broker adopted our segment). */
		drop_conn(c);
	}
	return rc;
}

void shmb_detach(shmb_client *c)
{
	if (!c)
		return;
	int mine = c->fork_gen == shmbi_fork_gen;
	/* The calling thread's reader slot goes with its reference: with the client shared by
	 * the threads that attached it, another thread's detach may free c before this thread
	 * exits, and its exit must then run no destructor of ours. */
	if (mine)
		reader_tls_drop_own(c);
	/* attach_lock from the last release until the detach is sent and the connection closed: an
	 * attach of another thread of this process (which then finds no client to share and sends
	 * a hello) comes after our detach on the broker's side, which would otherwise refuse it
	 * (the pid still holding a slot on a live connection). */
	if (mine)
		pthread_mutex_lock(&attach_lock);
	if (mine && !registry_release(c)) {
		pthread_mutex_unlock(&attach_lock);
		return; /* another shmb_attach of this process still holds it */
	}
	if (mine && c->readers && !uatomic_read(&seg_hdr(&c->seg)->retired)) {
		/* Release every reader slot this process holds (threads may not have exited). Under
		 * the lock: a thread exiting now releases its own (reader_tls_release). Not in a
		 * retired segment (see reader_tls_release). */
		pthread_mutex_lock(&c->lock);
		for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++) {
			struct shmbi_reader_tls *t = &c->readers[k];
			if (t->slot) {
				uatomic_set(&t->slot->ctr, 0);
				uatomic_set(&t->slot->in_use, 0);
			}
		}
		pthread_mutex_unlock(&c->lock);
	}
	if (c->readers)
		pthread_key_delete(c->tls_key);
	/* "detach" (no reply awaited; never blocks) and closing the connection release the slot:
	 * the broker settles it at the EOF, even if the process exits before the broker reads it.
	 * An EOF alone is not a release (it keeps the slot of a running process), so when there is
	 * no connection (a broker restart) or the message cannot be queued on it, the detach goes
	 * on a fresh connection naming the slot. If no broker accepts one now, the slot is
	 * released when this process exits, or when it attaches again (a fresh hello from a
	 * process whose slot has no connection releases that slot). A child after fork only closes
	 * its own copies of the descriptors. */
	if (mine) {
		static const char bye[] = "{\"op\":\"detach\"}";
		int sent = c->ctl_fd >= 0 && send(c->ctl_fd, bye, sizeof bye - 1,
						  MSG_NOSIGNAL | MSG_DONTWAIT) == sizeof bye - 1;
		int fd = sent ? -1 : client_connect(c);
		if (fd >= 0) {
			char msg[96];
			int n = snprintf(msg, sizeof msg,
					 "{\"op\":\"detach\",\"slot\":%u,\"gen\":%u}", c->slot,
					 c->gen);
			(void)send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
			close(fd);
		}
	}
	/* Unmapped before the connection ends: an EOF from a process that no longer maps the
	 * segment releases its slot, should the detach above have been lost. */
	seg_unmap(&c->seg);
	if (c->ctl_fd >= 0)
		close(c->ctl_fd);
	if (mine) {
		uatomic_set(&last_detach_ms, shmb_mono_ms());
		pthread_mutex_unlock(&attach_lock);
	}
	cJSON_free(c->unresolved_args);
	close_fds(c->evfds, c->n_evfds);
	free(c->evfds);
	free(c->readers);
	free(c->subs);
	free(c->ready_heads);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->ctl_lock);
	pthread_mutex_destroy(&c->sub_lock);
	free(c);
}

int shmb_fd(const shmb_client *c)
{
	if (!shmbi_client_ok(c) || c->slot >= (uint32_t)c->n_evfds)
		return shmbi_client_err(c);
	return c->evfds[c->slot];
}

/* ---- reader slots (one per thread that reads) ---- */

static void reader_tls_release(void *p)
{
	struct shmbi_reader_tls *t = p;
	shmb_client *c = t->c;
	if (!c)
		return;
	if (c->fork_gen != shmbi_fork_gen) {
		/* A thread of a forked child: the slot is the parent's; never touch it (nor the
		 * inherited lock, which another parent thread may have held at fork). */
		t->c = NULL;
		return;
	}
	pthread_mutex_lock(&c->lock);
	/* A retired segment may have been truncated under us (its header page is left): its
	 * reader slots are no one's concern any more, and touching them could be a SIGBUS. */
	if (t->slot && !uatomic_read(&seg_hdr(&c->seg)->retired)) {
		/* A thread that exits inside a section would block reclamation forever. */
		uatomic_set(&t->slot->ctr, 0);
		uatomic_set(&t->slot->in_use, 0);
	}
	t->slot = NULL;
	t->depth = 0;
	t->c = NULL;
	pthread_mutex_unlock(&c->lock);
}

/* The reader of the client this thread used last, so the hot paths (open, publish, cursor_next:
 * a lock and an unlock each) do not call pthread_getspecific twice per call. Tagged with the
 * client's uid, not only its address: a client detached and another attached at the same address
 * never matches a stale entry. A forked child never gets here (shmbi_client_ok fails first). */
static __thread struct {
	const shmb_client *c;
	uint64_t uid;
	struct shmbi_reader_tls *t;
} tls_last;

/* The calling thread gives up its reader slot of c, if it holds one, and forgets c: shmb_detach
 * of one reference (see there). */
static void reader_tls_drop_own(shmb_client *c)
{
	if (!c->readers)
		return;
	struct shmbi_reader_tls *t = pthread_getspecific(c->tls_key);
	if (t) {
		pthread_setspecific(c->tls_key, NULL);
		reader_tls_release(t);
	}
	if (tls_last.c == c)
		tls_last.c = NULL;
}

static struct shmbi_reader_tls *reader_tls_get(shmb_client *c)
{
	if (tls_last.c == c && tls_last.uid == c->uid)
		return tls_last.t;
	struct shmbi_reader_tls *t = pthread_getspecific(c->tls_key);
	if (t)
		goto found;
	pthread_mutex_lock(&c->lock);
	for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++) {
		if (c->readers[k].c)
			continue;
		struct shmb_reader *r = seg_reader(&c->seg, c->slot, k);
		if (!r)
			break;
		t = &c->readers[k];
		*t = (struct shmbi_reader_tls){ .c = c, .slot = r, .k = k };
		uatomic_set(&r->ctr, 0);
		uatomic_set(&r->tid, (int32_t)syscall(SYS_gettid));
		uatomic_set(&r->in_use, 1);
		break;
	}
	pthread_mutex_unlock(&c->lock);
	if (!t)
		return NULL;
	pthread_setspecific(c->tls_key, t);
found:
	tls_last.c = c;
	tls_last.uid = c->uid;
	tls_last.t = t;
	return t;
}

struct shmbi_reader_tls *shmbi_read_lock_pinned(shmb_client *c, uint32_t pin, int *rc)
{
	if (!shmbi_client_ok(c)) {
		*rc = shmbi_client_err(c);
		return NULL;
	}
	/* Line 6, which entering reads anyway (rcu_gp): a segment no broker serves any more
	 * takes no publish nobody would see, and gives no session that may be gone. */
	if (uatomic_read(&seg_hdr(&c->seg)->retired)) {
		*rc = SHMB_ESTALE;
		return NULL;
	}
	struct shmbi_reader_tls *t = reader_tls_get(c);
	if (!t) {
		*rc = SHMB_ENOREADER;
		return NULL;
	}
	if (t->depth++ == 0)
		rcu_reader_enter_pinned(&c->seg, t->slot, c->fenced, pin);
	else if (uatomic_read(&t->slot->pin) != pin && uatomic_read(&t->slot->pin) != 0)
		rcu_reader_widen(t->slot, c->fenced); /* nested, another scope: any record */
	return t;
}

struct shmbi_reader_tls *shmbi_read_lock_tls(shmb_client *c, int *rc)
{
	return shmbi_read_lock_pinned(c, 0, rc);
}

int shmbi_read_lock(shmb_client *c)
{
	int rc = 0;
	return shmbi_read_lock_tls(c, &rc) ? 0 : rc;
}

void shmbi_read_unlock(shmb_client *c)
{
	struct shmbi_reader_tls *t = tls_last.c == c && tls_last.uid == c->uid
					     ? tls_last.t
					     : pthread_getspecific(c->tls_key);
	if (t && t->depth && --t->depth == 0)
		rcu_reader_exit(t->slot, c->fenced);
}
