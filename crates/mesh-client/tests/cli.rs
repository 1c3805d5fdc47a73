//! The `mesh` command-line tool, end to end against a real server.

mod support;

use mesh_client::{MeshClient, PresenceEvent, PresenceUpdate};
use mesh_server::Server;
use serde_json::{json, Value};
use std::process::Stdio;
use support::room::{start_server, start_server_at};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn mesh(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh"));
    cmd.args(args)
        .env_remove("MESH_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `mesh` to completion: (success, stdout, stderr).
async fn run(args: &[&str]) -> (bool, String, String) {
    let out = within("mesh to finish", mesh(args).output()).await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// A long-running `mesh` and its stdout lines.
struct Running {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = mesh(args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        Running {
            _child: child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> String {
        within("a line from mesh", self.lines.next_line())
            .await
            .unwrap()
            .expect("mesh exited")
    }

    async fn json_line(&mut self) -> Value {
        serde_json::from_str(&self.line().await).unwrap()
    }
}

#[tokio::test]
async fn watch_json_prints_snapshot_and_updates() {
    let server = start_server().await;
    let url = server.url();
    let mut watch = Running::spawn(&["watch", "lobby", "--json", "--url", &url]);
    let snapshot = watch.json_line().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["roomName"], "lobby");
    assert_eq!(snapshot["present"], json!([]));

    let peer = MeshClient::connect(&format!("{url}/?userId=p"), fast_options())
        .await
        .unwrap();
    let peer_id = peer.connection_id().unwrap();
    peer.join_room("lobby").await.unwrap();
    peer.publish_presence_state("lobby", json!({"status": "away"}), None, false)
        .await
        .unwrap();
    peer.close().await;

    let join = watch.json_line().await;
    assert_eq!(
        (join["type"].as_str(), join["connectionId"].as_str()),
        (Some("join"), Some(peer_id.as_str()))
    );
    let state = watch.json_line().await;
    assert_eq!(state["type"], "state");
    assert_eq!(state["state"], json!({"status": "away"}));
    let leave = watch.json_line().await;
    assert_eq!(leave["type"], "leave");
}

#[tokio::test]
async fn watch_text_shows_members_with_metadata() {
    let server = start_server().await;
    let url = server.url();
    let peer = MeshClient::connect(&format!("{url}/?userId=early"), fast_options())
        .await
        .unwrap();
    peer.join_room("lobby").await.unwrap();
    // `--join` makes the watcher a member, so the server shares metadata.
    let mut watch = Running::spawn(&["watch", "lobby", "--join", "--url", &url]);
    assert_eq!(watch.line().await, "lobby: 2 present");
    let mut members = vec![watch.line().await, watch.line().await];
    members.sort();
    assert!(
        members
            .iter()
            .any(|l| l.contains(&peer.connection_id().unwrap()) && l.contains("\"early\"")),
        "{members:?}"
    );

    let late = MeshClient::connect(&format!("{url}/?userId=late"), fast_options())
        .await
        .unwrap();
    late.join_room("lobby").await.unwrap();
    let joined = watch.line().await;
    assert!(
        joined.starts_with(&format!("+ {} joined", late.connection_id().unwrap())),
        "{joined}"
    );
    assert!(joined.contains("\"late\""), "metadata resolved: {joined}");
}

#[tokio::test]
async fn publish_is_seen_by_watchers() {
    let server = start_server().await;
    let url = server.url();
    let watcher = MeshClient::connect(&url, fast_options()).await.unwrap();
    let (_, mut stream) = watcher.subscribe_presence("lobby").await.unwrap();
    let (ok, stdout, stderr) = run(&[
        "publish",
        "lobby",
        r#"{"status":"busy"}"#,
        "--no-wait",
        "--url",
        &url,
    ])
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("published in lobby"), "{stdout}");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match within("updates", stream.recv()).await {
            Some(PresenceEvent::Update(update)) => seen.push(update),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(seen[0], PresenceUpdate::Join { .. }));
    assert!(
        matches!(&seen[1], PresenceUpdate::State { state: Some(s), .. } if *s == json!({"status": "busy"}))
    );
    assert!(
        matches!(seen[2], PresenceUpdate::Leave { .. }),
        "the CLI disconnected"
    );
}

#[tokio::test]
async fn meta_set_and_get() {
    let server = start_server().await;
    let url = server.url();
    let me = format!("{url}/?userId=cli");
    let (ok, stdout, stderr) = run(&[
        "meta",
        "set",
        r#"{"role":"admin"}"#,
        "--strategy",
        "merge",
        "--url",
        &me,
    ])
    .await;
    assert!(ok, "{stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(printed, json!({"userId": "cli", "role": "admin"}));

    let peer = MeshClient::connect(&format!("{url}/?userId=peer"), fast_options())
        .await
        .unwrap();
    peer.join_room("lobby").await.unwrap();
    let peer_id = peer.connection_id().unwrap();
    let (ok, stdout, stderr) =
        run(&["meta", "get", &peer_id, "--room", "lobby", "--url", &url]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap(),
        json!({"userId": "peer"})
    );
}

#[tokio::test]
async fn state_and_raw_requests() {
    let server = start_server().await;
    let url = server.url();
    let (ok, stdout, _) = run(&["state", "lobby", "--url", &url]).await;
    assert!(ok);
    let snapshot: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(snapshot["success"], true);
    let (ok, stdout, _) = run(&["request", "mesh/noop", "{}", "--url", &url]).await;
    assert!(ok);
    assert_eq!(stdout.trim(), "true");
}

#[tokio::test]
async fn bad_input_fails_with_a_clear_message() {
    let server = start_server().await;
    let url = server.url();
    let (ok, _, stderr) = run(&["publish", "lobby", "not json", "--url", &url]).await;
    assert!(!ok);
    assert!(stderr.contains("invalid JSON"), "{stderr}");
    let (ok, _, stderr) = run(&["publish", "nowhere", "{}", "--no-wait", "--url", &url]).await;
    assert!(!ok);
    assert!(stderr.contains("tracked"), "{stderr}");
    let (ok, _, stderr) = run(&["request", "no/such", "{}", "--url", &url]).await;
    assert!(!ok);
    assert!(stderr.contains("ENOTFOUND"), "{stderr}");
    let (ok, _, stderr) = run(&["watch", "nowhere", "--url", &url]).await;
    assert!(!ok);
    assert!(stderr.contains("not tracked"), "{stderr}");
    let (ok, _, stderr) = run(&["state", "lobby", "--url", "ws://127.0.0.1:1"]).await;
    assert!(!ok);
    assert!(stderr.contains("could not connect"), "{stderr}");
}

#[tokio::test]
async fn watch_survives_a_server_restart() {
    let server = start_server().await;
    let (addr, url) = (server.local_addr(), server.url());
    let mut watch = Running::spawn(&["watch", "lobby", "--json", "--url", &url]);
    assert_eq!(watch.json_line().await["type"], "snapshot");
    server.shutdown().await;
    assert_eq!(watch.json_line().await["type"], "disconnected");
    let _server = start_server_at(addr).await;
    let resync = watch.json_line().await;
    assert_eq!(resync["type"], "resync", "{resync}");
    assert_eq!(resync["present"], json!([]));
    let reconnected = watch.json_line().await;
    assert_eq!(reconnected["type"], "reconnected", "{reconnected}");
    assert!(reconnected["connectionId"].is_string());
}

#[tokio::test]
async fn publish_publishes_again_after_a_reconnect() {
    let server = start_server().await;
    let (addr, url) = (server.local_addr(), server.url());
    let mut publish = Running::spawn(&["publish", "lobby", r#"{"status":"busy"}"#, "--url", &url]);
    let first = publish.line().await;
    assert!(first.starts_with("published in lobby as "), "{first}");
    // The server restarts empty: the state is gone with the connection.
    server.shutdown().await;
    let _server = start_server_at(addr).await;
    let again = publish.line().await;
    assert!(
        again.starts_with("reconnected as ") && again.ends_with(": published in lobby again"),
        "{again}"
    );
    let watcher = MeshClient::connect(&url, fast_options()).await.unwrap();
    let snapshot = watcher.get_presence_state("lobby").await.unwrap();
    let states: Vec<&Value> = snapshot.states.values().collect();
    assert_eq!(states, [&json!({"status": "busy"})]);
}

impl Running {
    /// The next block `watch --users` prints: its header line and one line
    /// per person.
    async fn users_block(&mut self) -> (String, Vec<String>) {
        let header = self.line().await;
        let count: usize = header
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a users header: {header}"));
        let mut people = Vec::with_capacity(count);
        for _ in 0..count {
            people.push(self.line().await);
        }
        (header, people)
    }
}

/// A connection of `user` in the lobby, with `state` if any.
async fn tab(url: &str, state: Option<Value>) -> MeshClient {
    let client = MeshClient::connect(url, fast_options()).await.unwrap();
    client.join_room("lobby").await.unwrap();
    if let Some(state) = state {
        assert!(client
            .publish_presence_state("lobby", state, None, false)
            .await
            .unwrap());
    }
    client
}

#[tokio::test]
async fn watch_users_prints_one_line_per_person_with_tabs() {
    let server = start_server().await;
    let url = server.url();
    let mut watch = Running::spawn(&["watch", "lobby", "--users", "--url", &url]);
    assert_eq!(
        watch.users_block().await,
        ("lobby: 0 people".into(), vec![])
    );
    let ada = json!({"userId": "ada", "status": "busy"});
    let _tabs = [
        tab(&url, Some(ada.clone())).await,
        tab(&url, Some(ada)).await,
        tab(&url, Some(json!({"userId": "bob"}))).await,
    ];
    let expected = (
        "lobby: 2 people".to_string(),
        vec![
            r#"  ada  2 tabs  state={"status":"busy","userId":"ada"}"#.to_string(),
            r#"  bob  1 tab  state={"userId":"bob"}"#.to_string(),
        ],
    );
    // Printed again on every change; the last one is the whole room.
    loop {
        let block = watch.users_block().await;
        if block == expected {
            break;
        }
        assert!(block.1.len() <= 2, "{block:?}");
    }
}

#[tokio::test]
async fn watch_users_groups_by_metadata() {
    let server = start_server().await;
    let url = server.url();
    let mut watch = Running::spawn(&[
        "watch",
        "lobby",
        "--users",
        "--group-by",
        "meta.userId",
        "--json",
        "--url",
        &url,
    ]);
    assert_eq!(watch.json_line().await["users"], json!([]));
    // No state at all: the server's metadata says who they are.
    let _tabs = [
        tab(&format!("{url}/?userId=cy"), None).await,
        tab(&format!("{url}/?userId=cy"), None).await,
    ];
    loop {
        let line = watch.json_line().await;
        assert_eq!(line["type"], "users", "{line}");
        let users = line["users"].as_array().unwrap();
        if users.len() == 1 && users[0]["tabCount"] == 2 {
            assert_eq!(users[0]["id"], "cy");
            break;
        }
    }
    let (ok, _, stderr) = run(&["watch", "lobby", "--users", "--group-by", "userId"]).await;
    assert!(!ok);
    assert!(stderr.contains("state.FIELD or meta.FIELD"), "{stderr}");
}

#[tokio::test]
async fn a_lost_connection_says_how_it_was_lost() {
    // Over four times its frame limit the server closes the socket with
    // 1009 instead of answering.
    let server = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .max_frame_bytes(1024)
        .bind()
        .await
        .unwrap();
    let payload = json!({ "blob": "x".repeat(10 * 1024) }).to_string();
    let (ok, _, stderr) = run(&["request", "mesh/noop", &payload, "--url", &server.url()]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "connection lost before the reply arrived: closed by the server with code 1009 (frame too large)"
        ),
        "{stderr}"
    );
}
