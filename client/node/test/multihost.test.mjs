// multihost.test.mjs - the multi-host wrappers (docs/multi-host.md) against real brokers:
// client.nodeId of a broker started with --node-id (0 without one), sidNode() on its session ids
// and on bad input, and client.restore(image): an image with events on two streams, a gap (given,
// and ids it has no event for), attributes (object and Map) and a principal is opened and read
// back equal, the next publish continues after lastEventId, a second restore of the same id
// rejects ECONFLICT, bad images reject with TypeError or the library's code and change nothing,
// the image is copied before the promise returns, and a stalled broker never blocks the loop.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { Client, ShmbError, sidNode } from '../lib/index.mjs';
import { startBroker, assertLoopRunsWhileStalled } from './broker.mjs';

let broker, plain;
process.env.SHMB_CTL_TIMEOUT_MS = '300'; // read by libshmb at attach
before(async () => {
	plain = await startBroker([]);
	plain.dir0 = process.env.SHMB_RUNTIME_DIR;
	// The last started broker's runtime dir stays in SHMB_RUNTIME_DIR (libshmb reads it at
	// attach): the tagged one, which every test but one uses.
	broker = await startBroker(['--node-id', '7', '--ring-events', '64',
		'--max-event-bytes', '4096']);
});
after(async () => {
	await broker?.stop();
	await plain?.stop();
});

const SID = '0007' + 'ab'.repeat(14);
let serial = 0;
const freshSid = () => '0007' + (++serial).toString(16).padStart(28, '0');

function image(over = {}) {
	const now = Date.now();
	return {
		sid: SID, tenant: 't1', principal: 'alice',
		createdAtMs: now - 5000, lastAccessedAtMs: now - 1000,
		inactivityTtlMs: 3600000, absoluteTtlMs: 0, lastEventId: 6,
		events: [
			{ id: 1, stream: 0, kind: 1, tsMs: now - 4000, data: Buffer.from('one') },
			{ id: 2, stream: 5, kind: 9, tsMs: now - 3000, data: new Uint8Array([0, 116, 255]) },
			{ id: 3, stream: 0, kind: 1, tsMs: now - 2500, data: null, gap: true },
			{ id: 5, stream: 5, kind: 2, tsMs: now - 2000, data: 'five' },
		],
		attrs: { user: 'alice', cart: Buffer.from([1, 2]) },
		...over,
	};
}

test('nodeId and sidNode', async () => {
	const c = await Client.attach(broker.name);
	assert.equal(c.nodeId, 7);
	const sids = [];
	for (let i = 0; i < 8; i++)
		sids.push(await c.create('t'));
	assert.ok(sids.every((s) => s.startsWith('0007')), sids.join());
	assert.deepEqual(new Set(sids.map(sidNode)), new Set([7]));
	assert.equal(sidNode(sids[0].toUpperCase()), 7);
	assert.equal(sidNode('ffff' + '0'.repeat(28)), 65535);
	for (const bad of ['', 'xyz', '0007', '0007' + 'g'.repeat(28), '0'.repeat(33)])
		assert.throws(() => sidNode(bad), (e) => e instanceof ShmbError && e.code === 'EINVAL',
			bad);
	for (const bad of [undefined, null, 7, Buffer.from('0007'), {}])
		assert.throws(() => sidNode(bad), TypeError);
	assert.throws(() => sidNode('0007\0' + '0'.repeat(27)), TypeError);
	// CommonJS exports it too.
	assert.equal(createRequire(import.meta.url)('../lib/shmb.js').sidNode(sids[1]), 7);
	c.close();
	assert.throws(() => c.nodeId, { code: 'ECLOSED' });
});

test('nodeId of a broker without --node-id is 0', async () => {
	const dir = process.env.SHMB_RUNTIME_DIR;
	process.env.SHMB_RUNTIME_DIR = plain.dir;
	try {
		const c = await Client.attach(plain.name);
		assert.equal(c.nodeId, 0);
		c.close();
	} finally {
		process.env.SHMB_RUNTIME_DIR = dir;
	}
});

test('restore, then open and read back equal; the next publish continues', async () => {
	const c = await Client.attach(broker.name);
	const img = image();
	const p = c.restore(img);
	assert.ok(p instanceof Promise);
	// The image was copied: changing it now changes nothing of what is restored.
	img.events[0].data.fill(0x78);
	img.events.length = 0;
	assert.equal(await p, 0);
	const want = image();
	assert.throws(() => c.open(SID, 't1', 'bob'), { code: 'EPERM' });
	const s = c.open(SID, 't1', 'alice');
	const st = s.stat();
	assert.equal(st.sid, SID);
	assert.equal(st.tenant, 't1');
	assert.equal(st.principal, 'alice');
	assert.equal(st.inactivityTtlMs, 3600000);
	assert.equal(st.lastEventId, 6);
	const got = [...s.cursor(0)];
	const real = got.filter((e) => !e.gap);
	assert.deepEqual(real.map((e) => [e.id, e.stream, e.kind, e.data.toString('latin1')]),
		[[1, 0, 1, 'one'], [2, 5, 9, '\x00t\xff'], [5, 5, 2, 'five']]);
	assert.deepEqual(real.map((e) => e.tsMs - st.createdAtMs), [1000, 2000, 3000]);
	assert.ok(got.filter((e) => e.gap).every((e) => [3, 4, 6].includes(e.id)));
	assert.deepEqual([...s.cursor(0, { stream: 5 })].filter((e) => !e.gap).map((e) => e.id),
		[2, 5]);
	assert.equal(s.attrs.getString('user'), 'alice');
	assert.deepEqual(s.attrs.entry('cart'), { value: Buffer.from([1, 2]), version: 1 });
	assert.equal(s.publish('next', { stream: 5 }), 7);
	assert.equal(want.events.length, 4);

	// Events read from a cursor (gaps included) restore as they are.
	const read = [...s.cursor(0)];
	const sid3 = freshSid();
	assert.equal(await c.restore(image({ sid: sid3, events: read, lastEventId: 7 })), 0);
	assert.deepEqual([...c.open(sid3, 't1', 'alice').cursor(0)], read);

	// A Map of attributes, no principal, no events.
	const sid2 = freshSid();
	assert.equal(await c.restore(image({ sid: sid2, principal: null, events: undefined,
		lastEventId: 10, attrs: new Map([['k', 'v']]) })), 0);
	const s2 = c.open(sid2, 't1');
	assert.equal(s2.attrs.getString('k'), 'v');
	assert.equal(s2.publish('x'), 11);

	// A second restore of the same id: ECONFLICT (open it then); the session is unchanged.
	await assert.rejects(c.restore(image({ events: [], lastEventId: 1 })),
		(e) => e instanceof ShmbError && e.code === 'ECONFLICT');
	assert.equal(c.open(SID, 't1', 'alice').stat().lastEventId, 7);
	c.close();
	await assert.rejects(c.restore(image({ sid: freshSid() })), { code: 'ECLOSED' });
});

test('events older than the ring are left out', async () => {
	const c = await Client.attach(broker.name);
	const sid = freshSid();
	const events = [];
	for (let i = 1; i <= 100; i++)
		events.push({ id: i, stream: 0, kind: 1, tsMs: Date.now(), data: `x${i}` });
	assert.equal(await c.restore(image({ sid, events, lastEventId: 100, attrs: null })), 36);
	const s = c.open(sid, 't1', 'alice');
	assert.throws(() => s.cursor(0).next(), { code: 'EOVERRUN' });
	assert.deepEqual([...s.cursor(36)].slice(0, 2).map((e) => e.data.toString()), ['x37', 'x38']);
	c.close();
});

const ev = (o) => ({ id: 1, stream: 0, kind: 1, tsMs: 0, data: 'x', ...o });
const BAD = [
	[{ sid: 7 }, TypeError],
	[{ sid: '0007' }, 'EINVAL'],
	[{ tenant: null }, TypeError],
	[{ tenant: '' }, 'EINVAL'],
	[{ principal: 5 }, TypeError],
	[{ createdAtMs: '1' }, TypeError],
	[{ createdAtMs: 0 }, TypeError],
	[{ createdAtMs: undefined }, TypeError],
	[{ lastAccessedAtMs: -1 }, TypeError],
	[{ inactivityTtlMs: 1.5 }, TypeError],
	[{ absoluteTtlMs: 2 ** 53 }, TypeError],
	[{ lastEventId: 2 ** 53 }, TypeError],
	[{ lastEventId: NaN }, TypeError],
	[{ lastEventId: 4 }, 'EINVAL'], // an event id above it
	[{ events: 'abc' }, TypeError],
	[{ events: [5] }, TypeError],
	[{ events: [ev({ id: 0 })] }, TypeError],
	[{ events: [ev({ id: 2 ** 53 })] }, TypeError],
	[{ events: [ev({ id: 1.5 })] }, TypeError],
	[{ events: [ev({ stream: -1 })] }, TypeError],
	[{ events: [ev({ stream: 2 ** 32 })] }, TypeError],
	[{ events: [ev({ kind: 65536 })] }, TypeError],
	[{ events: [ev({ tsMs: -1 })] }, TypeError],
	[{ events: [ev({ data: 42 })] }, TypeError],
	[{ events: [ev({ data: null })] }, TypeError],
	[{ events: [ev({ gap: 'yes' })] }, TypeError],
	[{ events: [ev({ id: 2 }), ev({ id: 1 })] }, 'EINVAL'],
	[{ events: [ev({ data: Buffer.alloc(4097) })] }, 'ETOOBIG'],
	[{ events: [{ get id() { throw new RangeError('getter'); } }] }, RangeError],
	[{ attrs: 'k=v' }, TypeError],
	[{ attrs: [['k', 'v']] }, TypeError],
	[{ attrs: { k: 5 } }, TypeError],
	[{ attrs: new Map([[1, 'v']]) }, TypeError],
	[{ attrs: { ['k'.repeat(65)]: 'v' } }, 'EINVAL'],
	[{ attrs: { k: Buffer.alloc(1977) } }, 'ETOOBIG'],
];

test('bad images reject cleanly and change nothing', async () => {
	const c = await Client.attach(broker.name);
	const sid = freshSid();
	for (const [i, [over, want]] of BAD.entries()) {
		const what = `BAD[${i}]: ${Object.keys(over)}`;
		await assert.rejects(c.restore(image({ sid, ...over })),
			typeof want === 'string' ? (e) => e instanceof ShmbError && e.code === want : want,
			what);
		assert.throws(() => c.open(sid, 't1', 'alice'), { code: 'ENOENT' }, what);
	}
	for (const bad of [undefined, null, 'img', 5])
		await assert.rejects(c.restore(bad), TypeError);
	assert.equal(await c.restore(image({ sid })), 0); // the id is still free
	c.close();
});

// restore waits on the broker on the thread pool: with the broker stopped (SIGSTOP) it takes
// the control timeout (SHMB_CTL_TIMEOUT_MS, 300 ms here) and rejects EBROKER while the event
// loop keeps running.
test('a stalled broker never blocks the event loop', async () => {
	const c = await Client.attach(broker.name);
	const sid = freshSid();
	await assertLoopRunsWhileStalled(broker, () => c.restore(image({ sid })));
	// The broker, running again, finishes or undoes it: a count, or ECONFLICT (then open).
	try {
		assert.equal(await c.restore(image({ sid })), 0);
	} catch (e) {
		assert.equal(e.code, 'ECONFLICT');
	}
	assert.equal(c.open(sid, 't1', 'alice').stat().lastEventId, 6);
	c.close();
});
