//! What the user can configure: which server, which room, which name.
//!
//! Settings are plain data with a `validate` step, so the checks run (and are
//! tested) without a window or a store.

use mesh_client::Token;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// The room the app joins when none was chosen.
pub const DEFAULT_ROOM: &str = "general";
/// Longest display name we accept, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest status text we accept, in characters.
pub const MAX_STATUS_CHARS: usize = 200;
/// Longest token we accept, in bytes (a JWT with generous claims).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The user's settings, as stored and as shown in the settings panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// A Mesh server (`ws://` or `wss://`); `None` runs the embedded server.
    #[serde(default)]
    pub server_url: Option<String>,
    /// The room whose presence the app shows.
    #[serde(default = "default_room")]
    pub room: String,
    /// The name others see.
    #[serde(default)]
    pub display_name: String,
    /// A signed token for a server with authentication; `None` sends none.
    /// Its `Debug` form hides it, so settings can be logged.
    #[serde(default)]
    pub token: Option<Token>,
}

fn default_room() -> String {
    DEFAULT_ROOM.to_string()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: None,
            room: default_room(),
            display_name: String::new(),
            token: None,
        }
    }
}

impl Settings {
    /// Trims the fields, turns an empty server URL into "embedded", and
    /// rejects anything the app could not use, with a message naming the field.
    pub fn validate(mut self) -> Result<Settings, AppError> {
        self.server_url = match self.server_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(validate_server_url(url)?),
        };
        self.room = self.room.trim().to_string();
        mesh_protocol::validate_room_name(&self.room)
            .map_err(|e| AppError::invalid(format!("Room: {e}")))?;
        self.display_name = validate_name(&self.display_name)?;
        self.token = match self.token.as_ref().map(|t| t.expose().trim()) {
            None | Some("") => None,
            Some(token) => Some(validate_token(token)?),
        };
        Ok(self)
    }
}

/// Checks a token's shape (not its signature: only the server can): one
/// line of visible ASCII, as an HTTP header needs, and not absurdly long.
pub fn validate_token(token: &str) -> Result<Token, AppError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AppError::invalid(format!(
            "Token is too long; the limit is {MAX_TOKEN_BYTES} bytes"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::invalid(
            "Token must be one line of visible characters, as issued (no spaces)",
        ));
    }
    Ok(Token::new(token))
}

/// Checks a server URL: `ws://` or `wss://`, a host, nothing else odd.
pub fn validate_server_url(url: &str) -> Result<String, AppError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        AppError::invalid(format!(
            "Server URL \"{url}\" is not a valid URL ({e}); expected e.g. ws://127.0.0.1:3000"
        ))
    })?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(AppError::invalid(format!(
            "Server URL must start with ws:// or wss://, not {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(AppError::invalid("Server URL has no host"));
    }
    Ok(url.to_string())
}

/// Trims a display name and checks its length.
pub fn validate_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(AppError::invalid(format!(
            "Name is too long; the limit is {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "Name must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

/// Trims a status text and checks its length.
pub fn validate_status(status: &str) -> Result<String, AppError> {
    let status = status.trim();
    if status.chars().count() > MAX_STATUS_CHARS {
        return Err(AppError::invalid(format!(
            "Status is too long; the limit is {MAX_STATUS_CHARS} characters"
        )));
    }
    if status.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "Status must not contain control characters",
        ));
    }
    Ok(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> Settings {
        Settings {
            server_url: Some(url.into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_are_embedded_server_and_general_room() {
        let s = Settings::default().validate().unwrap();
        assert_eq!(s.server_url, None);
        assert_eq!(s.room, "general");
    }

    #[test]
    fn websocket_urls_are_accepted_and_empty_means_embedded() {
        assert_eq!(
            with_url(" ws://127.0.0.1:3000 ")
                .validate()
                .unwrap()
                .server_url,
            Some("ws://127.0.0.1:3000".into())
        );
        assert!(with_url("wss://mesh.example.com/socket").validate().is_ok());
        assert_eq!(with_url("   ").validate().unwrap().server_url, None);
    }

    #[test]
    fn bad_urls_get_a_message_naming_the_problem() {
        let err = with_url("http://example.com").validate().unwrap_err();
        assert_eq!(err.code, "EINVALID");
        assert!(err.message.contains("ws:// or wss://"), "{}", err.message);
        let err = with_url("not a url").validate().unwrap_err();
        assert!(err.message.contains("not a valid URL"), "{}", err.message);
        assert!(with_url("ws://").validate().is_err());
    }

    #[test]
    fn rooms_and_names_are_checked() {
        let empty_room = Settings {
            room: "  ".into(),
            ..Settings::default()
        };
        assert!(empty_room
            .validate()
            .unwrap_err()
            .message
            .starts_with("Room"));
        let long_name = Settings {
            display_name: "x".repeat(MAX_NAME_CHARS + 1),
            ..Settings::default()
        };
        assert!(long_name.validate().is_err());
        assert_eq!(validate_name("  Ada  ").unwrap(), "Ada");
        assert!(validate_status(&"s".repeat(MAX_STATUS_CHARS + 1)).is_err());
        assert!(validate_status("a\u{7}").is_err());
    }

    #[test]
    fn tokens_are_trimmed_checked_and_never_printed() {
        let with_token = |t: &str| Settings {
            token: Some(Token::new(t)),
            ..Settings::default()
        };
        let s = with_token(" a.b.c ").validate().unwrap();
        assert_eq!(s.token.as_ref().map(Token::expose), Some("a.b.c"));
        assert!(!format!("{s:?}").contains("a.b.c"), "Debug hides the token");
        assert_eq!(with_token("  ").validate().unwrap().token, None);
        assert!(with_token("a b").validate().is_err());
        assert!(with_token(&"x".repeat(MAX_TOKEN_BYTES + 1))
            .validate()
            .is_err());
    }

    #[test]
    fn stored_settings_with_missing_fields_still_load() {
        let s: Settings =
            serde_json::from_value(serde_json::json!({"displayName": "Ada"})).unwrap();
        assert_eq!(s.room, "general");
        assert_eq!(s.server_url, None);
    }
}
