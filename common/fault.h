/* fault.h - test-only fault-injection points.
 *
 * Compiled in only with -DSHMB_FAULT_INJECTION=ON (never in production builds; no layout or API
 * changes). SHMB_FAULT("index.link") does nothing unless the environment variable SHMB_FAULT
 * names that point: "index.link" kills the process with SIGKILL right there, "index.link:stop"
 * stops it with SIGSTOP (the test awaits the stop with waitpid(WUNTRACED), then kills or
 * continues it). Only the exact name fires: broker.link.linked extends broker.link but is a point
 * of its own. The points are listed in docs/reliability.md. */
#ifndef SHMB_FAULT_H
#define SHMB_FAULT_H

#ifdef SHMB_FAULT_INJECTION
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline void shmb_fault_point(const char *point)
{
	const char *f = getenv("SHMB_FAULT");
	if (!f)
		return;
	size_t n = strlen(point);
	if (strncmp(f, point, n) != 0)
		return;
	if (f[n] == '\0')
		kill(getpid(), SIGKILL);
	else if (strcmp(f + n, ":stop") == 0)
		kill(getpid(), SIGSTOP);
}
#define SHMB_FAULT(point) shmb_fault_point(point)
#define SHMB_FAULT_ENABLED 1
#else
#define SHMB_FAULT(point) ((void)0)
#define SHMB_FAULT_ENABLED 0
#endif

#endif
