// Verifies how the JS client maps refusals and close codes to errors, and when it reconnects:
// never after 4001/4003/4020 (nor 4002 with a fixed token), with a fresh token after 4002 when
// `token` is a function, and after 4011.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ringcast from '../ringcast.js';
import { startBroker, config, mint, chan, waitFor, rest, ROOM_KEY_ID, ROOM_SECRET } from './helpers.mjs';

let broker;
const clients = [];
const open = async (opts) => { const c = await ringcast.connect(broker.url, { logger: null, ...opts }); clients.push(c); return c; };
before(async () => { broker = await startBroker(); });
after(async () => { await Promise.allSettled(clients.map((c) => c.close())); await broker.stop(); });

test('refusals before welcome', async () => {
  await assert.rejects(open({ token: 'not.a.jwt' }), (e) => e instanceof ringcast.InvalidToken && e.code === 4001);
  await assert.rejects(open({ token: mint('jexp', { expIn: -5 }) }), ringcast.TokenExpired);
  await assert.rejects(open({ token: mint('j4003', { keyId: ROOM_KEY_ID, secret: ROOM_SECRET, channels: ['elsewhere/*'] }) }),
    ringcast.ChannelsNotAuthorized);
});

test('kicked (4020) is final', async () => {
  const c = await open({ token: mint('jkick') });
  const sub = await c.subscribe('kick/room');
  const r = await rest(broker, 'DELETE', '/v1/peers/jkick');
  assert.equal(r.json.closed, 1);
  await assert.rejects(c.closed(), ringcast.Kicked);
  await assert.rejects(sub.get(1000), ringcast.Kicked);
  await assert.rejects(c.publish('kick/room', 1), ringcast.Kicked);
});

test('rate limited (4011), then reconnected', async () => {
  const ch = chan('flood');
  const c = await open({ token: mint('jflood') });
  const sub = await c.subscribe(ch);
  const results = await Promise.allSettled(Array.from({ length: 400 }, (_, i) => c.publish(ch, i)));
  assert.ok(results.some((r) => r.status === 'rejected' && r.reason instanceof ringcast.RateLimited));
  const other = await open({ token: mint('jflood-watch') });
  await waitFor(() => c.ws.readyState === 1 && c.error === null);
  await new Promise((r) => setTimeout(r, 300)); // the resubscribe
  await other.publish(ch, 'after');
  assert.equal((await sub.get(5000)).data, 'after');
});

test('4002 with a token function reconnects with a fresh token', async () => {
  let mints = 0;
  const token = () => { mints++; return mint('jshort', { expIn: mints === 1 ? 2 : 3600 }); };
  const c = await open({ token });
  const ch = chan('runs');
  const sub = await c.subscribe(ch, { since: 'auto' });
  const other = await open({ token: mint('jshort-other') });
  await waitFor(() => mints === 2 && c.ws.readyState === 1, 5000);
  await other.publish(ch, 'hello');
  assert.equal((await sub.get(5000)).data, 'hello');
});

test('4002 with a fixed token is final', async () => {
  const c = await open({ token: mint('jshort-fixed', { expIn: 2 }) });
  await assert.rejects(c.closed(), ringcast.TokenExpired);
});

test('connection cap (4010)', async () => {
  const b = await startBroker(config({ maxConnections: 1 }));
  try {
    const first = await ringcast.connect(b.url, { token: mint('jcap-1'), logger: null });
    await assert.rejects(ringcast.connect(b.url, { token: mint('jcap-2'), logger: null }), ringcast.ConnectionCapReached);
    await first.close();
  } finally { await b.stop(); }
});
