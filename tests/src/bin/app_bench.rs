//! Measures the desktop app: cold start to first rendered list, memory (the
//! app process, WebKit's web and network processes), the cost of rendering a
//! 5k-user room that keeps changing and of scrolling it from top to bottom,
//! and the memory left once that room has emptied.
//!
//! Run with `scripts/bench-app.sh`, which builds the release app and server
//! and runs this under Xvfb. `MESH_PRESENCE_APP` names the app binary and
//! `MESH_SERVER_BIN` the standalone server; `USERS` sets the room size
//! (default 5000); `ROOM_SERVER=embedded` puts the room on the app's own
//! server instead of a standalone one; `SCROLL=0` skips the scroll.
//! `SCROLL_PAGE_JS` is a script (a WebDriver script body, ending in a
//! `return`) run in the page just before the scroll: it can replace a part of
//! the list (`window.fillRow`, `list.fetchWindow`, `list.render`) or add a
//! style, to measure what that part costs the scroll.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_client::{ClientOptions, MeshClient};
use mesh_presence_e2e::app::{output_dir, App, Driver};
use mesh_presence_e2e::wait_for;
use serde_json::{json, Value};

const ROOM: &str = "general";

/// Installs timers around the list's `apply` (one backend event) and
/// `render` (one frame's DOM work), and a rAF loop recording frame gaps and
/// each frame's main-thread work: from the start of its rAF callbacks to the
/// first task after them, which runs once style, layout and paint are done.
const INSTRUMENT_JS: &str = "
  const b = window.__bench = {apply: [], render: [], frames: [], work: []};
  if (!list.__wrapped) {
    list.__wrapped = true;
    const wrap = (name) => { const f = list[name].bind(list);
      list[name] = (...a) => { const t = performance.now(); const r = f(...a); window.__bench[name].push(performance.now() - t); return r; }; };
    wrap('apply'); wrap('render');
  }
  let last = null;
  const tick = (t) => { if (last !== null) b.frames.push(t - last); last = t;
    const s = performance.now(); setTimeout(() => b.work.push(performance.now() - s), 0);
    if (!b.stop) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  return true;";

/// How far the scroll phase moves the list each frame: ten rows, a fast
/// flick, so nearly every frame shows rows the last one did not.
const SCROLL_STEP_PX: u32 = 480;

/// Scrolls `#user-list` from the top to the bottom by `STEP` px a frame and
/// says when it is done. `short` counts frames the list drew with rows in
/// view whose data had not arrived yet, for a list that reports that.
const SCROLL_JS: &str = "
  const box = document.getElementById('user-list');
  const s = window.__scroll = {frames: 0, short: null, done: false};
  box.scrollTop = 0;
  const step = (t) => {
    s.frames++;
    if (typeof list.missing === 'number') s.short = (s.short || 0) + (list.missing > 0 ? 1 : 0);
    if (box.scrollTop + box.clientHeight >= box.scrollHeight - 1) { s.done = true; return; }
    box.scrollTop += STEP;
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
  return true;";

/// How long the page gets, once the room is empty, before its memory is read.
const EMPTIED_SECS: u64 = 5;

/// One display refresh at 60 Hz; a frame gap over 1.5 of these is a frame
/// that missed its refresh.
const REFRESH_MS: f64 = 1000.0 / 60.0;

/// The most main-thread work a frame may take and leave half of a refresh
/// to the rest of the system; frames at or over it are counted. The page's
/// clock has 1 ms steps, so a reading of 8 is a frame of 8 ms or more.
const WORK_BUDGET_MS: f64 = 8.0;

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

fn summary(name: &str, values: &Value) -> String {
    let mut v = numbers(values);
    let n = v.len();
    format!(
        "{name}: n={n} p50={:.2} ms p95={:.2} ms p99={:.2} ms max={:.2} ms",
        percentile(&mut v, 0.5),
        percentile(&mut v, 0.95),
        percentile(&mut v, 0.99),
        percentile(&mut v, 1.0)
    )
}

/// Kibibytes (as /proc reports them) in mebibytes.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Resident memory (kB) of the app process and of each kind of WebKit
/// helper it started (the web process, which runs the page, and the network
/// process), found through /proc by parent pid.
#[derive(Debug, Default, Clone, Copy)]
struct Rss {
    app: u64,
    web: u64,
    network: u64,
    /// Any other WebKit helper (a GPU process, when WebKit starts one).
    other: u64,
    /// The web process's RSS by kind: its own heap and stacks (anonymous),
    /// mapped files (code, fonts) and shared memory (the bitmaps it paints
    /// into and hands to the app): what grows tells what to look at.
    web_anon: u64,
    web_file: u64,
    web_shmem: u64,
}

impl Rss {
    fn read(app_binary: &str) -> Rss {
        let procs: Vec<(u32, u32, String, [u64; 4])> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let status = std::fs::read_to_string(e.path().join("status")).ok()?;
                let field = |k: &str| {
                    status
                        .lines()
                        .find(|l| l.starts_with(k))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .map(str::to_string)
                };
                let ppid = field("PPid:")?.parse().ok()?;
                let kb = |k: &str| field(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                let rss = [
                    kb("VmRSS:"),
                    kb("RssAnon:"),
                    kb("RssFile:"),
                    kb("RssShmem:"),
                ];
                let exe = std::fs::read_link(e.path().join("exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Some((pid, ppid, exe, rss))
            })
            .collect();
        let mut rss = Rss::default();
        let mut app_pids = Vec::new();
        for (pid, _, exe, kb) in &procs {
            if exe == app_binary {
                rss.app += kb[0];
                app_pids.push(*pid);
            }
        }
        for (_, ppid, exe, kb) in &procs {
            if !app_pids.contains(ppid) || !exe.contains("WebKit") {
                continue;
            }
            if exe.ends_with("WebKitWebProcess") {
                rss.web += kb[0];
                rss.web_anon += kb[1];
                rss.web_file += kb[2];
                rss.web_shmem += kb[3];
            } else if exe.ends_with("WebKitNetworkProcess") {
                rss.network += kb[0];
            } else {
                rss.other += kb[0];
            }
        }
        rss
    }

    fn helpers(&self) -> u64 {
        self.web + self.network + self.other
    }

    fn print(&self, when: &str) {
        let other = if self.other > 0 {
            format!(", other {:.1} MiB", mib(self.other))
        } else {
            String::new()
        };
        println!(
            "RSS {when}: app {:.1} MiB, WebKit helpers {:.1} MiB (web process {:.1} MiB [anon {:.1}, file {:.1}, shmem {:.1}], network process {:.1} MiB{other})",
            mib(self.app),
            mib(self.helpers()),
            mib(self.web),
            mib(self.web_anon),
            mib(self.web_file),
            mib(self.web_shmem),
            mib(self.network),
        );
    }
}

/// When the (single) app process started, in ms since the epoch: its start
/// (clock ticks after boot, 100 per second on Linux, from /proc/<pid>/stat)
/// against the time since boot now (/proc/uptime), both 10 ms resolution.
fn process_start_epoch_ms(app_binary: &str) -> Option<f64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        if exe.map(|p| p.display().to_string()).as_deref() != Some(app_binary) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // Field 22 (starttime), counted after the ")" that ends the name.
        let after = stat.rsplit_once(')')?.1;
        let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64()
            * 1000.0;
        return Some(now_ms - (uptime - start_ticks / 100.0) * 1000.0);
    }
    None
}

/// The numbers in a JSON array (none when it is not one).
fn numbers(values: &Value) -> Vec<f64> {
    values
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// CPU time (clock ticks) used so far by every process, with its name, so
/// a phase can say who kept the two cores busy.
fn cpu_ticks() -> HashMap<u32, (String, u64)> {
    let mut by_pid = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(')')) else {
            continue;
        };
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        by_pid.insert(pid, (name.to_string(), ticks(11) + ticks(12)));
    }
    by_pid
}

/// Records the page's frames while `during` runs, and prints them with the
/// CPU each busy program used meanwhile.
async fn frames<F: std::future::Future<Output = ()>>(app: &App, label: &str, during: F) {
    app.js(INSTRUMENT_JS).expect("instrument");
    let (cpu_before, t) = (cpu_ticks(), Instant::now());
    during.await;
    let (cpu_after, secs) = (cpu_ticks(), t.elapsed().as_secs_f64());
    let stats = app
        .js("window.__bench.stop = true; return window.__bench;")
        .expect("stats");
    let gaps = numbers(&stats["frames"]);
    let late = gaps.iter().filter(|&&g| g > 1.5 * REFRESH_MS).count();
    let work = numbers(&stats["work"]);
    let over = work.iter().filter(|&&w| w >= WORK_BUDGET_MS).count();
    println!("{label}:");
    println!("  {}", summary("event apply (JS)", &stats["apply"]));
    println!("  {}", summary("frame render (JS)", &stats["render"]));
    println!("  {}", summary("frame work (main thread)", &stats["work"]));
    println!("  {}", summary("frame interval (rAF)", &stats["frames"]));
    println!(
        "  frames that missed a 60 Hz refresh: {late} of {} ({:.1}%)",
        gaps.len(),
        100.0 * late as f64 / gaps.len().max(1) as f64
    );
    println!(
        "  frames whose work took {WORK_BUDGET_MS} ms or more: {over} of {} ({:.1}%)",
        work.len(),
        100.0 * over as f64 / work.len().max(1) as f64
    );
    // By pid, then summed by name: a kernel worker renames itself with the
    // work it is doing, so names alone do not match across snapshots.
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    for (pid, (name, after)) in &cpu_after {
        let before = cpu_before.get(pid).map_or(0, |(_, t)| *t);
        let name = name.split('/').next().unwrap_or(name);
        *by_name.entry(name).or_insert(0) += after.saturating_sub(before);
    }
    // 100 ticks per second, so ticks per second is % of one core.
    let mut busy: Vec<(f64, &str)> = by_name
        .into_iter()
        .map(|(name, used)| (used as f64 / secs, name))
        .filter(|(pct, _)| *pct >= 2.0)
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    let busy: Vec<String> = busy
        .iter()
        .map(|(pct, name)| format!("{name} {pct:.0}%"))
        .collect();
    println!("  CPU (% of one core): {}", busy.join(", "));
}

/// Starts the standalone `mesh-server` on a free port; returns it and its URL.
fn standalone_server() -> (Child, String) {
    let bin =
        std::env::var("MESH_SERVER_BIN").expect("MESH_SERVER_BIN names the mesh-server binary");
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--track", ROOM])
        // Every simulated user comes from this one address.
        .args(["--max-connections-per-ip", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("mesh-server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        let line = lines.next().expect("server log ended").expect("log line");
        if let Some(start) = line.find("ws://") {
            let rest = &line[start..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            break rest[..end].to_string();
        }
    };
    // Keep draining so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users: usize = std::env::var("USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let update_secs: u64 = std::env::var("UPDATE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let embedded = std::env::var("ROOM_SERVER").as_deref() == Ok("embedded");
    let scroll = std::env::var("SCROLL").as_deref() != Ok("0");
    let out = output_dir("bench");
    let data = tempfile::tempdir().expect("temp dir");
    let driver = Driver::start(data.path(), &out).expect("tauri-driver");
    let binary = mesh_presence_e2e::app::app_binary()
        .canonicalize()
        .expect("app binary");

    // Cold start: from asking for the app to seeing our own row.
    let t0 = Instant::now();
    let app = tokio::task::block_in_place(|| driver.launch()).expect("launch");
    tokio::task::block_in_place(|| {
        app.wait_rows("first rendered list", |rows| rows.iter().any(|r| r.you))
    })
    .expect("first list");
    let cold = t0.elapsed();
    println!(
        "launch request to first rendered list (incl. WebDriver): {} ms",
        cold.as_millis()
    );
    let first_list_epoch_ms = app
        .js("const m = performance.getEntriesByName('mesh:first-list')[0]; return m ? performance.timeOrigin + m.startTime : null;")
        .expect("first-list mark")
        .as_f64()
        .expect("the page marked its first list");
    if let Some(start_ms) = process_start_epoch_ms(&binary.display().to_string()) {
        println!(
            "app process start to first rendered list: {:.0} ms",
            first_list_epoch_ms - start_ms
        );
    }
    let binary = binary.display().to_string();
    let idle = Rss::read(&binary);
    idle.print("idle");

    // The floor: frames of the idle window, nothing changing.
    frames(
        &app,
        "idle window, 3 s",
        tokio::time::sleep(Duration::from_secs(3)),
    )
    .await;

    // A room of `users` people, each a real connection. By default the room
    // lives on a standalone server, as a 5k room would: the app then does
    // only what it does for its user (one connection, the list, the page).
    let mut server = None;
    let url = if embedded {
        app.server_url().expect("server url")
    } else {
        let (child, url) = standalone_server();
        server = Some(child);
        tokio::task::block_in_place(|| app.use_server(&url, Duration::from_secs(20)))
            .expect("online on the standalone server");
        url
    };
    println!(
        "room on the {} server",
        if embedded {
            "app's embedded"
        } else {
            "standalone"
        }
    );
    let t = Instant::now();
    let mut clients = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(200) {
        let joins = chunk.iter().map(|&i| {
            let url = url.clone();
            async move {
                let c = MeshClient::connect(&url, ClientOptions::default()).await?;
                c.join_room(ROOM).await?;
                let state = json!({"userId": format!("bench-{i:05}"), "username": format!("User {i:05}"), "status": "here"});
                c.publish_presence_state(ROOM, state, None, false).await?;
                Ok::<_, mesh_client::ClientError>(c)
            }
        });
        for c in futures_util::future::join_all(joins).await {
            clients.push(c.expect("bench client"));
        }
    }
    println!("{users} users connected in {} ms", t.elapsed().as_millis());
    tokio::task::block_in_place(|| app.wait_count(users + 1, Duration::from_secs(120)))
        .expect("full list");
    let full = Rss::read(&binary);
    full.print(&format!("with {users} users"));

    frames(
        &app,
        &format!("{users}-user room, still, 3 s"),
        tokio::time::sleep(Duration::from_secs(3)),
    )
    .await;
    // After the still frames: a WebDriver screenshot makes the page render
    // one long frame of its own.
    let _ = app.screenshot("5k-users");

    // Keep it changing: 10 users change status every 10 ms for 5 s.
    let changes = async {
        let start = Instant::now();
        let mut round = 0usize;
        while start.elapsed() < Duration::from_secs(update_secs) {
            for k in 0..10 {
                let i = (round * 10 + k) * 7919 % users;
                let state = json!({"userId": format!("bench-{i:05}"), "username": format!("User {i:05}"), "status": format!("update {round}")});
                let c = clients[i].clone();
                tokio::spawn(
                    async move { c.publish_presence_state(ROOM, state, None, false).await },
                );
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("{} status changes sent over {update_secs} s", round * 10);
    };
    frames(
        &app,
        &format!("{users}-user room, 10 changes every 10 ms, {update_secs} s"),
        changes,
    )
    .await;
    let changed = Rss::read(&binary);
    changed.print("after the changes");
    let _ = app.screenshot("5k-users-updating");

    // Scroll the whole list, top to bottom, as fast as a flick would
    // (unless SCROLL=0: then the emptied room's memory is that of the room
    // alone).
    let scrolled = if scroll {
        frames(
            &app,
            &format!("{users}-user room, scrolled top to bottom, {SCROLL_STEP_PX} px a frame"),
            async {
                if let Ok(script) = std::env::var("SCROLL_PAGE_JS") {
                    app.js(&script).expect("SCROLL_PAGE_JS runs in the page");
                }
                app.js(&SCROLL_JS.replace("STEP", &SCROLL_STEP_PX.to_string()))
                    .expect("scroll");
                tokio::task::block_in_place(|| {
                    wait_for(
                        "the scroll to reach the bottom",
                        Duration::from_secs(120),
                        || {
                            let done = app.js("return window.__scroll.done")?;
                            Ok(done.as_bool().unwrap_or(false).then_some(()))
                        },
                    )
                })
                .expect("scrolled");
            },
        )
        .await;
        let scroll = app.js("return window.__scroll").expect("scroll stats");
        let short = scroll["short"]
            .as_u64()
            .map_or("n/a".to_string(), |n| n.to_string());
        println!(
            "  frames drawn before their rows arrived: {short} of {}",
            scroll["frames"]
        );
        let scrolled = Rss::read(&binary);
        scrolled.print("after scrolling");
        scrolled
    } else {
        changed
    };

    // Everyone leaves; the page should give back what the room cost it.
    let t = Instant::now();
    for c in clients {
        c.close().await;
    }
    tokio::task::block_in_place(|| app.wait_count(1, Duration::from_secs(120)))
        .expect("empty room");
    println!("room emptied in {} ms", t.elapsed().as_millis());
    tokio::time::sleep(Duration::from_secs(EMPTIED_SECS)).await;
    let emptied = Rss::read(&binary);
    emptied.print(&format!("{EMPTIED_SECS} s after the room emptied"));
    // And later, to tell memory the page keeps from memory not yet returned.
    tokio::time::sleep(Duration::from_secs(2 * EMPTIED_SECS)).await;
    Rss::read(&binary).print(&format!("{} s after the room emptied", 3 * EMPTIED_SECS));
    let against_idle = |rss: &Rss| mib(rss.helpers()) - mib(idle.helpers());
    let scrolled = if scroll {
        format!(", after scrolling {:+.1} MiB", against_idle(&scrolled))
    } else {
        String::new()
    };
    println!(
        "WebKit helpers against idle: with {users} users {:+.1} MiB, after the changes {:+.1} MiB{scrolled}, {EMPTIED_SECS} s after the room emptied {:+.1} MiB",
        against_idle(&full),
        against_idle(&changed),
        against_idle(&emptied),
    );
    drop(app);
    if let Some(mut child) = server {
        let _ = child.kill();
        let _ = child.wait();
    }
}
