//! Periodic per-shard sweep: server pings, idle drops, and close deadlines.
//!
//! One timer per shard (not per connection). The tick is a quarter of the shortest of the
//! ping interval, idle timeout and close timeout, clamped to 10 ms..1 s: at the defaults
//! the shard wakes 4 times a second, which costs nothing measurable when idle.

use std::{rc::Rc, time::Instant};

use bytes::Bytes;

use super::{outbound::CloseState, Shard};
use crate::protocol::close;

/// A WebSocket ping with an empty payload, shared by every connection.
static PING: [u8; 2] = [0x89, 0x00];

/// Runs until the process exits.
pub async fn run(shard: Rc<Shard>) {
    let l = &shard.shared.limits;
    let tick = (l.ping_interval.min(l.idle_timeout).min(l.close_timeout) / 4).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(1),
    );
    let ping = Bytes::from_static(&PING);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = Instant::now();
        if shard.id.0 == 0 {
            shard.shared.admission.prune(l.upgrade_window, now);
        }
        let st = shard.state.borrow();
        for e in st.conns.values() {
            let c = &e.shared;
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
