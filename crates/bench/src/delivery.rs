//! Trustworthy delivery, measured (issue 16; docs/benchmarks.md,
//! "Trustworthy delivery"): the figures are counts, ratios and a memory
//! bound, not timings.
//!
//! * x — events lost and delivered twice across `--flips` random flag flips
//!   while every V1 answer takes 1.5 s and events keep coming;
//! * y — peak sidecar RSS with `--stalled-clients` clients that stopped
//!   reading, next to the bound computed from the sidecar's config;
//! * z — a drain (`POST /drain`) of `--drain-clients` idle streams: when each
//!   client got its 1001 (a histogram over the window) and when the process
//!   exited.
//!
//! The sidecar is the real binary as a child process; the simulated backend
//! and the clients run in this process.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{
    BenchError, BenchOptions, Row, SECRET, SidecarProcess, TICKS_PER_SEC, start_sim, step,
};
use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::hub::queue::{CONTROL_SLACK, PIN_OVERHEAD};
use realtime_edge::protocol;
use realtime_edge_sim::Fault;

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// The answer latency of every V1 request in the flip run.
const V1_LATENCY_MS: u64 = 1500;
/// Orgs and services of the flip and stalled-client runs.
const ORGS: [u64; 4] = [1, 2, 3, 4];
const FLIP_SERVICES: [&str; 2] = ["finance", "staff"];
/// Flag forms the flip run moves between: all polling, all native, and
/// native for some orgs only.
const FLIP_FORMS: [&str; 4] = [
    "REALTIME_STREAMING_V2=false",
    "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100",
    "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=0&REALTIME_ALLOWLIST_ORGS=1,3",
    "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=0&REALTIME_ALLOWLIST_ORGS=2,4",
];
/// Connections opened at once (the sidecar's accept backlog stays small).
const CONNECT_WAVE: usize = 200;

/// Opens a stream for `org`, subscribes to `services` and waits for the ack.
/// `recv_buffer` shrinks the socket's receive buffer (a client that stops
/// reading then fills the sidecar's side quickly).
async fn subscribe(
    target: SocketAddr,
    org: u64,
    services: &[&str],
    recv_buffer: Option<u32>,
) -> Result<Ws, BenchError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(b) = recv_buffer {
        socket.set_recv_buffer_size(b)?;
    }
    let tcp = socket.connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let token = realtime_edge::auth::mint_hs256(SECRET, "orgId", org, 24 * 3600);
    let mut req = format!("ws://{target}/v2/realtime/stream")
        .into_client_request()
        .map_err(|e| step(e.to_string()))?;
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .map_err(|_| step("token header"))?,
    );
    let cfg = realtime_edge::upstream::client_ws_config();
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
        .await
        .map_err(|e| step(format!("upgrade: {e}")))?;
    let names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    ws.send(Message::Text(
        protocol::handshake_json(&names, None, None).into(),
    ))
    .await
    .map_err(|e| step(format!("handshake: {e}")))?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"ack\"") => Ok(ws),
        other => Err(step(format!("no ack: {other:?}"))),
    }
}

/// A client that reads until told to stop, recording every eventId.
fn reader(
    mut ws: Ws,
    mut stop: watch::Receiver<bool>,
) -> (
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<Option<String>>,
) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stop.changed() => return None,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        continue;
                    };
                    if v["type"] == "event"
                        && let Some(events) = v["events"].as_array()
                    {
                        let mut g = sink.lock().unwrap_or_else(|p| p.into_inner());
                        g.extend(
                            events
                                .iter()
                                .filter_map(|e| e["eventId"].as_str().map(str::to_string)),
                        );
                    }
                }
                Some(Ok(Message::Close(f))) => return Some(format!("closed: {f:?}")),
                Some(Ok(_)) => {}
                other => return Some(format!("ended: {other:?}")),
            }
        }
    });
    (got, task)
}

fn padded(bytes: usize) -> Value {
    json!({ "pad": "x".repeat(bytes) })
}

/// (x) Events lost and delivered twice across random flips under load,
/// with every V1 answer taking 1.5 s.
pub async fn flips_without_loss(
    exe: &std::path::Path,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let sim = start_sim(Duration::from_secs(25)).await?;
    let sidecar = SidecarProcess::spawn_with(
        &exe.to_path_buf(),
        &sim.base_url(),
        &format!(
            "upstream: {{base_url: \"{}\", poll_timeout_s: 5}}\nstream: {{max_connections: 18000, batch_window_ms: 20, max_event_bytes: 65536}}\n",
            sim.base_url()
        ),
    )
    .await?;
    for s in FLIP_SERVICES {
        sim.state.set_fault(s, Fault::Slow(V1_LATENCY_MS));
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut clients = Vec::new();
    for org in ORGS {
        for _ in 0..2 {
            let ws = subscribe(sidecar.client_addr, org, &FLIP_SERVICES, None).await?;
            let (got, task) = reader(ws, stop.clone());
            clients.push((org, got, task));
        }
    }
    super::wait_for(
        "a poller per org and service",
        Duration::from_secs(30),
        || sim.state.active_polls() >= (ORGS.len() * FLIP_SERVICES.len()) as i64,
    )
    .await?;

    // Events keep coming while the flags flip: one every 10 ms, to a
    // random org and service, 10 B to 16 KiB.
    let (flips_done_tx, mut flips_done) = watch::channel(false);
    let publisher = {
        let state = sim.state.clone();
        tokio::spawn(async move {
            let mut published: HashMap<u64, Vec<String>> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !*flips_done.borrow_and_update() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = flips_done.changed() => break,
                }
                let org = ORGS[rand::random_range(0..ORGS.len())];
                let service = FLIP_SERVICES[rand::random_range(0..FLIP_SERVICES.len())];
                let size = match rand::random_range(0..100) {
                    0..90 => rand::random_range(10..500),
                    _ => rand::random_range(500..16 * 1024),
                };
                let ids = state.publish(org, service, vec![padded(size)]);
                published.entry(org).or_default().extend(ids);
            }
            published
        })
    };
    let started = Instant::now();
    let mut previous = 0usize;
    for _ in 0..o.flips {
        tokio::time::sleep(Duration::from_millis(rand::random_range(20..200))).await;
        // Always a change: the same form again would be no flip.
        let mut next = rand::random_range(0..FLIP_FORMS.len() - 1);
        if next >= previous {
            next += 1;
        }
        previous = next;
        sidecar.set_flags(FLIP_FORMS[next]).await?;
    }
    let flipping = started.elapsed();
    flips_done_tx.send_replace(true);
    let published = publisher
        .await
        .map_err(|e| step(format!("publisher: {e}")))?;
    let total: usize = published.values().map(Vec::len).sum();

    // Once the flips are over, what was published either arrives or is lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    let complete = |got: &Arc<Mutex<Vec<String>>>, want: &HashSet<&String>| {
        let g = got.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|id| want.contains(id))
            .collect::<HashSet<_>>()
            .len()
            == want.len()
    };
    while Instant::now() < deadline
        && !clients.iter().all(|(org, got, _)| {
            let want: HashSet<&String> = published.get(org).into_iter().flatten().collect();
            complete(got, &want)
        })
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut lost, mut twice, mut expected, mut ended) = (0usize, 0usize, 0usize, 0usize);
    for (org, got, task) in &clients {
        let want: HashSet<&String> = published.get(org).into_iter().flatten().collect();
        let g = got.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashSet::new();
        twice += g.iter().filter(|id| !seen.insert(*id)).count();
        lost += want.iter().filter(|w| !seen.contains(**w)).count();
        expected += want.len();
        ended += usize::from(task.is_finished());
    }
    stop_tx.send_replace(true);
    for (_, _, task) in clients {
        let _ = task.await;
    }
    rows.push(Row(
        format!("x. events lost / twice across {} flips", o.flips),
        format!("{lost} / {twice}"),
        format!(
            "of {expected} deliveries ({total} events, {} orgs x 2 clients, {} services); every V1 answer {V1_LATENCY_MS} ms late; a flip every 20-200 ms ({:.0} s); {ended} client streams ended early",
            ORGS.len(),
            FLIP_SERVICES.len(),
            flipping.as_secs_f64()
        ),
    ));
    sidecar.stop().await;
    sim.shutdown().await;
    Ok(())
}

/// The sidecar config of the stalled-client run (a 256 KiB queue, events
/// up to 64 KiB, a 4 MiB replay window and lag budget), also loaded here to
/// compute the memory bound.
const STALLED_STREAM: &str = "stream: {max_connections: 18000, batch_window_ms: 20, max_event_bytes: 65536, batch_max_bytes: 65536, max_queue_bytes: 262144, replay_bytes: 4194304}\n";

/// What one client that stopped reading can hold in the sidecar at most,
/// apart from the org's shared events: its queue (plus the control slack)
/// and what its connection took from it and is writing, each with up to a
/// lag budget (`replay_bytes`) of pinned events as pointers, and the
/// WebSocket write buffer.
pub fn stalled_client_bound(cfg: &Config) -> usize {
    let s = &cfg.stream;
    let text = s.max_queue_bytes.saturating_add(CONTROL_SLACK);
    let pointers = (s.replay_bytes / PIN_OVERHEAD).saturating_mul(std::mem::size_of::<usize>());
    text.saturating_add(pointers)
        .saturating_mul(2)
        .saturating_add(realtime_edge::gateway::write_buffer_limit(cfg))
}

/// The shared events one org can hold at most: its replay window, and the
/// events its lagging clients pin (a suffix of its stream, at most one lag
/// budget in each client's queue and one in what its connection took).
pub fn org_events_bound(cfg: &Config) -> usize {
    cfg.stream.replay_bytes.saturating_mul(3)
}

/// The admin API's metrics of the sidecar under test.
async fn admin_metrics(sidecar: &SidecarProcess) -> Result<Value, BenchError> {
    let url = format!("http://{}/v2/realtime/metrics", sidecar.admin_addr);
    let (_, body) = super::http_get(&url)
        .await
        .ok_or_else(|| step("admin metrics"))?;
    serde_json::from_str(&body).map_err(|e| step(format!("admin metrics: {e}")))
}

/// (y) Peak sidecar RSS while `o.stalled_clients` clients stopped reading.
pub async fn stalled_clients(
    exe: &std::path::Path,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let sim = start_sim(Duration::from_secs(25)).await?;
    let yaml = format!(
        "upstream: {{base_url: \"{}\"}}\nauth: {{jwt_secret: \"{SECRET}\"}}\nflags: {{file: null}}\n{STALLED_STREAM}",
        sim.base_url()
    );
    let cfg = Config::from_yaml("bench.yaml", &yaml, &EnvSecrets::default())
        .map_err(|e| step(e.to_string()))?;
    let sidecar =
        SidecarProcess::spawn_with(&exe.to_path_buf(), &sim.base_url(), STALLED_STREAM).await?;
    let services = ["finance"];
    let (stop_tx, stop) = watch::channel(false);
    // One client per org keeps reading: delivery goes on for it.
    let mut readers = Vec::new();
    for org in ORGS {
        let ws = subscribe(sidecar.client_addr, org, &services, None).await?;
        readers.push(reader(ws, stop.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = sidecar.rss_kib();
    let mut stalled = Vec::with_capacity(o.stalled_clients);
    for i in 0..o.stalled_clients {
        let org = ORGS[i % ORGS.len()];
        stalled.push(subscribe(sidecar.client_addr, org, &services, Some(4096)).await?);
    }
    let connected = sidecar.rss_kib();
    // Publish 16 KiB events for 20 s, 100 per second per org: each org's
    // stream (1.6 MB/s) is far more than a stalled client's queue holds.
    let mut peak = connected;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(20) {
        tick.tick().await;
        let org = ORGS[(n % ORGS.len() as u64) as usize];
        n += 1;
        sim.state
            .publish(org, "finance", vec![padded(16 * 1024); ORGS.len()]);
        if n.is_multiple_of(10) {
            peak = peak.max(sidecar.rss_kib());
        }
    }
    let active = admin_metrics(&sidecar).await?["activeConnections"]
        .as_u64()
        .unwrap_or(0);
    let readers_ok = readers.iter().filter(|(_, t)| !t.is_finished()).count();
    stop_tx.send_replace(true);
    for (_, t) in readers {
        let _ = t.await;
    }
    drop(stalled);
    let per_client = stalled_client_bound(&cfg);
    let windows = ORGS.len().saturating_mul(org_events_bound(&cfg));
    let bound_kib = idle as usize + (o.stalled_clients.saturating_mul(per_client) + windows) / 1024;
    rows.push(Row(
        format!("y. peak RSS, {} clients stopped reading", o.stalled_clients),
        format!("{} MiB (bound {} MiB)", peak / 1024, bound_kib / 1024),
        format!(
            "idle {} MiB, {} MiB once connected; bound = idle + {} clients x {} KiB (2 x (max_queue_bytes {} KiB + slack + pointers to a lag budget of pinned events) + write buffer) + {} orgs x 3 x replay_bytes {} MiB (window and pinned events); {} events of 16 KiB in 20 s; {} stalled clients cut off with 1013 (past the lag budget); {readers_ok} of {} reading clients still served",
            idle / 1024,
            connected / 1024,
            o.stalled_clients,
            per_client / 1024,
            cfg.stream.max_queue_bytes / 1024,
            ORGS.len(),
            cfg.stream.replay_bytes >> 20,
            n * ORGS.len() as u64,
            (o.stalled_clients + ORGS.len()).saturating_sub(active as usize),
            ORGS.len(),
        ),
    ));
    sidecar.stop().await;
    sim.shutdown().await;
    Ok(())
}

/// Seconds from the drain's start at which each client got its close.
#[derive(Default)]
struct Closes {
    going_away: Vec<f64>,
    other: usize,
}

/// (z) Drain of `o.drain_clients` idle streams with `drain_s` 20.
pub async fn drain(
    exe: &std::path::Path,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    const DRAIN_S: u64 = 20;
    let sim = start_sim(Duration::from_secs(25)).await?;
    let mut sidecar = SidecarProcess::spawn_with(
        &exe.to_path_buf(),
        &sim.base_url(),
        &format!("shutdown: {{prestop_delay_s: 0, drain_s: {DRAIN_S}}}\n"),
    )
    .await?;
    let target = sidecar.client_addr;
    let closes = Arc::new(Mutex::new(Closes::default()));
    let (start_tx, start) = watch::channel(None::<Instant>);
    let gate = Arc::new(Semaphore::new(CONNECT_WAVE));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..o.drain_clients {
        let (gate, closes, start) = (gate.clone(), closes.clone(), start.clone());
        let org = 1 + (i as u64 % 100);
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut ws = subscribe(target, org, &["finance"], None).await?;
            drop(permit);
            let code = loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    _ => break None,
                }
            };
            let at = start.borrow().map(|t| t.elapsed().as_secs_f64());
            let mut c = closes.lock().unwrap_or_else(|p| p.into_inner());
            match (code, at) {
                (Some(protocol::close::GOING_AWAY), Some(at)) => c.going_away.push(at),
                _ => c.other += 1,
            }
            Ok::<(), BenchError>(())
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let active = admin_metrics(&sidecar).await?["activeConnections"]
            .as_u64()
            .unwrap_or(0);
        if active >= o.drain_clients as u64 {
            break;
        }
        if Instant::now() > deadline || tasks.len() < o.drain_clients {
            return Err(step(format!(
                "{active} of {} drain clients connected",
                o.drain_clients
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = sidecar.rss_kib();
    let cpu_before = sidecar.cpu_ticks();
    let t0 = Instant::now();
    start_tx.send_replace(Some(t0));
    realtime_edge_tools::admin_client::request(
        &format!("http://{}", sidecar.admin_addr),
        None,
        http::Method::POST,
        "/drain",
        None,
    )
    .await
    .map_err(|e| step(e.to_string()))?;
    let mut cpu = cpu_before;
    let status = loop {
        if let Some(s) = sidecar.child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(DRAIN_S + 30) {
            break None;
        }
        cpu = sidecar.cpu_ticks().max(cpu);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = t0.elapsed();
    let mut failed = 0usize;
    while let Some(r) = tasks.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let c = std::mem::take(&mut *closes.lock().unwrap_or_else(|p| p.into_inner()));
    let mut per_second = vec![0usize; DRAIN_S as usize + 1];
    for &at in &c.going_away {
        let s = (at as usize).min(per_second.len() - 1);
        per_second[s] += 1;
    }
    let histogram: Vec<String> = per_second.iter().map(|n| n.to_string()).collect();
    let last = c.going_away.iter().cloned().fold(0f64, f64::max);
    rows.push(Row(
        format!("z. drain of {} streams, drain_s {DRAIN_S}", o.drain_clients),
        format!(
            "{} of {} got 1001; exit {} after {:.1} s",
            c.going_away.len(),
            o.drain_clients,
            status.map_or("none (killed)".to_string(), |s| s
                .code()
                .map_or("by signal".into(), |c| format!("code {c}"))),
            exited.as_secs_f64()
        ),
        format!(
            "prestop_delay_s 0; 1001s per second of the window (0..{DRAIN_S}): [{}]; last 1001 at {last:.1} s; {} other ends, {failed} clients failed; sidecar RSS {} MiB before, CPU {:.1} s during the drain",
            histogram.join(" "),
            c.other,
            rss / 1024,
            (cpu.saturating_sub(cpu_before)) as f64 / TICKS_PER_SEC
        ),
    ));
    if status.is_none() {
        sidecar.stop().await;
    }
    sim.shutdown().await;
    Ok(())
}
