//! [ext] Frames of requests and replies (protocol.md §8.4).

use bytes::Bytes;

use super::{build, OP_TEXT};

/// Why a responder is told to stop working on a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// Another connection of the same peer replied first.
    Taken,
    /// The deadline passed.
    Timeout,
    /// The requester cancelled.
    Cancelled,
    /// The requester disconnected.
    RequesterGone,
}

impl CancelReason {
    /// The wire string (`[a-z_]` only).
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Taken => "taken",
            CancelReason::Timeout => "timeout",
            CancelReason::Cancelled => "cancelled",
            CancelReason::RequesterGone => "requester_gone",
        }
    }
}

/// What every connection of the target peer receives:
/// `{"type":"request","from":S,"replyTo":X,"data":D,"timeoutMs":T[,"fromMetadata":M]}`.
pub fn request(
    from: &str,
    reply_to: &str,
    data: &[u8],
    timeout_ms: u64,
    from_metadata: Option<&[u8]>,
) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"request","from":"#);
        s.str(from);
        s.raw(br#","replyTo":"#);
        s.str(reply_to);
        s.raw(br#","data":"#);
        s.raw(data);
        s.raw(br#","timeoutMs":"#);
        s.u64(timeout_ms);
        if let Some(m) = from_metadata {
            s.raw(br#","fromMetadata":"#);
            s.raw(m);
        }
        s.raw(b"}");
    })
}

/// What the requester receives for each reply:
/// `{"type":"reply","requestId":R,"from":P,"data":D,"final":B,"seq":N}`.
pub fn reply(request_id: &str, from: &str, data: &[u8], last: bool, seq: u32) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"reply","requestId":"#);
        s.str(request_id);
        s.raw(br#","from":"#);
        s.str(from);
        s.raw(br#","data":"#);
        s.raw(data);
        s.raw(if last {
            br#","final":true,"seq":"#
        } else {
            br#","final":false,"seq":"#
        });
        s.u64(u64::from(seq));
        s.raw(b"}");
    })
}

/// What a responder receives when it should stop:
/// `{"type":"cancel","replyTo":X,"reason":…}`.
pub fn cancel(reply_to: &str, reason: CancelReason) -> Bytes {
    build(OP_TEXT, |s| {
        s.raw(br#"{"type":"cancel","replyTo":"#);
        s.str(reply_to);
        s.raw(br#","reason":""#);
        s.raw(reason.as_str().as_bytes());
        s.raw(b"\"}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(f: &[u8]) -> Value {
        serde_json::from_slice(super::super::history::payload(f)).unwrap()
    }

    #[test]
    fn frames_are_the_documented_json() {
        assert_eq!(
            parse(&request("a\"", "0.1", b"[1]", 500, Some(br#"{"m":1}"#))),
            json!({"type":"request","from":"a\"","replyTo":"0.1","data":[1],"timeoutMs":500,"fromMetadata":{"m":1}})
        );
        assert_eq!(
            parse(&reply("r", "p", b"null", false, 3)),
            json!({"type":"reply","requestId":"r","from":"p","data":null,"final":false,"seq":3})
        );
        assert_eq!(
            parse(&cancel("0.1", CancelReason::RequesterGone)),
            json!({"type":"cancel","replyTo":"0.1","reason":"requester_gone"})
        );
    }
}
