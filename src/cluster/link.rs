//! The link thread: one NATS connection, forwarding publications both ways.
//!
//! - Out: publications made on this node arrive on a bounded queue ([`super::Link::publish`])
//!   and are published on their channel's subject ([`super::subject`]) with the frames this
//!   node encoded ([`super::wire`]). The connection is made with `no_echo`, so a node never
//!   receives its own publications back.
//! - In: one NATS subscription per channel with subscribers on this node, each read by its
//!   own task, which decodes a message and hands it to every shard as one
//!   `Arc<Publication>` ([`crate::router::fanout::publish`] from `Source::External`, as the
//!   REST thread does). Per-publisher order holds per channel: one publisher's publications
//!   leave its node in order on one connection, and NATS keeps the order per subscription.
//! - NATS down: async-nats reconnects (forever, with its backoff) and re-sends every
//!   subscription itself. Meanwhile local traffic is untouched, publications for other
//!   nodes are dropped and counted (`ringcast_cluster_dropped_total{reason="link_down"}`),
//!   never buffered without bound.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{subject::channel_subject, wire, Link, LinkQueues};
use crate::{
    auth::AppId,
    router::{fanout, mesh::Source, Publication},
    shard::Broker,
};

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

async fn run(nats_url: String, link: Arc<Link>, mut queues: LinkQueues, broker: Arc<Broker>) {
    let events = link.clone();
    let options = async_nats::ConnectOptions::new()
        .name(format!("ringcast {}", link.node_id))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let link = events.clone();
            async move { on_event(&link, event) }
        });
    let client = match options.connect(nats_url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed URL gets here (connection failures are retried).
            tracing::error!(url = %nats_url, error = %e, "cluster: cannot use the NATS URL; this node runs alone");
            return;
        }
    };
    tracing::info!(url = %nats_url, node = %link.node_id, "cluster: link started");
    let mut subs: HashMap<(AppId, Arc<str>), JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            p = queues.publications.recv() => {
                let Some(p) = p else { break };
                let app = broker.auth.app_name(p.app);
                let payload = wire::encode(app, &p.channel, &p.frame, p.frame_with_meta.as_deref());
                let subject = channel_subject(&link.prefix, app, &p.channel);
                match client.publish(subject, payload).await {
                    Ok(()) => link.counters.published.fetch_add(1, Relaxed),
                    Err(_) => link.counters.dropped_link_down.fetch_add(1, Relaxed),
                };
            }
            i = queues.interest.recv() => {
                let Some(i) = i else { break };
                let key = (i.app, i.channel);
                if i.on {
                    if subs.contains_key(&key) {
                        continue;
                    }
                    let subject = channel_subject(&link.prefix, broker.auth.app_name(key.0), &key.1);
                    match client.subscribe(subject.clone()).await {
                        Ok(sub) => {
                            let task = tokio::spawn(receive(sub, link.clone(), broker.clone()));
                            subs.insert(key, task);
                        }
                        Err(e) => tracing::warn!(subject, error = %e, "cluster: subscribe failed"),
                    }
                } else if let Some(task) = subs.remove(&key) {
                    // Dropping the subscriber (with its task) unsubscribes.
                    task.abort();
                }
                link.counters.interest.store(subs.len() as u64, Relaxed);
            }
        }
    }
}

fn on_event(link: &Link, event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => {
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

/// Reads one channel's subscription: every message becomes one `Arc<Publication>` for
/// every shard.
async fn receive(mut sub: async_nats::Subscriber, link: Arc<Link>, broker: Arc<Broker>) {
    let mesh = &broker.mesh;
    while let Some(m) = sub.next().await {
        let Some(w) = wire::decode(m.payload) else {
            link.counters.dropped_inbound.fetch_add(1, Relaxed);
            continue;
        };
        let Some(app) = broker.auth.app_id(&w.app) else {
            link.counters.dropped_inbound.fetch_add(1, Relaxed);
            continue;
        };
        let published = fanout::publish(
            mesh,
            Source::External,
            || Publication {
                app,
                channel: Arc::from(w.channel.as_str()),
                origin: None,
                frame: w.frame,
                frame_with_meta: w.frame_with_meta,
            },
            |_| {},
            |s| mesh.wake(s),
        );
        match published {
            Ok(_) => link.counters.received.fetch_add(1, Relaxed),
            Err(fanout::Busy) => link.counters.dropped_inbound.fetch_add(1, Relaxed),
        };
    }
}
