//! Start-up's fallible steps (TLS, keys, the cluster link, the descriptor
//! limit) and [`StartError`], the reasons the sidecar refuses to start,
//! each naming the config file and key at fault.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::rustls;

use crate::auth::Verifier;
use crate::cluster::{ClusterError, ClusterLink};
use crate::config::{Config, TlsConfig};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin API would listen beyond loopback without a token.
    #[error(
        "{file}: admin_listen: {addr} is not a loopback address and no admin token is set (auth.admin_token or ADMIN_TOKEN); refusing to expose the admin API unauthenticated"
    )]
    UnprotectedAdmin {
        /// The configuration file.
        file: String,
        /// The `admin_listen` address.
        addr: SocketAddr,
    },
    /// A verification key file of `auth` could not be used.
    #[error("{file}: {source}")]
    Key {
        /// The configuration file.
        file: String,
        /// What was wrong with the key.
        #[source]
        source: crate::auth::KeyError,
    },
    /// The flags environment or overrides file could not be used.
    #[error("{file}: flags: {message}")]
    Flags {
        /// The configuration file.
        file: String,
        /// What was wrong.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// `cluster.redis_url` could not be used.
    #[error("{file}: {source}")]
    Cluster {
        /// The configuration file.
        file: String,
        /// What redis-rs found wrong.
        #[source]
        source: ClusterError,
    },
    /// The client-facing certificate or key could not be used.
    #[error("{file}: {source}")]
    Tls {
        /// The configuration file.
        file: String,
        /// What was wrong with them.
        #[source]
        source: crate::tls::CertError,
    },
    /// The TLS settings towards the backend could not be used.
    #[error("{file}: upstream TLS: {source}")]
    UpstreamTls {
        /// The configuration file.
        file: String,
        /// What was wrong with them.
        #[source]
        source: crate::tls::TlsClientError,
    },
    /// The uploads spool directory could not be prepared.
    #[error(transparent)]
    Uploads(#[from] crate::uploads::SpoolDirError),
}

/// The soft limit on open files, where the platform says (Linux).
pub(super) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn load_tls(
    file: &str,
    tls: &TlsConfig,
) -> Result<Arc<crate::tls::ServerCert>, StartError> {
    crate::tls::ServerCert::load(tls).map_err(|source| StartError::Tls {
        file: file.to_string(),
        source,
    })
}

pub(super) fn verifier(config: &Config) -> Result<Verifier, StartError> {
    Verifier::new(&config.auth).map_err(|source| StartError::Key {
        file: config.source.clone(),
        source,
    })
}

pub(super) fn upstream_tls(config: &Config) -> Result<Arc<rustls::ClientConfig>, StartError> {
    crate::tls::client::upstream_config(&config.upstream).map_err(|source| {
        StartError::UpstreamTls {
            file: config.source.clone(),
            source,
        }
    })
}

/// The cluster link when `cluster.redis_url` is set; it connects lazily.
pub(super) fn cluster_link(config: &Config) -> Result<Option<Arc<ClusterLink>>, StartError> {
    let Some(url) = &config.cluster.redis_url else {
        return Ok(None);
    };
    ClusterLink::new(&config.cluster, url)
        .map(Some)
        .map_err(|source| StartError::Cluster {
            file: config.source.clone(),
            source,
        })
}
