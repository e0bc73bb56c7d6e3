//! The sidecar's configuration: one YAML file (CONTRACT section 6), every key
//! optional, validated whole at load.
//!
//! Parsing happens in two steps: serde turns the YAML into [`RawConfig`]
//! (rejecting unknown keys and wrong types), then [`RawConfig::validate`]
//! checks values and collects *every* problem, each naming the file and the
//! key path, so an operator fixes the file in one go.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "REALTIME_EDGE_CONFIG";
/// The environment variable that supplies the HS256 secret.
pub const JWT_SECRET_ENV: &str = "JWT_SECRET";
/// The environment variable that supplies the admin token.
pub const ADMIN_TOKEN_ENV: &str = "ADMIN_TOKEN";

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `stream.batch_window_ms`.
    pub key: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {}", format_problems(problems))]
    Invalid {
        file: String,
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

/// TLS material for the client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Where the backend lives.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL of the backend, without a trailing slash.
    pub base_url: url::Url,
    pub native_stream_path: String,
    /// How long a V1 request may take before the poller gives up on it.
    pub poll_timeout: Duration,
    /// How long the native link may be down before a service falls back to polling.
    pub native_fallback_after: Duration,
}

/// How client tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub org_claim: String,
    pub admin_token: Option<String>,
}

/// Stream tuning; see CONTRACT section 2.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub batch_window: Duration,
    pub batch_max_events: usize,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    pub replay_events: usize,
    pub max_queue_bytes: usize,
    /// Recent eventIds remembered per org for de-duplication.
    pub dedup_events: usize,
    /// Client connections accepted at once; the rest get 503.
    pub max_connections: usize,
    /// How long an org hub outlives its last client, so a reconnect reuses it.
    pub hub_linger: Duration,
    // ---- delivery bounds (CONTRACT 2.1, 2.2) ----
    /// Bytes of events one message carries at most (a larger event travels alone).
    pub batch_max_bytes: usize,
    /// Largest event delivered; larger ones are dropped with `EVENT_TOO_LARGE`.
    pub max_event_bytes: usize,
    /// Bytes of events the replay window of one org keeps at most.
    pub replay_bytes: usize,
    /// How long an org's positions and replay window outlive its last client.
    pub resume_ttl: Duration,
    /// A client that sends nothing (not even a Pong) for this long is dropped.
    pub client_timeout: Duration,
    /// The largest server message the sizes allow (derived: the larger of
    /// `batch_max_bytes` and `max_event_bytes`, plus the envelope). WebSocket
    /// write buffers are sized from it.
    pub max_message_bytes: usize,
}

/// One backend service with a V1 long-poll endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub v1_path: String,
}

/// Field and parameter names of the V1 endpoints.
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    pub cursor_param: String,
    pub events_field: String,
    pub cursor_field: String,
}

/// Where flags come from.
#[derive(Debug, Clone)]
pub struct FlagsConfig {
    pub file: Option<PathBuf>,
    pub overrides_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages (`<defaults>` when none).
    pub source: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub rollout_group: String,
    pub flags: FlagsConfig,
    pub stream: StreamConfig,
    /// Services in configuration order.
    pub services: Vec<ServiceConfig>,
    pub legacy: LegacyConfig,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The index of a service, the compact id the hub uses.
    pub fn service_index(&self, name: &str) -> Option<usize> {
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
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| ConfigError::Invalid {
                file: file.to_string(),
                problems: vec![yaml_problem(&e)],
            })?
        };
        raw.validate(file, env)
            .map_err(|problems| ConfigError::Invalid {
                file: file.to_string(),
                problems,
            })
    }

    /// The built-in defaults (plus environment secrets).
    pub fn defaults(env: &EnvSecrets) -> Config {
        RawConfig::default()
            .validate("<defaults>", env)
            .expect("built-in defaults are valid")
    }
}

/// Secrets taken from the environment when the file leaves them unset.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    pub jwt_secret: Option<String>,
    pub admin_token: Option<String>,
}

impl EnvSecrets {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        EnvSecrets {
            jwt_secret: get(JWT_SECRET_ENV),
            admin_token: get(ADMIN_TOKEN_ENV),
        }
    }
}

fn yaml_problem(e: &yaml_serde::Error) -> ConfigProblem {
    // yaml_serde reports the path of the offending key in its message
    // ("stream.batch_window_ms: invalid type ..."); keep it as the key.
    let msg = e.to_string();
    let (key, message) = match msg.split_once(": ") {
        Some((k, m))
            if !k.contains(' ')
                && k.chars()
                    .all(|c| c.is_alphanumeric() || "._-[]".contains(c)) =>
        {
            (k.to_string(), m.to_string())
        }
        _ => ("<document>".to_string(), msg.clone()),
    };
    ConfigProblem { key, message }
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    tls: RawTls,
    upstream: RawUpstream,
    auth: RawAuth,
    rollout: RawRollout,
    flags: RawFlags,
    stream: RawStream,
    services: Option<BTreeMap<String, RawService>>,
    legacy: RawLegacy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    base_url: Option<String>,
    native_stream_path: Option<String>,
    poll_timeout_s: Option<u64>,
    native_fallback_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    jwt_secret: Option<String>,
    jwt_public_key_file: Option<String>,
    org_claim: Option<String>,
    admin_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRollout {
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFlags {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStream {
    batch_window_ms: Option<u64>,
    batch_max_events: Option<u64>,
    ping_interval_s: Option<u64>,
    handshake_timeout_s: Option<u64>,
    replay_events: Option<u64>,
    max_queue_bytes: Option<u64>,
    dedup_events: Option<u64>,
    max_connections: Option<u64>,
    hub_linger_ms: Option<u64>,
    batch_max_bytes: Option<u64>,
    max_event_bytes: Option<u64>,
    replay_bytes: Option<u64>,
    resume_ttl_s: Option<u64>,
    client_timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    v1_path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLegacy {
    cursor_param: Option<String>,
    events_field: Option<String>,
    cursor_field: Option<String>,
}

/// The ten services of CONTRACT section 6, in its order.
pub const DEFAULT_SERVICES: [(&str, &str); 10] = [
    ("finance", "/finance/realtime/subscribe"),
    ("guest", "/guest-checkin/realtime/subscribe"),
    ("staff", "/staff/realtime/subscribe"),
    ("tasks", "/tasks/realtime/subscribe"),
    ("properties", "/properties/realtime/subscribe"),
    ("users", "/users/realtime/subscribe"),
    ("dashboard", "/dashboard/realtime/subscribe"),
    ("branding", "/branding/realtime/subscribe"),
    ("analytics", "/analytics/realtime/subscribe"),
    ("reports", "/reports/realtime/subscribe"),
];

/// Collects problems while values are checked.
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(ConfigProblem {
            key: key.to_string(),
            message: message.to_string(),
        });
    }

    fn addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
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

    fn range(&mut self, key: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            self.push(key, format!("{v} is out of range ({min}..={max})"));
            default
        } else {
            v
        }
    }

    fn name(&mut self, key: &str, value: Option<&str>, default: &str) -> String {
        let v = value.unwrap_or(default);
        if v.trim().is_empty() {
            self.push(key, "must not be empty");
            default.to_string()
        } else {
            v.to_string()
        }
    }

    fn path(&mut self, key: &str, value: &str) -> String {
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

impl RawConfig {
    fn validate(self, file: &str, env: &EnvSecrets) -> Result<Config, Vec<ConfigProblem>> {
        let mut p = Problems(Vec::new());

        let listen = p.addr("listen", self.listen.as_deref(), "0.0.0.0:8080");
        let admin_listen = p.addr(
            "admin_listen",
            self.admin_listen.as_deref(),
            "127.0.0.1:9090",
        );
        if listen == admin_listen && listen.port() != 0 {
            p.push("admin_listen", "must differ from listen");
        }

        let tls = match (self.tls.cert_file, self.tls.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsConfig {
                cert_file: PathBuf::from(c),
                key_file: PathBuf::from(k),
            }),
            (Some(_), None) => {
                p.push("tls.key_file", "must be set when tls.cert_file is");
                None
            }
            (None, Some(_)) => {
                p.push("tls.cert_file", "must be set when tls.key_file is");
                None
            }
        };

        let base_text = self
            .upstream
            .base_url
            .unwrap_or_else(|| "http://127.0.0.1:4000".to_string());
        let base_url = match url::Url::parse(&base_text) {
            // The sidecar runs beside the backend; TLS to the backend is not
            // built (yet), and a URL it cannot use is refused here rather
            // than failing on every poll.
            Ok(u) if u.scheme() == "https" => {
                p.push(
                    "upstream.base_url",
                    format!("{base_text:?}: https upstreams are not supported; reach the backend over http on the local network"),
                );
                u
            }
            Ok(u) if u.scheme() == "http" && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    p.push(
                        "upstream.base_url",
                        format!("{base_text:?} must not have a query or fragment"),
                    );
                }
                u
            }
            Ok(_) => {
                p.push(
                    "upstream.base_url",
                    format!("{base_text:?} must be an http:// URL with a host"),
                );
                url::Url::parse("http://127.0.0.1:4000").expect("default URL parses")
            }
            Err(e) => {
                p.push(
                    "upstream.base_url",
                    format!("{base_text:?} is not a URL: {e}"),
                );
                url::Url::parse("http://127.0.0.1:4000").expect("default URL parses")
            }
        };
        let native_stream_path = p.path(
            "upstream.native_stream_path",
            self.upstream
                .native_stream_path
                .as_deref()
                .unwrap_or("/v2/realtime/stream"),
        );
        let poll_timeout = Duration::from_secs(p.range(
            "upstream.poll_timeout_s",
            self.upstream.poll_timeout_s,
            40,
            1,
            3600,
        ));
        let native_fallback_after = Duration::from_secs(p.range(
            "upstream.native_fallback_s",
            self.upstream.native_fallback_s,
            5,
            0,
            3600,
        ));

        let jwt_secret = self.auth.jwt_secret.or_else(|| env.jwt_secret.clone());
        if jwt_secret.as_deref() == Some("") {
            p.push("auth.jwt_secret", "must not be empty");
        }
        let jwt_public_key_file = self.auth.jwt_public_key_file.map(PathBuf::from);
        if jwt_public_key_file.is_some() && jwt_secret.is_some() {
            p.push("auth.jwt_public_key_file", "set either auth.jwt_secret (HS256) or auth.jwt_public_key_file (RS256/ES256), not both");
        }
        if let Some(f) = &jwt_public_key_file
            && !f.is_file()
        {
            p.push(
                "auth.jwt_public_key_file",
                format!("{} is not a readable file", f.display()),
            );
        }
        let org_claim = p.name("auth.org_claim", self.auth.org_claim.as_deref(), "orgId");
        let admin_token = self
            .auth
            .admin_token
            .or_else(|| env.admin_token.clone())
            .filter(|t| !t.is_empty());

        let rollout_group = p.name("rollout.group", self.rollout.group.as_deref(), "realtime");

        let flags = FlagsConfig {
            file: match self.flags.file {
                None => Some(PathBuf::from("flags/flags.yaml")),
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
            overrides_file: self.flags.overrides_file.map(PathBuf::from),
        };

        let s = &self.stream;
        let stream = StreamConfig {
            batch_window: Duration::from_millis(p.range(
                "stream.batch_window_ms",
                s.batch_window_ms,
                50,
                0,
                10_000,
            )),
            batch_max_events: p.range(
                "stream.batch_max_events",
                s.batch_max_events,
                100,
                1,
                10_000,
            ) as usize,
            ping_interval: Duration::from_secs(p.range(
                "stream.ping_interval_s",
                s.ping_interval_s,
                30,
                1,
                3600,
            )),
            handshake_timeout: Duration::from_secs(p.range(
                "stream.handshake_timeout_s",
                s.handshake_timeout_s,
                10,
                1,
                600,
            )),
            replay_events: p.range("stream.replay_events", s.replay_events, 1000, 0, 1_000_000)
                as usize,
            max_queue_bytes: p.range(
                "stream.max_queue_bytes",
                s.max_queue_bytes,
                1_048_576,
                1024,
                1 << 30,
            ) as usize,
            dedup_events: p.range("stream.dedup_events", s.dedup_events, 4096, 16, 10_000_000)
                as usize,
            max_connections: p.range(
                "stream.max_connections",
                s.max_connections,
                18_000,
                1,
                10_000_000,
            ) as usize,
            hub_linger: Duration::from_millis(p.range(
                "stream.hub_linger_ms",
                s.hub_linger_ms,
                5_000,
                0,
                3_600_000,
            )),
            batch_max_bytes: p.range(
                "stream.batch_max_bytes",
                s.batch_max_bytes,
                65_536,
                1024,
                64 << 20,
            ) as usize,
            max_event_bytes: p.range(
                "stream.max_event_bytes",
                s.max_event_bytes,
                1_048_576,
                256,
                64 << 20,
            ) as usize,
            replay_bytes: p.range("stream.replay_bytes", s.replay_bytes, 16 << 20, 0, 1 << 30)
                as usize,
            resume_ttl: Duration::from_secs(p.range(
                "stream.resume_ttl_s",
                s.resume_ttl_s,
                300,
                0,
                86_400,
            )),
            client_timeout: Duration::from_secs(p.range(
                "stream.client_timeout_s",
                s.client_timeout_s,
                75,
                1,
                86_400,
            )),
            // Set once the service names are known (below).
            max_message_bytes: 0,
        };

        let services = match self.services {
            None => DEFAULT_SERVICES
                .iter()
                .map(|(n, v)| ServiceConfig {
                    name: n.to_string(),
                    v1_path: v.to_string(),
                })
                .collect(),
            Some(map) => {
                if map.is_empty() {
                    p.push("services", "must list at least one service");
                }
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                for (name, svc) in map {
                    let key = format!("services.{name}");
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        p.push(&key, "service names are lowercase letters, digits and '_' (they name the flag <SERVICE>_REALTIME_V1)");
                    }
                    let path = p.path(&format!("{key}.v1_path"), &svc.v1_path);
                    if !seen.insert(path.clone()) {
                        p.push(
                            format!("{key}.v1_path"),
                            format!("{path:?} is used by another service"),
                        );
                    }
                    out.push(ServiceConfig {
                        name,
                        v1_path: path,
                    });
                }
                out
            }
        };
        if services.iter().any(|s| s.v1_path == native_stream_path) {
            p.push(
                "upstream.native_stream_path",
                "must differ from every services.*.v1_path",
            );
        }

        let mut stream = stream;
        let queue_set = self.stream.max_queue_bytes.is_some();
        validate_stream_sizes(&mut p, &mut stream, &services, queue_set);

        let legacy = LegacyConfig {
            cursor_param: p.name(
                "legacy.cursor_param",
                self.legacy.cursor_param.as_deref(),
                "since",
            ),
            events_field: p.name(
                "legacy.events_field",
                self.legacy.events_field.as_deref(),
                "events",
            ),
            cursor_field: p.name(
                "legacy.cursor_field",
                self.legacy.cursor_field.as_deref(),
                "cursor",
            ),
        };

        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            source: file.to_string(),
            listen,
            admin_listen,
            tls,
            upstream: UpstreamConfig {
                base_url,
                native_stream_path,
                poll_timeout,
                native_fallback_after,
            },
            auth: AuthConfig {
                jwt_secret,
                jwt_public_key_file,
                org_claim,
                admin_token,
            },
            rollout_group,
            flags,
            stream,
            services,
            legacy,
        })
    }
}

/// The relations between the stream's sizes (CONTRACT 2.1), and the
/// largest message they allow: every legal message must fit an empty
/// client queue, and the replay window must hold the largest event.
/// When `stream.max_queue_bytes` is not set, the queue holds at least the
/// largest message plus this much (so a default 1 MiB event fits).
const DEFAULT_QUEUE_HEADROOM: usize = 64 * 1024;

fn validate_stream_sizes(
    p: &mut Problems,
    stream: &mut StreamConfig,
    services: &[ServiceConfig],
    queue_set: bool,
) {
    let longest_name = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let envelope = crate::protocol::event_envelope_bytes(longest_name);
    let largest_events = stream.batch_max_bytes.max(stream.max_event_bytes);
    stream.max_message_bytes = largest_events.saturating_add(envelope);
    let needed = stream.max_event_bytes.saturating_add(envelope);
    if !queue_set {
        stream.max_queue_bytes = stream.max_queue_bytes.max(
            stream
                .max_message_bytes
                .saturating_add(DEFAULT_QUEUE_HEADROOM),
        );
    }
    if stream.max_queue_bytes < needed {
        p.push(
            "stream.max_queue_bytes",
            format!(
                "{} is smaller than stream.max_event_bytes ({}) plus the message envelope ({envelope}); it must be at least {needed}",
                stream.max_queue_bytes, stream.max_event_bytes
            ),
        );
    } else if stream.max_queue_bytes < stream.max_message_bytes {
        p.push(
            "stream.max_queue_bytes",
            format!(
                "{} is smaller than stream.batch_max_bytes ({}) plus the message envelope ({envelope})",
                stream.max_queue_bytes, stream.batch_max_bytes
            ),
        );
    }
    if stream.replay_bytes > 0 && stream.replay_bytes < stream.max_event_bytes {
        p.push(
            "stream.replay_bytes",
            format!(
                "{} is smaller than stream.max_event_bytes ({}); use 0 to keep no replay window",
                stream.replay_bytes, stream.max_event_bytes
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml("edge.yaml", text, &EnvSecrets::default())
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn empty_file_gives_contract_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.upstream.base_url.as_str(), "http://127.0.0.1:4000/");
        assert_eq!(c.upstream.native_stream_path, "/v2/realtime/stream");
        assert_eq!(c.auth.org_claim, "orgId");
        assert_eq!(c.rollout_group, "realtime");
        assert_eq!(c.flags.file, Some(PathBuf::from("flags/flags.yaml")));
        assert_eq!(c.stream.batch_window, Duration::from_millis(50));
        assert_eq!(c.stream.batch_max_events, 100);
        assert_eq!(c.stream.ping_interval, Duration::from_secs(30));
        assert_eq!(c.stream.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.stream.replay_events, 1000);
        // Unset, the queue holds the largest message (a 1 MiB event) and more.
        assert_eq!(c.stream.max_event_bytes, 1_048_576);
        assert!(c.stream.max_queue_bytes >= c.stream.max_message_bytes + 64 * 1024);
        assert_eq!(c.stream.batch_max_bytes, 65_536);
        assert_eq!(c.stream.replay_bytes, 16 << 20);
        assert_eq!(c.stream.resume_ttl, Duration::from_secs(300));
        assert_eq!(c.stream.client_timeout, Duration::from_secs(75));
        assert_eq!(c.services.len(), 10);
        assert_eq!(
            c.service("guest").unwrap().v1_path,
            "/guest-checkin/realtime/subscribe"
        );
        assert_eq!(c.legacy.cursor_param, "since");
        assert!(c.tls.is_none());
    }

    #[test]
    fn full_file_is_read() {
        let c = parse(
            r#"
listen: "127.0.0.1:18080"
admin_listen: "127.0.0.1:19090"
upstream: {base_url: "http://backend:4000", native_stream_path: "/stream"}
auth: {jwt_secret: "s3cret", org_claim: "org", admin_token: "adm"}
rollout: {group: "g1"}
flags: {file: null, overrides_file: "/tmp/o.yaml"}
stream: {batch_window_ms: 10, batch_max_events: 5, replay_events: 7}
services:
  finance: {v1_path: "/f"}
legacy: {cursor_param: "c", events_field: "e", cursor_field: "n"}
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 18080);
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("s3cret"));
        assert_eq!(c.flags.file, None);
        assert_eq!(
            c.services,
            vec![ServiceConfig {
                name: "finance".into(),
                v1_path: "/f".into()
            }]
        );
        assert_eq!(c.legacy.events_field, "e");
        assert_eq!(c.stream.replay_events, 7);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let lines = problems("stream:\n  batch_windw_ms: 5\n");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("edge.yaml: stream"), "{lines:?}");
        assert!(lines[0].contains("batch_windw_ms"), "{lines:?}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let lines = problems("stream:\n  batch_window_ms: soon\n");
        assert!(lines[0].contains("stream.batch_window_ms"), "{lines:?}");
    }

    #[test]
    fn every_bad_value_is_reported_together() {
        let lines = problems(
            r#"
listen: "nowhere"
admin_listen: "127.0.0.1:99999"
upstream: {base_url: "ftp://x", native_stream_path: "stream"}
stream: {batch_max_events: 0, ping_interval_s: 0}
tls: {cert_file: "c.pem"}
services:
  finance: {v1_path: "/same"}
  staff: {v1_path: "/same"}
"#,
        );
        let joined = lines.join("\n");
        for key in [
            "edge.yaml: listen:",
            "edge.yaml: admin_listen:",
            "edge.yaml: upstream.base_url:",
            "edge.yaml: upstream.native_stream_path:",
            "edge.yaml: stream.batch_max_events:",
            "edge.yaml: stream.ping_interval_s:",
            "edge.yaml: tls.key_file:",
            "edge.yaml: services.staff.v1_path:",
        ] {
            assert!(joined.contains(key), "missing {key} in\n{joined}");
        }
    }

    #[test]
    fn https_upstream_is_refused_with_a_reason() {
        let lines = problems("upstream: {base_url: \"https://backend:443\"}\n");
        assert!(
            lines[0].contains("upstream.base_url") && lines[0].contains("https"),
            "{lines:?}"
        );
    }

    #[test]
    fn empty_service_table_is_rejected() {
        let lines = problems("services: {}\n");
        assert!(
            lines[0].contains("services: must list at least one service"),
            "{lines:?}"
        );
    }

    #[test]
    fn bad_service_name_is_rejected() {
        let lines = problems("services:\n  Fin-ance: {v1_path: /x}\n");
        assert!(lines[0].contains("services.Fin-ance"), "{lines:?}");
    }

    #[test]
    fn missing_public_key_file_is_rejected() {
        let lines = problems("auth: {jwt_public_key_file: /nonexistent/key.pem}\n");
        assert!(lines[0].contains("auth.jwt_public_key_file"), "{lines:?}");
    }

    #[test]
    fn env_secrets_fill_unset_keys() {
        let env = EnvSecrets {
            jwt_secret: Some("from-env".into()),
            admin_token: Some("tok".into()),
        };
        let c = Config::from_yaml("x.yaml", "", &env).unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("from-env"));
        assert_eq!(c.auth.admin_token.as_deref(), Some("tok"));
        let c = Config::from_yaml("x.yaml", "auth: {jwt_secret: file}\n", &env).unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("file"));
    }

    #[test]
    fn not_a_mapping_is_rejected() {
        let lines = problems("- a\n- b\n");
        assert!(lines[0].starts_with("edge.yaml:"), "{lines:?}");
    }
}
