//! Who runs an org's sources: demand, the lease and its fencing epoch.
//!
//! A replica with local demand for an org (stream members, the V1 facade's
//! short-lived ones included) keeps itself in the org's `demand` sorted set
//! (replica → expiry on Redis's clock), renewed every third of
//! `cluster.lease_ms`. The owner is chosen among the replicas with demand
//! by rendezvous hashing (highest SHA-1 of `org:replica`), so the owner
//! holds client tokens of the org, which the V1 poller needs: client
//! tokens are never written to Redis.
//!
//! The owner holds `lease` (value `replica:epoch`, expiring after
//! `cluster.lease_ms`); the epoch comes from INCR on `epoch`, so it grows
//! with every ownership, and appends check it (fencing). Only a FREE lease
//! is taken, and only by the rendezvous winner among live demand: an owner
//! is never displaced while it renews (no flapping), and a dead owner's
//! lease and demand both lapse within one lease, after which the next
//! winner takes over. A replica whose renewal fails or finds another value
//! stops its sources at once; one whose demand ends releases the lease.

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use super::stream::OrgKeys;
use crate::auth::OrgId;

/// One renewal round. KEYS: demand, lease, epoch, src, then the org's
/// stream-state keys (the owner refreshes their TTL). ARGV: replica, lease ms,
/// org, the lease value held ('' for none), state TTL ms.
/// Returns {1, value} (still owner), {2, value, src fields} (just became
/// owner) or {0, holder} (not owner; holder '' when the lease is free).
const TICK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], lease_ms * 4)
local function keep_state()
  for i = 3, #KEYS do
    redis.call('PEXPIRE', KEYS[i], ARGV[5])
  end
end
local cur = redis.call('GET', KEYS[2])
if cur then
  if ARGV[4] ~= '' and cur == ARGV[4] then
    redis.call('PEXPIRE', KEYS[2], lease_ms)
    keep_state()
    return {1, cur}
  end
  return {0, cur}
end
local best, best_h = nil, nil
for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.sha1hex(ARGV[3] .. ':' .. r)
  if best_h == nil or h > best_h then best, best_h = r, h end
end
if best ~= ARGV[1] then return {0, ''} end
local epoch = redis.call('INCR', KEYS[3])
local v = ARGV[1] .. ':' .. epoch
redis.call('SET', KEYS[2], v, 'PX', lease_ms)
keep_state()
return {2, v, redis.call('HGETALL', KEYS[4])}
";

/// Leaves the org: drops the lease if it is still ours, and our demand.
/// KEYS: lease, demand. ARGV: lease value ('' for none), replica.
const RELEASE: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// What a renewal round found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Still the owner under the same lease value.
    Kept,
    /// Just took the free lease: the value to append under and the stored
    /// source positions (`src` hash fields).
    Taken {
        lease: String,
        stored: HashMap<String, String>,
    },
    /// Another replica owns the org, or nobody yet (the lease is free but
    /// another replica is the rendezvous winner).
    Other { holder: Option<String> },
}

/// The ownership scripts, built once.
pub struct OwnershipScripts {
    tick: redis::Script,
    release: redis::Script,
}

impl Default for OwnershipScripts {
    fn default() -> Self {
        OwnershipScripts {
            tick: redis::Script::new(TICK),
            release: redis::Script::new(RELEASE),
        }
    }
}

/// One replica's demand and lease for one org.
pub struct Claim<'a> {
    pub keys: &'a OrgKeys,
    pub replica: &'a str,
    pub org: OrgId,
    pub lease_ms: u64,
    /// How long the org's stream state outlives the last demand.
    pub state_ttl_ms: u64,
}

impl OwnershipScripts {
    /// Renews demand, renews the lease if `held`, or takes it when free
    /// and this replica is the rendezvous winner.
    pub async fn tick(
        &self,
        conn: &mut ConnectionManager,
        claim: &Claim<'_>,
        held: Option<&str>,
    ) -> redis::RedisResult<Ownership> {
        let mut inv = self.tick.prepare_invoke();
        inv.key(&claim.keys.demand)
            .key(&claim.keys.lease)
            .key(&claim.keys.epoch)
            .key(&claim.keys.src);
        for k in claim.keys.state() {
            if k != claim.keys.src {
                inv.key(k);
            }
        }
        inv.arg(claim.replica)
            .arg(claim.lease_ms)
            .arg(claim.org)
            .arg(held.unwrap_or(""))
            .arg(claim.state_ttl_ms);
        let reply: redis::Value = inv.invoke_async(conn).await?;
        parse_tick(reply, held)
    }

    /// Leaves the org (lease if still ours, and demand).
    pub async fn release(
        &self,
        conn: &mut ConnectionManager,
        claim: &Claim<'_>,
        held: Option<&str>,
    ) -> redis::RedisResult<()> {
        let _: i64 = self
            .release
            .key(&claim.keys.lease)
            .key(&claim.keys.demand)
            .arg(held.unwrap_or(""))
            .arg(claim.replica)
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

fn parse_tick(reply: redis::Value, held: Option<&str>) -> redis::RedisResult<Ownership> {
    let redis::Value::Array(items) = reply else {
        return Err(unexpected("ownership reply is not a list"));
    };
    let mut it = items.into_iter();
    let state: i64 = redis::from_redis_value(it.next().ok_or_else(|| unexpected("empty reply"))?)
        .map_err(|_| unexpected("ownership state is not a number"))?;
    let value: String = match it.next() {
        Some(v) => redis::from_redis_value(v).map_err(|_| unexpected("lease is not a string"))?,
        None => String::new(),
    };
    Ok(match state {
        1 if held == Some(value.as_str()) => Ownership::Kept,
        2 => {
            let stored = match it.next() {
                Some(v) => redis::from_redis_value(v)
                    .map_err(|_| unexpected("stored positions are not a hash"))?,
                None => HashMap::new(),
            };
            Ownership::Taken {
                lease: value,
                stored,
            }
        }
        _ => Ownership::Other {
            holder: (!value.is_empty()).then_some(value),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    #[test]
    fn tick_replies_decode() {
        assert_eq!(
            parse_tick(Value::Array(vec![Value::Int(1), s("r:3")]), Some("r:3")).unwrap(),
            Ownership::Kept
        );
        // A "kept" for another value than ours is not ours.
        assert_eq!(
            parse_tick(Value::Array(vec![Value::Int(1), s("r:4")]), Some("r:3")).unwrap(),
            Ownership::Other {
                holder: Some("r:4".into())
            }
        );
        let taken = parse_tick(
            Value::Array(vec![
                Value::Int(2),
                s("r:5"),
                Value::Array(vec![s("native"), s("9")]),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            taken,
            Ownership::Taken {
                lease: "r:5".into(),
                stored: [("native".to_string(), "9".to_string())].into()
            }
        );
        assert_eq!(
            parse_tick(Value::Array(vec![Value::Int(0), s("")]), None).unwrap(),
            Ownership::Other { holder: None }
        );
        assert!(parse_tick(Value::Int(3), None).is_err());
    }
}
