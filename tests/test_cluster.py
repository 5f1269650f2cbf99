"""Verifies protocol.md §9 (the cluster over NATS), the parts built so far (docs/cluster.md):
three real ringcast nodes (2 shards each) joined through a real nats-server started here, with
real WebSocket clients (python-websockets) and REST.

- a publication (WebSocket or REST, on any node) reaches every subscriber on every node,
  exactly once, in per-publisher order, with 2 publishers on different nodes at once;
- interest: a node receives only channels it has subscribers for; a publication crosses NATS
  once per interested node (the sender's `published` and each receiver's `received` counters
  count publications, not subscribers); interest goes when the last subscriber leaves;
- channel names that are not NATS tokens (`.`, spaces, `*`, `>`, empty segments) never collide
  or leak into another channel, and apps stay isolated across nodes;
- pattern subscriptions (§8.3) receive matching publications from other nodes, and a node whose
  channel and pattern subscriptions overlap delivers each publication once (the link drops
  the second copy NATS sends it);
- `send` reaches the target's connections on every node (acked when some node has one,
  `peer_not_found` when none does, again after the peer left every node);
- /healthz and /metrics report the link; nats-server stopped: each node keeps serving its own
  connections and counts what it could not forward; nats-server back on the same port: the
  link reconnects by itself, interest is re-established, and publications cross again.
"""

from __future__ import annotations

import threading
import time

import pytest

from cluster_helpers import (  # noqa: F401 (nats: fixture)
    health,
    link_up,
    metric,
    nats,
    nodes_fixture,
    peer,
    publish_concurrently,
)
from helpers import (
    OTHER_KEY_ID,
    OTHER_SECRET,
    Broker,
    chan,
    mint,
    rest_request,
    wait_until,
)


nodes = nodes_fixture("n")


@pytest.fixture(autouse=True)
def no_interest_left(request):
    """Each test starts with no channel interest anywhere (the previous test's clients are
    closed after it, and their channels' interest goes shortly after), so that `settle`
    counts exactly this test's channels."""
    if "nodes" in request.fixturenames:
        for b in request.getfixturevalue("nodes"):
            wait_until(
                lambda b=b: metric(b, "ringcast_cluster_interest", kind="channel") == 0
                and metric(b, "ringcast_cluster_interest", kind="peer") == 0
                and metric(b, "ringcast_cluster_interest", kind="pattern") == 0,
                timeout=5,
                what=f"{b.name} interest cleared",
            )
    yield


def settle(*brokers: Broker, channel_count_at_least: int = 1) -> None:
    """Waits until every node listed has NATS interest for at least that many channels (the
    interest is set up by the channel's owner shard right after the subscribe; tests start
    from none, see `no_interest_left`)."""
    for b in brokers:
        wait_until(
            lambda b=b: metric(b, "ringcast_cluster_interest", kind="channel") >= channel_count_at_least,
            timeout=5,
            what=f"{b.name} interest",
        )
    time.sleep(0.1)  # the SUB reaches nats-server after the gauge moves


def test_healthz_and_metrics_report_the_link(nodes):
    for i, b in enumerate(nodes):
        # Every node hears the others' heartbeats within one heartbeat_ms (500 ms).
        wait_until(lambda b=b: health(b)["cluster"].get("nodes") == 3, timeout=5, what="nodes alive")
        h = health(b)
        assert h["status"] == "ok"
        assert h["cluster"] == {"node": f"n{i}", "nats": "connected", "nodes": 3}
        assert metric(b, "ringcast_cluster_link_up", node=f"n{i}") == 1


def test_a_publication_reaches_every_subscriber_on_every_node_once_in_order(nodes):
    ch = chan("cl")
    subs = []
    for i, b in enumerate(nodes):
        for s in range(2):  # one subscriber per shard per node
            c = peer(b, f"sub{i}{s}", shard=s)
            c.subscribe(ch)
            subs.append(c)
    settle(*nodes)
    pubs = [peer(nodes[0], "pubA", shard=0), peer(nodes[2], "pubC", shard=1)]
    per = 300
    publish_concurrently(ch, {"pubA": per, "pubC": per}, pubs)
    for c in subs:
        got = {"pubA": [], "pubC": []}
        deadline = time.monotonic() + 10
        while sum(map(len, got.values())) < 2 * per and time.monotonic() < deadline:
            for m in c.collect(0.2):
                if m["type"] == "message" and m["channel"] == ch:
                    got[m["data"]["p"]].append(m["data"]["k"])
        for name, ks in got.items():
            assert ks == list(range(per)), f"{c.name} from {name}: {len(ks)} messages, in order: {ks == sorted(ks)}"
    # The publishers got nothing back (a publisher never receives its own message), and
    # the other publisher's messages only if subscribed (they are not).
    for p in pubs:
        p.no_message_within(0.2, ignore=("presence",))


def test_rest_publish_on_any_node_reaches_the_others(nodes):
    ch = chan("clrest")
    c1, c2 = peer(nodes[1], "r1"), peer(nodes[2], "r2")
    c1.subscribe(ch)
    c2.subscribe(ch)
    settle(nodes[1], nodes[2])
    r = rest_request(nodes[0], "POST", f"/v1/channels/{ch}/publish", {"data": {"via": "rest"}})
    assert r.status == 200, r
    for c in (c1, c2):
        m = c.expect_type("message", skip=True, channel=ch)
        assert m["data"] == {"via": "rest"}


def test_interest_a_publication_crosses_nats_once_per_interested_node(nodes):
    a, b, c = nodes
    ch = chan("clint")
    subs = [peer(b, f"i{k}", shard=k % 2) for k in range(5)]
    for s in subs:
        s.subscribe(ch)
    interest_c = metric(c, "ringcast_cluster_interest", kind="channel")
    settle(b)
    before = {n.name: (metric(n, "ringcast_cluster_published_total"), metric(n, "ringcast_cluster_received_total")) for n in nodes}
    p = peer(a, "ip")
    n = 40
    for k in range(n):
        p.publish(ch, k, ack=(k == n - 1))
    for s in subs:
        got = []
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            got += [m["data"] for m in s.collect(0.1) if m["type"] == "message"]
        assert got == list(range(n))
    time.sleep(0.3)
    after = {nd.name: (metric(nd, "ringcast_cluster_published_total"), metric(nd, "ringcast_cluster_received_total")) for nd in nodes}
    assert after[a.name][0] - before[a.name][0] == n, "once per publication, not per subscriber or node"
    assert after[b.name][1] - before[b.name][1] == n, "5 subscribers on b: the publication crossed once"
    assert after[c.name][1] == before[c.name][1], "c has no subscriber: it received nothing"
    assert metric(c, "ringcast_cluster_interest", kind="channel") == interest_c
    # The last subscriber leaves: b drops its interest.
    interest_b = metric(b, "ringcast_cluster_interest", kind="channel")
    for s in subs:
        s.unsubscribe(ch)
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="channel") == interest_b - 1, timeout=5, what="interest dropped")


def test_channel_names_that_are_not_nats_tokens_never_collide(nodes):
    a, b = nodes[0], nodes[1]
    base = chan("clname")
    names = [f"{base}/x.y", f"{base}/x/y", f"{base}/x y", f"{base}/*", f"{base}/>", f"{base}//x", f"{base}/x", f"{base}/~78"]
    subs = {}
    for i, name in enumerate(names):
        c = peer(b, f"nm{i}")
        c.subscribe(name)
        subs[name] = c
    settle(b, channel_count_at_least=len(names))
    p = peer(a, "nmpub")
    for name in names:
        p.publish(name, {"for": name})
    for name, c in subs.items():
        m = c.expect_type("message", skip=True)
        assert m["channel"] == name and m["data"] == {"for": name}
        c.no_message_within(0.3, ignore=("presence",))


def test_apps_stay_isolated_across_nodes(nodes):
    a, b = nodes[0], nodes[1]
    ch = chan("clapp")
    mine = peer(b, "appmine")
    mine.subscribe(ch)
    theirs = b.connect(mint("apptheirs", key_id=OTHER_KEY_ID, secret=OTHER_SECRET), name="apptheirs")
    theirs.subscribe(ch)
    settle(b)
    peer(a, "apppub").publish(ch, "test-app")
    assert mine.expect_type("message", skip=True, channel=ch)["data"] == "test-app"
    theirs.no_message_within(0.4, ignore=("presence",))


def test_nats_down_local_traffic_continues_and_drops_are_counted_then_it_reconnects(nats, nodes):
    a, b = nodes[0], nodes[1]
    ch = chan("cldown")
    local = peer(a, "dl-local")
    local.subscribe(ch)
    remote = peer(b, "dl-remote")
    remote.subscribe(ch)
    settle(a, b)
    p = peer(a, "dl-pub")
    p.publish(ch, "before")
    assert local.expect_type("message", skip=True)["data"] == "before"
    assert remote.expect_type("message", skip=True)["data"] == "before"

    nats.stop()
    wait_until(lambda: not link_up(a) and not link_up(b), timeout=10, what="links down")
    dropped = metric(a, "ringcast_cluster_dropped_total", reason="link_down")
    for k in range(5):
        p.publish(ch, f"down{k}")
    # Local subscribers are served as before.
    assert [local.expect_type("message", skip=True)["data"] for _ in range(5)] == [f"down{k}" for k in range(5)]
    assert metric(a, "ringcast_cluster_dropped_total", reason="link_down") == dropped + 5
    remote.no_message_within(0.3, ignore=("presence",))
    assert health(a)["status"] == "ok" and health(a)["cluster"]["nats"] == "disconnected"

    nats.start()
    wait_until(lambda: all(link_up(n) for n in nodes), timeout=20, what="links back")
    assert metric(a, "ringcast_cluster_reconnects_total") >= 1
    # async-nats re-sends the subscriptions; publications cross again.
    deadline = time.monotonic() + 10
    got = None
    k = 0
    while got is None and time.monotonic() < deadline:
        p.publish(ch, f"after{k}")
        for m in remote.collect(0.2):
            if m["type"] == "message":
                got = m["data"]
        k += 1
    assert got is not None and got.startswith("after"), "publications cross again after NATS returns"


def wait_peer_interest(b: Broker, n: int) -> None:
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="peer") >= n, timeout=5, what=f"{b.name} peer interest")
    time.sleep(0.1)  # the SUB reaches nats-server after the gauge moves


def test_send_reaches_the_peer_on_another_node_with_an_ack(nodes):
    a, b, c = nodes
    target_b1 = peer(b, "dm-target", shard=0)
    target_b2 = peer(b, "dm-target", shard=1)
    target_c = peer(c, "dm-target")
    wait_peer_interest(b, 1)
    wait_peer_interest(c, 1)
    sender = peer(a, "dm-sender")
    before = metric(a, "ringcast_cluster_directs_sent_total")
    for k in range(20):
        sender.send_to("dm-target", {"k": k})  # acked: some node holds the peer
    for t in (target_b1, target_b2, target_c):
        got = [t.expect_type("direct", skip=True)["data"]["k"] for _ in range(20)]
        assert got == list(range(20)), f"{t.name}: every direct once, in order"
        assert t.log[-1]["from"] == "dm-sender"
    assert metric(a, "ringcast_cluster_directs_sent_total") == before + 20


def test_send_to_a_peer_on_no_node_is_peer_not_found(nodes):
    a = nodes[0]
    sender = peer(a, "nf-sender")
    r = sender.request({"type": "send", "to": "nobody-anywhere", "data": 1})
    assert r["type"] == "error" and r["code"] == "peer_not_found", r


def test_send_with_the_peer_here_and_elsewhere_reaches_both(nodes):
    a, b = nodes[0], nodes[1]
    here = peer(a, "both-target")
    there = peer(b, "both-target")
    wait_peer_interest(b, 1)
    sender = peer(a, "both-sender")
    sender.send_to("both-target", "hi")
    assert here.expect_type("direct", skip=True)["data"] == "hi"
    assert there.expect_type("direct", skip=True)["data"] == "hi"


def test_a_peer_that_left_every_node_is_not_found_again(nodes):
    a, b = nodes[0], nodes[1]
    t = peer(b, "gone-target")
    wait_peer_interest(b, 1)
    sender = peer(a, "gone-sender")
    sender.send_to("gone-target", 1)
    t.close()
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="peer") == 0, timeout=5, what="peer interest gone")
    time.sleep(0.1)
    r = sender.request({"type": "send", "to": "gone-target", "data": 2})
    assert r["code"] == "peer_not_found", r


def psub(c, pattern):
    """Pattern subscribe (protocol §8.3), expecting its ack."""
    return c.ok({"type": "subscribe", "channel": pattern, "pattern": True})


def test_pattern_subscribers_receive_publications_from_other_nodes(nodes):
    a, b = nodes[0], nodes[1]
    base = chan("clpat")
    watcher = peer(b, "pat-watcher")
    psub(watcher, f"{base}/*/status")
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="pattern") == 1, timeout=5, what="pattern interest")
    time.sleep(0.1)
    p = peer(a, "pat-pub")
    for k in range(10):
        p.publish(f"{base}/agent{k}/status", k)
        p.publish(f"{base}/agent{k}/log", "not for the watcher")
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        got += [(m["channel"], m["data"]) for m in watcher.collect(0.1) if m["type"] == "message"]
    assert got == [(f"{base}/agent{k}/status", k) for k in range(10)]
    watcher.no_message_within(0.3, ignore=("presence",))
    watcher.ok({"type": "unsubscribe", "channel": f"{base}/*/status", "pattern": True})
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="pattern") == 0, timeout=5, what="pattern interest gone")


def test_overlapping_subscriptions_on_a_node_deliver_each_publication_once(nodes):
    a, b = nodes[0], nodes[1]
    base = chan("clover")
    exact = peer(b, "ov-exact")
    exact.subscribe(f"{base}/a")
    wide = peer(b, "ov-wide")
    psub(wide, f"{base}/**")
    both = peer(b, "ov-both")  # one connection holding both subscriptions
    both.subscribe(f"{base}/a")
    psub(both, f"{base}/**")
    settle(b)
    wait_until(lambda: metric(b, "ringcast_cluster_interest", kind="pattern") == 1, timeout=5, what="pattern interest")
    time.sleep(0.1)
    dups = metric(b, "ringcast_cluster_duplicates_total")
    p = peer(a, "ov-pub")
    n = 100
    for k in range(n):
        p.publish(f"{base}/a", k, ack=(k == n - 1))
    for c in (exact, wide, both):
        got = []
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            got += [m["data"] for m in c.collect(0.1) if m["type"] == "message"]
        c_more = [m["data"] for m in c.collect(0.3) if m["type"] == "message"]
        assert got + c_more == list(range(n)), f"{c.name}: each once, in order"
    # The node's channel and pattern subscriptions both matched: NATS sent every publication
    # twice, and the link dropped one copy of each.
    assert metric(b, "ringcast_cluster_duplicates_total") - dups == n


def test_nats_restart_mid_stream_loses_only_what_was_published_while_down(nats, nodes):
    """Two publishers (one per node) stream numbered publications at a steady rate while
    nats-server is stopped for about 2 s and restarted. Reported exactly: which numbers each
    remote subscriber missed. Asserted: local subscribers miss nothing; a remote subscriber
    misses one contiguous run per publisher (the outage), nothing after it, and exactly what
    the publishing node counted as dropped, plus at most a few publications that were on
    the wire when the server went (printed; measured 0 or 1)."""
    a, b = nodes[0], nodes[1]
    ch = chan("clstream")
    subs = {"a": peer(a, "st-sub-a"), "b": peer(b, "st-sub-b")}
    for s in subs.values():
        s.subscribe(ch)
    settle(a, b)
    pubs = {"a": peer(a, "st-pub-a"), "b": peer(b, "st-pub-b")}
    dropped0 = {k: metric(n, "ringcast_cluster_dropped_total") for k, n in (("a", a), ("b", b))}
    sent = {"a": 0, "b": 0}
    stop = threading.Event()

    def run(k):
        p = pubs[k]
        while not stop.is_set() and sent[k] < 5000:
            p.publish(ch, {"p": k, "k": sent[k]}, ack=False)
            sent[k] += 1
            time.sleep(0.004)
        p.sync()

    ts = [threading.Thread(target=run, args=(k,)) for k in pubs]
    for t in ts:
        t.start()
    time.sleep(1.0)
    nats.stop()
    wait_until(lambda: not link_up(a) and not link_up(b), timeout=10, what="links down")
    time.sleep(1.0)
    nats.start()
    wait_until(lambda: link_up(a) and link_up(b), timeout=20, what="links back")
    time.sleep(2.0)  # publications keep flowing after the reconnect
    stop.set()
    for t in ts:
        t.join(30)
    got = {(sk, pk): [] for sk in subs for pk in pubs}
    for sk, s in subs.items():
        want = sum(sent.values())
        deadline = time.monotonic() + 5
        n = 0
        while time.monotonic() < deadline:
            ms = [m for m in s.collect(0.3) if m["type"] == "message"]
            for m in ms:
                got[(sk, m["data"]["p"])].append(m["data"]["k"])
            n += len(ms)
            if not ms and n:
                break
        assert n <= want
    for (sk, pk), ks in got.items():
        assert ks == sorted(set(ks)), f"{sk} from {pk}: duplicates or out of order"
        missing = sorted(set(range(sent[pk])) - set(ks))
        print(f"subscriber on {sk}, publisher on {pk}: {sent[pk]} sent, {len(ks)} received, missing {len(missing)}: {missing[:3]}..{missing[-3:]}")
        if sk == pk:
            assert missing == [], "a node's own subscribers lose nothing"
            continue
        assert missing, "the outage lost something (else the test did not cut anything)"
        assert missing == list(range(missing[0], missing[-1] + 1)), f"one contiguous run: {missing}"
        assert missing[-1] < sent[pk] - 100, "nothing lost after the reconnect"
        node = a if pk == "a" else b
        counted = metric(node, "ringcast_cluster_dropped_total") - dropped0[pk]
        uncounted = len(missing) - counted
        print(f"  node {pk} counted {counted:.0f} dropped; lost on the wire when the server went: {uncounted:.0f}")
        assert counted >= 1 and counted <= len(missing)
        # Publications handed to NATS just before the server went can die with it: a few
        # at most (nothing acknowledges core NATS publications).
        assert uncounted <= 5, uncounted


def test_a_queue_group_across_nodes_gets_each_publication_exactly_once(nodes):
    """Protocol §8.2 across nodes: a group with 3 members on each of the 3 nodes; 2
    publishers on two nodes and one member that publishes too. Every publication reaches
    exactly one member cluster-wide (none lost, none twice), never its own publisher; a
    plain subscriber still gets everything; every node's members get a share."""
    ch = chan("clgroup")
    members = []
    for i, n in enumerate(nodes):
        for k in range(3):
            m = peer(n, f"gm{i}{k}", shard=k % 2)
            m.subscribe(ch, group="workers")
            members.append(m)
    plain = peer(nodes[2], "gplain")
    plain.subscribe(ch)
    for n in nodes:
        wait_until(lambda n=n: metric(n, "ringcast_cluster_interest", kind="group") >= 3, timeout=5, what="group interest")
    settle(*nodes)
    pubs = [peer(nodes[0], "gpa"), peer(nodes[1], "gpb"), members[0]]
    counts = {"gpa": 300, "gpb": 300, members[0].name: 60}
    publish_concurrently(ch, counts, pubs)
    total = sum(counts.values())
    got: dict[str, list] = {m.name: [] for m in members}
    seen: dict[tuple, list] = {}
    deadline = time.monotonic() + 10
    while len(seen) < total and time.monotonic() < deadline:
        for m in members:
            for f in m.collect(0.05):
                if f["type"] == "message":
                    key = (f["data"]["p"], f["data"]["k"])
                    seen.setdefault(key, []).append(m.name)
                    got[m.name].append(key)
    time.sleep(0.5)
    for m in members:
        for f in m.collect(0.05):
            if f["type"] == "message":
                seen.setdefault((f["data"]["p"], f["data"]["k"]), []).append(m.name)
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, f"{len(twice)} publications reached more than one member: {list(twice.items())[:3]}"
    assert len(seen) == total, f"{total - len(seen)} publications reached no member"
    assert all(v[0] != members[0].name for k, v in seen.items() if k[0] == members[0].name), "a publisher is never picked"
    share = {i: sum(len(got[f"gm{i}{k}"]) for k in range(3)) for i in range(3)}
    print(f"queue group across 3 nodes: {total} publications, per node {share}, per member {sorted(len(v) for v in got.values())}")
    assert all(s > total * 0.15 for s in share.values()), share
    plain_got = [f for f in plain.collect(0.5) if f["type"] == "message"]
    assert len(plain_got) == total
