// Verifies requests and replies (protocol §8.4) through the JS client: plain and streamed
// replies, the responder handler (value, promise, async generator, throw), timeouts,
// cancellation (AbortSignal, leaving a stream early, requester gone), a responder leaving
// mid-stream, and `taken` between two connections of one peer. Skipped while the broker answers
// `request` with `unknown_type` (probed once).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as ringcast from '../ringcast.js';
import { startBroker, mint, sleep, waitFor } from './helpers.mjs';

let broker;
let skip = false;
const clients = [];
const open = async (peer, claims = {}) => { const c = await ringcast.connect(broker.url, { token: mint(peer, claims), logger: null }); clients.push(c); return c; };
before(async () => {
  broker = await startBroker();
  const probe = await open('jrpc-probe');
  const e = await probe.request('nobody-at-all', 1, { timeoutMs: 2000 }).catch((x) => x);
  if (!(e instanceof ringcast.PeerNotFound)) skip = `requests/replies (§8.4) not in this broker: it answers ${e?.code ?? e}`;
});
after(async () => { await Promise.allSettled(clients.map((c) => c.close())); await broker.stop(); });
const rpcTest = (name, fn) => test(name, async (t) => (skip ? t.skip(skip) : fn(t)));

rpcTest('request and reply', async () => {
  const seen = [];
  const responder = await open('jrpc-resp-1');
  responder.onRequest(async (req) => { seen.push(req); return { echo: req.data }; });
  const caller = await open('jrpc-call-1', { peerMetadata: { kind: 'agent' } });
  assert.deepEqual(await caller.request('jrpc-resp-1', { q: 1 }, { timeoutMs: 5000 }), { echo: { q: 1 } });
  assert.equal(seen[0].from, 'jrpc-call-1');
  assert.deepEqual(seen[0].fromMetadata, { kind: 'agent' });
  assert.ok(seen[0].timeoutMs > 0 && seen[0].timeoutMs <= 5000);
  responder.onRequest((req) => req.data * 2);
  assert.equal(await caller.request('jrpc-resp-1', 21), 42);
});

rpcTest('streamed reply', async () => {
  const responder = await open('jrpc-resp-2');
  responder.onRequest(async function* (req) { for (let i = 0; i < req.data; i++) yield { chunk: i }; });
  const caller = await open('jrpc-call-2');
  const chunks = [];
  for await (const c of caller.requestStream('jrpc-resp-2', 3, { timeoutMs: 5000 })) chunks.push(c);
  assert.deepEqual(chunks, [{ chunk: 0 }, { chunk: 1 }, { chunk: 2 }]);
  assert.equal(await caller.request('jrpc-resp-2', 2), null);
});

rpcTest('errors: peer not found, handler throws, timeout', async () => {
  const caller = await open('jrpc-call-3');
  await assert.rejects(caller.request('jrpc-nobody', 1), ringcast.PeerNotFound);
  const responder = await open('jrpc-resp-3');
  const reqs = [];
  responder.onRequest(async (req) => { reqs.push(req); if (req.data === 'boom') throw new Error('boom'); await sleep(10000, req.signal); });
  assert.deepEqual(await caller.request('jrpc-resp-3', 'boom'), { error: 'Error: boom' });
  await assert.rejects(caller.request('jrpc-resp-3', 'slow', { timeoutMs: 300 }), ringcast.RequestTimeout);
  await waitFor(() => reqs[1]?.signal.aborted);
  assert.equal(reqs[1].cancelReason, 'timeout');
});

rpcTest('cancel: AbortSignal and leaving a stream', async () => {
  const reqs = [];
  const responder = await open('jrpc-resp-4');
  responder.onRequest(async function* (req) { reqs.push(req); yield 'first'; await sleep(10000, req.signal); yield 'never'; });
  const caller = await open('jrpc-call-4');
  const ac = new AbortController();
  const p = caller.request('jrpc-resp-4', 1, { timeoutMs: 10000, signal: ac.signal });
  await waitFor(() => reqs.length === 1);
  ac.abort();
  await assert.rejects(p, (e) => e.name === 'AbortError');
  await waitFor(() => reqs[0].signal.aborted);
  assert.equal(reqs[0].cancelReason, 'cancelled');
  for await (const chunk of caller.requestStream('jrpc-resp-4', 2, { timeoutMs: 10000 })) { assert.equal(chunk, 'first'); break; }
  await waitFor(() => reqs[1]?.signal.aborted);
  assert.equal(reqs[1].cancelReason, 'cancelled');
});

rpcTest('requester gone', async () => {
  const reqs = [];
  const responder = await open('jrpc-resp-5');
  responder.onRequest(async (req) => { reqs.push(req); await sleep(10000, req.signal); });
  const caller = await open('jrpc-call-5');
  const p = caller.request('jrpc-resp-5', 1, { timeoutMs: 10000 }).catch((e) => e);
  await waitFor(() => reqs.length === 1);
  await caller.close();
  assert.ok((await p) instanceof ringcast.RequestCancelled);
  await waitFor(() => reqs[0].signal.aborted);
  assert.equal(reqs[0].cancelReason, 'requester_gone');
});

rpcTest('responder gone mid-stream', async () => {
  const responder = await open('jrpc-resp-6');
  responder.onRequest(async function* (req) { yield 'partial'; await sleep(10000, req.signal); });
  const caller = await open('jrpc-call-6');
  const got = [];
  await assert.rejects((async () => {
    for await (const chunk of caller.requestStream('jrpc-resp-6', 1, { timeoutMs: 10000 })) { got.push(chunk); await responder.close(); }
  })(), ringcast.ResponderGone);
  assert.deepEqual(got, ['partial']);
});

rpcTest('the first connection to reply takes the request', async () => {
  const slowReqs = [];
  const fast = await open('jrpc-worker');
  const slow = await open('jrpc-worker');
  fast.onRequest(() => 'fast');
  slow.onRequest(async (req) => { slowReqs.push(req); await sleep(10000, req.signal); });
  const caller = await open('jrpc-call-7');
  assert.equal(await caller.request('jrpc-worker', 1, { timeoutMs: 5000 }), 'fast');
  await waitFor(() => slowReqs[0]?.signal.aborted);
  assert.equal(slowReqs[0].cancelReason, 'taken');
});
