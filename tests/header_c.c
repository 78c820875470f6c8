/* header_c.c - shmb.h compiles on its own as strict C99 (-pedantic-errors) and links, the
 * second edition of the contract (issue 11) included. */
#include <shmb.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
	shmb_session_info info;
	shmb_event ev;
	memset(&info, 0, sizeof info);
	memset(&ev, 0, sizeof ev);
	char sid[SHMB_SID_LEN + 1] = { 0 };
	(void)sid;
	if (strcmp(shmb_err_name(SHMB_ENOENT), "SHMB_ENOENT") != 0)
		return 1;
	/* The second edition's names (DESIGN.md), linked. */
	shmb_session_opts opts = { 1000, 2000 };
	int (*set)(shmb_session *, const char *, const void *, size_t) = shmb_attr_set;
	int (*set_if)(shmb_session *, const char *, const void *, size_t, uint64_t) =
		shmb_attr_set_if;
	int (*get)(shmb_session *, const char *, void *, size_t, uint64_t *) = shmb_attr_get;
	int (*del)(shmb_session *, const char *) = shmb_attr_delete;
	int (*cwait)(shmb_cursor *, int) = shmb_cursor_wait;
	int (*ready)(shmb_client *, shmb_session **, int) = shmb_ready;
	int (*create_opts)(shmb_client *, const char *, const char *, const shmb_session_opts *,
			   char *) = shmb_session_create_opts;
	if (!set || !set_if || !get || !del || !cwait || !ready || !create_opts)
		return 1;
	if (SHMB_ECONFLICT >= 0 || opts.absolute_ttl_ms != 2000)
		return 1;
	printf("shmb %s (C): %s\n", shmb_version(), shmb_strerror(SHMB_EPERM));
	return SHMB_VERSION_MAJOR >= 0 ? 0 : 1;
}
