//! The client and the `mesh` tool against a server that requires tokens:
//! the token goes in the `Authorization` header, a refusal is a typed error
//! rather than a retry loop, and a refreshed token outlives the old one.

mod support;

use mesh_client::{ClientError, ClientEvent, ClientOptions, MeshClient, Token};
use mesh_server::auth::sign_hs256;
use mesh_server::{Auth, RunningServer, Server, TrackOptions};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

const SECRET: &[u8] = b"client tests secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp: u64) -> Token {
    Token::new(
        sign_hs256(
            SECRET,
            &json!({"sub": sub, "name": sub.to_uppercase(), "exp": exp}),
        )
        .unwrap(),
    )
}

/// A server needing tokens; every accepted token's `exp` is recorded.
async fn start_server_at(addr: std::net::SocketAddr, seen: Arc<Mutex<Vec<u64>>>) -> RunningServer {
    Server::builder()
        .addr(addr)
        .ping_interval(Duration::from_millis(500))
        .track_presence(".*", TrackOptions::default())
        .auth(Auth::hs256(SECRET).unwrap())
        .on_connection(move |conn| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().extend(conn.claims.map(|c| c.exp));
                Ok(())
            }
        })
        .bind()
        .await
        .unwrap()
}

fn with_token(token: Token) -> ClientOptions {
    ClientOptions {
        token: Some(token),
        ..fast_options()
    }
}

#[tokio::test]
async fn token_in_the_header_and_typed_refusals() {
    let server = start_server_at("127.0.0.1:0".parse().unwrap(), Arc::default()).await;
    let ada = token("ada", now() + 3600);
    let client = MeshClient::connect(&server.url(), with_token(ada.clone()))
        .await
        .unwrap();
    let mine = client.get_my_connection_metadata().await.unwrap();
    assert_eq!(mine, json!({"userId": "ada", "username": "ADA"}));
    // The options can be logged: the token is not in them.
    assert!(!format!("{:?}", client.options()).contains(ada.expose()));
    client.close().await;

    // Missing, bad or expired: the same typed error, at once.
    for options in [
        fast_options(),
        with_token(Token::new("not-a-token")),
        with_token(token("ada", now() - 60)),
    ] {
        let refused = MeshClient::connect(&server.url(), options).await;
        assert_eq!(refused.err(), Some(ClientError::Unauthorized));
    }
    assert_eq!(
        ClientError::Unauthorized.to_string(),
        "the server refused the token"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn expiry_then_refused_reconnect_stays_offline() {
    let server = start_server_at("127.0.0.1:0".parse().unwrap(), Arc::default()).await;
    // Whole seconds: `now() + 2` leaves between one and two seconds, so
    // that even a slow connect happens before the expiry.
    let client = MeshClient::connect(&server.url(), with_token(token("ada", now() + 2)))
        .await
        .unwrap();
    let mut events = client.events();
    // The server closes at expiry; the reconnect presents the same,
    // now expired, token and is refused: no retry loop follows.
    expect_events(
        &mut events,
        &[
            ("disconnect", ClientEvent::Disconnected),
            ("refusal", ClientEvent::Unauthorized),
            ("giving up", ClientEvent::ReconnectFailed),
        ],
    )
    .await;
    assert_offline_for_good(&client).await;
    server.shutdown().await;
}

#[tokio::test]
async fn refreshed_token_outlives_the_old_one_and_is_used_to_reconnect() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = start_server_at("127.0.0.1:0".parse().unwrap(), seen.clone()).await;
    let addr = server.local_addr();
    let client = MeshClient::connect(&server.url(), with_token(token("ada", now() + 2)))
        .await
        .unwrap();
    let mut events = client.events();
    let later = now() + 3600;
    let refused = client.refresh_token(token("bob", later)).await;
    assert_eq!(
        refused.unwrap_err().code(),
        Some(mesh_client::ErrorCode::Forbidden),
        "another user's token"
    );
    assert_eq!(
        client.refresh_token(token("ada", later)).await,
        Ok(later * 1000)
    );

    // A restart makes the client reconnect: with the newer token.
    server.shutdown().await;
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );
    let server = start_server_at(addr, seen.clone()).await;
    assert!(matches!(
        next_event(&mut events, "reconnect").await,
        ClientEvent::Reconnected { .. }
    ));
    assert_eq!(seen.lock().unwrap().last(), Some(&later));
    server.shutdown().await;
}

#[tokio::test]
async fn cli_token_option_and_env() {
    let server = start_server_at("127.0.0.1:0".parse().unwrap(), Arc::default()).await;
    let url = server.url();
    let good = token("ada", now() + 3600);
    let run = |args: Vec<String>, env_token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh"));
        cmd.args(&args)
            .env_remove("MESH_URL")
            .env_remove("MESH_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = env_token {
            cmd.env("MESH_TOKEN", t);
        }
        async move { within("mesh to finish", cmd.output()).await.unwrap() }
    };
    let meta = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "request",
            "mesh/get-my-connection-metadata",
            "{}",
            "--url",
            &url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let out = run(meta(&["--token", good.expose()]), None).await;
    assert!(out.status.success(), "{out:?}");
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine["metadata"]["userId"], "ada");
    let out = run(meta(&[]), Some(good.expose())).await;
    assert!(out.status.success(), "MESH_TOKEN works too: {out:?}");

    let out = run(meta(&["--token", "bad"]), None).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("the server refused the token"), "{stderr}");
    server.shutdown().await;
}
