/* shmctl_attrs.c - the attributes of one session for `shmctl show SID` (docs/shmctl.md).
 *
 * shmctl maps the segment read-only and takes no reader slot, so it reads each attribute with
 * the library's optimistic read (common/attr.c: a copy between two equal loads of the entry
 * word), and checks afterwards that the record still holds the same generation: a session
 * deleted and recycled while it was read shows no attributes rather than another session's. A
 * value is shown as JSON when the whole of it is one strict JSON value (embedded verbatim in
 * --json, encoding "json"), else as text when it is UTF-8 without NUL ("text"), else as base64
 * ("base64"); the human output prints JSON as is and anything else as a quoted, escaped string,
 * the same rules as `shmctl events` uses for payloads. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "shmb.h"
#include "shmctl.h"

struct item {
	char key[SHMB_ATTR_KEY_CAP + 1];
	uint32_t len, cells;
	uint64_t version;
	uint8_t *val;
};

struct items {
	struct item *v;
	uint32_t n, damaged, keys;
	int changed; /* the record was recycled while read */
};

static void items_free(struct items *it)
{
	for (uint32_t i = 0; i < it->n; i++)
		free(it->v[i].val);
	free(it->v);
}

static void collect(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, struct items *it)
{
	*it = (struct items){ 0 };
	struct attr_area a;
	if (attr_area_of(seg, idx, &a) < 0)
		return;
	it->v = calloc(a.nkeys, sizeof *it->v);
	uint8_t *buf = malloc(SHMB_ATTR_MAX);
	for (uint32_t i = 0; it->v && buf && i < a.nkeys; i++) {
		const struct shmb_attr_entry *e = &a.entries[i];
		if (!uatomic_read(&e->tag))
			continue;
		it->keys++;
		struct attr_value v;
		int rc = attr_read(&a, e, NULL, 0, 1, buf, SHMB_ATTR_MAX, &v);
		if (rc == SHMB_ENOENT)
			continue;
		if (rc < 0) {
			it->damaged++;
			continue;
		}
		struct item *t = &it->v[it->n];
		memcpy(t->key, v.key, sizeof t->key);
		t->len = (uint32_t)rc;
		t->cells = ATTR_COUNT(v.word);
		t->version = ATTR_VERSION(v.word);
		t->val = malloc(rc ? (size_t)rc : 1);
		if (!t->val)
			break;
		memcpy(t->val, buf, (size_t)rc);
		it->n++;
	}
	free(buf);
	/* The copies before the generation: the broker bumps it before zeroing the area. */
	cmm_smp_rmb();
	const struct shmb_session_rec *r = seg_rec(seg, idx);
	it->changed = uatomic_read(&r->gen) != gen;
}

void shmctl_attrs_human(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, int width)
{
	struct items it;
	collect(seg, idx, gen, &it);
	uint32_t cells = 0;
	for (uint32_t i = 0; i < it.n; i++)
		cells += it.v[i].cells;
	if (it.changed) {
		printf("%*s: (the session ended while they were read)\n", width, "attributes");
	} else {
		printf("%*s: %u (%u of %u bytes, %u of %u keys used)\n", width, "attributes", it.n,
		       cells * SHMB_ATTR_CELL, seg->cfg.attr_bytes, it.keys, seg->cfg.attr_keys);
		for (uint32_t i = 0; i < it.n; i++) {
			const struct item *t = &it.v[i];
			printf("%*s  %s = ", width, "", t->key);
			shmctl_print_payload(stdout, t->val, t->len);
			printf("  (%u bytes, version %" PRIu64 ")\n", t->len, t->version);
		}
		if (it.damaged)
			printf("%*s  %u damaged (run shmctl verify)\n", width, "", it.damaged);
	}
	items_free(&it);
}

void shmctl_attrs_json(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, cJSON *j)
{
	struct items it;
	collect(seg, idx, gen, &it);
	cJSON *arr = cJSON_AddArrayToObject(j, "attributes");
	for (uint32_t i = 0; !it.changed && i < it.n; i++) {
		const struct item *t = &it.v[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "key", t->key);
		shmctl_json_u64(o, "length", t->len);
		shmctl_json_u64(o, "version", t->version);
		char *js = shmctl_payload_json(t->val, t->len);
		if (js) {
			/* Verbatim: validated as one complete JSON value. */
			cJSON_AddItemToObject(o, "value", cJSON_CreateRaw(js));
			cJSON_AddStringToObject(o, "encoding", "json");
			free(js);
		} else if (shmctl_payload_text(t->val, t->len)) {
			char *s = strndup((const char *)t->val, t->len);
			cJSON_AddStringToObject(o, "value", s ? s : "");
			cJSON_AddStringToObject(o, "encoding", "text");
			free(s);
		} else {
			char *b = shmctl_base64(t->val, t->len);
			cJSON_AddStringToObject(o, "value", b ? b : "");
			cJSON_AddStringToObject(o, "encoding", "base64");
			free(b);
		}
		cJSON_AddItemToArray(arr, o);
	}
	shmctl_json_u64(j, "attributes_damaged", it.damaged);
	items_free(&it);
}

int shmctl_attrs_dump(const struct shmb_seg *seg, uint32_t idx, uint32_t gen, cJSON *j)
{
	struct items it;
	collect(seg, idx, gen, &it);
	cJSON *arr = cJSON_AddArrayToObject(j, "attributes");
	for (uint32_t i = 0; !it.changed && i < it.n; i++) {
		const struct item *t = &it.v[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "key", t->key);
		shmctl_json_u64(o, "version", t->version);
		char *b = shmctl_base64(t->val, t->len);
		cJSON_AddStringToObject(o, "value_base64", b ? b : "");
		free(b);
		cJSON_AddItemToArray(arr, o);
	}
	int changed = it.changed;
	items_free(&it);
	return changed ? -1 : 0;
}
