//! ringcast: a thread-per-core io_uring WebSocket pub/sub broker speaking the
//! Metered Realtime v1 protocol (see docs/protocol.md).
//!
//! # Layout
//! (filled in as modules land)

#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod protocol;
