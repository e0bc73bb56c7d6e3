//! What readers see of the flags: an immutable [`Snapshot`] of every
//! value with the layer it came from, built from the layers as a whole
//! (later layers win) each time one of them changes.

use std::collections::BTreeMap;

use super::Layers;
use crate::flags::{FlagSchema, FlagValue, Flags};

/// Which layer a flag's effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// An environment variable.
    Env,
    /// The flags file.
    File,
    /// An admin override.
    Override,
}

impl Source {
    /// The name the admin API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Env => "env",
            Source::File => "file",
            Source::Override => "override",
        }
    }
}

/// One immutable state of the flags.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The flags version: it grows with every applied change.
    pub version: u64,
    /// The effective flags, typed.
    pub flags: Flags,
    /// The effective value of every flag, by name.
    pub values: BTreeMap<String, FlagValue>,
    /// The layer each value comes from, by name.
    pub sources: BTreeMap<String, Source>,
    /// The last rejected file or start-up problem, until a good file replaces it.
    pub last_error: Option<String>,
}

/// The snapshot the layers make: defaults < environment < file < overrides.
pub(super) fn build(schema: &FlagSchema, layers: &Layers, version: u64) -> Snapshot {
    let mut values = schema.defaults();
    let mut sources: BTreeMap<String, Source> = values
        .keys()
        .map(|k| (k.clone(), Source::Default))
        .collect();
    for (layer, source) in [
        (&layers.env, Source::Env),
        (&layers.file, Source::File),
        (&layers.overrides, Source::Override),
    ] {
        for (k, v) in layer {
            values.insert(k.clone(), v.clone());
            sources.insert(k.clone(), source);
        }
    }
    Snapshot {
        version,
        flags: schema.typed(&values),
        values,
        sources,
        last_error: layers.last_error.clone(),
    }
}
