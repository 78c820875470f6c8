/* multihost.c - the multi-host part of the API (docs/multi-host.md): the node tag of a session
 * id, the node_id of the broker a client is attached to, and restoring a session another node
 * (or a dump) had.
 *
 * The node tag is the first 2 bytes of the id, big-endian (common/sid.h, sid_tag), written by
 * the broker that makes the id when its configuration has a node_id; the broker's node_id is in
 * the segment header's configuration (layout 2.1), copied at map time and fixed for the
 * segment's life, so neither needs a call to the broker.
 *
 * shmb_session_restore is one "restore" request to the broker (broker/restore.c), which alone
 * links sessions: of two processes restoring one id the broker serves one first, and the other
 * finds it linked (SHMB_ECONFLICT). The session's scalar fields go in the request's JSON; its
 * events and attributes, which can be far larger than one control message (a full ring of
 * max_event_bytes events), in a memfd passed with it (common/image.h), written once here and
 * sealed before it is sent. Events older than the ring's window are left out here already, so
 * the image is bounded by the segment's configuration (img_bound), which the broker enforces. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "attr.h"
#include "evring.h"
#include "image.h"
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

#define JSON_EXACT_MAX (UINT64_C(1) << 53) /* the protocol's integers (docs/protocol.md) */

/* Adds name = v as the exact decimal integer (cJSON would print 2^53 - 1 rounded; session.c
 * says why). 0, or -1 without memory. */
static int add_u64(cJSON *o, const char *name, uint64_t v)
{
	char text[24];
	snprintf(text, sizeof text, "%" PRIu64, v);
	return cJSON_AddRawToObject(o, name, text) ? 0 : -1;
}

/* What the image needs in the memfd, computed while checking it. */
struct img_plan {
	size_t first_kept; /* events before it are older than the ring's window: left out */
	uint64_t bytes;    /* the memfd's size */
};

/* The checks the broker makes too (broker/restore.c), here so that a bad image fails without a
 * round trip and before a memfd is made; the broker checks everything again. */
static int check_image(const shmb_client *c, const shmb_session_image *img, struct img_plan *p)
{
	const struct shmb_seg *seg = &c->seg;
	uint8_t sid[SHMB_SID_BYTES];
	if (!img->sid || sid_parse(img->sid, sid) < 0 ||
	    shmbi_bounded_len(img->tenant, seg->cfg.max_tenant_len) < 0 ||
	    (img->principal && shmbi_bounded_len(img->principal, seg->cfg.max_principal_len) < 0))
		return SHMB_EINVAL;
	if (img->created_at_ms <= 0 || (uint64_t)img->created_at_ms > JSON_EXACT_MAX ||
	    img->last_accessed_at_ms < 0 || (uint64_t)img->last_accessed_at_ms > JSON_EXACT_MAX ||
	    img->inactivity_ttl_ms > JSON_EXACT_MAX || img->absolute_ttl_ms > JSON_EXACT_MAX ||
	    img->last_event_id > JSON_EXACT_MAX)
		return SHMB_EINVAL;
	if ((img->n_events && !img->events) || (img->n_attrs && !img->attrs))
		return SHMB_EINVAL;
	uint64_t last = img->last_event_id, prev = 0;
	uint64_t lo = last >= seg->cfg.ring_events ? last - seg->cfg.ring_events + 1 : 1;
	p->first_kept = 0;
	p->bytes = sizeof(struct shmb_img_head);
	for (size_t i = 0; i < img->n_events; i++) {
		const shmb_image_event *e = &img->events[i];
		int gap = (e->flags & SHMB_EV_GAP) != 0;
		if (e->id <= prev || e->id > last || (e->flags & ~SHMB_EV_GAP) || e->ts_ms < 0 ||
		    (uint64_t)e->ts_ms > JSON_EXACT_MAX || (!gap && e->len && !e->data))
			return SHMB_EINVAL;
		if (!gap && e->len > seg->cfg.max_event_bytes)
			return SHMB_ETOOBIG;
		prev = e->id;
		if (e->id < lo) {
			p->first_kept = i + 1;
			continue;
		}
		/* The ids it takes in this ring end before the next event's (restore.c). */
		uint64_t end = e->id + (gap ? 1 : evr_slots_for(seg, e->len)) - 1;
		if (end > (i + 1 < img->n_events ? img->events[i + 1].id - 1 : last))
			return SHMB_EINVAL;
		p->bytes += sizeof(struct shmb_img_event) + (gap ? 0 : img_pad8(e->len));
	}
	if (img->n_attrs > seg->cfg.attr_keys ||
	    (img->n_attrs && shmb_attr_area_size(seg->cfg.attr_bytes, seg->cfg.attr_keys) == 0))
		return SHMB_ETOOBIG;
	for (size_t i = 0; i < img->n_attrs; i++) {
		const shmb_image_attr *a = &img->attrs[i];
		long kl = attr_key_len(a->key);
		if (kl < 0 || (a->len && !a->val))
			return SHMB_EINVAL;
		if (a->len > SHMB_ATTR_MAX)
			return SHMB_ETOOBIG;
		p->bytes += sizeof(struct shmb_img_attr) + img_pad8((uint64_t)kl + a->len);
	}
	/* Events that fit the ring's geometry fit the bound: more is attributes beyond the
	 * area's budget (the broker's plan would refuse them). */
	return p->bytes <= img_bound(&seg->cfg) ? 0 : SHMB_ETOOBIG;
}

/* Writes the image's kept events and its attributes (common/image.h) to p. */
static void write_image(const shmb_session_image *img, const struct img_plan *pl, uint8_t *p)
{
	struct shmb_img_head h = { .magic = SHMB_IMG_MAGIC,
				   .n_events = (uint32_t)(img->n_events - pl->first_kept),
				   .n_attrs = (uint32_t)img->n_attrs };
	memcpy(p, &h, sizeof h);
	p += sizeof h;
	for (size_t i = pl->first_kept; i < img->n_events; i++) {
		const shmb_image_event *e = &img->events[i];
		int gap = (e->flags & SHMB_EV_GAP) != 0;
		struct shmb_img_event w = { .id = e->id,
					    .ts_ms = e->ts_ms,
					    .stream = e->stream,
					    .kind = e->kind,
					    .flags = gap ? SHMB_EV_GAP : 0,
					    .len = gap ? 0 : (uint32_t)e->len };
		memcpy(p, &w, sizeof w);
		p += sizeof w;
		if (w.len)
			memcpy(p, e->data, w.len);
		p += img_pad8(w.len); /* the memfd is zero-filled: padding is 0 */
	}
	for (size_t i = 0; i < img->n_attrs; i++) {
		const shmb_image_attr *a = &img->attrs[i];
		struct shmb_img_attr w = { .key_len = (uint32_t)strlen(a->key),
					   .val_len = (uint32_t)a->len };
		memcpy(p, &w, sizeof w);
		p += sizeof w;
		memcpy(p, a->key, w.key_len);
		if (w.val_len)
			memcpy(p + w.key_len, a->val, w.val_len);
		p += img_pad8((uint64_t)w.key_len + w.val_len);
	}
}

/* A sealed memfd holding the image: the broker reads it while handling the request. Returns the
 * fd, or SHMB_ENOMEM / SHMB_EIO. */
static int image_memfd(const shmb_session_image *img, const struct img_plan *pl)
{
	int fd = memfd_create("shmb-restore", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return errno == ENOMEM || errno == EMFILE || errno == ENFILE ? SHMB_ENOMEM
									     : SHMB_EIO;
	void *p = MAP_FAILED;
	if (ftruncate(fd, (off_t)pl->bytes) == 0)
		p = mmap(NULL, pl->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		int rc = errno == ENOMEM || errno == ENOSPC ? SHMB_ENOMEM : SHMB_EIO;
		close(fd);
		return rc;
	}
	write_image(img, pl, p);
	munmap(p, pl->bytes);
	/* Fixed from here on: what the broker reads is what was checked here. */
	fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
	return fd;
}

static cJSON *restore_request(const shmb_session_image *img, uint64_t bytes)
{
	cJSON *req = cJSON_CreateObject();
	cJSON *s = cJSON_CreateObject();
	cJSON *im = cJSON_CreateObject();
	if (!req || !s || !im) {
		cJSON_Delete(req);
		cJSON_Delete(s);
		cJSON_Delete(im);
		return NULL;
	}
	cJSON_AddItemToObject(req, "session", s);
	cJSON_AddItemToObject(req, "image", im);
	char sid[SHMB_SID_LEN + 1];
	uint8_t bin[SHMB_SID_BYTES];
	sid_parse(img->sid, bin); /* checked: lowercase, as the broker prints it */
	sid_format(bin, sid);
	int ok = cJSON_AddStringToObject(req, "op", "restore") &&
		 cJSON_AddStringToObject(s, "id", sid) &&
		 cJSON_AddStringToObject(s, "tenant", img->tenant) &&
		 (img->principal ? cJSON_AddStringToObject(s, "principal", img->principal) != NULL
				 : cJSON_AddNullToObject(s, "principal") != NULL) &&
		 add_u64(s, "created_at_ms", (uint64_t)img->created_at_ms) == 0 &&
		 add_u64(s, "last_accessed_at_ms", (uint64_t)img->last_accessed_at_ms) == 0 &&
		 add_u64(s, "inactivity_ttl_ms", img->inactivity_ttl_ms) == 0 &&
		 add_u64(s, "absolute_ttl_ms", img->absolute_ttl_ms) == 0 &&
		 add_u64(s, "last_event_id", img->last_event_id) == 0 &&
		 add_u64(im, "bytes", bytes) == 0;
	if (!ok) {
		cJSON_Delete(req);
		return NULL;
	}
	return req;
}

int shmb_session_restore(shmb_client *c, const shmb_session_image *img)
{
	if (!shmbi_client_ok(c) || !img)
		return shmbi_client_err(c);
	struct img_plan pl;
	int rc = check_image(c, img, &pl);
	if (rc < 0)
		return rc;
	cJSON *req = restore_request(img, pl.bytes);
	if (!req)
		return SHMB_ENOMEM;
	int fd = image_memfd(img, &pl);
	if (fd < 0) {
		cJSON_Delete(req);
		return fd;
	}
	cJSON *reply = NULL;
	rc = shmbi_call_fd(c, req, fd, &reply);
	close(fd);
	cJSON_Delete(req);
	if (rc == 0) {
		const cJSON *left = cJSON_GetObjectItemCaseSensitive(reply, "events_left_out");
		double n = cJSON_IsNumber(left) ? left->valuedouble : 0;
		double total = n + (double)pl.first_kept;
		rc = total > INT_MAX ? INT_MAX : (int)total;
	}
	cJSON_Delete(reply);
	return rc;
}
