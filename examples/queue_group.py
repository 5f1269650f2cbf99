#!/usr/bin/env python3
"""Workers share the jobs of one channel: each job goes to exactly one of them.

Runs against a live ringcast (docs/protocol.md 8.2, queue groups) with the ringcast Python
client and PyJWT (from the repository root: pip install PyJWT ./clients/python). No broker
configuration is needed for queue groups.

Every worker subscribes to `jobs/<run>` with `group="workers"`. A publication on the
channel goes to every plain subscriber and to exactly one member of each group, so the
dispatcher publishes each job once and one worker takes it. The worker answers the
dispatcher with a direct `send`. The dispatcher prints who did what, then checks that every
job was done exactly once (a broker without queue groups would hand every job to every
worker: the script then exits 1).

    python3 examples/queue_group.py --url ws://127.0.0.1:8080/v1 \
        --config examples/ringcast-examples.toml
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

try:
    import jwt
    import ringcast
except ImportError as e:
    raise SystemExit(f"{e}: from the repository root, pip install PyJWT ./clients/python") from None


def token(key_id: str, secret: str, peer: str, channels: list[str]) -> str:
    claims = {"sub": peer, "exp": int(time.time()) + 600, "channels": channels,
              "permissions": ["publish", "subscribe", "send"]}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id})


async def worker(url: str, tok: str, name: str, jobs: str, ready: asyncio.Event) -> None:
    async with ringcast.connect(url, token=tok) as client:
        sub = await client.subscribe(jobs, group="workers")
        ready.set()

        async def work() -> None:
            async for msg in sub:
                job = msg.data
                await asyncio.sleep(0.01)  # the work
                result = {"job": job["id"], "worker": name, "result": job["n"] ** 2}
                await client.send(msg.from_, result)

        # Work until the dispatcher says we are done (a direct message), or until the work fails.
        working = asyncio.create_task(work())
        stop = asyncio.create_task(anext(client.directs()))
        await asyncio.wait({working, stop}, return_when=asyncio.FIRST_COMPLETED)
        for t in (working, stop):
            t.cancel()
        await asyncio.gather(working, stop, return_exceptions=True)
        if not working.cancelled():
            working.result()  # the work failed: raise its error


async def dispatcher(url: str, key_id: str, secret: str, run: str, workers: int, jobs: int) -> int:
    channel = f"jobs/{run}"
    names = [f"worker-{i}" for i in range(workers)]
    readies = [asyncio.Event() for _ in names]
    tasks = [
        asyncio.create_task(worker(url, token(key_id, secret, n, [channel]), n, channel, r))
        for n, r in zip(names, readies)
    ]
    done_by: dict[int, list[str]] = collections.defaultdict(list)
    async with ringcast.connect(url, token=token(key_id, secret, "dispatcher", [channel])) as client:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
        for i in range(jobs):
            await client.publish(channel, {"id": i, "n": i})
        directs = client.directs()
        while sum(map(len, done_by.values())) < jobs:
            d = (await asyncio.wait_for(anext(directs), 10)).data
            done_by[d["job"]].append(d["worker"])
        # Any extra answer within a moment means a job was handed out twice.
        try:
            while True:
                d = (await asyncio.wait_for(anext(directs), 0.5)).data
                done_by[d["job"]].append(d["worker"])
        except asyncio.TimeoutError:
            pass
        # Tell every worker to stop, straight to its connections (not through the group,
        # which would hand the note to just one of them).
        for n in names:
            await client.send(n, {"done": True})
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    per_worker = collections.Counter(w for ws_ in done_by.values() for w in ws_)
    for n in names:
        print(f"{n} did {per_worker[n]} jobs", flush=True)
    twice = {j: w for j, w in done_by.items() if len(w) != 1}
    if twice or sorted(done_by) != list(range(jobs)):
        print(f"FAILED: jobs not done exactly once: {dict(list(twice.items())[:5])} "
              "(does this broker support queue groups?)", flush=True)
        return 1
    print(f"all {jobs} jobs done exactly once by {workers} workers", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1")
    ap.add_argument("--config", help="a broker config: its first app's first secret key signs the tokens")
    ap.add_argument("--key-id")
    ap.add_argument("--key-secret")
    ap.add_argument("--run", default="run-7")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=30)
    a = ap.parse_args()
    if a.config:
        import tomllib
        with open(a.config, "rb") as f:
            key = tomllib.load(f)["apps"][0]["secret_keys"][0]
        a.key_id, a.key_secret = key["id"], key["secret"]
    if not (a.key_id and a.key_secret):
        ap.error("give --config, or --key-id and --key-secret")
    return asyncio.run(dispatcher(a.url, a.key_id, a.key_secret, a.run, a.workers, a.jobs))


if __name__ == "__main__":
    raise SystemExit(main())
