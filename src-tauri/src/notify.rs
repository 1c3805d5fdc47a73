//! A desktop notification when someone you starred comes online ("Bob is
//! online in general").
//!
//! What counts as coming online is decided from the list's diffs, which
//! name only the people who changed: a starred person who was not in the
//! list (including one under last seen) and now is ([`arrivals`]). Never
//! you, never someone whose connection merely dropped and came back (they
//! stay in the list meanwhile), and never from a full list: the first one
//! after connecting or reconnecting would otherwise announce everyone
//! already there, and one that replaces missed diffs cannot tell who just
//! came from who was there all along.
//!
//! Every window sees the same arrival on its own connection, so the app
//! keeps one [`Notifier`] for all of them: at most one notification per
//! person per [`PER_PERSON_MS`], which both merges the windows' copies into
//! one and keeps a flapping connection from spamming. Nothing is shown
//! while the setting is off or while you are "Do not disturb".
//!
//! Notifications go to a [`Sink`]: the desktop's notification service
//! (through Tauri's notification plugin), or, for tests, a file that gets
//! one JSON line per notification ([`LOG_ENV`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use mesh_client::presence::Presence;
use serde::Serialize;
use tauri::{AppHandle, Manager, Runtime};

use crate::error::lock;
use crate::list_view::ListView;
use crate::my_state;
use crate::state::AppState;
use crate::user_list::ListDiff;

/// The environment variable naming a file that gets each notification as a
/// JSON line instead of the desktop showing it: the seam tests use.
pub const LOG_ENV: &str = "MESH_PRESENCE_NOTIFY_LOG";

/// The shortest time between two notifications about the same person.
pub const PER_PERSON_MS: u64 = 60_000;

/// A starred person who came online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// Their user id.
    pub id: String,
    /// Their name (their id when they have none).
    pub name: String,
    /// Their status text.
    pub status: String,
}

/// The starred people `diff` brings into `list`, looked at before it is
/// applied. Costs a set lookup per starred row of the diff, nothing for
/// anyone else; a full list brings no one (see the module's comment).
pub fn arrivals(list: &ListView, diff: &ListDiff) -> Vec<Arrival> {
    if diff.full {
        return Vec::new();
    }
    diff.upsert
        .iter()
        .filter(|row| row.starred && !row.you && row.tab_count > 0)
        .filter(|row| list.list().get(&row.id).is_none())
        .map(|row| Arrival {
            id: row.id.clone(),
            name: if row.username.is_empty() {
                row.id.clone()
            } else {
                row.username.clone()
            },
            status: row.status.clone(),
        })
        .collect()
}

/// One notification, as shown (and as the seam's file records it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Who came online.
    pub user_id: String,
    /// The room they came to.
    pub room: String,
    /// "Bob is online in general".
    pub title: String,
    /// Their status, if any.
    pub body: String,
}

impl Notification {
    /// The notification about `arrival` in `room`.
    pub fn new(arrival: &Arrival, room: &str) -> Self {
        Notification {
            user_id: arrival.id.clone(),
            room: room.to_string(),
            title: format!("{} is online in {room}", arrival.name),
            body: arrival.status.clone(),
        }
    }
}

/// When each person was last announced, to announce them at most once per
/// [`PER_PERSON_MS`]. Holds only the last minute's people, and only
/// starred ones, so it stays as small as the star list at most.
#[derive(Debug, Default)]
pub struct RateLimit {
    sent: HashMap<String, u64>,
}

impl RateLimit {
    /// Whether `id` may be announced at `now_ms`; if so, it is recorded.
    pub fn admit(&mut self, id: &str, now_ms: u64) -> bool {
        self.sent
            .retain(|_, at| now_ms.saturating_sub(*at) < PER_PERSON_MS);
        if self.sent.contains_key(id) {
            return false;
        }
        self.sent.insert(id.to_string(), now_ms);
        true
    }

    /// How many people were announced in the last [`PER_PERSON_MS`] (as of
    /// the last call to [`RateLimit::admit`]).
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether no one was.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// What to show for `arrivals` in `room` at `now_ms`: nothing when `enabled`
/// is off or you are "Do not disturb" (`dnd`), else one notification per
/// person that `limit` admits.
pub fn decide(
    limit: &mut RateLimit,
    arrivals: &[Arrival],
    room: &str,
    now_ms: u64,
    enabled: bool,
    dnd: bool,
) -> Vec<Notification> {
    if !enabled || dnd {
        return Vec::new();
    }
    arrivals
        .iter()
        .filter(|a| limit.admit(&a.id, now_ms))
        .map(|a| Notification::new(a, room))
        .collect()
}

/// Where notifications go.
pub trait Sink: Send + Sync {
    /// Shows `notification` (or records it).
    fn show(&self, notification: &Notification) -> Result<(), String>;
}

/// The seam: each notification appended to a file as a JSON line.
pub struct LogFile(pub PathBuf);

impl Sink for LogFile {
    fn show(&self, notification: &Notification) -> Result<(), String> {
        let mut line = serde_json::to_string(notification).map_err(|e| e.to_string())?;
        line.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            // One write per line, so lines from two windows never interleave.
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .map_err(|e| format!("{}: {e}", self.0.display()))
    }
}

/// The desktop's notification service, through Tauri's notification
/// plugin (which sends on its own task: showing does not wait for it).
pub struct Desktop<R: Runtime>(pub AppHandle<R>);

impl<R: Runtime> Sink for Desktop<R> {
    fn show(&self, notification: &Notification) -> Result<(), String> {
        use tauri_plugin_notification::NotificationExt;

        let mut builder = self.0.notification().builder().title(&notification.title);
        if !notification.body.is_empty() {
            builder = builder.body(&notification.body);
        }
        builder.show().map_err(|e| e.to_string())
    }
}

/// The sink for this desktop: the file named by [`LOG_ENV`], else the
/// notification plugin; `Err` says why notifications cannot be shown here
/// (the permission is denied, or no notification service runs).
pub fn system_sink<R: Runtime>(app: &AppHandle<R>) -> Result<Box<dyn Sink>, String> {
    if let Some(path) = std::env::var_os(LOG_ENV) {
        return Ok(Box::new(LogFile(path.into())));
    }
    use tauri::plugin::PermissionState;
    use tauri_plugin_notification::NotificationExt;

    match app.notification().permission_state() {
        Ok(PermissionState::Granted) => {}
        Ok(PermissionState::Denied) => {
            return Err("This desktop does not allow the app to show notifications.".into())
        }
        // Desktops grant it without asking; a prompt would only come from
        // a page, and ours asks for nothing.
        Ok(_) => {}
        Err(e) => return Err(format!("Notifications are not available: {e}")),
    }
    #[cfg(all(unix, not(target_os = "macos")))]
    if !crate::tray::session_bus_offers("org.freedesktop.Notifications", true) {
        return Err("No notification service runs on this desktop.".into());
    }
    // A click on a notification brings the app up, as the tray's Show
    // window does (the plugin only reports clicks once a handler is set).
    let handle = app.clone();
    let clicked = app.notification().on_action(move |performed| {
        if performed.action_id() == "tap" {
            tracing::info!("notification clicked: showing a window");
            crate::show_window(&handle);
        }
    });
    if let Err(e) = clicked {
        tracing::warn!(error = %e, "clicks on notifications will do nothing");
    }
    Ok(Box::new(Desktop(app.clone())))
}

/// The app's notifications: the rate limit every window shares, and where
/// notifications go.
#[derive(Default)]
pub struct Notifier {
    limit: Mutex<RateLimit>,
    sink: OnceLock<Result<Box<dyn Sink>, String>>,
}

impl Notifier {
    /// Sends notifications to `sink` from now on; `Err` says why there can
    /// be none (the settings panel shows it). Only the first call counts.
    pub fn set_sink(&self, sink: Result<Box<dyn Sink>, String>) {
        if let Err(e) = &sink {
            tracing::info!(reason = %e, "notifications are not available");
        }
        let _ = self.sink.set(sink);
    }

    /// Why notifications cannot be shown, if they cannot.
    pub fn unavailable(&self) -> Option<String> {
        match self.sink.get() {
            Some(Err(e)) => Some(e.clone()),
            Some(Ok(_)) => None,
            None => Some("Notifications are not set up.".into()),
        }
    }

    /// Announces `arrivals` in `room` as [`decide`] says, and returns what
    /// was shown.
    pub fn announce(
        &self,
        arrivals: &[Arrival],
        room: &str,
        now_ms: u64,
        enabled: bool,
        dnd: bool,
    ) -> Vec<Notification> {
        let Some(Ok(sink)) = self.sink.get() else {
            return Vec::new();
        };
        let shown = decide(&mut lock(&self.limit), arrivals, room, now_ms, enabled, dnd);
        for notification in &shown {
            tracing::info!(user = %notification.user_id, room, "starred person online");
            if let Err(e) = sink.show(notification) {
                tracing::warn!(error = %e, "could not show a notification");
            }
        }
        shown
    }
}

/// Announces what a frame of `presence`'s diffs brought (see [`arrivals`]),
/// with the app's settings and your availability as they are now.
pub fn announce<R: Runtime>(app: &AppHandle<R>, presence: &Presence, arrived: Vec<Arrival>) {
    if arrived.is_empty() {
        return;
    }
    let Some(state) = app.try_state::<AppState>() else {
        return;
    };
    let enabled = state.store().settings().notify_starred;
    let mine = presence.read().ok().flatten();
    let dnd = my_state::availability(mine.as_ref()) == "dnd";
    let now = mesh_protocol::now_millis();
    state
        .notifier()
        .announce(&arrived, presence.room(), now, enabled, dnd);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::user_list::UserRow;

    fn row(id: &str, starred: bool) -> UserRow {
        UserRow {
            id: id.into(),
            username: id.to_uppercase(),
            tab_count: 1,
            you: id == "me",
            starred,
            ..UserRow::default()
        }
    }

    fn changed(upsert: Vec<UserRow>, remove: &[&str]) -> ListDiff {
        ListDiff {
            full: false,
            upsert,
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ids(arrivals: &[Arrival]) -> Vec<&str> {
        arrivals.iter().map(|a| a.id.as_str()).collect()
    }

    /// Applies `diff` to `list` and returns who it brought.
    fn step(list: &mut ListView, diff: ListDiff) -> Vec<Arrival> {
        let arrived = arrivals(list, &diff);
        list.apply(diff);
        arrived
    }

    #[test]
    fn the_first_list_and_a_reconnect_announce_no_one() {
        let mut list = ListView::new();
        let first = ListDiff {
            full: true,
            upsert: vec![row("me", false), row("bob", true)],
            remove: vec![],
        };
        assert!(step(&mut list, first.clone()).is_empty(), "already there");
        // Our own reconnect: a full list again, with newcomers too.
        let mut again = first;
        again.upsert.push(row("ada", true));
        assert!(step(&mut list, again).is_empty());
    }

    #[test]
    fn a_starred_person_who_comes_is_announced_once_whatever_they_do_while_here() {
        let mut list = ListView::new();
        step(
            &mut list,
            ListDiff {
                full: true,
                upsert: vec![row("me", false)],
                remove: vec![],
            },
        );
        let came = step(
            &mut list,
            changed(vec![row("bob", true), row("carol", false)], &[]),
        );
        assert_eq!(ids(&came), ["bob"], "only the starred one");
        assert_eq!(came[0].name, "BOB");

        // A status change, or their connection dropping and coming back
        // (no tabs while they reconnect), is not coming online.
        let mut busy = row("bob", true);
        busy.status = "busy".into();
        assert!(step(&mut list, changed(vec![busy], &[])).is_empty());
        let mut reconnecting = row("bob", true);
        reconnecting.tab_count = 0;
        assert!(step(&mut list, changed(vec![reconnecting], &[])).is_empty());
        assert!(step(&mut list, changed(vec![row("bob", true)], &[])).is_empty());

        // Gone (into last seen) and back: that is coming online.
        assert!(step(&mut list, changed(vec![], &["bob"])).is_empty());
        assert_eq!(
            ids(&step(&mut list, changed(vec![row("bob", true)], &[]))),
            ["bob"]
        );
    }

    #[test]
    fn your_own_windows_never_are_and_a_name_falls_back_to_the_id() {
        let mut list = ListView::new();
        step(
            &mut list,
            ListDiff {
                full: true,
                upsert: vec![],
                remove: vec![],
            },
        );
        // Even if a star slipped onto your row, you are never announced.
        let mut me = row("me", true);
        me.tab_count = 2;
        let mut nameless = row("conn-1", true);
        nameless.username.clear();
        let came = step(&mut list, changed(vec![me, nameless], &[]));
        assert_eq!(ids(&came), ["conn-1"]);
        assert_eq!(came[0].name, "conn-1");
    }

    fn arrival(id: &str) -> Arrival {
        Arrival {
            id: id.into(),
            name: id.to_uppercase(),
            status: "here".into(),
        }
    }

    #[test]
    fn a_flapping_person_is_announced_at_most_once_a_minute() {
        let mut limit = RateLimit::default();
        let mut shown = 0;
        // Comes back every 5 s for 3 minutes.
        for t in (0..180_000).step_by(5_000) {
            shown += decide(&mut limit, &[arrival("bob")], "general", t, true, false).len();
        }
        assert_eq!(shown, 3);
        // Others are not held back by him, and the limit forgets the past.
        let n = decide(
            &mut limit,
            &[arrival("ada"), arrival("bob")],
            "r",
            180_000,
            true,
            false,
        );
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].title, "ADA is online in r");
        assert_eq!(n[0].body, "here");
        decide(
            &mut limit,
            &[arrival("carol")],
            "r",
            10 * PER_PERSON_MS,
            true,
            false,
        );
        assert_eq!(limit.len(), 1, "only the last minute is kept");
    }

    #[test]
    fn off_or_do_not_disturb_shows_nothing_and_spends_nothing() {
        let mut limit = RateLimit::default();
        assert!(decide(&mut limit, &[arrival("bob")], "r", 0, false, false).is_empty());
        assert!(decide(&mut limit, &[arrival("bob")], "r", 0, true, true).is_empty());
        assert_eq!(
            decide(&mut limit, &[arrival("bob")], "r", 1, true, false).len(),
            1
        );
    }

    /// A sink that remembers.
    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<Notification>>>);

    impl Sink for Recorder {
        fn show(&self, n: &Notification) -> Result<(), String> {
            lock(&self.0).push(n.clone());
            Ok(())
        }
    }

    #[test]
    fn windows_share_one_notifier_so_an_arrival_is_shown_once() {
        let notifier = Notifier::default();
        assert!(notifier.unavailable().is_some(), "no sink yet");
        assert!(notifier
            .announce(&[arrival("bob")], "r", 0, true, false)
            .is_empty());
        let recorder = Recorder::default();
        notifier.set_sink(Ok(Box::new(recorder.clone())));
        assert_eq!(notifier.unavailable(), None);
        // Two windows see Bob come in the same moment.
        notifier.announce(&[arrival("bob")], "r", 10, true, false);
        notifier.announce(&[arrival("bob")], "r", 12, true, false);
        assert_eq!(lock(&recorder.0).len(), 1);

        let without = Notifier::default();
        without.set_sink(Err("No notification service runs on this desktop.".into()));
        assert_eq!(
            without.unavailable().as_deref(),
            Some("No notification service runs on this desktop.")
        );
        assert!(without
            .announce(&[arrival("bob")], "r", 0, true, false)
            .is_empty());
    }

    #[test]
    fn the_seam_appends_one_json_line_per_notification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notifications.jsonl");
        let log = LogFile(path.clone());
        let n = Notification::new(&arrival("bob"), "general");
        log.show(&n).unwrap();
        log.show(&n).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["userId"], "bob");
        assert_eq!(lines[0]["title"], "BOB is online in general");
        assert_eq!(lines[0]["room"], "general");
        let err = LogFile(dir.path().join("no/such/dir"))
            .show(&n)
            .unwrap_err();
        assert!(err.contains("no/such/dir"), "{err}");
    }
}
