"""Exceptions of the ringcast client: server `error` frames, close codes, local failures."""

from __future__ import annotations

from typing import Optional


class RingcastError(Exception):
    """Base class of every exception this package raises (except TimeoutError and ValueError)."""


# -- `error` frames answering one command ------------------------------------------------------


class ServerError(RingcastError):
    """An `error` frame answering a command: `code` (protocol §6/§8) and the human `message`."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class PeerNotFound(ServerError):
    """`peer_not_found`: no other connection of the target peer is online."""


class RequestTimeout(ServerError):
    """`request_timeout`: no final reply before the request's deadline."""


class ResponderGone(ServerError):
    """`responder_gone`: the connection that took the request left before its final reply."""


class RequestNotFound(ServerError):
    """`request_not_found`: the request is over (answered, timed out, cancelled or taken)."""


_ERROR_CLASSES = {
    "peer_not_found": PeerNotFound,
    "request_timeout": RequestTimeout,
    "responder_gone": ResponderGone,
    "request_not_found": RequestNotFound,
}


def server_error(frame: dict) -> ServerError:
    code = str(frame.get("code", "unknown"))
    return _ERROR_CLASSES.get(code, ServerError)(code, str(frame.get("message", "")))


class RequestCancelled(RingcastError):
    """A request in flight ended without an answer on this side: the connection was lost
    (the broker cancels the requests of a requester that leaves: reason `connection_lost`)
    or the client was closed (reason `closed`)."""

    def __init__(self, reason: str):
        super().__init__(f"request cancelled: {reason}")
        self.reason = reason


class ClientClosed(RingcastError):
    """The client was closed with `close()`."""


# -- close codes ---------------------------------------------------------------------------------


class ConnectionClosed(RingcastError):
    """The WebSocket was closed with `code` (protocol §6). Subclasses name the codes that have a
    meaning of their own; anything else (1001 shutdown, 1006 network loss…) is `ConnectionLost`."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"connection closed {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class ConnectionLost(ConnectionClosed):
    """Closed for a reason that a reconnect may fix (network loss, shutdown, idle timeout)."""


class InvalidToken(ConnectionClosed):
    """4001: bad, unknown or malformed token or key, origin not allowed. Never retried."""


class TokenExpired(ConnectionClosed):
    """4002: the token expired. Retried only when `token` is a callable (a fresh token)."""


class ChannelsNotAuthorized(ConnectionClosed):
    """4003: the token's channels lie outside the key's patterns. Never retried."""


class SlowConsumer(ConnectionClosed):
    """4008: the client did not read fast enough; the broker dropped its queue."""


class ConnectionCapReached(ConnectionClosed):
    """4010: the app's connection cap was reached."""


class RateLimited(ConnectionClosed):
    """4011: the client sent more than its message (or ping) rate."""


class Kicked(ConnectionClosed):
    """4020: an admin disconnected this peer (REST `DELETE /v1/peers/{id}`). Never retried."""


_CLOSE_CLASSES = {
    4001: InvalidToken,
    4002: TokenExpired,
    4003: ChannelsNotAuthorized,
    4008: SlowConsumer,
    4010: ConnectionCapReached,
    4011: RateLimited,
    4020: Kicked,
}

#: Close codes after which the client does not reconnect (4002 too, unless the token is a callable).
FATAL_CODES = frozenset({4001, 4003, 4020})


def close_error(code: Optional[int], reason: str = "") -> ConnectionClosed:
    code = 1006 if code is None else code
    return _CLOSE_CLASSES.get(code, ConnectionLost)(code, reason)
