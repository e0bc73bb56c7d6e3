//! An org's shared stream in Redis: how the owner appends accepted events
//! (one Lua script: fencing check, de-duplication by eventId, position,
//! XADD, source positions) and how a replica loads the stream's generation,
//! head and window before reading it. The Lua scripts themselves are
//! `scripts`'; this module holds the keys, the entries and their decoding.
//!
//! Positions. `seq` is cluster-wide: the script INCRs the org's position
//! counter for every appended event. A position space (a *generation*)
//! starts at Redis's clock in milliseconds × 1000 when the org's counter is
//! missing (first use, keys expired, Redis restarted empty), like the
//! embedded sidecar's per-hub base: so a `lastSeq` of an earlier generation
//! is always below the new generation's start and never resumes into it
//! (`resumed: false`), and positions stay below 2^53 (JavaScript's exact
//! integers) until the year 2255. Each entry carries its generation, so a
//! reader notices a new one.
//!
//! Redis keys of an org (under `{cluster.name}:org:{org}:`): `events`
//! (stream, capped near `stream.replay_events`), `pos` (position counter),
//! `gen` (generation start), `ids` (sorted set eventId → position, the
//! newest `stream.dedup_events`), `src` (hash: V1 cursor per service,
//! native lastSeq), plus `lease`, `epoch` and `demand` (see `ownership`).

use std::collections::HashMap;

use redis::streams::StreamId;
use serde_json::value::RawValue;

use super::ClusterLink;
use crate::auth::OrgId;
use crate::protocol::PropertyKey;

mod scripts;

pub use scripts::Scripts;

/// The Redis keys of one org.
#[derive(Debug, Clone)]
pub struct OrgKeys {
    pub lease: String,
    pub epoch: String,
    pub demand: String,
    pub events: String,
    pub pos: String,
    pub gen_key: String,
    pub ids: String,
    pub src: String,
}

impl OrgKeys {
    pub fn new(link: &ClusterLink, org: OrgId) -> OrgKeys {
        let k = |s: &str| link.key(&format!("org:{org}:{s}"));
        OrgKeys {
            lease: k("lease"),
            epoch: k("epoch"),
            demand: k("demand"),
            events: k("events"),
            pos: k("pos"),
            gen_key: k("gen"),
            ids: k("ids"),
            src: k("src"),
        }
    }

    /// Every key holding the org's stream state (refreshed TTL).
    pub fn state(&self) -> [&str; 5] {
        [&self.events, &self.pos, &self.gen_key, &self.ids, &self.src]
    }
}

/// An accepted event on its way into the org's stream.
#[derive(Debug)]
pub struct Outgoing {
    pub id: Box<str>,
    pub service: u16,
    pub raw: Box<RawValue>,
    pub property: Option<PropertyKey>,
    pub origin_ms: i64,
    pub live: bool,
}

/// Where the owner's sources stand, stored with the events they produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePositions {
    /// V1 cursor per service index.
    pub cursors: Vec<(u16, String)>,
    /// The native link's lastSeq.
    pub native: Option<u64>,
}

impl SourcePositions {
    /// The source position after an event of `service`, as written into
    /// its stream entry: `c:<V1 cursor>`, `n:<native lastSeq>` or empty.
    /// A replica that has to serve on its own starts its sources there.
    fn after(&self, service: u16) -> String {
        match self.cursors.iter().find(|(s, _)| *s == service) {
            Some((_, c)) => format!("c:{c}"),
            None => self.native.map(|n| format!("n:{n}")).unwrap_or_default(),
        }
    }
}

/// A source position read back from a stream entry (see
/// [`SourcePositions::after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAfter {
    Cursor(String),
    Native(u64),
}

/// One event read from an org's stream.
#[derive(Debug)]
pub struct StreamEvent {
    pub seq: u64,
    pub generation: u64,
    pub id: Box<str>,
    pub service: u16,
    pub raw: Box<RawValue>,
    pub property: Option<PropertyKey>,
    pub origin_ms: i64,
    pub live: bool,
    /// Where the owner's source stood after this event.
    pub after: Option<SourceAfter>,
}

/// Why a stream entry was skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry {entry} lacks field {field:?} or it is malformed")]
    Field { entry: String, field: &'static str },
    #[error("entry {entry} names service {service:?}, unknown to this replica")]
    UnknownService { entry: String, service: String },
}

/// How an append ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the new head (0 when every event was a duplicate).
    Stored { appended: u64, head: u64 },
    /// The lease is not (any more) the caller's: nothing was written.
    Fenced,
}

/// The org's generation and head as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub generation: u64,
    pub head: u64,
}

/// Where an append goes: the org's keys, the lease value it is made under,
/// the bounds it keeps, and the service names in index order.
#[derive(Clone, Copy)]
pub struct AppendTarget<'a> {
    pub keys: &'a OrgKeys,
    pub lease: &'a str,
    pub bounds: StreamBounds,
    pub names: &'a [String],
}

/// Bounds of what an append keeps.
#[derive(Debug, Clone, Copy)]
pub struct StreamBounds {
    pub replay_events: usize,
    pub dedup_events: usize,
}

/// Reads the stored source positions from the `src` hash's fields.
pub fn source_positions(fields: &HashMap<String, String>, names: &[String]) -> SourcePositions {
    let mut p = SourcePositions::default();
    for (k, v) in fields {
        if k == "native" {
            p.native = v.parse().ok();
        } else if let Some(name) = k.strip_prefix("cursor:")
            && let Some(i) = names.iter().position(|n| n == name)
            && let Ok(i) = u16::try_from(i)
        {
            p.cursors.push((i, v.clone()));
        }
    }
    p.cursors.sort();
    p
}

/// Decodes one stream entry; what Redis holds is checked like any peer's
/// input (another replica's version may have written it).
pub fn parse_entry(entry: &StreamId, names: &[String]) -> Result<StreamEvent, EntryError> {
    let field = |name: &'static str| -> Result<String, EntryError> {
        entry.get::<String>(name).ok_or_else(|| EntryError::Field {
            entry: entry.id.clone(),
            field: name,
        })
    };
    let number = |name: &'static str| -> Result<u64, EntryError> {
        field(name)?.parse().map_err(|_| EntryError::Field {
            entry: entry.id.clone(),
            field: name,
        })
    };
    let seq = number("n")?;
    let generation = number("g")?;
    let service_name = field("s")?;
    let service = names
        .iter()
        .position(|n| *n == service_name)
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| EntryError::UnknownService {
            entry: entry.id.clone(),
            service: service_name.clone(),
        })?;
    let raw = RawValue::from_string(field("d")?).map_err(|_| EntryError::Field {
        entry: entry.id.clone(),
        field: "d",
    })?;
    let property = field("p")?;
    Ok(StreamEvent {
        seq,
        generation,
        id: field("i")?.into(),
        service,
        raw,
        property: (!property.is_empty()).then(|| PropertyKey(property.into())),
        origin_ms: field("o")?.parse().unwrap_or(0),
        live: field("l")? == "1",
        after: entry.get::<String>("c").and_then(|c| {
            if let Some(cursor) = c.strip_prefix("c:") {
                Some(SourceAfter::Cursor(cursor.to_string()))
            } else {
                c.strip_prefix("n:")?.parse().ok().map(SourceAfter::Native)
            }
        }),
    })
}

#[cfg(test)]
mod tests;
