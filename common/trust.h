/* trust.h - who a process believes is its broker: the checks a client makes before it says a
 * word to a broker (the runtime dir, the socket file, the peer's SO_PEERCRED) and on the segment
 * fd it receives, and the same directory rules the broker applies to its own runtime dir.
 *
 * A trusted uid is our own effective uid, root, or one listed in $SHMB_TRUSTED_UIDS
 * ("1001,1002": decimal uids separated by commas or spaces; anything else in it is ignored, so a
 * typo trusts less, never more). docs/security.md states the rules and why each exists. Every
 * check fills `why` (may be NULL) with one sentence naming the path or peer and its owner. */
#ifndef SHMB_TRUST_H
#define SHMB_TRUST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* 1 when uid is our euid, root, or in $SHMB_TRUSTED_UIDS (when env is 1); else 0. */
int trust_uid(uid_t uid, int env);

/* The directory dir and every directory above it (symlinks resolved) must be owned by a trusted
 * uid (trust_uid(uid, env)) and writable by neither group nor others, unless owned by root with
 * the sticky bit (like /tmp). Returns 0, SHMB_EACCES, or SHMB_ENOENT (dir does not exist). */
int trust_check_dir(const char *dir, int env, char *why, size_t whylen);

/* A client's checks on <runtime dir>/<name>.sock before connecting: the runtime dir as above
 * (env 1), and the socket file (not followed if a symlink) owned by a trusted uid.
 * Returns 0, SHMB_EACCES, or SHMB_EBROKER (no such dir or socket: nobody serves it). */
int trust_check_socket(const char *dir, const char *sock_path, char *why, size_t whylen);

/* After connect: the peer's SO_PEERCRED uid must be trusted. *uid gets it. Returns 0,
 * SHMB_EACCES, or SHMB_EBROKER (no credentials: not a Unix socket peer). */
int trust_check_peer(int fd, const char *sock_path, uid_t *uid, char *why, size_t whylen);

/* The segment fd the broker on ctl_fd sent: a regular file on tmpfs (shm_open's /dev/shm, or a
 * memfd), owned by the broker's SO_PEERCRED uid or a trusted uid, with no permission for
 * "other" (every local user could read or write it), of exactly `size` bytes (0: not checked).
 * Returns 0, SHMB_EACCES (type, owner or mode), or SHMB_ECORRUPT (size). */
int trust_check_segment(int seg_fd, int ctl_fd, uint64_t size, char *why, size_t whylen);

#endif
