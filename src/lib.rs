//! ringcast: a thread-per-core io_uring WebSocket pub/sub broker speaking the
//! Metered Realtime v1 protocol (docs/protocol.md).
//!
//! # Layout
//! - [`admission`]: per-source-address limits: the IP key (IPv6 by /64), the lock-free
//!   upgrade throttle, per-key live counts. Pure.
//! - [`config`]: defaults < TOML < env < CLI; every limit in one struct.
//! - [`auth`]: apps (tenants), secret and publishable keys, HS256 JWTs, channel globs. Pure.
//! - [`clock`]: the one wall-clock read (`unix_now`) for token minting and expiry.
//! - [`protocol`]: the wire vocabulary. Parses client JSON (simd-json, `data` kept as raw
//!   bytes) and encodes server frames once into shareable `Bytes`. Sans-IO.
//! - [`router`]: shard/connection ids, `owner_of(channel)`, cross-shard `ShardMsg`s, the
//!   `Publication` builder and its fan-out to every shard, the mesh of lock-free queues
//!   with eventfd wake-ups, and the per-shard subscription index.
//! - [`presence`]: per-channel rosters kept by the channel's owner shard.
//! - [`history`]: [ext] per-channel retained messages, epochs and offsets, kept by the
//!   channel's owner shard (protocol §8.1).
//! - [`rpc`]: [ext] requests in flight, kept by the requester's shard (protocol §8.4).
//! - [`shard`]: the per-core services: threads, accept, connections, the client commands
//!   (one file each), delivery, outbound queues, the inbox and housekeeping tasks; all of
//!   the io_uring code (and the shard's only `unsafe`) is in `shard::ring`.
//! - [`rest`]: the REST control plane (hyper on its own thread): publish, tokens, peers,
//!   kick, usage, `/healthz`, `/metrics`. Reaches shards only through mesh messages.
//! - [`metrics`]: per-shard counters (one cache-padded block per shard, relaxed adds),
//!   summed and rendered as Prometheus text when scraped.
//!
//! # Dependencies between modules
//! `protocol` depends on nothing else here, `auth` only on its close codes; `router` and `presence` on those two;
//! `shard` on everything; `metrics` and `admission` on nothing; `rest` on `router` messages, `metrics`, `admission`
//! and the shards' shared half (`shard::Broker`), never on shard internals; nothing else
//! depends on `shard` but `main`.

pub(crate) mod admission;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod history;
pub mod metrics;
pub(crate) mod presence;
pub mod protocol;
pub mod rest;
pub mod router;
pub mod rpc;
pub mod shard;
