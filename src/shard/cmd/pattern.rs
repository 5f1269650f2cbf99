//! [ext] Wildcard subscriptions (protocol.md §8.3): `subscribe` and `unsubscribe` with
//! `"pattern": true`. The pattern goes into the shard's pattern trie
//! (`router/patterns.rs`), which `deliver.rs` consults for every publication while the
//! shard has any. No presence: no owner shard is told, no snapshot is sent, and the
//! subscriber is never announced.
//!
//! Checks, in order: the text is a valid channel name (1–256 bytes, no control
//! characters: `invalid_channel`; a reserved prefix: `channel_reserved`) and a valid glob
//! (`invalid_channel`); the `subscribe` action (`action_not_permitted`); every channel the
//! pattern can match is in the connection's scope (`channel_not_authorized`); the
//! channels-per-connection limit, counting exact channels and patterns together
//! (`channel_limit_exceeded`). Re-subscribing the same pattern text only updates
//! `includeSenderMetadata`.

use super::{ack, reply_error};
use crate::{
    auth::{glob::Pattern, Actions},
    protocol::{parse::validate_channel, ErrorCode},
    router::patterns::Member,
    shard::{conn::Conn, Shard},
};

/// Parses and validates a pattern's text (the first two checks of the module docs).
fn parse(src: &str) -> Result<Pattern, (ErrorCode, &'static str)> {
    validate_channel(src).map_err(|code| (code, "invalid channel pattern"))?;
    Pattern::parse(src).map_err(|_| (ErrorCode::InvalidChannel, "invalid channel pattern"))
}

pub(super) fn subscribe(
    shard: &Shard,
    conn: &mut Conn,
    src: &str,
    include_sender_metadata: bool,
    request_id: Option<&str>,
) {
    let pattern = match parse(src) {
        Ok(p) => p,
        Err((code, why)) => return reply_error(conn, code, request_id, why),
    };
    let id = &conn.identity;
    if !id.actions.contains(Actions::SUBSCRIBE) {
        return reply_error(
            conn,
            ErrorCode::ActionNotPermitted,
            request_id,
            "action not permitted by the token",
        );
    }
    if !id.scope.allows_pattern(&pattern) {
        return reply_error(
            conn,
            ErrorCode::ChannelNotAuthorized,
            request_id,
            "pattern not inside the channel scope",
        );
    }
    let existing = conn.patterns().iter().any(|p| &**p == src);
    if !existing
        && conn.channels.len() + conn.patterns().len() >= shard.broker.limits.max_channels_per_conn
    {
        return reply_error(
            conn,
            ErrorCode::ChannelLimitExceeded,
            request_id,
            "too many channels on this connection",
        );
    }
    let member = Member {
        conn: conn.id,
        include_meta: include_sender_metadata,
        handle: conn.handle.clone(),
    };
    match shard.subscribe_pattern(id.app, src, member) {
        Ok(new) => {
            if new {
                conn.patterns_mut().push(src.into());
            }
            ack(conn, request_id);
        }
        Err(e) => {
            tracing::error!(conn = ?conn.id, error = %e, "pattern subscription refused");
            reply_error(
                conn,
                ErrorCode::InternalError,
                request_id,
                "pattern subscription failed",
            );
        }
    }
}

/// Removes the pattern if the connection has it; acknowledged either way (idempotent).
pub(super) fn unsubscribe(shard: &Shard, conn: &mut Conn, src: &str, request_id: Option<&str>) {
    if let Err((code, why)) = parse(src) {
        return reply_error(conn, code, request_id, why);
    }
    if let Some(pos) = conn.patterns().iter().position(|p| &**p == src) {
        let p = conn.patterns_mut().swap_remove(pos);
        shard.unsubscribe_pattern(conn.identity.app, &p, conn.id);
    }
    ack(conn, request_id);
}
