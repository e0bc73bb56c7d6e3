//! The sidecar's configuration: one YAML file (CONTRACT section 6), every key
//! optional, validated whole at load.
//!
//! Parsing happens in two steps: serde (through `serde_path_to_error`, for
//! the key path of a bad key) turns the YAML into [`RawConfig`]
//! (rejecting unknown keys and wrong types), then [`RawConfig::validate`]
//! checks values and collects *every* problem, each naming the file and the
//! key path, so an operator fixes the file in one go.
//!
//! Each section lives in its own module, in the order data flows through the
//! sidecar: the raw serde struct, the typed struct the rest of the code uses,
//! the section's defaults as named constants, and its validation.
//! - `listen`: the client and admin listeners and TLS,
//! - `upstream`: where the backend lives,
//! - `auth`: how client tokens are verified,
//! - `flags`: the rollout group and the flags files,
//! - `stream`: the unified stream's tuning and size relations,
//! - `legacy`: the services and their V1 endpoints, the V1 facade,
//! - `lifecycle`: drain on shutdown, pass-through timeouts, connection caps,
//! - `uploads`: document uploads,
//! - `chat`: chat rooms,
//! - `cluster`: several replicas on Redis.
//!
//! `problems` holds what they report: each problem with its key path, the
//! error carrying them all, and the collector they validate into.

// Every item that stays public is documented.
#![warn(missing_docs)]

mod auth;
mod chat;
mod cluster;
mod flags;
mod legacy;
mod lifecycle;
mod listen;
mod problems;
mod stream;
mod uploads;
mod upstream;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use auth::AuthConfig;
pub(crate) use chat::ChatConfig;
pub use cluster::ClusterConfig;
pub(crate) use flags::FlagsConfig;
pub use legacy::{DEFAULT_SERVICES, LegacyConfig, ServiceConfig};
pub(crate) use lifecycle::{LimitsConfig, PassthroughConfig, ShutdownConfig};
pub use listen::TlsConfig;
use problems::Problems;
pub use problems::{ConfigError, ConfigProblem};
pub use stream::StreamConfig;
pub(crate) use uploads::UploadsConfig;
pub(crate) use upstream::UpstreamConfig;

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "REALTIME_EDGE_CONFIG";
/// The environment variable that supplies the HS256 secret.
pub(crate) const JWT_SECRET_ENV: &str = "JWT_SECRET";
/// The environment variable that supplies the admin token.
pub(crate) const ADMIN_TOKEN_ENV: &str = "ADMIN_TOKEN";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages (`<defaults>` when none).
    pub source: String,
    /// The client listener (streams, uploads, chat, pass-through).
    pub listen: SocketAddr,
    /// The admin listener (flags, health, metrics).
    pub admin_listen: SocketAddr,
    /// TLS on the client listener, when configured.
    pub(crate) tls: Option<TlsConfig>,
    /// Where the backend lives.
    pub upstream: UpstreamConfig,
    /// How client tokens are verified.
    pub auth: AuthConfig,
    /// The rollout group hashed with an org id into its rollout bucket.
    pub(crate) rollout_group: String,
    /// Where flags come from.
    pub flags: FlagsConfig,
    /// Stream tuning and delivery bounds.
    pub stream: StreamConfig,
    /// Services in configuration order.
    pub services: Vec<ServiceConfig>,
    /// Field and parameter names of the V1 endpoints, and the V1 facade.
    pub(crate) legacy: LegacyConfig,
    /// Drain on shutdown (CONTRACT 2.2).
    pub(crate) shutdown: ShutdownConfig,
    /// Timeouts and caps of pass-through traffic (CONTRACT 6).
    pub(crate) passthrough: PassthroughConfig,
    /// Connection caps, header/body timeouts and the descriptor budget.
    pub(crate) limits: LimitsConfig,
    /// Document uploads (CONTRACT 7).
    pub(crate) uploads: UploadsConfig,
    /// Chat rooms (CONTRACT 8).
    pub(crate) chat: ChatConfig,
    /// Several replicas on Redis (CONTRACT 9).
    pub cluster: ClusterConfig,
}

impl Config {
    /// The index of a service, the compact id the hub uses.
    pub(crate) fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// Reads and validates `path`; environment secrets fill unset keys.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml(&file, &text, &EnvSecrets::from_process())
    }

    /// Validates YAML text; `file` names it in messages.
    pub fn from_yaml(file: &str, text: &str, env: &EnvSecrets) -> Result<Config, ConfigError> {
        let raw = parse_raw(text).map_err(|problem| ConfigError::Invalid {
            file: file.to_string(),
            problems: vec![problem],
        })?;
        let (config, problems) = raw.validate(file, env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// Like [`Config::load`], for `check`: it keeps going past bad values, so
    /// the files the configuration names can be checked in the same run.
    /// Returns the configuration with every bad key at its default (`None`
    /// when the file cannot be read or is not YAML of the right shape) and
    /// the problems found (`None` when there are none).
    pub fn load_checked(path: &Path) -> (Option<Config>, Option<ConfigError>) {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(source) => return (None, Some(ConfigError::Read { file, source })),
        };
        let raw = match parse_raw(&text) {
            Ok(raw) => raw,
            Err(problem) => {
                let problems = vec![problem];
                return (None, Some(ConfigError::Invalid { file, problems }));
            }
        };
        let (config, problems) = raw.validate(&file, &EnvSecrets::from_process());
        let error = (!problems.is_empty()).then_some(ConfigError::Invalid { file, problems });
        (Some(config), error)
    }

    /// The built-in defaults (plus environment secrets).
    pub fn defaults(env: &EnvSecrets) -> Config {
        let (config, problems) = RawConfig::default().validate("<defaults>", env);
        assert!(
            problems.is_empty(),
            "built-in defaults are valid: {problems:?}"
        );
        config
    }
}

/// Secrets taken from the environment when the file leaves them unset.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    /// `JWT_SECRET`, when set and not empty.
    pub jwt_secret: Option<String>,
    /// `ADMIN_TOKEN`, when set and not empty.
    pub admin_token: Option<String>,
}

impl EnvSecrets {
    /// Reads `JWT_SECRET` and `ADMIN_TOKEN` from the process environment.
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        EnvSecrets {
            jwt_secret: get(JWT_SECRET_ENV),
            admin_token: get(ADMIN_TOKEN_ENV),
        }
    }
}

/// Parses the file into its raw form (an empty file is all defaults); a
/// YAML or shape error is one problem, named by the key path where it was
/// found (`<document>` for the file as a whole).
fn parse_raw(text: &str) -> Result<RawConfig, ConfigProblem> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(text)).map_err(|e| {
        let key = match e.path().to_string() {
            path if path == "." => "<document>".to_string(),
            path => path,
        };
        // yaml_serde prefixes its message with the path of the enclosing
        // mapping; the key already says it (and more precisely for an
        // unknown or mistyped key).
        let inner = e.inner().to_string();
        let message = match inner.split_once(": ") {
            Some((prefix, rest)) if key == prefix || key.starts_with(&format!("{prefix}.")) => {
                rest.to_string()
            }
            _ => inner,
        };
        ConfigProblem { key, message }
    })
}

/// The file as written: one raw struct per section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    tls: listen::RawTls,
    upstream: upstream::RawUpstream,
    auth: auth::RawAuth,
    rollout: flags::RawRollout,
    flags: flags::RawFlags,
    stream: stream::RawStream,
    services: Option<BTreeMap<String, legacy::RawService>>,
    legacy: legacy::RawLegacy,
    shutdown: lifecycle::RawShutdown,
    passthrough: lifecycle::RawPassthrough,
    limits: lifecycle::RawLimits,
    uploads: uploads::RawUploads,
    chat: chat::RawChat,
    cluster: cluster::RawCluster,
}

impl RawConfig {
    /// Validates every section in file order, then the rules that span
    /// sections. Every problem is collected; the configuration returned has
    /// each bad key at its default and is valid only when there are none.
    fn validate(self, file: &str, env: &EnvSecrets) -> (Config, Vec<ConfigProblem>) {
        let mut p = Problems(Vec::new());

        let (listen, admin_listen, tls) = listen::validate(
            &mut p,
            self.listen.as_deref(),
            self.admin_listen.as_deref(),
            self.tls,
        );
        let upstream = self.upstream.validate(&mut p);
        let auth = self.auth.validate(&mut p, env);
        let rollout_group = self.rollout.validate(&mut p);
        let flags = self.flags.validate(&mut p);
        let queue_set = self.stream.max_queue_bytes.is_some();
        let mut stream = self.stream.validate(&mut p);
        let services = legacy::validate_services(&mut p, self.services);
        if services
            .iter()
            .any(|s| s.v1_path == upstream.native_stream_path)
        {
            p.push(
                "upstream.native_stream_path",
                "must differ from every services.*.v1_path",
            );
        }
        stream::validate_sizes(&mut p, &mut stream, &services, queue_set);
        let legacy = self.legacy.validate(&mut p);
        let (shutdown, passthrough, limits) = lifecycle::validate(
            &mut p,
            &self.shutdown,
            &self.passthrough,
            &self.limits,
            stream.max_connections,
        );
        let uploads = self.uploads.validate(&mut p);
        let chat = self.chat.validate(&mut p);
        let cluster = self.cluster.validate(&mut p);

        let config = Config {
            source: file.to_string(),
            listen,
            admin_listen,
            tls,
            upstream,
            auth,
            rollout_group,
            flags,
            stream,
            services,
            legacy,
            shutdown,
            passthrough,
            limits,
            uploads,
            chat,
            cluster,
        };
        (config, p.0)
    }
}
