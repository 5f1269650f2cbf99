//! The client commands, mini-redis style: one file per command, each with an `apply` that
//! checks, acts and answers, and one dispatch point ([`handle`]): parse → charge the rate
//! limit → match arm → the command's `apply`. Adding a command is one new file and one
//! match arm.
//!
//! Every command but `ping` is charged to the connection's token bucket before it runs
//! (malformed input too: it cost a parse); `ping` is charged to the ping budget instead,
//! so heartbeats never eat the publish budget. Errors answer `error` frames; only a
//! rate-limit or ping-budget close stops the connection's input.
//!
//! [`handle`] runs the command behind a panic barrier: a bug that panics while handling
//! one connection's message closes that connection with 1011 and leaves the shard and its
//! other connections running.

mod cancel;
mod group;
mod history;
mod pattern;
mod ping;
mod publish;
mod reply;
mod request;
mod send;
mod subscribe;
mod unsubscribe;

use std::{sync::atomic::AtomicU64, time::Instant};

pub(crate) use ping::take_ping;

use super::{conn::Conn, Shard};
use crate::{
    auth::{Actions, AppId},
    config::RateLimitAction,
    metrics::ShardCounters,
    protocol::{close, encode, parse::validate_channel, parse::ClientMsg, ErrorCode},
};

/// Whether the connection's remaining input is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Go on with the next message.
    Continue,
    /// A close is queued (state `Closing`): the following messages are ignored.
    Stop,
}

/// Handles one text message behind a panic barrier: a panic closes this connection with
/// 1011 (RefCell borrows are released by the unwind; the connection's normal teardown then
/// removes its subscriptions).
pub(crate) fn handle(shard: &Shard, conn: &mut Conn, text: &[u8]) -> Flow {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(shard, conn, text))) {
        Ok(flow) => flow,
        Err(_) => {
            tracing::error!(conn = ?conn.id, "panic while handling a message; closing 1011");
            conn.handle
                .close(close::INTERNAL_ERROR, "internal error", false);
            Flow::Stop
        }
    }
}

/// Parses one text message, charges it and runs its command.
fn dispatch(shard: &Shard, conn: &mut Conn, text: &[u8]) -> Flow {
    let action = shard.broker.limits.rate_limit_action;
    let mut parser = shard.parser.borrow_mut();
    let msg = match parser.parse(text) {
        Ok(m) => m,
        Err(e) => {
            // Malformed input is charged to the bucket too: it cost a parse.
            if let Some(flow) = charge(shard, action, conn, e.request_id.as_deref()) {
                return flow;
            }
            conn.handle.send(&encode::error(
                e.code,
                e.request_id.as_deref(),
                Some(e.message),
            ));
            return Flow::Continue;
        }
    };
    if let ClientMsg::Ping { request_id } = msg {
        return ping::apply(shard, conn, request_id);
    }
    if let Some(flow) = charge(shard, action, conn, msg.request_id()) {
        return flow;
    }
    match msg {
        ClientMsg::Ping { .. } => {} // handled above, uncharged
        ClientMsg::Subscribe {
            channel,
            request_id,
            include_sender_metadata,
            since,
        } => subscribe::apply(
            shard,
            conn,
            channel,
            include_sender_metadata,
            since,
            request_id,
        ),
        ClientMsg::History {
            channel,
            request_id,
            since_offset,
            limit,
        } => history::apply(shard, conn, channel, request_id, since_offset, limit),
        ClientMsg::Request {
            to,
            request_id,
            data,
            timeout_ms,
        } => request::apply(shard, conn, to, request_id, data, timeout_ms),
        ClientMsg::Reply {
            reply_to,
            data,
            last,
            request_id,
        } => reply::apply(shard, conn, reply_to, data, last, request_id),
        ClientMsg::Cancel { request_id } => cancel::apply(shard, conn, request_id),
        ClientMsg::Unsubscribe {
            channel,
            request_id,
        } => unsubscribe::apply(shard, conn, channel, request_id),
        ClientMsg::SubscribePattern {
            channel,
            request_id,
            include_sender_metadata,
        } => pattern::subscribe(shard, conn, channel, include_sender_metadata, request_id),
        ClientMsg::SubscribeGroup {
            channel,
            request_id,
            include_sender_metadata,
            group,
        } => group::subscribe(
            shard,
            conn,
            channel,
            include_sender_metadata,
            group,
            request_id,
        ),
        ClientMsg::UnsubscribePattern {
            channel,
            request_id,
        } => pattern::unsubscribe(shard, conn, channel, request_id),
        ClientMsg::Publish {
            channel,
            data,
            request_id,
        } => publish::apply(shard, conn, channel, data, request_id),
        ClientMsg::Send {
            to,
            data,
            request_id,
        } => send::apply(shard, conn, to, data, request_id),
    }
    Flow::Continue
}

/// Charges one message to the connection's token bucket. `None`: within the budget, run
/// the command. Over it, with action `error`: answered `rate_limited` and dropped
/// (`Some(Continue)`); with action `close`: a 4011 close is queued (`Some(Stop)`).
fn charge(
    shard: &Shard,
    action: RateLimitAction,
    conn: &mut Conn,
    request_id: Option<&str>,
) -> Option<Flow> {
    if conn.bucket.try_take(Instant::now()) {
        return None;
    }
    match action {
        RateLimitAction::Close => {
            conn.handle
                .close(close::RATE_LIMITED, "rate limit exceeded", false);
            Some(Flow::Stop)
        }
        RateLimitAction::Error => {
            reply_error(
                conn,
                ErrorCode::RateLimited,
                request_id,
                "rate limit exceeded; message dropped",
            );
            ShardCounters::add(&shard.counters().rate_limited_errors, 1);
            Some(Flow::Continue)
        }
    }
}

/// The checks every channel command makes, in order: a valid name, the action, the scope.
fn authorize(conn: &Conn, channel: &str, action: Actions) -> Result<(), (ErrorCode, &'static str)> {
    let id = &conn.identity;
    validate_channel(channel).map_err(|code| (code, "invalid channel name"))?;
    if !id.actions.contains(action) {
        return Err((
            ErrorCode::ActionNotPermitted,
            "action not permitted by the token",
        ));
    }
    if !id.scope.allows(channel) {
        return Err((ErrorCode::ChannelNotAuthorized, "channel not authorized"));
    }
    Ok(())
}

/// Answers an `error` frame.
fn reply_error(conn: &Conn, code: ErrorCode, request_id: Option<&str>, message: &str) {
    conn.handle
        .send(&encode::error(code, request_id, Some(message)));
}

/// Answers an `ack` frame when the command carried a request id.
fn ack(conn: &Conn, request_id: Option<&str>) {
    if let Some(r) = request_id {
        conn.handle.send(&encode::ack(r));
    }
}

/// Refuses a publication or direct message because a destination shard's queue is over
/// `max_cross_shard_bytes`: nothing was delivered anywhere; the client may retry.
fn refuse_overloaded(shard: &Shard, conn: &Conn, request_id: Option<&str>) {
    ShardCounters::add(&shard.counters().cross_shard_refusals, 1);
    conn.handle.send(&refused_frame(request_id));
}

/// The `rate_limited` error of a publication or direct message refused because a shard's
/// queue is full (also sent by a history channel's owner, `shard/history.rs`).
pub(crate) fn refused_frame(request_id: Option<&str>) -> bytes::Bytes {
    encode::error(
        ErrorCode::RateLimited,
        request_id,
        Some("the broker is busy (a shard's queue is full); retry later"),
    )
}

/// Counts one accepted publication or direct message, overall and for the app's usage.
fn count_message(shard: &Shard, app: AppId, kind: impl Fn(&ShardCounters) -> &AtomicU64) {
    let c = shard.counters();
    ShardCounters::add(kind(c), 1);
    if let Some(a) = c.app_messages.get(app.0 as usize) {
        ShardCounters::add(a, 1);
    }
}
