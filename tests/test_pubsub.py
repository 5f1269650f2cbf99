"""Verifies that channel publish/subscribe behaves as protocol.md sections 2-4 and 6 specify:
the welcome frame, subscribe/unsubscribe acks, cross-shard fan-out to every subscriber except the
publishing connection, byte-faithful `data`, includeSenderMetadata, idempotency, every command
error code (with and without requestId) and isolation between apps."""

from __future__ import annotations

import json
import time

import pytest

from helpers import (
    OTHER_KEY_ID,
    OTHER_SECRET,
    chan,
    decode_unverified,
    mint,
)

ALL = ["publish", "subscribe", "presence", "send"]


def peer(broker, name, shard=None, **claims):
    return broker.connect(mint(name, **claims), shard=shard, name=name)


def assert_error(m, code, request_id=None):
    assert m["type"] == "error", m
    assert m["code"] == code, m
    if request_id is None:
        assert "requestId" not in m, f"error without a requestId in the request must not carry one: {m}"
    else:
        assert m["requestId"] == request_id, m


# ---------------------------------------------------------------------------------------------
# welcome
# ---------------------------------------------------------------------------------------------


def test_welcome_fields_with_metadata(broker):
    meta = {"plan": "pro", "quota": [1, 2, 3], "nested": {"k": None}}
    tok = mint("alice", exp_in=1800, metadata=meta)
    exp = decode_unverified(tok)[1]["exp"]
    before = time.time()
    c = broker.connect(tok)
    w = c.welcome
    assert w["type"] == "welcome"
    assert w["peerId"] == "alice"
    assert w["expiresAt"] == exp and isinstance(w["expiresAt"], int)
    assert isinstance(w["serverTime"], (int, float))
    assert before - 2 <= w["serverTime"] <= time.time() + 2
    assert w["maxMessageSize"] == 65536
    assert w["metadata"] == meta


def test_welcome_has_no_metadata_unless_token_has_it(broker):
    c = peer(broker, "bob")
    assert "metadata" not in c.welcome, c.welcome
    # peerMetadata is public presence data, not the private `metadata` claim.
    d = peer(broker, "carol", peerMetadata={"name": "Carol"})
    assert "metadata" not in d.welcome, d.welcome
    assert d.welcome["peerId"] == "carol"


# ---------------------------------------------------------------------------------------------
# subscribe / publish fan-out
# ---------------------------------------------------------------------------------------------


def test_subscribe_ack_echoes_request_id(broker):
    c = peer(broker, "subber")
    c.send_json({"type": "subscribe", "channel": chan(), "requestId": "sub-1"})
    m = c.recv_json()
    assert m["type"] == "ack" and m["requestId"] == "sub-1", m
    # A 128-character requestId is valid and echoed verbatim.
    long_id = "x" * 127 + "Z"
    c.send_json({"type": "unsubscribe", "channel": "nope", "requestId": long_id})
    m = c.expect_type("ack", skip=True)
    assert m["requestId"] == long_id


def test_publish_fans_out_across_shards_but_not_to_publisher(broker):
    ch = chan("fan")
    pub = peer(broker, "pub", shard=0)
    pub_twin = peer(broker, "pub", shard=1)  # another connection of the same peer
    s0 = peer(broker, "s0", shard=0)
    s1 = peer(broker, "s1", shard=1)
    bystander = peer(broker, "by", shard=1)
    assert pub.shard != pub_twin.shard and s0.shard != s1.shard
    bystander.subscribe(chan("elsewhere"))
    for c in (pub, pub_twin, s0, s1):
        c.subscribe(ch)
    pub.publish(ch, {"hello": "world", "n": 1})
    for c in (pub_twin, s0, s1):
        m = c.expect_type("message", skip=True)
        assert m["channel"] == ch and m["from"] == "pub" and m["data"] == {"hello": "world", "n": 1}, m
        assert "fromMetadata" not in m, m
        assert set(m) == {"type", "channel", "from", "data"}, m
    pub.no_message_within(0.3, ignore=["presence"])
    bystander.no_message_within(0.05, ignore=["presence"])
    for c in (pub_twin, s0, s1):
        c.no_message_within(0.05, ignore=["presence"])  # exactly one copy


def test_publisher_need_not_be_subscribed_and_order_is_kept(broker):
    ch = chan("order")
    pub = peer(broker, "lonely-pub", shard=0)
    sub = peer(broker, "order-sub", shard=1)
    sub.subscribe(ch)
    for i in range(30):
        pub.publish(ch, {"seq": i}, ack=False)
    pub.sync()
    got = [sub.expect_type("message", skip=True)["data"]["seq"] for _ in range(30)]
    assert got == list(range(30))
    pub.no_message_within(0.2)


def test_publish_null_data_is_delivered(broker):
    ch = chan("null")
    pub, sub = peer(broker, "np", shard=0), peer(broker, "ns", shard=1)
    sub.subscribe(ch)
    pub.publish(ch, None)
    m = sub.expect_type("message", skip=True)
    assert "data" in m and m["data"] is None, m


ODD_DATA = [
    "null",
    "0",
    "-0.0",
    "true",
    '"plain string"',
    "12345678901234567890",
    "-98765432109876543210.000000000000000000001",
    "1.5e+300",
    "1E-7",
    "[]",
    "{}",
    r'"h\u00e9llo \ud83d\ude00 \/ \"q\" \\ \n\t\u0000 \u2028"',
    '"日本語 ünïcödé 😀"',
    r'{"big":12345678901234567890,"f":1.0,"e":2.50e10,"s":"a\u0041\"b","n":null,'
    r'"deep":[[[[{"x":[null,true,false,{"y":{}}]}]]]],"empty":"","k\u00e9y":"v"}',
]


def test_data_is_forwarded_byte_for_byte(broker):
    ch = chan("fidelity")
    pub = peer(broker, "fid-pub", shard=0)
    sub = peer(broker, "fid-sub", shard=1)
    sub.subscribe(ch)
    raw = broker.raw(mint("fid-raw"), shard=0)
    raw.expect_type("welcome")
    raw.send_json({"type": "subscribe", "channel": ch, "requestId": "s"})
    assert raw.expect_type("ack")["requestId"] == "s"
    assert raw.expect_type("presence")["channel"] == ch
    sub.expect_type("presence", skip=True)  # fid-raw joined
    for i, text in enumerate(ODD_DATA):
        frame = '{"type":"publish","channel":' + json.dumps(ch) + ',"requestId":"p%d","data":%s}' % (i, text)
        pub.send_text(frame)
        assert pub.expect_type("ack", skip=True)["requestId"] == f"p{i}"
        m = sub.expect_type("message", skip=True)
        assert m["data"] == json.loads(text), (text, m)
        assert m["from"] == "fid-pub"
        r = raw.recv_text()
        assert json.loads(r)["type"] == "message", r
        assert text in r, f"data text was re-encoded:\n sent {text}\n got  {r}"


# ---------------------------------------------------------------------------------------------
# includeSenderMetadata
# ---------------------------------------------------------------------------------------------


def test_include_sender_metadata_and_resubscribe_replaces_it(broker):
    ch = chan("meta")
    pm = {"name": "Publisher", "color": "red", "n": [1, 2]}
    pub = peer(broker, "meta-pub", shard=0, peerMetadata=pm)
    with_meta = peer(broker, "with", shard=1)
    without = peer(broker, "without", shard=0)
    default = peer(broker, "default", shard=1)
    with_meta.subscribe(ch, includeSenderMetadata=True)
    without.subscribe(ch, includeSenderMetadata=False)
    default.subscribe(ch)
    pub.publish(ch, "one")
    m = with_meta.expect_type("message", skip=True)
    assert m["data"] == "one" and m["fromMetadata"] == pm, m
    for c in (without, default):
        m = c.expect_type("message", skip=True)
        assert m["data"] == "one" and "fromMetadata" not in m, m

    # Re-subscribing replaces the flag (and does not duplicate the subscription).
    with_meta.subscribe(ch, presence=False, includeSenderMetadata=False)
    without.subscribe(ch, presence=False, includeSenderMetadata=True)
    pub.publish(ch, "two")
    m = with_meta.expect_type("message", skip=True)
    assert m["data"] == "two" and "fromMetadata" not in m, m
    m = without.expect_type("message", skip=True)
    assert m["data"] == "two" and m["fromMetadata"] == pm, m
    with_meta.no_message_within(0.2, ignore=["presence"])
    without.no_message_within(0.05, ignore=["presence"])


# ---------------------------------------------------------------------------------------------
# unsubscribe / idempotency
# ---------------------------------------------------------------------------------------------


def test_unsubscribe_stops_delivery(broker):
    ch = chan("unsub")
    pub = peer(broker, "u-pub", shard=0)
    leaver = peer(broker, "u-leaver", shard=1)
    stayer = peer(broker, "u-stayer", shard=0)
    leaver.subscribe(ch)
    stayer.subscribe(ch)
    pub.publish(ch, 1)
    assert leaver.expect_type("message", skip=True)["data"] == 1
    assert stayer.expect_type("message", skip=True)["data"] == 1
    leaver.unsubscribe(ch)
    pub.publish(ch, 2)
    assert stayer.expect_type("message", skip=True)["data"] == 2
    leaver.no_message_within(0.3, ignore=["presence"])


def test_subscribe_and_unsubscribe_are_idempotent(broker):
    ch = chan("idem")
    pub = peer(broker, "i-pub", shard=0)
    sub = peer(broker, "i-sub", shard=1)
    sub.subscribe(ch)
    sub.subscribe(ch, presence=False)  # second subscribe: ack, still one subscription
    sub.no_message_within(0.1, ignore=["presence"])
    pub.publish(ch, "once")
    assert sub.expect_type("message", skip=True)["data"] == "once"
    sub.no_message_within(0.3, ignore=["presence"])
    sub.unsubscribe(ch)
    sub.unsubscribe(ch)
    sub.unsubscribe(chan("never-subscribed"))
    pub.publish(ch, "gone")
    sub.no_message_within(0.3, ignore=["presence"])


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

MALFORMED = [
    pytest.param("this is not json", id="not-json"),
    pytest.param("[1, 2, 3]", id="array"),
    pytest.param('"a string"', id="string"),
    pytest.param("42", id="number"),
    pytest.param("null", id="null"),
    pytest.param('{"channel": "x"}', id="missing-type"),
    pytest.param('{"type": 5, "channel": "x"}', id="numeric-type"),
    pytest.param('{"type": null}', id="null-type"),
    pytest.param('{"type": ["subscribe"]}', id="array-type"),
    pytest.param('{"type":"subscribe","channel":"x","requestId":""}', id="empty-requestId"),
    pytest.param('{"type":"subscribe","channel":"x","requestId":"%s"}' % ("r" * 129), id="129-char-requestId"),
    pytest.param('{"type":"subscribe","channel":"x","requestId":17}', id="numeric-requestId"),
    pytest.param('{"type":"subscribe","channel":"x","requestId":{"a":1}}', id="object-requestId"),
    pytest.param('{"type":"publish","channel":"a","channel":"b","data":1}', id="duplicate-key"),
    pytest.param('{"type":"ping","type":"ping"}', id="duplicate-type"),
    pytest.param('{"type":"publish","channel":"deep","data":' + "[" * 70 + "]" * 70 + "}", id="nesting-71"),
    pytest.param('{"type":"subscribe","channel":"x"', id="truncated"),
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_message(broker, text):
    c = peer(broker, "malformed", shard=1)
    c.send_text(text)
    m = c.recv_json()
    assert m["type"] == "error" and m["code"] == "malformed_message", m
    # The bad command had no usable requestId: none is echoed (129-char / non-string ids are invalid).
    if "requestId" in m:
        assert m["requestId"] not in ("", None) and len(m["requestId"]) <= 128, m
    # The connection stays usable and the bad command had no effect.
    c.ping_pong()


def test_nesting_within_limit_is_accepted(broker):
    ch = chan("nest")
    pub, sub = peer(broker, "nest-pub", shard=0), peer(broker, "nest-sub", shard=1)
    sub.subscribe(ch)
    data = "[" * 60 + "1" + "]" * 60
    pub.send_text('{"type":"publish","channel":%s,"requestId":"n","data":%s}' % (json.dumps(ch), data))
    m = pub.recv_json()
    assert m["type"] == "ack" and m["requestId"] == "n", m
    m = sub.expect_type("message", skip=True)
    assert m["data"] == json.loads(data)


def test_unknown_type(broker):
    c = peer(broker, "unknown")
    c.send_json({"type": "bogus", "requestId": "u-1", "channel": "x"})
    assert_error(c.recv_json(), "unknown_type", "u-1")
    c.send_json({"type": "subscribe_all"})
    assert_error(c.recv_json(), "unknown_type")
    c.send_json({"type": "Publish", "channel": "x", "data": 1})  # case matters
    assert_error(c.recv_json(), "unknown_type")


def test_unknown_fields_are_ignored(broker):
    ch = chan("extra")
    pub, sub = peer(broker, "x-pub", shard=0), peer(broker, "x-sub", shard=1)
    sub.ok({"type": "subscribe", "channel": ch, "futureField": {"a": 1}, "x": None})
    sub.expect_type("presence", channel=ch)
    pub.ok({"type": "publish", "channel": ch, "data": 7, "whatever": [1]})
    assert sub.expect_type("message", skip=True)["data"] == 7


BAD_CHANNELS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 257, id="257-bytes"),
    pytest.param("é" * 129, id="258-utf8-bytes"),
    pytest.param("room/a\x00b", id="nul"),
    pytest.param("room/a\nb", id="newline"),
    pytest.param("room/\x1f", id="us"),
    pytest.param("room/a\x7fb", id="del"),
    pytest.param("room/a\x85b", id="c1-nel"),
    pytest.param("room/a\x9fb", id="c1-apc"),
]


@pytest.mark.parametrize("channel", BAD_CHANNELS)
def test_invalid_channel(broker, channel):
    c = peer(broker, "badchan", shard=0)
    assert_error(c.request({"type": "subscribe", "channel": channel}), "invalid_channel", c.last_rid)
    assert_error(c.request({"type": "publish", "channel": channel, "data": 1}), "invalid_channel", c.last_rid)
    c.send_json({"type": "subscribe", "channel": channel})
    assert_error(c.recv_json(), "invalid_channel")


def test_invalid_channel_missing_or_not_string(broker):
    c = peer(broker, "badchan2")
    for cmd in ({"type": "subscribe"}, {"type": "subscribe", "channel": 5}, {"type": "publish", "data": 1},
                {"type": "unsubscribe", "channel": None}):
        m = c.request(cmd)
        assert m["type"] == "error" and m["code"] in ("invalid_channel", "malformed_message"), (cmd, m)


def test_longest_valid_channel_names(broker):
    c = peer(broker, "longchan", shard=1)
    for name in ("a" * 256, "é" * 128, "x/" + "日" * 84):
        assert len(name.encode()) <= 256
        c.subscribe(name)
        c.ok({"type": "publish", "channel": name, "data": 1})


@pytest.mark.parametrize("channel", ["_metered/x", "_SYSTEM/x", "_internal/a/b", "_Metered/room", "_system/"])
def test_channel_reserved(broker, channel):
    c = peer(broker, "reserved")
    assert_error(c.request({"type": "subscribe", "channel": channel}), "channel_reserved", c.last_rid)
    assert_error(c.request({"type": "publish", "channel": channel, "data": 1}), "channel_reserved", c.last_rid)
    c.send_json({"type": "publish", "channel": channel, "data": 1})
    assert_error(c.recv_json(), "channel_reserved")


def test_reserved_prefix_needs_the_slash(broker):
    c = peer(broker, "almost-reserved")
    for channel in ("_metered", "_meteredx/a", "metered/_system/x", "_systems/a"):
        c.subscribe(channel)


def test_channel_not_authorized(broker):
    c = peer(broker, "scoped", channels=["room/*"])
    c.subscribe("room/a")
    for channel in ("other", "room/a/b", "room", "roomy/a"):
        assert_error(c.request({"type": "subscribe", "channel": channel}), "channel_not_authorized",
                     c.last_rid)
    assert_error(c.request({"type": "publish", "channel": "other", "data": 1}), "channel_not_authorized",
                 c.last_rid)
    c.send_json({"type": "subscribe", "channel": "elsewhere/x"})
    assert_error(c.recv_json(), "channel_not_authorized")
    c.ok({"type": "publish", "channel": "room/b", "data": 1})


def test_action_not_permitted(broker):
    ch = chan("perm")
    sub_only = peer(broker, "sub-only", permissions=["subscribe"])
    sub_only.subscribe(ch, presence=False)
    assert_error(sub_only.request({"type": "publish", "channel": ch, "data": 1}), "action_not_permitted",
                 sub_only.last_rid)
    sub_only.send_json({"type": "publish", "channel": ch, "data": 1})
    assert_error(sub_only.recv_json(), "action_not_permitted")
    pub_only = peer(broker, "pub-only", permissions=["publish"])
    assert_error(pub_only.request({"type": "subscribe", "channel": ch}), "action_not_permitted",
                 pub_only.last_rid)
    pub_only.ok({"type": "publish", "channel": ch, "data": "allowed"})
    assert sub_only.expect_type("message", skip=True)["data"] == "allowed"


def test_missing_data(broker):
    ch = chan("nodata")
    c = peer(broker, "nodata")
    assert_error(c.request({"type": "publish", "channel": ch}), "missing_data", c.last_rid)
    c.send_json({"type": "publish", "channel": ch})
    assert_error(c.recv_json(), "missing_data")


def test_success_without_request_id_is_silent(broker):
    ch = chan("silent")
    c = peer(broker, "silent", permissions=["publish", "subscribe"])
    c.send_json({"type": "subscribe", "channel": ch})
    c.send_json({"type": "publish", "channel": chan("x"), "data": 1})
    c.send_json({"type": "unsubscribe", "channel": ch})
    c.no_message_within(0.3)


def test_channel_limit_exceeded(broker_factory):
    b = broker_factory(args=["--max-channels-per-conn", "3"])
    c = b.connect(mint("limited"), shard=1)
    for i in range(3):
        c.subscribe(f"lim/{i}")
    c.subscribe("lim/1")  # re-subscribing is not a new channel (it gets a fresh snapshot, §5)
    assert_error(c.request({"type": "subscribe", "channel": "lim/3"}), "channel_limit_exceeded",
                 c.last_rid)
    c.send_json({"type": "subscribe", "channel": "lim/4"})
    assert_error(c.recv_json(), "channel_limit_exceeded")
    c.unsubscribe("lim/0")
    c.subscribe("lim/3")
    # The limit is per connection: another connection of the same peer has its own budget.
    d = b.connect(mint("limited"), shard=0)
    for i in range(3):
        d.subscribe(f"lim/other-{i}")


def test_apps_are_isolated(broker):
    """Same channel name and same peerIds in two apps: no presence, message or roster crosses."""
    ch = "shared/room"
    other = dict(key_id=OTHER_KEY_ID, secret=OTHER_SECRET)
    a_test = peer(broker, "alice", shard=0)
    a_other = peer(broker, "alice", shard=1, **other)
    b_test = peer(broker, "bob", shard=1)
    b_other = peer(broker, "bob", shard=0, **other)
    assert a_test.subscribe(ch)["joined"] == []
    assert a_other.subscribe(ch)["joined"] == [], "the other app's roster contains the test app's alice"
    a_test.no_message_within(0.2)
    b_test.subscribe(ch)
    p = a_test.expect_type("presence")
    assert [j["peerId"] for j in p["joined"]] == ["bob"] and p["left"] == []
    a_other.no_message_within(0.2)
    snap = b_other.subscribe(ch)
    assert [j["peerId"] for j in snap["joined"]] == ["alice"], snap
    p = a_other.expect_type("presence")
    assert [j["peerId"] for j in p["joined"]] == ["bob"]
    a_test.no_message_within(0.2)

    b_test.publish(ch, "test-app")
    assert a_test.expect_type("message")["data"] == "test-app"
    b_other.publish(ch, "other-app")
    assert a_other.expect_type("message")["data"] == "other-app"
    a_test.no_message_within(0.3)
    a_other.no_message_within(0.05)
    b_test.no_message_within(0.05)  # bob@other's publish is not for bob@test
