//! The one error type every command returns.
//!
//! The webview receives it as `{code, message}`: `code` is a Mesh error code
//! (`EINVALID`, `ETIMEOUT`, ...) or one of ours (`EOFFLINE`, `ESTORE`), and
//! `message` is meant to be shown to the user as is.

use serde::Serialize;

/// A failed command, as the webview sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl AppError {
    /// An error with the given code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        AppError {
            code: code.into(),
            message: message.into(),
        }
    }

    /// Input the user can fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::new("EINVALID", message)
    }

    /// The window has no connection yet (or any more).
    pub fn not_connected() -> Self {
        AppError::new("EOFFLINE", "Not connected to a Mesh server yet")
    }

    /// Reading or writing the settings store failed.
    pub fn store(err: impl std::fmt::Display) -> Self {
        AppError::new("ESTORE", format!("Could not use the settings store: {err}"))
    }
}
