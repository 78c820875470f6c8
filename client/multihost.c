/* multihost.c - the multi-host part of the API (docs/multi-host.md): the node tag of a session
 * id, the node_id of the broker a client is attached to, and restoring a session another node
 * (or a dump) had.
 *
 * The node tag is the first 2 bytes of the id, big-endian (common/sid.h, sid_tag), written by
 * the broker that makes the id when its configuration has a node_id; the broker's node_id is in
 * the segment header's configuration (layout 2.1), copied at map time and fixed for the
 * segment's life, so neither needs a call to the broker. */
#include "internal.h"
#include "sid.h"

int shmb_sid_node(const char *sid)
{
	uint8_t bin[SHMB_SID_BYTES];
	if (sid_parse(sid, bin) < 0)
		return SHMB_EINVAL;
	return (int)sid_node(bin);
}

int shmb_node_id(const shmb_client *c)
{
	if (!shmbi_client_ok(c))
		return shmbi_client_err(c);
	return (int)c->seg.cfg.node_id;
}
