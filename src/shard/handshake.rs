//! The HTTP/1.1 upgrade: parse the request head (httparse), decide, and build the answer.
//!
//! Pure functions over bytes; the connection task does the I/O and the deadline.
//! Decisions: only `GET /v1` upgrades (404 elsewhere); a head over `max_header_bytes` or
//! with more than `max_headers` headers answers 431; a malformed request 400; a request
//! without the WebSocket upgrade headers 426; a method other than GET 405.

/// What to do with the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The head is not complete yet; read more.
    Incomplete,
    /// A valid upgrade request.
    Upgrade(UpgradeRequest),
    /// Answer with this HTTP status and close.
    Reject(Rejection),
}

/// The parts of a valid upgrade request the broker uses.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Accept` value to answer with.
    pub accept_key: String,
    /// Raw query string (after `?`), still percent-encoded.
    pub query: String,
    /// `Origin` header, if any.
    pub origin: Option<String>,
    /// Bytes of the buffer taken by the head; anything after is WebSocket data.
    pub consumed: usize,
}

/// An HTTP error answer.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Rejection {
    /// Status code.
    pub status: u16,
    /// Short machine-readable reason, sent as the JSON error code.
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Handshake {
    Handshake::Reject(Rejection { status, reason })
}

/// Parses the request head in `buf`.
pub fn parse(buf: &[u8], max_header_bytes: usize, max_headers: usize) -> Handshake {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_header_bytes {
                reject(431, "request_header_fields_too_large")
            } else {
                Handshake::Incomplete
            };
        }
        Err(httparse::Error::TooManyHeaders) => return reject(431, "too_many_headers"),
        Err(_) => return reject(400, "bad_request"),
    };
    if consumed > max_header_bytes {
        return reject(431, "request_header_fields_too_large");
    }
    if req.version != Some(1) {
        return reject(400, "bad_request");
    }
    let path = req.path.unwrap_or("");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path != "/v1" {
        return reject(404, "not_found");
    }
    if req.method != Some("GET") {
        return reject(405, "method_not_allowed");
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return reject(426, "upgrade_required");
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return reject(426, "unsupported_websocket_version");
    }
    let Some(key) = header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return reject(400, "missing_websocket_key");
    };
    Handshake::Upgrade(UpgradeRequest {
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        query: query.to_string(),
        origin: header("origin").map(str::to_string),
        consumed,
    })
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept_key: &str, shard: u16) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\nX-Ringcast-Shard: {shard}\r\n\r\n"
    )
    .into_bytes()
}

/// An error answer with a JSON body `{"error":reason}`; the connection closes after it.
pub fn error_response(r: Rejection) -> Vec<u8> {
    let text = match r.status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("{{\"error\":\"{}\"}}", r.reason);
    let extra = if r.status == 426 {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        r.status,
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "GET /v1?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://a.example\r\n\r\n";

    #[test]
    fn accepts_upgrade() {
        let Handshake::Upgrade(u) = parse(OK.as_bytes(), 8192, 64) else {
            panic!()
        };
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.query, "token=abc");
        assert_eq!(u.origin.as_deref(), Some("https://a.example"));
        assert_eq!(u.consumed, OK.len());
    }

    #[test]
    fn incomplete_until_blank_line() {
        assert_eq!(parse(&OK.as_bytes()[..40], 8192, 64), Handshake::Incomplete);
    }

    #[test]
    fn rejections() {
        let st = |s: &str| match parse(s.as_bytes(), 300, 8) {
            Handshake::Reject(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(st(&OK.replace("/v1?", "/v2?")), 404);
        assert_eq!(st(&OK.replace("GET", "POST")), 405);
        assert_eq!(st(&OK.replace("Upgrade: websocket\r\n", "")), 426);
        assert_eq!(st(&OK.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            st(&OK.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400
        );
        assert_eq!(st("\x16\x03\x01garbage\r\n\r\n"), 400);
        let many: String = (0..20).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(st(&OK.replace("Host: x\r\n", &many)), 431);
        let big = format!("GET /v1 HTTP/1.1\r\nX: {}\r\n", "a".repeat(400));
        assert_eq!(st(&big), 431);
    }
}
