"""Verifies that clients holding connections open cannot exhaust the broker (issue 9, items 4
and 5; docs/hardening.md "Hardening II"):

* REST: a client that pipelines requests and never reads is reset after
  ``rest_write_timeout_ms`` (counted in ``ringcast_rest_write_timeouts_total``); one source IP
  holds at most ``rest_connections_per_ip`` connections (more get a 429 at once), so 1,024 such
  clients from 127.0.0.1 leave ``/healthz`` answering for everybody else; and even with the
  per-IP cap off, the write timeout gives the slots back.
* WebSocket handshakes: slowloris sockets (half a request head, then silence) beyond
  ``pending_handshakes_per_ip`` or ``max_pending_handshakes`` are closed at once (counted in
  ``ringcast_handshakes_refused_total{reason}``) while other clients still connect; the per-IP
  cap is per shard.
* IPv6: REST over ``::1`` is counted like any source (the /64 key itself is unit-tested in
  ``src/admission.rs``: only ``::1`` can be bound on loopback here, so two distinct addresses of
  one /64 cannot be shown through the binary).

All sockets are loopback; the largest test opens 1,024 client sockets (the process limit is 20,000).
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from helpers import (
    Broker,
    DEFAULT_CONFIG,
    mint,
    next_source_ip,
    read_http_head,
    upgrade_request,
    wait_socket_closed,
    wait_until,
)

# /metrics answers are ~9 KB: 600 of them (5 MB) are more than the kernel buffers a loopback
# connection to a non-reading client (about 2.8 MB here), so the broker's writes stall.
METRICS = b"GET /metrics HTTP/1.1\r\nHost: ringcast\r\n\r\n"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def http_get(host: str, port: int, path: str, source: str, timeout: float = 5.0, family=socket.AF_INET):
    """One GET on a fresh connection from ``source``: (status, headers, body, seconds)."""
    t0 = time.monotonic()
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: ringcast\r\nConnection: close\r\n\r\n".encode())
        status, headers, rest = read_http_head(s, timeout)
        body = rest
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body, time.monotonic() - t0
    finally:
        s.close()


def metrics_from(b: Broker, source: str) -> dict:
    """/metrics fetched from ``source`` (127.0.0.1 may be at its per-IP cap)."""
    status, _, body, _ = http_get("127.0.0.1", b.rest_port, "/metrics", source)
    assert status == 200, status
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def pipeliner(port: int, source: str, requests: int = 600, family=socket.AF_INET, host="127.0.0.1") -> socket.socket:
    """A client that sends ``requests`` pipelined GET /metrics and never reads (4 KiB receive
    buffer). The send is non-blocking and may be partial: the broker stops reading once its
    answers cannot be sent."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((host, port))
    s.setblocking(False)
    try:
        s.send(METRICS * requests)
    except OSError:
        pass  # refused (429 and closed) before the send: fine
    return s


# ---------------------------------------------------------------------------------------------
# Item 4: REST exhaustion
# ---------------------------------------------------------------------------------------------


def test_rest_non_reading_pipeliners_from_one_ip_cannot_starve_healthz():
    """1,024 clients from 127.0.0.1 pipeline 600 requests each and never read. Only 64 (the
    per-IP cap) get a connection, the others a 429 and a close; /healthz from 127.0.0.2 answers
    within 1 s; the 64 are reset at the (here 3 s) write timeout; RSS stays bounded."""
    with Broker(DEFAULT_CONFIG, name="rest-flood", args=["--rest-write-timeout-ms", "3000"]) as b:
        rss0 = rss_mib(b.proc.pid)
        t0 = time.monotonic()
        socks = [pipeliner(b.rest_port, "127.0.0.1") for _ in range(1024)]
        opened = time.monotonic() - t0
        try:
            m = wait_until(
                lambda: (lambda m: m if m["ringcast_rest_connections_refused_total"] >= 960 else None)(
                    metrics_from(b, "127.0.0.3")
                ),
                # The REST thread also renders /metrics for the 64 admitted pipeliners until
                # their sockets fill (about 3 s of its CPU); on a loaded CI machine the 960
                # accepts and 429s can take longer than that.
                timeout=20,
                what="960 refusals",
            )
            assert m["ringcast_rest_connections_refused_total"] == 960, m
            assert m["ringcast_rest_write_timeouts_total"] == 0, m
            latencies = []
            for _ in range(5):
                status, _, body, took = http_get("127.0.0.1", b.rest_port, "/healthz", "127.0.0.2")
                assert status == 200 and b'"ok"' in body, (status, body)
                latencies.append(took)
            assert max(latencies) < 1.0, latencies
            # A refused client got the 429 (best effort: at least most of them read it).
            got_429 = 0
            for s in socks[-50:]:
                s.setblocking(True)
                s.settimeout(1)
                try:
                    status, headers, _ = read_http_head(s, 1)
                    if status == 429:
                        got_429 += 1
                        assert headers["retry-after"] == "1" and headers["connection"] == "close", headers
                except (OSError, AssertionError, ConnectionError):
                    pass
            assert got_429 >= 40, got_429
            rss1 = rss_mib(b.proc.pid)
            # The 64 held connections are stuck (the broker cannot send): reset at 3 s.
            m = wait_until(
                lambda: (lambda m: m if m["ringcast_rest_write_timeouts_total"] >= 64 else None)(
                    metrics_from(b, "127.0.0.3")
                ),
                timeout=20,
                what="64 write timeouts",
            )
            assert m["ringcast_rest_write_timeouts_total"] == 64, m
            # Their slots are free again: 127.0.0.1 is served.
            status, _, _, _ = http_get("127.0.0.1", b.rest_port, "/healthz", "127.0.0.1")
            assert status == 200
            print(
                f"\n1,024 pipeliners opened in {opened:.2f}s; healthz from 127.0.0.2: "
                f"{', '.join(f'{x * 1000:.1f}' for x in latencies)} ms; 429 read by {got_429}/50; "
                f"RSS {rss0:.1f} -> {rss1:.1f} MiB"
            )
            assert rss1 - rss0 < 64, (rss0, rss1)
        finally:
            for s in socks:
                s.close()


def test_rest_client_that_never_reads_is_reset_at_the_write_timeout():
    with Broker(DEFAULT_CONFIG, name="rest-wto", args=["--rest-write-timeout-ms", "500"]) as b:
        s = pipeliner(b.rest_port, "127.0.0.5")
        t0 = time.monotonic()
        try:
            time.sleep(0.2)
            assert metrics_from(b, "127.0.0.6")["ringcast_rest_write_timeouts_total"] == 0
            wait_until(
                lambda: metrics_from(b, "127.0.0.6")["ringcast_rest_write_timeouts_total"] == 1,
                timeout=5,
                interval=0.02,
                what="the write timeout",
            )
            took = time.monotonic() - t0
            assert 0.5 <= took < 2.0, took
            s.setblocking(True)
            wait_socket_closed(s, 2)  # reset (or EOF after the queued answers)
            print(f"\nnon-reading client reset {took * 1000:.0f} ms after its requests (timeout 500 ms)")
        finally:
            s.close()


def test_rest_write_timeout_frees_slots_when_the_per_ip_cap_is_off():
    """With the per-IP cap off and 32 slots, 32 non-reading clients take every slot: /healthz
    from elsewhere waits in the backlog and is answered once the write timeout frees them."""
    args = ["--rest-connections-per-ip", "0", "--rest-max-connections", "32", "--rest-write-timeout-ms", "1000"]
    with Broker(DEFAULT_CONFIG, name="rest-slots", args=args) as b:
        socks = [pipeliner(b.rest_port, "127.0.0.1") for _ in range(32)]
        try:
            time.sleep(0.2)
            status, _, _, took = http_get("127.0.0.1", b.rest_port, "/healthz", "127.0.0.2", timeout=5)
            assert status == 200
            assert 0.5 < took < 2.5, took
        finally:
            for s in socks:
                s.close()


def test_rest_per_ip_cap_over_ipv6_loopback():
    """REST on [::1]: ::1 is one key like any other source (its /64)."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    args = ["--rest-listen", "[::1]:0", "--rest-connections-per-ip", "2", "--rest-write-timeout-ms", "60000"]
    with Broker(DEFAULT_CONFIG, name="rest-v6", args=args) as b:
        line = b.wait_for_output(r"rest on http://\[::1\]:(\d+)", timeout=5)
        assert line, b.output_tail()
        port = int(line.rsplit(":", 1)[1])
        held = [pipeliner(port, "::1", family=socket.AF_INET6, host="::1") for _ in range(2)]
        try:
            time.sleep(0.2)
            status, headers, _, _ = http_get("::1", port, "/healthz", "::1", family=socket.AF_INET6)
            assert status == 429 and headers["connection"] == "close", (status, headers)
        finally:
            for s in held:
                s.close()
        wait_until(
            lambda: http_get("::1", port, "/healthz", "::1", family=socket.AF_INET6)[0] == 200,
            timeout=3,
            what="::1 served again once its connections closed",
        )


# ---------------------------------------------------------------------------------------------
# Item 5: pending handshakes
# ---------------------------------------------------------------------------------------------


def slowloris(port: int, source: str) -> socket.socket:
    """Connects and sends half an upgrade request head, then stalls."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    req, _ = upgrade_request(port, f"/v1?token={mint('loris')}")
    try:
        s.sendall(req[: len(req) // 2])
    except OSError:
        pass
    return s


def closed_within(socks: list, seconds: float, when: dict | None = None) -> set:
    """Indexes of the sockets that reached EOF or a reset within ``seconds`` (the time each
    was seen closed, since the call, goes to ``when``)."""
    closed = set()
    t0 = time.monotonic()
    when = {} if when is None else when
    deadline = t0 + seconds
    while True:
        left = deadline - time.monotonic()
        live = {s.fileno(): i for i, s in enumerate(socks) if i not in closed}
        if left <= 0 or not live:
            return closed
        r, _, _ = select.select(list(live), [], [], left)
        for fd in r:
            i = live[fd]
            try:
                if socks[i].recv(4096) == b"":
                    closed.add(i)
            except OSError:
                closed.add(i)
            if i in closed:
                when[i] = time.monotonic() - t0


def upgrade_ok(b: Broker, source: str) -> bool:
    req, _ = upgrade_request(b.port, f"/v1?token={mint('normal')}")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(3)
        s.connect(("127.0.0.1", b.port))
        s.sendall(req)
        status, _, _ = read_http_head(s, 3)
        return status == 101
    except (OSError, ConnectionError, AssertionError):
        return False
    finally:
        s.close()


def test_slowloris_beyond_the_per_ip_pending_cap_is_closed_at_once():
    args = ["--pending-handshakes-per-ip", "4"]
    with Broker(DEFAULT_CONFIG, name="loris-ip", shards=1, args=args) as b:
        src = "127.0.77.7"
        socks = [slowloris(b.port, src) for _ in range(20)]
        try:
            when: dict = {}
            closed = closed_within(socks, 1.0, when)
            took = max(when.values())
            assert len(closed) == 16 and closed == set(range(4, 20)), sorted(closed)
            # Another address still upgrades and is welcomed.
            assert b.connect(mint("neighbour")).welcome["type"] == "welcome"
            assert upgrade_ok(b, "127.0.77.8")
            m = metrics_from(b, "127.0.0.9")
            assert m['ringcast_handshakes_refused_total{reason="ip_cap"}'] == 16, m
            assert m['ringcast_handshakes_refused_total{reason="shard_cap"}'] == 0, m
            print(f"\n20 slowloris sockets from one IP: 16 closed, the last seen closed {took * 1000:.1f} ms after all 20 connected")
        finally:
            for s in socks:
                s.close()
        # The four stalled ones gone, the address has its budget back (entry removed at zero).
        wait_until(lambda: upgrade_ok(b, src), timeout=3, what="the address served again")


def test_per_ip_pending_cap_applies_per_shard():
    args = ["--pending-handshakes-per-ip", "4"]
    with Broker(DEFAULT_CONFIG, name="loris-2shards", shards=2, args=args) as b:
        socks = [slowloris(b.port, "127.0.77.9") for _ in range(24)]
        try:
            closed = closed_within(socks, 1.0)
            open_ = len(socks) - len(closed)
            # SO_REUSEPORT spreads one address's sockets over both shards: 4 per shard.
            assert 4 <= open_ <= 8, open_
            m = metrics_from(b, "127.0.0.9")
            assert m['ringcast_handshakes_refused_total{reason="ip_cap"}'] == len(closed), m
        finally:
            for s in socks:
                s.close()


def test_slowloris_beyond_the_shard_pending_cap_is_closed_at_once():
    args = ["--max-pending-handshakes", "8", "--pending-handshakes-per-ip", "0"]
    with Broker(DEFAULT_CONFIG, name="loris-shard", shards=1, args=args) as b:
        socks = [slowloris(b.port, next_source_ip()) for _ in range(20)]
        try:
            closed = closed_within(socks, 1.0)
            assert len(closed) == 12 and closed == set(range(8, 20)), sorted(closed)
            # While the shard is full, even a well-behaved client is closed at once...
            assert not upgrade_ok(b, "127.0.78.1")
            m = metrics_from(b, "127.0.0.9")
            assert m['ringcast_handshakes_refused_total{reason="shard_cap"}'] == 13, m
        finally:
            for s in socks:
                s.close()
        # ...and is served as soon as the stalled sockets are gone.
        wait_until(lambda: upgrade_ok(b, "127.0.78.2"), timeout=3, what="a slot freed")
        assert b.connect(mint("after")).welcome["type"] == "welcome"
