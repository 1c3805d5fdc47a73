//! Attacks through Mesh requests: metadata that grows by merges, requests
//! that cannot be parsed, room names that spoof, and pong floods that
//! would drive the backend. Those that reach the backend run on both.

use crate::common::{error_code, BackendKind, Peer};
use crate::{attack_time, with_bystander, ServerProcess};
use async_trait::async_trait;
use mesh_protocol::{command, PresenceUpdate, Strategy};
use mesh_server::backend::BackendResult;
use mesh_server::{Backend, TrackOptions, UpdateSink};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn metadata_merges_stay_within_the_limit(kind: BackendKind) {
    let server = ServerProcess::start(kind, &[]);
    let mut attacker = Peer::connect(&server.url).await;
    let chunk = "m".repeat(15 * 1024);
    let merge = |n: usize, strategy: &str| {
        json!({
            "metadata": { format!("k{n}"): chunk },
            "options": { "strategy": strategy },
        })
    };
    let first = attacker
        .request(command::SET_MY_CONNECTION_METADATA, merge(0, "merge"))
        .await;
    assert_eq!(first["success"], true);
    let ((accepted, refused), report) = with_bystander(&server, async {
        let (mut accepted, mut refused) = (0, 0);
        let until = Instant::now() + attack_time();
        let mut n = 1;
        while Instant::now() < until {
            let strategy = if n % 2 == 0 { "merge" } else { "deepMerge" };
            let reply = attacker
                .request(command::SET_MY_CONNECTION_METADATA, merge(n, strategy))
                .await;
            match error_code(&reply).as_deref() {
                Some("ETOOLARGE") => refused += 1,
                None => accepted += 1,
                other => panic!("unexpected reply {other:?}: {reply}"),
            }
            n += 1;
        }
        (accepted, refused)
    })
    .await;
    report.check("metadata merge growth", kind);
    assert_eq!(accepted, 0, "no merge may take the result past 16 KiB");
    assert!(refused > 10, "the attack was under way ({refused} merges)");
    // The refused writes left the stored value as it was.
    let mine = attacker
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(mine["metadata"], json!({ "k0": chunk }));
    // A write that fits is still taken.
    let small = attacker
        .request(
            command::SET_MY_CONNECTION_METADATA,
            json!({"metadata": {"k0": "small"}, "options": {"strategy": "merge"}}),
        )
        .await;
    assert_eq!(small["success"], true);
}

async fn unparsable_requests_are_answered(kind: BackendKind) {
    let server = ServerProcess::start(kind, &[]);
    let mut attacker = Peer::connect(&server.url).await;
    let deep = format!(
        r#"{{"id":6,"command":"mesh/noop","payload":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let cases: Vec<(u64, String, &str)> = vec![
        (
            1,
            r#"{"id":1,"command":"mesh/noop","payload":1e999}"#.into(),
            "out of range",
        ),
        (
            2,
            r#"{"id":2,"command":"mesh/noop","payload":"\ud800"}"#.into(),
            "escape",
        ),
        (
            3,
            r#"{"id":3,"command":"mesh/noop","payload":{}} trailing"#.into(),
            "trailing",
        ),
        (
            4,
            r#"{"id":4,"command":"mesh/noop","payload":{"a":1,"a":2}}"#.into(),
            "duplicate key",
        ),
        (
            5,
            r#"{"id":5,"command":"mesh/noop","payload":[1,2"#.into(),
            "EOF",
        ),
        (6, deep, "nesting deeper than 64"),
    ];
    let (_, report) = with_bystander(&server, async {
        for (id, text, why) in &cases {
            attacker.send_text(text.clone()).await;
            let reply = attacker.reply_to(*id, "mesh/noop").await;
            assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"), "{text}");
            let message = reply["error"].as_str().unwrap_or_default();
            assert!(message.contains(why), "{text}: {message}");
        }
    })
    .await;
    report.check("unparsable requests", kind);
    attacker.sync().await;
}

async fn room_names_cannot_spoof(kind: BackendKind) {
    let server = ServerProcess::start(kind, &[]);
    let mut attacker = Peer::connect(&server.url).await;
    for name in [
        "general\u{202E}nimda",
        "a\u{2066}b",
        "\u{202A}x",
        "x\u{2069}",
    ] {
        let reply = attacker.join(name).await;
        assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"), "{name:?}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains("bidirectional"), "{message}");
    }
    assert_eq!(attacker.join("général").await["success"], true);
}

/// A backend that counts presence refreshes and passes everything on.
struct CountingBackend {
    inner: Arc<dyn Backend>,
    refreshes: AtomicUsize,
}

#[async_trait]
impl Backend for CountingBackend {
    async fn attach(&self, sink: Arc<dyn UpdateSink>) -> BackendResult<()> {
        self.inner.attach(sink).await
    }
    async fn connection_opened(&self, conn: &str) -> BackendResult<()> {
        self.inner.connection_opened(conn).await
    }
    async fn publish(&self, update: PresenceUpdate) -> BackendResult<()> {
        self.inner.publish(update).await
    }
    async fn join_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        self.inner.join_room(room, conn).await
    }
    async fn leave_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        self.inner.leave_room(room, conn).await
    }
    async fn room_members(&self, room: &str) -> BackendResult<Vec<String>> {
        self.inner.room_members(room).await
    }
    async fn connection_rooms(&self, conn: &str) -> BackendResult<Vec<String>> {
        self.inner.connection_rooms(conn).await
    }
    async fn mark_present(
        &self,
        room: &str,
        conn: &str,
        ttl: Option<Duration>,
    ) -> BackendResult<bool> {
        self.inner.mark_present(room, conn, ttl).await
    }
    async fn refresh_presence(&self, room: &str, conn: &str, ttl: Duration) -> BackendResult<bool> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        self.inner.refresh_presence(room, conn, ttl).await
    }
    async fn mark_absent(&self, room: &str, conn: &str) -> BackendResult<bool> {
        self.inner.mark_absent(room, conn).await
    }
    async fn present(&self, room: &str) -> BackendResult<Vec<String>> {
        self.inner.present(room).await
    }
    async fn set_state(
        &self,
        room: &str,
        conn: &str,
        state: Value,
        expire_after: Option<Duration>,
    ) -> BackendResult<bool> {
        self.inner.set_state(room, conn, state, expire_after).await
    }
    async fn clear_state(&self, room: &str, conn: &str) -> BackendResult<bool> {
        self.inner.clear_state(room, conn).await
    }
    async fn states(&self, room: &str) -> BackendResult<Map<String, Value>> {
        self.inner.states(room).await
    }
    async fn set_metadata(
        &self,
        conn: &str,
        value: Value,
        strategy: Strategy,
        max_bytes: Option<usize>,
    ) -> BackendResult<Value> {
        self.inner
            .set_metadata(conn, value, strategy, max_bytes)
            .await
    }
    async fn get_metadata(&self, conn: &str) -> BackendResult<Option<Value>> {
        self.inner.get_metadata(conn).await
    }
    async fn get_metadata_many(&self, conns: &[String]) -> BackendResult<Vec<Option<Value>>> {
        self.inner.get_metadata_many(conns).await
    }
    async fn remove_metadata(&self, conn: &str) -> BackendResult<()> {
        self.inner.remove_metadata(conn).await
    }
    async fn set_room_metadata(
        &self,
        room: &str,
        value: Value,
        strategy: Strategy,
    ) -> BackendResult<Value> {
        self.inner.set_room_metadata(room, value, strategy).await
    }
    async fn get_room_metadata(&self, room: &str) -> BackendResult<Option<Value>> {
        self.inner.get_room_metadata(room).await
    }
}

/// Pongs flooded by a client in 16 rooms with a presence TTL: the backend
/// sees one refresh per room per half-TTL at most, whatever the pong rate.
/// The backend writes are counted in the server process, so this attack
/// runs on an embedded server.
async fn pong_flood_refreshes_ttl_once_per_half_ttl(kind: BackendKind) {
    const ROOMS: usize = 16;
    let ttl = Duration::from_secs(2);
    let counting = Arc::new(CountingBackend {
        inner: kind.backend().await,
        refreshes: AtomicUsize::new(0),
    });
    let start = |budget: u32| {
        let backend = counting.clone();
        async move {
            mesh_server::Server::builder()
                .addr("127.0.0.1:0".parse().unwrap())
                .backend(backend)
                .ping_interval(Duration::from_millis(200))
                .max_missed_pongs(50)
                .max_control_frames(budget)
                .track_presence(
                    ".*",
                    TrackOptions {
                        ttl: Some(ttl),
                        guard: None,
                    },
                )
                .bind()
                .await
                .unwrap()
        }
    };
    // With the control-frame budget out of the way: the refresh throttle.
    let server = start(u32::MAX).await;
    let mut bystander = Peer::connect(&server.url()).await;
    let mut attacker = Peer::connect(&server.url()).await;
    for n in 0..ROOMS {
        attacker.join(&format!("room-{n}")).await;
    }
    bystander.join("room-0").await;
    let before = counting.refreshes.load(Ordering::Relaxed);
    let flood_time = attack_time();
    let pong = json!({"command": "pong", "payload": {}}).to_string();
    let started = Instant::now();
    let mut pongs = 0;
    let mut times = Vec::new();
    while started.elapsed() < flood_time {
        for _ in 0..100 {
            attacker.send_text(pong.clone()).await;
        }
        pongs += 100;
        let t = Instant::now();
        bystander.sync().await;
        times.push(t.elapsed());
    }
    attacker.sync().await;
    let refreshes = counting.refreshes.load(Ordering::Relaxed) - before;
    let rounds = (started.elapsed().as_secs_f64() / (ttl.as_secs_f64() / 2.0)).ceil() as usize + 1;
    println!(
        "hostile: pong flood ({kind:?}): {pongs} pongs, {refreshes} refreshes for {ROOMS} rooms"
    );
    assert!(pongs > 1000, "the flood was under way");
    assert!(
        refreshes <= ROOMS * rounds,
        "{refreshes} refreshes for {pongs} pongs in {ROOMS} rooms"
    );
    // The server shares this test's thread with both clients, so the
    // bystander's round trips measure the test as much as the server: they
    // must all be answered, and are reported, not bounded.
    times.sort();
    let p99 = times[(times.len() * 99).div_ceil(100) - 1];
    println!("hostile: pong flood ({kind:?}): bystander p99 {p99:?} in-process");
    server.shutdown().await;

    // With the default budget, the flood itself ends the connection.
    let server = start(100).await;
    let mut attacker = Peer::connect(&server.url()).await;
    attacker.join("room-0").await;
    for _ in 0..200 {
        attacker.send_text(pong.clone()).await;
    }
    let close = attacker.closed().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "too many control frames");
    server.shutdown().await;
}

macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::BackendKind::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::BackendKind::Redis).await;
                }
            )*
        }
    };
}

both_backends!(
    metadata_merges_stay_within_the_limit,
    unparsable_requests_are_answered,
    room_names_cannot_spoof,
    pong_flood_refreshes_ttl_once_per_half_ttl,
);
