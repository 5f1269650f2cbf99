// Verifies history channels through the JS client: publish offsets, the history command,
// subscribe with an explicit `since`, and `since: 'auto'` resuming without gap or duplicate
// over a dropped connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ringcast from '../ringcast.js';
import { startBroker, mint, chan, sleep, waitFor } from './helpers.mjs';

let broker;
const clients = [];
const open = async (peer, claims = {}, opts = {}) => {
  const c = await ringcast.connect(broker.url, { token: mint(peer, claims), logger: null, ...opts });
  clients.push(c);
  return c;
};
const take = async (sub, n) => { const out = []; for (let i = 0; i < n; i++) out.push(await sub.get(5000)); return out; };
before(async () => { broker = await startBroker(); });
after(async () => { await Promise.allSettled(clients.map((c) => c.close())); await broker.stop(); });

test('publish offsets and history', async () => {
  const ch = chan('runs');
  const a = await open('jh-pub', { peerMetadata: { who: 'pub' } });
  const b = await open('jh-sub');
  const sub = await b.subscribe(ch);
  assert.equal(sub.offset, 0);
  assert.ok(sub.epoch);
  const offsets = [];
  for (let i = 1; i <= 5; i++) offsets.push(await a.publish(ch, i));
  assert.deepEqual(offsets, [1, 2, 3, 4, 5]);
  assert.deepEqual((await take(sub, 5)).map((m) => [m.offset, m.data]), [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);
  const h = await b.history(ch);
  assert.equal(h.epoch, sub.epoch);
  assert.equal(h.offset, 5);
  assert.deepEqual(h.messages[0], { channel: ch, from: 'jh-pub', data: 1, offset: 1, fromMetadata: { who: 'pub' } });
  assert.deepEqual((await b.history(ch, { limit: 2 })).messages.map((m) => m.offset), [1, 2]);
  assert.deepEqual((await b.history(ch, { sinceOffset: 3 })).messages.map((m) => m.offset), [4, 5]);
  await assert.rejects(b.history(ch, { limit: 0 }), (e) => e.code === 'invalid_request');
});

test('subscribe with since', async () => {
  const ch = chan('runs');
  const a = await open('jhs-pub');
  for (let i = 1; i <= 4; i++) await a.publish(ch, i);
  const { epoch } = await a.history(ch);
  const b = await open('jhs-b');
  const sub = await b.subscribe(ch, { since: [epoch, 1] });
  assert.equal(sub.recovered, true);
  assert.deepEqual((await take(sub, 3)).map((m) => m.offset), [2, 3, 4]);
  const c = await open('jhs-c');
  const subC = await c.subscribe(ch, { since: { epoch: 'stale', offset: 3 } });
  assert.equal(subC.recovered, false);
  assert.deepEqual((await take(subC, 4)).map((m) => m.offset), [1, 2, 3, 4]);
});

test("since: 'auto' resumes over a dropped connection", async () => {
  const ch = chan('runs');
  let release = null;
  let mints = 0;
  const token = async () => { mints++; if (release) await release.promise; return mint('jauto-b'); };
  const a = await open('jauto-a');
  const b = await ringcast.connect(broker.url, { token, logger: null });
  clients.push(b);
  const sub = await b.subscribe(ch, { since: 'auto' });
  assert.equal(sub.recovered, null);
  await a.publish(ch, 1);
  await a.publish(ch, 2);
  assert.deepEqual((await take(sub, 2)).map((m) => m.data), [1, 2]);

  let open_;
  release = { promise: new Promise((r) => { open_ = r; }) };
  b.ws.close(4000, 'test: drop'); // a client-side close: not fatal, so the client reconnects
  await waitFor(() => mints === 2);
  for (const i of [3, 4, 5]) await a.publish(ch, i);
  open_();
  assert.deepEqual((await take(sub, 3)).map((m) => [m.offset, m.data]), [[3, 3], [4, 4], [5, 5]]);
  assert.equal(sub.recovered, true);
  await a.publish(ch, 6);
  assert.equal((await sub.get(5000)).data, 6);
  assert.equal(await b.publish(ch, 'still works'), 7);

  await sub.unsubscribe(); // 'auto' remembers per client
  await a.publish(ch, 8);
  const again = await b.subscribe(ch, { since: 'auto' });
  assert.equal(again.recovered, true);
  assert.deepEqual((await take(again, 1)).map((m) => m.offset), [8]); // 7 was its own
  await assert.rejects(again.get(300), ringcast.TimeoutError);
});

test('own publications are never replayed', async () => {
  const ch = chan('runs');
  const a = await open('jown-a');
  const b = await open('jown-b');
  const sub = await b.subscribe(ch, { since: 'auto' });
  assert.deepEqual([await b.publish(ch, 'b1'), await b.publish(ch, 'b2')], [1, 2]);
  assert.equal(sub.offset, 2);
  await a.publish(ch, 'a3');
  assert.equal((await sub.get(5000)).data, 'a3');
  assert.equal(await b.publish(ch, 'b4'), 4);
  b.ws.close(4000, 'test: drop');
  await a.publish(ch, 'a5');
  const m = await sub.get(5000);
  assert.deepEqual([m.offset, m.data], [5, 'a5']);
  await assert.rejects(sub.get(300), ringcast.TimeoutError);
});

test('a plain subscription resubscribes live', async () => {
  const ch = chan('runs');
  const a = await open('jlive-a');
  const b = await open('jlive-b');
  const sub = await b.subscribe(ch);
  b.ws.close(4000, 'test: drop');
  await sleep(20);
  await a.publish(ch, 'maybe missed');
  await waitFor(() => sub.offset === 1);
  await a.publish(ch, 'live');
  let m = await sub.get(5000);
  if (m.data === 'maybe missed') m = await sub.get(5000); // published before the drop was seen
  assert.deepEqual([m.offset, m.data], [2, 'live']);
});
