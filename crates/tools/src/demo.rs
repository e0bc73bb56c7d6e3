//! `realtime-edge demo`: the simulated backend with a live event generator
//! and the sidecar in front of it, on loopback, with instructions to watch.

use std::future::Future;
use std::net::SocketAddr;

use crate::cli_output;
use realtime_edge::app::{Listeners, Sidecar, StartError};
use realtime_edge::config::{Config, ConfigError, EnvSecrets};
use realtime_edge_sim::{GeneratorConfig, SimConfig, Simulator};

/// The JWT secret the demo's backend and sidecar share (and `simulate`'s default).
pub const DEMO_SECRET: &str = "demo-secret";

/// Where and how the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The sidecar's client listener.
    pub listen: SocketAddr,
    /// The sidecar's admin listener.
    pub admin_listen: SocketAddr,
    /// Events the simulated backend publishes per second.
    pub events_per_second: u32,
    /// Orgs the events are spread over (1..=orgs).
    pub orgs: u64,
    /// Flags file to load and watch; `None` runs on defaults and the admin API.
    pub flags_file: Option<std::path::PathBuf>,
}

/// The flags file the demo uses when it is started in a checkout.
pub(crate) const DEMO_FLAGS_FILE: &str = "flags/flags.yaml";

/// The demo's flags file: `flags/flags.yaml` when it exists in the current
/// directory (so the file-based path can be tried), else none.
pub fn default_flags_file() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(DEMO_FLAGS_FILE);
    p.is_file().then_some(p)
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulated backend did not start.
    #[error("cannot start the simulated backend: {0}")]
    Backend(#[source] std::io::Error),
    /// The demo's configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sidecar did not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs the demo until `stop` resolves.
pub async fn run(opts: DemoOptions, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let sim_listener =
        realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into()).map_err(DemoError::Backend)?;
    let sim = Simulator::start(
        SimConfig {
            jwt_secret: DEMO_SECRET.into(),
            generator: Some(GeneratorConfig {
                events_per_second: opts.events_per_second,
                orgs: opts.orgs,
                properties: 5,
                services: Vec::new(),
            }),
            ..SimConfig::default()
        },
        sim_listener,
    )
    .await
    .map_err(DemoError::Backend)?;
    // JSON is valid YAML and quotes any path correctly.
    let flags_file = match &opts.flags_file {
        Some(p) => serde_json::Value::from(p.display().to_string()).to_string(),
        None => "null".into(),
    };
    let yaml = format!(
        "listen: \"{}\"\nadmin_listen: \"{}\"\nupstream: {{base_url: \"{}\"}}\nauth: {{jwt_secret: \"{DEMO_SECRET}\"}}\nflags: {{file: {flags_file}}}\n",
        opts.listen,
        opts.admin_listen,
        sim.base_url()
    );
    let config = Config::from_yaml("<demo>", &yaml, &EnvSecrets::default())?;
    let listeners = Listeners::bind(&config).await?;
    let sidecar = Sidecar::start(config, listeners).await?;
    let token = realtime_edge::auth::mint_hs256(DEMO_SECRET, "orgId", 1, 24 * 3600);
    let stream = format!("ws://{}/v2/realtime/stream", sidecar.client_addr);
    let admin = format!("http://{}", sidecar.admin_addr);
    // Poll `stop` once before announcing anything: the signal handlers it
    // installs are then in place when a caller reads the banner and signals.
    let mut stop = std::pin::pin!(stop);
    let stopped_early = tokio::select! {
        biased;
        () = &mut stop => true,
        () = std::future::ready(()) => false,
    };
    let flags_note = match &opts.flags_file {
        Some(p) => format!(
            "flags file {} (loaded; edits apply live, admin overrides win)",
            p.display()
        ),
        None => format!(
            "none ({DEMO_FLAGS_FILE} not found here): built-in defaults, change them through the admin API"
        ),
    };
    cli_output::line(&format!(
        r#"
realtime-edge demo is running.
  simulated backend : {backend} ({eps} events/s over orgs 1..={orgs}, all ten services)
  sidecar stream    : {stream}
  admin API         : {admin}
  flags             : {flags_note}

Token for org 1 (HS256, secret "{DEMO_SECRET}", valid 24 h):
  {token}

Watch live events (in another terminal):
  cargo run --release -- watch {stream} --token {token} --services finance,staff,tasks

Create a revenue through the sidecar; its revenue_created event shows up in watch:
  curl -X POST http://{http}/finance/revenue -H "Authorization: Bearer {token}" -d '{{"amount": 1000, "propertyId": 1}}'

Flip org 1 to the native stream and back, while watching:
  curl -X POST {admin}/feature-flags -d "REALTIME_STREAMING_V2=true" -d "REALTIME_ROLLOUT_PERCENT=100"
  curl -X POST {admin}/feature-flags -d "REALTIME_STREAMING_V2=false"
  curl {admin}/feature-flags/evaluate?orgId=1
  curl {admin}/v2/realtime/metrics

Ctrl-C stops the demo.
"#,
        backend = sim.base_url(),
        http = sidecar.client_addr,
        eps = opts.events_per_second,
        orgs = opts.orgs,
    ));
    if !stopped_early {
        stop.await;
    }
    sidecar.shutdown().await;
    sim.shutdown().await;
    Ok(())
}
