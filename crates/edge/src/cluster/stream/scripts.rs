//! The Lua scripts of an org's shared stream and their handles: the
//! owner's append (fencing check, de-duplication, positions, XADD, source
//! positions) and a replica's load of the generation and head.

use redis::aio::ConnectionManager;

use super::{AppendTarget, Appended, Head, OrgKeys, Outgoing, SourcePositions};

/// Appends accepted events if the caller's lease (fencing epoch) is the
/// current one. KEYS: lease, pos, gen, ids, events, src. ARGV: lease
/// value, stream cap, dedup cap, number of events, then seven
/// per event (id, service, property, origin ms, live, payload, source
/// position after it), then
/// field/value pairs for `src`. Returns {-1} when fenced off, else
/// {appended, head}.
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local function fmt(x) return string.format('%.0f', x) end
local gen = redis.call('GET', KEYS[3])
if not gen or not redis.call('GET', KEYS[2]) then
  local t = redis.call('TIME')
  gen = fmt(tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000)
  redis.call('SET', KEYS[3], gen)
  redis.call('SET', KEYS[2], gen)
  redis.call('DEL', KEYS[4], KEYS[5])
end
local n = tonumber(ARGV[4])
local appended = 0
local head = 0
for i = 0, n - 1 do
  local a = 5 + i * 7
  local id = ARGV[a]
  if not redis.call('ZSCORE', KEYS[4], id) then
    head = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*',
      'n', fmt(head), 'g', gen, 'i', id, 's', ARGV[a + 1], 'p', ARGV[a + 2],
      'o', ARGV[a + 3], 'l', ARGV[a + 4], 'c', ARGV[a + 6], 'd', ARGV[a + 5])
    redis.call('ZADD', KEYS[4], head, id)
    appended = appended + 1
  end
end
if appended > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[3]) + 1))
end
local s = 5 + n * 7
if #ARGV >= s then
  redis.call('HSET', KEYS[6], unpack(ARGV, s))
end
return {appended, head}
";

/// Returns the org's generation and head, creating a generation when
/// there is none and raising the head to at least ARGV[1] (a replica that
/// served on its own rejoins above the positions it handed out). KEYS:
/// pos, gen, ids, events. ARGV: floor.
const LOAD: &str = r"
local function fmt(x) return string.format('%.0f', x) end
local floor = tonumber(ARGV[1])
local gen = redis.call('GET', KEYS[2])
local pos = tonumber(redis.call('GET', KEYS[1]) or '-1')
if not gen or pos < 0 then
  local t = redis.call('TIME')
  local base = math.max(tonumber(t[1]) * 1000000 + math.floor(tonumber(t[2]) / 1000) * 1000, floor)
  gen = fmt(base)
  pos = base
  redis.call('SET', KEYS[2], gen)
  redis.call('SET', KEYS[1], gen)
  redis.call('DEL', KEYS[3], KEYS[4])
elseif pos < floor then
  pos = floor
  redis.call('SET', KEYS[1], fmt(pos))
end
return {gen, fmt(pos)}
";

/// The script handles, built once per process.
pub struct Scripts {
    append: redis::Script,
    load: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            append: redis::Script::new(APPEND),
            load: redis::Script::new(LOAD),
        }
    }
}

impl Scripts {
    /// Appends `events` under `to`'s lease, with the positions the
    /// sources reached.
    pub async fn append(
        &self,
        conn: &mut ConnectionManager,
        to: &AppendTarget<'_>,
        events: &[Outgoing],
        positions: &SourcePositions,
    ) -> redis::RedisResult<Appended> {
        let AppendTarget {
            keys,
            lease,
            bounds,
            names,
        } = *to;
        let mut inv = self.append.prepare_invoke();
        inv.key(&keys.lease)
            .key(&keys.pos)
            .key(&keys.gen_key)
            .key(&keys.ids)
            .key(&keys.events)
            .key(&keys.src)
            .arg(lease)
            .arg(bounds.replay_events.max(1))
            .arg(bounds.dedup_events.max(1))
            .arg(events.len());
        for e in events {
            let service = names.get(e.service as usize).map_or("", String::as_str);
            inv.arg(&*e.id)
                .arg(service)
                .arg(e.property.as_ref().map_or("", |p| &*p.0))
                .arg(e.origin_ms)
                .arg(if e.live { "1" } else { "0" })
                .arg(e.raw.get())
                .arg(positions.after(e.service));
        }
        for (s, cursor) in &positions.cursors {
            if let Some(name) = names.get(*s as usize) {
                inv.arg(format!("cursor:{name}")).arg(cursor);
            }
        }
        if let Some(n) = positions.native {
            inv.arg("native").arg(n);
        }
        let reply: Vec<i64> = inv.invoke_async(conn).await?;
        Ok(match reply.as_slice() {
            [appended, head] => Appended::Stored {
                appended: u64::try_from(*appended).unwrap_or(0),
                head: u64::try_from(*head).unwrap_or(0),
            },
            _ => Appended::Fenced,
        })
    }

    /// The org's generation and head (created or raised to `floor`).
    pub async fn load(
        &self,
        conn: &mut ConnectionManager,
        keys: &OrgKeys,
        floor: u64,
    ) -> redis::RedisResult<Head> {
        let (generation, head): (String, String) = self
            .load
            .key(&keys.pos)
            .key(&keys.gen_key)
            .key(&keys.ids)
            .key(&keys.events)
            .arg(floor)
            .invoke_async(conn)
            .await?;
        let parse = |s: &str| {
            s.parse::<u64>().map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "org position is not a number",
                ))
            })
        };
        Ok(Head {
            generation: parse(&generation)?,
            head: parse(&head)?,
        })
    }
}
