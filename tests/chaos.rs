//! The chaos soak (issue 16): several orgs, clients joining and leaving,
//! random flag flips, random upstream faults (500, garbage, dropped and
//! hanging requests, slow answers, the native stream closing), events of
//! random sizes up to `max_event_bytes`. Every client that stayed connected
//! must receive every event of its org and services exactly once; at the
//! end nothing is left (connections, hubs, pollers, native links).
//!
//! The CI form runs for a few seconds of chaos; `CHAOS_SECONDS` makes it
//! longer. `CHAOS_LOG` (a tracing filter, e.g. `warn,realtime_edge::hub=debug`)
//! writes the sidecar's log to `chaos-soak.log` in the temporary directory:
//! sources starting and stopping, native acks with their positions.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use realtime_edge_sim::Fault;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const ORGS: [u64; 3] = [31, 32, 33];
const SERVICES: [&str; 2] = ["finance", "staff"];
const MAX_EVENT_BYTES: usize = 64 * 1024;

fn chaos_seconds() -> u64 {
    std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// A client that stays for the whole run, recording every eventId it gets.
struct Stayer {
    org: u64,
    got: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

fn stay(mut ws: Ws, org: u64, mut stop: watch::Receiver<bool>) -> Stayer {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stop.changed() => return Ok(()),
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    if v["type"] == "event" {
                        let mut g = sink.lock().unwrap();
                        for e in v["events"].as_array().unwrap() {
                            g.push(e["eventId"].as_str().unwrap().to_string());
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
                Some(Ok(_)) => {}
                other => return Err(format!("stream ended: {other:?}")),
            }
        }
    });
    Stayer { org, got, task }
}

fn random_event() -> Value {
    // Mostly small, sometimes large, now and then at the limit.
    let size = match rand::random_range(0..100) {
        0..80 => rand::random_range(10..500),
        80..98 => rand::random_range(500..16 * 1024),
        _ => MAX_EVENT_BYTES - 200,
    };
    json!({ "pad": "x".repeat(size) })
}

fn random_fault() -> Fault {
    match rand::random_range(0..6) {
        0 => Fault::Status(500),
        1 => Fault::Garbage,
        2 => Fault::Drop,
        3 => Fault::Hang,
        4 => Fault::Slow(rand::random_range(50..800)),
        _ => Fault::None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_delivers_exactly_once_and_leaks_nothing() {
    if let Ok(filter) = std::env::var("CHAOS_LOG") {
        let path = std::env::temp_dir().join("chaos-soak.log");
        eprintln!(
            "chaos: the sidecar's log ({filter}) goes to {}",
            path.display()
        );
        let file = std::fs::File::create(path).unwrap();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    }
    let sim = start_sim(Duration::from_secs(1)).await;
    let sc = start_sidecar(config(
        &sim.base_url(),
        &format!(
            "upstream: {{base_url: \"{}\", native_fallback_s: 1, poll_timeout_s: 3}}\n\
             stream: {{batch_window_ms: 20, hub_linger_ms: 200, resume_ttl_s: 1, max_event_bytes: {MAX_EVENT_BYTES}, batch_max_bytes: 16384, max_queue_bytes: 4194304}}\n",
            sim.base_url()
        ),
    ))
    .await;
    let (stop_tx, stop) = watch::channel(false);
    let (leave_tx, leave) = watch::channel(false);

    // Two clients per org stay for the whole run.
    let mut stayers = Vec::new();
    for org in ORGS {
        for _ in 0..2 {
            let (ws, _) = subscribe(sc.client_addr, org, hello(&SERVICES)).await;
            stayers.push(stay(ws, org, leave.clone()));
        }
    }
    pollers(&sim, (ORGS.len() * SERVICES.len()) as i64).await;

    // Churn: clients of every org join, read a little, and leave.
    let churn = {
        let addr = sc.client_addr;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut joined = 0u32;
            while !*stop.borrow() {
                let org = ORGS[rand::random_range(0..ORGS.len())];
                let services: &[&str] = if rand::random_bool(0.5) {
                    &SERVICES
                } else {
                    &SERVICES[..1]
                };
                let (mut ws, _) = subscribe(addr, org, hello(services)).await;
                let _ = tokio::time::timeout(
                    Duration::from_millis(rand::random_range(10..300)),
                    ws.next(),
                )
                .await;
                drop(ws);
                joined += 1;
            }
            joined
        })
    };

    // Flags: random flips between poll, native for some orgs, native for all.
    let flipper = {
        let admin = sc.admin_addr;
        let stop = stop.clone();
        tokio::spawn(async move {
            let forms = [
                "REALTIME_STREAMING_V2=false",
                "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100",
                "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=0&REALTIME_ALLOWLIST_ORGS=31,33",
                "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=0&REALTIME_ALLOWLIST_ORGS=32",
            ];
            let mut flips = 0u32;
            while !*stop.borrow() {
                tokio::time::sleep(Duration::from_millis(rand::random_range(200..700))).await;
                let form = forms[rand::random_range(0..forms.len())];
                let (status, _, body) = http(
                    "POST",
                    &format!("http://{admin}/feature-flags"),
                    None,
                    Some(("application/x-www-form-urlencoded", form.to_string())),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                flips += 1;
            }
            flips
        })
    };

    // Upstream faults, changing every few hundred ms; the native stream
    // closes now and then.
    let faults = {
        let state = sim.state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !*stop.borrow() {
                for s in SERVICES {
                    state.set_fault(s, random_fault());
                }
                state.set_native_down(rand::random_bool(0.2));
                tokio::time::sleep(Duration::from_millis(rand::random_range(100..600))).await;
            }
            for s in SERVICES {
                state.set_fault(s, Fault::None);
            }
            state.set_native_down(false);
        })
    };

    // Events of random sizes for random orgs and services (paced: load).
    let mut published: HashMap<u64, Vec<String>> = HashMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(chaos_seconds());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        let org = ORGS[rand::random_range(0..ORGS.len())];
        let service = SERVICES[rand::random_range(0..SERVICES.len())];
        let n = rand::random_range(1..4);
        let ids = sim
            .state
            .publish(org, service, (0..n).map(|_| random_event()).collect());
        published.entry(org).or_default().extend(ids);
    }
    stop_tx.send_replace(true);
    let joined = churn.await.unwrap();
    let flips = flipper.await.unwrap();
    faults.await.unwrap();
    assert!(joined > 0 && flips > 0, "joined {joined}, flips {flips}");
    eprintln!(
        "chaos: {joined} clients joined and left, {flips} flips, {} events published",
        published.values().map(Vec::len).sum::<usize>()
    );

    // Once the faults are over, everything arrives, exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    for s in &mut stayers {
        let want: HashSet<&String> = published[&s.org].iter().collect();
        loop {
            let got = s.got.lock().unwrap().clone();
            let have: HashSet<&String> = got.iter().filter(|g| want.contains(g)).collect();
            if have.len() == want.len() {
                let mut seen = HashSet::new();
                let twice: Vec<(usize, &String)> = got
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| !seen.insert(*g))
                    .collect();
                assert!(
                    twice.is_empty(),
                    "org {}: {} of {} events delivered twice, the first at (position, id): {:?}",
                    s.org,
                    twice.len(),
                    want.len(),
                    &twice[..twice.len().min(5)]
                );
                break;
            }
            if s.task.is_finished() {
                let why = (&mut s.task).await;
                panic!("org {}: a staying client lost its stream: {why:?}", s.org);
            }
            if tokio::time::Instant::now() >= deadline {
                let mut missing: Vec<&&String> = want.difference(&have).collect();
                missing.sort();
                panic!(
                    "org {}: {} of {} events arrived; missing: {:?}",
                    s.org,
                    have.len(),
                    want.len(),
                    &missing[..missing.len().min(10)]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    leave_tx.send_replace(true);
    for s in stayers {
        let r = s.task.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    // Nothing is left once every client is gone.
    eventually("no connections, hubs, pollers or native links", || async {
        let m = sidecar_metrics(&sc).await;
        let s = sim.state.stats_json();
        m["activeConnections"] == 0
            && m["activeOrgs"] == 0
            && s["activePollsTotal"] == 0
            && s["nativeActive"] == 0
    })
    .await;
    sc.shutdown().await;
    sim.shutdown().await;
}
