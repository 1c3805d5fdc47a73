//! What the user can configure: which server, which room, which name, and
//! the token that proves who they are to a server that asks.
//!
//! Settings are plain data with a `validate` step, so the checks run (and are
//! tested) without a window or a store.

use std::sync::OnceLock;

use mesh_client::Token;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::AppError;

/// The room the app joins when none was chosen.
pub const DEFAULT_ROOM: &str = "general";
/// Longest display name we accept, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest status text we accept, in characters.
pub const MAX_STATUS_CHARS: usize = 200;
/// Longest token we accept, in bytes (a JWT with generous claims).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Minutes without input before you are shown away, unless changed.
pub const DEFAULT_AWAY_AFTER_MINUTES: u32 = 10;
/// The longest wait for automatic away we accept: a day.
pub const MAX_AWAY_AFTER_MINUTES: u32 = 24 * 60;

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
    /// Whether closing the last window keeps the app running in the tray
    /// (where the desktop has one), still in the room.
    #[serde(default = "default_true")]
    pub close_to_tray: bool,
    /// Minutes without keyboard or mouse input before you are shown away;
    /// 0 turns automatic away off.
    #[serde(default = "default_away_after")]
    pub away_after_minutes: u32,
    /// Whether a desktop notification says when someone you starred comes
    /// online. On by default: starring someone is already the choice to
    /// hear about them, and no one else is ever announced.
    #[serde(default = "default_true")]
    pub notify_starred: bool,
}

fn default_room() -> String {
    DEFAULT_ROOM.to_string()
}

fn default_true() -> bool {
    true
}

fn default_away_after() -> u32 {
    DEFAULT_AWAY_AFTER_MINUTES
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: None,
            room: default_room(),
            display_name: String::new(),
            token: None,
            close_to_tray: true,
            away_after_minutes: DEFAULT_AWAY_AFTER_MINUTES,
            notify_starred: true,
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
        self.room = validate_room(&self.room)?;
        self.display_name = validate_name(&self.display_name)?;
        self.token = match self.token.as_ref().map(|t| t.expose().trim()) {
            None | Some("") => None,
            Some(token) => Some(validate_token(token)?),
        };
        if self.away_after_minutes > MAX_AWAY_AFTER_MINUTES {
            return Err(AppError::invalid(format!(
                "Away after: at most {MAX_AWAY_AFTER_MINUTES} minutes (0 turns it off)"
            )));
        }
        Ok(self)
    }

    /// Settings as stored, checked field by field: a missing field takes its
    /// default, and so does one that is not valid, with a notice that names
    /// it; the other fields are kept. (A bad server URL must not cost you
    /// your room and name.)
    pub fn from_stored(stored: &Value) -> (Settings, Vec<String>) {
        let mut notices = Vec::new();
        let Some(fields) = stored.as_object() else {
            notices.push("The saved settings could not be read; the defaults are used.".into());
            return (Settings::default(), notices);
        };
        let server_url = stored_field(
            fields,
            "serverUrl",
            "server URL",
            "the embedded server is used",
            &mut notices,
            |url| match url.trim() {
                "" => Ok(None),
                url => validate_server_url(url).map(Some),
            },
        )
        .flatten();
        let room = stored_field(
            fields,
            "room",
            "room",
            &format!("the app joins {DEFAULT_ROOM}"),
            &mut notices,
            validate_room,
        )
        .unwrap_or_else(default_room);
        let display_name = stored_field(
            fields,
            "displayName",
            "display name",
            "the default name is used",
            &mut notices,
            validate_name,
        )
        .unwrap_or_default();
        let token = stored_field(
            fields,
            "token",
            "token",
            "no token is sent",
            &mut notices,
            |token| match token.trim() {
                "" => Ok(None),
                token => validate_token(token).map(Some),
            },
        )
        .flatten();
        let defaults = Settings::default();
        let close_to_tray = stored_switch(
            fields,
            "closeToTray",
            "close to tray",
            defaults.close_to_tray,
            "the app keeps running in the tray",
            &mut notices,
        );
        let notify_starred = stored_switch(
            fields,
            "notifyStarred",
            "notify when a starred person comes online",
            defaults.notify_starred,
            "you are notified",
            &mut notices,
        );
        let away_after_minutes = match fields.get("awayAfterMinutes") {
            None | Some(Value::Null) => defaults.away_after_minutes,
            Some(value) => match value.as_u64() {
                Some(m) if m <= u64::from(MAX_AWAY_AFTER_MINUTES) => m as u32,
                _ => {
                    notices.push(format!(
                        "The saved \"away after\" ({value}) is not a number of minutes \
                         from 0 to {MAX_AWAY_AFTER_MINUTES}. Instead it is \
                         {DEFAULT_AWAY_AFTER_MINUTES}; change it in Settings."
                    ));
                    defaults.away_after_minutes
                }
            },
        };
        let settings = Settings {
            server_url,
            room,
            display_name,
            token,
            close_to_tray,
            away_after_minutes,
            notify_starred,
        };
        (settings, notices)
    }
}

/// The stored on/off field `key`: missing (or `null`), `default`; not true
/// or false, `default` too, and a notice saying what `fallback` happens
/// instead.
fn stored_switch(
    fields: &Map<String, Value>,
    key: &str,
    label: &str,
    default: bool,
    fallback: &str,
    notices: &mut Vec<String>,
) -> bool {
    match fields.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(on)) => *on,
        Some(other) => {
            notices.push(format!(
                "The saved \"{label}\" ({other}) is not true or false. \
                 Instead {fallback}; change it in Settings."
            ));
            default
        }
    }
}

/// Stored fields whose value a notice must not quote.
const SECRET_FIELDS: &[&str] = &["token"];

/// The stored string field `key`, checked by `check`. Missing (or `null`):
/// `None`, silently. Not a string, or refused by `check`: `None`, and a
/// notice saying what `fallback` happens instead.
fn stored_field<T>(
    fields: &Map<String, Value>,
    key: &str,
    label: &str,
    fallback: &str,
    notices: &mut Vec<String>,
    check: impl FnOnce(&str) -> Result<T, AppError>,
) -> Option<T> {
    // A secret is never repeated, not even to its owner's window.
    let secret = SECRET_FIELDS.contains(&key);
    let problem = match fields.get(key) {
        None | Some(Value::Null) => return None,
        Some(Value::String(text)) => match check(text) {
            Ok(value) => return Some(value),
            Err(e) if secret => format!("The saved {label} is not valid: {}", e.message),
            Err(e) => format!(
                "The saved {label} \"{}\" is not valid: {}",
                hide_token_param(text),
                e.message
            ),
        },
        Some(_) if secret => format!("The saved {label} is not text"),
        Some(other) => format!(
            "The saved {label} ({}) is not text",
            hide_token_param(&other.to_string())
        ),
    };
    notices.push(format!(
        "{problem}. Instead {fallback}; change it in Settings."
    ));
    None
}

/// The name the app starts with until you choose one: your operating system
/// account's full name, or its login name when it has none.
pub fn default_display_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    // `realname` falls back to the login name, and reads only the name part
    // of a GECOS field ("Ada Lovelace,,,").
    NAME.get_or_init(|| validate_name(&whoami::realname()).unwrap_or_default())
}

/// Trims a room name and checks it is one the protocol accepts.
pub fn validate_room(room: &str) -> Result<String, AppError> {
    let room = room.trim();
    mesh_protocol::validate_room_name(room).map_err(|e| AppError::invalid(format!("Room: {e}")))?;
    Ok(room.to_string())
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

/// `text` with the value of every `token=` parameter replaced by `…`: a
/// URL may carry a token, and a message never shows one.
fn hide_token_param(text: &str) -> String {
    const PARAM: &str = "token=";
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PARAM) {
        let value = at + PARAM.len();
        shown.push_str(&rest[..value]);
        shown.push('…');
        let end = rest[value..]
            .find(['&', '#'])
            .map_or(rest.len(), |len| value + len);
        rest = &rest[end..];
    }
    shown.push_str(rest);
    shown
}

/// Checks a server URL: `ws://` or `wss://`, a host, no token (that goes in
/// the Token field, which is kept out of logs, messages and the window).
pub fn validate_server_url(url: &str) -> Result<String, AppError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        AppError::invalid(format!(
            "Server URL \"{}\" is not a valid URL ({e}); expected e.g. ws://127.0.0.1:3000",
            hide_token_param(url)
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
    if parsed.query_pairs().any(|(name, _)| name == "token") {
        return Err(AppError::invalid(
            "Server URL must not carry the token: put it in the Token field instead",
        ));
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
    fn a_token_in_the_server_url_is_refused_and_never_repeated() {
        for url in [
            "ws://mesh.example.com/?token=abc.def",
            "wss://mesh.example.com/?room=x&token=abc.def#top",
        ] {
            let err = validate_server_url(url).unwrap_err();
            assert!(err.message.contains("Token field"), "{}", err.message);
            assert!(!err.message.contains("abc.def"), "{}", err.message);
        }
        // Even when the URL is wrong in other ways too.
        let err = validate_server_url("ws://:99999/?token=abc.def").unwrap_err();
        assert!(!err.message.contains("abc.def"), "{}", err.message);
        let stored = serde_json::json!({"serverUrl": "ws://h/?token=abc.def&x=1", "room": "r"});
        let (s, notices) = Settings::from_stored(&stored);
        assert_eq!((s.server_url, s.room.as_str()), (None, "r"));
        assert!(notices[0].contains("ws://h/?token=…&x=1"), "{notices:?}");
        // A URL without one is untouched.
        assert_eq!(hide_token_param("ws://h/?tokens"), "ws://h/?tokens");
        assert!(validate_server_url("ws://h/?room=token").is_ok());
    }

    #[test]
    fn stored_settings_are_checked_field_by_field() {
        let stored = serde_json::json!({"serverUrl": "ws://256.1.1.1", "room": "design", "displayName": "Ada"});
        let (s, notices) = Settings::from_stored(&stored);
        assert_eq!(s.server_url, None, "falls back to the embedded server");
        assert_eq!(
            (s.room.as_str(), s.display_name.as_str()),
            ("design", "Ada")
        );
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("ws://256.1.1.1"), "{notices:?}");
        assert!(notices[0].contains("embedded server"), "{notices:?}");

        let stored =
            serde_json::json!({"serverUrl": "http://example", "room": 7, "displayName": "x\u{7}"});
        let (s, notices) = Settings::from_stored(&stored);
        assert_eq!(s, Settings::default());
        assert_eq!(notices.len(), 3, "one notice per bad field: {notices:?}");

        let stored = serde_json::json!({"serverUrl": " wss://mesh.example.com ", "room": " r "});
        let (s, notices) = Settings::from_stored(&stored);
        assert_eq!(s.server_url.as_deref(), Some("wss://mesh.example.com"));
        assert_eq!(s.room, "r");
        assert!(notices.is_empty(), "{notices:?}");

        let (s, notices) = Settings::from_stored(&serde_json::json!("garbage"));
        assert_eq!(s, Settings::default());
        assert_eq!(notices.len(), 1);
    }

    #[test]
    fn tray_away_and_notify_settings_default_and_are_checked() {
        let (s, notices) = Settings::from_stored(&serde_json::json!({"room": "r"}));
        assert!(s.close_to_tray);
        assert_eq!(s.away_after_minutes, DEFAULT_AWAY_AFTER_MINUTES);
        assert!(notices.is_empty());
        let stored = serde_json::json!({"closeToTray": false, "awayAfterMinutes": 0});
        let (s, notices) = Settings::from_stored(&stored);
        assert!(!s.close_to_tray);
        assert_eq!(s.away_after_minutes, 0, "0 turns it off");
        assert!(notices.is_empty());
        let stored = serde_json::json!({"closeToTray": "no", "awayAfterMinutes": -3, "room": "r"});
        let (s, notices) = Settings::from_stored(&stored);
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert_eq!((s.close_to_tray, s.room.as_str()), (true, "r"));
        // Notifications for starred people: on unless turned off.
        assert!(s.notify_starred);
        let (s, _) = Settings::from_stored(&serde_json::json!({"notifyStarred": false}));
        assert!(!s.notify_starred);
        let (s, notices) = Settings::from_stored(&serde_json::json!({"notifyStarred": 1}));
        assert!(s.notify_starred);
        assert!(
            notices[0].contains("notify when a starred person"),
            "{notices:?}"
        );
        let too_long = Settings {
            away_after_minutes: MAX_AWAY_AFTER_MINUTES + 1,
            ..Settings::default()
        };
        assert!(too_long.validate().is_err());
    }

    #[test]
    fn the_default_name_is_a_valid_one() {
        let name = default_display_name();
        assert_eq!(validate_name(name).unwrap(), name);
    }

    #[test]
    fn stored_settings_with_missing_fields_still_load() {
        let s: Settings =
            serde_json::from_value(serde_json::json!({"displayName": "Ada"})).unwrap();
        assert_eq!(s.room, "general");
        assert_eq!(s.server_url, None);
    }
}
