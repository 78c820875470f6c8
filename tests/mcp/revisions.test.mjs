// revisions.test.mjs - shmb-mcpd against three releases of the official SDK client, installed
// side by side as npm aliases (tests/package.json): 1.10.2 (protocol 2024-11-05), 1.13.3
// (2025-06-18) and 1.32.2 (2025-11-25). Each: initialize (the version negotiated is the
// client's), tools/call with progress, a notification on the standalone GET stream, a POST
// stream cut and resumed with the resumption token. Priming events (an id and empty data) go
// only to sessions of 2025-11-25 or later; an initialize with a version the server does not
// know is answered with its latest. Run by ctest (tests/mcp/CMakeLists.txt) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { withServer, waitFor, freshConnectionFetch } from './lib.mjs';

const T = { timeout: 60000 };
const SDKS = [
	{ pkg: 'sdk-1-10', version: '1.10.2', proto: '2024-11-05' },
	{ pkg: 'sdk-1-13', version: '1.13.3', proto: '2025-06-18' },
	{ pkg: '@modelcontextprotocol/sdk', version: '1.32.2', proto: '2025-11-25' },
];

for (const sdk of SDKS) {
	test(`SDK ${sdk.version}: initialize, progress, GET stream, resume`, T, () =>
		withServer({}, async (srv) => {
			const { Client } = await import(`${sdk.pkg}/client/index.js`);
			const { StreamableHTTPClientTransport } =
				await import(`${sdk.pkg}/client/streamableHttp.js`);
			const types = await import(`${sdk.pkg}/types.js`);
			const pj = JSON.parse(readFileSync(new URL(`../node_modules/${sdk.pkg}/package.json`,
				import.meta.url), 'utf8'));
			assert.equal(pj.version, sdk.version);
			const info = { name: `rev-${sdk.version}`, version: '1' };
			const errors = [];
			const connect = async (opts = {}) => {
				const client = new Client(info);
				const progress = [], logs = [];
				client.setNotificationHandler(types.ProgressNotificationSchema,
					(n) => { progress.push(n.params); });
				client.setNotificationHandler(types.LoggingMessageNotificationSchema,
					(n) => { logs.push(n.params.data); });
				// A priming event (empty data) sent to a client before 2025-11-25 surfaces
				// here: SDK 1.11-1.13 parse it as JSON ("Unexpected end of JSON input").
				client.onerror = (e) => { if (/JSON/.test(String(e))) errors.push(String(e)); };
				const transport = new StreamableHTTPClientTransport(new URL(srv.url), opts);
				await client.connect(transport);
				return { client, transport, progress, logs };
			};

			// initialize: the version negotiated is the client's own.
			const a = await connect({ fetch: freshConnectionFetch([]) });
			const si = await a.client.callTool({ name: 'session_info', arguments: {} });
			assert.equal(JSON.parse(si.content[0].text).protocolVersion, sdk.proto);

			// tools/call with progress (the handler above takes every progress notification,
			// so the token is ours rather than the SDK's onprogress routing).
			const mine = (p, tok) => p.filter((x) => x.progressToken === tok)
				.map((x) => x.progress);
			const r = await a.client.request({ method: 'tools/call', params: {
				name: 'countdown', arguments: { n: 4, delay_ms: 10 },
				_meta: { progressToken: 'p1' } } }, types.CallToolResultSchema);
			assert.equal(r.content[0].text, 'countdown done: 4 steps');
			assert.deepEqual(mine(a.progress, 'p1'), [1, 2, 3, 4]);

			// The standalone GET stream the client opens after initialization gets notify's
			// message (SDKs before 1.14 take no fetch option to watch the GET with: notify
			// until one arrives, a message published before the GET is not for it).
			await waitFor(async () => {
				await a.client.callTool({ name: 'notify', arguments: { text: 'hello' } });
				return waitFor(() => a.logs.includes('hello'), 200, 'hello').catch(() => false);
			}, 10000, 'a notification on the standalone GET stream');

			// A POST stream cut after two of six steps, resumed by a new transport of the
			// session with the resumption token: every step once, then the result.
			let token;
			const cut = new AbortController();
			const req = a.client.request({ method: 'tools/call', params: { name: 'countdown',
				arguments: { n: 6, delay_ms: 150 }, _meta: { progressToken: 'rv' } } },
			types.CallToolResultSchema, { onresumptiontoken: (t) => { token = t; },
				signal: cut.signal });
			req.catch(() => {});
			await waitFor(() => mine(a.progress, 'rv').length >= 2 && token, 10000, 'two steps');
			await a.transport.close();
			// SDKs before 1.14 keep the request's 60 s timer after a close; the abort, once
			// the transport is gone, clears it without sending notifications/cancelled.
			cut.abort();
			const before = mine(a.progress, 'rv');
			const b = await connect({ sessionId: a.transport.sessionId,
				fetch: freshConnectionFetch([]) });
			const r2 = await b.client.request({ method: 'tools/call', params: {
				name: 'countdown', arguments: { n: 6, delay_ms: 150 },
				_meta: { progressToken: 'rv' } } }, types.CallToolResultSchema,
			{ resumptionToken: token, timeout: 15000 });
			assert.equal(r2.content[0].text, 'countdown done: 6 steps');
			assert.deepEqual([...before, ...mine(b.progress, 'rv')], [1, 2, 3, 4, 5, 6]);
			await b.client.close();
			assert.deepEqual(errors, []);
		}));
}

async function raw(url, body, headers = {}) {
	const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json',
		accept: 'application/json, text/event-stream', ...headers }, body: JSON.stringify(body) });
	return { res, text: await res.text() };
}

test('priming events only for 2025-11-25 sessions; an unknown version gets the latest', T, () =>
	withServer({}, async (srv) => {
		const init = (v) => raw(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
			params: { protocolVersion: v, capabilities: {}, clientInfo: { name: 'r', version: '1' } } });
		const u = await init('1999-01-01');
		assert.equal(JSON.parse(u.text).result.protocolVersion, '2025-11-25');
		for (const [v, primed] of [['2024-11-05', false], ['2025-03-26', false],
			['2025-06-18', false], ['2025-11-25', true]]) {
			const i = await init(v);
			assert.equal(JSON.parse(i.text).result.protocolVersion, v);
			const h = { 'mcp-session-id': i.res.headers.get('mcp-session-id') };
			const c = await raw(srv.url, { jsonrpc: '2.0', id: 2, method: 'tools/call',
				params: { name: 'countdown', arguments: { n: 1, delay_ms: 0 },
					_meta: { progressToken: 1 } } }, h);
			assert.match(c.res.headers.get('content-type'), /text\/event-stream/);
			const empty = /^data: ?$/m.test(c.text);
			assert.equal(empty, primed, `${v}: ${JSON.stringify(c.text)}`);
			assert.match(c.text, /countdown done: 1 steps/);
		}
	}));
