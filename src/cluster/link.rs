//! The link thread: one NATS connection, forwarding publications both ways.
//!
//! - Out: publications made on this node arrive on a bounded queue ([`super::Link::publish`])
//!   and are published on their channel's subject ([`super::subject`]) with the frames this
//!   node encoded ([`super::wire`]). The connection is made with `no_echo`, so a node never
//!   receives its own publications back.
//! - Directs: a `send` whose target has connections on this node is delivered here and
//!   published on the peer's subject for the other nodes; when it has none here, it is
//!   published with a reply subject in this node's inbox, and the first node that delivers
//!   it answers (NATS answers "no responders" at once when no node holds the peer), which
//!   becomes the sender's ack or `peer_not_found`.
//! - In: one NATS subscription per channel with subscribers on this node, each read by its
//!   own task, which decodes a message and hands it to every shard as one
//!   `Arc<Publication>` ([`crate::router::fanout::publish`] from `Source::External`, as the
//!   REST thread does). Per-publisher order holds per channel: one publisher's publications
//!   leave its node in order on one connection, and NATS keeps the order per subscription.
//! - NATS down: async-nats reconnects (forever, with its backoff) and re-sends every
//!   subscription itself. Meanwhile local traffic is untouched, publications for other
//!   nodes are dropped and counted (`ringcast_cluster_dropped_total{reason="link_down"}`),
//!   never buffered without bound.
//! - Presence: a channel's owner shard tells the link (in order, on the control queue) when
//!   a peer's first subscription on this node comes or its last goes (`J`/`L` on the
//!   channel's subject, so the other nodes see presence and publications of one channel in
//!   one order), and sends the node's whole membership of a channel (`M`) when the node
//!   gains the channel (asking the others for theirs), when the link (re)connects (asking
//!   too) and when another node asks (`R`, after it heard from this node for the first time
//!   or again). What arrives goes to the channel's owner shard, which merges it into the
//!   roster.
//! - Liveness: a heartbeat (`H`) every `heartbeat_ms` on `{prefix}.n`; a node not heard from
//!   for `node_timeout_ms`, or replaced by a new incarnation of the same name, is gone: every
//!   shard drops its members ([`super::nodes`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    nodes::Nodes,
    query::{self, Gathered, QUERY_TIMEOUT},
    rpc,
    subject::{
        channel_subject, inbox_subject, nodes_subject, pattern_subject, peer_subject, queue_name,
        rpc_subject,
    },
    wire::{self, Kind},
    Answer, Ctl, Interest, InterestKind, Link, LinkQueues, Member, Out, RemoteChange,
    RemotePresence, DIRECT_ANSWER_TIMEOUT,
};
use crate::{
    auth::AppId,
    protocol::{encode, ErrorCode},
    router::{
        fanout, mesh::Source, owner_of, Direct, NodeConn, Publication, ReplyMsg, ShardId, ShardMsg,
    },
    shard::Broker,
};

/// Bytes of members per `M` message: a large roster is sent in parts, well under NATS'
/// default 1 MiB payload limit.
const MEMBERSHIP_PART_BYTES: usize = 256 * 1024;

/// Starts the link thread: connects to `nats_url` (retrying in the background when NATS is
/// not up yet: the broker starts serving local traffic either way) and runs until the
/// process exits.
pub fn start(
    nats_url: String,
    link: Arc<Link>,
    queues: LinkQueues,
    broker: Arc<Broker>,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringcast-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cluster: cannot build the link's runtime");
                    return;
                }
            };
            rt.block_on(run(nats_url, link, queues, broker));
        })
        .context("spawning the cluster link thread")
}

/// A remote-only `send` waiting for a node to answer.
struct Pending {
    answer: Answer,
    deadline: Instant,
}

/// A question to the other nodes, gathering their answers.
struct Gather {
    gathered: Gathered,
    reply: tokio::sync::oneshot::Sender<Gathered>,
    deadline: Instant,
}

/// A message from one of the node's subscriptions, on its way to the main loop.
struct Inbound {
    payload: Bytes,
    reply: Option<async_nats::Subject>,
    /// Read by a queue group's subscription: NATS picked this node for that group.
    group: Option<Arc<str>>,
}

/// NATS queue subscriptions a node holds per queue group at most: one per local member up
/// to this, so that NATS picks nodes in proportion to their members (a node with more
/// members than this is picked as if it had this many).
pub const GROUP_SUBS_PER_NODE: usize = 64;

/// How many received publication ids the duplicate filter remembers. A copy that arrives
/// more than this many publications after the first would be delivered twice; the copies
/// come from one TCP stream, back to back, so they arrive within a few messages.
const DEDUP_WINDOW: usize = 65_536;

/// The ids of the last [`DEDUP_WINDOW`] received publications (only while the node has
/// pattern subscriptions on NATS: without them no two subscriptions overlap).
#[derive(Default)]
struct Dedup {
    seen: HashSet<(u64, u64)>,
    order: VecDeque<(u64, u64)>,
}

impl Dedup {
    /// True the first time `id` is seen.
    fn first(&mut self, id: (u64, u64)) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        if self.order.len() == DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

/// A subscription's reading task.
fn spawn_reader(
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<Inbound>,
    group: Option<Arc<str>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let inbound = Inbound {
                payload: m.payload,
                reply: m.reply,
                group: group.clone(),
            };
            if tx.send(inbound).await.is_err() {
                return;
            }
        }
    })
}

/// Subscriptions several holders share: how many hold each, and its reader.
type Counted<K> = HashMap<K, (u32, JoinHandle<()>)>;

/// One holder more for `key`; true when it is the first (the caller subscribes and inserts
/// the reader with a count of 1).
fn hold<K: std::hash::Hash + Eq>(map: &mut Counted<K>, key: &K) -> bool {
    match map.get_mut(key) {
        Some((n, _)) => {
            *n += 1;
            false
        }
        None => true,
    }
}

/// One holder fewer for `key`; the last one's reader is stopped, which drops its
/// subscriber and so unsubscribes.
fn release<K: std::hash::Hash + Eq>(map: &mut Counted<K>, key: &K) {
    if let Some((n, _)) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            if let Some((_, t)) = map.remove(key) {
                t.abort();
            }
        }
    }
}

/// The node's subscriptions, by what they are for.
#[derive(Default)]
struct Subscriptions {
    channels: HashMap<(AppId, Arc<str>), JoinHandle<()>>,
    /// Per peer: how many shards hold a connection of it.
    peers: Counted<(AppId, Arc<str>)>,
    /// Per pattern subject: how many pattern subscriptions listen on it.
    patterns: Counted<String>,
    /// Per queue group: its local members, and one queue subscription per member up to
    /// [`GROUP_SUBS_PER_NODE`] (on the connection that receives its own node's messages).
    groups: HashMap<GroupKey, (u32, Vec<JoinHandle<()>>)>,
}

/// A queue group: app, channel, group name.
type GroupKey = (AppId, Arc<str>, Arc<str>);

async fn run(nats_url: String, link: Arc<Link>, mut queues: LinkQueues, broker: Arc<Broker>) {
    let events = link.clone();
    // Each (re)connection: this node sends its memberships again, asking for the others'.
    // Unbounded: one message per connection event.
    let (connected_tx, mut connected) = mpsc::unbounded_channel::<()>();
    let options = async_nats::ConnectOptions::new()
        .name(format!("ringcast {}", link.node_id))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let link = events.clone();
            let connected = connected_tx.clone();
            async move { on_event(&link, &connected, event) }
        });
    let client = match options.connect(nats_url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed URL gets here (connection failures are retried).
            tracing::error!(url = %nats_url, error = %e, "cluster: cannot use the NATS URL; this node runs alone");
            return;
        }
    };
    // Queue groups (protocol §8.2) are picked by NATS among every node's queue
    // subscriptions, the publishing node's own included: that needs a connection that
    // receives its own node's publications, which the main one (no_echo) does not.
    let groups_client = match async_nats::ConnectOptions::new()
        .name(format!("ringcast {} groups", link.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(nats_url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %nats_url, error = %e, "cluster: cannot use the NATS URL; this node runs alone");
            return;
        }
    };
    tracing::info!(url = %nats_url, node = %link.node_id, "cluster: link started");
    let inbox = inbox_subject(&link.prefix, &link.node_id);
    let mut answers = match client.subscribe(format!("{inbox}.*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot subscribe to the answers inbox; this node runs alone");
            return;
        }
    };
    let mut rpc_in = match client
        .subscribe(rpc_subject(&link.prefix, link.origin))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot subscribe to the node's rpc subject; this node runs alone");
            return;
        }
    };
    let mut node_msgs = match client.subscribe(nodes_subject(&link.prefix)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot subscribe to the nodes' subject; this node runs alone");
            return;
        }
    };
    let origin = link.origin;
    let mut seq = 0u64;
    let mut nodes = Nodes::new(link.node_timeout);
    let mut heartbeat = tokio::time::interval(link.heartbeat);
    let max_pending = link.out_capacity();
    // Every subscription's reader feeds this one queue, so that the main loop alone
    // delivers (and drops duplicates). Bounded: a full queue holds the readers back, and
    // async-nats then drops for the slow subscription and reports it (counted `inbound`).
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(max_pending);
    let mut subs = Subscriptions::default();
    let mut dedup = Dedup::default();
    // Bounded by `max_pending` (past it a remote-only send is answered `rate_limited`).
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Questions waiting for the other nodes' answers; bounded by the REST connections
    // (one question at a time each).
    let mut gathers: HashMap<u64, Gather> = HashMap::new();
    let mut next_id = 0u64;
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            o = queues.out.recv() => {
                let Some(o) = o else { break };
                seq += 1;
                match o {
                    Out::Publication(p) => {
                        let app = broker.auth.app_name(p.app);
                        let payload = wire::encode_from(Kind::Publication, (origin, seq), app, &p.channel, &p.frame, p.frame_with_meta.as_deref(), p.origin);
                        let subject = channel_subject(&link.prefix, app, &p.channel);
                        match client.publish(subject, payload).await {
                            Ok(()) => link.counters.published.fetch_add(1, Relaxed),
                            Err(_) => link.counters.dropped_link_down.fetch_add(1, Relaxed),
                        };
                    }
                    Out::Direct(d, answer, except) => {
                        let app = broker.auth.app_name(d.app);
                        let except = except.map(rpc::except_bytes);
                        let payload = wire::encode(Kind::Direct, (origin, seq), app, &d.to, &d.frame, except.as_deref());
                        let subject = peer_subject(&link.prefix, app, &d.to);
                        let sent = match answer {
                            None => client.publish(subject, payload).await,
                            Some(answer) if pending.len() >= max_pending => {
                                answer_conn(&broker, &answer, Err(ErrorCode::RateLimited));
                                continue;
                            }
                            Some(answer) => {
                                next_id += 1;
                                let reply = format!("{inbox}.{next_id}");
                                let r = client.publish_with_reply(subject, reply, payload).await;
                                match r {
                                    Ok(()) => {
                                        pending.insert(next_id, Pending { answer, deadline: Instant::now() + DIRECT_ANSWER_TIMEOUT });
                                    }
                                    Err(_) => answer_conn(&broker, &answer, Err(ErrorCode::PeerNotFound)),
                                }
                                r
                            }
                        };
                        match sent {
                            Ok(()) => link.counters.directs_sent.fetch_add(1, Relaxed),
                            Err(_) => link.counters.dropped_link_down.fetch_add(1, Relaxed),
                        };
                    }
                    Out::Reply(r) => {
                        let header = rpc::reply_header(&r);
                        let app = broker.auth.app_name(r.app);
                        let payload = wire::encode(Kind::Reply, (origin, seq), app, &r.peer, &r.data, Some(&header));
                        rpc_out(&client, &link, r.node, payload).await;
                    }
                    Out::ToResponder { to, of, n, frame, release } => {
                        let header = rpc::frame_header(to.conn, of, n, release, frame.is_some());
                        let payload = wire::encode(Kind::ToResponder, (origin, seq), "", "", frame.as_deref().unwrap_or(&[]), Some(&header));
                        rpc_out(&client, &link, to.node, payload).await;
                    }
                    Out::ResponderGone { node, of, n, conn } => {
                        let header = rpc::gone_header(of, n, conn);
                        let payload = wire::encode(Kind::ResponderGone, (origin, seq), "", "", &[], Some(&header));
                        rpc_out(&client, &link, node, payload).await;
                    }
                }
            }
            m = rpc_in.next() => {
                let Some(m) = m else { break };
                if rpc_deliver(&broker, m.payload).is_some() {
                    link.counters.rpc_received.fetch_add(1, Relaxed);
                } else {
                    link.counters.dropped_inbound.fetch_add(1, Relaxed);
                }
            }
            c = queues.ctl.recv() => {
                let Some(c) = c else { break };
                match c {
                    Ctl::Interest(i) => interest(&client, &groups_client, &link, &broker, &mut subs, &in_tx, i).await,
                    Ctl::Ask(q, reply) => {
                        let asked = nodes.len();
                        if asked == 0 || !link.up.load(Relaxed) {
                            let _ = reply.send(Gathered { asked, answers: Vec::new() });
                            continue;
                        }
                        next_id += 1;
                        let (app, name, op) = q.parts();
                        let payload = wire::encode(Kind::Query, (origin, 0), broker.auth.app_name(app), name, &[op], None);
                        let to = format!("{inbox}.q{next_id}");
                        if client.publish_with_reply(nodes_subject(&link.prefix), to, payload).await.is_err() {
                            let _ = reply.send(Gathered { asked, answers: Vec::new() });
                            continue;
                        }
                        gathers.insert(next_id, Gather { gathered: Gathered { asked, answers: Vec::new() }, reply, deadline: Instant::now() + QUERY_TIMEOUT });
                    }
                    // While NATS is down presence is not sent: the memberships sent again on
                    // reconnecting carry it.
                    _ if !link.up.load(Relaxed) => {}
                    Ctl::Member { app, channel, peer, metadata, on } => {
                        seq += 1;
                        let app = broker.auth.app_name(app);
                        let body = wire::encode_members(0, 0, &[(peer, metadata)]);
                        let kind = if on { Kind::Joined } else { Kind::Left };
                        let payload = wire::encode(kind, (origin, seq), app, &channel, &body, None);
                        if client.publish(channel_subject(&link.prefix, app, &channel), payload).await.is_ok() {
                            link.counters.presence_sent.fetch_add(1, Relaxed);
                        }
                    }
                    Ctl::Membership { app, channel, members, ask } => {
                        let app = broker.auth.app_name(app);
                        send_membership(&client, &link, (origin, &mut seq), app, &channel, &members, ask).await;
                    }
                }
            }
            m = in_rx.recv() => {
                let Some(m) = m else { break };
                deliver(&client, &link, &broker, &mut dedup, &mut nodes, !subs.patterns.is_empty(), m).await;
            }
            m = node_msgs.next() => {
                let Some(m) = m else { break };
                let Some(w) = wire::decode(m.payload) else {
                    link.counters.dropped_inbound.fetch_add(1, Relaxed);
                    continue;
                };
                match w.kind {
                    Kind::Heartbeat => {
                        let heard = nodes.heard(w.id.0, Some(&w.name), Instant::now());
                        if let Some(old) = heard.replaced {
                            node_gone(&link, &broker, old);
                        }
                        if heard.new {
                            ask_resync(&client, &link, (origin, &mut seq), w.id.0).await;
                        }
                        link.live_nodes.store(nodes.len() as u64, Relaxed);
                    }
                    Kind::Resync if w.name.is_empty() || w.name.parse() == Ok(origin) => {
                        all_shards(&broker, || ShardMsg::ClusterResync { ask: false });
                    }
                    Kind::Query => {
                        // Answered off the main loop: the shards may take a moment.
                        let (Some(to), Some(app), Some(&op)) = (m.reply, broker.auth.app_id(&w.app), w.frame.first()) else { continue };
                        let (client, broker) = (client.clone(), broker.clone());
                        tokio::spawn(async move {
                            if let Some(body) = query::answer(&broker, app, op, &w.name).await {
                                let payload = wire::encode(Kind::Answer, (origin, 0), "", "", &body, None);
                                let _ = client.publish(to, payload).await;
                            }
                        });
                    }
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if link.up.load(Relaxed) {
                    beat(&client, &link, (origin, &mut seq)).await;
                }
            }
            c = connected.recv() => {
                if c.is_none() { break }
                // At once, so that the others know this node by name before its presence.
                beat(&client, &link, (origin, &mut seq)).await;
                // Ours again, asking the others for theirs: whatever either side missed
                // while NATS was away is reconciled.
                all_shards(&broker, || ShardMsg::ClusterResync { ask: true });
            }
            m = answers.next() => {
                let Some(m) = m else { break };
                let last = m.subject.rsplit('.').next().unwrap_or("");
                if let Some(id) = last.strip_prefix('q').and_then(|t| t.parse::<u64>().ok()) {
                    // An answer to a question: complete once every node asked answered.
                    let Some(g) = gathers.get_mut(&id) else { continue };
                    match wire::decode(m.payload) {
                        Some(w) if w.kind == Kind::Answer => g.gathered.answers.push(w.frame),
                        _ => continue,
                    }
                    if g.gathered.answers.len() >= g.gathered.asked {
                        if let Some(g) = gathers.remove(&id) {
                            let _ = g.reply.send(g.gathered);
                        }
                    }
                    continue;
                }
                let Some(id) = last.parse::<u64>().ok() else { continue };
                // The first answer settles it; later ones (several nodes had the peer) are
                // ignored.
                let Some(p) = pending.remove(&id) else { continue };
                let found = m.status != Some(async_nats::StatusCode::NO_RESPONDERS);
                answer_conn(&broker, &p.answer, if found { Ok(()) } else { Err(ErrorCode::PeerNotFound) });
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                for gone in nodes.expire(now) {
                    node_gone(&link, &broker, gone);
                }
                link.live_nodes.store(nodes.len() as u64, Relaxed);
                // Questions some node did not answer in time: what came is the answer.
                let due: Vec<u64> = gathers.iter().filter(|(_, g)| g.deadline <= now).map(|(id, _)| *id).collect();
                for id in due {
                    if let Some(g) = gathers.remove(&id) {
                        let _ = g.reply.send(g.gathered);
                    }
                }
                pending.retain(|_, p| {
                    if p.deadline > now {
                        return true;
                    }
                    answer_conn(&broker, &p.answer, Err(ErrorCode::InternalError));
                    false
                });
            }
        }
    }
}

/// Applies one interest change: subscribes or unsubscribes on NATS.
async fn interest(
    client: &async_nats::Client,
    groups_client: &async_nats::Client,
    link: &Link,
    broker: &Broker,
    subs: &mut Subscriptions,
    tx: &mpsc::Sender<Inbound>,
    i: Interest,
) {
    let app = broker.auth.app_name(i.app);
    let subscribe = |subject: String| async move {
        match client.subscribe(subject.clone()).await {
            Ok(sub) => Some(spawn_reader(sub, tx.clone(), None)),
            Err(e) => {
                tracing::warn!(subject, error = %e, "cluster: subscribe failed");
                None
            }
        }
    };
    match (i.kind, i.on) {
        (InterestKind::Channel, true) => {
            let key = (i.app, i.name);
            if let std::collections::hash_map::Entry::Vacant(v) = subs.channels.entry(key) {
                let subject = channel_subject(&link.prefix, app, &v.key().1);
                if let Some(t) = subscribe(subject).await {
                    v.insert(t);
                }
            }
        }
        (InterestKind::Channel, false) => {
            // Aborting the reader drops its subscriber, which unsubscribes.
            if let Some(t) = subs.channels.remove(&(i.app, i.name)) {
                t.abort();
            }
        }
        (InterestKind::Peer, true) => {
            let key = (i.app, i.name);
            if hold(&mut subs.peers, &key) {
                if let Some(t) = subscribe(peer_subject(&link.prefix, app, &key.1)).await {
                    subs.peers.insert(key, (1, t));
                }
            }
        }
        (InterestKind::Peer, false) => release(&mut subs.peers, &(i.app, i.name)),
        (InterestKind::Pattern, true) => {
            let subject = pattern_subject(&link.prefix, app, &i.name);
            if hold(&mut subs.patterns, &subject) {
                if let Some(t) = subscribe(subject.clone()).await {
                    subs.patterns.insert(subject, (1, t));
                }
            }
        }
        (InterestKind::Group, on) => {
            let Some(group) = i.group else { return };
            let key = (i.app, i.name, group);
            let entry = subs.groups.entry(key.clone()).or_default();
            if on {
                entry.0 += 1;
            } else {
                entry.0 = entry.0.saturating_sub(1);
            }
            let want = (entry.0 as usize).min(GROUP_SUBS_PER_NODE);
            while entry.1.len() > want {
                if let Some(t) = entry.1.pop() {
                    t.abort();
                }
            }
            while entry.1.len() < want {
                let subject = channel_subject(&link.prefix, app, &key.1);
                match groups_client
                    .queue_subscribe(subject, queue_name(app, &key.2))
                    .await
                {
                    Ok(sub) => entry
                        .1
                        .push(spawn_reader(sub, tx.clone(), Some(key.2.clone()))),
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: queue subscribe failed");
                        break;
                    }
                }
            }
            if entry.0 == 0 {
                subs.groups.remove(&key);
            }
        }
        (InterestKind::Pattern, false) => {
            release(
                &mut subs.patterns,
                &pattern_subject(&link.prefix, app, &i.name),
            );
        }
    }
    let c = &link.counters;
    c.interest_channels
        .store(subs.channels.len() as u64, Relaxed);
    c.interest_peers.store(subs.peers.len() as u64, Relaxed);
    c.interest_patterns
        .store(subs.patterns.len() as u64, Relaxed);
    c.interest_groups.store(
        subs.groups.values().map(|(_, v)| v.len() as u64).sum(),
        Relaxed,
    );
}

/// Hands one received message to the shards: a publication as one `Arc<Publication>` for
/// every shard (once, whatever the number of this node's subscriptions it matched), a
/// direct message to every shard (each delivers to its connections of the peer), answering
/// the sender's node when it waits.
async fn deliver(
    client: &async_nats::Client,
    link: &Link,
    broker: &Broker,
    dedup: &mut Dedup,
    nodes: &mut Nodes,
    overlapping: bool,
    m: Inbound,
) {
    let c = &link.counters;
    let mesh = &broker.mesh;
    let Some(w) = wire::decode(m.payload) else {
        c.dropped_inbound.fetch_add(1, Relaxed);
        return;
    };
    let Some(app) = broker.auth.app_id(&w.app) else {
        c.dropped_inbound.fetch_add(1, Relaxed);
        return;
    };
    if let Some(group) = m.group {
        // NATS picked this node for `group`: the channel's owner picks a member.
        if w.kind != Kind::Publication {
            c.dropped_inbound.fetch_add(1, Relaxed);
            return;
        }
        let publication = Arc::new(Publication {
            app,
            channel: Arc::from(w.name.as_str()),
            // This node's own publication: its publisher is not picked.
            origin: w.sender.filter(|_| w.id.0 == link.origin),
            frame: w.frame,
            frame_with_meta: w.frame_with_meta,
        });
        let owner = owner_of(app, &publication.channel, mesh.shards());
        mesh.push(
            Source::External,
            owner,
            ShardMsg::GroupBounce {
                publication,
                group,
                tries: 0,
            },
        );
        c.group_received.fetch_add(1, Relaxed);
        return;
    }
    if w.kind != Kind::Direct && overlapping && !dedup.first(w.id) {
        c.duplicates.fetch_add(1, Relaxed);
        return;
    }
    match w.kind {
        Kind::Heartbeat
        | Kind::Resync
        | Kind::Query
        | Kind::Answer
        | Kind::Reply
        | Kind::ToResponder
        | Kind::ResponderGone => {}
        Kind::Joined | Kind::Left | Kind::Membership => {
            let Some(list) = wire::decode_members(w.frame) else {
                c.dropped_inbound.fetch_add(1, Relaxed);
                return;
            };
            // Known from now on (it expires if it goes silent); the heartbeat that names it
            // makes the link ask it for all its memberships.
            nodes.heard(w.id.0, None, Instant::now());
            let change = match w.kind {
                Kind::Membership => RemoteChange::Membership {
                    members: list.members,
                    gen: list.gen,
                    last: list.flags & wire::LAST != 0,
                    ask: list.flags & wire::ASK != 0,
                },
                kind => {
                    let Some((peer, metadata)) = list.members.into_iter().next() else {
                        c.dropped_inbound.fetch_add(1, Relaxed);
                        return;
                    };
                    RemoteChange::Member {
                        peer,
                        metadata,
                        on: kind == Kind::Joined,
                    }
                }
            };
            let channel: Arc<str> = Arc::from(w.name.as_str());
            let owner = owner_of(app, &channel, mesh.shards());
            let r = RemotePresence {
                app,
                channel,
                origin: w.id.0,
                change,
            };
            mesh.push(
                Source::External,
                owner,
                ShardMsg::RemotePresence(Box::new(r)),
            );
            c.presence_received.fetch_add(1, Relaxed);
        }
        Kind::Publication => {
            let published = fanout::publish(
                mesh,
                Source::External,
                || Publication {
                    app,
                    channel: Arc::from(w.name.as_str()),
                    origin: None,
                    frame: w.frame,
                    frame_with_meta: w.frame_with_meta,
                },
                |_| {},
                |s| mesh.wake(s),
            );
            match published {
                Ok(_) => c.received.fetch_add(1, Relaxed),
                Err(fanout::Busy) => c.dropped_inbound.fetch_add(1, Relaxed),
            };
        }
        Kind::Direct => {
            if !mesh.all_have_room(None) {
                c.dropped_inbound.fetch_add(1, Relaxed);
                return;
            }
            // A connection to skip, when it is one of this node's.
            let skip = w
                .frame_with_meta
                .and_then(rpc::decode_except)
                .filter(|e| e.node == link.origin)
                .map(|e| e.conn);
            let d = Arc::new(Direct {
                app,
                to: Arc::from(w.name.as_str()),
                origin: skip,
                frame: w.frame,
            });
            all_shards(broker, || ShardMsg::Direct(d.clone()));
            c.directs_received.fetch_add(1, Relaxed);
            if let Some(r) = m.reply {
                // The sender's node waits for one answer: "delivered here".
                let _ = client.publish(r, Bytes::new()).await;
            }
        }
    }
}

/// Tells a remote-only send's connection how it went: an ack (when it had a requestId),
/// or the error.
fn answer_conn(broker: &Broker, a: &Answer, outcome: Result<(), ErrorCode>) {
    if let Some(n) = a.request {
        // A request: found, the reply will be the answer; else it ends here.
        if let Err(code) = outcome {
            broker.mesh.push(
                Source::External,
                a.conn.shard,
                ShardMsg::RequestFailed { n, code },
            );
        }
        return;
    }
    let frame = match (outcome, &a.request_id) {
        (Ok(()), Some(rid)) => encode::ack(rid),
        (Ok(()), None) => return,
        (Err(code), rid) => {
            let why = match code {
                ErrorCode::PeerNotFound => "peer not connected to any node",
                ErrorCode::RateLimited => "too many sends waiting for other nodes; retry later",
                _ => "no node answered in time",
            };
            encode::error(code, rid.as_deref(), Some(why))
        }
    };
    broker.mesh.push(
        Source::External,
        a.conn.shard,
        ShardMsg::ConnFrame {
            conn: a.conn.conn,
            frame,
            large: false,
        },
    );
}

/// Sends this node's whole membership of a channel, in parts of at most
/// [`MEMBERSHIP_PART_BYTES`]; every part carries the first part's sequence number as the
/// membership's generation, and the last one the flags.
async fn send_membership(
    client: &async_nats::Client,
    link: &Link,
    (origin, seq): (u64, &mut u64),
    app: &str,
    channel: &str,
    members: &[Member],
    ask: bool,
) {
    let subject = channel_subject(&link.prefix, app, channel);
    let gen = *seq + 1;
    let mut rest = members;
    loop {
        let mut size = 0;
        let n = rest
            .iter()
            .take_while(|(p, m)| {
                size += 6 + p.len() + m.as_ref().map_or(0, |m| m.len());
                size <= MEMBERSHIP_PART_BYTES
            })
            .count()
            .max(1)
            .min(rest.len());
        let (part, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() {
            wire::LAST | if ask { wire::ASK } else { 0 }
        } else {
            0
        };
        *seq += 1;
        let body = wire::encode_members(flags, gen, part);
        let payload = wire::encode(Kind::Membership, (origin, *seq), app, channel, &body, None);
        if client.publish(subject.clone(), payload).await.is_ok() {
            link.counters.presence_sent.fetch_add(1, Relaxed);
        }
        if rest.is_empty() {
            return;
        }
    }
}

/// Publishes one request message on node `node`'s rpc subject.
async fn rpc_out(client: &async_nats::Client, link: &Link, node: u64, payload: Bytes) {
    match client
        .publish(rpc_subject(&link.prefix, node), payload)
        .await
    {
        Ok(()) => link.counters.rpc_sent.fetch_add(1, Relaxed),
        Err(_) => link.counters.dropped_link_down.fetch_add(1, Relaxed),
    };
}

/// Hands one message of this node's rpc subject to the shard it is for; `None` when it is
/// malformed or names an unknown app or shard.
fn rpc_deliver(broker: &Broker, payload: Bytes) -> Option<()> {
    let w = wire::decode(payload)?;
    let from_node = w.id.0;
    let shards = broker.mesh.shards();
    let (to, msg) = match w.kind {
        Kind::Reply => {
            let (of, n, from, last, request_id) = rpc::decode_reply_header(w.frame_with_meta?)?;
            let app = broker.auth.app_id(&w.app)?;
            let msg = ShardMsg::Reply(Box::new(ReplyMsg {
                n,
                app,
                peer: Arc::from(w.name.as_str()),
                from: NodeConn {
                    node: from_node,
                    conn: from,
                },
                data: w.frame,
                last,
                request_id,
            }));
            (of, msg)
        }
        Kind::ToResponder => {
            let (to, of, n, release, has_frame) = rpc::decode_frame_header(w.frame_with_meta?)?;
            let msg = ShardMsg::ResponderFrame {
                conn: to.conn,
                of_node: from_node,
                of,
                n,
                frame: has_frame.then_some(w.frame),
                release,
            };
            (to.shard, msg)
        }
        Kind::ResponderGone => {
            let (of, n, conn) = rpc::decode_gone_header(w.frame_with_meta?)?;
            let msg = ShardMsg::ResponderGone {
                n,
                conn: NodeConn {
                    node: from_node,
                    conn,
                },
            };
            (of, msg)
        }
        _ => return None,
    };
    if usize::from(to.0) >= shards {
        return None;
    }
    broker.mesh.push(Source::External, to, msg);
    Some(())
}

/// Tells the other nodes this one is alive.
async fn beat(client: &async_nats::Client, link: &Link, (origin, seq): (u64, &mut u64)) {
    *seq += 1;
    let payload = wire::encode(
        Kind::Heartbeat,
        (origin, *seq),
        "",
        &link.node_id,
        &[],
        None,
    );
    let _ = client.publish(nodes_subject(&link.prefix), payload).await;
}

/// Asks node `target` (an origin) to send its memberships again.
async fn ask_resync(
    client: &async_nats::Client,
    link: &Link,
    (origin, seq): (u64, &mut u64),
    target: u64,
) {
    *seq += 1;
    let payload = wire::encode(
        Kind::Resync,
        (origin, *seq),
        "",
        &target.to_string(),
        &[],
        None,
    );
    let _ = client.publish(nodes_subject(&link.prefix), payload).await;
}

/// Node `origin` is gone: every shard drops its members.
fn node_gone(link: &Link, broker: &Broker, origin: u64) {
    link.counters.nodes_lost.fetch_add(1, Relaxed);
    tracing::warn!(node = %link.node_id, gone = format!("{origin:016x}"), "cluster: a node went silent or restarted; its peers leave the rosters");
    all_shards(broker, || ShardMsg::NodeGone { origin });
}

fn all_shards(broker: &Broker, msg: impl Fn() -> ShardMsg) {
    for s in 0..broker.mesh.shards() as u16 {
        broker.mesh.push(Source::External, ShardId(s), msg());
    }
}

fn on_event(link: &Link, connected: &mpsc::UnboundedSender<()>, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
            let _ = connected.send(());
            if link.up.swap(true, Relaxed) {
                return;
            }
            tracing::info!(node = %link.node_id, "cluster: connected to NATS");
        }
        async_nats::Event::Disconnected => {
            link.up.store(false, Relaxed);
            link.counters.reconnects.fetch_add(1, Relaxed);
            tracing::warn!(node = %link.node_id, "cluster: lost NATS; serving local traffic, counting what is not forwarded");
        }
        async_nats::Event::SlowConsumer(_) => {
            // async-nats dropped a message for a subscription whose queue was full.
            link.counters.dropped_inbound.fetch_add(1, Relaxed);
        }
        other => tracing::info!(node = %link.node_id, event = %other, "cluster: NATS event"),
    }
}
