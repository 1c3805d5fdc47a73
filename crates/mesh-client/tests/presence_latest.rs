//! One person, one state, everywhere: whatever the order of events between a
//! person's windows and devices, everyone sees the state they changed last,
//! and a full reconnect shows no gap in anyone's row.
//!
//! These races depend on the order of events, so each test runs its race
//! several times.

mod support;

use mesh_client::presence::{GroupKey, MemoryStore, Presence, PresenceOptions, StateStore, User};
use mesh_client::{ClientOptions, MeshClient, Status};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::proxy::CutProxy;
use support::room::*;
use support::{fast_options, within};

/// How often a test looks at what a silent publish left on the server.
const POLL: Duration = Duration::from_millis(20);

/// The state of user `id` in a list, if they are in it.
fn state_of<'a>(users: &'a [User], id: &str) -> Option<&'a Value> {
    users
        .iter()
        .find(|u| &*u.id == id)
        .and_then(|u| u.state.as_deref())
}

/// One field of user `id`'s state.
fn field<'a>(users: &'a [User], id: &str, name: &str) -> Option<&'a Value> {
    state_of(users, id).and_then(|s| s.get(name))
}

async fn wait_status(client: &MeshClient, what: &str, pred: impl Fn(&Status) -> bool) {
    let mut status = client.status();
    within(what, async {
        while !pred(&status.borrow_and_update()) {
            status.changed().await.expect("client gone");
        }
    })
    .await
}

/// The state the server holds for connection `id`.
async fn held_by_server(client: &MeshClient, id: &str) -> Option<Value> {
    let snapshot = client.get_presence_state(ROOM).await.unwrap();
    snapshot.states.get(id).cloned()
}

/// Two windows of one person share a store (as the desktop app's windows
/// do). Window B's change must reach window A's connection on the server
/// too, or a newcomer sees two states for one person.
#[tokio::test]
async fn windows_sharing_a_store_show_newcomers_the_latest_state() {
    let server = start_server().await;
    let key = GroupKey::state_field("userId");
    for round in 0..10 {
        let user = format!("ann{round}");
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let (ca, a) = tab_with(&server, &user, key.clone(), store.clone(), options()).await;
        let (cb, b) = tab_with(&server, &user, key.clone(), store.clone(), options()).await;
        a.publish(json!({"userId": user, "status": "old"}))
            .await
            .unwrap();
        wait_users(&mut b.users(), "window B sees old", |u| {
            field(u, &user, "status") == Some(&json!("old"))
        })
        .await;
        b.publish(json!({"userId": user, "status": "new"}))
            .await
            .unwrap();
        wait_users(&mut a.users(), "window A follows", |u| {
            field(u, &user, "status") == Some(&json!("new"))
        })
        .await;

        let (newcomer_client, newcomer) = tab(&server, &format!("new{round}"), key.clone()).await;
        let first = newcomer.users().borrow().clone();
        assert_eq!(
            field(&first, &user, "status"),
            Some(&json!("new")),
            "round {round}: the newcomer's first list: {first:?}"
        );
        // Window A's connection holds the new state too.
        let a_id = ca.connection_id().unwrap();
        within("window A's connection holds the new state", async {
            while held_by_server(&newcomer_client, &a_id)
                .await
                .and_then(|s| s.get("status").cloned())
                != Some(json!("new"))
            {
                // A silent publish sends no update to wait for.
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        for (client, presence) in [(ca, a), (cb, b), (newcomer_client, newcomer)] {
            presence.dispose().await.unwrap();
            client.close().await;
        }
    }
}

/// Two devices of one person, each with its own store, each through its
/// own network (a proxy that can be cut). Device 1 changes the state while
/// both are offline; when they come back, device 2's older saved state must
/// not win, whichever device republishes last.
#[tokio::test]
async fn a_state_changed_offline_wins_over_an_older_republished_one() {
    let server = start_server().await;
    let key = GroupKey::state_field("userId");
    let (observer_client, observer) = tab(&server, "observer", key.clone()).await;
    for round in 0..6 {
        let user = format!("dev{round}");
        let n = |users: &[User]| field(users, &user, "n").cloned();
        let (p1, p2) = (
            CutProxy::start(server.local_addr()).await,
            CutProxy::start(server.local_addr()).await,
        );
        let (s1, s2) = (Arc::new(MemoryStore::new()), Arc::new(MemoryStore::new()));
        let (c1, d1) = tab_at(&p1.url, &user, key.clone(), s1.clone(), options()).await;
        let (c2, d2) = tab_at(&p2.url, &user, key.clone(), s2.clone(), options()).await;
        d2.publish(json!({"userId": user, "n": 13})).await.unwrap();
        wait_users(&mut d1.users(), "device 1 follows to 13", |u| {
            n(u) == Some(json!(13))
        })
        .await;

        p1.cut();
        p2.cut();
        for c in [&c1, &c2] {
            wait_status(c, "offline", |s| *s != Status::Online).await;
        }
        let d1 = Arc::new(d1);
        let publishing = tokio::spawn({
            let (d1, user) = (d1.clone(), user.clone());
            async move { d1.publish(json!({"userId": user, "n": 15})).await }
        });
        // Saved at once, sent when the link is back.
        while s1.get(KEY).unwrap().and_then(|s| s.get("n").cloned()) != Some(json!(15)) {
            tokio::task::yield_now().await;
        }

        if round % 2 == 0 {
            // Device 1 comes back first; device 2 republishes last.
            p1.restore();
            wait_users(&mut observer.users(), "15 from device 1", |u| {
                n(u) == Some(json!(15))
            })
            .await;
            p2.restore();
        } else {
            p1.restore();
            p2.restore();
        }
        within("device 1's publish", publishing)
            .await
            .unwrap()
            .unwrap();

        // Settled: both devices saved the same state, the server holds it
        // for both connections, and the observer shows it.
        let settled = within("the devices to agree", async {
            loop {
                let saved = |s: &MemoryStore| s.get(KEY).unwrap().and_then(|s| s.get("n").cloned());
                let (n1, n2) = (saved(&s1), saved(&s2));
                let (id1, id2) = (c1.connection_id(), c2.connection_id());
                let mut held = Vec::new();
                for id in [id1, id2].into_iter().flatten() {
                    held.push(
                        held_by_server(&observer_client, &id)
                            .await
                            .and_then(|s| s.get("n").cloned()),
                    );
                }
                let shown = n(&observer.users().borrow());
                if n1 == n2 && held.len() == 2 && held.iter().all(|h| *h == n1) && shown == n1 {
                    return n1;
                }
                // Tab sync publishes silently: no update to wait for.
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        assert_eq!(settled, Some(json!(15)), "round {round}");

        let (newcomer_client, newcomer) = tab(&server, &format!("new{round}"), key.clone()).await;
        let first = newcomer.users().borrow().clone();
        assert_eq!(n(&first), Some(json!(15)), "round {round}: {first:?}");
        newcomer.dispose().await.unwrap();
        newcomer_client.close().await;
        for client in [c1, c2] {
            client.close().await;
        }
    }
}

/// How a whole room loses its connections.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The server shuts down and starts again on the same address.
    Restart,
    /// Every link is cut at once, with no close frame (a crash, a network
    /// outage), while the server stays up; then the links come back.
    Outage,
}

/// A whole room reconnects after a server restart. An observer records
/// every list it emits: nobody's row may disappear or lose its status while
/// everyone comes back.
#[tokio::test]
async fn a_full_room_restart_leaves_no_gap_in_any_row() {
    no_gap_in_any_row(Fault::Restart).await;
}

/// The same when every link drops abruptly: the server may still list the
/// old connections when the first ones come back.
#[tokio::test]
async fn a_full_room_outage_leaves_no_gap_in_any_row() {
    no_gap_in_any_row(Fault::Outage).await;
}

async fn no_gap_in_any_row(fault: Fault) {
    for key in [
        GroupKey::state_field("userId"),
        GroupKey::metadata_field("userId"),
    ] {
        let mut server = start_server().await;
        let addr = server.local_addr();
        let proxy = CutProxy::start(addr).await;
        let url = match fault {
            Fault::Restart => server.url(),
            Fault::Outage => proxy.url.clone(),
        };
        let people = [
            ("ann", "reading"),
            ("ann", "reading"),
            ("bob", "away"),
            ("cy", "typing"),
            ("obs", "watching"),
        ];
        let mut tabs: Vec<(MeshClient, Presence)> = Vec::new();
        for (user, status) in people {
            let store = Arc::new(MemoryStore::new());
            let (client, presence) = tab_at(&url, user, key.clone(), store, options()).await;
            presence
                .publish(json!({"userId": user, "status": status}))
                .await
                .unwrap();
            tabs.push((client, presence));
        }
        let expected = [("ann", 2), ("bob", 1), ("cy", 1), ("obs", 1)];
        let status_of = |user: &str| people.iter().find(|p| p.0 == user).unwrap().1;
        let complete = |u: &[User]| {
            expected
                .iter()
                .all(|(id, _)| field(u, id, "status") == Some(&json!(status_of(id))))
        };
        let observer = &tabs[4].1;
        let mut users = observer.users();
        wait_users(&mut users, "everyone", |u| {
            tabs_are(&expected)(u) && complete(u)
        })
        .await;
        let (lists_tx, mut lists) = tokio::sync::mpsc::unbounded_channel();
        let _recorder = observer.on_users(move |list| {
            let _ = lists_tx.send(list.to_vec());
        });

        for round in 0..3 {
            let old_ids: Vec<String> = tabs.iter().filter_map(|t| t.0.connection_id()).collect();
            match fault {
                Fault::Restart => {
                    server.shutdown().await;
                    all_offline(&tabs).await;
                    server = start_server_at(addr).await;
                }
                Fault::Outage => {
                    proxy.cut();
                    all_offline(&tabs).await;
                    proxy.restore();
                }
            }
            wait_users(&mut users, "everyone back", |u| {
                tabs_are(&expected)(u)
                    && complete(u)
                    && u.iter()
                        .flat_map(|u| u.members.iter())
                        .all(|m| !old_ids.iter().any(|old| **old == **m))
            })
            .await;
            let mut seen = 0;
            while let Ok(list) = lists.try_recv() {
                seen += 1;
                assert!(
                    complete(&list),
                    "{fault:?} {round}: a row went missing or lost its status: {list:?}"
                );
            }
            assert!(seen > 0, "the observer saw the reconnect");
        }
        server.shutdown().await;
    }
}

async fn all_offline(tabs: &[(MeshClient, Presence)]) {
    for (client, _) in tabs {
        wait_status(client, "every tab offline", |s| *s != Status::Online).await;
    }
}

/// Someone who does not come back after a restart keeps their row, with no
/// tabs, only for the grace period.
#[tokio::test]
async fn a_person_who_does_not_come_back_goes_after_the_grace_period() {
    let server = start_server().await;
    let addr = server.local_addr();
    let key = GroupKey::metadata_field("userId");
    let grace = Duration::from_millis(600);
    let store = Arc::new(MemoryStore::new());
    let with_grace = PresenceOptions {
        reconnect_grace: grace,
        ..options()
    };
    let (observer_client, observer) =
        tab_with(&server, "obs", key.clone(), store, with_grace).await;
    let once = ClientOptions {
        reconnect: false,
        ..fast_options()
    };
    let zoe = MeshClient::connect(&format!("{}/?userId=zoe", server.url()), once)
        .await
        .unwrap();
    let zoe_presence =
        Presence::with_options(zoe, ROOM, KEY, key, Arc::new(MemoryStore::new()), options())
            .await
            .unwrap();
    zoe_presence
        .publish(json!({"status": "gone soon"}))
        .await
        .unwrap();
    let mut users = observer.users();
    wait_users(&mut users, "zoe", |u| {
        field(u, "zoe", "status") == Some(&json!("gone soon"))
    })
    .await;

    server.shutdown().await;
    wait_status(&observer_client, "the observer offline", |s| {
        *s != Status::Online
    })
    .await;
    let server = start_server_at(addr).await;
    let kept = wait_users(&mut users, "zoe kept while reconnecting", |u| {
        u.iter().any(|u| &*u.id == "zoe" && u.tab_count == 0)
            && u.iter().any(|u| &*u.id == "obs" && u.tab_count == 1)
    })
    .await;
    let kept_at = Instant::now();
    assert_eq!(field(&kept, "zoe", "status"), Some(&json!("gone soon")));
    let list = wait_users(&mut users, "zoe gone", |u| {
        !u.iter().any(|u| &*u.id == "zoe")
    })
    .await;
    assert!(
        kept_at.elapsed() >= grace / 2,
        "gone after {:?}, before the grace of {grace:?}",
        kept_at.elapsed()
    );
    assert!(tabs_are(&[("obs", 1)])(&list), "{list:?}");
    server.shutdown().await;
}
