//! Several replicas on one Redis (CONTRACT 9): membership and Redis health.
mod common;

use common::redis::RedisServer;
use common::*;

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
