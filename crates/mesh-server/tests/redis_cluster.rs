//! Several server instances on one Redis: what only a real cluster shows.
//! (The whole integration suite also runs on the Redis backend, in
//! `suite/`; `suite/instances.rs`'s `instances_share_presence` covers join,
//! state, leave and metadata across two instances.)

mod common;

use common::redis::{self as test_redis, RedisCluster, RedisServer};
use common::{
    assert_update, builder_on, error_code, metric, scrape, spawn_binary, Peer, ServerProcess, WAIT,
};
use mesh_protocol::{command, PresenceUpdate};
use mesh_server::{RedisBackend, RedisConfig, RunningServer, Server, TrackOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server on `backend`: room `lapse` has a 400 ms presence TTL, every
/// other room is tracked without one.
async fn server_on(backend: RedisBackend) -> RunningServer {
    builder_on(Arc::new(backend))
        .ping_interval(Duration::from_millis(100))
        .max_missed_pongs(50)
        .track_presence(
            "lapse",
            TrackOptions {
                ttl: Some(Duration::from_millis(400)),
                guard: None,
            },
        )
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap()
}

/// Asks `asker` for `room`'s presence; asserts exactly `ids` are present
/// and returns the snapshot.
async fn present_exactly<const N: usize>(
    asker: &mut Peer,
    room: &str,
    ids: [String; N],
) -> serde_json::Value {
    let snap = asker
        .request(command::GET_PRESENCE_STATE, json!({ "roomName": room }))
        .await;
    let mut present: Vec<String> = serde_json::from_value(snap["present"].clone()).unwrap();
    present.sort();
    let mut expected = Vec::from(ids);
    expected.sort();
    assert_eq!(present, expected);
    snap
}

/// After an outage: `b` publishes, `a` (in the same room "r") sees that
/// and nothing else.
async fn flows_again(a: &mut Peer, b: &mut Peer) {
    b.publish("r", json!({"status": "back"})).await;
    assert_update(&a.next_update().await, "state", &b.id, "r");
    a.sync().await;
    assert_eq!(a.pending_updates(), 0);
}

/// Waits for the backend's next resynchronisation after `seen`.
async fn resynced(backend: &RedisBackend, seen: u64) {
    let mut resyncs = backend.resyncs();
    tokio::time::timeout(Duration::from_secs(30), resyncs.wait_for(|n| *n > seen))
        .await
        .expect("no resync after redis came back")
        .expect("backend gone");
}

#[tokio::test]
async fn expiry_is_announced_once_across_three_instances() {
    let prefix = test_redis::unique_prefix();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(server_on(test_redis::backend(&prefix).await).await);
    }
    let mut watchers = Vec::new();
    for server in &servers {
        let mut peer = Peer::connect(&server.url()).await;
        peer.subscribe("doc").await;
        watchers.push(peer);
    }
    let mut writer = Peer::connect(&servers[0].url()).await;
    writer.join("doc").await;
    for w in &mut watchers {
        assert_update(&w.next_update().await, "join", &writer.id, "doc");
    }
    for round in 0..2 {
        let reply = writer
            .request(
                command::PUBLISH_PRESENCE_STATE,
                json!({"roomName": "doc", "state": {"round": round}, "expireAfter": 200}),
            )
            .await;
        assert_eq!(reply, json!(true));
        for w in &mut watchers {
            let update = w.next_update().await;
            assert!(
                matches!(&update, PresenceUpdate::State { state: Some(s), .. } if s["round"] == round),
                "round {round}: {update:?}"
            );
            // One null per expiry: a second one from round 0 would arrive
            // here in round 1, before round 1's state.
            let update = w.next_update().await;
            assert!(
                matches!(&update, PresenceUpdate::State { state: None, .. }),
                "round {round}: {update:?}"
            );
        }
    }

    // A presence TTL lapsing is announced once too.
    for w in &mut watchers {
        w.subscribe("lapse").await;
    }
    let mut quiet = Peer::connect(&servers[1].url()).await;
    quiet.auto_pong = false;
    quiet.join("lapse").await;
    for w in &mut watchers {
        assert_update(&w.next_update().await, "join", &quiet.id, "lapse");
        assert_update(&w.next_update().await, "leave", &quiet.id, "lapse");
    }
    // And the next update after it is a fresh one, not a duplicate leave.
    writer.publish("doc", json!({"last": true})).await;
    for w in &mut watchers {
        assert_update(&w.next_update().await, "state", &writer.id, "doc");
        w.sync().await;
        assert_eq!(w.pending_updates(), 0);
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn room_names_cannot_collide_in_keys() {
    let server = server_on(test_redis::backend(&test_redis::unique_prefix()).await).await;
    // Names that would collide or be mis-parsed if put raw into keys.
    let rooms = [
        "lobby",
        "lobby:conn:x",
        "lobby%3Aconn%3Ax",
        "lobby:x",
        "*",
        "{lobby}",
        "a b/é",
    ];
    let mut peers = Vec::new();
    for room in rooms {
        let mut peer = Peer::connect(&server.url()).await;
        let reply = peer.join(room).await;
        assert_eq!(
            reply["present"],
            json!([{ "id": peer.id, "metadata": null }]),
            "room {room:?} sees only its own member"
        );
        peer.publish(room, json!({ "room": room })).await;
        peers.push(peer);
    }
    for (room, peer) in rooms.iter().zip(&mut peers) {
        let snap = peer
            .request(command::GET_PRESENCE_STATE, json!({ "roomName": room }))
            .await;
        assert_eq!(snap["present"], json!([peer.id]), "room {room:?}");
        assert_eq!(snap["states"], json!({ peer.id.clone(): { "room": room } }));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_pubsub_messages_are_ignored() {
    let prefix = test_redis::unique_prefix();
    let one = server_on(test_redis::backend(&prefix).await).await;
    let two = server_on(test_redis::backend(&prefix).await).await;
    let mut a = Peer::connect(&one.url()).await;
    a.subscribe("r").await;

    let client = redis::Client::open(test_redis::url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("{prefix}room:{{r}}:updates");
    for junk in [
        "no separator",
        "x|{not json",
        "x|{\"type\":\"teleport\"}",
        "x|[]",
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(junk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(b"x|\xff\xfe".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    // Still delivering after the junk: a join from the other instance.
    let mut b = Peer::connect(&two.url()).await;
    b.join("r").await;
    assert_update(&a.next_update().await, "join", &b.id, "r");
    a.sync().await;
    assert_eq!(a.pending_updates(), 0);
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    // Nothing listens on a socket path that does not exist.
    let err = Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .redis("unix:///nonexistent/mesh-test/redis.sock")
        .bind()
        .await
        .expect_err("bind must fail without redis");
    assert!(err.to_string().contains("redis"), "{err}");
}

/// Starts the `mesh-server` binary on the Redis at `url`; returns it and
/// its WebSocket URL.
async fn spawn_on_redis(url: &str, prefix: &str) -> (ServerProcess, String) {
    let args = ["--addr", "127.0.0.1:0", "--redis", url];
    let args = [&args[..], &["--redis-prefix", prefix, "--track", ".*"]].concat();
    spawn_binary(env!("CARGO_BIN_EXE_mesh-server"), &args).await
}

#[tokio::test]
async fn killed_instance_users_leave_within_ten_seconds() {
    let prefix = test_redis::unique_prefix();
    let survivor = server_on(test_redis::backend(&prefix).await).await;
    let (mut doomed, doomed_url) = spawn_on_redis(&test_redis::url(), &prefix).await;

    let mut a = Peer::connect(&survivor.url()).await;
    a.subscribe("r").await;
    let mut b = Peer::connect(&doomed_url).await;
    b.join("r").await;
    assert_update(&a.next_update().await, "join", &b.id, "r");
    // A state that expires after its writer is gone.
    let reply = b
        .request(
            command::PUBLISH_PRESENCE_STATE,
            json!({"roomName": "r", "state": {"s": 1}, "expireAfter": 300}),
        )
        .await;
    assert_eq!(reply, json!(true));
    assert_update(&a.next_update().await, "state", &b.id, "r");

    doomed.kill().expect("kill -9 the instance");
    let killed = Instant::now();
    // The survivor claims the orphaned expiry...
    let update = a.next_update().await;
    assert!(
        matches!(&update, PresenceUpdate::State { state: None, connection_id, .. } if *connection_id == b.id),
        "{update:?}"
    );
    // ...and sweeps the dead instance's users. `next_update` gives up after
    // WAIT (10 s), which is also the bound under test.
    assert_update(&a.next_update().await, "leave", &b.id, "r");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["present"], json!([]));
    let backend = survivor.handle().backend();
    assert_eq!(backend.get_metadata(&b.id).await.unwrap(), None);
    assert!(backend.connection_rooms(&b.id).await.unwrap().is_empty());
    survivor.shutdown().await;
}

#[tokio::test]
async fn presence_recovers_after_redis_restarts() {
    let mut redis_server = RedisServer::start();
    let url = redis_server.url();
    let prefix = test_redis::unique_prefix();
    let backend_one = test_redis::backend_at(&url, &prefix).await;
    let backend_two = test_redis::backend_at(&url, &prefix).await;
    let one = server_on(backend_one.clone()).await;
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let two = builder_on(Arc::new(backend_two.clone()))
        .track_presence(".*", TrackOptions::default())
        .on_disconnection(move |info| {
            let _ = closed_tx.send(info.id);
            async {}
        })
        .bind()
        .await
        .unwrap();

    let mut a = Peer::connect(&one.url()).await;
    a.subscribe("r").await;
    a.join("r").await;
    let mut b = Peer::connect(&two.url()).await;
    b.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"name": "Bo"}}),
    )
    .await;
    b.join("r").await;
    b.publish("r", json!({"status": "here"})).await;
    let mut c = Peer::connect(&two.url()).await;
    c.join("r").await;
    assert_update(&a.next_update().await, "join", &a.id, "r");
    assert_update(&a.next_update().await, "join", &b.id, "r");
    assert_update(&a.next_update().await, "state", &b.id, "r");
    assert_update(&a.next_update().await, "join", &c.id, "r");
    let seen_one = *backend_one.resyncs().borrow();
    let seen_two = *backend_two.resyncs().borrow();

    // Redis dies. Local connections stay open and answer; what needs
    // Redis gets a clear error, not a hang or a closed socket.
    redis_server.stop();
    a.sync().await;
    b.sync().await;
    let reply = a.join("elsewhere").await;
    assert_eq!(error_code(&reply).as_deref(), Some("ESERVER"), "{reply}");
    // `c` leaves while Redis is away; its instance must tell the others
    // once Redis is back.
    let c_id = c.id.clone();
    drop(c);
    let gone = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
    assert_eq!(gone.as_deref(), Some(c_id.as_str()));

    // Redis comes back empty; both instances write their presence again.
    redis_server.restart();
    resynced(&backend_one, seen_one).await;
    resynced(&backend_two, seen_two).await;

    let ids = [a.id.clone(), b.id.clone()];
    let snap = present_exactly(&mut a, "r", ids).await;
    assert_eq!(snap["states"], json!({ b.id.clone(): {"status": "here"} }));
    let metadata = a.metadata_of(&b.id).await;
    assert_eq!(metadata, json!({"name": "Bo"}));

    // The leave made during the outage reaches the other instance, and
    // live updates flow again; nothing else (no ghost leave or join).
    assert_update(&a.next_update().await, "leave", &c_id, "r");
    flows_again(&mut a, &mut b).await;
    one.shutdown().await;
    two.shutdown().await;
}

/// The pid of the redis-server behind `url`.
async fn redis_pid(url: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("redis reports its pid")
        .trim()
        .to_string()
}

/// Sends a signal (`STOP`, `CONT`) to a process.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid)
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn redis_pause_sweeps_only_the_dead() {
    let redis_server = RedisServer::start();
    let url = redis_server.url();
    let prefix = test_redis::unique_prefix();
    // Fast liveness, so that the pause below is long enough to make every
    // heartbeat look dead.
    let config = RedisConfig {
        heartbeat_interval: Duration::from_millis(250),
        dead_after: Duration::from_millis(2500),
        ..RedisConfig::new(url.as_str()).prefix(prefix.as_str())
    };
    // The peers do not answer pings while the test waits out the pause.
    let patient = |backend: RedisBackend| {
        builder_on(Arc::new(backend))
            .max_missed_pongs(100)
            .track_presence(".*", TrackOptions::default())
            .bind()
    };
    let one = patient(RedisBackend::with_config(config.clone()).await.unwrap())
        .await
        .unwrap();
    let two = patient(RedisBackend::with_config(config).await.unwrap())
        .await
        .unwrap();
    let (mut doomed, doomed_url) = spawn_on_redis(&url, &prefix).await;

    let mut watcher = Peer::connect(&one.url()).await;
    watcher.subscribe("r").await;
    let mut a = Peer::connect(&one.url()).await;
    let mut b = Peer::connect(&two.url()).await;
    let mut d = Peer::connect(&doomed_url).await;
    for peer in [&mut a, &mut b, &mut d] {
        peer.join("r").await;
        let id = peer.id.clone();
        assert_update(&watcher.next_update().await, "join", &id, "r");
    }

    // Redis stops answering for longer than `dead_after`, and meanwhile
    // one instance really dies.
    let pid = redis_pid(&url).await;
    signal(&pid, "STOP");
    doomed.kill().expect("kill -9 the instance");
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(&pid, "CONT");

    // The dead instance's user leaves; nobody else does.
    assert_update(&watcher.next_update().await, "leave", &d.id, "r");
    for peer in [&mut a, &mut b] {
        peer.publish("r", json!({"after": "pause"})).await;
        let id = peer.id.clone();
        assert_update(&watcher.next_update().await, "state", &id, "r");
    }
    watcher.sync().await;
    assert_eq!(watcher.pending_updates(), 0, "no leave/join churn");
    present_exactly(&mut watcher, "r", [a.id.clone(), b.id.clone()]).await;
    one.shutdown().await;
    two.shutdown().await;
}

/// `mesh_backend_messages_received_total` of a server.
async fn received(server: &RunningServer) -> u64 {
    metric(
        &scrape(server.local_addr()).await,
        "mesh_backend_messages_received_total",
    )
}

#[tokio::test]
async fn instances_receive_only_rooms_they_have_someone_in() {
    interest(false).await;
}

#[tokio::test]
async fn on_a_cluster_instances_receive_only_rooms_they_have_someone_in() {
    interest(true).await;
}

/// A backend on the tests' single Redis or Redis Cluster.
async fn backend_on(cluster: bool, prefix: &str) -> RedisBackend {
    if cluster {
        test_redis::cluster_backend(prefix).await
    } else {
        test_redis::backend(prefix).await
    }
}

async fn interest(cluster: bool) {
    let prefix = test_redis::unique_prefix();
    let one = server_on(backend_on(cluster, &prefix).await).await;
    let two = server_on(backend_on(cluster, &prefix).await).await;
    // Room a lives on instance one, room b on instance two.
    let mut a1 = Peer::connect(&one.url()).await;
    a1.subscribe("a").await;
    a1.join("a").await;
    let mut b2 = Peer::connect(&two.url()).await;
    b2.subscribe("b").await;
    b2.join("b").await;
    assert_update(&b2.next_update().await, "join", &b2.id, "b");
    let before = received(&two).await;

    // Room a is busy; instance two has nobody there.
    for n in 0..50 {
        a1.publish("a", json!({ "n": n })).await;
    }
    b2.publish("b", json!({"busy": false})).await;

    // Now someone on two looks at room a. Its snapshot is complete, and
    // the next update reaches it. Everything published in room a before
    // reached Redis before that update, so had instance two been
    // listening, it would have counted it by now.
    let mut w2 = Peer::connect(&two.url()).await;
    let snap = w2.subscribe("a").await;
    assert_eq!(snap["present"][0]["id"], a1.id.as_str());
    assert_eq!(snap["states"][&a1.id], json!({"n": 49}));
    a1.publish("a", json!({"last": true})).await;
    assert_update(&w2.next_update().await, "state", &a1.id, "a");
    assert_eq!(
        received(&two).await - before,
        1,
        "only the update after its interest began"
    );

    // Interest ends again: room a's updates stop reaching instance two.
    // (`c` is watched after `a` is dropped, and (un)subscriptions happen
    // in order, so once `c` is subscribed, `a` is not.)
    w2.request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "a"}))
        .await;
    w2.subscribe("c").await;
    let before = received(&two).await;
    for n in 0..20 {
        a1.publish("a", json!({ "again": n })).await;
    }
    a1.join("c").await;
    assert_update(&w2.next_update().await, "join", &a1.id, "c");
    assert_eq!(received(&two).await - before, 1, "only the join in c");
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test]
async fn a_killed_cluster_node_is_survived_like_an_outage() {
    let mut cluster = RedisCluster::start();
    let prefix = test_redis::unique_prefix();
    let config = RedisConfig::cluster(cluster.urls()).prefix(prefix.as_str());
    let backend_one = RedisBackend::with_config(config.clone()).await.unwrap();
    let backend_two = RedisBackend::with_config(config).await.unwrap();
    let one = server_on(backend_one.clone()).await;
    let two = server_on(backend_two.clone()).await;

    let mut a = Peer::connect(&one.url()).await;
    a.subscribe("r").await;
    a.join("r").await;
    let mut b = Peer::connect(&two.url()).await;
    b.join("r").await;
    b.publish("r", json!({"status": "here"})).await;
    assert_update(&a.next_update().await, "join", &a.id, "r");
    assert_update(&a.next_update().await, "join", &b.id, "r");
    assert_update(&a.next_update().await, "state", &b.id, "r");
    let seen_one = *backend_one.resyncs().borrow();
    let seen_two = *backend_two.resyncs().borrow();

    // A node dies (no replica takes over) and comes back empty. Local
    // connections stay open meanwhile, and both instances write their
    // presence back, as after a single Redis restarted.
    cluster.kill(0);
    a.sync().await;
    b.sync().await;
    cluster.restart(0);
    resynced(&backend_one, seen_one).await;
    resynced(&backend_two, seen_two).await;

    let ids = [a.id.clone(), b.id.clone()];
    let snap = present_exactly(&mut a, "r", ids).await;
    assert_eq!(snap["states"], json!({ b.id.clone(): {"status": "here"} }));
    // Live updates flow again, and nothing else arrived (no leave/join).
    flows_again(&mut a, &mut b).await;
    one.shutdown().await;
    two.shutdown().await;
}
