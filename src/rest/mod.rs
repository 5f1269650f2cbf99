//! The REST control plane (protocol.md §7): an HTTP/1.1 server (hyper 1.x) on its own
//! thread, running a small current-thread tokio runtime.
//!
//! It reaches the shards only through the mesh ([`crate::router::mesh::Mesh::push`] from
//! [`Source::External`](crate::router::mesh::Source::External)): publications are encoded
//! here once and handed to every shard as one `Arc`, and questions (a channel's roster, how
//! many connections a kick closed) travel as [`ShardMsg`](crate::router::ShardMsg)s that
//! carry a reply channel. It reads the broker's atomics (connection counts, metrics, the
//! draining flag) and never touches shard internals or takes a lock on the publish path.
//!
//! - [`server`]: binding, the thread, keep-alive connections, timeouts, request logging;
//! - [`api`]: routing, authentication and the endpoints;
//! - [`io`]: the connection's socket, with the answers of one poll sent in one write.
//!
//! Decisions are recorded in `docs/rest.md`.

pub(crate) mod api;
pub(crate) mod io;
pub(crate) mod server;

pub use server::{start, RestServer};

/// Largest accepted request body (protocol.md §7): larger answers 413 without being read whole.
pub(crate) const MAX_BODY: usize = 32 * 1024;

use std::cell::Cell;

use crate::router::{mesh::Mesh, ShardId};

thread_local! {
    /// Shards this (REST) thread pushed to without waking them yet: bit `s` for shard `s`.
    static OWED_WAKES: Cell<u128> = const { Cell::new(0) };
}

/// Records that shard `s` is owed a wake (see [`Mesh::push_deferred`]).
pub(crate) fn owe_wake(s: ShardId) {
    OWED_WAKES.with(|o| o.set(o.get() | 1u128 << s.0));
}

/// Wakes every shard owed a wake by this thread; called after each poll of a connection,
/// so a shard is woken once per batch of pipelined requests, never later than the answers.
pub(crate) fn pay_wakes(mesh: &Mesh) {
    let mut owed = OWED_WAKES.with(|o| o.replace(0));
    while owed != 0 {
        let s = owed.trailing_zeros();
        owed &= owed - 1;
        mesh.wake(ShardId(s as u16));
    }
}
