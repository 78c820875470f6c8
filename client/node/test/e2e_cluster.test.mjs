// e2e_cluster.test.mjs - examples/mcp-cluster.mjs with 4 node:cluster workers, driven by the
// official MCP SDK client pinned in tests/package.json: the cases tests/mcp/e2e.test.mjs covers
// for shmb-mcpd (initialize and tools, progress, the standalone stream fed from another
// connection, a stream cut and resumed on another worker, kill -9 of the worker holding a
// stream, DELETE then 404) and the statuses (400, 404, 403 foreign Origin, -32700). Every
// server gets its own broker (started by the example) and runtime directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BROKERD, waitFor, spawnServer } from './broker.mjs';

// tests/mcp/lib.mjs's fetch helpers (it wants SHMB_MCPD, which this file does not use).
process.env.SHMB_MCPD ??= 'unused';
const { recordingFetch, freshConnectionFetch, alive } = await import('../../../tests/mcp/lib.mjs');
const sdk = (p) => import(new URL(`../../../tests/node_modules/@modelcontextprotocol/sdk/dist/esm/${p}`,
	import.meta.url));
const { Client } = await sdk('client/index.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
const { CallToolResultSchema, LoggingMessageNotificationSchema, ProgressNotificationSchema } =
	await sdk('types.js');
const { Client: ShmbClient } = await import('../lib/index.mjs');

const EXAMPLE = fileURLToPath(new URL('../examples/mcp-cluster.mjs', import.meta.url));
const info = { name: 'shmb-node-e2e', version: '1.0.0' };
const T = { timeout: 90000 };
let serial = 0;

async function startExample(workers = 4) {
	const dir = mkdtempSync(join(tmpdir(), 'shmb-nodee2e-'));
	const portFile = join(dir, 'port');
	const name = `nodee2e${process.pid}n${serial++}`;
	const env = { ...process.env, SHMB_RUNTIME_DIR: dir };
	const srv = await spawnServer(process.execPath, [EXAMPLE, '--port', '0', '--port-file',
		portFile, '--workers', String(workers), '--name', name, '--broker', BROKERD,
		'--broker-arg=--unlink-on-exit', '--broker-arg=--max-sessions', '--broker-arg=256'],
	env, () => existsSync(portFile), 'the port file of mcp-cluster');
	const port = Number(readFileSync(portFile, 'utf8').trim());
	return {
		url: `http://127.0.0.1:${port}/mcp`, name, dir, log: srv.log,
		async stop() {
			if (!srv.exited()) {
				srv.child.kill('SIGTERM');
				const t = setTimeout(() => srv.child.kill('SIGKILL'), 15000);
				await srv.exit;
				clearTimeout(t);
			}
			rmSync(dir, { recursive: true, force: true });
			assert.deepEqual(srv.exited(), { code: 0, sig: null }, `mcp-cluster exit:\n${srv.log()}`);
			assert.ok(!existsSync(`/dev/shm/shmb.${name}`), 'segment left behind');
		},
	};
}

async function withServer(fn) {
	const srv = await startExample();
	try {
		await fn(srv);
	} catch (e) {
		e.message += `\n--- mcp-cluster stderr ---\n${srv.log()}`;
		throw e;
	} finally {
		await srv.stop();
	}
}

async function connect(url, opts = {}) {
	const client = new Client(info);
	const progress = [];
	client.setNotificationHandler(ProgressNotificationSchema, (n) => { progress.push(n.params); });
	const transport = new StreamableHTTPClientTransport(new URL(url), opts);
	await client.connect(transport);
	return { client, transport, progress };
}

function countdownRequest(n, delayMs, token) {
	return { method: 'tools/call', params: { name: 'countdown',
		arguments: { n, delay_ms: delayMs }, _meta: { progressToken: token } } };
}

function resultText(r) {
	assert.ok(Array.isArray(r.content) && r.content.length > 0, JSON.stringify(r));
	return r.content[0].text;
}

test('initialize, list tools, echo on every worker', T, () => withServer(async (srv) => {
	const seen = [];
	const { client, transport } = await connect(srv.url, { fetch: freshConnectionFetch(seen) });
	assert.match(transport.sessionId, /^[0-9a-f]{32}$/);
	const names = (await client.listTools()).tools.map((t) => t.name);
	for (const t of ['echo', 'countdown', 'notify'])
		assert.ok(names.includes(t), `tools/list lacks ${t}: ${names}`);
	for (let i = 0; i < 12; i++) {
		const r = await client.callTool({ name: 'echo', arguments: { text: `héllo ${i}` } });
		assert.equal(resultText(r), `héllo ${i}`);
	}
	const pids = new Set(seen.filter((s) => s.method === 'POST').map((s) => s.pid));
	assert.ok(pids.size >= 2, `one session's requests all on ${[...pids]}`);
	assert.ok(seen.every((s) => s.status < 400), JSON.stringify(seen));
	await client.close();
}));

test('countdown reports progress, then its result', T, () => withServer(async (srv) => {
	const client = new Client(info);
	await client.connect(new StreamableHTTPClientTransport(new URL(srv.url)));
	const seen = [];
	const r = await client.callTool({ name: 'countdown', arguments: { n: 5, delay_ms: 20 } },
		CallToolResultSchema, { onprogress: (p) => seen.push(p.progress) });
	assert.deepEqual(seen, [1, 2, 3, 4, 5]);
	assert.equal(resultText(r), 'countdown done: 5 steps');
	await client.close();
}));

test('notify through one connection reaches the standalone stream held by another worker', T,
	() => withServer(async (srv) => {
		const getSeen = [];
		const a = new Client(info);
		const logs = [];
		a.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { logs.push(n.params); });
		const ta = new StreamableHTTPClientTransport(new URL(srv.url),
			{ fetch: recordingFetch(getSeen) });
		await a.connect(ta);
		await waitFor(() => getSeen.some((s) => s.method === 'GET' && s.status === 200), 5000,
			'the standalone GET stream');
		const getPid = getSeen.find((s) => s.method === 'GET' && s.status === 200).pid;
		const postSeen = [];
		const { client: b } = await connect(srv.url, { sessionId: ta.sessionId,
			fetch: freshConnectionFetch(postSeen) });
		const sent = [];
		let crossed = 0;
		for (let i = 0; i < 30 && crossed < 3; i++) {
			sent.push(`note ${i}`);
			const r = await b.callTool({ name: 'notify', arguments: { text: `note ${i}` } });
			assert.ok(!r.isError, JSON.stringify(r));
			await waitFor(() => logs.length === sent.length, 5000, `notification ${i}`);
			if (postSeen.filter((s) => s.method === 'POST').at(-1).pid !== getPid)
				crossed++;
		}
		assert.ok(crossed >= 1, `30 notify calls, none served by a worker other than ${getPid}`);
		assert.deepEqual(logs.map((l) => l.data), sent);
		assert.ok(logs.every((l) => l.level === 'info'), JSON.stringify(logs));
		await b.close();
		await a.close();
	}));

// Starts countdown n on a first client, cuts its stream with cut() after three steps, resumes
// with a second client (new connections) and the last event id the first one saw: both
// together see 1..n exactly once, then the result, through a GET on another worker than avoid.
async function cutAndResume(srv, n, tok, cut) {
	const seen = [];
	const first = await connect(srv.url, { fetch: recordingFetch(seen) });
	const sid = first.transport.sessionId;
	let token;
	const req = first.client.request(countdownRequest(n, 150, tok), CallToolResultSchema,
		{ onresumptiontoken: (t) => { token = t; } });
	req.catch(() => {});
	await waitFor(() => first.progress.length >= 3 && token, 10000, 'three steps');
	const post = seen.filter((s) => s.method === 'POST' && s.type.includes('event-stream'));
	const avoid = await cut({ ...first, pid: post.at(-1).pid });
	const before = first.progress.slice();
	assert.ok(before.length < n, 'the countdown ended before the cut');
	const seen2 = [];
	const second = await connect(srv.url, { sessionId: sid, fetch: freshConnectionFetch(seen2) });
	return { first, second, sid, token, before, seen2, avoid };
}

function steps(progress, tok) {
	return progress.filter((p) => p.progressToken === tok).map((p) => p.progress);
}

test('a stream cut mid-countdown resumes on another worker, each step once, then the result',
	T, () => withServer(async (srv) => {
		const n = 8;
		const { second, token, before, seen2 } = await cutAndResume(srv, n, 'cut-1',
			async ({ transport }) => { await transport.close(); });
		// Resumed until a worker other than the POST's served the GET (new connections
		// spread over the workers): each try replays what the cut stream had after token.
		const r = await second.client.request(countdownRequest(n, 150, 'cut-1'),
			CallToolResultSchema, { resumptionToken: token, timeout: 15000 });
		assert.equal(resultText(r), `countdown done: ${n} steps`);
		assert.deepEqual([...steps(before, 'cut-1'), ...steps(second.progress, 'cut-1')],
			Array.from({ length: n }, (_, i) => i + 1));
		assert.ok(seen2.some((s) => s.method === 'GET' && s.status === 200), JSON.stringify(seen2));
		await second.client.close();
	}));

test('kill -9 of the worker running a countdown: the stream resumes elsewhere with every step ' +
	'published before the kill, and the session stays usable', T, () => withServer(async (srv) => {
	const n = 40;
	const { second, sid, token, before, seen2, avoid } = await cutAndResume(srv, n, 'kill-1',
		async ({ transport, pid }) => {
			process.kill(pid, 'SIGKILL');
			await transport.close();
			await waitFor(() => !alive(pid), 5000, 'the worker to die');
			return pid;
		});
	// What the dead worker published on that stream, read from the segment.
	process.env.SHMB_RUNTIME_DIR = srv.dir; // libshmb reads it at attach
	const shmb = await ShmbClient.attach(srv.name);
	const s = shmb.open(sid, 'mcp');
	const published = [];
	for (const ev of s.cursor(0)) {
		const text = ev.data?.toString() ?? '';
		const m = text.match(/"progressToken":"kill-1","progress":(\d+)/);
		if (m)
			published.push(Number(m[1]));
	}
	assert.ok(published.length >= 3 && published.length < n,
		JSON.stringify(published));
	s.close();
	shmb.close();
	// The resumed request never gets a result (its worker died): abort it once the replay came.
	const ac = new AbortController();
	const req = second.client.request(countdownRequest(n, 150, 'kill-1'), CallToolResultSchema,
		{ resumptionToken: token, signal: ac.signal, timeout: 30000 });
	req.catch(() => {});
	await waitFor(() => seen2.some((s) => s.method === 'GET' && s.status === 200) &&
		steps([...before, ...second.progress], 'kill-1').length >= published.length,
	10000, 'the resumed stream and the replayed steps');
	ac.abort();
	assert.deepEqual([...steps(before, 'kill-1'), ...steps(second.progress, 'kill-1')],
		published);
	assert.deepEqual(published, Array.from({ length: published.length }, (_, i) => i + 1));
	assert.ok(seen2.some((s) => s.method === 'GET' && s.status === 200 && s.pid !== avoid),
		JSON.stringify(seen2));
	// The session stays usable on the remaining (and the replacement) workers.
	for (let i = 0; i < 6; i++) {
		const r = await second.client.callTool({ name: 'echo', arguments: { text: `after ${i}` } });
		assert.equal(resultText(r), `after ${i}`);
	}
	await second.client.close();
}));

test('kill -9 of the worker running a countdown: the SDK reconnects by itself elsewhere and ' +
	'gets every step published before the kill', T, () => withServer(async (srv) => {
	const seen = [];
	const resumed = []; // the GETs that carried a Last-Event-ID
	const record = recordingFetch(seen);
	const fetchResumes = async (url, init) => {
		const res = await record(url, init);
		if (new Headers(init?.headers).get('last-event-id'))
			resumed.push(seen.at(-1));
		return res;
	};
	const c = await connect(srv.url, { fetch: fetchResumes,
		reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000,
			reconnectionDelayGrowFactor: 1.5, maxRetries: 10 } });
	const ac = new AbortController();
	const req = c.client.request(countdownRequest(40, 150, 'kill-2'), CallToolResultSchema,
		{ signal: ac.signal, timeout: 60000 });
	req.catch(() => {});
	await waitFor(() => c.progress.length >= 3, 10000, 'three steps');
	const victim = seen.filter((s) => s.method === 'POST' && s.type.includes('event-stream'))
		.at(-1).pid;
	process.kill(victim, 'SIGKILL');
	await waitFor(() => !alive(victim), 5000, 'the worker to die');
	process.env.SHMB_RUNTIME_DIR = srv.dir;
	const shmb = await ShmbClient.attach(srv.name);
	const s = shmb.open(c.transport.sessionId, 'mcp');
	const published = [];
	for (const ev of s.cursor(0)) {
		const m = (ev.data?.toString() ?? '').match(/"progressToken":"kill-2","progress":(\d+)/);
		if (m)
			published.push(Number(m[1]));
	}
	s.close();
	shmb.close();
	await waitFor(() => resumed.some((x) => x.status === 200 && x.pid !== victim) && steps(c.progress, 'kill-2').length >= published.length, 15000,
	'the SDK to resume on another worker');
	ac.abort();
	assert.deepEqual(steps(c.progress, 'kill-2'), published);
	assert.deepEqual(published, Array.from({ length: published.length }, (_, i) => i + 1));
	const r = await c.client.callTool({ name: 'echo', arguments: { text: 'still here' } });
	assert.equal(resultText(r), 'still here');
	await c.client.close();
}));

test('DELETE ends the session on every worker: then 404 with -32001', T,
	() => withServer(async (srv) => {
		const { client, transport } = await connect(srv.url);
		const sid = transport.sessionId;
		// Build the session on several workers first.
		const seen = [];
		const { client: b } = await connect(srv.url, { sessionId: sid,
			fetch: freshConnectionFetch(seen) });
		for (let i = 0; i < 8; i++)
			await b.callTool({ name: 'echo', arguments: { text: 'x' } });
		await transport.terminateSession();
		const pids = new Set();
		const fresh = freshConnectionFetch([]); // a new connection each: spread over the workers
		for (let i = 0; i < 12; i++) {
			const res = await fresh(srv.url, { method: 'POST', headers: {
				'content-type': 'application/json', accept: 'application/json, text/event-stream',
				'mcp-session-id': sid, 'mcp-protocol-version': '2025-11-25' },
			body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/list' }) });
			pids.add(res.headers.get('x-shmb-worker'));
			assert.equal(res.status, 404);
			const body = await res.json();
			assert.equal(body.error.code, -32001);
			assert.equal(body.error.message, 'Session not found');
		}
		assert.ok(pids.size >= 2, `all 404s from ${[...pids]}`);
		await client.close();
	}));

test('statuses: 400 without a session, 404 unknown, 403 foreign Origin, -32700 malformed JSON',
	T, () => withServer(async (srv) => {
		const h = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
		const list = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' });
		let res = await fetch(srv.url, { method: 'POST', headers: h, body: list });
		assert.equal(res.status, 400);
		res = await fetch(srv.url, { method: 'POST', headers: { ...h,
			'mcp-session-id': '0123456789abcdef0123456789abcdef' }, body: list });
		assert.equal(res.status, 404);
		assert.equal((await res.json()).error.code, -32001);
		res = await fetch(srv.url, { method: 'POST', headers: { ...h, 'mcp-session-id': 'nope' },
			body: list });
		assert.equal(res.status, 404);
		res = await fetch(srv.url, { method: 'GET', headers: { accept: 'text/event-stream',
			'mcp-session-id': '0123456789abcdef0123456789abcdef' } });
		assert.equal(res.status, 404);
		res = await fetch(srv.url, { method: 'DELETE', headers: {
			'mcp-session-id': '0123456789abcdef0123456789abcdef' } });
		assert.equal(res.status, 404);
		res = await fetch(srv.url, { method: 'POST', headers: { ...h,
			origin: 'http://evil.example' }, body: list });
		assert.equal(res.status, 403);
		res = await fetch(srv.url, { method: 'POST', headers: { ...h,
			origin: 'http://localhost:3000' }, body: list });
		assert.equal(res.status, 400); // allowed origin, no session
		res = await fetch(srv.url, { method: 'POST', headers: h, body: '{"jsonrpc": "2.0", ' });
		assert.equal(res.status, 400);
		assert.equal((await res.json()).error.code, -32700);
		// A malformed body within a session: -32700 too.
		const { client, transport } = await connect(srv.url);
		res = await fetch(srv.url, { method: 'POST', headers: { ...h,
			'mcp-session-id': transport.sessionId }, body: 'not json' });
		assert.equal(res.status, 400);
		assert.equal((await res.json()).error.code, -32700);
		await client.close();
	}));
