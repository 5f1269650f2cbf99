// Verifies connect, subscribe/publish, wildcard subscriptions, direct messages, presence and
// error answers of the JS client against the real broker.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ringcast from '../ringcast.js';
import { startBroker, mint, chan, waitFor, wsPackage, PK, GOOD_ORIGIN } from './helpers.mjs';

let broker;
const clients = [];
const open = async (peer, claims = {}, opts = {}) => {
  const c = await ringcast.connect(broker.url, peer ? { token: mint(peer, claims), logger: null, ...opts } : { logger: null, ...opts });
  clients.push(c);
  return c;
};
before(async () => { broker = await startBroker(); });
after(async () => { await Promise.allSettled(clients.map((c) => c.close())); await broker.stop(); });

test('connect and welcome', async () => {
  const c = await open('js-alice', { metadata: { role: 'planner' } });
  assert.equal(c.peerId, 'js-alice');
  assert.deepEqual(c.welcome.metadata, { role: 'planner' });
  await c.ping();
  await c.close();
  await assert.rejects(c.publish('x', 1), ringcast.ClientClosed);
});

test('publishable key needs its origin', async () => {
  await assert.rejects(open(null, {}, { key: PK }), ringcast.InvalidToken); // no Origin header
});

test('options.WebSocket (the ws package) and origin', async (t) => {
  const WebSocket = await wsPackage();
  if (!WebSocket) return t.skip('the ws package is not installed (tests/compat/node_modules or $RINGCAST_WS_MODULE)');
  const c = await open(null, {}, { key: PK, origin: GOOD_ORIGIN, WebSocket });
  assert.match(c.peerId, /^[0-9a-f-]{36}$/);
  assert.equal(c.welcome.expiresAt, null);
  const sub = await c.subscribe('public/ws-pkg');
  const d = await open('js-ws-pkg');
  await d.publish('public/ws-pkg', 'via ws');
  assert.equal((await sub.get(5000)).data, 'via ws');
});

test('subscribe and publish', async () => {
  const ch = chan();
  const a = await open('js-pub', { peerMetadata: { name: 'A' } });
  const b = await open('js-sub');
  const sub = await b.subscribe(ch, { includeSenderMetadata: true });
  assert.equal(await a.publish(ch, { n: 1 }), null);
  await a.publish(ch, null);
  const m1 = await sub.get(5000);
  assert.deepEqual(m1, { channel: ch, from: 'js-pub', data: { n: 1 }, offset: null, fromMetadata: { name: 'A' } });
  assert.equal((await sub.get(5000)).data, null);
  await a.publish(ch, 3);
  for await (const m of sub) { assert.equal(m.data, 3); break; }
  await sub.unsubscribe();
  const rest = [];
  for await (const m of sub) rest.push(m);
  assert.deepEqual(rest, []);
  await assert.rejects(b.subscribe(ch, { since: ['e', 1], group: 'g' }), TypeError);
});

test('wildcard subscription', async () => {
  const base = chan('wc');
  const a = await open('js-wc-a');
  const b = await open('js-wc-b');
  const sub = await b.subscribe(`${base}/*`, { pattern: true });
  const exact = await b.subscribe(`${base}/x`);
  await a.publish(`${base}/one`, 1);
  await a.publish(`${base}/one/deep`, 2);
  await a.publish(`${base}/x`, 3);
  await a.publish(`${base}/two`, 4);
  const got = [await sub.get(5000), await sub.get(5000)].map((m) => [m.channel, m.data]);
  assert.deepEqual(got, [[`${base}/one`, 1], [`${base}/two`, 4]]);
  assert.equal((await exact.get(5000)).data, 3);
  await assert.rejects(sub.get(300), ringcast.TimeoutError);
});

test('send and direct', async () => {
  const a = await open('js-dm-a', { peerMetadata: { k: 1 } });
  const b = await open('js-dm-b');
  await a.send('js-dm-b', { hi: true });
  assert.deepEqual(await b.directs().get(5000), { from: 'js-dm-a', data: { hi: true }, fromMetadata: { k: 1 } });
  const e = await a.send('js-dm-nobody', 1).catch((x) => x);
  assert.ok(e instanceof ringcast.PeerNotFound);
  assert.equal(e.code, 'peer_not_found');
});

test('presence', async () => {
  const ch = chan('room');
  const a = await open('js-pr-a');
  const events = [];
  const subA = await a.subscribe(ch, { onPresence: (p) => events.push(p) });
  const b = await open('js-pr-b', { peerMetadata: { n: 'B' } });
  const subB = await b.subscribe(ch);
  await waitFor(() => 'js-pr-b' in subA.peers);
  assert.deepEqual(subA.peers, { 'js-pr-b': { n: 'B' } });
  await waitFor(() => 'js-pr-a' in subB.peers);
  assert.deepEqual(events[0], { channel: ch, joined: {}, left: {} });
  await b.close();
  await waitFor(() => Object.keys(subA.peers).length === 0);
  assert.deepEqual(events.at(-1).left, { 'js-pr-b': { n: 'B' } });
});

test('error answers', async () => {
  const c = await open('js-err');
  const codeOf = (p) => p.then(() => null, (e) => e.code);
  assert.equal(await codeOf(c.publish('_system/x', 1)), 'channel_reserved');
  assert.equal(await codeOf(c.subscribe('plain/nohist', { since: ['e', 0] })), 'history_not_enabled');
  assert.equal(await codeOf(c.history('plain/nohist')), 'history_not_enabled');
  await c.subscribe('plain/nohist');
  const limited = await open('js-err-b', { channels: ['only/*'] });
  assert.equal(await codeOf(limited.subscribe('elsewhere')), 'channel_not_authorized');
  await assert.rejects(c.publish('x', 'y'.repeat(70000)), RangeError);
  await c.ping();
});
