//! The `realtime-edge` binary: parses arguments, sets up logging and
//! signals, and hands over to the production library (`realtime-edge`:
//! `serve`, `check`) or to the tools built on it (`realtime-edge-tools`,
//! `realtime-edge-bench`).

mod check;
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, FlagsAction, LogFormat};
use realtime_edge::config::{CONFIG_ENV, Config, EnvSecrets};
use realtime_edge::{Listeners, Sidecar};
use realtime_edge_bench as bench;
use realtime_edge_tools::{admin_client, cli_output, demo, simulate, watch};

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
        return check::check(config.as_ref());
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
