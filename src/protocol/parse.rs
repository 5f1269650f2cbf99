//! Client → server command parsing (protocol.md §3) on top of simd-json's tape, plus
//! channel-name and peerId validation (protocol.md §1, §6).
//!
//! # How a frame is parsed
//! 1. The frame is copied once into the [`Parser`]'s scratch buffer (simd-json unescapes
//!    strings in place, so it needs a mutable copy).
//! 2. simd-json validates the whole document (including UTF-8) and fills a reusable
//!    tape (`simd_json::fill_tape`). The tape is flat and built iteratively, so no input
//!    (e.g. 100 000 nested `[`) can overflow the stack, and nothing is dropped
//!    recursively. (The tape API is used instead of `BorrowedValue` because a
//!    `BorrowedValue` allocates its maps/vectors on every parse and drops recursively.)
//! 3. The top-level object's members are read from the tape: `type`, `channel`,
//!    `requestId`, `to`, `includeSenderMetadata`, `pattern` [ext], `data`. Strings are returned
//!    unescaped, borrowed from the scratch buffer.
//! 4. `data` is never re-encoded: once simd-json has accepted the document, a small
//!    top-level-object walker finds the raw byte span of the `data` member's value in
//!    the ORIGINAL frame (by member position, so escaped keys such as `"d\u0061ta"` work)
//!    and that slice is returned verbatim. The walker scans strictly (RFC 8259 grammar,
//!    unpaired `\uD800`-style surrogate escapes refused), because `data` is spliced
//!    into other clients' frames and simd-json 0.15 is slightly lenient (it accepts
//!    e.g. `1000000000000000000x`). So an accepted `data` is always valid JSON.
//! 5. Fallback: simd-json refuses some valid JSON, notably integers outside i64/u64
//!    (`-9223372036854775809`, `18446744073709552000` as JavaScript prints 2^64).
//!    When simd-json fails, the frame is validated by the strict scanner; if valid,
//!    a second scratch copy with every number blanked to `0` + spaces (same offsets)
//!    is handed to simd-json for the envelope, and `data` still comes verbatim from
//!    the original frame. This path only runs for frames simd-json refused.
//!
//! In steady state (buffers warmed up by earlier frames of similar size and shape)
//! [`Parser::parse`] performs no heap allocation on success. Errors allocate only to
//! copy an echoed `requestId` into [`ParseError::request_id`].
//!
//! # Error decisions (checked in this order)
//! | condition | code |
//! |---|---|
//! | not valid JSON (incl. invalid UTF-8, trailing garbage, byte-order mark), top level not an object | `malformed_message` |
//! | `requestId` present but not a non-empty string of ≤ [`MAX_REQUEST_ID_CHARS`] chars | `malformed_message` (no requestId echoed) |
//! | any top-level key appears twice (compared after unescaping) | `malformed_message` |
//! | nesting deeper than [`MAX_DEPTH`] (the top-level object is depth 1) | `malformed_message` |
//! | `type` missing or not a string | `malformed_message` |
//! | `type` not one of `subscribe`/`unsubscribe`/`publish`/`send`/`ping` (case-sensitive) | `unknown_type` |
//! | subscribe: `includeSenderMetadata` present and not `true`/`false` (`null` too) | `malformed_message` |
//! | [ext] subscribe/unsubscribe: `pattern` present and not `true`/`false` (`null` too) | `malformed_message` |
//! | subscribe/unsubscribe/publish: `channel` missing or not a string | `invalid_channel` |
//! | [ext] subscribe: `group` present (any value) with `pattern:true` | `invalid_request` |
//! | [ext] subscribe: `group` not a string of 1–64 chars of `A-Z a-z 0-9 _ . -` ([`valid_group`]) | `invalid_group` |
//! | send: `to` missing or not a string | `invalid_peer_id` |
//! | publish/send: `data` missing (`null` is valid data) | `missing_data` |
//!
//! From the duplicate-key check on, a valid `requestId` is echoed in
//! [`ParseError::request_id`] (unless `requestId` itself is the duplicated key).
//! Unknown extra fields are ignored. The parser does NOT validate the *content* of
//! `channel` / `to`: callers run [`validate_channel`] / [`validate_peer_id`].

use simd_json::{Buffers, Node, StaticNode, Tape};

pub use super::scan::is_valid_data;
use super::scan::{member_value_span, neutralize_numbers, validate_document, ScanError};
use super::ErrorCode;

/// Maximum nesting depth of a client document; the top-level object counts as 1, so
/// `data` itself may nest up to 63 levels.
pub const MAX_DEPTH: usize = 64;
/// Maximum length of `requestId` in Unicode scalar values (chars), protocol.md §3.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Maximum channel name length in bytes (protocol.md §6).
pub const MAX_CHANNEL_LEN: usize = 256;
/// Maximum peerId length in bytes (protocol.md §1).
pub const MAX_PEER_ID_LEN: usize = 128;
/// Channel name prefixes reserved for the server, matched ASCII case-insensitively.
pub const RESERVED_CHANNEL_PREFIXES: [&str; 3] = ["_metered/", "_internal/", "_system/"];

/// Top-level object size up to which duplicate keys are found by pairwise comparison;
/// larger objects are sorted (in a reused index buffer) instead, to stay O(n log n).
const PAIRWISE_DUP_LIMIT: usize = 16;

/// One parsed client command, borrowing from the frame and the [`Parser`].
///
/// String fields are unescaped JSON strings and are NOT validated beyond being strings
/// (see [`validate_channel`], [`validate_peer_id`]). `data` is the raw JSON text of
/// the `data` value exactly as the client sent it (no surrounding whitespace); it
/// is always one complete, strictly valid RFC 8259 JSON value (`null` included), so
/// it can be spliced into outgoing frames as is. Numbers keep their exact text (no
/// range or precision limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// `{"type":"subscribe","channel":..,"includeSenderMetadata"?:bool}`
    Subscribe {
        /// Channel name (unvalidated).
        channel: &'a str,
        /// Optional request id (validated: 1..=128 chars).
        request_id: Option<&'a str>,
        /// `includeSenderMetadata`, default `false`.
        include_sender_metadata: bool,
        /// [ext] `since` (protocol.md §8.1): resume after this epoch and offset.
        since: Option<Since<'a>>,
    },
    /// `{"type":"unsubscribe","channel":..}`
    Unsubscribe {
        /// Channel name (unvalidated).
        channel: &'a str,
        /// Optional request id.
        request_id: Option<&'a str>,
    },
    /// `{"type":"publish","channel":..,"data":..}`
    Publish {
        /// Channel name (unvalidated).
        channel: &'a str,
        /// Raw JSON bytes of `data`, exactly as sent (a slice of the input frame).
        data: &'a [u8],
        /// Optional request id.
        request_id: Option<&'a str>,
    },
    /// `{"type":"send","to":..,"data":..}`
    Send {
        /// Target peerId (unvalidated).
        to: &'a str,
        /// Raw JSON bytes of `data`, exactly as sent (a slice of the input frame).
        data: &'a [u8],
        /// Optional request id.
        request_id: Option<&'a str>,
    },
    /// [ext] `{"type":"subscribe","channel":..,"pattern":true,"includeSenderMetadata"?:bool}`
    /// (protocol.md §8.3): `channel` is a glob. `"pattern":false` parses as [`ClientMsg::Subscribe`].
    SubscribePattern {
        /// The pattern's source text (unvalidated).
        channel: &'a str,
        /// Optional request id.
        request_id: Option<&'a str>,
        /// `includeSenderMetadata`, default `false`.
        include_sender_metadata: bool,
    },
    /// [ext] `{"type":"subscribe","channel":..,"group":..,"includeSenderMetadata"?:bool}`
    /// (protocol.md §8.2): join queue group `group` of the channel.
    SubscribeGroup {
        /// Channel name (unvalidated).
        channel: &'a str,
        /// Optional request id.
        request_id: Option<&'a str>,
        /// `includeSenderMetadata`, default `false`.
        include_sender_metadata: bool,
        /// The group name (validated: [`valid_group`]).
        group: &'a str,
    },
    /// [ext] `{"type":"unsubscribe","channel":..,"pattern":true}` (protocol.md §8.3).
    UnsubscribePattern {
        /// The pattern's source text (unvalidated).
        channel: &'a str,
        /// Optional request id.
        request_id: Option<&'a str>,
    },
    /// [ext] `{"type":"history","channel":..,"requestId":..,"sinceOffset"?:N,"limit"?:L}`
    /// (protocol.md §8.1). `requestId` is required; `limit` is 1..=1000 (default 100).
    History {
        /// Channel name (unvalidated).
        channel: &'a str,
        /// The request id the answer carries.
        request_id: &'a str,
        /// List the messages after this offset; `None`: the oldest retained first.
        since_offset: Option<u64>,
        /// At most this many messages.
        limit: u16,
    },
    /// [ext] `{"type":"request","to":..,"requestId":..,"data":..,"timeoutMs"?:T}`
    /// (protocol.md §8.4). `requestId` is required.
    Request {
        /// Target peerId (unvalidated).
        to: &'a str,
        /// The request's id, which its replies and errors carry.
        request_id: &'a str,
        /// Raw JSON bytes of `data`.
        data: &'a [u8],
        /// `timeoutMs`, when given (range checked by the command against the config).
        timeout_ms: Option<u64>,
    },
    /// [ext] `{"type":"reply","replyTo":..,"data":..,"final"?:bool,"requestId"?:..}`.
    Reply {
        /// The `replyTo` of the request being answered (≤ 128 bytes).
        reply_to: &'a str,
        /// Raw JSON bytes of `data`.
        data: &'a [u8],
        /// `final`, default true.
        last: bool,
        /// Optional request id of this reply (answered by `ack` or `request_not_found`).
        request_id: Option<&'a str>,
    },
    /// [ext] `{"type":"cancel","requestId":..}`: the requester cancels its request.
    Cancel {
        /// The id of the request to cancel (also the id the `ack` carries).
        request_id: &'a str,
    },
    /// `{"type":"ping"}`
    Ping {
        /// Optional request id.
        request_id: Option<&'a str>,
    },
}

impl ClientMsg<'_> {
    /// The command's `requestId`, if it carried one.
    pub fn request_id(&self) -> Option<&str> {
        match *self {
            ClientMsg::Subscribe { request_id, .. }
            | ClientMsg::Unsubscribe { request_id, .. }
            | ClientMsg::Publish { request_id, .. }
            | ClientMsg::Send { request_id, .. }
            | ClientMsg::SubscribePattern { request_id, .. }
            | ClientMsg::SubscribeGroup { request_id, .. }
            | ClientMsg::UnsubscribePattern { request_id, .. }
            | ClientMsg::Ping { request_id } => request_id,
            ClientMsg::History { request_id, .. }
            | ClientMsg::Request { request_id, .. }
            | ClientMsg::Cancel { request_id } => Some(request_id),
            ClientMsg::Reply { request_id, .. } => request_id,
        }
    }

    /// The wire `type` string of this command.
    pub fn type_str(&self) -> &'static str {
        match self {
            ClientMsg::Subscribe { .. }
            | ClientMsg::SubscribePattern { .. }
            | ClientMsg::SubscribeGroup { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } | ClientMsg::UnsubscribePattern { .. } => "unsubscribe",
            ClientMsg::Publish { .. } => "publish",
            ClientMsg::Send { .. } => "send",
            ClientMsg::Ping { .. } => "ping",
            ClientMsg::History { .. } => "history",
            ClientMsg::Request { .. } => "request",
            ClientMsg::Reply { .. } => "reply",
            ClientMsg::Cancel { .. } => "cancel",
        }
    }
}

/// [ext] A subscribe's `since` (protocol.md §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since<'a> {
    /// The epoch the client last saw (1..=64 bytes).
    pub epoch: &'a str,
    /// The last offset it saw.
    pub offset: u64,
}

/// Longest `since.epoch` accepted (protocol.md §8.1: epochs are at most 64 characters).
pub const MAX_EPOCH_LEN: usize = 64;
/// Largest `limit` of a `history` command.
pub const MAX_HISTORY_LIMIT: u16 = 1000;
/// `limit` of a `history` command without one.
pub const DEFAULT_HISTORY_LIMIT: u16 = 100;

/// Why a frame was rejected; maps 1:1 onto an `error` frame
/// (`encode::error(e.code, e.request_id.as_deref(), Some(e.message))`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ParseError {
    /// The `error.code` to send.
    pub code: ErrorCode,
    /// The frame's `requestId`, echoed if it could be read and was valid.
    pub request_id: Option<String>,
    /// Short human-readable explanation (ASCII), suitable for `error.message`.
    pub message: &'static str,
}

impl ParseError {
    fn new(code: ErrorCode, request_id: Option<&str>, message: &'static str) -> Self {
        ParseError {
            code,
            request_id: request_id.map(str::to_owned),
            message,
        }
    }
}

/// Reusable per-shard parser: owns a scratch buffer (simd-json rewrites its input, so
/// the frame is copied into scratch once), `simd_json::Buffers`, the tape and a key
/// index buffer, all reused across calls so steady-state parsing does not allocate.
///
/// Not `Sync`-shared: keep one per shard/thread. It is `Send`.
pub struct Parser {
    scratch: Vec<u8>,
    /// Second scratch, used only on the rare fallback path (module docs, step 5).
    fallback: Vec<u8>,
    buffers: Buffers,
    /// Always empty between calls; `'static` only because it borrows nothing then.
    tape: Tape<'static>,
    keys: Vec<usize>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser")
            .field("scratch_capacity", &self.scratch.capacity())
            .finish_non_exhaustive()
    }
}

impl Parser {
    /// A parser with small initial buffers; they grow to the largest frame seen.
    pub fn new() -> Self {
        Self::with_capacity(1024)
    }

    /// A parser whose buffers are pre-sized for frames of `frame_len` bytes (e.g.
    /// `maxMessageSize`), so even the first frames mostly avoid reallocation.
    pub fn with_capacity(frame_len: usize) -> Self {
        Parser {
            scratch: Vec::with_capacity(frame_len),
            fallback: Vec::new(),
            buffers: Buffers::new(frame_len),
            tape: Tape(Vec::with_capacity(frame_len / 8 + 16)),
            keys: Vec::with_capacity(PAIRWISE_DUP_LIMIT),
        }
    }

    /// Parses one client text frame payload. See the module docs for the steps and
    /// the exact error decisions. Never panics, whatever the bytes; no allocation in
    /// steady state on success. The result borrows the parser until it is dropped.
    pub fn parse<'a>(&'a mut self, frame: &'a [u8]) -> Result<ClientMsg<'a>, ParseError> {
        let Parser {
            scratch,
            fallback,
            buffers,
            tape: slot,
            keys,
        } = self;
        // Take the (empty) tape out and give it the lifetime of this call; `reset`
        // clears it and changes the lifetime without reallocating.
        let mut tape: Tape<'a> = std::mem::replace(slot, Tape(Vec::new())).reset();
        let result = parse_with(frame, scratch, fallback, buffers, &mut tape, keys);
        *slot = tape.reset();
        result
    }
}

fn parse_with<'a>(
    frame: &'a [u8],
    scratch: &'a mut Vec<u8>,
    fallback: &'a mut Vec<u8>,
    buffers: &mut Buffers,
    tape: &mut Tape<'a>,
    keys: &mut Vec<usize>,
) -> Result<ClientMsg<'a>, ParseError> {
    let malformed = |msg| Err(ParseError::new(ErrorCode::MalformedMessage, None, msg));
    scratch.clear();
    scratch.extend_from_slice(frame);
    let mut exact_numbers = true;
    if simd_json::fill_tape(scratch.as_mut_slice(), buffers, tape).is_err() {
        // Slow path: simd-json refuses some valid JSON (integers beyond i64/u64).
        // Validate strictly ourselves; if valid, let simd-json build the envelope
        // tape from a copy whose numbers are blanked out (same byte offsets).
        match validate_document(frame) {
            Err(ScanError::TooDeep) => return malformed("nesting too deep"),
            Err(ScanError::Invalid) => return malformed("invalid JSON"),
            Ok(()) => {}
        }
        fallback.clear();
        fallback.extend_from_slice(frame);
        neutralize_numbers(fallback);
        exact_numbers = false;
        tape.0.clear();
        if simd_json::fill_tape(fallback.as_mut_slice(), buffers, tape).is_err() {
            return malformed("invalid JSON");
        }
    }
    // On the fallback path every number reads as 0: extension fields that are numbers
    // (`since.offset`, `sinceOffset`, `limit`) are refused there rather than misread.
    interpret(&tape.0, frame, keys, exact_numbers)
}

/// Indices (into the tape) of the members we care about, plus the member ordinal of
/// `data` for the raw-span walker.
#[derive(Default)]
struct Fields {
    ty: Option<usize>,
    channel: Option<usize>,
    request_id: Option<usize>,
    request_id_dup: bool,
    to: Option<usize>,
    include_meta: Option<usize>,
    pattern: Option<usize>,
    since: Option<usize>,
    since_offset: Option<usize>,
    limit: Option<usize>,
    timeout_ms: Option<usize>,
    reply_to: Option<usize>,
    last: Option<usize>,
    group: Option<usize>,
    data: Option<usize>,
    data_ordinal: usize,
}

/// Number of tape nodes `node` spans (itself plus all nested nodes).
fn node_span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count.saturating_add(1),
        _ => 1,
    }
}

fn interpret<'a>(
    nodes: &[Node<'a>],
    frame: &'a [u8],
    keys: &mut Vec<usize>,
    exact_numbers: bool,
) -> Result<ClientMsg<'a>, ParseError> {
    use ErrorCode::*;

    let malformed = |msg| Err(ParseError::new(MalformedMessage, None, msg));
    let Some(&Node::Object { len, count }) = nodes.first() else {
        return malformed("message must be a JSON object");
    };
    if nodes.len() != count.saturating_add(1) {
        return malformed("invalid JSON");
    }

    // Collect member positions.
    let mut f = Fields::default();
    keys.clear();
    let mut idx = 1usize;
    for ordinal in 0..len {
        let (Some(Node::String(key)), Some(value)) = (nodes.get(idx), nodes.get(idx + 1)) else {
            return malformed("invalid JSON");
        };
        keys.push(idx);
        let vi = idx + 1;
        match *key {
            "type" => f.ty = Some(vi),
            "channel" => f.channel = Some(vi),
            "requestId" => {
                f.request_id_dup |= f.request_id.is_some();
                f.request_id = Some(vi);
            }
            "to" => f.to = Some(vi),
            "includeSenderMetadata" => f.include_meta = Some(vi),
            "pattern" => f.pattern = Some(vi),
            "since" => f.since = Some(vi),
            "sinceOffset" => f.since_offset = Some(vi),
            "limit" => f.limit = Some(vi),
            "timeoutMs" => f.timeout_ms = Some(vi),
            "replyTo" => f.reply_to = Some(vi),
            "final" => f.last = Some(vi),
            "group" => f.group = Some(vi),
            "data" => {
                f.data = Some(vi);
                f.data_ordinal = ordinal;
            }
            _ => {}
        }
        idx = vi.saturating_add(node_span(value));
    }

    // requestId first, so that every later error can echo it.
    let request_id = match f.request_id.map(|i| nodes.get(i)) {
        None => None,
        Some(Some(Node::String(s))) if valid_request_id(s) && !f.request_id_dup => Some(*s),
        Some(Some(Node::String(_))) if f.request_id_dup => {
            return malformed("duplicate key");
        }
        Some(_) => {
            return malformed("requestId must be a non-empty string of at most 128 characters")
        }
    };
    let fail = |code, msg| ParseError::new(code, request_id, msg);

    if has_duplicate_keys(nodes, keys) {
        return Err(fail(MalformedMessage, "duplicate key"));
    }
    if exceeds_depth(nodes, MAX_DEPTH) {
        return Err(fail(MalformedMessage, "nesting too deep"));
    }

    let str_at = |i: Option<usize>| match i.and_then(|i| nodes.get(i)) {
        Some(Node::String(s)) => Some(*s),
        _ => None,
    };
    let Some(ty) = str_at(f.ty) else {
        return Err(fail(MalformedMessage, "missing or non-string type"));
    };

    let data_span = |f: &Fields| -> Result<&'a [u8], ParseError> {
        if f.data.is_none() {
            return Err(fail(MissingData, "missing data"));
        }
        match member_value_span(frame, f.data_ordinal).and_then(|(s, e)| frame.get(s..e)) {
            Some(d) => Ok(d),
            None => Err(fail(MalformedMessage, "invalid JSON")),
        }
    };

    // [ext] `pattern` (subscribe / unsubscribe only; ignored elsewhere like any unknown field).
    let pattern = || match f.pattern.map(|i| nodes.get(i)) {
        None => Ok(false),
        Some(Some(Node::Static(StaticNode::Bool(b)))) => Ok(*b),
        Some(_) => Err(fail(MalformedMessage, "pattern must be a boolean")),
    };

    // [ext] A non-negative integer (`since.offset`, `sinceOffset`, `limit`).
    let uint = |i: usize| match nodes.get(i) {
        Some(Node::Static(StaticNode::U64(n))) if exact_numbers => Some(*n),
        Some(Node::Static(StaticNode::I64(n))) if exact_numbers => u64::try_from(*n).ok(),
        _ => None,
    };
    let invalid = |msg| Err(fail(InvalidRequest, msg));

    match ty {
        "subscribe" => {
            let include_sender_metadata = match f.include_meta.map(|i| nodes.get(i)) {
                None => false,
                Some(Some(Node::Static(StaticNode::Bool(b)))) => *b,
                Some(_) => {
                    return Err(fail(
                        MalformedMessage,
                        "includeSenderMetadata must be a boolean",
                    ))
                }
            };
            let pattern = pattern()?;
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
            // [ext] `since`: {"epoch": string of 1..=64 bytes, "offset": integer >= 0}.
            let since = match f.since {
                None => None,
                Some(i) => {
                    const BAD: &str =
                        "since must be {\"epoch\": string, \"offset\": non-negative integer}";
                    let Some(&Node::Object { len: 2, .. }) = nodes.get(i) else {
                        return invalid(BAD);
                    };
                    let (mut epoch, mut offset) = (None, None);
                    for k in [i + 1, i + 3] {
                        match (nodes.get(k), nodes.get(k + 1)) {
                            (Some(Node::String("epoch")), Some(Node::String(e)))
                                if !e.is_empty() && e.len() <= MAX_EPOCH_LEN =>
                            {
                                epoch = Some(*e)
                            }
                            (Some(Node::String("offset")), _) => offset = uint(k + 1),
                            _ => return invalid(BAD),
                        }
                    }
                    match (epoch, offset) {
                        (Some(epoch), Some(offset)) => Some(Since { epoch, offset }),
                        _ => return invalid(BAD),
                    }
                }
            };
            if let Some(gi) = f.group {
                // [ext] Queue groups (protocol §8.2).
                if pattern {
                    return Err(fail(InvalidRequest, "group cannot be used with pattern"));
                }
                if since.is_some() {
                    return Err(fail(InvalidRequest, "since cannot be used with group"));
                }
                let Some(Node::String(group)) = nodes.get(gi) else {
                    return Err(fail(InvalidGroup, "group must be a string"));
                };
                if !valid_group(group) {
                    return Err(fail(
                        InvalidGroup,
                        "group must be 1-64 characters of A-Z a-z 0-9 _ . -",
                    ));
                }
                return Ok(ClientMsg::SubscribeGroup {
                    channel,
                    request_id,
                    include_sender_metadata,
                    group,
                });
            }
            if pattern {
                if since.is_some() {
                    return invalid("since cannot be used with pattern");
                }
                return Ok(ClientMsg::SubscribePattern {
                    channel,
                    request_id,
                    include_sender_metadata,
                });
            }
            Ok(ClientMsg::Subscribe {
                channel,
                request_id,
                include_sender_metadata,
                since,
            })
        }
        "unsubscribe" => {
            let pattern = pattern()?;
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
            if pattern {
                return Ok(ClientMsg::UnsubscribePattern {
                    channel,
                    request_id,
                });
            }
            Ok(ClientMsg::Unsubscribe {
                channel,
                request_id,
            })
        }
        "publish" => {
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
            let data = data_span(&f)?;
            Ok(ClientMsg::Publish {
                channel,
                data,
                request_id,
            })
        }
        "send" => {
            let Some(to) = str_at(f.to) else {
                return Err(fail(InvalidPeerId, "missing or non-string to"));
            };
            let data = data_span(&f)?;
            Ok(ClientMsg::Send {
                to,
                data,
                request_id,
            })
        }
        "ping" => Ok(ClientMsg::Ping { request_id }),
        "request" => {
            let Some(to) = str_at(f.to) else {
                return Err(fail(InvalidPeerId, "missing or non-string to"));
            };
            let Some(request_id) = request_id else {
                return invalid("request needs a requestId");
            };
            let data = data_span(&f)?;
            let timeout_ms = match f.timeout_ms {
                None => None,
                Some(i) => match uint(i) {
                    Some(n) => Some(n),
                    None => return invalid("timeoutMs must be a positive integer"),
                },
            };
            Ok(ClientMsg::Request {
                to,
                request_id,
                data,
                timeout_ms,
            })
        }
        "reply" => {
            let reply_to = match str_at(f.reply_to) {
                Some(x) if !x.is_empty() && x.len() <= MAX_REQUEST_ID_CHARS => x,
                _ => return invalid("replyTo must be the string a request carried"),
            };
            let last = match f.last.map(|i| nodes.get(i)) {
                None => true,
                Some(Some(Node::Static(StaticNode::Bool(b)))) => *b,
                Some(_) => return invalid("final must be a boolean"),
            };
            let data = data_span(&f)?;
            Ok(ClientMsg::Reply {
                reply_to,
                data,
                last,
                request_id,
            })
        }
        "cancel" => match request_id {
            Some(request_id) => Ok(ClientMsg::Cancel { request_id }),
            None => invalid("cancel needs the requestId of the request"),
        },
        "history" => {
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
            let Some(request_id) = request_id else {
                return invalid("history needs a requestId");
            };
            let since_offset = match f.since_offset {
                None => None,
                Some(i) => match uint(i) {
                    Some(n) => Some(n),
                    None => return invalid("sinceOffset must be a non-negative integer"),
                },
            };
            let limit = match f.limit {
                None => DEFAULT_HISTORY_LIMIT,
                Some(i) => match uint(i) {
                    Some(n) if (1..=u64::from(MAX_HISTORY_LIMIT)).contains(&n) => n as u16,
                    _ => return invalid("limit must be an integer from 1 to 1000"),
                },
            };
            Ok(ClientMsg::History {
                channel,
                request_id,
                since_offset,
                limit,
            })
        }
        _ => Err(fail(UnknownType, "unknown message type")),
    }
}

fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && (s.len() <= MAX_REQUEST_ID_CHARS || s.chars().count() <= MAX_REQUEST_ID_CHARS)
}

/// True if two top-level keys (tape indices in `keys`) are equal. Reorders `keys`.
fn has_duplicate_keys(nodes: &[Node<'_>], keys: &mut [usize]) -> bool {
    let key = |i: usize| match nodes.get(i) {
        Some(Node::String(s)) => *s,
        _ => "",
    };
    if keys.len() <= PAIRWISE_DUP_LIMIT {
        keys.iter()
            .enumerate()
            .any(|(n, &a)| keys[..n].iter().any(|&b| key(a) == key(b)))
    } else {
        keys.sort_unstable_by(|&a, &b| key(a).cmp(key(b)));
        keys.windows(2).any(|w| key(w[0]) == key(w[1]))
    }
}

/// True if containers nest deeper than `max` levels. Iterative, fixed-size stack.
fn exceeds_depth(nodes: &[Node<'_>], max: usize) -> bool {
    if nodes.len() <= max {
        return false; // `max + 1` levels need at least `max + 1` nodes
    }
    let mut ends = [0usize; MAX_DEPTH];
    let max = max.min(MAX_DEPTH);
    let mut depth = 0usize;
    for (i, node) in nodes.iter().enumerate() {
        while depth > 0 && ends[depth - 1] <= i {
            depth -= 1;
        }
        if let Node::Object { count, .. } | Node::Array { count, .. } = node {
            if depth >= max {
                return true;
            }
            ends[depth] = i.saturating_add(1).saturating_add(*count);
            depth += 1;
        }
    }
    false
}

/// Validates a channel name (protocol.md §6): 1–256 bytes of UTF-8 with no control
/// characters (U+0000–U+001F, U+007F–U+009F) → else [`ErrorCode::InvalidChannel`];
/// then no reserved prefix (`_metered/`, `_internal/`, `_system/`, ASCII
/// case-insensitive) → else [`ErrorCode::ChannelReserved`].
pub fn validate_channel(name: &str) -> Result<(), ErrorCode> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ErrorCode::InvalidChannel);
    }
    if name.chars().any(char::is_control) {
        // `char::is_control` is exactly general category Cc = U+0000–001F, U+007F–009F.
        return Err(ErrorCode::InvalidChannel);
    }
    let b = name.as_bytes();
    if RESERVED_CHANNEL_PREFIXES.iter().any(|p| {
        b.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes()))
    }) {
        return Err(ErrorCode::ChannelReserved);
    }
    Ok(())
}

/// Maximum length of a queue group name (protocol.md §8.2).
pub const MAX_GROUP_LEN: usize = 64;

/// [ext] True for a valid queue group name (protocol.md §8.2): 1–64 characters of
/// `A-Z a-z 0-9 _ . -`.
pub fn valid_group(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GROUP_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Validates a peerId (protocol.md §1): 1–128 bytes, each printable ASCII
/// 0x21–0x7E (no space) → else [`ErrorCode::InvalidPeerId`].
pub fn validate_peer_id(id: &str) -> Result<(), ErrorCode> {
    let ok = !id.is_empty()
        && id.len() <= MAX_PEER_ID_LEN
        && id.bytes().all(|b| (0x21..=0x7E).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ErrorCode::InvalidPeerId)
    }
}

#[cfg(test)]
mod tests;
