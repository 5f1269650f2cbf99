#!/usr/bin/env python3
"""A subscriber that survives reconnects without losing or repeating a message.

Runs against a live ringcast whose config gives the channel history (docs/protocol.md 8.1;
examples/ringcast-examples.toml keeps history for runs/**), with the stock Python
`websockets` client and PyJWT (pip install websockets PyJWT).

Every `message` on a history channel carries an `offset` (1, 2, 3, … per channel epoch),
and the subscribe `ack` carries the channel's `epoch` and current `offset`. The subscriber
keeps the last (epoch, offset) it handled; after a reconnect it subscribes with
`"since": {"epoch": …, "offset": …}` and the broker replays what it missed, then continues
live, with no gap and no duplicate. `"recovered": false` in the ack means some of the missed
messages are no longer retained (or the broker restarted): the replay then starts at the
oldest one still kept.

The demo runs a producer and a subscriber. The producer publishes --count events; the
subscriber drops its connection (as a network failure would) after every --drop-every
events, stays away a moment while the producer goes on, and resumes.

    python3 examples/resume.py --url ws://127.0.0.1:8080/v1 \
        --config examples/ringcast-examples.toml
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import jwt
from websockets.asyncio.client import connect


def token(key_id: str, secret: str, peer: str, channels: list[str]) -> str:
    claims = {"sub": peer, "exp": int(time.time()) + 600, "channels": channels,
              "permissions": ["publish", "subscribe"]}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id})


class ResumingSubscriber:
    """Keeps the last handled (epoch, offset) of one channel and resumes from it."""

    def __init__(self, url: str, tok: str, channel: str):
        self.url, self.tok, self.channel = url, tok, channel
        self.epoch: str | None = None
        self.offset = 0
        self.reconnects = 0
        self.on_subscribed = None  # called once, after the first ack

    async def session(self, handle, stop_after: int | None) -> bool:
        """One connection: subscribe (resuming when we have a position), then hand every
        message to `handle` until it returns False (done) or `stop_after` messages were
        handled (then the connection is dropped). Returns True when done."""
        async with connect(f"{self.url}?token={self.tok}") as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            sub = {"type": "subscribe", "channel": self.channel, "requestId": "sub"}
            if self.epoch is not None:
                sub["since"] = {"epoch": self.epoch, "offset": self.offset}
            await ws.send(json.dumps(sub))
            ack = json.loads(await ws.recv())
            if ack["type"] != "ack":
                raise RuntimeError(f"subscribe refused: {ack}")
            if "epoch" not in ack:
                raise RuntimeError(f"{self.channel} has no history on this broker (see examples/ringcast-examples.toml)")
            if self.epoch is None:
                print(f"subscribed to {self.channel}: epoch {ack['epoch']}, offset {ack['offset']}", flush=True)
                self.offset = ack["offset"]
                if self.on_subscribed:
                    self.on_subscribed()
            else:
                missed = ack["offset"] - self.offset if ack["epoch"] == self.epoch else "?"
                print(f"resumed from offset {self.offset}: recovered={str(ack['recovered']).lower()}, "
                      f"{missed} missed while away", flush=True)
                if not ack["recovered"]:
                    print("  some missed messages are gone (retention or restart): "
                          "replay starts at the oldest retained one", flush=True)
            self.epoch = ack["epoch"]
            # The broker promises offset + 1 each time; only after recovered:false may the
            # first replayed message jump (or, in a new epoch, start again at 1).
            strict = ack.get("recovered", True)
            handled = 0
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] != "message" or msg["channel"] != self.channel:
                    continue
                if strict and msg["offset"] != self.offset + 1:
                    raise RuntimeError(f"gap or duplicate: offset {msg['offset']} after {self.offset}")
                strict = True
                self.offset = msg["offset"]
                if not handle(msg):
                    return True
                handled += 1
                if stop_after is not None and handled >= stop_after:
                    ws.transport.abort()  # simulate a dropped network connection
                    return False
        return False

    async def run(self, handle, drop_every: int | None, away: float) -> None:
        while not await self.session(handle, drop_every):
            self.reconnects += 1
            await asyncio.sleep(away)


async def producer(url: str, tok: str, channel: str, count: int, rate: float, ready: asyncio.Event) -> None:
    await ready.wait()
    async with connect(f"{url}?token={tok}") as ws:
        await ws.recv()  # welcome
        for i in range(count):
            await ws.send(json.dumps({"type": "publish", "channel": channel, "data": {"step": i}}))
            await asyncio.sleep(1 / rate)
        await ws.send(json.dumps({"type": "ping"}))  # everything above was taken in order
        while json.loads(await ws.recv())["type"] != "pong":
            pass


async def demo(url: str, key_id: str, secret: str, channel: str, count: int, drop_every: int, rate: float) -> int:
    ready = asyncio.Event()
    sub = ResumingSubscriber(url, token(key_id, secret, "resume-subscriber", [channel]), channel)
    steps: list[int] = []
    first_offset = 0

    def handle(msg) -> bool:
        nonlocal first_offset
        if not steps:
            first_offset = msg["offset"]
        steps.append(msg["data"]["step"])
        return len(steps) < count

    sub.on_subscribed = ready.set  # the producer starts once we are subscribed

    prod = asyncio.create_task(producer(url, token(key_id, secret, "resume-producer", [channel]), channel, count, rate, ready))
    await asyncio.wait_for(sub.run(handle, drop_every, away=0.2), 60)
    await asyncio.wait_for(prod, 10)
    if steps != list(range(count)):
        print(f"FAILED: got steps {steps[:5]}… ({len(steps)} of {count})", flush=True)
        return 1
    print(f"received all {count} events in order (offsets {first_offset}..{sub.offset}), "
          f"no gap and no duplicate, across {sub.reconnects} reconnects", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1")
    ap.add_argument("--config", help="a broker config: its first app's first secret key signs the tokens")
    ap.add_argument("--key-id")
    ap.add_argument("--key-secret")
    ap.add_argument("--channel", default="runs/resume-demo/events")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--drop-every", type=int, default=50)
    ap.add_argument("--rate", type=float, default=80.0, help="producer publications per second")
    a = ap.parse_args()
    if a.config:
        import tomllib
        with open(a.config, "rb") as f:
            key = tomllib.load(f)["apps"][0]["secret_keys"][0]
        a.key_id, a.key_secret = key["id"], key["secret"]
    if not (a.key_id and a.key_secret):
        ap.error("give --config, or --key-id and --key-secret")
    return asyncio.run(demo(a.url, a.key_id, a.key_secret, a.channel, a.count, a.drop_every, a.rate))


if __name__ == "__main__":
    raise SystemExit(main())
