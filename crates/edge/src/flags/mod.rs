//! Feature flags (CONTRACT section 4): typed values, parsing from every
//! source (environment, YAML file, form body, JSON), the layered store
//! behind an `ArcSwap`, the file watcher and the rollout decision.
//!
//! This module is the flags' vocabulary: their names, types and defaults
//! ([`FlagSchema`]), one value parsed from text or JSON, the typed
//! [`Flags`]. The flags file's format is `yaml_file`'s.
//!
//! Readers call [`FlagStore::current`] (a lock-free load); writers go
//! through the store, which validates, builds a new immutable [`Snapshot`]
//! and publishes it on a `watch` channel for the hubs that must act.

pub(crate) mod rollout;
pub mod store;
pub mod watcher;
mod yaml_file;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::auth::OrgId;

pub use rollout::bucket;
pub(crate) use rollout::{Mode, decide, decide_org};
pub(crate) use store::ClusterState;
pub use store::{FlagStore, HistoryEntry, Snapshot, Source};
pub(crate) use yaml_file::is_empty_document;

pub(crate) const STREAMING_V2: &str = "REALTIME_STREAMING_V2";
pub(crate) const ROLLOUT_PERCENT: &str = "REALTIME_ROLLOUT_PERCENT";
pub(crate) const ALLOWLIST: &str = "REALTIME_ALLOWLIST_ORGS";
pub(crate) const DENYLIST: &str = "REALTIME_DENYLIST_ORGS";
pub(crate) const LEADER_ENABLED: &str = "FIN_LEADER_ENABLED";
/// The sidecar answers old clients' V1 long-polls from the hub (CONTRACT 3.4).
pub(crate) const V1_FACADE: &str = "REALTIME_V1_FACADE";
/// Uploads go to the backend's native upload stream instead of multipart (CONTRACT 7).
pub(crate) const UPLOAD_NATIVE: &str = "DOCUMENTS_UPLOAD_NATIVE";
/// Chat is relayed to the backend's native chat stream instead of hosted here (CONTRACT 8).
pub(crate) const CHAT_NATIVE: &str = "COLLAB_CHAT_NATIVE";
/// Suffix of the per-service flags (`FINANCE_REALTIME_V1`).
pub(crate) const SERVICE_V1_SUFFIX: &str = "_REALTIME_V1";

/// The effective flags, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `REALTIME_STREAMING_V2`: the master switch of native serving.
    pub streaming_v2: bool,
    /// `REALTIME_ROLLOUT_PERCENT`.
    pub rollout_percent: u8,
    /// `REALTIME_ALLOWLIST_ORGS`.
    pub allowlist: BTreeSet<OrgId>,
    /// `REALTIME_DENYLIST_ORGS`.
    pub denylist: BTreeSet<OrgId>,
    /// `FIN_LEADER_ENABLED`: one shared poller per org and service (else
    /// one per connection).
    pub leader_enabled: bool,
    /// `REALTIME_V1_FACADE`.
    pub v1_facade: bool,
    /// `DOCUMENTS_UPLOAD_NATIVE`.
    pub upload_native: bool,
    /// `COLLAB_CHAT_NATIVE`.
    pub chat_native: bool,
    /// Indexed like the configured services.
    pub service_v1: Vec<bool>,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            streaming_v2: false,
            rollout_percent: 0,
            allowlist: BTreeSet::new(),
            denylist: BTreeSet::new(),
            leader_enabled: true,
            v1_facade: false,
            upload_native: false,
            chat_native: false,
            service_v1: Vec::new(),
        }
    }
}

/// One flag's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagValue {
    /// An on/off flag.
    Bool(bool),
    /// `REALTIME_ROLLOUT_PERCENT`: 0 to 100.
    Percent(u8),
    /// An allow- or denylist of orgs.
    Orgs(BTreeSet<OrgId>),
}

impl FlagValue {
    /// The value as the admin API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FlagValue::Bool(b) => serde_json::json!(b),
            FlagValue::Percent(p) => serde_json::json!(p),
            FlagValue::Orgs(o) => serde_json::json!(o),
        }
    }
}

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagValue::Bool(b) => write!(f, "{b}"),
            FlagValue::Percent(p) => write!(f, "{p}"),
            FlagValue::Orgs(o) => {
                let v: Vec<String> = o.iter().map(|x| x.to_string()).collect();
                write!(f, "[{}]", v.join(","))
            }
        }
    }
}

/// A bad flag key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// No flag has this name (for this sidecar's services).
    #[error("unknown flag {0:?}")]
    UnknownKey(String),
    /// The value does not fit the flag's type or range.
    #[error("{key}: {problem}")]
    BadValue {
        /// The flag.
        key: String,
        /// What is wrong with the value.
        problem: String,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Percent,
    Orgs,
}

/// The flag names that exist for a set of services, and their types.
#[derive(Debug, Clone)]
pub struct FlagSchema {
    services: Vec<String>,
}

impl FlagSchema {
    /// The schema of a sidecar serving `services` (their names, in index
    /// order).
    pub fn new(services: Vec<String>) -> Self {
        FlagSchema { services }
    }

    pub(crate) fn service_flag(service: &str) -> String {
        format!("{}{SERVICE_V1_SUFFIX}", service.to_ascii_uppercase())
    }

    /// Every key, in a stable order.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = [
            STREAMING_V2,
            ROLLOUT_PERCENT,
            ALLOWLIST,
            DENYLIST,
            LEADER_ENABLED,
            V1_FACADE,
            UPLOAD_NATIVE,
            CHAT_NATIVE,
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        keys.extend(self.services.iter().map(|s| Self::service_flag(s)));
        keys
    }

    fn kind(&self, key: &str) -> Option<Kind> {
        match key {
            STREAMING_V2 | LEADER_ENABLED | V1_FACADE | UPLOAD_NATIVE | CHAT_NATIVE => {
                Some(Kind::Bool)
            }
            ROLLOUT_PERCENT => Some(Kind::Percent),
            ALLOWLIST | DENYLIST => Some(Kind::Orgs),
            k if self.services.iter().any(|s| Self::service_flag(s) == k) => Some(Kind::Bool),
            _ => None,
        }
    }

    fn default_value(&self, key: &str) -> Option<FlagValue> {
        Some(match self.kind(key)? {
            // Switches default off; the leader and per-service V1 flags default on.
            Kind::Bool => FlagValue::Bool(
                key == LEADER_ENABLED || self.services.iter().any(|s| Self::service_flag(s) == key),
            ),
            Kind::Percent => FlagValue::Percent(0),
            Kind::Orgs => FlagValue::Orgs(BTreeSet::new()),
        })
    }

    /// The built-in defaults for every key.
    pub(crate) fn defaults(&self) -> BTreeMap<String, FlagValue> {
        self.keys()
            .into_iter()
            .filter_map(|k| self.default_value(&k).map(|v| (k, v)))
            .collect()
    }

    /// Parses a value given as text (environment, form body, CLI).
    pub fn parse_text(&self, key: &str, text: &str) -> Result<FlagValue, FlagError> {
        let kind = self
            .kind(key)
            .ok_or_else(|| FlagError::UnknownKey(key.to_string()))?;
        let bad = |problem: String| FlagError::BadValue {
            key: key.to_string(),
            problem,
        };
        let t = text.trim();
        match kind {
            Kind::Bool => parse_bool(t)
                .map(FlagValue::Bool)
                .ok_or_else(|| bad(format!("{t:?} is not a boolean (true/false/1/0/on/off)"))),
            Kind::Percent => t
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .map(FlagValue::Percent)
                .ok_or_else(|| bad(format!("{t:?} is not an integer from 0 to 100"))),
            Kind::Orgs => {
                let inner = t
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(t);
                let mut set = BTreeSet::new();
                for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let part = part.trim_matches(|c| c == '"' || c == '\'');
                    let id = part.parse::<OrgId>().map_err(|_| {
                        bad(format!(
                            "{part:?} is not an org id (a non-negative integer)"
                        ))
                    })?;
                    set.insert(id);
                }
                Ok(FlagValue::Orgs(set))
            }
        }
    }

    /// Parses a value given as JSON (JSON body, YAML file).
    pub fn parse_json(&self, key: &str, value: &serde_json::Value) -> Result<FlagValue, FlagError> {
        use serde_json::Value as J;
        let kind = self
            .kind(key)
            .ok_or_else(|| FlagError::UnknownKey(key.to_string()))?;
        let bad = |problem: String| FlagError::BadValue {
            key: key.to_string(),
            problem,
        };
        match (kind, value) {
            (_, J::String(s)) => self.parse_text(key, s),
            (Kind::Bool, J::Bool(b)) => Ok(FlagValue::Bool(*b)),
            (Kind::Bool, J::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(FlagValue::Bool(n.as_u64() == Some(1)))
            }
            (Kind::Percent, J::Number(n)) => n
                .as_u64()
                .filter(|p| *p <= 100)
                .map(|p| FlagValue::Percent(p as u8))
                .ok_or_else(|| bad(format!("{n} is not an integer from 0 to 100"))),
            (Kind::Orgs, J::Array(items)) => {
                let mut set = BTreeSet::new();
                for item in items {
                    let id = match item {
                        J::Number(n) => n.as_u64(),
                        J::String(s) => s.trim().parse().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| {
                        bad(format!("{item} is not an org id (a non-negative integer)"))
                    })?;
                    set.insert(id);
                }
                Ok(FlagValue::Orgs(set))
            }
            (Kind::Orgs, J::Number(n)) => n
                .as_u64()
                .map(|id| FlagValue::Orgs(BTreeSet::from([id])))
                .ok_or_else(|| bad(format!("{n} is not an org id"))),
            (Kind::Orgs, J::Null) => Ok(FlagValue::Orgs(BTreeSet::new())),
            (_, other) => Err(bad(format!("{other} has the wrong type"))),
        }
    }

    /// Parses a JSON object of flags; every problem is collected.
    pub fn parse_json_object(
        &self,
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, FlagValue>, Vec<String>> {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for (k, v) in map {
            match self.parse_json(k, v) {
                Ok(val) => {
                    out.insert(k.clone(), val);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Reads the flags given as environment variables.
    pub(crate) fn parse_env(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, FlagValue>, Vec<String>> {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for key in self.keys() {
            if let Some(v) = get(&key) {
                match self.parse_text(&key, &v) {
                    Ok(val) => {
                        out.insert(key, val);
                    }
                    Err(e) => problems.push(format!("environment {e}")),
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Builds typed flags from a complete value map.
    pub(crate) fn typed(&self, values: &BTreeMap<String, FlagValue>) -> Flags {
        let bool_of = |k: &str, d: bool| match values.get(k) {
            Some(FlagValue::Bool(b)) => *b,
            _ => d,
        };
        let orgs_of = |k: &str| match values.get(k) {
            Some(FlagValue::Orgs(o)) => o.clone(),
            _ => BTreeSet::new(),
        };
        Flags {
            streaming_v2: bool_of(STREAMING_V2, false),
            rollout_percent: match values.get(ROLLOUT_PERCENT) {
                Some(FlagValue::Percent(p)) => *p,
                _ => 0,
            },
            allowlist: orgs_of(ALLOWLIST),
            denylist: orgs_of(DENYLIST),
            leader_enabled: bool_of(LEADER_ENABLED, true),
            v1_facade: bool_of(V1_FACADE, false),
            upload_native: bool_of(UPLOAD_NATIVE, false),
            chat_native: bool_of(CHAT_NATIVE, false),
            service_v1: self
                .services
                .iter()
                .map(|s| bool_of(&Self::service_flag(s), true))
                .collect(),
        }
    }
}

/// Booleans as CONTRACT 4 lists them: true/false/1/0/on/off, any case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
