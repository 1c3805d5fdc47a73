//! Key names. Every variable part of a key (room names, connection and
//! instance ids) is percent-encoded, so no name can reach into another
//! key's space: `:` and the glob characters never appear unescaped. The
//! same encoding exists in Lua (`enc` in `scripts.rs`); both must agree.

/// Escapes every byte outside `[A-Za-z0-9_.-]` as `%XX` (upper-case hex).
pub(crate) fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-') {
            out.push(byte as char);
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0x0f)])
}

/// Builds the keys of one deployment (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    /// Members of a room (SET of connection ids).
    pub(crate) fn room(&self, room: &str) -> String {
        format!("{}room:{}", self.prefix, encode(room))
    }

    /// Rooms a connection is in (SET of raw room names).
    pub(crate) fn connection_rooms(&self, conn: &str) -> String {
        format!("{}connection:{}:rooms", self.prefix, encode(conn))
    }

    /// Connections present in a room (SET).
    pub(crate) fn present(&self, room: &str) -> String {
        format!("{}presence:room:{}", self.prefix, encode(room))
    }

    /// States in a room (HASH connection id -> JSON).
    pub(crate) fn states(&self, room: &str) -> String {
        format!("{}presence:state:{}", self.prefix, encode(room))
    }

    /// Connection metadata (HASH connection id -> JSON).
    pub(crate) fn metadata(&self) -> String {
        format!("{}metadata", self.prefix)
    }

    /// Room metadata (HASH raw room name -> JSON).
    pub(crate) fn room_metadata(&self) -> String {
        format!("{}roommeta", self.prefix)
    }

    /// Connections of one instance (SET).
    pub(crate) fn instance_connections(&self, instance: &str) -> String {
        format!("{}instance:{}:connections", self.prefix, encode(instance))
    }

    /// Set by the instance that swept a dead instance, so that the instance,
    /// should it come back, knows its presence was announced gone.
    pub(crate) fn instance_swept(&self, instance: &str) -> String {
        format!("{}instance:{}:swept", self.prefix, encode(instance))
    }

    /// The pub/sub channel of a room's presence updates.
    pub(crate) fn room_channel(&self, room: &str) -> String {
        format!("{}room:{{{}}}:updates", self.prefix, encode(room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_names_apart() {
        assert_eq!(encode("lobby-1.a_b"), "lobby-1.a_b");
        assert_eq!(encode("a:b"), "a%3Ab");
        assert_eq!(encode("a%3Ab"), "a%253Ab");
        assert_eq!(encode("*{x}"), "%2A%7Bx%7D");
        assert_eq!(encode("é"), "%C3%A9");
        let keys = Keys {
            prefix: "p:".into(),
        };
        // A room named like another key's tail stays inside its own space.
        assert_ne!(keys.room("x:conn:y"), keys.room("x") + ":conn:y");
        assert_eq!(keys.room("x:conn:y"), "p:room:x%3Aconn%3Ay");
    }
}
