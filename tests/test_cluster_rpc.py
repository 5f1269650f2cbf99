"""Verifies protocol.md §8.4 requests across nodes (§9): three real ringcast nodes (2 shards
each) joined through a real nats-server started here, requesters and responders on different
nodes, real WebSocket clients (python-websockets):

- a request reaches the target peer's connections on another node; its `replyTo` names the
  requester's node; streamed replies arrive in order (`seq`), acks go back to the responder,
  a reply after the final one is `request_not_found`;
- the first responder takes it across nodes: the other node's connection gets `cancel`
  `taken` and its reply is refused;
- `peer_not_found` at once when no node holds the peer; `request_timeout` with `cancel`
  `timeout` to the remote holder; `cancel` from the requester reaches the remote holder;
  the remote responder disconnecting is `responder_gone`; the requester disconnecting sends
  `cancel` `requester_gone` to the remote holder;
- a node killed with SIGKILL while its connection holds a request: the requester gets
  `responder_gone` within 3 s;
- `ringcast_requests_in_flight` returns to 0 on every node after each of these.
"""

from __future__ import annotations

import signal
import time

import pytest

from cluster_helpers import FAST, health, metric, nats, nodes_fixture, peer  # noqa: F401 (nats: fixture)
from helpers import Broker, wait_until
from test_rpc import cancel_frame, expect, expect_error, reply_frame, send_reply, send_request

_n = iter(range(1_000_000))


def uniq(prefix: str) -> str:
    return f"{prefix}-{next(_n)}"


nodes = nodes_fixture("r")


@pytest.fixture(autouse=True)
def nothing_in_flight_after(nodes):
    yield
    for b in nodes:
        wait_until(lambda b=b: metric(b, "ringcast_requests_in_flight") == 0, timeout=5, what=f"{b.name}: no request in flight")


def responder(b: Broker, name: str, shard=None):
    """A connection of peer `name` on `b`, once `b` listens to the peer's subject on NATS."""
    before = metric(b, "ringcast_cluster_interest", kind="peer")
    c = peer(b, name, shard=shard)
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="peer") > before, timeout=5, what="peer interest")
    time.sleep(0.1)  # the SUB reaches nats-server after the gauge moves
    return c


def expect_request(c, frm: str, data) -> str:
    m = c.expect_type("request", skip=False)
    assert m["from"] == frm and m["data"] == data, m
    return m["replyTo"]


def test_a_request_crosses_nodes_and_its_streamed_reply_comes_back_in_order(nodes):
    a, b, _ = nodes
    asker, helper = uniq("ask"), uniq("help")
    req = peer(a, asker)
    res = responder(b, helper)
    send_request(req, helper, "r1", {"q": 1}, timeout_ms=5000)
    x = expect_request(res, asker, {"q": 1})
    assert x.count(".") == 2 and len(x.split(".")[2]) == 16, f"replyTo names the requester's node: {x}"
    send_reply(res, x, {"chunk": 1}, final=False, rid="c1")
    expect(res, {"type": "ack", "requestId": "c1"})
    expect(req, reply_frame("r1", helper, {"chunk": 1}, False, 1))
    send_reply(res, x, {"chunk": 2}, final=False)
    expect(req, reply_frame("r1", helper, {"chunk": 2}, False, 2))
    send_reply(res, x, {"done": True}, final=True, rid="c3")
    expect(res, {"type": "ack", "requestId": "c3"})
    expect(req, reply_frame("r1", helper, {"done": True}, True, 3))
    send_reply(res, x, "late", rid="late")
    expect_error(res, "request_not_found", "late")
    req.no_message_within(0.2)
    assert metric(b, "ringcast_cluster_rpc_total", direction="sent") >= 3


def test_the_first_responder_takes_it_and_the_other_node_is_told(nodes):
    a, b, c = nodes
    asker, helper = uniq("ask"), uniq("help")
    req = peer(a, asker)
    on_b = responder(b, helper)
    on_c = responder(c, helper)
    send_request(req, helper, "r2", "go", timeout_ms=5000)
    xb = expect_request(on_b, asker, "go")
    xc = expect_request(on_c, asker, "go")
    assert xb == xc
    send_reply(on_c, xc, "mine", final=False)
    expect(req, reply_frame("r2", helper, "mine", False, 1))
    expect(on_b, cancel_frame(xb, "taken"))
    send_reply(on_b, xb, "too late", rid="tl")
    expect_error(on_b, "request_not_found", "tl")
    send_reply(on_c, xc, "end", final=True)
    expect(req, reply_frame("r2", helper, "end", True, 2))
    on_c.no_message_within(0.2)


def test_peer_not_found_when_no_node_holds_the_peer(nodes):
    req = peer(nodes[0], uniq("ask"))
    t0 = time.monotonic()
    send_request(req, uniq("nobody"), "r3", 1, timeout_ms=5000)
    expect_error(req, "peer_not_found", "r3")
    assert time.monotonic() - t0 < 1.0, "at once, not at the deadline"


def test_timeout_and_cancel_reach_the_holder_on_another_node(nodes):
    a, b, _ = nodes
    asker, helper = uniq("ask"), uniq("help")
    req = peer(a, asker)
    res = responder(b, helper)
    # Untaken, then the deadline.
    send_request(req, helper, "t1", 1, timeout_ms=300)
    x = expect_request(res, asker, 1)
    expect_error(req, "request_timeout", "t1")
    expect(res, cancel_frame(x, "timeout"))
    # Taken, then the requester cancels.
    send_request(req, helper, "t2", 2, timeout_ms=5000)
    x2 = expect_request(res, asker, 2)
    send_reply(res, x2, "working", final=False)
    expect(req, reply_frame("t2", helper, "working", False, 1))
    req.send_json({"type": "cancel", "requestId": "t2"})
    expect(req, {"type": "ack", "requestId": "t2"})
    expect(res, cancel_frame(x2, "cancelled"))
    # Untaken, then the requester cancels.
    send_request(req, helper, "t3", 3, timeout_ms=5000)
    x3 = expect_request(res, asker, 3)
    req.send_json({"type": "cancel", "requestId": "t3"})
    expect(req, {"type": "ack", "requestId": "t3"})
    expect(res, cancel_frame(x3, "cancelled"))


def test_responder_gone_and_requester_gone_across_nodes(nodes):
    a, b, _ = nodes
    asker, helper = uniq("ask"), uniq("help")
    req = peer(a, asker)
    res = responder(b, helper)
    send_request(req, helper, "g1", 1, timeout_ms=5000)
    x = expect_request(res, asker, 1)
    send_reply(res, x, "half", final=False)
    expect(req, reply_frame("g1", helper, "half", False, 1))
    res.close()
    expect_error(req, "responder_gone", "g1")
    # The requester goes: the remote holder (taken) is told.
    res2 = responder(b, helper)
    req2 = peer(a, uniq("ask"))
    send_request(req2, helper, "g2", 2, timeout_ms=5000)
    x2 = expect_request(res2, req2.name, 2)
    send_reply(res2, x2, "half", final=False)
    expect(req2, reply_frame("g2", helper, "half", False, 1))
    req2.close()
    expect(res2, cancel_frame(x2, "requester_gone"))


def test_a_killed_responder_node_fails_the_requests_it_took_within_3_s(nats, nodes):
    a = nodes[0]
    victim = Broker(args=[*FAST, "--nats-url", nats.url, "--node-id", "rvictim"], shards=2, name="rvictim")
    try:
        wait_until(lambda: health(a)["cluster"]["nodes"] == 4, timeout=10, what="a sees the victim")
        asker, helper = uniq("ask"), uniq("help")
        req = peer(a, asker)
        res = responder(victim, helper)
        send_request(req, helper, "k1", 1, timeout_ms=20000)
        x = expect_request(res, asker, 1)
        send_reply(res, x, "started", final=False)
        expect(req, reply_frame("k1", helper, "started", False, 1))
        victim.proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        expect_error(req, "responder_gone", "k1", timeout=6)
        took = time.monotonic() - t0
        print(f"responder's node SIGKILLed: responder_gone after {took * 1000:.0f} ms (bound 3,000)")
        assert took <= 3.0, took
    finally:
        victim.stop()
