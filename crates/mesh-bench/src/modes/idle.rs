//! Idle mode: connections that do nothing, and what each costs the server.

use crate::args::Args;
use crate::client::{connect_all, Client};
use crate::process::rss_kib;
use crate::BoxError;
use std::time::Duration;

/// Idle mode: `m` idle connections, and the server's RSS per connection.
pub async fn idle(args: &Args, m: usize) -> Result<(), BoxError> {
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
