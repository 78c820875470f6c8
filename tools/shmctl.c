/* shmctl.c - the admin tool's entry point: command line, usage, dispatch (docs/shmctl.md).
 *
 * shmctl [--name N] COMMAND [options] [--json]; options may come before or after the command.
 * Inspection commands map the segment read-only by name and never take the broker's help, so
 * they work while the broker is dead or wedged; delete, ping and stop ask the broker over its
 * control socket.
 * Exit statuses: 0 success, 1 not found, 2 usage error, 3 broker or segment unavailable,
 * 4 verify found damage. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "seg.h"
#include "shmb.h"
#include "shmctl.h"

static const char usage_text[] =
	"usage: shmctl [--name N] COMMAND [options] [--json]\n"
	"\n"
	"Inspects and administers a shmbroker instance. Inspection commands map the shared-memory\n"
	"segment read-only and work while the broker is down; delete goes through the broker.\n"
	"\n"
	"Commands:\n"
	"  status                        broker, segment, sessions, workers, configuration, "
	"counters\n"
	"  sessions [--tenant T]         live sessions, optionally of one tenant\n"
	"  show SID                      everything about one session\n"
	"  events SID [--after N] [--stream S] [--follow]\n"
	"                                a session's events after id N (default 0: all retained),\n"
	"                                of one stream; --follow keeps printing new ones\n"
	"  workers                       attached worker processes and their reader slots\n"
	"  delete SID                    delete a session (asks the broker)\n"
	"  verify                        check every structure of the segment for damage\n"
	"  top [--iterations N] [--interval-ms MS]\n"
	"                                live view, refreshed every second; q or Ctrl-C quits\n"
	"  ping                          is the broker serving? exit 0 yes, 3 no\n"
	"  stop                          ask the broker to stop cleanly, wait until it exited\n"
	"  metrics [--listen ADDR:PORT]  counters and gauges in the Prometheus text format; with\n"
	"                                --listen, serve them at http://ADDR:PORT/metrics\n"
	"  reload                        the broker reads its configuration again (as SIGHUP)\n"
	"  dump [FILE]                   every live session with its attributes and retained\n"
	"                                events as JSON (stdout, or FILE, mode 0600)\n"
	"  restore FILE                  bring the sessions of a dump back (through the broker)\n"
	"\n"
	"Options:\n"
	"  --name N       instance name (default: $SHMB_NAME, else \"default\")\n"
	"  --json         print JSON instead of text (not for top)\n"
	"  -h, --help     print this help and exit\n"
	"  --version      print the version and exit\n"
	"\n"
	"Exit status: 0 success, 1 session not found, 2 usage error, 3 broker or segment\n"
	"unavailable (status: the broker is not running), 4 verify found damage. See\n"
	"docs/shmctl.md and man 1 shmctl.\n";

/* Options, as bits, to check which apply to which command. */
enum {
	OPT_JSON = 1 << 0,
	OPT_TENANT = 1 << 1,
	OPT_AFTER = 1 << 2,
	OPT_FOLLOW = 1 << 3,
	OPT_ITERATIONS = 1 << 4,
	OPT_INTERVAL = 1 << 5,
	OPT_STREAM = 1 << 6,
	OPT_LISTEN = 1 << 7,
};

struct command {
	const char *name;
	int (*run)(const struct shmctl_opts *o);
	unsigned opts;   /* OPT_* allowed besides --name */
	int nargs;       /* positional arguments required; -1: one, optional */
	const char *arg; /* what they are, for messages */
};

static const struct command commands[] = {
	{ "status", shmctl_cmd_status, OPT_JSON, 0, NULL },
	{ "sessions", shmctl_cmd_sessions, OPT_JSON | OPT_TENANT, 0, NULL },
	{ "show", shmctl_cmd_show, OPT_JSON, 1, "a session id" },
	{ "events", shmctl_cmd_events, OPT_JSON | OPT_AFTER | OPT_STREAM | OPT_FOLLOW, 1,
	  "a session id" },
	{ "workers", shmctl_cmd_workers, OPT_JSON, 0, NULL },
	{ "delete", shmctl_cmd_delete, OPT_JSON, 1, "a session id" },
	{ "verify", shmctl_cmd_verify, OPT_JSON, 0, NULL },
	{ "top", shmctl_cmd_top, OPT_ITERATIONS | OPT_INTERVAL, 0, NULL },
	{ "ping", shmctl_cmd_ping, OPT_JSON, 0, NULL },
	{ "stop", shmctl_cmd_stop, OPT_JSON, 0, NULL },
	{ "metrics", shmctl_cmd_metrics, OPT_LISTEN, 0, NULL },
	{ "reload", shmctl_cmd_reload, OPT_JSON, 0, NULL },
	{ "dump", shmctl_cmd_dump, 0, -1, "an optional file" },
	{ "restore", shmctl_cmd_restore, OPT_JSON, 1, "a dump file" },
};

static const struct {
	const char *name;
	unsigned bit;
	int takes_value;
} options[] = {
	{ "json", OPT_JSON, 0 },
	{ "tenant", OPT_TENANT, 1 },
	{ "after", OPT_AFTER, 1 },
	{ "follow", OPT_FOLLOW, 0 },
	{ "stream", OPT_STREAM, 1 },
	{ "iterations", OPT_ITERATIONS, 1 },
	{ "interval-ms", OPT_INTERVAL, 1 },
	{ "listen", OPT_LISTEN, 1 },
};

/* Parses a decimal integer in [min, max] (digits only, no sign). Returns 0 or -1. */
static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	if (!s || s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int set_option(struct shmctl_opts *o, unsigned bit, const char *opt, const char *val)
{
	uint64_t v;
	switch (bit) {
	case OPT_JSON:
		o->json = 1;
		return 0;
	case OPT_FOLLOW:
		o->follow = 1;
		return 0;
	case OPT_TENANT:
		o->tenant = val;
		return 0;
	case OPT_LISTEN:
		o->listen = val;
		return 0;
	case OPT_AFTER:
		if (parse_u64(val, 0, UINT64_MAX, &v) < 0)
			return shmctl_usage_error(
				"option '--%s' needs an event id (0 or more), not '%s'", opt, val);
		o->after = v;
		o->has_after = 1;
		return 0;
	case OPT_STREAM:
		if (parse_u64(val, 0, UINT32_MAX, &v) < 0)
			return shmctl_usage_error("option '--%s' needs a stream number, not '%s'",
						  opt, val);
		o->stream = (uint32_t)v;
		o->has_stream = 1;
		return 0;
	case OPT_ITERATIONS:
		if (parse_u64(val, 1, 1000000000, &v) < 0)
			return shmctl_usage_error(
				"option '--%s' needs a count of 1 or more, not '%s'", opt, val);
		o->iterations = (long)v;
		return 0;
	case OPT_INTERVAL:
		if (parse_u64(val, 10, 3600000, &v) < 0)
			return shmctl_usage_error(
				"option '--%s' needs milliseconds between 10 and 3600000, not '%s'",
				opt, val);
		o->interval_ms = (long)v;
		return 0;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct shmctl_opts o = { .name = NULL, .interval_ms = 1000 };
	unsigned seen = 0;
	int only_args = 0;
	const char *first_extra = NULL;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (only_args || a[0] != '-' || a[1] == '\0') {
			if (!o.command)
				o.command = a;
			else if (o.nargs < SHMCTL_MAX_ARGS)
				o.args[o.nargs++] = a;
			else if (!first_extra)
				first_extra = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			only_args = 1;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			return SHMCTL_OK;
		}
		if (strcmp(a, "--version") == 0) {
			printf("shmctl (shmbroker) %s, segment layout %d.%d\n", shmb_version(),
			       SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR);
			return SHMCTL_OK;
		}
		if (a[1] != '-')
			return shmctl_usage_error("unknown option '%s'", a);

		/* --opt or --opt=value */
		char opt[32];
		const char *eq = strchr(a + 2, '=');
		size_t n = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
		if (n == 0 || n >= sizeof opt)
			return shmctl_usage_error("unknown option '%s'", a);
		memcpy(opt, a + 2, n);
		opt[n] = '\0';
		const char *val = eq ? eq + 1 : NULL;

		if (strcmp(opt, "name") == 0) {
			if (!val) {
				if (i + 1 >= argc)
					return shmctl_usage_error(
						"option '--name' requires an argument");
				val = argv[++i];
			}
			o.name = val;
			continue;
		}
		size_t k;
		for (k = 0; k < sizeof options / sizeof options[0]; k++)
			if (strcmp(opt, options[k].name) == 0)
				break;
		if (k == sizeof options / sizeof options[0])
			return shmctl_usage_error("unknown option '--%s'", opt);
		if (options[k].takes_value && !val) {
			if (i + 1 >= argc)
				return shmctl_usage_error("option '--%s' requires an argument",
							  opt);
			val = argv[++i];
		} else if (!options[k].takes_value && val) {
			return shmctl_usage_error("option '--%s' takes no argument", opt);
		}
		int rc = set_option(&o, options[k].bit, opt, val);
		if (rc)
			return rc;
		seen |= options[k].bit;
	}

	if (!o.command)
		return shmctl_usage_error("no command given");
	if (strcmp(o.command, "help") == 0) {
		fputs(usage_text, stdout);
		return SHMCTL_OK;
	}
	const struct command *cmd = NULL;
	for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++)
		if (strcmp(o.command, commands[k].name) == 0)
			cmd = &commands[k];
	if (!cmd)
		return shmctl_usage_error("unknown command '%s'", o.command);
	for (size_t k = 0; k < sizeof options / sizeof options[0]; k++)
		if ((seen & options[k].bit) && !(cmd->opts & options[k].bit))
			return shmctl_usage_error(
				"%s: option '--%s' does not apply to this command", cmd->name,
				options[k].name);
	int maxargs = cmd->nargs < 0 ? 1 : cmd->nargs;
	if (o.nargs < cmd->nargs)
		return shmctl_usage_error("%s: missing argument: %s", cmd->name, cmd->arg);
	if (o.nargs > maxargs || first_extra)
		return shmctl_usage_error("%s: unexpected argument '%s'", cmd->name,
					  first_extra ? first_extra : o.args[maxargs]);

	if (!o.name)
		o.name = ctl_default_name();
	if (seg_name_valid(o.name) < 0)
		return shmctl_usage_error("invalid instance name '%s' (1 to 64 characters of "
					  "A-Z a-z 0-9 _ . -, not starting with '.')",
					  o.name);
	return cmd->run(&o);
}
