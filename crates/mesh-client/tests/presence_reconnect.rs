//! Reconnect restore against a scripted server that still lists our old
//! connection in its snapshot (as a real server does until it notices the
//! old socket is gone).

mod support;

use mesh_client::presence::{GroupKey, MemoryStore, Presence, PresenceOptions, StateStore};
use mesh_client::MeshClient;
use mesh_protocol::Frame;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::room::wait_users;
use support::{fast_options, within, Peer, ScriptedServer};

const KEY: &str = "user-state:lobby";

/// Answers requests with `answer` until every command in `until` was
/// answered; returns every request seen.
async fn serve_until(
    peer: &mut Peer,
    until: &[&str],
    answer: impl Fn(&Frame) -> Value,
) -> Vec<Frame> {
    let mut seen: Vec<Frame> = Vec::new();
    while !until.iter().all(|c| seen.iter().any(|f| f.command == *c)) {
        let request = peer.recv_request().await;
        let payload = answer(&request);
        peer.reply(&request, payload).await;
        seen.push(request);
    }
    seen
}

fn find<'a>(seen: &'a [Frame], command: &str) -> &'a Frame {
    seen.iter()
        .find(|f| f.command == command)
        .unwrap_or_else(|| panic!("no {command}"))
}

fn member(id: &str, user: &str) -> Value {
    json!({"id": id, "metadata": {"userId": user}})
}

/// Answers of a server where we are `me` and `pat` is another person; the
/// presence snapshot still lists `ghost`, our previous connection.
fn answer(me: &'static str, ghost: Option<&'static str>) -> impl Fn(&Frame) -> Value {
    move |frame| match frame.command.as_str() {
        "mesh/join-room" => {
            json!({"success": true, "present": [member(me, "me"), member("pat-1", "pat")]})
        }
        "mesh/subscribe-presence" => json!({
            "success": true,
            "present": [member(me, "me"), member("pat-1", "pat")],
            "states": {"pat-1": {"status": "reading"}}
        }),
        "mesh/get-presence-state" => {
            let mut present = vec![me, "pat-1"];
            present.extend(ghost);
            let mut states = json!({"pat-1": {"status": "reading"}});
            if let Some(ghost) = ghost {
                states[ghost] = json!({"status": "saved"});
            }
            json!({"success": true, "present": present, "states": states})
        }
        "mesh/get-connection-metadata" => json!({"metadata": {"userId": "me"}}),
        _ => json!(true),
    }
}

#[tokio::test]
async fn reconnect_drops_the_old_connection_at_once_and_republishes() {
    let mut server = ScriptedServer::start().await;
    let connecting = tokio::spawn({
        let url = server.url.clone();
        async move { MeshClient::connect(&url, fast_options()).await }
    });
    let mut peer = server.next_peer().await;
    peer.assign("me-old").await;
    let client = connecting.await.unwrap().unwrap();

    let store = Arc::new(MemoryStore::new());
    store.set(KEY, &json!({"status": "saved"})).unwrap();
    let starting = tokio::spawn({
        let (client, store) = (client.clone(), store.clone());
        async move {
            let options = PresenceOptions {
                republish_jitter: Duration::from_millis(50),
                ..PresenceOptions::default()
            };
            Presence::with_options(
                client,
                "lobby",
                KEY,
                GroupKey::metadata_field("userId"),
                store,
                options,
            )
            .await
        }
    });
    // Join, subscribe, then the saved state is republished at once.
    let seen = serve_until(
        &mut peer,
        &["mesh/publish-presence-state"],
        answer("me-old", None),
    )
    .await;
    let publish = find(&seen, "mesh/publish-presence-state");
    assert_eq!(publish.payload["state"], json!({"status": "saved"}));
    let presence = within("presence start", starting).await.unwrap().unwrap();
    let mut users = presence.users();
    let list = wait_users(&mut users, "the first list", |u| u.len() == 2).await;
    assert_eq!(&*list[0].id, "me");
    assert_eq!(
        list[1].state.as_deref(),
        Some(&json!({"status": "reading"}))
    );

    // The link dies; the server still lists our old connection.
    drop(peer);
    let mut peer = server.next_peer().await;
    peer.assign("me-new").await;
    let seen = serve_until(
        &mut peer,
        &[
            "mesh/get-connection-metadata",
            "mesh/publish-presence-state",
        ],
        answer("me-new", Some("me-old")),
    )
    .await;
    let mut commands: Vec<&str> = seen.iter().map(|f| f.command.as_str()).collect();
    // The lookup and the (jittered) republish may come in either order.
    commands[3..].sort_unstable();
    assert_eq!(
        commands,
        vec![
            "mesh/join-room",
            "mesh/subscribe-presence",
            "mesh/get-presence-state",
            "mesh/get-connection-metadata",
            "mesh/publish-presence-state",
        ],
        "only our new connection is looked up; pat's key is remembered"
    );
    let lookup = find(&seen, "mesh/get-connection-metadata");
    assert_eq!(lookup.payload["connectionId"], "me-new");
    let republished = find(&seen, "mesh/publish-presence-state");
    assert_eq!(republished.payload["state"], json!({"status": "saved"}));
    assert_eq!(republished.payload.get("silent"), None, "peers must see it");

    // One row for us, made of the new connection only; the ghost is gone.
    let list = wait_users(&mut users, "the restored list", |u| {
        u.len() == 2 && u[0].members.iter().map(|m| &**m).eq(["me-new"])
    })
    .await;
    assert_eq!(list[0].tab_count, 1);
    assert_eq!(&*list[1].id, "pat");
    drop(presence);
    client.close().await;
}
