//! Identity and access over real sockets, once per backend: tokens are
//! checked before the upgrade, claims become metadata the client cannot
//! change, room claims hold on every command that names a room, and a
//! token that runs out closes its connection unless refreshed.
//!
//! The keys under `tests/keys/` were made for these tests only.

#[macro_use]
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{error_code, BackendKind, Peer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_protocol::{command, Strategy};
use mesh_server::{Auth, Claims, RunningServer, ServerBuilder, TrackOptions};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &[u8] = b"correct horse battery staple";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour, for user `sub`, plus `extra`.
fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({ "sub": sub, "exp": now() + 3600 });
    if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
        c.extend(e);
    }
    claims
}

/// An HS256 token signed with the tests' secret.
fn token(sub: &str, extra: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        &claims(sub, extra),
    )
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A server that tracks every room and needs HS256 tokens.
async fn serve(kind: BackendKind) -> RunningServer {
    with_auth(kind).await.bind().await.unwrap()
}

async fn with_auth(kind: BackendKind) -> ServerBuilder {
    kind.builder()
        .await
        .track_presence(".*", TrackOptions::default())
        .auth(Auth::hs256(SECRET).unwrap())
}

/// Connects with a token in the `Authorization` header.
async fn connect_bearer(server: &RunningServer, token: &str) -> Peer {
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    Peer::from_stream(ws).await
}

/// The HTTP status and body a refused handshake got.
async fn refusal(url: String) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("the connection was accepted"),
    }
}

async fn bad_tokens_get_401_before_the_upgrade(kind: BackendKind) {
    let server = with_auth(kind).await.bind().await.unwrap();
    let url = server.url();
    let exp = now() + 3600;
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret"),
        &claims("u1", json!({})),
    );
    let wrong_alg = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET),
        &claims("u1", json!({})),
    );
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "u1", "exp": exp}))
    );
    let expired = token("u1", json!({ "exp": now() - 60 }));
    let not_yet = token("u1", json!({ "nbf": now() + 60 }));
    let no_exp = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        &json!({"sub": "u1"}),
    );
    let exp_as_string = token("u1", json!({ "exp": format!("{exp}") }));
    let bad_claim_type = token("u1", json!({ "rooms": "everything" }));
    let cases = [
        ("forged signature", format!("{url}/?token={forged}")),
        ("other algorithm", format!("{url}/?token={wrong_alg}")),
        ("alg none", format!("{url}/?token={alg_none}")),
        ("expired", format!("{url}/?token={expired}")),
        ("not yet valid", format!("{url}/?token={not_yet}")),
        ("no exp", format!("{url}/?token={no_exp}")),
        ("exp as a string", format!("{url}/?token={exp_as_string}")),
        (
            "claim of the wrong type",
            format!("{url}/?token={bad_claim_type}"),
        ),
        ("garbage", format!("{url}/?token=not.a.token")),
        ("missing token", url.clone()),
    ];
    for (case, url) in cases {
        let (status, body) = refusal(url).await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(body, "unauthorized\n", "{case}: nothing else is disclosed");
    }
    // Nothing was left behind by the refused handshakes.
    assert_eq!(server.handle().connection_count(), 0);

    // A good token works in the query and in the header.
    let good = token("u1", json!({"name": "Ada"}));
    let mut a = Peer::connect(&format!("{url}/?token={good}")).await;
    assert_eq!(
        a.my_metadata().await,
        json!({"userId": "u1", "username": "Ada"})
    );
    let mut b = connect_bearer(&server, &good).await;
    assert_eq!(b.my_metadata().await["userId"], "u1");
    server.shutdown().await;

    // Audience and issuer, when configured.
    let server = kind
        .serve_with(|b| b.auth(Auth::hs256(SECRET).unwrap().audience("mesh").issuer("us")))
        .await;
    let url = server.url();
    for (case, extra, status) in [
        ("wrong audience", json!({"aud": "other", "iss": "us"}), 401),
        ("no audience", json!({"iss": "us"}), 401),
        ("wrong issuer", json!({"aud": "mesh", "iss": "them"}), 401),
        ("both right", json!({"aud": "mesh", "iss": "us"}), 101),
    ] {
        let t = token("u1", extra);
        let got = match tokio_tungstenite::connect_async(format!("{url}/?token={t}")).await {
            Ok(_) => 101,
            Err(_) => refusal(format!("{url}/?token={t}")).await.0,
        };
        assert_eq!(got, status, "{case}");
    }
    server.shutdown().await;
}

async fn public_key_algorithms(kind: BackendKind) {
    let keys = [
        (
            "rsa",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key_file("rsa-private.pem")).unwrap(),
        ),
        (
            "ec",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key_file("ec-private.pem")).unwrap(),
        ),
        (
            "ed",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&key_file("ed-private.pem")).unwrap(),
        ),
    ];
    for (name, alg, private) in keys {
        let public = key_file(&format!("{name}-public.pem"));
        let auth = Auth::public_key_pem(&public).unwrap();
        assert_eq!(auth.algorithm(), format!("{alg:?}"));
        let server = kind.builder().await.auth(auth).bind().await.unwrap();
        let url = server.url();
        let good = sign(alg, &private, &claims(name, json!({})));
        let mut peer = Peer::connect(&format!("{url}/?token={good}")).await;
        assert_eq!(peer.my_metadata().await["userId"], name);
        // The classic confusion: HS256 "signed" with the public key.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public),
            &claims(name, json!({})),
        );
        assert_eq!(
            refusal(format!("{url}/?token={confused}")).await.0,
            401,
            "{name}"
        );
        server.shutdown().await;
    }
    // Keys that would fail every token are refused at start.
    assert!(Auth::public_key_pem(&key_file("p384-public.pem")).is_err());
    assert!(Auth::public_key_pem(b"not a key").is_err());
    assert!(Auth::hs256(b"").is_err());
}

async fn identity_fields_are_the_servers(kind: BackendKind) {
    let server = serve(kind).await;
    let t = token(
        "u1",
        json!({"name": "Ada", "role": "admin", "meta": {"team": "core"}}),
    );
    let mut a = Peer::connect(&format!("{}/?token={t}", server.url())).await;
    let attested = json!({"userId": "u1", "username": "Ada", "role": "admin", "team": "core"});
    assert_eq!(a.my_metadata().await, attested);
    let set = |metadata: Value, strategy: &str| json!({"metadata": metadata, "options": {"strategy": strategy}});
    for (metadata, strategy) in [
        (json!({"userId": "u2"}), "merge"),
        (json!({"username": "Mallory"}), "deepMerge"),
        (json!({"userId": "u2", "status": "hi"}), "replace"),
        (json!({"avatar": "https://evil/"}), "merge"),
        (json!("just a string"), "replace"),
    ] {
        let reply = a
            .request(
                command::SET_MY_CONNECTION_METADATA,
                set(metadata.clone(), strategy),
            )
            .await;
        assert_eq!(
            error_code(&reply).as_deref(),
            Some("EFORBIDDEN"),
            "{metadata} ({strategy})"
        );
        assert_eq!(a.my_metadata().await, attested, "nothing changed");
    }
    // Other fields are the client's; identity survives even a replace.
    let reply = a
        .request(
            command::SET_MY_CONNECTION_METADATA,
            set(json!({"status": "busy", "userId": "u1"}), "replace"),
        )
        .await;
    assert_eq!(reply, json!({"success": true}));
    assert_eq!(
        a.my_metadata().await,
        json!({"userId": "u1", "username": "Ada", "role": "admin", "status": "busy"})
    );
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        set(json!({"mood": "calm"}), "merge"),
    )
    .await;
    assert_eq!(a.my_metadata().await["mood"], "calm");

    // The query cannot smuggle identity in either.
    server.shutdown().await;
    let server = with_auth(kind)
        .await
        .metadata_from_query(true)
        .bind()
        .await
        .unwrap();
    let t = token("u1", json!({}));
    let mut b = Peer::connect(&format!(
        "{}/?token={t}&userId=u9&role=admin&theme=dark",
        server.url()
    ))
    .await;
    assert_eq!(
        b.my_metadata().await,
        json!({"userId": "u1", "theme": "dark"})
    );
    server.shutdown().await;
}

async fn room_claims_hold_on_every_room_command(kind: BackendKind) {
    let server = serve(kind).await;
    server
        .handle()
        .set_room_metadata("secret", json!({"topic": "x"}), Strategy::Replace)
        .await
        .unwrap();
    let t = token(
        "u1",
        json!({"rooms": ["team", "doc:*"], "watch": ["lobby"]}),
    );
    let mut a = Peer::connect(&format!("{}/?token={t}", server.url())).await;
    let mut insider = Peer::connect(&format!(
        "{}/?token={}",
        server.url(),
        token("u2", json!({}))
    ))
    .await;
    insider.join("secret").await;
    insider.join("lobby").await;

    let room = |name: &str| json!({ "roomName": name });
    let forbidden = |reply: &Value| error_code(reply).as_deref() == Some("EFORBIDDEN");
    // Outside both claims: every command that names the room is refused.
    for (cmd, payload) in [
        (command::JOIN_ROOM, room("secret")),
        (command::SUBSCRIBE_PRESENCE, room("secret")),
        (command::GET_PRESENCE_STATE, room("secret")),
        (command::GET_ROOM_METADATA, room("secret")),
        (
            command::PUBLISH_PRESENCE_STATE,
            json!({"roomName": "secret", "state": {"x": 1}}),
        ),
    ] {
        let reply = a.request(cmd, payload).await;
        assert!(forbidden(&reply), "{cmd}: {reply}");
    }
    assert!(server
        .handle()
        .room_members("secret")
        .await
        .unwrap()
        .iter()
        .all(|id| *id != a.id));
    // Nor does sharing nothing reveal the insider's metadata.
    let reply = a
        .request(
            command::GET_CONNECTION_METADATA,
            json!({"connectionId": insider.id}),
        )
        .await;
    assert_eq!(reply, json!({"metadata": null}));

    // A watched room: read, never join or publish.
    assert!(forbidden(&a.join("lobby").await));
    assert!(forbidden(&a.publish("lobby", json!({"x": 1})).await));
    let reply = a.subscribe("lobby").await;
    assert_eq!(reply["success"], true);
    assert_eq!(reply["present"][0]["metadata"]["userId"], "u2");
    let reply = a.request(command::GET_PRESENCE_STATE, room("lobby")).await;
    assert_eq!(reply["success"], true);

    // Rooms and globs: everything works.
    for name in ["team", "doc:1", "doc:"] {
        assert_eq!(a.join(name).await["success"], true, "{name}");
        assert_eq!(
            a.publish(name, json!({"x": 1})).await,
            json!(true),
            "{name}"
        );
    }
    assert!(forbidden(&a.join("document").await));
    server.shutdown().await;
}

async fn one_visibility_rule(kind: BackendKind) {
    let server = serve(kind).await;
    let url = server.url();
    let mut member = Peer::connect(&format!(
        "{url}/?token={}",
        token("u1", json!({"name": "Ada"}))
    ))
    .await;
    let mut watcher = Peer::connect(&format!(
        "{url}/?token={}",
        token("u2", json!({"rooms": [], "watch": ["team"]}))
    ))
    .await;
    member.join("team").await;
    let ask = json!({"connectionId": member.id});

    // Subscribed (never joined): the snapshot and the lookup agree.
    let reply = watcher.subscribe("team").await;
    assert_eq!(reply["present"][0]["metadata"]["username"], "Ada");
    let reply = watcher
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply["metadata"]["username"], "Ada");
    // Unsubscribed: neither any more.
    watcher
        .request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "team"}))
        .await;
    let reply = watcher
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    server.shutdown().await;
}

async fn state_user_id_must_be_the_sub(kind: BackendKind) {
    let server = serve(kind).await;
    let url = server.url();
    let mut victim = Peer::connect(&format!("{url}/?token={}", token("alice", json!({})))).await;
    let mut impostor =
        Peer::connect(&format!("{url}/?token={}", token("mallory", json!({})))).await;
    victim.join("r").await;
    victim.subscribe("r").await;
    impostor.join("r").await;
    let reply = impostor
        .publish("r", json!({"userId": "alice", "status": "hacked"}))
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("EFORBIDDEN"));
    let reply = impostor
        .publish("r", json!({"userId": 7, "status": "hacked"}))
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("EFORBIDDEN"));
    // Its own id, or none, is fine.
    assert_eq!(
        impostor.publish("r", json!({"userId": "mallory"})).await,
        json!(true)
    );
    assert_eq!(
        impostor.publish("r", json!({"status": "hi"})).await,
        json!(true)
    );
    let snap = victim
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["states"][&impostor.id], json!({"status": "hi"}));
    assert!(snap["states"].get(&victim.id).is_none());
    server.shutdown().await;
}

async fn expiry_closes_unless_refreshed(kind: BackendKind) {
    let server = serve(kind).await;
    let url = server.url();
    // Both tokens run out in a second or two; only one is refreshed.
    let short = json!({"exp": now() + 2, "name": "Ada"});
    let mut lapsing = Peer::connect(&format!("{url}/?token={}", token("u1", short.clone()))).await;
    let mut refreshed = Peer::connect(&format!("{url}/?token={}", token("u1", short))).await;
    refreshed.join("r").await;
    lapsing.join("r").await;

    let refresh = |t: String| json!({ "token": t });
    let reply = refreshed
        .request(command::REFRESH_TOKEN, refresh(token("u2", json!({}))))
        .await;
    assert_eq!(
        error_code(&reply).as_deref(),
        Some("EFORBIDDEN"),
        "another user"
    );
    let reply = refreshed
        .request(command::REFRESH_TOKEN, refresh("junk".into()))
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("EFORBIDDEN"));
    let later = now() + 3600;
    let reply = refreshed
        .request(
            command::REFRESH_TOKEN,
            refresh(token("u1", json!({"exp": later, "name": "Ada L."}))),
        )
        .await;
    assert_eq!(reply, json!({"success": true, "expiresAt": later * 1000}));
    assert_eq!(refreshed.my_metadata().await["username"], "Ada L.");

    let frame = lapsing.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "token expired");
    // The refreshed one outlived the same original expiry.
    refreshed.sync().await;
    let members = server.handle().room_members("r").await.unwrap();
    assert_eq!(members, vec![refreshed.id.clone()], "the lapsed one left");

    // A narrower token takes effect at once.
    let reply = refreshed
        .request(
            command::REFRESH_TOKEN,
            refresh(token("u1", json!({"rooms": ["other"]}))),
        )
        .await;
    assert_eq!(reply["success"], true);
    assert!(server.handle().room_members("r").await.unwrap().is_empty());
    server.shutdown().await;

    // Without authentication there is nothing to refresh.
    let open = kind.serve_every_room().await;
    let mut peer = Peer::connect(&open.url()).await;
    let reply = peer
        .request(command::REFRESH_TOKEN, refresh(token("u1", json!({}))))
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));
    open.shutdown().await;
}

async fn claims_reach_the_connection_hook(kind: BackendKind) {
    let seen: Arc<Mutex<Option<Claims>>> = Arc::default();
    let hook_seen = seen.clone();
    let server = with_auth(kind)
        .await
        .on_connection(move |conn| {
            let seen = hook_seen.clone();
            async move {
                let claims = conn.claims.clone().expect("verified claims");
                // The attested identity is already in place; add to it.
                let mine = conn.server.get_metadata(&conn.id).await.unwrap().unwrap();
                assert_eq!(mine["userId"], claims.sub.as_str());
                conn.server
                    .set_metadata(&conn.id, json!({"plan": "pro"}), Strategy::Merge)
                    .await
                    .unwrap();
                *seen.lock().unwrap() = Some((*claims).clone());
                Ok(())
            }
        })
        .bind()
        .await
        .unwrap();
    let t = token("u1", json!({"name": "Ada", "rooms": ["team"]}));
    let mut a = Peer::connect(&format!("{}/?token={t}", server.url())).await;
    assert_eq!(
        a.my_metadata().await,
        json!({"userId": "u1", "username": "Ada", "plan": "pro"})
    );
    let claims = seen.lock().unwrap().clone().unwrap();
    assert_eq!(claims.rooms, Some(vec!["team".to_string()]));
    server.shutdown().await;
}

suite!(
    bad_tokens_get_401_before_the_upgrade,
    public_key_algorithms,
    identity_fields_are_the_servers,
    room_claims_hold_on_every_room_command,
    one_visibility_rule,
    state_user_id_must_be_the_sub,
    expiry_closes_unless_refreshed,
    claims_reach_the_connection_hook,
);
