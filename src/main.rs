//! The `realtime-edge` binary: parses arguments, sets up logging and
//! signals, and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use realtime_edge::config::{CONFIG_ENV, Config, EnvSecrets};
use realtime_edge::{Listeners, Sidecar, admin_client, bench, cli_output, demo, simulate, watch};

#[derive(Parser)]
#[command(
    name = "realtime-edge",
    version,
    about = "Edge-proxy sidecar: one WebSocket per browser, served from shared V1 long-pollers or the native stream, switched live by feature flags."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Serve {
        /// Configuration file (YAML); also REALTIME_EDGE_CONFIG.
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
    },
    /// Run the sidecar against a built-in simulated backend producing live events.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Events the simulated backend publishes per second.
        #[arg(long, default_value_t = 20)]
        events_per_second: u32,
        /// Orgs the events are spread over (1..=N).
        #[arg(long, default_value_t = 3)]
        orgs: u64,
        /// Flags file to load and watch (default: flags/flags.yaml when present).
        #[arg(long)]
        flags_file: Option<PathBuf>,
    },
    /// Run the simulated backend alone (V1 endpoints, native stream, writes, event generator) until SIGINT/SIGTERM.
    Simulate(simulate::SimulateOptions),
    /// Validate the configuration and flags files; exit non-zero on any problem.
    Check {
        #[arg(long, env = CONFIG_ENV)]
        config: Option<PathBuf>,
    },
    /// Read and change feature flags through the admin API.
    Flags {
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
        admin: String,
        /// Admin token (or ADMIN_TOKEN).
        #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: FlagsAction,
    },
    /// Start the shutdown sequence through the admin API (a Kubernetes preStop hook).
    Drain {
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin: String,
        /// Admin token (or ADMIN_TOKEN).
        #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Then wait up to this many seconds for the sidecar to exit.
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
    /// Connect to a stream and print what arrives.
    Watch {
        /// Stream URL, e.g. ws://127.0.0.1:8080/v2/realtime/stream
        url: String,
        /// Bearer token.
        #[arg(long, hide_env_values = true, env = "REALTIME_TOKEN")]
        token: String,
        /// Services to subscribe to, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "finance")]
        services: Vec<String>,
        /// Only events of this propertyId.
        #[arg(long)]
        property: Option<u64>,
        /// Resume after this position.
        #[arg(long)]
        last_seq: Option<u64>,
        /// Exit after this many event messages.
        #[arg(long)]
        count: Option<u64>,
        /// Print raw JSON messages.
        #[arg(long)]
        raw: bool,
    },
    /// Measure upstream load, latency, memory, fan-out and flag-flip propagation (docs/benchmarks.md).
    Bench {
        /// Stream clients for the load, latency and fan-out runs.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Orgs the clients are spread over.
        #[arg(long, default_value_t = 10)]
        orgs: u64,
        /// Published events per second for the latency run.
        #[arg(long, default_value_t = 1000)]
        events_per_second: u32,
        /// Seconds each measurement lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Idle connection counts for the memory run.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
        memory_steps: Vec<usize>,
        /// Orgs in the flag-flip run.
        #[arg(long, default_value_t = 1000)]
        flip_orgs: usize,
        /// Publish rates for the fan-out run.
        #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000")]
        fanout_rates: Vec<u32>,
        /// Scenarios to run: any of a (upstream load), b (latency), c (memory), d (fan-out), e (flag flip), f (V1 facade), r (chat room), u (uploads), x (events lost across flips), y (clients that stopped reading), z (drain); r, u and x-z are not in the default.
        #[arg(long, default_value = "abcdef")]
        scenarios: String,
        /// Members of the chat room (scenario f).
        #[arg(long, default_value_t = 1000)]
        chat_members: usize,
        /// Runs of the scenarios; each figure is printed as the median and min-max over them.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
        runs: u64,
        /// Flag flips of scenario x (lost and duplicated events across flips).
        #[arg(long, default_value_t = 1000)]
        flips: usize,
        /// Clients that stop reading in scenario y (peak RSS).
        #[arg(long, default_value_t = 200)]
        stalled_clients: usize,
        /// Streams drained in scenario z.
        #[arg(long, default_value_t = 10_000)]
        drain_clients: usize,
    },
    /// A benchmark client process (started by `bench`).
    #[command(hide = true)]
    BenchWorker(bench::worker::WorkerOptions),
    /// One WebSocket connection's echo round-trip time (bench/compare-nginx.sh).
    #[command(hide = true)]
    BenchWsRtt(bench::ws_rtt::RttOptions),
}

#[derive(Subcommand)]
enum FlagsAction {
    /// Show the flags, their sources and version.
    Get,
    /// Set overrides: KEY=VALUE...
    Set {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Drop an override.
    Unset { key: String },
    /// Show the decision for an org.
    Evaluate { org: u64 },
    /// Show recent flag changes.
    History,
}

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // These crates trace request headers at debug level; a bearer token must
    // never reach a log line, whatever RUST_LOG says.
    for quiet in [
        "tungstenite=info",
        "tokio_tungstenite=info",
        "hyper=info",
        "hyper_util=info",
    ] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// SIGTERM and SIGINT, each delivery counted (a drain is started by the
/// first and cut short by the second).
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves until a drain ends: the first signal (or `POST /drain`) starts
/// it, a second signal exits at once.
async fn serve(config: Config) -> anyhow::Result<()> {
    // Installed before serving, so a signal is never lost to the default handler.
    let mut signals = StopSignals::install().context("cannot install signal handlers")?;
    let listeners = Listeners::bind(&config).await?;
    let sidecar = Sidecar::start(config, listeners).await?;
    let drain = sidecar.drain().clone();
    let run = sidecar.run();
    tokio::pin!(run);
    let mut signalled = false;
    loop {
        tokio::select! {
            _ = &mut run => return Ok(()),
            _ = signals.next() => {
                if signalled {
                    tracing::warn!("second signal: exiting without finishing the drain");
                    std::process::exit(0);
                }
                signalled = true;
                tracing::info!("signal received: draining");
                drain.begin();
            }
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!(e.lines().join("\n"))),
        None => Ok(Config::defaults(&EnvSecrets::from_process())),
    }
}

/// `check`: the start-up validation `serve` runs (the configuration, the
/// key and certificate files it names, the flags environment, the overrides
/// and flags files), with every problem of all of them reported in one run.
fn check(path: Option<&PathBuf>) -> ExitCode {
    let (config, config_error) = match path {
        Some(p) => Config::load_checked(p),
        None => (Some(Config::defaults(&EnvSecrets::from_process())), None),
    };
    let mut problems = config_error.map(|e| e.lines()).unwrap_or_default();
    let Some(config) = config else {
        problems.push(
            "the flags and key files were not checked: the configuration could not be read".into(),
        );
        return report_problems(&problems);
    };
    problems.extend(
        Sidecar::preflight_problems(&config)
            .iter()
            .map(ToString::to_string),
    );
    let mut flags_file_missing = false;
    match Sidecar::flag_store(&config) {
        Err(e) => problems.push(e.to_string()),
        Ok(store) => {
            if let Some(file) = &config.flags.file {
                use realtime_edge::flags::watcher::{FileState, read_flags_file};
                match read_flags_file(file) {
                    FileState::Text(text) => {
                        if let Err(p) = store.schema().parse_yaml_file(&text) {
                            problems
                                .extend(p.into_iter().map(|x| format!("{}: {x}", file.display())));
                        }
                    }
                    // Serving without the file is allowed: defaults apply
                    // (lastError says so) until the file appears.
                    FileState::Missing => flags_file_missing = true,
                    FileState::Unreadable(why) => {
                        problems.push(format!("{}: {why}", file.display()))
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return report_problems(&problems);
    }
    if config.auth.jwt_secret.is_none()
        && config.auth.jwt_public_key_file.is_none()
        && config.auth.jwks_url.is_none()
    {
        eprintln!(
            "warning: {}: auth: no jwt_secret (or JWT_SECRET), jwt_public_key_file or jwks_url; every stream would be refused with 401",
            config.source
        );
    }
    let flags = match &config.flags.file {
        None => "none".to_string(),
        Some(f) if flags_file_missing => format!("{} (missing)", f.display()),
        Some(f) => f.display().to_string(),
    };
    let summary = format!(
        "{}: listen {}, admin {}, upstream {}, {} services, flags file {}",
        config.source,
        config.listen,
        config.admin_listen,
        config.upstream.base_url,
        config.services.len(),
        flags
    );
    if let Some(file) = config.flags.file.as_ref().filter(|_| flags_file_missing) {
        eprintln!(
            "warning: {}: flags.file {}: no such file; serve starts without it: defaults, environment and overrides apply until it appears",
            config.source,
            file.display()
        );
        cli_output::line(&format!("defaults apply: {summary}"));
    } else {
        cli_output::line(&format!("ok: {summary}"));
    }
    ExitCode::SUCCESS
}

/// Prints every problem, one a line, and fails.
fn report_problems(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("{p}");
    }
    ExitCode::FAILURE
}

async fn flags_command(
    admin: &str,
    token: Option<&str>,
    action: FlagsAction,
) -> anyhow::Result<()> {
    use http::Method;
    let (method, path, form) = match action {
        FlagsAction::Get => (Method::GET, "/feature-flags".to_string(), None),
        FlagsAction::Set { pairs } => (
            Method::POST,
            "/feature-flags".to_string(),
            Some(admin_client::form_body(&pairs).map_err(anyhow::Error::msg)?),
        ),
        FlagsAction::Unset { key } => (Method::DELETE, format!("/feature-flags/{key}"), None),
        FlagsAction::Evaluate { org } => (
            Method::GET,
            format!("/feature-flags/evaluate?orgId={org}"),
            None,
        ),
        FlagsAction::History => (Method::GET, "/feature-flags/history".to_string(), None),
    };
    let out = admin_client::request(admin, token, method, &path, form).await?;
    cli_output::line(&out);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let command = cli.command.unwrap_or(Command::Serve {
        config: std::env::var_os(CONFIG_ENV).map(PathBuf::from),
    });
    if let Command::Check { config } = &command {
        return check(config.as_ref());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        match command {
            Command::Serve { config } => serve(load_config(config.as_ref())?).await,
            Command::Demo {
                listen,
                admin_listen,
                events_per_second,
                orgs,
                flags_file,
            } => {
                let opts = demo::DemoOptions {
                    listen,
                    admin_listen,
                    events_per_second,
                    orgs,
                    flags_file: flags_file.or_else(demo::default_flags_file),
                };
                demo::run(opts, shutdown_signal()).await.context("demo")
            }
            Command::Flags {
                admin,
                token,
                action,
            } => flags_command(&admin, token.as_deref(), action).await,
            Command::Watch {
                url,
                token,
                services,
                property,
                last_seq,
                count,
                raw,
            } => {
                let opts = watch::WatchOptions {
                    url,
                    token,
                    services,
                    property: property.map(serde_json::Value::from),
                    last_seq,
                    max_events: count,
                    raw,
                };
                tokio::select! {
                    r = watch::run(opts, cli_output::line) => r.map_err(Into::into),
                    _ = shutdown_signal() => Ok(()),
                }
            }
            Command::Bench {
                clients,
                orgs,
                events_per_second,
                seconds,
                memory_steps,
                flip_orgs,
                fanout_rates,
                scenarios,
                chat_members,
                runs,
                flips,
                stalled_clients,
                drain_clients,
            } => {
                let opts = bench::BenchOptions {
                    clients,
                    orgs,
                    events_per_second,
                    measure: std::time::Duration::from_secs(seconds),
                    memory_steps,
                    flip_orgs,
                    fanout_rates,
                    scenarios,
                    chat_members,
                    runs: usize::try_from(runs).unwrap_or(1),
                    flips,
                    stalled_clients,
                    drain_clients,
                };
                let table = bench::run(opts).await?;
                cli_output::line(&table.to_string());
                Ok(())
            }
            Command::Drain {
                admin,
                token,
                wait_s,
            } => {
                let wait = std::time::Duration::from_secs(wait_s);
                let out = admin_client::drain(&admin, token.as_deref(), wait).await?;
                cli_output::line(&out);
                Ok(())
            }
            Command::Simulate(opts) => simulate::run(opts, shutdown_signal())
                .await
                .context("simulate"),
            Command::BenchWorker(opts) => {
                bench::worker::run(opts).await;
                Ok(())
            }
            Command::BenchWsRtt(opts) => {
                let line = bench::ws_rtt::run(opts).await.context("bench-ws-rtt")?;
                cli_output::line(&line);
                Ok(())
            }
            Command::Check { .. } => Ok(()),
        }
    });
    // Whatever is still blocked in a blocking thread does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
