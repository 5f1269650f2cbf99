//! Scenarios for the protocol §8 extensions of ringcast (loadgen/ext.sh runs them all):
//!
//! - `wildcard` (§8.3): the many-channels plan (`pat/ch-J`, one exact subscriber and one
//!   publisher per channel) plus connections holding non-matching pattern subscriptions;
//!   `--patterns 0` is the baseline with the same connections and no pattern.
//! - `group` (§8.2): one channel, `--members` connections in one queue group, publishers at a
//!   fixed rate; every publication must reach exactly one member (tracked across members).
//! - `resume` (§8.1): one publisher, one subscriber, closed loop: the time from writing
//!   `subscribe` with `since` to receiving the last of `--missed` replayed messages, next to
//!   the time the same burst takes to arrive live.
//! - `retain` (§8.1): broker RSS growth and the `ringcast_history_bytes` gauge per retained
//!   message, against the message frame's size, with a plain-channel phase as the baseline.
//!
//! Fan-out on a history channel (§8.1) is the ordinary `fanout` scenario with
//! `--channel hist/fan`.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::plan::{steps, Plan};
use crate::procstat;
use crate::stats::{self, mono_ns, Lat, SeqTrack, Stamp};
use crate::target::{Conn, Endpoint, Route, Target};
use crate::worker::{Dest, PubSpec, SubSpec, WorkerResult};

// ---------------------------------------------------------------------------------------------
// wildcard (§8.3)

/// How the non-matching patterns look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// A quarter each: `oI/**` (diverges at the root), `pat/oI/*` (at the second segment),
    /// `pat/ch-J/oI` (one segment past the published channel) and `*/ch-J/oI/**` (through
    /// the root's star edge).
    Mixed,
    /// `pat/oI-*`: residual globs on the node every publication goes through (the one
    /// per-pattern cost of the trie, design.md "Wildcard subscriptions").
    Residual,
}

/// Options of the `wildcard` scenario.
#[derive(Args, Debug, Clone)]
pub struct WildcardArgs {
    /// Channels published to (`pat/ch-J`), one exact subscriber and one publisher each.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Non-matching pattern subscriptions (0: the baseline, same connections, no pattern).
    #[arg(long, default_value_t = 10_000)]
    pub patterns: usize,
    /// Connections holding the patterns (at most `max_channels_per_conn` each, default 100).
    #[arg(long, default_value_t = 100)]
    pub pattern_conns: usize,
    #[arg(long, value_enum, default_value_t = Shape::Mixed)]
    pub shape: Shape,
    /// Total publishes per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "20000,60000")]
    pub rates: Vec<f64>,
}

/// Pattern number `i` of `shape` (never matching `pat/ch-J`).
pub fn pattern(shape: Shape, i: usize, channels: usize) -> String {
    let j = i % channels.max(1);
    match (shape, i % 4) {
        (Shape::Residual, _) => format!("pat/o{i}-*"),
        (_, 0) => format!("o{i}/**"),
        (_, 1) => format!("pat/o{i}/*"),
        (_, 2) => format!("pat/ch-{j}/o{i}"),
        _ => format!("*/ch-{j}/o{i}/**"),
    }
}

/// The `wildcard` plan.
pub fn wildcard_plan(a: &WildcardArgs, step_secs: f64) -> Plan {
    let conns = a.pattern_conns.max(1);
    let mut subs: Vec<SubSpec> = (0..a.channels)
        .map(|j| SubSpec {
            peer: format!("sub-{j}"),
            channel: Some(format!("pat/ch-{j}")),
            ..Default::default()
        })
        .collect();
    subs.extend((0..conns).map(|k| {
        SubSpec {
            peer: format!("pattern-{k}"),
            channel: None,
            patterns: (k..a.patterns)
                .step_by(conns)
                .map(|i| pattern(a.shape, i, a.channels))
                .collect(),
            ..Default::default()
        }
    }));
    Plan {
        name: "wildcard",
        subs,
        pubs: (0..a.channels)
            .map(|j| PubSpec {
                peer: format!("pub-{j}"),
                g: j as u32,
                dest: Dest::Channel(format!("pat/ch-{j}")),
            })
            .collect(),
        steps: steps(&a.rates, a.channels as f64, step_secs),
        fanout: 1,
        churn_per_sec: 0.0,
        churn_channel: None,
        track_last: false,
        union_track: false,
    }
}

// ---------------------------------------------------------------------------------------------
// group (§8.2)

/// Options of the `group` scenario.
#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    /// Members of the queue group (connections).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    #[arg(long, default_value = "workers")]
    pub group: String,
    #[arg(long, default_value = "jobs")]
    pub channel: String,
    /// Publishing connections (the rate is split over them).
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Total publishes per second, one step each.
    #[arg(long, value_delimiter = ',', default_value = "50000")]
    pub rates: Vec<f64>,
    /// Plain subscribers (no group) instead: the baseline (each gets every publication).
    #[arg(long)]
    pub plain: bool,
}

/// The `group` plan.
pub fn group_plan(a: &GroupArgs, step_secs: f64) -> Plan {
    let pubs = a.publishers.max(1);
    Plan {
        name: "group",
        subs: (0..a.members)
            .map(|i| SubSpec {
                peer: format!("member-{i}"),
                channel: Some(a.channel.clone()),
                group: (!a.plain).then(|| a.group.clone()),
                ..Default::default()
            })
            .collect(),
        pubs: (0..pubs)
            .map(|j| PubSpec {
                peer: format!("gpub-{j}"),
                g: j as u32,
                dest: Dest::Channel(a.channel.clone()),
            })
            .collect(),
        steps: steps(&a.rates, pubs as f64, step_secs),
        fanout: if a.plain { a.members as u64 } else { 1 },
        churn_per_sec: 0.0,
        churn_channel: None,
        track_last: false,
        union_track: !a.plain,
    }
}

/// One publisher's sequence numbers seen by any receiver of a worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UnionDump {
    pub g: u32,
    pub words: Vec<u64>,
}

/// A worker's union tracks, for its report.
pub fn union_dump(m: &HashMap<u32, SeqTrack>) -> Vec<UnionDump> {
    m.iter()
        .map(|(&g, t)| UnionDump {
            g,
            words: t.words().to_vec(),
        })
        .collect()
}

/// Deliveries across all receivers of all workers: each publication exactly once?
pub fn group_summary(rs: &[WorkerResult], sent: u64) -> serde_json::Value {
    let mut u: HashMap<u32, Vec<u64>> = HashMap::new();
    for d in rs.iter().flat_map(|r| r.union.iter()) {
        let w = u.entry(d.g).or_default();
        if w.len() < d.words.len() {
            w.resize(d.words.len(), 0);
        }
        w.iter_mut().zip(&d.words).for_each(|(a, b)| *a |= b);
    }
    let unique: u64 = u
        .values()
        .flat_map(|w| w.iter())
        .map(|w| u64::from(w.count_ones()))
        .sum();
    let per: Vec<u64> = rs
        .iter()
        .flat_map(|r| r.per_receiver.iter().copied())
        .collect();
    let total: u64 = per.iter().sum();
    let (min, max) = (
        per.iter().copied().min().unwrap_or(0),
        per.iter().copied().max().unwrap_or(0),
    );
    let v = json!({
        "sent": sent, "delivered": total, "distinct": unique,
        "lost": sent.saturating_sub(unique), "extra_deliveries": total.saturating_sub(unique),
        "members": per.len(), "per_member_min": min, "per_member_max": max,
        "per_member_mean": total as f64 / per.len().max(1) as f64,
    });
    println!(
        "group: sent {sent}, delivered {total} ({unique} distinct publications): lost {}, \
         extra deliveries {}; per member min {min}, max {max} over {} members",
        v["lost"],
        v["extra_deliveries"],
        per.len()
    );
    v
}

// ---------------------------------------------------------------------------------------------
// resume and retain (§8.1): closed loop in this process.

/// What `resume` and `retain` connect with.
#[derive(Args, Debug, Clone)]
pub struct Conn1 {
    /// Broker address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[arg(long, env = "RINGCAST_KEY_ID", default_value = "sk_id_test1")]
    pub key_id: String,
    #[arg(
        long,
        env = "RINGCAST_KEY_SECRET",
        default_value = "sk_secret_abcdefghijklmnopqrstuvwxyz012345"
    )]
    pub key_secret: String,
    /// Payload bytes (the publish's `data`).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Hard cap on the whole run, seconds.
    #[arg(long, default_value_t = 240.0)]
    pub max_secs: f64,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

impl Conn1 {
    fn endpoint(&self) -> Result<Endpoint> {
        if !self.addr.ip().is_loopback() {
            bail!("loadgen only targets loopback addresses, not {}", self.addr);
        }
        Ok(Endpoint {
            target: Target::Ringcast,
            addr: self.addr,
            key_id: self.key_id.clone(),
            key_secret: self.key_secret.clone(),
            presence: false,
            pub_addr: None,
            sub_addrs: Vec::new(),
            src_ips: vec![std::net::Ipv4Addr::new(127, 0, 0, 2)],
        })
    }
}

/// Options of the `resume` scenario.
#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub c: Conn1,
    /// A history channel (its `size` must be at least `--missed`).
    #[arg(long, default_value = "hist/resume")]
    pub channel: String,
    /// Messages published while the subscriber is away, then replayed.
    #[arg(long, default_value_t = 1000)]
    pub missed: u64,
    /// Repetitions (each: one live burst, one missed burst and its resume).
    #[arg(long, default_value_t = 300)]
    pub reps: usize,
}

/// Options of the `retain` scenario.
#[derive(Args, Debug, Clone)]
pub struct RetainArgs {
    #[command(flatten)]
    pub c: Conn1,
    /// ringcast's REST listener (for `/metrics`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub rest_addr: SocketAddr,
    /// Messages retained (published round robin over `--channels` history channels).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Channels `retain/K` (history) and, for the baseline phase, `plain/K` (no history).
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
}

fn run_local<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// An unsigned integer member `"key":N` in a frame (first occurrence).
fn num_field(buf: &[u8], key: &str) -> Option<u64> {
    let k = format!("\"{key}\":");
    let pos = buf.windows(k.len()).position(|w| w == k.as_bytes())? + k.len();
    let digits: Vec<u8> = buf[pos..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn is_message(f: &[u8]) -> bool {
    f.starts_with(b"{\"type\":\"message\"")
}

fn json_of(f: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(f).with_context(|| format!("bad frame {}", String::from_utf8_lossy(f)))
}

/// Writes `n` publishes on `channel` (frames of `payload` bytes of data) in writes of up to
/// 1,000 frames, the last one with `requestId` `tag`; returns its ack.
async fn burst(
    p: &mut Conn,
    route: &Route,
    channel: &str,
    n: u64,
    payload: usize,
    seq: &mut u64,
    tag: &str,
) -> Result<serde_json::Value> {
    let (mut frames, mut data) = (Vec::new(), Vec::new());
    for i in 0..n {
        let st = Stamp {
            g: 0,
            s: *seq,
            r: 0,
            t: mono_ns(),
        };
        *seq += 1;
        stats::payload_into(&mut data, st, payload);
        if i + 1 == n {
            p.write_all(&frames).await?;
            frames.clear();
            let cmd = format!(
                "{{\"type\":\"publish\",\"channel\":\"{channel}\",\"requestId\":\"{tag}\",\"data\":{}}}",
                String::from_utf8_lossy(&data)
            );
            let ack = p
                .request(
                    cmd.as_bytes(),
                    format!("\"requestId\":\"{tag}\"").as_bytes(),
                )
                .await?;
            return json_of(&ack);
        }
        p.push_publish(&mut frames, route, &data);
        if frames.len() > 64 * 1024 {
            p.write_all(&frames).await?;
            frames.clear();
        }
    }
    bail!("empty burst")
}

/// Reads `s` until `n` message frames have arrived; checks their offsets run from `first`
/// without gap (when `first` is Some). Returns (arrival time of the last, bytes of the
/// WebSocket frames: payload and header).
async fn take_messages(s: &mut Conn, n: u64, first: Option<u64>) -> Result<(u64, u64)> {
    let (mut got, mut bytes, mut bad, mut at) = (0u64, 0u64, None, 0u64);
    while got < n {
        let mut on = |f: &[u8]| {
            if !is_message(f) {
                return;
            }
            if let Some(first) = first {
                let o = num_field(f, "offset");
                if o != Some(first + got) && bad.is_none() {
                    bad = Some((first + got, o));
                }
            }
            got += 1;
            let header = match f.len() {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            bytes += (f.len() + header) as u64;
        };
        if !s.recv(&mut on).await? {
            bail!("subscriber connection ended");
        }
        at = mono_ns();
    }
    if let Some((want, o)) = bad {
        bail!("replay out of order: expected offset {want}, got {o:?}");
    }
    if got > n {
        bail!("{got} messages where {n} were expected");
    }
    Ok((at, bytes))
}

/// `resume`: closed loop, `reps` times: (1) live: the subscriber is subscribed, the publisher
/// writes `missed` messages in one go; time from the first write to the last delivery;
/// (2) the subscriber unsubscribes, `missed` more are published, the subscriber subscribes
/// with `since` the offset before them: time from that write to the last replayed message.
pub fn resume(a: ResumeArgs) -> Result<()> {
    run_local(async move {
        let ep = a.c.endpoint()?;
        let deadline = mono_ns() + (a.c.max_secs * 1e9) as u64;
        let mut p = Conn::open(&ep, 0, "resume-pub").await?;
        let mut s = Conn::open(&ep, 1, "resume-sub").await?;
        let route = Route::channel(Target::Ringcast, &a.channel);
        let ack = json_of(&s.subscribe_ext(&a.channel, "").await?)?;
        let epoch = ack["epoch"]
            .as_str()
            .with_context(|| {
                format!(
                    "subscribe ack without epoch (no history on {}?): {ack}",
                    a.channel
                )
            })?
            .to_string();
        let (mut live_h, mut resume_h) = (stats::new_hist(), stats::new_hist());
        let (mut seq, mut not_recovered, mut done) = (0u64, 0u64, 0usize);
        let base = a.c.broker_pid.and_then(procstat::sample);
        let (mut cpu_resume, mut cpu_live) = (0.0, 0.0);
        let cpu_now = || {
            a.c.broker_pid
                .and_then(procstat::sample)
                .map(|s| s.cpu_secs)
        };
        let step = Duration::from_secs(10);
        for rep in 0..a.reps {
            if mono_ns() > deadline {
                break;
            }
            // (1) live burst to the subscribed subscriber.
            let c0 = cpu_now();
            let t0 = mono_ns();
            let ack = tokio::time::timeout(
                step,
                burst(
                    &mut p,
                    &route,
                    &a.channel,
                    a.missed,
                    a.c.payload,
                    &mut seq,
                    &format!("l{rep}"),
                ),
            )
            .await??;
            let end = ack["offset"]
                .as_u64()
                .context("publish ack without offset")?;
            let (t1, _) = tokio::time::timeout(
                step,
                take_messages(&mut s, a.missed, Some(end + 1 - a.missed)),
            )
            .await??;
            stats::rec(&mut live_h, t1 - t0);
            if let (Some(c0), Some(c1)) = (c0, cpu_now()) {
                cpu_live += c1 - c0;
            }
            // (2) away, missed burst, resume.
            s.request(
                format!(
                    "{{\"type\":\"unsubscribe\",\"channel\":\"{}\",\"requestId\":\"u\"}}",
                    a.channel
                )
                .as_bytes(),
                b"\"requestId\":\"u\"",
            )
            .await?;
            let ack = tokio::time::timeout(
                step,
                burst(
                    &mut p,
                    &route,
                    &a.channel,
                    a.missed,
                    a.c.payload,
                    &mut seq,
                    &format!("m{rep}"),
                ),
            )
            .await??;
            let end = ack["offset"]
                .as_u64()
                .context("publish ack without offset")?;
            let since = end - a.missed;
            let c0 = cpu_now();
            let t0 = mono_ns();
            let sub = s
                .subscribe_ext(
                    &a.channel,
                    &format!(",\"since\":{{\"epoch\":\"{epoch}\",\"offset\":{since}}}"),
                )
                .await?;
            let (t1, _) =
                tokio::time::timeout(step, take_messages(&mut s, a.missed, Some(since + 1)))
                    .await??;
            if let (Some(c0), Some(c1)) = (c0, cpu_now()) {
                cpu_resume += c1 - c0;
            }
            stats::rec(&mut resume_h, t1 - t0);
            if !String::from_utf8_lossy(&sub).contains("\"recovered\":true") {
                not_recovered += 1;
            }
            done += 1;
        }
        let (live, res) = (Lat::of(&live_h), Lat::of(&resume_h));
        let cpu = match (base, a.c.broker_pid.and_then(procstat::sample)) {
            (Some(b), Some(e)) => Some(e.cpu_secs - b.cpu_secs),
            _ => None,
        };
        println!(
            "resume of {} missed messages ({} B data), {done} repetitions: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
             recovered:false {not_recovered}",
            a.missed, a.c.payload, res.p50_ms, res.p99_ms, res.max_ms
        );
        println!(
            "live burst of {} messages (same run): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; resume p99 / live p99 {:.2}",
            a.missed,
            live.p50_ms,
            live.p99_ms,
            live.max_ms,
            res.p99_ms / live.p99_ms.max(1e-9)
        );
        let out = json!({
            "scenario": "resume", "channel": a.channel, "missed": a.missed, "payload": a.c.payload,
            "reps": done, "resume": res, "live": live, "not_recovered": not_recovered,
            "broker_cpu_secs": cpu, "broker_cpu_secs_resume_windows": cpu_resume,
            "broker_cpu_secs_live_windows": cpu_live,
        });
        if let Some(p) = &a.c.out {
            std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
        }
        Ok(())
    })
}

/// GET `path` on the REST listener (HTTP/1.1, `Connection: close`); the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    if !addr.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses, not {addr}");
    }
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut b = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut b)).await??;
    let t = String::from_utf8_lossy(&b).to_string();
    let (head, body) = t.split_once("\r\n\r\n").context("bad HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// The sum of a Prometheus metric's samples (all label sets); None if absent.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// One phase of `retain`: publishes `n` messages round robin over `prefix/K`, waits for the
/// last ack, settles, returns (RSS KiB delta, history-bytes gauge delta).
#[allow(clippy::too_many_arguments)]
async fn retain_phase(
    a: &RetainArgs,
    pid: u32,
    p: &mut Conn,
    prefix: &str,
) -> Result<(f64, Option<f64>)> {
    let m0 = http_get(a.rest_addr, "/metrics").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r0 = procstat::sample(pid).context("broker gone")?;
    let routes: Vec<Route> = (0..a.channels)
        .map(|k| Route::channel(Target::Ringcast, &format!("{prefix}/{k}")))
        .collect();
    let (mut frames, mut data, mut seq) = (Vec::new(), Vec::new(), 0u64);
    let per = a.messages / a.channels as u64;
    for i in 0..per * a.channels as u64 {
        stats::payload_into(
            &mut data,
            Stamp {
                g: 0,
                s: seq,
                r: 0,
                t: mono_ns(),
            },
            a.c.payload,
        );
        seq += 1;
        p.push_publish(
            &mut frames,
            &routes[(i % a.channels as u64) as usize],
            &data,
        );
        if frames.len() > 64 * 1024 {
            p.write_all(&frames).await?;
            frames.clear();
        }
        if i % 10_000 == 9_999 {
            // Pace: the broker has handled everything so far once this ack is back.
            p.write_all(&frames).await?;
            frames.clear();
            p.request(
                format!("{{\"type\":\"ping\",\"requestId\":\"q{i}\"}}").as_bytes(),
                format!("\"requestId\":\"q{i}\"").as_bytes(),
            )
            .await?;
        }
    }
    p.write_all(&frames).await?;
    p.request(
        b"{\"type\":\"ping\",\"requestId\":\"end\"}",
        b"\"requestId\":\"end\"",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r1 = procstat::sample(pid).context("broker gone")?;
    let m1 = http_get(a.rest_addr, "/metrics").await?;
    let g = match (
        metric(&m0, "ringcast_history_bytes"),
        metric(&m1, "ringcast_history_bytes"),
    ) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    Ok((r1.rss_kib as f64 - r0.rss_kib as f64, g))
}

/// `retain`: a plain phase (`plain/K`, nothing retained: the baseline) then a history phase
/// (`retain/K`); per retained message: RSS growth and the gauge, against the frame size a
/// subscriber of `retain/0` receives.
pub fn retain(a: RetainArgs) -> Result<()> {
    run_local(async move {
        let ep = a.c.endpoint()?;
        let pid = a.c.broker_pid.context("retain needs --broker-pid")?;
        let mut p = Conn::open(&ep, 0, "retain-pub").await?;
        let mut probe = Conn::open(&ep, 1, "retain-probe").await?;
        let unsub = |ch: &str| {
            format!("{{\"type\":\"unsubscribe\",\"channel\":\"{ch}\",\"requestId\":\"u\"}}")
        };
        let ack = json_of(&probe.subscribe_ext("retain/0", "").await?)?;
        if ack["epoch"].as_str().is_none() {
            bail!("retain/0 has no history (subscribe ack {ack})");
        }
        // No subscriber while publishing: nothing queues for delivery (freed pages would
        // stay in the RSS).
        probe
            .request(unsub("retain/0").as_bytes(), b"\"requestId\":\"u\"")
            .await?;
        let per = a.messages / a.channels as u64;
        let (plain_kib, plain_g) = retain_phase(&a, pid, &mut p, "plain").await?;
        let (kib, g) = retain_phase(&a, pid, &mut p, "retain").await?;
        // The frame of the last message of retain/0, replayed; the others differ only in
        // their offset's digits (fixed-size payload, channel names of one length each).
        let ack = json_of(&probe.subscribe_ext("retain/0", "").await?)?;
        let (epoch, last) = (
            ack["epoch"].as_str().context("no epoch")?.to_string(),
            ack["offset"].as_u64().context("no offset")?,
        );
        probe
            .request(unsub("retain/0").as_bytes(), b"\"requestId\":\"u\"")
            .await?;
        probe
            .subscribe_ext(
                "retain/0",
                &format!(
                    ",\"since\":{{\"epoch\":\"{epoch}\",\"offset\":{}}}",
                    last - 1
                ),
            )
            .await?;
        let (_, bytes) = tokio::time::timeout(
            Duration::from_secs(10),
            take_messages(&mut probe, 1, Some(last)),
        )
        .await??;
        let digits = |o: u64| o.to_string().len() as u64;
        let base = bytes - digits(last) - "retain/0".len() as u64;
        let total: u64 = (0..a.channels)
            .map(|k| {
                let name = format!("retain/{k}").len() as u64;
                (1..=per).map(|o| base + name + digits(o)).sum::<u64>()
            })
            .sum();
        let frame = total as f64 / (per * a.channels as u64) as f64;
        let n = (per * a.channels as u64) as f64;
        let rss_per = kib * 1024.0 / n;
        let g_per = g.map(|g| g / n);
        println!(
            "retain: {n} messages over {} history channels; message frame {frame:.1} B (WebSocket header and payload; goal: ≤ frame + 64 = {:.1} B per message)",
            a.channels,
            frame + 64.0
        );
        println!(
            "  broker RSS growth: history {:.1} MiB -> {rss_per:.1} B per message; plain-channel baseline {:.1} MiB -> {:.1} B per message",
            kib / 1024.0,
            plain_kib / 1024.0,
            plain_kib * 1024.0 / n
        );
        println!(
            "  ringcast_history_bytes growth: {} -> {} B per message (plain phase: {})",
            g.map(|g| format!("{g:.0}")).unwrap_or("-".into()),
            g_per.map(|g| format!("{g:.1}")).unwrap_or("-".into()),
            plain_g.map(|g| format!("{g:.0}")).unwrap_or("-".into()),
        );
        let out = json!({
            "scenario": "retain", "messages": n, "channels": a.channels, "payload": a.c.payload,
            "frame_bytes": frame, "goal_bytes_per_message": frame + 64.0,
            "rss_kib_growth": kib, "rss_bytes_per_message": rss_per,
            "plain_rss_kib_growth": plain_kib, "plain_rss_bytes_per_message": plain_kib * 1024.0 / n,
            "history_bytes_growth": g, "history_bytes_per_message": g_per,
            "plain_history_bytes_growth": plain_g,
        });
        if let Some(p) = &a.c.out {
            std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A glob over `/`-separated segments: `*` one segment, `**` one or more, `x*` in a
    /// segment any run of non-`/` characters (enough for the shapes above).
    fn glob(p: &[&str], c: &[&str]) -> bool {
        fn seg(p: &str, c: &str) -> bool {
            match p.split_once('*') {
                None => p == c,
                Some((a, b)) => c.len() >= a.len() + b.len() && c.starts_with(a) && c.ends_with(b),
            }
        }
        match (p.first(), c.first()) {
            (None, None) => true,
            (Some(&"**"), Some(_)) => (1..=c.len()).any(|k| glob(&p[1..], &c[k..])),
            (Some(s), Some(x)) => seg(s, x) && glob(&p[1..], &c[1..]),
            _ => false,
        }
    }

    #[test]
    fn patterns_never_match_the_published_channels() {
        for shape in [Shape::Mixed, Shape::Residual] {
            for i in 0..400 {
                let p = pattern(shape, i, 100);
                let ps: Vec<&str> = p.split('/').collect();
                for j in 0..100 {
                    let c = format!("pat/ch-{j}");
                    let cs: Vec<&str> = c.split('/').collect();
                    assert!(!glob(&ps, &cs), "{p} matches {c}");
                }
            }
        }
        // The matcher itself does match what it should.
        assert!(glob(&["pat", "*"], &["pat", "ch-1"]));
        assert!(glob(&["**"], &["pat", "ch-1"]));
        assert!(glob(&["pat", "ch-*"], &["pat", "ch-1"]));
    }

    #[test]
    fn frame_fields_and_metrics_parse() {
        let f =
            br#"{"type":"message","channel":"hist/x","from":"p","offset":42,"data":{"offset":7}}"#;
        assert_eq!(num_field(f, "offset"), Some(42));
        assert!(is_message(f));
        let m = "# TYPE ringcast_history_bytes gauge\nringcast_history_bytes{shard=\"0\"} 100\n\
                 ringcast_history_bytes{shard=\"1\"} 23\nringcast_history_bytes_other 5\n";
        assert_eq!(metric(m, "ringcast_history_bytes"), Some(123.0));
        assert_eq!(metric(m, "ringcast_nothing"), None);
    }
}
