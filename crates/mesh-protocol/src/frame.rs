//! The frame envelope: `{"id"?, "command", "payload"}` as one JSON text.

use crate::error::ErrorPayload;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::collections::HashSet;
use std::fmt;
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

/// Deepest nesting of arrays and objects accepted in a frame, the envelope
/// object counting as the first level. Deeper
/// input is refused before it is built, so a hostile frame cannot make the
/// receiver recurse (or allocate) without bound.
pub const MAX_DEPTH: usize = 64;

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
    /// The text is not strict JSON: a syntax error, trailing text, a number
    /// out of range, a lone surrogate, a duplicate key, or nesting deeper
    /// than [`MAX_DEPTH`].
    #[error("frame is not valid JSON: {reason}")]
    NotJson {
        /// The request id, if it was read before the error.
        id: Option<u64>,
        /// The command, if it was read before the error.
        command: Option<String>,
        /// What was wrong, and where.
        reason: String,
    },
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
    /// The command the sender gave, when it was read before the error.
    pub fn command(&self) -> Option<&str> {
        match self {
            DecodeError::NotJson { command, .. } => command.as_deref(),
            _ => None,
        }
    }

    /// The request id the sender gave, when it could be read; a receiver
    /// answers the error to that id and stays silent otherwise.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DecodeError::TooLarge { id, .. }
            | DecodeError::MissingCommand { id }
            | DecodeError::NotJson { id, .. } => *id,
            _ => None,
        }
    }
}

fn read_id(id: Option<Value>) -> Result<Option<u64>, DecodeError> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(DecodeError::BadId),
    }
}

/// What the envelope reader has seen so far. It is filled in as the text
/// is read, so that the id survives an error later in the same frame.
#[derive(Default)]
struct Seen {
    id: Option<Result<Option<u64>, DecodeError>>,
    command: Option<Value>,
    payload: Option<Value>,
    /// The text was JSON but not an object.
    not_object: bool,
}

/// Reads the top-level object field by field into [`Seen`]. With
/// `keep_values` false (a frame too large to decode) only the id is kept,
/// and reading stops at the first error.
struct EnvelopeReader<'a> {
    seen: &'a mut Seen,
    keep_values: bool,
}

impl<'de> Visitor<'de> for EnvelopeReader<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            // A frame only read for its id need not be checked in full.
            if self.keep_values && !keys.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let strict = StrictValue { depth: 1 };
            match (key.as_str(), self.keep_values) {
                ("id", _) => self.seen.id = Some(read_id(Some(map.next_value_seed(strict)?))),
                ("command", true) => self.seen.command = Some(map.next_value_seed(strict)?),
                ("payload", true) => self.seen.payload = Some(map.next_value_seed(strict)?),
                // Unknown fields are ignored, but must still be strict JSON.
                (_, true) => {
                    map.next_value_seed(strict)?;
                }
                // Only the id of a frame too large to decode is wanted.
                (_, false) => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.seen.not_object = true;
        while seq.next_element_seed(StrictValue { depth: 1 })?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.seen.not_object = true;
        Ok(())
    }
}

/// A JSON value read strictly: duplicate keys and nesting deeper than
/// [`MAX_DEPTH`] are errors (serde_json's `Value` keeps the last duplicate
/// silently, so two readers could disagree on what a frame said).
struct StrictValue {
    /// Arrays and objects around this value, the envelope included.
    depth: usize,
}

impl StrictValue {
    fn nested<E: de::Error>(&self) -> Result<StrictValue, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(StrictValue {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue { depth: inner.depth })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue { depth: inner.depth })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads `text` as one envelope into `seen`; the error, if any, as text.
fn read_envelope(text: &str, seen: &mut Seen, keep_values: bool) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(EnvelopeReader { seen, keep_values })
        .and_then(|()| de.end())
        .map_err(|e| e.to_string())
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
    ///
    /// The JSON must be strict (see [`DecodeError::NotJson`]); when it is
    /// not, the error still carries the request id if it came before the
    /// fault, so that the sender can be answered.
    pub fn decode(text: &str, max_bytes: usize) -> Result<Frame, DecodeError> {
        if text.len() > max_bytes {
            // Still read the id, so the sender learns which request failed,
            // but from the first `max_bytes` only: refusing a frame must
            // not cost more than accepting one.
            let mut end = max_bytes;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut seen = Seen::default();
            let _ = read_envelope(&text[..end], &mut seen, false);
            return Err(DecodeError::TooLarge {
                id: seen.id.and_then(Result::ok).flatten(),
                len: text.len(),
                max: max_bytes,
            });
        }
        let mut seen = Seen::default();
        let read = read_envelope(text, &mut seen, true);
        let id = seen.id.unwrap_or(Ok(None));
        if let Err(reason) = read {
            let command = match seen.command {
                Some(Value::String(c)) => Some(c),
                _ => None,
            };
            return Err(DecodeError::NotJson {
                id: id.ok().flatten(),
                command,
                reason,
            });
        }
        if seen.not_object {
            return Err(DecodeError::NotObject);
        }
        let id = id?;
        let command = match seen.command {
            Some(Value::String(c)) => c,
            _ => return Err(DecodeError::MissingCommand { id }),
        };
        Ok(Frame {
            id,
            command,
            payload: seen.payload.unwrap_or(Value::Null),
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
            Err(DecodeError::NotJson { id: None, .. })
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
    fn strict_json_errors_keep_the_id() {
        let deep = format!(
            r#"{{"id":5,"command":"mesh/noop","payload":{}{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let cases = [
            (
                r#"{"id":5,"command":"mesh/noop","payload":1e999}"#,
                "out of range",
            ),
            (
                r#"{"id":5,"command":"mesh/noop","payload":"\ud800"}"#,
                "escape",
            ),
            (
                r#"{"id":5,"command":"mesh/noop","payload":{}} trailing"#,
                "trailing",
            ),
            (
                r#"{"id":5,"command":"mesh/noop","payload":{"a":1,"a":2}}"#,
                "duplicate key \"a\"",
            ),
            (
                r#"{"id":5,"command":"a","command":"b"}"#,
                "duplicate key \"command\"",
            ),
            (deep.as_str(), "nesting deeper than 64"),
        ];
        for (text, why) in cases {
            let err = Frame::decode(text, 1 << 20).unwrap_err();
            assert_eq!(err.request_id(), Some(5), "{text}");
            if !text.contains(r#""command":"a""#) {
                assert_eq!(err.command(), Some("mesh/noop"), "{text}");
            }
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
        // Nesting up to the limit (the envelope is the first level) is fine.
        let ok = format!(
            r#"{{"command":"x","payload":{}{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(Frame::decode(&ok, 1 << 20).is_ok());
        // Unknown fields are ignored but still read strictly.
        assert!(Frame::decode(r#"{"command":"x","extra":[1]}"#, MAX).is_ok());
        assert!(Frame::decode(r#"{"id":1,"command":"x","extra":{"b":1,"b":1}}"#, MAX).is_err());
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
