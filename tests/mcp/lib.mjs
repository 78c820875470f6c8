// lib.mjs - what the MCP end-to-end tests share: starting shmb-mcpd (and through it a private
// shmbrokerd) on a free port, waiting for conditions with a deadline, and plain HTTP requests.
//
// Paths come from the environment ctest sets (tests/mcp/CMakeLists.txt): SHMB_MCPD, SHMB_BROKERD.
// Every server gets its own broker instance name and runtime directory, so tests run in
// parallel with each other and with the C suite.
import { spawn } from 'node:child_process';
import http from 'node:http';
import { Readable } from 'node:stream';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startRedis, waitFor } from '../../tools/cluster/redis.mjs';

const MCPD = process.env.SHMB_MCPD;
const BROKERD = process.env.SHMB_BROKERD;
if (!MCPD || !BROKERD)
	throw new Error('SHMB_MCPD and SHMB_BROKERD must name the built shmb-mcpd and shmbrokerd');

let serial = 0;

// waitFor(cond, ms, what): polls cond() (sync or async) every 10 ms until it is truthy; throws
// what after ms. One copy, shared with the one-machine cluster (tools/cluster/redis.mjs).
export { waitFor };

// Starts shmb-mcpd; resolves once it listens. args: extra flags. name: the broker instance (a
// new one by default); keep: the started broker keeps its segment when it stops (the next
// server of that name adopts it: a node coming back).
export async function startServer({ workers = 2, args = [], name, keep = false } = {}) {
	const dir = mkdtempSync(join(tmpdir(), 'shmb-mcpt-'));
	const portFile = join(dir, 'port');
	name ??= `mcpt${process.pid}n${serial++}`;
	const child = spawn(MCPD, ['--port', '0', '--port-file', portFile, '--workers',
		String(workers), '--name', name, '--broker', BROKERD,
		...(keep ? ['--keep-segment'] : ['--broker-arg', '--unlink-on-exit']),
		'--broker-arg', '--max-sessions', '--broker-arg', '256', ...args], {
		stdio: ['ignore', 'ignore', 'pipe'],
		env: { ...process.env, SHMB_RUNTIME_DIR: dir },
	});
	let log = '';
	child.stderr.on('data', (d) => { log += d; });
	let exited = null;
	const exit = new Promise((resolve) => child.on('exit', (code, sig) => {
		exited = { code, sig };
		resolve(exited);
	}));
	await waitFor(() => exited || existsSync(portFile), 20000, 'the port file');
	if (exited)
		throw new Error(`shmb-mcpd exited (${JSON.stringify(exited)}) before listening:\n${log}`);
	const port = Number(readFileSync(portFile, 'utf8').trim());
	const url = `http://127.0.0.1:${port}/mcp`;
	return {
		url, port, name, child, dir,
		log: () => log,
		async stop() {
			if (!exited) {
				child.kill('SIGTERM');
				const t = setTimeout(() => child.kill('SIGKILL'), 10000);
				await exit;
				clearTimeout(t);
			}
			rmSync(dir, { recursive: true, force: true });
			// Under ASan/UBSan a worker that hit an error dies and is restarted: its
			// report in the log is the only trace, so it fails the test.
			const m = log.match(/^.*(AddressSanitizer|LeakSanitizer|runtime error:).*$/m);
			if (m)
				throw new Error(`sanitizer report from shmb-mcpd: ${m[0]}\n${log}`);
			return exited;
		},
	};
}

// Runs fn(srv) on a new server (startServer's opts), its log appended to any failure, and stops
// it whatever happened.
export async function withServer(opts, fn) {
	const srv = await startServer(opts);
	try {
		await fn(srv);
	} catch (e) {
		e.message += `\n--- shmb-mcpd stderr ---\n${srv.log()}`;
		throw e;
	} finally {
		await srv.stop();
	}
}

// Multi-host (issue 16). A session id of node `node`: its tag, then 112 random bits.
export function tagged(node) {
	return node.toString(16).padStart(4, '0') + randomBytes(14).toString('hex');
}

// A node: shmb-mcpd with its own broker of node id `node`, failing over from Redis at redisPort;
// opts: startServer's (workers, name, keep).
export function startNode(node, redisPort, extra = [], opts = {}) {
	return startServer({ workers: 2, ...opts, args: ['--broker-arg', '--node-id', '--broker-arg',
		String(node), '--redis', `127.0.0.1:${redisPort}`, '--retry-ms', '100', ...extra] });
}

// Runs fn(redis, ...nodes) on a private redis-server and one startNode per id in nodes (each
// with extra flags and workers), the nodes' logs appended to any failure; stops them all.
export async function withCluster(fn, { nodes = [2], extra = [], workers = 2 } = {}) {
	const redis = await startRedis();
	const srv = [];
	try {
		for (const n of nodes)
			srv.push(await startNode(n, redis.port, extra, { workers }));
		await fn(redis, ...srv);
	} catch (e) {
		for (const s of srv)
			e.message += `\n--- shmb-mcpd ${s.name} stderr (last 6 kB) ---\n${s.log().slice(-6144)}`;
		throw e;
	} finally {
		for (const s of srv)
			await s.stop();
		await redis.stop();
	}
}

// A fetch that records the X-Shmb-Worker of every response: (method, status, pid).
export function recordingFetch(seen) {
	return async (url, init) => {
		const res = await fetch(url, init);
		seen.push({ method: init?.method ?? 'GET', status: res.status,
			pid: Number(res.headers.get('x-shmb-worker')),
			type: res.headers.get('content-type') ?? '' });
		return res;
	};
}

// A fetch that opens a new TCP connection for every request (node:http without a keep-alive
// agent) and records like recordingFetch: a session's requests then spread over the workers as
// separate clients' requests do, instead of riding one pooled connection to one worker.
export function freshConnectionFetch(seen) {
	return (url, init = {}) => new Promise((resolve, reject) => {
		const headers = Object.fromEntries(new Headers(init.headers).entries());
		const req = http.request(url, { method: init.method ?? 'GET', headers, agent: false },
			(res) => {
				const h = new Headers();
				for (const [k, v] of Object.entries(res.headers))
					h.set(k, Array.isArray(v) ? v.join(', ') : v);
				const empty = res.statusCode === 202 || res.statusCode === 204;
				seen.push({ method: init.method ?? 'GET', status: res.statusCode,
					pid: Number(h.get('x-shmb-worker')), type: h.get('content-type') ?? '' });
				resolve(new Response(empty ? null : Readable.toWeb(res),
					{ status: res.statusCode, headers: h }));
			});
		req.on('error', reject);
		init.signal?.addEventListener('abort', () => req.destroy(new Error('aborted')));
		if (init.body)
			req.write(init.body);
		req.end();
	});
}

// 1 while pid runs (signal 0).
export function alive(pid) {
	try {
		process.kill(pid, 0);
		return true;
	} catch {
		return false;
	}
}
