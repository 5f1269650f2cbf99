"""Verifies how the Python client maps refusals and close codes to exceptions, and when it
reconnects: never after 4001/4003/4020 (nor 4002 with a fixed token), with a fresh token after
4002 when `token` is a callable, after 4011, and no sooner than `going_away.retryAfterMs`."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.server import serve

import ringcast
from conftest import config, helpers


async def test_refusals(connect):
    with pytest.raises(ringcast.InvalidToken) as e:
        await connect(None, token="not.a.jwt")
    assert e.value.code == 4001
    with pytest.raises(ringcast.TokenExpired):
        await connect(None, token=helpers.mint("exp-a", exp_in=-5))
    with pytest.raises(ringcast.ChannelsNotAuthorized):
        await connect(None, token=helpers.mint("nope", key_id=helpers.ROOM_KEY_ID, secret=helpers.ROOM_SECRET,
                                                channels=["elsewhere/*"]))


async def test_kicked_is_final(broker, connect):
    c = await connect("kick-me")
    sub = await c.subscribe("kick/room")
    r = await asyncio.to_thread(helpers.rest_request, broker, "DELETE", "/v1/peers/kick-me")
    assert r.status == 200 and r.json["closed"] == 1
    with pytest.raises(ringcast.Kicked):
        await asyncio.wait_for(c.wait_closed(), 5)
    with pytest.raises(ringcast.Kicked):
        await sub.get(1)
    with pytest.raises(ringcast.Kicked):
        await c.publish("kick/room", 1)


async def test_rate_limited_then_reconnects(connect):
    c = await connect("flooder")
    sub = await c.subscribe("flood/x")
    results = await asyncio.gather(*(c.publish("flood/x", i) for i in range(400)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, ringcast.RateLimited)]
    assert limited and limited[0].code == 4011
    await asyncio.sleep(0.5)  # the reconnect (backoff) and the resubscribe
    other = await connect("flood-watcher")
    await other.publish("flood/x", "after")
    assert (await sub.get(5)).data == "after"
    assert await c.publish("flood/x", "me too") is None


async def test_expiry_with_token_callable_reconnects(connect):
    minted = []

    def fresh():
        minted.append(1)  # the first token is short-lived, the next ones are not
        return helpers.mint("short-lived", exp_in=2 if len(minted) == 1 else 3600)

    c = await connect(None, token=fresh)
    ch = f"runs/exp-{time.monotonic_ns()}"
    sub = await c.subscribe(ch, since="auto")  # a history channel: no race with the resubscribe
    other = await connect("exp-other")
    for _ in range(60):  # closed 4002 ~250 ms before exp, reconnected with a fresh token
        if len(minted) == 2 and c._ready.is_set():
            break
        await asyncio.sleep(0.05)
    assert len(minted) == 2
    await other.publish(ch, "hello")
    assert (await sub.get(5)).data == "hello"


async def test_expiry_with_fixed_token_is_final(connect):
    c = await connect(None, token=helpers.mint("short-fixed", exp_in=2))
    with pytest.raises(ringcast.TokenExpired):
        await asyncio.wait_for(c.wait_closed(), 5)


async def test_connection_cap():
    cfg = config().replace("max_connections = 1000", "max_connections = 1", 1)
    b = await asyncio.to_thread(helpers.Broker, cfg, name="cap-broker")
    try:
        url = f"ws://127.0.0.1:{b.port}/v1"
        first = await ringcast.connect(url, token=helpers.mint("cap-1"))
        with pytest.raises(ringcast.ConnectionCapReached):
            await ringcast.connect(url, token=helpers.mint("cap-2"))
        await first.close()
    finally:
        await asyncio.to_thread(b.stop)


async def test_going_away_retry_after():
    """A stand-in server (not the broker: it cannot be restarted on the same port) sends
    `going_away` with retryAfterMs=600 and closes 1001; the client waits that long and reconnects."""
    seen = []

    async def handler(ws):
        seen.append(time.monotonic())
        await ws.send('{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":0,"maxMessageSize":65536}')
        if len(seen) == 1:
            await ws.send('{"type":"going_away","retryAfterMs":600}')
            await ws.close(1001)
            return
        async for raw in ws:
            if '"subscribe"' in raw:
                rid = raw.split('"requestId":"')[1].split('"')[0]
                await ws.send('{"type":"ack","requestId":"%s"}' % rid)
                await ws.send('{"type":"message","channel":"c","from":"x","data":"again"}')

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c = await ringcast.connect(f"ws://127.0.0.1:{port}/v1", token="t")
        try:
            t0 = seen[0]
            for _ in range(100):
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) >= 2 and seen[1] - t0 >= 0.6
            sub = await c.subscribe("c")
            assert (await sub.get(5)).data == "again"
        finally:
            await c.close()
