'use strict';
// shmb.js - the package's JavaScript surface (CommonJS; lib/index.mjs re-exports it for ESM):
// Client, Session, Cursor, Attrs and ShmbError over the native addon shmb.node
// (src/shmb_node.c), plus ShmbEventStore (lib/eventstore.js).
//
// The addon wraps these objects' native handles; this file checks arguments (TypeError), keeps
// parents alive (a cursor holds its session, a session its client) and runs the followers:
// cursor.follow() is an async generator that sleeps on a promise its session resolves when the
// client's one libuv poll reports news for it (native dispatch -> dispatch() below). No thread
// and no timer per stream.
//
// Ids are numbers (JavaScript's safe integers, below 2^53): a session would need 2^53 events,
// about 285 years at a million a second, to pass that.
const path = require('node:path');
const fs = require('node:fs');

// Finds shmb.node: $SHMB_NODE_ADDON, the installed package's own copy beside lib/, or the
// newest build of the source tree (<repo>/build*/client/node/shmb.node).
function loadAddon() {
	if (process.env.SHMB_NODE_ADDON)
		return require(path.resolve(process.env.SHMB_NODE_ADDON));
	const candidates = [path.join(__dirname, '..', 'shmb.node')];
	const repo = path.join(__dirname, '..', '..', '..');
	const builds = [];
	try {
		for (const d of fs.readdirSync(repo)) {
			const p = path.join(repo, d, 'client', 'node', 'shmb.node');
			if (d.startsWith('build') && fs.existsSync(p))
				builds.push({ p, t: fs.statSync(p).mtimeMs });
		}
	} catch { /* not in a source tree */ }
	builds.sort((a, b) => b.t - a.t);
	candidates.push(...builds.map((b) => b.p));
	for (const p of candidates)
		if (fs.existsSync(p))
			return require(p);
	throw new Error('shmb: the native addon shmb.node was not found (looked at ' +
		`${candidates.join(', ')}); build it with cmake (client/node/README.md) or set ` +
		'SHMB_NODE_ADDON to its path');
}
const native = loadAddon();

// Every error of the library: code is the library's name without its prefix ('ENOENT',
// 'EPERM', 'ETOOBIG', ...), or 'ECLOSED' for a handle used after close(); errno the library's
// negative code (0 for ECLOSED).
class ShmbError extends Error {
	constructor(message, code, errno = 0) {
		super(message);
		this.name = 'ShmbError';
		this.code = code;
		this.errno = errno;
	}
}

const kToken = Symbol('shmb.token');
const kWake = Symbol('shmb.wake');
const kFollow = Symbol('shmb.follow');
const kUnfollow = Symbol('shmb.unfollow');

// Called by the client's poll with the Sessions that have news.
function dispatch(sessions) {
	for (const s of sessions) {
		try {
			s[kWake]();
		} catch (e) {
			process.nextTick(() => { throw e; });
		}
	}
}
native.setup(ShmbError, dispatch);

function checkString(v, what, nullable = false) {
	if (typeof v === 'string' || (nullable && (v === null || v === undefined)))
		return;
	throw new TypeError(`${what} must be a string${nullable ? ' or null' : ''}`);
}

function checkOptions(o, what) {
	if (o !== undefined && (o === null || typeof o !== 'object'))
		throw new TypeError(`${what} must be an object`);
	return o ?? {};
}

class Client {
	#name;
	#closed = false;
	#following = new Set(); // Sessions with followers, woken by close()

	constructor(token, name) {
		if (token !== kToken)
			throw new TypeError('use Client.attach(name) to make a Client');
		this.#name = name;
	}

	// Attaches to the broker instance `name` (default: $SHMB_NAME, else 'default'), on the
	// thread pool; resolves to the Client. Rejects with ShmbError (EBROKER: no broker runs).
	static async attach(name) {
		checkString(name, 'name', true);
		const c = new Client(kToken, name ?? process.env.SHMB_NAME ?? 'default');
		await native.attach(c, name ?? null);
		return c;
	}

	get name() {
		return this.#name;
	}

	get closed() {
		return this.#closed;
	}

	// Creates a session through the broker (thread pool); resolves to its id.
	async create(tenant, principal = null, options) {
		checkString(tenant, 'tenant');
		checkString(principal, 'principal', true);
		const o = checkOptions(options, 'options');
		return native.create(this, tenant, principal ?? null, o.inactivityTtlMs ?? 0,
			o.absoluteTtlMs ?? 0);
	}

	// Opens a session (lock-free, no broker): throws ShmbError ENOENT (unknown, expired,
	// deleted), EPERM (tenant or principal differ), EINVAL (malformed id).
	open(sid, tenant, principal = null) {
		checkString(sid, 'sid');
		checkString(tenant, 'tenant');
		checkString(principal, 'principal', true);
		const s = new Session(kToken, this, sid, tenant, principal ?? null);
		native.open(this, s, sid, tenant, principal ?? null);
		return s;
	}

	// Deletes a session through the broker (thread pool): every worker's handles then get
	// ENOENT, its followers end.
	async delete(sid, tenant, principal = null) {
		checkString(sid, 'sid');
		checkString(tenant, 'tenant');
		checkString(principal, 'principal', true);
		return native.delete(this, sid, tenant, principal ?? null);
	}

	// The node_id of the broker this client is attached to (0: none; docs/multi-host.md).
	get nodeId() {
		return native.nodeId(this);
	}

	// Brings a session another node had into this broker with the same id (thread pool; the
	// image is copied first, so its buffers may change at once); resolves to the number of
	// events left out (older than the ring's window). Rejects with ShmbError ECONFLICT when a
	// session with this id exists (open it then), EINVAL, ETOOBIG, EFULL, EBROKER.
	async restore(image) {
		if (image === null || typeof image !== 'object')
			throw new TypeError('image must be an object');
		const { sid, tenant, principal = null, createdAtMs, lastAccessedAtMs,
			inactivityTtlMs = 0, absoluteTtlMs = 0, lastEventId, events = [],
			attrs = null } = image;
		checkString(sid, 'image.sid');
		checkString(tenant, 'image.tenant');
		checkString(principal, 'image.principal', true);
		if (!Array.isArray(events))
			throw new TypeError('image.events must be an array');
		let pairs;
		if (attrs === null || attrs === undefined)
			pairs = [];
		else if (attrs instanceof Map)
			pairs = [...attrs];
		else if (typeof attrs === 'object' && !Array.isArray(attrs))
			pairs = Object.entries(attrs);
		else
			throw new TypeError('image.attrs must be an object or a Map');
		return native.restore(this, sid, tenant, principal ?? null, createdAtMs,
			lastAccessedAtMs, inactivityTtlMs, absoluteTtlMs, lastEventId, events, pairs);
	}

	// Closes every session and cursor of this client and detaches; their followers end.
	close() {
		if (this.#closed)
			return;
		this.#closed = true;
		native.clientClose(this);
		for (const s of this.#following)
			s[kWake]();
		this.#following.clear();
	}

	[kFollow](session) {
		this.#following.add(session);
		native.clientFollow(this, 1);
	}

	[kUnfollow](session) {
		this.#following.delete(session);
		native.clientFollow(this, -1);
	}
}

class Attrs {
	#session;

	constructor(session) {
		this.#session = session;
	}

	// {value: Buffer, version} or null when unset.
	entry(key) {
		checkString(key, 'key');
		const r = native.attrGet(this.#session, key);
		return r === null ? null : { value: r[0], version: r[1] };
	}

	// The value as a Buffer, or null when unset.
	get(key) {
		return this.entry(key)?.value ?? null;
	}

	// The value as a UTF-8 string, or null when unset.
	getString(key) {
		return this.entry(key)?.value.toString('utf8') ?? null;
	}

	set(key, value) {
		checkString(key, 'key');
		native.attrSet(this.#session, key, value, undefined);
	}

	// Compare-and-set: true if set, false if the version was not `version` (0: must be unset).
	setIf(key, value, version) {
		checkString(key, 'key');
		if (!Number.isSafeInteger(version) || version < 0)
			throw new TypeError('version must be a non-negative integer');
		return native.attrSet(this.#session, key, value, version);
	}

	// true if removed, false if it was unset.
	delete(key) {
		checkString(key, 'key');
		return native.attrDelete(this.#session, key);
	}
}

class Session {
	#client;
	#sid;
	#tenant;
	#principal;
	#followers = new Set();
	#userSubscribed = false;
	#subscribed = false;

	constructor(token, client, sid, tenant, principal) {
		if (token !== kToken)
			throw new TypeError('use client.open(sid, tenant, principal) to make a Session');
		this.#client = client;
		this.#sid = sid;
		this.#tenant = tenant;
		this.#principal = principal;
		this.attrs = new Attrs(this);
	}

	get id() {
		return this.#sid;
	}

	get client() {
		return this.#client;
	}

	get tenant() {
		return this.#tenant;
	}

	get principal() {
		return this.#principal;
	}

	// Publishes data (Buffer, TypedArray or string, UTF-8) on options.stream (default 0) with
	// options.kind (default 0); returns the event id. Never waits for the broker.
	publish(data, options) {
		const o = checkOptions(options, 'options');
		return native.publish(this, data, o.stream ?? 0, o.kind ?? 0);
	}

	// A cursor over the events after id `after` (0: from the oldest retained), of one stream
	// when options.stream is given.
	cursor(after = 0, options) {
		const o = checkOptions(options, 'options');
		const c = new Cursor(kToken, this);
		native.cursorOpen(this, c, after, o.stream ?? null);
		return c;
	}

	stat() {
		return native.stat(this);
	}

	// Keeps this process subscribed (the session does not expire by inactivity meanwhile).
	// follow() subscribes by itself while it runs.
	subscribe() {
		native.subscribe(this, true);
		this.#userSubscribed = true;
		this.#subscribed = true;
	}

	unsubscribe() {
		this.#userSubscribed = false;
		this.#applySubscription();
	}

	// Closes this handle (the session lives on) and its cursors; their followers end.
	close() {
		native.sessionClose(this);
		this[kWake]();
	}

	#applySubscription() {
		const want = this.#userSubscribed || this.#followers.size > 0;
		if (want === this.#subscribed)
			return;
		native.subscribe(this, want);
		this.#subscribed = want;
	}

	[kFollow](cursor) {
		this.#followers.add(cursor);
		try {
			this.#applySubscription();
		} catch (e) {
			// A session gone or closed ends the follower at its next(); anything else
			// (ENOREADER) means no wakeups would come: refuse.
			if (e.code !== 'ENOENT' && e.code !== 'ECLOSED') {
				this.#followers.delete(cursor);
				throw e;
			}
		}
		if (this.#followers.size === 1 && !this.#client.closed)
			this.#client[kFollow](this);
	}

	[kUnfollow](cursor) {
		if (!this.#followers.delete(cursor))
			return;
		try {
			this.#applySubscription();
		} catch { /* closed or gone: nothing to undo */ }
		if (this.#followers.size === 0 && !this.#client.closed)
			this.#client[kUnfollow](this);
	}

	[kWake]() {
		for (const c of this.#followers)
			c[kWake]();
	}
}

class Cursor {
	#session;
	#wake = null;
	#following = false;

	constructor(token, session) {
		if (token !== kToken)
			throw new TypeError('use session.cursor(after, options) to make a Cursor');
		this.#session = session;
	}

	get session() {
		return this.#session;
	}

	// The last id delivered or skipped (what a client sends as Last-Event-ID).
	get position() {
		return native.cursorPosition(this);
	}

	// The next event {id, stream, kind, tsMs, gap, data: Buffer|null} or null when there is
	// nothing new; never blocks. Throws ShmbError EOVERRUN (with .lagged) once when events after
	// the position were evicted (it continues at the oldest retained), ENOENT once the session
	// is gone.
	next() {
		return native.cursorNext(this);
	}

	// The events available now (a sync iterator over next()).
	*[Symbol.iterator]() {
		for (let ev = this.next(); ev !== null; ev = this.next())
			yield ev;
	}

	// for await (const ev of cursor.follow()): every event as it is published. Ends when the
	// session is deleted or expires, or when this cursor, its session or its client is
	// closed; throws EOVERRUN (call follow() again to go on). One follower per cursor.
	async *follow() {
		if (this.#following)
			throw new ShmbError('follow: this cursor is already followed', 'EBUSY');
		this.#following = true;
		this.#session[kFollow](this);
		try {
			for (;;) {
				let ev;
				try {
					ev = this.next();
				} catch (e) {
					if (e.code === 'ENOENT' || e.code === 'ECLOSED')
						return;
					throw e;
				}
				if (ev !== null) {
					yield ev;
					continue;
				}
				await new Promise((resolve) => { this.#wake = resolve; });
			}
		} finally {
			this.#wake = null;
			this.#following = false;
			this.#session[kUnfollow](this);
		}
	}

	// Closes the cursor; its follower ends.
	close() {
		native.cursorClose(this);
		this[kWake]();
	}

	[kWake]() {
		const w = this.#wake;
		if (w) {
			this.#wake = null;
			w();
		}
	}
}

// The node tag of a session id: its first 4 hex characters (0..65535; meaningful where every
// broker has a node_id). No broker call. Throws ShmbError EINVAL for a string that is not an id.
function sidNode(sid) {
	checkString(sid, 'sid');
	return native.sidNode(sid);
}

module.exports = {
	Client, Session, Cursor, Attrs, ShmbError, sidNode, libraryVersion: native.libraryVersion,
};
module.exports.ShmbEventStore = require('./eventstore.js').ShmbEventStore;
