// api.test.mjs - the binding's API against a real shmbrokerd: attach, create/open/delete,
// publish and cursors (all streams, one stream, sync iteration), follow() woken through the
// client's poll (also by another process's publish), attributes, errors as ShmbError with the
// library's code, TypeError for wrong types, ECLOSED for closed handles.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Client, ShmbError } from '../lib/index.mjs';
import { startBroker, assertLoopRunsWhileStalled } from './broker.mjs';

let broker;
process.env.SHMB_CTL_TIMEOUT_MS = '300'; // read by libshmb at attach
before(async () => { broker = await startBroker(['--max-event-bytes', '65536']); });
after(async () => { await broker?.stop(); });

async function withSession(fn) {
	const c = await Client.attach(broker.name);
	try {
		const sid = await c.create('t1', 'alice');
		const s = c.open(sid, 't1', 'alice');
		await fn(c, s, sid);
	} finally {
		c.close();
	}
}

test('attach to no broker rejects with ShmbError EBROKER', async () => {
	await assert.rejects(Client.attach('no-such-broker-here'),
		(e) => e instanceof ShmbError && e.code === 'EBROKER' && /broker/.test(e.message));
});

test('create, open, publish, cursor, stat, delete', () => withSession(async (c, s, sid) => {
	assert.match(sid, /^[0-9a-f]{32}$/);
	assert.equal(s.id, sid);
	const a = s.publish('hello');
	const b = s.publish(Buffer.from([0, 1, 2, 255]), { stream: 7, kind: 3 });
	assert.equal(typeof a, 'number');
	assert.ok(b > a);
	const cur = s.cursor();
	const e1 = cur.next();
	assert.equal(e1.id, a);
	assert.equal(e1.data.toString(), 'hello');
	assert.equal(e1.stream, 0);
	const e2 = cur.next();
	assert.deepEqual([...e2.data], [0, 1, 2, 255]);
	assert.equal(e2.stream, 7);
	assert.equal(e2.kind, 3);
	assert.equal(e2.gap, false);
	assert.equal(cur.next(), null);
	assert.equal(cur.position, b);
	// One stream only, from a position.
	s.publish('x', { stream: 7 });
	const only7 = [...s.cursor(0, { stream: 7 })].map((e) => e.data.toString());
	assert.deepEqual(only7, ['\u0000\u0001\u0002\ufffd', 'x']);
	assert.deepEqual([...s.cursor(a)].length, 2);
	const st = s.stat();
	assert.equal(st.sid, sid);
	assert.equal(st.tenant, 't1');
	assert.equal(st.principal, 'alice');
	assert.equal(st.lastEventId, b + 1);
	// Wrong tenant or principal: EPERM; unknown: ENOENT.
	assert.throws(() => c.open(sid, 't2', 'alice'), { name: 'ShmbError', code: 'EPERM' });
	assert.throws(() => c.open(sid, 't1', null), { code: 'EPERM' });
	assert.throws(() => c.open('0'.repeat(32), 't1'), { code: 'ENOENT' });
	assert.throws(() => c.open('nothex', 't1'), { code: 'EINVAL' });
	await assert.rejects(c.delete(sid, 't1', 'bob'), { code: 'EPERM' });
	await c.delete(sid, 't1', 'alice');
	assert.throws(() => s.publish('late'), { code: 'ENOENT' });
	assert.throws(() => cur.next(), { code: 'ENOENT' });
	assert.throws(() => c.open(sid, 't1', 'alice'), { code: 'ENOENT' });
	await assert.rejects(c.delete(sid, 't1', 'alice'), { code: 'ENOENT' });
}));

test('per-session TTLs', async () => {
	const c = await Client.attach(broker.name);
	const sid = await c.create('t1', null, { inactivityTtlMs: 5000, absoluteTtlMs: 60000 });
	const st = c.open(sid, 't1').stat();
	assert.equal(st.inactivityTtlMs, 5000);
	assert.equal(st.absoluteTtlMs, 60000);
	await assert.rejects(c.create('t1', null, { inactivityTtlMs: -1 }), TypeError);
	c.close();
});

test('attributes: get, set, setIf, delete, versions', () => withSession(async (c, s) => {
	assert.equal(s.attrs.get('k'), null);
	assert.equal(s.attrs.setIf('k', 'v1', 0), true);
	const e = s.attrs.entry('k');
	assert.equal(e.value.toString(), 'v1');
	assert.equal(s.attrs.setIf('k', 'v2', 0), false);
	assert.equal(s.attrs.setIf('k', 'v2', e.version), true);
	assert.equal(s.attrs.getString('k'), 'v2');
	s.attrs.set('bin', Buffer.from([1, 2, 3]));
	assert.deepEqual([...s.attrs.get('bin')], [1, 2, 3]);
	assert.equal(s.attrs.delete('k'), true);
	assert.equal(s.attrs.delete('k'), false);
	assert.equal(s.attrs.get('k'), null);
	assert.throws(() => s.attrs.set('k', 'x'.repeat(5000)), { code: 'EINVAL' });
	assert.throws(() => s.attrs.set('bad key', 'v'), { code: 'EINVAL' });
	assert.throws(() => s.attrs.set('k'.repeat(100), 'v'), TypeError);
	// Another handle of the session sees the values (the attributes are in the segment).
	const s2 = c.open(s.id, 't1', 'alice');
	assert.deepEqual([...s2.attrs.get('bin')], [1, 2, 3]);
	await c.delete(s.id, 't1', 'alice');
	assert.throws(() => s.attrs.get('bin'), { code: 'ENOENT' });
}));

test('follow() gets every event, woken by the poll; ends on delete', () => withSession(async (c, s, sid) => {
	const cur = s.cursor();
	const got = [];
	const done = (async () => {
		for await (const ev of cur.follow())
			got.push(ev.data.toString());
	})();
	for (let i = 0; i < 50; i++) {
		s.publish(`m${i}`);
		if (i % 10 === 0)
			await new Promise((r) => setImmediate(r));
	}
	const w = c.open(sid, 't1', 'alice');
	while (got.length < 50)
		await new Promise((r) => setImmediate(r));
	assert.deepEqual(got, Array.from({ length: 50 }, (_, i) => `m${i}`));
	await c.delete(sid, 't1', 'alice');
	await done; // the deletion ends the follower
	assert.throws(() => w.publish('x'), { code: 'ENOENT' });
}));

test('follow() is woken by a publish in another process', () => withSession(async (c, s, sid) => {
	const cur = s.cursor(0, { stream: 2 });
	const it = cur.follow()[Symbol.asyncIterator]();
	const first = it.next();
	const child = fork(fileURLToPath(new URL('./publisher.mjs', import.meta.url)),
		[broker.name, sid, '5'], { env: process.env });
	const exit = new Promise((r) => child.on('exit', r));
	const seen = [];
	seen.push((await first).value.data.toString());
	while (seen.length < 5)
		seen.push((await it.next()).value.data.toString());
	assert.deepEqual(seen, ['p0', 'p1', 'p2', 'p3', 'p4']);
	assert.equal(await exit, 0);
	cur.close(); // ends the follower
	assert.equal((await it.next()).done, true);
}));

test('wrong types throw TypeError, closed handles ECLOSED, nothing crashes', async () => {
	await assert.rejects(Client.attach(42), TypeError);
	const c = await Client.attach(broker.name);
	await assert.rejects(c.create(1), TypeError);
	await assert.rejects(c.create('t', 5), TypeError);
	await assert.rejects(c.create('t\u0000x'), TypeError);
	const sid = await c.create('t');
	const s = c.open(sid, 't');
	assert.throws(() => c.open(sid), TypeError);
	assert.throws(() => s.publish(123), TypeError);
	assert.throws(() => s.publish({}), TypeError);
	assert.throws(() => s.publish('x', { stream: -1 }), TypeError);
	assert.throws(() => s.publish('x', { stream: 2 ** 32 }), TypeError);
	assert.throws(() => s.publish('x', { kind: 1.5 }), TypeError);
	assert.throws(() => s.publish('x', 'opts'), TypeError);
	assert.throws(() => s.cursor('0'), TypeError);
	assert.throws(() => s.cursor(2 ** 53), TypeError);
	assert.throws(() => s.cursor(1e6), { code: 'EINVAL' }); // past the last id
	assert.throws(() => s.publish(Buffer.alloc(70000)), { code: 'ETOOBIG' });
	assert.throws(() => s.publish('x'.repeat(1 << 24)), { code: 'ETOOBIG' });
	const cur = s.cursor();
	s.publish(new Uint16Array([1, 2]));
	assert.equal(cur.next().data.length, 4);
	s.close();
	s.close();
	assert.throws(() => s.publish('x'), { name: 'ShmbError', code: 'ECLOSED' });
	assert.throws(() => cur.next(), { code: 'ECLOSED' });
	assert.throws(() => s.attrs.get('k'), { code: 'ECLOSED' });
	const s2 = c.open(sid, 't');
	const cur2 = s2.cursor();
	const following = (async () => { for await (const ev of cur2.follow()) void ev; })();
	c.close(); // a client closed while a cursor follows: the follower ends
	await following;
	assert.throws(() => s2.publish('x'), { code: 'ECLOSED' });
	assert.throws(() => c.open(sid, 't'), { code: 'ECLOSED' });
	await assert.rejects(c.create('t'), { code: 'ECLOSED' });
	c.close();
});

// create and delete wait on the broker on the thread pool: with the broker stopped (SIGSTOP) a
// create takes the control timeout (SHMB_CTL_TIMEOUT_MS, 300 ms here) and rejects EBROKER while
// the event loop keeps running; lookups and publishes never wait for the broker.
test('a stalled broker never blocks the event loop', async () => {
	const c = await Client.attach(broker.name);
	const sid = await c.create('t');
	const s = c.open(sid, 't');
	await assertLoopRunsWhileStalled(broker, () => c.create('t'), () => {
		assert.equal(typeof s.publish('while stalled'), 'number');
		assert.equal(c.open(sid, 't').id, sid);
	});
	await c.delete(sid, 't');
	c.close();
});
