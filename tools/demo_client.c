/* demo_client.c - the README's demo (tools/demo.sh): attaches to the broker named by $SHMB_NAME
 * (else "default"), creates three sessions for two tenants, opens one as a worker would (a
 * lock-free lookup with the tenant and principal check), publishes one event on it, keeps two
 * session attributes on it, and prints what it made. The sessions outlive this process: `shmctl
 * sessions` and `shmctl show` show them afterwards. With an argument, writes the first session's
 * id to that file (for demo.sh's `shmctl show`). */
#include <stdio.h>
#include <string.h>

#include <shmb.h>

static int fail(const char *what, int rc)
{
	fprintf(stderr, "demo_client: %s: %s (%s)\n", what, shmb_err_name(rc), shmb_strerror(rc));
	return 1;
}

int main(int argc, char **argv)
{
	shmb_client *c = NULL;
	int rc = shmb_attach(NULL, &c);
	if (rc < 0)
		return fail("attach", rc);

	const struct {
		const char *tenant, *principal;
	} want[3] = { { "acme", "alice" }, { "acme", "bob" }, { "globex", NULL } };
	char sid[3][SHMB_SID_LEN + 1];
	for (int i = 0; i < 3; i++) {
		rc = shmb_session_create(c, want[i].tenant, want[i].principal, sid[i]);
		if (rc < 0) {
			shmb_detach(c);
			return fail("create", rc);
		}
		printf("created session %s  tenant=%-7s principal=%s\n", sid[i], want[i].tenant,
		       want[i].principal ? want[i].principal : "(none)");
	}

	/* What any worker does with a request carrying a session id. */
	shmb_session *s = NULL;
	rc = shmb_session_open(c, sid[0], "acme", "alice", &s);
	if (rc < 0) {
		shmb_detach(c);
		return fail("open", rc);
	}
	static const char note[] =
		"{\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}";
	int64_t id = shmb_publish(s, 0, 1, note, sizeof note - 1);
	if (id < 0)
		printf("publish: %s (%s)\n", shmb_err_name((int)id), shmb_strerror((int)id));
	shmb_session_info info;
	rc = shmb_session_stat(s, &info);
	if (rc == 0)
		printf("opened  session %s  tenant=%s principal=%s last_event_id=%llu\n", info.sid,
		       info.tenant, info.has_principal ? info.principal : "(none)",
		       (unsigned long long)info.last_event_id);

	/* Session attributes: small values every worker sees, set without the broker. */
	static const char proto[] = "2025-06-18", cart[] = "{\"items\":[42,7]}";
	rc = shmb_attr_set(s, "mcp.protocol_version", proto, sizeof proto - 1);
	if (rc == 0)
		rc = shmb_attr_set(s, "cart", cart, sizeof cart - 1);
	char val[SHMB_ATTR_MAX];
	uint64_t version = 0;
	int n = rc < 0 ? rc : shmb_attr_get(s, "cart", val, sizeof val, &version);
	if (n >= 0)
		printf("attribute cart = %.*s (version %llu)\n", n, val,
		       (unsigned long long)version);
	else
		printf("attributes: %s (%s)\n", shmb_err_name(n), shmb_strerror(n));
	if (argc > 1) {
		FILE *f = fopen(argv[1], "w");
		if (f) {
			fprintf(f, "%s\n", sid[0]);
			fclose(f);
		}
	}

	/* The binding is enforced: another tenant cannot open it. */
	shmb_session *other = NULL;
	rc = shmb_session_open(c, sid[0], "globex", NULL, &other);
	printf("open as tenant globex: %s (%s)\n", shmb_err_name(rc), shmb_strerror(rc));
	if (rc == 0)
		shmb_session_close(other);

	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}
