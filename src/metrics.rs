//! Broker metrics: per-shard counters, summed only when scraped.
//!
//! Each shard owns one cache-padded [`ShardCounters`] and is the only writer of it; every
//! update is a single relaxed atomic add (or store, for gauges), so the hot path takes no
//! lock, allocates nothing and shares no cache line with another core. The REST thread
//! owns [`RestCounters`] the same way. [`Metrics::render`] reads everything with relaxed
//! loads and writes the Prometheus text exposition format (version 0.0.4); sums across
//! shards are therefore approximate while traffic flows, exact when it is quiet.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use crossbeam::utils::CachePadded;

/// Why a WebSocket connection was refused before `welcome` (label `reason` of
/// `ringcast_auth_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// Bad, unknown or malformed token or key (close 4001).
    InvalidCredentials = 0,
    /// Token already expired (close 4002).
    TokenExpired = 1,
    /// Token channels outside the key's patterns (close 4003).
    ChannelsNotAuthorized = 2,
    /// The app's connection cap was reached (close 4010).
    ConnectionCap = 3,
}

impl AuthFailure {
    const ALL: [AuthFailure; 4] = [
        AuthFailure::InvalidCredentials,
        AuthFailure::TokenExpired,
        AuthFailure::ChannelsNotAuthorized,
        AuthFailure::ConnectionCap,
    ];

    /// The Prometheus label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthFailure::InvalidCredentials => "invalid_credentials",
            AuthFailure::TokenExpired => "token_expired",
            AuthFailure::ChannelsNotAuthorized => "channels_not_authorized",
            AuthFailure::ConnectionCap => "connection_cap",
        }
    }

    /// The failure behind a pre-`welcome` close code.
    pub(crate) fn from_close_code(code: u16) -> AuthFailure {
        match code {
            4002 => AuthFailure::TokenExpired,
            4003 => AuthFailure::ChannelsNotAuthorized,
            4010 => AuthFailure::ConnectionCap,
            _ => AuthFailure::InvalidCredentials,
        }
    }
}

/// Why an accepted WebSocket socket was closed before its handshake was read (label
/// `reason` of `ringcast_handshakes_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeRefusal {
    /// The shard already had `max_pending_handshakes` pending.
    ShardCap = 0,
    /// The source IP (IPv6 /64) already had `pending_handshakes_per_ip` pending on the shard.
    IpCap = 1,
}

impl HandshakeRefusal {
    const ALL: [HandshakeRefusal; 2] = [HandshakeRefusal::ShardCap, HandshakeRefusal::IpCap];

    /// The Prometheus label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            HandshakeRefusal::ShardCap => "shard_cap",
            HandshakeRefusal::IpCap => "ip_cap",
        }
    }
}

/// Why a retained history entry was dropped (label `reason` of
/// `ringcast_history_evictions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HistoryEviction {
    /// The channel's history was over its `size`.
    Size = 0,
    /// The entry was older than its `ttl_secs`.
    Ttl = 1,
    /// The shard's history was over its share of `history_max_bytes`.
    Memory = 2,
}

impl HistoryEviction {
    const ALL: [HistoryEviction; 3] = [
        HistoryEviction::Size,
        HistoryEviction::Ttl,
        HistoryEviction::Memory,
    ];

    /// The Prometheus label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            HistoryEviction::Size => "size",
            HistoryEviction::Ttl => "ttl",
            HistoryEviction::Memory => "memory",
        }
    }
}

/// Counters of one shard. Written only by that shard's thread.
#[derive(Debug)]
pub struct ShardCounters {
    /// Gauge: live (welcomed) connections.
    pub connections: AtomicU64,
    /// Connections that received `welcome`.
    pub connections_opened: AtomicU64,
    /// Gauge: subscriptions of this shard's connections.
    pub subscriptions: AtomicU64,
    /// Gauge: channels whose presence roster this shard owns (each channel with at least
    /// one subscriber has exactly one owner, so the sum over shards counts channels).
    pub channels: AtomicU64,
    /// Gauge: [ext] wildcard subscriptions of this shard's connections (protocol §8.3).
    pub pattern_subscriptions: AtomicU64,
    /// Gauge: [ext] live nodes of this shard's pattern tries, roots excluded.
    pub pattern_nodes: AtomicU64,
    /// Text messages received from clients.
    pub messages_in: AtomicU64,
    /// Bytes read from client sockets after the upgrade.
    pub bytes_in: AtomicU64,
    /// Frames written to client sockets.
    pub messages_out: AtomicU64,
    /// Bytes written to client sockets after the upgrade.
    pub bytes_out: AtomicU64,
    /// Publications accepted from this shard's connections.
    pub publications: AtomicU64,
    /// Direct messages accepted from this shard's connections.
    pub directs: AtomicU64,
    /// Gauge: [ext] requests in flight whose requester is on this shard (protocol §8.4).
    pub requests_in_flight: AtomicU64,
    /// [ext] Requests accepted from this shard's connections.
    pub requests: AtomicU64,
    /// [ext] Requests that reached their deadline.
    pub request_timeouts: AtomicU64,
    /// `message` frames queued to this shard's subscribers (one per subscriber reached).
    pub deliveries: AtomicU64,
    /// Connections closed with 4008 (outbound queue over its cap).
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed with 4011 (token bucket empty).
    pub rate_limit_closes: AtomicU64,
    /// Messages answered `rate_limited` (rate-limit action `error`).
    pub rate_limited_errors: AtomicU64,
    /// Connections closed with 4020 (`DELETE /v1/peers/{peerId}`).
    pub admin_disconnects: AtomicU64,
    /// Upgrades refused with HTTP 429 (per-IP throttle).
    pub upgrades_throttled: AtomicU64,
    /// Receives ended because every provided receive buffer was in use (re-armed).
    pub recv_buffers_exhausted: AtomicU64,
    /// Flushes that found the receive ring's completion queue overflowed.
    pub io_cq_overflows: AtomicU64,
    /// Publications and sends refused because a destination shard's queue was full.
    pub cross_shard_refusals: AtomicU64,
    /// `io_uring_enter` submits that failed (the entries were kept and retried).
    pub io_submit_errors: AtomicU64,
    /// Gauge: [ext] messages retained in the histories this shard owns (protocol §8.1).
    pub history_messages: AtomicU64,
    /// Gauge: [ext] bytes those count against `history_max_bytes` (frame length + 64 each).
    pub history_bytes: AtomicU64,
    /// [ext] History entries dropped, indexed by [`HistoryEviction`].
    pub history_evictions: [AtomicU64; 3],
    /// Pre-`welcome` refusals, indexed by [`AuthFailure`].
    pub auth_failures: [AtomicU64; 4],
    /// Sockets closed at accept over a pending-handshake cap, indexed by [`HandshakeRefusal`].
    pub handshakes_refused: [AtomicU64; 2],
    /// Per app (indexed by `AppId`): publications and direct messages accepted from
    /// WebSocket clients (`messagesUsed` of `GET /v1/usage`, with REST publishes).
    pub app_messages: Box<[AtomicU64]>,
    /// Per app: `message` frames queued to subscribers.
    pub app_deliveries: Box<[AtomicU64]>,
    /// Gauge: [ext] queue-group memberships of this shard's connections (protocol §8.2).
    pub group_members: AtomicU64,
    /// [ext] Publications a queue group could not get to any member (none left other than
    /// the publisher, or too many re-picks), counted by the channel's owner shard.
    pub group_undelivered: AtomicU64,
}

impl ShardCounters {
    fn new(apps: usize) -> ShardCounters {
        let zeros = || (0..apps).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        ShardCounters {
            connections: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            channels: AtomicU64::new(0),
            pattern_subscriptions: AtomicU64::new(0),
            pattern_nodes: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            publications: AtomicU64::new(0),
            directs: AtomicU64::new(0),
            requests_in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            request_timeouts: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            slow_consumer_closes: AtomicU64::new(0),
            rate_limit_closes: AtomicU64::new(0),
            rate_limited_errors: AtomicU64::new(0),
            admin_disconnects: AtomicU64::new(0),
            upgrades_throttled: AtomicU64::new(0),
            recv_buffers_exhausted: AtomicU64::new(0),
            io_cq_overflows: AtomicU64::new(0),
            cross_shard_refusals: AtomicU64::new(0),
            io_submit_errors: AtomicU64::new(0),
            auth_failures: Default::default(),
            handshakes_refused: Default::default(),
            history_messages: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            history_evictions: Default::default(),
            app_messages: zeros(),
            app_deliveries: zeros(),
            group_members: AtomicU64::new(0),
            group_undelivered: AtomicU64::new(0),
        }
    }

    /// Adds `n` to a counter (one relaxed add).
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts one pre-`welcome` refusal.
    #[inline]
    pub(crate) fn auth_failure(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts one socket closed over a pending-handshake cap.
    #[inline]
    pub(crate) fn handshake_refused(&self, why: HandshakeRefusal) {
        self.handshakes_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a connection closed by the server with `code` (at teardown).
    #[inline]
    pub(crate) fn server_close(&self, code: u16) {
        let c = match code {
            4008 => &self.slow_consumer_closes,
            4011 => &self.rate_limit_closes,
            4020 => &self.admin_disconnects,
            _ => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// HTTP statuses the REST thread counts individually; anything else is counted as `other`.
const REST_STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 405, 408, 413, 429, 500, 503];

/// Counters of the REST thread (its only writer).
#[derive(Debug)]
pub struct RestCounters {
    /// Responses by status, indexed like `REST_STATUSES`, plus one slot for `other`.
    responses: [AtomicU64; REST_STATUSES.len() + 1],
    /// Per app: successful `POST /v1/channels/{channel}/publish`.
    pub app_publishes: Box<[AtomicU64]>,
    /// Connections closed because their answers could not be sent for `rest_write_timeout`.
    pub write_timeouts: AtomicU64,
    /// Connections refused at accept (429) over `rest_connections_per_ip`.
    pub connections_refused: AtomicU64,
}

impl RestCounters {
    fn new(apps: usize) -> RestCounters {
        RestCounters {
            responses: Default::default(),
            app_publishes: (0..apps).map(|_| AtomicU64::new(0)).collect(),
            write_timeouts: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    /// Counts one response with `status`.
    pub(crate) fn response(&self, status: u16) {
        let i = REST_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(REST_STATUSES.len());
        self.responses[i].fetch_add(1, Relaxed);
    }

    /// Responses with `status` so far.
    pub fn responses(&self, status: u16) -> u64 {
        let i = REST_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(REST_STATUSES.len());
        self.responses[i].load(Relaxed)
    }
}

/// All counters of the broker. Lives in [`crate::shard::Broker`].
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[Arc<CachePadded<ShardCounters>>]>,
    /// The REST thread's counters.
    pub rest: CachePadded<RestCounters>,
}

/// A per-app usage summary for `GET /v1/usage`, summed over shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AppUsage {
    /// WebSocket publications and direct messages plus REST publishes.
    pub messages: u64,
    /// `message` frames queued to subscribers.
    pub deliveries: u64,
    /// REST publishes alone.
    pub rest_publishes: u64,
}

impl Metrics {
    /// Zeroed counters for `shards` shards and `apps` apps.
    pub fn new(shards: usize, apps: usize) -> Metrics {
        Metrics {
            shards: (0..shards)
                .map(|_| Arc::new(CachePadded::new(ShardCounters::new(apps))))
                .collect(),
            rest: CachePadded::new(RestCounters::new(apps)),
        }
    }

    /// The counters of shard `i` (shared handle, e.g. for a connection's writer task).
    /// Panics if `i` is not a shard index; shards only ask for their own.
    pub fn shard(&self, i: usize) -> &Arc<CachePadded<ShardCounters>> {
        &self.shards[i]
    }

    fn sum(&self, f: impl Fn(&ShardCounters) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Usage of app index `app`, summed over shards.
    pub(crate) fn app_usage(&self, app: usize) -> AppUsage {
        let get = |v: &[AtomicU64]| v.get(app).map_or(0, |c| c.load(Relaxed));
        let rest = get(&self.rest.app_publishes);
        AppUsage {
            messages: self
                .shards
                .iter()
                .map(|s| get(&s.app_messages))
                .sum::<u64>()
                + rest,
            deliveries: self.shards.iter().map(|s| get(&s.app_deliveries)).sum(),
            rest_publishes: rest,
        }
    }

    /// The Prometheus text exposition. `queue_depth(i)` is shard `i`'s cross-shard inbox
    /// depth; `draining` is whether shutdown has started.
    pub(crate) fn render(
        &self,
        queue_depth: impl Fn(usize) -> u64,
        queue_bytes: impl Fn(usize) -> u64,
        draining: bool,
    ) -> String {
        let mut w = Writer {
            out: String::with_capacity(4096),
        };
        w.head(
            "ringcast_connections",
            "gauge",
            "Open WebSocket connections, per shard.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            w.sample_shard("ringcast_connections", i, s.connections.load(Relaxed));
        }
        w.head(
            "ringcast_connections_opened_total",
            "counter",
            "WebSocket connections welcomed, per shard.",
        );
        for (i, s) in self.shards.iter().enumerate() {
            w.sample_shard(
                "ringcast_connections_opened_total",
                i,
                s.connections_opened.load(Relaxed),
            );
        }
        w.head(
            "ringcast_cross_shard_queue_depth",
            "gauge",
            "Messages queued for a shard by other shards and REST.",
        );
        for i in 0..self.shards.len() {
            w.sample_shard("ringcast_cross_shard_queue_depth", i, queue_depth(i));
        }
        w.head(
            "ringcast_cross_shard_queue_bytes",
            "gauge",
            "Bytes of publications and direct messages queued for a shard by other shards and REST (bounded by max_cross_shard_bytes).",
        );
        for i in 0..self.shards.len() {
            w.sample_shard("ringcast_cross_shard_queue_bytes", i, queue_bytes(i));
        }
        w.head(
            "ringcast_history_messages",
            "gauge",
            "Messages retained in the histories a shard owns (protocol section 8.1).",
        );
        for (i, s) in self.shards.iter().enumerate() {
            w.sample_shard(
                "ringcast_history_messages",
                i,
                s.history_messages.load(Relaxed),
            );
        }
        w.head(
            "ringcast_history_bytes",
            "gauge",
            "Bytes of retained history a shard owns, as counted against history_max_bytes (frame length + 64 per message).",
        );
        for (i, s) in self.shards.iter().enumerate() {
            w.sample_shard("ringcast_history_bytes", i, s.history_bytes.load(Relaxed));
        }
        w.head(
            "ringcast_history_evictions_total",
            "counter",
            "Retained history messages dropped, by reason (size: over the channel's size; ttl: older than ttl_secs; memory: over history_max_bytes).",
        );
        for why in HistoryEviction::ALL {
            let v = self.sum(|s| &s.history_evictions[why as usize]);
            let _ = writeln!(
                w.out,
                "ringcast_history_evictions_total{{reason=\"{}\"}} {v}",
                why.label()
            );
        }
        let totals: [(&str, &str, &str, u64); 25] = [
            (
                "ringcast_requests_in_flight",
                "gauge",
                "Requests (protocol section 8.4) waiting for their final reply.",
                self.sum(|s| &s.requests_in_flight),
            ),
            (
                "ringcast_requests_total",
                "counter",
                "Requests accepted from WebSocket clients.",
                self.sum(|s| &s.requests),
            ),
            (
                "ringcast_request_timeouts_total",
                "counter",
                "Requests that reached their deadline without a final reply.",
                self.sum(|s| &s.request_timeouts),
            ),
            (
                "ringcast_subscriptions",
                "gauge",
                "Channel subscriptions of open connections.",
                self.sum(|s| &s.subscriptions),
            ),
            (
                "ringcast_channels",
                "gauge",
                "Channels with at least one subscriber.",
                self.sum(|s| &s.channels),
            ),
            (
                "ringcast_pattern_subscriptions",
                "gauge",
                "Wildcard (pattern) subscriptions of open connections.",
                self.sum(|s| &s.pattern_subscriptions),
            ),
            (
                "ringcast_pattern_trie_nodes",
                "gauge",
                "Live nodes of the shards' pattern tries, roots excluded (zero when no pattern is subscribed).",
                self.sum(|s| &s.pattern_nodes),
            ),
            (
                "ringcast_messages_in_total",
                "counter",
                "Text messages received from WebSocket clients.",
                self.sum(|s| &s.messages_in),
            ),
            (
                "ringcast_bytes_in_total",
                "counter",
                "Bytes read from WebSocket clients after the upgrade.",
                self.sum(|s| &s.bytes_in),
            ),
            (
                "ringcast_messages_out_total",
                "counter",
                "Frames written to WebSocket clients.",
                self.sum(|s| &s.messages_out),
            ),
            (
                "ringcast_bytes_out_total",
                "counter",
                "Bytes written to WebSocket clients after the upgrade.",
                self.sum(|s| &s.bytes_out),
            ),
            (
                "ringcast_publications_total",
                "counter",
                "Publications accepted from WebSocket clients.",
                self.sum(|s| &s.publications),
            ),
            (
                "ringcast_direct_messages_total",
                "counter",
                "Direct messages accepted from WebSocket clients.",
                self.sum(|s| &s.directs),
            ),
            (
                "ringcast_deliveries_total",
                "counter",
                "Message frames queued to subscribers.",
                self.sum(|s| &s.deliveries),
            ),
            (
                "ringcast_slow_consumer_closes_total",
                "counter",
                "Connections closed with 4008 (outbound queue full).",
                self.sum(|s| &s.slow_consumer_closes),
            ),
            (
                "ringcast_rate_limit_closes_total",
                "counter",
                "Connections closed with 4011 (message rate).",
                self.sum(|s| &s.rate_limit_closes),
            ),
            (
                "ringcast_rate_limited_errors_total",
                "counter",
                "Messages answered rate_limited and dropped.",
                self.sum(|s| &s.rate_limited_errors),
            ),
            (
                "ringcast_admin_disconnects_total",
                "counter",
                "Connections closed with 4020 through REST.",
                self.sum(|s| &s.admin_disconnects),
            ),
            (
                "ringcast_upgrades_throttled_total",
                "counter",
                "Upgrades refused with HTTP 429 (per-IP limit).",
                self.sum(|s| &s.upgrades_throttled),
            ),
            (
                "ringcast_recv_buffers_exhausted_total",
                "counter",
                "Socket receives that found every provided receive buffer in use (they wait and are re-armed; raise recv_buffers if this grows).",
                self.sum(|s| &s.recv_buffers_exhausted),
            ),
            (
                "ringcast_cross_shard_refusals_total",
                "counter",
                "WebSocket publications and direct messages refused with rate_limited because a destination shard's queue was over max_cross_shard_bytes.",
                self.sum(|s| &s.cross_shard_refusals),
            ),
            (
                "ringcast_io_submit_errors_total",
                "counter",
                "io_uring submissions the kernel refused, or that waited behind refused ones (kept and submitted again, never dropped).",
                self.sum(|s| &s.io_submit_errors),
            ),
            (
                "ringcast_io_cq_overflows_total",
                "counter",
                "Times a shard found its io_uring completion queue overflowed (completions kept aside by the kernel; receives re-armed).",
                self.sum(|s| &s.io_cq_overflows),
            ),
            (
                "ringcast_rest_write_timeouts_total",
                "counter",
                "REST connections closed because their answers could not be sent for rest_write_timeout_ms.",
                self.rest.write_timeouts.load(Relaxed),
            ),
            (
                "ringcast_rest_connections_refused_total",
                "counter",
                "REST connections answered 429 and closed at accept (rest_connections_per_ip).",
                self.rest.connections_refused.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in totals {
            w.head(name, kind, help);
            let _ = writeln!(w.out, "{name} {v}");
        }
        w.head(
            "ringcast_auth_failures_total",
            "counter",
            "WebSocket connections refused before welcome, by reason.",
        );
        for why in AuthFailure::ALL {
            let v = self.sum(|s| &s.auth_failures[why as usize]);
            let _ = writeln!(
                w.out,
                "ringcast_auth_failures_total{{reason=\"{}\"}} {v}",
                why.label()
            );
        }
        w.head(
            "ringcast_handshakes_refused_total",
            "counter",
            "WebSocket sockets closed at accept over a pending-handshake cap, by reason.",
        );
        for why in HandshakeRefusal::ALL {
            let v = self.sum(|s| &s.handshakes_refused[why as usize]);
            let _ = writeln!(
                w.out,
                "ringcast_handshakes_refused_total{{reason=\"{}\"}} {v}",
                why.label()
            );
        }
        w.head(
            "ringcast_rest_publications_total",
            "counter",
            "Publications accepted through REST.",
        );
        let rest_pubs: u64 = self
            .rest
            .app_publishes
            .iter()
            .map(|c| c.load(Relaxed))
            .sum();
        let _ = writeln!(w.out, "ringcast_rest_publications_total {rest_pubs}");
        w.head(
            "ringcast_rest_requests_total",
            "counter",
            "REST responses, by HTTP status.",
        );
        for (i, s) in REST_STATUSES.iter().enumerate() {
            let _ = writeln!(
                w.out,
                "ringcast_rest_requests_total{{status=\"{s}\"}} {}",
                self.rest.responses[i].load(Relaxed)
            );
        }
        let other = self.rest.responses[REST_STATUSES.len()].load(Relaxed);
        let _ = writeln!(
            w.out,
            "ringcast_rest_requests_total{{status=\"other\"}} {other}"
        );
        w.head(
            "ringcast_group_members",
            "gauge",
            "Queue-group memberships of open connections, per shard (protocol 8.2).",
        );
        for (i, s) in self.shards.iter().enumerate() {
            w.sample_shard("ringcast_group_members", i, s.group_members.load(Relaxed));
        }
        w.head(
            "ringcast_group_undelivered_total",
            "counter",
            "Publications dropped for a queue group because it had no member left to take them (the publisher excluded).",
        );
        let undelivered = self.sum(|s| &s.group_undelivered);
        let _ = writeln!(w.out, "ringcast_group_undelivered_total {undelivered}");
        w.head("ringcast_shards", "gauge", "Number of shards.");
        let _ = writeln!(w.out, "ringcast_shards {}", self.shards.len());
        w.head(
            "ringcast_draining",
            "gauge",
            "1 once graceful shutdown has started.",
        );
        let _ = writeln!(w.out, "ringcast_draining {}", u8::from(draining));
        w.out
    }
}

/// Small helper writing `# HELP`/`# TYPE` lines and samples.
struct Writer {
    out: String,
}

impl Writer {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample_shard(&mut self, name: &str, shard: usize, v: u64) {
        let _ = writeln!(self.out, "{name}{{shard=\"{shard}\"}} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_shards_and_renders_every_family_once() {
        let m = Metrics::new(2, 2);
        ShardCounters::add(&m.shard(0).deliveries, 3);
        ShardCounters::add(&m.shard(1).deliveries, 4);
        m.shard(1).auth_failure(AuthFailure::TokenExpired);
        m.shard(0).server_close(4011);
        m.shard(0).server_close(1001);
        ShardCounters::add(&m.shard(1).app_messages[1], 5);
        ShardCounters::add(&m.rest.app_publishes[1], 2);
        m.rest.response(200);
        m.rest.response(418);
        m.shard(1).handshake_refused(HandshakeRefusal::IpCap);
        ShardCounters::add(&m.rest.write_timeouts, 2);
        ShardCounters::add(&m.shard(0).group_undelivered, 1);
        ShardCounters::add(&m.shard(1).group_undelivered, 2);
        let text = m.render(|i| i as u64 * 10, |i| i as u64 * 100, false);
        assert!(text.contains("\nringcast_deliveries_total 7\n"), "{text}");
        assert!(text.contains("ringcast_auth_failures_total{reason=\"token_expired\"} 1\n"));
        assert!(text.contains("ringcast_rate_limit_closes_total 1\n"));
        assert!(text.contains("ringcast_handshakes_refused_total{reason=\"ip_cap\"} 1\n"));
        assert!(text.contains("ringcast_handshakes_refused_total{reason=\"shard_cap\"} 0\n"));
        assert!(text.contains("ringcast_rest_write_timeouts_total 2\n"));
        assert!(text.contains("\nringcast_group_undelivered_total 3\n"));
        assert!(text.contains("ringcast_group_members{shard=\"1\"} 0\n"));
        assert!(text.contains("ringcast_cross_shard_queue_depth{shard=\"1\"} 10\n"));
        assert!(text.contains("ringcast_rest_requests_total{status=\"200\"} 1\n"));
        assert!(text.contains("ringcast_rest_requests_total{status=\"other\"} 1\n"));
        assert_eq!(
            m.app_usage(1),
            AppUsage {
                messages: 7,
                deliveries: 0,
                rest_publishes: 2
            }
        );
        assert_eq!(m.app_usage(9), AppUsage::default());
        // Each family has exactly one TYPE line, and every sample line parses as `name{..} value`.
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(
                    seen.insert(rest.split(' ').next().unwrap().to_string()),
                    "dup {line}"
                );
            } else if !line.starts_with('#') {
                let (_, v) = line.rsplit_once(' ').unwrap();
                v.parse::<u64>().unwrap();
            }
        }
    }
}
