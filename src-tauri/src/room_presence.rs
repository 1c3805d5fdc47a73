//! Presence in one room, by user: joins the room, keeps the grouped user
//! list current, and republishes your saved state after every reconnect.
//!
//! A small task owns the room's presence stream and the grouping engine
//! (`mesh_client::presence::PresenceEngine`); everyone else reads the user
//! list through a `watch` channel, so a burst of updates costs the readers one
//! look at the latest list.

use std::sync::Arc;

use mesh_client::presence::{KeySource, PresenceEngine, User};
use mesh_client::{ClientError, MeshClient, PresenceEvent, PresenceStream};
use serde_json::Value;
use tauri::async_runtime::JoinHandle;
use tokio::sync::watch;

use crate::my_state;
use crate::store::KeyValue;

/// Reads a user id out of a presence state.
pub type GroupKey = fn(&Value) -> Option<String>;

/// One room's user-level presence for one connection.
pub struct Presence {
    client: MeshClient,
    room: String,
    storage_key: String,
    store: Arc<dyn KeyValue>,
    users: watch::Receiver<Vec<User>>,
    task: JoinHandle<()>,
}

impl Presence {
    /// Subscribes to `room`'s presence, joins it, and starts following it.
    /// Your state is saved under `storage_key` in `store` when you publish.
    pub async fn new(
        client: MeshClient,
        room: &str,
        storage_key: &str,
        group_key: GroupKey,
        store: Arc<dyn KeyValue>,
    ) -> Result<Presence, ClientError> {
        let (reply, stream) = client.subscribe_presence(room).await?;
        if !reply.success {
            return Err(ClientError::Protocol(format!(
                "the server does not track presence in room {room}"
            )));
        }
        client.join_room(room).await?;
        let mut engine = PresenceEngine::new(KeySource::State(Arc::new(group_key)));
        // The snapshot predates our join; the join arrives on the stream.
        let present = reply.present.iter().map(|m| m.id.as_str());
        engine.reset(present, &reply.states, mesh_protocol::now_millis());
        engine.take_dirty();
        let (tx, users) = watch::channel(engine.users());
        let task = tauri::async_runtime::spawn(follow(
            engine,
            stream,
            tx,
            client.clone(),
            room.to_string(),
            storage_key.to_string(),
            store.clone(),
        ));
        Ok(Presence {
            client,
            room: room.to_string(),
            storage_key: storage_key.to_string(),
            store,
            users,
            task,
        })
    }

    /// Publishes your state (cleared by the server after `expire_after` ms
    /// when given) and saves it for restarts and reconnects.
    pub async fn publish_with_expiry(
        &self,
        state: Value,
        expire_after: Option<u64>,
    ) -> Result<bool, ClientError> {
        let ok = self
            .client
            .publish_presence_state(&self.room, state.clone(), expire_after, false)
            .await?;
        if let Err(e) = self.store.set(&self.storage_key, state) {
            tracing::warn!(error = %e, "could not save the presence state");
        }
        Ok(ok)
    }

    /// The user list, updated whenever it changes.
    pub fn users(&self) -> watch::Receiver<Vec<User>> {
        self.users.clone()
    }

    /// Stops following the room and leaves it.
    pub async fn dispose(&self) {
        self.task.abort();
        let _ = self.client.unsubscribe_presence(&self.room).await;
        let _ = self.client.leave_room(&self.room).await;
    }
}

/// Feeds the room's updates into the engine and publishes the list. After a
/// reconnect (a `Resync`), rebuilds from the snapshot and republishes the
/// saved state, as the new connection starts with none.
async fn follow(
    mut engine: PresenceEngine,
    mut stream: PresenceStream,
    tx: watch::Sender<Vec<User>>,
    client: MeshClient,
    room: String,
    storage_key: String,
    store: Arc<dyn KeyValue>,
) {
    while let Some(event) = stream.recv().await {
        match event {
            PresenceEvent::Update(update) => engine.apply(update),
            PresenceEvent::Resync { present, states, .. } => {
                engine.reset(present.iter(), &states, mesh_protocol::now_millis());
                if let Some(saved) = store.get(&storage_key) {
                    let user_id = saved["userId"].as_str().unwrap_or_default().to_string();
                    let (state, expiry) =
                        my_state::restore(Some(saved), &user_id, "", mesh_protocol::now_millis());
                    let client = client.clone();
                    let room = room.clone();
                    tauri::async_runtime::spawn(async move {
                        if let Err(e) = client.publish_presence_state(&room, state, expiry, false).await {
                            tracing::warn!(error = %e, "could not republish after reconnect");
                        }
                    });
                }
            }
        }
        if engine.take_dirty() {
            tx.send_replace(engine.users());
        }
    }
}
