/* events.c - publishing, cursors and subscriptions: the event half of the API.
 *
 * Event storage is laid out in the segment already (layout.h: descriptor and payload rings per
 * session) but publishing and reading arrive with the events issue. Until then every call
 * validates its arguments and returns SHMB_ENOTSUP: nothing pretends to work. */
#include "internal.h"

int64_t shmb_publish(shmb_session *s, uint32_t stream, uint16_t kind, const void *data, size_t len)
{
	(void)stream;
	(void)kind;
	if (!s || (!data && len) || !shmbi_client_ok(s->c))
		return SHMB_EINVAL;
	return SHMB_ENOTSUP;
}

int shmb_cursor_open(shmb_session *s, uint64_t after_id, shmb_cursor **out)
{
	(void)after_id;
	if (out)
		*out = NULL;
	if (!s || !out || !shmbi_client_ok(s->c))
		return SHMB_EINVAL;
	return SHMB_ENOTSUP;
}

int shmb_cursor_next(shmb_cursor *cur, shmb_event *ev, void *buf, size_t buflen)
{
	(void)buf;
	(void)buflen;
	if (!cur || !ev)
		return SHMB_EINVAL;
	return SHMB_ENOTSUP;
}

void shmb_cursor_close(shmb_cursor *cur)
{
	(void)cur;
}

int shmb_subscribe(shmb_session *s)
{
	if (!s || !shmbi_client_ok(s->c))
		return SHMB_EINVAL;
	return SHMB_ENOTSUP;
}

int shmb_unsubscribe(shmb_session *s)
{
	if (!s || !shmbi_client_ok(s->c))
		return SHMB_EINVAL;
	return SHMB_ENOTSUP;
}
