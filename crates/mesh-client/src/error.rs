//! The error every client call can return.

use mesh_protocol::{ErrorCode, ErrorPayload};
use std::fmt;
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
    /// reply arrived; whether the server acted on it is unknown. Says how
    /// the connection ended.
    #[error("connection lost before the reply arrived: {0}")]
    ConnectionLost(LinkLoss),
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

/// How a connection ended, as far as the client could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkLoss {
    /// The server closed it with a close frame: its code (1005 when the
    /// frame had none) and reason, such as 1001 "server shutting down" or
    /// 1008 "token expired".
    Closed {
        /// The close code.
        code: u16,
        /// The reason the server gave, possibly empty.
        reason: String,
    },
    /// It broke without a close frame: reset, or a read or a write failed.
    Reset(String),
    /// The server went silent: no ping arrived within the dead-link time.
    Silent,
}

impl fmt::Display for LinkLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkLoss::Closed { code, reason } if reason.is_empty() => {
                write!(f, "closed by the server with code {code}")
            }
            LinkLoss::Closed { code, reason } => {
                write!(f, "closed by the server with code {code} ({reason})")
            }
            LinkLoss::Reset(detail) => write!(f, "reset without a close frame ({detail})"),
            LinkLoss::Silent => f.write_str("no ping from the server in time"),
        }
    }
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

    #[test]
    fn a_lost_connection_says_how() {
        let closed = ClientError::ConnectionLost(LinkLoss::Closed {
            code: 1008,
            reason: "token expired".into(),
        });
        assert_eq!(
            closed.to_string(),
            "connection lost before the reply arrived: closed by the server with code 1008 (token expired)"
        );
        let reset = ClientError::ConnectionLost(LinkLoss::Reset("connection reset".into()));
        assert_eq!(
            reset.to_string(),
            "connection lost before the reply arrived: reset without a close frame (connection reset)"
        );
    }
}
