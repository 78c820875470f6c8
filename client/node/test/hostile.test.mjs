// hostile.test.mjs - the addon used as a careless or hostile program would: the native functions
// called directly with wrong objects, handles dropped without close() and collected in any
// order, a client closed with work in flight and followers waiting, two clients of one instance,
// a follower overrun, the same cursor followed twice. Nothing may crash the process; errors are
// TypeError or ShmbError.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Client, ShmbError } from '../lib/index.mjs';
import { startBroker } from './broker.mjs';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc');
const native = createRequire(import.meta.url)(process.env.SHMB_NODE_ADDON);

let broker;
before(async () => { broker = await startBroker(); });
after(async () => { await broker?.stop(); });

test('native functions called directly with wrong objects throw TypeError', async () => {
	const c = await Client.attach(broker.name);
	const sid = await c.create('t');
	const s = c.open(sid, 't');
	const cur = s.cursor();
	const bogus = [undefined, null, 1, 'x', {}, [], () => {}, Symbol('s'), 10n, c, s, cur];
	for (const f of ['clientClose', 'clientFollow', 'sessionClose', 'publish', 'stat',
		'subscribe', 'attrGet', 'attrSet', 'attrDelete', 'cursorNext', 'cursorClose',
		'cursorPosition', 'create', 'delete', 'open', 'cursorOpen']) {
		for (const b of bogus) {
			// A handle of the right kind is fine for its own functions; anything else throws.
			try {
				const r = native[f](b, b, b, b, b);
				if (r instanceof Promise)
					await r.catch(() => {});
			} catch (e) {
				assert.ok(e instanceof TypeError || e instanceof ShmbError, `${f}: ${e}`);
			}
		}
	}
	assert.throws(() => native.setup(1, 2), TypeError);
	assert.throws(() => s.publish('x'), { code: 'ECLOSED' }); // clientClose(c) ran above
	c.close();
	// Wrapping an object twice: refused, the first wrap intact.
	const d = await Client.attach(broker.name);
	const s2 = d.open(sid, 't');
	assert.throws(() => native.open(d, s2, sid, 't', null));
	assert.throws(() => native.cursorOpen(s2, s2, 0, null));
	assert.equal(typeof s2.publish('still fine'), 'number');
	d.close();
});

test('handles dropped without close are collected in any order; nothing crashes', async () => {
	for (let round = 0; round < 3; round++) {
		await (async () => {
			const c = await Client.attach(broker.name);
			const sid = await c.create('t');
			for (let i = 0; i < 200; i++) {
				const s = c.open(sid, 't');
				s.publish(`e${i}`);
				const cur = s.cursor();
				cur.next();
				if (i % 3 === 0)
					s.close(); // a closed session with a live (closed) cursor object
			}
		})();
		gc();
		await new Promise((r) => setImmediate(r));
		gc();
	}
	// The broker still serves; a fresh client works.
	const c = await Client.attach(broker.name);
	const sid = await c.create('t');
	assert.equal(c.open(sid, 't').publish('ok'), 1);
	c.close();
});

test('a client closed with a create in flight and followers waiting', async () => {
	const c = await Client.attach(broker.name);
	const sid = await c.create('t');
	const s = c.open(sid, 't');
	const ends = [0, 1, 2].map(() => (async () => {
		let n = 0;
		for await (const ev of s.cursor().follow())
			n += ev ? 1 : 0;
		return n;
	})());
	await new Promise((r) => setImmediate(r));
	const inflight = c.create('t');
	c.close();
	assert.match(await inflight, /^[0-9a-f]{32}$/); // completes, then the client detaches
	assert.deepEqual(await Promise.all(ends), [0, 0, 0]);
	assert.throws(() => s.cursor(), { code: 'ECLOSED' });
	await assert.rejects(c.delete(sid, 't'), { code: 'ECLOSED' });
});

test('two clients of one instance share the poll; closing one leaves the other working', async () => {
	const a = await Client.attach(broker.name);
	const b = await Client.attach(broker.name);
	const sid = await a.create('t');
	const sb = b.open(sid, 't');
	const got = [];
	const following = (async () => {
		for await (const ev of sb.cursor().follow()) {
			got.push(ev.data.toString());
			if (got.length === 3)
				break;
		}
	})();
	const sa = a.open(sid, 't');
	sa.publish('1');
	await new Promise((r) => setImmediate(r));
	a.close();
	const c = await Client.attach(broker.name);
	const sc = c.open(sid, 't');
	sc.publish('2');
	await new Promise((r) => setTimeout(r, 20));
	sc.publish('3');
	await following;
	assert.deepEqual(got, ['1', '2', '3']);
	b.close();
	c.close();
});

test('an overrun follower throws EOVERRUN with lagged, and follow() again continues', async () => {
	const c = await Client.attach(broker.name);
	const sid = await c.create('t');
	const s = c.open(sid, 't');
	const cur = s.cursor();
	for (let i = 0; i < 600; i++)
		s.publish(`x${i}`);
	await assert.rejects((async () => { for await (const ev of cur.follow()) void ev; })(),
		(e) => e instanceof ShmbError && e.code === 'EOVERRUN' && e.lagged > 0);
	const it = cur.follow()[Symbol.asyncIterator]();
	const first = (await it.next()).value;
	assert.ok(first.id > 300, String(first.id));
	cur.close();
	assert.equal((await it.next()).done, true);
	// One follower per cursor.
	const cur2 = s.cursor(s.stat().lastEventId);
	const it2 = cur2.follow()[Symbol.asyncIterator]();
	const p = it2.next();
	await new Promise((r) => setImmediate(r));
	await assert.rejects(cur2.follow().next(), { code: 'EBUSY' });
	s.publish('y');
	assert.equal((await p).value.data.toString(), 'y');
	c.close();
});

test('huge and odd payloads: ETOOBIG or TypeError, never a crash', async () => {
	const c = await Client.attach(broker.name);
	const s = c.open(await c.create('t'), 't');
	assert.throws(() => s.publish(Buffer.alloc(64 << 20)), { code: 'ETOOBIG' });
	assert.throws(() => s.publish('é'.repeat(40000)), { code: 'ETOOBIG' }); // 80000 UTF-8 bytes
	assert.throws(() => s.attrs.set('k', Buffer.alloc(1 << 20)), { code: 'EINVAL' });
	assert.throws(() => s.publish(new SharedArrayBuffer(8)), TypeError);
	const ab = new ArrayBuffer(8);
	structuredClone(ab, { transfer: [ab] }); // detached: no bytes
	assert.equal(typeof s.publish(ab), 'number');
	assert.throws(() => s.cursor(-1), TypeError);
	assert.throws(() => s.cursor(NaN), TypeError);
	assert.throws(() => s.cursor(2n ** 64n), TypeError);
	assert.throws(() => s.publish('x', { stream: 1.5 }), TypeError);
	assert.throws(() => c.open('a'.repeat(1000), 't'), TypeError);
	assert.throws(() => s.attrs.setIf('k', 'v', -1), TypeError);
	c.close();
});

// Seen crashing (SIGSEGV) before the addon waited for its poll's close callback at env teardown:
// a worker_thread's addon is unloaded right after (when no other thread of the process loaded
// it: hence a child process whose main thread does not), and libuv called into unmapped code.
test('worker_threads that end or are terminated while following', async () => {
	const { spawnSync } = await import('node:child_process');
	const lib = new URL('../lib/shmb.js', import.meta.url).pathname;
	const worker = `
		const { Client } = require(${JSON.stringify(lib)});
		const { parentPort, workerData } = require('node:worker_threads');
		(async () => {
			const c = await Client.attach(workerData.name);
			const s = c.open(await c.create('t'), 't');
			parentPort.postMessage('following');
			if (workerData.leave) {
				c.create('t'); // in flight when the thread ends
				return;
			}
			for await (const ev of s.cursor().follow())
				parentPort.postMessage(String(ev.data));
		})();`;
	const main = `
		const { Worker } = require('node:worker_threads');
		(async () => {
			for (let i = 0; i < 6; i++) {
				const w = new Worker(${JSON.stringify(worker)}, { eval: true,
					workerData: { name: ${JSON.stringify(broker.name)}, leave: i % 3 === 2 } });
				const exit = new Promise((r) => w.once('exit', r));
				await new Promise((r) => w.once('message', r));
				if (i % 3 !== 2)
					await w.terminate();
				await exit;
			}
			console.log('all ended');
		})();`;
	const r = spawnSync(process.execPath, ['-e', main], { encoding: 'utf8', timeout: 60000 });
	assert.equal(r.signal, null, `child killed by ${r.signal}: ${r.stderr}`);
	assert.equal(r.status, 0, r.stderr);
	assert.equal(r.stdout.trim(), 'all ended');
	const c = await Client.attach(broker.name); // the broker still serves
	assert.equal(c.open(await c.create('t'), 't').publish('ok'), 1);
	c.close();
});
