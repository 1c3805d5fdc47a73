//! The app's managed state: the store, your user id, the embedded server and
//! one session per window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mesh_server::RunningServer;
use tauri::{AppHandle, Manager, Runtime};
use tokio::sync::OnceCell;

use crate::embedded;
use crate::error::{lock, AppError};
use crate::events::{self, StatusPayload};
use crate::invite::Invite;
use crate::notify::Notifier;
use crate::session::{Session, Target};
use crate::settings::Settings;
use crate::stars::Stars;
use crate::store::AppStore;

/// Reconnects every window with the saved settings (they changed). Errors
/// reach each window as `mesh://error`.
pub fn reconnect_all<R: Runtime>(app: &AppHandle<R>) {
    for label in app.webview_windows().into_keys() {
        let app = app.clone();
        tauri::async_runtime::spawn(async move {
            let state = app.state::<AppState>();
            let _ = state.connect(&app, &label, true).await;
        });
    }
}

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
    /// Whether the app has an icon in the tray.
    has_tray: AtomicBool,
    /// Whether the desktop tells us how long the user has been idle.
    idle_available: AtomicBool,
    /// Whom you starred; every window's rows are marked from it.
    stars: Arc<Stars>,
    /// Notifications about them, shared by the windows.
    notifier: Notifier,
}

impl AppState {
    /// State over `store`; the embedded server, when needed, starts from
    /// `embedded_port`.
    /// A saved setting that is not valid is not used, and the first window
    /// is told (see [`AppState::take_notices`]).
    pub fn new(store: AppStore, embedded_port: u16) -> Result<Self, AppError> {
        let user_id = store.user_id()?;
        let (_, notices) = store.checked_settings();
        let stars = Arc::new(Stars::load(&store));
        Ok(AppState {
            store,
            user_id,
            embedded_port,
            embedded: OnceCell::new(),
            sessions: Mutex::new(HashMap::new()),
            connect_gate: tokio::sync::Mutex::new(()),
            notices: Mutex::new(notices),
            has_tray: AtomicBool::new(false),
            idle_available: AtomicBool::new(false),
            stars,
            notifier: Notifier::default(),
        })
    }

    /// Whom you starred.
    pub fn stars(&self) -> &Stars {
        &self.stars
    }

    /// Where notifications about starred people go.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Stars or unstars user `id` (saved at once; see [`Stars::set`]), and
    /// redraws their row in every window that shows it.
    pub fn set_starred<R: Runtime>(
        &self,
        app: &AppHandle<R>,
        id: &str,
        starred: bool,
    ) -> Result<(), AppError> {
        self.stars.set(&self.store, &self.user_id, id, starred)?;
        let sessions: Vec<_> = lock(&self.sessions)
            .iter()
            .map(|(label, session)| (label.clone(), session.clone()))
            .collect();
        for (label, session) in sessions {
            if let Some(update) = session.set_starred(id, starred) {
                events::emit_users(app, &label, &update);
            }
        }
        Ok(())
    }

    /// Records whether the app has a tray icon.
    pub fn set_tray(&self, has_tray: bool) {
        self.has_tray.store(has_tray, Ordering::Relaxed);
    }

    /// Whether the app has a tray icon.
    pub fn has_tray(&self) -> bool {
        self.has_tray.load(Ordering::Relaxed)
    }

    /// Records whether automatic away can work here.
    pub fn set_idle_available(&self, available: bool) {
        self.idle_available.store(available, Ordering::Relaxed);
    }

    /// Whether automatic away can work here.
    pub fn idle_available(&self) -> bool {
        self.idle_available.load(Ordering::Relaxed)
    }

    /// Some window's session: they all share your state (tab sync) and the
    /// room, so any one of them can change your state or count the room.
    pub fn any_session(&self) -> Option<Arc<Session>> {
        self.sessions.lock().ok()?.values().next().cloned()
    }

    /// Runs `f` on every window's session.
    pub fn for_each_session(&self, f: impl Fn(&Session)) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        sessions.iter().for_each(|s| f(s));
    }

    /// Leaves the room on every connection and waits until each is closed:
    /// peers see you leave now, not when your connection times out.
    pub async fn leave_all(&self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .map(|mut s| s.drain().map(|(_, s)| s).collect())
            .unwrap_or_default();
        for session in sessions {
            session.close().await;
        }
    }

    /// Adds something the next window to ask must tell the user.
    pub fn notify(&self, notice: String) {
        lock(&self.notices).push(notice);
    }

    /// What the user has not been told yet; each notice is handed out once.
    pub fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.notices))
    }

    /// Saves the settings `invite` asks for, checked as the settings panel
    /// checks them; a bad invite changes nothing. Returns what the user must
    /// be told besides (a token that was not carried to another server).
    pub fn accept_invite(&self, invite: &Invite) -> Result<Option<String>, AppError> {
        let saved = self.store.settings();
        let embedded = self.embedded.get().map(RunningServer::url);
        let (settings, notice) = invite.apply(&saved, embedded.as_deref())?;
        self.store.save_settings(&settings)?;
        tracing::info!(room = %settings.room, server = ?settings.server_url, "opened a room from an invite");
        Ok(notice)
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
            self.stars.clone(),
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
