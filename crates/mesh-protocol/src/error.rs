//! Error codes and the payload of a failed request.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;

/// Why a request failed. Serialized as its wire code (`"ENOTFOUND"`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unknown command.
    NotFound,
    /// The handler failed.
    Server,
    /// No reply in time (raised on the client side).
    Timeout,
    /// The payload has the wrong shape.
    Invalid,
    /// A frame or a state is over a limit.
    TooLarge,
    /// A guard or authentication refused.
    Forbidden,
    /// Too many requests.
    RateLimit,
    /// A code we do not know, kept as sent (other servers may add their own).
    Other(String),
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::NotFound => "ENOTFOUND",
            ErrorCode::Server => "ESERVER",
            ErrorCode::Timeout => "ETIMEOUT",
            ErrorCode::Invalid => "EINVALID",
            ErrorCode::TooLarge => "ETOOLARGE",
            ErrorCode::Forbidden => "EFORBIDDEN",
            ErrorCode::RateLimit => "ERATELIMIT",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses a wire code; unknown codes become [`ErrorCode::Other`].
    pub fn parse(code: &str) -> Self {
        match code {
            "ENOTFOUND" => ErrorCode::NotFound,
            "ESERVER" => ErrorCode::Server,
            "ETIMEOUT" => ErrorCode::Timeout,
            "EINVALID" => ErrorCode::Invalid,
            "ETOOLARGE" => ErrorCode::TooLarge,
            "EFORBIDDEN" => ErrorCode::Forbidden,
            "ERATELIMIT" => ErrorCode::RateLimit,
            other => ErrorCode::Other(other.to_string()),
        }
    }

    /// The error `name` that goes with the code (`CommandError` for
    /// `ENOTFOUND`, as the reference server sends it).
    pub fn error_name(&self) -> &str {
        match self {
            ErrorCode::NotFound => "CommandError",
            ErrorCode::Server => "ServerError",
            ErrorCode::Timeout => "TimeoutError",
            ErrorCode::Invalid => "ValidationError",
            ErrorCode::TooLarge => "LimitError",
            ErrorCode::Forbidden => "ForbiddenError",
            ErrorCode::RateLimit => "RateLimitError",
            ErrorCode::Other(_) => "Error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Ok(ErrorCode::parse(&code))
    }
}

/// The payload of a failed request:
/// `{"error": "<message>", "code": "<CODE>", "name": "<ErrorName>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// Human-readable message.
    pub error: String,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Error class name, for JavaScript clients.
    #[serde(default)]
    pub name: String,
}

impl ErrorPayload {
    /// Builds an error payload whose `name` matches its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let name = code.error_name().to_string();
        ErrorPayload {
            error: message.into(),
            code,
            name,
        }
    }

    /// Reads an error payload out of a reply payload, if it is one.
    ///
    /// A reply is an error when it is an object with a string `error` and a
    /// string `code`; anything else is a result.
    pub fn from_reply(payload: &Value) -> Option<Self> {
        let obj = payload.as_object()?;
        let error = obj.get("error")?.as_str()?;
        let code = obj.get("code")?.as_str()?;
        let name = obj.get("name").and_then(Value::as_str).unwrap_or("Error");
        Some(ErrorPayload {
            error: error.to_string(),
            code: ErrorCode::parse(code),
            name: name.to_string(),
        })
    }

    /// The payload as a JSON value, ready to put in a reply frame.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "error": self.error, "code": self.code.as_str(), "name": self.name })
    }
}

impl fmt::Display for ErrorPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.error)
    }
}

impl std::error::Error for ErrorPayload {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_round_trip() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::Server,
            ErrorCode::Timeout,
            ErrorCode::Invalid,
            ErrorCode::TooLarge,
            ErrorCode::Forbidden,
            ErrorCode::RateLimit,
            ErrorCode::Other("EWHATEVER".into()),
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
        }
    }

    #[test]
    fn error_payload_matches_reference_shape() {
        let p = ErrorPayload::new(ErrorCode::NotFound, "Command \"x\" not found");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"error": "Command \"x\" not found", "code": "ENOTFOUND", "name": "CommandError"})
        );
        assert_eq!(p.to_value(), serde_json::to_value(&p).unwrap());
    }

    #[test]
    fn from_reply_tells_errors_from_results() {
        let err = json!({"error": "nope", "code": "ESERVER", "name": "Error"});
        assert_eq!(
            ErrorPayload::from_reply(&err).unwrap().code,
            ErrorCode::Server
        );
        assert!(ErrorPayload::from_reply(&json!(true)).is_none());
        assert!(ErrorPayload::from_reply(&json!({"success": true})).is_none());
        // A user's state may well have an `error` field; without a code it is data.
        assert!(ErrorPayload::from_reply(&json!({"error": "typo"})).is_none());
    }
}
