//! The `mesh-server` binary: starts from its options, answers health
//! checks, serves Mesh clients, and shuts down cleanly on Ctrl-C.

mod common;

use common::{Peer, WAIT};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_serves_and_stops_on_ctrl_c() {
    let args = ["--addr", "127.0.0.1:0", "--track", "lobby,doc:.*"];
    let args = [
        &args[..],
        &["--ping-interval", "200ms", "--metadata-from-query"],
    ]
    .concat();
    let (mut child, url) = common::spawn_binary(env!("CARGO_BIN_EXE_mesh-server"), &args).await;

    let addr = url.trim_start_matches("ws://").to_string();
    let response = common::http_get(&addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let mut a = Peer::connect(&format!("{url}/?userId=u7")).await;
    let mine = a.my_metadata().await;
    assert_eq!(mine, json!({"userId": "u7"}));
    assert_eq!(a.subscribe("doc:1").await["success"], true);
    assert_eq!(a.subscribe("other").await["success"], false, "not tracked");

    // Ctrl-C: the server closes connections politely and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let frame = a.closed().await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let exit = tokio::time::timeout(WAIT, exit).await.unwrap().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// Starts the binary with `args` and returns it with its log lines.
fn spawn_logging(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The first log line containing `needle`.
fn log_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

#[tokio::test]
async fn token_subcommand_mints_what_the_server_accepts() {
    let dir = std::env::temp_dir().join(format!("mesh-token-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "  s3cret with spaces inside \n").unwrap();
    let secret = secret.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args([
            "token",
            "--secret-file",
            secret,
            "--sub",
            "ada",
            "--name",
            "Ada L.",
        ])
        .args(["--rooms", "team,doc:*", "--watch", "lobby", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let (mut child, lines) =
        spawn_logging(&["--addr", "127.0.0.1:0", "--auth-secret-file", secret]);
    let line = log_line(&lines, "ws://");
    let start = line.find("ws://").unwrap();
    let url = line[start..].split_whitespace().next().unwrap().to_string();
    let mut a = Peer::connect(&format!("{url}/?token={token}")).await;
    let mine = a.my_metadata().await;
    assert_eq!(mine, json!({"userId": "ada", "username": "Ada L."}));
    assert_eq!(a.join("doc:7").await["success"], true);
    let refused = a.join("lobby").await;
    assert_eq!(refused["code"], "EFORBIDDEN");
    // No token, no entry.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_open_server_off_loopback_warns() {
    let (mut child, lines) = spawn_logging(&["--addr", "0.0.0.0:0"]);
    let line = log_line(&lines, "no authentication");
    assert!(line.contains("WARN"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    // A missing key file is a clear error, not an open server.
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--auth-public-key-file",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read public key"));
}
