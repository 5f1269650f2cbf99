#!/usr/bin/env python3
"""An agent that streams its progress and asks a person to approve its action.

Runs against a live ringcast with the Python client in clients/python (pip install
./clients/python PyJWT). The agent:

1. subscribes to its progress channel `runs/<run>/progress` and waits until the peer
   `reviewer` (the page served by serve.py) is there, so nobody misses a step;
2. publishes its steps on that channel;
3. asks the reviewer with a request (docs/protocol.md, "Extensions: requests and replies"):
   `await client.request("reviewer", {"action": …}, timeout=60)`. The broker keeps the 60 s
   deadline: the agent gets the reviewer's reply, or `request_timeout`, or `responder_gone` at
   once when the reviewer's page is closed. It never hangs;
4. goes on (approved) or stops (anything else), and says so on the channel.

It prints one last line and exits with a code that tells the outcome:

    approved         0   (the action ran, the run is finished)
    denied           3
    responder_gone   4   (the reviewer's page was closed before answering)
    request_timeout  5   (nobody answered within --timeout seconds)
    no_reviewer      6   (no reviewer came within --wait-reviewer seconds)
    any other error  1

    python3 examples/approval/agent.py --config examples/ringcast-examples.toml --run demo
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import jwt

try:
    import ringcast
except ImportError:  # run from a checkout without installing the client
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    import ringcast

EXIT = {"approved": 0, "denied": 3, "responder_gone": 4, "request_timeout": 5, "no_reviewer": 6}

STEPS = [
    "Checked out acme/shop at 4f2c9e1",
    "Ran 214 unit tests: all passed",
    "Built image shop:1.4.2 (182 MB)",
    "Staging smoke test: 12/12 checks green",
]
ACTION = "Deploy shop:1.4.2 to production (3 replicas, rolling)"
AFTER_APPROVAL = ["Deploying replica 1/3", "Deploying replica 2/3", "Deploying replica 3/3",
                  "Deployed shop:1.4.2 to production"]


def mint(key_id: str, secret: str, peer: str, channels: list[str], ttl: int = 3600) -> str:
    """An HS256 token for `peer` (protocol.md §1): header kid = the secret key's id."""
    claims = {"sub": peer, "exp": int(time.time()) + ttl, "channels": channels,
              "permissions": ["publish", "subscribe", "presence", "send"]}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id})


async def run(a: argparse.Namespace) -> str:
    channel = f"runs/{a.run}/progress"
    token = mint(a.key_id, a.key_secret, a.peer, [channel])
    async with ringcast.connect(a.url, token=token) as client:
        reviewer_here = asyncio.Event()

        def on_presence(p: ringcast.Presence) -> None:
            if a.reviewer in p.joined:
                reviewer_here.set()

        sub = await client.subscribe(channel, on_presence=on_presence)
        if a.reviewer in sub.peers:
            reviewer_here.set()
        say(f"run {a.run}: waiting for {a.reviewer} on {channel}")
        try:
            await asyncio.wait_for(reviewer_here.wait(), a.wait_reviewer)
        except asyncio.TimeoutError:
            return "no_reviewer"

        n = 0

        async def step(text: str, state: str = "running", **extra) -> None:
            nonlocal n
            n += 1
            await client.publish(channel, {"run": a.run, "n": n, "text": text, "state": state, **extra})
            say(f"step {n}: {text}")

        await step("Started")
        for text in STEPS:
            await asyncio.sleep(a.step_delay)
            await step(text)
        await asyncio.sleep(a.step_delay)
        await step(f"Waiting for approval: {ACTION}", "waiting", action=ACTION)

        question = {"run": a.run, "action": ACTION, "channel": channel,
                    "details": "All tests and staging checks passed. Rollback: shop:1.4.1."}
        try:
            answer = await client.request(a.reviewer, question, timeout=a.timeout)
        except ringcast.ResponderGone:
            await step("Stopped: the reviewer left before answering", "stopped")
            return "responder_gone"
        except ringcast.RequestTimeout:
            await step(f"Stopped: no answer within {a.timeout:g} s", "stopped")
            return "request_timeout"
        except ringcast.PeerNotFound:
            await step("Stopped: no reviewer online", "stopped")
            return "no_reviewer"
        except ringcast.RequestCancelled:
            return "responder_gone"  # our own connection dropped while waiting

        who = answer.get("by", a.reviewer) if isinstance(answer, dict) else a.reviewer
        if not (isinstance(answer, dict) and answer.get("approved") is True):
            reason = answer.get("reason") if isinstance(answer, dict) else None
            await step(f"Stopped: denied by {who}" + (f" ({reason})" if reason else ""), "denied")
            return "denied"
        await step(f"Approved by {who}", "approved")
        for text in AFTER_APPROVAL:
            await asyncio.sleep(a.step_delay)
            await step(text)
        await step("Finished", "done")
        return "approved"


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8080/v1", help="the broker's WebSocket URL")
    ap.add_argument("--config", help="a broker config: its first app's first secret key signs the token")
    ap.add_argument("--key-id")
    ap.add_argument("--key-secret")
    ap.add_argument("--run", default="demo", help="run id: progress goes to runs/<run>/progress")
    ap.add_argument("--peer", default="agent", help="this agent's peer id")
    ap.add_argument("--reviewer", default="reviewer", help="the peer id that approves")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds the reviewer has to answer")
    ap.add_argument("--wait-reviewer", type=float, default=600.0, help="seconds to wait for the reviewer to show up")
    ap.add_argument("--step-delay", type=float, default=0.8, help="seconds between progress steps")
    a = ap.parse_args()
    if a.config:
        import tomllib
        with open(a.config, "rb") as f:
            key = tomllib.load(f)["apps"][0]["secret_keys"][0]
        a.key_id, a.key_secret = key["id"], key["secret"]
    if not (a.key_id and a.key_secret):
        ap.error("give --config, or --key-id and --key-secret")
    try:
        outcome = asyncio.run(run(a))
    except (ringcast.RingcastError, OSError) as e:
        say(f"error: {type(e).__name__}: {e}")
        return 1
    say(outcome)
    return EXIT[outcome]


if __name__ == "__main__":
    raise SystemExit(main())
