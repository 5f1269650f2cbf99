"""Verifies requests and replies (agent RPC, protocol.md section 8.4, with sections 3 and 6): a
`request` reaches every connection of the target peer but the sender's, on every shard, as the
exact documented frame; the first connection of the peer to reply takes the request (the peer's
other connections get `cancel` `taken`, their replies `request_not_found`); streamed replies reach
the requester in order with `seq` from 1 and nothing follows the final one; broker-side deadlines
fire no earlier than `timeoutMs` and promptly after it (`request_timeout`, `cancel` `timeout` to
whoever holds the request); `cancel`, a requester that disconnects (`requester_gone`), a taker
that disconnects before its final reply and a target peer that loses its last connection before
anyone took the request (`responder_gone`) each end the request exactly once; validation errors
(`invalid_request`, `invalid_peer_id`, `action_not_permitted`, `missing_data`, `peer_not_found`,
`request_not_found`, `too_many_requests`) carry the requestId as section 3 says; each request,
reply and cancel costs one token of the rate limit; the metrics (`ringcast_requests_in_flight`,
`ringcast_requests_total`, `ringcast_request_timeouts_total`) follow. The last test runs 1,000
concurrent requests with random behaviour and checks that every one ends exactly once for its
requester and that nothing is left in flight.

Decisions of the broker where the spec is silent (src/shard/cmd/{request,reply,cancel}.rs,
src/shard/rpc.rs) are pinned here too: the order of the request checks, `replyTo` that is
missing, empty, non-string or longer than 128 chars is `invalid_request` (a well-formed but
unknown one is `request_not_found`), a reply to a request is accepted only from a connection of
the target peer, `cancel` is per connection. A request to one's own peer never sends the
requesting connection a `cancel`, and fails with responder_gone when the peer's only other
connection leaves."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
from typing import Any, Optional

import pytest

from helpers import (
    NOSEND_KEY_ID,
    NOSEND_SECRET,
    OTHER_KEY_ID,
    OTHER_SECRET,
    mint,
    next_source_ip,
    rest_metrics,
    rest_request,
    wait_until,
)

REQUEST_KEYS = {"type", "from", "replyTo", "data", "timeoutMs"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_n = iter(range(1, 10**9))


def uniq(prefix: str) -> str:
    """A peer id / requestId unique to this run (the module broker is shared by the tests)."""
    return f"{prefix}-{next(_n)}"


def peer(broker, name, shard=None, **claims):
    return broker.connect(mint(name, **claims), shard=shard, name=f"{name}@{shard}")


def send_request(c, to, rid, data: Any = None, timeout_ms: Optional[int] = None, **extra) -> float:
    """Sends a request; returns the monotonic time just before sending."""
    m = {"type": "request", "to": to, "requestId": rid, "data": data, **extra}
    if timeout_ms is not None:
        m["timeoutMs"] = timeout_ms
    t = time.monotonic()
    c.send_json(m)
    return t


def expect_request(c, frm, data, timeout_ms=30000, from_metadata=None, timeout: float = 5.0) -> dict:
    """The next frame of ``c`` is the request frame, exactly as documented; returns it."""
    m = c.recv_json(timeout)
    keys = set(REQUEST_KEYS) | ({"fromMetadata"} if from_metadata is not None else set())
    assert m.get("type") == "request" and set(m) == keys, f"{c.name}: {m}"
    assert m["from"] == frm and m["data"] == data, m
    if from_metadata is not None:
        assert m["fromMetadata"] == from_metadata, m
    # "timeoutMs": remaining. Delivery is immediate here, so it is (close to) the full timeout.
    assert isinstance(m["timeoutMs"], int) and timeout_ms - 100 <= m["timeoutMs"] <= timeout_ms, m
    x = m["replyTo"]
    assert isinstance(x, str) and 1 <= len(x) <= 128, m
    return m


def send_reply(c, reply_to, data: Any = None, final: Any = None, rid: Optional[str] = None, **extra) -> None:
    m = {"type": "reply", "replyTo": reply_to, "data": data, **extra}
    if final is not None:
        m["final"] = final
    if rid is not None:
        m["requestId"] = rid
    c.send_json(m)


def expect(c, frame: dict, timeout: float = 5.0) -> dict:
    """The next frame of ``c`` is exactly ``frame``."""
    m = c.recv_json(timeout)
    assert m == frame, f"{c.name}: expected {frame}, got {m}"
    return m


def expect_error(c, code: str, rid: Optional[str], timeout: float = 5.0) -> dict:
    """The next frame is an error with this code and requestId (none when ``rid`` is None)."""
    m = c.recv_json(timeout)
    assert m.get("type") == "error" and m.get("code") == code, f"{c.name}: expected {code}, got {m}"
    if rid is None:
        assert "requestId" not in m, m
    else:
        assert m.get("requestId") == rid, m
    assert set(m) <= {"type", "code", "requestId", "message"}, m
    return m


def reply_frame(rid, frm, data, final, seq) -> dict:
    return {"type": "reply", "requestId": rid, "from": frm, "data": data, "final": final, "seq": seq}


def cancel_frame(reply_to, reason) -> dict:
    return {"type": "cancel", "replyTo": reply_to, "reason": reason}


def metric(broker, name: str) -> float:
    return rest_metrics(broker).get(name, 0.0)


def in_flight(broker) -> float:
    return metric(broker, "ringcast_requests_in_flight")


def wait_in_flight(broker, n: float, timeout: float = 5.0) -> None:
    wait_until(lambda: in_flight(broker) == n, timeout=timeout, what=f"ringcast_requests_in_flight == {n}")


def quiet(*clients, seconds: float = 0.3) -> None:
    """None of ``clients`` receives anything within ``seconds`` (the first waits, the others are
    then checked briefly)."""
    for i, c in enumerate(clients):
        c.no_message_within(seconds if i == 0 else 0.05)


# --------------------------------------------------------------------------------------------
# delivery, the reply, first responder takes it
# --------------------------------------------------------------------------------------------


def test_request_reaches_every_connection_of_the_peer_and_the_reply_comes_back(broker):
    wait_in_flight(broker, 0)
    total0 = metric(broker, "ringcast_requests_total")
    pm = {"name": "Requester", "tier": 2}
    a_name, b_name = uniq("rq-a"), uniq("rq-b")
    a = peer(broker, a_name, shard=0, peerMetadata=pm, metadata={"private": True})
    a_other = peer(broker, a_name, shard=1)  # the requester's own peer: not asked
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    c = peer(broker, uniq("rq-c"), shard=1)
    data = {"q": "sum", "args": [1, 2, None], "ü": "ß"}
    send_request(a, b_name, "R1", data, timeout_ms=5000)
    r0 = expect_request(b0, a_name, data, 5000, from_metadata=pm)
    r1 = expect_request(b1, a_name, data, 5000, from_metadata=pm)
    assert r0["replyTo"] == r1["replyTo"], (r0, r1)
    x = r0["replyTo"]
    assert in_flight(broker) == 1
    assert metric(broker, "ringcast_requests_total") == total0 + 1
    # The connection on the other shard than the requester answers first.
    send_reply(b1, x, {"sum": 3}, final=True, rid="rep-1")
    expect(b1, {"type": "ack", "requestId": "rep-1"})
    expect(a, reply_frame("R1", b_name, {"sum": 3}, True, 1))
    expect(b0, cancel_frame(x, "taken"))
    # The other connection's late reply is refused; the requester sees nothing of it.
    send_reply(b0, x, "late", rid="rep-2")
    expect_error(b0, "request_not_found", "rep-2")
    # So is a second final reply of the taker: the request is over.
    send_reply(b1, x, "again", rid="rep-3")
    expect_error(b1, "request_not_found", "rep-3")
    quiet(a, a_other, b0, b1, c)
    wait_in_flight(broker, 0)


def test_request_without_peer_metadata_and_default_timeout(broker):
    a_name, b_name = uniq("nm-a"), uniq("nm-b")
    a = peer(broker, a_name, shard=1)
    b = peer(broker, b_name, shard=0)
    a.send_json({"type": "request", "to": b_name, "requestId": "nm", "data": None})
    r = expect_request(b, a_name, None, 30000)
    assert "fromMetadata" not in r
    # A reply without `final` is final; a reply without requestId is answered by nothing.
    b.send_json({"type": "reply", "replyTo": r["replyTo"], "data": [None]})
    expect(a, reply_frame("nm", b_name, [None], True, 1))
    quiet(a, b)


def test_request_to_own_peer_skips_the_sending_connection(broker):
    me = uniq("self")
    me0 = peer(broker, me, shard=0)
    me1 = peer(broker, me, shard=1)
    send_request(me0, me, "S1", "to myself", timeout_ms=5000)
    r = expect_request(me1, me, "to myself", 5000)
    me0.no_message_within(0.2)
    send_reply(me1, r["replyTo"], "done", rid="s-rep")
    expect(me1, {"type": "ack", "requestId": "s-rep"})
    expect(me0, reply_frame("S1", me, "done", True, 1))
    me1.no_message_within(0.2)
    # Tolerated here, a bug of its own (test_request_to_own_peer_sends_no_cancel_to_the_requester).
    assert all(m == cancel_frame(r["replyTo"], "taken") for m in me0.collect(0.3))
    # Alone, the sender's own connection does not count: peer_not_found at once.
    me1.close()
    wait_until(lambda: me0.request({"type": "send", "to": me, "data": 0})["code"] == "peer_not_found",
               timeout=3, what="the peer's other connection to be gone")
    send_request(me0, me, "S2", 1, timeout_ms=5000)
    expect_error(me0, "peer_not_found", "S2")


def test_request_to_own_peer_sends_no_cancel_to_the_requester(broker):
    me = uniq("self-c")
    me0 = peer(broker, me, shard=0)
    me1 = peer(broker, me, shard=1)
    # taken: me1 answers; only me0's reply frame may come back to me0.
    send_request(me0, me, "T", 1, timeout_ms=5000)
    x = expect_request(me1, me, 1, 5000)["replyTo"]
    send_reply(me1, x, "part", final=False)
    expect(me0, reply_frame("T", me, "part", False, 1))
    send_reply(me1, x, "end")
    expect(me0, reply_frame("T", me, "end", True, 2))
    # cancelled: me0 gets its ack, me1 the cancel.
    send_request(me0, me, "C", 2, timeout_ms=5000)
    y = expect_request(me1, me, 2, 5000)["replyTo"]
    me0.send_json({"type": "cancel", "requestId": "C"})
    expect(me0, {"type": "ack", "requestId": "C"})
    expect(me1, cancel_frame(y, "cancelled"))
    # timeout: me0 gets its error, me1 the cancel.
    send_request(me0, me, "TO", 3, timeout_ms=200)
    z = expect_request(me1, me, 3, 200)["replyTo"]
    expect_error(me0, "request_timeout", "TO")
    expect(me1, cancel_frame(z, "timeout"))
    quiet(me0, me1)


def test_streamed_reply_arrives_in_order_and_nothing_after_final(broker):
    a_name, b_name = uniq("st-a"), uniq("st-b")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    send_request(a, b_name, "S", {"stream": 6}, timeout_ms=10000)
    x = expect_request(b, a_name, {"stream": 6}, 10000)["replyTo"]
    for i in range(1, 6):
        send_reply(b, x, {"chunk": i}, final=False)
    send_reply(b, x, {"chunk": 6}, final=True, rid="end")
    expect(b, {"type": "ack", "requestId": "end"})
    for i in range(1, 7):
        expect(a, reply_frame("S", b_name, {"chunk": i}, i == 6, i))
    # After the final reply: the responder's replies are refused, the requester hears nothing,
    # not even a timeout later.
    send_reply(b, x, {"chunk": 7}, final=False, rid="after")
    expect_error(b, "request_not_found", "after")
    quiet(a, b)


def test_streamed_reply_same_shard_with_acks(broker):
    a_name, b_name = uniq("ss-a"), uniq("ss-b")
    a = peer(broker, a_name, shard=1)
    b = peer(broker, b_name, shard=1)
    send_request(a, b_name, "SS", "go", timeout_ms=10000)
    x = expect_request(b, a_name, "go", 10000)["replyTo"]
    for i in range(1, 4):
        send_reply(b, x, i, final=i == 3, rid=f"c{i}")
        expect(b, {"type": "ack", "requestId": f"c{i}"})
        expect(a, reply_frame("SS", b_name, i, i == 3, i))
    quiet(a, b)


@pytest.mark.parametrize("winner_shard", [0, 1], ids=["winner-same-shard", "winner-other-shard"])
def test_first_responder_takes_it_with_a_chunk(broker, winner_shard):
    a_name, b_name = uniq("ft-a"), uniq("ft-b")
    a = peer(broker, a_name, shard=0)
    b = {0: peer(broker, b_name, shard=0), 1: peer(broker, b_name, shard=1)}
    win, lose = b[winner_shard], b[1 - winner_shard]
    send_request(a, b_name, "F", "job", timeout_ms=10000)
    x = expect_request(win, a_name, "job", 10000)["replyTo"]
    assert expect_request(lose, a_name, "job", 10000)["replyTo"] == x
    # A non-final chunk takes the request.
    send_reply(win, x, "part", final=False, rid="w1")
    expect(win, {"type": "ack", "requestId": "w1"})
    expect(a, reply_frame("F", b_name, "part", False, 1))
    expect(lose, cancel_frame(x, "taken"))
    for i, final in enumerate((False, True)):
        send_reply(lose, x, "mine", final=final, rid=f"l{i}")
        expect_error(lose, "request_not_found", f"l{i}")
    send_reply(win, x, "rest", rid="w2")
    expect(win, {"type": "ack", "requestId": "w2"})
    expect(a, reply_frame("F", b_name, "rest", True, 2))
    quiet(a, win, lose)


def test_first_responder_race_has_exactly_one_winner(broker):
    """Both connections of the peer (on different shards) reply at once, many times: exactly one
    reply is accepted per request, the loser gets request_not_found and cancel taken."""
    a_name, b_name = uniq("race-a"), uniq("race-b")
    a = peer(broker, a_name, shard=0)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    wins = {0: 0, 1: 0}
    for i in range(20):
        send_request(a, b_name, f"race{i}", i, timeout_ms=10000)
        x = expect_request(b0, a_name, i, 10000)["replyTo"]
        assert expect_request(b1, a_name, i, 10000)["replyTo"] == x
        send_reply(b0, x, "from-0", rid="b0")
        send_reply(b1, x, "from-1", rid="b1")
        got = {}
        for k, conn in ((0, b0), (1, b1)):
            frames = [conn.recv_json()]
            if frames[0]["type"] != "ack":
                frames.append(conn.recv_json())  # the loser: request_not_found and cancel taken
            got[k] = frames
        winners = [k for k in (0, 1) if got[k] == [{"type": "ack", "requestId": f"b{k}"}]]
        assert len(winners) == 1, got
        w = winners[0]
        loser = got[1 - w]
        assert sorted(m["type"] for m in loser) == ["cancel", "error"], loser
        assert cancel_frame(x, "taken") in loser, loser
        err = next(m for m in loser if m["type"] == "error")
        assert err["code"] == "request_not_found" and err["requestId"] == f"b{1 - w}", loser
        expect(a, reply_frame(f"race{i}", b_name, f"from-{w}", True, 1))
        wins[w] += 1
    quiet(a, b0, b1)
    assert sum(wins.values()) == 20, wins


def test_reply_only_from_the_target_peer(broker):
    """A replyTo is not a capability: another peer (even one that guesses it) is refused, and the
    request stays open for the target."""
    a_name, b_name, m_name = uniq("tp-a"), uniq("tp-b"), uniq("tp-mallory")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    mallory = peer(broker, m_name, shard=0)
    send_request(a, b_name, "T", 1, timeout_ms=10000)
    x = expect_request(b, a_name, 1, 10000)["replyTo"]
    for final in (False, True):
        send_reply(mallory, x, "forged", final=final, rid=f"m{final}")
        expect_error(mallory, "request_not_found", f"m{final}")
    # The requester itself cannot answer either.
    send_reply(a, x, "self-answer", rid="a-self")
    expect_error(a, "request_not_found", "a-self")
    b.no_message_within(0.2)  # not taken: no cancel
    send_reply(b, x, "real", rid="real")
    expect(b, {"type": "ack", "requestId": "real"})
    expect(a, reply_frame("T", b_name, "real", True, 1))
    quiet(a, b, mallory)


def test_request_does_not_cross_apps(broker):
    other = dict(key_id=OTHER_KEY_ID, secret=OTHER_SECRET)
    a_name, b_name = uniq("xa-a"), uniq("xa-b")
    a = peer(broker, a_name, shard=0)
    b_other = peer(broker, b_name, shard=1, **other)
    send_request(a, b_name, "X1", 1, timeout_ms=5000)
    expect_error(a, "peer_not_found", "X1")
    b_test = peer(broker, b_name, shard=0)
    send_request(a, b_name, "X2", 2, timeout_ms=5000)
    x = expect_request(b_test, a_name, 2, 5000)["replyTo"]
    b_other.no_message_within(0.3)
    # The same peer id in the other app cannot answer.
    send_reply(b_other, x, "wrong app", rid="wa")
    expect_error(b_other, "request_not_found", "wa")
    send_reply(b_test, x, "ok")
    expect(a, reply_frame("X2", b_name, "ok", True, 1))
    quiet(a, b_test, b_other)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def test_request_validation_errors(broker):
    wait_in_flight(broker, 0)
    total0 = metric(broker, "ringcast_requests_total")
    a_name, b_name = uniq("v-a"), uniq("v-b")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    # requestId is required: invalid_request, without a requestId to echo.
    a.send_json({"type": "request", "to": b_name, "data": 1, "timeoutMs": 1000})
    expect_error(a, "invalid_request", None)
    # timeoutMs must be an integer from 1 to request_max_timeout_ms (300000 by default).
    for i, t in enumerate([0, 300001, -1, 1.5, "100", None, True, 10**20]):
        a.send_json({"type": "request", "to": b_name, "requestId": f"t{i}", "data": 1, "timeoutMs": t})
        expect_error(a, "invalid_request", f"t{i}")
    # Invalid peer ids.
    for i, to in enumerate(["", "p" * 129, "has space", "nl\n", "ünicode"]):
        send_request(a, to, f"p{i}", 1, timeout_ms=1000)
        expect_error(a, "invalid_peer_id", f"p{i}")
    for i, to in enumerate([None, 5]):
        a.send_json({"type": "request", "to": to, "requestId": f"pt{i}", "data": 1})
        expect_error(a, "invalid_peer_id", f"pt{i}")
    a.send_json({"type": "request", "requestId": "pmiss", "data": 1})
    expect_error(a, "invalid_peer_id", "pmiss")
    # data is required (null is data).
    a.send_json({"type": "request", "to": b_name, "requestId": "nodata", "timeoutMs": 1000})
    expect_error(a, "missing_data", "nodata")
    # Nobody online.
    send_request(a, uniq("nobody"), "nf", 1, timeout_ms=1000)
    expect_error(a, "peer_not_found", "nf")
    b.no_message_within(0.3)
    assert metric(broker, "ringcast_requests_total") == total0, "refused requests are not counted"
    assert in_flight(broker) == 0
    # The largest timeout is accepted.
    send_request(a, b_name, "max", 1, timeout_ms=300000)
    r = expect_request(b, a_name, 1, 300000)
    send_reply(b, r["replyTo"], "ok")
    expect(a, reply_frame("max", b_name, "ok", True, 1))
    quiet(a, b)


def test_request_without_send_action(broker):
    b_name = uniq("ns-b")
    b = peer(broker, b_name, shard=1)
    by_token = peer(broker, uniq("ns-token"), shard=0, permissions=["publish", "subscribe", "presence"])
    send_request(by_token, b_name, "np1", 1, timeout_ms=1000)
    expect_error(by_token, "action_not_permitted", "np1")
    by_key = broker.connect(mint(uniq("ns-key"), key_id=NOSEND_KEY_ID, secret=NOSEND_SECRET,
                                 permissions=["publish", "subscribe", "send"]), name="ns-key")
    send_request(by_key, b_name, "np2", 1, timeout_ms=1000)
    expect_error(by_key, "action_not_permitted", "np2")
    # The documented order of the checks: the peer id before the action.
    send_request(by_key, "bad peer", "np3", 1, timeout_ms=1000)
    expect_error(by_key, "invalid_peer_id", "np3")
    # Replying needs no action: answering is not a new message (broker decision).
    a = peer(broker, uniq("ns-a"), shard=0)
    nosend_b = peer(broker, b_name, shard=0, permissions=["subscribe"])
    send_request(a, b_name, "np4", "q", timeout_ms=5000)
    x = expect_request(b, a.welcome["peerId"], "q", 5000)["replyTo"]
    expect_request(nosend_b, a.welcome["peerId"], "q", 5000)
    send_reply(nosend_b, x, "answer", rid="nsr")
    expect(nosend_b, {"type": "ack", "requestId": "nsr"})
    expect(a, reply_frame("np4", b_name, "answer", True, 1))
    expect(b, cancel_frame(x, "taken"))
    quiet(a, b, nosend_b, by_token, by_key)


def test_duplicate_request_id_in_flight(broker):
    a_name, b_name = uniq("dup-a"), uniq("dup-b")
    a = peer(broker, a_name, shard=0)
    a2 = peer(broker, a_name, shard=1)
    b = peer(broker, b_name, shard=1)
    send_request(a, b_name, "D", "first", timeout_ms=10000)
    x = expect_request(b, a_name, "first", 10000)["replyTo"]
    send_request(a, b_name, "D", "second", timeout_ms=10000)
    expect_error(a, "invalid_request", "D")
    # requestIds are per connection: the peer's other connection may use the same one.
    send_request(a2, b_name, "D", "other conn", timeout_ms=10000)
    x2 = expect_request(b, a_name, "other conn", 10000)["replyTo"]
    assert x2 != x
    b.no_message_within(0.2)  # "second" was never delivered
    send_reply(b, x, "for first")
    expect(a, reply_frame("D", b_name, "for first", True, 1))
    send_reply(b, x2, "for other")
    expect(a2, reply_frame("D", b_name, "for other", True, 1))
    # Once the request is over its requestId is free again.
    send_request(a, b_name, "D", "third", timeout_ms=10000)
    x3 = expect_request(b, a_name, "third", 10000)["replyTo"]
    assert x3 not in (x, x2)
    send_reply(b, x3, "for third")
    expect(a, reply_frame("D", b_name, "for third", True, 1))
    quiet(a, a2, b)


def test_reply_validation_errors(broker):
    a_name, b_name = uniq("rv-a"), uniq("rv-b")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    # Unknown but well-formed replyTo values: request_not_found.
    for i, x in enumerate(["nope", "0.999999999", "1.0", "7.1", "0", "x" * 128, "0.1.1", "-1.1"]):
        send_reply(b, x, 1, rid=f"u{i}")
        expect_error(b, "request_not_found", f"u{i}")
    # Missing, non-string, empty or longer than 128: invalid_request (broker decision).
    for i, x in enumerate([None, 7, "", "1" * 129]):
        b.send_json({"type": "reply", "replyTo": x, "data": 1, "requestId": f"bad{i}"})
        expect_error(b, "invalid_request", f"bad{i}")
    b.send_json({"type": "reply", "data": 1, "requestId": "nox"})
    expect_error(b, "invalid_request", "nox")
    # Without a requestId the error carries none.
    send_reply(b, "nope", 1)
    expect_error(b, "request_not_found", None)
    send_request(a, b_name, "RV", "q", timeout_ms=10000)
    x = expect_request(b, a_name, "q", 10000)["replyTo"]
    # `final` must be a boolean; a refused reply does not take nor end the request.
    for i, f in enumerate(["true", 1, 0, None, {}]):
        b.send_json({"type": "reply", "replyTo": x, "data": "bad", "final": f, "requestId": f"f{i}"})
        expect_error(b, "invalid_request", f"f{i}")
    b.send_json({"type": "reply", "replyTo": x, "requestId": "nd"})
    expect_error(b, "missing_data", "nd")
    a.no_message_within(0.2)
    send_reply(b, x, None, final=True, rid="good")
    expect(b, {"type": "ack", "requestId": "good"})
    expect(a, reply_frame("RV", b_name, None, True, 1))
    quiet(a, b)


# --------------------------------------------------------------------------------------------
# deadlines
# --------------------------------------------------------------------------------------------


def test_timeout_of_an_untaken_request(broker):
    wait_in_flight(broker, 0)
    to0 = metric(broker, "ringcast_request_timeouts_total")
    a_name, b_name = uniq("to-a"), uniq("to-b")
    a = peer(broker, a_name, shard=0)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    t0 = send_request(a, b_name, "TO", "slow", timeout_ms=400)
    x = expect_request(b0, a_name, "slow", 400)["replyTo"]
    expect_request(b1, a_name, "slow", 400)
    expect_error(a, "request_timeout", "TO", timeout=3)
    waited = time.monotonic() - t0
    assert 0.4 <= waited < 0.7, waited
    for b in (b0, b1):
        expect(b, cancel_frame(x, "timeout"))
    send_reply(b1, x, "too late", rid="late")
    expect_error(b1, "request_not_found", "late")
    quiet(a, b0, b1)
    assert metric(broker, "ringcast_request_timeouts_total") == to0 + 1
    assert in_flight(broker) == 0


def test_timeout_of_a_taken_request_cancels_only_the_taker(broker):
    a_name, b_name = uniq("tt-a"), uniq("tt-b")
    a = peer(broker, a_name, shard=1)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    send_request(a, b_name, "TT", "slow", timeout_ms=500)
    x = expect_request(b0, a_name, "slow", 500)["replyTo"]
    expect_request(b1, a_name, "slow", 500)
    send_reply(b0, x, "working", final=False)
    expect(a, reply_frame("TT", b_name, "working", False, 1))
    expect(b1, cancel_frame(x, "taken"))
    expect_error(a, "request_timeout", "TT", timeout=3)
    expect(b0, cancel_frame(x, "timeout"))
    send_reply(b0, x, "done at last", rid="late")
    expect_error(b0, "request_not_found", "late")
    quiet(a, b0, b1)


def test_no_timeout_after_final_reply_or_cancel(broker):
    """A finished request leaves no timer behind that could still fire."""
    wait_in_flight(broker, 0)
    to0 = metric(broker, "ringcast_request_timeouts_total")
    a_name, b_name = uniq("nt-a"), uniq("nt-b")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    send_request(a, b_name, "done", 1, timeout_ms=300)
    x = expect_request(b, a_name, 1, 300)["replyTo"]
    send_reply(b, x, "quick")
    expect(a, reply_frame("done", b_name, "quick", True, 1))
    send_request(a, b_name, "gone", 2, timeout_ms=300)
    y = expect_request(b, a_name, 2, 300)["replyTo"]
    a.send_json({"type": "cancel", "requestId": "gone"})
    expect(a, {"type": "ack", "requestId": "gone"})
    expect(b, cancel_frame(y, "cancelled"))
    quiet(a, b, seconds=0.6)
    assert metric(broker, "ringcast_request_timeouts_total") == to0


def test_deadline_accuracy(broker_factory):
    """Timeouts from 50 to 1500 ms, requesters and responders on both shards: the error arrives
    no earlier than timeoutMs after the request was sent and at most 200 ms after it."""
    b = broker_factory(name="rpc-deadlines")
    wait_in_flight(b, 0)
    to0 = metric(b, "ringcast_request_timeouts_total")
    resp = {0: peer(b, "dl-b", shard=0), 1: peer(b, "dl-b", shard=1)}
    reqs = {0: peer(b, "dl-a0", shard=0), 1: peer(b, "dl-a1", shard=1)}
    rng = random.Random(1234)
    timeouts = [50, 100, 1500] + [rng.randrange(50, 1500) for _ in range(37)]
    sent = {}
    for i, t in enumerate(timeouts):
        c = reqs[i % 2]
        sent[f"dl{i}"] = (c, t, send_request(c, "dl-b", f"dl{i}", i, timeout_ms=t))
    # One reader thread per requester connection timestamps each error as it arrives.
    late, errors = {}, []

    def read(c, count):
        try:
            for _ in range(count):
                m = c.recv_json(timeout=5)
                now = time.monotonic()
                assert m["type"] == "error" and m["code"] == "request_timeout", m
                _, t, t0 = sent[m["requestId"]]
                assert sent[m["requestId"]][0] is c, m
                assert m["requestId"] not in late, f"two answers for {m}"
                late[m["requestId"]] = now - t0 - t / 1000
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read, args=(reqs[k], sum(1 for v in sent.values() if v[0] is reqs[k])))
               for k in reqs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert not errors, errors
    assert set(late) == set(sent)
    for r, d in late.items():
        assert d >= 0, f"{r} timed out {-d * 1000:.1f} ms early"
        assert d <= 0.2, f"{r} timed out {d * 1000:.1f} ms late"
    ms = sorted(d * 1000 for d in late.values())
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"deadline lateness over {len(ms)} timeouts: min {ms[0]:.1f} ms, p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    # Each responder connection was told once per request (nobody took them).
    for conn in resp.values():
        frames = conn.collect(0.3)
        reqs_seen = [m for m in frames if m["type"] == "request"]
        cancels = [m for m in frames if m["type"] == "cancel"]
        assert len(reqs_seen) == len(timeouts) and len(cancels) == len(timeouts), frames
        assert {m["reason"] for m in cancels} == {"timeout"}, cancels
        assert {m["replyTo"] for m in cancels} == {m["replyTo"] for m in reqs_seen}
    assert metric(b, "ringcast_request_timeouts_total") == to0 + len(timeouts)
    wait_in_flight(b, 0)


# --------------------------------------------------------------------------------------------
# cancel, requester_gone, responder_gone
# --------------------------------------------------------------------------------------------


def test_cancel_untaken_request_reaches_every_connection(broker):
    a_name, b_name = uniq("cu-a"), uniq("cu-b")
    a = peer(broker, a_name, shard=0)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    send_request(a, b_name, "C", "work", timeout_ms=10000)
    x = expect_request(b0, a_name, "work", 10000)["replyTo"]
    expect_request(b1, a_name, "work", 10000)
    a.send_json({"type": "cancel", "requestId": "C"})
    expect(a, {"type": "ack", "requestId": "C"})
    expect(b0, cancel_frame(x, "cancelled"))
    expect(b1, cancel_frame(x, "cancelled"))
    send_reply(b1, x, "too late", rid="late")
    expect_error(b1, "request_not_found", "late")
    # Cancelling again, or something never asked: request_not_found keyed by that requestId.
    a.send_json({"type": "cancel", "requestId": "C"})
    expect_error(a, "request_not_found", "C")
    a.send_json({"type": "cancel", "requestId": "never-sent"})
    expect_error(a, "request_not_found", "never-sent")
    a.send_json({"type": "cancel"})
    expect_error(a, "invalid_request", None)
    quiet(a, b0, b1)


def test_cancel_taken_request_reaches_only_the_taker(broker):
    a_name, b_name = uniq("ct-a"), uniq("ct-b")
    a = peer(broker, a_name, shard=1)
    a_other = peer(broker, a_name, shard=0)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    send_request(a, b_name, "CT", "work", timeout_ms=10000)
    x = expect_request(b0, a_name, "work", 10000)["replyTo"]
    expect_request(b1, a_name, "work", 10000)
    send_reply(b0, x, "1/3", final=False)
    expect(a, reply_frame("CT", b_name, "1/3", False, 1))
    expect(b1, cancel_frame(x, "taken"))
    # cancel is per connection: the requester's peer's other connection cannot cancel it.
    a_other.send_json({"type": "cancel", "requestId": "CT"})
    expect_error(a_other, "request_not_found", "CT")
    a.send_json({"type": "cancel", "requestId": "CT"})
    expect(a, {"type": "ack", "requestId": "CT"})
    expect(b0, cancel_frame(x, "cancelled"))
    send_reply(b0, x, "2/3", final=False, rid="after")
    expect_error(b0, "request_not_found", "after")
    quiet(a, a_other, b0, b1)


def test_requester_gone_cancels_its_requests(broker):
    wait_in_flight(broker, 0)
    a_name, b_name, c_name = uniq("rg-a"), uniq("rg-b"), uniq("rg-c")
    a = peer(broker, a_name, shard=0)
    a_other = peer(broker, a_name, shard=1)
    b = peer(broker, b_name, shard=1)
    c0 = peer(broker, c_name, shard=0)
    c1 = peer(broker, c_name, shard=1)
    send_request(a, b_name, "to-b", 1, timeout_ms=10000)
    xb = expect_request(b, a_name, 1, 10000)["replyTo"]
    send_request(a, c_name, "to-c", 2, timeout_ms=10000)
    xc = expect_request(c0, a_name, 2, 10000)["replyTo"]
    expect_request(c1, a_name, 2, 10000)
    send_reply(c1, xc, "chunk", final=False)
    expect(a, reply_frame("to-c", c_name, "chunk", False, 1))
    expect(c0, cancel_frame(xc, "taken"))
    assert in_flight(broker) == 2
    a.close()
    expect(b, cancel_frame(xb, "requester_gone"))
    expect(c1, cancel_frame(xc, "requester_gone"))
    send_reply(c1, xc, "end", rid="end")
    expect_error(c1, "request_not_found", "end")
    quiet(a_other, b, c0, c1)
    wait_in_flight(broker, 0)


@pytest.mark.parametrize("taker_shard", [0, 1], ids=["taker-same-shard", "taker-other-shard"])
def test_responder_gone_when_the_taker_disconnects(broker, taker_shard):
    a_name, b_name = uniq("tg-a"), uniq("tg-b")
    a = peer(broker, a_name, shard=0)
    b = {0: peer(broker, b_name, shard=0), 1: peer(broker, b_name, shard=1)}
    taker, other = b[taker_shard], b[1 - taker_shard]
    send_request(a, b_name, "TG", "q", timeout_ms=10000)
    x = expect_request(taker, a_name, "q", 10000)["replyTo"]
    expect_request(other, a_name, "q", 10000)
    send_reply(taker, x, "1", final=False)
    send_reply(taker, x, "2", final=False)
    expect(a, reply_frame("TG", b_name, "1", False, 1))
    expect(a, reply_frame("TG", b_name, "2", False, 2))
    expect(other, cancel_frame(x, "taken"))
    taker.close()
    expect_error(a, "responder_gone", "TG")
    # The peer's other connection is still there, but the request is over.
    send_reply(other, x, "3", rid="o")
    expect_error(other, "request_not_found", "o")
    quiet(a, other)
    wait_in_flight(broker, 0)


def test_no_responder_gone_after_the_final_reply(broker):
    a_name, b_name = uniq("fg-a"), uniq("fg-b")
    a = peer(broker, a_name, shard=0)
    b = peer(broker, b_name, shard=1)
    send_request(a, b_name, "FG", "q", timeout_ms=10000)
    x = expect_request(b, a_name, "q", 10000)["replyTo"]
    send_reply(b, x, "1", final=False)
    send_reply(b, x, "2", final=True)
    b.close()
    expect(a, reply_frame("FG", b_name, "1", False, 1))
    expect(a, reply_frame("FG", b_name, "2", True, 2))
    a.no_message_within(0.4)


@pytest.mark.parametrize("shards", [(1,), (0,), (0, 1)], ids=["other-shard", "same-shard", "both-shards"])
def test_responder_gone_when_the_peer_leaves_before_anyone_took_it(broker, shards):
    a_name, b_name = uniq("pg-a"), uniq("pg-b")
    a = peer(broker, a_name, shard=0)
    bs = [peer(broker, b_name, shard=s) for s in shards]
    t0 = send_request(a, b_name, "PG", "q", timeout_ms=10000)
    for b in bs:
        expect_request(b, a_name, "q", 10000)
    for b in bs[:-1]:
        b.close()
    a.no_message_within(0.3)  # one connection of the peer is left: still waiting
    bs[-1].close()
    expect_error(a, "responder_gone", "PG")
    assert time.monotonic() - t0 < 5, "responder_gone must come when the peer leaves, not at the deadline"
    a.no_message_within(0.3)
    wait_in_flight(broker, 0)


def test_admin_kick_fails_and_cancels_requests(broker):
    """DELETE /v1/peers/{id} closes connections like any disconnect: kicking the target peer
    fails the requests waiting for it (taken or not) with responder_gone; kicking the requester
    cancels its requests (requester_gone)."""
    a_name, b_name, c_name = uniq("kk-a"), uniq("kk-b"), uniq("kk-c")
    a = peer(broker, a_name, shard=0)
    b0 = peer(broker, b_name, shard=0)
    b1 = peer(broker, b_name, shard=1)
    c = peer(broker, c_name, shard=1)
    send_request(a, b_name, "untaken", 1, timeout_ms=10000)
    send_request(a, b_name, "taken", 2, timeout_ms=10000)
    xu = expect_request(b0, a_name, 1, 10000)["replyTo"]
    xt = expect_request(b0, a_name, 2, 10000)["replyTo"]
    expect_request(b1, a_name, 1, 10000)
    expect_request(b1, a_name, 2, 10000)
    send_reply(b1, xt, "chunk", final=False)
    expect(a, reply_frame("taken", b_name, "chunk", False, 1))
    expect(b0, cancel_frame(xt, "taken"))
    assert xu != xt
    r = rest_request(broker, "DELETE", f"/v1/peers/{b_name}")
    assert r.status == 200 and r.json == {"peerId": b_name, "closed": 2}, r
    got = sorted((a.recv_json(), a.recv_json()), key=lambda m: m["requestId"])
    assert [(m["type"], m["code"], m["requestId"]) for m in got] == [
        ("error", "responder_gone", "taken"), ("error", "responder_gone", "untaken")], got
    # Kicking the requester: its request's holder is told requester_gone.
    send_request(a, c_name, "to-c", 3, timeout_ms=10000)
    xc = expect_request(c, a_name, 3, 10000)["replyTo"]
    r = rest_request(broker, "DELETE", f"/v1/peers/{a_name}")
    assert r.status == 200 and r.json == {"peerId": a_name, "closed": 1}, r
    expect(c, cancel_frame(xc, "requester_gone"))
    c.no_message_within(0.3)
    wait_in_flight(broker, 0)


def test_request_to_own_peer_fails_when_the_other_connection_leaves(broker):
    me = uniq("self-g")
    me0 = peer(broker, me, shard=0)
    me1 = peer(broker, me, shard=1)
    t0 = send_request(me0, me, "G", 1, timeout_ms=3000)
    expect_request(me1, me, 1, 3000)
    me1.close()
    expect_error(me0, "responder_gone", "G", timeout=5)
    assert time.monotonic() - t0 < 2


# --------------------------------------------------------------------------------------------
# limits, rate limit, max timeout flag
# --------------------------------------------------------------------------------------------


def test_requests_in_flight_bound_per_connection(broker_factory):
    b = broker_factory(args=["--max-requests-in-flight", "3"], name="rpc-bound")
    a = peer(b, "ib-a", shard=0)
    a2 = peer(b, "ib-a", shard=1)
    r = peer(b, "ib-b", shard=1)
    xs = {}
    for i in range(3):
        send_request(a, "ib-b", f"q{i}", i, timeout_ms=10000)
        xs[i] = expect_request(r, "ib-a", i, 10000)["replyTo"]
    send_request(a, "ib-b", "q3", 3, timeout_ms=10000)
    expect_error(a, "too_many_requests", "q3")
    r.no_message_within(0.2)
    assert in_flight(b) == 3
    # Per connection: the peer's other connection has its own budget.
    for i in range(3):
        send_request(a2, "ib-b", f"o{i}", i, timeout_ms=10000)
        expect_request(r, "ib-a", i, 10000)
    assert in_flight(b) == 6
    # Each way a request ends frees its slot: final reply...
    send_reply(r, xs[0], "done")
    expect(a, reply_frame("q0", "ib-b", "done", True, 1))
    send_request(a, "ib-b", "q4", 4, timeout_ms=300)
    x4 = expect_request(r, "ib-a", 4, 300)["replyTo"]
    send_request(a, "ib-b", "q5", 5, timeout_ms=10000)
    expect_error(a, "too_many_requests", "q5")
    # ... cancel ...
    a.send_json({"type": "cancel", "requestId": "q1"})
    expect(a, {"type": "ack", "requestId": "q1"})
    expect(r, cancel_frame(xs[1], "cancelled"))
    send_request(a, "ib-b", "q6", 6, timeout_ms=10000)
    expect_request(r, "ib-a", 6, 10000)
    # ... timeout ...
    expect_error(a, "request_timeout", "q4", timeout=3)
    expect(r, cancel_frame(x4, "timeout"))
    send_request(a, "ib-b", "q7", 7, timeout_ms=10000)
    expect_request(r, "ib-a", 7, 10000)
    send_request(a, "ib-b", "q8", 8, timeout_ms=10000)
    expect_error(a, "too_many_requests", "q8")
    # ... and the requester's disconnect.
    a2.close()
    for _ in range(3):
        assert r.recv_json()["reason"] == "requester_gone"
    wait_until(lambda: in_flight(b) == 3, what="a2's requests to be freed")
    a.close()
    wait_in_flight(b, 0)


def test_request_max_timeout_flag(broker_factory):
    b = broker_factory(args=["--request-max-timeout-ms", "1000"], name="rpc-maxto")
    a = peer(b, "mt-a", shard=0)
    r = peer(b, "mt-b", shard=1)
    send_request(a, "mt-b", "over", 1, timeout_ms=1001)
    expect_error(a, "invalid_request", "over")
    r.no_message_within(0.2)
    t0 = send_request(a, "mt-b", "at", 1, timeout_ms=1000)
    x = expect_request(r, "mt-a", 1, 1000)["replyTo"]
    expect_error(a, "request_timeout", "at", timeout=3)
    assert 1.0 <= time.monotonic() - t0 < 1.3
    expect(r, cancel_frame(x, "timeout"))


RATE_ERR = ["--rate-limit-per-sec", "1", "--rate-limit-burst", "3", "--rate-limit-action", "error"]


def test_request_and_cancel_cost_one_token_each(broker_factory):
    b = broker_factory(args=RATE_ERR, name="rpc-rate-req")
    r = peer(b, "rl-b", shard=1)
    a = peer(b, "rl-a", shard=0)
    send_request(a, "rl-b", "k1", 1, timeout_ms=10000)  # token 1
    x = expect_request(r, "rl-a", 1, 10000)["replyTo"]
    a.send_json({"type": "cancel", "requestId": "k1"})  # token 2
    expect(a, {"type": "ack", "requestId": "k1"})
    expect(r, cancel_frame(x, "cancelled"))
    a.send_json({"type": "cancel", "requestId": "unknown"})  # token 3 (refused, still charged)
    expect_error(a, "request_not_found", "unknown")
    a.send_json({"type": "ping"})  # free
    expect(a, {"type": "pong"})
    send_request(a, "rl-b", "k2", 2, timeout_ms=10000)  # over the bucket
    expect_error(a, "rate_limited", "k2")
    a.send_json({"type": "cancel", "requestId": "k2"})
    expect_error(a, "rate_limited", "k2")
    r.no_message_within(0.3)  # the limited request was never delivered
    assert in_flight(b) == 0
    # After a refill the connection may ask again.
    time.sleep(1.1)
    send_request(a, "rl-b", "k3", 3, timeout_ms=10000)
    expect_request(r, "rl-a", 3, 10000)


def test_reply_costs_one_token_each(broker_factory):
    b = broker_factory(args=RATE_ERR, name="rpc-rate-rep")
    r = peer(b, "rr-b", shard=1)
    a = peer(b, "rr-a", shard=0)
    send_request(a, "rr-b", "s", "stream", timeout_ms=10000)
    x = expect_request(r, "rr-a", "stream", 10000)["replyTo"]
    send_reply(r, x, 1, final=False)  # token 1
    send_reply(r, x, 2, final=False)  # token 2
    send_reply(r, x, 3, final=False, rid="third")  # token 3
    expect(r, {"type": "ack", "requestId": "third"})
    send_reply(r, x, 4, final=True, rid="fourth")  # over the bucket: dropped
    expect_error(r, "rate_limited", "fourth")
    for i in (1, 2, 3):
        expect(a, reply_frame("s", "rr-b", i, False, i))
    a.no_message_within(0.3)
    assert in_flight(b) == 1, "the refused final reply did not end the request"
    time.sleep(1.1)
    send_reply(r, x, 4, final=True, rid="fourth-again")
    expect(r, {"type": "ack", "requestId": "fourth-again"})
    expect(a, reply_frame("s", "rr-b", 4, True, 4))
    wait_in_flight(b, 0)


# --------------------------------------------------------------------------------------------
# 1,000 concurrent requests with random behaviour
# --------------------------------------------------------------------------------------------

N_REQUESTERS = 10
PER_REQUESTER = 100  # = the default max_requests_in_flight: every one is in flight at once
RESPONDERS = {  # peer -> shards of its connections ("a" on the first, "b" on the second)
    "lr-0": (0, 1),
    "lr-1": (1, 0),
    "lr-2": (0, 1),
    "lr-3": (1, 0),
    "lr-4": (0,),
}
DROPPERS = ["lr-0", "lr-1", "lr-2", "lr-3"]  # connection "b" of each drops once, mid-stream
TERMINAL_ERRORS = {"request_timeout", "responder_gone"}


async def aopen(broker, peer_id: str, shard: int):
    from websockets.asyncio.client import connect

    for _ in range(60):
        ws = await connect(broker.url(token=mint(peer_id)), ping_interval=None, max_size=None,
                           max_queue=None, open_timeout=10, close_timeout=1,
                           local_addr=(next_source_ip(), 0), proxy=None)
        if int(ws.response.headers["X-Ringcast-Shard"]) == shard:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert welcome["type"] == "welcome" and welcome["peerId"] == peer_id, welcome
            return ws
        await ws.close()
    raise AssertionError(f"no connection on shard {shard}")


class Responder:
    """One responder connection. Both connections of a peer answer every request (so they race
    for it), except that only connection "b" answers a "drop" request: it sends one chunk and,
    once that was accepted, disconnects."""

    def __init__(self, peer_id: str, role: str, ws, rng: random.Random):
        self.peer, self.role, self.ws, self.rng = peer_id, role, ws, rng
        self.name = f"{peer_id}/{role}"
        self.rids = (f"{self.name}#{i}" for i in range(10**9))
        self.answers: dict[str, asyncio.Future] = {}
        self.requests: dict[str, dict] = {}  # replyTo -> request frame
        self.cancels: dict[str, list] = {}  # replyTo -> reasons
        self.errors: list = []
        self.holding: set = set()  # replyTo of streams it started and did not end
        self.dropped_holding: Optional[set] = None  # what it held when it dropped
        self.tasks: list = []
        self.closed = False

    async def run(self):
        try:
            async for raw in self.ws:
                m = json.loads(raw)
                t = m["type"]
                if t == "request":
                    assert m["replyTo"] not in self.requests, m
                    self.requests[m["replyTo"]] = m
                    self.tasks.append(asyncio.ensure_future(self.handle(m)))
                elif t in ("ack", "error") and m.get("requestId") in self.answers:
                    self.answers.pop(m["requestId"]).set_result(m)
                elif t == "cancel":
                    self.cancels.setdefault(m["replyTo"], []).append(m["reason"])
                    self.holding.discard(m["replyTo"])
                else:
                    self.errors.append(m)
        except Exception as e:  # noqa: BLE001 (a drop closes the socket under the reader)
            if not self.closed:
                self.errors.append(repr(e))

    async def reply(self, x: str, data, final: bool) -> Optional[dict]:
        """Sends a reply with a requestId and returns its answer (None once this connection
        dropped itself)."""
        if self.closed:
            return None
        r = next(self.rids)
        fut = asyncio.get_running_loop().create_future()
        self.answers[r] = fut
        if not final:
            self.holding.add(x)
        try:
            await self.ws.send(json.dumps({"type": "reply", "replyTo": x, "data": data, "final": final,
                                           "requestId": r}))
        except Exception:
            if self.closed:
                return None
            raise
        if final:
            self.holding.discard(x)
        return await asyncio.wait_for(fut, 15)

    async def drop(self):
        self.dropped_holding = set(self.holding)
        self.closed = True
        for fut in self.answers.values():
            if not fut.done():
                fut.set_result(None)
        await self.ws.close()

    async def handle(self, m: dict):
        if self.closed:
            return
        d, x = m["data"], m["replyTo"]
        b = d["b"]
        if b == "never" or (b == "drop" and self.role != "b"):
            return
        await asyncio.sleep(self.rng.random() * 0.01)
        if self.closed:
            return
        if b == "once":
            ans = await self.reply(x, {"n": 1, "by": self.name}, True)
            assert ans is None or ans["type"] == "ack" or ans["code"] == "request_not_found", ans
            return
        # stream / cancel / drop: the first chunk decides who took it.
        ans = await self.reply(x, {"n": 1, "by": self.name}, False)
        if ans is None:
            return
        if ans["type"] == "error":
            assert ans["code"] == "request_not_found", ans
            self.holding.discard(x)
            return
        assert ans["type"] == "ack", ans
        if b == "drop":
            await self.drop()
            return
        if b == "cancel":
            return  # the requester cancels it
        k = d["k"]
        for n in range(2, k + 2):
            await asyncio.sleep(self.rng.random() * 0.01)
            ans = await self.reply(x, {"n": n, "by": self.name}, n == k + 1)
            if ans is None:
                return
            # Only a drop of this very connection can end a stream it took.
            assert ans["type"] == "ack", f"{self.name}: chunk {n} of {x} refused: {ans}"


class Requester:
    def __init__(self, idx: int, ws, rng: random.Random):
        self.idx, self.ws, self.rng = idx, ws, rng
        self.peer = f"lq-{idx}"
        self.events: dict[str, list] = {}  # requestId -> every frame carrying it, in order
        self.ended: dict[str, float] = {}
        self.plan: dict[str, dict] = {}
        self.cancelled: set = set()
        self.sent: dict[str, float] = {}
        self.stray: list = []
        self.all_done = asyncio.Event()

    @staticmethod
    def is_terminal(m: dict) -> bool:
        return (m["type"] == "reply" and m["final"] is True) or m["type"] == "ack" or (
            m["type"] == "error" and m["code"] in TERMINAL_ERRORS)

    async def run(self):
        try:
            async for raw in self.ws:
                m = json.loads(raw)
                r = m.get("requestId")
                if r not in self.plan:
                    self.stray.append(m)
                    continue
                self.events[r].append(m)
                p = self.plan[r]
                if (m["type"] == "reply" and m["seq"] == 1 and p["b"] == "cancel" and p["when"] == "first"
                        and r not in self.cancelled):
                    self.cancelled.add(r)
                    await self.ws.send(json.dumps({"type": "cancel", "requestId": r}))
                if self.is_terminal(m) and r not in self.ended:
                    self.ended[r] = time.monotonic()
                    if len(self.ended) == len(self.plan):
                        self.all_done.set()
        except Exception as e:  # noqa: BLE001
            self.stray.append(repr(e))

    async def send_all(self, plans: list):
        for p in plans:
            self.plan[p["rid"]] = p
            self.events[p["rid"]] = []
        for p in plans:
            self.sent[p["rid"]] = time.monotonic()
            await self.ws.send(json.dumps({"type": "request", "to": p["to"], "requestId": p["rid"],
                                           "data": p["data"], "timeoutMs": p["timeoutMs"]}))
            if p["b"] == "cancel" and p["when"] == "soon":
                asyncio.get_running_loop().call_later(p["delay"], self.cancel_soon, p["rid"])

    def cancel_soon(self, r: str):
        if r not in self.cancelled and r not in self.ended:
            self.cancelled.add(r)
            asyncio.ensure_future(self.ws.send(json.dumps({"type": "cancel", "requestId": r})))


def make_plans(rng: random.Random) -> list[list]:
    plans = []
    drops = {(2 + 2 * i, 10 + 20 * i): p for i, p in enumerate(DROPPERS)}  # (requester, index)
    for q in range(N_REQUESTERS):
        mine = []
        for i in range(PER_REQUESTER):
            rid_ = f"q{q}-{i}"
            if (q, i) in drops:
                b, to = "drop", drops[(q, i)]
            else:
                b = rng.choices(["once", "stream", "never", "cancel"], [30, 35, 15, 20])[0]
                to = rng.choice(list(RESPONDERS))
            p = {"rid": rid_, "to": to, "b": b, "timeoutMs": 20000}
            if b == "stream":
                p["k"] = rng.randint(1, 3)
            if b == "never":
                p["timeoutMs"] = rng.randint(200, 1500)
            if b == "cancel":
                p["when"] = rng.choice(["first", "soon"])
                p["delay"] = rng.random() * 0.05
            p["data"] = {"b": b, "k": p.get("k", 0), "rid": rid_}
            mine.append(p)
        plans.append(mine)
    return plans


def test_thousand_concurrent_requests_each_end_exactly_once(broker_factory):
    b = broker_factory(args=["--rate-limit-per-sec", "100000", "--rate-limit-burst", "100000"],
                       name="rpc-load")
    m0 = rest_metrics(b)
    rng = random.Random(20240611)
    plans = make_plans(rng)
    t_start = time.monotonic()

    async def main():
        responders = []
        for p, shards in RESPONDERS.items():
            for role, s in zip("ab", shards):
                responders.append(Responder(p, role, await aopen(b, p, s), random.Random(rng.random())))
        requesters = [Requester(q, await aopen(b, f"lq-{q}", q % 2), random.Random(rng.random()))
                      for q in range(N_REQUESTERS)]
        readers = [asyncio.ensure_future(x.run()) for x in responders + requesters]
        await asyncio.gather(*(rq.send_all(plans[rq.idx]) for rq in requesters))
        try:
            await asyncio.wait_for(asyncio.gather(*(rq.all_done.wait() for rq in requesters)), 30)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.5)  # anything after the end would arrive now
        # Nothing is left in flight while every connection is still open (closing the
        # requesters would clean up on its own).
        m1 = await asyncio.to_thread(
            wait_until,
            lambda: (lambda m: m if m.get("ringcast_requests_in_flight") == 0 else None)(rest_metrics(b)),
            timeout=5, what="ringcast_requests_in_flight to return to 0 with every connection open")
        for x in responders:
            await asyncio.gather(*x.tasks, return_exceptions=False)
        for x in responders + requesters:
            if not getattr(x, "closed", False):
                await x.ws.close()
        for t in readers:
            t.cancel()
        return responders, requesters, m1

    responders, requesters, m1 = asyncio.run(main())
    elapsed = time.monotonic() - t_start

    # Requests held by a connection when it dropped may end with responder_gone.
    may_be_gone = set()
    for x in responders:
        assert not x.errors, f"{x.name}: unexpected frames {x.errors[:5]}"
        if x.dropped_holding is not None:
            may_be_gone |= {x.requests[rt]["data"]["rid"] for rt in x.dropped_holding}
    dropped = [x.name for x in responders if x.dropped_holding is not None]
    assert sorted(dropped) == sorted(f"{p}/b" for p in DROPPERS), dropped

    counts: dict = {}
    problems = []
    lateness: list = []
    for rq in requesters:
        assert not rq.stray, f"{rq.peer}: frames without a known requestId: {rq.stray[:5]}"
        for r, p in rq.plan.items():
            ev = rq.events[r]
            terms = [i for i, m in enumerate(ev) if rq.is_terminal(m)]
            if len(terms) != 1:
                problems.append((r, p["b"], "terminals", ev))
                continue
            end = terms[0]
            after = ev[end + 1:]
            # The one thing allowed after the end: the answer to a cancel that crossed it.
            if after and not (r in rq.cancelled and len(after) == 1 and after[0]["type"] == "error"
                              and after[0]["code"] == "request_not_found"):
                problems.append((r, p["b"], "after end", ev))
                continue
            replies = [m for m in ev[:end + 1] if m["type"] == "reply"]
            others = [m for m in ev[:end] if m["type"] != "reply"]
            if others:
                problems.append((r, p["b"], "non-reply before end", ev))
                continue
            if [m["seq"] for m in replies] != list(range(1, len(replies) + 1)):
                problems.append((r, p["b"], "seq", ev))
                continue
            bys = {m["data"]["by"] for m in replies}
            if any(m["from"] != p["to"] for m in replies) or len(bys) > 1 or \
                    [m["data"]["n"] for m in replies] != list(range(1, len(replies) + 1)):
                problems.append((r, p["b"], "replies not one responder's stream", ev))
                continue
            last = ev[end]
            kind = ("final" if last["type"] == "reply" else "cancelled" if last["type"] == "ack"
                    else last["code"])
            expected = {"once": "final", "stream": "final", "never": "request_timeout",
                        "cancel": "cancelled", "drop": "responder_gone"}[p["b"]]
            if kind != expected and not (kind == "responder_gone" and r in may_be_gone):
                problems.append((r, p["b"], f"ended {kind}, expected {expected}", ev))
                continue
            if kind == "final" and p["b"] == "stream" and len(replies) != p["k"] + 1:
                problems.append((r, p["b"], "stream length", ev))
                continue
            if kind == "cancelled" and r not in rq.cancelled:
                problems.append((r, p["b"], "ack without a cancel", ev))
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "request_timeout":
                lateness.append(rq.ended[r] - rq.sent[r] - p["timeoutMs"] / 1000)
    assert not problems, f"{len(problems)} requests misbehaved, first ones: {problems[:5]}"
    assert sum(counts.values()) == N_REQUESTERS * PER_REQUESTER, counts
    assert counts.get("responder_gone", 0) >= len(DROPPERS), counts
    # Under this load too, no deadline fires early (the client adds its own delay on top).
    lateness.sort()
    assert lateness and lateness[0] >= 0, f"a timeout came {-lateness[0] * 1000:.1f} ms early"
    assert lateness[-1] <= 0.5, f"a timeout came {lateness[-1] * 1000:.0f} ms late"

    # Responder side: every cancel fits the request it is about.
    allowed = {"never": {"timeout"}, "cancel": {"cancelled", "taken"}, "once": {"taken"},
               "stream": {"taken"}, "drop": {"taken"}}
    never_cancelled = 0
    for x in responders:
        for rt, reasons in x.cancels.items():
            req = x.requests.get(rt)
            assert req is not None, f"{x.name}: cancel for a request it never got: {rt} {reasons}"
            assert len(reasons) == 1 and reasons[0] in allowed[req["data"]["b"]], (x.name, req, reasons)
        if not x.closed:
            # A request nobody took that timed out is cancelled on every connection that has it.
            for rt, req in x.requests.items():
                if req["data"]["b"] == "never":
                    assert x.cancels.get(rt) == ["timeout"], (x.name, req, x.cancels.get(rt))
                    never_cancelled += 1
    assert never_cancelled > 0

    n_never = sum(1 for q in plans for p in q if p["b"] == "never")
    assert m1["ringcast_requests_total"] - m0.get("ringcast_requests_total", 0) == N_REQUESTERS * PER_REQUESTER
    assert m1["ringcast_request_timeouts_total"] - m0.get("ringcast_request_timeouts_total", 0) == n_never
    ms = [d * 1000 for d in lateness]
    print(f"1000 requests in {elapsed:.1f} s: {counts}; may_be_gone={len(may_be_gone)}; timeout lateness "
          f"p50 {statistics.median(ms):.1f} ms, p99 {ms[int(len(ms) * 0.99)]:.1f} ms, max {ms[-1]:.1f} ms")
