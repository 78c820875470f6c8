// rpc.mjs - what the hardening tests (hardening.test.mjs, slowloris.test.mjs) share: a server
// for the length of a test, and plain JSON-RPC over HTTP: one POST per call, each on a new TCP
// connection (node:http without an agent: no request waits behind another on a pooled
// connection, and calls spread over the workers as separate clients' do); its status, headers,
// parsed body and duration.
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from './lib.mjs';

// Runs fn(srv) with a server started with opts (lib.mjs) and stopped afterwards; a failure
// carries the end of the server's log.
export async function withServer(fn, opts) {
	const srv = await startServer(opts);
	try {
		await fn(srv);
	} catch (e) {
		e.message += `\n--- shmb-mcpd stderr (last 8 kB) ---\n${srv.log().slice(-8192)}`;
		throw e;
	} finally {
		await srv.stop();
	}
}

// One JSON-RPC POST; resolves { status, headers, body (parsed JSON or null), ms }.
export function rpc(url, msg, headers = {}, accept = 'application/json') {
	const t0 = performance.now();
	return new Promise((resolve, reject) => {
		const req = http.request(url, { method: 'POST', agent: false, timeout: 10000,
			headers: { 'content-type': 'application/json', accept,
				'mcp-protocol-version': '2025-11-25', ...headers } }, (res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => {
				let body = null;
				try {
					body = text ? JSON.parse(text) : null;
				} catch {
					body = text;
				}
				resolve({ status: res.statusCode, headers: new Headers(res.headers), body,
					ms: performance.now() - t0 });
			});
			res.on('error', reject);
		});
		// A server that never answers fails the call, not the whole test by its timeout.
		req.on('timeout', () => req.destroy(new Error('no answer within 10 s')));
		req.on('error', reject);
		req.end(JSON.stringify(msg));
	});
}

export async function initialize(url) {
	const r = await rpc(url, { jsonrpc: '2.0', id: 1, method: 'initialize',
		params: { protocolVersion: '2025-11-25', capabilities: {},
			clientInfo: { name: 'hardening', version: '1' } } });
	assert.equal(r.status, 200, JSON.stringify(r.body));
	return r.headers.get('mcp-session-id');
}
