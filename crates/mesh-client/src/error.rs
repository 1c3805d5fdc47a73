//! The error every client call can return.

use mesh_protocol::{ErrorCode, ErrorPayload};
use thiserror::Error;

/// Why a client call failed.
///
/// A request that the server answered with an error payload is an
/// [`ClientError::Server`], never an `Ok` holding an error object.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ClientError {
    /// The server answered the request with an error payload.
    #[error("server error {0}")]
    Server(ErrorPayload),
    /// No reply arrived within the request timeout (`ETIMEOUT`).
    #[error("request timed out")]
    Timeout,
    /// The client was closed, or every handle to it was dropped.
    #[error("client is closed")]
    Closed,
    /// The client is offline for good: reconnecting is disabled or gave up,
    /// or too many requests are already queued while offline.
    #[error("client is offline")]
    Offline,
    /// The connection dropped after the request was sent and before its
    /// reply arrived; whether the server acted on it is unknown.
    #[error("connection lost before the reply arrived")]
    ConnectionLost,
    /// The server sent something that does not follow the protocol, such as
    /// a reply of the wrong shape.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The first connection could not be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The server refused the connection with `401`: the token is missing,
    /// invalid or expired. Retrying with the same token cannot help, so the
    /// client does not.
    #[error("the server refused the token")]
    Unauthorized,
}

impl ClientError {
    /// The protocol error code, where one applies: the server's code for
    /// [`ClientError::Server`], `ETIMEOUT` for [`ClientError::Timeout`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(payload) => Some(payload.code.clone()),
            ClientError::Timeout => Some(ErrorCode::Timeout),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_where_meaningful() {
        let refused = ClientError::Server(ErrorPayload::new(ErrorCode::Forbidden, "no"));
        assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
        assert_eq!(ClientError::Timeout.code(), Some(ErrorCode::Timeout));
        assert_eq!(ClientError::Closed.code(), None);
        assert!(refused.to_string().contains("EFORBIDDEN"));
    }
}
