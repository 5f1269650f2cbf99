"""Verifies that direct messages (`send`, protocol.md sections 3-4 and 6) reach every connection of
the target peer on every shard and never the sending connection, carry fromMetadata when the sender
has peerMetadata, are acked by requestId, ignore channel scopes, and fail with peer_not_found,
invalid_peer_id, action_not_permitted or missing_data as specified, without crossing apps."""

from __future__ import annotations

import pytest

from helpers import NOSEND_KEY_ID, NOSEND_SECRET, OTHER_KEY_ID, OTHER_SECRET, mint, wait_until


def peer(broker, name, shard=None, **claims):
    return broker.connect(mint(name, **claims), shard=shard, name=name)


def assert_error(m, code, request_id=None):
    assert m["type"] == "error" and m["code"] == code, m
    if request_id is None:
        assert "requestId" not in m, m
    else:
        assert m["requestId"] == request_id, m


def test_send_reaches_every_connection_of_target_across_shards(broker):
    alice = peer(broker, "d-alice", shard=0)
    bob0 = peer(broker, "d-bob", shard=0)
    bob1 = peer(broker, "d-bob", shard=1)
    carol = peer(broker, "d-carol", shard=1)
    assert bob0.shard != bob1.shard
    alice.send_json({"type": "send", "to": "d-bob", "data": {"text": "hi", "n": [1, None]}, "requestId": "s-1"})
    ack = alice.recv_json()
    assert ack["type"] == "ack" and ack["requestId"] == "s-1", ack
    for b in (bob0, bob1):
        m = b.recv_json()
        assert m["type"] == "direct" and m["from"] == "d-alice" and m["data"] == {"text": "hi", "n": [1, None]}, m
        assert "fromMetadata" not in m, m
    alice.no_message_within(0.3)
    carol.no_message_within(0.05)
    bob0.no_message_within(0.05)
    bob1.no_message_within(0.05)


def test_send_to_own_peer_skips_the_sending_connection(broker):
    me0 = peer(broker, "d-self", shard=0)
    me1 = peer(broker, "d-self", shard=1)
    me0.send_to("d-self", "note to self")
    m = me1.recv_json()
    assert m["type"] == "direct" and m["from"] == "d-self" and m["data"] == "note to self", m
    me0.no_message_within(0.3)


def test_send_carries_sender_peer_metadata(broker):
    pm = {"name": "Alice", "role": "admin"}
    alice = peer(broker, "dm-alice", shard=1, peerMetadata=pm, metadata={"private": True})
    bob = peer(broker, "dm-bob", shard=0)
    alice.send_to("dm-bob", None)
    m = bob.recv_json()
    assert m["type"] == "direct" and m["from"] == "dm-alice", m
    assert "data" in m and m["data"] is None, m
    assert m["fromMetadata"] == pm, "fromMetadata must be the public peerMetadata, not private metadata"


def test_send_is_not_scoped_by_channel_patterns(broker):
    scoped = peer(broker, "d-scoped", shard=0, channels=["room/*"])
    target = peer(broker, "d-target", shard=1)
    scoped.send_to("d-target", 1)
    assert target.recv_json()["type"] == "direct"


def test_send_order_is_kept(broker):
    a = peer(broker, "ord-a", shard=0)
    b = peer(broker, "ord-b", shard=1)
    for i in range(25):
        a.send_to("ord-b", i, ack=False)
    a.sync()
    assert [b.expect_type("direct")["data"] for _ in range(25)] == list(range(25))


def test_peer_not_found(broker):
    a = peer(broker, "nf-a")
    assert_error(a.request({"type": "send", "to": "nobody-home", "data": 1}), "peer_not_found", a.last_rid)
    a.send_json({"type": "send", "to": "nobody-home", "data": 1})
    assert_error(a.recv_json(), "peer_not_found")
    # A peer that went away is not found either.
    gone = peer(broker, "nf-gone", shard=1)
    a.send_to("nf-gone", "still there?")
    assert gone.recv_json()["type"] == "direct"
    gone.close()

    def refused():
        m = a.request({"type": "send", "to": "nf-gone", "data": 2})
        return m["type"] == "error" and m["code"] == "peer_not_found"

    wait_until(refused, timeout=3, what="send to a disconnected peer to fail with peer_not_found")


@pytest.mark.parametrize(
    "to",
    [
        pytest.param("", id="empty"),
        pytest.param("p" * 129, id="129-chars"),
        pytest.param("has space", id="space"),
        pytest.param("tab\there", id="tab"),
        pytest.param("nl\n", id="newline"),
        pytest.param("nul\x00", id="nul"),
        pytest.param("del\x7f", id="del"),
        pytest.param("ünicode", id="non-ascii"),
    ],
)
def test_invalid_peer_id(broker, to):
    a = peer(broker, "ipi-a")
    assert_error(a.request({"type": "send", "to": to, "data": 1}), "invalid_peer_id", a.last_rid)
    a.send_json({"type": "send", "to": to, "data": 1})
    assert_error(a.recv_json(), "invalid_peer_id")


def test_invalid_peer_id_missing_or_not_string(broker):
    a = peer(broker, "ipi-b")
    for cmd in ({"type": "send", "data": 1}, {"type": "send", "to": 5, "data": 1}, {"type": "send", "to": None, "data": 1}):
        m = a.request(cmd)
        assert m["type"] == "error" and m["code"] in ("invalid_peer_id", "malformed_message"), (cmd, m)


def test_longest_valid_peer_id(broker):
    long_id = "L" * 127 + "~"
    a = peer(broker, "ipi-c", shard=0)
    # Valid but nobody online: peer_not_found (not invalid_peer_id).
    assert_error(a.request({"type": "send", "to": long_id, "data": 1}), "peer_not_found", a.last_rid)
    target = peer(broker, long_id, shard=1)
    assert target.welcome["peerId"] == long_id
    a.send_to(long_id, "max")
    assert target.recv_json()["data"] == "max"


def test_action_not_permitted_without_send(broker):
    target = peer(broker, "np-target", shard=1)
    by_token = peer(broker, "np-by-token", shard=0, permissions=["publish", "subscribe", "presence"])
    assert_error(by_token.request({"type": "send", "to": "np-target", "data": 1}), "action_not_permitted",
                 by_token.last_rid)
    by_token.send_json({"type": "send", "to": "np-target", "data": 1})
    assert_error(by_token.recv_json(), "action_not_permitted")
    # The key's actions cap the token even if the token claims `send`.
    by_key = broker.connect(mint("np-by-key", key_id=NOSEND_KEY_ID, secret=NOSEND_SECRET,
                                 permissions=["publish", "subscribe", "send"]), name="np-by-key")
    assert_error(by_key.request({"type": "send", "to": "np-target", "data": 1}), "action_not_permitted",
                 by_key.last_rid)
    target.no_message_within(0.2)


def test_missing_data(broker):
    a = peer(broker, "md-a")
    b = peer(broker, "md-b")
    assert_error(a.request({"type": "send", "to": "md-b"}), "missing_data", a.last_rid)
    a.send_json({"type": "send", "to": "md-b"})
    assert_error(a.recv_json(), "missing_data")
    b.no_message_within(0.2)


def test_send_does_not_cross_apps(broker):
    other = dict(key_id=OTHER_KEY_ID, secret=OTHER_SECRET)
    sender_test = peer(broker, "x-sender", shard=0)
    bob_other = peer(broker, "x-bob", shard=1, **other)
    # x-bob exists only in the other app.
    assert_error(sender_test.request({"type": "send", "to": "x-bob", "data": 1}), "peer_not_found",
                 sender_test.last_rid)
    # With x-bob online in both apps, each sender reaches only its own app's x-bob.
    bob_test = peer(broker, "x-bob", shard=0)
    sender_other = peer(broker, "x-sender", shard=1, **other)
    sender_test.send_to("x-bob", "from-test")
    assert bob_test.recv_json()["data"] == "from-test"
    sender_other.send_to("x-bob", "from-other")
    assert bob_other.recv_json()["data"] == "from-other"
    bob_test.no_message_within(0.3)
    bob_other.no_message_within(0.05)
    sender_test.no_message_within(0.05)
    sender_other.no_message_within(0.05)
