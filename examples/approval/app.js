// The reviewer's page of examples/approval: live progress of an agent run, and its pending
// questions with Approve / Deny and a countdown. Plain ES module, no build step; the client
// is clients/js/ringcast.js, served by serve.py as /ringcast.js.
//
// 1. GET /token (serve.py mints a token for peer `reviewer`; the secret key never reaches the page)
// 2. connect, subscribe to runs/<run>/progress (and read its history, if the broker keeps any)
// 3. onRequest: each request from an agent is a question card; the click is the reply
//    ({approved, by}). The broker's deadline ends it otherwise: the card then says why.
import * as ringcast from './ringcast.js';

const $ = (sel, root = document) => root.querySelector(sel);
const run = new URLSearchParams(location.search).get('run') || 'demo';
const channel = `runs/${run}/progress`;
$('#run').textContent = run;
document.title = `Run ${run} · approve the agent's action`;

const setPill = (el, state, text) => { el.dataset.state = state; el.textContent = text; };
const conn = $('#conn');
const agentPill = $('#agent');

async function session() {
  const r = await fetch('/token', { cache: 'no-store' });
  if (!r.ok) throw new Error(`GET /token: HTTP ${r.status}`);
  return r.json();
}

// -- progress ------------------------------------------------------------------------------------

const seen = new Set(); // "<run>/<n>": a step replayed from history and also received live shows once
function addStep(data, from) {
  if (!data || typeof data !== 'object' || typeof data.text !== 'string') return;
  const key = `${data.run ?? run}/${data.n}`;
  if (data.n != null && seen.has(key)) return;
  seen.add(key);
  const li = document.createElement('li');
  li.dataset.state = data.state || 'running';
  li.dataset.n = data.n ?? '';
  const n = document.createElement('span'); n.className = 'n'; n.textContent = data.n ?? '·';
  const text = document.createElement('span'); text.className = 'text'; text.textContent = data.text;
  const at = document.createElement('span'); at.className = 'at'; at.textContent = new Date().toLocaleTimeString([], { hour12: false });
  at.title = `from ${from}`;
  li.append(n, text, at);
  // Keep steps in order by n (a history replay can arrive after the first live step).
  const after = [...$('#steps').children].find((x) => x.dataset.n !== '' && Number(x.dataset.n) > Number(data.n));
  $('#steps').insertBefore(li, after ?? null);
}

// -- questions -----------------------------------------------------------------------------------

const ENDED = {
  timeout: 'Time is up: the agent was told no one answered.',
  taken: 'Answered in another window.',
  cancelled: 'The agent withdrew the question.',
  requester_gone: 'The agent went away.',
  connection_lost: 'Connection lost before you answered.',
  closed: 'Closed.',
};

/** The responder: resolves with the reply's data when a button is clicked. */
function ask(req) {
  const card = $('#question-template').content.firstElementChild.cloneNode(true);
  const q = req.data && typeof req.data === 'object' ? req.data : { action: String(req.data) };
  $('.requester', card).textContent = req.from;
  $('.qrun', card).textContent = q.run ?? '?';
  $('.action', card).textContent = q.action ?? '(no action given)';
  $('.details', card).textContent = q.details ?? '';
  $('#questions').prepend(card);

  const total = req.timeoutMs ?? 30000;
  const deadline = performance.now() + total;
  const tick = () => {
    const left = Math.max(0, deadline - performance.now());
    $('.countdown', card).textContent = `${Math.ceil(left / 1000)} s`;
    $('.fill', card).style.width = `${(100 * left) / total}%`;
    // At zero the broker is about to cancel it (reason "timeout"): a click now would come too late.
    if (left === 0) $('.approve', card).disabled = $('.deny', card).disabled = true;
  };
  tick();
  const timer = setInterval(tick, 250);

  return new Promise((resolve, reject) => {
    const end = (state, text) => {
      clearInterval(timer);
      card.dataset.state = state;
      $('.outcome', card).textContent = text;
      $('.approve', card).disabled = $('.deny', card).disabled = true;
      // Finished questions fade out of the way after a while; the progress list keeps the story.
      setTimeout(() => card.remove(), 30000);
    };
    $('.approve', card).addEventListener('click', () => {
      end('approved', 'Approved: the agent goes on.');
      resolve({ approved: true, by: client.peerId });
    });
    $('.deny', card).addEventListener('click', () => {
      end('denied', 'Denied: the agent stops.');
      resolve({ approved: false, by: client.peerId, reason: 'denied on the review page' });
    });
    req.signal.addEventListener('abort', () => {
      end('closed', ENDED[req.cancelReason] ?? `Ended (${req.cancelReason ?? 'cancelled'}).`);
      reject(req.signal.reason);
    });
    $('.approve', card).focus({ preventScroll: true });
  });
}

// -- connection ----------------------------------------------------------------------------------

let client = null;

async function main() {
  const first = await session();
  let firstToken = first.token;
  const logger = {
    // The client logs its reconnects; show them rather than a stale "online".
    info: (m) => { if (String(m).includes('reconnecting')) setPill(conn, 'offline', 'reconnecting…'); },
    warn: (...a) => console.warn(...a),
    error: (...a) => console.error(...a),
  };
  client = await ringcast.connect(first.url, {
    // Called for every (re)connection: a fresh token each time, so an expired one is replaced.
    token: async () => { const t = firstToken; firstToken = null; return t ?? (await session()).token; },
    logger,
  });
  client.onRequest(ask);
  window.addEventListener('pagehide', () => { client.close(); });

  const agentsHere = (peers) => Object.keys(peers).filter((p) => p !== client.peerId);
  let sub = null;
  sub = await client.subscribe(channel, {
    onPresence: (p) => {
      // A presence frame follows every (re)subscribe: we are connected again.
      setPill(conn, 'online', `online as ${client.peerId}`);
      const here = agentsHere(sub ? sub.peers : p.joined);
      setPill(agentPill, here.length ? 'here' : 'away', here.length ? `${here.join(', ')} here` : 'agent not here');
    },
  });
  setPill(conn, 'online', `online as ${client.peerId}`);

  // Steps published before this page opened, when the broker keeps history for the channel.
  client.history(channel, { limit: 200 }).then(
    (page) => page.messages.forEach((m) => addStep(m.data, m.from)),
    (e) => { if (e.code !== 'history_not_enabled') console.warn('history:', e.message); },
  );
  client.closed().catch((e) => setPill(conn, 'offline', `disconnected: ${e.message}`));

  for await (const msg of sub) addStep(msg.data, msg.from);
}

main().catch((e) => setPill(conn, 'offline', `cannot connect: ${e.message}`));
