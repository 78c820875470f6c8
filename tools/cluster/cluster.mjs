// cluster.mjs - the one-machine multi-host proof that tools/cluster/demo.sh runs (and ctest's
// multihost_demo): Redis, two nodes (each a shmbrokerd with its own name and node id, a
// shmb-mcpd --redis, a shmb-mirror) and HAProxy (haproxy.cfg) on loopback ports, driven with
// the official MCP SDK client through HAProxy. It tells the story on stdout and exits 1 at the
// first assertion that fails (0: every claim held).
//
// Every process is spawned in a process group of its own whose id is appended to
// $CLUSTER_DIR/pgids, so demo.sh's trap kills whatever is left however this script ends.
//
// The story: sessions land on both nodes; countdowns stream progress; a second client of the
// same session reads part of its stream and goes away; node A is killed (kill -9 of its
// shmb-mcpd master and workers, broker and mirror) mid-stream; through HAProxy, the live client
// resumes on node B by itself and the other one resumes with its Last-Event-ID: it gets every
// event the mirror had copied, then the overrun notice for what it had not, and new events get
// ids after everything either client saw. Then A comes back on its old segment: HAProxy sends
// A's sessions to it again, and A serves the session as B left it, not its stale copy.
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, openSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { startRedis, freePort, waitFor } from './redis.mjs';

const env = process.env;
const DIR = env.CLUSTER_DIR;
const BIN = { brokerd: env.SHMB_BROKERD, mcpd: env.SHMB_MCPD, mirror: env.SHMB_MIRROR,
	shmctl: env.SHMB_SHMCTL };
const sdkBase = join(env.SHMB_NODE_MODULES, '@modelcontextprotocol/sdk/dist/esm');
const sdk = (p) => import(pathToFileURL(join(sdkBase, p)).href);
const { Client } = await sdk('client/index.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
const { CallToolResultSchema } = await sdk('types.js');

const OVERRUN = 'notifications/shmb/overrun';
const INTER_MS = 250; // HAProxy's health check interval here (fall 2, rise 2)
const t0 = Date.now();
const say = (s) => console.log(`[${((Date.now() - t0) / 1000).toFixed(2).padStart(6)}s] ${s}`);
function check(cond, what) {
	if (!cond)
		throw new Error(`FAILED: ${what}`);
	say(`  ok: ${what}`);
}

// ---- processes -----------------------------------------------------------------------------

function spawnGroup(label, cmd, args, extraEnv = {}) {
	const log = openSync(join(DIR, `${label}.log`), 'a');
	const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log],
		env: { ...env, ...extraEnv } });
	appendFileSync(join(DIR, 'pgids'), `${child.pid}\n`);
	child.on('error', (e) => say(`${label}: ${e.message}`));
	return child;
}

const killGroup = (pid) => { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } };
const logOf = (label) => readFileSync(join(DIR, `${label}.log`), 'utf8');

// A node: broker (node id), mirror, shmb-mcpd with 2 workers, each its own process group.
// port: shmb-mcpd's (0: a free one); again: the node comes back (a fresh port file).
async function startNode(n, redisPort, port = 0, again = false) {
	const name = `${env.CLUSTER_NAME}n${n}`;
	const run = join(DIR, `run${n}`);
	mkdirSync(run, { recursive: true });
	const e = { SHMB_RUNTIME_DIR: run };
	const node = { n, name, label: n === 1 ? 'A' : 'B', env: e };
	node.broker = spawnGroup(`broker${n}`, BIN.brokerd, ['--name', name, '--node-id', String(n),
		'--foreground', '--unlink-on-exit'], e);
	await waitFor(() => spawnSync(BIN.shmctl, ['--name', name, 'ping'], { env: { ...env, ...e } })
		.status === 0, 10000, `broker ${name}`, 20);
	node.mirror = spawnGroup(`mirror${n}`, BIN.mirror, ['--name', name, '--redis',
		`127.0.0.1:${redisPort}`], e);
	const portFile = join(DIR, `port${n}`);
	if (again)
		writeFileSync(portFile, '');
	node.mcpd = spawnGroup(`mcpd${n}`, BIN.mcpd, ['--name', name, '--port', String(port),
		'--port-file', portFile, '--workers', '2', '--redis', `127.0.0.1:${redisPort}`,
		'--retry-ms', '100', '--max-connections-per-ip', '0',
		'--client-address-header', 'x-forwarded-for'], e);
	await waitFor(() => existsSync(portFile) && readFileSync(portFile, 'utf8').trim(), 10000,
		`shmb-mcpd of node ${n}`, 20);
	node.port = Number(readFileSync(portFile, 'utf8').trim());
	node.kill = () => { for (const c of [node.mcpd, node.broker, node.mirror]) killGroup(c.pid); };
	return node;
}

// HAProxy's view of a server: "UP", "DOWN", ... (the stats CSV's status column).
async function serverState(statsUrl, backend, server) {
	const csv = await (await fetch(`${statsUrl};csv`)).text();
	const head = csv.split('\n')[0].replace(/^# /, '').split(',');
	const st = head.indexOf('status');
	for (const line of csv.split('\n')) {
		const f = line.split(',');
		if (f[0] === backend && f[1] === server)
			return f[st];
	}
	return '?';
}

// ---- the MCP side --------------------------------------------------------------------------

// An SDK client through HAProxy whose every incoming message is recorded with the SSE event id
// it came with (null: none, as for the overrun notice) and its arrival time.
async function connect(url, label, sessionId) {
	const client = new Client({ name: `cluster-${label}`, version: '1.0.0' });
	const seen = [];
	let cur = null;
	const transport = new StreamableHTTPClientTransport(new URL(url), { sessionId,
		reconnectionOptions: { initialReconnectionDelay: 100, maxReconnectionDelay: 200,
			reconnectionDelayGrowFactor: 1.2, maxRetries: 200 } });
	client.onerror = () => {}; // reconnections are expected; the story says what matters
	client.fallbackNotificationHandler = async () => {};
	const token = (t) => { cur = t; };
	// The SDK reports event ids (onresumptiontoken, called just before the event's message is
	// handed on) for the streams of requests only: the standalone GET stream's are wanted too.
	const startSse = transport._startOrAuthSse.bind(transport);
	transport._startOrAuthSse = (o) => startSse({ ...o, onresumptiontoken: o.onresumptiontoken ?? token });
	await client.connect(transport);
	const onmessage = transport.onmessage;
	transport.onmessage = (m, extra) => {
		// A priming event has an id and no message: an id left over belongs to none.
		const id = cur === null || m.method === OVERRUN ? null : Number(cur);
		seen.push({ id, m, at: Date.now() });
		cur = null;
		onmessage(m, extra);
	};
	return { client, transport, seen, token, sid: transport.sessionId, label };
}

function countdown(c, n, delayMs, progressToken) {
	const p = c.client.request({ method: 'tools/call', params: { name: 'countdown',
		arguments: { n, delay_ms: delayMs }, _meta: { progressToken } } }, CallToolResultSchema,
	{ onresumptiontoken: c.token, timeout: 120000 });
	p.catch(() => {}); // a countdown whose node died ends with an error: the story says so
	return p;
}

const steps = (c, tok) => c.seen.filter((s) => s.m.method === 'notifications/progress' &&
	s.m.params.progressToken === tok);
const notices = (c) => c.seen.filter((s) => s.m.method === OVERRUN);
const maxId = (c) => Math.max(0, ...c.seen.map((s) => s.id ?? 0));

async function callTool(c, name, args) {
	const r = await c.client.callTool({ name, arguments: args });
	return r.content?.[0]?.text;
}

// Node of the worker pid (its process group is that node's shmb-mcpd's).
function nodeOfPid(pid, nodes) {
	const pgrp = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[2]);
	return nodes.find((n) => n.mcpd.pid === pgrp);
}

// ---- the story -----------------------------------------------------------------------------

const redis = await startRedis({ detached: true });
appendFileSync(join(DIR, 'pgids'), `${redis.child.pid}\n`);
const r = redis.client;
say(`redis-server on 127.0.0.1:${redis.port} (no persistence)`);
const A = await startNode(1, redis.port);
const B = await startNode(2, redis.port);
say(`node A: shmbrokerd --name ${A.name} --node-id 1, shmb-mirror, shmb-mcpd on :${A.port}`);
say(`node B: shmbrokerd --name ${B.name} --node-id 2, shmb-mirror, shmb-mcpd on :${B.port}`);
const [listen, stats] = [await freePort(), await freePort()];
const cfg = readFileSync(new URL('./haproxy.cfg', import.meta.url), 'utf8')
	.replaceAll('@LISTEN@', `127.0.0.1:${listen}`).replaceAll('@STATS@', `127.0.0.1:${stats}`)
	.replaceAll('@NODE1@', `127.0.0.1:${A.port}`).replaceAll('@NODE2@', `127.0.0.1:${B.port}`)
	.replaceAll('@INTER@', `${INTER_MS}ms`);
writeFileSync(join(DIR, 'haproxy.cfg'), cfg);
spawnGroup('haproxy', 'haproxy', ['-db', '-f', join(DIR, 'haproxy.cfg')]);
const url = `http://127.0.0.1:${listen}/mcp`;
const statsUrl = `http://127.0.0.1:${stats}/stats`;
await waitFor(async () => {
	try {
		return await serverState(statsUrl, 'nodes', 'node1') === 'UP' &&
			await serverState(statsUrl, 'nodes', 'node2') === 'UP';
	} catch { return false; }
}, 10000, 'HAProxy to see both nodes up', 50);
say(`HAProxy on ${url}: both nodes UP (health check GET /health every ${INTER_MS} ms)`);

// 1. New sessions are balanced: one on each node.
const clients = [];
while (!clients.some((c) => c.sid.startsWith('0001')) || !clients.some((c) => c.sid.startsWith('0002'))) {
	if (clients.length >= 8)
		throw new Error('FAILED: 8 sessions, not both nodes');
	clients.push(await connect(url, `c${clients.length}`));
}
const L = clients.find((c) => c.sid.startsWith('0001'));
const SB = clients.find((c) => c.sid.startsWith('0002'));
say(`session ${L.sid.slice(0, 8)}... on node A, ${SB.sid.slice(0, 8)}... on node B (the tag is the id's first 4 hex characters)`);
const infoA = JSON.parse(await callTool(L, 'session_info', {}));
const infoB = JSON.parse(await callTool(SB, 'session_info', {}));
check(nodeOfPid(infoA.pid, [A, B]) === A && nodeOfPid(infoB.pid, [A, B]) === B,
	'HAProxy routes each session to the node its id names');

// 2. Progress streams: a long countdown on each session; a second client R of A's session
// reads 15 steps of its own countdown and goes away (its job goes on publishing on A).
const bDone = countdown(SB, 30, 100, 'b');
let lCallError = null; // L's countdown: its job dies with node A
countdown(L, 2000, 20, 'live').catch((e) => { lCallError = e; });
const R = await connect(url, 'R', L.sid);
countdown(R, 2000, 20, 'resumer');
say('progress streams: a countdown on each session (L on A, a step every 20 ms; one on B), and a second client R of the session on A with its own countdown');
await waitFor(() => steps(R, 'resumer').length >= 15, 20000, 'R: 15 steps');
const rLast = steps(R, 'resumer').at(-1).id;
await R.transport.close();
say(`R read countdown steps up to event id ${rLast}, then disconnected`);
// The mirror copies what R missed; the kill comes right after, with the freshest events not
// copied yet.
const key = (k) => `shmb:${k}:{${L.sid}}`;
await waitFor(async () => Number(await r.cmd('HGET', key('s'), 'mirrored_id')) >= rLast + 40,
	20000, 'the mirror to copy 40 more events', 5);
await waitFor(() => steps(L, 'live').length >= 40, 20000, 'L: 40 steps');

// 3. Kill node A entirely.
const beforeKill = maxId(L);
const killAt = Date.now();
A.kill();
const mirrored = Number(await r.cmd('HGET', key('s'), 'mirrored_id'));
const claimed = Number(await r.cmd('HGET', key('s'), 'claimed'));
say(`kill -9 node A (shmb-mcpd master and workers, broker, mirror); L had seen up to id ${beforeKill}, Redis holds up to ${mirrored} (claimed ${claimed})`);

// R resumes through HAProxy with its Last-Event-ID, retrying while HAProxy still sends A's
// sessions to A (503 until the health check marks it down).
let resumeTries = 0;
const R3 = { seen: [], at: 0 };
{
	// A new SDK transport of the same session, as a client in a new process would have.
	for (;;) {
		resumeTries++;
		const c = new Client({ name: 'cluster-R3', version: '1.0.0' });
		const tr = new StreamableHTTPClientTransport(new URL(url), { sessionId: L.sid,
			reconnectionOptions: { initialReconnectionDelay: 100, maxReconnectionDelay: 200,
				reconnectionDelayGrowFactor: 1.2, maxRetries: 0 } });
		let cur = null;
		tr.onmessage = (m) => { R3.seen.push({ id: cur === null ? null : Number(cur), m, at: Date.now() }); cur = null; };
		tr.onerror = () => {};
		await tr.start();
		try {
			await tr.resumeStream(String(rLast), { onresumptiontoken: (t) => { cur = t; } });
			R3.transport = tr;
			break;
		} catch {
			await tr.close();
			if (Date.now() - killAt > 15000)
				throw new Error('FAILED: no resumption within 15 s of the kill');
			await delay(20);
		}
	}
}
await waitFor(() => R3.seen.some((s) => s.m.method === OVERRUN), 10000, 'R: the replay and the notice');
const firstReplay = R3.seen[0].at - killAt;
const restoreMs = logOf('mcpd2').match(/restored from redis in (\d+) ms/)?.[1];
say(`R resumed on node B with Last-Event-ID ${rLast} (${resumeTries} tries): first replayed event ${firstReplay} ms after the kill`);
say(`  (HAProxy marked A down after 2 failed checks, ${INTER_MS} ms apart, and retried the request on B after its turn-around of min(timeout connect, 1 s); B's restore itself took ${restoreMs} ms)`);
// Every event of R's stream that the mirror copied, in order, with its id; then the notice.
const expected = [];
for (const [id, f] of await r.cmd('XRANGE', key('e'), `${rLast + 1}-0`, `${mirrored}-0`)) {
	const h = Object.fromEntries(f.reduce((a, v, i) => (i % 2 ? a : [...a, [v, f[i + 1]]]), []));
	const k = Number(h.k);
	if ((k & 0xC000) === 0x8000 && JSON.parse(h.d).params?.progressToken === 'resumer')
		expected.push(Number(id.split('-')[0]));
}
const got = R3.seen.filter((s) => s.m.method === 'notifications/progress').map((s) => s.id);
check(JSON.stringify(got) === JSON.stringify(expected),
	`R got every mirrored step after its Last-Event-ID: ${expected.length} events, ids ${expected[0]}..${expected.at(-1)}`);
const rNotice = R3.seen.find((s) => s.m.method === OVERRUN);
check(R3.seen.at(-1) === rNotice || R3.seen.indexOf(rNotice) === got.length,
	`then the overrun notice, lagged ${rNotice.m.params.lagged} (ids ${mirrored + 1}..${mirrored + rNotice.m.params.lagged} have no event here)`);
const lastRestored = mirrored + rNotice.m.params.lagged;
await waitFor(() => R3.seen.some((s) => s.m.error), 5000, "R: its call's answer");
const rErr = R3.seen.find((s) => s.m.error);
check(R3.seen.indexOf(rErr) > R3.seen.indexOf(rNotice) && rErr.m.error.code === -32603,
	`then its countdown call is answered: "${rErr.m.error.message}" (its job died with node A)`);

// L: the SDK reconnected by itself (Last-Event-ID = the last id it saw). Its streams (its
// countdown's and the SDK's standalone GET) each get the notice where the lost ids would have
// been (L cannot know it missed none of them): the notice is the sign L resumed (messages that
// were in flight at the kill arrive just after it too).
await waitFor(() => notices(L).some((s) => s.at > killAt), 15000, 'L: resumed after the kill');
const lNotice = notices(L).find((s) => s.at > killAt);
const lFirst = lNotice;
say(`L's SDK resumed by itself: told ${lFirst.at - killAt} ms after the kill`);
check(lNotice && lNotice.m.params.lagged > 0 &&
	lNotice.m.params.lagged <= lastRestored - Math.min(beforeKill, mirrored),
	`L is told too: overrun notice, lagged ${lNotice?.m.params.lagged}`);

// The id L's SDK resumed after: the last it received before the notice, which may be past
// beforeKill (events A had sent before the kill, still in flight then).
const lLast = Math.max(beforeKill, ...L.seen.filter((s) => s.at <= lNotice.at && s.id).map((s) => s.id));
if (lLast <= mirrored) {
	await waitFor(() => lCallError, 5000, "L: its countdown call's error");
	check(/lost/.test(lCallError.message), `L's countdown call fails instead of hanging: ${lCallError.message}`);
} else {
	say(`L's last id ${lLast} was not mirrored: which stream it was on is unknown, so its countdown call is not answered (the SDK's timeout ends it)`);
}
// New events continue after every id anyone saw.
const nb = await callTool(L, 'notify', { text: 'published on B after the failover' });
check(nb === 'notified', 'notify through HAProxy on the restored session');
await waitFor(() => L.seen.some((s) => s.m.params?.data === 'published on B after the failover'),
	10000, 'L: the new event');
const newEv = L.seen.find((s) => s.m.params?.data === 'published on B after the failover');
check(newEv.id > Math.max(lLast, claimed, lastRestored),
	`its id ${newEv.id} continues after everything A handed out (L saw ${lLast}, Redis had claimed ${claimed})`);
const infoF = JSON.parse(await callTool(L, 'session_info', {}));
check(nodeOfPid(infoF.pid, [B]) === B, 'node B serves the session now');
check(/restored from redis/.test(logOf('mcpd2')), 'node B logged the restore');
check(Number(await r.cmd('HGET', key('s'), 'owner')) === 2, 'Redis names node B the owner');
const bResult = await bDone;
check(bResult.content[0].text === 'countdown done: 30 steps' && steps(SB, 'b').length === 30,
	"node B's own session never noticed: its countdown finished, 30 steps");
// The loss window: ids A handed out that the mirror had not copied.
const lossEvents = Math.max(lLast, claimed) - mirrored;
say(`loss window: ${lossEvents} event ids A handed out were not mirrored (A's last known ${Math.max(lLast, claimed)}, mirrored ${mirrored}); L had received them live, R is told`);

// 4. A comes back on its old segment (the broker adopts it: A's stale copy of the session is
// there). B's mirror copies the new event first, so A takes the session back complete.
await waitFor(async () => Number(await r.cmd('HGET', key('s'), 'mirrored_id')) >= newEv.id, 10000,
	"B's mirror to copy the new event", 5);
const backAt = Date.now();
Object.assign(A, await startNode(1, redis.port, A.port, true));
await waitFor(async () => await serverState(statsUrl, 'nodes', 'node1') === 'UP', 10000, 'A: UP', 50);
say(`node A is back (same segment, ${Date.now() - backAt} ms until HAProxy marks it UP); HAProxy cuts A's sessions' streams on B`);
const na = await callTool(L, 'notify', { text: 'published on A after its return' });
check(na === 'notified', 'notify through HAProxy goes to A again');
await waitFor(() => L.seen.some((s) => s.m.params?.data === 'published on A after its return'),
	10000, 'L: the event published on A');
const retEv = L.seen.find((s) => s.m.params?.data === 'published on A after its return');
check(retEv.id > newEv.id, `ids go on (${retEv.id} > ${newEv.id}): A serves what B left, not its stale copy`);
check(/is node 2's now: stale local copy dropped/.test(logOf('mcpd1')), 'node A logged dropping its stale copy');
const infoR = JSON.parse(await callTool(L, 'session_info', {}));
check(nodeOfPid(infoR.pid, [A]) === A, 'node A serves the session again');
check(Number(await r.cmd('HGET', key('s'), 'owner')) === 1, 'Redis names node A the owner again');
// A's mirror saw A drop its stale copy and restore the session: Redis must still hold it live,
// with what A publishes now.
await waitFor(async () => Number(await r.cmd('HGET', key('s'), 'mirrored_id')) >= retEv.id, 10000,
	"A's mirror to copy the event published on A", 5);
check(await r.cmd('HGET', key('s'), 'state') === 'live', "Redis's record is live, mirrored by A again");

// Under the sanitizer builds a report in any log fails the run (a worker that hits one is
// restarted: the log is the only trace).
for (const l of ['mcpd1', 'mcpd2', 'mirror1', 'mirror2', 'broker1', 'broker2']) {
	const m = logOf(l).match(/^.*(AddressSanitizer|LeakSanitizer|runtime error:).*$/m);
	if (m)
		throw new Error(`FAILED: sanitizer report in ${l}.log: ${m[0]}`);
}
console.log(`RESULT failover_ms=${firstReplay} restore_ms=${restoreMs} live_resume_ms=${lFirst.at - killAt} loss_events=${lossEvents} lagged_R=${rNotice.m.params.lagged} lagged_L=${lNotice.m.params.lagged}`);
for (const c of [...clients, R3])
	await (c.client ? c.client.close() : c.transport?.close());
await redis.stop();
process.exit(0);
