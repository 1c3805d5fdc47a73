//! The Lua scripts. Every write that must be atomic across instances runs
//! as one script: Redis runs a script alone, so two instances can never
//! both claim the same expiry or the same dead instance.
//!
//! Every script gets the key prefix as `ARGV[1]` and builds key names with
//! the helpers below, which mirror `keys.rs`. Time comes from Redis
//! (`TIME`), so instances with skewed clocks agree on every deadline.

use redis::Script;
use std::sync::LazyLock;

/// Helpers shared by every script.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function enc(s)
  return (string.gsub(s, '[^%w_%.%-]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function room_key(r) return P .. 'room:' .. enc(r) end
local function conn_rooms_key(c) return P .. 'connection:' .. enc(c) .. ':rooms' end
local function present_key(r) return P .. 'presence:room:' .. enc(r) end
local function states_key(r) return P .. 'presence:state:' .. enc(r) end
local function instance_conns_key(i) return P .. 'instance:' .. enc(i) .. ':connections' end
local EXPIRY = P .. 'expiry'
local INSTANCES = P .. 'instances'
local OWNERS = P .. 'connections'
local METADATA = P .. 'metadata'
local function channel(r) return P .. 'room:{' .. enc(r) .. '}:updates' end
local function expiry_member(kind, r, c) return cjson.encode({kind, r, c}) end
-- Updates published from a script carry no origin: every instance,
-- the one running the script included, delivers them.
local function publish_leave(r, c, now)
  redis.call('PUBLISH', channel(r), '|{"type":"leave","connectionId":' .. cjson.encode(c) ..
    ',"roomName":' .. cjson.encode(r) .. ',"timestamp":' .. string.format('%d', now) .. '}')
end
local function publish_null_state(r, c, now)
  redis.call('PUBLISH', channel(r), '|{"type":"state","connectionId":' .. cjson.encode(c) ..
    ',"roomName":' .. cjson.encode(r) .. ',"state":null,"timestamp":' .. string.format('%d', now) .. '}')
end
-- Removes a presence and its state; announces the leave if `announce`.
local function absent(r, c, announce, now)
  local was = redis.call('SREM', present_key(r), c)
  redis.call('HDEL', states_key(r), c)
  redis.call('ZREM', EXPIRY, expiry_member('p', r, c), expiry_member('s', r, c))
  if was == 1 and announce then publish_leave(r, c, now) end
  return was
end
-- Forgets a connection entirely, announcing a leave where it was present.
local function drop_connection(c, now)
  local rooms = redis.call('SMEMBERS', conn_rooms_key(c))
  for _, r in ipairs(rooms) do
    redis.call('SREM', room_key(r), c)
    absent(r, c, true, now)
  end
  redis.call('DEL', conn_rooms_key(c))
  redis.call('HDEL', METADATA, c)
  local owner = redis.call('HGET', OWNERS, c)
  if owner then
    redis.call('SREM', instance_conns_key(owner), c)
    redis.call('HDEL', OWNERS, c)
  end
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// `ARGV: prefix, instance, conn`. Records that `conn` lives on `instance`.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSET', OWNERS, ARGV[3], ARGV[2])
redis.call('SADD', instance_conns_key(ARGV[2]), ARGV[3])
return 1
"#,
    )
});

/// `ARGV: prefix, conn`. Drops a closed connection; announces leaves for any
/// presence it still had.
pub(crate) static DROP_CONNECTION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
drop_connection(ARGV[2], now_ms())
return 1
"#,
    )
});

/// `ARGV: prefix, room, conn` -> 1 if newly a member.
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local added = redis.call('SADD', room_key(ARGV[2]), ARGV[3])
redis.call('SADD', conn_rooms_key(ARGV[3]), ARGV[2])
return added
"#,
    )
});

/// `ARGV: prefix, room, conn` -> 1 if it was a member.
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local removed = redis.call('SREM', room_key(ARGV[2]), ARGV[3])
redis.call('SREM', conn_rooms_key(ARGV[3]), ARGV[2])
return removed
"#,
    )
});

/// `ARGV: prefix, room, conn, ttl_ms (0 = none)` -> 1 if newly present.
pub(crate) static MARK_PRESENT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r, c, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local added = redis.call('SADD', present_key(r), c)
if ttl > 0 then
  redis.call('ZADD', EXPIRY, now_ms() + ttl, expiry_member('p', r, c))
else
  redis.call('ZREM', EXPIRY, expiry_member('p', r, c))
end
return added
"#,
    )
});

/// `ARGV: prefix, room, conn, ttl_ms` -> 1 if still present (TTL pushed back).
pub(crate) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r, c = ARGV[2], ARGV[3]
if redis.call('SISMEMBER', present_key(r), c) == 0 then return 0 end
redis.call('ZADD', EXPIRY, now_ms() + tonumber(ARGV[4]), expiry_member('p', r, c))
return 1
"#,
    )
});

/// `ARGV: prefix, room, conn` -> 1 if it was present. Publishes nothing:
/// the caller announces the leave.
pub(crate) static MARK_ABSENT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return absent(ARGV[2], ARGV[3], false, 0)
"#,
    )
});

/// `ARGV: prefix, room, conn, json, expire_ms (0 = none)` -> 1 if stored
/// (0 when the connection is not present).
pub(crate) static SET_STATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r, c, ms = ARGV[2], ARGV[3], tonumber(ARGV[5])
if redis.call('SISMEMBER', present_key(r), c) == 0 then return 0 end
redis.call('HSET', states_key(r), c, ARGV[4])
if ms > 0 then
  redis.call('ZADD', EXPIRY, now_ms() + ms, expiry_member('s', r, c))
else
  redis.call('ZREM', EXPIRY, expiry_member('s', r, c))
end
return 1
"#,
    )
});

/// `ARGV: prefix, room, conn` -> 1 if there was a state.
pub(crate) static CLEAR_STATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local r, c = ARGV[2], ARGV[3]
redis.call('ZREM', EXPIRY, expiry_member('s', r, c))
return redis.call('HDEL', states_key(r), c)
"#,
    )
});

/// `ARGV: prefix, limit` -> `{claimed, ms until the next deadline or -1}`.
///
/// Claims every due expiry (at most `limit`), removes what expired and
/// publishes one update each. The `ZREM` inside one script is the claim:
/// an entry is handled by exactly one instance, however many poll.
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('ZREM', EXPIRY, m)
  local ok, e = pcall(cjson.decode, m)
  if ok and type(e) == 'table' then
    local kind, r, c = e[1], e[2], e[3]
    if kind == 'p' then
      absent(r, c, true, now)
    elseif redis.call('HDEL', states_key(r), c) == 1 then
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

/// `ARGV: prefix, instance` -> milliseconds since the instance's previous
/// heartbeat, or -1 if it was not registered (new, swept as dead, or Redis
/// lost its data).
pub(crate) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local prev = redis.call('ZSCORE', INSTANCES, ARGV[2])
redis.call('ZADD', INSTANCES, now, ARGV[2])
if prev then return now - tonumber(prev) end
return -1
"#,
    )
});

/// `ARGV: prefix, me, dead_after_ms, swept_marker_ttl_s, max_own_gap_ms`
/// -> `["ok", ids of the instances this call swept...]`, or `["overdue"]`
/// when `me`'s own heartbeat is older than `max_own_gap_ms` (then nobody
/// is swept).
///
/// An instance whose last heartbeat is older than `dead_after_ms` is
/// removed with all its connections (a leave for each presence). `ZREM`
/// inside the script makes exactly one sweeper do it.
pub(crate) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
-- Judge nobody on a stale view: if our own heartbeat is overdue (this
-- script waited out a pause of Redis or of this instance), everyone's is.
local mine = redis.call('ZSCORE', INSTANCES, ARGV[2])
if not mine or now - tonumber(mine) > tonumber(ARGV[5]) then return {'overdue'} end
local dead = redis.call('ZRANGEBYSCORE', INSTANCES, '-inf', now - tonumber(ARGV[3]))
local swept = {'ok'}
for _, i in ipairs(dead) do
  if i ~= ARGV[2] then
    redis.call('ZREM', INSTANCES, i)
    local key = instance_conns_key(i)
    for _, c in ipairs(redis.call('SMEMBERS', key)) do
      drop_connection(c, now)
    end
    redis.call('DEL', key)
    redis.call('SET', P .. 'instance:' .. enc(i) .. ':swept', '1', 'EX', tonumber(ARGV[4]))
    table.insert(swept, i)
  end
end
return swept
"#,
    )
});

/// `ARGV: prefix, hash, field, had_old (0/1), old, new` -> 1 if written.
///
/// Compare-and-set of one hash field, for read-modify-write merges of
/// metadata without a lock: the write happens only if nobody changed the
/// field since it was read.
pub(crate) static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', ARGV[2], ARGV[3])
local same
if ARGV[4] == '0' then same = (cur == false) else same = (cur == ARGV[5]) end
if not same then return 0 end
redis.call('HSET', ARGV[2], ARGV[3], ARGV[6])
return 1
"#,
    )
});
