//! Launching the built app under `tauri-driver` and using its window.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::webdriver::{Element, Session, WebDriverError};
use crate::{free_port, wait_for, UI_TIMEOUT};

/// The app binary: `$MESH_PRESENCE_APP`, or the workspace's debug build.
pub fn app_binary() -> PathBuf {
    built_binary("MESH_PRESENCE_APP", "mesh-presence")
}

/// The standalone server binary: `$MESH_SERVER_BIN`, or the workspace's
/// debug build.
pub fn server_binary() -> PathBuf {
    built_binary("MESH_SERVER_BIN", "mesh-server")
}

/// The binary named in the environment variable `env`, or `name` in the
/// workspace's debug build.
fn built_binary(env: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}

/// Where a test's screenshots and logs go: `test-output/e2e/<test>/`.
pub fn output_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../test-output/e2e")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("cannot create the test output directory");
    dir
}

/// Where an app started by a [`Driver`] on `data_dir` keeps its store file.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("data").join("dev.meshpresence.app")
}

/// One `tauri-driver` (and the WebKitWebDriver it runs), with the app's data
/// directories pointed at `data_dir` so that runs never share state. Several
/// app launches in a row with the same driver share that data, like restarts.
pub struct Driver {
    child: Child,
    url: String,
    /// The port the app's embedded server tries first.
    pub embedded_port: u16,
    data_dir: PathBuf,
    out: PathBuf,
    seams: Seams,
}

impl Driver {
    /// Starts the driver; app data lives under `data_dir`, logs go to `out`.
    /// The app writes its notifications to [`Driver::notify_log`].
    pub fn start(data_dir: &Path, out: &Path) -> Result<Driver, String> {
        Driver::start_with(data_dir, out, true)
    }

    /// [`Driver::start`], but the app sends its notifications to the
    /// desktop's notification service on the session bus, as it would for
    /// a user.
    pub fn start_with_desktop_notifications(data_dir: &Path, out: &Path) -> Result<Driver, String> {
        Driver::start_with(data_dir, out, false)
    }

    fn start_with(data_dir: &Path, out: &Path, notify_log: bool) -> Result<Driver, String> {
        let port = free_port();
        let native_port = free_port();
        let embedded_port = free_port();
        for dir in ["data", "config", "cache"] {
            fs::create_dir_all(data_dir.join(dir)).map_err(|e| e.to_string())?;
        }
        let log = fs::File::create(out.join("driver.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new("tauri-driver");
        let seams = Seams {
            data_dir: data_dir.to_path_buf(),
            embedded_port,
            notify_log,
        };
        seams.apply(&mut command);
        let child = command
            .arg("--port")
            .arg(port.to_string())
            .arg("--native-port")
            .arg(native_port.to_string())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("cannot start tauri-driver (is it on PATH?): {e}"))?;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            embedded_port,
            data_dir: data_dir.to_path_buf(),
            out: out.to_path_buf(),
            seams,
        };
        // tauri-driver listens before the WebKitWebDriver behind it does;
        // a session can only start once both accept connections.
        for (what, p) in [("tauri-driver", port), ("WebKitWebDriver", native_port)] {
            wait_for(&format!("{what} to listen"), UI_TIMEOUT, || {
                Ok(TcpStream::connect(("127.0.0.1", p)).ok().map(drop))
            })?;
        }
        Ok(driver)
    }

    /// Launches the app and waits until its page has loaded our script.
    /// What the app prints (its log) is appended to `app.log` in the output
    /// directory: WebKitWebDriver, which starts it, discards it.
    pub fn launch(&self) -> Result<App, String> {
        self.launch_with(&[])
    }

    /// [`Driver::launch`] with command-line arguments for the app.
    pub fn launch_with(&self, args: &[&str]) -> Result<App, String> {
        let binary = app_binary();
        if !binary.exists() {
            return Err(format!("app binary {} not built", binary.display()));
        }
        let launcher = self.logging_launcher(&binary)?;
        let session = Session::start(
            &self.url,
            json!({"browserName": "wry", "tauri:options": {"application": launcher, "args": args}}),
        )
        .map_err(|e| e.to_string())?;
        let app = App {
            session,
            out: self.out.clone(),
            ended: false,
        };
        wait_for("the page to load", UI_TIMEOUT, || {
            app.js("return !!(window.UserList && document.getElementById('connection'))")
                .map(|v| v.as_bool().unwrap_or(false).then_some(()))
        })?;
        Ok(app)
    }

    /// The file the app reads its idle time from (milliseconds, as text;
    /// missing: not idle): tests make the app idle without waiting.
    pub fn idle_file(&self) -> PathBuf {
        idle_file(&self.data_dir)
    }

    /// The file the app appends its desktop notifications to, one JSON
    /// line each, instead of showing them: tests read what it announced.
    pub fn notify_log(&self) -> PathBuf {
        notify_log(&self.data_dir)
    }

    /// The app binary as the desktop would start a second copy of it (say,
    /// to open a link), with the same data directories as the driver's.
    pub fn second_copy(&self, args: &[&str]) -> Command {
        let mut command = Command::new(app_binary());
        self.seams.apply(&mut command);
        command.args(args);
        command
    }

    /// A script that runs `binary` (same process, same arguments) with its
    /// output appended to `app.log`.
    fn logging_launcher(&self, binary: &Path) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let script = format!(
            "#!/bin/sh\nexec {} \"$@\" >>{} 2>&1\n",
            quote(binary),
            quote(&self.out.join("app.log"))
        );
        let path = self.out.join("mesh-presence.sh");
        fs::write(&path, script).map_err(|e| e.to_string())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

/// The environment an app started for a test runs in: its own data
/// directories, its own embedded-server port, our logs, and the files it
/// reads its idle time from and writes its notifications to.
struct Seams {
    data_dir: PathBuf,
    embedded_port: u16,
    /// Whether notifications go to [`Driver::notify_log`] (else to the
    /// desktop).
    notify_log: bool,
}

impl Seams {
    fn apply(&self, command: &mut Command) {
        let data_dir = &self.data_dir;
        command
            .env("XDG_DATA_HOME", data_dir.join("data"))
            .env("XDG_CONFIG_HOME", data_dir.join("config"))
            .env("XDG_CACHE_HOME", data_dir.join("cache"))
            .env("MESH_PRESENCE_PORT", self.embedded_port.to_string())
            .env("MESH_PRESENCE_IDLE_FILE", idle_file(data_dir))
            .env("RUST_LOG", "info,mesh_presence_app=debug");
        if self.notify_log {
            command.env("MESH_PRESENCE_NOTIFY_LOG", notify_log(data_dir));
        } else {
            command.env_remove("MESH_PRESENCE_NOTIFY_LOG");
        }
    }
}

fn idle_file(data_dir: &Path) -> PathBuf {
    data_dir.join("idle-ms")
}

fn notify_log(data_dir: &Path) -> PathBuf {
    data_dir.join("notifications.jsonl")
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Everything this driver started (WebKitWebDriver, the app, its web
        // processes), found before stopping it orphans them.
        let started = descendants(self.child.id());
        // SIGTERM lets tauri-driver stop the WebKitWebDriver it started.
        terminate(self.child.id());
        let mut exited = false;
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // An app whose session did not end cleanly (a failed test, a second
        // window still open) would outlive the driver: stop it too.
        for pid in started {
            terminate(pid);
        }
    }
}

fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// The processes below `root`, from the parent ids in /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // The parent id is the second field after the ")" ending the name.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A running app, seen through its main window.
pub struct App {
    session: Session,
    out: PathBuf,
    ended: bool,
}

/// One row of the user list as displayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The user id the row is keyed by.
    pub id: String,
    /// The name shown.
    pub name: String,
    /// The status shown ("idle" when none).
    pub status: String,
    /// The tab count text, e.g. "2 tabs".
    pub tabs: String,
    /// Whether the row is marked as you.
    pub you: bool,
    /// The remaining-time text of a short-lived status.
    pub expiry: String,
    /// Where the row is in the whole list, from 1 (its `aria-posinset`).
    pub position: usize,
    /// Whether the row is marked unverified.
    pub unverified: bool,
    /// What the row says after the name about availability ("busy",
    /// "away since 10:42"); empty when available.
    pub availability: String,
    /// Whether the row shows a filled star.
    pub starred: bool,
}

const ROWS_JS: &str =
    "return Array.from(document.querySelectorAll('.user-row:not([hidden])')).map(r => ({
  id: r.dataset.userId, name: r.querySelector('.name').textContent,
  status: r.querySelector('.user-status').textContent, tabs: r.querySelector('.tabs').textContent,
  you: r.classList.contains('you'), expiry: r.querySelector('.expiry').textContent,
  position: Number(r.getAttribute('aria-posinset')),
  unverified: r.classList.contains('unverified'),
  availability: r.querySelector('.availability-badge').textContent,
  starred: r.querySelector('.star').getAttribute('aria-pressed') === 'true' }))";

impl App {
    /// Runs what the tray menu item `id` does, through the `tray_menu`
    /// command: the same handler as the tray's (which cannot be clicked
    /// under Xvfb, where no desktop shows a tray).
    pub fn tray_menu(&self, id: &str) -> Result<(), String> {
        self.js(&format!(
            "return window.__TAURI__.core.invoke('tray_menu', {{id: {id:?}}}).then(() => true)"
        ))
        .map(drop)
    }

    /// Runs a script in the page.
    pub fn js(&self, script: &str) -> Result<Value, String> {
        self.session
            .execute(script, vec![])
            .map_err(|e| e.to_string())
    }

    /// The element matching `css`.
    pub fn find(&self, css: &str) -> Result<Element, String> {
        self.session.find(css).map_err(|e| e.to_string())
    }

    /// Replaces the text of input `css` with `text`, typed as keystrokes.
    pub fn fill(&self, css: &str, text: &str) -> Result<(), String> {
        let el = self.find(css)?;
        self.session.clear(&el).map_err(|e| e.to_string())?;
        if !text.is_empty() {
            self.session
                .type_text(&el, text)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Clicks `css`.
    pub fn click(&self, css: &str) -> Result<(), String> {
        let el = self.find(css)?;
        self.session.click(&el).map_err(|e| e.to_string())
    }

    /// The value of input `css`.
    pub fn value(&self, css: &str) -> Result<String, String> {
        let v = self.js(&format!("return document.querySelector({css:?}).value"))?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The text of `css`.
    pub fn text(&self, css: &str) -> Result<String, String> {
        let v = self.js(&format!(
            "return document.querySelector({css:?}).textContent"
        ))?;
        Ok(v.as_str().unwrap_or_default().trim().to_string())
    }

    /// The connection indicator: `connecting`, `online`, `reconnecting` or `offline`.
    pub fn connection(&self) -> Result<String, String> {
        let v = self.js("return document.getElementById('connection').dataset.status")?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Waits until the connection indicator shows `status`.
    pub fn wait_connection(&self, status: &str) -> Result<(), String> {
        wait_for(&format!("connection status {status}"), UI_TIMEOUT, || {
            let now = self.connection()?;
            if now == status {
                Ok(Some(()))
            } else {
                Err(format!("status is {now}"))
            }
        })
    }

    /// The rows currently rendered.
    pub fn rows(&self) -> Result<Vec<Row>, String> {
        let v = self.js(ROWS_JS)?;
        let rows = v.as_array().cloned().unwrap_or_default();
        Ok(rows
            .iter()
            .map(|r| Row {
                id: r["id"].as_str().unwrap_or_default().into(),
                name: r["name"].as_str().unwrap_or_default().into(),
                status: r["status"].as_str().unwrap_or_default().into(),
                tabs: r["tabs"].as_str().unwrap_or_default().into(),
                you: r["you"].as_bool().unwrap_or(false),
                expiry: r["expiry"].as_str().unwrap_or_default().into(),
                position: r["position"].as_u64().unwrap_or_default() as usize,
                unverified: r["unverified"].as_bool().unwrap_or(false),
                availability: r["availability"].as_str().unwrap_or_default().into(),
                starred: r["starred"].as_bool().unwrap_or(false),
            })
            .collect())
    }

    /// Waits until the rendered rows satisfy `check`, and returns them.
    pub fn wait_rows(
        &self,
        what: &str,
        check: impl Fn(&[Row]) -> bool,
    ) -> Result<Vec<Row>, String> {
        wait_for(what, UI_TIMEOUT, || {
            let rows = self.rows()?;
            if check(&rows) {
                Ok(Some(rows))
            } else {
                Err(format!("rows: {rows:?}"))
            }
        })
    }

    /// The server URL the window shows, without the "(embedded)" note.
    pub fn server_url(&self) -> Result<String, String> {
        let text = self.text("#server-url")?;
        Ok(text.trim_end_matches("(embedded)").trim().to_string())
    }

    /// Points the app at the server `url` through its settings panel and
    /// waits until it is online there.
    pub fn use_server(&self, url: &str, timeout: Duration) -> Result<(), String> {
        self.click("#open-settings")?;
        self.fill("#setting-server", url)?;
        self.click("#settings-save")?;
        wait_for("the app on the server", timeout, || {
            let shown = self.server_url()?;
            Ok((shown == url && self.connection()? == "online").then_some(()))
        })
    }

    /// Waits until the list's count shows `n` people.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> Result<(), String> {
        wait_for(&format!("{n} people in the list"), timeout, || {
            let shown = self.text("#count")?;
            if shown == n.to_string() {
                Ok(Some(()))
            } else {
                Err(format!("count {shown}"))
            }
        })
    }

    /// How many windows the app has open.
    pub fn window_count(&self) -> Result<usize, String> {
        self.session
            .window_handles()
            .map(|h| h.len())
            .map_err(|e| e.to_string())
    }

    /// Waits for a window other than the current one (a new one, or the
    /// first again when there are two) and sends the next commands to it.
    pub fn switch_to_other_window(&self) -> Result<(), String> {
        let current = self.session.window_handle().map_err(|e| e.to_string())?;
        let other = wait_for("another window", UI_TIMEOUT, || {
            let handles = self.session.window_handles().map_err(|e| e.to_string())?;
            Ok(handles.into_iter().find(|h| *h != current))
        })?;
        self.session
            .switch_to_window(&other)
            .map_err(|e| e.to_string())
    }

    /// Saves a screenshot of the window as `<step>.png` in the test output.
    pub fn screenshot(&self, step: &str) -> Result<(), String> {
        // WebKit answers a screenshot after the page's next paint. A page
        // with nothing changing (a settled list) never paints again, and
        // the request would wait until the transport gives up, so repaint
        // it for a moment with a change no one can see.
        self.js(REPAINT_FOR_SCREENSHOT)?;
        let png = self.session.screenshot().map_err(|e| e.to_string())?;
        fs::write(self.out.join(format!("{step}.png")), png).map_err(|e| e.to_string())
    }

    /// Closes the app (ends the WebDriver session).
    pub fn quit(mut self) -> Result<(), WebDriverError> {
        self.ended = true;
        self.session.end()
    }
}

/// Repaints the page on every frame for two seconds by flipping an
/// outline between two almost transparent shades.
const REPAINT_FOR_SCREENSHOT: &str = r#"
const root = document.documentElement;
const end = performance.now() + 2000;
const tick = (now) => {
  root.style.outline = root.style.outline.includes("0.01")
    ? "1px solid rgba(0, 0, 0, 0.02)"
    : "1px solid rgba(0, 0, 0, 0.01)";
  root.style.outlineOffset = "-1px";
  if (now < end) requestAnimationFrame(tick);
  else { root.style.outline = ""; root.style.outlineOffset = ""; }
};
requestAnimationFrame(tick);
"#;

impl Drop for App {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.session.end();
        }
    }
}
