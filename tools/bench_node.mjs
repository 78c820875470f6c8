#!/usr/bin/env node
// bench_node.mjs - the Node binding's MCP figures (issue 13, item 6), in one run:
// client/node/examples/mcp-cluster.mjs under node:cluster with --workers N (sessions in
// shmbroker) against the same SDK server in one process (--single: the SDK's own in-memory
// sessions), each measured for
//  - cycles/s: initialize + notifications/initialized + tools/call echo + DELETE, by
//    --concurrency loops over keep-alive connections for --seconds;
//  - notification -> GET stream latency: a client holds the session's standalone GET stream;
//    each sample POSTs tools/call notify on a new connection (under cluster it lands on any
//    worker) and times until the notification arrives on the GET stream; p50/p99 of --samples,
//    and under cluster the share that crossed workers (POST and GET on different pids).
//
//   node tools/bench_node.mjs [--broker build/broker/shmbrokerd] [--workers 4] [--seconds 5]
//                             [--concurrency 16] [--samples 400] [--json FILE]
//
// Needs client/node's packages (npm ci in client/node) and a built addon (cmake --build).
import { spawn } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: opt } = parseArgs({ options: {
	broker: { type: 'string', default: path.join(root, 'build', 'broker', 'shmbrokerd') },
	workers: { type: 'string', default: '4' },
	seconds: { type: 'string', default: '5' },
	concurrency: { type: 'string', default: '16' },
	samples: { type: 'string', default: '400' },
	json: { type: 'string' },
} });
const EXAMPLE = path.join(root, 'client', 'node', 'examples', 'mcp-cluster.mjs');
const PV = '2025-11-25';

async function startServer(single) {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shmb-benchnode-'));
	const portFile = path.join(dir, 'port');
	const name = `benchnode${process.pid}${single ? 's' : 'c'}`;
	const args = [EXAMPLE, '--port', '0', '--port-file', portFile, '--name', name,
		'--broker', opt.broker, '--broker-arg=--unlink-on-exit', '--broker-arg=--max-sessions',
		'--broker-arg=8192', ...(single ? ['--single'] : ['--workers', opt.workers])];
	const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'],
		env: { ...process.env, SHMB_RUNTIME_DIR: dir } });
	for (let i = 0; i < 3000 && !fs.existsSync(portFile); i++)
		await sleep(10);
	const port = Number(fs.readFileSync(portFile, 'utf8'));
	return {
		port,
		async stop() {
			const exit = new Promise((r) => child.on('exit', r));
			child.kill('SIGTERM');
			await exit;
			fs.rmSync(dir, { recursive: true, force: true });
		},
	};
}

function request(port, agent, method, headers, body) {
	return new Promise((resolve, reject) => {
		const req = http.request({ host: '127.0.0.1', port, path: '/mcp', method, agent,
			headers: { accept: 'application/json, text/event-stream',
				'content-type': 'application/json', 'mcp-protocol-version': PV, ...headers } },
		(res) => {
			let text = '';
			res.setEncoding('utf8');
			res.on('data', (d) => { text += d; });
			res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
		});
		req.on('error', reject);
		req.end(body === undefined ? undefined : JSON.stringify(body));
	});
}

async function initialize(port, agent) {
	const r = await request(port, agent, 'POST', {}, { jsonrpc: '2.0', id: 1, method: 'initialize',
		params: { protocolVersion: PV, capabilities: {}, clientInfo: { name: 'bench', version: '1' } } });
	const sid = r.headers['mcp-session-id'];
	if (r.status !== 200 || !sid)
		throw new Error(`initialize: ${r.status} ${r.text}`);
	await request(port, agent, 'POST', { 'mcp-session-id': sid },
		{ jsonrpc: '2.0', method: 'notifications/initialized' });
	return sid;
}

async function cycles(port) {
	const end = Date.now() + Number(opt.seconds) * 1000;
	let n = 0;
	const loop = async () => {
		const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
		while (Date.now() < end) {
			const sid = await initialize(port, agent);
			const r = await request(port, agent, 'POST', { 'mcp-session-id': sid }, { jsonrpc: '2.0',
				id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'x' } } });
			if (!r.text.includes('"result"'))
				throw new Error(`echo: ${r.status} ${r.text}`);
			const d = await request(port, agent, 'DELETE', { 'mcp-session-id': sid });
			if (d.status !== 200)
				throw new Error(`DELETE: ${d.status} ${d.text}`);
			n++;
		}
		agent.destroy();
	};
	const t0 = Date.now();
	await Promise.all(Array.from({ length: Number(opt.concurrency) }, loop));
	return n / ((Date.now() - t0) / 1000);
}

async function latency(port) {
	const sid = await initialize(port, false);
	let buf = '';
	let waiter = null;
	let getPid;
	const get = http.request({ host: '127.0.0.1', port, path: '/mcp', agent: false,
		headers: { accept: 'text/event-stream', 'mcp-session-id': sid, 'mcp-protocol-version': PV } });
	await new Promise((resolve, reject) => {
		get.on('response', (res) => {
			getPid = res.headers['x-shmb-worker'];
			res.setEncoding('utf8');
			res.on('data', (d) => {
				buf += d;
				waiter?.();
			});
			resolve();
		});
		get.on('error', reject);
		get.end();
	});
	const times = [];
	let crossed = 0;
	for (let i = 0; i < Number(opt.samples); i++) {
		const mark = `"note ${i}"`;
		const arrived = new Promise((resolve) => {
			waiter = () => { if (buf.includes(mark)) resolve(process.hrtime.bigint()); };
		});
		const t0 = process.hrtime.bigint();
		const post = request(port, false, 'POST', { 'mcp-session-id': sid }, { jsonrpc: '2.0', id: 3,
			method: 'tools/call', params: { name: 'notify', arguments: { text: `note ${i}` } } });
		const t1 = await Promise.race([arrived, sleep(5000).then(() => null)]);
		if (t1 === null)
			throw new Error(`notification ${i} did not arrive in 5 s`);
		const r = await post;
		if (r.headers['x-shmb-worker'] !== getPid)
			crossed++;
		times.push(Number(t1 - t0) / 1e6);
		buf = '';
	}
	get.destroy();
	await request(port, false, 'DELETE', { 'mcp-session-id': sid });
	times.sort((a, b) => a - b);
	const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
	return { p50_ms: q(0.5), p99_ms: q(0.99), crossed: crossed / times.length };
}

const results = {};
for (const [label, single] of [['single', true], [`cluster_x${opt.workers}`, false]]) {
	const srv = await startServer(single);
	try {
		await cycles(srv.port); // warm-up (JIT, connections), not counted
		const cps = await cycles(srv.port);
		const lat = await latency(srv.port);
		results[label] = { cycles_per_s: Math.round(cps), ...lat };
		console.log(`${label.padEnd(12)} ${Math.round(cps).toString().padStart(6)} cycles/s   ` +
			`notify->GET p50 ${lat.p50_ms.toFixed(2)} ms  p99 ${lat.p99_ms.toFixed(2)} ms  ` +
			`(${Math.round(lat.crossed * 100)}% across workers)`);
	} finally {
		await srv.stop();
	}
}
console.log(`(${os.cpus().length} CPUs, ${opt.concurrency} concurrent clients, ${opt.seconds} s, ` +
	`${opt.samples} latency samples, node ${process.version})`);
if (opt.json)
	fs.writeFileSync(opt.json, JSON.stringify({ schema_version: 1, ...results }, null, 2) + '\n');
