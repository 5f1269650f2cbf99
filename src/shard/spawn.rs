//! Starting the shards: one SO_REUSEPORT listener per shard on the same address, one
//! thread per shard pinned to its core, each running its own tokio-uring runtime with
//! the accept loop, the inbox task and the housekeeping task.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    rc::Rc,
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use super::{conn, housekeeping, inbox, pending, ring, Broker, Shard};
use crate::{config::Placement, router::ShardId};

/// Listen backlog per shard (the kernel caps it at net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// Running shards.
#[derive(Debug)]
pub struct Shards {
    /// The address actually bound (port resolved when 0 was asked).
    pub local_addr: SocketAddr,
    /// One per shard.
    pub threads: Vec<JoinHandle<()>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds the listeners and starts `n` shards; returns once every shard is accepting.
pub fn start(
    n: usize,
    listen: SocketAddr,
    placement: Placement,
    broker: Arc<Broker>,
) -> std::io::Result<Shards> {
    // The first bind resolves port 0; the others join it through SO_REUSEPORT.
    let first = bind(listen)?;
    let local_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(bind(local_addr)?);
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let mut threads = Vec::with_capacity(n);
    for (i, listener) in listeners.into_iter().enumerate() {
        let broker = broker.clone();
        let core = match placement {
            Placement::Pinned if !cores.is_empty() => Some(cores[i % cores.len()]),
            _ => None,
        };
        let ready = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("ringcast-shard-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(shard = i, "could not pin shard thread to its core");
                    }
                }
                let span = tracing::info_span!("shard", shard_id = i);
                let _enter = span.enter();
                tokio_uring::start(async move {
                    let shard = match Shard::new(ShardId(i as u16), broker) {
                        Ok(s) => Rc::new(s),
                        Err(e) => {
                            let _ = ready.send(Err(format!(
                                "shard {i}: cannot set up its io_uring receive ring: {e}"
                            )));
                            return;
                        }
                    };
                    let listener = tokio_uring::net::TcpListener::from_std(listener);
                    tokio_uring::spawn(inbox::run(shard.clone()));
                    tokio_uring::spawn(ring::run::run(shard.clone()));
                    tokio_uring::spawn(ring::run::flusher(shard.clone()));
                    tokio_uring::spawn(housekeeping::run(shard.clone()));
                    tokio_uring::spawn(housekeeping::expiry(shard.clone()));
                    tokio_uring::spawn(super::rpc::deadlines(shard.clone()));
                    let _ = ready.send(Ok(i));
                    accept_loop(shard, listener).await;
                });
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..n {
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("a shard thread died during start-up"))?
            .map_err(std::io::Error::other)?;
    }
    Ok(Shards {
        local_addr,
        threads,
    })
}

/// Accepts connections forever; a socket over a pending-handshake cap ([`pending`]) is
/// closed at once. Accept errors (e.g. out of file descriptors) are logged
/// and retried with a backoff from 10 ms doubling to 1 s, never ending the loop.
async fn accept_loop(shard: Rc<Shard>, listener: tokio_uring::net::TcpListener) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                if shard
                    .broker
                    .draining
                    .load(std::sync::atomic::Ordering::Acquire)
                {
                    drop(stream); // shutting down: accept nothing new
                    continue;
                }
                // Over a pending-handshake cap: closed at once, nothing read or answered.
                let Some(slot) = pending::admit(&shard, peer.ip()) else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio_uring::spawn(conn::serve(shard.clone(), stream, slot));
            }
            Err(e) => {
                tracing::warn!(cause = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
