//! [ext] The cluster link (protocol §9): several ringcast nodes as one broker over NATS.
//!
//! The link is its own thread (like the REST acceptor), running a current-thread tokio
//! runtime with one NATS connection ([`async_nats`]). It is outside the shards' hot path:
//! a shard hands it an `Arc<Publication>` with one bounded, non-blocking queue push, and
//! the link hands publications from other nodes to every shard through the mesh, as the
//! REST thread does ([`crate::router::mesh::Source::External`]).
//!
//! - [`subject`]: channel names as NATS subjects (encoded so that no name collides with
//!   another or escapes its app);
//! - [`wire`]: the bytes of a publication on NATS (the frames, encoded once cluster-wide);
//! - [`link`]: the thread: connection, interest, forwarding both ways, counters.
//!
//! Interest: a node subscribes on NATS to a channel's subject while it has at least one
//! subscriber on that channel. The channel's owner shard knows that (its presence roster
//! counts every subscription of every shard) and tells the link when a channel gains its
//! first subscriber and loses its last. A publication therefore crosses NATS once per
//! interested node, never once per subscriber, and a node receives only the channels it
//! has subscribers for.
//!
//! Decisions and what is not built yet are in docs/cluster.md.

pub mod link;
pub mod nodes;
pub mod query;
pub mod rpc;
pub mod subject;
pub mod wire;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    Arc,
};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    auth::AppId,
    router::{ConnRef, Direct, NodeConn, Publication},
};

/// `[cluster]` in the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server(s), comma-separated: `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// This node's name (default: `node-` and 8 random hex digits).
    pub node_id: Option<String>,
    /// First subject tokens of everything ringcast sends (default `ringcast`).
    pub subject_prefix: Option<String>,
    /// Publications and direct messages queued for NATS before the link drops and counts
    /// them (default 65,536).
    pub max_pending: Option<usize>,
    /// How often this node tells the others it is alive, in ms (default 500).
    pub heartbeat_ms: Option<u64>,
    /// A node not heard from for this long, in ms, is gone: its peers leave every roster
    /// (default 2,500, so that a killed node is detected within 3 s).
    pub node_timeout_ms: Option<u64>,
}

/// Default of `heartbeat_ms`.
pub const DEFAULT_HEARTBEAT_MS: u64 = 500;
/// Default of `node_timeout_ms`.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 2_500;

/// Presence on another node (protocol §9), from the link to a channel's owner shard.
#[derive(Debug)]
pub struct RemotePresence {
    /// Tenant.
    pub app: AppId,
    /// Channel.
    pub channel: Arc<str>,
    /// The node (its incarnation: a random number drawn when it started).
    pub origin: u64,
    /// What changed.
    pub change: RemoteChange,
}

/// A `(peerId, metadata)` pair of a roster.
pub type Member = (Arc<str>, Option<Bytes>);

/// What a [`RemotePresence`] says.
#[derive(Debug)]
pub enum RemoteChange {
    /// The node's first subscribed connection of `peer` came (`on`) or its last went.
    Member {
        /// The peer.
        peer: Arc<str>,
        /// Its public metadata.
        metadata: Option<Bytes>,
        /// Came or went.
        on: bool,
    },
    /// Part of the node's whole membership of the channel. Every part of one membership has
    /// the same `gen`; with `last`, the node's members not listed under `gen` have gone.
    Membership {
        /// Members in this part.
        members: Vec<Member>,
        /// Which membership this part belongs to.
        gen: u64,
        /// The last part.
        last: bool,
        /// The node asks every node with members on the channel for theirs (it has just
        /// gained interest in the channel).
        ask: bool,
    },
}

/// What the shards hand the link.
#[derive(Debug)]
pub(crate) enum Out {
    /// A publication made on this node.
    Publication(Arc<Publication>),
    /// A direct message made on this node, for the target's connections on other nodes;
    /// with `answer` when this node has none of them, so that the sender learns whether
    /// any node had (ack or `peer_not_found`); with `except`, one connection that must not
    /// get it.
    Direct(Arc<Direct>, Option<Answer>, Option<NodeConn>),
    /// A reply to a request of another node.
    Reply(Box<rpc::RemoteReply>),
    /// A frame for a responder connection on another node about request `n` of shard `of`.
    ToResponder {
        to: NodeConn,
        of: crate::router::ShardId,
        n: u64,
        frame: Option<Bytes>,
        release: bool,
    },
    /// The connection `conn` of this node that took request `n` of shard `of` on node
    /// `node` went away.
    ResponderGone {
        node: u64,
        of: crate::router::ShardId,
        n: u64,
        conn: ConnRef,
    },
}

/// Where the outcome of a remote-only `send` goes.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The sending connection.
    pub conn: ConnRef,
    /// Its requestId (the ack needs one; an error is sent either way).
    pub request_id: Option<Box<str>>,
    /// For a `request` (protocol §8.4): its number on the sender's shard. Found, nothing is
    /// said (the reply is the answer); not found, the request ends `peer_not_found`.
    pub request: Option<u64>,
}

/// How long a `send` whose target is only on other nodes waits for one of them to answer
/// before the sender gets `internal_error` (NATS answers at once when nobody listens).
pub const DIRECT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The link's counters (`ringcast_cluster_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Publications sent to NATS.
    pub published: AtomicU64,
    /// Publications received from other nodes and handed to the shards.
    pub received: AtomicU64,
    /// Publications not forwarded because NATS was unreachable.
    pub dropped_link_down: AtomicU64,
    /// Publications not forwarded because the link's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Received publications dropped: malformed, unknown app, or the shards' queues full.
    pub dropped_inbound: AtomicU64,
    /// Direct messages sent to other nodes.
    pub directs_sent: AtomicU64,
    /// Direct messages received from other nodes.
    pub directs_received: AtomicU64,
    /// Reconnections to NATS after a disconnect.
    pub reconnects: AtomicU64,
    /// Channels this node is subscribed to on NATS (those with local subscribers).
    pub interest_channels: AtomicU64,
    /// Pattern subjects this node is subscribed to on NATS.
    pub interest_patterns: AtomicU64,
    /// Received publications dropped as duplicates (several of this node's subscriptions
    /// matched them).
    pub duplicates: AtomicU64,
    /// Peers this node is subscribed to on NATS (those with local connections).
    pub interest_peers: AtomicU64,
    /// Other nodes declared gone.
    pub nodes_lost: AtomicU64,
    /// Presence messages sent to the other nodes.
    pub presence_sent: AtomicU64,
    /// Presence messages received from the other nodes.
    pub presence_received: AtomicU64,
    /// Request traffic (replies, frames for responders, responders gone) sent to other nodes.
    pub rpc_sent: AtomicU64,
    /// Request traffic received from other nodes.
    pub rpc_received: AtomicU64,
    /// Queue group NATS subscriptions (one per local member, capped per group).
    pub interest_groups: AtomicU64,
    /// Publications NATS picked this node for, for one of its queue groups.
    pub group_received: AtomicU64,
}

/// The shards' handle on the link.
#[derive(Debug)]
pub struct Link {
    /// This node's name.
    pub node_id: String,
    /// This incarnation of the node: random, drawn at start, so a node restarted under the
    /// same name is a new origin (its old members leave, its message ids start afresh).
    pub origin: u64,
    /// `heartbeat_ms`.
    pub heartbeat: std::time::Duration,
    /// `node_timeout_ms`.
    pub node_timeout: std::time::Duration,
    /// Other nodes heard from within `node_timeout`.
    pub live_nodes: AtomicU64,
    /// Subject prefix.
    pub prefix: String,
    /// Whether the NATS connection is up.
    pub up: AtomicBool,
    /// Counters.
    pub counters: LinkCounters,
    /// Publications and direct messages to send, bounded (`max_pending`).
    out: mpsc::Sender<Out>,
    /// Interest and presence changes. Unbounded: each one is a channel gaining its first or
    /// losing its last subscriber on this node, a peer's first or last subscription to a
    /// channel on this node, or a shard gaining its first or losing its last connection of
    /// a peer, which subscriptions and connections (bounded, and by every connection's
    /// token bucket) bound, plus one membership per channel with subscribers when the link
    /// resynchronises; losing one would leave interest or rosters wrong.
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// What the shards tell the link, in order per shard (a channel's interest and presence
/// both come from its owner shard, so the other nodes see them in the order they happened).
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Subscribe or unsubscribe on NATS.
    Interest(Interest),
    /// A peer's first subscribed connection on this node came (`on`) or its last went.
    Member {
        app: AppId,
        channel: Arc<str>,
        peer: Arc<str>,
        metadata: Option<Bytes>,
        on: bool,
    },
    /// This node's whole membership of a channel; with `ask`, the other nodes answer with
    /// theirs.
    Membership {
        app: AppId,
        channel: Arc<str>,
        members: Vec<Member>,
        ask: bool,
    },
    /// A question for every other node (from the REST thread; one at a time per REST
    /// connection, so `rest_max_connections` bounds them).
    Ask(query::Query, tokio::sync::oneshot::Sender<query::Gathered>),
}

impl Link {
    /// The `ringcast_cluster_*` metrics, in Prometheus text.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let c = &self.counters;
        let mut s = String::with_capacity(1024);
        let node = &self.node_id;
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{{node=\"{node}\"{labels}}} {v}");
            }
        };
        metric(
            "ringcast_cluster_link_up",
            "gauge",
            "1 while this node's NATS connection is up.",
            &[("", u64::from(self.up.load(Relaxed)))],
        );
        metric(
            "ringcast_cluster_published_total",
            "counter",
            "Publications this node sent to the other nodes through NATS.",
            &[("", c.published.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_received_total",
            "counter",
            "Publications received from other nodes and handed to the shards.",
            &[("", c.received.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_dropped_total",
            "counter",
            "Publications the link could not forward, by reason.",
            &[
                (",reason=\"link_down\"", c.dropped_link_down.load(Relaxed)),
                (",reason=\"queue_full\"", c.dropped_queue_full.load(Relaxed)),
                (",reason=\"inbound\"", c.dropped_inbound.load(Relaxed)),
            ],
        );
        metric(
            "ringcast_cluster_directs_sent_total",
            "counter",
            "Direct messages this node sent to the other nodes through NATS.",
            &[("", c.directs_sent.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_directs_received_total",
            "counter",
            "Direct messages received from other nodes and handed to the shards.",
            &[("", c.directs_received.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_duplicates_total",
            "counter",
            "Received publications dropped because another of this node's subscriptions (a pattern) had delivered them.",
            &[("", c.duplicates.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_reconnects_total",
            "counter",
            "Times the NATS connection was lost (async-nats reconnects by itself).",
            &[("", c.reconnects.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_interest",
            "gauge",
            "Subjects this node is subscribed to on NATS: channels with local subscribers, peers with local connections.",
            &[
                (",kind=\"channel\"", c.interest_channels.load(Relaxed)),
                (",kind=\"peer\"", c.interest_peers.load(Relaxed)),
                (",kind=\"pattern\"", c.interest_patterns.load(Relaxed)),
                (",kind=\"group\"", c.interest_groups.load(Relaxed)),
            ],
        );
        metric(
            "ringcast_cluster_group_received_total",
            "counter",
            "Publications NATS picked this node for, for one of its queue groups (protocol 8.2 across nodes).",
            &[("", c.group_received.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_nodes",
            "gauge",
            "Other nodes heard from within node_timeout_ms.",
            &[("", self.live_nodes.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_nodes_lost_total",
            "counter",
            "Other nodes declared gone (silent past node_timeout_ms, or restarted): their peers left every roster here.",
            &[("", c.nodes_lost.load(Relaxed))],
        );
        metric(
            "ringcast_cluster_rpc_total",
            "counter",
            "Request traffic after the request itself (replies, acks and cancels for responders, responders gone) exchanged with the other nodes, by direction.",
            &[
                (",direction=\"sent\"", c.rpc_sent.load(Relaxed)),
                (",direction=\"received\"", c.rpc_received.load(Relaxed)),
            ],
        );
        metric(
            "ringcast_cluster_presence_total",
            "counter",
            "Presence changes (joined, left, whole memberships) exchanged with the other nodes, by direction.",
            &[
                (",direction=\"sent\"", c.presence_sent.load(Relaxed)),
                (",direction=\"received\"", c.presence_received.load(Relaxed)),
            ],
        );
        s
    }
}

/// A change of what this node wants from NATS.
#[derive(Debug)]
pub struct Interest {
    /// Tenant.
    pub app: AppId,
    /// The channel, the peer, or the pattern.
    pub name: Arc<str>,
    /// What `name` is.
    pub kind: InterestKind,
    /// The queue group, for [`InterestKind::Group`] (`name` is then its channel).
    pub group: Option<Arc<str>>,
    /// Gained (true) or lost.
    pub on: bool,
}

/// What an [`Interest`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestKind {
    /// A channel: the node's first subscriber came or its last went.
    Channel,
    /// A peer: a shard's first connection of it came or its last went (the link counts).
    Peer,
    /// A pattern subscription was added or removed (the link counts per NATS subject).
    Pattern,
    /// A queue group member (protocol §8.2) joined or left (the link counts per group).
    Group,
}

/// The receiving ends, for [`link::start`].
#[derive(Debug)]
pub struct LinkQueues {
    out: mpsc::Receiver<Out>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
}

/// Default of `max_pending`.
pub const DEFAULT_MAX_PENDING: usize = 65_536;

impl Link {
    /// A link for `config`; [`link::start`] connects it.
    pub fn new(config: &ClusterConfig) -> (Arc<Link>, LinkQueues) {
        let (ptx, prx) = mpsc::channel(config.max_pending.unwrap_or(DEFAULT_MAX_PENDING).max(1));
        let (itx, irx) = mpsc::unbounded_channel();
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let ms = std::time::Duration::from_millis;
        let link = Link {
            node_id,
            // Never 0, which means "this node" in a `NodeConn`.
            origin: rand::random::<u64>() | 1,
            heartbeat: ms(config.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS)),
            node_timeout: ms(config.node_timeout_ms.unwrap_or(DEFAULT_NODE_TIMEOUT_MS)),
            live_nodes: AtomicU64::new(0),
            prefix: config
                .subject_prefix
                .clone()
                .unwrap_or_else(|| "ringcast".into()),
            up: AtomicBool::new(false),
            counters: LinkCounters::default(),
            out: ptx,
            ctl: itx,
        };
        (Arc::new(link), LinkQueues { out: prx, ctl: irx })
    }

    /// The publications-and-directs queue's bound (`max_pending`).
    pub(crate) fn out_capacity(&self) -> usize {
        self.out.max_capacity()
    }

    /// Forwards a publication made on this node to the other nodes: one queue push, never
    /// blocking; dropped and counted when NATS is down or the queue is full.
    pub fn publish(&self, p: &Arc<Publication>) {
        self.enqueue(Out::Publication(p.clone()));
    }

    /// Queues `o` for the link thread; false (counted) when NATS is down or the queue is full.
    fn enqueue(&self, o: Out) -> bool {
        if !self.up.load(Relaxed) {
            self.counters.dropped_link_down.fetch_add(1, Relaxed);
            return false;
        }
        if self.out.try_send(o).is_err() {
            self.counters.dropped_queue_full.fetch_add(1, Relaxed);
            return false;
        }
        true
    }

    /// Forwards a direct message to the target's connections on other nodes. With
    /// `answer` (the target has no connection on this node) the link reports to the
    /// sender whether some node had one. Returns false, having sent nothing, when NATS is
    /// down or the queue is full (counted): the caller answers the sender itself.
    pub(crate) fn send_direct(&self, d: &Arc<Direct>, answer: Option<Answer>) -> bool {
        self.enqueue(Out::Direct(d.clone(), answer, None))
    }

    /// [ext] Like [`Link::send_direct`] without an answer, skipping the connection `except`
    /// (a `cancel` `taken` goes to every connection of the peer but the one that took it).
    pub(crate) fn send_direct_except(&self, d: &Arc<Direct>, except: Option<NodeConn>) -> bool {
        self.enqueue(Out::Direct(d.clone(), None, except))
    }

    /// [ext] A reply to a request of another node; false (counted) when it cannot leave.
    pub(crate) fn reply(&self, r: rpc::RemoteReply) -> bool {
        self.enqueue(Out::Reply(Box::new(r)))
    }

    /// [ext] A frame for responder connection `to` (on another node) about request `n` of
    /// shard `of` of this node.
    pub(crate) fn to_responder(
        &self,
        to: NodeConn,
        of: crate::router::ShardId,
        n: u64,
        frame: Option<Bytes>,
        release: bool,
    ) -> bool {
        self.enqueue(Out::ToResponder {
            to,
            of,
            n,
            frame,
            release,
        })
    }

    /// [ext] This node's connection `conn`, which took request `held` of another node, went
    /// away.
    pub(crate) fn responder_gone(&self, held: crate::rpc::Held, conn: ConnRef) -> bool {
        let (node, of, n) = held;
        self.enqueue(Out::ResponderGone { node, of, n, conn })
    }

    /// Called by a shard when a pattern subscription (protocol §8.3) is added (`on`) or
    /// removed: the link subscribes to the pattern's NATS subject while any exists.
    pub fn pattern_interest(&self, app: AppId, pattern: &str, on: bool) {
        // Fails only once the link thread is gone (shutdown).
        self.control(Ctl::Interest(Interest {
            app,
            name: Arc::from(pattern),
            kind: InterestKind::Pattern,
            group: None,
            on,
        }));
    }

    /// Called by a shard when it gains its first connection of `peer` (`on`) or loses its
    /// last: the link subscribes to the peer's subject while any shard has one.
    pub fn peer_interest(&self, app: AppId, peer: &Arc<str>, on: bool) {
        // Fails only once the link thread is gone (shutdown).
        self.control(Ctl::Interest(Interest {
            app,
            name: peer.clone(),
            kind: InterestKind::Peer,
            group: None,
            on,
        }));
    }

    /// Called by a channel's owner shard: the channel gained its first subscriber on this
    /// node (`on`) or lost its last.
    pub fn interest(&self, app: AppId, channel: &Arc<str>, on: bool) {
        // Fails only once the link thread is gone (shutdown).
        self.control(Ctl::Interest(Interest {
            app,
            name: channel.clone(),
            kind: InterestKind::Channel,
            group: None,
            on,
        }));
    }

    /// Called by a member's shard when a connection joins (`on`) or leaves queue group
    /// `group` of `channel` (protocol §8.2): the link holds a NATS queue subscription per
    /// member (up to [`link::GROUP_SUBS_PER_NODE`]), so that NATS picks one node per
    /// publication cluster-wide, in proportion to its members.
    pub fn group_interest(&self, app: AppId, channel: &Arc<str>, group: &Arc<str>, on: bool) {
        self.control(Ctl::Interest(Interest {
            app,
            name: channel.clone(),
            kind: InterestKind::Group,
            group: Some(group.clone()),
            on,
        }));
    }

    /// True while queue groups are picked through NATS (the link is up): the channel's
    /// owner then does not pick among its local members itself (NATS picks a node, and
    /// that node's owner picks a member), so a publication reaches one member cluster-wide.
    pub fn picks_groups(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Called by a channel's owner shard: `peer`'s first subscribed connection on this node
    /// came (`on`) or its last went; the other nodes with subscribers on the channel learn it.
    pub fn member(
        &self,
        app: AppId,
        channel: &Arc<str>,
        peer: &Arc<str>,
        metadata: Option<Bytes>,
        on: bool,
    ) {
        self.control(Ctl::Member {
            app,
            channel: channel.clone(),
            peer: peer.clone(),
            metadata,
            on,
        });
    }

    /// Called by a channel's owner shard: this node's whole membership of `channel` (after
    /// its first subscriber came, with `ask`, or when the link resynchronises).
    pub fn membership(&self, app: AppId, channel: &Arc<str>, members: Vec<Member>, ask: bool) {
        self.control(Ctl::Membership {
            app,
            channel: channel.clone(),
            members,
            ask,
        });
    }

    /// Asks every other node alive (REST peers, kick, usage for the whole cluster) and
    /// returns their answers, gathered for at most [`query::QUERY_TIMEOUT`].
    pub async fn ask(&self, q: query::Query) -> query::Gathered {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.control(Ctl::Ask(q, tx));
        rx.await.unwrap_or_default()
    }

    fn control(&self, c: Ctl) {
        // Fails only once the link thread is gone (shutdown).
        let _ = self.ctl.send(c);
    }
}
