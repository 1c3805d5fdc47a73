//! The Mesh server the app runs in-process when no server is configured.
//!
//! It listens on 127.0.0.1 only (other machines cannot reach it), on port
//! 3000 or, when that is taken (say, by a second copy of the app), the next
//! free port; the UI shows which one.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_server::{RunningServer, Server, TrackOptions};

use crate::error::AppError;

/// The first port tried.
pub const DEFAULT_PORT: u16 = 3000;
/// How many ports after [`DEFAULT_PORT`] are tried before asking the OS for any.
const PORTS_TO_TRY: u16 = 20;

/// Starts the embedded server on the first free port from `first_port`.
///
/// Every room is tracked, as the app lets the user pick any room name.
pub async fn start(first_port: u16) -> Result<RunningServer, AppError> {
    let mut last_error = String::new();
    let candidates = (0..PORTS_TO_TRY)
        .filter_map(|i| first_port.checked_add(i))
        // Port 0 last: the OS picks any free port, so this cannot be "taken".
        .chain(std::iter::once(0));
    for port in candidates {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match Server::builder()
            .addr(addr)
            .ping_interval(Duration::from_secs(10))
            .track_presence(".*", TrackOptions::default())
            .bind()
            .await
        {
            Ok(server) => {
                tracing::info!(url = %server.url(), "embedded Mesh server started");
                return Ok(server);
            }
            Err(e) => {
                tracing::debug!(port, error = %e, "port not available for the embedded server");
                last_error = e.to_string();
            }
        }
    }
    Err(AppError::new(
        mesh_protocol::ErrorCode::Server,
        format!("Could not start the embedded server: {last_error}"),
    ))
}
