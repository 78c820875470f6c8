// client_requests.test.mjs - server-to-client requests across workers (issue 14, item 9): tools
// that ask the client (sampling/createMessage, elicitation/create, roots/list) with the official
// SDK client's request handlers, against shmb-mcpd with 4 workers. Every request of the client
// goes out on a new TCP connection, so the client's response (a POST) lands on any worker; the
// test repeats calls until responses were routed back from a worker other than the tool's, and
// checks the answers each time. Also: a client without the capability gets a tool error; a
// client that does not answer gets a timeout tool error; notifications/cancelled and DELETE stop
// a waiting tool at once (its job slot is free for the next call); the tool's worker killed with
// SIGKILL while the client prepares its answer: the restarted worker takes the job over and the
// call still returns the answer (the SDK resumes the cut stream with Last-Event-ID); a call
// answered in JSON gets its request on the GET stream.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import http from 'node:http';
import { Readable } from 'node:stream';
import { withServer, waitFor } from './lib.mjs';

const require = createRequire(import.meta.url);
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { CreateMessageRequestSchema, ElicitRequestSchema, ListRootsRequestSchema } =
	require('@modelcontextprotocol/sdk/types.js');

// A fetch on a new connection per request, recording for each: method, status, the worker
// (X-Shmb-Worker) and the JSON-RPC body it sent.
function spreadingFetch(seen) {
	return (url, init = {}) => new Promise((resolve, reject) => {
		const headers = Object.fromEntries(new Headers(init.headers).entries());
		let body = null;
		try {
			body = init.body ? JSON.parse(init.body) : null;
		} catch { /* not JSON */ }
		const req = http.request(url, { method: init.method ?? 'GET', headers, agent: false },
			(res) => {
				const h = new Headers();
				for (const [k, v] of Object.entries(res.headers))
					h.set(k, Array.isArray(v) ? v.join(', ') : v);
				const empty = res.statusCode === 202 || res.statusCode === 204;
				seen.push({ method: init.method ?? 'GET', status: res.statusCode,
					pid: Number(h.get('x-shmb-worker')), body });
				resolve(new Response(empty ? null : Readable.toWeb(res),
					{ status: res.statusCode, headers: h }));
			});
		req.on('error', reject);
		init.signal?.addEventListener('abort', () => req.destroy(new Error('aborted')));
		if (init.body)
			req.write(init.body);
		req.end();
	});
}

async function connect(url, capabilities, seen) {
	const client = new Client({ name: 'client-requests-test', version: '1.0.0' },
		{ capabilities });
	const transport = new StreamableHTTPClientTransport(new URL(url),
		{ fetch: spreadingFetch(seen) });
	return { client, transport };
}

// The worker that ran the call with JSON-RPC id `id` (its POST's response), and the workers that
// got the client's responses to the requests it sent for that call.
function workersOf(seen, id) {
	const call = seen.find((x) => x.method === 'POST' && x.body?.method === 'tools/call' &&
		x.body.id === id);
	const replies = seen.filter((x) => x.method === 'POST' && typeof x.body?.id === 'string' &&
		x.body.id.startsWith('s2c:') && x.body.result);
	return { tool: call?.pid, replies };
}

test('sampling, elicitation and roots: the client answers on any worker', async () => {
	await withServer({ workers: 4 }, async (srv) => {
		const seen = [];
		const { client, transport } = await connect(srv.url,
			{ sampling: {}, elicitation: {}, roots: { listChanged: false } }, seen);
		const asked = [];
		client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
			asked.push(req);
			const text = req.params.messages[0].content.text;
			return { role: 'assistant', model: 'm', stopReason: 'endTurn',
				content: { type: 'text', text: `echo of ${text}` } };
		});
		client.setRequestHandler(ElicitRequestSchema, async (req) => {
			asked.push(req);
			return { action: 'accept', content: { username: 'u1', email: 'u1@example.com' } };
		});
		client.setRequestHandler(ListRootsRequestSchema, async (req) => {
			asked.push(req);
			return { roots: [{ uri: 'file:///work/a', name: 'a' }] };
		});
		await client.connect(transport);
		let crossed = 0;
		for (let k = 0; k < 40 && crossed < 3; k++) {
			const before = seen.length;
			const kind = k % 3;
			const r = kind === 0
				? await client.callTool({ name: 'test_sampling',
					arguments: { prompt: `p${k}` } })
				: kind === 1
					? await client.callTool({ name: 'test_elicitation',
						arguments: { message: `m${k}` } })
					: await client.callTool({ name: 'list_roots', arguments: {} });
			assert.ok(!r.isError, JSON.stringify(r));
			const text = r.content[0].text;
			if (kind === 0)
				assert.equal(text, `LLM response: echo of p${k}`);
			else if (kind === 1)
				assert.equal(text,
					'User response: action=accept, content={"username":"u1","email":"u1@example.com"}');
			else
				assert.equal(text, 'Roots: [{"uri":"file:///work/a","name":"a"}]');
			const callId = seen.slice(before).find((x) => x.body?.method === 'tools/call').body.id;
			// The response POST's 202 may be read after the result the tool sent.
			const { tool, replies } = await waitFor(() => {
				const w = workersOf(seen.slice(before), callId);
				return w.replies.length ? w : null;
			}, 5000, 'the 202 of the client\'s response');
			assert.equal(replies.length, 1, 'one response per call');
			assert.equal(replies[0].status, 202);
			// The request's id names the session and the call.
			assert.match(replies[0].body.id, new RegExp(`^s2c:${transport.sessionId}:\\d+$`));
			if (replies[0].pid !== tool)
				crossed++;
		}
		assert.ok(crossed >= 3, `responses routed across workers only ${crossed} times`);
		assert.equal(asked[0].params.maxTokens, 100);
		assert.equal(asked[1].params.requestedSchema.required.length, 2);
		await transport.terminateSession();
		await client.close();
	});
});

test('no capability, no answer, cancelled, deleted: tool errors and freed job slots', async () => {
	await withServer({ workers: 4, args: ['--max-jobs-per-session', '1', '--max-jobs-per-client', '1'] }, async (srv) => {
		// No capability declared: a tool error, no request sent.
		{
			const seen = [];
			const { client, transport } = await connect(srv.url, {}, seen);
			await client.connect(transport);
			for (const name of ['test_sampling', 'test_elicitation', 'list_roots']) {
				const r = await client.callTool({ name,
					arguments: { prompt: 'x', message: 'x' } });
				assert.equal(r.isError, true, name);
				assert.match(r.content[0].text, /did not declare the \w+ capability/);
			}
			await client.close();
		}
		const seen = [];
		const { client, transport } = await connect(srv.url, { roots: {} }, seen);
		let pending = 0;
		client.setRequestHandler(ListRootsRequestSchema, () => {
			pending++;
			return new Promise(() => {}); // never answers
		});
		await client.connect(transport);
		// Timeout: the tool answers with an error once timeout_ms passed.
		const t0 = Date.now();
		const r = await client.callTool({ name: 'list_roots', arguments: { timeout_ms: 300 } });
		assert.equal(r.isError, true);
		assert.match(r.content[0].text, /did not answer roots\/list within 300 ms/);
		assert.ok(Date.now() - t0 < 5000, `timeout took ${Date.now() - t0} ms`);
		// notifications/cancelled (the SDK sends it when the call is aborted) frees the
		// session's only job slot at once: the next call is not refused with 429.
		const ac = new AbortController();
		const call = client.callTool({ name: 'list_roots', arguments: {} }, undefined,
			{ signal: ac.signal });
		await waitFor(() => pending === 2, 10000, 'the second roots/list request');
		ac.abort();
		await assert.rejects(call);
		// The SDK sends notifications/cancelled after rejecting the call: once it was
		// answered (202, on any worker), the job is stopped.
		await waitFor(() => seen.find((x) => x.body?.method === 'notifications/cancelled' &&
			x.status === 202), 10000, 'notifications/cancelled answered');
		const r2 = await client.callTool({ name: 'list_roots', arguments: { timeout_ms: 200 } });
		assert.equal(r2.isError, true, JSON.stringify(r2));
		assert.match(r2.content[0].text, /did not answer/);
		// A response naming another session is refused.
		const res = await fetch(srv.url, { method: 'POST', headers: {
			'content-type': 'application/json', accept: 'application/json, text/event-stream',
			'mcp-session-id': transport.sessionId, 'mcp-protocol-version': '2025-11-25' },
		body: JSON.stringify({ jsonrpc: '2.0', id: 's2c:00000000000000000000000000000000:5',
			result: { roots: [] } }) });
		assert.equal(res.status, 400);
		// DELETE while a tool waits: the session and its job are gone at once.
		const call3 = client.callTool({ name: 'list_roots', arguments: {} });
		call3.catch(() => {});
		await waitFor(() => pending === 4, 10000, 'the fourth roots/list request');
		await transport.terminateSession();
		await client.close();
		// Its job is stopped: with one job per client, a new session's call runs (429 while
		// the old session's job still counted).
		const seen2 = [];
		const c2 = await connect(srv.url, { roots: {} }, seen2);
		c2.client.setRequestHandler(ListRootsRequestSchema, async () => ({ roots: [] }));
		await c2.client.connect(c2.transport);
		const r3 = await c2.client.callTool({ name: 'list_roots', arguments: {} });
		assert.equal(r3.content[0].text, 'Roots: []');
		await c2.client.close();
	});
});

test('the tool\'s worker killed while the client thinks: the restarted worker gets the answer',
	async () => {
		await withServer({ workers: 4 }, async (srv) => {
			const seen = [];
			const { client, transport } = await connect(srv.url, { roots: {} }, seen);
			let release, times = 0;
			const asked = new Promise((resolve) => {
				client.setRequestHandler(ListRootsRequestSchema, async () => {
					times++;
					resolve();
					await new Promise((r) => { release = r; });
					return { roots: [{ uri: 'file:///after-kill' }] };
				});
			});
			await client.connect(transport);
			const call = client.callTool({ name: 'list_roots', arguments: {} });
			await asked;
			const tool = seen.find((x) => x.body?.method === 'tools/call').pid;
			process.kill(tool, 'SIGKILL');
			// Answer once the master restarted the worker: its replacement takes the job
			// over (the request is out already, not sent again) and waits for the
			// response, which any worker publishes on the call's stream.
			await waitFor(() => {
				// shmb-mcpd's line (the broker's says "died: cleared ...")
				const parts = srv.log().split(`(pid ${tool}) died: killed by signal`);
				return parts.length > 1 &&
					/worker \d+ started \(pid \d+\)/.test(parts[parts.length - 1]);
			}, 10000, 'the killed worker restarted');
			release();
			const r = await call;
			assert.equal(r.content[0].text, 'Roots: [{"uri":"file:///after-kill"}]');
			assert.match(srv.log(), /took over job \d+ of session/);
			assert.equal(times, 1, 'the request was sent again after the takeover');
			await transport.terminateSession();
			await client.close();
		});
	});

test('a call answered in JSON: the request goes out on the GET stream', async () => {
	await withServer({ workers: 4 }, async (srv) => {
		const h = { 'content-type': 'application/json', 'mcp-protocol-version': '2025-11-25' };
		const init = await fetch(srv.url, { method: 'POST',
			headers: { ...h, accept: 'application/json, text/event-stream' },
			body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {
				protocolVersion: '2025-11-25', capabilities: { roots: {} },
				clientInfo: { name: 't', version: '1' } } }) });
		const sid = init.headers.get('mcp-session-id');
		await init.text();
		h['mcp-session-id'] = sid;
		// The GET stream, read raw: every JSON data line in order.
		const events = [];
		const get = http.get(srv.url, { agent: false,
			headers: { ...h, accept: 'text/event-stream' } }, (res) => {
			res.setEncoding('utf8');
			let buf = '';
			res.on('data', (d) => {
				buf += d;
				for (let i; (i = buf.indexOf('\n\n')) >= 0; buf = buf.slice(i + 2)) {
					const m = /^data: (\{.*)$/m.exec(buf.slice(0, i));
					if (m)
						events.push(JSON.parse(m[1]));
				}
			});
		});
		await waitFor(() => get.res?.statusCode === 200, 5000, 'the GET stream');
		const call = fetch(srv.url, { method: 'POST', headers: { ...h, accept: 'application/json' },
			body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call',
				params: { name: 'list_roots', arguments: {} } }) });
		const req = await waitFor(() => events.find((e) => e.method === 'roots/list'), 10000,
			'roots/list on the GET stream');
		assert.match(req.id, new RegExp(`^s2c:${sid}:\\d+$`));
		// Malformed ids of this session are accepted and dropped; the real answer counts.
		for (const id of [`s2c:${sid}:x`, `s2c:${sid}:`, `s2c:${sid}:99999999999`]) {
			const r = await fetch(srv.url, { method: 'POST',
				headers: { ...h, accept: 'application/json' },
				body: JSON.stringify({ jsonrpc: '2.0', id, result: { roots: [] } }) });
			assert.equal(r.status, 202, id);
		}
		const ans = await fetch(srv.url, { method: 'POST', headers: { ...h, accept: 'application/json' },
			body: JSON.stringify({ jsonrpc: '2.0', id: req.id,
				result: { roots: [{ uri: 'file:///json' }] } }) });
		assert.equal(ans.status, 202);
		const res = await call;
		assert.equal(res.headers.get('content-type'), 'application/json');
		const body = await res.json();
		assert.equal(body.id, 7);
		assert.equal(body.result.content[0].text, 'Roots: [{"uri":"file:///json"}]');
		get.destroy();
	});
});
