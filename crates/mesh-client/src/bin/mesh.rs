//! `mesh`: a command-line Mesh client, for looking at a live room from a
//! terminal (what redis-cli is to Redis).
//!
//! ```text
//! mesh watch lobby                 live members and states
//! mesh watch lobby --json          one JSON object per line
//! mesh watch lobby --users         one line per person, with their tabs
//! mesh publish lobby '{"status":"away"}' --expire-after 10000
//! mesh meta get CONNECTION_ID --room lobby
//! mesh meta set '{"username":"Alice"}' --strategy merge
//! mesh state lobby                 one snapshot, as JSON
//! mesh request mesh/noop '{}'      any command, raw
//! ```

use clap::{Parser, Subcommand, ValueEnum};
use mesh_client::presence::{GroupKey, KeySource, PresenceEngine, User};
use mesh_client::{
    ClientError, ClientEvent, ClientOptions, MeshClient, PresenceEvent, PresenceUpdate, Strategy,
    Token,
};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "Talk to a Mesh server from the terminal"
)]
struct Cli {
    /// Server URL (ws:// or wss://).
    #[arg(
        long,
        global = true,
        env = "MESH_URL",
        default_value = "ws://127.0.0.1:3000"
    )]
    url: String,
    /// Seconds to wait for a reply.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// Token for a server with authentication (sent as a bearer token).
    #[arg(long, global = true, env = "MESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a room's members and states live, until interrupted.
    Watch {
        /// The room.
        room: String,
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Also join the room (you then appear as a member).
        #[arg(long)]
        join: bool,
        /// Show people instead of connections: one line per person with
        /// their latest state and how many tabs they have open, printed
        /// again whenever it changes.
        #[arg(long)]
        users: bool,
        /// With `--users`: what tells connections of one person apart,
        /// `state.FIELD` (a field of the presence state) or `meta.FIELD`
        /// (a field of the connection's metadata).
        #[arg(long, value_parser = parse_group_by, default_value = "state.userId", requires = "users")]
        group_by: GroupBy,
    },
    /// Join a room and publish a presence state; stays connected (the state
    /// lives as long as the connection) until interrupted or expired. After
    /// a reconnect (a new connection holds no state) it publishes the
    /// state again, and says so.
    Publish {
        /// The room.
        room: String,
        /// The state, a JSON object.
        state: String,
        /// Clear the state after this many milliseconds.
        #[arg(long)]
        expire_after: Option<u64>,
        /// Store without notifying subscribers.
        #[arg(long)]
        silent: bool,
        /// Disconnect right after the server confirmed.
        #[arg(long)]
        no_wait: bool,
    },
    /// Read or write connection metadata.
    Meta {
        #[command(subcommand)]
        action: MetaCmd,
    },
    /// Print a room's presence snapshot as JSON.
    State {
        /// The room.
        room: String,
    },
    /// Send any command with a JSON payload and print the reply.
    Request {
        /// The command, e.g. `mesh/noop`.
        command: String,
        /// The payload, as JSON.
        #[arg(default_value = "{}")]
        payload: String,
    },
}

#[derive(Subcommand)]
enum MetaCmd {
    /// Print a connection's metadata.
    Get {
        /// The connection id.
        id: String,
        /// Join this room first (servers answer only for connections
        /// sharing a room with the asker).
        #[arg(long)]
        room: Option<String>,
    },
    /// Set this connection's metadata and print the result.
    Set {
        /// The metadata, as JSON.
        metadata: String,
        /// How it combines with what is stored.
        #[arg(long, value_enum, default_value = "replace")]
        strategy: StrategyArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Replace,
    Merge,
    DeepMerge,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Strategy {
        match s {
            StrategyArg::Replace => Strategy::Replace,
            StrategyArg::Merge => Strategy::Merge,
            StrategyArg::DeepMerge => Strategy::DeepMerge,
        }
    }
}

/// Where `--users` reads a connection's group key.
#[derive(Clone, Debug)]
enum GroupBy {
    State(String),
    Meta(String),
}

fn parse_group_by(arg: &str) -> Result<GroupBy, String> {
    match arg.split_once('.') {
        Some(("state", field)) if !field.is_empty() => Ok(GroupBy::State(field.to_string())),
        Some(("meta" | "metadata", field)) if !field.is_empty() => {
            Ok(GroupBy::Meta(field.to_string()))
        }
        _ => Err("expected state.FIELD or meta.FIELD, e.g. state.userId".into()),
    }
}

/// What can go wrong in a command.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("invalid JSON argument: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(cli.timeout),
        connect_timeout: Duration::from_secs(cli.timeout),
        token: cli.token.map(Token::new),
        ..ClientOptions::default()
    };
    let client = MeshClient::connect(&cli.url, options).await?;
    let result = match cli.command {
        Cmd::Watch {
            room,
            json,
            join,
            users,
            group_by,
        } => {
            if users {
                watch_users(&client, &room, json, join, group_by).await
            } else {
                watch(&client, &room, json, join).await
            }
        }
        Cmd::Publish {
            room,
            state,
            expire_after,
            silent,
            no_wait,
        } => publish(&client, &room, &state, expire_after, silent, no_wait).await,
        Cmd::Meta { action } => meta(&client, action).await,
        Cmd::State { room } => {
            let snapshot = client.get_presence_state(&room).await?;
            println!("{}", serde_json::to_string(&snapshot)?);
            Ok(())
        }
        Cmd::Request { command, payload } => {
            let payload: Value = serde_json::from_str(&payload)?;
            let reply = client.request(&command, payload).await?;
            println!("{reply}");
            Ok(())
        }
    };
    client.close().await;
    result
}

async fn watch(client: &MeshClient, room: &str, json: bool, join: bool) -> Result<(), CliError> {
    let (mut events, snapshot, mut stream) = start_watching(client, room, join).await?;
    if json {
        let line = json!({"type": "snapshot", "roomName": room, "present": snapshot.present, "states": snapshot.states});
        println!("{line}");
    } else {
        println!("{room}: {} present", snapshot.present.len());
        for member in &snapshot.present {
            let state = snapshot
                .states
                .get(&member.id)
                .cloned()
                .unwrap_or(Value::Null);
            println!("  {}  {}  state={}", member.id, member.metadata, state);
        }
    }
    loop {
        tokio::select! {
            // Presence first: after a reconnect the resync is printed
            // before the "reconnected" line, as the client delivers them.
            biased;
            event = stream.recv() => match event {
                Some(event) => print_presence(client, &event, json).await,
                None => return Err(CliError::Refused("the subscription ended".into())),
            },
            Ok(event) = events.recv() => print_lifecycle(&event, json),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Joins `room` if asked, then subscribes to its presence; the client's
/// events are subscribed to first, so that none is missed.
async fn start_watching(
    client: &MeshClient,
    room: &str,
    join: bool,
) -> Result<
    (
        broadcast::Receiver<ClientEvent>,
        mesh_client::SubscribePresenceReply,
        mesh_client::PresenceStream,
    ),
    CliError,
> {
    if join {
        client.join_room(room).await?;
    }
    let events = client.events();
    let (snapshot, stream) = client.subscribe_presence(room).await?;
    if !snapshot.success {
        return Err(CliError::Refused(format!(
            "cannot watch {room:?}: the room is not tracked or access was refused"
        )));
    }
    Ok((events, snapshot, stream))
}

/// `watch --users`: the room's people, grouped by the presence engine the
/// library's `Presence` uses, printed whole whenever they change.
async fn watch_users(
    client: &MeshClient,
    room: &str,
    json: bool,
    join: bool,
    group_by: GroupBy,
) -> Result<(), CliError> {
    let (mut events, mut snapshot, mut stream) = start_watching(client, room, join).await?;
    // Keys from metadata are looked up through the client (the subscribe
    // reply carries the members' metadata); keys from states are read by
    // the engine itself.
    let (source, key_of) = match &group_by {
        GroupBy::State(field) => (KeySource::state_field(field), None),
        GroupBy::Meta(field) => match GroupKey::metadata_field(field) {
            GroupKey::Metadata(key_of) => (KeySource::Resolved, Some(key_of)),
            _ => unreachable!("metadata_field keys by metadata"),
        },
    };
    let mut engine = PresenceEngine::new(source);
    let present = snapshot.present.iter().map(|m| m.id.as_str());
    engine.reset(present, std::mem::take(&mut snapshot.states));
    if let Some(key_of) = &key_of {
        for member in snapshot.present.iter().filter(|m| !m.metadata.is_null()) {
            engine.resolve(&member.id, key_of(&member.metadata));
        }
    }
    resolve_keys(client, &mut engine, key_of.as_ref()).await;
    engine.take_dirty();
    print_users(room, &engine.users(), json);
    loop {
        tokio::select! {
            biased;
            event = stream.recv() => match event {
                Some(PresenceEvent::Update(update)) => engine.apply(update),
                Some(PresenceEvent::Resync { present, states, .. }) => engine.reset(present.iter(), states),
                None => return Err(CliError::Refused("the subscription ended".into())),
            },
            Ok(event) = events.recv() => print_lifecycle(&event, json),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        resolve_keys(client, &mut engine, key_of.as_ref()).await;
        // The list is printed whole: the engine's record of what changed
        // is not needed, and would grow for as long as the room is watched.
        engine.take_events();
        if engine.take_dirty() {
            print_users(room, &engine.users(), json);
        }
    }
}

/// Looks up the group keys the engine is missing. A connection whose
/// metadata cannot be read stands alone under its own id.
async fn resolve_keys(
    client: &MeshClient,
    engine: &mut PresenceEngine,
    key_of: Option<&mesh_client::presence::MetadataKeyFn>,
) {
    let unresolved = engine.take_unresolved();
    let Some(key_of) = key_of else {
        return;
    };
    for id in unresolved {
        let key = match client.get_connection_metadata(&id).await {
            Ok(Value::Null) | Err(_) => None,
            Ok(metadata) => key_of(&metadata),
        };
        engine.resolve(&id, key);
    }
}

fn print_users(room: &str, users: &[User], json: bool) {
    if json {
        println!(
            "{}",
            json!({"type": "users", "roomName": room, "users": users})
        );
        return;
    }
    let people = if users.len() == 1 { "person" } else { "people" };
    println!("{room}: {} {people}", users.len());
    for user in users {
        let tabs = match user.tab_count {
            0 => "reconnecting".to_string(),
            1 => "1 tab".to_string(),
            n => format!("{n} tabs"),
        };
        let state = user.state.as_deref().cloned().unwrap_or(Value::Null);
        println!("  {}  {tabs}  state={state}", user.id);
    }
}

async fn print_presence(client: &MeshClient, event: &PresenceEvent, json: bool) {
    match (event, json) {
        (PresenceEvent::Update(update), true) => {
            println!("{}", serde_json::to_value(update).unwrap_or(Value::Null));
        }
        (
            PresenceEvent::Resync {
                room,
                present,
                states,
            },
            true,
        ) => {
            println!(
                "{}",
                json!({"type": "resync", "roomName": room, "present": present, "states": states})
            );
        }
        (PresenceEvent::Update(PresenceUpdate::Join { connection_id, .. }), false) => {
            // Best effort: the server may not share metadata with us.
            let metadata = client
                .get_connection_metadata(connection_id)
                .await
                .unwrap_or(Value::Null);
            println!("+ {connection_id} joined  {metadata}");
        }
        (PresenceEvent::Update(PresenceUpdate::Leave { connection_id, .. }), false) => {
            println!("- {connection_id} left");
        }
        (
            PresenceEvent::Update(PresenceUpdate::State {
                connection_id,
                state,
                ..
            }),
            false,
        ) => match state {
            Some(state) => println!("~ {connection_id} {state}"),
            None => println!("~ {connection_id} cleared"),
        },
        (
            PresenceEvent::Resync {
                room,
                present,
                states,
            },
            false,
        ) => {
            println!("{room}: resynced, {} present", present.len());
            for id in present {
                let state = states.get(id).cloned().unwrap_or(Value::Null);
                println!("  {id}  state={state}");
            }
        }
    }
}

fn print_lifecycle(event: &ClientEvent, json: bool) {
    let (kind, id) = match event {
        ClientEvent::Disconnected => ("disconnected", None),
        ClientEvent::Reconnected { id } => ("reconnected", Some(id)),
        ClientEvent::ReconnectFailed => ("reconnect-failed", None),
        ClientEvent::Unauthorized => ("unauthorized", None),
        ClientEvent::Connected { .. } | ClientEvent::Latency(_) => return,
    };
    if json {
        println!("{}", json!({"type": kind, "connectionId": id}));
    } else {
        eprintln!(
            "[{kind}{}]",
            id.map(|i| format!(" as {i}")).unwrap_or_default()
        );
    }
}

async fn publish(
    client: &MeshClient,
    room: &str,
    state: &str,
    expire_after: Option<u64>,
    silent: bool,
    no_wait: bool,
) -> Result<(), CliError> {
    let state: Value = serde_json::from_str(state)?;
    if !state.is_object() {
        return Err(CliError::Refused("the state must be a JSON object".into()));
    }
    let mut events = client.events();
    client.join_room(room).await?;
    if !client
        .publish_presence_state(room, state.clone(), expire_after, silent)
        .await?
    {
        return Err(CliError::Refused(format!(
            "the server did not store the state: is {room:?} a tracked room?"
        )));
    }
    println!(
        "published in {room} as {}",
        client.connection_id().unwrap_or_default()
    );
    if no_wait {
        return Ok(());
    }
    let until = expire_after.map(|ms| Instant::now() + Duration::from_millis(ms));
    loop {
        tokio::select! {
            _ = sleep_until_some(until) => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            event = events.recv() => match event {
                // The client rejoined the room; the new connection holds
                // no state until we publish it again, for what is left of
                // its expiry.
                Ok(ClientEvent::Reconnected { id }) => {
                    let left = until.map(|at| at.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|left| left.is_zero()) {
                        return Ok(());
                    }
                    let left = left.map(|left| left.as_millis().max(1) as u64);
                    match client.publish_presence_state(room, state.clone(), left, silent).await {
                        Ok(true) => println!("reconnected as {id}: published in {room} again"),
                        Ok(false) => eprintln!("mesh: reconnected as {id}, but the server did not store the state"),
                        Err(e) => eprintln!("mesh: reconnected as {id}, but publishing again failed: {e}"),
                    }
                }
                Ok(ClientEvent::Disconnected) => eprintln!("[disconnected; reconnecting]"),
                Ok(ClientEvent::ReconnectFailed) => {
                    return Err(CliError::Refused("the connection is lost and reconnecting gave up".into()));
                }
                Ok(ClientEvent::Unauthorized) => {
                    return Err(CliError::Refused("the server refused the token on reconnect".into()));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn meta(client: &MeshClient, action: MetaCmd) -> Result<(), CliError> {
    match action {
        MetaCmd::Get { id, room } => {
            if let Some(room) = room {
                client.join_room(&room).await?;
            }
            println!("{}", client.get_connection_metadata(&id).await?);
        }
        MetaCmd::Set { metadata, strategy } => {
            let metadata: Value = serde_json::from_str(&metadata)?;
            if !client
                .set_my_connection_metadata(metadata, strategy.into())
                .await?
            {
                return Err(CliError::Refused(
                    "the server did not store the metadata".into(),
                ));
            }
            println!("{}", client.get_my_connection_metadata().await?);
        }
    }
    Ok(())
}
