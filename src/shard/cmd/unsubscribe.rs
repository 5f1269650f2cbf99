//! `unsubscribe`: removes the connection from a channel ([`Shard::unsubscribe`], which
//! tells the channel's owner). Unsubscribing from a channel the connection does not have
//! is acknowledged all the same.

use super::{ack, reply_error};
use crate::{
    protocol::parse::validate_channel,
    shard::{conn::Conn, Shard},
};

pub(super) fn apply(shard: &Shard, conn: &mut Conn, channel: &str, request_id: Option<&str>) {
    if let Err(code) = validate_channel(channel) {
        reply_error(conn, code, request_id, "invalid channel name");
        return;
    }
    if let Some(pos) = conn.channels.iter().position(|c| &**c == channel) {
        let ch = conn.channels.swap_remove(pos);
        let id = &conn.identity;
        shard.unsubscribe(id.app, &ch, conn.id, &id.peer_id);
    }
    ack(conn, request_id);
}
