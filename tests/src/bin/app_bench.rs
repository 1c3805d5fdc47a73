//! Measures the desktop app: cold start to first rendered list, memory, and
//! the cost of rendering a 5k-user room that keeps changing.
//!
//! Run with `scripts/bench-app.sh`, which builds the release app and runs
//! this under Xvfb. `MESH_PRESENCE_APP` names the app binary; `USERS` sets
//! the room size (default 5000).

use std::time::{Duration, Instant};

use mesh_client::{ClientOptions, MeshClient};
use mesh_presence_e2e::app::{output_dir, Driver};
use mesh_presence_e2e::wait_for;
use serde_json::{json, Value};

const ROOM: &str = "general";

/// Installs timers around the list's `apply` (one backend event) and
/// `render` (one frame's DOM work), and a rAF loop recording frame gaps.
const INSTRUMENT_JS: &str = "
  const b = window.__bench = {apply: [], render: [], frames: []};
  const wrap = (name) => { const f = list[name].bind(list);
    list[name] = (...a) => { const t = performance.now(); const r = f(...a); b[name].push(performance.now() - t); return r; }; };
  wrap('apply'); wrap('render');
  let last = performance.now();
  const tick = (t) => { b.frames.push(t - last); last = t; if (!b.stop) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  return true;";

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

fn summary(name: &str, values: &Value) -> String {
    let mut v: Vec<f64> = values
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let n = v.len();
    format!(
        "{name}: n={n} p50={:.2} ms p95={:.2} ms p99={:.2} ms max={:.2} ms",
        percentile(&mut v, 0.5),
        percentile(&mut v, 0.95),
        percentile(&mut v, 0.99),
        percentile(&mut v, 1.0)
    )
}

/// Resident memory (kB) of the app process and of its WebKit helper
/// processes, found through /proc by parent pid.
fn rss_kb(app_binary: &str) -> (u64, u64) {
    let mut app = 0;
    let mut app_pids = Vec::new();
    let mut helpers = 0;
    let procs: Vec<(u32, u32, String, u64)> = std::fs::read_dir("/proc")
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
            let rss = field("VmRSS:").and_then(|v| v.parse().ok()).unwrap_or(0);
            let exe = std::fs::read_link(e.path().join("exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Some((pid, ppid, exe, rss))
        })
        .collect();
    for (pid, _, exe, rss) in &procs {
        if exe == app_binary {
            app += rss;
            app_pids.push(*pid);
        }
    }
    for (_, ppid, exe, rss) in &procs {
        if app_pids.contains(ppid) && exe.contains("WebKit") {
            helpers += rss;
        }
    }
    (app, helpers)
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users: usize = std::env::var("USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
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
    let (app_rss, web_rss) = rss_kb(&binary.display().to_string());
    println!(
        "RSS idle: app {} MB, WebKit helpers {} MB",
        app_rss / 1024,
        web_rss / 1024
    );

    // A room of `users` people, each a real connection to the embedded server.
    let url = app.server_url().expect("server url");
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
    let want = (users + 1).to_string();
    tokio::task::block_in_place(|| {
        wait_for(
            "the full room in the list",
            Duration::from_secs(120),
            || {
                let n = app.text("#count")?;
                if n == want {
                    Ok(Some(()))
                } else {
                    Err(format!("count {n}"))
                }
            },
        )
    })
    .expect("full list");
    let (app_rss, web_rss) = rss_kb(&binary.display().to_string());
    println!(
        "RSS with {users} users: app {} MB, WebKit helpers {} MB",
        app_rss / 1024,
        web_rss / 1024
    );
    let _ = app.screenshot("5k-users");

    // Keep it changing: 10 users change status every 10 ms for 5 s.
    app.js(INSTRUMENT_JS).expect("instrument");
    let start = Instant::now();
    let mut round = 0usize;
    while start.elapsed() < Duration::from_secs(5) {
        for k in 0..10 {
            let i = (round * 10 + k) * 7919 % users;
            let state = json!({"userId": format!("bench-{i:05}"), "username": format!("User {i:05}"), "status": format!("update {round}")});
            let c = clients[i].clone();
            tokio::spawn(async move { c.publish_presence_state(ROOM, state, None, false).await });
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = app
        .js("window.__bench.stop = true; return window.__bench;")
        .expect("stats");
    println!("{} status changes sent over 5 s", round * 10);
    println!("{}", summary("event apply (JS)", &stats["apply"]));
    println!("{}", summary("frame render (JS)", &stats["render"]));
    println!("{}", summary("frame interval (rAF)", &stats["frames"]));
    let _ = app.screenshot("5k-users-updating");
    drop(app);
    for c in clients {
        c.close().await;
    }
}
