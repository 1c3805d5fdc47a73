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

/// How many hash-tag buckets rooms and connections are spread over. A
/// room's keys, its expiry entries and its channel all carry its bucket as
/// their hash tag, so every script on a room touches one Redis Cluster
/// slot; the buckets spread rooms over the cluster's nodes.
pub(crate) const BUCKETS: u32 = 64;

/// The bucket of a room or connection: FNV-1a of the raw name. Every
/// instance must agree, so this never changes.
pub(crate) fn bucket(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % BUCKETS
}

/// Builds the keys of one deployment (one prefix). The prefix holds no
/// `{` or `}`, so the first `{...}` of every key is its hash tag.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    /// One key of a room (`members`, `present`, `states`) or its channel
    /// (`updates`); in the room's bucket.
    fn room_key(&self, room: &str, kind: &str) -> String {
        format!(
            "{}room:{{{}}}:{}:{kind}",
            self.prefix,
            bucket(room),
            encode(room)
        )
    }

    /// Members of a room (SET of connection ids).
    pub(crate) fn room(&self, room: &str) -> String {
        self.room_key(room, "members")
    }

    /// Connections present in a room (SET).
    pub(crate) fn present(&self, room: &str) -> String {
        self.room_key(room, "present")
    }

    /// States in a room (HASH connection id -> JSON).
    pub(crate) fn states(&self, room: &str) -> String {
        self.room_key(room, "states")
    }

    /// The pub/sub channel of a room's presence updates.
    pub(crate) fn room_channel(&self, room: &str) -> String {
        self.room_key(room, "updates")
    }

    /// Presence TTLs and state expiries of the rooms of one bucket (ZSET).
    pub(crate) fn expiry(&self, bucket: u32) -> String {
        format!("{}expiry:{{{bucket}}}", self.prefix)
    }

    /// Room metadata of the room's bucket (HASH raw room name -> JSON).
    pub(crate) fn room_metadata(&self, room: &str) -> String {
        format!("{}roommeta:{{{}}}", self.prefix, bucket(room))
    }

    /// Rooms a connection is in (SET of raw room names), in the
    /// connection's bucket.
    pub(crate) fn connection_rooms(&self, conn: &str) -> String {
        format!(
            "{}conn:{{{}}}:{}:rooms",
            self.prefix,
            bucket(conn),
            encode(conn)
        )
    }

    /// Connection metadata of the connection's bucket (HASH connection id
    /// -> JSON).
    pub(crate) fn metadata(&self, conn: &str) -> String {
        format!("{}metadata:{{{}}}", self.prefix, bucket(conn))
    }

    /// Connections of one instance (SET).
    pub(crate) fn instance_connections(&self, instance: &str) -> String {
        format!(
            "{}instance:{{{}}}:connections",
            self.prefix,
            encode(instance)
        )
    }

    /// Set by the instance that swept a dead instance, so that the instance,
    /// should it come back, knows its presence was announced gone.
    pub(crate) fn instance_swept(&self, instance: &str) -> String {
        format!("{}instance:{{{}}}:swept", self.prefix, encode(instance))
    }

    /// The instance registry (ZSET instance id -> last heartbeat).
    pub(crate) fn instances(&self) -> String {
        format!("{}{{instances}}:heartbeats", self.prefix)
    }

    /// Instances being swept (ZSET instance id -> when the sweeper's claim
    /// lapses), in the registry's slot.
    pub(crate) fn sweeping(&self) -> String {
        format!("{}{{instances}}:sweeping", self.prefix)
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
        let b = bucket("x:conn:y");
        assert_eq!(
            keys.room("x:conn:y"),
            format!("p:room:{{{b}}}:x%3Aconn%3Ay:members")
        );
        // Everything of a room shares its hash tag, so one script on it
        // touches one cluster slot.
        let tag = format!("{{{b}}}");
        for key in [
            keys.present("x:conn:y"),
            keys.states("x:conn:y"),
            keys.room_channel("x:conn:y"),
            keys.expiry(b),
            keys.room_metadata("x:conn:y"),
        ] {
            assert!(key.contains(&tag), "{key}");
        }
        assert!(bucket("anything") < BUCKETS);
    }
}
