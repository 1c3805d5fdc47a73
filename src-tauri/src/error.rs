//! The one error type every command returns.
//!
//! The webview receives it as `{code, message}`: `code` is a Mesh error code
//! (`EINVALID`, `ETIMEOUT`, ...) when the protocol gave one, or one of the
//! app's own ([`ErrorCode`]), and `message` is meant to be shown to the user
//! as is.

use std::sync::{Mutex, MutexGuard, PoisonError};

use mesh_client::presence::{PresenceError, StoreError};
use mesh_client::ClientError;
use serde::{Serialize, Serializer};

/// What kind of failure an [`AppError`] is; serialised as its code string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// A Mesh protocol code, as the server (or the client, for `ETIMEOUT`)
    /// gave it; `EINVALID` also for input the app refuses itself.
    Mesh(mesh_protocol::ErrorCode),
    /// `EOFFLINE`: no connection to the server (yet, or any more).
    Offline,
    /// `EUNAUTHORIZED`: the server refused the token.
    Unauthorized,
    /// `ESTORE`: reading or writing the settings store failed.
    Store,
    /// `EWINDOW`: a window could not be opened.
    Window,
}

impl ErrorCode {
    /// The code as the webview sees it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Mesh(code) => code.as_str(),
            ErrorCode::Offline => "EOFFLINE",
            ErrorCode::Unauthorized => "EUNAUTHORIZED",
            ErrorCode::Store => "ESTORE",
            ErrorCode::Window => "EWINDOW",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So that a code reads as what the page receives: `code == "EINVALID"`.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl From<mesh_protocol::ErrorCode> for ErrorCode {
    fn from(code: mesh_protocol::ErrorCode) -> Self {
        ErrorCode::Mesh(code)
    }
}

/// A failed command, as the webview sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
}

impl AppError {
    /// An error with the given code and message.
    pub fn new(code: impl Into<ErrorCode>, message: impl Into<String>) -> Self {
        AppError {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Input the user can fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::new(mesh_protocol::ErrorCode::Invalid, message)
    }

    /// The window has no connection yet (or any more).
    pub fn not_connected() -> Self {
        AppError::new(ErrorCode::Offline, "Not connected to a Mesh server yet")
    }

    /// Reading or writing the settings store failed.
    pub fn store(err: impl std::fmt::Display) -> Self {
        AppError::new(
            ErrorCode::Store,
            format!("Could not use the settings store: {err}"),
        )
    }

    /// The same error, its message prefixed with what was being done
    /// (`"Could not publish your state"`). The code stays.
    pub fn context(self, doing: &str) -> Self {
        AppError {
            message: format!("{doing}: {}", self.message),
            ..self
        }
    }
}

impl From<ClientError> for AppError {
    /// Keeps the protocol code ([`ClientError::code`]); a connection that
    /// is gone is `EOFFLINE`, a refused token `EUNAUTHORIZED`, and a reply
    /// that breaks the protocol `ESERVER`.
    fn from(err: ClientError) -> Self {
        let code = match (&err, err.code()) {
            (_, Some(code)) => ErrorCode::Mesh(code),
            (ClientError::Unauthorized, None) => ErrorCode::Unauthorized,
            (ClientError::Protocol(_), None) => ErrorCode::Mesh(mesh_protocol::ErrorCode::Server),
            (_, None) => ErrorCode::Offline,
        };
        let message = match err {
            // The server's own words, without the code the page already has.
            ClientError::Server(payload) => payload.error,
            other => other.to_string(),
        };
        AppError { code, message }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        AppError::store(err)
    }
}

impl From<PresenceError> for AppError {
    fn from(err: PresenceError) -> Self {
        match err {
            PresenceError::Client(e) => e.into(),
            PresenceError::Store(e) => e.into(),
            refused @ PresenceError::Refused { .. } => {
                AppError::new(mesh_protocol::ErrorCode::Forbidden, refused.to_string())
            }
            invalid @ (PresenceError::InvalidState(_) | PresenceError::InvalidRoom(_)) => {
                AppError::invalid(invalid.to_string())
            }
        }
    }
}

/// Locks `mutex`, recovering it when a thread panicked while holding it.
///
/// Every lock in the app guards plain data that a panic cannot leave half
/// changed in a way that matters more than losing it (a session map, a
/// list, a timer handle), so the app goes on with it, as the crates do,
/// rather than act as if it were empty.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_protocol::ErrorPayload;
    use serde_json::json;

    #[test]
    fn client_errors_keep_their_protocol_code() {
        let err = AppError::from(ClientError::Timeout).context("Could not publish your state");
        assert_eq!(err.code.as_str(), "ETIMEOUT");
        assert!(err.message.starts_with("Could not publish your state: "));
        let limited = ClientError::Server(ErrorPayload::new(
            mesh_protocol::ErrorCode::RateLimit,
            "slow down",
        ));
        assert_eq!(
            serde_json::to_value(AppError::from(limited)).unwrap(),
            json!({"code": "ERATELIMIT", "message": "slow down"})
        );
        assert_eq!(
            AppError::from(ClientError::Closed).code.as_str(),
            "EOFFLINE"
        );
        assert_eq!(
            AppError::from(ClientError::Unauthorized).code.as_str(),
            "EUNAUTHORIZED"
        );
        let other = ClientError::Server(ErrorPayload::new(
            mesh_protocol::ErrorCode::Other("ECUSTOM".into()),
            "theirs",
        ));
        assert_eq!(AppError::from(other).code.as_str(), "ECUSTOM");
    }

    #[test]
    fn a_poisoned_lock_is_recovered_not_emptied() {
        let mutex = std::sync::Arc::new(Mutex::new(vec![1]));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), [1]);
    }
}
