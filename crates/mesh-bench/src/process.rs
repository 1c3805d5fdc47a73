//! The server's process: spawning one, reading its memory and CPU time.

use crate::args::Args;
use crate::BoxError;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A server process this tool started; stopped (SIGTERM) when done.
pub struct SpawnedServer {
    /// The process.
    pub child: Child,
    /// Its WebSocket URL.
    pub url: String,
}

impl SpawnedServer {
    /// Starts `mesh-server` (or the bare server with `--bare`) on a free
    /// port and waits until it listens.
    pub async fn start(args: &Args) -> Result<Self, BoxError> {
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

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Resident and peak resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
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
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall, in clock ticks (100 per second on
    // Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Prints the server's memory, when its pid is known.
pub fn report_rss(args: &Args) {
    if let Some((rss, peak)) = args.server_pid.and_then(rss_kib) {
        println!(
            "server RSS: {:.1} MiB now, {:.1} MiB peak",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
}
