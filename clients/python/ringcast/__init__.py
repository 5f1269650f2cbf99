"""ringcast: the asyncio client of the ringcast realtime broker (Metered protocol + extensions).

    import ringcast
    async with ringcast.connect("ws://127.0.0.1:8080/v1", token=jwt) as client:
        sub = await client.subscribe("runs/42", since="auto")
        offset = await client.publish("runs/42", {"step": 1})
        async for msg in sub: ...

See clients/README.md for every verb.
"""

from .client import (
    DEFAULT_BUFFER,
    Client,
    Direct,
    History,
    IncomingRequest,
    Message,
    Presence,
    Subscription,
    connect,
)
from .errors import (
    ChannelsNotAuthorized,
    ClientClosed,
    ConnectionCapReached,
    ConnectionClosed,
    ConnectionLost,
    InvalidToken,
    Kicked,
    PeerNotFound,
    RateLimited,
    RequestCancelled,
    RequestNotFound,
    RequestTimeout,
    ResponderGone,
    RingcastError,
    ServerError,
    SlowConsumer,
    TokenExpired,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BUFFER", "Client", "Direct", "History", "IncomingRequest", "Message", "Presence", "Subscription",
    "connect", "ChannelsNotAuthorized", "ClientClosed", "ConnectionCapReached", "ConnectionClosed",
    "ConnectionLost", "InvalidToken", "Kicked", "PeerNotFound", "RateLimited", "RequestCancelled",
    "RequestNotFound", "RequestTimeout", "ResponderGone", "RingcastError", "ServerError", "SlowConsumer",
    "TokenExpired",
]
