"""The asyncio client: one WebSocket, one reader task, reconnect with backoff and resume.

Layout:
- `Client` owns the socket and one task (`_run`) that reads frames, dispatches them and, when the
  socket drops, reconnects and resubscribes. Nothing else runs in the background: responder
  handlers run in one task per incoming request, and that is all.
- Every command that expects an answer carries a `requestId`; `_pending` maps it to a future
  (and an optional callback run by the reader before any later frame, so that a subscribe
  ack's epoch/offset are known before the replay that follows it is dispatched).
- Every buffer is bounded (`_Queue`): when full, the oldest item is dropped, counted and logged.
  The reader never waits for the application, so a slow consumer of one subscription cannot
  stall acks, RPC replies or other subscriptions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import json
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import connect as ws_connect

from .errors import (
    FATAL_CODES,
    ClientClosed,
    ConnectionClosed,
    ConnectionLost,
    RequestCancelled,
    RequestTimeout,
    RingcastError,
    close_error,
    server_error,
)

log = logging.getLogger("ringcast")

#: Default bound of every client-side buffer (messages of one subscription, direct messages,
#: chunks of one streamed reply).
DEFAULT_BUFFER = 1000

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]


# -- values handed to the application ----------------------------------------------------------


@dataclass
class Message:
    """A channel publication. `offset` is set on history channels only."""

    channel: str
    from_: str
    data: Any
    offset: Optional[int] = None
    from_metadata: Optional[dict] = None


@dataclass
class Direct:
    """A direct message (`send`) from another peer."""

    from_: str
    data: Any
    from_metadata: Optional[dict] = None


@dataclass
class Presence:
    """A presence frame: peers that joined / left, as {peerId: metadata or None}. Right after a
    (re)subscribe, `joined` is the full roster (the snapshot)."""

    channel: str
    joined: dict
    left: dict


@dataclass
class History:
    """The answer of `Client.history`."""

    epoch: str
    offset: int
    messages: list


@dataclass
class IncomingRequest:
    """A request (§8.4) received by this client's responder handler."""

    from_: str
    data: Any
    timeout_ms: Optional[int]
    reply_to: str
    from_metadata: Optional[dict] = None
    #: Set when the broker sends `cancel` for this request; `cancel_reason` says why
    #: (`taken`, `timeout`, `cancelled`, `requester_gone`, or `connection_lost` locally).
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: Optional[str] = None


class _End(Exception):
    """Raised by `_Queue.get` once a queue has ended normally."""


class _Queue:
    """A bounded FIFO with drop-oldest, and an end (normal, or an exception to raise)."""

    def __init__(self, maxlen: int, what: str):
        self._items: collections.deque = collections.deque()
        self._maxlen = max(1, maxlen)
        self._what = what
        self._event = asyncio.Event()
        self._end: Optional[BaseException] = None
        self.dropped = 0

    def put(self, item: Any) -> None:
        if self._end is not None:
            return
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8…: no log flood
                log.warning("ringcast: %s buffer full (%d): dropped %d oldest so far", self._what, self._maxlen, self.dropped)
        self._items.append(item)
        self._event.set()

    def finish(self, exc: Optional[BaseException] = None) -> None:
        if self._end is None:
            self._end = exc if exc is not None else _End()
            self._event.set()

    async def get(self) -> Any:
        while True:
            if self._items:
                return self._items.popleft()
            if self._end is not None:
                raise self._end
            self._event.clear()
            await self._event.wait()


def _glob(pattern: str) -> re.Pattern:
    """The §1 channel glob as a regex: `*` any run without `/`, `**` any run, `\\*` `\\\\` literal."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.S)


def _peers(entries: Any) -> dict:
    return {e["peerId"]: e.get("metadata") for e in entries or () if isinstance(e, dict) and "peerId" in e}


# -- subscriptions -------------------------------------------------------------------------------


class Subscription:
    """One subscription: an async iterator of `Message`s (bounded: see `DEFAULT_BUFFER`).

    `epoch`/`offset` are the position reached on a history channel, `recovered` the answer of
    the last subscribe that asked to resume (None when it did not), `peers` the live roster
    ({peerId: metadata}) and `dropped` the number of messages dropped because the buffer was full.
    """

    def __init__(self, client: "Client", channel: str, *, pattern: bool, group: Optional[str],
                 include_sender_metadata: bool, resume: bool, on_presence: Optional[Callable[[Presence], Any]],
                 buffer: int):
        self._client = client
        self.channel = channel
        self.pattern = pattern
        self.group = group
        self.include_sender_metadata = include_sender_metadata
        self.resume = resume
        self.on_presence = on_presence
        self.epoch: Optional[str] = None
        self.offset: Optional[int] = None
        self.recovered: Optional[bool] = None
        self.peers: dict = {}
        self._own: set = set()  # offsets this connection published (never delivered back to it)
        self._regex = _glob(channel) if pattern else None
        self._queue = _Queue(buffer, f"subscription {channel!r}")

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} pattern={self.pattern} epoch={self.epoch} offset={self.offset}>"

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._queue.get()
        except _End:
            raise StopAsyncIteration from None

    async def get(self, timeout: Optional[float] = None) -> Message:
        """The next message; `ClientClosed` once the subscription has ended, `TimeoutError`."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except _End:
            raise ClientClosed("subscription ended") from None

    async def unsubscribe(self) -> None:
        """Leave the channel (or pattern); the iterator ends after the buffered messages."""
        await self._client._unsubscribe(self)

    # -- used by the client ---------------------------------------------------------------------

    def _frame(self, since: Optional[tuple]) -> dict:
        frame: dict = {"type": "subscribe", "channel": self.channel}
        if self.pattern:
            frame["pattern"] = True
        if self.group is not None:
            frame["group"] = self.group
        if self.include_sender_metadata:
            frame["includeSenderMetadata"] = True
        if since is not None:
            frame["since"] = {"epoch": since[0], "offset": since[1]}
            self.epoch, self.offset = since
        return frame

    def _on_ack(self, ack: dict, since: Optional[tuple]) -> None:
        self.peers.clear()  # the snapshot that follows is the whole roster
        if "epoch" not in ack:
            return
        epoch, last = ack["epoch"], ack.get("offset", 0)
        if since is None:
            self.offset, self.recovered = last, None
        else:
            self.recovered = ack.get("recovered")
            if epoch != since[0]:
                self.offset = 0  # a new epoch: the replay is every retained message
                self._own.clear()
            elif self.offset is None or self.offset > last:
                self.offset = last  # ahead of the channel: live resumes after `last`
        self.epoch = epoch
        self._client._positions[self.channel] = (self.epoch, self.offset)

    def _on_message(self, frame: dict) -> None:
        offset = frame.get("offset")
        if offset is not None and not self.pattern:
            if self.offset is not None and offset <= self.offset:
                return  # already delivered (a resume's replay racing a re-subscribe)
            self.offset = offset
            self._advance()
        self._queue.put(Message(frame.get("channel", self.channel), frame.get("from", ""), frame.get("data"),
                                offset, frame.get("fromMetadata")))

    def _published(self, offset: int) -> None:
        """This connection published `offset`: the broker never delivers it back, so the position
        steps over it once every offset before it was delivered (a resume must not replay it)."""
        if self.offset is not None and offset > self.offset:
            self._own.add(offset)
            self._advance()

    def _advance(self) -> None:
        while self.offset + 1 in self._own:
            self._own.discard(self.offset + 1)
            self.offset += 1
        self._client._positions[self.channel] = (self.epoch, self.offset)

    def _on_presence(self, frame: dict) -> None:
        event = Presence(self.channel, _peers(frame.get("joined")), _peers(frame.get("left")))
        self.peers.update(event.joined)
        for peer in event.left:
            self.peers.pop(peer, None)
        if self.on_presence is not None:
            try:
                self.on_presence(event)
            except Exception:
                log.exception("ringcast: on_presence callback failed")


# -- the client ----------------------------------------------------------------------------------


class Client:
    """A connection to a ringcast broker. Create it with `await ringcast.connect(...)`."""

    def __init__(self, url: str, *, token: Optional[TokenSource], key: Optional[str], origin: Optional[str],
                 reconnect: bool, max_backoff: float, op_timeout: float, buffer: int):
        if (token is None) == (key is None):
            raise ValueError("give exactly one of token= or key=")
        self._url, self._token, self._key, self._origin = url, token, key, origin
        self._reconnect, self._max_backoff, self.op_timeout = reconnect, max_backoff, op_timeout
        self._buffer = buffer
        self.welcome: dict = {}
        self.peer_id: Optional[str] = None
        self._ws: Any = None
        self._ready = asyncio.Event()
        self._closing = False
        self.error: Optional[BaseException] = None  # why the client stopped, once it has
        self._rids = itertools.count(1)
        self._pending: dict = {}  # requestId -> (future, on_ack)
        self._calls: dict = {}  # requestId of a request (§8.4) in flight -> _Queue of reply frames
        self._serving: dict = {}  # replyTo -> (IncomingRequest, task)
        self._subs: dict = {}  # (channel, pattern) -> Subscription
        self._positions: dict = {}  # history channel -> (epoch, offset) last seen, for since="auto"
        self._directs = _Queue(buffer, "direct messages")
        self._handler: Optional[Callable] = None
        self._retry_after: Optional[float] = None
        self._tasks: set = set()
        self._run_task: Optional[asyncio.Task] = None

    # -- connection ------------------------------------------------------------------------------

    async def _open(self) -> tuple:
        parts = urlsplit(self._url)
        query = parse_qsl(parts.query)
        if self._key is not None:
            query.append(("key", self._key))
        else:
            token = self._token() if callable(self._token) else self._token
            if inspect.isawaitable(token):
                token = await token
            query.append(("token", token))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path if parts.path not in ("", "/") else "/v1",
                          urlencode(query), ""))
        ws = await ws_connect(url, origin=self._origin, max_size=None, compression=None, open_timeout=self.op_timeout)
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), self.op_timeout))
        except websockets.ConnectionClosed:
            raise close_error(ws.close_code, ws.close_reason or "") from None
        except BaseException:
            await ws.close()
            raise
        if not isinstance(first, dict) or first.get("type") != "welcome":
            await ws.close()
            raise RingcastError(f"expected welcome, got {first!r}")
        return ws, first

    def _connected(self, ws: Any, welcome: dict) -> None:
        self._ws, self.welcome, self.peer_id = ws, welcome, welcome.get("peerId")
        self._ready.set()

    async def _start(self) -> "Client":
        self._connected(*await self._open())
        self._run_task = asyncio.create_task(self._run(), name="ringcast-reader")
        return self

    async def _run(self) -> None:
        """Read until the socket closes; then reconnect (with backoff) or stop."""
        while True:
            ws = self._ws
            try:
                async for raw in ws:
                    try:
                        self._dispatch(raw)
                    except Exception:  # a bug must not end the reader
                        log.exception("ringcast: dispatch failed")
            except websockets.ConnectionClosed:
                pass
            err = close_error(ws.close_code, ws.close_reason or "")
            if self._closing:
                return self._disconnected(ClientClosed("client closed"))
            self._disconnected(err)
            fatal = err.code in FATAL_CODES or (err.code == 4002 and not callable(self._token))
            if fatal or not self._reconnect:
                return self._stop(err)
            log.info("ringcast: %s; reconnecting", err)
            if not await self._reconnect_loop():
                return

    async def _reconnect_loop(self) -> bool:
        attempt = 0
        delay = self._retry_after if self._retry_after is not None else 0.1 * random.random()
        self._retry_after = None
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                ws, welcome = await self._open()
            except ConnectionClosed as e:
                if e.code in FATAL_CODES or (e.code == 4002 and not callable(self._token)):
                    self._stop(e)
                    return False
                log.info("ringcast: reconnect refused: %s", e)
            except Exception as e:  # network, HTTP refusal (429), bad welcome, a failing token callable
                log.info("ringcast: reconnect failed: %r", e)
            else:
                self._connected(ws, welcome)
                self._spawn(self._resubscribe())
                return True
            attempt += 1
            delay = min(self._max_backoff, 0.25 * 2**attempt) * (0.5 + random.random() / 2)
        return False

    async def _resubscribe(self) -> None:
        async def one(sub: Subscription) -> None:
            since = (sub.epoch, sub.offset) if sub.resume and sub.epoch is not None else None
            try:
                await self._call(sub._frame(since), lambda ack: sub._on_ack(ack, since))
            except ConnectionClosed:
                pass  # the next reconnect resubscribes again
            except RingcastError as e:  # e.g. the new token no longer allows the channel
                log.warning("ringcast: resubscribe %r failed: %s", sub.channel, e)
                self._subs.pop((sub.channel, sub.pattern), None)
                sub._queue.finish(e)

        await asyncio.gather(*(one(s) for s in list(self._subs.values())))

    def _disconnected(self, err: RingcastError) -> None:
        """The socket is gone: fail what waited on it. Subscriptions stay (they resubscribe)."""
        reason = "closed" if isinstance(err, ClientClosed) else "connection_lost"
        if self.error is None:
            self._ready.clear()
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for q in self._calls.values():
            q.finish(RequestCancelled(reason))
        self._calls.clear()
        for req, task in self._serving.values():
            req.cancel_reason = reason
            req.cancelled.set()
            task.cancel()
        self._serving.clear()

    def _stop(self, err: BaseException) -> None:
        """The client is done for good: end every subscription and iterator with `err`."""
        self.error = err
        self._closing = True
        self._ready.set()  # wake waiters, which then see `error`
        normal = isinstance(err, ClientClosed)
        for sub in self._subs.values():
            sub._queue.finish(None if normal else err)
        self._directs.finish(None if normal else err)

    async def close(self) -> None:
        """Close the connection (1000) and stop; subscriptions' iterators end normally."""
        if self.error is not None:
            return
        closed = ClientClosed("client closed")
        self._stop(closed)
        self._disconnected(closed)
        if self._ws is not None:
            await self._ws.close()
        if self._run_task is not None:
            self._run_task.cancel()
            await asyncio.gather(self._run_task, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()

    async def wait_closed(self) -> None:
        """Wait until the client stops; raises the error that stopped it (not after `close()`)."""
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
        if self.error is not None and not isinstance(self.error, ClientClosed):
            raise self.error

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_ready(self) -> None:
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), self.op_timeout)
        if self.error is not None:
            raise self.error

    async def _send(self, frame: dict) -> None:
        await self._wait_ready()
        text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
        limit = self.welcome.get("maxMessageSize")
        if limit and len(text.encode()) > limit:
            raise ValueError(f"frame of {len(text.encode())} bytes over the broker's maxMessageSize {limit}")
        try:
            await self._ws.send(text)
        except websockets.ConnectionClosed:
            raise close_error(self._ws.close_code, self._ws.close_reason or "") from None

    async def _call(self, frame: dict, on_ack: Optional[Callable[[dict], None]] = None) -> dict:
        """Send `frame` with a fresh requestId; return its `ack` or raise its `error`."""
        rid = f"r{next(self._rids)}"
        frame["requestId"] = rid
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, on_ack)
        try:
            await self._send(frame)
            return await asyncio.wait_for(fut, self.op_timeout)
        finally:
            self._pending.pop(rid, None)

    # -- receiving -------------------------------------------------------------------------------

    def _dispatch(self, raw: Any) -> None:
        try:
            frame = json.loads(raw)
            kind = frame["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("ringcast: unparsable frame ignored")
            return
        if kind == "message":
            sub = self._route(frame.get("channel", ""))
            if sub is not None:
                sub._on_message(frame)
        elif kind in ("ack", "error", "pong"):
            rid = frame.get("requestId")
            if rid in self._pending:
                fut, on_ack = self._pending.pop(rid)
                if kind == "error":
                    fut.done() or fut.set_exception(server_error(frame))
                else:
                    if on_ack is not None:
                        on_ack(frame)
                    fut.done() or fut.set_result(frame)
            elif rid in self._calls and kind == "error":
                self._calls.pop(rid).finish(server_error(frame))
            elif kind == "error" and rid is None:
                log.warning("ringcast: server error %s: %s", frame.get("code"), frame.get("message", ""))
        elif kind == "presence":
            sub = self._subs.get((frame.get("channel"), False))
            if sub is not None:
                sub._on_presence(frame)
        elif kind == "direct":
            self._directs.put(Direct(frame.get("from", ""), frame.get("data"), frame.get("fromMetadata")))
        elif kind == "reply":
            q = self._calls.get(frame.get("requestId"))
            if q is not None:
                q.put(frame)
        elif kind == "request":
            self._on_request(frame)
        elif kind == "cancel":
            entry = self._serving.pop(frame.get("replyTo"), None)
            if entry is not None:
                req, task = entry
                req.cancel_reason = frame.get("reason")
                req.cancelled.set()
                task.cancel()
        elif kind == "going_away":
            self._retry_after = max(0, frame.get("retryAfterMs", 1000)) / 1000

    def _route(self, channel: str) -> Optional[Subscription]:
        sub = self._subs.get((channel, False))
        if sub is not None:
            return sub
        for s in self._subs.values():
            if s.pattern and s._regex.fullmatch(channel):
                return s
        return None

    # -- pub/sub -----------------------------------------------------------------------------------

    async def subscribe(self, channel: str, *, since: Any = None, pattern: bool = False, group: Optional[str] = None,
                        include_sender_metadata: bool = False, on_presence: Optional[Callable[[Presence], Any]] = None,
                        buffer: Optional[int] = None) -> Subscription:
        """Subscribe and return the `Subscription` (an async iterator of `Message`).

        `since`: None (live from now), `(epoch, offset)` (replay what followed, then live) or
        `"auto"` (resume from the position this client last saw on the channel, if any). With
        `(epoch, offset)` or `"auto"`, a reconnect resubscribes from the last offset delivered,
        so the stream has no gap while the channel retained it (`sub.recovered` tells).
        """
        key = (channel, pattern)
        if key in self._subs:
            raise ValueError(f"already subscribed to {channel!r}")
        if since is not None and (pattern or group is not None):
            raise ValueError("since cannot be combined with pattern or group")
        if self._group_overlap(channel, pattern, group):
            raise ValueError("a queue-group subscription and a pattern matching its channel cannot be combined on one "
                             "client: the broker sends the pattern's copy and the group's pick as identical frames")
        if isinstance(since, dict):
            since = (since["epoch"], since["offset"])
        resume = since is not None
        if since == "auto":
            since = self._positions.get(channel)
        sub = Subscription(self, channel, pattern=pattern, group=group, include_sender_metadata=include_sender_metadata,
                           resume=resume, on_presence=on_presence, buffer=buffer or self._buffer)
        self._subs[key] = sub
        try:
            await self._call(sub._frame(since), lambda ack: sub._on_ack(ack, since))
        except BaseException:
            self._subs.pop(key, None)
            raise
        return sub

    def _group_overlap(self, channel: str, pattern: bool, group: Optional[str]) -> bool:
        if group is not None:
            return any(s.pattern and s._regex.fullmatch(channel) for s in self._subs.values())
        if pattern:
            regex = _glob(channel)
            return any(s.group is not None and regex.fullmatch(s.channel) for s in self._subs.values())
        return False

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get((sub.channel, sub.pattern)) is not sub:
            return
        del self._subs[(sub.channel, sub.pattern)]
        sub._queue.finish()
        if self._ready.is_set() and self.error is None:
            frame: dict = {"type": "unsubscribe", "channel": sub.channel}
            if sub.pattern:
                frame["pattern"] = True
            await self._call(frame)

    async def publish(self, channel: str, data: Any) -> Optional[int]:
        """Publish and wait for the ack; returns the offset on a history channel, else None."""

        def on_ack(ack: dict) -> None:
            sub = self._subs.get((channel, False))
            if sub is not None and isinstance(ack.get("offset"), int):
                sub._published(ack["offset"])

        return (await self._call({"type": "publish", "channel": channel, "data": data}, on_ack)).get("offset")

    async def send(self, peer: str, data: Any) -> None:
        """Send a direct message to every other connection of `peer` (`PeerNotFound` if none)."""
        await self._call({"type": "send", "to": peer, "data": data})

    def directs(self) -> AsyncIterator[Direct]:
        """The direct messages received (one bounded buffer per client)."""
        return _Iter(self._directs)

    async def history(self, channel: str, since_offset: Optional[int] = None, limit: Optional[int] = None) -> History:
        """The retained messages of a history channel (oldest first, or those after `since_offset`)."""
        frame: dict = {"type": "history", "channel": channel}
        if since_offset is not None:
            frame["sinceOffset"] = since_offset
        if limit is not None:
            frame["limit"] = limit
        ack = await self._call(frame)
        msgs = [Message(channel, m.get("from", ""), m.get("data"), m.get("offset"), m.get("fromMetadata"))
                for m in ack.get("messages", [])]
        return History(ack.get("epoch", ""), ack.get("offset", 0), msgs)

    async def ping(self) -> None:
        """One application-level round trip (`ping` answered by `pong`)."""
        await self._call({"type": "ping"})

    # -- requests and replies (§8.4) --------------------------------------------------------------

    async def _replies(self, peer: str, data: Any, timeout: float) -> AsyncIterator[tuple]:
        """Send one request and yield (data, final) for each reply, in order. Left before the
        final reply (break, exception, task cancelled, local deadline), it sends `cancel`."""
        rid = f"q{next(self._rids)}"
        q = _Queue(self._buffer, f"reply stream {rid}")
        self._calls[rid] = q
        done = False
        try:
            await self._send({"type": "request", "to": peer, "requestId": rid, "data": data,
                              "timeoutMs": max(1, round(timeout * 1000))})
            deadline = asyncio.get_running_loop().time() + timeout + 2.0  # the broker's deadline comes first
            while True:
                try:
                    reply = await asyncio.wait_for(q.get(), max(0.0, deadline - asyncio.get_running_loop().time()))
                except asyncio.TimeoutError:
                    raise RequestTimeout("request_timeout", "no answer from the broker by the deadline") from None
                except RingcastError:
                    done = True  # the broker ended it (error frame) or the connection is gone
                    raise
                done = reply.get("final", True)
                yield reply.get("data"), done
                if done:
                    return
        finally:
            self._calls.pop(rid, None)
            if not done and self._ready.is_set() and self.error is None:
                self._spawn(self._send_quietly({"type": "cancel", "requestId": rid}))

    async def _send_quietly(self, frame: dict) -> None:
        try:
            await self._send(frame)
        except (RingcastError, asyncio.TimeoutError):
            pass

    async def request(self, peer: str, data: Any, *, timeout: float = 30.0) -> Any:
        """Send a request to `peer` and return the data of its final reply (the chunks of a
        streamed reply are skipped: use `request_stream` for them). Cancelling the awaiting
        task cancels the request at the broker."""
        async with contextlib.aclosing(self._replies(peer, data, timeout)) as replies:
            async for value, final in replies:
                if final:
                    return value

    async def request_stream(self, peer: str, data: Any, *, timeout: float = 30.0) -> AsyncIterator[Any]:
        """Send a request and yield the data of every reply in order (`final:false` chunks, then
        the final reply's data unless it is null). The request is sent when iteration starts;
        leaving the loop early (break, exception, task cancelled) cancels it at the broker."""
        async with contextlib.aclosing(self._replies(peer, data, timeout)) as replies:
            async for value, final in replies:
                if not final or value is not None:
                    yield value
    def on_request(self, handler: Callable[[IncomingRequest], Any]) -> Callable[[IncomingRequest], Any]:
        """Set the responder: `handler(req)` returns the reply's data (or a coroutine of it), or
        is an async generator whose items are sent as `final:false` chunks, followed by a
        `final:true` reply with null data. Usable as a decorator (`@client.responder`)."""
        self._handler = handler
        return handler

    responder = on_request

    def _on_request(self, frame: dict) -> None:
        reply_to = frame.get("replyTo")
        if self._handler is None or not isinstance(reply_to, str):
            log.debug("ringcast: request ignored (no responder)")
            return
        req = IncomingRequest(frame.get("from", ""), frame.get("data"), frame.get("timeoutMs"), reply_to,
                              frame.get("fromMetadata"))
        task = asyncio.ensure_future(self._serve(req))
        self._serving[reply_to] = (req, task)

    async def _serve(self, req: IncomingRequest) -> None:
        async def reply(value: Any, final: bool) -> None:
            if not req.cancelled.is_set():
                await self._send({"type": "reply", "replyTo": req.reply_to, "data": value, "final": final})

        try:
            result = self._handler(req)
            if inspect.isasyncgen(result):
                try:
                    async for chunk in result:
                        await reply(chunk, False)
                finally:
                    await result.aclose()
                await reply(None, True)
            else:
                if inspect.isawaitable(result):
                    result = await result
                await reply(result, True)
        except asyncio.CancelledError:
            if not req.cancelled.is_set():
                raise
        except (ConnectionClosed, ClientClosed):
            pass
        except Exception as e:  # a failing handler still answers, so the requester does not wait
            log.exception("ringcast: request handler failed")
            try:
                await reply({"error": f"{type(e).__name__}: {e}"}, True)
            except RingcastError:
                pass
        finally:
            entry = self._serving.get(req.reply_to)
            if entry is not None and entry[0] is req:
                del self._serving[req.reply_to]


class _Iter:
    def __init__(self, queue: _Queue):
        self._queue = queue

    def __aiter__(self) -> "_Iter":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._queue.get()
        except _End:
            raise StopAsyncIteration from None

    async def get(self, timeout: Optional[float] = None) -> Any:
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except _End:
            raise ClientClosed("ended") from None


class _Connect:
    """`await connect(...)` or `async with connect(...) as client`."""

    def __init__(self, client: Client):
        self._client = client

    def __await__(self):
        return self._client._start().__await__()

    async def __aenter__(self) -> Client:
        return await self._client._start()

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.close()


def connect(url: str, *, token: Optional[TokenSource] = None, key: Optional[str] = None, origin: Optional[str] = None,
            reconnect: bool = True, max_backoff: float = 10.0, op_timeout: float = 10.0,
            buffer: int = DEFAULT_BUFFER) -> _Connect:
    """Connect to `url` (`ws://host:port/v1`; `/v1` is added to an empty path) with a JWT
    (`token`: a string, or a callable returning one, called again for every reconnect) or a
    publishable key (`key`). Waits for `welcome`; a refusal raises the close code's exception
    (`InvalidToken`…). `op_timeout` bounds each wait for an ack (`TimeoutError`); `buffer`
    bounds each client-side queue (drop-oldest)."""
    return _Connect(Client(url, token=token, key=key, origin=origin, reconnect=reconnect, max_backoff=max_backoff,
                           op_timeout=op_timeout, buffer=buffer))
