"""Verifies that per-connection limits hold (protocol.md section 6 and the binary contract): the token
bucket closes with 4011 or, with --rate-limit-action error, answers `rate_limited` for exactly the
dropped messages and keeps the connection usable after refill; app-level pings are never charged;
and a subscriber that stops reading is cut off with 4008 after an in-order, gap-free prefix while a
healthy subscriber on the same shard receives every message in order."""

from __future__ import annotations

import json
import time

from helpers import WSClosed, chan, connect_on_distinct_shards, mint

RATE = ["--rate-limit-per-sec", "10", "--rate-limit-burst", "20"]


def test_burst_is_allowed_then_4011(broker_factory):
    b = broker_factory(args=RATE, name="rate-close")
    pub = b.connect(mint("rl-pub"))
    ch = chan("rl")
    for i in range(20):
        pub.send_json({"type": "publish", "channel": ch, "data": i, "requestId": f"p{i}"})
    acks = [pub.recv_json() for _ in range(20)]
    assert [(m["type"], m["requestId"]) for m in acks] == [("ack", f"p{i}") for i in range(20)], acks
    for i in range(20, 40):
        try:
            pub.send_json({"type": "publish", "channel": ch, "data": i, "requestId": f"p{i}"})
        except Exception:
            break
    code, _ = pub.expect_close(timeout=5)
    assert code == 4011
    acked_after = [m for m in pub.drained if isinstance(m, dict) and m.get("type") == "ack"]
    assert len(acked_after) <= 3, f"{len(acked_after)} of 20 publishes over an empty bucket were accepted"


def test_rate_limit_error_mode(broker_factory):
    b = broker_factory(args=RATE + ["--rate-limit-action", "error"], name="rate-error")
    ch = chan("rle")
    pub, sub = connect_on_distinct_shards(b, [mint("rle-pub"), mint("rle-sub", permissions=["subscribe"])])
    sub.subscribe(ch, presence=False)
    n = 40
    for i in range(n):
        pub.send_json({"type": "publish", "channel": ch, "data": {"seq": i}, "requestId": f"q{i}"})
    answers = {}
    for _ in range(n):
        m = pub.recv_json()
        assert m["type"] in ("ack", "error"), m
        assert m["requestId"] not in answers, f"requestId answered twice: {m}"
        answers[m["requestId"]] = m
    assert set(answers) == {f"q{i}" for i in range(n)}
    acked = [i for i in range(n) if answers[f"q{i}"]["type"] == "ack"]
    limited = [i for i in range(n) if answers[f"q{i}"]["type"] == "error"]
    for i in limited:
        assert answers[f"q{i}"]["code"] == "rate_limited", answers[f"q{i}"]
    assert acked[:20] == list(range(20)), acked
    assert len(limited) >= 15, f"only {len(limited)} of {n} rapid publishes were limited (burst 20)"
    # Subscribers get exactly the accepted publications, in order.
    got = [sub.expect_type("message")["data"]["seq"] for _ in acked]
    assert got == acked
    sub.no_message_within(0.3)
    # Without a requestId the error carries none.
    pub.send_json({"type": "publish", "channel": ch, "data": "x"})
    extra = pub.collect(0.2)
    assert all("requestId" not in m for m in extra), extra
    # After a refill the same connection works again.
    time.sleep(1.2)
    pub.ok({"type": "publish", "channel": ch, "data": {"seq": "after"}})
    m = sub.expect_type("message", skip=True)  # skip the "x" if it was accepted
    while m["data"] == "x":
        m = sub.expect_type("message")
    assert m["data"] == {"seq": "after"}
    pub.ping_pong()


def test_app_level_pings_are_not_charged_to_the_token_bucket(broker_factory):
    # Pings have their own budget (max_pings_per_sec, 100 by default: tests/test_backpressure.py
    # checks that going over it closes 4011); within it they never touch the token bucket.
    b = broker_factory(args=RATE + ["--max-pings-per-sec", "300"], name="rate-ping")
    c = b.connect(mint("pinger"))
    for _ in range(300):
        c.send_json({"type": "ping"})
    for i in range(300):
        m = c.recv_json()
        assert m == {"type": "pong"}, (i, m)
    # The bucket is untouched: a full burst of publishes still passes.
    ch = chan("after-pings")
    for i in range(20):
        c.send_json({"type": "publish", "channel": ch, "data": i, "requestId": f"a{i}"})
    for i in range(20):
        m = c.recv_json()
        assert m["type"] == "ack" and m["requestId"] == f"a{i}", m


def test_slow_consumer_is_cut_off_after_gap_free_prefix(broker_factory):
    b = broker_factory(
        args=["--max-outbound-bytes", "65536", "--rate-limit-per-sec", "1000000", "--rate-limit-burst", "1000000"],
        name="slow-consumer",
    )
    ch = chan("flood")
    slow = b.raw(mint("slow", permissions=["subscribe"]), rcvbuf=4096, shard=0)
    assert slow.expect_type("welcome")["peerId"] == "slow"
    slow.send_json({"type": "subscribe", "channel": ch, "requestId": "s"})
    assert slow.expect_type("ack")["requestId"] == "s"
    h0 = b.connect(mint("healthy0", permissions=["subscribe"]), shard=0, name="healthy0")
    h1 = b.connect(mint("healthy1", permissions=["subscribe"]), shard=1, name="healthy1")
    for h in (h0, h1):
        h.subscribe(ch, presence=False)
    pub = b.connect(mint("flooder", permissions=["publish"]), shard=1, name="flooder")

    n, batch = 2000, 10
    pad = "p" * 4000
    for start in range(0, n, batch):
        for i in range(start, start + batch):
            pub.send_text(json.dumps({"type": "publish", "channel": ch, "data": {"seq": i, "pad": pad}}))
        for h in (h0, h1):  # lock-step: the healthy subscribers never fall behind by more than a batch
            for i in range(start, start + batch):
                m = h.expect_type("message", timeout=10)
                assert m["data"]["seq"] == i, f"{h.name} expected seq {i}, got {m['data']['seq']}"
    for h in (h0, h1):
        h.no_message_within(0.1)
    pub.ping_pong()  # the publisher was never throttled or disconnected

    # Now drain the slow socket: a gap-free prefix, then 4008 (or the socket just ends).
    seqs, end = [], None
    while end is None:
        try:
            m = slow.recv_message(timeout=5, auto_pong=True)
        except WSClosed:
            end = "socket closed"
            break
        except TimeoutError:
            raise AssertionError(
                f"slow consumer still connected after {len(seqs)} messages: never cut off "
                "with --max-outbound-bytes 65536"
            ) from None
        if m[0] == "close":
            end = m[1]
            break
        assert m[0] == "text", m
        frame = json.loads(m[1])
        assert frame["type"] == "message", frame
        seqs.append(frame["data"]["seq"])
    assert seqs == list(range(len(seqs))), f"gap or reorder in the slow consumer's prefix: {seqs[:5]}...{seqs[-5:]}"
    assert len(seqs) < n, "the slow consumer received everything: it was never cut off"
    assert end in (4008, "socket closed"), f"slow consumer closed with {end}"
