//! Which other nodes are alive (protocol §9): every node publishes a heartbeat each
//! `heartbeat_ms`; a node not heard from for `node_timeout_ms` is gone, and so is an
//! incarnation replaced by a newer one under the same name (a node restarted faster than
//! the timeout). No I/O here: the link feeds it what it hears and the time, and acts on
//! what it answers.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// The other nodes' incarnations heard from.
#[derive(Debug)]
pub struct Nodes {
    timeout: Duration,
    /// Per incarnation: its name once a heartbeat told it, and when it was last heard.
    seen: HashMap<u64, (Option<String>, Instant)>,
    /// Per name, its current incarnation.
    names: HashMap<String, u64>,
}

/// What hearing from a node means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Heard {
    /// The incarnation was not known (new, or back after it was declared gone), or this is
    /// its first heartbeat: ask it for its memberships (the link asks on heartbeats).
    pub new: bool,
    /// An older incarnation of the same name, now gone.
    pub replaced: Option<u64>,
}

impl Nodes {
    /// No node known yet.
    pub fn new(timeout: Duration) -> Self {
        Nodes {
            timeout,
            seen: HashMap::new(),
            names: HashMap::new(),
        }
    }

    /// Heard from `origin` at `now`: a heartbeat (with its `name`) or any other message
    /// (`name` None).
    pub fn heard(&mut self, origin: u64, name: Option<&str>, now: Instant) -> Heard {
        let mut out = Heard::default();
        let entry = self.seen.entry(origin).or_insert_with(|| {
            out.new = true;
            (None, now)
        });
        entry.1 = now;
        if let (None, Some(n)) = (&entry.0, name) {
            out.new = true;
            entry.0 = Some(n.to_owned());
            if let Some(old) = self.names.insert(n.to_owned(), origin) {
                if old != origin && self.seen.remove(&old).is_some() {
                    out.replaced = Some(old);
                }
            }
        }
        out
    }

    /// The incarnations not heard from for the timeout, forgotten.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let timeout = self.timeout;
        let gone: Vec<u64> = self
            .seen
            .iter()
            .filter(|(_, (_, last))| now.duration_since(*last) >= timeout)
            .map(|(o, _)| *o)
            .collect();
        for o in &gone {
            if let Some((Some(name), _)) = self.seen.remove(o) {
                if self.names.get(&name) == Some(o) {
                    self.names.remove(&name);
                }
            }
        }
        gone
    }

    /// Nodes alive.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no other node is known.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The names of the nodes alive (those a heartbeat named), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.seen.values().filter_map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_expire_and_come_back_as_new() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut n = Nodes::new(ms(2_500));
        assert!(n.heard(1, Some("a"), t0).new);
        assert!(!n.heard(1, None, t0 + ms(1_000)).new);
        assert_eq!(n.expire(t0 + ms(3_000)), Vec::<u64>::new());
        assert_eq!(n.expire(t0 + ms(3_500)), vec![1]);
        assert!(n.is_empty());
        assert!(
            n.heard(1, Some("a"), t0 + ms(3_600)).new,
            "back after it was gone"
        );
    }

    #[test]
    fn a_restarted_node_replaces_its_old_incarnation() {
        let t0 = Instant::now();
        let mut n = Nodes::new(Duration::from_secs(3));
        n.heard(1, Some("a"), t0);
        n.heard(7, Some("b"), t0);
        let h = n.heard(2, Some("a"), t0);
        assert_eq!(
            h,
            Heard {
                new: true,
                replaced: Some(1)
            }
        );
        assert_eq!(n.len(), 2);
        assert_eq!(n.names(), ["a", "b"]);
        // A message from an incarnation before its heartbeat: known (it expires if it goes
        // silent), nameless until then; its first heartbeat still counts as new, so that
        // the link asks it for its memberships.
        assert!(n.heard(9, None, t0).new);
        assert!(n.heard(9, Some("c"), t0).new);
        assert_eq!(n.heard(9, Some("c"), t0), Heard::default());
    }
}
