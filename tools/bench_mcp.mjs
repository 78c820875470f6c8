// bench_mcp.mjs - HTTP benchmark of shmb-mcpd beside the MCP TypeScript SDK's own server, in one
// run: session cycles per second, server CPU per cycle, and notification latency to a GET stream
// held by another worker. docs/mcp-server.md ("Benchmark") explains the figures.
//
//   node tools/bench_mcp.mjs [--workers N] [--rounds R] [--seconds S] [--concurrency C]
//                            [--samples K] [--mcpd PATH] [--brokerd PATH] [--json FILE]
//
// Defaults: 2 workers, 5 rounds of 3 s per server, 8 concurrent clients, 200 latency samples per
// round; shmb-mcpd and shmbrokerd from build/ (or $SHMB_MCPD, $SHMB_BROKERD). Needs `npm ci` in
// tests/ (the SDK 1.32.2 there is the client and the comparison server).
//
// Servers: shmb-mcpd with N workers and a private broker, and this file run with --sdk-server:
// the SDK's McpServer (stateful Streamable HTTP, one transport per session, node:http) with the
// same tools the benchmark uses (echo, notify). Each runs in its own processes, so their CPU is
// measured apart from the client's.
//
// Per round, for each server in turn (same round, same machine state):
// - cycles: C loops of the SDK client doing connect (initialize + notifications/initialized),
//   tools/call echo, DELETE (terminateSession), close, for S seconds: cycles/s;
// - CPU per cycle: utime + stime of every server process (shmb-mcpd's master, workers and
//   broker; the SDK server's process), from /proc/PID/stat before and after, over the cycles;
// - notification latency: one session holds a GET stream (raw node:http, its worker recorded
//   from X-Shmb-Worker); notify calls go out, each on a new connection (so on any worker);
//   latency = arrival on the GET stream - send time (connect included, for both servers). For
//   shmb-mcpd only samples whose POST was served by another worker than the GET's count (the
//   cross-worker path: publish on one process, wakeup and write on another), until K of them.
// The report is the median over the rounds of each figure. "(client)" is the benchmark's own CPU
// per cycle (the SDK client): on a small machine it, not the server, bounds cycles/s.
import { spawn } from 'node:child_process';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const req = createRequire(join(root, 'tests', 'package.json'));
const sdk = (p) => import(req.resolve(`@modelcontextprotocol/sdk/${p}`));

function opt(name, def) {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? process.argv[i + 1] : def;
}

// ---- the SDK server (--sdk-server PORTFILE) ----
async function sdkServer(portFile) {
	const { McpServer } = await sdk('server/mcp.js');
	const { StreamableHTTPServerTransport } = await sdk('server/streamableHttp.js');
	const { isInitializeRequest } = await sdk('types.js');
	const { z } = await import(req.resolve('zod'));
	const transports = new Map();
	function makeServer() {
		const s = new McpServer({ name: 'sdk-bench', version: '1.0.0' },
			{ capabilities: { logging: {} } });
		s.registerTool('echo', { description: 'echo', inputSchema: { text: z.string() } },
			async ({ text }) => ({ content: [{ type: 'text', text }] }));
		s.registerTool('notify', { description: 'notify', inputSchema: { text: z.string() } },
			async ({ text }) => {
				// no relatedRequestId: the standalone GET stream
				await s.server.notification({ method: 'notifications/message',
					params: { level: 'info', data: text } });
				return { content: [{ type: 'text', text: 'notified' }] };
			});
		return s;
	}
	const srv = http.createServer(async (rq, rs) => {
		let body;
		if (rq.method === 'POST') {
			const chunks = [];
			for await (const c of rq)
				chunks.push(c);
			try {
				body = JSON.parse(Buffer.concat(chunks).toString());
			} catch {
				rs.writeHead(400).end();
				return;
			}
		}
		const sid = rq.headers['mcp-session-id'];
		let t = sid && transports.get(sid);
		if (!t) {
			if (sid || !isInitializeRequest(body)) {
				rs.writeHead(sid ? 404 : 400).end();
				return;
			}
			t = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(),
				onsessioninitialized: (id) => transports.set(id, t) });
			t.onclose = () => t.sessionId && transports.delete(t.sessionId);
			await makeServer().connect(t);
		}
		await t.handleRequest(rq, rs, body);
	});
	srv.keepAliveTimeout = 60000;
	srv.listen(0, '127.0.0.1', () => writeFileSync(portFile, `${srv.address().port}\n`));
}

// ---- process accounting ----
const CLK = 100; // USER_HZ on Linux
function cpuTicks(pid) {
	try {
		const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
		const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
		return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) };
	} catch {
		return null;
	}
}
// CPU seconds of pid and all its descendants (workers, the broker).
function treeCpu(pid) {
	const kids = new Map();
	for (const d of readdirSync('/proc')) {
		if (!/^\d+$/.test(d))
			continue;
		const st = cpuTicks(Number(d));
		if (st)
			kids.set(Number(d), st);
	}
	let total = 0;
	const todo = [pid];
	while (todo.length) {
		const p = todo.pop();
		total += kids.get(p)?.ticks ?? 0;
		for (const [c, st] of kids)
			if (st.ppid === p)
				todo.push(c);
	}
	return total / CLK;
}

async function waitFile(f, child, what) {
	const end = Date.now() + 20000;
	while (!existsSync(f) || !readFileSync(f, 'utf8').trim()) {
		if (child.exitCode !== null || Date.now() > end)
			throw new Error(`${what} did not start`);
		await delay(20);
	}
	return Number(readFileSync(f, 'utf8').trim());
}

// ---- the client side ----
async function cycles(url, seconds, conc) {
	const { Client } = await sdk('client/index.js');
	const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
	let n = 0, errors = 0;
	const end = Date.now() + seconds * 1000;
	async function loop() {
		while (Date.now() < end) {
			const t = new StreamableHTTPClientTransport(new URL(url));
			const c = new Client({ name: 'bench', version: '1' });
			try {
				await c.connect(t);
				const r = await c.callTool({ name: 'echo', arguments: { text: 'x' } });
				if (r.content?.[0]?.text !== 'x')
					throw new Error('bad echo');
				await t.terminateSession();
				n++;
			} catch {
				errors++;
			} finally {
				await c.close().catch(() => {});
			}
		}
	}
	await Promise.all(Array.from({ length: conc }, loop));
	return { n, errors };
}

function post(agent, url, sid, body) {
	return new Promise((resolve, reject) => {
		const data = JSON.stringify(body);
		const r = http.request(url, { method: 'POST', agent, headers: {
			'content-type': 'application/json', accept: 'application/json, text/event-stream',
			'mcp-protocol-version': '2025-11-25', ...(sid ? { 'mcp-session-id': sid } : {}),
			'content-length': Buffer.byteLength(data) } }, (res) => {
			let b = '';
			res.on('data', (d) => { b += d; });
			res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: b }));
		});
		r.on('error', reject);
		r.end(data);
	});
}

async function latency(url, samples) {
	const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
	const init = await post(agent, url, null, { jsonrpc: '2.0', id: 1, method: 'initialize',
		params: { protocolVersion: '2025-11-25', capabilities: {},
			clientInfo: { name: 'bench', version: '1' } } });
	const sid = init.headers['mcp-session-id'];
	await post(agent, url, sid, { jsonrpc: '2.0', method: 'notifications/initialized' });
	const arrived = new Map();
	let getPid = 0, buf = '';
	const gotPrime = new Promise((resolve, reject) => {
		const g = http.get(url, { agent: false, headers: { accept: 'text/event-stream',
			'mcp-session-id': sid, 'mcp-protocol-version': '2025-11-25' } }, (res) => {
			getPid = Number(res.headers['x-shmb-worker'] ?? 0);
			resolve(g);
			res.setEncoding('utf8');
			res.on('data', (d) => {
				const now = performance.now();
				buf += d;
				let i;
				while ((i = buf.indexOf('\n\n')) >= 0) {
					const ev = buf.slice(0, i);
					buf = buf.slice(i + 2);
					const m = /"data":"lat (\d+)"/.exec(ev);
					if (m)
						arrived.get(Number(m[1]))?.(now);
				}
			});
		});
		g.on('error', reject);
	});
	const get = await gotPrime;
	const lat = [];
	let other = 0;
	for (let k = 0; other < samples && k < 4 * samples; k++) {
		const t0 = performance.now();
		const seen = new Promise((resolve) => arrived.set(k, resolve));
		const r = await post(false, url, sid, { jsonrpc: '2.0', id: 100 + k, method: 'tools/call',
			params: { name: 'notify', arguments: { text: `lat ${k}` } } });
		const t1 = await Promise.race([seen, delay(2000).then(() => null)]);
		arrived.delete(k);
		if (t1 === null)
			throw new Error(`notification ${k} did not arrive (status ${r.status})`);
		const pid = Number(r.headers['x-shmb-worker'] ?? 0);
		if (getPid && pid === getPid)
			continue; // same worker: not the cross-worker path
		other++;
		lat.push(t1 - t0);
	}
	get.destroy();
	await fetch(url, { method: 'DELETE', headers: { 'mcp-session-id': sid,
		'mcp-protocol-version': '2025-11-25' } }).catch(() => {});
	agent.destroy();
	lat.sort((a, b) => a - b);
	const q = (p) => lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN;
	return { p50: q(0.5), p99: q(0.99), n: other };
}

const median = (a) => {
	const s = a.filter((x) => !Number.isNaN(x)).sort((x, y) => x - y);
	return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};

async function main() {
	const workers = Number(opt('workers', 2));
	const rounds = Number(opt('rounds', 5));
	const seconds = Number(opt('seconds', 3));
	const conc = Number(opt('concurrency', 8));
	const samples = Number(opt('samples', 200));
	const mcpd = opt('mcpd', process.env.SHMB_MCPD ?? join(root, 'build/tools/mcp/shmb-mcpd'));
	const brokerd = opt('brokerd',
		process.env.SHMB_BROKERD ?? join(root, 'build/broker/shmbrokerd'));
	const dir = mkdtempSync(join(tmpdir(), 'shmb-bench-mcp-'));
	const children = [];
	try {
		const m = spawn(mcpd, ['--port', '0', '--port-file', join(dir, 'mport'), '--workers',
			String(workers), '--name', `benchmcp${process.pid}`, '--broker', brokerd,
			'--broker-arg', '--unlink-on-exit', '--max-sessions-per-client', '0',
			'--max-streams-per-client', '0'],
		{ stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env,
			SHMB_RUNTIME_DIR: dir } });
		children.push(m);
		const s = spawn(process.execPath, [fileURLToPath(import.meta.url), '--sdk-server',
			join(dir, 'sport')], { stdio: ['ignore', 'ignore', 'inherit'] });
		children.push(s);
		const servers = [
			{ name: `shmb-mcpd (${workers} workers)`, pid: m.pid,
				url: `http://127.0.0.1:${await waitFile(join(dir, 'mport'), m, 'shmb-mcpd')}/mcp` },
			{ name: 'SDK 1.32.2 McpServer (1 process)', pid: s.pid,
				url: `http://127.0.0.1:${await waitFile(join(dir, 'sport'), s, 'the SDK server')}/mcp` },
		];
		for (const sv of servers)
			sv.rounds = [];
		for (let r = 0; r < rounds; r++) {
			for (const sv of servers) {
				const c0 = treeCpu(sv.pid);
				const u0 = process.cpuUsage();
				const t0 = performance.now();
				const { n, errors } = await cycles(sv.url, seconds, conc);
				const wall = (performance.now() - t0) / 1000;
				const cpu = treeCpu(sv.pid) - c0;
				const u = process.cpuUsage(u0);
				const lat = await latency(sv.url, samples);
				const row = { cps: n / wall, cpu_us: (cpu / Math.max(n, 1)) * 1e6, errors,
					client_us: (u.user + u.system) / Math.max(n, 1),
					p50: lat.p50, p99: lat.p99, lat_n: lat.n };
				sv.rounds.push(row);
				console.error(`round ${r + 1} ${sv.name}: ${row.cps.toFixed(0)} cycles/s, ` +
					`${row.cpu_us.toFixed(0)} us CPU/cycle (client ${row.client_us.toFixed(0)}), ` +
					`${errors} errors, ` +
					`notify->GET p50 ${row.p50.toFixed(3)} p99 ${row.p99.toFixed(3)} ms ` +
					`(${lat.n} samples)`);
			}
		}
		const out = servers.map((sv) => ({ server: sv.name,
			cycles_per_s: median(sv.rounds.map((x) => x.cps)),
			cpu_us_per_cycle: median(sv.rounds.map((x) => x.cpu_us)),
			client_us_per_cycle: median(sv.rounds.map((x) => x.client_us)),
			notify_p50_ms: median(sv.rounds.map((x) => x.p50)),
			notify_p99_ms: median(sv.rounds.map((x) => x.p99)),
			errors: sv.rounds.reduce((a, x) => a + x.errors, 0) }));
		console.log(`medians of ${rounds} rounds (${seconds} s, ${conc} clients, ${samples} ` +
			'notifications each):');
		console.log('server                              cycles/s  CPU us/cycle  (client)  ' +
			'notify p50 ms  p99 ms  errors');
		for (const o of out)
			console.log(`${o.server.padEnd(34)} ${o.cycles_per_s.toFixed(0).padStart(9)} ` +
				`${o.cpu_us_per_cycle.toFixed(0).padStart(13)} ` +
				`${o.client_us_per_cycle.toFixed(0).padStart(9)} ` +
				`${o.notify_p50_ms.toFixed(3).padStart(14)} ${o.notify_p99_ms.toFixed(3).padStart(7)} ` +
				`${String(o.errors).padStart(7)}`);
		const json = opt('json');
		if (json)
			writeFileSync(json, JSON.stringify({ workers, rounds, seconds, conc, samples,
				results: out }, null, 1));
		if (out.some((o) => o.errors))
			process.exitCode = 1;
	} finally {
		for (const c of children)
			c.kill('SIGTERM');
		await delay(300);
		rmSync(dir, { recursive: true, force: true });
	}
}

if (process.argv[2] === '--sdk-server')
	await sdkServer(process.argv[3]);
else
	await main();
