/* trust.c - who a process believes is its broker (see trust.h; the rules and the attack they stop
 * are in docs/security.md).
 *
 * The attack: /tmp is writable by everyone, so another local user can create /tmp/shmb-<our uid>
 * before we do, run a broker of its own there and read whatever our workers send it (tenant,
 * principal, session ids, payloads). So, before connecting, a client requires every directory
 * from the runtime dir up to / to belong to a trusted uid and to be writable by nobody else
 * (except a root-owned sticky directory such as /tmp itself, where others can add entries but not
 * replace ours), and the socket file to belong to a trusted uid. Those checks race with a
 * rename, so they are the diagnosis, not the gate: the gate is SO_PEERCRED after connect (the
 * kernel's record of who called listen(), which no file system trick changes), checked before
 * the client sends anything, and then the owner of the segment fd the broker passes.
 *
 * Nothing here keeps state; $SHMB_TRUSTED_UIDS is read at each check (connects are rare). */
#include "trust.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <linux/magic.h>

#include "shmb.h"

#define TRUST_MAX_DEPTH 64 /* directories checked above a runtime dir, at most */

static int fail(int code, char *why, size_t whylen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(int code, char *why, size_t whylen, const char *fmt, ...)
{
	if (why && whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* 1 when uid is listed in $SHMB_TRUSTED_UIDS. A bounded scan of the string, no allocation. */
static int env_trusts(uid_t uid)
{
	const char *s = getenv("SHMB_TRUSTED_UIDS");
	if (!s)
		return 0;
	for (size_t i = 0; s[i] && i < 4096;) {
		if (s[i] < '0' || s[i] > '9') {
			i++;
			continue;
		}
		unsigned long long v = 0;
		size_t start = i;
		while (s[i] >= '0' && s[i] <= '9' && i - start < 12)
			v = v * 10 + (unsigned)(s[i++] - '0');
		/* A token that runs into other characters ("10x1") is not a uid. */
		int clean = (s[i] == '\0' || s[i] == ',' || s[i] == ' ' || s[i] == '\t') &&
			    (start == 0 || s[start - 1] == ',' || s[start - 1] == ' ' ||
			     s[start - 1] == '\t');
		if (clean && v < (unsigned long long)(uid_t)-1 && (uid_t)v == uid)
			return 1;
		while (s[i] >= '0' && s[i] <= '9')
			i++;
	}
	return 0;
}

int trust_uid(uid_t uid, int env)
{
	return uid == 0 || uid == geteuid() || (env && env_trusts(uid));
}

/* "us (uid 1001), root or a uid in SHMB_TRUSTED_UIDS", for messages. */
static const char *whom(char *buf, size_t len, int env)
{
	snprintf(buf, len, "us (uid %u), root%s", (unsigned)geteuid(),
		 env ? " or a uid in SHMB_TRUSTED_UIDS" : "");
	return buf;
}

/* One directory of the chain. */
static int check_one_dir(const char *path, const char *what, int env, char *why, size_t whylen)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return fail(errno == ENOENT ? SHMB_ENOENT : SHMB_EACCES, why, whylen,
			    "cannot check %s %s: %s", what, path, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return fail(SHMB_EACCES, why, whylen, "%s %s is not a directory", what, path);
	if (!trust_uid(st.st_uid, env)) {
		char who[96];
		return fail(SHMB_EACCES, why, whylen, "%s %s belongs to uid %u, not to %s", what,
			    path, (unsigned)st.st_uid, whom(who, sizeof who, env));
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_uid == 0 && (st.st_mode & S_ISVTX)))
		return fail(SHMB_EACCES, why, whylen,
			    "%s %s (uid %u, mode %04o) is writable by %s and is not a root-owned "
			    "sticky directory: they could replace the broker's socket",
			    what, path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
			    (st.st_mode & S_IWOTH) ? "every user" : "its group");
	return 0;
}

int trust_check_dir(const char *dir, int env, char *why, size_t whylen)
{
	char *real = realpath(dir, NULL);
	if (!real)
		return fail(errno == ENOENT || errno == ENOTDIR ? SHMB_ENOENT : SHMB_EACCES, why,
			    whylen, "runtime dir %s: %s", dir, strerror(errno));
	int rc = check_one_dir(real, "runtime dir", env, why, whylen);
	/* Every directory above: whoever can write one of them can rename the one below. */
	for (int depth = 0; rc == 0 && depth < TRUST_MAX_DEPTH; depth++) {
		char *slash = strrchr(real, '/');
		if (!slash || (slash == real && real[1] == '\0'))
			break;
		slash[slash == real ? 1 : 0] = '\0'; /* "/a/b" -> "/a", "/a" -> "/" */
		rc = check_one_dir(real, "directory", env, why, whylen);
		if (rc == SHMB_ENOENT)
			rc = SHMB_EACCES; /* an ancestor of a directory that exists vanished */
	}
	free(real);
	return rc;
}

int trust_check_socket(const char *dir, const char *sock_path, char *why, size_t whylen)
{
	int rc = trust_check_dir(dir, 1, why, whylen);
	if (rc == SHMB_ENOENT)
		return SHMB_EBROKER; /* no runtime dir: no broker ever ran here */
	if (rc < 0)
		return rc;
	struct stat st;
	if (lstat(sock_path, &st) < 0)
		return fail(errno == ENOENT ? SHMB_EBROKER : SHMB_EACCES, why, whylen,
			    "broker socket %s: %s", sock_path, strerror(errno));
	if (!trust_uid(st.st_uid, 1)) {
		char who[96];
		return fail(SHMB_EACCES, why, whylen,
			    "broker socket %s belongs to uid %u, not to %s", sock_path,
			    (unsigned)st.st_uid, whom(who, sizeof who, 1));
	}
	if (!S_ISSOCK(st.st_mode))
		return fail(SHMB_EBROKER, why, whylen, "%s is not a socket", sock_path);
	return 0;
}

int trust_check_peer(int fd, const char *sock_path, uid_t *uid, char *why, size_t whylen)
{
	struct ucred cr;
	socklen_t len = sizeof cr;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || len != sizeof cr)
		return fail(SHMB_EBROKER, why, whylen, "no peer credentials on %s: %s", sock_path,
			    strerror(errno));
	*uid = cr.uid;
	if (!trust_uid(cr.uid, 1)) {
		char who[96];
		return fail(SHMB_EACCES, why, whylen,
			    "the broker on %s is pid %d of uid %u, not of %s", sock_path,
			    (int)cr.pid, (unsigned)cr.uid, whom(who, sizeof who, 1));
	}
	return 0;
}

int trust_check_segment(int seg_fd, int ctl_fd, uint64_t size, char *why, size_t whylen)
{
	struct ucred cr;
	socklen_t len = sizeof cr;
	if (getsockopt(ctl_fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || len != sizeof cr)
		return fail(SHMB_EACCES, why, whylen, "no broker credentials: %s", strerror(errno));
	uid_t broker_uid = cr.uid;
	struct stat st;
	struct statfs sf;
	if (fstat(seg_fd, &st) < 0 || fstatfs(seg_fd, &sf) < 0)
		return fail(SHMB_EACCES, why, whylen, "cannot check the segment fd: %s",
			    strerror(errno));
	if (!S_ISREG(st.st_mode) || sf.f_type != TMPFS_MAGIC)
		return fail(SHMB_EACCES, why, whylen,
			    "the segment fd is not a shared-memory file (mode %06o, file system "
			    "0x%lx)",
			    (unsigned)st.st_mode, (unsigned long)sf.f_type);
	if (st.st_uid != broker_uid && !trust_uid(st.st_uid, 1))
		return fail(
			SHMB_EACCES, why, whylen,
			"the segment belongs to uid %u, not to the broker (uid %u), us, root or "
			"a uid in SHMB_TRUSTED_UIDS",
			(unsigned)st.st_uid, (unsigned)broker_uid);
	if (st.st_mode & S_IRWXO)
		return fail(SHMB_EACCES, why, whylen,
			    "the segment (uid %u) has mode %04o: every local user may %s it",
			    (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
			    (st.st_mode & S_IWOTH) ? "write" : "read");
	if (size && (uint64_t)st.st_size != size)
		return fail(SHMB_ECORRUPT, why, whylen,
			    "the segment is %lld bytes but the broker said %llu (truncated?)",
			    (long long)st.st_size, (unsigned long long)size);
	return 0;
}
