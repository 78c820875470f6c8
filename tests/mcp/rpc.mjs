// rpc.mjs - plain JSON-RPC over HTTP for the hardening tests (hardening.test.mjs,
// slowloris.test.mjs): one POST per call, its status, headers, parsed body and duration.
import assert from 'node:assert/strict';

// One JSON-RPC POST; resolves { status, headers, body (parsed JSON or null), ms }.
export async function rpc(url, msg, headers = {}, accept = 'application/json') {
	const t0 = performance.now();
	const res = await fetch(url, {
		method: 'POST',
		headers: { 'content-type': 'application/json', accept,
			'mcp-protocol-version': '2025-11-25', ...headers },
		body: JSON.stringify(msg),
		signal: AbortSignal.timeout(10000), // a server that never answers fails, not hangs
	});
	const text = await res.text();
	let body = null;
	try {
		body = text ? JSON.parse(text) : null;
	} catch {
		body = text;
	}
	return { status: res.status, headers: res.headers, body, ms: performance.now() - t0 };
}

export async function initialize(url) {
	const r = await rpc(url, { jsonrpc: '2.0', id: 1, method: 'initialize',
		params: { protocolVersion: '2025-11-25', capabilities: {},
			clientInfo: { name: 'hardening', version: '1' } } });
	assert.equal(r.status, 200, JSON.stringify(r.body));
	return r.headers.get('mcp-session-id');
}
