//! Automatic away: after some minutes without keyboard or mouse input, your
//! state gets the away marker (`idleSince`, when you went idle), and loses
//! it when you are back. What you chose by hand (availability, status) is
//! never touched.
//!
//! How long you have been idle comes from an [`IdleSource`]: the X server's
//! screensaver extension ([`X11Idle`]), or, for tests, a file that holds the
//! idle time ([`FileIdle`], chosen with `MESH_PRESENCE_IDLE_FILE`), so that
//! a test flips the app away and back without waiting minutes.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tauri::{AppHandle, Manager, Runtime};

use crate::my_state::IDLE_SINCE;
use crate::state::AppState;

/// The environment variable that makes the app read its idle time from a
/// file (milliseconds, as text) instead of the desktop: the seam tests use.
pub const IDLE_FILE_ENV: &str = "MESH_PRESENCE_IDLE_FILE";

/// How often the idle time is read. Away is a matter of minutes; a few
/// seconds late is fine, and a read costs one round trip to the X server.
pub const POLL: Duration = Duration::from_secs(2);

/// Where the time since the last input comes from.
pub trait IdleSource: Send + Sync {
    /// Time since the user last touched the keyboard or mouse.
    fn idle_for(&self) -> Result<Duration, String>;
}

/// The idle source for this desktop: the file named by [`IDLE_FILE_ENV`],
/// or the X server's screensaver extension; `Err` says why there is none
/// (automatic away is then not available).
pub fn system_source() -> Result<Box<dyn IdleSource>, String> {
    if let Some(path) = std::env::var_os(IDLE_FILE_ENV) {
        return Ok(Box::new(FileIdle(path.into())));
    }
    #[cfg(target_os = "linux")]
    {
        X11Idle::connect().map(|x| Box::new(x) as Box<dyn IdleSource>)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("idle time is only read from X11 so far".into())
    }
}

/// Idle time read from a file holding milliseconds (a missing file is 0).
pub struct FileIdle(PathBuf);

impl IdleSource for FileIdle {
    fn idle_for(&self) -> Result<Duration, String> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Duration::from_millis)
                .map_err(|e| format!("{}: {e}", self.0.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Duration::ZERO),
            Err(e) => Err(format!("{}: {e}", self.0.display())),
        }
    }
}

/// The X server's idle time, from its MIT-SCREEN-SAVER extension, over one
/// connection kept open (x11rb speaks the protocol itself: no C library).
#[cfg(target_os = "linux")]
pub struct X11Idle {
    conn: x11rb::rust_connection::RustConnection,
    root: u32,
}

#[cfg(target_os = "linux")]
impl X11Idle {
    /// Connects to `$DISPLAY` and checks the extension is there. Wayland
    /// sessions without Xwayland, and X servers without the extension,
    /// get an error that says so.
    pub fn connect() -> Result<X11Idle, String> {
        use x11rb::connection::Connection;
        use x11rb::protocol::screensaver::ConnectionExt;

        let (conn, screen) = x11rb::connect(None)
            .map_err(|e| format!("no X display to read idle time from ({e})"))?;
        let root = conn.setup().roots[screen].root;
        conn.screensaver_query_version(1, 1)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| format!("the X server has no screensaver extension ({e})"))?;
        Ok(X11Idle { conn, root })
    }
}

#[cfg(target_os = "linux")]
impl IdleSource for X11Idle {
    fn idle_for(&self) -> Result<Duration, String> {
        use x11rb::protocol::screensaver::ConnectionExt;

        let info = self
            .conn
            .screensaver_query_info(self.root)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        Ok(Duration::from_millis(info.ms_since_user_input.into()))
    }
}

/// Reads the idle time every [`POLL`] and keeps the away marker of your
/// state in step: set while you are away (on whichever window's connection
/// is there, so a reconnect or another room gets it too), gone when you are
/// back. Runs as long as the app.
pub async fn keep_away_marker<R: Runtime>(app: AppHandle<R>, source: Box<dyn IdleSource>) {
    let mut tracker = AwayTracker::default();
    let mut failing = false;
    let mut applied = None;
    loop {
        tokio::time::sleep(POLL).await;
        let state = app.state::<AppState>();
        let minutes = state.store().settings().away_after_minutes;
        let after = (minutes > 0).then(|| Duration::from_secs(60 * u64::from(minutes)));
        match source.idle_for() {
            Ok(idle) => {
                failing = false;
                if let Some(change) = tracker.step(idle, after, mesh_protocol::now_millis()) {
                    tracing::info!(?change, "automatic away");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "could not read the idle time");
                }
                failing = true;
                continue;
            }
        }
        let Some(session) = state.any_session() else {
            continue;
        };
        // Only when something changed: the marker, or the connection
        // (a reconnect, another room) that must carry it.
        let wanted = (session.serial(), tracker.away_since());
        if applied == Some(wanted) {
            continue;
        }
        let marker = wanted.1.map(|since| json!(since));
        match session.set_field(IDLE_SINCE, marker).await {
            Ok(()) => applied = Some(wanted),
            Err(e) => tracing::debug!(error = %e, "could not update the away marker"),
        }
    }
}

/// What the away marker should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// You went idle at this time (ms since the epoch).
    Away(u64),
    /// You are back.
    Back,
}

/// Decides, one reading at a time, when you go away and come back.
#[derive(Debug, Default)]
pub struct AwayTracker {
    away_since: Option<u64>,
}

impl AwayTracker {
    /// Takes one reading: `idle` time without input, `after` the setting
    /// (`None`: automatic away is off), at `now_ms`. Returns a change
    /// only when the marker must change.
    pub fn step(&mut self, idle: Duration, after: Option<Duration>, now_ms: u64) -> Option<Change> {
        let idle_now = after.is_some_and(|after| idle >= after);
        match (self.away_since, idle_now) {
            (None, true) => {
                let since = now_ms.saturating_sub(idle.as_millis() as u64);
                self.away_since = Some(since);
                Some(Change::Away(since))
            }
            (Some(_), false) => {
                self.away_since = None;
                Some(Change::Back)
            }
            _ => None,
        }
    }

    /// When you went idle, while you are away.
    pub fn away_since(&self) -> Option<u64> {
        self.away_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn away_after_the_threshold_with_the_time_you_went_idle_and_back_on_input() {
        let mut t = AwayTracker::default();
        let now = 100 * 60_000;
        assert_eq!(t.step(9 * MIN, Some(10 * MIN), now), None);
        assert_eq!(
            t.step(10 * MIN, Some(10 * MIN), now),
            Some(Change::Away(90 * 60_000)),
            "idle since 10 minutes before now"
        );
        assert_eq!(
            t.step(11 * MIN, Some(10 * MIN), now + 60_000),
            None,
            "said once"
        );
        assert_eq!(t.away_since(), Some(90 * 60_000));
        assert_eq!(
            t.step(Duration::from_millis(300), Some(10 * MIN), now),
            Some(Change::Back)
        );
        assert_eq!(t.step(Duration::ZERO, Some(10 * MIN), now), None);
    }

    #[test]
    fn turning_it_off_brings_you_back() {
        let mut t = AwayTracker::default();
        assert!(t.step(20 * MIN, None, 0).is_none(), "off: never away");
        assert!(matches!(
            t.step(20 * MIN, Some(MIN), 30 * 60_000),
            Some(Change::Away(_))
        ));
        assert_eq!(t.step(20 * MIN, None, 0), Some(Change::Back));
    }

    #[test]
    fn a_file_gives_the_idle_time_and_a_missing_one_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let source = FileIdle(dir.path().join("idle"));
        assert_eq!(source.idle_for().unwrap(), Duration::ZERO);
        std::fs::write(dir.path().join("idle"), "600000\n").unwrap();
        assert_eq!(source.idle_for().unwrap(), 10 * MIN);
        std::fs::write(dir.path().join("idle"), "soon").unwrap();
        assert!(source.idle_for().is_err());
    }
}
