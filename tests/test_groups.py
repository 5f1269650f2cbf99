"""Verifies protocol.md §8.2 queue groups through the real binary (2 shards, members and
publishers on both shards): `subscribe` with `"group"` validates the name (`invalid_group`)
and refuses `pattern:true` (`invalid_request`); one subscription per channel per connection
(`subscription_conflict` both ways, same group again is an idempotent ack with a fresh presence
snapshot); each publication reaches exactly one member of each group (no loss, no duplicate,
round robin: even shares), while plain subscribers still get everything; REST publications too;
the publisher is never picked for its own group (alone, the publication is counted in
`ringcast_group_undelivered_total`); members leaving mid-stream lose nothing unless no member is
left, and then the counter equals what is missing; members take part in presence and the REST
roster like any subscriber."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

from helpers import Broker, chan, mint, rest_metrics, rest_request, wait_until

FAST = ["--rate-limit-per-sec", "1000000", "--rate-limit-burst", "1000000"]


@pytest.fixture(scope="module")
def gb():
    b = Broker(args=FAST, shards=2, name="groups-broker")
    yield b
    b.stop()


def peer(b, name, shard=None, **claims):
    return b.connect(mint(name, **claims), shard=shard, name=name)


def gsub(c, channel, group, **extra):
    """Raw group subscribe: the ack or error carrying the request id."""
    return c.request({"type": "subscribe", "channel": channel, "group": group, **extra})


def join(c, channel, group, **extra):
    """Group subscribe, expecting the ack and the presence snapshot."""
    return c.subscribe(channel, group=group, **extra)


def drain_ids(c, into: Counter, seconds: float = 0.0) -> None:
    """Moves every `message` frame already received (or arriving within `seconds`) into
    `into` (data id → count)."""
    frames = c.collect(seconds)
    while True:  # then whatever is already buffered, without waiting
        more = c.collect(0.002)
        if not more:
            break
        frames += more
    for m in frames:
        if m["type"] == "message":
            into[m["data"]["id"]] += 1


def undelivered(b) -> float:
    return rest_metrics(b)["ringcast_group_undelivered_total"]


def stable_undelivered(b, settle: float = 0.3) -> float:
    """The counter once it stopped moving for `settle` seconds."""
    last = undelivered(b)
    while True:
        time.sleep(settle)
        now = undelivered(b)
        if now == last:
            return now
        last = now


def publishers(b, prefix="pub"):
    return [peer(b, f"{prefix}{s}", shard=s) for s in range(b.shards)]


errors: list = []


def stream(pub, channel, ids, pace_every=0, pause=0.0):
    """Fire-and-forget publications (no requestId), then a round trip: every one was handled
    by the publisher's shard. Any error frame is a failure (kept in `errors`: a thread's
    exception would not reach pytest)."""
    for i, x in enumerate(ids):
        pub.publish(channel, {"id": x}, ack=False)
        if pace_every and i % pace_every == pace_every - 1:
            time.sleep(pause)
    pub.sync(timeout=30)
    frames = pub.collect(0.01)
    errors.extend(m for m in frames if m["type"] == "error")
    pub.pending.extend(m for m in frames if m["type"] != "error")  # a member publisher's messages


# ------------------------------------------------------------------------------------------
# validation and conflicts
# ------------------------------------------------------------------------------------------


def test_invalid_group_and_group_with_pattern(gb):
    c = peer(gb, "val", shard=0)
    ch = chan("gval")
    for bad in ["", "a b", "a/b", "x" * 65, "é", "g*", 7, None, ["g"], {"g": 1}, True]:
        m = gsub(c, ch, bad)
        assert m["type"] == "error" and m["code"] == "invalid_group", (bad, m)
    assert gsub(c, ch, "x" * 64)["type"] == "ack"
    assert c.expect_type("presence", skip=True, channel=ch)
    m = gsub(c, ch + "/*", "g", pattern=True)
    assert m["type"] == "error" and m["code"] == "invalid_request", m
    # Nothing of the refused subscriptions exists: only the 64-char group subscription.
    c.unsubscribe(ch)
    assert gsub(c, ch, "A-Z_a.z-09")["type"] == "ack"


def test_subscription_conflict_both_ways_and_idempotent_same_group(gb):
    ch = chan("gconf")
    a = peer(gb, "conf-a", shard=0)
    pub = peer(gb, "conf-pub", shard=1)
    # plain → group: conflict
    a.subscribe(ch)
    m = gsub(a, ch, "g")
    assert m["type"] == "error" and m["code"] == "subscription_conflict", m
    a.unsubscribe(ch)
    # group → plain, group → other group: conflict, and the membership is unchanged
    join(a, ch, "g")
    m = a.request({"type": "subscribe", "channel": ch})
    assert m["type"] == "error" and m["code"] == "subscription_conflict", m
    m = gsub(a, ch, "h")
    assert m["type"] == "error" and m["code"] == "subscription_conflict", m
    # same group again: ack, then a fresh presence snapshot (like a plain re-subscribe)
    snap = join(a, ch, "g")
    assert snap["joined"] == [], snap
    for i in range(6):
        pub.publish(ch, {"id": i})
    got = Counter()
    wait_until(lambda: (drain_ids(a, got, 0.05), sum(got.values()) == 6)[1], what="6 messages")
    assert got == Counter(range(6)), got
    a.no_message_within(0.2)
    # unsubscribe leaves the group: a plain subscribe now works
    a.unsubscribe(ch)
    a.subscribe(ch)


# ------------------------------------------------------------------------------------------
# delivery
# ------------------------------------------------------------------------------------------


def test_exactly_once_and_even_over_100_members_on_two_shards(gb):
    ch = chan("gload")
    members = [peer(gb, f"w{i}", shard=i % 2, permissions=["subscribe", "publish"]) for i in range(100)]
    for m in members:
        # Without the presence action: no roster traffic, only the ack.
        m.subscribe(ch, presence=False, group="workers")
    plain = [peer(gb, f"plain{s}", shard=s, permissions=["subscribe"]) for s in range(2)]
    for p in plain:
        p.subscribe(ch, presence=False)
    before = stable_undelivered(gb, 0.1)
    pubs = publishers(gb, "lpub")
    per_pub = 10_000
    ids = [[f"{s}-{i}" for i in range(per_pub)] for s in range(len(pubs))]
    ts = [threading.Thread(target=stream, args=(p, ch, ids[s])) for s, p in enumerate(pubs)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    total = per_pub * len(pubs)
    per_member = [Counter() for _ in members]
    plain_got = [Counter() for _ in plain]

    def all_in():
        for c, cnt in zip(members, per_member):
            drain_ids(c, cnt)
        for c, cnt in zip(plain, plain_got):
            drain_ids(c, cnt)
        return sum(sum(c.values()) for c in per_member) >= total and all(sum(c.values()) >= total for c in plain_got)

    wait_until(all_in, timeout=60, interval=0.1, what="every publication delivered")
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    all_in()  # late duplicates would show here
    union = Counter()
    for cnt in per_member:
        union.update(cnt)
    want = {x for lst in ids for x in lst}
    assert set(union) == want and max(union.values()) == 1, "loss or duplicate among members"
    for cnt in plain_got:
        assert set(cnt) == want and max(cnt.values()) == 1
    shares = [sum(c.values()) for c in per_member]
    ratio = max(shares) / min(shares)
    print(f"\n100 members, {total} publications in {elapsed:.1f}s: shares min {min(shares)} max {max(shares)} ratio {ratio:.3f}")
    assert ratio <= 1.2, shares
    assert undelivered(gb) == before
    m = rest_metrics(gb)
    assert m['ringcast_group_members{shard="0"}'] == 50 and m['ringcast_group_members{shard="1"}'] == 50, m


def test_rest_publication_reaches_exactly_one_member(gb):
    ch = chan("grest")
    members = [peer(gb, f"rm{i}", shard=i % 2) for i in range(3)]
    for c in members:
        join(c, ch, "g")
    plain = peer(gb, "rplain", shard=1)
    plain.subscribe(ch)
    n = 30
    for i in range(n):
        r = rest_request(gb, "POST", f"/v1/channels/{quote(ch, safe='')}/publish", {"data": {"id": i}, "from": "system"})
        assert r.status == 200, r
    got = [Counter() for _ in members]
    seen = Counter()
    wait_until(lambda: (drain_ids(plain, seen, 0.05), sum(seen.values()) == n)[1], what="plain subscriber gets all")
    wait_until(lambda: ([drain_ids(c, g, 0.02) for c, g in zip(members, got)], sum(sum(g.values()) for g in got) >= n)[1],
               what="members get all")
    time.sleep(0.3)
    for c, g in zip(members, got):
        drain_ids(c, g)
    union = sum(got, Counter())
    assert union == Counter(range(n)), union
    assert [sum(g.values()) for g in got] == [10, 10, 10]


def test_publisher_is_never_picked_and_alone_is_counted(gb):
    ch = chan("gself")
    a = peer(gb, "self-a", shard=0)
    b = peer(gb, "self-b", shard=1)
    join(a, ch, "g")
    join(b, ch, "g")
    before = stable_undelivered(gb, 0.1)
    for i in range(10):
        a.publish(ch, {"id": i})
    got = Counter()
    wait_until(lambda: (drain_ids(b, got, 0.05), sum(got.values()) == 10)[1], what="b gets all ten")
    assert got == Counter(range(10))
    a.no_message_within(0.3, ignore=("presence",))
    # b leaves: a is the only member, so its own publications go nowhere, and are counted.
    b.unsubscribe(ch)
    for i in range(10, 15):
        a.publish(ch, {"id": i})
    wait_until(lambda: undelivered(gb) == before + 5, what="five undelivered")
    a.no_message_within(0.3, ignore=("presence",))
    assert stable_undelivered(gb) == before + 5
    # Another connection publishing reaches a.
    b.publish(ch, {"id": 99})
    assert a.expect_type("message", skip=True)["data"] == {"id": 99}


def test_two_groups_each_get_every_publication_once(gb):
    ch = chan("gtwo")
    ga = [peer(gb, f"ga{i}", shard=i % 2) for i in range(3)]
    gbm = [peer(gb, f"gb{i}", shard=(i + 1) % 2) for i in range(2)]
    for c in ga:
        join(c, ch, "alpha")
    for c in gbm:
        join(c, ch, "beta")
    pubs = publishers(gb, "tpub")
    n = 300
    for i in range(n):
        pubs[i % 2].publish(ch, {"id": i}, ack=False)
    for p in pubs:
        p.sync()
    ca = [Counter() for _ in ga]
    cb = [Counter() for _ in gbm]

    def done():
        for c, k in zip(ga + gbm, ca + cb):
            drain_ids(c, k)
        return sum(sum(k.values()) for k in ca) >= n and sum(sum(k.values()) for k in cb) >= n

    try:
        wait_until(done, timeout=15, what="both groups complete")
    except AssertionError:
        raise AssertionError(f"alpha {[sum(k.values()) for k in ca]} beta {[sum(k.values()) for k in cb]} "
                             f"{sorted(set(range(n)) - set(sum(ca, Counter())))[:20]} {sorted(set(range(n)) - set(sum(cb, Counter())))[:20]}")
    time.sleep(0.3)
    done()
    assert sum(ca, Counter()) == Counter(range(n))
    assert sum(cb, Counter()) == Counter(range(n))
    assert [sum(k.values()) for k in ca] == [100, 100, 100]
    assert [sum(k.values()) for k in cb] == [150, 150]


def _leave_mid_stream(gb, n_members, leavers, per_pub):
    """Members on both shards, `leavers` of them leaving (unsubscribe, then close) while two
    publishers stream. Publisher 0 is a member of the group too: it is never picked for its own
    publications, and it keeps the group in existence when every other member has left (a group
    exists while it has a member), so its publications then have no eligible member and are
    counted. Returns (missing, counted, per-member shares)."""
    ch = chan("gleave")
    members = [peer(gb, f"lv{i}", shard=i % 2, permissions=["subscribe"]) for i in range(n_members)]
    for c in members:
        c.subscribe(ch, presence=False, group="g")
    pubs = publishers(gb, "lvpub")
    pubs[0].subscribe(ch, presence=False, group="g")
    before = stable_undelivered(gb, 0.1)
    ids = [[f"{s}-{i}" for i in range(per_pub)] for s in range(2)]
    ts = [threading.Thread(target=stream, args=(p, ch, ids[s], 20, 0.01)) for s, p in enumerate(pubs)]
    for t in ts:
        t.start()
    got = [Counter() for _ in members]
    own = Counter()  # what publisher 0 received as a member
    time.sleep(0.1)
    for k in range(leavers):
        c = members[k]
        # Every frame queued before the unsubscribe comes before its ack: what the member
        # got up to the ack is all it gets.
        c.unsubscribe(ch, timeout=30)
        drain_ids(c, got[k])
        c.close()
        time.sleep(0.02)
    assert all(t.is_alive() for t in ts), "the members should leave while the stream runs"
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    total = 2 * per_pub
    stayers = range(leavers, n_members)

    def union():
        u = sum(got, Counter())
        u.update(own)
        return u

    def settled():
        for k in stayers:
            drain_ids(members[k], got[k])
        for m in pubs[0].pending:
            if m["type"] == "message":
                own[m["data"]["id"]] += 1
        pubs[0].pending.clear()
        drain_ids(pubs[0], own)
        return sum(union().values()) + undelivered(gb) - before >= total

    try:
        wait_until(settled, timeout=30, interval=0.1, what="every publication delivered or counted")
    except AssertionError:
        u = union()
        raise AssertionError(f"got {len(u)} of {total} (dups {sum(u.values()) - len(u)}), "
                             f"undelivered {undelivered(gb) - before}, shares {[sum(g.values()) for g in got]}")
    time.sleep(0.5)
    settled()
    u = union()
    assert not u or max(u.values()) == 1, "duplicate delivery"
    assert not any(x.startswith("0-") for x in own), "publisher 0 got its own publication"
    missing = total - len(u)
    counted = stable_undelivered(gb) - before
    return missing, counted, [sum(g.values()) for g in got] + [sum(own.values())]


def test_members_leaving_mid_stream_lose_nothing_while_one_stays(gb):
    missing, counted, shares = _leave_mid_stream(gb, n_members=12, leavers=9, per_pub=2500)
    print(f"\n9 of 12 members left mid-stream: missing {missing}, counted {counted}, shares {shares}")
    assert missing == 0 and counted == 0, (missing, counted, shares)


def test_all_members_leaving_mid_stream_counts_exactly_the_missing(gb):
    missing, counted, shares = _leave_mid_stream(gb, n_members=6, leavers=6, per_pub=2500)
    print(f"\nall 6 members left mid-stream: missing {missing}, counted {counted}, shares {shares}")
    assert missing > 0, shares
    assert missing == counted, (missing, counted, shares)


def test_disconnect_leaves_every_group(gb):
    ch1, ch2 = chan("gdisc"), chan("gdisc")
    a = peer(gb, "disc-a", shard=0)
    b = peer(gb, "disc-b", shard=1)
    pub = peer(gb, "disc-pub", shard=0)
    for c in (a, b):
        join(c, ch1, "g")
        join(c, ch2, "h")
    b.close()
    time.sleep(0.3)
    before = stable_undelivered(gb, 0.1)
    for ch in (ch1, ch2):
        for i in range(4):
            pub.publish(ch, {"id": f"{ch}-{i}"})
    got = Counter()
    wait_until(lambda: (drain_ids(a, got, 0.05), sum(got.values()) == 8)[1], what="a gets all eight")
    a.close()
    time.sleep(0.3)
    # No member left anywhere: the groups are gone (a publication to a channel without
    # groups is not a group's loss, like one without subscribers).
    pub.publish(ch1, {"id": "gone"})
    time.sleep(0.2)
    assert stable_undelivered(gb) == before
    # A new member starts a new rotation and gets everything.
    c = peer(gb, "disc-c", shard=1)
    join(c, ch1, "g")
    for i in range(3):
        pub.publish(ch1, {"id": i})
    got = Counter()
    wait_until(lambda: (drain_ids(c, got, 0.05), sum(got.values()) == 3)[1], what="c gets all three")
    assert got == Counter(range(3))


# ------------------------------------------------------------------------------------------
# presence
# ------------------------------------------------------------------------------------------


def test_group_members_take_part_in_presence_and_rest_roster(gb):
    ch = chan("gpres")
    watcher = peer(gb, "watch", shard=0)
    assert watcher.subscribe(ch)["joined"] == []
    m1 = peer(gb, "mem1", shard=1, peerMetadata={"role": "worker"})
    snap = join(m1, ch, "g")
    assert snap["joined"] == [{"peerId": "watch"}], snap
    ev = watcher.expect_type("presence", skip=True, channel=ch)
    assert ev["joined"] == [{"peerId": "mem1", "metadata": {"role": "worker"}}] and ev["left"] == [], ev
    m2 = peer(gb, "mem2", shard=0)
    snap2 = join(m2, ch, "g")
    assert sorted(p["peerId"] for p in snap2["joined"]) == ["mem1", "watch"]
    r = rest_request(gb, "GET", f"/v1/channels/{quote(ch, safe='')}/peers")
    assert r.status == 200 and sorted(p["peerId"] for p in r.json["peers"]) == ["mem1", "mem2", "watch"], r
    m1.unsubscribe(ch)
    ev = watcher.expect_type("presence", skip=True, channel=ch, joined=[])
    assert ev["left"] == [{"peerId": "mem1", "metadata": {"role": "worker"}}], ev
    m2.close()
    ev = watcher.expect_type("presence", skip=True, channel=ch, joined=[])
    assert ev["left"] == [{"peerId": "mem2"}], ev
    wait_until(lambda: [p["peerId"] for p in rest_request(gb, "GET", f"/v1/channels/{quote(ch, safe='')}/peers").json["peers"]] == ["watch"],
               what="roster back to the watcher")


def test_group_messages_honour_include_sender_metadata(gb):
    ch = chan("gmeta")
    m = peer(gb, "meta-m", shard=1)
    join(m, ch, "g", includeSenderMetadata=True)
    pub = peer(gb, "meta-pub", shard=0, peerMetadata={"x": 1})
    pub.publish(ch, {"id": 1})
    msg = m.expect_type("message", skip=True)
    assert msg["fromMetadata"] == {"x": 1} and msg["from"] == "meta-pub", msg
    # Re-subscribing the same group without it: the next message has no fromMetadata.
    join(m, ch, "g")
    pub.publish(ch, {"id": 2})
    msg = m.expect_type("message", skip=True)
    assert "fromMetadata" not in msg and msg["data"] == {"id": 2}, msg
