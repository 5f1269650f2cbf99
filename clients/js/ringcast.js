// ringcast.js: the JavaScript client of the ringcast realtime broker (Metered protocol + extensions).
//
// One ES module, no dependencies, no build step. It uses the global WebSocket (browsers, Deno,
// Node >= 22; Node 20 with --experimental-websocket) or the one given as `options.WebSocket`
// (e.g. the `ws` package).
//
// Layout: `Client` owns one socket. Its message listener dispatches every frame; commands that
// expect an answer carry a requestId mapped to a pending promise (`#pending`); when the socket
// drops the client reconnects with backoff and resubscribes (with `since` for resuming
// subscriptions). Every client-side buffer is bounded (`Queue`): when full, the oldest item is
// dropped, counted (`dropped`) and logged, so one slow consumer never stalls the others.

/** Default bound of every client-side buffer (one subscription, direct messages, one reply stream). */
export const DEFAULT_BUFFER = 1000;

// -- errors ------------------------------------------------------------------------------------

export class RingcastError extends Error {
  constructor(message) { super(message); this.name = new.target.name; }
}
/** An `error` frame answering a command. */
export class ServerError extends RingcastError {
  /** @param {string} code @param {string} [message] */
  constructor(code, message = '') { super(message ? `${code}: ${message}` : code); this.code = code; this.serverMessage = message; }
}
export class PeerNotFound extends ServerError {}
export class RequestTimeout extends ServerError {}
export class ResponderGone extends ServerError {}
export class RequestNotFound extends ServerError {}
/** A request in flight ended without an answer here: `reason` is `connection_lost` or `closed`. */
export class RequestCancelled extends RingcastError {
  constructor(reason) { super(`request cancelled: ${reason}`); this.reason = reason; }
}
/** The client was closed with `close()`. */
export class ClientClosed extends RingcastError {}
/** The socket was closed with `code` (protocol §6). */
export class ConnectionClosed extends RingcastError {
  constructor(code, reason = '') { super(`connection closed ${code}${reason ? ` (${reason})` : ''}`); this.code = code; this.reason = reason; }
}
export class ConnectionLost extends ConnectionClosed {}
export class InvalidToken extends ConnectionClosed {}
export class TokenExpired extends ConnectionClosed {}
export class ChannelsNotAuthorized extends ConnectionClosed {}
export class SlowConsumer extends ConnectionClosed {}
export class ConnectionCapReached extends ConnectionClosed {}
export class RateLimited extends ConnectionClosed {}
export class Kicked extends ConnectionClosed {}

const ERRORS = { peer_not_found: PeerNotFound, request_timeout: RequestTimeout, responder_gone: ResponderGone, request_not_found: RequestNotFound };
const CLOSES = { 4001: InvalidToken, 4002: TokenExpired, 4003: ChannelsNotAuthorized, 4008: SlowConsumer, 4010: ConnectionCapReached, 4011: RateLimited, 4020: Kicked };
/** Close codes after which the client never reconnects (4002 too, unless `token` is a function). */
export const FATAL_CODES = new Set([4001, 4003, 4020]);

const serverError = (f) => new (ERRORS[f.code] || ServerError)(String(f.code ?? 'unknown'), String(f.message ?? ''));
const closeError = (code, reason) => new (CLOSES[code] || ConnectionLost)(code ?? 1006, reason || '');

// -- bounded queue -----------------------------------------------------------------------------

const END = Symbol('end');

class Queue {
  constructor(max, what, logger) { this.items = []; this.max = Math.max(1, max); this.what = what; this.logger = logger; this.waiters = []; this.end = null; this.dropped = 0; }
  put(item) {
    if (this.end) return;
    if (this.items.length >= this.max) {
      this.items.shift();
      this.dropped++;
      if ((this.dropped & (this.dropped - 1)) === 0) this.logger?.warn?.(`ringcast: ${this.what} buffer full (${this.max}): dropped ${this.dropped} oldest so far`);
    }
    this.items.push(item);
    this.#wake();
  }
  /** End the queue: normally (no argument) or with an error to throw. */
  finish(err) { if (!this.end) { this.end = err ?? END; this.#wake(); } }
  #wake() { for (const w of this.waiters.splice(0)) w(); }
  /** @param {number} [timeoutMs] @returns {Promise<any>} resolves END once ended normally */
  async get(timeoutMs) {
    for (;;) {
      if (this.items.length) return this.items.shift();
      if (this.end === END) return END;
      if (this.end) throw this.end;
      await new Promise((resolve, reject) => {
        let timer;
        const w = () => { clearTimeout(timer); resolve(); };
        this.waiters.push(w);
        if (timeoutMs != null) timer = setTimeout(() => { this.waiters.splice(this.waiters.indexOf(w), 1); reject(new TimeoutError()); }, timeoutMs);
      });
    }
  }
  async *iterate() { for (;;) { const v = await this.get(); if (v === END) return; yield v; } }
}

/** A wait that ran out of time (an ack, `get(timeout)`). */
export class TimeoutError extends RingcastError { constructor(m = 'timed out') { super(m); } }

/** The §1 channel glob as a RegExp: `*` any run without `/`, `**` any run, `\*` `\\` literal. */
function globRegExp(pattern) {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\' && i + 1 < pattern.length) out += pattern[++i].replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    else if (c === '*' && pattern[i + 1] === '*') { out += '[\\s\\S]*'; i++; }
    else if (c === '*') out += '[^/]*';
    else out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`^${out}$`);
}

const peersOf = (list) => Object.fromEntries((list || []).map((p) => [p.peerId, p.metadata ?? null]));

/**
 * @typedef {{channel: string, from: string, data: any, offset: number|null, fromMetadata: object|null}} Message
 * @typedef {{from: string, data: any, fromMetadata: object|null}} Direct
 * @typedef {{channel: string, joined: Object<string, object|null>, left: Object<string, object|null>}} Presence
 * @typedef {{epoch: string, offset: number, messages: Message[]}} History
 * @typedef {{from: string, data: any, timeoutMs: number|null, replyTo: string, fromMetadata: object|null,
 *            signal: AbortSignal, cancelReason: string|null}} IncomingRequest
 */

// -- subscriptions -----------------------------------------------------------------------------

/** One subscription: an async iterable of {@link Message}. */
export class Subscription {
  constructor(client, channel, o) {
    this.client = client;
    this.channel = channel;
    this.pattern = !!o.pattern;
    this.group = o.group ?? null;
    this.includeSenderMetadata = !!o.includeSenderMetadata;
    this.resume = o.resume;
    /** @type {((p: Presence) => void) | null} */
    this.onPresence = o.onPresence ?? null;
    /** @type {string|null} */ this.epoch = null;
    /** @type {number|null} */ this.offset = null;
    /** @type {boolean|null} answer of the last subscribe that asked to resume */ this.recovered = null;
    /** @type {Object<string, object|null>} the live roster, peerId -> metadata */ this.peers = {};
    this.own = new Set(); // offsets this connection published (never delivered back to it)
    this.regex = this.pattern ? globRegExp(channel) : null;
    this.queue = new Queue(o.buffer, `subscription ${channel}`, client.logger);
  }
  /** Messages dropped because the buffer was full. */
  get dropped() { return this.queue.dropped; }
  [Symbol.asyncIterator]() { return this.queue.iterate(); }
  /** The next message; throws ClientClosed once ended, TimeoutError after `timeoutMs`. @returns {Promise<Message>} */
  async get(timeoutMs) { const v = await this.queue.get(timeoutMs); if (v === END) throw new ClientClosed('subscription ended'); return v; }
  /** Leave the channel (or pattern); iteration ends after the buffered messages. */
  unsubscribe() { return this.client._unsubscribe(this); }

  _frame(since) {
    const f = { type: 'subscribe', channel: this.channel };
    if (this.pattern) f.pattern = true;
    if (this.group != null) f.group = this.group;
    if (this.includeSenderMetadata) f.includeSenderMetadata = true;
    if (since) { f.since = { epoch: since[0], offset: since[1] }; [this.epoch, this.offset] = since; }
    return f;
  }
  _onAck(ack, since) {
    this.peers = {}; // the snapshot that follows is the whole roster
    if (!('epoch' in ack)) return;
    const last = ack.offset ?? 0;
    if (!since) { this.offset = last; this.recovered = null; }
    else {
      this.recovered = ack.recovered ?? null;
      if (ack.epoch !== since[0]) { this.offset = 0; this.own.clear(); } // new epoch: the replay is every retained message
      else if (this.offset == null || this.offset > last) this.offset = last; // ahead: live resumes after last
    }
    this.epoch = ack.epoch;
    this.client._positions.set(this.channel, [this.epoch, this.offset]);
  }
  _onMessage(f) {
    const offset = f.offset ?? null;
    if (offset != null && !this.pattern) {
      if (this.offset != null && offset <= this.offset) return; // already delivered
      this.offset = offset;
      this._advance();
    }
    this.queue.put({ channel: f.channel ?? this.channel, from: f.from ?? '', data: f.data, offset, fromMetadata: f.fromMetadata ?? null });
  }
  /** This connection published `offset`: never delivered back to it, so the position steps over
   * it once every offset before it was delivered (a resume must not replay it). */
  _published(offset) {
    if (this.offset != null && offset > this.offset) { this.own.add(offset); this._advance(); }
  }
  _advance() {
    while (this.own.delete(this.offset + 1)) this.offset++;
    this.client._positions.set(this.channel, [this.epoch, this.offset]);
  }
  _onPresence(f) {
    const ev = { channel: this.channel, joined: peersOf(f.joined), left: peersOf(f.left) };
    Object.assign(this.peers, ev.joined);
    for (const p of Object.keys(ev.left)) delete this.peers[p];
    try { this.onPresence?.(ev); } catch (e) { this.client.logger?.error?.('ringcast: onPresence failed', e); }
  }
}

// -- the client --------------------------------------------------------------------------------

/**
 * @typedef {object} ConnectOptions
 * @property {string | (() => string | Promise<string>)} [token] a JWT, or a function returning one (called for every reconnect)
 * @property {string} [key] a publishable key (pk_live_…)
 * @property {string} [origin] Origin header (Node implementations only; browsers send their own)
 * @property {any} [WebSocket] a WebSocket constructor (default: globalThis.WebSocket)
 * @property {boolean} [reconnect=true]
 * @property {number} [maxBackoffMs=10000]
 * @property {number} [opTimeoutMs=10000] bound of each wait for an ack
 * @property {number} [buffer=1000] bound of each client-side buffer (drop-oldest)
 * @property {{warn?: Function, info?: Function, error?: Function}|null} [logger=console]
 */

/** Connect and wait for `welcome`. A refusal rejects with the close code's error (InvalidToken…).
 * @param {string} url ws://host:port/v1 (`/v1` is added to an empty path) @param {ConnectOptions} options
 * @returns {Promise<Client>} */
export async function connect(url, options) {
  const c = new Client(url, options);
  await c._start();
  return c;
}

export class Client {
  #pending = new Map(); // requestId -> {resolve, reject, onAck, timer}
  #calls = new Map(); // requestId of a request in flight -> Queue of reply frames
  #serving = new Map(); // replyTo -> {req, controller}
  #subs = new Map(); // (pattern ? 'p:' : 'c:') + channel -> Subscription
  #directs;
  #handler = null;
  #retryAfter = null;
  #rid = 0;
  #closing = false;
  #ready = null; // {promise, resolve} while disconnected
  #closedWaiters = [];
  #wake = null; // ends the reconnect loop's current wait (close() must not leave a timer behind)
  #abortOpen = null; // ends a connection attempt in progress
  #finished = new WeakSet(); // sockets whose end was handled (error and close may both come)

  /** @param {string} url @param {ConnectOptions} o */
  constructor(url, o = {}) {
    if ((o.token == null) === (o.key == null)) throw new TypeError('give exactly one of token or key');
    this.url = url;
    this.options = o;
    this.WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('no WebSocket: pass options.WebSocket (Node 20: the `ws` package, or run with --experimental-websocket)');
    this.reconnect = o.reconnect ?? true;
    this.maxBackoffMs = o.maxBackoffMs ?? 10000;
    this.opTimeoutMs = o.opTimeoutMs ?? 10000;
    this.buffer = o.buffer ?? DEFAULT_BUFFER;
    this.logger = o.logger === undefined ? console : o.logger;
    /** @type {object} */ this.welcome = {};
    /** @type {string|null} */ this.peerId = null;
    /** @type {Error|null} why the client stopped, once it has */ this.error = null;
    this._positions = new Map(); // history channel -> [epoch, offset], for since: 'auto'
    this.#directs = new Queue(this.buffer, 'direct messages', this.logger);
    this.ws = null;
  }

  // -- connection ------------------------------------------------------------------------------

  async #open() {
    const u = new URL(this.url);
    if (u.pathname === '' || u.pathname === '/') u.pathname = '/v1';
    if (this.options.key != null) u.searchParams.set('key', this.options.key);
    else u.searchParams.set('token', typeof this.options.token === 'function' ? await this.options.token() : this.options.token);
    const extra = this.options.origin ? [undefined, { origin: this.options.origin, headers: { Origin: this.options.origin } }] : [];
    return new Promise((resolve, reject) => {
      const ws = new this.WebSocket(u.toString(), ...extra);
      const timer = setTimeout(() => { done(); try { ws.close(); } catch {} reject(new TimeoutError('no welcome in time')); }, this.opTimeoutMs);
      const onMessage = (ev) => {
        done();
        let f;
        try { f = JSON.parse(ev.data); } catch { f = null; }
        if (f?.type === 'welcome') resolve([ws, f]);
        else { ws.close(); reject(new RingcastError(`expected welcome, got ${ev.data}`)); }
      };
      const onClose = (ev) => { done(); reject(closeError(ev.code, ev.reason)); };
      // Some implementations (Node 20's undici) fire only `error` when the connection fails.
      const onError = () => { done(); try { ws.close(); } catch {} reject(new ConnectionLost(1006, 'connection failed')); };
      const done = () => {
        clearTimeout(timer);
        this.#abortOpen = null;
        ws.removeEventListener('message', onMessage);
        ws.removeEventListener('close', onClose);
        ws.removeEventListener('error', onError);
      };
      this.#abortOpen = () => { done(); try { ws.close(); } catch {} reject(new ClientClosed('client closed')); };
      ws.addEventListener('message', onMessage);
      ws.addEventListener('close', onClose);
      ws.addEventListener('error', onError);
    });
  }

  #connected(ws, welcome) {
    this.ws = ws;
    this.welcome = welcome;
    this.peerId = welcome.peerId ?? null;
    ws.addEventListener('message', (ev) => {
      try { this.#dispatch(ev.data); } catch (e) { this.logger?.error?.('ringcast: dispatch failed', e); } // a bug must not end the reader
    });
    ws.addEventListener('close', (ev) => this.#onClose(ws, ev));
    ws.addEventListener('error', () => { try { ws.close(); } catch {} this.#onClose(ws, { code: 1006, reason: 'connection error' }); });
    const r = this.#ready;
    this.#ready = null;
    r?.resolve();
  }

  async _start() { const [ws, welcome] = await this.#open(); this.#connected(ws, welcome); return this; }

  #fatal(code) { return FATAL_CODES.has(code) || (code === 4002 && typeof this.options.token !== 'function'); }

  #onClose(ws, ev) {
    if (ws !== this.ws || this.#finished.has(ws)) return;
    this.#finished.add(ws);
    if (this.#closing) return;
    const err = closeError(ev.code, ev.reason);
    this.#disconnected(err);
    if (this.#fatal(err.code) || !this.reconnect) return this.#stop(err);
    this.logger?.info?.(`ringcast: ${err.message}; reconnecting`);
    this.#reconnectLoop();
  }

  async #reconnectLoop() {
    let attempt = 0;
    let delay = this.#retryAfter ?? 100 * Math.random();
    this.#retryAfter = null;
    while (!this.#closing) {
      await new Promise((r) => { const t = setTimeout(r, delay); this.#wake = () => { clearTimeout(t); r(); }; });
      this.#wake = null;
      if (this.#closing) return;
      try {
        const [ws, welcome] = await this.#open();
        if (this.#closing) { ws.close(); return; }
        this.#connected(ws, welcome);
        this.#resubscribe();
        return;
      } catch (e) {
        if (e instanceof ConnectionClosed && this.#fatal(e.code)) return this.#stop(e);
        this.logger?.info?.(`ringcast: reconnect failed: ${e.message}`);
      }
      attempt++;
      delay = Math.min(this.maxBackoffMs, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
    }
  }

  #resubscribe() {
    for (const sub of [...this.#subs.values()]) {
      const since = sub.resume && sub.epoch != null ? [sub.epoch, sub.offset] : null;
      this.#call(sub._frame(since), (ack) => sub._onAck(ack, since)).catch((e) => {
        if (e instanceof ConnectionClosed || e instanceof ClientClosed) return; // the next reconnect retries
        this.logger?.warn?.(`ringcast: resubscribe ${sub.channel} failed: ${e.message}`);
        this.#subs.delete(this.#key(sub.channel, sub.pattern));
        sub.queue.finish(e);
      });
    }
  }

  /** The socket is gone: fail what waited on it. Subscriptions stay (they resubscribe). */
  #disconnected(err) {
    const reason = err instanceof ClientClosed ? 'closed' : 'connection_lost';
    if (!this.#ready && !this.error) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      this.#ready = { promise, resolve };
    }
    for (const p of this.#pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.#pending.clear();
    for (const q of this.#calls.values()) q.finish(new RequestCancelled(reason));
    this.#calls.clear();
    for (const { req, controller } of this.#serving.values()) { req.cancelReason = reason; controller.abort(new RequestCancelled(reason)); }
    this.#serving.clear();
  }

  #stop(err) {
    this.error = err;
    this.#closing = true;
    const normal = err instanceof ClientClosed;
    for (const sub of this.#subs.values()) sub.queue.finish(normal ? undefined : err);
    this.#directs.finish(normal ? undefined : err);
    const r = this.#ready;
    this.#ready = null;
    r?.resolve(); // waiters then see `error`
    this.#wake?.();
    this.#abortOpen?.();
    for (const w of this.#closedWaiters.splice(0)) w();
  }

  /** Close the connection (1000) and stop: subscriptions' iterators end normally. */
  async close() {
    if (this.error) return;
    const err = new ClientClosed('client closed');
    this.#stop(err);
    this.#disconnected(err);
    if (this.ws && this.ws.readyState <= 1) {
      const ws = this.ws;
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 1000);
        ws.addEventListener('close', () => { clearTimeout(t); resolve(); });
        ws.close(1000);
      });
    }
  }

  /** Resolves when the client stops; rejects with the error that stopped it (not after close()). */
  async closed() {
    if (!this.error) await new Promise((r) => this.#closedWaiters.push(r));
    if (!(this.error instanceof ClientClosed)) throw this.error;
  }

  // -- sending ---------------------------------------------------------------------------------

  async #waitReady() {
    if (this.#ready) {
      let timer;
      await Promise.race([this.#ready.promise, new Promise((_, rej) => { timer = setTimeout(() => rej(new TimeoutError('not connected')), this.opTimeoutMs); })])
        .finally(() => clearTimeout(timer));
    }
    if (this.error) throw this.error;
  }

  async #send(frame) {
    await this.#waitReady();
    const text = JSON.stringify(frame);
    const limit = this.welcome.maxMessageSize;
    if (limit && new TextEncoder().encode(text).length > limit) throw new RangeError(`frame over the broker's maxMessageSize ${limit}`);
    if (this.ws.readyState !== 1) throw new ConnectionLost(1006, 'socket not open');
    this.ws.send(text);
  }

  /** Send `frame` with a fresh requestId; resolve with its ack, reject with its error. */
  async #call(frame, onAck) {
    const rid = `r${++this.#rid}`;
    frame.requestId = rid;
    await this.#waitReady();
    const answer = new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.#pending.delete(rid); reject(new TimeoutError(`no answer to ${frame.type}`)); }, this.opTimeoutMs);
      this.#pending.set(rid, { resolve, reject, onAck, timer });
    });
    try { await this.#send(frame); } catch (e) { const p = this.#pending.get(rid); this.#pending.delete(rid); clearTimeout(p?.timer); throw e; }
    return answer;
  }

  #key(channel, pattern) { return (pattern ? 'p:' : 'c:') + channel; }

  // -- receiving -------------------------------------------------------------------------------

  #dispatch(raw) {
    let f;
    try { f = JSON.parse(raw); } catch { return this.logger?.warn?.('ringcast: unparsable frame ignored'); }
    switch (f?.type) {
      case 'message': this.#route(f.channel ?? '')?._onMessage(f); break;
      case 'ack': case 'error': case 'pong': {
        const p = this.#pending.get(f.requestId);
        if (p) {
          this.#pending.delete(f.requestId);
          clearTimeout(p.timer);
          if (f.type === 'error') p.reject(serverError(f));
          else { p.onAck?.(f); p.resolve(f); }
        } else if (f.type === 'error' && this.#calls.has(f.requestId)) {
          this.#calls.get(f.requestId).finish(serverError(f));
          this.#calls.delete(f.requestId);
        } else if (f.type === 'error' && f.requestId == null) this.logger?.warn?.(`ringcast: server error ${f.code}: ${f.message ?? ''}`);
        break;
      }
      case 'presence': this.#subs.get(this.#key(f.channel, false))?._onPresence(f); break;
      case 'direct': this.#directs.put({ from: f.from ?? '', data: f.data, fromMetadata: f.fromMetadata ?? null }); break;
      case 'reply': this.#calls.get(f.requestId)?.put(f); break;
      case 'request': this.#onRequest(f); break;
      case 'cancel': {
        const s = this.#serving.get(f.replyTo);
        if (s) { this.#serving.delete(f.replyTo); s.req.cancelReason = f.reason ?? null; s.controller.abort(new RequestCancelled(f.reason ?? 'cancelled')); }
        break;
      }
      case 'going_away': this.#retryAfter = Math.max(0, f.retryAfterMs ?? 1000); break;
    }
  }

  #route(channel) {
    const exact = this.#subs.get(this.#key(channel, false));
    if (exact) return exact;
    for (const s of this.#subs.values()) if (s.pattern && s.regex.test(channel)) return s;
    return null;
  }

  // -- pub/sub ---------------------------------------------------------------------------------

  /**
   * Subscribe; resolves with the {@link Subscription} (an async iterable of messages).
   * `since`: null (live from now), `[epoch, offset]` or `{epoch, offset}` (replay what followed,
   * then live), or `'auto'` (resume from the position this client last saw on the channel).
   * With a `since`, reconnects resubscribe from the last offset delivered (no gap while the
   * channel retained it; `sub.recovered` tells).
   * @param {string} channel
   * @param {{since?: null|'auto'|[string, number]|{epoch: string, offset: number}, pattern?: boolean, group?: string,
   *          includeSenderMetadata?: boolean, onPresence?: (p: Presence) => void, buffer?: number}} [o]
   * @returns {Promise<Subscription>}
   */
  async subscribe(channel, o = {}) {
    const key = this.#key(channel, o.pattern);
    if (this.#subs.has(key)) throw new Error(`already subscribed to ${channel}`);
    let since = o.since ?? null;
    if (since != null && (o.pattern || o.group != null)) throw new TypeError('since cannot be combined with pattern or group');
    if (this.#groupOverlap(channel, !!o.pattern, o.group ?? null)) {
      throw new TypeError("a queue-group subscription and a pattern matching its channel cannot be combined on one client: the broker sends the pattern's copy and the group's pick as identical frames");
    }
    if (since && !Array.isArray(since) && typeof since === 'object') since = [since.epoch, since.offset];
    const resume = since != null;
    if (since === 'auto') since = this._positions.get(channel) ?? null;
    const sub = new Subscription(this, channel, { ...o, resume, buffer: o.buffer ?? this.buffer });
    this.#subs.set(key, sub);
    try { await this.#call(sub._frame(since), (ack) => sub._onAck(ack, since)); } catch (e) { this.#subs.delete(key); throw e; }
    return sub;
  }

  #groupOverlap(channel, pattern, group) {
    const subs = [...this.#subs.values()];
    if (group != null) return subs.some((s) => s.pattern && s.regex.test(channel));
    if (pattern) { const re = globRegExp(channel); return subs.some((s) => s.group != null && re.test(s.channel)); }
    return false;
  }

  async _unsubscribe(sub) {
    const key = this.#key(sub.channel, sub.pattern);
    if (this.#subs.get(key) !== sub) return;
    this.#subs.delete(key);
    sub.queue.finish();
    if (!this.#ready && !this.error) await this.#call({ type: 'unsubscribe', channel: sub.channel, ...(sub.pattern ? { pattern: true } : {}) });
  }

  /** Publish and wait for the ack. @returns {Promise<number|null>} the offset on a history channel */
  async publish(channel, data) {
    const onAck = (ack) => { if (Number.isInteger(ack.offset)) this.#subs.get(this.#key(channel, false))?._published(ack.offset); };
    return (await this.#call({ type: 'publish', channel, data }, onAck)).offset ?? null;
  }

  /** A direct message to every other connection of `peer` (PeerNotFound if none). */
  async send(peer, data) { await this.#call({ type: 'send', to: peer, data }); }

  /** The direct messages received (one bounded buffer per client). @returns {AsyncIterable<Direct> & {get(ms?: number): Promise<Direct>}} */
  directs() {
    const q = this.#directs;
    return { [Symbol.asyncIterator]: () => q.iterate(), get: async (ms) => { const v = await q.get(ms); if (v === END) throw new ClientClosed('ended'); return v; } };
  }

  /** Retained messages of a history channel. @param {string} channel @param {{sinceOffset?: number, limit?: number}} [o] @returns {Promise<History>} */
  async history(channel, o = {}) {
    const f = { type: 'history', channel };
    if (o.sinceOffset != null) f.sinceOffset = o.sinceOffset;
    if (o.limit != null) f.limit = o.limit;
    const ack = await this.#call(f);
    const messages = (ack.messages ?? []).map((m) => ({ channel, from: m.from ?? '', data: m.data, offset: m.offset, fromMetadata: m.fromMetadata ?? null }));
    return { epoch: ack.epoch, offset: ack.offset, messages };
  }

  /** One application-level round trip. */
  async ping() { await this.#call({ type: 'ping' }); }

  // -- requests and replies (§8.4) -------------------------------------------------------------

  /**
   * Send a request and iterate the data of its replies in order (`final:false` chunks, then the
   * final reply's data unless null). Sent when iteration starts; leaving the loop early or
   * aborting `signal` cancels it at the broker.
   * @param {string} peer @param {any} data @param {{timeoutMs?: number, signal?: AbortSignal}} [o]
   * @returns {AsyncGenerator<any>}
   */
  async *requestStream(peer, data, o = {}) {
    for await (const reply of this.#request(peer, data, o)) {
      if (!reply.final || reply.data != null) yield reply.data;
    }
  }

  /**
   * Send a request; resolves with the data of the final reply (chunks of a streamed reply are
   * skipped). Aborting `signal` cancels it at the broker and rejects with the signal's reason.
   * @param {string} peer @param {any} data @param {{timeoutMs?: number, signal?: AbortSignal}} [o]
   */
  async request(peer, data, o = {}) {
    for await (const reply of this.#request(peer, data, o)) if (reply.final) return reply.data;
  }

  async *#request(peer, data, { timeoutMs = 30000, signal } = {}) {
    signal?.throwIfAborted();
    const rid = `q${++this.#rid}`;
    const q = new Queue(this.buffer, `reply stream ${rid}`, this.logger);
    this.#calls.set(rid, q);
    let done = false;
    const onAbort = () => q.finish(signal.reason);
    signal?.addEventListener('abort', onAbort);
    try {
      await this.#send({ type: 'request', to: peer, requestId: rid, data: data ?? null, timeoutMs: Math.max(1, Math.round(timeoutMs)) });
      const deadline = Date.now() + timeoutMs + 2000; // the broker's own deadline comes first
      for (;;) {
        let reply;
        try { reply = await q.get(Math.max(0, deadline - Date.now())); } catch (e) {
          if (e instanceof TimeoutError) throw new RequestTimeout('request_timeout', 'no answer from the broker by the deadline');
          if (e instanceof RingcastError) done = true;
          throw e;
        }
        const final = reply.final ?? true;
        if (final) done = true;
        yield { data: reply.data, final };
        if (final) return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.#calls.delete(rid);
      if (!done && !this.#ready && !this.error) this.#send({ type: 'cancel', requestId: rid }).catch(() => {});
    }
  }

  /**
   * Set the responder: `handler(req)` returns the reply's data (or a promise of it), or an async
   * iterable whose items are sent as `final:false` chunks, followed by a `final:true` reply with
   * null data. `req.signal` is aborted when the broker cancels the request (`req.cancelReason`:
   * taken, timeout, cancelled, requester_gone; or connection_lost/closed locally). A handler that
   * throws answers `{error: "<name>: <message>"}`.
   * @param {(req: IncomingRequest) => any} handler
   */
  onRequest(handler) { this.#handler = handler; return handler; }

  #onRequest(f) {
    if (!this.#handler || typeof f.replyTo !== 'string') return;
    const controller = new AbortController();
    /** @type {IncomingRequest} */
    const req = { from: f.from ?? '', data: f.data, timeoutMs: f.timeoutMs ?? null, replyTo: f.replyTo, fromMetadata: f.fromMetadata ?? null, signal: controller.signal, cancelReason: null };
    this.#serving.set(f.replyTo, { req, controller });
    this.#serve(req).finally(() => { if (this.#serving.get(req.replyTo)?.req === req) this.#serving.delete(req.replyTo); });
  }

  async #serve(req) {
    const reply = async (data, final) => { if (!req.signal.aborted) await this.#send({ type: 'reply', replyTo: req.replyTo, data: data ?? null, final }); };
    try {
      const result = this.#handler(req);
      if (result && typeof result[Symbol.asyncIterator] === 'function') {
        for await (const chunk of result) { if (req.signal.aborted) break; await reply(chunk, false); }
        await reply(null, true);
      } else await reply(await result, true);
    } catch (e) {
      if (req.signal.aborted || e instanceof ConnectionClosed || e instanceof ClientClosed) return;
      this.logger?.error?.('ringcast: request handler failed', e);
      await reply({ error: `${e?.name ?? 'Error'}: ${e?.message ?? e}` }, true).catch(() => {});
    }
  }
}
