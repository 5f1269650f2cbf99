//! `publish`: encodes the message once ([`Publication::new`]) and fans it out
//! ([`fanout::publish`]): this shard's subscribers get it at once, every other shard gets
//! the same `Arc` through the mesh. Refused with `rate_limited` (nothing sent anywhere)
//! when a destination shard's queue is over `max_cross_shard_bytes`.
//!
//! [ext] On a history channel (protocol §8.1) the publication goes to the channel's owner
//! shard instead (`ShardMsg::HistoryPublish`), which numbers it, retains it and fans it
//! out; the owner also answers the ack (with the offset) or the refusal.

use std::sync::Arc;

use bytes::Bytes;

use super::{ack, authorize, count_message, refuse_overloaded, reply_error};
use crate::{
    auth::Actions,
    router::{
        fanout, mesh::Source, owner_of, HistoryPublish, Publication, PublishAnswer, ShardMsg,
    },
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(
    shard: &Shard,
    conn: &mut Conn,
    channel: &str,
    data: &[u8],
    request_id: Option<&str>,
) {
    // Test-only fault hook (cargo feature `fault-injection`, never in release builds
    // shipped): lets tests/test_hostile.py prove a handler panic is isolated.
    #[cfg(feature = "fault-injection")]
    if data == b"\"__ringcast_panic__\"" {
        panic!("fault injection: __ringcast_panic__");
    }
    if let Err((code, why)) = authorize(conn, channel, Actions::PUBLISH) {
        reply_error(conn, code, request_id, why);
        return;
    }
    let id = &conn.identity;
    let mesh = &shard.broker.mesh;
    // Per publication, not per subscriber: an app without history rules pays one length
    // check; with rules, a glob match per rule until one matches.
    if let Some(rule) = shard.broker.auth.history_rule(id.app, channel) {
        let owner = owner_of(id.app, channel, shard.shards());
        if owner == shard.id && shard.local_is_empty() {
            // This shard sequences the channel and nothing is queued ahead: sequence it now.
            count_message(shard, id.app, |c| &c.publications);
            return shard.sequence_parts(
                id.app,
                &Arc::from(channel),
                rule,
                &id.peer_id,
                data,
                id.peer_metadata_json.as_ref(),
                Some(shard.conn_ref(conn.id)),
                PublishAnswer::Conn {
                    request_id: request_id.map(Into::into),
                },
            );
        }
        if owner != shard.id && !mesh.has_room(owner) {
            return refuse_overloaded(shard, conn, request_id);
        }
        // One copy of `data` per publication: it travels to the owner, which encodes it.
        let msg = HistoryPublish {
            app: id.app,
            channel: Arc::from(channel),
            rule,
            from: id.peer_id.clone(),
            data: Bytes::copy_from_slice(data),
            metadata: id.peer_metadata_json.clone(),
            origin: Some(shard.conn_ref(conn.id)),
            answer: PublishAnswer::Conn {
                request_id: request_id.map(Into::into),
            },
        };
        count_message(shard, id.app, |c| &c.publications);
        shard.route(owner, ShardMsg::HistoryPublish(Box::new(msg)));
        return;
    }
    // Encoded once per publication (twice when the publisher has metadata: with and
    // without `fromMetadata`); every subscriber on every shard gets these bytes.
    let published = fanout::publish(
        mesh,
        Source::Shard(shard.id),
        || {
            Publication::new(
                id.app,
                channel,
                &id.peer_id,
                data,
                id.peer_metadata_json.as_deref(),
                Some(shard.conn_ref(conn.id)),
            )
        },
        |p| shard.deliver_publication(p),
        |s| mesh.wake(s),
    );
    match published {
        Ok(p) => {
            // [ext] To the other nodes (protocol §9): one queue push to the cluster link.
            if let Some(link) = &shard.broker.cluster {
                link.publish(&p);
            }
            count_message(shard, id.app, |c| &c.publications);
            ack(conn, request_id);
        }
        Err(fanout::Busy) => refuse_overloaded(shard, conn, request_id),
    }
}
