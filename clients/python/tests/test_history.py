"""Verifies history channels through the Python client: publish offsets, the history command,
subscribe with an explicit `since`, and `since="auto"` resuming without gap or duplicate over a
dropped connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import ringcast
from conftest import helpers


def run() -> str:
    return f"runs/{uuid.uuid4().hex[:10]}"


async def drain(sub, n: int) -> list:
    return [await sub.get(5) for _ in range(n)]


async def test_publish_offsets_and_history(connect):
    ch = run()
    a = await connect("h-pub", claims={"peerMetadata": {"who": "pub"}})
    b = await connect("h-sub")
    sub = await b.subscribe(ch)
    assert sub.offset == 0 and sub.epoch
    assert [await a.publish(ch, i) for i in range(1, 6)] == [1, 2, 3, 4, 5]
    got = await drain(sub, 5)
    assert [(m.offset, m.data) for m in got] == [(i, i) for i in range(1, 6)]
    assert sub.offset == 5

    h = await b.history(ch)
    assert (h.epoch, h.offset) == (sub.epoch, 5)
    assert [(m.offset, m.data, m.from_, m.channel) for m in h.messages] == [(i, i, "h-pub", ch) for i in range(1, 6)]
    assert h.messages[0].from_metadata == {"who": "pub"}
    assert [m.offset for m in (await b.history(ch, limit=2)).messages] == [1, 2]
    assert [m.offset for m in (await b.history(ch, since_offset=3)).messages] == [4, 5]
    try:
        await b.history(ch, limit=0)
        raise AssertionError("limit 0 accepted")
    except ringcast.ServerError as e:
        assert e.code == "invalid_request"


async def test_subscribe_since(connect):
    ch = run()
    a = await connect("hs-pub")
    for i in range(1, 5):
        await a.publish(ch, i)
    epoch = (await a.history(ch)).epoch

    b = await connect("hs-b")
    sub = await b.subscribe(ch, since=(epoch, 1))
    assert sub.recovered is True
    assert [m.offset for m in await drain(sub, 3)] == [2, 3, 4]
    await a.publish(ch, 5)
    assert (await sub.get(5)).offset == 5

    c = await connect("hs-c")  # an epoch that is not current: everything retained, not recovered
    sub_c = await c.subscribe(ch, since={"epoch": "stale-epoch", "offset": 3})
    assert sub_c.recovered is False and sub_c.epoch == epoch
    assert [m.offset for m in await drain(sub_c, 5)] == [1, 2, 3, 4, 5]

    d = await connect("hs-d")  # ahead of the channel: nothing replayed, live continues
    sub_d = await d.subscribe(ch, since=(epoch, 99))
    assert sub_d.recovered is False and sub_d.offset == 5
    await a.publish(ch, 6)
    assert (await sub_d.get(5)).offset == 6


async def test_auto_resume_after_disconnect(connect):
    """The socket is dropped under the client (as a network failure would); while it is down
    (its token callable holds the reconnect) three messages are published. The resubscribe
    carries `since` and the stream continues 3, 4, 5, 6 with `recovered` true."""
    ch = run()
    gate = asyncio.Event()
    gate.set()
    token = helpers.mint("auto-b")
    reconnects = []

    async def token_source():
        reconnects.append(1)
        await gate.wait()
        return token

    a = await connect("auto-a")
    b = await connect(None, token=token_source)
    sub = await b.subscribe(ch, since="auto")
    assert sub.recovered is None  # nothing remembered yet: a plain subscribe
    await a.publish(ch, 1)
    await a.publish(ch, 2)
    assert [m.data for m in await drain(sub, 2)] == [1, 2]

    gate.clear()
    b._ws.transport.abort()  # simulated network loss
    await asyncio.sleep(0.3)
    assert len(reconnects) == 2  # the reconnect is waiting for its token
    for i in (3, 4, 5):
        await a.publish(ch, i)
    gate.set()
    got = await drain(sub, 3)
    assert [(m.offset, m.data) for m in got] == [(3, 3), (4, 4), (5, 5)]
    assert sub.recovered is True
    await a.publish(ch, 6)
    assert (await sub.get(5)).data == 6
    assert await b.publish(ch, "still works") == 7

    # "auto" remembers per client: leaving and coming back replays what was missed
    await sub.unsubscribe()
    await a.publish(ch, 8)
    again = await b.subscribe(ch, since="auto")
    assert again.recovered is True
    assert [m.offset for m in await drain(again, 1)] == [8]  # 7 was its own


async def test_plain_subscription_resubscribes_live(connect):
    """Without `since`, a reconnect resubscribes live: what was published meanwhile is skipped."""
    ch = run()
    gate = asyncio.Event()
    gate.set()
    token = helpers.mint("live-b")

    async def token_source():
        await gate.wait()
        return token

    a = await connect("live-a")
    b = await connect(None, token=token_source)
    sub = await b.subscribe(ch)
    gate.clear()
    b._ws.transport.abort()
    await asyncio.sleep(0.2)
    await a.publish(ch, "missed")
    gate.set()
    await helpers_wait_offset(sub, 1)
    await a.publish(ch, "live")
    m = await sub.get(5)
    assert (m.offset, m.data) == (2, "live")


async def helpers_wait_offset(sub, offset: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while sub.offset != offset:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


def _start_on(port: int, cfg_path: str):
    """The broker on a fixed port (tests/helpers.Broker always picks a free one)."""
    import subprocess

    proc = subprocess.Popen([helpers.BIN, "--config", cfg_path, "--listen", f"127.0.0.1:{port}", "--shards", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "listening on" in line:
            return proc
    raise RuntimeError(f"broker on port {port} did not start (exit {proc.wait()})")


async def test_resume_across_broker_restart(tmp_path):
    """The broker restarts on the same port: the client honours `going_away` (retryAfterMs,
    1 s by default), reconnects, and its resume finds a new epoch (`recovered` false); the
    stream goes on from the new epoch's offset 1."""
    import signal
    import socket

    from conftest import config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text(config())
    url = f"ws://127.0.0.1:{port}/v1"
    first = await asyncio.to_thread(_start_on, port, str(cfg))
    second = None
    try:
        b = await ringcast.connect(url, token=helpers.mint("restart-b"))
        sub = await b.subscribe("runs/restart", since="auto")
        await b.publish("runs/restart", "before")
        old_epoch = sub.epoch
        assert (await b.history("runs/restart")).offset == 1
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.wait, 10)
        t0 = asyncio.get_running_loop().time()
        second = await asyncio.to_thread(_start_on, port, str(cfg))
        while sub.epoch == old_epoch:
            assert asyncio.get_running_loop().time() - t0 < 10, "no resubscribe after the restart"
            await asyncio.sleep(0.05)
        assert sub.recovered is False
        a = await ringcast.connect(url, token=helpers.mint("restart-a"))
        assert await a.publish("runs/restart", "after") == 1
        m = await sub.get(5)
        assert (m.offset, m.data) == (1, "after")
        await a.close()
        await b.close()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


async def test_own_publications_are_not_replayed(connect):
    """A subscriber that publishes on its channel never receives its own publications; its
    position steps over them, so a resume does not replay them either."""
    ch = run()
    gate = asyncio.Event()
    gate.set()
    token = helpers.mint("own-b")

    async def token_source():
        await gate.wait()
        return token

    a = await connect("own-a")
    b = await connect(None, token=token_source)
    sub = await b.subscribe(ch, since="auto")
    assert [await b.publish(ch, "b1"), await b.publish(ch, "b2")] == [1, 2]
    assert sub.offset == 2
    await a.publish(ch, "a3")
    assert (await sub.get(5)).data == "a3"
    assert await b.publish(ch, "b4") == 4
    gate.clear()
    b._ws.transport.abort()
    await asyncio.sleep(0.2)
    await a.publish(ch, "a5")
    gate.set()
    m = await sub.get(5)
    assert (m.offset, m.data, sub.recovered) == (5, "a5", True)
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.3)
