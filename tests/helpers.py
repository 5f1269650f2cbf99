"""Shared harness for the ringcast integration tests.

Everything here drives the *real* broker binary on loopback:

* ``Broker``      - starts ``target/release/ringcast`` (or ``$RINGCAST_BIN``) with a temp TOML config
                    and extra flags, waits for the ``listening on`` line, drains its output, stops it.
* ``mint``        - HS256 JWT minting with PyJWT (header ``kid`` = secret key id).
* ``Client``      - thin wrapper around ``websockets.sync.client`` (a real third-party client) with
                    per-call timeouts: ``recv_json``, ``expect_type``, ``expect_close``,
                    ``no_message_within``, ``subscribe``...
* ``RawWS``       - a minimal hand-written WebSocket client over a plain socket, for the cases where a
                    client library would hide the behaviour (server pings, never answering pings,
                    never reading, exact frame bytes).
* ``http_exchange`` - raw HTTP request/response over a socket (404/431/400 checks).

Every outgoing connection binds a rotating loopback source address (127.0.x.y): the broker limits
upgrade attempts per source IP (protocol.md section 2, default 60 per 60 s) and the suite opens far
more connections than that; distinct sources also spread connections over SO_REUSEPORT shards.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlencode

import jwt
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

REPO = Path(__file__).resolve().parent.parent
BIN = os.environ.get("RINGCAST_BIN", str(REPO / "target" / "release" / "ringcast"))

# --------------------------------------------------------------------------------------------
# Standard credentials / config
# --------------------------------------------------------------------------------------------

KEY_ID = "sk_id_test1"
SECRET = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
# Same app, secret key restricted to room/* channels.
ROOM_KEY_ID = "sk_id_room1"
ROOM_SECRET = "sk_secret_room_0123456789abcdefghijklmnopq"
# Same app, secret key without the `send` action.
NOSEND_KEY_ID = "sk_id_nosend1"
NOSEND_SECRET = "sk_secret_nosend_0123456789abcdefghijklm"
# Same app, secret key with the four connection actions but not `admin` (no kick, no usage).
NOADMIN_KEY_ID = "sk_id_noadmin1"
NOADMIN_SECRET = "sk_secret_noadmin_0123456789abcdefghijkl"
# Publishable keys of app "test".
PK = "pk_live_test1"  # public/**, origin https://good.example only
PK_ANY = "pk_live_anyorigin1"  # public/**, any origin
GOOD_ORIGIN = "https://good.example"
# A second, fully isolated app.
OTHER_KEY_ID = "sk_id_other1"
OTHER_SECRET = "sk_secret_other_zyxwvutsrqponmlkjihgfedcba98"

BASE_APPS = f"""
[[apps]]
id = "test"
max_connections = 1000
[[apps.secret_keys]]
id = "{KEY_ID}"
secret = "{SECRET}"
channel_patterns = ["**"]
actions = ["publish", "subscribe", "presence", "send", "admin"]
[[apps.secret_keys]]
id = "{ROOM_KEY_ID}"
secret = "{ROOM_SECRET}"
channel_patterns = ["room/*"]
[[apps.secret_keys]]
id = "{NOSEND_KEY_ID}"
secret = "{NOSEND_SECRET}"
actions = ["publish", "subscribe", "presence"]
[[apps.secret_keys]]
id = "{NOADMIN_KEY_ID}"
secret = "{NOADMIN_SECRET}"
actions = ["publish", "subscribe", "presence", "send"]
[[apps.publishable_keys]]
key = "{PK}"
channel_patterns = ["public/**"]
actions = ["publish", "subscribe", "presence"]
allowed_origins = ["{GOOD_ORIGIN}"]
[[apps.publishable_keys]]
key = "{PK_ANY}"
channel_patterns = ["public/**"]

[[apps]]
id = "other"
[[apps.secret_keys]]
id = "{OTHER_KEY_ID}"
secret = "{OTHER_SECRET}"
"""


def make_config(top_level: str = "", extra_apps: str = "") -> str:
    """TOML text: optional top-level limit keys (must precede the tables), the standard apps, extra apps."""
    return f"{top_level}\n{BASE_APPS}\n{extra_apps}\n"


DEFAULT_CONFIG = make_config()

# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

_UNSET = object()


def mint(
    peer: Any = _UNSET,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    exp_in: Optional[float] = 3600,
    algorithm: str = "HS256",
    headers: Optional[dict] = None,
    **claims: Any,
) -> str:
    """Mint a JWT. ``peer`` becomes ``sub`` (omitted if not given); ``exp`` = now + exp_in (omitted
    if exp_in is None; an explicit ``exp=`` claim wins). ``channels`` defaults to ["**"]; pass
    ``channels=None`` to omit the claim. Any other keyword is added as a claim; a value of None
    omits that claim."""
    payload: dict = {}
    if peer is not _UNSET:
        payload["sub"] = peer
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    claims.setdefault("channels", ["**"])
    for k, v in claims.items():
        if v is None:
            payload.pop(k, None)
        else:
            payload[k] = v
    hdr = {"kid": key_id}
    if headers:
        hdr.update(headers)
    return jwt.encode(payload, secret, algorithm=algorithm, headers=hdr)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict, header: dict) -> str:
    """A JWT with an empty signature (for alg=none)."""
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(payload, separators=(",", ":")).encode())
    return f"{h}.{p}."


def decode_unverified(token: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


# --------------------------------------------------------------------------------------------
# Source address rotation
# --------------------------------------------------------------------------------------------

_src_counter = itertools.count()
_src_lock = threading.Lock()


def next_source_ip() -> str:
    """127.0.A.B with A in 1..250, B in 2..251 (never 127.0.0.1), rotating per connection."""
    with _src_lock:
        n = next(_src_counter)
    n %= 250 * 250
    return f"127.0.{1 + n // 250}.{2 + n % 250}"


# --------------------------------------------------------------------------------------------
# Broker process
# --------------------------------------------------------------------------------------------

LISTEN_RE = re.compile(r"^ringcast: listening on ws://127\.0\.0\.1:(\d+)/v1 \(shards=(\d+)\)$")

#: Brokers started and not yet stopped; conftest attaches their output to failing test reports.
LIVE_BROKERS: list["Broker"] = []


class BrokerStartError(RuntimeError):
    pass


class Broker:
    """A running ringcast process on 127.0.0.1:<ephemeral>.

    ``config``: TOML text (written to a temp file and passed as ``--config``), or None to run
    without ``--config`` (development mode). ``args``: extra flags. ``shards``: ``--shards`` value.
    """

    def __init__(
        self,
        config: Optional[str] = DEFAULT_CONFIG,
        args: Iterable[str] = (),
        shards: int = 2,
        start_timeout: float = 10.0,
        name: str = "broker",
    ):
        self.name = name
        self.shards = shards
        self.args = [str(a) for a in args]
        self.stdout_lines: list[str] = []
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=400)
        self._lines_cv = threading.Condition()
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        #: Clients/raw sockets opened through this broker; closed by close_clients() (conftest
        #: calls it after every test).
        self.open_clients: list = []
        self._tmpdir = tempfile.TemporaryDirectory(prefix="ringcast-test-")
        self.config_path: Optional[str] = None
        if config is not None:
            self.config_path = os.path.join(self._tmpdir.name, "ringcast.toml")
            Path(self.config_path).write_text(config)
        self._start(start_timeout)

    # -- lifecycle -----------------------------------------------------------------------------

    def _start(self, timeout: float) -> None:
        if not os.path.exists(BIN):
            raise BrokerStartError(
                f"broker binary not found at {BIN} (build with `cargo build --release` or set RINGCAST_BIN)"
            )
        cmd = [BIN]
        if self.config_path:
            cmd += ["--config", self.config_path]
        cmd += ["--listen", "127.0.0.1:0", "--shards", str(self.shards), *self.args]
        self.cmd = cmd
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self._tmpdir.name,
        )
        LIVE_BROKERS.append(self)
        threading.Thread(target=self._pump, args=(self.proc.stdout, "out"), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, "err"), daemon=True).start()
        deadline = time.monotonic() + timeout
        with self._lines_cv:
            while self.port is None:
                if self.proc.poll() is not None and self._eof_count >= 2:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lines_cv.wait(min(left, 0.1))
        if self.port is None:
            rc = self.proc.poll()
            self.stop()
            raise BrokerStartError(
                f"broker did not print its listening line within {timeout}s (exit code {rc})\n"
                f"cmd: {' '.join(cmd)}\n{self.output_tail()}"
            )

    _eof_count = 0

    def _pump(self, stream, which: str) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lines_cv:
                if which == "out":
                    self.stdout_lines.append(line)
                    m = LISTEN_RE.match(line)
                    if m and self.port is None:
                        self.port = int(m.group(1))
                        self.reported_shards = int(m.group(2))
                else:
                    self.stderr_lines.append(line)
                self._lines_cv.notify_all()
        with self._lines_cv:
            self._eof_count += 1
            self._lines_cv.notify_all()

    def wait_for_output(self, pattern: str, timeout: float = 3.0, streams: str = "both") -> Optional[str]:
        """First output line matching regex ``pattern`` (search), waiting up to ``timeout``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lines_cv:
            while True:
                pools = []
                if streams in ("both", "out"):
                    pools.append(self.stdout_lines)
                if streams in ("both", "err"):
                    pools.append(list(self.stderr_lines))
                for pool in pools:
                    for line in pool:
                        if rx.search(line):
                            return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lines_cv.wait(min(left, 0.1))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.close_clients()
        if self in LIVE_BROKERS:
            LIVE_BROKERS.remove(self)
        self._tmpdir.cleanup()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def output_tail(self, n: int = 60) -> str:
        with self._lines_cv:
            out = self.stdout_lines[-n:]
            err = list(self.stderr_lines)[-n:]
        rc = self.proc.poll() if self.proc else None
        return (
            f"--- {self.name} (pid {self.proc.pid if self.proc else '?'}, exit={rc}) stdout tail ---\n"
            + "\n".join(out)
            + f"\n--- {self.name} stderr tail ---\n"
            + "\n".join(err)
        )

    # -- addressing -------------------------------------------------------------------------------

    def url(self, token: Optional[str] = None, key: Optional[str] = None, path: str = "/v1", **query) -> str:
        q = {}
        if token is not None:
            q["token"] = token
        if key is not None:
            q["key"] = key
        q.update(query)
        qs = ("?" + urlencode(q)) if q else ""
        return f"ws://127.0.0.1:{self.port}{path}{qs}"

    def path(self, token: Optional[str] = None, key: Optional[str] = None, path: str = "/v1") -> str:
        """Request target (path + query) for raw sockets."""
        return self.url(token=token, key=key, path=path).split(f":{self.port}", 1)[1]

    # -- clients ----------------------------------------------------------------------------------

    def connect(
        self,
        token: Optional[str] = None,
        key: Optional[str] = None,
        *,
        welcome: bool = True,
        shard: Optional[int] = None,
        origin: Optional[str] = None,
        timeout: float = 5.0,
        name: str = "",
        **kw,
    ) -> "Client":
        """Open a websockets client. With ``welcome`` (default) the welcome frame is awaited and
        stored as ``client.welcome``. With ``shard=k`` connections are opened (and discarded) until
        one lands on shard k."""
        if shard is None:
            c = Client.open(self.url(token=token, key=key), origin=origin, timeout=timeout, name=name, **kw)
            self.open_clients.append(c)
            if welcome:
                c.await_welcome(timeout)
            return c
        tried = []
        for _ in range(60):
            c = Client.open(self.url(token=token, key=key), origin=origin, timeout=timeout, name=name, **kw)
            if c.shard == shard:
                self.open_clients.append(c)
                if welcome:
                    c.await_welcome(timeout)
                return c
            tried.append(c.shard)
            c.close()
        raise AssertionError(f"could not get a connection on shard {shard} after 60 attempts; got shards {tried}")

    def connect_peer(self, peer: str, shard: Optional[int] = None, **claims) -> "Client":
        """Connect as ``peer`` with a freshly minted standard token (claims forwarded to ``mint``)."""
        return self.connect(mint(peer, **claims), shard=shard, name=peer)

    def connect_spread(self, tokens: list, **kw) -> list["Client"]:
        """Connect one client per token so that client i lands on shard i % self.shards."""
        return [self.connect(t, shard=i % self.shards, **kw) for i, t in enumerate(tokens)]

    def raw(self, token: Optional[str] = None, key: Optional[str] = None, shard: Optional[int] = None, **kw) -> "RawWS":
        """Raw-socket WebSocket (upgrade completed, nothing read yet). With ``shard=k``, retried
        until it lands on shard k."""
        for _ in range(60):
            r = RawWS(self.port, self.path(token=token, key=key), **kw)
            if shard is None or r.shard == shard:
                self.open_clients.append(r)
                return r
            r.close()
        raise AssertionError(f"could not get a raw connection on shard {shard}")

    def close_clients(self) -> None:
        cs, self.open_clients = self.open_clients, []
        for c in cs:
            c.close()


# --------------------------------------------------------------------------------------------
# websockets-based client
# --------------------------------------------------------------------------------------------

_rid = itertools.count(1)


def rid(prefix: str = "r") -> str:
    return f"{prefix}{next(_rid)}"


class Client:
    """A real third-party WebSocket client (python-websockets, sync API) with test conveniences."""

    def __init__(self, ws, name: str = ""):
        self.ws = ws
        self.name = name
        hdr = ws.response.headers.get("X-Ringcast-Shard")
        self.shard: Optional[int] = int(hdr) if hdr is not None else None
        self.welcome: Optional[dict] = None
        #: Frames drained by expect_close.
        self.drained: list = []
        #: Frames passed over by expect_type(skip=True).
        self.skipped: list = []
        #: Frames received but not yet consumed (set aside by request()).
        self.pending: collections.deque = collections.deque()
        self.log: list = []  # every JSON frame received, in order
        self.last_rid: Optional[str] = None  # requestId of the latest request()

    @classmethod
    def open(cls, url: str, origin: Optional[str] = None, timeout: float = 5.0, name: str = "", **kw) -> "Client":
        kw.setdefault("open_timeout", timeout)
        kw.setdefault("close_timeout", 2)
        kw.setdefault("ping_interval", None)  # the client sends no keepalive pings of its own
        kw.setdefault("max_size", None)
        kw.setdefault("max_queue", None)  # never exert backpressure: tests read late on purpose
        kw.setdefault("source_address", (next_source_ip(), 0))
        kw.setdefault("proxy", None)
        if origin is not None:
            kw["origin"] = origin
        ws = ws_connect(url, **kw)
        return cls(ws, name=name)

    # -- sending ---------------------------------------------------------------------------------

    def send_json(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def ok(self, obj: dict, timeout: float = 5.0) -> dict:
        m = self.request(obj, timeout)
        assert m["type"] == "ack", f"{self.name}: expected ack for {obj}, got {m}"
        return m

    def subscribe(self, channel: str, presence: bool = True, timeout: float = 5.0, **extra) -> Optional[dict]:
        """Subscribe with a requestId, await the ack and (if ``presence``) the roster snapshot,
        which is returned."""
        held_before = len(self.pending)
        self.ok({"type": "subscribe", "channel": channel, **extra}, timeout)
        early = [m for m in list(self.pending)[held_before:] if m["type"] == "presence" and m.get("channel") == channel]
        assert not early, f"{self.name}: presence for {channel} arrived before the subscribe ack: {early}"
        if not presence:
            return None
        return self.expect_type("presence", timeout, skip=True, channel=channel)

    def unsubscribe(self, channel: str, timeout: float = 5.0) -> None:
        self.ok({"type": "unsubscribe", "channel": channel}, timeout)

    def publish(self, channel: str, data: Any, ack: bool = True, timeout: float = 5.0) -> None:
        if ack:
            self.ok({"type": "publish", "channel": channel, "data": data}, timeout)
        else:
            self.send_json({"type": "publish", "channel": channel, "data": data})

    def send_to(self, to: str, data: Any, ack: bool = True, timeout: float = 5.0) -> None:
        if ack:
            self.ok({"type": "send", "to": to, "data": data}, timeout)
        else:
            self.send_json({"type": "send", "to": to, "data": data})

    def sync(self, timeout: float = 5.0) -> None:
        """Round trip through this connection (idempotent unsubscribe of an unused channel)."""
        self.ok({"type": "unsubscribe", "channel": "zz-sync/never-used"}, timeout)

    # -- receiving -------------------------------------------------------------------------------
    #
    # Frames set aside while waiting for a specific ack stay in ``self.pending`` and are returned
    # first by later receives, so no frame is ever lost or reordered.

    def _recv_obj(self, timeout: float) -> dict:
        if self.pending:
            return self.pending.popleft()
        try:
            raw = self.ws.recv(timeout=max(timeout, 0.001))
        except TimeoutError:
            raise AssertionError(f"{self.name or 'client'}: no frame within {timeout:.2f}s") from None
        assert isinstance(raw, str), f"{self.name}: expected a text frame, got binary {raw[:64]!r}"
        obj = json.loads(raw)
        assert isinstance(obj, dict) and isinstance(obj.get("type"), str), f"bad server frame {raw!r}"
        self.log.append(obj)
        return obj

    def recv_raw(self, timeout: float = 5.0):
        """The next frame exactly as received (str or bytes); bypasses JSON parsing."""
        assert not self.pending, f"frames pending: {list(self.pending)}"
        try:
            return self.ws.recv(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name or 'client'}: no frame within {timeout}s") from None

    def recv_json(self, timeout: float = 5.0) -> dict:
        return self._recv_obj(timeout)

    def await_welcome(self, timeout: float = 5.0) -> dict:
        m = self.recv_json(timeout)
        assert m["type"] == "welcome", f"{self.name}: first frame is not welcome: {m}"
        self.welcome = m
        return m

    def expect_type(self, t: str, timeout: float = 5.0, skip: bool = False, **match) -> dict:
        """Next frame must be of type ``t`` (and have the ``match`` field values). With ``skip``,
        other frames are set aside in ``self.skipped`` until a matching one arrives within
        ``timeout`` overall."""
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv_obj(deadline - time.monotonic())
            if m["type"] == t and all(m.get(k) == v for k, v in match.items()):
                return m
            if not skip:
                raise AssertionError(f"{self.name}: expected {t!r} {match or ''}, got {m}")
            self.skipped.append(m)

    def request(self, obj: dict, timeout: float = 5.0) -> dict:
        """Send ``obj`` with a fresh requestId and return the ack/error carrying that requestId.
        Other frames that arrive meanwhile are kept, in order, for later receives."""
        r = rid()
        self.last_rid = r
        self.send_json({**obj, "requestId": r})
        deadline = time.monotonic() + timeout
        held = []
        # Frames already pending came before the request; look at them first, keep them.
        while True:
            m = self._recv_obj(deadline - time.monotonic())
            if m.get("requestId") == r:
                assert m["type"] in ("ack", "error"), f"{self.name}: {m}"
                self.pending.extendleft(reversed(held))
                return m
            held.append(m)

    def expect_close(self, timeout: float = 5.0) -> tuple[Optional[int], str]:
        """Drain frames until the server closes; returns (code, reason) of the server's close frame,
        (None, "") when the TCP connection ended without one. Frames received before the close
        are kept in ``self.drained``."""
        while self.pending:
            self.drained.append(self.pending.popleft())
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: connection not closed within {timeout}s (frames meanwhile: {self.drained[-5:]})"
                )
            try:
                m = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            except ConnectionClosed as e:
                if e.rcvd is not None:
                    return e.rcvd.code, e.rcvd.reason
                return None, ""
            try:
                self.drained.append(json.loads(m))
            except (ValueError, TypeError):
                self.drained.append(m)

    def no_message_within(self, seconds: float = 0.3, ignore: Iterable[str] = ()) -> None:
        """Assert that no frame (other than of the ``ignore`` types) arrives within ``seconds``."""
        ignore = set(ignore)
        for m in list(self.pending):
            assert m["type"] in ignore, f"{self.name}: unexpected frame {m}"
        self.pending.clear()
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                return
            except ConnectionClosed as e:
                raise AssertionError(f"{self.name}: connection closed ({e}) while expecting silence") from None
            m = json.loads(raw)
            self.log.append(m)
            if m.get("type") not in ignore:
                raise AssertionError(f"{self.name}: unexpected frame {m}")

    def collect(self, seconds: float) -> list:
        """Every JSON frame that arrives within ``seconds``."""
        out = list(self.pending)
        self.pending.clear()
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                return out
            m = json.loads(raw)
            self.log.append(m)
            out.append(m)

    def ping_pong(self, timeout: float = 5.0) -> None:
        """App-level ping -> pong round trip."""
        self.send_json({"type": "ping"})
        self.expect_type("pong", timeout)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def expect_rejected(broker: Broker, url: str, origin: Optional[str] = None, timeout: float = 5.0):
    """Open ``url`` expecting the server to accept the upgrade and then close before any welcome.
    Returns (code, reason, frames_before_close)."""
    c = Client.open(url, origin=origin, timeout=timeout)
    code, reason = c.expect_close(timeout)
    return code, reason, c.drained


def connect_on_distinct_shards(broker: Broker, tokens: list, **kw) -> list[Client]:
    """Connect tokens[i] on shard i % shards and assert the shards really differ."""
    cs = broker.connect_spread(tokens, **kw)
    assert len({c.shard for c in cs}) == min(len(cs), broker.shards), [c.shard for c in cs]
    return cs


def healthy_roundtrip(broker: Broker) -> None:
    """A fresh pair of connections on different shards can still subscribe, publish and receive."""
    ch = f"health/{uuid.uuid4().hex[:8]}"
    a, b = connect_on_distinct_shards(broker, [mint("health-a"), mint("health-b")])
    try:
        b.subscribe(ch)
        a.publish(ch, {"ok": True})
        m = b.expect_type("message")
        assert m["channel"] == ch and m["data"] == {"ok": True} and m["from"] == "health-a", m
        a.ping_pong()
    finally:
        a.close()
        b.close()


def chan(prefix: str = "c") -> str:
    """A channel name unique to this call."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def wait_until(pred, timeout: float = 5.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def align_to_second(margin: float = 0.02) -> float:
    """Sleep until just after a wall-clock second boundary; returns time.time()."""
    now = time.time()
    frac = now - int(now)
    if frac > margin:
        time.sleep(1.0 - frac + margin)
    return time.time()


# --------------------------------------------------------------------------------------------
# Raw sockets
# --------------------------------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def raw_socket(port: int, rcvbuf: Optional[int] = None, timeout: float = 5.0, source_ip: Optional[str] = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source_ip or next_source_ip(), 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def read_http_head(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Read an HTTP response head; returns (status, lower-cased headers, bytes after the head).
    Raises ConnectionError if the socket closes first."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete HTTP response head within {timeout}s; got {buf[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a complete HTTP response; got {buf[:200]!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def upgrade_request(port: int, target: str, extra_headers: Iterable[tuple[str, str]] = (), key: Optional[str] = None) -> tuple[bytes, str]:
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


def http_exchange(port: int, data: bytes, timeout: float = 5.0, source_ip: Optional[str] = None) -> tuple[int, dict]:
    """Send raw bytes, return (status, headers) of the response."""
    s = raw_socket(port, timeout=timeout, source_ip=source_ip)
    try:
        s.sendall(data)
        status, headers, _ = read_http_head(s, timeout)
        return status, headers
    finally:
        s.close()


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def wait_socket_closed(sock: socket.socket, timeout: float) -> float:
    """Read and discard until EOF/RST; returns seconds waited. AssertionError on timeout."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"socket still open after {timeout}s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
        if not chunk:
            return time.monotonic() - t0


class WSClosed(Exception):
    """The raw socket reached EOF (or was reset) without a close frame."""


class RawWS:
    """Hand-rolled WebSocket client (RFC 6455) over a plain socket.

    Nothing happens behind the test's back: pings are not answered unless ``auto_pong`` is set on
    ``recv_message``; nothing is read unless a recv method is called."""

    def __init__(
        self,
        port: int,
        target: str,
        rcvbuf: Optional[int] = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        timeout: float = 5.0,
    ):
        self.sock = raw_socket(port, rcvbuf=rcvbuf, timeout=timeout)
        req, key = upgrade_request(port, target, extra_headers)
        self.sock.sendall(req)
        self.status, self.headers, self.buf = read_http_head(self.sock, timeout)
        assert self.status == 101, f"upgrade refused: HTTP {self.status} {self.headers}"
        assert self.headers.get("sec-websocket-accept") == accept_value(key), self.headers
        shard = self.headers.get("x-ringcast-shard")
        self.shard = int(shard) if shard is not None else None
        self.pings: list[bytes] = []

    # -- frames ------------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            head = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            head = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            mk = os.urandom(4)
            masked = bytes(b ^ mk[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, mk)
            self.sock.sendall(head + mk + masked)
        else:
            self.sock.sendall(head + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def send_close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
        self.send_frame(OP_CLOSE, payload)

    def _fill(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("raw websocket: timed out waiting for data")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                raise TimeoutError("raw websocket: timed out waiting for data") from None
            except ConnectionResetError:
                raise WSClosed("connection reset") from None
            if not chunk:
                raise WSClosed("EOF")
            self.buf += chunk

    def recv_frame(self, timeout: float = 5.0) -> tuple[bool, int, bytes]:
        """One frame: (fin, opcode, payload). Server frames must not be masked."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        assert not (b1 & 0x80), "server frame is masked (RFC 6455 5.1 forbids it)"
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._fill(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._fill(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        self._fill(off + n, deadline)
        payload = self.buf[off : off + n]
        self.buf = self.buf[off + n :]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, timeout: float = 5.0, auto_pong: bool = False):
        """Next data or close message: ('text', str) | ('binary', bytes) | ('close', code, reason).
        Pings are recorded in ``self.pings`` (and answered if ``auto_pong``); pongs are skipped."""
        deadline = time.monotonic() + timeout
        parts: list[bytes] = []
        kind = None
        while True:
            fin, op, payload = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if op == OP_PING:
                self.pings.append(payload)
                if auto_pong:
                    self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return ("close", code, payload[2:].decode("utf-8", "replace"))
            if op in (OP_TEXT, OP_BIN):
                kind = "text" if op == OP_TEXT else "binary"
                parts = [payload]
            elif op == OP_CONT:
                assert kind is not None, "continuation frame without a start"
                parts.append(payload)
            else:
                raise AssertionError(f"unexpected opcode {op:#x}")
            if fin:
                data = b"".join(parts)
                return (kind, data.decode("utf-8")) if kind == "text" else (kind, data)

    def recv_json(self, timeout: float = 5.0, auto_pong: bool = True) -> dict:
        m = self.recv_message(timeout, auto_pong=auto_pong)
        assert m[0] == "text", f"expected a text message, got {m}"
        return json.loads(m[1])

    def recv_text(self, timeout: float = 5.0, auto_pong: bool = True) -> str:
        m = self.recv_message(timeout, auto_pong=auto_pong)
        assert m[0] == "text", f"expected a text message, got {m}"
        return m[1]

    def expect_type(self, t: str, timeout: float = 5.0) -> dict:
        m = self.recv_json(timeout)
        assert m.get("type") == t, f"expected {t!r}, got {m}"
        return m

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawWS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mask_fast(payload: bytes, mk: bytes) -> bytes:
    n = len(payload)
    m = (mk * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def is_uuid(s: Any) -> bool:
    try:
        return isinstance(s, str) and str(uuid.UUID(s)) == s.lower()
    except ValueError:
        return False


__all__ = [name for name in globals() if not name.startswith("_")] + ["ConnectionClosed", "InvalidStatus"]


# --------------------------------------------------------------------------------------------
# REST control plane (protocol.md section 7)
# --------------------------------------------------------------------------------------------
#
# Every broker started by the suite binds its REST API on an ephemeral port (the default,
# 127.0.0.1:8081, would collide between brokers): RINGCAST_REST_LISTEN is read by the binary
# unless --rest-listen is given. The port is read from the line
# "ringcast: rest on http://127.0.0.1:PORT" printed right before the "listening" line.

os.environ.setdefault("RINGCAST_REST_LISTEN", "127.0.0.1:0")

REST_RE = re.compile(r"^ringcast: rest on http://127\.0\.0\.1:(\d+)$")


def _broker_rest_port(self: "Broker") -> Optional[int]:
    with self._lines_cv:
        for line in self.stdout_lines:
            m = REST_RE.match(line)
            if m:
                return int(m.group(1))
    return None


Broker.rest_port = property(_broker_rest_port)  # type: ignore[attr-defined]

import http.client  # noqa: E402


class RestResponse:
    """Status, lower-cased headers, raw body and (when JSON) the parsed body of one REST answer."""

    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"<RestResponse {self.status} {self.body[:300]!r}>"


def bearer(key_id: str = KEY_ID, secret: str = SECRET) -> dict:
    """The Authorization header of a secret key."""
    return {"Authorization": f"Bearer {key_id}:{secret}"}


def rest_request(
    broker: "Broker",
    method: str,
    path: str,
    body: Any = None,
    headers: Optional[dict] = None,
    auth: Optional[tuple] = (KEY_ID, SECRET),
    raw: Optional[bytes] = None,
    timeout: float = 10.0,
    conn: Optional[http.client.HTTPConnection] = None,
) -> RestResponse:
    """One request to the broker's REST API with ``http.client``. ``body`` is sent as JSON;
    ``raw`` as-is; ``auth`` is a (key id, secret) pair or None for no Authorization header.
    Pass ``conn`` to reuse a keep-alive connection."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", broker.rest_port, timeout=timeout)
    h = dict(headers or {})
    if auth is not None:
        h.update(bearer(*auth))
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    try:
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        return RestResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, payload)
    finally:
        if own:
            c.close()


def rest_metrics(broker: "Broker") -> dict:
    """GET /metrics parsed into {"name{labels}": value} (labels as printed)."""
    r = rest_request(broker, "GET", "/metrics", auth=None)
    assert r.status == 200, r
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
__all__ += ["RestResponse", "bearer", "rest_request", "rest_metrics", "REST_RE"]
