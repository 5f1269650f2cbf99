"""Memory and fairness holes a browser key can reach (issue 9 items 1-3 and 8; docs/hardening.md,
"Hardening II"). Every test drives the real binary with hostile raw-socket clients, samples the
broker's RSS from /proc, and checks a healthy neighbour pair on every shard (tests/test_hostile.py's
``Neighbour``: a sequence-numbered stream that must arrive complete, in order, in time).

- ping floods that never read: closed 4008 by the outbound cap (pongs count), or 4011 by the ping
  budget; RSS bounded;
- a re-subscribe loop on a channel with a 1,000-peer roster: snapshots count against the cap, 4008,
  RSS bounded;
- one shard flooding another: the REST queue (peers query) and a SIGTERM drain are still served in
  time, and past ``max_cross_shard_bytes`` publishes are refused (``rate_limited`` / REST 503)
  instead of growing memory;
- a drain that times out reports what it could not deliver and exits 1."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time

from helpers import (
    DEFAULT_CONFIG,
    KEY_ID,
    SECRET,
    OP_PING,
    Broker,
    chan,
    mint,
    rest_metrics,
    rest_request,
    wait_until,
)
from test_hostile import Neighbour, rss_kib

#: A masked WebSocket ping with an empty payload (client frames must be masked).
PING = struct.pack("!BB", 0x80 | OP_PING, 0x80) + b"\x01\x02\x03\x04"


def bearer_pair() -> tuple[str, str]:
    return (KEY_ID, SECRET)


def masked_text(text: str) -> bytes:
    """One masked text frame (all-zero mask: the payload goes through unchanged)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + b"\x00\x00\x00\x00" + data


def flood(sock: socket.socket, chunk: bytes, until: float) -> str:
    """Sends ``chunk`` over and over until the broker cuts the socket or time is up."""
    sock.settimeout(2.0)
    try:
        while time.monotonic() < until:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return "cut"
    except (TimeoutError, socket.timeout):
        return "stalled"  # the broker stopped reading (closing): it will cut the socket
    return "time"


def test_ping_flood_without_reading_is_closed_4008_and_memory_stays_bounded():
    """Item 1. Eight connections send empty pings as fast as they can and never read, for 20 s
    (reconnecting whenever they are cut). With the ping budget off, only the outbound cap stops
    them: every pong counts against it, so each flooder is closed 4008 like any slow consumer.
    Bound: RSS peak <= start + 8 x 2 x max_outbound_bytes + 8 MiB. Two caps per flooder: a queued
    frame is charged its bytes plus 64, which covers its 32-byte slot in a queue that grows by
    doubling, and allocator rounding. 8 MiB: buffers that any load touches once (the receive
    ring's 1 MiB of provided buffers, the completion queue, pooled write batches), measured at
    +4 MiB with a 64 KiB cap. Before this fix, 4 flooders grew the broker by 195 MB in 20 s."""
    cap = 1 << 20
    b = Broker(
        args=["--max-pings-per-sec", "0", "--max-outbound-bytes", str(cap), "--upgrades-per-ip", "0"],
        name="ping-flood",
    )
    try:
        ns = [Neighbour(b, k) for k in range(b.shards)]
        pid = b.proc.pid
        time.sleep(0.5)
        rss0 = rss_kib(pid)
        peak = [rss0]
        chunk = PING * 8192
        until = time.monotonic() + 20
        sessions = [0] * 8
        outcomes: list[str] = []

        def flooder(k: int) -> None:
            for _ in range(200):  # bounded: at most 200 sessions each, and 20 s
                if time.monotonic() >= until:
                    return
                r = b.raw(mint(f"pinger{k}", permissions=["subscribe"]), rcvbuf=4096, shard=k % b.shards)
                sessions[k] += 1
                outcomes.append(flood(r.sock, chunk, until))
                r.close()

        threads = [threading.Thread(target=flooder, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.1)
        for nb in ns:
            nb.check()
        m = rest_metrics(b)
        cut = outcomes.count("cut") + outcomes.count("stalled")
        print(f"ping flood: rss start {rss0} KiB, peak {peak[0]} KiB, sessions {sum(sessions)}, "
              f"outcomes {dict((o, outcomes.count(o)) for o in set(outcomes))}, "
              f"4008 closes {m['ringcast_slow_consumer_closes_total']}")
        assert cut >= 8, f"flooders were not cut off: {outcomes}"
        assert m["ringcast_slow_consumer_closes_total"] >= cut - 8, m
        bound = rss0 + 8 * 2 * cap // 1024 + 8 * 1024
        assert peak[0] <= bound, f"RSS peak {peak[0]} KiB over the bound {bound:.0f} KiB (start {rss0} KiB)"
    finally:
        b.stop()


def test_ping_budget_closes_4011_whatever_the_rate_limit_action():
    """Item 1, the budget: 100 pings per second per connection by default (WebSocket pings and
    `ping` messages together); the 101st within a second closes 4011. Pings under the budget never
    touch the token bucket (tests/test_limits.py checks the publish burst after pings)."""
    b = Broker(args=["--rate-limit-action", "error"], name="ping-budget")
    try:
        ns = [Neighbour(b, k) for k in range(b.shards)]
        # WebSocket ping frames, in one write (well within one second).
        r = b.raw(mint("ws-pinger"))
        r.expect_type("welcome")
        r.sock.sendall(PING * 150)
        pongs, code = 0, None
        while code is None:
            _, op, payload = r.recv_frame(timeout=5)
            if op == 0xA:
                pongs += 1
            elif op == 0x8:
                code = struct.unpack("!H", payload[:2])[0]
        assert code == 4011, code
        assert pongs <= 100, pongs
        # `ping` messages share the same budget (one write, so the close cannot race the sends).
        a = b.raw(mint("app-pinger"))
        a.expect_type("welcome")
        a.sock.sendall(masked_text(json.dumps({"type": "ping"})) * 110)
        pongs, close = 0, None
        while close is None:
            m = a.recv_message(timeout=5)
            if m[0] == "close":
                close = m
            elif json.loads(m[1]) == {"type": "pong"}:
                pongs += 1
        assert close[1] == 4011 and "ping" in close[2], close
        assert pongs == 100, pongs
        for nb in ns:
            nb.check()
        r.close()
        a.close()
        wait_until(lambda: rest_metrics(b)["ringcast_rate_limit_closes_total"] >= 2, timeout=5,
                   what="both 4011 closes counted")
    finally:
        b.stop()


def test_resubscribe_flood_on_a_large_roster_is_closed_4008_and_memory_stays_bounded():
    """Item 2. 1,000 peers sit in `lobby`; one connection that never reads re-subscribes to it at
    99/s for 20 s. A re-subscribe still gets a fresh snapshot (Metered's SDKs rely on it), but at
    most one is in flight per subscription, the owner reuses the encoding while the roster is
    unchanged, and snapshots count against the outbound cap: the flooder is closed 4008.
    Bound: RSS peak <= (start + max_outbound_bytes + one snapshot) x 1.1 + 8 MiB of slack for
    the neighbours' and the roster's own growth."""
    cap = 1 << 20
    config = DEFAULT_CONFIG.replace("max_connections = 1000", "max_connections = 5000")
    assert config != DEFAULT_CONFIG
    b = Broker(config, args=["--upgrades-per-ip", "0", "--max-outbound-bytes", str(cap)], name="resub-flood")
    socks = []
    try:
        lobby = chan("lobby")
        # 1,000 peers subscribe (without the presence action: they are announced, get no frames).
        for i in range(1000):
            r = b.raw(mint(f"member-{i:04d}", permissions=["subscribe"]), timeout=10)
            r.expect_type("welcome")
            r.send_json({"type": "subscribe", "channel": lobby})
            socks.append(r)
        watcher = b.connect(mint("watcher"))
        watcher.send_json({"type": "subscribe", "channel": lobby, "requestId": "w"})
        watcher.expect_type("ack", requestId="w", skip=True)
        roster = set()
        while len(roster) < 1000:
            m = watcher.expect_type("presence", timeout=10, skip=True)
            roster.update(p["peerId"] for p in m["joined"])
        ns = [Neighbour(b, k) for k in range(b.shards)]
        pid = b.proc.pid
        time.sleep(0.5)
        rss0 = rss_kib(pid)
        peak = rss0
        f = b.raw(mint("resubscriber"), rcvbuf=4096)
        f.expect_type("welcome")
        f.sock.settimeout(2.0)
        frame = masked_text(json.dumps({"type": "subscribe", "channel": lobby, "requestId": "again"}))
        start, sent, outcome = time.monotonic(), 0, "time"
        while time.monotonic() - start < 20 and sent < 2000:
            try:
                f.sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError, socket.timeout):
                outcome = "cut"
                break
            sent += 1
            peak = max(peak, rss_kib(pid))
            time.sleep(max(0.0, start + sent / 99 - time.monotonic()))
        took = time.monotonic() - start
        if outcome == "time":
            # Still open after 20 s would be the failure; give the close timeout a moment.
            wait_until(lambda: rest_metrics(b)["ringcast_slow_consumer_closes_total"] >= 1, timeout=3,
                       what="the re-subscriber's 4008")
        peak = max(peak, rss_kib(pid))
        for nb in ns:
            nb.check()
        m = rest_metrics(b)
        print(f"re-subscribe flood: {sent} re-subscribes in {took:.1f} s, outcome {outcome}, "
              f"rss start {rss0} KiB, peak {peak} KiB")
        assert m["ringcast_slow_consumer_closes_total"] >= 1, m
        snapshot_kib = 1000 * 40 // 1024
        bound = (rss0 + (cap // 1024) + snapshot_kib) * 1.1 + 8 * 1024
        assert peak <= bound, f"RSS peak {peak} KiB over the bound {bound:.0f} KiB (start {rss0} KiB)"
        # The roster is intact and the owner still answers.
        r = rest_request(b, "GET", f"/v1/channels/{lobby.replace('/', '%2F')}/peers")
        assert r.status == 200 and len(json.loads(r.body)["peers"]) == 1001, r
    finally:
        for s in socks:
            s.close()
        b.stop()


class CrossShardFlood:
    """Publishers on shard 0 flood a channel whose subscribers all sit on shard 1: shard 0 parses
    (cheap), shard 1 fans each publication out to every subscriber (40x the work), so shard 1's
    queue from shard 0 grows. The subscribers read and discard (one selector thread), so nobody
    is a slow consumer; publishers read and discard their acks/errors the same way."""

    def __init__(self, b: Broker, subs: int = 40, pubs: int = 4):
        self.b = b
        self.ch = chan("flood")
        # A channel for the peers query whose owner is shard 1.
        self.readers = []
        for i in range(subs):
            r = b.raw(mint(f"flood-sub-{i}", permissions=["subscribe"]), shard=1)
            r.expect_type("welcome")
            r.send_json({"type": "subscribe", "channel": self.ch, "requestId": "s"})
            r.expect_type("ack")
            self.readers.append(r)
        self.pubs = []
        for i in range(pubs):
            r = b.raw(mint(f"flood-pub-{i}", permissions=["publish"]), shard=0)
            r.expect_type("welcome")
            self.pubs.append(r)
        self.stop = threading.Event()
        self.refused = 0
        self.threads = [threading.Thread(target=self._drain, daemon=True)]
        self.threads += [threading.Thread(target=self._publish, args=(p,), daemon=True) for p in self.pubs]

    def start(self):
        for t in self.threads:
            t.start()

    def _drain(self):
        import selectors

        sel = selectors.DefaultSelector()
        for r in self.readers + self.pubs:
            r.sock.setblocking(False)
            sel.register(r.sock, selectors.EVENT_READ, r)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data in self.pubs:
                    self.refused += data.count(b'"rate_limited"')

    def _publish(self, r):
        body = masked_text(json.dumps({"type": "publish", "channel": self.ch, "data": {"pad": "x" * 300}}))
        burst = body * 500
        until = time.monotonic() + 30  # bounded even if nobody calls halt()
        while not self.stop.is_set() and time.monotonic() < until:
            try:
                r.sock.sendall(burst)
            except (BlockingIOError, InterruptedError):
                time.sleep(0.001)
            except OSError:
                return

    def halt(self):
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for r in self.readers + self.pubs:
            r.close()


def test_flooded_shard_still_serves_rest_queries_and_shutdown_and_refuses_past_its_bound():
    """Item 3. Shard 0 floods shard 1 (4 publishers, a 40-subscriber channel on shard 1). While
    it does, shard 1 holds a backlog from shard 0, yet REST peers queries for channels that
    shard 1 owns are answered fast (the mesh drains round-robin: the REST queue gets its share
    every round), publishes past `max_cross_shard_bytes` are refused (`rate_limited` on the
    WebSocket, 503 + Retry-After on REST) so the queue stays bounded, and a SIGTERM drain still
    ends the process in time."""
    bound = 4 << 20
    b = Broker(
        args=[
            "--upgrades-per-ip", "0",
            "--rate-limit-per-sec", "1000000", "--rate-limit-burst", "1000000",
            "--max-outbound-bytes", str(64 << 20),
            "--max-cross-shard-bytes", str(bound),
            "--drain-timeout-ms", "5000", "--close-timeout-ms", "1000",
        ],
        name="cross-shard-flood",
    )
    try:
        # Peers queries go to each channel's owner shard (a hash of the name, not visible from
        # outside): with 8 channels, shard 1 owns at least one of them but with odds 1/256,
        # and every query is timed.
        rooms = []
        for k in range(8):
            c = b.connect(mint(f"roomie-{k}"), shard=k % b.shards)
            room = chan(f"room{k}")
            c.subscribe(room)
            rooms.append(room)
        flood = CrossShardFlood(b)
        pid = b.proc.pid
        # Both shards on one CPU (the test's own threads get the other): shard 1, with 40x the
        # work per publication, then falls behind shard 0 whatever else the machine runs.
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {0})
        rss0 = rss_kib(pid)
        flood.start()
        deepest, peak = 0, rss0
        latencies = []
        rest_codes = {}
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            m = rest_metrics(b)
            deepest = max(deepest, m.get('ringcast_cross_shard_queue_bytes{shard="1"}', 0))
            peak = max(peak, rss_kib(pid))
            for room in rooms:
                t0 = time.monotonic()
                r = rest_request(b, "GET", f"/v1/channels/{room.replace('/', '%2F')}/peers", timeout=10)
                latencies.append(time.monotonic() - t0)
                assert r.status == 200, r
            r = rest_request(b, "POST", f"/v1/channels/{flood.ch.replace('/', '%2F')}/publish", 
                             body={"data": "rest"}, timeout=10)
            rest_codes[r.status] = rest_codes.get(r.status, 0) + 1
            if r.status == 503:
                assert r.headers.get("retry-after") == "1", r.headers
            time.sleep(0.05)
        m = rest_metrics(b)
        refusals = m["ringcast_cross_shard_refusals_total"]
        latencies.sort()
        p50, worst = latencies[len(latencies) // 2], latencies[-1]
        print(f"cross-shard flood: deepest queue {deepest / 1024:.0f} KiB (bound {bound // 1024} KiB), "
              f"WebSocket refusals {refusals:.0f}, REST publish statuses {rest_codes}, peers query p50 "
              f"{p50 * 1000:.1f} ms, worst {worst * 1000:.1f} ms, rss {rss0} -> {peak} KiB")
        assert refusals > 0, "the flood never reached the bound: the test proves nothing"
        assert set(rest_codes) <= {200, 503}, rest_codes
        assert flood.refused > 0, "publishers were not told rate_limited"
        assert deepest <= bound * 1.5, f"queue grew to {deepest} bytes past the bound {bound}"
        assert worst < 1.0, f"a peers query took {worst:.2f} s under the flood"
        # SIGTERM while the flood is still on: the drain ends the process within its timeout.
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        rc = b.proc.wait(timeout=15)
        took = time.monotonic() - t0
        print(f"cross-shard flood: SIGTERM drain took {took:.2f} s, exit {rc}")
        assert took < 7, f"shutdown took {took:.1f} s under the flood"
        assert rc in (0, 1), rc
        flood.halt()
    finally:
        b.stop()


def test_rest_publish_answers_503_with_retry_after_past_the_bound():
    """Item 3, REST: 40 publishes of 2 KB pipelined in one write on one keep-alive connection.
    The REST thread queues them without waking the shard until it has handled what that read
    brought, so the shard's queue passes a 16 KiB bound within the batch: the publishes past it
    answer 503 with Retry-After: 1 and are not queued; the ones before it are delivered."""
    b = Broker(args=["--max-cross-shard-bytes", "16384"], shards=1, name="rest-bound")
    try:
        ch = chan("bounded")
        sub = b.connect(mint("sub", permissions=["subscribe"]))
        sub.subscribe(ch, presence=False)
        body = json.dumps({"data": {"pad": "q" * 2000}})
        path = f"/v1/channels/{ch.replace('/', '%2F')}/publish"
        auth = "Bearer " + ":".join(bearer_pair())
        req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
        s = socket.create_connection(("127.0.0.1", b.rest_port), timeout=10)
        s.sendall(req * 40)
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"HTTP/1.1 ") < 40 and time.monotonic() < deadline:
            got += s.recv(1 << 16)
        s.close()
        heads = [h for h in got.split(b"HTTP/1.1 ")[1:]]
        codes = [int(h[:3]) for h in heads]
        assert len(codes) == 40, codes
        assert 200 in codes and 503 in codes, codes
        assert all(b"retry-after: 1" in h.lower() for h in heads if h.startswith(b"503")), got[:2000]
        delivered = sum(1 for m in sub.collect(1.5) if m.get("type") == "message")
        print(f"REST bound: statuses {dict((c, codes.count(c)) for c in set(codes))}, delivered {delivered}")
        assert delivered == codes.count(200), (delivered, codes)
    finally:
        b.stop()


def test_drain_timeout_reports_undelivered_frames_and_exits_1():
    """Item 8. A subscriber that never reads holds frames when SIGTERM comes; its close never
    completes, so the drain times out: the broker logs how many frames (and bytes) it could not
    deliver and exits 1."""
    b = Broker(args=["--drain-timeout-ms", "1500", "--close-timeout-ms", "60000",
                     "--max-outbound-bytes", str(64 << 20),
                     "--rate-limit-per-sec", "100000", "--rate-limit-burst", "100000"], name="drain-report")
    try:
        ch = chan("stuck")
        r = b.raw(mint("stuck", permissions=["subscribe"]), rcvbuf=4096)
        r.expect_type("welcome")
        r.send_json({"type": "subscribe", "channel": ch, "requestId": "s"})
        r.expect_type("ack")
        pub = b.connect(mint("pub", permissions=["publish"]))
        # 16 MB: more than the kernel's socket buffers hold, so most of it stays queued.
        for i in range(4000):
            pub.send_json({"type": "publish", "channel": ch, "data": {"i": i, "pad": "z" * 4000}})
        pub.ping_pong()
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=10) == 1
        line = b.wait_for_output(r"drain timeout reached: (\d+) frames \((\d+) bytes\) to (\d+) connections", timeout=2)
        assert line, b.output_tail()
        import re

        frames, nbytes, conns = map(int, re.search(r"(\d+) frames \((\d+) bytes\) to (\d+) connections", line).groups())
        assert frames > 0 and nbytes > 0 and conns >= 1, line
    finally:
        b.stop()
