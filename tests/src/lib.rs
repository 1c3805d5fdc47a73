//! Support for driving the built Mesh Presence app in its real window.
//!
//! * [`webdriver`]: a small W3C WebDriver client (the endpoints we use).
//! * [`app`]: launches the app through `tauri-driver` with its own data
//!   directories, and reads and operates the UI the way a user would.
//! * [`wait_for`]: polls a condition until it holds or a deadline passes. The
//!   page offers no event a test can await across the WebDriver boundary, so
//!   polling with a generous deadline is how WebDriver tests wait.

#![warn(missing_docs)]

pub mod app;
pub mod webdriver;

use std::time::{Duration, Instant};

/// How long UI conditions get to come true. Generous: the machine may be slow
/// and busy; a passing condition returns as soon as it holds.
pub const UI_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `check` every 50 ms until it returns `Some`, or fails with
/// `what` and the last observation after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(no observation)");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}
