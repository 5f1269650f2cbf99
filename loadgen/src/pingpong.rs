//! Raw loopback TCP ping-pong: an echo server and an open-loop client in one process, each on
//! its own thread. The round trip of a 64-byte message here is the floor any broker's
//! publish → deliver latency is compared with.

use std::{
    io::{Read, Write},
    net::TcpListener,
    time::Duration,
};

use anyhow::Result;
use serde_json::json;

use crate::stats::{self, mono_ns, Lat};

/// Runs `rate × secs` pings of `payload` bytes; latency from each ping's intended send time.
pub fn run(
    rate: f64,
    secs: f64,
    payload: usize,
    out: Option<std::path::PathBuf>,
    echo_cpu: Option<usize>,
    spin: bool,
) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        if let Some(cpu) = echo_cpu {
            pin(cpu);
        }
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    // The client runs like a loadgen worker: one single-threaded tokio runtime, the sender
    // sleeping on tokio's timer until each intended send time, the receiver in the same thread.
    // So the floor carries the same timer and scheduling artefacts as the broker measurements
    // (a spinning sender thread next to a blocked reader on one core would not).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = (rate * secs).round() as u64;
    let size = payload.max(8);
    let h = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (mut r, mut w) = s.into_split();
        let start = mono_ns() + 100_000_000;
        let gap = 1e9 / rate;
        let writer = async move {
            let mut msg = vec![b'x'; size];
            for i in 0..n {
                let t = start + (i as f64 * gap) as u64;
                if spin {
                    crate::worker::spin_until_ns(t).await;
                } else {
                    let now = mono_ns();
                    if t > now {
                        tokio::time::sleep(Duration::from_nanos(t - now)).await;
                    }
                }
                msg[..8].copy_from_slice(&t.to_le_bytes());
                w.write_all(&msg).await?;
            }
            std::io::Result::Ok(w)
        };
        let reader = async move {
            let mut h = stats::new_hist();
            let mut buf = vec![0u8; size];
            for _ in 0..n {
                match tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut buf)).await {
                    Ok(Ok(_)) => {}
                    _ => break,
                }
                let t = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                stats::rec(&mut h, mono_ns().saturating_sub(t));
            }
            h
        };
        let (w, h) = tokio::join!(writer, reader);
        drop(w);
        anyhow::Ok(h)
    })?;
    let lat = Lat::of(&h);
    println!(
        "tcp ping-pong {rate:.0}/s x {secs}s, {size} B: n={} p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms",
        lat.count, lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.p999_ms, lat.max_ms
    );
    if let Some(p) = out {
        std::fs::write(
            p,
            serde_json::to_string_pretty(
                &json!({"scenario": "pingpong", "rate": rate, "secs": secs, "payload": size, "round_trip": lat}),
            )?,
        )?;
    }
    Ok(())
}

/// Pins the calling thread to `cpu` (best effort: a CPU outside the allowed set is ignored).
#[allow(unsafe_code)] // libc sched_setaffinity: std cannot pin a thread.
pub(crate) fn pin(cpu: usize) {
    // SAFETY: `set` is a zeroed cpu_set_t filled by CPU_SET; sched_setaffinity(0, ...) applies
    // to the calling thread and only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("pingpong: could not pin the echo thread to CPU {cpu}");
        }
    }
}
