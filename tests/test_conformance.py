"""RFC 6455 conformance (issue 5 item 1): runs scripts/autobahn.sh, i.e. the Autobahn|Testsuite
0.8.2 ``fuzzingclient`` (cases 1-10) against the broker's conformance (echo) profile and diffs the
per-case results with autobahn/expected-results.json. Skipped, with one reason, when the suite's
Python 2.7 virtualenv (.autobahn-venv) is not installed; ``bash scripts/autobahn.sh --install``
(which .ci/run calls) creates it.

Also checks that the echo profile is opt-in: the production profile still speaks the protocol
(1003 for binary, 1009 over the size cap; see tests/test_websocket.py for the full checks)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from helpers import BIN, REPO, Broker, Client, mint

WSTEST = REPO / ".autobahn-venv" / "bin" / "wstest"


def test_autobahn_fuzzingclient_matches_expected_results():
    if not WSTEST.exists():
        pytest.skip("Autobahn testsuite not installed (.autobahn-venv); run: bash scripts/autobahn.sh --install")
    t0 = time.monotonic()
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "autobahn.sh")],
        env={**os.environ, "RINGCAST_BIN": BIN},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"scripts/autobahn.sh exited {p.returncode} after {time.monotonic() - t0:.0f}s:\n{out}"
    assert "results match" in out, out


def test_echo_profile_is_off_by_default_and_echoes_when_on():
    with Broker(args=["--max-message-size", "1024"], name="prod") as b:
        c = b.connect(mint("not-echo"))
        c.send_text('{"type":"ping","requestId":"p"}')
        assert c.recv_json()["type"] == "pong"  # the protocol, not an echo
        c.ws.send(b"\x00binary")
        assert c.expect_close()[0] == 1003
    with Broker(config=None, args=["--echo", "--max-message-size", "1024"], name="echo") as b:
        c = Client.open(b.url())  # no credentials in the conformance profile
        c.ws.send("plain text, not JSON")
        assert c.ws.recv(timeout=5) == "plain text, not JSON"
        c.ws.send(b"\x00\x01binary")
        assert c.ws.recv(timeout=5) == b"\x00\x01binary"
        c.ws.send("x" * 2000)  # the size cap still applies
        assert c.expect_close()[0] == 1009
        c.close()
