#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/ (re-run after editing)."""
import hashlib, json, os, struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


for s in [
    '{"type":"subscribe","channel":"room/1","requestId":"r1"}',
    '{"type":"subscribe","channel":"room/1","includeSenderMetadata":true}',
    '{"type":"unsubscribe","channel":"room/1","requestId":"u"}',
    '{"type":"publish","channel":"room/1","data":{"hello":"world","n":[1,2.5e3,-0,null,true]}}',
    '{"type":"publish","channel":"a","data":null,"requestId":"p"}',
    '{"type":"publish","channel":"x","data":"\\ud83d\\ude00 \\u0000"}',
    '{"type":"publish","channel":"x","data":18446744073709552000}',
    '{"type":"publish","channel":"x","data":-9223372036854775809}',
    '{"type":"publish","channel":"x","data":"\\ud800"}',
    '{"type":"publish","channel":"x","d\\u0061ta":[[[[]]]]}',
    '{"type":"send","to":"alice","data":{"task":3},"requestId":"s"}',
    '{"type":"ping"}',
    '{"type":"ping","requestId":"' + "r" * 128 + '"}',
    '{"type":"ping","requestId":"' + "r" * 129 + '"}',
    '{"type":"ping","type":"ping"}',
    '{"type":5}',
    '{"type":"bogus","requestId":"b"}',
    '[1,2,3]',
    '{"type":"publish","channel":"deep","data":' + "[" * 70 + "]" * 70 + "}",
    '{"type":"subscribe","channel":"x"',
    '\ufeff{"type":"ping"}',
    '{"type":"ping"} x',
    '{"type":"publish","channel":"x","data":1000000000000000000x}',
]:
    put("parse_client_msg", s)

for a, ch, b in [
    ("room/*", "room/1", "room/**"),
    ("org/**", "org/a/b/c", "**"),
    ("a\\*b", "a*b", "a*"),
    ("*/x/*", "q/x/z", "**/x/**"),
    ("**", "", "*"),
    ("room/1", "room/1", "room/*"),
    ("a*b*c*d", "axxbyyczzd", "a**"),
    ("\\\\", "\\", "**"),
    ("x/**/y", "x/y", "x/**"),
]:
    put("glob_match", f"{a}\0{ch}\0{b}")

b64 = lambda b: __import__("base64").urlsafe_b64encode(b).rstrip(b"=").decode()
hdr = {"alg": "HS256", "typ": "JWT", "kid": "sk_id_fuzz"}
for payload in [
    {"sub": "alice", "exp": 1800000000, "channels": ["room/1", "org/**"]},
    {"sub": "bob", "exp": 1800000000, "channels": ["other/1"]},
    {"sub": "carol", "exp": 1600000000},
    {"sub": "dave", "exp": 1800000000, "permissions": ["publish"], "metadata": {"a": 1}, "peerMetadata": {"n": "d"}},
    {"sub": "", "exp": 1800000000},
    {"sub": "x" * 129, "exp": 1800000000},
    {"exp": "soon"},
]:
    put("token_verify", b"\x02" + json.dumps(hdr).encode() + b"\0" + json.dumps(payload).encode())
put("token_verify", b"\x02" + json.dumps({"alg": "none", "kid": "sk_id_fuzz"}).encode() + b"\0{}")
put("token_verify", b"\x02" + json.dumps({"alg": "HS256", "kid": "sk_id_nope"}).encode() + b"\0{}")
put("token_verify", b"\x00" + (b64(b'{"alg":"HS256","kid":"sk_id_fuzz"}') + "." + b64(b'{"sub":"a"}') + ".c2ln").encode())
put("token_verify", b"\x00not.a.jwt")
put("token_verify", b"\x01key=pk_live_fuzz\nhttps://good.example")
put("token_verify", b"\x01key=pk_live_fuzz&token=x\n")
put("token_verify", b"\x01token=%65%79%4a&x=1")
put("token_verify", b"\x01")

req = lambda target, extra="": (
    f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)
for r in [
    req("/v1?token=abc"),
    req("/v1?key=pk_live_x", "Origin: https://good.example\r\n"),
    req("/v1") + "\x81\x85\x00\x00\x00\x00hello",
    req("/v2"),
    req("/v1", "X-Pad: " + "a" * 300 + "\r\n"),
    "POST /v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    "GET /v1 HTTP/1.0\r\n\r\n",
    "GET /v1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
    "GET /v1 HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "GET /v1?token=",
]:
    put("upgrade_parse", r.encode("latin-1"))


def frame(op, payload, fin=True, rsv=0, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


for chunk, frames in [
    (255, frame(1, b'{"type":"ping"}')),
    (0, frame(1, b'{"type":"ping"}')),
    (3, frame(1, b"hel", fin=False) + frame(9, b"p") + frame(0, b"lo")),
    (255, frame(2, b"\x00\x01")),
    (255, frame(9, b"ping") + frame(10, b"pong")),
    (255, frame(8, struct.pack("!H", 1000) + b"bye")),
    (255, frame(8, struct.pack("!H", 1005))),
    (255, frame(8, b"\x03")),
    (255, frame(1, b"\xff\xfe")),
    (255, frame(1, b"x", rsv=4)),
    (255, frame(3, b"")),
    (255, frame(0, b"x")),
    (7, frame(1, b"a" * 1100)),
    (255, frame(1, b"", fin=False) + frame(0, b"", fin=False) * 50 + frame(0, b"{}")),
    (255, b"\x81\x05hello"),
    (255, b"\x81\xff\x7f\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00"),
]:
    put("ws_read", bytes([chunk]) + frames)


def wire(kind, origin, seq, app, name, frame, meta=None, sender=None):
    """protocol §9: src/cluster/wire.rs."""
    app, name = app.encode(), name.encode()
    out = struct.pack(">BBQQ", 1, ord(kind), origin, seq)
    out += struct.pack(">H", len(app)) + app + struct.pack(">H", len(name)) + name
    out += struct.pack(">I", len(frame)) + frame
    out += struct.pack(">I", 0xFFFFFFFF) if meta is None else struct.pack(">I", len(meta)) + meta
    if sender is not None:
        out += struct.pack(">HQ", *sender)
    return out


def members(flags, gen, ms):
    out = struct.pack(">BQI", flags, gen, len(ms))
    for peer, meta in ms:
        p = peer.encode()
        out += struct.pack(">H", len(p)) + p
        out += struct.pack(">I", 0xFFFFFFFF) if meta is None else struct.pack(">I", len(meta)) + meta
    return out


msg = b'\x81\x3f{"type":"message","channel":"room","from":"alice","data":{"n":1}}'
for data in [
    wire("P", 7, 1, "app", "room/1", msg),
    wire("P", 7, 2, "app", "room/1", msg, meta=msg, sender=(1, 42)),
    wire("D", 7, 3, "app", "bob", msg, meta=struct.pack(">QHQ", 9, 0, 5)),
    wire("J", 7, 4, "app", "room", members(0, 0, [("alice", b'{"n":"A"}')])),
    wire("L", 7, 5, "app", "room", members(0, 0, [("alice", None)])),
    wire("M", 7, 6, "app", "room", members(3, 6, [("a", None), ("b", b"{}")])),
    wire("H", 7, 7, "", "n1", b""),
    wire("R", 7, 8, "", "", b""),
    wire("Q", 7, 0, "app", "room", b"p"),
    wire("A", 7, 0, "", "", struct.pack(">QQQQQ", 1, 2, 3, 4, 5)),
    wire("Y", 7, 9, "app", "bob", b'{"ok":true}', meta=struct.pack(">HQHQB", 1, 5, 0, 3, 3) + b"rid"),
    wire("F", 7, 10, "", "", b"", meta=struct.pack(">HQHQBB", 0, 3, 1, 5, 1, 0)),
    wire("G", 7, 11, "", "", b"", meta=struct.pack(">HQHQ", 1, 5, 0, 3)),
    members(1, 2, [("x" * 128, b'{"blob":"' + b"y" * 300 + b'"}')]),
    struct.pack(">HQHQ", 1, 5, 0, 3),
    struct.pack(">QHQ", 9, 0, 5),
    b"",
    b"\x01",
    b"\x02P",
]:
    put("cluster_wire", data)
