//! The REST acceptor: binds the listener on the caller's thread (so a bad address fails
//! start-up), then serves HTTP/1.1 with keep-alive on a dedicated thread running a
//! current-thread tokio runtime, at most `rest_max_connections` (1024) connections at
//! once, and at most `rest_connections_per_ip` (64) per source IP (IPv6: per /64): over that,
//! a connection is answered a short 429 without being read, then closed. A connection whose
//! answers cannot be sent for `rest_write_timeout_ms` (a client that pipelines and never
//! reads) is reset ([`io::serve`]). Each request is logged at `debug` with its method, its path (query values of
//! credentials redacted), status and duration; never its body or `Authorization` header.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdListener},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::Instrument;

use super::{api::Api, io};
use crate::{
    admission::{ip_key, IpKey, KeyCounts},
    shard::Broker,
};

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) per connection.
const MAX_HEAD: usize = 64 * 1024;
/// The answer over `rest_connections_per_ip`, written without reading the request.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 88\r\n\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many REST connections from this address\"}";

/// The running REST server.
#[derive(Debug)]
pub struct RestServer {
    /// The address bound (port resolved when 0 was asked).
    pub local_addr: SocketAddr,
    /// The server thread; it runs until the process exits.
    pub thread: JoinHandle<()>,
}

/// Binds `addr` and starts serving on a new thread named `ringcast-rest`.
pub fn start(addr: SocketAddr, shared: Arc<Broker>) -> std::io::Result<RestServer> {
    let listener = StdListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = Arc::new(Api::new(shared));
    let thread = std::thread::Builder::new()
        .name("ringcast-rest".into())
        .spawn(move || {
            let span = tracing::info_span!("rest");
            runtime.block_on(accept_loop(listener, api).instrument(span));
        })?;
    Ok(RestServer { local_addr, thread })
}

/// Accepts connections forever; accept errors (e.g. out of descriptors) back off from
/// 10 ms to 1 s and never end the loop.
async fn accept_loop(listener: StdListener, api: Arc<Api>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(cause = %e, "REST listener unusable; the REST API is down");
            return;
        }
    };
    let limits = &api.shared.limits;
    let (per_ip, write_timeout) = (limits.rest_connections_per_ip, limits.rest_write_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.rest_max_connections));
    // Taken at accept and at a connection's end only, by this one thread: never contended.
    let per_key = Arc::new(Mutex::new(KeyCounts::default()));
    let mut backoff = Duration::from_millis(10);
    loop {
        // Never closed, so acquiring cannot fail; a slot is held for a connection's life.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(cause = %e, backoff_ms = backoff.as_millis() as u64, "REST accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let key = ip_key(peer.ip());
        if !lock(&per_key).try_acquire(key, per_ip) {
            api.shared
                .metrics
                .rest
                .connections_refused
                .fetch_add(1, Relaxed);
            refuse(stream);
            continue;
        }
        let ip_slot = (per_ip != 0).then(|| KeySlot {
            counts: per_key.clone(),
            key,
        });
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(
            async move {
                let mesh = api.shared.mesh.clone();
                let shared = api.shared.clone();
                let api_metrics = &shared.metrics.rest;
                let service = service_fn(move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(serve_one(&api, req).await) }
                });
                let (io, flusher) = io::coalesced(stream);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(io), service);
                match io::serve(conn, flusher, write_timeout, || super::pay_wakes(&mesh)).await {
                    io::End::Conn(Ok(())) => {}
                    io::End::Conn(Err(e)) => {
                        tracing::debug!(cause = %e, "REST connection ended with an error");
                    }
                    io::End::Write(e) => {
                        tracing::debug!(cause = %e, "REST connection ended with a write error");
                    }
                    io::End::WriteTimeout => {
                        api_metrics.write_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!("REST connection reset: its answers were not read");
                    }
                }
                drop(ip_slot);
                drop(slot);
            }
            .in_current_span(),
        );
    }
}

/// A connection's place under `rest_connections_per_ip`, given back when dropped.
struct KeySlot {
    counts: Arc<Mutex<KeyCounts>>,
    key: IpKey,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        lock(&self.counts).release(self.key);
    }
}

fn lock(m: &Mutex<KeyCounts>) -> MutexGuard<'_, KeyCounts> {
    // Only this thread takes it, never across an await; a poisoned count is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Over the per-IP cap: a 429 written once without waiting (the socket's buffer is empty,
/// so it normally fits), the request never read, then the socket closed. What already
/// arrived is drained (bounded, without waiting) first, so that the close is a FIN after
/// the answer rather than a reset that could destroy it in flight.
fn refuse(stream: tokio::net::TcpStream) {
    let _ = stream.try_write(TOO_MANY_CONNECTIONS);
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// Handles one request, counts its status and logs it (redacted).
async fn serve_one(api: &Api, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        // Not logged: skip the clock and the copy of the path.
        let resp = api.handle(req).await;
        api.shared.metrics.rest.response(resp.status().as_u16());
        return resp;
    }
    let t0 = Instant::now();
    let method = req.method().clone();
    let target = redact_target(req.uri().path(), req.uri().query());
    let resp = api.handle(req).await;
    let status = resp.status().as_u16();
    api.shared.metrics.rest.response(status);
    tracing::debug!(%method, path = %target, status, micros = t0.elapsed().as_micros() as u64, "rest request");
    resp
}

/// `path?query` for logs, with the values of credential-like query parameters
/// (`token`, `key`, `secret`, `authorization`, any case) replaced by `REDACTED`.
pub(crate) fn redact_target(path: &str, query: Option<&str>) -> String {
    let Some(q) = query else {
        return path.to_string();
    };
    let parts: Vec<String> = q
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if is_secret_param(k) => format!("{k}=REDACTED"),
            _ => p.to_string(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

fn is_secret_param(name: &str) -> bool {
    ["token", "key", "secret", "authorization", "access_token"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials_in_logged_targets() {
        assert_eq!(redact_target("/v1/usage", None), "/v1/usage");
        assert_eq!(
            redact_target("/v1", Some("token=eyJ.a.b&x=1&KEY=pk_live_1&secret")),
            "/v1?token=REDACTED&x=1&KEY=REDACTED&secret"
        );
    }
}
