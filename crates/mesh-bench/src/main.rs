//! `mesh-bench`: load tool for any Mesh server.
//!
//! Burst mode (default): N clients connect, subscribe to one room's
//! presence, join it, then each publishes K states as fast as it can. Every
//! client receives every state (its own included), so the burst delivers
//! N x N x K updates. Reports connect time, join and state deliveries per
//! second, state latency p50/p99 (the sender's timestamp is in the state),
//! duplicates, and the server's RSS.
//!
//! Steady mode (`--rate`): the same room, but states are published at a
//! fixed delivery rate for `--duration`, to measure latency under load.
//!
//! Idle mode (`--idle`): opens M connections that do nothing, and reports
//! the server's RSS growth per connection.
//!
//! Scaling mode (`--scale 400,1000,2000,5000`): the burst with one state
//! per client at each N, each on a freshly spawned server, then one table:
//! connect time, join and state deliveries/s, state latency, duplicates,
//! the server's peak RSS and its RSS 5 s after every client left.
//!
//! The yardstick (`--bare`): the same runs against a bare fan-out server
//! (see `bare`), spawned as another mesh-bench process, to compare with.
//!
//! The server is either given by `--url` (and optionally `--server-pid` for
//! RSS), or spawned by `--spawn-server` from the `mesh-server` binary next
//! to this one.

mod bare;

use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest any single wait in the benchmark may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about = "Load tool for any Mesh server")]
struct Args {
    /// Server URL (ignored with --spawn-server).
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    url: String,
    /// Another instance of the same cluster (repeatable): clients are spread
    /// over `--url` and these in turn, as behind a load balancer.
    #[arg(long = "also-url")]
    also_url: Vec<String>,
    /// Spawn the `mesh-server` binary found next to this one on a free port.
    #[arg(long)]
    spawn_server: bool,
    /// Path of the server binary to spawn (default: next to mesh-bench).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// An argument for the spawned server (repeatable), e.g.
    /// `--server-arg=--ping-interval --server-arg=1s`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Spawn the bare fan-out server (the yardstick) instead of
    /// `mesh-server`.
    #[arg(long)]
    bare: bool,
    /// Run as the bare fan-out server on this address (what `--bare`
    /// spawns).
    #[arg(long, hide = true)]
    serve_bare: Option<String>,
    /// Scaling mode: run the burst (one state per client) at each of these
    /// client counts, each on a fresh server, and print one table.
    #[arg(long, value_delimiter = ',')]
    scale: Vec<usize>,
    /// Scaling mode: seconds to wait after every client left before the
    /// server's RSS is read.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// Pid of an already running server, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Number of clients.
    #[arg(short = 'n', long, default_value_t = 400)]
    clients: usize,
    /// States each client publishes in the burst.
    #[arg(short = 'k', long, default_value_t = 3)]
    states: usize,
    /// Room to use.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Steady mode: target state deliveries per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Steady mode: how long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Idle mode: open this many idle connections and report RSS per connection.
    #[arg(long)]
    idle: Option<usize>,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(addr) = &args.serve_bare {
        return tokio::runtime::Runtime::new()?.block_on(bare::serve(addr));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(mut args: Args) -> Result<(), BoxError> {
    if !args.scale.is_empty() {
        return scale(args).await;
    }
    let mut server = None;
    if args.spawn_server {
        let spawned = SpawnedServer::start(&args).await?;
        args.url = spawned.url.clone();
        args.server_pid = Some(spawned.child.id());
        server = Some(spawned);
    }
    println!("server: {} (pid {:?})", args.url, args.server_pid);
    for url in &args.also_url {
        println!("server: {url}");
    }
    let result = if let Some(m) = args.idle {
        idle(&args, m).await
    } else if let Some(rate) = args.rate {
        steady(&args, rate).await
    } else {
        burst(&args).await.map(drop)
    };
    if let Some(server) = server {
        server.stop();
    }
    result
}

/// A server process this tool started; stopped (SIGTERM) when done.
struct SpawnedServer {
    child: Child,
    url: String,
}

impl SpawnedServer {
    async fn start(args: &Args) -> Result<Self, BoxError> {
        let bin = match &args.server_bin {
            _ if args.bare => std::env::current_exe()?,
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?
                .parent()
                .ok_or("no parent directory")?
                .join("mesh-server"),
        };
        // Pick a free port, then hand it to the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let listen = if args.bare { "--serve-bare" } else { "--addr" };
        let child = Command::new(&bin)
            .args([listen, &addr])
            // Every client of this tool comes from one address, and the
            // idle benchmark opens 10,000 of them.
            .args(if args.bare {
                &[][..]
            } else {
                &[
                    "--max-connections-per-ip",
                    "0",
                    "--max-connections",
                    "100000",
                ][..]
            })
            .args(&args.server_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let started = Instant::now();
        while TcpStream::connect(&addr).await.is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("spawned server did not start listening".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(SpawnedServer {
            child,
            url: format!("ws://{addr}"),
        })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Resident and peak resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall, in clock ticks (100 per second on
    // Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn report_rss(args: &Args) {
    if let Some((rss, peak)) = args.server_pid.and_then(rss_kib) {
        println!(
            "server RSS: {:.1} MiB now, {:.1} MiB peak",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}

/// One benchmark client.
struct Client {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    next_id: u64,
    /// Frames read while waiting at a barrier, for `next_event`.
    early: VecDeque<Utf8Bytes>,
}

/// What the benchmark reads out of each frame; everything else is skipped.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow)]
    command: &'a str,
    #[serde(default)]
    payload: IncomingPayload,
}

/// The fields of a presence update; any other payload (a string id, a
/// number, `true`) reads as empty.
#[derive(Default)]
struct IncomingPayload {
    kind: Option<String>,
    state: Option<BenchState>,
}

impl<'de> Deserialize<'de> for IncomingPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IncomingPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any payload")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = IncomingPayload::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => out.kind = map.next_value()?,
                        // `null` (cleared) reads as no state; the room is
                        // the benchmark's own, so any other state is ours.
                        "state" => out.state = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IncomingPayload::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// The state every benchmark client publishes: who, which one, and when
/// (microseconds since the benchmark's epoch; every client shares it).
#[derive(Deserialize, Clone, Copy)]
struct BenchState {
    c: u32,
    s: u32,
    t: u64,
}

/// What one frame was, for the benchmark.
enum Event {
    Reply,
    Join,
    State(BenchState),
    Other,
}

impl Client {
    async fn connect(url: &str) -> Result<Self, BoxError> {
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        let (tx, rx) = ws.split();
        let mut client = Client {
            tx,
            rx,
            next_id: 1,
            early: VecDeque::new(),
        };
        // Connected means: the id was assigned.
        loop {
            let text = client.recv_text().await?;
            let frame: Incoming<'_> = serde_json::from_str(&text)?;
            if frame.command == "mesh/assign-id" {
                return Ok(client);
            }
        }
    }

    async fn recv_text(&mut self) -> Result<Utf8Bytes, BoxError> {
        loop {
            match tokio::time::timeout(PHASE_TIMEOUT, self.rx.next()).await {
                Err(_) => return Err("timed out waiting for the server".into()),
                Ok(None) => return Err("server closed the connection".into()),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(Message::Text(text)))) => return Ok(text),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Waits at `barrier` while still reading: pings are answered and other
    /// frames kept for `next_event`. A client that stopped reading while it
    /// waits would answer no ping, and a server with a short ping interval
    /// would rightly close it.
    async fn wait_reading(&mut self, barrier: &Barrier) -> Result<(), BoxError> {
        let wait = barrier.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                _ = &mut wait => return Ok(()),
                // `next` is cancel-safe: a frame is either read or left.
                msg = self.rx.next() => match msg {
                    None => return Err("server closed the connection".into()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => {
                        let frame: Incoming<'_> = serde_json::from_str(&text)?;
                        if frame.command == "ping" && frame.id.is_none() {
                            self.send(json!({"command": "pong", "payload": {}}).to_string())
                                .await?;
                        } else {
                            self.early.push_back(text);
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Reads one frame and classifies it; answers pings.
    async fn next_event(&mut self) -> Result<Event, BoxError> {
        let text = match self.early.pop_front() {
            Some(text) => text,
            None => self.recv_text().await?,
        };
        let frame: Incoming<'_> = serde_json::from_str(&text)?;
        Ok(match frame.command {
            _ if frame.id.is_some() => Event::Reply,
            "ping" => {
                self.send(json!({"command": "pong", "payload": {}}).to_string())
                    .await?;
                Event::Other
            }
            "mesh/presence-update" => match frame.payload.kind.as_deref() {
                Some("join") => Event::Join,
                Some("state") => match frame.payload.state {
                    Some(state) => Event::State(state),
                    None => Event::Other,
                },
                _ => Event::Other,
            },
            _ => Event::Other,
        })
    }

    async fn send(&mut self, text: String) -> Result<(), BoxError> {
        self.tx.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a request without waiting for its reply.
    async fn send_request(
        &mut self,
        command: &str,
        payload: serde_json::Value,
    ) -> Result<(), BoxError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "command": command, "payload": payload}).to_string())
            .await
    }

    /// Sends a request and waits for its reply (other frames are dropped).
    async fn request(&mut self, command: &str, payload: serde_json::Value) -> Result<(), BoxError> {
        self.send_request(command, payload).await?;
        loop {
            if let Event::Reply = self.next_event().await? {
                return Ok(());
            }
        }
    }
}

/// Opens `n` clients, `concurrency` at a time; returns them and how long
/// it took.
async fn connect_all(args: &Args, n: usize) -> Result<(Vec<Client>, Duration), BoxError> {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let urls: Vec<&String> = std::iter::once(&args.url).chain(&args.also_url).collect();
    for i in 0..n {
        let url = urls[i % urls.len()].clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            Client::connect(&url).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        clients.push(task.await??);
    }
    Ok((clients, started.elapsed()))
}

/// Per-client results of the burst.
#[derive(Default)]
struct Tally {
    joins_done: Option<Instant>,
    latencies_us: Vec<u64>,
    states: u64,
    duplicates: u64,
    last_state: Option<Instant>,
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The figures of one burst.
struct BurstReport {
    clients: usize,
    connect: Duration,
    join_per_sec: f64,
    states: u64,
    expected: u64,
    states_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    duplicates: u64,
}

async fn burst(args: &Args) -> Result<BurstReport, BoxError> {
    let n = args.clients;
    let k = args.states;
    report_rss(args);
    let (clients, connect_time) = connect_all(args, n).await?;
    println!(
        "connect: {n} clients in {:.3} s ({:.0} connections/s)",
        connect_time.as_secs_f64(),
        n as f64 / connect_time.as_secs_f64()
    );

    let barrier = Arc::new(Barrier::new(n + 1));
    let epoch = Instant::now();
    let room = args.room.clone();
    let mut tasks = Vec::with_capacity(n);
    for (index, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            client
                .request("mesh/subscribe-presence", json!({ "roomName": room }))
                .await?;
            client.wait_reading(&barrier).await?; // everyone subscribed
            client.wait_reading(&barrier).await?; // join phase starts
            client
                .send_request("mesh/join-room", json!({ "roomName": room }))
                .await?;
            let (mut joins, mut replied) = (0, false);
            while joins < n || !replied {
                match client.next_event().await? {
                    Event::Join => joins += 1,
                    Event::Reply => replied = true,
                    _ => {}
                }
            }
            tally.joins_done = Some(Instant::now());
            client.wait_reading(&barrier).await?; // joins done
            client.wait_reading(&barrier).await?; // burst starts
            for s in 0..k {
                let state = json!({ "c": index, "s": s, "t": micros_since(epoch) });
                client
                    .send_request(
                        "mesh/publish-presence-state",
                        json!({ "roomName": room, "state": state }),
                    )
                    .await?;
            }
            let mut seen = HashSet::with_capacity(n * k);
            let (mut replies, expected) = (0, (n * k) as u64);
            while tally.states < expected || replies < k {
                match client.next_event().await? {
                    Event::State(state) => {
                        let now = micros_since(epoch);
                        if !seen.insert((state.c, state.s)) {
                            tally.duplicates += 1;
                            continue;
                        }
                        tally.states += 1;
                        tally.latencies_us.push(now.saturating_sub(state.t));
                        tally.last_state = Some(Instant::now());
                    }
                    Event::Reply => replies += 1,
                    _ => {}
                }
            }
            Ok::<_, BoxError>((tally, client))
        }));
    }
    barrier.wait().await;
    let join_start = Instant::now();
    barrier.wait().await;
    barrier.wait().await;
    let join_time = join_start.elapsed();
    report_rss(args);
    let cpu_before = args.server_pid.and_then(cpu_time);
    let burst_start = Instant::now();
    barrier.wait().await;

    let mut tallies = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        let (tally, client) = task.await??;
        tallies.push(tally);
        clients.push(client);
    }
    let burst_end = tallies
        .iter()
        .filter_map(|t| t.last_state)
        .max()
        .unwrap_or(burst_start);
    let burst_time = burst_end.duration_since(burst_start);
    let join_deliveries = (n * n) as f64;
    println!(
        "join: {} deliveries in {:.3} s ({:.0} deliveries/s)",
        n * n,
        join_time.as_secs_f64(),
        join_deliveries / join_time.as_secs_f64()
    );
    let deliveries: u64 = tallies.iter().map(|t| t.states).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();
    let mut latencies: Vec<u64> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
    latencies.sort_unstable();
    println!(
        "states: {deliveries} deliveries (expected {}) in {:.3} s ({:.0} deliveries/s), {duplicates} duplicates",
        n * n * k,
        burst_time.as_secs_f64(),
        deliveries as f64 / burst_time.as_secs_f64()
    );
    print_latency(&latencies);
    let report = BurstReport {
        clients: n,
        connect: connect_time,
        join_per_sec: join_deliveries / join_time.as_secs_f64(),
        states: deliveries,
        expected: (n * n * k) as u64,
        states_per_sec: deliveries as f64 / burst_time.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        duplicates,
    };
    if let (Some(before), Some(after)) = (cpu_before, args.server_pid.and_then(cpu_time)) {
        let cpu = after.saturating_sub(before);
        println!(
            "server CPU in the burst: {:.2} s ({:.0} deliveries per CPU-second)",
            cpu.as_secs_f64(),
            deliveries as f64 / cpu.as_secs_f64().max(0.01)
        );
    }
    report_rss(args);
    drop(clients);
    Ok(report)
}

/// Scaling mode: one burst per client count, each on a fresh server.
async fn scale(mut args: Args) -> Result<(), BoxError> {
    args.states = 1;
    let mut rows = Vec::new();
    for &n in &args.scale.clone() {
        println!("== {n} clients");
        let server = SpawnedServer::start(&args).await?;
        args.url = server.url.clone();
        let pid = server.child.id();
        args.server_pid = Some(pid);
        args.clients = n;
        let report = burst(&args).await;
        // Every client has left (burst drops them); give the server time.
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let rss = rss_kib(pid);
        server.stop();
        let report = report?;
        let (after, peak) = rss.ok_or("cannot read server RSS")?;
        rows.push((report, peak, after));
    }
    println!();
    println!("| members | connect | join deliveries/s | state deliveries/s | state latency p50 / p99 | duplicates | server peak RSS | RSS {} s after all left |", args.settle);
    println!("|---|---|---|---|---|---|---|---|");
    for (r, peak, after) in rows {
        println!(
            "| {} | {:.2} s | {:.0}k | {:.0}k ({} of {}) | {:.0} / {:.0} ms | {} | {:.1} MiB | {:.1} MiB |",
            r.clients,
            r.connect.as_secs_f64(),
            r.join_per_sec / 1000.0,
            r.states_per_sec / 1000.0,
            r.states,
            r.expected,
            r.p50_ms,
            r.p99_ms,
            r.duplicates,
            peak as f64 / 1024.0,
            after as f64 / 1024.0,
        );
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn print_latency(sorted: &[u64]) {
    println!(
        "state latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    );
}

async fn steady(args: &Args, rate: u64) -> Result<(), BoxError> {
    let n = args.clients;
    let (clients, connect_time) = connect_all(args, n).await?;
    println!(
        "connect: {n} clients in {:.3} s",
        connect_time.as_secs_f64()
    );
    // Each publish reaches all n clients: publishes/s = rate / n, spread
    // over the clients in turn.
    let publishes_per_sec = (rate as f64 / n as f64).max(1.0);
    let per_client_interval = Duration::from_secs_f64(n as f64 / publishes_per_sec);
    let duration = Duration::from_secs(args.duration);
    let epoch = Instant::now();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for (index, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        let room = args.room.clone();
        tasks.push(tokio::spawn(async move {
            client
                .request("mesh/subscribe-presence", json!({ "roomName": room }))
                .await?;
            client
                .request("mesh/join-room", json!({ "roomName": room }))
                .await?;
            barrier.wait().await;
            let start = Instant::now();
            // Stagger the clients evenly over one interval.
            let offset = per_client_interval.mul_f64(index as f64 / n as f64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start + offset),
                per_client_interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut latencies = Vec::new();
            let mut s = 0u32;
            // Keep reading a little after the end, for updates in flight.
            let read_until = start + duration + Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = tick.tick(), if start.elapsed() < duration => {
                        let state = json!({ "c": index, "s": s, "t": micros_since(epoch) });
                        s += 1;
                        client.send_request(
                            "mesh/publish-presence-state",
                            json!({ "roomName": room, "state": state }),
                        ).await?;
                    }
                    event = client.next_event() => {
                        if let Event::State(state) = event? {
                            latencies.push(micros_since(epoch).saturating_sub(state.t));
                        }
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(read_until)) => break,
                }
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    barrier.wait().await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    println!(
        "steady: target {rate} deliveries/s for {} s: {} deliveries ({:.0}/s)",
        args.duration,
        latencies.len(),
        latencies.len() as f64 / duration.as_secs_f64()
    );
    print_latency(&latencies);
    report_rss(args);
    Ok(())
}

async fn idle(args: &Args, m: usize) -> Result<(), BoxError> {
    let pid = args
        .server_pid
        .ok_or("idle mode needs --server-pid or --spawn-server to read RSS")?;
    // Warm up: one connection, so one-off allocations are not counted.
    let warm = Client::connect(&args.url).await?;
    let (before, _) = rss_kib(pid).ok_or("cannot read server RSS")?;
    let (clients, connect_time) = connect_all(args, m).await?;
    // Let the server settle its buffers after the handshakes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, peak) = rss_kib(pid).ok_or("cannot read server RSS")?;
    println!(
        "idle: {m} connections in {:.3} s",
        connect_time.as_secs_f64()
    );
    println!(
        "server RSS: {:.1} MiB before, {:.1} MiB after (peak {:.1} MiB): {:.2} KiB per idle connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / m as f64
    );
    drop(clients);
    drop(warm);
    Ok(())
}
