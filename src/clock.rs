//! Wall-clock time for the code that needs it (token minting and expiry checks); the rest
//! of the crate takes `now` as a parameter so that it stays testable.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
