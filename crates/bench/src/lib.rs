//! `realtime-edge bench`: measures the product's promises on one machine,
//! over loopback, against the simulated backend, and prints one table.
//!
//! The simulated backend runs in this process; the sidecar runs as a child
//! process (so its memory and CPU are its own), and stream clients run in
//! `bench-worker` child processes (a process here holds at most 20,000
//! file descriptors), spread over several 127.0.0.x source addresses.
#![forbid(unsafe_code)]

mod chat;
mod cluster;
mod cluster_flags;
mod delivery;
mod facade;
pub mod histogram;
mod runs;
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
use realtime_edge_sim::{GeneratorConfig, SimConfig, Simulator};
use v1_clients::V1Clients;

const SECRET: &str = "bench-secret";
const SERVICES: [&str; 3] = ["finance", "staff", "tasks"];

/// What to run and at which size.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub clients: usize,
    pub orgs: u64,
    pub events_per_second: u32,
    pub measure: Duration,
    pub memory_steps: Vec<usize>,
    pub flip_orgs: usize,
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

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("benchmark step failed: {0}")]
    Step(String),
}

fn step(msg: impl Into<String>) -> BenchError {
    BenchError::Step(msg.into())
}

/// The sidecar under test, as a child process.
struct SidecarProcess {
    child: Child,
    client_addr: SocketAddr,
    admin_addr: SocketAddr,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn free_port() -> Result<SocketAddr, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(url).body(Empty::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

impl SidecarProcess {
    async fn spawn(exe: &PathBuf, backend: &str) -> Result<SidecarProcess, BenchError> {
        Self::spawn_with(exe, backend, "").await
    }

    /// Like `spawn`, with `extra` YAML appended to the config.
    async fn spawn_with(
        exe: &PathBuf,
        backend: &str,
        extra: &str,
    ) -> Result<SidecarProcess, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "re-bench-{}-{}",
            std::process::id(),
            realtime_edge::clock::unix_millis()
        ));
        std::fs::create_dir_all(&dir)?;
        let client_addr = free_port().await?;
        let admin_addr = free_port().await?;
        let config = dir.join("edge.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"{client_addr}\"\nadmin_listen: \"{admin_addr}\"\nauth: {{jwt_secret: \"{SECRET}\"}}\nflags: {{file: null}}\n{}{}{extra}",
                // `extra` may bring its own upstream or stream section.
                if extra.contains("upstream:") {
                    String::new()
                } else {
                    format!("upstream: {{base_url: \"{backend}\"}}\n")
                },
                if extra.contains("stream:") {
                    ""
                } else {
                    "stream: {max_connections: 18000}\n"
                },
            ),
        )?;
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("REALTIME_EDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let me = SidecarProcess {
            child,
            client_addr,
            admin_addr,
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(&format!("http://{admin_addr}/readyz")).await {
                return Ok(me);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(step("the sidecar did not become ready"))
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        self.pid().and_then(proc_rss_kib).unwrap_or(0)
    }

    fn cpu_ticks(&self) -> u64 {
        self.pid().and_then(proc_cpu_ticks).unwrap_or(0)
    }

    async fn set_flags(&self, form: &str) -> Result<(), BenchError> {
        realtime_edge_tools::admin_client::request(
            &format!("http://{}", self.admin_addr),
            None,
            http::Method::POST,
            "/feature-flags",
            Some(form.to_string()),
        )
        .await
        .map(|_| ())
        .map_err(|e| step(e.to_string()))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime, in clock ticks (1/100 s on Linux).
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

const TICKS_PER_SEC: f64 = 100.0;

/// A `bench-worker` child holding some of the clients.
struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

struct WorkerReport {
    connected: u64,
    failed: u64,
    closed: u64,
    events: u64,
    hist: Vec<u64>,
}

impl WorkerProcess {
    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        exe: &PathBuf,
        target: SocketAddr,
        source_ip: &str,
        clients: usize,
        org_start: u64,
        org_count: u64,
        services: &[&str],
    ) -> Result<WorkerProcess, BenchError> {
        let mut child = Command::new(exe)
            .arg("bench-worker")
            .args([
                "--target",
                &target.to_string(),
                "--secret",
                SECRET,
                "--source-ip",
                source_ip,
            ])
            .args([
                "--clients",
                &clients.to_string(),
                "--org-start",
                &org_start.to_string(),
                "--org-count",
                &org_count.to_string(),
            ])
            .args(["--services", &services.join(",")])
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| step("worker stdin"))?;
        let stdout =
            BufReader::new(child.stdout.take().ok_or_else(|| step("worker stdout"))?).lines();
        Ok(WorkerProcess {
            child,
            stdin,
            stdout,
        })
    }

    /// The latency and load runs' clients: `o.clients` over `o.orgs` orgs,
    /// subscribed to the three generated services.
    async fn standard(
        exe: &PathBuf,
        sidecar: &SidecarProcess,
        o: &BenchOptions,
    ) -> Result<WorkerProcess, BenchError> {
        WorkerProcess::spawn(
            exe,
            sidecar.client_addr,
            "127.0.0.2",
            o.clients,
            1,
            o.orgs,
            &SERVICES,
        )
        .await
    }

    async fn command(&mut self, line: &str) -> Result<(), BenchError> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn report(&mut self) -> Result<WorkerReport, BenchError> {
        self.command("report").await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .map_err(|_| step("worker did not report"))??
            .ok_or_else(|| step("worker exited"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| step(format!("worker report: {e}")))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(WorkerReport {
            connected: n("connected"),
            failed: n("failed"),
            closed: n("closed"),
            events: n("events"),
            hist: v["hist"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                .unwrap_or_default(),
        })
    }

    /// Waits until every client is connected (or failed).
    async fn wait_connected(&mut self, want: usize) -> Result<u64, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = self.report().await?;
            if (r.connected + r.failed) as usize >= want {
                if r.failed > 0 {
                    return Err(step(format!(
                        "{} of {want} clients failed to connect",
                        r.failed
                    )));
                }
                return Ok(r.connected);
            }
            if Instant::now() > deadline {
                return Err(step(format!(
                    "only {} of {want} clients connected",
                    r.connected
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn quit(mut self) {
        let _ = self.command("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
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

/// V1 requests per second reaching the backend while `events` are published.
async fn v1_request_rate(sim: &Simulator, events: GeneratorConfig, measure: Duration) -> f64 {
    let _generator = sim.spawn_generator(events);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sim.state.total_requests();
    tokio::time::sleep(measure).await;
    (sim.state.total_requests() - before) as f64 / measure.as_secs_f64()
}

/// (a) V1 requests per second: clients polling directly vs through the sidecar.
async fn upstream_load(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let rate = 20;
    let sim = start_sim(Duration::from_secs(25)).await?;
    // Today's behaviour: every client long-polls every service itself.
    let clients = V1Clients::start(&sim.base_url(), &v1_paths(&sim), o.clients, o.orgs, SECRET);
    let want = (o.clients * SERVICES.len()) as i64;
    wait_for("direct long-polls", Duration::from_secs(60), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let direct = v1_request_rate(&sim, generator(rate, o.orgs), o.measure).await;
    clients.stop();
    sim.shutdown().await;

    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let mut w = WorkerProcess::standard(exe, sidecar, o).await?;
    w.wait_connected(o.clients).await?;
    let want = o.orgs as i64 * SERVICES.len() as i64;
    wait_for("shared pollers", Duration::from_secs(30), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let through = v1_request_rate(sim, generator(rate, o.orgs), o.measure).await;
    rig.finish(vec![w]).await;
    let cfg = format!(
        "{} clients, {} orgs, {} services, {rate} events/s",
        o.clients,
        o.orgs,
        SERVICES.len()
    );
    rows.push(Row(
        "a. V1 requests/s, clients polling directly".into(),
        format!("{direct:.0} req/s"),
        cfg.clone(),
    ));
    rows.push(Row(
        "a. V1 requests/s, through realtime-edge".into(),
        format!("{through:.1} req/s"),
        cfg,
    ));
    rows.push(Row(
        "a. upstream load ratio".into(),
        format!("{:.0}x", direct / through.max(0.001)),
        format!(
            "target >= clients/orgs = {}x",
            o.clients as u64 / o.orgs.max(1)
        ),
    ));
    Ok(())
}

/// (b) latency in poll and native mode, and (d) fan-out at growing rates.
async fn latency_and_fanout(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
    latency: bool,
    fanout: bool,
) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let mut workers = vec![WorkerProcess::standard(exe, sidecar, o).await?];
    workers[0].wait_connected(o.clients).await?;
    let want = o.orgs as i64 * SERVICES.len() as i64;
    wait_for("shared pollers", Duration::from_secs(30), || {
        sim.state.active_polls() >= want
    })
    .await?;
    let cfg = format!(
        "{} clients in {} orgs, {} events/s, batch window 50 ms",
        o.clients, o.orgs, o.events_per_second
    );
    if latency {
        let gen_stop = sim.spawn_generator(generator(o.events_per_second, o.orgs));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (h, events, _) = measure(&mut workers, o.measure).await?;
        rows.push(latency_row("poll", &h, &cfg, events));
        sidecar
            .set_flags("REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100")
            .await?;
        wait_for("native mode", Duration::from_secs(30), || {
            sim.state.active_polls() == 0 && sim.state.native_active() >= o.orgs as i64
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (h, events, _) = measure(&mut workers, o.measure).await?;
        rows.push(latency_row("native", &h, &cfg, events));
        drop(gen_stop);
        sidecar.set_flags("REALTIME_STREAMING_V2=false").await?;
        wait_for("poll mode", Duration::from_secs(30), || {
            sim.state.native_active() == 0
        })
        .await?;
    }
    if fanout {
        for &rate in &o.fanout_rates {
            let gen_stop = sim.spawn_generator(generator(rate, o.orgs));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let cpu0 = sidecar.cpu_ticks();
            let t0 = Instant::now();
            let (h, events, _) = measure(&mut workers, o.measure).await?;
            let secs = t0.elapsed().as_secs_f64();
            let cpu = (sidecar.cpu_ticks() - cpu0) as f64 / TICKS_PER_SEC / secs * 100.0;
            drop(gen_stop);
            rows.push(Row(
                format!("d. fan-out at {rate} events/s published"),
                format!(
                    "{:.0} events/s delivered",
                    events as f64 / o.measure.as_secs_f64()
                ),
                format!(
                    "sidecar CPU {cpu:.0}% of one core; p99 {}; {} clients",
                    ms(h.quantile_ms(0.99)),
                    o.clients
                ),
            ));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    rig.finish(workers).await;
    Ok(())
}

/// (c) resident memory per idle connection.
async fn memory(exe: &PathBuf, o: &BenchOptions, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let sidecar = &rig.sidecar;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = sidecar.rss_kib();
    let mut workers: Vec<WorkerProcess> = Vec::new();
    let mut held = 0usize;
    let per_worker = 5000usize;
    let mut ip = 2;
    for &target in &o.memory_steps {
        while held < target {
            let n = (target - held).min(per_worker);
            let mut w = WorkerProcess::spawn(
                exe,
                sidecar.client_addr,
                &format!("127.0.0.{ip}"),
                n,
                1,
                100,
                &["finance"],
            )
            .await?;
            ip += 1;
            w.wait_connected(n).await?;
            held += n;
            workers.push(w);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = sidecar.rss_kib();
        let per = (rss.saturating_sub(base)) as f64 / held as f64;
        rows.push(Row(
            format!("c. memory, {held} idle connections"),
            format!("{per:.1} KiB/connection"),
            format!(
                "sidecar RSS {} MiB (idle {} MiB); 100 orgs, 1 service",
                rss / 1024,
                base / 1024
            ),
        ));
    }
    rig.finish(workers).await;
    Ok(())
}

/// (e) time from the admin POST returning to every org serving from its new source.
async fn flag_flip(exe: &PathBuf, o: &BenchOptions, rows: &mut Vec<Row>) -> Result<(), BenchError> {
    let rig = Rig::start(exe).await?;
    let (sim, sidecar) = (&rig.sim, &rig.sidecar);
    let n = o.flip_orgs;
    let mut w = WorkerProcess::spawn(
        exe,
        sidecar.client_addr,
        "127.0.0.2",
        n,
        1,
        n as u64,
        &["finance"],
    )
    .await?;
    w.wait_connected(n).await?;
    wait_for("a poller per org", Duration::from_secs(60), || {
        sim.state.active_polls() >= n as i64
    })
    .await?;
    sidecar
        .set_flags("REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100")
        .await?;
    let t0 = Instant::now();
    wait_for("every native link open", Duration::from_secs(60), || {
        sim.state.native_active() >= n as i64
    })
    .await?;
    let links_open = t0.elapsed();
    wait_for("every org native", Duration::from_secs(60), || {
        sim.state.native_active() >= n as i64 && sim.state.active_polls() == 0
    })
    .await?;
    let to_native = t0.elapsed();
    sidecar.set_flags("REALTIME_STREAMING_V2=false").await?;
    let t0 = Instant::now();
    wait_for("every org polling", Duration::from_secs(60), || {
        sim.state.active_polls() >= n as i64
    })
    .await?;
    let to_poll = t0.elapsed();
    // The native links stay until each new poller has its first cursor, so
    // nothing published in between is lost; with no events that is the
    // backend's hold time.
    wait_for("native links closed", Duration::from_secs(60), || {
        sim.state.native_active() == 0
    })
    .await?;
    let overlap = t0.elapsed();
    let r = w.report().await?;
    rows.push(Row(
        format!("e. flag flip poll -> native, {n} orgs"),
        format!("{:.0} ms", to_native.as_secs_f64() * 1000.0),
        format!(
            "POST returned -> every org's native link acked and its poller gone (all {n} links open after {:.0} ms)",
            links_open.as_secs_f64() * 1000.0
        ),
    ));
    rows.push(Row(
        format!("e. rollback native -> poll, {n} orgs"),
        format!("{:.0} ms", to_poll.as_secs_f64() * 1000.0),
        format!(
            "POST returned -> every org's poller parked at the backend; native links kept {:.1} s as overlap until the pollers' first answers; {} client closes",
            overlap.as_secs_f64(),
            r.closed
        ),
    ));
    rig.finish(vec![w]).await;
    Ok(())
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
    if has('u') {
        eprintln!("bench: u. document upload ...");
        uploads::run(&mut rows).await?;
        uploads::concurrent_memory(&exe, &mut rows).await?;
    }
    if has('n') {
        eprintln!("bench: n. several replicas on Redis ...");
        cluster::replicas(&exe, &o, &mut rows).await?;
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
