#!/usr/bin/env python3
"""A planner fans subtasks out on a channel; researchers send findings straight back.

Runs against a live ringcast with the ringcast Python client and PyJWT (from the repository
root: pip install PyJWT ./clients/python). The planner publishes each subtask on
`runs/<id>/tasks`; every researcher is subscribed there, takes the subtasks addressed to it,
and answers the planner with a direct `send` (no channel, no fan-out). The planner exits once
every subtask has a finding, printing one line per finding and a final "all N findings" line.

    python3 examples/planner_researcher.py --url ws://127.0.0.1:8080/v1 \
        --key-id sk_id_… --key-secret sk_secret_…
"""

from __future__ import annotations

import argparse
import asyncio
import time

try:
    import jwt
    import ringcast
except ImportError as e:
    raise SystemExit(f"{e}: from the repository root, pip install PyJWT ./clients/python") from None


def token(key_id: str, secret: str, peer: str, channels: list[str]) -> str:
    claims = {"sub": peer, "exp": int(time.time()) + 600, "channels": channels}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id})


async def researcher(url: str, key_id: str, secret: str, name: str, tasks: str, ready: asyncio.Event):
    async with ringcast.connect(url, token=token(key_id, secret, name, [tasks])) as client:
        sub = await client.subscribe(tasks)
        ready.set()
        async for msg in sub:
            task = msg.data
            if task.get("done"):
                return
            if task["assignee"] != name:
                continue
            finding = {"task": task["id"], "by": name, "answer": f"{task['question']} -> looked it up"}
            # Straight back to the planner: a direct message to its peerId.
            await client.send(msg.from_, finding)


async def planner(url: str, key_id: str, secret: str, run: str, researchers: int, subtasks: int) -> int:
    tasks = f"runs/{run}/tasks"
    names = [f"researcher-{i}" for i in range(researchers)]
    readies = [asyncio.Event() for _ in names]
    workers = [
        asyncio.create_task(researcher(url, key_id, secret, n, tasks, r)) for n, r in zip(names, readies)
    ]
    async with ringcast.connect(url, token=token(key_id, secret, "planner", [tasks])) as client:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
        for i in range(subtasks):
            task = {"id": i, "assignee": names[i % researchers], "question": f"subtask {i}"}
            await client.publish(tasks, task)
        findings = {}
        directs = client.directs()
        while len(findings) < subtasks:
            d = await asyncio.wait_for(anext(directs), 10)
            f = d.data
            findings[f["task"]] = f
            print(f"finding for subtask {f['task']} from {d.from_}: {f['answer']}", flush=True)
        await client.publish(tasks, {"done": True})
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
