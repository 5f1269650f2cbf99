//! Raw loopback TCP fan-out: the floor under "one publish reaches the last of N subscribers".
//!
//! One sender thread, pinned to `--sender-cpu` (default 0, the broker's core in compare.sh),
//! holds N loopback TCP connections and, per publish, writes one 64-byte record (intended send
//! time, publish sequence number) to every one of them with a plain `write(2)` each: the
//! kernel's own cost of N loopback sends on one core, with no broker logic at all. The
//! receiving ends live in separate receiver processes (a process may hold 20,000 fds), which
//! run like loadgen workers (one single-threaded tokio runtime each) and time every record.
//!
//! Reported: publish → last receiver latency (per publish, the latest of its N deliveries,
//! from the intended send time), per-delivery latency, the wall time of one burst of N writes,
//! and the sender thread's CPU time (user + system, the same accounting as a broker's
//! /proc/PID/stat) per delivery.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::stats::{self, mono_ns, HistDump, Lat};

/// Bytes per record (per socket, per publish).
pub const RECORD: usize = 64;
/// Most sockets one run may hold: every sender end is in the coordinator's process.
const MAX_SOCKETS: usize = 19_000;
/// Most receiving ends per receiver process.
const PER_RECEIVER: usize = 10_000;

/// The CLI's `tcp-fanout` arguments.
pub struct Spec {
    pub sockets: usize,
    pub rate: f64,
    pub secs: f64,
    pub sender_cpu: Option<usize>,
    pub src_ips: u8,
    pub out: Option<std::path::PathBuf>,
}

/// What a receiver process is asked to do (one JSON line on stdin).
#[derive(Serialize, Deserialize)]
struct RxSpec {
    addr: SocketAddr,
    sockets: usize,
    /// Connection numbers start here (picks the source address).
    first: usize,
    src_ips: Vec<Ipv4Addr>,
    publishes: u64,
    /// Give up waiting for records at this `mono_ns()`.
    deadline_ns: u64,
}

/// A receiver's report.
#[derive(Serialize, Deserialize, Default)]
struct RxResult {
    connected: u64,
    deliveries: u64,
    /// Records that were not where the stream should have had one (bad sequence).
    bad: u64,
    hist: HistDump,
    /// Per publish: the latest delivery latency seen (ns), 0 if none arrived.
    last_by_seq: Vec<u64>,
}

/// Runs the floor measurement (the coordinator: sender thread + receiver processes).
pub fn run(spec: Spec) -> Result<()> {
    if spec.sockets == 0 || spec.sockets > MAX_SOCKETS {
        bail!("--sockets must be 1..={MAX_SOCKETS} (all sender ends are in one process)");
    }
    if spec.rate <= 0.0 || spec.secs <= 0.0 || spec.secs > 600.0 {
        bail!("--rate must be positive and --secs in (0, 600]");
    }
    crate::worker::raise_nofile();
    let publishes = (spec.rate * spec.secs).round().max(1.0) as u64;
    let gap_ns = 1e9 / spec.rate;
    // A deep accept queue: a full one drops SYNs, and a dropped SYN costs the connect 1 s.
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    l.listen(16_384)?;
    let l: TcpListener = l.into();
    let addr = l.local_addr()?;
    let setup_t0 = Instant::now();
    let nrx = spec.sockets.div_ceil(PER_RECEIVER);
    let src_ips: Vec<Ipv4Addr> = (0..spec.src_ips.max(1))
        .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k))
        .collect();
    // Receivers stop waiting after the schedule plus generous setup time and grace.
    let deadline_ns = mono_ns() + ((60.0 + spec.secs + 5.0) * 1e9) as u64;
    let exe = std::env::current_exe()?;
    let mut rxs = Vec::new();
    for r in 0..nrx {
        let first = r * PER_RECEIVER;
        let n = PER_RECEIVER.min(spec.sockets - first);
        let mut child = Command::new(&exe)
            .arg("tcp-fanout-rx")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn tcp-fanout receiver")?;
        let rx = RxSpec {
            addr,
            sockets: n,
            first,
            src_ips: src_ips.clone(),
            publishes,
            deadline_ns,
        };
        writeln!(
            child.stdin.as_mut().context("receiver stdin")?,
            "{}",
            serde_json::to_string(&rx)?
        )?;
        let out = BufReader::new(child.stdout.take().context("receiver stdout")?);
        rxs.push((child, out.lines()));
    }

    // Accept every receiving end (setup is bounded: 60 s) on a thread of its own, blocking.
    let n = spec.sockets;
    let (tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let r = l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(Duration::from_secs(1)))?;
                Ok(s)
            });
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let setup_until = Instant::now() + Duration::from_secs(60);
    let mut socks = Vec::with_capacity(spec.sockets);
    while socks.len() < spec.sockets {
        let left = setup_until.saturating_duration_since(Instant::now());
        match accepted.recv_timeout(left) {
            Ok(s) => socks.push(s.context("accept")?),
            Err(_) => bail!(
                "only {} of {} receiving ends connected in 60 s",
                socks.len(),
                spec.sockets
            ),
        }
    }
    // Receivers say `ready` once all their connections are up.
    for (_, lines) in rxs.iter_mut() {
        let line = lines
            .next()
            .context("receiver ended before ready")?
            .context("receiver stdout")?;
        if !line.contains("\"ready\"") {
            bail!("receiver: expected ready, got {line}");
        }
    }
    let setup_secs = setup_t0.elapsed().as_secs_f64();
    eprintln!(
        "tcp-fanout: {} sockets ({nrx} receiver process(es)) connected in {setup_secs:.2} s; {publishes} publishes at {}/s",
        spec.sockets, spec.rate
    );

    let sender_cpu = spec.sender_cpu;
    let sender = std::thread::spawn(move || -> Result<(Vec<u64>, u64, u64, Vec<TcpStream>)> {
        if let Some(cpu) = sender_cpu {
            crate::pingpong::pin(cpu);
        }
        let start = mono_ns() + 200_000_000;
        let mut bursts = Vec::with_capacity(publishes as usize);
        let (mut cpu_ns, mut errors) = (0u64, 0u64);
        let mut rec = [b'x'; RECORD];
        for seq in 0..publishes {
            let t = start + (seq as f64 * gap_ns) as u64;
            wait_until(t);
            rec[..8].copy_from_slice(&t.to_le_bytes());
            rec[8..16].copy_from_slice(&seq.to_le_bytes());
            let (c0, w0) = (thread_cpu_ns(), mono_ns());
            for s in socks.iter_mut() {
                if s.write_all(&rec).is_err() {
                    errors += 1;
                }
            }
            let (c1, w1) = (thread_cpu_ns(), mono_ns());
            cpu_ns += c1.saturating_sub(c0);
            bursts.push(w1 - w0);
        }
        Ok((bursts, cpu_ns, errors, socks))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    let (bursts, cpu_ns, errors, socks) = sender?;
    // Closing the sender ends tells every receiver the stream is complete.
    std::thread::sleep(Duration::from_millis(500));
    drop(socks);

    let mut h = stats::new_hist();
    let mut last = vec![0u64; publishes as usize];
    let (mut deliveries, mut bad, mut connected) = (0u64, 0u64, 0u64);
    for (mut child, mut lines) in rxs {
        let line = lines
            .next()
            .context("receiver ended without a result")?
            .context("receiver stdout")?;
        let r: RxResult = serde_json::from_str(&line).context("receiver result")?;
        let _ = child.wait();
        r.hist.merge_into(&mut h);
        for (i, &v) in r.last_by_seq.iter().enumerate() {
            if let Some(x) = last.get_mut(i) {
                *x = (*x).max(v);
            }
        }
        deliveries += r.deliveries;
        bad += r.bad;
        connected += r.connected;
    }
    let mut lh = stats::new_hist();
    last.iter()
        .filter(|&&v| v > 0)
        .for_each(|&v| stats::rec(&mut lh, v));
    let mut bh = stats::new_hist();
    bursts.iter().for_each(|&v| stats::rec(&mut bh, v));
    let (per_delivery, to_last, burst) = (Lat::of(&h), Lat::of(&lh), Lat::of(&bh));
    let expected = publishes * spec.sockets as u64;
    let cpu_s = cpu_ns as f64 / 1e9;
    let us_per = cpu_s * 1e6 / (expected.max(1)) as f64;
    println!(
        "tcp fan-out {} sockets x {publishes} publishes ({}/s), {RECORD} B, sender on CPU {}:",
        spec.sockets,
        spec.rate,
        sender_cpu.map_or("-".into(), |c| c.to_string())
    );
    println!(
        "  publish -> last receiver: p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
        to_last.p50_ms, to_last.p99_ms, to_last.max_ms
    );
    println!(
        "  per delivery: p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
        per_delivery.p50_ms, per_delivery.p99_ms, per_delivery.max_ms
    );
    println!(
        "  burst of {} writes: p50 {:.3} ms p99 {:.3} ms; sender CPU {cpu_s:.3} s = {us_per:.3} µs per delivery",
        spec.sockets, burst.p50_ms, burst.p99_ms
    );
    println!(
        "  deliveries {deliveries} of {expected} ({connected} connected), bad records {bad}, write errors {errors}"
    );
    if let Some(p) = spec.out {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&json!({
                "scenario": "tcp-fanout", "sockets": spec.sockets, "rate": spec.rate,
                "secs": spec.secs, "record_bytes": RECORD, "sender_cpu": sender_cpu,
                "publishes": publishes, "setup_secs": setup_secs, "expected": expected, "deliveries": deliveries,
                "bad": bad, "write_errors": errors,
                "publish_to_last": to_last, "per_delivery": per_delivery, "burst": burst,
                "sender_cpu_secs": cpu_s, "sender_cpu_us_per_delivery": us_per,
            }))?,
        )?;
    }
    Ok(())
}

/// Sleeps until `t` (`mono_ns()`), the last 200 µs by spinning (not counted as send CPU).
fn wait_until(t: u64) {
    loop {
        let now = mono_ns();
        if now >= t {
            return;
        }
        if t - now > 300_000 {
            std::thread::sleep(Duration::from_nanos(t - now - 200_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The calling thread's CPU time (user + system), ns.
#[allow(unsafe_code)] // libc clock_gettime: std has no per-thread CPU clock.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Internal: a receiver process (spec on stdin, `ready` and the result on stdout).
pub fn receiver() -> Result<()> {
    crate::worker::raise_nofile();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let spec: RxSpec = serde_json::from_str(&line).context("bad receiver spec")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let res = local.block_on(&rt, receive(spec))?;
    println!("{}", serde_json::to_string(&res)?);
    Ok(())
}

async fn receive(spec: RxSpec) -> Result<RxResult> {
    use std::{cell::RefCell, rc::Rc};
    use tokio::io::AsyncReadExt;

    let mut conns = Vec::with_capacity(spec.sockets);
    for i in 0..spec.sockets {
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = spec
            .src_ips
            .get((spec.first + i) % spec.src_ips.len().max(1))
        {
            sock.bind(SocketAddr::V4(SocketAddrV4::new(*ip, 0)))?;
        }
        let s = sock.connect(spec.addr).await.context("connect")?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    println!("{{\"ev\":\"ready\"}}");
    std::io::stdout().flush()?;
    let n = spec.publishes as usize;
    let res = Rc::new(RefCell::new((
        RxResult {
            connected: conns.len() as u64,
            last_by_seq: vec![0; n],
            ..Default::default()
        },
        stats::new_hist(),
    )));
    let mut tasks = Vec::with_capacity(conns.len());
    for mut s in conns {
        let res = res.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut buf = vec![0u8; 4096];
            let (mut have, mut next_seq) = (0usize, 0u64);
            loop {
                let got = match s.read(&mut buf[have..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => k,
                };
                let now = mono_ns();
                have += got;
                let whole = have / RECORD * RECORD;
                let mut g = res.borrow_mut();
                let (r, h) = &mut *g;
                for rec in buf[..whole].chunks_exact(RECORD) {
                    let t = u64::from_le_bytes(rec[..8].try_into().unwrap_or([0; 8]));
                    let seq = u64::from_le_bytes(rec[8..16].try_into().unwrap_or([0; 8]));
                    if seq != next_seq || seq as usize >= r.last_by_seq.len() {
                        r.bad += 1;
                        continue;
                    }
                    next_seq += 1;
                    let lat = now.saturating_sub(t);
                    stats::rec(h, lat);
                    r.deliveries += 1;
                    r.last_by_seq[seq as usize] = r.last_by_seq[seq as usize].max(lat);
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
        }));
    }
    let left = Duration::from_nanos(spec.deadline_ns.saturating_sub(mono_ns()));
    let _ = tokio::time::timeout(left, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let mut g = res.borrow_mut();
    let mut r = std::mem::take(&mut g.0);
    r.hist = HistDump::of(&g.1);
    Ok(r)
}
