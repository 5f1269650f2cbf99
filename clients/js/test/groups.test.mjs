// Verifies queue groups (protocol §8.2) through the JS client: each publication reaches exactly
// one member of a group and every plain subscriber. Skipped while the broker ignores `group`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ringcast from '../ringcast.js';
import { startBroker, mint, chan } from './helpers.mjs';

let broker;
let skip = false;
const clients = [];
const open = async (peer) => { const c = await ringcast.connect(broker.url, { token: mint(peer), logger: null }); clients.push(c); return c; };
before(async () => {
  broker = await startBroker();
  const probe = await open('jgrp-probe');
  const e = await probe.subscribe('probe/groups', { group: 'not a valid group!' }).then(() => null, (x) => x);
  if (e?.code !== 'invalid_group') skip = `queue groups (§8.2) not in this broker: ${e ? `it answers ${e.code}` : 'it ignores `group`'}`;
});
after(async () => { await Promise.allSettled(clients.map((c) => c.close())); await broker.stop(); });

test('each publication goes to one member of the group', async (t) => {
  if (skip) return t.skip(skip);
  const ch = chan('jobs');
  const s1 = await (await open('jgrp-w1')).subscribe(ch, { group: 'workers' });
  const s2 = await (await open('jgrp-w2')).subscribe(ch, { group: 'workers' });
  const plain = await (await open('jgrp-watch')).subscribe(ch);
  const pub = await open('jgrp-pub');
  for (let i = 0; i < 10; i++) await pub.publish(ch, i);
  for (let i = 0; i < 10; i++) assert.equal((await plain.get(5000)).data, i);
  const got = [];
  for (const s of [s1, s2]) {
    for (;;) { try { got.push((await s.get(500)).data); } catch { break; } }
  }
  assert.deepEqual(got.sort((x, y) => x - y), [...Array(10).keys()]);
  // refused by the client: the pattern's copies would be indistinguishable from the group's picks
  await assert.rejects(s1.client.subscribe('jobs/*', { pattern: true }), TypeError);
  const other = await open('jgrp-w3');
  await other.subscribe('jobs/**', { pattern: true });
  await assert.rejects(other.subscribe(ch, { group: 'workers' }), TypeError);
});
