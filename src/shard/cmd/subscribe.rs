//! `subscribe`: adds the connection to a channel's local subscribers and tells the
//! channel's owner shard, which sends the roster snapshot and announces the peer. A
//! subscribe to a channel the connection already has only changes
//! `includeSenderMetadata` and asks for a fresh snapshot.
//!
//! [ext] On a history channel (protocol §8.1) the owner also answers the ack (it alone
//! knows the epoch and the last offset) and, with `since`, the replay; the subscription
//! takes no live publication until that answer arrives (`Sub::awaiting`). `since` on a
//! channel without history is `history_not_enabled`.

use std::{rc::Rc, sync::Arc};

use super::{ack, authorize, reply_error};
use crate::{
    auth::{keys::HistoryRule, Actions},
    history::Since as Resume,
    protocol::{parse::Since, ErrorCode},
    router::{
        index::{PresenceState, Sub},
        HistoryJoin,
    },
    shard::{conn::Conn, handle::ConnHandle, Shard},
};

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    channel: &str,
    include_sender_metadata: bool,
    since: Option<Since<'_>>,
    request_id: Option<&str>,
) {
    if let Err((code, why)) = authorize(conn, channel, Actions::SUBSCRIBE) {
        reply_error(conn, code, request_id, why);
        return;
    }
    let id = &conn.identity;
    let rule = shard.broker.auth.history_rule(id.app, channel);
    if since.is_some() && rule.is_none() {
        reply_error(
            conn,
            ErrorCode::HistoryNotEnabled,
            request_id,
            "this channel has no history",
        );
        return;
    }
    let since = since.map(|s| Resume {
        epoch: s.epoch.into(),
        offset: s.offset,
    });
    let history = rule.map(|rule| history_join(rule, since, request_id, include_sender_metadata));
    let existing = conn.channels.iter().find(|c| &***c == channel).cloned();
    if let Some(ch) = existing {
        if shard.group_of(conn.id, channel).is_some() {
            // [ext] A queue-group member (protocol §8.2): one subscription per channel.
            return reply_error(
                conn,
                ErrorCode::SubscriptionConflict,
                request_id,
                "the connection is in a queue group on this channel",
            );
        }
        let answered_by_owner = history.is_some();
        shard.resubscribe(
            id.app,
            ch,
            conn.id,
            &id.peer_id,
            include_sender_metadata,
            history,
        );
        if !answered_by_owner {
            ack(conn, request_id);
        }
        return;
    }
    // Pattern subscriptions (protocol §8.3) count toward the same limit.
    if conn.channels.len() + conn.patterns().len() >= shard.broker.limits.max_channels_per_conn {
        reply_error(
            conn,
            ErrorCode::ChannelLimitExceeded,
            request_id,
            "too many channels on this connection",
        );
        return;
    }
    let ch: Arc<str> = Arc::from(channel);
    let answered_by_owner = history.is_some();
    let sub = new_sub(conn, include_sender_metadata, answered_by_owner, false);
    shard.subscribe(
        id.app,
        ch.clone(),
        sub,
        id.peer_metadata_json.clone(),
        history,
    );
    conn.channels.push(ch);
    if !answered_by_owner {
        ack(conn, request_id);
    }
}

/// [ext] What a history channel's owner needs to answer a subscribe (§8.1).
pub(super) fn history_join(
    rule: HistoryRule,
    since: Option<Resume>,
    request_id: Option<&str>,
    include_meta: bool,
) -> Box<HistoryJoin> {
    Box::new(HistoryJoin {
        rule,
        since,
        request_id: request_id.map(Into::into),
        include_meta,
    })
}

/// A new subscription of `conn` for the index: waiting for its presence snapshot when the
/// connection may see presence; `awaiting` its history answer; `grouped` for a queue-group
/// member (§8.2).
pub(super) fn new_sub(
    conn: &Conn,
    include_meta: bool,
    awaiting: bool,
    grouped: bool,
) -> Sub<Rc<ConnHandle>> {
    let id = &conn.identity;
    Sub {
        conn: conn.id,
        peer: id.peer_id.clone(),
        include_meta,
        presence: if id.actions.contains(Actions::PRESENCE) {
            PresenceState::Pending
        } else {
            PresenceState::NoPermission
        },
        awaiting,
        grouped,
        handle: conn.handle.clone(),
    }
}
