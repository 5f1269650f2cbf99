"""Shared by the cluster tests (protocol §9): a real nats-server started by the test, and the
link's /healthz and /metrics read through REST."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

import threading

from helpers import Broker, mint, rest_metrics, rest_request, wait_until

FAST = ["--rate-limit-per-sec", "1000000", "--rate-limit-burst", "1000000"]
NATS = shutil.which("nats-server")

if NATS is None:
    if os.environ.get("CI"):
        raise RuntimeError("nats-server is not installed (.ci/run installs it with apt)")
    pytest.skip("nats-server is not installed (apt install nats-server)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nats:
    """A real nats-server on 127.0.0.1:<port>, restartable on the same port."""

    def __init__(self):
        self.port = free_port()
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def health(b: Broker) -> dict:
    r = rest_request(b, "GET", "/healthz", auth=None)
    assert r.status == 200, r
    return json.loads(r.body)


def link_up(b: Broker) -> bool:
    return health(b).get("cluster", {}).get("nats") == "connected"


def peer(b: Broker, name: str, shard=None, **claims):
    return b.connect(mint(name, **claims), shard=shard, name=name)


def metric(b: Broker, name: str, **labels) -> float:
    m = rest_metrics(b)
    total = 0.0
    for k, v in m.items():
        if k == name or k.startswith(name + "{"):
            if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
                total += v
    return total


@pytest.fixture(scope="module")
def nats():
    """A nats-server for the module's nodes."""
    n = Nats()
    yield n
    n.stop()


def start_nodes(nats: Nats, prefix: str, count: int = 3) -> list[Broker]:
    """`count` ringcast nodes (2 shards each) joined through `nats`, once each sees the others
    (node ids `{prefix}0`, `{prefix}1`, …)."""
    bs = [
        Broker(args=[*FAST, "--nats-url", nats.url, "--node-id", f"{prefix}{i}"], shards=2, name=f"{prefix}node{i}")
        for i in range(count)
    ]
    for b in bs:
        wait_until(
            lambda b=b: link_up(b) and health(b)["cluster"].get("nodes") == count,
            timeout=10,
            what=f"{b.name} sees {count} nodes",
        )
    return bs


def nodes_fixture(prefix: str):
    """A module-scoped `nodes` fixture: three nodes of `start_nodes(nats, prefix)`, stopped
    after the module (`nodes = nodes_fixture("n")` in a test module)."""

    @pytest.fixture(scope="module")
    def nodes(nats):
        bs = start_nodes(nats, prefix)
        yield bs
        for b in bs:
            b.stop()

    return nodes


def publish_concurrently(channel: str, counts: dict, publishers: list) -> None:
    """Each publisher (a client whose name is a key of `counts`) publishes `{"p": name,
    "k": k}` for k in range(counts[name]) on its own thread, acked every 50th; returns when
    all are done."""

    def run(p):
        for k in range(counts[p.name]):
            p.publish(channel, {"p": p.name, "k": k}, ack=(k % 50 == 49))
        p.sync()

    ts = [threading.Thread(target=run, args=(p,)) for p in publishers]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
