//! Scenario `n`: several replicas on one Redis (CONTRACT 9). The same
//! clients (`--clients` over `--orgs`, three services) are served first by
//! one sidecar, then by three replicas sharing a Redis of their own, each
//! replica holding a third of the clients of every org. Reports upstream V1
//! requests/s for both, the delivery latency p99 for both (the difference is
//! what the Redis hop adds), Redis commands per published and per delivered
//! event (`INFO commandstats`), then SIGKILLs one replica and reports how
//! long until every org it owned has a new owner (read from the leases in
//! Redis), and the events lost or duplicated for probe clients (one per
//! org) on a surviving replica.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{
    BenchError, BenchOptions, Row, SECRET, SERVICES, SidecarProcess, WorkerProcess, free_port,
    generator, measure, ms, start_sim, step, wait_for,
};
use realtime_edge_sim::Simulator;

/// Events published per second while measuring.
const RATE: u32 = 100;
/// Replicas of the cluster run.
const REPLICAS: usize = 3;

/// A redis-server of the benchmark's own, killed when dropped (scenarios
/// n and k).
pub(super) struct RedisProcess {
    _child: Child,
    pub(super) url: String,
}

impl RedisProcess {
    pub(super) async fn start() -> Result<RedisProcess, BenchError> {
        let port = free_port().await?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                step(format!(
                    "the cluster scenarios need redis-server on the PATH: {e}"
                ))
            })?;
        let me = RedisProcess {
            _child: child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while me.command_calls().await.is_err() {
            if Instant::now() > deadline {
                return Err(step("redis-server did not answer"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(me)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BenchError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| step(e.to_string()))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| step(e.to_string()))?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| step(e.to_string()))
    }

    /// The cluster's live replica ids.
    async fn members(&self) -> Result<HashSet<String>, BenchError> {
        let ids: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg("bench:replicas").arg(0).arg(-1))
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// The replica holding each org's lease.
    async fn owners(&self, orgs: u64) -> Result<HashMap<u64, Option<String>>, BenchError> {
        let mut out = HashMap::new();
        for org in 1..=orgs {
            let lease: Option<String> = self
                .query(redis::cmd("GET").arg(format!("bench:org:{org}:lease")))
                .await?;
            let holder = lease.and_then(|l| l.split_once(':').map(|(r, _)| r.to_string()));
            out.insert(org, holder);
        }
        Ok(out)
    }

    /// Commands Redis has run so far (the sum of `INFO commandstats`).
    async fn command_calls(&self) -> Result<u64, BenchError> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats")).await?;
        Ok(info
            .lines()
            .filter_map(|l| {
                l.split_once("calls=")?
                    .1
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }
}

/// Probe clients, one per org on one replica, recording every eventId.
struct Probes {
    received: Arc<Mutex<HashMap<u64, Vec<String>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    async fn start(addr: std::net::SocketAddr, orgs: u64) -> Result<Probes, BenchError> {
        let received: Arc<Mutex<HashMap<u64, Vec<String>>>> = Arc::default();
        let mut tasks = Vec::new();
        for org in 1..=orgs {
            let mut req = format!("ws://{addr}/v2/realtime/stream")
                .into_client_request()
                .map_err(|e| step(e.to_string()))?;
            let token = realtime_edge::auth::mint_hs256(SECRET, "orgId", org, 3600);
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| step("token header"))?,
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .map_err(|e| step(format!("probe connect: {e}")))?;
            let hello = serde_json::json!({"services": SERVICES, "version": 1});
            ws.send(Message::Text(hello.to_string().into()))
                .await
                .map_err(|e| step(format!("probe handshake: {e}")))?;
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                        continue;
                    };
                    if v["type"] != "event" {
                        continue;
                    }
                    let ids = v["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["eventId"].as_str().map(str::to_string));
                    if let Ok(mut r) = received.lock() {
                        r.entry(org).or_default().extend(ids);
                    }
                }
            }));
        }
        Ok(Probes { received, tasks })
    }

    /// (lost, duplicated, expected) against what the backend published
    /// for each org after position `from[org]`.
    fn compare(&self, sim: &Simulator, from: &HashMap<u64, u64>) -> (usize, usize, usize) {
        let received = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        let (mut lost, mut dup, mut expected_total) = (0, 0, 0);
        for (&org, &start) in from {
            let expected: HashSet<String> = sim
                .state
                .with_org(org, |log| log.event_ids_after(start, &SERVICES))
                .into_iter()
                .collect();
            let got: Vec<&String> = received
                .get(&org)
                .into_iter()
                .flatten()
                .filter(|id| expected.contains(*id))
                .collect();
            let unique: HashSet<&String> = got.iter().copied().collect();
            expected_total += expected.len();
            lost += expected.len() - unique.len();
            dup += got.len() - unique.len();
        }
        (lost, dup, expected_total)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// V1 requests/s, the merged latency histogram and the deliveries while
/// `RATE` events/s are published for `o.measure`.
async fn steady(
    sim: &Simulator,
    workers: &mut [WorkerProcess],
    o: &BenchOptions,
) -> Result<(f64, super::histogram::Merged, u64, u64), BenchError> {
    let stop = sim.spawn_generator(generator(RATE, o.orgs));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = sim.state.total_requests();
    let published = sim.state.published();
    let (hist, events, _) = measure(workers, o.measure).await?;
    let rate = (sim.state.total_requests() - requests) as f64 / o.measure.as_secs_f64();
    let published = sim.state.published() - published;
    drop(stop);
    Ok((rate, hist, events, published))
}

/// Scenario `n`.
pub async fn replicas(
    exe: &PathBuf,
    o: &BenchOptions,
    rows: &mut Vec<Row>,
) -> Result<(), BenchError> {
    let sim = start_sim(Duration::from_secs(25)).await?;
    let polls = o.orgs as i64 * SERVICES.len() as i64;
    let cfg = format!(
        "{} clients over {} orgs, {} services, {RATE} events/s",
        o.clients,
        o.orgs,
        SERVICES.len()
    );

    // One replica, no cluster.
    let single = SidecarProcess::spawn(exe, &sim.base_url()).await?;
    let mut w = WorkerProcess::spawn(
        exe,
        single.client_addr,
        "127.0.0.2",
        o.clients,
        1,
        o.orgs,
        &SERVICES,
    )
    .await?;
    w.wait_connected(o.clients).await?;
    wait_for("one replica's pollers", Duration::from_secs(60), || {
        sim.state.active_polls() >= polls
    })
    .await?;
    let (one_rate, one_hist, _, _) = steady(&sim, std::slice::from_mut(&mut w), o).await?;
    w.quit().await;
    single.stop().await;
    wait_for(
        "the single replica's polls gone",
        Duration::from_secs(30),
        || sim.state.active_polls() == 0,
    )
    .await?;

    // Three replicas on one Redis, a third of every org's clients on each.
    let redis = RedisProcess::start().await?;
    let extra = format!(
        "cluster: {{redis_url: \"{}\", name: \"bench\"}}\n",
        redis.url
    );
    // Each replica's id: the member that appears when it starts.
    let mut replicas = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(SidecarProcess::spawn_with(exe, &sim.base_url(), &extra).await?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let new: Vec<String> = redis
                .members()
                .await?
                .into_iter()
                .filter(|m| !ids.contains(m))
                .collect();
            if let [id] = new.as_slice() {
                ids.push(id.clone());
                break;
            }
            if Instant::now() > deadline {
                return Err(step("a replica did not join the cluster"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The clients of all replicas connect together, so every replica has
    // demand for every org when the leases are first taken: the owners
    // spread by rendezvous hashing (a replica alone with demand would take
    // every org, and keeps it: a held lease is never taken away).
    let share = o.clients / REPLICAS;
    let mut workers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        workers.push(
            WorkerProcess::spawn(
                exe,
                r.client_addr,
                &format!("127.0.0.{}", i + 2),
                share,
                1,
                o.orgs,
                &SERVICES,
            )
            .await?,
        );
    }
    for w in &mut workers {
        w.wait_connected(share).await?;
    }
    wait_for("the cluster's pollers", Duration::from_secs(60), || {
        sim.state.active_polls() >= polls
    })
    .await?;
    let probes = Probes::start(replicas[REPLICAS - 1].client_addr, o.orgs).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polls_in_cluster = sim.state.active_polls();
    let calls0 = redis.command_calls().await?;
    let (three_rate, three_hist, delivered, published) = steady(&sim, &mut workers, o).await?;
    let calls = redis.command_calls().await?.saturating_sub(calls0);

    // Failover: SIGKILL the first replica while events flow; a probe on
    // the last replica must get every event once.
    let from: HashMap<u64, u64> = (1..=o.orgs)
        .map(|org| (org, sim.state.with_org(org, |log| log.last)))
        .collect();
    let stop = sim.spawn_generator(generator(RATE, o.orgs));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The victim: the replica owning the most orgs (not the last one,
    // which holds the probes).
    let owners = redis.owners(o.orgs).await?;
    let owned = |id: &str| -> Vec<u64> {
        owners
            .iter()
            .filter(|(_, h)| h.as_deref() == Some(id))
            .map(|(&org, _)| org)
            .collect()
    };
    let v = (0..REPLICAS - 1)
        .max_by_key(|&i| owned(&ids[i]).len())
        .unwrap_or(0);
    let victim_id = ids[v].clone();
    let victim_orgs = owned(&victim_id);
    let mut victim = replicas.remove(v);
    let killed_at = Instant::now();
    let _ = victim.child.start_kill();
    let _ = victim.child.wait().await;
    drop(workers.remove(v));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = redis.owners(o.orgs).await?;
        let moved = victim_orgs.iter().all(|org| {
            now.get(org)
                .is_some_and(|h| h.as_deref().is_some_and(|h| h != victim_id))
        });
        if moved {
            break;
        }
        if Instant::now() > deadline {
            return Err(step("the killed replica's orgs were not taken over"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover = killed_at.elapsed();
    let victim_orgs = victim_orgs.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (lost, dup, expected) = probes.compare(&sim, &from);
    drop(probes);
    for w in workers {
        w.quit().await;
    }
    for r in replicas {
        r.stop().await;
    }
    sim.shutdown().await;

    rows.push(Row(
        "n. V1 requests/s, 1 replica".into(),
        format!("{one_rate:.1} req/s"),
        cfg.clone(),
    ));
    rows.push(Row(
        format!("n. V1 requests/s, {REPLICAS} replicas on Redis"),
        format!("{three_rate:.1} req/s"),
        format!("{cfg}; {polls_in_cluster} polls parked for {polls} (org, service) pairs"),
    ));
    let p99 = |h: &super::histogram::Merged| h.quantile_ms(0.99);
    rows.push(Row(
        "n. delivery latency p99, 1 replica / 3 replicas".into(),
        format!("{} / {}", ms(p99(&one_hist)), ms(p99(&three_hist))),
        "the difference is what the Redis hop adds".into(),
    ));
    rows.push(Row(
        "n. Redis commands per event (script steps included)".into(),
        format!(
            "{:.2} per published, {:.3} per delivered",
            calls as f64 / published.max(1) as f64,
            calls as f64 / delivered.max(1) as f64
        ),
        format!(
            "{calls} commands (INFO commandstats) for {published} published events, {delivered} deliveries in {} s",
            o.measure.as_secs()
        ),
    ));
    rows.push(Row(
        "n. failover after SIGKILL of a replica".into(),
        format!("{:.0} ms", failover.as_secs_f64() * 1000.0),
        format!(
            "until every org the killed replica owned ({victim_orgs} of {}) had a new owner; lease 3000 ms",
            o.orgs
        ),
    ));
    rows.push(Row(
        "n. events lost / duplicated across the failover".into(),
        format!("{lost} / {dup}"),
        format!(
            "{expected} events published for {} probe clients on a surviving replica",
            o.orgs
        ),
    ));
    Ok(())
}
