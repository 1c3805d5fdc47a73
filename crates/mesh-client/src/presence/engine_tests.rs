use super::*;
use serde_json::json;

fn by_user_id() -> KeySource {
    KeySource::state_field("userId")
}

fn ids(engine: &PresenceEngine) -> Vec<(String, usize)> {
    engine
        .users()
        .into_iter()
        .map(|u| (u.id.to_string(), u.tab_count))
        .collect()
}

fn joined(id: &str) -> UserEvent {
    UserEvent::Joined { id: id.into() }
}

fn left(id: &str) -> UserEvent {
    UserEvent::Left { id: id.into() }
}

fn updated(id: &str, change: Change) -> UserEvent {
    UserEvent::Updated {
        id: id.into(),
        change,
    }
}

/// A resolved engine with connections placed at once.
fn resolved_with(pairs: &[(&str, &str)]) -> PresenceEngine {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    for (conn, user) in pairs {
        e.join(conn, 1);
        e.resolve(conn, Some(user.to_string()));
    }
    e.take_events();
    e.take_dirty();
    e
}

#[test]
fn apply_routes_wire_updates() {
    let mut e = PresenceEngine::new(by_user_id());
    e.apply(PresenceUpdate::Join {
        connection_id: "c1".into(),
        room_name: "r".into(),
        timestamp: 1,
    });
    e.apply(PresenceUpdate::State {
        connection_id: "c1".into(),
        room_name: "r".into(),
        state: Some(json!({"userId": "u1"})),
        timestamp: 2,
    });
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    e.apply(PresenceUpdate::Leave {
        connection_id: "c1".into(),
        room_name: "r".into(),
        timestamp: 3,
    });
    assert!(e.users().is_empty());
}

#[test]
fn unresolved_connection_is_held_apart_until_resolved() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.set_state("c1", Some(json!({"status": "busy"})), 2);
    assert!(e.users().is_empty(), "not shown before its key is known");
    assert!(e.take_events().is_empty());
    assert_eq!(e.take_unresolved(), vec!["c1".to_string()]);
    assert!(e.take_unresolved().is_empty(), "listed once");

    e.resolve("c1", Some("u1".into()));
    let users = e.users();
    assert_eq!(users.len(), 1);
    assert_eq!(&*users[0].id, "u1");
    assert_eq!(
        users[0].state.as_deref(),
        Some(&json!({"status": "busy"})),
        "held state kept"
    );
    assert_eq!(users[0].timestamp, 2);
    assert_eq!(users[0].representative.as_deref(), Some("c1"));
    assert_eq!(
        e.take_events(),
        vec![joined("u1"), updated("u1", Change::State)]
    );
}

#[test]
fn many_joiners_are_listed_for_one_batch() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    for i in 0..5 {
        e.join(&format!("c{i}"), 1);
    }
    e.leave("c3");
    let batch = e.take_unresolved();
    assert_eq!(batch, vec!["c0", "c1", "c2", "c4"], "departed ones skipped");
}

#[test]
fn resolver_yielding_nothing_stands_alone_under_connection_id() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.resolve("c1", None);
    assert_eq!(ids(&e), vec![("c1".to_string(), 1)]);
}

#[test]
fn resolver_failure_or_timeout_then_late_answer_moves_the_connection() {
    // The async side reports a failed or timed-out lookup as "nothing":
    // the connection is shown alone rather than lost.
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.set_state("c1", Some(json!({"s": 1})), 5);
    e.resolve("c1", None);
    assert_eq!(ids(&e), vec![("c1".to_string(), 1)]);
    e.take_events();
    // A retry succeeds later: it moves under the user, state and all.
    e.resolve("c1", Some("u1".into()));
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    assert_eq!(
        e.user("u1").unwrap().state.as_deref(),
        Some(&json!({"s": 1}))
    );
    assert_eq!(
        e.take_events(),
        vec![left("c1"), joined("u1"), updated("u1", Change::State)]
    );
}

#[test]
fn resolution_for_unknown_connection_is_ignored() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.leave("c1");
    e.resolve("c1", Some("u1".into()));
    e.resolve("never", Some("u2".into()));
    assert!(e.users().is_empty());
    assert_eq!(e.connection_count(), 0);
}

#[test]
fn state_before_join_counts_as_join() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("c1", Some(json!({"userId": "u1", "status": "hi"})), 3);
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    e.join("c1", 4);
    assert_eq!(
        ids(&e),
        vec![("u1".to_string(), 1)],
        "late join is a duplicate"
    );
    assert_eq!(e.user("u1").unwrap().state.unwrap()["status"], "hi");
}

#[test]
fn state_before_join_in_resolved_mode_waits_for_key() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.set_state("c1", Some(json!({"s": 1})), 3);
    assert!(e.users().is_empty());
    assert_eq!(e.take_unresolved(), vec!["c1"]);
    e.resolve("c1", Some("u1".into()));
    assert_eq!(
        e.user("u1").unwrap().state.as_deref(),
        Some(&json!({"s": 1}))
    );
}

#[test]
fn cleared_state_of_unknown_connection_never_resurrects_it() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("c1", Some(json!({"userId": "u1"})), 1);
    e.leave("c1");
    e.take_events();
    e.set_state("c1", None, 2);
    assert!(e.users().is_empty());
    assert_eq!(e.connection_count(), 0);
    assert!(e.take_events().is_empty());
}

#[test]
fn leave_of_unknown_connection_changes_nothing() {
    let mut e = resolved_with(&[("c1", "u1")]);
    e.leave("ghost");
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    assert!(e.take_events().is_empty());
    assert!(!e.take_dirty());
}

#[test]
fn leave_of_held_connection_forgets_it() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.leave("c1");
    assert!(e.take_events().is_empty());
    e.resolve("c1", Some("u1".into()));
    assert!(e.users().is_empty());
}

#[test]
fn duplicate_join_changes_nothing() {
    let mut e = resolved_with(&[("c1", "u1")]);
    e.join("c1", 2);
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    assert!(e.take_events().is_empty());
    assert!(e.take_unresolved().is_empty(), "no second lookup");
}

#[test]
fn two_tabs_one_closes_then_both() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("a", 1);
    e.resolve("a", Some("u1".into()));
    e.join("b", 2);
    e.resolve("b", Some("u1".into()));
    assert_eq!(ids(&e), vec![("u1".to_string(), 2)]);
    assert_eq!(
        &e.user("u1").unwrap().members[..],
        [Arc::from("a"), Arc::from("b")]
    );
    assert_eq!(
        e.take_events(),
        vec![joined("u1"), updated("u1", Change::Tabs)]
    );

    e.leave("a");
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)], "still present, 1 tab");
    assert_eq!(e.take_events(), vec![updated("u1", Change::Tabs)]);
    // The member list read before the leave is not served again.
    assert_eq!(&e.user("u1").unwrap().members[..], [Arc::from("b")]);

    e.leave("b");
    assert!(e.users().is_empty(), "gone");
    assert_eq!(e.take_events(), vec![left("u1")]);
}

#[test]
fn latest_state_of_any_tab_wins_and_survives_its_sender_leaving() {
    let mut e = resolved_with(&[("a", "u1"), ("b", "u1")]);
    e.set_state("a", Some(json!({"status": "one"})), 10);
    e.set_state("b", Some(json!({"status": "two"})), 11);
    let u = e.user("u1").unwrap();
    assert_eq!(u.state.as_deref(), Some(&json!({"status": "two"})));
    assert_eq!(u.representative.as_deref(), Some("b"));
    assert_eq!(u.timestamp, 11);
    e.take_events();

    e.leave("b");
    let u = e.user("u1").unwrap();
    assert_eq!(
        u.state.as_deref(),
        Some(&json!({"status": "two"})),
        "tabs are in step"
    );
    assert_eq!(u.representative, None, "its sender is gone");
    assert_eq!(u.tab_count, 1);
    assert_eq!(e.take_events(), vec![updated("u1", Change::Tabs)]);
}

#[test]
fn cleared_or_expired_state_empties_the_user_state() {
    let mut e = resolved_with(&[("a", "u1")]);
    e.set_state("a", Some(json!({"status": "x"})), 10);
    e.take_events();
    e.set_state("a", None, 20);
    let u = e.user("u1").unwrap();
    assert_eq!(u.state.as_deref(), None);
    assert_eq!(u.timestamp, 20);
    assert_eq!(u.tab_count, 1, "still present");
    assert_eq!(e.take_events(), vec![updated("u1", Change::State)]);
}

#[test]
fn duplicate_state_delivery_is_not_an_event() {
    let mut e = resolved_with(&[("a", "u1")]);
    e.set_state("a", Some(json!({"s": 1})), 10);
    e.take_events();
    e.take_dirty();
    e.set_state("a", Some(json!({"s": 1})), 10);
    assert!(e.take_events().is_empty());
    assert!(!e.take_dirty());
}

#[test]
fn state_mode_connection_without_state_is_pending() {
    let mut e = PresenceEngine::new(by_user_id());
    e.join("c1", 1);
    assert!(e.users().is_empty());
    assert!(
        e.take_unresolved().is_empty(),
        "nothing to look up in state mode"
    );
    e.set_state("c1", Some(json!({"status": "no id"})), 2);
    assert!(e.users().is_empty(), "a state without key keeps it pending");
    e.set_state("c1", Some(json!({"userId": "u1"})), 3);
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
}

#[test]
fn state_mode_key_sticks_when_state_is_cleared() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("c1", Some(json!({"userId": "u1"})), 1);
    e.set_state("c1", None, 2);
    assert_eq!(ids(&e), vec![("u1".to_string(), 1)]);
    assert_eq!(e.user("u1").unwrap().state.as_deref(), None);
}

#[test]
fn user_changing_user_id_in_state_moves_the_connection() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("a", Some(json!({"userId": "u1"})), 1);
    e.set_state("b", Some(json!({"userId": "u1"})), 2);
    e.take_events();
    e.set_state("b", Some(json!({"userId": "u2", "n": 1})), 3);
    assert_eq!(ids(&e), vec![("u1".to_string(), 1), ("u2".to_string(), 1)]);
    assert_eq!(
        e.user("u2").unwrap().state.as_deref(),
        Some(&json!({"userId": "u2", "n": 1}))
    );
    assert_eq!(
        e.take_events(),
        vec![
            updated("u1", Change::Tabs),
            joined("u2"),
            updated("u2", Change::State)
        ]
    );
    e.set_state("a", Some(json!({"userId": "u2"})), 4);
    assert_eq!(ids(&e), vec![("u2".to_string(), 2)]);
    assert!(e.take_events().contains(&left("u1")));
}

#[test]
fn user_changing_user_id_in_metadata_moves_the_connection() {
    let mut e = resolved_with(&[("a", "u1"), ("b", "u1")]);
    e.set_state("b", Some(json!({"s": 1})), 5);
    e.take_events();
    e.resolve("b", Some("u9".into()));
    assert_eq!(ids(&e), vec![("u1".to_string(), 1), ("u9".to_string(), 1)]);
    assert_eq!(
        e.user("u9").unwrap().state.as_deref(),
        Some(&json!({"s": 1})),
        "its state moves along"
    );
    assert_eq!(e.user_of("b"), Some("u9"));
    // Resolving to the same key again is a no-op.
    e.take_events();
    e.resolve("b", Some("u9".into()));
    assert!(e.take_events().is_empty());
}

#[test]
fn held_state_older_than_the_users_state_does_not_win() {
    let mut e = resolved_with(&[("a", "u1")]);
    e.join("b", 1);
    e.set_state("b", Some(json!({"old": true})), 5);
    e.set_state("a", Some(json!({"new": true})), 9);
    e.resolve("b", Some("u1".into()));
    let u = e.user("u1").unwrap();
    assert_eq!(u.state.as_deref(), Some(&json!({"new": true})));
    assert_eq!(u.tab_count, 2);
}

#[test]
fn users_are_sorted_by_key() {
    let e = resolved_with(&[("1", "carol"), ("2", "alice"), ("3", "bob"), ("4", "alice")]);
    let order: Vec<String> = e.users().into_iter().map(|u| u.id.to_string()).collect();
    assert_eq!(order, vec!["alice", "bob", "carol"]);
}

#[test]
fn seed_from_snapshot_groups_by_state() {
    let mut e = PresenceEngine::new(by_user_id());
    let states = json!({
        "a": {"userId": "u1", "status": "x"},
        "b": {"userId": "u1", "status": "x"},
        "c": {"userId": "u2"},
    });
    e.reset(["a", "b", "c", "d"], states.as_object().unwrap().clone());
    assert_eq!(ids(&e), vec![("u1".to_string(), 2), ("u2".to_string(), 1)]);
    assert_eq!(
        e.user("u1").unwrap().timestamp,
        0,
        "a snapshot has no times: unknown"
    );
    assert!(e.contains_connection("d"), "held until it has a state");
    let mut events = e.take_events();
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(events, vec![joined("u1"), joined("u2")]);
}

#[test]
fn resync_keeps_known_keys_and_emits_only_differences() {
    let mut e = resolved_with(&[("a", "u1"), ("b", "u2"), ("old-me", "me")]);
    e.set_state("a", Some(json!({"s": "a"})), 5);
    e.take_events();
    e.take_dirty();
    // After a reconnect: "a" is still here (same state), "b" is gone,
    // our old connection is gone and our new one is unknown yet.
    let states = json!({"a": {"s": "a"}});
    e.reset(["a", "new-me"], states.as_object().unwrap().clone());
    assert!(e.take_dirty());
    assert_eq!(e.user_of("a"), Some("u1"), "no second lookup for a");
    assert_eq!(e.take_unresolved(), vec!["new-me"]);
    let mut events = e.take_events();
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(events, vec![left("me"), left("u2")]);
    e.resolve("new-me", Some("me".into()));
    assert_eq!(ids(&e), vec![("me".to_string(), 1), ("u1".to_string(), 1)]);
}

#[test]
fn resync_reports_changed_state_and_tabs() {
    let mut e = resolved_with(&[("a", "u1"), ("b", "u1")]);
    e.set_state("a", Some(json!({"s": 1})), 5);
    e.take_events();
    let states = json!({"a": {"s": 2}});
    e.reset(["a"], states.as_object().unwrap().clone());
    let events = e.take_events();
    assert!(events.contains(&updated("u1", Change::Tabs)));
    assert!(events.contains(&updated("u1", Change::State)));
    assert_eq!(events.len(), 2);
}

#[test]
fn dirty_flag_tracks_visible_changes() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    assert!(!e.take_dirty());
    e.join("c1", 1);
    assert!(!e.take_dirty(), "a held connection is not visible");
    e.resolve("c1", Some("u".into()));
    assert!(e.take_dirty());
    assert!(!e.take_dirty());
}

#[test]
fn user_serializes_in_camel_case() {
    let e = resolved_with(&[("c1", "u1")]);
    let v = serde_json::to_value(e.users()).unwrap();
    assert_eq!(
        v,
        json!([{"id": "u1", "state": null, "tabCount": 1, "members": ["c1"],
                 "representative": null, "timestamp": 0}])
    );
}

#[test]
fn state_key_from_a_function() {
    let mut e = PresenceEngine::new(KeySource::state_fn(|s| {
        s.get("team")
            .and_then(Value::as_str)
            .map(|t| format!("team:{t}"))
    }));
    e.set_state("c1", Some(json!({"team": "red"})), 1);
    e.set_state("c2", Some(json!({"team": "red"})), 2);
    assert_eq!(ids(&e), vec![("team:red".to_string(), 2)]);
}

#[test]
fn a_burst_of_states_from_one_user_is_one_event() {
    let mut e = resolved_with(&[("a", "u1")]);
    for n in 0..5 {
        e.set_state("a", Some(json!({"n": n})), 10 + n);
    }
    assert_eq!(e.take_events(), vec![updated("u1", Change::State)]);
    assert_eq!(
        e.user("u1").unwrap().state.as_deref(),
        Some(&json!({"n": 4}))
    );
}

/// A state that says when its owner changed it.
fn at(changed: u64, status: &str) -> Value {
    json!({"userId": "u1", "status": status, "changedAt": changed})
}

fn status_of(e: &PresenceEngine, user: &str) -> Option<Value> {
    e.user(user)?.state.map(|s| s["status"].clone())
}

#[test]
fn the_latest_change_wins_not_the_latest_packet() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("a", Some(at(200, "new")), 1_000);
    e.take_events();
    // An older change republished later, by another connection of the user.
    e.set_state("b", Some(at(100, "old")), 2_000);
    assert_eq!(status_of(&e, "u1"), Some(json!("new")));
    assert_eq!(
        e.user("u1").unwrap().timestamp,
        200,
        "the time of the change"
    );
    assert_eq!(e.user("u1").unwrap().representative.as_deref(), Some("a"));
    let events = e.take_events();
    assert!(events.contains(&updated("u1", Change::Tabs)), "{events:?}");
    assert!(
        !events.contains(&updated("u1", Change::State)),
        "{events:?}"
    );
    // A later change from it wins.
    e.set_state("b", Some(at(300, "newer")), 2_001);
    assert_eq!(status_of(&e, "u1"), Some(json!("newer")));
}

#[test]
fn a_connection_replaces_its_own_state_whatever_the_times() {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("a", Some(at(500, "typing")), 1_000);
    // Its state expires: the server's time is behind the owner's clock.
    e.set_state("a", None, 400);
    assert_eq!(e.user("u1").unwrap().state, None);
}

#[test]
fn a_snapshot_orders_states_by_change_whatever_the_member_order() {
    for present in [["a", "b"], ["b", "a"]] {
        let mut e = PresenceEngine::new(by_user_id());
        let states = json!({"a": at(100, "old"), "b": at(200, "new")});
        e.reset(present, states.as_object().unwrap().clone());
        assert_eq!(status_of(&e, "u1"), Some(json!("new")), "{present:?}");
        assert_eq!(e.user("u1").unwrap().tab_count, 2);
    }
    // Without times (other clients), every order still picks the same one.
    let mut picked = Vec::new();
    for present in [["a", "b"], ["b", "a"]] {
        let mut e = PresenceEngine::new(by_user_id());
        let states = json!({"a": {"userId": "u1", "s": 1}, "b": {"userId": "u1", "s": 2}});
        e.reset(present, states.as_object().unwrap().clone());
        picked.push(e.user("u1").unwrap().state);
    }
    assert_eq!(picked[0], picked[1]);
}

#[test]
fn same_millisecond_changes_pick_the_same_state_in_any_order() {
    let mut first = PresenceEngine::new(by_user_id());
    first.set_state("a", Some(at(100, "x")), 1);
    first.set_state("b", Some(at(100, "y")), 2);
    let mut second = PresenceEngine::new(by_user_id());
    second.set_state("b", Some(at(100, "y")), 1);
    second.set_state("a", Some(at(100, "x")), 2);
    assert_eq!(
        first.user("u1").unwrap().state,
        second.user("u1").unwrap().state
    );
}

#[test]
fn states_without_times_are_ordered_by_the_server_and_lose_in_snapshots() {
    let mut e = PresenceEngine::new(by_user_id());
    let states = json!({"a": {"userId": "u1", "status": "no time"}, "b": at(50, "timed")});
    e.reset(["a", "b"], states.as_object().unwrap().clone());
    assert_eq!(status_of(&e, "u1"), Some(json!("timed")));
    // Live, a state without a time counts as changed when the server had it.
    e.set_state("a", Some(json!({"userId": "u1", "status": "live"})), 60);
    assert_eq!(status_of(&e, "u1"), Some(json!("live")));
    assert_eq!(e.user("u1").unwrap().timestamp, 60);
}

/// Alice (two tabs) and Bob are here; everyone reconnects.
fn before_a_reconnect() -> PresenceEngine {
    let mut e = PresenceEngine::new(by_user_id());
    e.set_state("a1", Some(json!({"userId": "alice", "changedAt": 10})), 1);
    e.set_state("a2", Some(json!({"userId": "alice", "changedAt": 10})), 1);
    e.set_state("b1", Some(json!({"userId": "bob", "status": "away"})), 1);
    e.take_events();
    e.take_dirty();
    e
}

#[test]
fn users_missing_from_a_resync_snapshot_are_kept_until_they_come_back() {
    let mut e = before_a_reconnect();
    // The server restarted: only Alice's first tab is back, without a state.
    e.resync(["a1-new"], Map::new(), 5_000);
    let users = e.users();
    let rows: Vec<_> = users
        .iter()
        .map(|u| (u.id.to_string(), u.tab_count, u.state.is_some()))
        .collect();
    assert_eq!(
        rows,
        vec![("alice".into(), 0, true), ("bob".into(), 0, true)],
        "kept, reconnecting, with their states"
    );
    assert!(!e
        .take_events()
        .iter()
        .any(|ev| matches!(ev, UserEvent::Left { .. })));
    assert_eq!(e.next_deadline(), Some(5_000));

    // Bob is back: he joins his kept row, and his state replaces the kept
    // one whatever its time.
    e.set_state(
        "b1-new",
        Some(json!({"userId": "bob", "status": "back"})),
        0,
    );
    assert_eq!(e.user("bob").unwrap().tab_count, 1);
    assert_eq!(status_of(&e, "bob"), Some(json!("back")));
    let events = e.take_events();
    assert!(!events.contains(&joined("bob")), "{events:?}");
    assert!(events.contains(&updated("bob", Change::Tabs)));

    // Time is up: Alice never sent a state on a connection of hers.
    e.expire(4_999);
    assert!(e.user("alice").is_some());
    e.expire(5_000);
    assert!(e.user("alice").is_none());
    assert_eq!(e.take_events(), vec![left("alice")]);
    assert_eq!(e.next_deadline(), None);
    assert_eq!(ids(&e), vec![("bob".to_string(), 1)]);
}

#[test]
fn a_user_back_without_a_state_keeps_theirs_until_the_grace_ends() {
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.resolve("c1", Some("u1".into()));
    e.set_state("c1", Some(json!({"status": "busy", "changedAt": 7})), 8);
    e.take_events();
    // Back on a new connection, looked up, no state yet.
    e.resync(["c2"], Map::new(), 100);
    e.resolve("c2", Some("u1".into()));
    assert_eq!(e.user("u1").unwrap().tab_count, 1);
    assert_eq!(status_of(&e, "u1"), Some(json!("busy")));
    assert_eq!(
        e.latest("u1").unwrap().sender,
        None,
        "a kept state has no sender"
    );
    e.take_events();
    // Nothing came: the placeholder goes, the user stays.
    e.expire(100);
    assert_eq!(e.user("u1").unwrap().state, None);
    assert_eq!(e.take_events(), vec![updated("u1", Change::State)]);

    // Had the same state come back, it would simply be confirmed.
    let mut e = PresenceEngine::new(KeySource::Resolved);
    e.join("c1", 1);
    e.resolve("c1", Some("u1".into()));
    let state = json!({"status": "busy", "changedAt": 7});
    e.set_state("c1", Some(state.clone()), 8);
    e.resync(["c2"], Map::new(), 100);
    e.resolve("c2", Some("u1".into()));
    e.take_events();
    let mut copy = Vec::new();
    patch(&mut e, &mut copy);
    e.set_state("c2", Some(state), 50);
    assert!(e.take_events().is_empty(), "nothing visible changed");
    assert_eq!(e.latest("u1").unwrap().sender.map(|c| &**c), Some("c2"));
    // But a copy of the list, which shows the sender too, follows.
    patch(&mut e, &mut copy);
    assert_eq!(copy[0].representative.as_deref(), Some("c2"));
    e.expire(100);
    assert_eq!(status_of(&e, "u1"), Some(json!("busy")), "confirmed");
}

#[test]
fn our_own_old_connection_leaves_without_taking_our_row() {
    let mut e = before_a_reconnect();
    e.leave_keeping("b1", 900);
    assert_eq!(e.user("bob").unwrap().tab_count, 0);
    assert_eq!(e.next_deadline(), Some(900));
    // With another tab still here it is a plain leave.
    e.leave_keeping("a1", 900);
    assert_eq!(e.user("alice").unwrap().tab_count, 1);
    e.expire(900);
    assert!(e.user("bob").is_none());
}

#[test]
fn a_plain_reset_keeps_nobody() {
    let mut e = before_a_reconnect();
    e.reset(["x"], Map::new());
    assert!(e.users().is_empty());
    assert_eq!(e.next_deadline(), None);
}

/// The engine's changes applied to `copy`; asserts it is then the list.
fn patch(e: &mut PresenceEngine, copy: &mut Vec<User>) -> UsersDiff {
    let changes = e.take_changes();
    changes.clone().apply_to_list(copy);
    assert_eq!(*copy, e.users(), "the patched copy is the list");
    changes
}

#[test]
fn changes_name_only_the_users_touched_and_keep_a_copy_current() {
    let mut e = before_a_reconnect();
    let mut copy = Vec::new();
    assert!(
        matches!(patch(&mut e, &mut copy), UsersDiff::Full(_)),
        "the first take is the whole list"
    );
    // A burst from one user is that user once; nothing else is built.
    for n in 0..5 {
        e.set_state("b1", Some(json!({"userId": "bob", "n": n})), 2 + n);
    }
    let UsersDiff::Changed { upserted, removed } = patch(&mut e, &mut copy) else {
        panic!("a patch, not the list");
    };
    assert_eq!(upserted.iter().map(|u| &*u.id).collect::<Vec<_>>(), ["bob"]);
    assert!(removed.is_empty());
    // People come and go, several at once or one.
    e.set_state("c1", Some(json!({"userId": "carol"})), 10);
    e.set_state("d1", Some(json!({"userId": "dave"})), 10);
    e.set_state("0", Some(json!({"userId": "0-first"})), 10);
    patch(&mut e, &mut copy);
    e.leave("c1");
    e.leave("a1");
    e.set_state("e1", Some(json!({"userId": "erin"})), 11);
    patch(&mut e, &mut copy);
    e.leave("0");
    e.leave("e1");
    patch(&mut e, &mut copy);
    assert_eq!(
        ids(&e),
        [
            ("alice".to_string(), 1),
            ("bob".to_string(), 1),
            ("dave".to_string(), 1)
        ]
    );
    assert!(e.take_changes().is_empty(), "nothing since");
}

#[test]
fn a_resync_swapping_a_member_is_the_whole_list_again() {
    // Same tab count, same state: the resync's events say nothing of the
    // new member, so the copy is rebuilt.
    let mut e = before_a_reconnect();
    let mut copy = Vec::new();
    patch(&mut e, &mut copy);
    let mut states = Map::new();
    states.insert("b2".into(), json!({"userId": "bob", "status": "away"}));
    states.insert("a1".into(), json!({"userId": "alice", "changedAt": 10}));
    states.insert("a2".into(), json!({"userId": "alice", "changedAt": 10}));
    e.resync(["a1", "a2", "b2"], states, 5);
    assert!(matches!(patch(&mut e, &mut copy), UsersDiff::Full(_)));
    assert_eq!(&*copy[1].members, [Arc::from("b2")]);
}

#[test]
fn a_caller_that_never_takes_changes_holds_a_bounded_record() {
    let mut e = before_a_reconnect();
    let mut copy = Vec::new();
    patch(&mut e, &mut copy);
    for n in 0..10 * TOUCHED_SLACK as u64 {
        e.set_state("b1", Some(json!({"userId": "bob", "n": n})), 2 + n);
        assert!(e.touched.len() <= e.user_count() + TOUCHED_SLACK + 1);
    }
    // Past the room's size the whole list is no dearer than a patch.
    assert!(matches!(patch(&mut e, &mut copy), UsersDiff::Full(_)));
}
