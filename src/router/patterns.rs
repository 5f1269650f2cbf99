//! The per-shard index of wildcard subscriptions (protocol.md §8.3): a trie keyed by channel
//! segments (the text between `/`), one per app.
//!
//! A pattern is split at its `/` (a `/` is never part of an escape, so this split is exact).
//! Each segment is one edge:
//! - a segment without wildcard is a **literal** edge (a hash-map child, keyed by the
//!   unescaped text; the empty segment of `a//b` too);
//! - a segment that is exactly `*` is the node's **star** edge: exactly one channel segment;
//! - a segment that is exactly `**` is the node's **double-star** edge: one or more channel
//!   segments (the text between two `/` may itself contain `/`). A double-star node stays
//!   active while further segments are read (a self-loop);
//! - a segment that mixes a wildcard with other text (`b-*`, `*.md`, `x**`) stops the walk:
//!   the rest of the pattern (from that segment on) is compiled as a whole glob and kept in
//!   the node's **residuals**, matched against the rest of the channel. Residuals are
//!   indexed by the literal text before their first `*` ([`Residuals`]), so only those
//!   whose prefix starts the channel's segment are tested.
//!
//! Matching a publication simulates the trie as an NFA over the channel's segments: the set
//! of active nodes (deduplicated by a per-node stamp) advances one segment at a time through
//! literal lookups, the star edge and the double-star edge. Work per publication is the
//! number of nodes visited, which only counts nodes whose path matches a prefix of the
//! channel: a pattern whose first literal segment differs from the channel's costs nothing
//! (one missed hash lookup is shared by all of them). It is bounded by
//! `segments × live nodes` whatever the patterns (no backtracking, no exponential case).
//! Residual globs are the one per-pattern cost, and only for patterns that share the
//! literal path leading to them and the literal start of their mixed segment (patterns
//! whose mixed segment starts with `*`, like `*.md`, are all tested at their node).
//!
//! The active-node lists are scratch vectors owned by the trie and reused: matching does
//! not allocate once they have grown to the largest active set seen. Nodes live in a slab
//! with a free list; a node left with no subscription, residual or child is pruned at once,
//! and the slab is released when the trie empties ([`PatternIndex::shrink`] also compacts
//! a slab whose live nodes fell below a quarter of it).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
};

use ahash::RandomState;

use super::ConnId;
use crate::auth::{
    glob::{Pattern, PatternError},
    AppId,
};

/// Why a pattern subscription could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrieError {
    /// The pattern (or one of its segments) is not a valid glob.
    #[error("invalid pattern: {0}")]
    Glob(#[from] PatternError),
    /// The app id is outside the index.
    #[error("unknown app")]
    UnknownApp,
    /// A node the walk just created or visited is missing (a bug).
    #[error("pattern trie node missing")]
    Corrupt,
}

/// One pattern subscription of one connection.
#[derive(Debug)]
pub struct Member<H> {
    /// The subscribing connection.
    pub conn: ConnId,
    /// `includeSenderMetadata`.
    pub include_meta: bool,
    /// Handle to deliver frames.
    pub handle: H,
}

/// The connections subscribed to one pattern: a dense list for delivery and a position
/// map for O(1) removal.
#[derive(Debug)]
struct Members<H> {
    list: Vec<Member<H>>,
    pos: HashMap<ConnId, u32, RandomState>,
}

impl<H> Members<H> {
    fn new() -> Self {
        Members {
            list: Vec::new(),
            pos: HashMap::default(),
        }
    }

    /// Adds or replaces; true when new.
    fn insert(&mut self, m: Member<H>) -> bool {
        if let Some(&i) = self.pos.get(&m.conn) {
            self.list[i as usize] = m;
            false
        } else {
            self.pos.insert(m.conn, self.list.len() as u32);
            self.list.push(m);
            true
        }
    }

    fn remove(&mut self, conn: ConnId) -> Option<Member<H>> {
        let i = self.pos.remove(&conn)? as usize;
        let removed = self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.pos.insert(moved.conn, i as u32);
        }
        if let Some(keep) = super::index::shrink_target(self.list.capacity(), self.list.len(), 16) {
            self.list.shrink_to(keep);
            self.pos.shrink_to(keep);
        }
        Some(removed)
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A pattern's tail that is not made of whole-segment edges, matched as one glob.
#[derive(Debug)]
struct Residual<H> {
    /// The tail's source text (the key for insert and remove).
    src: Box<str>,
    /// The compiled tail.
    glob: Pattern,
    members: Members<H>,
    /// Publication stamp: a node active at several positions tests its residuals once
    /// per position but reports a residual's members once per publication.
    reported: Cell<u64>,
}

/// A node's residual globs, indexed by the literal text their first segment starts with
/// (unescaped, up to the first `*`): a publication looks up each distinct prefix length of
/// the node in its own segment, so residuals whose prefix differs from the channel's cost
/// one missed hash lookup per length, not one glob test each. Residuals starting with a
/// wildcard (`*-x`) share the empty prefix and are all tried.
#[derive(Debug)]
struct Residuals<H> {
    by_prefix: HashMap<Box<str>, Vec<Residual<H>>, RandomState>,
    /// Distinct prefix lengths present, ascending.
    lens: Vec<usize>,
}

impl<H> Residuals<H> {
    fn new() -> Self {
        Residuals {
            by_prefix: HashMap::default(),
            lens: Vec::new(),
        }
    }

    fn find_mut(&mut self, src: &str) -> Option<&mut Residual<H>> {
        self.by_prefix
            .get_mut(literal_prefix(src).as_str())?
            .iter_mut()
            .find(|r| &*r.src == src)
    }

    fn push(&mut self, r: Residual<H>) {
        let prefix = literal_prefix(&r.src);
        if let Err(at) = self.lens.binary_search(&prefix.len()) {
            self.lens.insert(at, prefix.len());
        }
        self.by_prefix
            .entry(prefix.into_boxed_str())
            .or_default()
            .push(r);
    }

    /// Removes `conn` from the residual `src`, and the residual when it has no member left.
    fn remove(&mut self, src: &str, conn: ConnId) -> Option<Member<H>> {
        let prefix = literal_prefix(src);
        let list = self.by_prefix.get_mut(prefix.as_str())?;
        let i = list.iter().position(|r| &*r.src == src)?;
        let removed = list[i].members.remove(conn);
        if list[i].members.is_empty() {
            list.swap_remove(i);
            if list.is_empty() {
                self.by_prefix.remove(prefix.as_str());
                if !self.by_prefix.keys().any(|k| k.len() == prefix.len()) {
                    self.lens.retain(|l| *l != prefix.len());
                }
            }
        }
        removed
    }

    fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Every residual whose prefix starts `seg` (the channel's current segment).
    fn candidates<'a>(&'a self, seg: &'a str) -> impl Iterator<Item = &'a Residual<H>> + 'a {
        self.lens
            .iter()
            .take_while(move |l| **l <= seg.len())
            .filter_map(move |l| seg.get(..*l).and_then(|p| self.by_prefix.get(p)))
            .flatten()
    }
}

/// The unescaped literal text a glob starts with, up to its first `*`.
fn literal_prefix(glob: &str) -> String {
    let mut out = String::new();
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => break,
            },
            '*' | '/' => break,
            c => out.push(c),
        }
    }
    out
}

/// The edge a node hangs from (to unlink it from its parent when it is pruned).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edge {
    Root,
    Lit(Box<str>),
    Star,
    DStar,
}

#[derive(Debug)]
struct Node<H> {
    parent: u32,
    edge: Edge,
    lit: HashMap<Box<str>, u32, RandomState>,
    star: Option<u32>,
    dstar: Option<u32>,
    /// Patterns ending exactly at this node.
    members: Members<H>,
    /// Residual globs, boxed and absent until the first (most nodes have none).
    residual: Option<Box<Residuals<H>>>,
    /// Step stamp: the node is already in the next active set.
    seen: Cell<u64>,
}

impl<H> Node<H> {
    fn new(parent: u32, edge: Edge) -> Self {
        Node {
            parent,
            edge,
            lit: HashMap::default(),
            star: None,
            dstar: None,
            members: Members::new(),
            residual: None,
            seen: Cell::new(0),
        }
    }

    fn is_empty(&self) -> bool {
        self.lit.is_empty()
            && self.star.is_none()
            && self.dstar.is_none()
            && self.members.is_empty()
            && self.residual.as_ref().is_none_or(|r| r.is_empty())
    }
}

/// Reused matching buffers.
#[derive(Debug, Default)]
struct Scratch {
    cur: Vec<u32>,
    next: Vec<u32>,
}

/// One segment of a pattern, classified.
enum Seg<'a> {
    Lit(String),
    Star,
    DStar,
    /// A mixed segment: the tail from here on (source text).
    Tail(&'a str),
}

/// Splits a pattern's source into classified segments. The last element may be a tail.
fn segments(src: &str) -> Result<Vec<Seg<'_>>, PatternError> {
    let mut out = Vec::new();
    let mut offset = 0;
    for s in src.split('/') {
        let seg = match s {
            "*" => Seg::Star,
            "**" => Seg::DStar,
            "" => Seg::Lit(String::new()),
            _ => {
                let p = Pattern::parse(s)?;
                match p.literal() {
                    Some(l) => Seg::Lit(l.to_owned()),
                    None => {
                        out.push(Seg::Tail(&src[offset..]));
                        return Ok(out);
                    }
                }
            }
        };
        out.push(seg);
        offset += s.len() + 1;
    }
    Ok(out)
}

/// The wildcard-subscription trie of one app.
#[derive(Debug)]
struct Trie<H> {
    /// Slab; index 0 is the root and is never freed.
    nodes: Vec<Option<Node<H>>>,
    free: Vec<u32>,
}

const ROOT: u32 = 0;

impl<H> Trie<H> {
    fn new() -> Self {
        Trie {
            nodes: vec![Some(Node::new(ROOT, Edge::Root))],
            free: Vec::new(),
        }
    }

    fn node(&self, i: u32) -> Option<&Node<H>> {
        self.nodes.get(i as usize).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, i: u32) -> Option<&mut Node<H>> {
        self.nodes.get_mut(i as usize).and_then(Option::as_mut)
    }

    fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn alloc(&mut self, parent: u32, edge: Edge) -> u32 {
        let n = Node::new(parent, edge);
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = Some(n);
                i
            }
            None => {
                self.nodes.push(Some(n));
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// The child of `at` along `seg`, created if `create`.
    fn child(&mut self, at: u32, seg: &Seg<'_>, create: bool) -> Option<u32> {
        let node = self.node(at)?;
        let existing = match seg {
            Seg::Lit(l) => node.lit.get(l.as_str()).copied(),
            Seg::Star => node.star,
            Seg::DStar => node.dstar,
            Seg::Tail(_) => return None,
        };
        if existing.is_some() || !create {
            return existing;
        }
        let edge = match seg {
            Seg::Lit(l) => Edge::Lit(l.as_str().into()),
            Seg::Star => Edge::Star,
            _ => Edge::DStar,
        };
        let c = self.alloc(at, edge.clone());
        let node = self.node_mut(at)?;
        match edge {
            Edge::Lit(l) => {
                node.lit.insert(l, c);
            }
            Edge::Star => node.star = Some(c),
            _ => node.dstar = Some(c),
        }
        Some(c)
    }

    fn insert(&mut self, src: &str, m: Member<H>) -> Result<bool, TrieError> {
        let segs = segments(src)?;
        let mut at = ROOT;
        for seg in &segs {
            if let Seg::Tail(tail) = seg {
                let glob = Pattern::parse(tail)?;
                let node = self.node_mut(at).ok_or(TrieError::Corrupt)?;
                let res = node
                    .residual
                    .get_or_insert_with(|| Box::new(Residuals::new()));
                if let Some(r) = res.find_mut(tail) {
                    return Ok(r.members.insert(m));
                }
                let mut members = Members::new();
                members.insert(m);
                res.push(Residual {
                    src: (*tail).into(),
                    glob,
                    members,
                    reported: Cell::new(0),
                });
                return Ok(true);
            }
            at = self.child(at, seg, true).ok_or(TrieError::Corrupt)?;
        }
        let node = self.node_mut(at).ok_or(TrieError::Corrupt)?;
        Ok(node.members.insert(m))
    }

    fn remove(&mut self, src: &str, conn: ConnId) -> Option<Member<H>> {
        let segs = segments(src).ok()?;
        let mut at = ROOT;
        let mut removed = None;
        for seg in &segs {
            if let Seg::Tail(tail) = seg {
                let node = self.node_mut(at)?;
                let res = node.residual.as_mut()?;
                removed = res.remove(tail, conn);
                if res.is_empty() {
                    node.residual = None;
                }
                break;
            }
            at = self.child(at, seg, false)?;
        }
        if !matches!(segs.last(), Some(Seg::Tail(_))) {
            removed = self.node_mut(at)?.members.remove(conn);
        }
        self.prune(at);
        removed
    }

    /// Frees `at` and its ancestors while they are empty (never the root).
    fn prune(&mut self, mut at: u32) {
        while at != ROOT {
            let Some(node) = self.node(at) else { return };
            if !node.is_empty() {
                return;
            }
            let (parent, edge) = (node.parent, node.edge.clone());
            self.nodes[at as usize] = None;
            self.free.push(at);
            if let Some(p) = self.node_mut(parent) {
                match edge {
                    Edge::Lit(l) => {
                        p.lit.remove(&l);
                        if let Some(k) =
                            super::index::shrink_target(p.lit.capacity(), p.lit.len(), 16)
                        {
                            p.lit.shrink_to(k);
                        }
                    }
                    Edge::Star => p.star = None,
                    Edge::DStar => p.dstar = None,
                    Edge::Root => {}
                }
            }
            at = parent;
        }
        if self.live() == 1 {
            // Only the root is left: give the slab back.
            self.nodes.truncate(1);
            self.nodes.shrink_to_fit();
            self.free = Vec::new();
        }
    }

    /// Rebuilds the slab densely when its live nodes fell below a quarter of it.
    fn compact(&mut self) {
        if self.nodes.len() <= 4 * self.live() + 64 {
            return;
        }
        let mut map = vec![u32::MAX; self.nodes.len()];
        let mut next = 0u32;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_some() {
                map[i] = next;
                next += 1;
            }
        }
        let old = std::mem::take(&mut self.nodes);
        self.nodes = old
            .into_iter()
            .flatten()
            .map(|mut n| {
                n.parent = map[n.parent as usize];
                n.lit.values_mut().for_each(|c| *c = map[*c as usize]);
                n.star = n.star.map(|c| map[c as usize]);
                n.dstar = n.dstar.map(|c| map[c as usize]);
                Some(n)
            })
            .collect();
        self.free = Vec::new();
    }

    /// Calls `f` once for every member whose pattern matches `channel`; returns the number
    /// of node visits (the matching cost).
    fn for_each_match(
        &self,
        channel: &str,
        stamp: &mut u64,
        pub_stamp: u64,
        scratch: &mut Scratch,
        mut f: impl FnMut(&Member<H>),
    ) -> usize {
        let Scratch { cur, next } = scratch;
        cur.clear();
        cur.push(ROOT);
        let mut visits = 1;
        let mut rest = Some(channel);
        while let Some(r) = rest {
            if cur.is_empty() {
                return visits;
            }
            let (seg, after) = match r.split_once('/') {
                Some((s, a)) => (s, Some(a)),
                None => (r, None),
            };
            *stamp += 1;
            let step = *stamp;
            next.clear();
            for &i in cur.iter() {
                let Some(n) = self.node(i) else { continue };
                for res in n.residual.iter().flat_map(|x| x.candidates(seg)) {
                    if res.reported.get() != pub_stamp && res.glob.matches(r) {
                        res.reported.set(pub_stamp);
                        res.members.list.iter().for_each(&mut f);
                    }
                }
                let mut push = |c: u32| {
                    if let Some(cn) = self.node(c) {
                        if cn.seen.get() != step {
                            cn.seen.set(step);
                            next.push(c);
                        }
                    }
                };
                if n.edge == Edge::DStar {
                    push(i); // `**` absorbs this segment too
                }
                if !n.lit.is_empty() {
                    if let Some(&c) = n.lit.get(seg) {
                        push(c);
                    }
                }
                if let Some(c) = n.star {
                    push(c);
                }
                if let Some(c) = n.dstar {
                    push(c);
                }
            }
            visits += next.len();
            std::mem::swap(cur, next);
            rest = after;
        }
        for &i in cur.iter() {
            if let Some(n) = self.node(i) {
                n.members.list.iter().for_each(&mut f);
            }
        }
        visits
    }
}

/// The wildcard subscriptions of one shard, all apps.
#[derive(Debug)]
pub struct PatternIndex<H> {
    apps: Vec<Trie<H>>,
    /// Pattern subscriptions, all apps: zero means publications skip the trie.
    len: usize,
    scratch: RefCell<Scratch>,
    /// Step counter for the nodes' `seen` stamps.
    step: Cell<u64>,
    /// Publication counter for the residuals' `reported` stamps.
    publications: Cell<u64>,
}

impl<H> PatternIndex<H> {
    /// An empty index for `apps` tenants.
    pub fn new(apps: usize) -> Self {
        PatternIndex {
            apps: (0..apps).map(|_| Trie::new()).collect(),
            len: 0,
            scratch: RefCell::default(),
            step: Cell::new(0),
            publications: Cell::new(0),
        }
    }

    /// True when no connection of this shard has a pattern subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pattern subscriptions, all apps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Live trie nodes, all apps (roots included).
    pub fn node_count(&self) -> usize {
        self.apps.iter().map(Trie::live).sum()
    }

    /// Live trie nodes other than the roots: zero when no pattern is subscribed.
    pub fn branch_nodes(&self) -> usize {
        self.node_count() - self.apps.len()
    }

    /// Adds or replaces `m.conn`'s subscription to the pattern `src` (already validated
    /// by [`Pattern::parse`]). True when it is new.
    pub fn insert(&mut self, app: AppId, src: &str, m: Member<H>) -> Result<bool, TrieError> {
        let trie = self
            .apps
            .get_mut(app.0 as usize)
            .ok_or(TrieError::UnknownApp)?;
        let new = trie.insert(src, m)?;
        if new {
            self.len += 1;
        }
        Ok(new)
    }

    /// Removes `conn`'s subscription to `src`, pruning emptied nodes.
    pub fn remove(&mut self, app: AppId, src: &str, conn: ConnId) -> Option<Member<H>> {
        let removed = self.apps.get_mut(app.0 as usize)?.remove(src, conn);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` for every member (each once) whose pattern matches `channel`, and returns
    /// the number of trie nodes visited. No allocation once the scratch lists have grown.
    pub fn for_each_match(&self, app: AppId, channel: &str, f: impl FnMut(&Member<H>)) -> usize {
        let Some(trie) = self.apps.get(app.0 as usize) else {
            return 0;
        };
        let pub_stamp = self.publications.get() + 1;
        self.publications.set(pub_stamp);
        let mut step = self.step.get();
        let mut scratch = self.scratch.borrow_mut();
        let visits = trie.for_each_match(channel, &mut step, pub_stamp, &mut scratch, f);
        self.step.set(step);
        visits
    }

    /// Gives back memory after a crowd left: compacts sparse slabs and the scratch lists.
    pub fn shrink(&mut self) {
        self.apps.iter_mut().for_each(Trie::compact);
        let mut s = self.scratch.borrow_mut();
        if s.cur.capacity() > 1024 {
            *s = Scratch::default();
        }
    }
}

#[cfg(test)]
mod tests;
