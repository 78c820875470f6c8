/* access.c - who may reach the broker through the file system: the control socket's group, ACL
 * and mode, and the mode of the segment's name (docs/security.md).
 *
 * SO_PEERCRED at accept (control.c, peer_allowed) is the gate: the broker's uid, root, and a
 * process with a gid in allowed_gids (primary or supplementary) are served. The socket file's
 * permissions are the kernel's check before that one, and are set so that it admits the same
 * set, no more: connect() needs write permission on the socket, so
 *   - no allowed_gids: the owner bits of socket_mode only (the file's group is the broker's
 *     primary group, which is not admitted);
 *   - one allowed gid: the file's group becomes that gid (chown works for root, or for a broker
 *     in that group) with socket_mode's group bits;
 *   - otherwise (several gids, or a chown we may not make): a POSIX ACL with one named-group
 *     entry per allowed gid carrying socket_mode's group bits, and none for the file's group;
 *   - if the file system has no ACLs (EOPNOTSUPP): the group bits are given to every user,
 *     logged, and SO_PEERCRED alone decides; any other failure stops the start.
 * socket_mode itself may not give "other" write permission (config.c refuses it).
 *
 * The segment's name (/dev/shm/shmb.<name>) is never how a worker maps it: workers get the fd
 * over the socket after admission. The name serves the broker's successor (adoption) and
 * shmctl's read-only inspection of a dead broker, so it is owner read-write plus at most group
 * read (segment_mode "0640"): no other uid can map it read-write, nor truncate it. */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "broker.h"

/* The kernel's POSIX ACL xattr format (linux/posix_acl_xattr.h; little-endian). */
#define ACL_XATTR_VERSION 0x0002
#define ACL_TAG_USER_OBJ 0x01
#define ACL_TAG_GROUP_OBJ 0x04
#define ACL_TAG_GROUP 0x08
#define ACL_TAG_MASK 0x10
#define ACL_TAG_OTHER 0x20
#define ACL_NO_ID 0xffffffffu

struct acl_entry {
	uint16_t tag;
	uint16_t perm;
	uint32_t id;
};

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Sets an access ACL: owner `own` (rwx bits 0..7), the file's group nothing, each gid `grp`,
 * other nothing. Returns 0 or -1 with errno. */
static int set_group_acl(const char *path, unsigned own, unsigned grp, const uint32_t *gids,
			 uint32_t n)
{
	uint32_t sorted[BRK_MAX_GIDS];
	memcpy(sorted, gids, n * sizeof *gids);
	qsort(sorted, n, sizeof *sorted, cmp_u32); /* the kernel wants named entries in id order */
	struct {
		uint32_t version;
		struct acl_entry e[BRK_MAX_GIDS + 4];
	} acl;
	uint32_t k = 0;
	acl.version = htole32(ACL_XATTR_VERSION);
	acl.e[k++] = (struct acl_entry){ htole16(ACL_TAG_USER_OBJ), htole16(own), ACL_NO_ID };
	acl.e[k++] = (struct acl_entry){ htole16(ACL_TAG_GROUP_OBJ), 0, ACL_NO_ID };
	for (uint32_t i = 0; i < n; i++)
		if (i == 0 || sorted[i] != sorted[i - 1])
			acl.e[k++] = (struct acl_entry){ htole16(ACL_TAG_GROUP), htole16(grp),
							 htole32(sorted[i]) };
	acl.e[k++] = (struct acl_entry){ htole16(ACL_TAG_MASK), htole16(grp), ACL_NO_ID };
	acl.e[k++] = (struct acl_entry){ htole16(ACL_TAG_OTHER), 0, ACL_NO_ID };
	size_t len = sizeof acl.version + k * sizeof acl.e[0];
	return setxattr(path, "system.posix_acl_access", &acl, len, 0);
}

static void gid_list(const struct brk *b, char *buf, size_t len)
{
	size_t n = 0;
	buf[0] = '\0';
	for (uint32_t i = 0; i < b->cfg.n_gids && n + 12 < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s%u", i ? "," : "",
				      (unsigned)b->cfg.allowed_gids[i]);
}

int brk_access_socket(struct brk *b)
{
	const char *path = b->sock_path;
	unsigned own = b->cfg.socket_mode & 0700, grp = b->cfg.socket_mode & 0070;
	if (b->cfg.n_gids == 0 || grp == 0) {
		if (chmod(path, own) < 0) {
			brk_fatal("cannot chmod %s to %04o: %s", path, own, strerror(errno));
			return 1;
		}
		return 0;
	}
	char gids[BRK_MAX_GIDS * 11 + 1];
	gid_list(b, gids, sizeof gids);
	if (b->cfg.n_gids == 1 && chown(path, (uid_t)-1, (gid_t)b->cfg.allowed_gids[0]) == 0) {
		if (chmod(path, own | grp) < 0) {
			brk_fatal("cannot chmod %s to %04o: %s", path, own | grp, strerror(errno));
			return 1;
		}
		return 0;
	}
	/* chmod first: it rewrites the ACL's mask and the owner entry; the ACL then sets both. */
	if (chmod(path, own) == 0 &&
	    set_group_acl(path, own >> 6, grp >> 3, b->cfg.allowed_gids, b->cfg.n_gids) == 0) {
		brk_log("socket %s: groups %s may connect (POSIX ACL)", path, gids);
		return 0;
	}
	int e = errno;
	if (e != EOPNOTSUPP && e != ENOTSUP) {
		brk_fatal("cannot give groups %s access to %s (ACL): %s", gids, path, strerror(e));
		return 1;
	}
	unsigned wide = own | grp | (grp >> 3);
	if (chmod(path, wide) < 0) {
		brk_fatal("cannot chmod %s to %04o: %s", path, wide, strerror(errno));
		return 1;
	}
	brk_warn("socket %s: cannot give only groups %s access (ACL: %s): it is mode %04o, "
		 "open to every local user, and the credential check (SO_PEERCRED) alone admits "
		 "the broker's uid, root and those groups",
		 path, gids, strerror(e), wide);
	return 0;
}

uint32_t brk_access_segment_mode(const struct brk *b)
{
	return (b->cfg.segment_mode & 0640) | 0600;
}
