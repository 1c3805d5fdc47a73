//! The Lua scripts. Every write that must be atomic across instances runs
//! as one script: Redis runs a script alone, so two instances can never
//! both claim the same expiry or the same dead instance.
//!
//! Each script touches the keys of one hash tag only, so each runs on one
//! Redis Cluster slot. Room scripts work in one room bucket (see
//! `keys.rs`): they get `KEYS[1]` = the bucket's expiry set (which routes
//! them) and `ARGV` = prefix, bucket, publish command (`PUBLISH`, or
//! `SPUBLISH` on a cluster), then their own arguments; they build the
//! bucket's other key names with the helpers below, which mirror `keys.rs`.
//! Time comes from Redis (`TIME`), so instances with skewed clocks agree on
//! every deadline.

use redis::Script;
use std::sync::LazyLock;

/// Helpers shared by every room script.
const ROOM_PRELUDE: &str = r#"
local P, B, PUB = ARGV[1], ARGV[2], ARGV[3]
local EXPIRY = KEYS[1]
local function enc(s)
  return (string.gsub(s, '[^%w_%.%-]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function room_key(r, kind) return P .. 'room:{' .. B .. '}:' .. enc(r) .. ':' .. kind end
local function expiry_member(kind, r, c) return cjson.encode({kind, r, c}) end
-- Updates published from a script carry no origin: every instance,
-- the one running the script included, delivers them.
local function publish_leave(r, c, now)
  redis.call(PUB, room_key(r, 'updates'), '|{"type":"leave","connectionId":' .. cjson.encode(c) ..
    ',"roomName":' .. cjson.encode(r) .. ',"timestamp":' .. string.format('%d', now) .. '}')
end
local function publish_null_state(r, c, now)
  redis.call(PUB, room_key(r, 'updates'), '|{"type":"state","connectionId":' .. cjson.encode(c) ..
    ',"roomName":' .. cjson.encode(r) .. ',"state":null,"timestamp":' .. string.format('%d', now) .. '}')
end
-- Removes a presence and its state; announces the leave if `announce`.
local function absent(r, c, announce, now)
  local was = redis.call('SREM', room_key(r, 'present'), c)
  redis.call('HDEL', room_key(r, 'states'), c)
  redis.call('ZREM', EXPIRY, expiry_member('p', r, c), expiry_member('s', r, c))
  if was == 1 and announce then publish_leave(r, c, now) end
  return was
end
"#;

fn room_script(body: &str) -> Script {
    Script::new(&format!("{ROOM_PRELUDE}\n{body}"))
}

/// `ARGV: .., room, conn, ttl_ms (0 = none)` -> 1 if newly present.
pub(crate) static MARK_PRESENT: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local r, c, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local added = redis.call('SADD', room_key(r, 'present'), c)
if ttl > 0 then
  redis.call('ZADD', EXPIRY, now_ms() + ttl, expiry_member('p', r, c))
else
  redis.call('ZREM', EXPIRY, expiry_member('p', r, c))
end
return added
"#,
    )
});

/// `ARGV: .., room, conn, ttl_ms` -> 1 if still present (TTL pushed back).
pub(crate) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local r, c = ARGV[4], ARGV[5]
if redis.call('SISMEMBER', room_key(r, 'present'), c) == 0 then return 0 end
redis.call('ZADD', EXPIRY, now_ms() + tonumber(ARGV[6]), expiry_member('p', r, c))
return 1
"#,
    )
});

/// `ARGV: .., room, conn` -> 1 if it was present. Publishes nothing: the
/// caller announces the leave.
pub(crate) static MARK_ABSENT: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
return absent(ARGV[4], ARGV[5], false, 0)
"#,
    )
});

/// `ARGV: .., room, conn` -> 1 if it was a member. Takes a connection that
/// is gone (closed, or its instance died) out of the room, announcing the
/// leave where it was present.
pub(crate) static DROP_MEMBER: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local r, c = ARGV[4], ARGV[5]
local was = redis.call('SREM', room_key(r, 'members'), c)
absent(r, c, true, now_ms())
return was
"#,
    )
});

/// `ARGV: .., room, conn, json, expire_ms (0 = none)` -> 1 if stored (0 when
/// the connection is not present).
pub(crate) static SET_STATE: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local r, c, ms = ARGV[4], ARGV[5], tonumber(ARGV[7])
if redis.call('SISMEMBER', room_key(r, 'present'), c) == 0 then return 0 end
redis.call('HSET', room_key(r, 'states'), c, ARGV[6])
if ms > 0 then
  redis.call('ZADD', EXPIRY, now_ms() + ms, expiry_member('s', r, c))
else
  redis.call('ZREM', EXPIRY, expiry_member('s', r, c))
end
return 1
"#,
    )
});

/// `ARGV: .., room, conn` -> 1 if there was a state.
pub(crate) static CLEAR_STATE: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local r, c = ARGV[4], ARGV[5]
redis.call('ZREM', EXPIRY, expiry_member('s', r, c))
return redis.call('HDEL', room_key(r, 'states'), c)
"#,
    )
});

/// `ARGV: .., limit` -> `{claimed, ms until the bucket's next deadline or
/// -1}`.
///
/// Claims every due expiry of the bucket (at most `limit`), removes what
/// expired and publishes one update each. The `ZREM` inside one script is
/// the claim: an entry is handled by exactly one instance, however many
/// poll.
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    room_script(
        r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, m in ipairs(due) do
  redis.call('ZREM', EXPIRY, m)
  local ok, e = pcall(cjson.decode, m)
  if ok and type(e) == 'table' then
    local kind, r, c = e[1], e[2], e[3]
    if kind == 'p' then
      absent(r, c, true, now)
    elseif redis.call('HDEL', room_key(r, 'states'), c) == 1 then
      publish_null_state(r, c, now)
    end
  end
end
local nxt = redis.call('ZRANGE', EXPIRY, 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
"#,
    )
});

/// Helpers of the instance-registry scripts: `KEYS[1]` the heartbeats,
/// `KEYS[2]` the instances being swept (one slot).
const REGISTRY_PRELUDE: &str = r#"
local HEARTBEATS, SWEEPING = KEYS[1], KEYS[2]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

fn registry_script(body: &str) -> Script {
    Script::new(&format!("{REGISTRY_PRELUDE}\n{body}"))
}

/// `ARGV: instance` -> milliseconds since the instance's previous heartbeat,
/// -1 if it was not registered (new, swept as dead, or Redis lost its
/// data), -2 (and not registered) while a survivor is still sweeping it.
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    registry_script(
        r#"
if redis.call('ZSCORE', SWEEPING, ARGV[1]) then return -2 end
local now = now_ms()
local prev = redis.call('ZSCORE', HEARTBEATS, ARGV[1])
redis.call('ZADD', HEARTBEATS, now, ARGV[1])
if prev then return now - tonumber(prev) end
return -1
"#,
    )
});

/// `ARGV: me, dead_after_ms, max_own_gap_ms, claim_ms` -> `["ok", ids of
/// the instances this caller must sweep...]`, or `["overdue"]` when `me`'s
/// own heartbeat is older than `max_own_gap_ms` (then nobody is judged).
///
/// An instance whose last heartbeat is older than `dead_after_ms` moves
/// from the heartbeats to the sweeping set, claimed by the caller for
/// `claim_ms`; a claim that lapsed (its sweeper died) is taken over. The
/// caller removes the instance's connections, then `SWEPT`.
pub(crate) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    registry_script(
        r#"
local now = now_ms()
-- Judge nobody on a stale view: if our own heartbeat is overdue (this
-- script waited out a pause of Redis or of this instance), everyone's is.
local mine = redis.call('ZSCORE', HEARTBEATS, ARGV[1])
if not mine or now - tonumber(mine) > tonumber(ARGV[3]) then return {'overdue'} end
local claim = now + tonumber(ARGV[4])
local out = {'ok'}
for _, i in ipairs(redis.call('ZRANGEBYSCORE', HEARTBEATS, '-inf', now - tonumber(ARGV[2]))) do
  if i ~= ARGV[1] then
    redis.call('ZREM', HEARTBEATS, i)
    redis.call('ZADD', SWEEPING, claim, i)
    table.insert(out, i)
  end
end
for _, i in ipairs(redis.call('ZRANGEBYSCORE', SWEEPING, '-inf', now)) do
  redis.call('ZADD', SWEEPING, claim, i)
  table.insert(out, i)
end
return out
"#,
    )
});

/// `ARGV: prefix, hash, field, had_old (0/1), old, new` -> 1 if written;
/// `KEYS[1]` is the hash.
///
/// Compare-and-set of one hash field, for read-modify-write merges of
/// metadata without a lock: the write happens only if nobody changed the
/// field since it was read.
pub(crate) static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local same
if ARGV[2] == '0' then same = (cur == false) else same = (cur == ARGV[3]) end
if not same then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
"#,
    )
});
