/* proc.h - process identity helpers: a pid's start time (to tell a reused pid, as LMDB does),
 * pidfds, and whether a process is alive. */
#ifndef SHMB_PROC_H
#define SHMB_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), 0 if unreadable. */
uint64_t proc_starttime(pid_t pid);
/* 1 when pid is exiting (PF_EXITING: in do_exit(), e.g. killed), a zombie, or gone. */
int proc_exiting(pid_t pid);
/* pidfd_open(pid, 0) or -1 with errno. */
int proc_pidfd_open(pid_t pid);
/* 1 when pid exists and (if starttime != 0) started at starttime; 0 otherwise. */
int proc_alive(pid_t pid, uint64_t starttime);

#endif
