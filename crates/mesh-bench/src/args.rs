//! The command line.

use clap::Parser;
use std::path::PathBuf;

/// What to run, against which server.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about = "Load tool for any Mesh server")]
pub struct Args {
    /// Server URL (ignored with --spawn-server).
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    pub url: String,
    /// Another instance of the same cluster (repeatable): clients are spread
    /// over `--url` and these in turn, as behind a load balancer.
    #[arg(long = "also-url")]
    pub also_url: Vec<String>,
    /// Spawn the `mesh-server` binary found next to this one on a free port.
    #[arg(long)]
    pub spawn_server: bool,
    /// Path of the server binary to spawn (default: next to mesh-bench).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// An argument for the spawned server (repeatable), e.g.
    /// `--server-arg=--ping-interval --server-arg=1s`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Spawn the bare fan-out server (the yardstick) instead of
    /// `mesh-server`.
    #[arg(long)]
    pub bare: bool,
    /// Run as the bare fan-out server on this address (what `--bare`
    /// spawns).
    #[arg(long, hide = true)]
    pub serve_bare: Option<String>,
    /// Scaling mode: run the burst (one state per client) at each of these
    /// client counts, each on a fresh server, and print one table.
    #[arg(long, value_delimiter = ',')]
    pub scale: Vec<usize>,
    /// Scaling mode: seconds to wait after every client left before the
    /// server's RSS is read.
    #[arg(long, default_value_t = 5)]
    pub settle: u64,
    /// Pid of an already running server, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Number of clients.
    #[arg(short = 'n', long, default_value_t = 400)]
    pub clients: usize,
    /// States each client publishes in the burst.
    #[arg(short = 'k', long, default_value_t = 3)]
    pub states: usize,
    /// Room to use.
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Steady mode: target state deliveries per second.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Steady mode: how long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Idle mode: open this many idle connections and report RSS per connection.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Connections opened concurrently.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}
