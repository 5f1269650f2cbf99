//! Periodic per-shard sweep: server pings, idle drops, close deadlines, and (once a
//! second) expired history entries.
//!
//! One timer per shard (not per connection). The tick is a quarter of the shortest of the
//! ping interval, idle timeout and close timeout, clamped to 10 ms..1 s: at the defaults
//! the shard wakes 4 times a second, which costs nothing measurable when idle.

use std::{
    cmp::Reverse,
    future::{poll_fn, Future},
    rc::Rc,
    task::Poll,
    time::Instant,
};

use super::{outbound::CloseState, Shard};
use crate::{
    protocol::{close, encode},
    router::index::shrink_target,
};

/// Runs until the process exits.
pub(crate) async fn run(shard: Rc<Shard>) {
    let l = &shard.broker.limits;
    let tick = (l.ping_interval.min(l.idle_timeout).min(l.close_timeout) / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let ping = encode::ws_ping_empty();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_history_sweep = Instant::now();
    loop {
        interval.tick().await;
        let now = Instant::now();
        prune_expiries(&shard);
        shard.shrink_tables();
        // [ext] History TTL, once a second (reads expire entries on their own too).
        if now.duration_since(last_history_sweep) >= std::time::Duration::from_secs(1) {
            last_history_sweep = now;
            shard.sweep_histories();
        }
        shard.ring.retry(&shard);
        let st = shard.state.borrow();
        for e in st.conns.values() {
            let c = &e.handle;
            match c.state() {
                CloseState::Open => {
                    if now.duration_since(c.last_seen.get()) >= l.idle_timeout {
                        c.close(close::GOING_AWAY, "idle timeout", false);
                    } else if now.duration_since(c.last_ping.get()) >= l.ping_interval {
                        c.last_ping.set(now);
                        c.send(&ping);
                    }
                }
                CloseState::Closing(_) | CloseState::Finished => {
                    if c.closing_since()
                        .is_some_and(|t| now.duration_since(t) >= l.close_timeout)
                    {
                        c.abort();
                    }
                }
            }
        }
    }
}

/// Drops the expiry entries of connections that are gone, once they outnumber the live
/// ones: a closed connection's entry would otherwise stay until its token's `exp` (hours),
/// and connection churn would grow the heap without bound. O(entries), at most once per
/// doubling.
fn prune_expiries(shard: &Shard) {
    let live = shard.state.borrow().conns.len();
    let mut heap = shard.expiries.borrow_mut();
    if heap.len() > 2 * live + 1024 {
        let st = shard.state.borrow();
        heap.retain(|Reverse((_, id))| st.conns.contains_key(id));
        if let Some(n) = shrink_target(heap.capacity(), heap.len(), 1024) {
            heap.shrink_to(n);
        }
    }
}

/// Closes connections whose token expired (4002), at their deadline: one timer per shard
/// instead of one task per connection. Runs until the process exits.
pub(crate) async fn expiry(shard: Rc<Shard>) {
    loop {
        let next = shard.expiries.borrow().peek().map(|Reverse((t, _))| *t);
        match next {
            None => {
                poll_fn(|cx| {
                    if shard.expiries.borrow().is_empty() {
                        *shard.expiry_waker.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await
            }
            Some(at) => {
                let sleep = tokio::time::sleep_until(at.into());
                tokio::pin!(sleep);
                poll_fn(|cx| {
                    if shard
                        .expiries
                        .borrow()
                        .peek()
                        .is_some_and(|Reverse((t, _))| *t < at)
                    {
                        return Poll::Ready(()); // an earlier deadline arrived: sleep on that
                    }
                    *shard.expiry_waker.borrow_mut() = Some(cx.waker().clone());
                    sleep.as_mut().poll(cx)
                })
                .await;
                let now = Instant::now();
                loop {
                    let due = {
                        let mut heap = shard.expiries.borrow_mut();
                        match heap.peek() {
                            Some(Reverse((t, _))) if *t <= now => {
                                heap.pop().map(|Reverse((_, c))| c)
                            }
                            _ => None,
                        }
                    };
                    let Some(id) = due else { break };
                    let st = shard.state.borrow();
                    if let Some(e) = st.conns.get(&id) {
                        e.handle.close(close::TOKEN_EXPIRED, "token expired", false);
                    }
                }
            }
        }
    }
}
