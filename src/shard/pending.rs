//! Pending handshakes: sockets a shard accepted and has not yet upgraded or refused.
//!
//! Each one holds a descriptor and a task until its upgrade request is complete (or
//! `handshake_timeout_ms` passes), so slow or silent clients (slowloris) could otherwise
//! hold descriptors up to the process limit. Two caps, checked right after `accept`:
//! `max_pending_handshakes` per shard and `pending_handshakes_per_ip` per source key
//! ([`crate::admission::ip_key`]: IPv6 by /64) per shard. Over either, the socket is closed
//! at once, before anything is read, and counted in
//! `ringcast_handshakes_refused_total{reason}`.
//!
//! The counts are the shard's own (a [`RefCell`](std::cell::RefCell) in [`Shard`], no
//! lock, no atomic): the per-IP cap therefore applies per shard, and one address can hold
//! up to `shards × pending_handshakes_per_ip` pending handshakes in all.

use std::{net::IpAddr, rc::Rc};

use super::Shard;
use crate::{
    admission::{ip_key, IpKey, KeyCounts},
    metrics::HandshakeRefusal,
};

/// A shard's pending handshakes.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    total: usize,
    per_ip: KeyCounts,
}

impl Pending {
    /// Pending handshakes of the shard.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.total
    }

    /// Source keys with a pending handshake.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.per_ip.keys()
    }

    /// Takes a slot for `key`; `Ok(counted per key)`, or why not.
    fn try_take(
        &mut self,
        key: IpKey,
        max_total: usize,
        per_ip: u32,
    ) -> Result<bool, HandshakeRefusal> {
        if max_total != 0 && self.total >= max_total {
            return Err(HandshakeRefusal::ShardCap);
        }
        if !self.per_ip.try_acquire(key, per_ip) {
            return Err(HandshakeRefusal::IpCap);
        }
        self.total += 1;
        Ok(per_ip != 0)
    }

    fn release(&mut self, key: IpKey, counted_per_key: bool) {
        self.total -= 1;
        if counted_per_key {
            self.per_ip.release(key);
        }
    }
}

/// A pending handshake's place in the caps, given back when dropped (the upgrade was
/// answered, refused, timed out, or the peer left).
#[derive(Debug)]
pub(crate) struct PendingSlot {
    shard: Rc<Shard>,
    key: IpKey,
    counted_per_key: bool,
}

impl PendingSlot {
    /// The source key (for the upgrade throttle).
    pub(crate) fn key(&self) -> IpKey {
        self.key
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.shard
            .pending
            .borrow_mut()
            .release(self.key, self.counted_per_key);
    }
}

/// Admits a socket just accepted from `peer` as a pending handshake, or counts the refusal
/// (the caller closes the socket).
pub(crate) fn admit(shard: &Rc<Shard>, peer: IpAddr) -> Option<PendingSlot> {
    let l = &shard.broker.limits;
    let key = ip_key(peer);
    let taken = shard.pending.borrow_mut().try_take(
        key,
        l.max_pending_handshakes,
        l.pending_handshakes_per_ip,
    );
    match taken {
        Ok(counted_per_key) => Some(PendingSlot {
            shard: shard.clone(),
            key,
            counted_per_key,
        }),
        Err(why) => {
            shard.counters().handshake_refused(why);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_shard_and_per_key() {
        let mut p = Pending::default();
        let a = ip_key("10.0.0.1".parse().unwrap());
        let b = ip_key("10.0.0.2".parse().unwrap());
        assert_eq!(p.try_take(a, 3, 2), Ok(true));
        assert_eq!(p.try_take(a, 3, 2), Ok(true));
        assert_eq!(p.try_take(a, 3, 2), Err(HandshakeRefusal::IpCap));
        assert_eq!(p.try_take(b, 3, 2), Ok(true));
        assert_eq!(p.try_take(b, 3, 2), Err(HandshakeRefusal::ShardCap));
        p.release(a, true);
        assert_eq!((p.len(), p.keys()), (2, 2));
        p.release(a, true);
        p.release(b, true);
        assert_eq!((p.len(), p.keys()), (0, 0));
        // 0 turns a cap off.
        for _ in 0..10 {
            assert_eq!(p.try_take(a, 0, 0), Ok(false));
        }
        assert_eq!((p.len(), p.keys()), (10, 0));
    }
}
