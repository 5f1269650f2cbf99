//! Bodies of ringcast's fuzz targets, shared by the libFuzzer binaries (`fuzz_targets/`, run
//! with `cargo +nightly fuzz run <target>`) and the stable smoke test (`tests/smoke.rs`).
//!
//! Every body must not panic for any input, and checks invariants beyond "no crash":
//! - `parse_client_msg`: an accepted `data` is one strictly valid JSON value (it is spliced into
//!   other clients' frames) and the frame encoded around it parses as JSON; `requestId`s are
//!   1..=128 chars; errors echo only valid `requestId`s.
//! - `glob_match`: a parsed pattern's escaped literal matches exactly its channel;
//!   `pattern_within(a, b)` is sound: a channel matched by `a` is matched by `b`.
//! - `token_verify`: arbitrary tokens and queries never panic; JWTs *signed with the right key*
//!   around fuzzed header/payload JSON reach the claim checks, and an accepted identity has a
//!   valid peer id and an `exp` in the future.
//! - `upgrade_parse`: `consumed` never exceeds the input or the header cap; a prefix of the
//!   input never yields an upgrade that the whole input rejects.
//! - `cluster_wire`: what crosses NATS between nodes (envelope, member lists, request
//!   headers, answers) never panics, and what decodes re-encodes to the same bytes.
//! - `ws_read`: tungstenite in server role with the broker's read-path config, fed in fuzzed
//!   chunk sizes like io_uring reads: messages respect the size cap; every error maps to a close
//!   code the broker sends.

use std::{cell::RefCell, io, sync::OnceLock};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ringcast::{
    auth::{
        glob::{pattern_within, Pattern},
        keys::{AppConfig, PublishableKeyConfig, SecretKeyConfig},
        Authenticator,
    },
    protocol::{
        encode,
        parse::{
            valid_group, validate_channel, validate_peer_id, ClientMsg, Parser,
            MAX_REQUEST_ID_CHARS,
        },
    },
    shard::{
        conn::{ws_config, ws_error_close, Feed},
        handshake::{self, Handshake},
    },
};
use tungstenite::{
    protocol::{Role, WebSocketContext},
    Message,
};

thread_local! {
    static PARSER: RefCell<Parser> = RefCell::new(Parser::new());
}

fn assert_json(bytes: &[u8], what: &str) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        // serde_json (without arbitrary_precision) refuses numbers beyond f64 range, which
        // RFC 8259 allows and ringcast forwards verbatim: not a finding.
        if e.to_string().starts_with("number out of range") {
            return;
        }
        panic!(
            "{what} is not valid JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

fn check_request_id(r: Option<&str>) {
    if let Some(r) = r {
        let n = r.chars().count();
        assert!(
            (1..=MAX_REQUEST_ID_CHARS).contains(&n),
            "requestId of {n} chars"
        );
    }
}

/// The JSON envelope parser (`Parser::parse`), then the encoders fed with what it returned.
pub fn parse_client_msg(data: &[u8]) {
    PARSER.with(|p| {
        let mut p = p.borrow_mut();
        match p.parse(data) {
            Ok(msg) => {
                check_request_id(msg.request_id());
                match msg {
                    ClientMsg::Publish { channel, data, .. } => {
                        assert_json(data, "accepted publish data");
                        let _ = validate_channel(channel);
                        let frame = encode::message(channel, "peer", data, Some(b"{\"a\":1}"));
                        assert_json(ws_payload(&frame), "encoded message frame");
                    }
                    ClientMsg::Send { to, data, .. } => {
                        assert_json(data, "accepted send data");
                        let _ = validate_peer_id(to);
                        let frame = encode::direct(to, data, None);
                        assert_json(ws_payload(&frame), "encoded direct frame");
                    }
                    ClientMsg::Subscribe { channel, .. }
                    | ClientMsg::Unsubscribe { channel, .. }
                    | ClientMsg::SubscribePattern { channel, .. }
                    | ClientMsg::UnsubscribePattern { channel, .. } => {
                        let _ = validate_channel(channel);
                    }
                    ClientMsg::SubscribeGroup { channel, group, .. } => {
                        let _ = validate_channel(channel);
                        assert!(valid_group(group), "accepted group must be valid");
                    }
                    ClientMsg::Ping { request_id } => {
                        assert_json(ws_payload(&encode::pong_with(request_id)), "pong");
                    }
                    ClientMsg::History { channel, .. } => {
                        let _ = validate_channel(channel);
                    }
                    ClientMsg::Request { to, data, .. } => {
                        assert_json(data, "accepted request data");
                        let _ = validate_peer_id(to);
                        let frame = encode::rpc::request(to, "0.1", data, 1000, None);
                        assert_json(ws_payload(&frame), "encoded request frame");
                    }
                    ClientMsg::Reply { data, .. } => {
                        assert_json(data, "accepted reply data");
                        let frame = encode::rpc::reply("r", "p", data, true, 1);
                        assert_json(ws_payload(&frame), "encoded reply frame");
                    }
                    ClientMsg::Cancel { .. } => {}
                }
            }
            Err(e) => {
                check_request_id(e.request_id.as_deref());
                let frame = encode::error(e.code, e.request_id.as_deref(), Some(e.message));
                assert_json(ws_payload(&frame), "encoded error frame");
            }
        }
    });
}

/// The payload of one unmasked server frame produced by `encode`.
fn ws_payload(frame: &[u8]) -> &[u8] {
    let len = frame[1] & 0x7f;
    match len {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

/// Channel globs: input is `pattern \0 channel \0 outer-pattern` (missing parts empty).
pub fn glob_match(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (a, ch, b) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let pa = Pattern::parse(a);
    let pb = Pattern::parse(b);
    if let Ok(pa) = &pa {
        let m = pa.matches(ch);
        if let Some(lit) = pa.literal() {
            assert_eq!(m, lit == ch, "literal pattern {a:?} vs {ch:?}");
        }
        if let Ok(pb) = &pb {
            if m && pattern_within(pa, pb) {
                assert!(
                    pb.matches(ch),
                    "{a:?} within {b:?} but {ch:?} matches only the first"
                );
            }
        }
        assert!(pattern_within(pa, pa), "{a:?} not within itself");
    }
    if let Ok(lit) = Pattern::parse(&Pattern::escape(ch)) {
        assert!(
            lit.matches(ch),
            "escaped literal of {ch:?} does not match it"
        );
        assert_eq!(lit.literal(), Some(ch));
    }
}

pub const FUZZ_KID: &str = "sk_id_fuzz";
pub const FUZZ_SECRET: &str = "sk_secret_fuzz0123456789abcdef0123456789";
/// A fixed "now" (unix seconds) for token checks.
pub const NOW: u64 = 1_700_000_000;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(&[AppConfig {
            id: "fuzz".into(),
            max_connections: None,
            secret_keys: vec![
                SecretKeyConfig {
                    id: FUZZ_KID.into(),
                    secret: FUZZ_SECRET.into(),
                    channel_patterns: vec!["room/*".into(), "org/**".into()],
                    actions: vec!["publish".into(), "subscribe".into()],
                },
                SecretKeyConfig {
                    id: "sk_id_all".into(),
                    secret: "sk_secret_all0123456789abcdef0123456789".into(),
                    channel_patterns: vec!["**".into()],
                    actions: vec![
                        "publish".into(),
                        "subscribe".into(),
                        "presence".into(),
                        "send".into(),
                    ],
                },
            ],
            publishable_keys: vec![PublishableKeyConfig {
                key: "pk_live_fuzz".into(),
                channel_patterns: vec!["public/**".into()],
                actions: vec!["subscribe".into()],
                allowed_origins: vec!["https://good.example".into()],
            }],
            history: vec![],
        }])
        .expect("valid fuzz config")
    })
}

/// The token and `kid` path. First byte selects the mode:
/// 0: the rest is a raw token; 1: the rest is a raw query string (with `Origin` from its last
/// line); otherwise the rest is `header-json \0 payload-json`, signed with [`FUZZ_SECRET`].
pub fn token_verify(data: &[u8]) {
    let auth = authenticator();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let result = match mode % 3 {
        0 => auth.verify_token(&String::from_utf8_lossy(rest), NOW),
        1 => {
            let text = String::from_utf8_lossy(rest);
            let (query, origin) = match text.rsplit_once('\n') {
                Some((q, o)) => (q, Some(o)),
                None => (&*text, None),
            };
            auth.authenticate_ws(query, origin, NOW)
        }
        _ => {
            let mut parts = rest.splitn(2, |&b| b == 0);
            let header = parts.next().unwrap_or(b"");
            let payload = parts.next().unwrap_or(b"");
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let key = jsonwebtoken::EncodingKey::from_secret(FUZZ_SECRET.as_bytes());
            let sig = jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &key,
                jsonwebtoken::Algorithm::HS256,
            )
            .expect("HS256 signing");
            auth.verify_token(&format!("{signing_input}.{sig}"), NOW)
        }
    };
    match result {
        Ok(id) => {
            assert!(
                validate_peer_id(&id.peer_id).is_ok(),
                "accepted invalid peer id {:?}",
                id.peer_id
            );
            if let Some(exp) = id.expires_at {
                assert!(exp > NOW, "accepted a token with exp {exp} <= now");
            }
            if let Some(m) = &id.metadata_json {
                assert_json(m.as_bytes(), "metadata");
            }
            if let Some(m) = &id.peer_metadata_json {
                assert_json(m, "peerMetadata");
            }
        }
        Err(e) => {
            assert!(matches!(e.close_code(), 4001..=4003));
            assert!(e.reason().len() <= 123);
        }
    }
}

/// The HTTP upgrade parser, on the whole input and on a prefix.
pub fn upgrade_parse(data: &[u8]) {
    const MAX_BYTES: usize = 8192;
    const MAX_HEADERS: usize = 64;
    let whole = handshake::parse(data, MAX_BYTES, MAX_HEADERS);
    match &whole {
        Handshake::Upgrade(u) => {
            assert!(u.consumed <= data.len() && u.consumed <= MAX_BYTES);
            let _ = handshake::switching_protocols(&u.accept_key, 0);
        }
        Handshake::Reject(r) => {
            let resp = handshake::error_response(*r);
            assert!(resp.starts_with(b"HTTP/1.1 "));
        }
        Handshake::Incomplete => assert!(data.len() <= MAX_BYTES),
    }
    // The connection task parses growing prefixes: a prefix that already parses as a
    // complete upgrade must give the same answer as the whole buffer.
    if !data.is_empty() {
        let cut = data[0] as usize % data.len();
        if let Handshake::Upgrade(u) = handshake::parse(&data[..cut], MAX_BYTES, MAX_HEADERS) {
            assert_eq!(whole, Handshake::Upgrade(u), "prefix and whole disagree");
        }
    }
}

/// The WebSocket read path: first byte = read chunk size (1..=256), rest = bytes from the peer.
pub fn ws_read(data: &[u8]) {
    const MAX_MESSAGE: usize = 1024;
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = chunk as usize + 1;
    let mut ws = WebSocketContext::new(Role::Server, Some(ws_config(MAX_MESSAGE, 4096)));
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        let mut feed = Feed {
            input: piece,
            output: &mut out,
        };
        loop {
            match ws.read(&mut feed) {
                Ok(Message::Text(t)) => assert!(t.len() <= MAX_MESSAGE),
                Ok(Message::Binary(b)) => assert!(b.len() <= MAX_MESSAGE),
                Ok(Message::Ping(p)) | Ok(Message::Pong(p)) => assert!(p.len() <= 125),
                Ok(Message::Close(_)) | Ok(Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return,
                Err(e) => {
                    let (code, _) = ws_error_close(&e);
                    assert!(matches!(code, 1002 | 1007 | 1009 | 1011), "{e}");
                    return;
                }
            }
        }
    }
}

/// What arrives from NATS in a cluster (protocol §9): the message envelope, member lists,
/// the request headers and the question answers decode without a panic, and whatever
/// decodes re-encodes to the very same bytes (no two inputs mean the same message).
pub fn cluster_wire(data: &[u8]) {
    use ringcast::cluster::{query, rpc, wire};
    let b = bytes::Bytes::copy_from_slice(data);
    if let Some(w) = wire::decode(b.clone()) {
        let again = wire::encode_from(
            w.kind,
            w.id,
            &w.app,
            &w.name,
            &w.frame,
            w.frame_with_meta.as_deref(),
            w.sender,
        );
        assert_eq!(again, b, "envelope round trip");
        if let Some(m) = wire::decode_members(w.frame.clone()) {
            assert_eq!(wire::encode_members(m.flags, m.gen, &m.members), w.frame);
        }
    }
    if let Some(m) = wire::decode_members(b.clone()) {
        assert_eq!(
            wire::encode_members(m.flags, m.gen, &m.members),
            b,
            "member list round trip"
        );
    }
    if let Some((to, of, n, release, has)) = rpc::decode_frame_header(b.clone()) {
        assert_eq!(
            rpc::frame_header(to, of, n, release, has).len(),
            b.len()
        );
    }
    if let Some((of, n, c)) = rpc::decode_gone_header(b.clone()) {
        assert_eq!(rpc::gone_header(of, n, c), b, "gone header round trip");
    }
    if let Some(e) = rpc::decode_except(b.clone()) {
        assert_eq!(rpc::except_bytes(e), b, "except round trip");
    }
    let _ = rpc::decode_reply_header(b.clone());
    let _ = query::decode_peers(b.clone());
    let _ = query::decode_kick(b.clone());
    let _ = query::decode_usage(b);
}
