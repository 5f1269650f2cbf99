//! `ringcast-loadgen rpc …`: the requests-and-replies benchmarks (protocol §8.4, issue 12).
//!
//! - `rpc rtt`: P pairs (requester, responder). In alternating phases of one run the requester
//!   either sends `request` and the responder answers `reply` (final) at once, or sends `send`
//!   and the receiver `send`s the same data back (a `direct`). Both use the same connections,
//!   the same per-pair schedule and rate; the round trip is timed from the moment a frame is
//!   handed to the kernel to the moment its answer is read (the send time travels in `data`).
//!   Phases are ordered A B, B A, … so drift hits both modes alike.
//! - `rpc memory`: R requesters × K requests to responders that never reply; broker RSS (and
//!   `ringcast_requests_in_flight` from the REST /metrics) before and after, with the same
//!   connections open: bytes per request in flight. The baseline is taken after a warm-up of
//!   as many `send`s of the same size (which leave nothing behind), and frames are written
//!   one per connection per 10 ms, so the difference is what the requests keep.
//! - `rpc deadline`: requests nobody answers, `timeoutMs` spread over a range; the requester
//!   records when `request_timeout` arrives minus (send time + timeoutMs). Optionally with a
//!   fan-out load on the same shard (one publisher, S subscribers on one channel); the
//!   subscribers run on their own thread at a lower priority (`--sub-nice`) so that reading
//!   their deliveries does not delay the requester's reads on the generator's one core.
//!
//! One process (at most a few thousand sockets, far below the 20,000 fd budget); every loop
//! ends at a deadline and `--max-secs` bounds the whole run. Loopback only.

use std::{
    cell::RefCell,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::{
    procstat,
    stats::{self, mono_ns, Lat},
    target::{frame_into, Conn, Endpoint, Target},
    worker::raise_nofile,
};

/// Masking key of every client frame sent here (RFC 6455 only asks that there be one).
const MASK: [u8; 4] = [0x3c, 0x5a, 0x96, 0x0f];
const OP_TEXT: u8 = 1;

#[derive(Args, Debug, Clone)]
pub struct RpcCommon {
    /// Broker WebSocket address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Broker REST address (`--rest-listen`), for `ringcast_requests_in_flight` on /metrics.
    #[arg(long)]
    rest_addr: Option<SocketAddr>,
    #[arg(long, env = "RINGCAST_KEY_ID", default_value = "sk_id_test1")]
    key_id: String,
    #[arg(
        long,
        env = "RINGCAST_KEY_SECRET",
        default_value = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
    )]
    key_secret: String,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 8)]
    src_ips: u8,
    /// Broker PID: RSS and CPU from /proc/PID.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Results JSON file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bytes of `data` (padded JSON object).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Hard cap on the whole run, seconds (the process exits with status 3 past it).
    #[arg(long, default_value_t = 300.0)]
    max_secs: f64,
}

#[derive(Subcommand, Debug)]
pub enum RpcCmd {
    /// request -> final reply round trip vs send -> direct back, interleaved phases.
    Rtt {
        #[command(flatten)]
        c: RpcCommon,
        #[arg(long, default_value_t = 1_000)]
        pairs: usize,
        /// Round trips per second (all pairs together), one A/B block each.
        #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
        rates: Vec<f64>,
        /// Seconds per phase (one mode at one rate).
        #[arg(long, default_value_t = 2.0)]
        phase_secs: f64,
        /// A/B rounds per rate (each round: one direct phase and one request phase).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Broker memory per request in flight (responders never reply).
    Memory {
        #[command(flatten)]
        c: RpcCommon,
        #[arg(long, default_value_t = 200)]
        requesters: usize,
        /// Requests per requester (the broker's max_requests_in_flight is 100 by default).
        #[arg(long, default_value_t = 50)]
        per_requester: usize,
        #[arg(long, default_value_t = 120_000)]
        timeout_ms: u64,
        /// Seconds to let the broker settle before each sample.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
    },
    /// Deadline accuracy: request_timeout arrival minus (send time + timeoutMs).
    Deadline {
        #[command(flatten)]
        c: RpcCommon,
        /// Fan-out subscribers on one channel (0: no fan-out load).
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Publishes per second to the fan-out channel.
        #[arg(long, default_value_t = 200.0)]
        pub_rate: f64,
        #[arg(long, default_value_t = 50)]
        requesters: usize,
        /// Requests per second (all requesters together).
        #[arg(long, default_value_t = 300.0)]
        req_rate: f64,
        #[arg(long, default_value_t = 100)]
        min_timeout_ms: u64,
        #[arg(long, default_value_t = 2_000)]
        max_timeout_ms: u64,
        /// Seconds during which requests are sent (fan-out runs until the last deadline).
        #[arg(long, default_value_t = 6.0)]
        secs: f64,
        /// Nice value of the subscribers' thread (0: same priority as the requesters').
        #[arg(long, default_value_t = 10)]
        sub_nice: i32,
    },
}

/// Runs one `rpc` subcommand.
pub fn run(cmd: RpcCmd) -> Result<()> {
    raise_nofile();
    let c = match &cmd {
        RpcCmd::Rtt { c, .. } | RpcCmd::Memory { c, .. } | RpcCmd::Deadline { c, .. } => c.clone(),
    };
    if !c.addr.ip().is_loopback() || c.rest_addr.is_some_and(|a| !a.ip().is_loopback()) {
        bail!("loadgen only targets loopback addresses");
    }
    let cap = c.max_secs.clamp(1.0, 3600.0);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(cap));
        eprintln!("rpc: --max-secs ({cap}s) reached, giving up");
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async {
        match cmd {
            RpcCmd::Rtt {
                c,
                pairs,
                rates,
                phase_secs,
                rounds,
            } => rtt(&c, pairs, &rates, phase_secs, rounds).await,
            RpcCmd::Memory {
                c,
                requesters,
                per_requester,
                timeout_ms,
                settle_secs,
            } => memory(&c, requesters, per_requester, timeout_ms, settle_secs).await,
            RpcCmd::Deadline {
                c,
                subscribers,
                pub_rate,
                requesters,
                req_rate,
                min_timeout_ms,
                max_timeout_ms,
                secs,
                sub_nice,
            } => {
                let d = DeadlineSpec {
                    subscribers,
                    pub_rate,
                    requesters,
                    req_rate,
                    min_ms: min_timeout_ms.max(1),
                    max_ms: max_timeout_ms.max(min_timeout_ms.max(1)),
                    secs: secs.clamp(0.5, 120.0),
                    sub_nice,
                };
                deadline(&c, &d).await
            }
        }
    })?;
    if let Some(p) = &c.out {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
        eprintln!("rpc: results written to {}", p.display());
    }
    Ok(())
}

// ---- helpers ----------------------------------------------------------------------------

fn endpoint(c: &RpcCommon) -> Endpoint {
    Endpoint {
        target: Target::Ringcast,
        addr: c.addr,
        key_id: c.key_id.clone(),
        key_secret: c.key_secret.clone(),
        presence: false,
        pub_addr: None,
        sub_addrs: Vec::new(),
        src_ips: (0..c.src_ips.max(1))
            .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k))
            .collect(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// The unsigned integer right after `key` (e.g. `"t":`).
fn num_after(b: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(b, key)? + key.len();
    let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[at..at + digits]).ok()?.parse().ok()
}

/// The string value after `key` (e.g. `"replyTo":"`), up to the next quote (our ids and the
/// broker's replyTo need no escaping).
fn str_after<'a>(b: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(b, key)? + key.len();
    let len = b[at..].iter().position(|&c| c == b'"')?;
    Some(&b[at..at + len])
}

/// The `data` object of a frame (ours have no nested objects): `{` .. the first `}`.
fn data_obj(b: &[u8]) -> Option<&[u8]> {
    let at = find(b, b"\"data\":{")? + 7;
    let len = b[at..].iter().position(|&c| c == b'}')? + 1;
    Some(&b[at..at + len])
}

/// A padded `data` object `{"t":T,"k":K,"p":"xx…"}` of about `size` bytes.
fn data_into(out: &mut Vec<u8>, t: u64, k: usize, size: usize) {
    let at = out.len();
    let _ = write!(out, "{{\"t\":{t},\"k\":{k},\"p\":\"");
    let pad = size.saturating_sub(out.len() - at + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Appends one masked text frame carrying `json`.
fn frame(out: &mut Vec<u8>, json: &[u8]) {
    frame_into(out, OP_TEXT, MASK, json);
}

async fn sleep_until_ns(t: u64) {
    let now = mono_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Opens one connection per peer (`conc` at a time, 20 s each at most).
async fn open_all(ep: &Endpoint, peers: &[String], base: usize, conc: usize) -> Result<Vec<Conn>> {
    let sem = Rc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let mut hs = Vec::with_capacity(peers.len());
    for (i, p) in peers.iter().enumerate() {
        let (ep, p, sem) = (ep.clone(), p.clone(), sem.clone());
        hs.push(tokio::task::spawn_local(async move {
            let _g = sem.acquire().await;
            tokio::time::timeout(Duration::from_secs(20), Conn::open(&ep, base + i, &p))
                .await
                .context("connect timed out")?
        }));
    }
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        out.push(h.await??);
    }
    Ok(out)
}

/// Reads `on` every frame and writes frames on a schedule: `due(i)` is the send time of frame
/// i (None: no more), `build(i, due, out)` appends it. Returns at `end` (or false when the
/// connection fails first).
async fn drive(
    mut c: Conn,
    end: u64,
    mut due: impl FnMut(u64) -> Option<u64>,
    mut build: impl FnMut(u64, u64, &mut Vec<u8>),
    mut on: impl FnMut(&[u8]),
) -> bool {
    let mut i = 0u64;
    let mut frames = Vec::with_capacity(4096);
    loop {
        let now = mono_ns();
        if now >= end {
            return true;
        }
        let wake = due(i).unwrap_or(end).min(end);
        let ev = tokio::select! {
            _ = sleep_until_ns(wake) => None,
            r = c.recv(&mut on) => Some(r),
        };
        match ev {
            None => {
                let now = mono_ns();
                while let Some(t) = due(i).filter(|&t| t <= now) {
                    build(i, t, &mut frames);
                    i += 1;
                }
                if !frames.is_empty() {
                    if c.write_all(&frames).await.is_err() {
                        return false;
                    }
                    frames.clear();
                }
            }
            Some(Ok(true)) => {}
            Some(_) => return false,
        }
    }
}

/// Reads until `end`, calling `on` for every frame. False if the connection ended first.
async fn read_until(mut c: Conn, end: u64, mut on: impl FnMut(&[u8])) -> bool {
    loop {
        if mono_ns() >= end {
            return true;
        }
        let ev = tokio::select! {
            _ = sleep_until_ns(end) => None,
            r = c.recv(&mut on) => Some(r),
        };
        match ev {
            None | Some(Ok(true)) => {}
            Some(_) => return mono_ns() >= end,
        }
    }
}

/// `ringcast_requests_in_flight` from the broker's REST /metrics (None if unreachable).
fn gauge(rest: Option<SocketAddr>, name: &str) -> Option<f64> {
    let addr = rest?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = Vec::new();
    let _ = s.take(8 << 20).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn lat_json(h: &Histogram<u64>) -> Value {
    json!(Lat::of(h))
}

fn own_cpu() -> Option<f64> {
    procstat::sample(std::process::id()).map(|s| s.cpu_secs)
}

fn broker_cpu(c: &RpcCommon) -> Option<f64> {
    c.broker_pid.and_then(procstat::sample).map(|s| s.cpu_secs)
}

// ---- rtt --------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Request,
}

#[derive(Clone, Copy, Debug)]
struct Phase {
    mode: Mode,
    rate: f64,
    start: u64,
    secs: f64,
}

#[derive(Default)]
struct RttStats {
    hist: Vec<Histogram<u64>>,
    lag: Vec<Histogram<u64>>,
    sent: Vec<u64>,
    answered: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    foreign: u64,
    lost_conns: u64,
}

/// The responder's answer to one frame: a `reply` to a request, a `send` back to a direct.
fn answer(b: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>, st: &RefCell<RttStats>) {
    scratch.clear();
    if contains(b, b"\"type\":\"request\"") {
        let (Some(x), Some(d)) = (str_after(b, b"\"replyTo\":\""), data_obj(b)) else {
            st.borrow_mut().foreign += 1;
            return;
        };
        scratch.extend_from_slice(b"{\"type\":\"reply\",\"replyTo\":\"");
        scratch.extend_from_slice(x);
        scratch.extend_from_slice(b"\",\"data\":");
        scratch.extend_from_slice(d);
        scratch.push(b'}');
    } else if contains(b, b"\"type\":\"direct\"") {
        let (Some(from), Some(d)) = (str_after(b, b"\"from\":\""), data_obj(b)) else {
            st.borrow_mut().foreign += 1;
            return;
        };
        scratch.extend_from_slice(b"{\"type\":\"send\",\"to\":\"");
        scratch.extend_from_slice(from);
        scratch.extend_from_slice(b"\",\"data\":");
        scratch.extend_from_slice(d);
        scratch.push(b'}');
    } else {
        let mut s = st.borrow_mut();
        s.errors += 1;
        s.first_error
            .get_or_insert_with(|| String::from_utf8_lossy(b).into_owned());
        return;
    }
    frame(out, scratch);
}

async fn rtt(
    c: &RpcCommon,
    pairs: usize,
    rates: &[f64],
    phase_secs: f64,
    rounds: usize,
) -> Result<Value> {
    let ep = endpoint(c);
    let pairs = pairs.clamp(1, 5_000);
    let phase_secs = phase_secs.clamp(0.5, 60.0);
    let rounds = rounds.clamp(1, 20);
    let rsp: Vec<String> = (0..pairs).map(|j| format!("rsp-{j}")).collect();
    let req: Vec<String> = (0..pairs).map(|j| format!("req-{j}")).collect();
    let t0 = mono_ns();
    let rsp_conns = open_all(&ep, &rsp, 0, c.connect_concurrency).await?;
    let req_conns = open_all(&ep, &req, pairs, c.connect_concurrency).await?;
    eprintln!(
        "rpc rtt: {} connections in {:.2}s",
        2 * pairs,
        (mono_ns() - t0) as f64 / 1e9
    );
    let start = mono_ns() + 300_000_000;
    let mut phases = Vec::new();
    let mut at = start;
    for &rate in rates {
        for r in 0..rounds {
            let order = if r % 2 == 0 {
                [Mode::Direct, Mode::Request]
            } else {
                [Mode::Request, Mode::Direct]
            };
            for mode in order {
                phases.push(Phase {
                    mode,
                    rate: rate.clamp(1.0, 1e6),
                    start: at,
                    secs: phase_secs,
                });
                at += (phase_secs * 1e9) as u64;
            }
        }
    }
    let sched_end = at;
    let end = sched_end + 1_000_000_000;
    let np = phases.len();
    let st = Rc::new(RefCell::new(RttStats {
        hist: (0..np).map(|_| stats::new_hist()).collect(),
        lag: (0..np).map(|_| stats::new_hist()).collect(),
        sent: vec![0; np],
        answered: vec![0; np],
        ..Default::default()
    }));
    for c in rsp_conns {
        let st = st.clone();
        tokio::task::spawn_local(async move {
            let (mut out, mut scratch) = (Vec::with_capacity(4096), Vec::with_capacity(512));
            let mut c = c;
            loop {
                if mono_ns() >= end {
                    return;
                }
                let r = {
                    let mut on = |b: &[u8]| answer(b, &mut out, &mut scratch, &st);
                    tokio::select! {
                        _ = sleep_until_ns(end) => Ok(true),
                        r = c.recv(&mut on) => r,
                    }
                };
                if !out.is_empty() {
                    if c.write_all(&out).await.is_err() {
                        st.borrow_mut().lost_conns += 1;
                        return;
                    }
                    out.clear();
                }
                if !matches!(r, Ok(true)) {
                    st.borrow_mut().lost_conns += 1;
                    return;
                }
            }
        });
    }
    let phases = Rc::new(phases);
    let size = c.payload;
    for (j, c) in req_conns.into_iter().enumerate() {
        let (st1, st2, st3) = (st.clone(), st.clone(), st.clone());
        let (ph, ph2) = (phases.clone(), phases.clone());
        let stagger = j as f64 / pairs as f64;
        let to = format!("rsp-{j}");
        // Frame i of this pair: phase i / per_phase[..], offset within the phase.
        let counts: Vec<u64> = ph
            .iter()
            .map(|p| (p.rate / pairs as f64 * p.secs).round() as u64)
            .collect();
        let counts2 = counts.clone();
        let locate = move |counts: &[u64], mut i: u64| -> Option<(usize, u64)> {
            for (k, &n) in counts.iter().enumerate() {
                if i < n {
                    return Some((k, i));
                }
                i -= n;
            }
            None
        };
        let due = move |i: u64| {
            let (k, n) = locate(&counts, i)?;
            let p = ph[k];
            Some(p.start + ((n as f64 + stagger) * 1e9 * pairs as f64 / p.rate) as u64)
        };
        let mut seq = 0u64;
        let mut json = Vec::with_capacity(size + 128);
        let build = move |i: u64, due_t: u64, out: &mut Vec<u8>| {
            let Some((k, _)) = locate(&counts2, i) else {
                return;
            };
            json.clear();
            let now = mono_ns();
            match ph2[k].mode {
                Mode::Request => {
                    let _ = write!(
                        json,
                        "{{\"type\":\"request\",\"to\":\"{to}\",\"requestId\":\"{seq}\",\"timeoutMs\":10000,\"data\":"
                    );
                }
                Mode::Direct => {
                    let _ = write!(json, "{{\"type\":\"send\",\"to\":\"{to}\",\"data\":");
                }
            }
            seq += 1;
            data_into(&mut json, now, k, size);
            json.push(b'}');
            frame(out, &json);
            let mut s = st2.borrow_mut();
            s.sent[k] += 1;
            stats::rec(&mut s.lag[k], now.saturating_sub(due_t));
        };
        let on = move |b: &[u8]| {
            let now = mono_ns();
            let mut s = st1.borrow_mut();
            if contains(b, b"\"type\":\"error\"") {
                s.errors += 1;
                s.first_error
                    .get_or_insert_with(|| String::from_utf8_lossy(b).into_owned());
                return;
            }
            match (num_after(b, b"\"t\":"), num_after(b, b"\"k\":")) {
                (Some(t), Some(k)) if (k as usize) < s.hist.len() => {
                    let k = k as usize;
                    stats::rec(&mut s.hist[k], now.saturating_sub(t));
                    s.answered[k] += 1;
                }
                _ => s.foreign += 1,
            }
        };
        tokio::task::spawn_local(async move {
            if !drive(c, end, due, build, on).await {
                st3.borrow_mut().lost_conns += 1;
            }
        });
    }
    // Broker and generator CPU at each phase boundary.
    let mut bcpu = Vec::new();
    let mut gcpu = Vec::new();
    for k in 0..=np {
        let m = if k < np { phases[k].start } else { sched_end };
        sleep_until_ns(m).await;
        bcpu.push(broker_cpu(c));
        gcpu.push(own_cpu());
    }
    sleep_until_ns(end).await;
    let s = st.borrow();
    let mut rows = Vec::new();
    println!(
        "\n{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "rate/s",
        "mode",
        "sent",
        "answered",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "brk µs/rt",
        "gen cpu%",
        "lag p99"
    );
    let mut summary = Vec::new();
    for &rate in rates {
        let rate = rate.clamp(1.0, 1e6);
        let mut per_mode = Vec::new();
        for mode in [Mode::Direct, Mode::Request] {
            let (mut h, mut lag) = (stats::new_hist(), stats::new_hist());
            let (mut sent, mut ans, mut bc, mut gc, mut secs) = (0u64, 0u64, 0.0, 0.0, 0.0);
            for (k, p) in phases.iter().enumerate() {
                if p.mode != mode || p.rate != rate {
                    continue;
                }
                let _ = h.add(&s.hist[k]);
                let _ = lag.add(&s.lag[k]);
                sent += s.sent[k];
                ans += s.answered[k];
                secs += p.secs;
                if let (Some(a), Some(b)) = (bcpu[k], bcpu[k + 1]) {
                    bc += b - a;
                }
                if let (Some(a), Some(b)) = (gcpu[k], gcpu[k + 1]) {
                    gc += b - a;
                }
            }
            let l = Lat::of(&h);
            let us_per_rt = bc * 1e6 / (ans.max(1) as f64);
            let lg = Lat::of(&lag);
            println!(
                "{:>8.0} {:>8} {:>8} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>12.2} {:>10.0} {:>9.3}",
                rate,
                format!("{mode:?}").to_lowercase(),
                sent,
                ans,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                us_per_rt,
                gc * 100.0 / secs.max(1e-9),
                lg.p99_ms,
            );
            per_mode.push((l, sent, ans, us_per_rt, gc / secs.max(1e-9), lg));
        }
        let (d, r) = (&per_mode[0], &per_mode[1]);
        let ratio = r.0.p99_ms / d.0.p99_ms.max(1e-9);
        let complete = d.2 >= d.1 && r.2 >= r.1;
        println!(
            "{:>8.0} request p99 / direct p99 = {:.3} (target <= 1.5: {}){}",
            rate,
            ratio,
            if ratio <= 1.5 { "PASS" } else { "FAIL" },
            if complete {
                ""
            } else {
                "  (INCOMPLETE: answers missing)"
            }
        );
        let mode_json = |m: &(Lat, u64, u64, f64, f64, Lat)| {
            json!({"latency": m.0, "sent": m.1, "answered": m.2, "broker_cpu_us_per_round_trip": m.3,
                   "generator_cpu_share": m.4, "send_lag": m.5})
        };
        summary.push(json!({"rate": rate, "direct": mode_json(d), "request": mode_json(r),
            "p99_ratio": ratio, "p50_ratio": r.0.p50_ms / d.0.p50_ms.max(1e-9), "pass": ratio <= 1.5,
            "complete": complete}));
    }
    println!(
        "errors {}, foreign frames {}, connections lost {}{}",
        s.errors,
        s.foreign,
        s.lost_conns,
        s.first_error
            .as_ref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    for (k, p) in phases.iter().enumerate() {
        rows.push(
            json!({"mode": format!("{:?}", p.mode).to_lowercase(), "rate": p.rate, "secs": p.secs,
            "sent": s.sent[k], "answered": s.answered[k], "latency": lat_json(&s.hist[k])}),
        );
    }
    Ok(
        json!({"scenario": "rpc-rtt", "pairs": pairs, "phase_secs": phase_secs, "rounds": rounds,
        "rates": summary, "phases": rows, "errors": s.errors, "first_error": s.first_error,
        "foreign": s.foreign, "connections_lost": s.lost_conns}),
    )
}

// ---- memory -----------------------------------------------------------------------------

/// The memory scenario's frames, one batch per requester `j`: `per` commands of type `kind`
/// (`send` for the warm-up, `request` for the measurement; a `send` ignores `timeoutMs`) to
/// `mrsp-j`, same size either way.
fn memory_frames(
    kind: &str,
    requesters: usize,
    per: usize,
    payload: usize,
    timeout_ms: u64,
) -> Vec<Vec<u8>> {
    let mut json = Vec::with_capacity(payload + 160);
    (0..requesters)
        .map(|j| {
            let mut out = Vec::with_capacity(per * (payload + 160));
            for i in 0..per {
                json.clear();
                let _ = write!(
                    json,
                    "{{\"type\":\"{kind}\",\"to\":\"mrsp-{j}\",\"requestId\":\"m{i:06}\",\"timeoutMs\":{timeout_ms},\"data\":"
                );
                data_into(&mut json, 0, 0, payload);
                json.push(b'}');
                frame(&mut out, &json);
            }
            out
        })
        .collect()
}

async fn memory(
    c: &RpcCommon,
    requesters: usize,
    per: usize,
    timeout_ms: u64,
    settle: f64,
) -> Result<Value> {
    let Some(pid) = c.broker_pid else {
        bail!("rpc memory needs --broker-pid");
    };
    let ep = endpoint(c);
    let requesters = requesters.clamp(1, 9_000);
    let per = per.clamp(1, 10_000);
    let total = (requesters * per) as u64;
    let settle = Duration::from_secs_f64(settle.clamp(0.1, 30.0));
    let rsp: Vec<String> = (0..requesters).map(|j| format!("mrsp-{j}")).collect();
    let req: Vec<String> = (0..requesters).map(|j| format!("mreq-{j}")).collect();
    let rsp_conns = open_all(&ep, &rsp, 0, c.connect_concurrency).await?;
    let mut req_conns = open_all(&ep, &req, requesters, c.connect_concurrency).await?;
    let end = mono_ns() + 120_000_000_000;
    let got = Rc::new(std::cell::Cell::new(0u64));
    let directs = Rc::new(std::cell::Cell::new(0u64));
    let errs = Rc::new(RefCell::new((0u64, None::<String>)));
    for c in rsp_conns {
        let (got, directs) = (got.clone(), directs.clone());
        tokio::task::spawn_local(read_until(c, end, move |b: &[u8]| {
            if contains(b, b"\"type\":\"request\"") {
                got.set(got.get() + 1);
            } else if contains(b, b"\"type\":\"direct\"") {
                directs.set(directs.get() + 1);
            }
        }));
    }
    tokio::time::sleep(settle).await;
    let cold = procstat::sample(pid).context("broker /proc unreadable")?;
    // Warm-up: the same number of frames of the same size, as `send`s that leave nothing
    // behind, so the broker's read, queue and write paths reach the high-water mark they
    // reach for the requests' frames before the baseline; the difference is what the
    // requests keep.
    let batches = memory_frames("send", requesters, per, c.payload, timeout_ms);
    paced(&mut req_conns, &batches, per).await?;
    let wait_end = mono_ns() + 15_000_000_000;
    while directs.get() < total && mono_ns() < wait_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(settle).await;
    // The `send`s with a requestId were acked: drain the acks so nothing is pending.
    let mut acks = 0u64;
    for conn in req_conns.iter_mut() {
        let t_end = mono_ns() + 2_000_000_000;
        let mut n = 0u64;
        while n < per as u64 && mono_ns() < t_end {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                conn.recv(&mut |b: &[u8]| {
                    if contains(b, b"\"type\":\"ack\"") {
                        n += 1;
                    }
                }),
            )
            .await;
            if !matches!(r, Ok(Ok(true))) {
                break;
            }
        }
        acks += n;
    }
    // The gauge is read before the baseline: the REST thread's first request (its
    // connection, buffers, allocator pages) must not count as the requests' memory.
    let g0 = gauge(c.rest_addr, "ringcast_requests_in_flight");
    tokio::time::sleep(settle).await;
    let base = procstat::sample(pid).context("broker /proc unreadable")?;
    eprintln!(
        "rpc memory: {} connections, RSS {} KiB cold, {} KiB after {} warm-up sends ({acks} acked), in flight {:?}",
        2 * requesters,
        cold.rss_kib,
        base.rss_kib,
        directs.get(),
        g0
    );
    let t_send = mono_ns();
    let batches = memory_frames("request", requesters, per, c.payload, timeout_ms);
    paced(&mut req_conns, &batches, per).await?;
    for conn in req_conns {
        let errs = errs.clone();
        tokio::task::spawn_local(read_until(conn, end, move |b: &[u8]| {
            let mut e = errs.borrow_mut();
            e.0 += 1;
            e.1.get_or_insert_with(|| String::from_utf8_lossy(b).into_owned());
        }));
    }
    let wait_end = mono_ns() + 15_000_000_000;
    while got.get() < total && mono_ns() < wait_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_in = (mono_ns() - t_send) as f64 / 1e9;
    tokio::time::sleep(settle).await;
    let after = procstat::sample(pid).context("broker /proc unreadable")?;
    let g1 = gauge(c.rest_addr, "ringcast_requests_in_flight");
    let in_flight = match (g0, g1) {
        (Some(a), Some(b)) => b - a,
        _ => total as f64,
    };
    let delta = (after.rss_kib as f64 - base.rss_kib as f64) * 1024.0;
    let per_req = delta / in_flight.max(1.0);
    let cold_per_req = (after.rss_kib as f64 - cold.rss_kib as f64) * 1024.0 / in_flight.max(1.0);
    let (nerr, first) = errs.borrow().clone();
    println!(
        "\nrequests sent {total} ({requesters} requesters x {per}), delivered to responders {} in {delivered_in:.2}s, requester frames (errors) {nerr}{}",
        got.get(),
        first.as_ref().map(|e| format!(" first: {e}")).unwrap_or_default()
    );
    println!(
        "ringcast_requests_in_flight: {} -> {}",
        g0.map(|x| x.to_string()).unwrap_or("-".into()),
        g1.map(|x| x.to_string()).unwrap_or("-".into())
    );
    println!(
        "without the warm-up (cold baseline {} KiB): {:.0} B per request in flight",
        cold.rss_kib, cold_per_req
    );
    println!(
        "broker RSS {} KiB (warm) -> {} KiB: {:.0} B per request in flight (target <= 256: {})",
        base.rss_kib,
        after.rss_kib,
        per_req,
        if per_req <= 256.0 { "PASS" } else { "FAIL" }
    );
    Ok(
        json!({"scenario": "rpc-memory", "requesters": requesters, "per_requester": per,
        "requests": total, "delivered_to_responders": got.get(), "errors": nerr, "first_error": first,
        "gauge_before": g0, "gauge_after": g1, "in_flight": in_flight,
        "rss_kib_cold": cold.rss_kib, "bytes_per_request_cold": cold_per_req,
        "warmup_sends": directs.get(), "rss_kib_before": base.rss_kib, "rss_kib_after": after.rss_kib,
        "bytes_per_request": per_req, "pass": per_req <= 256.0}),
    )
}

/// Writes each connection's `per` frames (`batches[j]`, equal-sized frames) one frame per
/// connection per 10 ms tick, so the broker never holds a burst of frames in flight: the
/// RSS difference is what stays, not a transient high-water mark.
async fn paced(conns: &mut [Conn], batches: &[Vec<u8>], per: usize) -> Result<()> {
    for i in 0..per {
        let tick = mono_ns() + 10_000_000;
        for (conn, out) in conns.iter_mut().zip(batches) {
            let len = out.len() / per.max(1);
            conn.write_all(&out[i * len..(i + 1) * len])
                .await
                .context("writing frames")?;
        }
        sleep_until_ns(tick).await;
    }
    Ok(())
}

// ---- deadline ---------------------------------------------------------------------------

struct DeadlineSpec {
    subscribers: usize,
    pub_rate: f64,
    requesters: usize,
    req_rate: f64,
    min_ms: u64,
    max_ms: u64,
    secs: f64,
    sub_nice: i32,
}

#[derive(Default)]
struct DlStats {
    late: Option<Histogram<u64>>,
    early: u64,
    earliest_ns: i64,
    sent: u64,
    other_errors: u64,
    first_error: Option<String>,
    lost_conns: u64,
    published: u64,
}

#[allow(unsafe_code)] // libc setpriority on one thread: std cannot lower a thread's priority.
fn nice_this_thread(n: i32) {
    if n == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, n);
    }
}

/// What the subscriber thread measured.
struct SubReport {
    connected: usize,
    deliveries_in_window: u64,
    lat: Histogram<u64>,
    lost: u64,
}

/// The fan-out subscribers on their own thread and runtime: opens them, reports how many
/// connected, waits for (window start, window end, end), counts deliveries until `end`.
fn subscriber_thread(
    ep: Endpoint,
    n: usize,
    nice: i32,
    conc: usize,
    ready: std::sync::mpsc::Sender<Result<usize>>,
    go: std::sync::mpsc::Receiver<(u64, u64, u64)>,
) -> std::thread::JoinHandle<Option<SubReport>> {
    std::thread::spawn(move || {
        nice_this_thread(nice);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let peers: Vec<String> = (0..n).map(|i| format!("fsub-{i}")).collect();
            let conns = match open_all(&ep, &peers, 50_000, conc).await {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let mut subs = Vec::with_capacity(conns.len());
            for mut c in conns {
                if let Err(e) = c.subscribe("fan").await {
                    let _ = ready.send(Err(e));
                    return None;
                }
                subs.push(c);
            }
            let _ = ready.send(Ok(subs.len()));
            let (w0, w1, end) = go.recv_timeout(Duration::from_secs(120)).ok()?;
            let st = Rc::new(RefCell::new((0u64, stats::new_hist(), 0u64)));
            let mut hs = Vec::new();
            for c in subs {
                let st = st.clone();
                let st2 = st.clone();
                hs.push(tokio::task::spawn_local(async move {
                    let ok = read_until(c, end, move |b: &[u8]| {
                        let now = mono_ns();
                        if now < w0 || now >= w1 {
                            return;
                        }
                        let mut s = st.borrow_mut();
                        s.0 += 1;
                        if let Some(t) = num_after(b, b"\"t\":") {
                            stats::rec(&mut s.1, now.saturating_sub(t));
                        }
                    })
                    .await;
                    if !ok {
                        st2.borrow_mut().2 += 1;
                    }
                }));
            }
            for h in hs {
                let _ = h.await;
            }
            let s = st.borrow();
            Some(SubReport {
                connected: n,
                deliveries_in_window: s.0,
                lat: s.1.clone(),
                lost: s.2,
            })
        })
    })
}

async fn deadline(c: &RpcCommon, d: &DeadlineSpec) -> Result<Value> {
    let ep = endpoint(c);
    let requesters = d.requesters.clamp(1, 5_000);
    let subscribers = d.subscribers.min(15_000);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let subs = (subscribers > 0).then(|| {
        subscriber_thread(
            ep.clone(),
            subscribers,
            d.sub_nice,
            c.connect_concurrency,
            ready_tx,
            go_rx,
        )
    });
    if subs.is_some() {
        let n =
            tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(120)))
                .await?
                .context("subscribers did not get ready")??;
        eprintln!("rpc deadline: {n} subscribers on `fan`");
    }
    let rsp: Vec<String> = (0..requesters).map(|j| format!("drsp-{j}")).collect();
    let req: Vec<String> = (0..requesters).map(|j| format!("dreq-{j}")).collect();
    let rsp_conns = open_all(&ep, &rsp, 0, c.connect_concurrency).await?;
    let req_conns = open_all(&ep, &req, requesters, c.connect_concurrency).await?;
    let publisher = if subscribers > 0 && d.pub_rate > 0.0 {
        Some(
            open_all(&ep, &["fpub-0".to_string()], 90_000, 1)
                .await?
                .remove(0),
        )
    } else {
        None
    };
    let start = mono_ns() + 300_000_000;
    let send_end = start + (d.secs * 1e9) as u64;
    // Fan-out covers every deadline: until the last one is due, plus a margin.
    let win_end = send_end + d.max_ms * 1_000_000 + 300_000_000;
    let end = win_end + 500_000_000;
    let _ = go_tx.send((start, win_end, end));
    let st = Rc::new(RefCell::new(DlStats {
        late: Some(stats::new_hist()),
        earliest_ns: i64::MAX,
        ..Default::default()
    }));
    for c in rsp_conns {
        tokio::task::spawn_local(read_until(c, end, |_: &[u8]| {}));
    }
    let per_rate = d.req_rate.clamp(0.1, 1e5) / requesters as f64;
    let per_count = (per_rate * d.secs).round() as u64;
    let span = d.max_ms - d.min_ms + 1;
    let size = c.payload;
    for (j, conn) in req_conns.into_iter().enumerate() {
        let stagger = j as f64 / requesters as f64;
        let due = move |i: u64| {
            (i < per_count).then(|| start + ((i as f64 + stagger) * 1e9 / per_rate) as u64)
        };
        let (st1, st2, st3) = (st.clone(), st.clone(), st.clone());
        let mut json = Vec::with_capacity(size + 160);
        let min_ms = d.min_ms;
        let build = move |i: u64, _due: u64, out: &mut Vec<u8>| {
            // timeoutMs spread evenly over [min, max]: a multiplicative hash of (pair, i).
            let h = (j as u64 * 1_000_003 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
            let ms = min_ms + h % span;
            let now = mono_ns();
            json.clear();
            let _ = write!(
                json,
                "{{\"type\":\"request\",\"to\":\"drsp-{j}\",\"requestId\":\"{now}.{ms}\",\"timeoutMs\":{ms},\"data\":"
            );
            data_into(&mut json, now, 0, size);
            json.push(b'}');
            frame(out, &json);
            st1.borrow_mut().sent += 1;
        };
        let on = move |b: &[u8]| {
            let now = mono_ns();
            let mut s = st2.borrow_mut();
            let parsed = contains(b, b"\"code\":\"request_timeout\"")
                .then(|| str_after(b, b"\"requestId\":\""))
                .flatten()
                .and_then(|r| std::str::from_utf8(r).ok())
                .and_then(|r| r.split_once('.'))
                .and_then(|(t, ms)| Some((t.parse::<u64>().ok()?, ms.parse::<u64>().ok()?)));
            match parsed {
                Some((t, ms)) => {
                    let due = t + ms * 1_000_000;
                    let late = now as i64 - due as i64;
                    if late < 0 {
                        s.early += 1;
                    }
                    s.earliest_ns = s.earliest_ns.min(late);
                    if let Some(h) = s.late.as_mut() {
                        stats::rec(h, late.max(0) as u64);
                    }
                }
                None => {
                    s.other_errors += 1;
                    s.first_error
                        .get_or_insert_with(|| String::from_utf8_lossy(b).into_owned());
                }
            }
        };
        tokio::task::spawn_local(async move {
            if !drive(conn, end, due, build, on).await {
                st3.borrow_mut().lost_conns += 1;
            }
        });
    }
    if let Some(p) = publisher {
        let gap = 1e9 / d.pub_rate.clamp(0.1, 1e5);
        let n = ((win_end - start) as f64 / gap) as u64;
        let (st1, st2) = (st.clone(), st.clone());
        let mut json = Vec::with_capacity(size + 96);
        let due = move |i: u64| (i < n).then(|| start + (i as f64 * gap) as u64);
        let build = move |_i: u64, _due: u64, out: &mut Vec<u8>| {
            json.clear();
            json.extend_from_slice(b"{\"type\":\"publish\",\"channel\":\"fan\",\"data\":");
            data_into(&mut json, mono_ns(), 0, size);
            json.push(b'}');
            frame(out, &json);
            st1.borrow_mut().published += 1;
        };
        let st3 = st.clone();
        tokio::task::spawn_local(async move {
            let on = move |b: &[u8]| {
                let mut s = st2.borrow_mut();
                s.other_errors += 1;
                s.first_error
                    .get_or_insert_with(|| String::from_utf8_lossy(b).into_owned());
            };
            if !drive(p, end, due, build, on).await {
                st3.borrow_mut().lost_conns += 1;
            }
        });
    }
    sleep_until_ns(start).await;
    let (b0, g0) = (broker_cpu(c), own_cpu());
    sleep_until_ns(win_end).await;
    let (b1, g1) = (broker_cpu(c), own_cpu());
    sleep_until_ns(end).await;
    let win = (win_end - start) as f64 / 1e9;
    let sub = match subs {
        Some(h) => tokio::task::spawn_blocking(move || h.join().ok().flatten()).await?,
        None => None,
    };
    let s = st.borrow();
    let h = s.late.clone().unwrap_or_else(stats::new_hist);
    let l = Lat::of(&h);
    let bcpu = b0.zip(b1).map(|(a, b)| (b - a) / win);
    let gcpu = g0.zip(g1).map(|(a, b)| (b - a) / win);
    println!(
        "\nrequests sent {}, request_timeout received {}, other error frames {}, connections lost {}{}",
        s.sent,
        l.count,
        s.other_errors,
        s.lost_conns,
        s.first_error
            .as_ref()
            .map(|e| format!("; first: {e}"))
            .unwrap_or_default()
    );
    println!(
        "timeout lateness (arrival - (send + timeoutMs)): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; early {} (earliest {:.2} ms) (target p99 <= 20 ms: {})",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.max_ms,
        s.early,
        if s.earliest_ns == i64::MAX { 0.0 } else { s.earliest_ns as f64 / 1e6 },
        if l.p99_ms <= 20.0 && l.count > 0 { "PASS" } else { "FAIL" }
    );
    let fan = sub.as_ref().map(|r| {
        let fl = Lat::of(&r.lat);
        println!(
            "fan-out: {} subscribers, {:.0} pub/s sent, {:.0} deliveries/s received (publish -> subscriber p50 {:.2} ms, p99 {:.2} ms), receivers lost {}",
            r.connected,
            s.published as f64 / win,
            r.deliveries_in_window as f64 / win,
            fl.p50_ms,
            fl.p99_ms,
            r.lost
        );
        json!({"subscribers": r.connected, "pub_per_sec": s.published as f64 / win,
            "deliveries_per_sec": r.deliveries_in_window as f64 / win, "latency": fl, "lost": r.lost})
    });
    println!(
        "broker CPU {} of a core, generator CPU {} of a core, over {:.1}s",
        bcpu.map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or("-".into()),
        gcpu.map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or("-".into()),
        win
    );
    Ok(
        json!({"scenario": "rpc-deadline", "requesters": requesters, "req_rate": d.req_rate,
        "timeout_ms": [d.min_ms, d.max_ms], "secs": d.secs, "sent": s.sent, "timeouts": l.count,
        "lateness": l, "early": s.early, "other_errors": s.other_errors, "first_error": s.first_error,
        "connections_lost": s.lost_conns, "fanout": fan, "broker_cpu_share": bcpu,
        "generator_cpu_share": gcpu, "pass": l.p99_ms <= 20.0 && l.count > 0}),
    )
}
