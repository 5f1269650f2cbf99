//! REST publish load: `POST /v1/channels/{channel}/publish` over HTTP/1.1 keep-alive, raw
//! requests written by hand (no client library in the way), `pipeline` requests in flight per
//! connection. Closed loop: the figure is throughput (requests/s at a fixed concurrency), and
//! latency is measured from the moment a batch was written to the moment each response was read.
//! ringcast only: nats-server and mosquitto have no HTTP publish endpoint.

use std::{cell::RefCell, net::SocketAddr, rc::Rc, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procstat;
use crate::stats::{self, mono_ns, Lat};

/// What the `rest` scenario does.
pub struct RestSpec {
    pub addr: SocketAddr,
    pub key_id: String,
    pub key_secret: String,
    pub channel: String,
    pub connections: usize,
    pub pipeline: usize,
    pub secs: f64,
    pub payload: usize,
    pub broker_pid: Option<u32>,
    pub out: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    non_200: u64,
    first_bad: Option<String>,
    errors: u64,
    first_error: Option<String>,
}

/// Finds the end of the header block and the Content-Length; returns (status, header_len,
/// body_len) once the whole response is in `buf`.
fn parse_response(buf: &[u8]) -> Result<Option<(u16, usize)>> {
    let Some(hend) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..hend]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("response without Content-Length")?;
    let total = hend + 4 + len;
    Ok((buf.len() >= total).then_some((status, total)))
}

/// Runs the scenario in this process (a single-threaded runtime: pin it with taskset).
pub fn run(spec: RestSpec) -> Result<()> {
    if !spec.addr.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses, not {}", spec.addr);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, go(spec))
}

async fn go(spec: RestSpec) -> Result<()> {
    let pad = spec.payload.saturating_sub(10).max(1);
    let body = format!("{{\"data\":{{\"p\":\"{}\"}}}}", "x".repeat(pad));
    let req = format!(
        "POST /v1/channels/{}/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        spec.channel,
        spec.addr,
        spec.key_id,
        spec.key_secret,
        body.len(),
        body
    );
    let batch: Rc<Vec<u8>> = Rc::new(req.repeat(spec.pipeline.max(1)).into_bytes());
    let depth = spec.pipeline.max(1);
    let hist = Rc::new(RefCell::new(stats::new_hist()));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let before = spec.broker_pid.and_then(procstat::sample);
    let t0 = mono_ns();
    let end = t0 + (spec.secs * 1e9) as u64;
    let mut tasks = Vec::new();
    for _ in 0..spec.connections {
        let (batch, hist, tally, addr) = (batch.clone(), hist.clone(), tally.clone(), spec.addr);
        tasks.push(tokio::task::spawn_local(async move {
            let r = async {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut chunk = vec![0u8; 64 * 1024];
                while mono_ns() < end {
                    let sent_at = mono_ns();
                    s.write_all(&batch).await?;
                    let mut got = 0;
                    while got < depth {
                        while let Some((status, n)) = parse_response(&buf)? {
                            let now = mono_ns();
                            stats::rec(&mut hist.borrow_mut(), now - sent_at);
                            let mut t = tally.borrow_mut();
                            if status == 200 {
                                t.ok += 1;
                            } else {
                                t.non_200 += 1;
                                t.first_bad.get_or_insert_with(|| {
                                    String::from_utf8_lossy(&buf[..n]).into_owned()
                                });
                            }
                            buf.drain(..n);
                            got += 1;
                            if got == depth {
                                break;
                            }
                        }
                        if got == depth {
                            break;
                        }
                        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                            .await
                            .context("response timeout")??;
                        if n == 0 {
                            bail!("connection closed by the broker");
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = r {
                let mut t = tally.borrow_mut();
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }));
    }
    let mut next = t0 + 2_000_000_000;
    while mono_ns() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if mono_ns() >= next {
            eprintln!(
                "loadgen: rest t={:.0}s ok={}",
                (mono_ns() - t0) as f64 / 1e9,
                tally.borrow().ok
            );
            next += 2_000_000_000;
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let wall = (mono_ns() - t0) as f64 / 1e9;
    let after = spec.broker_pid.and_then(procstat::sample);
    let cpu = match (before, after) {
        (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
        _ => None,
    };
    let lat = Lat::of(&hist.borrow());
    let t = tally.borrow();
    let rps = t.ok as f64 / wall;
    println!(
        "rest publish: {} connections x {} pipelined, {:.1}s: {} ok ({:.0}/s), {} non-200, {} connection errors; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; broker CPU {}",
        spec.connections,
        depth,
        wall,
        t.ok,
        rps,
        t.non_200,
        t.errors,
        lat.p50_ms,
        lat.p99_ms,
        lat.max_ms,
        cpu.map(|c| format!("{c:.2}s")).unwrap_or("-".into())
    );
    if let Some(b) = &t.first_bad {
        println!("first non-200 response: {b}");
    }
    if let Some(e) = &t.first_error {
        println!("first connection error: {e}");
    }
    let out = json!({
        "scenario": "rest", "target": "ringcast", "addr": spec.addr.to_string(),
        "connections": spec.connections, "pipeline": depth, "secs": wall, "payload": spec.payload,
        "ok": t.ok, "non_200": t.non_200, "errors": t.errors, "requests_per_sec": rps,
        "latency": lat, "broker_cpu_secs": cpu,
        "requests_per_broker_cpu_sec": cpu.filter(|&c| c > 0.0).map(|c| t.ok as f64 / c),
        "first_non_200": t.first_bad, "first_error": t.first_error,
    });
    if let Some(p) = &spec.out {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)?;
        eprintln!("loadgen: results written to {}", p.display());
    }
    Ok(())
}
