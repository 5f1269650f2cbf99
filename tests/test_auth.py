"""Verifies that connection authentication follows protocol.md sections 1-2: bad credentials close
with 4001, expired tokens with 4002, tokens whose channels exceed the key's patterns with 4003 and
an app at its connection cap with 4010, always after the upgrade and before any `welcome`;
publishable keys get a UUID peerId, a null expiresAt, origin checks and their fixed scope; and a
token that expires while connected is closed with 4002 about 250 ms before `exp`."""

from __future__ import annotations

import time

import jwt
import pytest

from helpers import (
    GOOD_ORIGIN,
    KEY_ID,
    OTHER_KEY_ID,
    PK,
    PK_ANY,
    ROOM_KEY_ID,
    ROOM_SECRET,
    SECRET,
    Broker,
    align_to_second,
    expect_rejected,
    is_uuid,
    make_config,
    mint,
    unsigned_token,
    wait_until,
    Client,
    ConnectionClosed,
)

CAP_KEY_ID = "sk_id_capped1"
CAP_SECRET = "sk_secret_capped_0123456789abcdefghijklmn"
CONFIG = make_config(
    extra_apps=f"""
[[apps]]
id = "capped"
max_connections = 2
[[apps.secret_keys]]
id = "{CAP_KEY_ID}"
secret = "{CAP_SECRET}"
"""
)


@pytest.fixture(scope="module")
def broker():
    b = Broker(CONFIG, name="auth-broker")
    yield b
    b.stop()


def rejected(broker, code, token=None, key=None, origin=None):
    url = broker.url(token=token, key=key)
    got, reason, before = expect_rejected(broker, url, origin=origin)
    assert not any(isinstance(m, dict) and m.get("type") == "welcome" for m in before), (
        f"a welcome preceded the auth close: {before}"
    )
    assert before == [], f"frames before the auth close: {before}"
    assert got == code, f"expected close {code}, got {got} {reason!r}"
    return reason


def now():
    return int(time.time())


def no_kid_token():
    return jwt.encode({"sub": "nokid", "exp": now() + 3600, "channels": ["**"]}, SECRET, algorithm="HS256")


BAD_TOKENS = {
    "garbage": lambda: "garbage",
    "three-dots": lambda: "a.b.c",
    "truncated-signature": lambda: mint("alice")[:-5],
    "tampered-payload": lambda: (lambda t: t.split(".")[0] + "." + mint("mallory").split(".")[1] + "." + t.split(".")[2])(mint("alice")),
    "unknown-kid": lambda: mint("alice", key_id="sk_id_unknown"),
    "other-apps-kid-wrong-secret": lambda: mint("alice", key_id=OTHER_KEY_ID, secret=SECRET),
    "no-kid": no_kid_token,
    "wrong-secret": lambda: mint("alice", secret="sk_secret_wrong_wrong_wrong_wrong_wrong_12"),
    "secret-id-as-hmac-key": lambda: mint("alice", secret=KEY_ID),
    "alg-none": lambda: unsigned_token({"sub": "alice", "exp": now() + 3600, "channels": ["**"]},
                                       {"alg": "none", "typ": "JWT", "kid": KEY_ID}),
    "alg-none-with-signature": lambda: unsigned_token({"sub": "alice", "exp": now() + 3600, "channels": ["**"]},
                                                      {"alg": "none", "typ": "JWT", "kid": KEY_ID})
    + mint("alice").split(".")[2],
    "HS384": lambda: mint("alice", algorithm="HS384"),
    "HS512": lambda: mint("alice", algorithm="HS512"),
    "missing-exp": lambda: mint("alice", exp_in=None),
    "string-exp": lambda: mint("alice", exp_in=None, exp="tomorrow"),
    "missing-sub": lambda: mint(),
    "empty-sub": lambda: mint(""),
    "sub-with-space": lambda: mint("alice smith"),
    "sub-with-newline": lambda: mint("alice\n"),
    "sub-non-ascii": lambda: mint("ålice"),
    "sub-129-bytes": lambda: mint("a" * 129),
    "sub-number": lambda: mint(42),
    "nbf-in-future": lambda: mint("alice", nbf=now() + 600),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_bad_token_closes_4001(broker, name):
    rejected(broker, 4001, token=BAD_TOKENS[name]())


def test_empty_token_param_closes_4001(broker):
    rejected(broker, 4001, token="")


def test_no_credentials_closes_4001(broker):
    rejected(broker, 4001)


def test_token_and_key_together_close_4001(broker):
    rejected(broker, 4001, token=mint("alice"), key=PK_ANY)


@pytest.mark.parametrize("key", ["pk_live_unknown", KEY_ID, "", "sk_live_whatever"])
def test_bad_publishable_key_closes_4001(broker, key):
    rejected(broker, 4001, key=key)


def test_good_token_still_works_after_rejections(broker):
    c = broker.connect(mint("after-rejections"))
    assert c.welcome["peerId"] == "after-rejections"


def test_past_nbf_is_accepted(broker):
    c = broker.connect(mint("nbf-past", nbf=now() - 60))
    assert c.welcome["peerId"] == "nbf-past"


def test_expired_token_closes_4002_before_welcome(broker):
    rejected(broker, 4002, token=mint("late", exp_in=None, exp=now() - 5))
    rejected(broker, 4002, token=mint("late", exp_in=None, exp=now() - 86400))


def test_token_channels_outside_key_patterns_close_4003(broker):
    rejected(broker, 4003, token=mint("roomy", key_id=ROOM_KEY_ID, secret=ROOM_SECRET, channels=["other/*"]))
    rejected(broker, 4003, token=mint("roomy", key_id=ROOM_KEY_ID, secret=ROOM_SECRET, channels=["lobby"]))


def test_token_channels_inside_key_patterns_are_accepted(broker):
    c = broker.connect(mint("roomy", key_id=ROOM_KEY_ID, secret=ROOM_SECRET, channels=["room/*"]))
    c.subscribe("room/a")
    m = c.request({"type": "subscribe", "channel": "room/a/b"})
    assert m["type"] == "error" and m["code"] == "channel_not_authorized", m
    d = broker.connect(mint("roomy2", key_id=ROOM_KEY_ID, secret=ROOM_SECRET, channels=["room/lobby"]))
    d.subscribe("room/lobby")
    m = d.request({"type": "subscribe", "channel": "room/other"})
    assert m["type"] == "error" and m["code"] == "channel_not_authorized", m


def test_app_connection_cap_closes_4010(broker):
    tok = lambda p: mint(p, key_id=CAP_KEY_ID, secret=CAP_SECRET)  # noqa: E731
    a = broker.connect(tok("cap-a"))
    b = broker.connect(tok("cap-b"))
    rejected(broker, 4010, token=tok("cap-c"))
    # The cap is per app: the test app is unaffected.
    broker.connect(mint("uncapped"))
    # A freed slot can be reused (allow the broker a moment to account the close).
    a.close()

    def try_admit():
        c = Client.open(broker.url(token=tok("cap-d")))
        broker.open_clients.append(c)
        try:
            m = c.recv_json(timeout=5)
        except ConnectionClosed:
            code, _ = c.expect_close(1)
            assert code == 4010, code
            return False
        assert m["type"] == "welcome", m
        return True

    wait_until(try_admit, timeout=5, interval=0.2, what="a slot freed by a closed connection to be reusable")
    # b and cap-d now hold both slots.
    assert b.welcome["peerId"] == "cap-b"
    rejected(broker, 4010, token=tok("cap-e"))


# ---------------------------------------------------------------------------------------------
# publishable keys
# ---------------------------------------------------------------------------------------------


def test_publishable_key_welcome(broker):
    c = broker.connect(key=PK, origin=GOOD_ORIGIN)
    w = c.welcome
    assert w["expiresAt"] is None, w
    assert "expiresAt" in w
    assert is_uuid(w["peerId"]), w
    assert "metadata" not in w
    d = broker.connect(key=PK, origin=GOOD_ORIGIN)
    assert is_uuid(d.welcome["peerId"]) and d.welcome["peerId"] != w["peerId"]


def test_publishable_key_other_origin_closes_4001(broker):
    rejected(broker, 4001, key=PK, origin="https://evil.example")
    rejected(broker, 4001, key=PK, origin="https://good.example.evil.example")


def test_publishable_key_any_origin_when_unrestricted(broker):
    c = broker.connect(key=PK_ANY, origin="https://anything.example")
    assert is_uuid(c.welcome["peerId"])
    d = broker.connect(key=PK_ANY)
    assert is_uuid(d.welcome["peerId"])


def test_publishable_key_scope(broker):
    c = broker.connect(key=PK, origin=GOOD_ORIGIN, shard=0)
    other = broker.connect(mint("pk-watcher"), shard=1)
    other.subscribe("public/lobby")
    c.subscribe("public/lobby")
    j = other.expect_type("presence")
    assert j["joined"] == [{"peerId": c.welcome["peerId"]}], j  # no peerMetadata for key peers
    c.subscribe("public/a/b")
    for ch in ("private/x", "publicx", "other"):
        m = c.request({"type": "subscribe", "channel": ch})
        assert m["type"] == "error" and m["code"] == "channel_not_authorized", (ch, m)
    m = c.request({"type": "send", "to": "pk-watcher", "data": 1})
    assert m["type"] == "error" and m["code"] == "action_not_permitted", m
    c.publish("public/lobby", "from-browser")
    m = other.expect_type("message")
    assert m["from"] == c.welcome["peerId"] and m["data"] == "from-browser", m
    other.no_message_within(0.2)


# ---------------------------------------------------------------------------------------------
# expiry while connected
# ---------------------------------------------------------------------------------------------


def test_token_expiry_closes_4002_before_exp(broker):
    align_to_second(0.02)
    exp = now() + 2
    tok = mint("short-lived", exp_in=None, exp=exp)
    t0 = time.monotonic()
    c = broker.connect(tok)
    assert c.welcome["expiresAt"] == exp
    c.ping_pong()
    code, reason = c.expect_close(timeout=4)
    elapsed = time.monotonic() - t0
    wall = time.time()
    assert code == 4002, (code, reason)
    assert 1.5 <= elapsed <= 2.0, f"close arrived {elapsed:.3f}s after connect (exp was ~{exp - wall + elapsed:.2f}s away)"
    assert wall <= exp + 0.05, f"closed after exp ({wall - exp:+.3f}s)"
    assert [m for m in c.drained if isinstance(m, dict) and m.get("type") != "pong"] == [], c.drained
