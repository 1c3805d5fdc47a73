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

mod args;
mod bare;
mod client;
mod modes;
mod process;

use args::Args;
use clap::Parser;
use process::SpawnedServer;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest any single wait in the benchmark may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

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
        return modes::scale(args).await;
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
        modes::idle(&args, m).await
    } else if let Some(rate) = args.rate {
        modes::steady(&args, rate).await
    } else {
        modes::burst(&args).await.map(drop)
    };
    if let Some(server) = server {
        server.stop();
    }
    result
}
