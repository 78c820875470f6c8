// slow_reader.test.mjs - a stream whose client stops reading must not lose events silently
// (tools/mcp/stream.c). A raw socket opens the session's GET stream and reads nothing while
// 400 notifications of 60 kB are published (the test broker's ring holds 128 KiB of data, so
// most are evicted before the reader comes back), then reads on: every event id after the
// priming event is either delivered or counted by a notifications/shmb/overrun notification
// placed exactly where the gap is, and the last event arrives. Run by ctest with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, waitFor } from './lib.mjs';

const T = { timeout: 120000 };
const N = 400;

async function post(url, body, headers = {}) {
	const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json',
		accept: 'application/json, text/event-stream', ...headers }, body: JSON.stringify(body) });
	return { res, body: await res.json() };
}

// A GET of the standalone stream on a raw socket (HTTP/1.0: the body is the stream itself, not
// chunked); it reads the head and the priming event, then nothing until sock.resume().
async function rawStream(port, sid) {
	const sock = net.connect({ port, host: '127.0.0.1' });
	sock.write(`GET /mcp HTTP/1.0\r\nHost: 127.0.0.1:${port}\r\nAccept: text/event-stream\r\n` +
		`Mcp-Session-Id: ${sid}\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n`);
	const st = { text: '', sock };
	sock.setEncoding('utf8');
	sock.on('data', (d) => {
		st.text += d;
		if (!st.primed && /\r\n\r\n[^]*data: \n\n/.test(st.text)) {
			st.primed = true;
			sock.pause(); // the stalled reader: the kernel's buffers fill, then the server's
		}
	});
	await waitFor(() => st.primed, 10000, 'the priming event of the GET stream');
	return st;
}

// SSE events of the text after the head: [{id, data}] (comments skipped).
function events(text) {
	const body = text.slice(text.indexOf('\r\n\r\n') + 4);
	const out = [];
	for (const block of body.split('\n\n').slice(0, -1)) {
		const ev = {};
		for (const line of block.split('\n')) {
			if (line.startsWith('id: '))
				ev.id = Number(line.slice(4));
			else if (line.startsWith('data: '))
				ev.data = line.slice(6);
		}
		if (ev.data !== undefined)
			out.push(ev);
	}
	return out;
}

test('a stalled reader gets every event or an overrun notification counting the lost ones', T,
	async () => {
		const srv = await startServer();
		try {
			const init = await post(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
				params: { protocolVersion: '2025-11-25', capabilities: {},
					clientInfo: { name: 'slow', version: '1' } } });
			const sid = init.res.headers.get('mcp-session-id');
			const h = { 'mcp-session-id': sid, 'mcp-protocol-version': '2025-11-25' };
			const st = await rawStream(srv.port, sid);
			const pad = 'x'.repeat(60000);
			for (let i = 1; i <= N; i++) {
				const r = await post(srv.url, { jsonrpc: '2.0', id: 10 + i,
					method: 'tools/call', params: { name: 'notify',
						arguments: { text: `${i} ${pad}` } } }, h);
				assert.equal(r.body.result?.content?.[0]?.text, 'notified',
					JSON.stringify(r.body).slice(0, 300));
			}
			st.sock.resume();
			const index = (e) => Number(JSON.parse(e.data).params?.data?.split(' ')[0]);
			await waitFor(() => {
				const ev = events(st.text);
				return ev.length > 1 && index(ev[ev.length - 1]) === N;
			}, 30000, `notification ${N}`);
			st.sock.destroy();

			// An event of 60 kB spans several ids (one per ring slot: docs/events.md), the
			// same number for each of these; lagged counts ids.
			const ev = events(st.text);
			assert.equal(ev[0].data, '', 'the priming event comes first');
			let prev = { i: 0, id: ev[0].id }, lagged = 0, delivered = 0, lost = 0, notes = 0, span = 0;
			for (const e of ev.slice(1)) {
				const msg = JSON.parse(e.data);
				if (msg.method === 'notifications/shmb/overrun') {
					assert.equal(e.id, undefined, 'an overrun notification has no id');
					assert.ok(msg.params.lagged > 0, e.data);
					lagged += msg.params.lagged;
					notes++;
					continue;
				}
				const i = index(e);
				{
					const gap = i - prev.i - 1; // notifications missing here
					if (!lagged) {
						assert.equal(gap, 0, `notification ${i} follows ${prev.i}: ` +
							'a silent gap');
						if (prev.i)
							span = e.id - prev.id;
					} else {
						assert.ok(gap > 0, `an overrun notification before ${i} lost nothing`);
						lost += gap;
						if (span) // the ids skipped are those of the lost events
							assert.equal(e.id - prev.id - span, lagged);
					}
				}
				prev = { i, id: e.id };
				lagged = 0;
				delivered++;
			}
			assert.equal(delivered + lost, N);
			assert.ok(notes > 0, `the ring overran (${delivered} delivered)`);
		} catch (e) {
			e.message += `\n--- shmb-mcpd stderr ---\n${srv.log().slice(-4000)}`;
			throw e;
		} finally {
			await srv.stop();
		}
	});
