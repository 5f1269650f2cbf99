//! NATS subjects for channels (protocol §9): `{prefix}.p.{app}.{segment}.{segment}…`, one
//! token per `/`-separated segment of the channel name.
//!
//! A NATS subject token may not contain `.`, `*`, `>` or whitespace, so every token is
//! encoded: a segment made only of `[A-Za-z0-9_-]` (and not empty) is kept as it is;
//! anything else becomes `~` followed by the lowercase hex of its bytes (`~` alone for an
//! empty segment). `~` never appears in a kept token, so the encoding is injective: no two
//! channel names share a subject, and no name can produce a `.`, a wildcard or another
//! app's prefix. The same applies to the app id. Keeping one token per segment leaves room
//! for mapping pattern subscriptions onto NATS wildcards later.

use std::fmt::Write;

/// Appends the token for `segment` to `out`.
fn push_token(out: &mut String, segment: &str) {
    let plain = !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        out.push_str(segment);
    } else {
        out.push('~');
        for b in segment.bytes() {
            let _ = write!(out, "{b:02x}");
        }
    }
}

/// `{prefix}.{kind}.{app token}`, with room for `more` bytes after it.
fn head(prefix: &str, kind: &str, app: &str, more: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + kind.len() + 2 + app.len() * 2 + more);
    s.push_str(prefix);
    s.push('.');
    s.push_str(kind);
    s.push('.');
    push_token(&mut s, app);
    s
}

/// The subject a publication on `channel` of app `app` travels on.
pub fn channel_subject(prefix: &str, app: &str, channel: &str) -> String {
    let mut s = head(prefix, "p", app, channel.len() * 2);
    for seg in channel.split('/') {
        s.push('.');
        push_token(&mut s, seg);
    }
    s
}

/// The subject a pattern subscription (protocol §8.3) listens on: the channel subject of
/// its literal leading segments (those without `*` or `\\`), then `>` (NATS: one or more
/// tokens); a pattern without any wildcard is the channel itself. Wider than the pattern
/// (`agents/*/status` listens on `agents.>`): the shards' pattern matching picks the
/// subscribers, and the link drops the copies a message gets when several of the node's
/// subscriptions match it.
pub fn pattern_subject(prefix: &str, app: &str, pattern: &str) -> String {
    if !pattern.contains(['*', '\\']) {
        return channel_subject(prefix, app, pattern);
    }
    let mut s = head(prefix, "p", app, pattern.len() * 2 + 2);
    for seg in pattern.split('/') {
        if seg.contains(['*', '\\']) {
            break;
        }
        s.push('.');
        push_token(&mut s, seg);
    }
    s.push_str(".>");
    s
}

/// The subject a direct message to `peer` of app `app` travels on: `{prefix}.d.{app}.{peer}`
/// (the peer id as one token, encoded like a segment).
pub fn peer_subject(prefix: &str, app: &str, peer: &str) -> String {
    let mut s = head(prefix, "d", app, peer.len() * 2 + 1);
    s.push('.');
    push_token(&mut s, peer);
    s
}

/// The subject of this node's answers inbox: `{prefix}.r.{node}` (node ids are tokens).
pub fn inbox_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.r.{node}")
}

/// The NATS queue group name of queue group `group` of app `app` (protocol §8.2 across
/// nodes): `{app token}.{group token}`, encoded like channel segments, so no two groups (or
/// apps) share a queue.
pub fn queue_name(app: &str, group: &str) -> String {
    let mut s = String::with_capacity(app.len() * 2 + group.len() * 2 + 1);
    push_token(&mut s, app);
    s.push('.');
    push_token(&mut s, group);
    s
}

/// The subject every node's heartbeats and resynchronisation requests travel on:
/// `{prefix}.n` (every node subscribes).
pub fn nodes_subject(prefix: &str) -> String {
    format!("{prefix}.n")
}

/// The subject of node `origin`'s request traffic (replies, frames for its responders,
/// responders gone): `{prefix}.rpc.{origin in 16 hex digits}`.
pub fn rpc_subject(prefix: &str, origin: u64) -> String {
    format!("{prefix}.rpc.{origin:016x}")
}

/// True when `prefix` is usable as a subject prefix: dot-separated tokens of
/// `[A-Za-z0-9_-]` (no wildcard, no empty token).
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn valid_subject(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && t.bytes()
                    .all(|b| b > b' ' && b < 0x7f && b != b'*' && b != b'>')
        })
    }

    #[test]
    fn plain_segments_are_kept_and_the_rest_is_hex() {
        assert_eq!(
            channel_subject("rc", "app", "agents/a-1/status"),
            "rc.p.app.agents.a-1.status"
        );
        assert_eq!(channel_subject("rc", "app", "a.b"), "rc.p.app.~612e62");
        assert_eq!(channel_subject("rc", "app", "x//y"), "rc.p.app.x.~.y");
        assert_eq!(
            channel_subject("rc", "my app", "*"),
            "rc.p.~6d7920617070.~2a"
        );
        assert_eq!(channel_subject("rc", "a", "~61"), "rc.p.a.~7e3631");
    }

    #[test]
    fn no_two_names_share_a_subject_and_every_subject_is_valid() {
        let apps = ["a", "a.b", "~61", "", "b"];
        let channels = [
            "a", "a/b", "a.b", "a/b/", "/a", "a//b", "~61", "61", "~", "a b", ">", "*", "a/*", "é",
            "a-b", "a_b", "A", "a/~", "~/a", "..", "/", "//",
        ];
        let mut seen = HashMap::new();
        for app in apps {
            for ch in channels {
                let s = channel_subject("ringcast.x", app, ch);
                assert!(valid_subject(&s), "{s}");
                if let Some(prev) = seen.insert(s.clone(), (app, ch)) {
                    panic!("{s}: {prev:?} and {:?}", (app, ch));
                }
            }
        }
    }

    #[test]
    fn patterns_listen_on_their_literal_head() {
        assert_eq!(
            pattern_subject("rc", "a", "agents/*/status"),
            "rc.p.a.agents.>"
        );
        assert_eq!(pattern_subject("rc", "a", "agents/**"), "rc.p.a.agents.>");
        assert_eq!(pattern_subject("rc", "a", "a.b/x*"), "rc.p.a.~612e62.>");
        assert_eq!(pattern_subject("rc", "a", "**"), "rc.p.a.>");
        assert_eq!(pattern_subject("rc", "a", "x\\*y/z"), "rc.p.a.>");
        assert_eq!(
            pattern_subject("rc", "a", "plain/name"),
            channel_subject("rc", "a", "plain/name")
        );
    }

    #[test]
    fn peers_are_one_token() {
        assert_eq!(peer_subject("rc", "app", "agent-1"), "rc.d.app.agent-1");
        assert_eq!(peer_subject("rc", "app", "a.b/c"), "rc.d.app.~612e622f63");
        assert_ne!(
            peer_subject("rc", "a", "b"),
            channel_subject("rc", "a", "b")
        );
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("ringcast") && valid_prefix("rc.prod-1"));
        assert!(
            !valid_prefix("")
                && !valid_prefix("a..b")
                && !valid_prefix("a.*")
                && !valid_prefix("a b")
        );
    }
}
