//! A worker process: opens its share of the connections (at most ~19,000: a process may hold
//! 20,000 fds), reports `ready`, waits for `go <start_ns>` on stdin, runs the open-loop
//! schedule, and prints its measurements as one JSON line. Single-threaded tokio: the
//! coordinator starts one worker per core it may use.

use std::{cell::RefCell, collections::HashMap, rc::Rc, time::Duration};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::stats::{self, mono_ns, HistDump, SeqTrack, Stamp};
use crate::target::{inbox, Conn, Endpoint, Route, Target};

/// One rate level of the schedule.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Messages per second, per publisher.
    pub rate_per_pub: f64,
    pub secs: f64,
}

/// A receiving connection: subscribes to `channel`, or (None) only receives direct sends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SubSpec {
    pub peer: String,
    pub channel: Option<String>,
    /// ringcast §8.2: subscribe to `channel` as a member of this queue group.
    #[serde(default)]
    pub group: Option<String>,
    /// ringcast §8.3: wildcard subscriptions made after `channel` (`"pattern":true`).
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// Where a publisher's messages go.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Dest {
    Channel(String),
    Peer(String),
}

/// A publishing connection with id `g`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PubSpec {
    pub peer: String,
    pub g: u32,
    pub dest: Dest,
}

/// What one worker does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub id: usize,
    pub ep: Endpoint,
    pub subs: Vec<SubSpec>,
    pub pubs: Vec<PubSpec>,
    pub total_pubs: usize,
    pub steps: Vec<Step>,
    pub payload: usize,
    pub connect_concurrency: usize,
    /// Extra time after the schedule (idle density: the whole measurement).
    pub hold_secs: f64,
    /// Time after the last publish for deliveries in flight.
    pub grace_secs: f64,
    /// Connect/subscribe/close cycles per second during the run (churn), on `churn_channel`.
    pub churn_per_sec: f64,
    pub churn_channel: Option<String>,
    /// Sequence numbers tracked for the "last subscriber" latency of publisher 0.
    pub track_last: bool,
    /// Publishers wait for each send time by yielding in a loop for its last 2 ms instead of
    /// relying on tokio's timer alone (1 ms granularity: sends up to ~1 ms late, which the
    /// open-loop latency then includes). Costs a core; for few-connection latency runs.
    #[serde(default)]
    pub spin: bool,
    /// A publisher writes at most once per this many ms: every frame due by then goes out in
    /// one write (one syscall). 0: a write per send time (frames that fell due while the
    /// publisher was late still share one write). Send times, and the latency measured from
    /// them, are unchanged either way.
    #[serde(default)]
    pub batch_ms: f64,
    /// Also track every publisher's sequence numbers across all of this worker's receivers
    /// together (queue groups: each publication must reach exactly one member).
    #[serde(default)]
    pub union_track: bool,
}

/// A worker's report.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub id: usize,
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub setup_secs: f64,
    pub connect_hist: HistDump,
    /// Per step: messages sent (all publishers of this worker).
    pub sent: Vec<u64>,
    pub send_errors: u64,
    /// Per step: delivery latency, from intended send time.
    pub step_hist: Vec<HistDump>,
    /// Per step: how late each message was handed to the kernel (write start minus intended
    /// send time): the generator's own lag, part of the delivery latency.
    #[serde(default)]
    pub send_lag: Vec<HistDump>,
    pub unique: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Deliveries that carried no stamp or an unknown step.
    pub foreign: u64,
    /// Receivers that ended before the run did.
    pub receivers_lost: u64,
    /// Per sequence number of publisher 0: latest delivery latency seen (ns).
    pub last_by_seq: Vec<u64>,
    pub churn_cycles: u64,
    pub churn_failed: u64,
    /// With `union_track`: per publisher, the sequence numbers any receiver got (a bitset)
    /// and the deliveries per receiver.
    #[serde(default)]
    pub union: Vec<crate::ext::UnionDump>,
    #[serde(default)]
    pub per_receiver: Vec<u64>,
}

#[derive(Default)]
struct Shared {
    hists: Vec<Histogram<u64>>,
    lags: Vec<Histogram<u64>>,
    tracks: Vec<HashMap<u32, SeqTrack>>,
    last_by_seq: Vec<u64>,
    sent: Vec<u64>,
    send_errors: u64,
    recv: u64,
    foreign: u64,
    receivers_lost: u64,
    churn_cycles: u64,
    churn_failed: u64,
    union: HashMap<u32, SeqTrack>,
}

#[allow(unsafe_code)] // libc getrlimit/setrlimit: std cannot raise RLIMIT_NOFILE.
pub(crate) fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn emit<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}

/// Waits until `t` with sub-millisecond precision: tokio's timer until 2 ms before, then
/// yields (other tasks of the worker keep running) until the time has come.
pub async fn spin_until_ns(t: u64) {
    sleep_until_ns(t.saturating_sub(2_000_000)).await;
    while mono_ns() < t {
        tokio::task::yield_now().await;
    }
}

async fn sleep_until_ns(t: u64) {
    let now = mono_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// Runs a worker; `spec_line` is the first stdin line.
pub fn run() -> Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, work())
}

async fn work() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin.next_line().await?.context("no spec on stdin")?;
    let spec: WorkerSpec = serde_json::from_str(&line).context("bad worker spec")?;
    let mut res = WorkerResult {
        id: spec.id,
        ..Default::default()
    };
    let nsteps = spec.steps.len();
    let sh = Rc::new(RefCell::new(Shared {
        hists: (0..nsteps).map(|_| stats::new_hist()).collect(),
        lags: (0..nsteps).map(|_| stats::new_hist()).collect(),
        tracks: (0..spec.subs.len()).map(|_| HashMap::new()).collect(),
        sent: vec![0; nsteps],
        ..Default::default()
    }));

    // Setup: receivers first, then publishers, `connect_concurrency` at a time.
    let mut connect_hist = stats::new_hist();
    let t0 = mono_ns();
    let sem = Rc::new(tokio::sync::Semaphore::new(spec.connect_concurrency.max(1)));
    let mut handles = Vec::new();
    let n_subs = spec.subs.len();
    for (i, s) in spec.subs.iter().enumerate() {
        let (mut ep, s, sem) = (spec.ep.clone(), s.clone(), sem.clone());
        if !ep.sub_addrs.is_empty() {
            // Spread evenly over the nodes (each worker's subscribers in turn).
            ep.addr = ep.sub_addrs[(spec.id + i) % ep.sub_addrs.len()];
        }
        let n = spec.id * 100_003 + i;
        handles.push(tokio::task::spawn_local(async move {
            let _p = sem.acquire().await;
            let t = mono_ns();
            let r = async {
                let mut c = Conn::open(&ep, n, &s.peer).await?;
                match (&s.channel, ep.target) {
                    (Some(ch), _) => match &s.group {
                        Some(g) => drop(c.subscribe_ext(ch, &format!(",\"group\":\"{g}\"")).await?),
                        None => c.subscribe(ch).await?,
                    },
                    (None, Target::Ringcast) => {}
                    (None, _) => c.subscribe(&inbox(&s.peer)).await?,
                }
                for p in &s.patterns {
                    c.subscribe_ext(p, ",\"pattern\":true").await?;
                }
                anyhow::Ok(c)
            }
            .await;
            (r, mono_ns() - t)
        }));
    }
    for (j, p) in spec.pubs.iter().enumerate() {
        let (mut ep, p, sem) = (spec.ep.clone(), p.clone(), sem.clone());
        if let Some(a) = ep.pub_addr {
            ep.addr = a;
        }
        let n = spec.id * 100_003 + n_subs + j;
        handles.push(tokio::task::spawn_local(async move {
            let _p = sem.acquire().await;
            let t = mono_ns();
            (Conn::open(&ep, n, &p.peer).await, mono_ns() - t)
        }));
    }
    let mut conns = Vec::with_capacity(handles.len());
    for h in handles {
        let (r, dt) = h.await?;
        match r {
            Ok(c) => {
                res.connected += 1;
                stats::rec(&mut connect_hist, dt);
                conns.push(Some(c));
            }
            Err(e) => {
                res.failed += 1;
                res.first_error.get_or_insert_with(|| format!("{e:#}"));
                conns.push(None);
            }
        }
    }
    res.setup_secs = (mono_ns() - t0) as f64 / 1e9;
    res.connect_hist = HistDump::of(&connect_hist);
    emit(
        &serde_json::json!({"ev": "ready", "id": spec.id, "connected": res.connected, "failed": res.failed}),
    );

    let go = stdin.next_line().await?.context("no go line")?;
    let start: u64 = go
        .trim()
        .strip_prefix("go ")
        .context("expected `go <ns>`")?
        .parse()?;
    let sched_ns: u64 = spec.steps.iter().map(|s| (s.secs * 1e9) as u64).sum();
    let end = start + sched_ns + ((spec.hold_secs + spec.grace_secs) * 1e9) as u64;

    let mut pub_conns = conns.split_off(n_subs);
    for (i, c) in conns.into_iter().enumerate() {
        let Some(mut c) = c else { continue };
        let sh = sh.clone();
        let (track_last, union_track) = (spec.track_last, spec.union_track);
        tokio::task::spawn_local(async move {
            loop {
                let mut on = |b: &[u8]| {
                    let now = mono_ns();
                    let mut s = sh.borrow_mut();
                    let Some(Stamp { g, s: seq, r, t }) = stats::scan(b) else {
                        s.foreign += 1;
                        return;
                    };
                    s.recv += 1;
                    let lat = now.saturating_sub(t);
                    match s.hists.get_mut(r as usize) {
                        Some(h) => stats::rec(h, lat),
                        None => {
                            s.foreign += 1;
                            return;
                        }
                    }
                    s.tracks[i].entry(g).or_default().record(seq);
                    if union_track {
                        s.union.entry(g).or_default().record(seq);
                    }
                    if track_last && g == 0 {
                        let seq = seq as usize;
                        if seq < 50_000_000 {
                            if s.last_by_seq.len() <= seq {
                                s.last_by_seq.resize(seq + 1, 0);
                            }
                            s.last_by_seq[seq] = s.last_by_seq[seq].max(lat);
                        }
                    }
                };
                match c.recv(&mut on).await {
                    Ok(true) => {}
                    _ => {
                        if mono_ns() < end {
                            sh.borrow_mut().receivers_lost += 1;
                        }
                        return;
                    }
                }
            }
        });
    }

    for (j, c) in pub_conns.iter_mut().enumerate() {
        let Some(mut c) = c.take() else { continue };
        let p = spec.pubs[j].clone();
        let (steps, sh, size, target) =
            (spec.steps.clone(), sh.clone(), spec.payload, spec.ep.target);
        let stagger = p.g as f64 / spec.total_pubs.max(1) as f64;
        let (spin, batch_ns) = (spec.spin, (spec.batch_ms.max(0.0) * 1e6) as u64);
        tokio::task::spawn_local(async move {
            let route = match &p.dest {
                Dest::Channel(ch) => Route::channel(target, ch),
                Dest::Peer(to) => Route::peer(target, to),
            };
            // Message i of step k is due at starts[k] + (i + stagger) * gap[k]; the latency of
            // every message is measured from that time however late it is written.
            let mut starts = Vec::with_capacity(steps.len());
            let mut at = start;
            for st in &steps {
                starts.push(at);
                at += (st.secs * 1e9) as u64;
            }
            let count = |k: usize| (steps[k].rate_per_pub * steps[k].secs).round() as u64;
            let due = |k: usize, i: u64| {
                starts[k] + ((i as f64 + stagger) * 1e9 / steps[k].rate_per_pub.max(1e-9)) as u64
            };
            let (mut k, mut i, mut seq) = (0usize, 0u64, 0u64);
            let mut frames = Vec::with_capacity(16 * 1024);
            let mut data = Vec::with_capacity(size + 64);
            let mut per_step = vec![0u64; steps.len()];
            // (step, intended send time) of the frames in `frames`.
            let mut batch: Vec<(usize, u64)> = Vec::new();
            let mut last_write = 0u64;
            loop {
                while k < steps.len() && i >= count(k) {
                    k += 1;
                    i = 0;
                }
                if k == steps.len() {
                    break;
                }
                // Wake at the next send time, but (with --batch-ms) no sooner than `batch_ns`
                // after the previous write: every frame due by then goes out in one write.
                let wake = due(k, i).max(last_write + batch_ns);
                if spin {
                    spin_until_ns(wake).await;
                } else {
                    sleep_until_ns(wake).await;
                }
                let now = mono_ns();
                while k < steps.len() {
                    if i >= count(k) {
                        k += 1;
                        i = 0;
                        continue;
                    }
                    let t = due(k, i);
                    if t > now {
                        break;
                    }
                    stats::payload_into(
                        &mut data,
                        Stamp {
                            g: p.g,
                            s: seq,
                            r: k as u32,
                            t,
                        },
                        size,
                    );
                    c.push_publish(&mut frames, &route, &data);
                    batch.push((k, t));
                    per_step[k] += 1;
                    seq += 1;
                    i += 1;
                }
                last_write = now;
                let wt = mono_ns();
                let ok = c.write_all(&frames).await.is_ok();
                frames.clear();
                let mut s = sh.borrow_mut();
                for &(k, t) in &batch {
                    stats::rec(&mut s.lags[k], wt.saturating_sub(t));
                }
                batch.clear();
                for (n, x) in per_step.iter_mut().enumerate() {
                    if ok {
                        s.sent[n] += *x;
                    } else {
                        s.send_errors += *x;
                    }
                    *x = 0;
                }
            }
            // Keep the connection open until the worker reports.
            std::future::pending::<()>().await;
            drop(c);
        });
    }

    if spec.churn_per_sec > 0.0 {
        let (ep, sh, ch, rate, id) = (
            spec.ep.clone(),
            sh.clone(),
            spec.churn_channel.clone(),
            spec.churn_per_sec,
            spec.id,
        );
        tokio::task::spawn_local(async move {
            let stop = start + sched_ns;
            let mut i = 0u64;
            while mono_ns() + 1_000_000_000 < stop {
                sleep_until_ns(start + (i as f64 * 1e9 / rate) as u64).await;
                let (ep, sh, ch) = (ep.clone(), sh.clone(), ch.clone());
                let n = 7_000_000 + id * 100_003 + i as usize;
                tokio::task::spawn_local(async move {
                    let peer = format!("churn-{id}-{n}");
                    let r = async {
                        let mut c = Conn::open(&ep, n, &peer).await?;
                        if let Some(ch) = &ch {
                            c.subscribe(ch).await?;
                        }
                        let hold = tokio::time::sleep(Duration::from_millis(500));
                        tokio::pin!(hold);
                        let mut ignore = |_: &[u8]| {};
                        loop {
                            tokio::select! {
                                _ = &mut hold => break,
                                r = c.recv(&mut ignore) => if !r? { break },
                            }
                        }
                        let _ = c.close().await;
                        anyhow::Ok(())
                    }
                    .await;
                    let mut s = sh.borrow_mut();
                    match r {
                        Ok(()) => s.churn_cycles += 1,
                        Err(_) => s.churn_failed += 1,
                    }
                });
                i += 1;
            }
        });
    }

    // Progress every second until the end.
    while mono_ns() < end {
        tokio::time::sleep(
            Duration::from_millis(1000).min(Duration::from_nanos(end.saturating_sub(mono_ns()))),
        )
        .await;
        let s = sh.borrow();
        emit(
            &serde_json::json!({"ev": "progress", "id": spec.id, "sent": s.sent.iter().sum::<u64>(), "recv": s.recv}),
        );
    }

    let s = sh.borrow();
    res.sent = s.sent.clone();
    res.send_errors = s.send_errors;
    res.step_hist = s.hists.iter().map(HistDump::of).collect();
    res.send_lag = s.lags.iter().map(HistDump::of).collect();
    for t in s.tracks.iter().flat_map(|m| m.values()) {
        res.unique += t.unique;
        res.duplicated += t.duplicated;
        res.reordered += t.reordered;
    }
    res.foreign = s.foreign;
    res.receivers_lost = s.receivers_lost;
    res.last_by_seq = s.last_by_seq.clone();
    res.churn_cycles = s.churn_cycles;
    res.churn_failed = s.churn_failed;
    if spec.union_track {
        res.union = crate::ext::union_dump(&s.union);
        res.per_receiver = s
            .tracks
            .iter()
            .map(|m| m.values().map(|t| t.unique + t.duplicated).sum())
            .collect();
    }
    emit(&serde_json::json!({"ev": "result", "result": res}));
    std::process::exit(0);
}
