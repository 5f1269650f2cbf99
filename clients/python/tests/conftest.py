"""Fixtures of the Python client's tests: one real broker (target/release/ringcast, started by
the repository's tests/helpers.py) for the whole session, with a history channel family
(`runs/**`), and a `connect` factory whose clients are closed after each test.

Also probes once whether the broker speaks requests/replies (protocol §8.4) and queue groups
(§8.2): the tests of what it does not speak yet are skipped, naming the probe's answer."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("ringcast_test_helpers", REPO / "tests" / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
sys.modules["ringcast_test_helpers"] = helpers
_spec.loader.exec_module(helpers)

import ringcast  # noqa: E402

HISTORY = """
[[apps.history]]
channels = ["runs/**"]
size = 100
ttl_secs = 600
"""

# upgrades_per_ip/pending_handshakes_per_ip off: every client here connects from 127.0.0.1.
TOP = "upgrades_per_ip = 0\npending_handshakes_per_ip = 0\n"


def config(top: str = "") -> str:
    apps = helpers.BASE_APPS.replace('[[apps]]\nid = "other"', HISTORY + '\n[[apps]]\nid = "other"')
    return f"{TOP}{top}\n{apps}\n"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and helpers.LIVE_BROKERS:
        report.sections.append(("ringcast output", "\n".join(b.output_tail() for b in list(helpers.LIVE_BROKERS))))


@pytest.fixture(scope="session")
def broker():
    b = helpers.Broker(config(), name="clients-broker")
    yield b
    b.stop()


@pytest.fixture
def url(broker):
    return f"ws://127.0.0.1:{broker.port}/v1"


@pytest.fixture
async def connect(url):
    """`await connect("alice", **claims)`: a client with a freshly minted token (claims as
    tests/helpers.mint); `connect(None, token=…/key=…, **kw)` for anything else."""
    clients = []

    async def open_(peer=None, *, claims=None, **kw):
        if peer is not None and "token" not in kw and "key" not in kw:
            kw["token"] = helpers.mint(peer, **(claims or {}))
        c = await ringcast.connect(kw.pop("url", url), **kw)
        clients.append(c)
        return c

    yield open_
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


_probes: dict = {}


async def _probe(url: str, what: str) -> str | None:
    """None when the broker speaks `what`, else why not."""
    if what not in _probes:
        c = await ringcast.connect(url, token=helpers.mint("probe-" + what))
        try:
            if what == "rpc":
                try:
                    await c.request("nobody-at-all", 1, timeout=2)
                except ringcast.PeerNotFound:
                    _probes[what] = None
                except ringcast.ServerError as e:
                    _probes[what] = f"the broker answers a request with {e.code}"
            else:  # groups: a bad group name must be refused, not ignored
                try:
                    await c.subscribe("probe/groups", group="not a valid group!")
                    _probes[what] = "the broker ignores `group` (queue groups not implemented)"
                except ringcast.ServerError as e:
                    _probes[what] = None if e.code == "invalid_group" else f"the broker answers {e.code}"
        finally:
            await c.close()
    return _probes[what]


@pytest.fixture
async def rpc(url):
    why = await _probe(url, "rpc")
    if why:
        pytest.skip(f"requests/replies (§8.4) not in this broker: {why}")


@pytest.fixture
async def groups(url):
    why = await _probe(url, "groups")
    if why:
        pytest.skip(f"queue groups (§8.2) not in this broker: {why}")
