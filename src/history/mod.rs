//! [ext] Channel history (protocol.md §8.1), kept by each channel's owner shard
//! ([`crate::router::owner_of`]), the same shard that sequences its presence.
//!
//! A history channel's publications all pass through its owner, which numbers them
//! (gap-free offsets within an epoch), retains their payloads here and then fans each one
//! out to every shard (itself included) through the FIFO queues. That one sequencer is
//! what makes every subscriber on every shard see offset order, and what makes resume
//! exact: the owner answers a subscribe at a point of its sequence (offset K), the replay
//! holds offsets up to K, and every live publication after K travels behind that answer
//! in the same queue (`docs/design.md`, "History and resume").
//!
//! # Memory
//! A retained message is its JSON payload, copied into the channel's chunks ([`chunks`]:
//! back to back, no allocation per message), plus a 20-byte [`Entry`] in the channel's ring
//! (blocks of 256 entries, [`ring`]); it is counted as payload length +
//! [`ENTRY_OVERHEAD`] against the shard's share of `history_max_bytes`. Past that share
//! the oldest entries of the largest histories go first, down to 15/16 of the share, so
//! the O(channels) search for the largest runs once per 1/16 of the share at most.
//!
//! Pure data structure: no sockets, no runtime; the shard calls it and sends what it
//! returns.

mod chunks;
mod ring;

use chunks::{At, Chunks};
use ring::Ring;
use std::{collections::HashMap, sync::Arc, time::Instant};

use ahash::RandomState;
use bytes::Bytes;

use crate::{
    auth::{keys::HistoryRule, AppId},
    metrics::HistoryEviction,
    protocol::encode::history::{self as enc, Item, MessageLayout},
};

/// What each retained message counts beyond its payload length: the [`Entry`] (20 B), its
/// share of the ring's spare capacity and of the chunks' spare room.
pub const ENTRY_OVERHEAD: usize = 64;

/// Resolution of the retention clock: `at` is rounded up to it and "now" down, so a
/// message expires between `ttl_secs` and `ttl_secs` + 2 ticks after it was published
/// (a `u32` of ticks lasts 497 days).
pub const TICK_MS: u64 = 10;

/// One retained message.
#[derive(Debug)]
struct Entry {
    /// Where the `message` payload is in the channel's [`Chunks`] (JSON, no WebSocket
    /// header), with `fromMetadata` when the publisher had metadata (see
    /// `protocol::encode::history` for the layout).
    json: At,
    /// The payload's length (a frame is far below 4 GiB: `max_message_bytes`).
    len: u32,
    /// When it was published, in [`TICK_MS`] ticks since the store was created, rounded
    /// up (so that it never expires early).
    at: u32,
    /// Where `data` starts in `json` (at most about 2,400: after the escaped channel, ≤ 256
    /// bytes, and peer id, ≤ 128 bytes).
    data_at: u16,
    /// Length of the `fromMetadata` JSON at the end of `json` (peer metadata is at most
    /// 4 KiB); 0 when there is none (metadata is an object: never empty).
    meta_len: u16,
}

impl Entry {
    /// The payload, from the channel's chunks.
    fn json<'a>(&self, chunks: &'a Chunks) -> &'a [u8] {
        chunks.get(self.json, self.len as usize)
    }

    /// Where `,"fromMetadata":` starts in the payload; 0 when there is none.
    fn meta_at(&self) -> usize {
        match self.meta_len {
            0 => 0,
            m => self.len as usize - 1 - usize::from(m) - enc::MSG_META.len(),
        }
    }

    fn cost(&self) -> usize {
        self.len as usize + ENTRY_OVERHEAD
    }

    /// The `message` frame for a subscriber, with or without `fromMetadata`. Copies the
    /// payload once into a new frame (retained payloads are stored without a WebSocket
    /// header and with metadata, to keep a retained message at payload + 64 B).
    fn frame(&self, chunks: &Chunks, include_meta: bool) -> Bytes {
        let json = self.json(chunks);
        match (self.meta_at(), include_meta) {
            (0, _) | (_, true) => enc::text_parts(json, b""),
            (m, false) => enc::text_parts(&json[..m], b"}"),
        }
    }

    /// The parts the `history` answer lists.
    fn item<'a>(&self, json: &'a [u8], offset: u64, from: (usize, usize)) -> Item<'a> {
        let data_end = match self.meta_at() {
            0 => json.len() - 1,
            m => m,
        };
        Item {
            offset,
            from: &json[from.0..from.1],
            data: &json[self.data_at as usize..data_end],
            meta: match self.meta_at() {
                0 => None,
                m => Some(&json[m + enc::MSG_META.len()..json.len() - 1]),
            },
        }
    }
}

/// The history of one channel.
#[derive(Debug)]
struct ChannelHistory {
    /// Changes whenever this record is created afresh.
    epoch: Arc<str>,
    /// The last offset given out (0: none yet).
    last: u64,
    /// Size and TTL.
    rule: HistoryRule,
    /// Retained messages: the `i`-th has offset `first() + i`.
    entries: Ring<Entry>,
    /// Their payloads.
    chunks: Chunks,
    /// Sum of the entries' costs.
    bytes: usize,
}

impl ChannelHistory {
    /// Offset of the oldest retained entry (`last + 1` when none is).
    fn first(&self) -> u64 {
        self.last + 1 - self.entries.len() as u64
    }

    fn pop_front(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(e) => {
                self.chunks
                    .release_before(self.entries.front().map(|f| f.json.chunk));
                let c = e.cost();
                self.bytes -= c;
                c
            }
            None => 0,
        }
    }

    /// Index in `entries` of the first entry after `offset`.
    fn index_after(&self, offset: u64) -> usize {
        (offset.saturating_add(1).saturating_sub(self.first()) as usize).min(self.entries.len())
    }
}

/// What a subscribe to a history channel is answered with.
#[derive(Debug)]
pub struct Resume {
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// The last offset published (0 if none): the ack's `offset`, and the point after
    /// which live messages follow the replay.
    pub last: u64,
    /// `recovered`, when the subscribe had `since`.
    pub recovered: Option<bool>,
    /// The replayed `message` frames, in offset order.
    pub frames: Vec<Bytes>,
}

/// A resume position: `since` of a subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    /// The epoch the client saw.
    pub epoch: Box<str>,
    /// The last offset it saw.
    pub offset: u64,
}

/// The histories of every channel this shard owns.
#[derive(Debug)]
pub struct Histories {
    channels: HashMap<(AppId, Arc<str>), ChannelHistory, RandomState>,
    /// Sum of every channel's `bytes`.
    bytes: usize,
    /// Retained messages, all channels.
    messages: usize,
    /// This shard's share of `history_max_bytes`.
    max_bytes: usize,
    /// Random per process: epochs differ across restarts.
    boot: u32,
    shard: u16,
    /// Epochs created so far by this store.
    epochs: u64,
    started: Instant,
    /// Entries dropped, indexed by [`HistoryEviction`] (cumulative).
    pub evictions: [u64; 3],
}

impl Histories {
    /// An empty store for shard `shard` allowed `max_bytes`.
    pub fn new(shard: u16, max_bytes: usize) -> Histories {
        Histories {
            channels: HashMap::default(),
            bytes: 0,
            messages: 0,
            max_bytes,
            boot: rand::random(),
            shard,
            epochs: 0,
            started: Instant::now(),
            evictions: [0; 3],
        }
    }

    /// Ticks since the store was created at `now`, rounded down.
    fn ticks(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.started).as_millis() as u64 / TICK_MS) as u32
    }

    /// Ticks since the store was created at `now`, rounded up.
    fn ticks_up(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.started).as_millis() as u64).div_ceil(TICK_MS) as u32
    }

    /// Retained messages, all channels.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Bytes counted against the shard's share.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Channels with a history record.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// The record of `channel`, created (with a new epoch) if there is none, with the
    /// entries that outlived their TTL dropped. One hash lookup.
    fn record(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        rule: HistoryRule,
        now: Instant,
    ) -> &mut ChannelHistory {
        let t = self.ticks(now);
        let (boot, shard, epochs) = (self.boot, self.shard, &mut self.epochs);
        let h = self
            .channels
            .entry((app, channel.clone()))
            .or_insert_with(|| {
                *epochs += 1;
                ChannelHistory {
                    epoch: format!("{boot:08x}-{shard}-{epochs}").into(),
                    last: 0,
                    rule,
                    entries: Ring::default(),
                    chunks: Chunks::default(),
                    bytes: 0,
                }
            });
        let mut freed = (0, 0);
        while h.entries.front().is_some_and(|e| expired(t, e.at, h.rule)) {
            freed.0 += 1;
            freed.1 += h.pop_front();
        }
        self.messages -= freed.0;
        self.bytes -= freed.1;
        self.evictions[HistoryEviction::Ttl as usize] += freed.0 as u64;
        h
    }

    /// Numbers and retains one publication on `channel`: `build(offset)` makes it (called
    /// once, with the next offset), and `frame_of` names its `message` frame with
    /// `fromMetadata` if the publisher had metadata (`meta_len`: that metadata's length),
    /// from `protocol::encode::history::message`, which is copied into the store.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
    pub fn append<P>(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        rule: HistoryRule,
        from: &str,
        meta_len: Option<usize>,
        now: Instant,
        build: impl FnOnce(u64) -> P,
        frame_of: impl FnOnce(&P) -> &[u8],
    ) -> P {
        let at = self.ticks_up(now);
        let h = self.record(app, channel, rule, now);
        let offset = h.last + 1;
        let p = build(offset);
        h.last = offset;
        let json = enc::payload(frame_of(&p));
        let layout = MessageLayout::of(channel, from, offset);
        let e = Entry {
            at,
            len: json.len() as u32, // see `Entry::len`
            json: h.chunks.push(json, h.bytes),
            // Both fit (see `Entry`); saturating keeps a bug from wrapping silently.
            data_at: u16::try_from(layout.data_at).unwrap_or(u16::MAX),
            meta_len: meta_len.map_or(0, |m| u16::try_from(m).unwrap_or(u16::MAX)),
        };
        let cost = e.cost();
        h.entries.push_back(e);
        h.bytes += cost;
        let mut freed = (0, 0);
        while h.entries.len() > h.rule.size as usize {
            freed.0 += 1;
            freed.1 += h.pop_front();
        }
        self.bytes += cost;
        self.messages += 1;
        self.messages -= freed.0;
        self.bytes -= freed.1;
        self.evictions[HistoryEviction::Size as usize] += freed.0 as u64;
        if self.bytes > self.max_bytes {
            self.shed();
        }
        p
    }

    /// Over the share: drops the oldest entries of the largest histories until the shard
    /// is at 15/16 of its share.
    fn shed(&mut self) {
        let low = self.max_bytes - self.max_bytes / 16;
        while self.bytes > low {
            // The largest and the runner-up: the largest sheds down to the runner-up's
            // size (or to the low mark) before the next search.
            let (mut top, mut second) = (None, 0usize);
            let mut top_bytes = 0usize;
            for (k, h) in &self.channels {
                if h.bytes > top_bytes {
                    second = top_bytes;
                    top_bytes = h.bytes;
                    top = Some(k.clone());
                } else if h.bytes > second {
                    second = h.bytes;
                }
            }
            let Some(key) = top else { break };
            let h = self.channels.get_mut(&key).expect("found above");
            let mut freed = (0, 0);
            while self.bytes - freed.1 > low && (h.bytes > second || second == 0) {
                let c = h.pop_front();
                if c == 0 {
                    break;
                }
                freed.0 += 1;
                freed.1 += c;
            }
            self.messages -= freed.0;
            self.bytes -= freed.1;
            self.evictions[HistoryEviction::Memory as usize] += freed.0 as u64;
            if freed.0 == 0 {
                break;
            }
        }
    }

    /// Answers a subscribe: the epoch and last offset, and with `since` whether the gap
    /// was recovered and the frames to replay (protocol §8.1).
    pub fn resume(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        rule: HistoryRule,
        since: Option<&Since>,
        include_meta: bool,
        now: Instant,
    ) -> Resume {
        let h = self.record(app, channel, rule, now);
        let Some(since) = since else {
            return Resume {
                epoch: h.epoch.clone(),
                last: h.last,
                recovered: None,
                frames: Vec::new(),
            };
        };
        let same_epoch = *since.epoch == *h.epoch;
        let (recovered, from) = if !same_epoch {
            (false, 0)
        } else if since.offset > h.last {
            (false, h.last)
        } else {
            (since.offset + 1 >= h.first(), since.offset)
        };
        let frames = h
            .entries
            .range_from(h.index_after(from))
            .map(|e| e.frame(&h.chunks, include_meta))
            .collect();
        Resume {
            epoch: h.epoch.clone(),
            last: h.last,
            recovered: Some(recovered),
            frames,
        }
    }

    /// Answers a `history` query: `f(epoch, last offset, items)` with up to `limit`
    /// retained messages in offset order, the oldest first, or the ones after
    /// `since_offset`.
    #[allow(clippy::too_many_arguments)] // one call site each for WebSocket and REST
    pub fn query<R>(
        &mut self,
        app: AppId,
        channel: &Arc<str>,
        rule: HistoryRule,
        since_offset: Option<u64>,
        limit: usize,
        now: Instant,
        f: impl FnOnce(&str, u64, &[Item<'_>]) -> R,
    ) -> R {
        let h = self.record(app, channel, rule, now);
        let start = since_offset.map_or(0, |s| h.index_after(s));
        let first = h.first();
        let chan_json = crate::protocol::encode::json_str_len(channel);
        let items: Vec<Item<'_>> = h
            .entries
            .range_from(start)
            .take(limit)
            .enumerate()
            .map(|(i, e)| {
                let offset = first + (start + i) as u64;
                let from_at = MessageLayout::with_from_len(chan_json, 0, offset).from.0;
                let json = e.json(&h.chunks);
                e.item(json, offset, (from_at, from_end(json, from_at)))
            })
            .collect();
        f(&h.epoch, h.last, &items)
    }

    /// Drops expired entries everywhere, and the records left with no entry whose channel
    /// has no subscriber (`subscribed(app, channel)`). Called about once a second.
    pub fn sweep(&mut self, now: Instant, subscribed: impl Fn(AppId, &str) -> bool) {
        let t = self.ticks(now);
        let (mut n, mut b) = (0, 0);
        self.channels.retain(|(app, ch), h| {
            while h.entries.front().is_some_and(|e| expired(t, e.at, h.rule)) {
                n += 1;
                b += h.pop_front();
            }
            !h.entries.is_empty() || subscribed(*app, ch)
        });
        self.messages -= n;
        self.bytes -= b;
        self.evictions[HistoryEviction::Ttl as usize] += n as u64;
        if let Some(cap) =
            crate::router::index::shrink_target(self.channels.capacity(), self.channels.len(), 64)
        {
            self.channels.shrink_to(cap);
        }
    }
}

/// True when an entry published at tick `at` is past its TTL at tick `now`.
fn expired(now: u32, at: u32, rule: HistoryRule) -> bool {
    u64::from(now.saturating_sub(at)) * TICK_MS >= u64::from(rule.ttl_secs) * 1000
}

/// End of the `from` JSON string that starts at `at` (its closing quote, included).
fn from_end(json: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    json.len()
}

#[cfg(test)]
mod tests;
