"""Verifies graceful shutdown with real signals (protocol.md section 2.7 and issue 3 item 6): on
SIGTERM or SIGINT every connection on every shard gets `going_away` with the configured
`retryAfterMs` and then close 1001; while connections drain the REST API answers 503 (and
/healthz 503 `draining`, /metrics still 200 with `ringcast_draining 1`); new upgrades are not
served; the process exits 0 once connections are gone, or 1 when the drain time runs out first; and a
second signal ends it at once."""

from __future__ import annotations

import json
import signal
import time

import pytest

from helpers import DEFAULT_CONFIG, Broker, RawWS, WSClosed, chan, mint, rest_request, wait_until


def expect_going_away_then_close(raw: RawWS, retry_ms: int, timeout: float = 5.0) -> int:
    """Reads a raw connection (never answering the close): going_away first, then a close frame."""
    deadline = time.monotonic() + timeout
    seen_going_away = False
    while True:
        m = raw.recv_message(max(0.01, deadline - time.monotonic()), auto_pong=True)
        if m[0] == "close":
            assert seen_going_away, "close arrived before going_away"
            return m[1]
        obj = json.loads(m[1])
        if obj.get("type") == "going_away":
            assert obj == {"type": "going_away", "retryAfterMs": retry_ms}, obj
            seen_going_away = True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_every_shard_and_rest_answers_503_meanwhile(sig):
    # The raw client never answers the close frame, which keeps the drain going for the close
    # timeout (2 s): long enough to watch the REST API refuse work meanwhile.
    args = ["--going-away-retry-ms", "2500", "--close-timeout-ms", "2000"]
    b = Broker(DEFAULT_CONFIG, args=args, name=f"drain-{sig.name}")
    try:
        a = b.connect(mint("d-a"), shard=0)
        c = b.connect(mint("d-c"), shard=1)
        a.subscribe(chan("d"))
        raw0 = b.raw(mint("d-raw0"), shard=0)
        raw1 = b.raw(mint("d-raw1"), shard=1)
        for r in (raw0, raw1):
            assert r.recv_json()["type"] == "welcome"
        assert rest_request(b, "GET", "/healthz", auth=None).status == 200
        t0 = time.monotonic()
        b.proc.send_signal(sig)
        for x in (a, c):
            m = x.expect_type("going_away", timeout=5, skip=True)
            assert m == {"type": "going_away", "retryAfterMs": 2500}, m
            code, _ = x.expect_close(timeout=5)
            assert code == 1001, code
        for r in (raw0, raw1):
            assert expect_going_away_then_close(r, 2500) == 1001
        # Draining: REST refuses work, health says draining, metrics still answer.
        r = rest_request(b, "GET", "/v1/usage")
        assert r.status == 503 and r.json["error"] == "internal_error", r
        assert r.headers.get("retry-after") == "1"
        r = rest_request(b, "POST", "/v1/channels/x/publish", {"data": 1})
        assert r.status == 503 and r.json["error"] == "internal_error", r
        assert rest_request(b, "POST", "/v1/tokens", {"peerId": "x"}).status == 503
        r = rest_request(b, "GET", "/healthz", auth=None)
        assert r.status == 503 and r.json == {"status": "draining"}, r
        r = rest_request(b, "GET", "/metrics", auth=None)
        assert r.status == 200 and "\nringcast_draining 1\n" in r.body.decode(), r
        # No new WebSocket connection is served.
        with pytest.raises((WSClosed, ConnectionError, OSError, AssertionError, TimeoutError)):
            late = RawWS(b.port, b.path(token=mint("late")), timeout=1.0)
            late.recv_json(timeout=1.0)
        assert b.proc.wait(timeout=10) == 0
        took = time.monotonic() - t0
        assert took < 8, f"exit took {took:.1f}s"
        assert b.wait_for_output(r"all connections closed|drain timeout", timeout=1), b.output_tail()
    finally:
        b.stop()


def test_drain_time_bounds_the_exit_and_a_timed_out_drain_exits_1():
    # Close timeout far beyond the drain time: a client that never answers the close frame
    # keeps its connection, so only the drain deadline (1.5 s) ends the process.
    args = ["--drain-timeout-ms", "1500", "--close-timeout-ms", "60000"]
    b = Broker(DEFAULT_CONFIG, args=args, name="drain-deadline")
    try:
        raw = b.raw(mint("stubborn"))
        assert raw.recv_json()["type"] == "welcome"
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        assert expect_going_away_then_close(raw, 1000) == 1001
        assert rest_request(b, "GET", "/healthz", auth=None).status == 503
        # The drain timed out (the client never answered the close): exit 1, and the log says
        # what was not delivered (nothing here: the close frame was written).
        assert b.proc.wait(timeout=10) == 1
        took = time.monotonic() - t0
        assert 1.3 <= took <= 5, f"exited after {took:.2f}s with a 1.5 s drain time"
        assert b.wait_for_output(r"drain timeout reached: 0 frames", timeout=1), b.output_tail()
    finally:
        b.stop()


def test_second_signal_exits_at_once():
    args = ["--drain-timeout-ms", "30000", "--close-timeout-ms", "60000"]
    b = Broker(DEFAULT_CONFIG, args=args, name="second-signal")
    try:
        raw = b.raw(mint("stubborn2"))
        assert raw.recv_json()["type"] == "welcome"
        b.proc.send_signal(signal.SIGTERM)
        assert expect_going_away_then_close(raw, 1000) == 1001
        wait_until(lambda: rest_request(b, "GET", "/healthz", auth=None).status == 503, what="draining")
        time.sleep(0.2)
        assert b.alive(), "the broker exited before the drain time although a connection was open"
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGINT)
        rc = b.proc.wait(timeout=5)
        assert time.monotonic() - t0 < 2
        assert rc != 0, "a second signal is an abort, not a clean drain"
        assert b.wait_for_output(r"second signal", timeout=1), b.output_tail()
    finally:
        b.stop()


def test_shutdown_with_no_connections_exits_0_quickly():
    b = Broker(DEFAULT_CONFIG, name="drain-empty")
    try:
        assert rest_request(b, "GET", "/v1/usage").status == 200
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 2
    finally:
        b.stop()
