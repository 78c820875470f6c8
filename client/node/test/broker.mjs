// broker.mjs - what the Node binding's tests share: a private shmbrokerd (its own instance name
// and runtime directory, stopped and its segment unlinked at the end), waiting with a deadline,
// and the stalled-broker check of the calls that wait on it. ctest sets SHMB_BROKERD and
// SHMB_NODE_ADDON (client/node/CMakeLists.txt).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

export const BROKERD = process.env.SHMB_BROKERD;
if (!BROKERD)
	throw new Error('SHMB_BROKERD must name the built shmbrokerd');

let serial = 0;

// Polls cond() every 10 ms until it is truthy; throws what after ms.
export async function waitFor(cond, ms, what) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await cond();
		if (v)
			return v;
		if (Date.now() > end)
			throw new Error(`timed out after ${ms} ms waiting for ${what}`);
		await delay(10);
	}
}

// Spawns a server whose stderr is kept; resolves once ready() is true (polled), or throws with
// its log if it exits first. Returns { child, log(), exited(), exit (a promise) }.
export async function spawnServer(cmd, args, env, ready, what) {
	const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
	let log = '';
	child.stderr.on('data', (d) => { log += d; });
	let exited = null;
	const exit = new Promise((resolve) => child.on('exit', (code, sig) => {
		exited = { code, sig };
		resolve(exited);
	}));
	await waitFor(() => exited || ready(), 30000, what);
	if (exited)
		throw new Error(`${what}: ${cmd} exited ${JSON.stringify(exited)}:\n${log}`);
	return { child, exit, log: () => log, exited: () => exited };
}

// Starts shmbrokerd in the foreground under a fresh name and runtime dir; this process's
// SHMB_RUNTIME_DIR points there (libshmb reads it at attach). Resolves once it serves.
export async function startBroker(args = []) {
	const dir = mkdtempSync(join(tmpdir(), 'shmb-nodet-'));
	const name = `nodet${process.pid}n${serial++}`;
	process.env.SHMB_RUNTIME_DIR = dir;
	const srv = await spawnServer(BROKERD, ['--name', name, '--foreground', '--unlink-on-exit',
		...args], { ...process.env, SHMB_RUNTIME_DIR: dir },
	() => existsSync(join(dir, `${name}.sock`)), 'the broker');
	return {
		name, dir, child: srv.child, log: srv.log,
		async stop() {
			if (!srv.exited()) {
				srv.child.kill('SIGTERM');
				await srv.exit;
			}
			rmSync(dir, { recursive: true, force: true });
			if (existsSync(`/dev/shm/shmb.${name}`))
				throw new Error(`segment /dev/shm/shmb.${name} left behind`);
			return srv.exited();
		},
	};
}

// With the broker stopped (SIGSTOP): start() (a call that waits on the broker, on the thread
// pool) must return its promise at once, and that promise reject EBROKER after the control
// timeout (SHMB_CTL_TIMEOUT_MS, at least 250 ms) while the event loop keeps running (a 10 ms
// timer keeps firing); during() runs meanwhile. The broker is continued afterwards.
export async function assertLoopRunsWhileStalled(broker, start, during = () => {}) {
	broker.child.kill('SIGSTOP');
	let ticks = 0;
	const iv = setInterval(() => { ticks++; }, 10);
	try {
		const t0 = Date.now();
		const p = start();
		assert.ok(Date.now() - t0 < 50, 'the call returned at once');
		during();
		await assert.rejects(p, { code: 'EBROKER' });
		assert.ok(Date.now() - t0 >= 250, `rejected after ${Date.now() - t0} ms`);
		assert.ok(ticks >= 10, `the loop ran ${ticks} timer ticks meanwhile`);
	} finally {
		clearInterval(iv);
		broker.child.kill('SIGCONT');
	}
}
