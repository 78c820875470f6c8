// redteam16_failover.test.mjs - red team 16 on shmb-mcpd's failover from Redis (tools/mcp/failover.c,
// docs/multi-host.md): defects found by attacking --redis, each with the test that showed it.
// Real redis-server, real shmb-mcpd nodes (own broker, --node-id); the Redis records are written
// here in shmb-mirror's schema (tools/mirror/mirror_redis.h), as multihost.test.mjs does.
//   - a request of another tenant (or principal) for a session of another node must not claim it:
//     Redis's owner and epoch stay, nothing is restored here, the answer is the one a local
//     session of another tenant gets (403)
// Run by ctest (labels mcp;multihost) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { startServer, tagged, waitFor, withCluster } from './lib.mjs';
import { rpc, initialize } from './rpc.mjs';
import { freePort } from '../../tools/cluster/redis.mjs';

const T = { timeout: 60000 };
const STANDALONE = 4294967295;

// The record of sid as node `owner`'s mirror writes it (events 1..mirrored); fields overrides.
async function writeSession(r, sid, { owner = 1, mirrored = 5, tenant = 'default', principal,
	fields = [] } = {}) {
	const now = Date.now();
	const key = `shmb:s:{${sid}}`;
	await r.cmd('HSET', key, 'tenant', tenant, 'created_at_ms', now - 5000,
		'last_accessed_at_ms', now - 1000, 'inactivity_ttl_ms', 1800000,
		'absolute_ttl_ms', 14400000, 'origin', parseInt(sid.slice(0, 4), 16), 'owner', owner,
		'epoch', 0, 'mirrored_id', mirrored, 'claimed', mirrored, 'state', 'live',
		...(principal ? ['principal', principal] : []), ...fields);
	for (let id = 1; id <= mirrored; id++)
		await r.cmd('XADD', `shmb:e:{${sid}}`, `${id}-0`, 's', STANDALONE, 'k', 2, 't', now,
			'd', JSON.stringify({ jsonrpc: '2.0', method: 'notifications/message',
				params: { level: 'info', data: `e${id}` } }));
	await r.cmd('HSET', `shmb:a:{${sid}}`, 'mcp.protocol_version', '2025-11-25');
}

// The standalone GET stream of sid, read (priming event, keepalives) in the background until it
// ends: st.res, st.ended once it has ended, st.close() aborts it and waits for the reader.
async function holdStream(url, sid) {
	const ac = new AbortController();
	const res = await fetch(url, { signal: ac.signal, headers: {
		accept: 'text/event-stream', 'mcp-session-id': sid,
		'mcp-protocol-version': '2025-11-25' } });
	const st = { res, ended: false };
	const reading = (async () => {
		try {
			for await (const _ of res.body) { /* priming event, keepalives */ }
		} catch { /* aborted or cut */ }
		st.ended = true;
	})();
	st.close = async () => {
		ac.abort();
		await reading;
	};
	return st;
}

const ping = (url, sid, headers = {}) => rpc(url, { jsonrpc: '2.0', id: 1, method: 'ping' },
	{ 'mcp-session-id': sid, ...headers });

test('another tenant\'s request does not claim a session of another node', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const sid = tagged(1);
		await writeSession(r, sid, { tenant: 'alice' });
		const res = await ping(b.url, sid, { 'x-tenant': 'mallory' });
		assert.equal(res.status, 403, JSON.stringify(res.body));
		// Redis still names node 1, unclaimed: its mirror is not fenced off, its live copy
		// is not dropped at its next ownership check.
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'epoch'), '0');
		assert.doesNotMatch(b.log(), /restored from redis/);
		// The right tenant still fails it over.
		const ok = await ping(b.url, sid, { 'x-tenant': 'alice' });
		assert.equal(ok.status, 200, JSON.stringify(ok.body));
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
	}, { extra: ['--tenant-header', 'x-tenant'] }));

// Event ids near 2^64 in a record (not written by a mirror: by hand, or a corrupted Redis) wrapped
// past the margin to small ones: the session came back with "next id 49", ids handed out again,
// the lost range empty (from > to). Refused now like any malformed record (503, nothing restored);
// other malformed records get a clear 4xx/503, never a crash, and the node stays healthy.
test('a record with event ids near 2^64 is not restored with wrapped ids', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const big = '18446744073709551600';
		for (const fields of [['mirrored_id', big, 'claimed', big], ['claimed', '18446744073709551615']]) {
			const sid = tagged(1);
			await writeSession(r, sid, { fields });
			const res = await ping(b.url, sid);
			assert.equal(res.status, 503, JSON.stringify(res.body));
		}
		assert.doesNotMatch(b.log(), /restored from redis/);
		const bad = {
			inactivity_ttl_ms: '-5', created_at_ms: '0', mirrored_id: 'x1',
			tenant: 't'.repeat(5000),
		};
		for (const [k, v] of Object.entries(bad)) {
			const sid = tagged(1);
			await writeSession(r, sid, { fields: [k, v] });
			const res = await ping(b.url, sid);
			assert.ok([403, 404, 503].includes(res.status), `${k}=${v.slice(0, 20)}: ${res.status}`);
		}
		const h = await fetch(b.url.replace('/mcp', '/health'));
		assert.equal(h.status, 200);
	}));

// A node stopped (SIGSTOP: HAProxy marks it down, another node claims its sessions) and continued
// within the ownership cache's 10 s: its workers trusted their last check and served the stale
// copy -- events published into it, its mirror fenced off, all of them dropped without a word when
// the check ran out. The loop's stall makes every session's owner be checked again.
test('a node continued after a SIGSTOP checks ownership again before serving', T,
	() => withCluster(async (redis, a) => {
		const r = redis.client;
		const sid = await initialize(a.url);
		assert.equal(sid.slice(0, 4), '0001');
		// Checked by this worker (no record yet: this node's).
		assert.equal((await ping(a.url, sid)).status, 200);
		const workers = execFileSync('pgrep', ['-P', String(a.child.pid)]).toString().trim()
			.split('\n').map(Number);
		for (const w of workers)
			process.kill(w, 'SIGSTOP');
		try {
			// Meanwhile node 2 claimed it (what its failover writes), the balancer sent the
			// client there. The stop lasts longer than a balancer's detection, well below
			// the cache's 10 s.
			await writeSession(r, sid, { owner: 2, mirrored: 3 });
			await r.cmd('HSET', `shmb:s:{${sid}}`, 'epoch', 1);
			await delay(2500);
		} finally {
			for (const w of workers)
				process.kill(w, 'SIGCONT');
		}
		// Node 1 is back: its next request of sid finds node 2 named in Redis.
		assert.equal((await ping(a.url, sid)).status, 200);
		await waitFor(() => /stale local copy dropped/.test(a.log()), 5000, 'the stale copy dropped');
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
	}, { nodes: [1], workers: 1 }));

// A client's standalone stream stays on node B while the session moves away (node A came back,
// the balancer sends the session's requests to A again, A took it back from Redis). Requests are
// checked, an open stream was not: it waited on B's copy, which nobody publishes into any more
// -- every event after the move silently missed. Now B drops its copy within
// MCP_OWNER_CHECK_MS (10 s), which ends the stream; the client resumes through the balancer.
test('a stream on a node its session moved away from ends', { timeout: 90000 },
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const sid = await initialize(b.url);
		const st = await holdStream(b.url, sid);
		assert.equal(st.res.status, 200);
		try {
			// Node 1 took it back (what its claim writes).
			await writeSession(r, sid, { owner: 1, mirrored: 0 });
			await r.cmd('HSET', `shmb:s:{${sid}}`, 'epoch', 2);
			await waitFor(() => st.ended, 20000, 'the stream on the stale copy to end');
			assert.match(b.log(), /stale local copy dropped, its streams end/);
			// Redis still names node 1, the record is live: the local delete was not
			// mirrored over the owner's record (no mirror here; fencing: test_mirror).
			assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
		} finally {
			await st.close();
		}
	}, { workers: 1 }));

// Held (no defect): a stopped Redis accepts connections and never answers; every call is bounded
// by --redis-timeout-ms and the backoff, the event loop never waits for it.
test('Redis SIGSTOPped: 503s in bounded time, local sessions served, /health up', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const local = await initialize(b.url);
		const sid = tagged(1);
		await writeSession(r, sid);
		redis.child.kill('SIGSTOP');
		try {
			for (let i = 0; i < 5; i++) {
				const t0 = Date.now();
				const res = await ping(b.url, sid);
				assert.equal(res.status, 503, JSON.stringify(res.body));
				assert.ok(res.headers.get('retry-after'));
				assert.ok(Date.now() - t0 < 3000, `answered in ${Date.now() - t0} ms`);
				assert.equal((await ping(b.url, local)).status, 200);
				assert.equal((await fetch(b.url.replace('/mcp', '/health'))).status, 200);
			}
		} finally {
			redis.child.kill('SIGCONT');
		}
		await waitFor(async () => (await ping(b.url, sid)).status === 200, 15000,
			'the failover once Redis answers');
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
	}, { extra: ['--redis-timeout-ms', '300'] }));

// The recipe's HAProxy sends every client from its own address: without bearer tokens, every
// client was one for --max-sessions-per-client (128), --max-streams-per-client (64), the jobs'
// limit: one client could take them all. --client-address-header keys the limits on the last
// address in the header the balancer appends (HAProxy `option forwardfor`: a header line after
// the client's own; nginx $proxy_add_x_forwarded_for: ", addr" after the client's value).
test('per-client limits behind a balancer: keyed on the address it appends', T, async () => {
	const srv = await startServer({ workers: 2, args: ['--client-address-header',
		'x-forwarded-for', '--max-sessions-per-client', '2', '--max-connections-per-ip', '0'] });
	try {
		const init = (headers) => rpc(srv.url, { jsonrpc: '2.0', id: 1, method: 'initialize',
			params: { protocolVersion: '2025-11-25', capabilities: {},
				clientInfo: { name: 'rt16', version: '1' } } }, headers);
		const as = (addr, own) => ({ 'x-forwarded-for': own ? `${own}, ${addr}` : addr });
		for (let i = 0; i < 2; i++)
			assert.equal((await init(as('10.0.0.1'))).status, 200);
		assert.equal((await init(as('10.0.0.1'))).status, 429);
		// Another client behind the same balancer is not refused for the first one's sessions.
		assert.equal((await init(as('10.0.0.2'))).status, 200);
		// A client's own X-Forwarded-For comes before the balancer's: not believed.
		assert.equal((await init(as('10.0.0.1', '10.9.9.9'))).status, 429);
		// HAProxy's line comes after the client's own line.
		assert.equal((await init({ 'x-forwarded-for': ['10.0.0.3', '10.0.0.1'] })).status, 429);
		assert.equal((await init({ 'x-forwarded-for': ['10.0.0.1', '10.0.0.3'] })).status, 200);
		// Without the header (a direct connection): the socket's address, as before.
		assert.equal((await init({})).status, 200);
	} catch (e) {
		e.message += `\n--- shmb-mcpd stderr ---\n${srv.log().slice(-4096)}`;
		throw e;
	} finally {
		await srv.stop();
	}
});

// The same for a principal (bearer tokens): bob's token does not claim alice's session.
test('another principal\'s request does not claim a session of another node', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const sid = tagged(1);
		await writeSession(r, sid, { principal: 'alice' });
		const res = await ping(b.url, sid, { authorization: 'Bearer tb' });
		assert.equal(res.status, 403, JSON.stringify(res.body));
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'epoch'), '0');
		const ok = await ping(b.url, sid, { authorization: 'Bearer ta' });
		assert.equal(ok.status, 200, JSON.stringify(ok.body));
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
	}, { extra: ['--token', 'ta=alice', '--token', 'tb=bob'] }));

// HAProxy with the recipe's configuration in front of nodes 1 and 2; fn(url, stateOf).
async function withHaproxy(n1, n2, fn) {
	const dir = mkdtempSync(join(tmpdir(), 'rt16-haproxy-'));
	const [listen, stats] = [await freePort(), await freePort()];
	const cfg = readFileSync(new URL('../../tools/cluster/haproxy.cfg', import.meta.url), 'utf8')
		.replaceAll('@LISTEN@', `127.0.0.1:${listen}`).replaceAll('@STATS@', `127.0.0.1:${stats}`)
		.replaceAll('@NODE1@', `127.0.0.1:${n1.port}`).replaceAll('@NODE2@', `127.0.0.1:${n2.port}`)
		.replaceAll('@INTER@', '250ms');
	writeFileSync(join(dir, 'haproxy.cfg'), cfg);
	const ha = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'pipe'] });
	let log = '';
	ha.stderr.on('data', (d) => { log += d; });
	const exit = new Promise((resolve) => ha.on('exit', resolve));
	const stateOf = async (backend, server) => {
		const csv = await (await fetch(`http://127.0.0.1:${stats}/stats;csv`)).text();
		const head = csv.split('\n')[0].replace(/^# /, '').split(',');
		const f = csv.split('\n').map((l) => l.split(',')).find((x) => x[0] === backend && x[1] === server);
		return f ? f[head.indexOf('status')] : '?';
	};
	try {
		await waitFor(async () => {
			try {
				return await stateOf('nodes', 'node1') === 'UP' && await stateOf('nodes', 'node2') === 'UP';
			} catch {
				return false;
			}
		}, 10000, 'HAProxy: both nodes UP', 50);
		await fn(`http://127.0.0.1:${listen}/mcp`, stateOf);
	} catch (e) {
		e.message += `\n--- haproxy ---\n${log.slice(-2048)}`;
		throw e;
	} finally {
		ha.kill('SIGKILL');
		await exit;
		rmSync(dir, { recursive: true, force: true });
	}
}

const haveHaproxy = spawnSync('haproxy', ['-v']).status === 0;

test('HAProxy cuts the streams of a node it marks down (a stopped node keeps its connections)',
	{ ...T, skip: !haveHaproxy && 'no haproxy' }, () => withCluster(async (redis, n1, n2) =>
		withHaproxy(n1, n2, async (url, stateOf) => {
			// A session of node 1 (initialize is balanced: until one lands there).
			let sid;
			for (let i = 0; i < 20 && !sid?.startsWith('0001'); i++)
				sid = await initialize(url);
			assert.ok(sid.startsWith('0001'), sid);
			const st = await holdStream(url, sid);
			assert.equal(st.res.status, 200);
			const procs = [n1.child.pid, ...execFileSync('pgrep', ['-P', String(n1.child.pid)])
				.toString().trim().split('\n').map(Number)];
			for (const p of procs)
				process.kill(p, 'SIGSTOP');
			try {
				await waitFor(async () => await stateOf('node_0001', 'node1') === 'DOWN', 10000,
					'HAProxy: node 1 DOWN', 50);
				// The client must learn now, not when node 1 continues or after 5 min.
				await waitFor(() => st.ended, 5000, 'the stream to the stopped node to be cut');
			} finally {
				for (const p of procs)
					process.kill(p, 'SIGCONT');
				await st.close();
			}
		}), { nodes: [1, 2], workers: 1 }));

// The claim came before the checks of what it read: a record this node cannot restore (a stream
// entry without data, an attribute larger than this node allows) was left claimed by it -- the
// owner's mirror fenced off, the owner made to drop its live copy at its next check -- for a
// session served nowhere. Now the claim is given back.
test('a claim whose restore failed is given back to the owner', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const broken = {
			'stream entry without data': (sid) => r.cmd('XADD', `shmb:e:{${sid}}`, '9-0', 's', 1,
				'k', 2, 't', Date.now()),
			'attribute beyond this node\'s limit': (sid) => r.cmd('HSET', `shmb:a:{${sid}}`,
				'big', 'v'.repeat(2000000)),
		};
		for (const [what, spoil] of Object.entries(broken)) {
			const sid = tagged(1);
			await writeSession(r, sid, { mirrored: 3 });
			await spoil(sid);
			const res = await ping(b.url, sid);
			assert.ok(res.status >= 400, `${what}: ${res.status}`);
			assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1', what);
		}
		assert.doesNotMatch(b.log(), /restored from redis/);
		assert.equal((await fetch(b.url.replace('/mcp', '/health'))).status, 200);
	}));
