//! `realtime-edge simulate`: the simulated backend on its own — the V1
//! long-poll endpoints, the native stream, the write endpoints of the
//! migration guide's walkthrough, the event generator and the `/_sim/`
//! control API — so compose files and newcomers can run `serve` against it
//! with a real config and flags file.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cli_output;
use realtime_edge_sim::{GeneratorConfig, SimConfig, Simulator};

/// The longest lifetime `--token-ttl-s` accepts.
const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;

/// Options of `realtime-edge simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateOptions {
    /// Address to serve the simulated backend on.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// HS256 secret of the tokens the backend accepts (the sidecar's
    /// auth.jwt_secret must be the same).
    #[arg(
        long,
        env = "JWT_SECRET",
        default_value = crate::demo::DEMO_SECRET,
        hide_env_values = true
    )]
    pub(crate) jwt_secret: String,
    /// Claim that carries the org id.
    #[arg(long, default_value = "orgId")]
    pub(crate) org_claim: String,
    /// Events the generator publishes per second (0: only what is written).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub(crate) events_per_second: u32,
    /// Orgs the generated events are spread over (1..=N).
    #[arg(long, default_value_t = 3)]
    pub(crate) orgs: u64,
    /// Properties per org the generated events name (1..=N).
    #[arg(long, default_value_t = 5)]
    pub(crate) properties: u64,
    /// Seconds a V1 long-poll is held when nothing happens.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) hold_s: u64,
    /// Org of the token printed at start-up.
    #[arg(long, default_value_t = 1)]
    pub(crate) token_org: u64,
    /// Lifetime of the printed token, seconds (at most ten years).
    #[arg(long, default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(1..=MAX_TOKEN_TTL_S))]
    pub(crate) token_ttl_s: u64,
    /// Print a token for --token-org and exit without serving.
    #[arg(long)]
    pub(crate) print_token: bool,
}

/// Why the simulated backend could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// The simulated backend did not start.
    #[error("cannot start the simulated backend: {0}")]
    Start(#[source] std::io::Error),
}

/// A token the simulated backend (and a sidecar sharing its secret) accepts.
pub(crate) fn token(opts: &SimulateOptions) -> String {
    realtime_edge::auth::mint_hs256(
        &opts.jwt_secret,
        &opts.org_claim,
        opts.token_org,
        opts.token_ttl_s,
    )
}

/// Serves until `stop` resolves (SIGINT/SIGTERM in the binary).
pub async fn run(
    opts: SimulateOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), SimulateError> {
    if opts.print_token {
        cli_output::line(&token(&opts));
        return Ok(());
    }
    let listener =
        realtime_edge::http_server::bind(opts.listen).map_err(|source| SimulateError::Bind {
            addr: opts.listen,
            source,
        })?;
    let generator = (opts.events_per_second > 0 && opts.orgs > 0).then(|| GeneratorConfig {
        events_per_second: opts.events_per_second,
        orgs: opts.orgs,
        properties: opts.properties,
        services: Vec::new(),
    });
    let sim = Simulator::start(
        SimConfig {
            jwt_secret: opts.jwt_secret.clone(),
            org_claim: opts.org_claim.clone(),
            hold: Duration::from_secs(opts.hold_s),
            generator,
            ..SimConfig::default()
        },
        listener,
    )
    .await
    .map_err(SimulateError::Start)?;
    // Poll `stop` once before announcing anything: the signal handlers it
    // installs are then in place when a caller reads the banner and signals.
    let mut stop = std::pin::pin!(stop);
    let stopped_early = tokio::select! {
        biased;
        () = &mut stop => true,
        () = std::future::ready(()) => false,
    };
    let base = sim.base_url();
    tracing::info!(listen = %sim.addr, "simulated backend serving");
    cli_output::line(&format!("simulated backend listening on {base}"));
    cli_output::line(&format!(
        r#"
  V1 long-polls : GET {base}/finance/realtime/subscribe (and the nine other services)
  native stream : {ws}/v2/realtime/stream
  generator     : {eps} events/s over orgs 1..={orgs}
  control API   : GET {base}/_sim/stats, POST {base}/_sim/publish, POST {base}/_sim/fault

Token for org {org} (HS256; give the sidecar the same secret as auth.jwt_secret or JWT_SECRET):
  {token}

Create a revenue; the event reaches every stream of org {org} subscribed to finance:
  curl -X POST {base}/finance/revenue -H "Authorization: Bearer {token}" -d '{{"amount": 1000, "propertyId": 1}}'
"#,
        ws = base.replacen("http", "ws", 1),
        eps = opts.events_per_second,
        orgs = opts.orgs,
        org = opts.token_org,
        token = token(&opts),
    ));
    if !stopped_early {
        stop.await;
    }
    tracing::info!("simulated backend stopping");
    sim.shutdown().await;
    Ok(())
}
