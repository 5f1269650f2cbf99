"""Verifies that presence follows protocol.md section 5 across shards: a roster snapshot (others only,
also when empty) right after the subscribe ack; joined/left carrying peerMetadata only when the peer
has it; one roster entry per peerId however many connections (on different shards) it holds;
disconnects announced as left; no presence frames without the `presence` action while the join is
still announced; and per-channel ordering that never shows `left` before `joined`."""

from __future__ import annotations

import random
import threading
import time

from helpers import chan, mint, wait_until

NO_PRESENCE = ["publish", "subscribe", "send"]


def peer(broker, name, shard=None, **claims):
    return broker.connect(mint(name, **claims), shard=shard, name=name)


def ids(entries):
    return sorted(e["peerId"] for e in entries)


def expect_presence(c, channel, joined=(), left=(), timeout=5.0):
    m = c.expect_type("presence", timeout=timeout)
    assert m["channel"] == channel, m
    assert "joined" in m and "left" in m, f"both arrays must always be present: {m}"
    assert ids(m["joined"]) == sorted(joined) and ids(m["left"]) == sorted(left), m
    return m


def test_snapshot_empty_then_full_roster_excluding_self(broker):
    ch = chan("snap")
    a = peer(broker, "snap-a", shard=0, peerMetadata={"name": "A"})
    b = peer(broker, "snap-b", shard=1)
    c = peer(broker, "snap-c", shard=0)

    a.send_json({"type": "subscribe", "channel": ch, "requestId": "a1"})
    assert a.recv_json() == {"type": "ack", "requestId": "a1"}
    snap = a.recv_json()
    assert snap == {"type": "presence", "channel": ch, "joined": [], "left": []}, snap

    snap = b.subscribe(ch)
    assert snap["joined"] == [{"peerId": "snap-a", "metadata": {"name": "A"}}] and snap["left"] == [], snap
    expect_presence(a, ch, joined=["snap-b"])

    c.send_json({"type": "subscribe", "channel": ch, "requestId": "c1"})
    assert c.recv_json()["type"] == "ack"
    snap = c.recv_json()
    assert snap["type"] == "presence" and snap["channel"] == ch and snap["left"] == [], snap
    assert ids(snap["joined"]) == ["snap-a", "snap-b"], snap
    by_id = {e["peerId"]: e for e in snap["joined"]}
    assert by_id["snap-a"]["metadata"] == {"name": "A"}
    assert "metadata" not in by_id["snap-b"], by_id
    for o in (a, b):
        expect_presence(o, ch, joined=["snap-c"])


def test_snapshot_without_request_id(broker):
    ch = chan("snap-norid")
    a = peer(broker, "norid-a", shard=0)
    b = peer(broker, "norid-b", shard=1)
    a.subscribe(ch)
    b.send_json({"type": "subscribe", "channel": ch})
    m = b.recv_json()
    assert m["type"] == "presence" and ids(m["joined"]) == ["norid-a"], m
    expect_presence(a, ch, joined=["norid-b"])


def test_join_and_leave_carry_metadata_only_when_present(broker):
    ch = chan("meta")
    pm = {"name": "Mallory", "avatar": "https://x.example/m.png", "tags": ["a", "b"]}
    obs = peer(broker, "observer", shard=0)
    obs.subscribe(ch)
    with_meta = peer(broker, "with-meta", shard=1, peerMetadata=pm)
    plain = peer(broker, "plain", shard=1)

    with_meta.subscribe(ch)
    m = expect_presence(obs, ch, joined=["with-meta"])
    assert m["joined"][0] == {"peerId": "with-meta", "metadata": pm}, m
    plain.subscribe(ch)
    m = expect_presence(obs, ch, joined=["plain"])
    assert m["joined"][0] == {"peerId": "plain"}, m

    with_meta.unsubscribe(ch)
    m = expect_presence(obs, ch, left=["with-meta"])
    assert m["left"][0] == {"peerId": "with-meta", "metadata": pm}, m
    plain.unsubscribe(ch)
    m = expect_presence(obs, ch, left=["plain"])
    assert m["left"][0] == {"peerId": "plain"}, m
    # plain saw with-meta leave (it was still subscribed then), then nothing after leaving.
    assert plain.expect_type("presence", skip=True, channel=ch)["left"][0]["peerId"] == "with-meta"
    plain.no_message_within(0.2)


def test_presence_is_per_peer_not_per_connection_across_shards(broker):
    ch = chan("dedup")
    obs = peer(broker, "dedup-obs", shard=0)
    obs.subscribe(ch)
    d1 = peer(broker, "dup", shard=0)
    d2 = peer(broker, "dup", shard=1)
    assert d1.shard != d2.shard

    d1.subscribe(ch)
    expect_presence(obs, ch, joined=["dup"])
    snap = d2.subscribe(ch)  # second connection of the same peer, other shard: no new join
    assert ids(snap["joined"]).count("dedup-obs") == 1, snap
    obs.no_message_within(0.4)

    # A late subscriber sees the peer once in its snapshot.
    late = peer(broker, "dedup-late", shard=1)
    snap = late.subscribe(ch)
    assert ids(snap["joined"]) == ["dedup-obs", "dup"], snap
    expect_presence(obs, ch, joined=["dedup-late"])

    d1.unsubscribe(ch)  # one connection left: still present
    obs.no_message_within(0.4)
    late.no_message_within(0.05)
    d2.close()  # last connection gone (disconnect, not unsubscribe): left
    expect_presence(obs, ch, left=["dup"])
    expect_presence(late, ch, left=["dup"])
    obs.no_message_within(0.3)


def test_disconnect_announces_left(broker):
    ch1, ch2 = chan("disc"), chan("disc")
    obs = peer(broker, "disc-obs", shard=1)
    obs.subscribe(ch1)
    obs.subscribe(ch2)
    goner = peer(broker, "goner", shard=0, peerMetadata={"k": "v"})
    goner.subscribe(ch1)
    goner.subscribe(ch2)
    expect_presence(obs, ch1, joined=["goner"])
    expect_presence(obs, ch2, joined=["goner"])
    goner.close()
    seen = {}
    for _ in range(2):
        m = obs.expect_type("presence")
        assert m["joined"] == [] and m["left"] == [{"peerId": "goner", "metadata": {"k": "v"}}], m
        seen[m["channel"]] = m
    assert set(seen) == {ch1, ch2}


def test_abrupt_tcp_drop_announces_left(broker):
    ch = chan("drop")
    obs = peer(broker, "drop-obs", shard=0)
    obs.subscribe(ch)
    raw = broker.raw(mint("dropper"), shard=1)
    raw.expect_type("welcome")
    raw.send_json({"type": "subscribe", "channel": ch})
    raw.expect_type("presence")
    expect_presence(obs, ch, joined=["dropper"])
    raw.close()  # no close frame
    expect_presence(obs, ch, left=["dropper"])


def test_without_presence_permission_no_frames_but_join_announced(broker):
    ch = chan("noperm")
    obs = peer(broker, "np-obs", shard=0)
    obs.subscribe(ch)
    quiet = peer(broker, "quiet", shard=1, permissions=NO_PRESENCE)
    quiet.ok({"type": "subscribe", "channel": ch})  # ack, and no snapshot
    expect_presence(obs, ch, joined=["quiet"])
    other = peer(broker, "np-other", shard=0)
    snap = other.subscribe(ch)
    assert ids(snap["joined"]) == ["np-obs", "quiet"], snap
    expect_presence(obs, ch, joined=["np-other"])
    other.close()
    expect_presence(obs, ch, left=["np-other"])
    # Messages still flow to the quiet subscriber; presence never does.
    obs.publish(ch, "hi")
    m = quiet.recv_json()
    assert m["type"] == "message" and m["data"] == "hi", m
    quiet.no_message_within(0.3)
    quiet.close()
    expect_presence(obs, ch, left=["quiet"])


def test_presence_order_never_left_before_joined_under_churn(broker):
    """Several peers join and leave quickly on both shards (some with two connections at once);
    every observer's per-peer history must alternate joined/left starting with joined (a late
    observer's snapshot, taken mid-churn, counts as joined) and end with every churner gone."""
    ch = chan("churn")
    observers = [peer(broker, f"obs{i}", shard=i % 2) for i in range(4)]
    for o in observers:
        o.subscribe(ch)
    for i, o in enumerate(observers):  # each observer saw the later observers join
        for j in range(i + 1, len(observers)):
            expect_presence(o, ch, joined=[f"obs{j}"])
    late = peer(broker, "late-obs", shard=1)

    churners = [f"churn{i}" for i in range(6)]
    errors = []
    in_progress = threading.Event()

    def churn(name, seed):
        rng = random.Random(seed)
        try:
            for rnd in range(8):
                if rnd == 2:
                    in_progress.set()
                conns = [broker.connect(mint(name), shard=rng.randrange(2), name=name)
                         for _ in range(rng.choice((1, 1, 2)))]
                for c in conns:
                    c.send_json({"type": "subscribe", "channel": ch})
                time.sleep(rng.uniform(0.005, 0.03))
                for c in conns:
                    if rng.random() < 0.5:
                        c.send_json({"type": "unsubscribe", "channel": ch})
                        c.send_json({"type": "subscribe", "channel": ch})
                        c.send_json({"type": "unsubscribe", "channel": ch})
                        c.sync()
                    c.close()
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)
            in_progress.set()

    threads = [threading.Thread(target=churn, args=(n, i), daemon=True) for i, n in enumerate(churners)]
    for t in threads:
        t.start()
    assert in_progress.wait(20)
    late_snapshot = late.subscribe(ch)  # mid-churn: the snapshot may list churners
    for t in threads:
        t.join(timeout=40)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    for o in observers + [late]:
        history = {}  # peerId -> ["J"/"L", ...]
        if o is late:
            for e in late_snapshot["joined"]:
                history[e["peerId"]] = ["J"]

        def apply(m):
            assert m["type"] == "presence" and m["channel"] == ch, m
            for e in m["joined"]:
                history.setdefault(e["peerId"], []).append("J")
            for e in m["left"]:
                history.setdefault(e["peerId"], []).append("L")

        def settled():
            for m in o.collect(0.05):
                apply(m)
            done = all(history[p][-1] == "L" for p in churners if p in history)
            return done and (o is late or all(p in history for p in churners))

        wait_until(settled, timeout=10, what=f"{o.name} to see every churner finally leave")
        for p, h in history.items():
            if p in churners:
                assert h[0] == "J", f"{o.name}: {p} left before it joined: {h}"
                for x, y in zip(h, h[1:]):
                    assert x != y, f"{o.name}: {p} has two consecutive {x}: {h}"
                assert h[-1] == "L", f"{o.name}: {p} still present: {h}"
            else:
                expected = p.startswith("obs") if o is late else p == "late-obs"
                assert expected, f"{o.name}: unexpected presence for {p}: {h}"
                assert h == ["J"], f"{o.name}: observer {p} history {h}"
        if o is late:
            assert set(churners) & set(history), "the late observer saw no churn at all (test did not exercise it)"
