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
        self.child = Some(spawn_guarded(&format!(
            "redis-server --port 0 --unixsocket '{}' --save '' --appendonly no --daemonize no",
            socket.display()
        )));
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

/// Runs `command` (a redis-server) under a shell that kills it once our end
/// of the shell's stdin closes: when the `Child` is dropped or waited after
/// closing stdin, or when this process exits, however it exits.
fn spawn_guarded(command: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{command} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -9 $pid"
        ))
        .stdin(Stdio::piped())
        .spawn()
        .expect("start sh for redis-server")
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

/// The variable `scripts/test.sh` sets to the seed nodes of its Redis
/// Cluster (comma-separated `redis://HOST:PORT`).
pub const CLUSTER_VAR: &str = "MESH_TEST_REDIS_CLUSTER";

/// Seed nodes of the Redis Cluster every cluster test of this binary
/// uses: `scripts/test.sh`'s, or a private one started on first use.
pub fn cluster_urls() -> Vec<String> {
    if let Ok(urls) = std::env::var(CLUSTER_VAR) {
        return urls.split(',').map(str::to_string).collect();
    }
    static PRIVATE: OnceLock<RedisCluster> = OnceLock::new();
    PRIVATE.get_or_init(RedisCluster::start).urls()
}

/// A backend on the tests' Redis Cluster under `prefix`.
pub async fn cluster_backend(prefix: &str) -> RedisBackend {
    RedisBackend::with_config(RedisConfig::cluster(cluster_urls()).prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("cannot use the redis cluster {:?}: {e}", cluster_urls()))
}

/// A three-node Redis Cluster (three primaries, no replicas) on free
/// ports, each node in its own directory; stopped when dropped or, at the
/// latest, when the test process exits.
pub struct RedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl RedisCluster {
    /// Starts the nodes, joins them into one cluster and waits until it
    /// serves every slot.
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("mesh-cluster-{:016x}", rand::random::<u64>()));
        let ports = free_cluster_ports(3);
        let mut cluster = RedisCluster {
            dir,
            ports,
            nodes: Vec::new(),
        };
        for i in 0..cluster.ports.len() {
            let node = cluster.spawn(i);
            cluster.nodes.push(Some(node));
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let status = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn spawn(&self, i: usize) -> Child {
        let node_dir = self.dir.join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir).expect("create a node directory");
        let port = self.ports[i];
        let child = spawn_guarded(&format!(
            "cd '{}' && redis-server --port {port} --bind 127.0.0.1 --cluster-enabled yes \
             --cluster-node-timeout 2000 --save '' --appendonly no --daemonize no",
            node_dir.display()
        ));
        wait_for_port(port);
        child
    }

    /// Kills node `i` (as a crash would).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port, empty but with its cluster
    /// configuration, and waits until the cluster serves every slot.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node = self.spawn(i);
        self.nodes[i] = Some(node);
        self.wait_ok();
    }

    /// Waits (bounded) until every node reports `cluster_state:ok`.
    fn wait_ok(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for port in &self.ports {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli");
                let info = String::from_utf8_lossy(&out.stdout);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the redis cluster did not come up: node {port}: {info}"
                );
                // The cluster state has no readiness signal to await.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` free ports whose cluster bus ports (+10000) are free too. Both stay
/// below Linux's ephemeral range (32768 and up), so that no connection of a
/// test can take the port of a node that is being restarted.
fn free_cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port: u16 = 20000 + rand::random::<u16>() % 2700;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10000) {
            ports.push(port);
        }
    }
    ports
}

/// Waits (bounded) for a TCP port to accept connections.
fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start on port {port}"
        );
        // redis-server has no readiness signal to await; poll its port.
        std::thread::sleep(Duration::from_millis(20));
    }
}
