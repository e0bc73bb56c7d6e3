//! Wiring: builds every part from a validated [`Config`] and runs the two
//! listeners until shutdown. `main` only parses arguments and signals;
//! tests start the real thing on port 0 through [`Sidecar::start`].
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::cluster::ClusterLink;
use crate::cluster::flags::SharedFlags;
use crate::config::Config;
use crate::drain::Drain;
use crate::facade::{CursorKey, Facade};
use crate::flags::{FlagSchema, FlagStore, watcher};
use crate::gateway::{Gateway, passthrough::Passthrough};
use crate::http_server::{self, Lifecycle, ServerLimits};
use crate::hub::{HubContext, HubRegistry};
use crate::metrics::{self as m, Stats};
use crate::upstream::Upstream;

/// Overloaded streams being closed with 1013 at the same time.
const REFUSALS_AT_ONCE: usize = 512;

mod start;

pub use start::StartError;
use start::{cluster_link, load_tls, open_files_limit, upstream_tls, verifier};

/// The two bound listeners.
pub struct Listeners {
    pub(crate) client: TcpListener,
    pub(crate) admin: TcpListener,
}

impl Listeners {
    /// Binds the client and admin listeners of the configuration (before
    /// the sidecar starts, so a test or `main` knows the addresses).
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
    /// Where clients connect (the stream and pass-through).
    pub client_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The flag store (with the cluster's version in cluster mode).
    pub flags: Arc<FlagStore>,
    /// The replica's link to the cluster (`cluster.redis_url` set).
    pub cluster: Option<Arc<ClusterLink>>,
    drain: Arc<Drain>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sidecar {
    /// Checks what must hold before serving (also used by `check`).
    pub fn preflight(config: &Config) -> Result<(), StartError> {
        match Self::preflight_problems(config).into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem [`Sidecar::preflight`] would refuse to start on, not
    /// just the first: `check` reports them all in one run.
    pub fn preflight_problems(config: &Config) -> Vec<StartError> {
        let mut problems = Vec::new();
        if !config.admin_listen.ip().is_loopback() && config.auth.admin_token.is_none() {
            problems.push(StartError::UnprotectedAdmin {
                file: config.source.clone(),
                addr: config.admin_listen,
            });
        }
        if let Err(e) = verifier(config) {
            problems.push(e);
        }
        if let Some(tls) = &config.tls
            && let Err(e) = load_tls(&config.source, tls)
        {
            problems.push(e);
        }
        if let Err(e) = upstream_tls(config) {
            problems.push(e);
        }
        if let Err(e) = cluster_link(config) {
            problems.push(e);
        }
        problems
    }

    /// Builds the flag store with environment flags and persisted overrides.
    pub fn flag_store(config: &Config) -> Result<Arc<FlagStore>, StartError> {
        let schema = FlagSchema::new(config.services.iter().map(|s| s.name.clone()).collect());
        let env = schema
            .parse_env(|k| std::env::var(k).ok())
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

    /// Starts serving on bound listeners: validates what the configuration
    /// names, loads keys, certificates and flags, and spawns every task.
    pub async fn start(config: Config, listeners: Listeners) -> Result<Sidecar, StartError> {
        Self::preflight(&config)?;
        let config = Arc::new(config);
        let prometheus = m::install_prometheus();
        let verifier = Arc::new(verifier(&config)?);
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
        let server_cert = match &config.tls {
            Some(t) => Some(load_tls(&config.source, t)?),
            None => None,
        };
        let tls = match &server_cert {
            Some(cert) => Some(cert.acceptor().map_err(|source| StartError::Tls {
                file: config.source.clone(),
                source,
            })?),
            None => None,
        };
        let upstream_tls = upstream_tls(&config)?;
        let stats = Arc::new(Stats::for_services(
            config.services.iter().map(|s| s.name.as_str()),
        ));
        let drain = Drain::new(config.shutdown.clone());
        let shutdown = drain.stop_signal();
        let cluster = cluster_link(&config)?;
        let upstream = Upstream::new(config.clone(), stats.clone(), upstream_tls.clone());
        let registry = HubRegistry::new(HubContext {
            config: config.clone(),
            flags: flags.clone(),
            stats: stats.clone(),
            upstream: Arc::new(upstream),
            shutdown: shutdown.clone(),
            cluster: cluster.clone(),
        });
        let facade = Arc::new(Facade::new(
            config.clone(),
            registry.clone(),
            verifier.clone(),
            flags.clone(),
            CursorKey::random(crate::clock::unix_millis().max(0) as u64),
        ));
        let uploads = crate::uploads::Uploads::new(
            config.clone(),
            verifier.clone(),
            flags.clone(),
            shutdown.clone(),
        )
        .await?;
        let uploads_sweeper = uploads.spawn_sweeper();
        let gateway = Arc::new(Gateway {
            registry: registry.clone(),
            verifier: verifier.clone(),
            facade,
            passthrough: Passthrough::new(
                config.upstream.base_url.clone(),
                config.passthrough.clone(),
                drain.clone(),
                &upstream_tls,
            ),
            stream_slots: Arc::new(Semaphore::new(config.stream.max_connections)),
            refusal_slots: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            drain: drain.clone(),
            tls: tls.is_some(),
            uploads,
            chat: crate::chat::ChatService::new(
                config.clone(),
                flags.clone(),
                stats.clone(),
                shutdown.clone(),
                cluster.clone(),
            ),
        });
        let ready = Arc::new(AtomicBool::new(false));
        let shared_flags = cluster
            .as_ref()
            .map(|link| SharedFlags::new(link.clone(), flags.clone()));
        let admin = Arc::new(Admin {
            config: config.clone(),
            flags: flags.clone(),
            stats: stats.clone(),
            registry,
            prometheus,
            ready: ready.clone(),
            drain: drain.clone(),
            verifier: verifier.clone(),
            shared_flags: shared_flags.clone(),
        });
        let local = |l: &TcpListener, addr: SocketAddr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { addr, source })
        };
        let client_addr = local(&listeners.client, config.listen)?;
        let admin_addr = local(&listeners.admin, config.admin_listen)?;

        let mut tasks = vec![uploads_sweeper];
        if let Some(link) = &cluster {
            tasks.push(tokio::spawn(link.clone().run_heartbeat(shutdown.clone())));
        }
        if let Some(shared) = shared_flags {
            tasks.push(tokio::spawn(shared.run(shutdown.clone())));
        }
        let client_limits = ServerLimits {
            max_connections: config.limits.client_connections,
            header_timeout: config.limits.header_timeout,
        };
        let front = gateway
            .passthrough
            .raw_front(gateway.own_paths(), tls.is_some());
        tasks.push(tokio::spawn(http_server::serve_with(
            listeners.client,
            tls,
            client_limits,
            move |req, peer| gateway.clone().handle(req, peer),
            front,
            Lifecycle {
                wind_down: drain.wind_down_signal(),
                stop: drain.stop_signal(),
                tracker: drain.tracker().clone(),
            },
        )));
        // The admin listener serves through the drain (readiness, metrics)
        // and stops last.
        let admin_limits = ServerLimits {
            max_connections: config.limits.admin_connections,
            header_timeout: config.limits.header_timeout,
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
        if let Some(limit) = open_files_limit()
            && limit < config.limits.max_open_files as u64
        {
            tracing::warn!(file = %config.source, limit, budget = config.limits.max_open_files,
                "the process may open fewer files than limits.max_open_files: raise its descriptor limit (ulimit -n, LimitNOFILE) or lower the caps, or accept() will fail under load");
        }
        if !verifier.has_keys() {
            tracing::warn!(file = %config.source, "no auth.jwt_secret, JWT_SECRET, auth.jwt_public_key_file or auth.jwks_url: every stream will be refused with 401 (pass-through still works)");
        }
        tasks.extend(verifier.start(shutdown.clone()));
        if let (Some(cert), Some(files)) = (server_cert, &config.tls) {
            tasks.push(tokio::spawn(
                cert.watch(files.reload_interval, shutdown.clone()),
            ));
        }
        ready.store(true, Ordering::Release);
        tracing::info!(listen = %client_addr, admin = %admin_addr, tls = config.tls.is_some(), upstream = %config.upstream.base_url,
            flags_version = flags.current().version, "realtime-edge serving");
        Ok(Sidecar {
            client_addr,
            admin_addr,
            flags,
            cluster,
            drain,
            tasks,
        })
    }

    /// The shutdown controller (CONTRACT 2.2), e.g. to start a drain.
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// Runs until a drain (started by `Drain::begin`, a signal in `main`
    /// or `POST /drain`) has finished, then stops every loop.
    pub async fn run(self) {
        self.drain.stopped().await;
        for t in self.tasks {
            let _ = tokio::time::timeout(LISTENER_STOP, t).await;
        }
    }

    /// Closes every stream with 1001 now, lets requests in flight finish
    /// (at most `crate::drain::FINAL_GRACE`), then stops.
    pub async fn shutdown(self) {
        self.drain.begin_now();
        self.run().await;
    }
}

/// How long a listener or the flags watcher may take to end after the stop.
const LISTENER_STOP: Duration = Duration::from_secs(2);
