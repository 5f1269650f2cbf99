// Cluster compatibility (protocol §9): Metered's published JS SDK (@metered-ca/realtime,
// unmodified) as "bob" on one ringcast node, talking to "alice" (Metered's Python SDK, driven
// by tests/test_cluster_sdks.py) on another node. Configuration in RINGCAST_CLUSTER (JSON):
//   {"origin": "ws://127.0.0.1:PORT", "channel": "…", "token": "<bob's jwt>"}
// bob connects, subscribes, waits until alice is on the roster, publishes "from-js", waits
// for alice's "from-py" message and direct, sends alice a direct, then closes. Prints one
// "ok - …" / "not ok - …" line per step and exits 0 only if every step passed; every wait is
// bounded and a watchdog ends the run.

import { SignallingClient } from "@metered-ca/realtime";
import WebSocket from "ws";

const STEP_MS = 10_000;
const watchdog = setTimeout(() => {
  console.log("not ok - watchdog: the check exceeded 60 s");
  process.exit(2);
}, 60_000);

const cfg = JSON.parse(process.env.RINGCAST_CLUSTER ?? "null");
const events = [];
const waiters = [];

function waitFor(ev, pred, what) {
  const seen = events.find((e) => e.ev === ev && pred(e.payload));
  if (seen) return Promise.resolve(seen.payload);
  return new Promise((resolve, reject) => {
    const w = { ev, pred, resolve };
    w.timer = setTimeout(() => reject(new Error(`no ${what} within ${STEP_MS} ms: ${JSON.stringify(events)}`)), STEP_MS);
    waiters.push(w);
  });
}

async function step(name, promise) {
  try {
    const v = await promise;
    console.log(`ok - ${name}`);
    return v;
  } catch (err) {
    console.log(`not ok - ${name}: ${err?.name ?? "Error"}: ${err?.message ?? String(err)}`);
    process.exit(1);
  }
}

const bob = new SignallingClient({
  url: cfg.origin,
  tokenProvider: async () => cfg.token,
  webSocketFactory: (u) => new WebSocket(u),
  reconnect: false,
});
for (const ev of ["message", "direct", "presence", "server-error"]) {
  bob.on(ev, (payload) => {
    events.push({ ev, payload });
    for (const w of [...waiters]) {
      if (w.ev === ev && w.pred(payload)) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(payload);
      }
    }
  });
}

const present = (p) => p.channel === cfg.channel && p.joined.some((j) => j.peerId === "alice");
await step("bob connects to his node", bob.connect());
await step("bob subscribes", bob.subscribe(cfg.channel));
await step("alice (other node) on bob's roster", waitFor("presence", present, "alice on the roster"));
await step("bob publishes (acked)", bob.publish(cfg.channel, { text: "from-js" }));
const m = await step("bob receives alice's message from the other node", waitFor("message", (x) => x.from === "alice", "alice's message"));
if (m.channel !== cfg.channel || m.data?.text !== "from-py") {
  console.log(`not ok - message intact: ${JSON.stringify(m)}`);
  process.exit(1);
}
const d = await step("bob receives alice's direct from the other node", waitFor("direct", (x) => x.from === "alice", "alice's direct"));
if (d.data?.dm !== "py") {
  console.log(`not ok - direct intact: ${JSON.stringify(d)}`);
  process.exit(1);
}
await step("bob sends alice a direct (acked: she is on another node)", bob.send("alice", { dm: "js" }));
let err = null;
try {
  await bob.send("nobody-on-any-node", 1);
} catch (e) {
  err = e;
}
if (err?.name !== "peer_not_found") {
  console.log(`not ok - send to a peer on no node: ${err?.name} ${err?.message}`);
  process.exit(1);
}
console.log("ok - send to a peer on no node rejects with peer_not_found");
if (events.some((e) => e.ev === "server-error")) {
  console.log(`not ok - server errors: ${JSON.stringify(events)}`);
  process.exit(1);
}
await step("bob closes", bob.close());
clearTimeout(watchdog);
console.log("ok - done");
process.exit(0);
