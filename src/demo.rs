//! `realtime-edge demo`: the simulated backend with a live event generator
//! and the sidecar in front of it, on loopback, with instructions to watch.

use std::future::Future;
use std::net::SocketAddr;

use crate::app::{Listeners, Sidecar, StartError};
use crate::config::{Config, ConfigError, EnvSecrets};
use crate::sim::{GeneratorConfig, SimConfig, Simulator};

pub const DEMO_SECRET: &str = "demo-secret";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub events_per_second: u32,
    pub orgs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the simulated backend: {0}")]
    Backend(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs the demo until `stop` resolves.
pub async fn run(opts: DemoOptions, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let sim_listener =
        crate::http_server::bind(([127, 0, 0, 1], 0).into()).map_err(DemoError::Backend)?;
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
    let yaml = format!(
        "listen: \"{}\"\nadmin_listen: \"{}\"\nupstream: {{base_url: \"{}\"}}\nauth: {{jwt_secret: \"{DEMO_SECRET}\"}}\nflags: {{file: null}}\n",
        opts.listen,
        opts.admin_listen,
        sim.base_url()
    );
    let config = Config::from_yaml("<demo>", &yaml, &EnvSecrets::default())?;
    let listeners = Listeners::bind(&config).await?;
    let sidecar = Sidecar::start(config, listeners).await?;
    let token = crate::auth::mint_hs256(DEMO_SECRET, "orgId", 1, 24 * 3600);
    let stream = format!("ws://{}/v2/realtime/stream", sidecar.client_addr);
    let admin = format!("http://{}", sidecar.admin_addr);
    println!(
        r#"
realtime-edge demo is running.
  simulated backend : {backend} ({eps} events/s over orgs 1..={orgs}, all ten services)
  sidecar stream    : {stream}
  admin API         : {admin}

Token for org 1 (HS256, secret "{DEMO_SECRET}", valid 24 h):
  {token}

Watch live events (in another terminal):
  cargo run --release -- watch {stream} --token {token} --services finance,staff,tasks

Flip org 1 to the native stream and back, while watching:
  curl -X POST {admin}/feature-flags -d "REALTIME_STREAMING_V2=true" -d "REALTIME_ROLLOUT_PERCENT=100"
  curl -X POST {admin}/feature-flags -d "REALTIME_STREAMING_V2=false"
  curl {admin}/feature-flags/evaluate?orgId=1
  curl {admin}/v2/realtime/metrics

Ctrl-C stops the demo.
"#,
        backend = sim.base_url(),
        eps = opts.events_per_second,
        orgs = opts.orgs,
    );
    stop.await;
    sidecar.shutdown().await;
    sim.shutdown().await;
    Ok(())
}
