//! `realtime-edge bench`: measures the product's promises on one machine,
//! over loopback, against the simulated backend, and prints one table.
//!
//! The simulated backend runs in this process; the sidecar runs as a child
//! process (so its memory and CPU are its own), and stream clients run in
//! `bench-worker` child processes (a process here holds at most 20,000
//! file descriptors), spread over several 127.0.0.x source addresses.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chat;
mod cluster;
mod cluster_flags;
mod delivery;
mod facade;
pub(crate) mod histogram;
mod processes;
mod runs;
mod scenarios;
mod uploads;
mod v1_clients;
pub mod worker;
pub mod ws_rtt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use histogram::Merged;
use processes::*;
use realtime_edge_sim::{GeneratorConfig, SimConfig, Simulator};
use scenarios::*;
use v1_clients::V1Clients;

const SECRET: &str = "bench-secret";
const SERVICES: [&str; 3] = ["finance", "staff", "tasks"];

/// What to run and at which size.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Stream clients of the load, latency and fan-out runs.
    pub clients: usize,
    /// Orgs the clients are spread over.
    pub orgs: u64,
    /// Published events per second of the latency run.
    pub events_per_second: u32,
    /// How long each measurement lasts.
    pub measure: Duration,
    /// Idle connection counts of the memory run.
    pub memory_steps: Vec<usize>,
    /// Orgs of the flag-flip run.
    pub flip_orgs: usize,
    /// Publish rates of the fan-out run.
    pub fanout_rates: Vec<u32>,
    /// Letters of the scenarios to run (a-f, k, n, r, u, x-z).
    pub scenarios: String,
    /// Members of the chat room (scenario f).
    pub chat_members: usize,
    /// How many times the scenarios run; each figure is reported as the
    /// median and min-max over the runs.
    pub runs: usize,
    /// Flag flips of scenario x.
    pub flips: usize,
    /// Clients that stop reading in scenario y.
    pub stalled_clients: usize,
    /// Streams drained in scenario z.
    pub drain_clients: usize,
}

/// Why a benchmark run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A process, socket or file operation failed.
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario step did not reach its condition.
    #[error("benchmark step failed: {0}")]
    Step(String),
}

fn step(msg: impl Into<String>) -> BenchError {
    BenchError::Step(msg.into())
}

/// The backend and the sidecar of one scenario.
struct Rig {
    sim: Simulator,
    sidecar: SidecarProcess,
}

impl Rig {
    async fn start(exe: &PathBuf) -> Result<Rig, BenchError> {
        let sim = start_sim(Duration::from_secs(25)).await?;
        let sidecar = SidecarProcess::spawn(exe, &sim.base_url()).await?;
        Ok(Rig { sim, sidecar })
    }

    async fn finish(self, workers: Vec<WorkerProcess>) {
        for w in workers {
            w.quit().await;
        }
        self.sidecar.stop().await;
        self.sim.shutdown().await;
    }
}

/// Runs every worker's `reset`, waits `measure`, then merges their reports.
async fn measure(
    workers: &mut [WorkerProcess],
    measure: Duration,
) -> Result<(Merged, u64, u64), BenchError> {
    for w in workers.iter_mut() {
        w.command("reset").await?;
    }
    tokio::time::sleep(measure).await;
    let mut merged = Merged::default();
    let (mut events, mut closed) = (0, 0);
    for w in workers.iter_mut() {
        let r = w.report().await?;
        merged.add(&r.hist);
        events += r.events;
        closed += r.closed;
    }
    Ok((merged, events, closed))
}

async fn start_sim(hold: Duration) -> Result<Simulator, BenchError> {
    let listener = realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into())?;
    Ok(Simulator::start(
        SimConfig {
            jwt_secret: SECRET.into(),
            hold,
            ..SimConfig::default()
        },
        listener,
    )
    .await?)
}

/// Events for orgs 1..=orgs, the orgs the benchmark's clients belong to.
fn generator(rate: u32, orgs: u64) -> GeneratorConfig {
    GeneratorConfig {
        events_per_second: rate,
        orgs,
        properties: 10,
        services: SERVICES.iter().map(|s| s.to_string()).collect(),
    }
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return Err(step(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn latency_row(mode: &str, h: &Merged, cfg: &str, events: u64) -> Row {
    Row(
        format!("b. latency {mode} mode p50 / p95 / p99"),
        format!(
            "{} / {} / {}",
            ms(h.quantile_ms(0.5)),
            ms(h.quantile_ms(0.95)),
            ms(h.quantile_ms(0.99))
        ),
        format!("{cfg}; {events} deliveries"),
    )
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1} ms"))
        .unwrap_or_else(|| "n/a".into())
}

/// One table row.
struct Row(String, String, String);

/// The V1 paths of the benchmark's services at the simulated backend.
fn v1_paths(sim: &Simulator) -> Vec<String> {
    SERVICES
        .iter()
        .filter_map(|svc| {
            sim.state
                .services
                .iter()
                .find(|(n, _)| n == svc)
                .map(|(_, p)| p.clone())
        })
        .collect()
}

/// Runs the chosen scenarios `o.runs` times and returns the table: every
/// figure the median over the runs with its min-max, and the machine's
/// load average around each run.
pub async fn run(o: BenchOptions) -> Result<String, BenchError> {
    let runs = o.runs.max(1);
    let mut all: Vec<Vec<Row>> = Vec::with_capacity(runs);
    let mut loads = Vec::with_capacity(runs);
    for n in 1..=runs {
        let before = runs::load_average();
        eprintln!("bench: run {n} of {runs}; load average {before}");
        all.push(run_once(&o).await?);
        loads.push(format!("run {n}: {before} -> {}", runs::load_average()));
    }
    let mut rows = Vec::new();
    if let Some(first) = all.first() {
        for (i, Row(name, _, _)) in first.iter().enumerate() {
            let same: Vec<&Row> = all
                .iter()
                .filter_map(|r| r.iter().find(|x| &x.0 == name).or_else(|| r.get(i)))
                .collect();
            let results: Vec<&str> = same.iter().map(|r| r.1.as_str()).collect();
            let conditions: Vec<&str> = same.iter().map(|r| r.2.as_str()).collect();
            rows.push(Row(
                name.clone(),
                runs::combine(&results),
                runs::combine(&conditions),
            ));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "{runs} run(s), each figure the median (min-max) over the runs; {cpus} CPUs; load average (1/5/15 min) before -> after each run: {}\n\n",
        loads.join("; ")
    );
    out.push_str(&table(rows));
    Ok(out)
}

/// One pass over the chosen scenarios.
async fn run_once(o: &BenchOptions) -> Result<Vec<Row>, BenchError> {
    let o = o.clone();
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let has = |c: char| o.scenarios.contains(c);
    if has('a') {
        eprintln!("bench: a. upstream load ...");
        upstream_load(&exe, &o, &mut rows).await?;
    }
    if has('b') || has('d') {
        eprintln!("bench: b/d. latency and fan-out ...");
        latency_and_fanout(&exe, &o, &mut rows, has('b'), has('d')).await?;
    }
    if has('c') {
        eprintln!("bench: c. memory per idle connection ...");
        memory(&exe, &o, &mut rows).await?;
    }
    if has('e') {
        eprintln!("bench: e. flag flip propagation ...");
        flag_flip(&exe, &o, &mut rows).await?;
    }
    if has('f') {
        eprintln!("bench: f. V1 facade ...");
        facade::v1_facade(&exe, &o, &mut rows).await?;
    }
    if has('n') {
        eprintln!("bench: n. several replicas on Redis ...");
        cluster::replicas(&exe, &o, &mut rows).await?;
    }
    if has('u') {
        eprintln!("bench: u. document upload ...");
        uploads::run(&mut rows).await?;
        uploads::concurrent_memory(&exe, &mut rows).await?;
    }
    if has('r') {
        eprintln!("bench: r. chat room ...");
        chat::chat_room(&exe, &o, &mut rows).await?;
    }
    if has('k') {
        eprintln!("bench: k. flag propagation across replicas ...");
        cluster_flags::flag_propagation(&exe, &mut rows).await?;
    }
    if has('x') {
        eprintln!("bench: x. flips without loss ...");
        delivery::flips_without_loss(&exe, &o, &mut rows).await?;
    }
    if has('y') {
        eprintln!("bench: y. clients that stopped reading ...");
        delivery::stalled_clients(&exe, &o, &mut rows).await?;
    }
    if has('z') {
        eprintln!("bench: z. drain ...");
        delivery::drain(&exe, &o, &mut rows).await?;
    }
    Ok(rows)
}

fn table(rows: Vec<Row>) -> String {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(10);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(10);
    let mut out = format!(
        "| {:w0$} | {:w1$} | conditions |\n|{}|{}|---|\n",
        "measure",
        "result",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2)
    );
    for Row(a, b, c) in rows {
        out.push_str(&format!("| {a:w0$} | {b:w1$} | {c} |\n"));
    }
    out
}
