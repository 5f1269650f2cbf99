"""Verifies that GET /metrics (Prometheus text format, no key needed) reports what the broker
really does, read through the real binary: connections per shard, subscriptions and channels
going up and down, messages and bytes in and out, deliveries counting every subscriber reached on
every shard, auth failures by reason (including the 4010 app cap), per-IP 429 upgrade refusals,
rate-limit and slow-consumer closes, admin disconnects, the cross-shard queue depth of every shard,
and REST requests by status."""

from __future__ import annotations

import http.client
import re
import time

from helpers import (
    KEY_ID,
    SECRET,
    Broker,
    chan,
    connect_on_distinct_shards,
    expect_rejected,
    http_exchange,
    make_config,
    mint,
    rest_metrics,
    rest_request,
    upgrade_request,
    wait_until,
)

CAP_KEY_ID = "sk_id_metcap1"
CAP_SECRET = "sk_secret_metcap_0123456789abcdefghijkl"
CONFIG = make_config(
    extra_apps=f"""
[[apps]]
id = "metcap"
max_connections = 1
[[apps.secret_keys]]
id = "{CAP_KEY_ID}"
secret = "{CAP_SECRET}"
"""
)

SAMPLE_RE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9]+(\.[0-9]+)?$')


def test_metrics_text_format_and_families():
    with Broker(CONFIG, name="metrics-format") as b:
        r = rest_request(b, "GET", "/metrics", auth=None)
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
        text = r.body.decode()
        types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                assert name not in types, f"family {name} declared twice"
                types[name] = kind
            elif line.startswith("# HELP "):
                continue
            else:
                assert SAMPLE_RE.match(line), f"bad sample line {line!r}"
                name = line.split("{")[0].split(" ")[0]
                assert name in types, f"sample {name} before its TYPE line"
        for family in [
            "ringcast_connections", "ringcast_subscriptions", "ringcast_channels", "ringcast_messages_in_total",
            "ringcast_bytes_in_total", "ringcast_messages_out_total", "ringcast_bytes_out_total",
            "ringcast_deliveries_total", "ringcast_slow_consumer_closes_total", "ringcast_rate_limit_closes_total",
            "ringcast_auth_failures_total", "ringcast_cross_shard_queue_depth", "ringcast_rest_requests_total",
            "ringcast_upgrades_throttled_total", "ringcast_admin_disconnects_total", "ringcast_publications_total",
            "ringcast_recv_buffers_exhausted_total", "ringcast_io_cq_overflows_total",
            "ringcast_handshakes_refused_total", "ringcast_rest_write_timeouts_total",
            "ringcast_rest_connections_refused_total",
        ]:
            assert family in types, f"{family} missing from /metrics"
        m = rest_metrics(b)
        for s in ("0", "1"):
            assert f'ringcast_connections{{shard="{s}"}}' in m
            assert f'ringcast_cross_shard_queue_depth{{shard="{s}"}}' in m
        assert m["ringcast_shards"] == 2 and m["ringcast_draining"] == 0


def test_metrics_follow_connections_subscriptions_and_traffic():
    with Broker(CONFIG, name="metrics-traffic") as b:
        m0 = rest_metrics(b)
        assert m0['ringcast_connections{shard="0"}'] == 0 and m0["ringcast_subscriptions"] == 0
        ch = chan("met")
        pub, s0, s1 = connect_on_distinct_shards(b, [mint("m-pub"), mint("m-s1"), mint("m-s2")])
        # pub on shard 0, s0 on shard 1, s1 on shard 0 (connect_spread alternates shards).
        s0.subscribe(ch)
        s1.subscribe(ch)
        s1.subscribe(chan("met-other"))
        m1 = rest_metrics(b)
        assert m1['ringcast_connections{shard="0"}'] == 2 and m1['ringcast_connections{shard="1"}'] == 1, m1
        assert m1["ringcast_subscriptions"] == 3 and m1["ringcast_channels"] == 2, m1
        n = 10
        payload = "x" * 500
        for i in range(n):
            pub.publish(ch, {"i": i, "p": payload})
        for c in (s0, s1):
            for _ in range(n):
                c.expect_type("message", skip=True)
        m2 = wait_until(lambda: (lambda m: m if m["ringcast_deliveries_total"] >= 2 * n else None)(rest_metrics(b)),
                        what="deliveries to be counted")
        assert m2["ringcast_deliveries_total"] == 2 * n, m2
        assert m2["ringcast_publications_total"] == n
        assert m2["ringcast_messages_in_total"] - m1["ringcast_messages_in_total"] == n
        assert m2["ringcast_bytes_in_total"] - m1["ringcast_bytes_in_total"] >= n * 500
        # n acks to the publisher + n messages to each subscriber were written.
        assert m2["ringcast_messages_out_total"] - m1["ringcast_messages_out_total"] >= 3 * n
        assert m2["ringcast_bytes_out_total"] - m1["ringcast_bytes_out_total"] >= 2 * n * 500
        # REST publishes are delivered (and counted) the same way.
        assert rest_request(b, "POST", f"/v1/channels/{ch.replace('/', '%2F')}/publish", {"data": 1}).status == 200
        for c in (s0, s1):
            c.expect_type("message", skip=True)
        m3 = wait_until(lambda: (lambda m: m if m["ringcast_deliveries_total"] >= 2 * n + 2 else None)(rest_metrics(b)),
                        what="REST deliveries to be counted")
        assert m3["ringcast_rest_publications_total"] == 1
        # Departures bring the gauges back down.
        s1.close()
        s0.unsubscribe(ch)
        m4 = wait_until(lambda: (lambda m: m if m["ringcast_subscriptions"] == 0 and m["ringcast_channels"] == 0
                                  and m['ringcast_connections{shard="0"}'] == 1 else None)(rest_metrics(b)),
                        what="gauges to drop")
        assert m4['ringcast_connections_opened_total{shard="0"}'] == m1['ringcast_connections_opened_total{shard="0"}']
        assert all(m4[f'ringcast_cross_shard_queue_depth{{shard="{s}"}}'] == 0 for s in "01")


def test_metrics_auth_failures_by_reason_and_admission():
    with Broker(CONFIG, name="metrics-auth", args=["--upgrades-per-ip", "5"]) as b:
        assert expect_rejected(b, b.url(token="garbage"))[0] == 4001
        assert expect_rejected(b, b.url(token=mint("late", exp_in=-10)))[0] == 4002
        assert expect_rejected(b, b.url(token=mint("outside", key_id="sk_id_room1",
                                                     secret="sk_secret_room_0123456789abcdefghijklmnopq",
                                                     channels=["lobby"])))[0] == 4003
        keep = b.connect(mint("cap-1", key_id=CAP_KEY_ID, secret=CAP_SECRET))
        assert expect_rejected(b, b.url(token=mint("cap-2", key_id=CAP_KEY_ID, secret=CAP_SECRET)))[0] == 4010
        m = rest_metrics(b)
        for reason, want in [("invalid_credentials", 1), ("token_expired", 1), ("channels_not_authorized", 1), ("connection_cap", 1)]:
            assert m[f'ringcast_auth_failures_total{{reason="{reason}"}}'] == want, (reason, m)
        # Per-IP upgrade throttle: the 6th upgrade from one source address is refused with 429.
        statuses = []
        for _ in range(8):
            req, _ = upgrade_request(b.port, b.path(token=mint("ip")))
            statuses.append(http_exchange(b.port, req, source_ip="127.0.0.77")[0])
        assert statuses[:5] == [101] * 5 and statuses[5:] == [429] * 3, statuses
        m = rest_metrics(b)
        assert m["ringcast_upgrades_throttled_total"] == 3, m
        keep.ping_pong()


def test_metrics_rate_limit_and_admin_closes():
    args = ["--rate-limit-per-sec", "5", "--rate-limit-burst", "5"]
    with Broker(CONFIG, name="metrics-closes", args=args) as b:
        # 4011: a burst over the bucket.
        c = b.connect(mint("flooder"))
        for i in range(30):
            try:
                c.send_json({"type": "publish", "channel": "rl/x", "data": i})
            except Exception:
                break
        assert c.expect_close()[0] == 4011
        # 4020: an admin disconnect.
        victim = b.connect(mint("victim"))
        assert rest_request(b, "DELETE", "/v1/peers/victim").json == {"peerId": "victim", "closed": 1}
        assert victim.expect_close()[0] == 4020
        m = wait_until(lambda: (lambda m: m if m["ringcast_rate_limit_closes_total"] >= 1
                                and m["ringcast_admin_disconnects_total"] >= 1 else None)(rest_metrics(b)),
                       what="close counters")
        assert m["ringcast_rate_limit_closes_total"] == 1, m
        assert m["ringcast_admin_disconnects_total"] == 1, m
        assert m["ringcast_slow_consumer_closes_total"] == 0, m


def test_metrics_slow_consumer_close():
    args = ["--max-outbound-bytes", "65536", "--rate-limit-per-sec", "1000000", "--rate-limit-burst", "1000000",
            "--close-timeout-ms", "300"]
    with Broker(CONFIG, name="metrics-slow", args=args) as b:
        ch = chan("slow")
        slow = b.raw(mint("slow-sub"), rcvbuf=4096)
        assert slow.expect_type("welcome")
        slow.send_json({"type": "subscribe", "channel": ch, "requestId": "s"})
        assert slow.expect_type("ack")["requestId"] == "s"
        pub = b.connect(mint("slow-pub"))
        pad = "p" * 4000
        for _ in range(60):  # at most 60 x 50 x 4 kB = 12 MB, far beyond any socket buffer
            for i in range(50):
                pub.send_json({"type": "publish", "channel": ch, "data": {"pad": pad}})
            pub.ping_pong()
            if rest_metrics(b)["ringcast_slow_consumer_closes_total"] >= 1:
                break
        m = wait_until(lambda: (lambda m: m if m["ringcast_slow_consumer_closes_total"] >= 1 else None)(rest_metrics(b)),
                       what="the slow consumer to be cut off")
        assert m["ringcast_slow_consumer_closes_total"] == 1, m
        assert m["ringcast_rate_limit_closes_total"] == 0, m
        pub.ping_pong()
        slow.close()


def test_metrics_count_rest_requests_by_status():
    with Broker(CONFIG, name="metrics-rest") as b:
        before = rest_metrics(b)
        rest_request(b, "GET", "/v1/usage")
        rest_request(b, "GET", "/v1/usage", auth=None)
        rest_request(b, "GET", "/v1/usage", auth=None)
        rest_request(b, "GET", "/nope")
        conn = http.client.HTTPConnection("127.0.0.1", b.rest_port, timeout=5)
        conn.putrequest("POST", "/v1/tokens")  # a 40 kB body announced, never sent: 413 at once
        conn.putheader("Content-Length", "40000")
        conn.putheader("Authorization", f"Bearer {KEY_ID}:{SECRET}")
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        after = rest_metrics(b)

        def delta(status):
            key = f'ringcast_rest_requests_total{{status="{status}"}}'
            return after[key] - before[key]

        # `before` itself was one 200 (the scrape); `after` is counted after it answers.
        assert delta("200") == 2 and delta("401") == 2 and delta("404") == 1 and delta("413") == 1, after


def test_metrics_client_can_scrape_concurrently_with_traffic():
    """Scrapes while a publisher and subscribers on both shards run; counters only grow."""
    with Broker(CONFIG, name="metrics-concurrent") as b:
        ch = chan("conc")
        pub, sub = connect_on_distinct_shards(b, [mint("cc-pub"), mint("cc-sub")])
        sub.subscribe(ch)
        last = 0.0
        for i in range(20):
            pub.publish(ch, i, ack=False)
            m = rest_metrics(b)
            assert m["ringcast_messages_in_total"] >= last
            last = m["ringcast_messages_in_total"]
        got = [sub.expect_type("message", skip=True)["data"] for _ in range(20)]
        assert got == list(range(20))
