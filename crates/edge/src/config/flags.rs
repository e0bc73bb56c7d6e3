//! `rollout` and `flags`: the group hashed into rollout buckets, and where
//! the flags (and the admin API's overrides) are read from.

use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;

/// `rollout.group`.
const ROLLOUT_GROUP: &str = "realtime";
/// `flags.file`, relative to the working directory.
const FLAGS_FILE: &str = "flags/flags.yaml";

/// Where flags come from.
#[derive(Debug, Clone)]
pub struct FlagsConfig {
    /// The flags file, hot-reloaded; `None` when `flags.file: null`.
    pub file: Option<PathBuf>,
    /// Where admin-API overrides are persisted; in memory only when unset.
    pub(crate) overrides_file: Option<PathBuf>,
}

/// `rollout` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRollout {
    group: Option<String>,
}

impl RawRollout {
    pub(super) fn validate(self, p: &mut Problems) -> String {
        p.name("rollout.group", self.group.as_deref(), ROLLOUT_GROUP)
    }
}

/// `flags` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFlags {
    // `file: null` turns the flags file off; an absent key keeps the default.
    #[serde(default, deserialize_with = "explicit_null")]
    file: Option<Option<String>>,
    overrides_file: Option<String>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

impl RawFlags {
    pub(super) fn validate(self, p: &mut Problems) -> FlagsConfig {
        FlagsConfig {
            file: match self.file {
                None => Some(PathBuf::from(FLAGS_FILE)),
                Some(None) => None,
                Some(Some(f)) if f.trim().is_empty() => {
                    p.push(
                        "flags.file",
                        "must not be empty (use null for no flags file)",
                    );
                    None
                }
                Some(Some(f)) => Some(PathBuf::from(f)),
            },
            overrides_file: self.overrides_file.map(PathBuf::from),
        }
    }
}
