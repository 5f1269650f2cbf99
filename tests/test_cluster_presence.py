"""Verifies protocol.md §9 presence and node failure across three real ringcast nodes (2 shards
each) joined through a real nats-server started here, with real WebSocket clients
(python-websockets) and REST:

- a roster spans the nodes: every subscriber sees the same members, whichever node they are
  on; a peer connected to two nodes is one roster entry (one `joined`, and `left` only when
  its last connection on the last node goes); snapshot first, never `left` before `joined`,
  never a second `joined` for a present peer (checked on every frame by `Roster`);
- REST peers on a node with subscribers lists the members of every node;
- a node killed with SIGKILL is detected within 3 s by default: its peers get `left` on every
  other node's rosters, and the nodes gauge and lost counter say so;
- nats-server stopped for longer than the node timeout while peers come and go on one node,
  then restarted: every roster ends with exactly the peers still connected (none stale, none
  missing), on every node.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from cluster_helpers import FAST, health, link_up, metric, nats, nodes_fixture, peer  # noqa: F401 (nats: fixture)
from helpers import Broker, chan, mint, rest_request, wait_until


class Roster:
    """A subscriber's view of a channel's roster, built from the presence frames it receives
    and checked on every frame: no `left` for an absent peer, no `joined` for a present one."""

    def __init__(self, client, channel: str):
        self.c = client
        self.channel = channel
        self.members: set[str] = set()
        self.metadata: dict[str, dict] = {}

    def apply(self, m: dict) -> None:
        if m.get("type") != "presence" or m.get("channel") != self.channel:
            return
        for j in m["joined"]:
            p = j["peerId"]
            assert p not in self.members, f"{self.c.name}: second joined for {p}: {m}"
            self.members.add(p)
            self.metadata[p] = j.get("metadata")
        for left in m["left"]:
            p = left["peerId"]
            assert p in self.members, f"{self.c.name}: left before joined for {p}: {m}"
            self.members.discard(p)

    def pump(self, seconds: float = 0.1) -> None:
        for m in self.c.collect(seconds):
            self.apply(m)

    def wait_for(self, expected: set[str], timeout: float = 5.0) -> float:
        """Pumps until the roster is `expected`; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.pump(0.05)
            if self.members == expected:
                return time.monotonic() - t0
        raise AssertionError(f"{self.c.name}: roster {sorted(self.members)}, expected {sorted(expected)}")

    def stays(self, expected: set[str], seconds: float = 0.5) -> None:
        """The roster is and stays `expected` (no event) for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.05)
            assert self.members == expected, f"{self.c.name}: roster {sorted(self.members)}, expected {sorted(expected)}"


def rest_peers(b: Broker, ch: str) -> set[str]:
    r = rest_request(b, "GET", f"/v1/channels/{ch}/peers")
    assert r.status == 200, r
    return {p["peerId"] for p in json.loads(r.body)["peers"]}


def join(b: Broker, name: str, ch: str, shard=None) -> Roster:
    """`name` connects to `b` and subscribes; its roster starts from the snapshot."""
    c = peer(b, name, shard=shard)
    r = Roster(c, ch)
    r.apply(c.subscribe(ch))
    return r


nodes = nodes_fixture("p")


def test_a_roster_spans_the_nodes_and_a_peer_on_two_nodes_is_one_entry(nodes):
    a, b, c = nodes
    ch = chan("cpres")
    alice = join(a, "alice", ch, shard=0)
    alice.wait_for(set())
    bob = join(b, "bob", ch, shard=1)
    bob.wait_for({"alice"})
    alice.wait_for({"bob"})
    carol = join(c, "carol", ch, shard=0)
    for r, expected in ((alice, {"bob", "carol"}), (bob, {"alice", "carol"}), (carol, {"alice", "bob"})):
        r.wait_for(expected)
    # carol again, on a second node and the other shard: no event anywhere.
    carol2 = join(a, "carol", ch, shard=1)
    carol2.wait_for({"alice", "bob"})
    for r, expected in ((alice, {"bob", "carol"}), (bob, {"alice", "carol"}), (carol, {"alice", "bob"})):
        r.stays(expected, 0.4)
    assert rest_peers(a, ch) == rest_peers(b, ch) == rest_peers(c, ch) == {"alice", "bob", "carol"}
    # carol's first node goes: she is still on a, nobody hears anything.
    carol.c.close()
    for r, expected in ((alice, {"bob", "carol"}), (bob, {"alice", "carol"})):
        r.stays(expected, 0.5)
    assert rest_peers(b, ch) == {"alice", "bob", "carol"}
    # Her last connection goes: `left` once on every node.
    carol2.c.close()
    alice.wait_for({"bob"})
    bob.wait_for({"alice"})
    assert rest_peers(a, ch) == rest_peers(b, ch) == {"alice", "bob"}
    # bob unsubscribes (stays connected): left on a.
    bob.c.unsubscribe(ch)
    alice.wait_for(set())
    assert rest_peers(a, ch) == {"alice"}


def test_a_large_roster_crosses_in_parts_and_arrives_whole(nodes):
    """240 members with 4 KiB of metadata each on one node (about 1 MiB of roster, over the
    256 KiB part budget of a membership): a subscriber on another node gets all of them."""
    a, b, _ = nodes
    ch = chan("cbig")
    meta = {"blob": "z" * 4000}
    members = []
    for i in range(240):
        m = a.connect(mint(f"m{i:03}", peerMetadata=meta), shard=i % 2, name=f"m{i}")
        m.subscribe(ch, presence=False)
        members.append(m)
    watcher = join(b, "watcher", ch)
    watcher.wait_for({f"m{i:03}" for i in range(240)}, timeout=10)
    assert all(watcher.metadata[f"m{i:03}"] == meta for i in range(240))
    assert metric(b, "ringcast_cluster_presence_total", direction="received") >= 2


def test_a_node_killed_with_sigkill_is_detected_within_3_s(nats, nodes):
    a, b, _ = nodes
    victim = Broker(args=[*FAST, "--nats-url", nats.url, "--node-id", "victim"], shards=2, name="victim")
    try:
        wait_until(lambda: health(a)["cluster"]["nodes"] == 4, timeout=10, what="a sees the victim")
        ch = chan("ckill")
        alice = join(a, "alice", ch)
        bob = join(b, "bob", ch)
        dave = join(victim, "dave", ch, shard=0)
        erin = join(victim, "erin", ch, shard=1)
        for r in (alice, bob):
            r.wait_for({"alice", "bob", "dave", "erin"} - {r.c.name})
        lost = metric(a, "ringcast_cluster_nodes_lost_total")
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        alice.wait_for({"bob"}, timeout=6)
        took = time.monotonic() - killed
        bob.wait_for({"alice"}, timeout=6)
        print(f"SIGKILL detected and dave, erin left on a in {took * 1000:.0f} ms (bound 3,000)")
        assert took <= 3.0, took
        assert metric(a, "ringcast_cluster_nodes_lost_total") == lost + 1
        assert health(a)["cluster"]["nodes"] == 3
        assert rest_peers(a, ch) == {"alice", "bob"}
        del dave, erin
    finally:
        victim.stop()


def test_a_restarted_node_replaces_its_old_incarnation_at_once(nats, nodes):
    """Restarted under the same node id faster than the timeout: its old members leave at its
    first heartbeat, its new ones join."""
    a = nodes[0]
    args = [*FAST, "--nats-url", nats.url, "--node-id", "phoenix"]
    first = Broker(args=args, shards=2, name="phoenix1")
    wait_until(lambda: health(a)["cluster"]["nodes"] == 4, timeout=10, what="a knows phoenix")
    ch = chan("creborn")
    alice = join(a, "alice", ch)
    old = join(first, "old", ch)
    alice.wait_for({"old"})
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    second = Broker(args=args, shards=2, name="phoenix2")
    try:
        t0 = time.monotonic()
        join(second, "new", ch)
        took = alice.wait_for({"new"}, timeout=5)
        print(f"restarted node: roster {{new}} after {1000 * (time.monotonic() - t0):.0f} ms")
        # Its first heartbeat replaced the old incarnation: well before the 2.5 s timeout.
        assert took < 1.5, took
        del old
    finally:
        first.stop()
        second.stop()


def test_nats_restart_reconciles_every_roster_with_no_stale_member(nats, nodes):
    a, b, c = nodes
    ch = chan("crecon")
    alice = join(a, "alice", ch)
    bob = join(b, "bob", ch)
    carl = join(c, "carl", ch)
    for r in (alice, bob, carl):
        r.wait_for({"alice", "bob", "carl"} - {r.c.name})
    nats.stop()
    wait_until(lambda: not any(link_up(n) for n in nodes), timeout=10, what="links down")
    # While NATS is away: bob leaves, fred joins on b; each node keeps serving its own.
    bob.c.close()
    fred = join(b, "fred", ch)
    # Past the node timeout every node has lost the others: only local members remain.
    alice.wait_for(set(), timeout=6)
    fred.wait_for(set(), timeout=6)
    nats.start()
    wait_until(lambda: all(link_up(n) for n in nodes), timeout=20, what="links back")
    t0 = time.monotonic()
    for r, expected in ((alice, {"fred", "carl"}), (fred, {"alice", "carl"}), (carl, {"alice", "fred"})):
        r.wait_for(expected, timeout=10)
    print(f"rosters reconciled {1000 * (time.monotonic() - t0):.0f} ms after every link was back")
    for n in nodes:
        assert rest_peers(n, ch) == {"alice", "fred", "carl"}, n.name
    for r, expected in ((alice, {"fred", "carl"}), (fred, {"alice", "carl"}), (carl, {"alice", "fred"})):
        r.stays(expected, 0.5)


def test_rest_peers_kick_and_usage_answer_for_the_whole_cluster(nodes):
    """REST on a node with no subscriber and no connection of its own still answers for every
    node: the channel's members, the peer's connections closed (4020) everywhere, the usage
    summed."""
    a, b, c = nodes
    ch = chan("crest")
    join(a, "ann", ch)
    join(b, "ben", ch)
    r = rest_request(c, "GET", f"/v1/channels/{ch}/peers")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert {p["peerId"] for p in body["peers"]} == {"ann", "ben"}
    assert body["cluster"] == {"nodes": 3, "answered": 3}

    def usage(n):
        r = rest_request(n, "GET", "/v1/usage")
        assert r.status == 200, r
        return json.loads(r.body)

    before = [usage(n)["concurrentNow"] for n in nodes]
    assert len(set(before)) == 1, f"every node answers for the cluster: {before}"
    kicked = [peer(a, "kim", shard=0), peer(a, "kim", shard=1), peer(b, "kim")]
    wait_until(lambda: usage(c)["concurrentNow"] == before[0] + 3, timeout=5, what="usage counts every node")
    u = usage(c)
    assert u["cluster"] == {"nodes": 3, "answered": 3} and u["peakConcurrent"] >= u["concurrentNow"]
    r = rest_request(c, "DELETE", "/v1/peers/kim")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert body["closed"] == 3 and body["cluster"] == {"nodes": 3, "answered": 3}, body
    for k in kicked:
        assert k.expect_close(timeout=5)[0] == 4020
    wait_until(lambda: usage(b)["concurrentNow"] == before[0], timeout=5, what="usage back")
