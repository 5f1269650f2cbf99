//! The per-connection token bucket: a pure struct, the clock passed in.
//!
//! Refills continuously at `rate` tokens per second up to `burst`; each chargeable message
//! takes one token. State is two numbers kept in the connection's task (shard-local).

use std::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            burst: burst as f64,
            rate: rate_per_sec as f64,
            last: now,
        }
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-connection budget for client pings (WebSocket ping frames and `ping` messages
/// together): at most `limit` per one-second window. Separate from the [`TokenBucket`] so
/// that heartbeats never eat the publish budget; 8 bytes per connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct PingBudget {
    /// The window counted in (whole seconds of the shard's clock).
    second: u32,
    count: u32,
}

impl PingBudget {
    /// Counts one ping in second `second`; false when it is over `limit` (0: no limit).
    pub(crate) fn try_take(&mut self, second: u32, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if self.second != second {
            self.second = second;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        assert!((0..200).all(|_| b.try_take(t0)));
        assert!(!b.try_take(t0));
        // 10 ms refills one token at 100/s.
        assert!(b.try_take(t0 + Duration::from_millis(10)));
        assert!(!b.try_take(t0 + Duration::from_millis(10)));
        // A long pause refills only up to the burst.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!((0..1000).filter(|_| b.try_take(t1)).count(), 200);
    }

    #[test]
    fn ping_budget_per_second() {
        let mut p = PingBudget::default();
        assert!((0..20).all(|_| p.try_take(7, 20)));
        assert!(!p.try_take(7, 20));
        assert!(p.try_take(8, 20), "a new second starts a new window");
        assert!((0..1000).all(|_| p.try_take(9, 0)), "0 means unlimited");
    }

    proptest! {
        /// Over any schedule, accepted messages never exceed burst + rate * elapsed.
        #[test]
        fn never_exceeds_budget(rate in 1u32..1000, burst in 1u32..500, gaps in proptest::collection::vec(0u64..50_000, 1..500)) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut t = t0;
            let mut ok = 0u64;
            for g in gaps {
                t += Duration::from_micros(g);
                if b.try_take(t) { ok += 1; }
            }
            let elapsed = t.duration_since(t0).as_secs_f64();
            prop_assert!(ok as f64 <= burst as f64 + rate as f64 * elapsed + 1e-6);
        }
    }
}
