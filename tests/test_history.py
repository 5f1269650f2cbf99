"""Verifies protocol.md §8.1 resumable channels (history and resume) through the real binary
(2 shards; subscribers, WebSocket publishers and REST publishers spread over both shards):

* resume under concurrent publishing: every offset exactly once, in order, across reconnects;
* resume past the retained window (`recovered:false`, the retained suffix replayed);
* a new epoch after a restart (and after a channel's history is dropped);
* TTL expiry (history and replay stop returning expired messages; evictions counted);
* the broker-wide memory bound (`history_max_bytes`, oldest entries of the largest history first);
* ack shapes, `since` validation, the plain-channel frames byte for byte unchanged;
* the `history` command and `GET /v1/channels/{channel}/history`;
* strict order ack → presence snapshot → replay → live;
* one total order per channel seen alike by subscribers on both shards.

Decisions where §8.1 is silent (config shape, errors, metrics) are the ones of the history
issue: `[[apps.history]]` entries `{channels, size (1..=100000), ttl_secs (>=1)}`, first match
wins; `history_max_bytes` split evenly over the shards, an entry counting its frame length + 64.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from helpers import (
    KEY_ID,
    SECRET,
    Broker,
    BrokerStartError,
    align_to_second,
    make_config,
    mint,
    rest_metrics,
    rest_request,
    wait_until,
)

HKEY, HSECRET = "sk_id_hist1", "sk_secret_hist_0123456789abcdefghijklmnop"
# REST keys of the same app: one without `subscribe`, one scoped to h/scoped/*.
HPUB_KEY, HPUB_SECRET = "sk_id_histpub1", "sk_secret_histpub_0123456789abcdefghijkl"
HSCOPED_KEY, HSCOPED_SECRET = "sk_id_histscoped1", "sk_secret_histscoped_0123456789abcdefghi"

HIST_APP = f"""
[[apps]]
id = "hist"
max_connections = 5000
[[apps.secret_keys]]
id = "{HKEY}"
secret = "{HSECRET}"
channel_patterns = ["**"]
[[apps.secret_keys]]
id = "{HPUB_KEY}"
secret = "{HPUB_SECRET}"
actions = ["publish"]
[[apps.secret_keys]]
id = "{HSCOPED_KEY}"
secret = "{HSCOPED_SECRET}"
channel_patterns = ["h/scoped/*"]
[[apps.history]]
channels = ["h/tiny/**"]
size = 3
ttl_secs = 600
[[apps.history]]
channels = ["h/**", "order/**"]
size = 1000
ttl_secs = 600
[[apps.history]]
channels = ["small/**"]
size = 10
ttl_secs = 600
[[apps.history]]
channels = ["ttl/**"]
size = 1000
ttl_secs = 3
[[apps.history]]
channels = ["ttl1/**"]
size = 1000
ttl_secs = 1
"""

CONFIG = make_config(extra_apps=HIST_APP)
# Publishers in the concurrency tests send a few hundred messages per second per connection.
FAST = ["--rate-limit-per-sec", "5000", "--rate-limit-burst", "5000"]
SUB_ONLY = ["subscribe"]  # no `presence`: no snapshot between the ack and the replay
EPOCH_MAX = 64


@pytest.fixture(scope="module")
def hb():
    b = Broker(CONFIG, args=FAST, name="history-broker")
    yield b
    b.stop()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def hchan(prefix: str = "h/c") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def hpeer(b, name, shard=None, **claims):
    return b.connect(mint(name, key_id=HKEY, secret=HSECRET, **claims), shard=shard, name=name)


def sub(c, ch, since=None, **extra):
    """subscribe with a requestId; returns the ack or error (frames after it stay pending)."""
    obj = {"type": "subscribe", "channel": ch, **extra}
    if since is not None:
        obj["since"] = since
    return c.request(obj)


def hist(c, ch, **fields):
    return c.request({"type": "history", "channel": ch, **fields})


def pub(c, ch, data):
    """WebSocket publish with a requestId; returns the ack's offset."""
    m = c.request({"type": "publish", "channel": ch, "data": data})
    assert m == {"type": "ack", "requestId": c.last_rid, "offset": m.get("offset")}, m
    assert isinstance(m["offset"], int) and m["offset"] >= 1, m
    return m["offset"]


def rest_pub(b, ch, data, conn=None, **extra):
    r = rest_request(b, "POST", f"/v1/channels/{quote(ch, safe='')}/publish",
                     {"data": data, "from": "backend", **extra}, auth=(HKEY, HSECRET), conn=conn)
    assert r.status == 200, r
    return r.json


def rest_hist(b, ch, query="", auth=(HKEY, HSECRET)):
    q = f"?{query}" if query else ""
    return rest_request(b, "GET", f"/v1/channels/{quote(ch, safe='')}/history{q}", auth=auth)


def next_frame(c, timeout):
    """Next JSON frame or None when nothing arrives within ``timeout``."""
    if c.pending:
        return c.pending.popleft()
    try:
        raw = c.ws.recv(timeout=max(timeout, 0.001))
    except TimeoutError:
        return None
    m = json.loads(raw)
    c.log.append(m)
    return m


def messages(c, seconds=0.4):
    return [m for m in c.collect(seconds) if m["type"] == "message"]


def read_offsets(c, ch, upto, timeout=10.0):
    """Read `message` frames until offset ``upto``; returns them (asserting types and channel)."""
    out = []
    deadline = time.monotonic() + timeout
    while not out or out[-1]["offset"] < upto:
        m = next_frame(c, deadline - time.monotonic())
        assert m is not None, f"{c.name}: stopped at {out[-1]['offset'] if out else None}, want {upto}"
        assert m["type"] == "message" and m["channel"] == ch, m
        out.append(m)
    return out


def assert_epoch(e):
    assert isinstance(e, str) and 1 <= len(e) <= EPOCH_MAX, e


def metric_values(m: dict, name: str, **labels) -> dict:
    """{labels-string: value} of every sample of ``name`` whose labels include ``labels``."""
    out = {}
    for k, v in m.items():
        base, _, rest = k.partition("{")
        if base != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(lab.get(a) == str(w) for a, w in labels.items()):
            out[rest] = v
    return out


def metric_sum(m: dict, name: str, **labels) -> float:
    vals = metric_values(m, name, **labels)
    assert vals, f"metric {name}{labels or ''} not exported; names: {sorted({k.partition('{')[0] for k in m if 'history' in k})}"
    return sum(vals.values())


def per_shard(m: dict, name: str) -> dict:
    out = {}
    for k, v in m.items():
        base, _, rest = k.partition("{")
        if base == name:
            s = re.search(r'shard="(\d+)"', rest)
            assert s, f"{k}: per-shard gauge without a shard label"
            out[int(s.group(1))] = out.get(int(s.group(1)), 0) + v
    assert out, f"metric {name} not exported"
    return out


class Publisher(threading.Thread):
    """Publishes ``n`` messages ``{"p": label, "i": i}`` on ``ch`` at ``rate`` per second (0 =
    as fast as acks come back), over a WebSocket client (with acks) or REST; records the
    offset each one got."""

    def __init__(self, label, ch, n, rate=0.0, client=None, rest_broker=None):
        super().__init__(daemon=True)
        self.label, self.ch, self.n, self.rate = label, ch, n, rate
        self.client, self.rest_broker = client, rest_broker
        self.offsets: list[int] = []
        self.error: BaseException | None = None

    def run(self):
        conn = None
        try:
            if self.rest_broker is not None:
                conn = http.client.HTTPConnection("127.0.0.1", self.rest_broker.rest_port, timeout=10)
            t0 = time.monotonic()
            for i in range(self.n):
                if self.rate:
                    delay = t0 + i / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                data = {"p": self.label, "i": i}
                if conn is not None:
                    r = rest_pub(self.rest_broker, self.ch, data, conn=conn)
                    assert set(r) == {"channel", "offset"} and r["channel"] == self.ch, r
                    self.offsets.append(r["offset"])
                else:
                    self.offsets.append(pub(self.client, self.ch, data))
        except BaseException as e:  # reported by check()
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    def check(self, timeout=30):
        self.join(timeout)
        assert not self.is_alive(), f"publisher {self.label} still running"
        if self.error is not None:
            raise AssertionError(f"publisher {self.label} failed: {self.error!r}") from self.error
        assert len(self.offsets) == self.n
        assert self.offsets == sorted(self.offsets) and len(set(self.offsets)) == self.n, (
            f"publisher {self.label}: its own publications got non-increasing offsets"
        )


def check_stream(msgs, first, pubs_seen: dict):
    """Offsets strictly consecutive from ``first``; each publisher's own sequence in order."""
    for k, m in enumerate(msgs):
        assert m["offset"] == first + k, (
            f"expected offset {first + k}, got {m['offset']} (gap or duplicate) in {[x['offset'] for x in msgs[max(0, k - 3):k + 3]]}"
        )
        p, i = m["data"]["p"], m["data"]["i"]
        assert i == pubs_seen.get(p, -1) + 1, f"publisher {p}: {i} after {pubs_seen.get(p)}"
        pubs_seen[p] = i


# --------------------------------------------------------------------------------------------
# 1. resume under concurrent publishing
# --------------------------------------------------------------------------------------------


def _resume_rounds(b, ch, pubs, rounds, label):
    total = sum(p.n for p in pubs)
    s = hpeer(b, f"{label}-sub0", shard=0, permissions=SUB_ONLY)
    ack = sub(s, ch)
    assert ack == {"type": "ack", "requestId": s.last_rid, "epoch": ack.get("epoch"), "offset": 0}, ack
    epoch = ack["epoch"]
    assert_epoch(epoch)
    for p in pubs:
        p.start()
    last = 0
    seen: dict = {}
    figures = []

    def read_for(c, seconds):
        nonlocal last
        got = []
        deadline = time.monotonic() + seconds
        while last + len(got) < total:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            m = next_frame(c, min(left, 0.2))
            if m is None:
                continue
            assert m["type"] == "message" and m["channel"] == ch, m
            got.append(m)
        check_stream(got, last + 1, seen)
        if got:
            last = got[-1]["offset"]
        return len(got)

    read_for(s, 0.2)
    for r in range(rounds):
        s.close()
        time.sleep(0.03 * (r % 4))  # offline for a while; the publishers go on
        s = hpeer(b, f"{label}-sub{r + 1}", shard=(r + 1) % 2, permissions=SUB_ONLY)
        before = last
        ack = sub(s, ch, since={"epoch": epoch, "offset": last})
        assert ack["type"] == "ack" and ack["epoch"] == epoch and ack["recovered"] is True, ack
        assert set(ack) == {"type", "requestId", "epoch", "offset", "recovered"}, ack
        assert ack["offset"] >= before, (ack, before)
        # Every fourth round drops the connection right after the ack (mid-replay).
        n = read_for(s, 0 if r % 4 == 3 else 0.12 + 0.08 * (r % 3))
        figures.append((r, s.shard, before, ack["offset"], n))
    for p in pubs:
        p.check()
    all_offsets = sorted(o for p in pubs for o in p.offsets)
    assert all_offsets == list(range(1, total + 1)), "publish acks are not exactly 1..N"
    s.close()
    s = hpeer(b, f"{label}-subfinal", shard=0, permissions=SUB_ONLY)
    ack = sub(s, ch, since={"epoch": epoch, "offset": last})
    assert ack["recovered"] is True and ack["offset"] == total, ack
    before = last
    read_for(s, 15)
    assert last == total, f"final resume stopped at {last} of {total}"
    s.no_message_within(0.3)
    print(f"\n[{label}] {total} publications from {[p.label for p in pubs]}; final resume replayed {total - before}")
    for r, shard, frm, acked, n in figures:
        print(f"[{label}] round {r}: shard {shard} since {frm} ack.offset {acked} "
              f"got {n} (replayed {max(0, min(frm + n, acked) - frm)}, live {max(0, frm + n - acked)})")


@pytest.mark.timeout(90)
def test_resume_under_concurrent_publishing(hb):
    ch = hchan("h/resume")
    pubs = [
        Publisher(f"ws{s}", ch, 1000, rate=250, client=hpeer(hb, f"rpub{s}", shard=s, permissions=["publish"]))
        for s in range(2)
    ]
    _resume_rounds(hb, ch, pubs, rounds=10, label="ws")


@pytest.mark.timeout(90)
def test_resume_under_concurrent_publishing_with_rest(hb):
    ch = hchan("h/resume-rest")
    pubs = [
        Publisher(f"ws{s}", ch, 300, rate=150, client=hpeer(hb, f"rrpub{s}", shard=s, permissions=["publish"]))
        for s in range(2)
    ] + [Publisher("rest", ch, 300, rate=150, rest_broker=hb)]
    _resume_rounds(hb, ch, pubs, rounds=6, label="ws+rest")


# --------------------------------------------------------------------------------------------
# 2. resume past the retained window
# --------------------------------------------------------------------------------------------


def test_resume_past_the_retained_window(hb):
    ch = hchan("small")  # size = 10
    s0 = hpeer(hb, "win-s0", shard=0, permissions=SUB_ONLY)
    epoch = sub(s0, ch)["epoch"]
    p = hpeer(hb, "win-pub", shard=1, permissions=["publish"])
    assert [pub(p, ch, {"n": n}) for n in range(1, 51)] == list(range(1, 51))
    assert [m["offset"] for m in read_offsets(s0, ch, 50)] == list(range(1, 51))
    for shard, since, recovered in ((0, 5, False), (1, 5, False), (0, 39, False), (1, 40, True), (0, 45, True)):
        c = hpeer(hb, f"win-r{shard}-{since}", shard=shard, permissions=SUB_ONLY)
        ack = sub(c, ch, since={"epoch": epoch, "offset": since})
        assert ack == {"type": "ack", "requestId": c.last_rid, "epoch": epoch, "offset": 50,
                       "recovered": recovered}, (since, ack)
        want = list(range(max(41, since + 1), 51))
        got = read_offsets(c, ch, 50)
        assert [m["offset"] for m in got] == want, (since, got)
        assert all(m["data"] == {"n": m["offset"]} and m["from"] == "win-pub" for m in got), got
        c.no_message_within(0.2)
    h = hist(s0, ch)
    assert [m["offset"] for m in h["messages"]] == list(range(41, 51)), h


# --------------------------------------------------------------------------------------------
# 3. epoch changes
# --------------------------------------------------------------------------------------------


def test_new_epoch_after_restart():
    ch = hchan("h/restart")
    b1 = Broker(CONFIG, name="history-before-restart")
    try:
        c = hpeer(b1, "rs-a", shard=0, permissions=SUB_ONLY)
        e1 = sub(c, ch)["epoch"]
        p = hpeer(b1, "rs-p", shard=1)
        for n in range(5):
            pub(p, ch, n)
        assert [m["offset"] for m in read_offsets(c, ch, 5)] == [1, 2, 3, 4, 5]
    finally:
        b1.stop()
    b2 = Broker(CONFIG, name="history-after-restart")
    try:
        p = hpeer(b2, "rs-p2", shard=1)
        assert [pub(p, ch, f"new{n}") for n in range(3)] == [1, 2, 3]
        for shard, since in ((0, 5), (1, 0), (0, 2), (1, 3), (0, 99)):
            c = hpeer(b2, f"rs-b{shard}-{since}", shard=shard, permissions=SUB_ONLY)
            ack = sub(c, ch, since={"epoch": e1, "offset": since})
            assert ack["type"] == "ack" and ack["recovered"] is False and ack["offset"] == 3, (since, ack)
            assert_epoch(ack["epoch"])
            assert ack["epoch"] != e1, "the epoch did not change across a restart"
            got = read_offsets(c, ch, 3)
            # Old epoch: every retained message of the new epoch, whatever since.offset says.
            assert [(m["offset"], m["data"]) for m in got] == [(1, "new0"), (2, "new1"), (3, "new2")], (since, got)
            c.no_message_within(0.2)
    finally:
        b2.stop()


def test_history_dropped_when_empty_and_unsubscribed_starts_a_new_epoch(hb):
    ch = hchan("h/drop")
    c = hpeer(hb, "drop-a", shard=0, permissions=["subscribe", "publish"])
    a1 = sub(c, ch)
    assert a1["offset"] == 0
    c.unsubscribe(ch)  # no entry, no subscriber: the record goes (at the next sweep, ~1/s)
    time.sleep(1.5)
    a2 = sub(c, ch)
    assert a2["offset"] == 0 and a2["epoch"] != a1["epoch"], (a1, a2)
    # A retained entry keeps the record (and its epoch) without any subscriber.
    p = hpeer(hb, "drop-p", shard=1)
    assert pub(p, ch, 1) == 1
    c.unsubscribe(ch)
    time.sleep(1.5)
    a3 = sub(c, ch)
    assert (a3["epoch"], a3["offset"]) == (a2["epoch"], 1), (a2, a3)


# --------------------------------------------------------------------------------------------
# 4. TTL
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ttl_expiry(hb):
    ch = hchan("ttl")  # ttl_secs = 3
    watcher = hpeer(hb, "ttl-w", shard=0, permissions=SUB_ONLY)
    epoch = sub(watcher, ch)["epoch"]
    p = hpeer(hb, "ttl-p", shard=1)
    ttl_before = metric_sum(rest_metrics(hb), "ringcast_history_evictions_total", reason="ttl")
    t0 = align_to_second()
    assert [pub(p, ch, f"a{n}") for n in range(3)] == [1, 2, 3]
    time.sleep(max(0.0, t0 + 2.0 - time.time()))
    assert [pub(p, ch, f"b{n}") for n in range(2)] == [4, 5]
    h = hist(watcher, ch)
    assert [m["offset"] for m in h["messages"]] == [1, 2, 3, 4, 5], h
    # The first three expire ~3 s after t0; the last two only ~5 s after t0.
    h = wait_until(lambda: (lambda x: x if x["messages"][0]["offset"] != 1 else None)(hist(watcher, ch)),
                   timeout=4.0, interval=0.1, what="the first batch to expire")
    gone_at = time.time() - t0
    assert h["epoch"] == epoch and h["offset"] == 5, h
    assert [(m["offset"], m["data"]) for m in h["messages"]] == [(4, "b0"), (5, "b1")], (gone_at, h)
    r = rest_hist(hb, ch)
    assert r.status == 200 and [m["offset"] for m in r.json["messages"]] == [4, 5], r
    # Resume from the start: 1..3 are gone (recovered:false), 4..5 replayed.
    c = hpeer(hb, "ttl-r", shard=1, permissions=SUB_ONLY)
    ack = sub(c, ch, since={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is False and ack["offset"] == 5, ack
    assert [m["offset"] for m in read_offsets(c, ch, 5)] == [4, 5]
    # From 3 nothing is missing.
    c2 = hpeer(hb, "ttl-r2", shard=0, permissions=SUB_ONLY)
    ack = sub(c2, ch, since={"epoch": epoch, "offset": 3})
    assert ack["recovered"] is True, ack
    assert [m["offset"] for m in read_offsets(c2, ch, 5)] == [4, 5]
    wait_until(lambda: metric_sum(rest_metrics(hb), "ringcast_history_evictions_total", reason="ttl") >= ttl_before + 3,
               timeout=3, what="evictions{reason=ttl} to count the three expired entries")
    # Everything expires; with every subscriber gone the record is dropped and a new epoch starts.
    wait_until(lambda: hist(watcher, ch)["messages"] == [], timeout=5, interval=0.2, what="all entries to expire")
    print(f"\n[ttl] first batch gone {gone_at:.2f}s after publication (ttl_secs=3)")
    # Once the sweep has taken all five, the record holds no entry: with its last subscriber
    # gone it is dropped, and the next publication starts a new epoch at offset 1.
    wait_until(lambda: metric_sum(rest_metrics(hb), "ringcast_history_evictions_total", reason="ttl") >= ttl_before + 5,
               timeout=3, what="evictions{reason=ttl} to count all five")
    for x in (watcher, c, c2):
        x.close()
    time.sleep(1.5)  # records are dropped by the sweep (about once a second)
    assert pub(p, ch, "fresh") == 1
    w2 = hpeer(hb, "ttl-w2", shard=1, permissions=SUB_ONLY)
    a = sub(w2, ch)
    assert a["offset"] == 1 and a["epoch"] != epoch, a


@pytest.mark.timeout(30)
def test_ttl_never_expires_a_message_younger_than_ttl_secs(hb):
    # "A message older than ttl_secs is no longer retained": one 0.6 s old is still retained
    # with ttl_secs = 1, wherever the broker's second boundaries fall.
    ch = hchan("ttl1")
    c = hpeer(hb, "ttl1-c", shard=0, permissions=SUB_ONLY)
    epoch = sub(c, ch)["epoch"]
    p = hpeer(hb, "ttl1-p", shard=1)
    lost = []
    for k in range(6):
        off = pub(p, ch, k)
        t = time.monotonic()
        time.sleep(0.6)
        h = hist(c, ch, sinceOffset=off - 1)
        age = time.monotonic() - t
        if [m["offset"] for m in h["messages"]] != [off]:
            lost.append((off, round(age, 2)))
    read_offsets(c, ch, 6)
    assert not lost, f"messages (offset, age s) gone before ttl_secs=1: {lost}"
    # Resume sees the same: the last publication, 0.6 s old, is replayed.
    off = pub(p, ch, "last")
    time.sleep(0.6)
    r = hpeer(hb, "ttl1-r", shard=0, permissions=SUB_ONLY)
    ack = sub(r, ch, since={"epoch": epoch, "offset": off - 1})
    assert ack["recovered"] is True, ack
    assert [m["offset"] for m in read_offsets(r, ch, off, timeout=2)] == [off]


# --------------------------------------------------------------------------------------------
# 5. memory bound
# --------------------------------------------------------------------------------------------

MEM_MAX = 262144  # 128 KiB per shard with 2 shards
MEM_APP = """
[[apps]]
id = "mem"
[[apps.secret_keys]]
id = "sk_id_histmem1"
secret = "sk_secret_histmem_0123456789abcdefghijklm"
[[apps.history]]
channels = ["mem/**"]
size = 100000
ttl_secs = 600
"""


def _mem_owner(b, p, ch) -> int:
    """Which shard keeps ``ch``'s history: the one whose history gauge grows by one publication."""
    before = per_shard(rest_metrics(b), "ringcast_history_messages")
    pub(p, ch, "probe")
    after = wait_until(lambda: (lambda a: a if a != before else None)(per_shard(rest_metrics(b), "ringcast_history_messages")),
                       timeout=3, what="the history gauge to move")
    grown = [s for s in after if after[s] == before.get(s, 0) + 1]
    assert len(grown) == 1, (before, after)
    return grown[0]


@pytest.mark.timeout(60)
def test_memory_bound_evicts_oldest_of_largest_history(broker_factory):
    b = broker_factory(make_config(top_level=f"history_max_bytes = {MEM_MAX}", extra_apps=MEM_APP), args=FAST)
    tok = lambda name: mint(name, key_id="sk_id_histmem1", secret="sk_secret_histmem_0123456789abcdefghijklm")
    p = b.connect(tok("mem-p"), shard=0, name="mem-p")
    r = b.connect(tok("mem-r"), shard=1, name="mem-r")
    # Two channels kept by the same shard.
    owners: dict = {}
    while True:
        ch = hchan("mem")
        owners.setdefault(_mem_owner(b, p, ch), []).append(ch)
        pair = next((v for v in owners.values() if len(v) >= 2), None)
        if pair:
            small, large = pair[:2]
            shard = next(s for s, v in owners.items() if v is pair)
            break
        assert sum(map(len, owners.values())) < 20
    share = MEM_MAX // 2
    blob = "x" * 2000
    m0 = rest_metrics(b)
    mem_before = metric_sum(m0, "ringcast_history_evictions_total", reason="memory")
    for _ in range(9):
        pub(p, small, blob)  # small: offsets 1..10 (the probe is offset 1), ~20 KiB
    published = 1
    while published < 150:
        pub(p, large, blob)
        published += 1
        if published % 10 == 0:
            m = rest_metrics(b)
            assert per_shard(m, "ringcast_history_bytes")[shard] <= share, m
    m = rest_metrics(b)
    hb_shard = per_shard(m, "ringcast_history_bytes")
    assert all(v <= share for v in hb_shard.values()), hb_shard
    assert sum(hb_shard.values()) <= MEM_MAX
    hs = hist(r, small, limit=1000)
    assert [x["offset"] for x in hs["messages"]] == list(range(1, 11)), "the smaller history lost entries"
    hl = hist(r, large, limit=1000)
    offs = [x["offset"] for x in hl["messages"]]
    assert offs == list(range(offs[0], 151)) and offs[0] > 1, (offs[:3], offs[-3:])
    evicted = metric_sum(m, "ringcast_history_evictions_total", reason="memory") - mem_before
    assert evicted == offs[0] - 1, (evicted, offs[0])
    msgs = per_shard(m, "ringcast_history_messages")
    print(f"\n[memory] history_max_bytes={MEM_MAX}: shard {shard} keeps {msgs[shard]:.0f} entries, "
          f"{hb_shard[shard]:.0f} bytes (share {share}); large kept {offs[0]}..150, "
          f"small kept 1..10; evictions(memory)={evicted:.0f}")
    # Entries count frame length + 64: bytes per entry is at least the data size.
    assert hb_shard[shard] >= msgs[shard] * (len(blob) + 64)


# --------------------------------------------------------------------------------------------
# 6. ack shapes, since validation, plain channels unchanged
# --------------------------------------------------------------------------------------------


def test_ack_and_message_shapes(hb):
    ch = hchan("h/shape")
    a = hpeer(hb, "shape-a", shard=0, peerMetadata={"name": "A"})
    b = hpeer(hb, "shape-b", shard=1)
    ack = sub(b, ch)
    assert ack == {"type": "ack", "requestId": b.last_rid, "epoch": ack["epoch"], "offset": 0}, ack
    assert_epoch(ack["epoch"])
    epoch = ack["epoch"]
    b.expect_type("presence")
    m = a.request({"type": "publish", "channel": ch, "data": {"k": [1, None]}})
    assert m == {"type": "ack", "requestId": a.last_rid, "offset": 1}, m
    got = b.expect_type("message")
    assert got == {"type": "message", "channel": ch, "from": "shape-a", "data": {"k": [1, None]}, "offset": 1}, got
    # includeSenderMetadata on a history channel: fromMetadata and offset.
    ack = sub(b, ch, includeSenderMetadata=True)
    assert ack == {"type": "ack", "requestId": b.last_rid, "epoch": epoch, "offset": 1}, ack
    b.expect_type("presence")
    assert pub(a, ch, None) == 2
    got = b.expect_type("message")
    assert got == {"type": "message", "channel": ch, "from": "shape-a", "data": None, "offset": 2,
                   "fromMetadata": {"name": "A"}}, got
    # REST publish answer carries the offset; the message too.
    r = rest_pub(hb, ch, "via-rest")
    assert r == {"channel": ch, "offset": 3}, r
    got = b.expect_type("message")
    assert (got["from"], got["data"], got["offset"]) == ("backend", "via-rest", 3), got
    # A publish without requestId is silent; its offset still shows up on delivery.
    a.send_json({"type": "publish", "channel": ch, "data": 4})
    assert b.expect_type("message")["offset"] == 4
    a.no_message_within(0.2)  # silent, and the publisher gets no copy of its publications


def test_since_at_and_ahead_of_the_current_offset(hb):
    ch = hchan("h/since")
    p = hpeer(hb, "since-p", shard=0)
    c = hpeer(hb, "since-c", shard=1, permissions=SUB_ONLY)
    epoch = sub(c, ch)["epoch"]
    for n in range(3):
        pub(p, ch, n)
    read_offsets(c, ch, 3)
    d = hpeer(hb, "since-d", shard=0, permissions=SUB_ONLY)
    ack = sub(d, ch, since={"epoch": epoch, "offset": 3})
    assert ack == {"type": "ack", "requestId": d.last_rid, "epoch": epoch, "offset": 3, "recovered": True}, ack
    d.no_message_within(0.3)
    pub(p, ch, "live")
    assert [(m["offset"], m["data"]) for m in read_offsets(d, ch, 4)] == [(4, "live")]
    e = hpeer(hb, "since-e", shard=1, permissions=SUB_ONLY)
    ack = sub(e, ch, since={"epoch": epoch, "offset": 10})
    assert ack == {"type": "ack", "requestId": e.last_rid, "epoch": epoch, "offset": 4, "recovered": False}, ack
    e.no_message_within(0.3)  # nothing retained is after offset 10
    pub(p, ch, "live2")
    assert [m["offset"] for m in read_offsets(e, ch, 5)] == [5]
    # Unknown epoch, offset 0: everything retained, recovered:false.
    f = hpeer(hb, "since-f", shard=0, permissions=SUB_ONLY)
    ack = sub(f, ch, since={"epoch": "not-the-epoch", "offset": 0})
    assert ack["recovered"] is False and ack["epoch"] == epoch, ack
    assert [m["offset"] for m in read_offsets(f, ch, 5)] == [1, 2, 3, 4, 5]
    # Current epoch, offset 0, nothing lost yet: recovered:true and everything replayed.
    g = hpeer(hb, "since-g", shard=1, permissions=SUB_ONLY)
    ack = sub(g, ch, since={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is True, ack
    assert [m["offset"] for m in read_offsets(g, ch, 5)] == [1, 2, 3, 4, 5]


def test_resubscribe_with_and_without_since(hb):
    ch = hchan("h/resub")
    p = hpeer(hb, "resub-p", shard=0)
    c = hpeer(hb, "resub-c", shard=1, permissions=SUB_ONLY)
    epoch = sub(c, ch)["epoch"]
    for n in range(6):
        pub(p, ch, n)
    read_offsets(c, ch, 6)
    # Already subscribed, with since: (2, 6] again, then live from 7, no duplicate of 7.
    ack = sub(c, ch, since={"epoch": epoch, "offset": 2})
    assert ack["recovered"] is True and ack["offset"] == 6, ack
    pub(p, ch, "seven")
    assert [m["offset"] for m in read_offsets(c, ch, 7)] == [3, 4, 5, 6, 7]
    c.no_message_within(0.2)
    # Without since: no replay; the ack still tells where the channel is.
    ack = sub(c, ch)
    assert ack == {"type": "ack", "requestId": c.last_rid, "epoch": epoch, "offset": 7}, ack
    c.no_message_within(0.3)
    pub(p, ch, "eight")
    assert [m["offset"] for m in read_offsets(c, ch, 8)] == [8]
    c.no_message_within(0.2)


def test_since_errors(hb):
    ch = hchan("h/bad-since")
    c = hpeer(hb, "bad-since", shard=0)
    epoch = sub(c, ch)["epoch"]
    c.expect_type("presence")
    bad = [
        "x", 5, None, [], {}, {"epoch": epoch}, {"offset": 1}, {"epoch": 1, "offset": 1},
        {"epoch": None, "offset": 0}, {"epoch": epoch, "offset": -1}, {"epoch": epoch, "offset": 1.5},
        {"epoch": epoch, "offset": "1"}, {"epoch": epoch, "offset": None}, {"epoch": "e" * 65, "offset": 0},
        {"epoch": epoch, "offset": True},
    ]
    for since in bad:
        m = c.request({"type": "subscribe", "channel": ch, "since": since})
        assert m["type"] == "error" and m["code"] == "invalid_request" and m["requestId"] == c.last_rid, (since, m)
    # Without requestId: the error comes without one, the connection lives on.
    c.send_json({"type": "subscribe", "channel": ch, "since": {"epoch": epoch}})
    m = c.expect_type("error")
    assert m["code"] == "invalid_request" and "requestId" not in m, m
    # A 64-character epoch is well-formed (just not the current one).
    m = sub(c, ch, since={"epoch": "e" * 64, "offset": 0})
    assert m["type"] == "ack" and m["recovered"] is False, m
    c.expect_type("presence")
    # since on a plain channel (and on a history-shaped name in an app without history).
    plain = hchan("p/plain")
    m = sub(c, plain, since={"epoch": epoch, "offset": 0})
    assert m["type"] == "error" and m["code"] == "history_not_enabled" and m["requestId"] == c.last_rid, m
    other_app = hb.connect(mint("other-app", key_id=KEY_ID, secret=SECRET), name="other-app")
    m = sub(other_app, ch, since={"epoch": epoch, "offset": 0})
    assert m["type"] == "error" and m["code"] == "history_not_enabled", m
    # The refused subscribes subscribed nothing and left the existing subscription intact.
    p = hpeer(hb, "bad-since-p", shard=1)
    p.publish(plain, "x")
    p.publish(ch, "y")
    got = c.collect(0.4)
    assert [(m["type"], m["channel"], m["offset"]) for m in got] == [("message", ch, 1)], got
    c.ping_pong()


def test_plain_channel_frames_byte_exact(hb):
    ch = hchan("p/bytes")
    pubc = hpeer(hb, "bytes-pub", shard=1, peerMetadata={"n": 1})
    c = hb.raw(mint("bytes-sub", key_id=HKEY, secret=HSECRET), shard=0)
    assert json.loads(c.recv_text())["type"] == "welcome"
    c.send_json({"type": "subscribe", "channel": ch, "requestId": "s1"})
    assert c.recv_text() == '{"type":"ack","requestId":"s1"}'
    assert json.loads(c.recv_text()) == {"type": "presence", "channel": ch, "joined": [], "left": []}
    pubc.send_text(f'{{"type":"publish","channel":"{ch}","data":{{"a":1}},"requestId":"p1"}}')
    assert pubc.recv_raw() == '{"type":"ack","requestId":"p1"}'
    assert c.recv_text() == f'{{"type":"message","channel":"{ch}","from":"bytes-pub","data":{{"a":1}}}}'
    c.send_json({"type": "subscribe", "channel": ch, "requestId": "s2", "includeSenderMetadata": True})
    assert c.recv_text() == '{"type":"ack","requestId":"s2"}'
    c.recv_text()  # snapshot
    pubc.send_text(f'{{"type":"publish","channel":"{ch}","data":2}}')
    assert c.recv_text() == f'{{"type":"message","channel":"{ch}","from":"bytes-pub","data":2,"fromMetadata":{{"n":1}}}}'
    r = rest_request(hb, "POST", f"/v1/channels/{quote(ch, safe='')}/publish", {"data": 3, "from": "system"}, auth=(HKEY, HSECRET))
    assert r.status == 200 and r.body == json.dumps({"channel": ch}, separators=(",", ":")).encode(), r
    assert c.recv_text() == f'{{"type":"message","channel":"{ch}","from":"system","data":3}}'
    # The history command on a plain channel.
    c.send_json({"type": "history", "channel": ch, "requestId": "h1"})
    m = json.loads(c.recv_text())
    assert m["type"] == "error" and m["code"] == "history_not_enabled" and m["requestId"] == "h1", m


# --------------------------------------------------------------------------------------------
# 7. the history command and the REST endpoint
# --------------------------------------------------------------------------------------------


def test_history_command(hb):
    ch = hchan("h/cmd")
    p = hpeer(hb, "cmd-p", shard=0, peerMetadata={"role": "bot"})
    plainp = hpeer(hb, "cmd-plain", shard=1)
    c = hpeer(hb, "cmd-c", shard=1, permissions=SUB_ONLY)
    # A history channel nobody used yet: nothing retained.
    h = hist(c, hchan("h/unused"))
    assert h["type"] == "ack" and h["offset"] == 0 and h["messages"] == [], h
    epoch = sub(c, ch)["epoch"]
    for n in range(1, 121):
        (p if n % 2 else plainp).request({"type": "publish", "channel": ch, "data": {"n": n}})
    r = rest_pub(hb, ch, {"n": 121}, peerMetadata={"svc": "api"})
    assert r["offset"] == 121
    h = hist(c, ch)
    assert set(h) == {"type", "requestId", "epoch", "offset", "messages"}, h
    assert h["epoch"] == epoch and h["offset"] == 121 and len(h["messages"]) == 100, h["offset"]
    assert [m["offset"] for m in h["messages"]] == list(range(1, 101))  # oldest first, default 100
    m1, m2 = h["messages"][0], h["messages"][1]
    assert m1 == {"offset": 1, "from": "cmd-p", "data": {"n": 1}, "fromMetadata": {"role": "bot"}}, m1
    assert m2 == {"offset": 2, "from": "cmd-plain", "data": {"n": 2}}, m2
    assert [m["offset"] for m in hist(c, ch, limit=3)["messages"]] == [1, 2, 3]
    assert [m["offset"] for m in hist(c, ch, sinceOffset=117)["messages"]] == [118, 119, 120, 121]
    assert [m["offset"] for m in hist(c, ch, sinceOffset=10, limit=2)["messages"]] == [11, 12]
    assert hist(c, ch, sinceOffset=121)["messages"] == []
    assert hist(c, ch, sinceOffset=500)["messages"] == []
    assert hist(c, ch, sinceOffset=0, limit=1)["messages"][0]["offset"] == 1
    last = hist(c, ch, sinceOffset=120, limit=1000)["messages"]
    assert last == [{"offset": 121, "from": "backend", "data": {"n": 121}, "fromMetadata": {"svc": "api"}}], last
    assert len(hist(c, ch, limit=1000)["messages"]) == 121
    # first matching [[apps.history]] entry applies: h/tiny/** keeps 3 although h/** keeps 1000.
    tiny = hchan("h/tiny")
    for n in range(5):
        pub(p, tiny, n)
    h = hist(c, tiny)
    assert [m["offset"] for m in h["messages"]] == [3, 4, 5] and h["offset"] == 5, h
    c.send_json({"type": "ping"})
    c.expect_type("pong", skip=True)  # still connected (its subscription's messages are skipped)


def test_history_command_errors(hb):
    ch = hchan("h/cmd-err")
    c = hpeer(hb, "cmderr", shard=0)
    sub(c, ch)
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": -1}, {"limit": 1.5}, {"limit": "3"},
                {"limit": None}, {"sinceOffset": -1}, {"sinceOffset": 1.5}, {"sinceOffset": "2"},
                {"sinceOffset": None}, {"limit": True}):
        m = hist(c, ch, **bad)
        assert m["type"] == "error" and m["code"] == "invalid_request" and m["requestId"] == c.last_rid, (bad, m)
    # requestId is required.
    c.send_json({"type": "history", "channel": ch})
    m = c.expect_type("error", skip=True)
    assert m["code"] == "invalid_request" and "requestId" not in m, m
    # Channel problems.
    assert hist(c, hchan("p/plain"))["code"] == "history_not_enabled"
    assert hist(c, "_system/h/x")["code"] == "channel_reserved"
    assert hist(c, "")["code"] == "invalid_channel"
    m = c.request({"type": "history"})
    assert m["type"] == "error", m
    # Scope and action.
    scoped = hb.connect(mint("scoped", key_id=HKEY, secret=HSECRET, channels=["h/mine/*"]), name="scoped")
    assert hist(scoped, "h/mine/a")["type"] == "ack"
    assert hist(scoped, ch)["code"] == "channel_not_authorized"
    nosub = hb.connect(mint("nosub", key_id=HKEY, secret=HSECRET, permissions=["publish"]), name="nosub")
    assert hist(nosub, ch)["code"] == "action_not_permitted"
    c.ping_pong()


def test_rest_history_endpoint(hb):
    ch = hchan("h/rest")
    c = hpeer(hb, "resth-c", shard=0, permissions=SUB_ONLY)
    epoch = sub(c, ch)["epoch"]
    p = hpeer(hb, "resth-p", shard=1, peerMetadata={"x": 1})
    for n in range(1, 8):
        pub(p, ch, {"n": n})
    r = rest_hist(hb, ch)
    assert r.status == 200, r
    assert set(r.json) == {"channel", "epoch", "offset", "messages"}, r.json
    assert (r.json["channel"], r.json["epoch"], r.json["offset"]) == (ch, epoch, 7), r.json
    assert r.json["messages"][0] == {"offset": 1, "from": "resth-p", "data": {"n": 1}, "fromMetadata": {"x": 1}}
    assert [m["offset"] for m in r.json["messages"]] == list(range(1, 8))
    assert [m["offset"] for m in rest_hist(hb, ch, "since=2&limit=3").json["messages"]] == [3, 4, 5]
    assert [m["offset"] for m in rest_hist(hb, ch, "limit=2").json["messages"]] == [1, 2]
    assert rest_hist(hb, ch, "since=7").json["messages"] == []
    assert rest_hist(hb, ch, "limit=1000").status == 200
    # Same answer as the WebSocket command.
    h = hist(c, ch, sinceOffset=2, limit=3)
    assert h["messages"] == rest_hist(hb, ch, "since=2&limit=3").json["messages"]
    # Errors.
    r = rest_hist(hb, hchan("p/plain"))
    assert r.status == 404 and r.json["error"] == "history_not_enabled", r
    for q in ("since=-1", "since=abc", "since=1.5", "limit=0", "limit=1001", "limit=x", "limit=-3"):
        r = rest_hist(hb, ch, q)
        assert r.status == 400 and r.json["error"] == "invalid_request", (q, r)
    r = rest_hist(hb, ch, auth=None)
    assert r.status == 401 and r.json["error"] == "unauthorized", r
    r = rest_hist(hb, ch, auth=(HKEY, "sk_secret_wrong_0123456789abcdefghijklmnopq"))
    assert r.status == 401, r
    r = rest_hist(hb, ch, auth=(HPUB_KEY, HPUB_SECRET))
    assert r.status == 403 and r.json["error"] == "action_not_permitted", r
    r = rest_hist(hb, ch, auth=(HSCOPED_KEY, HSCOPED_SECRET))
    assert r.status == 403 and r.json["error"] == "channel_not_authorized", r
    r = rest_hist(hb, "h/scoped/x", auth=(HSCOPED_KEY, HSCOPED_SECRET))
    assert r.status == 200 and r.json["messages"] == [], r
    # A key of another app sees its own (history-less) channel of the same name.
    r = rest_hist(hb, ch, auth=(KEY_ID, SECRET))
    assert r.status == 404 and r.json["error"] == "history_not_enabled", r


# --------------------------------------------------------------------------------------------
# 8. strict order: ack, presence snapshot, replay, live
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shard", [0, 1])
def test_order_ack_snapshot_replay_live(hb, shard):
    ch = hchan("order")
    other = hpeer(hb, f"ord-other{shard}", shard=1 - shard, permissions=SUB_ONLY)
    epoch = sub(other, ch)["epoch"]
    p = hpeer(hb, f"ord-pub{shard}", shard=shard, permissions=["publish"])
    for n in range(5):
        pub(p, ch, {"p": "pre", "i": n})
    live = Publisher("live", ch, 300, rate=400, client=hpeer(hb, f"ord-live{shard}", shard=1 - shard, permissions=["publish"]))
    live.start()
    time.sleep(0.1)
    c = hpeer(hb, f"ord-c{shard}", shard=shard)  # with presence
    c.send_json({"type": "subscribe", "channel": ch, "since": {"epoch": epoch, "offset": 2}, "requestId": "o1"})
    frames = []
    deadline = time.monotonic() + 15
    while not frames or frames[-1].get("offset") != 305:
        m = next_frame(c, deadline - time.monotonic())
        assert m is not None, f"stopped after {frames[-3:]}"
        frames.append(m)
    live.check()
    ack, snap, msgs = frames[0], frames[1], frames[2:]
    assert ack["type"] == "ack" and ack["requestId"] == "o1" and ack["recovered"] is True, frames[:3]
    assert snap["type"] == "presence" and snap["channel"] == ch, frames[:3]
    assert [j["peerId"] for j in snap["joined"]] == [f"ord-other{shard}"] and snap["left"] == [], snap
    assert all(m["type"] == "message" for m in msgs), [m for m in msgs if m["type"] != "message"][:3]
    assert [m["offset"] for m in msgs] == list(range(3, 306))
    replayed = sum(1 for m in msgs if m["offset"] <= ack["offset"])
    print(f"\n[order shard {shard}] ack.offset {ack['offset']}: {replayed} replayed, {len(msgs) - replayed} live, contiguous")
    c.no_message_within(0.2)


@pytest.mark.timeout(60)
def test_plain_subscribe_live_starts_right_after_the_ack_offset(hb):
    ch = hchan("order")
    live = Publisher("live", ch, 400, rate=400, client=hpeer(hb, "ps-live", shard=0, permissions=["publish"]))
    live.start()
    time.sleep(0.2)
    results = []
    for k in range(4):
        c = hpeer(hb, f"ps-c{k}", shard=k % 2, permissions=SUB_ONLY)
        ack = sub(c, ch)
        assert ack["type"] == "ack" and "recovered" not in ack, ack
        results.append((c, ack["offset"]))
        time.sleep(0.1)
    live.check()
    for c, k in results:
        got = read_offsets(c, ch, 400)
        assert [m["offset"] for m in got] == list(range(k + 1, 401)), (k, got[:3])


# --------------------------------------------------------------------------------------------
# 9. total order across shards and REST
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_total_order_across_shards_and_rest(hb):
    ch = hchan("h/total")
    subs = [hpeer(hb, f"tot-s{k}", shard=k % 2, permissions=SUB_ONLY) for k in range(4)]
    for s in subs:
        assert sub(s, ch)["offset"] == 0
    pubs = [
        Publisher(f"ws{s}", ch, 200, client=hpeer(hb, f"tot-p{s}", shard=s, permissions=["publish"])) for s in range(2)
    ] + [Publisher("rest", ch, 200, rest_broker=hb)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.check()
    by_offset = {o: ("rest" if p.label == "rest" else p.label, i) for p in pubs for i, o in enumerate(p.offsets)}
    assert sorted(by_offset) == list(range(1, 601))
    seqs = []
    for s in subs:
        got = read_offsets(s, ch, 600)
        check_stream(got, 1, {})
        # The offset a publication was acked with is the one its subscribers see.
        for m in got:
            assert (m["data"]["p"], m["data"]["i"]) == by_offset[m["offset"]], m
        seqs.append([(m["offset"], m["data"]["p"], m["data"]["i"]) for m in got])
        s.no_message_within(0.1)
    assert all(q == seqs[0] for q in seqs)
    switches = sum(1 for a, b in zip(seqs[0], seqs[0][1:]) if a[1] != b[1])
    print(f"\n[total order] 600 publications from ws0/ws1/rest, interleaved {switches} times; 4 subscribers (2 per shard) agree")
    h = hist(subs[0], ch, limit=1000)
    assert [(m["offset"], m["data"]["p"], m["data"]["i"]) for m in h["messages"]] == seqs[0]


# --------------------------------------------------------------------------------------------
# config and metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        'channels = ["x/**"]\nsize = 0\nttl_secs = 60',
        'channels = ["x/**"]\nsize = 100001\nttl_secs = 60',
        'channels = ["x/**"]\nsize = 10\nttl_secs = 0',
        'channels = ["x/**"]\nsize = 10\nttl_secs = 60\nbogus = 1',
        'channels = []\nsize = 10\nttl_secs = 60',
        'channels = ["x/***"]\nsize = 10\nttl_secs = 60',
        'channels = ["x/**"]\nsize = 10\nttl_secs = 2592001',
        'channels = ["x/**"]\nsize = 10',
    ],
)
def test_bad_history_config_is_refused_at_startup(entry):
    cfg = make_config(extra_apps=f"""
[[apps]]
id = "badhist"
[[apps.secret_keys]]
id = "sk_id_badhist1"
secret = "sk_secret_badhist_0123456789abcdefghijklm"
[[apps.history]]
{entry}
""")
    with pytest.raises(BrokerStartError):
        Broker(cfg, start_timeout=5, name="bad-history-config")


def test_history_limits_accepted_at_their_bounds(broker_factory):
    cfg = make_config(extra_apps="""
[[apps]]
id = "bounds"
[[apps.secret_keys]]
id = "sk_id_bounds1"
secret = "sk_secret_bounds_0123456789abcdefghijklmn"
[[apps.history]]
channels = ["one/**"]
size = 1
ttl_secs = 1
[[apps.history]]
channels = ["max/**"]
size = 100000
ttl_secs = 86400
""")
    b = broker_factory(cfg, args=["--history-max-bytes", "1048576"])
    c = b.connect(mint("bounds", key_id="sk_id_bounds1", secret="sk_secret_bounds_0123456789abcdefghijklmn"))
    c.subscribe("one/a")
    align_to_second()  # ttl_secs = 1: stay well inside one second
    for n in range(3):
        c.publish("one/b", n)
    h = hist(c, "one/b")
    # size = 1 keeps only the last; ttl_secs = 1 may already have taken it (test below).
    assert h["offset"] == 3 and [m["offset"] for m in h["messages"]] in ([3], []), h


def test_history_gauges_per_shard(hb):
    m = rest_metrics(hb)
    for name in ("ringcast_history_messages", "ringcast_history_bytes"):
        assert sorted(per_shard(m, name)) == [0, 1], (name, metric_values(m, name))
    for reason in ("size", "ttl", "memory"):
        metric_sum(m, "ringcast_history_evictions_total", reason=reason)
    ch = hchan("small")
    before = rest_metrics(hb)
    p = hpeer(hb, "gauge-p", shard=0)
    for n in range(15):
        pub(p, ch, "y" * 100)
    after = rest_metrics(hb)
    grew = sum(per_shard(after, "ringcast_history_messages").values()) - sum(per_shard(before, "ringcast_history_messages").values())
    expired = metric_sum(after, "ringcast_history_evictions_total", reason="ttl") - metric_sum(before, "ringcast_history_evictions_total", reason="ttl")
    assert grew == 10 - expired, (grew, expired)  # entries of earlier ttl/ tests may expire meanwhile
    size_ev = metric_sum(after, "ringcast_history_evictions_total", reason="size") - metric_sum(before, "ringcast_history_evictions_total", reason="size")
    assert size_ev == 5, size_ev


# --------------------------------------------------------------------------------------------
# large replays and answers: a client that reads promptly is never a slow consumer
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_replay_larger_than_the_outbound_cap(hb):
    # 40 retained messages of ~60 KB (2.4 MB) against the default 1 MiB per-connection
    # outbound cap: a resuming client that reads as fast as it can must get every one of them
    # (a replay that closes it 4008 could never be resumed from).
    ch = hchan("h/big")
    c0 = hpeer(hb, "big-c0", shard=0, permissions=SUB_ONLY)
    epoch = sub(c0, ch)["epoch"]
    p = hpeer(hb, "big-p", shard=1, permissions=["publish"])
    blob = "z" * 60000
    for n in range(40):
        pub(p, ch, {"n": n, "b": blob})
    read_offsets(c0, ch, 40)
    c = hpeer(hb, "big-r", shard=0, permissions=SUB_ONLY)
    ack = sub(c, ch, since={"epoch": epoch, "offset": 0})
    assert ack["recovered"] is True and ack["offset"] == 40, ack
    got = read_offsets(c, ch, 40, timeout=20)
    assert [m["offset"] for m in got] == list(range(1, 41))
    assert all(m["data"] == {"n": m["offset"] - 1, "b": blob} for m in got)
    # The history command answering ~2.4 MB in one ack.
    h = c.request({"type": "history", "channel": ch, "limit": 1000}, timeout=20)
    assert h["type"] == "ack" and [m["offset"] for m in h["messages"]] == list(range(1, 41)), (h.get("code"), h.get("offset"))
    c.ping_pong()


def test_pattern_subscribers_get_offsets_of_history_channels(hb):
    # §8.1 "every message frame on a history channel carries offset", whoever delivers it;
    # §8.3 delivers it once even when an exact and a pattern subscription both match.
    base = hchan("h/pat")
    c = hpeer(hb, "pat-c", shard=0, permissions=SUB_ONLY)
    m = c.request({"type": "subscribe", "channel": f"{base}/*", "pattern": True})
    assert m == {"type": "ack", "requestId": c.last_rid}, m  # a pattern has no single epoch
    assert sub(c, f"{base}/a")["offset"] == 0
    p = hpeer(hb, "pat-p", shard=1)
    pub(p, f"{base}/a", 1)
    pub(p, f"{base}/b", 2)
    pub(p, f"{base}/a", 3)
    got = sorted((m["channel"], m["offset"], m["data"]) for m in messages(c, 0.5))  # no cross-channel order
    assert got == [(f"{base}/a", 1, 1), (f"{base}/a", 2, 3), (f"{base}/b", 1, 2)], got
