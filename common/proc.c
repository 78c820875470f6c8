/* proc.c - process identity helpers (see proc.h). */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Reads /proc/<pid>/stat; returns the state letter and the start time, or 0. */
static uint64_t read_stat(pid_t pid, char *state)
{
	char path[64], buf[1024];
	*state = '?';
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* comm (field 2) may contain spaces and parentheses: skip to the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	p++;
	if (p[0] == ' ' && p[1])
		*state = p[1];
	/* Fields 3.. follow; starttime is field 22, i.e. the 20th after ')'. */
	for (int field = 3; field < 22; field++) {
		p = strchr(p + 1, ' ');
		if (!p)
			return 0;
	}
	unsigned long long v = 0;
	if (sscanf(p + 1, "%llu", &v) != 1)
		return 0;
	return v;
}

uint64_t proc_starttime(pid_t pid)
{
	char state;
	return read_stat(pid, &state);
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
	uint64_t now = read_stat(pid, &state);
	if (starttime == 0)
		return state != 'Z' && state != 'X';
	/* A zombie has exited; a pid reused by another process has another start time. */
	if (state == 'Z' || state == 'X')
		return 0;
	return now == starttime;
}
