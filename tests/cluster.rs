//! Several replicas on one Redis (CONTRACT 9): membership and Redis health.
mod common;

use std::collections::HashSet;

use common::redis::RedisServer;
use common::*;
use serde_json::json;

fn cluster_extra(redis: &RedisServer, name: &str) -> String {
    format!(
        "cluster: {{redis_url: \"{}\", name: \"{name}\", lease_ms: 600, redis_timeout_ms: 150}}\n",
        redis.url()
    )
}

fn members(sc: &realtime_edge::Sidecar) -> usize {
    sc.cluster.as_ref().unwrap().members().borrow().len()
}

fn redis_up(sc: &realtime_edge::Sidecar) -> bool {
    *sc.cluster.as_ref().unwrap().up().borrow()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_see_each_other_and_survive_a_redis_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let a = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "t1"))).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "t1"))).await;
    // Another cluster on the same Redis is not a member of this one.
    let other = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "t2"))).await;
    eventually("two members in cluster t1", || async {
        members(&a) == 2 && members(&b) == 2
    })
    .await;
    eventually("one member in cluster t2", || async {
        members(&other) == 1
    })
    .await;
    assert!(redis_up(&a) && redis_up(&b));

    redis.kill();
    eventually("Redis seen down", || async {
        !redis_up(&a) && !redis_up(&b)
    })
    .await;
    // Pass-through keeps working while Redis is away.
    let (status, _, _) = http(
        "GET",
        &format!("http://{}/_sim/stats", a.client_addr),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);

    redis.restart();
    eventually("Redis seen up again, members back", || async {
        redis_up(&a) && redis_up(&b) && members(&a) == 2
    })
    .await;
    let (_, _, metrics) = http(
        "GET",
        &format!("http://{}/metrics", a.admin_addr),
        None,
        None,
    )
    .await;
    assert!(metrics.contains("cluster_redis_up 1"), "{metrics}");
}

/// Events of `ws` until every id of `want` arrived, and the last `seq`;
/// fails on a duplicate.
async fn receive_exactly(ws: &mut Ws, want: &[String]) -> u64 {
    let want_set: HashSet<String> = want.iter().cloned().collect();
    let (got, msgs) = collect_ids(ws, &want_set).await;
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an event came twice: {got:?}");
    msgs.iter()
        .filter(|m| m["type"] == "event")
        .filter_map(|m| m["seq"].as_u64())
        .max()
        .expect("an event message")
}

fn publish(sim: &realtime_edge_sim::Simulator, org: u64, n: usize) -> Vec<String> {
    sim.state
        .publish(org, "finance", (0..n).map(|i| json!({ "n": i })).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poller_per_org_for_the_cluster_and_resume_on_another_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let extra = cluster_extra(&redis, "one-poller");
    let replicas = [
        start_sidecar(config(&sim.base_url(), &extra)).await,
        start_sidecar(config(&sim.base_url(), &extra)).await,
        start_sidecar(config(&sim.base_url(), &extra)).await,
    ];
    let mut clients = Vec::new();
    for r in &replicas {
        let (ws, ack) = subscribe(r.client_addr, 1, hello(&["finance"])).await;
        assert_eq!(ack["resumed"], false);
        clients.push(ws);
    }
    // One upstream long-poll for the org, whichever replica owns it.
    pollers(&sim, 1).await;

    let first = publish(&sim, 1, 3);
    let mut seqs = Vec::new();
    for ws in &mut clients {
        seqs.push(receive_exactly(ws, &first).await);
    }
    // Positions are cluster-wide: every replica delivered the same ones.
    assert!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
    assert_eq!(sim.state.active_polls(), 1);

    // A client of replica 0 leaves; what it misses it gets on replica 2.
    let last_seq = seqs[0];
    drop(clients.remove(0));
    let missed = publish(&sim, 1, 2);
    receive_exactly(&mut clients[0], &missed).await;
    let (mut ws, ack) = subscribe(
        replicas[2].client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": last_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true, "{ack}");
    receive_exactly(&mut ws, &missed).await;
    let extra_ids = drain_ids(&mut ws, std::time::Duration::from_millis(300)).await;
    assert!(
        extra_ids.is_empty(),
        "only the missed events: {extra_ids:?}"
    );
    // A position just delivered by one replica resumes on another at once,
    // even if that one's reader is a moment behind.
    let just = publish(&sim, 1, 2);
    let seq = receive_exactly(&mut clients[1], &just).await;
    let (mut ws, ack) = subscribe(
        replicas[0].client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true, "{ack}");
    let later = publish(&sim, 1, 1);
    let more = receive_exactly(&mut ws, &later).await;
    assert!(more > seq);
    // A position from another cluster's run does not resume.
    let (_ws, ack) = subscribe(
        replicas[1].client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": 5}),
    )
    .await;
    assert_eq!(ack["resumed"], false, "{ack}");
    assert_eq!(sim.state.active_polls(), 1);
}

/// The real binary as one replica, killed when dropped.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary as a replica of cluster `name`; returns it and its
/// client address.
fn spawn_replica(
    sim: &realtime_edge_sim::Simulator,
    redis: &RedisServer,
    name: &str,
) -> (Replica, std::net::SocketAddr) {
    use std::io::BufRead;
    let dir = unique_dir("cluster-bin");
    let cfg = dir.join("edge.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nflags: {{file: null}}\n\
             auth: {{jwt_secret: \"{SECRET}\"}}\nupstream: {{base_url: \"{}\"}}\n\
             stream: {{batch_window_ms: 20, hub_linger_ms: 500}}\n{}",
            sim.base_url(),
            cluster_extra(redis, name)
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_realtime-edge"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("REALTIME_EDGE_CONFIG")
        .env_remove("JWT_SECRET")
        .env_remove("ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let replica = Replica(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            // Keeps reading after the test stopped listening, so the
            // child never blocks on a full pipe.
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("realtime-edge serving") => break line,
            Ok(_) => {}
            Err(e) => panic!("the replica did not start: {e}"),
        }
    };
    let addr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))
        .expect("client address in the serving line")
        .parse()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (replica, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_is_replaced_without_loss_or_duplicates() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    // The child replica is alone with demand for org 1: it owns the org.
    let (mut owner, owner_addr) = spawn_replica(&sim, &redis, "failover");
    let (mut on_owner, _) = subscribe(owner_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let survivor = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "failover"))).await;
    let (mut ws, _) = subscribe(survivor.client_addr, 1, hello(&["finance"])).await;
    let before = publish(&sim, 1, 3);
    receive_exactly(&mut on_owner, &before).await;
    let mut got = Vec::new();
    let want: HashSet<String> = before.iter().cloned().collect();
    got.extend(collect_ids(&mut ws, &want).await.0);

    // SIGKILL: no release, the lease has to lapse.
    owner.0.kill().unwrap();
    owner.0.wait().unwrap();
    let during = publish(&sim, 1, 3);
    let want: HashSet<String> = during.iter().cloned().collect();
    got.extend(collect_ids(&mut ws, &want).await.0);
    let after = publish(&sim, 1, 2);
    let want: HashSet<String> = after.iter().cloned().collect();
    got.extend(collect_ids(&mut ws, &want).await.0);
    got.extend(drain_ids(&mut ws, std::time::Duration::from_millis(300)).await);
    let expected: Vec<String> = before.into_iter().chain(during).chain(after).collect();
    assert_eq!(got, expected, "every event once, in order");
    pollers(&sim, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_then_back_empty_clients_keep_receiving_and_old_positions_do_not_resume() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let extra = cluster_extra(&redis, "degraded");
    let a = start_sidecar(config(&sim.base_url(), &extra)).await;
    let b = start_sidecar(config(&sim.base_url(), &extra)).await;
    let (mut wa, _) = subscribe(a.client_addr, 2, hello(&["finance"])).await;
    let (mut wb, _) = subscribe(b.client_addr, 2, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let mut expected = Vec::new();
    let mut round = async |wa: &mut Ws, wb: &mut Ws| -> u64 {
        let ids = publish(&sim, 2, 2);
        let want: HashSet<String> = ids.iter().cloned().collect();
        let (ga, ma) = collect_ids(wa, &want).await;
        got_a.extend(ga);
        got_b.extend(collect_ids(wb, &want).await.0);
        expected.extend(ids);
        ma.iter().filter_map(|m| m["seq"].as_u64()).max().unwrap()
    };
    let shared_seq = round(&mut wa, &mut wb).await;

    redis.kill();
    eventually("both replicas serve on their own", || async {
        !redis_up(&a) && !redis_up(&b)
    })
    .await;
    // Each replica polls for its own clients now.
    pollers(&sim, 2).await;
    round(&mut wa, &mut wb).await;
    // A client of an org new to the replica is served meanwhile too.
    let (mut newcomer, _) = subscribe(a.client_addr, 4, hello(&["finance"])).await;
    pollers(&sim, 3).await;
    let ids = publish(&sim, 4, 2);
    receive_exactly(&mut newcomer, &ids).await;
    drop(newcomer);

    redis.restart();
    eventually("both replicas back in the cluster", || async {
        redis_up(&a) && redis_up(&b)
    })
    .await;
    pollers(&sim, 1).await;
    round(&mut wa, &mut wb).await;
    round(&mut wa, &mut wb).await;
    got_a.extend(drain_ids(&mut wa, std::time::Duration::from_millis(300)).await);
    got_b.extend(drain_ids(&mut wb, std::time::Duration::from_millis(300)).await);
    assert_eq!(got_a, expected, "replica a: every event once, in order");
    assert_eq!(got_b, expected, "replica b: every event once, in order");

    // A position from before Redis lost the stream is not resumed.
    let (_ws, ack) = subscribe(
        b.client_addr,
        2,
        json!({"services": ["finance"], "version": 1, "lastSeq": shared_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], false, "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_native_link_per_org_for_the_cluster() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    let extra = cluster_extra(&redis, "native");
    let a = start_sidecar(config(&sim.base_url(), &extra)).await;
    let b = start_sidecar(config(&sim.base_url(), &extra)).await;
    // Set on both: sharing flags through Redis is not what this checks.
    for r in [&a, &b] {
        set_flags(r, "REALTIME_STREAMING_V2=true&REALTIME_ROLLOUT_PERCENT=100").await;
    }
    let (mut wa, ack) = subscribe(a.client_addr, 3, hello(&["finance", "staff"])).await;
    assert_eq!(ack["mode"], "native", "{ack}");
    let (mut wb, _) = subscribe(b.client_addr, 3, hello(&["finance", "staff"])).await;
    eventually("one native link for the org", || async {
        sim.state.native_active() == 1
    })
    .await;
    // The link is open before it has subscribed: events reach it from an
    // event published once it has (one comes through to both clients).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no event through the native link"
        );
        let probe = publish(&sim, 3, 1);
        let got = drain_ids(&mut wa, std::time::Duration::from_millis(200)).await;
        if got.contains(&probe[0]) {
            drain_ids(&mut wb, std::time::Duration::from_millis(200)).await;
            break;
        }
    }
    let ids = publish(&sim, 3, 3);
    receive_exactly(&mut wa, &ids).await;
    receive_exactly(&mut wb, &ids).await;
    assert_eq!(sim.state.native_active(), 1);
    assert_eq!(sim.state.active_polls(), 0);
}
