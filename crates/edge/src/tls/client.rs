//! Outgoing TLS: certificates are verified against the system's roots (read
//! by `rustls-native-certs`, which also honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`), or only against a CA file when one is configured. There
//! is no way to turn verification off.
//!
//! `rustls-native-certs` rather than the compiled-in Mozilla bundle
//! (`webpki-roots`): the contract asks for the system's roots, and a company
//! that runs its backend behind an internal CA installs that CA in the system
//! store, which a compiled-in bundle would ignore.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The connector of every outgoing HTTP client: `http://` plain, `https://` verified.
pub(crate) type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why the client TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// The CA file could not be read.
    #[error("{file}: cannot read CA file: {source}")]
    ReadCa {
        /// The CA file.
        file: String,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The CA file is not PEM.
    #[error("{file}: not a PEM certificate file: {source}")]
    ParseCa {
        /// The CA file.
        file: String,
        /// The parse error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no certificate rustls accepts.
    #[error("{file}: no usable CA certificate in the file")]
    EmptyCa {
        /// The CA file.
        file: String,
    },
    /// No CA file is set and the system has no root certificates.
    #[error(
        "no system root certificates found (install ca-certificates or set SSL_CERT_FILE; for the backend, upstream.ca_file also works)"
    )]
    NoSystemRoots,
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A client configuration trusting `ca_file` alone when given, else the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsClientError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let file = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsClientError::ReadCa {
                file: file.clone(),
                source,
            })?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|source| TlsClientError::ParseCa {
                    file: file.clone(),
                    source,
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsClientError::EmptyCa { file });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "a system root certificate source could not be read");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsClientError::NoSystemRoots);
            }
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsClientError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configuration for the backend: `upstream.ca_file` or the system
/// roots when the backend may be reached over TLS; an `http://` backend
/// without a CA file needs no trust store (and a machine without system
/// roots can still run it).
pub(crate) fn upstream_config(
    upstream: &crate::config::UpstreamConfig,
) -> Result<Arc<ClientConfig>, TlsClientError> {
    if upstream.base_url.scheme() == "https" || upstream.ca_file.is_some() {
        client_config(upstream.ca_file.as_deref())
    } else {
        no_roots_config()
    }
}

/// A client configuration that trusts nothing: for clients that only ever
/// speak plain `http://` (any `https://` attempt fails verification).
pub(crate) fn no_roots_config() -> Result<Arc<ClientConfig>, TlsClientError> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsClientError::Rustls)?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP/1 connector that speaks TLS to `https://` URLs with `tls`.
pub(crate) fn https_connector(tls: &ClientConfig, connect_timeout: Duration) -> HttpsConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // The TLS layer decides per URL scheme; the TCP layer must accept both.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_problems_name_the_file() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("edge-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(matches!(err, TlsClientError::EmptyCa { .. }), "{err}");
    }
}
