//! Measurement state: the payload format, per-publisher sequence tracking (lost, duplicated,
//! reordered) and latency histograms that travel from workers to the coordinator as JSON.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds on CLOCK_MONOTONIC: one clock shared by every process on the machine, so a
/// worker can subtract a publisher's intended send time written by another process.
#[allow(unsafe_code)] // libc clock_gettime: std has no CLOCK_MONOTONIC shared across processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The fields a loadgen payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Publisher id.
    pub g: u32,
    /// Sequence number within the publisher, from 0.
    pub s: u64,
    /// Step (rate level) index.
    pub r: u32,
    /// Intended send time, `mono_ns()`.
    pub t: u64,
}

/// The payload as a String (tests: the reference for [`payload_into`]).
#[cfg(test)]
pub fn payload(st: Stamp, size: usize) -> String {
    let mut s = format!(
        "{{\"g\":{},\"s\":{},\"r\":{},\"t\":{},\"p\":\"",
        st.g, st.s, st.r, st.t
    );
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The payload, written into a reused buffer (cleared first): a JSON object padded with `p` to
/// `size` bytes (when `size` allows it). The same bytes are sent to every target: as ringcast
/// `data`, as the NATS or MQTT payload.
pub fn payload_into(out: &mut Vec<u8>, st: Stamp, size: usize) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "{{\"g\":{},\"s\":{},\"r\":{},\"t\":{},\"p\":\"",
        st.g, st.s, st.r, st.t
    );
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

fn field(buf: &[u8], key: &[u8]) -> Option<u64> {
    let pos = buf.windows(key.len()).position(|w| w == key)? + key.len();
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &buf[pos..] {
        if b.is_ascii_digit() {
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Finds a stamp anywhere in `buf` (a whole ringcast frame or a bare payload). Cheap: four
/// substring scans, no JSON parse, so the generator is not the bottleneck.
pub fn scan(buf: &[u8]) -> Option<Stamp> {
    Some(Stamp {
        g: field(buf, b"\"g\":")? as u32,
        s: field(buf, b"\"s\":")?,
        r: field(buf, b"\"r\":")? as u32,
        t: field(buf, b"\"t\":")?,
    })
}

/// Deliveries of one publisher's stream seen by one receiver: a bitset of sequence numbers.
#[derive(Debug, Default)]
pub struct SeqTrack {
    seen: Vec<u64>,
    max: Option<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Deliveries of an already-seen sequence number.
    pub duplicated: u64,
    /// First deliveries of a sequence number lower than one already seen.
    pub reordered: u64,
}

impl SeqTrack {
    /// The bitset of sequence numbers seen (bit `s % 64` of word `s / 64`).
    pub fn words(&self) -> &[u64] {
        &self.seen
    }

    /// Records one delivery of `seq`.
    pub fn record(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.seen.len() {
            self.seen.resize(w + 1, 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[w] |= 1 << b;
        self.unique += 1;
        match self.max {
            Some(m) if seq < m => self.reordered += 1,
            _ => self.max = Some(seq),
        }
    }
}

/// A histogram in transit: (value, count) pairs of recorded values, nanoseconds.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct HistDump(pub Vec<(u64, u64)>);

/// A new latency histogram: 1 µs .. 100 s, 3 significant digits, in nanoseconds.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records saturating at the histogram's top.
pub fn rec(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1_000, 100_000_000_000));
}

impl HistDump {
    /// Dumps a histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        HistDump(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }
    /// Adds the dump into `h`.
    pub fn merge_into(&self, h: &mut Histogram<u64>) {
        for &(v, c) in &self.0 {
            let _ = h.record_n(v.clamp(1_000, 100_000_000_000), c);
        }
    }
}

/// Latency summary in milliseconds.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Lat {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Lat {
    /// Summarises a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1e6;
        Lat {
            count: h.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: h.max() as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let st = Stamp {
            g: 7,
            s: 123,
            r: 2,
            t: 99_999,
        };
        let p = payload(st, 64);
        assert_eq!(p.len(), 64);
        let mut q = b"junk".to_vec();
        payload_into(&mut q, st, 64);
        assert_eq!(q, p.as_bytes());
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        let frame =
            format!("{{\"type\":\"message\",\"channel\":\"c\",\"from\":\"x\",\"data\":{p}}}");
        assert_eq!(scan(frame.as_bytes()), Some(st));
    }

    #[test]
    fn seq_track_counts_dup_and_reorder() {
        let mut t = SeqTrack::default();
        for s in [0, 1, 3, 2, 3, 4] {
            t.record(s);
        }
        assert_eq!((t.unique, t.duplicated, t.reordered), (5, 1, 1));
    }
}
