// Test harness of the JS client: starts the real broker (target/release/ringcast, or
// $RINGCAST_BIN) with a temp TOML config like tests/helpers.py does, mints HS256 tokens with
// node:crypto, and talks to the REST API with fetch.
import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.RINGCAST_BIN || join(REPO, 'target/release/ringcast');

export const KEY_ID = 'sk_id_test1';
export const SECRET = 'sk_secret_abcdefghijklmnopqrstuvwxyz012345';
export const ROOM_KEY_ID = 'sk_id_room1';
export const ROOM_SECRET = 'sk_secret_room_0123456789abcdefghijklmnopq';
export const PK = 'pk_live_test1';
export const GOOD_ORIGIN = 'https://good.example';

export function config({ maxConnections = 1000 } = {}) {
  return `upgrades_per_ip = 0
pending_handshakes_per_ip = 0

[[apps]]
id = "test"
max_connections = ${maxConnections}
[[apps.secret_keys]]
id = "${KEY_ID}"
secret = "${SECRET}"
channel_patterns = ["**"]
actions = ["publish", "subscribe", "presence", "send", "admin"]
[[apps.secret_keys]]
id = "${ROOM_KEY_ID}"
secret = "${ROOM_SECRET}"
channel_patterns = ["room/*"]
[[apps.publishable_keys]]
key = "${PK}"
channel_patterns = ["public/**"]
actions = ["publish", "subscribe", "presence"]
allowed_origins = ["${GOOD_ORIGIN}"]
[[apps.history]]
channels = ["runs/**"]
size = 100
ttl_secs = 600
`;
}

/** Start a broker; resolves {url, rest, stop()}. */
export async function startBroker(cfg = config()) {
  if (!existsSync(BIN)) throw new Error(`broker binary not found at ${BIN} (cargo build --release, or set RINGCAST_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), 'ringcast-js-'));
  const path = join(dir, 'ringcast.toml');
  writeFileSync(path, cfg);
  const proc = spawn(BIN, ['--config', path, '--listen', '127.0.0.1:0', '--shards', '2'], {
    cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RINGCAST_REST_LISTEN: '127.0.0.1:0' },
  });
  let out = '';
  let err = '';
  proc.stderr.on('data', (d) => { err = (err + d).slice(-8000); });
  const ports = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`broker did not start:\n${out}\n${err}`)), 10000);
    let rest = null;
    proc.stdout.on('data', (d) => {
      out += d;
      rest ??= out.match(/ringcast: rest on http:\/\/127\.0\.0\.1:(\d+)/)?.[1];
      const ws = out.match(/ringcast: listening on ws:\/\/127\.0\.0\.1:(\d+)\/v1/)?.[1];
      if (ws) { clearTimeout(timer); res({ ws, rest }); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); rej(new Error(`broker exited ${code}:\n${out}\n${err}`)); });
  });
  proc.stdout.resume();
  return {
    url: `ws://127.0.0.1:${ports.ws}/v1`,
    rest: `http://127.0.0.1:${ports.rest}`,
    async stop() {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

/** An HS256 JWT for `peer` (channels default ["**"]); `expIn` seconds. */
export function mint(peer, { keyId = KEY_ID, secret = SECRET, expIn = 3600, ...claims } = {}) {
  const payload = { sub: peer, exp: Math.floor(Date.now() / 1000 + expIn), channels: ['**'], ...claims };
  const head = b64url({ alg: 'HS256', typ: 'JWT', kid: keyId }) + '.' + b64url(payload);
  return head + '.' + createHmac('sha256', secret).update(head).digest('base64url');
}

export const chan = (prefix = 'c') => `${prefix}/${randomUUID().slice(0, 10)}`;
/** Resolves after `ms`, or at once when `signal` aborts (a responder's `req.signal`). */
export const sleep = (ms, signal) => new Promise((r) => {
  const t = setTimeout(r, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); r(); });
});

export async function waitFor(pred, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await sleep(20);
  }
}

export async function rest(broker, method, path) {
  const r = await fetch(broker.rest + path, { method, headers: { Authorization: `Bearer ${KEY_ID}:${SECRET}` } });
  return { status: r.status, json: await r.json().catch(() => null) };
}

/** The `ws` package's WebSocket when it is installed (tests/compat/node_modules, installed by
 * scripts/test.sh, or $RINGCAST_WS_MODULE = a path to the package), else null. */
export async function wsPackage() {
  const { pathToFileURL } = await import('node:url');
  const dir = process.env.RINGCAST_WS_MODULE || join(REPO, 'tests/compat/node_modules/ws');
  if (!existsSync(join(dir, 'wrapper.mjs'))) return null;
  return (await import(pathToFileURL(join(dir, 'wrapper.mjs')).href)).WebSocket;
}
