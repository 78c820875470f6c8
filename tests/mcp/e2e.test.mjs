// e2e.test.mjs - shmb-mcpd driven by the official MCP TypeScript SDK client (pinned in
// tests/package.json): initialize and tools, progress, the standalone stream fed from another
// connection, a stream cut and resumed with the SDK's resumption token, the same after kill -9
// of the worker holding it, DELETE then 404. Run by ctest (tests/mcp/CMakeLists.txt) with
// `node --test`; each test starts its own server and broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
	CallToolResultSchema, LoggingMessageNotificationSchema, ProgressNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { startServer, waitFor, recordingFetch, freshConnectionFetch, alive } from './lib.mjs';

const info = { name: 'shmb-e2e', version: '1.0.0' };
const T = { timeout: 60000 }; // a lost notification fails the test instead of hanging it

// A client whose progress notifications, whatever their token, land in progress[] (the SDK's
// own onprogress would drop the replayed ones of a resumed request: their token is the first
// request's). opts: transport options (sessionId, fetch, reconnectionOptions).
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

// Every step 1..n exactly once, in order.
function assertSteps(progress, n, token) {
	const mine = progress.filter((p) => p.progressToken === token).map((p) => p.progress);
	assert.deepEqual(mine, Array.from({ length: n }, (_, i) => i + 1),
		`progress notifications of ${token}`);
}

function resultText(r) {
	assert.ok(Array.isArray(r.content) && r.content.length > 0, JSON.stringify(r));
	return r.content[0].text;
}

async function withServer(fn, opts) {
	const srv = await startServer(opts);
	try {
		await fn(srv);
	} catch (e) {
		e.message += `\n--- shmb-mcpd stderr ---\n${srv.log()}`;
		throw e;
	} finally {
		await srv.stop();
	}
}

test('initialize, list tools, echo', T, () => withServer(async (srv) => {
	const { client, transport } = await connect(srv.url);
	assert.match(transport.sessionId, /^[0-9a-f]{32}$/);
	const names = (await client.listTools()).tools.map((t) => t.name);
	for (const t of ['echo', 'countdown', 'notify'])
		assert.ok(names.includes(t), `tools/list lacks ${t}: ${names}`);
	const r = await client.callTool({ name: 'echo', arguments: { text: 'héllo, wörld' } });
	assert.equal(resultText(r), 'héllo, wörld');
	await client.close();
}));

test('countdown reports progress, then its result', T, () => withServer(async (srv) => {
	// The SDK's own progress routing (onprogress), so not connect()'s catch-all handler.
	const client = new Client(info);
	await client.connect(new StreamableHTTPClientTransport(new URL(srv.url)));
	const seen = [];
	const r = await client.callTool({ name: 'countdown', arguments: { n: 5, delay_ms: 20 } },
		CallToolResultSchema, { onprogress: (p) => seen.push(p.progress) });
	assert.deepEqual(seen, [1, 2, 3, 4, 5]);
	assert.equal(resultText(r), 'countdown done: 5 steps');
	await client.close();
}));

test('notify through one connection reaches the standalone stream of another', T,
	() => withServer(async (srv) => {
		const getSeen = [];
		const a = new Client(info);
		const logs = [];
		a.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { logs.push(n.params); });
		const ta = new StreamableHTTPClientTransport(new URL(srv.url),
			{ fetch: recordingFetch(getSeen) });
		await a.connect(ta);
		// The SDK opens the standalone GET stream after initialization.
		await waitFor(() => getSeen.some((s) => s.method === 'GET' && s.status === 200), 5000,
			'the standalone GET stream');
		const getPid = getSeen.find((s) => s.method === 'GET' && s.status === 200).pid;
		// Other connections of the same session, a new one per request: notify until one was
		// served by a worker other than the one holding the GET stream (a cross-worker
		// wakeup); every notification must arrive, once, in order.
		const postSeen = [];
		const { client: b } = await connect(srv.url, { sessionId: ta.sessionId,
			fetch: freshConnectionFetch(postSeen) });
		const sent = [];
		let crossed = false;
		for (let i = 0; i < 20 && !crossed; i++) {
			sent.push(`note ${i}`);
			const r = await b.callTool({ name: 'notify', arguments: { text: `note ${i}` } });
			assert.ok(!r.isError, JSON.stringify(r));
			await waitFor(() => logs.length === sent.length, 5000, `notification ${i}`);
			crossed = postSeen.filter((s) => s.method === 'POST').at(-1).pid !== getPid;
		}
		assert.ok(crossed, `20 notify calls, none served by a worker other than ${getPid}`);
		assert.deepEqual(logs.map((l) => l.data), sent);
		assert.ok(logs.every((l) => l.level === 'info'), JSON.stringify(logs));
		await b.close();
		await a.close();
	}));

// Starts countdown n (progress token tok) on a first client, cuts its stream with cut() once three
// steps arrived, then resumes on a second client (a new transport of the same session) with the
// last event id the first one saw: the steps of both, together, must be 1..n exactly once, then
// the result. cut({ client, transport, pid }) gets the pid of the worker that served the POST
// and returns a pid the resumed stream must not be served by (or undefined).
async function cutAndResume(srv, n, tok, cut) {
	const seen = [];
	const first = await connect(srv.url, { fetch: recordingFetch(seen) });
	const sid = first.transport.sessionId;
	let token;
	const req = first.client.request(countdownRequest(n, 150, tok),
		CallToolResultSchema, { onresumptiontoken: (t) => { token = t; } });
	req.catch(() => {}); // rejected when the transport closes
	await waitFor(() => first.progress.length >= 3 && token, 10000, 'three steps');
	const post = seen.filter((s) => s.method === 'POST' && s.type.includes('event-stream'));
	assert.ok(post.length >= 1, JSON.stringify(seen));
	const avoid = await cut({ ...first, pid: post[post.length - 1].pid });
	const before = first.progress.slice();
	assert.ok(before.length < n, 'the countdown ended before the cut');

	// The second client opens its own connections, as a client in a new process would. Through
	// the first one's keep-alive pool, the resuming GET can go out on an idle connection to the
	// worker just killed ("other side closed"): SDK 1.32.2 then only reports it to onerror and
	// never retries a resumption sent with a request, which waits for its timeout.
	const seen2 = [];
	const second = await connect(srv.url, { sessionId: sid, fetch: freshConnectionFetch(seen2) });
	const r = await second.client.request(countdownRequest(n, 150, tok),
		CallToolResultSchema, { resumptionToken: token, timeout: 15000 });
	assert.equal(resultText(r), `countdown done: ${n} steps`);
	assertSteps([...before, ...second.progress], n, tok);
	assert.ok(seen2.some((s) => s.method === 'GET' && s.status === 200 && s.pid !== avoid),
		`no resumed GET stream (not on pid ${avoid}): ${JSON.stringify(seen2)}`);
	await second.client.close();
}

test('a stream cut mid-countdown resumes with the resumption token, each step once', T,
	() => withServer((srv) => cutAndResume(srv, 8, 'cut-1', async ({ transport }) => {
		await transport.close(); // cuts the POST's SSE stream mid-countdown
	})));

test('kill -9 of the worker holding the stream, resumed by a new transport with the token', T,
	() => withServer((srv) => cutAndResume(srv, 8, 'kill-2', async ({ transport, pid }) => {
		process.kill(pid, 'SIGKILL'); // the cut; the first client then gives up
		await transport.close();
		await waitFor(() => !alive(pid), 5000, 'the worker to die');
		return pid;
	})));

test('kill -9 of the worker holding the stream: the SDK resumes by itself, each step once', T,
	() => withServer(async (srv) => {
		const n = 8;
		const seen = [];
		const c = await connect(srv.url, { fetch: recordingFetch(seen),
			reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000,
				reconnectionDelayGrowFactor: 1.5, maxRetries: 10 } });
		const req = c.client.request(countdownRequest(n, 150, 'kill-1'), CallToolResultSchema);
		await waitFor(() => c.progress.length >= 3, 10000, 'three steps');
		const post = seen.filter((s) => s.method === 'POST' && s.type.includes('event-stream'));
		assert.ok(post.length >= 1, JSON.stringify(seen));
		const victim = post[post.length - 1].pid;
		process.kill(victim, 'SIGKILL');
		await waitFor(() => !alive(victim), 5000, 'the worker to die');
		// The SDK reconnects with Last-Event-ID on its own; the countdown continues elsewhere.
		const r = await req;
		assert.equal(resultText(r), `countdown done: ${n} steps`);
		assertSteps(c.progress, n, 'kill-1');
		assert.ok(seen.some((s) => s.method === 'GET' && s.pid !== victim && s.status === 200),
			`no resumed stream on another worker: ${JSON.stringify(seen)}`);
		await c.client.close();
	}));

test('DELETE ends the session: then 404 with -32001', T, () => withServer(async (srv) => {
	const { client, transport } = await connect(srv.url);
	const sid = transport.sessionId;
	await transport.terminateSession();
	const res = await fetch(srv.url, {
		method: 'POST',
		headers: { 'content-type': 'application/json',
			accept: 'application/json, text/event-stream', 'mcp-session-id': sid,
			'mcp-protocol-version': '2025-11-25' },
		body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/list' }),
	});
	assert.equal(res.status, 404);
	const body = await res.json();
	assert.equal(body.error.code, -32001);
	assert.equal(body.error.message, 'Session not found');
	await client.close();
}));

// The session's MCP state lives in shmbroker session attributes (tools/mcp/session.c), so every
// worker applies it: logging/setLevel served by one worker filters the messages a job publishes
// on another (each message and the tool's result name the pid that published them), and
// session_info on a worker other than initialize's reports the negotiated version, the client's
// capabilities and info, and the level.
test('logging/setLevel on one worker filters what another sends; the session state is shared',
	T, () => withServer(async (srv) => {
		const seen = [];
		const client = new Client(info,
			{ capabilities: { experimental: { shmbTest: { n: 1 } } } });
		const logs = [];
		client.setNotificationHandler(LoggingMessageNotificationSchema,
			(n) => { logs.push(n.params); });
		const transport = new StreamableHTTPClientTransport(new URL(srv.url),
			{ fetch: freshConnectionFetch(seen) });
		await client.connect(transport);
		const posts = () => seen.filter((s) => s.method === 'POST');
		const initPid = posts()[0].pid;
		const levels = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert',
			'emergency'];

		await client.setLoggingLevel('warning');
		const setPid = posts().at(-1).pid;
		let crossed = false;
		for (let i = 0; i < 20 && !crossed; i++) {
			logs.length = 0;
			const r = await client.callTool({ name: 'log_levels', arguments: {} });
			const toolPid = posts().at(-1).pid;
			assert.equal(resultText(r), `log_levels done (pid ${toolPid})`);
			assert.deepEqual(logs.map((l) => l.level), levels.slice(3),
				`at level warning, call ${i} (pid ${toolPid})`);
			assert.ok(logs.every((l) => l.data.endsWith(`(pid ${toolPid})`)),
				JSON.stringify(logs));
			crossed = toolPid !== setPid;
		}
		assert.ok(crossed, `20 log_levels calls, none served by a worker other than ${setPid}`);

		// What another worker than initialize's reads from the segment.
		let d;
		for (let i = 0; i < 20 && !(d && d.pid !== initPid); i++)
			d = JSON.parse(resultText(await client.callTool({ name: 'session_info' })));
		assert.notEqual(d.pid, initPid, `20 session_info calls, all on ${initPid}`);
		assert.equal(d.pid, posts().at(-1).pid);
		assert.equal(d.protocolVersion, transport.protocolVersion ?? '2025-11-25');
		assert.deepEqual(d.clientInfo, info);
		assert.deepEqual(d.clientCapabilities.experimental, { shmbTest: { n: 1 } });
		assert.equal(d.logLevel, 'warning');

		// A request without MCP-Protocol-Version is served as the negotiated version (not
		// the spec's last-resort 2025-03-26); a header naming another version still wins.
		const served = async (version) => {
			const res = await fetch(srv.url, {
				method: 'POST',
				headers: { 'content-type': 'application/json', accept: 'application/json',
					'mcp-session-id': transport.sessionId,
					...(version ? { 'mcp-protocol-version': version } : {}) },
				body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/call',
					params: { name: 'session_info', arguments: {} } }),
			});
			assert.equal(res.status, 200);
			return JSON.parse((await res.json()).result.content[0].text).requestProtocolVersion;
		};
		assert.equal(await served(null), d.protocolVersion);
		assert.equal(await served('2025-03-26'), '2025-03-26');

		// Back to debug: every level arrives.
		await client.setLoggingLevel('debug');
		logs.length = 0;
		await client.callTool({ name: 'log_levels', arguments: {} });
		assert.deepEqual(logs.map((l) => l.level), levels);
		await client.close();
	}));
