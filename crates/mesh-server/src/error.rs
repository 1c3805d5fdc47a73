//! Errors of the server library.

use crate::backend::BackendError;
use thiserror::Error;

/// Why starting the server or an operation on it failed.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is unusable (for example an invalid pattern).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or accepting on the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}
