//! Admission by source address, shared by the WebSocket shards and the REST thread.
//!
//! - [`ip_key`]: the one place that decides what "one client" is: an IPv4 address, an
//!   IPv4-mapped IPv6 address as that IPv4 address, any other IPv6 address by its /64
//!   (one subscriber usually holds a whole /64, so counting single v6 addresses would let
//!   one host take 2^64 budgets).
//! - [`UpgradeThrottle`]: the per-key upgrade throttle (HTTP 429), a fixed-size lock-free
//!   count-min sketch with fixed windows, touched once per upgrade attempt.
//! - [`KeyCounts`]: how many live things (pending handshakes, REST connections) each key
//!   holds, in a map that forgets a key when its count returns to zero. Not synchronised:
//!   each shard owns its own, and the REST thread owns its own.
//!
//! Nothing here is on a per-message path.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use ahash::RandomState;

/// The unit per-IP limits count: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// An IPv4 address (also for IPv4-mapped IPv6, `::ffff:a.b.c.d`).
    V4(Ipv4Addr),
    /// The upper 64 bits (the /64 prefix) of an IPv6 address.
    V6(u64),
}

/// The key a source address is counted under (see the module doc).
pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpKey::V4(v4),
            None => IpKey::V6((u128::from(v6) >> 64) as u64),
        },
    }
}

/// Rows of the sketch: each key is counted in one slot per row.
const ROWS: usize = 2;
/// Slots per row in production: 2 × 32,768 × 8 B = 512 KiB for the whole broker.
pub const DEFAULT_WIDTH: usize = 1 << 15;

/// Per-key upgrade attempts per fixed window, estimated by a count-min sketch.
///
/// Each slot is one `AtomicU64`: the window index in the high 32 bits, the count in that
/// window in the low 32 bits. A key hashes (ahash, seeded randomly per process, so that
/// collisions cannot be planned offline) to one slot in each of the two rows (the low and
/// high halves of one 64-bit hash); an attempt bumps both slots (a slot still holding an
/// older window restarts at 1) and is allowed when the smaller of the two new counts is
/// within the limit. No lock, no allocation, no sweep: stale slots are simply overwritten
/// by the next window.
///
/// Collisions only add other keys' attempts to a slot, so the estimate is never below the
/// key's true count: a collision can make the limit stricter for a key (refused before its
/// own `limit` attempts, when both its slots are shared with busy keys), never looser.
/// Windows are fixed, aligned to the throttle's creation (process start), not to each
/// key's first attempt: a key can make up to `limit` attempts at the end of one window
/// and `limit` more at the start of the next.
#[derive(Debug)]
pub struct UpgradeThrottle {
    /// `ROWS` rows of `width` slots, row after row.
    slots: Box<[AtomicU64]>,
    width: usize,
    hasher: RandomState,
    epoch: Instant,
}

impl Default for UpgradeThrottle {
    fn default() -> Self {
        UpgradeThrottle::with_width(DEFAULT_WIDTH)
    }
}

impl UpgradeThrottle {
    /// A throttle with `width` slots per row (a power of two); windows start now.
    pub fn with_width(width: usize) -> UpgradeThrottle {
        assert!(
            width.is_power_of_two(),
            "sketch width must be a power of two"
        );
        UpgradeThrottle {
            slots: (0..ROWS * width).map(|_| AtomicU64::new(0)).collect(),
            width,
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Memory held by the slots, in bytes.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU64>()
    }

    /// Counts one attempt from `key`; false when it is over `limit` in the current window
    /// (`limit` 0: no limit, nothing counted).
    pub fn try_upgrade(&self, key: IpKey, limit: u32, window: Duration, now: Instant) -> bool {
        if limit == 0 {
            return true;
        }
        let w = window_index(now.saturating_duration_since(self.epoch), window);
        let h = self.hasher.hash_one(key);
        let mask = self.width - 1;
        let idx = [h as usize & mask, self.width + ((h >> 32) as usize & mask)];
        let mut estimate = u32::MAX;
        for i in idx {
            let slot = &self.slots[i];
            // Relaxed: the slot is a counter on its own, nothing else is published with it.
            let prev = match slot.fetch_update(Relaxed, Relaxed, |s| Some(bump(s, w))) {
                Ok(p) | Err(p) => p,
            };
            estimate = estimate.min(bump(prev, w) as u32);
        }
        estimate <= limit
    }
}

/// The window `elapsed` falls in (wraps after 2^32 windows; see [`bump`]).
fn window_index(elapsed: Duration, window: Duration) -> u32 {
    (elapsed.as_nanos() / window.as_nanos().max(1)) as u32
}

/// A slot after one more attempt in window `w`: counted on if the slot holds `w` (or a
/// later window, which a thread with an older clock reading can meet), else restarted at 1.
/// A slot last written exactly 2^32 windows ago looks current: at worst one window is
/// stricter for the keys in it.
fn bump(slot: u64, w: u32) -> u64 {
    let (sw, count) = ((slot >> 32) as u32, slot as u32);
    if sw == w || (sw.wrapping_sub(w) as i32) > 0 {
        (u64::from(sw) << 32) | u64::from(count.saturating_add(1))
    } else {
        (u64::from(w) << 32) | 1
    }
}

/// Live things per key, with a cap. A key's entry is removed when its count returns to
/// zero, so the map holds only keys with something live (bounded by the total cap of
/// whatever is counted).
#[derive(Debug, Default)]
pub struct KeyCounts {
    map: HashMap<IpKey, u32, RandomState>,
}

impl KeyCounts {
    /// Takes one for `key` unless it already holds `cap`; `cap` 0 means no cap (and then
    /// nothing is counted: do not call [`KeyCounts::release`] for it).
    pub fn try_acquire(&mut self, key: IpKey, cap: u32) -> bool {
        if cap == 0 {
            return true;
        }
        let n = self.map.entry(key).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back one taken by [`KeyCounts::try_acquire`].
    pub fn release(&mut self, key: IpKey) {
        if let Some(n) = self.map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.map.remove(&key);
            }
        }
    }

    /// What `key` holds (tests only: the broker never asks).
    #[cfg(test)]
    pub fn get(&self, key: IpKey) -> u32 {
        self.map.get(&key).copied().unwrap_or(0)
    }

    /// Keys holding something (tests only).
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = ip_key(v6("2001:db8:1:2::1"));
        assert_eq!(a, ip_key(v6("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_eq!(a, IpKey::V6(0x2001_0db8_0001_0002));
        assert_ne!(a, ip_key(v6("2001:db8:1:3::1")));
        let v4 = ip_key("192.0.2.7".parse().unwrap());
        assert_eq!(v4, IpKey::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(ip_key(v6("::ffff:192.0.2.7")), v4);
        assert_ne!(ip_key("192.0.2.8".parse().unwrap()), v4);
        // ::1 and ::2 share the /64 ::/64 (loopback is no exception).
        assert_eq!(ip_key(v6("::1")), ip_key(v6("::2")));
    }

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn sketch_respects_the_limit_and_resets_each_window() {
        let t = UpgradeThrottle::with_width(1024);
        let k = ip_key("10.0.0.1".parse().unwrap());
        let t0 = t.epoch;
        let ok = (0..100).filter(|_| t.try_upgrade(k, 10, W, t0)).count();
        assert_eq!(ok, 10);
        // Still refused late in the same window; another key is unaffected.
        assert!(!t.try_upgrade(k, 10, W, t0 + W - Duration::from_millis(1)));
        let other = ip_key("10.0.0.2".parse().unwrap());
        assert!(t.try_upgrade(other, 10, W, t0));
        // The next window starts from zero.
        let t1 = t0 + W;
        let ok = (0..100).filter(|_| t.try_upgrade(k, 10, W, t1)).count();
        assert_eq!(ok, 10);
        // Limit 0 is off.
        assert!((0..1000).all(|_| t.try_upgrade(k, 0, W, t1)));
        assert_eq!(t.bytes(), 2 * 1024 * 8);
    }

    #[test]
    fn sketch_collisions_only_make_it_stricter() {
        // Two slots per row: every key collides with most others.
        let t = UpgradeThrottle::with_width(2);
        let t0 = t.epoch;
        let limit = 5;
        let keys: Vec<IpKey> = (0..50u8)
            .map(|i| ip_key(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i))))
            .collect();
        let mut allowed = vec![0u32; keys.len()];
        for _ in 0..20 {
            for (i, k) in keys.iter().enumerate() {
                if t.try_upgrade(*k, limit, W, t0) {
                    allowed[i] += 1;
                }
            }
        }
        assert!(allowed.iter().all(|&n| n <= limit), "{allowed:?}");
        // 50 keys over 2×2 slots: at most 4 distinct slot counts reach the limit, so far
        // fewer than 50 × limit attempts pass.
        assert!(allowed.iter().sum::<u32>() <= 2 * 2 * limit, "{allowed:?}");
        // A wide sketch with the same keys counts each one exactly.
        let wide = UpgradeThrottle::with_width(1 << 15);
        for k in &keys {
            let ok = (0..20)
                .filter(|_| wide.try_upgrade(*k, limit, W, t0))
                .count();
            assert!(ok as u32 <= limit);
        }
    }

    #[test]
    fn a_thread_with_an_older_clock_does_not_reset_a_newer_window() {
        assert_eq!(bump(bump(0, 7), 7), (7 << 32) | 2);
        // Slot at window 8, attempt stamped window 7: counted on, not restarted.
        assert_eq!(bump((8 << 32) | 3, 7), (8 << 32) | 4);
        // Slot at window 6, attempt at 7: restarted.
        assert_eq!(bump((6 << 32) | 3, 7), (7 << 32) | 1);
        assert_eq!(bump(u64::from(u32::MAX), 0) as u32, u32::MAX, "saturates");
    }

    #[test]
    fn key_counts_cap_and_forget_keys_at_zero() {
        let mut c = KeyCounts::default();
        let a = ip_key("10.0.0.1".parse().unwrap());
        let b = ip_key(v6("2001:db8::1"));
        assert!(c.try_acquire(a, 2) && c.try_acquire(a, 2));
        assert!(!c.try_acquire(a, 2));
        assert!(c.try_acquire(ip_key(v6("::ffff:10.0.0.2")), 2));
        assert!(c.try_acquire(b, 1));
        assert!(!c.try_acquire(ip_key(v6("2001:db8::2")), 1), "same /64");
        assert_eq!((c.get(a), c.keys()), (2, 3));
        c.release(a);
        c.release(a);
        c.release(b);
        assert_eq!(c.keys(), 1);
        assert!(c.try_acquire(a, 0), "cap 0 is off");
        assert_eq!(c.get(a), 0, "and counts nothing");
    }
}
