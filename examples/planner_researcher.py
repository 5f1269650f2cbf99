#!/usr/bin/env python3
"""A planner fans subtasks out on a channel; researchers send findings straight back.

Runs against a live ringcast with the stock Python `websockets` client and PyJWT
(pip install websockets PyJWT). The planner publishes each subtask on `runs/<id>/tasks`;
every researcher is subscribed there, takes the subtasks addressed to it, and answers the
planner with a direct `send` (no channel, no fan-out). The planner exits once every
subtask has a finding, printing one line per finding and a final "all N findings" line.

    python3 examples/planner_researcher.py --url ws://127.0.0.1:8080/v1 \
        --key-id sk_id_… --key-secret sk_secret_…
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import jwt
from websockets.asyncio.client import connect


def token(key_id: str, secret: str, peer: str, channels: list[str]) -> str:
    claims = {"sub": peer, "exp": int(time.time()) + 600, "channels": channels}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id})


async def recv_type(ws, *types):
    """Next frame whose type is one of `types` (acks and presence are skipped)."""
    while True:
        msg = json.loads(await ws.recv())
        if msg["type"] in types:
            return msg
        if msg["type"] == "error":
            raise RuntimeError(f"broker error: {msg}")


async def researcher(url: str, key_id: str, secret: str, name: str, tasks: str, ready: asyncio.Event):
    async with connect(f"{url}?token={token(key_id, secret, name, [tasks])}") as ws:
        await recv_type(ws, "welcome")
        await ws.send(json.dumps({"type": "subscribe", "channel": tasks, "requestId": "sub"}))
        await recv_type(ws, "ack")
        ready.set()
        while True:
            msg = await recv_type(ws, "message")
            task = msg["data"]
            if task.get("done"):
                return
            if task["assignee"] != name:
                continue
            finding = {"task": task["id"], "by": name, "answer": f"{task['question']} -> looked it up"}
            # Straight back to the planner: a direct message to its peerId.
            await ws.send(json.dumps({"type": "send", "to": msg["from"], "data": finding}))


async def planner(url: str, key_id: str, secret: str, run: str, researchers: int, subtasks: int) -> int:
    tasks = f"runs/{run}/tasks"
    names = [f"researcher-{i}" for i in range(researchers)]
    readies = [asyncio.Event() for _ in names]
    workers = [
        asyncio.create_task(researcher(url, key_id, secret, n, tasks, r)) for n, r in zip(names, readies)
    ]
    async with connect(f"{url}?token={token(key_id, secret, 'planner', [tasks])}") as ws:
        await recv_type(ws, "welcome")
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
        for i in range(subtasks):
            task = {"id": i, "assignee": names[i % researchers], "question": f"subtask {i}"}
            await ws.send(json.dumps({"type": "publish", "channel": tasks, "data": task, "requestId": f"t{i}"}))
        findings = {}
        while len(findings) < subtasks:
            msg = await asyncio.wait_for(recv_type(ws, "direct"), 10)
            f = msg["data"]
            findings[f["task"]] = f
            print(f"finding for subtask {f['task']} from {msg['from']}: {f['answer']}", flush=True)
        await ws.send(json.dumps({"type": "publish", "channel": tasks, "data": {"done": True}}))
    await asyncio.wait_for(asyncio.gather(*workers), 10)
    print(f"all {len(findings)} findings received", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1")
    ap.add_argument("--key-id", required=True)
    ap.add_argument("--key-secret", required=True)
    ap.add_argument("--run", default="run-42")
    ap.add_argument("--researchers", type=int, default=3)
    ap.add_argument("--subtasks", type=int, default=6)
    a = ap.parse_args()
    return asyncio.run(planner(a.url, a.key_id, a.key_secret, a.run, a.researchers, a.subtasks))


if __name__ == "__main__":
    raise SystemExit(main())
