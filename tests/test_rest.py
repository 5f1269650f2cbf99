"""Verifies the REST control plane (protocol.md section 7) through the real binary with a real HTTP
client (http.client): every endpoint with its exact response shape and every status code it can
answer (200, 400, 401, 403, 404, 405, 413; 503 is in test_shutdown.py); a REST publish reaching
WebSocket subscribers on both shards as a normal `message` (with `fromMetadata` only for
`includeSenderMetadata` subscribers); DELETE closing a peer's connections on both shards with 4020
and counting them; the peers roster across shards; usage (concurrent, peak, messages) and the 4010
cap; keep-alive; credentials never in the logs; and docs/openapi.yaml validated by
openapi-spec-validator and exercised by schemathesis against the running broker."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import jwt
import pytest

from helpers import (
    KEY_ID,
    OTHER_KEY_ID,
    OTHER_SECRET,
    REPO,
    ROOM_KEY_ID,
    ROOM_SECRET,
    SECRET,
    Broker,
    Client,
    chan,
    connect_on_distinct_shards,
    make_config,
    mint,
    raw_socket,
    read_http_head,
    rest_request,
    wait_until,
)

SUB_KEY_ID = "sk_id_subonly1"
SUB_SECRET = "sk_secret_subonly_0123456789abcdefghijkl"
CAP_KEY_ID = "sk_id_restcap1"
CAP_SECRET = "sk_secret_restcap_0123456789abcdefghijk"

REST_CONFIG = make_config(
    extra_apps=f"""
[[apps]]
id = "restricted"
[[apps.secret_keys]]
id = "{SUB_KEY_ID}"
secret = "{SUB_SECRET}"
actions = ["subscribe"]

[[apps]]
id = "capped"
max_connections = 2
[[apps.secret_keys]]
id = "{CAP_KEY_ID}"
secret = "{CAP_SECRET}"
"""
)

UNAUTHORIZED_BODY = {
    "error": "unauthorized",
    "message": "a valid secret key is required: Authorization: Bearer sk_id_…:sk_secret_…",
}


@pytest.fixture(scope="module")
def rb():
    b = Broker(REST_CONFIG, name="rest-broker")
    yield b
    b.stop()


def publish_path(channel: str) -> str:
    return f"/v1/channels/{quote(channel, safe='')}/publish"


def peers_path(channel: str) -> str:
    return f"/v1/channels/{quote(channel, safe='')}/peers"


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.headers.get("content-type") == "application/json", r.headers
    assert set(r.json) == {"error", "message"} and r.json["error"] == code, r.json
    assert isinstance(r.json["message"], str) and r.json["message"], r.json


# ---------------------------------------------------------------------------------------------
# publish
# ---------------------------------------------------------------------------------------------


def test_rest_publish_reaches_subscribers_on_both_shards(rb):
    ch = chan("rest/pub")
    plain, meta = connect_on_distinct_shards(rb, [mint("r-plain"), mint("r-meta")])
    plain.subscribe(ch)
    meta.subscribe(ch, includeSenderMetadata=True)
    # With peerMetadata: only the includeSenderMetadata subscriber sees fromMetadata.
    r = rest_request(rb, "POST", publish_path(ch), {"data": {"x": [1, "two", None]}, "from": "backend", "peerMetadata": {"role": "bot"}})
    assert r.status == 200 and r.json == {"channel": ch}, r
    assert r.headers["content-type"] == "application/json"
    m = plain.expect_type("message", skip=True)
    assert m == {"type": "message", "channel": ch, "from": "backend", "data": {"x": [1, "two", None]}}, m
    m = meta.expect_type("message", skip=True)
    assert m == {"type": "message", "channel": ch, "from": "backend", "data": {"x": [1, "two", None]}, "fromMetadata": {"role": "bot"}}, m
    # Without peerMetadata: nobody gets fromMetadata; default from is "system"; null data is delivered.
    assert rest_request(rb, "POST", publish_path(ch), {"data": None}).status == 200
    for c in (plain, meta):
        assert c.expect_type("message") == {"type": "message", "channel": ch, "from": "system", "data": None}
    # Order is kept for one REST client, and every data type arrives verbatim.
    values = ["s", 0, -1.5, True, [], {}, {"nested": {"deep": [1]}}, "ünï"]
    for v in values:
        assert rest_request(rb, "POST", publish_path(ch), {"data": v, "from": "seq"}).status == 200
    for c in (plain, meta):
        got = [c.expect_type("message")["data"] for _ in values]
        assert got == values
        c.no_message_within(0.2)


def test_rest_publish_channel_is_url_encoded_with_slashes_and_unicode(rb):
    ch = f"{chan('rest/enc')}/a b/🎉?#&%"
    sub = rb.connect(mint("r-enc"))
    sub.subscribe(ch)
    r = rest_request(rb, "POST", publish_path(ch), {"data": 1})
    assert r.status == 200 and r.json == {"channel": ch}, r
    assert sub.expect_type("message", skip=True)["channel"] == ch
    # A literal "/" inside the channel is accepted too.
    ch2 = chan("rest/lit")
    sub.subscribe(ch2)
    r = rest_request(rb, "POST", f"/v1/channels/{ch2}/publish", {"data": 2})
    assert r.status == 200 and r.json == {"channel": ch2}, r
    m = sub.expect_type("message", skip=True)
    assert (m["channel"], m["data"]) == (ch2, 2)


def test_rest_publish_unauthorized_never_says_why(rb):
    ch = chan("rest/401")
    variants = [
        None,  # no Authorization header
        {"Authorization": f"Bearer {KEY_ID}:{SECRET}x"},  # wrong secret
        {"Authorization": f"Bearer {KEY_ID}"},  # the id alone
        {"Authorization": f"Bearer {KEY_ID}:"},
        {"Authorization": f"Basic {KEY_ID}:{SECRET}"},  # wrong scheme
        {"Authorization": f"Bearer sk_id_nobody:{SECRET}"},  # unknown id
        {"Authorization": "Bearer pk_live_test1"},  # wrong key type
        {"Authorization": f"Bearer {SECRET}:{KEY_ID}"},
        {"Authorization": "garbage"},
    ]
    for h in variants:
        r = rest_request(rb, "POST", publish_path(ch), {"data": 1}, headers=h, auth=None)
        assert r.status == 401, (h, r)
        assert r.json == UNAUTHORIZED_BODY, (h, r.json)
        assert r.headers.get("www-authenticate") == "Bearer"
    # Scheme is case-insensitive.
    r = rest_request(rb, "POST", publish_path(ch), {"data": 1}, headers={"Authorization": f"bearer {KEY_ID}:{SECRET}"}, auth=None)
    assert r.status == 200, r
    for path, method in [("/v1/tokens", "POST"), (peers_path(ch), "GET"), ("/v1/peers/x", "DELETE"), ("/v1/usage", "GET")]:
        r = rest_request(rb, method, path, {"peerId": "x"} if method == "POST" else None, auth=None)
        assert r.status == 401 and r.json == UNAUTHORIZED_BODY, (path, r)


def test_rest_publish_forbidden_and_bad_requests(rb):
    # 403: outside the key's channel patterns; key without the publish action.
    r = rest_request(rb, "POST", publish_path("lobby"), {"data": 1}, auth=(ROOM_KEY_ID, ROOM_SECRET))
    assert_error(r, 403, "channel_not_authorized")
    assert rest_request(rb, "POST", publish_path("room/ok"), {"data": 1}, auth=(ROOM_KEY_ID, ROOM_SECRET)).status == 200
    r = rest_request(rb, "POST", publish_path("any"), {"data": 1}, auth=(SUB_KEY_ID, SUB_SECRET))
    assert_error(r, 403, "action_not_permitted")
    # 400 channel_reserved / invalid_request.
    for reserved in ("_system/x", "_Metered/y", "_INTERNAL/z"):
        assert_error(rest_request(rb, "POST", publish_path(reserved), {"data": 1}), 400, "channel_reserved")
    for bad in ("a\x01b", "x" * 257, "\x7f"):
        assert_error(rest_request(rb, "POST", publish_path(bad), {"data": 1}), 400, "invalid_request")
    assert_error(rest_request(rb, "POST", "/v1/channels/%FF%FE/publish", {"data": 1}), 400, "invalid_request")
    ch = chan("rest/400")
    bodies = [
        b"",  # no body
        b"not json",
        b"[1,2]",  # not an object
        b'"data"',
        b"{}",  # data missing
        b'{"from":"x"}',
        b'{"data":1,"from":""}',
        b'{"data":1,"from":"has space"}',
        b'{"data":1,"from":' + json.dumps("x" * 129).encode() + b"}",
        b'{"data":1,"from":5}',
        b'{"data":1,"peerMetadata":"str"}',
        b'{"data":1,"peerMetadata":[1]}',
        b'{"data":1,"peerMetadata":{"big":"' + b"x" * 5000 + b'"}}',
        b'{"data":1',  # truncated
        b'{"data":' + b"[" * 200 + b"]" * 200 + b"}",  # nested too deep
    ]
    for raw in bodies:
        r = rest_request(rb, "POST", publish_path(ch), raw=raw, headers={"Content-Type": "application/json"})
        assert_error(r, 400, "invalid_request")


def send_head_only(b, method: str, path: str, headers: dict) -> tuple:
    """Sends a request head and no body; returns (status, parsed JSON body) of the answer."""
    s = http.client.HTTPConnection("127.0.0.1", b.rest_port, timeout=5)
    try:
        s.putrequest(method, path)
        for k, v in headers.items():
            s.putheader(k, v)
        s.endheaders()
        resp = s.getresponse()
        return resp.status, json.loads(resp.read()), resp.getheader("connection")
    finally:
        s.close()


def test_rest_body_over_32k_is_413_without_reading_it(rb):
    ch = chan("rest/413")
    sub = rb.connect(mint("r-413"))
    sub.subscribe(ch)
    # Exactly 32 KiB is accepted.
    pad = 32 * 1024 - len(b'{"data":""}')
    ok = b'{"data":"' + b"x" * pad + b'"}'
    assert len(ok) == 32 * 1024
    assert rest_request(rb, "POST", publish_path(ch), raw=ok).status == 200
    assert len(sub.expect_type("message", skip=True)["data"]) == pad
    # One byte more, or 1 GiB, is refused from the Content-Length header alone: no body is
    # sent, and the answer comes anyway (the server does not wait for the body).
    auth = {"Authorization": f"Bearer {KEY_ID}:{SECRET}"}
    for path in (publish_path(ch), "/v1/tokens"):
        for n in (32 * 1024 + 1, 1 << 30):
            status, body, connection = send_head_only(rb, "POST", path, {**auth, "Content-Length": str(n)})
            assert status == 413 and body["error"] == "payload_too_large", (path, n, body)
            assert connection == "close"
    # Chunked, without a length: the read stops at the cap. 33 chunks of 1 KiB are sent and the
    # body is never finished; the server answers once it has seen more than 32 KiB.
    s = raw_socket(rb.rest_port)
    try:
        head = (f"POST /v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_ID}:{SECRET}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        s.sendall(head + b"400\r\n" + b"x" * 1024 + b"\r\n")
        for _ in range(32):
            s.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        status, headers, rest = read_http_head(s)
        assert status == 413, (status, headers, rest)
    finally:
        s.close()
    sub.no_message_within(0.2)


# ---------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------


def test_rest_tokens_mint_working_jwts(rb):
    t0 = int(time.time())
    r = rest_request(rb, "POST", "/v1/tokens", {"peerId": "minted", "channels": ["room/*"], "permissions": ["subscribe", "publish"],
                                                "expiresInSec": 600, "metadata": {"plan": "pro"}, "peerMetadata": {"name": "M"}})
    assert r.status == 200 and set(r.json) == {"token", "expiresAt"}, r
    claims = jwt.decode(r.json["token"], SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(r.json["token"])["kid"] == KEY_ID
    assert claims["sub"] == "minted" and claims["channels"] == ["room/*"]
    assert t0 + 600 <= r.json["expiresAt"] == claims["exp"] <= int(time.time()) + 601
    c = rb.connect(r.json["token"])
    assert c.welcome["peerId"] == "minted" and c.welcome["expiresAt"] == r.json["expiresAt"]
    assert c.welcome["metadata"] == {"plan": "pro"}
    c.subscribe("room/a", presence=False)
    m = c.request({"type": "subscribe", "channel": "lobby"})
    assert m["type"] == "error" and m["code"] == "channel_not_authorized", m
    # Defaults: 3600 s, the key's scope.
    r = rest_request(rb, "POST", "/v1/tokens", {"peerId": "minted2"})
    assert r.status == 200 and abs(r.json["expiresAt"] - (time.time() + 3600)) <= 5, r
    assert rb.connect(r.json["token"]).welcome["peerId"] == "minted2"
    # A key of another app signs tokens for that app.
    r = rest_request(rb, "POST", "/v1/tokens", {"peerId": "o"}, auth=(OTHER_KEY_ID, OTHER_SECRET))
    assert r.status == 200 and jwt.get_unverified_header(r.json["token"])["kid"] == OTHER_KEY_ID


def test_rest_tokens_errors(rb):
    for body in ({}, {"peerId": ""}, {"peerId": "a b"}, {"peerId": "x" * 129}, {"peerId": "p", "expiresInSec": 0},
                 {"peerId": "p", "expiresInSec": 86401}, {"peerId": "p", "permissions": ["fly"]},
                 {"peerId": "p", "metadata": [1]}, {"peerId": "p", "peerMetadata": {"x": "y" * 5000}},
                 {"peerId": 5}, {"peerId": "p", "channels": ["a\x01"]}):
        assert_error(rest_request(rb, "POST", "/v1/tokens", body), 400, "invalid_request")
    assert_error(rest_request(rb, "POST", "/v1/tokens", raw=b"{nope"), 400, "invalid_request")
    assert_error(rest_request(rb, "POST", "/v1/tokens", raw=b'["peerId"]'), 400, "invalid_request")
    r = rest_request(rb, "POST", "/v1/tokens", {"peerId": "p", "channels": ["lobby"]}, auth=(ROOM_KEY_ID, ROOM_SECRET))
    assert_error(r, 403, "channel_not_authorized")
    r = rest_request(rb, "POST", "/v1/tokens", {"peerId": "p", "permissions": ["publish"]}, auth=(SUB_KEY_ID, SUB_SECRET))
    assert_error(r, 403, "action_not_permitted")


# ---------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------


def test_rest_peers_roster_spans_both_shards(rb):
    ch = chan("rest/peers")
    empty = rest_request(rb, "GET", peers_path(ch))
    assert empty.status == 200 and empty.json == {"channel": ch, "peers": []}, empty
    a = rb.connect(mint("pa", peerMetadata={"n": "A"}), shard=0, name="pa")
    b = rb.connect(mint("pb"), shard=1, name="pb")
    b2 = rb.connect(mint("pb"), shard=0, name="pb2")  # second connection of pb: one roster entry
    for c in (a, b, b2):
        c.subscribe(ch)
    r = rest_request(rb, "GET", peers_path(ch))
    assert r.status == 200, r
    assert r.json == {"channel": ch, "peers": [{"peerId": "pa", "metadata": {"n": "A"}}, {"peerId": "pb"}]}, r.json
    # The roster follows departures (pb leaves only when its last connection does).
    b.close()
    time.sleep(0.2)
    assert [p["peerId"] for p in rest_request(rb, "GET", peers_path(ch)).json["peers"]] == ["pa", "pb"]
    b2.close()
    wait_until(lambda: [p["peerId"] for p in rest_request(rb, "GET", peers_path(ch)).json["peers"]] == ["pa"], what="pb to leave the roster")
    # Apps are isolated: the other app's key sees an empty roster for the same name.
    r = rest_request(rb, "GET", peers_path(ch), auth=(OTHER_KEY_ID, OTHER_SECRET))
    assert r.status == 200 and r.json == {"channel": ch, "peers": []}, r


def test_rest_peers_errors(rb):
    assert_error(rest_request(rb, "GET", peers_path("lobby"), auth=(ROOM_KEY_ID, ROOM_SECRET)), 403, "channel_not_authorized")
    assert rest_request(rb, "GET", peers_path("room/x"), auth=(ROOM_KEY_ID, ROOM_SECRET)).status == 200
    assert_error(rest_request(rb, "GET", peers_path("x"), auth=(SUB_KEY_ID, SUB_SECRET)), 403, "action_not_permitted")
    assert_error(rest_request(rb, "GET", peers_path("_system/x")), 400, "channel_reserved")
    assert_error(rest_request(rb, "GET", peers_path("a\nb")), 400, "invalid_request")


# ---------------------------------------------------------------------------------------------
# disconnect
# ---------------------------------------------------------------------------------------------


def test_rest_delete_peer_closes_every_connection_on_every_shard_with_4020(rb):
    k0 = rb.connect(mint("kickme"), shard=0, name="k0")
    k1 = rb.connect(mint("kickme"), shard=1, name="k1")
    k2 = rb.connect(mint("kickme"), shard=1, name="k2")
    bystander = rb.connect(mint("kick-bystander"), shard=0)
    # The other app's key cannot touch this app's peer.
    r = rest_request(rb, "DELETE", "/v1/peers/kickme", auth=(OTHER_KEY_ID, OTHER_SECRET))
    assert r.status == 200 and r.json == {"peerId": "kickme", "closed": 0}, r
    k0.ping_pong()
    r = rest_request(rb, "DELETE", "/v1/peers/kickme")
    assert r.status == 200 and r.json == {"peerId": "kickme", "closed": 3}, r
    for c in (k0, k1, k2):
        code, _ = c.expect_close(timeout=5)
        assert code == 4020, (c.name, code)
    bystander.ping_pong()
    # Nobody left: 0, and a percent-encoded id with reserved characters works.
    assert rest_request(rb, "DELETE", "/v1/peers/kickme").json == {"peerId": "kickme", "closed": 0}
    odd = "odd/peer?#%"
    c = rb.connect(mint(odd))
    r = rest_request(rb, "DELETE", "/v1/peers/" + quote(odd, safe=""))
    assert r.json == {"peerId": odd, "closed": 1}, r
    assert c.expect_close()[0] == 4020
    for bad in ("a%20b", "%FF", "x" * 129, "%7F"):
        assert_error(rest_request(rb, "DELETE", "/v1/peers/" + bad), 400, "invalid_request")


# ---------------------------------------------------------------------------------------------
# usage and admission
# ---------------------------------------------------------------------------------------------


def test_rest_usage_counts_connections_peak_and_messages():
    with Broker(REST_CONFIG, name="usage-broker") as b:
        u = rest_request(b, "GET", "/v1/usage").json
        assert u["appId"] == "test" and u["concurrentNow"] == 0 and u["peakConcurrent"] == 0 and u["messagesUsed"] == 0, u
        ch = chan("usage")
        cs = connect_on_distinct_shards(b, [mint(f"u{i}") for i in range(3)])
        cs[1].subscribe(ch)
        cs[2].subscribe(ch)
        cs[0].publish(ch, 1)  # delivered to 2 subscribers
        cs[1].send_to("u2", "hi")
        assert rest_request(b, "POST", publish_path(ch), {"data": 2}).status == 200  # delivered to 2
        for c in cs[1:]:
            c.expect_type("message", skip=True)
        cs[2].expect_type("direct", skip=True)
        for c in cs[1:]:
            c.expect_type("message", skip=True)
        u = rest_request(b, "GET", "/v1/usage").json
        assert u == {"appId": "test", "concurrentNow": 3, "peakConcurrent": 3, "messagesUsed": 3, "messagesDelivered": 4,
                     "restPublishes": 1, "maxConnections": 1000}, u
        cs[0].close()
        cs[1].close()
        wait_until(lambda: rest_request(b, "GET", "/v1/usage").json["concurrentNow"] == 1, what="concurrentNow to drop")
        u = rest_request(b, "GET", "/v1/usage").json
        assert u["peakConcurrent"] == 3, u
        # Per app: the other app saw nothing.
        o = rest_request(b, "GET", "/v1/usage", auth=(OTHER_KEY_ID, OTHER_SECRET)).json
        assert o == {"appId": "other", "concurrentNow": 0, "peakConcurrent": 0, "messagesUsed": 0, "messagesDelivered": 0,
                     "restPublishes": 0, "maxConnections": None}, o


def test_app_connection_cap_4010_is_visible_in_usage(rb):
    tok = lambda p: mint(p, key_id=CAP_KEY_ID, secret=CAP_SECRET)  # noqa: E731
    a = rb.connect(tok("c1"), shard=0)
    rb.connect(tok("c2"), shard=1)
    c = Client.open(rb.url(token=tok("c3")))
    rb.open_clients.append(c)
    assert c.expect_close()[0] == 4010
    u = rest_request(rb, "GET", "/v1/usage", auth=(CAP_KEY_ID, CAP_SECRET)).json
    assert (u["appId"], u["concurrentNow"], u["peakConcurrent"], u["maxConnections"]) == ("capped", 2, 2, 2), u
    a.close()
    wait_until(lambda: rest_request(rb, "GET", "/v1/usage", auth=(CAP_KEY_ID, CAP_SECRET)).json["concurrentNow"] == 1, what="a slot to free")
    rb.connect(tok("c4"))
    u = rest_request(rb, "GET", "/v1/usage", auth=(CAP_KEY_ID, CAP_SECRET)).json
    assert (u["concurrentNow"], u["peakConcurrent"]) == (2, 2), u


# ---------------------------------------------------------------------------------------------
# routing, health, keep-alive, logs
# ---------------------------------------------------------------------------------------------


def test_rest_unknown_paths_404_and_wrong_methods_405(rb):
    for method, path in [("GET", "/"), ("GET", "/v1"), ("GET", "/v2/usage"), ("POST", "/v1/channels/x/subscribe"),
                         ("GET", "/v1/channels//peers"), ("DELETE", "/v1/peers/"), ("GET", "/v1/tokens/x"), ("GET", "/healthz/x")]:
        r = rest_request(rb, method, path)
        assert_error(r, 404, "not_found")
        assert r.json == {"error": "not_found", "message": "no such endpoint"}
    # 404 does not need a key either.
    assert_error(rest_request(rb, "GET", "/nope", auth=None), 404, "not_found")
    for method, path, allow in [("GET", "/v1/tokens", "POST"), ("POST", "/v1/usage", "GET"), ("GET", "/v1/channels/x/publish", "POST"),
                                ("PUT", "/v1/peers/x", "DELETE"), ("POST", "/healthz", "GET"), ("DELETE", "/metrics", "GET")]:
        r = rest_request(rb, method, path)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers.get("allow") == allow, r.headers


def test_healthz_and_keep_alive(rb):
    conn = http.client.HTTPConnection("127.0.0.1", rb.rest_port, timeout=5)
    try:
        for _ in range(5):
            r = rest_request(rb, "GET", "/healthz", auth=None, conn=conn)
            assert r.status == 200 and r.json == {"status": "ok", "shards": 2}, r
            r = rest_request(rb, "GET", "/v1/usage", conn=conn)
            assert r.status == 200
            r = rest_request(rb, "GET", "/nope", conn=conn)  # errors keep the connection too
            assert r.status == 404
        sock = conn.sock
        assert sock is not None  # still the same keep-alive connection
    finally:
        conn.close()


def test_rest_logs_never_contain_secrets_tokens_or_payloads(monkeypatch):
    monkeypatch.setenv("RINGCAST_LOG", "debug")  # the most the broker ever logs
    with Broker(REST_CONFIG, name="debug-log-broker") as b:
        secret_payload = "payload-" + "s3cr3t-data"
        ws_token = mint("logger")
        sub = b.connect(ws_token)
        bad_token = mint("intruder", secret=SECRET + "x")
        Client.open(b.url(token=bad_token)).expect_close()  # a refused token is not logged either
        ch = chan("logs")
        sub.subscribe(ch)
        r = rest_request(b, "POST", publish_path(ch), {"data": secret_payload, "peerMetadata": {"k": "meta-s3cr3t"}})
        assert r.status == 200
        sub.expect_type("message", skip=True)
        tok = rest_request(b, "POST", "/v1/tokens", {"peerId": "lg"}).json["token"]
        rest_request(b, "GET", "/v1/usage?token=" + tok + "&key=pk_live_zzz")
        rest_request(b, "GET", "/v1/usage", auth=(KEY_ID, SECRET + "wrong"))
        assert b.wait_for_output(r"token=REDACTED", timeout=3), b.output_tail()
        time.sleep(0.3)
        text = "\n".join(b.stdout_lines + list(b.stderr_lines))
        assert "authentication failed" in text, text[-2000:]
        for needle in (SECRET, secret_payload, "meta-s3cr3t", tok, "pk_live_zzz", ws_token, bad_token):
            assert needle not in text, f"{needle[:20]}... found in the broker's output"


# ---------------------------------------------------------------------------------------------
# OpenAPI document
# ---------------------------------------------------------------------------------------------

OPENAPI = REPO / "docs" / "openapi.yaml"


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -r tests/requirements.txt)")
    return found


def test_openapi_document_is_valid():
    p = subprocess.run([_tool("openapi-spec-validator"), str(OPENAPI)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_openapi_document_matches_the_running_broker(rb, tmp_path):
    """schemathesis generates requests from docs/openapi.yaml (valid and invalid ones) and checks
    every answer against the document: status codes, content types, headers, response schemas,
    invalid data rejected, no 5xx, auth not ignored, unsupported methods answered 405.
    positive_data_acceptance is left out: some limits (channel names are 1-256 *bytes*; reserved
    prefixes are case-insensitive) cannot be expressed in JSON Schema, so a schema-valid request
    may rightly be refused."""
    cmd = [
        _tool("schemathesis"), "run", str(OPENAPI),
        "--url", f"http://127.0.0.1:{rb.rest_port}",
        "-H", f"Authorization: Bearer {KEY_ID}:{SECRET}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "40", "--workers", "1", "--request-timeout", "10",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    assert " passed" in out, out[-2000:]
    assert rb.alive()


# ---------------------------------------------------------------------------------------------
# Hardening II 8c: `data` with a lone surrogate escape
# ---------------------------------------------------------------------------------------------


def test_rest_publish_refuses_lone_surrogates_in_data_like_the_websocket_path(rb):
    ch = chan("rest/surrogate")
    sub = rb.connect(mint("r-surrogate"))
    sub.subscribe(ch)
    for data in [r'"\ud800"', r'"\udc00"', r'{"a":["ok","\ud800\u0041"]}', r'"x\ud83d"', r'["\ude00\ud83d"]']:
        body = '{"from":"b","data":%s}' % data
        r = rest_request(rb, "POST", publish_path(ch), raw=body.encode(), headers={"Content-Type": "application/json"})
        assert_error(r, 400, "invalid_request")
        assert "surrogate" in r.json["message"], r.json
        # The WebSocket path refuses the same data.
        sub.send_text('{"type":"publish","channel":%s,"requestId":"s1","data":%s}' % (json.dumps(ch), data))
        m = sub.expect_type("error")
        assert m["code"] == "malformed_message", (data, m)
    # A proper surrogate pair, and an escaped backslash before "ud800", are valid and delivered.
    for data, want in [(r'"\ud83d\ude00"', "\U0001F600"), (r'"\\ud800"', "\\ud800")]:
        r = rest_request(rb, "POST", publish_path(ch), raw=('{"data":%s}' % data).encode())
        assert r.status == 200, r
        assert sub.expect_type("message", skip=True)["data"] == want
    sub.no_message_within(0.2)
