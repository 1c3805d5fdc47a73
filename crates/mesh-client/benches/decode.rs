//! Decoding `mesh/presence-update` frames the way the client's connection
//! task does (envelope, classification, typed update).
//!
//! `cargo bench -p mesh-client --bench decode`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mesh_client::incoming::{parse, Incoming};
use mesh_protocol::PresenceUpdate;
use serde_json::json;

/// A realistic mix: joins, leaves, and state changes with small objects.
fn frames() -> Vec<String> {
    (0..1000u64)
        .map(|n| {
            let connection_id = format!("inst-4f2a9c1e:{n}");
            let room_name = "lobby".to_string();
            let timestamp = 1_764_000_000_000 + n;
            let update = match n % 4 {
                0 => PresenceUpdate::Join { connection_id, room_name, timestamp },
                1 => PresenceUpdate::Leave { connection_id, room_name, timestamp },
                2 => PresenceUpdate::State { connection_id, room_name, state: None, timestamp },
                _ => PresenceUpdate::State {
                    connection_id,
                    room_name,
                    state: Some(json!({"userId": format!("user-{n}"), "username": "Alice", "status": "typing"})),
                    timestamp,
                },
            };
            update.to_frame_text()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let frames = frames();
    let max = mesh_protocol::DEFAULT_MAX_FRAME_BYTES;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("presence_update_x1000", |b| {
        b.iter(|| {
            for text in &frames {
                match parse(black_box(text), max) {
                    Ok(Incoming::Presence(update)) => {
                        black_box(update);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
