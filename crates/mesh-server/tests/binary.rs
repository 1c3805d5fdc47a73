//! The `mesh-server` binary: starts from its options, answers health
//! checks, serves Mesh clients, and shuts down cleanly on Ctrl-C.

mod common;

use common::{Peer, WAIT};
use mesh_protocol::command;
use serde_json::json;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn binary_serves_and_stops_on_ctrl_c() {
    let args = ["--addr", "127.0.0.1:0", "--track", "lobby,doc:.*"];
    let args = [
        &args[..],
        &["--ping-interval", "200ms", "--metadata-from-query"],
    ]
    .concat();
    let started = tokio::task::spawn_blocking(move || {
        common::spawn_binary(env!("CARGO_BIN_EXE_mesh-server"), &args)
    });
    let (mut child, url) = tokio::time::timeout(WAIT, started).await.unwrap().unwrap();

    let addr = url.trim_start_matches("ws://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let mut a = Peer::connect(&format!("{url}/?userId=u7")).await;
    let mine = a
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(mine["metadata"], json!({"userId": "u7"}));
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
