"""Verifies that the WebSocket/HTTP layer behaves as protocol.md sections 2 and 6 and the binary
contract require: upgrades only on /v1 (404 elsewhere), 431 for oversized or too many headers, 400
for malformed HTTP, a handshake deadline, close 1003 for binary frames and 1009 for oversized
messages, pings answered, the close handshake echoed, server pings at the configured interval,
silent peers dropped after the idle timeout, per-IP upgrade throttling (429), going_away + 1001 on
graceful shutdown - and that after every one of these abuses the broker still serves healthy
connections."""

from __future__ import annotations

import http.client
import signal
import json
import time

import pytest

from helpers import (
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Broker,
    WSClosed,
    chan,
    healthy_roundtrip,
    http_exchange,
    mint,
    next_source_ip,
    raw_socket,
    upgrade_request,
    wait_socket_closed,
)

ARGS = [
    "--handshake-timeout-ms", "500",
    "--max-message-size", "1024",
    "--ping-interval-ms", "300",
    "--idle-timeout-ms", "1000",
]


@pytest.fixture(scope="module")
def broker():
    b = Broker(args=ARGS, name="ws-broker")
    yield b
    b.stop()


@pytest.fixture
def bystander(broker):
    """A healthy connection opened before the abuse; after it, it must still work, and so must a
    fresh pair of connections on both shards."""
    c = broker.connect(mint("bystander"), name="bystander")
    yield c
    c.ping_pong()
    assert c.ws.close_code is None, "the bystander was disconnected"
    healthy_roundtrip(broker)


def upgrade_status(broker, target, extra_headers=()):
    req, _ = upgrade_request(broker.port, target, extra_headers)
    return http_exchange(broker.port, req)[0]


# ---------------------------------------------------------------------------------------------
# HTTP upgrade
# ---------------------------------------------------------------------------------------------


def test_upgrade_on_v1_reports_shard(broker):
    shards = set()
    for _ in range(40):
        r = broker.raw(mint("shardy"))
        assert "x-ringcast-shard" in r.headers, r.headers
        shards.add(int(r.headers["x-ringcast-shard"]))
        assert r.expect_type("welcome")["peerId"] == "shardy"
        r.close()
        if shards == {0, 1}:
            break
    assert shards == {0, 1}, f"40 connections all landed on shards {shards}"


@pytest.mark.parametrize("path", ["/", "/v2", "/v1x", "/ws", "/v10", "/socket.io/", "/x/v1"])
def test_unknown_path_is_404_without_upgrade(broker, bystander, path):
    tok = mint("lost")
    assert upgrade_status(broker, f"{path}?token={tok}") == 404


def test_unknown_path_404_plain_http(broker):
    conn = http.client.HTTPConnection("127.0.0.1", broker.port, timeout=5, source_address=(next_source_ip(), 0))
    try:
        conn.request("GET", "/definitely-not-here")
        assert conn.getresponse().status == 404
    finally:
        conn.close()


def test_header_block_over_limit_is_431(broker, bystander):
    tok = mint("big-head")
    assert upgrade_status(broker, f"/v1?token={tok}", [("X-Pad", "a" * 9000)]) == 431
    # Comfortably below the 8192-byte cap is fine.
    assert upgrade_status(broker, f"/v1?token={tok}", [("X-Pad", "a" * 5000)]) == 101


def test_too_many_headers_is_431(broker, bystander):
    tok = mint("many-heads")
    assert upgrade_status(broker, f"/v1?token={tok}", [(f"X-H{i}", "v") for i in range(70)]) == 431
    assert upgrade_status(broker, f"/v1?token={tok}", [(f"X-H{i}", "v") for i in range(40)]) == 101


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"this is not http at all\r\n\r\n", id="words"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-ish"),
        pytest.param(b"GET /v1 HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET /v1 HTTP/9.9\r\nHost: x\r\n\r\n", id="bad-version"),
    ],
)
def test_malformed_http_is_400(broker, bystander, garbage):
    assert http_exchange(broker.port, garbage)[0] == 400


@pytest.mark.parametrize("partial", [b"GET /v1?token=", b"", b"GET /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_handshake_timeout_closes_connection(broker, bystander, partial):
    s = raw_socket(broker.port)
    try:
        s.sendall(partial)
        waited = wait_socket_closed(s, timeout=3.0)
        assert 0.3 <= waited <= 2.0, f"closed after {waited:.2f}s with a 500 ms handshake timeout"
    finally:
        s.close()


def test_slowloris_trickle_is_cut_by_deadline(broker, bystander):
    """Dribbling a byte every 100 ms does not extend the handshake deadline."""
    s = raw_socket(broker.port)
    t0 = time.monotonic()
    req, _ = upgrade_request(broker.port, f"/v1?token={mint('loris')}", [("X-Slow", "z" * 40)])
    try:
        for b in req[:-4]:
            if time.monotonic() - t0 > 2.5:
                break
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        s.setblocking(True)
        waited = time.monotonic() - t0 + wait_socket_closed(s, timeout=3.0)
        assert waited <= 2.0, f"trickling client kept the handshake open for {waited:.2f}s"
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------


def test_binary_frame_closes_1003(broker, bystander):
    c = broker.connect(mint("binary"))
    c.ws.send(b'{"type":"ping"}')
    code, _ = c.expect_close()
    assert code == 1003
    assert all(m.get("type") != "pong" for m in c.drained if isinstance(m, dict)), c.drained


def test_oversize_message_closes_1009(broker, bystander):
    c = broker.connect(mint("big"))
    assert c.welcome["maxMessageSize"] == 1024
    ch = chan("size")
    c.ok({"type": "publish", "channel": ch, "data": "x" * 900})  # ~970 bytes: under the cap
    c.send_text('{"type":"publish","channel":"%s","data":"%s"}' % (ch, "y" * 2000))
    code, _ = c.expect_close()
    assert code == 1009


def test_oversize_fragmented_message_closes_1009(broker, bystander):
    r = broker.raw(mint("frag"))
    r.expect_type("welcome")
    body = '{"type":"publish","channel":"f/x","data":"' + "z" * 1500 + '"}'
    chunks = [body[i : i + 400].encode() for i in range(0, len(body), 400)]
    r.send_frame(OP_TEXT, chunks[0], fin=False)
    for ch in chunks[1:-1]:
        r.send_frame(OP_CONT, ch, fin=False)
    try:
        r.send_frame(OP_CONT, chunks[-1], fin=True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    m = r.recv_message(timeout=3, auto_pong=True)
    assert m[0] == "close" and m[1] == 1009, m


def test_fragmented_message_within_limit_is_reassembled(broker):
    r = broker.raw(mint("frag-ok"))
    r.expect_type("welcome")
    body = '{"type":"subscribe","channel":"frag/ok","requestId":"fr"}'.encode()
    r.send_frame(OP_TEXT, body[:10], fin=False)
    r.send_frame(OP_PING, b"mid")  # control frames may be interleaved
    r.send_frame(OP_CONT, body[10:30], fin=False)
    r.send_frame(OP_CONT, body[30:], fin=True)
    got_pong = False
    while True:
        fin, op, payload = r.recv_frame()
        if op == OP_PONG:
            assert payload == b"mid"
            got_pong = True
        elif op == OP_TEXT:
            assert fin
            m = json.loads(payload)
            assert m == {"type": "ack", "requestId": "fr"}, m
            break
    assert got_pong


def test_websocket_ping_is_answered_with_same_payload(broker):
    r = broker.raw(mint("pinger"))
    r.expect_type("welcome")
    r.send_frame(OP_PING, b"are-you-there")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        fin, op, payload = r.recv_frame(timeout=3)
        if op == OP_PONG:
            assert payload == b"are-you-there"
            break
        if op == OP_PING:
            r.send_frame(OP_PONG, payload)
    else:
        pytest.fail("no pong")
    # The websockets client's own ping also round-trips.
    c = broker.connect(mint("pinger2"))
    assert c.ws.ping(b"x").wait(3)


def test_clean_close_is_echoed(broker):
    r = broker.raw(mint("closer"))
    r.expect_type("welcome")
    r.send_close(1000, "bye")
    m = r.recv_message(timeout=3, auto_pong=False)
    assert m[0] == "close" and m[1] == 1000, m
    waited = wait_socket_closed(r.sock, timeout=3)
    assert waited < 3


def test_close_while_subscribed_is_clean_for_others(broker):
    c = broker.connect(mint("cc-a"), shard=0)
    d = broker.connect(mint("cc-b"), shard=1)
    ch = chan("cc")
    d.subscribe(ch)
    c.subscribe(ch)
    d.expect_type("presence")
    c.ws.close(1000)
    assert c.ws.protocol.close_rcvd is not None and c.ws.protocol.close_rcvd.code == 1000
    m = d.expect_type("presence")
    assert m["left"] == [{"peerId": "cc-a"}], m


# ---------------------------------------------------------------------------------------------
# keep-alive
# ---------------------------------------------------------------------------------------------


def test_server_pings_at_configured_interval(broker):
    r = broker.raw(mint("ping-counter"))
    r.expect_type("welcome")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.65:
        try:
            r.recv_message(timeout=max(0.01, 1.65 - (time.monotonic() - t0)), auto_pong=True)
        except TimeoutError:
            break
    n = len(r.pings)
    assert 3 <= n <= 8, f"{n} server pings in 1.65 s with --ping-interval-ms 300"


def test_idle_peer_is_dropped_but_responsive_peer_is_kept(broker):
    idle = broker.raw(mint("idler"))
    live = broker.raw(mint("responsive"))
    t0 = time.monotonic()
    assert idle.expect_type("welcome")["peerId"] == "idler"
    live.recv_json()  # welcome
    # `idle` never sends anything (no pong either); `live` answers every ping.
    closed_at = None
    close_code = "no close frame"
    while time.monotonic() - t0 < 3.0:
        try:
            live.recv_message(timeout=0.05, auto_pong=True)
        except TimeoutError:
            pass
        if closed_at is None:
            try:
                m = idle.recv_message(timeout=0.05, auto_pong=False)
                if m[0] == "close":
                    close_code = m[1]
                    closed_at = time.monotonic() - t0
            except TimeoutError:
                pass
            except WSClosed:
                closed_at = time.monotonic() - t0
    assert closed_at is not None, "a peer silent for 3 s was not dropped with --idle-timeout-ms 1000"
    assert 0.8 <= closed_at <= 2.2, f"idle peer dropped after {closed_at:.2f}s (idle timeout 1 s)"
    assert close_code in ("no close frame", 1001, 1008), close_code
    assert len(idle.pings) >= 2, "the server should have pinged the idle peer first"
    if close_code != "no close frame":  # after its close frame the server ends TCP too
        wait_socket_closed(idle.sock, timeout=2.0)
    # The responsive raw peer, silent except for pongs, is still connected after 3 s.
    live.send_json({"type": "ping"})
    assert live.expect_type("pong")


def test_app_level_ping(broker):
    c = broker.connect(mint("app-ping"))
    c.send_json({"type": "ping"})
    assert c.recv_json() == {"type": "pong"}


# ---------------------------------------------------------------------------------------------
# per-IP upgrade throttling
# ---------------------------------------------------------------------------------------------


def test_upgrade_attempts_per_ip_are_throttled(broker_factory):
    b = broker_factory(name="throttle-broker")
    src = "127.0.250.250"
    tok = mint("throttled")
    statuses = []
    for _ in range(70):
        req, _ = upgrade_request(b.port, f"/v1?token={tok}")
        statuses.append(http_exchange(b.port, req, source_ip=src)[0])
    assert set(statuses) <= {101, 429}, statuses
    assert statuses[:60] == [101] * 60, statuses
    assert 429 in statuses[60:], f"70 upgrades from one IP within seconds were never refused: {statuses}"
    # Another source address is unaffected.
    req, _ = upgrade_request(b.port, f"/v1?token={tok}")
    assert http_exchange(b.port, req, source_ip="127.0.250.251")[0] == 101


# ---------------------------------------------------------------------------------------------
# graceful shutdown
# ---------------------------------------------------------------------------------------------


def test_graceful_shutdown_sends_going_away_then_1001(broker_factory):
    b = broker_factory(name="shutdown-broker")
    a, c = b.connect(mint("sd-a"), shard=0), b.connect(mint("sd-b"), shard=1)
    a.subscribe(chan("sd"))
    b.proc.send_signal(signal.SIGTERM)
    for x in (a, c):
        m = x.expect_type("going_away", timeout=5, skip=True)
        assert m == {"type": "going_away", "retryAfterMs": 1000}, m
        code, _ = x.expect_close(timeout=5)
        assert code == 1001, code
