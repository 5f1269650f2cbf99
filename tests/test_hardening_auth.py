"""Hardening II (issue 9), items 6, 7 and 8a, through the real binary (docs/hardening.md,
"Hardening II"):

* 6: the key action `admin` gates `DELETE /v1/peers/{id}` and `GET /v1/usage` (403
  `action_not_permitted` without it); it is in a secret key's default actions; a minted token
  may not ask for it (400), a hand-made token that claims it gets nothing from it, and a
  publishable key configured with it is refused at start.
* 7: the echo profile only on loopback (and a loud warning), development mode only on loopback
  unless `--dev-public` (flag, env, TOML); secrets under 32 bytes and the documentation's example
  secrets refused at start naming the key id, never the secret; config parse errors never echo a
  secret; every secret the repository's tests and tools configure is at least 32 bytes.
* 8a: a token whose `exp` is huge (1e19, 2^64, a float, beyond the 10-year horizon) or negative is
  closed 4001 before `welcome`, the broker never panics and no app connection slot leaks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import pytest

from helpers import (
    BIN,
    KEY_ID,
    NOADMIN_KEY_ID,
    NOADMIN_SECRET,
    REPO,
    ROOM_KEY_ID,
    ROOM_SECRET,
    SECRET,
    Broker,
    expect_rejected,
    make_config,
    mint,
    rest_request,
    rest_metrics,
)

ADMIN_ONLY_KEY_ID = "sk_id_adminonly1"
ADMIN_ONLY_SECRET = "sk_secret_adminonly_0123456789abcdefghij"
CONFIG = make_config(
    extra_apps=f"""
[[apps]]
id = "ops"
[[apps.secret_keys]]
id = "{ADMIN_ONLY_KEY_ID}"
secret = "{ADMIN_ONLY_SECRET}"
actions = ["admin"]
"""
)

#: A secret that must never appear in any output of the broker.
MARKER = "sk_secret_NEVER-PRINT-THIS-0123456789abcdef"


@pytest.fixture(scope="module")
def broker():
    b = Broker(CONFIG, name="hardening-auth")
    yield b
    b.stop()


def assert_forbidden(r, action: str = "admin") -> None:
    assert r.status == 403, r
    assert r.json == {"error": "action_not_permitted", "message": f"this key does not have the {action} action"}, r.json


def run_broker(args, config: str | None = None, env: dict | None = None, timeout: float = 10.0):
    """Runs the binary expecting it to exit on its own; (exit code, stdout, stderr)."""
    with tempfile.TemporaryDirectory(prefix="ringcast-h2-") as d:
        cmd = [BIN]
        if config is not None:
            path = os.path.join(d, "ringcast.toml")
            Path(path).write_text(config)
            cmd += ["--config", path]
        full_env = dict(os.environ, RINGCAST_REST_LISTEN="127.0.0.1:0", **(env or {}))
        try:
            p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=d)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{cmd + list(args)} did not exit within {timeout}s: {e.stdout!r} {e.stderr!r}")
        return p.returncode, p.stdout, p.stderr


def start_and_stop(args, config: str | None = None, env: dict | None = None) -> str:
    """Starts the binary, waits for its listening line, stops it (SIGTERM); its stdout+stderr."""
    with tempfile.TemporaryDirectory(prefix="ringcast-h2-") as d:
        cmd = [BIN]
        if config is not None:
            path = os.path.join(d, "ringcast.toml")
            Path(path).write_text(config)
            cmd += ["--config", path]
        full_env = dict(os.environ, RINGCAST_REST_LISTEN="127.0.0.1:0", **(env or {}))
        p = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=d)
        out = []
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                out.append(line)
                if line.startswith("ringcast: listening on"):
                    break
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                rest_out, err = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                rest_out, err = p.communicate()
        text = "".join(out) + rest_out + err
        assert any(l.startswith("ringcast: listening on") for l in out), f"{cmd + list(args)} did not start:\n{text}"
        return text


# ---------------------------------------------------------------------------------------------
# 6. The admin action
# ---------------------------------------------------------------------------------------------


def test_a_key_without_admin_gets_403_on_kick_and_usage_and_kicks_nobody(broker):
    victim = broker.connect(mint("h2-victim"))
    noadmin = (NOADMIN_KEY_ID, NOADMIN_SECRET)
    assert_forbidden(rest_request(broker, "DELETE", "/v1/peers/h2-victim", auth=noadmin))
    assert_forbidden(rest_request(broker, "GET", "/v1/usage", auth=noadmin))
    victim.ping_pong()  # still connected: the refused kick closed nothing
    # The same key can do everything else it has.
    assert rest_request(broker, "POST", "/v1/channels/h2%2Fa/publish", {"data": 1}, auth=noadmin).status == 200
    assert rest_request(broker, "POST", "/v1/tokens", {"peerId": "x"}, auth=noadmin).status == 200
    # A key with admin (explicit: KEY_ID; by default: ROOM_KEY_ID; admin only: ops key).
    for auth in [(KEY_ID, SECRET), (ROOM_KEY_ID, ROOM_SECRET)]:
        r = rest_request(broker, "GET", "/v1/usage", auth=auth)
        assert r.status == 200 and r.json["appId"] == "test" and r.json["concurrentNow"] >= 1, r
    r = rest_request(broker, "DELETE", "/v1/peers/h2-victim", auth=(ROOM_KEY_ID, ROOM_SECRET))
    assert r.status == 200 and r.json == {"peerId": "h2-victim", "closed": 1}, r
    assert victim.expect_close()[0] == 4020
    ops = (ADMIN_ONLY_KEY_ID, ADMIN_ONLY_SECRET)
    r = rest_request(broker, "GET", "/v1/usage", auth=ops)
    assert r.status == 200 and r.json["appId"] == "ops", r
    assert rest_request(broker, "DELETE", "/v1/peers/nobody", auth=ops).json == {"peerId": "nobody", "closed": 0}
    assert_forbidden(rest_request(broker, "POST", "/v1/channels/h2%2Fa/publish", {"data": 1}, auth=ops), "publish")


def test_minted_tokens_may_not_ask_for_admin(broker):
    for perms in (["admin"], ["subscribe", "admin"]):
        r = rest_request(broker, "POST", "/v1/tokens", {"peerId": "h2-tok", "permissions": perms})
        assert r.status == 400 and r.json["error"] == "invalid_request" and "admin" in r.json["message"], r
    # Default permissions (the key has admin): the token carries no admin and works.
    r = rest_request(broker, "POST", "/v1/tokens", {"peerId": "h2-tok"})
    assert r.status == 200, r
    assert "permissions" not in jwt.decode(r.json["token"], options={"verify_signature": False})
    assert broker.connect(r.json["token"]).welcome["peerId"] == "h2-tok"
    # The CLI refuses it too.
    p = subprocess.run(
        [BIN, "token", "--key-id", KEY_ID, "--key-secret", SECRET, "--peer", "p", "--permissions", "publish,admin"],
        capture_output=True, text=True, timeout=10,
    )
    assert p.returncode != 0 and "admin" in p.stderr and not p.stdout.strip(), (p.returncode, p.stdout, p.stderr)


def test_a_hand_made_token_claiming_admin_gets_only_its_connection_actions(broker):
    c = broker.connect(mint("h2-hand", permissions=["admin", "subscribe"]))
    c.subscribe("h2/hand", presence=False)
    m = c.request({"type": "publish", "channel": "h2/hand", "data": 1})
    assert m["type"] == "error" and m["code"] == "action_not_permitted", m


def test_a_publishable_key_with_admin_is_refused_at_start():
    cfg = make_config(extra_apps="""
[[apps]]
id = "pk-admin"
[[apps.publishable_keys]]
key = "pk_live_h2admin"
channel_patterns = ["**"]
actions = ["subscribe", "admin"]
""")
    rc, out, err = run_broker(["--listen", "127.0.0.1:0"], config=cfg)
    assert rc != 0 and "admin action is for secret keys only" in err, (rc, out, err)


# ---------------------------------------------------------------------------------------------
# 7. Safe defaults
# ---------------------------------------------------------------------------------------------


def test_echo_profile_refuses_a_non_loopback_address_and_warns_on_loopback():
    for listen in ("0.0.0.0:0", "[::]:0"):
        rc, out, err = run_broker(["--echo", "--listen", listen, "--dev-public"])
        assert rc != 0, (rc, out, err)
        assert "echo" in err and listen in err and "loopback" in err, err
        assert "listening on" not in out
    with Broker(config=None, args=["--echo"], name="echo-loopback") as b:
        assert b.wait_for_output(r"WARN.*CONFORMANCE ECHO PROFILE.*NO AUTHENTICATION", streams="err"), b.output_tail()


def test_development_mode_stays_on_loopback_unless_dev_public():
    for args in (["--listen", "0.0.0.0:0"], ["--listen", "127.0.0.1:0", "--rest-listen", "0.0.0.0:0"]):
        rc, out, err = run_broker(args)
        assert rc != 0, (rc, out, err)
        assert "development mode" in err and "--dev-public" in err, err
        assert "sk_secret_" not in out + err, "the development key was printed although the start was refused"
    # The same through the environment: RINGCAST_LISTEN.
    rc, out, err = run_broker([], env={"RINGCAST_LISTEN": "0.0.0.0:0"})
    assert rc != 0 and "development mode" in err, (rc, out, err)
    # --dev-public (flag, env, TOML) lets it start; a loud warning says so.
    for args, env, cfg in (
        (["--listen", "0.0.0.0:0", "--dev-public"], None, None),
        (["--listen", "0.0.0.0:0"], {"RINGCAST_DEV_PUBLIC": "true"}, None),
        (["--listen", "0.0.0.0:0"], None, "dev_public = true\n"),
    ):
        text = start_and_stop(args, config=cfg, env=env)
        assert "--dev-public" in text and "WARN" in text, text
    # Configured apps are not development mode: any address is allowed.
    start_and_stop(["--listen", "0.0.0.0:0"], config=CONFIG)


def secret_config(secret: str, key_id: str = "sk_id_h2weak") -> str:
    return f"""
[[apps]]
id = "weak"
[[apps.secret_keys]]
id = "{key_id}"
secret = "{secret}"
"""


def test_secrets_under_32_bytes_are_refused_naming_the_key_not_the_secret():
    short = "sk_secret_" + "SHORT-0123456789abcde"  # 31 bytes (split: see the repository scan below)
    assert len(short) == 31
    rc, out, err = run_broker(["--listen", "127.0.0.1:0"], config=secret_config(short))
    assert rc != 0, (rc, out, err)
    assert "sk_id_h2weak" in err and "31 bytes" in err and "at least 32" in err, err
    assert "SHORT-0123" not in out + err
    # 32 bytes are enough; so is every secret the test suite uses.
    start_and_stop(["--listen", "127.0.0.1:0"], config=secret_config(short + "x"))
    # `ringcast token --key-secret` applies the same rule.
    p = subprocess.run([BIN, "token", "--key-id", "sk_id_h2weak", "--key-secret", short, "--peer", "p"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "sk_id_h2weak" in p.stderr and "SHORT-0123" not in p.stdout + p.stderr, p


def doc_example_secrets() -> set[str]:
    found = set()
    for f in [REPO / "README.md", *sorted((REPO / "docs").iterdir())]:
        if f.is_file():
            found |= {s for s in re.findall(r"sk_secret_[A-Za-z0-9_.~+/=-]+", f.read_text()) if len(s) >= 32}
    return found


def test_the_documentations_example_secrets_are_refused_at_start():
    examples = doc_example_secrets()
    assert examples, "the docs show no example secret any more: update this test"
    for secret in sorted(examples):
        rc, out, err = run_broker(["--listen", "127.0.0.1:0"], config=secret_config(secret, "sk_id_h2doc"))
        assert rc != 0, (secret, rc, out, err)
        assert "sk_id_h2doc" in err and "documentation's example secret" in err, err
        assert secret not in out + err


@pytest.mark.parametrize(
    "name,text",
    [
        ("unterminated string on the secret's line", f'[[apps]]\nid = "a"\n[[apps.secret_keys]]\nid = "sk_id_1"\nsecret = "{MARKER}\n'),
        ("garbage after the secret", f'[[apps]]\nid = "a"\n[[apps.secret_keys]]\nid = "sk_id_1"\nsecret = "{MARKER}" oops\n'),
        ("unquoted secret", f'[[apps]]\nid = "a"\n[[apps.secret_keys]]\nid = "sk_id_1"\nsecret = {MARKER}\n'),
        ("bad escape in the secret", f'[[apps]]\nid = "a"\n[[apps.secret_keys]]\nid = "sk_id_1"\nsecret = "{MARKER}\\x"\n'),
        ("secret as a number", f'max_message_size = "{MARKER}"\n'),
        ("secret as an enum", f'rate_limit_action = "{MARKER}"\n'),
        ("secret as a list", f'[[apps]]\nid = "a"\n[[apps.secret_keys]]\nid = "sk_id_1"\nsecret = ["{MARKER}"]\n'),
        ("secret as a key", f'{MARKER} = 1\n'),
    ],
)
def test_config_parse_errors_never_echo_a_secret(name, text):
    rc, out, err = run_broker(["--listen", "127.0.0.1:0"], config=text)
    assert rc != 0, (name, rc, out, err)
    assert "invalid config" in err and "line " in err, err
    assert "NEVER-PRINT" not in out + err, f"{name}: the secret was printed:\n{err}"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bad.toml")
        Path(path).write_text(text)
        p = subprocess.run([BIN, "token", "--config", path, "--peer", "p"], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and "NEVER-PRINT" not in p.stdout + p.stderr, p


def test_every_secret_the_repository_configures_is_at_least_32_bytes():
    """Tests, scripts, tools and examples: each `sk_secret_…` literal is long enough to start a
    broker (a bare `sk_secret_` prefix, e.g. in a regex or a placeholder, is not a secret)."""
    dirs = ["tests", "scripts", "loadgen", "tuning", "examples", "fuzz/src", "fuzz/tests", "benches", "autobahn"]
    short = []
    for d in dirs:
        for f in (REPO / d).rglob("*"):
            if not f.is_file() or "node_modules" in f.parts or f.suffix not in {".py", ".rs", ".sh", ".toml", ".js", ".mjs", ".json", ".md", ""}:
                continue
            try:
                text = f.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for s in re.findall(r"sk_secret_[A-Za-z0-9_-]+", text):
                if len(s) < 32:
                    short.append(f"{f.relative_to(REPO)}: {s}")
    assert not short, "secrets under 32 bytes:\n" + "\n".join(short)


# ---------------------------------------------------------------------------------------------
# 8a. Huge exp
# ---------------------------------------------------------------------------------------------


def raw_exp_token(exp_json: str, peer: str) -> str:
    """A correctly signed token whose `exp` is the literal JSON text `exp_json`."""
    import base64
    import hashlib
    import hmac

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","kid":"' + KEY_ID.encode() + b'","typ":"JWT"}')
    payload = b64(('{"sub":"%s","exp":%s}' % (peer, exp_json)).encode())
    sig = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def test_huge_exp_is_refused_4001_without_a_panic_or_a_leaked_slot():
    with Broker(CONFIG, name="huge-exp") as b:
        now = int(time.time())
        ten_years = 3650 * 86400
        exps = [
            "1e19", "1E19", "18446744073709551616", "18446744073709551615", "1.8446744073709552e19",
            "1e308", "-1", "-1e19", str(now + ten_years + 60), f"{now + ten_years + 60}.5",
        ]
        assert len(exps) == 10
        for i, e in enumerate(exps):
            code, reason, before = expect_rejected(b, b.url(token=raw_exp_token(e, f"huge{i}")))
            assert code == 4001, (e, code, reason)
            assert not any(isinstance(m, dict) and m.get("type") == "welcome" for m in before), (e, before)
        assert b.alive(), b.output_tail()
        assert not b.wait_for_output(r"panicked", timeout=0.2), b.output_tail()
        usage = rest_request(b, "GET", "/v1/usage").json
        assert usage["concurrentNow"] == 0 and usage["peakConcurrent"] == 0, usage
        assert rest_metrics(b)['ringcast_auth_failures_total{reason="invalid_credentials"}'] == 10
        # A normal connection, and a long but sane exp (9 years), still work.
        c = b.connect(mint("normal"))
        d = b.connect(raw_exp_token(str(now + 9 * 365 * 86400), "nine-years"))
        assert d.welcome["expiresAt"] == now + 9 * 365 * 86400
        assert rest_request(b, "GET", "/v1/usage").json["concurrentNow"] == 2
        c.ping_pong()
        d.ping_pong()
