// mcp_glue.test.mjs - ShmbEventStore as the pinned SDK's transport uses it, and the glue's
// private-field restore (lib/mcp.mjs) against the SDK in client/node/node_modules: two
// clusterSessions handlers in one process stand for two workers (each builds its own server
// and transport), against a real shmbrokerd.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { z } from 'zod';
import { Client, ShmbEventStore } from '../lib/index.mjs';
import { clusterSessions } from '../lib/mcp.mjs';
import { startBroker } from './broker.mjs';

let broker;
let shmb;
before(async () => {
	broker = await startBroker();
	shmb = await Client.attach(broker.name);
});
after(async () => {
	shmb?.close();
	await broker?.stop();
});

test('ShmbEventStore: ids unique across streams, stream of an id, replay of only the cut stream',
	async () => {
		const sid = await shmb.create('t');
		const store = new ShmbEventStore(shmb.open(sid, 't'));
		const prime = await store.storeEvent('post-A', {});
		const a1 = await store.storeEvent('post-A', { jsonrpc: '2.0', method: 'a', params: { i: 1 } });
		const g1 = await store.storeEvent('_GET_stream', { jsonrpc: '2.0', method: 'g' });
		const b1 = await store.storeEvent('post-B', { jsonrpc: '2.0', method: 'b' });
		const a2 = await store.storeEvent('post-A', { jsonrpc: '2.0', id: 3, result: {} });
		const ids = [prime, a1, g1, b1, a2].map(Number);
		assert.deepEqual(ids, [...ids].sort((x, y) => x - y));
		assert.equal(new Set(ids).size, 5);
		assert.equal(await store.getStreamIdForEventId(a1), 'post-A');
		assert.equal(await store.getStreamIdForEventId(g1), '_GET_stream');
		assert.equal(await store.getStreamIdForEventId(b1), 'post-B');
		for (const bad of ['0', '999999', 'x', '', '-1', '1e3', '12345678901234567890'])
			assert.equal(await store.getStreamIdForEventId(bad), undefined, bad);
		const sent = [];
		const stream = await store.replayEventsAfter(prime, {
			send: async (id, m) => { sent.push([id, m]); } });
		assert.equal(stream, 'post-A');
		assert.deepEqual(sent, [[a1, { jsonrpc: '2.0', method: 'a', params: { i: 1 } }],
			[a2, { jsonrpc: '2.0', id: 3, result: {} }]]);
		sent.length = 0;
		await store.replayEventsAfter(g1, { send: async (id, m) => { sent.push([id, m]); } });
		assert.deepEqual(sent, []);
		await assert.rejects(store.replayEventsAfter('424242', { send: async () => {} }));
		assert.throws(() => new ShmbEventStore({}), TypeError);
		// Evicted: the ring keeps 256 events; the first id is then unknown.
		for (let i = 0; i < 300; i++)
			await store.storeEvent('post-C', { jsonrpc: '2.0', method: 'c' });
		assert.equal(await store.getStreamIdForEventId(a1), undefined);
		await shmb.delete(sid, 't');
	});

// The SDK's own replay path (a single-process server with the store): a GET with Last-Event-ID
// after the priming event of a POST stream gets that stream's events, as SDK 1.32.2 calls
// getStreamIdForEventId and replayEventsAfter.
test('ShmbEventStore under the SDK transport: storeEvent per message, replay by Last-Event-ID',
	async () => {
		const sid = await shmb.create('t');
		const store = new ShmbEventStore(shmb.open(sid, 't'));
		const server = new McpServer({ name: 's', version: '1' });
		server.registerTool('two', { inputSchema: { x: z.string() } }, async ({ x }, extra) => {
			await extra.sendNotification({ method: 'notifications/progress',
				params: { progressToken: 'p', progress: 1 } });
			return { content: [{ type: 'text', text: x }] };
		});
		const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => sid,
			eventStore: store });
		await server.connect(transport);
		const srv = http.createServer((req, res) => transport.handleRequest(req, res));
		await new Promise((r) => srv.listen(0, '127.0.0.1', r));
		const url = `http://127.0.0.1:${srv.address().port}/`;
		const h = { 'content-type': 'application/json', accept: 'application/json, text/event-stream',
			'mcp-protocol-version': '2025-11-25' };
		let res = await fetch(url, { method: 'POST', headers: h, body: JSON.stringify({
			jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25',
				capabilities: {}, clientInfo: { name: 'c', version: '1' } } }) });
		assert.equal(res.status, 200);
		await res.text();
		res = await fetch(url, { method: 'POST', headers: { ...h, 'mcp-session-id': sid },
			body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call',
				params: { name: 'two', arguments: { x: 'hi' } } }) });
		const sse = await res.text();
		const ids = [...sse.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]);
		assert.equal(ids.length, 3, sse); // priming, progress, result
		res = await fetch(url, { headers: { accept: 'text/event-stream', 'mcp-session-id': sid,
			'mcp-protocol-version': '2025-11-25', 'last-event-id': ids[0] } });
		assert.equal(res.status, 200);
		const reader = res.body.getReader();
		let text = '';
		while (!text.includes('"result"'))
			text += new TextDecoder().decode((await reader.read()).value);
		assert.deepEqual([...text.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]), ids.slice(1));
		assert.match(text, /notifications\/progress/);
		await reader.cancel();
		await transport.close();
		srv.closeAllConnections();
		srv.close();
		await shmb.delete(sid, 't');
	});

// Two handlers = two workers. Initialize on one; the other rebuilds the session from the
// attributes through the SDK private fields the glue documents. If a new SDK renames them,
// this fails (the pinned version is in package.json).
test('the glue rebuilds a session on another worker through the documented private fields',
	async () => {
		const t = new StreamableHTTPServerTransport({ sessionIdGenerator: () => 'x' });
		assert.equal(t._webStandardTransport._initialized, false);
		assert.ok('sessionId' in t._webStandardTransport || t._webStandardTransport.sessionId === undefined);
		const probe = new Server({ name: 'p', version: '1' });
		probe._clientCapabilities = { roots: {} };
		probe._clientVersion = { name: 'v', version: '2' };
		assert.deepEqual(probe.getClientCapabilities(), { roots: {} });
		assert.deepEqual(probe.getClientVersion(), { name: 'v', version: '2' });

		const servers = [[], []];
		const make = (i) => clusterSessions({ client: shmb, createServer: () => {
			const s = new McpServer({ name: 's', version: '1' });
			s.registerTool('caps', {}, async () => ({ content: [{ type: 'text',
				text: JSON.stringify(s.server.getClientCapabilities()) }] }));
			servers[i].push(s);
			return s;
		} });
		const workers = [make(0), make(1)];
		const srv = [];
		for (const w of workers) {
			const s = http.createServer((req, res) => w.handle(req, res));
			await new Promise((r) => s.listen(0, '127.0.0.1', r));
			srv.push(s);
		}
		const url = (i) => `http://127.0.0.1:${srv[i].address().port}/mcp`;
		const h = { 'content-type': 'application/json', accept: 'application/json, text/event-stream',
			'mcp-protocol-version': '2025-06-18' };
		const caps = { experimental: { z: { n: 1 } } };
		let res = await fetch(url(0), { method: 'POST', headers: h, body: JSON.stringify({
			jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18',
				capabilities: caps, clientInfo: { name: 'c', version: '9' } } }) });
		assert.equal(res.status, 200);
		const sid = res.headers.get('mcp-session-id');
		assert.match(sid, /^[0-9a-f]{32}$/);
		await res.text();
		const s = shmb.open(sid, 'mcp');
		assert.equal(s.attrs.getString('mcp.protocolVersion'), '2025-06-18');
		assert.deepEqual(JSON.parse(s.attrs.getString('mcp.clientInfo')), { name: 'c', version: '9' });
		s.close();
		res = await fetch(url(1), { method: 'POST', headers: { ...h, 'mcp-session-id': sid },
			body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call',
				params: { name: 'caps', arguments: {} } }) });
		assert.equal(res.status, 200);
		const body = await res.text();
		assert.match(body, /"result"/, body);
		assert.equal(servers[1].length, 1);
		assert.deepEqual(servers[1][0].server.getClientCapabilities(), caps);
		assert.deepEqual(servers[1][0].server.getClientVersion(), { name: 'c', version: '9' });
		// DELETE on worker 1 ends it for worker 0 too.
		res = await fetch(url(1), { method: 'DELETE', headers: { ...h, 'mcp-session-id': sid } });
		assert.equal(res.status, 200);
		res = await fetch(url(0), { method: 'POST', headers: { ...h, 'mcp-session-id': sid },
			body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/list' }) });
		assert.equal(res.status, 404);
		assert.equal(workers[0].localSessions, 0);
		for (const x of srv) {
			x.closeAllConnections();
			x.close();
		}
		for (const w of workers)
			w.close();
	});

test('principalOf binds a session to who initialized it: another principal gets 404', async () => {
	const w = clusterSessions({ client: shmb, principalOf: (req) => req.headers['x-user'],
		createServer: () => new McpServer({ name: 's', version: '1' }) });
	const srv = http.createServer((req, res) => w.handle(req, res));
	await new Promise((r) => srv.listen(0, '127.0.0.1', r));
	const url = `http://127.0.0.1:${srv.address().port}/mcp`;
	const h = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
	const post = (user, sid, body) => fetch(url, { method: 'POST', body: JSON.stringify(body),
		headers: { ...h, ...(user ? { 'x-user': user } : {}), ...(sid ? { 'mcp-session-id': sid } : {}) } });
	let res = await post('alice', null, { jsonrpc: '2.0', id: 1, method: 'initialize', params: {
		protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'c', version: '1' } } });
	assert.equal(res.status, 200);
	const sid = res.headers.get('mcp-session-id');
	await res.text();
	const list = { jsonrpc: '2.0', id: 2, method: 'tools/list' };
	for (const who of ['bob', null]) {
		res = await post(who, sid, list);
		assert.equal(res.status, 404, `as ${who}`);
		await res.text();
	}
	res = await post('alice', sid, list);
	assert.equal(res.status, 200);
	await res.text();
	res = await fetch(url, { method: 'DELETE', headers: { 'x-user': 'bob', 'mcp-session-id': sid } });
	assert.equal(res.status, 404);
	res = await fetch(url, { method: 'DELETE', headers: { 'x-user': 'alice', 'mcp-session-id': sid } });
	assert.equal(res.status, 200);
	srv.closeAllConnections();
	srv.close();
	w.close();
});
