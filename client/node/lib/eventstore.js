'use strict';
// eventstore.js - ShmbEventStore: the MCP TypeScript SDK's EventStore interface (storeEvent,
// getStreamIdForEventId, replayEventsAfter; SDK 1.32.2, server/streamableHttp.d.ts) kept in one
// shmbroker session, so every worker of a cluster stores into and replays from the same streams.
//
// The SDK names its streams with strings: '_GET_stream' for the standalone GET stream and a
// random UUID per POST. Each maps to a shmbroker stream number: '_GET_stream' to 0, any other to
// a 32-bit FNV-1a hash (never 0). Each event's payload is "<sdk stream id>\n<JSON message>", so
// a replay on any worker knows the exact SDK stream even if two streams' hashes collided (it
// skips the other's events), and getStreamIdForEventId needs no table. Event ids are the
// session's shmbroker ids (decimal strings): unique across the session's streams, as MCP asks.
// A replay reads only the cut stream (a stream cursor), after the given id.
//
// Kinds: KIND_MESSAGE for a message, KIND_RESPONSE for a JSON-RPC result or error (the end of a
// POST stream), KIND_PRIMING for the SDK's priming event (an empty message, never replayed).

const GET_STREAM = '_GET_stream';
const KIND_MESSAGE = 1;
const KIND_RESPONSE = 2;
const KIND_PRIMING = 3;

// The shmbroker stream number of an SDK stream id.
function streamNumber(streamId) {
	if (streamId === GET_STREAM)
		return 0;
	let h = 0x811c9dc5;
	for (let i = 0; i < streamId.length; i++) {
		h ^= streamId.charCodeAt(i);
		h = Math.imul(h, 0x01000193) >>> 0;
	}
	return h === 0 ? 1 : h;
}

// {streamId, json} of an event's payload, or null if it is not one of ours.
function decode(ev) {
	if (ev.gap || !ev.data)
		return null;
	const text = ev.data.toString('utf8');
	const nl = text.indexOf('\n');
	if (nl < 0)
		return null;
	return { streamId: text.slice(0, nl), json: text.slice(nl + 1) };
}

// A decimal event id as a number, or null.
function parseId(eventId) {
	if (typeof eventId !== 'string' || !/^[0-9]{1,16}$/.test(eventId))
		return null;
	const n = Number(eventId);
	return n >= 1 && Number.isSafeInteger(n) ? n : null;
}

class ShmbEventStore {
	#session;

	// session: a shmb Session (client.open(...)); the store publishes and reads through it.
	constructor(session) {
		if (!session || typeof session.publish !== 'function' ||
		    typeof session.cursor !== 'function')
			throw new TypeError('ShmbEventStore(session) needs a shmb Session');
		this.#session = session;
	}

	get session() {
		return this.#session;
	}

	// Publishes message on the shmbroker stream of streamId; resolves to its event id.
	async storeEvent(streamId, message) {
		if (typeof streamId !== 'string' || streamId.includes('\n'))
			throw new TypeError('streamId must be a string without a newline');
		const kind = message && Object.keys(message).length === 0 ? KIND_PRIMING
			: message && ('result' in message || 'error' in message) ? KIND_RESPONSE
				: KIND_MESSAGE;
		const id = this.#session.publish(`${streamId}\n${JSON.stringify(message)}`,
			{ stream: streamNumber(streamId), kind });
		return String(id);
	}

	// The event with this id, decoded ({id, kind, streamId, json}), or null when it is unknown,
	// evicted, or not an event of this store.
	lookup(eventId) {
		const id = parseId(eventId);
		if (id === null)
			return null;
		let cur;
		try {
			cur = this.#session.cursor(id - 1);
		} catch (e) {
			if (e.code === 'EINVAL') // past the session's last id
				return null;
			throw e;
		}
		try {
			const ev = cur.next();
			const d = ev && ev.id === id ? decode(ev) : null;
			return d && streamNumber(d.streamId) === ev.stream ? { id, kind: ev.kind, ...d } : null;
		} catch (e) {
			if (e.code === 'EOVERRUN') // evicted from the ring
				return null;
			throw e;
		} finally {
			cur.close();
		}
	}

	async getStreamIdForEventId(eventId) {
		return this.lookup(eventId)?.streamId;
	}

	// Sends every stored message of the cut stream after lastEventId, in order; resolves to the
	// stream id. Throws ShmbError EOVERRUN when some of them were evicted from the ring (the
	// client would miss events), and an Error for an unknown id.
	async replayEventsAfter(lastEventId, { send }) {
		const at = this.lookup(lastEventId);
		if (!at)
			throw new Error(`unknown or evicted event id ${String(lastEventId).slice(0, 40)}`);
		const cur = this.#session.cursor(at.id, { stream: streamNumber(at.streamId) });
		try {
			for (let ev = cur.next(); ev !== null; ev = cur.next()) {
				const d = decode(ev);
				if (!d || d.streamId !== at.streamId || ev.kind === KIND_PRIMING)
					continue;
				await send(String(ev.id), JSON.parse(d.json));
			}
		} finally {
			cur.close();
		}
		return at.streamId;
	}
}

module.exports = {
	ShmbEventStore, streamNumber, decode, parseId,
	GET_STREAM, KIND_MESSAGE, KIND_RESPONSE, KIND_PRIMING,
};
