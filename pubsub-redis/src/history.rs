//! Message history in Redis: a stream and a metadata hash per topic, kept
//! and published by a Redis Function library that pods load, so that
//! storing a message, giving it its position and publishing it is one
//! atomic step, for pods and backends alike:
//!
//! ```text
//! redis-cli FCALL gateway_publish 1 phx:room:lobby '{"event":"new_msg","payload":{"body":"hi"}}' [idempotency-key]
//! ```
//!
//! A topic's keys carry the channel's cluster slot (a hash tag), so on a
//! Redis Cluster the stream, the metadata and the sharded channel live on
//! one shard and the functions touch one slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<channel>}:m` | hash | `epoch`, `top` (last offset), `size`, `ttl` (ms) |
//! | `{<channel>}:s` | stream | the last `size` envelopes, entry id `<offset>-0`, field `m` |
//! | `{<channel>}:i:<key>` | string | the position an idempotency key got |
//!
//! (A channel that already holds a hash tag, `phx:{a}b`, names its keys
//! `phx:{a}b:m` and so on.) The stream and the idempotency keys expire
//! `ttl` after the last message; the metadata lives on for at least
//! [`META_TTL_MS`] after the last message (a join extends it again once
//! less than half is left), so a client whose topic was quiet can still be
//! told it missed nothing.

use crate::Error;

/// The function library's name in Redis; a new version gets a new name.
pub const LIBRARY: &str = "gateway_history_v1";
/// The function that keeps and publishes a message.
pub const PUBLISH: &str = "gateway_publish";
/// The function that reads a topic's history for a join.
pub const READ: &str = "gateway_read";
/// How long a topic's metadata (epoch, last offset) outlives its last
/// message or join, at least: one day.
pub const META_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long an idempotency key drops retries: two minutes.
pub const IDEMPOTENCY_MS: u64 = 120_000;

const SOURCE: &str = r#"
local SHARDED = __SHARDED__
local META_TTL = __META_TTL__
local IDEMPOTENCY = __IDEMPOTENCY__
local DEFAULT_SIZE = 100
local DEFAULT_TTL = 300000

-- The keys of a topic: in the channel's cluster slot.
local function base_of(chan)
  local open = string.find(chan, '{', 1, true)
  if open then
    local close = string.find(chan, '}', open + 1, true)
    if close and close > open + 1 then return chan end
  end
  return '{' .. chan .. '}'
end

local function int(n)
  return string.format('%d', n)
end

-- Short and different after any loss of the metadata: the server's clock
-- in microseconds, base 36.
local function new_epoch()
  local t = redis.call('TIME')
  local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  local s = ''
  while n > 0 do
    local d = n % 36
    s = string.sub(digits, d + 1, d + 1) .. s
    n = (n - d) / 36
  end
  return s
end

local function meta_ttl(ttl)
  if ttl > META_TTL then return ttl end
  return META_TTL
end

-- The topic's metadata: epoch, top, size and ttl (the args', else the
-- stored ones, else the defaults). A topic without any (expired, flushed,
-- lost with a restart) starts a new epoch at offset 0. A read (`refresh`)
-- writes only if something changed or the metadata's expiry is less than
-- half away; a publish sets the expiry itself.
local function current(base, size_arg, ttl_arg, refresh)
  local mk = base .. ':m'
  local meta = redis.call('HMGET', mk, 'epoch', 'top', 'size', 'ttl')
  local size = math.floor(tonumber(size_arg) or tonumber(meta[3]) or DEFAULT_SIZE)
  local ttl = math.floor(tonumber(ttl_arg) or tonumber(meta[4]) or DEFAULT_TTL)
  if size < 1 then size = 1 end
  if ttl < 1 then ttl = 1 end
  local epoch, top = meta[1], tonumber(meta[2])
  if not epoch or not top then
    epoch, top = new_epoch(), 0
    redis.call('DEL', base .. ':s')
    redis.call('HSET', mk, 'epoch', epoch, 'top', '0', 'size', int(size), 'ttl', int(ttl))
    redis.call('PEXPIRE', mk, meta_ttl(ttl))
  else
    if tonumber(meta[3]) ~= size or tonumber(meta[4]) ~= ttl then
      redis.call('HSET', mk, 'size', int(size), 'ttl', int(ttl))
    end
    if refresh and redis.call('PTTL', mk) < meta_ttl(ttl) / 2 then
      redis.call('PEXPIRE', mk, meta_ttl(ttl))
    end
  end
  return epoch, top, size, ttl
end

local function reserved(event)
  return string.sub(event, 1, 4) == 'phx_' or event == 'presence_state' or event == 'presence_diff'
end

-- keys: channel; args: envelope, [idempotency key], [size], [ttl ms]
local function publish(keys, args)
  local chan, env = keys[1], args[1]
  if not chan or not env then
    return redis.error_reply('ERR usage: FCALL gateway_publish 1 <channel> <envelope> [idempotency key]')
  end
  local body = string.match(env, '^%s*{(.*)$')
  local ok, v = pcall(cjson.decode, env)
  if not body or not ok or type(v) ~= 'table' or type(v.event) ~= 'string' or v.event == '' then
    return redis.error_reply('ERR the envelope must be a JSON object with a non-empty string "event"')
  end
  if reserved(v.event) then
    return redis.error_reply('ERR event "' .. v.event .. '" is reserved: phx_* and presence events belong to the protocol')
  end
  if v.pos ~= nil then
    return redis.error_reply('ERR the envelope must not carry "pos": gateway_publish gives the position')
  end
  local base = base_of(chan)
  local ik = nil
  if args[2] and args[2] ~= '' then
    ik = base .. ':i:' .. args[2]
    local seen = redis.call('GET', ik)
    if seen then return {seen, 0} end
  end
  local epoch, top, size, ttl = current(base, args[3], args[4], false)
  top = top + 1
  local pos = epoch .. ':' .. int(top)
  local out = '{"pos":"' .. pos .. '",' .. body
  local sk, mk = base .. ':s', base .. ':m'
  redis.call('XADD', sk, 'MAXLEN', int(size), int(top) .. '-0', 'm', out)
  redis.call('HSET', mk, 'top', int(top))
  redis.call('PEXPIRE', sk, ttl)
  -- The metadata outlives the stream.
  redis.call('PEXPIRE', mk, meta_ttl(ttl))
  if ik then redis.call('SET', ik, pos, 'PX', IDEMPOTENCY) end
  if SHARDED then
    redis.call('SPUBLISH', chan, out)
  else
    redis.call('PUBLISH', chan, out)
  end
  return {pos, 1}
end

-- keys: channel; args: mode (top, since, last), epoch or count, offset,
-- max messages, size, ttl ms. Returns {epoch, top, recovered, envelopes...}.
local function read(keys, args)
  local chan, mode = keys[1], args[1]
  local base = base_of(chan)
  local epoch, top, size = current(base, args[5], args[6], true)
  local max = tonumber(args[4]) or size
  local sk = base .. ':s'
  local out = {epoch, int(top), 1}
  if mode == 'since' then
    local offset = tonumber(args[3])
    if args[2] ~= epoch or not offset or offset > top or top - offset > max then
      out[3] = 0
      return out
    end
    if offset == top then return out end
    local entries = redis.call('XRANGE', sk, int(offset + 1) .. '-0', '+', 'COUNT', int(top - offset))
    if #entries ~= top - offset or entries[1][1] ~= int(offset + 1) .. '-0' then
      out[3] = 0
      return out
    end
    for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
  elseif mode == 'last' then
    local n = tonumber(args[2]) or 0
    if n > max then n = max end
    if n > top then n = top end
    if n > 0 then
      local entries = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', int(n))
      for i = #entries, 1, -1 do out[#out + 1] = entries[i][2][2] end
    end
  end
  return out
end

redis.register_function('gateway_publish', publish)
redis.register_function('gateway_read', read)
"#;

/// The library's source as pods load it: `sharded` makes it publish with
/// `SPUBLISH` (Redis Cluster), as pods subscribe there.
pub fn library(sharded: bool) -> String {
    format!("#!lua name={LIBRARY}\n")
        + &SOURCE
            .replace("__SHARDED__", if sharded { "true" } else { "false" })
            .replace("__META_TTL__", &META_TTL_MS.to_string())
            .replace("__IDEMPOTENCY__", &IDEMPOTENCY_MS.to_string())
}

/// Whether an error says the library is not loaded (Redis restarted
/// without persistence, or nobody loaded it yet).
pub(crate) fn not_loaded(e: &Error) -> bool {
    match e {
        Error::Redis(e) => e.to_string().contains("Function not found"),
        _ => false,
    }
}

/// A history read's answer, as Redis gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The topic's epoch.
    pub epoch: String,
    /// Its last offset (0 before the first message).
    pub top: u64,
    /// False when a `since` cannot be served whole.
    pub recovered: bool,
    /// Envelopes (with `pos`), oldest first.
    pub envelopes: Vec<bytes::Bytes>,
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// Only the position.
    Top,
    /// Everything after `offset` of `epoch`.
    Since(&'a str, u64),
    /// The last `n`.
    Last(usize),
}

impl Read {
    pub(crate) fn from_value(v: redis::Value) -> Result<Read, Error> {
        let bad = || Error::Unavailable("unexpected answer from gateway_read".into());
        let redis::Value::Array(items) = v else {
            return Err(bad());
        };
        let mut it = items.into_iter();
        let text = |v: Option<redis::Value>| -> Option<Vec<u8>> {
            match v? {
                redis::Value::BulkString(b) => Some(b),
                redis::Value::SimpleString(s) => Some(s.into_bytes()),
                redis::Value::Int(n) => Some(n.to_string().into_bytes()),
                _ => None,
            }
        };
        let epoch = String::from_utf8(text(it.next()).ok_or_else(bad)?).map_err(|_| bad())?;
        let top = std::str::from_utf8(&text(it.next()).ok_or_else(bad)?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let recovered = text(it.next()).ok_or_else(bad)? == b"1";
        let envelopes = it
            .map(|v| text(Some(v)).map(bytes::Bytes::from).ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        Ok(Read {
            epoch,
            top,
            recovered,
            envelopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names_itself_and_fills_its_constants() {
        let l = library(true);
        assert!(l.starts_with("#!lua name=gateway_history_v1\n"));
        assert!(l.contains("local SHARDED = true"));
        assert!(!l.contains("__"));
        assert!(library(false).contains("local SHARDED = false"));
    }
}
