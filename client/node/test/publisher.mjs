// publisher.mjs - a helper process for api.test.mjs: attaches to broker argv[2], publishes
// argv[4] events "p<i>" on stream 2 of session argv[3] (tenant t1, principal alice), 20 ms
// apart, and exits 0.
import { Client } from '../lib/index.mjs';

const [name, sid, n] = process.argv.slice(2);
const c = await Client.attach(name);
const s = c.open(sid, 't1', 'alice');
for (let i = 0; i < Number(n); i++) {
	s.publish(`p${i}`, { stream: 2 });
	s.publish('noise', { stream: 3 });
	await new Promise((r) => setTimeout(r, 20));
}
c.close();
