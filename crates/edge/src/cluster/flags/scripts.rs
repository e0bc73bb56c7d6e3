//! The Lua scripts that change and read the cluster's flag state in Redis
//! in one atomic step each, and the history entries as they write them.
//!
//! `KEYS` are always the overrides hash, the version and the history list
//! (in that order); see the parent module for the key names.

use crate::flags::HistoryEntry;

/// Sets overrides: `ARGV` = who, time, history cap, channel, then
/// (key, new, base) triples, `base` being the value below the override on
/// the changing replica (the history's "old" when there was no override).
/// Returns the version after the change; refuses with `NOSTATE` when Redis
/// holds no flag state (restarted empty: it must be re-seeded first).
const SET: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOSTATE the cluster flag state is missing')
end
local changed = {}
for i = 5, #ARGV, 3 do
  local key, new, base = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cur = redis.call('HGET', KEYS[1], key)
  if cur ~= new then
    redis.call('HSET', KEYS[1], key, new)
    changed[#changed + 1] = {key, cur or base, new}
  end
end
local version = tonumber(redis.call('GET', KEYS[2]))
if #changed == 0 then
  return version
end
version = redis.call('INCR', KEYS[2])
for _, c in ipairs(changed) do
  redis.call('LPUSH', KEYS[3], cjson.encode({version = version, time = ARGV[2],
    who = ARGV[1], key = c[1], old = c[2], new = c[3]}))
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
redis.call('PUBLISH', ARGV[4], version)
return version
";

/// Drops one override: `ARGV` = who, time, history cap, channel, key, base.
/// Returns {version, 1 if there was an override}; `NOSTATE` like [`SET`].
const DELETE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('NOSTATE the cluster flag state is missing')
end
local cur = redis.call('HGET', KEYS[1], ARGV[5])
if not cur then
  return {tonumber(redis.call('GET', KEYS[2])), 0}
end
redis.call('HDEL', KEYS[1], ARGV[5])
local version = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], cjson.encode({version = version, time = ARGV[2],
  who = ARGV[1], key = ARGV[5], old = cur, new = ARGV[6]}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
redis.call('PUBLISH', ARGV[4], version)
return {version, 1}
";

/// Seeds an empty Redis: `ARGV` = version, who, time, history cap, channel,
/// then (key, value) pairs. Does nothing (returns 0) when another replica
/// got there first; else returns the version.
const SEED: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[3])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('LPUSH', KEYS[3], cjson.encode({version = tonumber(ARGV[1]), time = ARGV[3],
    who = ARGV[2], key = ARGV[i], old = '', new = ARGV[i + 1]}))
end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return tonumber(ARGV[1])
";

/// Reads the whole state in one step, so version, overrides and history
/// agree: {version or nil, flat overrides, history newest first}.
const READ: &str = r"
return {redis.call('GET', KEYS[2]), redis.call('HGETALL', KEYS[1]),
  redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[1]) - 1)}
";

/// The scripts, hashed once (EVALSHA, falling back to EVAL).
pub(super) struct Scripts {
    pub(super) set: redis::Script,
    pub(super) delete: redis::Script,
    pub(super) seed: redis::Script,
    pub(super) read: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            set: redis::Script::new(SET),
            delete: redis::Script::new(DELETE),
            seed: redis::Script::new(SEED),
            read: redis::Script::new(READ),
        }
    }
}

/// One history entry as the scripts write it.
pub(super) fn parse_entry(text: &str) -> Option<HistoryEntry> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(HistoryEntry {
        version: v.get("version")?.as_f64().filter(|n| *n >= 0.0)? as u64,
        time: s("time")?,
        who: s("who")?,
        key: s("key")?,
        old: s("old").unwrap_or_default(),
        new: s("new").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_entry;

    #[test]
    fn history_entries_as_the_scripts_write_them() {
        let e = parse_entry(
            r#"{"version":7,"time":"2026-01-01T00:00:00.000Z","who":"api x","key":"K","old":"1","new":"2"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.version, e.key.as_str(), e.old.as_str(), e.new.as_str()),
            (7, "K", "1", "2")
        );
        // cjson writes an empty string as "" and may write numbers as floats.
        let e = parse_entry(r#"{"version":8.0,"time":"t","who":"w","key":"K","old":"","new":"3"}"#)
            .unwrap();
        assert_eq!(e.version, 8);
        for bad in [
            "",
            "[]",
            r#"{"version":-1,"time":"t","who":"w","key":"K"}"#,
            r#"{"time":"t"}"#,
        ] {
            assert!(parse_entry(bad).is_none(), "{bad}");
        }
    }
}
