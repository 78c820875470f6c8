// multihost.test.mjs - shmb-mcpd's failover from Redis (tools/mcp/failover.c, docs/multi-host.md),
// one test per branch, with a real redis-server and real shmb-mcpd nodes (each with its own
// broker and --node-id). The Redis records are written here in the schema shmb-mirror writes
// (tools/mirror/mirror_redis.h), so each case controls exactly what the mirror had copied:
// mirrored_id, claimed, the events; the whole chain with shmb-mirror and HAProxy is
// tools/cluster/demo.sh's (ctest multihost_demo).
//   - a session of another node, not here: restored (id, tenant, attributes, events), replayed
//     after the client's Last-Event-ID, the lost range told with the overrun notification, new
//     ids after max(mirrored_id, claimed, Last-Event-ID) + the margin; Redis names this owner
//   - Last-Event-ID inside the lost range (the client saw more than the mirror copied)
//   - a call whose job died with its node: its resumed stream ends in an error answer
//   - unknown in Redis too: 404; Redis unreachable: 503 with Retry-After, a local session served
//   - a local copy whose Redis owner is another node: dropped, the session taken back from Redis
//   - workers racing to restore one session: one restore, every request served
//   - a session of another node restored, mirrored onward by this node's shmb-mirror, then
//     DELETEd: ended in Redis too
//   - nginx with tools/cluster/nginx.conf: routing on the tag, a dead node's session on its backup
// Run by ctest (label multihost) with `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { startNode, tagged, waitFor, withCluster } from './lib.mjs';
import { rpc, initialize } from './rpc.mjs';
import { startRedis, freePort } from '../../tools/cluster/redis.mjs';

const T = { timeout: 60000 };
const STANDALONE = 4294967295; // MCP_STREAM_STANDALONE
const MARGIN = 64;             // --failover-id-margin's default
const OVERRUN = 'notifications/shmb/overrun';

function message(text) {
	return JSON.stringify({ jsonrpc: '2.0', method: 'notifications/message',
		params: { level: 'info', logger: 'test', data: text } });
}

// The Redis record of sid as the mirror of node `owner` would have written it: events 1..mirrored
// on the standalone stream (data "e<id>"), the negotiated version as an attribute.
async function writeSession(r, sid, { owner = 1, mirrored = 5, claimed = mirrored, tenant = 'default',
	prefix = 'shmb:', text = (id) => `e${id}` } = {}) {
	const now = Date.now();
	await r.cmd('HSET', `${prefix}s:{${sid}}`, 'tenant', tenant, 'created_at_ms', now - 5000,
		'last_accessed_at_ms', now - 1000, 'inactivity_ttl_ms', 1800000,
		'absolute_ttl_ms', 14400000, 'origin', parseInt(sid.slice(0, 4), 16), 'owner', owner,
		'epoch', 0, 'mirrored_id', mirrored, 'claimed', claimed, 'state', 'live');
	for (let id = 1; id <= mirrored; id++)
		await r.cmd('XADD', `${prefix}e:{${sid}}`, `${id}-0`, 's', STANDALONE, 'k', 2, 't', now,
			'd', message(text(id)));
	await r.cmd('HSET', `${prefix}a:{${sid}}`, 'mcp.protocol_version', '2025-11-25');
}

// The standalone GET stream of sid (Last-Event-ID lei, or none): events as they come, in
// st.events ({id, msg}; an overrun notification has no id); st.status; st.close().
async function openStream(url, sid, lei) {
	const ac = new AbortController();
	const headers = { accept: 'text/event-stream', 'mcp-session-id': sid,
		'mcp-protocol-version': '2025-11-25' };
	if (lei !== undefined)
		headers['last-event-id'] = String(lei);
	const res = await fetch(url, { headers, signal: ac.signal });
	const st = { status: res.status, headers: res.headers, events: [], text: '',
		close: () => ac.abort() };
	if (res.status !== 200) {
		st.body = await res.text();
		return st;
	}
	(async () => {
		const dec = new TextDecoder();
		let buf = '';
		try {
			for await (const chunk of res.body) {
				buf += dec.decode(chunk, { stream: true });
				let i;
				while ((i = buf.indexOf('\n\n')) >= 0) {
					const block = buf.slice(0, i);
					buf = buf.slice(i + 2);
					let id, data;
					for (const line of block.split('\n')) {
						if (line.startsWith('id: '))
							id = Number(line.slice(4));
						else if (line.startsWith('data: '))
							data = line.slice(6);
					}
					if (data) // priming events have empty data
						st.events.push({ id, msg: JSON.parse(data) });
				}
			}
		} catch { /* aborted */ }
	})();
	return st;
}

function notify(url, sid, text) {
	return rpc(url, { jsonrpc: '2.0', id: 2, method: 'tools/call',
		params: { name: 'notify', arguments: { text } } }, { 'mcp-session-id': sid });
}

const dataOf = (e) => e.msg.params?.data;

test('a session of a dead node is restored: replay, the lost range told, ids continue', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const sid = tagged(1);
		await writeSession(r, sid, { mirrored: 5, claimed: 7 });
		const st = await openStream(b.url, sid, 2);
		assert.equal(st.status, 200, st.body);
		await waitFor(() => st.events.length >= 4, 10000, 'the replay and the notice');
		// Mirrored events after Last-Event-ID 2, then the overrun notice for what the mirror
		// had not copied: ids 6 .. max(mirrored 5, claimed 7) + margin.
		assert.deepEqual(st.events.slice(0, 3).map((e) => [e.id, dataOf(e)]),
			[[3, 'e3'], [4, 'e4'], [5, 'e5']]);
		assert.equal(st.events[3].id, undefined);
		assert.equal(st.events[3].msg.method, OVERRUN);
		assert.equal(st.events[3].msg.params.lagged, 7 + MARGIN - 5);
		// Ids continue after the restored last id, never reusing one the dead node gave out.
		const n = await notify(b.url, sid, 'after failover');
		assert.equal(n.status, 200, JSON.stringify(n.body));
		await waitFor(() => st.events.length >= 5, 10000, 'the new event');
		assert.deepEqual([st.events[4].id, dataOf(st.events[4])], [7 + MARGIN + 1, 'after failover']);
		st.close();
		// Redis names this node the owner now; the epoch counts the claim.
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
		assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'epoch'), '1');
		// The attributes came along: the negotiated version (session_info reads it).
		const info = await rpc(b.url, { jsonrpc: '2.0', id: 3, method: 'tools/call',
			params: { name: 'session_info', arguments: {} } }, { 'mcp-session-id': sid });
		assert.equal(JSON.parse(info.body.result.content[0].text).protocolVersion, '2025-11-25');
		// A reader resuming after the lost range gets no notice; one from before gets it.
		const late = await openStream(b.url, sid, 7 + MARGIN + 1);
		const early = await openStream(b.url, sid, 4);
		await notify(b.url, sid, 'later');
		await waitFor(() => late.events.length >= 1 && early.events.length >= 4, 10000, 'both');
		assert.deepEqual(late.events.map(dataOf), ['later']);
		assert.deepEqual(early.events.map((e) => e.id ?? e.msg.params.lagged),
			[5, 7 + MARGIN - 5, 7 + MARGIN + 1, 7 + MARGIN + 2]);
		late.close();
		early.close();
		assert.equal((b.log().match(/restored from redis/g) || []).length, 1, b.log());
	}));

test('Last-Event-ID past what the mirror copied: the notice first, ids continue after it', T,
	() => withCluster(async (redis, b) => {
		const sid = tagged(1);
		await writeSession(redis.client, sid, { mirrored: 5, claimed: 7 });
		// The client saw id 9: the dead node handed out at least 9 ids.
		const st = await openStream(b.url, sid, 9);
		assert.equal(st.status, 200, st.body);
		await waitFor(() => st.events.length >= 1, 10000, 'the notice');
		assert.equal(st.events[0].msg.method, OVERRUN);
		assert.equal(st.events[0].msg.params.lagged, MARGIN);
		await notify(b.url, sid, 'next');
		await waitFor(() => st.events.length >= 2, 10000, 'the new event');
		assert.deepEqual([st.events[1].id, dataOf(st.events[1])], [9 + MARGIN + 1, 'next']);
		st.close();
	}));

test('a call whose job died with its node: the resumed stream replays, tells, then answers an error', T,
	() => withCluster(async (redis, b) => {
		const r = redis.client;
		const sid = tagged(1);
		// The dead node ran a countdown (request id 7) on POST stream 1: priming event 1,
		// steps 2..4 mirrored; its job record died with it, the session says the call runs.
		await writeSession(r, sid, { mirrored: 0 });
		const now = Date.now();
		await r.cmd('XADD', `shmb:e:{${sid}}`, '1-0', 's', 0, 'k', 1, 't', now, 'd', '');
		for (let id = 2; id <= 4; id++)
			await r.cmd('XADD', `shmb:e:{${sid}}`, `${id}-0`, 's', 1, 'k', 0x8000 | (id - 1), 't', now,
				'd', JSON.stringify({ jsonrpc: '2.0', method: 'notifications/progress',
					params: { progressToken: 't', progress: id - 1 } }));
		await r.cmd('HSET', `shmb:s:{${sid}}`, 'mirrored_id', 4, 'claimed', 4);
		await r.cmd('HSET', `shmb:a:{${sid}}`, 'mcpd.call.1', '7');
		const st = await openStream(b.url, sid, 2);
		assert.equal(st.status, 200, st.body);
		await waitFor(() => st.events.length >= 4, 10000, 'replay, notice, answer');
		assert.deepEqual(st.events.slice(0, 2).map((e) => [e.id, e.msg.params.progress]), [[3, 2], [4, 3]]);
		assert.equal(st.events[2].msg.method, OVERRUN);
		assert.equal(st.events[3].id, undefined);
		assert.equal(st.events[3].msg.id, 7);
		assert.equal(st.events[3].msg.error.code, -32603);
		assert.match(st.events[3].msg.error.message, /lost/);
		st.close();
		// A call that runs here is not answered so: a countdown started on this node, its
		// stream resumed while its job runs, gets its steps and its own result.
		const c = await rpc(b.url, { jsonrpc: '2.0', id: 8, method: 'tools/call', params: {
			name: 'countdown', arguments: { n: 3, delay_ms: 300 }, _meta: { progressToken: 'u' } } },
		{ 'mcp-session-id': sid }, 'application/json, text/event-stream');
		assert.equal(c.status, 200);
		const prime = Number(/id: (\d+)/.exec(c.body)[1]);
		const again = await openStream(b.url, sid, prime);
		await waitFor(() => again.events.some((e) => e.msg.id === 8), 10000, 'the result');
		assert.ok(again.events.every((e) => !e.msg.error), JSON.stringify(again.events));
		again.close();
	}));

test('unknown in Redis too: 404, nothing created', T, () => withCluster(async (redis, b) => {
	const health = await fetch(b.url.replace(/\/mcp$/, '/health'));
	assert.deepEqual([health.status, await health.text()], [200, 'ok\n']);
	const sid = tagged(1);
	const r = await notify(b.url, sid, 'x');
	assert.equal(r.status, 404, JSON.stringify(r.body));
	assert.equal(r.body.error.code, -32001);
	assert.equal(await redis.client.cmd('EXISTS', `shmb:s:{${sid}}`), 0);
	// A deleted session stays deleted.
	await writeSession(redis.client, sid, {});
	await redis.client.cmd('HSET', `shmb:s:{${sid}}`, 'state', 'deleted');
	assert.equal((await notify(b.url, sid, 'x')).status, 404);
	assert.equal(await redis.client.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
}));

test('Redis unreachable: 503 with Retry-After for a session not here, local ones served', T,
	async () => {
		const dead = await freePort(); // nothing listens there
		const b = await startNode(2, dead);
		try {
			const t0 = Date.now();
			const r = await notify(b.url, tagged(1), 'x');
			assert.equal(r.status, 503, JSON.stringify(r.body));
			assert.equal(r.headers.get('retry-after'), '1');
			assert.ok(Date.now() - t0 < 2000, `answered in ${Date.now() - t0} ms`);
			const sid = await initialize(b.url); // made here: served without Redis
			assert.equal(sid.slice(0, 4), '0002');
			assert.equal((await notify(b.url, sid, 'local')).status, 200);
			await waitFor(() => /redis 127\.0\.0\.1:\d+ unavailable/.test(b.log()), 5000,
				'the outage logged');
		} catch (e) {
			e.message += `\n--- shmb-mcpd stderr ---\n${b.log().slice(-6144)}`;
			throw e;
		} finally {
			await b.stop();
		}
	});

test('a returning node drops its stale copy and takes the session back from Redis', T,
	async () => {
		const redis = await startRedis();
		let a = await startNode(1, redis.port, [], { keep: true });
		const name = a.name;
		try {
			// Node 1 has the session, with its own events "a1".."a3"; then it goes away
			// (its segment stays, as after kill -9).
			const sid = await initialize(a.url);
			assert.equal(sid.slice(0, 4), '0001');
			for (let i = 1; i <= 3; i++)
				assert.equal((await notify(a.url, sid, `a${i}`)).status, 200);
			await a.stop();
			// Meanwhile node 2 served it (owns it in Redis) and published "b1".."b6".
			await writeSession(redis.client, sid, { owner: 2, mirrored: 6, text: (id) => `b${id}` });
			// Node 1 comes back on its old segment: it must not serve its copy.
			a = await startNode(1, redis.port, [], { name });
			const st = await openStream(a.url, sid, 1);
			assert.equal(st.status, 200, st.body);
			await waitFor(() => st.events.length >= 6, 10000, 'the replay');
			assert.deepEqual(st.events.slice(0, 5).map(dataOf), ['b2', 'b3', 'b4', 'b5', 'b6']);
			assert.equal(st.events[5].msg.method, OVERRUN);
			st.close();
			await waitFor(() => /is node 2's now: stale local copy dropped/.test(a.log()), 5000,
				'the stale copy logged');
			assert.equal(await redis.client.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '1');
		} catch (e) {
			e.message += `\n--- shmb-mcpd stderr ---\n${a.log().slice(-6144)}`;
			throw e;
		} finally {
			await a.stop();
			await redis.stop();
			rmSync(`/dev/shm/shmb.${name}`, { force: true }); // if it never came back
		}
	});

test('a local session that Redis says is ours is served as it is', T,
	() => withCluster(async (redis, a) => {
		const sid = await initialize(a.url);
		await notify(a.url, sid, 'a1');
		await writeSession(redis.client, sid, { owner: 1, mirrored: 1, text: () => 'other' });
		const st = await openStream(a.url, sid, 0 + 1); // after the session's first event
		assert.equal(st.status, 200, st.body);
		await notify(a.url, sid, 'a2');
		await waitFor(() => st.events.length >= 1, 10000, 'the event');
		assert.deepEqual(st.events.map(dataOf), ['a2']);
		st.close();
		assert.doesNotMatch(a.log(), /stale|restored/);
	}, { nodes: [1] }));

test('workers racing to restore one session make one session', T,
	() => withCluster(async (redis, b) => {
		const sid = tagged(1);
		await writeSession(redis.client, sid, { mirrored: 3 });
		const rs = await Promise.all(Array.from({ length: 12 }, (_, i) => notify(b.url, sid, `r${i}`)));
		assert.deepEqual(rs.map((r) => r.status), Array(12).fill(200), JSON.stringify(rs.map((r) => r.body)));
		// The log comes through a pipe: wait for the line, then count.
		await waitFor(() => /restored from redis/.test(b.log()), 5000, 'the restore logged');
		assert.equal((b.log().match(/restored from redis/g) || []).length, 1, b.log());
		// Every notify landed in the one session: 12 events after the restored last id.
		const st = await openStream(b.url, sid, 3);
		await waitFor(() => st.events.filter((e) => e.id).length >= 12, 10000, 'the 12 events');
		const ids = st.events.filter((e) => e.id).map((e) => e.id);
		assert.deepEqual(ids, Array.from({ length: 12 }, (_, i) => 3 + MARGIN + 1 + i));
		st.close();
	}));

test('a restored session is mirrored onward by this node, and DELETE ends it in Redis', T,
	() => withCluster(async (redis, b) => {
		const mirrorBin = process.env.SHMB_MIRROR;
		const sid = tagged(1);
		await writeSession(redis.client, sid, { mirrored: 3 });
		const mirror = spawn(mirrorBin, ['--name', b.name, '--redis', `127.0.0.1:${redis.port}`],
			{ stdio: 'ignore', env: { ...process.env, SHMB_RUNTIME_DIR: b.dir } });
		try {
			// Restored here by a first request; node 2's mirror takes it over (its event
			// 3 + 64 + 1 reaches Redis), then a DELETE ends it.
			assert.equal((await notify(b.url, sid, 'x')).status, 200);
			await waitFor(async () => Number(await redis.client.cmd('HGET', `shmb:s:{${sid}}`,
				'mirrored_id')) === 3 + MARGIN + 1, 10000, "node 2's mirror");
			const del = await fetch(b.url, { method: 'DELETE', headers: { 'mcp-session-id': sid,
				'mcp-protocol-version': '2025-11-25' } });
			assert.equal(del.status, 204);
			// Node 2's mirror writes the end to Redis.
			await waitFor(async () => await redis.client.cmd('HGET', `shmb:s:{${sid}}`, 'state') ===
				'deleted', 10000, 'the record deleted');
			assert.equal(await redis.client.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
			assert.equal((await notify(b.url, sid, 'x')).status, 404);
		} finally {
			mirror.kill('SIGKILL');
		}
	}));

test('--redis without a value, or a bad one, is a usage error', T, async () => {
	for (const v of ['nohost', 'host:0', 'host:99999', ':6379']) {
		const r = spawnSync(process.env.SHMB_MCPD, ['--redis', v], { encoding: 'utf8' });
		assert.equal(r.status, 2, `${v}: ${r.stderr}`);
		assert.match(r.stderr, /--redis/);
	}
});

// Redis with a password (requirepass): shmb-mcpd authenticates with a password file or an
// environment variable (never a command-line password); wrong credentials are told in its log
// (WRONGPASS) and answered 503 like an unreachable Redis; unreadable ones are a usage error.
test('a Redis with a password: AUTH from a file or a variable, a refusal told and answered 503', T,
	() => withCluster(async (redis, ...none) => {
		assert.equal(none.length, 0);
		const r = redis.client;
		const sid = tagged(1), other = tagged(1);
		await writeSession(r, sid, { mirrored: 3 });
		await writeSession(r, other, { mirrored: 3 });
		await r.cmd('CONFIG', 'SET', 'requirepass', 's3cret'); // this connection stays in
		const dir = mkdtempSync(join(tmpdir(), 'shmb-auth-'));
		const pwFile = join(dir, 'redis.pw');
		writeFileSync(pwFile, 's3cret\n', { mode: 0o600 });
		process.env.SHMB_TEST_REDIS_PW = 'wrong';
		const good = await startNode(2, redis.port, ['--redis-password-file', pwFile]);
		const bad = await startNode(3, redis.port, ['--redis-password-env', 'SHMB_TEST_REDIS_PW']);
		try {
			const st = await openStream(good.url, sid, 1);
			assert.equal(st.status, 200, st.body + good.log());
			await waitFor(() => st.events.length >= 2, 10000, 'the replay');
			assert.deepEqual(st.events.slice(0, 2).map(dataOf), ['e2', 'e3']);
			st.close();
			assert.equal(await r.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
			const no = await openStream(bad.url, other, 1);
			assert.equal(no.status, 503, no.body);
			assert.ok(no.headers.get('retry-after'), 'Retry-After');
			await waitFor(() => /refuses our credentials.*WRONGPASS/.test(bad.log()), 10000,
				'the refusal in the log');
			assert.equal(await r.cmd('HGET', `shmb:s:{${other}}`, 'owner'), '1', 'nothing claimed');
		} catch (e) {
			e.message += `\n--- good ---\n${good.log().slice(-3000)}\n--- bad ---\n${bad.log().slice(-3000)}`;
			throw e;
		} finally {
			await good.stop();
			await bad.stop();
			delete process.env.SHMB_TEST_REDIS_PW;
			rmSync(dir, { recursive: true, force: true });
		}
		// Credentials that cannot be read, or contradictory options: exit 2 at start.
		for (const args of [['--redis-password-file', join(dir, 'missing')],
			['--redis-password-env', 'SHMB_TEST_UNSET_VARIABLE'],
			['--redis-password-file', pwFile, '--redis-password-env', 'X'],
			['--redis-user', 'u']]) {
			const x = spawnSync(process.env.SHMB_MCPD,
				['--redis', `127.0.0.1:${redis.port}`, ...args], { encoding: 'utf8' });
			assert.equal(x.status, 2, `${args}: ${x.stderr}`);
			assert.match(x.stderr, /redis/i);
		}
	}, { nodes: [] }));

// The worker pid of a response belongs to server srv (its master's child).
function servedBy(res, srv) {
	const pid = Number(res.headers.get('x-shmb-worker'));
	const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
	return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === srv.child.pid;
}

test('nginx (tools/cluster/nginx.conf) routes on the node tag and fails over to the backup', T,
	async (t) => {
		const nginx = spawnSync('nginx', ['-v'], { encoding: 'utf8' });
		if (nginx.error) {
			t.skip('nginx is not installed');
			return;
		}
		const redis = await startRedis();
		const a = await startNode(1, redis.port);
		const b = await startNode(2, redis.port);
		const prefix = mkdtempSync(join(tmpdir(), 'shmb-nginx-'));
		const listen = await freePort();
		const conf = join(prefix, 'nginx.conf');
		writeFileSync(conf, readFileSync(new URL('../../tools/cluster/nginx.conf', import.meta.url), 'utf8')
			.replaceAll('@PREFIX@', prefix).replaceAll('@LISTEN@', `127.0.0.1:${listen}`)
			.replaceAll('@NODE1@', `127.0.0.1:${a.port}`).replaceAll('@NODE2@', `127.0.0.1:${b.port}`));
		const check = spawnSync('nginx', ['-t', '-c', conf, '-p', prefix, '-e', join(prefix, 'error.log')],
			{ encoding: 'utf8' });
		assert.equal(check.status, 0, check.stderr);
		const ngx = spawn('nginx', ['-c', conf, '-p', prefix, '-e', join(prefix, 'error.log'),
			'-g', 'daemon off;'], { stdio: 'ignore' });
		const url = `http://127.0.0.1:${listen}/mcp`;
		try {
			await waitFor(async () => (await fetch(url).catch(() => null))?.status, 10000, 'nginx');
			// New sessions are balanced; each session's requests go to the node it names.
			const sids = [];
			for (let i = 0; i < 4; i++)
				sids.push(await initialize(url));
			for (const sid of sids) {
				const r = await notify(url, sid, 'x');
				assert.equal(r.status, 200);
				assert.ok(servedBy(r, sid.startsWith('0001') ? a : b), `${sid} on its node`);
			}
			assert.ok(sids.some((s) => s.startsWith('0001')) && sids.some((s) => s.startsWith('0002')),
				sids.join(' '));
			// Node 1 goes away: its sessions go to its backup, node 2, which restores them.
			const sid = tagged(1);
			await writeSession(redis.client, sid, { mirrored: 2 });
			await a.stop();
			const r = await notify(url, sid, 'on the backup');
			assert.equal(r.status, 200, JSON.stringify(r.body));
			assert.ok(servedBy(r, b));
			assert.equal(await redis.client.cmd('HGET', `shmb:s:{${sid}}`, 'owner'), '2');
		} finally {
			// SIGTERM: the master stops its worker first (a SIGKILL of the master alone left the
			// worker running, one orphan per run); SIGKILL only if it does not exit in 5 s.
			const gone = ngx.exitCode !== null || ngx.signalCode !== null ? Promise.resolve()
				: new Promise((resolve) => ngx.once('exit', resolve));
			ngx.kill('SIGTERM');
			if (await Promise.race([gone.then(() => true), sleep(5000, false, { ref: false })]) === false)
				ngx.kill('SIGKILL');
			await a.stop();
			await b.stop();
			await redis.stop();
			rmSync(prefix, { recursive: true, force: true });
		}
	});
