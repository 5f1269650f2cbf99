"""Verifies history channels through the Python client: publish offsets, the history command,
subscribe with an explicit `since`, and `since="auto"` resuming without gap or duplicate over a
dropped connection."""

from __future__ import annotations

import asyncio
import uuid

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
    assert [m.offset for m in await drain(again, 2)] == [7, 8]


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
