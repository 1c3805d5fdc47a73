//! The Mesh wire protocol, as plain data: no sockets, and no clock but
//! [`now_millis`], which stamps a timestamp for whoever builds a frame;
//! decoding and encoding never read the time.
//!
//! Every frame on a Mesh WebSocket is one JSON object,
//! `{"id": <int, optional>, "command": "<name>", "payload": <any>}`.
//! A request carries an `id`; its reply repeats the same `id` and `command`.
//! A frame without `id` is a push (server to client) or fire-and-forget.
//!
//! The crate is laid out as the protocol is read:
//!
//! * [`frame`]: the envelope, and decoding it from text under a size limit.
//! * [`command`]: the names of every command and push.
//! * [`payload`]: a typed payload for each command and its reply.
//! * [`presence`]: the `mesh/presence-update` push.
//! * [`error`]: error codes and the error payload a failed request gets.
//! * [`metadata`]: the metadata write strategies (`replace`, `merge`, `deepMerge`).
//!
//! Both our server and our client build on these types, so the two cannot
//! drift apart on a field name.

pub mod command;
pub mod error;
pub mod frame;
pub mod metadata;
pub mod payload;
pub mod presence;

pub use error::{ErrorCode, ErrorPayload};
pub use frame::{DecodeError, Frame, MAX_DEPTH};
pub use metadata::Strategy;
pub use presence::PresenceUpdate;

/// Default largest frame, in bytes, that a peer accepts (64 KiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
/// Default largest presence state, in bytes of its JSON encoding (16 KiB).
pub const DEFAULT_MAX_STATE_BYTES: usize = 16 * 1024;
/// Default largest number of rooms one connection may be in.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 64;
/// Longest room name, in bytes, that we accept.
pub const MAX_ROOM_NAME_BYTES: usize = 256;

/// Checks a room name: not empty, at most [`MAX_ROOM_NAME_BYTES`], and free of
/// control characters (room names end up in logs and storage keys) and of
/// bidirectional formatting characters (which can make one name display as
/// another in any list).
pub fn validate_room_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("roomName must not be empty".into());
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err(format!(
            "roomName is {} bytes; the limit is {MAX_ROOM_NAME_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("roomName must not contain control characters".into());
    }
    if let Some(c) = name.chars().find(|c| is_bidi_control(*c)) {
        return Err(format!(
            "roomName must not contain bidirectional control characters (U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// The Unicode bidirectional formatting characters: marks, embeddings,
/// overrides and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Milliseconds since the Unix epoch, the unit of every protocol timestamp.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_checked() {
        assert!(validate_room_name("general").is_ok());
        assert!(validate_room_name("document:123").is_ok());
        assert!(validate_room_name("").is_err());
        assert!(validate_room_name("a\nb").is_err());
        assert!(validate_room_name(&"x".repeat(MAX_ROOM_NAME_BYTES + 1)).is_err());
        assert!(validate_room_name(&"x".repeat(MAX_ROOM_NAME_BYTES)).is_ok());
        for spoof in [
            "admin\u{202E}txt",
            "a\u{2066}b\u{2069}",
            "\u{200F}x",
            "x\u{061C}",
        ] {
            let err = validate_room_name(spoof).unwrap_err();
            assert!(err.contains("bidirectional"), "{err}");
        }
        assert!(validate_room_name("café ☕ 日本").is_ok());
    }
}
