#!/usr/bin/env node
// mcp-cluster.mjs - an MCP server on the official SDK's McpServer, served by N node:cluster
// workers that share its sessions through shmbroker (lib/mcp.mjs): any worker serves any
// request of a session, a notification sent on one worker reaches the GET stream another holds,
// a cut stream resumes on another worker with Last-Event-ID.
//
//   node mcp-cluster.mjs [--port N] [--port-file PATH] [--workers N] [--name NAME]
//                        [--host ADDR] [--broker PATH] [--broker-arg=ARG]... [--single]
//
// --port N        port to listen on (default 3000; 0: any free port)
// --port-file F   write the port there once every worker listens
// --workers N     cluster workers (default: the number of CPUs); a dead worker is replaced
// --name NAME     shmbroker instance (default $SHMB_NAME, else "mcp-cluster"); when no broker of
//                 that name runs, one is started (--broker PATH, else the build tree's, else
//                 shmbrokerd on PATH; --broker-arg=ARG passes it an argument) and stopped at exit
// --single        the same server in one process with the SDK's own in-memory sessions and no
//                 shmbroker (the baseline tools/bench_node.mjs compares against)
// Tools: echo {text}; countdown {n, delay_ms} (a progress notification per step, then the
// result); notify {text} (a logging notification on the session's standalone GET stream).
// Every response names its worker in X-Shmb-Worker (a pid). SIGTERM/SIGINT stop everything.
import cluster from 'node:cluster';
import http from 'node:http';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { Client } from '../lib/index.mjs';
import { clusterSessions } from '../lib/mcp.mjs';

const { values: opt } = parseArgs({ options: {
	port: { type: 'string', default: '3000' },
	'port-file': { type: 'string' },
	workers: { type: 'string', default: String(os.availableParallelism?.() ?? os.cpus().length) },
	name: { type: 'string', default: process.env.SHMB_NAME ?? 'mcp-cluster' },
	host: { type: 'string', default: '127.0.0.1' },
	broker: { type: 'string' },
	'broker-arg': { type: 'string', multiple: true, default: [] },
	single: { type: 'boolean', default: false },
} });
// A worker forked after the first ones listen gets their port: with --port 0 a replacement
// would otherwise get a new random port once every worker that shared the first had ended (the
// primary closes a listening socket no worker uses), and the announced port would be dead.
const port = Number(process.env.MCP_CLUSTER_PORT ?? opt.port);
const workers = Number(opt.workers);
if (!Number.isInteger(port) || port < 0 || port > 65535 || !Number.isInteger(workers) ||
    workers < 1 || workers > 256) {
	console.error('mcp-cluster: --port must be 0..65535 and --workers 1..256');
	process.exit(2);
}

// The MCP server of one session, on one worker: what a single-process SDK server has.
function createServer() {
	const server = new McpServer({ name: 'shmb-mcp-cluster', version: '0.1.0' },
		{ capabilities: { logging: {} } });
	server.registerTool('echo', { description: 'Returns its text',
		inputSchema: { text: z.string() } },
	async ({ text }) => ({ content: [{ type: 'text', text }] }));
	server.registerTool('countdown', { description: 'n steps, delay_ms apart, one progress each',
		inputSchema: { n: z.number().int().min(1).max(10000),
			delay_ms: z.number().int().min(0).max(60000).optional() } },
	async ({ n, delay_ms: delayMs = 100 }, extra) => {
		const token = extra._meta?.progressToken;
		for (let i = 1; i <= n; i++) {
			await sleep(delayMs);
			if (token !== undefined)
				await extra.sendNotification({ method: 'notifications/progress',
					params: { progressToken: token, progress: i, total: n } });
		}
		return { content: [{ type: 'text', text: `countdown done: ${n} steps` }] };
	});
	server.registerTool('notify', { description: 'Sends text to the standalone GET stream',
		inputSchema: { text: z.string() } },
	async ({ text }) => {
		// No related request: the SDK sends it on the standalone stream, wherever it is.
		await server.server.notification({ method: 'notifications/message',
			params: { level: 'info', data: text } });
		return { content: [{ type: 'text', text: 'notified' }] };
	});
	return server;
}

function listen(handler, onListening) {
	const srv = http.createServer((req, res) => {
		res.setHeader('x-shmb-worker', String(process.pid));
		if (new URL(req.url, 'http://x').pathname !== '/mcp') {
			res.writeHead(404).end();
			return;
		}
		handler(req, res);
	});
	srv.keepAliveTimeout = 5000;
	srv.listen(port, opt.host, () => onListening(srv.address().port));
	return srv;
}

// --single: the SDK's documented single-process pattern (sessions in a Map).
function single() {
	const sessions = new Map();
	listen(async (req, res) => {
		const sid = req.headers['mcp-session-id'];
		let body;
		if (req.method === 'POST') {
			const chunks = [];
			for await (const c of req)
				chunks.push(c);
			try {
				body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
			} catch {
				res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify(
					{ jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null }));
				return;
			}
		}
		let t = sid && sessions.get(sid);
		if (!t && !sid && isInitializeRequest(body)) {
			t = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(),
				onsessioninitialized: (id) => sessions.set(id, t),
				onsessionclosed: (id) => sessions.delete(id) });
			await createServer().connect(t);
		}
		if (!t) {
			res.writeHead(sid ? 404 : 400, { 'content-type': 'application/json' }).end(
				JSON.stringify({ jsonrpc: '2.0', error: { code: sid ? -32001 : -32000,
					message: sid ? 'Session not found' : 'Bad Request' }, id: null }));
			return;
		}
		await t.handleRequest(req, res, body);
	}, writePort);
}

function writePort(p) {
	if (opt['port-file']) {
		fs.writeFileSync(`${opt['port-file']}.tmp`, `${p}\n`);
		fs.renameSync(`${opt['port-file']}.tmp`, opt['port-file']);
	}
	console.error(`mcp-cluster: listening on http://${opt.host}:${p}/mcp (pid ${process.pid})`);
}

async function worker() {
	// A broker being restarted (EBROKER): wait for it rather than exit at once, which would
	// have the primary fork workers in a tight loop until it is back.
	let client;
	for (let wait = 50; ; wait = Math.min(wait * 2, 1000)) {
		try {
			client = await Client.attach(opt.name);
			break;
		} catch (e) {
			if (e.code !== 'EBROKER')
				throw e;
			await sleep(wait);
		}
	}
	let srv;
	let stale = false;
	const sessions = clusterSessions({ client, createServer,
		onerror: (e) => {
			// The broker serves another segment now (stopped and started again, another
			// configuration): this client stays stale for good. The request got 503; the
			// worker stops and the primary forks one that attaches the new segment.
			if (e.code === 'ESTALE') {
				if (!stale) {
					stale = true;
					console.error(`mcp-cluster: worker ${process.pid}: ${e.message}; ` +
						'stopping to be replaced');
					setImmediate(retire);
				}
				return;
			}
			console.error(`mcp-cluster: worker ${process.pid}: ${e.stack}`);
		} });
	function retire() {
		srv.close(() => process.exit(75));
		srv.closeIdleConnections?.();
		sessions.close();
		client.close(); // its GET streams end
		setTimeout(() => process.exit(75), 2000).unref();
	}
	srv = listen(sessions.handle, () => process.send?.({ listening: true }));
	process.on('SIGTERM', () => {
		srv.close();
		srv.closeAllConnections?.();
		sessions.close();
		client.close();
		process.exit(0);
	});
}

function findBroker() {
	if (opt.broker)
		return opt.broker;
	const repo = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
	try {
		for (const d of fs.readdirSync(repo).sort()) {
			const p = path.join(repo, d, 'broker', 'shmbrokerd');
			if (d.startsWith('build') && fs.existsSync(p))
				return p;
		}
	} catch { /* not in a source tree */ }
	return 'shmbrokerd';
}

// Starts a broker named opt.name unless one runs; resolves to its child process or null.
async function ensureBroker() {
	try {
		(await Client.attach(opt.name)).close();
		return null;
	} catch (e) {
		if (e.code !== 'EBROKER')
			throw e;
	}
	const child = spawn(findBroker(), ['--name', opt.name, '--foreground',
		...opt['broker-arg']], { stdio: ['ignore', 'inherit', 'inherit'] });
	const failed = new Promise((_, reject) => {
		child.on('error', reject);
		child.on('exit', (code) => reject(new Error(`shmbrokerd exited (${code})`)));
	});
	for (let i = 0; i < 500; i++) {
		try {
			const c = await Promise.race([Client.attach(opt.name), failed]);
			c.close();
			return child;
		} catch (e) {
			if (e.code !== 'EBROKER')
				throw e;
		}
		await Promise.race([sleep(20), failed]);
	}
	throw new Error(`shmbrokerd --name ${opt.name} did not come up`);
}

async function primary() {
	const broker = await ensureBroker();
	let stopping = false;
	let listening = false;
	let nlistening = 0;
	// Our own count: cluster.workers may still list a worker at its 'exit' (until 'disconnect').
	const live = new Set();
	let bound = null; // the port the workers listen on, once known
	const start = () => {
		const w = cluster.fork(bound === null ? {} : { MCP_CLUSTER_PORT: String(bound) });
		live.add(w);
		// The port is announced once every worker listens: the primary hands connections only
		// to workers that listen, so an earlier announcement sent a client's first connections
		// all to the first worker up.
		w.once('listening', (addr) => {
			bound = addr.port;
			if (!listening && ++nlistening >= workers) {
				listening = true;
				writePort(addr.port);
			}
		});
	};
	cluster.on('exit', (w, code, sig) => {
		live.delete(w);
		if (stopping)
			return;
		console.error(`mcp-cluster: worker ${w.process.pid} ended (${sig ?? code}); replacing it`);
		start();
	});
	for (let i = 0; i < workers; i++)
		start();
	const stop = () => {
		if (stopping)
			return;
		stopping = true;
		for (const w of live)
			w.process.kill('SIGTERM');
		const done = () => {
			if (live.size > 0)
				return;
			if (broker) {
				broker.once('exit', () => process.exit(0));
				broker.kill('SIGTERM');
			} else {
				process.exit(0);
			}
		};
		cluster.on('exit', done);
		done();
	};
	process.on('SIGTERM', stop);
	process.on('SIGINT', stop);
}

if (opt.single)
	single();
else if (cluster.isPrimary)
	await primary();
else
	await worker();
