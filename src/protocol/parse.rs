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
//!    `requestId`, `to`, `includeSenderMetadata`, `data`. Strings are returned
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
//! | subscribe/unsubscribe/publish: `channel` missing or not a string | `invalid_channel` |
//! | send: `to` missing or not a string | `invalid_peer_id` |
//! | publish/send: `data` missing (`null` is valid data) | `missing_data` |
//!
//! From the duplicate-key check on, a valid `requestId` is echoed in
//! [`ParseError::request_id`] (unless `requestId` itself is the duplicated key).
//! Unknown extra fields are ignored. The parser does NOT validate the *content* of
//! `channel` / `to`: callers run [`validate_channel`] / [`validate_peer_id`].

use simd_json::{Buffers, Node, StaticNode, Tape};

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
            | ClientMsg::Ping { request_id } => request_id,
        }
    }

    /// The wire `type` string of this command.
    pub fn type_str(&self) -> &'static str {
        match self {
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::Publish { .. } => "publish",
            ClientMsg::Send { .. } => "send",
            ClientMsg::Ping { .. } => "ping",
        }
    }
}

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
        tape.0.clear();
        if simd_json::fill_tape(fallback.as_mut_slice(), buffers, tape).is_err() {
            return malformed("invalid JSON");
        }
    }
    interpret(&tape.0, frame, keys)
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
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
            Ok(ClientMsg::Subscribe {
                channel,
                request_id,
                include_sender_metadata,
            })
        }
        "unsubscribe" => {
            let Some(channel) = str_at(f.channel) else {
                return Err(fail(InvalidChannel, "missing or non-string channel"));
            };
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

// ---------------------------------------------------------------------------------
// Strict RFC 8259 scanner and the raw top-level walker.
//
// simd-json is slightly lenient (e.g. 0.15 accepts `1000000000000000000x`: a 19-digit
// integer followed by garbage) and rejects some valid JSON (integers beyond i64/u64).
// Because `data` is spliced verbatim into other clients' frames, the raw `data` span
// is re-validated here with a strict, iterative, depth-bounded scanner; the same
// scanner is the fallback validator when simd-json refuses a document.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanError {
    Invalid,
    TooDeep,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|&b| is_ws(b)) {
        i += 1;
    }
    i
}

#[inline]
fn byte(buf: &[u8], i: usize) -> Result<u8, ScanError> {
    buf.get(i).copied().ok_or(ScanError::Invalid)
}

fn hex4(buf: &[u8], i: usize) -> Result<u32, ScanError> {
    let digits = buf.get(i..i.saturating_add(4)).ok_or(ScanError::Invalid)?;
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = (b as char).to_digit(16).ok_or(ScanError::Invalid)?;
        Ok(acc << 4 | d)
    })
}

/// `buf[i]` is an opening quote; strictly scans the string (no raw control chars,
/// only the RFC 8259 escapes, surrogate escapes must pair) and returns the index just
/// past the closing quote. UTF-8 validity is simd-json's job (it checks the whole input).
fn scan_string(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    use ScanError::Invalid;
    let mut j = i.checked_add(1).ok_or(Invalid)?;
    loop {
        let rest = buf.get(j..).ok_or(Invalid)?;
        j += rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .ok_or(Invalid)?;
        match byte(buf, j)? {
            b'"' => return Ok(j + 1),
            b'\\' => match byte(buf, j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let cp = hex4(buf, j + 2)?;
                    j += 6;
                    if (0xD800..0xDC00).contains(&cp) {
                        if byte(buf, j)? != b'\\' || byte(buf, j + 1)? != b'u' {
                            return Err(Invalid);
                        }
                        if !(0xDC00..0xE000).contains(&hex4(buf, j + 2)?) {
                            return Err(Invalid);
                        }
                        j += 6;
                    } else if (0xDC00..0xE000).contains(&cp) {
                        return Err(Invalid);
                    }
                }
                _ => return Err(Invalid),
            },
            _ => return Err(Invalid), // raw control character
        }
    }
}

/// Strict number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Any
/// magnitude is accepted. The caller checks the byte that follows.
fn scan_number(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    fn digits(buf: &[u8], mut j: usize) -> Result<usize, ScanError> {
        let start = j;
        while buf.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start {
            Err(ScanError::Invalid)
        } else {
            Ok(j)
        }
    }
    let mut j = i;
    if buf.get(j) == Some(&b'-') {
        j += 1;
    }
    j = match byte(buf, j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(buf, j)?,
        _ => return Err(ScanError::Invalid),
    };
    if buf.get(j) == Some(&b'.') {
        j = digits(buf, j + 1)?;
    }
    if matches!(buf.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(buf.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(buf, j)?;
    }
    Ok(j)
}

fn scan_literal(buf: &[u8], i: usize, lit: &[u8]) -> Result<usize, ScanError> {
    let end = i.checked_add(lit.len()).ok_or(ScanError::Invalid)?;
    if buf.get(i..end) == Some(lit) {
        Ok(end)
    } else {
        Err(ScanError::Invalid)
    }
}

/// At `buf[i]` (after whitespace) expects `"key"`, whitespace, `:`, whitespace; returns
/// the index where the member's value starts.
fn scan_key(buf: &[u8], i: usize) -> Result<usize, ScanError> {
    if byte(buf, i)? != b'"' {
        return Err(ScanError::Invalid);
    }
    let j = skip_ws(buf, scan_string(buf, i)?);
    if byte(buf, j)? != b':' {
        return Err(ScanError::Invalid);
    }
    Ok(skip_ws(buf, j + 1))
}

/// Strictly scans the JSON value starting exactly at `buf[start]` and returns the index
/// just past it. Containers may nest at most `max_depth` levels (capped at
/// [`MAX_DEPTH`]); iterative with a fixed-size stack, so it cannot overflow.
fn scan_value(buf: &[u8], start: usize, max_depth: usize) -> Result<usize, ScanError> {
    use ScanError::{Invalid, TooDeep};
    let max_depth = max_depth.min(MAX_DEPTH);
    let mut stack = [0u8; MAX_DEPTH];
    let mut sp = 0usize;
    let mut i = start;
    'value: loop {
        // At the start of a value.
        match byte(buf, i)? {
            open @ (b'{' | b'[') => {
                if sp >= max_depth {
                    return Err(TooDeep);
                }
                let close = if open == b'{' { b'}' } else { b']' };
                i = skip_ws(buf, i + 1);
                if buf.get(i) == Some(&close) {
                    i += 1;
                } else {
                    stack[sp] = open;
                    sp += 1;
                    if open == b'{' {
                        i = scan_key(buf, i)?;
                    }
                    continue 'value;
                }
            }
            b'"' => i = scan_string(buf, i)?,
            b't' => i = scan_literal(buf, i, b"true")?,
            b'f' => i = scan_literal(buf, i, b"false")?,
            b'n' => i = scan_literal(buf, i, b"null")?,
            b'-' | b'0'..=b'9' => i = scan_number(buf, i)?,
            _ => return Err(Invalid),
        }
        // After a complete value: close containers or move to the next element.
        loop {
            let Some(&top) = sp.checked_sub(1).and_then(|t| stack.get(t)) else {
                return Ok(i);
            };
            let j = skip_ws(buf, i);
            match byte(buf, j)? {
                b',' => {
                    i = skip_ws(buf, j + 1);
                    if top == b'{' {
                        i = scan_key(buf, i)?;
                    }
                    continue 'value;
                }
                b'}' if top == b'{' => {
                    sp -= 1;
                    i = j + 1;
                }
                b']' if top == b'[' => {
                    sp -= 1;
                    i = j + 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// Strictly validates a whole document: one value (at most [`MAX_DEPTH`] deep)
/// surrounded by optional whitespace.
fn validate_document(buf: &[u8]) -> Result<(), ScanError> {
    let end = scan_value(buf, skip_ws(buf, 0), MAX_DEPTH)?;
    if skip_ws(buf, end) == buf.len() {
        Ok(())
    } else {
        Err(ScanError::Invalid)
    }
}

/// True when `raw` is one strictly valid JSON value (optionally surrounded by whitespace)
/// nesting at most `MAX_DEPTH - 1` levels: the check the WebSocket path applies to a
/// `data` span before splicing it into other clients' frames (RFC 8259 grammar, unpaired
/// `\uD800`-style surrogate escapes refused). For `data` that was located by another
/// parser, e.g. the REST publish body. UTF-8 validity is the caller's (`raw` came from a
/// `&str`).
pub fn is_valid_data(raw: &[u8]) -> bool {
    scan_value(raw, skip_ws(raw, 0), MAX_DEPTH - 1).is_ok_and(|end| skip_ws(raw, end) == raw.len())
}

/// Rewrites every number token of a (strictly valid) document to `0` followed by
/// spaces, keeping all byte offsets. Used only on the fallback path so that simd-json
/// can build the envelope tape of documents whose numbers it cannot represent.
fn neutralize_numbers(buf: &mut [u8]) {
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        match b {
            b'"' => i = scan_string(buf, i).unwrap_or(buf.len()),
            b'-' | b'0'..=b'9' => {
                buf[i] = b'0';
                i += 1;
                while let Some(c) = buf.get_mut(i) {
                    if !matches!(*c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                        break;
                    }
                    *c = b' ';
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
}

/// Byte span `(start, end)` of the value of the `target`-th (0-based) member of the
/// top-level object in `buf`. Every member up to and including the target is scanned
/// strictly (the target's value may nest `MAX_DEPTH - 1` levels), and the byte after
/// the target's value must be `,` or `}` (after whitespace).
fn member_value_span(buf: &[u8], target: usize) -> Option<(usize, usize)> {
    let mut i = skip_ws(buf, 0);
    if *buf.get(i)? != b'{' {
        return None;
    }
    i = skip_ws(buf, i + 1);
    let mut ordinal = 0usize;
    loop {
        let start = scan_key(buf, i).ok()?;
        let end = scan_value(buf, start, MAX_DEPTH - 1).ok()?;
        let next = skip_ws(buf, end);
        let delim = *buf.get(next)?;
        if delim != b',' && delim != b'}' {
            return None;
        }
        if ordinal == target {
            return Some((start, end));
        }
        if delim == b'}' {
            return None;
        }
        ordinal += 1;
        i = skip_ws(buf, next + 1);
    }
}

// ---------------------------------------------------------------------------------

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
mod tests {
    use super::*;
    use crate::protocol::alloc_counter;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn parse(frame: &str) -> Result<ClientMsg<'static>, ParseError> {
        // Leak per test call: keeps test code simple (`'static` results).
        let p: &'static mut Parser = Box::leak(Box::new(Parser::new()));
        let f: &'static [u8] = Box::leak(frame.as_bytes().to_vec().into_boxed_slice());
        p.parse(f)
    }

    fn err(frame: &str) -> (ErrorCode, Option<String>) {
        let e = parse(frame).expect_err(frame);
        (e.code, e.request_id)
    }

    fn data_of(frame: &str) -> String {
        match parse(frame).expect(frame) {
            ClientMsg::Publish { data, .. } | ClientMsg::Send { data, .. } => {
                String::from_utf8(data.to_vec()).unwrap()
            }
            m => panic!("not publish/send: {m:?}"),
        }
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(
            parse(r#"{"type":"subscribe","channel":"room-1"}"#).unwrap(),
            ClientMsg::Subscribe {
                channel: "room-1",
                request_id: None,
                include_sender_metadata: false
            }
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","channel":"a","requestId":"r1","includeSenderMetadata":true}"#)
                .unwrap(),
            ClientMsg::Subscribe {
                channel: "a",
                request_id: Some("r1"),
                include_sender_metadata: true
            }
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","channel":"a","includeSenderMetadata":false}"#).unwrap(),
            ClientMsg::Subscribe {
                channel: "a",
                request_id: None,
                include_sender_metadata: false
            }
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","channel":"a","requestId":"x"}"#).unwrap(),
            ClientMsg::Unsubscribe {
                channel: "a",
                request_id: Some("x")
            }
        );
        assert_eq!(
            parse(r#"{"type":"publish","channel":"c","data":{"k":[1,2]},"requestId":"7"}"#)
                .unwrap(),
            ClientMsg::Publish {
                channel: "c",
                data: br#"{"k":[1,2]}"#,
                request_id: Some("7")
            }
        );
        assert_eq!(
            parse(r#"{"data":"hi","to":"bob","type":"send"}"#).unwrap(),
            ClientMsg::Send {
                to: "bob",
                data: br#""hi""#,
                request_id: None
            }
        );
        let m = parse(r#"{"type":"ping","requestId":"p"}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::Ping {
                request_id: Some("p")
            }
        );
        assert_eq!(m.request_id(), Some("p"));
        assert_eq!(m.type_str(), "ping");
        assert_eq!(
            parse(" \n\t{\"type\" : \"ping\" }\r\n ").unwrap(),
            ClientMsg::Ping { request_id: None }
        );
    }

    #[test]
    fn unknown_fields_ignored_and_escapes_unescaped() {
        assert_eq!(
            parse(
                r#"{"type":"unsubscribe","x":{"y":[1,"}"]},"channel":"a\"b\\c\u00e9\n","z":null}"#
            )
            .unwrap(),
            ClientMsg::Unsubscribe {
                channel: "a\"b\\cé\n",
                request_id: None
            }
        );
        // escaped keys
        assert_eq!(
            parse(r#"{"\u0074ype":"publish","ch\u0061nnel":"c","d\u0061ta":[true]}"#).unwrap(),
            ClientMsg::Publish {
                channel: "c",
                data: b"[true]",
                request_id: None
            }
        );
        assert_eq!(
            parse(r#"{"type":"ping","requestId":"\ud83d\ude00"}"#)
                .unwrap()
                .request_id(),
            Some("😀")
        );
    }

    #[test]
    fn data_spans_for_every_kind() {
        let cases = [
            r#""plain""#,
            r#""with \"quotes\" and \\ backslash \\""#,
            r#""\\""#,
            r#""ends with escaped quote \"""#,
            r#""}]{[,:""#,
            r#""\u0000\n\t😀 é""#,
            "0",
            "-12.5e+3",
            "1E-7",
            "18446744073709551615",
            "-9223372036854775808",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            r#"[1,[2,[3,{"a":"}"}]],"]\"["]"#,
            r#"{"a":{"b":{"c":"}}}"},"d":[{"}":"{"}]},"e":null}"#,
            "[ 1 , 2 ,\n 3 ]",
            "{ \"k\" : [ ] }",
        ];
        for d in cases {
            for (pre, post) in [("", ""), (" ", " "), ("\n\t ", "\r\n"), ("", "\n")] {
                let frame =
                    format!(r#"{{"type":"publish","channel":"c","data":{pre}{d}{post},"x":1}}"#);
                assert_eq!(data_of(&frame), d, "{frame}");
                let frame = format!(r#"{{"type":"publish","channel":"c","data":{pre}{d}{post}}}"#);
                assert_eq!(data_of(&frame), d, "{frame}");
                let frame = format!(r#"{{ "data" :{pre}{d}{post}, "type":"send","to":"p" }}"#);
                assert_eq!(data_of(&frame), d, "{frame}");
                // preceding members with tricky content
                let frame = format!(
                    r#"{{"a":"\"data\":1","b":{{"data":2,"c":"}}"}},"type":"publish","channel":"c","data":{pre}{d}{post}}}"#
                );
                assert_eq!(data_of(&frame), d, "{frame}");
            }
        }
    }

    #[test]
    fn data_null_is_valid_and_missing_is_error() {
        assert_eq!(
            data_of(r#"{"type":"publish","channel":"c","data":null}"#),
            "null"
        );
        assert_eq!(
            err(r#"{"type":"publish","channel":"c"}"#),
            (ErrorCode::MissingData, None)
        );
        assert_eq!(
            err(r#"{"type":"send","to":"p","requestId":"r"}"#),
            (ErrorCode::MissingData, Some("r".into()))
        );
    }

    #[test]
    fn malformed_messages() {
        use ErrorCode::MalformedMessage as M;
        for f in [
            "",
            " ",
            "not json",
            "{",
            "}",
            "{\"type\":\"ping\"",
            "{\"type\":\"ping\",}",
            "{\"type\":'ping'}",
            "{type:\"ping\"}",
            "{\"type\":\"ping\"} {}",
            "{\"type\":\"ping\"}x",
            "[]",
            "[{\"type\":\"ping\"}]",
            "\"ping\"",
            "42",
            "null",
            "{}",
            "{\"type\":null}",
            "{\"type\":1}",
            "{\"type\":[\"ping\"]}",
            "{\"type\":{}}",
            "{\"Type\":\"ping\"}",
            "{\"type\":\"pi\nng\"}",
            "{\"type\":\"ping\",\"x\":\"\\q\"}",
            "{\"type\":\"ping\",\"x\":01}",
        ] {
            assert_eq!(err(f), (M, None), "{f:?}");
        }
        // invalid UTF-8 (not relying on the WebSocket layer)
        let mut p = Parser::new();
        for bad in [
            &b"{\"type\":\"ping\",\"x\":\"\xff\"}"[..],
            b"{\"type\":\"ping\",\"x\":\"\xc3\"}",
            b"{\"type\":\"ping\"}\xff",
            b"\xef\xbb\xbf{\"type\":\"ping\"}",
            b"{\"type\":\"ping\"}\0",
        ] {
            assert_eq!(p.parse(bad).unwrap_err().code, M, "{bad:?}");
        }
    }

    #[test]
    fn request_id_rules() {
        use ErrorCode::MalformedMessage as M;
        for f in [
            r#"{"type":"ping","requestId":""}"#,
            r#"{"type":"ping","requestId":1}"#,
            r#"{"type":"ping","requestId":null}"#,
            r#"{"type":"ping","requestId":["a"]}"#,
            r#"{"type":"ping","requestId":{}}"#,
            r#"{"type":"ping","requestId":true}"#,
            r#"{"type":"ping","requestId":"a","requestId":"a"}"#,
            r#"{"type":"nope","requestId":7}"#,
        ] {
            assert_eq!(err(f), (M, None), "{f}");
        }
        let max = "é".repeat(MAX_REQUEST_ID_CHARS); // 128 chars, 256 bytes
        let f = format!(r#"{{"type":"ping","requestId":"{max}"}}"#);
        assert_eq!(parse(&f).unwrap().request_id(), Some(max.as_str()));
        let over = "a".repeat(MAX_REQUEST_ID_CHARS + 1);
        let f = format!(r#"{{"type":"ping","requestId":"{over}"}}"#);
        assert_eq!(err(&f), (M, None));
        // requestId is echoed on every later error
        let r = Some("rid".to_string());
        for (f, code) in [
            (r#"{"requestId":"rid","type":"ping","x":1,"x":2}"#, M),
            (r#"{"requestId":"rid"}"#, M),
            (r#"{"requestId":"rid","type":5}"#, M),
            (
                r#"{"requestId":"rid","type":"subscribe","channel":"c","includeSenderMetadata":"yes"}"#,
                M,
            ),
            (
                r#"{"requestId":"rid","type":"subscribe","channel":"c","includeSenderMetadata":null}"#,
                M,
            ),
            (
                r#"{"requestId":"rid","type":"nope"}"#,
                ErrorCode::UnknownType,
            ),
            (
                r#"{"requestId":"rid","type":"PING"}"#,
                ErrorCode::UnknownType,
            ),
            (
                r#"{"requestId":"rid","type":"subscribe"}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"requestId":"rid","type":"unsubscribe","channel":1}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"requestId":"rid","type":"publish","channel":null,"data":1}"#,
                ErrorCode::InvalidChannel,
            ),
            (
                r#"{"requestId":"rid","type":"send","data":1}"#,
                ErrorCode::InvalidPeerId,
            ),
            (
                r#"{"requestId":"rid","type":"send","to":["p"],"data":1}"#,
                ErrorCode::InvalidPeerId,
            ),
            (
                r#"{"requestId":"rid","type":"publish","channel":"c"}"#,
                ErrorCode::MissingData,
            ),
        ] {
            assert_eq!(err(f), (code, r.clone()), "{f}");
        }
    }

    #[test]
    fn field_errors_without_request_id() {
        assert_eq!(err(r#"{"type":"bogus"}"#), (ErrorCode::UnknownType, None));
        assert_eq!(err(r#"{"type":""}"#), (ErrorCode::UnknownType, None));
        assert_eq!(
            err(r#"{"type":"subscribe","channel":{}}"#),
            (ErrorCode::InvalidChannel, None)
        );
        assert_eq!(
            err(r#"{"type":"send","to":null,"data":1}"#),
            (ErrorCode::InvalidPeerId, None)
        );
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"c","includeSenderMetadata":1}"#),
            (ErrorCode::MalformedMessage, None)
        );
        let e = parse(r#"{"type":"bogus"}"#).unwrap_err();
        assert_eq!(e.to_string(), "unknown_type: unknown message type");
    }

    #[test]
    fn duplicate_keys_rejected() {
        use ErrorCode::MalformedMessage as M;
        for f in [
            r#"{"type":"ping","type":"ping"}"#,
            r#"{"type":"publish","channel":"c","data":1,"data":2}"#,
            r#"{"type":"publish","channel":"c","data":1,"channel":"d"}"#,
            r#"{"type":"ping","x":1,"x":1}"#,
            r#"{"type":"ping","\u0078":1,"x":1}"#,
            r#"{"type":"ping","t\u0079pe":"ping"}"#,
        ] {
            assert_eq!(err(f), (M, None), "{f}");
        }
        // many keys (sorted path), duplicate at the end
        let mut f = String::from(r#"{"type":"ping""#);
        for i in 0..100 {
            f.push_str(&format!(r#","k{i}":{i}"#));
        }
        let ok = format!("{f}}}");
        assert!(parse(&ok).is_ok());
        let dup = format!(r#"{f},"k42":0}}"#);
        assert_eq!(err(&dup), (M, None));
        // nested duplicates are data's business, not ours
        assert_eq!(
            data_of(r#"{"type":"publish","channel":"c","data":{"a":1,"a":2}}"#),
            r#"{"a":1,"a":2}"#
        );
    }

    #[test]
    fn nesting_depth() {
        let nested = |levels: usize| {
            // the top-level object is level 1; `data` adds `levels - 1` arrays
            format!(
                r#"{{"type":"publish","channel":"c","data":{}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        let ok = nested(MAX_DEPTH);
        assert_eq!(data_of(&ok).len(), 2 * (MAX_DEPTH - 1));
        assert_eq!(
            err(&nested(MAX_DEPTH + 1)),
            (ErrorCode::MalformedMessage, None)
        );
        let objs = format!(
            r#"{{"type":"ping","requestId":"r","x":{}1{}}}"#,
            r#"{"a":"#.repeat(MAX_DEPTH),
            "}".repeat(MAX_DEPTH)
        );
        assert_eq!(err(&objs), (ErrorCode::MalformedMessage, Some("r".into())));
        // siblings do not add up
        let wide = format!(
            r#"{{"type":"ping","a":{0}{1},"b":{0}{1}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&wide).is_ok());
        // hostile: huge depth, closed and unclosed, must neither crash nor overflow
        for n in [100_000usize, 1_000_000] {
            let closed = format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            );
            assert_eq!(err(&closed).0, ErrorCode::MalformedMessage);
            assert_eq!(err(&"[".repeat(n)).0, ErrorCode::MalformedMessage);
            assert_eq!(err(&"{\"a\":".repeat(n)).0, ErrorCode::MalformedMessage);
        }
    }

    #[test]
    fn numbers_simd_json_accepts() {
        // Valid JSON numbers at the edges of f64 / u64 should pass through untouched.
        for d in [
            "1e308",
            "-1e308",
            "5e-324",
            "2.2250738585072014e-308",
            "0.1",
            "-0",
            "-0.0",
            "1.7976931348623157e308",
            "123456789.123456789",
            "1E+2",
        ] {
            let f = format!(r#"{{"type":"publish","channel":"c","data":{d}}}"#);
            assert_eq!(data_of(&f), d, "{f}");
        }
    }

    #[test]
    fn channel_validation() {
        assert_eq!(validate_channel("room-1"), Ok(()));
        assert_eq!(validate_channel("app_abc/room/é/日本"), Ok(()));
        assert_eq!(validate_channel(&"a".repeat(256)), Ok(()));
        assert_eq!(validate_channel(&"é".repeat(128)), Ok(())); // 256 bytes
        assert_eq!(validate_channel("_metered"), Ok(()));
        assert_eq!(validate_channel("x_system/"), Ok(()));
        assert_eq!(validate_channel("a b"), Ok(())); // space is not a control char
        assert_eq!(validate_channel("\u{00a0}"), Ok(())); // U+00A0 is not Cc
        assert_eq!(validate_channel(""), Err(ErrorCode::InvalidChannel));
        assert_eq!(
            validate_channel(&"a".repeat(257)),
            Err(ErrorCode::InvalidChannel)
        );
        assert_eq!(
            validate_channel(&"é".repeat(129)),
            Err(ErrorCode::InvalidChannel)
        );
        for c in ['\0', '\n', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            assert_eq!(
                validate_channel(&format!("ab{c}cd")),
                Err(ErrorCode::InvalidChannel),
                "{c:?}"
            );
        }
        for p in [
            "_metered/x",
            "_METERED/x",
            "_Internal/a/b",
            "_system/",
            "_SyStEm/z",
        ] {
            assert_eq!(validate_channel(p), Err(ErrorCode::ChannelReserved), "{p}");
        }
        // control chars win over reserved prefix
        assert_eq!(
            validate_channel("_system/\n"),
            Err(ErrorCode::InvalidChannel)
        );
    }

    #[test]
    fn peer_id_validation() {
        assert_eq!(validate_peer_id("alice"), Ok(()));
        assert_eq!(validate_peer_id("!~"), Ok(()));
        assert_eq!(validate_peer_id(&"x".repeat(128)), Ok(()));
        assert_eq!(
            validate_peer_id("a3f2c1d0-0000-4000-8000-000000000000"),
            Ok(())
        );
        for bad in ["", "a b", "tab\t", "é", "\u{7f}", "nul\0"] {
            assert_eq!(
                validate_peer_id(bad),
                Err(ErrorCode::InvalidPeerId),
                "{bad:?}"
            );
        }
        assert_eq!(
            validate_peer_id(&"x".repeat(129)),
            Err(ErrorCode::InvalidPeerId)
        );
    }

    #[test]
    fn is_valid_data_matches_the_websocket_check() {
        for ok in [
            &br#"{"a":[1,"\ud83d\ude00"]}"#[..],
            b"null",
            b" 1e999999 ",
            br#""\\ud800 is text""#,
        ] {
            assert!(is_valid_data(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &br#""\ud800""#[..],
            br#"{"x":"\udc00"}"#,
            br#"["\ud800\u0041"]"#,
            b"1 2",
            b"",
            b"[1,]",
        ] {
            assert!(!is_valid_data(bad), "{}", String::from_utf8_lossy(bad));
            let frame = format!(
                r#"{{"type":"publish","channel":"c","data":{}}}"#,
                String::from_utf8_lossy(bad)
            );
            assert!(parse(&frame).is_err(), "{frame}");
        }
        assert!(is_valid_data(
            format!("{}{}", "[".repeat(63), "]".repeat(63)).as_bytes()
        ));
        assert!(!is_valid_data(
            format!("{}{}", "[".repeat(64), "]".repeat(64)).as_bytes()
        ));
    }

    #[test]
    fn walker_is_defensive() {
        // The walker is only run on accepted documents, but must not panic on garbage.
        for buf in [
            &b""[..],
            b"{",
            b"{\"",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":\"\\",
            b"{\"a\":[",
            b"{\"a\":]",
            b"{\"a\":}",
            b"{\"a\":1",
            b"{\"a\":1,",
            b"{\"a\":1}",
            b"[",
        ] {
            for t in 0..3 {
                let _ = member_value_span(buf, t);
            }
        }
        assert_eq!(member_value_span(b"{\"a\":1}", 0), Some((5, 6)));
        assert_eq!(member_value_span(b"{\"a\":1}", 1), None);
        assert_eq!(member_value_span(b"{\"a\":]", 0), None);
    }

    #[test]
    fn strict_scanner() {
        let ok = |s: &str| validate_document(s.as_bytes());
        for good in [
            "0",
            "-0",
            "1.5e+10",
            "-1E-2",
            "123456789012345678901234567890",
            "1e400",
            "\"\"",
            "\"\\ud83d\\ude00 \\u00e9 \\\" \\\\ \\/ \\b\\f\\n\\r\\t\"",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ ] } , \"x\" ] ",
            "{\"a\":{\"b\":[true,false,null]}}",
        ] {
            assert_eq!(ok(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "-",
            "--1",
            "1x",
            "1000000000000000000x",
            "tru",
            "truex",
            "nul",
            "NaN",
            "Infinity",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"\\udc00\"",
            "\"a\nb\"",
            "\"\u{1f}\"",
            "\"unterminated",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":1]",
            "[1}",
            "[",
            "]",
            "1 2",
            "{} x",
        ] {
            assert_eq!(ok(bad), Err(ScanError::Invalid), "{bad:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(ok(&deep(MAX_DEPTH)), Ok(()));
        assert_eq!(ok(&deep(MAX_DEPTH + 1)), Err(ScanError::TooDeep));
        assert_eq!(ok(&"[".repeat(1_000_000)), Err(ScanError::TooDeep));
    }

    #[test]
    fn simd_json_leniency_is_not_forwarded() {
        // simd-json 0.15 accepts a 19-digit integer followed by garbage.
        for f in [
            r#"{"type":"publish","channel":"c","data":1000000000000000000x}"#,
            "{\"type\":\"publish\",\"channel\":\"c\",\"data\":-100000000000000000\u{e}}",
            "{\"type\":\"publish\",\"channel\":\"c\",\"data\":[1,-100000000000000000\u{e}]}",
            r#"{"type":"publish","channel":"c","x":1000000000000000000x,"data":1}"#,
            r#"{"type":"publish","channel":"c","data":"\ud800"}"#,
        ] {
            assert_eq!(err(f), (ErrorCode::MalformedMessage, None), "{f:?}");
        }
    }

    #[test]
    fn numbers_simd_json_refuses_still_work() {
        for d in [
            "-9223372036854775809",
            "18446744073709552000",
            "99999999999999999999",
            "123456789012345678901234567890",
            "1e400",
            "1e-400",
            r#"{"big":-9223372036854775809,"s":"1e999 \" ]}"}"#,
            "[1,18446744073709551616,2]",
        ] {
            let f = format!(
                r#"{{"type":"publish","channel":"ch","requestId":"r","data":{d},"n":-99999999999999999999}}"#
            );
            assert_eq!(
                parse(&f).unwrap(),
                ClientMsg::Publish {
                    channel: "ch",
                    data: d.as_bytes(),
                    request_id: Some("r")
                },
                "{f}"
            );
        }
        // the fallback keeps every other rule
        assert_eq!(
            err(r#"{"type":"publish","channel":"c","data":1,"data":99999999999999999999}"#),
            (ErrorCode::MalformedMessage, None)
        );
        assert_eq!(
            err(r#"{"type":99999999999999999999,"requestId":"r"}"#),
            (ErrorCode::MalformedMessage, Some("r".into()))
        );
        assert_eq!(
            err(r#"{"type":"send","to":99999999999999999999,"data":1}"#),
            (ErrorCode::InvalidPeerId, None)
        );
        assert_eq!(
            err(r#"{"type":"publish","channel":"c","data":99999999999999999999x}"#),
            (ErrorCode::MalformedMessage, None)
        );
        let deep = format!(
            r#"{{"type":"ping","x":[{}99999999999999999999{}]}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(parse(&deep).unwrap_err().message, "nesting too deep");
    }

    #[test]
    fn steady_state_parse_does_not_allocate() {
        let mut p = Parser::new();
        let frames: Vec<Vec<u8>> = vec![
            br#"{"type":"publish","channel":"room\/1","data":{"text":"hello \"world\"","n":[1,2,3],"o":{"p":null}},"requestId":"abc"}"#.to_vec(),
            br#"{"type":"subscribe","channel":"c","includeSenderMetadata":true}"#.to_vec(),
            br#"{"type":"send","to":"bob","data":"x"}"#.to_vec(),
            br#"{"type":"ping"}"#.to_vec(),
            format!(
                r#"{{"type":"publish","channel":"c","data":"{}"}}"#,
                "x".repeat(60_000)
            )
            .into_bytes(),
            {
                let mut f = String::from(r#"{"type":"ping""#);
                for i in 0..50 {
                    f.push_str(&format!(r#","k{i}":{i}"#));
                }
                f.push('}');
                f.into_bytes()
            },
        ];
        // warm up
        for f in &frames {
            assert!(p.parse(f).is_ok());
        }
        for f in &frames {
            let (ok, allocs) = alloc_counter::count(|| p.parse(f).is_ok());
            assert!(ok);
            assert_eq!(
                allocs,
                0,
                "{}",
                String::from_utf8_lossy(&f[..f.len().min(60)])
            );
        }
        // an invalid frame in between does not poison the buffers
        assert!(p.parse(b"{\"type\":").is_err());
        let (ok, allocs) = alloc_counter::count(|| p.parse(&frames[0]).is_ok());
        assert!(ok && allocs == 0);
    }

    #[test]
    fn parser_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Parser>();
        assert_send::<ParseError>();
    }

    #[test]
    fn parser_reuse_across_frames() {
        let mut p = Parser::new();
        let a = br#"{"type":"publish","channel":"a","data":[1]}"#.to_vec();
        let b = br#"{"type":"publish","channel":"bbbbbbbbbbbbbbbb","data":{"z":true}}"#.to_vec();
        for _ in 0..3 {
            assert_eq!(
                p.parse(&b).unwrap(),
                ClientMsg::Publish {
                    channel: "bbbbbbbbbbbbbbbb",
                    data: br#"{"z":true}"#,
                    request_id: None
                }
            );
            assert_eq!(
                p.parse(&a).unwrap(),
                ClientMsg::Publish {
                    channel: "a",
                    data: b"[1]",
                    request_id: None
                }
            );
        }
    }

    // ------------------------------------------------------------------ proptest

    /// serde_json accepts `data`, except that it may refuse out-of-range numbers
    /// (e.g. `1e999`), which are valid JSON grammar and forwarded as is.
    fn serde_ok(data: &[u8]) -> bool {
        match serde_json::from_slice::<Value>(data) {
            Ok(_) => true,
            Err(e) => e.to_string().contains("number out of range"),
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\"\\\\{}\\[\\],: \n\t\u{0}-\u{1f}a-zé😀]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 128, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("[\"\\\\{}a-z\u{0}-\u{1f}é]{0,6}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_data_round_trips(data in arb_json(), channel in any::<String>(), pretty in any::<bool>(), rid in "[a-zA-Z0-9\"\\\\]{1,20}") {
            let msg = json!({"type": "publish", "channel": channel, "requestId": rid, "data": data});
            let frame = if pretty { serde_json::to_vec_pretty(&msg) } else { serde_json::to_vec(&msg) }.unwrap();
            let mut p = Parser::new();
            match p.parse(&frame) {
                Ok(ClientMsg::Publish { channel: c, data: d, request_id }) => {
                    prop_assert_eq!(c, channel.as_str());
                    prop_assert_eq!(request_id, Some(rid.as_str()));
                    let reparsed: Value = serde_json::from_slice(d).unwrap();
                    let expected: Value = serde_json::from_slice(&serde_json::to_vec(&data).unwrap()).unwrap();
                    prop_assert_eq!(reparsed, expected);
                    if !pretty {
                        let compact = serde_json::to_vec(&data).unwrap();
                        prop_assert_eq!(d, compact.as_slice());
                    }
                }
                other => prop_assert!(false, "unexpected {:?} for {}", other, String::from_utf8_lossy(&frame)),
            }
        }

        #[test]
        fn prop_parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut p = Parser::new();
            let _ = p.parse(&bytes);
        }

        #[test]
        fn prop_parse_never_panics_on_jsonish(s in "[{}\\[\\]\":,\\\\ a-z0-9.eE+\\-\n\t\u{0}é]{0,300}") {
            let mut p = Parser::new();
            let _ = p.parse(s.as_bytes());
            let framed = format!(r#"{{"type":"publish","channel":"c","data":{s}}}"#);
            if let Ok(ClientMsg::Publish { data, .. }) = p.parse(framed.as_bytes()) {
                // whatever was accepted as data must itself be valid JSON
                prop_assert!(serde_ok(data), "{}", framed);
            }
        }

        #[test]
        fn prop_parse_agrees_with_serde_on_validity(data in arb_json(), cut in 0usize..400, junk in any::<u8>()) {
            // Mutated valid frames: never panic; accepted data always valid JSON.
            let msg = json!({"type": "send", "to": "p", "data": data});
            let mut frame = serde_json::to_vec(&msg).unwrap();
            if !frame.is_empty() {
                let i = cut % frame.len();
                frame[i] = junk;
            }
            let mut p = Parser::new();
            if let Ok(ClientMsg::Send { data, .. }) = p.parse(&frame) {
                prop_assert!(serde_ok(data), "{}", String::from_utf8_lossy(&frame));
            }
        }
    }
}
