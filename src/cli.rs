//! The command line: every subcommand and its options.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use realtime_edge::config::CONFIG_ENV;
use realtime_edge_bench as bench;
use realtime_edge_tools::simulate;

#[derive(Parser)]
#[command(
    name = "realtime-edge",
    version,
    about = "Edge-proxy sidecar: one WebSocket per browser, served from shared V1 long-pollers or the native stream, switched live by feature flags."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Scenarios to run: any of a (upstream load), b (latency), c (memory), d (fan-out), e (flag flip), f (V1 facade), k (flag propagation across 3 replicas; needs redis-server), n (three replicas on Redis; needs redis-server), r (chat room), u (uploads), x (events lost across flips), y (clients that stopped reading), z (drain); k, n, r, u and x-z are not in the default.
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
pub enum FlagsAction {
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
