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
    /// How often both files are checked for a new pair.
    pub reload_interval: Duration,
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
    /// CA certificates (PEM) that verify an `https://` backend instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

/// How client tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub org_claim: String,
    pub admin_token: Option<String>,
    /// The claim naming the user (chat, CONTRACT 8).
    pub user_claim: String,
    /// The claim with the user's display name; the user id when absent.
    pub name_claim: String,
    /// JWKS document of the identity provider (http or https).
    pub jwks_url: Option<url::Url>,
    /// How often the JWKS is fetched again.
    pub jwks_refresh: Duration,
    /// Time allowed for one JWKS fetch, connect to last byte.
    pub jwks_timeout: Duration,
    /// Largest JWKS body read; a larger one is refused.
    pub jwks_max_bytes: usize,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must match), when not empty.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, for acceptance and for the 4001 close.
    pub leeway: Duration,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl Default for AuthConfig {
    /// No keys; every other value at its CONTRACT default.
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_public_key_file: None,
            org_claim: "orgId".into(),
            admin_token: None,
            user_claim: "sub".into(),
            name_claim: "name".into(),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(DEFAULT_JWKS_REFRESH_S),
            jwks_timeout: Duration::from_secs(DEFAULT_JWKS_TIMEOUT_S),
            jwks_max_bytes: DEFAULT_JWKS_MAX_BYTES,
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::from_secs(DEFAULT_LEEWAY_S),
            require_exp: true,
        }
    }
}

const DEFAULT_JWKS_REFRESH_S: u64 = 300;
const DEFAULT_JWKS_TIMEOUT_S: u64 = 10;
const DEFAULT_JWKS_MAX_BYTES: usize = 1 << 20;
const DEFAULT_LEEWAY_S: u64 = 5;

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
    /// How long the V1 facade holds a request with nothing to answer (CONTRACT 3.4).
    pub facade_hold: Duration,
    /// V1 facade requests held at once; past it new ones get 503.
    pub facade_max_held: usize,
}

/// Where flags come from.
#[derive(Debug, Clone)]
pub struct FlagsConfig {
    pub file: Option<PathBuf>,
    pub overrides_file: Option<PathBuf>,
}

/// Chat rooms (CONTRACT 8): the backend's store endpoints and the rooms' bounds.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// `GET {history_path}?roomId=R&limit=N` on join.
    pub history_path: String,
    /// Messages asked for on join.
    pub history_limit: u64,
    /// `POST {messages_path}` stores one message.
    pub messages_path: String,
    /// `POST {receipts_path}` stores a user's latest read receipt.
    pub receipts_path: String,
    /// How long a user whose last connection left stays online.
    pub leave_grace: Duration,
    /// At most one receipt POST per user and room per this interval.
    pub receipt_flush: Duration,
    /// Connections in one room at once (every tab counts); the next gets `ROOM_FULL`.
    pub max_room_members: usize,
    /// Chat messages one user may send per second in a room.
    pub max_messages_per_s: usize,
    /// How long one backend request (history, message, receipt) may take.
    pub backend_timeout: Duration,
    /// Largest backend answer read (a history page).
    pub max_response_bytes: usize,
    /// Send queue of one chat connection, in bytes; past it the client is closed with 1013.
    pub max_queue_bytes: usize,
    /// Messages waiting in one room's inbox; senders wait when it is full.
    pub room_inbox: usize,
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
    /// Drain on shutdown (CONTRACT 2.2).
    pub shutdown: ShutdownConfig,
    /// Timeouts and caps of pass-through traffic (CONTRACT 6).
    pub passthrough: PassthroughConfig,
    /// Connection caps, header/body timeouts and the descriptor budget.
    pub limits: LimitsConfig,
    /// Document uploads (CONTRACT 7).
    pub uploads: UploadsConfig,
    /// Chat rooms (CONTRACT 8).
    pub chat: ChatConfig,
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
    shutdown: RawShutdown,
    passthrough: RawPassthrough,
    limits: RawLimits,
    uploads: RawUploads,
    chat: RawChat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    reload_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    base_url: Option<String>,
    native_stream_path: Option<String>,
    poll_timeout_s: Option<u64>,
    native_fallback_s: Option<u64>,
    ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    jwt_secret: Option<String>,
    jwt_public_key_file: Option<String>,
    org_claim: Option<String>,
    admin_token: Option<String>,
    user_claim: Option<String>,
    name_claim: Option<String>,
    jwks_url: Option<String>,
    jwks_refresh_s: Option<u64>,
    jwks_timeout_s: Option<u64>,
    jwks_max_bytes: Option<u64>,
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    leeway_s: Option<u64>,
    require_exp: Option<bool>,
}

/// A string or a list of strings (`auth.audience`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
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
    facade_hold_s: Option<u64>,
    facade_max_held: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawChat {
    history_path: Option<String>,
    history_limit: Option<u64>,
    messages_path: Option<String>,
    receipts_path: Option<String>,
    leave_grace_s: Option<u64>,
    receipt_flush_ms: Option<u64>,
    max_room_members: Option<u64>,
    max_messages_per_s: Option<u64>,
    backend_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    max_queue_bytes: Option<u64>,
    room_inbox: Option<u64>,
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

        let reload_interval = Duration::from_millis(p.range(
            "tls.reload_interval_ms",
            self.tls.reload_interval_ms,
            1000,
            50,
            3_600_000,
        ));
        let tls = match (self.tls.cert_file, self.tls.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsConfig {
                cert_file: PathBuf::from(c),
                key_file: PathBuf::from(k),
                reload_interval,
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
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
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
                    format!("{base_text:?} must be an http:// or https:// URL with a host"),
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
        let ca_file = self.upstream.ca_file.map(PathBuf::from);
        if let Some(f) = &ca_file
            && !f.is_file()
        {
            p.push(
                "upstream.ca_file",
                format!("{} is not a readable file", f.display()),
            );
        }

        let jwt_secret = self.auth.jwt_secret.or_else(|| env.jwt_secret.clone());
        if jwt_secret.as_deref() == Some("") {
            p.push("auth.jwt_secret", "must not be empty");
        }
        let jwt_public_key_file = self.auth.jwt_public_key_file.map(PathBuf::from);
        if let Some(f) = &jwt_public_key_file
            && !f.is_file()
        {
            p.push(
                "auth.jwt_public_key_file",
                format!("{} is not a readable file", f.display()),
            );
        }
        let org_claim = p.name("auth.org_claim", self.auth.org_claim.as_deref(), "orgId");
        let user_claim = p.name("auth.user_claim", self.auth.user_claim.as_deref(), "sub");
        let name_claim = p.name("auth.name_claim", self.auth.name_claim.as_deref(), "name");
        let admin_token = self
            .auth
            .admin_token
            .or_else(|| env.admin_token.clone())
            .filter(|t| !t.is_empty());
        let jwks_url = self
            .auth
            .jwks_url
            .and_then(|text| match url::Url::parse(&text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
                Ok(_) => {
                    p.push(
                        "auth.jwks_url",
                        format!("{text:?} must be an http:// or https:// URL with a host"),
                    );
                    None
                }
                Err(e) => {
                    p.push("auth.jwks_url", format!("{text:?} is not a URL: {e}"));
                    None
                }
            });
        let jwks_refresh = Duration::from_secs(p.range(
            "auth.jwks_refresh_s",
            self.auth.jwks_refresh_s,
            DEFAULT_JWKS_REFRESH_S,
            1,
            86_400,
        ));
        let jwks_timeout = Duration::from_secs(p.range(
            "auth.jwks_timeout_s",
            self.auth.jwks_timeout_s,
            DEFAULT_JWKS_TIMEOUT_S,
            1,
            300,
        ));
        let jwks_max_bytes = p.range(
            "auth.jwks_max_bytes",
            self.auth.jwks_max_bytes,
            DEFAULT_JWKS_MAX_BYTES as u64,
            1024,
            64 << 20,
        ) as usize;
        let issuer = self.auth.issuer;
        if issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            p.push(
                "auth.issuer",
                "must not be empty (leave it unset to skip the check)",
            );
        }
        let audience = match self.auth.audience {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(list)) => list,
        };
        if audience.iter().any(|a| a.trim().is_empty()) {
            p.push("auth.audience", "must not contain an empty value");
        }
        let leeway = Duration::from_secs(p.range(
            "auth.leeway_s",
            self.auth.leeway_s,
            DEFAULT_LEEWAY_S,
            0,
            3600,
        ));
        let require_exp = self.auth.require_exp.unwrap_or(true);

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
            facade_hold: Duration::from_secs(p.range(
                "legacy.facade_hold_s",
                self.legacy.facade_hold_s,
                25,
                1,
                300,
            )),
            facade_max_held: p.range(
                "legacy.facade_max_held",
                self.legacy.facade_max_held,
                1000,
                0,
                100_000,
            ) as usize,
        };

        let (shutdown, passthrough, limits) = lifecycle_sections(
            &mut p,
            &self.shutdown,
            &self.passthrough,
            &self.limits,
            stream.max_connections,
        );

        let uploads = self.uploads.validate(&mut p);

        let c = &self.chat;
        let chat = ChatConfig {
            history_path: p.path(
                "chat.history_path",
                c.history_path
                    .as_deref()
                    .unwrap_or("/collaboration/chat/history"),
            ),
            history_limit: p.range("chat.history_limit", c.history_limit, 50, 0, 10_000),
            messages_path: p.path(
                "chat.messages_path",
                c.messages_path
                    .as_deref()
                    .unwrap_or("/collaboration/chat/messages"),
            ),
            receipts_path: p.path(
                "chat.receipts_path",
                c.receipts_path
                    .as_deref()
                    .unwrap_or("/collaboration/chat/receipts"),
            ),
            leave_grace: Duration::from_secs(p.range(
                "chat.leave_grace_s",
                c.leave_grace_s,
                5,
                0,
                3600,
            )),
            receipt_flush: Duration::from_millis(p.range(
                "chat.receipt_flush_ms",
                c.receipt_flush_ms,
                1000,
                0,
                3_600_000,
            )),
            max_room_members: p.range(
                "chat.max_room_members",
                c.max_room_members,
                1000,
                1,
                1_000_000,
            ) as usize,
            max_messages_per_s: p.range(
                "chat.max_messages_per_s",
                c.max_messages_per_s,
                5,
                1,
                10_000,
            ) as usize,
            backend_timeout: Duration::from_millis(p.range(
                "chat.backend_timeout_ms",
                c.backend_timeout_ms,
                5000,
                10,
                600_000,
            )),
            max_response_bytes: p.range(
                "chat.max_response_bytes",
                c.max_response_bytes,
                4 << 20,
                1024,
                1 << 30,
            ) as usize,
            max_queue_bytes: p.range(
                "chat.max_queue_bytes",
                c.max_queue_bytes,
                1_048_576,
                16 * 1024,
                1 << 30,
            ) as usize,
            room_inbox: p.range("chat.room_inbox", c.room_inbox, 1024, 16, 1_000_000) as usize,
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
                ca_file,
            },
            auth: AuthConfig {
                jwt_secret,
                jwt_public_key_file,
                org_claim,
                admin_token,
                user_claim,
                name_claim,
                jwks_url,
                jwks_refresh,
                jwks_timeout,
                jwks_max_bytes,
                issuer,
                audience,
                leeway,
                require_exp,
            },
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
        })
    }
}

// ---- uploads (CONTRACT 7) --------------------------------------------------

/// Document uploads over `/v2/documents/upload/stream`; see CONTRACT 7.
#[derive(Debug, Clone)]
pub struct UploadsConfig {
    /// Where partial and complete files are spooled (one file per upload,
    /// named by its generated uploadId, never by the client's filename).
    pub spool_dir: PathBuf,
    /// Bytes all spooled files may take together; a new upload that would
    /// pass it is refused with `BUSY` (close 1013).
    pub max_spool_bytes: u64,
    /// Upload connections served at once; beyond it `BUSY` (close 1013).
    pub max_concurrent: usize,
    /// Largest accepted `filesize` (`FILE_TOO_LARGE` above).
    pub max_file_bytes: u64,
    /// Accepted mimetypes; empty accepts any (`UNSUPPORTED_TYPE` otherwise).
    pub allowed_mimetypes: Vec<String>,
    /// Version 2: a `progress` at least every this many durable bytes.
    pub ack_bytes: u64,
    /// Version 2: unacknowledged bytes a client may have in flight.
    pub window_bytes: u64,
    /// How long a partial file (or a finished upload's result) is kept
    /// after its last activity, for a resume.
    pub resume_ttl: Duration,
    /// A socket that sends nothing for this long is closed (the partial file stays).
    pub idle_timeout: Duration,
    /// The backend's multipart endpoint.
    pub legacy_path: String,
    /// Delivery attempts on 5xx, garbage or timeout before `UPSTREAM_ERROR`.
    pub delivery_attempts: u32,
    /// How long one delivery attempt may take (request, upload and answer).
    pub delivery_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUploads {
    spool_dir: Option<String>,
    max_spool_bytes: Option<u64>,
    max_concurrent: Option<u64>,
    max_file_bytes: Option<u64>,
    allowed_mimetypes: Option<Vec<String>>,
    ack_bytes: Option<u64>,
    window_bytes: Option<u64>,
    resume_ttl_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    legacy_path: Option<String>,
    delivery_attempts: Option<u64>,
    delivery_timeout_s: Option<u64>,
}

impl RawUploads {
    fn validate(self, p: &mut Problems) -> UploadsConfig {
        let spool_dir = match self.spool_dir {
            None => std::env::temp_dir().join("realtime-edge-uploads"),
            Some(d) if d.trim().is_empty() => {
                p.push("uploads.spool_dir", "must not be empty");
                std::env::temp_dir().join("realtime-edge-uploads")
            }
            Some(d) => PathBuf::from(d),
        };
        let max_file_bytes = p.range(
            "uploads.max_file_bytes",
            self.max_file_bytes,
            104_857_600,
            1,
            1 << 40,
        );
        let max_spool_bytes = p.range(
            "uploads.max_spool_bytes",
            self.max_spool_bytes,
            1 << 30,
            1,
            1 << 50,
        );
        let ack_bytes = p.range("uploads.ack_bytes", self.ack_bytes, 262_144, 1024, 1 << 30);
        let window_bytes = p.range(
            "uploads.window_bytes",
            self.window_bytes,
            4_194_304,
            1024,
            1 << 30,
        );
        if window_bytes < ack_bytes {
            p.push(
                "uploads.window_bytes",
                format!("{window_bytes} must be at least uploads.ack_bytes ({ack_bytes}), or a client waiting for an acknowledgement would wait forever"),
            );
        }
        let allowed_mimetypes = self.allowed_mimetypes.unwrap_or_default();
        if allowed_mimetypes.iter().any(|m| m.trim().is_empty()) {
            p.push(
                "uploads.allowed_mimetypes",
                "must not contain empty entries",
            );
        }
        let legacy_path = p.path(
            "uploads.legacy_path",
            self.legacy_path.as_deref().unwrap_or("/documents/upload"),
        );
        UploadsConfig {
            spool_dir,
            max_spool_bytes,
            max_concurrent: p.range(
                "uploads.max_concurrent",
                self.max_concurrent,
                256,
                1,
                1_000_000,
            ) as usize,
            max_file_bytes,
            allowed_mimetypes,
            ack_bytes,
            window_bytes,
            resume_ttl: Duration::from_secs(p.range(
                "uploads.resume_ttl_s",
                self.resume_ttl_s,
                3600,
                1,
                30 * 86_400,
            )),
            idle_timeout: Duration::from_secs(p.range(
                "uploads.idle_timeout_s",
                self.idle_timeout_s,
                120,
                1,
                86_400,
            )),
            legacy_path,
            delivery_attempts: p.range(
                "uploads.delivery_attempts",
                self.delivery_attempts,
                3,
                1,
                100,
            ) as u32,
            delivery_timeout: Duration::from_secs(p.range(
                "uploads.delivery_timeout_s",
                self.delivery_timeout_s,
                120,
                1,
                3600,
            )),
        }
    }
}

// ---- shutdown, passthrough and limits (drain, timeouts, descriptor budget) --

/// The drain sequence of CONTRACT 2.2.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// `shutdown.prestop_delay_s`: readiness is off this long before new
    /// stream upgrades are refused and the drain window starts.
    pub prestop_delay: Duration,
    /// `shutdown.drain_s`: the window over which open streams are closed
    /// with 1001 (each at its own random moment); the process exits when
    /// nothing is open, or `drain_s` + 5 s after the window started.
    pub drain: Duration,
}

/// Pass-through traffic (everything that is not the unified stream).
#[derive(Debug, Clone)]
pub struct PassthroughConfig {
    /// `passthrough.response_timeout_s`: no response head this long after
    /// the request body was sent → 504.
    pub response_timeout: Duration,
    /// `passthrough.idle_timeout_s`: a relayed WebSocket or a body that
    /// moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// `passthrough.max_in_flight`: requests forwarded at once (each holds
    /// a backend connection); past it the answer is 503.
    pub max_in_flight: usize,
    /// `passthrough.max_websockets`: relayed WebSocket upgrades at once.
    pub max_websockets: usize,
}

/// Connection caps and slow-peer timeouts of both listeners.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `limits.max_open_files`: the descriptor budget every cap below must
    /// fit in, with [`RESERVED_FILES`] to spare (checked at load).
    pub max_open_files: usize,
    /// `limits.client_connections`: client-listener sockets at once, streams
    /// and relayed WebSockets included; past it new ones get a 503.
    pub client_connections: usize,
    /// `limits.admin_connections`: admin-listener sockets at once.
    pub admin_connections: usize,
    /// `limits.header_timeout_s`: time for a request's headers to arrive
    /// (both listeners; against header-trickling clients).
    pub header_timeout: Duration,
    /// `limits.admin_body_timeout_s`: time for an admin request body to arrive.
    pub admin_body_timeout: Duration,
}

/// Descriptors kept outside every cap: listeners, upstream links (pollers,
/// native links), the flags and overrides files, logs.
pub const RESERVED_FILES: usize = 512;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    prestop_delay_s: Option<u64>,
    drain_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPassthrough {
    response_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    max_in_flight: Option<u64>,
    max_websockets: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_open_files: Option<u64>,
    client_connections: Option<u64>,
    admin_connections: Option<u64>,
    header_timeout_s: Option<u64>,
    admin_body_timeout_s: Option<u64>,
}

/// Validates the three sections, then checks that every cap added up fits
/// the descriptor budget (a process past its descriptor limit cannot even
/// accept a connection to refuse it).
fn lifecycle_sections(
    p: &mut Problems,
    s: &RawShutdown,
    t: &RawPassthrough,
    l: &RawLimits,
    max_streams: usize,
) -> (ShutdownConfig, PassthroughConfig, LimitsConfig) {
    let secs = |p: &mut Problems, key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
        Duration::from_secs(p.range(key, v, default, min, max))
    };
    let shutdown = ShutdownConfig {
        prestop_delay: secs(p, "shutdown.prestop_delay_s", s.prestop_delay_s, 5, 0, 600),
        drain: secs(p, "shutdown.drain_s", s.drain_s, 20, 0, 3600),
    };
    let passthrough = PassthroughConfig {
        response_timeout: secs(
            p,
            "passthrough.response_timeout_s",
            t.response_timeout_s,
            60,
            1,
            3600,
        ),
        idle_timeout: secs(
            p,
            "passthrough.idle_timeout_s",
            t.idle_timeout_s,
            300,
            1,
            86_400,
        ),
        max_in_flight: p.range(
            "passthrough.max_in_flight",
            t.max_in_flight,
            256,
            1,
            1_000_000,
        ) as usize,
        max_websockets: p.range(
            "passthrough.max_websockets",
            t.max_websockets,
            128,
            0,
            1_000_000,
        ) as usize,
    };
    let limits = LimitsConfig {
        max_open_files: p.range(
            "limits.max_open_files",
            l.max_open_files,
            19_500,
            1024,
            100_000_000,
        ) as usize,
        client_connections: p.range(
            "limits.client_connections",
            l.client_connections,
            18_400,
            1,
            100_000_000,
        ) as usize,
        admin_connections: p.range(
            "limits.admin_connections",
            l.admin_connections,
            64,
            1,
            100_000,
        ) as usize,
        header_timeout: secs(p, "limits.header_timeout_s", l.header_timeout_s, 10, 1, 600),
        admin_body_timeout: secs(
            p,
            "limits.admin_body_timeout_s",
            l.admin_body_timeout_s,
            10,
            1,
            600,
        ),
    };
    if limits.client_connections < max_streams {
        p.push(
            "limits.client_connections",
            format!(
                "{} is below stream.max_connections ({max_streams}); every stream is a client connection",
                limits.client_connections
            ),
        );
    }
    // Client sockets (streams and relays included), the backend side of
    // forwarded requests and relayed WebSockets, the admin listener, and
    // the reserve.
    let needed = limits
        .client_connections
        .saturating_add(passthrough.max_in_flight)
        .saturating_add(passthrough.max_websockets)
        .saturating_add(limits.admin_connections)
        .saturating_add(RESERVED_FILES);
    if needed > limits.max_open_files {
        p.push(
            "limits.max_open_files",
            format!(
                "the connection caps need up to {needed} descriptors (limits.client_connections {} + passthrough.max_in_flight {} + passthrough.max_websockets {} + limits.admin_connections {} + {RESERVED_FILES} reserved) but the budget is {}; lower a cap or raise the budget (and the process's descriptor limit)",
                limits.client_connections,
                passthrough.max_in_flight,
                passthrough.max_websockets,
                limits.admin_connections,
                limits.max_open_files
            ),
        );
    }
    (shutdown, passthrough, limits)
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
    fn https_upstream_and_its_ca_file_are_read() {
        let c = parse("upstream: {base_url: \"https://backend:443\"}\n").unwrap();
        assert_eq!(c.upstream.base_url.scheme(), "https");
        assert!(c.upstream.ca_file.is_none());
        let lines = problems("upstream: {ca_file: /nonexistent/ca.pem}\n");
        assert!(lines[0].contains("upstream.ca_file"), "{lines:?}");
    }

    #[test]
    fn auth_keys_have_contract_defaults_and_are_read() {
        let c = parse("").unwrap();
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        assert_eq!(c.auth.jwks_refresh, Duration::from_secs(300));
        assert!(c.auth.require_exp && c.auth.audience.is_empty() && c.auth.issuer.is_none());
        let c = parse(
            "auth: {jwt_secret: s, jwks_url: \"https://idp/keys\", jwks_refresh_s: 60, issuer: idp, audience: edge, leeway_s: 0, require_exp: false}\n",
        )
        .unwrap();
        assert_eq!(c.auth.jwks_url.unwrap().as_str(), "https://idp/keys");
        assert_eq!(c.auth.audience, vec!["edge".to_string()]);
        assert_eq!(c.auth.issuer.as_deref(), Some("idp"));
        assert_eq!(c.auth.leeway, Duration::ZERO);
        assert!(!c.auth.require_exp);
        let c = parse("auth: {audience: [a, b]}\n").unwrap();
        assert_eq!(c.auth.audience, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn bad_auth_keys_are_named() {
        let lines = problems(
            "auth: {jwks_url: \"ftp://idp/keys\", jwks_refresh_s: 0, leeway_s: 99999, audience: [\"\"], issuer: \"\"}\n",
        );
        for key in [
            "auth.jwks_url",
            "auth.jwks_refresh_s",
            "auth.leeway_s",
            "auth.audience",
            "auth.issuer",
        ] {
            assert!(lines.iter().any(|l| l.contains(key)), "{key}: {lines:?}");
        }
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
    fn chat_keys_default_and_reject_bad_values() {
        let c = parse("").unwrap();
        assert_eq!(c.auth.user_claim, "sub");
        assert_eq!(c.auth.name_claim, "name");
        assert_eq!(c.chat.history_path, "/collaboration/chat/history");
        assert_eq!(c.chat.history_limit, 50);
        assert_eq!(c.chat.messages_path, "/collaboration/chat/messages");
        assert_eq!(c.chat.receipts_path, "/collaboration/chat/receipts");
        assert_eq!(c.chat.leave_grace, Duration::from_secs(5));
        assert_eq!(c.chat.receipt_flush, Duration::from_millis(1000));
        assert_eq!(c.chat.max_room_members, 1000);
        assert_eq!(c.chat.max_messages_per_s, 5);
        let c = parse("auth: {user_claim: uid, name_claim: display}\nchat: {history_limit: 10, leave_grace_s: 0}\n").unwrap();
        assert_eq!(
            (c.auth.user_claim.as_str(), c.auth.name_claim.as_str()),
            ("uid", "display")
        );
        assert_eq!(c.chat.history_limit, 10);
        assert_eq!(c.chat.leave_grace, Duration::ZERO);
        let joined = problems(
            "auth: {user_claim: \"\"}\nchat: {messages_path: nope, max_room_members: 0, max_messages_per_s: 0, room_inbox: 1, colour: red}\n",
        )
        .join("\n");
        assert!(joined.contains("colour"), "{joined}");
        let joined = problems(
            "auth: {user_claim: \"\"}\nchat: {messages_path: nope, max_room_members: 0, max_messages_per_s: 0, room_inbox: 1}\n",
        )
        .join("\n");
        for key in [
            "auth.user_claim",
            "chat.messages_path",
            "chat.max_room_members",
            "chat.max_messages_per_s",
            "chat.room_inbox",
        ] {
            assert!(
                joined.contains(&format!("edge.yaml: {key}:")),
                "missing {key} in\n{joined}"
            );
        }
    }

    #[test]
    fn uploads_defaults_and_rejections() {
        let u = parse("").unwrap().uploads;
        assert_eq!(u.max_spool_bytes, 1 << 30);
        assert_eq!(u.max_concurrent, 256);
        assert_eq!(u.max_file_bytes, 104_857_600);
        assert!(u.allowed_mimetypes.is_empty());
        assert_eq!(u.ack_bytes, 262_144);
        assert_eq!(u.window_bytes, 4_194_304);
        assert_eq!(u.resume_ttl, Duration::from_secs(3600));
        assert_eq!(u.idle_timeout, Duration::from_secs(120));
        assert_eq!(u.legacy_path, "/documents/upload");
        assert_eq!(u.delivery_attempts, 3);
        assert!(u.spool_dir.starts_with(std::env::temp_dir()));
        let joined = problems(
            "uploads: {legacy_path: documents, ack_bytes: 8192, window_bytes: 4096, delivery_attempts: 0, allowed_mimetypes: [\"\"]}\n",
        )
        .join("\n");
        for key in [
            "edge.yaml: uploads.legacy_path:",
            "edge.yaml: uploads.window_bytes:",
            "edge.yaml: uploads.delivery_attempts:",
            "edge.yaml: uploads.allowed_mimetypes:",
        ] {
            assert!(joined.contains(key), "missing {key} in\n{joined}");
        }
    }

    #[test]
    fn not_a_mapping_is_rejected() {
        let lines = problems("- a\n- b\n");
        assert!(lines[0].starts_with("edge.yaml:"), "{lines:?}");
    }

    #[test]
    fn lifecycle_defaults_fit_the_descriptor_budget() {
        let c = parse("").unwrap();
        assert_eq!(c.shutdown.prestop_delay, Duration::from_secs(5));
        assert_eq!(c.shutdown.drain, Duration::from_secs(20));
        assert_eq!(c.passthrough.response_timeout, Duration::from_secs(60));
        assert_eq!(c.passthrough.idle_timeout, Duration::from_secs(300));
        assert!(c.limits.max_open_files < 20_000);
        assert!(c.limits.client_connections >= c.stream.max_connections);
    }

    #[test]
    fn caps_past_the_descriptor_budget_are_refused() {
        let lines = problems(
            "limits: {client_connections: 30000}
stream: {max_connections: 100}
",
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("edge.yaml: limits.max_open_files:") && l.contains("30000")),
            "{lines:?}"
        );
        let lines = problems(
            "limits: {client_connections: 10}
stream: {max_connections: 100}
",
        );
        assert!(lines[0].contains("limits.client_connections"), "{lines:?}");
        assert!(
            parse(
                "limits: {max_open_files: 60000, client_connections: 30000}
"
            )
            .is_ok()
        );
    }
}
