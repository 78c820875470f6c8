// mcp.mjs - MCP sessions shared across node:cluster workers, for the official MCP TypeScript
// SDK's McpServer, unchanged (SDK 1.32.2, pinned in package.json).
//
// The SDK keeps a session in one process: its StreamableHTTPServerTransport answers 404 to any
// request of a session it did not initialize. clusterSessions() puts the session in shmbroker
// and gives every worker a transport for it on demand:
//  - initialize (a POST without Mcp-Session-Id): creates the shmbroker session (its id is the
//    MCP session id) and stores what later requests need as session attributes: the negotiated
//    protocol version, the client's capabilities and info (mcp.protocolVersion,
//    mcp.clientCapabilities, mcp.clientInfo, JSON). The SDK then serves the request as usual.
//  - any request of a session this worker has not seen: the session is opened (lock-free), a
//    fresh server from createServer() and a transport are built, and the state initialize
//    negotiated is put back from the attributes. The SDK has no public hook for that; the glue
//    sets four private fields, tested against the pinned SDK (test/mcp_glue.test.mjs):
//      transport._webStandardTransport._initialized = true   (else 400 "Server not initialized")
//      transport._webStandardTransport.sessionId = sid        (set by initialize only)
//      server.server._clientCapabilities, server.server._clientVersion  (what initialize stored)
//  - every message goes through ShmbEventStore (lib/eventstore.js): events live in the
//    session's shmbroker streams. A POST's own SSE stream is written by the SDK as usual.
//  - GET (the standalone stream) and GET with Last-Event-ID (a stream resumed on any worker):
//    served here, not by the SDK, from a shmbroker cursor followed through the client's poll,
//    so a notification sent on one worker reaches the GET stream held by another, and a cut
//    POST stream resumes elsewhere and ends with its response.
//  - DELETE: deletes the shmbroker session: every worker's requests of it then get 404.
// Every request opens the session once (a lock-free lookup that also refreshes its inactivity
// TTL), so a session deleted or expired elsewhere is dropped here at its next request.
import { webcrypto } from 'node:crypto';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/sdk/types.js';
import shmb from './shmb.js';
import es from './eventstore.js';

// Node 18 (Debian 12's nodejs) has no global crypto without --experimental-global-webcrypto,
// and SDK 1.32.2's transport calls crypto.randomUUID() for every POST stream.
if (globalThis.crypto === undefined)
	globalThis.crypto = webcrypto;

const { ShmbEventStore } = shmb;
const { GET_STREAM, KIND_PRIMING, KIND_RESPONSE, streamNumber, decode } = es;

const SID_RE = /^[0-9a-f]{32}$/;
const ATTR_VERSION = 'mcp.protocolVersion';
const ATTR_CAPS = 'mcp.clientCapabilities';
const ATTR_INFO = 'mcp.clientInfo';

function sendJson(res, status, code, message) {
	if (res.headersSent)
		return void res.end();
	res.writeHead(status, { 'content-type': 'application/json' });
	res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

const notFound = (res) => sendJson(res, 404, -32001, 'Session not found');

// The response's connection is closed (its 'close' was emitted or is due).
const gone = (res) => res.destroyed || res.closed || res.socket?.destroyed !== false;

// Resolves on 'drain' or 'close', whichever comes first, removing the other listener: one left
// per wait would pile up on a slow stream (a listener per event written).
function drained(res) {
	return new Promise((resolve) => {
		const done = () => {
			res.off('drain', done);
			res.off('close', done);
			resolve();
		};
		res.on('drain', done);
		res.on('close', done);
	});
}

// Loopback origins (any port) and the listed ones; a request without Origin is not a browser's.
function originAllowed(origin, allowed) {
	if (!origin)
		return true;
	if (allowed.includes(origin))
		return true;
	try {
		const u = new URL(origin);
		return ['localhost', '127.0.0.1', '[::1]'].includes(u.hostname) &&
			(u.protocol === 'http:' || u.protocol === 'https:');
	} catch {
		return false;
	}
}

async function readBody(req, limit) {
	const chunks = [];
	let n = 0;
	for await (const c of req) {
		n += c.length;
		if (n > limit)
			return null;
		chunks.push(c);
	}
	return Buffer.concat(chunks).toString('utf8');
}

function isInitialize(m) {
	return m && typeof m === 'object' && !Array.isArray(m) && m.method === 'initialize' &&
		m.id !== undefined;
}

// Options: client (an attached shmb Client), createServer (() => McpServer or Server: a new one
// per session per worker), tenant (default 'mcp'), principalOf (req => string|null: who the
// request is from, e.g. your authentication's user id; a session answers only requests of the
// principal that initialized it, others get 404; default: none), allowedOrigins (besides loopback ones),
// maxLocalSessions (sessions a worker keeps built, least recently used dropped; default 1000),
// maxBodyBytes (default 4 MiB), sessionOptions (TTLs for create), transportOptions (extra
// options of every StreamableHTTPServerTransport).
// Returns { handle(req, res), close() }.
export function clusterSessions(options) {
	const { client, createServer } = options ?? {};
	if (!client || typeof client.open !== 'function')
		throw new TypeError('clusterSessions: options.client must be a shmb Client');
	if (typeof createServer !== 'function')
		throw new TypeError('clusterSessions: options.createServer must be a function');
	const tenant = options.tenant ?? 'mcp';
	const principalOf = options.principalOf ?? (() => null);
	const allowed = options.allowedOrigins ?? [];
	const maxLocal = options.maxLocalSessions ?? 1000;
	const maxBody = options.maxBodyBytes ?? 4 << 20;
	const local = new Map(); // sid -> Promise<entry>, in least recently used order

	async function build(sid, session, restore) {
		const server = createServer();
		const store = new ShmbEventStore(session);
		const transport = new StreamableHTTPServerTransport({
			...options.transportOptions, sessionIdGenerator: () => sid, eventStore: store,
		});
		await server.connect(transport);
		if (restore) {
			// The private fields (see the top of this file): what initialize set elsewhere.
			const w = transport._webStandardTransport;
			w._initialized = true;
			w.sessionId = sid;
			const srv = server.server ?? server;
			srv._clientCapabilities = JSON.parse(session.attrs.getString(ATTR_CAPS) ?? '{}');
			srv._clientVersion = JSON.parse(session.attrs.getString(ATTR_INFO) ?? 'null') ??
				undefined;
		}
		return { sid, session, store, server, transport };
	}

	function remember(sid, p) {
		local.set(sid, p);
		while (local.size > maxLocal)
			drop(local.keys().next().value);
	}

	function drop(sid) {
		const p = local.get(sid);
		if (!p)
			return;
		local.delete(sid);
		p.then(async (e) => {
			await e.transport.close().catch(() => {});
			await e.server.close().catch(() => {});
			e.session.close();
		}, () => {});
	}

	// The worker's entry of sid (built on first use), or null when the session is unknown.
	async function entryOf(sid, principal) {
		if (!SID_RE.test(sid))
			return null;
		let probe;
		try {
			// Lock-free; checks the binding; refreshes the inactivity TTL.
			probe = client.open(sid, tenant, principal);
		} catch (e) {
			if (e.code === 'EPERM') // another principal's: not found for this one
				return null;
			if (e.code === 'ENOENT' || e.code === 'EINVAL') {
				drop(sid);
				return null;
			}
			throw e;
		}
		const have = local.get(sid);
		if (have) {
			probe.close();
			local.delete(sid); // most recently used last
			local.set(sid, have);
			return have;
		}
		const p = build(sid, probe, true);
		remember(sid, p);
		p.catch(() => { local.delete(sid); probe.close(); });
		return p;
	}

	async function initialize(req, res, body, principal) {
		const sid = await client.create(tenant, principal, options.sessionOptions);
		const session = client.open(sid, tenant, principal);
		const p = body.params ?? {};
		const version = SUPPORTED_PROTOCOL_VERSIONS.includes(p.protocolVersion)
			? p.protocolVersion : LATEST_PROTOCOL_VERSION;
		try {
			session.attrs.set(ATTR_VERSION, version);
			session.attrs.set(ATTR_CAPS, JSON.stringify(p.capabilities ?? {}));
			session.attrs.set(ATTR_INFO, JSON.stringify(p.clientInfo ?? null));
		} catch (e) {
			session.close();
			await client.delete(sid, tenant, principal).catch(() => {});
			if (e.code === 'EINVAL' || e.code === 'ETOOBIG') // over the attribute size
				return sendJson(res, 400, -32602,
					'Invalid params: client capabilities or info too large');
			throw e;
		}
		const ep = build(sid, session, false);
		remember(sid, ep);
		const e = await ep;
		await e.transport.handleRequest(req, res, body);
		// The SDK refused it (malformed params, no Accept of text/event-stream, ...): the
		// client got no session id, so nobody would ever use or DELETE the session; left, a
		// flood of such requests would hold every session record until the TTL.
		if (res.statusCode !== 200) {
			drop(sid);
			await client.delete(sid, tenant, principal).catch(() => {});
		}
	}

	// GET: the standalone stream (from now), or the stream of Last-Event-ID resumed after it.
	async function serveStream(e, req, res) {
		const last = req.headers['last-event-id'];
		let streamId = GET_STREAM;
		let cursor;
		if (last) {
			const at = e.store.lookup(last);
			if (!at)
				return sendJson(res, 400, -32000, 'Invalid event ID format');
			streamId = at.streamId;
			cursor = e.session.cursor(at.id, { stream: streamNumber(streamId) });
		} else {
			cursor = e.session.cursor(e.session.stat().lastEventId, { stream: 0 });
		}
		res.writeHead(200, { 'content-type': 'text/event-stream',
			'cache-control': 'no-cache, no-transform', connection: 'keep-alive',
			'x-accel-buffering': 'no', 'mcp-session-id': e.sid });
		res.on('close', () => cursor.close()); // ends the follower below
		// The client may have left while this worker built the session (entryOf awaits the
		// server's connect): 'close' was emitted before the listener above, and the follower
		// would keep the session subscribed (never expiring) for good.
		if (gone(res)) {
			cursor.close();
			return void res.end();
		}
		const version = req.headers['mcp-protocol-version'] ??
			e.session.attrs.getString(ATTR_VERSION) ?? '';
		if (!last && version >= '2025-11-25') // a priming event: a Last-Event-ID to resume at
			res.write(`id: ${await e.store.storeEvent(GET_STREAM, {})}\ndata: \n\n`);
		else
			res.flushHeaders();
		const endOnResponse = streamId !== GET_STREAM;
		try {
			for await (const ev of cursor.follow()) {
				const d = decode(ev);
				if (!d || d.streamId !== streamId || ev.kind === KIND_PRIMING)
					continue;
				if (!res.write(`event: message\nid: ${ev.id}\ndata: ${d.json}\n\n`))
					await drained(res);
				if (gone(res))
					break;
				if (endOnResponse && ev.kind === KIND_RESPONSE)
					break;
			}
		} catch (err) {
			if (err.code !== 'EOVERRUN') // evicted: end; the client resumes at what it has
				throw err;
		} finally {
			cursor.close();
			res.end();
		}
	}

	async function handle(req, res) {
		try {
			if (!originAllowed(req.headers.origin, allowed))
				return sendJson(res, 403, -32000, 'Forbidden: Origin not allowed');
			const sid = req.headers['mcp-session-id'];
			const principal = principalOf(req) ?? null;
			if (req.method === 'POST') {
				const text = await readBody(req, maxBody);
				if (text === null)
					return sendJson(res, 413, -32000, 'Request body too large');
				let body;
				try {
					body = JSON.parse(text);
				} catch {
					return sendJson(res, 400, -32700, 'Parse error: Invalid JSON');
				}
				if (!sid) {
					if (!isInitialize(body))
						return sendJson(res, 400, -32000,
							'Bad Request: No valid session ID provided');
					return await initialize(req, res, body, principal);
				}
				const e = await entryOf(sid, principal);
				if (!e)
					return notFound(res);
				return await e.transport.handleRequest(req, res, body);
			}
			if (req.method === 'GET' || req.method === 'DELETE') {
				if (!sid)
					return sendJson(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
				const e = await entryOf(sid, principal);
				if (!e)
					return notFound(res);
				if (req.method === 'DELETE') {
					try {
						await client.delete(sid, tenant, principal);
					} catch (err) {
						if (err.code !== 'ENOENT')
							throw err;
						drop(sid);
						return notFound(res);
					}
					drop(sid);
					res.writeHead(200).end();
					return;
				}
				if (!String(req.headers.accept ?? '').includes('text/event-stream'))
					return sendJson(res, 406, -32000,
						'Not Acceptable: Client must accept text/event-stream');
				return await serveStream(e, req, res);
			}
			res.setHeader('allow', 'GET, POST, DELETE');
			return sendJson(res, 405, -32000, 'Method not allowed.');
		} catch (err) {
			options.onerror?.(err);
			// No session record left (EFULL), the broker unreachable (EBROKER) or serving
			// another segment (ESTALE: the client must be attached again, onerror's to do):
			// the condition passes, the client should retry rather than see a server fault.
			if (err.code === 'EFULL' || err.code === 'EBROKER' || err.code === 'ESTALE') {
				if (!res.headersSent)
					res.setHeader('retry-after', '1');
				return sendJson(res, 503, -32000, `Service unavailable: ${err.message}`);
			}
			sendJson(res, 500, -32603, `Internal error: ${err.message}`);
		}
	}

	return {
		handle,
		// Drops every session this worker built (the sessions live on in shmbroker).
		close() {
			for (const sid of [...local.keys()])
				drop(sid);
		},
		get localSessions() {
			return local.size;
		},
	};
}
