// redteam12.test.mjs - defects the red team found in the MCP glue (lib/mcp.mjs), each against a
// real shmbrokerd and the pinned SDK: a GET stream whose client left while the worker built the
// session (its follower kept the session subscribed forever), a slow GET stream (a 'close'
// listener added per write that had to wait for 'drain'), and initialize with the broker's
// session records exhausted (500 "Internal error" instead of 503 with Retry-After), an
// initialize the SDK refused (its session left behind), and examples/mcp-cluster.mjs after its
// broker was replaced on a new segment (every worker answered 500 ESTALE for good).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { Client } from '../lib/index.mjs';
import { clusterSessions } from '../lib/mcp.mjs';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BROKERD, startBroker, waitFor, spawnServer } from './broker.mjs';

let broker;
let shmb;
before(async () => {
	broker = await startBroker(['--max-sessions', '4']);
	shmb = await Client.attach(broker.name);
});
after(async () => {
	shmb?.close();
	await broker?.stop();
});

const INIT = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: {
	protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'rt', version: '1' } } });
const HEADERS = { 'content-type': 'application/json',
	accept: 'application/json, text/event-stream' };

// An http server over handle(); res objects are kept so the test can look at them.
async function serve(mcp) {
	const responses = [];
	const srv = http.createServer((req, res) => {
		responses.push(res);
		mcp.handle(req, res);
	});
	await new Promise((r) => srv.listen(0, '127.0.0.1', r));
	return { srv, responses, url: `http://127.0.0.1:${srv.address().port}/` };
}

async function initialize(url) {
	const r = await fetch(url, { method: 'POST', headers: HEADERS, body: INIT });
	await r.text();
	return r;
}

test('a GET stream whose client left while the worker built the session leaves no follower',
	async () => {
		const a = clusterSessions({ client: shmb,
			createServer: () => new McpServer({ name: 'a', version: '1' }) });
		// "Another worker" whose server connects only when the test lets it.
		let release;
		const gate = new Promise((r) => { release = r; });
		let building = 0;
		const b = clusterSessions({ client: shmb, createServer: () => {
			const s = new McpServer({ name: 'b', version: '1' });
			const connect = s.connect.bind(s);
			s.connect = async (t) => {
				building++;
				await gate;
				return connect(t);
			};
			return s;
		} });
		const A = await serve(a);
		const B = await serve(b);
		try {
			const r = await initialize(A.url);
			assert.equal(r.status, 200);
			const sid = r.headers.get('mcp-session-id');
			const req = http.get(B.url, { headers: { accept: 'text/event-stream',
				'mcp-session-id': sid } });
			req.on('error', () => {});
			await waitFor(() => building === 1, 10000, 'worker B building the session');
			req.destroy();
			await waitFor(() => B.responses[0]?.socket === null || B.responses[0]?.destroyed,
				10000, "worker B seeing the GET's connection closed");
			release();
			const probe = shmb.open(sid, 'mcp');
			// The stream's follower must not stay: the session would never expire.
			await waitFor(() => B.responses[0].writableFinished || B.responses[0].destroyed,
				10000, 'the response finished');
			await new Promise((r) => setImmediate(r));
			await waitFor(() => probe.stat().subscribers === 0, 5000,
				`no subscriber left (have ${probe.stat().subscribers})`);
			probe.close();
		} finally {
			release();
			a.close();
			b.close();
			A.srv.closeAllConnections();
			B.srv.closeAllConnections();
			A.srv.close();
			B.srv.close();
		}
	});

test('a GET stream that must wait for drain again and again does not pile up listeners',
	async () => {
		const a = clusterSessions({ client: shmb,
			createServer: () => new McpServer({ name: 'a', version: '1' }) });
		const A = await serve(a);
		try {
			const r = await initialize(A.url);
			const sid = r.headers.get('mcp-session-id');
			const got = new Promise((resolve, reject) => {
				const req = http.get(A.url, { headers: { accept: 'text/event-stream',
					'mcp-session-id': sid, 'mcp-protocol-version': '2025-06-18' } },
				(res) => {
					let n = 0;
					let tail = '';
					res.setEncoding('utf8');
					res.on('data', (d) => {
						tail += d;
						let i;
						while ((i = tail.indexOf('\n\n')) >= 0) {
							if (tail.slice(0, i).includes('event: message'))
								n++;
							tail = tail.slice(i + 2);
						}
						if (n === 40) {
							req.destroy();
							resolve(n);
						}
					});
				});
				req.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
			});
			const stream = await waitFor(() => A.responses.find((x) =>
				x.req.method === 'GET' && x.headersSent), 10000, 'the GET stream');
			const pub = shmb.open(sid, 'mcp');
			// Each 20 KB event is over the response's 16 KiB high-water mark: every write
			// returns false and waits for 'drain'.
			const big = 'x'.repeat(20000);
			let maxClose = 0;
			for (let i = 0; i < 40; i++) {
				pub.publish(`_GET_stream\n${JSON.stringify({ jsonrpc: '2.0',
					method: 'notifications/message', params: { data: big } })}`, { kind: 1 });
				maxClose = Math.max(maxClose, stream.listenerCount('close'));
				await new Promise((res) => setTimeout(res, 2));
			}
			assert.equal(await got, 40);
			maxClose = Math.max(maxClose, stream.listenerCount('close'));
			assert.ok(maxClose <= 4, `at most a few 'close' listeners (saw ${maxClose})`);
			pub.close();
		} finally {
			a.close();
			A.srv.closeAllConnections();
			A.srv.close();
		}
	});

test('an initialize the SDK refuses leaves no session behind; oversize client info is a 400',
	async () => {
		const a = clusterSessions({ client: shmb,
			createServer: () => new McpServer({ name: 'a', version: '1' }) });
		const A = await serve(a);
		try {
			// More refused initializes than the broker has session records (4).
			const bad = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize',
				params: { protocolVersion: 5, capabilities: 'x', clientInfo: 7 } });
			for (let i = 0; i < 3; i++) {
				const r = await fetch(A.url, { method: 'POST', headers: HEADERS, body: bad });
				await r.text();
				assert.equal(r.status, 400);
				assert.equal(r.headers.get('mcp-session-id'), null);
				const n = await fetch(A.url, { method: 'POST', body: INIT,
					headers: { 'content-type': 'application/json' } }); // no Accept
				await n.text();
				assert.equal(n.status, 406);
				const big = await fetch(A.url, { method: 'POST', headers: HEADERS,
					body: INIT.replace('"capabilities":{}',
						`"capabilities":{"x":"${'y'.repeat(100000)}"}`) });
				assert.equal(big.status, 400, await big.text());
			}
			assert.equal(a.localSessions, 0);
			const r = await initialize(A.url);
			assert.equal(r.status, 200);
			assert.match(r.headers.get('mcp-session-id'), /^[0-9a-f]{32}$/);
		} finally {
			a.close();
			A.srv.closeAllConnections();
			A.srv.close();
		}
	});

test('initialize with the session records exhausted gets 503 and Retry-After, not 500',
	async () => {
		const errors = [];
		const a = clusterSessions({ client: shmb, onerror: (e) => errors.push(e),
			createServer: () => new McpServer({ name: 'a', version: '1' }) });
		const A = await serve(a);
		try {
			const statuses = [];
			let last;
			for (let i = 0; i < 8; i++) {
				last = await initialize(A.url);
				statuses.push(last.status);
				if (last.status !== 200)
					break;
			}
			assert.equal(statuses.at(-1), 503, `statuses ${statuses}`);
			assert.ok(Number(last.headers.get('retry-after')) >= 1);
			// The worker lives on and answers the same way while the records stay taken.
			assert.equal((await initialize(A.url)).status, 503);
			assert.equal(errors.at(-1).code, 'EFULL');
		} finally {
			a.close();
			A.srv.closeAllConnections();
			A.srv.close();
		}
	});

// The broker stopped (--unlink-on-exit marks its segment retired) and a new one started under
// the same name: the workers' clients are stale (ESTALE). The example must come back by itself
// (its workers are replaced and attach the new segment), answering 503 meanwhile, never 500.
test('mcp-cluster.mjs recovers from its broker replaced on a new segment', { timeout: 60000 },
	async () => {
		const dir = mkdtempSync(join(tmpdir(), 'shmb-noderedteam-'));
		const name = `noderedteam${process.pid}`;
		const env = { ...process.env, SHMB_RUNTIME_DIR: dir };
		const brokerd = () => spawnServer(BROKERD, ['--name', name, '--foreground',
			'--unlink-on-exit'], env, () => existsSync(join(dir, `${name}.sock`)), 'the broker');
		let b = await brokerd();
		const portFile = join(dir, 'port');
		const example = fileURLToPath(new URL('../examples/mcp-cluster.mjs', import.meta.url));
		const ex = await spawnServer(process.execPath, [example, '--port', '0', '--port-file',
			portFile, '--workers', '2', '--name', name], env, () => existsSync(portFile),
		'the port file of mcp-cluster');
		try {
			const url = `http://127.0.0.1:${readFileSync(portFile, 'utf8').trim()}/mcp`;
			assert.equal((await initialize(url)).status, 200);
			b.child.kill('SIGTERM');
			await b.exit;
			b = await brokerd();
			const seen = new Set();
			await waitFor(async () => {
				// A keep-alive connection of a worker that stops may be reset: retried.
				const r = await initialize(url).catch((e) => ({ status: e.message }));
				seen.add(r.status);
				return r.status === 200;
			}, 30000, 'an initialize answered 200 by the example after the broker was replaced')
				.catch((e) => {
					e.message += `; statuses seen: ${[...seen]}\n${ex.log()}`;
					throw e;
				});
			assert.ok(!seen.has(500), `statuses seen: ${[...seen]}\n${ex.log()}`);
		} finally {
			ex.child.kill('SIGTERM');
			const t = setTimeout(() => ex.child.kill('SIGKILL'), 15000);
			await ex.exit;
			clearTimeout(t);
			b.child.kill('SIGTERM');
			await b.exit;
			rmSync(dir, { recursive: true, force: true });
		}
	});
