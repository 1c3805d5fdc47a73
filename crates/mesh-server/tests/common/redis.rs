//! Redis for the tests. `scripts/test.sh` (and so CI) starts one
//! redis-server and exports `MESH_TEST_REDIS_URL`; a plain `cargo test`
//! without it starts a private redis-server for this test binary. Either
//! way every test gets its own key prefix, so tests share one Redis without
//! seeing each other. Without both the variable and `redis-server`, the
//! Redis tests fail with a message saying so: they are never skipped.

use mesh_server::{RedisBackend, RedisConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable `scripts/test.sh` sets.
pub const URL_VAR: &str = "MESH_TEST_REDIS_URL";

/// The Redis every test of this binary uses.
pub fn url() -> String {
    if let Ok(url) = std::env::var(URL_VAR) {
        return url;
    }
    static PRIVATE: OnceLock<RedisServer> = OnceLock::new();
    PRIVATE.get_or_init(RedisServer::start).url()
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test-{:016x}:", rand::random::<u64>())
}

/// A backend on the tests' Redis under `prefix`.
pub async fn backend(prefix: &str) -> RedisBackend {
    backend_at(&url(), prefix).await
}

/// A backend on the Redis at `url` under `prefix`.
pub async fn backend_at(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::with_config(RedisConfig::new(url).prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("cannot use redis at {url}: {e}"))
}

/// A redis-server listening on a Unix socket in a fresh directory (no
/// port to collide on), stopped when this value is dropped or, at the
/// latest, when the test process exits.
pub struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("mesh-redis-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("create a directory for redis-server");
        let mut server = RedisServer { dir, child: None };
        server.spawn();
        server
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// `unix://` URL of the server.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn spawn(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        // The shell stops redis-server once our end of its stdin closes,
        // which happens when this process exits, however it exits.
        let script = format!(
            "redis-server --port 0 --unixsocket '{}' --save '' --appendonly no --daemonize no \
             >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -9 $pid",
            socket.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .spawn()
            .expect("start sh for redis-server");
        self.child = Some(child);
        wait_for_socket(&socket);
    }

    /// Kills the server (as a crash would) and starts a new, empty one at
    /// the same address.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing stdin makes the shell kill -9 redis-server.
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded) for redis-server to accept connections on `socket`.
fn wait_for_socket(socket: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start. The Redis tests need either {URL_VAR} \
             (scripts/test.sh sets it) or redis-server on PATH (Debian: apt-get install redis-server)"
        );
        // redis-server has no readiness signal to await; poll its socket.
        std::thread::sleep(Duration::from_millis(20));
    }
}
