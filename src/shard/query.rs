//! Questions about this node that its shards answer together: a channel's roster, closing a
//! peer's connections, an app's usage. Asked by the REST thread and, in a cluster (protocol
//! §9), by the link on behalf of another node; both wait on oneshot answers, off the shards.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::Broker;
use crate::{
    auth::AppId,
    cluster::Member,
    router::{mesh::Source, owner_of, ShardId, ShardMsg},
};

/// How long a question waits for a shard (a shard busy for that long is overloaded).
pub const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// An app's usage on this node (`GET /v1/usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Connections now.
    pub concurrent: u64,
    /// Most connections at once since start.
    pub peak: u64,
    /// Messages published (WebSocket and REST).
    pub messages: u64,
    /// Messages delivered.
    pub deliveries: u64,
    /// REST publishes.
    pub rest_publishes: u64,
}

impl Broker {
    /// The roster of `channel` as this node knows it (with the other nodes' members when it
    /// has subscribers there); `None` when the owner shard did not answer in time.
    pub async fn roster(&self, app: AppId, channel: &Arc<str>) -> Option<Vec<Member>> {
        let owner = owner_of(app, channel, self.mesh.shards());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.mesh.push(
            Source::External,
            owner,
            ShardMsg::PeersQuery {
                app,
                channel: channel.clone(),
                reply: tx,
            },
        );
        tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx)
            .await
            .ok()?
            .ok()
    }

    /// Closes every connection of `peer` on this node with 4020; how many, or `None` when a
    /// shard did not answer in time.
    pub async fn kick(&self, app: AppId, peer: &Arc<str>) -> Option<u64> {
        let mut replies = Vec::with_capacity(self.mesh.shards());
        for s in 0..self.mesh.shards() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.mesh.push(
                Source::External,
                ShardId(s as u16),
                ShardMsg::Kick {
                    app,
                    peer: peer.clone(),
                    reply: tx,
                },
            );
            replies.push(rx);
        }
        let deadline = tokio::time::Instant::now() + SHARD_REPLY_TIMEOUT;
        let mut closed = 0;
        for rx in replies {
            closed += u64::from(tokio::time::timeout_at(deadline, rx).await.ok()?.ok()?);
        }
        Some(closed)
    }

    /// `app`'s usage on this node.
    pub fn usage(&self, app: AppId) -> Usage {
        let i = app.0 as usize;
        let load = |v: &[std::sync::atomic::AtomicU32]| {
            v.get(i).map_or(0, |c| u64::from(c.load(Ordering::Relaxed)))
        };
        let u = self.metrics.app_usage(i);
        Usage {
            concurrent: load(&self.app_conns),
            peak: load(&self.app_peak),
            messages: u.messages,
            deliveries: u.deliveries,
            rest_publishes: u.rest_publishes,
        }
    }
}
