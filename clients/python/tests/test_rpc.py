"""Verifies requests and replies (protocol §8.4) through the Python client: plain and streamed
replies, the responder handler (value, coroutine, async generator, exception), timeouts,
cancellation by the requester (task cancelled, stream left early, requester gone), a responder
leaving mid-stream, and `taken` between two connections of one peer. Skipped while the broker
answers `request` with `unknown_type` (the `rpc` fixture probes once)."""

from __future__ import annotations

import asyncio

import pytest

import ringcast

pytestmark = pytest.mark.usefixtures("rpc")


async def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_request_reply(connect):
    seen = []
    responder = await connect("rpc-resp-1", claims={"peerMetadata": {"kind": "tool"}})

    @responder.responder
    async def handle(req):
        seen.append(req)
        return {"echo": req.data}

    caller = await connect("rpc-call-1", claims={"peerMetadata": {"kind": "agent"}})
    assert await caller.request("rpc-resp-1", {"q": 1}, timeout=5) == {"echo": {"q": 1}}
    req = seen[0]
    assert (req.from_, req.data, req.from_metadata) == ("rpc-call-1", {"q": 1}, {"kind": "agent"})
    assert 0 < req.timeout_ms <= 5000

    responder.on_request(lambda req: req.data * 2)  # a plain function works too
    assert await caller.request("rpc-resp-1", 21) == 42


async def test_streamed_reply(connect):
    responder = await connect("rpc-resp-2")

    @responder.responder
    async def handle(req):
        for i in range(req.data):
            yield {"chunk": i}

    caller = await connect("rpc-call-2")
    chunks = [c async for c in caller.request_stream("rpc-resp-2", 3, timeout=5)]
    assert chunks == [{"chunk": 0}, {"chunk": 1}, {"chunk": 2}]
    assert await caller.request("rpc-resp-2", 2, timeout=5) is None  # the final reply's data


async def test_errors(connect):
    caller = await connect("rpc-call-3")
    with pytest.raises(ringcast.PeerNotFound):
        await caller.request("rpc-nobody", 1)
    responder = await connect("rpc-resp-3")

    @responder.responder
    async def handle(req):
        if req.data == "boom":
            raise RuntimeError("boom")
        await asyncio.sleep(10)

    assert await caller.request("rpc-resp-3", "boom", timeout=5) == {"error": "RuntimeError: boom"}
    with pytest.raises(ringcast.RequestTimeout):
        await caller.request("rpc-resp-3", "slow", timeout=0.3)


async def test_timeout_cancels_responder(connect):
    reqs = []
    responder = await connect("rpc-resp-4")

    @responder.responder
    async def handle(req):
        reqs.append(req)
        await asyncio.sleep(10)

    caller = await connect("rpc-call-4")
    with pytest.raises(ringcast.RequestTimeout):
        await caller.request("rpc-resp-4", 1, timeout=0.3)
    await wait_for(lambda: reqs and reqs[0].cancelled.is_set())
    assert reqs[0].cancel_reason == "timeout"


async def test_cancel_by_task_and_by_leaving_stream(connect):
    reqs = []
    responder = await connect("rpc-resp-5")

    @responder.responder
    async def handle(req):
        reqs.append(req)
        yield "first"
        await asyncio.sleep(10)
        yield "never"

    caller = await connect("rpc-call-5")
    task = asyncio.create_task(caller.request("rpc-resp-5", 1, timeout=10))
    await wait_for(lambda: len(reqs) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: reqs[0].cancelled.is_set())
    assert reqs[0].cancel_reason == "cancelled"

    async for chunk in caller.request_stream("rpc-resp-5", 2, timeout=10):
        assert chunk == "first"
        break
    await wait_for(lambda: len(reqs) == 2 and reqs[1].cancelled.is_set())
    assert reqs[1].cancel_reason == "cancelled"


async def test_requester_gone(connect):
    reqs = []
    responder = await connect("rpc-resp-6")

    @responder.responder
    async def handle(req):
        reqs.append(req)
        await asyncio.sleep(10)

    caller = await connect("rpc-call-6")
    task = asyncio.create_task(caller.request("rpc-resp-6", 1, timeout=10))
    await wait_for(lambda: len(reqs) == 1)
    await caller.close()
    with pytest.raises(ringcast.RequestCancelled):
        await task
    await wait_for(lambda: reqs[0].cancelled.is_set())
    assert reqs[0].cancel_reason == "requester_gone"


async def test_responder_gone(connect):
    responder = await connect("rpc-resp-7")

    @responder.responder
    async def handle(req):
        yield "partial"
        await asyncio.sleep(10)

    caller = await connect("rpc-call-7")
    got = []
    with pytest.raises(ringcast.ResponderGone):
        async for chunk in caller.request_stream("rpc-resp-7", 1, timeout=10):
            got.append(chunk)
            await responder.close()
    assert got == ["partial"]


async def test_taken_by_first_connection(connect):
    """Two connections of one peer receive the request; the first to reply takes it and the
    other is told `taken`."""
    slow_reqs = []
    fast = await connect("rpc-worker")
    slow = await connect("rpc-worker")
    fast.on_request(lambda req: "fast")

    @slow.responder
    async def handle(req):
        slow_reqs.append(req)
        await asyncio.sleep(10)

    caller = await connect("rpc-call-8")
    assert await caller.request("rpc-worker", 1, timeout=5) == "fast"
    await wait_for(lambda: slow_reqs and slow_reqs[0].cancelled.is_set())
    assert slow_reqs[0].cancel_reason == "taken"


async def test_limits_and_long_stream(connect):
    """A 50-chunk stream arrives whole and in order; 101 requests in flight from one connection:
    one `too_many_requests`, and the other 100 fail `responder_gone` when the peer's only
    connection leaves before replying; a timeout over `request_max_timeout_ms` is
    `invalid_request`."""
    responder = await connect("rpc-resp-9")

    @responder.responder
    async def handle(req):
        if req.data == "stream":
            for i in range(50):
                yield i
        else:
            await asyncio.sleep(10)

    caller = await connect("rpc-call-9")
    assert [c async for c in caller.request_stream("rpc-resp-9", "stream", timeout=10)] == list(range(50))
    tasks = [asyncio.create_task(caller.request("rpc-resp-9", i, timeout=10)) for i in range(101)]
    done, _ = await asyncio.wait(tasks, timeout=3, return_when=asyncio.FIRST_EXCEPTION)
    errors = [t.exception() for t in done]
    assert len(errors) == 1 and isinstance(errors[0], ringcast.ServerError)
    assert errors[0].code == "too_many_requests"
    await responder.close()  # (cancelling the 100 would cost 100 tokens: 202 in a burst is 4011)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, ringcast.ResponderGone) for r in results) == 100
    with pytest.raises(ringcast.ServerError) as e:
        await caller.request("rpc-resp-9", 1, timeout=301)
    assert e.value.code == "invalid_request"
