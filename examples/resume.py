#!/usr/bin/env python3
"""A subscriber that survives reconnects without losing or repeating a message.

Runs against a live ringcast whose config gives the channel history (docs/protocol.md 8.1;
examples/ringcast-examples.toml keeps history for runs/**), with the ringcast Python client
and PyJWT (from the repository root: pip install PyJWT ./clients/python).

Every message on a history channel carries an `offset` (1, 2, 3, … per channel epoch), and
a subscription knows the channel's `epoch` and its position (`sub.epoch`, `sub.offset`). The
subscriber keeps the last (epoch, offset) it handled; when it connects again it subscribes
with `since=(epoch, offset)` and the broker replays what it missed, then continues live,
with no gap and no duplicate. `sub.recovered` False means some of the missed messages are
no longer retained (or the broker restarted): the replay then starts at the oldest one
still kept. (Within one client, `since="auto"` does the same by itself on every reconnect;
this demo keeps the position itself, as an application that outlives its connection does.)

The demo runs a producer and a subscriber. The producer publishes --count events; the
subscriber drops its connection after every --drop-every events (standing in for a network
failure), stays away a moment while the producer goes on, and resumes on a new connection.

    python3 examples/resume.py --url ws://127.0.0.1:8080/v1 \
        --config examples/ringcast-examples.toml
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
        self.on_subscribed = None  # called once, after the first subscribe

    async def session(self, handle, stop_after: int | None) -> bool:
        """One connection: subscribe (resuming when we have a position), then hand every
        message to `handle` until it returns False (done) or `stop_after` messages were
        handled (then the connection is dropped). Returns True when done."""
        async with ringcast.connect(self.url, token=self.tok) as client:
            if self.epoch is None:
                sub = await client.subscribe(self.channel)
                if sub.epoch is None:
                    raise RuntimeError(f"{self.channel} has no history on this broker "
                                       "(see examples/ringcast-examples.toml)")
                print(f"subscribed to {self.channel}: epoch {sub.epoch}, offset {sub.offset}", flush=True)
                self.offset = sub.offset
                if self.on_subscribed:
                    self.on_subscribed()
            else:
                # Where the channel is now, to say how much was missed while away.
                head = await client.history(self.channel, since_offset=self.offset, limit=1)
                sub = await client.subscribe(self.channel, since=(self.epoch, self.offset))
                missed = head.offset - self.offset if head.epoch == self.epoch else "?"
                print(f"resumed from offset {self.offset}: recovered={str(sub.recovered).lower()}, "
                      f"{missed} missed while away", flush=True)
                if not sub.recovered:
                    print("  some missed messages are gone (retention or restart): "
                          "replay starts at the oldest retained one", flush=True)
            # The broker promises offset + 1 each time; only after recovered=False may the
            # first replayed message jump (or, in a new epoch, start again at 1).
            strict = sub.recovered is not False
            self.epoch = sub.epoch
            handled = 0
            async for msg in sub:
                if strict and msg.offset != self.offset + 1:
                    raise RuntimeError(f"gap or duplicate: offset {msg.offset} after {self.offset}")
                strict = True
                self.offset = msg.offset
                if not handle(msg):
                    return True
                handled += 1
                if stop_after is not None and handled >= stop_after:
                    return False  # leaving the `async with` drops the connection
        return False

    async def run(self, handle, drop_every: int | None, away: float) -> None:
        while not await self.session(handle, drop_every):
            self.reconnects += 1
            await asyncio.sleep(away)


async def producer(url: str, tok: str, channel: str, count: int, rate: float, ready: asyncio.Event) -> None:
    await ready.wait()
    async with ringcast.connect(url, token=tok) as client:
        for i in range(count):
            await client.publish(channel, {"step": i})  # waits for the ack (with its offset)
            await asyncio.sleep(1 / rate)


async def demo(url: str, key_id: str, secret: str, channel: str, count: int, drop_every: int, rate: float) -> int:
    ready = asyncio.Event()
    sub = ResumingSubscriber(url, token(key_id, secret, "resume-subscriber", [channel]), channel)
    steps: list[int] = []
    first_offset = 0

    def handle(msg) -> bool:
        nonlocal first_offset
        if not steps:
            first_offset = msg.offset
        steps.append(msg.data["step"])
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
