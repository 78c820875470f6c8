/* proc.c - process identity helpers (see proc.h). */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Reads /proc/<pid>/stat: the state letter and numeric field `field` (3-based numbering of
 * proc(5): 9 is flags, 22 starttime). Returns 0 with *value set, -1 if unreadable (gone). */
static int read_stat(pid_t pid, int field, char *state, uint64_t *value)
{
	char path[64], buf[1024];
	*state = '?';
	*value = 0;
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	/* comm (field 2) may contain spaces and parentheses: skip to the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	p++;
	if (p[0] == ' ' && p[1])
		*state = p[1];
	/* p is at the space before field 3; advance to the space before `field`. */
	for (int f = 3; f < field; f++) {
		p = strchr(p + 1, ' ');
		if (!p)
			return -1;
	}
	unsigned long long v = 0;
	if (sscanf(p + 1, "%llu", &v) != 1)
		return -1;
	*value = v;
	return 0;
}

uint64_t proc_starttime(pid_t pid)
{
	char state;
	uint64_t v;
	return read_stat(pid, 22, &state, &v) == 0 ? v : 0;
}

int proc_exiting(pid_t pid)
{
	char state;
	uint64_t flags;
	if (read_stat(pid, 9, &state, &flags) < 0)
		return 1;
	return (flags & 0x4) != 0 || state == 'Z' || state == 'X'; /* PF_EXITING */
}

int proc_pidfd_open(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int proc_alive(pid_t pid, uint64_t starttime)
{
	if (pid <= 0)
		return 0;
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return 0;
	char state;
	uint64_t now;
	if (read_stat(pid, 22, &state, &now) < 0)
		return 0;
	if (starttime == 0)
		return state != 'Z' && state != 'X';
	/* A zombie has exited; a pid reused by another process has another start time. */
	if (state == 'Z' || state == 'X')
		return 0;
	return now == starttime;
}
