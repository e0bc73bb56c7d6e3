//! `listen`, `admin_listen` and `tls`: where the sidecar accepts connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `listen`: the client listener.
const LISTEN: &str = "0.0.0.0:8080";
/// `admin_listen`: the admin listener, loopback only by default.
const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `tls.reload_interval_ms`.
const TLS_RELOAD_INTERVAL_MS: u64 = 1000;

/// TLS material for the client listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM) of the first certificate.
    pub key_file: PathBuf,
    /// How often both files are checked for a new pair.
    pub reload_interval: Duration,
}

/// `tls` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    reload_interval_ms: Option<u64>,
}

/// Validates both listener addresses and the TLS pair.
pub(super) fn validate(
    p: &mut Problems,
    listen: Option<&str>,
    admin_listen: Option<&str>,
    tls: RawTls,
) -> (SocketAddr, SocketAddr, Option<TlsConfig>) {
    let listen = p.addr("listen", listen, LISTEN);
    let admin_listen = p.addr("admin_listen", admin_listen, ADMIN_LISTEN);
    if listen == admin_listen && listen.port() != 0 {
        p.push("admin_listen", "must differ from listen");
    }

    let reload_interval = Duration::from_millis(p.range(
        "tls.reload_interval_ms",
        tls.reload_interval_ms,
        TLS_RELOAD_INTERVAL_MS,
        50,
        3_600_000,
    ));
    let tls = match (tls.cert_file, tls.key_file) {
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
    (listen, admin_listen, tls)
}
