//! `Presence` against our own server, on real loopback sockets.

mod support;

use mesh_client::presence::{
    GroupKey, MemoryStore, Presence, PresenceError, PresenceOptions, StateStore, User,
};
use mesh_client::{PresenceEvent, PresenceUpdate};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::room::*;
use support::within;

#[tokio::test]
async fn two_users_with_two_tabs_each_are_two_rows() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_a1, alice1) = tab(&server, "alice", key.clone()).await;
    let (_a2, _alice2) = tab(&server, "alice", key.clone()).await;
    let (_b1, _bob1) = tab(&server, "bob", key.clone()).await;
    let (_b2, bob2) = tab(&server, "bob", key.clone()).await;

    for (who, presence) in [("alice", &alice1), ("bob", &bob2)] {
        let mut users = presence.users();
        let list = wait_users(
            &mut users,
            "2 users with 2 tabs",
            tabs_are(&[("alice", 2), ("bob", 2)]),
        )
        .await;
        assert_eq!(list[0].members.len(), 2, "seen by {who}");
    }
}

#[tokio::test]
async fn closing_tabs_counts_down_then_removes_the_user() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_watcher_client, watcher) = tab(&server, "watcher", key.clone()).await;
    let (alice1, _p1) = tab(&server, "alice", key.clone()).await;
    let (alice2, _p2) = tab(&server, "alice", key.clone()).await;
    let mut users = watcher.users();
    wait_users(
        &mut users,
        "alice with 2 tabs",
        tabs_are(&[("alice", 2), ("watcher", 1)]),
    )
    .await;

    alice1.close().await;
    wait_users(
        &mut users,
        "alice with 1 tab",
        tabs_are(&[("alice", 1), ("watcher", 1)]),
    )
    .await;

    alice2.close().await;
    wait_users(&mut users, "alice gone", tabs_are(&[("watcher", 1)])).await;
}

#[tokio::test]
async fn states_are_shown_per_user_and_grouped_by_state_key() {
    let server = start_server().await;
    let key = GroupKey::state_field("userId");
    let (_w, watcher) = tab(&server, "w", key.clone()).await;
    let (_c, carol) = tab(&server, "carol", key.clone()).await;
    let mut users = watcher.users();
    // Nobody has published a state: with state keys nobody is shown yet.
    assert!(users.borrow().is_empty());
    let (lists_tx, mut lists) = tokio::sync::mpsc::unbounded_channel();
    let _callback = watcher.on_users(move |list| {
        let _ = lists_tx.send(rows(list));
    });

    carol
        .publish(json!({"userId": "carol", "status": "writing"}))
        .await
        .unwrap();
    let list = wait_users(&mut users, "carol's row", |u| u.len() == 1).await;
    assert_eq!(
        rows(&list),
        vec![(
            "carol".to_string(),
            1,
            Some(json!({"userId": "carol", "status": "writing"}))
        )]
    );
    assert_eq!(
        bare(carol.read().unwrap()),
        Some(json!({"userId": "carol", "status": "writing"}))
    );
    // The callback got the same list.
    let from_callback = within("the callback", async {
        loop {
            let list = lists.recv().await.expect("callback task ended");
            if list == rows(&users.borrow()) {
                return list;
            }
        }
    })
    .await;
    assert_eq!(from_callback[0].0, "carol");
}

#[tokio::test]
async fn server_restart_converges_within_two_seconds_without_duplicates() {
    let first = start_server().await;
    let addr = first.local_addr();
    let key = GroupKey::metadata_field("userId");
    let mut presences = Vec::new();
    let mut clients = Vec::new();
    for (user, status) in [("alice", "busy"), ("alice", "busy"), ("bob", "away")] {
        let (client, presence) = tab(&first, user, key.clone()).await;
        presence
            .publish(json!({"status": status, "user": user}))
            .await
            .unwrap();
        clients.push(client);
        presences.push(presence);
    }
    let expected = vec![
        (
            "alice".to_string(),
            2,
            Some(json!({"status": "busy", "user": "alice"})),
        ),
        (
            "bob".to_string(),
            1,
            Some(json!({"status": "away", "user": "bob"})),
        ),
    ];
    let mut users = presences[2].users();
    wait_users(&mut users, "the first server's list", |u| {
        rows(u) == expected
    })
    .await;
    let old_ids: Vec<String> = clients.iter().filter_map(|c| c.connection_id()).collect();
    // Converged: the same rows, made of the new connections only.
    let converged = |u: &[User]| {
        rows(u) == expected
            && u.iter()
                .flat_map(|u| u.members.iter())
                .all(|m| !old_ids.iter().any(|old| **old == **m))
    };

    first.shutdown().await;
    let mut status = clients[2].status();
    within("bob notices the restart", async {
        while *status.borrow_and_update() == mesh_client::Status::Online {
            status.changed().await.unwrap();
        }
    })
    .await;
    let restarted = Instant::now();
    let _second = start_server_at(addr).await;

    wait_users(&mut users, "convergence after the restart", converged).await;
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "converged in {took:?}, more than 2 s"
    );

    // Every tab's list converges too, each with its own new connection.
    for presence in &presences {
        let mut rx = presence.users();
        wait_users(&mut rx, "every tab converges", converged).await;
    }

    // After convergence, no emission shows a duplicate or a ghost: watch the
    // lists for a while (heartbeats and late messages come and go).
    let watch_until = Instant::now() + Duration::from_millis(1500);
    let mut emissions = 0;
    while let Ok(changed) = tokio::time::timeout_at(watch_until.into(), users.changed()).await {
        changed.unwrap();
        emissions += 1;
        assert!(
            converged(&users.borrow_and_update()),
            "{:?}",
            *users.borrow()
        );
    }
    assert!(
        emissions < 100,
        "the list must settle, got {emissions} emissions"
    );
}

#[tokio::test]
async fn tabs_stay_in_step_without_echo() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let store_a = Arc::new(MemoryStore::new());
    let store_b = Arc::new(MemoryStore::new());
    let (tab_a, a) = tab_with(&server, "alice", key.clone(), store_a.clone(), options()).await;
    let (tab_b, b) = tab_with(&server, "alice", key.clone(), store_b.clone(), options()).await;
    // An observer of the raw updates sees every non-silent state.
    let observer = connect_as(&server.url(), "observer").await;
    observer.join_room(ROOM).await.unwrap();
    let (_, mut raw) = observer.subscribe_presence(ROOM).await.unwrap();
    let mut b_users = b.users();
    wait_users(
        &mut b_users,
        "alice's two tabs",
        tabs_are(&[("alice", 2), ("observer", 1)]),
    )
    .await;

    let busy = a.publish(json!({"status": "busy"})).await.unwrap();
    assert_eq!(bare(Some(busy.clone())), Some(json!({"status": "busy"})));
    wait_users(&mut b_users, "b sees busy", |u| {
        u.iter()
            .any(|u| &*u.id == "alice" && u.state.as_deref() == Some(&busy))
    })
    .await;
    assert_eq!(b.read().unwrap(), Some(busy.clone()), "b saved it as it is");
    assert_eq!(store_b.get(KEY).unwrap(), Some(busy.clone()));

    // B also stored it on the server, silently.
    let b_id = tab_b.connection_id().unwrap();
    within("b's silent publish", async {
        loop {
            let snapshot = observer.get_presence_state(ROOM).await.unwrap();
            if snapshot.states.get(&b_id) == Some(&busy) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // No echo: the observer saw a's state, and the next state it sees is
    // a's next one, not anything from b bouncing back.
    let away = a.publish(json!({"status": "away"})).await.unwrap();
    let a_id = tab_a.connection_id().unwrap();
    let mut states = Vec::new();
    within("a's two states", async {
        while states.len() < 2 {
            if let Some(PresenceEvent::Update(PresenceUpdate::State {
                connection_id,
                state,
                ..
            })) = raw.recv().await
            {
                states.push((connection_id, state));
            }
        }
    })
    .await;
    assert_eq!(
        states,
        vec![(a_id.clone(), Some(busy)), (a_id, Some(away.clone()))]
    );
    wait_users(&mut b_users, "b follows to away", |u| {
        u.iter()
            .any(|u| &*u.id == "alice" && u.state.as_deref() == Some(&away))
    })
    .await;
    assert_eq!(store_b.get(KEY).unwrap(), Some(away.clone()));
    assert_eq!(store_a.get(KEY).unwrap(), Some(away));
}

#[tokio::test]
async fn expiring_states_disappear_on_time() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let expiring = PresenceOptions {
        expire_after: Some(300),
        ..options()
    };
    let (_c, dave) = tab_with(
        &server,
        "dave",
        key.clone(),
        Arc::new(MemoryStore::new()),
        expiring,
    )
    .await;
    let mut users = watcher.users();
    let published = Instant::now();
    dave.publish(json!({"status": "typing"})).await.unwrap();
    let has_state = |users: &[User]| users.iter().any(|u| &*u.id == "dave" && u.state.is_some());
    wait_users(&mut users, "dave typing", has_state).await;
    let list = wait_users(&mut users, "dave's state expires", |u| {
        !has_state(u) && u.iter().any(|u| &*u.id == "dave")
    })
    .await;
    let took = published.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "expired early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "expired late: {took:?}");
    assert!(
        list.iter().any(|u| &*u.id == "dave" && u.tab_count == 1),
        "dave is still here"
    );
}

#[tokio::test]
async fn saved_state_is_republished_by_a_new_session() {
    let server = start_server().await;
    let key = GroupKey::state_field("userId");
    let store = Arc::new(MemoryStore::new());
    store
        .set(KEY, &json!({"userId": "erin", "status": "back soon"}))
        .unwrap();
    let (_w, watcher) = tab(&server, "w", key.clone()).await;
    let (_e, erin) = tab_with(&server, "erin", key.clone(), store, options()).await;
    assert_eq!(
        erin.read().unwrap(),
        Some(json!({"userId": "erin", "status": "back soon"}))
    );
    let mut users = watcher.users();
    let list = wait_users(&mut users, "erin's saved state", |u| u.len() == 1).await;
    assert_eq!(&*list[0].id, "erin");
    assert_eq!(list[0].state.as_deref().unwrap()["status"], "back soon");
}

#[tokio::test]
async fn clear_forgets_locally_and_on_the_server() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let (_f, frank) = tab(&server, "frank", key.clone()).await;
    frank.publish(json!({"status": "in"})).await.unwrap();
    let mut users = watcher.users();
    let frank_state = |u: &[User]| {
        u.iter()
            .find(|u| &*u.id == "frank")
            .map(|u| u.state.is_some())
    };
    wait_users(&mut users, "frank's state", |u| {
        frank_state(u) == Some(true)
    })
    .await;
    frank.clear().await.unwrap();
    assert_eq!(frank.read().unwrap(), None);
    wait_users(&mut users, "frank cleared", |u| {
        frank_state(u) == Some(false)
    })
    .await;
}

#[tokio::test]
async fn dispose_leaves_the_room_and_keeps_the_saved_state() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let store = Arc::new(MemoryStore::new());
    let (client, gina) = tab_with(&server, "gina", key.clone(), store.clone(), options()).await;
    gina.publish(json!({"status": "bye"})).await.unwrap();
    let mut users = watcher.users();
    wait_users(&mut users, "gina", tabs_are(&[("gina", 1), ("watcher", 1)])).await;
    let gina_id = client.connection_id().unwrap();

    gina.dispose().await.unwrap();
    wait_users(&mut users, "gina gone", tabs_are(&[("watcher", 1)])).await;
    let members = server.handle().room_members(ROOM).await.unwrap();
    assert!(!members.contains(&gina_id));
    assert_eq!(
        bare(store.get(KEY).unwrap()),
        Some(json!({"status": "bye"}))
    );
}

#[tokio::test]
async fn dropping_a_presence_leaves_the_room_in_the_background() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = tab(&server, "watcher", key.clone()).await;
    let (_client, hank) = tab(&server, "hank", key.clone()).await;
    let mut users = watcher.users();
    wait_users(&mut users, "hank", tabs_are(&[("hank", 1), ("watcher", 1)])).await;
    drop(hank);
    wait_users(&mut users, "hank gone", tabs_are(&[("watcher", 1)])).await;
}

#[tokio::test]
async fn failing_resolver_shows_connection_alone_then_retry_groups_it() {
    let server = start_server().await;
    let calls = Arc::new(AtomicU32::new(0));
    let key = {
        let calls = calls.clone();
        GroupKey::resolver(move |ids: Vec<String>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    return Err("directory unavailable".to_string());
                }
                Ok(ids
                    .into_iter()
                    .map(|id| (id, Some("ivy".to_string())))
                    .collect::<HashMap<_, _>>())
            }
        })
    };
    let (client, presence) = tab_with(
        &server,
        "ivy",
        key,
        Arc::new(MemoryStore::new()),
        PresenceOptions {
            resolve_retry_after: Duration::from_millis(300),
            ..options()
        },
    )
    .await;
    let my_id = client.connection_id().unwrap();
    let mut users = presence.users();
    wait_users(&mut users, "alone under its connection id", |u| {
        u.len() == 1 && *u[0].id == *my_id
    })
    .await;
    wait_users(&mut users, "grouped after the retry", |u| {
        u.len() == 1 && &*u[0].id == "ivy"
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn resolver_that_never_answers_times_out_to_standing_alone() {
    let server = start_server().await;
    let key = GroupKey::resolver(|_ids: Vec<String>| async {
        std::future::pending::<Result<HashMap<String, Option<String>>, String>>().await
    });
    let (client, presence) = tab_with(
        &server,
        "jo",
        key,
        Arc::new(MemoryStore::new()),
        PresenceOptions {
            resolve_timeout: Duration::from_millis(200),
            ..options()
        },
    )
    .await;
    let my_id = client.connection_id().unwrap();
    assert!(presence.users().borrow().is_empty(), "held while resolving");
    let mut users = presence.users();
    wait_users(&mut users, "standing alone after the timeout", |u| {
        u.len() == 1 && *u[0].id == *my_id
    })
    .await;
}

#[tokio::test]
async fn bad_states_and_rooms_are_refused_and_nothing_is_saved() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let store = Arc::new(MemoryStore::new());
    let (client, kim) = tab_with(&server, "kim", key.clone(), store.clone(), options()).await;

    let err = kim.publish(json!("not an object")).await.unwrap_err();
    assert!(matches!(err, PresenceError::InvalidState(_)), "{err}");
    let huge = json!({"blob": "x".repeat(64 * 1024)});
    let err = kim.publish(huge).await.unwrap_err();
    assert!(matches!(err, PresenceError::InvalidState(_)), "{err}");
    assert_eq!(store.get(KEY).unwrap(), None, "nothing saved");

    // An untracked room has no presence: refused, and not left joined.
    let err = Presence::new(
        client.clone(),
        "untracked",
        KEY,
        key.clone(),
        Arc::new(MemoryStore::new()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PresenceError::Refused { .. }), "{err}");
    assert!(server
        .handle()
        .room_members("untracked")
        .await
        .unwrap()
        .is_empty());

    let err = Presence::new(client, "", KEY, key, Arc::new(MemoryStore::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, PresenceError::InvalidRoom(_)), "{err}");
    // And the good session still works.
    kim.publish(json!({"ok": true})).await.unwrap();
    assert_eq!(bare(store.get(KEY).unwrap()), Some(json!({"ok": true})));
}

#[tokio::test]
async fn the_user_list_is_coalesced() {
    let server = start_server().await;
    let key = GroupKey::metadata_field("userId");
    let (_w, watcher) = {
        let slow = PresenceOptions {
            emit_interval: Duration::from_millis(300),
            ..options()
        };
        tab_with(
            &server,
            "watcher",
            key.clone(),
            Arc::new(MemoryStore::new()),
            slow,
        )
        .await
    };
    let (_l, lee) = tab(&server, "lee", key.clone()).await;
    let mut users = watcher.users();
    wait_users(&mut users, "lee", tabs_are(&[("lee", 1), ("watcher", 1)])).await;
    let start = Instant::now();
    // Publish while the list is being watched, so that every emission is seen.
    let publisher = tokio::spawn(async move {
        for n in 0..20 {
            lee.publish(json!({"n": n})).await.unwrap();
        }
        lee
    });
    let mut emissions = 0;
    within("the last state", async {
        loop {
            users.changed().await.unwrap();
            emissions += 1;
            let done = users
                .borrow_and_update()
                .iter()
                .any(|u| u.state.as_ref().is_some_and(|s| s["n"] == 19));
            if done {
                return;
            }
        }
    })
    .await;
    let elapsed = start.elapsed();
    publisher.await.unwrap();
    // At most one emission per 300 ms (plus the one that may be due at once).
    let allowed = 1 + (elapsed.as_millis() / 300) as usize + 1;
    assert!(
        emissions <= allowed,
        "{emissions} emissions in {elapsed:?} (at most {allowed})"
    );
}
