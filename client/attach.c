/* attach.c - a process joining a broker instance: admission over the control socket, mapping
 * the segment, the eventfd set, reconnecting after a broker restart, and detaching.
 *
 * The client keeps its control connection open for its whole life: the broker treats the
 * connection's end (and the process's pidfd) as the worker's end and then settles its slot.
 * After a broker restart the connection reads EOF; the next call that needs the broker
 * reconnects and says "hello" with resume {slot, gen}, so the adopting broker gives the same
 * worker slot back (our reader slots live there). Eventfds received again are dup2()ed onto the
 * old descriptor numbers, so an fd sitting in the application's epoll set stays valid.
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
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ctl.h"
#include "fault.h"
#include "internal.h"
#include "rcu.h"
#include "trust.h"

uint64_t shmbi_fork_gen = 1;
static uint64_t client_uid_last; /* shmb_client.uid of the latest attach */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Every live client of this process, so that a child after fork() can drop its copies of their
 * control connections: otherwise the parent's later detach would not reach the broker (the
 * child would keep the socket open) and the child could speak for the parent's slot. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static shmb_client *registry;

static void on_fork_prepare(void)
{
	pthread_mutex_lock(&registry_lock);
}

static void on_fork_parent(void)
{
	pthread_mutex_unlock(&registry_lock);
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

static void registry_remove(shmb_client *c)
{
	pthread_mutex_lock(&registry_lock);
	for (shmb_client **pp = &registry; *pp; pp = &(*pp)->reg_next)
		if (*pp == c) {
			*pp = c->reg_next;
			break;
		}
	pthread_mutex_unlock(&registry_lock);
}

static void reader_tls_release(void *p);

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
	for (int waited = 0; waited < SHMB_CTL_TIMEOUT_MS; waited++) {
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

/* Connects and says hello (resume when we already hold a slot). On success installs the
 * connection and, on first attach, maps the segment and keeps the eventfds. Caller holds
 * c->ctl_lock (or is attaching). */
static int hello(shmb_client *c, int first)
{
	char why[512];
	int fd = ctl_connect(c->name, why, sizeof why);
	if (fd == SHMB_EACCES && why[0])
		/* Not our broker, or its socket shut us out (docs/security.md): which path
		 * or peer, owned by whom. */
		fprintf(stderr, "libshmb: not attaching to broker '%s': %s\n", c->name, why);
	if (fd < 0)
		return fd;
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "hello");
	cJSON_AddNumberToObject(req, "pid", (double)getpid());
	cJSON_AddNumberToObject(req, "layout_major", SHMB_LAYOUT_MAJOR);
	cJSON_AddNumberToObject(req, "layout_minor", SHMB_LAYOUT_MINOR);
	cJSON_AddNumberToObject(req, "fingerprint", (double)shmb_layout_fingerprint());
	if (!first) {
		cJSON *r = cJSON_AddObjectToObject(req, "resume");
		cJSON_AddNumberToObject(r, "slot", c->slot);
		cJSON_AddNumberToObject(r, "gen", c->gen);
	}
	cJSON *reply = NULL;
	int fds[SHMB_MAX_WORKERS_LIMIT + 1];
	int nfds = 0;
	int rc = ctl_call(fd, req, &reply, fds, SHMB_MAX_WORKERS_LIMIT + 1, &nfds);
	cJSON_Delete(req);
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
		/* A restarted broker: same segment (it adopted ours), new eventfds. Our reader
		 * slots live in our old worker slot: a different one would not cover them, so
		 * refuse it (the broker frees it when we close). */
		if (slot != c->slot) {
			rc = SHMB_EBROKER;
			goto fail;
		}
		if ((rc = await_live(&c->seg, fd, slot, gen)) < 0)
			goto fail;
		close(fds[0]);
		fds[0] = -1;
		install_eventfds(c, fds + 1, nfds - 1);
	}
	c->slot = slot;
	c->gen = gen;
	c->ctl_fd = fd;
	note_eventfds(c, reply);
	cJSON_Delete(reply);
	return 0;
fail:
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
	if (seg_name_valid(name) < 0)
		return SHMB_EINVAL;
	pthread_once(&atfork_once, register_atfork);
	shmb_client *c = calloc(1, sizeof *c);
	if (!c)
		return SHMB_ENOMEM;
	c->fork_gen = shmbi_fork_gen;
	c->uid = uatomic_add_return(&client_uid_last, 1);
	c->ctl_fd = -1;
	c->spin_ns = SHMB_WAIT_SPIN_DEFAULT_NS;
	strcpy(c->name, name);
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->ctl_lock, NULL);
	pthread_mutex_init(&c->sub_lock, NULL);
	int rc = hello(c, 1);
	if (rc < 0) {
		pthread_mutex_destroy(&c->lock);
		pthread_mutex_destroy(&c->ctl_lock);
		pthread_mutex_destroy(&c->sub_lock);
		free(c);
		return rc;
	}
	/* Unfenced reads only when the broker uses membarrier and we are registered for it. */
	c->fenced = !((c->seg.flags & SHMB_SEG_F_MEMBARRIER) && rcu_membarrier_register());
	c->readers = calloc(c->seg.cfg.readers_per_worker, sizeof *c->readers);
	if (!c->readers || pthread_key_create(&c->tls_key, reader_tls_release) != 0) {
		free(c->readers);
		c->readers = NULL;
		shmb_detach(c);
		return SHMB_ENOMEM;
	}
	registry_add(c);
	*out = c;
	return 0;
}

static int call_locked(shmb_client *c, const cJSON *req, cJSON **reply, int *fds, int maxfds,
		       int *nfds);

int shmbi_call(shmb_client *c, const cJSON *req, cJSON **reply)
{
	pthread_mutex_lock(&c->ctl_lock);
	int rc = call_locked(c, req, reply, NULL, 0, NULL);
	pthread_mutex_unlock(&c->ctl_lock);
	return rc;
}

void shmbi_sync_eventfds(shmb_client *c)
{
	if (uatomic_read(&seg_hdr(&c->seg)->evfd_gen) == uatomic_read(&c->evfd_gen))
		return;
	pthread_mutex_lock(&c->ctl_lock);
	/* Check again: another thread may have fetched it meanwhile. */
	if (uatomic_read(&seg_hdr(&c->seg)->evfd_gen) != uatomic_read(&c->evfd_gen)) {
		cJSON *req = cJSON_CreateObject();
		cJSON *reply = NULL;
		int fds[SHMB_MAX_WORKERS_LIMIT], nfds = 0;
		if (req && cJSON_AddStringToObject(req, "op", "eventfds") &&
		    call_locked(c, req, &reply, fds, SHMB_MAX_WORKERS_LIMIT, &nfds) == 0) {
			install_eventfds(c, fds, nfds);
			note_eventfds(c, reply);
		} else {
			close_fds(fds, nfds);
		}
		cJSON_Delete(reply);
		cJSON_Delete(req);
	}
	pthread_mutex_unlock(&c->ctl_lock);
}

/* One call on the control connection; caller holds ctl_lock. fds (may be NULL) receives the
 * fds of our reply. */
static int call_locked(shmb_client *c, const cJSON *req, cJSON **reply, int *fds, int maxfds,
		       int *nfds)
{
	*reply = NULL;
	if (nfds)
		*nfds = 0;
	int rc = SHMB_EBROKER;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (c->ctl_fd < 0) {
			rc = hello(c, 0);
			if (rc < 0)
				break;
			c->ctl_stale = 0;
		}
		rc = ctl_send_json(c->ctl_fd, req, NULL, 0);
		int timed_out = 0;
		/* Replies come in order: first those owed to requests that timed out earlier,
		 * then ours. A slow broker is not a dead one: the connection is kept (closing it
		 * would tell the broker this worker detached). */
		while (rc == 0) {
			int ours = c->ctl_stale == 0;
			rc = ctl_wait_reply(c->ctl_fd, SHMB_CTL_TIMEOUT_MS, reply,
					    ours ? fds : NULL, ours ? maxfds : 0,
					    ours ? nfds : NULL, &timed_out);
			if (timed_out || ours)
				break;
			c->ctl_stale--;
			cJSON_Delete(*reply);
			*reply = NULL;
			rc = 0;
		}
		if (timed_out) {
			c->ctl_stale++;
			rc = SHMB_EBROKER;
			break;
		}
		if (rc != SHMB_EBROKER || *reply)
			break;
		/* The connection is gone or garbled: the broker died or restarted. Drop it and
		 * try once more with a fresh one (a restarted broker adopted our segment). */
		close(c->ctl_fd);
		c->ctl_fd = -1;
	}
	return rc;
}

void shmb_detach(shmb_client *c)
{
	if (!c)
		return;
	int mine = c->fork_gen == shmbi_fork_gen;
	if (mine)
		registry_remove(c);
	if (mine && c->readers) {
		/* Release every reader slot this process holds (threads may not have exited). */
		for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++) {
			struct shmbi_reader_tls *t = &c->readers[k];
			if (t->slot) {
				uatomic_set(&t->slot->ctr, 0);
				uatomic_set(&t->slot->in_use, 0);
			}
		}
	}
	if (c->readers)
		pthread_key_delete(c->tls_key);
	/* Closing the connection tells the broker we are gone; it settles the slot. The "detach"
	 * notification before it (no reply; never blocks) tells the broker this is a release,
	 * even if the process exits before the broker reads the EOF. A child after fork only
	 * closes its own copies of the descriptors. */
	if (c->ctl_fd >= 0) {
		static const char bye[] = "{\"op\":\"detach\"}";
		if (mine)
			(void)send(c->ctl_fd, bye, sizeof bye - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		close(c->ctl_fd);
	}
	close_fds(c->evfds, c->n_evfds);
	free(c->evfds);
	seg_unmap(&c->seg);
	free(c->readers);
	free(c->subs);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->ctl_lock);
	pthread_mutex_destroy(&c->sub_lock);
	free(c);
}

int shmb_fd(const shmb_client *c)
{
	if (!shmbi_client_ok(c) || c->slot >= (uint32_t)c->n_evfds)
		return SHMB_EINVAL;
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
	if (t->slot) {
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
		*rc = SHMB_EINVAL;
		return NULL;
	}
	struct shmbi_reader_tls *t = reader_tls_get(c);
	if (!t) {
		*rc = SHMB_EFULL;
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
