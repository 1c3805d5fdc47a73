//! The app's managed state: the store, your user id, the embedded server and
//! one session per window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_server::RunningServer;
use tauri::{AppHandle, Manager, Runtime};
use tokio::sync::OnceCell;

use crate::embedded;
use crate::error::{lock, AppError};
use crate::events::{self, StatusPayload};
use crate::session::{Session, Target};
use crate::settings::Settings;
use crate::store::AppStore;

/// Everything the commands share.
pub struct AppState {
    store: AppStore,
    user_id: String,
    embedded_port: u16,
    embedded: OnceCell<RunningServer>,
    /// Window label to its session. A std mutex: it is only held to look up
    /// or swap an entry, never across an `.await`.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Serialises (re)connects so two quick ones cannot both install a session.
    connect_gate: tokio::sync::Mutex<()>,
    /// What the user must be told once (a damaged store file, a saved
    /// setting that could not be used), until a window takes them.
    notices: Mutex<Vec<String>>,
}

impl AppState {
    /// State over `store`; the embedded server, when needed, starts from
    /// `embedded_port`.
    /// A saved setting that is not valid is not used, and the first window
    /// is told (see [`AppState::take_notices`]).
    pub fn new(store: AppStore, embedded_port: u16) -> Result<Self, AppError> {
        let user_id = store.user_id()?;
        let (_, notices) = store.checked_settings();
        Ok(AppState {
            store,
            user_id,
            embedded_port,
            embedded: OnceCell::new(),
            sessions: Mutex::new(HashMap::new()),
            connect_gate: tokio::sync::Mutex::new(()),
            notices: Mutex::new(notices),
        })
    }

    /// Adds something the next window to ask must tell the user.
    pub fn notify(&self, notice: String) {
        lock(&self.notices).push(notice);
    }

    /// What the user has not been told yet; each notice is handed out once.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }

    /// The persistent store.
    pub fn store(&self) -> &AppStore {
        &self.store
    }

    /// This installation's user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The session of window `label`, if it is connected.
    pub fn session(&self, label: &str) -> Option<Arc<Session>> {
        lock(&self.sessions).get(label).cloned()
    }

    /// Forgets window `label`'s session, closing its connection.
    pub fn remove_session(&self, label: &str) {
        let removed = lock(&self.sessions).remove(label);
        // Dropped here, outside the lock: dropping starts the close.
        drop(removed);
    }

    /// Where the settings say to connect, starting the embedded server if
    /// they name none.
    async fn target(&self, settings: &Settings) -> Result<Target, AppError> {
        let (url, embedded) = match &settings.server_url {
            Some(url) => (url.clone(), false),
            None => {
                let port = self.embedded_port;
                let server = self
                    .embedded
                    .get_or_try_init(|| embedded::start(port))
                    .await?;
                (server.url(), true)
            }
        };
        Ok(Target {
            url,
            embedded,
            room: settings.room.clone(),
            token: settings.token.clone(),
        })
    }

    /// Connects window `label` as the settings say. An existing session to
    /// the same place is kept (and asked to resend the full list) unless
    /// `force` is set. Failures are also sent to the window as `mesh://error`.
    pub async fn connect<R: Runtime>(
        &self,
        app: &AppHandle<R>,
        label: &str,
        force: bool,
    ) -> Result<StatusPayload, AppError> {
        let _gate = self.connect_gate.lock().await;
        let settings = self.store.settings();
        let result = self.connect_locked(app, label, force, &settings).await;
        if let Err(e) = &result {
            let url = settings.server_url.clone().unwrap_or_default();
            let offline =
                StatusPayload::offline(&url, settings.server_url.is_none(), &settings.room);
            events::emit(app, label, events::STATUS, offline);
            events::emit(app, label, events::ERROR, e.clone());
        }
        result
    }

    async fn connect_locked<R: Runtime>(
        &self,
        app: &AppHandle<R>,
        label: &str,
        force: bool,
        settings: &Settings,
    ) -> Result<StatusPayload, AppError> {
        let target = self.target(settings).await?;
        if let Some(session) = self.session(label) {
            if !force && session.target == target {
                session.resync();
                return Ok(session.status());
            }
        }
        self.remove_session(label);
        let session = Session::start(
            app.clone(),
            label.to_string(),
            target,
            self.store.clone(),
            self.user_id.clone(),
        )
        .await?;
        let status = session.status();
        if app.get_webview_window(label).is_none() {
            // The window closed while we connected: do not keep a connection for it.
            return Ok(status);
        }
        lock(&self.sessions).insert(label.to_string(), Arc::new(session));
        Ok(status)
    }
}
