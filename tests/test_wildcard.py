"""Verifies protocol.md §8.3 wildcard subscriptions through the real binary (2 shards, publishers
and subscribers on both shards): `subscribe` with `"pattern": true` delivers every matching
channel's publications with the concrete channel; a publication matching several of a
connection's subscriptions arrives once; the pattern must lie inside the connection's scope;
patterns count toward the channel limit; no presence for or about pattern subscriptions;
`unsubscribe` with `"pattern": true` stops delivery; disconnect cleans the shard's trie up
(gauges back to zero, RSS flat across rounds); a plain client sees exactly what it saw before."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import (
    ROOM_KEY_ID,
    ROOM_SECRET,
    Broker,
    chan,
    make_config,
    mint,
    rest_metrics,
    rest_request,
    wait_until,
)
from test_hostile import rss_kib

WILD_KEY_ID = "sk_id_wild1"
WILD_SECRET = "sk_secret_wild_0123456789abcdefghijklmnop"
CONFIG = make_config(
    extra_apps=f"""
[[apps]]
id = "wild"
max_connections = 5000
[[apps.secret_keys]]
id = "{WILD_KEY_ID}"
secret = "{WILD_SECRET}"
channel_patterns = ["**"]
"""
)


@pytest.fixture(scope="module")
def wb():
    b = Broker(CONFIG, name="wildcard-broker")
    yield b
    b.stop()


def peer(b, name, shard=None, **claims):
    return b.connect(mint(name, **claims), shard=shard, name=name)


def psub(c, pattern, **extra):
    return c.request({"type": "subscribe", "channel": pattern, "pattern": True, **extra})


def punsub(c, pattern):
    return c.request({"type": "unsubscribe", "channel": pattern, "pattern": True})


def messages(c, seconds=0.4):
    return [m for m in c.collect(seconds) if m["type"] == "message"]


def publishers(b):
    """One publisher on each shard."""
    return [peer(b, f"pub{s}", shard=s) for s in range(b.shards)]


def test_star_and_double_star_deliver_concrete_channels(wb):
    p = chan("w")
    subs = [peer(wb, f"ws{s}", shard=s) for s in range(2)]
    for c in subs:
        assert psub(c, f"{p}/*")["type"] == "ack"
        assert psub(c, f"{p}/**/deep")["type"] == "ack"
    pubs = publishers(wb)
    sent = []
    for i, pub in enumerate(pubs):
        for ch in (f"{p}/a{i}", f"{p}/x/y/deep", f"{p}/x/nope", f"{p}-other/a", f"{p}/a/b"):
            pub.publish(ch, {"i": i, "ch": ch})
            sent.append(ch)
    want = sorted(
        [(f"{p}/a{i}", i) for i in range(2)] + [(f"{p}/x/y/deep", i) for i in range(2)]
    )
    for c in subs:
        got = messages(c, 0.6)
        assert sorted((m["channel"], m["data"]["i"]) for m in got) == want, got
        for m in got:
            assert m["channel"] == m["data"]["ch"] and m["from"] in ("pub0", "pub1"), m
            assert "pattern" not in m and "fromMetadata" not in m, m
    # REST publications reach pattern subscribers too.
    r = rest_request(wb, "POST", f"/v1/channels/{p}%2Frest/publish", {"data": 7, "from": "system"})
    assert r.status == 200, r
    for c in subs:
        m = c.expect_type("message", skip=True)
        assert (m["channel"], m["data"], m["from"]) == (f"{p}/rest", 7, "system"), m


def test_double_star_matches_across_segments(wb):
    p = chan("w")
    c = peer(wb, "deep", shard=0)
    assert psub(c, f"{p}/**")["type"] == "ack"
    pub = peer(wb, "dpub", shard=1)
    for ch in (f"{p}/a", f"{p}/a/b/c", f"{p}/", f"{p}x/a"):
        pub.publish(ch, ch)
    assert sorted(m["channel"] for m in messages(c)) == sorted([f"{p}/a", f"{p}/a/b/c", f"{p}/"])


def test_exact_and_two_patterns_deliver_once(wb):
    p = chan("w")
    ch = f"{p}/room/1"
    subs = []
    for s in range(2):
        c = peer(wb, f"once{s}", shard=s)
        c.subscribe(ch)
        assert psub(c, f"{p}/room/*")["type"] == "ack"
        assert psub(c, f"{p}/**")["type"] == "ack"
        assert psub(c, f"{p}/*/1")["type"] == "ack"
        subs.append(c)
    for c in subs:
        c.collect(0.2)  # presence of the exact subscription
    for n, pub in enumerate(publishers(wb)):
        pub.publish(ch, n)
        pub.publish(f"{p}/room/2", n)  # two patterns of each subscriber match: once too
    for c in subs:
        got = messages(c, 0.6)
        assert sorted((m["channel"], m["data"]) for m in got) == sorted(
            [(ch, 0), (ch, 1), (f"{p}/room/2", 0), (f"{p}/room/2", 1)]
        ), got


def test_publisher_does_not_receive_its_own_publication_through_a_pattern(wb):
    p = chan("w")
    c = peer(wb, "self", shard=0)
    assert psub(c, f"{p}/*")["type"] == "ack"
    c.publish(f"{p}/a", 1)
    c.no_message_within(0.3)


def test_include_sender_metadata_and_resubscribe(wb):
    p = chan("w")
    c = peer(wb, "metasub", shard=0)
    assert psub(c, f"{p}/*")["type"] == "ack"
    pub = peer(wb, "metapub", shard=1, peerMetadata={"name": "M"})
    pub.publish(f"{p}/a", 1)
    assert "fromMetadata" not in c.expect_type("message")
    # Re-subscribing the same pattern is an ack and updates includeSenderMetadata.
    assert psub(c, f"{p}/*", includeSenderMetadata=True)["type"] == "ack"
    pub.publish(f"{p}/a", 2)
    m = c.expect_type("message")
    assert m["data"] == 2 and m["fromMetadata"] == {"name": "M"}, m


def test_scope_refusals(wb):
    tok = mint("scoped", channels=["x/*"])
    c = wb.connect(tok, name="scoped")
    for bad in ("x/**", "**", "y/*", "*", "x/*/z"):
        m = psub(c, bad)
        assert m["type"] == "error" and m["code"] == "channel_not_authorized", (bad, m)
    assert psub(c, "x/*")["type"] == "ack"
    assert psub(c, "x/a-*")["type"] == "ack"
    assert psub(c, "x/lit")["type"] == "ack"
    # The key's own patterns cap too: room/* key.
    rc = wb.connect(mint("roomy", key_id=ROOM_KEY_ID, secret=ROOM_SECRET, channels=None), name="roomy")
    assert psub(rc, "room/**")["code"] == "channel_not_authorized"
    assert psub(rc, "room/*")["type"] == "ack"
    # Needs the subscribe action.
    np = wb.connect(mint("nosub", permissions=["publish"]), name="nosub")
    assert psub(np, "x/*")["code"] == "action_not_permitted"


def test_invalid_patterns(wb):
    c = peer(wb, "invalid")
    for bad in ("x/***", "x\\y", "", "a" * 257, "x\u0007/*"):
        m = psub(c, bad)
        assert m["type"] == "error" and m["code"] == "invalid_channel", (bad, m)
        m = punsub(c, bad)
        assert m["type"] == "error" and m["code"] == "invalid_channel", (bad, m)
    assert psub(c, "_system/*")["code"] == "channel_reserved"
    m = c.request({"type": "subscribe", "channel": "x/*", "pattern": "yes"})
    assert m["type"] == "error" and m["code"] == "malformed_message", m


def test_patterns_count_toward_the_channel_limit(broker_factory):
    b = broker_factory(CONFIG, args=["--max-channels-per-conn", "3"])
    c = b.connect(mint("lim"), name="lim")
    c.subscribe("a")
    assert psub(c, "p/*")["type"] == "ack"
    assert psub(c, "q/**")["type"] == "ack"
    assert psub(c, "r/*")["code"] == "channel_limit_exceeded"
    assert c.request({"type": "subscribe", "channel": "b"})["code"] == "channel_limit_exceeded"
    # Re-subscribing a pattern it has is not a new one.
    assert psub(c, "q/**")["type"] == "ack"
    assert punsub(c, "p/*")["type"] == "ack"
    assert psub(c, "r/*")["type"] == "ack"
    assert psub(c, "s/*")["code"] == "channel_limit_exceeded"


def test_no_presence_for_or_about_pattern_subscriptions(wb):
    p = chan("w")
    ch = f"{p}/room"
    exact = [peer(wb, f"ex{s}", shard=s) for s in range(2)]
    for c in exact:
        c.subscribe(ch)
    for c in exact:
        c.collect(0.2)
    pats = [peer(wb, f"pat{s}", shard=s, peerMetadata={"n": s}) for s in range(2)]
    for c in pats:
        assert psub(c, f"{p}/*")["type"] == "ack"
    # The pattern subscriber gets no roster snapshot; exact subscribers hear no join.
    for c in pats:
        c.no_message_within(0.3)
    for c in exact:
        c.no_message_within(0.3)
    # Nor do they appear in the channel's roster over REST.
    r = rest_request(wb, "GET", f"/v1/channels/{p}%2Froom/peers")
    assert r.status == 200 and sorted(x["peerId"] for x in r.json["peers"]) == ["ex0", "ex1"], r
    # Presence of exact subscribers joining and leaving does not reach the pattern subscriber.
    late = peer(wb, "late", shard=1)
    late.subscribe(ch)
    late.unsubscribe(ch)
    for c in pats:
        c.no_message_within(0.3)
    # Pattern unsubscribe and disconnect announce nothing either.
    assert punsub(pats[0], f"{p}/*")["type"] == "ack"
    pats[1].close()
    for c in exact:
        frames = c.collect(0.4)
        assert all(
            m["type"] != "presence" or {j["peerId"] for j in m["joined"] + m["left"]} == {"late"}
            for m in frames
        ), frames


def test_unsubscribe_pattern_stops_delivery_and_is_idempotent(wb):
    p = chan("w")
    c = peer(wb, "unsub", shard=1)
    assert psub(c, f"{p}/*")["type"] == "ack"
    pubs = publishers(wb)
    for pub in pubs:
        pub.publish(f"{p}/a", 1)
    assert len(messages(c)) == 2
    assert punsub(c, f"{p}/*")["type"] == "ack"
    assert punsub(c, f"{p}/*")["type"] == "ack"
    assert punsub(c, f"{p}/never")["type"] == "ack"
    # A plain unsubscribe does not remove a pattern of the same text.
    assert psub(c, f"{p}/**")["type"] == "ack"
    c.unsubscribe(f"{p}/**")
    for pub in pubs:
        pub.publish(f"{p}/a", 2)
        pub.publish(f"{p}/b", 3)
    got = messages(c)
    assert sorted((m["channel"], m["data"]) for m in got) == sorted(
        [(f"{p}/a", 2), (f"{p}/b", 3)] * 2
    ), got
    assert punsub(c, f"{p}/**")["type"] == "ack"
    for pub in pubs:
        pub.publish(f"{p}/a", 4)
    c.no_message_within(0.3)


def test_plain_subscriber_frames_are_unchanged(wb):
    """A client that never sends `pattern` gets byte-for-byte the frames it got before, even
    while pattern subscribers share its shard and channel."""
    p = chan("w")
    ch = f"{p}/plain"
    plain = peer(wb, "plain", shard=0)
    plain.subscribe(ch)
    other = peer(wb, "other", shard=0)
    assert psub(other, f"{p}/*")["type"] == "ack"
    pub = peer(wb, "ppub", shard=1, peerMetadata={"k": 1})
    pub.send_text(json.dumps({"type": "publish", "channel": ch, "data": {"a": [1, 2]}}))
    raw = plain.recv_raw()
    assert raw == '{"type":"message","channel":"%s","from":"ppub","data":{"a": [1, 2]}}' % ch, raw
    plain.send_json({"type": "subscribe", "channel": f"{p}/two", "requestId": "s2"})
    assert plain.recv_raw() == '{"type":"ack","requestId":"s2"}'
    assert json.loads(plain.recv_raw()) == {"type": "presence", "channel": f"{p}/two", "joined": [], "left": []}


def test_disconnect_cleans_up(broker_factory):
    """1,000 connections subscribe 4 patterns each, then disconnect; twice. After each round
    the pattern gauges (subscriptions, trie nodes) are back to zero, which is the leak check
    proper. RSS: mimalloc keeps freed pages, so the RSS does not fall back to the idle start;
    what is asserted is that the second round does not add to the first (RSS after round 2
    within 8 MiB of round 1's peak). Publications still flow afterwards on both shards."""
    b = broker_factory(CONFIG, name="wild-cleanup")
    n = 1000
    tok = mint("crowd", key_id=WILD_KEY_ID, secret=WILD_SECRET)

    def one(i):
        c = b.connect(tok, name=f"crowd{i}")
        for pat in (f"t{i}/**", f"t{i}/*/x", "shared/*", f"t{i % 7}/a-*"):
            assert psub(c, pat)["type"] == "ack"
        return c

    def gauges():
        m = rest_metrics(b)
        return m["ringcast_pattern_subscriptions"], m["ringcast_pattern_trie_nodes"]

    def conns():
        m = rest_metrics(b)
        return m['ringcast_connections{shard="0"}'] + m['ringcast_connections{shard="1"}']

    def round_trip():
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as ex:
            crowd = list(ex.map(one, range(n)))
        subs, nodes = gauges()
        assert subs == 4 * n and nodes > 2 * n, (subs, nodes)
        peak = rss_kib(b.proc.pid)
        pub = b.connect(mint("pub", key_id=WILD_KEY_ID, secret=WILD_SECRET), name="pub")
        pub.publish("shared/x", 1)
        assert crowd[0].expect_type("message", skip=True)["channel"] == "shared/x"
        assert crowd[-1].expect_type("message", skip=True)["channel"] == "shared/x"
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda c: c.close(), crowd))
        pub.close()
        b.open_clients.clear()
        wait_until(lambda: gauges() == (0, 0), timeout=20, what="pattern gauges back to zero")
        wait_until(lambda: conns() == 0, timeout=20, what="connections closed")
        time.sleep(1.5)  # a housekeeping tick shrinks tables
        return peak, rss_kib(b.proc.pid), time.monotonic() - t0

    rss_start = rss_kib(b.proc.pid)
    peak1, after1, t1 = round_trip()
    peak2, after2, t2 = round_trip()
    print(f"cleanup: rss start {rss_start} KiB; round 1 peak {peak1} after {after1}; "
          f"round 2 peak {peak2} after {after2} KiB; rounds {t1:.1f}s {t2:.1f}s")
    assert after2 <= peak1 + 8 * 1024, (rss_start, peak1, after1, peak2, after2)
    # Publications still work on both shards, for exact and pattern subscribers.
    subs = [b.connect(tok, shard=s, name=f"after{s}") for s in range(2)]
    subs[0].subscribe("after/1")
    assert psub(subs[1], "after/*")["type"] == "ack"
    pub = b.connect(mint("pub2", key_id=WILD_KEY_ID, secret=WILD_SECRET), name="pub2")
    pub.publish("after/1", "ok")
    for c in subs:
        assert c.expect_type("message", skip=True)["data"] == "ok"
