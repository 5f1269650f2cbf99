//! Questions a node asks every other node (protocol §9: REST peers, kick and usage answer for
//! the whole cluster). A question (`Q`) goes on `{prefix}.n` with a reply subject in the
//! asker's inbox; every node answers (`A`) with what it has, even when that is nothing, and
//! the asker gathers one answer per node it knows alive, or what came within
//! [`QUERY_TIMEOUT`]. The REST handler merges them with its own node's answer.
//!
//! Bodies (big-endian): a question is one byte (`p` peers of the channel named, `k` kick the
//! peer named, `u` usage of the app); a peers answer is a member list
//! ([`super::wire::encode_members`]), a kick answer one `u64` (connections closed), a usage
//! answer five `u64`s (connections now, peak, messages, deliveries, REST publishes).

use std::{sync::Arc, time::Duration};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{wire, Member};
use crate::{
    auth::AppId,
    shard::{query::Usage, Broker},
};

/// How long the asker waits for the other nodes' answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// A question for every node.
#[derive(Debug, Clone)]
pub enum Query {
    /// The members of a channel on each node.
    Peers(AppId, Arc<str>),
    /// Close each node's connections of a peer.
    Kick(AppId, Arc<str>),
    /// Each node's usage of an app.
    Usage(AppId),
}

impl Query {
    /// The app, the name the question is about, and its opcode.
    pub(crate) fn parts(&self) -> (AppId, &str, u8) {
        match self {
            Query::Peers(app, ch) => (*app, ch, b'p'),
            Query::Kick(app, peer) => (*app, peer, b'k'),
            Query::Usage(app) => (*app, "", b'u'),
        }
    }
}

/// What the other nodes answered.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Nodes asked (those alive when the question left).
    pub asked: usize,
    /// One body per node that answered in time.
    pub answers: Vec<Bytes>,
}

/// This node's answer to opcode `op` about `name` of `app`; `None` when a shard did not
/// answer in time (then this node does not answer, and the asker counts it missing).
pub(crate) async fn answer(broker: &Broker, app: AppId, op: u8, name: &str) -> Option<Bytes> {
    match op {
        b'p' => {
            let roster = broker.roster(app, &Arc::from(name)).await?;
            Some(wire::encode_members(0, 0, &roster))
        }
        b'k' => {
            let closed = broker.kick(app, &Arc::from(name)).await?;
            Some(Bytes::copy_from_slice(&closed.to_be_bytes()))
        }
        b'u' => Some(encode_usage(&broker.usage(app))),
        _ => None,
    }
}

fn encode_usage(u: &Usage) -> Bytes {
    let mut b = BytesMut::with_capacity(40);
    for v in [
        u.concurrent,
        u.peak,
        u.messages,
        u.deliveries,
        u.rest_publishes,
    ] {
        b.put_u64(v);
    }
    b.freeze()
}

/// A peers answer.
pub fn decode_peers(body: Bytes) -> Option<Vec<Member>> {
    wire::decode_members(body).map(|m| m.members)
}

/// A kick answer.
pub fn decode_kick(mut body: Bytes) -> Option<u64> {
    (body.len() == 8).then(|| body.get_u64())
}

/// A usage answer.
pub fn decode_usage(mut body: Bytes) -> Option<Usage> {
    if body.len() != 40 {
        return None;
    }
    let mut v = [0u64; 5];
    for x in &mut v {
        *x = body.get_u64();
    }
    Some(Usage {
        concurrent: v[0],
        peak: v[1],
        messages: v[2],
        deliveries: v[3],
        rest_publishes: v[4],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_refuse_wrong_sizes() {
        let u = Usage {
            concurrent: 1,
            peak: 2,
            messages: 3,
            deliveries: 4,
            rest_publishes: 5,
        };
        assert_eq!(decode_usage(encode_usage(&u)), Some(u));
        assert_eq!(decode_usage(Bytes::from_static(&[0; 39])), None);
        assert_eq!(
            decode_kick(Bytes::copy_from_slice(&7u64.to_be_bytes())),
            Some(7)
        );
        assert_eq!(decode_kick(Bytes::from_static(&[0; 9])), None);
        let members: Vec<Member> = vec![(Arc::from("a"), None)];
        assert_eq!(
            decode_peers(wire::encode_members(0, 0, &members)),
            Some(members)
        );
    }
}
