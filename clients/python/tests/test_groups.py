"""Verifies queue groups (protocol §8.2) through the Python client: each publication reaches
exactly one member of a group, and every plain subscriber. Skipped while the broker ignores
`group` (the `groups` fixture probes once)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import ringcast

pytestmark = pytest.mark.usefixtures("groups")


async def test_each_publication_to_one_member(connect):
    ch = f"jobs/{uuid.uuid4().hex[:8]}"
    w1, w2 = await connect("grp-w1"), await connect("grp-w2")
    s1 = await w1.subscribe(ch, group="workers")
    s2 = await w2.subscribe(ch, group="workers")
    watcher = await connect("grp-watch")
    plain = await watcher.subscribe(ch)
    pub = await connect("grp-pub")
    for i in range(10):
        await pub.publish(ch, i)
    assert [(await plain.get(5)).data for _ in range(10)] == list(range(10))
    got = []
    for s in (s1, s2):
        while True:
            try:
                got.append((await s.get(0.5)).data)
            except asyncio.TimeoutError:
                break
    assert sorted(got) == list(range(10))
    with pytest.raises(ringcast.ServerError) as e:
        await w1.subscribe(ch + "-x", group="bad group!")
    assert e.value.code == "invalid_group"
    # refused by the client: the pattern's copies would be indistinguishable from the group's picks
    with pytest.raises(ValueError):
        await w1.subscribe("jobs/*", pattern=True)
