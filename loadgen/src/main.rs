//! ringcast-loadgen: an open-loop load generator for ringcast, nats-server (WebSocket) and
//! mosquitto (WebSocket).
//!
//! # Layout
//! - `main.rs`: the CLI and the coordinator. It takes the connection plan of a scenario
//!   ([`plan`]), starts worker processes (re-executing itself as `ringcast-loadgen worker`),
//!   starts them together with `go <t>`, samples the broker's /proc while they run, merges
//!   their reports, prints a summary table and writes JSON.
//! - [`plan`]: the scenarios' connection plans: who subscribes to what, who publishes where,
//!   the rate steps.
//! - [`worker`]: one process's connections, publishers (each message has an intended send
//!   time; latency is measured from it, so a stalled broker shows up as latency, not as a
//!   slower generator) and receivers (every delivery counted per publisher sequence number).
//! - [`target`]: the three brokers' client protocols over our own WebSocket client (a
//!   publisher writes every frame that is due in one write; a receiver parses every frame of
//!   a read).
//! - [`stats`]: payload stamp, sequence tracking, histograms.
//! - [`pingpong`]: the raw loopback TCP round trip, the latency floor.
//! - [`tcpfanout`]: raw loopback TCP fan-out (one pinned sender, N sockets), the floor under
//!   "one publish reaches the last of N subscribers".
//! - [`procstat`]: broker RSS and CPU from /proc/PID.
//! - [`ext`]: the protocol §8 scenarios (`wildcard`, `group`, `resume`, `retain`).

mod ext;
mod pingpong;
mod plan;
mod procstat;
mod rest;
mod rpc;
mod stats;
mod target;
mod tcpfanout;
mod worker;

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use plan::Plan;
use stats::{mono_ns, HistDump, Lat};
use target::{Endpoint, Target};
use worker::{WorkerResult, WorkerSpec};

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-loadgen",
    about = "Open-loop WebSocket pub/sub load generator (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One channel × N subscribers, one publisher, rising rate (`--rates`).
    Fanout {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// The channel (ringcast: `hist/fan` is a history channel under ext.sh's config).
        #[arg(long, default_value = "fan")]
        channel: String,
        /// Publish rates (msg/s), one step each.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,200")]
        rates: Vec<f64>,
        /// Connect/subscribe/close cycles per second (all workers together) during the run.
        #[arg(long, default_value_t = 0.0)]
        churn_per_sec: f64,
    },
    /// C channels × S subscribers, one publisher per channel, total rate split evenly.
    ManyChannels {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1_000)]
        channels: usize,
        #[arg(long, default_value_t = 10)]
        subscribers_per_channel: usize,
        /// Total publishes per second, one step each.
        #[arg(long, value_delimiter = ',', default_value = "20000")]
        rates: Vec<f64>,
    },
    /// P peer pairs; each sender sends directly to its receiver.
    Direct {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1_000)]
        pairs: usize,
        /// Total sends per second, one step each.
        #[arg(long, value_delimiter = ',', default_value = "100000")]
        rates: Vec<f64>,
    },
    /// N subscribed connections held open; broker RSS and CPU sampled (needs --broker-pid).
    Idle {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        /// Channels the connections subscribe to (round robin).
        #[arg(long, default_value_t = 100)]
        channels: usize,
    },
    /// Connection setup rate: N connections opened (and subscribed) as fast as allowed.
    Connect {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Raw loopback TCP ping-pong at a fixed rate: the latency floor.
    Pingpong {
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Wait for send times by yielding instead of tokio's 1 ms timer (as `fanout --spin-timer`).
        #[arg(long)]
        spin_timer: bool,
        /// Pin the echo server thread to this CPU (so the round trip crosses cores like a
        /// broker's would: generator on one core, broker on another).
        #[arg(long)]
        echo_cpu: Option<usize>,
    },
    /// Raw loopback TCP fan-out: one sender thread pinned to `--sender-cpu` writes a 64-byte
    /// record to each of `--sockets` connections per publish; the receiving ends are in
    /// separate processes. The floor under "publish -> last of N subscribers".
    TcpFanout {
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        /// Publishes per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Pin the sender thread to this CPU (compare.sh: the broker core).
        #[arg(long, default_value_t = 0)]
        sender_cpu: usize,
        /// Receivers connect from 127.0.0.2 .. 127.0.0.(1+N).
        #[arg(long, default_value_t = 8)]
        src_ips: u8,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Internal: a tcp-fanout receiver process (spec on stdin).
    #[command(hide = true)]
    TcpFanoutRx,
    /// REST publish (ringcast only): closed loop, `--connections` keep-alive HTTP/1.1
    /// connections with `--pipeline` requests in flight each.
    Rest {
        /// ringcast's REST listener (`--rest-listen`).
        #[arg(long, default_value = "127.0.0.1:8081")]
        addr: SocketAddr,
        #[arg(long, env = "RINGCAST_KEY_ID", default_value = "sk_id_test1")]
        key_id: String,
        #[arg(
            long,
            env = "RINGCAST_KEY_SECRET",
            default_value = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
        )]
        key_secret: String,
        #[arg(long, default_value = "rest")]
        channel: String,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Request body size, bytes (approximately).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long)]
        broker_pid: Option<u32>,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// §8.3: many channels (one subscriber, one publisher each) next to connections holding
    /// non-matching pattern subscriptions; `--patterns 0` is the baseline.
    Wildcard {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        w: ext::WildcardArgs,
    },
    /// §8.2: publishers on one channel, a queue group of `--members`; each publication must
    /// reach exactly one member.
    Group {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        g: ext::GroupArgs,
    },
    /// §8.1: time to resume `--missed` messages (subscribe with `since`), closed loop.
    Resume(ext::ResumeArgs),
    /// §8.1: broker memory per retained message (needs --broker-pid and the REST listener).
    Retain(ext::RetainArgs),
    /// Internal: a worker process (spec on stdin).
    #[command(hide = true)]
    Worker,
    /// Requests and replies (protocol §8.4): round trip, memory per request, deadlines.
    #[command(subcommand)]
    Rpc(rpc::RpcCmd),
}

#[derive(Args, Debug, Clone)]
struct Common {
    #[arg(long, value_enum, default_value_t = Target::Ringcast)]
    target: Target,
    /// Broker address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Publishers connect here instead of `--addr` (another ringcast node of a cluster:
    /// loadgen/cluster.sh). Must be loopback.
    #[arg(long)]
    pub_addr: Option<SocketAddr>,
    /// Subscribers connect to these, round-robin, instead of `--addr` (the nodes of a
    /// cluster: loadgen/cluster3.sh). Comma-separated, loopback only.
    #[arg(long, value_delimiter = ',')]
    sub_addrs: Vec<SocketAddr>,
    #[arg(long, env = "RINGCAST_KEY_ID", default_value = "sk_id_test1")]
    key_id: String,
    #[arg(
        long,
        env = "RINGCAST_KEY_SECRET",
        default_value = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
    )]
    key_secret: String,
    /// Worker processes (default: enough for ≤18,000 connections each, at least 2).
    #[arg(long)]
    workers: Option<usize>,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 8)]
    src_ips: u8,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    /// Payload bytes (the publish's `data`).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Concurrent connection attempts per worker.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds to hold after the schedule (idle: the measurement window).
    #[arg(long, default_value_t = 0.0)]
    hold_secs: f64,
    /// Seconds after the last publish for in-flight deliveries.
    #[arg(long, default_value_t = 2.0)]
    grace_secs: f64,
    /// Broker PID: RSS and CPU are sampled from /proc/PID.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A step whose p99 exceeds this many ms is marked broken.
    #[arg(long, default_value_t = 15.0)]
    break_p99_ms: f64,
    /// Receive presence frames (ringcast tokens get the `presence` permission).
    #[arg(long)]
    presence: bool,
    /// Results JSON file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Publishers wait for send times by yielding instead of tokio's 1 ms timer (precise send
    /// times, costs a generator core; meant for the 1 -> 1 latency run).
    #[arg(long)]
    spin_timer: bool,
    /// A publisher writes at most once per this many ms, all frames due by then in one write
    /// (one syscall); each message keeps its own send time and latency is measured from it,
    /// so the batching delay shows in the latency. 0: one write per send time (frames that
    /// fell due while the publisher ran late still share a write).
    #[arg(long, default_value_t = 0.0)]
    batch_ms: f64,
    /// Hard cap on the whole run, seconds.
    #[arg(long, default_value_t = 600.0)]
    max_secs: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (c, plan) = match cli.cmd {
        Cmd::Worker => return worker::run(),
        Cmd::Rpc(cmd) => return rpc::run(cmd),
        Cmd::TcpFanoutRx => return tcpfanout::receiver(),
        Cmd::TcpFanout {
            sockets,
            rate,
            secs,
            sender_cpu,
            src_ips,
            out,
        } => {
            return tcpfanout::run(tcpfanout::Spec {
                sockets,
                rate,
                secs,
                sender_cpu: Some(sender_cpu),
                src_ips,
                out,
            })
        }
        Cmd::Pingpong {
            rate,
            secs,
            payload,
            out,
            echo_cpu,
            spin_timer,
        } => return pingpong::run(rate, secs, payload, out, echo_cpu, spin_timer),
        Cmd::Rest {
            addr,
            key_id,
            key_secret,
            channel,
            connections,
            pipeline,
            secs,
            payload,
            broker_pid,
            out,
        } => {
            return rest::run(rest::RestSpec {
                addr,
                key_id,
                key_secret,
                channel,
                connections,
                pipeline,
                secs: secs.min(600.0),
                payload,
                broker_pid,
                out,
            })
        }
        Cmd::Resume(a) => return ext::resume(a),
        Cmd::Retain(a) => return ext::retain(a),
        Cmd::Wildcard { c, w } => {
            let plan = ext::wildcard_plan(&w, c.step_secs);
            (c, plan)
        }
        Cmd::Group { c, g } => {
            let plan = ext::group_plan(&g, c.step_secs);
            (c, plan)
        }
        Cmd::Fanout {
            c,
            subscribers,
            channel,
            rates,
            churn_per_sec,
        } => {
            let plan = Plan::fanout(&channel, subscribers, &rates, c.step_secs, churn_per_sec);
            (c, plan)
        }
        Cmd::ManyChannels {
            c,
            channels,
            subscribers_per_channel,
            rates,
        } => {
            let plan = Plan::many_channels(channels, subscribers_per_channel, &rates, c.step_secs);
            (c, plan)
        }
        Cmd::Direct { c, pairs, rates } => {
            let plan = Plan::direct(pairs, &rates, c.step_secs);
            (c, plan)
        }
        Cmd::Idle {
            c,
            connections,
            channels,
        } => (c, Plan::idle(connections, channels)),
        Cmd::Connect { c, connections } => (c, Plan::connect(connections)),
    };
    coordinate(c, plan)
}

struct WorkerProc {
    child: Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

fn spawn_worker(spec: &WorkerSpec, progress: Arc<Vec<AtomicU64>>) -> Result<WorkerProc> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn worker")?;
    let stdin = child.stdin.as_mut().context("worker stdin")?;
    writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
    let out = child.stdout.take().context("worker stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let id = spec.id;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["ev"] == "progress" {
                progress[2 * id].store(v["sent"].as_u64().unwrap_or(0), Ordering::Relaxed);
                progress[2 * id + 1].store(v["recv"].as_u64().unwrap_or(0), Ordering::Relaxed);
            } else if tx.send(v).is_err() {
                break;
            }
        }
    });
    Ok(WorkerProc { child, lines: rx })
}

fn recv_ev(w: &WorkerProc, ev: &str, deadline: std::time::Instant) -> Result<serde_json::Value> {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = w
            .lines
            .recv_timeout(left)
            .with_context(|| format!("worker did not report `{ev}` in time"))?;
        if v["ev"] == ev {
            return Ok(v);
        }
    }
}

fn coordinate(c: Common, plan: Plan) -> Result<()> {
    if !c.addr.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses, not {}", c.addr);
    }
    if let Some(a) = c.pub_addr.filter(|a| !a.ip().is_loopback()) {
        bail!("loadgen only targets loopback addresses, not {a}");
    }
    if let Some(a) = c.sub_addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("loadgen only targets loopback addresses, not {a}");
    }
    let conns = plan.subs.len() + plan.pubs.len();
    let nw = c
        .workers
        .unwrap_or_else(|| conns.div_ceil(18_000).max(2))
        .max(1);
    if conns.div_ceil(nw) > 19_000 {
        bail!("{conns} connections over {nw} workers exceeds 19,000 per process; raise --workers");
    }
    let ep = Endpoint {
        target: c.target,
        addr: c.addr,
        key_id: c.key_id.clone(),
        key_secret: c.key_secret.clone(),
        presence: c.presence,
        pub_addr: c.pub_addr,
        sub_addrs: c.sub_addrs.clone(),
        src_ips: (0..c.src_ips.max(1))
            .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k))
            .collect(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(c.max_secs);
    let base = c.broker_pid.and_then(procstat::sample);
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..2 * nw).map(|_| AtomicU64::new(0)).collect());
    let mut ws = Vec::new();
    for id in 0..nw {
        let spec = WorkerSpec {
            id,
            ep: ep.clone(),
            subs: plan.subs.iter().skip(id).step_by(nw).cloned().collect(),
            pubs: plan.pubs.iter().skip(id).step_by(nw).cloned().collect(),
            total_pubs: plan.pubs.len(),
            steps: plan.steps.clone(),
            payload: c.payload,
            connect_concurrency: c.connect_concurrency,
            hold_secs: c.hold_secs,
            grace_secs: c.grace_secs,
            churn_per_sec: plan.churn_per_sec / nw as f64,
            churn_channel: plan.churn_channel.clone(),
            track_last: plan.track_last,
            spin: c.spin_timer,
            batch_ms: c.batch_ms,
            union_track: plan.union_track,
        };
        ws.push(spawn_worker(&spec, progress.clone())?);
    }
    eprintln!(
        "loadgen: {} on {:?} {}: {} connections over {nw} workers",
        plan.name, c.target, c.addr, conns
    );
    let setup_t0 = mono_ns();
    let mut connected = 0;
    for w in &ws {
        connected += recv_ev(w, "ready", deadline)?["connected"]
            .as_u64()
            .unwrap_or(0);
    }
    let setup_wall = (mono_ns() - setup_t0) as f64 / 1e9;
    eprintln!("loadgen: {connected}/{conns} connected in {setup_wall:.2}s");
    let after_setup = c.broker_pid.and_then(procstat::sample);

    let start = mono_ns() + 300_000_000;
    for w in &mut ws {
        writeln!(w.child.stdin.as_mut().context("stdin")?, "go {start}")?;
    }
    // Sample the broker at each step boundary; print progress meanwhile.
    let mut marks = vec![start];
    for st in &plan.steps {
        let last = *marks.last().unwrap_or(&start);
        marks.push(last + (st.secs * 1e9) as u64);
    }
    if plan.steps.is_empty() {
        marks.push(start + (c.hold_secs * 1e9) as u64);
    }
    let mut cpu_marks = Vec::new();
    // The generator's own CPU (all workers), sampled at the same marks: whether the generator
    // or the broker was the limit of a step.
    let worker_pids: Vec<u32> = ws.iter().map(|w| w.child.id()).collect();
    let gen_cpu = || -> Option<f64> {
        worker_pids
            .iter()
            .map(|&p| procstat::sample(p).map(|s| s.cpu_secs))
            .sum()
    };
    let mut gen_marks = Vec::new();
    let mut next_progress = mono_ns() + 2_000_000_000;
    for &m in &marks {
        loop {
            let now = mono_ns();
            if now >= m {
                break;
            }
            if now >= next_progress {
                let (s, r) = (0..nw).fold((0, 0), |(s, r), i| {
                    (
                        s + progress[2 * i].load(Ordering::Relaxed),
                        r + progress[2 * i + 1].load(Ordering::Relaxed),
                    )
                });
                eprintln!(
                    "loadgen: t={:.0}s sent={s} delivered={r}",
                    (now.saturating_sub(start)) as f64 / 1e9
                );
                next_progress = now + 2_000_000_000;
            }
            std::thread::sleep(Duration::from_nanos((m - now).min(100_000_000)));
        }
        cpu_marks.push(c.broker_pid.and_then(procstat::sample));
        gen_marks.push(gen_cpu());
    }
    let mut results = Vec::new();
    for w in &ws {
        let v = recv_ev(w, "result", deadline + Duration::from_secs(30))?;
        results.push(serde_json::from_value::<WorkerResult>(v["result"].clone())?);
    }
    for w in &mut ws {
        let _ = w.child.wait();
    }
    // After the grace period: the CPU a backlogged broker spent on the last deliveries.
    cpu_marks.push(c.broker_pid.and_then(procstat::sample));
    report(
        &c,
        &plan,
        setup_wall,
        base,
        after_setup,
        &cpu_marks,
        &gen_marks,
        &results,
    )
}

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the list.
fn report(
    c: &Common,
    plan: &Plan,
    setup_wall: f64,
    base: Option<procstat::Sample>,
    after_setup: Option<procstat::Sample>,
    cpu_marks: &[Option<procstat::Sample>],
    gen_marks: &[Option<f64>],
    rs: &[WorkerResult],
) -> Result<()> {
    let connected: u64 = rs.iter().map(|r| r.connected).sum();
    let failed: u64 = rs.iter().map(|r| r.failed).sum();
    let mut ch = stats::new_hist();
    rs.iter().for_each(|r| r.connect_hist.merge_into(&mut ch));
    let mut last = Vec::<u64>::new();
    for r in rs {
        if last.len() < r.last_by_seq.len() {
            last.resize(r.last_by_seq.len(), 0);
        }
        for (i, &v) in r.last_by_seq.iter().enumerate() {
            last[i] = last[i].max(v);
        }
    }
    // Sequence numbers of publisher 0 in each step: [first, end).
    let mut seq0 = 0usize;
    let mut steps = Vec::new();
    println!(
        "\n{:>10} {:>9} {:>11} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9} {:>8}",
        "rate/s",
        "sent",
        "delivered",
        "deliv/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "cpu-s",
        "deliv/cpu-s",
        "gen cpu-s",
        "lag p99"
    );
    for (k, st) in plan.steps.iter().enumerate() {
        let sent: u64 = rs.iter().map(|r| r.sent.get(k).copied().unwrap_or(0)).sum();
        let mut h = stats::new_hist();
        rs.iter().for_each(|r| {
            r.step_hist
                .get(k)
                .unwrap_or(&HistDump::default())
                .merge_into(&mut h)
        });
        let lat = Lat::of(&h);
        let cpu = match (
            cpu_marks.get(k).copied().flatten(),
            cpu_marks.get(k + 1).copied().flatten(),
        ) {
            (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
            _ => None,
        };
        let gen = match (
            gen_marks.get(k).copied().flatten(),
            gen_marks.get(k + 1).copied().flatten(),
        ) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let mut lh = stats::new_hist();
        rs.iter().for_each(|r| {
            r.send_lag
                .get(k)
                .unwrap_or(&HistDump::default())
                .merge_into(&mut lh)
        });
        let lag = (!lh.is_empty()).then(|| Lat::of(&lh));
        let rate = st.rate_per_pub * plan.pubs.len() as f64;
        let per_cpu = cpu.filter(|&x| x > 0.0).map(|x| lat.count as f64 / x);
        let broken = lat.p99_ms > c.break_p99_ms || lat.count < sent * plan.fanout;
        let n0 = (st.rate_per_pub * st.secs).round() as usize;
        let mut sh = stats::new_hist();
        last.iter()
            .skip(seq0)
            .take(n0)
            .filter(|&&v| v > 0)
            .for_each(|&v| stats::rec(&mut sh, v));
        seq0 += n0;
        let step_last = (!sh.is_empty()).then(|| Lat::of(&sh));
        println!(
            "{:>10.0} {:>9} {:>11} {:>12.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>11} {:>9} {:>8}{}",
            rate,
            sent,
            lat.count,
            lat.count as f64 / st.secs,
            lat.p50_ms,
            lat.p90_ms,
            lat.p99_ms,
            lat.p999_ms,
            lat.max_ms,
            cpu.map(|x| format!("{x:.2}")).unwrap_or("-".into()),
            per_cpu.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
            gen.map(|x| format!("{x:.2}")).unwrap_or("-".into()),
            lag.map(|l| format!("{:.2}", l.p99_ms))
                .unwrap_or("-".into()),
            if broken { "  BROKEN" } else { "" }
        );
        steps.push(json!({
            "rate": rate, "secs": st.secs, "sent": sent, "expected": sent * plan.fanout,
            "delivered": lat.count, "deliveries_per_sec": lat.count as f64 / st.secs,
            "latency": lat, "broker_cpu_secs": cpu, "deliveries_per_broker_cpu_sec": per_cpu,
            "broken": broken, "publish_to_last_subscriber": step_last,
            "generator_cpu_secs": gen, "send_lag": lag,
        }));
        if let Some(l) = step_last.as_ref().filter(|_| plan.track_last) {
            println!(
                "{:>10} publish -> last subscriber: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                "", l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
    let sent: u64 = rs.iter().flat_map(|r| r.sent.iter()).sum();
    let unique: u64 = rs.iter().map(|r| r.unique).sum();
    let expected = sent * plan.fanout;
    let (dup, reord): (u64, u64) = rs
        .iter()
        .fold((0, 0), |(d, o), r| (d + r.duplicated, o + r.reordered));
    let lost = expected.saturating_sub(unique);
    let mut lh = stats::new_hist();
    last.iter()
        .filter(|&&v| v > 0)
        .for_each(|&v| stats::rec(&mut lh, v));
    let last_lat = (!lh.is_empty()).then(|| Lat::of(&lh));
    let connect = Lat::of(&ch);
    println!(
        "connections {connected} ok, {failed} failed; setup {:.2}s ({:.0}/s), connect p50 {:.2} ms p99 {:.2} ms",
        setup_wall,
        connected as f64 / setup_wall.max(1e-9),
        connect.p50_ms,
        connect.p99_ms
    );
    if let Some(e) = rs.iter().find_map(|r| r.first_error.clone()) {
        println!("first connection error: {e}");
    }
    if !plan.steps.is_empty() {
        println!(
            "deliveries: expected {expected}, unique {unique}, lost {lost}, duplicated {dup}, reordered {reord}; send errors {}; receivers dropped {}",
            rs.iter().map(|r| r.send_errors).sum::<u64>(),
            rs.iter().map(|r| r.receivers_lost).sum::<u64>()
        );
    }
    if let Some(l) = &last_lat {
        println!(
            "publish -> last subscriber: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} publishes)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        );
    }
    let churn: (u64, u64) = rs
        .iter()
        .fold((0, 0), |(a, b), r| (a + r.churn_cycles, b + r.churn_failed));
    if plan.churn_per_sec > 0.0 {
        println!("churn: {} cycles, {} failed", churn.0, churn.1);
    }
    let rss_per_conn = match (base, after_setup) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    // The last mark is taken after the grace period (see `coordinate`).
    let total_cpu = match (
        cpu_marks.first().copied().flatten(),
        cpu_marks.last().copied().flatten(),
    ) {
        (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
        _ => None,
    };
    let hold_cpu = match (
        cpu_marks.first().copied().flatten(),
        cpu_marks
            .get(cpu_marks.len().saturating_sub(2))
            .copied()
            .flatten(),
    ) {
        (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
        _ => None,
    };
    if let (Some(b), Some(a)) = (base, after_setup) {
        println!(
            "broker RSS: {} KiB before, {} KiB with {connected} connections -> {:.0} B/connection; CPU over the run {:.2}s",
            b.rss_kib,
            a.rss_kib,
            rss_per_conn.unwrap_or(0.0),
            hold_cpu.unwrap_or(0.0)
        );
    }
    let group = plan.union_track.then(|| ext::group_summary(rs, sent));
    let out = json!({
        "group": group, "scenario": plan.name, "target": c.target, "addr": c.addr.to_string(), "payload": c.payload,
        "workers": rs.len(), "connections": {"ok": connected, "failed": failed, "setup_secs": setup_wall,
            "per_sec": connected as f64 / setup_wall.max(1e-9), "latency": connect},
        "steps": steps,
        "deliveries": {"expected": expected, "unique": unique, "lost": lost, "duplicated": dup, "reordered": reord},
        "publish_to_last_subscriber": last_lat,
        "churn": {"cycles": churn.0, "failed": churn.1},
        "broker": {"rss_kib_before": base.map(|b| b.rss_kib), "rss_kib_after_setup": after_setup.map(|a| a.rss_kib),
            "rss_bytes_per_connection": rss_per_conn, "cpu_secs_run": hold_cpu,
            "cpu_secs_with_grace": total_cpu},
    });
    if let Some(p) = &c.out {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
        eprintln!("loadgen: results written to {}", p.display());
    }
    Ok(())
}
