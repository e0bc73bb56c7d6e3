//! The client-facing certificate, re-read when its files change.
//!
//! One [`ServerCert`] holds the current certificate chain and key as one
//! snapshot behind an `ArcSwap`; rustls asks it for the snapshot at every
//! handshake, so a swap reaches new connections only — open ones keep the
//! session they negotiated. [`ServerCert::watch`] is the one task that polls
//! both files (by content, which also catches a rewrite within the same
//! mtime second) every `tls.reload_interval_ms` until shutdown. A pair that
//! does not load (half-written, mismatched, garbage) keeps the old snapshot,
//! is logged and counted once per distinct content, and is retried when the
//! files change again.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsConfig;
use crate::metrics as m;

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("tls.{key} {file}: cannot read: {source}")]
    Read {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        file: String,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// A file is not PEM.
    #[error("tls.{key} {file}: not PEM: {source}")]
    Pem {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        file: String,
        /// The parse error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls.cert_file {file}: no certificate found")]
    NoCertificate {
        /// The certificate file.
        file: String,
    },
    /// The key file holds no private key.
    #[error("tls.key_file {file}: no private key found")]
    NoKey {
        /// The key file.
        file: String,
    },
    /// The key is unusable or does not belong to the certificate.
    #[error("tls.key_file {file}: unusable key or not the certificate's key: {source}")]
    Key {
        /// The key file.
        file: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS server configuration: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The certificate the client listener serves, swapped whole on reload.
pub struct ServerCert {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What the files held when last looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint(u64);

impl ServerCert {
    /// Loads the pair named by `files`; a start-up error names the key and file.
    pub fn load(files: &TlsConfig) -> Result<Arc<ServerCert>, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(files)?;
        let key = certified_key(files, &provider, &cert_pem, &key_pem)?;
        Ok(Arc::new(ServerCert {
            files: files.clone(),
            provider,
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// A TLS acceptor that always serves the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, CertError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(CertError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Re-reads the files if their content changed since `seen`; returns the
    /// fingerprint now seen. Keeps the old certificate on any problem.
    fn reload_if_changed(&self, seen: Option<Fingerprint>) -> Option<Fingerprint> {
        let (cert_pem, key_pem) = match read_pair(&self.files) {
            Ok(p) => p,
            Err(e) => {
                // A file briefly missing during an atomic rename is normal;
                // say so once per change of state, not every tick.
                if seen.is_some() {
                    tracing::warn!(error = %e, "TLS certificate files unreadable; keeping the current certificate");
                    ::metrics::counter!(m::TLS_CERT_RELOADS, m::label::RESULT => m::Outcome::Error.as_str()).increment(1);
                }
                return None;
            }
        };
        let now = fingerprint(&cert_pem, &key_pem);
        if seen == Some(now) {
            return seen;
        }
        match certified_key(&self.files, &self.provider, &cert_pem, &key_pem) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                tracing::info!(cert_file = %self.files.cert_file.display(), "TLS certificate reloaded; new connections get it");
                ::metrics::counter!(m::TLS_CERT_RELOADS, m::label::RESULT => m::Outcome::Ok.as_str()).increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate pair refused; keeping the current certificate");
                ::metrics::counter!(m::TLS_CERT_RELOADS, m::label::RESULT => m::Outcome::Error.as_str()).increment(1);
            }
        }
        Some(now)
    }

    /// Polls the files every `interval` until `shutdown` turns true.
    pub(crate) async fn watch(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut seen = read_pair(&self.files)
            .ok()
            .map(|(c, k)| fingerprint(&c, &k));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let files = self.clone();
            // File reads are blocking; keep them off the runtime's workers.
            let Ok(next) = tokio::task::spawn_blocking(move || files.reload_if_changed(seen)).await
            else {
                return;
            };
            seen = next;
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServerCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

fn fingerprint(cert: &[u8], key: &[u8]) -> Fingerprint {
    let mut h = DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    Fingerprint(h.finish())
}

fn read_pair(files: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |key: &'static str, p: &Path| {
        std::fs::read(p).map_err(|source| CertError::Read {
            key,
            file: p.display().to_string(),
            source,
        })
    };
    Ok((
        read("cert_file", &files.cert_file)?,
        read("key_file", &files.key_file)?,
    ))
}

fn certified_key(
    files: &TlsConfig,
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, CertError> {
    let cert_name = files.cert_file.display().to_string();
    let key_name = files.key_file.display().to_string();
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Pem {
            key: "cert_file",
            file: cert_name.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate { file: cert_name });
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| CertError::Pem {
            key: "key_file",
            file: key_name.clone(),
            source,
        })?
        .ok_or_else(|| CertError::NoKey {
            file: key_name.clone(),
        })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|source| CertError::Key {
        file: key_name,
        source,
    })
}
