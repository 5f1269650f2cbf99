// Compatibility check: Metered's published JS SDK (@metered-ca/realtime, unmodified)
// against a running ringcast broker.
//
// Driven by tests/test_compat_node_sdk.py, which starts the broker, mints the tokens and
// passes everything in one JSON document through the RINGCAST_COMPAT environment variable:
//   {
//     "origin":  "ws://127.0.0.1:PORT",        // SDK `url` option: origin only, SDK appends /v1
//     "channel": "room-…",
//     "tokens":  {"alice": "<jwt>", "bob": "<jwt>"},
//     "expect":  {"aliceExp": <unix s>, "alicePeerMetadata": {…}, "bobPeerMetadata": {…},
//                 "aliceIceServers": [...]},
//     "badToken": "<jwt signed with the wrong secret>",
//     "expiredToken": "<jwt whose exp is in the past>",
//     "apiKey": "pk_live_…", "publicChannel": "public/…",  // optional: publishable-key path
//     "history": {                                         // optional: protocol.md 8.1
//       "channel": "h/…",  "plainChannel": "p/…",          // with / without history
//       "tokens": {"carol": "<jwt>", "raw": "<jwt>"}       // SDK client, raw `ws` client
//     }
//   }
//
// The SDK is configured, never patched: Node 20 has no global WebSocket, so the
// documented `webSocketFactory` option hands it the `ws` package's client.
//
// Prints one line per check ("ok - …" / "not ok - …") and exits 0 only if every check
// passed. Every wait is bounded; a watchdog kills the whole run after HARD_LIMIT_MS.

import { SignallingClient, SignallingConnectError } from "@metered-ca/realtime";
import WebSocket from "ws";

const HARD_LIMIT_MS = Number(process.env.SDK_CHECK_HARD_LIMIT_MS ?? 45_000);
const STEP_TIMEOUT_MS = 5_000;

const watchdog = setTimeout(() => {
  console.log(`not ok - watchdog: whole check exceeded ${HARD_LIMIT_MS} ms`);
  process.exit(2);
}, HARD_LIMIT_MS);

const cfg = JSON.parse(process.env.RINGCAST_COMPAT ?? "null");
if (!cfg) {
  console.log("not ok - RINGCAST_COMPAT environment variable missing");
  process.exit(2);
}

let passed = 0;
let failed = 0;
const clients = [];

function ok(name) {
  passed += 1;
  console.log(`ok - ${name}`);
}

class CheckFailed extends Error {}

function check(cond, name, detail) {
  if (cond) {
    ok(name);
    return;
  }
  failed += 1;
  const msg = `not ok - ${name}${detail === undefined ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}`;
  console.log(msg);
  throw new CheckFailed(msg);
}

function deepEqual(a, b) {
  return JSON.stringify(canon(a)) === JSON.stringify(canon(b));
}
function canon(v) {
  if (Array.isArray(v)) return v.map(canon);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])]));
  }
  return v;
}

// Records every event a client emits, so a check can wait for one that matches.
class Recorder {
  constructor(label, client) {
    this.label = label;
    this.client = client;
    this.events = [];
    this.waiters = [];
    for (const ev of ["connected", "disconnected", "message", "direct", "presence", "server-error", "going-away"]) {
      client.on(ev, (payload) => this.push(ev, payload));
    }
  }
  push(ev, payload) {
    this.events.push({ ev, payload });
    for (const w of [...this.waiters]) {
      if (w.ev === ev && w.pred(payload)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(payload);
      }
    }
  }
  all(ev) {
    return this.events.filter((e) => e.ev === ev).map((e) => e.payload);
  }
  // Resolves with the first (already recorded or future) event `ev` matching `pred`.
  waitFor(ev, pred = () => true, what = ev, timeoutMs = STEP_TIMEOUT_MS) {
    const seen = this.events.find((e) => e.ev === ev && pred(e.payload));
    if (seen) return Promise.resolve(seen.payload);
    return new Promise((resolve, reject) => {
      const w = { ev, pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(
          new Error(
            `${this.label}: no '${what}' within ${timeoutMs} ms; recorded: ${JSON.stringify(this.events)}`,
          ),
        );
      }, timeoutMs);
      this.waiters.push(w);
    });
  }
}

function makeClient(token, extra = {}) {
  const client = new SignallingClient({
    url: cfg.origin,
    tokenProvider: async () => token,
    webSocketFactory: (u) => new WebSocket(u),
    // An unexpected drop must fail the check, not be papered over by a reconnect.
    reconnect: false,
    ...extra,
  });
  clients.push(client);
  return client;
}

async function step(name, promise) {
  try {
    const v = await promise;
    ok(name);
    return v;
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    check(false, name, `${err?.name ?? "Error"}: ${err?.message ?? String(err)}`);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A raw `ws` client (no SDK) that queues every text frame, for checks on the exact wire.
function openRaw(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const frames = [];
    const waiters = [];
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? null : data.toString("utf8");
      frames.push(text);
      while (waiters.length && frames.length) waiters.shift()(frames.shift());
    });
    ws.on("error", reject);
    ws.on("open", () =>
      resolve({
        ws,
        send: (obj) => ws.send(typeof obj === "string" ? obj : JSON.stringify(obj)),
        // Next text frame, raw (string); rejects after STEP_TIMEOUT_MS.
        nextText: () =>
          frames.length
            ? Promise.resolve(frames.shift())
            : withTimeout(new Promise((r) => waiters.push(r)), STEP_TIMEOUT_MS, "raw frame"),
        close: () => ws.close(),
      }),
    );
  });
}

// Next raw frame of type `type` (presence frames in between are skipped), parsed.
async function rawNext(raw, type) {
  for (;;) {
    const m = JSON.parse(await raw.nextText());
    if (m.type === type) return m;
    if (m.type !== "presence") throw new Error(`raw: expected ${type}, got ${JSON.stringify(m)}`);
  }
}

async function historyChecks(h) {
  // Metered's SDK on a history channel: the subscribe/publish acks carry epoch/offset and
  // every message carries offset on the wire; the SDK's callbacks see channel/from/data.
  const carol = makeClient(h.tokens.carol);
  const c = new Recorder("carol", carol);
  await step("history: SDK connects", withTimeout(carol.connect(), STEP_TIMEOUT_MS, "carol.connect()"));
  await step(
    "history: SDK subscribe to a history channel acked",
    withTimeout(carol.subscribe(h.channel), STEP_TIMEOUT_MS, "carol.subscribe(history)"),
  );
  await step("history: SDK presence snapshot", c.waitFor("presence", (p) => p.channel === h.channel, "snapshot"));
  const raw = await step("history: raw client connects", openRaw(`${cfg.origin}/v1?token=${h.tokens.raw}`));
  check(JSON.parse(await raw.nextText()).type === "welcome", "history: raw welcome");
  raw.send({ type: "subscribe", channel: h.channel, requestId: "s1" });
  const ack = await rawNext(raw, "ack");
  check(typeof ack.epoch === "string" && ack.offset === 0, "history: raw subscribe ack carries epoch and offset", ack);
  const payload = { x: [1, "two", null], nested: { ok: true } };
  raw.send({ type: "publish", channel: h.channel, data: payload, requestId: "p1" });
  const pack = await rawNext(raw, "ack");
  check(deepEqual(pack, { type: "ack", requestId: "p1", offset: 1 }), "history: raw publish ack carries offset", pack);
  const m1 = await step("history: SDK receives the message", c.waitFor("message", (m) => m.from === "raw-js", "message from raw-js"));
  check(
    m1.channel === h.channel && m1.from === "raw-js" && deepEqual(m1.data, payload),
    "history: SDK message callback sees channel/from/data unchanged",
    m1,
  );
  await step(
    "history: SDK publish on a history channel acked",
    withTimeout(carol.publish(h.channel, "from-sdk"), STEP_TIMEOUT_MS, "carol.publish(history)"),
  );
  const wire = await rawNext(raw, "message");
  check(
    deepEqual(wire, { type: "message", channel: h.channel, from: "carol", data: "from-sdk", offset: 2 }),
    "history: message carries offset on the wire",
    wire,
  );
  // A plain channel of the same app: the raw frames are the Metered ones, byte for byte.
  raw.send({ type: "subscribe", channel: h.plainChannel, requestId: "s2" });
  const plainAck = await raw.nextText();
  check(plainAck === '{"type":"ack","requestId":"s2"}', "plain channel: subscribe ack is exactly the Metered ack", plainAck);
  await rawNext(raw, "presence");
  await step(
    "plain channel: SDK subscribe acked",
    withTimeout(carol.subscribe(h.plainChannel), STEP_TIMEOUT_MS, "carol.subscribe(plain)"),
  );
  await step(
    "plain channel: SDK publish acked",
    withTimeout(carol.publish(h.plainChannel, { p: 1 }), STEP_TIMEOUT_MS, "carol.publish(plain)"),
  );
  let text;
  for (;;) {
    text = await raw.nextText();
    if (JSON.parse(text).type !== "presence") break;
  }
  check(
    text === `{"type":"message","channel":${JSON.stringify(h.plainChannel)},"from":"carol","data":{"p":1}}`,
    "plain channel frames carry no extension field",
    text,
  );
  raw.send({ type: "publish", channel: h.plainChannel, data: 7, requestId: "p2" });
  // carol's `joined` comes from the channel's owner shard and her message straight from her
  // shard: two queues, so the event may arrive after the message (protocol §5 orders
  // presence events among themselves, not against publications). Skip it here too.
  let plainPack;
  for (;;) {
    plainPack = await raw.nextText();
    if (JSON.parse(plainPack).type !== "presence") break;
  }
  check(plainPack === '{"type":"ack","requestId":"p2"}', "plain channel: publish ack is exactly the Metered ack", plainPack);
  const m2 = await step("plain channel: SDK receives the message", c.waitFor("message", (m) => m.channel === h.plainChannel));
  check(m2.from === "raw-js" && m2.data === 7, "plain channel: SDK message intact", m2);
  check(c.all("server-error").length === 0, "history: no uncorrelated server errors", c.all("server-error"));
  raw.close();
  await step("history: SDK close", withTimeout(carol.close(), STEP_TIMEOUT_MS, "carol.close"));
}

async function main() {
  const { channel, tokens, expect } = cfg;

  // --- connect alice -------------------------------------------------------------
  // Short inactivity window: the SDK then sends an app-level {"type":"ping"} after
  // ~1 s of silence and drops the socket (code 4000) if nothing arrives within 3 s.
  const alice = makeClient(tokens.alice, { inactivityTimeoutMs: 3_000 });
  const a = new Recorder("alice", alice);
  const nowS = Math.floor(Date.now() / 1000);
  await step("alice connects with ?token=", withTimeout(alice.connect(), STEP_TIMEOUT_MS, "alice.connect()"));
  check(alice.state === "connected", "alice state is connected", alice.state);
  const aw = await step("alice connected event", a.waitFor("connected"));
  check(aw.peerId === "alice", "welcome.peerId is the token sub", aw);
  check(aw.expiresAt === expect.aliceExp, "welcome.expiresAt is the token exp", aw);
  check(
    typeof aw.serverTime === "number" && Math.abs(aw.serverTime - nowS) <= 60,
    "welcome.serverTime is a current unix-seconds number",
    aw,
  );
  check(Number.isInteger(aw.maxMessageSize) && aw.maxMessageSize > 0, "welcome.maxMessageSize is a positive integer", aw);
  check(aw.isReconnect === false, "first welcome is not a reconnect", aw);
  check(
    deepEqual(aw.iceServers, expect.aliceIceServers),
    "welcome.metadata passed through (SDK reads metadata.iceServers)",
    { got: aw.iceServers, want: expect.aliceIceServers },
  );

  // --- alice subscribes: ack + empty presence snapshot ----------------------------
  await step(
    "alice subscribe acked",
    withTimeout(alice.subscribe(channel, { includeSenderMetadata: true }), STEP_TIMEOUT_MS, "alice.subscribe"),
  );
  const snapA = await step("alice presence snapshot", a.waitFor("presence", (p) => p.channel === channel, "presence snapshot"));
  check(
    Array.isArray(snapA.joined) && snapA.joined.length === 0 && Array.isArray(snapA.left) && snapA.left.length === 0,
    "alice snapshot is empty (only subscriber, self excluded)",
    snapA,
  );

  // --- keep-alive: stay idle past the SDK's inactivity window ---------------------
  await sleep(4_000);
  check(
    alice.state === "connected" && a.all("disconnected").length === 0,
    "idle connection survives the SDK's 3 s inactivity watchdog (app-level ping answered)",
    { state: alice.state, disconnected: a.all("disconnected") },
  );

  // --- connect bob, subscribe: snapshot lists alice, alice sees bob join -----------
  const bob = makeClient(tokens.bob);
  const b = new Recorder("bob", bob);
  await step("bob connects", withTimeout(bob.connect(), STEP_TIMEOUT_MS, "bob.connect()"));
  const bw = await step("bob connected event", b.waitFor("connected"));
  check(bw.peerId === "bob", "bob welcome.peerId", bw);
  check(bw.iceServers === undefined, "no metadata claim -> no iceServers", bw);
  await step("bob subscribe acked", withTimeout(bob.subscribe(channel), STEP_TIMEOUT_MS, "bob.subscribe"));
  const snapB = await step("bob presence snapshot", b.waitFor("presence", (p) => p.channel === channel, "presence snapshot"));
  check(
    deepEqual(snapB.joined, [{ peerId: "alice", metadata: expect.alicePeerMetadata }]) && snapB.left.length === 0,
    "bob snapshot lists alice with her peerMetadata",
    snapB,
  );
  const joinedB = await step(
    "alice sees bob join",
    a.waitFor("presence", (p) => p.channel === channel && p.joined.some((j) => j.peerId === "bob"), "presence joined bob"),
  );
  check(
    deepEqual(joinedB.joined, [{ peerId: "bob", metadata: expect.bobPeerMetadata }]) && joinedB.left.length === 0,
    "presence joined carries bob's peerMetadata",
    joinedB,
  );

  // --- publish bob -> alice (alice opted into sender metadata) --------------------
  const payload1 = { text: "hello from bob", n: 1, nested: { ok: true }, list: [1, "two", null] };
  await step("bob publish acked", withTimeout(bob.publish(channel, payload1), STEP_TIMEOUT_MS, "bob.publish"));
  const m1 = await step("alice receives bob's message", a.waitFor("message", (m) => m.from === "bob", "message from bob"));
  check(m1.channel === channel && deepEqual(m1.data, payload1), "message channel and data intact", m1);
  check(deepEqual(m1.fromMetadata, expect.bobPeerMetadata), "includeSenderMetadata subscriber gets fromMetadata", m1);

  // --- publish alice -> bob (bob did not opt in) ----------------------------------
  await step("alice publish acked", withTimeout(alice.publish(channel, "plain string"), STEP_TIMEOUT_MS, "alice.publish"));
  const m2 = await step("bob receives alice's message", b.waitFor("message", (m) => m.from === "alice", "message from alice"));
  check(m2.channel === channel && m2.data === "plain string", "string data intact", m2);
  check(m2.fromMetadata === undefined, "no fromMetadata without includeSenderMetadata", m2);

  // --- direct alice -> bob --------------------------------------------------------
  const dm = { secret: "psst", at: 42 };
  await step("alice send acked", withTimeout(alice.send("bob", dm), STEP_TIMEOUT_MS, "alice.send"));
  const d1 = await step("bob receives direct", b.waitFor("direct", (d) => d.from === "alice", "direct from alice"));
  check(deepEqual(d1.data, dm), "direct data intact", d1);
  check(deepEqual(d1.fromMetadata, expect.alicePeerMetadata), "direct carries sender peerMetadata", d1);

  // --- correlated error: send to an offline peer -----------------------------------
  let sendErr = null;
  try {
    await withTimeout(alice.send("nobody-online", { x: 1 }), STEP_TIMEOUT_MS, "alice.send(nobody)");
  } catch (err) {
    sendErr = err;
  }
  check(sendErr !== null && sendErr.name === "peer_not_found", "send to offline peer rejects with peer_not_found", {
    name: sendErr?.name,
    message: sendErr?.message,
  });
  check(alice.state === "connected", "connection survives a correlated error", alice.state);

  // --- publishers never receive their own messages --------------------------------
  check(b.all("message").every((m) => m.from !== "bob"), "bob did not receive his own publish", b.all("message"));
  check(a.all("message").every((m) => m.from !== "alice"), "alice did not receive her own publish", a.all("message"));

  // --- bob leaves: alice sees presence left ---------------------------------------
  await step("bob close", withTimeout(bob.close(), STEP_TIMEOUT_MS, "bob.close"));
  const leftB = await step(
    "alice sees bob leave",
    a.waitFor("presence", (p) => p.channel === channel && p.left.some((l) => l.peerId === "bob"), "presence left bob"),
  );
  check(leftB.joined.length === 0 && leftB.left.length === 1, "presence left frame shape", leftB);

  // --- credential failures surface as SignallingConnectError with the close code ---
  for (const [name, tok, code] of [
    ["bad signature", cfg.badToken, 4001],
    ["expired", cfg.expiredToken, 4002],
  ]) {
    const c = makeClient(tok);
    let err = null;
    try {
      await withTimeout(c.connect(), STEP_TIMEOUT_MS, `connect(${name})`);
    } catch (e) {
      err = e;
    }
    check(
      err instanceof SignallingConnectError && err.closeCode === code,
      `${name} token: connect() rejects with close code ${code}`,
      { name: err?.name, closeCode: err?.closeCode, message: err?.message },
    );
  }

  // --- publishable key: ?key=, server-assigned UUID peerId, expiresAt null ----------
  // The JS SDK drops a welcome whose expiresAt key is absent (it must be null).
  if (cfg.apiKey) {
    const pub = new SignallingClient({
      url: cfg.origin,
      apiKey: cfg.apiKey,
      webSocketFactory: (u) => new WebSocket(u),
      reconnect: false,
    });
    clients.push(pub);
    const p = new Recorder("pk", pub);
    await step("publishable key connects with ?key=", withTimeout(pub.connect(), STEP_TIMEOUT_MS, "pk.connect()"));
    const pw = await step("publishable key connected event", p.waitFor("connected"));
    check(pw.expiresAt === null, "publishable key: welcome.expiresAt is null", pw);
    check(
      /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(pw.peerId),
      "publishable key: server-assigned UUID peerId",
      pw,
    );
    await step(
      "publishable key subscribe acked",
      withTimeout(pub.subscribe(cfg.publicChannel), STEP_TIMEOUT_MS, "pk.subscribe"),
    );
    const ps = await step(
      "publishable key presence snapshot",
      p.waitFor("presence", (x) => x.channel === cfg.publicChannel, "presence snapshot"),
    );
    check(ps.joined.length === 0 && ps.left.length === 0, "publishable key snapshot empty", ps);
    await step("publishable key close", withTimeout(pub.close(), STEP_TIMEOUT_MS, "pk.close"));
  }

  if (cfg.history) await historyChecks(cfg.history);

  check(
    a.all("server-error").length === 0 && b.all("server-error").length === 0,
    "no uncorrelated server errors",
    { alice: a.all("server-error"), bob: b.all("server-error") },
  );
  await step("alice close", withTimeout(alice.close(), STEP_TIMEOUT_MS, "alice.close"));
}

let exitCode = 0;
try {
  await main();
} catch (err) {
  exitCode = 1;
  if (!(err instanceof CheckFailed)) {
    failed += 1;
    console.log(`not ok - unexpected exception: ${err?.stack ?? err}`);
  }
}
for (const c of clients) {
  try {
    await withTimeout(c.close(), 2_000, "close");
  } catch {
    /* best effort */
  }
}
clearTimeout(watchdog);
console.log(`sdk_check: ${passed} checks ok, ${failed} failed`);
process.exit(failed === 0 && exitCode === 0 ? 0 : 1);
