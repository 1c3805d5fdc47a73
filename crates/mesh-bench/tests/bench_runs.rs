//! The load tool against a real server: a small burst must account for
//! every delivery, with no duplicates, and report each figure.

use mesh_server::{Server, TrackOptions};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_burst_counts_every_delivery() {
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let url = server.url();
    let pid = std::process::id().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mesh-bench"))
            .args(["--url", &url, "--server-pid", &pid, "-n", "20", "-k", "2"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 20 clients x 20 receivers x 2 states.
    assert!(
        stdout.contains("states: 800 deliveries (expected 800)"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 duplicates"), "{stdout}");
    assert!(stdout.contains("join: 400 deliveries"), "{stdout}");
    assert!(stdout.contains("state latency: p50"), "{stdout}");
    assert!(stdout.contains("server RSS:"), "{stdout}");
    server.shutdown().await;
}

#[test]
fn scaling_mode_prints_one_row_per_size() {
    // Against the bare fan-out server, which mesh-bench spawns from itself.
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-bench"))
        .args(["--bare", "--scale", "5,10", "--settle", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("| members | connect |"), "{stdout}");
    assert!(stdout.contains("| 5 | "), "{stdout}");
    // 10 clients x 10 receivers x 1 state, none twice.
    assert!(stdout.contains("(100 of 100) |"), "{stdout}");
    assert!(stdout.contains("| 0 |"), "{stdout}");
}
