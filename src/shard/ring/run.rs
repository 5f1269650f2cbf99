//! The tasks that drive the ring: [`run`] sleeps on the ring's eventfd and drains
//! completions; [`flusher`] starts the writes of connections that got frames from anywhere
//! other than the ring's own drain (the mesh inbox, timers, new connections).

use std::{os::fd::AsRawFd, rc::Rc};

use super::{complete::BUDGET, eventfd::EventFd};
use crate::shard::Shard;

/// The shard's flusher: once per scheduler pass, however many frames were queued, starts
/// the listed connections' writes ([`super::Ring::flush`]).
pub(crate) async fn flusher(shard: Rc<Shard>) {
    loop {
        std::future::poll_fn(|cx| {
            if shard.tx.dirty.borrow().is_empty() {
                shard.tx.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        shard.ring.flush(&shard);
    }
}

/// Waits on the ring's eventfd and drains completions, until the process exits.
pub(crate) async fn run(shard: Rc<Shard>) {
    let ring = &shard.ring;
    let Ok(mut eventfd) = EventFd::dup(ring.eventfd.as_raw_fd(), shard.id) else {
        tracing::error!(
            shard = shard.id.0,
            "cannot dup eventfd; connections will not be read"
        );
        return;
    };
    loop {
        // Reset the counter before draining: a completion posted during the drain makes the
        // next read return at once, so none is left unseen.
        eventfd.wait().await;
        while ring.drain(&shard) >= BUDGET || ring.pending() {
            tokio::task::yield_now().await;
        }
    }
}
