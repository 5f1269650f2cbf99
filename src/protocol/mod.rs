//! The wire vocabulary: client message parsing and server frame encoding (sans-IO).
//!
//! This module knows nothing about sockets or runtimes. It turns a WebSocket text
//! frame's payload into a borrowed [`ClientMsg`] ([`Parser::parse`]) and builds complete,
//! ready-to-write server frames ([`encode`]) as [`bytes::Bytes`].
//!
//! * [`ErrorCode`]: every `error.code` of protocol.md §6.
//! * [`close`]: every WebSocket close code the server sends.
//! * [`parse`]: client → server commands (protocol.md §3), channel / peerId validation.
//! * [`scan`]: the strict RFC 8259 scanner that vouches for spliced `data` and nesting depth.
//! * [`encode`]: server → client frames (protocol.md §2, §4), WebSocket control frames.

pub mod encode;
pub mod parse;
pub(crate) mod scan;

pub use encode::{json_str_len, write_json_str, PresencePeer};
pub use parse::{
    validate_channel, validate_peer_id, ClientMsg, ParseError, Parser, MAX_CHANNEL_LEN, MAX_DEPTH,
    MAX_PEER_ID_LEN, MAX_REQUEST_ID_CHARS, RESERVED_CHANNEL_PREFIXES,
};

use std::fmt;

/// Default maximum inbound frame / message size in bytes (protocol.md §6,
/// advertised as `welcome.maxMessageSize`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65_536;

/// `error.code` values sent in `{"type":"error",...}` frames (protocol.md §6).
///
/// Clients must accept unknown codes, so adding a variant is not a breaking change
/// on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, no / non-string `type`, bad `requestId`, duplicate
    /// top-level key, nesting too deep, non-bool `includeSenderMetadata`.
    MalformedMessage,
    /// `type` is a string but not a known command.
    UnknownType,
    /// `channel` missing, not a string, or not a valid channel name.
    InvalidChannel,
    /// `to` missing, not a string, or not a valid peerId.
    InvalidPeerId,
    /// The channel is outside the connection's channel patterns.
    ChannelNotAuthorized,
    /// The channel uses a reserved prefix (`_metered/`, `_internal/`, `_system/`).
    ChannelReserved,
    /// The connection already has the maximum number of subscriptions.
    ChannelLimitExceeded,
    /// `send` to a peer with no connection online.
    PeerNotFound,
    /// `publish` / `send` without `data`.
    MissingData,
    /// The connection's credentials lack the action (publish/subscribe/presence/send).
    ActionNotPermitted,
    /// [ext] Over the message rate when the rate-limit policy is `error`.
    RateLimited,
    /// A backend (e.g. cluster link) failed.
    BackendError,
    /// Bug or unexpected condition in the server.
    InternalError,
    /// [ext] `group` not a string of 1–64 chars of `A-Z a-z 0-9 _ . -` (protocol §8.2).
    InvalidGroup,
    /// [ext] A subscribe that would give the connection a second, different subscription
    /// to the channel (another group, a group over a plain one or the reverse).
    SubscriptionConflict,
    /// [ext] Fields that may not go together (e.g. `group` with `pattern:true`).
    InvalidRequest,
}

impl ErrorCode {
    /// Every code, in protocol.md §6 order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::MalformedMessage,
        ErrorCode::UnknownType,
        ErrorCode::InvalidChannel,
        ErrorCode::InvalidPeerId,
        ErrorCode::ChannelNotAuthorized,
        ErrorCode::ChannelReserved,
        ErrorCode::ChannelLimitExceeded,
        ErrorCode::PeerNotFound,
        ErrorCode::MissingData,
        ErrorCode::ActionNotPermitted,
        ErrorCode::RateLimited,
        ErrorCode::BackendError,
        ErrorCode::InternalError,
        ErrorCode::InvalidGroup,
        ErrorCode::SubscriptionConflict,
        ErrorCode::InvalidRequest,
    ];

    /// The wire string, e.g. `"malformed_message"`. Contains only `[a-z_]`, so it
    /// never needs JSON escaping.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::InvalidPeerId => "invalid_peer_id",
            ErrorCode::ChannelNotAuthorized => "channel_not_authorized",
            ErrorCode::ChannelReserved => "channel_reserved",
            ErrorCode::ChannelLimitExceeded => "channel_limit_exceeded",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::MissingData => "missing_data",
            ErrorCode::ActionNotPermitted => "action_not_permitted",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BackendError => "backend_error",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::InvalidGroup => "invalid_group",
            ErrorCode::SubscriptionConflict => "subscription_conflict",
            ErrorCode::InvalidRequest => "invalid_request",
        }
    }

    /// Inverse of [`ErrorCode::as_str`]; `None` for unknown strings.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes sent by the server (protocol.md §2, §6).
pub mod close {
    /// Normal closure.
    pub(crate) const NORMAL: u16 = 1000;
    /// Going away: graceful shutdown (after `going_away`).
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// WebSocket protocol error (RFC 6455), e.g. a masking or framing violation.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// Unsupported data: a binary frame was received.
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid frame payload data (RFC 6455), e.g. a text frame that is not UTF-8.
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (e.g. idle timeout, protocol misuse).
    pub(crate) const POLICY_VIOLATION: u16 = 1008;
    /// Message too big: inbound frame/message over `maxMessageSize`.
    pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
    /// Internal server error.
    pub(crate) const INTERNAL_ERROR: u16 = 1011;
    /// Bad / unknown / malformed token or key (before `welcome`).
    pub(crate) const INVALID_TOKEN: u16 = 4001;
    /// Token expired (before `welcome`, or ~250 ms before `exp`).
    pub(crate) const TOKEN_EXPIRED: u16 = 4002;
    /// Token's channels outside the key's patterns (before `welcome`).
    pub(crate) const CHANNEL_NOT_AUTHORIZED: u16 = 4003;
    /// Slow consumer: the connection's outbound queue overflowed (a ringcast code,
    /// not part of the hosted service's vocabulary).
    pub(crate) const SLOW_CONSUMER: u16 = 4008;
    /// The app's connection cap is reached (before `welcome`).
    pub(crate) const CONNECTION_CAP: u16 = 4010;
    /// Over the per-connection message rate (token bucket).
    pub(crate) const RATE_LIMITED: u16 = 4011;
    /// Disconnected by an administrator (`DELETE /v1/peers/{peerId}`).
    pub(crate) const ADMIN_DISCONNECT: u16 = 4020;

    /// Every close code the server sends.
    pub const ALL: [u16; 15] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        UNSUPPORTED_DATA,
        INVALID_PAYLOAD,
        POLICY_VIOLATION,
        MESSAGE_TOO_BIG,
        INTERNAL_ERROR,
        INVALID_TOKEN,
        TOKEN_EXPIRED,
        CHANNEL_NOT_AUTHORIZED,
        SLOW_CONSUMER,
        CONNECTION_CAP,
        RATE_LIMITED,
        ADMIN_DISCONNECT,
    ];

    /// A short human-readable reason for `code` (ASCII, ≤ 123 bytes, suitable for
    /// [`super::encode::ws_close`]); `""` for codes not in [`ALL`].
    pub const fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "normal closure",
            GOING_AWAY => "going away",
            PROTOCOL_ERROR => "protocol error",
            INVALID_PAYLOAD => "invalid payload",
            UNSUPPORTED_DATA => "binary frames not accepted",
            POLICY_VIOLATION => "policy violation",
            MESSAGE_TOO_BIG => "message too big",
            INTERNAL_ERROR => "internal error",
            INVALID_TOKEN => "invalid token",
            TOKEN_EXPIRED => "token expired",
            CHANNEL_NOT_AUTHORIZED => "channel not authorized",
            SLOW_CONSUMER => "slow consumer",
            CONNECTION_CAP => "connection limit reached",
            RATE_LIMITED => "rate limited",
            ADMIN_DISCONNECT => "disconnected by admin",
            _ => "",
        }
    }
}

/// Test-only global allocator that counts allocations made by the current thread,
/// so tests can assert "parse does not allocate" / "encoders allocate once".
#[cfg(test)]
pub(crate) mod alloc_counter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    fn bump() {
        // `try_with`: never panic inside the allocator (e.g. during TLS teardown).
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    struct Counting;

    // A GlobalAlloc is an unsafe trait: the allocation-counting tests need one.
    #[allow(unsafe_code)]
    // SAFETY: every method forwards to `System` with the caller's arguments unchanged,
    // so `System`'s guarantees carry over; the counter does not allocate (const-init
    // thread-local `Cell<usize>` without a destructor).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            bump();
            // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            bump();
            // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            bump();
            // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns its result with the number of allocations (alloc,
    /// alloc_zeroed, realloc) it made on this thread.
    pub(crate) fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let before = COUNT.with(Cell::get);
        let r = f();
        let after = COUNT.with(Cell::get);
        (r, after - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        let wire = [
            "malformed_message",
            "unknown_type",
            "invalid_channel",
            "invalid_peer_id",
            "channel_not_authorized",
            "channel_reserved",
            "channel_limit_exceeded",
            "peer_not_found",
            "missing_data",
            "action_not_permitted",
            "rate_limited",
            "backend_error",
            "internal_error",
            "invalid_group",
            "subscription_conflict",
            "invalid_request",
        ];
        for (code, s) in ErrorCode::ALL.iter().zip(wire) {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(ErrorCode::from_wire(s), Some(*code));
        }
        assert_eq!(ErrorCode::from_wire("nope"), None);
    }

    #[test]
    fn close_codes() {
        assert_eq!(
            close::ALL,
            [
                1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4001, 4002, 4003, 4008, 4010, 4011,
                4020
            ]
        );
        for c in close::ALL {
            let r = close::reason(c);
            assert!(!r.is_empty() && r.len() <= 123 && r.is_ascii());
        }
        assert_eq!(close::reason(4000), "");
    }
}
