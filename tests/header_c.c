/* header_c.c - shmb.h compiles on its own as strict C99 (-pedantic-errors) and links. */
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
	printf("shmb %s (C): %s\n", shmb_version(), shmb_strerror(SHMB_EPERM));
	return SHMB_VERSION_MAJOR >= 0 ? 0 : 1;
}
