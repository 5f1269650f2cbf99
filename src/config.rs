//! Configuration: defaults < TOML file < environment (`RINGCAST_*`) < CLI flags.
//!
//! Every limit the broker enforces lives in [`Limits`], with its default written next to
//! it; docs/configuration.md lists them for operators. Flags and TOML keys share names
//! (`--max-message-size` is `max_message_size` in the file).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::auth::keys::AppConfig;

/// What the broker does when a connection exceeds its token bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Close the connection with 4011 (default).
    #[default]
    Close,
    /// Answer `error` `rate_limited` and drop that one message.
    Error,
}

/// How shard threads are placed on CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Shard `i` is pinned to the i-th available core (default).
    #[default]
    Pinned,
    /// Threads are left to the OS scheduler.
    Unpinned,
}

/// The command line. `ringcast` alone runs the broker.
#[derive(Parser, Debug)]
#[command(
    name = "ringcast",
    version,
    about = "Thread-per-core io_uring WebSocket pub/sub broker"
)]
pub struct Cli {
    /// Subcommand; none means `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Broker options (also accepted without the `run` subcommand).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the broker (the default). Boxed: far larger than the other variants.
    Run(Box<RunArgs>),
    /// Mint a JWT for a peer from a configured secret key.
    Token(TokenArgs),
}

/// Options of `ringcast run`. Every one is optional here so that the TOML file can supply it;
/// the defaults are applied in [`Settings::resolve`].
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML config file (apps, keys, limits).
    #[arg(long, env = "RINGCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// WebSocket listen address [default: 127.0.0.1:8080]. Port 0 picks a free port.
    #[arg(long, env = "RINGCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// REST control plane (HTTP/1.1) listen address [default: 127.0.0.1:8081]. Port 0 picks a free port.
    #[arg(long, env = "RINGCAST_REST_LISTEN")]
    pub rest_listen: Option<SocketAddr>,
    /// Number of shards (threads, one per core) [default: number of CPUs].
    #[arg(long, env = "RINGCAST_SHARDS")]
    pub shards: Option<usize>,
    /// CPU placement of shard threads [default: pinned].
    #[arg(long, env = "RINGCAST_PLACEMENT")]
    pub placement: Option<Placement>,
    /// Largest inbound WebSocket message or frame in bytes; larger closes 1009 [default: 65536].
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Channels one connection may subscribe to [default: 100].
    #[arg(long, env = "RINGCAST_MAX_CHANNELS_PER_CONN")]
    pub max_channels_per_conn: Option<usize>,
    /// Token bucket refill rate, messages per second per connection [default: 100].
    #[arg(long, env = "RINGCAST_RATE_LIMIT_PER_SEC")]
    pub rate_limit_per_sec: Option<u32>,
    /// Token bucket size (burst) [default: 200].
    #[arg(long, env = "RINGCAST_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// What exceeding the bucket does: close (4011) or error (rate_limited) [default: close].
    #[arg(long, env = "RINGCAST_RATE_LIMIT_ACTION")]
    pub rate_limit_action: Option<RateLimitAction>,
    /// Bytes queued for one connection before it is closed as a slow consumer (4008) [default: 1048576].
    #[arg(long, env = "RINGCAST_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Server WebSocket ping interval in ms [default: 30000].
    #[arg(long, env = "RINGCAST_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,
    /// A peer silent (no frame, no pong) this long is dropped, ms [default: 90000].
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Deadline for the HTTP upgrade request, ms [default: 5000].
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Close with 4002 this long before the token's `exp`, ms [default: 250].
    #[arg(long, env = "RINGCAST_EXPIRY_LEAD_MS")]
    pub expiry_lead_ms: Option<u64>,
    /// Largest HTTP upgrade request head in bytes; larger answers 431 [default: 8192].
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most HTTP headers in the upgrade request; more answers 431 [default: 64].
    #[arg(long, env = "RINGCAST_MAX_HEADERS")]
    pub max_headers: Option<usize>,
    /// Size of each of a shard's provided receive buffers in bytes: the most one socket
    /// read returns [default: 1024].
    #[arg(long, env = "RINGCAST_READ_BUFFER_SIZE")]
    pub read_buffer_size: Option<usize>,
    /// Provided receive buffers per shard, shared by all its connections; a power of two,
    /// 64..=32768 [default: 1024].
    #[arg(long, env = "RINGCAST_RECV_BUFFERS")]
    pub recv_buffers: Option<u16>,
    /// How long a server-initiated close waits for the peer's close frame, ms [default: 1000].
    #[arg(long, env = "RINGCAST_CLOSE_TIMEOUT_MS")]
    pub close_timeout_ms: Option<u64>,
    /// Upgrade attempts allowed per source IP per window; more answer HTTP 429; 0 disables [default: 60].
    #[arg(long, env = "RINGCAST_UPGRADES_PER_IP")]
    pub upgrades_per_ip: Option<u32>,
    /// The per-IP upgrade window, ms [default: 60000].
    #[arg(long, env = "RINGCAST_UPGRADE_WINDOW_MS")]
    pub upgrade_window_ms: Option<u64>,
    /// Accepted WebSocket sockets not yet upgraded or refused, per shard; more are closed
    /// at once; 0 disables [default: 1024].
    #[arg(long, env = "RINGCAST_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Pending handshakes per source IP (IPv6: per /64) per shard; more are closed at once;
    /// 0 disables [default: 16].
    #[arg(long, env = "RINGCAST_PENDING_HANDSHAKES_PER_IP")]
    pub pending_handshakes_per_ip: Option<u32>,
    /// REST connections served at once; more wait in the listen backlog [default: 1024].
    #[arg(long, env = "RINGCAST_REST_MAX_CONNECTIONS")]
    pub rest_max_connections: Option<usize>,
    /// REST connections per source IP (IPv6: per /64); more are answered 429 and closed;
    /// 0 disables [default: 64].
    #[arg(long, env = "RINGCAST_REST_CONNECTIONS_PER_IP")]
    pub rest_connections_per_ip: Option<u32>,
    /// A REST connection whose buffered answers cannot be sent for this long is closed, ms
    /// [default: 10000].
    #[arg(long, env = "RINGCAST_REST_WRITE_TIMEOUT_MS")]
    pub rest_write_timeout_ms: Option<u64>,
    /// On SIGTERM/SIGINT, how long connections get to close before the process exits, ms [default: 10000].
    #[arg(long, env = "RINGCAST_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// `retryAfterMs` announced in `going_away` at shutdown [default: 1000].
    #[arg(long, env = "RINGCAST_GOING_AWAY_RETRY_MS")]
    pub going_away_retry_ms: Option<u64>,
    /// Conformance profile, for the Autobahn testsuite only: every connection echoes text and
    /// binary messages back unchanged instead of speaking the protocol; NO authentication.
    /// Never enable in production (docs/hardening.md) [default: false].
    #[arg(long, env = "RINGCAST_ECHO", num_args = 0..=1, default_missing_value = "true")]
    pub echo: Option<bool>,
    /// Client pings (WebSocket ping frames and `ping` messages together) allowed per
    /// connection per second; more closes 4011; 0 disables [default: 100].
    #[arg(long, env = "RINGCAST_MAX_PINGS_PER_SEC")]
    pub max_pings_per_sec: Option<u32>,
    /// Bytes of publications and direct messages queued for one shard by the other shards
    /// and REST; past it publish/send answer `rate_limited` and REST publish 503; 0
    /// disables [default: 67108864].
    #[arg(long, env = "RINGCAST_MAX_CROSS_SHARD_BYTES")]
    pub max_cross_shard_bytes: Option<usize>,
    /// [ext] Bytes of retained history (protocol §8.1) for the whole broker, split evenly
    /// between the shards; past its share a shard evicts the oldest entries of its largest
    /// histories first. Each retained message counts its frame length + 64
    /// [default: 268435456].
    #[arg(long, env = "RINGCAST_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// [ext] Largest `timeoutMs` of a `request` (protocol §8.4); more is `invalid_request`
    /// [default: 300000].
    #[arg(long, env = "RINGCAST_REQUEST_MAX_TIMEOUT_MS")]
    pub request_max_timeout_ms: Option<u64>,
    /// [ext] Requests in flight per connection; one more is `too_many_requests`
    /// [default: 100].
    #[arg(long, env = "RINGCAST_MAX_REQUESTS_IN_FLIGHT")]
    pub max_requests_in_flight: Option<usize>,
    /// Development mode (no apps configured) on a non-loopback `listen` or `rest_listen`:
    /// without this flag such a start is refused, since the generated key is printed and
    /// anyone who reaches the broker can use it [default: false].
    #[arg(long, env = "RINGCAST_DEV_PUBLIC", num_args = 0..=1, default_missing_value = "true")]
    pub dev_public: Option<bool>,
    /// [ext] Join a cluster (protocol §9) through this NATS server (`nats://host:port`,
    /// several comma-separated); overrides `[cluster] nats_url` [default: no cluster].
    #[arg(long, env = "RINGCAST_NATS_URL")]
    pub nats_url: Option<String>,
    /// [ext] This node's name in the cluster; overrides `[cluster] node_id`
    /// [default: `node-` and 8 random hex digits].
    #[arg(long, env = "RINGCAST_NODE_ID")]
    pub node_id: Option<String>,
}

/// Options of `ringcast token`.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// TOML config file holding the secret key.
    #[arg(long, env = "RINGCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Secret key id (`sk_id_…`) that signs; default: the first key of the first app.
    #[arg(long)]
    pub key_id: Option<String>,
    /// Secret (`sk_secret_…`) to use instead of a config file (needs --key-id).
    #[arg(long, env = "RINGCAST_KEY_SECRET")]
    pub key_secret: Option<String>,
    /// Peer id (the JWT `sub`).
    #[arg(long)]
    pub peer: String,
    /// Channel names or patterns (comma separated or repeated); default: the key's patterns.
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<String>>,
    /// Permissions (publish, subscribe, presence, send); default: the key's actions.
    #[arg(long, value_delimiter = ',')]
    pub permissions: Option<Vec<String>>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Private metadata (JSON object), returned in `welcome`.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Public peer metadata (JSON object), shown in presence and direct messages.
    #[arg(long)]
    pub peer_metadata: Option<String>,
}

/// Why the configuration was refused. The messages are the ones printed at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read. (`cause` is part of the message, not a `source`,
    /// so that it is printed once.)
    #[error("cannot read config {}: {cause}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        cause: std::io::Error,
    },
    /// The config file is not valid TOML or does not fit [`FileConfig`].
    #[error("invalid config {}{location}: {message}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `", line L, column C"`, or empty when toml gives no position.
        location: String,
        /// toml's message with every string value of the file blanked out.
        message: String,
    },
    /// A setting outside its allowed range.
    #[error("{setting} must {rule}")]
    OutOfRange {
        /// The setting (its TOML key), or an expression of settings.
        setting: &'static str,
        /// What it must be, e.g. `"be at least 1"`.
        rule: &'static str,
    },
    /// The conformance echo profile on a non-loopback `listen`.
    #[error(
        "refusing to start: the conformance echo profile (--echo) has no \
         authentication and may only listen on a loopback address, not {listen}"
    )]
    EchoNotLoopback {
        /// The configured `listen`.
        listen: SocketAddr,
    },
    /// Development mode (no apps) on a non-loopback address without `dev_public`.
    #[error(
        "refusing to start: development mode (no apps configured) prints its \
         generated secret key and may only listen on loopback addresses, but \
         {setting} is {addr}; configure apps (docs/configuration.md), or pass \
         --dev-public to expose the development app anyway"
    )]
    DevNotLoopback {
        /// `listen` or `rest_listen`.
        setting: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
}

/// The TOML file. Limits sit at the top level next to `[[apps]]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    rest_listen: Option<SocketAddr>,
    shards: Option<usize>,
    placement: Option<Placement>,
    max_message_size: Option<usize>,
    max_channels_per_conn: Option<usize>,
    rate_limit_per_sec: Option<u32>,
    rate_limit_burst: Option<u32>,
    rate_limit_action: Option<RateLimitAction>,
    max_outbound_bytes: Option<usize>,
    ping_interval_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    expiry_lead_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    read_buffer_size: Option<usize>,
    recv_buffers: Option<u16>,
    close_timeout_ms: Option<u64>,
    upgrades_per_ip: Option<u32>,
    upgrade_window_ms: Option<u64>,
    max_pending_handshakes: Option<usize>,
    pending_handshakes_per_ip: Option<u32>,
    rest_max_connections: Option<usize>,
    rest_connections_per_ip: Option<u32>,
    rest_write_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    going_away_retry_ms: Option<u64>,
    echo: Option<bool>,
    max_pings_per_sec: Option<u32>,
    max_cross_shard_bytes: Option<usize>,
    history_max_bytes: Option<usize>,
    request_max_timeout_ms: Option<u64>,
    max_requests_in_flight: Option<usize>,
    dev_public: Option<bool>,
    /// [ext] `[cluster]` (protocol §9).
    cluster: Option<crate::cluster::ClusterConfig>,
    /// Tenants.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

impl FileConfig {
    /// Reads and parses a TOML config file. Errors give the line and column and toml's
    /// message, never the offending line itself, and every string value of the file is
    /// blanked out of the message: a config holds secrets, and start-up errors end up in
    /// logs.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let invalid = |e: toml::de::Error, strings: &[String]| ConfigError::Parse {
            path: path.to_owned(),
            location: location(&text, e.span()),
            message: redact(e.message(), strings),
        };
        let table: toml::Table = text.parse().map_err(|e| invalid(e, &[]))?;
        let mut strings = Vec::new();
        collect_strings(&toml::Value::Table(table), &mut strings);
        toml::from_str(&text).map_err(|e| invalid(e, &strings))
    }
}

/// `", line L, column C"` (1-based) of the start of `span` in `text`; empty without a span.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(at) = span.map(|s| s.start.min(text.len())) else {
        return String::new();
    };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(", line {line}, column {column}")
}

/// Every string value in `v` (not the keys), recursively.
fn collect_strings(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        toml::Value::Table(t) => t.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// `message` with each of `strings` blanked where serde quotes a value (`"…"` as Debug, or
/// in backticks), and anything from `sk_secret_` up to the next quote or space blanked too.
fn redact(message: &str, strings: &[String]) -> String {
    const BLANK: &str = "<redacted>";
    let mut m = message.to_owned();
    for s in strings.iter().filter(|s| !s.is_empty()) {
        m = m
            .replace(&format!("{s:?}"), &format!("\"{BLANK}\""))
            .replace(&format!("`{s}`"), &format!("`{BLANK}`"));
    }
    let prefix = crate::auth::keys::SECRET_PREFIX;
    let mut out = String::with_capacity(m.len());
    let mut rest = m.as_str();
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '`' | '\'' | ','))
            .unwrap_or(rest.len());
        out.push_str(BLANK);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Per-connection and per-shard limits, all resolved. Shared read-only by every shard.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Inbound message and frame cap (close 1009).
    pub max_message_size: usize,
    /// Subscriptions per connection (`channel_limit_exceeded`).
    pub max_channels_per_conn: usize,
    /// Token bucket refill per second.
    pub rate_limit_per_sec: u32,
    /// Token bucket capacity.
    pub rate_limit_burst: u32,
    /// Close (4011) or error (`rate_limited`).
    pub rate_limit_action: RateLimitAction,
    /// Outbound queue cap per connection (close 4008).
    pub max_outbound_bytes: usize,
    /// Server ping period.
    pub ping_interval: Duration,
    /// Silence after which a peer is dropped.
    pub idle_timeout: Duration,
    /// Deadline for the upgrade request.
    pub handshake_timeout: Duration,
    /// How long before `exp` the 4002 close is sent.
    pub expiry_lead: Duration,
    /// Upgrade request head cap (431).
    pub max_header_bytes: usize,
    /// Header count cap (431).
    pub max_headers: usize,
    /// Size of each provided receive buffer (the most one socket read returns).
    pub read_buffer_size: usize,
    /// Provided receive buffers per shard (a power of two).
    pub recv_buffers: u16,
    /// Wait for the peer's close frame after a server close.
    pub close_timeout: Duration,
    /// Upgrade attempts per source IP per window (0: unlimited).
    pub upgrades_per_ip: u32,
    /// The per-IP upgrade window.
    pub upgrade_window: Duration,
    /// Pending handshakes per shard (0: unlimited). Default 1024.
    pub max_pending_handshakes: usize,
    /// Pending handshakes per source IP (IPv6 /64) per shard (0: unlimited). Default 16.
    pub pending_handshakes_per_ip: u32,
    /// REST connections served at once. Default 1024.
    pub rest_max_connections: usize,
    /// REST connections per source IP (IPv6 /64) (0: unlimited). Default 64.
    pub rest_connections_per_ip: u32,
    /// A REST connection that cannot send its buffered answers for this long is closed.
    /// Default 10 s.
    pub rest_write_timeout: Duration,
    /// Shutdown drain time.
    pub drain_timeout: Duration,
    /// `retryAfterMs` in `going_away`.
    pub going_away_retry_ms: u64,
    /// Conformance echo profile (Autobahn only): echo messages, no protocol, no auth.
    pub echo: bool,
    /// Client pings per connection per second (0: unlimited); more closes 4011.
    pub max_pings_per_sec: u32,
    /// Data bytes queued for one shard by others before publishes are refused (0: no bound).
    pub max_cross_shard_bytes: usize,
    /// [ext] Retained history bytes for the whole broker (split between shards).
    pub history_max_bytes: usize,
    /// [ext] Largest `timeoutMs` of a request.
    pub request_max_timeout: Duration,
    /// [ext] Requests in flight per connection.
    pub max_requests_in_flight: usize,
}

/// Everything `ringcast run` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    /// WebSocket listen address.
    pub listen: SocketAddr,
    /// REST control plane listen address.
    pub rest_listen: SocketAddr,
    /// Shard count.
    pub shards: usize,
    /// CPU placement.
    pub placement: Placement,
    /// Limits.
    pub limits: Limits,
    /// Tenants; empty means "generate a development app".
    pub apps: Vec<AppConfig>,
    /// Development mode may listen on non-loopback addresses.
    pub dev_public: bool,
    /// [ext] The cluster link's settings (protocol §9), when this node is in a cluster.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Settings {
    /// Merges CLI/env (already merged by clap) over the file over the defaults, and validates.
    pub fn resolve(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($f:ident, $def:expr) => {
                args.$f.or(file.$f).unwrap_or($def)
            };
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let limits = Limits {
            max_message_size: pick!(max_message_size, 65536),
            max_channels_per_conn: pick!(max_channels_per_conn, 100),
            rate_limit_per_sec: pick!(rate_limit_per_sec, 100),
            rate_limit_burst: pick!(rate_limit_burst, 200),
            rate_limit_action: pick!(rate_limit_action, RateLimitAction::Close),
            max_outbound_bytes: pick!(max_outbound_bytes, 1 << 20),
            ping_interval: Duration::from_millis(pick!(ping_interval_ms, 30_000)),
            idle_timeout: Duration::from_millis(pick!(idle_timeout_ms, 90_000)),
            handshake_timeout: Duration::from_millis(pick!(handshake_timeout_ms, 5_000)),
            expiry_lead: Duration::from_millis(pick!(expiry_lead_ms, 250)),
            max_header_bytes: pick!(max_header_bytes, 8192),
            max_headers: pick!(max_headers, 64),
            read_buffer_size: pick!(read_buffer_size, 1024),
            recv_buffers: pick!(recv_buffers, 1024),
            close_timeout: Duration::from_millis(pick!(close_timeout_ms, 1000)),
            upgrades_per_ip: pick!(upgrades_per_ip, 60),
            upgrade_window: Duration::from_millis(pick!(upgrade_window_ms, 60_000)),
            max_pending_handshakes: pick!(max_pending_handshakes, 1024),
            pending_handshakes_per_ip: pick!(pending_handshakes_per_ip, 16),
            rest_max_connections: pick!(rest_max_connections, 1024),
            rest_connections_per_ip: pick!(rest_connections_per_ip, 64),
            rest_write_timeout: Duration::from_millis(pick!(rest_write_timeout_ms, 10_000)),
            drain_timeout: Duration::from_millis(pick!(drain_timeout_ms, 10_000)),
            going_away_retry_ms: pick!(going_away_retry_ms, 1000),
            echo: pick!(echo, false),
            max_pings_per_sec: pick!(max_pings_per_sec, 100),
            max_cross_shard_bytes: pick!(max_cross_shard_bytes, 64 << 20),
            history_max_bytes: pick!(history_max_bytes, 256 << 20),
            request_max_timeout: Duration::from_millis(pick!(request_max_timeout_ms, 300_000)),
            max_requests_in_flight: pick!(max_requests_in_flight, 100),
        };
        let s = Settings {
            listen: pick!(listen, SocketAddr::from(([127, 0, 0, 1], 8080))),
            rest_listen: pick!(rest_listen, SocketAddr::from(([127, 0, 0, 1], 8081))),
            shards: pick!(shards, cpus),
            placement: pick!(placement, Placement::Pinned),
            limits,
            apps: file.apps,
            dev_public: pick!(dev_public, false),
            cluster: match (file.cluster, &args.nats_url) {
                (c, None) => c,
                (Some(c), Some(url)) => Some(crate::cluster::ClusterConfig {
                    nats_url: url.clone(),
                    ..c
                }),
                (None, Some(url)) => Some(crate::cluster::ClusterConfig {
                    nats_url: url.clone(),
                    node_id: None,
                    subject_prefix: None,
                    max_pending: None,
                    heartbeat_ms: None,
                    node_timeout_ms: None,
                }),
            }
            .map(|mut c| {
                if args.node_id.is_some() {
                    c.node_id = args.node_id.clone();
                }
                c
            }),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let check = |ok: bool, setting: &'static str, rule: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { setting, rule })
            }
        };
        check(
            (1..=128).contains(&self.shards),
            "shards",
            "be between 1 and 128",
        )?;
        if let Some(c) = &self.cluster {
            check(
                !c.nats_url.trim().is_empty(),
                "[cluster] nats_url",
                "not be empty",
            )?;
            check(
                c.subject_prefix
                    .as_deref()
                    .is_none_or(crate::cluster::subject::valid_prefix),
                "[cluster] subject_prefix",
                "be dot-separated tokens of letters, digits, '-' and '_'",
            )?;
            check(
                c.node_id.as_deref().is_none_or(|n| {
                    (1..=64).contains(&n.len())
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }),
                "[cluster] node_id",
                "be 1 to 64 letters, digits, '-' or '_'",
            )?;
            check(
                c.max_pending.is_none_or(|n| n >= 1),
                "[cluster] max_pending",
                "be at least 1",
            )?;
            let beat = c
                .heartbeat_ms
                .unwrap_or(crate::cluster::DEFAULT_HEARTBEAT_MS);
            check(
                (50..=60_000).contains(&beat),
                "[cluster] heartbeat_ms",
                "be between 50 and 60000",
            )?;
            check(
                c.node_timeout_ms
                    .unwrap_or(crate::cluster::DEFAULT_NODE_TIMEOUT_MS)
                    >= 2 * beat,
                "[cluster] node_timeout_ms",
                "be at least twice heartbeat_ms",
            )?;
        }
        check(
            l.max_message_size >= 128,
            "max_message_size",
            "be at least 128",
        )?;
        check(
            l.max_message_size <= 64 << 20,
            "max_message_size",
            "be at most 64 MiB",
        )?;
        check(
            l.max_channels_per_conn >= 1,
            "max_channels_per_conn",
            "be at least 1",
        )?;
        check(
            l.rate_limit_per_sec >= 1,
            "rate_limit_per_sec",
            "be at least 1",
        )?;
        check(l.rate_limit_burst >= 1, "rate_limit_burst", "be at least 1")?;
        check(
            l.max_outbound_bytes >= 4096,
            "max_outbound_bytes",
            "be at least 4096",
        )?;
        check(
            !l.ping_interval.is_zero(),
            "ping_interval_ms",
            "be positive",
        )?;
        check(
            l.idle_timeout > l.ping_interval,
            "idle_timeout_ms",
            "exceed ping_interval_ms",
        )?;
        check(
            !l.upgrade_window.is_zero(),
            "upgrade_window_ms",
            "be positive",
        )?;
        check(
            !l.handshake_timeout.is_zero(),
            "handshake_timeout_ms",
            "be positive",
        )?;
        check(
            l.max_header_bytes >= 256,
            "max_header_bytes",
            "be at least 256",
        )?;
        check(l.max_headers >= 8, "max_headers", "be at least 8")?;
        check(
            (1..=1 << 20).contains(&l.rest_max_connections),
            "rest_max_connections",
            "be between 1 and 1048576",
        )?;
        check(
            !l.rest_write_timeout.is_zero(),
            "rest_write_timeout_ms",
            "be positive",
        )?;
        check(
            (256..=1 << 20).contains(&l.read_buffer_size),
            "read_buffer_size",
            "be between 256 and 1048576",
        )?;
        check(
            l.recv_buffers.is_power_of_two() && (64..=32768).contains(&l.recv_buffers),
            "recv_buffers",
            "be a power of two between 64 and 32768",
        )?;
        check(
            l.recv_buffers as usize * l.read_buffer_size <= 1 << 30,
            "recv_buffers * read_buffer_size",
            "be at most 1 GiB",
        )?;
        self.check_exposure()
    }

    /// Safe defaults (docs/hardening.md, Hardening II item 7): the echo profile (no
    /// authentication) only on a loopback `listen`; development mode (no apps, a generated
    /// key printed at start) only on loopback `listen` and `rest_listen` unless `dev_public`.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let loopback = |a: &SocketAddr| a.ip().to_canonical().is_loopback();
        if self.limits.echo && !loopback(&self.listen) {
            return Err(ConfigError::EchoNotLoopback {
                listen: self.listen,
            });
        }
        if self.apps.is_empty() && !self.dev_public {
            for (setting, addr) in [("listen", self.listen), ("rest_listen", self.rest_listen)] {
                if !loopback(&addr) {
                    return Err(ConfigError::DevNotLoopback { setting, addr });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk_secret_do-not-print-me-0123456789abcdef";

    fn load(text: &str) -> Result<FileConfig, String> {
        let dir = std::env::temp_dir().join(format!("ringcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).expect("write");
        let r = FileConfig::load(&path).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn parse_errors_never_echo_strings_of_the_file() {
        let key = |v: &str| {
            format!("[[apps]]\nid = \"a\"\n[[apps.secret_keys]]\nid = \"sk_id_1\"\n{v}\n")
        };
        for (text, line) in [
            // Syntax errors on the secret's line (unterminated, stray text, bad escape).
            (key(&format!("secret = \"{SECRET}")), 5),
            (key(&format!("secret = \"{SECRET}\" x")), 5),
            (key(&format!("secret = \"{SECRET}\\q\"")), 5),
            (key(&format!("secret = {SECRET}")), 5),
            // Type errors quoting the value.
            (format!("max_message_size = \"{SECRET}\"\n"), 1),
            (format!("rate_limit_action = \"{SECRET}\"\n"), 1),
            (format!("placement = \"{SECRET}\"\n"), 1),
            (key(&format!("secret = \"x\"\nactions = \"{SECRET}\"")), 6),
            (format!("{SECRET} = 1\n"), 1),
        ] {
            let e = load(&text).map(|_| ()).expect_err(&text);
            assert!(!e.contains("do-not-print-me"), "{e}");
            assert!(e.contains(&format!("line {line}")), "{e}");
        }
        // Other messages stay useful.
        let e = load("lisen = \"127.0.0.1:1\"\n")
            .map(|_| ())
            .expect_err("unknown key");
        assert!(e.contains("lisen") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn redact_blanks_quoted_values_and_secret_tokens() {
        let strings = vec!["fast".to_owned(), SECRET.to_owned()];
        assert_eq!(
            redact(
                "unknown variant `fast`, expected `close` or `error`",
                &strings
            ),
            "unknown variant `<redacted>`, expected `close` or `error`"
        );
        assert_eq!(
            redact(
                &format!("invalid type: string {SECRET:?}, expected u32"),
                &strings
            ),
            "invalid type: string \"<redacted>\", expected u32"
        );
        assert_eq!(
            redact("x sk_secret_abc y sk_secret_", &[]),
            "x sk_secret_<redacted> y sk_secret_<redacted>"
        );
        assert_eq!(location("a\nbc\nd", Some(4..5)), ", line 2, column 3");
        assert_eq!(location("a", None), "");
    }

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("ringcast").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::resolve(&cli.run).map_err(|e| e.to_string())
    }

    #[test]
    fn echo_and_development_mode_stay_on_loopback() {
        assert!(settings(&["--echo"]).is_ok());
        assert!(settings(&["--echo", "--listen", "[::1]:0"]).is_ok());
        let e = settings(&["--echo", "--listen", "0.0.0.0:0", "--dev-public"]).unwrap_err();
        assert!(e.contains("--echo") && e.contains("0.0.0.0:0"), "{e}");
        let e = settings(&["--listen", "0.0.0.0:0"]).unwrap_err();
        assert!(
            e.contains("development mode") && e.contains("listen is 0.0.0.0:0"),
            "{e}"
        );
        let e = settings(&["--rest-listen", "[::]:0"]).unwrap_err();
        assert!(e.contains("rest_listen is [::]:0"), "{e}");
        assert!(settings(&["--listen", "0.0.0.0:0", "--dev-public"]).is_ok());
        assert!(settings(&["--listen", "[::ffff:127.0.0.1]:0"]).is_ok());
        assert!(settings(&["--listen", "127.0.0.2:0"]).is_ok());
    }
}
