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

fn publish(sim: &realtime_edge::sim::Simulator, org: u64, n: usize) -> Vec<String> {
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
