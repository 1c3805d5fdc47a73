//! Reading server frames into what the client does with them (no I/O).

use mesh_protocol::{command, DecodeError, Frame, PresenceUpdate};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// A server frame, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The reply to request `id`.
    Reply {
        /// The request id.
        id: u64,
        /// The command the reply repeats.
        command: String,
        /// The result, or an error payload.
        payload: Value,
    },
    /// `mesh/assign-id`: this connection's id.
    AssignId(String),
    /// `ping`: answer with `pong`.
    Ping,
    /// `latency:request`: answer with `latency:response`.
    LatencyRequest,
    /// `latency`: the measured round trip in milliseconds.
    Latency(u64),
    /// `mesh/presence-update`.
    Presence(PresenceUpdate),
    /// A push this client does not act on (for example the reference
    /// server's duplicate `mesh/subscription-message`), by command name.
    Ignored(String),
}

/// Why a server frame was not usable. The client logs and drops such frames:
/// a misbehaving server must not take the client down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IncomingError {
    /// The envelope could not be read.
    #[error(transparent)]
    Frame(#[from] DecodeError),
    /// A known push carried a payload of the wrong shape.
    #[error("bad {command} payload: {reason}")]
    Payload {
        /// The push.
        command: String,
        /// What was wrong.
        reason: String,
    },
}

/// Reads one text frame from the server, no longer than `max_bytes`.
pub fn parse(text: &str, max_bytes: usize) -> Result<Incoming, IncomingError> {
    if text.len() <= max_bytes {
        if let Some(update) = presence_fast_path(text) {
            return Ok(Incoming::Presence(update));
        }
    }
    classify(Frame::decode(text, max_bytes)?)
}

/// Presence updates are by far the most frequent push, so they are read
/// in one pass straight into [`PresenceUpdate`], without an intermediate
/// `serde_json::Value`. Anything unusual (an id, another command, a bad
/// payload) returns `None` and takes the general path, which also produces
/// the precise error.
fn presence_fast_path(text: &str) -> Option<PresenceUpdate> {
    #[derive(Deserialize)]
    struct Push<'a> {
        #[serde(default)]
        id: Option<IgnoredAny>,
        #[serde(borrow)]
        command: Cow<'a, str>,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    // serde would also read the struct from a JSON array.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let push: Push<'_> = serde_json::from_str(text).ok()?;
    if push.id.is_some() || push.command != command::PRESENCE_UPDATE {
        return None;
    }
    serde_json::from_str(push.payload.get()).ok()
}

/// Classifies an already decoded frame.
pub fn classify(frame: Frame) -> Result<Incoming, IncomingError> {
    if let Some(id) = frame.id {
        // Only replies carry an id towards the client; a `ping` with an id
        // is still a ping.
        if frame.command != command::PING && frame.command != command::LATENCY_REQUEST {
            return Ok(Incoming::Reply {
                id,
                command: frame.command,
                payload: frame.payload,
            });
        }
    }
    let bad = |command: &str, reason: String| IncomingError::Payload {
        command: command.to_string(),
        reason,
    };
    Ok(match frame.command.as_str() {
        command::PING => Incoming::Ping,
        command::LATENCY_REQUEST => Incoming::LatencyRequest,
        command::ASSIGN_ID => match frame.payload {
            Value::String(id) if !id.is_empty() => Incoming::AssignId(id),
            other => {
                return Err(bad(
                    command::ASSIGN_ID,
                    format!("expected an id, got {other}"),
                ))
            }
        },
        command::LATENCY => match frame.payload.as_f64() {
            // The reference server measures with Date.now(), but be lenient
            // with fractional or negative clocks rather than drop the frame.
            Some(ms) => Incoming::Latency(ms.max(0.0).round() as u64),
            None => return Err(bad(command::LATENCY, "expected milliseconds".into())),
        },
        command::PRESENCE_UPDATE => match serde_json::from_value(frame.payload) {
            Ok(update) => Incoming::Presence(update),
            Err(e) => return Err(bad(command::PRESENCE_UPDATE, e.to_string())),
        },
        _ => Incoming::Ignored(frame.command),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 4096;

    #[test]
    fn replies_are_matched_by_id() {
        let got = parse(r#"{"id":7,"command":"mesh/noop","payload":true}"#, MAX).unwrap();
        assert_eq!(
            got,
            Incoming::Reply {
                id: 7,
                command: "mesh/noop".into(),
                payload: json!(true)
            }
        );
    }

    #[test]
    fn heartbeat_pushes() {
        assert_eq!(
            parse(r#"{"command":"ping","payload":{}}"#, MAX),
            Ok(Incoming::Ping)
        );
        assert_eq!(
            parse(r#"{"id":3,"command":"ping","payload":{}}"#, MAX),
            Ok(Incoming::Ping)
        );
        assert_eq!(
            parse(r#"{"command":"latency:request","payload":{}}"#, MAX),
            Ok(Incoming::LatencyRequest)
        );
        assert_eq!(
            parse(r#"{"command":"latency","payload":12}"#, MAX),
            Ok(Incoming::Latency(12))
        );
        assert_eq!(
            parse(r#"{"command":"mesh/assign-id","payload":"abc"}"#, MAX),
            Ok(Incoming::AssignId("abc".into()))
        );
    }

    #[test]
    fn presence_updates_are_typed() {
        let text = PresenceUpdate::State {
            connection_id: "c1".into(),
            room_name: "lobby".into(),
            state: Some(json!({"status": "away"})),
            timestamp: 9,
        }
        .to_frame_text();
        match parse(&text, MAX).unwrap() {
            Incoming::Presence(u) => {
                assert_eq!(u.connection_id(), "c1");
                assert_eq!(u.room_name(), "lobby");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_path() {
        let frames = [
            r#"{"command":"mesh/presence-update","payload":{"type":"join","connectionId":"c","roomName":"r","timestamp":1}}"#,
            r#" { "payload" : {"type":"state","connectionId":"c","roomName":"r","state":{"a":[1]},"timestamp":2}, "command":"mesh/presence-update", "extra": 1 }"#,
            r#"{"id":null,"command":"mesh/presence-update","payload":{"type":"leave","connectionId":"c","roomName":"r","timestamp":3}}"#,
        ];
        for text in frames {
            let general = classify(Frame::decode(text, MAX).unwrap()).unwrap();
            assert!(matches!(general, Incoming::Presence(_)));
            assert_eq!(parse(text, MAX).unwrap(), general, "{text}");
        }
        // With an id it is a reply, whatever the command says.
        let with_id = r#"{"id":4,"command":"mesh/presence-update","payload":{"type":"join","connectionId":"c","roomName":"r","timestamp":1}}"#;
        assert!(matches!(
            parse(with_id, MAX),
            Ok(Incoming::Reply { id: 4, .. })
        ));
        // An array is not an envelope, even with the right fields in order.
        let array = r#"[null,"mesh/presence-update",{"type":"join","connectionId":"c","roomName":"r","timestamp":1}]"#;
        assert!(parse(array, MAX).is_err());
    }

    #[test]
    fn reference_duplicates_are_ignored() {
        let dup = json!({
            "command": "mesh/subscription-message",
            "payload": {"channel": "mesh:presence:updates:lobby", "message": "{}"}
        });
        assert_eq!(
            parse(&dup.to_string(), MAX),
            Ok(Incoming::Ignored("mesh/subscription-message".into()))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "not json",
            "[1,2]",
            "{\"payload\":1}",
            "{\"id\":-1,\"command\":\"x\"}",
            "{\"command\":\"mesh/assign-id\",\"payload\":5}",
            "{\"command\":\"latency\",\"payload\":\"slow\"}",
            "{\"command\":\"mesh/presence-update\",\"payload\":{\"type\":\"dance\"}}",
        ] {
            assert!(parse(text, MAX).is_err(), "{text:?} should be rejected");
        }
        let big = format!("{{\"command\":\"x\",\"payload\":\"{}\"}}", "a".repeat(MAX));
        assert!(matches!(
            parse(&big, MAX),
            Err(IncomingError::Frame(DecodeError::TooLarge { .. }))
        ));
    }
}
