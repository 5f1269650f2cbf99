"""Compatibility: Metered's published JS SDK (npm @metered-ca/realtime, unmodified) against ringcast.

The checks themselves live in tests/compat/sdk_check.mjs (run with Node); this test starts
the broker, mints the tokens, runs the script and fails with its full output if any check
failed. The SDK is pointed at ringcast with its documented `url` option (origin only; the
SDK appends `/v1` and `?token=`), and, since Node 20 has no global WebSocket, with its
documented `webSocketFactory` option wrapping the `ws` package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import PK_ANY, Broker, decode_unverified, mint
from test_history import CONFIG as HISTORY_CONFIG  # the standard apps plus an app with history
from test_history import HKEY, HSECRET

COMPAT_DIR = Path(__file__).resolve().parent / "compat"
SCRIPT = COMPAT_DIR / "sdk_check.mjs"

NODE = shutil.which("node")

# Checks sdk_check.mjs must report as "ok - <name>" (the brief's required behaviours);
# the script runs more than these, and any "not ok" line fails the test.
REQUIRED_CHECKS = [
    "alice connects with ?token=",
    "welcome.peerId is the token sub",
    "alice subscribe acked",
    "alice snapshot is empty (only subscriber, self excluded)",
    "bob snapshot lists alice with her peerMetadata",
    "presence joined carries bob's peerMetadata",
    "bob publish acked",
    "message channel and data intact",
    "bob receives alice's message",
    "alice send acked",
    "direct data intact",
    "alice sees bob leave",
    "publishable key connects with ?key=",
    "publishable key: welcome.expiresAt is null",
    # protocol.md 8.1 (history): the SDK on a history channel, a raw client on the wire
    "history: SDK subscribe to a history channel acked",
    "history: raw subscribe ack carries epoch and offset",
    "history: raw publish ack carries offset",
    "history: SDK message callback sees channel/from/data unchanged",
    "history: SDK publish on a history channel acked",
    "history: message carries offset on the wire",
    "plain channel: subscribe ack is exactly the Metered ack",
    "plain channel frames carry no extension field",
    "plain channel: publish ack is exactly the Metered ack",
    "plain channel: SDK message intact",
]


def _node_major() -> int:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(out.strip().lstrip("v").split(".")[0])


pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the JS SDK check needs Node >= 18 (20 in CI)"
)


@pytest.fixture(scope="module")
def sdk_installed() -> None:
    """The SDK must be installed from the lockfile (scripts/test.sh runs `npm ci`).

    Missing node_modules with node present is a setup failure, not a skip: CI has node, so
    a silently skipped check would hide a broken install step.
    """
    # The SDK declares engines.node >= 18; CI machines have Node 20 (Debian's fallback is 18).
    assert _node_major() >= 18, "the JS SDK check needs Node >= 18"
    pkg = COMPAT_DIR / "node_modules" / "@metered-ca" / "realtime" / "package.json"
    ws = COMPAT_DIR / "node_modules" / "ws" / "package.json"
    assert pkg.is_file() and ws.is_file(), (
        "tests/compat/node_modules is missing: run `npm ci` in tests/compat "
        "(scripts/test.sh does this)"
    )
    assert json.loads(pkg.read_text())["version"] == "1.2.0"


@pytest.mark.timeout(90)
def test_js_sdk_pubsub_presence_direct(sdk_installed: None) -> None:
    alice_meta = {"name": "Alice", "role": "host"}
    bob_meta = {"name": "Bob"}
    ice = [{"urls": "stun:127.0.0.1:3478"}]
    channel = f"room-{uuid.uuid4().hex[:8]}"
    exp_in = 3600
    broker = Broker(HISTORY_CONFIG)
    try:
        alice = mint("alice", exp_in=exp_in, peerMetadata=alice_meta, metadata={"iceServers": ice})
        # The token's exp, read back so the check can compare welcome.expiresAt exactly.
        alice_exp = decode_unverified(alice)[1]["exp"]
        cfg = {
            "origin": f"ws://127.0.0.1:{broker.port}",
            "channel": channel,
            "tokens": {"alice": alice, "bob": mint("bob", peerMetadata=bob_meta)},
            "expect": {
                "aliceExp": alice_exp,
                "alicePeerMetadata": alice_meta,
                "bobPeerMetadata": bob_meta,
                "aliceIceServers": ice,
            },
            "badToken": mint("mallory", secret="sk_secret_not_the_right_one_0123456789abcd"),
            "expiredToken": mint("late", exp_in=-60),
            # Publishable key of the harness config (public/**, any origin; the SDK on
            # Node sends no Origin header).
            "apiKey": PK_ANY,
            "publicChannel": f"public/{uuid.uuid4().hex[:8]}",
            "history": {
                "channel": f"h/js-{uuid.uuid4().hex[:8]}",
                "plainChannel": f"p/js-{uuid.uuid4().hex[:8]}",
                "tokens": {
                    "carol": mint("carol", key_id=HKEY, secret=HSECRET),
                    "raw": mint("raw-js", key_id=HKEY, secret=HSECRET),
                },
            },
        }
        env = dict(os.environ, RINGCAST_COMPAT=json.dumps(cfg), SDK_CHECK_HARD_LIMIT_MS="60000")
        started = time.monotonic()
        proc = subprocess.run(
            [NODE, str(SCRIPT)],
            cwd=COMPAT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=80,
        )
        elapsed = time.monotonic() - started
    finally:
        broker.stop()
    report = (
        f"node sdk_check.mjs exited {proc.returncode} after {elapsed:.1f}s\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, report
    assert not any(line.startswith("not ok") for line in lines), report
    # Guard against a script that exits 0 without running its checks.
    missing = [name for name in REQUIRED_CHECKS if f"ok - {name}" not in lines]
    assert not missing, f"checks not reported ok: {missing}\n{report}"
    assert lines and lines[-1].endswith(", 0 failed"), report
