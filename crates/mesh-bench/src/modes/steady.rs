//! Steady mode: states published at a fixed delivery rate, to measure
//! latency under load.

use super::{micros_since, print_latency};
use crate::args::Args;
use crate::client::{connect_all, Event};
use crate::process::report_rss;
use crate::BoxError;
use mesh_protocol::command;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// Steady mode: states at `rate` deliveries per second for `--duration`.
pub async fn steady(args: &Args, rate: u64) -> Result<(), BoxError> {
    let n = args.clients;
    let (clients, connect_time) = connect_all(args, n).await?;
    println!(
        "connect: {n} clients in {:.3} s",
        connect_time.as_secs_f64()
    );
    // Each publish reaches all n clients: publishes/s = rate / n, spread
    // over the clients in turn.
    let publishes_per_sec = (rate as f64 / n as f64).max(1.0);
    let per_client_interval = Duration::from_secs_f64(n as f64 / publishes_per_sec);
    let duration = Duration::from_secs(args.duration);
    let epoch = Instant::now();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for (index, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        let room = args.room.clone();
        tasks.push(tokio::spawn(async move {
            client
                .request(command::SUBSCRIBE_PRESENCE, json!({ "roomName": room }))
                .await?;
            client
                .request(command::JOIN_ROOM, json!({ "roomName": room }))
                .await?;
            barrier.wait().await;
            let start = Instant::now();
            // Stagger the clients evenly over one interval.
            let offset = per_client_interval.mul_f64(index as f64 / n as f64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start + offset),
                per_client_interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut latencies = Vec::new();
            let mut s = 0u32;
            // Keep reading a little after the end, for updates in flight.
            let read_until = start + duration + Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = tick.tick(), if start.elapsed() < duration => {
                        let state = json!({ "c": index, "s": s, "t": micros_since(epoch) });
                        s += 1;
                        client.send_request(
                            command::PUBLISH_PRESENCE_STATE,
                            json!({ "roomName": room, "state": state }),
                        ).await?;
                    }
                    event = client.next_event() => {
                        if let Event::State(state) = event? {
                            latencies.push(micros_since(epoch).saturating_sub(state.t));
                        }
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(read_until)) => break,
                }
            }
            Ok::<_, BoxError>(latencies)
        }));
    }
    barrier.wait().await;
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    println!(
        "steady: target {rate} deliveries/s for {} s: {} deliveries ({:.0}/s)",
        args.duration,
        latencies.len(),
        latencies.len() as f64 / duration.as_secs_f64()
    );
    print_latency(&latencies);
    report_rss(args);
    Ok(())
}
