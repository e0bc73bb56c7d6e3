//! What can be wrong with a configuration file: one problem (file and key
//! path), the error that carries them all, and the collector every section
//! validates into, so one run reports every problem.

use std::fmt;
use std::net::SocketAddr;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `stream.batch_window_ms`.
    pub(crate) key: String,
    /// What is wrong with the key's value, for an operator.
    pub(crate) message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file, as given.
        file: String,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file was read; these keys are wrong.
    #[error("{file}: {}", format_problems(problems))]
    Invalid {
        /// The file, as given.
        file: String,
        /// Every problem found, in the order of the sections.
        problems: Vec<ConfigProblem>,
    },
}

fn format_problems(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    lines.join("; ")
}

impl ConfigError {
    /// One line per problem, each naming the file and key.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid { file, problems } => problems
                .iter()
                .map(|p| format!("{file}: {}: {}", p.key, p.message))
                .collect(),
        }
    }
}

/// Collects problems while values are checked; every check falls back to
/// the key's default so later rules still see a sensible value.
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(ConfigProblem {
            key: key.to_string(),
            message: message.to_string(),
        });
    }

    pub(super) fn addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.push(
                    key,
                    format!("{text:?} is not an IP address with a port (e.g. \"127.0.0.1:8080\")"),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    pub(super) fn range(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            self.push(key, format!("{v} is out of range ({min}..={max})"));
            default
        } else {
            v
        }
    }

    pub(super) fn name(&mut self, key: &str, value: Option<&str>, default: &str) -> String {
        let v = value.unwrap_or(default);
        if v.trim().is_empty() {
            self.push(key, "must not be empty");
            default.to_string()
        } else {
            v.to_string()
        }
    }

    pub(super) fn path(&mut self, key: &str, value: &str) -> String {
        if !value.starts_with('/') {
            self.push(key, format!("{value:?} must start with '/'"));
        } else if value.contains(['?', '#', ' ']) {
            self.push(
                key,
                format!("{value:?} must be a plain path (no query, fragment or spaces)"),
            );
        }
        value.to_string()
    }
}
