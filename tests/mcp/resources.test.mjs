// resources.test.mjs - resources, prompts and completion (issue 14, item 10) with the official SDK
// client against shmb-mcpd with 4 workers, every request on a new connection: a subscription
// made on one worker is seen by the worker that serves update_resource, whose
// notifications/resources/updated reaches the GET stream another worker holds; after an
// unsubscribe (on any worker) nothing more is sent. Bad input gets clear errors.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { withServer, waitFor, freshConnectionFetch } from './lib.mjs';

const require = createRequire(import.meta.url);
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { ResourceUpdatedNotificationSchema, LoggingMessageNotificationSchema } =
	require('@modelcontextprotocol/sdk/types.js');

const WATCHED = 'test://watched-resource';

test('subscribe, update and unsubscribe across workers; prompts; completion', async () => {
	await withServer({ workers: 4 }, async (srv) => {
		const seen = [];
		const client = new Client({ name: 'resources-test', version: '1.0.0' });
		const transport = new StreamableHTTPClientTransport(new URL(srv.url),
			{ fetch: freshConnectionFetch(seen) });
		const updates = [];
		client.setNotificationHandler(ResourceUpdatedNotificationSchema,
			(n) => updates.push(n.params.uri));
		await client.connect(transport);
		assert.ok(client.getServerCapabilities().resources.subscribe);
		assert.ok(client.getServerCapabilities().prompts);
		assert.ok(client.getServerCapabilities().completions);
		// The standalone GET stream, opened by the SDK after initialize.
		const get = await waitFor(() => seen.find((x) => x.method === 'GET' &&
			x.status === 200), 10000, 'the GET stream');

		const list = await client.listResources();
		assert.deepEqual(list.resources.map((r) => r.uri),
			['test://static-text', 'test://static-binary', WATCHED]);
		const tpl = await client.readResource({ uri: 'test://template/42/data' });
		assert.deepEqual(JSON.parse(tpl.contents[0].text),
			{ id: '42', templateTest: true, data: 'Data for ID: 42' });
		await assert.rejects(client.readResource({ uri: 'test://nothing' }),
			/Resource not found: test:\/\/nothing/);
		await assert.rejects(client.subscribeResource({ uri: 'test://template/a/b/data' }),
			/Resource not found/);

		const n0 = seen.length;
		await client.subscribeResource({ uri: WATCHED });
		const subPid = seen[n0].pid;
		// update_resource on other workers than the GET's, until one also differs from the
		// subscribe's: the notification comes on the GET stream every time.
		let crossed = 0;
		for (let k = 0; k < 40 && crossed < 2; k++) {
			const before = seen.length, had = updates.length;
			const r = await client.callTool({ name: 'update_resource',
				arguments: { uri: WATCHED } });
			assert.equal(r.content[0].text, 'notified');
			await waitFor(() => updates.length === had + 1, 5000,
				`notification ${k} on the GET stream`);
			const pid = seen[before].pid;
			if (pid !== get.pid && pid !== subPid)
				crossed++;
		}
		assert.equal(crossed, 2, 'no update served apart from the GET\'s and subscribe\'s workers');
		assert.ok(updates.every((u) => u === WATCHED));

		await client.unsubscribeResource({ uri: WATCHED });
		const had = updates.length;
		for (let k = 0; k < 4; k++) {
			const r = await client.callTool({ name: 'update_resource',
				arguments: { uri: WATCHED } });
			assert.match(r.content[0].text, /not subscribed/);
		}
		// A notify after them: once it arrived, an update notification would have too.
		const notes = [];
		client.setNotificationHandler(LoggingMessageNotificationSchema,
			(n) => notes.push(n.params.data));
		await client.callTool({ name: 'notify', arguments: { text: 'fence' } });
		await waitFor(() => notes.includes('fence'), 5000, 'the fence notification');
		assert.equal(updates.length, had, 'an update after unsubscribe was sent');

		// Prompts and completion.
		const prompts = await client.listPrompts();
		assert.equal(prompts.prompts.length, 4);
		const p = await client.getPrompt({ name: 'test_prompt_with_arguments',
			arguments: { arg1: 'hello', arg2: 'world' } });
		assert.equal(p.messages[0].content.text, "Prompt with arguments: arg1='hello', arg2='world'");
		await assert.rejects(client.getPrompt({ name: 'test_prompt_with_arguments',
			arguments: { arg1: 'x' } }), /argument arg2 is required/);
		await assert.rejects(client.getPrompt({ name: 'nope' }), /unknown prompt/);
		const c = await client.complete({ ref: { type: 'ref/prompt',
			name: 'test_prompt_with_arguments' }, argument: { name: 'arg1', value: 'par' } });
		assert.deepEqual(c.completion.values, ['paris', 'park', 'party']);
		const c2 = await client.complete({ ref: { type: 'ref/resource',
			uri: 'test://template/{id}/data' }, argument: { name: 'id', value: '1' } });
		assert.deepEqual(c2.completion.values, ['1', '123']);
		await transport.terminateSession();
		await client.close();
	});
});
