"""Verifies the shard's receive ring when its provided buffers run out (docs/design.md, "Where io_uring
is used"): with a ring of only 64 buffers of 256 B, forty connections sending bursts of 3 KB messages at
the same moment need thousands of buffers. The receives that find none end with ENOBUFS and are re-armed;
the bytes wait in their sockets meanwhile, so every message still arrives whole, exactly once and in
order per publisher, the connections stay open, and the broker counts the exhaustion in
ringcast_recv_buffers_exhausted_total."""

from __future__ import annotations

import json
import os
import time

from helpers import chan, mint, rest_metrics

PUBLISHERS = 40
PER_PUBLISHER = 8
DATA = "x" * 3000
ARGS = [
    "--recv-buffers", "64",
    "--read-buffer-size", "256",
    "--rate-limit-per-sec", "1000",
    "--rate-limit-burst", "1000",
]


def masked_text_frame(payload: bytes) -> bytes:
    """One masked, final text frame (client to server, RFC 6455)."""
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    mask = os.urandom(4)
    reps = mask * (n // 4 + 1)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
    return head + mask + masked


def test_exhausted_buffers_delay_reads_but_lose_nothing(broker_factory):
    b = broker_factory(args=ARGS, shards=1, name="recv-ring")
    ch = chan("ring")
    sub = b.connect(mint("ring-sub"))
    sub.subscribe(ch, presence=False)
    pubs = []
    for p in range(PUBLISHERS):
        r = b.raw(mint(f"ring-pub-{p}"))
        assert r.recv_json()["type"] == "welcome"
        pubs.append(r)
    bursts = [
        b"".join(
            masked_text_frame(json.dumps({"type": "publish", "channel": ch, "data": {"p": p, "s": s, "x": DATA}}).encode())
            for s in range(PER_PUBLISHER)
        )
        for p in range(PUBLISHERS)
    ]
    for r, burst in zip(pubs, bursts):
        r.sock.sendall(burst)

    got: dict[int, list[int]] = {p: [] for p in range(PUBLISHERS)}
    expected = PUBLISHERS * PER_PUBLISHER
    deadline = time.monotonic() + 30
    n = 0
    while n < expected:
        assert time.monotonic() < deadline, f"only {n} of {expected} publications arrived"
        m = sub.recv_json(timeout=max(0.1, deadline - time.monotonic()))
        if m.get("type") != "message":
            continue
        assert m["data"]["x"] == DATA, "a publication arrived corrupted"
        got[m["data"]["p"]].append(m["data"]["s"])
        n += 1
    for p, seqs in got.items():
        assert seqs == list(range(PER_PUBLISHER)), f"publisher {p}: got {seqs}"

    metrics = rest_metrics(b)
    assert metrics["ringcast_recv_buffers_exhausted_total"] > 0, (
        "the burst never exhausted the 64 receive buffers, so this test did not exercise the re-arm path"
    )
    assert metrics['ringcast_connections{shard="0"}'] == PUBLISHERS + 1
    # The re-armed connections still read: a ping on each is answered.
    for i, r in enumerate(pubs):
        r.send_json({"type": "ping", "requestId": f"after-{i}"})
        assert r.recv_json() == {"type": "pong", "requestId": f"after-{i}"}
