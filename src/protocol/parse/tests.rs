//! Unit tests of [`super`]: commands, errors, allocation, and the strict scanner as the
//! parser uses it.

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
            include_sender_metadata: false,
            since: None
        }
    );
    assert_eq!(
        parse(
            r#"{"type":"subscribe","channel":"a","requestId":"r1","includeSenderMetadata":true}"#
        )
        .unwrap(),
        ClientMsg::Subscribe {
            channel: "a",
            request_id: Some("r1"),
            include_sender_metadata: true,
            since: None
        }
    );
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"a","includeSenderMetadata":false}"#).unwrap(),
        ClientMsg::Subscribe {
            channel: "a",
            request_id: None,
            include_sender_metadata: false,
            since: None
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
        parse(r#"{"type":"publish","channel":"c","data":{"k":[1,2]},"requestId":"7"}"#).unwrap(),
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
        parse(r#"{"type":"unsubscribe","x":{"y":[1,"}"]},"channel":"a\"b\\c\u00e9\n","z":null}"#)
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

#[test]
fn pattern_extension() {
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"x/*","pattern":true,"requestId":"r"}"#).unwrap(),
        ClientMsg::SubscribePattern {
            channel: "x/*",
            request_id: Some("r"),
            include_sender_metadata: false
        }
    );
    assert_eq!(
        parse(
            r#"{"type":"subscribe","channel":"x/**","pattern":true,"includeSenderMetadata":true}"#
        )
        .unwrap(),
        ClientMsg::SubscribePattern {
            channel: "x/**",
            request_id: None,
            include_sender_metadata: true
        }
    );
    // `pattern: false` is a plain subscribe.
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"x/*","pattern":false}"#).unwrap(),
        ClientMsg::Subscribe {
            channel: "x/*",
            request_id: None,
            include_sender_metadata: false,
            since: None
        }
    );
    assert_eq!(
        parse(r#"{"type":"unsubscribe","channel":"x/*","pattern":true}"#).unwrap(),
        ClientMsg::UnsubscribePattern {
            channel: "x/*",
            request_id: None
        }
    );
    assert_eq!(
        parse(r#"{"type":"unsubscribe","channel":"x/*","pattern":false}"#).unwrap(),
        ClientMsg::Unsubscribe {
            channel: "x/*",
            request_id: None
        }
    );
    let m =
        parse(r#"{"type":"unsubscribe","channel":"x","pattern":true,"requestId":"q"}"#).unwrap();
    assert_eq!((m.type_str(), m.request_id()), ("unsubscribe", Some("q")));
    for bad in [
        r#"{"type":"subscribe","channel":"x/*","pattern":1,"requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"x/*","pattern":null,"requestId":"r"}"#,
        r#"{"type":"unsubscribe","channel":"x/*","pattern":"true","requestId":"r"}"#,
    ] {
        let e = parse(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedMessage, "{bad}");
        assert_eq!(e.request_id.as_deref(), Some("r"));
    }
    // Elsewhere `pattern` is an unknown field, ignored.
    assert!(matches!(
        parse(r#"{"type":"publish","channel":"c","data":1,"pattern":7}"#).unwrap(),
        ClientMsg::Publish { .. }
    ));
}

#[test]
fn since_and_history_extension_fields() {
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"a","since":{"offset":7,"epoch":"e1"}}"#).unwrap(),
        ClientMsg::Subscribe {
            channel: "a",
            request_id: None,
            include_sender_metadata: false,
            since: Some(Since {
                epoch: "e1",
                offset: 7
            })
        }
    );
    for bad in [
        r#""x""#,
        r#"{}"#,
        r#"{"epoch":"e"}"#,
        r#"{"epoch":"e","offset":-1}"#,
        r#"{"epoch":"e","offset":1.5}"#,
        r#"{"epoch":"e","offset":"1"}"#,
        r#"{"epoch":"","offset":1}"#,
        r#"{"epoch":1,"offset":1}"#,
        r#"{"epoch":"e","offset":1,"x":1}"#,
        r#"{"epoch":"e","offset":99999999999999999999999}"#,
    ] {
        let e = parse(&format!(
            r#"{{"type":"subscribe","channel":"a","requestId":"r","since":{bad}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
        assert_eq!(e.request_id.as_deref(), Some("r"));
    }
    let long = "e".repeat(65);
    let e = parse(&format!(
        r#"{{"type":"subscribe","channel":"a","since":{{"epoch":"{long}","offset":1}}}}"#
    ))
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    let e = parse(
        r#"{"type":"subscribe","channel":"a","pattern":true,"since":{"epoch":"e","offset":1}}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);

    assert_eq!(
        parse(r#"{"type":"history","channel":"h","requestId":"r"}"#).unwrap(),
        ClientMsg::History {
            channel: "h",
            request_id: "r",
            since_offset: None,
            limit: 100
        }
    );
    assert_eq!(
        parse(r#"{"type":"history","channel":"h","requestId":"r","sinceOffset":0,"limit":1000}"#)
            .unwrap(),
        ClientMsg::History {
            channel: "h",
            request_id: "r",
            since_offset: Some(0),
            limit: 1000
        }
    );
    for bad in [
        r#""limit":0"#,
        r#""limit":1001"#,
        r#""limit":"5""#,
        r#""limit":2.0"#,
        r#""sinceOffset":-1"#,
        r#""sinceOffset":null"#,
    ] {
        let e = parse(&format!(
            r#"{{"type":"history","channel":"h","requestId":"r",{bad}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
    }
    let e = parse(r#"{"type":"history","channel":"h"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[test]
fn group_extension() {
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"jobs","group":"w-1.x_Y","requestId":"r"}"#)
            .unwrap(),
        ClientMsg::SubscribeGroup {
            channel: "jobs",
            request_id: Some("r"),
            include_sender_metadata: false,
            group: "w-1.x_Y",
        }
    );
    assert_eq!(
        parse(r#"{"type":"subscribe","channel":"jobs","group":"g","pattern":false,"includeSenderMetadata":true}"#)
            .unwrap(),
        ClientMsg::SubscribeGroup {
            channel: "jobs",
            request_id: None,
            include_sender_metadata: true,
            group: "g",
        }
    );
    let long = format!(
        r#"{{"type":"subscribe","channel":"c","group":"{}","requestId":"r"}}"#,
        "x".repeat(65)
    );
    let ok64 = format!(
        r#"{{"type":"subscribe","channel":"c","group":"{}"}}"#,
        "x".repeat(64)
    );
    assert!(matches!(parse(&ok64), Ok(ClientMsg::SubscribeGroup { .. })));
    for bad in [
        r#"{"type":"subscribe","channel":"c","group":"","requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":"a b","requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":"a/b","requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":"\u00e9","requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":7,"requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":null,"requestId":"r"}"#,
        r#"{"type":"subscribe","channel":"c","group":["g"],"requestId":"r"}"#,
        long.as_str(),
    ] {
        let e = parse(bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidGroup, "{bad}");
        assert_eq!(e.request_id.as_deref(), Some("r"), "{bad}");
    }
    let e =
        parse(r#"{"type":"subscribe","channel":"c/*","group":"g","pattern":true,"requestId":"r"}"#)
            .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    // Elsewhere `group` is an unknown field, ignored.
    assert!(matches!(
        parse(r#"{"type":"unsubscribe","channel":"c","group":7}"#),
        Ok(ClientMsg::Unsubscribe { .. })
    ));
    assert!(valid_group("A-z_0.9") && !valid_group("é") && !valid_group(""));
}
