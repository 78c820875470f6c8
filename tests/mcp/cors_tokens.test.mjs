// cors_tokens.test.mjs - browser clients and secrets (tools/mcp/http.c, main.c): CORS for an
// --allowed-origin (preflight answered before the token check, Allow-Origin and the exposed
// Mcp-Session-Id / Mcp-Protocol-Version on every response, nothing for other origins), bearer
// tokens from --token-file (mode checked), $SHMB_MCPD_TOKENS and --token (then gone from
// /proc/PID/cmdline and environ). Run by ctest (tests/mcp/CMakeLists.txt) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, chmodSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, withServer } from './lib.mjs';

const T = { timeout: 60000 };
const APP = 'https://app.example';
const INIT = { jsonrpc: '2.0', id: 1, method: 'initialize', params: {
	protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'b', version: '1' } } };

// One request with any headers (fetch would not send Origin as given): {status, headers, body}.
function req(url, method, headers = {}, body) {
	return new Promise((resolve, reject) => {
		const r = http.request(url, { method, agent: false, headers: { 'content-type':
			'application/json', accept: 'application/json, text/event-stream', ...headers } },
		(res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
				body: text }));
		});
		r.on('error', reject);
		if (body)
			r.write(JSON.stringify(body));
		r.end();
	});
}

const list = (v) => String(v ?? '').split(',').map((x) => x.trim().toLowerCase());

test('CORS for an --allowed-origin only; the preflight needs no token', T, () =>
	withServer({ args: ['--allowed-origin', APP, '--token', 'tk=alice'] }, async (srv) => {
		const pre = await req(srv.url, 'OPTIONS', { origin: APP,
			'access-control-request-method': 'POST',
			'access-control-request-headers': 'content-type, mcp-session-id, authorization' });
		assert.equal(pre.status, 204);
		assert.equal(pre.headers['access-control-allow-origin'], APP);
		for (const m of ['get', 'post', 'delete'])
			assert.ok(list(pre.headers['access-control-allow-methods']).includes(m));
		for (const h of ['content-type', 'authorization', 'mcp-session-id',
			'mcp-protocol-version', 'last-event-id'])
			assert.ok(list(pre.headers['access-control-allow-headers']).includes(h), h);

		const init = await req(srv.url, 'POST', { origin: APP, authorization: 'Bearer tk' },
			INIT);
		assert.equal(init.status, 200, init.body);
		assert.equal(init.headers['access-control-allow-origin'], APP);
		const exposed = list(init.headers['access-control-expose-headers']);
		assert.ok(exposed.includes('mcp-session-id') && exposed.includes('mcp-protocol-version'));
		// An error is readable by the page too (401 without the token).
		const no = await req(srv.url, 'POST', { origin: APP }, INIT);
		assert.equal(no.status, 401);
		assert.equal(no.headers['access-control-allow-origin'], APP);

		// Another origin: refused; a default loopback origin: served without CORS headers.
		assert.equal((await req(srv.url, 'OPTIONS', { origin: 'https://evil.example' })).status,
			403);
		const local = await req(srv.url, 'POST', { origin: 'http://localhost:3000',
			authorization: 'Bearer tk' }, INIT);
		assert.equal(local.status, 200);
		assert.equal(local.headers['access-control-allow-origin'], undefined);
		const plain = await req(srv.url, 'OPTIONS', {});
		assert.equal(plain.status, 204);
		assert.equal(plain.headers['access-control-allow-origin'], undefined);
	}));

test('tokens from a file (mode checked), the environment and argv', T, async () => {
	const dir = mkdtempSync(join(tmpdir(), 'shmb-mcptok-'));
	try {
		const file = join(dir, 'tokens');
		writeFileSync(file, '# token principal\n\n  tokA alice \ntokB\tbob\n');
		chmodSync(file, 0o644);
		const bad = spawnSync(process.env.SHMB_MCPD, ['--port', '0', '--token-file', file],
			{ encoding: 'utf8', timeout: 10000 });
		assert.equal(bad.status, 2, bad.stderr);
		assert.match(bad.stderr, /readable by others \(mode 0644\).*chmod 600/);
		const broken = join(dir, 'broken');
		writeFileSync(broken, 'tokA alice extra\n', { mode: 0o600 });
		const b2 = spawnSync(process.env.SHMB_MCPD, ['--port', '0', '--token-file', broken],
			{ encoding: 'utf8', timeout: 10000 });
		assert.equal(b2.status, 2, b2.stderr);
		assert.match(b2.stderr, /line 1: not 'TOKEN PRINCIPAL'/);
		chmodSync(file, 0o600);

		process.env.SHMB_MCPD_TOKENS = 'tokE eve';
		const started = startServer({ args: ['--token-file', file, '--token', 'tokC=carol'] });
		delete process.env.SHMB_MCPD_TOKENS;
		const srv = await started;
		try {
			const init = async (tok) => (await req(srv.url, 'POST',
				tok === null ? {} : { authorization: `Bearer ${tok}` }, INIT));
			for (const tok of ['tokA', 'tokB', 'tokE', 'tokC'])
				assert.equal((await init(tok)).status, 200, tok);
			for (const tok of [null, 'tokAx', 'tok', 'tokb', '', 'tokC=carol', 'alice'])
				assert.equal((await init(tok)).status, 401, String(tok));
			// Each token is its principal: alice's session is not bob's.
			const a = await init('tokA');
			const other = await req(srv.url, 'POST', { authorization: 'Bearer tokB',
				'mcp-session-id': a.headers['mcp-session-id'] },
			{ jsonrpc: '2.0', id: 2, method: 'ping' });
			assert.equal(other.status, 403);
			// Neither ps (the command line) nor the environment shows a token any more.
			const cmdline = readFileSync(`/proc/${srv.child.pid}/cmdline`, 'utf8');
			const environ = readFileSync(`/proc/${srv.child.pid}/environ`, 'utf8');
			assert.doesNotMatch(cmdline, /tokC/);
			assert.match(cmdline, /xxxx\0carol/); // the token overwritten in place
			assert.doesNotMatch(environ, /tokE/);
		} catch (e) {
			e.message += `\n--- shmb-mcpd stderr ---\n${srv.log()}`;
			throw e;
		} finally {
			await srv.stop();
		}
	} finally {
		rmSync(dir, { recursive: true, force: true });
	}
});
