// redteam11.test.mjs - shmb-mcpd's session state (attributes, tools/mcp/session.c) against a
// client whose initialize carries capabilities and clientInfo as large as an attribute holds:
// logging/setLevel must still work (the level is what the server acts on; capabilities and info
// are only reported). Run by ctest (tests/mcp/CMakeLists.txt) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib.mjs';

const T = { timeout: 60000 };

async function post(url, body, headers = {}) {
	const res = await fetch(url, {
		method: 'POST',
		headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
		body: JSON.stringify(body),
	});
	return { res, body: res.status === 200 ? await res.json() : null };
}

test('setLevel works after an initialize with capabilities and clientInfo at the attribute limit',
	T, async () => {
		const srv = await startServer();
		try {
			// Each JSON text just under SHMB_ATTR_MAX (1976 bytes): both are kept.
			const caps = { experimental: { pad: 'c'.repeat(1930) } };
			const clientInfo = { name: 'n', version: '1', title: 't'.repeat(1920) };
			const init = await post(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
				params: { protocolVersion: '2025-11-25', capabilities: caps, clientInfo } });
			assert.equal(init.res.status, 200, srv.log());
			const h = { 'mcp-session-id': init.res.headers.get('mcp-session-id'),
				'mcp-protocol-version': '2025-11-25' };
			const set = await post(srv.url, { jsonrpc: '2.0', id: 2,
				method: 'logging/setLevel', params: { level: 'error' } }, h);
			assert.equal(set.res.status, 200);
			assert.equal(set.body.error, undefined, JSON.stringify(set.body));
			const info = await post(srv.url, { jsonrpc: '2.0', id: 3, method: 'tools/call',
				params: { name: 'session_info', arguments: {} } }, h);
			const d = JSON.parse(info.body.result.content[0].text);
			assert.equal(d.logLevel, 'error', JSON.stringify(d));
		} catch (e) {
			e.message += `\n--- shmb-mcpd stderr ---\n${srv.log()}`;
			throw e;
		} finally {
			await srv.stop();
		}
	});
