//! A channel's retained payloads, back to back in chunks (protocol §8.1).
//!
//! One allocation per retained message cost a `malloc` and a `free` per publication on a
//! history channel and the allocator's size-class rounding on every message (201 B went in
//! 224 B). Payloads enter and leave in the same FIFO order as the ring's entries, so they
//! can share chunks: appending copies into the newest chunk (a new one when it is full),
//! and a chunk is freed once the oldest entry left in the channel is past it. The spare
//! room is the newest chunk's unused tail plus the oldest chunk's consumed head, each at
//! most one chunk, and a chunk is a sixteenth of what the channel retains (1 to 64 KiB).

use std::collections::VecDeque;

/// Smallest chunk (a payload larger than a chunk gets a chunk of its own size).
const MIN_CHUNK: usize = 1024;
/// Largest chunk, for a channel retaining 1 MiB or more.
const MAX_CHUNK: usize = 64 * 1024;

/// Where a payload is: chunk number (counted since the channel's first chunk) and the
/// position in that chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub chunk: u32,
    pub start: u32,
}

/// Payloads in chunks, the oldest first.
#[derive(Debug, Default)]
pub struct Chunks {
    /// Each chunk is filled up to its capacity and never reallocated (a `Vec` used only
    /// within its capacity, so that the unused tail is not initialised).
    chunks: VecDeque<Vec<u8>>,
    /// Number of `chunks.front()`.
    first: u32,
}

impl Chunks {
    /// Copies `json` in, given that the channel retains about `retained` bytes (this
    /// sizes a new chunk).
    pub fn push(&mut self, json: &[u8], retained: usize) -> At {
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.capacity() - c.len() >= json.len());
        if !fits {
            let size = (retained / 16)
                .next_power_of_two()
                .clamp(MIN_CHUNK, MAX_CHUNK)
                .max(json.len());
            self.chunks.push_back(Vec::with_capacity(size));
        }
        let n = self.chunks.len() - 1;
        let c = &mut self.chunks[n];
        let start = c.len();
        c.extend_from_slice(json); // within capacity (checked above): never reallocates
        At {
            chunk: self.first.wrapping_add(n as u32),
            // A chunk is at most 64 KiB or one payload (a frame is far below 4 GiB).
            start: start as u32,
        }
    }

    /// The payload at `at`, `len` bytes long.
    pub fn get(&self, at: At, len: usize) -> &[u8] {
        let c = &self.chunks[at.chunk.wrapping_sub(self.first) as usize];
        &c[at.start as usize..at.start as usize + len]
    }

    /// Frees the chunks before chunk `oldest` (the chunk of the oldest payload still
    /// retained), or every chunk with `None` (nothing retained).
    pub fn release_before(&mut self, oldest: Option<u32>) {
        match oldest {
            None => {
                self.first = self.first.wrapping_add(self.chunks.len() as u32);
                self.chunks.clear();
            }
            Some(o) => {
                while !self.chunks.is_empty() && o.wrapping_sub(self.first) as i32 > 0 {
                    self.chunks.pop_front();
                    self.first = self.first.wrapping_add(1);
                }
            }
        }
    }

    /// Chunks held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_back_whole_and_old_chunks_go() {
        let mut c = Chunks::default();
        let mut live: VecDeque<(At, Vec<u8>)> = VecDeque::new();
        for i in 0..5_000usize {
            // Sizes from 1 byte to past MAX_CHUNK, so some payloads get a chunk of their own.
            let len = if i % 997 == 0 {
                MAX_CHUNK + 3
            } else {
                1 + (i * 37) % 700
            };
            let p: Vec<u8> = (0..len).map(|k| (i + k) as u8).collect();
            let retained: usize = live.iter().map(|(_, p)| p.len()).sum();
            live.push_back((c.push(&p, retained), p));
            while live.len() > 300 {
                live.pop_front();
                c.release_before(live.front().map(|(a, _)| a.chunk));
            }
            for (at, p) in live.iter().step_by(29) {
                assert_eq!(c.get(*at, p.len()), &p[..], "payload {i}");
            }
        }
        // What is held spans the live payloads' chunks only.
        let (first, last) = (live[0].0.chunk, live[live.len() - 1].0.chunk);
        assert_eq!(c.len(), (last - first + 1) as usize);
        live.clear();
        c.release_before(None);
        assert_eq!(c.len(), 0);
        let at = c.push(b"x", 0);
        assert_eq!(c.get(at, 1), b"x");
    }
}
