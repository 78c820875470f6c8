// quotas.test.mjs - shmb-mcpd's per-session and per-client quotas (tools/mcp/quota.c): one
// client cannot take all the sessions, job slots or stream slots, another client is still
// served, an over-quota request gets 429 with Retry-After and a JSON-RPC error, and DELETE and
// notifications/cancelled stop a session's jobs at once (their quota is free again). Each
// request opens its own TCP connection, so they spread over both workers: the counts are the
// server's, not a worker's. Run by ctest (tests/mcp/CMakeLists.txt) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { withServer, waitFor } from './lib.mjs';

const T = { timeout: 90000 };
const open = new Set(); // responses left streaming, destroyed at the end of each test

// One request on a new connection; resolves at the response head. json: read the body.
function req(url, { method = 'POST', headers = {}, body, localAddress, json = true } = {}) {
	return new Promise((resolve, reject) => {
		const r = http.request(url, { method, agent: false, localAddress, headers: {
			'content-type': 'application/json',
			accept: 'application/json, text/event-stream', ...headers } }, (res) => {
			if (!json || (res.headers['content-type'] ?? '').startsWith('text/event-stream')) {
				open.add(res);
				resolve({ status: res.statusCode, headers: res.headers, res });
				return;
			}
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
				body: text ? JSON.parse(text) : null }));
		});
		r.on('error', reject);
		if (body !== undefined)
			r.write(JSON.stringify(body));
		r.end();
	});
}

function closeAll() {
	for (const res of open)
		res.destroy();
	open.clear();
}

const auth = (tok) => (tok ? { authorization: `Bearer ${tok}` } : {});

async function initialize(url, tok, localAddress) {
	return req(url, { localAddress, headers: auth(tok), body: { jsonrpc: '2.0', id: 1,
		method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {},
			clientInfo: { name: 'quota-test', version: '1' } } } });
}

async function session(url, tok, localAddress) {
	const r = await initialize(url, tok, localAddress);
	assert.equal(r.status, 200, JSON.stringify(r.body));
	return { 'mcp-session-id': r.headers['mcp-session-id'], 'mcp-protocol-version': '2025-11-25',
		...auth(tok) };
}

// A long countdown answered as SSE: the job and its stream stay until cancelled.
function countdown(url, h, id) {
	return req(url, { headers: h, body: { jsonrpc: '2.0', id, method: 'tools/call',
		params: { name: 'countdown', arguments: { n: 1000, delay_ms: 1000 } } } });
}

function assert429(r, what, id) {
	assert.equal(r.status, 429, `${what}: ${r.status} ${JSON.stringify(r.body)}`);
	assert.match(String(r.headers['retry-after']), /^[1-9][0-9]*$/);
	if (r.body) {
		assert.equal(r.body.jsonrpc, '2.0');
		assert.equal(r.body.id, id);
		assert.equal(r.body.error.code, -32000);
		assert.match(r.body.error.message, new RegExp(what));
	}
}

function withQuotas(args, fn) {
	return withServer({ args }, async (srv) => {
		try {
			await fn(srv);
		} finally {
			closeAll();
		}
	});
}

test('sessions: a principal, or an address without tokens, has at most its share', T, () =>
	withQuotas(['--token', 'ta=alice', '--token', 'tb=bob', '--max-sessions-per-client', '3'],
		async (srv) => {
			const alice = [];
			for (let i = 0; i < 3; i++)
				alice.push(await session(srv.url, 'ta'));
			assert429(await initialize(srv.url, 'ta'), 'sessions per client', 1);
			await session(srv.url, 'tb'); // bob is still served
			// A deleted session frees its place at once.
			const d = await req(srv.url, { method: 'DELETE', headers: alice[0] });
			assert.equal(d.status, 204);
			await session(srv.url, 'ta');
			assert429(await initialize(srv.url, 'ta'), 'sessions per client', 1);
		}));

test('sessions without tokens: counted per client address', T, () =>
	withQuotas(['--max-sessions-per-client', '2'], async (srv) => {
		await session(srv.url, null, '127.0.0.1');
		await session(srv.url, null, '127.0.0.1');
		assert429(await initialize(srv.url, null, '127.0.0.1'), 'sessions per client', 1);
		await session(srv.url, null, '127.0.0.2'); // another address
	}));

test('jobs: per session and per client; cancelled and DELETE free them at once', T, () =>
	withQuotas(['--token', 'ta=alice', '--token', 'tb=bob', '--max-jobs-per-session', '2',
		'--max-jobs-per-client', '3'], async (srv) => {
		const s1 = await session(srv.url, 'ta');
		const s2 = await session(srv.url, 'ta');
		const a = await countdown(srv.url, s1, 11);
		assert.equal(a.status, 200);
		assert.equal((await countdown(srv.url, s1, 12)).status, 200);
		assert429(await countdown(srv.url, s1, 13), 'running jobs per session', 13);
		assert.equal((await countdown(srv.url, s2, 21)).status, 200);
		assert429(await countdown(srv.url, s2, 22), 'running jobs per client', 22);
		// Another client still gets a job.
		const b = await session(srv.url, 'tb');
		assert.equal((await countdown(srv.url, b, 31)).status, 200);

		// notifications/cancelled for call 11: its stream ends without a result, its
		// slot is free the moment the 202 is back.
		let text = '';
		a.res.setEncoding('utf8');
		a.res.on('data', (d) => { text += d; });
		const ended = new Promise((resolve) => a.res.on('end', resolve));
		const c = await req(srv.url, { headers: s1, body: { jsonrpc: '2.0',
			method: 'notifications/cancelled', params: { requestId: 11, reason: 't' } } });
		assert.equal(c.status, 202);
		assert.equal((await countdown(srv.url, s1, 14)).status, 200);
		await ended;
		assert.doesNotMatch(text, /"result"/);

		// DELETE s1: both of its jobs stop, so alice gets two more.
		assert.equal((await req(srv.url, { method: 'DELETE', headers: s1 })).status, 204);
		assert.equal((await countdown(srv.url, s2, 23)).status, 200);
		assert429(await countdown(srv.url, s2, 24), 'running jobs per session', 24);
		const s3 = await session(srv.url, 'ta');
		assert.equal((await countdown(srv.url, s3, 41)).status, 200);
		assert429(await countdown(srv.url, s3, 42), 'running jobs per client', 42);
	}));

test('streams: per session and per client; a closed stream frees its slot', T, () =>
	withQuotas(['--token', 'ta=alice', '--token', 'tb=bob', '--max-streams-per-session', '2',
		'--max-streams-per-client', '3'], async (srv) => {
		const get = (h) => req(srv.url, { method: 'GET', headers: { ...h,
			accept: 'text/event-stream' } });
		const s1 = await session(srv.url, 'ta');
		const s2 = await session(srv.url, 'ta');
		const g1 = await get(s1);
		assert.equal(g1.status, 200);
		assert.equal((await get(s1)).status, 200);
		assert429(await get(s1), 'open streams per session', null);
		assert.equal((await get(s2)).status, 200);
		assert429(await get(s2), 'open streams per client', null);
		const b = await session(srv.url, 'tb');
		assert.equal((await get(b)).status, 200);
		// A hung-up stream gives its slot back (the worker polls for hang-ups each second).
		g1.res.destroy();
		await waitFor(async () => {
			const r = await get(s2);
			return r.status === 200 ? r : (r.res?.destroy(), null);
		}, 5000, 'a stream slot freed by the hang-up');
	}));

test('a job call refused for its stream does not run on', T, () =>
	withQuotas(['--max-streams-per-session', '1', '--max-jobs-per-session', '1'],
		async (srv) => {
			const s = await session(srv.url, null);
			const g = await req(srv.url, { method: 'GET', headers: { ...s,
				accept: 'text/event-stream' } });
			assert.equal(g.status, 200);
			assert429(await countdown(srv.url, s, 51), 'open streams per session', 51);
			g.res.destroy();
			// Once the GET's slot is free, a call gets both a stream and a job: the refused
			// call's job is not holding the session's only job slot.
			await waitFor(async () => {
				const r = await countdown(srv.url, s, 52);
				assert.doesNotMatch(r.body?.error?.message ?? '', /jobs/);
				return r.status === 200;
			}, 5000, 'the stream slot of the closed GET');
		}));
