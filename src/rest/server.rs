//! The REST acceptor: binds the listener on the caller's thread (so a bad address fails
//! start-up), then serves HTTP/1.1 with keep-alive on a dedicated thread running a
//! current-thread tokio runtime, at most `MAX_CONNECTIONS` (1024) connections at once.
//! Each request is logged at `debug` with its method, its path (query values of
//! credentials redacted), status and duration; never its body or `Authorization` header.

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdListener},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::Instrument;

use super::{api::Api, io};
use crate::shard::Shared;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (and read buffer) per connection.
const MAX_HEAD: usize = 64 * 1024;
/// Most REST connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;

/// The running REST server.
#[derive(Debug)]
pub struct RestServer {
    /// The address bound (port resolved when 0 was asked).
    pub local_addr: SocketAddr,
    /// The server thread; it runs until the process exits.
    pub thread: JoinHandle<()>,
}

/// Binds `addr` and starts serving on a new thread named `ringcast-rest`.
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<RestServer> {
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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    loop {
        // Never closed, so acquiring cannot fail; a slot is held for a connection's life.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(cause = %e, backoff_ms = backoff.as_millis() as u64, "REST accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(
            async move {
                let mesh = api.shared.mesh.clone();
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
                match io::serve(conn, flusher, || super::pay_wakes(&mesh)).await {
                    io::End::Conn(Ok(())) => {}
                    io::End::Conn(Err(e)) => {
                        tracing::debug!(cause = %e, "REST connection ended with an error");
                    }
                    io::End::Write(e) => {
                        tracing::debug!(cause = %e, "REST connection ended with a write error");
                    }
                }
                drop(slot);
            }
            .in_current_span(),
        );
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
pub fn redact_target(path: &str, query: Option<&str>) -> String {
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
