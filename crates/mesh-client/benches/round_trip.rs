//! Request/response round trip (`mesh/noop`) from a `MeshClient` to a real
//! `mesh-server` on loopback: handle -> connection task -> socket -> server
//! -> socket -> connection task -> caller.
//!
//! `cargo bench -p mesh-client --bench round_trip`

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_client::{ClientOptions, MeshClient};
use mesh_server::{Server, TrackOptions};
use serde_json::json;
use std::time::Instant;

/// The figure that matters: a multi-threaded runtime, as in the app.
fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bench_on(c, "round_trip/noop", rt);
}

/// The same on one thread: the cost of the protocol path without
/// cross-thread wake-ups, for comparison.
fn round_trip_current_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    bench_on(c, "round_trip/noop_current_thread", rt);
}

fn bench_on(c: &mut Criterion, name: &str, rt: tokio::runtime::Runtime) {
    let (server, client) = rt.block_on(async {
        let server = Server::builder()
            .addr("127.0.0.1:0".parse().expect("addr"))
            .track_presence(".*", TrackOptions::default())
            .bind()
            .await
            .expect("server");
        let client = MeshClient::connect(&server.url(), ClientOptions::default())
            .await
            .expect("client");
        (server, client)
    });
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.request("mesh/noop", json!({})).await.expect("reply");
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(async {
        client.close().await;
        server.shutdown().await;
    });
}

criterion_group!(benches, round_trip, round_trip_current_thread);
criterion_main!(benches);
