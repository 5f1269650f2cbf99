//! A channel's retained messages in fixed-size blocks (protocol §8.1).
//!
//! A `VecDeque` that doubles leaves up to one spare slot per entry while it grows, and
//! every doubling frees the old buffer after copying it, memory the allocator keeps (with
//! huge pages, resident): at 10,000 entries of 24 B (as they were) in a ring of 16,384 that was 15 B more
//! per retained message, and growing by a quarter instead left four times the ring's size
//! in freed buffers. Blocks never move: growing allocates one block, the oldest entries
//! leave with their block, and the spare room is at most one block per channel.

use std::collections::VecDeque;

/// Entries per block (20-byte entries: 5 KiB, one allocator size class).
const BLOCK: usize = 256;

/// A FIFO queue in blocks of [`BLOCK`] entries: every block but the first and the last is
/// full, so entry `i` is found by skipping whole blocks.
#[derive(Debug)]
pub struct Ring<T> {
    blocks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring {
            blocks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> Ring<T> {
    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True with no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<&T> {
        self.blocks.front()?.front()
    }

    /// Appends an entry (a new block when the last one is full).
    pub fn push_back(&mut self, v: T) {
        if self.blocks.back().is_none_or(|b| b.len() == BLOCK) {
            self.blocks.push_back(VecDeque::with_capacity(BLOCK));
        }
        if let Some(b) = self.blocks.back_mut() {
            b.push_back(v);
            self.len += 1;
        }
    }

    /// Removes the oldest entry (and its block when that empties it).
    pub fn pop_front(&mut self) -> Option<T> {
        let b = self.blocks.front_mut()?;
        let v = b.pop_front();
        if b.is_empty() {
            self.blocks.pop_front();
        }
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    /// The entries from index `start` (0: the oldest) to the newest.
    pub fn range_from(&self, start: usize) -> impl Iterator<Item = &T> {
        let mut skip = start.min(self.len);
        let mut first = 0;
        while first < self.blocks.len() && skip >= self.blocks[first].len() {
            skip -= self.blocks[first].len();
            first += 1;
        }
        self.blocks
            .range(first..)
            .enumerate()
            .flat_map(move |(k, b)| b.range(if k == 0 { skip } else { 0 }..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_deque_across_blocks() {
        let mut r = Ring::default();
        let mut model = VecDeque::new();
        let mut next = 0u32;
        // Grow past several blocks, drain across block edges, refill, in a fixed pattern.
        for round in 0..6 {
            for _ in 0..(BLOCK * 2 + 37 * round) {
                r.push_back(next);
                model.push_back(next);
                next += 1;
            }
            for _ in 0..(BLOCK + 11 * round) {
                assert_eq!(r.pop_front(), model.pop_front());
            }
            assert_eq!(r.len(), model.len());
            assert_eq!(r.front(), model.front());
            for start in [
                0,
                1,
                BLOCK - 1,
                BLOCK,
                BLOCK + 1,
                model.len() / 2,
                model.len(),
                model.len() + 5,
            ] {
                let got: Vec<u32> = r.range_from(start).copied().collect();
                let want: Vec<u32> = model.iter().skip(start).copied().collect();
                assert_eq!(got, want, "round {round}, start {start}");
            }
        }
        while let Some(v) = model.pop_front() {
            assert_eq!(r.pop_front(), Some(v));
        }
        assert!(r.is_empty() && r.pop_front().is_none() && r.blocks.is_empty());
    }
}
