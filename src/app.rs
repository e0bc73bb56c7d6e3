//! Wiring: builds every part from a validated [`Config`] and runs the two
//! listeners until shutdown. `main` only parses arguments and signals;
//! tests start the real thing on port 0 through [`Sidecar::start`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::admin::Admin;
use crate::auth::Verifier;
use crate::config::{Config, TlsConfig};
use crate::flags::{FlagSchema, FlagStore, watcher};
use crate::gateway::{Gateway, passthrough::Passthrough};
use crate::http_server::{self, ServerLimits};
use crate::hub::{HubContext, HubRegistry};
use crate::metrics::{self as m, Stats};
use crate::upstream::Upstream;

/// Overloaded streams being closed with 1013 at the same time.
const REFUSALS_AT_ONCE: usize = 512;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{file}: admin_listen: {addr} is not a loopback address and no admin token is set (auth.admin_token or ADMIN_TOKEN); refusing to expose the admin API unauthenticated"
    )]
    UnprotectedAdmin { file: String, addr: SocketAddr },
    #[error(transparent)]
    Key(#[from] crate::auth::KeyError),
    #[error("{file}: flags: {message}")]
    Flags { file: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: tls: {message}")]
    Tls { file: String, message: String },
}

/// The two bound listeners.
pub struct Listeners {
    pub client: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |addr: SocketAddr| async move {
            http_server::bind(addr).map_err(|source| StartError::Bind { addr, source })
        };
        Ok(Listeners {
            client: bind(config.listen).await?,
            admin: bind(config.admin_listen).await?,
        })
    }
}

/// A running sidecar.
pub struct Sidecar {
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub flags: Arc<FlagStore>,
    pub stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sidecar {
    /// Checks what must hold before serving (also used by `check`).
    pub fn preflight(config: &Config) -> Result<(), StartError> {
        if !config.admin_listen.ip().is_loopback() && config.auth.admin_token.is_none() {
            return Err(StartError::UnprotectedAdmin {
                file: config.source.clone(),
                addr: config.admin_listen,
            });
        }
        Verifier::new(&config.auth)?;
        if let Some(tls) = &config.tls {
            load_tls(&config.source, tls)?;
        }
        Ok(())
    }

    /// Builds the flag store with environment flags and persisted overrides.
    pub fn flag_store(config: &Config) -> Result<Arc<FlagStore>, StartError> {
        let schema = FlagSchema::new(config.services.iter().map(|s| s.name.clone()).collect());
        let env = schema
            .from_env(|k| std::env::var(k).ok())
            .map_err(|p| StartError::Flags {
                file: config.source.clone(),
                message: p.join("; "),
            })?;
        let store = FlagStore::new(schema, env, config.flags.overrides_file.clone());
        store
            .load_overrides()
            .map_err(|message| StartError::Flags {
                file: config.source.clone(),
                message,
            })?;
        Ok(store)
    }

    pub async fn start(config: Config, listeners: Listeners) -> Result<Sidecar, StartError> {
        Self::preflight(&config)?;
        let config = Arc::new(config);
        let prometheus = m::install_prometheus();
        let verifier = Arc::new(Verifier::new(&config.auth)?);
        let flags = Self::flag_store(&config)?;
        let mut flags_file_state = None;
        if let Some(file) = &config.flags.file {
            let (state, result) = watcher::load_initial(&flags, file).await;
            if let Err(e) = result {
                // A broken flags file must not stop the sidecar: it runs on
                // the last good layers and shows the problem in lastError.
                tracing::error!(error = %e, "flags file rejected at start-up");
            }
            flags_file_state = Some((file.clone(), state));
        }
        ::metrics::gauge!(m::FLAGS_VERSION).set(flags.current().version as f64);
        let tls = match &config.tls {
            Some(t) => Some(load_tls(&config.source, t)?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let (shutdown_tx, shutdown) = watch::channel(false);
        let upstream = Upstream::new(config.clone(), stats.clone());
        let registry = HubRegistry::new(HubContext {
            config: config.clone(),
            flags: flags.clone(),
            stats: stats.clone(),
            upstream: Arc::new(upstream),
            shutdown: shutdown.clone(),
        });
        let gateway = Arc::new(Gateway {
            registry: registry.clone(),
            verifier,
            passthrough: Passthrough::new(config.upstream.base_url.clone()),
            stream_slots: Arc::new(Semaphore::new(config.stream.max_connections)),
            refusal_slots: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            shutdown: shutdown.clone(),
            tls: tls.is_some(),
            chat: crate::chat::ChatService::new(
                config.clone(),
                flags.clone(),
                stats.clone(),
                shutdown.clone(),
            ),
        });
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Arc::new(Admin {
            config: config.clone(),
            flags: flags.clone(),
            stats: stats.clone(),
            registry,
            prometheus,
            ready: ready.clone(),
        });
        let local = |l: &TcpListener, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { addr, source })
        };
        let client_addr = local(&listeners.client, config.listen)?;
        let admin_addr = local(&listeners.admin, config.admin_listen)?;

        let mut tasks = Vec::new();
        let client_limits = ServerLimits {
            max_connections: config.stream.max_connections + 1024,
            header_timeout: Duration::from_secs(30),
        };
        tasks.push(tokio::spawn(http_server::serve(
            listeners.client,
            tls,
            client_limits,
            move |req, peer| gateway.clone().handle(req, peer),
            shutdown.clone(),
        )));
        let admin_limits = ServerLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
        };
        tasks.push(tokio::spawn(http_server::serve(
            listeners.admin,
            None,
            admin_limits,
            move |req, peer| admin.clone().handle(req, peer),
            shutdown.clone(),
        )));
        if let Some((file, state)) = flags_file_state {
            tasks.push(tokio::spawn(watcher::watch_file(
                flags.clone(),
                file,
                state,
                shutdown.clone(),
            )));
        }
        if config.auth.jwt_secret.is_none() && config.auth.jwt_public_key_file.is_none() {
            tracing::warn!(file = %config.source, "no auth.jwt_secret, JWT_SECRET or auth.jwt_public_key_file: every stream will be refused with 401 (pass-through still works)");
        }
        ready.store(true, Ordering::Release);
        tracing::info!(listen = %client_addr, admin = %admin_addr, tls = config.tls.is_some(), upstream = %config.upstream.base_url,
            flags_version = flags.current().version, "realtime-edge serving");
        Ok(Sidecar {
            client_addr,
            admin_addr,
            flags,
            stats,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// Stops accepting, closes streams with 1001 and waits for the listeners.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        // Give sessions a moment to send their close frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn load_tls(file: &str, tls: &TlsConfig) -> Result<TlsAcceptor, StartError> {
    let err = |message: String| StartError::Tls {
        file: file.to_string(),
        message,
    };
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| err(format!("cannot read {}: {e}", p.display())));
    let cert_pem = read(&tls.cert_file)?;
    let key_pem = read(&tls.key_file)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("cert_file {}: {e}", tls.cert_file.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "cert_file {}: no certificate found",
            tls.cert_file.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err(format!("key_file {}: {e}", tls.key_file.display())))?
        .ok_or_else(|| {
            err(format!(
                "key_file {}: no private key found",
                tls.key_file.display()
            ))
        })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| err(format!("certificate and key do not match: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
