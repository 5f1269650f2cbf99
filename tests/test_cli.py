"""Verifies that the command line works as documented: without a config the broker runs a development
app and prints `ringcast: DEVELOPMENT ONLY` lines whose key and token really connect; `ringcast token`
prints an HS256 JWT (kid = key id) that the broker accepts with exactly the claimed peer, channels,
permissions and lifetime; and limits given as top-level TOML keys take effect (flags win)."""

from __future__ import annotations

import re
import subprocess
import time

import jwt
import pytest

from helpers import BIN, KEY_ID, SECRET, Broker, Client, make_config, mint

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
SK_RE = re.compile(r"(sk_id_[A-Za-z0-9_-]+):(sk_secret_[A-Za-z0-9_-]+)")


def run_cli(*args, timeout=10):
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"ringcast {' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def broker():
    b = Broker(name="cli-broker")
    yield b
    b.stop()


def test_dev_mode_prints_working_credentials():
    with Broker(config=None, name="dev-broker") as b:
        assert b.wait_for_output(r"^ringcast: DEVELOPMENT ONLY", timeout=3), b.output_tail()
        time.sleep(0.2)  # let the remaining dev lines arrive
        dev = [ln for ln in b.stdout_lines + list(b.stderr_lines) if ln.startswith("ringcast: DEVELOPMENT ONLY")]
        key_lines = [ln for ln in dev if SK_RE.search(ln)]
        token_lines = [ln for ln in dev if JWT_RE.search(ln)]
        assert key_lines, f"no DEVELOPMENT ONLY line with sk_id_...:sk_secret_...: {dev}"
        assert token_lines, f"no DEVELOPMENT ONLY line with a token: {dev}"
        key_id, secret = SK_RE.search(key_lines[0]).groups()
        token = JWT_RE.search(token_lines[0]).group(0)

        # The printed token connects as-is.
        c = b.connect(token)
        assert jwt.get_unverified_header(token)["kid"] == key_id
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert c.welcome["peerId"] == claims["sub"]
        assert c.welcome["expiresAt"] == claims["exp"]
        # The printed key signs tokens the broker accepts.
        d = b.connect(mint("dev-bob", key_id=key_id, secret=secret, channels=None))
        assert d.welcome["peerId"] == "dev-bob"
        # ...and not with a wrong secret.
        bad = Client.open(b.url(token=mint("dev-eve", key_id=key_id, secret=secret + "x", channels=None)))
        assert bad.expect_close()[0] == 4001
        assert not bad.drained


def test_token_command_with_config(broker):
    t0 = int(time.time())
    out = run_cli(
        "token", "--config", broker.config_path, "--key-id", KEY_ID, "--peer", "alice",
        "--channels", "room/*", "--permissions", "publish,subscribe", "--ttl", "600",
    )
    token = out.strip()
    assert JWT_RE.fullmatch(token), f"stdout is not just a JWT: {out!r}"
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"] == KEY_ID, header
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["channels"] == ["room/*"]
    assert sorted(claims["permissions"]) == ["publish", "subscribe"]
    assert t0 + 600 <= claims["exp"] <= int(time.time()) + 601

    c = broker.connect(token, shard=0)
    assert c.welcome["peerId"] == "alice" and c.welcome["expiresAt"] == claims["exp"]
    c.subscribe("room/a", presence=False)  # no presence permission: no snapshot
    m = c.request({"type": "subscribe", "channel": "lobby"})
    assert m["type"] == "error" and m["code"] == "channel_not_authorized", m
    m = c.request({"type": "send", "to": "alice", "data": 1})
    assert m["type"] == "error" and m["code"] == "action_not_permitted", m
    other = broker.connect(mint("listener"), shard=1)
    other.subscribe("room/b")
    c.publish("room/b", "via cli token")
    assert other.expect_type("message")["from"] == "alice"


def test_token_command_with_key_secret(broker):
    out = run_cli("token", "--key-id", KEY_ID, "--key-secret", SECRET, "--peer", "bob", "--channels", "room/*")
    token = out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bob" and claims["channels"] == ["room/*"]
    assert abs(claims["exp"] - (time.time() + 3600)) <= 5  # default ttl
    c = broker.connect(token)
    assert c.welcome["peerId"] == "bob"
    c.subscribe("room/x")


def test_limits_from_toml_top_level_keys_and_flags_win():
    cfg = make_config(top_level="max_message_size = 2048\nmax_channels_per_conn = 2\n")
    with Broker(cfg, name="toml-limits") as b:
        c = b.connect(mint("toml"))
        assert c.welcome["maxMessageSize"] == 2048
        c.subscribe("t/1")
        c.subscribe("t/2")
        m = c.request({"type": "subscribe", "channel": "t/3"})
        assert m["type"] == "error" and m["code"] == "channel_limit_exceeded", m
    with Broker(cfg, args=["--max-message-size", "4096"], name="toml-limits-flag") as b:
        assert b.connect(mint("flag")).welcome["maxMessageSize"] == 4096
