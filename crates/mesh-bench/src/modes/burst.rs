//! Burst mode (and scaling mode, a burst per client count): every client
//! publishes its states as fast as it can.

use super::{micros_since, percentile, print_latency};
use crate::args::Args;
use crate::client::{connect_all, Event};
use crate::process::{cpu_time, report_rss, rss_kib, SpawnedServer};
use crate::BoxError;
use mesh_protocol::command;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Barrier};

/// Per-client results of the burst.
#[derive(Default)]
struct Tally {
    joins_done: Option<Instant>,
    latencies_us: Vec<u64>,
    states: u64,
    duplicates: u64,
    last_state: Option<Instant>,
}

/// The figures of one burst.
pub struct BurstReport {
    clients: usize,
    connect: Duration,
    join_per_sec: f64,
    states: u64,
    expected: u64,
    states_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    duplicates: u64,
}

/// Waits at `barrier` with the clients, unless one of them fails first.
async fn phase(
    barrier: &Barrier,
    failed: &mut mpsc::UnboundedReceiver<String>,
) -> Result<(), String> {
    tokio::select! {
        _ = barrier.wait() => Ok(()),
        Some(e) = failed.recv() => Err(e),
    }
}

/// Burst mode: N clients join, then each publishes K states at once.
pub async fn burst(args: &Args) -> Result<BurstReport, BoxError> {
    let n = args.clients;
    let k = args.states;
    report_rss(args);
    let (clients, connect_time) = connect_all(args, n).await?;
    println!(
        "connect: {n} clients in {:.3} s ({:.0} connections/s)",
        connect_time.as_secs_f64(),
        n as f64 / connect_time.as_secs_f64()
    );

    let barrier = Arc::new(Barrier::new(n + 1));
    // A client that fails never reaches the next barrier: it says so here,
    // and the run stops with its error instead of waiting for it forever.
    let (failed_tx, mut failed) = mpsc::unbounded_channel::<String>();
    let epoch = Instant::now();
    let room = args.room.clone();
    let mut tasks = Vec::with_capacity(n);
    for (index, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        let room = room.clone();
        let failed_tx = failed_tx.clone();
        tasks.push(tokio::spawn(async move {
            let result = async {
                let mut tally = Tally::default();
                client
                    .request(command::SUBSCRIBE_PRESENCE, json!({ "roomName": room }))
                    .await?;
                client.wait_reading(&barrier).await?; // everyone subscribed
                client.wait_reading(&barrier).await?; // join phase starts
                client
                    .send_request(command::JOIN_ROOM, json!({ "roomName": room }))
                    .await?;
                let (mut joins, mut replied) = (0, false);
                while joins < n || !replied {
                    match client.next_event().await? {
                        Event::Join => joins += 1,
                        Event::Reply => replied = true,
                        _ => {}
                    }
                }
                tally.joins_done = Some(Instant::now());
                client.wait_reading(&barrier).await?; // joins done
                client.wait_reading(&barrier).await?; // burst starts
                for s in 0..k {
                    let state = json!({ "c": index, "s": s, "t": micros_since(epoch) });
                    client
                        .send_request(
                            command::PUBLISH_PRESENCE_STATE,
                            json!({ "roomName": room, "state": state }),
                        )
                        .await?;
                }
                let mut seen = HashSet::with_capacity(n * k);
                let (mut replies, expected) = (0, (n * k) as u64);
                while tally.states < expected || replies < k {
                    match client.next_event().await? {
                        Event::State(state) => {
                            let now = micros_since(epoch);
                            if !seen.insert((state.c, state.s)) {
                                tally.duplicates += 1;
                                continue;
                            }
                            tally.states += 1;
                            tally.latencies_us.push(now.saturating_sub(state.t));
                            tally.last_state = Some(Instant::now());
                        }
                        Event::Reply => replies += 1,
                        _ => {}
                    }
                }
                // Done, but still reading (and answering pings) until
                // everyone is: the server would rightly close a client
                // that stopped.
                client.wait_reading(&barrier).await?;
                Ok::<_, BoxError>((tally, client))
            }
            .await;
            if let Err(e) = &result {
                let _ = failed_tx.send(format!("client {index}: {e}"));
            }
            result
        }));
    }
    let phases = async {
        phase(&barrier, &mut failed).await?;
        let join_start = Instant::now();
        phase(&barrier, &mut failed).await?;
        phase(&barrier, &mut failed).await?;
        let join_time = join_start.elapsed();
        report_rss(args);
        let cpu_before = args.server_pid.and_then(cpu_time);
        let burst_start = Instant::now();
        phase(&barrier, &mut failed).await?;
        phase(&barrier, &mut failed).await?; // everyone has every state
        Ok::<_, String>((join_time, cpu_before, burst_start))
    };
    let (join_time, cpu_before, burst_start) = match phases.await {
        Ok(figures) => figures,
        Err(e) => {
            tasks.iter().for_each(|t| t.abort());
            return Err(e.into());
        }
    };

    let mut tallies = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        let (tally, client) = task.await??;
        tallies.push(tally);
        clients.push(client);
    }
    let burst_end = tallies
        .iter()
        .filter_map(|t| t.last_state)
        .max()
        .unwrap_or(burst_start);
    let burst_time = burst_end.duration_since(burst_start);
    let join_deliveries = (n * n) as f64;
    println!(
        "join: {} deliveries in {:.3} s ({:.0} deliveries/s)",
        n * n,
        join_time.as_secs_f64(),
        join_deliveries / join_time.as_secs_f64()
    );
    let deliveries: u64 = tallies.iter().map(|t| t.states).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();
    let mut latencies: Vec<u64> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
    latencies.sort_unstable();
    println!(
        "states: {deliveries} deliveries (expected {}) in {:.3} s ({:.0} deliveries/s), {duplicates} duplicates",
        n * n * k,
        burst_time.as_secs_f64(),
        deliveries as f64 / burst_time.as_secs_f64()
    );
    print_latency(&latencies);
    let report = BurstReport {
        clients: n,
        connect: connect_time,
        join_per_sec: join_deliveries / join_time.as_secs_f64(),
        states: deliveries,
        expected: (n * n * k) as u64,
        states_per_sec: deliveries as f64 / burst_time.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        duplicates,
    };
    if let (Some(before), Some(after)) = (cpu_before, args.server_pid.and_then(cpu_time)) {
        let cpu = after.saturating_sub(before);
        println!(
            "server CPU in the burst: {:.2} s ({:.0} deliveries per CPU-second)",
            cpu.as_secs_f64(),
            deliveries as f64 / cpu.as_secs_f64().max(0.01)
        );
    }
    report_rss(args);
    drop(clients);
    Ok(report)
}

/// Scaling mode: one burst per client count, each on a fresh server.
pub async fn scale(mut args: Args) -> Result<(), BoxError> {
    args.states = 1;
    let mut rows = Vec::new();
    for &n in &args.scale.clone() {
        println!("== {n} clients");
        let server = SpawnedServer::start(&args).await?;
        args.url = server.url.clone();
        let pid = server.child.id();
        args.server_pid = Some(pid);
        args.clients = n;
        let report = burst(&args).await;
        // Every client has left (burst drops them); give the server time.
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let rss = rss_kib(pid);
        server.stop();
        let report = report?;
        let (after, peak) = rss.ok_or("cannot read server RSS")?;
        rows.push((report, peak, after));
    }
    println!();
    println!("| members | connect | join deliveries/s | state deliveries/s | state latency p50 / p99 | duplicates | server peak RSS | RSS {} s after all left |", args.settle);
    println!("|---|---|---|---|---|---|---|---|");
    for (r, peak, after) in rows {
        println!(
            "| {} | {:.2} s | {:.0}k | {:.0}k ({} of {}) | {:.0} / {:.0} ms | {} | {:.1} MiB | {:.1} MiB |",
            r.clients,
            r.connect.as_secs_f64(),
            r.join_per_sec / 1000.0,
            r.states_per_sec / 1000.0,
            r.states,
            r.expected,
            r.p50_ms,
            r.p99_ms,
            r.duplicates,
            peak as f64 / 1024.0,
            after as f64 / 1024.0,
        );
    }
    Ok(())
}
