// redis.mjs - what the one-machine cluster (cluster.mjs) and the multi-host tests
// (tests/mcp/multihost.test.mjs) share: a private redis-server on a free loopback port (no
// persistence), a minimal RESP client (string arguments; replies as strings, numbers, null or
// arrays), free ports, and waiting for a condition with a deadline.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

// Polls cond() (sync or async) every `every` ms until it is truthy; throws what after ms.
export async function waitFor(cond, ms, what, every = 10) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await cond();
		if (v)
			return v;
		if (Date.now() > end)
			throw new Error(`timed out after ${ms} ms waiting for ${what}`);
		await delay(every);
	}
}

// A free loopback TCP port (bound, then released: the caller binds it next).
export function freePort() {
	return new Promise((resolve, reject) => {
		const srv = net.createServer();
		srv.on('error', reject);
		srv.listen(0, '127.0.0.1', () => {
			const { port } = srv.address();
			srv.close(() => resolve(port));
		});
	});
}

// Parses one RESP reply at buf[off..]: [value, next offset], or null when incomplete.
function parse(buf, off) {
	const eol = buf.indexOf('\r\n', off);
	if (eol < 0)
		return null;
	const type = String.fromCharCode(buf[off]);
	const line = buf.toString('utf8', off + 1, eol);
	const next = eol + 2;
	if (type === '+')
		return [line, next];
	if (type === '-')
		return [new Error(line), next];
	if (type === ':')
		return [Number(line), next];
	if (type === '$') {
		const n = Number(line);
		if (n < 0)
			return [null, next];
		if (buf.length < next + n + 2)
			return null;
		return [buf.toString('utf8', next, next + n), next + n + 2];
	}
	if (type === '*') {
		const n = Number(line);
		if (n < 0)
			return [null, next];
		const out = [];
		let o = next;
		for (let i = 0; i < n; i++) {
			const r = parse(buf, o);
			if (!r)
				return null;
			out.push(r[0]);
			o = r[1];
		}
		return [out, o];
	}
	throw new Error(`bad RESP reply type ${type}`);
}

// A connection: await r.cmd('HSET', key, f, v); rejects on an error reply.
export async function connectRedis(port) {
	const sock = net.connect({ port, host: '127.0.0.1' });
	await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
	let buf = Buffer.alloc(0);
	const waiting = [];
	sock.on('data', (d) => {
		buf = Buffer.concat([buf, d]);
		for (;;) {
			const r = waiting.length ? parse(buf, 0) : null;
			if (!r)
				break;
			buf = buf.subarray(r[1]);
			const w = waiting.shift();
			if (r[0] instanceof Error)
				w.reject(r[0]);
			else
				w.resolve(r[0]);
		}
	});
	sock.on('error', (e) => { while (waiting.length) waiting.shift().reject(e); });
	return {
		cmd(...args) {
			const parts = [`*${args.length}\r\n`];
			for (const a of args) {
				const b = Buffer.from(String(a));
				parts.push(`$${b.length}\r\n`, b, '\r\n');
			}
			return new Promise((resolve, reject) => {
				waiting.push({ resolve, reject });
				sock.write(Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p))));
			});
		},
		close() { sock.destroy(); },
	};
}

// Starts redis-server on a free port; resolves { port, stop(), client, child }. spawnOpts: e.g.
// { detached: true } for a process group of its own.
export async function startRedis(spawnOpts = {}) {
	for (let attempt = 0; ; attempt++) {
		const port = await freePort();
		const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
			'--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
			stdio: ['ignore', 'pipe', 'pipe'], ...spawnOpts,
		});
		let log = '';
		child.stdout.on('data', (d) => { log += d; });
		child.stderr.on('data', (d) => { log += d; });
		let exited = false;
		const exit = new Promise((resolve) => child.on('exit', () => { exited = true; resolve(); }));
		await waitFor(() => exited || /Ready to accept connections/.test(log), 10000, 'redis-server');
		if (exited) {
			if (attempt < 3)
				continue; // the port was taken meanwhile
			throw new Error(`redis-server did not start:\n${log}`);
		}
		const client = await connectRedis(port);
		return {
			port, client, child,
			async stop() {
				client.close();
				if (!exited) {
					child.kill('SIGKILL');
					await exit;
				}
			},
		};
	}
}
