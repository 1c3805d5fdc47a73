//! `mesh-server`: a standalone Mesh presence server.

use clap::{Parser, Subcommand};
use mesh_server::auth::{read_secret, sign_hs256};
use mesh_server::{Auth, RedisConfig, Server, ServerBuilder, TrackOptions};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc gives freed pages back after 1 s instead of its default 10 s,
/// from a background thread rather than on the next allocation.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Exit status for options that can never work: systemd's
/// `RestartPreventExitStatus=` keeps the service from restarting in a loop
/// on them (clap's own usage errors exit with it too).
const EXIT_BAD_CONFIG: u8 = 2;

/// A Mesh presence server (WebSocket). `GET /healthz` on the same port
/// answers 200. Every option can also be set with the environment
/// variable shown.
#[derive(Debug, Parser)]
#[command(name = "mesh-server", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Check the options and exit, without listening or connecting:
    /// status 0 if the server would start, 2 and the reason if not.
    #[arg(long)]
    check_config: bool,
    /// Address to listen on.
    #[arg(long, env = "MESH_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Rooms with presence: an exact name or a regex matching the whole
    /// name. Repeat for several patterns.
    #[arg(
        long = "track",
        env = "MESH_TRACK",
        value_delimiter = ',',
        default_value = ".*"
    )]
    track: Vec<String>,
    /// Presence TTL refreshed by pongs (e.g. 90s, 500ms); 0 = none.
    #[arg(long, env = "MESH_PRESENCE_TTL", default_value = "0", value_parser = parse_duration)]
    presence_ttl: Duration,
    /// Heartbeat ping interval.
    #[arg(long, env = "MESH_PING_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    ping_interval: Duration,
    /// Consecutive missed pongs tolerated before a connection is closed.
    #[arg(long, env = "MESH_MAX_MISSED_PONGS", default_value_t = 1)]
    max_missed_pongs: u32,
    /// Slowest reading (bytes/s) still counted as reading: a pong may be
    /// late by the time this rate needs to read what was sent before its
    /// ping; 0 = never late.
    #[arg(long, env = "MESH_MIN_READ_RATE", default_value_t = 16384)]
    min_read_rate: u64,
    /// Latency measurement interval.
    #[arg(long, env = "MESH_LATENCY_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    latency_interval: Duration,
    /// Attach the URL query (userId, username, ...) to connections as metadata. For demos.
    #[arg(long, env = "MESH_METADATA_FROM_QUERY")]
    metadata_from_query: bool,
    /// Answer mesh/get-connection-metadata about any connection, not only
    /// those sharing a room with the asker.
    #[arg(long, env = "MESH_OPEN_METADATA")]
    open_metadata: bool,
    /// Browser origins allowed to connect (repeat or comma-separate; `*` =
    /// any). Default: any. Requests without Origin are always allowed.
    #[arg(
        long = "allow-origin",
        env = "MESH_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    allow_origin: Vec<String>,
    /// Largest frame in bytes.
    #[arg(long, env = "MESH_MAX_FRAME_BYTES", default_value_t = mesh_protocol::DEFAULT_MAX_FRAME_BYTES, value_parser = parse_positive)]
    max_frame_bytes: usize,
    /// Largest presence state or metadata in bytes.
    #[arg(long, env = "MESH_MAX_STATE_BYTES", default_value_t = mesh_protocol::DEFAULT_MAX_STATE_BYTES, value_parser = parse_positive)]
    max_state_bytes: usize,
    /// Most rooms per connection.
    #[arg(long, env = "MESH_MAX_ROOMS", default_value_t = mesh_protocol::DEFAULT_MAX_ROOMS_PER_CONNECTION, value_parser = parse_positive)]
    max_rooms: usize,
    /// Most bytes queued to one connection before it is dropped as a slow consumer.
    #[arg(long, env = "MESH_MAX_QUEUED_BYTES", default_value_t = 1024 * 1024, value_parser = parse_positive)]
    max_queued_bytes: usize,
    /// Most members in one room; a join past it is refused (ETOOLARGE).
    #[arg(long, env = "MESH_MAX_ROOM_MEMBERS", default_value_t = mesh_server::DEFAULT_MAX_ROOM_MEMBERS)]
    max_room_members: usize,
    /// Share rooms, presence and metadata with other instances through
    /// Redis: `redis://HOST:PORT/DB`. Default: in memory, this instance only.
    #[arg(long, env = "MESH_REDIS_URL")]
    redis: Option<String>,
    /// Share them through a Redis Cluster instead (Redis 7 or later): seed
    /// nodes `redis://HOST:PORT`, repeat or comma-separate.
    #[arg(
        long = "redis-cluster",
        env = "MESH_REDIS_CLUSTER",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    redis_cluster: Vec<String>,
    /// Prefix of every Redis key and channel; instances sharing one form a
    /// cluster.
    #[arg(long, env = "MESH_REDIS_PREFIX", default_value = "mesh-presence:")]
    redis_prefix: String,
    /// Malformed frames tolerated per connection per minute before closing it (1008).
    #[arg(long, env = "MESH_MAX_BAD_FRAMES", default_value_t = 100)]
    max_bad_frames: u32,
    /// Requests per second allowed per connection (0 = unlimited).
    #[arg(long, env = "MESH_MAX_REQUESTS_PER_SECOND", default_value_t = 0)]
    max_requests_per_second: u32,
    /// Unrequested control frames (pings, pongs) tolerated per connection
    /// per minute before closing it (1008).
    #[arg(long, env = "MESH_MAX_CONTROL_FRAMES", default_value_t = 100)]
    max_control_frames: u32,
    /// Time a new connection has to send its HTTP request head.
    #[arg(long, env = "MESH_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Most connections open at once (503 past it); lowered to fit the
    /// open-file limit.
    #[arg(long, env = "MESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Most connections open at once from one IP address (503 past it; 0 =
    /// no limit).
    #[arg(long, env = "MESH_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    max_connections_per_ip: usize,
    /// Require HS256 tokens signed with the secret in this file (its
    /// contents, surrounding whitespace trimmed).
    #[arg(
        long,
        env = "MESH_AUTH_SECRET_FILE",
        conflicts_with = "auth_public_key_file"
    )]
    auth_secret_file: Option<PathBuf>,
    /// Require tokens signed by the private half of this PEM public key
    /// (RSA: RS256, P-256: ES256, Ed25519: EdDSA).
    #[arg(long, env = "MESH_AUTH_PUBLIC_KEY_FILE")]
    auth_public_key_file: Option<PathBuf>,
    /// Tokens must carry this audience (`aud`).
    #[arg(long, env = "MESH_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// Tokens must carry this issuer (`iss`).
    #[arg(long, env = "MESH_AUTH_ISSUER")]
    auth_issuer: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print a signed (HS256) token for one user, to hand out.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// File holding the secret the server verifies with.
    #[arg(long, env = "MESH_AUTH_SECRET_FILE")]
    secret_file: PathBuf,
    /// The user's id (`sub`; becomes `userId`).
    #[arg(long)]
    sub: String,
    /// Display name (`name`; becomes `username`).
    #[arg(long)]
    name: Option<String>,
    /// Avatar URL (`picture`; becomes `avatar`).
    #[arg(long)]
    picture: Option<String>,
    /// Role (`role`).
    #[arg(long)]
    role: Option<String>,
    /// Rooms the holder may join, comma-separated; `*` is a wildcard.
    /// Default: every room.
    #[arg(long, value_delimiter = ',')]
    rooms: Option<Vec<String>>,
    /// Rooms the holder may only watch, comma-separated.
    #[arg(long, value_delimiter = ',')]
    watch: Option<Vec<String>>,
    /// Lifetime (`30d`, `12h`, `90s`).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    ttl: Duration,
    /// Audience (`aud`), for a server started with --auth-audience.
    #[arg(long, env = "MESH_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// Issuer (`iss`), for a server started with --auth-issuer.
    #[arg(long, env = "MESH_AUTH_ISSUER")]
    issuer: Option<String>,
}

impl TokenArgs {
    /// The claims to sign.
    fn claims(&self, now: Duration) -> Value {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(self.sub));
        let optional = [
            ("name", &self.name),
            ("picture", &self.picture),
            ("role", &self.role),
            ("aud", &self.audience),
            ("iss", &self.issuer),
        ];
        for (claim, value) in optional {
            if let Some(value) = value {
                claims.insert(claim.into(), json!(value));
            }
        }
        if let Some(rooms) = &self.rooms {
            claims.insert("rooms".into(), json!(rooms));
        }
        if let Some(watch) = &self.watch {
            claims.insert("watch".into(), json!(watch));
        }
        claims.insert("iat".into(), json!(now.as_secs()));
        claims.insert("exp".into(), json!((now + self.ttl).as_secs()));
        Value::Object(claims)
    }
}

/// A duration that must not be zero (a zero interval would spin).
fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

/// A size or count that must be at least 1 (0 would refuse everything).
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// Reads `500ms`, `30s`, `2m`, `1h`; a bare number is milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 30s, 2m)"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86400)),
        _ => Err(format!("unknown unit in {s:?} (use ms, s, m, h or d)")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    if let Some(Cmd::Token(token)) = &args.command {
        return match print_token(token) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let builder = match configure(&args) {
        Ok(builder) => builder,
        Err(e) => {
            eprintln!("mesh-server: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check_config {
        println!("mesh-server: configuration ok (listen on {})", args.addr);
        return ExitCode::SUCCESS;
    }
    match serve(builder, &args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mesh-server token`: prints a token signed with the secret file.
fn print_token(token: &TokenArgs) -> Result<(), Box<dyn std::error::Error>> {
    let secret = read_secret(&token.secret_file)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    println!("{}", sign_hs256(&secret, &token.claims(now))?);
    Ok(())
}

/// Logs go to stdout, in colour only on a terminal. Under systemd (whose
/// journal stamps every line itself, and says so with `JOURNAL_STREAM`)
/// lines carry no timestamp of their own.
fn init_logging() {
    let logs = tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        );
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
}

/// Turns the options into a server builder and checks everything that can
/// be checked without listening, so that `--check-config` and a real start
/// refuse the same mistakes.
fn configure(args: &Args) -> Result<ServerBuilder, Box<dyn std::error::Error>> {
    let auth = auth_of(args)?;
    let ttl = (!args.presence_ttl.is_zero()).then_some(args.presence_ttl);
    let mut builder = Server::builder()
        .addr(args.addr)
        .ping_interval(args.ping_interval)
        .max_missed_pongs(args.max_missed_pongs)
        .min_read_rate(args.min_read_rate)
        .latency_interval(args.latency_interval)
        .metadata_from_query(args.metadata_from_query)
        .open_metadata(args.open_metadata)
        .allow_origins(args.allow_origin.clone())
        .max_frame_bytes(args.max_frame_bytes)
        .max_state_bytes(args.max_state_bytes)
        .max_rooms_per_connection(args.max_rooms)
        .max_queued_bytes(args.max_queued_bytes)
        .max_room_members(args.max_room_members)
        .max_bad_frames(args.max_bad_frames)
        .max_requests_per_second(args.max_requests_per_second)
        .max_control_frames(args.max_control_frames)
        .handshake_timeout(args.handshake_timeout)
        .max_connections(args.max_connections)
        .max_connections_per_ip(args.max_connections_per_ip);
    if let Some(auth) = auth {
        tracing::info!(algorithm = %auth.algorithm(), "every connection needs a valid token");
        builder = builder.auth(auth);
    }
    if let Some(url) = &args.redis {
        builder = builder.redis(RedisConfig::new(url.as_str()).prefix(args.redis_prefix.as_str()));
    } else if !args.redis_cluster.is_empty() {
        builder = builder.redis(
            RedisConfig::cluster(args.redis_cluster.iter().map(String::as_str))
                .prefix(args.redis_prefix.as_str()),
        );
    }
    for pattern in &args.track {
        builder = builder.track_presence(pattern, TrackOptions { ttl, guard: None });
    }
    builder.check()?;
    Ok(builder)
}

/// Serves until Ctrl-C or SIGTERM, then closes every client politely.
async fn serve(builder: ServerBuilder, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let stop = shutdown_signal()?;
    // A server for many clients wants every descriptor it is allowed.
    mesh_server::raise_fd_limit();
    let server = builder.bind().await?;
    tracing::info!(url = %server.url(), tracked = ?args.track, "ready; Ctrl-C to stop");
    stop.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// The token verification the options ask for, if any.
fn auth_of(args: &Args) -> Result<Option<Auth>, mesh_server::ServerError> {
    let auth = match (&args.auth_secret_file, &args.auth_public_key_file) {
        (Some(secret), _) => Auth::hs256_from_file(secret)?,
        (None, Some(key)) => Auth::public_key_file(key)?,
        (None, None) => {
            if args.auth_audience.is_some() || args.auth_issuer.is_some() {
                return Err(mesh_server::ServerError::Config(
                    "--auth-audience and --auth-issuer need --auth-secret-file or \
                     --auth-public-key-file"
                        .into(),
                ));
            }
            return Ok(None);
        }
    };
    let auth = match &args.auth_audience {
        Some(audience) => auth.audience(audience),
        None => auth,
    };
    Ok(Some(match &args.auth_issuer {
        Some(issuer) => auth.issuer(issuer),
        None => auth,
    }))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// when this is called, not when it is first awaited, so a signal that
/// arrives while the server starts is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The options file the package installs.
    const ENV_FILE: &str = include_str!("../packaging/mesh-server.env");

    /// The environment variable of every option (all but the actions
    /// `--check-config`, `--help` and `--version`).
    fn option_env_vars() -> Vec<(String, Option<String>)> {
        Args::command()
            .get_arguments()
            .filter(|arg| !["check_config", "help", "version"].contains(&arg.get_id().as_str()))
            .map(|arg| {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                (arg.get_id().to_string(), env)
            })
            .collect()
    }

    #[test]
    fn every_option_has_an_environment_variable() {
        for (option, env) in option_env_vars() {
            assert!(env.is_some(), "--{option} has no environment variable");
        }
    }

    /// The packaged options file shows every option, and only real ones, so
    /// an operator finds each setting there and none that would be ignored.
    #[test]
    fn the_packaged_env_file_names_every_option() {
        let known: Vec<String> = option_env_vars()
            .into_iter()
            .filter_map(|(_, e)| e)
            .collect();
        for env in &known {
            assert!(
                ENV_FILE.lines().any(|line| {
                    line.trim_start_matches('#').split('=').next() == Some(env.as_str())
                }),
                "{env} is missing from packaging/mesh-server.env: add it there (commented, with its default)"
            );
        }
        for line in ENV_FILE.lines() {
            let Some((name, _)) = line.trim_start_matches('#').split_once('=') else {
                continue;
            };
            if name.starts_with("MESH_") {
                assert!(
                    known.iter().any(|k| k == name),
                    "{name} in the env file is no option"
                );
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5w").is_err());
    }
}
