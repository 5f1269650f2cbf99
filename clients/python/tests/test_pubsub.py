"""Verifies connect, subscribe/publish, wildcard subscriptions, direct messages, presence and
the ack-carried errors of the Python client against the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import ringcast
from conftest import helpers


def chan(prefix: str = "c") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


async def test_connect_welcome(connect):
    c = await connect("alice-w", claims={"metadata": {"role": "planner"}})
    assert c.peer_id == "alice-w"
    assert c.welcome["type"] == "welcome"
    assert c.welcome["metadata"] == {"role": "planner"}
    await c.ping()


async def test_connect_as_context_manager(url):
    async with ringcast.connect(url, token=helpers.mint("ctx-1")) as c:
        assert c.peer_id == "ctx-1"
        await c.ping()
    with pytest.raises(ringcast.ClientClosed):
        await c.publish("x", 1)


async def test_publishable_key_with_origin(connect):
    c = await connect(None, key=helpers.PK, origin=helpers.GOOD_ORIGIN)
    assert helpers.is_uuid(c.peer_id)
    assert c.welcome["expiresAt"] is None
    with pytest.raises(ringcast.InvalidToken):
        await connect(None, key=helpers.PK, origin="https://evil.example")


async def test_subscribe_publish(connect):
    ch = chan()
    a = await connect("pub-a", claims={"peerMetadata": {"name": "A"}})
    b = await connect("sub-b")
    sub = await b.subscribe(ch, include_sender_metadata=True)
    assert await a.publish(ch, {"n": 1}) is None  # not a history channel: no offset
    await a.publish(ch, None)
    m1, m2 = await sub.get(5), await sub.get(5)
    assert (m1.channel, m1.from_, m1.data, m1.offset) == (ch, "pub-a", {"n": 1}, None)
    assert m1.from_metadata == {"name": "A"}
    assert m2.data is None
    # async iteration and unsubscribe: the iterator ends
    await a.publish(ch, 3)
    async for m in sub:
        assert m.data == 3
        break
    await sub.unsubscribe()
    await a.publish(ch, 4)
    assert [m async for m in sub] == []
    with pytest.raises(ValueError):
        await b.subscribe(ch, since=("e", 1), group="g")


async def test_wildcard(connect):
    base = chan("wc")
    a = await connect("wc-a")
    b = await connect("wc-b")
    sub = await b.subscribe(f"{base}/*", pattern=True)
    exact = await b.subscribe(f"{base}/x")
    await a.publish(f"{base}/one", 1)
    await a.publish(f"{base}/one/deep", 2)  # `*` does not cross `/`
    await a.publish(f"{base}/x", 3)  # matches both: delivered once, to the exact subscription
    await a.publish(f"{base}/two", 4)
    got = [await sub.get(5), await sub.get(5)]
    assert [(m.channel, m.data) for m in got] == [(f"{base}/one", 1), (f"{base}/two", 4)]
    m = await exact.get(5)
    assert (m.channel, m.data) == (f"{base}/x", 3)
    with pytest.raises(asyncio.TimeoutError):
        await sub.get(0.3)
    await sub.unsubscribe()


async def test_send_direct(connect):
    a = await connect("dm-a", claims={"peerMetadata": {"k": 1}})
    b = await connect("dm-b")
    await a.send("dm-b", {"hi": True})
    d = await b.directs().get(5)
    assert (d.from_, d.data, d.from_metadata) == ("dm-a", {"hi": True}, {"k": 1})
    with pytest.raises(ringcast.PeerNotFound) as e:
        await a.send("dm-nobody", 1)
    assert e.value.code == "peer_not_found"


async def test_presence(connect):
    ch = chan("room")
    a = await connect("pr-a", claims={"peerMetadata": {"n": "A"}})
    events = []
    sub_a = await a.subscribe(ch, on_presence=events.append)
    b = await connect("pr-b", claims={"peerMetadata": {"n": "B"}})
    sub_b = await b.subscribe(ch)
    await helpers_wait(lambda: "pr-b" in sub_a.peers)
    assert sub_a.peers == {"pr-b": {"n": "B"}}
    await helpers_wait(lambda: "pr-a" in sub_b.peers)  # b's snapshot
    assert events[0].joined == {} and events[0].left == {}  # a's own (empty) snapshot
    assert events[1].joined == {"pr-b": {"n": "B"}}
    await b.close()
    await helpers_wait(lambda: sub_a.peers == {})
    assert events[-1].left == {"pr-b": {"n": "B"}}


async def helpers_wait(pred, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_error_frames(connect):
    c = await connect("err-a")
    with pytest.raises(ringcast.ServerError) as e:
        await c.publish("_system/x", 1)
    assert e.value.code == "channel_reserved"
    with pytest.raises(ringcast.ServerError) as e:
        await c.subscribe("plain/no-history", since=("e", 0))
    assert e.value.code == "history_not_enabled"
    with pytest.raises(ringcast.ServerError) as e:
        await c.history("plain/no-history")
    assert e.value.code == "history_not_enabled"
    # the failed subscribe left nothing behind: the same channel can be subscribed
    await c.subscribe("plain/no-history")
    limited = await connect("err-b", claims={"channels": ["only/*"]})
    with pytest.raises(ringcast.ServerError) as e:
        await limited.subscribe("elsewhere")
    assert e.value.code == "channel_not_authorized"
    with pytest.raises(ValueError):  # bigger than welcome.maxMessageSize: refused before sending
        await c.publish("x", "y" * 70000)
    await c.ping()  # still connected
