"""Protocol §9 with both of Metered's published SDKs, unmodified, connected to different
nodes of a three-node cluster (a real nats-server started here): Metered's JS SDK
(@metered-ca/realtime, Node, tests/compat/cluster_check.mjs) as "bob" on one node and
Metered's Python SDK (metered-realtime) as "alice" on another. They see each other on the
channel's roster, exchange publications and direct messages both ways, a send to a peer on no
node is `peer_not_found` for both, and alice sees bob `left` when he closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from cluster_helpers import Nats, start_nodes
from helpers import Broker, mint

metered = pytest.importorskip("metered_realtime", reason="metered-realtime is listed in tests/requirements.txt")
from metered_realtime import Direct, Message, Presence, ServerRequestError, SignallingClient  # noqa: E402

NODE = shutil.which("node")
COMPAT = Path(__file__).parent / "compat"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (CI has it)")


@pytest.mark.timeout(120)
def test_metered_js_and_python_sdks_on_different_nodes():
    assert (COMPAT / "node_modules" / "@metered-ca" / "realtime").is_dir(), "run npm ci in tests/compat (scripts/test.sh does)"
    nats = Nats()
    nodes = []
    try:
        nodes = start_nodes(nats, "s")
        channel = f"room-{uuid.uuid4().hex[:8]}"
        asyncio.run(asyncio.wait_for(scenario(nodes, channel), 90))
    finally:
        for b in nodes:
            b.stop()
        nats.stop()


async def scenario(nodes: list[Broker], channel: str) -> None:
    events: list = []
    changed = asyncio.Event()

    def push(ev) -> None:
        events.append(ev)
        changed.set()

    async def wait_for(pred, what: str, timeout: float = 10):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for e in events:
                if pred(e):
                    return e
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"alice: no {what} within {timeout}s: {events}"
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    token = mint("alice")

    async def provider() -> str:
        return token

    alice = SignallingClient(token_provider=provider, url=f"ws://127.0.0.1:{nodes[0].port}", reconnect=False)
    for t in (Message, Direct, Presence):
        alice.on(t, push)
    await alice.connect()
    await alice.subscribe(channel)
    cfg = {"origin": f"ws://127.0.0.1:{nodes[1].port}", "channel": channel, "token": mint("bob")}
    js = await asyncio.create_subprocess_exec(
        NODE,
        str(COMPAT / "cluster_check.mjs"),
        cwd=COMPAT,
        env=dict(os.environ, RINGCAST_CLUSTER=json.dumps(cfg)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda e: isinstance(e, Presence) and any(j.peer_id == "bob" for j in e.joined), "bob joined")
        m = await wait_for(lambda e: isinstance(e, Message) and e.sender_peer_id == "bob", "bob's message")
        assert m.channel == channel and m.data == {"text": "from-js"}
        await alice.publish(channel, {"text": "from-py"})
        await alice.send("bob", {"dm": "py"})
        d = await wait_for(lambda e: isinstance(e, Direct) and e.sender_peer_id == "bob", "bob's direct")
        assert d.data == {"dm": "js"}
        with pytest.raises(ServerRequestError) as ei:
            await alice.send("nobody-on-any-node", 1)
        assert ei.value.code == "peer_not_found"
        await wait_for(lambda e: isinstance(e, Presence) and any(x.peer_id == "bob" for x in e.left), "bob left")
        out, _ = await asyncio.wait_for(js.communicate(), 30)
    finally:
        if js.returncode is None:
            js.kill()
            await js.wait()
        await alice.close()
    report = out.decode()
    print(report)
    assert js.returncode == 0 and "not ok" not in report and "ok - done" in report, report
