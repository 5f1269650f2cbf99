//! The `ringcast` binary: parse the configuration, start the shards, print the address.
//! `ringcast token …` mints a JWT instead.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mimalloc::MiMalloc;
use ringcast::{
    auth::{
        keys::{default_secret_actions, generate_dev_app, AppConfig, SecretKeyConfig},
        Authenticator, MintRequest,
    },
    clock::unix_now,
    config::{Cli, Command, FileConfig, RunArgs, Settings, TokenArgs},
    metrics::Metrics,
    rest,
    router::{
        mesh::{Mesh, Source},
        ShardId, ShardMsg,
    },
    shard::{spawn, Broker},
};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGCAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Run(args)) => run(*args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let mut settings = Settings::resolve(&args)?;
    let dev = settings.apps.is_empty();
    if dev {
        settings.apps.push(generate_dev_app());
        if settings.dev_public {
            tracing::warn!(
                listen = %settings.listen,
                rest_listen = %settings.rest_listen,
                "--dev-public: the development app (its secret key is printed below) may be \
                 reachable from other machines"
            );
        }
    }
    if settings.limits.echo {
        // `Settings::resolve` already refused a non-loopback address.
        tracing::warn!(
            listen = %settings.listen,
            "CONFORMANCE ECHO PROFILE (--echo): NO AUTHENTICATION, every message is echoed \
             back; for the Autobahn testsuite only, never in production"
        );
    }
    let auth = Arc::new(Authenticator::new(&settings.apps)?);
    let mesh = Arc::new(
        Mesh::new(settings.shards, settings.limits.max_cross_shard_bytes)
            .context("creating the shard mesh")?,
    );
    // Shutdown signals are taken synchronously by the main thread (sigwait); block them
    // before the shard threads start so that they inherit the mask and never see them.
    let signals = block_shutdown_signals();
    // [ext] The cluster link (protocol §9): its queues exist before the shards, which hold
    // its handle; its thread starts once the broker is shared.
    let cluster = settings
        .cluster
        .as_ref()
        .map(|c| (c.nats_url.clone(), ringcast::cluster::Link::new(c)));
    let shared = Arc::new(Broker {
        cluster: cluster.as_ref().map(|(_, (link, _))| link.clone()),
        admission: Default::default(),
        draining: Default::default(),
        mesh,
        app_conns: (0..auth.app_count()).map(|_| AtomicU32::new(0)).collect(),
        app_peak: (0..auth.app_count()).map(|_| AtomicU32::new(0)).collect(),
        metrics: Metrics::new(settings.shards, auth.app_count()),
        auth: auth.clone(),
        limits: settings.limits.clone(),
    });
    let shards = spawn::start(
        settings.shards,
        settings.listen,
        settings.placement,
        shared.clone(),
    )
    .with_context(|| format!("starting shards on {}", settings.listen))?;
    let addr = shards.local_addr;
    if let Some((url, (link, queues))) = cluster {
        ringcast::cluster::link::start(url, link, queues, shared.clone())?;
    }
    let rest = rest::start(settings.rest_listen, shared.clone())
        .with_context(|| format!("starting the REST API on {}", settings.rest_listen))?;
    let mut out = std::io::stdout().lock();
    if dev {
        let key = &settings.apps[0].secret_keys[0];
        let (token, _) = auth.mint(
            &key.id,
            &MintRequest {
                peer_id: "dev".into(),
                channels: None,
                permissions: None,
                expires_in_sec: 3600,
                metadata: None,
                peer_metadata: None,
            },
            unix_now(),
        )?;
        writeln!(
            out,
            "ringcast: DEVELOPMENT ONLY: generated app \"dev\"; its keys change at every start"
        )?;
        writeln!(
            out,
            "ringcast: DEVELOPMENT ONLY secret key: {}:{}",
            key.id, key.secret
        )?;
        writeln!(
            out,
            "ringcast: DEVELOPMENT ONLY token (peer \"dev\", 1 h): {token}"
        )?;
        writeln!(
            out,
            "ringcast: DEVELOPMENT ONLY connect: ws://{addr}/v1?token={token}"
        )?;
        writeln!(
            out,
            "ringcast: DEVELOPMENT ONLY more tokens: ringcast token --key-id {} --key-secret {} --peer alice --channels 'room/*'",
            key.id, key.secret
        )?;
    }
    writeln!(out, "ringcast: rest on http://{}", rest.local_addr)?;
    writeln!(
        out,
        "ringcast: listening on ws://{addr}/v1 (shards={})",
        settings.shards
    )?;
    out.flush()?;
    drop(out);
    let sig = wait_signal(&signals, None).unwrap_or(libc::SIGTERM);
    tracing::info!(signal = sig, "shutting down: draining connections");
    shared.draining.store(true, Ordering::Release);
    for s in 0..settings.shards {
        shared.mesh.push(
            Source::External,
            ShardId(s as u16),
            ShardMsg::Shutdown {
                retry_after_ms: settings.limits.going_away_retry_ms,
            },
        );
    }
    let deadline = Instant::now() + settings.limits.drain_timeout;
    while Instant::now() < deadline {
        let live: u32 = shared
            .app_conns
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum();
        if live == 0 {
            tracing::info!("all connections closed; exiting");
            std::process::exit(0);
        }
        if let Some(sig) = wait_signal(&signals, Some(Duration::from_millis(20))) {
            tracing::warn!(signal = sig, "second signal: exiting at once");
            std::process::exit(1);
        }
    }
    // The drain timed out: say what is lost, and exit non-zero so supervisors notice.
    let (conns, frames, bytes, silent) = undelivered(&shared, settings.shards);
    tracing::error!(
        connections = conns,
        frames,
        bytes,
        shards_not_answering = silent,
        "drain timeout reached: {frames} frames ({bytes} bytes) to {conns} connections were not delivered; exiting 1"
    );
    drop(shards);
    std::process::exit(1);
}

/// Asks every shard what it still holds undelivered: (connections, frames, bytes, shards
/// that did not answer within 500 ms).
fn undelivered(shared: &Broker, shards: usize) -> (u64, u64, u64, usize) {
    let mut asks = Vec::with_capacity(shards);
    for s in 0..shards {
        let (tx, rx) = tokio::sync::oneshot::channel();
        shared.mesh.push(
            Source::External,
            ShardId(s as u16),
            ShardMsg::Undelivered { reply: tx },
        );
        asks.push(rx);
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut total = (0, 0, 0, 0);
    for mut rx in asks {
        loop {
            match rx.try_recv() {
                Ok((c, f, b)) => {
                    total.0 += c;
                    total.1 += f;
                    total.2 += b;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => total.3 += 1,
            }
            break;
        }
    }
    total
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned after) and returns
/// the set, for [`wait_signal`].
#[allow(unsafe_code)] // libc signal-mask calls; there is no safe std equivalent.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for a blocked signal of `set`, forever or up to `timeout`; the signal number.
#[allow(unsafe_code)] // libc sigwait/sigtimedwait; there is no safe std equivalent.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    match timeout {
        None => {
            let mut sig = 0;
            // SAFETY: `set` is an initialised sigset_t and `sig` a valid out-pointer.
            let r = unsafe { libc::sigwait(set, &mut sig) };
            (r == 0).then_some(sig)
        }
        Some(t) => {
            let ts = libc::timespec {
                tv_sec: t.as_secs() as _,
                tv_nsec: t.subsec_nanos() as _,
            };
            // SAFETY: valid sigset, null siginfo is allowed, `ts` outlives the call.
            let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
            (r > 0).then_some(r)
        }
    }
}

fn token(args: TokenArgs) -> Result<()> {
    let apps: Vec<AppConfig> = match (&args.config, &args.key_secret) {
        (_, Some(secret)) => {
            let Some(id) = args.key_id.clone() else {
                bail!("--key-secret needs --key-id")
            };
            vec![AppConfig {
                id: "cli".into(),
                max_connections: None,
                secret_keys: vec![SecretKeyConfig {
                    id,
                    secret: secret.clone(),
                    channel_patterns: vec!["**".into()],
                    actions: default_secret_actions(),
                }],
                publishable_keys: vec![],
                history: vec![],
            }]
        }
        (Some(path), None) => FileConfig::load(path)?.apps,
        (None, None) => bail!("give --config FILE or --key-id and --key-secret"),
    };
    let key_id = match &args.key_id {
        Some(k) => k.clone(),
        None => apps
            .iter()
            .flat_map(|a| a.secret_keys.iter())
            .map(|k| k.id.clone())
            .next()
            .context("the config has no secret key")?,
    };
    let auth = Authenticator::new(&apps)?;
    let json = |s: &Option<String>, what: &str| -> Result<Option<serde_json::Value>> {
        s.as_deref()
            .map(|t| serde_json::from_str(t).with_context(|| format!("--{what} is not valid JSON")))
            .transpose()
    };
    let (jwt, _exp) = auth.mint(
        &key_id,
        &MintRequest {
            peer_id: args.peer.clone(),
            channels: args.channels.clone(),
            permissions: args.permissions.clone(),
            expires_in_sec: args.ttl,
            metadata: json(&args.metadata, "metadata")?,
            peer_metadata: json(&args.peer_metadata, "peer-metadata")?,
        },
        unix_now(),
    )?;
    println!("{jwt}");
    Ok(())
}
