"""Compatibility: Metered's published Python SDK (PyPI metered-realtime 1.0.2, unmodified) against ringcast.

The SDK is pointed at ringcast with its documented ``url`` option, given the origin only
(``ws://127.0.0.1:PORT``; the SDK itself appends ``/v1?token=…`` and allows plain ``ws:``
only for localhost / 127.0.0.1 / ::1). Tokens come through the documented
``token_provider`` option. Nothing in the SDK is patched.

Each test runs its own event loop (``asyncio.run``) under a hard ``asyncio.wait_for``
bound, so no wait can hang; pytest-timeout is the outer backstop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import jwt
import pytest

from helpers import DEFAULT_CONFIG, PK_ANY, Broker, is_uuid, mint

metered = pytest.importorskip(
    "metered_realtime", reason="metered-realtime is listed in tests/requirements.txt"
)
from metered_realtime import (  # noqa: E402
    Connected,
    Direct,
    Disconnected,
    GoingAway,
    Message,
    Presence,
    PresencePeer,
    ServerError,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
)

STEP = 5.0  # seconds: bound for any single expected event / request
E = TypeVar("E")


def _origin(broker: Broker) -> str:
    return f"ws://127.0.0.1:{broker.port}"


def _run(coro_fn: Callable[[], Awaitable[None]], limit: float) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), limit)

    asyncio.run(bounded())


class Recorder:
    """Collects every SDK event of interest so a test can await a matching one."""

    TYPES = (Connected, Disconnected, Message, Direct, Presence, ServerError, GoingAway)

    def __init__(self, label: str, client: SignallingClient) -> None:
        self.label = label
        self.events: list[Any] = []
        self._changed = asyncio.Event()
        for t in self.TYPES:
            client.on(t, self._push)

    def _push(self, ev: Any) -> None:
        self.events.append(ev)
        self._changed.set()

    def all(self, t: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, t)]

    async def wait_for(
        self, t: type[E], pred: Callable[[E], bool] = lambda _e: True, timeout: float = STEP
    ) -> E:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for e in self.events:
                if isinstance(e, t) and pred(e):
                    return e
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: no matching {t.__name__} within {timeout}s; "
                    f"recorded: {self.events!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def _client(broker: Broker, token: str, **opts: Any) -> SignallingClient:
    async def provider() -> str:
        return token

    opts.setdefault("reconnect", False)  # an unexpected drop must fail, not be retried away
    return SignallingClient(token_provider=provider, url=_origin(broker), **opts)


@pytest.fixture
def broker():
    b = Broker(DEFAULT_CONFIG)
    try:
        yield b
    finally:
        b.stop()


def test_url_option_accepts_local_ws_origin_and_builds_v1_token_url() -> None:
    # Documents (and pins) how the SDK is pointed at ringcast: origin only, ws: allowed
    # for loopback, /v1 + ?token= appended by the SDK, paths refused.
    from metered_realtime._signalling.url import Credential, build_connect_url, validate_base_url

    origin = validate_base_url("ws://127.0.0.1:8080")
    assert origin == "ws://127.0.0.1:8080"
    assert build_connect_url(origin, Credential("token", "a.b.c")) == "ws://127.0.0.1:8080/v1?token=a.b.c"
    assert build_connect_url(origin, Credential("apiKey", "pk_live_x")) == "ws://127.0.0.1:8080/v1?key=pk_live_x"
    with pytest.raises(ValueError):
        validate_base_url("ws://127.0.0.1:8080/v1")  # the SDK appends /v1 itself
    with pytest.raises(ValueError):
        validate_base_url("ws://10.1.2.3:8080")  # plain ws: only for loopback


@pytest.mark.timeout(60)
def test_python_sdk_pubsub_presence_direct(broker: Broker) -> None:
    channel = f"room-{uuid.uuid4().hex[:8]}"
    alice_meta = {"name": "Alice", "role": "host"}
    bob_meta = {"name": "Bob"}
    ice = [{"urls": "stun:127.0.0.1:3478"}]
    alice_tok = mint("alice", peerMetadata=alice_meta, metadata={"iceServers": ice})
    alice_exp = jwt.decode(alice_tok, options={"verify_signature": False})["exp"]
    bob_tok = mint("bob", peerMetadata=bob_meta)

    async def scenario() -> None:
        alice = _client(broker, alice_tok)
        a = Recorder("alice", alice)
        bob = _client(broker, bob_tok)
        b = Recorder("bob", bob)
        try:
            now = int(time.time())
            await asyncio.wait_for(alice.connect(), STEP)
            assert alice.state == "connected"
            w = await a.wait_for(Connected)
            assert w.peer_id == "alice"
            assert w.expires_at == alice_exp
            assert abs(w.server_time - now) <= 60
            assert w.max_message_size > 0
            assert w.is_reconnect is False
            # welcome.metadata is passed through; the SDK reads metadata.iceServers from it.
            assert w.ice_servers is not None and [s.urls for s in w.ice_servers] == [ice[0]["urls"]]

            # subscribe -> ack (the call returns) -> presence snapshot (empty roster)
            await asyncio.wait_for(alice.subscribe(channel, _sub_opts(True)), STEP)
            snap_a = await a.wait_for(Presence, lambda p: p.channel == channel)
            assert snap_a.joined == () and snap_a.left == ()

            await asyncio.wait_for(bob.connect(), STEP)
            assert (await b.wait_for(Connected)).peer_id == "bob"
            await asyncio.wait_for(bob.subscribe(channel), STEP)
            snap_b = await b.wait_for(Presence, lambda p: p.channel == channel)
            assert snap_b.joined == (PresencePeer(peer_id="alice", metadata=alice_meta),)
            assert snap_b.left == ()
            joined = await a.wait_for(
                Presence, lambda p: any(j.peer_id == "bob" for j in p.joined)
            )
            assert joined.channel == channel
            assert joined.joined == (PresencePeer(peer_id="bob", metadata=bob_meta),)
            assert joined.left == ()

            # publish bob -> alice (alice subscribed with include_sender_metadata)
            payload = {"text": "hello from bob", "n": 1, "nested": {"ok": True}, "list": [1, "two", None]}
            await asyncio.wait_for(bob.publish(channel, payload), STEP)
            m = await a.wait_for(Message, lambda m: m.sender_peer_id == "bob")
            assert m.channel == channel and m.data == payload
            assert m.sender_metadata == bob_meta

            # publish alice -> bob (no include_sender_metadata); null data is legal
            await asyncio.wait_for(alice.publish(channel, None), STEP)
            m2 = await b.wait_for(Message, lambda m: m.sender_peer_id == "alice")
            assert m2.channel == channel and m2.data is None
            assert m2.sender_metadata is None

            # direct alice -> bob
            await asyncio.wait_for(alice.send("bob", {"secret": "psst"}), STEP)
            d = await b.wait_for(Direct, lambda d: d.sender_peer_id == "alice")
            assert d.data == {"secret": "psst"}
            assert d.sender_metadata == alice_meta

            # correlated error: the call raises with the server's code, connection lives on
            with pytest.raises(ServerRequestError) as ei:
                await asyncio.wait_for(alice.send("nobody-online", 1), STEP)
            assert ei.value.code == "peer_not_found"
            assert alice.state == "connected"

            # publishers never get their own messages back
            assert all(m.sender_peer_id != "bob" for m in b.all(Message))
            assert all(m.sender_peer_id != "alice" for m in a.all(Message))

            # bob leaves -> alice sees presence left
            await asyncio.wait_for(bob.close(), STEP)
            left = await a.wait_for(Presence, lambda p: any(x.peer_id == "bob" for x in p.left))
            assert left.channel == channel and left.joined == ()
            assert [x.peer_id for x in left.left] == ["bob"]

            assert a.all(ServerError) == [] and b.all(ServerError) == []
            assert a.all(Disconnected) == []
        finally:
            await alice.close()
            await bob.close()

    _run(scenario, 45)


def _sub_opts(include_sender_metadata: bool) -> Any:
    from metered_realtime import SubscribeOptions

    return SubscribeOptions(include_sender_metadata=include_sender_metadata)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("token_kind", "close_code"),
    [("wrong_secret", 4001), ("unknown_kid", 4001), ("expired", 4002)],
)
def test_python_sdk_bad_credentials_fail_connect_with_close_code(
    broker: Broker, token_kind: str, close_code: int
) -> None:
    token = {
        "wrong_secret": lambda: mint("mallory", secret="sk_secret_not_the_right_one_0123456789abcd"),
        "unknown_kid": lambda: mint("mallory", key_id="sk_id_nope"),
        "expired": lambda: mint("late", exp_in=-60),
    }[token_kind]()

    async def scenario() -> None:
        client = _client(broker, token)
        rec = Recorder("client", client)
        try:
            with pytest.raises(SignallingConnectError) as ei:
                await asyncio.wait_for(client.connect(), STEP)
            assert ei.value.close_code == close_code
            assert rec.all(Connected) == []
            assert client.state == "closed"
        finally:
            await client.close()

    _run(scenario, 20)


@pytest.mark.timeout(60)
def test_python_sdk_idle_connection_kept_alive_by_app_ping(broker: Broker) -> None:
    # inactivity_timeout=3 s: the SDK sends {"type":"ping"} after 1 s without inbound
    # frames and closes with 4000 if nothing arrives within 3 s. The broker's pong keeps it up.
    async def scenario() -> None:
        client = _client(broker, mint("idler"), inactivity_timeout=3.0)
        rec = Recorder("idler", client)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.sleep(4.5)
            assert client.state == "connected", rec.events
            assert rec.all(Disconnected) == []
            # still usable after the idle period
            await asyncio.wait_for(client.subscribe("idle-room"), STEP)
            snap = await rec.wait_for(Presence, lambda p: p.channel == "idle-room")
            assert snap.joined == ()
        finally:
            await client.close()

    _run(scenario, 20)


@pytest.mark.timeout(60)
def test_python_sdk_sees_going_away_on_graceful_shutdown() -> None:
    b = Broker(DEFAULT_CONFIG)
    try:

        async def scenario() -> None:
            client = _client(b, mint("stayer"), reconnect=True)
            rec = Recorder("stayer", client)
            try:
                await asyncio.wait_for(client.connect(), STEP)
                await asyncio.get_running_loop().run_in_executor(None, b.stop)
                ga = await rec.wait_for(GoingAway)
                assert ga.retry_after_ms > 0
                dis = await rec.wait_for(Disconnected)
                assert dis.code == 1001
                assert dis.will_reconnect is True  # 1001 is not terminal for the SDK
            finally:
                await client.close()

        _run(scenario, 30)
    finally:
        b.stop()


@pytest.mark.timeout(60)
def test_python_sdk_escaped_non_ascii_channel_meets_raw_utf8_client(broker: Broker) -> None:
    # The SDK serializes with json.dumps(ensure_ascii=True): "café-🎉" goes on the wire as
    # "caf\u00e9-\ud83c\udf89" (a surrogate pair). A client that sends the same name as raw
    # UTF-8 must land in the same channel, and the SDK must get the name back intact.
    import json

    from websockets.asyncio.client import connect as ws_connect

    channel = "café-🎉"

    async def scenario() -> None:
        client = _client(broker, mint("sdk-peer"))
        rec = Recorder("sdk-peer", client)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.wait_for(client.subscribe(channel), STEP)
            await rec.wait_for(Presence, lambda p: p.channel == channel)
            async with ws_connect(broker.url(token=mint("raw-peer")), open_timeout=STEP) as raw:
                welcome = json.loads(await asyncio.wait_for(raw.recv(), STEP))
                assert welcome["type"] == "welcome"
                frame = {"type": "subscribe", "channel": channel, "requestId": "s1"}
                await raw.send(json.dumps(frame, ensure_ascii=False))
                ack = json.loads(await asyncio.wait_for(raw.recv(), STEP))
                assert ack == {"type": "ack", "requestId": "s1"} or (
                    ack.get("type") == "ack" and ack.get("requestId") == "s1"
                ), ack
                joined = await rec.wait_for(
                    Presence, lambda p: any(j.peer_id == "raw-peer" for j in p.joined)
                )
                assert joined.channel == channel
                frame = {"type": "publish", "channel": channel, "data": "ünïcode ✓", "requestId": "p1"}
                await raw.send(json.dumps(frame, ensure_ascii=False))
                m = await rec.wait_for(Message, lambda m: m.sender_peer_id == "raw-peer")
                assert m.channel == channel
                assert m.data == "ünïcode ✓"
        finally:
            await client.close()

    _run(scenario, 30)


@pytest.mark.timeout(60)
def test_python_sdk_publishable_key(broker: Broker) -> None:
    # api_key= goes on the wire as ?key=; the server assigns a UUID peerId and expiresAt null.
    async def scenario() -> None:
        client = SignallingClient(api_key=PK_ANY, url=_origin(broker), reconnect=False)
        rec = Recorder("pk", client)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            w = await rec.wait_for(Connected)
            assert is_uuid(w.peer_id), w
            assert w.expires_at is None
            ch = f"public/{uuid.uuid4().hex[:8]}"
            await asyncio.wait_for(client.subscribe(ch), STEP)
            snap = await rec.wait_for(Presence, lambda p: p.channel == ch)
            assert snap.joined == () and snap.left == ()
            # outside the key's channel patterns: the subscribe call fails with the server's code
            with pytest.raises(ServerRequestError) as ei:
                await asyncio.wait_for(client.subscribe("private/x"), STEP)
            assert ei.value.code == "channel_not_authorized"
            assert client.state == "connected"
        finally:
            await client.close()

    _run(scenario, 20)


@pytest.mark.timeout(60)
def test_python_sdk_resubscribe_gets_fresh_snapshot(broker: Broker) -> None:
    # MeteredPeer (peer.py, _reconcile_deadline) re-sends `subscribe` for a channel it is
    # already subscribed to when no roster snapshot arrived after a reconnect, and waits
    # for a presence snapshot in answer; without one it gives up with ReconcileTimeoutError.
    # protocol.md section 5: every successful subscribe is followed by a snapshot.
    ch = f"room-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        other = _client(broker, mint("other", peerMetadata={"n": 1}))
        me = _client(broker, mint("me"))
        o_rec = Recorder("other", other)
        rec = Recorder("me", me)
        try:
            await asyncio.wait_for(other.connect(), STEP)
            await asyncio.wait_for(other.subscribe(ch), STEP)
            await o_rec.wait_for(Presence, lambda p: p.channel == ch)
            await asyncio.wait_for(me.connect(), STEP)
            await asyncio.wait_for(me.subscribe(ch), STEP)
            first = await rec.wait_for(Presence, lambda p: p.channel == ch)
            assert first.joined == (PresencePeer(peer_id="other", metadata={"n": 1}),)
            await o_rec.wait_for(Presence, lambda p: any(j.peer_id == "me" for j in p.joined))

            await asyncio.wait_for(me.subscribe(ch), STEP)  # idempotent re-subscribe
            await rec.wait_for(
                Presence, lambda p: p.channel == ch and p is not first and bool(p.joined)
            )
            snaps = [p for p in rec.all(Presence) if p.channel == ch]
            assert len(snaps) == 2 and snaps[1].joined == first.joined, snaps
            # ...and it is not announced to the others a second time
            await asyncio.sleep(0.5)
            joins = [p for p in o_rec.all(Presence) if any(j.peer_id == "me" for j in p.joined)]
            assert len(joins) == 1, o_rec.events
        finally:
            await me.close()
            await other.close()

    _run(scenario, 30)


@pytest.mark.timeout(90)
def test_python_sdk_gets_roster_of_a_channel_larger_than_its_frame_cap(broker: Broker) -> None:
    # Both SDKs refuse any inbound frame over 1 MiB (Python: websockets max_size=1 MiB ->
    # close 1009 and reconnect; JS: MAX_INBOUND_FRAME_BYTES). 280 peers with ~3.9 KiB of
    # peerMetadata (under the 4 KiB claim limit) make a roster of ~1.1 MB: an SDK client
    # subscribing to that channel must stay connected and still learn every peer.
    ch = f"big/{uuid.uuid4().hex[:8]}"
    meta = {"blob": "y" * 3900}
    n = 280
    peers = []
    for i in range(n):
        # Members lack the `presence` action, so they receive no snapshots and no joins:
        # nothing piles up unread in the harness clients (whose unread backlog could
        # otherwise trip the broker's slow-consumer cap and drop members from the roster).
        tok = mint(f"member-{i:03d}", peerMetadata=meta, permissions=["subscribe", "publish"])
        c = broker.connect(tok)
        c.send_json({"type": "subscribe", "channel": ch, "requestId": f"s{i}"})
        peers.append(c)
    for i, c in enumerate(peers):
        ack = c.expect_type("ack")
        assert ack["requestId"] == f"s{i}", ack

    async def scenario() -> None:
        client = _client(broker, mint("newcomer"))
        rec = Recorder("newcomer", client)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.wait_for(client.subscribe(ch), STEP)
            want = {f"member-{i:03d}" for i in range(n)}

            def seen() -> set[str]:
                return {
                    j.peer_id for p in rec.all(Presence) if p.channel == ch for j in p.joined
                }

            deadline = asyncio.get_running_loop().time() + 10
            while seen() != want and asyncio.get_running_loop().time() < deadline:
                assert rec.all(Disconnected) == [], rec.all(Disconnected)
                await asyncio.sleep(0.1)
            assert rec.all(Disconnected) == [], rec.all(Disconnected)
            missing = want - seen()
            assert not missing, f"{len(missing)} of {n} members never reported"
            assert client.state == "connected"
        finally:
            await client.close()

    try:
        _run(scenario, 40)
    finally:
        for c in peers:
            c.close()


@pytest.mark.timeout(60)
def test_python_sdk_token_expiry_reconnects_with_fresh_token_and_resubscribes(
    broker: Broker,
) -> None:
    # The server closes with 4002 shortly before exp. 4002 is not terminal for the SDK: it
    # reconnects, calling token_provider again (the documented token-rotation path), and
    # replays its subscriptions; the replayed subscribe is answered with a fresh snapshot.
    ch = f"room-{uuid.uuid4().hex[:8]}"
    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        # first token expires in ~2 s, later ones in an hour
        return mint("rotator", exp_in=2 if len(calls) == 1 else 3600)

    async def scenario() -> None:
        from metered_realtime import ReconnectOptions

        client = SignallingClient(
            token_provider=provider,
            url=_origin(broker),
            reconnect=ReconnectOptions(initial_delay=0.1, max_delay=1.0, max_attempts=5),
        )
        rec = Recorder("rotator", client)
        watcher = _client(broker, mint("watcher"))
        w_rec = Recorder("watcher", watcher)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.wait_for(client.subscribe(ch), STEP)
            await rec.wait_for(Presence, lambda p: p.channel == ch)
            await asyncio.wait_for(watcher.connect(), STEP)
            await asyncio.wait_for(watcher.subscribe(ch), STEP)
            await w_rec.wait_for(Presence, lambda p: p.channel == ch)

            dis = await rec.wait_for(Disconnected, timeout=6)
            assert dis.code == 4002 and dis.will_reconnect is True, dis
            again = await rec.wait_for(Connected, lambda c: c.is_reconnect, timeout=STEP)
            assert again.peer_id == "rotator" and again.expires_at > time.time() + 600
            assert len(calls) >= 2
            # auto-resubscribe replayed the channel: a second snapshot, listing the watcher
            await rec.wait_for(
                Presence,
                lambda p: p.channel == ch and any(j.peer_id == "watcher" for j in p.joined),
            )
            # and it is live again: a publish from the watcher arrives
            await asyncio.wait_for(watcher.publish(ch, {"after": "rotation"}), STEP)
            m = await rec.wait_for(Message, lambda m: m.sender_peer_id == "watcher")
            assert m.data == {"after": "rotation"}
        finally:
            await client.close()
            await watcher.close()

    _run(scenario, 30)


# --------------------------------------------------------------------------------------------
# Extensions (protocol.md §8): what the SDK sees on a history channel, and proof that a plain
# client sees exactly the Metered frames on a channel without extensions.
# --------------------------------------------------------------------------------------------

from test_history import CONFIG as HISTORY_CONFIG  # noqa: E402
from test_history import HKEY, HSECRET  # noqa: E402

# The Metered shapes of protocol.md §4 (required keys, allowed keys), for a plain client.
METERED_SHAPES = {
    "welcome": ({"type", "peerId", "expiresAt", "serverTime", "maxMessageSize"}, {"metadata"}),
    "ack": ({"type", "requestId"}, set()),
    "error": ({"type", "code"}, {"requestId", "message"}),
    "message": ({"type", "channel", "from", "data"}, {"fromMetadata"}),
    "direct": ({"type", "from", "data"}, {"fromMetadata"}),
    "presence": ({"type", "channel", "joined", "left"}, set()),
    "going_away": ({"type", "retryAfterMs"}, set()),
    "pong": ({"type"}, set()),
}


def assert_metered_shape(frame: dict) -> None:
    required, optional = METERED_SHAPES[frame["type"]]
    keys = set(frame)
    assert required <= keys and keys <= required | optional, f"not a Metered {frame['type']} frame: {frame}"


def _hmint(peer: str, **claims: Any) -> str:
    return mint(peer, key_id=HKEY, secret=HSECRET, **claims)


@pytest.mark.timeout(60)
def test_python_sdk_on_a_history_channel() -> None:
    # The SDK subscribes to and publishes on a history channel (acks carry epoch/offset,
    # messages carry offset on the wire); its callbacks see channel/from/data unchanged.
    import json

    from websockets.asyncio.client import connect as ws_connect

    from helpers import rest_request

    b = Broker(HISTORY_CONFIG)
    ch = f"h/sdk-{uuid.uuid4().hex[:8]}"

    async def raw_next(raw: Any, t: str) -> dict:
        while True:
            m = json.loads(await asyncio.wait_for(raw.recv(), STEP))
            if m["type"] == t:
                return m
            assert m["type"] == "presence", m

    async def scenario() -> None:
        client = _client(b, _hmint("sdk-hist"))
        rec = Recorder("sdk-hist", client)
        try:
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.wait_for(client.subscribe(ch, _sub_opts(True)), STEP)  # ack has epoch/offset
            await rec.wait_for(Presence, lambda p: p.channel == ch)
            async with ws_connect(b.url(token=_hmint("raw-hist", peerMetadata={"r": 1})), open_timeout=STEP) as raw:
                assert json.loads(await raw.recv())["type"] == "welcome"
                await raw.send(json.dumps({"type": "subscribe", "channel": ch, "requestId": "s1"}))
                ack = await raw_next(raw, "ack")
                assert ack["offset"] == 0 and isinstance(ack["epoch"], str), ack
                await rec.wait_for(Presence, lambda p: any(j.peer_id == "raw-hist" for j in p.joined))
                payload = {"x": [1, "two", None], "nested": {"ok": True}}
                await raw.send(json.dumps({"type": "publish", "channel": ch, "data": payload, "requestId": "p1"}))
                assert await raw_next(raw, "ack") == {"type": "ack", "requestId": "p1", "offset": 1}
                m = await rec.wait_for(Message, lambda m: m.sender_peer_id == "raw-hist")
                assert m == Message(channel=ch, sender_peer_id="raw-hist", data=payload, sender_metadata={"r": 1}), m
                # The SDK publishes on the history channel: its publish() resolves on the
                # ack (which carries offset); the raw subscriber sees the offset on the wire.
                await asyncio.wait_for(client.publish(ch, "from-sdk"), STEP)
                wire = await raw_next(raw, "message")
                assert wire == {"type": "message", "channel": ch, "from": "sdk-hist", "data": "from-sdk", "offset": 2}, wire
                r = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: rest_request(b, "POST", f"/v1/channels/{ch.replace('/', '%2F')}/publish",
                                               {"data": 3, "from": "backend"}, auth=(HKEY, HSECRET)))
                assert r.status == 200 and r.json == {"channel": ch, "offset": 3}, r
                m = await rec.wait_for(Message, lambda m: m.sender_peer_id == "backend")
                assert (m.channel, m.data, m.sender_metadata) == (ch, 3, None), m
                assert (await raw_next(raw, "message"))["offset"] == 3
                # Re-subscribing (as the SDK does after a reconnect) is still just an ack.
                await asyncio.wait_for(client.subscribe(ch), STEP)
            assert rec.all(ServerError) == [] and rec.all(Disconnected) == []
            assert [x.data for x in rec.all(Message)] == [payload, 3]
        finally:
            await client.close()

    try:
        _run(scenario, 40)
    finally:
        b.stop()


@pytest.mark.timeout(60)
def test_plain_client_sees_only_metered_frames_where_extensions_are_configured() -> None:
    # A broker with history configured: a raw client on a plain channel of the history app
    # (and on a history-shaped name in an app without history) gets exactly the frames of
    # protocol.md §1-7, byte for byte where the encoder is fixed.
    import json

    from helpers import KEY_ID, SECRET, rest_request

    b = Broker(HISTORY_CONFIG)
    try:
        for key, ch in (
            ((HKEY, HSECRET), f"p/plain-{uuid.uuid4().hex[:8]}"),  # history app, plain channel
            ((KEY_ID, SECRET), f"h/other-app-{uuid.uuid4().hex[:8]}"),  # app without history
        ):
            tok = mint("plain-a", key_id=key[0], secret=key[1], peerMetadata={"n": 1})
            other_tok = mint("plain-b", key_id=key[0], secret=key[1])
            a = b.raw(tok, shard=0)
            c = b.raw(other_tok, shard=1)
            frames: list[dict] = []

            def recv(ws: Any) -> str:
                t = ws.recv_text()
                frames.append(json.loads(t))
                return t

            recv(a), recv(c)  # welcomes
            a.send_json({"type": "subscribe", "channel": ch, "requestId": "s1", "includeSenderMetadata": True})
            assert recv(a) == '{"type":"ack","requestId":"s1"}'
            recv(a)  # snapshot
            c.send_json({"type": "subscribe", "channel": ch, "requestId": "s2"})
            assert recv(c) == '{"type":"ack","requestId":"s2"}'
            recv(c), recv(a)  # snapshot listing a; a sees c join
            c.send_text(f'{{"type":"publish","channel":"{ch}","data":{{"k":1}},"requestId":"p1"}}')
            assert recv(c) == '{"type":"ack","requestId":"p1"}'
            assert recv(a) == f'{{"type":"message","channel":"{ch}","from":"plain-b","data":{{"k":1}}}}'
            a.send_text(f'{{"type":"publish","channel":"{ch}","data":[1]}}')
            assert recv(c) == f'{{"type":"message","channel":"{ch}","from":"plain-a","data":[1]}}'
            r = rest_request(b, "POST", f"/v1/channels/{ch.replace('/', '%2F')}/publish", {"data": 2, "from": "system"}, auth=key)
            assert r.status == 200 and r.json == {"channel": ch}, r
            assert recv(a) == f'{{"type":"message","channel":"{ch}","from":"system","data":2}}'
            assert recv(c) == f'{{"type":"message","channel":"{ch}","from":"system","data":2}}'
            c.send_json({"type": "send", "to": "plain-a", "data": "hi", "requestId": "d1"})
            assert recv(c) == '{"type":"ack","requestId":"d1"}'
            recv(a)  # direct
            a.send_json({"type": "ping"})
            assert recv(a) == '{"type":"pong"}'
            a.send_json({"type": "subscribe", "channel": "_system/x", "requestId": "e1"})
            recv(a)  # error
            c.send_json({"type": "unsubscribe", "channel": ch, "requestId": "u1"})
            assert recv(c) == '{"type":"ack","requestId":"u1"}'
            recv(a)  # presence left
            for f in frames:
                assert_metered_shape(f)
                assert "offset" not in f and "epoch" not in f and "recovered" not in f, f
            assert [f["type"] for f in frames].count("message") == 4
            a.close()
            c.close()
    finally:
        b.stop()
