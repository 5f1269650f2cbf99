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

pub mod api;
pub mod io;
pub mod server;

pub use server::{start, RestServer};

/// Largest accepted request body (protocol.md §7): larger answers 413 without being read whole.
pub const MAX_BODY: usize = 32 * 1024;
