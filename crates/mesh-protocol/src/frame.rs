//! The frame envelope: `{"id"?, "command", "payload"}` as one JSON text.

use crate::error::ErrorPayload;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Request id, chosen by the sender; `None` for pushes and
    /// fire-and-forget messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Command or push name (see [`crate::command`]).
    pub command: String,
    /// Command-specific data; `null` when the sender gave none.
    #[serde(default)]
    pub payload: Value,
}

/// Why a text could not be read as a [`Frame`].
///
/// Where the text was a JSON object with a usable `id`, the error keeps it so
/// that the receiver can still answer the request with an error payload.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The text is longer than the receiver accepts.
    #[error("frame is {len} bytes; the limit is {max}")]
    TooLarge {
        /// The request id, if one could be read.
        id: Option<u64>,
        /// Length of the text in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// The text is not JSON at all.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// The text is JSON but not an object.
    #[error("frame is not a JSON object")]
    NotObject,
    /// The object has an `id` that is not a non-negative integer.
    #[error("frame id must be a non-negative integer")]
    BadId,
    /// The object has no string `command`.
    #[error("frame has no string \"command\"")]
    MissingCommand {
        /// The request id, if one could be read.
        id: Option<u64>,
    },
}

impl DecodeError {
    /// The request id the sender gave, when it could be read; a receiver
    /// answers the error to that id and stays silent otherwise.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::TooLarge { id, .. } | DecodeError::MissingCommand { id } => *id,
            _ => None,
        }
    }
}

/// The envelope as it is first read: fields typed loosely so that a bad
/// field still lets us report which one it was.
#[derive(Deserialize)]
struct LooseFrame {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    command: Option<Value>,
    #[serde(default)]
    payload: Value,
}

/// Reads just the id of a frame we refuse to decode in full.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Value>,
}

fn read_id(id: Option<Value>) -> Result<Option<u64>, DecodeError> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(DecodeError::BadId),
    }
}

impl Frame {
    /// A request frame.
    pub fn request(id: u64, command: impl Into<String>, payload: Value) -> Self {
        Frame {
            id: Some(id),
            command: command.into(),
            payload,
        }
    }

    /// A frame without id: a server push or a fire-and-forget message.
    pub fn push(command: impl Into<String>, payload: Value) -> Self {
        Frame {
            id: None,
            command: command.into(),
            payload,
        }
    }

    /// The reply to a request: same id and command, with a result payload.
    pub fn reply(id: Option<u64>, command: impl Into<String>, payload: Value) -> Self {
        Frame {
            id,
            command: command.into(),
            payload,
        }
    }

    /// The reply to a failed request.
    pub fn error_reply(id: Option<u64>, command: impl Into<String>, error: &ErrorPayload) -> Self {
        Frame::reply(id, command, error.to_value())
    }

    /// Reads a frame from text no longer than `max_bytes`.
    pub fn decode(text: &str, max_bytes: usize) -> Result<Frame, DecodeError> {
        if text.len() > max_bytes {
            // Still read the id, so the sender learns which request failed.
            let id = serde_json::from_str::<IdOnly>(text)
                .ok()
                .and_then(|f| read_id(f.id).ok().flatten());
            return Err(DecodeError::TooLarge {
                id,
                len: text.len(),
                max: max_bytes,
            });
        }
        // serde would also read a struct from a JSON array; the envelope is
        // an object only.
        if !text.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => DecodeError::NotObject,
                Err(e) => DecodeError::NotJson(e.to_string()),
            });
        }
        let loose: LooseFrame = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                DecodeError::NotObject
            } else {
                DecodeError::NotJson(e.to_string())
            }
        })?;
        let id = read_id(loose.id)?;
        let command = match loose.command {
            Some(Value::String(c)) => c,
            _ => return Err(DecodeError::MissingCommand { id }),
        };
        Ok(Frame {
            id,
            command,
            payload: loose.payload,
        })
    }

    /// Writes the frame as JSON text.
    pub fn encode(&self) -> String {
        // Serializing a Value-backed struct cannot fail: keys are strings.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the payload as `T`, consuming the frame.
    pub fn into_payload<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.payload)
    }

    /// The error carried by this reply, if it is an error reply.
    pub fn error(&self) -> Option<ErrorPayload> {
        ErrorPayload::from_reply(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    const MAX: usize = 1024;

    #[test]
    fn decodes_request_and_push() {
        let f = Frame::decode(
            r#"{"id":7,"command":"mesh/join-room","payload":{"roomName":"lobby"}}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(f.id, Some(7));
        assert_eq!(f.command, "mesh/join-room");
        assert_eq!(f.payload, json!({"roomName": "lobby"}));

        let p = Frame::decode(r#"{"command":"ping","payload":{}}"#, MAX).unwrap();
        assert_eq!(p.id, None);
        let no_payload = Frame::decode(r#"{"command":"pong"}"#, MAX).unwrap();
        assert_eq!(no_payload.payload, Value::Null);
    }

    #[test]
    fn encodes_without_id_for_pushes() {
        let text = Frame::push("mesh/assign-id", json!("abc")).encode();
        assert_eq!(text, r#"{"command":"mesh/assign-id","payload":"abc"}"#);
        let text = Frame::request(1, "mesh/noop", json!({})).encode();
        assert_eq!(text, r#"{"id":1,"command":"mesh/noop","payload":{}}"#);
        let back = Frame::decode(&text, MAX).unwrap();
        assert_eq!(back, Frame::request(1, "mesh/noop", json!({})));
    }

    #[test]
    fn refuses_bad_input_with_the_id_when_it_can() {
        assert!(matches!(
            Frame::decode("not json", MAX),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(Frame::decode("[1,2]", MAX), Err(DecodeError::NotObject));
        assert_eq!(Frame::decode("42", MAX), Err(DecodeError::NotObject));
        assert_eq!(
            Frame::decode(r#"{"id":3,"payload":{}}"#, MAX),
            Err(DecodeError::MissingCommand { id: Some(3) })
        );
        assert_eq!(
            Frame::decode(r#"{"id":3,"command":5}"#, MAX),
            Err(DecodeError::MissingCommand { id: Some(3) })
        );
        assert_eq!(
            Frame::decode(r#"{"id":"x","command":"mesh/noop"}"#, MAX),
            Err(DecodeError::BadId)
        );
        assert_eq!(
            Frame::decode(r#"{"id":-1,"command":"mesh/noop"}"#, MAX),
            Err(DecodeError::BadId)
        );
        let big = format!(
            r#"{{"id":9,"command":"mesh/noop","payload":"{}"}}"#,
            "x".repeat(MAX)
        );
        let err = Frame::decode(&big, MAX).unwrap_err();
        assert_eq!(err.request_id(), Some(9));
        assert!(matches!(err, DecodeError::TooLarge { max: MAX, .. }));
    }

    #[test]
    fn error_replies_are_recognised() {
        let e = ErrorPayload::new(ErrorCode::Invalid, "roomName is required");
        let f = Frame::error_reply(Some(4), "mesh/join-room", &e);
        assert_eq!(f.error(), Some(e));
        assert_eq!(
            Frame::reply(Some(4), "mesh/noop", json!(true)).error(),
            None
        );
    }
}
