// redteam12.test.mjs - red team 12's findings in shmb-mcpd (issue 14's work), each a test that
// failed before its fix. Run by ctest (tests/mcp/CMakeLists.txt, label mcp) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { withServer, initialize, rpc } from './rpc.mjs';
import { waitFor } from './lib.mjs';

const T = { timeout: 120000 };

// One JSON-RPC POST on a new connection from localAddress; resolves { status, headers, body }.
function post(url, msg, headers = {}, localAddress = '127.0.0.1') {
	return new Promise((resolve, reject) => {
		const r = http.request(url, { method: 'POST', agent: false, localAddress, timeout: 10000,
			headers: { 'content-type': 'application/json', accept: 'application/json',
				...headers } }, (res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => {
				let body = text;
				try {
					body = JSON.parse(text);
				} catch { /* kept as text */ }
				resolve({ status: res.statusCode, headers: res.headers, body });
			});
		});
		r.on('timeout', () => r.destroy(new Error('no answer within 10 s')));
		r.on('error', reject);
		r.end(JSON.stringify(msg));
	});
}

const stateless = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call' };
const countdown = (id) => ({ jsonrpc: '2.0', id, method: 'tools/call',
	params: { name: 'countdown', arguments: { n: 1, delay_ms: 0 } } });

// A finished stateless (2026-07-28) job call lingered 5 s in the job table, holding its slot
// and its private broker session, and counted against no quota: one client calling in a loop
// filled the worker's 64 slots under --max-jobs-per-client 3 (63 answered, then 503 for every
// client for 5 s). Now a lingering job counts for its client, and it lingers only while its
// reader still needs the session.
test('stateless job calls in a loop neither evade the job quota nor fill the job table', T,
	() => withServer(async (srv) => {
		const seen = {};
		for (let i = 1; i <= 100; i++) {
			const r = await post(srv.url, countdown(i), stateless);
			seen[r.status] = (seen[r.status] ?? 0) + 1;
			assert.notEqual(r.status, 503, `call ${i}: ${JSON.stringify(r.body)} ` +
				`(so far ${JSON.stringify(seen)})`);
		}
		assert.equal(seen[200], 100, JSON.stringify(seen));
		// Another client (another address) is served at once.
		const other = await post(srv.url, countdown(1), stateless, '127.0.0.2');
		assert.equal(other.status, 200, JSON.stringify(other.body));
		assert.match(JSON.stringify(other.body), /countdown done/);
	}, { workers: 1, args: ['--max-jobs-per-client', '3'] }));

// Clients that hang up before their stateless call's result: the job runs on (it counts), but
// once finished its private session goes at once, so the client's next calls are served.
test('stateless calls whose client hung up do not hold the client\'s quota', T,
	() => withServer(async (srv) => {
		const slow = (id) => ({ jsonrpc: '2.0', id, method: 'tools/call',
			params: { name: 'countdown', arguments: { n: 1, delay_ms: 300 } } });
		for (let i = 0; i < 3; i++) {
			await new Promise((resolve) => {
				const r = http.request(srv.url, { method: 'POST', agent: false, headers: {
					'content-type': 'application/json', accept: 'application/json',
					...stateless } });
				r.on('error', () => resolve());
				r.end(JSON.stringify(slow(i)), () => setTimeout(() => {
					r.destroy();
					resolve();
				}, 50));
			});
		}
		// Within 300 ms + a turn the three are done and gone: a call is served again (a 429
		// meanwhile is the quota at work), never refused for 5 s.
		const t0 = Date.now();
		let r;
		do
			r = await post(srv.url, countdown(9), stateless);
		while (r.status === 429 && Date.now() - t0 < 10000);
		assert.equal(r.status, 200, JSON.stringify(r.body));
		assert.ok(Date.now() - t0 < 3000, `served after ${Date.now() - t0} ms`);
	}, { workers: 1, args: ['--max-jobs-per-client', '3'] }));

// A --token-file naming a FIFO (an operator's mistake) blocked the start for ever in open():
// now it is refused at once like any file that is not a regular one.
test('a token file that is a FIFO is refused, not waited on', T, () => {
	const dir = mkdtempSync(join(tmpdir(), 'shmb-mcpfifo-'));
	try {
		const fifo = join(dir, 'tokens');
		assert.equal(spawnSync('mkfifo', ['-m', '600', fifo]).status, 0);
		const r = spawnSync(process.env.SHMB_MCPD, ['--port', '0', '--token-file', fifo],
			{ encoding: 'utf8', timeout: 10000 });
		assert.equal(r.error, undefined, 'shmb-mcpd hung on the FIFO');
		assert.equal(r.status, 2, r.stderr);
		assert.match(r.stderr, /not a regular file/);
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
});

// The master judged the broker's heartbeat silent by its own clock alone: stopped together with
// the broker (^Z and fg of their process group, a frozen cgroup, CPU starvation) for longer
// than --broker-hang-ms, it killed the healthy broker at its first look after the SIGCONT,
// before the broker's next tick. Here the master is continued 150 ms before the broker (the
// order a scheduler may pick): it must not call the broker hung for a silence it did not see.
test('a master stopped with its broker does not replace it when both continue', T,
	() => withServer(async (srv) => {
		const sid = await initialize(srv.url);
		const m = srv.log().match(/broker started: .* \(pid (\d+)\)/);
		const broker = Number(m[1]);
		const master = srv.child.pid;
		process.kill(master, 'SIGSTOP');
		process.kill(broker, 'SIGSTOP');
		try {
			await new Promise((r) => setTimeout(r, 1500)); // > --broker-hang-ms 1000
			process.kill(master, 'SIGCONT');
			await new Promise((r) => setTimeout(r, 150)); // the master looks at once
		} finally {
			process.kill(master, 'SIGCONT');
			process.kill(broker, 'SIGCONT');
		}
		// The broker beats again within its 100 ms tick; give the master 2 s of looks.
		await new Promise((r) => setTimeout(r, 2000));
		assert.doesNotMatch(srv.log(), /is hung/);
		process.kill(broker, 0); // still the same broker
		const p = await rpc(srv.url, { jsonrpc: '2.0', id: 2, method: 'ping' },
			{ 'mcp-session-id': sid });
		assert.equal(p.status, 200, JSON.stringify(p.body));
		// A broker that stays silent while the master looks is still replaced.
		process.kill(broker, 'SIGSTOP');
		try {
			await waitFor(() => /is hung/.test(srv.log()), 10000, 'the hung broker replaced');
		} finally {
			try {
				process.kill(broker, 'SIGCONT');
			} catch { /* killed by the master */ }
		}
	}, { workers: 1, args: ['--broker-hang-ms', '1000'] }));

// The CORS headers named the --allowed-origin as configured, while the origin was matched
// without regard to case: a browser compares Access-Control-Allow-Origin with its serialized
// origin (lower case) byte for byte, so `--allowed-origin https://App.Example` accepted the
// page's requests and then hid every response from it. Now the request's origin is echoed.
test('Access-Control-Allow-Origin is the request\'s origin, whatever the option\'s case', T,
	() => withServer(async (srv) => {
		const origin = 'https://app.example';
		const pre = await new Promise((resolve, reject) => {
			const r = http.request(srv.url, { method: 'OPTIONS', agent: false, headers: {
				origin, 'access-control-request-method': 'POST' } }, (res) => {
				res.resume();
				resolve(res);
			});
			r.on('error', reject);
			r.end();
		});
		assert.equal(pre.statusCode, 204);
		assert.equal(pre.headers['access-control-allow-origin'], origin);
		const r = await post(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
			params: { protocolVersion: '2025-11-25', capabilities: {},
				clientInfo: { name: 'rt12', version: '1' } } }, { origin });
		assert.equal(r.status, 200, JSON.stringify(r.body));
		assert.equal(r.headers['access-control-allow-origin'], origin);
		// Another origin still gets 403 and no CORS headers.
		const bad = await post(srv.url, { jsonrpc: '2.0', id: 1, method: 'ping' },
			{ origin: 'https://app.example.evil' });
		assert.equal(bad.status, 403);
		assert.equal(bad.headers['access-control-allow-origin'], undefined);
	}, { workers: 1, args: ['--allowed-origin', 'https://App.Example'] }));

// --token TOKEN=PRINCIPAL was split at the first '=': a base64 token with padding,
// `--token dG9rZW4==alice`, became the token 'dG9rZW4' (which then worked, without its
// padding) of principal '=alice', and the real token got 401. Split at the last '=' now.
test('--token keeps a token\'s base64 padding', T, () => withServer(async (srv) => {
	const init = (tok) => post(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
		params: { protocolVersion: '2025-11-25', capabilities: {},
			clientInfo: { name: 'rt12', version: '1' } } }, { authorization: `Bearer ${tok}` });
	const ok = await init('dG9rZW4=');
	assert.equal(ok.status, 200, JSON.stringify(ok.body));
	const cut = await init('dG9rZW4');
	assert.equal(cut.status, 401, JSON.stringify(cut.body));
}, { workers: 1, args: ['--token', 'dG9rZW4==alice'] }));

// A malformed --token (the principal forgotten) was echoed in the usage error, so the secret
// went to the log or journal that collects the server's stderr.
test('a malformed --token is refused without echoing the secret', T, () => {
	for (const v of ['s3cretNoPrincipal', 's3cretNoPrincipal=']) {
		const r = spawnSync(process.env.SHMB_MCPD, ['--port', '0', '--token', v],
			{ encoding: 'utf8', timeout: 10000 });
		assert.equal(r.status, 2, r.stderr);
		assert.match(r.stderr, /--token: .*not TOKEN=PRINCIPAL/);
		assert.doesNotMatch(r.stderr, /s3cret/);
	}
});
