//! `Presence::diffs` against our own server: the full list first, then only
//! who came, changed or left; a full list again after a reconnect or when a
//! subscriber falls behind. The `users()` list, patched per emission rather
//! than rebuilt, is current for whoever takes it whenever. And property
//! tests of the engine: the diffs applied in order always rebuild its list,
//! and so do its changes, field for field.

mod support;

use mesh_client::presence::{
    GroupKey, KeySource, MemoryStore, PresenceEngine, PresenceOptions, User, UserDiffs, UsersDiff,
    DIFF_BUFFER,
};
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::proxy::CutProxy;
use support::room::*;
use support::within;

/// The subscriber's copy of the list, as diffs build it.
type Copy = BTreeMap<Arc<str>, User>;

/// Applies diffs to `copy` until `pred` holds; returns the diffs applied.
async fn diffs_until(
    diffs: &mut UserDiffs,
    copy: &mut Copy,
    what: &str,
    pred: impl Fn(&Copy) -> bool,
) -> Vec<UsersDiff> {
    within(what, async {
        let mut seen = Vec::new();
        while !pred(copy) {
            let diff = diffs.recv().await.expect("presence stopped");
            diff.clone().apply_to(copy);
            seen.push(diff);
        }
        seen
    })
    .await
}

/// The ids a diff names, upserted or removed.
fn named(diff: &UsersDiff) -> Vec<String> {
    match diff {
        UsersDiff::Full(users) => users.iter().map(|u| u.id.to_string()).collect(),
        UsersDiff::Changed { upserted, removed } => upserted
            .iter()
            .map(|u| &u.id)
            .chain(removed)
            .map(|id| id.to_string())
            .collect(),
    }
}

fn status(copy: &Copy, id: &str) -> Option<serde_json::Value> {
    let state = copy.get(id)?.state.as_deref()?;
    Some(state["status"].clone())
}

fn tabs(copy: &Copy, id: &str) -> Option<usize> {
    copy.get(id).map(|u| u.tab_count)
}

/// The list as a subscriber's copy holds it.
fn list(copy: &Copy) -> Vec<User> {
    copy.values().cloned().collect()
}

#[tokio::test]
async fn diffs_bring_joins_state_changes_tabs_and_leaves_and_nothing_else() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_bob_client, bob) = tab(&server, "bob", key.clone()).await;
    bob.publish(json!({"status": "here"})).await.unwrap();
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let mut copy = Copy::new();
    let mut diffs = watcher.diffs();

    // The whole list first.
    let first = within("the first diff", diffs.recv()).await.unwrap();
    let UsersDiff::Full(users) = &first else {
        panic!("the first diff is the full list: {first:?}");
    };
    assert!(users.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");
    first.apply_to(&mut copy);
    diffs_until(&mut diffs, &mut copy, "bob and the watcher", |c| {
        status(c, "bob") == Some(json!("here")) && tabs(c, "watcher") == Some(1)
    })
    .await;

    // Alice comes, with one tab, then another; she sets a status; one tab
    // goes, then the other. Every diff names her, and only her.
    let mut seen = Vec::new();
    let (alice1, alice1_presence) = tab(&server, "alice", key.clone()).await;
    seen.extend(
        diffs_until(&mut diffs, &mut copy, "alice joins", |c| {
            tabs(c, "alice") == Some(1)
        })
        .await,
    );
    let (alice2, _alice2_presence) = tab(&server, "alice", key.clone()).await;
    seen.extend(
        diffs_until(&mut diffs, &mut copy, "alice's second tab", |c| {
            tabs(c, "alice") == Some(2)
        })
        .await,
    );
    alice1_presence
        .publish(json!({"status": "busy"}))
        .await
        .unwrap();
    seen.extend(
        diffs_until(&mut diffs, &mut copy, "alice's status", |c| {
            status(c, "alice") == Some(json!("busy"))
        })
        .await,
    );
    alice1.close().await;
    seen.extend(
        diffs_until(&mut diffs, &mut copy, "alice closes a tab", |c| {
            tabs(c, "alice") == Some(1)
        })
        .await,
    );
    assert_eq!(
        status(&copy, "alice"),
        Some(json!("busy")),
        "her state stays"
    );
    alice2.close().await;
    seen.extend(
        diffs_until(&mut diffs, &mut copy, "alice leaves", |c| {
            !c.contains_key("alice")
        })
        .await,
    );

    for diff in &seen {
        assert!(
            matches!(diff, UsersDiff::Changed { .. }),
            "no full list without a reason: {diff:?}"
        );
        assert_eq!(named(diff), ["alice"], "only who changed: {diff:?}");
    }
    let last = seen.last().unwrap();
    assert!(
        matches!(last, UsersDiff::Changed { upserted, removed } if upserted.is_empty() && &*removed[0] == "alice"),
        "{last:?}"
    );
    // The copy is the list, field for field.
    assert_eq!(list(&copy), *watcher.users().borrow());
}

#[tokio::test]
async fn a_reconnect_brings_the_full_list_again() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_a, alice) = tab(&server, "alice", key.clone()).await;
    alice.publish(json!({"status": "before"})).await.unwrap();
    let (bob_client, _bob) = tab(&server, "bob", key.clone()).await;
    let proxy = CutProxy::start(server.local_addr()).await;
    let store = Arc::new(MemoryStore::new());
    // A short grace, so that bob's row (kept while he might be reconnecting
    // too) goes soon.
    let short_grace = PresenceOptions {
        reconnect_grace: Duration::from_millis(500),
        ..options()
    };
    let (_w, watcher) = tab_at(&proxy.url, "watcher", key.clone(), store, short_grace).await;
    let mut diffs = watcher.diffs();
    let mut copy = Copy::new();
    diffs_until(&mut diffs, &mut copy, "the first list", |c| {
        status(c, "alice") == Some(json!("before")) && c.contains_key("bob")
    })
    .await;

    // While the watcher is away, alice changes, bob goes and carol comes.
    proxy.cut();
    alice.publish(json!({"status": "after"})).await.unwrap();
    bob_client.close().await;
    let (_c, _carol) = tab(&server, "carol", key.clone()).await;
    proxy.restore();

    let seen = diffs_until(&mut diffs, &mut copy, "the list after the reconnect", |c| {
        status(c, "alice") == Some(json!("after")) && c.contains_key("carol")
    })
    .await;
    let full = seen
        .iter()
        .find_map(|d| match d {
            UsersDiff::Full(users) => Some(users),
            UsersDiff::Changed { .. } => None,
        })
        .expect("a full list after the resync");
    // It has what the snapshot says of the people it knows (alice's new
    // status); newcomers follow once their keys are looked up.
    let alice = full.iter().find(|u| &*u.id == "alice").expect("alice");
    assert_eq!(
        alice.state.as_deref().map(|s| &s["status"]),
        Some(&json!("after"))
    );
    // Bob is kept a while (he may be reconnecting too), with no tabs; then
    // he is removed like anyone who leaves.
    diffs_until(
        &mut diffs,
        &mut copy,
        "the watcher back with one tab",
        |c| tabs(c, "watcher") == Some(1),
    )
    .await;
    let mut users = watcher.users();
    let now = wait_users(&mut users, "the list settles", |u| {
        u.iter().all(|u| &*u.id != "bob")
    })
    .await;
    diffs_until(&mut diffs, &mut copy, "bob removed", |c| {
        !c.contains_key("bob")
    })
    .await;
    // The copy and the list agree, field for field, once both have it all.
    diffs_until(&mut diffs, &mut copy, "the copy is the list", |c| {
        list(c) == *users.borrow()
    })
    .await;
    assert!(now.iter().all(|u| &*u.id != "bob"));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_the_full_list_and_memory_stays_bounded() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let fast = PresenceOptions {
        emit_interval: Duration::from_millis(1),
        ..options()
    };
    let store = Arc::new(MemoryStore::new());
    let (_w, watcher) = tab_with(&server, "watcher", key.clone(), store, fast).await;
    let (_a, alice) = tab(&server, "alice", key.clone()).await;
    // A subscriber that reads nothing while alice changes her status far
    // more often than its buffer holds.
    let mut diffs = watcher.diffs();
    let rounds = DIFF_BUFFER * 3;
    let mut users = watcher.users();
    for round in 0..rounds {
        alice.publish(json!({"status": round})).await.unwrap();
        // One emission per change: wait for it.
        wait_users(&mut users, "the change", |u| {
            u.iter()
                .any(|u| u.state.as_deref().is_some_and(|s| s["status"] == round))
        })
        .await;
    }

    // What waits for it is at most its buffer, then (as soon as it has room)
    // one full list, which brings it up to date.
    let mut copy = Copy::new();
    let mut received = 0;
    let mut fulls = 0;
    within("the subscriber catches up", async {
        while status(&copy, "alice") != Some(json!(rounds - 1)) {
            let diff = diffs.recv().await.unwrap();
            received += 1;
            fulls += usize::from(matches!(diff, UsersDiff::Full(_)));
            diff.apply_to(&mut copy);
        }
    })
    .await;
    assert!(received <= DIFF_BUFFER + 1, "{received} diffs waited");
    assert_eq!(fulls, 2, "the first list, and one to catch up");
    assert_eq!(list(&copy), *users.borrow());
}

#[tokio::test]
async fn the_user_list_is_current_for_whoever_takes_it_whenever() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let mut diffs = watcher.diffs();
    let mut copy = Copy::new();
    diffs_until(&mut diffs, &mut copy, "the watcher", |c| {
        tabs(c, "watcher") == Some(1)
    })
    .await;

    // Emissions while nobody holds the list: people come, change, go.
    let (_a, alice) = tab(&server, "alice", key.clone()).await;
    let (bob_client, _bob) = tab(&server, "bob", key.clone()).await;
    for round in 0..5 {
        alice.publish(json!({"status": round})).await.unwrap();
        diffs_until(&mut diffs, &mut copy, "alice's status", |c| {
            status(c, "alice") == Some(json!(round))
        })
        .await;
    }
    bob_client.close().await;
    diffs_until(&mut diffs, &mut copy, "bob leaves", |c| {
        !c.contains_key("bob")
    })
    .await;

    // A receiver taken now borrows the list as it is, field for field.
    let mut users = watcher.users();
    assert_eq!(*users.borrow_and_update(), list(&copy));
    assert_eq!(
        rows(&users.borrow())
            .into_iter()
            .map(|(id, tabs, _)| (id, tabs))
            .collect::<Vec<_>>(),
        [("alice".to_string(), 1), ("watcher".to_string(), 1)]
    );

    // It wakes on the next emission, with it.
    alice.publish(json!({"status": "held"})).await.unwrap();
    within("the held receiver wakes", users.changed())
        .await
        .unwrap();
    diffs_until(&mut diffs, &mut copy, "the held status", |c| {
        status(c, "alice") == Some(json!("held"))
    })
    .await;
    assert_eq!(*users.borrow(), list(&copy));

    // Let go again: a newcomer and a change, then a fresh receiver.
    drop(users);
    let (_c, _carol) = tab(&server, "carol", key.clone()).await;
    alice.publish(json!({"status": "last"})).await.unwrap();
    diffs_until(&mut diffs, &mut copy, "carol and the last status", |c| {
        c.contains_key("carol") && status(c, "alice") == Some(json!("last"))
    })
    .await;
    assert_eq!(*watcher.users().borrow(), list(&copy));
}

/// One input to the engine, over a handful of connections and users (so
/// that tabs of one user, moves and leaves happen often).
#[derive(Debug, Clone)]
enum Op {
    Join(u8),
    Leave(u8),
    /// Connection, user, status, time.
    State(u8, u8, u8, u64),
    Clear(u8),
    /// Our own connection left in a reconnect: kept until the time.
    LeaveKeeping(u8, u64),
    Expire(u64),
    /// A snapshot of these connections (each with the user it holds),
    /// kept over until the time: the driver then sends the full list.
    Resync(Vec<(u8, u8)>, u64),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0u8..6;
    let user = 0u8..3;
    prop_oneof![
        conn.clone().prop_map(Op::Join),
        conn.clone().prop_map(Op::Leave),
        (conn.clone(), user.clone(), 0u8..3, 0u64..20)
            .prop_map(|(c, u, s, t)| Op::State(c, u, s, t)),
        conn.clone().prop_map(Op::Clear),
        (conn.clone(), 0u64..20).prop_map(|(c, t)| Op::LeaveKeeping(c, t)),
        (0u64..20).prop_map(Op::Expire),
        (proptest::collection::vec((conn, user), 0..5), 0u64..20)
            .prop_map(|(m, t)| Op::Resync(m, t)),
        Just(Op::Flush),
        Just(Op::Flush),
    ]
}

/// The list as diffs carry it: every field a row can show. (`representative`,
/// the connection that sent the state, is bookkeeping for tab sync.)
fn shown(users: Vec<User>) -> Vec<User> {
    users
        .into_iter()
        .map(|u| User {
            representative: None,
            ..u
        })
        .collect()
}

/// Feeds one input other than a flush to `engine`; `true` for a resync,
/// after which the driver sends the full list.
fn feed(engine: &mut PresenceEngine, op: Op) -> bool {
    let state = |user: u8, status: u8, at: u64| json!({"userId": format!("u{user}"), "status": status, "changedAt": at});
    match op {
        Op::Join(c) => engine.join(&format!("c{c}"), 0),
        Op::Leave(c) => engine.leave(&format!("c{c}")),
        Op::State(c, u, s, t) => engine.set_state(&format!("c{c}"), Some(state(u, s, t)), t),
        Op::Clear(c) => engine.set_state(&format!("c{c}"), None, 0),
        Op::LeaveKeeping(c, t) => engine.leave_keeping(&format!("c{c}"), t),
        Op::Expire(t) => engine.expire(t),
        Op::Resync(members, t) => {
            let present: Vec<String> = members.iter().map(|(c, _)| format!("c{c}")).collect();
            let mut states = serde_json::Map::new();
            for (c, u) in &members {
                states.insert(format!("c{c}"), state(*u, 0, 0));
            }
            engine.resync(present, states, t);
            return true;
        }
        Op::Flush => {}
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn applied_diffs_rebuild_the_list(ops in proptest::collection::vec(op(), 1..60)) {
        let mut engine = PresenceEngine::new(KeySource::state_field("userId"));
        let mut copy = Copy::new();
        let mut full = false;
        for op in ops.into_iter().chain([Op::Flush]) {
            match op {
                Op::Flush => {
                    let events = engine.take_events();
                    let diff = if std::mem::take(&mut full) {
                        Some(UsersDiff::Full(engine.users()))
                    } else {
                        UsersDiff::from_events(&engine, &events)
                    };
                    if let Some(diff) = diff {
                        diff.apply_to(&mut copy);
                    }
                    prop_assert_eq!(shown(list(&copy)), shown(engine.users()));
                }
                op => full |= feed(&mut engine, op),
            }
        }
    }

    /// What `Presence::users` does per emission: the list patched with the
    /// engine's changes is its list, `representative` included.
    #[test]
    fn the_patched_list_is_the_list(ops in proptest::collection::vec(op(), 1..60)) {
        let mut engine = PresenceEngine::new(KeySource::state_field("userId"));
        let mut patched = Vec::new();
        for op in ops.into_iter().chain([Op::Flush]) {
            match op {
                Op::Flush => {
                    engine.take_changes().apply_to_list(&mut patched);
                    prop_assert_eq!(&patched, &engine.users());
                }
                op => {
                    feed(&mut engine, op);
                }
            }
        }
    }
}
